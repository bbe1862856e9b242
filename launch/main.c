/* main.c — the `dive` command: dispatches to the subcommands of cli/.
 * Launch it directly, or under mpirun / srun for train, eval and predict. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const char usage[] =
    "usage: dive COMMAND [ARGS]   (dive COMMAND --help for each)\n"
    "\n"
    "  train CONFIG [--set s.k=v]... [--resume PATH|auto]   train (under mpirun for N ranks);\n"
    "        [--resume-force] [--overwrite]                   see dive train --help\n"
    "  eval CONFIG --checkpoint PATH [--split GROUP] [--json] evaluate a checkpoint\n"
    "  predict CONFIG --checkpoint PATH -o OUT                write predictions (HDF5 or CSV)\n"
    "  import idx|csv|text ...                                convert data to Dive's HDF5\n"
    "  sample CHECKPOINT [--prompt TEXT] [--tokens N] ...     generate text from a language model\n"
    "  plot RUN_DIR [-o OUT.png] [--x epoch|step]             draw metrics.csv as a PNG of curves\n"
    "  info [--verify] FILE.h5                                summarise a dataset or checkpoint;\n"
    "                                                         --verify: check a checkpoint whole\n"
    "  version                                                print the version\n";

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "train")) return dv_cli_train(argc - 1, argv + 1);
    if (!strcmp(cmd, "eval")) return dv_cli_eval(argc - 1, argv + 1);
    if (!strcmp(cmd, "predict")) return dv_cli_predict(argc - 1, argv + 1);
    if (!strcmp(cmd, "import")) return dv_cli_import(argc - 1, argv + 1);
    if (!strcmp(cmd, "info")) return dv_cli_info(argc - 1, argv + 1);
    if (!strcmp(cmd, "sample")) return dv_cli_sample(argc - 1, argv + 1);
    if (!strcmp(cmd, "plot")) return dv_cli_plot(argc - 1, argv + 1);
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("dive %s\n", dv_version());
        return 0;
    }
    fprintf(stderr, "dive: unknown command '%s'\n\n%s", cmd, usage);
    return 2;
}
