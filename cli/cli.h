/* cli.h — the `dive` command's subcommands, which launch/main.c
 * dispatches to. Each takes the arguments after its own name
 * (argv[0] is the subcommand), runs to completion on every MPI rank that
 * called it, and returns the process exit status (0 on success). Every
 * error a user can cause ends in one clear message and a non-zero status
 * on every rank.
 */
#ifndef DV_CLI_H
#define DV_CLI_H

#ifdef __cplusplus
extern "C" {
#endif

int dv_cli_train(int argc, char **argv); /* dive train CONFIG [--set k=v]... [--resume P|auto] */
int dv_cli_eval(int argc, char **argv);  /* dive eval CONFIG --checkpoint P [--split G] [--json] */
int dv_cli_predict(int argc, char **argv); /* dive predict CONFIG --checkpoint P -o OUT */
int dv_cli_import(int argc, char **argv);  /* dive import idx|csv ... */
int dv_cli_info(int argc, char **argv);    /* dive info FILE.h5 */
int dv_cli_sample(int argc, char **argv);  /* dive sample CHECKPOINT [--prompt T] ... */
int dv_cli_plot(int argc, char **argv);    /* dive plot RUN_DIR [-o OUT.png] */

/* The version string of this build. */
const char *dv_version(void);

#ifdef __cplusplus
}
#endif
#endif
