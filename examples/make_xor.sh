#!/usr/bin/env bash
# examples/make_xor.sh — the XOR dataset for examples/xor.cfg (and, as the
# counter-example, examples/perceptron.cfg): four Gaussian clusters
# (sd 0.2) at (+-1,+-1), label 1 where the corner's x1 and x2 have opposite
# signs; 400 train and 100 test rows from a fixed seed.
# Writes datasets/xor-{train,test}.csv (rows x1,x2,label; no header) and
# imports them into datasets/xor.h5 (groups /train and /test) with
# `build/bin/dive import csv`.
#
#   examples/make_xor.sh [--csv-only]
#
# SEED (default 7) picks the points; NOISE (default 0.2) is the clusters' sd.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mkdir -p datasets
train=datasets/xor-train.csv
test=datasets/xor-test.csv

# Park-Miller minimal standard generator (exact in awk's doubles, the same
# points under every awk) and Box-Muller for the Gaussian noise.
awk -v seed="${SEED:-7}" -v sd="${NOISE:-0.2}" -v ntrain=400 -v ntest=100 \
    -v train="$train" -v test="$test" '
  function rnd() { state = (state * 16807) % 2147483647; return state / 2147483647 }
  function gauss() { return sqrt(-2 * log(rnd())) * cos(2 * pi * rnd()) }
  BEGIN {
    pi = atan2(0, -1)
    state = seed % 2147483646 + 1
    for (i = 0; i < ntrain + ntest; i++) {
      c = int(rnd() * 4)
      c1 = (c % 2) ? 1 : -1; c2 = (c >= 2) ? 1 : -1
      out = (i < ntrain) ? train : test
      printf "%.6f,%.6f,%d\n", c1 + sd * gauss(), c2 + sd * gauss(), (c1 != c2) ? 1 : 0 > out
    }
  }'
echo "make_xor: wrote $train (400 rows) and $test (100 rows)"
[[ "${1:-}" == --csv-only ]] && exit 0

dive=build/bin/dive
if [[ ! -x "$dive" ]]; then
  echo "make_xor: $dive not found; run launch/build first" >&2
  exit 1
fi
tmp="datasets/.xor.$$.h5"
trap 'rm -f "$tmp"' EXIT
"$dive" import csv "$train" -o "$tmp" --split train --label-col -1
"$dive" import csv "$test" -o "$tmp" --split test --label-col -1
mv -f "$tmp" datasets/xor.h5
trap - EXIT
echo "make_xor: wrote datasets/xor.h5"
