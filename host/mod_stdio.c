/* mod_stdio.c - host.core.stdio: NDJSON transport on fd 0/1, non-blocking, whole lines only. */
#include "ph.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define READ_CHUNK   (64 * 1024)
#define READ_AHEAD   (1024 * 1024)    /* stop reading stdin past this when nobody waits */
#define KEEP_CAP     (4 * READ_AHEAD) /* a buffer grown past this for a huge line shrinks back */
#define DEFAULT_LINE (256u * 1024 * 1024)
#define WRITE_BUFS   8 /* stdio.write's pieces kept on the C stack; more go in a userdata */

typedef struct {
    ph_op op;
    size_t max;
} ReadOp;

typedef struct DrainOp {
    ph_op op;
    struct DrainOp *next;
    uv_timer_t *timer;
} DrainOp;

/* A queued write: a userdata whose user values are the strings it writes, anchored in the
 * registry (ref) until libuv is done, so the bytes are never copied and never move. */
typedef struct {
    uv_write_t req;
    int ref;
    size_t len; /* bytes still to write, counted in io.queued */
} WriteReq;

static struct {
    int ready;
    /* input */
    uv_stream_t *in; /* pipe or tty; NULL for a regular file or nothing */
    int in_fd_file;  /* stdin is a regular file: read it with uv_fs_read */
    uv_fs_t fs_req;
    int fs_busy;
    int reading;
    PhBuf buf;      /* what was read; unread bytes are buf.p[start .. buf.len) */
    size_t start;   /* bytes at the front already taken */
    size_t scanned; /* bytes from start known to hold no '\n' */
    int eof;
    int in_error;
    int discarding; /* inside an overlong line: drop bytes up to its '\n' */
    ReadOp *reader;
    /* output */
    uv_stream_t *out; /* pipe or tty; NULL: plain blocking writes */
    size_t queued;
    int out_closed;
    DrainOp *drainers;
} io;

static void want_input(void);

static uv_stream_t *open_stream(int fd, int readable)
{
    uv_handle_type type = uv_guess_handle(fd);
    if (type == UV_NAMED_PIPE) {
        uv_pipe_t *p = malloc(sizeof *p);
        if (p == NULL || uv_pipe_init(ph_loop(), p, 0) != 0 || uv_pipe_open(p, fd) != 0) {
            free(p);
            return NULL;
        }
        return (uv_stream_t *)p;
    }
    if (type == UV_TTY) {
        uv_tty_t *t = malloc(sizeof *t);
        if (t == NULL || uv_tty_init(ph_loop(), t, fd, readable) != 0) {
            free(t);
            return NULL;
        }
        return (uv_stream_t *)t;
    }
    return NULL;
}

static void stdio_init(void)
{
    if (io.ready)
        return;
    io.ready = 1;
    uv_handle_type type = uv_guess_handle(STDIN_FILENO);
    if (type == UV_FILE)
        io.in_fd_file = 1;
    else if ((io.in = open_stream(STDIN_FILENO, 1)) == NULL)
        io.eof = 1; /* closed or unusable stdin reads as end of input */
    io.out = open_stream(STDOUT_FILENO, 0);
}

/* ---- reading --------------------------------------------------------------------------- */

/* Room for extra more bytes after the input. The bytes already taken are dropped from the
 * front first when they fill half the buffer or stand in the way, so a reader that keeps up
 * never makes the buffer grow. */
static int reserve(size_t extra)
{
    if (io.start > 0 && (io.start >= io.buf.cap / 2 || io.buf.cap - io.buf.len < extra)) {
        ph_buf_consume(&io.buf, io.start);
        io.start = 0;
    }
    /* It starts at two chunks: room to read one while part of a line waits for its end. */
    return ph_buf_reserve(&io.buf, io.buf.cap == 0 ? 2 * READ_CHUNK : extra);
}

/* After a huge line the buffer that held it goes back to a small one (the unread rest moves
 * along), so one big request does not keep its size allocated for the worker's lifetime.
 * Never while a file read writes into it. */
static void shrink_buffer(void)
{
    size_t left = io.buf.len - io.start;
    if (io.buf.cap <= KEEP_CAP || left > KEEP_CAP / 2 || io.fs_busy)
        return;
    PhBuf small = { 0 };
    if (ph_buf_reserve(&small, left > 2 * READ_CHUNK ? left : 2 * READ_CHUNK) != 0)
        return; /* no memory for the small one: keep the big one */
    ph_buf_append(&small, io.buf.p + io.start, left);
    ph_buf_free(&io.buf);
    io.buf = small;
    io.start = 0;
}

/* Drop discarded bytes (the tail of an overlong line) from the buffer. */
static void skip_discarded(void)
{
    if (!io.discarding)
        return;
    char *nl = memchr(io.buf.p + io.start, '\n', io.buf.len - io.start);
    if (nl == NULL) {
        io.start = io.buf.len = io.scanned = 0;
        return;
    }
    io.start = (size_t)(nl - io.buf.p) + 1;
    io.scanned = 0;
    io.discarding = 0;
}

/* Try to answer a read_line now: pushes its results on L and returns their count, or
 * returns -1 when the caller must wait for more input. */
static int take_line(lua_State *L, size_t max)
{
    skip_discarded();
    size_t avail = io.buf.len - io.start;
    if (io.buf.p == NULL && !io.eof && !io.in_error)
        return -1; /* nothing read yet (and no buffer to point into) */
    char *from = io.buf.p != NULL ? io.buf.p + io.start : NULL;
    char *nl = avail > io.scanned ? memchr(from + io.scanned, '\n', avail - io.scanned) : NULL;
    if (nl != NULL) {
        size_t n = (size_t)(nl - from);
        io.start += n + 1;
        io.scanned = 0;
        if (n > max)
            return ph_fail(L, "protocol", "input line too long (%d bytes, limit %d)", (int)n,
                           (int)max);
        lua_pushlstring(L, from, n);
        shrink_buffer();
        return 1;
    }
    io.scanned = avail;
    if (avail > max) {
        io.discarding = 1;
        io.start = io.buf.len = io.scanned = 0;
        shrink_buffer();
        return ph_fail(L, "protocol", "input line too long (over %d bytes)", (int)max);
    }
    if (io.eof || io.in_error) {
        if (avail > 0) { /* a last line without its newline still counts */
            lua_pushlstring(L, from, avail);
            io.start = io.buf.len = io.scanned = 0;
            return 1;
        }
        if (io.in_error)
            return ph_fail(L, "io", "stdin read failed");
        return ph_fail(L, "closed", "stdin closed");
    }
    return -1;
}

static void input_arrived(void)
{
    if (io.reader != NULL) {
        ReadOp *r = io.reader;
        lua_State *co = ph_task_thread(r->op.task);
        int n = take_line(co, r->max);
        if (n >= 0) {
            io.reader = NULL;
            ph_task_resume(r->op.task, n);
            free(r);
        }
    }
    want_input();
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    if (reserve(READ_CHUNK) != 0) {
        b->base = NULL;
        b->len = 0;
        return;
    }
    b->base = io.buf.p + io.buf.len;
    b->len = io.buf.cap - io.buf.len;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    if (n > 0)
        io.buf.len += (size_t)n;
    else if (n == UV_EOF)
        io.eof = 1;
    else if (n < 0)
        io.in_error = 1;
    if (n < 0 && io.reading) {
        uv_read_stop(s);
        io.reading = 0;
    }
    input_arrived();
}

static void on_fs_read(uv_fs_t *req)
{
    ssize_t n = req->result;
    uv_fs_req_cleanup(req);
    io.fs_busy = 0;
    if (n > 0)
        io.buf.len += (size_t)n;
    else if (n == 0)
        io.eof = 1;
    else
        io.in_error = 1;
    input_arrived();
}

/* Keep stdin flowing while someone waits or the read-ahead is small; stop otherwise. */
static void want_input(void)
{
    if (io.eof || io.in_error)
        return;
    int want = io.reader != NULL || io.buf.len - io.start < READ_AHEAD;
    if (io.in_fd_file) {
        if (want && !io.fs_busy && reserve(READ_CHUNK) == 0) {
            uv_buf_t b = uv_buf_init(io.buf.p + io.buf.len, (unsigned)(io.buf.cap - io.buf.len));
            io.fs_busy = 1;
            uv_fs_read(ph_loop(), &io.fs_req, STDIN_FILENO, &b, 1, -1, on_fs_read);
        }
        return;
    }
    if (io.in == NULL)
        return;
    if (want && !io.reading) {
        if (uv_read_start(io.in, on_alloc, on_read) == 0)
            io.reading = 1;
        else
            io.in_error = 1;
    } else if (!want && io.reading) {
        uv_read_stop(io.in);
        io.reading = 0;
    }
}

static void read_cancel(ph_op *op)
{
    ph_task *t = op->task;
    if (io.reader == (ReadOp *)op)
        io.reader = NULL;
    free(op);
    ph_task_wake(t, ph_fail(ph_task_thread(t), "canceled", "read canceled"));
}

/* stdio.read_line([max_bytes]) -> line (without "\n") | nil, msg, "closed"|"protocol"|"io"
 * An overlong line fails once with "protocol" and is skipped; reading goes on after it. */
static int stdio_read_line(lua_State *L)
{
    lua_Integer max = luaL_optinteger(L, 1, DEFAULT_LINE);
    luaL_argcheck(L, max > 0, 1, "max_bytes must be positive");
    ph_task *t = ph_task_current(L);
    stdio_init();
    if (io.reader != NULL)
        return ph_fail(L, "busy", "stdin already has a reader");
    if (ph_task_is_canceled(t))
        return ph_fail(L, "canceled", "read canceled");
    int n = take_line(L, (size_t)max);
    if (n >= 0)
        return n;
    ReadOp *r = calloc(1, sizeof *r);
    if (r == NULL)
        return ph_fail(L, "internal", "out of memory");
    r->op.cancel = read_cancel;
    r->max = (size_t)max;
    io.reader = r;
    want_input();
    lua_settop(L, 0);
    return ph_task_park(L, t, &r->op);
}

/* ---- writing --------------------------------------------------------------------------- */

static void drainers_finish(int ok)
{
    DrainOp *d = io.drainers;
    io.drainers = NULL;
    while (d != NULL) {
        DrainOp *next = d->next;
        ph_task *t = d->op.task;
        ph_timer_free(&d->timer);
        lua_State *co = ph_task_thread(t);
        int n = 1;
        if (ok)
            lua_pushboolean(co, 1);
        else
            n = ph_fail(co, "closed", "stdout closed");
        free(d);
        ph_task_wake(t, n);
        d = next;
    }
}

static void out_failed(void)
{
    io.out_closed = 1;
    drainers_finish(0);
}

static void on_written(uv_write_t *req, int status)
{
    WriteReq *w = (WriteReq *)req;
    io.queued -= w->len;
    /* No Lua runs here: this only lets the userdata and its strings be collected. */
    luaL_unref(ph_main_state(), LUA_REGISTRYINDEX, w->ref);
    if (status < 0 && !io.out_closed)
        out_failed();
    else if (io.queued == 0)
        drainers_finish(1);
}

static int write_blocking(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDOUT_FILENO, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* No stream on stdout (a regular file, say): plain blocking writes. */
static int write_direct(lua_State *L, int nargs)
{
    for (int i = 1; i <= nargs; i++) {
        size_t n;
        const char *s = lua_tolstring(L, i, &n);
        if (write_blocking(s, n) != 0) {
            int err = errno;
            out_failed();
            return ph_fail_errno(L, "closed", err, "stdout write failed");
        }
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* Queue what the kernel did not take (done bytes of bufs were written) with uv_write. The
 * strings (arguments 1..nargs) stay as they are: a WriteReq userdata holds the ones still to
 * write as its user values, anchored until on_written. 0, or a libuv error. */
static int queue_rest(lua_State *L, uv_buf_t *bufs, int nargs, size_t done)
{
    int first = 0; /* skip what the kernel took: whole buffers, then part of one */
    while (done >= bufs[first].len) {
        done -= bufs[first].len;
        first++;
    }
    bufs[first].base += done;
    bufs[first].len -= done;
    WriteReq *req = lua_newuserdatauv(L, sizeof *req, nargs - first);
    for (int i = first + 1; i <= nargs; i++) {
        lua_pushvalue(L, i);
        lua_setiuservalue(L, -2, i - first);
    }
    req->len = 0;
    for (int i = first; i < nargs; i++)
        req->len += bufs[i].len;
    req->ref = luaL_ref(L, LUA_REGISTRYINDEX); /* before uv_write: luaL_ref may raise */
    int rc = uv_write(&req->req, io.out, bufs + first, (unsigned)(nargs - first), on_written);
    if (rc != 0) {
        luaL_unref(L, LUA_REGISTRYINDEX, req->ref);
        return rc;
    }
    io.queued += req->len;
    return 0;
}

/* stdio.write(s, ...) -> true | nil, msg, "closed": queues the strings, in order, as one
 * unit (a line and its "\n" need no concatenation); never interleaves with other writes and
 * never blocks the loop. The strings are not copied: the queue holds on to them until the
 * kernel has taken their bytes, so a 32 MiB reply costs no second 32 MiB. */
static int stdio_write(lua_State *L)
{
    int nargs = lua_gettop(L);
    size_t total = 0;
    luaL_checkstring(L, 1);
    for (int i = 1; i <= nargs; i++) {
        size_t n;
        luaL_checklstring(L, i, &n);
        total += n;
    }
    stdio_init();
    if (io.out_closed)
        return ph_fail(L, "closed", "stdout closed");
    if (total == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    if (io.out == NULL)
        return write_direct(L, nargs);
    /* Only for this call: uv_write copies the array (not the bytes). */
    uv_buf_t small[WRITE_BUFS], *bufs = small;
    if (nargs > WRITE_BUFS)
        bufs = lua_newuserdatauv(L, (size_t)nargs * sizeof *bufs, 0);
    for (int i = 1; i <= nargs; i++) {
        size_t n;
        const char *s = lua_tolstring(L, i, &n);
        bufs[i - 1] = uv_buf_init((char *)s, (unsigned)n);
    }
    int rc = 0;
    size_t done = 0;
    if (io.queued == 0) { /* nothing ahead of us: try to write it straight away */
        int w = uv_try_write(io.out, bufs, (unsigned)nargs);
        if (w > 0)
            done = (size_t)w;
        else if (w < 0 && w != UV_EAGAIN)
            rc = w;
    }
    if (rc == 0 && done < total)
        rc = queue_rest(L, bufs, nargs, done);
    if (rc != 0) {
        out_failed();
        return ph_fail(L, "closed", "stdout write failed: %s", uv_strerror(rc));
    }
    lua_pushboolean(L, 1);
    return 1;
}

static void drain_cancel(ph_op *op)
{
    DrainOp **pp = &io.drainers;
    while (*pp != NULL && *pp != (DrainOp *)op)
        pp = &(*pp)->next;
    if (*pp != NULL)
        *pp = (*pp)->next;
    DrainOp *d = (DrainOp *)op;
    ph_timer_free(&d->timer);
    ph_task *t = op->task;
    free(d);
    ph_task_wake(t, ph_fail(ph_task_thread(t), "canceled", "drain canceled"));
}

static void drain_timeout(uv_timer_t *timer)
{
    DrainOp *d = timer->data;
    DrainOp **pp = &io.drainers;
    while (*pp != NULL && *pp != d)
        pp = &(*pp)->next;
    if (*pp != NULL)
        *pp = d->next;
    ph_timer_free(&d->timer);
    ph_task *t = d->op.task;
    free(d);
    ph_task_resume(t, ph_fail(ph_task_thread(t), "timeout", "stdout drain timed out"));
}

/* stdio.drain([timeout]) -> true | nil, msg, "timeout"|"closed": wait until every queued
 * byte reached the kernel. */
static int stdio_drain(lua_State *L)
{
    double timeout = luaL_optnumber(L, 1, 10.0);
    luaL_argcheck(L, timeout >= 0 && timeout < 1e9, 1, "timeout out of range");
    ph_task *t = ph_task_current(L);
    stdio_init();
    if (io.out_closed)
        return ph_fail(L, "closed", "stdout closed");
    if (io.queued == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    DrainOp *d = calloc(1, sizeof *d);
    if (d == NULL || (d->timer = ph_timer_new(d)) == NULL) {
        free(d);
        return ph_fail(L, "internal", "out of memory");
    }
    d->op.cancel = drain_cancel;
    ph_timer_start(d->timer, drain_timeout, timeout);
    d->next = io.drainers;
    io.drainers = d;
    lua_settop(L, 0);
    return ph_task_park(L, t, &d->op);
}

/* stdio.queued() -> bytes written but not yet taken by the kernel */
static int stdio_queued(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)io.queued);
    return 1;
}

/* stdio.out_closed() -> true when stdout can take nothing more: a write failed (EPIPE, say), or
 * its reader is gone (a pipe whose read end closed polls as an error, with nothing written).
 * Never blocks: a worker that writes nothing for a while still learns its host is gone. */
static int stdio_out_closed(lua_State *L)
{
    stdio_init();
    if (!io.out_closed) {
        struct pollfd p = { .fd = STDOUT_FILENO, .events = 0 };
        if (poll(&p, 1, 0) == 1 && (p.revents & (POLLERR | POLLHUP | POLLNVAL)) != 0)
            out_failed();
    }
    lua_pushboolean(L, io.out_closed);
    return 1;
}

/* stdio.close_input(): stop reading stdin for good (shutdown). */
static int stdio_close_input(lua_State *L)
{
    stdio_init();
    if (io.in != NULL && io.reading) {
        uv_read_stop(io.in);
        io.reading = 0;
    }
    io.eof = 1;
    if (io.reader != NULL) { /* whoever waits learns that input is over */
        ReadOp *r = io.reader;
        io.reader = NULL;
        ph_task *t = r->op.task;
        free(r);
        ph_task_wake(t, take_line(ph_task_thread(t), DEFAULT_LINE));
    }
    return 0;
}

static const luaL_Reg stdio_funcs[] = {
    { "read_line", stdio_read_line },
    { "write", stdio_write },
    { "drain", stdio_drain },
    { "queued", stdio_queued },
    { "close_input", stdio_close_input },
    { "out_closed", stdio_out_closed },
    { NULL, NULL },
};

int luaopen_host_core_stdio(lua_State *L)
{
    luaL_newlib(L, stdio_funcs);
    return 1;
}
