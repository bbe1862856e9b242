/* model.h — a sequential model of Dive: its layers, built from a config's
 * layer sections, and one flat allocation each for parameters, gradients,
 * optimizer state and non-trainable buffers on a backend, with forward,
 * loss and backward over a batch (docs/design.md, "One training step").
 *
 * Ownership: a dv_model owns its layers and every buffer it allocates on
 * its backend (the backend is borrowed); a layer's parameter pointers are
 * views into the model's flat buffers. Functions that can fail return
 * dv_status with a message in `err` (DV_ERR_LEN, base.h).
 */
#ifndef DV_MODEL_H
#define DV_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "kernels.h"
#include "tokens.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The loss the model's last layer is trained with. */
typedef enum dv_loss {
    DV_LOSS_XENT = 0,
    DV_LOSS_MSE,
    DV_LOSS_BCE,
    DV_LOSS_PERCEPTRON,
    DV_LOSS_COUNT
} dv_loss;

/* The config names of the losses ([train] loss) and of the activations
 * (a layer's `activation`), indexed by dv_loss and dv_act, NULL-terminated. */
extern const char *const dv_loss_names[DV_LOSS_COUNT + 1];
extern const char *const dv_act_names[DV_ACT_COUNT + 1];

typedef struct dv_layer dv_layer;
typedef struct dv_model dv_model;

#define DV_MAX_PARAMS 16

/* Sizes a config may ask for, checked where they are computed (products of
 * shapes overflow-checked): the elements of one sample at any layer (so
 * every per-sample count fits an int), and the floats of a model's
 * parameters or buffers (2^40: 4 TiB). */
#define DV_MAX_SAMPLE_ELEMS 2147483647
#define DV_MODEL_MAX_FLOATS ((size_t)1 << 40)

/* DV_INIT_NORMAL: normal(0, std) with the param's `std`; DV_INIT_UNIFORM:
 * uniform(-std, std) (PyTorch's RNN init uses std = 1/sqrt(hidden)). */
typedef enum dv_init {
    DV_INIT_ZERO = 0,
    DV_INIT_ONE,
    DV_INIT_HE,
    DV_INIT_XAVIER,
    DV_INIT_NORMAL,
    DV_INIT_UNIFORM,
} dv_init;

/* A named tensor of a layer, stored at `offset` of the model's flat buffer
 * (trainable: params/grads/opt state; else the model's `buffers`). */
typedef struct dv_param {
    char name[DV_NAME_LEN];
    int ndim;
    int shape[DV_TENSOR_MAX_DIMS];
    size_t count;
    size_t offset;
    int trainable;
    dv_init init;
    int fan_in, fan_out;
    float std;   /* DV_INIT_NORMAL, DV_INIT_UNIFORM */
    float *data; /* view into the flat buffer (device) */
    float *grad; /* view, trainable only */
    /* Weight tying: this param has no storage of its own and views the
     * storage (and gradient) of `tie`, a param of an earlier layer. */
    const struct dv_param *tie;
} dv_param;

typedef struct dv_layer_ops {
    /* y (B, out) from x (B, in); `training` selects dropout / batch norm. */
    void (*forward)(dv_layer *l, dv_model *m, const float *x, float *y, int B, int training);
    /* dx (B, in) (may be NULL) from dy (B, out); parameter grads +=. */
    void (*backward)(dv_layer *l, dv_model *m, const float *x, const float *y, const float *dy,
                     float *dx, int B);
    /* Releases the layer's own scratch (not its params). */
    void (*free)(dv_layer *l, dv_model *m);
    /* Allocates the layer's scratch once the param views exist and
     * m->max_batch is known (NULL: nothing to allocate). */
    dv_status (*setup)(dv_layer *l, dv_model *m, char *err);
    /* Stateful layers: floats of carried state per stream (batch row), and
     * the state of B rows copied out to `host` (B, floats) when `save`, or
     * in from it (NULL when the layer carries nothing); -1: out of memory. */
    size_t (*state_floats)(const dv_layer *l);
    int (*state_io)(dv_layer *l, dv_model *m, int B, float *host, int save);
    /* FLOPs of one sample's forward: 2 per multiply-add of the layer's
     * GEMMs and convolutions; element-wise work is not counted (NULL: 0,
     * as for pooling, norms, activations). docs/gpu.md, "Throughput and
     * MFU". */
    double (*flops)(const dv_layer *l);
} dv_layer_ops;

/* Shapes. Per sample, a layer sees (C, H, W) images, (K) vectors, or
 * (T, C) sequences: a 2-D shape is always a sequence of T positions of C
 * features, row-major, so a batch is (B, T, C). The model's input is a
 * sequence with [input] sequence = true, or token ids with [input]
 * tokens = T: then the input holds B*T int32 ids (stored in the float
 * input buffer, 4 bytes each) and the first layer must be an embedding. */

struct dv_layer {
    const dv_layer_ops *ops;
    char type[DV_NAME_LEN];
    char name[DV_NAME_LEN];
    int index;
    int in_ndim, in_shape[3];
    int out_ndim, out_shape[3];
    size_t in_elems, out_elems;
    dv_param param[DV_MAX_PARAMS];
    int nparam;
    size_t grad_end; /* grads of this layer and every later one end here */
    dv_act act;
    float act_alpha;
    int act_in_loss; /* the final softmax/sigmoid is fused into the loss */
    int stateful;    /* carries its state across training steps (see dv_model.carry) */
    void *priv;      /* the layer's own settings and scratch */
};

/* ---- the model (model.c) ----------------------------------------------- */

struct dv_model {
    dv_backend *be;
    dv_layer *layers;
    int nlayers;
    int in_ndim, in_shape[3];
    size_t in_elems;
    int outputs; /* elements per sample of the last layer */
    int max_batch;
    dv_loss loss;
    uint64_t seed;

    /* flat buffers, one allocation each (device) */
    size_t nparams, nbuffers;
    float *params, *grads, *state1, *state2, *buffers;
    int grads_borrowed; /* grads live in memory the model does not own */

    /* activations: acts[i] is the output of layer i (max_batch, out_elems) */
    float **acts;
    float *input;   /* (max_batch, in_elems) */
    float *dbuf[2]; /* ping-pong gradients, (max_batch, max elems) */
    float *work;    /* workspace shared by the conv and attention layers */
    size_t work_floats;
    float *targets;  /* (max_batch, outputs) float targets */
    int32_t *labels; /* (max_batch) */
    int64_t *row_id; /* (max_batch) global ids for dropout */
    float *stats;    /* 2 floats: loss sum, correct */
    int tokens;      /* the input is T int32 token ids per sample */
    int vocab;       /* token models: the vocabulary size ([input] vocab) */
    int positions;   /* labels per sample: T for a per-position loss, else 1 */
    /* Token models trained from a token file: its vocabulary (borrowed),
     * written into every checkpoint so `dive sample` can decode. */
    const dv_vocab *vocab_map;
    /* Recurrent layers with `stateful = true`: 1 when this training forward
     * continues the streams of the previous training forward (row b goes on
     * where row b stopped), so it starts from that forward's final state,
     * detached (truncated BPTT); 0 starts from zeros. Eval forwards always
     * start from zeros and leave the carried state alone. */
    int carry;
    /* Set by run/train.c around a checkpoint save: the stateful layers' carried
     * state of every stream, (stream_rows = global batch, stream_cols), host;
     * written as /streams so a resumed run continues the streams. */
    const float *stream_state;
    int stream_rows, stream_cols;
    uint64_t step_seed; /* folded per step for dropout */
    /* When set, backward also writes the gradient of the loss with respect
     * to the input here, (B, in_elems): a GAN's discriminator hands it to
     * the generator. */
    float *dinput;
};

/* Normal(0, 1) number i of the counter-based stream `seed` (Box-Muller):
 * the same on every rank and machine. */
float dv_randn(uint64_t seed, uint64_t i);

/* Builds the model of `cfg`'s [input] and layer sections. The params are
 * initialised from `seed`; scratch is sized for max_batch rows. */
dv_status dv_model_build(dv_model **out, dv_config *cfg, dv_backend *be, dv_loss loss,
                         uint64_t seed, int max_batch, char *err);
void dv_model_free(dv_model *m);
/* Elements of the largest parameter tensor (for host staging buffers). */
size_t dv_model_max_param_count(const dv_model *m);
/* Moves the gradients into `grads` (nparams floats, device memory the model
 * borrows: the caller keeps it alive and frees it) and re-points the layer
 * views. */
void dv_model_use_grads(dv_model *m, float *grads);
/* Frees the gradients and optimizer state of a model that only runs
 * forward (a GAN's averaged generator, its score classifier): checkpoints
 * then hold its <root>/model alone. */
void dv_model_forward_only(dv_model *m);
/* Forward over B rows of m->input; fills m->acts. */
void dv_model_forward(dv_model *m, int B, int training);
/* Loss on the last activation against m->labels / m->targets; writes the
 * output gradient into dbuf and adds to m->stats. */
void dv_model_loss(dv_model *m, int B, float grad_scale);
/* Backward from the loss gradient. After layer i's backward, calls
 * on_grads(ctx, grad_end) so the caller can start bucket all-reduces. */
void dv_model_backward(dv_model *m, int B, void (*on_grads)(void *ctx, size_t grad_end), void *ctx);
/* Applies the fused final activation (softmax/sigmoid) to the output for
 * prediction; returns the output pointer (B, outputs). */
float *dv_model_outputs(dv_model *m, int B);
/* Number of output classes a label may address (outputs, or 2 for one
 * sigmoid/perceptron output). */
int dv_model_classes(const dv_model *m);
/* Training FLOPs per sample: 3 x the layers' forward FLOPs (backward is
 * twice forward: the gradients of the inputs and of the weights). Token
 * models: divide by T (m->positions) for FLOPs per token. */
double dv_model_train_flops(const dv_model *m);
/* A one-line-per-layer summary (for rank 0 at start-up). */
void dv_model_print(const dv_model *m, FILE *f);

#ifdef __cplusplus
}
#endif
#endif
