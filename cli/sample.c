/* sample.c — `dive sample CHECKPOINT`: text from a language model.
 *
 * The checkpoint holds everything: the config (the model's layers), the
 * parameters and the vocabulary (/vocab, copied from the token file). The
 * model is causal, so the context sits at positions 0..n-1 of its window
 * of T and the logits at n-1 give the next token; once the context is
 * longer than T, the window slides over its last T tokens. Sampling is
 * softmax(logits / temperature), optionally over the top k only, drawn
 * from a counter-based generator: the same seed gives the same text on
 * any machine and backend precision permitting.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "cli-impl.h"
#include "tokens.h"
#include "run.h"

static const char sample_help[] =
    "usage: dive sample CHECKPOINT [--prompt TEXT] [--tokens N] [--temperature T]\n"
    "                   [--top-k K] [--seed S] [--backend cpu|cuda]\n"
    "       dive sample GAN_CHECKPOINT -o GRID.png [--count N] [--seed S]\n"
    "                   [--backend cpu|cuda]\n"
    "\n"
    "Generates text from a language model checkpoint (a model with [input]\n"
    "tokens = T, trained on a token file from `dive import text`). The prompt\n"
    "(default: empty) is printed, then N tokens (default 200) drawn from\n"
    "softmax(logits / T) (default 0.8; 0 takes the most likely token), over the\n"
    "K most likely tokens only when --top-k is given. --seed (default 1) makes\n"
    "the text repeatable.\n"
    "\n"
    "From a GAN checkpoint it draws N images (default 64) from its generator\n"
    "as a PNG grid. The noise comes from --seed (default: the run's seed, which\n"
    "gives the images of the run's samples-epoch-*.png grids).\n";

typedef struct sample_opts {
    const char *ckpt, *prompt, *backend, *out;
    long tokens, top_k, seed, count;
    int seed_given;
    double temperature;
} sample_opts;

static dv_status parse_num(const char *opt, const char *v, double lo, double hi, double *out,
                           char *err) {
    char *end;
    double x = strtod(v, &end);
    if (end == v || *end || !(x >= lo && x <= hi))
        return DV_ERROR(err, "%s: '%s' is not a number in [%g, %g]", opt, v, lo, hi);
    *out = x;
    return DV_OK;
}

static dv_status parse_sample(int argc, char **argv, sample_opts *o, char *err) {
    *o = (sample_opts){
        .prompt = "", .backend = "cpu", .tokens = 200, .seed = 1, .count = 64, .temperature = 0.8};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-') {
            if (o->ckpt) return DV_ERROR(err, "unexpected argument %s (see --help)", a);
            o->ckpt = a;
            continue;
        }
        if (i + 1 >= argc) return DV_ERROR(err, "%s needs a value", a);
        const char *v = argv[++i];
        double x = 0;
        if (!strcmp(a, "--prompt"))
            o->prompt = v;
        else if (!strcmp(a, "--backend"))
            o->backend = v;
        else if (!strcmp(a, "-o"))
            o->out = v;
        else if (!strcmp(a, "--count")) {
            if (parse_num(a, v, 1, 4096, &x, err)) return DV_ERR;
            o->count = (long)x;
        } else if (!strcmp(a, "--tokens")) {
            if (parse_num(a, v, 0, 1e7, &x, err)) return DV_ERR;
            o->tokens = (long)x;
        } else if (!strcmp(a, "--top-k")) {
            if (parse_num(a, v, 1, 1 << 24, &x, err)) return DV_ERR;
            o->top_k = (long)x;
        } else if (!strcmp(a, "--seed")) {
            if (parse_num(a, v, 0, 9e15, &x, err)) return DV_ERR;
            o->seed = (long)x;
            o->seed_given = 1;
        } else if (!strcmp(a, "--temperature")) {
            if (parse_num(a, v, 0, 100, &o->temperature, err)) return DV_ERR;
        } else
            return DV_ERROR(err, "unknown option %s (see --help)", a);
    }
    if (!o->ckpt) return DV_ERROR(err, "missing CHECKPOINT (see --help)");
    if (strcmp(o->backend, "cpu") && strcmp(o->backend, "cuda"))
        return DV_ERROR(err, "--backend %s: use cpu or cuda", o->backend);
    return DV_OK;
}

static void put_token(const dv_vocab *v, int32_t id) {
    if (v->kind == DV_VOCAB_BYTES) {
        putchar(id);
        return;
    }
    uint32_t c = (uint32_t)v->codepoints[id];
    if (c < 0x80)
        putchar((int)c);
    else if (c < 0x800)
        printf("%c%c", 0xC0 | (c >> 6), 0x80 | (c & 0x3F));
    else if (c < 0x10000)
        printf("%c%c%c", 0xE0 | (c >> 12), 0x80 | ((c >> 6) & 0x3F), 0x80 | (c & 0x3F));
    else
        printf("%c%c%c%c", 0xF0 | (c >> 18), 0x80 | ((c >> 12) & 0x3F), 0x80 | ((c >> 6) & 0x3F),
               0x80 | (c & 0x3F));
}

/* The id of code point c (binary search in the sorted table), or -1. */
static int32_t char_id(const dv_vocab *v, int32_t c) {
    int64_t lo = 0, hi = v->size - 1;
    while (lo <= hi) {
        int64_t mid = (lo + hi) / 2;
        if (v->codepoints[mid] == c) return (int32_t)mid;
        if (v->codepoints[mid] < c)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

/* The prompt as ids into ids (room for strlen(prompt) + 1); returns the
 * count, or -1 naming a character the vocabulary lacks. */
static long encode(const dv_vocab *v, const char *prompt, int32_t *ids, char *err) {
    const unsigned char *s = (const unsigned char *)prompt;
    long n = 0;
    while (*s) {
        if (v->kind == DV_VOCAB_BYTES) {
            ids[n++] = *s++;
            continue;
        }
        dv_utf8 u = {0};
        int32_t c = DV_UTF8_MORE;
        int len = 0;
        while (c == DV_UTF8_MORE && s[len])
            c = dv_utf8_feed(&u, s[len++]);
        if (c < 0) return DV_ERROR(err, "--prompt is not valid UTF-8");
        int32_t id = char_id(v, c);
        if (id < 0)
            return DV_ERROR(err,
                            "--prompt: the character U+%04X ('%.*s') is not in the model's "
                            "vocabulary of %lld characters",
                            (unsigned)c, len, (const char *)s, (long long)v->size);
        ids[n++] = id;
        s += len;
    }
    return n;
}

/* Draws the next id from logits (V) with temperature and top-k; `u` is
 * uniform in [0, 1). */
static int32_t draw(const float *logits, int V, double temperature, long top_k, double u,
                    double *p) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (temperature == 0) return best;
    double cut = -INFINITY;
    if (top_k > 0 && top_k < V) { /* the k-th largest logit: keep those >= it */
        float *tmp = malloc(sizeof(float) * (size_t)V);
        if (tmp) {
            memcpy(tmp, logits, sizeof(float) * (size_t)V);
            for (long k = 0; k < top_k; k++) { /* partial selection, V is small */
                int at = (int)k;
                for (int i = (int)k + 1; i < V; i++)
                    if (tmp[i] > tmp[at]) at = i;
                float t = tmp[k];
                tmp[k] = tmp[at];
                tmp[at] = t;
            }
            cut = tmp[top_k - 1];
            free(tmp);
        }
    }
    double sum = 0;
    for (int i = 0; i < V; i++) {
        p[i] = logits[i] >= cut ? exp((logits[i] - logits[best]) / temperature) : 0.0;
        sum += p[i];
    }
    double acc = 0, target = u * sum;
    for (int i = 0; i < V; i++) {
        acc += p[i];
        if (p[i] > 0 && target < acc) return i;
    }
    return best;
}

static dv_status run_sample(const sample_opts *o, char *err) {
    dv_status rc = DV_ERR;
    dv_config cfg = {0};
    dv_vocab voc = {0};
    dv_backend *be = NULL;
    dv_model *m = NULL;
    int32_t *ctx = NULL;
    float *logits = NULL;
    double *p = NULL;
    char *text = dv_checkpoint_config(o->ckpt, err);
    if (!text) return DV_ERR;
    if (dv_config_load_text(&cfg, o->ckpt, text, err)) goto done;
    const int gan = dv_config_find(&cfg, "gan") != NULL;
    dv_config_section *in = dv_config_find(&cfg, "input");
    if (gan && !o->out) {
        DV_ERROR(err, "%s: a GAN checkpoint: name the picture of its samples with -o GRID.png",
                 o->ckpt);
        goto done;
    }
    if (!gan && o->out) {
        DV_ERROR(err, "-o: %s is not a GAN checkpoint; a language model's text goes to stdout",
                 o->ckpt);
        goto done;
    }
    if (!gan && (!in || !dv_config_has(in, "tokens"))) {
        DV_ERROR(err,
                 "%s: not a language model (its [input] has no tokens = T) nor a GAN; dive "
                 "sample generates text from models trained on a token file",
                 o->ckpt);
        goto done;
    }
    if (!gan && dv_vocab_read(&voc, o->ckpt, NULL, err)) goto done;
    if (!strcmp(o->backend, "cuda"))
        be = dv_backend_cuda_create(0, DV_PRECISION_FP32, err);
    else
        be = dv_backend_cpu_create(0);
    if (!be) {
        if (strcmp(o->backend, "cuda")) DV_ERROR(err, "cannot create the CPU backend");
        goto done;
    }
    if (gan) { /* by default the run's own seed: the images of its grids */
        long seed = o->seed;
        if (!o->seed_given &&
            dv_config_int(&cfg, dv_config_find(&cfg, "train"), "seed", 42, 0, 1L << 62, &seed, err))
            goto done;
        rc = dv_gan_sample(o->ckpt, text, o->out, o->count, seed, be, err);
        goto done;
    }
    if (dv_model_build(&m, &cfg, be, DV_LOSS_XENT, 0, 1, err) ||
        dv_checkpoint_load(o->ckpt, m, NULL, 0, err))
        goto done;
    const int T = m->in_shape[0], V = m->outputs;
    if (m->positions != T || V != voc.size) {
        DV_ERROR(err, "%s: the model puts out %d x %d values, not one of %lld tokens per position",
                 o->ckpt, m->positions, V, (long long)voc.size);
        goto done;
    }
    size_t cap = strlen(o->prompt) + 1 + (size_t)o->tokens;
    ctx = malloc(sizeof(int32_t) * cap);
    logits = malloc(sizeof(float) * (size_t)V);
    p = malloc(sizeof(double) * (size_t)V);
    if (!ctx || !logits || !p) {
        DV_ERROR(err, "out of memory");
        goto done;
    }
    long n = encode(&voc, o->prompt, ctx, err);
    if (n < 0) goto done;
    fputs(o->prompt, stdout);
    if (n == 0) { /* start from a line break (or id 0) */
        int32_t nl = voc.kind == DV_VOCAB_BYTES ? '\n' : char_id(&voc, '\n');
        ctx[n++] = nl >= 0 ? nl : 0;
    }
    const float *out = m->acts[m->nlayers - 1];
    for (long k = 0; k < o->tokens; k++) {
        long len = n < T ? n : T, from = n - len;
        /* the window's ids; positions after the context do not matter (the
         * model is causal), so they repeat the last id */
        int32_t *win = (int32_t *)(void *)m->input;
        int32_t host[4096];
        int32_t *h = T <= 4096 ? host : malloc(sizeof(int32_t) * (size_t)T);
        if (!h) {
            DV_ERROR(err, "out of memory");
            goto done;
        }
        for (int t = 0; t < T; t++)
            h[t] = ctx[from + (t < len ? t : len - 1)];
        be->to_device(be->ctx, win, h, sizeof(int32_t) * (size_t)T);
        if (h != host) free(h);
        dv_model_forward(m, 1, 0);
        be->to_host(be->ctx, logits, out + (size_t)(len - 1) * (size_t)V,
                    sizeof(float) * (size_t)V);
        if (be->check(be->ctx, err)) goto done;
        double u = dv_rand_uniform((uint64_t)o->seed, (uint64_t)k);
        int32_t id = draw(logits, V, o->temperature, o->top_k, u, p);
        ctx[n++] = id;
        put_token(&voc, id);
        fflush(stdout);
    }
    putchar('\n');
    rc = DV_OK;
done:
    free(text);
    free(ctx);
    free(logits);
    free(p);
    dv_model_free(m);
    if (be) dv_backend_free(be);
    dv_vocab_free(&voc);
    dv_config_free(&cfg);
    return rc;
}

int dv_cli_sample(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(sample_help, stdout);
            return 0;
        }
    char err[DV_ERR_LEN];
    sample_opts o;
    if (parse_sample(argc, argv, &o, err)) {
        dv_error_print("dive sample", err);
        return 2;
    }
    if (run_sample(&o, err)) {
        fflush(stdout);
        dv_error_print("dive: error", err);
        return 1;
    }
    return 0;
}
