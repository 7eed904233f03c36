/* group.c - a command in a process group of its own, published before it runs; its signals. */

/* Published in its control dir (ctl.c) so that host.remote's cancel script stops the command and
 * all it started from any worker. exec.c runs one such command, serve.c many. */
#include "group.h"

#include "ctl.h"
#include "fd.h"
#include "signals.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Which end of descriptor i's pipe is the command's: it reads its stdin, writes the others. */
static int theirs(int i)
{
    return i == 0 ? 0 : 1;
}

static void close_pipes(int p[3][2])
{
    for (int i = 0; i < 3; i++) {
        ph_fd_close(&p[i][0]);
        ph_fd_close(&p[i][1]);
    }
}

/* The command's process, after the fork. The group is published before anything of the command
 * runs, so a cancel never misses part of it; the marker is looked at once more after that, since
 * a cancel may have come between our check before the fork and the publishing. */
static _Noreturn void child(const char *prog, const char *ctl, int first, int p[3][2],
                            void (*run)(void *arg), void *arg)
{
    ph_signals_restore();
    for (int i = first; i < 3; i++)
        if (dup2(p[i][theirs(i)], i) < 0)
            _exit(PH_EXIT_SETUP);
    const char *kind = setsid() >= 0 ? "group" : "process";
    if (ph_ctl_publish(ctl, kind, getpid()) != 0) {
        dprintf(STDERR_FILENO, "%s: cannot write %s/pid: %s\n", prog, ctl, strerror(errno));
        _exit(PH_EXIT_SETUP);
    }
    if (ph_ctl_cancelled(ctl))
        _exit(PH_EXIT_CANCELED);
    run(arg);
    _exit(PH_EXIT_SETUP); /* run execs or _exits: never here */
}

pid_t ph_group_spawn(const char *prog, const char *ctl, int first, int ours[3],
                     void (*run)(void *arg), void *arg)
{
    /* O_CLOEXEC: no other command gets them; dup2 gives the command its own without it */
    int p[3][2] = { { -1, -1 }, { -1, -1 }, { -1, -1 } };
    for (int i = first; i < 3; i++)
        if (pipe2(p[i], O_CLOEXEC) != 0) {
            int e = errno;
            close_pipes(p);
            errno = e;
            return -1;
        }
    pid_t pid = fork();
    if (pid == 0)
        child(prog, ctl, first, p, run, arg);
    int e = errno;
    for (int i = first; i < 3; i++)
        ph_fd_close(&p[i][theirs(i)]);
    if (pid < 0) {
        close_pipes(p);
        errno = e;
        return -1;
    }
    for (int i = 0; i < 3; i++) {
        ours[i] = p[i][1 - theirs(i)];
        if (ours[i] >= 0)
            fcntl(ours[i], F_SETFL, fcntl(ours[i], F_GETFL) | O_NONBLOCK);
    }
    return pid;
}

void ph_group_kill(pid_t pid, int reaped, int sig)
{
    if (pid <= 0)
        return;
    if (kill(-pid, sig) != 0 && errno == ESRCH && !reaped)
        kill(pid, sig);
}

int ph_group_gone(pid_t pid)
{
    return kill(-pid, 0) != 0 && errno == ESRCH;
}
