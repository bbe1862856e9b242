#!/usr/bin/env bash
# e2e_data_safety.sh — hostile configs and inputs end with one clear message
# (or the right result), never a crash, a truncation or a lost file
# (docs/reliability.md, "Configs and data").
#
# Configs: a 211-character run_dir and a very long line are read whole; a
# layer name with '/' , a key or section name that is not an identifier, a
# name too long, /dev/zero as a config and a sample shape whose product
# overflows are refused naming what is wrong; 40,000 sections load in
# linear time. Importers: a cut-off IDX file and a CSV with a bad row
# leave the existing output byte for byte as it was.
source "$(dirname "${BASH_SOURCE[0]}")/lib_e2e.sh"

make_data data.h5
[ -s data.h5 ] || exit 1

echo "== configs: long lines are read whole"
long="$WORK/$(printf 'r%.0s' $(seq 1 80))/$(printf 's%.0s' $(seq 1 80))/$(printf 't%.0s' $(seq 1 80))"
long=${long:0:211}
write_cfg long.cfg data.h5 "$long" 1
printf '; %s\n' "$(printf 'x%.0s' $(seq 1 5000))" >>long.cfg
check "the run_dir is ${#long} characters" test "${#long}" -eq 211
e2e_run "$DIVE_BIN" train long.cfg
expect_ok "a config with a 211-character run_dir and a 5,000-character line trains"
check "its checkpoints are in that exact directory" test -e "$long/last.h5"
check "no truncated twin of it was made" test ! -e "${long:0:199}"

echo "== configs: names and keys"
write_cfg bad_name.cfg data.h5 run 1
sed -i 's/^units = 32/units = 32\nname = a\/b/' bad_name.cfg
e2e_mpi 2 "$DIVE_BIN" train bad_name.cfg
expect_fail "a layer name with '/'" "bad_name.cfg:21: [dense] name = a/b: a layer name is"
check "nothing was written" test ! -e run

write_cfg bad_key.cfg data.h5 run 1
sed -i 's/^units = 32/units 2 = 32/' bad_key.cfg
e2e_run "$DIVE_BIN" train bad_key.cfg
expect_fail "a key that is not an identifier" "bad_key.cfg:20: 'units 2': a key is letters"

write_cfg long_key.cfg data.h5 run 1
sed -i "s/^units = 32/$(printf 'k%.0s' $(seq 1 70)) = 32/" long_key.cfg
e2e_run "$DIVE_BIN" train long_key.cfg
expect_fail "a key longer than 63 characters" "long_key.cfg:20: key 'kkkk" "longer than 63"

write_cfg bad_section.cfg data.h5 run 1
sed -i 's/^\[dense\]/[dense layer]/' bad_section.cfg
e2e_run "$DIVE_BIN" train bad_section.cfg
expect_fail "a section name with a space" "bad_section.cfg:19: [dense layer]: a section name"

write_cfg long_set.cfg data.h5 run 1
e2e_run "$DIVE_BIN" train long_set.cfg --set "train.$(printf 'k%.0s' $(seq 1 70))=1"
expect_fail "a --set key longer than 63 characters" "at most 63 characters"

echo "== configs: not a config"
e2e_run "$DIVE_BIN" train /dev/zero
expect_fail "/dev/zero as a config" "/dev/zero: larger than 16 MiB: not a config"
printf '[data]\nfile = data.h5\n\0\n' >nul.cfg
e2e_run "$DIVE_BIN" train nul.cfg
expect_fail "a NUL byte in a config names its line" "nul.cfg:3: a NUL byte"

echo "== configs: a sample shape whose product overflows"
write_cfg huge.cfg data.h5 run 1
sed -i 's/^shape = 4/shape = 1073741824,1073741824,5/' huge.cfg
e2e_mpi 2 "$DIVE_BIN" train huge.cfg
expect_fail "[input] shape = 2^30,2^30,5" "[input] shape = 1073741824,1073741824,5: a sample of more than 2147483647 elements"

echo "== configs: 40,000 sections load in linear time"
{
    echo "[train]"
    for ((i = 0; i < 40000; i++)); do printf '[dropout]\nrate = 0.1\n'; done
} >many.cfg
t0=$(date +%s.%N)
e2e_run "$DIVE_BIN" train many.cfg
t1=$(date +%s.%N)
expect_fail "40,000 sections: parsed, then refused for the missing [data]" "no [data] section"
secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
echo "        40,000 sections: ${secs} s"
check "40,000 sections in under 3 s (it was 12.8 s)" num_ge 3 "$secs"

echo "== importers keep what exists"
# an IDX of 10 images of 2x2 and its labels, and a copy cut after 3 images
printf '\x00\x00\x08\x03\x00\x00\x00\x0a\x00\x00\x00\x02\x00\x00\x00\x02' >img.idx
head -c 40 /dev/urandom >>img.idx
head -c 28 img.idx >cut.idx
printf '\x00\x00\x08\x01\x00\x00\x00\x0a' >lab.idx
printf '\x01\x02\x03\x04\x05\x06\x07\x08\x09\x00' >>lab.idx
e2e_run "$DIVE_BIN" import idx img.idx lab.idx -o imp.h5 --split train
expect_ok "import idx of 10 images"
before=$(sha256sum <imp.h5)
e2e_run "$DIVE_BIN" import idx cut.idx lab.idx -o imp.h5 --split train
expect_fail "a cut-off IDX file" "cut.idx: truncated: its header promises 10 images of 4 bytes but it holds 3 whole images"
check "the existing /train is byte for byte kept" test "$(sha256sum <imp.h5)" = "$before"
printf '1,2,0\n3,4,1\n5,oops,0\n' >bad.csv
e2e_run "$DIVE_BIN" import csv bad.csv -o imp.h5 --split train
expect_fail "a CSV with a bad row" "bad.csv:3: field 2"
check "the existing /train is still kept" test "$(sha256sum <imp.h5)" = "$before"
check "no temporary file is left" bash -c "! ls | grep -q '\.tmp\.'"

e2e_summary
