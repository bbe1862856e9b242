/* base.h — what every module of Dive shares, below all of them: the one
 * error convention, and a monotonic clock.
 *
 * Errors. A function that can fail returns dv_status and writes a message
 * into `err`, a buffer of DV_ERR_LEN chars that the caller owns. Every
 * message is made by dv_error_at (through the macros below), so it always
 * reads
 *
 *     [rank r/n host] file.c:line: call: text
 *
 * where `[rank r/n host]` is the process that made it (set once by
 * dv_error_set_origin when comm starts MPI; "[rank ?]" before that),
 * `file.c:line` the place in Dive's source, `call` the failing library call
 * when there is one, and `text` what a user reads: it names the config
 * file:line, the data file and dataset, or the checkpoint at fault. Callers
 * pass a failure up unchanged (DV_TRY), or add context in front of the text
 * with dv_error_context, which keeps the origin. What a person sees is
 * printed by dv_error_print: the text, the rank when it is not rank 0, and
 * the origin with DIVE_DEBUG=1.
 *
 * Code whose functions cannot return a status (the backend ops, which are
 * queued on a device) records its first error in a buffer of its own with
 * dv_error_at and hands it over at the caller's next check point.
 *
 * Nothing here depends on any other module of Dive.
 */
#ifndef DV_BASE_H
#define DV_BASE_H

#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum dv_status { DV_OK = 0, DV_ERR = -1 } dv_status;

/* The size of every error message buffer. */
#define DV_ERR_LEN 1024

#if defined(__GNUC__)
#define DV_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define DV_PRINTF(f, a)
#endif

/* Writes "[rank r/n host] file:line: call: text" into err (DV_ERR_LEN
 * bytes; err may be NULL) and returns DV_ERR. `file` is shortened to its
 * last path component; `call` is cut at its first '(' so a stringified
 * call expression names the call, and a NULL call leaves that part out.
 * err may also be an argument of the format (a message wrapped whole). */
dv_status dv_error_at(char *err, const char *file, int line, const char *call, const char *fmt, ...)
    DV_PRINTF(5, 6);

/* DV_ERROR(err, fmt, ...): an expression, DV_ERR, with the message made
 * here: `return DV_ERROR(err, "%s: not found", path);` or
 * `rc = DV_ERROR(err, ...);` in a chain of steps. */
#define DV_ERROR(err, ...) dv_error_at((err), __FILE__, __LINE__, NULL, __VA_ARGS__)

/* The check family, for functions that return dv_status:
 *
 *   DV_FAIL(err, call, fmt, ...)        fail now, naming the failing call
 *   DV_CHECK(cond, err, call, fmt, ...) fail unless cond
 *   DV_TRY(expr)                        pass a failed dv_status up; expr has
 *                                       already written its message to err
 *
 * comm adds DV_MPI_CHECK, the CUDA code its CUDA, cuBLAS and NCCL checks,
 * all on dv_error_at. */
#define DV_FAIL(err, call, ...)                                                                    \
    do {                                                                                           \
        return dv_error_at((err), __FILE__, __LINE__, (call), __VA_ARGS__);                        \
    } while (0)

#define DV_CHECK(cond, err, call, ...)                                                             \
    do {                                                                                           \
        if (!(cond)) DV_FAIL((err), (call), __VA_ARGS__);                                          \
    } while (0)

#define DV_TRY(expr)                                                                               \
    do {                                                                                           \
        if ((expr) != DV_OK) return DV_ERR;                                                        \
    } while (0)

/* The text of a message: what follows its "[rank r/n host] file:line: "
 * origin (the whole message if it has none). Borrowed from err. */
const char *dv_error_text(const char *err);

/* Puts "context: " in front of the text of the message in err, keeping
 * its origin: `dv_error_context(err, "%s", path)` turns "[...] split.c:9:
 * cannot read" into "[...] split.c:9: PATH: cannot read". Returns DV_ERR. */
dv_status dv_error_context(char *err, const char *fmt, ...) DV_PRINTF(2, 3);

/* Prints "<lead>: <text>" and a newline to stderr, adding " (rank r/n on
 * host)" when the message was made on a rank other than 0, and the whole
 * origin with DIVE_DEBUG=1 in the environment. lead is "dive: error" for a
 * failed run, "dive train" for a usage error. */
void dv_error_print(const char *lead, const char *err);

/* Sets the "[rank r/n host]" that messages start with. comm calls it once
 * MPI has started, on the thread that owns MPI, before other threads
 * exist; it is only read after. */
void dv_error_set_origin(int rank, int size, const char *host);

/* The "[rank r/n host]" of this process (borrowed). */
const char *dv_error_origin(void);

/* Elements of an array (not a pointer). Name tables are tied to their
 * enums with it: `_Static_assert(DV_ARRAY_LEN(names) == DV_X_COUNT + 1, ...)`
 * over designated initializers ending in a NULL. */
#define DV_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Opens Dive's module `name` (libdive-<name>.so), from the path in the
 * environment variable `env` when it is set, else beside libdive.so or the
 * program. NULL, with the reason in err (the missing library dlopen names),
 * when it cannot be loaded. The handle stays open for the process. */
void *dv_module_open(const char *name, const char *env, char *err);
/* A symbol of a module, or NULL with err. */
void *dv_module_symbol(void *module, const char *symbol, char *err);

/* Seconds on a monotonic clock. */
double dv_now(void);

/* FNV-1a over n bytes at p, continuing from h (start from DV_FNV1A_SEED):
 * the one string and byte hash of the run's identity and agreement and of
 * the config's name table. Not cryptographic. */
#define DV_FNV1A_SEED 0xcbf29ce484222325ULL
static inline unsigned long long dv_fnv1a(unsigned long long h, const void *p, size_t n) {
    const unsigned char *b = (const unsigned char *)p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ULL;
    return h;
}

#ifdef __cplusplus
}
#endif
#endif
