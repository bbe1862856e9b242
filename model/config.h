/* config.h — Dive's INI configs (docs/config.md): a config is a list of
 * sections in file order, each a type ([dense]), a unique name (dense_2, or
 * its `name` key) and its keys with the line they were read from. Loading
 * keeps every section, repeated and empty ones too; `--set section.key=value`
 * overrides; typed getters read a key with a default and a range and mark
 * it used, so a key that nothing read is an error (dv_config_check_used),
 * never a silent default.
 *
 * Every error about a config names where it is: "file:line: [section] key
 * = value: what is wrong", or "--set section.key = value: ..." for a value
 * given on the command line. DV_CONFIG_ERROR makes such messages for code
 * outside this file too.
 *
 * Ownership: a dv_config owns its sections and their strings; the strings
 * getters hand out are borrowed from it.
 */
#ifndef DV_CONFIG_H
#define DV_CONFIG_H

#include "base.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DV_NAME_LEN 64

typedef struct dv_config_kv {
    char key[DV_NAME_LEN];
    char *value;
    int line; /* 0 for --set overrides */
    int used;
} dv_config_kv;

typedef struct dv_config_section {
    char type[DV_NAME_LEN]; /* "data", "train", "dense", ... */
    char name[DV_NAME_LEN]; /* unique: "data", "dense_2", or the `name` key */
    int line;
    int origin; /* a sub-config's section: index of its section in the whole config, or -1 */
    dv_config_kv *kv;
    int nkv, cap;
    /* What the typed getters read, defaults included, as normalized text
     * (integers in decimal, numbers in 15 digits or 17 where 15 do not
     * read back exactly, lists "1,28,28"): the effective config that
     * dv_config_resolved_text lists. */
    dv_config_kv *res;
    int nres, rescap;
} dv_config_section;

typedef struct dv_config {
    char path[1024];
    char prefix[DV_NAME_LEN]; /* a sub-config's "generator." as its messages name sections */
    dv_config_section *sec;
    int nsec, seccap;
} dv_config;

/* Parses an INI file (every section seen in order, even empty or repeated
 * ones), or the text of a config stored in a checkpoint (`label` names it
 * in messages). */
dv_status dv_config_load(dv_config *cfg, const char *path, char *err);
dv_status dv_config_load_text(dv_config *cfg, const char *label, const char *text, char *err);
void dv_config_free(dv_config *cfg);

/* Applies "section.key=value"; section is a section or layer name, or a
 * layer type that appears once. */
dv_status dv_config_set(dv_config *cfg, const char *assignment, char *err);
dv_config_section *dv_config_find(dv_config *cfg, const char *name);
/* 1 when s has `key` (does not mark it used). */
int dv_config_has(const dv_config_section *s, const char *key);
/* Removes `key` from `section`, if both exist. */
void dv_config_unset(dv_config *cfg, const char *section, const char *key);
/* The effective config as INI text (malloc'd), overrides applied. */
char *dv_config_text(const dv_config *cfg);
/* The effective config as the typed getters read it, defaults included:
 * a line "[section] key<TAB>value" per key read (sections in file order,
 * keys in the order they were first read; a GAN model's sections under
 * their prefixed names once dv_config_sub_done ran). Values are
 * normalized, so `lr = 1e-3` and `lr = 0.001`, or a default and the same
 * value written out, give the same line. Keys of a section the config
 * lacks (read with s == NULL) are not listed. malloc'd; NULL when out of
 * memory. */
char *dv_config_resolved_text(const dv_config *cfg);
/* Fails naming file:line for the first key nothing read. */
dv_status dv_config_check_used(const dv_config *cfg, char *err);

/* One model of a config that holds several (a GAN): the sections
 * [<prefix>.<type>] of cfg, except [<prefix>.train], as a config of their
 * own — types without the prefix, named as if they stood alone — after an
 * [input] of `shape` (ndim values). Its messages still name the file, its
 * lines and the prefixed sections. */
dv_status dv_config_sub(const dv_config *cfg, const char *prefix, const int *shape, int ndim,
                        dv_config *out, char *err);
/* Marks as read in cfg every key that was read in its sub-config `sub`. */
void dv_config_sub_done(dv_config *cfg, const dv_config *sub);

/* Typed getters: a missing key gives `def`; a bad value fails naming
 * file:line. Reading a key marks it used. s may be NULL (all defaults). */
dv_status dv_config_str(const dv_config *cfg, dv_config_section *s, const char *key,
                        const char *def, const char **out, char *err);
dv_status dv_config_int(const dv_config *cfg, dv_config_section *s, const char *key, long def,
                        long min, long max, long *out, char *err);
dv_status dv_config_float(const dv_config *cfg, dv_config_section *s, const char *key, double def,
                          double min, double max, double *out, char *err);
/* One of `choices` (NULL-terminated); *out is its index. */
dv_status dv_config_enum(const dv_config *cfg, dv_config_section *s, const char *key,
                         const char *def, const char *const *choices, int *out, char *err);
/* A required list of 1..max positive ints "1,28,28"; the count in *n. */
dv_status dv_config_ints(const dv_config *cfg, dv_config_section *s, const char *key, int *vals,
                         int max, int *n, char *err);

/* A message about section s of cfg, and its `key` when not NULL: the text
 * is "file:line: [section] key = value: " (the value when the key holds
 * one) followed by fmt. Returns DV_ERR. Use it through DV_CONFIG_ERROR. */
dv_status dv_config_error_at(char *err, const char *file, int line, const dv_config *cfg,
                             const dv_config_section *s, const char *key, const char *fmt, ...)
    DV_PRINTF(7, 8);
#define DV_CONFIG_ERROR(err, cfg, s, key, ...)                                                     \
    dv_config_error_at((err), __FILE__, __LINE__, (cfg), (s), (key), __VA_ARGS__)

#ifdef __cplusplus
}
#endif
#endif
