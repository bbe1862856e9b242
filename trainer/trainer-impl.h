/* trainer-impl.h — private to trainer/: the config, the layer table, the
 * model with its flat buffers, checkpoints and the shared error helpers.
 *
 * Ownership: a dv_model owns its layers and every buffer it allocates on
 * its backend; layer parameter pointers are views into the model's flat
 * buffers. Functions that can fail return 0 or -1 and write a message to an
 * `err` buffer of DV_ERR_LEN bytes.
 */
#ifndef DV_TRAINER_IMPL_H
#define DV_TRAINER_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "comm.h"
#include "data.h"
#include "kernels.h"

#define DV_NAME_LEN 64

/* ---- config (config.c) -------------------------------------------------- */

typedef struct dv_cfg_kv {
    char key[DV_NAME_LEN];
    char *value;
    int line; /* 0 for --set overrides */
    int used;
} dv_cfg_kv;

typedef struct dv_cfg_section {
    char type[DV_NAME_LEN]; /* "data", "train", "dense", ... */
    char name[DV_NAME_LEN]; /* unique: "data", "dense_2", or the `name` key */
    int line;
    int origin; /* a sub-config's section: index of its section in the whole config, or -1 */
    dv_cfg_kv *kv;
    int nkv, cap;
} dv_cfg_section;

typedef struct dv_config {
    char path[1024];
    char prefix[DV_NAME_LEN]; /* a sub-config's "generator." as its messages name sections */
    dv_cfg_section *sec;
    int nsec;
} dv_config;

/* Parses an INI file (every section seen in order, even empty or repeated
 * ones) or, with from_text, a config stored in a checkpoint. */
int dv_config_load(dv_config *cfg, const char *path, char *err);
int dv_config_load_text(dv_config *cfg, const char *label, const char *text, char *err);
void dv_config_free(dv_config *cfg);
/* Applies "section.key=value"; section is a section or layer name, or a
 * layer type that appears once. */
int dv_config_set(dv_config *cfg, const char *assignment, char *err);
dv_cfg_section *dv_config_find(dv_config *cfg, const char *name);
/* 1 when s has `key` (does not mark it used). */
int dv_config_has(const dv_cfg_section *s, const char *key);
/* Removes `key` from `section`, if both exist. */
void dv_config_unset(dv_config *cfg, const char *section, const char *key);
/* Fails with "file:line: [section]: missing key 'key'". */
int dv_cfg_missing(const dv_config *cfg, const dv_cfg_section *s, const char *key, char *err);
/* The effective config as INI text (malloc'd), overrides applied. */
char *dv_config_text(const dv_config *cfg);
/* Fails naming file:line for the first key no one read. */
int dv_config_check_used(const dv_config *cfg, char *err);
/* One model of a config that holds several (a GAN): the sections
 * [<prefix>.<type>] of cfg, except [<prefix>.train], as a config of their
 * own — types without the prefix, named as if they stood alone — after an
 * [input] of `shape` (ndim values). Its messages still name the file, its
 * lines and the prefixed sections. */
int dv_config_sub(const dv_config *cfg, const char *prefix, const int *shape, int ndim,
                  dv_config *out, char *err);
/* Marks as read in cfg every key that was read in its sub-config `sub`. */
void dv_config_sub_done(dv_config *cfg, const dv_config *sub);

/* Typed getters: a missing key gives `def`; a bad value fails naming
 * file:line. Reading a key marks it used. */
int dv_cfg_str(const dv_config *cfg, dv_cfg_section *s, const char *key, const char *def,
               const char **out, char *err);
int dv_cfg_int(const dv_config *cfg, dv_cfg_section *s, const char *key, long def, long min,
               long max, long *out, char *err);
int dv_cfg_float(const dv_config *cfg, dv_cfg_section *s, const char *key, double def, double min,
                 double max, double *out, char *err);
/* One of `choices` (NULL-terminated); *out is its index. */
int dv_cfg_enum(const dv_config *cfg, dv_cfg_section *s, const char *key, const char *def,
                const char *const *choices, int *out, char *err);
/* A list of 1..max positive ints "1,28,28". Returns the count in *n. */
int dv_cfg_ints(const dv_config *cfg, dv_cfg_section *s, const char *key, int *vals, int max,
                int *n, char *err);
/* "file:line: [section] key" for messages. */
void dv_cfg_where(const dv_config *cfg, const dv_cfg_section *s, const char *key, char *buf,
                  size_t len);

/* ---- run settings ([data] and [train]) --------------------------------- */

typedef enum dv_loss { DV_LOSS_XENT = 0, DV_LOSS_MSE, DV_LOSS_BCE, DV_LOSS_PERCEPTRON } dv_loss;
typedef enum dv_sched { DV_SCHED_CONSTANT = 0, DV_SCHED_STEP, DV_SCHED_COSINE } dv_sched;

typedef struct dv_settings {
    /* [data] */
    const char *file;
    char train_x[256], train_y[256], val_x[256], val_y[256];
    char train_tokens[256], val_tokens[256]; /* token models: GROUP/tokens */
    int has_val;
    double x_scale, x_shift;
    long memory_mb;
    long prefetch;
    /* [train] */
    long epochs, batch, seed, patience, keep, checkpoint_every, log_every, threads, max_steps;
    long warmup_steps, lr_step_epochs;
    double lr, lr_min, lr_gamma, momentum, beta1, beta2, eps, weight_decay, clip_norm, bucket_mb;
    dv_opt optimizer;
    dv_loss loss;
    dv_sched schedule;
    const char *run_dir;
    const char *backend;
    int progress;  /* 0 auto, 1 live, 2 lines */
    int precision; /* dv_precision: fp32, tf32, bf16 (CUDA GEMMs) */
    int comm;      /* dv_comm_device_mode: auto, nccl, mpi (device gradients) */
} dv_settings;

int dv_settings_read(dv_config *cfg, dv_settings *st, char *err);
/* The optimizer keys of section s (optimizer, lr, momentum, beta1, beta2,
 * eps, weight_decay, clip_norm) over the values already in st: [train]'s,
 * or a GAN model's own [generator.train] on top of [train]. */
int dv_settings_read_optimizer(dv_config *cfg, dv_cfg_section *s, dv_settings *st, char *err);
/* The learning rate of optimizer step `step` (0-based): linear warm-up, then
 * the schedule (step decay every lr_step_epochs, or cosine to lr_min over
 * the run). */
double dv_lr_at(const dv_settings *st, int64_t step, int64_t steps_per_epoch);

/* ---- layers (layers.c) -------------------------------------------------- */

typedef struct dv_layer dv_layer;
typedef struct dv_model dv_model;

#define DV_MAX_PARAMS 16

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
    int (*setup)(dv_layer *l, dv_model *m, char *err);
    /* Stateful layers: floats of carried state per stream (batch row), and
     * the state of B rows copied out to `host` (B, floats) when `save`, or
     * in from it (NULL when the layer carries nothing); -1: out of memory. */
    size_t (*state_floats)(const dv_layer *l);
    int (*state_io)(dv_layer *l, dv_model *m, int B, float *host, int save);
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
    /* Set by train.c around a checkpoint save: the stateful layers' carried
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

/* Builds the model of `cfg`'s layer sections for inputs of `shape`. The
 * params are initialised from `seed`; scratch is sized for max_batch. */
int dv_model_build(dv_model **out, dv_config *cfg, dv_backend *be, dv_loss loss, uint64_t seed,
                   int max_batch, char *err);
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
/* A one-line-per-layer summary (for rank 0 at start-up). */
void dv_model_print(const dv_model *m, FILE *f);

/* Layer constructors (layers.c): read keys of `s`, set out shape and params. */
/* Declares a parameter of l (the model lays it out); returns it. */
dv_param *dv_layer_add_param(dv_layer *l, const char *name, int trainable, dv_init init, int ndim,
                             const int *shape);
/* Reads `activation` and `alpha` of s into l->act / l->act_alpha. */
int dv_layer_read_act(dv_layer *l, dv_config *cfg, dv_cfg_section *s, char *err);
/* free(l->priv): the default `free` of a layer without device scratch. */
void dv_layer_free_priv(dv_layer *l, dv_model *m);
/* layers_rnn.c: rnn, lstm, gru. */
int dv_layer_rnn_init(dv_layer *l, dv_config *cfg, dv_cfg_section *s, const dv_model *m, char *err);
/* layers_seq.c: embedding, layernorm, gelu, attention, transformer. */
int dv_layer_seq_init(dv_layer *l, dv_config *cfg, dv_cfg_section *s, const dv_model *m, char *err);
int dv_layer_init(dv_layer *l, dv_config *cfg, dv_cfg_section *s, const dv_model *m, char *err);
/* Creates per-layer scratch once param views and max_batch are known. */
int dv_layer_setup(dv_layer *l, dv_model *m, char *err);

/* ---- checkpoints (checkpoint.c) ---------------------------------------- */

#define DV_TRAIN_SUMS 8

typedef struct dv_train_state {
    int64_t step;          /* optimizer steps taken */
    int64_t epoch;         /* current epoch (0-based) */
    int64_t step_in_epoch; /* steps of `epoch` already taken */
    int64_t world_size;
    int64_t global_batch; /* [train] batch: a resumed run must keep it */
    int64_t seed;
    double best_val_loss;
    int64_t bad_epochs;
    double loss_sum, correct_sum, seen; /* this epoch's running train metrics */
    int nsums;                          /* more running metrics (a GAN's): sums[0..nsums) */
    double sums[DV_TRAIN_SUMS];
} dv_train_state;

/* Writes an atomic checkpoint: a temporary file in the same directory,
 * flushed and fsync'd, then renamed over `path`. */
int dv_checkpoint_save(const char *path, const dv_model *m, const dv_train_state *ts,
                       const char *config_text, char *err);
/* Loads params (and optimizer state and buffers) into m after validating
 * every layer's shapes; fills ts if not NULL. */
int dv_checkpoint_load(const char *path, dv_model *m, dv_train_state *ts, int with_optimizer,
                       char *err);
/* Several models in one checkpoint, model i under the group roots[i]
 * ("/generator"; "" is the single model's layout). The first model's
 * streams and vocabulary are written, if it has them. */
int dv_checkpoint_save_models(const char *path, int n, dv_model *const *models,
                              const char *const *roots, const dv_train_state *ts,
                              const char *config_text, char *err);
/* dv_checkpoint_load of the model stored under `root`. */
int dv_checkpoint_load_model(const char *path, const char *root, dv_model *m, dv_train_state *ts,
                             int with_optimizer, char *err);
/* 1 if the checkpoint at `path` holds the group or dataset `name`. */
int dv_checkpoint_has(const char *path, const char *name);
/* The config text stored in a checkpoint (malloc'd), or NULL. */
char *dv_checkpoint_config(const char *path, char *err);
/* The carried stream state a checkpoint holds (/streams, rows x cols,
 * malloc'd), or *out = NULL when it holds none. */
int dv_checkpoint_streams(const char *path, float **out, int *rows, int *cols, char *err);

/* ---- what the subcommands and training loops share (runtime.c) ---------- */

/* Agree across ranks: if any rank failed, the lowest failing rank prints
 * "dive: error: <err>" and every rank returns 1; else 0. */
int dv_agree(dv_comm *c, int rc, const char *err);
/* Seconds on a monotonic clock. */
double dv_now(void);
/* The checkpoint --resume names: PATH, or run_dir/last.h5 for "auto"
 * (ckpt[0] = 0 when there is none yet: a new run). */
void dv_resume_path(const char *resume, const char *run_dir, char *ckpt, size_t len);
/* Checks the train state loaded from ckpt against this run (the global
 * batch and seed must stay), prints "resuming from ..." on rank 0 and makes
 * ts this rank's: today's world size, the epoch's running sums on rank 0
 * only. */
int dv_resume_state(dv_comm *c, const char *ckpt, const dv_settings *st, dv_train_state *ts,
                    char *err);
/* A training run's start, on every rank: run_dir made (and cleaned by rank
 * 0) and the checkpoint --resume names in ckpt ("" for a new run; it says
 * so when --resume auto finds none). 0, or -1 with err. */
int dv_run_begin(dv_comm *c, const dv_settings *st, const char *resume, char *ckpt, size_t len,
                 char *err);
/* Ends the job unless every rank holds the same parameters of m (same seed,
 * same checkpoint). Collective. */
void dv_replicas_check(dv_comm *c, const dv_model *m);
/* Rank 0's last line: "done: N steps; checkpoints in run_dir (last.h5[,
 * best.h5])" and `also`. */
void dv_run_done(dv_comm *c, const dv_settings *st, int64_t step, const char *also);
/* SIGTERM / SIGINT set a flag that the loops read at step boundaries. */
void dv_stop_signals_catch(void);
/* The signal any rank received, agreed on by all (0: none). Collective
 * every `every` steps (on one rank: every step), so every rank stops at the
 * same step. */
int dv_stop_signal_agreed(dv_comm *c, int64_t step, int every);
/* Creates run_dir (and its parents); fails unless it is a writable
 * directory. */
int dv_run_dir_make(const char *path, char *err);
/* Removes what a killed writer may have left in run_dir: temporary
 * checkpoints and pictures (*.h5.tmp.<pid>, *.png.tmp) and the links used
 * to update last.h5 and best.h5 — never a complete file: those only ever
 * appear by rename. */
void dv_run_dir_clean(const char *dir);
/* Where rank 0 writes the checkpoint of `step`: run_dir/ckpt-<step>.h5, or
 * last.h5 when keep = 0. */
void dv_checkpoint_path(const char *dir, long keep, int64_t step, char *path, size_t len);
/* After `path` is written: last.h5 (keep > 0) and, for a new best, best.h5
 * become hard links to it, and only the newest `keep` ckpt-*.h5 stay. */
int dv_checkpoint_publish(const char *dir, const char *path, long keep, int best, char *err);
/* The epochs of a training loop (dv_loop_run): what is the same for every
 * kind of model — the loader, step timing, progress lines, max_steps, stop
 * signals, checkpoint_every, the save where a run stops inside an epoch —
 * around what each kind does itself (train.c, gan.c), given as callbacks on
 * ctx. The running sums live in a dv_train_state that every rank keeps for
 * itself; `global` sums it over ranks. */
#define DV_LOOP_BEST 1 /* epoch_end: this epoch's checkpoint is the new best.h5 */
#define DV_LOOP_STOP 2 /* epoch_end: stop after it (early stopping) */
typedef struct dv_loop {
    dv_comm *comm;
    const dv_settings *st;
    dv_loader *loader;
    int live; /* rank 0 rewrites one progress line (dv_progress_live) */
    void *ctx;
    /* one optimizer step on b, adding its metrics to ts (ts->step is its
     * number); s is its index in the epoch, first the first one this run
     * takes of the epoch */
    void (*step)(void *ctx, const dv_batch *b, dv_train_state *ts, int64_t s, int64_t first);
    /* the metrics still on the device into ts (this rank's) */
    void (*flush)(void *ctx, dv_train_state *ts);
    /* ts with the running sums of every rank in *out (collective); at the
     * end of an epoch (or of the run inside one), also what the ranks keep
     * apart, such as batch norm's running statistics, made equal */
    void (*global)(void *ctx, const dv_train_state *ts, dv_train_state *out, int at_end);
    /* rank 0's progress line from its own running sums */
    void (*progress)(void *ctx, const dv_train_state *ts, int64_t epoch, int64_t step,
                     int64_t steps, double rate, double eta);
    /* the rest of rank 0's "stopped at step ... | " line, from the global
     * sums (every rank calls it) */
    void (*stopped)(void *ctx, const dv_train_state *g, double rate);
    /* a finished epoch (begun at dv_now() = t0) with its global sums g:
     * evaluation, the epoch line, metrics.csv, and ts moved on to the next
     * epoch; DV_LOOP_* flags, or -1 after a failure (collective) */
    int (*epoch_end)(void *ctx, dv_train_state *ts, const dv_train_state *g, int64_t epoch,
                     double rate, double t0);
    /* a checkpoint of ts (best: also best.h5); -1 after a failure
     * (collective) */
    int (*save)(void *ctx, const dv_train_state *ts, int best);
} dv_loop;
/* Trains from ts's position to [train] epochs, max_steps, a stop signal or
 * early stopping. 0; 128 + the signal that stopped it; 1 after a failure
 * (its message printed). Collective. */
int dv_loop_run(const dv_loop *l, dv_train_state *ts);
/* Whether rank 0's progress is one live line ([train] progress, a
 * terminal, no MPI launcher) or plain lines. */
int dv_progress_live(const dv_settings *st, dv_comm *c);
/* Per-step metrics of a training loop, `width` floats a step that the
 * step leaves at `src` (device). Reading them every step would make the
 * host wait for the GPU every step, so on a GPU each step's values are
 * copied into a ring of DV_RING_STEPS and read in one go (at log points,
 * epoch ends and checkpoints); the caller adds them in step order, so its
 * sums are the same whenever they were read. On the CPU the ring holds one
 * step. */
#define DV_RING_STEPS 64
typedef struct dv_ring {
    const dv_backend *be;
    float *dev;       /* (DV_RING_STEPS, width) on a GPU; NULL on the CPU */
    const float *src; /* where each step leaves its values */
    int width, cap, used;
    int64_t step0; /* the step of the oldest entry, 0-based */
} dv_ring;
int dv_ring_init(dv_ring *g, const dv_backend *be, const float *src, int width);
void dv_ring_free(dv_ring *g);
/* Keeps src's values of step `step`; 1 when the ring is full: read it. */
int dv_ring_push(dv_ring *g, int64_t step);
/* The entries, oldest first, into host (DV_RING_STEPS * width floats);
 * returns their number and the oldest's step, and empties the ring. Wait
 * for the device (dv_device_sync) first. */
int dv_ring_read(dv_ring *g, float *host, int64_t *step0);
/* Waits until at most `keep` steps' device work is still queued (the GPU
 * may run one step behind the host), with comm's timeout and NCCL error
 * checks when gradients travel on the device (device_comm); then asks the
 * backend for an error. A failure here is this rank's alone: it ends the
 * job. Nothing to do on the CPU. */
void dv_device_sync(dv_comm *c, const dv_backend *be, int device_comm, int keep);
/* In-place average over ranks of n floats on the backend's device (nothing
 * to do for n = 0 or one rank). */
void dv_average_on_device(dv_comm *c, const dv_backend *be, int device_comm, float *x, size_t n);

int dv_train_run(dv_comm *c, dv_config *cfg, const char *resume);
/* dive train of a GAN config ([gan] section; gan.c). */
int dv_gan_run(dv_comm *c, dv_config *cfg, const char *resume);
/* `count` samples of a GAN checkpoint's generator from the noise of `seed`
 * as a PNG grid at `out` (dive sample CKPT -o grid.png); be is borrowed. */
int dv_gan_sample(const char *ckpt, const char *config_text, const char *out, long count, long seed,
                  dv_backend *be, char *err);
int dv_eval_run(dv_comm *c, dv_config *cfg, const char *ckpt, const char *split, int json);
int dv_predict_run(dv_comm *c, dv_config *cfg, const char *ckpt, const char *in_file,
                   const char *split, const char *x_path, const char *out, int score);
/* A loader of `batch` rows per rank over split s with st's seed, scaling
 * and memory budget; streams: the stateful-RNN order (DV_ORDER_STREAMS). */
int dv_make_loader(dv_split *s, const dv_settings *st, dv_comm *c, int batch, int eval, int streams,
                   const dv_backend *be, dv_loader **out, char *err);
/* The CPU or CUDA backend per [train] backend (threads: 0 = cores / ranks on
 * this node). */
int dv_backend_open(dv_comm *c, const dv_settings *st, dv_backend **out, char *err);
/* Every rank must run on the same kind of backend: the gradient exchange
 * (NCCL or MPI over host memory) is chosen for all of them together. 1
 * (after one message) when some ranks found a GPU and others did not.
 * Collective. */
int dv_backend_agree(dv_comm *c, const dv_settings *st, const dv_backend *be, char *err);
int dv_info_run(const char *path);

/* ---- pictures (image.c, plot.c) ------------------------------------------ */

/* Writes a w x h PNG of 1 (grey) or 3 (RGB) channels, rows top to bottom,
 * through PATH.tmp renamed over PATH. 0, or -1 with err. */
int dv_png_write(const char *path, int w, int h, int channels, const uint8_t *px, char *err);
/* n images (C = 1 or 3, H, W; planar) tiled `cols` wide (0: a square) with
 * 2-pixel grey gaps, values mapped from [lo, hi] to 0..255 (clamped), as a
 * PNG. */
int dv_image_grid_png(const char *path, const float *imgs, int n, int C, int H, int W, float lo,
                      float hi, int cols, char *err);

/* An RGB canvas (w x h x 3 bytes) and what a chart needs on it; colours
 * are 0xRRGGBB, coordinates in pixels from the top left (clipped). */
typedef struct dv_canvas {
    int w, h;
    uint8_t *px;
} dv_canvas;
int dv_canvas_init(dv_canvas *c, int w, int h, uint32_t rgb);
void dv_canvas_free(dv_canvas *c);
void dv_canvas_rect(dv_canvas *c, int x0, int y0, int x1, int y1, uint32_t rgb);
void dv_canvas_line(dv_canvas *c, double x0, double y0, double x1, double y1, uint32_t rgb,
                    int thick);
/* A 5x7 font scaled by `scale`; letters print lower case. Returns the width. */
int dv_canvas_text(dv_canvas *c, int x, int y, const char *s, uint32_t rgb, int scale);
int dv_text_width(const char *s, int scale);

/* A classifier's verdict on a set of images (the Inception-Score idea with
 * a Dive classifier): p(y|x) for each image, accumulated batch by batch.
 * confidence: mean of max_y p(y|x); class_entropy: entropy (nats) of the
 * histogram of argmax classes, log K when every class is drawn equally;
 * inception: exp(H(mean p) - mean H(p(y|x))), 1 (uninformative or one
 * class) to K (confident and spread evenly). */
typedef struct dv_class_score {
    int K;
    int64_t n;
    double sum_conf, sum_neg_h; /* sum of max p, sum of sum_y p log p */
    double *hist, *sum_p;       /* (K) each */
} dv_class_score;
int dv_class_score_init(dv_class_score *s, int K);
/* Adds `count` rows of K probabilities (each row sums to 1). */
void dv_class_score_add(dv_class_score *s, const float *probs, int count);
void dv_class_score_result(const dv_class_score *s, double *confidence, double *class_entropy,
                           double *inception);
void dv_class_score_free(dv_class_score *s);
/* Class probabilities of `count` rows of a classifier's outputs (from
 * dv_model_outputs): the outputs themselves after a softmax layer, else
 * softmax(outputs). */
void dv_class_probs(const dv_model *m, const float *out, float *probs, int count);

/* metrics.csv (csv_path) as line charts into png_path, x = "epoch" or
 * "step" column, `width` pixels wide (dive plot). */
int dv_plot_metrics(const char *csv_path, const char *png_path, const char *xname, int width,
                    char *err);

#endif
