/* ph_groups.c - the process groups this process started, ended on the way out, and the
 * watchdog that ends them when this process dies without a way out (see ph_groups.h). */
#include "ph_groups.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Seconds the groups get between SIGTERM and SIGKILL when the process exits: the host allows
 * 500 ms from the shutdown reply to the exit, and a clean shutdown has ended them already. */
#define EXIT_GRACE 0.25
/* Groups the watchdog can hold (its table is mapped before the fork, untouched pages cost
 * nothing): far above any fd limit's worth of children. */
#define WATCH_MAX (1 << 18)

static int *groups;
static size_t count, cap;
static pid_t owner;       /* the process that recorded them: a forked child never ends them */
static int watch_fd = -1; /* the pipe's write end; -1: no watchdog (or it is gone) */
static pid_t watch_pid;

/* A member left: kill(2) reaches it (a zombie counts until its parent reaps it). EPERM: it
 * lives but is no longer ours to signal (it changed its credentials). */
static int group_alive(int pgid)
{
    return kill(-(pid_t)pgid, 0) == 0 || errno == EPERM;
}

static void sleep_seconds(double s)
{
    struct timespec ts = { (time_t)s, (long)((s - (double)(time_t)s) * 1e9) };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* ---- telling the watchdog ------------------------------------------------------------------ */

/* One record: 'a' (a group to watch), 'f' (forget it) or 'c' (forget all), then the pgid. A write
 * of at most PIPE_BUF bytes is atomic, so records never interleave. */
static void tell_watchdog(char op, int pgid)
{
    if (watch_fd < 0)
        return;
    unsigned char rec[5];
    rec[0] = (unsigned char)op;
    memcpy(rec + 1, &pgid, 4);
    ssize_t n;
    do
        n = write(watch_fd, rec, sizeof rec);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof rec) {
        close(watch_fd);
        watch_fd = -1;
        fprintf(stderr,
                "provider-host: the watchdog is gone (%s): commands may outlive a "
                "SIGKILL of this process\n",
                n < 0 ? strerror(errno) : "short write");
    }
}

/* ---- the record ------------------------------------------------------------------------------ */

static void drop_at(size_t i)
{
    tell_watchdog('f', groups[i]);
    groups[i] = groups[--count];
}

/* Forget the groups with no member left, so that the table stays as small as what runs and
 * a number the kernel hands out again is not taken for one of ours. */
static void prune(void)
{
    for (size_t i = 0; i < count;) {
        if (group_alive(groups[i]))
            i++;
        else
            drop_at(i);
    }
}

static void end_all_at_exit(void)
{
    if (owner != getpid())
        return;
    ph_groups_end_all(EXIT_GRACE);
    tell_watchdog('c', 0); /* all ended: nothing for it to wait for once we are gone */
}

void ph_groups_add(int pgid)
{
    if (owner == 0) {
        owner = getpid();
        atexit(end_all_at_exit);
    }
    if (count == cap)
        prune();
    if (count == cap) {
        size_t ncap = cap ? cap * 2 : 64;
        int *g = realloc(groups, ncap * sizeof *g);
        if (g == NULL)
            return; /* out of memory: the child still ends with its command, just not here */
        groups = g;
        cap = ncap;
    }
    groups[count++] = pgid;
    tell_watchdog('a', pgid);
}

void ph_groups_forget_if_empty(int pgid)
{
    for (size_t i = 0; i < count; i++) {
        if (groups[i] == pgid) {
            if (!group_alive(pgid))
                drop_at(i);
            return;
        }
    }
}

int ph_groups_signal_all(int sig)
{
    prune();
    int reached = 0;
    for (size_t i = 0; i < count; i++)
        reached += kill(-(pid_t)groups[i], sig) == 0;
    return reached;
}

/* The process group and state of a process, from /proc/PID/stat ("pid (comm) S ppid pgrp",
 * where comm may hold spaces and parentheses): 0, or -1 when it is gone or unreadable. */
static int proc_stat(const char *pid, int *pgrp, char *state)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%s/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    const char *end = strrchr(buf, ')');
    int ppid;
    return end != NULL && sscanf(end + 1, " %c %d %d", state, &ppid, pgrp) == 3 ? 0 : -1;
}

int ph_groups_running(void)
{
    prune();
    DIR *d = count > 0 ? opendir("/proc") : NULL;
    if (d == NULL)
        return (int)count; /* no /proc: a zombie left in a group counts as running */
    /* a group whose members are all zombies (their parent, init in a container, may never
     * reap them) has nothing left to wait for */
    char *live = calloc(count, 1);
    int running = 0;
    struct dirent *e;
    while (live != NULL && (e = readdir(d)) != NULL) {
        int pgrp;
        char state;
        if (e->d_name[0] < '1' || e->d_name[0] > '9' || proc_stat(e->d_name, &pgrp, &state) != 0 ||
            state == 'Z' || state == 'X')
            continue;
        for (size_t i = 0; i < count; i++)
            if (groups[i] == pgrp && !live[i]) {
                live[i] = 1;
                running++;
            }
    }
    closedir(d);
    if (live == NULL)
        return (int)count;
    free(live);
    return running;
}

int ph_groups_end_all(double grace)
{
    if (owner != getpid())
        return 0;
    if (ph_groups_signal_all(SIGTERM) == 0)
        return 0;
    ph_groups_signal_all(SIGCONT); /* a stopped process must run to see its SIGTERM */
    for (double waited = 0; waited < grace; waited += 0.01) {
        /* the loop no longer runs: the leaders that are our children are reaped here */
        for (size_t i = 0; i < count; i++)
            while (waitpid(-(pid_t)groups[i], NULL, WNOHANG) > 0)
                ;
        if (ph_groups_running() == 0)
            return 0;
        sleep_seconds(0.01);
    }
    return ph_groups_signal_all(SIGKILL);
}

/* ---- the watchdog ------------------------------------------------------------------------------
 */

/* The watchdog's own end of the groups: SIGTERM to each, up to grace seconds, SIGKILL. Only
 * async-signal-safe calls: it runs in a child forked from a process that may have threads. */
static void watchdog_sweep(const int *table, size_t n, double grace)
{
    if (n == 0)
        return;
    for (size_t i = 0; i < n; i++) {
        kill(-(pid_t)table[i], SIGTERM);
        kill(-(pid_t)table[i], SIGCONT);
    }
    for (double waited = 0; waited < grace; waited += 0.02) {
        size_t alive = 0;
        for (size_t i = 0; i < n; i++)
            alive += group_alive(table[i]);
        if (alive == 0)
            return;
        sleep_seconds(0.02);
    }
    for (size_t i = 0; i < n; i++)
        kill(-(pid_t)table[i], SIGKILL);
}

/* Everything but the pipe (now fd 3) closed; 0..2 on /dev/null so that the host sees the
 * worker's pipes close when the worker dies, not when the watchdog does. */
static void watchdog_fds(int in)
{
    int null = open("/dev/null", O_RDWR);
    if (in != 3) {
        dup2(in, 3);
        close(in);
    }
    for (int fd = 0; fd < 3; fd++)
        if (null >= 0 && null != fd)
            dup2(null, fd);
    if (close_range(4, ~0U, 0) != 0) {
        struct rlimit rl;
        int top =
            getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 65536 ? (int)rl.rlim_cur : 65536;
        for (int fd = 4; fd < top; fd++)
            close(fd);
    }
}

/* The records from the worker, until the pipe (fd 3) closes: the groups to end, in table;
 * returns how many. */
static size_t watchdog_read(int *table)
{
    size_t n = 0;
    unsigned char buf[4095]; /* a multiple of the record's 5 bytes */
    size_t have = 0;
    for (;;) {
        ssize_t got = read(3, buf + have, sizeof buf - have);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break; /* the worker is gone, however it ended */
        have += (size_t)got;
        size_t at = 0;
        for (; have - at >= 5; at += 5) {
            int pgid;
            memcpy(&pgid, buf + at + 1, 4);
            if (buf[at] == 'a' && n < WATCH_MAX) {
                table[n++] = pgid;
            } else if (buf[at] == 'c') {
                n = 0;
            } else if (buf[at] == 'f') {
                for (size_t i = 0; i < n; i++)
                    if (table[i] == pgid) {
                        table[i] = table[--n];
                        break;
                    }
            }
        }
        memmove(buf, buf + at, have - at);
        have -= at;
    }
    return n;
}

static void watchdog_main(int in, int *table, double grace)
{
    setsid(); /* neither the terminal's ^C nor a kill of the worker's group reaches it */
    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    /* it ends when the pipe closes, never earlier: what it guards would then go unguarded */
    const int ignored[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGUSR1, SIGUSR2 };
    for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++)
        sigaction(ignored[i], &ign, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    prctl(PR_SET_NAME, "ph-watchdog");
    if (chdir("/") != 0) {
        /* keeps the worker's directory busy, which harms nothing */
    }
    watchdog_fds(in);
    watchdog_sweep(table, watchdog_read(table), grace);
    _exit(0);
}

int ph_watchdog_start(double grace)
{
    if (watch_fd >= 0)
        return 0;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) /* no child we start may hold the write end */
        return -errno;
    int *table = mmap(NULL, WATCH_MAX * sizeof *table, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (table == MAP_FAILED) {
        int err = errno;
        close(fds[0]);
        close(fds[1]);
        return -err;
    }
    pid_t pid = fork();
    if (pid == 0)
        watchdog_main(fds[0], table, grace);
    int err = errno;
    munmap(table, WATCH_MAX * sizeof *table);
    close(fds[0]);
    if (pid < 0) {
        close(fds[1]);
        return -err;
    }
    watch_fd = fds[1];
    watch_pid = pid;
    if (owner == 0) {
        owner = getpid();
        atexit(end_all_at_exit);
    }
    for (size_t i = 0; i < count; i++)
        tell_watchdog('a', groups[i]);
    return 0;
}

int ph_watchdog_pid(void)
{
    return watch_fd >= 0 ? (int)watch_pid : 0;
}
