/* gan.c — `dive train` of a GAN config: a generator G and a discriminator
 * D, each from its own [generator.<layer>] / [discriminator.<layer>]
 * sections, trained against each other over MPI ranks (docs/gan.md).
 *
 * One step, with G/W real images and as many noise vectors per rank:
 *
 *   z ~ N(0, 1) from (seed, step, global row); fake = G(z)
 *   D: BCE-with-logits of D(real) against real_label and of D(fake) against
 *      0 — fake detached: G gets nothing from this pass — then D's
 *      gradients are averaged over ranks and D's optimizer steps;
 *   G: the non-saturating loss BCE(D(fake), 1) through the updated D, whose
 *      input gradient flows back into G; G's gradients are averaged and
 *      G's optimizer steps. The D parameter gradients of this pass are
 *      dropped (D's gradients are zeroed before its next step).
 *
 * Noise and dropout masks depend only on (seed, step, global row), so 1 rank
 * and N ranks with the same global batch take the same steps — except
 * through batch norm, whose statistics are per rank (as with PyTorch DDP).
 *
 * With [gan] ema = d, a second generator holds the exponential moving
 * average of G's weights and batch-norm statistics (decay d, warmed up
 * over the first steps), and it is the one the grids, the score, and
 * `dive sample` draw from: it does not swing with every step of the game.
 *
 * Every epoch rank 0 draws a grid of samples from one fixed noise batch
 * (run_dir/samples-epoch-NNN.png). With [gan] score_classifier (a Dive
 * classifier checkpoint) every rank scores its share of score_samples
 * generated images, and the score of real images is printed at the start
 * as the reference.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "image.h"
#include "run-impl.h"

/* salts of the counter-based streams, so no two draw the same numbers */
#define SALT_NOISE 0x6e6f697365ULL
#define SALT_GRID  0x67726964ULL
#define SALT_SCORE 0x73636f7265ULL
#define SALT_G     0x47ULL
#define SALT_D     0x44ULL

/* the running sums of an epoch (dv_train_state.sums): D's loss and
 * correct count on real images, on generated ones, and G's */
enum { D_REAL_LOSS, D_REAL_OK, D_FAKE_LOSS, D_FAKE_OK, G_LOSS, G_FOOLED, NSUMS };

typedef struct side {
    const char *name; /* "generator" or "discriminator" */
    dv_config cfg;    /* its own layer sections after an [input] */
    dv_settings st;   /* [train] with [<name>.train] on top */
    dv_model *m;
} side;

typedef struct gan {
    dv_comm *comm;
    dv_config *cfg;
    dv_settings st;
    dv_backend *be;
    side g, d;
    dv_split *train;
    dv_loader *tl;
    int world, rank, local_batch, eval_batch, device_comm;
    long latent, grid, score_n;
    double real_label;
    double ema;             /* [gan] ema: the decay of the averaged generator; 0: none */
    dv_model *ge;           /* the averaged generator, or NULL */
    const char *classifier; /* [gan] score_classifier */
    dv_config ccfg;
    dv_settings cst;
    dv_model *cls;
    float *stats;        /* device: the step's NSUMS sums */
    dv_ring ring;        /* the steps' sums until they are read */
    int64_t steps;       /* per epoch */
    int live;            /* rank 0's progress is one live line */
    FILE *metrics;       /* rank 0: metrics.csv */
    double real[3];      /* the classifier's verdict on real images */
    float *d_stats;      /* D's own stats buffer (D->stats points into `stats`) */
    float *hz;           /* host noise (eval_batch, latent) */
    int64_t *hrow;       /* host global rows (eval_batch) */
    float *himg, *hprob; /* host images (eval_batch, elems), classes (eval_batch, K) */
    char *config_text;
    char err[DV_ERR_LEN];
} gan;

/* ---- setup ------------------------------------------------------------------ */

/* The model of [<name>.<layer>] for inputs of `shape`, with its optimizer
 * settings. */
static dv_status side_build(gan *r, side *s, const char *name, const int *shape, int ndim,
                            dv_loss loss, uint64_t salt, char *err) {
    s->name = name;
    s->st = r->st;
    char tname[DV_NAME_LEN];
    snprintf(tname, sizeof(tname), "%s.train", name);
    dv_config_section *t = NULL;
    for (int i = 0; i < r->cfg->nsec; i++) {
        if (strcmp(r->cfg->sec[i].type, tname)) continue;
        if (t)
            return DV_ERROR(err, "%s:%d: a second [%s] (the first is at line %d)", r->cfg->path,
                            r->cfg->sec[i].line, tname, t->line);
        t = &r->cfg->sec[i];
    }
    if (t && dv_settings_read_optimizer(r->cfg, t, &s->st, err)) return DV_ERR;
    if (dv_config_sub(r->cfg, name, shape, ndim, &s->cfg, err)) return DV_ERR;
    if (s->cfg.nsec < 2)
        return DV_ERROR(err, "%s: no [%s.<layer>] sections: a GAN needs the layers of both models",
                        r->cfg->path, name);
    dv_status rc = dv_model_build(&s->m, &s->cfg, r->be, loss,
                                  dv_rand_hash((uint64_t)r->st.seed, salt), r->eval_batch, err);
    dv_config_sub_done(r->cfg, &s->cfg);
    return rc;
}

static dv_status read_gan_section(gan *r, char *err) {
    dv_config *cfg = r->cfg;
    dv_config_section *g = dv_config_find(cfg, "gan"), *t = dv_config_find(cfg, "train");
    if (dv_config_has(t, "loss"))
        return DV_CONFIG_ERROR(err, cfg, t, "loss",
                               "a GAN's losses are fixed (BCE with logits for the discriminator, "
                               "the non-saturating loss for the generator): remove it");
    if (dv_config_int(cfg, g, "latent", 100, 1, 1 << 16, &r->latent, err) ||
        dv_config_int(cfg, g, "samples", 64, 1, 1024, &r->grid, err) ||
        dv_config_int(cfg, g, "score_samples", 1000, 1, 1 << 24, &r->score_n, err) ||
        dv_config_float(cfg, g, "real_label", 1.0, 0.5, 1.0, &r->real_label, err) ||
        dv_config_float(cfg, g, "ema", 0.0, 0.0, 0.99999, &r->ema, err) ||
        dv_config_str(cfg, g, "score_classifier", NULL, &r->classifier, err))
        return DV_ERR;
    for (int i = 0; i < cfg->nsec; i++) {
        const char *type = cfg->sec[i].type;
        if (strcmp(type, "data") && strcmp(type, "train") && strcmp(type, "gan") &&
            strncmp(type, "generator.", 10) && strncmp(type, "discriminator.", 14))
            return DV_ERROR(err,
                            "%s:%d: [%s] in a GAN config: its sections are [data], [train], "
                            "[gan], [generator.<layer>] and [discriminator.<layer>]",
                            cfg->path, cfg->sec[i].line, type);
    }
    return DV_OK;
}

/* The averaged generator starts as G. */
static void ema_reset(gan *r) {
    const dv_model *G = r->g.m;
    r->be->copy(r->be->ctx, r->ge->params, G->params, G->nparams * sizeof(float));
    r->be->copy(r->be->ctx, r->ge->buffers, G->buffers, G->nbuffers * sizeof(float));
}

/* After G's optimizer step `step` (from 0): ge = d ge + (1 - d) G, for the
 * weights and the batch-norm statistics alike, with d warmed up as
 * min(ema, (1 + t) / (10 + t)) so the first steps' weights fade fast. */
static void ema_update(gan *r, int64_t step) {
    const dv_model *G = r->g.m;
    const double t = (double)step;
    const float d = (float)fmin(r->ema, (1 + t) / (10 + t));
    float *dst[] = {r->ge->params, r->ge->buffers};
    const float *src[] = {G->params, G->buffers};
    const size_t n[] = {G->nparams, G->nbuffers};
    for (int i = 0; i < 2; i++) {
        if (!n[i]) continue;
        r->be->scale(r->be->ctx, dst[i], d, n[i]);
        r->be->axpy(r->be->ctx, 1 - d, src[i], dst[i], n[i]);
    }
}

/* The generator that draws the grids and the score: the averaged one when
 * there is one. */
static dv_model *sampler(const gan *r) {
    return r->ge ? r->ge : r->g.m;
}

/* Both models: G from noise of [gan] latent to images of the data's size,
 * D from those images to one logit. */
static dv_status build_models(gan *r, char *err) {
    const int lat = (int)r->latent;
    if (side_build(r, &r->g, "generator", &lat, 1, DV_LOSS_MSE, SALT_G, err)) return DV_ERR;
    const dv_layer *gl = &r->g.m->layers[r->g.m->nlayers - 1];
    const size_t elems = dv_split_info_get(r->train)->x_elems;
    char shape[64] = "";
    for (int k = 0; k < gl->out_ndim; k++)
        snprintf(shape + strlen(shape), sizeof(shape) - strlen(shape), "%s%d", k ? "," : "",
                 gl->out_shape[k]);
    if (gl->out_ndim != 3 || (gl->out_shape[0] != 1 && gl->out_shape[0] != 3))
        return DV_ERROR(err,
                        "%s: the generator puts out (%s): it must make images of 1 or 3 "
                        "channels, (C,H,W) — end it with a conv or a [reshape]",
                        r->cfg->path, shape);
    if (gl->out_elems != elems)
        return DV_ERROR(err,
                        "%s: the generator puts out (%s) = %zu values per image but %s %s has "
                        "%zu",
                        r->cfg->path, shape, gl->out_elems, r->st.file, r->st.train_x, elems);
    if (side_build(r, &r->d, "discriminator", gl->out_shape, 3, DV_LOSS_BCE, SALT_D, err))
        return DV_ERR;
    if (r->d.m->outputs != 1 || r->d.m->positions != 1)
        return DV_ERROR(err,
                        "%s: the discriminator must end in one output (the logit of \"real\"), "
                        "not %d",
                        r->cfg->path, r->d.m->outputs * r->d.m->positions);
    r->d_stats = r->d.m->stats;
    if (r->ema > 0) {
        if (dv_model_build(&r->ge, &r->g.cfg, r->be, DV_LOSS_MSE, 0, r->eval_batch, err))
            return DV_ERR;
        dv_model_forward_only(r->ge);
        ema_reset(r);
    }
    return DV_OK;
}

/* [gan] score_classifier: a Dive classifier checkpoint, built from its own
 * config on this backend. */
static dv_status load_classifier(gan *r, char *err) {
    char *text = dv_checkpoint_config(r->classifier, err);
    if (!text) {
        char why[DV_ERR_LEN];
        snprintf(why, sizeof(why), "%s", dv_error_text(err));
        return DV_ERROR(err,
                        "%s: [gan] score_classifier: %s (train a classifier first, e.g. "
                        "examples/fmnist_cnn.cfg, or remove the key)",
                        r->cfg->path, why);
    }
    dv_status rc = dv_config_load_text(&r->ccfg, r->classifier, text, err);
    free(text);
    if (!rc) rc = dv_settings_read(&r->ccfg, &r->cst, err);
    if (!rc && dv_config_find(&r->ccfg, "gan"))
        rc = DV_ERROR(err, "[gan] score_classifier = %s: a GAN checkpoint, not a classifier",
                      r->classifier);
    if (!rc) rc = dv_model_build(&r->cls, &r->ccfg, r->be, r->cst.loss, 0, r->eval_batch, err);
    if (!rc) dv_model_forward_only(r->cls); /* it only scores */
    if (!rc) rc = dv_checkpoint_load(r->classifier, r->cls, NULL, 0, err);
    if (!rc && r->st.x_scale == 0)
        rc = DV_ERROR(err, "%s: [data] x_scale = 0: the score cannot map samples back to pixels",
                      r->cfg->path);
    if (!rc && r->cls->in_elems != r->d.m->in_elems)
        rc = DV_ERROR(err,
                      "[gan] score_classifier = %s: the classifier takes %zu values per image, "
                      "the generator makes %zu",
                      r->classifier, r->cls->in_elems, r->d.m->in_elems);
    if (!rc && (r->cls->outputs < 2 || r->cls->positions != 1))
        rc = DV_ERROR(err,
                      "[gan] score_classifier = %s: not a classifier (it puts out %d values, "
                      "not one probability per class)",
                      r->classifier, r->cls->outputs * r->cls->positions);
    return rc;
}

static void gan_free(gan *r) {
    dv_loader_free(r->tl);
    dv_split_free(r->train);
    if (r->d.m) r->d.m->stats = r->d_stats;
    dv_model_free(r->g.m);
    dv_model_free(r->ge);
    dv_model_free(r->d.m);
    dv_model_free(r->cls);
    dv_config_free(&r->g.cfg);
    dv_config_free(&r->d.cfg);
    dv_config_free(&r->ccfg);
    if (r->be) {
        dv_ring_free(&r->ring);
        r->be->free(r->be->ctx, r->stats);
        dv_backend_free(r->be);
    }
    free(r->hz);
    free(r->hrow);
    free(r->himg);
    free(r->hprob);
    free(r->config_text);
}

static dv_status gan_setup(gan *r, dv_comm *c, dv_config *cfg) {
    memset(r, 0, sizeof(*r));
    r->comm = c;
    r->cfg = cfg;
    r->world = dv_comm_size(c);
    r->rank = dv_comm_rank(c);
    char *err = r->err;
    dv_status rc = read_gan_section(r, err);
    if (!rc) rc = dv_settings_read(cfg, &r->st, err);
    if (!rc && r->st.patience)
        rc = DV_ERROR(err,
                      "%s: [train] patience: a GAN has no validation loss to stop on; remove "
                      "it",
                      cfg->path);
    if (!rc && r->st.batch % r->world)
        rc = DV_ERROR(err,
                      "%s: [train] batch = %ld does not divide across %d ranks (each rank "
                      "takes batch / ranks samples); use a multiple of %d",
                      cfg->path, r->st.batch, r->world, r->world);
    if (dv_agree(c, rc, err)) return DV_ERR;
    r->local_batch = (int)(r->st.batch / r->world);
    r->eval_batch = dv_settings_eval_batch(&r->st, cfg, r->local_batch);
    if (r->st.comm_timeout >= 0) dv_comm_set_timeout(c, r->st.comm_timeout);
    rc = dv_backend_open(c, &r->st, &r->be, err);
    /* the images alone: a GAN reads no labels */
    if (!rc) rc = dv_split_open(&r->train, r->st.file, r->st.train_x, NULL, err);
    if (!rc && dv_split_info_get(r->train)->n < r->st.batch)
        rc = DV_ERROR(err, "%s: %s has %lld images, fewer than one global batch of %ld", r->st.file,
                      r->st.train_x, (long long)dv_split_info_get(r->train)->n, r->st.batch);
    if (!rc) rc = build_models(r, err);
    if (!rc) rc = dv_config_check_used(cfg, err);
    if (!rc && r->classifier) rc = load_classifier(r, err);
    if (dv_agree(c, rc, err) || dv_backend_agree(c, &r->st, r->be, err)) return DV_ERR;
    rc = dv_run_loader_create(r->train, &r->st, c, r->local_batch, 0, 0, r->be, &r->tl, err);
    const size_t B = (size_t)r->eval_batch;
    const int K = r->cls ? r->cls->outputs : 1;
    r->hz = malloc(B * (size_t)r->latent * sizeof(float));
    r->hrow = malloc(B * sizeof(int64_t));
    r->himg =
        malloc(B * (r->d.m->in_elems > (size_t)K ? r->d.m->in_elems : (size_t)K) * sizeof(float));
    r->hprob = malloc(B * (size_t)K * sizeof(float));
    r->config_text = dv_config_text(cfg);
    r->stats = r->be->alloc(r->be->ctx, NSUMS * sizeof(float));
    if (!rc && (!r->hz || !r->hrow || !r->himg || !r->hprob || !r->config_text || !r->stats))
        rc = DV_ERROR(err, "out of memory");
    if (!rc) rc = dv_ring_init(&r->ring, r->be, r->stats, NSUMS, err);
    if (!rc) {
        size_t most = 1;
        const dv_model *ms[] = {r->g.m, r->d.m};
        for (int i = 0; i < 2; i++) {
            most = ms[i]->nparams > most ? ms[i]->nparams : most;
            most = ms[i]->nbuffers > most ? ms[i]->nbuffers : most;
        }
        rc = dv_device_comm_open(c, &r->st, r->be, cfg, most, &r->device_comm, err);
    }
    return dv_agree(c, rc, err);
}

/* ---- generating ------------------------------------------------------------- */

/* Noise rows r->hrow[0..n) of the stream `seed` into G's input, and the
 * rows as G's row ids (its dropout masks): row j is the same vector on
 * every rank and machine. */
static void noise_to_g(gan *r, dv_model *G, uint64_t seed, int n) {
    const size_t L = (size_t)r->latent;
    for (int k = 0; k < n; k++)
        for (size_t i = 0; i < L; i++)
            r->hz[(size_t)k * L + i] = dv_randn(seed, (uint64_t)r->hrow[k] * L + i);
    void *dst[2] = {G->input, G->row_id};
    const void *src[2] = {r->hz, r->hrow};
    size_t bytes[2] = {(size_t)n * L * sizeof(float), (size_t)n * sizeof(int64_t)};
    r->be->upload(r->be->ctx, 2, dst, src, bytes);
}

/* The sampler's images for noise rows r->hrow[0..n) of `seed` (eval mode)
 * into r->himg. */
static void generate(gan *r, uint64_t seed, int n) {
    dv_model *G = sampler(r);
    noise_to_g(r, G, seed, n);
    dv_model_forward(G, n, 0);
    r->be->to_host(r->be->ctx, r->himg, G->acts[G->nlayers - 1],
                   (size_t)n * G->layers[G->nlayers - 1].out_elems * sizeof(float));
}

/* `count` images from the noise stream of `seed` (rows 0..count-1; eval
 * mode), tiled into a PNG at `path`. Values map to grey levels by G's
 * output activation: tanh from [-1, 1], sigmoid from [0, 1], else the
 * samples' own range. The training grid and `dive sample` of the same seed
 * draw the same images. */
static dv_status write_samples(gan *r, uint64_t seed, long count, const char *path, char *err) {
    const dv_layer *gl = &r->g.m->layers[r->g.m->nlayers - 1];
    const size_t elems = gl->out_elems;
    float *all = malloc((size_t)count * elems * sizeof(float));
    if (!all) return DV_ERROR(err, "out of memory");
    const uint64_t nseed = dv_rand_hash(seed ^ SALT_GRID, 0);
    for (long first = 0; first < count; first += r->eval_batch) {
        int n = (int)(count - first < r->eval_batch ? count - first : r->eval_batch);
        for (int k = 0; k < n; k++)
            r->hrow[k] = first + k;
        generate(r, nseed, n);
        memcpy(all + (size_t)first * elems, r->himg, (size_t)n * elems * sizeof(float));
    }
    float lo = -1, hi = 1;
    if (gl->act == DV_ACT_SIGMOID) {
        lo = 0;
    } else if (gl->act != DV_ACT_TANH) {
        lo = hi = all[0];
        for (size_t i = 1; i < (size_t)count * elems; i++) {
            lo = all[i] < lo ? all[i] : lo;
            hi = all[i] > hi ? all[i] : hi;
        }
        if (hi <= lo) hi = lo + 1;
    }
    dv_status rc = r->be->check(r->be->ctx, err);
    if (!rc)
        rc = dv_image_grid_png(path, all, (int)count, gl->out_shape[0], gl->out_shape[1],
                               gl->out_shape[2], lo, hi, 0, err);
    free(all);
    return rc;
}

/* The classifier's verdict on n images — generated from the score noise
 * (split NULL) or the first n of `split` — each rank taking rows rank,
 * rank + W, ...; summed over ranks. out: confidence, class entropy, score.
 * Collective. */
static dv_status score(gan *r, dv_split *split, int64_t n, double out[3]) {
    dv_model *cls = r->cls;
    const dv_backend *be = r->be;
    const int K = cls->outputs;
    const size_t elems = cls->in_elems;
    /* generator space -> the data's raw values -> the classifier's input */
    const double a = r->cst.x_scale / r->st.x_scale,
                 b = r->cst.x_shift - r->st.x_shift * r->cst.x_scale / r->st.x_scale;
    const uint64_t seed = dv_rand_hash((uint64_t)r->st.seed ^ SALT_SCORE, 0);
    dv_class_score sc;
    dv_status rc = dv_class_score_init(&sc, K) ? DV_ERROR(r->err, "out of memory") : DV_OK;
    int64_t j = r->rank;
    while (!rc && j < n) {
        int count = 0;
        for (; count < r->eval_batch && j < n; j += r->world)
            r->hrow[count++] = j;
        if (split) {
            rc = dv_split_read(split, r->hrow, count, (float)r->st.x_scale, r->himg, NULL, NULL,
                               r->err)
                     ? -1
                     : 0;
            for (size_t i = 0; i < (size_t)count * elems; i++)
                r->himg[i] += (float)r->st.x_shift;
        } else {
            generate(r, seed, count);
        }
        for (size_t i = 0; i < (size_t)count * elems; i++)
            r->himg[i] = (float)(a * r->himg[i] + b);
        be->to_device(be->ctx, cls->input, r->himg, (size_t)count * elems * sizeof(float));
        dv_model_forward(cls, count, 0);
        be->to_host(be->ctx, r->himg, dv_model_outputs(cls, count),
                    (size_t)count * (size_t)K * sizeof(float));
        dv_class_probs(cls, r->himg, r->hprob, count);
        dv_class_score_add(&sc, r->hprob, count);
    }
    if (dv_agree(r->comm, rc, r->err)) {
        dv_class_score_free(&sc);
        return DV_ERR;
    }
    /* the sums of every rank: n, confidences, sum p log p, histogram, mean p */
    const int len = 3 + 2 * K;
    double *v = malloc((size_t)len * sizeof(double));
    if (!v) dv_comm_abort(r->comm, 1, "out of memory");
    v[0] = (double)sc.n, v[1] = sc.sum_conf, v[2] = sc.sum_neg_h;
    memcpy(v + 3, sc.hist, (size_t)K * sizeof(double));
    memcpy(v + 3 + K, sc.sum_p, (size_t)K * sizeof(double));
    if (dv_comm_allreduce_double(r->comm, v, len, DV_REDUCE_SUM, r->err))
        dv_comm_abort(r->comm, 1, r->err);
    sc.n = (int64_t)v[0], sc.sum_conf = v[1], sc.sum_neg_h = v[2];
    memcpy(sc.hist, v + 3, (size_t)K * sizeof(double));
    memcpy(sc.sum_p, v + 3 + K, (size_t)K * sizeof(double));
    free(v);
    dv_class_score_result(&sc, &out[0], &out[1], &out[2]);
    dv_class_score_free(&sc);
    return DV_OK;
}

/* The reference: the classifier's score of real images ([data] val, else
 * the training images), printed by rank 0. */
static dv_status score_real(gan *r, double out[3]) {
    const char *x = r->st.has_val ? r->st.val_x : r->st.train_x;
    dv_split *s = NULL;
    dv_status rc = dv_split_open(&s, r->st.file, x, NULL, r->err);
    if (!rc && dv_split_info_get(s)->x_elems != r->cls->in_elems)
        rc = DV_ERROR(r->err, "%s: %s has %zu values per image, the generator makes %zu",
                      r->st.file, x, dv_split_info_get(s)->x_elems, r->cls->in_elems);
    if (dv_agree(r->comm, rc, r->err)) {
        dv_split_free(s);
        return DV_ERR;
    }
    int64_t n = dv_split_info_get(s)->n < r->score_n ? dv_split_info_get(s)->n : r->score_n;
    rc = score(r, s, n, out);
    dv_split_free(s);
    if (!rc && r->rank == 0)
        printf("score of %lld real images (%s %s) by %s: %.3f (confidence %.4f, class "
               "entropy %.4f)\n",
               (long long)n, r->st.file, x, r->classifier, out[2], out[0], out[1]);
    return rc;
}

/* ---- training --------------------------------------------------------------- */

/* Averages a model's gradients over ranks, clips them and takes its
 * optimizer step. */
static void side_update(gan *r, side *s, int64_t step, int64_t steps) {
    dv_model *m = s->m;
    const dv_backend *be = r->be;
    dv_average_on_device(r->comm, be, r->device_comm, m->grads, m->nparams);
    if (s->st.clip_norm > 0) {
        dv_device_sync(r->comm, be, r->device_comm, 0);
        dv_clip_grad_norm(be, m->grads, m->nparams, s->st.clip_norm);
    }
    dv_opt_params op =
        dv_settings_opt_params(&s->st, dv_lr_at(&s->st, step, steps), (long)step + 1);
    be->opt_step(be->ctx, &op, m->params, m->grads, m->state1, m->state2, m->nparams);
}

/* One pass of D over its input against `target`, adding its (loss,
 * correct) to stats[at], gradients into D's (and, with dinput, the input's
 * into G's output gradient). */
static void d_pass(gan *r, float target, int at, uint64_t pass_seed, int L, float *dinput) {
    dv_model *D = r->d.m;
    r->be->fill(r->be->ctx, D->targets, target, (size_t)L);
    D->stats = r->stats + at;
    D->step_seed = pass_seed;
    D->dinput = dinput;
    dv_model_forward(D, L, 1);
    dv_model_loss(D, L, 1.0f / (float)L);
    dv_model_backward(D, L, NULL, NULL);
    D->dinput = NULL;
}

static void gan_step(gan *r, const dv_batch *b, int64_t step, int64_t steps) {
    dv_model *G = r->g.m, *D = r->d.m;
    const dv_backend *be = r->be;
    const int L = b->count;
    const uint64_t seed = (uint64_t)r->st.seed;
    be->fill(be->ctx, r->stats, 0.0f, NSUMS);
    /* fake = G(z), z the global rows rank*L .. rank*L + L-1 of this step */
    for (int k = 0; k < L; k++)
        r->hrow[k] = (int64_t)r->rank * L + k;
    noise_to_g(r, G, dv_rand_hash(seed ^ SALT_NOISE, (uint64_t)step), L);
    G->step_seed = dv_rand_hash(seed ^ SALT_G, (uint64_t)step);
    dv_model_forward(G, L, 1);
    const float *fake = G->acts[G->nlayers - 1];
    const size_t in_bytes = (size_t)L * D->in_elems * sizeof(float);

    /* D on the real batch, then on the detached fakes */
    be->fill(be->ctx, D->grads, 0.0f, D->nparams);
    void *dst[2] = {D->input, D->row_id};
    const void *src[2] = {b->x, b->global_pos};
    size_t bytes[2] = {in_bytes, (size_t)L * sizeof(int64_t)};
    be->upload(be->ctx, 2, dst, src, bytes);
    d_pass(r, (float)r->real_label, D_REAL_LOSS, dv_rand_hash(seed ^ SALT_D, 3 * (uint64_t)step), L,
           NULL);
    be->copy(be->ctx, D->input, fake, in_bytes);
    be->to_device(be->ctx, D->row_id, r->hrow, (size_t)L * sizeof(int64_t));
    d_pass(r, 0.0f, D_FAKE_LOSS, dv_rand_hash(seed ^ SALT_D, 3 * (uint64_t)step + 1), L, NULL);
    side_update(r, &r->d, step, steps);

    /* G through the updated D: its gradient at D's input is G's output
     * gradient */
    be->fill(be->ctx, G->grads, 0.0f, G->nparams);
    d_pass(r, 1.0f, G_LOSS, dv_rand_hash(seed ^ SALT_D, 3 * (uint64_t)step + 2), L, G->dbuf[0]);
    dv_model_backward(G, L, NULL, NULL);
    side_update(r, &r->g, step, steps);
    if (r->ge) ema_update(r, step);
    dv_device_sync(r->comm, be, r->device_comm, 1); /* the host runs at most one step ahead */
}

/* Adds the ring's per-step sums to ts in step order (this rank's). */
static void loop_flush(void *ctx, dv_train_state *ts) {
    gan *r = ctx;
    dv_ring_flush(&r->ring, r->comm, r->device_comm, ts->sums, "the GAN's losses");
}

/* ts with the epoch's running sums of every rank; at an epoch's end both
 * models' batch norm statistics are averaged too (collective). */
static void loop_global(void *ctx, const dv_train_state *ts, dv_train_state *out, int at_end) {
    gan *r = ctx;
    *out = *ts;
    double v[NSUMS + 1];
    memcpy(v, ts->sums, NSUMS * sizeof(double));
    v[NSUMS] = ts->seen;
    if (dv_comm_allreduce_double(r->comm, v, NSUMS + 1, DV_REDUCE_SUM, r->err))
        dv_comm_abort(r->comm, 1, r->err);
    memcpy(out->sums, v, NSUMS * sizeof(double));
    out->seen = v[NSUMS];
    dv_model *ms[] = {r->g.m, r->d.m, r->ge};
    for (int i = 0; at_end && i < 2 + (r->ge != NULL); i++)
        dv_average_on_device(r->comm, r->be, r->device_comm, ms[i]->buffers, ms[i]->nbuffers);
}

/* D's loss (real + fake) and G's, per sample, from the sums of ts. */
static double d_loss(const dv_train_state *ts) {
    return (ts->sums[D_REAL_LOSS] + ts->sums[D_FAKE_LOSS]) / (ts->seen > 0 ? ts->seen : 1);
}

static double g_loss(const dv_train_state *ts) {
    return ts->sums[G_LOSS] / (ts->seen > 0 ? ts->seen : 1);
}

static void loop_progress(void *ctx, const dv_train_state *ts, int64_t epoch, int64_t step,
                          int64_t steps, double rate, double eta) {
    const gan *r = ctx;
    printf("%sepoch %lld/%ld  step %lld/%lld  d_loss %.4f  g_loss %.4f  %.0f samples/s  ETA "
           "%d:%02d%s",
           r->live ? "\r" : "", (long long)epoch + 1, r->st.epochs, (long long)step,
           (long long)steps, d_loss(ts), g_loss(ts), rate, (int)(eta / 60), (int)eta % 60,
           r->live ? "   " : "\n");
    fflush(stdout);
}

static void loop_stopped(void *ctx, const dv_train_state *g, double rate) {
    const gan *r = ctx;
    if (r->rank == 0)
        printf("d_loss %.4f g_loss %.4f | train %.0f samples/s\n", d_loss(g), g_loss(g), rate);
}

/* The epoch's sample grid and score, its line and metrics.csv row. */
static int loop_epoch_end(void *ctx, dv_train_state *ts, const dv_train_state *g, int64_t epoch,
                          double rate, double t0) {
    gan *r = ctx;
    dv_status rc = DV_OK;
    if (r->rank == 0) {
        char path[1200];
        snprintf(path, sizeof(path), "%s/samples-epoch-%03lld.png", r->st.run_dir,
                 (long long)epoch + 1);
        rc = write_samples(r, (uint64_t)r->st.seed, r->grid, path, r->err);
    }
    if (dv_agree(r->comm, rc, r->err)) return -1;
    double sc[3] = {NAN, NAN, NAN};
    if (r->cls && score(r, NULL, r->score_n, sc)) return -1;
    const double *v = g->sums, n = g->seen > 0 ? g->seen : 1;
    ts->epoch = epoch + 1;
    ts->step_in_epoch = 0;
    ts->seen = 0;
    memset(ts->sums, 0, sizeof(ts->sums));
    int best = r->cls && -sc[2] < ts->best_val_loss; /* the highest score */
    if (best) ts->best_val_loss = -sc[2];
    double secs = dv_now() - t0;
    if (r->rank == 0) {
        printf("epoch %lld/%ld | d_loss %.4f g_loss %.4f | D right on real %.3f, on fake %.3f",
               (long long)epoch + 1, r->st.epochs, d_loss(g), g_loss(g), v[D_REAL_OK] / n,
               v[D_FAKE_OK] / n);
        if (r->cls)
            printf(" | score %.3f (real %.3f: %.0f%%) confidence %.3f entropy %.3f", sc[2],
                   r->real[2], 100.0 * sc[2] / r->real[2], sc[0], sc[1]);
        printf(" | %.0f samples/s | %.1f s%s\n", rate, secs, best ? " | best" : "");
        fflush(stdout);
        if (r->metrics) {
            fprintf(r->metrics, "%lld,%lld,%g,%.6f,%.6f,%.6f,%.6f,%.1f,%.3f", (long long)epoch + 1,
                    (long long)ts->step, dv_lr_at(&r->g.st, ts->step - 1, r->steps), d_loss(g),
                    g_loss(g), v[D_REAL_OK] / n, v[D_FAKE_OK] / n, rate, secs);
            if (r->cls) fprintf(r->metrics, ",%.4f,%.4f,%.4f", sc[2], sc[0], sc[1]);
            fprintf(r->metrics, "\n");
            fflush(r->metrics);
        }
    }
    return best ? DV_LOOP_BEST : 0;
}

/* Rank 0 writes both models and optimizers, and links last.h5 (and
 * best.h5) to it; every rank learns whether it worked. Collective. */
static dv_status gan_save(void *ctx, const dv_train_state *ts, int best) {
    gan *r = ctx;
    static const char *const roots[] = {"/generator", "/discriminator", "/generator_ema"};
    dv_model *const models[] = {r->g.m, r->d.m, r->ge};
    return dv_run_save(r->comm, &r->st, 2 + (r->ge != NULL), models, roots, ts, r->config_text,
                       best, r->err);
}

static dv_status gan_resume(gan *r, const char *ckpt, const dv_run_ident *now, int force,
                            dv_train_state *ts) {
    dv_status rc = dv_checkpoint_load_model(ckpt, "/generator", r->g.m, ts, 1, r->err);
    if (!rc) rc = dv_checkpoint_load_model(ckpt, "/discriminator", r->d.m, NULL, 1, r->err);
    /* a run that turns on ema averages from the generator it resumes */
    if (!rc && r->ge && dv_checkpoint_has(ckpt, "/generator_ema"))
        rc = dv_checkpoint_load_model(ckpt, "/generator_ema", r->ge, NULL, 0, r->err);
    else if (!rc && r->ge)
        ema_reset(r);
    if (!rc && ts->nsums != NSUMS)
        rc = DV_ERROR(r->err, "%s: not a GAN checkpoint of this Dive (no GAN metrics in /train)",
                      ckpt);
    if (!rc)
        rc = dv_resume_state(r->comm, ckpt, &r->st, now, dv_loader_steps(r->tl), force, ts, r->err);
    return rc;
}

/* This run's identity (dv_run_ident): both optimizers and the images. */
static dv_status gan_ident(gan *r, dv_run_ident *id) {
    char opt[96];
    snprintf(opt, sizeof opt, "generator %s, discriminator %s", dv_opt_names[r->g.st.optimizer],
             dv_opt_names[r->d.st.optimizer]);
    return dv_run_ident_make(id, opt, "gan", &r->st, r->st.train_x, r->train, r->err);
}

/* ---- the loop's callbacks (dv_loop) ---------------------------------------- */

static void loop_step(void *ctx, const dv_batch *b, dv_train_state *ts, int64_t s, int64_t first) {
    gan *r = ctx;
    (void)s, (void)first;
    gan_step(r, b, ts->step, r->steps);
    if (dv_ring_push(&r->ring, ts->step)) loop_flush(r, ts);
    ts->seen += b->count;
}

dv_status dv_gan_run(dv_comm *c, dv_config *cfg, const dv_train_opts *o, int *stop_signal) {
    *stop_signal = 0;
    gan R, *r = &R;
    if (gan_setup(r, c, cfg)) {
        gan_free(r);
        return DV_ERR;
    }
    dv_train_state ts = {.world_size = r->world,
                         .global_batch = r->st.batch,
                         .seed = r->st.seed,
                         .best_val_loss = INFINITY,
                         .nsums = NSUMS};
    dv_run_dir rd;
    dv_status rc = dv_run_begin(c, &r->st, o, &rd, r->err);
    const char *ckpt = rd.ckpt;
    dv_run_ident now;
    if (!rc) rc = gan_ident(r, &now);
    if (!rc) ts.ident = now;
    if (!rc && ckpt[0]) rc = gan_resume(r, ckpt, &now, o->force, &ts);
    if (dv_run_agree_start(c, rc, cfg, r->train, NULL, &now, ckpt, &ts, r->err)) {
        dv_run_dir_free(&rd);
        gan_free(r);
        return DV_ERR;
    }
    dv_replicas_check(c, r->g.m);
    dv_replicas_check(c, r->d.m);
    int64_t steps = dv_loader_steps(r->tl);
    if (r->rank == 0) {
        printf("generator ");
        dv_model_print(r->g.m, stdout);
        printf("discriminator ");
        dv_model_print(r->d.m, stdout);
        printf("data: %s %s: %lld images; %d rank%s x %d = global batch %ld; %lld steps/epoch; "
               "%s; backend %s\n",
               r->st.file, r->st.train_x, (long long)dv_split_info_get(r->train)->n, r->world,
               r->world > 1 ? "s" : "", r->local_batch, r->st.batch, (long long)steps,
               dv_loader_in_memory(r->tl) ? "in memory" : "streaming", r->be->name);
        if (r->be->stream)
            printf("gradients %s\n", dv_comm_device_path(c) ? dv_comm_device_path(c) : "?");
        fflush(stdout);
    }
    if (r->cls && score_real(r, r->real)) {
        dv_run_dir_free(&rd);
        gan_free(r);
        return DV_ERR;
    }
    if (dv_run_start(c, &r->st, &rd, &ts,
                     r->cls ? "epoch,step,lr,d_loss,g_loss,d_real_acc,d_fake_acc,"
                              "samples_per_s,epoch_time_s,score,confidence,class_"
                              "entropy"
                            : "epoch,step,lr,d_loss,g_loss,d_real_acc,d_fake_acc,"
                              "samples_per_s,epoch_time_s",
                     &r->metrics, r->err)) {
        gan_free(r);
        return DV_ERR;
    }
    r->live = dv_progress_live(&r->st, c);
    r->steps = steps;
    dv_model *const models[] = {r->g.m, r->d.m, r->ge};
    dv_loop loop = {.comm = c,
                    .st = &r->st,
                    .loader = r->tl,
                    .live = r->live,
                    .models = models,
                    .nmodels = 2 + (r->ge != NULL),
                    .ctx = r,
                    .step = loop_step,
                    .flush = loop_flush,
                    .global = loop_global,
                    .progress = loop_progress,
                    .stopped = loop_stopped,
                    .epoch_end = loop_epoch_end,
                    .save = gan_save};
    rc = dv_loop_run(&loop, &ts, stop_signal);
    if (!rc) dv_run_done(c, &r->st, ts.step, "; samples-epoch-*.png");
    if (r->metrics) fclose(r->metrics);
    gan_free(r);
    return rc;
}

/* ---- dive sample of a GAN checkpoint ------------------------------------------ */

dv_status dv_gan_sample(const char *ckpt, const char *config_text, const char *out, long count,
                        long seed, dv_backend *be, char *err) {
    dv_config cfg = {0};
    gan R = {0}, *r = &R;
    r->cfg = &cfg;
    r->eval_batch = 256;
    dv_status rc = dv_config_load_text(&cfg, ckpt, config_text, err);
    if (!rc)
        rc = dv_config_int(&cfg, dv_config_find(&cfg, "gan"), "latent", 100, 1, 1 << 16, &r->latent,
                           err);
    const int lat = (int)r->latent;
    if (!rc) rc = dv_config_sub(&cfg, "generator", &lat, 1, &r->g.cfg, err);
    if (!rc) rc = dv_model_build(&r->g.m, &r->g.cfg, be, DV_LOSS_MSE, 0, r->eval_batch, err);
    /* the averaged generator, when the run kept one ([gan] ema) */
    const char *root = dv_checkpoint_has(ckpt, "/generator_ema") ? "/generator_ema" : "/generator";
    if (!rc) dv_model_forward_only(r->g.m);
    if (!rc) rc = dv_checkpoint_load_model(ckpt, root, r->g.m, NULL, 0, err);
    const dv_layer *gl = rc ? NULL : &r->g.m->layers[r->g.m->nlayers - 1];
    if (!rc && (gl->out_ndim != 3 || (gl->out_shape[0] != 1 && gl->out_shape[0] != 3)))
        rc = DV_ERROR(err, "%s: the generator does not make images of 1 or 3 channels", ckpt);
    if (!rc) {
        r->hz = malloc((size_t)r->eval_batch * (size_t)r->latent * sizeof(float));
        r->hrow = malloc((size_t)r->eval_batch * sizeof(int64_t));
        r->himg = malloc((size_t)r->eval_batch * gl->out_elems * sizeof(float));
        if (!r->hz || !r->hrow || !r->himg) rc = DV_ERROR(err, "out of memory");
    }
    r->be = be;
    if (!rc) rc = write_samples(r, (uint64_t)seed, count, out, err);
    if (!rc) printf("wrote %ld samples of %s to %s\n", count, ckpt, out);
    r->be = NULL; /* borrowed */
    gan_free(r);
    dv_config_free(&cfg);
    return rc;
}
