#!/usr/bin/env bash
# e2e_kill.sh — a run killed with SIGKILL on every rank, at a random moment
# (possibly while rank 0 writes a checkpoint), leaves a readable last.h5, and
# `--resume auto` carries on from it.
# shellcheck disable=SC2317 # helpers run through check()
set -u
# shellcheck source=tests/lib_e2e.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib_e2e.sh"

make_data data.h5
write_cfg kill.cfg data.h5 run 400

# started LOG: waits (up to 60 s) until the run in the background has printed
# a progress line, so a signal sent next reaches a training loop, not a
# process still starting MPI (which would die without a word, rightly)
started() {
    for _ in $(seq 1 1200); do
        grep -q "step [0-9]*/" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

echo "== train on 2 ranks, checkpoint every 7 steps, SIGKILL the whole job"
mpirun --oversubscribe -np 2 "$DIVE_BIN" train kill.cfg --set train.checkpoint_every=7 \
    --set train.keep=2 >train.log 2>&1 &
job=$!
for _ in $(seq 1 300); do
    [ -e run/last.h5 ] && break
    sleep 0.05
done
sleep 0.7
pkill -9 -P "$job" 2>/dev/null # the ranks first, so none outlives mpirun
kill -9 "$job" 2>/dev/null
wait "$job" 2>/dev/null
sleep 0.2
check "the killed job is gone" bash -c "! pgrep -f 'train kil[l].cfg' >/dev/null"
check "a checkpoint was written before the kill" test -e run/last.h5

e2e_run "$DIVE_BIN" info run/last.h5
expect_ok "dive info reads the last.h5 left by the killed run"
check "it is a whole checkpoint" grep -q "Dive checkpoint" "$OUT"
step=$(sed -n 's/.* step \([0-9]*\) epoch.*/\1/p' "$OUT")
check "it holds a step count ($step)" test -n "$step"

stop=$((${step:-0} + 25))
e2e_run mpirun --oversubscribe -np 2 "$DIVE_BIN" train kill.cfg --set train.checkpoint_every=7 \
    --set train.keep=2 --set "train.max_steps=$stop" --resume auto
expect_ok "--resume auto after the kill"
check "resumes from last.h5 at step $step" grep -q "resuming from run/last.h5: .*step $step" "$OUT"
check "stops at step $stop" grep -q "^done: $stop steps" "$OUT"
check "no temporary checkpoint files are left" \
    bash -c "! ls run | grep -q tmp"

echo "== SIGTERM (a scheduler's time limit, Ctrl-C): checkpoint at the next step, then stop"
"$DIVE_BIN" train kill.cfg --set train.run_dir=run_term --set train.epochs=100000 >term.log 2>&1 &
job=$!
started term.log
kill -TERM "$job"
wait "$job"
rc=$?
check "exits with 128 + SIGTERM (got $rc)" test "$rc" -eq 143
check "says where the checkpoint is" grep -q "interrupted by Terminated: the checkpoint of step" term.log
tstep=$(sed -n 's/.*the checkpoint of step \([0-9]*\) is in.*/\1/p' term.log)
e2e_run "$DIVE_BIN" info run_term/last.h5
check "last.h5 holds that step ($tstep)" grep -q "step $tstep epoch" "$OUT"
e2e_run "$DIVE_BIN" train kill.cfg --set train.run_dir=run_term --set "train.max_steps=$((${tstep:-0} + 5))" --resume auto
expect_ok "resume after SIGTERM"
check "resumes at step $tstep" grep -q "resuming from run_term/last.h5: .*step $tstep" "$OUT"

echo "== SIGTERM to every rank of a 2-rank job (as srun delivers it)"
mpirun --oversubscribe -np 2 "$DIVE_BIN" train kill.cfg --set train.run_dir=run_term2 --set train.epochs=100000 >term2.log 2>&1 &
job=$!
started term2.log
pkill -TERM -P "$job"
wait "$job"
rc=$?
check "the job ends non-zero (got $rc)" test "$rc" -ne 0
check "rank 0 says where the checkpoint is" grep -q "interrupted by Terminated" term2.log
e2e_run "$DIVE_BIN" info run_term2/last.h5
expect_ok "its last.h5 is whole"

e2e_summary
