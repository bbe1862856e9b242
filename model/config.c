/* config.c — Dive's INI configs: parsing, `--set` overrides, typed getters
 * that name file:line on a bad value, and the check that every key was read
 * (an unknown key is an error, not a silent default).
 *
 * The parser is Dive's own (docs/config.md, "File format"): lines of any
 * length, every section header a new section (two `[dense]` in a row are
 * two layers, an empty `[flatten]` is one), section types and keys checked
 * as identifiers, layer names as plain identifiers, and nothing truncated:
 * a name too long for DV_NAME_LEN is an error. Sections and names are
 * looked up through a hash table while naming, so a config of many
 * sections loads in linear time.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"

/* The largest config file read (a config is a few KB; this stops a
 * device such as /dev/zero, or a wrong file, from being read forever). */
#define MAX_CONFIG_BYTES (16u << 20)

static void trim(char *s) {
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = 0;
    size_t i = 0;
    while (s[i] && isspace((unsigned char)s[i]))
        i++;
    if (i) memmove(s, s + i, n - i + 1);
}

static dv_config_section *add_section(dv_config *cfg, const char *type, int line) {
    if (cfg->nsec == cfg->seccap) {
        int cap = cfg->seccap ? 2 * cfg->seccap : 16;
        dv_config_section *ns = realloc(cfg->sec, sizeof(*ns) * (size_t)cap);
        if (!ns) return NULL;
        cfg->sec = ns;
        cfg->seccap = cap;
    }
    dv_config_section *s = &cfg->sec[cfg->nsec++];
    memset(s, 0, sizeof(*s));
    snprintf(s->type, sizeof(s->type), "%s", type);
    s->line = line;
    s->origin = -1;
    return s;
}

static dv_config_kv *find_kv(const dv_config_section *s, const char *key) {
    for (int i = 0; i < s->nkv; i++)
        if (!strcmp(s->kv[i].key, key)) return &s->kv[i];
    return NULL;
}

/* Sets key in the list (kv, n, cap): replaces its value, or appends it. */
static dv_config_kv *put_in(dv_config_kv **kv_list, int *n, int *cap, const char *key,
                            const char *value, int line) {
    dv_config_kv *kv = NULL;
    for (int i = 0; i < *n && !kv; i++)
        if (!strcmp((*kv_list)[i].key, key)) kv = &(*kv_list)[i];
    if (!kv) {
        if (*n == *cap) {
            int c = *cap ? *cap * 2 : 8;
            dv_config_kv *grown = realloc(*kv_list, sizeof(*grown) * (size_t)c);
            if (!grown) return NULL;
            *kv_list = grown;
            *cap = c;
        }
        kv = &(*kv_list)[(*n)++];
        memset(kv, 0, sizeof(*kv));
        snprintf(kv->key, sizeof(kv->key), "%s", key);
    } else {
        free(kv->value);
    }
    kv->value = strdup(value);
    kv->line = line;
    return kv->value ? kv : NULL;
}

static int put_kv(dv_config_section *s, const char *key, const char *value, int line) {
    return put_in(&s->kv, &s->nkv, &s->cap, key, value, line) ? 0 : -1;
}

/* Records what a getter read (for dv_config_resolved_text). Out of memory
 * loses the entry, which can only make ranks look different, never alike. */
static void resolve(dv_config_section *s, const char *key, const char *fmt, ...) DV_PRINTF(3, 4);
static void resolve(dv_config_section *s, const char *key, const char *fmt, ...) {
    if (!s) return;
    char buf[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    put_in(&s->res, &s->nres, &s->rescap, key, buf, 0);
}

/* A section type: letters, digits, '_' and '.' (generator.dense), not
 * starting with a digit or '.'. */
static int is_type(const char *s) {
    if (!isalpha((unsigned char)*s) && *s != '_') return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '.') return 0;
    return 1;
}

/* A key or a layer name: letters, digits and '_', not starting with a digit. */
static int is_ident(const char *s) {
    if (!isalpha((unsigned char)*s) && *s != '_') return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_') return 0;
    return 1;
}

/* A string -> int map for naming sections (open addressing, linear probing;
 * keys are borrowed). */
typedef struct name_map {
    const char **key;
    int *val;
    size_t cap; /* a power of two, at least twice the entries */
} name_map;

static int map_init(name_map *m, int n) {
    m->cap = 16;
    while (m->cap < 2 * (size_t)n + 2)
        m->cap *= 2;
    m->key = calloc(m->cap, sizeof(*m->key));
    m->val = calloc(m->cap, sizeof(*m->val));
    return m->key && m->val ? 0 : -1;
}

static void map_free(name_map *m) {
    free(m->key);
    free(m->val);
}

/* The slot of key: its own, or the empty one where it would go. */
static size_t map_slot(const name_map *m, const char *key) {
    uint64_t h = dv_fnv1a(DV_FNV1A_SEED, key, strlen(key));
    size_t i = (size_t)h & (m->cap - 1);
    while (m->key[i] && strcmp(m->key[i], key))
        i = (i + 1) & (m->cap - 1);
    return i;
}

/* Layer names: the `name` key, or <type>_<k> counting sections of a type. */
static dv_status name_sections(dv_config *cfg, char *err) {
    name_map types = {0}, names = {0};
    if (map_init(&types, cfg->nsec) || map_init(&names, cfg->nsec)) {
        map_free(&types);
        map_free(&names);
        return DV_ERROR(err, "%s: out of memory", cfg->path);
    }
    dv_status rc = DV_OK;
    for (int i = 0; i < cfg->nsec && !rc; i++) {
        dv_config_section *s = &cfg->sec[i];
        dv_config_kv *kv = find_kv(s, "name");
        int fixed = !strcmp(s->type, "data") || !strcmp(s->type, "train") ||
                    !strcmp(s->type, "input") || !strcmp(s->type, "gan");
        size_t t = map_slot(&types, s->type);
        types.key[t] = s->type;
        const int k = ++types.val[t];
        if (kv && fixed) {
            rc = DV_ERROR(err, "%s:%d: [%s] cannot be renamed: 'name' is for layer sections",
                          cfg->path, kv->line, s->type);
        } else if (kv) {
            kv->used = 1;
            if (!is_ident(kv->value))
                rc = DV_ERROR(err,
                              "%s:%d: [%s] name = %s: a layer name is letters, digits and '_', "
                              "starting with a letter (it names the layer's group in "
                              "checkpoints)",
                              cfg->path, kv->line, s->type, kv->value);
            else if (strlen(kv->value) >= DV_NAME_LEN)
                rc = DV_ERROR(err, "%s:%d: [%s] name: at most %d characters", cfg->path, kv->line,
                              s->type, DV_NAME_LEN - 1);
            else
                snprintf(s->name, sizeof(s->name), "%s", kv->value);
        } else if (fixed) {
            snprintf(s->name, sizeof(s->name), "%s", s->type);
        } else if (snprintf(s->name, sizeof(s->name), "%s_%d", s->type, k) >= DV_NAME_LEN) {
            rc = DV_ERROR(err, "%s:%d: [%s]: the section name is too long to number", cfg->path,
                          s->line, s->type);
        }
        if (rc) break;
        size_t j = map_slot(&names, s->name);
        if (names.key[j]) {
            rc = DV_ERROR(err, "%s:%d: section name '%s' is already used at line %d", cfg->path,
                          s->line, s->name, cfg->sec[names.val[j]].line);
            break;
        }
        names.key[j] = s->name;
        names.val[j] = i;
    }
    map_free(&types);
    map_free(&names);
    return rc;
}

/* One line of a config (NUL-terminated, no newline) at `line`. */
static dv_status parse_line(dv_config *cfg, char *p, int line, char *err) {
    size_t n = strlen(p);
    while (n && isspace((unsigned char)p[n - 1]))
        p[--n] = 0;
    while (isspace((unsigned char)*p))
        p++;
    if (!*p || *p == ';' || *p == '#') return DV_OK;
    if (*p == '[') {
        char *close = strchr(p, ']');
        if (!close) return DV_ERROR(err, "%s:%d: section header without ']'", cfg->path, line);
        char *rest = close + 1;
        while (isspace((unsigned char)*rest))
            rest++;
        if (*rest && *rest != ';' && *rest != '#')
            return DV_ERROR(err, "%s:%d: text after the section header: '%s'", cfg->path, line,
                            rest);
        *close = 0;
        char *type = p + 1;
        trim(type);
        if (!*type) return DV_ERROR(err, "%s:%d: empty section name", cfg->path, line);
        if (!is_type(type))
            return DV_ERROR(err,
                            "%s:%d: [%s]: a section name is letters, digits, '_' and '.', "
                            "starting with a letter",
                            cfg->path, line, type);
        if (strlen(type) >= DV_NAME_LEN)
            return DV_ERROR(err, "%s:%d: [%.40s...]: a section name has at most %d characters",
                            cfg->path, line, type, DV_NAME_LEN - 1);
        if (!add_section(cfg, type, line)) return DV_ERROR(err, "%s: out of memory", cfg->path);
        return DV_OK;
    }
    char *sep = p + strcspn(p, "=:");
    if (!*sep)
        return DV_ERROR(err, "%s:%d: expected 'key = value', a [section] or a comment: '%s'",
                        cfg->path, line, p);
    char *value = sep + 1;
    *sep = 0;
    trim(p);
    if (!is_ident(p))
        return DV_ERROR(err,
                        "%s:%d: '%s': a key is letters, digits and '_', starting with a letter",
                        cfg->path, line, p);
    if (strlen(p) >= DV_NAME_LEN)
        return DV_ERROR(err, "%s:%d: key '%.40s...' is longer than %d characters", cfg->path, line,
                        p, DV_NAME_LEN - 1);
    /* an inline comment starts at a ';' after whitespace */
    for (char *c = value; *c; c++)
        if (*c == ';' && c > value && isspace((unsigned char)c[-1])) {
            *c = 0;
            break;
        }
    trim(value);
    if (!cfg->nsec)
        return DV_ERROR(err, "%s:%d: key '%s' outside of any section", cfg->path, line, p);
    dv_config_section *s = &cfg->sec[cfg->nsec - 1];
    if (find_kv(s, p))
        return DV_ERROR(err, "%s:%d: key '%s' given twice in [%s]", cfg->path, line, p, s->type);
    if (put_kv(s, p, value, line)) return DV_ERROR(err, "%s: out of memory", cfg->path);
    return DV_OK;
}

static dv_status parse_text(dv_config *cfg, const char *text, char *err) {
    char *buf = NULL;
    size_t cap = 0;
    int line = 0;
    dv_status rc = DV_OK;
    for (const char *p = text; *p && !rc;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        line++;
        if (len + 1 > cap) {
            cap = len + 1 > 2 * cap ? len + 1 : 2 * cap;
            char *b = realloc(buf, cap);
            if (!b) {
                rc = DV_ERROR(err, "%s: out of memory", cfg->path);
                break;
            }
            buf = b;
        }
        memcpy(buf, p, len);
        buf[len] = 0;
        rc = parse_line(cfg, buf, line, err);
        p += len + (nl != NULL);
    }
    free(buf);
    DV_TRY(rc);
    return name_sections(cfg, err);
}

dv_status dv_config_load_text(dv_config *cfg, const char *label, const char *text, char *err) {
    memset(cfg, 0, sizeof(*cfg));
    snprintf(cfg->path, sizeof(cfg->path), "%s", label);
    return parse_text(cfg, text, err);
}

dv_status dv_config_load(dv_config *cfg, const char *path, char *err) {
    memset(cfg, 0, sizeof(*cfg));
    if (strlen(path) >= sizeof(cfg->path))
        return DV_ERROR(err, "%.100s...: the config's path is longer than %zu characters", path,
                        sizeof(cfg->path) - 1);
    snprintf(cfg->path, sizeof(cfg->path), "%s", path);
    FILE *f = fopen(path, "rb");
    if (!f) return DV_ERROR(err, "%s: cannot open config: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) == 0 && S_ISDIR(sb.st_mode)) {
        fclose(f);
        return DV_ERROR(err, "%s: is a directory, not a config", path);
    }
    size_t cap = 4096, n = 0;
    char *text = malloc(cap);
    int too_big = 0;
    for (;;) {
        if (!text) break;
        if (n + 1024 > cap) {
            if (cap > MAX_CONFIG_BYTES) {
                too_big = 1;
                break;
            }
            char *t = realloc(text, cap * 2);
            if (!t) {
                free(text);
                text = NULL;
                break;
            }
            text = t;
            cap *= 2;
        }
        size_t got = fread(text + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (!text) return DV_ERROR(err, "%s: out of memory", path);
    text[n] = 0;
    dv_status rc = DV_OK;
    const char *nul = memchr(text, 0, n);
    if (too_big) {
        rc = DV_ERROR(err, "%s: larger than %u MiB: not a config", path, MAX_CONFIG_BYTES >> 20);
    } else if (bad) {
        rc = DV_ERROR(err, "%s: read error", path);
    } else if (nul) {
        int line = 1;
        for (const char *c = text; c < nul; c++)
            line += *c == '\n';
        rc = DV_ERROR(err, "%s:%d: a NUL byte: not a text file", path, line);
    } else {
        rc = parse_text(cfg, text, err);
    }
    free(text);
    return rc;
}

void dv_config_free(dv_config *cfg) {
    if (!cfg) return;
    for (int i = 0; i < cfg->nsec; i++) {
        for (int j = 0; j < cfg->sec[i].nkv; j++)
            free(cfg->sec[i].kv[j].value);
        free(cfg->sec[i].kv);
        for (int j = 0; j < cfg->sec[i].nres; j++)
            free(cfg->sec[i].res[j].value);
        free(cfg->sec[i].res);
    }
    free(cfg->sec);
    memset(cfg, 0, sizeof(*cfg));
}

dv_config_section *dv_config_find(dv_config *cfg, const char *name) {
    for (int i = 0; i < cfg->nsec; i++)
        if (!strcmp(cfg->sec[i].name, name)) return &cfg->sec[i];
    return NULL;
}

dv_status dv_config_set(dv_config *cfg, const char *assignment, char *err) {
    const char *eq = strchr(assignment, '=');
    const char *dot = strchr(assignment, '.');
    if (!eq || !dot || dot > eq || dot == assignment || eq == dot + 1)
        return DV_ERROR(err, "--set %s: expected section.key=value", assignment);
    /* a section name may hold dots itself (generator.dense_1): take the
     * longest one that names a section */
    for (const char *p = eq - 1; p > dot; p--) {
        if (*p != '.' || p - assignment >= DV_NAME_LEN) continue;
        char name[DV_NAME_LEN];
        snprintf(name, sizeof(name), "%.*s", (int)(p - assignment), assignment);
        int known = dv_config_find(cfg, name) != NULL;
        for (int i = 0; !known && i < cfg->nsec; i++)
            known = !strcmp(cfg->sec[i].type, name);
        if (known) {
            dot = p;
            break;
        }
    }
    if (eq == dot + 1) return DV_ERROR(err, "--set %s: expected section.key=value", assignment);
    if (dot - assignment >= DV_NAME_LEN || eq - dot - 1 >= DV_NAME_LEN)
        return DV_ERROR(err, "--set %.100s: a section or key name has at most %d characters",
                        assignment, DV_NAME_LEN - 1);
    char sec[DV_NAME_LEN], key[DV_NAME_LEN];
    snprintf(sec, sizeof(sec), "%.*s", (int)(dot - assignment), assignment);
    snprintf(key, sizeof(key), "%.*s", (int)(eq - dot - 1), dot + 1);
    trim(sec);
    trim(key);
    if (!is_ident(key))
        return DV_ERROR(err,
                        "--set %s: '%s': a key is letters, digits and '_', starting with a letter",
                        assignment, key);
    dv_config_section *s = dv_config_find(cfg, sec);
    if (!s) {
        int count = 0;
        for (int i = 0; i < cfg->nsec; i++)
            if (!strcmp(cfg->sec[i].type, sec)) {
                count++;
                s = &cfg->sec[i];
            }
        if (count > 1) {
            char names[512] = "";
            for (int i = 0; i < cfg->nsec; i++)
                if (!strcmp(cfg->sec[i].type, sec))
                    snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s",
                             names[0] ? ", " : "", cfg->sec[i].name);
            return DV_ERROR(err, "--set %s: there are %d [%s] sections; name one of them: %s",
                            assignment, count, sec, names);
        }
    }
    if (!s) {
        if (strcmp(sec, "data") && strcmp(sec, "train")) {
            /* name the longest section the assignment could have meant */
            const char *last = eq;
            while (last > dot && *last != '.')
                last--;
            return DV_ERROR(err, "--set %s: %s has no section [%.*s]", assignment, cfg->path,
                            (int)(last - assignment), assignment);
        }
        s = add_section(cfg, sec, 0);
        if (!s) return DV_ERROR(err, "out of memory");
        snprintf(s->name, sizeof(s->name), "%s", sec);
    }
    char value[1024];
    snprintf(value, sizeof(value), "%s", eq + 1);
    trim(value);
    if (put_kv(s, key, value, 0)) return DV_ERROR(err, "out of memory");
    return DV_OK;
}

void dv_config_unset(dv_config *cfg, const char *section, const char *key) {
    dv_config_section *s = dv_config_find(cfg, section);
    for (int i = 0; s && i < s->nkv; i++)
        if (!strcmp(s->kv[i].key, key)) {
            free(s->kv[i].value);
            memmove(&s->kv[i], &s->kv[i + 1], sizeof(*s->kv) * (size_t)(s->nkv - i - 1));
            s->nkv--;
            return;
        }
}

char *dv_config_text(const dv_config *cfg) {
    size_t cap = 256;
    for (int i = 0; i < cfg->nsec; i++) {
        cap += 2 * DV_NAME_LEN + 8;
        for (int j = 0; j < cfg->sec[i].nkv; j++)
            cap += strlen(cfg->sec[i].kv[j].key) + strlen(cfg->sec[i].kv[j].value) + 8;
    }
    char *t = malloc(cap), *p = t;
    if (!t) return NULL;
    *p = 0;
    for (int i = 0; i < cfg->nsec; i++) {
        const dv_config_section *s = &cfg->sec[i];
        p += sprintf(p, "%s[%s]\n", i ? "\n" : "", s->type);
        for (int j = 0; j < s->nkv; j++)
            p += sprintf(p, "%s = %s\n", s->kv[j].key, s->kv[j].value);
    }
    return t;
}

char *dv_config_resolved_text(const dv_config *cfg) {
    size_t cap = 1;
    for (int i = 0; i < cfg->nsec; i++)
        for (int j = 0; j < cfg->sec[i].nres; j++)
            cap += strlen(cfg->sec[i].name) + strlen(cfg->sec[i].res[j].key) +
                   strlen(cfg->sec[i].res[j].value) + 8;
    char *t = malloc(cap), *p = t;
    if (!t) return NULL;
    *p = 0;
    for (int i = 0; i < cfg->nsec; i++)
        for (int j = 0; j < cfg->sec[i].nres; j++)
            p += sprintf(p, "[%s] %s\t%s\n", cfg->sec[i].name, cfg->sec[i].res[j].key,
                         cfg->sec[i].res[j].value);
    return t;
}

/* Where a section, or a key of it, is: "file:line: [section] key = value"
 * (the value when the key holds one), or "--set section.key = value" for a
 * value from the command line. */
static void where_of(const dv_config *cfg, const dv_config_section *s, const char *key, char *buf,
                     size_t len) {
    const dv_config_kv *kv = key && s ? find_kv(s, key) : NULL;
    int line = kv ? kv->line : s ? s->line : 0;
    if (!s)
        snprintf(buf, len, "%s", cfg->path);
    else if (kv && line == 0) /* a sub-config's sections are named without its prefix */
        snprintf(buf, len, "--set %s%s.%s", find_kv(s, "name") ? "" : cfg->prefix, s->name, key);
    else if (key)
        snprintf(buf, len, "%s:%d: [%s%s] %s", cfg->path, line, cfg->prefix, s->type, key);
    else
        snprintf(buf, len, "%s:%d: [%s%s]", cfg->path, line, cfg->prefix, s->type);
    if (kv && kv->value[0]) snprintf(buf + strlen(buf), len - strlen(buf), " = %s", kv->value);
}

dv_status dv_config_error_at(char *err, const char *file, int line, const dv_config *cfg,
                             const dv_config_section *s, const char *key, const char *fmt, ...) {
    char where[1400], what[DV_ERR_LEN];
    where_of(cfg, s, key, where, sizeof(where));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return dv_error_at(err, file, line, NULL, "%s: %s", where, what);
}

dv_status dv_config_check_used(const dv_config *cfg, char *err) {
    for (int i = 0; i < cfg->nsec; i++)
        for (int j = 0; j < cfg->sec[i].nkv; j++) {
            const dv_config_kv *kv = &cfg->sec[i].kv[j];
            if (kv->used) continue;
            if (!kv->line)
                return DV_ERROR(err, "--set %s.%s: unknown key '%s' in [%s] (see docs/config.md)",
                                cfg->sec[i].name, kv->key, kv->key, cfg->sec[i].type);
            return DV_ERROR(err, "%s:%d: unknown key '%s' in [%s] (see docs/config.md)", cfg->path,
                            kv->line, kv->key, cfg->sec[i].type);
        }
    return DV_OK;
}

dv_status dv_config_sub(const dv_config *cfg, const char *prefix, const int *shape, int ndim,
                        dv_config *out, char *err) {
    memset(out, 0, sizeof(*out));
    snprintf(out->path, sizeof(out->path), "%s", cfg->path);
    snprintf(out->prefix, sizeof(out->prefix), "%s.", prefix);
    const size_t np = strlen(out->prefix);
    dv_config_section *in = add_section(out, "input", 0);
    char dims[64] = "";
    for (int i = 0; i < ndim; i++)
        snprintf(dims + strlen(dims), sizeof(dims) - strlen(dims), "%s%d", i ? "," : "", shape[i]);
    if (!in || put_kv(in, "shape", dims, 0)) return DV_ERROR(err, "out of memory");
    in->kv[0].used = 0;
    for (int i = 0; i < cfg->nsec; i++) {
        const dv_config_section *s = &cfg->sec[i];
        if (strncmp(s->type, out->prefix, np) || !strcmp(s->type + np, "train")) continue;
        if (!strcmp(s->type + np, "input") || !strcmp(s->type + np, "data"))
            return DV_ERROR(err,
                            "%s:%d: [%s]: a GAN's models take their inputs from [gan] (the "
                            "generator's latent size; the discriminator sees images)",
                            cfg->path, s->line, s->type);
        dv_config_section *d = add_section(out, s->type + np, s->line);
        if (!d) return DV_ERROR(err, "out of memory");
        d->origin = i;
        for (int k = 0; k < s->nkv; k++)
            if (put_kv(d, s->kv[k].key, s->kv[k].value, s->kv[k].line))
                return DV_ERROR(err, "out of memory");
    }
    return name_sections(out, err);
}

void dv_config_sub_done(dv_config *cfg, const dv_config *sub) {
    for (int i = 0; i < sub->nsec; i++) {
        const dv_config_section *s = &sub->sec[i];
        if (s->origin < 0 || s->origin >= cfg->nsec) continue;
        dv_config_section *o = &cfg->sec[s->origin];
        for (int k = 0; k < s->nkv; k++) {
            dv_config_kv *kv = find_kv(o, s->kv[k].key);
            if (kv && s->kv[k].used) kv->used = 1;
        }
        for (int k = 0; k < s->nres; k++)
            put_in(&o->res, &o->nres, &o->rescap, s->res[k].key, s->res[k].value, 0);
    }
}

int dv_config_has(const dv_config_section *s, const char *key) {
    return s && find_kv(s, key) != NULL;
}

static dv_config_kv *get(dv_config_section *s, const char *key) {
    dv_config_kv *kv = s ? find_kv(s, key) : NULL;
    if (kv) kv->used = 1;
    return kv;
}

dv_status dv_config_str(const dv_config *cfg, dv_config_section *s, const char *key,
                        const char *def, const char **out, char *err) {
    dv_config_kv *kv = get(s, key);
    if (!kv) {
        *out = def;
        resolve(s, key, "%s", def ? def : "(none)");
        return DV_OK;
    }
    if (!kv->value[0]) return DV_CONFIG_ERROR(err, cfg, s, key, "empty value");
    *out = kv->value;
    resolve(s, key, "%s", kv->value);
    return DV_OK;
}

dv_status dv_config_int(const dv_config *cfg, dv_config_section *s, const char *key, long def,
                        long min, long max, long *out, char *err) {
    dv_config_kv *kv = get(s, key);
    if (!kv) {
        *out = def;
        resolve(s, key, "%ld", def);
        return DV_OK;
    }
    char *end;
    errno = 0;
    long v = strtol(kv->value, &end, 10);
    while (*end && isspace((unsigned char)*end))
        end++;
    if (errno || end == kv->value || *end)
        return DV_CONFIG_ERROR(err, cfg, s, key, "not an integer");
    if (v < min || v > max)
        return DV_CONFIG_ERROR(err, cfg, s, key, "must be between %ld and %ld", min, max);
    *out = v;
    resolve(s, key, "%ld", v);
    return DV_OK;
}

/* The shortest of %.15g and %.17g that reads back as v. */
static void resolve_float(dv_config_section *s, const char *key, double v) {
    char buf[64];
    snprintf(buf, sizeof buf, "%.15g", v);
    if (strtod(buf, NULL) != v) snprintf(buf, sizeof buf, "%.17g", v);
    resolve(s, key, "%s", buf);
}

dv_status dv_config_float(const dv_config *cfg, dv_config_section *s, const char *key, double def,
                          double min, double max, double *out, char *err) {
    dv_config_kv *kv = get(s, key);
    if (!kv) {
        *out = def;
        resolve_float(s, key, def);
        return DV_OK;
    }
    char *end;
    errno = 0;
    double v = strtod(kv->value, &end);
    while (*end && isspace((unsigned char)*end))
        end++;
    if (errno || end == kv->value || *end || !isfinite(v))
        return DV_CONFIG_ERROR(err, cfg, s, key, "not a number");
    if (v < min || v > max)
        return DV_CONFIG_ERROR(err, cfg, s, key, "must be between %g and %g", min, max);
    *out = v;
    resolve_float(s, key, v);
    return DV_OK;
}

dv_status dv_config_enum(const dv_config *cfg, dv_config_section *s, const char *key,
                         const char *def, const char *const *choices, int *out, char *err) {
    const char *v = NULL;
    DV_TRY(dv_config_str(cfg, s, key, def, &v, err));
    for (int i = 0; choices[i]; i++)
        if (!strcmp(v, choices[i])) {
            *out = i;
            return DV_OK;
        }
    char list[512] = "";
    for (int i = 0; choices[i]; i++) {
        strncat(list, i ? " | " : "", sizeof(list) - strlen(list) - 1);
        strncat(list, choices[i], sizeof(list) - strlen(list) - 1);
    }
    if (!dv_config_has(s, key)) /* a default the caller got wrong */
        return DV_CONFIG_ERROR(err, cfg, s, NULL, "%s = %s: expected one of %s", key, v, list);
    return DV_CONFIG_ERROR(err, cfg, s, key, "expected one of %s", list);
}

dv_status dv_config_ints(const dv_config *cfg, dv_config_section *s, const char *key, int *vals,
                         int max, int *n, char *err) {
    dv_config_kv *kv = get(s, key);
    if (!kv) return DV_CONFIG_ERROR(err, cfg, s, NULL, "missing key '%s'", key);
    const char *p = kv->value;
    *n = 0;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 1 || v > (1L << 30) || *n == max)
            return DV_CONFIG_ERROR(err, cfg, s, key,
                                   "expected up to %d positive integers separated by commas", max);
        vals[(*n)++] = (int)v;
        p = end;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == ',')
            p++;
        else if (*p)
            return DV_CONFIG_ERROR(err, cfg, s, key, "expected integers separated by commas");
    }
    if (!*n) return DV_CONFIG_ERROR(err, cfg, s, key, "empty value");
    char list[1024] = "";
    for (int i = 0; i < *n; i++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%d", i ? "," : "", vals[i]);
    resolve(s, key, "%s", list);
    return DV_OK;
}
