/* run-impl.h — private to run/: what the training loops (train.c, gan.c),
 * eval and predict share: agreeing on errors across ranks, choosing the
 * backend, making loaders, the run directory with its checkpoints and
 * resume, the epoch loop, and the per-step metrics ring.
 *
 * Collective functions must be called by every rank in the same order.
 * Functions that return dv_status and say "agreed" have already printed
 * the failure (rank 0, or the lowest failing rank) on DV_ERR, on every
 * rank alike.
 */
#ifndef DV_RUN_IMPL_H
#define DV_RUN_IMPL_H

#include <stdint.h>

#include "checkpoint.h"
#include "comm.h"
#include "data.h"
#include "run.h"
#include "settings.h"

/* ---- agreeing and setting up (setup.c) ---------------------------------- */

/* The CPU or CUDA backend per [train] backend (threads: 0 = cores / ranks
 * on this node). */
dv_status dv_backend_open(dv_comm *c, const dv_settings *st, dv_backend **out, char *err);
/* Every rank must run on the same kind of backend: the gradient exchange
 * (NCCL or MPI over host memory) is chosen for all of them together.
 * Agreed. */
dv_status dv_backend_agree(dv_comm *c, const dv_settings *st, const dv_backend *be, char *err);
/* Sets up device all-reduces for gradients on a GPU run (NCCL, or MPI
 * through host memory), sized for `most` floats; *on is 1 when they
 * serve. [train] comm = nccl on the CPU is an error. */
dv_status dv_device_comm_open(dv_comm *c, const dv_settings *st, const dv_backend *be,
                              const dv_config *cfg, size_t most, int *on, char *err);
/* A loader of `batch` rows per rank over split s with st's seed, scaling
 * and memory budget; streams: the stateful-RNN order (DV_ORDER_STREAMS). */
dv_status dv_run_loader_create(dv_split *s, const dv_settings *st, dv_comm *c, int batch, int eval,
                               int streams, const dv_backend *be, dv_loader **out, char *err);
/* The ranks agree on the run before its first step (agree.c): the
 * effective config cfg (dv_config_resolved_text, less the per-rank
 * settings) and `plan` (lines "KEY<TAB>VALUE": the data plan and the resume
 * point) must be the same on every rank. Else rank 0 prints which entry
 * differs first and which ranks hold which value, and every rank gets
 * DV_ERR. Agreed. Collective. */
dv_status dv_run_agree(dv_comm *c, const dv_config *cfg, const char *plan, char *err);

/* Ends the job unless every rank holds the same parameters of m (same seed,
 * same checkpoint). Collective. */
void dv_replicas_check(dv_comm *c, const dv_model *m);
/* Waits until at most `keep` steps' device work is still queued (the GPU
 * may run one step behind the host), with comm's timeout and NCCL error
 * checks when gradients travel on the device (device_comm); then asks the
 * backend for an error. A failure here is this rank's alone: it ends the
 * job. Nothing to do on the CPU. */
void dv_device_sync(dv_comm *c, const dv_backend *be, int device_comm, int keep);
/* In-place average over ranks of n floats on the backend's device (nothing
 * to do for n = 0 or one rank). */
void dv_average_on_device(dv_comm *c, const dv_backend *be, int device_comm, float *x, size_t n);

/* ---- the run directory (rundir.c) ----------------------------------------
 * docs/checkpoints.md: what a run directory holds and how it is written;
 * nothing in it is written through a link, and nothing that exists in it
 * is lost. */

/* Where a run starts, as dv_run_begin decided it. */
typedef struct dv_run_dir {
    char ckpt[1200]; /* the checkpoint the run resumes from; "" for a new run */
    int overwrite;   /* a new run replacing an earlier one's files (--overwrite) */
    char *aside;     /* rank 0: the damaged checkpoints --resume auto skipped
                        (names, one a line), set aside when the run starts */
} dv_run_dir;

/* A training run's start, on every rank: run_dir made, then rank 0 cleans
 * it and decides (every rank learns it): with o->resume NULL a new run,
 * which stops if run_dir holds another run's checkpoints unless
 * o->overwrite; with a path, that checkpoint; with "auto", the newest
 * checkpoint of run_dir that verifies (last.h5, then ckpt-<step>.h5 from
 * the newest; each one skipped is named on stderr with the reason), a new
 * run where run_dir holds none (it says so), and an error, nothing touched,
 * where it holds some and none verifies. A link where Dive writes (but its
 * own last.h5) is an error naming it. Not agreed: rank 0's message, the
 * others' "rank 0 says why" (dv_agree prints rank 0's). */
dv_status dv_run_begin(dv_comm *c, const dv_settings *st, const dv_train_opts *o, dv_run_dir *d,
                       char *err);
/* The run's start once the ranks agreed on it: rank 0 removes the earlier
 * run's files (d->overwrite: checkpoints, metrics.csv, sample grids), sets
 * the damaged checkpoints --resume auto skipped aside as <name>.damaged,
 * and opens metrics.csv in *metrics: appended to on resume (its rows after
 * ts->step dropped), else new with `header` (one line, no newline); NULL on
 * other ranks. Frees d's list. Agreed. */
dv_status dv_run_start(dv_comm *c, const dv_settings *st, dv_run_dir *d, const dv_train_state *ts,
                       const char *header, FILE **metrics, char *err);
/* Frees what d holds (after a failure before dv_run_start). */
void dv_run_dir_free(dv_run_dir *d);
/* Checks the train state loaded from ckpt against this run: the global
 * batch and seed must stay; the run's identity (`now`) must match the one
 * it recorded (dv_run_ident_check; force: a warning only); its position in
 * the epoch must lie inside this run's epochs of `steps` steps (force: the
 * next epoch starts). Prints "resuming from ..." on rank 0 and makes ts
 * this rank's: today's world size and identity, the epoch's running sums
 * on rank 0 only. */
dv_status dv_resume_state(dv_comm *c, const char *ckpt, const dv_settings *st,
                          const dv_run_ident *now, int64_t steps, int force, dv_train_state *ts,
                          char *err);
/* Rank 0 writes the checkpoint of ts->step (ckpt-<step>.h5, or last.h5 when
 * keep = 0) of the n models under their roots, then publishes it: last.h5
 * becomes a symbolic link to it, a new best is copied to best.h5, and only
 * the newest `keep` ckpt-*.h5 up to this step stay. Agreed. */
dv_status dv_run_save(dv_comm *c, const dv_settings *st, int n, dv_model *const *models,
                      const char *const *roots, const dv_train_state *ts, const char *config_text,
                      int best, char *err);
/* Rank 0's last line: "done: N steps; checkpoints in run_dir (last.h5[,
 * best.h5])" and `also`. */
void dv_run_done(dv_comm *c, const dv_settings *st, int64_t step, const char *also);

/* ---- what a checkpoint records of its run (ident.c) ------------------------ */

/* This run's identity: the optimizer's and the loss's names, [data] file,
 * `datasets` (the training datasets' paths in it), the shape of the
 * training split s and a hash of up to 64 of its rows (read as stored). */
dv_status dv_run_ident_make(dv_run_ident *id, const char *optimizer, const char *loss,
                            const dv_settings *st, const char *datasets, dv_split *s, char *err);
/* Appends the data hash of id to a plan (dv_run_agree), so ranks that read
 * different contents under the same shape disagree. */
void dv_plan_ident(char *plan, size_t len, const dv_run_ident *id);
/* A training run's start on every rank: agrees on rc (dv_agree), then on
 * the run (dv_run_agree) with the plan of the training split, the
 * validation split (NULL: none), the data identity id (read only when rc
 * is DV_OK) and the resume point (ckpt, "" for a new run, at ts's step).
 * Agreed. Collective. */
dv_status dv_run_agree_start(dv_comm *c, dv_status rc, const dv_config *cfg, const dv_split *train,
                             const dv_split *val, const dv_run_ident *id, const char *ckpt,
                             const dv_train_state *ts, char *err);
/* DV_OK when the identity a checkpoint recorded (ckpt, read from `path`)
 * matches this run's (now): the optimizer, the loss, the data file's name
 * (not its directory), the training datasets, their shape and the hash of
 * their sample. A checkpoint of an older Dive recorded none: rank 0 notes
 * it. Else the message names every difference; with force it is rank 0's
 * warning on stderr instead, and DV_OK. */
dv_status dv_run_ident_check(dv_comm *c, const char *path, const dv_run_ident *ckpt,
                             const dv_run_ident *now, int force, char *err);

/* ---- the epochs (loop.c) ---------------------------------------------------
 * The epochs of a training loop: what is the same for every kind of model
 * — the loader, step timing, progress lines, max_steps, stop signals,
 * checkpoint_every, the save where a run stops inside an epoch — around
 * what each kind does itself (train.c, gan.c), given as callbacks on ctx.
 * The running sums live in a dv_train_state that every rank keeps for
 * itself; `global` sums it over ranks. */
#define DV_LOOP_BEST 1 /* epoch_end: this epoch's checkpoint is the new best.h5 */
#define DV_LOOP_STOP 2 /* epoch_end: stop after it (early stopping) */
typedef struct dv_loop {
    dv_comm *comm;
    const dv_settings *st;
    dv_loader *loader;
    int live; /* rank 0 rewrites one progress line (dv_progress_live) */
    /* the replicas the divergence check compares every check_every steps
     * and before every checkpoint (their parameters) */
    dv_model *const *models;
    int nmodels;
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
     * epoch; DV_LOOP_* flags, or -1 after a failure (agreed) */
    int (*epoch_end)(void *ctx, dv_train_state *ts, const dv_train_state *g, int64_t epoch,
                     double rate, double t0);
    /* a checkpoint of ts (best: also best.h5); agreed */
    dv_status (*save)(void *ctx, const dv_train_state *ts, int best);
} dv_loop;
/* Trains from ts's position to [train] epochs, max_steps, a stop signal or
 * early stopping. DV_OK, with *stop_signal the signal that stopped it (0:
 * none; its checkpoint is written), or DV_ERR after a failure (agreed).
 * Every check_every steps, and before every checkpoint, the ranks compare
 * a fingerprint of the models' parameters and comm's collective sequence
 * hash; replicas that differ end the run (DV_ERR, agreed) before anything
 * of the step is saved, naming the ranks that differ from the majority.
 * DIVE_TEST_PERTURB=RANK:STEP (testing only) adds 1e-3 to one parameter
 * on rank RANK after every step from STEP on, as a faulty rank would.
 * Collective. */
dv_status dv_loop_run(const dv_loop *l, dv_train_state *ts, int *stop_signal);
/* Whether rank 0's progress is one live line ([train] progress, a
 * terminal, no MPI launcher) or plain lines. */
int dv_progress_live(const dv_settings *st, dv_comm *c);

/* ---- per-step metrics (ring.c) ---------------------------------------------
 * `width` floats a step that the step leaves at `src` (device). Reading
 * them every step would make the host wait for the GPU every step, so on a
 * GPU each step's values are copied into a ring of DV_RING_STEPS and read
 * in one go (at log points, epoch ends and checkpoints); the caller adds
 * them in step order, so its sums are the same whenever they were read. On
 * the CPU the ring holds one step. */
#define DV_RING_STEPS 64
typedef struct dv_ring {
    const dv_backend *be;
    float *dev;       /* (DV_RING_STEPS, width) on a GPU; NULL on the CPU */
    const float *src; /* where each step leaves its values */
    int width, cap, used;
    int64_t step0; /* the step of the oldest entry, 0-based */
} dv_ring;
dv_status dv_ring_init(dv_ring *g, const dv_backend *be, const float *src, int width, char *err);
void dv_ring_free(dv_ring *g);
/* Keeps src's values of step `step`; 1 when the ring is full: read it. */
int dv_ring_push(dv_ring *g, int64_t step);
/* Waits for the device (dv_device_sync) and adds the ring's entries, in
 * step order, to sums[0..width) — ending the job, naming `what` and the
 * step, if a value is not finite — and empties the ring. */
void dv_ring_flush(dv_ring *g, dv_comm *c, int device_comm, double *sums, const char *what);

/* ---- a classifier's verdict on a set of images (score.c) -------------------
 * The Inception-Score idea with a Dive classifier: p(y|x) for each image,
 * accumulated batch by batch. confidence: mean of max_y p(y|x);
 * class_entropy: entropy (nats) of the histogram of argmax classes, log K
 * when every class is drawn equally; inception: exp(H(mean p) - mean
 * H(p(y|x))), 1 (uninformative or one class) to K (confident and spread
 * evenly). */
typedef struct dv_class_score {
    int K;
    int64_t n;
    double sum_conf, sum_neg_h; /* sum of max p, sum of sum_y p log p */
    double *hist, *sum_p;       /* (K) each */
} dv_class_score;
/* DV_ERR when out of memory. */
dv_status dv_class_score_init(dv_class_score *s, int K);
/* Adds `count` rows of K probabilities (each row sums to 1). */
void dv_class_score_add(dv_class_score *s, const float *probs, int count);
void dv_class_score_result(const dv_class_score *s, double *confidence, double *class_entropy,
                           double *inception);
void dv_class_score_free(dv_class_score *s);
/* Class probabilities of `count` rows of a classifier's outputs (from
 * dv_model_outputs): the outputs themselves after a softmax layer, else
 * softmax(outputs). */
void dv_class_probs(const dv_model *m, const float *out, float *probs, int count);

#endif
