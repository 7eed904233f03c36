/* exec.h - the exec subcommand of ph-sandbox-helper (exec.c), called by helper.c. */
#ifndef PH_EXEC_H
#define PH_EXEC_H

/* argv[0] is "exec"; returns the process's exit status: the command's (128 + N when a signal
 * N ended it), 124 after --timeout, 125 when the control dir cannot be used, 130 when the
 * command was canceled before it started, 2 on a usage error. Writes messages on stderr,
 * prefixed with prog. */
int ph_exec_main(const char *prog, int argc, char **argv);

#endif
