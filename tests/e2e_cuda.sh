#!/usr/bin/env bash
# e2e_cuda.sh — end to end on a GPU: the same configs trained on the CPU and
# on the CUDA backend agree; two ranks sharing one GPU average through the
# MPI path and match one rank; NCCL on one rank; bf16; resume across
# backends; comm = nccl refused where a GPU is shared.
#
# CTest label `cuda`. Exits 77 (CTest: skipped) with one line saying why when
# Dive has no usable CUDA backend here.
#
# Models: the e2e MLP (4 -> 32 relu -> 3) and a small CNN over the same
# points read as 1x2x2 images (conv 3x3 pad 1 -> batchnorm -> relu ->
# maxpool 2 stride 1 -> dropout -> dense), so conv, pooling, batch norm and
# dropout all run on both backends. The CNN uses momentum SGD, not Adam: the
# conv bias before batch norm has a gradient that is zero up to rounding,
# and Adam would scale that rounding noise up to full steps, so two backends
# would part ways in that bias (harmlessly for training, visibly in the
# outputs).
# shellcheck disable=SC2317 # helpers run through check()
set -u
# shellcheck source=tests/lib_e2e.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib_e2e.sh"

MIN_ACC=0.9
make_data data.h5
write_cfg mlp.cfg data.h5 run_cpu 5

cat >cnn.cfg <<EOF
[data]
file = data.h5
train = /train
val = /val

[train]
epochs = 5
batch = 60
optimizer = momentum
lr = 0.05
seed = 7
run_dir = cnn_cpu

[input]
shape = 1,2,2

[conv2d]
filters = 8
size = 3
pad = 1

[batchnorm]

[activation]
activation = relu

[maxpool]
size = 2
stride = 1

[flatten]

[dropout]
rate = 0.1

[dense]
units = 3
EOF

e2e_run "$DIVE_BIN" train mlp.cfg --set train.backend=cuda --set train.run_dir=probe \
    --set train.max_steps=1
if [ "$RC" -ne 0 ]; then
    echo "e2e_cuda: skipped: no usable CUDA backend: $(grep -m1 'dive' "$ERR")"
    exit 77
fi

# max_diff A.csv B.csv: the largest absolute difference of the model outputs
# (out0..outK-1, not index or predicted class) of two predict CSVs of the
# same shape; prints it, fails when the shapes differ.
max_diff() {
    awk -F, 'NR == FNR { for (i = 1; i <= NF; i++) a[FNR, i] = $i; n[FNR] = NF; next }
        { if (NF != n[FNR]) bad = 1
          for (i = 3; i <= NF; i++) { if ($i !~ /^[-0-9.eE+]+$/) continue
              d = $i - a[FNR, i]; if (d < 0) d = -d; if (d > m) m = d } }
        END { if (bad) exit 1; printf "%.3g\n", m + 0 }' "$1" "$2"
}

# preds CFG CKPT OUT.csv [BACKEND]: dive predict on the val split.
preds() {
    "$DIVE_BIN" predict "$1" --checkpoint "$2" -o "$3" --set train.backend="${4:-cpu}" >/dev/null
}

# close A.csv B.csv TOL: predictions agree within TOL.
close() {
    local d
    d=$(max_diff "$1" "$2") || return 1
    echo "        max |diff| $1 vs $2: $d (tolerance $3)"
    awk -v d="$d" -v t="$3" 'BEGIN { exit !(d <= t) }'
}

val_acc() { # RUN_DIR: val accuracy of the last epoch in metrics.csv
    tail -n 1 "$1/metrics.csv" | cut -d, -f7
}

for model in mlp cnn; do
    echo "== $model: CPU and CUDA, same config and seed"
    e2e_run "$DIVE_BIN" train $model.cfg --set train.backend=cpu --set train.run_dir=${model}_cpu
    expect_ok "$model on the CPU"
    e2e_run "$DIVE_BIN" train $model.cfg --set train.backend=cuda --set train.run_dir=${model}_gpu
    expect_ok "$model on the GPU"
    check "$model: the GPU run says backend cuda" grep -q 'backend cuda' "$OUT"
    acc_c=$(val_acc ${model}_cpu) acc_g=$(val_acc ${model}_gpu)
    check "$model: GPU val accuracy $acc_g >= $MIN_ACC" num_ge "$acc_g" "$MIN_ACC"
    check "$model: CPU $acc_c and GPU $acc_g within 0.02" \
        awk -v a="$acc_c" -v b="$acc_g" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 0.02) }'
    check "$model: GPU-trained checkpoint predicts the same on the CPU and the GPU" \
        bash -c "$(declare -f preds max_diff close); preds $model.cfg ${model}_gpu/last.h5 g_on_c.csv cpu &&
                 preds $model.cfg ${model}_gpu/last.h5 g_on_g.csv cuda && close g_on_c.csv g_on_g.csv 1e-4"
    check "$model: CPU and GPU training end at nearby models (outputs within 0.05)" \
        bash -c "$(declare -f preds max_diff close); preds $model.cfg ${model}_cpu/last.h5 c.csv &&
                 preds $model.cfg ${model}_gpu/last.h5 g.csv && close c.csv g.csv 0.05"
done

echo "== two ranks on one GPU: gradients through the MPI path"
e2e_mpi 2 "$DIVE_BIN" train mlp.cfg --set train.backend=cuda --set train.run_dir=gpu2
expect_ok "mpirun -np 2, backend = cuda, one GPU"
check "it averages through MPI (the GPU is shared)" grep -q 'gradients mpi' "$OUT"
check "2 ranks on the GPU follow the 1-rank GPU run (outputs within 1e-3)" \
    bash -c "$(declare -f preds max_diff close); preds mlp.cfg mlp_gpu/last.h5 g1.csv &&
             preds mlp.cfg gpu2/last.h5 g2.csv && close g1.csv g2.csv 1e-3"

echo "== comm = nccl where two ranks share the GPU is refused on every rank"
e2e_ranks 2 "$DIVE_BIN" train mlp.cfg --set train.backend=cuda --set train.comm=nccl \
    --set train.run_dir=refused
expect_fail "comm = nccl with a shared GPU" "NCCL"

echo "== NCCL on one rank"
e2e_run "$DIVE_BIN" train mlp.cfg --set train.backend=cuda --set train.comm=nccl \
    --set train.run_dir=nccl1
expect_ok "comm = nccl, 1 rank"
check "it says gradients nccl" grep -q 'gradients nccl' "$OUT"

echo "== bf16 GEMMs"
e2e_run "$DIVE_BIN" train cnn.cfg --set train.backend=cuda --set train.precision=bf16 \
    --set train.run_dir=bf16
expect_ok "precision = bf16"
acc=$(val_acc bf16)
check "bf16 val accuracy $acc >= $MIN_ACC" num_ge "$acc" "$MIN_ACC"

echo "== resume across backends: 30 steps on the GPU, the rest on the CPU"
e2e_run "$DIVE_BIN" train mlp.cfg --set train.backend=cuda --set train.run_dir=mixed \
    --set train.max_steps=30
expect_ok "GPU run stopped at step 30"
e2e_run "$DIVE_BIN" train mlp.cfg --set train.backend=cpu --set train.run_dir=mixed --resume auto
expect_ok "resumed on the CPU"
check "the resumed run continues from step 30" grep -q 'step 30' "$OUT"
check "and finishes all 100 steps" grep -q '^done: 100 steps' "$OUT"

echo "== resume on the GPU continues like the uninterrupted GPU run"
e2e_run "$DIVE_BIN" train cnn.cfg --set train.backend=cuda --set train.run_dir=cnn_split \
    --set train.max_steps=40
expect_ok "GPU CNN stopped at step 40"
e2e_run "$DIVE_BIN" train cnn.cfg --set train.backend=cuda --set train.run_dir=cnn_split \
    --resume auto
expect_ok "GPU CNN resumed"
check "resumed GPU run predicts like the uninterrupted one (within 1e-4)" \
    bash -c "$(declare -f preds max_diff close); preds cnn.cfg cnn_gpu/last.h5 u.csv cuda &&
             preds cnn.cfg cnn_split/last.h5 s.csv cuda && close u.csv s.csv 1e-4"


echo "== a GAN on both backends (the points read as 1x2x2 images)"
write_gan_cfg gan.cfg data.h5 gan_cpu 2
# epoch_col RUN_DIR COL: column COL of the first epoch's row of metrics.csv
epoch_col() { sed -n 2p "$1/metrics.csv" | cut -d, -f"$2"; }
# near A B TOL: |A - B| <= TOL * |A|
near() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; m = a < 0 ? -a : a; exit !(d <= t * m) }'; }
# with the averaged generator ([gan] ema): the grids and dive sample use it
e2e_run "$DIVE_BIN" train gan.cfg --set train.backend=cpu --set gan.ema=0.9
expect_ok "GAN on the CPU"
e2e_run "$DIVE_BIN" train gan.cfg --set train.backend=cuda --set train.run_dir=gan_gpu \
    --set gan.ema=0.9
expect_ok "GAN on the GPU"
for col in 4 5; do
    c=$(epoch_col gan_cpu $col) g=$(epoch_col gan_gpu $col)
    check "GAN: epoch 1 loss (column $col) CPU $c and GPU $g within 1%" near "$c" "$g" 0.01
done
check "the GPU run wrote its sample grids" test -s gan_gpu/samples-epoch-002.png
e2e_run "$DIVE_BIN" sample gan_gpu/last.h5 -o gpu_grid.png --count 16 --backend cuda
expect_ok "dive sample of the GPU GAN on the GPU"
check "it draws the run's last grid" cmp -s gpu_grid.png gan_gpu/samples-epoch-002.png
e2e_mpi 2 "$DIVE_BIN" train gan.cfg --set train.backend=cuda --set train.run_dir=gan_gpu2
expect_ok "GAN, 2 ranks on one GPU"
c=$(epoch_col gan_gpu 4) g=$(epoch_col gan_gpu2 4)
check "GAN: 2 ranks on the GPU follow 1 (d_loss $c vs $g within 1%)" near "$c" "$g" 0.01

e2e_summary
