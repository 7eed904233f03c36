/* fuzz_http_parse.c - libFuzzer target: host/net/ph_http_parse.c, whole versus piecewise. */
#include "fuzz_rng.h"
#include "http_snap.h"
#include "ph_http_parse.h"

#include <sanitizer/asan_interface.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Input layout: byte 0 picks the mode and the limits, bytes 1..2 seed the split points, the
 * rest is what the parser sees. Split points come from the input so that a crash reproduces. */
#define PREFIX 3


/* A split size: mostly tiny (the resume path's edge cases), sometimes larger. */
static size_t piece(void)
{
    return rnd(4) == 0 ? 1 + rnd(64) : 1 + rnd(3);
}

static void fail(const char *what)
{
    fprintf(stderr, "fuzz_http_parse: property violated: %s\n", what);
    abort();
}

/* An exact-size copy: reads past the end hit the redzone. */
static char *dup_exact(const uint8_t *s, size_t n)
{
    char *p = malloc(n ? n : 1);
    if (p == NULL)
        abort();
    if (n)
        memcpy(p, s, n);
    return p;
}

static void limits(PhHttpRequest *r, uint8_t sel)
{
    static const size_t heads[] = { 0, 64, 200, 1024 };
    static const size_t counts[] = { 0, 1, 3, 8 };
    static const size_t bodies[] = { 0, 0, 10, 1000 };
    memset(r, 0, sizeof *r);
    r->max_head = heads[sel & 3];
    r->max_headers = counts[(sel >> 2) & 3];
    r->max_body = bodies[(sel >> 4) & 3];
}

static int rc_allowed(int rc, size_t len)
{
    return (rc >= 0 && (size_t)rc <= len) || rc == -400 || rc == -413 || rc == -431 || rc == -501 ||
           rc == -505;
}

static int tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

/* What an accepted head promises, re-checked without the parser's code. */
static void check_accepted(const PhHttpRequest *r, const char *b, size_t used)
{
    if (r->method_len == 0 || r->target_len == 0)
        fail("empty method or target");
    for (size_t i = 0; i < r->method_len; i++)
        if (!tchar((unsigned char)r->method[i]))
            fail("method is not a token");
    for (size_t i = 0; i < r->target_len; i++)
        if ((unsigned char)r->target[i] < 0x21 || (unsigned char)r->target[i] > 0x7e)
            fail("target byte outside 0x21..0x7e");
    if (r->minor_version != 0 && r->minor_version != 1)
        fail("minor_version");
    if (r->num_headers > PH_HTTP_MAX_HEADERS)
        fail("num_headers");
    if (used < 4 || memcmp(b + used - 4, "\r\n\r\n", 4) != 0)
        fail("an accepted head does not end with CRLF CRLF");
    if (r->chunked && r->content_length >= 0)
        fail("both chunked and Content-Length");
    for (size_t i = 0; i < r->num_headers; i++) {
        const PhHttpHeader *h = &r->headers[i];
        if (h->name < b || h->name + h->name_len > b + used || h->value < b ||
            h->value + h->value_len > b + used)
            fail("a header points outside the head");
        if (h->name_len == 0)
            fail("empty header name");
        for (size_t k = 0; k < h->value_len; k++)
            if (h->value[k] == '\r' || h->value[k] == '\n')
                fail("CR or LF inside a header value");
        /* header_find must find this name, at this index or an earlier same-named one. */
        char name[256];
        if (h->name_len < sizeof name) {
            memcpy(name, h->name, h->name_len);
            name[h->name_len] = '\0';
            int at = ph_http_header_find(r, name);
            if (at < 0 || (size_t)at > i || r->headers[at].name_len != h->name_len)
                fail("ph_http_header_find");
            for (size_t k = 0; k < h->name_len; k++)
                if (lower((unsigned char)r->headers[at].name[k]) != lower((unsigned char)name[k]))
                    fail("ph_http_header_find matched another name");
        }
    }
}

/* A body read: the status, how much input it used, and the decoded bytes. */
typedef struct {
    int rc;
    size_t consumed;
    char *out;
    size_t out_len;
} BodyRun;

/* Feed rest[0..n) to a body reader for req, whole (pieces = 0) or in random pieces. */
static void body_run(const PhHttpRequest *req, const char *rest, size_t n, int pieces, BodyRun *r)
{
    PhHttpBody b;
    char *buf = dup_exact((const uint8_t *)rest, n);
    size_t off = 0;
    ph_http_body_init(&b, req, 0, 0);
    r->out = malloc(n ? n : 1);
    r->out_len = 0;
    r->rc = 0;
    if (r->out == NULL)
        abort();
    for (;;) {
        size_t len = pieces ? piece() : n - off;
        if (len > n - off)
            len = n - off;
        size_t used = 0, made = 0;
        ASAN_POISON_MEMORY_REGION(buf + off + len, n - off - len);
        r->rc = ph_http_body_feed(&b, buf + off, len, &used, &made);
        ASAN_UNPOISON_MEMORY_REGION(buf + off + len, n - off - len);
        if (used > len || made > used)
            fail("body_feed consumed or produced more than it was given");
        if (r->rc == 0 && used != len)
            fail("body_feed returned 0 without using all its input");
        memcpy(r->out + r->out_len, buf + off, made);
        r->out_len += made;
        off += used;
        if (r->rc != 0 || off == n)
            break;
    }
    r->consumed = off;
    free(buf);
}

static void check_body(const PhHttpRequest *req, const char *rest, size_t n)
{
    BodyRun whole, split;
    body_run(req, rest, n, 0, &whole);
    body_run(req, rest, n, 1, &split);
    if (whole.rc != split.rc || whole.consumed != split.consumed ||
        whole.out_len != split.out_len || memcmp(whole.out, split.out, whole.out_len) != 0)
        fail("the body read whole and in pieces differ");
    if (!req->chunked && whole.rc == 1 && req->content_length >= 0 &&
        (whole.out_len != (size_t)req->content_length ||
         memcmp(whole.out, rest, whole.out_len) != 0))
        fail("a Content-Length body is not the bytes that follow the head");
    free(whole.out);
    free(split.out);
}

/* A chunked body on its own, with its own limits: whole into another buffer versus in
 * pieces decoded in place. */
static void check_chunked(const uint8_t *s, size_t n, uint8_t sel)
{
    static const size_t bodies[] = { 0, 1, 16, 300 };
    static const size_t trailers[] = { 0, 2, 20, 200 };
    size_t max_body = bodies[sel & 3], max_trailer = trailers[(sel >> 2) & 3];
    PhChunked c;
    char *in = dup_exact(s, n), *out = malloc(n ? n : 1), *acc = malloc(n ? n : 1);
    size_t used = 0, made = 0, acc_len = 0, off = 0;
    if (out == NULL || acc == NULL)
        abort();
    ph_chunked_init(&c, max_body, max_trailer);
    int whole = ph_chunked_feed(&c, in, n, out, &used, &made);
    size_t whole_used = used, whole_made = made;
    if (used > n || made > used || (whole == 0 && used != n))
        fail("chunked_feed counts (whole)");

    ph_chunked_init(&c, max_body, max_trailer);
    int rc = 0;
    for (;;) {
        size_t len = piece();
        if (len > n - off)
            len = n - off;
        rc = ph_chunked_feed(&c, in + off, len, in + off, &used, &made);
        if (used > len || made > used || (rc == 0 && used != len))
            fail("chunked_feed counts (pieces)");
        memcpy(acc + acc_len, in + off, made);
        acc_len += made;
        off += used;
        if (rc != 0 || off == n)
            break;
    }
    if (rc != whole || off != whole_used || acc_len != whole_made || memcmp(acc, out, acc_len) != 0)
        fail("a chunked body decoded whole and in pieces differs");
    if (rc != 0) { /* sticky: nothing more is consumed */
        int again = ph_chunked_feed(&c, in, n, in, &used, &made);
        if (again != rc || used != 0 || made != 0)
            fail("chunked_feed is not sticky after its end");
    }
    free(in);
    free(out);
    free(acc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < PREFIX)
        return 0;
    uint8_t sel = data[0];
    rng_state = 0x9e3779b9u ^ ((uint32_t)data[1] << 8 | data[2]);
    const uint8_t *s = data + PREFIX;
    size_t n = size - PREFIX;
    if (sel & 0x80) {
        check_chunked(s, n, sel);
        return 0;
    }

    /* Whole, in an exact-size copy. */
    PhHttpRequest whole_req;
    Snap whole, other;
    char *wb = dup_exact(s, n);
    limits(&whole_req, sel);
    int rc = ph_http_parse_head(&whole_req, wb, n);
    if (!rc_allowed(rc, n))
        fail("a status the parser does not document");
    snap(&whole, rc, &whole_req, wb);

    /* Growing: one buffer, more of it each call (the resume path); the bytes not yet given
     * are poisoned, so a peek past len is caught. */
    PhHttpRequest req;
    char *b = dup_exact(s, n);
    size_t p = 0;
    limits(&req, sel);
    for (;;) {
        ASAN_POISON_MEMORY_REGION(b + p, n - p);
        rc = ph_http_parse_head(&req, b, p);
        ASAN_UNPOISON_MEMORY_REGION(b + p, n - p);
        if (rc != 0 || p == n)
            break;
        p += piece();
        if (p > n)
            p = n;
    }
    snap(&other, rc, &req, b);
    if (!snap_eq(&whole, &other))
        fail("the head parsed whole and in a growing buffer differs");
    free(b);

    /* Moving: every call gets a fresh copy (the restart path). */
    char *prev = NULL;
    b = NULL;
    p = 0;
    limits(&req, sel);
    for (;;) {
        b = dup_exact(s, p); /* allocated while prev lives: another address */
        free(prev);
        prev = b;
        rc = ph_http_parse_head(&req, b, p);
        if (rc != 0 || p == n)
            break;
        p += piece();
        if (p > n)
            p = n;
    }
    snap(&other, rc, &req, b);
    free(b);
    if (!snap_eq(&whole, &other))
        fail("the head parsed whole and in moving buffers differs");

    if (whole.rc > 0) {
        check_accepted(&whole_req, wb, (size_t)whole.rc);
        check_body(&whole_req, wb + whole.rc, n - (size_t)whole.rc);
    }
    free(wb);
    return 0;
}
