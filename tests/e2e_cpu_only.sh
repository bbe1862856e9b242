#!/usr/bin/env bash
# e2e_cpu_only.sh — a CPU run of a CUDA build pays nothing for CUDA
# (docs/design.md, "The CUDA module"): the dive program and libdive.so link
# no CUDA library, a training on the CPU maps none of them (LD_DEBUG shows
# every library the loader opens, dlopen'ed ones too), and a missing or
# broken CUDA module ends a GPU run with one clear message while a CPU run
# goes on. Runs in every build; without the CUDA module the first checks
# are simply true.
# shellcheck disable=SC2317 # helpers run through check()
set -u
# shellcheck source=tests/lib_e2e.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib_e2e.sh"

# The check is about the real module: an emulated one given by the test
# environment would be a different program.
unset DIVE_CUDA_MODULE
CUDA_LIBS='libcudart|libcublas|libnccl|libcuda\.so|libdive-cuda'

lib=$(ldd "$DIVE_BIN" | awk '/libdive\.so/ {print $3}')
check "dive links libdive.so" test -n "$lib"
check "dive links no CUDA library" bash -c "! ldd '$DIVE_BIN' | grep -Eq '$CUDA_LIBS'"
check "libdive.so links no CUDA library" bash -c "! ldd '$lib' | grep -Eq '$CUDA_LIBS'"

make_data data.h5
write_cfg mlp.cfg data.h5 run 2
for backend in cpu auto; do
    LD_DEBUG=files e2e_run "$DIVE_BIN" train mlp.cfg --set train.backend=$backend \
        --set train.run_dir=run_$backend
    expect_ok "train with backend = $backend"
    # mapped, not only looked for: auto asks whether a driver is there
    loaded=$(grep -E "generating link map" "$ERR" | grep -Eo "file=[^ ]*($CUDA_LIBS)[^ ]*" |
        sort -u | tr '\n' ' ')
    if [ "$backend" = cpu ] || ! grep -q "backend cuda" "$OUT"; then
        check "backend = $backend on the CPU loads no CUDA library${loaded:+ (loaded: $loaded)}" \
            test -z "$loaded"
    fi
done

# A module that cannot be loaded: auto trains on the CPU, cuda says why.
DIVE_CUDA_MODULE=$WORK/nowhere/libdive-cuda.so e2e_run "$DIVE_BIN" train mlp.cfg \
    --set train.run_dir=run_missing
expect_ok "backend = auto with a missing CUDA module trains on the CPU"
check "... and says backend cpu" grep -q "backend cpu" "$OUT"
printf 'not a shared object\n' >broken.so
DIVE_CUDA_MODULE=$WORK/broken.so e2e_run "$DIVE_BIN" train mlp.cfg --set train.backend=cuda \
    --set train.run_dir=run_broken
expect_fail "backend = cuda with a broken CUDA module" "backend = cuda:" \
    "DIVE_CUDA_MODULE = $WORK/broken.so: cannot load the CUDA module"

e2e_summary
