#!/usr/bin/env bash
# e2e_text.sh — end to end: `dive import text` on a generated corpus (nested
# directories, a binary file beside the text, like /usr/share/games/fortunes),
# `dive info` on the token file, and bad input that must fail cleanly.
set -u
# shellcheck source=tests/lib_e2e.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib_e2e.sh"

D=$DIVE_BIN

echo "== data: a corpus of 3 text files in 2 directories and a binary index"
mkdir -p corpus/b corpus/a
awk 'BEGIN { for (i = 0; i < 200; i++) printf "line %d of the first file, caf\xc3\xa9\n", i }' \
    >corpus/a/one.txt
awk 'BEGIN { for (i = 0; i < 100; i++) printf "the second: %d \xe2\x82\xac\n", i * 7 }' \
    >corpus/b/two.txt
printf 'third\n' >corpus/three.txt
printf 'idx\000\001\002' >corpus/a/one.dat
total=$(cat corpus/a/one.txt corpus/b/two.txt corpus/three.txt | wc -c)

e2e_run "$D" import text corpus -o text.h5
expect_ok "import text DIR (bytes, default --val 0.1)"
check "the binary file is skipped with one line" \
    bash -c "[ \$(grep -c '^skipped ' '$OUT') = 1 ] && grep -q 'skipped corpus/a/one.dat: contains a NUL byte' '$OUT'"
val=$(awk -v n="$total" 'BEGIN { printf "%d", n * 0.1 + 0.5 }')
check "prints files, tokens, train/val and vocab ($total tokens)" \
    bash -c "grep -q 'read 3 files (1 skipped): $total tokens, vocabulary bytes of 256' '$OUT' &&
             grep -q 'wrote /train/tokens ($((total - val))), /val/tokens ($val) and /vocab (256) to text.h5' '$OUT'"

e2e_run "$D" info text.h5
expect_ok "dive info on the token file"
check "info lists /train/tokens, /val/tokens and /vocab/codepoints" \
    bash -c "grep -Eq '/train/tokens +\($((total - val))\) int32 chunks' '$OUT' &&
             grep -Eq '/val/tokens +\($val\) int32' '$OUT' &&
             grep -Eq '/vocab/codepoints +\(256\) int32' '$OUT'"

chars=$(cat corpus/a/one.txt corpus/b/two.txt corpus/three.txt | LC_ALL=C.UTF-8 wc -m)
e2e_run "$D" import text corpus/three.txt corpus -o text.h5 --vocab chars --val 0
expect_ok "import text FILE DIR --vocab chars --val 0 into the same file"
check "chars: $((chars + 6)) tokens, no /val" \
    bash -c "grep -q ': $((chars + 6)) tokens, vocabulary chars of ' '$OUT' &&
             grep -q 'wrote /train/tokens ($((chars + 6))) and /vocab' '$OUT'"
e2e_run "$D" info text.h5
check "the re-import replaced /val/tokens" bash -c "! grep -q /val/tokens '$OUT'"

echo "== bad input"
mkdir -p binary
printf '\000\001' >binary/x.dat
e2e_run "$D" import text binary -o bad.h5
expect_fail "a directory without text" "no text to import" "1 skipped"
check "nothing written for it" test ! -e bad.h5
e2e_run "$D" import text nosuch.txt -o bad.h5
expect_fail "a missing input" "nosuch.txt: cannot open"
e2e_run "$D" import text corpus -o bad.h5 --val 1.5
expect_fail "--val outside [0, 1)" --status 2 "--val 1.5"
e2e_run "$D" import text corpus -o bad.h5 --vocab words
expect_fail "an unknown --vocab" --status 2 "--vocab words"
e2e_run "$D" import text corpus -o bad.h5 --split train
expect_fail "--split does not apply to text" --status 2 "--split does not apply"
printf 'not hdf5' >bad.h5
e2e_run "$D" import text corpus -o bad.h5
expect_fail "an output that is not HDF5" "bad.h5: not an HDF5 file"

e2e_summary
