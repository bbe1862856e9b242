/* plot.c — `dive plot RUN_DIR`: a run's metrics.csv as line charts in one
 * PNG, one panel per kind of metric (loss, accuracy, perplexity, and for a
 * GAN its two losses and score), every run's curves alike.
 *
 * Columns are grouped by the word after their last '_' (train_loss,
 * val_loss and d_loss are all "loss"); epoch, step, lr and the rates and
 * times (*_per_s, *_time_s) are not plotted. The x axis is the epoch (or
 * the step, --x step). Empty fields (val_* without a validation split) are
 * gaps. No data rows, a missing file or a malformed line end with one
 * message.
 */
#include "cli-impl.h"
#include "config.h"
#include "image.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PLOT_MAX_COLS  32
#define PLOT_MAX_GROUP 8
#define PANEL_H        300
#define M_LEFT         78
#define M_RIGHT        24
#define M_TOP          34
#define M_BOTTOM       44

static const uint32_t palette[] = {0x1f77b4, 0xff7f0e, 0x2ca02c, 0xd62728,
                                   0x9467bd, 0x8c564b, 0xe377c2, 0x7f7f7f};
#define WHITE 0xffffff
#define BLACK 0x000000
#define GRID  0xe0e0e0
#define INK   0x404040

typedef struct csv {
    int ncols, nrows;
    char names[PLOT_MAX_COLS][DV_NAME_LEN];
    double *v; /* (nrows, ncols); NAN where a field is empty */
} csv;

static void strip(char *s) {
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' '))
        s[--n] = '\0';
}

static dv_status read_csv(const char *path, csv *t, char *err) {
    memset(t, 0, sizeof *t);
    FILE *f = fopen(path, "r");
    if (!f) return DV_ERROR(err, "%s: cannot open: %s", path, strerror(errno));
    char line[8192];
    int rc = 0, cap = 0, lineno = 1;
    if (!fgets(line, sizeof line, f)) {
        fclose(f);
        return DV_ERROR(err, "%s: empty file (no header line)", path);
    }
    strip(line);
    for (char *tok = strtok(line, ","); tok; tok = strtok(NULL, ",")) {
        if (t->ncols == PLOT_MAX_COLS) {
            rc = DV_ERROR(err, "%s: more than %d columns", path, PLOT_MAX_COLS);
            break;
        }
        snprintf(t->names[t->ncols++], DV_NAME_LEN, "%s", tok);
    }
    while (!rc && fgets(line, sizeof line, f)) {
        lineno++;
        strip(line);
        if (!*line) continue;
        if (t->nrows == cap) {
            cap = cap ? 2 * cap : 64;
            double *v = realloc(t->v, (size_t)cap * t->ncols * sizeof *v);
            if (!v) {
                rc = DV_ERROR(err, "%s: out of memory", path);
                break;
            }
            t->v = v;
        }
        double *row = t->v + (size_t)t->nrows * t->ncols;
        const char *p = line;
        int k = 0;
        for (; k < t->ncols; k++) {
            const char *end = strchr(p, ',');
            size_t len = end ? (size_t)(end - p) : strlen(p);
            if (len == 0) {
                row[k] = NAN;
            } else {
                char *stop;
                row[k] = strtod(p, &stop);
                if (stop != p + len) {
                    rc = DV_ERROR(err, "%s:%d: column %s: '%.*s' is not a number", path, lineno,
                                  t->names[k], (int)len, p);
                    break;
                }
            }
            if (!end) {
                k++;
                break;
            }
            p = end + 1;
        }
        if (!rc && k != t->ncols)
            rc = DV_ERROR(err, "%s:%d: %d fields, the header has %d", path, lineno, k, t->ncols);
        if (!rc) t->nrows++;
    }
    fclose(f);
    if (!rc && t->nrows == 0) rc = DV_ERROR(err, "%s: no data rows yet", path);
    if (rc) free(t->v), t->v = NULL;
    return rc;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

/* The group of column `name`, or NULL when it is not plotted. */
static const char *group_of(const char *name) {
    if (!strcmp(name, "epoch") || !strcmp(name, "step") || !strcmp(name, "lr") ||
        ends_with(name, "_per_s") || ends_with(name, "_time_s") || !strcmp(name, "tflops") ||
        !strcmp(name, "mfu"))
        return NULL;
    const char *u = strrchr(name, '_');
    return u ? u + 1 : name;
}

static const char *group_title(const char *g) {
    if (!strcmp(g, "acc")) return "accuracy";
    if (!strcmp(g, "ppl")) return "perplexity";
    return g;
}

/* A round step giving about `want` ticks over span (1, 2 or 5 x 10^k). */
static double nice_step(double span, int want) {
    double raw = span / want, mag = pow(10.0, floor(log10(raw))), r = raw / mag;
    return (r < 1.5 ? 1 : r < 3.5 ? 2 : r < 7.5 ? 5 : 10) * mag;
}

static void fmt_num(char *buf, size_t len, double v) {
    if (fabs(v) < 1e-12) v = 0;
    snprintf(buf, len, "%.4g", v);
}

typedef struct panel {
    const char *group;
    int cols[PLOT_MAX_GROUP], n;
} panel;

static void draw_panel(dv_canvas *c, int top, const csv *t, int xcol, const panel *p) {
    const int x0 = M_LEFT, x1 = c->w - M_RIGHT, y0 = top + M_TOP, y1 = top + PANEL_H - M_BOTTOM;
    double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
    for (int r = 0; r < t->nrows; r++) {
        double x = xcol >= 0 ? t->v[(size_t)r * t->ncols + xcol] : r + 1;
        if (!isfinite(x)) continue;
        for (int k = 0; k < p->n; k++) {
            double y = t->v[(size_t)r * t->ncols + p->cols[k]];
            if (!isfinite(y)) continue;
            xmin = fmin(xmin, x), xmax = fmax(xmax, x);
            ymin = fmin(ymin, y), ymax = fmax(ymax, y);
        }
    }
    dv_canvas_text(c, x0, top + 10, group_title(p->group), BLACK, 2);
    if (!(xmin <= xmax)) { /* nothing finite to draw */
        dv_canvas_text(c, x0 + 10, (y0 + y1) / 2, "no values", INK, 1);
        return;
    }
    if (xmax == xmin) xmin -= 0.5, xmax += 0.5;
    if (ymax == ymin) {
        double d = fabs(ymin) > 0 ? fabs(ymin) * 0.1 : 1.0;
        ymin -= d, ymax += d;
    } else {
        double d = (ymax - ymin) * 0.05;
        ymin -= d, ymax += d;
    }
#define PX(x) (x0 + ((x)-xmin) / (xmax - xmin) * (x1 - x0))
#define PY(y) (y1 - ((y)-ymin) / (ymax - ymin) * (y1 - y0))
    char buf[32];
    double st = nice_step(ymax - ymin, 5);
    for (double v = ceil(ymin / st) * st; v <= ymax; v += st) {
        int y = (int)lround(PY(v));
        dv_canvas_rect(c, x0, y, x1, y, GRID);
        fmt_num(buf, sizeof buf, v);
        dv_canvas_text(c, x0 - 6 - dv_text_width(buf, 1), y - 3, buf, INK, 1);
    }
    st = nice_step(xmax - xmin, 8);
    if (xcol >= 0 && !strcmp(t->names[xcol], "epoch") && st < 1) st = 1;
    for (double v = ceil(xmin / st) * st; v <= xmax; v += st) {
        int x = (int)lround(PX(v));
        dv_canvas_rect(c, x, y0, x, y1, GRID);
        fmt_num(buf, sizeof buf, v);
        dv_canvas_text(c, x - dv_text_width(buf, 1) / 2, y1 + 6, buf, INK, 1);
    }
    const char *xname = xcol >= 0 ? t->names[xcol] : "row";
    dv_canvas_text(c, (x0 + x1 - dv_text_width(xname, 1)) / 2, y1 + 22, xname, INK, 1);
    dv_canvas_rect(c, x0, y0, x0, y1, BLACK);
    dv_canvas_rect(c, x0, y1, x1, y1, BLACK);
    const int marks = t->nrows <= 40; /* a dot on every point of short runs */
    for (int k = 0; k < p->n; k++) {
        const uint32_t col = palette[k % (int)(sizeof palette / sizeof palette[0])];
        double px = NAN, py = NAN;
        for (int r = 0; r < t->nrows; r++) {
            double x = xcol >= 0 ? t->v[(size_t)r * t->ncols + xcol] : r + 1;
            double y = t->v[(size_t)r * t->ncols + p->cols[k]];
            if (!isfinite(x) || !isfinite(y)) { /* a gap */
                px = py = NAN;
                continue;
            }
            double cx = PX(x), cy = PY(y);
            if (isfinite(px)) dv_canvas_line(c, px, py, cx, cy, col, 2);
            if (marks || !isfinite(px))
                dv_canvas_rect(c, (int)lround(cx) - 2, (int)lround(cy) - 2, (int)lround(cx) + 2,
                               (int)lround(cy) + 2, col);
            px = cx, py = cy;
        }
    }
    /* legend: one row in the top margin, ending at the panel's right edge,
     * so it never hides a point */
    int lw = 0;
    for (int k = 0; k < p->n; k++)
        lw += 26 + dv_text_width(t->names[p->cols[k]], 1) + (k ? 14 : 0);
    int lx = x1 - lw;
    const int ly = y0 - 14;
    for (int k = 0; k < p->n; k++) {
        const uint32_t col = palette[k % (int)(sizeof palette / sizeof palette[0])];
        if (k) lx += 14;
        dv_canvas_rect(c, lx, ly + 2, lx + 18, ly + 4, col);
        lx += 26;
        lx += dv_canvas_text(c, lx, ly, t->names[p->cols[k]], BLACK, 1);
    }
#undef PX
#undef PY
}

dv_status dv_plot_metrics(const char *csv_path, const char *png_path, const char *xname, int width,
                          char *err) {
    csv t;
    if (read_csv(csv_path, &t, err)) return DV_ERR;
    int xcol = -1;
    for (int k = 0; k < t.ncols; k++)
        if (!strcmp(t.names[k], xname)) xcol = k;
    if (xcol < 0 && strcmp(xname, "epoch") && strcmp(xname, "step")) {
        free(t.v);
        return DV_ERROR(err, "--x %s: use epoch or step", xname);
    }
    panel panels[PLOT_MAX_COLS];
    int np = 0;
    for (int k = 0; k < t.ncols; k++) {
        const char *g = group_of(t.names[k]);
        if (!g) continue;
        int i = 0;
        while (i < np && strcmp(panels[i].group, g))
            i++;
        if (i == np) panels[np++] = (panel){g, {0}, 0};
        if (panels[i].n < PLOT_MAX_GROUP) panels[i].cols[panels[i].n++] = k;
    }
    if (!np) {
        free(t.v);
        return DV_ERROR(err, "%s: no metric columns to plot (only epoch, step, lr, rates)",
                        csv_path);
    }
    dv_canvas c;
    if (dv_canvas_init(&c, width, PANEL_H * np, WHITE)) {
        free(t.v);
        return DV_ERROR(err, "out of memory for a %dx%d plot", width, PANEL_H * np);
    }
    for (int i = 0; i < np; i++)
        draw_panel(&c, i * PANEL_H, &t, xcol, &panels[i]);
    int rc = dv_png_write(png_path, c.w, c.h, 3, c.px, err);
    dv_canvas_free(&c);
    free(t.v);
    return rc;
}

static const char plot_help[] =
    "usage: dive plot RUN_DIR|METRICS.csv [-o OUT.png] [--x epoch|step] [--width PX]\n"
    "\n"
    "Draws a run's metrics.csv as line charts in one PNG: a panel per kind of\n"
    "metric (loss, accuracy, perplexity, ...), train and val curves together.\n"
    "  -o OUT.png     where to write (default RUN_DIR/curves.png)\n"
    "  --x epoch|step the x axis (default epoch)\n"
    "  --width PX     image width, 320 to 4000 (default 900)\n";

int dv_cli_plot(int argc, char **argv) {
    const char *in = NULL, *out = NULL, *xname = "epoch";
    long width = 900;
    char err[DV_ERR_LEN];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(plot_help, stdout);
            return 0;
        }
        if ((!strcmp(a, "-o") || !strcmp(a, "--x") || !strcmp(a, "--width")) && i + 1 >= argc) {
            fprintf(stderr, "dive plot: %s needs a value (see --help)\n", a);
            return 2;
        }
        if (!strcmp(a, "-o")) {
            out = argv[++i];
        } else if (!strcmp(a, "--x")) {
            xname = argv[++i];
        } else if (!strcmp(a, "--width")) {
            char *end;
            width = strtol(argv[++i], &end, 10);
            if (*end || width < 320 || width > 4000) {
                fprintf(stderr, "dive plot: --width %s: expected 320 to 4000\n", argv[i]);
                return 2;
            }
        } else if (a[0] == '-') {
            fprintf(stderr, "dive plot: unknown option %s (see --help)\n", a);
            return 2;
        } else if (!in) {
            in = a;
        } else {
            fprintf(stderr, "dive plot: one RUN_DIR or metrics.csv only (see --help)\n");
            return 2;
        }
    }
    if (!in) {
        fputs(plot_help, stderr);
        return 2;
    }
    if (strcmp(xname, "epoch") && strcmp(xname, "step")) {
        fprintf(stderr, "dive plot: --x %s: use epoch or step\n", xname);
        return 2;
    }
    char csv_path[4096], png_path[4096];
    size_t n = strlen(in);
    if (n >= 4 && !strcmp(in + n - 4, ".csv")) {
        snprintf(csv_path, sizeof csv_path, "%s", in);
        const char *slash = strrchr(in, '/');
        if (slash)
            snprintf(png_path, sizeof png_path, "%.*s/curves.png", (int)(slash - in), in);
        else
            snprintf(png_path, sizeof png_path, "curves.png");
    } else {
        snprintf(csv_path, sizeof csv_path, "%s/metrics.csv", in);
        snprintf(png_path, sizeof png_path, "%s/curves.png", in);
    }
    if (out) snprintf(png_path, sizeof png_path, "%s", out);
    if (dv_plot_metrics(csv_path, png_path, xname, (int)width, err)) {
        dv_error_print("dive: error", err);
        return 1;
    }
    printf("%s: %s\n", csv_path, png_path);
    return 0;
}
