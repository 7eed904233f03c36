/* relay.h - the relay subcommand of ph-sandbox-helper (relay.c), called by helper.c. */
#ifndef PH_RELAY_H
#define PH_RELAY_H

/* argv[0] is "relay"; returns the process's exit status (0, 1 on an error, 2 on a usage
 * error). Writes messages on stderr, prefixed with prog. */
int ph_relay_main(const char *prog, int argc, char **argv);

#endif
