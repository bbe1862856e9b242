/* import.c — `dive import idx|csv|text`: datasets into Dive's HDF5 layout
 * (docs/data.md), on one process, without MPI.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli-impl.h"
#include "import.h"

static const char import_help[] =
    "usage: dive import idx IMAGES LABELS -o OUT.h5 [--split NAME]\n"
    "       dive import csv FILE.csv -o OUT.h5 [--split NAME] [--label-col N] [--header]\n"
    "       dive import text FILE|DIR... -o OUT.h5 [--vocab bytes|chars] [--val FRACTION]\n"
    "\n"
    "Converts a dataset into Dive's HDF5 layout: /<split>/x and /<split>/y\n"
    "(chunked, gzip). IDX files may be raw or .gz (MNIST, Fashion-MNIST). CSV:\n"
    "numeric columns, the label in column N (0-based, negative from the end,\n"
    "default -1). The split defaults to 'train'; other splits in OUT are kept.\n"
    "\n"
    "text: files, and directories walked recursively in sorted path order, become\n"
    "one token stream: /train/tokens, the last FRACTION (default 0.1; 0: none) as\n"
    "/val/tokens, and the vocabulary in /vocab. --vocab bytes (default): ids are\n"
    "byte values, 256 of them; chars: the Unicode characters present (UTF-8),\n"
    "sorted. Files with a NUL byte (or, for chars, invalid UTF-8) are skipped.\n"
    "Those three are replaced in OUT; everything else in it is kept.\n";

static void print_skip(void *ctx, const char *path, const char *why) {
    (void)ctx;
    printf("skipped %s: %s\n", path, why);
}

static int import_text(const char **inputs, int n, const char *vocab, const char *val,
                       const char *out) {
    dv_text_options opt = {.vocab = DV_VOCAB_BYTES, .val_fraction = 0.1, .on_skip = print_skip};
    if (vocab && !strcmp(vocab, "chars"))
        opt.vocab = DV_VOCAB_CHARS;
    else if (vocab && strcmp(vocab, "bytes")) {
        fprintf(stderr, "dive import: --vocab %s: expected bytes or chars\n", vocab);
        return 2;
    }
    if (val) {
        char *end;
        opt.val_fraction = strtod(val, &end);
        if (!*val || *end || !(opt.val_fraction >= 0 && opt.val_fraction < 1)) {
            fprintf(stderr, "dive import: --val %s: expected a fraction in [0, 1)\n", val);
            return 2;
        }
    }
    char err[DV_ERR_LEN];
    dv_text_report r;
    if (dv_import_text(inputs, n, &opt, out, &r, err) != DV_OK) {
        fflush(stdout);
        dv_error_print("dive: error", err);
        return 1;
    }
    printf("read %lld file%s (%lld skipped): %lld tokens, vocabulary %s of %lld\n",
           (long long)r.files_read, r.files_read == 1 ? "" : "s", (long long)r.files_skipped,
           (long long)(r.n_train + r.n_val), opt.vocab == DV_VOCAB_CHARS ? "chars" : "bytes",
           (long long)r.vocab_size);
    printf("wrote /train/tokens (%lld)", (long long)r.n_train);
    if (r.n_val) printf(", /val/tokens (%lld)", (long long)r.n_val);
    printf(" and /vocab (%lld) to %s\n", (long long)r.vocab_size, out);
    return 0;
}

/* Which options each format takes. */
static int import_takes(const char *kind, const char *opt) {
    static const char *const text_only[] = {"--vocab", "--val"};
    static const char *const table_only[] = {"--split", "--label-col", "--header"};
    int text = !strcmp(kind, "text");
    const char *const *list = text ? table_only : text_only;
    for (int i = 0; i < (text ? 3 : 2); i++)
        if (!strcmp(opt, list[i])) return 0;
    return 1;
}

int dv_cli_import(int argc, char **argv) {
    if (argc < 2 || dv_cli_wants_help(argc, argv)) {
        fputs(import_help, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *kind = argv[1], *out = NULL, *split = "train", *vocab = NULL, *val = NULL;
    int want = !strcmp(kind, "idx") ? 2 : !strcmp(kind, "csv") ? 1 : !strcmp(kind, "text") ? -1 : 0;
    if (!want) {
        fprintf(stderr, "dive import: unknown format '%s' (idx, csv or text)\n", kind);
        return 2;
    }
    /* Positional arguments: at most argc of them. */
    const char **pos = calloc((size_t)argc, sizeof(*pos));
    if (!pos) {
        fprintf(stderr, "dive import: out of memory\n");
        return 1;
    }
    int npos = 0, header = 0, rc = 2;
    long label_col = -1;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        int takes_value = !strcmp(a, "-o") || !strcmp(a, "--output") || !strcmp(a, "--split") ||
                          !strcmp(a, "--label-col") || !strcmp(a, "--vocab") || !strcmp(a, "--val");
        if (a[0] == '-' && !import_takes(kind, a)) {
            fprintf(stderr, "dive import: %s does not apply to %s (see --help)\n", a, kind);
            goto done;
        }
        if (takes_value && i + 1 >= argc) {
            fprintf(stderr, "dive import: %s needs a value\n", a);
            goto done;
        }
        if (!strcmp(a, "-o") || !strcmp(a, "--output"))
            out = argv[++i];
        else if (!strcmp(a, "--split"))
            split = argv[++i];
        else if (!strcmp(a, "--vocab"))
            vocab = argv[++i];
        else if (!strcmp(a, "--val"))
            val = argv[++i];
        else if (!strcmp(a, "--label-col")) {
            char *end;
            label_col = strtol(argv[++i], &end, 10);
            if (*end) {
                fprintf(stderr, "dive import: --label-col %s: not an integer\n", argv[i]);
                goto done;
            }
        } else if (!strcmp(a, "--header"))
            header = 1;
        else if (a[0] == '-' || npos == want) {
            fprintf(stderr, "dive import: unexpected argument %s (see --help)\n", a);
            goto done;
        } else
            pos[npos++] = a;
    }
    if ((want > 0 && npos != want) || npos == 0 || !out) {
        fprintf(stderr, "%s", import_help);
        goto done;
    }
    if (want < 0) {
        rc = import_text(pos, npos, vocab, val, out);
        goto done;
    }
    char err[DV_ERR_LEN];
    dv_status st = want == 2 ? dv_import_idx(pos[0], pos[1], out, split, err)
                             : dv_import_csv(pos[0], (int)label_col, header, out, split, err);
    if (st != DV_OK) {
        dv_error_print("dive: error", err);
        rc = 1;
        goto done;
    }
    printf("wrote /%s/x and /%s/y to %s\n", split, split, out);
    rc = 0;
done:
    free(pos);
    return rc;
}
