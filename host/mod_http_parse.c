/* mod_http_parse.c - host.core.http_parse: the strict HTTP/1.1 request parser of the host's
 * server (ph_http_parse.h) for byte streams that do not come from a socket of ours: the
 * bridge's relayed connections. Internal: providers never load it. */
#include "ph.h"
#include "ph_http_parse.h"

#include <string.h>

#define PARSER_MT "host.http_parse.Parser"

/* Where a parser stands between two feeds. */
enum { P_HEAD, P_BODY, P_DONE, P_FAILED };

typedef struct {
    int state;
    int status; /* P_FAILED: the HTTP status that answers the stream */
    int body;   /* 1: the failure was in a chunked body, not a head */
    int max_head;
    size_t max_body;
    PhBuf in; /* bytes taken but not parsed yet: the start of a head */
    PhHttpBody framing;
    PhHttpRequest req;
} Parser;

static Parser *check_parser(lua_State *L)
{
    return luaL_checkudata(L, 1, PARSER_MT);
}

/* parser.new{max_head=, max_headers=, max_body=} -> Parser; misuse raises. The parser is
 * created empty and its metatable set before any memory is taken (closed first). */
static int parse_new(lua_State *L)
{
    const char *fname = "http_parse.new";
    lua_settop(L, 1);
    if (lua_isnil(L, 1)) { /* every option has a default */
        lua_newtable(L);
        lua_replace(L, 1);
    }
    if (lua_type(L, 1) != LUA_TTABLE)
        ph_argerror_in(L, fname, "table expected, got %s", luaL_typename(L, 1));
    lua_Integer max_head =
        ph_opt_integer_in(L, fname, "max_head", PH_HTTP_DEFAULT_MAX_HEAD, 256, 16 * 1024 * 1024);
    lua_Integer max_headers =
        ph_opt_integer_in(L, fname, "max_headers", PH_HTTP_MAX_HEADERS, 1, PH_HTTP_MAX_HEADERS);
    lua_Integer max_body =
        ph_opt_integer_in(L, fname, "max_body", PH_HTTP_DEFAULT_MAX_BODY, 1, (lua_Integer)1 << 40);
    Parser *p = lua_newuserdatauv(L, sizeof *p, 0);
    memset(p, 0, sizeof *p);
    luaL_setmetatable(L, PARSER_MT);
    p->max_head = (int)max_head;
    p->max_body = (size_t)max_body;
    p->req.max_head = (size_t)max_head;
    p->req.max_headers = (size_t)max_headers;
    p->req.max_body = (size_t)max_body;
    ph_http_request_reset(&p->req);
    return 1;
}

/* {type="head", method=, target=, version=, header_list={{name, value}...}, content_length=,
 *  chunked=, keep_alive=, expect_continue=} */
static void push_head(lua_State *L, const PhHttpRequest *r)
{
    lua_createtable(L, 0, 9);
    lua_pushliteral(L, "head");
    lua_setfield(L, -2, "type");
    lua_pushlstring(L, r->method, r->method_len);
    lua_setfield(L, -2, "method");
    lua_pushlstring(L, r->target, r->target_len);
    lua_setfield(L, -2, "target");
    lua_pushstring(L, r->minor_version == 1 ? "1.1" : "1.0");
    lua_setfield(L, -2, "version");
    lua_createtable(L, (int)r->num_headers, 0);
    for (size_t i = 0; i < r->num_headers; i++) {
        const PhHttpHeader *h = &r->headers[i];
        lua_createtable(L, 2, 0);
        lua_pushlstring(L, h->name, h->name_len);
        lua_rawseti(L, -2, 1);
        lua_pushlstring(L, h->value, h->value_len);
        lua_rawseti(L, -2, 2);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "header_list");
    if (r->content_length >= 0) {
        lua_pushinteger(L, (lua_Integer)r->content_length);
        lua_setfield(L, -2, "content_length");
    }
    lua_pushboolean(L, r->chunked);
    lua_setfield(L, -2, "chunked");
    lua_pushboolean(L, r->keep_alive);
    lua_setfield(L, -2, "keep_alive");
    lua_pushboolean(L, r->expect_continue);
    lua_setfield(L, -2, "expect_continue");
}

/* Append {type = type [, data = p[0..n)]} to the events table at index 3. */
static void push_event(lua_State *L, lua_Integer *nev, const char *type, const char *p, size_t n)
{
    lua_createtable(L, 0, 2);
    lua_pushstring(L, type);
    lua_setfield(L, -2, "type");
    if (p != NULL) {
        lua_pushlstring(L, p, n);
        lua_setfield(L, -2, "data");
    }
    lua_rawseti(L, 3, ++*nev);
}

static int push_failure(lua_State *L, const Parser *p)
{
    lua_pushnil(L);
    lua_pushinteger(L, p->status);
    if (p->status == 500)
        lua_pushliteral(L, "http_parse: out of memory");
    else
        lua_pushfstring(L, "http_parse: %s refused: %d %s",
                        p->body ? "chunked body" : "request head", p->status,
                        ph_http_reason(p->status));
    return 3;
}

static void fail(Parser *p, int status, int in_body)
{
    p->state = P_FAILED;
    p->status = status;
    p->body = in_body;
    ph_buf_free(&p->in);
}

/* One pass over the buffered bytes from the parser's state: events appended to the table at
 * index 3. Leaves in *off the bytes used and in *status / *in_body a refusal; returns the
 * state to continue from. */
typedef struct {
    size_t off;
    lua_Integer nev;
    int status, in_body;
} Pass;

static int parse_pass(lua_State *L, Parser *p, int state, Pass *r)
{
    for (;;) {
        if (state == P_HEAD) {
            if (r->off == p->in.len)
                return state;
            int rc = ph_http_parse_head(&p->req, p->in.p + r->off, p->in.len - r->off);
            if (rc <= 0) {
                r->status = -rc;
                return state;
            }
            push_head(L, &p->req); /* its strings point into p->in: push before moving on */
            lua_rawseti(L, 3, ++r->nev);
            ph_http_body_init(&p->framing, &p->req, p->max_body, (size_t)p->max_head);
            r->off += (size_t)rc;
            state = P_BODY;
        }
        size_t used = 0, made = 0;
        char *at = p->in.p + r->off;
        int rc = ph_http_body_feed(&p->framing, at, p->in.len - r->off, &used, &made);
        if (made > 0)
            push_event(L, &r->nev, "body", at, made);
        r->off += used;
        if (rc <= 0) {
            r->status = -rc;
            r->in_body = rc < 0;
            return state;
        }
        push_event(L, &r->nev, "end", NULL, 0);
        if (!p->req.keep_alive) {
            r->off = p->in.len;
            return P_DONE;
        }
        ph_http_request_reset(&p->req);
        state = P_HEAD;
    }
}

/* Parser:feed(bytes) -> events | nil, status, message
 * Events, in order: a head table (see push_head), then {type="body", data=} pieces, then
 * {type="end"}; then the next request's (keep-alive, pipelining). After a request that does
 * not keep the connection alive, later bytes are ignored. A refusal is sticky: status is what
 * the host's server would answer (400, 413, 431, 501, 505; 500 without memory). Events found
 * before a refusal in the same bytes are returned first, and the refusal by the next call
 * (feed("") asks for it). */
static int parser_feed(lua_State *L)
{
    Parser *p = check_parser(L);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    if (p->state == P_FAILED)
        return push_failure(L, p);
    lua_settop(L, 2);
    lua_newtable(L); /* 3: the events */
    if (p->state == P_DONE)
        return 1;
    /* A memory error while events are pushed would unwind out of here with the state half
     * advanced: until this call returns normally, the parser counts as failed (500). */
    int state = p->state;
    p->state = P_FAILED;
    p->status = 500;
    p->body = 0;
    if (n > 0 && ph_buf_append(&p->in, s, n) != 0) {
        ph_buf_free(&p->in);
        return push_failure(L, p);
    }
    Pass r = { 0, 0, 0, 0 };
    state = parse_pass(L, p, state, &r);
    /* What is left is the start of the next head: kept at the start of the buffer, so the
     * head parser can resume where it stopped when more arrives. */
    ph_buf_consume(&p->in, r.off);
    if (state == P_DONE || p->in.len == 0)
        ph_buf_free(&p->in);
    if (r.status != 0) {
        fail(p, r.status, r.in_body);
        return r.nev > 0 ? 1 : push_failure(L, p);
    }
    p->state = state;
    return 1;
}

/* Parser:pending() -> true while a request is partly received (some of a head, or a body not
 * finished), so that an end of input can be told apart from an end between requests. */
static int parser_pending(lua_State *L)
{
    Parser *p = check_parser(L);
    lua_pushboolean(L, p->state == P_BODY || (p->state == P_HEAD && p->in.len > 0));
    return 1;
}

static int parser_gc(lua_State *L)
{
    Parser *p = check_parser(L);
    ph_buf_free(&p->in);
    return 0;
}

/* http_parse.reason(status) -> the reason phrase of a common status, or "Unknown". */
static int parse_reason(lua_State *L)
{
    lua_Integer status = luaL_checkinteger(L, 1);
    lua_pushstring(L, ph_http_reason(status >= 0 && status <= 999 ? (int)status : 0));
    return 1;
}

static const luaL_Reg parser_methods[] = {
    { "feed", parser_feed },
    { "pending", parser_pending },
    { NULL, NULL },
};

static const luaL_Reg parse_funcs[] = {
    { "new", parse_new },
    { "reason", parse_reason },
    { NULL, NULL },
};

int luaopen_host_core_http_parse(lua_State *L)
{
    if (luaL_newmetatable(L, PARSER_MT)) { /* busted re-requires modules per spec file */
        luaL_newlib(L, parser_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, parser_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    luaL_newlib(L, parse_funcs);
    lua_pushinteger(L, PH_HTTP_DEFAULT_MAX_HEAD);
    lua_setfield(L, -2, "DEFAULT_MAX_HEAD");
    lua_pushinteger(L, PH_HTTP_MAX_HEADERS);
    lua_setfield(L, -2, "MAX_HEADERS");
    lua_pushinteger(L, PH_HTTP_DEFAULT_MAX_BODY);
    lua_setfield(L, -2, "DEFAULT_MAX_BODY");
    return 1;
}
