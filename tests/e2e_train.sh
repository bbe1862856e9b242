#!/usr/bin/env bash
# e2e_train.sh — end to end: import generated CSV data, train a small MLP on
# 1 rank and on 2 ranks, evaluate, predict, inspect, stop early, prune
# checkpoints and resume.
#
# The problem: points (x, y) in [-1,1]^2 plus two noise features, labelled by
# the 120-degree sector of their angle (3 classes). The MLP 4 -> 32 relu -> 3
# reaches ~98% validation accuracy in 5 epochs (~0.1 s); an untrained model
# is at ~35-40%. The pass mark is 90%.
# shellcheck disable=SC2317 # helpers run through check()
set -u
# shellcheck source=tests/lib_e2e.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib_e2e.sh"

MIN_ACC=0.9
EPOCHS=5

echo "== data: dive import csv (train 1200, val 300 rows)"
gen_points 1200 1 >train.csv
gen_points 300 2 >val.csv
e2e_run "$DIVE_BIN" import csv train.csv -o data.h5 --split train --label-col -1
expect_ok "import csv --split train" && check "import says what it wrote" grep -q "wrote /train/x and /train/y to data.h5" "$OUT"
e2e_run "$DIVE_BIN" import csv val.csv -o data.h5 --split val --label-col -1
expect_ok "import csv --split val (keeps /train)"
e2e_run "$DIVE_BIN" info data.h5
expect_ok "dive info on the dataset file"
check "info lists /train/x (1200, 4) and /val/y (300)" \
    bash -c "grep -Eq '/train/x +\(1200, 4\)' '$OUT' && grep -Eq '/val/y +\(300\)' '$OUT'"

write_cfg mlp.cfg data.h5 run1 "$EPOCHS"

# metrics_ok RUN_DIR N: metrics.csv has the header and epochs 1..N, one a line.
metrics_ok() {
    local f=$1/metrics.csv
    [ -f "$f" ] || return 1
    head -n 1 "$f" | grep -q '^epoch,step,lr,train_loss,train_acc,val_loss,val_acc' || return 1
    [ "$(tail -n +2 "$f" | cut -d, -f1 | tr '\n' ' ')" = "$(seq -s ' ' 1 "$2") " ]
}

# eval_acc CFG CKPT [NP]: runs dive eval --json; sets ACC, LOSS, SAMPLES.
eval_acc() {
    if [ "${3:-1}" -gt 1 ]; then
        e2e_mpi "$3" "$DIVE_BIN" eval "$1" --checkpoint "$2" --json
    else
        e2e_run "$DIVE_BIN" eval "$1" --checkpoint "$2" --json
    fi
    ACC=$(json_field accuracy "$OUT")
    LOSS=$(json_field loss "$OUT")
    SAMPLES=$(json_field samples "$OUT")
}

echo "== train on 1 rank ($EPOCHS epochs)"
e2e_run "$DIVE_BIN" train mlp.cfg
expect_ok "dive train (1 rank)"
check "train prints the done line" grep -q '^done: 100 steps' "$OUT"
check "run1/last.h5 and run1/best.h5 exist" test -s run1/last.h5 -a -s run1/best.h5
check "metrics.csv: header and one line per epoch ($EPOCHS)" metrics_ok run1 "$EPOCHS"
check "metrics.csv ends with tflops,mfu (mfu empty: no peak on the CPU)" \
    bash -c "head -1 run1/metrics.csv | grep -q ',epoch_time_s,tflops,mfu$' &&
             tail -1 run1/metrics.csv | grep -Eq ',[0-9.e+-]+,$'"
check "train prints FLOPs per sample and peak memory, no MFU" \
    bash -c "grep -q '^compute: .* train FLOPs per sample; peak unknown' '$OUT' &&
             grep -Eq '^peak memory: [0-9.]+ MiB \(backend cpu\)' '$OUT' && ! grep -Eq 'MFU [0-9]' '$OUT'"
e2e_run "$DIVE_BIN" train mlp.cfg --set train.peak_tflops=1 --set train.run_dir=run_mfu --set train.epochs=1
expect_ok "dive train --set train.peak_tflops=1"
grep -E 'MFU|^compute:|^peak memory:' "$OUT" | sed -n '1,2p;$p'
check "the progress shows MFU, metrics.csv an mfu, and peak memory is printed" \
    bash -c "grep -Eq 'samples/s  MFU [0-9.]+%  ETA' '$OUT' && grep -q '^peak memory: ' '$OUT' &&
             tail -1 run_mfu/metrics.csv | grep -Eq ',[0-9.e+-]+,0\.[0-9]+$'"

echo "== dive predict --score: the classifier's view of a set of inputs"
e2e_run "$DIVE_BIN" predict mlp.cfg --checkpoint run1/best.h5 -o score.h5 --score
expect_ok "dive predict --score"
check "prints confidence, class entropy and a score between 1 and K = 3" bash -c \
    "grep -E '^score of .*: [0-9]+ images, mean confidence 0\\.[0-9]{4}, class entropy [0-9.]+ of 1\\.0986 \\(log 3\\), inception-like score [0-9.]+ of 3' $OUT |
     awk '{ s = \$(NF - 2); exit !(s >= 1 && s <= 3) }'"
e2e_run "$DIVE_BIN" eval mlp.cfg --checkpoint run1/best.h5 --score
expect_fail "dive eval --score" --status 2 "--score is an option of dive predict"

echo "== dive plot: the run's curves as a PNG"
e2e_run "$DIVE_BIN" plot run1
expect_ok "dive plot run1"
check "writes run1/curves.png, a PNG (loss and accuracy panels: 900x600)" \
    bash -c "head -c 8 run1/curves.png | od -An -tx1 | grep -q '89 50 4e 47 0d 0a 1a 0a' &&
             [ \"\$(od -An -tu1 -j16 -N8 run1/curves.png | tr -s ' ')\" = ' 0 0 3 132 0 0 2 88' ]"
e2e_run "$DIVE_BIN" plot run1/metrics.csv -o plot2.png --x step --width 400
expect_ok "dive plot METRICS.csv -o --x step --width"
check "plot2.png exists" test -s plot2.png
e2e_run "$DIVE_BIN" plot no_such_run
expect_fail "dive plot on a folder without metrics.csv" "no_such_run/metrics.csv: cannot open"
e2e_run "$DIVE_BIN" plot run1 --width 10
expect_fail "dive plot --width 10" --status 2 "--width 10: expected 320 to 4000"

echo "== the same run streaming from HDF5 (memory_mb = 0) with checkpoints every 3 steps"
e2e_run "$DIVE_BIN" train mlp.cfg --set train.run_dir=run_stream --set data.memory_mb=0 \
    --set train.checkpoint_every=3
expect_ok "dive train, streaming, prefetching while checkpoints are written"
check "it streams" grep -q 'streaming; backend' "$OUT"
check "its final model predicts exactly as the in-memory run's" \
    bash -c "'$DIVE_BIN' predict mlp.cfg --checkpoint run1/last.h5 -o a.csv >/dev/null &&
             '$DIVE_BIN' predict mlp.cfg --checkpoint run_stream/last.h5 -o b.csv >/dev/null &&
             test -s a.csv && cmp -s a.csv b.csv"

echo "== eval --json on run1/best.h5 (pass mark $MIN_ACC)"
eval_acc mlp.cfg run1/best.h5
expect_ok "dive eval --json (1 rank)"
check "eval --json prints one JSON object" bash -c "[ \$(wc -l <'$OUT') -eq 1 ] && grep -Eq '^\{.*\"loss\".*\"accuracy\".*\"samples\".*\}\$' '$OUT'"
check "eval counts all 300 val samples (samples=$SAMPLES)" test "$SAMPLES" = 300
check "accuracy $ACC >= $MIN_ACC" num_ge "$ACC" "$MIN_ACC"
ACC1=$ACC LOSS1=$LOSS

eval_acc mlp.cfg run1/best.h5 2
expect_ok "dive eval --json under mpirun -np 2"
check "eval on 2 ranks counts every sample once (samples=$SAMPLES)" test "$SAMPLES" = 300
check "eval on 2 ranks gives the 1-rank accuracy ($ACC vs $ACC1)" test "$ACC" = "$ACC1"

e2e_run "$DIVE_BIN" eval mlp.cfg --checkpoint run1/best.h5
expect_ok "dive eval (text)"
check "eval text names loss and accuracy" grep -q 'loss .* accuracy' "$OUT"

echo "== train under mpirun -np 2"
e2e_mpi 2 "$DIVE_BIN" train mlp.cfg --set train.run_dir=run2
expect_ok "dive train under mpirun -np 2"
check "2-rank run reports 2 ranks x 30 = global batch 60" grep -q '2 ranks x 30 = global batch 60' "$OUT"
check "exactly one rank prints (one done line)" test "$(grep -c '^done:' "$OUT")" = 1
check "run2/last.h5 and run2/best.h5 exist" test -s run2/last.h5 -a -s run2/best.h5
check "run2 metrics.csv has $EPOCHS epochs" metrics_ok run2 "$EPOCHS"
eval_acc mlp.cfg run2/best.h5
expect_ok "dive eval of the 2-rank checkpoint"
check "2-rank accuracy $ACC >= $MIN_ACC" num_ge "$ACC" "$MIN_ACC"
# Same config and seed: the same trajectory up to summation order.
check "2-rank val loss $LOSS within 0.02 of 1-rank $LOSS1" \
    awk -v a="$LOSS" -v b="$LOSS1" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && d < 0.02) }'

echo "== dive info on a checkpoint"
e2e_run "$DIVE_BIN" info run1/best.h5
expect_ok "dive info run1/best.h5"
check "info says Dive checkpoint" grep -q 'Dive checkpoint' "$OUT"
check "info lists /model/dense_1/weight (32, 4)" grep -Eq '/model/dense_1/weight +\(32, 4\)' "$OUT"

echo "== predict"
e2e_run "$DIVE_BIN" predict mlp.cfg --checkpoint run1/best.h5 -o out.csv
expect_ok "dive predict -o out.csv"
check "out.csv: 300 rows of index,pred,out0..out2 with pred in 0..2" \
    bash -c "[ -f out.csv ] && [ \$(grep -c '^[0-9]' out.csv) -eq 300 ] &&
             awk -F, '/^[0-9]/ { if (NF != 5 || \$2 < 0 || \$2 > 2) bad++ } END { exit bad > 0 }' out.csv"
e2e_run "$DIVE_BIN" predict mlp.cfg --checkpoint run1/best.h5 -o out.h5
expect_ok "dive predict -o out.h5"
e2e_run "$DIVE_BIN" info out.h5
check "out.h5 holds /pred (300) and /output (300, 3)" \
    bash -c "grep -Eq '/pred +\(300\)' '$OUT' && grep -Eq '/output +\(300, 3\)' '$OUT'"

echo "== early stopping (lr = 0: the val loss never improves after epoch 1)"
e2e_run "$DIVE_BIN" train mlp.cfg --set train.run_dir=run_es --set train.epochs=10 \
    --set train.lr=0 --set train.patience=1
expect_ok "dive train with patience = 1"
check "prints early stopping" grep -q '^early stopping' "$OUT"
check "stops after epoch 2 of 10 (metrics.csv)" metrics_ok run_es 2
# The untrained model must fail the pass mark, or the accuracy check proves nothing.
eval_acc mlp.cfg run_es/best.h5
check "an untrained model ($ACC) stays below 0.7" awk -v a="$ACC" 'BEGIN { exit !(a != "" && a < 0.7) }'

echo "== keep = 2 with checkpoint_every = 7"
e2e_run "$DIVE_BIN" train mlp.cfg --set train.run_dir=run_keep --set train.keep=2 \
    --set train.checkpoint_every=7
expect_ok "dive train with keep = 2, checkpoint_every = 7"
n=$(find run_keep -maxdepth 1 -name 'ckpt-*.h5' | wc -l)
check "at most 2 ckpt-*.h5 remain ($n)" test "$n" -ge 1 -a "$n" -le 2
newest=$(find run_keep -maxdepth 1 -name 'ckpt-*.h5' | sed 's/.*ckpt-\([0-9]*\)\.h5/\1/' | sort -n | tail -n 1)
check "the newest is ckpt-100.h5 (after the last step)" test "${newest:-}" = 100
check "last.h5 is the newest checkpoint" cmp -s run_keep/last.h5 "run_keep/ckpt-${newest:-none}.h5"
check "no temporary files left in run_keep" \
    bash -c "[ -z \"\$(find run_keep -name '*.tmp*' -o -name '.*.h5*' | head -n 1)\" ]"

echo "== resume"
e2e_run "$DIVE_BIN" train mlp.cfg --set train.epochs=7 --resume auto
expect_ok "dive train --resume auto with epochs = 7"
check "prints resuming from run1/last.h5" grep -q '^resuming from run1/last.h5: epoch 6, step 100' "$OUT"
check "continues at epoch 6/7 (no epoch 1)" \
    bash -c "grep -q '^epoch 6/7 |' '$OUT' && grep -q '^epoch 7/7 |' '$OUT' && ! grep -q '^epoch 1/7' '$OUT'"
check "metrics.csv now has epochs 1..7" metrics_ok run1 7
check "the resumed run ends at step 140" grep -q '^done: 140 steps' "$OUT"

e2e_mpi 2 "$DIVE_BIN" train mlp.cfg --set train.epochs=8 --resume run1/last.h5
expect_ok "resume a 1-rank checkpoint under mpirun -np 2"
check "says it resumes a checkpoint written on 1 rank" \
    bash -c "grep -q '^resuming from run1/last.h5: epoch 8, step 140' '$OUT' && grep -q 'written on 1 rank' '$OUT'"
check "metrics.csv now has epochs 1..8" metrics_ok run1 8
eval_acc mlp.cfg run1/best.h5
check "accuracy after resuming $ACC >= $MIN_ACC" num_ge "$ACC" "$MIN_ACC"

e2e_run "$DIVE_BIN" train mlp.cfg --set train.run_dir=run_new --set train.epochs=1 --resume auto
expect_ok "--resume auto with an empty run_dir"
check "starts a new run" grep -q 'no checkpoint in run_new yet: starting a new run' "$OUT"

e2e_summary
