/* ph_http_parse.c - strict incremental HTTP/1.1 request parser (see ph_http_parse.h). */
#include "ph_http_parse.h"

#include <limits.h>
#include <string.h>

/* ---- byte classes (RFC 9110 5.6.2, 5.5) --------------------------------------------------- */

static int is_tchar(unsigned char c)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";

    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    /* The length excludes the terminator, so a NUL byte is not found. */
    return memchr(extra, c, sizeof extra - 1) != NULL;
}

static int is_ows(unsigned char c)
{
    return c == ' ' || c == '\t';
}

/* field-vchar / SP / HT; obs-text (0x80..0xff) is allowed as RFC 9110 still allows it. */
static int is_field_byte(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static int is_hex(unsigned char c, unsigned *v)
{
    if (c >= '0' && c <= '9')
        *v = c - '0';
    else if (c >= 'a' && c <= 'f')
        *v = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F')
        *v = c - 'A' + 10;
    else
        return 0;
    return 1;
}

/* ASCII only: tolower() would consult the locale. */
static unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + ('a' - 'A')) : c;
}

/* s[0..n) equals lit, a lowercase literal, ignoring ASCII case. */
static int ieq(const char *s, size_t n, const char *lit)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (lit[i] == '\0' || lower((unsigned char)s[i]) != (unsigned char)lit[i])
            return 0;
    return lit[i] == '\0';
}

/* ---- comma-separated lists (RFC 9110 5.6.1) ----------------------------------------------- */

typedef struct {
    const char *p;
    size_t n;
    size_t i; /* start of the next element; n + 1 once the last one was returned */
} ListIter;

/* The next element, OWS trimmed and possibly empty; 0 after the last one. */
static int list_next(ListIter *it, const char **elem, size_t *len)
{
    size_t s = it->i, e;

    if (s > it->n)
        return 0;
    e = s;
    while (e < it->n && it->p[e] != ',')
        e++;
    it->i = e + 1;
    while (s < e && is_ows((unsigned char)it->p[s]))
        s++;
    while (e > s && is_ows((unsigned char)it->p[e - 1]))
        e--;
    *elem = it->p + s;
    *len = e - s;
    return 1;
}

/* ---- the head ----------------------------------------------------------------------------- */

static size_t head_limit(const PhHttpRequest *req)
{
    if (req->max_head == 0)
        return PH_HTTP_DEFAULT_MAX_HEAD;
    /* The byte count is returned as an int. */
    return req->max_head > INT_MAX ? (size_t)INT_MAX : req->max_head;
}

static size_t headers_limit(const PhHttpRequest *req)
{
    if (req->max_headers == 0 || req->max_headers > PH_HTTP_MAX_HEADERS)
        return PH_HTTP_MAX_HEADERS;
    return req->max_headers;
}

static size_t body_limit(const PhHttpRequest *req)
{
    return req->max_body == 0 ? PH_HTTP_DEFAULT_MAX_BODY : req->max_body;
}

/* Clear results and state, keeping the limits. */
static void head_clear(PhHttpRequest *req)
{
    size_t max_head = req->max_head, max_headers = req->max_headers, max_body = req->max_body;

    memset(req, 0, sizeof *req);
    req->max_head = max_head;
    req->max_headers = max_headers;
    req->max_body = max_body;
    req->content_length = -1;
}

void ph_http_request_reset(PhHttpRequest *req)
{
    head_clear(req);
}

/* A final result: the next call must start afresh whatever buffer it gets. */
static int head_done(PhHttpRequest *req, int rc)
{
    memset(&req->st, 0, sizeof req->st);
    return rc;
}

/* "HTTP/" DIGIT "." DIGIT, exactly (HTTP-name is case-sensitive). */
static int parse_version(PhHttpRequest *req, const char *p, size_t n)
{
    if (n != 8 || memcmp(p, "HTTP/", 5) != 0 || p[5] < '0' || p[5] > '9' || p[6] != '.' ||
        p[7] < '0' || p[7] > '9')
        return -400;
    if (p[5] != '1' || (p[7] != '0' && p[7] != '1'))
        return -505;
    req->minor_version = p[7] - '0';
    return 0;
}

/* method SP request-target SP HTTP-version, single spaces only (RFC 9112 3). */
static int parse_request_line(PhHttpRequest *req, const char *p, size_t n)
{
    size_t i = 0, t;

    while (i < n && is_tchar((unsigned char)p[i]))
        i++;
    if (i == 0 || i == n || p[i] != ' ')
        return -400;
    req->method = p;
    req->method_len = i;
    t = ++i;
    for (; i < n && p[i] != ' '; i++) {
        unsigned char c = (unsigned char)p[i];
        /* The target is handed on raw, so nothing a later reader could split on gets in. */
        if (c <= 0x20 || c >= 0x7f)
            return -400;
    }
    if (i == t || i == n)
        return -400;
    req->target = p + t;
    req->target_len = i - t;
    i++;
    return parse_version(req, p + i, n - i);
}

static int parse_content_length(PhHttpRequest *req, const char *v, size_t n)
{
    long long cl = 0;
    size_t i;

    if (n == 0)
        return -400;
    for (i = 0; i < n; i++) {
        int d = v[i] - '0';
        if (d < 0 || d > 9)
            return -400;
        if (cl > (LLONG_MAX - d) / 10)
            return -400;
        cl = cl * 10 + d;
    }
    /* Two values could frame the body two ways; the same value twice is harmless. */
    if (req->content_length >= 0 && req->content_length != cl)
        return -400;
    req->content_length = cl;
    return 0;
}

static int parse_transfer_encoding(PhHttpRequest *req, const char *v, size_t n)
{
    ListIter it = { v, n, 0 };
    const char *e;
    size_t len;

    req->st.te_seen = 1;
    while (list_next(&it, &e, &len)) {
        if (len == 0)
            return -400; /* "chunked," or an empty header: someone may read it otherwise */
        if (ieq(e, len, "chunked")) {
            req->st.te_chunked++;
            req->st.te_last_chunked = 1;
        } else {
            req->st.te_other = 1;
            req->st.te_last_chunked = 0;
        }
    }
    return 0;
}

static int parse_host(PhHttpRequest *req, const char *v, size_t n)
{
    size_t i;

    if (++req->st.hosts > 1)
        return -400;
    for (i = 0; i < n; i++)
        if ((unsigned char)v[i] <= 0x20 || (unsigned char)v[i] >= 0x7f)
            return -400;
    return 0;
}

static void parse_connection(PhHttpRequest *req, const char *v, size_t n)
{
    ListIter it = { v, n, 0 };
    const char *e;
    size_t len;

    while (list_next(&it, &e, &len)) {
        if (ieq(e, len, "close"))
            req->st.conn_close = 1;
        else if (ieq(e, len, "keep-alive"))
            req->st.conn_keep_alive = 1;
    }
}

static void parse_expect(PhHttpRequest *req, const char *v, size_t n)
{
    ListIter it = { v, n, 0 };
    const char *e;
    size_t len;

    while (list_next(&it, &e, &len))
        if (ieq(e, len, "100-continue"))
            req->st.expect_100 = 1;
}

/* field-name ":" OWS field-value OWS (RFC 9112 5). */
static int parse_header_line(PhHttpRequest *req, const char *p, size_t n)
{
    size_t i = 0, name_len, vs, ve;
    PhHttpHeader *h;

    /* Leading whitespace is obs-fold, or (on the first header line) a line some readers
     * would join to the request line; RFC 9112 5.2 and 2.2 let us reject both. */
    while (i < n && is_tchar((unsigned char)p[i]))
        i++;
    if (i == 0 || i == n || p[i] != ':')
        return -400;
    name_len = i++;
    while (i < n && is_ows((unsigned char)p[i]))
        i++;
    vs = i;
    for (; i < n; i++)
        if (!is_field_byte((unsigned char)p[i]))
            return -400;
    ve = n;
    while (ve > vs && is_ows((unsigned char)p[ve - 1]))
        ve--;

    if (req->num_headers >= headers_limit(req))
        return -431;
    h = &req->headers[req->num_headers++];
    h->name = p;
    h->name_len = name_len;
    h->value = p + vs;
    h->value_len = ve - vs;

    if (ieq(p, name_len, "content-length"))
        return parse_content_length(req, h->value, h->value_len);
    if (ieq(p, name_len, "transfer-encoding"))
        return parse_transfer_encoding(req, h->value, h->value_len);
    if (ieq(p, name_len, "host"))
        return parse_host(req, h->value, h->value_len);
    if (ieq(p, name_len, "connection"))
        parse_connection(req, h->value, h->value_len);
    else if (ieq(p, name_len, "expect"))
        parse_expect(req, h->value, h->value_len);
    return 0;
}

/* The blank line arrived: checks that need every header. */
static int finish_head(PhHttpRequest *req)
{
    const PhHttpHeadState *st = &req->st;

    if (st->te_seen) {
        /* RFC 9112 6.1: HTTP/1.0 has no Transfer-Encoding, so its framing is suspect. */
        if (req->minor_version == 0)
            return -400;
        /* RFC 9112 6.3 lets a server drop Content-Length instead; refusing is safer. */
        if (req->content_length >= 0)
            return -400;
        if (st->te_chunked > 1 || (st->te_chunked == 1 && !st->te_last_chunked))
            return -400;
        if (st->te_other)
            return -501;
        req->chunked = 1;
    }
    if (req->minor_version == 1 && st->hosts == 0)
        return -400;
    if (req->content_length >= 0 &&
        (unsigned long long)req->content_length > (unsigned long long)body_limit(req))
        return -413;
    if (req->minor_version == 1)
        req->keep_alive = !st->conn_close;
    else
        req->keep_alive = st->conn_keep_alive && !st->conn_close;
    /* RFC 9110 10.1.1: a server must ignore 100-continue from an HTTP/1.0 client. */
    req->expect_continue = req->minor_version == 1 && st->expect_100;
    return 0;
}

int ph_http_parse_head(PhHttpRequest *req, const char *buf, size_t len)
{
    PhHttpHeadState *st = &req->st;
    size_t limit = head_limit(req), win, i;
    int rc;

    if (buf == NULL || st->buf != buf || len < st->pos) {
        head_clear(req);
        st->buf = buf;
    }
    /* Bytes past the limit are never looked at, so the outcome cannot depend on them. */
    win = len < limit ? len : limit;
    for (;;) {
        size_t start = st->pos;

        for (i = st->scan; i < win; i++) {
            if (buf[i] == '\n')
                return head_done(req, -400);
            if (buf[i] == '\r')
                break;
        }
        if (i + 1 >= win) {
            /* No CR yet, or a CR whose LF is not here yet: rescan from it next time. */
            st->scan = i;
            return len >= limit ? head_done(req, -431) : 0;
        }
        if (buf[i + 1] != '\n')
            return head_done(req, -400);
        st->pos = st->scan = i + 2;

        if (!st->request_line) {
            if (i == start)
                continue; /* an empty line before the request line */
            rc = parse_request_line(req, buf + start, i - start);
            st->request_line = 1;
        } else if (i == start) {
            rc = finish_head(req);
            return head_done(req, rc < 0 ? rc : (int)st->pos);
        } else {
            rc = parse_header_line(req, buf + start, i - start);
        }
        if (rc < 0)
            return head_done(req, rc);
    }
}

int ph_http_header_find(const PhHttpRequest *req, const char *name)
{
    size_t n = strlen(name), i, j;

    for (i = 0; i < req->num_headers; i++) {
        const PhHttpHeader *h = &req->headers[i];
        if (h->name_len != n)
            continue;
        for (j = 0; j < n; j++)
            if (lower((unsigned char)h->name[j]) != lower((unsigned char)name[j]))
                break;
        if (j == n)
            return (int)i;
    }
    return -1;
}

const char *ph_http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Content Too Large";
    case 415:
        return "Unsupported Media Type";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

/* ---- chunked bodies (RFC 9112 7.1) -------------------------------------------------------- */

enum {
    CH_SIZE_FIRST, /* start of a chunk-size line: a hex digit must come */
    CH_SIZE,       /* more hex digits, ";", BWS or CR */
    CH_BWS,        /* whitespace after the size: only ";" may follow */
    CH_EXT,        /* chunk extensions, skipped up to CR */
    CH_SIZE_LF,    /* the LF ending the chunk-size line */
    CH_DATA,       /* chunk data: size bytes left */
    CH_DATA_CR,    /* the CRLF after the data */
    CH_DATA_LF,
    CH_TR_START, /* start of a trailer line, or of the final CRLF */
    CH_TR_NAME,
    CH_TR_VALUE,
    CH_TR_LF,  /* the LF ending a trailer line */
    CH_END_LF, /* the LF of the final CRLF */
    CH_DONE,
};

void ph_chunked_init(PhChunked *c, size_t max_body, size_t max_trailer)
{
    memset(c, 0, sizeof *c);
    c->max_body = max_body == 0 ? PH_HTTP_DEFAULT_MAX_BODY : max_body;
    c->max_trailer = max_trailer == 0 ? PH_HTTP_DEFAULT_MAX_HEAD : max_trailer;
    c->state = CH_SIZE_FIRST;
}

/* One byte of the chunk-size line; returns 0 or minus a status. */
static int chunk_size_byte(PhChunked *c, unsigned char ch)
{
    size_t room = c->max_body - c->total; /* total never exceeds max_body */
    unsigned d;

    if (++c->line > PH_HTTP_CHUNK_LINE_MAX)
        return -400;
    switch (c->state) {
    case CH_SIZE_FIRST:
    case CH_SIZE:
        if (is_hex(ch, &d)) {
            /* The size may not take the total past max_body; checking each digit against
             * what is left also keeps size from overflowing, whatever the digit count. */
            if (d > room || c->size > (room - d) / 16)
                return -413;
            c->size = c->size * 16 + d;
            c->state = CH_SIZE;
            return 0;
        }
        if (c->state == CH_SIZE_FIRST)
            return -400;
        if (ch == ';')
            c->state = CH_EXT;
        else if (is_ows(ch))
            c->state = CH_BWS;
        else if (ch == '\r')
            c->state = CH_SIZE_LF;
        else
            return -400;
        return 0;
    case CH_BWS:
        if (ch == ';')
            c->state = CH_EXT;
        else if (!is_ows(ch))
            return -400;
        return 0;
    case CH_EXT:
        /* Skipped, but a bare LF or other control byte here is how chunk parsers have been
         * told apart; refuse them. */
        if (ch == '\r')
            c->state = CH_SIZE_LF;
        else if (!is_field_byte(ch))
            return -400;
        return 0;
    default: /* CH_SIZE_LF */
        if (ch != '\n')
            return -400;
        c->line = 0;
        if (c->size == 0) {
            c->state = CH_TR_START;
        } else {
            c->total += c->size;
            c->state = CH_DATA;
        }
        return 0;
    }
}

/* One byte of the trailer section; returns 0 or minus a status. */
static int chunk_trailer_byte(PhChunked *c, unsigned char ch)
{
    if (++c->trailer > c->max_trailer)
        return -431;
    switch (c->state) {
    case CH_TR_START:
        if (ch == '\r')
            c->state = CH_END_LF;
        else if (is_tchar(ch))
            c->state = CH_TR_NAME;
        else
            return -400; /* includes obs-fold and whitespace before a name */
        return 0;
    case CH_TR_NAME:
        if (ch == ':')
            c->state = CH_TR_VALUE;
        else if (!is_tchar(ch))
            return -400;
        return 0;
    case CH_TR_VALUE:
        if (ch == '\r')
            c->state = CH_TR_LF;
        else if (!is_field_byte(ch))
            return -400;
        return 0;
    case CH_TR_LF:
        if (ch != '\n')
            return -400;
        c->state = CH_TR_START;
        return 0;
    default: /* CH_END_LF */
        if (ch != '\n')
            return -400;
        c->state = CH_DONE;
        return 0;
    }
}

int ph_chunked_feed(PhChunked *c, const char *in, size_t in_len, char *out, size_t *consumed,
                    size_t *produced)
{
    size_t i = 0, o = 0;
    int rc = 0;

    while (c->status == 0 && c->state != CH_DONE && i < in_len) {
        unsigned char ch;

        if (c->state == CH_DATA) {
            size_t n = in_len - i;
            if (n > c->size)
                n = c->size;
            /* o <= i always, so this only ever moves bytes towards the front. */
            memmove(out + o, in + i, n);
            i += n;
            o += n;
            c->size -= n;
            if (c->size == 0)
                c->state = CH_DATA_CR;
            continue;
        }
        ch = (unsigned char)in[i++];
        switch (c->state) {
        case CH_DATA_CR:
            rc = ch == '\r' ? 0 : -400;
            c->state = CH_DATA_LF;
            break;
        case CH_DATA_LF:
            rc = ch == '\n' ? 0 : -400;
            c->state = CH_SIZE_FIRST;
            break;
        case CH_SIZE_FIRST:
        case CH_SIZE:
        case CH_BWS:
        case CH_EXT:
        case CH_SIZE_LF:
            rc = chunk_size_byte(c, ch);
            break;
        default:
            rc = chunk_trailer_byte(c, ch);
            break;
        }
        if (rc < 0)
            c->status = rc;
    }
    if (c->status == 0 && c->state == CH_DONE)
        c->status = 1;
    *consumed = i;
    *produced = o;
    return c->status;
}

/* ---- request bodies ----------------------------------------------------------------------- */

void ph_http_body_init(PhHttpBody *b, const PhHttpRequest *req, size_t max_body, size_t max_trailer)
{
    memset(b, 0, sizeof *b);
    b->chunked = req->chunked;
    if (b->chunked)
        ph_chunked_init(&b->ch, max_body, max_trailer);
    else if (req->content_length > 0)
        b->left = (unsigned long long)req->content_length;
}

int ph_http_body_feed(PhHttpBody *b, char *in, size_t len, size_t *consumed, size_t *produced)
{
    if (b->chunked)
        return ph_chunked_feed(&b->ch, in, len, in, consumed, produced);
    size_t take = len;
    if ((unsigned long long)take > b->left)
        take = (size_t)b->left;
    b->left -= take;
    *consumed = *produced = take;
    return b->left == 0 ? 1 : 0;
}
