/* http_snap.h - a parse of ph_http_parse with its pointers turned into offsets, so that parses
 * of the same bytes in different buffers compare: test_http_parse.c and fuzz/fuzz_http_parse.c
 * parse whole against piecewise with it. Static: each includer gets its own copy. */
#ifndef HTTP_SNAP_H
#define HTTP_SNAP_H

#include "ph_http_parse.h"

#include <string.h>

typedef struct {
    int rc;
    size_t method, method_len, target, target_len, num_headers;
    size_t name[PH_HTTP_MAX_HEADERS], name_len[PH_HTTP_MAX_HEADERS];
    size_t value[PH_HTTP_MAX_HEADERS], value_len[PH_HTTP_MAX_HEADERS];
    int minor_version, chunked, keep_alive, expect_continue;
    long long content_length;
} Snap;

static void snap(Snap *s, int rc, const PhHttpRequest *r, const char *base)
{
    size_t i;

    memset(s, 0, sizeof *s);
    s->rc = rc;
    if (rc <= 0)
        return;
    s->method = (size_t)(r->method - base);
    s->method_len = r->method_len;
    s->target = (size_t)(r->target - base);
    s->target_len = r->target_len;
    s->num_headers = r->num_headers;
    for (i = 0; i < r->num_headers; i++) {
        s->name[i] = (size_t)(r->headers[i].name - base);
        s->name_len[i] = r->headers[i].name_len;
        s->value[i] = (size_t)(r->headers[i].value - base);
        s->value_len[i] = r->headers[i].value_len;
    }
    s->minor_version = r->minor_version;
    s->chunked = r->chunked;
    s->keep_alive = r->keep_alive;
    s->expect_continue = r->expect_continue;
    s->content_length = r->content_length;
}

static int snap_eq(const Snap *a, const Snap *b)
{
    size_t i;

    if (a->rc != b->rc || a->method != b->method || a->method_len != b->method_len ||
        a->target != b->target || a->target_len != b->target_len ||
        a->num_headers != b->num_headers || a->minor_version != b->minor_version ||
        a->chunked != b->chunked || a->keep_alive != b->keep_alive ||
        a->expect_continue != b->expect_continue || a->content_length != b->content_length)
        return 0;
    for (i = 0; i < a->num_headers; i++)
        if (a->name[i] != b->name[i] || a->name_len[i] != b->name_len[i] ||
            a->value[i] != b->value[i] || a->value_len[i] != b->value_len[i])
            return 0;
    return 1;
}

#endif
