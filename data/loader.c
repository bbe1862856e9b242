/* loader.c — hands the trainer one batch at a time in host buffers.
 *
 * Memory mode: when this rank's share fits memory_budget it is read once as
 * float32 already scaled (training: the whole split, since the shuffle gives
 * every rank every sample over the epochs; eval: only the rank's shard), and
 * a batch is a gather of rows. Streaming mode reads each batch from HDF5.
 *
 * Either way there are two batch buffers: with prefetch a background thread
 * fills the next batch into one while the caller trains on the other (a
 * single pending job, guarded by a mutex and a condition variable). A batch
 * handed out stays valid until the next dv_loader_next, which is exactly
 * when its buffer becomes free for the thread to refill. An I/O error on the
 * thread is kept with the job and returned by the dv_loader_next that wants
 * that batch.
 */
#include "data.h"
#include "data-impl.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Rows read per HDF5 call when filling memory mode: big enough to amortise
 * the call, small enough for a modest scratch index array. */
#define LOAD_ROWS 8192

typedef struct slot {
    float *x;            /* (batch, x_elems) */
    int32_t *labels;     /* (batch) or NULL */
    float *targets;      /* (batch, y_elems) or NULL */
    int64_t *index;      /* (batch) */
    int64_t *global_pos; /* (batch) */
    int count;
    dv_status st;
    char err[DV_ERR_LEN];
} slot;

struct dv_loader {
    dv_split *split;
    dv_split_info info;
    dv_loader_config cfg;
    int64_t steps;
    int64_t shard_begin, shard_end; /* eval: this rank's rows */

    int in_memory;
    int64_t mem_base; /* first sample held in memory */
    float *mem_x;     /* (rows, x_elems), already scaled */
    int32_t *mem_labels;
    float *mem_targets;

    int64_t *perm; /* training: the epoch's permutation, cached */
    int64_t perm_epoch;

    slot slots[2];
    int64_t epoch, step; /* the batch the next dv_loader_next returns */

    int threaded;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int quit;
    int job_pending; /* the thread owes job_slot for (job_epoch, job_step) */
    int job_valid;   /* a submitted job (pending or done) is in job_slot */
    int job_slot;
    int64_t job_epoch, job_step;
};

/* x = x * x_scale (done by the read) + x_shift */
static void shift_inputs(float *x, size_t n, float shift) {
    if (shift == 0.0f) return;
    for (size_t i = 0; i < n; i++)
        x[i] += shift;
}

static int labels_of(const dv_loader *l) {
    return l->info.y_kind == DV_TARGET_LABELS;
}

/* Batch buffers that a device reads: the caller's allocator, or malloc. */
static void *batch_alloc(dv_loader *l, size_t bytes) {
    return l->cfg.host_alloc ? l->cfg.host_alloc(l->cfg.host_ctx, bytes) : malloc(bytes);
}

static void batch_free(dv_loader *l, void *p) {
    if (!p) return;
    if (l->cfg.host_free)
        l->cfg.host_free(l->cfg.host_ctx, p);
    else
        free(p);
}

/* Fills slot `sl` with the batch at (epoch, step). Runs on the prefetch
 * thread or, without prefetch, on the caller's. */
static void fill(dv_loader *l, slot *sl, int64_t epoch, int64_t step) {
    int64_t *idx = sl->index;
    int count;
    if (l->cfg.eval) {
        int64_t begin = l->shard_begin + step * l->cfg.batch;
        int64_t left = l->shard_end - begin;
        count = left < l->cfg.batch ? (int)left : l->cfg.batch;
        for (int i = 0; i < count; i++)
            idx[i] = sl->global_pos[i] = begin + i;
    } else {
        count = l->cfg.batch;
        dv_sampler_indices(&l->cfg.sampler, epoch, step, l->perm, &l->perm_epoch, idx,
                           sl->global_pos);
    }
    sl->count = count;
    sl->st = DV_OK;
    if (!l->in_memory) {
        sl->st = dv_split_read(l->split, idx, count, l->cfg.x_scale, sl->x, sl->labels, sl->targets,
                               sl->err);
        if (sl->st == DV_OK && !l->info.x_tokens)
            shift_inputs(sl->x, (size_t)count * l->info.x_elems, l->cfg.x_shift);
        return;
    }
    size_t xe = l->info.x_elems, ye = l->info.y_elems;
    for (int i = 0; i < count; i++) {
        size_t r = (size_t)(idx[i] - l->mem_base);
        memcpy(sl->x + (size_t)i * xe, l->mem_x + r * xe, sizeof(float) * xe);
        if (sl->labels)
            memcpy(sl->labels + (size_t)i * ye, l->mem_labels + r * ye, sizeof(int32_t) * ye);
        else
            memcpy(sl->targets + (size_t)i * ye, l->mem_targets + r * ye, sizeof(float) * ye);
    }
}

static void *worker(void *arg) {
    dv_loader *l = arg;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->job_pending && !l->quit)
            pthread_cond_wait(&l->cv, &l->mu);
        if (l->quit) break;
        slot *sl = &l->slots[l->job_slot];
        int64_t epoch = l->job_epoch, step = l->job_step;
        pthread_mutex_unlock(&l->mu);
        fill(l, sl, epoch, step);
        pthread_mutex_lock(&l->mu);
        l->job_pending = 0;
        pthread_cond_broadcast(&l->cv);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* Both with l->mu held. */
static void wait_idle(dv_loader *l) {
    while (l->job_pending)
        pthread_cond_wait(&l->cv, &l->mu);
}

static void submit(dv_loader *l, int64_t epoch, int64_t step, int which) {
    l->job_epoch = epoch;
    l->job_step = step;
    l->job_slot = which;
    l->job_valid = 1;
    l->job_pending = 1;
    pthread_cond_broadcast(&l->cv);
}

static dv_status load_memory(dv_loader *l, int64_t begin, int64_t rows, char *err) {
    size_t xe = l->info.x_elems, ye = l->info.y_elems;
    int64_t *idx = malloc(sizeof(int64_t) * LOAD_ROWS);
    if (!idx) {
        DV_ERROR(err, "loader: out of memory");
        return DV_ERR;
    }
    dv_status st = DV_OK;
    for (int64_t at = 0; at < rows && st == DV_OK; at += LOAD_ROWS) {
        int c = rows - at < LOAD_ROWS ? (int)(rows - at) : LOAD_ROWS;
        for (int i = 0; i < c; i++)
            idx[i] = begin + at + i;
        st = dv_split_read(l->split, idx, c, l->cfg.x_scale, l->mem_x + (size_t)at * xe,
                           l->mem_labels ? l->mem_labels + (size_t)at * ye : NULL,
                           l->mem_targets ? l->mem_targets + (size_t)at * ye : NULL, err);
        if (st == DV_OK && !l->info.x_tokens)
            shift_inputs(l->mem_x + (size_t)at * xe, (size_t)c * xe, l->cfg.x_shift);
    }
    free(idx);
    return st;
}

dv_status dv_loader_create(dv_loader **out, dv_split *split, const dv_loader_config *cfg,
                           char *err) {
    *out = NULL;
    dv_loader *l = calloc(1, sizeof(*l));
    if (!l) {
        DV_ERROR(err, "loader: out of memory");
        return DV_ERR;
    }
    l->split = split;
    l->info = *dv_split_info_get(split);
    l->cfg = *cfg;
    l->perm_epoch = -1;
    dv_sampler *sm = &l->cfg.sampler;
    int64_t n = l->info.n;

    if (cfg->batch <= 0) {
        DV_ERROR(err, "loader: batch must be positive (got %d)", cfg->batch);
        goto fail;
    }
    if (cfg->eval) {
        int world = sm->world > 0 ? sm->world : 1;
        if (sm->rank < 0 || sm->rank >= world) {
            DV_ERROR(err, "loader: rank %d is outside a world of %d", sm->rank, world);
            goto fail;
        }
        dv_eval_shard(n, world, sm->rank, &l->shard_begin, &l->shard_end);
        l->steps = (l->shard_end - l->shard_begin + cfg->batch - 1) / cfg->batch;
    } else {
        if (sm->n <= 0) sm->n = n;
        if (sm->world <= 0 || sm->rank < 0 || sm->rank >= sm->world) {
            DV_ERROR(err, "loader: rank %d is outside a world of %d", sm->rank, sm->world);
            goto fail;
        }
        if (sm->global_batch <= 0 || sm->global_batch % sm->world != 0) {
            DV_ERROR(err, "loader: global batch %d does not divide evenly across %d ranks",
                     sm->global_batch, sm->world);
            goto fail;
        }
        if (cfg->batch != sm->global_batch / sm->world) {
            DV_ERROR(err, "loader: batch %d is not global batch %d / %d ranks", cfg->batch,
                     sm->global_batch, sm->world);
            goto fail;
        }
        if (sm->n > n) {
            DV_ERROR(err, "loader: sampler covers %lld samples but the split has %lld",
                     (long long)sm->n, (long long)n);
            goto fail;
        }
        l->steps = dv_sampler_steps(sm);
        if (l->steps == 0) {
            DV_ERROR(err, "loader: %lld samples are fewer than one global batch of %d",
                     (long long)sm->n, sm->global_batch);
            goto fail;
        }
        if (sm->shuffle && !(l->perm = malloc(sizeof(int64_t) * (size_t)sm->n))) {
            DV_ERROR(err, "loader: out of memory for the permutation of %lld samples",
                     (long long)sm->n);
            goto fail;
        }
    }

    size_t xe = l->info.x_elems, ye = l->info.y_elems, b = (size_t)cfg->batch;
    int lab = labels_of(l);
    for (int i = 0; i < 2; i++) {
        slot *sl = &l->slots[i];
        sl->x = batch_alloc(l, sizeof(float) * b * xe);
        sl->index = malloc(sizeof(int64_t) * b);
        sl->global_pos = batch_alloc(l, sizeof(int64_t) * b);
        if (lab)
            sl->labels = batch_alloc(l, sizeof(int32_t) * b * ye);
        else
            sl->targets = batch_alloc(l, sizeof(float) * b * ye);
        if (!sl->x || !sl->index || !sl->global_pos || !(lab ? (void *)sl->labels : sl->targets)) {
            DV_ERROR(err, "loader: out of memory for batch buffers of %d samples", cfg->batch);
            goto fail;
        }
    }

    /* Memory mode when the rank's share fits; a failed allocation just means
     * streaming. */
    int64_t base = cfg->eval ? l->shard_begin : 0;
    int64_t rows = cfg->eval ? l->shard_end - l->shard_begin : n;
    double need = (double)rows * (double)(xe + ye) * 4.0;
    if (rows > 0 && need <= (double)cfg->memory_budget) {
        l->mem_x = malloc(sizeof(float) * (size_t)rows * xe);
        if (lab)
            l->mem_labels = malloc(sizeof(int32_t) * (size_t)rows * ye);
        else
            l->mem_targets = malloc(sizeof(float) * (size_t)rows * ye);
        if (l->mem_x && (l->mem_labels || l->mem_targets)) {
            if (load_memory(l, base, rows, err) != DV_OK) goto fail;
            l->in_memory = 1;
            l->mem_base = base;
        } else {
            free(l->mem_x);
            free(l->mem_labels);
            free(l->mem_targets);
            l->mem_x = NULL, l->mem_labels = NULL, l->mem_targets = NULL;
        }
    }

    if (!l->in_memory) dv_split_set_cache(split, cfg->memory_budget);

    if (cfg->prefetch) {
        pthread_mutex_init(&l->mu, NULL);
        pthread_cond_init(&l->cv, NULL);
        if (pthread_create(&l->thread, NULL, worker, l) != 0) {
            pthread_cond_destroy(&l->cv);
            pthread_mutex_destroy(&l->mu);
            DV_ERROR(err, "loader: cannot start the prefetch thread");
            goto fail;
        }
        l->threaded = 1;
    }
    *out = l;
    return DV_OK;
fail:
    dv_loader_free(l);
    return DV_ERR;
}

void dv_loader_free(dv_loader *l) {
    if (!l) return;
    if (l->threaded) {
        pthread_mutex_lock(&l->mu);
        l->quit = 1;
        pthread_cond_broadcast(&l->cv);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->thread, NULL);
        pthread_cond_destroy(&l->cv);
        pthread_mutex_destroy(&l->mu);
    }
    for (int i = 0; i < 2; i++) {
        batch_free(l, l->slots[i].x);
        batch_free(l, l->slots[i].labels);
        batch_free(l, l->slots[i].targets);
        free(l->slots[i].index);
        batch_free(l, l->slots[i].global_pos);
    }
    free(l->mem_x);
    free(l->mem_labels);
    free(l->mem_targets);
    free(l->perm);
    free(l);
}

int dv_loader_in_memory(const dv_loader *l) {
    return l->in_memory;
}

int64_t dv_loader_steps(const dv_loader *l) {
    return l->steps;
}

dv_status dv_loader_start(dv_loader *l, int64_t epoch, int64_t step, char *err) {
    if (l->cfg.eval) epoch = 0;
    if (step < 0 || step > l->steps || epoch < 0) {
        DV_ERROR(err, "loader: cannot start at epoch %lld step %lld (a pass has %lld steps)",
                 (long long)epoch, (long long)step, (long long)l->steps);
        return DV_ERR;
    }
    if (!l->threaded) {
        l->epoch = epoch;
        l->step = step;
        return DV_OK;
    }
    pthread_mutex_lock(&l->mu);
    wait_idle(l);
    l->job_valid = 0;
    l->epoch = epoch;
    l->step = step;
    if (step < l->steps) submit(l, epoch, step, 0);
    pthread_mutex_unlock(&l->mu);
    return DV_OK;
}

dv_status dv_loader_next(dv_loader *l, dv_batch *batch, char *err) {
    memset(batch, 0, sizeof(*batch));
    if (l->step >= l->steps) return DV_OK;
    slot *sl;
    if (!l->threaded) {
        sl = &l->slots[0];
        fill(l, sl, l->epoch, l->step);
    } else {
        pthread_mutex_lock(&l->mu);
        wait_idle(l);
        if (!l->job_valid || l->job_epoch != l->epoch || l->job_step != l->step) {
            submit(l, l->epoch, l->step, 0);
            wait_idle(l);
        }
        sl = &l->slots[l->job_slot];
        l->job_valid = 0;
        /* The other buffer held the batch returned last time, which this
         * call retires, so the thread may refill it now. */
        if (sl->st == DV_OK && l->step + 1 < l->steps)
            submit(l, l->epoch, l->step + 1, (int)(sl - l->slots) ^ 1);
        pthread_mutex_unlock(&l->mu);
    }
    if (sl->st != DV_OK) {
        if (err) memcpy(err, sl->err, DV_ERR_LEN);
        return DV_ERR;
    }
    l->step++;
    batch->count = sl->count;
    batch->x = sl->x;
    batch->labels = sl->labels;
    batch->targets = sl->targets;
    batch->index = sl->index;
    batch->global_pos = sl->global_pos;
    return DV_OK;
}
