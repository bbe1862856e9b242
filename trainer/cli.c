/* cli.c — the subcommands of `dive`: argument parsing, help texts, MPI
 * start-up, and the hand-over to the loops in train.c. Usage errors are the
 * same on every rank, so rank 0 alone prints them and every rank exits 2.
 */
#include <stdlib.h>
#include <string.h>

#include "trainer.h"
#include "trainer-impl.h"

const char *dv_version(void) {
    return "0.1.0";
}

static const char train_help[] =
    "usage: dive train CONFIG [--set section.key=value]... [--resume PATH|auto]\n"
    "\n"
    "Trains the model of CONFIG (an INI file, see docs/config.md) on every MPI\n"
    "rank: mpirun -np N dive train CONFIG. [train] batch is the global batch.\n"
    "\n"
    "  --set s.k=v     override a key (s: data, train, input, a layer name such as\n"
    "                  dense_2, or a layer type that appears once)\n"
    "  --resume PATH   continue from a checkpoint; 'auto' uses <run_dir>/last.h5\n"
    "                  when it exists and starts fresh otherwise\n";

static const char eval_help[] =
    "usage: dive eval CONFIG --checkpoint PATH [--split GROUP] [--json] [--set s.k=v]...\n"
    "\n"
    "Evaluates a checkpoint on the config's [data] val split (or GROUP/x, GROUP/y of\n"
    "the same file) and prints loss and accuracy; --json prints one JSON object\n"
    "{\"loss\", \"accuracy\", \"samples\"}. Runs on any number of ranks.\n";

static const char predict_help[] =
    "usage: dive predict CONFIG --checkpoint PATH -o OUT.h5|OUT.csv [--split GROUP]\n"
    "                    [--input FILE.h5] [--x DATASET] [--score] [--set s.k=v]...\n"
    "\n"
    "Writes the model's outputs for every sample of a dataset: by default the\n"
    "config's val split; --input/--x name another file and inputs dataset.\n"
    "HDF5 output: /pred (N) int32 predicted class, /output (N, K) float32\n"
    "(probabilities after the final softmax/sigmoid). CSV: index,pred,out0..outK-1.\n"
    "--score: also print how the classifier sees the inputs as a set: mean\n"
    "top-class confidence, the entropy of the predicted-class histogram, and an\n"
    "Inception-like score exp(H(mean p) - mean H(p)), 1 to K (e.g. real test\n"
    "images against a GAN's samples).\n";

static const char import_help[] =
    "usage: dive import idx IMAGES LABELS -o OUT.h5 [--split NAME]\n"
    "       dive import csv FILE.csv -o OUT.h5 [--split NAME] [--label-col N] [--header]\n"
    "       dive import text FILE|DIR... -o OUT.h5 [--vocab bytes|chars] [--val FRACTION]\n"
    "\n"
    "Converts a dataset into Dive's HDF5 layout: /<split>/x and /<split>/y\n"
    "(chunked, gzip). IDX files may be raw or .gz (MNIST, Fashion-MNIST). CSV:\n"
    "numeric columns, the label in column N (0-based, negative from the end,\n"
    "default -1). The split defaults to 'train'; other splits in OUT are kept.\n"
    "\n"
    "text: files, and directories walked recursively in sorted path order, become\n"
    "one token stream: /train/tokens, the last FRACTION (default 0.1; 0: none) as\n"
    "/val/tokens, and the vocabulary in /vocab. --vocab bytes (default): ids are\n"
    "byte values, 256 of them; chars: the Unicode characters present (UTF-8),\n"
    "sorted. Files with a NUL byte (or, for chars, invalid UTF-8) are skipped.\n"
    "Those three are replaced in OUT; everything else in it is kept.\n";

static const char info_help[] =
    "usage: dive info FILE.h5\n"
    "\n"
    "Summarises an HDF5 dataset file (every dataset: shape, type, chunking,\n"
    "compression) or a Dive checkpoint (step, epoch, ranks, parameters, config).\n";

static int wants_help(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return 1;
    return 0;
}

typedef struct opts {
    const char *config, *checkpoint, *resume, *split, *out, *input, *x;
    const char *sets[256];
    int nsets, json, score;
    char err[DV_ERR_LEN];
} opts;

/* Parses the options shared by train/eval/predict. */
static int parse_opts(int argc, char **argv, opts *o) {
    memset(o, 0, sizeof(*o));
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = NULL;
        if (!strcmp(a, "--set")) {
            if (i + 1 >= argc) return DV_ERROR(o->err, "--set needs section.key=value");
            if (o->nsets == 256) return DV_ERROR(o->err, "too many --set options");
            o->sets[o->nsets++] = argv[++i];
            continue;
        }
        if (!strncmp(a, "--set=", 6)) {
            if (o->nsets == 256) return DV_ERROR(o->err, "too many --set options");
            o->sets[o->nsets++] = a + 6;
            continue;
        }
        if (!strcmp(a, "--json")) {
            o->json = 1;
            continue;
        }
        if (!strcmp(a, "--score")) {
            o->score = 1;
            continue;
        }
        if (!strcmp(a, "--checkpoint"))
            slot = &o->checkpoint;
        else if (!strcmp(a, "--resume"))
            slot = &o->resume;
        else if (!strcmp(a, "--split"))
            slot = &o->split;
        else if (!strcmp(a, "-o") || !strcmp(a, "--output"))
            slot = &o->out;
        else if (!strcmp(a, "--input"))
            slot = &o->input;
        else if (!strcmp(a, "--x"))
            slot = &o->x;
        if (slot) {
            if (i + 1 >= argc) return DV_ERROR(o->err, "%s needs a value", a);
            *slot = argv[++i];
            continue;
        }
        if (a[0] == '-') return DV_ERROR(o->err, "unknown option %s (see --help)", a);
        if (o->config) return DV_ERROR(o->err, "unexpected argument %s (see --help)", a);
        o->config = a;
    }
    if (!o->config) return DV_ERROR(o->err, "missing CONFIG (see --help)");
    return 0;
}

/* MPI start-up, usage check and config load; every rank does the same. */
static int start(int argc, char **argv, const char *help, opts *o, dv_comm **comm, dv_config *cfg,
                 int (*check)(opts *)) {
    char err[DV_ERR_LEN];
    if (dv_comm_init(comm, &argc, &argv, err)) {
        dv_error_print("dive: error", err);
        return 1;
    }
    int rank0 = dv_comm_rank(*comm) == 0;
    if (wants_help(argc, argv)) {
        if (rank0) fputs(help, stdout);
        return -1;
    }
    int rc = parse_opts(argc, argv, o);
    if (!rc && check) rc = check(o);
    if (rc) {
        char lead[64];
        snprintf(lead, sizeof lead, "dive %s", argv[0]);
        if (rank0) dv_error_print(lead, o->err);
        return 2;
    }
    rc = dv_config_load(cfg, o->config, err);
    for (int i = 0; !rc && i < o->nsets; i++)
        rc = dv_config_set(cfg, o->sets[i], err);
    return dv_agree(*comm, rc, err) ? 1 : 0;
}

static int finish(dv_comm *comm, dv_config *cfg, int status) {
    dv_config_free(cfg);
    dv_comm_free(comm);
    return status < 0 ? 0 : status;
}

static int no_score(opts *o) {
    if (o->score) return DV_ERROR(o->err, "--score is an option of dive predict");
    return 0;
}

int dv_cli_train(int argc, char **argv) {
    opts o;
    dv_comm *comm = NULL;
    dv_config cfg = {0};
    int rc = start(argc, argv, train_help, &o, &comm, &cfg, no_score);
    if (!rc) rc = dv_train_run(comm, &cfg, o.resume);
    return finish(comm, &cfg, rc);
}

static int need_checkpoint(opts *o) {
    if (!o->checkpoint) return DV_ERROR(o->err, "missing --checkpoint PATH (see --help)");
    return 0;
}

static int need_eval(opts *o) {
    if (o->score) return DV_ERROR(o->err, "--score is an option of dive predict");
    return need_checkpoint(o);
}

int dv_cli_eval(int argc, char **argv) {
    opts o;
    dv_comm *comm = NULL;
    dv_config cfg = {0};
    int rc = start(argc, argv, eval_help, &o, &comm, &cfg, need_eval);
    if (!rc) rc = dv_eval_run(comm, &cfg, o.checkpoint, o.split, o.json);
    return finish(comm, &cfg, rc);
}

static int need_predict(opts *o) {
    if (need_checkpoint(o)) return -1;
    if (!o->out) return DV_ERROR(o->err, "missing -o OUT.h5|OUT.csv (see --help)");
    return 0;
}

int dv_cli_predict(int argc, char **argv) {
    opts o;
    dv_comm *comm = NULL;
    dv_config cfg = {0};
    int rc = start(argc, argv, predict_help, &o, &comm, &cfg, need_predict);
    if (!rc) rc = dv_predict_run(comm, &cfg, o.checkpoint, o.input, o.split, o.x, o.out, o.score);
    return finish(comm, &cfg, rc);
}

static void print_skip(void *ctx, const char *path, const char *why) {
    (void)ctx;
    printf("skipped %s: %s\n", path, why);
}

static int import_text(const char **inputs, int n, const char *vocab, const char *val,
                       const char *out) {
    dv_text_options opt = {.vocab = DV_VOCAB_BYTES, .val_fraction = 0.1, .on_skip = print_skip};
    if (vocab && !strcmp(vocab, "chars"))
        opt.vocab = DV_VOCAB_CHARS;
    else if (vocab && strcmp(vocab, "bytes")) {
        fprintf(stderr, "dive import: --vocab %s: expected bytes or chars\n", vocab);
        return 2;
    }
    if (val) {
        char *end;
        opt.val_fraction = strtod(val, &end);
        if (!*val || *end || !(opt.val_fraction >= 0 && opt.val_fraction < 1)) {
            fprintf(stderr, "dive import: --val %s: expected a fraction in [0, 1)\n", val);
            return 2;
        }
    }
    char err[DV_ERR_LEN];
    dv_text_report r;
    if (dv_import_text(inputs, n, &opt, out, &r, err) != DV_OK) {
        fflush(stdout);
        dv_error_print("dive: error", err);
        return 1;
    }
    printf("read %lld file%s (%lld skipped): %lld tokens, vocabulary %s of %lld\n",
           (long long)r.files_read, r.files_read == 1 ? "" : "s", (long long)r.files_skipped,
           (long long)(r.n_train + r.n_val), opt.vocab == DV_VOCAB_CHARS ? "chars" : "bytes",
           (long long)r.vocab_size);
    printf("wrote /train/tokens (%lld)", (long long)r.n_train);
    if (r.n_val) printf(", /val/tokens (%lld)", (long long)r.n_val);
    printf(" and /vocab (%lld) to %s\n", (long long)r.vocab_size, out);
    return 0;
}

/* Which options each format takes. */
static int import_takes(const char *kind, const char *opt) {
    static const char *const text_only[] = {"--vocab", "--val"};
    static const char *const table_only[] = {"--split", "--label-col", "--header"};
    int text = !strcmp(kind, "text");
    const char *const *list = text ? table_only : text_only;
    for (int i = 0; i < (text ? 3 : 2); i++)
        if (!strcmp(opt, list[i])) return 0;
    return 1;
}

int dv_cli_import(int argc, char **argv) {
    if (argc < 2 || wants_help(argc, argv)) {
        fputs(import_help, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *kind = argv[1], *out = NULL, *split = "train", *vocab = NULL, *val = NULL;
    int want = !strcmp(kind, "idx") ? 2 : !strcmp(kind, "csv") ? 1 : !strcmp(kind, "text") ? -1 : 0;
    if (!want) {
        fprintf(stderr, "dive import: unknown format '%s' (idx, csv or text)\n", kind);
        return 2;
    }
    /* Positional arguments: at most argc of them. */
    const char **pos = calloc((size_t)argc, sizeof(*pos));
    if (!pos) {
        fprintf(stderr, "dive import: out of memory\n");
        return 1;
    }
    int npos = 0, header = 0, rc = 2;
    long label_col = -1;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        int takes_value = !strcmp(a, "-o") || !strcmp(a, "--output") || !strcmp(a, "--split") ||
                          !strcmp(a, "--label-col") || !strcmp(a, "--vocab") || !strcmp(a, "--val");
        if (a[0] == '-' && !import_takes(kind, a)) {
            fprintf(stderr, "dive import: %s does not apply to %s (see --help)\n", a, kind);
            goto done;
        }
        if (takes_value && i + 1 >= argc) {
            fprintf(stderr, "dive import: %s needs a value\n", a);
            goto done;
        }
        if (!strcmp(a, "-o") || !strcmp(a, "--output"))
            out = argv[++i];
        else if (!strcmp(a, "--split"))
            split = argv[++i];
        else if (!strcmp(a, "--vocab"))
            vocab = argv[++i];
        else if (!strcmp(a, "--val"))
            val = argv[++i];
        else if (!strcmp(a, "--label-col")) {
            char *end;
            label_col = strtol(argv[++i], &end, 10);
            if (*end) {
                fprintf(stderr, "dive import: --label-col %s: not an integer\n", argv[i]);
                goto done;
            }
        } else if (!strcmp(a, "--header"))
            header = 1;
        else if (a[0] == '-' || npos == want) {
            fprintf(stderr, "dive import: unexpected argument %s (see --help)\n", a);
            goto done;
        } else
            pos[npos++] = a;
    }
    if ((want > 0 && npos != want) || npos == 0 || !out) {
        fprintf(stderr, "%s", import_help);
        goto done;
    }
    if (want < 0) {
        rc = import_text(pos, npos, vocab, val, out);
        goto done;
    }
    char err[DV_ERR_LEN];
    dv_status st = want == 2 ? dv_import_idx(pos[0], pos[1], out, split, err)
                             : dv_import_csv(pos[0], (int)label_col, header, out, split, err);
    if (st != DV_OK) {
        dv_error_print("dive: error", err);
        rc = 1;
        goto done;
    }
    printf("wrote /%s/x and /%s/y to %s\n", split, split, out);
    rc = 0;
done:
    free(pos);
    return rc;
}

int dv_cli_info(int argc, char **argv) {
    if (wants_help(argc, argv)) {
        fputs(info_help, stdout);
        return 0;
    }
    if (argc != 2) {
        fputs(info_help, stderr);
        return 2;
    }
    return dv_info_run(argv[1]);
}
