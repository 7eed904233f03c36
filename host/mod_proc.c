/* mod_proc.c - host.core.proc: child processes, each in its own process group, with their
 * output kept in C memory, callbacks for it, timeouts and termination with grace. How a child
 * starts and how its exit is seen (posix_spawn plus a pidfd, or uv_spawn) is ph_spawn.c's. */
#include "ph.h"
#include "ph_groups.h"
#include "ph_slots.h"
#include "ph_spawn.h"
#include "ph_util.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROC_MT "host.proc.Process" /* also the __name shown in argument errors */

#define DEFAULT_GRACE  2.0
#define DEFAULT_LINGER 0.5
#define DEFAULT_MAX    (16 * 1024 * 1024)
#define READ_CHUNK     (64 * 1024)
#define MAX_SECONDS    1e9
#define RESUME_LINGER  0.2 /* s: after resume_output, for the pipes of an exited leader */

/* User values of a Process userdata: they live exactly as long as the object. */
enum { UVAL_RESULT = 1, UVAL_ON_STDOUT, UVAL_ON_STDERR, UVAL_STDIN, UVAL_COUNT = UVAL_STDIN };

enum { OUT, ERR };

/* What the one timer of a process is counting down to. */
enum { T_NONE, T_TIMEOUT, T_GRACE, T_LINGER };

/* Bytes kept from one output stream: C memory, pushed to Lua once, at the end. */
typedef struct {
    uv_pipe_t pipe;
    PhBuf kept;
    int open; /* the pipe handle is not closed yet */
    int has_callback;
    /* max_encoded: kept[0 .. sized) is measured, its cleaned text enc bytes once JSON-encoded;
     * full: the budget is reached, the rest is dropped */
    size_t sized, enc;
    int full;
} Stream;

typedef struct Proc Proc;

/* A task parked in Process:wait (or proc.run), or in Process:drain. */
typedef struct Waiter {
    ph_op op;
    Proc *proc;
    struct Waiter *next;
    uv_timer_t *timer; /* NULL without a timeout */
} Waiter;

/* The Process userdata. libuv handles live inside it, so the userdata is anchored in the
 * registry (ref) from the first uv_*_init until the last close callback: it cannot be
 * collected while libuv still uses its memory, whatever Lua does with its references. */
struct Proc {
    PhChild child; /* the leader: its pid, and what watches it for its exit */
    uv_timer_t timer;
    uv_pipe_t in;
    uv_write_t write_req;
    Stream s[2];
    int ref;     /* registry anchor while handles > 0 */
    int handles; /* uv handles initialised and not yet closed */
    int spawned, exited, finished, closed;
    int in_open;
    int in_pipe;        /* stdin = true: written piecewise with Process:write */
    int in_pending;     /* Process:write requests not completed yet */
    int in_close_after; /* close_stdin asked while writes were pending */
    int in_lost;        /* a written piece never reached the pipe: drain can only fail now */
    int terminating;    /* timeout, cancel, terminate() or close(): the group goes at exit */
    int slot;           /* holds one of the slots of ph_slots.c until its handles are closed */
    int paused;         /* pause_output: its pipes are not read until resume_output */
    int timed_out, truncated, result_failed;
    int phase; /* T_* */
    int64_t exit_status;
    int term_signal;
    double started, ended;
    double timeout, grace, linger; /* seconds; timeout < 0: none */
    size_t max_output;
    size_t max_encoded; /* 0: none; else what is kept is cut by its cleaned, encoded size */
    int stream_only;    /* keep_output = false: chunks go to the callbacks, nothing is kept */
    Waiter *waiters;    /* parked for the result */
    Waiter *reapwait;   /* canceled: resumed with "canceled" once the leader is reaped */
    Waiter *drainers;   /* parked in drain: pieces are pending and stdin is open */
};

static char scratch[READ_CHUNK]; /* every read lands here first; one read at a time */

static Proc *check_proc(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, PROC_MT);
}

static Proc *check_open_proc(lua_State *L, int idx)
{
    Proc *p = check_proc(L, idx);
    if (p->closed)
        luaL_error(L, "attempt to use a closed %s", PROC_MT);
    return p;
}

/* ---- handle lifetime ------------------------------------------------------------------- */

static void handle_closed(uv_handle_t *h)
{
    Proc *p = h->data;
    if (--p->handles == 0) { /* libuv is done with our memory: let Lua collect it */
        luaL_unref(ph_main_state(), LUA_REGISTRYINDEX, p->ref);
        p->ref = LUA_NOREF;
        if (p->slot) { /* every descriptor of it is closed: the next spawn may start */
            p->slot = 0;
            ph_slots_release();
        }
    }
}

static void close_handle(Proc *p, uv_handle_t *h)
{
    h->data = p;
    uv_close(h, handle_closed);
}

static void close_stream(Proc *p, Stream *s)
{
    if (s->open) {
        s->open = 0;
        close_handle(p, (uv_handle_t *)&s->pipe);
    }
}

/* Hand every drainer its answer once there is one: true when nothing is pending, "closed"
 * once a piece was lost. Wake, not resume: this runs inside Lua calls (write, close) as well
 * as libuv callbacks, and no Lua may run while we walk the list. */
static void wake_drainers(Proc *p)
{
    if (p->in_pending > 0 && !p->in_lost)
        return;
    Waiter *d = p->drainers;
    p->drainers = NULL;
    while (d != NULL) {
        Waiter *next = d->next;
        ph_timer_free(&d->timer);
        ph_task *t = d->op.task;
        lua_State *co = ph_task_thread(t);
        free(d);
        int n = 1;
        if (p->in_lost)
            n = ph_fail(co, "closed", "stdin of process %d closed before every written byte went",
                        p->child.pid);
        else
            lua_pushboolean(co, 1);
        ph_task_wake(t, n);
        d = next;
    }
}

/* Pieces still pending when the pipe closes are lost: libuv cancels them as it closes. */
static void close_stdin(Proc *p)
{
    if (p->in_open) {
        p->in_open = 0;
        if (p->in_pending > 0)
            p->in_lost = 1;
        close_handle(p, (uv_handle_t *)&p->in);
    }
    wake_drainers(p);
}

/* Stop watching the leader (it was reaped, or the spawn failed). */
static void close_leader(Proc *p)
{
    ph_child_unwatch(&p->child, p, handle_closed);
}

/* ---- signalling the group ------------------------------------------------------------ */

/* The child called setsid() before exec (ph_spawn), so its pgid is its pid. The kernel
 * keeps that number from being reused while any member of the group lives. */
static void signal_group(Proc *p, int sig)
{
    if (p->child.pid > 0)
        kill(-(pid_t)p->child.pid, sig);
}

static void on_timer(uv_timer_t *timer);

static void arm_timer(Proc *p, int phase, double seconds)
{
    p->phase = phase;
    ph_timer_start(&p->timer, on_timer, seconds);
}

/* SIGTERM to the group now, SIGKILL after the grace period unless the leader exits first
 * (then the rest of the group gets SIGKILL at once, in leader_exited). */
static void start_termination(Proc *p)
{
    if (!p->spawned || p->exited || p->terminating)
        return;
    p->terminating = 1;
    signal_group(p, SIGTERM);
    signal_group(p, SIGCONT); /* a stopped process must run to see its SIGTERM */
    uv_timer_stop(&p->timer);
    arm_timer(p, T_GRACE, p->grace);
}

/* ---- the result ----------------------------------------------------------------------- */

/* The C copy is freed as soon as Lua has its own: each stream (up to max_output bytes) is
 * held twice only while it is copied, never both streams at once. */
static void push_bytes(lua_State *L, Stream *s)
{
    lua_pushlstring(L, s->kept.p != NULL ? s->kept.p : "", s->kept.len);
    ph_buf_free(&s->kept);
}

/* Under ph_protect: builds the result table and stores it as the Process's user value. */
static void build_result(lua_State *L, void *ud)
{
    Proc *p = ud;
    lua_createtable(L, 0, 8);
    if (p->exited && p->term_signal == 0 && !p->timed_out) {
        lua_pushinteger(L, (lua_Integer)p->exit_status);
        lua_setfield(L, -2, "exit_code");
    }
    if (p->term_signal != 0) {
        const char *name = ph_signal_name(p->term_signal);
        if (name != NULL)
            lua_pushstring(L, name);
        else
            lua_pushfstring(L, "SIG%d", p->term_signal);
        lua_setfield(L, -2, "signal");
    }
    lua_pushboolean(L, p->timed_out);
    lua_setfield(L, -2, "timed_out");
    push_bytes(L, &p->s[OUT]);
    lua_setfield(L, -2, "stdout");
    push_bytes(L, &p->s[ERR]);
    lua_setfield(L, -2, "stderr");
    lua_pushboolean(L, p->truncated);
    lua_setfield(L, -2, "truncated");
    lua_pushinteger(L, p->child.pid);
    lua_setfield(L, -2, "pid");
    lua_pushnumber(L, p->ended - p->started);
    lua_setfield(L, -2, "duration");
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref);
    lua_insert(L, -2);
    lua_setiuservalue(L, -2, UVAL_RESULT);
}

/* Push what wait returns once the process finished. The Process is at idx, or idx is 0
 * and it is fetched through its anchor (still held: the finishing handles are not closed). */
static int push_result(lua_State *L, Proc *p, int idx)
{
    if (p->result_failed)
        return ph_fail(L, "internal", "process %d: out of memory building the result",
                       p->child.pid);
    lua_checkstack(L, 3);
    if (idx != 0) {
        lua_getiuservalue(L, idx, UVAL_RESULT);
        return 1;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref);
    lua_getiuservalue(L, -1, UVAL_RESULT);
    lua_remove(L, -2);
    return 1;
}

static void free_streams(Proc *p)
{
    for (int i = 0; i < 2; i++)
        ph_buf_free(&p->s[i].kept);
}

/* Everything is over: the leader was reaped and both pipes reached EOF (or lingered too
 * long). Close what is left, build the result once, hand it to every waiter. */
static void finish(Proc *p)
{
    if (p->finished)
        return;
    p->finished = 1;
    p->phase = T_NONE;
    uv_timer_stop(&p->timer);
    close_handle(p, (uv_handle_t *)&p->timer);
    close_stdin(p);
    close_stream(p, &p->s[OUT]);
    close_stream(p, &p->s[ERR]);

    /* Lua allocates here, so it runs protected: no error may longjmp through libuv. */
    char what[64];
    snprintf(what, sizeof what, "process %d: cannot build its result", p->child.pid);
    if (ph_protect(build_result, p, what, NULL) != 0)
        p->result_failed = 1;
    free_streams(p);

    /* Wake, not resume: no Lua runs while we walk the list. */
    Waiter *w = p->waiters;
    p->waiters = NULL;
    while (w != NULL) {
        Waiter *next = w->next;
        ph_timer_free(&w->timer);
        lua_State *co = ph_task_thread(w->op.task);
        ph_task *t = w->op.task;
        int n = push_result(co, p, 0);
        free(w);
        ph_task_wake(t, n);
        w = next;
    }
}

/* ---- output ---------------------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    b->base = scratch;
    b->len = sizeof scratch;
}

/* One chunk of output for on_stdout / on_stderr. */
typedef struct {
    Proc *p;
    int which;
    const char *data;
    size_t len;
} Chunk;

/* Under ph_protect: on_stdout / on_stderr (a user value of the Process) gets the chunk. */
static void deliver_chunk(lua_State *L, void *ud)
{
    Chunk *c = ud;
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->p->ref);
    lua_getiuservalue(L, -1, c->which == OUT ? UVAL_ON_STDOUT : UVAL_ON_STDERR);
    lua_pushlstring(L, c->data, c->len);
    lua_call(L, 1, 0);
}

static void stream_done(Proc *p, Stream *s)
{
    close_stream(p, s);
    if (p->exited && !p->s[OUT].open && !p->s[ERR].open)
        finish(p);
}

static void no_sink(void *ud, const char *piece, size_t n)
{
    (void)ud;
    (void)piece;
    (void)n;
}

/* max_encoded: measure what was appended; at the first character whose cleaned, JSON-encoded
 * text would pass the budget, cut the kept bytes there and drop the rest of the stream. Raw
 * bytes that clean to more (0xFF: 3 bytes of U+FFFD each) are kept only as far as they can
 * ever be sent. Returns 1 when it cut. */
static int measure(Proc *p, Stream *s)
{
    ph_json_clip_result r;
    ph_json_clip(s->kept.p + s->sized, s->kept.len - s->sized, p->max_encoded - s->enc, 0, no_sink,
                 NULL, &r);
    s->sized += r.used;
    s->enc += r.size;
    if (!r.cut)
        return 0;
    s->kept.len = s->sized;
    s->full = 1;
    p->truncated = 1;
    return 1;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    Proc *p = stream->data;
    int which = (uv_pipe_t *)stream == &p->s[OUT].pipe ? OUT : ERR;
    Stream *s = &p->s[which];
    if (nread < 0) { /* EOF, or an error that ends the stream just the same */
        stream_done(p, s);
        return;
    }
    size_t n = (size_t)nread, keep = n;
    if (p->stream_only) { /* a duplex stream: it may carry gigabytes, none of them kept */
        if (s->has_callback && n > 0) {
            Chunk c = { p, which, buf->base, n };
            ph_protect(deliver_chunk, &c,
                       which == OUT ? "proc on_stdout callback failed"
                                    : "proc on_stderr callback failed",
                       NULL);
        }
        return;
    }
    if (s->full) {
        p->truncated |= n > 0;
        return;
    }
    if (s->kept.len + keep > p->max_output) {
        keep = p->max_output - s->kept.len;
        p->truncated = 1; /* the rest is dropped; the process keeps running */
    }
    if (keep == 0)
        return;
    size_t at = s->kept.len;
    if (ph_buf_append(&s->kept, buf->base, keep) != 0) {
        p->truncated = 1;
        return;
    }
    if (p->max_encoded > 0 && measure(p, s)) {
        keep = s->kept.len > at ? s->kept.len - at : 0;
        if (keep == 0)
            return;
    }
    if (s->has_callback) {
        Chunk c = { p, which, s->kept.p + at, keep };
        ph_protect(deliver_chunk, &c,
                   which == OUT ? "proc on_stdout callback failed"
                                : "proc on_stderr callback failed",
                   NULL);
    }
}

/* ---- input ------------------------------------------------------------------------------ */

static void on_written(uv_write_t *req, int status)
{
    Proc *p = req->data;
    /* Done (or the reader went away): close so the child sees EOF, and let the string go. */
    close_stdin(p);
    lua_State *L = ph_main_state();
    if (p->ref != LUA_NOREF && lua_checkstack(L, 2)) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref);
        lua_pushnil(L);
        lua_setiuservalue(L, -2, UVAL_STDIN);
        lua_pop(L, 1);
    }
}

/* A piece written by Process:write: the bytes live in C until libuv is done with them. */
typedef struct {
    uv_write_t req;
    Proc *proc;
    char data[];
} PieceReq;

static void on_piece_written(uv_write_t *req, int status)
{
    PieceReq *w = (PieceReq *)req;
    Proc *p = w->proc;
    free(w);
    p->in_pending--;
    if (status < 0)
        p->in_lost = 1; /* the last piece too: its bytes did not go */
    if (status < 0 || (p->in_pending == 0 && p->in_close_after))
        close_stdin(p); /* the reader went away, or every piece is out: EOF now */
    else
        wake_drainers(p);
}

/* ---- exit and timers ------------------------------------------------------------------- */

static void wake_canceled(Proc *p)
{
    Waiter *w = p->reapwait;
    p->reapwait = NULL;
    while (w != NULL) {
        Waiter *next = w->next;
        ph_task *t = w->op.task;
        free(w);
        ph_task_wake(t, ph_fail(ph_task_thread(t), "canceled", "wait for process %d canceled",
                                p->child.pid));
        w = next;
    }
}

/* The leader is gone: finish once both pipes reached EOF, or after linger (a background child
 * may hold them). Not while the output is paused: its bytes wait in the pipes for
 * resume_output. */
static void after_exit(Proc *p)
{
    if (!p->s[OUT].open && !p->s[ERR].open)
        finish(p);
    else if (p->paused)
        return;
    else if (p->linger > 0)
        arm_timer(p, T_LINGER, p->linger);
    else
        finish(p);
}

/* The leader was reaped (ph_child_exit_cb). */
static void leader_exited(PhChild *child, int64_t status, int sig)
{
    Proc *p = child->data;
    p->exited = 1;
    p->ended = ph_now();
    p->exit_status = status;
    p->term_signal = sig;
    close_leader(p);
    uv_timer_stop(&p->timer);
    p->phase = T_NONE;
    if (p->terminating)
        signal_group(p, SIGKILL); /* whatever the leader left behind goes with it */
    wake_canceled(p);
    after_exit(p);
}

static void on_timer(uv_timer_t *timer)
{
    Proc *p = timer->data;
    int phase = p->phase;
    p->phase = T_NONE;
    switch (phase) {
    case T_TIMEOUT:
        p->timed_out = 1;
        start_termination(p);
        break;
    case T_GRACE:
        signal_group(p, SIGKILL);
        break;
    case T_LINGER:
        finish(p);
        break;
    default:
        break;
    }
}

/* ---- waiting --------------------------------------------------------------------------- */

static void unlink_waiter(Waiter **head, Waiter *w)
{
    while (*head != NULL && *head != w)
        head = &(*head)->next;
    if (*head == w)
        *head = w->next;
}

/* The waiting task was canceled: terminate the group; resume once the leader is reaped. */
static void waiter_cancel(ph_op *op)
{
    Waiter *w = (Waiter *)op;
    Proc *p = w->proc;
    unlink_waiter(&p->waiters, w);
    ph_timer_free(&w->timer);
    if (p->exited) {
        if (!p->finished)
            signal_group(p, SIGKILL); /* leftovers holding the pipes */
        ph_task *t = op->task;
        free(w);
        ph_task_wake(t, ph_fail(ph_task_thread(t), "canceled", "wait for process %d canceled",
                                p->child.pid));
        return;
    }
    start_termination(p);
    w->next = p->reapwait;
    p->reapwait = w;
}

static void waiter_timeout(uv_timer_t *timer)
{
    Waiter *w = timer->data;
    Proc *p = w->proc;
    unlink_waiter(&p->waiters, w);
    ph_timer_free(&w->timer);
    ph_task *t = w->op.task;
    free(w);
    ph_task_resume(t, ph_fail(ph_task_thread(t), "timeout",
                              "wait for process %d timed out (it keeps running)", p->child.pid));
}

/* Park the current task on list (p->waiters or p->drainers) with its cancel and timeout
 * handlers. Tail call. */
static int park_on(lua_State *L, ph_task *t, Proc *p, double timeout, Waiter **list,
                   void (*cancel)(ph_op *), uv_timer_cb on_timeout)
{
    Waiter *w = calloc(1, sizeof *w);
    if (w == NULL)
        return ph_fail(L, "internal", "out of memory");
    w->op.cancel = cancel;
    w->proc = p;
    if (timeout >= 0) {
        if ((w->timer = ph_timer_new(w)) == NULL) {
            free(w);
            return ph_fail(L, "internal", "out of memory");
        }
        ph_timer_start(w->timer, on_timeout, timeout);
    }
    w->next = *list;
    *list = w;
    lua_settop(L, 0);
    return ph_task_park(L, t, &w->op);
}

/* Park the current task until p finishes. Tail call. */
static int park_waiter(lua_State *L, ph_task *t, Proc *p, double timeout)
{
    return park_on(L, t, p, timeout, &p->waiters, waiter_cancel, waiter_timeout);
}

/* The draining task was canceled: only the wait ends. Unlike wait's cancel the process is left
 * alone, and so are its queued pieces: the caller may drain again, or close it. */
static void drainer_cancel(ph_op *op)
{
    Waiter *d = (Waiter *)op;
    Proc *p = d->proc;
    unlink_waiter(&p->drainers, d);
    ph_timer_free(&d->timer);
    ph_task *t = op->task;
    free(d);
    ph_task_wake(
        t, ph_fail(ph_task_thread(t), "canceled", "drain of process %d canceled", p->child.pid));
}

static void drainer_timeout(uv_timer_t *timer)
{
    Waiter *d = timer->data;
    Proc *p = d->proc;
    unlink_waiter(&p->drainers, d);
    ph_timer_free(&d->timer);
    ph_task *t = d->op.task;
    free(d);
    ph_task_resume(t,
                   ph_fail(ph_task_thread(t), "timeout",
                           "drain of process %d timed out (its writes stay queued)", p->child.pid));
}

/* Drainers exist only while stdin is open, so the Process is anchored and never collected
 * under them, except by lua_close: no task runs after it, so they just go. */
static void free_drainers(Proc *p)
{
    Waiter *d = p->drainers;
    p->drainers = NULL;
    while (d != NULL) {
        Waiter *next = d->next;
        ph_timer_free(&d->timer);
        free(d);
        d = next;
    }
}

/* ---- spawning: argument checks ----------------------------------------------------------- */

/* The string at idx (which must be a string: numbers are misuse too), without NULs. */
static const char *check_cstring(lua_State *L, int idx, const char *what, size_t *len)
{
    if (lua_type(L, idx) != LUA_TSTRING)
        luaL_argerror(
            L, 1, lua_pushfstring(L, "%s must be a string, got %s", what, luaL_typename(L, idx)));
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    if (strlen(s) != n)
        luaL_argerror(L, 1, lua_pushfstring(L, "%s must not contain a NUL byte", what));
    if (len != NULL)
        *len = n;
    return s;
}

/* argv table at idx -> NULL-terminated array (a userdata left on the stack). The strings
 * stay alive in the table, which stays on the stack until the spawn is done. */
static char **build_argv(lua_State *L, int idx)
{
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    if (n < 1)
        luaL_argerror(L, 1, "field 'argv' must be a non-empty array of strings");
    if (n > 100000)
        luaL_argerror(L, 1, "field 'argv' has too many entries");
    char **args = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof *args, 0);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, i);
        char what[32];
        snprintf(what, sizeof what, "argv[%d]", (int)i);
        args[i - 1] = (char *)check_cstring(L, -1, what, NULL);
        lua_pop(L, 1);
    }
    args[n] = NULL;
    return args;
}

/* env table at idx -> NULL-terminated "K=V" array in one userdata left on the stack. */
static char **build_env(lua_State *L, int idx)
{
    size_t count = 0, bytes = 0;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        size_t kl, vl;
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_argerror(L, 1, "field 'env' keys must be strings");
        const char *k = check_cstring(L, -2, "an env key", &kl);
        if (kl == 0 || strchr(k, '=') != NULL)
            luaL_argerror(L, 1, lua_pushfstring(L, "env key '%s' is not a valid name", k));
        lua_pushfstring(L, "env value of '%s'", k);
        check_cstring(L, -2, lua_tostring(L, -1), &vl);
        lua_pop(L, 2);
        count++;
        bytes += kl + vl + 2;
    }
    char **envp = lua_newuserdatauv(L, (count + 1) * sizeof *envp + bytes, 0);
    char *at = (char *)(envp + count + 1);
    size_t i = 0;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        size_t kl, vl;
        const char *k = lua_tolstring(L, -2, &kl);
        const char *v = lua_tolstring(L, -1, &vl);
        envp[i++] = at;
        memcpy(at, k, kl);
        at[kl] = '=';
        memcpy(at + kl + 1, v, vl);
        at[kl + 1 + vl] = '\0';
        at += kl + vl + 2;
        lua_pop(L, 1);
    }
    envp[i] = NULL;
    return envp;
}

/* Codes for spawn failures: the command could not start because of what was asked
 * (missing or non-executable program, bad cwd) -> "exit", like a shell's 126/127; the
 * host ran out of something (processes, descriptors, memory) -> "io". */
static const char *spawn_code(int err)
{
    switch (err) {
    case UV_ENOENT:
    case UV_EACCES:
    case UV_ENOTDIR:
    case UV_ELOOP:
    case UV_ENAMETOOLONG:
    case UV_EPERM:
    case UV_EINVAL:
    case UV_E2BIG:
        return "exit";
    default:
        return "io";
    }
}

/* ---- spawning -------------------------------------------------------------------------- */

/* What proc.spawn was asked for, checked. Strings point into values left on the stack. */
typedef struct {
    char **args, **envp; /* userdata on the stack (build_argv, build_env); envp NULL: ours */
    const char *cwd;
    const char *in; /* stdin given as a string: written, then EOF */
    size_t in_len;
    int in_idx;                    /* its stack index */
    int in_pipe;                   /* stdin = true: written with Process:write */
    int cb_idx[2];                 /* stack indexes of on_stdout and on_stderr (nil when absent) */
    double timeout, grace, linger; /* timeout < 0: none */
    lua_Integer max_output, max_encoded;
    int stream_only; /* keep_output = false */
} SpawnConf;

/* stdin: a string, true, or nil; "" and nil mean /dev/null. Left on the stack. */
static void read_stdin(lua_State *L, SpawnConf *c)
{
    int t = lua_getfield(L, 1, "stdin");
    c->in_idx = lua_gettop(L);
    c->in_pipe = t == LUA_TBOOLEAN && lua_toboolean(L, c->in_idx);
    if (t != LUA_TNIL && t != LUA_TSTRING && !c->in_pipe)
        luaL_argerror(L, 1,
                      lua_pushfstring(L, "field 'stdin' must be a string, true or nil, got %s",
                                      luaL_typename(L, c->in_idx)));
    c->in = t == LUA_TSTRING ? lua_tolstring(L, c->in_idx, &c->in_len) : NULL;
    if (c->in == NULL)
        c->in_len = 0;
}

/* Validate opts at index 1: misuse raises here, before anything starts. */
static void read_spawn_conf(lua_State *L, SpawnConf *c)
{
    memset(c, 0, sizeof *c);
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    ph_opt_field(L, 1, "argv", LUA_TTABLE, 1);    /* 2 */
    c->args = build_argv(L, 2);                   /* 3 */
    if (ph_opt_field(L, 1, "env", LUA_TTABLE, 0)) /* 4 */
        c->envp = build_env(L, 4);                /* 5 when present */
    else
        lua_pushnil(L);
    if (ph_opt_field(L, 1, "cwd", LUA_TSTRING, 0)) /* 6 */
        c->cwd = check_cstring(L, -1, "field 'cwd'", NULL);
    read_stdin(L, c); /* 7 */
    for (int i = 0; i < 2; i++) {
        ph_opt_field(L, 1, i == OUT ? "on_stdout" : "on_stderr", LUA_TFUNCTION, 0);
        c->cb_idx[i] = lua_gettop(L);
    }
    c->timeout = -1;
    if (lua_getfield(L, 1, "timeout") != LUA_TNIL)
        c->timeout = ph_opt_seconds(L, 1, "timeout", 0, 0);
    lua_pop(L, 1);
    c->grace = ph_opt_seconds(L, 1, "kill_grace", DEFAULT_GRACE, 1);
    c->linger = ph_opt_seconds(L, 1, "linger", DEFAULT_LINGER, 1);
    c->max_output = ph_opt_integer(L, 1, "max_output", DEFAULT_MAX);
    luaL_argcheck(L, c->max_output >= 0, 1, "field 'max_output' must not be negative");
    c->max_encoded = ph_opt_integer(L, 1, "max_encoded", 0);
    luaL_argcheck(L, c->max_encoded >= 0, 1, "field 'max_encoded' must not be negative");
    if (ph_opt_field(L, 1, "keep_output", LUA_TBOOLEAN, 0))
        c->stream_only = !lua_toboolean(L, -1);
    lua_pop(L, 1);
}

/* Closed first: a zeroed Process with its metatable and user values, anchored, before any
 * handle exists. Left on the stack. */
static Proc *new_proc(lua_State *L, const SpawnConf *c)
{
    Proc *p = lua_newuserdatauv(L, sizeof *p, UVAL_COUNT);
    memset(p, 0, sizeof *p);
    p->ref = LUA_NOREF;
    ph_child_init(&p->child, leader_exited, p);
    luaL_setmetatable(L, PROC_MT);
    int pidx = lua_gettop(L);
    for (int i = 0; i < 2; i++) {
        if (!lua_isnil(L, c->cb_idx[i])) {
            lua_pushvalue(L, c->cb_idx[i]);
            lua_setiuservalue(L, pidx, i == OUT ? UVAL_ON_STDOUT : UVAL_ON_STDERR);
            p->s[i].has_callback = 1;
        }
    }
    if (c->in_len > 0) { /* the write reads the Lua string in place */
        lua_pushvalue(L, c->in_idx);
        lua_setiuservalue(L, pidx, UVAL_STDIN);
    }
    lua_pushvalue(L, pidx);
    p->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    p->timeout = c->timeout;
    p->grace = c->grace;
    p->linger = c->linger;
    p->max_output = (size_t)c->max_output;
    p->max_encoded = (size_t)c->max_encoded;
    p->stream_only = c->stream_only;
    return p;
}

/* The timer and the pipes. From here on nothing raises until they are set up or closed. */
static void init_handles(Proc *p, int want_in)
{
    uv_loop_t *loop = ph_loop();
    uv_timer_init(loop, &p->timer);
    p->timer.data = p;
    p->handles = 1;
    for (int i = 0; i < 2; i++) {
        uv_pipe_init(loop, &p->s[i].pipe, 0);
        p->s[i].pipe.data = p;
        p->s[i].open = 1;
        p->handles++;
    }
    if (want_in) {
        uv_pipe_init(loop, &p->in, 0);
        p->in.data = p;
        p->in_open = 1;
        p->handles++;
    }
}

/* The child did not start: close every handle, report why. */
static int spawn_failed(lua_State *L, Proc *p, const SpawnConf *c, int rc)
{
    p->closed = 1;
    close_leader(p);
    close_handle(p, (uv_handle_t *)&p->timer);
    close_stdin(p);
    close_stream(p, &p->s[OUT]);
    close_stream(p, &p->s[ERR]);
    if (c->cwd != NULL)
        return ph_fail(L, spawn_code(rc), "spawn %s: %s (cwd %s)", c->args[0], uv_strerror(rc),
                       c->cwd);
    return ph_fail(L, spawn_code(rc), "spawn %s: %s", c->args[0], uv_strerror(rc));
}

/* The child runs: read its output, write the stdin string, arm the timeout. */
static void start_io(Proc *p, const SpawnConf *c)
{
    p->spawned = 1;
    for (int i = 0; i < 2; i++)
        if (uv_read_start((uv_stream_t *)&p->s[i].pipe, on_alloc, on_read) != 0)
            close_stream(p, &p->s[i]);
    if (c->in_len > 0) {
        uv_buf_t b = uv_buf_init((char *)c->in, 0);
        b.len = c->in_len; /* uv_buf_init takes an unsigned int: set the size_t length here */
        p->write_req.data = p;
        if (uv_write(&p->write_req, (uv_stream_t *)&p->in, &b, 1, on_written) != 0)
            close_stdin(p);
    }
    if (c->timeout >= 0)
        arm_timer(p, T_TIMEOUT, c->timeout);
}

/* A slot for the child (ph_slots.c): 0 when it has one, else the spawn waits for its turn
 * and *parked is the tail call's result. turn: this is the second call of a spawn whose
 * first waited and was given a slot. */
static int take_slot(lua_State *L, int turn, double timeout, int *parked)
{
    ph_task *t = ph_task_of(L);
    if (turn) {
        if (t != NULL && ph_task_is_canceled(t)) {
            ph_slots_drop_granted();
            *parked = ph_fail(L, "canceled", "spawn canceled");
            return -1;
        }
        ph_slots_take_granted();
    } else if (!ph_slots_try_take()) {
        if (t == NULL)
            ph_slots_take_anyway(); /* not in a task: nothing can wait */
        else {
            *parked = ph_slots_park(L, t, timeout);
            return -1;
        }
    }
    return 0;
}

/* Validates opts at index 1 and starts the process; pushes the Process or nil, msg, code, or
 * parks the task until a slot is its own (then resumed with true: the caller calls again with
 * turn = true as argument 2). */
static int do_spawn(lua_State *L)
{
    SpawnConf c;
    int turn = lua_toboolean(L, 2);
    lua_settop(L, 1);
    read_spawn_conf(L, &c);
    int parked;
    if (take_slot(L, turn, c.timeout, &parked) != 0)
        return parked;
    Proc *p = new_proc(L, &c);
    p->slot = 1;
    int pidx = lua_gettop(L);
    int want_in = c.in_len > 0 || c.in_pipe; /* "" or nil: /dev/null */
    p->in_pipe = c.in_pipe;
    init_handles(p, want_in);

    PhSpawn o = {
        c.args, c.envp, c.cwd, want_in ? &p->in : NULL, { &p->s[OUT].pipe, &p->s[ERR].pipe }
    };
    p->started = ph_now();
    int rc = ph_spawn(&p->child, &o);
    if (p->child.watch != PH_WATCH_NONE)
        p->handles++; /* the leader's handle, initialised even when the spawn failed */
    if (rc != 0)
        return spawn_failed(L, p, &c, rc);
    start_io(p, &c);
    lua_settop(L, pidx);
    return 1;
}

/* ---- module functions ------------------------------------------------------------------ */

/* proc.spawn{argv=, env=, cwd=, stdin=, timeout=, kill_grace=, max_output=, linger=,
 *            on_stdout=, on_stderr=} -> Process | nil, msg, "exit"|"io" */
static int proc_spawn(lua_State *L)
{
    return do_spawn(L);
}

/* proc.run(opts) -> result | nil, msg, code: spawn, then wait (inside a task). */
static int proc_run(lua_State *L)
{
    ph_task *t = ph_task_current(L); /* misuse raises before anything starts */
    if (ph_task_is_canceled(t)) {
        if (lua_toboolean(L, 2))
            ph_slots_drop_granted();
        return ph_fail(L, "canceled", "run canceled");
    }
    int n = do_spawn(L);
    Proc *p = n == 1 ? luaL_testudata(L, -1, PROC_MT) : NULL;
    if (p == NULL)
        return n; /* failed, or parked for a slot */
    return park_waiter(L, t, p, -1);
}

/* ---- Process methods ------------------------------------------------------------------- */

/* The optional timeout argument of wait and drain: seconds, or -1 for none. */
static double opt_timeout(lua_State *L, int idx)
{
    if (lua_isnoneornil(L, idx))
        return -1;
    double timeout = luaL_checknumber(L, idx);
    luaL_argcheck(L, !isnan(timeout) && timeout >= 0 && timeout <= MAX_SECONDS, idx,
                  "timeout must be a number of seconds in [0, 1e9]");
    return timeout;
}

/* Process:wait([timeout]) -> result | nil, msg, "timeout"|"canceled"
 * A wait timeout only stops waiting; the process keeps running (it has its own timeout). */
static int process_wait(lua_State *L)
{
    Proc *p = check_open_proc(L, 1);
    double timeout = opt_timeout(L, 2);
    if (p->finished)
        return push_result(L, p, 1);
    ph_task *t = ph_task_current(L);
    return park_waiter(L, t, p, timeout);
}

/* Process:kill([signal = "SIGTERM"]) -> true | nil, msg, "closed"|"io": signal the group. */
static int process_kill(lua_State *L)
{
    Proc *p = check_open_proc(L, 1);
    const char *name = luaL_optstring(L, 2, "SIGTERM");
    int sig = ph_signal_number(name);
    if (sig < 0)
        return luaL_argerror(L, 2, lua_pushfstring(L, "unknown signal '%s'", name));
    if (p->exited)
        return ph_fail(L, "closed", "process %d has exited", p->child.pid);
    if (kill(-(pid_t)p->child.pid, sig) != 0)
        return ph_fail_errno(L, "io", errno, "kill(-%d, %s)", p->child.pid, name);
    lua_pushboolean(L, 1);
    return 1;
}

/* Process:write(data) -> true | nil, msg, "closed": queue data on the stdin pipe of a
 * process spawned with stdin = true. Never blocks; pieces arrive in order. */
static int process_write(lua_State *L)
{
    Proc *p = check_open_proc(L, 1);
    size_t n;
    const char *data = luaL_checklstring(L, 2, &n);
    if (!p->in_pipe)
        return luaL_error(L, "process %d has no stdin pipe (spawn it with stdin = true)",
                          p->child.pid);
    if (!p->in_open || p->in_close_after)
        return ph_fail(L, "closed", "stdin of process %d is closed", p->child.pid);
    if (n == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    PieceReq *w = malloc(sizeof *w + n);
    if (w == NULL)
        return ph_fail(L, "internal", "out of memory");
    w->proc = p;
    memcpy(w->data, data, n);
    uv_buf_t b = uv_buf_init(w->data, 0);
    b.len = n;
    int rc = uv_write(&w->req, (uv_stream_t *)&p->in, &b, 1, on_piece_written);
    if (rc != 0) {
        free(w);
        close_stdin(p);
        return ph_fail(L, "closed", "stdin of process %d: %s", p->child.pid, uv_strerror(rc));
    }
    p->in_pending++;
    lua_pushboolean(L, 1);
    return 1;
}

/* Process:drain([timeout]) -> true | nil, msg, "closed"|"timeout"|"canceled": back-pressure
 * for Process:write, which never waits. Parks the task until every piece written so far is in
 * the pipe (drainers are woken by on_piece_written and close_stdin); a timeout or a cancel
 * only ends the wait, the pieces stay queued and the process runs on. */
static int process_drain(lua_State *L)
{
    Proc *p = check_open_proc(L, 1);
    double timeout = opt_timeout(L, 2);
    if (!p->in_pipe)
        return luaL_error(L, "process %d has no stdin pipe (spawn it with stdin = true)",
                          p->child.pid);
    if (p->in_lost) /* also set when stdin closed with pieces pending */
        return ph_fail(L, "closed", "stdin of process %d closed before every written byte went",
                       p->child.pid);
    if (p->in_pending == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    ph_task *t = ph_task_current(L);
    return park_on(L, t, p, timeout, &p->drainers, drainer_cancel, drainer_timeout);
}

/* Process:close_stdin() -> true: EOF for the child once every queued piece is written. */
static int process_close_stdin(lua_State *L)
{
    Proc *p = check_open_proc(L, 1);
    if (p->in_pending > 0)
        p->in_close_after = 1;
    else
        close_stdin(p);
    lua_pushboolean(L, 1);
    return 1;
}

/* Process:terminate() -> true: SIGTERM to the group, SIGKILL after kill_grace. */
static int process_terminate(lua_State *L)
{
    start_termination(check_open_proc(L, 1));
    lua_pushboolean(L, 1);
    return 1;
}

/* Process:done() -> boolean: the result is ready. */
static int process_done(lua_State *L)
{
    lua_pushboolean(L, check_proc(L, 1)->finished);
    return 1;
}

/* Read the pipes again after pause_output; a leader that exited meanwhile gets its linger. */
static void resume_reads(Proc *p)
{
    if (!p->paused)
        return;
    p->paused = 0;
    for (int i = 0; i < 2; i++)
        if (p->s[i].open && uv_read_start((uv_stream_t *)&p->s[i].pipe, on_alloc, on_read) != 0)
            stream_done(p, &p->s[i]);
    /* exited meanwhile: what waited in the pipes is read first (linger 0 would drop it) */
    if (p->exited && !p->finished && p->phase == T_NONE)
        arm_timer(p, T_LINGER, p->linger > RESUME_LINGER ? p->linger : RESUME_LINGER);
}

/* Process:pause_output() -> true: stop reading its stdout and stderr until resume_output; the
 * process blocks once the pipes are full. Back-pressure for a consumer of on_stdout that cannot
 * keep up (a stream forwarded over a network). No-op once its output ended. */
static int process_pause_output(lua_State *L)
{
    Proc *p = check_open_proc(L, 1);
    if (p->spawned && !p->finished && !p->paused) {
        p->paused = 1;
        for (int i = 0; i < 2; i++)
            if (p->s[i].open)
                uv_read_stop((uv_stream_t *)&p->s[i].pipe);
        if (p->phase == T_LINGER) { /* no lingering over bytes still unread */
            uv_timer_stop(&p->timer);
            p->phase = T_NONE;
        }
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* Process:resume_output() -> true: read its output again (what waited comes in order). */
static int process_resume_output(lua_State *L)
{
    resume_reads(check_open_proc(L, 1));
    lua_pushboolean(L, 1);
    return 1;
}

/* Process:close(); also __close, and part of __gc, so idempotent. A running process is terminated
 * (TERM, then KILL after kill_grace); its handles stay alive, anchored, until it exits. */
static int process_close(lua_State *L)
{
    Proc *p = check_proc(L, 1);
    if (p->closed)
        return 0;
    p->closed = 1;
    resume_reads(p); /* paused output would keep it from ever finishing */
    start_termination(p);
    if (p->handles == 0)
        free_streams(p);
    return 0;
}

/* __gc: the object goes. Anchored while a handle is open, so normally every handle is closed
 * by now and its output freed by finish; but lua_close (busted's os.exit(code, true) at the
 * end of a run) collects it even while the process still runs: the output it kept so far goes
 * with it instead of leaking. No loop turn comes after lua_close to read into it again. */
static int process_gc(lua_State *L)
{
    process_close(L);
    Proc *p = check_proc(L, 1);
    free_streams(p);
    free_drainers(p);
    return 0;
}

static int process_tostring(lua_State *L)
{
    Proc *p = check_proc(L, 1);
    const char *state = p->finished ? "done" : p->exited ? "exited" : "running";
    lua_pushfstring(L, "%s (pid %d, %s%s): %p", PROC_MT, p->child.pid, state,
                    p->closed ? ", closed" : "", (void *)p);
    return 1;
}

/* Process.pid, or a method. */
static int process_index(lua_State *L)
{
    Proc *p = check_proc(L, 1);
    const char *key = lua_tostring(L, 2);
    if (key != NULL && strcmp(key, "pid") == 0) {
        lua_pushinteger(L, p->child.pid);
        return 1;
    }
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
    return 1;
}

/* proc._force_uv_spawn(on) -> previous setting, "posix_spawn" | "uv_spawn". Spec-only, not
 * part of the API: start processes with the uv_spawn fallback (used for good when the kernel
 * has no pidfd_open) so that the specs cover both ways; the second result is the way the
 * next process will start (uv_spawn also when pidfd_open is missing, as under valgrind). */
static int proc_force_uv_spawn(lua_State *L)
{
    lua_pushboolean(L, ph_spawn_force_uv(lua_toboolean(L, 1)));
    lua_pushstring(L, ph_spawn_way());
    return 2;
}

/* proc.signal_groups(signal) -> n: the signal to every process group started and not known
 * to be over (background children of finished commands too); n: how many it reached. For
 * the worker's way out, when nothing else may run on. */
static int proc_signal_groups(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    int sig = ph_signal_number(name);
    if (sig < 0)
        return luaL_argerror(L, 1, lua_pushfstring(L, "unknown signal '%s'", name));
    lua_pushinteger(L, ph_groups_signal_all(sig));
    return 1;
}

/* proc.max_children([n]) -> limit, running, waiting: the cap on children running at once (n
 * sets it; 0 restores the default from the open-files limit), the children holding a slot,
 * and the spawns waiting for one. */
static int proc_max_children(lua_State *L)
{
    if (!lua_isnoneornil(L, 1)) {
        lua_Integer n = luaL_checkinteger(L, 1);
        luaL_argcheck(L, n >= 0 && n <= 1000000, 1, "the limit must be 0 to 1000000");
        ph_slots_set_limit((int)n);
    }
    lua_pushinteger(L, ph_slots_limit());
    lua_pushinteger(L, ph_slots_used());
    lua_pushinteger(L, ph_slots_waiting());
    return 3;
}

/* proc.running_groups() -> n: the process groups started that still have a member. */
static int proc_running_groups(lua_State *L)
{
    lua_pushinteger(L, ph_groups_running());
    return 1;
}

/* proc.watchdog([grace = 1]) -> pid | nil, msg, "io": start the watchdog process that ends
 * every process group still running when this process is gone, however it ended (SIGTERM,
 * then SIGKILL after grace seconds); once per process. */
static int proc_watchdog(lua_State *L)
{
    double grace = luaL_optnumber(L, 1, 1.0);
    luaL_argcheck(L, grace >= 0 && grace <= 60, 1, "grace must be 0 to 60 seconds");
    int rc = ph_watchdog_start(grace);
    if (rc < 0)
        return ph_fail_errno(L, "io", -rc, "cannot start the watchdog");
    lua_pushinteger(L, ph_watchdog_pid());
    return 1;
}

static const luaL_Reg proc_funcs[] = {
    { "spawn", proc_spawn },
    { "signal_groups", proc_signal_groups },
    { "running_groups", proc_running_groups },
    { "max_children", proc_max_children },
    { "watchdog", proc_watchdog },
    { "run", proc_run },
    { "_force_uv_spawn", proc_force_uv_spawn },
    { NULL, NULL },
};

static const luaL_Reg process_methods[] = {
    { "wait", process_wait },
    { "kill", process_kill },
    { "terminate", process_terminate },
    { "done", process_done },
    { "close", process_close },
    { "write", process_write },
    { "close_stdin", process_close_stdin },
    { "drain", process_drain },
    { "pause_output", process_pause_output },
    { "resume_output", process_resume_output },
    { NULL, NULL },
};

static const luaL_Reg process_meta[] = {
    { "__gc", process_gc },
    { "__close", process_close },
    { "__tostring", process_tostring },
    { NULL, NULL },
};

int luaopen_host_core_proc(lua_State *L)
{
    if (luaL_newmetatable(L, PROC_MT)) { /* busted re-requires per spec file */
        luaL_setfuncs(L, process_meta, 0);
        luaL_newlib(L, process_methods);
        lua_pushcclosure(L, process_index, 1);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    luaL_newlib(L, proc_funcs);
    return 1;
}
