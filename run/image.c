/* image.c — pictures for people to look at: PNG files (libpng) and grids
 * of image samples (a GAN's).
 *
 * PNGs are written to PATH.tmp, a new file (created exclusively: never
 * through a link someone put there), and renamed over PATH, so a reader
 * never sees half a file, a failed write leaves the old one, and a link at
 * PATH is replaced, not written through.
 */
#include "image.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- PNG ------------------------------------------------------------------ */

dv_status dv_png_write(const char *path, int w, int h, int channels, const uint8_t *px, char *err) {
    if (w <= 0 || h <= 0 || (channels != 1 && channels != 3))
        return DV_ERROR(err, "%s: cannot write a %dx%d image with %d channels", path, w, h,
                        channels);
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return DV_ERROR(err, "%s: path too long", path);
    unlink(tmp); /* a killed writer's */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    FILE *f = fd < 0 ? NULL : fdopen(fd, "wb");
    if (!f) {
        int e = errno;
        if (fd >= 0) close(fd);
        return DV_ERROR(err, "%s: cannot create: %s", tmp, strerror(e));
    }
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_write_struct(&png, &info);
        fclose(f);
        remove(tmp);
        return DV_ERROR(err, "%s: out of memory", path);
    }
    if (setjmp(png_jmpbuf(png))) { /* libpng's errors land here */
        png_destroy_write_struct(&png, &info);
        fclose(f);
        remove(tmp);
        return DV_ERROR(err, "%s: libpng could not write the image", path);
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8,
                 channels == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < h; y++)
        png_write_row(png, (png_const_bytep)(px + (size_t)y * w * channels));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    int bad = ferror(f);
    if (fclose(f) || bad) {
        remove(tmp);
        return DV_ERROR(err, "%s: write error: %s", tmp, strerror(errno));
    }
    if (rename(tmp, path)) {
        int e = errno;
        remove(tmp);
        return DV_ERROR(err, "%s: cannot rename %s over it: %s", path, tmp, strerror(e));
    }
    return DV_OK;
}

/* ---- image grids ---------------------------------------------------------- */

dv_status dv_image_grid_png(const char *path, const float *imgs, int n, int C, int H, int W,
                            float lo, float hi, int cols, char *err) {
    if (n <= 0 || (C != 1 && C != 3) || H <= 0 || W <= 0 || !(hi > lo))
        return DV_ERROR(err, "%s: cannot tile %d images of %dx%dx%d over [%g, %g]", path, n, C, H,
                        W, lo, hi);
    if (cols <= 0) cols = (int)ceil(sqrt((double)n));
    if (cols > n) cols = n;
    const int rows = (n + cols - 1) / cols, pad = 2;
    const int gw = cols * (W + pad) + pad, gh = rows * (H + pad) + pad;
    uint8_t *px = malloc((size_t)gw * gh * C);
    if (!px) return DV_ERROR(err, "%s: out of memory for a %dx%d grid", path, gw, gh);
    memset(px, 128, (size_t)gw * gh * C); /* mid-grey between the tiles */
    const float scale = 255.0f / (hi - lo);
    for (int k = 0; k < n; k++) {
        const int ox = pad + (k % cols) * (W + pad), oy = pad + (k / cols) * (H + pad);
        const float *im = imgs + (size_t)k * C * H * W;
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                for (int c = 0; c < C; c++) {
                    float v = (im[((size_t)c * H + y) * W + x] - lo) * scale;
                    v = v != v ? 0.0f : (v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v)); /* NaN: 0 */
                    px[((size_t)(oy + y) * gw + ox + x) * C + c] = (uint8_t)lrintf(v);
                }
    }
    int rc = dv_png_write(path, gw, gh, C, px, err);
    free(px);
    return rc;
}
