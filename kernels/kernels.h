/* kernels.h — the math of Dive: the tensor type, the enums and parameter
 * structs the ops take, and the backend interface. The ops themselves, with
 * their contracts, are listed once in ops.def, which this header expands
 * into the slots of struct dv_backend.
 *
 * A backend is a table of function pointers with a context pointer
 * (dv_backend). The CPU backend (kernels/cpu/) fills it with OpenBLAS GEMM and
 * plain C loops; the CUDA backend (kernels/cuda/) fills the same table with
 * cuBLAS and its own kernels. Every pointer an op receives is a *device*
 * pointer of that backend (host memory for the CPU backend), laid out in C
 * order with the shape written next to it. Ops never allocate: callers pass
 * workspaces sized by the matching *_workspace op.
 *
 * Conventions:
 *  - activations are NCHW: (B, C, H, W); dense inputs are (B, K).
 *  - backward ops ACCUMULATE into parameter gradients (dw += ...), so a
 *    trainer zeroes the flat gradient buffer once per step; input gradients
 *    (dx) are OVERWRITTEN. A NULL dx means "not needed" (first layer).
 *  - every enum ends with a DV_<ENUM>_COUNT member, so name tables can be
 *    tied to it; an op given a value outside [0, COUNT) computes nothing
 *    and its backend's `check` reports the op and the value
 *    (dv_backend_cuda_create refuses such a precision).
 *  - nothing here includes another Dive module.
 */
#ifndef DV_KERNELS_H
#define DV_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- tensors ---------------------------------------------------------- */

#define DV_TENSOR_MAX_DIMS 4

/* A float32 tensor of up to 4 dims. `data` is borrowed (a view into a flat
 * buffer) unless the function that returned it says otherwise. */
typedef struct dv_tensor {
    float *data;
    int ndim;
    int shape[DV_TENSOR_MAX_DIMS];
} dv_tensor;

/* Number of elements: the product of shape[0..ndim). */
size_t dv_tensor_numel(const dv_tensor *t);
/* A view of `data` with the given shape (ndim 1..4). */
dv_tensor dv_tensor_view(float *data, int ndim, const int *shape);

/* ---- enums ------------------------------------------------------------ */

typedef enum dv_act {
    DV_ACT_LINEAR = 0,
    DV_ACT_RELU,
    DV_ACT_LEAKY_RELU, /* slope given by `alpha` */
    DV_ACT_SIGMOID,
    DV_ACT_TANH,
    DV_ACT_SOFTMAX, /* over the last dim of (rows, cols) */
    DV_ACT_COUNT
} dv_act;

typedef enum dv_pool { DV_POOL_MAX = 0, DV_POOL_MIN, DV_POOL_AVG, DV_POOL_COUNT } dv_pool;

/* What the GEMMs compute in (CUDA; the CPU backend always uses fp32).
 * Inputs, outputs and the master weights stay fp32 either way: TF32 and
 * BF16 round the GEMM inputs inside cuBLAS and accumulate in fp32. */
typedef enum dv_precision {
    DV_PRECISION_FP32 = 0,
    DV_PRECISION_TF32,
    DV_PRECISION_BF16,
    DV_PRECISION_COUNT
} dv_precision;

typedef enum dv_opt {
    DV_OPT_SGD = 0,
    DV_OPT_MOMENTUM,
    DV_OPT_NESTEROV,
    DV_OPT_ADAM,
    DV_OPT_ADAMW,
    DV_OPT_COUNT
} dv_opt;

/* Geometry of a 2-D convolution or pooling window. */
typedef struct dv_conv2d_geom {
    int B, C, H, W; /* input (B, C, H, W) */
    int F;          /* output channels (conv only; pooling keeps C) */
    int KH, KW;     /* window */
    int stride, pad;
    int OH, OW; /* output spatial size, from dv_conv2d_geom_init */
} dv_conv2d_geom;

/* Fills OH/OW: (H + 2*pad - KH) / stride + 1. Returns 0, or -1 when the
 * window does not fit (OH or OW < 1). */
int dv_conv2d_geom_init(dv_conv2d_geom *g);

/* Optimizer hyper-parameters for one step over a flat buffer. */
typedef struct dv_opt_params {
    dv_opt kind;
    float lr;
    float momentum;     /* momentum / nesterov */
    float beta1, beta2; /* adam / adamw */
    float eps;
    float weight_decay; /* L2 added to the gradient for sgd/momentum/nesterov/adam,
                           decoupled (p -= lr*wd*p) for adamw */
    long step;          /* 1-based step count, for Adam's bias correction */
} dv_opt_params;

/* Counter-based random numbers: the same (seed, counter) gives the same
 * value on every backend, every rank and every thread count. */
uint64_t dv_rand_hash(uint64_t seed, uint64_t counter);
/* Uniform in [0, 1) from the hash. */
float dv_rand_uniform(uint64_t seed, uint64_t counter);

/* ---- the backend table ------------------------------------------------ */

typedef struct dv_backend dv_backend;

/* The slots after name, ctx and stream are the ops of ops.def, in its
 * order, each `ret (*name)(params)`: be->gemm(be->ctx, ...). */
struct dv_backend {
    const char *name; /* "cpu" or "cuda" */
    void *ctx;        /* backend's own state, passed first to every op */
    /* The stream every op is queued on, as an opaque handle (a cudaStream_t
     * for CUDA, NULL for the CPU, whose ops finish before they return). */
    void *stream;
#define DV_OP(ret, name, params) ret(*name) params;
#include "ops.def"
};

/* The CPU backend. `threads` sets OpenBLAS's thread count and the loops'
 * (0 keeps OpenBLAS's default). Owned by the caller: free with
 * dv_backend_free. */
dv_backend *dv_backend_cpu_create(int threads);

/* The CUDA backend on `device` (cudaSetDevice is its first CUDA call), with
 * GEMMs in `precision`; NULL when Dive was built without CUDA or the device
 * cannot be used (the reason is written to err, DV_ERR_LEN, if not NULL). */
dv_backend *dv_backend_cuda_create(int device, dv_precision precision, char *err);

/* Number of CUDA devices visible (0 without CUDA). */
int dv_backend_cuda_device_count(void);

void dv_backend_free(dv_backend *be);

/* Global-norm clipping: if ||g|| > max_norm, g *= max_norm / ||g||.
 * Returns the norm before clipping. */
double dv_clip_grad_norm(const dv_backend *be, float *grads, size_t n, double max_norm);

#ifdef __cplusplus
}
#endif
#endif
