/* predict.c — `dive predict`: the model's outputs for every sample of an
 * inputs dataset, to HDF5 (/pred, /output, written through data's h5.h) or
 * CSV. The work runs on rank 0; other ranks only share in the error
 * agreement, so it behaves the same under mpirun as alone. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "h5.h"
#include "run-impl.h"

typedef struct sink {
    FILE *csv;
    dv_h5 *file; /* /pred and /output */
    int64_t n;
    int K;
} sink;

static int sink_open(sink *s, const char *path, int64_t n, int K, char *err) {
    memset(s, 0, sizeof(*s));
    s->n = n;
    s->K = K;
    size_t len = strlen(path);
    if (len > 4 && !strcmp(path + len - 4, ".csv")) {
        s->csv = fopen(path, "w");
        if (!s->csv) return DV_ERROR(err, "%s: cannot create: %s", path, strerror(errno));
        fprintf(s->csv, "index,pred");
        for (int k = 0; k < K; k++)
            fprintf(s->csv, ",out%d", k);
        fprintf(s->csv, "\n");
        return 0;
    }
    DV_TRY(dv_h5_create(&s->file, path, err));
    int64_t dims[2] = {n, K};
    DV_TRY(dv_h5_create_dataset(s->file, "/pred", DV_H5_I32, 1, dims, 0, err));
    return dv_h5_create_dataset(s->file, "/output", DV_H5_F32, 2, dims, 0, err);
}

static int sink_write(sink *s, int64_t first, int count, const int32_t *pred, const float *out) {
    if (s->csv) {
        for (int i = 0; i < count; i++) {
            fprintf(s->csv, "%lld,%d", (long long)(first + i), pred[i]);
            for (int k = 0; k < s->K; k++)
                fprintf(s->csv, ",%.6g", out[(size_t)i * s->K + k]);
            fprintf(s->csv, "\n");
        }
        return ferror(s->csv) ? -1 : 0;
    }
    char err[DV_ERR_LEN];
    if (dv_h5_write_rows(s->file, "/pred", DV_H5_I32, first, count, pred, err) != DV_OK ||
        dv_h5_write_rows(s->file, "/output", DV_H5_F32, first, count, out, err) != DV_OK)
        return -1;
    return 0;
}

static int sink_close(sink *s) {
    int rc = 0;
    if (s->csv && fclose(s->csv)) rc = -1;
    if (s->file && dv_h5_close(s->file, NULL) != DV_OK) rc = -1;
    s->csv = NULL;
    s->file = NULL;
    return rc;
}

static int predict_rank0(dv_model *m, const char *file, const char *x, float x_scale, float x_shift,
                         const char *out, int score, char *err) {
    dv_split *split = NULL;
    if (dv_split_open(&split, file, x, NULL, err)) return -1;
    const dv_split_info *info = dv_split_info_get(split);
    if (info->x_elems != m->in_elems) {
        dv_split_free(split);
        return DV_ERROR(err, "%s: %s has %zu elements per sample but the model's input has %zu",
                        file, x, info->x_elems, m->in_elems);
    }
    int B = m->max_batch, K = m->outputs;
    float *hx = malloc((size_t)B * m->in_elems * sizeof(float));
    float *ho = malloc((size_t)B * (size_t)K * sizeof(float));
    int32_t *hp = malloc((size_t)B * sizeof(int32_t));
    int64_t *idx = malloc((size_t)B * sizeof(int64_t));
    sink s = {0};
    dv_class_score sc = {0};
    float *prob = score ? malloc((size_t)B * (size_t)K * sizeof(float)) : NULL;
    int rc = hx && ho && hp && idx && (!score || prob) ? 0 : DV_ERROR(err, "out of memory");
    if (!rc && score && K < 2)
        rc = DV_ERROR(err, "--score needs a classifier (2 or more outputs); this model has %d", K);
    if (!rc && score && dv_class_score_init(&sc, K)) rc = DV_ERROR(err, "out of memory");
    if (!rc) rc = sink_open(&s, out, info->n, K, err);
    /* one output: a probability after a sigmoid (fused or not) or an MSE
     * regression is split at 0.5; raw scores and logits at 0 */
    const dv_layer *last = &m->layers[m->nlayers - 1];
    float thresh = (last->act == DV_ACT_SIGMOID || m->loss == DV_LOSS_MSE) ? 0.5f : 0.0f;
    for (int64_t first = 0; !rc && first < info->n; first += B) {
        int count = (int)(info->n - first < B ? info->n - first : B);
        for (int i = 0; i < count; i++)
            idx[i] = first + i;
        rc = dv_split_read(split, idx, count, x_scale, hx, NULL, NULL, err);
        if (rc) break;
        for (size_t i = 0; x_shift != 0.0f && i < (size_t)count * m->in_elems; i++)
            hx[i] += x_shift;
        m->be->to_device(m->be->ctx, m->input, hx, (size_t)count * m->in_elems * sizeof(float));
        dv_model_forward(m, count, 0);
        float *o = dv_model_outputs(m, count);
        m->be->to_host(m->be->ctx, ho, o, (size_t)count * (size_t)K * sizeof(float));
        for (int i = 0; i < count; i++) {
            const float *row = ho + (size_t)i * K;
            int best = 0;
            if (K == 1)
                best = row[0] > thresh;
            else
                for (int k = 1; k < K; k++)
                    if (row[k] > row[best]) best = k;
            hp[i] = best;
        }
        if (score) {
            dv_class_probs(m, ho, prob, count);
            dv_class_score_add(&sc, prob, count);
        }
        if (sink_write(&s, first, count, hp, ho)) rc = DV_ERROR(err, "%s: write failed", out);
    }
    if (sink_close(&s) && !rc) rc = DV_ERROR(err, "%s: write failed", out);
    if (!rc)
        printf("wrote predictions for %lld samples of %s %s to %s\n", (long long)info->n, file, x,
               out);
    if (!rc && score) {
        double conf, ent, is;
        dv_class_score_result(&sc, &conf, &ent, &is);
        printf("score of %s %s: %lld images, mean confidence %.4f, class entropy %.4f of %.4f "
               "(log %d), inception-like score %.3f of %d\n",
               file, x, (long long)sc.n, conf, ent, log((double)K), K, is, K);
    }
    dv_class_score_free(&sc);
    free(prob);
    free(hx);
    free(ho);
    free(hp);
    free(idx);
    dv_split_free(split);
    return rc;
}

dv_status dv_predict_run(dv_comm *c, dv_config *cfg, const char *ckpt, const char *in_file,
                         const char *split, const char *x_path, const char *out, int score) {
    char err[DV_ERR_LEN];
    dv_settings st;
    dv_backend *be = NULL;
    dv_model *m = NULL;
    char x[300];
    int rc = dv_config_find(cfg, "gan")
                 ? DV_ERROR(err,
                            "%s: a GAN config: dive predict runs classifiers and regressors; "
                            "look at a GAN's samples with dive sample CHECKPOINT -o grid.png",
                            cfg->path)
                 : dv_settings_read(cfg, &st, err);
    if (!rc) {
        if (x_path)
            snprintf(x, sizeof(x), "%s", x_path);
        else if (split)
            snprintf(x, sizeof(x), "%s/x", strcmp(split, "/") ? split : "");
        else if (st.has_val)
            snprintf(x, sizeof(x), "%s", st.val_x);
        else
            rc = DV_ERROR(err, "%s: nothing to predict: set [data] val, or pass --split or --x",
                          cfg->path);
    }
    if (!rc) rc = dv_backend_open(c, &st, &be, err);
    if (!rc) rc = dv_model_build(&m, cfg, be, st.loss, (uint64_t)st.seed, 256, err);
    if (!rc) rc = dv_config_check_used(cfg, err);
    if (!rc) rc = dv_checkpoint_load(ckpt, m, NULL, 0, err);
    rc = dv_agree(c, rc, err);
    if (!rc) {
        if (dv_comm_rank(c) == 0)
            rc = predict_rank0(m, in_file ? in_file : st.file, x, (float)st.x_scale,
                               (float)st.x_shift, out, score, err);
        rc = dv_agree(c, rc, err);
    }
    dv_model_free(m);
    if (be) dv_backend_free(be);
    return rc;
}
