/* kernels.h — the math of Dive: the tensor type, the backend interface and
 * every op, forward and backward.
 *
 * A backend is a table of function pointers with a context pointer
 * (dv_backend). The CPU backend (kernels/cpu/) fills it with OpenBLAS GEMM and
 * plain C loops; the CUDA backend (kernels/cuda/) fills the same table with
 * cuBLAS and its own kernels. Every pointer an op receives is a *device*
 * pointer of that backend (host memory for the CPU backend), laid out in C
 * order with the shape written next to it. Ops never allocate: callers pass
 * workspaces sized by the matching *_workspace helper.
 *
 * Conventions:
 *  - activations are NCHW: (B, C, H, W); dense inputs are (B, K).
 *  - backward ops ACCUMULATE into parameter gradients (dw += ...), so a
 *    trainer zeroes the flat gradient buffer once per step; input gradients
 *    (dx) are OVERWRITTEN. A NULL dx means "not needed" (first layer).
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

struct dv_backend {
    const char *name; /* "cpu" or "cuda" */
    void *ctx;        /* backend's own state, passed first to every op */
    /* The stream every op is queued on, as an opaque handle (a cudaStream_t
     * for CUDA, NULL for the CPU, whose ops finish before they return). */
    void *stream;

    /* memory (device pointers for that backend; host memory for cpu) */
    void *(*alloc)(void *ctx, size_t bytes); /* zeroed; NULL on failure */
    void (*free)(void *ctx, void *p);        /* accepts NULL */
    void (*to_device)(void *ctx, void *dst, const void *src, size_t bytes);
    void (*to_host)(void *ctx, void *dst, const void *src, size_t bytes);
    void (*copy)(void *ctx, void *dst, const void *src, size_t bytes); /* device→device */
    void (*fill)(void *ctx, float *x, float value, size_t n);
    void (*sync)(void *ctx); /* wait for all queued work */
    /* Host memory that uploads read without an extra copy (page-locked for
     * CUDA, plain aligned memory for the CPU). */
    void *(*host_alloc)(void *ctx, size_t bytes); /* NULL on failure */
    void (*host_free)(void *ctx, void *p);        /* accepts NULL */
    /* Copies n host buffers src[i] (bytes[i] each) to device dst[i] for the
     * work queued after this call. CUDA: the copy runs on its own stream,
     * overlapping compute queued before; returns once src may be reused. */
    void (*upload)(void *ctx, int n, void *const *dst, const void *const *src, const size_t *bytes);
    /* DV_OK, or DV_ERR with the first error an op met since the backend
     * was created (a failed launch, a cuBLAS status, an unknown enum value)
     * in err (DV_ERR_LEN). Ops return void, so callers ask here at their
     * sync points. */
    dv_status (*check)(void *ctx, char *err);

    /* C (M, N) = alpha * op(A) * op(B) + beta * C, row-major.
     * op(A) is (M, K): A is (M, K), or (K, M) when trans_a.
     * op(B) is (K, N): B is (K, N), or (N, K) when trans_b. */
    void (*gemm)(void *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha,
                 const float *A, const float *B, float beta, float *C);

    /* y (B, C, S) += bias (C) broadcast over B and S (S = 1 for dense). */
    void (*bias_forward)(void *ctx, float *y, const float *bias, int B, int C, int S);
    /* dbias (C) += sum over B and S of dy (B, C, S). */
    void (*bias_backward)(void *ctx, const float *dy, float *dbias, int B, int C, int S);

    /* y = act(x), n elements; softmax over rows of (n / cols, cols).
     * In place (y == x) is allowed. */
    void (*act_forward)(void *ctx, dv_act act, float alpha, const float *x, float *y, size_t n,
                        int cols);
    /* dx = dy * act'(.), computed from the forward's output y (every act's
     * derivative is a function of y). dx == dy is allowed. */
    void (*act_backward)(void *ctx, dv_act act, float alpha, const float *y, const float *dy,
                         float *dx, size_t n, int cols);

    /* Convolution, weights w (F, C, KH, KW), bias b (F) or NULL,
     * x (B, C, H, W) -> y (B, F, OH, OW). `work` holds
     * conv2d_workspace(g) floats. */
    size_t (*conv2d_workspace)(void *ctx, const dv_conv2d_geom *g);
    void (*conv2d_forward)(void *ctx, const dv_conv2d_geom *g, const float *x, const float *w,
                           const float *b, float *y, float *work);
    /* dw (F, C, KH, KW) += , db (F) += (if not NULL), dx overwritten (if not NULL). */
    void (*conv2d_backward)(void *ctx, const dv_conv2d_geom *g, const float *x, const float *w,
                            const float *dy, float *dx, float *dw, float *db, float *work);

    /* Pooling x (B, C, H, W) -> y (B, C, OH, OW). Max/min record the
     * flat input offset of the winner in `arg` (B*C*OH*OW ints): the offset
     * into the whole x, ((b*C + c)*H + ih)*W + iw; padding never wins, ties
     * go to the first element in row-major window order, and a window of
     * padding only gives y = 0, arg = -1. Avg ignores `arg` (may be NULL)
     * and divides by the full window (padding counts as 0). */
    void (*pool2d_forward)(void *ctx, dv_pool mode, const dv_conv2d_geom *g, const float *x,
                           float *y, int32_t *arg);
    /* dx (B, C, H, W) overwritten. */
    void (*pool2d_backward)(void *ctx, dv_pool mode, const dv_conv2d_geom *g, const float *dy,
                            float *dx, const int32_t *arg);
    /* Nearest-neighbour upsampling of n planes (H, W) by an integer factor
     * s: y (n, H*s, W*s)[i][j] = x (n, H, W)[i/s][j/s]. */
    void (*upsample_forward)(void *ctx, int n, int H, int W, int s, const float *x, float *y);
    /* dx (n, H, W) overwritten: each element the sum of the s*s gradients
     * of the outputs it fed, added in row-major order. */
    void (*upsample_backward)(void *ctx, int n, int H, int W, int s, const float *dy, float *dx);

    /* Inverted dropout over x (rows, cols): element (i, j) is dropped when
     * dv_rand_uniform(seed, (uint64_t)row_id[i] * cols + j) < rate, else
     * kept as x / (1 - rate). `mask` (rows*cols floats) receives 0 or
     * 1/(1-rate). row_id (rows, host or device per backend: a DEVICE
     * pointer) gives a global id per row so N ranks and 1 rank draw the
     * same masks; the trainer folds layer and step into `seed`. A NULL
     * row_id means row i has id i. */
    void (*dropout_forward)(void *ctx, float rate, uint64_t seed, const int64_t *row_id, int rows,
                            int cols, const float *x, float *y, float *mask);
    void (*dropout_backward)(void *ctx, const float *mask, const float *dy, float *dx, size_t n);

    /* Batch norm over x (B, C, S): per channel statistics over B and S.
     * Training: uses batch stats, saves mean/invstd (C each), updates
     * running stats with `momentum` (running = (1-m)*running + m*batch,
     * unbiased variance). Eval: uses running stats. */
    void (*batchnorm_forward)(void *ctx, int training, int B, int C, int S, float eps,
                              float momentum, const float *x, const float *gamma, const float *beta,
                              float *running_mean, float *running_var, float *save_mean,
                              float *save_invstd, float *y);
    /* Training-mode backward: dgamma, dbeta (C) +=, dx overwritten. */
    void (*batchnorm_backward)(void *ctx, int B, int C, int S, const float *x, const float *gamma,
                               const float *save_mean, const float *save_invstd, const float *dy,
                               float *dx, float *dgamma, float *dbeta);

    /* Losses over a batch of B rows. Each writes the gradient of
     * (sum of per-sample losses) * grad_scale into dpred (B, K) and ADDS
     * into stats (device, 2 floats): stats[0] += sum of per-sample losses,
     * stats[1] += number of correct predictions (argmax for xent;
     * per-element threshold 0.5 of sigmoid for bce counted per row when all
     * K agree; for mse the argmax of pred vs argmax of target when K > 1,
     * |pred - target| < 0.5 when K == 1). */
    /* Softmax cross-entropy, fused and stable: logits (B, K), labels (B).
     * A label outside [0, K) marks an ignored row: no loss, zero gradient,
     * never correct. */
    void (*xent_loss)(void *ctx, const float *logits, const int32_t *labels, int B, int K,
                      float grad_scale, float *dlogits, float *stats);
    /* BCE with logits: logits (B, K), targets (B, K) in [0, 1]; the
     * per-sample loss is the mean over the K outputs (as for mse). */
    void (*bce_loss)(void *ctx, const float *logits, const float *targets, int B, int K,
                     float grad_scale, float *dlogits, float *stats);
    /* Mean squared error, per sample = sum_k (pred - target)^2 / K. */
    void (*mse_loss)(void *ctx, const float *pred, const float *targets, int B, int K,
                     float grad_scale, float *dpred, float *stats);
    /* The perceptron rule as a loss: scores (B, K). K == 1: predicted
     * class is score > 0, target in {0,1}; d = (pred - target). K > 1:
     * on a mistake d[pred] = +1 and d[true] = -1. Zero gradient on
     * correct samples; stats[0] += mistakes. labels (B) as class ids
     * (K > 1) or 0/1 (K == 1). */
    void (*perceptron_loss)(void *ctx, const float *scores, const int32_t *labels, int B, int K,
                            float grad_scale, float *dscores, float *stats);

    /* One optimizer step over a flat buffer of n parameters. state1 is
     * momentum / Adam's m, state2 is Adam's v (NULL where unused). */
    void (*opt_step)(void *ctx, const dv_opt_params *p, float *params, const float *grads,
                     float *state1, float *state2, size_t n);

    /* ---- sequence models ------------------------------------------------
     * Shapes: N rows of a flattened (B, T) batch; ids are int32 device
     * pointers. */

    /* C[b] (M, N) = alpha * op(A[b]) op(B[b]) + beta * C[b] for b < batch,
     * each matrix `stride_*` floats after the one before; row-major, op()
     * as for gemm. */
    void (*gemm_batched)(void *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha,
                         const float *A, long long stride_a, const float *B, long long stride_b,
                         float beta, float *C, long long stride_c, int batch);
    /* The same with leading dimensions (row strides, in floats) of the
     * stored A, B and C, so each matrix may be a block of a larger one
     * (causal attention skips the blocks above the diagonal). */
    void (*gemm_batched_ld)(void *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha,
                            const float *A, int lda, long long stride_a, const float *B, int ldb,
                            long long stride_b, float beta, float *C, int ldc, long long stride_c,
                            int batch);
    /* GEMM against a matrix packed once and used many times (an RNN's
     * W_hh over T steps). gemm_pack_size: the floats a packed op(B) (K, N)
     * takes; gemm_pack lays op(B) out there (B is (K, N), or (N, K) when
     * trans_b; the layout is the backend's); gemm_packed: C (M, N) = alpha
     * * A (M, K) op(B) + beta * C with that packed op(B), A row-major. */
    size_t (*gemm_pack_size)(void *ctx, int K, int N);
    void (*gemm_pack)(void *ctx, int trans_b, int K, int N, const float *B, float *packed);
    void (*gemm_packed)(void *ctx, int M, int N, int K, float alpha, const float *A,
                        const float *packed, float beta, float *C);
    /* y (A, C, B, D) = x (A, B, C, D): swaps the two middle dims, e.g.
     * (B, T, F) <-> (T, B, F) with A = D... = 1 where needed, or a
     * (B, T, H, Dh) head split into (B, H, T, Dh). x and y must not
     * overlap. The inverse is the same op with B and C swapped. */
    void (*transpose)(void *ctx, int A, int B, int C, int D, const float *x, float *y);
    /* y (N, D) = row ids[i] of table (V, D); every id in [0, V). */
    void (*embedding_forward)(void *ctx, const int32_t *ids, int N, int D, const float *table,
                              float *y);
    /* dtable (V, D) += dy (N, D) scattered by ids, in a fixed order (the
     * rows of one id summed in increasing i). */
    void (*embedding_backward)(void *ctx, const int32_t *ids, int N, int D, int V, const float *dy,
                               float *dtable);
    /* Layer norm over the last dim of x (N, C): y = (x - mean) * rstd *
     * gamma + beta, rstd = 1 / sqrt(var + eps) (biased variance); saves
     * mean and rstd (N each). In place (y == x) is not allowed. */
    void (*layernorm_forward)(void *ctx, int N, int C, float eps, const float *x,
                              const float *gamma, const float *beta, float *y, float *save_mean,
                              float *save_rstd);
    /* dx (N, C) overwritten (may be NULL); dgamma, dbeta (C) +=. */
    void (*layernorm_backward)(void *ctx, int N, int C, const float *x, const float *gamma,
                               const float *save_mean, const float *save_rstd, const float *dy,
                               float *dx, float *dgamma, float *dbeta);
    /* GELU, tanh approximation (GPT-2): y = 0.5 x (1 + tanh(sqrt(2/pi) (x +
     * 0.044715 x^3))). Backward needs x (GELU' is not a function of y);
     * dx == dy is allowed. */
    void (*gelu_forward)(void *ctx, const float *x, float *y, size_t n);
    void (*gelu_backward)(void *ctx, const float *x, const float *dy, float *dx, size_t n);
    /* Causal softmax in place over scores s (BH, T, T): row i becomes the
     * softmax over j <= i of scale * s[i][j]; entries j > i become 0. */
    void (*causal_softmax_forward)(void *ctx, int BH, int T, float scale, float *s);
    /* ds = scale * p * (dp - sum_j p dp) on j <= i, 0 above, from the
     * forward's output p; ds == dp is allowed. */
    void (*causal_softmax_backward)(void *ctx, int BH, int T, float scale, const float *p,
                                    const float *dp, float *ds);
    /* LSTM cell, one step of B rows and H units. gates (B, 4H) holds the
     * pre-activations (x W_ih^T + h W_hh^T + b) in the order i, f, g, o
     * and is overwritten with the activated gates (sigmoid i, f, o; tanh
     * g), which backward reads. c = f * c_prev + i * g, h = o * tanh(c)
     * (B, H each); c_prev NULL means zeros. */
    void (*lstm_cell_forward)(void *ctx, int B, int H, float *gates, const float *c_prev, float *c,
                              float *h);
    /* From dh and dc (B, H; dc NULL means zero) into this step: dgates
     * (B, 4H, pre-activation gradients) and dc_prev (B, H; NULL: not
     * needed) are overwritten. */
    void (*lstm_cell_backward)(void *ctx, int B, int H, const float *gates, const float *c_prev,
                               const float *c, const float *dh, const float *dc, float *dgates,
                               float *dc_prev);
    /* GRU cell (PyTorch's equations), gi = x W_ih^T + b_ih and gh = h_prev
     * W_hh^T + b_hh (B, 3H each, order r, z, n): r = sigmoid(gi_r + gh_r),
     * z = sigmoid(gi_z + gh_z), n = tanh(gi_n + r * gh_n), h = (1 - z) * n
     * + z * h_prev (h_prev NULL means zeros). save (B, 4H) keeps r, z, n and
     * gh_n for backward. */
    void (*gru_cell_forward)(void *ctx, int B, int H, const float *gi, const float *gh,
                             const float *h_prev, float *h, float *save);
    /* From dh (B, H): dgi, dgh (B, 3H) and dh_prev (B, H; the direct path
     * z * dh only, NULL: not needed) are overwritten. */
    void (*gru_cell_backward)(void *ctx, int B, int H, const float *save, const float *h_prev,
                              const float *dh, float *dgi, float *dgh, float *dh_prev);

    /* Sum of squares of x (n), returned on the host (syncs). */
    double (*sumsq)(void *ctx, const float *x, size_t n);
    /* x *= s */
    void (*scale)(void *ctx, float *x, float s, size_t n);
    /* y += a * x */
    void (*axpy)(void *ctx, float a, const float *x, float *y, size_t n);
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
