/* test_http_parse.c - tests of host/net/ph_http_parse.c: every rule, incremental feeds, fuzzing. */
#include "check.h"
#include "http_snap.h"
#include "ph_http_parse.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Under AddressSanitizer, bytes past the length we pass are poisoned, so a parser that peeks
 * beyond len fails loudly even inside a larger allocation. */
#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif
#ifdef TEST_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n)   ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n)   ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (cond) {                                                                                \
            passed++;                                                                              \
        } else {                                                                                   \
            failed++;                                                                              \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
        }                                                                                          \
    } while (0)

/* ---- helpers ------------------------------------------------------------------------------ */

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* A copy in an allocation of exactly n bytes, so any read past the end is caught. */
static char *dup_exact(const char *s, size_t n)
{
    char *p = xmalloc(n);
    if (n)
        memcpy(p, s, n);
    return p;
}

typedef struct {
    size_t max_head, max_headers, max_body;
} Limits;

static void req_init(PhHttpRequest *req, const Limits *lim)
{
    memset(req, 0, sizeof *req);
    if (lim) {
        req->max_head = lim->max_head;
        req->max_headers = lim->max_headers;
        req->max_body = lim->max_body;
    }
}

/* The request parsed by the last P()/PL(); its pointers stay valid until the next call. */
static PhHttpRequest R;
static char *R_buf;

static int PLN(const char *s, size_t n, size_t max_head, size_t max_headers, size_t max_body)
{
    Limits lim = { max_head, max_headers, max_body };

    free(R_buf);
    R_buf = dup_exact(s, n);
    req_init(&R, &lim);
    return ph_http_parse_head(&R, R_buf, n);
}

static int PL(const char *s, size_t max_head, size_t max_headers, size_t max_body)
{
    return PLN(s, strlen(s), max_head, max_headers, max_body);
}

static int P(const char *s)
{
    return PL(s, 0, 0, 0);
}

static int PN(const char *s, size_t n)
{
    return PLN(s, n, 0, 0, 0);
}

/* A literal that holds NUL bytes. */
#define PLIT(lit) PN((lit), sizeof(lit) - 1)

static int span_is(const char *p, size_t n, const char *want)
{
    return p != NULL && n == strlen(want) && memcmp(p, want, n) == 0;
}

/* Value of the first header called name in R, or NULL. */
static int header_is(const char *name, const char *want)
{
    int i = ph_http_header_find(&R, name);
    return i >= 0 && span_is(R.headers[i].value, R.headers[i].value_len, want);
}


static int is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int ieq(const char *s, size_t n, const char *lit)
{
    size_t i;

    if (n != strlen(lit))
        return 0;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + 32);
        if (c != (unsigned char)lit[i])
            return 0;
    }
    return 1;
}

static int rc_allowed(int rc, size_t len)
{
    return (rc >= 0 && (size_t)rc <= len) || rc == -400 || rc == -413 || rc == -431 || rc == -501 ||
           rc == -505;
}

/* Whatever the input, an accepted head must be unambiguous: this re-checks the promises
 * independently of the parser's code. Returns 1 when they hold. */
static int accepted_ok(const PhHttpRequest *r, const char *base, int rc, size_t max_body)
{
    const char *end = base + rc;
    size_t i, j;
    int hosts = 0, cls = 0, tes = 0;

    if (r->method < base || r->method + r->method_len > end || r->method_len == 0)
        return 0;
    for (j = 0; j < r->method_len; j++)
        if (!is_tchar((unsigned char)r->method[j]))
            return 0;
    if (r->target < base || r->target + r->target_len > end || r->target_len == 0)
        return 0;
    for (j = 0; j < r->target_len; j++)
        if ((unsigned char)r->target[j] <= 0x20 || (unsigned char)r->target[j] >= 0x7f)
            return 0;
    if (r->minor_version != 0 && r->minor_version != 1)
        return 0;
    if (rc < 4 || memcmp(end - 4, "\r\n\r\n", 4) != 0)
        return 0;
    if (r->num_headers > PH_HTTP_MAX_HEADERS)
        return 0;
    for (i = 0; i < r->num_headers; i++) {
        const PhHttpHeader *h = &r->headers[i];
        if (h->name < base || h->name + h->name_len > end || h->name_len == 0)
            return 0;
        if (h->value < base || h->value + h->value_len > end)
            return 0;
        for (j = 0; j < h->name_len; j++)
            if (!is_tchar((unsigned char)h->name[j]))
                return 0;
        for (j = 0; j < h->value_len; j++) {
            unsigned char c = (unsigned char)h->value[j];
            if ((c < 0x20 && c != '\t') || c == 0x7f)
                return 0;
        }
        if (h->value_len &&
            (h->value[0] == ' ' || h->value[0] == '\t' || h->value[h->value_len - 1] == ' ' ||
             h->value[h->value_len - 1] == '\t'))
            return 0;
        hosts += ieq(h->name, h->name_len, "host");
        cls += ieq(h->name, h->name_len, "content-length");
        tes += ieq(h->name, h->name_len, "transfer-encoding");
    }
    if (hosts > 1 || (r->minor_version == 1 && hosts == 0))
        return 0;
    if (tes && (cls || !r->chunked || r->minor_version == 0))
        return 0;
    if (!tes && r->chunked)
        return 0;
    if (cls && (r->content_length < 0 || (unsigned long long)r->content_length > max_body))
        return 0;
    if (!cls && r->content_length != -1)
        return 0;
    return 1;
}

static void dump(const char *what, const char *s, size_t n)
{
    size_t i;

    fprintf(stderr, "%s (%zu bytes): \"", what, n);
    for (i = 0; i < n && i < 400; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
            fputc(c, stderr);
        else
            fprintf(stderr, "\\x%02x", c);
    }
    fprintf(stderr, "%s\"\n", n > 400 ? "..." : "");
}

/* ---- head: feeding strategies --------------------------------------------------------------- */

/* All at once, in an exact-size copy. */
static void feed_whole(const char *s, size_t n, const Limits *lim, Snap *out)
{
    PhHttpRequest req;
    char *b = dup_exact(s, n);
    int rc;

    req_init(&req, lim);
    rc = ph_http_parse_head(&req, b, n);
    snap(out, rc, &req, b);
    free(b);
}

/* One buffer that fills up in steps: the resume path. step 0 means random steps. */
static void feed_grow(const char *s, size_t n, const Limits *lim, size_t step, Snap *out)
{
    PhHttpRequest req;
    char *b = dup_exact(s, n);
    size_t p = 0;
    int rc;

    req_init(&req, lim);
    for (;;) {
        POISON(b + p, n - p);
        rc = ph_http_parse_head(&req, b, p);
        UNPOISON(b + p, n - p);
        if (rc != 0 || p == n)
            break;
        p += step ? step : 1 + rnd(16);
        if (p > n)
            p = n;
    }
    snap(out, rc, &req, b);
    free(b);
}

/* Byte by byte, each time in a new exact-size buffer: the restart path. */
static void feed_moved(const char *s, size_t n, const Limits *lim, Snap *out)
{
    PhHttpRequest req;
    char *prev = NULL, *b = NULL;
    size_t p;
    int rc = 0;

    req_init(&req, lim);
    for (p = 0; p <= n; p++) {
        b = dup_exact(s, p); /* allocated while prev lives, so it is another address */
        free(prev);
        prev = b;
        rc = ph_http_parse_head(&req, b, p);
        if (rc != 0)
            break;
    }
    snap(out, rc, &req, b);
    free(b);
}

/* Every feeding strategy gives the same result, and an accepted head keeps its promises.
 * Returns 1 when all held; on failure it prints the input once. */
static int head_consistent(const char *s, size_t n, const Limits *lim, int moved)
{
    static Snap whole, other;
    PhHttpRequest req;
    char *b;
    int ok = 1, rc;
    size_t max_body = lim && lim->max_body ? lim->max_body : PH_HTTP_DEFAULT_MAX_BODY;

    feed_whole(s, n, lim, &whole);
    ok &= rc_allowed(whole.rc, n);
    feed_grow(s, n, lim, 1, &other);
    ok &= snap_eq(&whole, &other);
    feed_grow(s, n, lim, 0, &other);
    ok &= snap_eq(&whole, &other);
    if (moved) {
        feed_moved(s, n, lim, &other);
        ok &= snap_eq(&whole, &other);
    }
    if (whole.rc > 0) {
        b = dup_exact(s, n);
        req_init(&req, lim);
        rc = ph_http_parse_head(&req, b, n);
        ok &= accepted_ok(&req, b, rc, max_body);
        free(b);
    }
    if (!ok)
        dump("inconsistent head", s, n);
    return ok;
}

/* ---- head: rules ------------------------------------------------------------------------------
 */

static void test_basic(void)
{
    const char *s = "GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n";

    CHECK(P(s) == (int)strlen(s));
    CHECK(span_is(R.method, R.method_len, "GET"));
    CHECK(span_is(R.target, R.target_len, "/index.html?q=1"));
    CHECK(R.minor_version == 1);
    CHECK(R.num_headers == 2);
    CHECK(span_is(R.headers[0].name, R.headers[0].name_len, "Host"));
    CHECK(span_is(R.headers[0].value, R.headers[0].value_len, "example.com"));
    CHECK(span_is(R.headers[1].name, R.headers[1].name_len, "User-Agent"));
    CHECK(R.content_length == -1);
    CHECK(R.chunked == 0);
    CHECK(R.keep_alive == 1);
    CHECK(R.expect_continue == 0);
    /* The limits survive a parse. */
    CHECK(PL(s, 1000, 7, 99) > 0 && R.max_head == 1000 && R.max_headers == 7 && R.max_body == 99);

    /* Body bytes after the head are not consumed. */
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\n\r\nBODY") == 27);
    CHECK(P("GET / HTTP/1.0\r\n\r\n") == 18 && R.minor_version == 0 && R.num_headers == 0);
    CHECK(R.keep_alive == 0);
    CHECK(P("") == 0);
}

static void test_request_line(void)
{
    CHECK(P("M-SEARCH * HTTP/1.1\r\nHost: x\r\n\r\n") > 0);
    CHECK(span_is(R.method, R.method_len, "M-SEARCH") && span_is(R.target, R.target_len, "*"));
    CHECK(P("!#$%&'*+-.^_`|~09azAZ / HTTP/1.1\r\nHost: x\r\n\r\n") > 0);
    CHECK(P("get / HTTP/1.1\r\nHost: x\r\n\r\n") > 0); /* a token; meaning is the router's */
    CHECK(P("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n") > 0);
    CHECK(span_is(R.target, R.target_len, "example.com:443"));
    CHECK(P("GET http://a.example/b?c#d HTTP/1.1\r\nHost: a.example\r\n\r\n") > 0);
    CHECK(span_is(R.target, R.target_len, "http://a.example/b?c#d"));

    /* Method: a non-empty token followed by exactly one SP. */
    CHECK(P(" / HTTP/1.1\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GE(T / HTTP/1.1\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GE\x01T / HTTP/1.1\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("G\xc3\xa9T / HTTP/1.1\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET\t/ HTTP/1.1\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET\r\nHost: x\r\n\r\n") == -400);
    CHECK(PLIT("G\0T / HTTP/1.1\r\nHost: x\r\n\r\n") == -400);

    /* Target: non-empty, no spaces, controls or bytes >= 0x7f. */
    CHECK(P("GET  / HTTP/1.1\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET  HTTP/1.1\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET / x HTTP/1.1\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET /a\tb HTTP/1.1\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET /a\x01 HTTP/1.1\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET /a\x1f HTTP/1.1\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET /a\x7f HTTP/1.1\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET /a\x80 HTTP/1.1\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n") == -400);
    CHECK(PLIT("GET /a\0b HTTP/1.1\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET /\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET / \r\nHost: x\r\n\r\n") == -400);

    /* Version: exactly HTTP/1.0 or HTTP/1.1; other digits 505; anything else 400. */
    CHECK(P("GET / HTTP/1.0\r\n\r\n") > 0 && R.minor_version == 0);
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\n\r\n") > 0 && R.minor_version == 1);
    CHECK(P("GET / HTTP/2.0\r\nHost: x\r\n\r\n") == -505);
    CHECK(P("GET / HTTP/0.9\r\n\r\n") == -505);
    CHECK(P("GET / HTTP/1.2\r\nHost: x\r\n\r\n") == -505);
    CHECK(P("GET / HTTP/3.1\r\nHost: x\r\n\r\n") == -505);
    CHECK(P("GET / HTTP/9.9\r\nHost: x\r\n\r\n") == -505);
    CHECK(P("GET / HTTP/1.10\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/01.1\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/2\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET / http/1.1\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET / HTTPS/1.1\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1 \r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/a.b\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1,1\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1x\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET / \r\n\r\n") == -400);
    /* A 505 is decided on the request line, before any header is read. */
    CHECK(P("GET / HTTP/2.0\r\n") == -505);
}

static void test_line_endings(void)
{
    /* Bare LF is refused everywhere: a front end could split the lines differently. */
    CHECK(P("GET / HTTP/1.1\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost: x\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\n\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\nX: a\nb\r\n\r\n") == -400);
    CHECK(P("\nGET / HTTP/1.1\r\nHost: x\r\n\r\n") == -400);
    /* A bare LF is refused as soon as it arrives, even before its line is complete. */
    CHECK(P("GET / HTTP/1.1\r\nHost: x\n") == -400);
    /* Bare CR. */
    CHECK(P("GET /\r HTTP/1.1\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\r\nHost: x\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\n\r\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\n\rX") == -400);
    /* A CR at the very end may still get its LF. */
    CHECK(P("GET / HTTP/1.1\r") == 0);
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\n\r") == 0);
    /* Empty lines before the request line are skipped and counted (RFC 9112 2.2). */
    CHECK(P("\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n") == 29);
    CHECK(span_is(R.method, R.method_len, "GET"));
    CHECK(P("\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n") == 31);
    CHECK(P("\r\n") == 0);
    CHECK(P("\r\n\r\n") == 0);
}

static void test_header_syntax(void)
{
    /* Names are tokens, the colon comes right after. */
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost : x\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost\t: x\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\nX(y): v\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\nX\xc3\xa9: v\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\nX/Y: v\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\n!#$%&'*+-.^_`|~: v\r\n\r\n") > 0);

    /* Values: OWS trimmed both sides, inner whitespace kept, may be empty. */
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\nX-A:   v  \t\r\nX-B:v\r\nX-C:\r\nX-D: \t \r\n"
            "X-E: a \t b\r\n\r\n") > 0);
    CHECK(header_is("x-a", "v"));
    CHECK(header_is("X-B", "v"));
    CHECK(header_is("X-C", "") && header_is("X-D", ""));
    CHECK(header_is("X-E", "a \t b"));
    CHECK(R.num_headers == 6);
    /* obs-text is allowed in values. */
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\nX-U: caf\xc3\xa9 \x80\xff\r\n\r\n") > 0);
    CHECK(header_is("X-U", "caf\xc3\xa9 \x80\xff"));

    /* obs-fold, and whitespace before the first header. */
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\n Host: x\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\n\tHost: x\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\n \r\n\r\n") == -400);

    /* Control characters other than HT. */
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\nX: a\x01 b\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\nX: a\x1f\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\nX: a\x7f\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\nX: \x0b\r\n\r\n") == -400);
    CHECK(PLIT("GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\nX: a\tb\r\n\r\n") > 0 && header_is("x", "a\tb"));

    /* header_find. */
    CHECK(P("GET / HTTP/1.1\r\nHost: x\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\n") > 0);
    CHECK(ph_http_header_find(&R, "X-DUP") == 1);
    CHECK(ph_http_header_find(&R, "host") == 0);
    CHECK(ph_http_header_find(&R, "X-Du") == -1);
    CHECK(ph_http_header_find(&R, "X-Dupe") == -1);
    CHECK(ph_http_header_find(&R, "") == -1);
}

static void test_content_length(void)
{
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n") > 0);
    CHECK(R.content_length == 0);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\ncontent-LENGTH:  5 \r\n\r\nhello") == 49);
    CHECK(R.content_length == 5 && R.chunked == 0);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 007\r\n\r\n") > 0);
    CHECK(R.content_length == 7);

    /* Digits only. */
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n") == -400);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n") == -400);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5 5\r\n\r\n") == -400);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5,5\r\n\r\n") == -400);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n") == -400);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\n") == -400);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5.0\r\n\r\n") == -400);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5a\r\n\r\n") == -400);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n") == -400);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n") == -400);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \xd9\xa5\r\n\r\n") == -400);

    /* No overflow: LLONG_MAX parses (and is too large a body), one more is malformed. */
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9223372036854775807\r\n\r\n") == -413);
    CHECK(PL("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9223372036854775807\r\n\r\n", 0, 0,
             SIZE_MAX) > 0);
    CHECK(R.content_length == LLONG_MAX);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9223372036854775808\r\n\r\n") == -400);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551621\r\n\r\n") == -400);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999999\r\n\r\n") ==
          -400);
    CHECK(PL("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 00000000000000000000000000001\r\n"
             "\r\n",
             0, 0, 0) > 0);
    CHECK(R.content_length == 1);

    /* Duplicates: only the same value. */
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n") > 0);
    CHECK(R.content_length == 5);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 05\r\n\r\n") > 0);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n") ==
          -400);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\ncontent-length: 1\r\n\r\n") ==
          -400);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: x\r\n\r\n") ==
          -400);

    /* max_body, default 8 MiB. */
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8388608\r\n\r\n") > 0);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8388609\r\n\r\n") == -413);
    CHECK(PL("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n", 0, 0, 10) > 0);
    CHECK(PL("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n", 0, 0, 10) == -413);
    /* In HTTP/1.0 too. */
    CHECK(P("POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\n") > 0 && R.content_length == 3);
}

static void test_transfer_encoding(void)
{
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n") > 0);
    CHECK(R.chunked == 1 && R.content_length == -1);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\ntransfer-encoding: CHUNKED\r\n\r\n") > 0);
    CHECK(R.chunked == 1);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:  Chunked \t\r\n\r\n") > 0);
    CHECK(R.chunked == 1);

    /* Codings we do not implement. */
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n") == -501);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n") == -501);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n") == -501);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n"
            "Transfer-Encoding: chunked\r\n\r\n") == -501);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunkedx\r\n\r\n") == -501);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked;q=1\r\n\r\n") == -501);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \"chunked\"\r\n\r\n") == -501);

    /* Framing nobody can agree on. */
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n") == -400);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n") == -400);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            "Transfer-Encoding: chunked\r\n\r\n") == -400);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            "Transfer-Encoding: gzip\r\n\r\n") == -400);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n\r\n") == -400);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked,\r\n\r\n") == -400);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ,chunked\r\n\r\n") == -400);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            "Content-Length: 5\r\n\r\n") == -400);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            "Transfer-Encoding: chunked\r\n\r\n") == -400);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
            "Transfer-Encoding: gzip\r\n\r\n") == -400);
    CHECK(P("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n") == -400);
    CHECK(P("POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n") == -400);
    /* The name must be exact: this is just another header. */
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encodings: chunked\r\n\r\n") > 0);
    CHECK(R.chunked == 0);
}

static void test_host(void)
{
    CHECK(P("GET / HTTP/1.1\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nX: y\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.0\r\n\r\n") > 0);
    CHECK(P("GET / HTTP/1.1\r\nHOST: a.example:8080\r\n\r\n") > 0);
    CHECK(header_is("host", "a.example:8080"));
    CHECK(P("GET / HTTP/1.1\r\nHost:\r\n\r\n") > 0); /* allowed when the target has none */
    CHECK(P("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost: a b\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost: a\tb\r\n\r\n") == -400);
    CHECK(P("GET / HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n") == -400);
}

static void test_connection(void)
{
    static const struct {
        const char *version, *headers;
        int keep_alive;
    } cases[] = {
        { "1.1", "", 1 },
        { "1.1", "Connection: close\r\n", 0 },
        { "1.1", "Connection: Close\r\n", 0 },
        { "1.1", "Connection: keep-alive\r\n", 1 },
        { "1.1", "Connection: Upgrade, CLOSE\r\n", 0 },
        { "1.1", "Connection: keep-alive ,close\r\n", 0 },
        { "1.1", "Connection: closed\r\n", 1 },
        { "1.1", "Connection: foo\r\nConnection: close\r\n", 0 },
        { "1.1", "Connection:\r\n", 1 },
        { "1.0", "", 0 },
        { "1.0", "Connection: keep-alive\r\n", 1 },
        { "1.0", "Connection: Keep-Alive\r\n", 1 },
        { "1.0", "Connection: Upgrade,keep-alive\r\n", 1 },
        { "1.0", "Connection: keep-alive, close\r\n", 0 },
        { "1.0", "Connection: close\r\nConnection: keep-alive\r\n", 0 },
        { "1.0", "Connection: keep-alives\r\n", 0 },
        { "1.0", "Keep-Alive: timeout=5\r\n", 0 },
    };
    char buf[256];
    size_t i;

    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(buf, sizeof buf, "GET / HTTP/%s\r\nHost: x\r\n%s\r\n", cases[i].version,
                 cases[i].headers);
        CHECK(P(buf) > 0 && R.keep_alive == cases[i].keep_alive);
    }
}

static void test_expect(void)
{
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n") > 0);
    CHECK(R.expect_continue == 1);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nexpect:  100-Continue \r\n\r\n") > 0);
    CHECK(R.expect_continue == 1);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\n\r\n") > 0 && R.expect_continue == 0);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n\r\n") > 0);
    CHECK(R.expect_continue == 0);
    CHECK(P("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continuex\r\n\r\n") > 0);
    CHECK(R.expect_continue == 0);
    /* RFC 9110 10.1.1: ignored from HTTP/1.0 clients. */
    CHECK(P("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n") > 0 && R.expect_continue == 0);
}

/* A valid head of exactly n bytes (n >= 40): one header padded to fit. */
static char *head_of_size(size_t n)
{
    const char *pre = "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ";
    size_t pl = strlen(pre);
    char *s = xmalloc(n + 1);

    memcpy(s, pre, pl);
    memset(s + pl, 'a', n - pl - 4);
    memcpy(s + n - 4, "\r\n\r\n", 4);
    s[n] = '\0';
    return s;
}

static void test_limits(void)
{
    char *s = head_of_size(100), *big;
    char buf[8192];
    size_t i, n;

    CHECK(PL(s, 100, 0, 0) == 100);
    CHECK(PL(s, 99, 0, 0) == -431);
    CHECK(PLN(s, 99, 100, 0, 0) == 0);
    CHECK(PLN(s, 98, 99, 0, 0) == 0);
    CHECK(PLN(s, 99, 99, 0, 0) == -431); /* the final CR arrived, the LF would not fit */
    CHECK(PLN(s, 97, 98, 0, 0) == 0);
    CHECK(PLN(s, 98, 98, 0, 0) == -431);
    /* Bytes after a head that fits do not count. */
    big = xmalloc(300);
    memcpy(big, s, 100);
    memset(big + 100, 'Z', 200);
    CHECK(PLN(big, 300, 100, 0, 0) == 100);
    free(big);
    free(s);

    /* The default, 16384 bytes. */
    s = head_of_size(16384);
    CHECK(P(s) == 16384);
    CHECK(PN(s, 16383) == 0);
    free(s);
    s = head_of_size(16385);
    CHECK(P(s) == -431);
    CHECK(PN(s, 16383) == 0);
    CHECK(PN(s, 16384) == -431);
    free(s);
    /* max_head is capped at INT_MAX because the count is returned as an int. */
    CHECK(PL("GET / HTTP/1.1\r\nHost: x\r\n\r\n", SIZE_MAX, 0, 0) == 27);
    /* Many empty lines before the request line count too. */
    s = xmalloc(20001);
    for (i = 0; i < 10000; i++)
        memcpy(s + 2 * i, "\r\n", 2);
    CHECK(PN(s, 16382) == 0);
    CHECK(PN(s, 20000) == -431);
    free(s);

    /* Header count: 100 by default and at most; lower when asked. */
    n = (size_t)snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: x\r\n");
    for (i = 1; i < 100; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "X-%zu: v\r\n", i);
    memcpy(buf + n, "\r\n", 3);
    CHECK(P(buf) > 0 && R.num_headers == 100);
    CHECK(PL(buf, 0, 1000, 0) > 0 && R.num_headers == 100);
    CHECK(PL(buf, 0, 99, 0) == -431);
    n += (size_t)snprintf(buf + n, sizeof buf - n, "X-last: v\r\n\r\n");
    CHECK(P(buf) == -431);
    CHECK(PL(buf, 0, 1000, 0) == -431);
    CHECK(PL("GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\n\r\n", 0, 2, 0) > 0);
    CHECK(PL("GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\n\r\n", 0, 2, 0) == -431);
    /* Empty lines before the request line are not headers. */
    CHECK(PL("\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 0, 1, 0) > 0);
}

static void test_reason(void)
{
    static const int known[] = { 200, 201, 204, 400, 401, 403, 404, 405, 408, 409,
                                 413, 415, 429, 431, 500, 501, 502, 503, 504, 505 };
    size_t i;
    int ok = 1;

    for (i = 0; i < sizeof known / sizeof known[0]; i++)
        ok &= strcmp(ph_http_reason(known[i]), "Unknown") != 0;
    CHECK(ok);
    CHECK(strcmp(ph_http_reason(200), "OK") == 0);
    CHECK(strcmp(ph_http_reason(100), "Continue") == 0);
    CHECK(strcmp(ph_http_reason(404), "Not Found") == 0);
    CHECK(strcmp(ph_http_reason(431), "Request Header Fields Too Large") == 0);
    CHECK(strcmp(ph_http_reason(505), "HTTP Version Not Supported") == 0);
    CHECK(strcmp(ph_http_reason(299), "Unknown") == 0);
    CHECK(strcmp(ph_http_reason(-400), "Unknown") == 0);
}

/* ---- head: incremental feeding ------------------------------------------------------------ */

static const char *valid_heads[] = {
    "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    "POST /submit?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n"
    "\r\nhello",
    "PUT /x HTTP/1.1\r\nHost: h:8080\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n"
    "\r\n5\r\nhello\r\n0\r\n\r\n",
    "GET http://a/b HTTP/1.0\r\nConnection: keep-alive\r\nX-Empty:\r\nX-Spaces: \t a b \t\r\n\r\n",
    "\r\nOPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\n\r\n",
    "DELETE /a%20b HTTP/1.1\r\nhOsT: x\r\nX-Obs: caf\xc3\xa9\r\nContent-Length: 000\r\n"
    "Content-Length: 0\r\n\r\n",
};

static const char *invalid_heads[] = {
    "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "GET / HTTP/2.0\r\nHost: x\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: x\r\nX: 1\nY: 2\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
    "GET / HTTP/1.1\r\nX: 1\r\n\r\n",
};

static void test_incremental(void)
{
    Limits small = { 60, 3, 10 };
    size_t i, p, n;
    int ok;

    for (i = 0; i < sizeof valid_heads / sizeof valid_heads[0]; i++) {
        const char *s = valid_heads[i];
        Snap whole;
        PhHttpRequest req;

        n = strlen(s);
        feed_whole(s, n, NULL, &whole);
        CHECK(whole.rc > 0);
        CHECK(head_consistent(s, n, NULL, 1));
        CHECK(head_consistent(s, n, &small, 1));
        /* Every truncation of the head needs more data, with a fresh parser... */
        ok = 1;
        for (p = 0; p < (size_t)whole.rc; p++) {
            ok &= PN(s, p) == 0;
        }
        CHECK(ok);
        /* ...and with one that resumes. */
        ok = 1;
        req_init(&req, NULL);
        for (p = 0; p < (size_t)whole.rc; p++)
            ok &= ph_http_parse_head(&req, s, p) == 0;
        ok &= ph_http_parse_head(&req, s, n) == whole.rc;
        CHECK(ok);
    }
    for (i = 0; i < sizeof invalid_heads / sizeof invalid_heads[0]; i++) {
        Snap whole;
        n = strlen(invalid_heads[i]);
        feed_whole(invalid_heads[i], n, NULL, &whole);
        CHECK(whole.rc < 0);
        CHECK(head_consistent(invalid_heads[i], n, NULL, 1));
    }
}

static void test_resume_and_reset(void)
{
    const char *a = "GET /aaaa HTTP/1.1\r\nHost: one\r\nX: 1\r\n\r\n";
    const char *b = "GET /bbbb HTTP/1.1\r\nHost: two\r\n\r\n";
    PhHttpRequest req;
    char buf[128], *moved;

    /* The buffer moves between calls (as after a realloc): the parser starts over. */
    req_init(&req, NULL);
    memcpy(buf, a, strlen(a));
    CHECK(ph_http_parse_head(&req, buf, 25) == 0);
    moved = dup_exact(a, strlen(a));
    memset(buf, 'Z', sizeof buf);
    CHECK(ph_http_parse_head(&req, moved, strlen(a)) == (int)strlen(a));
    CHECK(span_is(req.target, req.target_len, "/aaaa") && req.num_headers == 2);
    CHECK(req.headers[0].value >= moved && req.headers[1].value < moved + strlen(a));
    free(moved);

    /* Reset forgets a partial parse, so other bytes may be parsed in the same buffer. */
    req_init(&req, NULL);
    req.max_headers = 5;
    memcpy(buf, a, strlen(a));
    CHECK(ph_http_parse_head(&req, buf, 30) == 0);
    ph_http_request_reset(&req);
    CHECK(req.max_headers == 5);
    memcpy(buf, b, strlen(b));
    CHECK(ph_http_parse_head(&req, buf, strlen(b)) == (int)strlen(b));
    CHECK(span_is(req.target, req.target_len, "/bbbb"));
    CHECK(req.num_headers == 1 && span_is(req.headers[0].value, req.headers[0].value_len, "two"));

    /* After a result the next call starts afresh even in the same buffer. */
    memcpy(buf, a, strlen(a));
    CHECK(ph_http_parse_head(&req, buf, strlen(a)) == (int)strlen(a));
    CHECK(span_is(req.target, req.target_len, "/aaaa") && req.num_headers == 2);
    memcpy(buf, "GET / HTTP/9.9\r\n", 16);
    CHECK(ph_http_parse_head(&req, buf, 16) == -505);
    CHECK(ph_http_parse_head(&req, buf, 16) == -505);
    /* A shorter len than before also starts over. */
    req_init(&req, NULL);
    memcpy(buf, a, strlen(a));
    CHECK(ph_http_parse_head(&req, buf, 30) == 0);
    CHECK(ph_http_parse_head(&req, buf, 10) == 0);
    CHECK(ph_http_parse_head(&req, buf, strlen(a)) == (int)strlen(a));
    CHECK(ph_http_parse_head(&req, NULL, 0) == 0);
}

static void test_pipelined(void)
{
    const char *two = "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: y\r\n"
                      "Connection: close\r\n\r\n";
    const char *post = "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /q "
                       "HTTP/1.1\r\nHost: x\r\n\r\n";
    const char *chunk = "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                        "3\r\nabc\r\n0\r\n\r\nGET /d HTTP/1.0\r\n\r\n";
    PhHttpRequest req;
    PhChunked c;
    char *b, out[64];
    size_t n = strlen(two), off, used, made;
    int rc;

    b = dup_exact(two, n);
    req_init(&req, NULL);
    rc = ph_http_parse_head(&req, b, n);
    CHECK(rc == 28 && span_is(req.target, req.target_len, "/a") && req.keep_alive == 1);
    off = (size_t)rc;
    rc = ph_http_parse_head(&req, b + off, n - off);
    CHECK(rc > 0 && off + (size_t)rc == n && span_is(req.target, req.target_len, "/b"));
    CHECK(req.keep_alive == 0);
    CHECK(span_is(req.headers[0].value, req.headers[0].value_len, "y"));
    free(b);

    n = strlen(post);
    b = dup_exact(post, n);
    req_init(&req, NULL);
    rc = ph_http_parse_head(&req, b, n);
    CHECK(rc > 0 && req.content_length == 5);
    off = (size_t)rc;
    CHECK(memcmp(b + off, "hello", 5) == 0);
    off += 5;
    rc = ph_http_parse_head(&req, b + off, n - off);
    CHECK(rc > 0 && off + (size_t)rc == n && span_is(req.target, req.target_len, "/q"));
    free(b);

    n = strlen(chunk);
    b = dup_exact(chunk, n);
    req_init(&req, NULL);
    rc = ph_http_parse_head(&req, b, n);
    CHECK(rc > 0 && req.chunked == 1);
    off = (size_t)rc;
    ph_chunked_init(&c, 0, 0);
    CHECK(ph_chunked_feed(&c, b + off, n - off, out, &used, &made) == 1);
    CHECK(made == 3 && memcmp(out, "abc", 3) == 0);
    off += used;
    rc = ph_http_parse_head(&req, b + off, n - off);
    CHECK(rc > 0 && off + (size_t)rc == n && span_is(req.target, req.target_len, "/d"));
    CHECK(req.minor_version == 0);
    free(b);
}

/* ---- head: fuzzing -------------------------------------------------------------------------- */

static const char specials[] = "\r\n \t:,;=\"0123456789aAzZ-/\x00\x01\x7f\x80\xff";

static unsigned char random_byte(void)
{
    if (rnd(2))
        return (unsigned char)specials[rnd(sizeof specials - 1)];
    return (unsigned char)rnd(256);
}

/* Apply 1..4 random edits to s[0..*n) in buf (capacity cap). */
static void mutate(char *buf, size_t *n, size_t cap)
{
    static const char *snippets[] = {
        "\r\n",
        "\n",
        "\r",
        " ",
        "Transfer-Encoding: chunked\r\n",
        "Content-Length: 3\r\n",
        "Host: h\r\n",
        "Connection: close\r\n",
        "HTTP/1.0",
        ", chunked",
        "\r\n\r\n",
        "0\r\n\r\n",
        ";ext=1",
        "ffffffffffffffffff",
    };
    size_t edits = 1 + rnd(4), e, at, len;

    for (e = 0; e < edits; e++) {
        at = rnd(*n + 1);
        switch (rnd(6)) {
        case 0: /* replace a byte */
            if (*n)
                buf[rnd(*n)] = (char)random_byte();
            break;
        case 1: /* insert a byte */
            if (*n < cap) {
                memmove(buf + at + 1, buf + at, *n - at);
                buf[at] = (char)random_byte();
                (*n)++;
            }
            break;
        case 2: /* delete a run */
            if (at < *n) {
                len = 1 + rnd(*n - at < 8 ? *n - at : 8);
                memmove(buf + at, buf + at + len, *n - at - len);
                *n -= len;
            }
            break;
        case 3: { /* insert a snippet */
            const char *sn = snippets[rnd(sizeof snippets / sizeof snippets[0])];
            len = strlen(sn);
            if (*n + len <= cap) {
                memmove(buf + at + len, buf + at, *n - at);
                memcpy(buf + at, sn, len);
                *n += len;
            }
            break;
        }
        case 4: /* duplicate a run */
            if (at < *n) {
                size_t from = rnd(*n);
                len = 1 + rnd(32);
                if (from + len > *n)
                    len = *n - from;
                if (*n + len <= cap) {
                    char tmp[32];
                    memcpy(tmp, buf + from, len);
                    memmove(buf + at + len, buf + at, *n - at);
                    memcpy(buf + at, tmp, len);
                    *n += len;
                }
            }
            break;
        default: /* flip case */
            if (*n) {
                size_t k = rnd(*n);
                buf[k] = (char)(buf[k] ^ 0x20);
            }
            break;
        }
    }
}

static void test_fuzz_head(void)
{
    static char buf[1024];
    size_t iter, n, bad = 0, accepted = 0, rejected = 0;
    Limits lim;

    for (iter = 0; iter < 30000; iter++) {
        const char *base = valid_heads[rnd(sizeof valid_heads / sizeof valid_heads[0])];
        n = strlen(base);
        memcpy(buf, base, n);
        mutate(buf, &n, sizeof buf);
        memset(&lim, 0, sizeof lim);
        if (rnd(4) == 0) {
            lim.max_head = 1 + rnd(120);
            lim.max_headers = rnd(5);
            lim.max_body = rnd(10);
        }
        if (!head_consistent(buf, n, &lim, iter % 8 == 0))
            bad++;
        else {
            Snap s;
            feed_whole(buf, n, &lim, &s);
            if (s.rc > 0)
                accepted++;
            else if (s.rc < 0)
                rejected++;
        }
    }
    CHECK(bad == 0);
    /* The mutations exercise both outcomes. */
    CHECK(accepted > 1000 && rejected > 1000);

    bad = 0;
    for (iter = 0; iter < 10000; iter++) {
        size_t i;
        n = rnd(300);
        if (rnd(2)) {
            memcpy(buf, "GET / HTTP/1.1\r\n", 16);
            i = 16;
        } else {
            i = 0;
        }
        for (; i < n; i++)
            buf[i] = (char)random_byte();
        if (n < 16 && i > n)
            n = i;
        if (!head_consistent(buf, n, NULL, iter % 8 == 0))
            bad++;
    }
    CHECK(bad == 0);
}

/* ---- chunked bodies ----------------------------------------------------------------------- */

typedef struct {
    int rc;
    size_t consumed;
    size_t produced;
    char out[2048];
} ChunkRes;

/* All at once in an exact-size copy; in place when inplace. */
static void chunk_whole(const char *s, size_t n, size_t max_body, size_t max_trailer, int inplace,
                        ChunkRes *r)
{
    PhChunked c;
    char *b = dup_exact(s, n), *out = inplace ? b : xmalloc(n);

    ph_chunked_init(&c, max_body, max_trailer);
    r->rc = ph_chunked_feed(&c, b, n, out, &r->consumed, &r->produced);
    if (r->produced <= sizeof r->out)
        memcpy(r->out, out, r->produced);
    if (!inplace)
        free(out);
    free(b);
}

/* In pieces of step bytes (0: random sizes), each in its own exact-size buffer, decoded in
 * place; keeps feeding after the end to check that nothing more is consumed. */
static void chunk_pieces(const char *s, size_t n, size_t max_body, size_t max_trailer, size_t step,
                         ChunkRes *r)
{
    PhChunked c;
    size_t off = 0;

    ph_chunked_init(&c, max_body, max_trailer);
    r->rc = 0;
    r->consumed = r->produced = 0;
    while (off < n) {
        size_t len = step ? step : 1 + rnd(20), used, made;
        char *b;
        if (len > n - off)
            len = n - off;
        b = dup_exact(s + off, len);
        r->rc = ph_chunked_feed(&c, b, len, b, &used, &made);
        if (r->produced + made <= sizeof r->out)
            memcpy(r->out + r->produced, b, made);
        r->consumed += used;
        r->produced += made;
        free(b);
        off += len;
    }
    if (n == 0) {
        size_t used, made;
        r->rc = ph_chunked_feed(&c, NULL, 0, NULL, &used, &made);
    }
}

static int chunk_res_eq(const ChunkRes *a, const ChunkRes *b)
{
    return a->rc == b->rc && a->consumed == b->consumed && a->produced == b->produced &&
           (a->produced > sizeof a->out || memcmp(a->out, b->out, a->produced) == 0);
}

/* Decode s whole; 1 when rc, the output and the bytes consumed are as expected. */
static int chunk_is(const char *s, int want_rc, const char *want_out, size_t want_consumed)
{
    ChunkRes r;

    chunk_whole(s, strlen(s), 0, 0, 0, &r);
    if (r.rc != want_rc)
        return 0;
    if (want_out && (r.produced != strlen(want_out) || memcmp(r.out, want_out, r.produced)))
        return 0;
    return want_consumed == (size_t)-1 || r.consumed == want_consumed;
}

static int chunk_rc(const char *s, size_t max_body, size_t max_trailer)
{
    ChunkRes r;

    chunk_whole(s, strlen(s), max_body, max_trailer, 0, &r);
    return r.rc;
}

static void test_chunked(void)
{
    const char *body = "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    char big[PH_HTTP_CHUNK_LINE_MAX + 64], *huge;
    PhChunked c;
    size_t used, made;
    char out[64];

    CHECK(chunk_is(body, 1, "hello world", strlen(body)));
    CHECK(chunk_is("0\r\n\r\n", 1, "", 5));
    CHECK(chunk_is("5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n", 1, "hello", 15));
    CHECK(chunk_is("A\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n", 1, "0123456789abcdefghij",
                   (size_t)-1));
    CHECK(chunk_is("00005\r\nhello\r\n000\r\n\r\n", 1, "hello", (size_t)-1));
    CHECK(chunk_is("5\r\nhel", 0, "hel", 6));
    CHECK(chunk_is("5\r\nhello\r\n", 0, "hello", 10));
    CHECK(chunk_is("5\r\nhello\r\n0\r\n", 0, "hello", 13));
    CHECK(chunk_is("5\r\nhello\r\n0\r\n\r", 0, "hello", 14));
    CHECK(chunk_is("", 0, "", 0));
    /* Data may hold anything, CR and LF included. */
    CHECK(chunk_is("4\r\n\r\n\r\n\r\n0\r\n\r\n", 1, "\r\n\r\n", (size_t)-1));

    /* Extensions are skipped; whitespace before ';' is allowed (BWS). */
    CHECK(chunk_is("5;name=value\r\nhello\r\n0;last\r\n\r\n", 1, "hello", (size_t)-1));
    CHECK(chunk_is("5 ;x\r\nhello\r\n0\r\n\r\n", 1, "hello", (size_t)-1));
    CHECK(chunk_is("5\t ;x=\"q \\\" \"\r\nhello\r\n0\r\n\r\n", 1, "hello", (size_t)-1));
    CHECK(chunk_is("5;\xc3\xa9\r\nhello\r\n0\r\n\r\n", 1, "hello", (size_t)-1));
    CHECK(chunk_rc("5 \r\nhello\r\n0\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc("5 x\r\nhello\r\n0\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc("5;a\nb\r\nhello\r\n0\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc("5;a\rb\r\nhello\r\n0\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc("5;a\x01\r\nhello\r\n0\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc("5;a\x7f\r\nhello\r\n0\r\n\r\n", 0, 0) == -400);
    /* The chunk-size line, extensions included, is bounded: "1;" + k bytes + CRLF. */
    memcpy(big, "1;", 2);
    memset(big + 2, 'e', PH_HTTP_CHUNK_LINE_MAX - 4);
    memcpy(big + PH_HTTP_CHUNK_LINE_MAX - 2, "\r\nx\r\n0\r\n\r\n", 11);
    CHECK(chunk_is(big, 1, "x", (size_t)-1)); /* exactly PH_HTTP_CHUNK_LINE_MAX bytes */
    memset(big + 2, 'e', PH_HTTP_CHUNK_LINE_MAX - 3);
    memcpy(big + PH_HTTP_CHUNK_LINE_MAX - 1, "\r\nx\r\n0\r\n\r\n", 11);
    CHECK(chunk_rc(big, 0, 0) == -400); /* one byte more */
    memset(big, '0', PH_HTTP_CHUNK_LINE_MAX + 10);
    memcpy(big + PH_HTTP_CHUNK_LINE_MAX + 10, "1\r\nx\r\n0\r\n\r\n", 12);
    CHECK(chunk_rc(big, 0, 0) == -400); /* leading zeros cannot go on for ever */

    /* Sizes. */
    CHECK(chunk_rc("\r\nhello\r\n0\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc("g\r\n", 0, 0) == -400);
    CHECK(chunk_rc("-5\r\nhello\r\n0\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc("+5\r\nhello\r\n0\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc("0x5\r\nhello\r\n0\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc(" 5\r\nhello\r\n0\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc(";5\r\nhello\r\n0\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc("5\nhello\r\n0\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc("5\rXhello\r\n0\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc("5\r\nhello\r\n0\n\r\n", 0, 0) == -400);
    /* CRLF after the data is required. */
    CHECK(chunk_rc("5\r\nhelloX\r\n0\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc("5\r\nhello\n0\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc("5\r\nhello\r0\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc("5\r\nhello0\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc("5\r\nhell\r\n0\r\n\r\n", 0, 0) == -400);

    /* Body size: 413 as soon as a size line says so, never an overflow. */
    CHECK(chunk_rc("a\r\n0123456789\r\n0\r\n\r\n", 10, 0) == 1);
    CHECK(chunk_rc("b\r\n", 10, 0) == -413);
    CHECK(chunk_rc("6\r\n012345\r\n5\r\n", 10, 0) == -413);
    CHECK(chunk_rc("6\r\n012345\r\n4\r\n0123\r\n0\r\n\r\n", 10, 0) == 1);
    CHECK(chunk_rc("800001\r\n", 0, 0) == -413);
    CHECK(chunk_rc("800000\r\n", 0, 0) == 0);
    CHECK(chunk_rc("ffffffffffffffff\r\n", SIZE_MAX, 0) == 0);
    CHECK(chunk_rc("10000000000000000\r\n", SIZE_MAX, 0) == -413);
    CHECK(chunk_rc("fffffffffffffffffffffffff\r\n", SIZE_MAX, 0) == -413);
    CHECK(chunk_rc("0000000000000000000000000000000000001\r\nx\r\n0\r\n\r\n", 1, 0) == 1);
    ph_chunked_init(&c, 0, 0);
    CHECK(ph_chunked_feed(&c, "3\r\nabc\r\n2\r\nde\r\n", 15, out, &used, &made) == 0);
    CHECK(c.total == 5 && made == 5 && used == 15);
    CHECK(c.max_body == PH_HTTP_DEFAULT_MAX_BODY && c.max_trailer == PH_HTTP_DEFAULT_MAX_HEAD);

    /* Trailers: checked like header lines, skipped, bounded. */
    CHECK(chunk_is("5\r\nhello\r\n0\r\nX-T: v\r\nY:\r\n\r\nNEXT", 1, "hello", 27));
    CHECK(chunk_rc("0\r\nX: a\r\n b\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc("0\r\n X: a\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc("0\r\nNoColon\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc("0\r\nX : a\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc("0\r\n: a\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc("0\r\nX: a\nY: b\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc("0\r\nX: a\x01\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc("0\r\nX: a\r\n\n", 0, 0) == -400);
    CHECK(chunk_rc("0\r\n\n", 0, 0) == -400);
    CHECK(chunk_rc("0\r\n\rX", 0, 0) == -400);
    CHECK(chunk_rc("0\r\nX: a\rb\r\n\r\n", 0, 0) == -400);
    CHECK(chunk_rc("0\r\nX: 123\r\n\r\n", 0, 10) == 1); /* 8 + 2 bytes */
    CHECK(chunk_rc("0\r\nX: 1234\r\n\r\n", 0, 10) == -431);
    CHECK(chunk_rc("0\r\n\r\n", 0, 2) == 1);
    CHECK(chunk_rc("0\r\n\r\n", 0, 1) == -431);
    /* The default trailer limit is PH_HTTP_DEFAULT_MAX_HEAD bytes. */
    huge = xmalloc(PH_HTTP_DEFAULT_MAX_HEAD + 16);
    memcpy(huge, "0\r\nX: ", 6);
    memset(huge + 6, 'a', PH_HTTP_DEFAULT_MAX_HEAD);
    memcpy(huge + 3 + PH_HTTP_DEFAULT_MAX_HEAD - 4, "\r\n\r\n", 5);
    CHECK(chunk_rc(huge, 0, 0) == 1);
    memset(huge + 6, 'a', PH_HTTP_DEFAULT_MAX_HEAD);
    memcpy(huge + 3 + PH_HTTP_DEFAULT_MAX_HEAD - 3, "\r\n\r\n", 5);
    CHECK(chunk_rc(huge, 0, 0) == -431);
    free(huge);

    /* Sticky results. */
    ph_chunked_init(&c, 0, 0);
    CHECK(ph_chunked_feed(&c, "0\r\n\r\nGET", 8, out, &used, &made) == 1 && used == 5);
    CHECK(ph_chunked_feed(&c, "GET", 3, out, &used, &made) == 1 && used == 0 && made == 0);
    ph_chunked_init(&c, 0, 0);
    CHECK(ph_chunked_feed(&c, "z\r\n", 3, out, &used, &made) == -400 && used == 1);
    CHECK(ph_chunked_feed(&c, "0\r\n\r\n", 5, out, &used, &made) == -400 && used == 0);
    ph_chunked_init(&c, 0, 0);
    CHECK(ph_chunked_feed(&c, NULL, 0, NULL, &used, &made) == 0 && used == 0 && made == 0);

    /* In place, whole and in pieces. */
    {
        ChunkRes a, b;
        size_t step;
        int ok = 1;
        chunk_whole(body, strlen(body), 0, 0, 1, &a);
        CHECK(a.rc == 1 && a.produced == 11 && memcmp(a.out, "hello world", 11) == 0);
        for (step = 1; step <= strlen(body); step++) {
            chunk_pieces(body, strlen(body), 0, 0, step, &b);
            ok &= chunk_res_eq(&a, &b);
        }
        CHECK(ok);
    }
}

/* The body reader frames both ways: Content-Length (bytes passed as they are) and chunked
 * (decoded in place), and stops exactly where the next request starts. */
static void test_body(void)
{
    PhHttpRequest req;
    PhHttpBody b;
    size_t used, made;
    char buf[64];

    req_init(&req, NULL);
    ph_http_request_reset(&req); /* no body: complete at once, nothing taken */
    ph_http_body_init(&b, &req, 0, 0);
    CHECK(ph_http_body_feed(&b, buf, 0, &used, &made) == 1 && used == 0 && made == 0);
    memcpy(buf, "GET", 3);
    CHECK(ph_http_body_feed(&b, buf, 3, &used, &made) == 1 && used == 0 && made == 0);

    req.content_length = 5; /* in pieces, then the next request's bytes are left */
    ph_http_body_init(&b, &req, 0, 0);
    memcpy(buf, "hel", 3);
    CHECK(ph_http_body_feed(&b, buf, 3, &used, &made) == 0 && used == 3 && made == 3);
    CHECK(b.left == 2);
    memcpy(buf, "loGET", 5);
    CHECK(ph_http_body_feed(&b, buf, 5, &used, &made) == 1 && used == 2 && made == 2);
    CHECK(memcmp(buf, "lo", 2) == 0);

    req.content_length = 0;
    ph_http_body_init(&b, &req, 0, 0);
    CHECK(ph_http_body_feed(&b, buf, 5, &used, &made) == 1 && used == 0);

    req.content_length = -1;
    req.chunked = 1;
    ph_http_body_init(&b, &req, 4, 0);
    memcpy(buf, "3\r\nabc\r\n0\r\n\r\nGET", 16);
    CHECK(ph_http_body_feed(&b, buf, 16, &used, &made) == 1 && used == 13 && made == 3);
    CHECK(memcmp(buf, "abc", 3) == 0);
    ph_http_body_init(&b, &req, 4, 0); /* max_body bounds a chunked body */
    memcpy(buf, "5\r\nabcde\r\n", 10);
    CHECK(ph_http_body_feed(&b, buf, 10, &used, &made) == -413);
}

static const char *valid_chunked[] = {
    "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    "1;a=b\r\nx\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: yes\r\nOther:  v \r\n\r\n",
    "0\r\n\r\n",
    "3 ; ext=\"quoted\"\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n",
    "a\r\n\r\n\r\n\r\n\r\n\r\n\r\n0000\r\n\r\n",
};

static void test_fuzz_chunked(void)
{
    static char buf[512];
    size_t iter, n, bad = 0, done = 0, failed_rc = 0, i;
    ChunkRes a, b, c;

    for (i = 0; i < sizeof valid_chunked / sizeof valid_chunked[0]; i++) {
        n = strlen(valid_chunked[i]);
        chunk_whole(valid_chunked[i], n, 0, 0, 0, &a);
        chunk_pieces(valid_chunked[i], n, 0, 0, 1, &b);
        CHECK(a.rc == 1 && chunk_res_eq(&a, &b));
    }
    for (iter = 0; iter < 30000; iter++) {
        const char *base = valid_chunked[rnd(sizeof valid_chunked / sizeof valid_chunked[0])];
        size_t max_body = rnd(3) ? 0 : rnd(30), max_trailer = rnd(3) ? 0 : rnd(30);
        n = strlen(base);
        memcpy(buf, base, n);
        mutate(buf, &n, sizeof buf);
        chunk_whole(buf, n, max_body, max_trailer, 0, &a);
        chunk_whole(buf, n, max_body, max_trailer, 1, &c);
        chunk_pieces(buf, n, max_body, max_trailer, 1, &b);
        if (!chunk_res_eq(&a, &b) || !chunk_res_eq(&a, &c) || a.consumed > n ||
            a.produced > a.consumed ||
            !(a.rc == 1 || a.rc == 0 || a.rc == -400 || a.rc == -413 || a.rc == -431)) {
            bad++;
            dump("inconsistent chunked", buf, n);
            continue;
        }
        chunk_pieces(buf, n, max_body, max_trailer, 0, &b);
        if (!chunk_res_eq(&a, &b)) {
            bad++;
            dump("inconsistent chunked (random pieces)", buf, n);
        }
        done += a.rc == 1;
        failed_rc += a.rc < 0;
    }
    CHECK(bad == 0);
    CHECK(done > 1000 && failed_rc > 1000);

    bad = 0;
    for (iter = 0; iter < 10000; iter++) {
        n = rnd(200);
        for (i = 0; i < n; i++)
            buf[i] = (char)random_byte();
        chunk_whole(buf, n, 0, 0, 0, &a);
        chunk_pieces(buf, n, 0, 0, 0, &b);
        bad += !chunk_res_eq(&a, &b);
    }
    CHECK(bad == 0);
}

int main(void)
{
    test_basic();
    test_request_line();
    test_line_endings();
    test_header_syntax();
    test_content_length();
    test_transfer_encoding();
    test_host();
    test_connection();
    test_expect();
    test_limits();
    test_reason();
    test_incremental();
    test_resume_and_reset();
    test_pipelined();
    test_fuzz_head();
    test_chunked();
    test_body();
    test_fuzz_chunked();
    free(R_buf);
    return check_report();
}
