/* mod_http.c - host.core.http: the HTTP client, one curl multi handle driven by the libuv loop
 * (curl_multi_socket_action with a uv_poll_t per socket and one uv_timer_t), the helpers the
 * server shares, and the module entry. The server is in mod_http_server.c.
 *
 * A request that is not idempotent is never sent twice. libcurl re-sends a request by itself
 * when a reused keep-alive connection dies before any byte of the answer came back
 * (Curl_retry_request: "Connection died, retrying a fresh connect"), which for a POST that
 * creates something creates it twice. No option turns that off, and a body that refuses to
 * rewind (CURLOPT_SEEKFUNCTION) stops only the retries that happen after body bytes were
 * written: not a POST with an empty body, nor one whose head went out while its body waited
 * for "100 Continue". What every retry does go through is a new request on a new connection,
 * and libcurl calls CURLOPT_PREREQFUNCTION right before each request it sends (multi.c,
 * MSTATE_DO). So prereq_cb refuses a second request for the same transfer unless a final
 * response head arrived in between (a redirect, a 417): that is only ever a retry. Connection
 * reuse is kept; a fresh connection per POST would cost a TLS handshake each.
 *
 * No Lua code ever runs inside a libcurl callback: the write and header callbacks only append
 * to C buffers and flag the transfer. After curl_multi_socket_action returns, the flagged
 * transfers are dispatched: on_chunk is called (protected, on the main thread) with what was
 * buffered, and parked tasks are resumed. A Lua error therefore never unwinds through curl. */
#include "ph.h"
#include "ph_http.h"

#include <curl/curl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define STREAM_MT "host.http.Stream"

#define DEFAULT_TIMEOUT         30.0
#define DEFAULT_CONNECT_TIMEOUT 10.0
#define DEFAULT_MAX_BODY        (64 * 1024 * 1024)
#define STREAM_PAUSE_AT         (1024 * 1024) /* unread stream bytes above this pause the transfer */
#define MAX_RESPONSE_HEAD       (256 * 1024)  /* header bytes of one response, all fields */
#define MAX_CONNECTS            64            /* idle connections the multi keeps for reuse */
#define FD_RESERVE              64 /* descriptors left for all but HTTP (stdio, children, SSH) */
#define FDS_PER_CONNECTION      3  /* a socket, and room for children's pipes beside it */
#define MAX_REDIRECTS           10

/* ---- shared helpers (ph_http.h) ------------------------------------------------------- */

int ph_http_token_ok(const char *s, size_t n)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        int alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        if (!alnum && (c == 0 || memchr(extra, c, sizeof extra - 1) == NULL))
            return 0;
    }
    return 1;
}

int ph_http_value_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
            return 0;
    return 1;
}


/* ---- transfers ------------------------------------------------------------------------ */

enum { PARK_NONE, PARK_REQUEST, PARK_OPEN, PARK_READ };

typedef struct HttpOp HttpOp;
struct HttpOp {
    ph_op op;   /* first: the task parked on this transfer (request, open or a stream read) */
    int parked; /* PARK_*: what that task waits for */
    int stream; /* made by open(): the body goes to stream:read */
    CURL *easy; /* NULL once the transfer is over */
    struct curl_slist *headers;
    char *what; /* "GET http://...": context for messages */
    char *url;  /* the effective URL, kept when the transfer ends */
    char errbuf[CURL_ERROR_SIZE];
    PhBuf body; /* the accumulated body; for on_chunk and streams, what is not handed out yet */
    PhBuf head; /* fields of the latest response head: "name\0value\0" ... */
    int nfields;
    long status;
    int head_done;    /* the final response head arrived (not a 1xx, not a followed redirect) */
    int has_location; /* the latest head carries Location */
    int follow;
    int once;        /* not idempotent: never let libcurl send the request a second time */
    int sent;        /* libcurl started sending the request (prereq_cb ran) */
    int answered;    /* a final response head began after the latest send */
    size_t max_body; /* 0: no limit */
    size_t received;
    int on_chunk; /* registry ref of the on_chunk function, or LUA_NOREF */
    /* how it ended: code is set (with msg) on failure; callbacks may set it before the end */
    int finished;
    const char *code;
    char *msg;
    /* flow control and deadlines */
    int paused; /* a stream's write callback returned CURL_WRITEFUNC_PAUSE */
    uv_timer_t *stall_timer;
    uint64_t stall_ms, last_rx;
    curl_off_t last_ul;
    uv_timer_t *read_timer; /* stream:read's own timeout */
    double read_timeout;
    int in_lua; /* on_chunk is running: freeing must wait */
    int dead;   /* freed while in_lua */
    int dirty;  /* queued for dispatch */
    HttpOp *dnext, *dprev;
};

typedef struct {
    HttpOp *op; /* NULL once closed */
} Stream;

typedef struct {
    uv_poll_t poll; /* first: the handle's address is the context's */
    curl_socket_t fd;
} SockCtx;

static struct {
    CURLM *multi;
    CURLSH *share;
    uv_timer_t timer;
    HttpOp *dirty_head, *dirty_tail;
} cl;

static void dirty_add(HttpOp *op)
{
    if (op->dirty)
        return;
    op->dirty = 1;
    op->dnext = NULL;
    op->dprev = cl.dirty_tail;
    if (cl.dirty_tail != NULL)
        cl.dirty_tail->dnext = op;
    else
        cl.dirty_head = op;
    cl.dirty_tail = op;
}

static void dirty_remove(HttpOp *op)
{
    if (!op->dirty)
        return;
    if (op->dprev != NULL)
        op->dprev->dnext = op->dnext;
    else
        cl.dirty_head = op->dnext;
    if (op->dnext != NULL)
        op->dnext->dprev = op->dprev;
    else
        cl.dirty_tail = op->dprev;
    op->dirty = 0;
    op->dnext = op->dprev = NULL;
}

/* Take the easy handle out of the multi and free it. Never called inside a curl callback. */
static void op_stop_transfer(HttpOp *op)
{
    if (op->easy != NULL) {
        if (op->url == NULL) {
            char *u = NULL;
            if (curl_easy_getinfo(op->easy, CURLINFO_EFFECTIVE_URL, &u) == CURLE_OK && u != NULL)
                op->url = strdup(u);
        }
        curl_multi_remove_handle(cl.multi, op->easy);
        curl_easy_cleanup(op->easy);
        op->easy = NULL;
    }
    ph_timer_free(&op->stall_timer);
    op->paused = 0;
}

static void op_free(HttpOp *op)
{
    op_stop_transfer(op);
    dirty_remove(op);
    ph_timer_free(&op->read_timer);
    if (op->in_lua) { /* on_chunk is on the stack: flush_chunks frees it when that returns */
        op->dead = 1;
        return;
    }
    curl_slist_free_all(op->headers);
    free(op->what);
    free(op->url);
    free(op->msg);
    ph_buf_free(&op->body);
    ph_buf_free(&op->head);
    if (op->on_chunk != LUA_NOREF)
        luaL_unref(ph_main_state(), LUA_REGISTRYINDEX, op->on_chunk);
    free(op);
}

/* Record a failure that happened inside a curl callback; the transfer is then aborted by the
 * callback's return value and ends with this code instead of curl's. */
static void op_set_failure(HttpOp *op, const char *code, char *msg)
{
    if (op->code != NULL) {
        free(msg);
        return;
    }
    op->code = code;
    op->msg = msg;
}

/* End the transfer now (outside curl): stall timeout, on_chunk failure. */
static void op_end(HttpOp *op, const char *code, char *msg)
{
    if (op->finished) {
        free(msg);
        return;
    }
    op_set_failure(op, code, msg);
    op_stop_transfer(op);
    op->finished = 1;
    dirty_add(op);
}

static const char *curl_code_word(CURLcode rc)
{
    switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return "dns";
    case CURLE_COULDNT_CONNECT:
        return "connect";
    case CURLE_OPERATION_TIMEDOUT:
        return "timeout";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_CLIENTCERT:
    case CURLE_USE_SSL_FAILED:
        return "tls";
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
        return "closed";
    case CURLE_OUT_OF_MEMORY:
        return "internal";
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_TOO_MANY_REDIRECTS:
    case CURLE_BAD_CONTENT_ENCODING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_HTTP3:
    case CURLE_RANGE_ERROR:
        return "protocol";
    default:
        return "io";
    }
}

/* What a caller of a request that is not idempotent must know when the connection died
 * before any answer: that the request might have been processed, and was not repeated. */
#define LOST_MESSAGE                                                                               \
    "connection lost after the request was sent and before any response; the server may have "     \
    "processed it; it was not re-sent"

/* The request went out and the connection died before a response head came back. */
static int lost_before_answer(HttpOp *op, CURLcode rc)
{
    if (!op->sent || op->answered)
        return 0;
    return rc == CURLE_GOT_NOTHING || rc == CURLE_RECV_ERROR || rc == CURLE_SEND_ERROR;
}

/* The transfer left the multi with rc (from check_multi_info). */
static void op_transfer_done(HttpOp *op, CURLcode rc)
{
    if (rc != CURLE_OK && op->code == NULL && op->once && lost_before_answer(op, rc))
        /* libcurl did not retry (a fresh connection, or nothing to retry): same words as
         * when prereq_cb stopped a retry, so that a caller sees one failure for one fact */
        op_set_failure(op, "closed", ph_printf_alloc("%s", LOST_MESSAGE));
    if (rc != CURLE_OK && op->code == NULL) {
        const char *detail = op->errbuf[0] != '\0' ? op->errbuf : curl_easy_strerror(rc);
        long err = 0;
        if (rc == CURLE_COULDNT_CONNECT &&
            curl_easy_getinfo(op->easy, CURLINFO_OS_ERRNO, &err) == CURLE_OK && err != 0)
            detail = strerror((int)err); /* "Connection refused" says it best */
        op_set_failure(op, curl_code_word(rc), ph_printf_alloc("%s", detail));
    }
    op_stop_transfer(op);
    op->finished = 1;
    dirty_add(op);
}

/* ---- results ---------------------------------------------------------------------------- */

static int push_failure(lua_State *L, HttpOp *op)
{
    return ph_fail(L, op->code, "http: %s: %s", op->what, op->msg ? op->msg : "out of memory");
}

/* { lowercase name -> value }, repeated fields joined with ", " */
static void push_headers(lua_State *L, HttpOp *op)
{
    lua_createtable(L, 0, op->nfields);
    const char *p = op->head.p, *end = op->head.p + op->head.len;
    while (p < end) {
        const char *name = p;
        p += strlen(p) + 1;
        const char *value = p;
        size_t vlen = strlen(p);
        p += vlen + 1;
        if (lua_getfield(L, -1, name) == LUA_TSTRING) {
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, value, vlen);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, value, vlen);
        }
        lua_setfield(L, -2, name);
    }
}

static void push_url(lua_State *L, HttpOp *op)
{
    char *u = op->url;
    if (u == NULL && op->easy != NULL)
        curl_easy_getinfo(op->easy, CURLINFO_EFFECTIVE_URL, &u);
    if (u != NULL)
        lua_pushstring(L, u);
    else
        lua_pushnil(L);
}

/* {status=, headers=, body=, url=} */
static int push_response(lua_State *L, HttpOp *op)
{
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, op->status);
    lua_setfield(L, -2, "status");
    push_headers(L, op);
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, op->body.p != NULL ? op->body.p : "", op->body.len);
    lua_setfield(L, -2, "body");
    push_url(L, op);
    lua_setfield(L, -2, "url");
    return 1;
}

/* ---- curl callbacks: C buffers only, never Lua ---------------------------------------- */

static size_t write_cb(char *data, size_t size, size_t nmemb, void *ud)
{
    HttpOp *op = ud;
    size_t n = size * nmemb;
    op->last_rx = uv_now(ph_loop());
    op->head_done = 1; /* body bytes come after the final head */
    if (op->max_body > 0 && n > op->max_body - op->received) {
        op_set_failure(op, "protocol",
                       ph_printf_alloc("response body exceeds max_body (%zu bytes)", op->max_body));
        return 0; /* aborts the transfer: CURLE_WRITE_ERROR, reported with our code */
    }
    if (op->stream && op->body.len >= STREAM_PAUSE_AT) {
        op->paused = 1; /* curl keeps these bytes and offers them again after the unpause */
        return CURL_WRITEFUNC_PAUSE;
    }
    if (ph_buf_append(&op->body, data, n) != 0) {
        op_set_failure(op, "internal", ph_printf_alloc("out of memory for the response body"));
        return 0;
    }
    op->received += n;
    if (op->on_chunk != LUA_NOREF || op->parked == PARK_OPEN || op->parked == PARK_READ)
        dirty_add(op);
    return n;
}

static int is_followed(HttpOp *op)
{
    return op->follow && op->status >= 300 && op->status < 400 && op->status != 304 &&
           op->has_location;
}

/* A status line: a new head begins (1xx, a redirect, or the final one). */
static void head_begin(HttpOp *op, const char *line, size_t len)
{
    op->head.len = 0;
    op->nfields = 0;
    op->has_location = 0;
    op->status = 0;
    const char *sp = memchr(line, ' ', len);
    for (const char *p = sp ? sp + 1 : line + len; p < line + len && *p >= '0' && *p <= '9'; p++)
        op->status = op->status * 10 + (*p - '0');
    if (op->status >= 200)
        op->answered = 1;
}

/* obs-fold: the line continues the previous field's value. 0, or -1 without memory. */
static int head_fold(HttpOp *op, const char *line, size_t len)
{
    if (op->nfields == 0)
        return 0;
    size_t s = 0;
    while (s < len && (line[s] == ' ' || line[s] == '\t'))
        s++;
    op->head.len--; /* reopen the previous value's terminator */
    return ph_buf_append(&op->head, " ", 1) || ph_buf_append(&op->head, line + s, len - s) ||
                   ph_buf_append(&op->head, "", 1)
               ? -1
               : 0;
}

/* "Name: value": kept as "name\0value\0", the name lowercased, the value trimmed. 0 (also
 * for a line that is no field), or -1 without memory. */
static int head_field(HttpOp *op, const char *line, size_t len)
{
    const char *colon = memchr(line, ':', len);
    if (colon == NULL || colon == line)
        return 0;
    size_t nlen = (size_t)(colon - line), vs = nlen + 1, ve = len;
    while (vs < ve && (line[vs] == ' ' || line[vs] == '\t'))
        vs++;
    while (ve > vs && (line[ve - 1] == ' ' || line[ve - 1] == '\t'))
        ve--;
    if (ph_buf_reserve(&op->head, nlen + (ve - vs) + 2) != 0)
        return -1;
    char *name = op->head.p + op->head.len;
    for (size_t i = 0; i < nlen; i++) {
        char c = line[i];
        name[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    name[nlen] = '\0';
    if (strcmp(name, "location") == 0)
        op->has_location = 1;
    op->head.len += nlen + 1;
    ph_buf_append(&op->head, line + vs, ve - vs); /* reserved above: cannot fail */
    ph_buf_append(&op->head, "", 1);
    op->nfields++;
    return 0;
}

static size_t header_cb(char *line, size_t size, size_t nmemb, void *ud)
{
    HttpOp *op = ud;
    size_t total = size * nmemb, len = total;
    op->last_rx = uv_now(ph_loop());
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
        len--;
    if (len >= 5 && memcmp(line, "HTTP/", 5) == 0) {
        head_begin(op, line, len);
        return total;
    }
    if (op->head_done) /* trailer fields are not part of the head */
        return total;
    if (len == 0) { /* the blank line ending a head */
        if (op->status >= 200 && !is_followed(op)) {
            op->head_done = 1;
            if (op->parked == PARK_OPEN)
                dirty_add(op);
        }
        return total;
    }
    if (memchr(line, '\0', len) != NULL)
        return total; /* cannot be represented; a conforming server never sends it */
    int folded = line[0] == ' ' || line[0] == '\t';
    if ((folded ? head_fold(op, line, len) : head_field(op, line, len)) != 0) {
        op_set_failure(op, "internal", ph_printf_alloc("out of memory for the response head"));
        return 0;
    }
    if (op->head.len > MAX_RESPONSE_HEAD) {
        op_set_failure(op, "protocol",
                       ph_printf_alloc("response head exceeds %d bytes", MAX_RESPONSE_HEAD));
        return 0;
    }
    return total;
}

/* Upload progress counts as life for stall_timeout (a large body being sent). */
static int xferinfo_cb(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    HttpOp *op = ud;
    if (ulnow != op->last_ul) {
        op->last_ul = ulnow;
        op->last_rx = uv_now(ph_loop());
    }
    return 0;
}

/* Right before libcurl sends a request (the first, a redirect's, or a retry on a fresh
 * connection), for requests that must not be sent twice. A request that follows an earlier
 * one without a final answer in between is libcurl retrying after the connection died: the
 * server may have processed the first one, so the transfer ends here instead. */
static int prereq_cb(void *ud, char *conn_primary_ip, char *conn_local_ip, int conn_primary_port,
                     int conn_local_port)
{
    HttpOp *op = ud;
    if (op->sent && !op->answered) {
        op_set_failure(op, "closed", ph_printf_alloc("%s", LOST_MESSAGE));
        return CURL_PREREQFUNC_ABORT; /* CURLE_ABORTED_BY_CALLBACK, reported with our code */
    }
    op->sent = 1;
    op->answered = 0;
    return CURL_PREREQFUNC_OK;
}

/* ---- the multi handle on the loop ------------------------------------------------------- */

static void process_dirty(void);

static void check_multi_info(void)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(cl.multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *easy = m->easy_handle;
        CURLcode rc = m->data.result; /* m is invalid once the handle is removed */
        HttpOp *op = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&op);
        if (op != NULL)
            op_transfer_done(op, rc);
    }
}

/* After every curl_multi_socket_action: completions first, then the dispatch (which may run
 * Lua: on_chunk, and resumed tasks). */
static void after_action(void)
{
    check_multi_info();
    process_dirty();
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    SockCtx *ctx = (SockCtx *)h;
    int flags = 0, running;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    curl_multi_socket_action(cl.multi, ctx->fd, flags, &running); /* may close ctx */
    after_action();
}

static void on_timer(uv_timer_t *t)
{
    int running;
    curl_multi_socket_action(cl.multi, CURL_SOCKET_TIMEOUT, 0, &running);
    after_action();
}

static int socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    SockCtx *ctx = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (ctx != NULL) { /* stop now, while the fd is still open; free once closed */
            uv_poll_stop(&ctx->poll);
            uv_close((uv_handle_t *)&ctx->poll, ph_handle_free);
            curl_multi_assign(cl.multi, s, NULL);
        }
        return 0;
    }
    if (ctx == NULL) {
        ctx = malloc(sizeof *ctx);
        if (ctx == NULL)
            return -1;
        if (uv_poll_init_socket(ph_loop(), &ctx->poll, s) != 0) {
            free(ctx);
            return -1;
        }
        ctx->fd = s;
        curl_multi_assign(cl.multi, s, ctx);
    }
    int events = 0;
    if (what & CURL_POLL_IN)
        events |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    uv_poll_start(&ctx->poll, events, on_poll);
    return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    if (timeout_ms < 0)
        uv_timer_stop(&cl.timer);
    else /* 0 means "now": still from the loop, never from inside this callback */
        uv_timer_start(&cl.timer, on_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

/* Connections open at once, from the open-files limit: past it curl keeps a transfer pending
 * until a connection closes, instead of failing it for want of a descriptor ("couldn't
 * connect") in a worker under a low limit. The idle ones kept for reuse are at most half. */
static long connection_cap(void)
{
    struct rlimit rl;
    long fds = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
                   ? (long)rl.rlim_cur
                   : 65536;
    long cap = (fds - FD_RESERVE) / FDS_PER_CONNECTION;
    return cap < 4 ? 4 : cap > 4096 ? 4096 : cap;
}

static int client_init(void)
{
    if (cl.multi != NULL)
        return 0;
    /* Once per process, on the first request: the module is loaded lazily for this. */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return -1;
    cl.multi = curl_multi_init();
    if (cl.multi == NULL)
        return -1;
    curl_multi_setopt(cl.multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(cl.multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    long cap = connection_cap();
    curl_multi_setopt(cl.multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, cap);
    curl_multi_setopt(cl.multi, CURLMOPT_MAXCONNECTS,
                      cap / 2 < MAX_CONNECTS ? cap / 2 : MAX_CONNECTS);
    uv_timer_init(ph_loop(), &cl.timer);
    cl.share = curl_share_init(); /* TLS sessions resumed across transfers; single-threaded */
    if (cl.share != NULL)
        curl_share_setopt(cl.share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    return 0;
}

/* ---- dispatch: runs at the loop's top level, after curl returned ---------------------- */

/* Under ph_protect: on_chunk gets the bytes buffered so far. */
static void call_on_chunk(lua_State *L, void *ud)
{
    HttpOp *op = ud;
    lua_rawgeti(L, LUA_REGISTRYINDEX, op->on_chunk);
    lua_pushlstring(L, op->body.p, op->body.len);
    op->body.len = 0; /* handed over */
    lua_call(L, 1, 0);
}

/* Hand buffered bytes to on_chunk. Returns 1 when the op was freed meanwhile (its task was
 * canceled from inside on_chunk), 0 otherwise; a raising on_chunk ends the transfer. */
static int flush_chunks(HttpOp *op)
{
    while (op->body.len > 0 && !op->dead) {
        char *err;
        op->in_lua = 1;
        int rc = ph_protect(call_on_chunk, op, "http on_chunk failed", &err);
        op->in_lua = 0;
        if (rc != 0) {
            op->body.len = 0; /* not handed over if the push itself failed: the transfer ends */
            if (!op->dead)
                op_end(op, "internal",
                       ph_printf_alloc("on_chunk failed: %s", err != NULL ? err : "error"));
        }
        free(err);
    }
    if (op->dead) {
        op->dead = 0;
        op_free(op);
        return 1;
    }
    return 0;
}

/* Take what a stream:read returns now: a chunk, nil at the end, or the failure; -1 when the
 * reader must wait. Unpauses the transfer once its buffer is handed out. */
static int take_read(lua_State *L, HttpOp *op)
{
    if (op->body.len > 0) {
        lua_pushlstring(L, op->body.p, op->body.len);
        op->body.len = 0;
        if (op->paused && op->easy != NULL) {
            op->paused = 0;
            curl_easy_pause(op->easy, CURLPAUSE_CONT); /* may append to body right away */
        }
        return 1;
    }
    if (op->finished) {
        if (op->code != NULL)
            return push_failure(L, op);
        lua_pushnil(L);
        return 1;
    }
    return -1;
}

static void push_stream(lua_State *L, HttpOp *op)
{
    Stream *s = lua_newuserdatauv(L, sizeof *s, 1);
    s->op = op;
    luaL_setmetatable(L, STREAM_MT);
    lua_createtable(L, 0, 3); /* the response fields, read through __index */
    lua_pushinteger(L, op->status);
    lua_setfield(L, -2, "status");
    push_headers(L, op);
    lua_setfield(L, -2, "headers");
    push_url(L, op);
    lua_setfield(L, -2, "url");
    lua_setiuservalue(L, -2, 1);
}

static void op_dispatch(HttpOp *op)
{
    ph_task *t = op->op.task;
    lua_State *co;
    int n;
    if (op->parked != PARK_NONE && !lua_checkstack(ph_task_thread(t), 8))
        return; /* cannot happen with a parked task's frame; never write past the stack */
    switch (op->parked) {
    case PARK_REQUEST:
        if (op->on_chunk != LUA_NOREF && op->body.len > 0 && flush_chunks(op))
            return;
        if (!op->finished)
            return;
        co = ph_task_thread(t);
        n = op->code != NULL ? push_failure(co, op) : push_response(co, op);
        op->parked = PARK_NONE;
        op_free(op);
        ph_task_resume(t, n);
        return;
    case PARK_OPEN:
        if (!op->head_done && !op->finished)
            return;
        co = ph_task_thread(t);
        op->parked = PARK_NONE;
        if (!op->head_done && op->code != NULL) {
            n = push_failure(co, op);
            op_free(op);
            ph_task_resume(t, n);
            return;
        }
        push_stream(co, op); /* the stream owns op from here on */
        ph_task_resume(t, 1);
        return;
    case PARK_READ:
        co = ph_task_thread(t);
        n = take_read(co, op);
        if (n < 0)
            return;
        op->parked = PARK_NONE;
        ph_timer_free(&op->read_timer);
        ph_task_resume(t, n);
        return;
    default:
        return;
    }
}

static void process_dirty(void)
{
    HttpOp *op;
    while ((op = cl.dirty_head) != NULL) {
        dirty_remove(op);
        op_dispatch(op);
    }
}

/* ---- cancel and timers -------------------------------------------------------------------- */

/* The task waiting in request or open was canceled: drop the transfer. */
static void transfer_cancel(ph_op *o)
{
    HttpOp *op = (HttpOp *)o;
    ph_task *t = o->task;
    int n = ph_fail(ph_task_thread(t), "canceled", "http: %s: canceled", op->what);
    op->parked = PARK_NONE;
    op_free(op);
    ph_task_wake(t, n);
}

/* A task waiting in stream:read was canceled: the stream itself stays usable. */
static void read_cancel(ph_op *o)
{
    HttpOp *op = (HttpOp *)o;
    ph_task *t = o->task;
    op->parked = PARK_NONE;
    ph_timer_free(&op->read_timer);
    ph_task_wake(t, ph_fail(ph_task_thread(t), "canceled", "http: %s: read canceled", op->what));
}

static void read_timed_out(uv_timer_t *tm)
{
    HttpOp *op = tm->data;
    ph_task *t = op->op.task;
    op->parked = PARK_NONE;
    ph_timer_free(&op->read_timer);
    ph_task_resume(t, ph_fail(ph_task_thread(t), "timeout", "http: %s: no data within %fs",
                              op->what, op->read_timeout));
}

static void stall_check(uv_timer_t *tm)
{
    HttpOp *op = tm->data;
    uint64_t now = uv_now(ph_loop());
    if (op->paused) /* a paused stream waits for its reader, not for the peer */
        op->last_rx = now;
    uint64_t idle = now - op->last_rx;
    if (idle >= op->stall_ms) {
        op_end(op, "timeout",
               ph_printf_alloc("stalled: no data for %gs", (double)op->stall_ms / 1000.0));
        process_dirty();
        return;
    }
    uv_timer_start(tm, stall_check, op->stall_ms - idle, 0);
}

/* ---- request and open ----------------------------------------------------------------------- */

static int starts_with_ci(const char *s, const char *prefix)
{
    for (; *prefix != '\0'; s++, prefix++) {
        char c = *s;
        if (c >= 'A' && c <= 'Z')
            c = (char)(c + 32);
        if (c != *prefix)
            return 0;
    }
    return 1;
}

static int name_is(const char *s, size_t n, const char *lower)
{
    if (strlen(lower) != n)
        return 0;
    return starts_with_ci(s, lower);
}

typedef struct {
    const char *url, *method, *body;
    size_t body_len;
    int headers; /* stack index of the headers table, or 0 */
    int on_chunk;
    int has_content_type;
    double timeout, connect_timeout, stall;
    lua_Integer max_body;
    int follow;
    int path_as_is; /* send the URL's path exactly as given (no dot-segment squashing) */
    int idempotent; /* -1: not given, from the method; 0 or 1: as given */
} Conf;

/* url: required, http:// or https://, and a URL curl can parse. Left on the stack. */
static void read_url(lua_State *L, const char *fname, Conf *c)
{
    if (!ph_opt_field_in(L, fname, "url", LUA_TSTRING))
        ph_argerror_in(L, fname, "field 'url' is required");
    c->url = lua_tostring(L, -1); /* stays on the stack, so the pointer stays valid */
    if (!starts_with_ci(c->url, "http://") && !starts_with_ci(c->url, "https://"))
        ph_argerror_in(L, fname, "field 'url' must be an http:// or https:// URL");
    CURLU *u = curl_url();
    int bad = u == NULL || curl_url_set(u, CURLUPART_URL, c->url, 0) != CURLUE_OK;
    curl_url_cleanup(u);
    if (bad)
        ph_argerror_in(L, fname, "field 'url' is not a valid URL: %s", c->url);
}

/* headers: names are tokens, values strings without CR, LF or NUL; the body's framing is
 * ours. The table is left on the stack (c->headers) for build_headers. */
static void read_headers(lua_State *L, const char *fname, Conf *c)
{
    if (!ph_opt_field_in(L, fname, "headers", LUA_TTABLE)) {
        lua_pop(L, 1);
        return;
    }
    c->headers = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, c->headers) != 0) {
        size_t nlen, vlen;
        if (lua_type(L, -2) != LUA_TSTRING)
            ph_argerror_in(L, fname, "field 'headers' must map names to strings");
        const char *name = lua_tolstring(L, -2, &nlen);
        if (lua_type(L, -1) != LUA_TSTRING)
            ph_argerror_in(L, fname, "header '%s' must be a string, got %s", name,
                           luaL_typename(L, -1));
        const char *value = lua_tolstring(L, -1, &vlen);
        if (!ph_http_token_ok(name, nlen))
            ph_argerror_in(L, fname, "header name '%s' is not an HTTP token", name);
        if (!ph_http_value_ok(value, vlen))
            ph_argerror_in(L, fname, "header '%s' holds CR, LF or NUL", name);
        if (name_is(name, nlen, "content-length") || name_is(name, nlen, "transfer-encoding"))
            ph_argerror_in(L, fname, "header '%s' is set from the body", name);
        if (name_is(name, nlen, "content-type"))
            c->has_content_type = 1;
        lua_pop(L, 1);
    }
}

/* Validate every option before anything is started: misuse raises here, and only here. */
static void read_conf(lua_State *L, const char *fname, int stream, Conf *c)
{
    memset(c, 0, sizeof *c);
    if (lua_type(L, 1) != LUA_TTABLE)
        ph_argerror_in(L, fname, "table expected, got %s", luaL_typename(L, 1));
    lua_settop(L, 1);
    read_url(L, fname, c);
    if (ph_opt_field_in(L, fname, "body", LUA_TSTRING))
        c->body = lua_tolstring(L, -1, &c->body_len);
    if (ph_opt_field_in(L, fname, "method", LUA_TSTRING)) {
        c->method = lua_tostring(L, -1);
        if (!ph_http_token_ok(c->method, lua_rawlen(L, -1)))
            ph_argerror_in(L, fname, "field 'method' must be an HTTP token");
    } else {
        c->method = c->body != NULL ? "POST" : "GET";
    }
    read_headers(L, fname, c);
    if (ph_opt_field_in(L, fname, "on_chunk", LUA_TFUNCTION)) {
        if (stream)
            ph_argerror_in(L, fname, "field 'on_chunk' is for request; read the stream");
        c->on_chunk = lua_gettop(L);
    } else {
        lua_pop(L, 1);
    }
    if (ph_opt_field_in(L, fname, "follow_redirects", LUA_TBOOLEAN))
        c->follow = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (ph_opt_field_in(L, fname, "path_as_is", LUA_TBOOLEAN))
        c->path_as_is = lua_toboolean(L, -1);
    lua_pop(L, 1);
    c->idempotent = -1;
    if (ph_opt_field_in(L, fname, "idempotent", LUA_TBOOLEAN))
        c->idempotent = lua_toboolean(L, -1);
    lua_pop(L, 1);
    c->timeout = ph_opt_seconds_in(L, fname, "timeout", DEFAULT_TIMEOUT, 0);
    c->connect_timeout = ph_opt_seconds_in(L, fname, "connect_timeout", DEFAULT_CONNECT_TIMEOUT, 0);
    c->stall = ph_opt_seconds_in(L, fname, "stall_timeout", 0, 0);
    c->max_body = ph_opt_integer_in(L, fname, "max_body", stream ? 0 : DEFAULT_MAX_BODY, 1,
                                    (lua_Integer)1 << 40);
}

static struct curl_slist *build_headers(lua_State *L, const Conf *c, int *oom)
{
    struct curl_slist *list = NULL, *next;
    *oom = 0;
    if (c->headers != 0) {
        lua_pushnil(L);
        while (lua_next(L, c->headers) != 0) {
            /* "Name:" with an empty value would make curl drop its own header: "Name;" sends
             * the empty value itself. */
            size_t vlen;
            const char *v = lua_tolstring(L, -1, &vlen);
            lua_pushfstring(L, vlen == 0 ? "%s;" : "%s: %s", lua_tostring(L, -2), v);
            next = curl_slist_append(list, lua_tostring(L, -1));
            lua_pop(L, 2);
            if (next == NULL) {
                *oom = 1;
                lua_pop(L, 1);
                return list;
            }
            list = next;
        }
    }
    /* curl would label a body application/x-www-form-urlencoded: send no type unless given */
    if (c->body != NULL && !c->has_content_type) {
        next = curl_slist_append(list, "Content-Type:");
        if (next == NULL)
            *oom = 1;
        else
            list = next;
    }
    return list;
}

/* May libcurl send this request again on its own? As the caller said, or else: GET, HEAD,
 * DELETE and OPTIONS without a body, and PUT (idempotent by definition, RFC 9110 9.2.2). POST,
 * PATCH, any other method, and a GET, DELETE or OPTIONS carrying a body are not. */
static int is_idempotent(const Conf *c)
{
    if (c->idempotent >= 0)
        return c->idempotent;
    if (strcmp(c->method, "PUT") == 0)
        return 1;
    if (c->body != NULL)
        return 0;
    return strcmp(c->method, "GET") == 0 || strcmp(c->method, "HEAD") == 0 ||
           strcmp(c->method, "DELETE") == 0 || strcmp(c->method, "OPTIONS") == 0;
}

/* A request that is not idempotent: libcurl must never send it a second time (see the top of
 * this file). */
static void setup_once(HttpOp *op)
{
    CURLcode set = CURLE_UNKNOWN_OPTION;
#if LIBCURL_VERSION_NUM >= 0x075000 /* 7.80.0 added CURLOPT_PREREQFUNCTION */
    set = curl_easy_setopt(op->easy, CURLOPT_PREREQFUNCTION, prereq_cb);
    if (set == CURLE_OK)
        set = curl_easy_setopt(op->easy, CURLOPT_PREREQDATA, op);
#endif
    /* An older libcurl: libcurl only retries on a reused connection, so take a new one.
     * Correct, at the price of a connect (and TLS handshake) per such request. */
    if (set != CURLE_OK)
        curl_easy_setopt(op->easy, CURLOPT_FRESH_CONNECT, 1L);
}

/* The method, and the body when there is one. */
static void setup_method(CURL *e, const Conf *c)
{
    int is_post = strcmp(c->method, "POST") == 0;
    if (strcmp(c->method, "HEAD") == 0) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else if (c->body != NULL || is_post || strcmp(c->method, "PUT") == 0 ||
               strcmp(c->method, "PATCH") == 0) {
        /* a body, or a method that always carries one: Content-Length: 0 rather than none */
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)c->body_len);
        curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, c->body != NULL ? c->body : "");
        if (!is_post)
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, c->method);
    } else if (strcmp(c->method, "GET") == 0) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, c->method);
    }
}

static void setup_easy(HttpOp *op, const Conf *c)
{
    CURL *e = op->easy;
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)op);
    curl_easy_setopt(e, CURLOPT_URL, c->url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROXY, ""); /* never a proxy from the environment */
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, 30L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, 15L);
    /* HTTP/1.1 everywhere: pause and flow control behave the same on every connection. */
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "provider-host/" PH_HTTP_VERSION);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, op->errbuf);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(c->timeout * 1000.0 + 0.5));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(c->connect_timeout * 1000.0 + 0.5));
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, op);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, op);
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 65536L);
    if (c->follow) {
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(e, CURLOPT_MAXREDIRS, (long)MAX_REDIRECTS);
    }
    /* A proxy (the bridge) that checked a path must send that path, not libcurl's rewrite. */
    if (c->path_as_is)
        curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);
    if (c->stall > 0) {
        curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, xferinfo_cb);
        curl_easy_setopt(e, CURLOPT_XFERINFODATA, op);
    }
    if (cl.share != NULL)
        curl_easy_setopt(e, CURLOPT_SHARE, cl.share);
    if (op->once)
        setup_once(op);
    setup_method(e, c);
    if (op->headers != NULL)
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, op->headers);
}

static int http_start(lua_State *L, const char *fname, int stream)
{
    Conf c;
    read_conf(L, fname, stream, &c);
    ph_task *t = ph_task_current(L);
    if (ph_task_is_canceled(t))
        return ph_fail(L, "canceled", "http: %s %s: canceled", c.method, c.url);
    if (client_init() != 0)
        return ph_fail(L, "internal", "http: cannot create the curl multi handle");

    HttpOp *op = calloc(1, sizeof *op);
    if (op == NULL)
        return ph_fail(L, "internal", "http: out of memory");
    op->on_chunk = LUA_NOREF;
    op->stream = stream;
    op->follow = c.follow;
    op->once = !is_idempotent(&c);
    op->max_body = (size_t)c.max_body;
    op->what = ph_printf_alloc("%s %s", c.method, c.url);
    int oom = 0;
    op->headers = build_headers(L, &c, &oom);
    op->easy = curl_easy_init();
    if (op->what == NULL || oom || op->easy == NULL) {
        op_free(op);
        return ph_fail(L, "internal", "http: out of memory");
    }
    setup_easy(op, &c);
    if (c.stall > 0) {
        op->stall_ms = ph_ms(c.stall);
        op->last_rx = uv_now(ph_loop());
        if ((op->stall_timer = ph_timer_new(op)) == NULL) {
            op_free(op);
            return ph_fail(L, "internal", "http: out of memory");
        }
        uv_timer_start(op->stall_timer, stall_check, op->stall_ms, 0);
    }
    if (curl_multi_add_handle(cl.multi, op->easy) != CURLM_OK) {
        CURL *e = op->easy; /* never added: do not remove it */
        op->easy = NULL;
        curl_easy_cleanup(e);
        op_free(op);
        return ph_fail(L, "internal", "http: %s %s: cannot start the transfer", c.method, c.url);
    }
    if (c.on_chunk != 0) {
        lua_pushvalue(L, c.on_chunk);
        op->on_chunk = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    op->parked = stream ? PARK_OPEN : PARK_REQUEST;
    op->op.cancel = transfer_cancel;
    lua_settop(L, 0);
    return ph_task_park(L, t, &op->op);
}

/* http.request{url=, method=, headers=, body=, timeout=, connect_timeout=, stall_timeout=,
 *              max_body=, on_chunk=, follow_redirects=, path_as_is=, idempotent=}
 *   -> {status=, headers=, body=, url=} | nil, msg, code */
static int http_request(lua_State *L)
{
    return http_start(L, "http.request", 0);
}

/* http.open{...same, without on_chunk...} -> Stream | nil, msg, code: returns once the response
 * head arrived; the body is read with stream:read. */
static int http_open(lua_State *L)
{
    return http_start(L, "http.open", 1);
}

/* ---- Stream ------------------------------------------------------------------------------- */

static Stream *check_stream(lua_State *L)
{
    return luaL_checkudata(L, 1, STREAM_MT);
}

/* stream:read([timeout]) -> chunk | nil (the body ended) | nil, msg, code
 * A timeout here fails this read only ("timeout"); the stream stays usable. */
static int stream_read(lua_State *L)
{
    Stream *s = check_stream(L);
    double timeout = 0;
    if (!lua_isnoneornil(L, 2)) {
        timeout = luaL_checknumber(L, 2);
        luaL_argcheck(L, timeout > 0 && timeout <= 1e9, 2, "timeout must be in (0, 1e9]");
    }
    if (s->op == NULL)
        return luaL_error(L, "http: read on a closed stream");
    HttpOp *op = s->op;
    ph_task *t = ph_task_current(L);
    if (op->parked != PARK_NONE)
        return ph_fail(L, "busy", "http: %s: another task is reading this stream", op->what);
    if (ph_task_is_canceled(t))
        return ph_fail(L, "canceled", "http: %s: read canceled", op->what);
    lua_settop(L, 1); /* keep the stream (and so op) alive while parked */
    int n = take_read(L, op);
    if (n >= 0)
        return n;
    if (timeout > 0) {
        if ((op->read_timer = ph_timer_new(op)) == NULL)
            return ph_fail(L, "internal", "http: out of memory");
        op->read_timeout = timeout;
        ph_timer_start(op->read_timer, read_timed_out, timeout);
    }
    op->parked = PARK_READ;
    op->op.cancel = read_cancel;
    return ph_task_park(L, t, &op->op);
}

/* stream:close(): abandon the transfer (idempotent; also __gc and __close). */
static int stream_close(lua_State *L)
{
    Stream *s = check_stream(L);
    HttpOp *op = s->op;
    if (op == NULL)
        return 0;
    s->op = NULL;
    if (op->parked == PARK_READ) { /* another task waits on it: it learns the stream closed */
        ph_task *t = op->op.task;
        op->parked = PARK_NONE;
        ph_task_wake(t, ph_fail(ph_task_thread(t), "closed", "http: %s: stream closed", op->what));
    }
    op_free(op);
    return 0;
}

static int stream_tostring(lua_State *L)
{
    Stream *s = check_stream(L);
    if (s->op == NULL)
        lua_pushliteral(L, "host.http.Stream (closed)");
    else
        lua_pushfstring(L, "host.http.Stream (%s): %p", s->op->what, (void *)s);
    return 1;
}

/* Methods first, then the response fields (status, headers, url) kept in the user value. */
static int stream_index(lua_State *L)
{
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL)
        return 1;
    lua_getiuservalue(L, 1, 1);
    if (lua_type(L, -1) != LUA_TTABLE)
        return 0;
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    return 1;
}

/* ---- module ------------------------------------------------------------------------------- */

static const luaL_Reg stream_methods[] = {
    { "read", stream_read },
    { "close", stream_close },
    { NULL, NULL },
};

static const luaL_Reg stream_meta[] = {
    { "__gc", stream_close },
    { "__close", stream_close },
    { "__tostring", stream_tostring },
    { NULL, NULL },
};

static const luaL_Reg http_funcs[] = {
    { "request", http_request },
    { "open", http_open },
    { NULL, NULL },
};

int luaopen_host_core_http(lua_State *L)
{
    if (luaL_newmetatable(L, STREAM_MT)) { /* busted re-requires modules per spec file */
        luaL_setfuncs(L, stream_meta, 0);
        luaL_newlib(L, stream_methods);
        lua_pushcclosure(L, stream_index, 1);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    luaL_newlib(L, http_funcs);
    ph_http_server_open(L);
    return 1;
}
