#!/usr/bin/env bash
# lint_layers_selftest.sh — lint_layers.sh must fail on a broken tree: a
# tiny tree that keeps the folder order passes, and each kind of breakage
# (an include upward, a private header from another folder, an include
# loop, a header over 300 lines) is reported with exit 1.
set -uo pipefail
lint="$(dirname "${BASH_SOURCE[0]}")/lint_layers.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

tree() { # a clean tree: base < data < model < run < cli
    rm -rf "$tmp/t" && mkdir -p "$tmp/t"/{base,data,model,run,cli}
    echo '#include <stdio.h>' >"$tmp/t/base/base.h"
    printf '#include "base.h"\n' >"$tmp/t/data/data.h"
    printf '#include "data.h"\n' >"$tmp/t/data/data-impl.h"
    printf '#include "data-impl.h"\n' >"$tmp/t/data/split.c"
    printf '#include "data.h"\n' >"$tmp/t/model/model.h"
    printf '#include "model.h"\n' >"$tmp/t/run/run.h"
    printf '#include "run.h"\n#include "base.h"\n' >"$tmp/t/cli/cli.c"
}
expect() { # expect RC WHAT: run the lint on the tree, compare the exit code
    out=$(bash "$lint" "$tmp/t" 2>&1)
    rc=$?
    if [ "$rc" -ne "$1" ]; then
        echo "FAIL: $2: exit $rc, wanted $1"
        echo "$out"
        fail=1
    else
        echo "ok: $2"
    fi
}

tree
expect 0 "a tree in folder order"
tree
printf '#include "run.h"\n' >>"$tmp/t/model/model.h"
expect 1 "model/ including run/ (upward)"
tree
printf '#include "data.h"\n' >>"$tmp/t/model/model.h"
printf '#include "model.h"\n' >"$tmp/t/data/data.h"
expect 1 "data/ including model/ (upward and a loop)"
tree
printf '#include "data-impl.h"\n' >>"$tmp/t/model/model.h"
expect 1 "a private header of data/ from model/"
tree
printf '#include "x.h"\n' >"$tmp/t/data/y.h"
printf '#include "y.h"\n' >"$tmp/t/data/x.h"
expect 1 "an include loop inside data/"
tree
seq 1 301 | sed 's,^,/* ,; s,$, */,' >>"$tmp/t/data/data.h"
expect 1 "a shared header of 301 lines"
exit $fail
