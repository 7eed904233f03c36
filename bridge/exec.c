/* exec.c - ph-sandbox-helper exec: runs one command the way host.remote's POSIX sh wrapper does,
 * in one process instead of about ten: the command in a process group of its own, published in
 * a control dir so that any worker can cancel it (host.remote's cancel script), an optional
 * timeout, its stdout and stderr relayed as they come, and no hang when a background child
 * keeps the pipes open after the command exited.
 *
 * The control dir DIR holds what ctl.h says (pid, pid.tmp, the cancel script's "cancelled");
 * it is removed when the command is done (only those files, then rmdir). */
#include "exec.h"

#include "args.h"
#include "ctl.h"
#include "fd.h"
#include "group.h"
#include "signals.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* After the command exits, what a background child still writes is relayed this long and then
 * dropped, as host.proc's linger and the shell wrapper's 0.5 s do. What the command itself
 * left in the pipes is relayed in full whatever the time. */
#define LINGER_MS 500
/* Between TERM and KILL when we stop the group ourselves (timeout, host gone, hangup). */
#define KILL_GRACE_MS 2000
/* While stopping, how often we look whether the group is empty: nothing tells us when a
 * grandchild dies (it is not our child), so this is our one periodic check, and it lasts at
 * most KILL_GRACE_MS. */
#define GROUP_CHECK_MS 50
#define CHUNK          65536
#define MAX_TIMEOUT    1e9 /* seconds: about 31 years; anything above is a mistake */

#define EXIT_TIMEOUT 124 /* as timeout(1); the others are group.h's, and 2 for a usage error */

/* One relayed stream: the command's pipe to one of our own descriptors. Bytes are read from
 * the pipe only when buf is empty, so a host that reads slowly slows the command down instead
 * of growing our memory. */
typedef struct {
    int from;        /* read end of the command's pipe; -1 once relaying ended */
    int to;          /* STDOUT_FILENO or STDERR_FILENO */
    int flags;       /* to's file status flags before we made it non-blocking; -1: untouched */
    size_t off, len; /* buf[off..off+len) is still to be written to `to` */
    size_t owed;     /* bytes left in the pipe when the command exited: never dropped */
    unsigned char buf[CHUNK];
} Relay;

/* Zero-initialized: its 128 KiB of buffers stay out of the binary (.bss). */
static struct {
    const char *prog;
    const char *dir;    /* the control dir */
    char *const *argv;  /* the command */
    int64_t timeout_ms; /* 0: none */
    pid_t pid;          /* the command, leader of its own process group; 0 before the fork */
    int reaped, status; /* status: what we pass on once the command is reaped */
    int64_t timeout_at; /* monotonic ms; 0: no timeout */
    int64_t linger_at;  /* set when the command is reaped */
    int64_t kill_at;    /* set when stopping starts */
    int stop_status;    /* non-zero once we stop the group: our exit status then */
    int killed;         /* KILL sent (or its time passed): nothing left to wait for */
    int host_gone;      /* our stdout or stderr is closed: output is dropped */
    Relay io[2];        /* stdout, stderr */
} E;

static volatile sig_atomic_t got_term, got_int, got_hup;

/* ---- small things --------------------------------------------------------------------- */

static int usage_error(const char *problem, const char *arg)
{
    return ph_usage_error(E.prog, "--ctl DIR [--timeout SECONDS] -- PROGRAM [ARGS...]", problem,
                          arg);
}

/* ---- signals -------------------------------------------------------------------------- */

static void on_signal(int sig)
{
    if (sig == SIGTERM)
        got_term = 1;
    else if (sig == SIGINT)
        got_int = 1;
    else if (sig == SIGHUP)
        got_hup = 1;
    /* SIGCHLD only has to end ppoll: the loop calls waitpid every turn. */
}

/* The command's group (group.c). */
static void kill_group(int sig)
{
    ph_group_kill(E.pid, E.reaped, sig);
}

/* ---- the command's process ------------------------------------------------------------ */

/* In the command's process (group.c made it the leader of its own group, published, with our
 * pipes as its stdout and stderr; stdin is ours, untouched: the command reads its env from its
 * head): the program. */
static void child_run(void *arg)
{
    execvp(E.argv[0], E.argv);
    int err = errno;
    dprintf(STDERR_FILENO, "%s: cannot run '%s': %s\n", E.prog, E.argv[0], strerror(err));
    _exit(err == ENOENT ? PH_EXIT_NOTFOUND : PH_EXIT_NOEXEC);
}

/* Pipes for stdout and stderr, then the fork. -1 with errno on failure. */
static int spawn(void)
{
    int ours[3];
    pid_t pid = ph_group_spawn(E.prog, E.dir, 1, ours, child_run, NULL);
    if (pid < 0)
        return -1;
    E.pid = pid;
    E.io[0].from = ours[1];
    E.io[1].from = ours[2];
    return 0;
}

/* ---- relaying ------------------------------------------------------------------------- */

/* Our stdout and stderr become non-blocking, so a host that stops reading never stops our
 * loop (timeouts and signals still act). Both flags are read before either is changed, since
 * the two may share one file description; restored at exit in the reverse order. */
static void outputs_nonblocking(void)
{
    for (int i = 0; i < 2; i++)
        E.io[i].flags = fcntl(E.io[i].to, F_GETFL);
    for (int i = 0; i < 2; i++)
        if (E.io[i].flags >= 0)
            fcntl(E.io[i].to, F_SETFL, E.io[i].flags | O_NONBLOCK);
}

static void outputs_restore(void)
{
    for (int i = 1; i >= 0; i--)
        if (E.io[i].flags >= 0)
            fcntl(E.io[i].to, F_SETFL, E.io[i].flags);
}

static void start_stop(int status)
{
    if (E.stop_status != 0)
        return;
    E.stop_status = status;
    kill_group(SIGTERM);
    E.kill_at = ph_now_ms() + KILL_GRACE_MS;
}

/* The host closed the channel (EPIPE, a hangup on our output): nobody will read the output,
 * so the command is stopped and what it writes from now on fails at once (EPIPE). */
static void host_lost(void)
{
    if (E.host_gone)
        return;
    E.host_gone = 1;
    for (int i = 0; i < 2; i++) {
        ph_fd_close(&E.io[i].from);
        E.io[i].len = 0;
    }
    start_stop(128 + SIGPIPE);
}

static void relay_write(Relay *r)
{
    while (r->len > 0) {
        ssize_t n = write(r->to, r->buf + r->off, r->len);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        if (n <= 0) {
            host_lost();
            return;
        }
        r->off += (size_t)n;
        r->len -= (size_t)n;
    }
    r->off = 0;
}

static void relay_read(Relay *r)
{
    ssize_t n = read(r->from, r->buf, sizeof r->buf);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) { /* EOF: every writer is gone; an error ends the stream too */
        ph_fd_close(&r->from);
        return;
    }
    r->off = 0;
    r->len = (size_t)n;
    r->owed = r->owed > (size_t)n ? r->owed - (size_t)n : 0;
    relay_write(r); /* at once: the output is usually writable, and this saves a turn */
}

/* Our own message in the stderr stream (after the command's bytes already read), when there
 * is room; a message is not worth blocking the relay for. */
static void relay_say(const char *msg)
{
    Relay *r = &E.io[1];
    size_t n = strlen(msg);
    if (E.host_gone || r->off + r->len + n > sizeof r->buf)
        return;
    memcpy(r->buf + r->off + r->len, msg, n);
    r->len += n;
}

static int relays_done(void)
{
    for (int i = 0; i < 2; i++)
        if (E.io[i].from >= 0 || E.io[i].len > 0)
            return 0;
    return 1;
}

/* ---- the loop ------------------------------------------------------------------------- */

/* The command's end: its status as sh's wait gives it, and what it left in the pipes. */
static void reap(int64_t now)
{
    if (E.reaped)
        return;
    int st;
    pid_t r = waitpid(E.pid, &st, WNOHANG);
    if (r == 0 || (r < 0 && errno == EINTR))
        return;
    E.reaped = 1;
    if (r < 0) /* cannot happen with our SIGCHLD handler; never wait for what cannot come */
        E.status = PH_EXIT_SETUP;
    else
        E.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    E.linger_at = now + LINGER_MS;
    for (int i = 0; i < 2; i++)
        E.io[i].owed = ph_fd_pending(E.io[i].from);
}

static void handle_signals(void)
{
    if (got_term) {
        got_term = 0;
        kill_group(SIGTERM);
    }
    if (got_int) {
        got_int = 0;
        kill_group(SIGINT);
    }
    if (got_hup) { /* our terminal or session is gone, as the host is: stop it all */
        got_hup = 0;
        kill_group(SIGHUP);
        start_stop(128 + SIGHUP);
    }
}

static void handle_deadlines(int64_t now)
{
    if (E.timeout_at != 0 && now >= E.timeout_at && E.stop_status == 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s: timed out after %gs\n", E.prog, (double)E.timeout_ms / 1000);
        relay_say(msg);
        start_stop(EXIT_TIMEOUT);
    }
    if (E.stop_status != 0 && !E.killed && now >= E.kill_at) {
        kill_group(SIGKILL);
        E.killed = 1;
    }
    if (E.reaped && now >= E.linger_at)
        for (int i = 0; i < 2; i++)
            if (E.io[i].owed == 0 && E.io[i].len == 0)
                ph_fd_close(&E.io[i].from);
}

static int finished(void)
{
    if (!E.reaped)
        return 0;
    if (E.stop_status != 0 && !E.killed && !ph_group_gone(E.pid))
        return 0;
    return E.killed || relays_done(); /* once killed, a stalled host gets no more time */
}

static int64_t next_wakeup(int64_t now)
{
    int64_t t = INT64_MAX;
    if (E.timeout_at != 0 && E.stop_status == 0 && E.timeout_at < t)
        t = E.timeout_at;
    if (E.stop_status != 0 && !E.killed) {
        t = E.kill_at < t ? E.kill_at : t;
        if (E.reaped && now + GROUP_CHECK_MS < t)
            t = now + GROUP_CHECK_MS;
    }
    if (E.reaped && now < E.linger_at && E.linger_at < t)
        t = E.linger_at;
    return t;
}

/* We can wait no more (ppoll failed: out of memory): the command cannot be watched, so it is
 * stopped now rather than left running unsupervised; the next turn finishes. */
static void give_up(const char *what)
{
    fprintf(stderr, "%s: %s: %s: stopping the command\n", E.prog, what, strerror(errno));
    kill_group(SIGKILL);
    int st;
    if (!E.reaped && waitpid(E.pid, &st, 0) == E.pid) /* KILL: this wait is short */
        E.status = 128 + SIGKILL;
    E.reaped = 1;
    E.killed = 1;
    if (E.stop_status == 0)
        E.stop_status = PH_EXIT_SETUP;
}

/* One wait for the pipes, our outputs, a signal or the next deadline. Our outputs are watched
 * even with nothing to write: a closed reading end shows as POLLERR (a pipe) or POLLHUP (a
 * socket, a terminal), so a host that went away stops the command at once. */
static void wait_events(int64_t now)
{
    struct pollfd p[4];
    for (int i = 0; i < 2; i++) {
        Relay *r = &E.io[i];
        p[2 * i] = (struct pollfd){ r->len == 0 ? r->from : -1, POLLIN, 0 };
        p[2 * i + 1] = (struct pollfd){ E.host_gone ? -1 : r->to, r->len > 0 ? POLLOUT : 0, 0 };
    }
    if (ph_wait(p, 4, next_wakeup(now), now) < 0) {
        if (errno != EINTR) /* EINTR: a signal, handled next turn */
            give_up("ppoll");
        return;
    }
    for (int i = 0; i < 2 && !E.host_gone; i++) {
        short out = p[2 * i + 1].revents;
        if (out & (POLLERR | POLLHUP | POLLNVAL))
            host_lost();
        else if (out & POLLOUT)
            relay_write(&E.io[i]);
    }
    for (int i = 0; i < 2; i++)
        if (p[2 * i].revents && E.io[i].from >= 0 && E.io[i].len == 0)
            relay_read(&E.io[i]);
}

static int run_loop(void)
{
    for (;;) {
        int64_t now = ph_now_ms();
        reap(now);
        handle_signals();
        handle_deadlines(now);
        if (finished())
            return E.stop_status != 0 ? E.stop_status : E.status;
        wait_events(now);
    }
}

/* ---- setup ---------------------------------------------------------------------------- */

/* --ctl DIR [--timeout SECONDS] [--] PROGRAM ARGS...; 0, or the usage error's exit status. */
static int parse_args(int argc, char **argv)
{
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *opt = argv[i];
        if (strcmp(opt, "--") == 0) {
            i++;
            break;
        }
        if (strcmp(opt, "--ctl") != 0 && strcmp(opt, "--timeout") != 0)
            return usage_error("unknown option '%s'", opt);
        if (i + 1 >= argc)
            return usage_error("%s needs a value", opt);
        const char *val = argv[++i];
        if (strcmp(opt, "--ctl") == 0) {
            if (val[0] == '\0' || strlen(val) + 16 >= PATH_MAX)
                return usage_error("bad --ctl '%s': an empty or too long path", val);
            E.dir = val;
            continue;
        }
        char *end;
        errno = 0;
        double s = strtod(val, &end);
        if (end == val || *end != '\0' || errno != 0 || !(s > 0) || s > MAX_TIMEOUT)
            return usage_error("bad --timeout '%s': seconds, more than 0", val);
        E.timeout_ms = (int64_t)(s * 1000);
        if (E.timeout_ms == 0)
            E.timeout_ms = 1;
    }
    if (E.dir == NULL)
        return usage_error("%s", "--ctl DIR is required");
    if (i >= argc)
        return usage_error("%s", "no command to run");
    E.argv = argv + i;
    return 0;
}

int ph_exec_main(const char *prog, int argc, char **argv)
{
    E.prog = prog;
    for (int i = 0; i < 2; i++) {
        E.io[i].from = -1;
        E.io[i].to = i == 0 ? STDOUT_FILENO : STDERR_FILENO;
        E.io[i].flags = -1;
    }
    int bad = parse_args(argc, argv);
    if (bad != 0)
        return bad;
    ph_fd_std_ensure();
    ph_signals_setup(on_signal);
    if (ph_ctl_make(E.dir) != 0) {
        fprintf(stderr, "%s: cannot create the control dir %s: %s\n", prog, E.dir, strerror(errno));
        return PH_EXIT_SETUP;
    }
    if (ph_ctl_cancelled(E.dir)) {
        ph_ctl_remove(E.dir);
        return PH_EXIT_CANCELED;
    }
    if (spawn() != 0) {
        fprintf(stderr, "%s: cannot start the command: %s\n", prog, strerror(errno));
        ph_ctl_remove(E.dir);
        return PH_EXIT_SETUP;
    }
    if (E.timeout_ms > 0)
        E.timeout_at = ph_now_ms() + E.timeout_ms;
    outputs_nonblocking();
    int status = run_loop();
    outputs_restore();
    ph_ctl_remove(E.dir);
    return status;
}
