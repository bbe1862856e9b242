/* info.c — `dive info FILE.h5`: what is in an HDF5 file. For any file,
 * every dataset with shape, type, chunking and compression; for a Dive
 * checkpoint also its step, epoch, ranks, parameter count and config. */
#include <errno.h>
#include <hdf5.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint.h"
#include "cli-impl.h"

static const char *type_name(hid_t t, char *buf, size_t len) {
    H5T_class_t c = H5Tget_class(t);
    size_t sz = H5Tget_size(t);
    if (c == H5T_INTEGER)
        snprintf(buf, len, "%sint%zu", H5Tget_sign(t) == H5T_SGN_NONE ? "u" : "", sz * 8);
    else if (c == H5T_FLOAT)
        snprintf(buf, len, "float%zu", sz * 8);
    else if (c == H5T_STRING)
        snprintf(buf, len, "string");
    else
        snprintf(buf, len, "other");
    return buf;
}

typedef struct visit_ctx {
    double params;
    int count;
} visit_ctx;

static herr_t visit(hid_t obj, const char *name, const H5O_info_t *info, void *data) {
    visit_ctx *v = data;
    if (info->type != H5O_TYPE_DATASET) return 0;
    hid_t ds = H5Dopen2(obj, name, H5P_DEFAULT);
    if (ds < 0) return 0;
    hid_t sp = H5Dget_space(ds), ty = H5Dget_type(ds), pl = H5Dget_create_plist(ds);
    int nd = H5Sget_simple_extent_ndims(sp);
    hsize_t dims[16] = {0};
    if (nd > 0 && nd <= 16) H5Sget_simple_extent_dims(sp, dims, NULL);
    char shape[256] = "", tn[32], layout[128] = "";
    double n = 1;
    for (int i = 0; i < nd && i < 16; i++) {
        snprintf(shape + strlen(shape), sizeof(shape) - strlen(shape), "%s%llu", i ? ", " : "",
                 (unsigned long long)dims[i]);
        n *= (double)dims[i];
    }
    if (H5Pget_layout(pl) == H5D_CHUNKED) {
        hsize_t ch[16];
        int cn = H5Pget_chunk(pl, 16, ch);
        snprintf(layout, sizeof(layout), " chunks (");
        for (int i = 0; i < cn; i++)
            snprintf(layout + strlen(layout), sizeof(layout) - strlen(layout), "%s%llu",
                     i ? "," : "", (unsigned long long)ch[i]);
        strncat(layout, ")", sizeof(layout) - strlen(layout) - 1);
        int nf = H5Pget_nfilters(pl);
        for (int i = 0; i < nf; i++) {
            unsigned flags, cd[8];
            size_t ncd = 8;
            char fname[64];
            H5Pget_filter2(pl, (unsigned)i, &flags, &ncd, cd, sizeof(fname), fname, NULL);
            snprintf(layout + strlen(layout), sizeof(layout) - strlen(layout), " %s", fname);
        }
    }
    if (strncmp(name, "model/", 6) == 0) v->params += n;
    if (strcmp(name, "config")) {
        printf("  /%-40s (%s) %s%s\n", name, shape, type_name(ty, tn, sizeof(tn)), layout);
        v->count++;
    }
    H5Pclose(pl);
    H5Tclose(ty);
    H5Sclose(sp);
    H5Dclose(ds);
    return 0;
}

static int info_run(const char *path) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (access(path, R_OK)) {
        fprintf(stderr, "dive: error: %s: %s\n", path, strerror(errno));
        return 1;
    }
    if (H5Fis_hdf5(path) <= 0) {
        fprintf(stderr, "dive: error: %s: not an HDF5 file (or it is damaged)\n", path);
        return 1;
    }
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        fprintf(stderr, "dive: error: %s: cannot open (damaged HDF5 file?)\n", path);
        return 1;
    }
    int ckpt = H5Lexists(f, "/model", H5P_DEFAULT) > 0 && H5Lexists(f, "/train", H5P_DEFAULT) > 0;
    printf("%s: %s\n", path, ckpt ? "Dive checkpoint" : "HDF5 file");
    visit_ctx v = {0, 0};
    H5Ovisit2(f, H5_INDEX_NAME, H5_ITER_NATIVE, visit, &v, H5O_INFO_BASIC);
    if (ckpt) {
        hid_t tg = H5Gopen2(f, "/train", H5P_DEFAULT);
        const char *names[] = {"step", "epoch", "step_in_epoch", "world_size", "seed"};
        printf("training state:");
        for (int i = 0; i < 5; i++) {
            int64_t val = 0;
            if (H5Aexists(tg, names[i]) > 0) {
                hid_t a = H5Aopen(tg, names[i], H5P_DEFAULT);
                H5Aread(a, H5T_NATIVE_INT64, &val);
                H5Aclose(a);
            }
            printf(" %s %lld", names[i], (long long)val);
        }
        printf("\nparameters: %.0f\n", v.params);
        H5Gclose(tg);
        char err[DV_ERR_LEN];
        H5Fclose(f);
        char *text = dv_checkpoint_config(path, err);
        if (text) {
            printf("config:\n%s", text);
            free(text);
        }
        return 0;
    }
    if (!v.count) printf("  (no datasets)\n");
    H5Fclose(f);
    return 0;
}

static const char info_help[] =
    "usage: dive info FILE.h5\n"
    "\n"
    "Summarises an HDF5 dataset file (every dataset: shape, type, chunking,\n"
    "compression) or a Dive checkpoint (step, epoch, ranks, parameters, config).\n";

int dv_cli_info(int argc, char **argv) {
    if (dv_cli_wants_help(argc, argv)) {
        fputs(info_help, stdout);
        return 0;
    }
    if (argc != 2) {
        fputs(info_help, stderr);
        return 2;
    }
    return info_run(argv[1]);
}
