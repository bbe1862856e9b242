/* cli.c — the subcommands of `dive` that run a model over MPI ranks:
 * train, eval and predict. Argument parsing, help texts, MPI start-up, the
 * config with its --set overrides, and the hand-over to run/ (a GAN config
 * trains as a GAN). Usage errors are the same on every rank, so rank 0
 * alone prints them and every rank exits 2.
 */
#include <stdlib.h>
#include <string.h>

#include "cli-impl.h"
#include "run.h"

const char *dv_version(void) {
    return "0.1.0";
}

static const char train_help[] =
    "usage: dive train CONFIG [--set section.key=value]... [--resume PATH|auto [--resume-force]]\n"
    "                  [--overwrite]\n"
    "\n"
    "Trains the model of CONFIG (an INI file, see docs/config.md) on every MPI\n"
    "rank: mpirun -np N dive train CONFIG. [train] batch is the global batch.\n"
    "\n"
    "  --set s.k=v     override a key (s: data, train, input, a layer name such as\n"
    "                  dense_2, or a layer type that appears once)\n"
    "  --resume PATH   continue from a checkpoint. 'auto': from the newest checkpoint\n"
    "                  of run_dir that verifies (last.h5, then ckpt-<step>.h5 from the\n"
    "                  newest; each one skipped is named), or a new run when run_dir\n"
    "                  holds none; never a new run while it holds one, readable or not\n"
    "  --resume-force  resume even though the optimizer, the loss or the training data\n"
    "                  differ from the run that wrote the checkpoint (a warning names\n"
    "                  what changed; without it, that is an error)\n"
    "  --overwrite     start a new run in a run_dir that holds an earlier run's\n"
    "                  checkpoints: deletes its ckpt-*.h5, last.h5, best.h5,\n"
    "                  metrics.csv and samples-epoch-*.png first (without it, that\n"
    "                  is an error)\n"
    "\n"
    "Checkpoints carry checksums that every load verifies; docs/checkpoints.md.\n";

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

int dv_cli_wants_help(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return 1;
    return 0;
}

typedef struct opts {
    const char *config, *checkpoint, *resume, *split, *out, *input, *x;
    const char *sets[256];
    int nsets, json, score, force, overwrite;
    char err[DV_ERR_LEN];
} opts;

/* Parses the options shared by train/eval/predict. */
static dv_status parse_opts(int argc, char **argv, opts *o) {
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
        if (!strcmp(a, "--resume-force") || !strcmp(a, "--overwrite")) {
            *(a[2] == 'r' ? &o->force : &o->overwrite) = 1;
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
    return DV_OK;
}

/* MPI start-up, usage check and config load; every rank does the same. */
static int start(int argc, char **argv, const char *help, opts *o, dv_comm **comm, dv_config *cfg,
                 dv_status (*check)(opts *)) {
    char err[DV_ERR_LEN];
    if (dv_comm_init(comm, &argc, &argv, err)) {
        dv_error_print("dive: error", err);
        return 1;
    }
    int rank0 = dv_comm_rank(*comm) == 0;
    if (dv_cli_wants_help(argc, argv)) {
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

static dv_status no_score(opts *o) {
    if (o->score) return DV_ERROR(o->err, "--score is an option of dive predict");
    return DV_OK;
}

static dv_status need_train(opts *o) {
    DV_TRY(no_score(o));
    if (o->overwrite && o->resume)
        return DV_ERROR(o->err, "--overwrite starts a new run: it cannot go with --resume");
    if (o->force && !o->resume)
        return DV_ERROR(o->err, "--resume-force goes with --resume PATH|auto");
    return DV_OK;
}

/* The options only dive train takes. */
static dv_status not_train(opts *o) {
    if (o->force || o->overwrite || o->resume)
        return DV_ERROR(o->err, "%s is an option of dive train",
                        o->resume  ? "--resume"
                        : o->force ? "--resume-force"
                                   : "--overwrite");
    return DV_OK;
}

int dv_cli_train(int argc, char **argv) {
    opts o;
    dv_comm *comm = NULL;
    dv_config cfg = {0};
    int rc = start(argc, argv, train_help, &o, &comm, &cfg, need_train);
    if (!rc) {
        int stop = 0;
        const dv_train_opts to = {.resume = o.resume, .force = o.force, .overwrite = o.overwrite};
        dv_status st = dv_config_find(&cfg, "gan") ? dv_gan_run(comm, &cfg, &to, &stop)
                                                   : dv_train_run(comm, &cfg, &to, &stop);
        /* a run stopped by a signal saved its step and exits as killed by it */
        rc = st ? 1 : stop ? 128 + stop : 0;
    }
    return finish(comm, &cfg, rc);
}

static dv_status need_checkpoint(opts *o) {
    if (!o->checkpoint) return DV_ERROR(o->err, "missing --checkpoint PATH (see --help)");
    return DV_OK;
}

static dv_status need_eval(opts *o) {
    if (o->score) return DV_ERROR(o->err, "--score is an option of dive predict");
    DV_TRY(not_train(o));
    return need_checkpoint(o);
}

int dv_cli_eval(int argc, char **argv) {
    opts o;
    dv_comm *comm = NULL;
    dv_config cfg = {0};
    int rc = start(argc, argv, eval_help, &o, &comm, &cfg, need_eval);
    if (!rc) rc = dv_eval_run(comm, &cfg, o.checkpoint, o.split, o.json) ? 1 : 0;
    return finish(comm, &cfg, rc);
}

static dv_status need_predict(opts *o) {
    if (need_checkpoint(o) || not_train(o)) return DV_ERR;
    if (!o->out) return DV_ERROR(o->err, "missing -o OUT.h5|OUT.csv (see --help)");
    return DV_OK;
}

int dv_cli_predict(int argc, char **argv) {
    opts o;
    dv_comm *comm = NULL;
    dv_config cfg = {0};
    int rc = start(argc, argv, predict_help, &o, &comm, &cfg, need_predict);
    if (!rc)
        rc =
            dv_predict_run(comm, &cfg, o.checkpoint, o.input, o.split, o.x, o.out, o.score) ? 1 : 0;
    return finish(comm, &cfg, rc);
}
