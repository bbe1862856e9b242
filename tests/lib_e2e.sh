# shellcheck shell=bash
# lib_e2e.sh — helpers shared by the end-to-end tests (tests/e2e_*.sh).
# Sourced, not run: it is named lib_e2e.sh so CTest's e2e_*.sh glob does not
# register it as a test.
#
# Environment (CTest sets it; defaults make a manual run work too):
#   DIVE_BIN        the dive binary
#   DIVE_SOURCE_DIR the repository root
#
# After sourcing: $WORK is a fresh temporary directory removed on exit, and
#   e2e_run CMD...            runs CMD under `timeout`, sets RC, OUT, ERR
#   e2e_mpi NP CMD...         the same under mpirun --oversubscribe -np NP
#   e2e_ranks NP CMD...       under mpirun, recording each rank's exit status
#                             (RANK_RCS) and stderr; every rank exits 0 to
#                             mpirun so no rank is killed before it reports
#   pass / fail / check       count results; e2e_summary prints
#                             "N passed, M failed" and exits 1 if any failed

set -u

: "${DIVE_BIN:?set DIVE_BIN to the dive binary (CTest does)}"
: "${DIVE_SOURCE_DIR:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1}
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
export OMPI_MCA_rmaps_base_oversubscribe=${OMPI_MCA_rmaps_base_oversubscribe:-1}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
MPIRUN=${MPIRUN:-mpirun}
E2E_TIMEOUT=${E2E_TIMEOUT:-60}
# After a run has hung once, later runs get a shorter limit so that a trainer
# that hangs every time still finishes the script inside CTest's timeout.
E2E_TIMEOUT_AFTER_HANG=${E2E_TIMEOUT_AFTER_HANG:-20}
E2E_HANGS=0

WORK=$(mktemp -d "${TMPDIR:-/tmp}/dive-e2e.XXXXXX") || exit 1
trap 'rm -rf "$WORK"' EXIT
cd "$WORK" || exit 1

E2E_PASSED=0
E2E_FAILED=0
E2E_FAILED_NAMES=()
RC=0
OUT=$WORK/.out
ERR=$WORK/.err
CMD=""
RANK_RCS=()

pass() {
    E2E_PASSED=$((E2E_PASSED + 1))
    echo "  ok    $1"
}

# fail NAME REASON...: counts a failure and shows the last command's output.
fail() {
    local name=$1
    shift
    E2E_FAILED=$((E2E_FAILED + 1))
    E2E_FAILED_NAMES+=("$name")
    echo "  FAIL  $name"
    local why
    for why in "$@"; do echo "        - $why"; done
    if [ -n "$CMD" ]; then
        echo "        command: $CMD"
        echo "        exit status: $RC"
        echo "        --- stderr (last 15 lines) ---"
        tail -n 15 "$ERR" 2>/dev/null | sed 's/^/        | /'
        echo "        --- stdout (last 8 lines) ---"
        tail -n 8 "$OUT" 2>/dev/null | sed 's/^/        | /'
    fi
}

# check NAME CMD...: passes when CMD succeeds.
check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name" "condition failed: $*"; fi
}

e2e_summary() {
    echo
    if [ "$E2E_FAILED" -gt 0 ]; then
        echo "failed checks:"
        local n
        for n in "${E2E_FAILED_NAMES[@]}"; do echo "  - $n"; done
    fi
    echo "$E2E_PASSED passed, $E2E_FAILED failed"
    [ "$E2E_FAILED" -eq 0 ]
    exit $?
}

# ---- running ---------------------------------------------------------------

# e2e_limit: the time limit of the next run, in seconds.
e2e_limit() {
    if [ "$E2E_HANGS" -gt 0 ] && [ "$E2E_TIMEOUT_AFTER_HANG" -lt "$E2E_TIMEOUT" ]; then
        echo "$E2E_TIMEOUT_AFTER_HANG"
    else
        echo "$E2E_TIMEOUT"
    fi
}

# e2e_run CMD...: RC, OUT, ERR of CMD run under timeout (RC 124: it hung).
e2e_run() {
    CMD="$*"
    RANK_RCS=()
    E2E_LIMIT=$(e2e_limit)
    timeout -k 5 "$E2E_LIMIT" "$@" >"$OUT" 2>"$ERR" </dev/null
    RC=$?
    if [ "$RC" -eq 124 ] || [ "$RC" -eq 137 ]; then E2E_HANGS=$((E2E_HANGS + 1)); fi
}

e2e_mpi() {
    local np=$1
    shift
    e2e_run "$MPIRUN" --oversubscribe -np "$np" "$@"
}

# e2e_ranks NP CMD...: each rank runs CMD, writes its exit status to
# $WORK/.ranks/rc.<rank> and its stderr to err.<rank>, and exits 0. ERR then
# holds every rank's stderr followed by mpirun's own; RANK_RCS the statuses
# (a rank that never reported shows as "missing").
e2e_ranks() {
    local np=$1
    shift
    local dir=$WORK/.ranks
    rm -rf "$dir"
    mkdir -p "$dir"
    CMD="$MPIRUN -np $np [per-rank wrapper] $*"
    E2E_LIMIT=$(e2e_limit)
    # shellcheck disable=SC2016
    timeout -k 5 "$E2E_LIMIT" "$MPIRUN" --oversubscribe -np "$np" bash -c '
        d=$1; shift
        r=${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-0}}
        "$@" >"$d/out.$r" 2>"$d/err.$r" </dev/null
        echo $? >"$d/rc.$r"
        exit 0' e2e-rank "$dir" "$@" >"$WORK/.mpirun.out" 2>"$WORK/.mpirun.err" </dev/null
    RC=$?
    if [ "$RC" -eq 124 ] || [ "$RC" -eq 137 ]; then E2E_HANGS=$((E2E_HANGS + 1)); fi
    RANK_RCS=()
    : >"$ERR"
    : >"$OUT"
    local r
    for ((r = 0; r < np; r++)); do
        if [ -s "$dir/rc.$r" ]; then RANK_RCS+=("$(cat "$dir/rc.$r")"); else RANK_RCS+=(missing); fi
        cat "$dir/err.$r" >>"$ERR" 2>/dev/null
        cat "$dir/out.$r" >>"$OUT" 2>/dev/null
    done
    cat "$WORK/.mpirun.err" >>"$ERR"
    cat "$WORK/.mpirun.out" >>"$OUT"
}

# ---- judging the last run ----------------------------------------------------

# Prints why the last run looks like a crash or a hang; nothing if clean.
crash_reasons() {
    if [ "$RC" -eq 124 ] || [ "$RC" -eq 137 ]; then
        echo "timed out after ${E2E_LIMIT:-$E2E_TIMEOUT}s (hang?)"
    elif [ "$RC" -ge 128 ]; then
        echo "exit status $RC: killed by signal $((RC - 128))"
    fi
    local rr
    for rr in "${RANK_RCS[@]+"${RANK_RCS[@]}"}"; do
        if [ "$rr" = missing ]; then
            echo "a rank never reported its exit status (killed?)"
        elif [ "$rr" -ge 128 ]; then
            echo "a rank exited with status $rr (signal $((rr - 128)))"
        fi
    done
    local pat='core dumped|Segmentation|segmentation fault|on signal|Aborted|AddressSanitizer|double free|stack smashing|free\(\): invalid'
    if grep -Eq "$pat" "$OUT" "$ERR" 2>/dev/null; then
        echo "crash text in the output: $(grep -Eh "$pat" "$OUT" "$ERR" | head -n 1)"
    fi
}

# expect_ok NAME: the last run exited 0 without crash text.
expect_ok() {
    local name=$1 why
    why=$(crash_reasons)
    if [ "$RC" -ne 0 ] || [ -n "$why" ]; then
        fail "$name" "expected exit status 0, got $RC" ${why:+"$why"}
        return 1
    fi
    pass "$name"
}

# Lines of the last run's stderr that are Dive's own messages.
dive_messages() {
    grep -Ec '^dive( [a-z]+)?: ' "$ERR"
}

# expect_fail NAME [--status N] PHRASE...: the last run failed cleanly: a
# non-zero exit status below 128 (every rank, under e2e_ranks), no crash
# text, finished before the timeout, exactly one Dive message on stderr, and
# every PHRASE (fixed strings) in stderr. If SNAPSHOT_DIR is set, the files
# of that directory must be byte-for-byte unchanged (see snapshot_take).
expect_fail() {
    local name=$1
    shift
    local want_status=""
    if [ "${1:-}" = --status ]; then
        want_status=$2
        shift 2
    fi
    local reasons=() why p
    why=$(crash_reasons)
    [ -n "$why" ] && reasons+=("$why")
    if [ "${#RANK_RCS[@]}" -gt 0 ]; then
        local r=0 rr
        for rr in "${RANK_RCS[@]}"; do
            [ "$rr" = 0 ] && reasons+=("rank $r exited 0; every rank must fail")
            r=$((r + 1))
        done
    elif [ "$RC" -eq 0 ]; then
        reasons+=("exit status 0; expected a failure")
    fi
    if [ -n "$want_status" ] && [ "$RC" != "$want_status" ]; then
        reasons+=("exit status $RC; expected $want_status")
    fi
    local n
    n=$(dive_messages)
    [ "$n" -ne 1 ] && reasons+=("$n 'dive...:' messages on stderr; expected exactly one")
    for p in "$@"; do
        grep -Fq -- "$p" "$ERR" || reasons+=("stderr lacks \"$p\"")
    done
    if [ -n "${SNAPSHOT_DIR:-}" ]; then
        local diffs
        diffs=$(snapshot_diff)
        [ -n "$diffs" ] && reasons+=("files of $SNAPSHOT_DIR changed: $diffs")
    fi
    if [ "${#reasons[@]}" -gt 0 ]; then
        fail "$name" "${reasons[@]}"
        return 1
    fi
    pass "$name"
}

# ---- run_dir snapshots ---------------------------------------------------------

# snapshot_take DIR: remembers the sha256 of every file in DIR.
snapshot_take() {
    SNAPSHOT_DIR=$1
    (cd "$SNAPSHOT_DIR" && find . -type f ! -name '.*' | LC_ALL=C sort | xargs -r sha256sum) \
        >"$WORK/.snapshot"
}

# Prints the files that differ from the snapshot (changed, removed or new).
snapshot_diff() {
    local now
    now=$( (cd "$SNAPSHOT_DIR" && find . -type f ! -name '.*' | LC_ALL=C sort | xargs -r sha256sum))
    diff <(echo "$now") "$WORK/.snapshot" | grep -E '^[<>]' | awk '{print $3}' | sort -u |
        tr '\n' ' '
}

# ---- data and configs -------------------------------------------------------------

# gen_points N SEED [CLASSES]: CSV rows x,y,a,b,label of a learnable 3-class
# problem: (x, y) uniform in [-1,1]^2, the label is the 120-degree sector of
# the angle of (x, y); a and b are noise features. With CLASSES other than 3
# the label is instead the row number mod CLASSES (for out-of-range labels).
gen_points() {
    awk -v n="$1" -v seed="$2" -v k="${3:-3}" 'BEGIN {
        srand(seed); pi = atan2(0, -1)
        for (i = 0; i < n; i++) {
            x = 2 * rand() - 1; y = 2 * rand() - 1; a = rand() - 0.5; b = rand() - 0.5
            t = atan2(y, x); if (t < 0) t += 2 * pi
            c = int(t / (2 * pi / 3)); if (c > 2) c = 2
            if (k != 3) c = i % k
            printf "%.5f,%.5f,%.5f,%.5f,%d\n", x, y, a, b, c
        }
    }'
}

# make_data OUT.h5 [CLASSES]: 1200 training and 300 validation points in
# /train and /val of OUT.h5 (through `dive import csv`). Exits on failure.
make_data() {
    local out=$1 k=${2:-3} base
    base=$WORK/$(basename "$out" .h5)
    gen_points 1200 1 "$k" >"$base.train.csv"
    gen_points 300 2 "$k" >"$base.val.csv"
    if ! "$DIVE_BIN" import csv "$base.train.csv" -o "$out" --split train --label-col -1 >/dev/null ||
        ! "$DIVE_BIN" import csv "$base.val.csv" -o "$out" --split val --label-col -1 >/dev/null; then
        echo "cannot import generated data into $out"
        exit 1
    fi
}

# write_gan_cfg OUT.cfg DATA.h5 RUN_DIR [EPOCHS]: a small GAN on the test
# points read as 1x2x2 images (G: 4 noise values -> 16 relu -> 4 tanh ->
# reshape; D: conv 3x3 -> leaky ReLU -> one logit).
write_gan_cfg() {
    cat >"$1" <<EOF
[data]
file = $2
train = /train

[train]
epochs = ${4:-2}
batch = 60
lr = 0.002
beta1 = 0.5
seed = 7
run_dir = $3

[gan]
latent = 4
samples = 16

[generator.dense]
units = 16
activation = relu

[generator.dense]
units = 4
activation = tanh

[generator.reshape]
shape = 1,2,2

[discriminator.conv2d]
filters = 4
size = 3
pad = 1
activation = leaky_relu
alpha = 0.2

[discriminator.flatten]

[discriminator.dense]
units = 1
EOF
}

# write_cfg OUT.cfg DATA.h5 RUN_DIR [EPOCHS]: the test MLP, 4 -> 32 relu -> 3.
write_cfg() {
    cat >"$1" <<EOF
; end-to-end test model: 3-class sectors of the plane
[data]
file = $2
train = /train
val = /val

[train]
epochs = ${4:-5}
batch = 60
optimizer = adam
lr = 0.01
seed = 7
loss = cross_entropy
run_dir = $3

[input]
shape = 4

[dense]
units = 32
activation = relu

[dense]
units = 3
EOF
}

# json_field NAME FILE: the number of "NAME": in a one-line JSON object.
json_field() {
    sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\([-0-9.eE+naif]*\).*/\1/p" "$2" | head -n 1
}

# num_ge A B: A >= B as floating-point numbers.
num_ge() {
    awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "" && a + 0 >= b + 0) }'
}
