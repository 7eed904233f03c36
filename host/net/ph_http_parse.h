/* ph_http_parse.h - strict, incremental, allocation-free HTTP/1.1 request parser (server side).
 *
 * Used by the host's HTTP server, whose clients include untrusted sandboxes (the callback
 * bridge). Everything ambiguous is refused rather than guessed, so that no proxy in front of us
 * can frame a request differently than we do (request smuggling):
 *
 *   - lines end with CRLF; a bare LF or a bare CR anywhere in the head is 400. RFC 9112 lets a
 *     server accept a bare LF, but a front end that does not would see different lines;
 *   - obs-fold (a header line starting with SP or HT) is 400, as is whitespace before ':';
 *   - Content-Length is digits only; repeated only with the same value; never with
 *     Transfer-Encoding;
 *   - Transfer-Encoding must be exactly "chunked": "chunked" repeated or not last is 400 (RFC
 *     9112 6.3 says a request whose final coding is not chunked cannot be framed); any other
 *     coding is 501; in an HTTP/1.0 request it is 400;
 *   - an HTTP/1.1 request needs exactly one Host header; two are 400 in any version.
 *
 * Nothing is copied: every pointer in the results points into the caller's buffer, and stays
 * valid as long as those bytes do. No function here allocates or keeps global state. */
#ifndef PH_HTTP_PARSE_H
#define PH_HTTP_PARSE_H

#include <stddef.h>

#define PH_HTTP_MAX_HEADERS      100     /* capacity of PhHttpRequest.headers */
#define PH_HTTP_DEFAULT_MAX_HEAD 16384   /* request line + headers, final CRLF included */
#define PH_HTTP_DEFAULT_MAX_BODY 8388608 /* 8 MiB */
#define PH_HTTP_CHUNK_LINE_MAX   4096    /* one chunk-size line, extensions included */

typedef struct {
    const char *name; /* a token, case as sent */
    size_t name_len;
    const char *value; /* leading and trailing SP/HT removed; may be empty */
    size_t value_len;
} PhHttpHeader;

/* Where an unfinished parse stands. Private to ph_http_parse.c: leave it zeroed. */
typedef struct {
    const char *buf;     /* the buffer of the call that returned 0 */
    size_t pos;          /* offset of the next line to parse */
    size_t scan;         /* offset up to which the current line holds no CR or LF */
    int request_line;    /* the request line has been parsed */
    int hosts;           /* Host headers seen */
    int te_seen;         /* a Transfer-Encoding header was seen */
    int te_chunked;      /* times "chunked" was listed */
    int te_last_chunked; /* the last coding listed was "chunked" */
    int te_other;        /* some other coding was listed */
    int conn_close;      /* Connection lists "close" */
    int conn_keep_alive; /* Connection lists "keep-alive" */
    int expect_100;      /* Expect lists "100-continue" */
} PhHttpHeadState;

/* Zero it (PhHttpRequest req = { 0 }), set the limits, then call ph_http_parse_head. */
typedef struct {
    /* Limits, set before parsing; 0 means the default. */
    size_t max_head;    /* PH_HTTP_DEFAULT_MAX_HEAD, at most INT_MAX; exceeded -> 431 */
    size_t max_headers; /* PH_HTTP_MAX_HEADERS, which is also the most allowed; over -> 431 */
    size_t max_body;    /* PH_HTTP_DEFAULT_MAX_BODY; a larger Content-Length -> 413 */

    /* Results, valid after ph_http_parse_head returned > 0. */
    const char *method; /* a token, case-sensitive ("GET") */
    size_t method_len;
    const char *target; /* the request-target as sent: non-empty, bytes 0x21..0x7e */
    size_t target_len;
    int minor_version; /* 0 or 1: HTTP/1.0 or HTTP/1.1 */
    PhHttpHeader headers[PH_HTTP_MAX_HEADERS];
    size_t num_headers;
    int chunked;              /* the body is chunked: decode it with PhChunked */
    long long content_length; /* the body length, or -1 when absent (and then, unless chunked,
                               * the request has no body) */
    int keep_alive;           /* 1.1 unless "Connection: close"; 1.0 only with "keep-alive" */
    int expect_continue;      /* an HTTP/1.1 request sent "Expect: 100-continue" */

    PhHttpHeadState st;
} PhHttpRequest;

/* Parse the head (request line and headers) at the start of buf[0..len).
 *
 * Returns > 0: the head is complete and valid; that many bytes (through the blank line) were
 * used, and the body or the next pipelined request starts there. Empty lines (CRLF) before the
 * request line are skipped and counted, as RFC 9112 2.2 recommends.
 * Returns 0: the head is incomplete and nothing wrong has been seen yet; only while
 * len < max_head. Read more and call again with the same bytes plus the new ones.
 * Returns < 0: minus an HTTP status to answer before closing the connection:
 *   -400 malformed; -431 head over max_head, or more than max_headers headers;
 *   -413 Content-Length over max_body; -501 a transfer coding other than chunked;
 *   -505 a well-formed version other than HTTP/1.0 and HTTP/1.1.
 * Results are meaningless unless it returned > 0.
 *
 * Incremental: after a 0 the parser remembers how far it got, so feeding a head in many small
 * reads costs about as much as one whole read. It resumes only when buf is the same pointer
 * and len has not shrunk; otherwise it starts over (which is always correct, just slower). So
 * the bytes already passed must not change between calls, though the buffer may move. The
 * result never depends on how the bytes were split: a complete line is checked as soon as it
 * arrives, and the first bad line decides the status. After a result other than 0 the next
 * call starts a new request. */
int ph_http_parse_head(PhHttpRequest *req, const char *buf, size_t len);

/* Forget an unfinished parse (to reuse req for other bytes); keeps the limits. */
void ph_http_request_reset(PhHttpRequest *req);

/* Index in req->headers of the first header called name (compared case-insensitively), or
 * -1 when there is none. */
int ph_http_header_find(const PhHttpRequest *req, const char *name);

/* The reason phrase of a common status ("Not Found"); "Unknown" for the others. */
const char *ph_http_reason(int status);

/* Incremental decoder of a chunked body (RFC 9112 7.1). Chunk extensions are checked for
 * stray control bytes and skipped; trailer fields are checked like header lines and skipped.
 * Fields are read-only for the caller. */
typedef struct {
    size_t max_body;    /* decoded bytes allowed */
    size_t max_trailer; /* trailer section bytes allowed, final CRLF included */
    size_t total;       /* decoded bytes so far */
    size_t size;        /* chunk size being read, then data bytes left in the chunk */
    size_t line;        /* bytes of the current chunk-size line */
    size_t trailer;     /* bytes of the trailer section so far */
    int state;
    int status; /* the result once done (1) or failed (< 0); sticky */
} PhChunked;

/* 0 for either limit means the default: PH_HTTP_DEFAULT_MAX_BODY, PH_HTTP_DEFAULT_MAX_HEAD. */
void ph_chunked_init(PhChunked *c, size_t max_body, size_t max_trailer);

/* Decode from in[0..in_len) into out, which must hold in_len bytes and may be in itself
 * (decoding in place: output never overtakes input). Sets *consumed (input bytes used) and
 * *produced (bytes written to out). Returns:
 *   1    the body ended (last chunk and trailers read); bytes after *consumed belong to the
 *        next request;
 *   0    all input used, more is needed;
 *   < 0  minus an HTTP status: -400 malformed (bad size, bare CR or LF, no CRLF after the
 *        data, chunk-size line over PH_HTTP_CHUNK_LINE_MAX), -413 decoded total would exceed
 *        max_body (reported as soon as a chunk size says so), -431 trailers over max_trailer.
 * Once it returned 1 or < 0 it keeps returning that, consuming nothing. */
int ph_chunked_feed(PhChunked *c, const char *in, size_t in_len, char *out, size_t *consumed,
                    size_t *produced);

/* The body of a request whose head was parsed: Content-Length or chunked framing, one reader
 * for both, so that every user of the parser frames bodies the same way. Fields are read-only
 * for the caller. */
typedef struct {
    int chunked;
    unsigned long long left; /* Content-Length bytes still to come */
    PhChunked ch;
} PhHttpBody;

/* Set up for the body of req, after ph_http_parse_head returned > 0. max_body bounds a chunked
 * body (the head parser already held a Content-Length to req->max_body) and max_trailer its
 * trailer section; 0 means the defaults of ph_chunked_init. A request with neither header has
 * an empty body. */
void ph_http_body_init(PhHttpBody *b, const PhHttpRequest *req, size_t max_body,
                       size_t max_trailer);

/* Take body bytes from in[0..len): *consumed input bytes were used, and in[0..*produced) are
 * body bytes (chunked data is decoded in place, so in is written to). Returns 1: the body is
 * complete (bytes after *consumed belong to the next request); 0: all input used, more is
 * needed; < 0: minus an HTTP status, as ph_chunked_feed. */
int ph_http_body_feed(PhHttpBody *b, char *in, size_t len, size_t *consumed, size_t *produced);

#endif
