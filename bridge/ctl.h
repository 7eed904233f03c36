/* ctl.h - a command's control dir, what host.remote's cancel script reads and writes (ctl.c). */

/* The dir holds at most three files, all ours or the cancel script's:
 *   pid        "group:<pgid>\n" (or "process:<pid>\n" when setsid failed), written through
 *              pid.tmp and a rename by the command's own process after setsid and before
 *              its exec
 *   pid.tmp    that file while it is written
 *   cancelled  left by the cancel script: a command that has not started yet never starts
 * Paths are dir/name: callers check that dir leaves room for a name within PATH_MAX. */
#ifndef PH_CTL_H
#define PH_CTL_H

#include <sys/types.h>

/* mkdir -p dir, dir itself with mode 0700 when we make it (its parents with the umask's); it
 * may exist (the cancel script makes it to leave its marker). 0, or -1 with errno. */
int ph_ctl_make(const char *dir);

/* Whether the cancel script left its marker. */
int ph_ctl_cancelled(const char *dir);

/* dir/pid = "<kind>:<id>\n", whole or not at all (the cancel script reads it any time). 0, or
 * -1 with errno. */
int ph_ctl_publish(const char *dir, const char *kind, pid_t id);

/* Only the files we know of, then the dir: a stranger's file there keeps it. */
void ph_ctl_remove(const char *dir);

#endif
