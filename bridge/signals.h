/* signals.h - the signals exec and serve handle, and their one wait (signals.c). */
#ifndef PH_SIGNALS_H
#define PH_SIGNALS_H

#include <poll.h>
#include <stdint.h>

/* handler for SIGTERM, SIGINT, SIGHUP and SIGCHLD, which stay blocked except inside ph_wait, so
 * a handler never runs between a loop's checks and its wait (no lost wake-up) and no other
 * system call sees EINTR. A signal that was ignored when we started stays ignored, as a shell
 * does (nohup). SIGPIPE is ignored: a closed pipe or stdout is an EPIPE we handle, not a
 * death. */
void ph_signals_setup(void (*handler)(int sig));

/* In a command's process, before its exec: the dispositions and mask we were started with,
 * except that SIGPIPE and SIGCHLD are the defaults a program expects (an inherited "ignored"
 * there breaks pipelines and wait). */
void ph_signals_restore(void);

/* Monotonic milliseconds. */
int64_t ph_now_ms(void);

/* ppoll(pfd, n) with our signals deliverable, until wake (ph_now_ms's time; INT64_MAX: none);
 * now is the time the caller's turn started. ppoll's result: -1 with EINTR for a signal. */
int ph_wait(struct pollfd *pfd, nfds_t n, int64_t wake, int64_t now);

#endif
