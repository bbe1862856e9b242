/* backend_cpu.c — the CPU backend's table: create, destroy, and every op of
 * ops.def pointed at its dv_cpu_<op> (core_cpu.c, gemm_packed_cpu.c,
 * ops_cpu.c, seq_cpu.c, rnn_cpu.c). This file only builds the table; no
 * other file calls into it but through the table.
 */
#include "cpu-impl.h"

#include <cblas.h>
#include <stdlib.h>

static void cpu_destroy(dv_backend *be) {
    dv_cpu_ctx *cx = be->ctx;
    if (cx) {
        dv_cpu_free(cx, cx->pack_buf);
        dv_cpu_free(cx, cx->pack_a);
    }
    free(cx);
}

dv_backend *dv_backend_cpu_create(int threads) {
    dv_backend_box *box = calloc(1, sizeof *box);
    dv_cpu_ctx *cx = calloc(1, sizeof *cx);
    if (!box || !cx) {
        free(box);
        free(cx);
        return NULL;
    }
    cx->threads = threads;
    cx->pack_own = dv_cpu_pack_own(threads);
    if (threads > 0) openblas_set_num_threads(threads);

    dv_backend *be = &box->be;
    box->destroy = cpu_destroy;
    be->name = "cpu";
    be->ctx = cx;
#define DV_OP(ret, name, params) be->name = dv_cpu_##name;
#include "ops.def"
    return be;
}
