#!/usr/bin/env bash
# bench/seq.sh — training throughput and validation loss of Dive's sequence
# models against a PyTorch reference (bench/seq_torch.py) on Debian's
# fortunes, one thread; prints figures, never passes or fails on time.
#
#   bench/seq.sh                      # 200 steps of each model
#   BENCH_STEPS=1000 bench/seq.sh     # longer: the val losses mean more
#   BENCH_MODELS=gpt BENCH_BATCH=64 BENCH_T=64 bench/seq.sh
#
# For each of examples/fortunes_{lstm,gpt}.cfg: BENCH_STEPS steps of
# `dive train` on one rank (OPENBLAS_NUM_THREADS=1, train.threads=1), then
# `dive eval --json` of its last.h5 on the whole /val split; the same model,
# optimizer and schedule for the same steps in bench/seq_torch.py; a table of
# tokens/s, the ratio dive/torch, the two val losses and their relative
# difference. The losses come from different random initialisations and
# batch orders: a few percent apart is noise at 200 steps, a gap that grows
# with BENCH_STEPS is not.
#
# Knobs: BENCH_STEPS (default 200), BENCH_MODELS (default "lstm gpt"),
# BENCH_BATCH and BENCH_T (override the config's batch and window length on
# both sides), BENCH_DEVICE=cuda (backend = cuda against PyTorch on the same
# GPU, fp32), BENCH_CONFIGS (folder of the fortunes_*.cfg, default
# examples), PYTHON (default /usr/bin/python3). Needs build/bin/dive
# (launch/build; DIVE overrides it),
# datasets/fortunes.h5 (launch/import-fortunes) and, for the reference,
# python3-torch and python3-h5py (launch/deps --bench). Logs go to a
# temporary folder, kept (and named) when a run fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

dive=${DIVE:-build/bin/dive}
python=${PYTHON:-/usr/bin/python3}
data=datasets/fortunes.h5
if [[ ! -x "$dive" ]]; then
  echo "bench: $dive not found; run launch/build first (or set DIVE)" >&2
  exit 1
fi
if [[ ! -f "$data" ]]; then
  echo "bench: $data not found; run launch/import-fortunes first" >&2
  exit 1
fi
steps=${BENCH_STEPS:-200}
if ! [[ "$steps" =~ ^[0-9]+$ ]] || ((steps <= 5)); then
  echo "bench: BENCH_STEPS must be a number above 5" >&2
  exit 2
fi
for v in BENCH_BATCH BENCH_T; do
  if [[ -n "${!v:-}" ]] && ! [[ "${!v}" =~ ^[1-9][0-9]*$ ]]; then
    echo "bench: $v must be a positive number" >&2
    exit 2
  fi
done
device=${BENCH_DEVICE:-cpu}
if [[ "$device" != cpu && "$device" != cuda ]]; then
  echo "bench: BENCH_DEVICE must be cpu or cuda" >&2
  exit 2
fi
cfgdir=${BENCH_CONFIGS:-examples}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/dive-bench.XXXXXX")
# Functions below run in $(...) subshells, so failures are marked by a file.
trap 'if [[ -e "$tmp/failed" ]]; then echo "bench: logs kept in $tmp" >&2; else rm -rf "$tmp"; fi' EXIT

export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# epochs = steps: max_steps always ends the run, however few steps an epoch
# has (the cosine schedule spans min(epochs * steps/epoch, max_steps) steps,
# so max_steps on both sides)
common=(--set train.backend="$device")
[[ -n "${BENCH_BATCH:-}" ]] && common+=(--set train.batch="$BENCH_BATCH")
[[ -n "${BENCH_T:-}" ]] && common+=(--set input.tokens="$BENCH_T")
train_set=(--set train.threads=1 --set train.max_steps="$steps" --set train.epochs="$steps")
torch_args=(--steps "$steps" --threads 1 --device "$device" --data "$data"
            --batch "${BENCH_BATCH:-32}" --T "${BENCH_T:-128}")

fail() {
  touch "$tmp/failed"
  { echo "bench: $1"; tail -n 5 "$2" | sed 's/^/    /'; } >&2
}

# dive_run MODEL CONFIG: train and evaluate; prints "TOKENS_PER_S VAL_LOSS",
# either n/a on failure.
dive_run() {
  local m=$1 cfg=$2 log="$tmp/dive-$1.log" run="$tmp/run-$1" rate loss
  local cmd=("$dive" train "$cfg" "${common[@]}" "${train_set[@]}" --set train.run_dir="$run")
  # the rate of `stopped at step N (max_steps) ... | train X tokens/s` (or
  # of the last `epoch ...` line when max_steps ends an epoch)
  if ! "${cmd[@]}" >"$log" 2>&1 ||
     ! rate=$(awk '/ tokens\/s/ && /\| train / { last = $0 }
                   END { n = split(last, w, " ")
                         for (i = 2; i <= n; i++) if (w[i] == "tokens/s") v = w[i - 1]
                         if (v !~ /^[0-9.eE+-]+$/) exit 1
                         print v }' "$log"); then
    fail "dive $m failed or printed no 'train <X> tokens/s' line: ${cmd[*]}" "$log"
    echo n/a n/a
    return
  fi
  cmd=("$dive" eval "$cfg" --checkpoint "$run/last.h5" --json "${common[@]}")
  if ! "${cmd[@]}" >"$log.eval" 2>&1 ||
     ! loss=$(sed -n 's/.*"loss": *\([-0-9.eE+naif]*\).*/\1/p' "$log.eval" | tail -n 1) ||
     [[ -z "$loss" ]]; then
    fail "dive eval of $m failed or printed no JSON loss: ${cmd[*]}" "$log.eval"
    loss=n/a
  fi
  echo "$rate $loss"
}

# torch_run MODEL: prints "TOKENS_PER_S VAL_LOSS", either n/a on failure.
torch_run() {
  local m=$1 log="$tmp/torch-$1.log" line
  if ! "$python" -c 'import torch, numpy, h5py' >/dev/null 2>&1; then
    echo "bench: no PyTorch/h5py for $python; run launch/deps --bench" >&2
    echo n/a n/a
    return
  fi
  if "$python" bench/seq_torch.py --model "$m" "${torch_args[@]}" >"$log" 2>&1 &&
     line=$(grep "^torch $m: .* tokens/s, val loss " "$log" | tail -n 1); then
    awk '{ for (i = 2; i <= NF; i++) { if ($i ~ /^tokens\/s/) r = $(i - 1)
                                       if ($i == "loss") l = $(i + 1) }
           printf "%.0f %s\n", r, l }' <<<"$line"
    return
  fi
  fail "bench/seq_torch.py --model $m ${torch_args[*]} failed:" "$log"
  echo n/a n/a
}

num() { [[ "$1" =~ ^[0-9.eE+-]+$ ]]; }
ratio() { if num "$1" && num "$2"; then awk -v a="$1" -v b="$2" 'BEGIN { print (b == 0 ? "n/a" : sprintf("%.2f", a / b)) }'; else echo n/a; fi; }
reldiff() { if num "$1" && num "$2"; then awk -v a="$1" -v b="$2" 'BEGIN { print (b == 0 ? "n/a" : sprintf("%+.1f%%", 100 * (a - b) / b)) }'; else echo n/a; fi; }

echo "bench: fortunes on $device, batch ${BENCH_BATCH:-32} (config's unless BENCH_BATCH)," \
     "T ${BENCH_T:-128} (config's unless BENCH_T), 1 thread, $steps steps per run"
if [[ "$device" == cuda ]]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
fi
row() { printf '%-6s %15s %15s %10s %14s %14s %9s\n' "$@"; }
rows=()
for m in ${BENCH_MODELS:-lstm gpt}; do
  cfg=$cfgdir/fortunes_$m.cfg
  [[ -f "$cfg" ]] || { echo "bench: no $cfg" >&2; touch "$tmp/failed"; continue; }
  echo "bench: $m: dive ..."
  read -r dr dl <<<"$(dive_run "$m" "$cfg")"
  echo "bench: $m: torch ..."
  read -r tr tl <<<"$(torch_run "$m")"
  rows+=("$(row "$m" "$dr" "$tr" "$(ratio "$dr" "$tr")" "$dl" "$tl" "$(reldiff "$dl" "$tl")")")
done

echo
row model "dive tokens/s" "torch tokens/s" dive/torch "dive val loss" "torch val loss" "rel diff"
for r in "${rows[@]}"; do echo "$r"; done

[[ ! -e "$tmp/failed" ]]
