#!/usr/bin/env bash
# bench/fmnist.sh — training throughput of Dive against a PyTorch CPU
# reference on Fashion-MNIST, one thread per rank; prints figures, never
# passes or fails on time.
#
#   bench/fmnist.sh                 # one epoch of each model
#   BENCH_STEPS=200 bench/fmnist.sh # a quick run: 200 steps of each
#
#  1. For each of examples/fmnist_{mlp,cnn}.cfg: one epoch of `dive train` on
#     one rank (OPENBLAS_NUM_THREADS=1, train.threads=1) and the same model in
#     bench/fmnist_torch.py; a table of samples/s and the ratio dive/torch.
#  2. The MLP on 1 and on 2 MPI ranks with the same global batch: samples/s
#     of each and the speed-up.
#
# On a GPU: BENCH_DEVICE=cuda bench/fmnist.sh runs each model at each batch
# of BENCH_BATCHES (default "64 512") with backend = cuda against PyTorch on
# the same GPU (bench/fmnist_torch.py --device cuda), and skips part 2.
# BENCH_PRECISION (fp32, tf32 or bf16; default fp32) sets Dive's precision
# and, for tf32, PyTorch's TF32 switch.
#
# BENCH_MODELS (default "mlp cnn") picks the models. Needs build/bin/dive
# (launch/build), datasets/fmnist.h5 (imported here if missing) and, for the
# reference, python3-torch (launch/deps --bench). DIVE overrides the binary, PYTHON the interpreter
# (default /usr/bin/python3). Logs go to a temporary
# folder, kept (and named) when a run fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

dive=${DIVE:-build/bin/dive}
python=${PYTHON:-/usr/bin/python3}
if [[ ! -x "$dive" ]]; then
  echo "bench: $dive not found; run launch/build first" >&2
  exit 1
fi
./launch/import-fmnist >/dev/null

tmp=$(mktemp -d "${TMPDIR:-/tmp}/dive-bench.XXXXXX")
# Functions below run in $(...) subshells, so failures are marked by a file.
trap 'if [[ -e "$tmp/failed" ]]; then echo "bench: logs kept in $tmp" >&2; else rm -rf "$tmp"; fi' EXIT

export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
device=${BENCH_DEVICE:-cpu}
common=(--set train.threads=1 --set train.epochs=1 --set train.backend="$device")
torch_len=(--epochs 1 --device "$device")
batches=64
if [[ "$device" == cuda ]]; then
  batches=${BENCH_BATCHES:-64 512}
  common+=(--set train.precision="${BENCH_PRECISION:-fp32}")
  [[ "${BENCH_PRECISION:-fp32}" == tf32 ]] && torch_len+=(--tf32)
fi
if [[ -n "${BENCH_STEPS:-}" ]]; then
  if ! [[ "$BENCH_STEPS" =~ ^[0-9]+$ ]] || ((BENCH_STEPS <= 5)); then
    echo "bench: BENCH_STEPS must be a number above 5" >&2
    exit 2
  fi
  common+=(--set train.max_steps="$BENCH_STEPS")
  torch_len=(--steps "$BENCH_STEPS")
fi

# The number just before " samples/s" on the last line of $2 that matches
# the awk regex $1; fails when there is none.
rate() {
  awk -v pat="$1" '
    $0 ~ pat && / samples\/s/ { last = $0 }
    END {
      n = split(last, w, " ")
      for (i = 2; i <= n; i++) if (w[i] ~ /^samples\/s/) v = w[i - 1]
      gsub(/[^0-9.eE+-]/, "", v)
      if (v == "") exit 1
      print v
    }' "$2"
}

# dive_rate NAME NP CONFIG [BATCH]: train on NP ranks, print samples/s or n/a.
dive_rate() {
  local name=$1 np=$2 cfg=$3 log="$tmp/$1.log"
  local cmd=("$dive" train "$cfg" "${common[@]}" --set train.run_dir="$tmp/run-$name"
             --set train.batch="${4:-64}")
  ((np > 1)) && cmd=(./launch/mpirun -np "$np" "${cmd[@]}")
  if "${cmd[@]}" >"$log" 2>&1 && rate 'train ' "$log"; then
    return
  fi
  touch "$tmp/failed"
  { echo "bench: $name failed or printed no 'train <X> samples/s' line: ${cmd[*]}"
    tail -n 5 "$log" | sed 's/^/    /'; } >&2
  echo n/a
}

# torch_rate MODEL [BATCH]
torch_rate() {
  local model=$1 log="$tmp/torch-$1-${2:-64}.log"
  if ! "$python" -c 'import torch, numpy, h5py' >/dev/null 2>&1; then
    echo "bench: no PyTorch/h5py for $python; run launch/deps --bench" >&2
    echo n/a
    return
  fi
  if "$python" bench/fmnist_torch.py --model "$model" --threads 1 "${torch_len[@]}" \
       --h5 datasets/fmnist.h5 --batch "${2:-64}" >"$log" 2>&1 && rate '^torch ' "$log"; then
    return
  fi
  touch "$tmp/failed"
  { echo "bench: bench/fmnist_torch.py --model $model failed:"
    tail -n 5 "$log" | sed 's/^/    /'; } >&2
  echo n/a
}

ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    if (a !~ /^[0-9.eE+-]+$/ || b !~ /^[0-9.eE+-]+$/ || b + 0 == 0) print "n/a"
    else printf "%.2f\n", a / b }'
}

echo "bench: Fashion-MNIST on $device, batch ${batches// /, }, 1 thread per rank," \
     "$( [[ -n "${BENCH_STEPS:-}" ]] && echo "$BENCH_STEPS steps" || echo "1 epoch") per run"
[[ "$device" == cuda ]] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
declare -A one
rows=()
for m in ${BENCH_MODELS:-mlp cnn}; do
  cfg=examples/fmnist_$m.cfg
  [[ -f "$cfg" ]] || { echo "bench: no $cfg" >&2; touch "$tmp/failed"; continue; }
  for b in $batches; do
    echo "bench: $m batch $b: dive, 1 rank ..."
    d=$(dive_rate "$m-$b-1rank" 1 "$cfg" "$b")
    ((b == 64)) && one[$m]=$d
    echo "bench: $m batch $b: torch ..."
    t=$(torch_rate "$m" "$b")
    rows+=("$(printf '%-6s %6s %16s %16s %12s' "$m" "$b" "$d" "$t" "$(ratio "$d" "$t")")")
  done
done

echo
printf '%-6s %6s %16s %16s %12s\n' model batch "dive samples/s" "torch samples/s" "dive/torch"
for r in "${rows[@]}"; do echo "$r"; done
[[ "$device" == cuda ]] && { [[ ! -e "$tmp/failed" ]]; exit; }

echo
echo "bench: mlp: dive, 2 ranks (same global batch) ..."
d1=${one[mlp]:-$(dive_rate mlp-1rank 1 examples/fmnist_mlp.cfg)}
d2=$(dive_rate mlp-2rank 2 examples/fmnist_mlp.cfg)
printf '%-6s %18s %18s %12s\n' model "1 rank samples/s" "2 ranks samples/s" "2r/1r"
printf '%-6s %18s %18s %12s\n' mlp "$d1" "$d2" "$(ratio "$d2" "$d1")"

[[ ! -e "$tmp/failed" ]]
