/* mod_http_server.c - host.core.http's server: http.serve{...} on the strict parser of
 * ph_http_parse.c, every request its own task.
 *
 * A connection reads one request (head and whole body, within head_timeout), runs the handler
 * as a task, writes the response, then takes the next request: pipelined requests are answered
 * in order because the next one is parsed only after the previous response was queued. Memory
 * per connection is bounded: input beyond max_head + READ_CHUNK is left in the kernel, a body
 * is at most max_body, and res:write waits while more than WRITE_HIGH bytes are queued. */
#include "ph.h"
#include "ph_http.h"
#include "ph_http_parse.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SERVER_MT   "host.http.Server"
#define RESPONSE_MT "host.http.ServerResponse"

#define DEFAULT_IDLE_TIMEOUT 30.0
#define DEFAULT_HEAD_TIMEOUT 30.0
#define READ_CHUNK           65536
#define WRITE_HIGH           (64 * 1024) /* res:write waits while more than this is queued */
#define LINGER_MS            2000        /* after our last byte, drain the peer this long */
#define BACKLOG              511

/* ---- types ---------------------------------------------------------------------------- */

typedef struct Server Server;
typedef struct Conn Conn;

struct Server {
    uv_tcp_t tcp;
    int listening;   /* accepting; 0 once closed */
    int handle_open; /* tcp not yet closed */
    int ud_alive;    /* its Lua userdata exists */
    int self_ref;    /* anchors the userdata while listening */
    int handler_ref;
    int port;
    size_t max_head, max_headers, max_body;
    uint64_t idle_ms, head_ms;
    Conn *conns; /* every Conn not yet freed (they point here) */
    int nconns;
    lua_Integer accepted, open, requests;
};

typedef struct {
    Server *srv; /* NULL until listening was attempted */
} ServerUd;

enum { ST_HEAD, ST_BODY, ST_HANDLING, ST_CLOSING };
enum { TM_NONE, TM_IDLE, TM_HEAD, TM_LINGER };

typedef struct {
    ph_op op;
    Conn *c;
} WaitOp;

typedef struct {
    Conn *c;       /* NULL once the handler ended */
    int aborted;   /* res:abort(): nothing more is sent, the connection closes */
    int started;   /* the head is queued */
    int finished;  /* the body is complete */
    int chunked;   /* body framing: chunked */
    int no_body;   /* HEAD, 204, 304: nothing after the head */
    long long len; /* a declared Content-Length, or -1 */
    long long sent;
} Response;

struct Conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shutdown;
    Server *srv;
    Conn *next, *prev;
    int refs; /* open handles (tcp, timer) + 1 while a handler runs */
    int state;
    int timer_mode;
    int closed;  /* handles are closing: nothing more is read or written */
    int reading; /* uv_read_start is active */
    int peer_eof;
    int lingering;
    PhBuf in; /* received, not yet parsed */
    PhHttpRequest req;
    int req_ref; /* the request table, between its head and its body */
    int keep_alive, minor, is_head, close_after;
    int expect, sent_continue;
    PhHttpBody framing; /* the body being read: Content-Length or chunked */
    PhBuf body;
    ph_task *task; /* the running handler */
    Response *res;
    size_t queued; /* bytes handed to uv_write, not yet written */
    WaitOp wait;
    int waiting; /* a task waits in res:write */
    char remote[64];
    int remote_port;
};

typedef struct {
    uv_write_t req;
    Conn *c;
    size_t len;
    char data[];
} WriteReq;

/* ---- servers and connections: lifetime ------------------------------------------------ */

static void server_maybe_free(Server *srv)
{
    if (!srv->handle_open && !srv->ud_alive && srv->nconns == 0)
        free(srv);
}

static void conn_unref(Conn *c)
{
    if (--c->refs > 0)
        return;
    Server *srv = c->srv;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    srv->nconns--;
    ph_buf_free(&c->in);
    ph_buf_free(&c->body);
    free(c);
    server_maybe_free(srv);
}

static void conn_handle_closed(uv_handle_t *h)
{
    conn_unref(h->data);
}

static void wake_writer(Conn *c, int ok)
{
    if (!c->waiting)
        return;
    c->waiting = 0;
    ph_task *t = c->wait.op.task;
    lua_State *co = ph_task_thread(t);
    int n = 1;
    if (ok)
        lua_pushboolean(co, 1);
    else
        n = ph_fail(co, "closed", "http: client connection closed");
    ph_task_wake(t, n);
}

/* Close now: pending writes are dropped, a waiting writer learns "closed". */
static void conn_close(Conn *c)
{
    if (c->closed)
        return;
    c->closed = 1;
    c->state = ST_CLOSING;
    c->srv->open--;
    if (c->req_ref != LUA_NOREF) {
        luaL_unref(ph_main_state(), LUA_REGISTRYINDEX, c->req_ref);
        c->req_ref = LUA_NOREF;
    }
    wake_writer(c, 0);
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
}

static size_t in_limit(Conn *c)
{
    return c->srv->max_head + READ_CHUNK;
}

static void conn_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);

static void conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    Conn *c = h->data;
    if (c->lingering) /* read and discard */
        c->in.len = 0;
    size_t limit = in_limit(c), room = c->in.len < limit ? limit - c->in.len : 0;
    if (room > READ_CHUNK)
        room = READ_CHUNK;
    if (room == 0 || ph_buf_reserve(&c->in, room) != 0) {
        b->base = NULL;
        b->len = 0;
        return;
    }
    b->base = c->in.p + c->in.len;
    b->len = room;
}

/* Read while there is room; a full buffer leaves further bytes in the kernel. */
static void conn_update_reading(Conn *c)
{
    int want = !c->closed && !c->peer_eof && (c->lingering || c->in.len < in_limit(c));
    if (want && !c->reading) {
        if (uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_on_read) == 0)
            c->reading = 1;
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
    }
}

static void conn_timer_fired(uv_timer_t *tm);

static void conn_timer(Conn *c, int mode, uint64_t ms)
{
    if (c->timer_mode == mode)
        return;
    c->timer_mode = mode;
    if (mode == TM_NONE)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, conn_timer_fired, ms, 0);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    Conn *c = req->data;
    if (c->closed)
        return;
    if (status < 0 || c->peer_eof) {
        conn_close(c);
        return;
    }
    /* Closing with unread input makes the kernel send RST, which can destroy the response
     * before the client reads it (say, a 413 while it is still sending): drain a while. */
    c->lingering = 1;
    c->in.len = 0;
    conn_timer(c, TM_LINGER, LINGER_MS);
    conn_update_reading(c);
}

/* Close after everything queued was written. */
static void conn_shutdown(Conn *c)
{
    if (c->closed || c->state == ST_CLOSING)
        return;
    c->state = ST_CLOSING;
    conn_timer(c, TM_NONE, 0);
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
        conn_close(c);
}

/* ---- writing ---------------------------------------------------------------------------- */

static void on_written(uv_write_t *req, int status)
{
    WriteReq *w = (WriteReq *)req;
    Conn *c = w->c;
    c->queued -= w->len;
    free(w);
    if (status < 0) {
        conn_close(c); /* no-op when the close caused this (UV_ECANCELED) */
        return;
    }
    if (c->waiting && c->queued <= WRITE_HIGH)
        wake_writer(c, 1);
}

/* Queue bufs in order. Writes at once what the kernel takes; copies the rest. -1: closed. */
static int conn_send(Conn *c, uv_buf_t *bufs, int nbufs)
{
    if (c->closed)
        return -1;
    size_t total = 0, done = 0;
    for (int i = 0; i < nbufs; i++)
        total += bufs[i].len;
    if (total == 0)
        return 0;
    if (c->queued == 0) {
        int w = uv_try_write((uv_stream_t *)&c->tcp, bufs, (unsigned)nbufs);
        if (w > 0)
            done = (size_t)w;
        else if (w < 0 && w != UV_EAGAIN) {
            conn_close(c);
            return -1;
        }
    }
    if (done == total)
        return 0;
    WriteReq *req = malloc(sizeof *req + (total - done));
    if (req == NULL) {
        conn_close(c);
        return -1;
    }
    req->c = c;
    req->len = total - done;
    size_t off = 0, skip = done;
    for (int i = 0; i < nbufs; i++) {
        size_t l = bufs[i].len;
        if (skip >= l) {
            skip -= l;
            continue;
        }
        memcpy(req->data + off, bufs[i].base + skip, l - skip);
        off += l - skip;
        skip = 0;
    }
    uv_buf_t b = uv_buf_init(req->data, (unsigned)req->len);
    if (uv_write(&req->req, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0) {
        free(req);
        conn_close(c);
        return -1;
    }
    c->queued += req->len;
    return 0;
}

static int conn_send1(Conn *c, const char *p, size_t n)
{
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    return conn_send(c, &b, 1);
}

/* A request we refuse: a short plain-text answer, then close. */
static void conn_error(Conn *c, int status)
{
    char msg[512];
    const char *reason = ph_http_reason(status);
    int body = snprintf(msg, sizeof msg, "%d %s\n", status, reason);
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                     "Connection: close\r\n\r\n",
                     status, reason, body);
    uv_buf_t b[2] = { uv_buf_init(head, (unsigned)n), uv_buf_init(msg, (unsigned)body) };
    if (c->req_ref != LUA_NOREF) {
        luaL_unref(ph_main_state(), LUA_REGISTRYINDEX, c->req_ref);
        c->req_ref = LUA_NOREF;
    }
    if (conn_send(c, b, 2) == 0)
        conn_shutdown(c);
}

static void conn_timer_fired(uv_timer_t *tm)
{
    Conn *c = tm->data;
    int mode = c->timer_mode;
    c->timer_mode = TM_NONE;
    if (mode == TM_HEAD)
        conn_error(c, 408);
    else
        conn_close(c); /* idle keep-alive connection, or the linger is over */
}

/* ---- reading requests --------------------------------------------------------------------- */

static void push_lower(lua_State *L, const char *s, size_t n)
{
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, n);
    for (size_t i = 0; i < n; i++)
        p[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] + 32) : s[i];
    luaL_pushresultsize(&b, n);
}

/* The fields of the request table: headers (lowercase names, repeated fields joined with
 * ", ") and header_list ({name, value} as sent, in order). */
static void push_headers(lua_State *L, const PhHttpRequest *r)
{
    lua_createtable(L, 0, (int)r->num_headers); /* headers */
    lua_createtable(L, (int)r->num_headers, 0); /* header_list */
    for (size_t i = 0; i < r->num_headers; i++) {
        const PhHttpHeader *h = &r->headers[i];
        lua_createtable(L, 2, 0);
        lua_pushlstring(L, h->name, h->name_len);
        lua_rawseti(L, -2, 1);
        lua_pushlstring(L, h->value, h->value_len);
        lua_rawseti(L, -2, 2);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
        push_lower(L, h->name, h->name_len);
        lua_pushvalue(L, -1);
        if (lua_rawget(L, -4) == LUA_TSTRING) { /* repeated: join with ", " */
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, h->value, h->value_len);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, h->value, h->value_len);
        }
        lua_rawset(L, -4);
    }
    lua_setfield(L, -3, "header_list");
    lua_setfield(L, -2, "headers");
}

/* Under ph_protect: the request table, anchored in c->req_ref until its body is read. */
static void push_request(lua_State *L, void *ud)
{
    Conn *c = ud;
    const PhHttpRequest *r = &c->req;
    lua_createtable(L, 0, 12);
    lua_pushlstring(L, r->method, r->method_len);
    lua_setfield(L, -2, "method");
    lua_pushlstring(L, r->target, r->target_len);
    lua_setfield(L, -2, "target");
    const char *q = memchr(r->target, '?', r->target_len);
    size_t plen = q != NULL ? (size_t)(q - r->target) : r->target_len;
    lua_pushlstring(L, r->target, plen);
    lua_setfield(L, -2, "path");
    if (q != NULL) {
        lua_pushlstring(L, q + 1, r->target_len - plen - 1);
        lua_setfield(L, -2, "query");
    }
    lua_pushstring(L, r->minor_version == 1 ? "1.1" : "1.0");
    lua_setfield(L, -2, "version");
    push_headers(L, r);
    lua_pushstring(L, c->remote);
    lua_setfield(L, -2, "remote_addr");
    lua_pushinteger(L, c->remote_port);
    lua_setfield(L, -2, "remote_port");
    c->req_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* The head is parsed (rc bytes): build the request table, set up the body. */
static int head_complete(Conn *c, int rc)
{
    PhHttpRequest *r = &c->req;
    if (ph_protect(push_request, c, "http: cannot take a request", NULL) != 0)
        return -500;
    c->keep_alive = r->keep_alive;
    c->minor = r->minor_version;
    c->is_head = r->method_len == 4 && memcmp(r->method, "HEAD", 4) == 0;
    c->close_after = 0;
    c->expect = r->expect_continue;
    c->sent_continue = 0;
    c->body.len = 0;
    ph_http_body_init(&c->framing, r, c->srv->max_body, c->srv->max_head);
    /* the parser held a Content-Length to max_body: take its memory at once */
    if (!r->chunked && r->content_length > 0 &&
        ph_buf_reserve(&c->body, (size_t)r->content_length) != 0)
        return -500;
    ph_buf_consume(&c->in, (size_t)rc);
    return 0;
}

/* Move body bytes from the input: 1 complete, 0 more needed, < 0 minus a status. */
static int body_feed(Conn *c)
{
    size_t used = 0, made = 0;
    int rc = ph_http_body_feed(&c->framing, c->in.p, c->in.len, &used, &made);
    if (made > 0 && ph_buf_append(&c->body, c->in.p, made) != 0)
        return -500;
    ph_buf_consume(&c->in, used);
    return rc;
}

static int handler_trampoline(lua_State *L);

/* What start_handler made. */
typedef struct {
    Conn *c;
    Response *res;
    ph_task *task;
} HandlerStart;

/* Under ph_protect: the handler's task, started with handler_trampoline(handler, req, res);
 * the request table gets its body. */
static void start_handler(lua_State *L, void *ud)
{
    HandlerStart *hs = ud;
    Conn *c = hs->c;
    lua_pushcfunction(L, handler_trampoline);
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->srv->handler_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->req_ref);
    lua_pushlstring(L, c->body.p != NULL ? c->body.p : "", c->body.len);
    lua_setfield(L, -2, "body");
    Response *res = lua_newuserdatauv(L, sizeof *res, 0);
    memset(res, 0, sizeof *res);
    res->c = c;
    res->len = -1;
    luaL_setmetatable(L, RESPONSE_MT);
    hs->res = res;
    hs->task = ph_task_spawn(L, 3); /* its handle is dropped with the call's stack */
}

static int spawn_handler(Conn *c)
{
    HandlerStart hs = { c, NULL, NULL };
    if (ph_protect(start_handler, &hs, "http: cannot start a request handler", NULL) != 0)
        return -500;
    luaL_unref(ph_main_state(), LUA_REGISTRYINDEX, c->req_ref);
    c->req_ref = LUA_NOREF;
    if (c->body.cap > READ_CHUNK) /* do not keep a large body's memory for the next request */
        ph_buf_free(&c->body);
    c->body.len = 0;
    c->res = hs.res;
    c->task = hs.task;
    c->refs++; /* released when the handler ends */
    c->state = ST_HANDLING;
    conn_timer(c, TM_NONE, 0);
    c->srv->requests++;
    return 0;
}

/* Parse and dispatch what is buffered, as far as it goes. */
static void conn_process(Conn *c)
{
    while (!c->closed && c->state != ST_CLOSING) {
        if (c->state == ST_HEAD) {
            if (c->in.len == 0) {
                conn_timer(c, TM_IDLE, c->srv->idle_ms);
                break;
            }
            conn_timer(c, TM_HEAD, c->srv->head_ms);
            int rc = ph_http_parse_head(&c->req, c->in.p, c->in.len);
            if (rc == 0)
                break;
            if (rc < 0) {
                conn_error(c, -rc);
                return;
            }
            rc = head_complete(c, rc);
            if (rc < 0) {
                conn_error(c, -rc);
                return;
            }
            c->state = ST_BODY;
        }
        if (c->state == ST_BODY) {
            int rc = body_feed(c);
            if (rc < 0) {
                conn_error(c, -rc);
                return;
            }
            if (rc == 0) {
                if (c->expect && !c->sent_continue) {
                    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                    c->sent_continue = 1;
                    conn_send1(c, cont, sizeof cont - 1);
                }
                break;
            }
            rc = spawn_handler(c);
            if (rc < 0) {
                conn_error(c, -rc);
                return;
            }
        }
        break; /* ST_HANDLING: the handler's end calls us again */
    }
    conn_update_reading(c);
}

static void conn_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    Conn *c = s->data;
    if (n == 0 || c->closed)
        return;
    if (n == UV_ENOBUFS) { /* no room: leave the bytes in the kernel for now */
        uv_read_stop(s);
        c->reading = 0;
        return;
    }
    if (n < 0 && n != UV_EOF) { /* reset: the client is gone */
        conn_close(c);
        return;
    }
    if (c->lingering) {
        c->in.len = 0;
        if (n == UV_EOF)
            conn_close(c);
        return;
    }
    if (n == UV_EOF) {
        c->peer_eof = 1;
        uv_read_stop(s);
        c->reading = 0;
        /* Between requests or inside an incomplete one, nobody is left to answer. A client
         * that half-closed after a whole request still gets its response. */
        if (c->state == ST_HEAD || c->state == ST_BODY)
            conn_close(c);
        return;
    }
    c->in.len += (size_t)n;
    if (c->state != ST_HANDLING && c->state != ST_CLOSING)
        conn_process(c);
    else
        conn_update_reading(c);
}

/* No memory for a connection: accept it and drop it, or libuv stops accepting altogether. */
static void accept_and_drop(uv_stream_t *listener)
{
    uv_tcp_t *tmp = malloc(sizeof *tmp);
    if (tmp != NULL && uv_tcp_init(ph_loop(), tmp) == 0) {
        uv_accept(listener, (uv_stream_t *)tmp);
        uv_close((uv_handle_t *)tmp, ph_handle_free);
    } else {
        free(tmp);
    }
}

/* The client's address and port, for req.remote_addr and req.remote_port. */
static void conn_peer(Conn *c)
{
    struct sockaddr_storage sa;
    int salen = sizeof sa;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&sa, &salen) != 0)
        return;
    if (sa.ss_family == AF_INET6) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&sa;
        uv_ip6_name(a6, c->remote, sizeof c->remote);
        c->remote_port = ntohs(a6->sin6_port);
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)&sa;
        uv_ip4_name(a4, c->remote, sizeof c->remote);
        c->remote_port = ntohs(a4->sin_port);
    }
}

static void on_connection(uv_stream_t *listener, int status)
{
    Server *srv = listener->data;
    if (status < 0 || !srv->listening)
        return;
    Conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        accept_and_drop(listener);
        return;
    }
    uv_tcp_init(ph_loop(), &c->tcp);
    c->tcp.data = c;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        uv_close((uv_handle_t *)&c->tcp, ph_handle_free); /* c starts with the handle */
        return;
    }
    uv_timer_init(ph_loop(), &c->timer);
    c->timer.data = c;
    c->refs = 2;
    c->srv = srv;
    c->req_ref = LUA_NOREF;
    c->req.max_head = srv->max_head;
    c->req.max_headers = srv->max_headers;
    c->req.max_body = srv->max_body;
    c->next = srv->conns;
    if (srv->conns != NULL)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    srv->accepted++;
    srv->open++;
    uv_tcp_nodelay(&c->tcp, 1);
    conn_peer(c);
    c->state = ST_HEAD;
    conn_process(c);
}

/* ---- the handler task ------------------------------------------------------------------- */

/* Append "Name: value\r\n" for each field of the table at idx. Framing fields are ours:
 * Content-Length is returned in *len (when allow_length), Transfer-Encoding dropped,
 * Connection noted in *close. Returns 0, or -1 with a message in err. */
static int add_line(PhBuf *out, const char *name, size_t nlen, const char *v, size_t vlen,
                    long long *len, int allow_length, int *close, char *err, size_t errlen)
{
    if (!ph_http_value_ok(v, vlen)) {
        snprintf(err, errlen, "header '%s' holds CR, LF or NUL", name);
        return -1;
    }
    if (nlen == 14 && strncasecmp(name, "content-length", 14) == 0) {
        if (!allow_length)
            return 0;
        long long x = 0;
        if (vlen == 0 || vlen > 15)
            goto bad_length;
        for (size_t i = 0; i < vlen; i++) {
            if (v[i] < '0' || v[i] > '9')
                goto bad_length;
            x = x * 10 + (v[i] - '0');
        }
        *len = x;
        return 0;
    bad_length:
        snprintf(err, errlen, "header 'content-length' must be a number of bytes");
        return -1;
    }
    if (nlen == 17 && strncasecmp(name, "transfer-encoding", 17) == 0)
        return 0;
    if (nlen == 10 && strncasecmp(name, "connection", 10) == 0) {
        for (size_t i = 0; i + 5 <= vlen; i++)
            if (strncasecmp(v + i, "close", 5) == 0)
                *close = 1;
        return 0;
    }
    if (ph_buf_append(out, name, nlen) || ph_buf_append(out, ": ", 2) ||
        ph_buf_append(out, v, vlen) || ph_buf_append(out, "\r\n", 2)) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

static int add_headers(lua_State *L, int idx, PhBuf *out, long long *len, int allow_length,
                       int *close, char *err, size_t errlen)
{
    idx = lua_absindex(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        size_t nlen, vlen;
        if (lua_type(L, -2) != LUA_TSTRING) {
            lua_pop(L, 2);
            snprintf(err, errlen, "header names must be strings");
            return -1;
        }
        const char *name = lua_tolstring(L, -2, &nlen);
        if (!ph_http_token_ok(name, nlen)) {
            snprintf(err, errlen, "header name '%.80s' is not an HTTP token", name);
            lua_pop(L, 2);
            return -1;
        }
        int rc = 0;
        if (lua_type(L, -1) == LUA_TTABLE) { /* several fields with one name */
            lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
            for (lua_Integer i = 1; i <= n && rc == 0; i++) {
                int t = lua_rawgeti(L, -1, i);
                if (t != LUA_TSTRING && t != LUA_TNUMBER) {
                    snprintf(err, errlen, "header '%.80s' values must be strings", name);
                    rc = -1;
                } else {
                    const char *v = lua_tolstring(L, -1, &vlen);
                    rc = add_line(out, name, nlen, v, vlen, len, allow_length, close, err, errlen);
                }
                lua_pop(L, 1);
            }
        } else if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER) {
            const char *v = lua_tolstring(L, -1, &vlen);
            rc = add_line(out, name, nlen, v, vlen, len, allow_length, close, err, errlen);
        } else {
            snprintf(err, errlen, "header '%.80s' must be a string, got %s", name,
                     luaL_typename(L, -1));
            rc = -1;
        }
        if (rc != 0) {
            lua_pop(L, 2);
            return -1;
        }
        lua_pop(L, 1);
    }
    return 0;
}

static int status_has_body(int status)
{
    return status != 204 && status != 304 && status >= 200;
}

/* Build and queue a response head. body_len >= 0: a whole body of that size follows (or none
 * for HEAD); -1: streamed (res:start). Returns 0, -1 bad arguments (err set), -2 closed. */
static int send_head(lua_State *L, Conn *c, Response *res, int status, int hidx, long long body_len,
                     char *err, size_t errlen)
{
    PhBuf head = { 0 };
    int close = 0;
    long long len = -1;
    char line[128];
    int n = snprintf(line, sizeof line, "HTTP/1.1 %d %s\r\n", status, ph_http_reason(status));
    int rc = ph_buf_append(&head, line, (size_t)n);
    if (rc == 0 && hidx != 0 && !lua_isnil(L, hidx))
        rc = add_headers(L, hidx, &head, &len, body_len < 0, &close, err, errlen);
    if (rc != 0) {
        ph_buf_free(&head);
        return -1;
    }
    res->no_body = c->is_head || !status_has_body(status);
    if (body_len >= 0) {
        len = body_len;
    } else if (len < 0 && status_has_body(status)) {
        if (c->minor == 1)
            res->chunked = 1;
        else
            close = 1; /* an HTTP/1.0 client: the body ends when the connection does */
    }
    res->len = len;
    if (res->chunked)
        n = snprintf(line, sizeof line, "Transfer-Encoding: chunked\r\n");
    else if (len >= 0 && status_has_body(status))
        n = snprintf(line, sizeof line, "Content-Length: %lld\r\n", len);
    else
        n = 0;
    rc = ph_buf_append(&head, line, (size_t)n);
    if (close || !c->keep_alive || c->peer_eof || !c->srv->listening) {
        c->close_after = 1;
        rc = rc || ph_buf_append(&head, "Connection: close\r\n", 19);
    } else if (c->minor == 0) {
        rc = rc || ph_buf_append(&head, "Connection: keep-alive\r\n", 24);
    }
    rc = rc || ph_buf_append(&head, "\r\n", 2);
    if (rc != 0) {
        ph_buf_free(&head);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    res->started = 1;
    rc = conn_send1(c, head.p, head.len);
    ph_buf_free(&head);
    return rc == 0 ? 0 : -2;
}

/* The body is complete: the chunked terminator, or a short body that spoils the connection. */
static int finish_body(Conn *c, Response *res)
{
    if (res->finished)
        return 0;
    res->finished = 1;
    if (res->no_body)
        return c->closed ? -1 : 0;
    if (res->chunked)
        return conn_send1(c, "0\r\n\r\n", 5);
    if (res->len >= 0 && res->sent < res->len)
        c->close_after = 1; /* the client still waits for bytes that will never come */
    return c->closed ? -1 : 0;
}

static int send_whole(lua_State *L, Conn *c, Response *res, int status, int hidx, int bidx,
                      char *err, size_t errlen)
{
    size_t blen = 0;
    const char *body = NULL;
    if (bidx != 0 && !lua_isnil(L, bidx)) {
        if (lua_type(L, bidx) != LUA_TSTRING) {
            snprintf(err, errlen, "the body must be a string, got %s", luaL_typename(L, bidx));
            return -1;
        }
        body = lua_tolstring(L, bidx, &blen);
    }
    int rc = send_head(L, c, res, status, hidx, (long long)blen, err, errlen);
    if (rc != 0)
        return rc;
    if (!res->no_body && blen > 0)
        rc = conn_send1(c, body, blen);
    res->sent = (long long)blen;
    res->finished = 1;
    return rc == 0 ? 0 : -2;
}

static void send_500(Conn *c, Response *res)
{
    if (c->closed)
        return;
    if (res->started) { /* too late for a status: cut the response short */
        conn_close(c);
        return;
    }
    static const char msg[] = "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
                              "Content-Length: 26\r\n\r\n500 Internal Server Error\n";
    res->started = res->finished = 1;
    conn_send1(c, msg, sizeof msg - 1);
}

/* The request is answered: the next one, or close. */
static void conn_request_done(Conn *c)
{
    if (c->closed || c->state == ST_CLOSING)
        return;
    if (c->close_after || !c->keep_alive || c->peer_eof || !c->srv->listening) {
        conn_shutdown(c);
        return;
    }
    c->state = ST_HEAD;
    conn_process(c);
}

/* The error value res:abort() raises to end its handler: this key's address, as a light
 * userdata, which no Lua code can make. */
static const char abort_key = 'a';

static int is_abort(lua_State *L, int idx)
{
    return lua_touserdata(L, idx) == (void *)&abort_key;
}

/* After handler(req, res) returned (status is LUA_OK or LUA_YIELD) or raised. Never raises:
 * it runs outside the protected call, and the connection must always move on. */
static int handler_done(lua_State *L, int status, lua_KContext ctx)
{
    Response *res = lua_touserdata(L, 1);
    Conn *c = res->c;
    char err[256] = "";
    if (res->aborted) {
        /* res:abort() closed the connection on purpose: nothing more is sent, and its own
         * unwinding is no failure. An error raised after it (say, the abort was caught by a
         * pcall in the handler) is still reported. */
        if (status != LUA_OK && status != LUA_YIELD && !is_abort(L, -1)) {
            const char *msg = lua_tostring(L, -1);
            ph_diag("provider-host: http handler failed: %s", msg ? msg : "(error object)");
        }
    } else if (status != LUA_OK && status != LUA_YIELD) {
        const char *msg = lua_tostring(L, -1);
        ph_diag("provider-host: http handler failed: %s", msg ? msg : "(error object)");
        send_500(c, res);
    } else if (res->started) {
        if (finish_body(c, res) != 0)
            conn_close(c);
    } else if (c->closed) {
        /* nobody to answer */
    } else if (lua_type(L, 3) != LUA_TNUMBER || !lua_isinteger(L, 3) || lua_tointeger(L, 3) < 200 ||
               lua_tointeger(L, 3) > 999) {
        if (lua_isnil(L, 3) && lua_type(L, 4) == LUA_TSTRING)
            ph_diag("provider-host: http handler failed: %s", lua_tostring(L, 4));
        else
            ph_diag("provider-host: http handler must return a status (200-999), got %s",
                    lua_gettop(L) >= 3 ? luaL_typename(L, 3) : "nothing");
        send_500(c, res);
    } else {
        int top = lua_gettop(L);
        int hidx = top >= 4 ? 4 : 0, bidx = top >= 5 ? 5 : 0;
        if (hidx != 0 && !lua_isnil(L, hidx) && !lua_istable(L, hidx)) {
            snprintf(err, sizeof err, "headers must be a table, got %s", luaL_typename(L, hidx));
        } else {
            int rc = send_whole(L, c, res, (int)lua_tointeger(L, 3), hidx, bidx, err, sizeof err);
            if (rc == -2)
                conn_close(c);
            else if (rc == 0)
                err[0] = '\0';
        }
        if (err[0] != '\0') {
            ph_diag("provider-host: http handler returned a bad response: %s", err);
            send_500(c, res);
        }
    }
    res->c = NULL;
    c->res = NULL;
    c->task = NULL;
    conn_request_done(c);
    conn_unref(c);
    return 0;
}

/* Message handler for the handler's pcall: res:abort()'s unwinding passes through as is (it is
 * no error and gets no traceback); anything else gets one. */
static int handler_msgh(lua_State *L)
{
    if (is_abort(L, 1))
        return 1;
    return ph_traceback(L);
}

/* The task body: handler(req, res) under a yieldable pcall, then the response. */
static int handler_trampoline(lua_State *L)
{
    /* handler req res -> res msgh handler req res */
    lua_pushvalue(L, 3);
    lua_insert(L, 1);
    lua_pushcfunction(L, handler_msgh);
    lua_insert(L, 2);
    int status = lua_pcallk(L, 2, LUA_MULTRET, 2, 0, handler_done);
    return handler_done(L, status, 0);
}

/* ---- res: the handler's side -------------------------------------------------------------- */

static Response *check_res(lua_State *L)
{
    Response *res = luaL_checkudata(L, 1, RESPONSE_MT);
    if (res->c == NULL)
        luaL_error(L, "http: the response is over (the handler returned)");
    return res;
}

/* After res:abort(), start, write and finish fail as they do once the client is gone. */
static int res_aborted(lua_State *L)
{
    return ph_fail(L, "closed", "http: the response was aborted");
}

/* res:start(status [, headers]) -> true | nil, msg, "closed"
 * Chunked unless headers give a content-length (or the client speaks HTTP/1.0). */
static int res_start(lua_State *L)
{
    Response *res = check_res(L);
    lua_Integer status = luaL_checkinteger(L, 2);
    luaL_argcheck(L, status >= 200 && status <= 999, 2, "status must be in 200..999");
    if (!lua_isnoneornil(L, 3))
        luaL_checktype(L, 3, LUA_TTABLE);
    if (res->aborted)
        return res_aborted(L);
    if (res->started)
        return luaL_error(L, "http: res:start called twice");
    Conn *c = res->c;
    if (c->closed)
        return ph_fail(L, "closed", "http: client connection closed");
    char err[256];
    int rc = send_head(L, c, res, (int)status, lua_isnoneornil(L, 3) ? 0 : 3, -1, err, sizeof err);
    if (rc == -1)
        return luaL_error(L, "http: res:start: %s", err);
    if (rc == -2)
        return ph_fail(L, "closed", "http: client connection closed");
    lua_pushboolean(L, 1);
    return 1;
}

static void wait_cancel(ph_op *op)
{
    WaitOp *w = (WaitOp *)op;
    ph_task *t = op->task;
    w->c->waiting = 0;
    ph_task_wake(t, ph_fail(ph_task_thread(t), "canceled", "http: write canceled"));
}

/* res:write(chunk) -> true | nil, msg, "closed": waits while the client is slow to read. */
static int res_write(lua_State *L)
{
    Response *res = check_res(L);
    size_t n;
    const char *p = luaL_checklstring(L, 2, &n);
    if (res->aborted)
        return res_aborted(L);
    if (!res->started)
        return luaL_error(L, "http: res:write before res:start");
    if (res->finished)
        return luaL_error(L, "http: res:write after res:finish");
    Conn *c = res->c;
    if (c->closed)
        return ph_fail(L, "closed", "http: client connection closed");
    if (res->len >= 0 && res->sent + (long long)n > res->len)
        return luaL_error(L, "http: res:write: more than the content-length (%I bytes)",
                          (LUAI_UACINT)res->len);
    ph_task *t = ph_task_current(L);
    if (n > 0 && !res->no_body) {
        int rc;
        if (res->chunked) {
            char size[24];
            int sl = snprintf(size, sizeof size, "%zx\r\n", n);
            uv_buf_t b[3] = { uv_buf_init(size, (unsigned)sl), uv_buf_init((char *)p, (unsigned)n),
                              uv_buf_init("\r\n", 2) };
            rc = conn_send(c, b, 3);
        } else {
            rc = conn_send1(c, p, n);
        }
        if (rc != 0)
            return ph_fail(L, "closed", "http: client connection closed");
    }
    res->sent += (long long)n;
    if (c->queued <= WRITE_HIGH) {
        lua_pushboolean(L, 1);
        return 1;
    }
    if (c->waiting)
        return ph_fail(L, "busy", "http: another task is writing this response");
    if (ph_task_is_canceled(t))
        return ph_fail(L, "canceled", "http: write canceled");
    c->waiting = 1;
    c->wait.c = c;
    c->wait.op.cancel = wait_cancel;
    lua_settop(L, 1);
    return ph_task_park(L, t, &c->wait.op);
}

/* res:finish() -> true | nil, msg, "closed" */
static int res_finish(lua_State *L)
{
    Response *res = check_res(L);
    if (res->aborted)
        return res_aborted(L);
    if (!res->started)
        return luaL_error(L, "http: res:finish before res:start");
    Conn *c = res->c;
    if (finish_body(c, res) != 0)
        return ph_fail(L, "closed", "http: client connection closed");
    lua_pushboolean(L, 1);
    return 1;
}

/* res:abort(): play a server that lost its answer. No response is sent, or, after res:start,
 * the rest of it is not: what was already written still goes out (the client sees the head and
 * a body cut short), then the connection is closed without a chunked terminator and before any
 * promised Content-Length is reached. Called from the handler's own task it does not return:
 * it ends the handler, quietly (no 500, no traceback). */
static int res_abort(lua_State *L)
{
    Response *res = check_res(L);
    Conn *c = res->c;
    if (!res->aborted) {
        res->aborted = 1;
        /* Drop the connection as a whole: no keep-alive, no next request. A shutdown rather
         * than an immediate close so that the bytes already written are not thrown away
         * (uv_close would cancel them) and the peer sees a FIN, not a reset that could
         * destroy what it has not read yet. */
        c->close_after = 1;
        wake_writer(c, 0); /* a task parked in res:write learns "closed" */
        conn_shutdown(c);
        /* The shutdown waits for queued writes; a client that stops reading gets a reset
         * after this long instead of holding the connection until the server closes. */
        if (!c->closed)
            conn_timer(c, TM_LINGER, LINGER_MS);
    }
    if (c->task != NULL && ph_task_thread(c->task) == L) {
        lua_pushlightuserdata(L, (void *)&abort_key);
        return lua_error(L);
    }
    return 0;
}

/* ---- Server ---------------------------------------------------------------------------------- */

static void server_handle_closed(uv_handle_t *h)
{
    Server *srv = h->data;
    srv->handle_open = 0;
    server_maybe_free(srv);
}

static Server *check_server(lua_State *L)
{
    ServerUd *ud = luaL_checkudata(L, 1, SERVER_MT);
    if (ud->srv == NULL)
        luaL_error(L, "http: server not started");
    return ud->srv;
}

/* server:close(): stop listening, close every connection, cancel running handlers. */
static int server_close(lua_State *L)
{
    Server *srv = check_server(L);
    if (!srv->listening)
        return 0;
    srv->listening = 0;
    uv_close((uv_handle_t *)&srv->tcp, server_handle_closed);
    for (Conn *c = srv->conns; c != NULL; c = c->next) {
        if (c->task != NULL)
            ph_task_cancel(c->task);
        conn_close(c);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, srv->handler_ref);
    srv->handler_ref = LUA_NOREF;
    luaL_unref(L, LUA_REGISTRYINDEX, srv->self_ref); /* collectable from now on */
    srv->self_ref = LUA_NOREF;
    return 0;
}

static int server_gc(lua_State *L)
{
    ServerUd *ud = luaL_checkudata(L, 1, SERVER_MT);
    if (ud->srv != NULL) {
        ud->srv->ud_alive = 0;
        server_maybe_free(ud->srv);
        ud->srv = NULL;
    }
    return 0;
}

/* server:stats() -> {accepted=, open=, requests=} */
static int server_stats(lua_State *L)
{
    Server *srv = check_server(L);
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, srv->accepted);
    lua_setfield(L, -2, "accepted");
    lua_pushinteger(L, srv->open);
    lua_setfield(L, -2, "open");
    lua_pushinteger(L, srv->requests);
    lua_setfield(L, -2, "requests");
    return 1;
}

/* Methods first; then server.port and server.url. */
static int server_index(lua_State *L)
{
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL)
        return 1;
    ServerUd *ud = luaL_checkudata(L, 1, SERVER_MT);
    const char *k = lua_tostring(L, 2);
    if (ud->srv == NULL || k == NULL)
        return 0;
    if (strcmp(k, "port") == 0) {
        lua_pushinteger(L, ud->srv->port);
        return 1;
    }
    if (strcmp(k, "url") == 0) {
        lua_getiuservalue(L, 1, 1); /* the host */
        lua_pushfstring(L, "http://%s:%d", lua_tostring(L, -1), ud->srv->port);
        return 1;
    }
    return 0;
}

static int server_tostring(lua_State *L)
{
    ServerUd *ud = luaL_checkudata(L, 1, SERVER_MT);
    if (ud->srv == NULL)
        lua_pushliteral(L, "host.http.Server (not started)");
    else
        lua_pushfstring(L, "host.http.Server (port %d%s): %p", ud->srv->port,
                        ud->srv->listening ? "" : ", closed", (void *)ud);
    return 1;
}

/* Bind and listen; srv->port is the port bound (port 0 picks a free one). 0, or a libuv
 * error, and then the handle is closing. */
static int server_listen(Server *srv, const struct sockaddr_storage *sa)
{
    uv_tcp_init(ph_loop(), &srv->tcp);
    srv->tcp.data = srv;
    srv->handle_open = 1;
    int rc = uv_tcp_bind(&srv->tcp, (const struct sockaddr *)sa, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&srv->tcp, BACKLOG, on_connection);
    if (rc != 0) {
        uv_close((uv_handle_t *)&srv->tcp, server_handle_closed);
        return rc;
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    uv_tcp_getsockname(&srv->tcp, (struct sockaddr *)&bound, &blen);
    srv->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                  : ((struct sockaddr_in *)&bound)->sin_port);
    srv->listening = 1;
    return 0;
}

/* http.serve{handler=, host=, port=, max_head=, max_headers=, max_body=, idle_timeout=,
 *            head_timeout=} -> Server | nil, msg, code */
static int http_serve(lua_State *L)
{
    const char *fname = "http.serve";
    if (lua_type(L, 1) != LUA_TTABLE)
        ph_argerror_in(L, fname, "table expected, got %s", luaL_typename(L, 1));
    lua_settop(L, 1);
    if (lua_getfield(L, 1, "handler") != LUA_TFUNCTION) /* index 2 */
        ph_argerror_in(L, fname, "field 'handler' must be a function");
    int t = lua_getfield(L, 1, "host"); /* index 3 */
    if (t != LUA_TNIL && t != LUA_TSTRING)
        ph_argerror_in(L, fname, "field 'host' must be a string");
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        lua_pushliteral(L, "127.0.0.1");
    }
    const char *host = lua_tostring(L, 3);
    int port = (int)ph_opt_integer_in(L, fname, "port", 0, 0, 65535);
    size_t max_head = (size_t)ph_opt_integer_in(L, fname, "max_head", PH_HTTP_DEFAULT_MAX_HEAD, 256,
                                                16 * 1024 * 1024);
    size_t max_headers = (size_t)ph_opt_integer_in(L, fname, "max_headers", PH_HTTP_MAX_HEADERS, 1,
                                                   PH_HTTP_MAX_HEADERS);
    size_t max_body = (size_t)ph_opt_integer_in(L, fname, "max_body", PH_HTTP_DEFAULT_MAX_BODY, 1,
                                                (lua_Integer)1 << 40);
    double idle = ph_opt_seconds_in(L, fname, "idle_timeout", DEFAULT_IDLE_TIMEOUT, 0);
    double head = ph_opt_seconds_in(L, fname, "head_timeout", DEFAULT_HEAD_TIMEOUT, 0);
    struct sockaddr_storage sa;
    if (ph_ip_addr(host, port, &sa) != 0)
        ph_argerror_in(L, fname, "field 'host' must be an IP address or localhost, got '%s'", host);

    ServerUd *ud = lua_newuserdatauv(L, sizeof *ud, 1); /* closed first: index 4 */
    ud->srv = NULL;
    luaL_setmetatable(L, SERVER_MT);
    lua_pushvalue(L, 3);
    lua_setiuservalue(L, 4, 1);
    Server *srv = calloc(1, sizeof *srv);
    if (srv == NULL)
        return ph_fail(L, "internal", "http: out of memory");
    ud->srv = srv;
    srv->ud_alive = 1;
    srv->handler_ref = srv->self_ref = LUA_NOREF;
    srv->max_head = max_head;
    srv->max_headers = max_headers;
    srv->max_body = max_body;
    srv->idle_ms = ph_ms(idle);
    srv->head_ms = ph_ms(head);
    int rc = server_listen(srv, &sa);
    if (rc != 0)
        return ph_fail(L, "io", "http: cannot listen on %s:%d: %s", host, port, uv_strerror(rc));
    lua_pushvalue(L, 2);
    srv->handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, 4);
    srv->self_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* a listening server is never collected */
    lua_settop(L, 4);
    return 1;
}

/* ---- registration --------------------------------------------------------------------------- */

static const luaL_Reg res_methods[] = {
    { "start", res_start }, { "write", res_write }, { "finish", res_finish },
    { "abort", res_abort }, { NULL, NULL },
};

static const luaL_Reg server_methods[] = {
    { "close", server_close },
    { "stats", server_stats },
    { NULL, NULL },
};

static const luaL_Reg server_funcs[] = {
    { "serve", http_serve },
    { NULL, NULL },
};

void ph_http_server_open(lua_State *L)
{
    if (luaL_newmetatable(L, SERVER_MT)) {
        luaL_newlib(L, server_methods);
        lua_pushcclosure(L, server_index, 1);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, server_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, server_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, RESPONSE_MT)) {
        luaL_newlib(L, res_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    luaL_setfuncs(L, server_funcs, 0);
}
