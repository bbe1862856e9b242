/* info.c — `dive info FILE.h5`: what is in an HDF5 file. For any file,
 * every dataset with shape, type, chunking and filters (compression,
 * checksums); for a Dive checkpoint also its step, epoch, ranks, parameter
 * count and config. `dive info --verify CKPT` checks a checkpoint whole
 * (every checksum, every value finite, /train in range) and exits 0 or 1.
 * It reads the file through data's h5.h (no HDF5 call of its own). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "cli-impl.h"
#include "h5.h"

typedef struct visit_ctx {
    double params;
    int count;
} visit_ctx;

static int visit(void *ctx, const dv_h5_dataset *d) {
    visit_ctx *v = ctx;
    /* up to DV_H5_MAX_DIMS sizes of up to 20 digits each */
    char shape[DV_H5_MAX_DIMS * 24] = "", layout[DV_H5_MAX_DIMS * 24 + 192] = "";
    double n = 1;
    for (int i = 0; i < d->ndim && i < DV_H5_MAX_DIMS; i++) {
        snprintf(shape + strlen(shape), sizeof(shape) - strlen(shape), "%s%llu", i ? ", " : "",
                 (unsigned long long)d->dims[i]);
        n *= (double)d->dims[i];
    }
    if (d->chunk_ndim) {
        snprintf(layout, sizeof(layout), " chunks (");
        for (int i = 0; i < d->chunk_ndim && i < DV_H5_MAX_DIMS; i++)
            snprintf(layout + strlen(layout), sizeof(layout) - strlen(layout), "%s%llu",
                     i ? "," : "", (unsigned long long)d->chunk[i]);
        strncat(layout, ")", sizeof(layout) - strlen(layout) - 1);
        if (d->filters[0])
            snprintf(layout + strlen(layout), sizeof(layout) - strlen(layout), " %s", d->filters);
    }
    if (strncmp(d->path, "model/", 6) == 0) v->params += n;
    if (strcmp(d->path, "config")) {
        printf("  /%-40s (%s) %s%s\n", d->path, shape, d->type, layout);
        v->count++;
    }
    return 0;
}

static int info_run(const char *path) {
    char err[DV_ERR_LEN];
    dv_h5 *f = NULL;
    if (dv_h5_open(&f, path, DV_H5_READ, err) != DV_OK) {
        dv_error_print("dive: error", err);
        return 1;
    }
    int ckpt = dv_h5_exists(f, "/model") && dv_h5_exists(f, "/train");
    printf("%s: %s\n", path, ckpt ? "Dive checkpoint" : "HDF5 file");
    visit_ctx v = {0, 0};
    (void)dv_h5_visit(f, visit, &v, err); /* a damaged object ends the list early */
    if (ckpt) {
        const char *names[] = {"step", "epoch", "step_in_epoch", "world_size", "seed"};
        printf("training state:");
        for (int i = 0; i < 5; i++) {
            int64_t val = 0;
            if (dv_h5_attr_get_int(f, "/train", names[i], &val, err) != DV_OK) val = 0;
            printf(" %s %lld", names[i], (long long)val);
        }
        printf("\nparameters: %.0f\n", v.params);
        dv_h5_close(f, NULL);
        char *text = dv_checkpoint_config(path, err);
        if (text) {
            printf("config:\n%s", text);
            free(text);
        }
        return 0;
    }
    if (!v.count) printf("  (no datasets)\n");
    dv_h5_close(f, NULL);
    return 0;
}

/* dive info --verify: the whole checkpoint, or the first fault in it. */
static int verify_run(const char *path) {
    char err[DV_ERR_LEN];
    dv_checkpoint_report rep;
    if (dv_checkpoint_verify(path, &rep, err) != DV_OK) {
        dv_error_print("dive: error", err);
        return 1;
    }
    printf("%s: verified: %d datasets, %.0f values, all finite; /train in range (step %lld, "
           "epoch %lld)\n",
           path, rep.datasets, rep.values, (long long)rep.ts.step, (long long)rep.ts.epoch);
    if (rep.checksummed == rep.datasets)
        printf("checksums: every dataset's data matches its checksum\n");
    else if (rep.checksummed == 0)
        printf("checksums: none (written by an older Dive): damage to its values cannot be "
               "detected, only values that are not finite\n");
    else
        printf("checksums: %d of %d datasets carry one and match it; the other %d have none "
               "(rewritten by another program?)\n",
               rep.checksummed, rep.datasets, rep.datasets - rep.checksummed);
    return 0;
}

static const char info_help[] =
    "usage: dive info FILE.h5\n"
    "       dive info --verify CHECKPOINT.h5\n"
    "\n"
    "Summarises an HDF5 dataset file (every dataset: shape, type, chunking,\n"
    "filters such as compression and checksums) or a Dive checkpoint (step, epoch,\n"
    "ranks, parameters, config).\n"
    "\n"
    "  --verify   read every dataset of a checkpoint whole: its data must match its\n"
    "             checksum, every float (weights, optimizer state) must be finite,\n"
    "             and the /train attributes in range. Exit status 0 when it holds,\n"
    "             1 with a message naming the first fault.\n";

int dv_cli_info(int argc, char **argv) {
    if (dv_cli_wants_help(argc, argv)) {
        fputs(info_help, stdout);
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "--verify")) return verify_run(argv[2]);
    if (argc == 3 && !strcmp(argv[2], "--verify")) return verify_run(argv[1]);
    if (argc != 2 || argv[1][0] == '-') {
        fputs(info_help, stderr);
        return 2;
    }
    return info_run(argv[1]);
}
