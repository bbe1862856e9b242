#!/usr/bin/env bash
# bench/gpt.sh — a GPT of GPT-2-small shape (12 blocks of width 768, 12
# heads, learned positions, tied output layer, dropout 0) trained in Dive
# and in PyTorch (bench/gpt_torch.py) on the same GPU for the same steps, on
# the character tokens of launch/import-fortunes; prints figures, never
# passes or fails on speed (issue 14).
#
#   bench/gpt.sh                                  # all rows, 100 steps each
#   BENCH_STEPS=300 bench/gpt.sh                  # the steps of the loss target
#   BENCH_ROWS="bf16-1024 bf16-512" bench/gpt.sh  # a subset
#   BENCH_DEVICE=cpu BENCH_SMALL=1 bench/gpt.sh   # plumbing test without a GPU
#
# Rows (BENCH_ROWS, default "bf16-1024 bf16-512 fp32-1024 fp32-512"), each
# PRECISION-T:
#   bf16-T  Dive with precision = bf16 (bf16 GEMMs on tensor cores, fp32
#           master weights) against PyTorch bf16 autocast eager and under
#           torch.compile (when it compiles);
#   fp32-T  Dive with precision = fp32 against PyTorch fp32 eager, TF32 off
#           on both sides.
# At T 1024 the batch is the largest of BENCH_BATCHES (default "32 16 8")
# that both Dive and PyTorch eager fit: Dive first at each batch, then
# PyTorch; an out-of-memory on either side (Dive's "out of memory", a CUDA
# or cuBLAS allocation failure; torch.cuda.OutOfMemoryError) moves to the
# next batch (a Dive run that fitted where PyTorch did not stays in the
# table). At T 512 the batch is 16.
#
# Each Dive run: a config written here (kept in the log folder; AdamW
# lr 6e-4, weight decay 0.01, linear warm-up over the first tenth of the
# steps then cosine to 6e-5, clip_norm 1.0, seed 1), `dive train` for
# BENCH_STEPS steps (max_steps; no progress lines between epoch ends, so
# nothing syncs the GPU mid-epoch), then `dive eval --json` of last.h5 on
# the whole /val split (125 windows at T 1024, 251 at T 512: small enough
# that both sides evaluate all of it). Dive's tokens/s is its own timing of
# the training steps (the epoch lines and the `stopped at step` line,
# weighted by their steps; validation and checkpoints at epoch ends are
# outside it; the first step is inside it); PyTorch's leaves out its first
# 2 steps (compilation happens there). MFU = tokens/s x train FLOPs per
# token / peak, both from Dive's `compute:` line (docs/gpu.md, "Throughput
# and MFU"; bench/gpt_torch.py prints the same count) and used for both
# sides. Peak memory: Dive's `peak memory:` line (its allocator's
# accounting, not cuBLAS's workspace) against PyTorch's
# torch.cuda.max_memory_allocated() over training (n/a on the CPU). The
# losses come from different random initialisations and batch orders.
#
# Knobs: BENCH_STEPS (default 100; 10 with BENCH_SMALL), BENCH_ROWS,
# BENCH_BATCHES, BENCH_COMPILE=0 (skip the torch.compile runs),
# BENCH_PEAK_TFLOPS (peak per device for MFU, also given to Dive; default
# what Dive's `compute:` line says, none on the CPU), BENCH_DEVICE (cuda,
# the default, or cpu), BENCH_SMALL=1 (2 blocks x 64, 2 heads, T 64 and 32
# instead of 1024 and 512, batch 8: a test of this script), BENCH_TIMEOUT
# (seconds per run, 0 = none), BENCH_BUDGET (seconds: runs not started by
# then are skipped and reported; 0 = none), BENCH_LOGS (a folder for the
# logs and configs, kept; default a temporary folder, kept and named only
# when something failed), BENCH_DATA (default datasets/fortunes.h5), DIVE
# (default build/bin/dive), PYTHON (default /usr/bin/python3).
#
# Rows are printed as each finishes and again as one table at the end,
# with the wall time of every run. Exit status 1 when a run failed (not
# out of memory: that is a result) or no batch fitted both sides.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

dive=${DIVE:-build/bin/dive}
python=${PYTHON:-/usr/bin/python3}
data=${BENCH_DATA:-datasets/fortunes.h5}
device=${BENCH_DEVICE:-cuda}
small=${BENCH_SMALL:-0}
if [[ ! -x "$dive" ]]; then
  echo "bench: $dive not found; run launch/build first (or set DIVE)" >&2
  exit 1
fi
if [[ ! -f "$data" ]]; then
  echo "bench: $data not found; run launch/import-fortunes first" >&2
  exit 1
fi
if ! "$python" -c 'import torch, numpy, h5py' >/dev/null 2>&1; then
  echo "bench: no PyTorch/h5py for $python; run launch/deps --bench (or set PYTHON)" >&2
  exit 1
fi
if [[ "$device" != cpu && "$device" != cuda ]]; then
  echo "bench: BENCH_DEVICE must be cuda or cpu" >&2
  exit 2
fi
if [[ "$small" == 1 ]]; then
  blocks=2 width=64 heads=2 long=64 short=32 short_batch=8
  batches=${BENCH_BATCHES:-8}
  steps=${BENCH_STEPS:-10}
else
  blocks=12 width=768 heads=12 long=1024 short=512 short_batch=16
  batches=${BENCH_BATCHES:-32 16 8}
  steps=${BENCH_STEPS:-100}
fi
if ! [[ "$steps" =~ ^[0-9]+$ ]] || ((steps <= 5)); then
  echo "bench: BENCH_STEPS must be a number above 5" >&2
  exit 2
fi
for b in $batches; do
  [[ "$b" =~ ^[1-9][0-9]*$ ]] || { echo "bench: BENCH_BATCHES must be positive numbers" >&2; exit 2; }
done
for v in BENCH_TIMEOUT BENCH_BUDGET; do
  if [[ -n "${!v:-}" ]] && ! [[ "${!v}" =~ ^[0-9]+$ ]]; then
    echo "bench: $v must be a number of seconds" >&2
    exit 2
  fi
done
run_timeout=${BENCH_TIMEOUT:-0}
budget=${BENCH_BUDGET:-0}
peak_flag=${BENCH_PEAK_TFLOPS:-}
if [[ -n "$peak_flag" ]] && ! [[ "$peak_flag" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
  echo "bench: BENCH_PEAK_TFLOPS must be a number" >&2
  exit 2
fi
rows_wanted=${BENCH_ROWS:-bf16-1024 bf16-512 fp32-1024 fp32-512}
for r in $rows_wanted; do
  [[ "$r" =~ ^(bf16|fp32)-(1024|512)$ ]] ||
    { echo "bench: BENCH_ROWS takes bf16-1024 bf16-512 fp32-1024 fp32-512, not '$r'" >&2; exit 2; }
done
warmup=$((steps / 10 > 0 ? steps / 10 : 1)) # learning-rate warm-up, both sides

if [[ -n "${BENCH_LOGS:-}" ]]; then
  tmp=$BENCH_LOGS
  mkdir -p "$tmp"
  trap 'echo "bench: logs in $tmp"' EXIT
else
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/dive-bench.XXXXXX")
  # Functions below run in $(...) subshells, so failures are marked by a file.
  trap 'if [[ -e "$tmp/failed" ]]; then echo "bench: logs kept in $tmp" >&2; else rm -rf "$tmp"; fi' EXIT
fi
rm -f "$tmp/failed"

threads=()
torch_threads=(--threads 1)
if [[ "$device" == cpu ]]; then
  export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
  threads=(--set train.threads=1)
fi

fail() {
  touch "$tmp/failed"
  { echo "bench: $1"; tail -n 8 "$2" | sed 's/^/    /'; } >&2
}

# run_cmd LOG CMD...: CMD with stdout and stderr to LOG, under BENCH_TIMEOUT;
# its exit status (124: timed out).
run_cmd() {
  local log=$1
  shift
  local rc=0
  if ((run_timeout > 0)); then
    timeout "$run_timeout" "$@" >"$log" 2>&1 || rc=$?
  else
    "$@" >"$log" 2>&1 || rc=$?
  fi
  return "$rc"
}

over_budget() { ((budget > 0 && SECONDS >= budget)); }

# write_config PATH PRECISION T BATCH: the Dive config of one run.
write_config() {
  local i
  {
    echo "# Written by bench/gpt.sh: a GPT of $blocks pre-norm blocks of width $width,"
    echo "# $heads heads, learned positions, the output layer tied to the embedding,"
    echo "# dropout 0, on the characters of $data."
    printf '\n[data]\nfile = %s\nval = /val\n\n[input]\ntokens = %s\n\n' "$data" "$3"
    printf '[embedding]\nname = tok\ndim = %s\npositions = learned\n\n' "$width"
    for ((i = 0; i < blocks; i++)); do
      printf '[transformer]\nheads = %s\ndropout = 0\n\n' "$heads"
    done
    printf '[layernorm]\n\n[dense]\ntie = tok\n\n'
    printf '[train]\nepochs = %s\nmax_steps = %s\nbatch = %s\n' "$steps" "$steps" "$4"
    printf 'optimizer = adamw\nlr = 0.0006\nweight_decay = 0.01\nwarmup_steps = %s\n' "$warmup"
    printf 'lr_schedule = cosine\nlr_min = 0.00006\nclip_norm = 1.0\nloss = cross_entropy\n'
    printf 'seed = 1\nbackend = %s\nprecision = %s\n' "$device" "$2"
    printf 'keep = 0\nprogress = lines\nlog_every = 1000000000000\n'
    printf 'run_dir = %s\n' "$tmp/run-$2-$3-$4"
    [[ -n "$peak_flag" ]] && printf 'peak_tflops = %s\n' "$peak_flag"
    true
  } >"$1"
}

NA="n/a n/a n/a n/a n/a"

# dive_run PRECISION T BATCH: train and evaluate; prints
# "STATUS TOKENS_PER_S VAL_LOSS PEAK_MIB FLOPS_PER_TOKEN PEAK_TFLOPS SECONDS"
# with STATUS ok, oom, fail, timeout or skip, and n/a for what is missing.
dive_run() {
  local p=$1 T=$2 B=$3 name="dive-$1-$2-$3" t0=$SECONDS rc=0
  local cfg="$tmp/$name.cfg" log="$tmp/$name.log" rate loss mem fpt peak
  if over_budget; then echo "skip $NA 0"; return; fi
  write_config "$cfg" "$p" "$T" "$B"
  run_cmd "$log" "$dive" train "$cfg" "${threads[@]}" || rc=$?
  if ((rc != 0)); then
    if grep -Eqi 'out of memory|cudaErrorMemoryAllocation|CUBLAS_STATUS_ALLOC_FAILED' "$log"; then
      echo "oom $NA $((SECONDS - t0))"
    else
      fail "$name: dive train $( ((rc == 124)) && echo "timed out" || echo "failed (exit $rc)"): $dive train $cfg" "$log"
      echo "$( ((rc == 124)) && echo timeout || echo fail) $NA $((SECONDS - t0))"
    fi
    return
  fi
  # tokens/s: each `epoch ... | train X tokens/s` line covers the steps of
  # an epoch, the `stopped at step N (max_steps), epoch E at S/SPE | ... |
  # train X tokens/s` line S steps; their time is steps / X.
  if ! rate=$(awk '
      / steps\/epoch/ { for (i = 2; i <= NF; i++) if ($i ~ /^steps\/epoch/) spe = $(i - 1) }
      /\| train .* tokens\/s/ {
        n = 0; r = 0
        if ($1 == "stopped") {
          for (i = 1; i < NF; i++)
            if ($i == "at" && $(i + 1) ~ /^[0-9]+\/[0-9]+$/) { split($(i + 1), a, "/"); n = a[1] }
        } else if ($1 == "epoch") n = spe
        for (i = 2; i <= NF; i++) if ($i == "tokens/s") r = $(i - 1)
        if (n > 0 && r > 0) { s += n; t += n / r }
      }
      END { if (t <= 0) exit 1; printf "%.1f\n", s / t }' "$log"); then
    fail "$name: no 'train X tokens/s' line in the output of $dive train $cfg" "$log"
    echo "fail $NA $((SECONDS - t0))"
    return
  fi
  mem=$(sed -n 's/^peak memory: \([0-9.]*\) MiB.*/\1/p' "$log" | tail -n 1)
  fpt=$(sed -n 's/^compute: \([0-9.eE+-]*\) train FLOPs per token.*/\1/p' "$log" | tail -n 1)
  peak=$(sed -n 's/^compute: .*; peak \([0-9.eE+-]*\) TFLOP\/s.*/\1/p' "$log" | tail -n 1)
  rc=0
  run_cmd "$log.eval" "$dive" eval "$cfg" --checkpoint "$tmp/run-$p-$T-$B/last.h5" --json \
    "${threads[@]}" || rc=$?
  loss=$(sed -n 's/.*"loss": *\([-0-9.eE+naif]*\).*/\1/p' "$log.eval" | tail -n 1)
  if ((rc != 0)) || [[ -z "$loss" ]]; then
    fail "$name: dive eval failed or printed no JSON loss: $dive eval $cfg --checkpoint .../last.h5 --json" "$log.eval"
    loss=n/a
  fi
  rm -rf "$tmp/run-$p-$T-$B" # its checkpoint is 1 GB at full size
  echo "ok $rate $loss ${mem:-n/a} ${fpt:-n/a} ${peak:-n/a} $((SECONDS - t0))"
}

# torch_run PRECISION T BATCH [--compile]: prints
# "STATUS TOKENS_PER_S VAL_LOSS PEAK_MIB FLOPS_PER_TOKEN COMPILED SECONDS",
# with the compile failure, if any, in $tmp/NAME.compile.
torch_run() {
  local p=$1 T=$2 B=$3 name="torch-$1-$2-$3${4:+-compiled}" t0=$SECONDS rc=0 line
  local log="$tmp/$name.log"
  if over_budget; then echo "skip $NA n/a 0"; return; fi
  local cmd=("$python" bench/gpt_torch.py --device "$device" --precision "$p" ${4:+"$4"}
             --blocks "$blocks" --width "$width" --heads "$heads" --T "$T" --batch "$B"
             --steps "$steps" --lr 6e-4 --lr-min 6e-5 --lr-warmup "$warmup"
             --weight-decay 0.01 --dropout 0 "${torch_threads[@]}" --data "$data")
  run_cmd "$log" "${cmd[@]}" || rc=$?
  line=$(sed -n 's/^RESULT //p' "$log" | tail -n 1)
  if ((rc != 0)) || [[ -z "$line" ]]; then
    if grep -Eqi 'out of memory|CUBLAS_STATUS_ALLOC_FAILED' "$log"; then
      echo "oom $NA n/a $((SECONDS - t0))"
    else
      fail "$name $( ((rc == 124)) && echo "timed out" || echo "failed (exit $rc)"): ${cmd[*]}" "$log"
      echo "$( ((rc == 124)) && echo timeout || echo fail) $NA n/a $((SECONDS - t0))"
    fi
    return
  fi
  "$python" - "$line" "$tmp/$name.compile" "$((SECONDS - t0))" <<'EOF'
import json, sys
d = json.loads(sys.argv[1])
f = lambda v, fmt: "n/a" if v is None else fmt % v
if d.get("compile_error"):
    open(sys.argv[2], "w").write(d["compile_error"] + "\n")
print(d["status"], f(d.get("tokens_per_s"), "%.1f"), f(d.get("val_loss"), "%.6f"),
      f(d.get("peak_mib"), "%.1f"), f(d.get("flops_per_token"), "%d"),
      "yes" if d.get("compiled") else "no", "n/a", sys.argv[3])
EOF
}

num() { [[ "$1" =~ ^[0-9.eE+-]+$ ]]; }
ratio() { if num "$1" && num "$2"; then awk -v a="$1" -v b="$2" 'BEGIN { print (b == 0 ? "n/a" : sprintf("%.2f", a / b)) }'; else echo -; fi; }
reldiff() { if num "$1" && num "$2"; then awk -v a="$1" -v b="$2" 'BEGIN { print (b == 0 ? "n/a" : sprintf("%+.2f%%", 100 * (a - b) / b)) }'; else echo -; fi; }
# mfu RATE FLOPS_PER_TOKEN PEAK_TFLOPS
mfu() { if num "$1" && num "$2" && num "$3"; then awk -v r="$1" -v f="$2" -v p="$3" 'BEGIN { printf "%.1f%%", 100 * r * f / (p * 1e12) }'; else echo n/a; fi; }
gib() { if num "$1"; then awk -v m="$1" 'BEGIN { printf "%.2f", m / 1024 }'; else echo n/a; fi; }
fmt_rate() { if num "$1"; then awk -v r="$1" 'BEGIN { printf "%.0f", r }'; else echo "$1"; fi; }

row() { printf '%-5s %5s %5s  %-26s %11s %10s %7s %9s %9s %9s %7s\n' "$@"; }
header() { row prec T batch run tokens/s dive/this MFU "peak GiB" "val loss" "dive vs" "wall s"; }
table=()
notes=()
# add PRECISION T BATCH RUN STATUS RATE LOSS MEM FPT PEAK SECONDS DIVE_RATE DIVE_LOSS
add() {
  local shown=$6
  case $5 in
    oom) shown=OOM ;; fail) shown=failed ;; timeout) shown="timed out" ;; skip) shown=skipped ;;
  esac
  local r
  r=$(row "$1" "$2" "$3" "$4" "$(fmt_rate "$shown")" "$(ratio "${12}" "$6")" \
          "$(mfu "$6" "$9" "${10}")" "$(gib "$8")" "$7" "$(reldiff "${13}" "$7")" "${11}")
  table+=("$r")
  echo "$r"
}

echo "bench: GPT $blocks x $width, $heads heads, on $device ($data), $steps steps per run" \
     "(learning-rate warm-up $warmup), rows: $rows_wanted"
if [[ "$device" == cuda ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
"$python" -c 'import torch; print("bench: PyTorch", torch.__version__)' || true
header

skipped=0
declare -A peaks
[[ -n "$peak_flag" ]] && peaks=([bf16]=$peak_flag [fp32]=$peak_flag)
for r in $rows_wanted; do
  p=${r%-*}
  T=$long cands=$batches
  if [[ ${r#*-} == 512 ]]; then T=$short cands=$short_batch; fi
  chosen="" dres="" fpt="" peak=$peak_flag ds="" ts=""
  for B in $cands; do
    echo "bench: $p T $T batch $B: dive ..."
    read -r ds drate dloss dmem dfpt dpeak dwall <<<"$(dive_run "$p" "$T" "$B")"
    echo "bench: $p T $T batch $B: dive $ds in $dwall s"
    if [[ "$ds" == skip ]]; then
      add "$p" "$T" "$B" dive skip n/a n/a n/a n/a n/a 0 n/a n/a
      skipped=$((skipped + 1))
      break
    fi
    if [[ "$ds" != ok ]]; then
      add "$p" "$T" "$B" dive "$ds" "$drate" "$dloss" "$dmem" n/a n/a "$dwall" n/a n/a
      [[ "$ds" != oom ]] && break
      continue
    fi
    num "$dfpt" && fpt=$dfpt
    [[ -z "$peak" ]] && num "$dpeak" && peak=$dpeak && peaks[$p]=$dpeak
    echo "bench: $p T $T batch $B: torch eager ..."
    read -r ts trate tloss tmem tfpt _ _ twall <<<"$(torch_run "$p" "$T" "$B")"
    echo "bench: $p T $T batch $B: torch eager $ts in $twall s"
    [[ -z "$fpt" ]] && num "$tfpt" && fpt=$tfpt
    if num "$dfpt" && num "$tfpt" &&
       awk -v a="$dfpt" -v b="$tfpt" 'BEGIN { exit !(a / b > 1.001 || b / a > 1.001) }'; then
      notes+=("$p T $T: FLOPs per token differ: dive $dfpt, bench/gpt_torch.py $tfpt")
    fi
    add "$p" "$T" "$B" dive ok "$drate" "$dloss" "$dmem" "$fpt" "$peak" "$dwall" n/a n/a
    add "$p" "$T" "$B" "torch $p eager" "$ts" "$trate" "$tloss" "$tmem" "$fpt" "$peak" "$twall" \
        "$drate" "$dloss"
    [[ "$ts" == skip ]] && { skipped=$((skipped + 1)); break; }
    [[ "$ts" == fail || "$ts" == timeout ]] && break
    if [[ "$ts" == ok ]]; then chosen=$B dres="$drate $dloss"; break; fi
    notes+=("$p T $T batch $B: PyTorch eager out of memory where Dive fits")
  done
  if [[ -z "$chosen" ]]; then
    if [[ "${ds:-}" != skip && "${ts:-}" != skip ]]; then
      echo "bench: $p T $T: no batch of '$cands' ran on both sides" >&2
      touch "$tmp/failed"
    fi
    continue
  fi
  if [[ "$p" == bf16 && "${BENCH_COMPILE:-1}" != 0 ]]; then
    # torch.compile at the batch both fitted eager
    read -r drate dloss <<<"$dres"
    echo "bench: $p T $T batch $chosen: torch compiled ..."
    read -r cs crate closs cmem _ ccomp _ cwall <<<"$(torch_run "$p" "$T" "$chosen" --compile)"
    echo "bench: $p T $T batch $chosen: torch compiled $cs in $cwall s"
    label="torch $p compiled"
    if [[ -f "$tmp/torch-$p-$T-$chosen-compiled.compile" ]]; then
      notes+=("$p T $T: compile failed: $(head -c 300 "$tmp/torch-$p-$T-$chosen-compiled.compile")")
      [[ "$ccomp" == no ]] && label="torch $p (no compile)"
    fi
    [[ "$cs" == skip ]] && skipped=$((skipped + 1))
    add "$p" "$T" "$chosen" "$label" "$cs" "$crate" "$closs" "$cmem" "$fpt" "$peak" "$cwall" \
        "$drate" "$dloss"
  fi
done

echo
mfu_peaks=""
for p in bf16 fp32; do
  [[ -n "${peaks[$p]:-}" ]] && mfu_peaks+="${mfu_peaks:+, }$p ${peaks[$p]}"
done
echo "bench: GPT $blocks x $width, $heads heads, $steps steps on $device; MFU against" \
     "${mfu_peaks:-no} peak TFLOP/s per device$( [[ -n "$peak_flag" ]] && echo " (BENCH_PEAK_TFLOPS)")"
header
for r in "${table[@]}"; do echo "$r"; done
for n in "${notes[@]}"; do echo "note: $n"; done
((skipped > 0)) && echo "bench: $skipped run(s) skipped: BENCH_BUDGET=$budget s was reached"
echo "bench: total $SECONDS s"

[[ ! -e "$tmp/failed" ]]
