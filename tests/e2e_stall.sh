#!/usr/bin/env bash
# e2e_stall.sh — no rank can stall a Dive job (issue 16). One rank of a
# training is stopped with SIGSTOP; with DIVE_COMM_TIMEOUT=3 the watchdog of
# the ranks still running fires, names the stopped rank ("rank 1 (host) did
# not arrive") and ends the job, non-zero, well within 30 s: on 2 and 3
# ranks, on the shared-memory path and on the MPI path (DIVE_COMM_ALGO=mpi).
# A rank that is only late (stopped for less than the timeout, then
# continued) does not disturb the run, nor does the short timeout itself.
# Nothing is left running: every rank process still there at the end is
# continued and killed.
# shellcheck disable=SC2317 # helpers run through check()
set -u
# shellcheck source=tests/lib_e2e.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib_e2e.sh"

PATTERN='train stal[l].cfg' # matches the ranks (and mpirun), not pgrep itself
BOUND=30                    # seconds from SIGSTOP to the end of the job

# leftovers: continue and kill every process of this script's runs
leftovers() {
    local p
    for p in $(pgrep -f "$PATTERN"); do
        kill -CONT "$p" 2>/dev/null
        kill -9 "$p" 2>/dev/null
    done
}
trap 'leftovers; rm -rf "$WORK"' EXIT

make_data data.h5
write_cfg stall.cfg data.h5 run 5

# started LOG: waits (up to 60 s) for a progress line, so the signal reaches
# a training loop, not a process still starting MPI
started() {
    for _ in $(seq 1 1200); do
        grep -q "step [0-9]*/" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# rank_pid R: the process of rank R (its environment says so)
rank_pid() {
    local p
    for p in $(pgrep -f "$PATTERN"); do
        [ "$(cat "/proc/$p/comm" 2>/dev/null)" = dive ] || continue
        if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1"; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# wait_bounded PID SECONDS: waits for the background job PID at most
# SECONDS; sets JOB_RC (124 when it was still running) and TOOK (seconds).
wait_bounded() {
    local job=$1 limit=$2 t0
    t0=$(date +%s.%N)
    while kill -0 "$job" 2>/dev/null; do
        if awk -v a="$(date +%s.%N)" -v b="$t0" -v l="$limit" 'BEGIN { exit !(a - b > l) }'; then
            JOB_RC=124
            TOOK=$limit
            return
        fi
        sleep 0.1
    done
    wait "$job"
    JOB_RC=$?
    TOOK=$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.1f", a - b }')
}

# stall NP ALGO: SIGSTOP rank 1 of a long training on NP ranks
stall() {
    local np=$1 algo=$2 log=stall_$1_$2.log victim
    echo "== $np ranks, $algo path: SIGSTOP rank 1 mid-training (DIVE_COMM_TIMEOUT=3)"
    local envs=(DIVE_COMM_TIMEOUT=3)
    [ "$algo" = mpi ] && envs+=(DIVE_COMM_ALGO=mpi)
    env "${envs[@]}" timeout -k 5 120 "$MPIRUN" --oversubscribe -np "$np" "$DIVE_BIN" train \
        stall.cfg --set train.epochs=100000 --set "train.run_dir=run_$np$algo" >"$log" 2>&1 &
    local job=$!
    started "$log"
    sleep 0.5
    victim=$(rank_pid 1)
    check "$np ranks, $algo: found rank 1's process" test -n "$victim"
    [ -n "$victim" ] && kill -STOP "$victim"
    wait_bounded "$job" "$BOUND"
    CMD="mpirun -np $np dive train stall.cfg (rank 1 stopped)"
    RC=$JOB_RC
    OUT=$log
    ERR=$log
    check "$np ranks, $algo: the job ends within ${BOUND} s of the stop (took $TOOK s)" \
        test "$JOB_RC" -ne 124
    check "$np ranks, $algo: it ends non-zero (got $JOB_RC)" test "$JOB_RC" -ne 0
    # a rank still running fired (the first to have waited 3 s), and names
    # rank 1; another one may have joined it, saying who fired
    check "$np ranks, $algo: a waiting rank's watchdog fired after 3 s" \
        grep -Eq "^\[rank [02]/$np [^]]*\] watchdog: [a-z -]+ at [a-z0-9 -]+ made no progress for 3 s; " "$log"
    check "$np ranks, $algo: it names rank 1 as not arrived" \
        grep -Eq "^\[rank [02]/$np [^]]*\] watchdog: .*; rank 1 \([^)]*\) did not arrive; set DIVE_COMM_TIMEOUT or \[train\] comm_timeout to wait longer$" "$log"
    check "$np ranks, $algo: at most one watchdog line per rank" \
        test "$(grep -c "watchdog:" "$log")" -le "$np"
    grep -a "watchdog:" "$log" | sed 's/^/        | /'
    leftovers
    sleep 0.2
    check "$np ranks, $algo: no process is left behind" bash -c "! pgrep -f '$PATTERN' >/dev/null"
}

stall 2 shm
stall 2 mpi
stall 3 shm
stall 3 mpi

echo "== a rank that is only late (stopped 1.5 s, then continued) with DIVE_COMM_TIMEOUT=3"
DIVE_COMM_TIMEOUT=3 timeout -k 5 120 "$MPIRUN" --oversubscribe -np 2 "$DIVE_BIN" train stall.cfg \
    --set train.epochs=100000 --set train.max_steps=60000 --set train.run_dir=run_late \
    >late.log 2>&1 &
job=$!
started late.log
victim=$(rank_pid 1)
check "found rank 1's process" test -n "$victim"
if [ -n "$victim" ]; then
    kill -STOP "$victim"
    sleep 1.5
    kill -CONT "$victim"
fi
wait_bounded "$job" 110
CMD="mpirun -np 2 dive train stall.cfg (rank 1 late)"
RC=$JOB_RC
OUT=late.log
ERR=late.log
expect_ok "the late rank's run carries on and succeeds"
check "it trains to the end" grep -q "^done: 60000 steps" late.log
check "no watchdog line" bash -c "! grep -q watchdog: late.log"

echo "== normal runs with DIVE_COMM_TIMEOUT=3"
DIVE_COMM_TIMEOUT=3 e2e_mpi 3 "$DIVE_BIN" train stall.cfg --set train.run_dir=run_n3
expect_ok "3 ranks, shm path"
DIVE_COMM_TIMEOUT=3 DIVE_COMM_ALGO=mpi e2e_mpi 2 "$DIVE_BIN" train stall.cfg \
    --set train.run_dir=run_n2
expect_ok "2 ranks, MPI path"
check "no watchdog line" bash -c "! grep -q watchdog: '$ERR' '$OUT'"

e2e_summary
