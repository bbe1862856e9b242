/* image.h — pictures for people to look at: PNG files, and grids of image
 * samples (a GAN's samples-epoch-*.png, `dive sample -o`). Both write
 * PATH.tmp and rename it over PATH, so a reader never sees half a file.
 */
#ifndef DV_IMAGE_H
#define DV_IMAGE_H

#include <stdint.h>

#include "base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Writes a w x h PNG of 1 (grey) or 3 (RGB) channels, rows top to bottom. */
dv_status dv_png_write(const char *path, int w, int h, int channels, const uint8_t *px, char *err);
/* n images (C = 1 or 3, H, W; planar) tiled `cols` wide (0: a square) with
 * 2-pixel grey gaps, values mapped from [lo, hi] to 0..255 (clamped), as a
 * PNG. */
dv_status dv_image_grid_png(const char *path, const float *imgs, int n, int C, int H, int W,
                            float lo, float hi, int cols, char *err);

#ifdef __cplusplus
}
#endif
#endif
