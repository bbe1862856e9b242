#!/usr/bin/env bash
# e2e_bad_input.sh — docs/design.md's "Bad input" contract, end to end: a missing
# or corrupt file, a dataset of the wrong shape, a label out of range, an
# unknown key, a batch that does not divide across ranks... each
#   - exits non-zero (on every rank, under mpirun),
#   - prints exactly one "dive...:" message, naming the file, key or dataset,
#   - is not a crash (no signal, no core dump) and finishes (no hang),
#   - leaves the good checkpoints of run_dir byte-for-byte unchanged.
set -u
# shellcheck source=tests/lib_e2e.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib_e2e.sh"

D=$DIVE_BIN

echo "== setup: data, a good run in $WORK/good"
make_data data.h5
make_data labels5.h5 5 # labels 0..4, but the model has 3 outputs
head -c 4096 /dev/urandom >random.h5
head -c $(($(stat -c %s data.h5) / 2)) data.h5 >truncated.h5
write_cfg base.cfg "$WORK/data.h5" "$WORK/good" 2
e2e_run "$D" train base.cfg
if ! expect_ok "a good 2-epoch run (the checkpoints every later run must keep)" ||
    [ ! -s good/last.h5 ] || [ ! -s good/best.h5 ]; then
    echo "cannot set up the good run"
    e2e_summary
fi
snapshot_take "$WORK/good" # every expect_fail below also checks good/ is unchanged
echo "   good/: $(find good -type f -printf "%f " | LC_ALL=C sort)"

# line_of FILE REGEX: the line number of the first line matching REGEX.
line_of() { grep -n -m 1 -E "$2" "$1" | cut -d: -f1; }

echo "== configs"
e2e_run "$D" train missing.cfg
expect_fail "missing config file" "missing.cfg: cannot open config"

awk '{ print } /^lr = / { print "bogus = 3" }' base.cfg >unknown_key.cfg
l=$(line_of unknown_key.cfg '^bogus')
e2e_run "$D" train unknown_key.cfg
expect_fail "unknown key in [train] names file:line and key" \
    "unknown_key.cfg:$l:" "unknown key 'bogus'" "[train]"

awk '/^activation = relu/ { print "activaton = relu"; next } { print }' base.cfg >typo.cfg
l=$(line_of typo.cfg '^activaton')
e2e_run "$D" train typo.cfg
expect_fail "misspelt key in [dense] names file:line and key" \
    "typo.cfg:$l:" "unknown key 'activaton'" "[dense]"

{ cat base.cfg; printf '\n[frobnicate]\nsize = 2\n'; } >unknown_section.cfg
l=$(line_of unknown_section.cfg '^\[frobnicate\]')
e2e_run "$D" train unknown_section.cfg
expect_fail "unknown section names file:line and section" \
    "unknown_section.cfg:$l:" "unknown section [frobnicate]"

awk '/^units = 32/ { print "units = abc"; next } { print }' base.cfg >bad_value.cfg
l=$(line_of bad_value.cfg '^units = abc')
e2e_run "$D" train bad_value.cfg
expect_fail "units = abc names file:line, key and value" \
    "bad_value.cfg:$l:" "units = abc" "not an integer"

printf '[data]\nfile = data.h5\n[train]\nepochs = 1\n  this line is not ini\n' >garbled.cfg
e2e_run "$D" train garbled.cfg
expect_fail "a line that is not key = value names file:line" "garbled.cfg:5"

e2e_run "$D" train base.cfg --set train.epochs=abc
expect_fail "--set train.epochs=abc" "--set train.epochs" "abc" "not an integer"

e2e_run "$D" train base.cfg --set dense_2.units=0
expect_fail "--set dense_2.units=0 (out of range)" "--set dense_2.units" "must be between 1"

e2e_run "$D" train base.cfg --set train.optimizer=adamm
expect_fail "--set train.optimizer=adamm lists the choices" "adamm: expected one of" "adamw"

e2e_run "$D" train base.cfg --set train.bogus=1
expect_fail "--set of an unknown key" "--set train.bogus" "unknown key 'bogus'"

e2e_run "$D" train base.cfg --set nosuch.units=3
expect_fail "--set of an unknown section" "nosuch.units" "no section [nosuch]"

e2e_run "$D" train base.cfg --set dense.units=3
expect_fail "--set dense.units with two [dense] sections asks for dense_1 or dense_2" \
    "there are 2 [dense] sections"

e2e_run "$D" train base.cfg --set trainepochs=3
expect_fail "--set without section.key" "trainepochs=3" "section.key=value"

echo "== GPU settings"
e2e_run "$D" train base.cfg --set train.precision=fp16
expect_fail "precision = fp16 lists the choices" "fp16: expected one of" "bf16"

e2e_ranks 2 "$D" train base.cfg --set train.backend=cpu --set train.comm=nccl
expect_fail "comm = nccl with the CPU backend, on every rank" "comm = nccl needs the CUDA backend"

e2e_run "$D" train base.cfg --set train.backend=cuda --set train.max_steps=1 \
    --set train.run_dir=probe_cuda
if [ "$RC" -eq 0 ]; then
    pass "backend = cuda where no GPU is visible (not checked: this machine has a GPU)"
else
    expect_fail "backend = cuda where no GPU is visible says why" "backend = cuda:"
fi

echo "== data files"
e2e_run "$D" train base.cfg --set data.file="$WORK/missing.h5"
expect_fail "missing data file" "$WORK/missing.h5: cannot open"

e2e_run "$D" train base.cfg --set data.file=random.h5
expect_fail "data file of random bytes" "random.h5: not an HDF5 file"

e2e_run "$D" train base.cfg --set data.file=truncated.h5
expect_fail "truncated HDF5 file (first half of a good one)" "truncated.h5:"

e2e_run "$D" train base.cfg --set data.val=/nope
expect_fail "missing dataset (val = /nope)" "data.h5: dataset /nope/x not found"

e2e_run "$D" train base.cfg --set data.train=/train --set data.train_y=/nope/labels \
    --set data.train_x=/train/x
expect_fail "missing dataset (train_y = /nope/labels)" "dataset /nope/labels not found"

e2e_run "$D" train base.cfg --set data.val_x=/val --set data.val_y=/val/y
expect_fail "a group where a dataset belongs" "/val is a group, not a dataset"

e2e_run "$D" train base.cfg --set data.val_x=/train/x --set data.val_y=/val/y
expect_fail "x and y of different lengths" "/val/y has 300 rows but /train/x has 1200"

e2e_run "$D" train base.cfg --set input.shape=5
expect_fail "[input] shape 5 but the data has 4 features" \
    "/train/x has 4 elements per sample" "input takes 5"

e2e_run "$D" train base.cfg --set data.file=labels5.h5
expect_fail "labels 0..4 for a model with 3 outputs" \
    "labels5.h5:" "label 4 in /train/y is out of range" "3 outputs"

e2e_run "$D" train base.cfg --set train.batch=2000
expect_fail "a global batch larger than the training set" "fewer than one global batch of 2000"

echo "== MPI: a batch that does not divide, and data errors on every rank"
e2e_mpi 3 "$D" train base.cfg --set train.batch=64
expect_fail "batch 64 on 3 ranks (mpirun exit status, one message)" \
    "batch = 64 does not divide across 3 ranks"
e2e_ranks 3 "$D" train base.cfg --set train.batch=64
expect_fail "batch 64 on 3 ranks: every rank exits non-zero" \
    "batch = 64 does not divide across 3 ranks"

e2e_ranks 2 "$D" train base.cfg --set data.file="$WORK/missing.h5"
expect_fail "np 2: missing data file" "$WORK/missing.h5: cannot open"
e2e_ranks 2 "$D" train base.cfg --set data.file=random.h5
expect_fail "np 2: data file of random bytes" "random.h5: not an HDF5 file"
e2e_ranks 2 "$D" train base.cfg --set data.file=truncated.h5
expect_fail "np 2: truncated HDF5 file" "truncated.h5:"
e2e_ranks 2 "$D" train base.cfg --set data.val=/nope
expect_fail "np 2: missing dataset" "dataset /nope/x not found"
e2e_ranks 2 "$D" train base.cfg --set input.shape=5
expect_fail "np 2: input shape mismatch" "/train/x has 4 elements per sample"
e2e_ranks 2 "$D" train base.cfg --set data.file=labels5.h5
expect_fail "np 2: label out of range" "label 4 in /train/y is out of range"
e2e_ranks 2 "$D" train unknown_key.cfg
expect_fail "np 2: unknown key" "unknown_key.cfg:" "unknown key 'bogus'"
e2e_mpi 2 "$D" train base.cfg --set data.file=labels5.h5
expect_fail "np 2: label out of range (mpirun exit status)" "label 4 in /train/y is out of range"

echo "== checkpoints and run_dir"
head -c 3000 /dev/urandom >corrupt.h5
e2e_run "$D" train base.cfg --resume corrupt.h5
expect_fail "--resume a checkpoint of random bytes" "corrupt.h5:"

head -c $(($(stat -c %s good/last.h5) / 2)) good/last.h5 >half.h5
e2e_run "$D" train base.cfg --resume half.h5
expect_fail "--resume a truncated checkpoint" "half.h5:"

e2e_run "$D" train base.cfg --resume "$WORK/nothere.h5"
expect_fail "--resume a missing checkpoint" "$WORK/nothere.h5: cannot open checkpoint"

e2e_run "$D" train base.cfg --resume data.h5
expect_fail "--resume a dataset file (HDF5, not a checkpoint)" "data.h5: not a Dive checkpoint"

e2e_run "$D" train base.cfg --set dense_1.units=16 --resume "$WORK/good/last.h5"
expect_fail "--resume a checkpoint of another model (dense_1 units 16)" \
    "$WORK/good/last.h5: /model/dense_1/weight has a different shape"

e2e_run "$D" train base.cfg --set dense_1.units=16 --resume auto
expect_fail "--resume auto with another model" "good/last.h5: /model/dense_1/weight"

e2e_run "$D" train base.cfg --set train.seed=8 --resume auto
expect_fail "--resume auto with another seed" "good/last.h5" "seed 7" "seed = 8"
e2e_run "$D" train base.cfg --set train.batch=30 --resume auto
expect_fail "--resume auto with another global batch" "good/last.h5" "global batch of 60" "batch = 30"

e2e_ranks 2 "$D" train base.cfg --set dense_1.units=16 --resume auto
expect_fail "np 2: --resume auto with another model" "good/last.h5: /model/dense_1/weight"

e2e_ranks 2 "$D" train base.cfg --resume corrupt.h5
expect_fail "np 2: --resume a corrupt checkpoint" "corrupt.h5:"

# A run_dir whose checkpoints are all damaged: the error names each, best.h5
# and metrics.csv are kept. (A damaged last.h5 beside an older good
# checkpoint resumes from that one: e2e_ckpt.sh.)
cp -r good damaged
for f in damaged/ckpt-*.h5; do head -c 3000 /dev/urandom >"$f"; done
SAVED=$SNAPSHOT_DIR
snapshot_take "$WORK/damaged"
e2e_run "$D" train base.cfg --set train.run_dir="$WORK/damaged" --resume auto
expect_fail "--resume auto with every checkpoint damaged (best.h5 kept)" \
    "no checkpoint of $WORK/damaged verifies" "last.h5: "
snapshot_take "$SAVED"

touch afile
e2e_run "$D" train base.cfg --set train.run_dir="$WORK/afile"
expect_fail "run_dir that is a file" "run_dir $WORK/afile: not a directory"
check "the file given as run_dir is untouched" test -f afile -a ! -s afile

e2e_run "$D" train base.cfg --set train.run_dir="$WORK/afile/sub"
expect_fail "run_dir below a file" "run_dir $WORK/afile/sub: cannot create"

echo "== command line"
e2e_run "$D" eval base.cfg
expect_fail "eval without --checkpoint exits 2" --status 2 "missing --checkpoint"

e2e_run "$D" eval base.cfg --checkpoint "$WORK/nothere.h5"
expect_fail "eval of a missing checkpoint" "$WORK/nothere.h5: cannot open checkpoint"

e2e_run "$D" eval base.cfg --checkpoint good/best.h5 --set dense_1.units=16
expect_fail "eval of a checkpoint of another model" "good/best.h5: /model/dense_1/weight"

e2e_run "$D" eval base.cfg --checkpoint good/best.h5 --split /nope
expect_fail "eval --split of a missing group" "dataset /nope/x not found"

e2e_run "$D" predict base.cfg --checkpoint good/best.h5
expect_fail "predict without -o exits 2" --status 2 "missing -o"

e2e_run "$D" train base.cfg --bogus
expect_fail "train with an unknown option exits 2" --status 2 "unknown option --bogus"

e2e_run "$D" train
expect_fail "train without CONFIG exits 2" --status 2 "missing CONFIG"

echo "== import"
printf 'this is not an IDX file at all\n' >notidx.bin
e2e_run "$D" import idx notidx.bin notidx.bin -o idx.h5
expect_fail "import idx of a non-IDX file" "notidx.bin: bad IDX magic"

printf '1,2,3\n4,5,6\n7,x,9\n' >nonnum.csv
e2e_run "$D" import csv nonnum.csv -o nonnum.h5
expect_fail "import csv with a non-numeric field names file:line" \
    'nonnum.csv:3: field 2 ("x") is not a number'

printf '1,2,3\n4,5\n' >ragged.csv
e2e_run "$D" import csv ragged.csv -o ragged.h5
expect_fail "import csv with a short row names file:line" "ragged.csv:2: 2 fields, expected 3"

e2e_run "$D" import csv "$WORK/nothere.csv" -o x.h5
expect_fail "import csv of a missing file" "$WORK/nothere.csv: cannot open"

e2e_run "$D" import parquet x -o x.h5
expect_fail "import of an unknown format exits 2" --status 2 "unknown format 'parquet'"

echo "== GAN configs"
write_gan_cfg gan.cfg "$WORK/data.h5" "$WORK/gan" 1
awk '{ print } /^seed = / { print "loss = bce" }' gan.cfg >gan_loss.cfg
l=$(line_of gan_loss.cfg '^loss')
e2e_run "$D" train gan_loss.cfg
expect_fail "a GAN with [train] loss" "gan_loss.cfg:$l:" "a GAN's losses are fixed"

awk '/^units = 4$/ { print "units = 9"; next } /^shape = 1,2,2/ { print "shape = 1,3,3"; next } { print }' \
    gan.cfg >gan_size.cfg
e2e_run "$D" train gan_size.cfg
expect_fail "a generator of the wrong image size" "the generator puts out (1,3,3) = 9 values" \
    "/train/x has 4"

awk '/^\[generator.reshape\]/ { skip = 1; next } skip && /^shape/ { skip = 0; next } { print }' \
    gan.cfg >gan_flat.cfg
e2e_run "$D" train gan_flat.cfg
expect_fail "a generator that makes vectors, not images" "the generator puts out (4)" \
    "(C,H,W)"

awk '{ print } END { print "\n[discriminator.dense]\nunits = 2" }' gan.cfg >gan_d2.cfg
e2e_run "$D" train gan_d2.cfg
expect_fail "a discriminator of two outputs" "the discriminator must end in one output"

awk '!/^\[discriminator/ && !/^filters|^size|^pad|^alpha/ { print }' gan.cfg |
    awk '/^units = 1$/ { next } { print }' >gan_nod.cfg
e2e_run "$D" train gan_nod.cfg
expect_fail "a GAN without discriminator layers" "no [discriminator.<layer>] sections"

{ cat gan.cfg; printf '\n[generator.input]\nshape = 4\n'; } >gan_input.cfg
l=$(line_of gan_input.cfg '^\[generator.input\]')
e2e_run "$D" train gan_input.cfg
expect_fail "[generator.input] in a GAN" "gan_input.cfg:$l:" "take their inputs from [gan]"

e2e_run "$D" train gan.cfg --set generator.dense_1.units=abc
expect_fail "--set of a prefixed layer names it" "--set generator.dense_1.units = abc" \
    "not an integer"

e2e_run "$D" train gan.cfg --set generator.dense_1.unit=3
expect_fail "--set of an unknown key in a prefixed layer" "unknown key 'unit'"

awk '{ print } /^samples = / { print "ema = 1" }' gan.cfg >gan_ema.cfg
l=$(line_of gan_ema.cfg '^ema')
e2e_run "$D" train gan_ema.cfg
expect_fail "[gan] ema = 1 (the average would never move)" "gan_ema.cfg:$l:" \
    "must be between 0 and 0.99999"

e2e_run "$D" train gan.cfg --set gan.score_classifier="$WORK/none.h5"
expect_fail "a missing score classifier" "[gan] score_classifier" "none.h5: cannot open checkpoint"

e2e_run "$D" train gan.cfg
expect_ok "a good GAN run"
e2e_run "$D" train gan.cfg --set gan.score_classifier=gan/last.h5 --set train.run_dir=gan_by_gan
expect_fail "a GAN checkpoint as the score classifier" "a GAN checkpoint, not a classifier"
# the good run's MLP reads the 4 values the generator makes: a classifier to score with
e2e_run "$D" train gan.cfg --set gan.score_classifier=good/last.h5 --set train.run_dir=gan_scored
expect_ok "a GAN scored by a classifier"
check "it prints the real images' score and each epoch's" \
    bash -c "grep -q 'score of 1000 real images' '$OUT' && grep -q '^epoch 1/1 .*| score ' '$OUT'"
check "metrics.csv has the score columns" grep -q ',score,confidence,class_entropy$' gan_scored/metrics.csv
e2e_run "$D" sample gan/last.h5
expect_fail "dive sample of a GAN without -o" "a GAN checkpoint" "-o GRID.png"
e2e_run "$D" sample good/last.h5 -o x.png
expect_fail "dive sample -o of a classifier" "-o: " "not a GAN checkpoint"
e2e_run "$D" eval gan.cfg --checkpoint gan/last.h5
expect_fail "dive eval of a GAN config" "a GAN config"
e2e_run "$D" eval base.cfg --checkpoint gan/last.h5
expect_fail "a GAN checkpoint given to a classifier's config" "a GAN checkpoint"

echo "== the good run is still good"
SNAPSHOT_DIR=""
check "good/ is byte-for-byte what the good run wrote" test -z "$(SNAPSHOT_DIR=$WORK/good snapshot_diff)"
e2e_run "$D" eval base.cfg --checkpoint good/last.h5 --json
expect_ok "good/last.h5 still evaluates"

e2e_summary
