#!/usr/bin/env bash
# bench/overlap.sh — how much of the gradient all-reduce Dive hides behind
# backward, on NP GPUs of one node (NCCL; needs NP GPUs, NP >= 2).
#
#   bench/overlap.sh [NP] [CONFIG] [PER_RANK_BATCH]    (default 2, examples/fmnist_cnn.cfg, 512)
#
# Three runs with the same per-rank batch b:
#   t1   one step on 1 rank (no all-reduce): compute alone
#   tN   one step on NP ranks (global batch NP*b): compute + what is not hidden
#   tar  the all-reduce of the model's gradient alone (bench_allreduce, the
#        same bucket size), NP ranks
# hidden = 1 - (tN - t1) / tar, clipped to [0, 1]: 1 means the all-reduce
# costs nothing, 0 means none of it overlaps. Figures only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
np=${1:-2}
cfg=${2:-examples/fmnist_cnn.cfg}
b=${3:-512}
steps=${BENCH_STEPS:-200}
dive=${DIVE:-build/bin/dive}
[[ -x "$dive" && -x build/bin/bench_allreduce ]] || { echo "overlap: run launch/build first" >&2; exit 1; }
./launch/import-fmnist >/dev/null
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dive-overlap.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# samples/s of the last "train <X> samples/s" line of a log
rate() { sed -n 's/.*train \([0-9.]*\) samples\/s.*/\1/p' "$1" | tail -n 1; }

run() { # NP GLOBAL_BATCH LOG
  ./launch/mpirun -np "$1" "$dive" train "$cfg" --set train.backend=cuda \
    --set train.batch="$2" --set train.max_steps="$steps" --set train.run_dir="$tmp/run$1" \
    --set train.progress=lines >"$3" 2>&1 || { tail -n 5 "$3" >&2; exit 1; }
}
run 1 "$b" "$tmp/one.log"
run "$np" $((np * b)) "$tmp/many.log"
params=$(sed -n 's/.*total \([0-9]*\) parameters.*/\1/p' "$tmp/one.log")
bucket=$(sed -n 's/^bucket_mb *= *//p' "$cfg"); bucket=${bucket:-4}
./launch/mpirun -np "$np" build/bin/bench_allreduce \
  "$(awk -v p="$params" 'BEGIN { print p / 1048576 }')" cuda auto "$bucket" >"$tmp/ar.log"
grep -q gradients "$tmp/many.log" && grep -o 'gradients [a-z]*' "$tmp/many.log" | head -n 1
awk -v r1="$(rate "$tmp/one.log")" -v rn="$(rate "$tmp/many.log")" -v b="$b" -v np="$np" \
    -v tar="$(sed -n 's/^allreduce: \([0-9.]*\) ms.*/\1/p' "$tmp/ar.log")" -v p="$params" 'BEGIN {
  t1 = b / r1 * 1e3; tn = np * b / rn * 1e3
  h = 1 - (tn - t1) / tar; if (h < 0) h = 0; if (h > 1) h = 1
  printf "model %d parameters, per-rank batch %d, %d ranks\n", p, b, np
  printf "step, 1 rank (no all-reduce): %.3f ms\n", t1
  printf "step, %d ranks:               %.3f ms\n", np, tn
  printf "all-reduce alone:             %.3f ms\n", tar
  printf "hidden behind backward:       %.0f%%\n", 100 * h }'
