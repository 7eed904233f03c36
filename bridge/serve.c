/* serve.c - ph-sandbox-helper serve: a command server on a duplex execution. One long-lived
 * process per lease runs every command the host sends it as frames (frame.h: EXEC, DATA, FIN,
 * CREDIT, SIGNAL, RESET in; HELLO, DATA, STDERR, CREDIT, EXIT out), many at once, each the way
 * `ph-sandbox-helper exec` runs one: in a process group of its own, published in a control dir
 * so that host.remote's cancel script stops it from any worker, the "cancelled" marker honoured
 * before it starts, its stdout and stderr relayed as they come, no hang when a background
 * child keeps the pipes open, and a timeout backstop. A command then costs a fork and an exec
 * in a process that is already there, instead of an SSH session, a login shell and a wrapper.
 *
 * What a command inherits: the server's environment (how the host started it: host.remote
 * reads /etc/profile once, when the server starts, and execs it with `env -i` over the
 * minimal base) with the request's variables put over it; the server's working directory
 * unless the request names one; the signal dispositions and mask the server was started with
 * (SIGPIPE and SIGCHLD back to their defaults); fresh pipes as stdin, stdout and stderr, and
 * no other descriptor of ours.
 *
 * Each command's control dir <ctl-base>/<name> holds what exec.c's does (ctl.h: pid, written
 * by the command's own process after setsid and before its exec, and the cancel script's
 * "cancelled" marker); it is removed once the command is done (only those files, then rmdir).
 *
 * Memory is bounded whatever the host does: stdin is read a chunk at a time and acted on at
 * once (input.c); a command holds at most a window of the host's stdin bytes and one request
 * (PH_SERVE_REQUEST_MAX); a pipe is read only within its stream's credit (flow.c) and while
 * less than PH_OUT_SOFT waits for stdout (outq.h); there are at most --max-commands commands. */
#include "serve.h"

#include "args.h"
#include "bytes.h"
#include "ctl.h"
#include "fail.h"
#include "fd.h"
#include "flow.h"
#include "frame.h"
#include "group.h"
#include "ids.h"
#include "input.h"
#include "outq.h"
#include "signals.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define DEFAULT_MAX_COMMANDS 256
#define MAX_COMMANDS_LIMIT   4096
/* After a command exits, what a background child still writes is relayed this long and then
 * dropped (host.proc's linger, exec.c's); what the command itself left in the pipes is
 * relayed in full. */
#define LINGER_MS 500
/* Between TERM and KILL when we stop a group ourselves (timeout, RESET, our own end). */
#define KILL_GRACE_MS 2000
/* While a group is being stopped, how often we look whether it is empty: nothing tells us
 * when a grandchild dies. Lasts at most until the KILL. */
#define GROUP_CHECK_MS 50
/* At our end, after the KILL: how long the commands' leaders get to be reaped. */
#define REAP_WAIT_MS 1000
#define CTL_NAME_MAX 128
/* The smallest request the parser looks at: length, timeout, a 1-byte ctl, an empty cwd, argc
 * and envc (argc 0 is refused by the parser, with a clearer reason than a length). */
#define REQUEST_MIN (4 + 4 + 5 + 4 + 4 + 4)

#define EXIT_CD 2 /* as sh when cd fails; the others are group.h's */

/* A request, parsed: every string a NUL-terminated copy in mem. */
typedef struct {
    uint32_t timeout_ms;
    const char *ctl_name, *cwd;
    char **argv; /* argc entries, then NULL */
    char **env;  /* name, value, name, value..., then NULL */
    char *mem;
} Request;

typedef struct {
    uint32_t id;
    PhBytes req;             /* the request while its EXEC frames come */
    uint32_t req_len;        /* its length once its first 4 bytes came; 0 before */
    unsigned char started;   /* the request is whole: the command was started (or failed to) */
    unsigned char in_broken; /* its stdin is gone (EPIPE): the host's bytes are dropped */
    unsigned char reaped;    /* the command's process was waited for */
    unsigned char reset;     /* the host gave it up: stop it, send nothing more */
    unsigned char stopping;  /* we stop the group: done once it is empty or KILLed */
    unsigned char killed;    /* KILL sent: nothing left to wait for */
    unsigned char timed_out; /* the request's timeout passed */
    unsigned char dead;      /* forgotten; freed at the start of the next loop turn */
    pid_t pid;               /* the command, leader of its group; 0: none */
    int status;              /* its wait status once reaped */
    int in_fd;               /* our end of its stdin pipe; -1 once closed */
    int out_fd[2];           /* our ends of its stdout and stderr pipes; -1 once ended */
    size_t owed[2];          /* bytes left in a pipe when it exited: never dropped */
    PhBytes in;              /* the host's stdin bytes, not yet written to the pipe */
    PhFlow flow;             /* flow.allowed + in.len + grant = WINDOW; once flow.host_fin,
                                its stdin is closed when in is written */
    uint32_t grant;          /* stdin credit to give back once there is output room */
    int64_t timeout_at;      /* monotonic ms; 0: none */
    int64_t linger_at;       /* set when reaped */
    int64_t kill_at;         /* while stopping: when KILL comes */
    char ctl[PATH_MAX];      /* the control dir; "" before the command starts */
} Cmd;

static struct {
    const char *prog;
    const char *ctl_base;
    size_t max_commands;
    Cmd **cmds; /* by increasing id: binary search */
    size_t ncmds;
    uint64_t last_id; /* the greatest stream id the host opened */
    int stopping_all; /* stop_all runs: nothing may start it again */
} S;

static volatile sig_atomic_t got_stop;

static _Noreturn void stop_all(int status);

static void out_exit(uint32_t stream, unsigned how, unsigned code, unsigned flags)
{
    unsigned char p[PH_FRAME_EXIT_LEN] = { (unsigned char)how, (unsigned char)code,
                                           (unsigned char)flags };
    ph_out_frame(PH_FRAME_EXIT, stream, p, sizeof p);
}

/* ---- signals -------------------------------------------------------------------------- */

static void on_signal(int sig)
{
    if (sig != SIGCHLD)
        got_stop = 1;
    /* SIGCHLD only has to end ppoll: the loop reaps every turn. */
}

/* ---- process groups ------------------------------------------------------------------- */

static void kill_group(Cmd *c, int sig)
{
    ph_group_kill(c->pid, c->reaped, sig);
}

static int group_empty(Cmd *c)
{
    return c->pid <= 0 || (c->reaped && ph_group_gone(c->pid));
}

/* Signal sig now; stop the group: KILL after grace_ms unless it is empty by then. */
static void stop_group(Cmd *c, int sig, int64_t grace_ms)
{
    kill_group(c, sig);
    if (sig == SIGKILL)
        c->killed = 1;
    if (grace_ms <= 0)
        return;
    int64_t at = ph_now_ms() + grace_ms;
    if (!c->stopping || at < c->kill_at)
        c->kill_at = at;
    c->stopping = 1;
}

/* ---- control dirs --------------------------------------------------------------------- */

/* The command's control dir, removed at most once: c->ctl is "" when it is not ours to remove
 * (never made, or removed already). */
static void ctl_remove(Cmd *c)
{
    if (c->ctl[0] == '\0')
        return;
    ph_ctl_remove(c->ctl);
    c->ctl[0] = '\0';
}

/* ---- commands: the list --------------------------------------------------------------- */

static uint32_t cmd_id(size_t i)
{
    return S.cmds[i]->id;
}

/* The live command with this id: NULL once it is forgotten (EXIT sent, or the host's RESET). */
static Cmd *cmd_find(uint32_t id)
{
    size_t i = ph_ids_search(S.ncmds, id, cmd_id);
    if (i < S.ncmds && S.cmds[i]->id == id && !S.cmds[i]->dead && !S.cmds[i]->reset)
        return S.cmds[i];
    return NULL;
}

static void cmd_close_fds(Cmd *c)
{
    ph_fd_close(&c->in_fd);
    ph_fd_close(&c->out_fd[0]);
    ph_fd_close(&c->out_fd[1]);
    ph_bytes_free(&c->in);
}

/* Free the commands forgotten during the last turn, keeping the order of the rest. */
static void cmds_compact(void)
{
    size_t j = 0;
    for (size_t i = 0; i < S.ncmds; i++) {
        Cmd *c = S.cmds[i];
        if (c->dead) {
            cmd_close_fds(c);
            ph_bytes_free(&c->req);
            free(c);
        } else {
            S.cmds[j++] = c;
        }
    }
    S.ncmds = j;
}

/* Our own message on the command's stderr stream, when its credit allows (a message is not
 * worth a protocol error; before the command runs the whole window is there). */
static void cmd_say(Cmd *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void cmd_say(Cmd *c, const char *fmt, ...)
{
    char msg[PATH_MAX + 256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n <= 0 || (size_t)n >= sizeof msg || (uint64_t)n > c->flow.credit)
        return;
    ph_out_frame(PH_FRAME_STDERR, c->id, msg, (uint32_t)n);
    c->flow.credit -= (uint64_t)n;
}

/* The command is done (or never ran): EXIT unless the host gave it up, then forget it. */
static void cmd_finish(Cmd *c, unsigned how, unsigned code)
{
    if (!c->reset)
        out_exit(c->id, how, code, c->timed_out ? PH_EXIT_TIMED_OUT : 0);
    cmd_close_fds(c);
    ctl_remove(c);
    c->dead = 1;
}

/* ---- commands: the request ------------------------------------------------------------ */

typedef struct {
    const unsigned char *p;
    size_t len, pos;
    char *mem; /* where the next string's copy goes */
    const char *why;
} Reader;

static int rd_u32(Reader *r, uint32_t *v)
{
    if (r->len - r->pos < 4) {
        r->why = "it ends inside a number";
        return -1;
    }
    *v = ph_frame_get_u32(r->p + r->pos);
    r->pos += 4;
    return 0;
}

/* A string -> its NUL-terminated copy in r->mem (each string's copy takes at most the bytes
 * its length prefix and content take in the request, so mem never needs more than that). */
static char *rd_str(Reader *r, uint32_t *n)
{
    if (rd_u32(r, n) != 0)
        return NULL;
    if (*n > r->len - r->pos) {
        r->why = "a string runs past its end";
        return NULL;
    }
    if (memchr(r->p + r->pos, '\0', *n) != NULL) {
        r->why = "a string holds a NUL byte";
        return NULL;
    }
    char *s = r->mem;
    memcpy(s, r->p + r->pos, *n);
    s[*n] = '\0';
    r->mem += *n + 1;
    r->pos += *n;
    return s;
}

static int ctl_name_ok(const char *s, uint32_t n)
{
    if (n == 0 || n > CTL_NAME_MAX || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
        return 0;
    for (uint32_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

/* The request in p[0..len) (len = its length field) -> *q; NULL, or why it is refused. */
static const char *request_parse(const unsigned char *p, size_t len, Request *q)
{
    Reader r = { .p = p, .len = len, .pos = 8 };
    memset(q, 0, sizeof *q);
    q->timeout_ms = ph_frame_get_u32(p + 4);
    q->mem = malloc(len);
    if (q->mem == NULL)
        ph_die("out of memory");
    r.mem = q->mem;
    uint32_t n, argc, envc;
    const char *why = NULL;
    if ((q->ctl_name = rd_str(&r, &n)) == NULL)
        goto bad;
    if (!ctl_name_ok(q->ctl_name, n)) {
        why = "a control dir name that is not 1..128 bytes of [A-Za-z0-9._-] (or is . or ..)";
        goto bad;
    }
    if ((q->cwd = rd_str(&r, &n)) == NULL || rd_u32(&r, &argc) != 0)
        goto bad;
    if (argc == 0 || argc > (len - r.pos) / 4) {
        why = argc == 0 ? "no program" : "more arguments than it has room for";
        goto bad;
    }
    q->argv = calloc((size_t)argc + 1, sizeof *q->argv);
    if (q->argv == NULL)
        ph_die("out of memory");
    for (uint32_t i = 0; i < argc; i++)
        if ((q->argv[i] = rd_str(&r, &n)) == NULL)
            goto bad;
    if (q->argv[0][0] == '\0') {
        why = "an empty program name";
        goto bad;
    }
    if (rd_u32(&r, &envc) != 0)
        goto bad;
    if (envc > (len - r.pos) / 8) {
        why = "more variables than it has room for";
        goto bad;
    }
    q->env = calloc(2 * (size_t)envc + 1, sizeof *q->env);
    if (q->env == NULL)
        ph_die("out of memory");
    for (uint32_t i = 0; i < envc; i++) {
        char *name = rd_str(&r, &n);
        if (name == NULL)
            goto bad;
        if (n == 0 || strchr(name, '=') != NULL) {
            why = "a variable name that is empty or holds '='";
            goto bad;
        }
        q->env[2 * i] = name;
        if ((q->env[2 * i + 1] = rd_str(&r, &n)) == NULL)
            goto bad;
    }
    if (r.pos != len) {
        why = "bytes after its last field";
        goto bad;
    }
    return NULL;
bad:
    free(q->argv);
    free(q->env);
    free(q->mem);
    memset(q, 0, sizeof *q);
    return why ? why : r.why;
}

static void request_free(Request *q)
{
    free(q->argv);
    free(q->env);
    free(q->mem);
}

/* ---- commands: starting --------------------------------------------------------------- */

/* In the command's process (group.c made it the leader of its own group, published, with our
 * pipes as its stdin, stdout and stderr): cwd, env and the program, as sh would report their
 * failures. */
static void child_run(void *arg)
{
    const Request *q = arg;
    if (q->cwd[0] != '\0' && chdir(q->cwd) != 0) {
        dprintf(STDERR_FILENO, "cd: %s: %s\n", q->cwd, strerror(errno));
        _exit(EXIT_CD);
    }
    for (size_t i = 0; q->env[i] != NULL; i += 2)
        if (setenv(q->env[i], q->env[i + 1], 1) != 0) {
            dprintf(STDERR_FILENO, "%s: cannot set %s: %s\n", S.prog, q->env[i], strerror(errno));
            _exit(PH_EXIT_SETUP);
        }
    execvp(q->argv[0], q->argv);
    int err = errno;
    if (err == ENOENT) {
        dprintf(STDERR_FILENO, "%s: not found\n", q->argv[0]);
        _exit(PH_EXIT_NOTFOUND);
    }
    dprintf(STDERR_FILENO, "%s: %s\n", q->argv[0], strerror(err));
    _exit(PH_EXIT_NOEXEC);
}

/* Pipes for all three of its descriptors, then the fork. -1 with errno on failure. */
static int spawn(Cmd *c, Request *q)
{
    int ours[3];
    pid_t pid = ph_group_spawn(S.prog, c->ctl, 0, ours, child_run, q);
    if (pid < 0)
        return -1;
    c->pid = pid;
    c->in_fd = ours[0];
    c->out_fd[0] = ours[1];
    c->out_fd[1] = ours[2];
    return 0;
}

/* The request is whole: the control dir, the marker, the fork. A failure before the command
 * runs is said on its stderr stream and in its EXIT, as exec.c's exit statuses say it. */
static void cmd_start(Cmd *c)
{
    Request q;
    const char *why = request_parse(c->req.p + c->req.off, c->req.len, &q);
    if (why != NULL)
        ph_protocol_error("a bad request on stream %lu: %s", (unsigned long)c->id, why);
    ph_bytes_free(&c->req);
    c->started = 1;
    snprintf(c->ctl, sizeof c->ctl, "%s/%s", S.ctl_base, q.ctl_name);
    if (ph_ctl_make(c->ctl) != 0) {
        cmd_say(c, "%s: cannot create the control dir %s: %s\n", S.prog, c->ctl, strerror(errno));
        c->ctl[0] = '\0'; /* not ours to remove */
        cmd_finish(c, 0, PH_EXIT_SETUP);
    } else if (ph_ctl_cancelled(c->ctl)) {
        cmd_finish(c, 0, PH_EXIT_CANCELED);
    } else if (spawn(c, &q) != 0) {
        cmd_say(c, "%s: cannot start the command: %s\n", S.prog, strerror(errno));
        cmd_finish(c, 0, PH_EXIT_SETUP);
    } else if (q.timeout_ms > 0) {
        c->timeout_at = ph_now_ms() + q.timeout_ms;
    }
    request_free(&q);
}

/* ---- commands: relaying --------------------------------------------------------------- */

/* A pipe is readable: up to the stream's credit becomes one DATA (stdout) or STDERR frame. */
static void cmd_read(Cmd *c, int i)
{
    ssize_t n =
        ph_flow_send(&c->flow, c->out_fd[i], i == 0 ? PH_FRAME_DATA : PH_FRAME_STDERR, c->id);
    if (n > 0) {
        c->owed[i] = c->owed[i] > (size_t)n ? c->owed[i] - (size_t)n : 0;
    } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        ph_fd_close(&c->out_fd[i]); /* EOF: every writer is gone; an error ends it too */
        c->owed[i] = 0;
    }
}

/* Its stdin is gone: what the host sent or sends is dropped, and its credit given back so the
 * host never waits for it. */
static void cmd_stdin_broken(Cmd *c)
{
    ph_fd_close(&c->in_fd);
    c->in_broken = 1;
    c->grant += (uint32_t)c->in.len;
    ph_bytes_free(&c->in);
}

/* The stdin pipe is writable: write the host's bytes; their credit goes back (cmd_settle). */
static void cmd_write(Cmd *c)
{
    ssize_t n = write(c->in_fd, c->in.p + c->in.off, c->in.len);
    if (n > 0) {
        ph_bytes_drop(&c->in, (size_t)n);
        if (c->in.len == 0)
            ph_bytes_free(&c->in); /* an idle command holds no buffer */
        c->grant += (uint32_t)n;
    } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        cmd_stdin_broken(c); /* EPIPE: nobody reads it any more */
    }
}

/* The host gave the command up: stop its group, drop its output, say nothing more. */
static void cmd_reset(Cmd *c)
{
    c->reset = 1;
    cmd_close_fds(c);
    if (!c->started || c->pid <= 0)
        c->dead = 1;
    else
        stop_group(c, SIGTERM, KILL_GRACE_MS);
}

/* After events and deadlines: credit back, stdin's end, timeout, KILL, linger, and the end. */
static void cmd_settle(Cmd *c, int64_t now)
{
    if (!c->started || c->dead)
        return;
    if (c->grant > 0 && !c->flow.host_fin && !c->reset && ph_out_has_room()) {
        ph_flow_grant(&c->flow, c->id, c->grant);
        c->grant = 0;
    }
    if (c->flow.host_fin && c->in.len == 0)
        ph_fd_close(&c->in_fd);
    if (c->timeout_at != 0 && now >= c->timeout_at && !c->timed_out) {
        c->timed_out = 1;
        stop_group(c, SIGTERM, KILL_GRACE_MS);
    }
    if (c->stopping && !c->killed && now >= c->kill_at) {
        kill_group(c, SIGKILL);
        c->killed = 1;
    }
    if (!c->reaped)
        return;
    for (int i = 0; i < 2; i++)
        if (c->killed || (now >= c->linger_at && c->owed[i] == 0))
            ph_fd_close(&c->out_fd[i]); /* once killed, a stalled host gets no more time */
    if (c->out_fd[0] >= 0 || c->out_fd[1] >= 0)
        return;
    if (c->stopping && !c->killed && !group_empty(c))
        return;
    int st = c->status;
    if (WIFSIGNALED(st))
        cmd_finish(c, 1, (unsigned)WTERMSIG(st));
    else
        cmd_finish(c, 0, WIFEXITED(st) ? (unsigned)WEXITSTATUS(st) : PH_EXIT_SETUP);
}

/* Every command that ended: its status, and what it left in the pipes (relayed in full). */
static void reap(int64_t now)
{
    for (;;) {
        int st;
        pid_t pid = waitpid(-1, &st, WNOHANG);
        if (pid < 0 && errno == EINTR)
            continue;
        if (pid <= 0)
            return;
        for (size_t i = 0; i < S.ncmds; i++) {
            Cmd *c = S.cmds[i];
            if (c->pid != pid || c->reaped)
                continue;
            c->reaped = 1;
            c->status = st;
            c->linger_at = now + LINGER_MS;
            for (int j = 0; j < 2; j++)
                c->owed[j] = ph_fd_pending(c->out_fd[j]);
            break;
        }
    }
}

/* ---- the end -------------------------------------------------------------------------- */

static int all_stopped(void)
{
    for (size_t i = 0; i < S.ncmds; i++) {
        Cmd *c = S.cmds[i];
        if (c->pid > 0 && !c->dead && (!c->reaped || !group_empty(c)))
            return 0;
    }
    return 1;
}

/* Stop every command: TERM to each group, KILL to what is left KILL_GRACE_MS later, their
 * leaders reaped (REAP_WAIT_MS at most), their control dirs removed; then exit. */
static _Noreturn void stop_all(int status)
{
    if (S.stopping_all)
        exit(status); /* a failure while stopping: nothing more can be done */
    S.stopping_all = 1;
    for (size_t i = 0; i < S.ncmds; i++) {
        Cmd *c = S.cmds[i];
        if (c->dead)
            continue;
        cmd_close_fds(c);
        kill_group(c, SIGTERM);
    }
    int64_t now = ph_now_ms(), kill_at = now + KILL_GRACE_MS, give_up = kill_at + REAP_WAIT_MS;
    int killed = 0;
    for (;;) {
        reap(now);
        if (all_stopped())
            break;
        if (now >= kill_at && !killed) {
            for (size_t i = 0; i < S.ncmds; i++)
                if (!S.cmds[i]->dead)
                    kill_group(S.cmds[i], SIGKILL);
            killed = 1;
        }
        if (killed) {
            int waiting = 0; /* the leaders, so no zombie of ours outlives us for long */
            for (size_t i = 0; i < S.ncmds; i++)
                waiting |= S.cmds[i]->pid > 0 && !S.cmds[i]->reaped && !S.cmds[i]->dead;
            if (!waiting || now >= give_up)
                break;
        }
        int64_t wake = killed ? give_up : kill_at;
        if (wake - now > GROUP_CHECK_MS)
            wake = now + GROUP_CHECK_MS;
        ph_wait(NULL, 0, wake, now); /* SIGCHLD ends it early */
        now = ph_now_ms();
    }
    for (size_t i = 0; i < S.ncmds; i++)
        ctl_remove(S.cmds[i]);
    ph_out_restore();
    exit(status);
}

/* ---- frames from the host ------------------------------------------------------------- */

/* One more piece of a command's request; the command starts once the request is whole. */
static void request_piece(Cmd *c, const PhFrame *f)
{
    unsigned long id = c->id;
    if (c->req.len + f->length > (c->req_len ? c->req_len : PH_SERVE_REQUEST_MAX))
        ph_protocol_error("EXEC on stream %lu beyond its request's %lu bytes", id,
                          (unsigned long)(c->req_len ? c->req_len : PH_SERVE_REQUEST_MAX));
    ph_bytes_put(&c->req, f->payload, f->length);
    if (c->req_len == 0 && c->req.len >= 4) {
        uint32_t n = ph_frame_get_u32(c->req.p + c->req.off);
        if (n < REQUEST_MIN || n > PH_SERVE_REQUEST_MAX || n < c->req.len)
            ph_protocol_error("a request of %lu bytes on stream %lu (must be %d..%d, and all of "
                              "its EXEC frames)",
                              (unsigned long)n, id, REQUEST_MIN, PH_SERVE_REQUEST_MAX);
        c->req_len = n;
    }
    if (c->req_len != 0 && c->req.len == c->req_len)
        cmd_start(c);
}

/* EXEC on a new stream: a command, or at once an EXIT 125 when --max-commands run already. */
static void cmd_open(const PhFrame *f)
{
    S.last_id = f->stream;
    if (S.ncmds >= S.max_commands) {
        char msg[128];
        int n = snprintf(msg, sizeof msg, "%s: more than %zu commands at once\n", S.prog,
                         S.max_commands);
        ph_out_frame(PH_FRAME_STDERR, f->stream, msg, (uint32_t)n);
        out_exit(f->stream, 0, PH_EXIT_SETUP, 0);
        return; /* forgotten at once: the rest of its frames are dropped */
    }
    Cmd *c = calloc(1, sizeof *c);
    if (c == NULL)
        ph_die("out of memory");
    c->id = f->stream;
    c->in_fd = c->out_fd[0] = c->out_fd[1] = -1;
    ph_flow_init(&c->flow);
    S.cmds[S.ncmds++] = c;
    request_piece(c, f);
}

static void host_frame(const PhFrame *f)
{
    const char *name = ph_frame_type_name(f->type);
    unsigned long id = f->stream;
    switch (f->type) {
    case PH_FRAME_GOAWAY:
        stop_all(0);
    case PH_FRAME_HELLO:
    case PH_FRAME_OPEN:
    case PH_FRAME_STDERR:
    case PH_FRAME_EXIT:
        ph_protocol_error("%s from the host", name);
    }
    if (f->type == PH_FRAME_EXEC && f->stream > S.last_id) {
        cmd_open(f);
        return;
    }
    if (f->stream > S.last_id)
        ph_protocol_error("%s on stream %lu, which was never opened", name, id);
    Cmd *c = cmd_find(f->stream);
    if (c == NULL)
        return; /* forgotten here: the frame crossed our EXIT on the wire */
    if (!c->started) {
        if (f->type == PH_FRAME_EXEC)
            request_piece(c, f);
        else if (f->type == PH_FRAME_RESET)
            cmd_reset(c);
        else
            ph_protocol_error("%s on stream %lu before its request is whole", name, id);
        return;
    }
    switch (f->type) {
    case PH_FRAME_EXEC:
        ph_protocol_error("EXEC on stream %lu after its request", id);
    case PH_FRAME_DATA:
        ph_flow_data(&c->flow, c->id, f->length);
        if (c->in_fd >= 0)
            ph_bytes_put(&c->in, f->payload, f->length);
        else
            c->grant += f->length; /* its stdin is gone: dropped, and the credit given back */
        break;
    case PH_FRAME_FIN:
        ph_flow_fin(&c->flow, c->id);
        break;
    case PH_FRAME_CREDIT:
        ph_flow_credit(&c->flow, c->id, f->payload);
        break;
    case PH_FRAME_SIGNAL:
        stop_group(c, f->payload[0], ph_frame_get_u32(f->payload + 1));
        break;
    case PH_FRAME_RESET:
        cmd_reset(c);
        break;
    }
}

/* ---- the loop ------------------------------------------------------------------------- */

static int64_t next_wakeup(int64_t now)
{
    int64_t t = INT64_MAX;
    for (size_t i = 0; i < S.ncmds; i++) {
        Cmd *c = S.cmds[i];
        if (!c->started || c->dead)
            continue;
        if (c->timeout_at != 0 && !c->timed_out && c->timeout_at < t)
            t = c->timeout_at;
        if (c->stopping && !c->killed) {
            t = c->kill_at < t ? c->kill_at : t;
            if (c->reaped && now + GROUP_CHECK_MS < t)
                t = now + GROUP_CHECK_MS;
        }
        if (c->reaped && now < c->linger_at && c->linger_at < t)
            t = c->linger_at;
        /* Credit owed while stdout was full needs no timer: stdout's POLLOUT wakes us. */
    }
    return t;
}

static void loop(void)
{
    /* stdin, stdout, then three per command (stdin pipe, stdout pipe, stderr pipe). */
    enum { IN, OUT, FIRST };
    struct pollfd *pfd = calloc(FIRST + 3 * S.max_commands, sizeof *pfd);
    if (pfd == NULL)
        ph_die("out of memory");
    for (;;) {
        int64_t now = ph_now_ms();
        reap(now);
        if (got_stop)
            stop_all(0);
        for (size_t i = 0; i < S.ncmds; i++)
            cmd_settle(S.cmds[i], now);
        cmds_compact();
        ph_out_flush();

        int room = ph_out_has_room();
        pfd[IN] = (struct pollfd){ STDIN_FILENO, POLLIN, 0 };
        /* Watched with nothing to write too: a closed reader shows as POLLERR or POLLHUP. */
        pfd[OUT] = (struct pollfd){ STDOUT_FILENO, ph_out_queued() > 0 ? POLLOUT : 0, 0 };
        size_t n = S.ncmds;
        for (size_t i = 0; i < n; i++) {
            Cmd *c = S.cmds[i];
            struct pollfd *p = pfd + FIRST + 3 * i;
            /* No interest, no entry: poll would report an error or hangup on it forever. */
            p[0] = (struct pollfd){ room && c->in.len > 0 ? c->in_fd : -1, POLLOUT, 0 };
            for (int j = 0; j < 2; j++)
                p[1 + j] =
                    (struct pollfd){ room && c->flow.credit > 0 ? c->out_fd[j] : -1, POLLIN, 0 };
        }
        if (ph_wait(pfd, FIRST + 3 * n, next_wakeup(now), now) < 0) {
            if (errno == EINTR)
                continue; /* a signal: handled next turn */
            ph_die("ppoll: %s", strerror(errno));
        }
        if (pfd[OUT].revents & (POLLERR | POLLHUP | POLLNVAL))
            ph_die("stdout: the host closed it");
        if (pfd[OUT].revents & POLLOUT)
            ph_out_flush();
        for (size_t i = 0; i < n; i++) {
            Cmd *c = S.cmds[i];
            struct pollfd *p = pfd + FIRST + 3 * i;
            if (p[0].fd >= 0 && p[0].revents && c->in_fd >= 0 && c->in.len > 0)
                cmd_write(c);
            for (int j = 0; j < 2; j++)
                if (p[1 + j].fd >= 0 && p[1 + j].revents && c->out_fd[j] >= 0 &&
                    c->flow.credit > 0 && ph_out_has_room())
                    cmd_read(c, j);
        }
        /* The host's frames last: they may add commands (after n) or forget some. */
        if (pfd[IN].revents)
            ph_input_read(host_frame);
        ph_out_flush();
    }
}

/* ---- setup ---------------------------------------------------------------------------- */

static int usage_error(const char *problem, const char *arg)
{
    return ph_usage_error(S.prog, "--ctl-base DIR [--max-commands N]", problem, arg);
}

int ph_serve_main(const char *prog, int argc, char **argv)
{
    S.prog = prog;
    ph_fail_init(prog, stop_all);
    unsigned long max_commands = DEFAULT_MAX_COMMANDS;
    for (int i = 1; i < argc; i++) {
        int is_base = strcmp(argv[i], "--ctl-base") == 0;
        if (!is_base && strcmp(argv[i], "--max-commands") != 0)
            return usage_error("unknown argument '%s'", argv[i]);
        if (i + 1 >= argc)
            return usage_error("%s needs a value", argv[i]);
        const char *val = argv[++i];
        if (is_base) {
            if (val[0] == '\0' || strlen(val) + CTL_NAME_MAX + 16 >= PATH_MAX)
                return usage_error("bad --ctl-base '%s': an empty or too long path", val);
            S.ctl_base = val;
            continue;
        }
        if (ph_parse_number(val, 1, MAX_COMMANDS_LIMIT, &max_commands) != 0)
            return usage_error("bad --max-commands '%s': 1 to 4096", val);
    }
    if (S.ctl_base == NULL)
        return usage_error("%s", "--ctl-base DIR is required");
    S.max_commands = max_commands;
    S.cmds = calloc(S.max_commands, sizeof *S.cmds);
    if (S.cmds == NULL) {
        fprintf(stderr, "%s: out of memory\n", prog);
        return 1;
    }
    ph_fd_std_ensure();
    ph_signals_setup(on_signal);
    ph_fd_limit_raise(3 * S.max_commands + 16); /* every command's three pipes and ours */
    /* Orphans of our commands (a background child whose shell exited) become ours, and we reap
     * them: a dead one never looks alive to a group check (kill(-pgid, 0) counts zombies), even
     * where init is slow to reap, and none is left a zombie. */
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    ph_out_start();
    ph_out_hello(PH_FRAME_SERVE_MAGIC, (unsigned)S.max_commands);
    ph_out_flush();
    loop();
    return 0;
}
