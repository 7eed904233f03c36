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
 * Each command's control dir <ctl-base>/<name> holds what exec.c's does: pid ("group:<pgid>\n",
 * written through pid.tmp and a rename by the command's own process after setsid and before
 * its exec), and the cancel script's "cancelled" marker; it is removed once the command is
 * done (only those files, then rmdir).
 *
 * Memory is bounded whatever the host does: stdin is read STDIN_CHUNK bytes at a time and
 * acted on at once; a command holds at most a window of the host's stdin bytes and one
 * request (PH_SERVE_REQUEST_MAX); a pipe is read only within its stream's credit and while
 * less than OUT_SOFT waits for stdout; there are at most --max-commands commands. */
#include "serve.h"

#include "frame.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_MAX_COMMANDS 256
#define MAX_COMMANDS_LIMIT   4096
/* Pipes are read and stdin writes granted (each adds a frame) only while less output than
 * this waits for stdout, so the queue stays under OUT_SOFT plus a frame per command. */
#define OUT_SOFT    (4 * PH_FRAME_MAX)
#define STDIN_CHUNK 65536
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

#define EXIT_CD       2 /* as sh when cd fails */
#define EXIT_SETUP    125
#define EXIT_NOEXEC   126
#define EXIT_NOTFOUND 127
#define EXIT_CANCELED 130

/* A byte queue: p[off..off+len) is the content. */
typedef struct {
    unsigned char *p;
    size_t off, len, cap;
} Bytes;

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
    Bytes req;               /* the request while its EXEC frames come */
    uint32_t req_len;        /* its length once its first 4 bytes came; 0 before */
    unsigned char started;   /* the request is whole: the command was started (or failed to) */
    unsigned char host_fin;  /* the host sent FIN: close its stdin once in is written */
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
    Bytes in;                /* the host's stdin bytes, not yet written to the pipe */
    uint32_t allowed;        /* stdin bytes the host may still send; allowed + in.len +
                                grant = WINDOW */
    uint32_t grant;          /* stdin credit to give back once there is output room */
    uint64_t credit;         /* output bytes we may still send the host (up to 2^32-1) */
    int64_t timeout_at;      /* monotonic ms; 0: none */
    int64_t linger_at;       /* set when reaped */
    int64_t kill_at;         /* while stopping: when KILL comes */
    char ctl[PATH_MAX];      /* the control dir; "" before the command starts */
} Cmd;

/* The signals we handle; the commands get their dispositions back (saved[]). */
static const int SIGNALS[] = { SIGTERM, SIGINT, SIGHUP, SIGCHLD };
#define NSIGNALS ((int)(sizeof SIGNALS / sizeof SIGNALS[0]))

static struct {
    const char *prog;
    const char *ctl_base;
    size_t max_commands;
    Cmd **cmds; /* by increasing id: binary search */
    size_t ncmds;
    uint64_t last_id; /* the greatest stream id the host opened */
    Bytes out;        /* frames for the host, not yet written to stdout */
    PhFrameDecoder dec;
    int stdout_flags; /* restored at exit: the description may be shared */
    int stopping_all; /* stop_all runs: nothing may start it again */
    sigset_t run_mask;
    sigset_t start_mask;
    struct sigaction saved[NSIGNALS];
} S = { .stdout_flags = -1 };

static volatile sig_atomic_t got_stop;

/* ---- small things --------------------------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static _Noreturn void stop_all(int status);
__attribute__((format(printf, 1, 2))) static _Noreturn void protocol_error(const char *fmt, ...);

__attribute__((format(printf, 1, 2))) static _Noreturn void die(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s: %s\n", S.prog, line);
    stop_all(1);
}

/* ---- byte queues ---------------------------------------------------------------------- */

/* Room for n more bytes after the content; dies without memory. */
static unsigned char *bytes_room(Bytes *b, size_t n)
{
    if (b->cap - b->off - b->len < n && b->off > 0) {
        memmove(b->p, b->p + b->off, b->len);
        b->off = 0;
    }
    if (b->cap - b->len < n) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap - b->len < n)
            cap *= 2;
        unsigned char *p = realloc(b->p, cap);
        if (p == NULL)
            die("out of memory");
        b->p = p;
        b->cap = cap;
    }
    return b->p + b->off + b->len;
}

static void bytes_put(Bytes *b, const void *data, size_t n)
{
    memcpy(bytes_room(b, n), data, n);
    b->len += n;
}

static void bytes_drop(Bytes *b, size_t n)
{
    b->off += n;
    b->len -= n;
    if (b->len == 0)
        b->off = 0;
}

static void bytes_free(Bytes *b)
{
    free(b->p);
    *b = (Bytes){ 0 };
}

/* ---- output to the host --------------------------------------------------------------- */

static void out_frame(unsigned type, uint32_t stream, const void *payload, uint32_t length)
{
    unsigned char *p = bytes_room(&S.out, PH_FRAME_HEADER + (size_t)length);
    ph_frame_put_header(p, type, stream, length);
    if (length > 0)
        memcpy(p + PH_FRAME_HEADER, payload, length);
    S.out.len += PH_FRAME_HEADER + (size_t)length;
}

static void out_credit(uint32_t stream, uint32_t n)
{
    unsigned char p[4];
    ph_frame_put_u32(p, n);
    out_frame(PH_FRAME_CREDIT, stream, p, sizeof p);
}

static void out_exit(uint32_t stream, unsigned how, unsigned code, unsigned flags)
{
    unsigned char p[PH_FRAME_EXIT_LEN] = { (unsigned char)how, (unsigned char)code,
                                           (unsigned char)flags };
    out_frame(PH_FRAME_EXIT, stream, p, sizeof p);
}

static int out_has_room(void)
{
    return S.out.len < OUT_SOFT;
}

/* Write what stdout takes now (it is non-blocking); a closed stdout ends everything. */
static void out_flush(void)
{
    while (S.out.len > 0) {
        ssize_t n = write(STDOUT_FILENO, S.out.p + S.out.off, S.out.len);
        if (n > 0) {
            bytes_drop(&S.out, (size_t)n);
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        } else {
            die("stdout: %s", n < 0 ? strerror(errno) : "closed");
        }
    }
}

/* ---- signals -------------------------------------------------------------------------- */

static void on_signal(int sig)
{
    if (sig != SIGCHLD)
        got_stop = 1;
    /* SIGCHLD only has to end ppoll: the loop reaps every turn. */
}

/* As exec.c: our signals stay blocked except inside ppoll, so no wake-up is lost and no system
 * call sees EINTR elsewhere; one that was ignored when we started stays ignored (nohup). */
static void signals_setup(void)
{
    sigset_t ours;
    sigemptyset(&ours);
    for (int i = 0; i < NSIGNALS; i++)
        sigaddset(&ours, SIGNALS[i]);
    sigprocmask(SIG_BLOCK, &ours, &S.start_mask);
    S.run_mask = S.start_mask;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < NSIGNALS; i++) {
        sigaction(SIGNALS[i], &sa, &S.saved[i]);
        if (SIGNALS[i] != SIGCHLD && S.saved[i].sa_handler == SIG_IGN)
            sigaction(SIGNALS[i], &S.saved[i], NULL);
        sigdelset(&S.run_mask, SIGNALS[i]);
    }
    signal(SIGPIPE, SIG_IGN); /* a closed pipe or stdout is an error return, not a death */
}

/* In a command's process: what we were started with, SIGPIPE and SIGCHLD as defaults. */
static void signals_restore(void)
{
    for (int i = 0; i < NSIGNALS; i++)
        if (SIGNALS[i] != SIGCHLD)
            sigaction(SIGNALS[i], &S.saved[i], NULL);
    signal(SIGCHLD, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    sigprocmask(SIG_SETMASK, &S.start_mask, NULL);
}

/* ---- process groups ------------------------------------------------------------------- */

/* As exec.c: the group, or before the command's setsid the process itself; once the command
 * is reaped, the group id names what is left of it. */
static void kill_group(Cmd *c, int sig)
{
    if (c->pid <= 0)
        return;
    if (kill(-c->pid, sig) != 0 && errno == ESRCH && !c->reaped)
        kill(c->pid, sig);
}

static int group_empty(Cmd *c)
{
    return c->pid <= 0 || (c->reaped && kill(-c->pid, 0) != 0 && errno == ESRCH);
}

/* Signal sig now; stop the group: KILL after grace_ms unless it is empty by then. */
static void stop_group(Cmd *c, int sig, int64_t grace_ms)
{
    kill_group(c, sig);
    if (sig == SIGKILL)
        c->killed = 1;
    if (grace_ms <= 0)
        return;
    int64_t at = now_ms() + grace_ms;
    if (!c->stopping || at < c->kill_at)
        c->kill_at = at;
    c->stopping = 1;
}

/* ---- control dirs --------------------------------------------------------------------- */

/* path = ctl/name; --ctl-base's length was checked against PATH_MAX at parse time. */
static const char *ctl_path(char path[PATH_MAX], const Cmd *c, const char *name)
{
    if (snprintf(path, PATH_MAX, "%s/%s", c->ctl, name) >= PATH_MAX)
        path[0] = '\0';
    return path;
}

/* mkdir -p of --ctl-base (parents with the umask's mode), then the command's own dir, mode
 * 0700 when we make it; it may exist: the cancel script makes it to leave its marker. */
static int ctl_make(const Cmd *c)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", c->ctl);
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char ch = *p;
        *p = '\0';
        int last = ch == '\0';
        if (mkdir(path, last ? 0700 : 0777) == 0) {
            if (last && chmod(path, 0700) != 0) /* a umask can take owner bits too */
                return -1;
        } else if (errno != EEXIST) {
            return -1;
        }
        *p = ch;
        if (last)
            break;
    }
    struct stat st;
    if (stat(c->ctl, &st) != 0)
        return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

static int ctl_cancelled(const Cmd *c)
{
    char path[PATH_MAX];
    struct stat st;
    return stat(ctl_path(path, c, "cancelled"), &st) == 0;
}

/* Only the files we know of, then the dir: a stranger's file there keeps it. */
static void ctl_remove(Cmd *c)
{
    static const char *const files[] = { "pid", "pid.tmp", "cancelled" };
    char path[PATH_MAX];
    if (c->ctl[0] == '\0')
        return;
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        unlink(ctl_path(path, c, files[i]));
    rmdir(c->ctl);
    c->ctl[0] = '\0';
}

/* ctl/pid = "<kind>:<id>\n", whole or not at all (the cancel script reads it any time). */
static int ctl_publish(const Cmd *c, const char *kind, pid_t id)
{
    char tmp[PATH_MAX], path[PATH_MAX], line[64];
    int n = snprintf(line, sizeof line, "%s:%ld\n", kind, (long)id);
    int fd = open(ctl_path(tmp, c, "pid.tmp"), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    ssize_t w = write(fd, line, (size_t)n);
    if (close(fd) != 0 || w != n) {
        unlink(tmp);
        return -1;
    }
    return rename(tmp, ctl_path(path, c, "pid"));
}

/* ---- commands: the list --------------------------------------------------------------- */

/* The live command with this id: NULL once it is forgotten (EXIT sent, or the host's RESET). */
static Cmd *cmd_find(uint32_t id)
{
    size_t lo = 0, hi = S.ncmds;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (S.cmds[mid]->id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < S.ncmds && S.cmds[lo]->id == id && !S.cmds[lo]->dead && !S.cmds[lo]->reset)
        return S.cmds[lo];
    return NULL;
}

static void fd_close(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void cmd_close_fds(Cmd *c)
{
    fd_close(&c->in_fd);
    fd_close(&c->out_fd[0]);
    fd_close(&c->out_fd[1]);
    bytes_free(&c->in);
}

/* Free the commands forgotten during the last turn, keeping the order of the rest. */
static void cmds_compact(void)
{
    size_t j = 0;
    for (size_t i = 0; i < S.ncmds; i++) {
        Cmd *c = S.cmds[i];
        if (c->dead) {
            cmd_close_fds(c);
            bytes_free(&c->req);
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
    if (n <= 0 || (size_t)n >= sizeof msg || (uint64_t)n > c->credit)
        return;
    out_frame(PH_FRAME_STDERR, c->id, msg, (uint32_t)n);
    c->credit -= (uint64_t)n;
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
        die("out of memory");
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
        die("out of memory");
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
        die("out of memory");
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

/* After the fork: our pipes as stdin, stdout and stderr, a session and group of its own,
 * published before anything of the command runs, the cancel marker once more (a cancel may
 * have come in between), then cwd, env and the program, as sh would report their failures. */
static _Noreturn void child_run(Cmd *c, const Request *q, int in_r, int out_w, int err_w)
{
    signals_restore();
    if (dup2(in_r, STDIN_FILENO) < 0 || dup2(out_w, STDOUT_FILENO) < 0 ||
        dup2(err_w, STDERR_FILENO) < 0)
        _exit(EXIT_SETUP);
    const char *kind = setsid() >= 0 ? "group" : "process";
    if (ctl_publish(c, kind, getpid()) != 0) {
        dprintf(STDERR_FILENO, "%s: cannot write %s/pid: %s\n", S.prog, c->ctl, strerror(errno));
        _exit(EXIT_SETUP);
    }
    if (ctl_cancelled(c))
        _exit(EXIT_CANCELED);
    if (q->cwd[0] != '\0' && chdir(q->cwd) != 0) {
        dprintf(STDERR_FILENO, "cd: %s: %s\n", q->cwd, strerror(errno));
        _exit(EXIT_CD);
    }
    for (size_t i = 0; q->env[i] != NULL; i += 2)
        if (setenv(q->env[i], q->env[i + 1], 1) != 0) {
            dprintf(STDERR_FILENO, "%s: cannot set %s: %s\n", S.prog, q->env[i], strerror(errno));
            _exit(EXIT_SETUP);
        }
    execvp(q->argv[0], q->argv);
    int err = errno;
    if (err == ENOENT) {
        dprintf(STDERR_FILENO, "%s: not found\n", q->argv[0]);
        _exit(EXIT_NOTFOUND);
    }
    dprintf(STDERR_FILENO, "%s: %s\n", q->argv[0], strerror(err));
    _exit(EXIT_NOEXEC);
}

static void close_pair(int p[2])
{
    fd_close(&p[0]);
    fd_close(&p[1]);
}

/* Three pipes, then the fork; our ends non-blocking (we poll them), the command's blocking as
 * programs expect. -1 with errno on failure. */
static int spawn(Cmd *c, const Request *q)
{
    int p[3][2] = { { -1, -1 }, { -1, -1 }, { -1, -1 } };
    for (int i = 0; i < 3; i++)
        if (pipe2(p[i], O_CLOEXEC) != 0) {
            int e = errno;
            for (int j = 0; j < i; j++)
                close_pair(p[j]);
            errno = e;
            return -1;
        }
    c->pid = fork();
    if (c->pid == 0)
        child_run(c, q, p[0][0], p[1][1], p[2][1]);
    int e = errno;
    fd_close(&p[0][0]);
    fd_close(&p[1][1]);
    fd_close(&p[2][1]);
    if (c->pid < 0) {
        c->pid = 0;
        fd_close(&p[0][1]);
        fd_close(&p[1][0]);
        fd_close(&p[2][0]);
        errno = e;
        return -1;
    }
    c->in_fd = p[0][1];
    c->out_fd[0] = p[1][0];
    c->out_fd[1] = p[2][0];
    int ours[3] = { c->in_fd, c->out_fd[0], c->out_fd[1] };
    for (int i = 0; i < 3; i++)
        fcntl(ours[i], F_SETFL, fcntl(ours[i], F_GETFL) | O_NONBLOCK);
    return 0;
}

/* The request is whole: the control dir, the marker, the fork. A failure before the command
 * runs is said on its stderr stream and in its EXIT, as exec.c's exit statuses say it. */
static void cmd_start(Cmd *c)
{
    Request q;
    const char *why = request_parse(c->req.p + c->req.off, c->req.len, &q);
    if (why != NULL)
        protocol_error("a bad request on stream %lu: %s", (unsigned long)c->id, why);
    bytes_free(&c->req);
    c->started = 1;
    snprintf(c->ctl, sizeof c->ctl, "%s/%s", S.ctl_base, q.ctl_name);
    if (ctl_make(c) != 0) {
        cmd_say(c, "%s: cannot create the control dir %s: %s\n", S.prog, c->ctl, strerror(errno));
        c->ctl[0] = '\0'; /* not ours to remove */
        cmd_finish(c, 0, EXIT_SETUP);
    } else if (ctl_cancelled(c)) {
        cmd_finish(c, 0, EXIT_CANCELED);
    } else if (spawn(c, &q) != 0) {
        cmd_say(c, "%s: cannot start the command: %s\n", S.prog, strerror(errno));
        cmd_finish(c, 0, EXIT_SETUP);
    } else if (q.timeout_ms > 0) {
        c->timeout_at = now_ms() + q.timeout_ms;
    }
    request_free(&q);
}

/* ---- commands: relaying --------------------------------------------------------------- */

/* A pipe is readable: up to the stream's credit becomes one DATA (stdout) or STDERR frame. */
static void cmd_read(Cmd *c, int i)
{
    size_t want = c->credit < PH_FRAME_MAX_PAYLOAD ? (size_t)c->credit : PH_FRAME_MAX_PAYLOAD;
    unsigned char *p = bytes_room(&S.out, PH_FRAME_HEADER + want);
    ssize_t n = read(c->out_fd[i], p + PH_FRAME_HEADER, want);
    if (n > 0) {
        ph_frame_put_header(p, i == 0 ? PH_FRAME_DATA : PH_FRAME_STDERR, c->id, (uint32_t)n);
        S.out.len += PH_FRAME_HEADER + (size_t)n;
        c->credit -= (uint64_t)n;
        c->owed[i] = c->owed[i] > (size_t)n ? c->owed[i] - (size_t)n : 0;
    } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        fd_close(&c->out_fd[i]); /* EOF: every writer is gone; an error ends it too */
        c->owed[i] = 0;
    }
}

/* Its stdin is gone: what the host sent or sends is dropped, and its credit given back so the
 * host never waits for it. */
static void cmd_stdin_broken(Cmd *c)
{
    fd_close(&c->in_fd);
    c->in_broken = 1;
    c->grant += (uint32_t)c->in.len;
    bytes_free(&c->in);
}

/* The stdin pipe is writable: write the host's bytes; their credit goes back (cmd_settle). */
static void cmd_write(Cmd *c)
{
    ssize_t n = write(c->in_fd, c->in.p + c->in.off, c->in.len);
    if (n > 0) {
        bytes_drop(&c->in, (size_t)n);
        if (c->in.len == 0)
            bytes_free(&c->in); /* an idle command holds no buffer */
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
    if (c->grant > 0 && !c->host_fin && !c->reset && out_has_room()) {
        out_credit(c->id, c->grant);
        c->allowed += c->grant;
        c->grant = 0;
    }
    if (c->host_fin && c->in.len == 0)
        fd_close(&c->in_fd);
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
            fd_close(&c->out_fd[i]); /* once killed, a stalled host gets no more time */
    if (c->out_fd[0] >= 0 || c->out_fd[1] >= 0)
        return;
    if (c->stopping && !c->killed && !group_empty(c))
        return;
    int st = c->status;
    if (WIFSIGNALED(st))
        cmd_finish(c, 1, (unsigned)WTERMSIG(st));
    else
        cmd_finish(c, 0, WIFEXITED(st) ? (unsigned)WEXITSTATUS(st) : EXIT_SETUP);
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
            for (int j = 0; j < 2; j++) {
                int n = 0;
                if (c->out_fd[j] >= 0 && ioctl(c->out_fd[j], FIONREAD, &n) == 0 && n > 0)
                    c->owed[j] = (size_t)n;
            }
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

static void pause_ms(int64_t ms)
{
    struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000 };
    ppoll(NULL, 0, &ts, &S.run_mask); /* SIGCHLD ends it early */
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
    int64_t now = now_ms(), kill_at = now + KILL_GRACE_MS, give_up = kill_at + REAP_WAIT_MS;
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
        pause_ms(wake - now < GROUP_CHECK_MS ? wake - now : GROUP_CHECK_MS);
        now = now_ms();
    }
    for (size_t i = 0; i < S.ncmds; i++)
        ctl_remove(S.cmds[i]);
    if (S.stdout_flags >= 0)
        fcntl(STDOUT_FILENO, F_SETFL, S.stdout_flags);
    exit(status);
}

/* The host broke the protocol: say why on stderr and, as a courtesy, in a GOAWAY (written only
 * if stdout takes it now), then stop everything and exit 1. */
static _Noreturn void protocol_error(const char *fmt, ...)
{
    char reason[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s: protocol error: %s\n", S.prog, reason);
    out_frame(PH_FRAME_GOAWAY, 0, reason, (uint32_t)strlen(reason));
    while (S.out.len > 0) {
        ssize_t n = write(STDOUT_FILENO, S.out.p + S.out.off, S.out.len);
        if (n <= 0 && errno != EINTR)
            break;
        if (n > 0)
            bytes_drop(&S.out, (size_t)n);
    }
    stop_all(1);
}

/* ---- frames from the host ------------------------------------------------------------- */

/* One more piece of a command's request; the command starts once the request is whole. */
static void request_piece(Cmd *c, const PhFrame *f)
{
    unsigned long id = c->id;
    if (c->req.len + f->length > (c->req_len ? c->req_len : PH_SERVE_REQUEST_MAX))
        protocol_error("EXEC on stream %lu beyond its request's %lu bytes", id,
                       (unsigned long)(c->req_len ? c->req_len : PH_SERVE_REQUEST_MAX));
    bytes_put(&c->req, f->payload, f->length);
    if (c->req_len == 0 && c->req.len >= 4) {
        uint32_t n = ph_frame_get_u32(c->req.p + c->req.off);
        if (n < REQUEST_MIN || n > PH_SERVE_REQUEST_MAX || n < c->req.len)
            protocol_error("a request of %lu bytes on stream %lu (must be %d..%d, and all of "
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
        out_frame(PH_FRAME_STDERR, f->stream, msg, (uint32_t)n);
        out_exit(f->stream, 0, EXIT_SETUP, 0);
        return; /* forgotten at once: the rest of its frames are dropped */
    }
    Cmd *c = calloc(1, sizeof *c);
    if (c == NULL)
        die("out of memory");
    c->id = f->stream;
    c->in_fd = c->out_fd[0] = c->out_fd[1] = -1;
    c->credit = PH_FRAME_WINDOW;
    c->allowed = PH_FRAME_WINDOW;
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
        protocol_error("%s from the host", name);
    }
    if (f->type == PH_FRAME_EXEC && f->stream > S.last_id) {
        cmd_open(f);
        return;
    }
    if (f->stream > S.last_id)
        protocol_error("%s on stream %lu, which was never opened", name, id);
    Cmd *c = cmd_find(f->stream);
    if (c == NULL)
        return; /* forgotten here: the frame crossed our EXIT on the wire */
    if (!c->started) {
        if (f->type == PH_FRAME_EXEC)
            request_piece(c, f);
        else if (f->type == PH_FRAME_RESET)
            cmd_reset(c);
        else
            protocol_error("%s on stream %lu before its request is whole", name, id);
        return;
    }
    switch (f->type) {
    case PH_FRAME_EXEC:
        protocol_error("EXEC on stream %lu after its request", id);
    case PH_FRAME_DATA:
        if (c->host_fin)
            protocol_error("DATA after FIN on stream %lu", id);
        if (f->length > c->allowed)
            protocol_error("DATA of %lu bytes on stream %lu exceeds its credit of %lu",
                           (unsigned long)f->length, id, (unsigned long)c->allowed);
        c->allowed -= f->length;
        if (c->in_fd >= 0)
            bytes_put(&c->in, f->payload, f->length);
        else
            c->grant += f->length; /* its stdin is gone: dropped, and the credit given back */
        break;
    case PH_FRAME_FIN:
        if (c->host_fin)
            protocol_error("a second FIN on stream %lu", id);
        c->host_fin = 1;
        break;
    case PH_FRAME_CREDIT:
        c->credit += ph_frame_get_u32(f->payload);
        if (c->credit > UINT32_MAX)
            protocol_error("CREDIT takes stream %lu past 2^32-1 bytes", id);
        break;
    case PH_FRAME_SIGNAL:
        stop_group(c, f->payload[0], ph_frame_get_u32(f->payload + 1));
        break;
    case PH_FRAME_RESET:
        cmd_reset(c);
        break;
    }
}

/* stdin is readable: read a chunk and act on every frame in it. Nothing here waits for
 * output room, so everything read is consumed at once. Its end stops everything. */
static void host_input(void)
{
    static unsigned char buf[STDIN_CHUNK];
    ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
    if (n < 0) {
        if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        die("stdin: %s", strerror(errno));
    }
    if (n == 0) {
        if (S.dec.have != 0)
            protocol_error("stdin ended inside a frame");
        stop_all(0);
    }
    size_t pos = 0;
    while (pos < (size_t)n) {
        PhFrame f;
        size_t used;
        int r = ph_frame_decode(&S.dec, buf + pos, (size_t)n - pos, &used, &f);
        pos += used;
        if (r < 0)
            protocol_error("%s", S.dec.error);
        if (r == 0)
            break;
        host_frame(&f);
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
        die("out of memory");
    for (;;) {
        int64_t now = now_ms();
        reap(now);
        if (got_stop)
            stop_all(0);
        for (size_t i = 0; i < S.ncmds; i++)
            cmd_settle(S.cmds[i], now);
        cmds_compact();
        out_flush();

        int room = out_has_room();
        pfd[IN] = (struct pollfd){ STDIN_FILENO, POLLIN, 0 };
        /* Watched with nothing to write too: a closed reader shows as POLLERR or POLLHUP. */
        pfd[OUT] = (struct pollfd){ STDOUT_FILENO, S.out.len > 0 ? POLLOUT : 0, 0 };
        size_t n = S.ncmds;
        for (size_t i = 0; i < n; i++) {
            Cmd *c = S.cmds[i];
            struct pollfd *p = pfd + FIRST + 3 * i;
            /* No interest, no entry: poll would report an error or hangup on it forever. */
            p[0] = (struct pollfd){ room && c->in.len > 0 ? c->in_fd : -1, POLLOUT, 0 };
            for (int j = 0; j < 2; j++)
                p[1 + j] = (struct pollfd){ room && c->credit > 0 ? c->out_fd[j] : -1, POLLIN, 0 };
        }
        int64_t wake = next_wakeup(now);
        struct timespec ts, *tsp = NULL;
        if (wake != INT64_MAX) {
            int64_t ms = wake > now ? wake - now : 0;
            ts.tv_sec = (time_t)(ms / 1000);
            ts.tv_nsec = (long)(ms % 1000) * 1000000;
            tsp = &ts;
        }
        if (ppoll(pfd, FIRST + 3 * n, tsp, &S.run_mask) < 0) {
            if (errno == EINTR)
                continue; /* a signal: handled next turn */
            die("ppoll: %s", strerror(errno));
        }
        if (pfd[OUT].revents & (POLLERR | POLLHUP | POLLNVAL))
            die("stdout: the host closed it");
        if (pfd[OUT].revents & POLLOUT)
            out_flush();
        for (size_t i = 0; i < n; i++) {
            Cmd *c = S.cmds[i];
            struct pollfd *p = pfd + FIRST + 3 * i;
            if (p[0].fd >= 0 && p[0].revents && c->in_fd >= 0 && c->in.len > 0)
                cmd_write(c);
            for (int j = 0; j < 2; j++)
                if (p[1 + j].fd >= 0 && p[1 + j].revents && c->out_fd[j] >= 0 && c->credit > 0 &&
                    out_has_room())
                    cmd_read(c, j);
        }
        /* The host's frames last: they may add commands (after n) or forget some. */
        if (pfd[IN].revents)
            host_input();
        out_flush();
    }
}

/* ---- setup ---------------------------------------------------------------------------- */

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "%s: ", S.prog);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nusage: %s --ctl-base DIR [--max-commands N]\n", S.prog);
    return 2;
}

/* A descriptor 0, 1 or 2 we were started without would be taken by a pipe: /dev/null. */
static void ensure_std_fds(void)
{
    for (int fd = 0; fd <= 2; fd++)
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF)
            open("/dev/null", O_RDWR); /* takes the lowest free number: fd */
}

/* Room for every command's three pipes and ours, when the hard limit allows. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    rlim_t want = (rlim_t)(3 * S.max_commands + 16);
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want)
        return;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
}

int ph_serve_main(const char *prog, int argc, char **argv)
{
    S.prog = prog;
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
        char *end;
        errno = 0;
        max_commands = strtoul(val, &end, 10);
        if (*val < '0' || *val > '9' || *end != '\0' || errno != 0 || max_commands < 1 ||
            max_commands > MAX_COMMANDS_LIMIT)
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
    ensure_std_fds();
    signals_setup();
    raise_fd_limit();
    /* Orphans of our commands (a background child whose shell exited) become ours, and we reap
     * them: a dead one never looks alive to a group check (kill(-pgid, 0) counts zombies), even
     * where init is slow to reap, and none is left a zombie. */
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    int flags = fcntl(STDOUT_FILENO, F_GETFL);
    if (flags < 0 || fcntl(STDOUT_FILENO, F_SETFL, flags | O_NONBLOCK) != 0)
        die("stdout: %s", strerror(errno));
    S.stdout_flags = flags;

    unsigned char hello[PH_FRAME_HELLO_LEN];
    memcpy(hello, PH_FRAME_SERVE_MAGIC, PH_FRAME_MAGIC_LEN);
    hello[8] = (unsigned char)(S.max_commands >> 8);
    hello[9] = (unsigned char)S.max_commands;
    out_frame(PH_FRAME_HELLO, 0, hello, sizeof hello);
    out_flush();
    loop();
    return 0;
}
