/* fd.h - file descriptor chores the subcommands share (fd.c). */
#ifndef PH_FD_H
#define PH_FD_H

#include <stddef.h>

/* Give each of 0, 1 and 2 we were started without /dev/null, so that no pipe or socket of ours
 * takes its number (a command would get it as its stdin, stdout or stderr). */
void ph_fd_std_ensure(void);

/* Raise the soft limit on open files to want, or as near as the hard limit allows. */
void ph_fd_limit_raise(unsigned long want);

/* Close *fd unless it is -1 already, and make it -1. */
void ph_fd_close(int *fd);

/* Bytes waiting in a pipe (FIONREAD): 0 when fd is -1 or the kernel cannot say. */
size_t ph_fd_pending(int fd);

#endif
