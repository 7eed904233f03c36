/* group.h - a command in a process group of its own, published for a cancel (group.c). */
#ifndef PH_GROUP_H
#define PH_GROUP_H

#include <sys/types.h>

/* Exit statuses of a command that did not get to run, as host.remote's shell wrapper and sh
 * give them. */
#define PH_EXIT_SETUP    125 /* the control dir could not be made or written, or no fork */
#define PH_EXIT_NOEXEC   126 /* found but not runnable */
#define PH_EXIT_NOTFOUND 127 /* no such command */
#define PH_EXIT_CANCELED 130 /* canceled before it started */

/* Pipes for the command's descriptors first..2 (first 0: its stdin too; 1: it inherits our
 * stdin), then the fork. In the child: our signals given back (ph_signals_restore), the pipes
 * as its descriptors, a session and group of its own published in ctl before anything of the
 * command runs, the cancel marker looked at once more (a cancel may have come in between), then
 * run(arg), which execs the command or _exits. In the parent: ours[i] is our end of descriptor
 * i's pipe (stdin's writing end, the others' reading ends), non-blocking since we poll it; the
 * command's ends stay blocking, as programs expect; -1 below first. Returns the pid, or -1 with
 * errno and nothing left open. */
pid_t ph_group_spawn(const char *prog, const char *ctl, int first, int ours[3],
                     void (*run)(void *arg), void *arg);

/* sig to the group that pid leads. Before the command's setsid (a signal right after the fork)
 * the group does not exist yet: then to the process itself, unless it was reaped. Once the
 * command is reaped, the group id names what is left of it (background children). */
void ph_group_kill(pid_t pid, int reaped, int sig);

/* Whether no process is left in the group (EPERM: someone is there). */
int ph_group_gone(pid_t pid);

#endif
