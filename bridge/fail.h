/* fail.h - how ph-sandbox-helper's subcommands report trouble and leave (fail.c). */
#ifndef PH_FAIL_H
#define PH_FAIL_H

/* Once, first thing: prog prefixes every message; leave(status) is the subcommand's way out
 * (close its sockets, stop its commands, then exit) and must not return. */
void ph_fail_init(const char *prog, void (*leave)(int status));

/* "prog: <message>" on stderr. */
__attribute__((format(printf, 1, 2))) void ph_say(const char *fmt, ...);

/* The subcommand's way out with this status. */
_Noreturn void ph_leave(int status);

/* ph_say, then ph_leave(1). */
__attribute__((format(printf, 1, 2))) _Noreturn void ph_die(const char *fmt, ...);

#endif
