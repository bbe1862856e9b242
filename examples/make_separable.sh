#!/usr/bin/env bash
# examples/make_separable.sh — a linearly separable 2-D dataset for
# examples/perceptron.cfg: points (x1,x2) uniform in [-1,1]^2, label 1 when
# x1 + 2*x2 > 0.1 else 0; 400 train and 100 test rows from a fixed seed.
# Writes datasets/separable-{train,test}.csv (rows x1,x2,label; no header)
# and imports them into datasets/separable.h5 (groups /train and /test) with
# `build/bin/dive import csv`.
#
#   examples/make_separable.sh [--csv-only]
#
# SEED (default 42) picks the points. MARGIN (default 0.1) drops points
# closer than that to the line x1 + 2*x2 = 0.1, so the perceptron converges
# in a few epochs; MARGIN=0 keeps every point (and it may need many more).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mkdir -p datasets
train=datasets/separable-train.csv
test=datasets/separable-test.csv

# Park-Miller minimal standard generator: exact in awk's doubles, so every
# awk (gawk, mawk, busybox) writes the same points for the same seed.
awk -v seed="${SEED:-42}" -v margin="${MARGIN:-0.1}" -v ntrain=400 -v ntest=100 \
    -v train="$train" -v test="$test" '
  function rnd() { state = (state * 16807) % 2147483647; return state / 2147483647 }
  BEGIN {
    state = seed % 2147483646 + 1
    for (i = 0; i < ntrain + ntest; ) {
      x1 = 2 * rnd() - 1; x2 = 2 * rnd() - 1
      s = x1 + 2 * x2 - 0.1
      if (s < margin && -s < margin) continue
      out = (i < ntrain) ? train : test
      printf "%.6f,%.6f,%d\n", x1, x2, (s > 0) ? 1 : 0 > out
      i++
    }
  }'
echo "make_separable: wrote $train (400 rows) and $test (100 rows)"
[[ "${1:-}" == --csv-only ]] && exit 0

dive=build/bin/dive
if [[ ! -x "$dive" ]]; then
  echo "make_separable: $dive not found; run launch/build first" >&2
  exit 1
fi
tmp="datasets/.separable.$$.h5"
trap 'rm -f "$tmp"' EXIT
"$dive" import csv "$train" -o "$tmp" --split train --label-col -1
"$dive" import csv "$test" -o "$tmp" --split test --label-col -1
mv -f "$tmp" datasets/separable.h5
trap - EXIT
echo "make_separable: wrote datasets/separable.h5"
