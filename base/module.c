/* module.c — loading one of Dive's optional modules (base.h): a shared
 * object beside libdive.so that is opened only when a run asks for what it
 * holds, so a CPU run never maps the CUDA libraries the CUDA module needs.
 *
 * Where: $<ENV> when set (for example DIVE_CUDA_MODULE), else
 * libdive-<name>.so in the directory libdive.so was loaded from, else in
 * the directory of the running program. dlopen counts references, so
 * opening a module twice gives the same handle.
 */
#include "base.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The directory of the object holding this function (libdive.so), or of
 * the program; "" when neither is known. */
static void own_dir(char *dir, size_t len, int program) {
    dir[0] = 0;
    if (program) {
        ssize_t n = readlink("/proc/self/exe", dir, len - 1);
        dir[n > 0 ? n : 0] = 0;
    } else {
        Dl_info info;
        if (dladdr((void *)own_dir, &info) && info.dli_fname)
            snprintf(dir, len, "%s", info.dli_fname);
    }
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    else
        dir[0] = 0;
}

void *dv_module_open(const char *name, const char *env, char *err) {
    char upper[32]; /* for messages: "the CUDA module" */
    size_t k = 0;
    for (; name[k] && k < sizeof upper - 1; k++)
        upper[k] = (char)(name[k] >= 'a' && name[k] <= 'z' ? name[k] - 'a' + 'A' : name[k]);
    upper[k] = 0;
    const char *given = env ? getenv(env) : NULL;
    if (given && *given) {
        void *h = dlopen(given, RTLD_NOW | RTLD_LOCAL);
        if (!h)
            DV_ERROR(err, "%s = %s: cannot load the %s module: %s", env, given, upper, dlerror());
        return h;
    }
    char why[DV_ERR_LEN] = "";
    for (int program = 0; program < 2; program++) {
        char dir[4096], path[4200];
        own_dir(dir, sizeof dir, program);
        if (!dir[0]) continue;
        snprintf(path, sizeof path, "%s/libdive-%s.so", dir, name);
        if (access(path, F_OK)) {
            if (!why[0]) snprintf(why, sizeof why, "%.900s: no such file", path);
            continue;
        }
        void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (h) return h;
        /* the file is there but a library it needs is not: say which */
        snprintf(why, sizeof why, "%s", dlerror());
        break;
    }
    DV_ERROR(err, "the %s module libdive-%s.so cannot be loaded (%s)", upper, name,
             why[0] ? why : "not found");
    return NULL;
}

void *dv_module_symbol(void *module, const char *symbol, char *err) {
    void *p = module ? dlsym(module, symbol) : NULL;
    if (!p) DV_ERROR(err, "the module has no %s: it belongs to another build of Dive", symbol);
    return p;
}
