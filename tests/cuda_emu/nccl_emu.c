/* nccl_emu.c — NCCL as comm/comm_device.c uses it, emulated with MPI for the
 * CUDA emulation of tests/cuda_emu (dv_comm_emu, dive_emu).
 *
 * A communicator is MPI_COMM_WORLD split by a hash of the unique id, so
 * every rank of MPI_COMM_WORLD must call ncclCommInitRank together (Dive's
 * ranks all do). Init refuses two ranks on one GPU of one host, as NCCL
 * does. ncclAllReduce checks its arguments (device buffers, a live
 * communicator, a valid stream), waits for the stream's earlier work and
 * runs MPI_Allreduce at once, in place on the "device" buffers: the host
 * blocks until every rank has called it, where NCCL would only queue it.
 * ncclAvg scales each rank's input by 1/nranks before the sum, as NCCL
 * does for floating point. Asynchronous errors never happen here.
 */
#include "nccl.h"

#include "cuda_emu-impl.h"

#include <limits.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define COMM_MAGIC 0x4e43434cu
#define DEAD_MAGIC 0xdeadu

struct ncclComm {
    unsigned int magic;
    int rank, nranks;
    MPI_Comm mpi;
};

static char g_last[512];

static ncclResult_t fail(ncclResult_t rc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static ncclResult_t fail(ncclResult_t rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_last, sizeof g_last, fmt, ap);
    va_end(ap);
    return rc;
}

const char *ncclGetErrorString(ncclResult_t rc) {
    switch (rc) {
    case ncclSuccess:
        return "no error";
    case ncclUnhandledCudaError:
        return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
    case ncclSystemError:
        return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case ncclInternalError:
        return "internal error - please report this issue to the NCCL developers";
    case ncclInvalidArgument:
        return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage:
        return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    case ncclRemoteError:
        return "remote process exited or there was a network error";
    case ncclInProgress:
        return "NCCL operation in progress";
    default:
        return "unknown result code";
    }
}

const char *ncclGetLastError(ncclComm_t comm) {
    (void)comm;
    return g_last;
}

static int comm_ok(ncclComm_t c) {
    return c && c->magic == COMM_MAGIC;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ULL;
    return h;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    static unsigned int serial;
    if (!id) return fail(ncclInvalidArgument, "ncclGetUniqueId: NULL id");
    memset(id, 0, sizeof *id);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(id->internal, sizeof id->internal, "dive-nccl-emu %ld %u %lld.%09ld", (long)getpid(),
             ++serial, (long long)ts.tv_sec, ts.tv_nsec);
    return ncclSuccess;
}

/* Which GPU a rank drives: host name and CUDA device. */
typedef struct gpu_of {
    char host[64];
    int device;
} gpu_of;

ncclResult_t ncclCommInitRank(ncclComm_t *out, int nranks, ncclUniqueId id, int rank) {
    int inited = 0;
    if (!out) return fail(ncclInvalidArgument, "ncclCommInitRank: NULL comm");
    *out = NULL;
    MPI_Initialized(&inited);
    if (!inited) return fail(ncclInvalidUsage, "ncclCommInitRank: the emulation needs MPI");
    if (nranks < 1 || rank < 0 || rank >= nranks)
        return fail(ncclInvalidArgument, "ncclCommInitRank: rank %d of %d", rank, nranks);
    const int color = (int)(fnv(0xcbf29ce484222325ULL, id.internal, sizeof id.internal) >> 33);
    MPI_Comm mpi;
    if (MPI_Comm_split(MPI_COMM_WORLD, color, rank, &mpi) != MPI_SUCCESS)
        return fail(ncclSystemError, "ncclCommInitRank: MPI_Comm_split failed");
    MPI_Comm_set_errhandler(mpi, MPI_ERRORS_RETURN);
    int size = 0, me = -1;
    MPI_Comm_size(mpi, &size);
    MPI_Comm_rank(mpi, &me);
    gpu_of mine, *all = calloc((size_t)size, sizeof *all);
    memset(&mine, 0, sizeof mine);
    gethostname(mine.host, sizeof mine.host - 1);
    int ok = all && cudaGetDevice(&mine.device) == cudaSuccess &&
             MPI_Allgather(&mine, (int)sizeof mine, MPI_BYTE, all, (int)sizeof mine, MPI_BYTE,
                           mpi) == MPI_SUCCESS;
    ncclResult_t rc = ncclSuccess;
    if (!ok) {
        rc = fail(ncclSystemError, "ncclCommInitRank: could not exchange the ranks' GPUs");
    } else if (size != nranks || me != rank) {
        rc = fail(ncclInvalidUsage,
                  "ncclCommInitRank: rank %d of %d, but %d ranks came with this id (this one "
                  "as rank %d)",
                  rank, nranks, size, me);
    } else {
        for (int a = 0; a < size && rc == ncclSuccess; a++)
            for (int b = a + 1; b < size && rc == ncclSuccess; b++)
                if (all[a].device == all[b].device && !strcmp(all[a].host, all[b].host))
                    rc = fail(ncclInvalidUsage,
                              "Duplicate GPU detected : rank %d and rank %d both on CUDA device "
                              "%d of %s",
                              a, b, all[a].device, all[a].host);
    }
    free(all);
    struct ncclComm *c = rc == ncclSuccess ? calloc(1, sizeof *c) : NULL;
    if (rc == ncclSuccess && !c) rc = fail(ncclSystemError, "ncclCommInitRank: out of memory");
    if (rc != ncclSuccess) {
        MPI_Comm_free(&mpi);
        return rc;
    }
    c->magic = COMM_MAGIC;
    c->rank = rank;
    c->nranks = nranks;
    c->mpi = mpi;
    *out = c;
    return ncclSuccess;
}

/* The handle stays allocated (dead) so a use after destroy is caught. */
ncclResult_t ncclCommDestroy(ncclComm_t c) {
    if (!comm_ok(c)) return fail(ncclInvalidArgument, "ncclCommDestroy: bad communicator");
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&c->mpi);
    c->magic = DEAD_MAGIC;
    return ncclSuccess;
}

/* Must not wait for peers: the MPI communicator is left alone. */
ncclResult_t ncclCommAbort(ncclComm_t c) {
    if (!comm_ok(c)) return fail(ncclInvalidArgument, "ncclCommAbort: bad communicator");
    c->magic = DEAD_MAGIC;
    return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t c, ncclResult_t *async) {
    if (!comm_ok(c) || !async)
        return fail(ncclInvalidArgument, "ncclCommGetAsyncError: bad communicator");
    *async = ncclSuccess;
    return ncclSuccess;
}

ncclResult_t ncclCommCount(const ncclComm_t c, int *count) {
    if (!comm_ok(c) || !count) return fail(ncclInvalidArgument, "ncclCommCount: bad arguments");
    *count = c->nranks;
    return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t c, int *rank) {
    if (!comm_ok(c) || !rank) return fail(ncclInvalidArgument, "ncclCommUserRank: bad arguments");
    *rank = c->rank;
    return ncclSuccess;
}

/* recv (count elements of size bytes) = the reduction of every rank's send;
 * device memory is open. */
static ncclResult_t reduce(const char *s, char *r, size_t count, size_t size, ncclDataType_t type,
                           MPI_Datatype mt, MPI_Op mo, int avg, ncclComm_t c) {
    if (s != r) memcpy(r, s, count * size);
    if (avg) {
        if (type == ncclFloat32) {
            const float k = 1.0f / (float)c->nranks;
            for (size_t i = 0; i < count; i++)
                ((float *)r)[i] *= k;
        } else {
            const double k = 1.0 / (double)c->nranks;
            for (size_t i = 0; i < count; i++)
                ((double *)r)[i] *= k;
        }
    }
    for (size_t done = 0; done < count;) {
        size_t n = count - done > (size_t)INT_MAX ? (size_t)INT_MAX : count - done;
        if (MPI_Allreduce(MPI_IN_PLACE, r + done * size, (int)n, mt, mo, c->mpi) != MPI_SUCCESS)
            return fail(ncclSystemError, "ncclAllReduce: MPI_Allreduce failed");
        done += n;
    }
    return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t c, cudaStream_t stream) {
    if (!comm_ok(c)) return fail(ncclInvalidArgument, "ncclAllReduce: bad communicator");
    MPI_Datatype mt;
    size_t size;
    switch (type) {
    case ncclInt32:
        mt = MPI_INT32_T, size = 4;
        break;
    case ncclInt64:
        mt = MPI_INT64_T, size = 8;
        break;
    case ncclFloat32:
        mt = MPI_FLOAT, size = 4;
        break;
    case ncclFloat64:
        mt = MPI_DOUBLE, size = 8;
        break;
    default:
        return fail(ncclInvalidArgument, "ncclAllReduce: data type %d is not emulated", (int)type);
    }
    MPI_Op mo;
    switch (op) {
    case ncclSum:
    case ncclAvg:
        mo = MPI_SUM;
        break;
    case ncclProd:
        mo = MPI_PROD;
        break;
    case ncclMax:
        mo = MPI_MAX;
        break;
    case ncclMin:
        mo = MPI_MIN;
        break;
    default:
        return fail(ncclInvalidArgument, "ncclAllReduce: reduction %d is unknown", (int)op);
    }
    if (op == ncclAvg && type != ncclFloat32 && type != ncclFloat64)
        return fail(ncclInvalidArgument, "ncclAllReduce: ncclAvg of integers is not emulated");
    if (dv_emu_stream_begin(stream, "ncclAllReduce") != cudaSuccess)
        return fail(ncclUnhandledCudaError, "ncclAllReduce: bad stream %p", (void *)stream);
    if (count == 0) return ncclSuccess;
    const size_t bytes = count * size;
    if (count > SIZE_MAX / size || !dv_emu_device_range(send, bytes) ||
        !dv_emu_device_range(recv, bytes))
        return fail(ncclInvalidArgument,
                    "ncclAllReduce: sendbuff %p or recvbuff %p (%zu bytes) is not device memory",
                    send, recv, bytes);
    const char *s = send;
    char *r = recv;
    if (s != r && s < r + bytes && r < s + bytes)
        return fail(ncclInvalidArgument, "ncclAllReduce: sendbuff and recvbuff overlap");
    dv_emu_device_access(1);
    ncclResult_t rc = reduce(s, r, count, size, type, mt, mo, op == ncclAvg, c);
    dv_emu_device_access(0);
    return rc;
}
