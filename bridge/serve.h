/* serve.h - the serve subcommand of ph-sandbox-helper (serve.c), called by helper.c. */
#ifndef PH_SERVE_H
#define PH_SERVE_H

/* argv[0] is "serve"; returns the process's exit status (0 when the host ended it, 1 on a
 * protocol or system error, 2 on a usage error). Writes messages on stderr, prefixed with
 * prog. */
int ph_serve_main(const char *prog, int argc, char **argv);

#endif
