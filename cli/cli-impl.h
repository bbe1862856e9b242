/* cli-impl.h — private to cli/: what the subcommands' files share, and the
 * RGB canvas `dive plot` draws its charts on (canvas.c).
 */
#ifndef DV_CLI_IMPL_H
#define DV_CLI_IMPL_H

#include <stdint.h>

#include "base.h"
#include "cli.h"

/* 1 when an argument after argv[0] is --help or -h. */
int dv_cli_wants_help(int argc, char **argv);

/* An RGB canvas (w x h x 3 bytes) and what a chart needs on it; colours
 * are 0xRRGGBB, coordinates in pixels from the top left (clipped). */
typedef struct dv_canvas {
    int w, h;
    uint8_t *px;
} dv_canvas;
/* DV_ERR when out of memory. */
dv_status dv_canvas_init(dv_canvas *c, int w, int h, uint32_t rgb);
void dv_canvas_free(dv_canvas *c);
void dv_canvas_rect(dv_canvas *c, int x0, int y0, int x1, int y1, uint32_t rgb);
void dv_canvas_line(dv_canvas *c, double x0, double y0, double x1, double y1, uint32_t rgb,
                    int thick);
/* A 5x7 font scaled by `scale`; letters print lower case. Returns the width. */
int dv_canvas_text(dv_canvas *c, int x, int y, const char *s, uint32_t rgb, int scale);
int dv_text_width(const char *s, int scale);

/* metrics.csv (csv_path) as line charts into png_path, x = "epoch" or
 * "step" column, `width` pixels wide (dive plot). */
dv_status dv_plot_metrics(const char *csv_path, const char *png_path, const char *xname, int width,
                          char *err);

#endif
