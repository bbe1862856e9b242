/* cuda_emu-impl.h — private to tests/cuda_emu/: what the emulated NCCL
 * (nccl_emu.c) needs from the emulated CUDA runtime (cuda_emu.cpp).
 */
#ifndef DV_CUDA_EMU_IMPL_H
#define DV_CUDA_EMU_IMPL_H

#include "cuda_runtime_api.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when [p, p + bytes) lies inside one cudaMalloc allocation. */
int dv_emu_device_range(const void *p, size_t bytes);

/* Starts work on stream s: checks the handle (an error is recorded as
 * cudaGetLastError's and returned) and waits for the host function
 * running on it, so the work follows everything issued on s before. */
cudaError_t dv_emu_stream_begin(cudaStream_t s, const char *call);

/* Device memory open to the host (1) or closed again (0), in pairs; only
 * DIVE_EMU_GUARD=1 ever closes it. */
void dv_emu_device_access(int open);

#ifdef __cplusplus
}
#endif
#endif
