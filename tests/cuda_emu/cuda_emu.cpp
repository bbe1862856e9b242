/* cuda_emu.cpp — a CPU emulation of the part of CUDA and cuBLAS that the .cu
 * files of kernels/cuda/ and comm/comm_device.c use, so that the real
 * kernel source runs in CTest on machines without a GPU (most of Dive's
 * CI): test_kernels_cuda_emu compares every CUDA op with the CPU op,
 * test_comm_cuda_emu runs comm's device side (NCCL emulated with MPI in
 * nccl_emu.c), and dive_emu is the whole trainer on it.
 *
 * What it does:
 *  - "device" memory is 256-byte aligned host memory from a table of
 *    allocations; cudaMalloc'd memory is filled with NaN bytes (0xff), as
 *    real device memory starts as garbage;
 *  - work on a stream runs at once, on the calling thread, in issue order,
 *    except host functions (cudaLaunchHostFunc), which run on a thread of
 *    their own: later work on their stream waits for them, events recorded
 *    behind them complete when they return, and cudaStreamWaitEvent makes
 *    the host wait for the event;
 *  - a launch runs the grid block after block; a block's threads are fibers
 *    (ucontext, stacks with a guard page, reused across blocks and
 *    launches). A fiber runs threads one after another until one of them
 *    waits (__syncthreads, __syncwarp, a shuffle or a vote); that thread
 *    keeps the fiber and the next thread gets another one. When every
 *    thread of the block has finished or waits, the waits that are complete
 *    are released: a warp operation once every lane of its mask has
 *    arrived at one with the same mask, __syncthreads once every thread
 *    has. __shared__ variables are statics in one linker section, filled
 *    with NaN bytes before each block;
 *  - cuBLAS GEMMs are OpenBLAS's cblas_sgemm, column-major; TF32 and BF16
 *    compute types round both inputs to 10 / 7 mantissa bits (to nearest,
 *    ties to even) first, so precision tests see realistic errors.
 *
 * What it checks, and reports on stderr (then aborts, so no test can pass
 * over it): a warp operation whose mask leaves out the caller, names a lane
 * that has exited or is outside the block, or that reads a lane outside the
 * mask; lanes meeting at different warp operations; __syncthreads after
 * some threads of the block returned; a block that can never finish
 * (deadlock); a launch from inside a kernel. And as CUDA does, with an
 * error code (and a line on stderr saying why): launch configurations CUDA
 * refuses, copies and memsets outside device allocations or in the wrong
 * direction, freeing what was not allocated, bad streams and events, cuBLAS
 * arguments (sizes, leading dimensions, operands outside device memory, C
 * overlapping A or B).
 *
 * What it does not check or model: timing and occupancy; memory ordering
 * between streams (work runs at once, so a missing cudaStreamWaitEvent
 * goes unnoticed); data races between threads of a kernel (threads run in
 * a fixed order, so a race shows only if that order exposes it:
 * DIVE_EMU_REVERSE=1 runs blocks and threads backwards); out of bounds
 * accesses inside kernels; host code reading device memory; the GPU's FMA
 * contraction and its less exact expf/logf/tanhf (the host's libm is used,
 * and nothing is fused: build with -ffp-contract=off); launch limits other
 * than the grid and block sizes (shared memory, registers); dynamic shared
 * memory (`extern __shared__` does not compile here).
 *
 * Environment: DIVE_EMU_DEVICE_COUNT (default 1; 0 emulates a machine
 * without a GPU), DIVE_EMU_SMS (multiprocessors reported, default 2: small
 * grids keep the emulation fast and make grid-stride loops go round),
 * DIVE_EMU_REVERSE (1: run blocks and threads in reverse order).
 */
#include "cublas_v2.h"
#include "cuda_emu-impl.h"
#include "cuda_runtime.h"

#include <cblas.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

/* One lock for the tables and launches: the trainer's loader thread may
 * allocate pinned memory while the main thread computes. */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

static thread_local cudaError_t g_last_error = cudaSuccess;

static cudaError_t fail(cudaError_t e) {
    g_last_error = e;
    return e;
}

static void emu_vsay(const char *fmt, va_list ap) {
    fprintf(stderr, "cuda_emu: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    fflush(stderr);
}

static void emu_fatal(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void emu_fatal(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    emu_vsay(fmt, ap);
    va_end(ap);
    abort();
}

/* An API misuse CUDA answers with an error code: say what it was (the code
 * alone rarely explains it), then return the code. */
static cudaError_t emu_error(cudaError_t e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static cudaError_t emu_error(cudaError_t e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    emu_vsay(fmt, ap);
    va_end(ap);
    return fail(e);
}

static int env_int(const char *name, int dflt) {
    const char *s = getenv(name);
    if (!s || !*s) return dflt;
    char *end;
    long v = strtol(s, &end, 10);
    return *end || v < 0 || v > 1 << 20 ? dflt : (int)v;
}

/* ---- errors ----------------------------------------------------------- */

static const struct {
    cudaError_t code;
    const char *name, *text;
} error_table[] = {
    {cudaSuccess, "cudaSuccess", "no error"},
    {cudaErrorInvalidValue, "cudaErrorInvalidValue", "invalid argument"},
    {cudaErrorMemoryAllocation, "cudaErrorMemoryAllocation", "out of memory"},
    {cudaErrorInitializationError, "cudaErrorInitializationError", "initialization error"},
    {cudaErrorInvalidConfiguration, "cudaErrorInvalidConfiguration",
     "invalid configuration argument"},
    {cudaErrorInvalidDevicePointer, "cudaErrorInvalidDevicePointer", "invalid device pointer"},
    {cudaErrorInvalidMemcpyDirection, "cudaErrorInvalidMemcpyDirection",
     "invalid copy direction for memcpy"},
    {cudaErrorNoDevice, "cudaErrorNoDevice", "no CUDA-capable device is detected"},
    {cudaErrorInvalidDevice, "cudaErrorInvalidDevice", "invalid device ordinal"},
    {cudaErrorInvalidResourceHandle, "cudaErrorInvalidResourceHandle", "invalid resource handle"},
    {cudaErrorNotReady, "cudaErrorNotReady", "device not ready"},
    {cudaErrorLaunchFailure, "cudaErrorLaunchFailure", "unspecified launch failure"},
    {cudaErrorUnknown, "cudaErrorUnknown", "unknown error"},
};

const char *cudaGetErrorName(cudaError_t e) {
    for (size_t i = 0; i < sizeof error_table / sizeof error_table[0]; i++)
        if (error_table[i].code == e) return error_table[i].name;
    return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t e) {
    for (size_t i = 0; i < sizeof error_table / sizeof error_table[0]; i++)
        if (error_table[i].code == e) return error_table[i].text;
    return "unrecognized error code";
}

cudaError_t cudaGetLastError(void) {
    cudaError_t e = g_last_error;
    g_last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) {
    return g_last_error;
}

/* ---- devices ---------------------------------------------------------- */

static thread_local int g_device = 0;

static int device_count(void) {
    return env_int("DIVE_EMU_DEVICE_COUNT", 1);
}

cudaError_t cudaGetDeviceCount(int *count) {
    if (!count) return fail(cudaErrorInvalidValue);
    *count = device_count();
    return *count ? cudaSuccess : fail(cudaErrorNoDevice);
}

static cudaError_t check_device(int device) {
    int n = device_count();
    if (n == 0) return fail(cudaErrorNoDevice);
    if (device < 0 || device >= n) return fail(cudaErrorInvalidDevice);
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
    cudaError_t e = check_device(device);
    if (e == cudaSuccess) g_device = device;
    return e;
}

cudaError_t cudaGetDevice(int *device) {
    if (!device) return fail(cudaErrorInvalidValue);
    cudaError_t e = check_device(0);
    *device = g_device;
    return e;
}

cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device) {
    cudaError_t e = check_device(device);
    if (e != cudaSuccess) return e;
    if (!value) return fail(cudaErrorInvalidValue);
    switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock:
        *value = 1024;
        return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: {
        int sms = env_int("DIVE_EMU_SMS", 2);
        *value = sms > 0 ? sms : 1;
        return cudaSuccess;
    }
    case cudaDevAttrClockRate:
        *value = 1000000; /* kHz */
        return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: /* 0.0: no GPU, so no peak FLOP/s (MFU unknown) */
    case cudaDevAttrComputeCapabilityMinor:
        *value = 0;
        return cudaSuccess;
    }
    return emu_error(cudaErrorInvalidValue, "cudaDeviceGetAttribute: attribute %d not emulated",
                     (int)attr);
}

cudaError_t cudaDeviceGetPCIBusId(char *bus, int len, int device) {
    cudaError_t e = check_device(device);
    if (e != cudaSuccess) return e;
    if (!bus || len < 13) return fail(cudaErrorInvalidValue);
    snprintf(bus, (size_t)len, "0000:%02x:00.0", device + 1);
    return cudaSuccess;
}

/* ---- memory ----------------------------------------------------------- */

enum { MEM_DEVICE = 1, MEM_PINNED = 2 };

typedef struct alloc_rec {
    char *p;
    size_t n;
    int kind;
    size_t mapped; /* bytes mmap'd (guard mode), 0: from posix_memalign */
} alloc_rec;

static alloc_rec *g_allocs;
static size_t g_nallocs, g_cap_allocs;

/* The allocation of `kind` holding [p, p + n), or -1. Caller holds g_lock. */
static long find_alloc(const void *p, size_t n, int kind) {
    const char *c = (const char *)p;
    for (size_t i = g_nallocs; i-- > 0;) {
        const alloc_rec *a = &g_allocs[i];
        if (a->kind == kind && c >= a->p && c < a->p + (a->n ? a->n : 1))
            return n <= (size_t)(a->p + a->n - c) ? (long)i : -1;
    }
    return -1;
}

/* Whether any byte of [p, p + n) lies in an allocation of `kind`. */
static int touches(const void *p, size_t n, int kind) {
    const char *c = (const char *)p;
    for (size_t i = 0; i < g_nallocs; i++) {
        const alloc_rec *a = &g_allocs[i];
        if (a->kind == kind && c < a->p + a->n && a->p < c + (n ? n : 1)) return 1;
    }
    return 0;
}

/* ---- guard mode ----------------------------------------------------------
 * DIVE_EMU_GUARD=1: device memory is mapped without access except while
 * the emulation itself works on it (a kernel, a copy, a memset, a GEMM, an
 * emulated NCCL all-reduce), so host code that reads or writes a device
 * pointer faults, as it would on a GPU, and the SIGSEGV handler names the
 * allocation. Costs two mprotect calls per allocation per such operation. */

static int g_guard = -1; /* -1: not read yet */
static int g_open;       /* device memory accessible (nesting depth) */

static void guard_segv(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    const char *a = (const char *)si->si_addr;
    for (size_t i = 0; i < g_nallocs; i++) {
        const alloc_rec *r = &g_allocs[i];
        if (r->kind == MEM_DEVICE && r->mapped && a >= r->p && a < r->p + r->mapped) {
            char msg[256];
            int len = snprintf(msg, sizeof msg,
                               "cuda_emu: host code touched device memory at %p, %zu bytes into "
                               "a %zu-byte cudaMalloc allocation (DIVE_EMU_GUARD=1)\n",
                               (const void *)a, (size_t)(a - r->p), r->n);
            if (len > 0 && write(2, msg, (size_t)len) < 0) len = 0;
            break;
        }
    }
    signal(sig, SIG_DFL); /* the access faults again, now fatally */
}

static int guard_on(void) {
    if (g_guard < 0) {
        g_guard = env_int("DIVE_EMU_GUARD", 0) != 0;
        if (g_guard) {
            struct sigaction sa;
            memset(&sa, 0, sizeof sa);
            sa.sa_sigaction = guard_segv;
            sa.sa_flags = SA_SIGINFO;
            sigemptyset(&sa.sa_mask);
            sigaction(SIGSEGV, &sa, NULL);
        }
    }
    return g_guard;
}

static void protect(const alloc_rec *a, int prot) {
    if (a->kind == MEM_DEVICE && a->mapped && mprotect(a->p, a->mapped, prot))
        emu_fatal("mprotect: %s", strerror(errno));
}

/* Opens (+1) or closes (-1) device memory to the host. Caller holds g_lock. */
static void device_access(int delta) {
    if (g_guard <= 0) return;
    const int was = g_open;
    g_open += delta;
    if ((was == 0) != (g_open == 0))
        for (size_t i = 0; i < g_nallocs; i++)
            protect(&g_allocs[i], g_open ? PROT_READ | PROT_WRITE : PROT_NONE);
}

static cudaError_t emu_alloc(void **out, size_t n, int kind) {
    if (!out) return fail(cudaErrorInvalidValue);
    *out = NULL;
    if (n == 0) return cudaSuccess; /* as CUDA: NULL, no error */
    size_t mapped = 0;
    pthread_mutex_lock(&g_lock);
    char *p;
    if (kind == MEM_DEVICE && guard_on()) {
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        mapped = (n + page - 1) / page * page;
        p = (char *)mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) p = NULL;
    } else if (posix_memalign((void **)&p, 256, n)) { /* n, not rounded: ASan sees overruns */
        p = NULL;
    }
    if (p && g_nallocs == g_cap_allocs) {
        size_t cap = g_cap_allocs ? 2 * g_cap_allocs : 256;
        alloc_rec *t = (alloc_rec *)realloc(g_allocs, cap * sizeof *t);
        if (t) {
            g_allocs = t;
            g_cap_allocs = cap;
        } else {
            mapped ? (void)munmap(p, mapped) : free(p);
            p = NULL;
        }
    }
    if (!p) {
        pthread_mutex_unlock(&g_lock);
        return fail(cudaErrorMemoryAllocation);
    }
    memset(p, 0xff, n); /* NaN in every float and double: never assume zeros */
    alloc_rec *a = &g_allocs[g_nallocs++];
    a->p = p;
    a->n = n;
    a->kind = kind;
    a->mapped = mapped;
    if (!g_open) protect(a, PROT_NONE);
    pthread_mutex_unlock(&g_lock);
    *out = p;
    return cudaSuccess;
}

static cudaError_t emu_free(void *p, int kind, const char *call) {
    if (!p) return cudaSuccess;
    pthread_mutex_lock(&g_lock);
    size_t i = 0;
    while (i < g_nallocs && !(g_allocs[i].p == p && g_allocs[i].kind == kind))
        i++;
    if (i == g_nallocs) {
        pthread_mutex_unlock(&g_lock);
        return emu_error(cudaErrorInvalidValue, "%s(%p): not a pointer it allocated", call, p);
    }
    const size_t mapped = g_allocs[i].mapped;
    g_allocs[i] = g_allocs[--g_nallocs];
    pthread_mutex_unlock(&g_lock);
    if (mapped)
        munmap(p, mapped);
    else
        free(p);
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t n) {
    return emu_alloc(p, n, MEM_DEVICE);
}

cudaError_t cudaFree(void *p) {
    return emu_free(p, MEM_DEVICE, "cudaFree");
}

cudaError_t cudaHostAlloc(void **p, size_t n, unsigned int flags) {
    if (flags & ~7u) return fail(cudaErrorInvalidValue);
    return emu_alloc(p, n, MEM_PINNED);
}

cudaError_t cudaMallocHost(void **p, size_t n) {
    return emu_alloc(p, n, MEM_PINNED);
}

cudaError_t cudaFreeHost(void *p) {
    return emu_free(p, MEM_PINNED, "cudaFreeHost");
}

/* ---- streams and events ----------------------------------------------- */

#define STREAM_MAGIC 0x5354524du
#define EVENT_MAGIC  0x4556454eu
#define DEAD_MAGIC   0xdeadu

/* Work on a stream runs at once, except a host function
 * (cudaLaunchHostFunc), which runs on a thread of its own so the host can
 * go on: the tests stall a stream with one to check that waits wait. Any
 * later work on that stream first joins the thread (the stream's order,
 * kept by blocking the host); an event recorded behind it completes when
 * it returns. Host functions count as `issued` and `finished` tickets.
 *
 * Never freed: a handle used after its destroy then reads DEAD_MAGIC
 * instead of freed memory (a run creates a handful). */
struct CUstream_st {
    unsigned int magic;
    unsigned int flags;
    pthread_t thread; /* the host function running, while busy */
    int busy;
    unsigned long issued;
    unsigned long finished; /* written by the host function's thread */
    cudaStream_t next;      /* every stream, for cudaDeviceSynchronize */
};

struct CUevent_st {
    unsigned int magic;
    unsigned int flags;
    cudaStream_t stream; /* recorded on; NULL: complete */
    unsigned long ticket;
};

static cudaStream_t g_streams;

static int stream_ok(cudaStream_t s) {
    return !s || s->magic == STREAM_MAGIC;
}

static int event_ok(cudaEvent_t e) {
    return e && e->magic == EVENT_MAGIC;
}

/* Waits for s's host function, so work issued on s now runs after it. */
static void stream_drain(cudaStream_t s) {
    if (!s || !s->busy) return;
    pthread_join(s->thread, NULL);
    s->busy = 0;
}

/* Every stream operation starts here: a valid stream, drained. */
static cudaError_t stream_begin(cudaStream_t s, const char *call) {
    if (!stream_ok(s))
        return emu_error(cudaErrorInvalidResourceHandle, "%s: bad stream %p", call, (void *)s);
    stream_drain(s);
    return cudaSuccess;
}

static int event_done(cudaEvent_t e) {
    return !e->stream || __atomic_load_n(&e->stream->finished, __ATOMIC_ACQUIRE) >= e->ticket;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags) {
    if (!s || (flags & ~1u)) return fail(cudaErrorInvalidValue);
    *s = (cudaStream_t)calloc(1, sizeof **s);
    if (!*s) return fail(cudaErrorMemoryAllocation);
    (*s)->magic = STREAM_MAGIC;
    (*s)->flags = flags;
    pthread_mutex_lock(&g_lock);
    (*s)->next = g_streams;
    g_streams = *s;
    pthread_mutex_unlock(&g_lock);
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *s) {
    return cudaStreamCreateWithFlags(s, cudaStreamDefault);
}

cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (!s || !stream_ok(s))
        return emu_error(cudaErrorInvalidResourceHandle, "cudaStreamDestroy: bad stream %p",
                         (void *)s);
    stream_drain(s);
    s->magic = DEAD_MAGIC;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    return stream_begin(s, "cudaStreamSynchronize");
}

cudaError_t cudaStreamQuery(cudaStream_t s) {
    if (!stream_ok(s))
        return emu_error(cudaErrorInvalidResourceHandle, "cudaStreamQuery: bad stream %p",
                         (void *)s);
    if (s && __atomic_load_n(&s->finished, __ATOMIC_ACQUIRE) < s->issued) return cudaErrorNotReady;
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
    for (cudaStream_t s = g_streams; s; s = s->next)
        stream_drain(s);
    return cudaSuccess;
}

typedef struct host_call {
    cudaHostFn_t fn;
    void *arg;
    cudaStream_t stream;
    unsigned long ticket;
} host_call;

static void *host_call_run(void *p) {
    host_call hc = *(host_call *)p;
    free(p);
    hc.fn(hc.arg);
    __atomic_store_n(&hc.stream->finished, hc.ticket, __ATOMIC_RELEASE);
    return NULL;
}

cudaError_t cudaLaunchHostFunc(cudaStream_t s, cudaHostFn_t fn, void *arg) {
    cudaError_t e = stream_begin(s, "cudaLaunchHostFunc");
    if (e != cudaSuccess) return e;
    if (!fn) return fail(cudaErrorInvalidValue);
    host_call *hc = (host_call *)malloc(sizeof *hc);
    if (!s || !hc) { /* the legacy stream (or no memory): run it now */
        free(hc);
        fn(arg);
        return cudaSuccess;
    }
    hc->fn = fn;
    hc->arg = arg;
    hc->stream = s;
    hc->ticket = ++s->issued;
    if (pthread_create(&s->thread, NULL, host_call_run, hc)) {
        host_call_run(hc);
        return cudaSuccess;
    }
    s->busy = 1;
    return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int flags) {
    if (!e || (flags & ~3u)) return fail(cudaErrorInvalidValue);
    *e = (cudaEvent_t)calloc(1, sizeof **e);
    if (!*e) return fail(cudaErrorMemoryAllocation);
    (*e)->magic = EVENT_MAGIC;
    (*e)->flags = flags;
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *e) {
    return cudaEventCreateWithFlags(e, cudaEventDefault);
}

cudaError_t cudaEventDestroy(cudaEvent_t e) {
    if (!event_ok(e))
        return emu_error(cudaErrorInvalidResourceHandle, "cudaEventDestroy: bad event %p",
                         (void *)e);
    e->magic = DEAD_MAGIC;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    if (!event_ok(e) || !stream_ok(s))
        return emu_error(cudaErrorInvalidResourceHandle,
                         "cudaEventRecord: bad event %p or stream %p", (void *)e, (void *)s);
    e->stream = s;
    e->ticket = s ? s->issued : 0;
    return cudaSuccess;
}

/* Not ready is an answer, not an error: it is not recorded as the last
 * error (as CUDA). */
cudaError_t cudaEventQuery(cudaEvent_t e) {
    if (!event_ok(e))
        return emu_error(cudaErrorInvalidResourceHandle, "cudaEventQuery: bad event %p", (void *)e);
    return event_done(e) ? cudaSuccess : cudaErrorNotReady;
}

cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    if (!event_ok(e))
        return emu_error(cudaErrorInvalidResourceHandle, "cudaEventSynchronize: bad event %p",
                         (void *)e);
    if (!event_done(e)) stream_drain(e->stream);
    return cudaSuccess;
}

/* The waiting stream's later work must follow the event: the host waits
 * for it now, which orders everything issued later. */
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned int flags) {
    if (!stream_ok(s) || !event_ok(e) || flags)
        return emu_error(cudaErrorInvalidResourceHandle,
                         "cudaStreamWaitEvent: bad stream %p or event %p", (void *)s, (void *)e);
    return cudaEventSynchronize(e);
}

/* ---- copies ----------------------------------------------------------- */

static const char *kind_name(int kind) {
    return kind == MEM_DEVICE ? "device" : "host";
}

/* A copy's end must lie inside one device allocation (want MEM_DEVICE) or
 * touch none (want host). */
static int check_side(const void *p, size_t n, int want, const char *call, const char *side) {
    if (want == MEM_DEVICE ? find_alloc(p, n, MEM_DEVICE) >= 0 : !touches(p, n, MEM_DEVICE))
        return 1;
    fprintf(stderr, "cuda_emu: %s: %s [%p, +%zu) is not %s memory%s\n", call, side, p, n,
            kind_name(want), want == MEM_DEVICE ? " (not inside one cudaMalloc allocation)" : "");
    return 0;
}

static cudaError_t copy(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind,
                        cudaStream_t s, const char *call) {
    cudaError_t e = stream_begin(s, call);
    if (e != cudaSuccess) return e;
    if (n == 0) return cudaSuccess;
    if (!dst || !src) return emu_error(cudaErrorInvalidValue, "%s: NULL pointer", call);
    if ((int)kind < 0 || (int)kind > cudaMemcpyDefault)
        return fail(cudaErrorInvalidMemcpyDirection);
    if (kind != cudaMemcpyDefault) {
        const int dst_kind =
            kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice ? MEM_DEVICE : 0;
        const int src_kind =
            kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice ? MEM_DEVICE : 0;
        pthread_mutex_lock(&g_lock);
        int ok =
            check_side(dst, n, dst_kind, call, "dst") && check_side(src, n, src_kind, call, "src");
        pthread_mutex_unlock(&g_lock);
        if (!ok) return fail(cudaErrorInvalidValue);
    }
    pthread_mutex_lock(&g_lock);
    device_access(1);
    memmove(dst, src, n);
    device_access(-1);
    pthread_mutex_unlock(&g_lock);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind,
                            cudaStream_t s) {
    return copy(dst, src, n, kind, s, "cudaMemcpyAsync");
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind) {
    return copy(dst, src, n, kind, NULL, "cudaMemcpy");
}

cudaError_t cudaMemsetAsync(void *p, int value, size_t n, cudaStream_t s) {
    cudaError_t e = stream_begin(s, "cudaMemsetAsync");
    if (e != cudaSuccess) return e;
    if (n == 0) return cudaSuccess;
    pthread_mutex_lock(&g_lock);
    int ok = check_side(p, n, MEM_DEVICE, "cudaMemsetAsync", "dst");
    if (ok) {
        device_access(1);
        memset(p, value, n);
        device_access(-1);
    }
    pthread_mutex_unlock(&g_lock);
    return ok ? cudaSuccess : fail(cudaErrorInvalidValue);
}

cudaError_t cudaMemset(void *p, int value, size_t n) {
    return cudaMemsetAsync(p, value, n, NULL);
}

/* ---- for the emulated NCCL ------------------------------------------- */

int dv_emu_device_range(const void *p, size_t bytes) {
    pthread_mutex_lock(&g_lock);
    int ok = find_alloc(p, bytes, MEM_DEVICE) >= 0;
    pthread_mutex_unlock(&g_lock);
    return ok;
}

cudaError_t dv_emu_stream_begin(cudaStream_t s, const char *call) {
    return stream_begin(s, call);
}

void dv_emu_device_access(int open) {
    pthread_mutex_lock(&g_lock);
    device_access(open ? 1 : -1);
    pthread_mutex_unlock(&g_lock);
}

/* ---- the block scheduler ---------------------------------------------- */

#define FIBER_STACK (256 * 1024)
#define MAX_THREADS 1024

enum { T_UNSTARTED, T_RUN, T_BLOCK, T_WARP, T_DONE };

typedef struct emu_thread {
    int state;
    int fiber;
    /* while state == T_WARP: the operation and where its result goes */
    int op, b, width;
    unsigned int mask;
    size_t bytes;
    unsigned char in[8];
    void *out;
} emu_thread;

typedef struct emu_fiber {
    ucontext_t ctx;
    char *map; /* guard page, then the stack */
} emu_fiber;

static emu_fiber *g_fibers;
static int g_nfibers;
static int *g_idle; /* fibers parked at the top of their loop */
static int g_nidle;
static ucontext_t g_sched;
static int g_starting; /* the fiber fiber_main starts as */

static struct {
    void (*fn)(void *);
    void *arg;
    const char *name;
    int nt, next, done, reverse;
    int cur; /* the thread running now */
    emu_thread th[MAX_THREADS];
} g_blk;

static int g_in_kernel;

/* The linker's bounds of the section holding every __shared__ variable
 * (weak: a program may have none). */
extern "C" char __start_dv_emu_shared[] __attribute__((weak));
extern "C" char __stop_dv_emu_shared[] __attribute__((weak));

static void set_coords(int t) {
    const unsigned int u = (unsigned int)t;
    threadIdx.x = u % blockDim.x;
    threadIdx.y = u / blockDim.x % blockDim.y;
    threadIdx.z = u / (blockDim.x * blockDim.y);
    g_blk.cur = t;
}

/* A fiber's whole life: take the next unstarted thread and run it, until
 * none is left; then park, and start again when handed the next block. */
static void fiber_main(void) {
    const int me = g_starting;
    for (;;) {
        while (g_blk.next < g_blk.nt) {
            const int i = g_blk.next++;
            const int t = g_blk.reverse ? g_blk.nt - 1 - i : i;
            g_blk.th[t].fiber = me;
            g_blk.th[t].state = T_RUN;
            set_coords(t);
            g_blk.fn(g_blk.arg);
            g_blk.th[t].state = T_DONE;
            g_blk.done++;
        }
        g_idle[g_nidle++] = me;
        swapcontext(&g_fibers[me].ctx, &g_sched);
    }
}

static int fiber_get(void) {
    if (g_nidle > 0) return g_idle[--g_nidle];
    if (!g_fibers) {
        g_fibers = (emu_fiber *)calloc(MAX_THREADS + 1, sizeof *g_fibers);
        g_idle = (int *)calloc(MAX_THREADS + 1, sizeof *g_idle);
        if (!g_fibers || !g_idle) emu_fatal("out of memory for fibers");
    }
    if (g_nfibers > MAX_THREADS) emu_fatal("more fibers than threads in a block");
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    emu_fiber *f = &g_fibers[g_nfibers];
    f->map = (char *)mmap(NULL, FIBER_STACK + page, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (f->map == MAP_FAILED) emu_fatal("mmap of a fiber stack: %s", strerror(errno));
    if (mprotect(f->map, page, PROT_NONE)) emu_fatal("mprotect: %s", strerror(errno));
    if (getcontext(&f->ctx)) emu_fatal("getcontext: %s", strerror(errno));
    f->ctx.uc_stack.ss_sp = f->map + page;
    f->ctx.uc_stack.ss_size = FIBER_STACK;
    f->ctx.uc_link = &g_sched;
    makecontext(&f->ctx, fiber_main, 0);
    return g_nfibers++;
}

static void run_fiber(int f) {
    g_starting = f;
    if (swapcontext(&g_sched, &g_fibers[f].ctx)) emu_fatal("swapcontext: %s", strerror(errno));
}

/* The running thread waits (state T_BLOCK or T_WARP) until released. */
static void suspend(int state) {
    emu_thread *t = &g_blk.th[g_blk.cur];
    t->state = state;
    swapcontext(&g_fibers[t->fiber].ctx, &g_sched);
}

static void where(char *buf, size_t len, int t) {
    const unsigned int u = (unsigned int)t;
    snprintf(buf, len, "%s, block (%u,%u,%u), thread (%u,%u,%u) (warp %d lane %d)", g_blk.name,
             blockIdx.x, blockIdx.y, blockIdx.z, u % blockDim.x, u / blockDim.x % blockDim.y,
             u / (blockDim.x * blockDim.y), t / 32, t % 32);
}

void dv_emu_syncthreads(void) {
    if (!g_in_kernel) emu_fatal("__syncthreads outside a kernel");
    suspend(T_BLOCK);
}

void dv_emu_warp_op(int op, unsigned int mask, const void *in, void *out, size_t bytes, int b,
                    int width) {
    if (!g_in_kernel) emu_fatal("warp operation outside a kernel");
    emu_thread *t = &g_blk.th[g_blk.cur];
    char at[160];
    if (!(mask >> (g_blk.cur % 32) & 1u)) {
        where(at, sizeof at, g_blk.cur);
        emu_fatal("%s: a warp operation's mask 0x%08x leaves out the calling lane", at, mask);
    }
    if (width < 1 || width > 32 || (width & (width - 1))) {
        where(at, sizeof at, g_blk.cur);
        emu_fatal("%s: shuffle width %d is not a power of 2 up to 32", at, width);
    }
    t->op = op;
    t->mask = mask;
    t->b = b;
    t->width = width;
    t->bytes = bytes;
    if (bytes) memcpy(t->in, in, bytes);
    t->out = out;
    suspend(T_WARP);
}

/* The source lane of a shuffle, as PTX shfl.sync defines it (a lane
 * outside the segment reads its own value). */
static int shfl_src(int op, int lane, int b, int width) {
    const int segmask = 32 - width;
    const int clamp = op == DV_EMU_SHFL_UP ? 0 : 31;
    const int min_lane = lane & segmask;
    const int max_lane = min_lane | (clamp & ~segmask);
    int j;
    b &= 31;
    switch (op) {
    case DV_EMU_SHFL_UP:
        j = lane - b;
        return j >= max_lane ? j : lane;
    case DV_EMU_SHFL_DOWN:
        j = lane + b;
        break;
    case DV_EMU_SHFL_XOR:
        j = lane ^ b;
        break;
    default:
        j = min_lane | (b & ~segmask);
        break;
    }
    return j <= max_lane ? j : lane;
}

/* Releases warp w's operations whose every lane has arrived; how many
 * threads it released. */
static int release_warp(int w, int *released, int nrel) {
    const int base = w * 32;
    const int lanes = g_blk.nt - base < 32 ? g_blk.nt - base : 32;
    char at[160];
    for (int l = 0; l < lanes; l++) {
        emu_thread *t = &g_blk.th[base + l];
        if (t->state != T_WARP) continue;
        const unsigned int m = t->mask;
        int ready = 1;
        for (int j = 0; j < 32; j++) {
            if (!(m >> j & 1u)) continue;
            if (j >= lanes) {
                where(at, sizeof at, base + l);
                emu_fatal("%s: warp operation mask 0x%08x names lane %d, past the block's "
                          "last thread",
                          at, m, j);
            }
            const emu_thread *o = &g_blk.th[base + j];
            if (o->state == T_DONE) {
                where(at, sizeof at, base + l);
                emu_fatal("%s: warp operation mask 0x%08x names lane %d, which has exited", at, m,
                          j);
            }
            if (o->state != T_WARP) {
                ready = 0;
                continue;
            }
            if (o->mask != m || o->op != t->op || o->bytes != t->bytes) {
                where(at, sizeof at, base + l);
                emu_fatal("%s: lanes %d and %d meet at different warp operations (op %d/%d, "
                          "mask 0x%08x/0x%08x)",
                          at, l, j, t->op, o->op, m, o->mask);
            }
        }
        if (!ready) continue;
        /* everyone is here: compute every lane's result, then release */
        unsigned int ballot = 0;
        for (int j = 0; j < 32; j++)
            if (m >> j & 1u) {
                int pred;
                memcpy(&pred, g_blk.th[base + j].in, sizeof pred);
                if (pred) ballot |= 1u << j;
            }
        for (int j = 0; j < 32; j++) {
            if (!(m >> j & 1u)) continue;
            emu_thread *o = &g_blk.th[base + j];
            int r;
            switch (o->op) {
            case DV_EMU_SYNCWARP:
                break;
            case DV_EMU_VOTE_ALL:
                r = ballot == m;
                memcpy(o->out, &r, sizeof r);
                break;
            case DV_EMU_VOTE_ANY:
                r = ballot != 0;
                memcpy(o->out, &r, sizeof r);
                break;
            case DV_EMU_VOTE_BALLOT:
                memcpy(o->out, &ballot, sizeof ballot);
                break;
            default: {
                const int src = shfl_src(o->op, j, o->b, o->width);
                if (!(m >> src & 1u)) {
                    where(at, sizeof at, base + j);
                    emu_fatal("%s: shuffle reads lane %d, outside its mask 0x%08x", at, src, m);
                }
                memcpy(o->out, g_blk.th[base + src].in, o->bytes);
                break;
            }
            }
            o->state = T_RUN;
            released[nrel++] = base + j;
        }
    }
    return nrel;
}

static void deadlock(void) {
    char at[160];
    int nblock = 0, nwarp = 0;
    for (int t = 0; t < g_blk.nt; t++) {
        nblock += g_blk.th[t].state == T_BLOCK;
        nwarp += g_blk.th[t].state == T_WARP;
    }
    for (int t = 0; t < g_blk.nt; t++)
        if (g_blk.th[t].state == T_WARP) {
            where(at, sizeof at, t);
            emu_fatal("%s: deadlock: waits at a warp operation (mask 0x%08x) that not every "
                      "lane reaches; %d threads wait at __syncthreads, %d at warp operations, "
                      "%d exited",
                      at, g_blk.th[t].mask, nblock, nwarp, g_blk.done);
        }
    emu_fatal("%s: deadlock with %d threads at __syncthreads", g_blk.name, nblock);
}

static void run_block(void) {
    static int released[MAX_THREADS];
    g_blk.next = 0;
    g_blk.done = 0;
    char *sh_lo = __start_dv_emu_shared, *sh_hi = __stop_dv_emu_shared;
    if (sh_lo && sh_hi > sh_lo) memset(sh_lo, 0xff, (size_t)(sh_hi - sh_lo));
    for (int t = 0; t < g_blk.nt; t++)
        g_blk.th[t].state = T_UNSTARTED;
    for (;;) {
        /* run every thread until it finishes or waits */
        while (g_blk.next < g_blk.nt)
            run_fiber(fiber_get());
        if (g_blk.done == g_blk.nt) return;
        /* everyone left waits: release what can go on */
        int n = 0;
        for (int w = 0; w * 32 < g_blk.nt; w++)
            n = release_warp(w, released, n);
        if (n == 0) {
            int waiting = 0;
            for (int t = 0; t < g_blk.nt; t++)
                waiting += g_blk.th[t].state == T_BLOCK;
            if (waiting + g_blk.done == g_blk.nt) {
                if (g_blk.done) {
                    char at[160];
                    int t = 0;
                    while (g_blk.th[t].state != T_DONE)
                        t++;
                    where(at, sizeof at, t);
                    emu_fatal("%s has returned while %d threads of its block wait at "
                              "__syncthreads",
                              at, waiting);
                }
                for (int t = 0; t < g_blk.nt; t++) {
                    g_blk.th[t].state = T_RUN;
                    released[n++] = t;
                }
            }
        }
        if (n == 0) deadlock();
        for (int i = 0; i < n; i++) {
            const int t = released[i];
            set_coords(t);
            g_starting = g_blk.th[t].fiber;
            swapcontext(&g_sched, &g_fibers[g_blk.th[t].fiber].ctx);
        }
    }
}

void dv_emu_launch(const dv_emu_launch_cfg *c, const char *name, void (*fn)(void *), void *arg) {
    const dim3 g = c->grid, b = c->block;
    const unsigned long long nt = (unsigned long long)b.x * b.y * b.z;
    if (g.x < 1 || g.y < 1 || g.z < 1 || g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535 ||
        b.x < 1 || b.y < 1 || b.z < 1 || b.x > 1024 || b.y > 1024 || b.z > 64 || nt > 1024 ||
        c->shmem > 48 * 1024) {
        emu_error(cudaErrorInvalidConfiguration,
                  "%s<<<(%u,%u,%u), (%u,%u,%u), %zu>>>: invalid launch configuration", name, g.x,
                  g.y, g.z, b.x, b.y, b.z, c->shmem);
        return;
    }
    if (stream_begin(c->stream, name) != cudaSuccess) return;
    pthread_mutex_lock(&g_lock);
    if (g_in_kernel) emu_fatal("%s launched from inside the kernel %s", name, g_blk.name);
    g_in_kernel = 1;
    device_access(1);
    g_blk.fn = fn;
    g_blk.arg = arg;
    g_blk.name = name;
    g_blk.nt = (int)nt;
    g_blk.reverse = env_int("DIVE_EMU_REVERSE", 0) != 0;
    gridDim = g;
    blockDim = b;
    const unsigned long long nblocks = (unsigned long long)g.x * g.y * g.z;
    for (unsigned long long i = 0; i < nblocks; i++) {
        const unsigned long long k = g_blk.reverse ? nblocks - 1 - i : i;
        blockIdx.x = (unsigned int)(k % g.x);
        blockIdx.y = (unsigned int)(k / g.x % g.y);
        blockIdx.z = (unsigned int)(k / ((unsigned long long)g.x * g.y));
        run_block();
    }
    device_access(-1);
    g_in_kernel = 0;
    pthread_mutex_unlock(&g_lock);
}

/* ---- cuBLAS ----------------------------------------------------------- */

#define BLAS_MAGIC 0x424c4153u

struct cublasContext {
    unsigned int magic;
    cudaStream_t stream;
    cublasMath_t mode;
};

cublasStatus_t cublasCreate(cublasHandle_t *h) {
    if (!h) return CUBLAS_STATUS_INVALID_VALUE;
    int n = device_count();
    if (n == 0) return CUBLAS_STATUS_NOT_INITIALIZED;
    *h = (cublasHandle_t)calloc(1, sizeof **h);
    if (!*h) return CUBLAS_STATUS_ALLOC_FAILED;
    (*h)->magic = BLAS_MAGIC;
    (*h)->mode = CUBLAS_DEFAULT_MATH;
    return CUBLAS_STATUS_SUCCESS;
}

static int blas_ok(cublasHandle_t h) {
    return h && h->magic == BLAS_MAGIC;
}

cublasStatus_t cublasDestroy(cublasHandle_t h) {
    if (!blas_ok(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->magic = DEAD_MAGIC;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
    if (!blas_ok(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!stream_ok(s)) return CUBLAS_STATUS_INVALID_VALUE;
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t mode) {
    if (!blas_ok(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if ((int)mode < 0 || (int)mode > CUBLAS_TF32_TENSOR_OP_MATH) return CUBLAS_STATUS_INVALID_VALUE;
    h->mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusName(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS:
        return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
        return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
        return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
        return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
        return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
        return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
        return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
        return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
        return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

const char *cublasGetStatusString(cublasStatus_t s) {
    return cublasGetStatusName(s);
}

enum { ROUND_NONE, ROUND_TF32, ROUND_BF16 };

/* x rounded to `keep` mantissa bits, to nearest, ties to even; NaN and
 * infinity stay, and a carry out of the mantissa rounds up the exponent
 * (to infinity past the largest finite value) as the hardware's rounding
 * does. */
static float round_mantissa(float x, int keep) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7f800000u) == 0x7f800000u) return x;
    const int drop = 23 - keep;
    const uint32_t half = (1u << (drop - 1)) - 1u + ((u >> drop) & 1u);
    u = (u + half) & ~((1u << drop) - 1u);
    memcpy(&x, &u, sizeof x);
    return x;
}

/* The floats of a column-major (rows, cols) operand with leading
 * dimension ld: (cols - 1) * ld + rows. */
static size_t span(int rows, int cols, int ld) {
    if (rows <= 0 || cols <= 0) return 0;
    return (size_t)(cols - 1) * (size_t)ld + (size_t)rows;
}

static int operand_ok(const char *call, const char *name, const void *p, size_t n) {
    if (n == 0) return 1;
    if (find_alloc(p, n * sizeof(float), MEM_DEVICE) >= 0) return 1;
    fprintf(stderr, "cuda_emu: %s: %s [%p, +%zu floats) is not inside one device allocation\n",
            call, name, p, n);
    return 0;
}

static int overlap(const void *a, size_t na, const void *b, size_t nb) {
    const float *x = (const float *)a, *y = (const float *)b;
    return na && nb && x < y + nb && y < x + na;
}

/* A copy of an operand rounded to the compute type, or NULL when out of
 * memory. */
static float *rounded_copy(const float *p, size_t n, int rounding) {
    float *r = (float *)malloc(n ? n * sizeof *r : sizeof *r);
    if (!r) return NULL;
    const int keep = rounding == ROUND_TF32 ? 10 : 7;
    for (size_t i = 0; i < n; i++)
        r[i] = round_mantissa(p[i], keep);
    return r;
}

/* The arithmetic of a checked GEMM; device memory is open. */
static cublasStatus_t gemm_run(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                               float a, const float *A, int lda, size_t na, const float *B, int ldb,
                               size_t nb, float bt, float *C, int ldc, int rounding) {
    if (k == 0 || a == 0.0f) { /* C = beta * C; C is not read when beta is 0 */
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                float *c = C + (size_t)j * ldc + i;
                *c = bt == 0.0f ? 0.0f : bt * *c;
            }
        return CUBLAS_STATUS_SUCCESS;
    }
    float *ra = NULL, *rb = NULL;
    if (rounding != ROUND_NONE) {
        ra = rounded_copy(A, na, rounding);
        rb = rounded_copy(B, nb, rounding);
        if (!ra || !rb) {
            free(ra);
            free(rb);
            return CUBLAS_STATUS_ALLOC_FAILED;
        }
        A = ra;
        B = rb;
    }
    cblas_sgemm(CblasColMajor, ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, m, n, k, a, A, lda, B, ldb, bt, C,
                ldc);
    free(ra);
    free(rb);
    return CUBLAS_STATUS_SUCCESS;
}

static cublasStatus_t gemm(const char *call, cublasHandle_t h, cublasOperation_t ta,
                           cublasOperation_t tb, int m, int n, int k, const float *alpha,
                           const float *A, int lda, const float *B, int ldb, const float *beta,
                           float *C, int ldc, int rounding) {
    if (!blas_ok(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if ((unsigned)ta > CUBLAS_OP_C || (unsigned)tb > CUBLAS_OP_C || m < 0 || n < 0 || k < 0)
        return CUBLAS_STATUS_INVALID_VALUE;
    const int ar = ta == CUBLAS_OP_N ? m : k, ac = ta == CUBLAS_OP_N ? k : m;
    const int br = tb == CUBLAS_OP_N ? k : n, bc = tb == CUBLAS_OP_N ? n : k;
    if (lda < (ar > 1 ? ar : 1) || ldb < (br > 1 ? br : 1) || ldc < (m > 1 ? m : 1)) {
        fprintf(stderr,
                "cuda_emu: %s: m=%d n=%d k=%d lda=%d ldb=%d ldc=%d: a leading "
                "dimension is too small\n",
                call, m, n, k, lda, ldb, ldc);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    const size_t na = k ? span(ar, ac, lda) : 0, nb = k ? span(br, bc, ldb) : 0;
    const size_t nc = span(m, n, ldc);
    pthread_mutex_lock(&g_lock);
    int ok = operand_ok(call, "A", A, na) && operand_ok(call, "B", B, nb) &&
             operand_ok(call, "C", C, nc);
    int host_scalars =
        !touches(alpha, sizeof *alpha, MEM_DEVICE) && !touches(beta, sizeof *beta, MEM_DEVICE);
    pthread_mutex_unlock(&g_lock);
    if (!ok) return CUBLAS_STATUS_INVALID_VALUE;
    if (!host_scalars) {
        fprintf(stderr, "cuda_emu: %s: alpha and beta must be host pointers\n", call);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (overlap(C, nc, A, na) || overlap(C, nc, B, nb)) {
        fprintf(stderr, "cuda_emu: %s: C overlaps A or B\n", call);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    stream_drain(h->stream);
    pthread_mutex_lock(&g_lock);
    device_access(1);
    cublasStatus_t st =
        gemm_run(ta, tb, m, n, k, *alpha, A, lda, na, B, ldb, nb, *beta, C, ldc, rounding);
    device_access(-1);
    pthread_mutex_unlock(&g_lock);
    return st;
}

cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                           int n, int k, const float *alpha, const float *A, int lda,
                           const float *B, int ldb, const float *beta, float *C, int ldc) {
    /* CUBLAS_TF32_TENSOR_OP_MATH lets cublasSgemm use TF32 */
    const int r = blas_ok(h) && h->mode == CUBLAS_TF32_TENSOR_OP_MATH ? ROUND_TF32 : ROUND_NONE;
    return gemm("cublasSgemm", h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, r);
}

/* The rounding a GemmEx-style call asks for (types and compute type), or
 * -1 with a line on stderr where the emulation does not have it. */
static int ex_rounding(const char *call, cublasHandle_t h, cudaDataType at, cudaDataType bt,
                       cudaDataType ct, cublasComputeType_t compute) {
    if (at != CUDA_R_32F || bt != CUDA_R_32F || ct != CUDA_R_32F) {
        fprintf(stderr, "cuda_emu: %s: only fp32 operands are emulated\n", call);
        return -1;
    }
    switch (compute) {
    case CUBLAS_COMPUTE_32F:
        return h->mode == CUBLAS_TF32_TENSOR_OP_MATH ? ROUND_TF32 : ROUND_NONE;
    case CUBLAS_COMPUTE_32F_PEDANTIC:
        return ROUND_NONE;
    case CUBLAS_COMPUTE_32F_FAST_TF32:
        return ROUND_TF32;
    case CUBLAS_COMPUTE_32F_FAST_16BF:
        return ROUND_BF16;
    default:
        fprintf(stderr, "cuda_emu: %s: compute type %d is not emulated\n", call, (int)compute);
        return -1;
    }
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType at,
                            int lda, const void *B, cudaDataType bt, int ldb, const void *beta,
                            void *C, cudaDataType ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t algo) {
    (void)algo;
    if (!blas_ok(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    const int r = ex_rounding("cublasGemmEx", h, at, bt, ct, compute);
    if (r < 0) return CUBLAS_STATUS_NOT_SUPPORTED;
    return gemm("cublasGemmEx", h, ta, tb, m, n, k, (const float *)alpha, (const float *)A, lda,
                (const float *)B, ldb, (const float *)beta, (float *)C, ldc, r);
}

/* Strided batches: one checked GEMM a matrix, in order. The C matrices
 * must not overlap one another (cuBLAS computes them concurrently). */
static cublasStatus_t gemm_strided(const char *call, cublasHandle_t h, cublasOperation_t ta,
                                   cublasOperation_t tb, int m, int n, int k, const float *alpha,
                                   const float *A, int lda, long long sa, const float *B, int ldb,
                                   long long sb, const float *beta, float *C, int ldc, long long sc,
                                   int batch, int rounding) {
    if (batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
    if (batch > 1 && m > 0 && n > 0 && (size_t)(sc < 0 ? -sc : sc) < span(m, n, ldc)) {
        fprintf(stderr, "cuda_emu: %s: strideC %lld makes the C matrices overlap\n", call, sc);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    for (int b = 0; b < batch; b++) {
        cublasStatus_t st = gemm(call, h, ta, tb, m, n, k, alpha, A + b * sa, lda, B + b * sb, ldb,
                                 beta, C + b * sc, ldc, rounding);
        if (st != CUBLAS_STATUS_SUCCESS) return st;
    }
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta,
                                         cublasOperation_t tb, int m, int n, int k,
                                         const float *alpha, const float *A, int lda, long long sa,
                                         const float *B, int ldb, long long sb, const float *beta,
                                         float *C, int ldc, long long sc, int batch) {
    const int r = blas_ok(h) && h->mode == CUBLAS_TF32_TENSOR_OP_MATH ? ROUND_TF32 : ROUND_NONE;
    return gemm_strided("cublasSgemmStridedBatched", h, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb,
                        sb, beta, C, ldc, sc, batch, r);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta,
                                          cublasOperation_t tb, int m, int n, int k,
                                          const void *alpha, const void *A, cudaDataType at,
                                          int lda, long long sa, const void *B, cudaDataType bt,
                                          int ldb, long long sb, const void *beta, void *C,
                                          cudaDataType ct, int ldc, long long sc, int batch,
                                          cublasComputeType_t compute, cublasGemmAlgo_t algo) {
    (void)algo;
    const char *call = "cublasGemmStridedBatchedEx";
    if (!blas_ok(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    const int r = ex_rounding(call, h, at, bt, ct, compute);
    if (r < 0) return CUBLAS_STATUS_NOT_SUPPORTED;
    return gemm_strided(call, h, ta, tb, m, n, k, (const float *)alpha, (const float *)A, lda, sa,
                        (const float *)B, ldb, sb, (const float *)beta, (float *)C, ldc, sc, batch,
                        r);
}
