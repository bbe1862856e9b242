/* image.c — pictures for people to look at: PNG files (libpng), grids of
 * image samples, and the few drawing primitives a chart needs (filled
 * rectangles, thick lines, a 5x7 bitmap font) on an RGB canvas.
 *
 * PNGs are written to PATH.tmp and renamed over PATH, so a reader never
 * sees half a file and a failed write leaves the old one.
 */
#include "trainer-impl.h"

#include <errno.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- PNG ------------------------------------------------------------------ */

int dv_png_write(const char *path, int w, int h, int channels, const uint8_t *px, char *err) {
    if (w <= 0 || h <= 0 || (channels != 1 && channels != 3))
        return DV_ERROR(err, "%s: cannot write a %dx%d image with %d channels", path, w, h,
                        channels);
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return DV_ERROR(err, "%s: path too long", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return DV_ERROR(err, "%s: cannot create: %s", tmp, strerror(errno));
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
    return 0;
}

/* ---- image grids ---------------------------------------------------------- */

int dv_image_grid_png(const char *path, const float *imgs, int n, int C, int H, int W, float lo,
                      float hi, int cols, char *err) {
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

/* ---- canvas --------------------------------------------------------------- */

int dv_canvas_init(dv_canvas *c, int w, int h, uint32_t rgb) {
    c->w = w, c->h = h;
    c->px = malloc((size_t)w * h * 3);
    if (!c->px) return -1;
    dv_canvas_rect(c, 0, 0, w - 1, h - 1, rgb);
    return 0;
}

void dv_canvas_free(dv_canvas *c) {
    free(c->px);
    c->px = NULL;
}

static void put(dv_canvas *c, int x, int y, uint32_t rgb) {
    if (x < 0 || y < 0 || x >= c->w || y >= c->h) return;
    uint8_t *p = c->px + ((size_t)y * c->w + x) * 3;
    p[0] = (uint8_t)(rgb >> 16), p[1] = (uint8_t)(rgb >> 8), p[2] = (uint8_t)rgb;
}

void dv_canvas_rect(dv_canvas *c, int x0, int y0, int x1, int y1, uint32_t rgb) {
    for (int y = y0; y <= y1; y++)
        for (int x = x0; x <= x1; x++)
            put(c, x, y, rgb);
}

/* A line `thick` pixels wide: a square of that side stamped at every step
 * of the longer axis (no anti-aliasing). */
void dv_canvas_line(dv_canvas *c, double x0, double y0, double x1, double y1, uint32_t rgb,
                    int thick) {
    const double dx = x1 - x0, dy = y1 - y0;
    const double len = fabs(dx) > fabs(dy) ? fabs(dx) : fabs(dy);
    const int steps = len < 1 ? 1 : (int)ceil(len);
    const int lo = -(thick - 1) / 2, hi = thick / 2;
    for (int i = 0; i <= steps; i++) {
        const int x = (int)lround(x0 + dx * i / steps), y = (int)lround(y0 + dy * i / steps);
        dv_canvas_rect(c, x + lo, y + lo, x + hi, y + hi, rgb);
    }
}

/* 5x7 glyphs, a row per byte, bit 4 the leftmost pixel. */
static const struct {
    char ch;
    uint8_t rows[7];
} glyphs[] = {
    {' ', {0, 0, 0, 0, 0, 0, 0}},
    {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}},
    {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}},
    {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}},
    {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}},
    {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}},
    {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}},
    {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}},
    {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}},
    {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}},
    {'a', {0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F}},
    {'b', {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E}},
    {'c', {0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E}},
    {'d', {0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F}},
    {'e', {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E}},
    {'f', {0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08}},
    {'g', {0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E}},
    {'h', {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11}},
    {'i', {0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E}},
    {'j', {0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0C}},
    {'k', {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12}},
    {'l', {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'m', {0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11}},
    {'n', {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11}},
    {'o', {0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E}},
    {'p', {0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10}},
    {'q', {0x00, 0x00, 0x0D, 0x13, 0x0F, 0x01, 0x01}},
    {'r', {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10}},
    {'s', {0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E}},
    {'t', {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06}},
    {'u', {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D}},
    {'v', {0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04}},
    {'w', {0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A}},
    {'x', {0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11}},
    {'y', {0x00, 0x00, 0x11, 0x11, 0x0F, 0x01, 0x0E}},
    {'z', {0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F}},
    {'.', {0, 0, 0, 0, 0, 0x0C, 0x0C}},
    {'-', {0, 0, 0, 0x1F, 0, 0, 0}},
    {'_', {0, 0, 0, 0, 0, 0, 0x1F}},
    {'+', {0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0}},
    {':', {0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0}},
    {'/', {0, 0x01, 0x02, 0x04, 0x08, 0x10, 0}},
    {'(', {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}},
    {')', {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08}},
    {'%', {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03}},
    {'?', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04}},
};

static const uint8_t *glyph(char ch) {
    if (ch >= 'A' && ch <= 'Z') ch = (char)(ch - 'A' + 'a');
    for (size_t i = 0; i < sizeof glyphs / sizeof glyphs[0]; i++)
        if (glyphs[i].ch == ch) return glyphs[i].rows;
    return glyph('?');
}

int dv_text_width(const char *s, int scale) {
    const int n = (int)strlen(s);
    return n ? (6 * n - 1) * scale : 0;
}

int dv_canvas_text(dv_canvas *c, int x, int y, const char *s, uint32_t rgb, int scale) {
    for (const char *p = s; *p; p++, x += 6 * scale) {
        const uint8_t *g = glyph(*p);
        for (int r = 0; r < 7; r++)
            for (int b = 0; b < 5; b++)
                if (g[r] & (0x10 >> b))
                    dv_canvas_rect(c, x + b * scale, y + r * scale, x + (b + 1) * scale - 1,
                                   y + (r + 1) * scale - 1, rgb);
    }
    return dv_text_width(s, scale);
}
