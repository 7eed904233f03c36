/* mod_rawtcp.c - host.core.rawtcp: a raw TCP client for specs that must send bytes no HTTP
 * client would (split heads, bad framing, half-closes). Not part of the API: only specs load
 * it. */
#include "ph.h"

#include <stdlib.h>
#include <string.h>

#define CONN_MT    "host.rawtcp.Conn"
#define READ_CHUNK 65536

typedef struct {
    ph_op op; /* first: the task waiting to connect or receive */
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t creq;
    uv_shutdown_t sreq;
    int parked; /* 0, 1 connect, 2 recv */
    int ud_ref; /* the userdata, anchored while connecting */
    int refs;   /* open handles + 1 for the userdata */
    int closed, eof, error;
    PhBuf in;
    double timeout;
} RawConn;

typedef struct {
    RawConn *rc;
} RawUd;

static void raw_unref(RawConn *rc)
{
    if (--rc->refs == 0) {
        ph_buf_free(&rc->in);
        free(rc);
    }
}

static void raw_handle_closed(uv_handle_t *h)
{
    raw_unref(h->data);
}

static void raw_resume(RawConn *rc, int n, int later)
{
    ph_task *t = rc->op.task;
    rc->parked = 0;
    uv_timer_stop(&rc->timer);
    if (later)
        ph_task_wake(t, n);
    else
        ph_task_resume(t, n);
}

/* What a recv returns now, or -1 to wait. */
static int raw_take(lua_State *L, RawConn *rc)
{
    if (rc->in.len > 0) {
        lua_pushlstring(L, rc->in.p, rc->in.len);
        rc->in.len = 0;
        return 1;
    }
    if (rc->error)
        return ph_fail(L, "closed", "tcp: connection reset");
    if (rc->eof || rc->closed) {
        lua_pushnil(L);
        return 1;
    }
    return -1;
}

static void raw_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    RawConn *rc = h->data;
    if (ph_buf_reserve(&rc->in, READ_CHUNK) != 0) {
        b->base = NULL;
        b->len = 0;
        return;
    }
    b->base = rc->in.p + rc->in.len;
    b->len = rc->in.cap - rc->in.len;
}

static void raw_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    RawConn *rc = s->data;
    if (n == 0)
        return;
    if (n > 0)
        rc->in.len += (size_t)n;
    else {
        if (n == UV_EOF)
            rc->eof = 1;
        else
            rc->error = 1;
        uv_read_stop(s);
    }
    if (rc->parked == 2)
        raw_resume(rc, raw_take(ph_task_thread(rc->op.task), rc), 0);
}

static void raw_timed_out(uv_timer_t *tm)
{
    RawConn *rc = tm->data;
    lua_State *co = ph_task_thread(rc->op.task);
    if (rc->ud_ref != LUA_NOREF) { /* the connect itself: give up on it */
        luaL_unref(co, LUA_REGISTRYINDEX, rc->ud_ref);
        rc->ud_ref = LUA_NOREF;
    }
    raw_resume(rc, ph_fail(co, "timeout", "tcp: timed out after %fs", rc->timeout), 0);
}

static void raw_connected(uv_connect_t *req, int status)
{
    RawConn *rc = req->data;
    if (rc->parked != 1) /* canceled or timed out meanwhile */
        return;
    lua_State *co = ph_task_thread(rc->op.task);
    int n;
    if (status == 0 && !rc->closed) {
        uv_read_start((uv_stream_t *)&rc->tcp, raw_alloc, raw_on_read);
        lua_rawgeti(co, LUA_REGISTRYINDEX, rc->ud_ref);
        n = 1;
    } else {
        n = ph_fail(co, "connect", "tcp: %s", uv_strerror(status));
    }
    luaL_unref(co, LUA_REGISTRYINDEX, rc->ud_ref);
    rc->ud_ref = LUA_NOREF;
    raw_resume(rc, n, 0);
}

static void raw_cancel(ph_op *op)
{
    RawConn *rc = (RawConn *)op;
    lua_State *co = ph_task_thread(op->task);
    if (rc->ud_ref != LUA_NOREF) {
        luaL_unref(co, LUA_REGISTRYINDEX, rc->ud_ref);
        rc->ud_ref = LUA_NOREF;
    }
    raw_resume(rc, ph_fail(co, "canceled", "tcp: canceled"), 1);
}

static void raw_close_handles(RawConn *rc)
{
    if (rc->closed)
        return;
    rc->closed = 1;
    uv_close((uv_handle_t *)&rc->timer, raw_handle_closed);
    uv_close((uv_handle_t *)&rc->tcp, raw_handle_closed);
}

static void raw_park_timer(RawConn *rc, double timeout)
{
    rc->timeout = timeout;
    ph_timer_start(&rc->timer, raw_timed_out, timeout);
}

/* rawtcp.connect(host, port [, timeout]) -> Conn | nil, msg, code */
static int rawtcp_connect(lua_State *L)
{
    const char *host = luaL_checkstring(L, 1);
    lua_Integer port = luaL_checkinteger(L, 2);
    double timeout = luaL_optnumber(L, 3, 10);
    luaL_argcheck(L, port > 0 && port < 65536, 2, "port out of range");
    luaL_argcheck(L, timeout > 0 && timeout <= 1e9, 3, "timeout must be in (0, 1e9]");
    struct sockaddr_storage sa;
    if (ph_ip_addr(host, (int)port, &sa) != 0)
        return luaL_argerror(L, 1, "an IP address expected");
    ph_task *t = ph_task_current(L);
    if (ph_task_is_canceled(t))
        return ph_fail(L, "canceled", "tcp: canceled");
    RawUd *ud = lua_newuserdatauv(L, sizeof *ud, 0);
    ud->rc = NULL;
    luaL_setmetatable(L, CONN_MT);
    RawConn *rc = calloc(1, sizeof *rc);
    if (rc == NULL)
        return ph_fail(L, "internal", "tcp: out of memory");
    ud->rc = rc;
    rc->refs = 3;
    uv_tcp_init(ph_loop(), &rc->tcp);
    uv_timer_init(ph_loop(), &rc->timer);
    rc->tcp.data = rc->timer.data = rc->creq.data = rc;
    int r = uv_tcp_connect(&rc->creq, &rc->tcp, (struct sockaddr *)&sa, raw_connected);
    if (r != 0) {
        raw_close_handles(rc);
        return ph_fail(L, "connect", "tcp: %s", uv_strerror(r));
    }
    lua_pushvalue(L, -1);
    rc->ud_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    raw_park_timer(rc, timeout);
    rc->parked = 1;
    rc->op.cancel = raw_cancel;
    lua_settop(L, 0);
    return ph_task_park(L, t, &rc->op);
}

static RawConn *check_raw(lua_State *L)
{
    RawUd *ud = luaL_checkudata(L, 1, CONN_MT);
    if (ud->rc == NULL || ud->rc->closed)
        luaL_error(L, "tcp: connection closed");
    return ud->rc;
}

static void raw_written(uv_write_t *req, int status)
{
    free(req);
}

/* conn:send(data) -> true | nil, msg, "closed": queued, not waited for */
static int raw_send(lua_State *L)
{
    RawConn *rc = check_raw(L);
    size_t n;
    const char *p = luaL_checklstring(L, 2, &n);
    uv_write_t *req = malloc(sizeof *req + n);
    if (req == NULL)
        return ph_fail(L, "internal", "tcp: out of memory");
    memcpy(req + 1, p, n);
    uv_buf_t b = uv_buf_init((char *)(req + 1), (unsigned)n);
    int r = uv_write(req, (uv_stream_t *)&rc->tcp, &b, 1, raw_written);
    if (r != 0) {
        free(req);
        return ph_fail(L, "closed", "tcp: %s", uv_strerror(r));
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:recv([timeout]) -> bytes | nil (end of stream) | nil, msg, code */
static int raw_recv(lua_State *L)
{
    RawConn *rc = check_raw(L);
    double timeout = luaL_optnumber(L, 2, 10);
    luaL_argcheck(L, timeout > 0 && timeout <= 1e9, 2, "timeout must be in (0, 1e9]");
    ph_task *t = ph_task_current(L);
    if (rc->parked)
        return ph_fail(L, "busy", "tcp: another task is receiving");
    int n = raw_take(L, rc);
    if (n >= 0)
        return n;
    if (ph_task_is_canceled(t))
        return ph_fail(L, "canceled", "tcp: canceled");
    raw_park_timer(rc, timeout);
    rc->parked = 2;
    rc->op.cancel = raw_cancel;
    lua_settop(L, 1);
    return ph_task_park(L, t, &rc->op);
}

static void raw_shut(uv_shutdown_t *req, int status)
{
}

/* conn:shutdown(): half-close (no more sending); receiving goes on */
static int raw_shutdown(lua_State *L)
{
    RawConn *rc = check_raw(L);
    rc->sreq.data = rc;
    uv_shutdown(&rc->sreq, (uv_stream_t *)&rc->tcp, raw_shut);
    return 0;
}

/* conn:close(); also __gc and __close */
static int raw_close(lua_State *L)
{
    RawUd *ud = luaL_checkudata(L, 1, CONN_MT);
    RawConn *rc = ud->rc;
    if (rc == NULL)
        return 0;
    ud->rc = NULL;
    if (rc->parked == 2) /* another task waits in recv */
        raw_resume(rc, ph_fail(ph_task_thread(rc->op.task), "closed", "tcp: closed"), 1);
    raw_close_handles(rc);
    raw_unref(rc);
    return 0;
}

static const luaL_Reg conn_methods[] = {
    { "send", raw_send },   { "recv", raw_recv }, { "shutdown", raw_shutdown },
    { "close", raw_close }, { NULL, NULL },
};

static const luaL_Reg rawtcp_funcs[] = {
    { "connect", rawtcp_connect },
    { NULL, NULL },
};

int luaopen_host_core_rawtcp(lua_State *L)
{
    if (luaL_newmetatable(L, CONN_MT)) { /* busted re-requires modules per spec file */
        luaL_newlib(L, conn_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, raw_close);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, raw_close);
        lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);
    luaL_newlib(L, rawtcp_funcs);
    return 1;
}
