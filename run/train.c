/* train.c — `dive train` of a classifier (any single model: regression and
 * language models too) over MPI ranks.
 *
 * One step: the loader hands this rank its G/W rows of the global batch;
 * forward, loss (scaled by 1/(G/W), so the average over ranks is the global
 * mean), backward with bucketed all-reduces started as soon as a bucket of
 * gradients is complete, wait, clip, one optimizer step on the flat buffer.
 * Every rank takes the same step, so the replicas never drift apart. On
 * the CPU within a node the update is sharded instead: reduce-scatter,
 * each rank updates its shard, all-gather.
 *
 * An error only one rank sees in the middle of training (an I/O error)
 * aborts the job.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "classifier-impl.h"
#include "run.h"

typedef dv_classifier run;

/* ---- one step --------------------------------------------------------------- */

static void on_grads(void *ctx, size_t grad_end) {
    run *r = ctx;
    if (r->world == 1 || r->comm_failed || r->sharded) return;
    size_t n = grad_end - r->bucket_start;
    if (n && (n >= r->bucket_floats || grad_end == r->m->nparams) && r->nreq < DV_MAX_BUCKETS) {
        /* on a GPU the bucket's average is queued behind the backward so
         * far and runs beside the rest of it */
        if (dv_comm_allreduce_start(r->comm, r->m->grads + r->bucket_start, n, r->be->stream,
                                    &r->reqs[r->nreq], r->err))
            r->comm_failed = 1;
        else
            r->nreq++;
        r->bucket_start = grad_end;
    } else if (r->nreq) {
        dv_comm_progress(r->comm);
    }
}

static void train_step(run *r, const dv_batch *b, double lr, int64_t step) {
    dv_model *m = r->m;
    const dv_backend *be = r->be;
    dv_classifier_load(r, b);
    m->step_seed = dv_rand_hash((uint64_t)r->st.seed ^ 0x5eedd0d0ULL, (uint64_t)step);
    be->fill(be->ctx, m->grads, 0.0f, m->nparams);
    dv_model_forward(m, b->count, 1);
    dv_model_loss(m, b->count, 1.0f / ((float)r->local_batch * (float)m->positions));
    r->bucket_start = 0;
    r->nreq = 0;
    dv_model_backward(m, b->count, on_grads, r);
    dv_opt_params op = dv_settings_opt_params(&r->st, lr, (long)step + 1);
    if (r->sharded) {
        /* reduce-scatter, update this rank's shard, all-gather the params:
         * the same arithmetic as the full update, done once per element */
        size_t lo = r->shard_lo, n = r->shard_hi - r->shard_lo;
        if (dv_comm_reduce_scatter_avg(r->comm, m->grads, m->nparams, r->err))
            dv_comm_abort(r->comm, 1, r->err);
        if (r->st.clip_norm > 0) {
            double ss = be->sumsq(be->ctx, m->grads + lo, n);
            if (dv_comm_allreduce_double(r->comm, &ss, 1, DV_REDUCE_SUM, r->err))
                dv_comm_abort(r->comm, 1, r->err);
            double norm = sqrt(ss);
            if (isfinite(norm) && norm > r->st.clip_norm)
                be->scale(be->ctx, m->grads + lo, (float)(r->st.clip_norm / norm), n);
        }
        be->opt_step(be->ctx, &op, m->params + lo, m->grads + lo, m->state1 + lo, m->state2 + lo,
                     n);
        if (dv_comm_allgather(r->comm, m->params, m->nparams, r->err))
            dv_comm_abort(r->comm, 1, r->err);
        return;
    }
    for (int i = 0; i < r->nreq; i++)
        if (dv_comm_wait(r->comm, r->reqs[i], r->err)) r->comm_failed = 1;
    if (r->comm_failed) dv_comm_abort(r->comm, 1, r->err);
    if (r->st.clip_norm > 0) {
        /* the norm is read on the host: wait for the all-reduces here, where
         * a dead rank is caught by comm's timeout, not inside sumsq's sync */
        dv_device_sync(r->comm, r->be, r->device_comm, 0);
        dv_clip_grad_norm(be, m->grads, m->nparams, r->st.clip_norm);
    }
    be->opt_step(be->ctx, &op, m->params, m->grads, m->state1, m->state2, m->nparams);
    dv_device_sync(r->comm, r->be, r->device_comm,
                   1); /* the host runs at most one step ahead of the GPU */
}

/* ---- stateful streams across checkpoints -------------------------------- */

/* Floats of carried state per stream (batch row) over the stateful layers. */
static size_t stream_cols(const dv_model *m) {
    size_t n = 0;
    for (int i = 0; i < m->nlayers; i++) {
        const dv_layer *l = &m->layers[i];
        if (l->stateful && l->ops->state_floats) n += l->ops->state_floats(l);
    }
    return n;
}

/* This rank's streams between the stateful layers and `table` (global
 * batch, cols): local row k of rank r is stream r + k*W (the streams order
 * of the sampler), each layer's floats at its column offset. save: layers
 * -> table rows; else table rows -> layers. -1: out of memory. */
static int streams_io(run *r, float *table, int save) {
    const size_t cols = stream_cols(r->m);
    const int B = r->local_batch;
    size_t off = 0;
    for (int i = 0; i < r->m->nlayers; i++) {
        dv_layer *l = &r->m->layers[i];
        if (!l->stateful || !l->ops->state_floats) continue;
        const size_t per = l->ops->state_floats(l);
        float *rows = malloc((size_t)B * per * sizeof(float));
        if (!rows || (save && l->ops->state_io(l, r->m, B, rows, 1))) {
            free(rows);
            return -1;
        }
        for (int k = 0; k < B; k++) {
            float *t = table + ((size_t)r->rank + (size_t)k * r->world) * cols + off;
            float *w = rows + (size_t)k * per;
            memcpy(save ? t : w, save ? w : t, per * sizeof(float));
        }
        int rc = save ? 0 : l->ops->state_io(l, r->m, B, rows, 0);
        free(rows);
        if (rc) return -1;
        off += per;
    }
    return 0;
}

/* Every stream's carried state, (global batch, cols), on every rank: each
 * rank fills its rows of a zeroed table and a sum over ranks (exact: the
 * others add zeros) completes it. Collective; NULL when no layer is
 * stateful. */
static float *streams_gather(run *r) {
    const size_t n = (size_t)r->st.batch * stream_cols(r->m);
    if (!n) return NULL;
    float *table = calloc(n, sizeof(float));
    double *sum = malloc(n * sizeof(double));
    if (!table || !sum || streams_io(r, table, 1))
        dv_comm_abort(r->comm, 1, "out of memory for the carried state");
    for (size_t i = 0; i < n; i++)
        sum[i] = table[i];
    if (dv_comm_allreduce_double(r->comm, sum, (int)n, DV_REDUCE_SUM, r->err))
        dv_comm_abort(r->comm, 1, r->err);
    for (size_t i = 0; i < n; i++)
        table[i] = (float)sum[i];
    free(sum);
    return table;
}

/* Rank 0 writes the checkpoint (run-impl.h, dv_run_save) with the carried
 * state of every stream; every rank learns whether it worked. Collective. */
static dv_status save(void *ctx, const dv_train_state *ts, int best) {
    run *r = ctx;
    /* with a sharded optimizer each rank holds only its shard's moments */
    if (r->sharded && (dv_comm_allgather(r->comm, r->m->state1, r->m->nparams, r->err) ||
                       dv_comm_allgather(r->comm, r->m->state2, r->m->nparams, r->err)))
        dv_comm_abort(r->comm, 1, r->err);
    float *streams = streams_gather(r);
    r->m->stream_state = streams;
    r->m->stream_rows = (int)r->st.batch;
    r->m->stream_cols = (int)stream_cols(r->m);
    static const char *const root[] = {""};
    dv_status rc = dv_run_save(r->comm, &r->st, 1, &r->m, root, ts, r->config_text, best, r->err);
    r->m->stream_state = NULL;
    free(streams);
    return rc;
}

/* Adds the ring's per-step (loss, correct) pairs to ts in step order, so the
 * sums are the same whether they were read every step or in a batch. */
static void stats_flush(void *ctx, dv_train_state *ts) {
    run *r = ctx;
    double sums[2] = {ts->loss_sum, ts->correct_sum};
    dv_ring_flush(&r->ring, r->comm, r->device_comm, sums, "the loss");
    ts->loss_sum = sums[0];
    ts->correct_sum = sums[1];
}

/* ---- the loop's callbacks (dv_loop) ---------------------------------------- */

static void loop_step(void *ctx, const dv_batch *b, dv_train_state *ts, int64_t s, int64_t first) {
    run *r = ctx;
    dv_model *m = r->m;
    r->lr = dv_lr_at(&r->st, ts->step, r->steps);
    r->be->fill(r->be->ctx, m->stats, 0.0f, 2);
    /* stateful layers: streams restart each epoch, and go on from the
     * checkpoint's state on the first step of a resumed one */
    m->carry = s > first || (s == first && first > 0 && r->streams_resumed);
    train_step(r, b, r->lr, ts->step);
    /* the step's (loss, correct), read when the ring is full (every step
     * on the CPU) */
    if (dv_ring_push(&r->ring, ts->step)) stats_flush(r, ts);
    ts->seen += (double)b->count * m->positions;
}

/* The epoch's running train metrics summed over ranks (a checkpoint
 * written mid-epoch stores the global sums); at an epoch's end batch
 * norm's running statistics are averaged too. */
static void loop_global(void *ctx, const dv_train_state *ts, dv_train_state *out, int at_end) {
    run *r = ctx;
    *out = *ts;
    double s[3] = {ts->loss_sum, ts->correct_sum, ts->seen};
    if (dv_comm_allreduce_double(r->comm, s, 3, DV_REDUCE_SUM, r->err))
        dv_comm_abort(r->comm, 1, r->err);
    out->loss_sum = s[0];
    out->correct_sum = s[1];
    out->seen = s[2];
    if (at_end) dv_average_on_device(r->comm, r->be, r->device_comm, r->m->buffers, r->m->nbuffers);
}

static const char *unit(const run *r) {
    return r->tokens ? "tokens" : "samples"; /* token models count tokens: rate * T */
}

/* The FLOP/s all ranks achieve at `rate` samples/s (global), and the MFU:
 * that over the peak of every rank's device; NAN when the peak is unknown
 * (docs/gpu.md, "Throughput and MFU"). */
static double achieved_flops(const run *r, double rate) {
    return rate * r->flops;
}

static double mfu(const run *r, double rate) {
    return r->peak > 0 ? achieved_flops(r, rate) / (r->peak * r->world) : NAN;
}

static void loop_progress(void *ctx, const dv_train_state *ts, int64_t epoch, int64_t step,
                          int64_t steps, double rate, double eta) {
    const run *r = ctx;
    int mins = (int)(eta / 60), secs = (int)eta % 60;
    char u[32] = "";
    if (r->peak > 0) snprintf(u, sizeof u, "  MFU %.3g%%", 100 * mfu(r, rate));
    printf("%sepoch %lld/%ld  step %lld/%lld  loss %.4f  %.0f %s/s%s  ETA %d:%02d%s",
           r->live ? "\r" : "", (long long)epoch + 1, r->st.epochs, (long long)step,
           (long long)steps, ts->loss_sum / ts->seen, rate * r->m->positions, unit(r), u, mins,
           secs, r->live ? "   " : "\n");
    fflush(stdout);
}

static void loop_stopped(void *ctx, const dv_train_state *g, double rate) {
    const run *r = ctx;
    if (r->rank == 0)
        printf("loss %.4f acc %.4f | train %.0f %s/s\n", g->loss_sum / g->seen,
               g->correct_sum / g->seen, rate * r->m->positions, unit(r));
}

static int loop_epoch_end(void *ctx, dv_train_state *ts, const dv_train_state *g, int64_t epoch,
                          double rate, double t0) {
    run *r = ctx;
    double vloss = NAN, vacc = NAN, vn = 0;
    if (r->vl && dv_classifier_evaluate(r, r->vl, &vloss, &vacc, &vn)) return -1;
    ts->epoch = epoch + 1;
    ts->step_in_epoch = 0;
    ts->loss_sum = ts->correct_sum = ts->seen = 0;
    const double tloss = g->loss_sum / g->seen, tacc = g->correct_sum / g->seen;
    double monitor = r->vl ? vloss : tloss;
    int improved = monitor < ts->best_val_loss;
    if (improved) {
        ts->best_val_loss = monitor;
        ts->bad_epochs = 0;
    } else {
        ts->bad_epochs++;
    }
    const int positions = r->m->positions;
    double secs = dv_now() - t0;
    if (r->rank == 0) {
        printf("epoch %lld/%ld | loss %.4f", (long long)epoch + 1, r->st.epochs, tloss);
        if (r->tokens) printf(" ppl %.2f", exp(tloss));
        printf(" acc %.4f", tacc);
        if (r->vl) printf(" | val loss %.4f", vloss);
        if (r->vl && r->tokens) printf(" ppl %.2f", exp(vloss));
        if (r->vl) printf(" acc %.4f", vacc);
        printf(" | train %.0f %s/s", rate * positions, unit(r));
        if (r->peak > 0) printf(" MFU %.3g%%", 100 * mfu(r, rate));
        printf(" | %.1f s%s\n", secs, improved && r->vl ? " | best" : "");
        fflush(stdout);
        if (r->metrics) {
            fprintf(r->metrics, "%lld,%lld,%g,%.6f,%.6f,%.6f,%.6f,%.1f,%.3f", (long long)epoch + 1,
                    (long long)ts->step, r->lr, tloss, tacc, vloss, vacc, rate, secs);
            if (r->tokens)
                fprintf(r->metrics, ",%.1f,%.4f,%.4f", rate * positions, exp(tloss), exp(vloss));
            /* tflops: achieved by all ranks; mfu: a fraction, empty when unknown */
            fprintf(r->metrics, ",%.6g,", achieved_flops(r, rate) / 1e12);
            if (r->peak > 0) fprintf(r->metrics, "%.6f", mfu(r, rate));
            fprintf(r->metrics, "\n");
            fflush(r->metrics);
        }
    }
    if (!r->st.patience || ts->bad_epochs < r->st.patience) return improved ? DV_LOOP_BEST : 0;
    if (r->rank == 0)
        printf("early stopping: no improvement of the %s loss for %lld epochs; best %.4f is in "
               "%s/best.h5\n",
               r->vl ? "val" : "train", (long long)ts->bad_epochs, ts->best_val_loss,
               r->st.run_dir);
    return (improved ? DV_LOOP_BEST : 0) | DV_LOOP_STOP;
}

/* ---- the run --------------------------------------------------------------- */

/* Resumes from ckpt: the model and optimizer, the train state (checked
 * against this run, `now`), and the stateful layers' streams (re-sharded
 * when the number of ranks changed). */
static dv_status resume(run *r, const char *ckpt, const dv_run_ident *now, int force,
                        dv_train_state *ts) {
    dv_model *m = r->m;
    DV_TRY(dv_checkpoint_load(ckpt, m, ts, 1, r->err));
    DV_TRY(dv_resume_state(r->comm, ckpt, &r->st, now, dv_loader_steps(r->tl), force, ts, r->err));
    const size_t cols = stream_cols(m);
    if (!cols) return DV_OK;
    float *table = NULL;
    int rows = 0, tc = 0;
    DV_TRY(dv_checkpoint_streams(ckpt, &table, &rows, &tc, r->err));
    dv_status rc = DV_OK;
    if (table && rows == (int)r->st.batch && (size_t)tc == cols) {
        rc = streams_io(r, table, 0) ? DV_ERROR(r->err, "out of memory for the carried state")
                                     : DV_OK;
        r->streams_resumed = !rc;
    } else if (r->rank == 0) {
        printf("%s: no carried state for these stateful layers: the streams "
               "restart from zeros\n",
               ckpt);
    }
    free(table);
    return rc;
}

/* Rank 0's account of the model and the data plan. */
static void print_plan(const run *r, int64_t steps) {
    const dv_model *m = r->m;
    const dv_backend *be = r->be;
    dv_model_print(m, stdout);
    if (r->tokens)
        printf("data: %s %s: %lld windows of %d tokens (vocab %d); ", r->st.file,
               r->st.train_tokens, (long long)dv_split_info_get(r->train)->n, m->in_shape[0],
               m->vocab);
    else
        printf("data: %s %s: %lld samples; ", r->st.file, r->st.train_x,
               (long long)dv_split_info_get(r->train)->n);
    printf("%d rank%s x %d = global batch %ld; %lld steps/epoch; "
           "%s; backend %s",
           r->world, r->world > 1 ? "s" : "", r->local_batch, r->st.batch, (long long)steps,
           dv_loader_in_memory(r->tl) ? "in memory" : "streaming", be->name);
    if (be->stream)
        printf(" (%s GEMMs), gradients %s", dv_precision_names[r->st.precision],
               dv_comm_device_path(r->comm) ? dv_comm_device_path(r->comm) : "?");
    printf("\n");
    const double per = r->flops / (r->tokens ? m->positions : 1);
    printf("compute: %.4g train FLOPs per %s", per, r->tokens ? "token" : "sample");
    if (r->peak > 0)
        printf("; peak %.4g TFLOP/s per device (%s)", r->peak / 1e12,
               r->st.peak_tflops > 0 ? "peak_tflops" : be->name);
    else
        printf("; peak unknown, no MFU (set [train] peak_tflops)");
    printf("\n");
    fflush(stdout);
}

/* This run's identity (dv_run_ident): the optimizer, the loss and the
 * training data. */
static dv_status ident_make(run *r, dv_run_ident *id) {
    char sets[600];
    if (r->tokens)
        snprintf(sets, sizeof sets, "%s", r->st.train_tokens);
    else
        snprintf(sets, sizeof sets, "%s %s", r->st.train_x, r->st.train_y);
    return dv_run_ident_make(id, dv_opt_names[r->st.optimizer], dv_loss_names[r->st.loss], &r->st,
                             sets, r->train, r->err);
}

dv_status dv_train_run(dv_comm *c, dv_config *cfg, const dv_train_opts *o, int *stop_signal) {
    *stop_signal = 0;
    run R, *r = &R;
    if (dv_classifier_setup(r, c, cfg, 1)) {
        dv_classifier_free(r);
        return DV_ERR;
    }
    dv_train_state ts = {.world_size = r->world,
                         .global_batch = r->st.batch,
                         .seed = r->st.seed,
                         .best_val_loss = INFINITY};
    dv_run_dir rd;
    dv_status rc = dv_run_begin(c, &r->st, o, &rd, r->err);
    const char *ckpt = rd.ckpt;
    dv_run_ident now;
    if (!rc) rc = ident_make(r, &now);
    if (!rc) ts.ident = now;
    if (!rc && ckpt[0]) rc = resume(r, ckpt, &now, o->force, &ts);
    if (dv_run_agree_start(c, rc, cfg, r->train, r->val, &now, ckpt, &ts, r->err)) {
        dv_run_dir_free(&rd);
        dv_classifier_free(r);
        return DV_ERR;
    }
    dv_replicas_check(c, r->m);
    r->steps = dv_loader_steps(r->tl);
    r->flops = dv_model_train_flops(r->m);
    r->peak = r->st.peak_tflops > 0 ? r->st.peak_tflops * 1e12 : r->be->peak_flops(r->be->ctx);
    if (dv_run_start(c, &r->st, &rd, &ts,
                     r->tokens ? "epoch,step,lr,train_loss,train_acc,val_loss,"
                                 "val_acc,samples_per_s,epoch_time_s,tokens_per_"
                                 "s,train_ppl,val_ppl,tflops,mfu"
                               : "epoch,step,lr,train_loss,train_acc,val_loss,"
                                 "val_acc,samples_per_s,epoch_time_s,tflops,mfu",
                     &r->metrics, r->err)) {
        dv_classifier_free(r);
        return DV_ERR;
    }
    if (r->rank == 0) print_plan(r, r->steps);
    r->live = dv_progress_live(&r->st, c);
    r->lr = r->st.lr;
    dv_model *const models[] = {r->m};
    dv_loop loop = {.comm = c,
                    .st = &r->st,
                    .loader = r->tl,
                    .live = r->live,
                    .models = models,
                    .nmodels = 1,
                    .ctx = r,
                    .step = loop_step,
                    .flush = stats_flush,
                    .global = loop_global,
                    .progress = loop_progress,
                    .stopped = loop_stopped,
                    .epoch_end = loop_epoch_end,
                    .save = save};
    rc = dv_loop_run(&loop, &ts, stop_signal);
    if (!rc && r->rank == 0)
        printf("peak memory: %.1f MiB (backend %s)\n",
               (double)r->be->peak_bytes(r->be->ctx) / (1024.0 * 1024.0), r->be->name);
    if (!rc) dv_run_done(c, &r->st, ts.step, "");
    if (r->metrics) fclose(r->metrics);
    dv_classifier_free(r);
    return rc;
}
