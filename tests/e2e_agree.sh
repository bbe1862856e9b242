#!/usr/bin/env bash
# e2e_agree.sh — the ranks agree on the run before its first step, and
# replicas that drift apart stop the run (docs/reliability.md).
#
# Start-up: ranks launched MPMD-style (mpirun -np 1 dive train a.cfg : -np 1
# dive train b.cfg) with configs that differ in one setting each must stop
# before any step, every rank non-zero, with one message naming the setting;
# settings that may differ per rank (threads), and the same value written
# two ways, must not stop the run. The data plan and the resume point count
# too. Divergence: DIVE_TEST_PERTURB makes one rank's parameters drift; the
# check every check_every steps (and before each checkpoint) must name that
# rank, and the last checkpoint must be of an agreed step.
source "$(dirname "${BASH_SOURCE[0]}")/lib_e2e.sh"

make_data data.h5
write_cfg a.cfg data.h5 run 2
[ -s a.cfg ] || exit 1

# variant NAME SED-SCRIPT: NAME.cfg is a.cfg edited by SED-SCRIPT.
variant() { sed "$2" a.cfg >"$1.cfg"; }

# mpmd: rank 0 runs `dive train a.cfg ARGS0`, rank 1 `dive train B.cfg ARGS1`.
mpmd() {
    local b=$1 a0=$2 a1=$3
    # shellcheck disable=SC2086
    e2e_run "$MPIRUN" --oversubscribe -np 1 "$DIVE_BIN" train a.cfg $a0 \
        : -np 1 "$DIVE_BIN" train "$b.cfg" $a1
}

# mismatch NAME SED PHRASE: a config that differs from a.cfg by SED stops at
# start-up naming PHRASE, with no step taken.
mismatch() {
    local name=$1
    variant "$name" "$2"
    rm -rf run run2
    mpmd "$name" "" ""
    if expect_fail "mismatch: $name" "the ranks disagree on $3" "rank 0 has" "rank 1 has"; then
        if grep -q "^epoch 1/" "$OUT"; then fail "mismatch $name: no step" "a step was taken"; fi
    fi
}

echo "== one setting differs between the ranks' configs (MPMD)"
mismatch width 's/units = 32/units = 16/' "[dense_1] units"
mismatch seed 's/seed = 7/seed = 8/' "[train] seed"
mismatch activation 's/activation = relu/activation = tanh/' "[dense_1] activation"
mismatch lr 's/lr = 0.01/lr = 0.02/' "[train] lr"
mismatch optimizer 's/optimizer = adam/optimizer = sgd/' "[train] optimizer"
mismatch batch 's/batch = 60/batch = 30/' "[train] batch"
mismatch loss 's/loss = cross_entropy/loss = mse/' "[train] loss"
mismatch x_scale '/^val = /a x_scale = 0.5' "[data] x_scale"
mismatch run_dir 's/run_dir = run/run_dir = run2/' "[train] run_dir"
mismatch val '/^val = /d' "[data] val"
mismatch epochs 's/epochs = 2/epochs = 3/' "[train] epochs"
mismatch max_steps '/^seed = /a max_steps = 30' "[train] max_steps"
mismatch checkpoint_every '/^seed = /a checkpoint_every = 10' "[train] checkpoint_every"
mismatch clip_norm '/^seed = /a clip_norm = 1.0' "[train] clip_norm"
mismatch weight_decay '/^seed = /a weight_decay = 0.01' "[train] weight_decay"
mismatch layers '$a [dense]\nunits = 3' "[dense_3] units"

echo "== a --set on one rank only"
rm -rf run
mpmd a "" "--set train.lr=0.05"
expect_fail "mismatch: --set on rank 1" "the ranks disagree on [train] lr" "'0.05'"

echo "== the data plan: the same config, another dataset behind the same path"
mkdir -p d0 d1
(cd d0 && make_data data.h5 && write_cfg run.cfg data.h5 run 2)
(cd d1 && gen_points 600 5 >small.csv && "$DIVE_BIN" import csv small.csv -o data.h5 \
    --split train --label-col -1 >/dev/null && cp "$WORK/d0/run.cfg" . &&
    gen_points 300 2 >v.csv && "$DIVE_BIN" import csv v.csv -o data.h5 --split val \
    --label-col -1 >/dev/null)
e2e_run "$MPIRUN" --oversubscribe -np 1 --wdir "$WORK/d0" "$DIVE_BIN" train run.cfg \
    : -np 1 --wdir "$WORK/d1" "$DIVE_BIN" train run.cfg
expect_fail "mismatch: data plan" "the ranks disagree on data plan: train samples" "'1200'" \
    "'600'"

echo "== the resume point: one rank resumes, the other starts afresh"
rm -rf run
e2e_mpi 2 "$DIVE_BIN" train a.cfg --set train.max_steps=10
expect_ok "a run to resume from"
mpmd a "--resume run/last.h5" ""
expect_fail "mismatch: resume point" "the ranks disagree on resume point" "a new run"

echo "== a GAN setting"
write_gan_cfg g.cfg data.h5 grun 1
sed 's/latent = 4/latent = 6/' g.cfg >g2.cfg
e2e_run "$MPIRUN" --oversubscribe -np 1 "$DIVE_BIN" train g.cfg \
    : -np 1 "$DIVE_BIN" train g2.cfg
expect_fail "mismatch: [gan] latent" "the ranks disagree on [gan] latent"

echo "== what may differ, or is the same written otherwise"
variant threads '/^seed = /a threads = 1'
rm -rf run
mpmd threads "" ""
expect_ok "threads may differ per rank"
variant spelled 's/lr = 0.01/lr = 1e-2/'
rm -rf run
mpmd spelled "" "--set train.batch=60"
expect_ok "lr = 1e-2 against 0.01, and a --set of the value the config holds"

echo "== divergence: one rank's parameters drift"
for algo in shm mpi; do
    for np in 2 3; do
        rm -rf run
        bad=$((np - 1))
        export DIVE_TEST_PERTURB=$bad:15
        DIVE_COMM_ALGO=$algo e2e_mpi "$np" "$DIVE_BIN" train a.cfg --set train.check_every=10 \
            --set train.batch=60
        unset DIVE_TEST_PERTURB
        expect_fail "divergence ($algo, $np ranks, rank $bad drifts) stops at the next check" \
            "the replicas diverged by step 20" "the parameters of rank $bad differ"
        check "no checkpoint of the diverged step" test ! -e run/last.h5
    done
done

echo "== divergence: the last checkpoint is of an agreed step"
rm -rf run
export DIVE_TEST_PERTURB=1:25
e2e_mpi 2 "$DIVE_BIN" train a.cfg --set train.check_every=1000 --set train.checkpoint_every=10
unset DIVE_TEST_PERTURB
expect_fail "a checkpoint is checked before it is written" "the replicas diverged by step 30" \
    "run/last.h5 holds step 20"
e2e_run "$DIVE_BIN" info run/last.h5
check "last.h5 is step 20" grep -Eq "step[: =]+20\b" "$OUT"

echo "== no check: check_every = 0 lets the drift go on"
rm -rf run
export DIVE_TEST_PERTURB=1:5
e2e_mpi 2 "$DIVE_BIN" train a.cfg --set train.check_every=0 --set train.max_steps=12
unset DIVE_TEST_PERTURB
expect_fail "check_every = 0 still checks before the checkpoint" "the replicas diverged by step 12"

e2e_summary
