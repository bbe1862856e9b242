/* bench_ckpt.c — the time to write and to load a checkpoint of a config's
 * model, as training does (dv_checkpoint_save: a new file, flushed,
 * fsync'd, renamed; dv_checkpoint_load with the optimizer state).
 *
 *   build/bin/bench_ckpt CONFIG [DIR] [--set s.k=v]...     (DIR: /tmp)
 *
 * Builds the model of CONFIG (its data file must be there: a language
 * model takes its vocabulary from it), then writes the checkpoint 15 times
 * into DIR and loads it 15 times, and prints the medians, the file's size
 * and the write rate. One rank. Figures only: never passes or fails on
 * time (docs/checkpoints.md, "Write time").
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "classifier-impl.h"

#define TRIES 15

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    char err[DV_ERR_LEN];
    dv_comm *c = NULL;
    if (dv_comm_init(&c, &argc, &argv, err)) {
        dv_error_print("bench_ckpt", err);
        return 1;
    }
    if (argc < 2) {
        fprintf(stderr, "usage: bench_ckpt CONFIG [DIR] [--set s.k=v]...\n");
        return 2;
    }
    const char *dir = argc > 2 && strcmp(argv[2], "--set") ? argv[2] : "/tmp";
    dv_config cfg = {0};
    dv_status rc = dv_config_load(&cfg, argv[1], err);
    for (int i = 2; !rc && i + 1 < argc; i++)
        if (!strcmp(argv[i], "--set")) rc = dv_config_set(&cfg, argv[++i], err);
    if (rc) {
        dv_error_print("bench_ckpt", err);
        return 1;
    }
    dv_classifier r;
    if (dv_classifier_setup(&r, c, &cfg, 1)) return 1;
    dv_train_state ts = {
        .world_size = 1, .global_batch = r.st.batch, .seed = r.st.seed, .best_val_loss = INFINITY};
    char path[1024];
    snprintf(path, sizeof path, "%s/bench-ckpt-%ld.h5", dir, (long)getpid());
    double w[TRIES], l[TRIES];
    for (int i = 0; i < TRIES && !rc; i++) {
        double t0 = dv_now();
        rc = dv_checkpoint_save(path, r.m, &ts, r.config_text, err);
        w[i] = dv_now() - t0;
    }
    for (int i = 0; i < TRIES && !rc; i++) {
        dv_train_state back;
        double t0 = dv_now();
        rc = dv_checkpoint_load(path, r.m, &back, 1, err);
        l[i] = dv_now() - t0;
    }
    struct stat sb;
    if (!rc && stat(path, &sb)) rc = DV_ERROR(err, "%s: cannot stat", path);
    unlink(path);
    if (rc) {
        dv_error_print("bench_ckpt", err);
    } else {
        qsort(w, TRIES, sizeof(double), cmp_double);
        qsort(l, TRIES, sizeof(double), cmp_double);
        const double mb = (double)sb.st_size / 1e6;
        printf("%s: %zu parameters, checkpoint %.2f MB in %s\n", argv[1], r.m->nparams, mb, dir);
        printf("write (with fsync): median %.1f ms (min %.1f, max %.1f) = %.0f MB/s\n",
               1e3 * w[TRIES / 2], 1e3 * w[0], 1e3 * w[TRIES - 1], mb / w[TRIES / 2]);
        printf("load (model and optimizer): median %.1f ms (min %.1f, max %.1f)\n",
               1e3 * l[TRIES / 2], 1e3 * l[0], 1e3 * l[TRIES - 1]);
    }
    dv_classifier_free(&r);
    dv_config_free(&cfg);
    dv_comm_free(c);
    return rc ? 1 : 0;
}
