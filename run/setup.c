/* setup.c — what every subcommand that runs a model does before its first
 * step, and the device work every training loop shares: agreeing on errors
 * across ranks, choosing the backend (and the gradient path on a GPU),
 * making loaders from the settings, checking that the replicas start
 * equal, and waiting for or averaging device buffers.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "run-impl.h"

dv_status dv_agree(dv_comm *c, dv_status st, const char *err) {
    int first = dv_comm_first_failed(c, st == DV_OK);
    if (first < 0) return DV_OK;
    if (first == dv_comm_rank(c)) dv_error_print("dive: error", err);
    return DV_ERR;
}

dv_status dv_backend_open(dv_comm *c, const dv_settings *st, dv_backend **out, char *err) {
    *out = NULL;
    int ndev = st->backend == DV_BACKEND_CPU ? 0 : dv_backend_cuda_device_count();
    if (st->backend == DV_BACKEND_CUDA || (st->backend == DV_BACKEND_AUTO && ndev > 0)) {
        /* one GPU per rank by local rank; ranks beyond the GPUs share them */
        int dev = dv_comm_select_device(c, ndev);
        /* with no device, creating one says why (no GPU, or no CUDA build) */
        *out = dv_backend_cuda_create(dev >= 0 ? dev : 0, st->precision, err);
        if (*out) return DV_OK;
        if (st->backend == DV_BACKEND_CUDA) return dv_error_context(err, "backend = cuda");
    }
    int threads = (int)st->threads;
    if (!threads) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        int local = dv_comm_local_size(c);
        threads = (int)(cores / (local > 0 ? local : 1));
        if (threads < 1) threads = 1;
    }
    *out = dv_backend_cpu_create(threads);
    return *out ? DV_OK : DV_ERROR(err, "cannot create the CPU backend");
}

dv_status dv_backend_agree(dv_comm *c, const dv_settings *st, const dv_backend *be, char *err) {
    double cuda = be->stream ? 1.0 : 0.0;
    const int world = dv_comm_size(c);
    if (dv_comm_allreduce_double(c, &cuda, 1, DV_REDUCE_SUM, err)) dv_comm_abort(c, 1, err);
    dv_status rc = DV_OK;
    if (cuda > 0 && cuda < world)
        rc = DV_ERROR(err,
                      "backend = %s: %.0f of %d ranks found a GPU and the others did not; set "
                      "backend = cpu, or run where every rank has a GPU",
                      dv_backend_kind_names[st->backend], cuda, world);
    if (!rc && dv_comm_rank(c) == 0 && st->precision != DV_PRECISION_FP32 && !be->stream)
        printf("note: precision = %s applies to the CUDA backend; the CPU computes in fp32\n",
               dv_precision_names[st->precision]);
    return dv_agree(c, rc, err);
}

dv_status dv_device_comm_open(dv_comm *c, const dv_settings *st, const dv_backend *be,
                              const dv_config *cfg, size_t most, int *on, char *err) {
    *on = 0;
    if (!be->stream) {
        if (st->comm == DV_COMM_DEVICE_NCCL)
            return DV_ERROR(err,
                            "%s: [train] comm = nccl needs the CUDA backend (this run uses %s)",
                            cfg->path, be->name);
        return DV_OK;
    }
    /* gradients live on the GPU: NCCL, or MPI through host memory */
    int ndev = dv_backend_cuda_device_count();
    DV_TRY(dv_comm_device_init(c, dv_comm_select_device(c, ndev), ndev, st->comm, most, err));
    *on = 1;
    return DV_OK;
}

dv_status dv_run_loader_create(dv_split *s, const dv_settings *st, dv_comm *c, int batch, int eval,
                               int streams, const dv_backend *be, dv_loader **out, char *err) {
    dv_loader_config lc = {0};
    lc.sampler.n = dv_split_info_get(s)->n;
    lc.sampler.global_batch = (int)st->batch;
    lc.sampler.world = dv_comm_size(c);
    lc.sampler.rank = dv_comm_rank(c);
    lc.sampler.seed = (uint64_t)st->seed;
    lc.sampler.shuffle = streams ? DV_ORDER_STREAMS : DV_ORDER_SHUFFLE;
    lc.eval = eval;
    lc.batch = batch;
    lc.x_scale = (float)st->x_scale;
    lc.x_shift = (float)st->x_shift;
    lc.memory_budget = (size_t)st->memory_mb << 20;
    lc.prefetch = (int)st->prefetch;
    lc.host_alloc = be->host_alloc;
    lc.host_free = be->host_free;
    lc.host_ctx = be->ctx;
    return dv_loader_create(out, s, &lc, err);
}

void dv_replicas_check(dv_comm *c, const dv_model *m) {
    /* the backend's fingerprint: one pass on the device, no host copy */
    const uint64_t f = m->be->fingerprint(m->be->ctx, m->params, m->nparams);
    if (!dv_comm_all_equal(c, &f, sizeof f))
        dv_comm_abort(c, 1, "the model replicas differ across ranks at start-up");
}

void dv_device_sync(dv_comm *c, const dv_backend *be, int device_comm, int keep) {
    if (!be->stream) return;
    char err[DV_ERR_LEN];
    if (device_comm && dv_comm_stream_wait(c, be->stream, keep, err)) dv_comm_abort(c, 1, err);
    if (be->check(be->ctx, err)) dv_comm_abort(c, 1, err);
}

void dv_average_on_device(dv_comm *c, const dv_backend *be, int device_comm, float *x, size_t n) {
    if (!n || dv_comm_size(c) == 1) return;
    char err[DV_ERR_LEN];
    if (!be->stream) {
        if (dv_comm_allreduce_avg(c, x, n, err)) dv_comm_abort(c, 1, err);
        return;
    }
    dv_comm_request *q;
    if (dv_comm_allreduce_start(c, x, n, be->stream, &q, err) || dv_comm_wait(c, q, err))
        dv_comm_abort(c, 1, err);
    dv_device_sync(c, be, device_comm, 0);
}
