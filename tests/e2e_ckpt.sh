#!/usr/bin/env bash
# e2e_ckpt.sh — "Dive never loses or corrupts a user's data" (issue 17), end
# to end: checkpoints verified on load (flipped bytes, NaN weights, bad
# /train attributes), --resume auto walking back past damaged or dangling
# checkpoints and never starting over while one is there, a resume that
# refuses a changed run (optimizer, loss, data) unless --resume-force, a new
# run that refuses an earlier run's directory unless --overwrite, no write
# through a link planted in run_dir, and `dive info` on ranks up to 32.
# Every failure is one clear message, non-zero on every rank, with run_dir
# byte-for-byte unchanged; every success keeps what existed.
# shellcheck disable=SC2317 # helpers run through check()
set -u
# shellcheck source=tests/lib_e2e.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib_e2e.sh"

D=$DIVE_BIN
: "${DIVE_TAMPER:=$(dirname "$DIVE_BIN")/dive_tamper}"
T=$DIVE_TAMPER

echo "== setup: data, a good 3-epoch run in good/ (20 steps an epoch, keep 3)"
make_data data.h5
write_cfg base.cfg data.h5 good 3
e2e_run "$D" train base.cfg
if ! expect_ok "a good 3-epoch run" || [ ! -e good/ckpt-60.h5 ]; then
    echo "cannot set up the good run"
    e2e_summary
fi

# copy NAME: a copy of good/ (links kept as links) as NAME/
copy() { rm -rf "$1" && cp -a good "$1"; }
# rows FILE: the data rows of a metrics.csv, as their epoch numbers
rows() { tail -n +2 "$1" | cut -d, -f1 | tr '\n' ' '; }
# inode FILE, links FILE
inode() { stat -c %i "$1"; }
links() { stat -c %h "$1"; }

echo "== the layout: last.h5 is a link to the newest ckpt, best.h5 a file of its own"
check "last.h5 is a symbolic link to ckpt-60.h5" test "$(readlink good/last.h5)" = ckpt-60.h5
check "no checkpoint shares its inode (one link each)" \
    test "$(links good/ckpt-60.h5)$(links good/best.h5)$(links good/ckpt-40.h5)" = 111
check "best.h5 is not the newest checkpoint's inode" \
    test "$(inode good/best.h5)" != "$(inode good/ckpt-60.h5)"
e2e_run "$D" info good/last.h5
expect_ok "dive info of a checkpoint"
check "every /model and /optimizer dataset carries a Fletcher32 checksum" \
    bash -c "! grep -E '^  /(model|optimizer)' '$OUT' | grep -vq fletcher32"
e2e_run "$D" info --verify good/last.h5
expect_ok "dive info --verify of a good checkpoint"
check "it says every dataset matches its checksum" grep -q "every dataset's data matches its checksum" "$OUT"

echo "== flipped bytes in a weight (case 5): found at load, named"
copy flip
e2e_run "$T" flip flip/ckpt-60.h5 /model/dense_1/weight 64
check "64 bytes of dense_1/weight flipped in place" test "$RC" -eq 0
e2e_run "$D" info --verify flip/ckpt-60.h5
expect_fail "dive info --verify names the damaged dataset" \
    "flip/ckpt-60.h5: /model/dense_1/weight is damaged: its data does not match its checksum"
e2e_run "$D" eval base.cfg --checkpoint flip/last.h5
expect_fail "dive eval of it" "flip/last.h5: /model/dense_1/weight is damaged"
e2e_ranks 2 "$D" eval base.cfg --checkpoint flip/last.h5
expect_fail "np 2: dive eval of it, every rank" "/model/dense_1/weight is damaged"
snapshot_take "$WORK/flip"
e2e_run "$D" train base.cfg --set train.run_dir=flip --resume flip/ckpt-60.h5
expect_fail "--resume of it by path" "flip/ckpt-60.h5: /model/dense_1/weight is damaged"
SNAPSHOT_DIR=""
e2e_run "$D" train base.cfg --set train.run_dir=flip --set train.epochs=4 --resume auto
expect_ok "--resume auto walks back past it"
check "it says which it skipped and why" \
    grep -q "skipping flip/last.h5: /model/dense_1/weight is damaged" "$ERR"
check "it resumes from the newest good one" grep -q "resuming from flip/ckpt-40.h5: epoch 3, step 40" "$OUT"
check "the damaged file is set aside, not deleted" test -s flip/ckpt-60.h5.damaged
check "what was set aside is the damaged file itself" \
    bash -c "! '$D' info --verify flip/ckpt-60.h5.damaged >/dev/null 2>&1"
check "metrics.csv holds each epoch once (1 2 3 4)" test "$(rows flip/metrics.csv)" = "1 2 3 4 "
e2e_run "$D" info --verify flip/last.h5
expect_ok "the new last.h5 verifies"
check "it holds step 80" grep -q "step 80, epoch 4" "$OUT"

echo "== a truncated last.h5 (case 4): continues from the newest good checkpoint"
copy trunc
truncate -s $(($(stat -L -c %s trunc/last.h5) / 2)) trunc/last.h5
e2e_run "$D" train base.cfg --set train.run_dir=trunc --set train.epochs=4 --resume auto
expect_ok "--resume auto after last.h5 was truncated"
check "it names the truncated last.h5" grep -q "skipping trunc/last.h5: " "$ERR"
check "it resumes from ckpt-40.h5" grep -q "resuming from trunc/ckpt-40.h5: epoch 3, step 40" "$OUT"
check "the first two epochs' rows are kept" test "$(rows trunc/metrics.csv)" = "1 2 3 4 "

echo "== last.h5 dangling or a loop (case 3): never a new run"
copy dangle
rm dangle/last.h5 && ln -s ckpt-99.h5 dangle/last.h5
e2e_run "$D" train base.cfg --set train.run_dir=dangle --set train.epochs=4 --resume auto
expect_ok "--resume auto with last.h5 naming a missing ckpt"
check "it says so" grep -q "skipping dangle/last.h5: it names ckpt-99.h5, which does not exist" "$ERR"
check "it resumes from ckpt-60.h5, not from step 0" \
    grep -q "resuming from dangle/ckpt-60.h5: epoch 4, step 60" "$OUT"
check "no 'starting a new run'" bash -c "! grep -q 'starting a new run' '$OUT'"
check "metrics.csv keeps epochs 1-3" test "$(rows dangle/metrics.csv)" = "1 2 3 4 "
check "the older checkpoints are kept (keep 3: 40, 60, 80)" \
    test -e dangle/ckpt-40.h5 -a -e dangle/ckpt-60.h5 -a -e dangle/ckpt-80.h5

copy loop
rm loop/last.h5 && ln -s last.h5 loop/last.h5
snapshot_take "$WORK/loop"
e2e_run "$D" train base.cfg --set train.run_dir=loop --resume auto
expect_fail "last.h5 a symbolic link loop: named, nothing touched" \
    "loop/last.h5 is a symbolic link (to last.h5)" "not Dive's own link"
check "the loop is still there" test "$(readlink loop/last.h5)" = last.h5

copy alldmg
for f in alldmg/ckpt-*.h5; do head -c 3000 /dev/urandom >"$f"; done
snapshot_take "$WORK/alldmg"
e2e_run "$D" train base.cfg --set train.run_dir=alldmg --resume auto
expect_fail "no checkpoint verifies: one error listing them, nothing touched" \
    "--resume auto: no checkpoint of alldmg verifies" "last.h5: " "ckpt-40.h5: " "nothing was changed"
e2e_ranks 2 "$D" train base.cfg --set train.run_dir=alldmg --resume auto
expect_fail "np 2: no checkpoint verifies, every rank" "no checkpoint of alldmg verifies"
SNAPSHOT_DIR=""

mkdir gone && ln -s ckpt-5.h5 gone/last.h5 && printf 'epoch,step\n1,5\n' >gone/metrics.csv
snapshot_take "$WORK/gone"
e2e_run "$D" train base.cfg --set train.run_dir=gone --resume auto
expect_fail "only a dangling last.h5: an error, metrics.csv kept" "no checkpoint of gone verifies"
SNAPSHOT_DIR=""

echo "== values that are not finite (case 5)"
copy nan
e2e_run "$T" fill nan/ckpt-60.h5 /model/dense_2/weight nan 10
e2e_run "$D" info --verify nan/ckpt-60.h5
expect_fail "NaN weights: named with their count" \
    "nan/ckpt-60.h5: /model/dense_2/weight holds 10 values that are NaN or infinite"
e2e_run "$D" eval base.cfg --checkpoint nan/ckpt-60.h5
expect_fail "dive eval refuses NaN weights" "/model/dense_2/weight holds 10 values"
e2e_run "$T" fill nan/ckpt-40.h5 /optimizer/v/dense_1/bias inf 1
e2e_run "$D" train base.cfg --set train.run_dir=nanx --resume nan/ckpt-40.h5
expect_fail "an infinite optimizer state refuses the resume" \
    "nan/ckpt-40.h5: /optimizer/v/dense_1/bias holds 1 value that is NaN or infinite"
e2e_run "$D" train base.cfg --set train.run_dir=nan --set train.epochs=4 --resume auto
expect_ok "--resume auto walks back past both to ckpt-20.h5"
check "it names both" bash -c "grep -q 'skipping nan/last.h5: /model/dense_2/weight holds' '$ERR' &&
    grep -q 'skipping nan/ckpt-40.h5: /optimizer/v/dense_1/bias holds' '$ERR'"
check "it resumes from ckpt-20.h5" grep -q "resuming from nan/ckpt-20.h5: epoch 2, step 20" "$OUT"

echo "== /train attributes out of range (case 5)"
bad_attr() { # NAME ATTR VALUE PHRASE...
    local name=$1 attr=$2 value=$3
    shift 3
    cp good/ckpt-60.h5 "$name.h5"
    "$T" attr-int "$name.h5" /train "$attr" "$value" >/dev/null
    e2e_run "$D" train base.cfg --set train.run_dir="run_$name" --resume "$name.h5"
    expect_fail "--resume with $attr = $value" "$name.h5: /train $attr = $value" "$@"
    e2e_run "$D" info --verify "$name.h5"
    expect_fail "dive info --verify with $attr = $value" "/train $attr = $value"
}
bad_attr epoch_huge epoch 4611686018427387904 "does not fit step = 60"
bad_attr step_neg step -100 "out of range"
bad_attr world0 world_size 0 "out of range (1 to"
bad_attr batch0 global_batch 0 "out of range (1 to"
bad_attr sie step_in_epoch 70 "out of range (0 to 60)"
cp good/ckpt-40.h5 sie2.h5
"$T" attr-int sie2.h5 /train step_in_epoch 25 >/dev/null
"$T" attr-int sie2.h5 /train step 65 >/dev/null
e2e_run "$D" train base.cfg --set train.run_dir=run_sie2 --resume sie2.h5
expect_fail "a position past the end of this run's epochs" \
    "sie2.h5: /train step_in_epoch = 25, but an epoch of this run has 20 steps"

echo "== a changed run: optimizer, loss, data (resume refuses, --resume-force overrides)"
e2e_run "$D" train base.cfg --set train.run_dir=sgd --set train.optimizer=sgd --set train.epochs=1
expect_ok "a 1-epoch SGD run"
snapshot_take "$WORK/sgd"
e2e_run "$D" train base.cfg --set train.run_dir=sgd --set train.epochs=2 --resume auto
expect_fail "an SGD checkpoint resumed into an Adam config" \
    "sgd/last.h5: this run differs" "the optimizer is adam, the checkpoint's run used sgd" \
    "--resume-force"
e2e_ranks 2 "$D" train base.cfg --set train.run_dir=sgd --set train.epochs=2 --resume auto
expect_fail "np 2: sgd -> adam, every rank" "the optimizer is adam, the checkpoint's run used sgd"
e2e_run "$D" train base.cfg --set train.run_dir=sgd --set train.optimizer=sgd --set train.loss=mse \
    --set train.epochs=2 --resume auto
expect_fail "another loss" "the loss is mse, the checkpoint's run used cross_entropy"
SNAPSHOT_DIR=""
e2e_run "$D" train base.cfg --set train.run_dir=sgd --set train.epochs=2 --resume auto --resume-force
expect_ok "--resume-force resumes it"
check "with a warning naming the change" \
    grep -q "warning: --resume-force: resuming from sgd/last.h5 .*the optimizer is adam, the checkpoint's run used sgd" "$ERR"
e2e_run "$D" train base.cfg --set train.run_dir=sgd --set train.epochs=3 --resume auto
expect_ok "its checkpoints then record the new optimizer: a plain resume goes on"

echo "== a changed data set"
gen_points 1200 9 >other.train.csv
"$D" import csv other.train.csv -o other.h5 --split train --label-col -1 >/dev/null
"$D" import csv data.val.csv -o other.h5 --split val --label-col -1 >/dev/null
mkdir -p elsewhere moved
cp other.h5 elsewhere/data.h5
cp data.h5 moved/data.h5
gen_points 1500 1 >more.train.csv
"$D" import csv more.train.csv -o more.h5 --split train --label-col -1 >/dev/null
"$D" import csv data.val.csv -o more.h5 --split val --label-col -1 >/dev/null
copy data
snapshot_take "$WORK/data"
e2e_run "$D" train base.cfg --set train.run_dir=data --set train.epochs=4 --resume auto \
    --set data.file=other.h5
expect_fail "another data file: its name and its contents" \
    "the data file is other.h5, the checkpoint's run read data.h5" "the training data's contents differ"
e2e_run "$D" train base.cfg --set train.run_dir=data --set train.epochs=4 --resume auto \
    --set data.file=elsewhere/data.h5
expect_fail "other contents under the same name" "the training data's contents differ"
e2e_run "$D" train base.cfg --set train.run_dir=data --set train.epochs=4 --resume auto \
    --set data.file=more.h5
expect_fail "more rows" "the training data has 1500 samples of (4), 1 target each, the checkpoint's run's had 1200"
e2e_run "$D" train base.cfg --set train.run_dir=data --set train.epochs=4 --resume auto \
    --set data.train_x=/val/x --set data.train_y=/val/y
expect_fail "other datasets of the same file" "the training data is /val/x /val/y, the checkpoint's run read /train/x /train/y"
SNAPSHOT_DIR=""
e2e_run "$D" train base.cfg --set train.run_dir=data --set train.epochs=4 --resume auto \
    --set data.file=moved/data.h5
expect_ok "the same data copied to another directory is the same data"
e2e_run "$D" train base.cfg --set train.run_dir=data --set train.epochs=5 --resume auto \
    --set data.file=more.h5 --resume-force
expect_ok "--resume-force onto more rows"
check "with a warning" grep -q "warning: --resume-force: .*1500 samples" "$ERR"

echo "== a checkpoint of an older Dive (no identity recorded): resumes with a note"
cp good/ckpt-60.h5 old.h5
"$T" del-attr old.h5 /train format optimizer loss data_file data_train data_shape data_hash >/dev/null
e2e_run "$D" train base.cfg --set train.run_dir=oldrun --set train.epochs=4 --resume old.h5
expect_ok "--resume of an older checkpoint"
check "it notes what it cannot check" grep -q "note: old.h5 was written by an older Dive" "$OUT"

echo "== a new run where another run's checkpoints are (case 6)"
copy again
snapshot_take "$WORK/again"
e2e_run "$D" train base.cfg --set train.run_dir=again
expect_fail "a new run in it stops" "run_dir again holds the checkpoints of an earlier run" \
    "--resume auto" "--overwrite"
e2e_ranks 2 "$D" train base.cfg --set train.run_dir=again
expect_fail "np 2: every rank stops" "holds the checkpoints of an earlier run"
SNAPSHOT_DIR=""
e2e_run "$D" train base.cfg --set train.run_dir=again --overwrite --resume auto
expect_fail "--overwrite with --resume is a usage error" --status 2 "--overwrite starts a new run"
e2e_run "$D" train base.cfg --set train.run_dir=again --resume-force
expect_fail "--resume-force without --resume is a usage error" --status 2 "--resume-force goes with --resume"
e2e_run "$D" train base.cfg --set train.run_dir=again --set train.epochs=1 --overwrite
expect_ok "--overwrite starts a new run over it"
check "it says what it removed" grep -q "overwrite: removed the 6 files of the earlier run in again" "$OUT"
check "only the new run's checkpoint is left" test "$(cd again && ls | tr '\n' ' ')" = "best.h5 ckpt-20.h5 last.h5 metrics.csv "
check "metrics.csv is the new run's (epoch 1 only)" test "$(rows again/metrics.csv)" = "1 "

echo "== links where Dive writes (case 7)"
echo "not yours" >victim.txt
mkdir planted && ln -s "$WORK/victim.txt" planted/metrics.csv
e2e_run "$D" train base.cfg --set train.run_dir=planted
expect_fail "metrics.csv a link in a new run's run_dir" \
    "planted/metrics.csv is a symbolic link (to $WORK/victim.txt)"
check "the file it points to is untouched" test "$(cat victim.txt)" = "not yours"
copy planted2
rm planted2/metrics.csv && ln -s "$WORK/victim.txt" planted2/metrics.csv
e2e_ranks 2 "$D" train base.cfg --set train.run_dir=planted2 --set train.epochs=4 --resume auto
expect_fail "np 2: metrics.csv a link in a resumed run_dir" "planted2/metrics.csv is a symbolic link"
check "the file it points to is still untouched" test "$(cat victim.txt)" = "not yours"
copy planted3
rm planted3/best.h5 && ln -s "$WORK/victim.txt" planted3/best.h5
e2e_run "$D" train base.cfg --set train.run_dir=planted3 --set train.epochs=4 --resume auto
expect_fail "best.h5 a link" "planted3/best.h5 is a symbolic link"
copy planted4
rm planted4/last.h5 && ln -s "$WORK/good/ckpt-60.h5" planted4/last.h5
e2e_run "$D" train base.cfg --set train.run_dir=planted4 --set train.epochs=4 --resume auto
expect_fail "last.h5 a link out of run_dir" "planted4/last.h5 is a symbolic link (to $WORK/good/ckpt-60.h5)"
copy planted5
ln -s "$WORK/victim.txt" planted5/ckpt-80.h5
e2e_run "$D" train base.cfg --set train.run_dir=planted5 --set train.epochs=4 --resume auto
expect_fail "a ckpt-<step>.h5 a link" "planted5/ckpt-80.h5 is a symbolic link"
check "the file they point to is still untouched" test "$(cat victim.txt)" = "not yours"

echo "== keep = 0: last.h5 is the checkpoint itself, best.h5 a copy"
e2e_run "$D" train base.cfg --set train.run_dir=k0 --set train.keep=0 --set train.epochs=2
expect_ok "a keep = 0 run"
check "last.h5 and best.h5 are two files" \
    test -f k0/last.h5 -a ! -L k0/last.h5 -a "$(inode k0/last.h5)" != "$(inode k0/best.h5)"
head -c 3000 /dev/urandom >k0/last.h5
snapshot_take "$WORK/k0"
e2e_run "$D" train base.cfg --set train.run_dir=k0 --set train.keep=0 --set train.epochs=3 --resume auto
expect_fail "its damaged last.h5: nothing to walk back to, nothing touched" "no checkpoint of k0 verifies"
SNAPSHOT_DIR=""
e2e_run "$D" info --verify k0/best.h5
expect_ok "best.h5 survives the damage to last.h5"

echo "== a GAN's checkpoint verifies"
write_gan_cfg gan.cfg data.h5 gan 1
e2e_run "$D" train gan.cfg
expect_ok "a GAN run"
e2e_run "$D" info --verify gan/last.h5
expect_ok "dive info --verify of a GAN checkpoint"

echo "== dive info on datasets of rank above 16"
"$T" rank high.h5 /r17 17 >/dev/null && "$T" rank high.h5 /r32 32 >/dev/null
e2e_run "$D" info high.h5
expect_ok "dive info of ranks 17 and 32"
check "it lists the rank-32 shape whole" \
    grep -q "^  /r32 .*(2$(printf ', 1%.0s' $(seq 31)))" "$OUT"

e2e_summary
