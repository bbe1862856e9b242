/* data.h — datasets for Dive: splits (an inputs dataset and a targets
 * dataset of one HDF5 file, opened and validated), the sampler (one shuffle
 * per epoch, sharded across ranks) and the batch loader with its prefetch
 * thread. Token streams and the vocabulary are in tokens.h, the IDX, CSV
 * and text importers in import.h, and HDF5 itself (files, the lock, the
 * error stack) in h5.h.
 *
 * data never sees a tensor or MPI: it is told this rank's index and the
 * world size, and fills plain host buffers. Errors come back as dv_status
 * with a message in `err` (DV_ERR_LEN bytes) that names the file and the
 * dataset.
 *
 * Layout (see docs/data.md): a split is a group holding `x` (N, ...) of
 * uint8 / int / float32 / float64 and `y`, either int labels (N) or floats
 * (N, K); any dataset paths may be given instead of the group defaults.
 */
#ifndef DV_DATA_H
#define DV_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- splits: an x dataset and a y dataset of the same N ---------------- */

typedef enum dv_target_kind {
    DV_TARGET_LABELS = 0, /* integer class ids (N) or (N, 1), read as int32 */
    DV_TARGET_FLOATS,     /* float targets (N, K), read as float32 */
} dv_target_kind;

typedef struct dv_split dv_split;

/* Information about an opened split (all fields plain values). */
typedef struct dv_split_info {
    int64_t n;         /* samples */
    int x_rank;        /* rank of the x dataset, >= 1 */
    int64_t x_dims[8]; /* x's shape, x_dims[0] == n */
    size_t x_elems;    /* elements per sample: product of x_dims[1..] */
    dv_target_kind y_kind;
    size_t y_elems;    /* 1 for labels, K for float targets */
    int64_t label_min; /* labels only: smallest and largest label */
    int64_t label_max;
    int x_tokens; /* x holds int32 token ids, labels (n, y_elems) the next ids */
} dv_split_info;

/* Opens `file` and the datasets `x_path` and `y_path` (absolute paths in
 * the file), validates them (exist, are datasets, numeric type, rank >= 1,
 * same N, y of rank 1 or 2) and, for labels, scans their range. A NULL
 * y_path opens the inputs alone (y_elems 0; read with labels and targets
 * NULL), for prediction. Works for
 * contiguous, chunked and gzip-compressed datasets. The split is owned by
 * the caller (dv_split_free). The HDF5 file stays open until then. */
dv_status dv_split_open(dv_split **out, const char *file, const char *x_path, const char *y_path,
                        char *err);
/* A token stream (a 1-D dataset such as "/train/tokens") as a split of its
 * windows of length T (see "token streams" below): n = dv_tokens_windows,
 * x (n, T) the window's ids and labels (n, T) the ids one step later.
 * dv_split_read writes the ids into x as int32 (the same 4 bytes a float
 * takes; x_scale is ignored), for an embedding. info.x_tokens is 1. */
dv_status dv_split_open_tokens(dv_split **out, const char *file, const char *dataset, int T,
                               char *err);
void dv_split_free(dv_split *s);
const dv_split_info *dv_split_info_get(const dv_split *s);

/* Checks the split feeds a model with `in_elems` elements per sample and
 * `classes` outputs: x_elems == in_elems; labels in [0, classes) (or
 * {0,1} when classes == 1); float targets with y_elems == classes. The
 * message names the file, the dataset and the offending value. */
dv_status dv_split_check(const dv_split *s, size_t in_elems, int classes, char *err);

/* Reads the samples idx[0..count) (any order, any repeats) into
 * x (count, x_elems) as float32 times x_scale, and into either
 * labels (count, y_elems) or targets (count, y_elems) — whichever matches y_kind;
 * the other may be NULL. */
dv_status dv_split_read(dv_split *s, const int64_t *idx, int count, float x_scale, float *x,
                        int32_t *labels, float *targets, char *err);

/* ---- the sampler ------------------------------------------------------- */

/* docs/design.md's sampling contract. Training: one permutation of [0, n) per
 * epoch from (seed + epoch), identical on every rank; global batch b of
 * the epoch is perm[b*G .. (b+1)*G); rank r takes its elements
 * r, r + W, r + 2W, ... (G/W of them). The last partial global batch is
 * dropped, so every rank runs n / G steps. */
typedef struct dv_sampler {
    int64_t n;
    int global_batch; /* G, divisible by world */
    int world, rank;  /* W, r */
    uint64_t seed;
    /* DV_ORDER_SHUFFLE: one permutation per epoch. DV_ORDER_IDENTITY:
     * sample p of the epoch is p (evaluation, tests). DV_ORDER_STREAMS: the
     * epoch is G contiguous streams of S = n / G samples and global
     * position k of step s reads k*S + s, so row k of consecutive steps
     * walks through one stream (stateful recurrent training); ranks still
     * take positions r, r + W, ... */
    int shuffle;
} dv_sampler;

enum { DV_ORDER_IDENTITY = 0, DV_ORDER_SHUFFLE = 1, DV_ORDER_STREAMS = 2 };

int64_t dv_sampler_steps(const dv_sampler *s);
/* Writes this rank's G/W indices for `step` of `epoch` into idx. When
 * global_pos is not NULL it receives each sample's position in the
 * global batch (epoch-wide: step*G + position), used to seed per-sample
 * randomness identically on any world size. Works in O(G) after the
 * first call of an epoch (the permutation is cached in `cache`, n entries,
 * owned by the caller; pass NULL to compute each time). */
void dv_sampler_indices(const dv_sampler *s, int64_t epoch, int64_t step, int64_t *cache,
                        int64_t *cache_epoch, int64_t *idx, int64_t *global_pos);

/* The permutation of [0, n) for (seed, epoch) — Fisher-Yates driven by a
 * counter-based generator, so it is the same on every machine. */
void dv_sampler_permutation(int64_t n, uint64_t seed, int64_t epoch, int64_t *perm);

/* Evaluation shard: rank r of W gets the contiguous range
 * [*begin, *end) of [0, n); ranges are disjoint and cover every sample
 * exactly once (sizes differ by at most one). */
void dv_eval_shard(int64_t n, int world, int rank, int64_t *begin, int64_t *end);

/* ---- the loader ------------------------------------------------------- */

typedef struct dv_loader dv_loader;

typedef struct dv_loader_config {
    dv_sampler sampler;   /* for training order; ignored in eval mode */
    int eval;             /* 1: read this rank's dv_eval_shard in order */
    int batch;            /* eval: rows per batch; training: G/W */
    float x_scale;        /* multiply inputs by this */
    float x_shift;        /* then add this (standardisation: -mean/std) */
    size_t memory_budget; /* bytes: cache the rank's share in memory if it fits
                             (as float32); else HDF5's chunk cache for x */
    int prefetch;         /* 1: read the next batch on a background thread */
    /* Allocator for the batch buffers a device copies from (x, labels,
     * targets, global_pos): the CUDA backend's page-locked memory, so the
     * copy is a DMA without a bounce. NULL: malloc/free. */
    void *(*host_alloc)(void *ctx, size_t bytes);
    void (*host_free)(void *ctx, void *p);
    void *host_ctx;
} dv_loader_config;

/* One batch in host memory, owned by the loader; valid until the next
 * dv_loader_next. */
typedef struct dv_batch {
    int count;                 /* rows in this batch (eval's last may be short) */
    const float *x;            /* (count, x_elems) */
    const int32_t *labels;     /* (count) or NULL */
    const float *targets;      /* (count, y_elems) or NULL */
    const int64_t *index;      /* (count) sample indices in the dataset */
    const int64_t *global_pos; /* (count) position in the epoch's global order */
} dv_batch;

/* The loader borrows `split` (keep it open while the loader lives). In
 * memory mode it reads this rank's share once: for training that is the
 * whole dataset (every rank sees every sample over epochs), for eval its
 * shard. Streaming mode reads each batch from HDF5. */
dv_status dv_loader_create(dv_loader **out, dv_split *split, const dv_loader_config *cfg,
                           char *err);
void dv_loader_free(dv_loader *l);
/* 1 when the loader keeps the data in memory. */
int dv_loader_in_memory(const dv_loader *l);
/* Steps in one pass: training: sampler steps; eval: batches of the shard. */
int64_t dv_loader_steps(const dv_loader *l);
/* Positions the loader at `step` of `epoch` (eval: epoch ignored) and,
 * with prefetch, starts reading that batch. */
dv_status dv_loader_start(dv_loader *l, int64_t epoch, int64_t step, char *err);
/* The batch at the current position, then advances (and prefetches the
 * next one within the same pass). Returns DV_ERR with a message on an I/O
 * error; past the end of the pass returns DV_OK with batch->count == 0. */
dv_status dv_loader_next(dv_loader *l, dv_batch *batch, char *err);

#ifdef __cplusplus
}
#endif
#endif
