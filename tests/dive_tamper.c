/* dive_tamper.c — damages and crafts HDF5 files the way a tester would, for
 * the end-to-end tests of checkpoint verification (tests/e2e_ckpt.sh). CTest
 * hands its path to the scripts as DIVE_TAMPER.
 *
 *   dive_tamper flip FILE DATASET [BYTES]       flips BYTES (16) bytes of the
 *                                                dataset's stored data in
 *                                                place, behind HDF5's back
 *   dive_tamper fill FILE DATASET VALUE [COUNT]  sets the first COUNT (all)
 *                                                values through HDF5 (its
 *                                                checksum stays right): nan, inf
 *   dive_tamper attr-int FILE OBJ NAME VALUE     sets an int64 attribute
 *   dive_tamper attr-str FILE OBJ NAME VALUE     sets a string attribute
 *   dive_tamper del-attr FILE OBJ NAME...        deletes attributes
 *   dive_tamper rank FILE DATASET NDIM           adds a float dataset of rank
 *                                                NDIM (2 x 1 x ... x 1)
 *
 * Exits 0 on success, 1 with a message otherwise.
 */
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int fail(const char *what) {
    fprintf(stderr, "dive_tamper: %s\n", what);
    return 1;
}

/* The file offset and size of the first stored block of a dataset's data. */
static int data_extent(const char *file, const char *name, haddr_t *addr, hsize_t *size) {
    hid_t f = H5Fopen(file, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return -1;
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    int rc = -1;
    if (d >= 0) {
        hid_t pl = H5Dget_create_plist(d);
        if (H5Pget_layout(pl) == H5D_CHUNKED) {
            hid_t sp = H5Dget_space(d);
            hsize_t off[H5S_MAX_RANK];
            unsigned mask;
            if (H5Dget_chunk_info(d, sp, 0, off, &mask, addr, size) >= 0) rc = 0;
            H5Sclose(sp);
        } else if (H5Pget_layout(pl) == H5D_CONTIGUOUS) {
            *addr = H5Dget_offset(d);
            *size = H5Dget_storage_size(d);
            rc = *addr == HADDR_UNDEF ? -1 : 0;
        }
        H5Pclose(pl);
        H5Dclose(d);
    }
    H5Fclose(f);
    return rc;
}

static int flip(const char *file, const char *name, long bytes) {
    haddr_t addr;
    hsize_t size;
    if (data_extent(file, name, &addr, &size)) return fail("cannot locate the dataset's data");
    if ((hsize_t)bytes > size) bytes = (long)size;
    int fd = open(file, O_RDWR);
    if (fd < 0) return fail("cannot open the file");
    int rc = 0;
    /* spread over the block: every (size / bytes)-th byte */
    hsize_t step = size / (hsize_t)bytes;
    for (long i = 0; i < bytes && !rc; i++) {
        unsigned char b;
        off_t at = (off_t)(addr + (hsize_t)i * step);
        if (pread(fd, &b, 1, at) != 1) rc = 1;
        b ^= 0x5a;
        if (!rc && pwrite(fd, &b, 1, at) != 1) rc = 1;
    }
    close(fd);
    if (rc) return fail("cannot rewrite the bytes");
    printf("flipped %ld bytes of %s at offset %llu\n", bytes, name, (unsigned long long)addr);
    return 0;
}

static int fill(const char *file, const char *name, double value, long count) {
    hid_t f = H5Fopen(file, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) return fail("cannot open the file");
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) return fail("no such dataset");
    hid_t sp = H5Dget_space(d);
    hssize_t n = H5Sget_simple_extent_npoints(sp);
    float *x = malloc((size_t)n * sizeof(float));
    int rc = !x || H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x) < 0;
    for (hssize_t i = 0; !rc && i < n && (count < 0 || i < count); i++)
        x[i] = (float)value;
    if (!rc) rc = H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x) < 0;
    free(x);
    H5Sclose(sp);
    H5Dclose(d);
    H5Fclose(f);
    return rc ? fail("cannot rewrite the dataset") : 0;
}

static int set_attr(const char *file, const char *obj, const char *name, const char *value,
                    int string) {
    hid_t f = H5Fopen(file, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) return fail("cannot open the file");
    hid_t o = H5Oopen(f, obj, H5P_DEFAULT);
    if (o < 0) return fail("no such object");
    if (H5Aexists(o, name) > 0) H5Adelete(o, name);
    hid_t sp = H5Screate(H5S_SCALAR), t = string ? H5Tcopy(H5T_C_S1) : H5T_STD_I64LE;
    if (string) {
        H5Tset_size(t, H5T_VARIABLE);
        H5Tset_cset(t, H5T_CSET_UTF8);
    }
    hid_t a = H5Acreate2(o, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    long long v = strtoll(value, NULL, 0);
    int rc = a < 0 || (string ? H5Awrite(a, t, &value) : H5Awrite(a, H5T_NATIVE_LLONG, &v)) < 0;
    if (a >= 0) H5Aclose(a);
    if (string) H5Tclose(t);
    H5Sclose(sp);
    H5Oclose(o);
    H5Fclose(f);
    return rc ? fail("cannot write the attribute") : 0;
}

static int del_attrs(const char *file, const char *obj, int n, char **names) {
    hid_t f = H5Fopen(file, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) return fail("cannot open the file");
    hid_t o = H5Oopen(f, obj, H5P_DEFAULT);
    if (o < 0) return fail("no such object");
    int rc = 0;
    for (int i = 0; i < n; i++)
        if (H5Aexists(o, names[i]) > 0 && H5Adelete(o, names[i]) < 0) rc = 1;
    H5Oclose(o);
    H5Fclose(f);
    return rc ? fail("cannot delete an attribute") : 0;
}

static int add_rank(const char *file, const char *name, int ndim) {
    if (ndim < 1 || ndim > H5S_MAX_RANK) return fail("rank out of range");
    hid_t f = access(file, F_OK) ? H5Fcreate(file, H5F_ACC_EXCL, H5P_DEFAULT, H5P_DEFAULT)
                                 : H5Fopen(file, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) return fail("cannot open the file");
    hsize_t dims[H5S_MAX_RANK];
    for (int i = 0; i < ndim; i++)
        dims[i] = i ? 1 : 2;
    hid_t sp = H5Screate_simple(ndim, dims, NULL);
    hid_t d = H5Dcreate2(f, name, H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    float x[2] = {1, 2};
    int rc = d < 0 || H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x) < 0;
    if (d >= 0) H5Dclose(d);
    H5Sclose(sp);
    H5Fclose(f);
    return rc ? fail("cannot write the dataset") : 0;
}

int main(int argc, char **argv) {
    const char *cmd = argc > 1 ? argv[1] : "";
    if (!strcmp(cmd, "flip") && (argc == 4 || argc == 5))
        return flip(argv[2], argv[3], argc == 5 ? atol(argv[4]) : 16);
    if (!strcmp(cmd, "fill") && (argc == 5 || argc == 6))
        return fill(argv[2], argv[3], strtod(argv[4], NULL), argc == 6 ? atol(argv[5]) : -1);
    if (!strcmp(cmd, "attr-int") && argc == 6)
        return set_attr(argv[2], argv[3], argv[4], argv[5], 0);
    if (!strcmp(cmd, "attr-str") && argc == 6)
        return set_attr(argv[2], argv[3], argv[4], argv[5], 1);
    if (!strcmp(cmd, "del-attr") && argc >= 5)
        return del_attrs(argv[2], argv[3], argc - 4, argv + 4);
    if (!strcmp(cmd, "rank") && argc == 5) return add_rank(argv[2], argv[3], atoi(argv[4]));
    fprintf(stderr, "usage: dive_tamper flip|fill|attr-int|attr-str|del-attr|rank ... (see the "
                    "source)\n");
    return 2;
}
