#!/usr/bin/env bash
# e2e_seq.sh — end to end for sequence models: a generated corpus imported
# with `dive import text`, a character LSTM and a small GPT trained over 2
# ranks (per-token loss, perplexity and tokens/s in the output and in
# metrics.csv), `dive eval` on the token file, `dive sample` (repeatable
# from its seed, prompt handling), a sequence classifier on (T, F) arrays,
# and the mistakes a user can make with these models.
set -u
# shellcheck source=tests/lib_e2e.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib_e2e.sh"

D=$DIVE_BIN

echo "== data: a corpus with structure, imported as characters"
awk 'BEGIN { srand(7); split("the cat sat on a mat. the dog ran far away. ", w, " ");
             for (i = 0; i < 4000; i++) printf "%s%s", w[int(rand() * 10) + 1], (i % 12 == 11) ? "\n" : " " }' \
    >corpus.txt
e2e_run "$D" import text corpus.txt -o text.h5 --vocab chars --val 0.1
expect_ok "import the corpus"
V=$(sed -n 's/.*vocabulary chars of \([0-9]*\).*/\1/p' "$OUT")

cat >lstm.cfg <<EOF
[data]
file = text.h5
val = /val

[input]
tokens = 32

[embedding]
dim = 16
positions = none

[lstm]
units = 64

[dense]
units = vocab

[train]
epochs = 3
batch = 16
optimizer = adam
lr = 0.01
clip_norm = 1
loss = cross_entropy
threads = 1
run_dir = run_lstm
EOF

echo "== a character LSTM over 2 ranks"
e2e_mpi 2 "$D" train lstm.cfg
expect_ok "train the LSTM under mpirun -np 2"
check "reports windows, vocab and tokens/s" \
    bash -c "grep -q 'windows of 32 tokens (vocab $V)' '$OUT' && grep -q 'tokens/s' '$OUT'"
check "the epoch lines carry perplexity" grep -Eq '^epoch 3/3 \| loss [0-9.]+ ppl [0-9.]+ .*val loss [0-9.]+ ppl [0-9.]+' "$OUT"
check "metrics.csv has tokens_per_s, train_ppl, val_ppl, tflops, mfu" \
    bash -c "head -1 run_lstm/metrics.csv | grep -q ',tokens_per_s,train_ppl,val_ppl,tflops,mfu$' &&
             [ \$(wc -l < run_lstm/metrics.csv) = 4 ]"
vppl=$(tail -1 run_lstm/metrics.csv | cut -d, -f12)
check "it learned the corpus: val perplexity $vppl < 4 (uniform: $V)" awk -v p="$vppl" 'BEGIN { exit !(p > 1 && p < 4) }'

e2e_run "$D" eval lstm.cfg --checkpoint run_lstm/best.h5 --json
expect_ok "dive eval on the token file"
loss=$(json_field loss "$OUT")
check "eval's loss is the best epoch's val loss ($loss)" \
    awk -F, -v l="$loss" 'NR > 1 { d = $6 - l; if (d < 0) d = -d; if (d < 1e-4) f = 1 } END { exit !f }' \
    run_lstm/metrics.csv

echo "== dive sample"
e2e_run "$D" sample run_lstm/best.h5 --prompt "the " --tokens 80 --seed 3
expect_ok "sample 80 tokens after a prompt"
cp "$OUT" s1.txt
check "prints the prompt, then 80 characters" \
    bash -c "head -c 4 s1.txt | grep -q '^the ' && [ \$(LC_ALL=C.UTF-8 wc -m < s1.txt) = 85 ]"
check "the text has words of the corpus" grep -Eq '(cat|dog|mat|sat|ran|far|away)' s1.txt
e2e_run "$D" sample run_lstm/best.h5 --prompt "the " --tokens 80 --seed 3
check "the same seed gives the same text" cmp -s s1.txt "$OUT"
e2e_run "$D" sample run_lstm/best.h5 --prompt "the " --tokens 80 --seed 4
check "another seed, other text" bash -c "! cmp -s s1.txt '$OUT'"
e2e_run "$D" sample run_lstm/best.h5 --tokens 20 --temperature 0 --top-k 3
expect_ok "greedy sampling without a prompt"
e2e_run "$D" sample run_lstm/best.h5 --prompt "the €"
expect_fail "a prompt character outside the vocabulary" "U+20AC" "not in the model's vocabulary"
e2e_run "$D" sample run_lstm/best.h5 --prompt "$(printf 'the \xe0\x80\xaf')"
expect_fail "an overlong UTF-8 form of / in the prompt (as the importer rejects it)" "not valid UTF-8"
e2e_run "$D" sample run_lstm/best.h5 --prompt "$(printf 'the \xe2\x82')"
expect_fail "a prompt ending inside a character" "not valid UTF-8"
e2e_run "$D" sample run_lstm/best.h5 --temperature -1
expect_fail "a negative temperature" --status 2 "--temperature"
e2e_run "$D" sample nosuch.h5
expect_fail "a missing checkpoint" "nosuch.h5"

echo "== a small GPT, output tied to the embedding, resumed mid-epoch"
cat >gpt.cfg <<EOF
[data]
file = text.h5
val = /val

[input]
tokens = 32

[embedding]
name = tok
dim = 32

[transformer]
heads = 4
dropout = 0.1

[transformer]
heads = 4
dropout = 0.1

[layernorm]

[dense]
tie = tok

[train]
epochs = 2
batch = 16
optimizer = adamw
lr = 0.003
warmup_steps = 10
clip_norm = 1
loss = cross_entropy
threads = 1
run_dir = run_gpt
EOF
e2e_mpi 2 "$D" train gpt.cfg --set train.max_steps=40
expect_ok "train the GPT for 40 steps on 2 ranks"
e2e_run "$D" train gpt.cfg --resume auto
expect_ok "resume it on 1 rank"
check "resumes at step 40" grep -q 'resuming from run_gpt/last.h5: epoch 2, step 40' "$OUT"
e2e_run "$D" sample run_gpt/last.h5 --prompt "the " --tokens 40 --top-k 5
expect_ok "sample the GPT with --top-k"

echo "== a sequence classifier: (T, F) arrays, one label each"
awk 'BEGIN { srand(3); for (i = 0; i < 600; i++) { c = i % 2; s = "";
             for (t = 0; t < 8; t++) for (f = 0; f < 3; f++) s = s sprintf("%.3f,", (c ? t / 8 : 1 - t / 8) + rand() * 0.3);
             print s c } }' >seq.csv
e2e_run "$D" import csv seq.csv -o seq.h5 --split train --label-col -1
expect_ok "import (8 steps x 3 features) sequences"
cat >cls.cfg <<EOF
[data]
file = seq.h5

[input]
shape = 8,3
sequence = true

[gru]
units = 16
return = last

[dense]
units = 2

[train]
epochs = 10
batch = 20
optimizer = adam
lr = 0.02
loss = cross_entropy
threads = 1
run_dir = run_cls
EOF
e2e_run "$D" train cls.cfg
expect_ok "train a GRU classifier"
acc=$(tail -1 run_cls/metrics.csv | cut -d, -f5)
check "it separates rising from falling sequences (train acc $acc >= 0.95)" num_ge "$acc" 0.95

echo "== bad input"
e2e_ranks 2 "$D" train lstm.cfg --set train.loss=mse
expect_fail "a token model with loss = mse, on every rank" "use loss = cross_entropy"
e2e_run "$D" train lstm.cfg --set embedding.positions=rotary
expect_fail "an unknown positions value" "positions"
sed 's/^\[embedding\]/[dense]\nunits = 8\n[embedding]/' lstm.cfg >noembed.cfg
e2e_run "$D" train noembed.cfg
expect_fail "a token model not starting with an embedding" "must be the first layer"
e2e_run "$D" train cls.cfg --set input.sequence=false
expect_fail "an LSTM-family layer on a non-sequence input" "sequence"
e2e_run "$D" train gpt.cfg --set dense.tie=transformer_1
expect_fail "tie to a layer that is not an embedding" "only an [embedding] can be tied"
e2e_run "$D" train gpt.cfg --set transformer_1.heads=5
expect_fail "heads that do not divide the width" "heads"
e2e_run "$D" train lstm.cfg --set input.tokens=4000
expect_fail "a context longer than the text" "too few for one window"
sed 's/^units = vocab/units = 10/' lstm.cfg >small.cfg
e2e_run "$D" train small.cfg
expect_fail "an output smaller than the vocabulary" "outside the vocabulary"
e2e_run "$D" train cls.cfg --set data.file=text.h5
expect_fail "array model on a token file" "/train/x"
e2e_run "$D" sample run_cls/last.h5
expect_fail "sample on a classifier checkpoint" "not a language model"

e2e_summary
