/* error.c — Dive's one error convention (base.h): making a message with
 * its origin, reading the text back out, and printing it for a person.
 *
 * The origin prefix is the one piece of process-wide state in Dive's
 * libraries: written once by comm when MPI starts (before other threads
 * exist) and only read after, so messages made deep inside any module name
 * their rank without the comm handle being passed down.
 */
#include "base.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static char g_origin[320] = "[rank ?]";

void dv_error_set_origin(int rank, int size, const char *host) {
    snprintf(g_origin, sizeof g_origin, "[rank %d/%d %s]", rank, size, host ? host : "?");
}

const char *dv_error_origin(void) {
    return g_origin;
}

dv_status dv_error_at(char *err, const char *file, int line, const char *call, const char *fmt,
                      ...) {
    if (!err) return DV_ERR;
    const char *base = file ? strrchr(file, '/') : NULL;
    base = base ? base + 1 : (file ? file : "?");
    /* Format into a local buffer first: err may be an argument too. */
    char tmp[DV_ERR_LEN];
    int k = call ? snprintf(tmp, sizeof tmp, "%s %s:%d: %.*s: ", g_origin, base, line,
                            (int)strcspn(call, "("), call)
                 : snprintf(tmp, sizeof tmp, "%s %s:%d: ", g_origin, base, line);
    if (k < 0) k = 0, tmp[0] = '\0';
    if (k < (int)sizeof tmp && fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(tmp + k, sizeof tmp - (size_t)k, fmt, ap);
        va_end(ap);
    }
    memcpy(err, tmp, strlen(tmp) + 1);
    return DV_ERR;
}

/* Length of the "[rank r/n host] file:line: " origin at the start of err,
 * or 0 when err does not start with one. */
static size_t origin_len(const char *err) {
    if (strncmp(err, "[rank ", 6) != 0) return 0;
    const char *close = strstr(err, "] ");
    if (!close) return 0;
    const char *p = close + 2, *colon = strstr(p, ": ");
    if (!colon || colon == p) return 0;
    /* file:line: the last ':' before the ": " is followed by digits only */
    const char *q = colon;
    while (q > p && isdigit((unsigned char)q[-1]))
        q--;
    if (q == colon || q == p || q[-1] != ':') return 0;
    return (size_t)(colon + 2 - err);
}

const char *dv_error_text(const char *err) {
    return err ? err + origin_len(err) : "";
}

dv_status dv_error_context(char *err, const char *fmt, ...) {
    if (!err) return DV_ERR;
    char ctx[DV_ERR_LEN], tmp[DV_ERR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx, sizeof ctx, fmt, ap);
    va_end(ap);
    /* origin, context, ": ", text, cut to the buffer as one string */
    size_t o = origin_len(err), k = 0;
    const char *part[4] = {err, ctx, ": ", err + o};
    size_t plen[4] = {o, strlen(ctx), 2, strlen(err + o)};
    for (int i = 0; i < 4 && k < sizeof tmp - 1; i++) {
        size_t n = plen[i] < sizeof tmp - 1 - k ? plen[i] : sizeof tmp - 1 - k;
        memcpy(tmp + k, part[i], n);
        k += n;
    }
    tmp[k] = '\0';
    memcpy(err, tmp, k + 1);
    return DV_ERR;
}

void dv_error_print(const char *lead, const char *err) {
    if (!err) err = "";
    size_t o = origin_len(err);
    fprintf(stderr, "%s: %s", lead, err + o);
    int rank = -1, size = 0;
    char host[256] = "";
    if (o && sscanf(err, "[rank %d/%d %255[^]]]", &rank, &size, host) == 3 && rank > 0)
        fprintf(stderr, " (rank %d/%d on %s)", rank, size, host);
    const char *debug = getenv("DIVE_DEBUG");
    if (o && debug && *debug && strcmp(debug, "0"))
        fprintf(stderr, " (from %.*s)", (int)(o - 2), err);
    fputc('\n', stderr);
    fflush(stderr);
}
