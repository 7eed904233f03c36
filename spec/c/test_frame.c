/* test_frame.c - unit test of bridge/frame.c, ph-sandbox-helper's frame codec (relay and serve):
 * round trips of every type, every split point, every rejection, and a model-checked random
 * walk. Prints
 * "N passed, M failed"; exits 1 on a failure. */
#include "check.h"
#include "frame.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A frame as the tests write it down: the decoder's PhFrame with the payload copied. */
typedef struct {
    unsigned type;
    uint32_t stream;
    uint32_t length;
    unsigned char payload[PH_FRAME_MAX_PAYLOAD];
} Want;

/* Appends header + payload at out; returns the frame's size. */
static size_t enc(unsigned char *out, unsigned type, uint32_t stream, const void *payload,
                  uint32_t length)
{
    ph_frame_put_header(out, type, stream, length);
    if (length > 0)
        memcpy(out + PH_FRAME_HEADER, payload, length);
    return PH_FRAME_HEADER + (size_t)length;
}

static size_t enc_credit(unsigned char *out, uint32_t stream, uint32_t n)
{
    unsigned char p[4];
    ph_frame_put_u32(p, n);
    return enc(out, PH_FRAME_CREDIT, stream, p, 4);
}

static size_t enc_hello_magic(unsigned char *out, const char *magic, unsigned port)
{
    unsigned char p[PH_FRAME_HELLO_LEN];
    memcpy(p, magic, PH_FRAME_MAGIC_LEN);
    p[8] = (unsigned char)(port >> 8);
    p[9] = (unsigned char)port;
    return enc(out, PH_FRAME_HELLO, 0, p, sizeof p);
}

static size_t enc_hello(unsigned char *out, unsigned port)
{
    return enc_hello_magic(out, PH_FRAME_MAGIC, port);
}

static size_t enc_exit(unsigned char *out, uint32_t stream, unsigned how, unsigned code,
                       unsigned flags)
{
    unsigned char p[PH_FRAME_EXIT_LEN] = { (unsigned char)how, (unsigned char)code,
                                           (unsigned char)flags };
    return enc(out, PH_FRAME_EXIT, stream, p, sizeof p);
}

static size_t enc_signal(unsigned char *out, uint32_t stream, unsigned signo, uint32_t after)
{
    unsigned char p[PH_FRAME_SIGNAL_LEN];
    p[0] = (unsigned char)signo;
    ph_frame_put_u32(p + 1, after);
    return enc(out, PH_FRAME_SIGNAL, stream, p, sizeof p);
}

static int same(const PhFrame *f, const Want *w)
{
    return f->type == w->type && f->stream == w->stream && f->length == w->length &&
           (w->length == 0 || memcmp(f->payload, w->payload, w->length) == 0);
}

/* Feeds in[0..len) in chunks whose sizes come from next_chunk(); every frame must match
 * want[i] in order, with no error. Returns how many frames came out, or -1 on a mismatch. */
static int feed_all(const unsigned char *in, size_t len, size_t (*next_chunk)(size_t left),
                    const Want *want, int nwant)
{
    PhFrameDecoder *d = calloc(1, sizeof *d);
    int got = 0;
    size_t pos = 0;
    while (pos < len && got >= 0) {
        size_t n = next_chunk(len - pos), off = 0;
        while (off < n) {
            PhFrame f;
            size_t used;
            int r = ph_frame_decode(d, in + pos + off, n - off, &used, &f);
            off += used;
            if (r < 0 || (r == 1 && (got >= nwant || !same(&f, &want[got])))) {
                got = -1;
                break;
            }
            if (r == 1)
                got++;
            else if (off != n) {
                got = -1; /* 0 must mean "took everything" */
                break;
            }
        }
        pos += n;
    }
    if (got >= 0 && d->have != 0)
        got = -1; /* a frame left half-decoded */
    free(d);
    return got;
}

static size_t chunk_one(size_t left)
{
    return 1;
}

static size_t chunk_all(size_t left)
{
    return left;
}

static size_t chunk_random(size_t left)
{
    size_t n = 1 + rnd(rnd(2) ? 20 : 70000);
    return n < left ? n : left;
}

static size_t split_at, split_first;
static size_t chunk_split(size_t left)
{
    size_t n = split_first ? split_at : left;
    split_first = 0;
    return n ? n : left;
}

/* One frame of every type, some with payloads, as one byte string. */
#define EVERY 14
static Want every[EVERY];
static unsigned char every_bytes[EVERY * (PH_FRAME_HEADER + 64)];
static size_t every_len;
static int every_n;

static void add_every(unsigned type, uint32_t stream, const void *payload, uint32_t length)
{
    Want *w = &every[every_n++];
    w->type = type;
    w->stream = stream;
    w->length = length;
    memcpy(w->payload, payload, length);
    every_len += enc(every_bytes + every_len, type, stream, payload, length);
}

static void build_every(void)
{
    unsigned char hello[PH_FRAME_HELLO_LEN], credit[4];
    memcpy(hello, PH_FRAME_MAGIC "\x1f\x90", sizeof hello); /* port 8080 */
    ph_frame_put_u32(credit, 4096);
    add_every(PH_FRAME_HELLO, 0, hello, sizeof hello);
    add_every(PH_FRAME_OPEN, 1, "", 0);
    add_every(PH_FRAME_DATA, 1, "GET / HTTP/1.1\r\n\r\n", 18);
    add_every(PH_FRAME_CREDIT, 1, credit, 4);
    add_every(PH_FRAME_DATA, 3, "\0\xff\n", 3);
    add_every(PH_FRAME_FIN, 1, "", 0);
    add_every(PH_FRAME_RESET, 3, "", 0);
    add_every(PH_FRAME_GOAWAY, 0, "bye", 3);
    /* The server's: its HELLO, a request piece, stderr, an exit by status and by signal. */
    memcpy(hello, PH_FRAME_SERVE_MAGIC "\x01\x00", sizeof hello); /* 256 commands */
    add_every(PH_FRAME_HELLO, 0, hello, sizeof hello);
    add_every(PH_FRAME_EXEC, 2, "\0\0\0\x1e", 4);
    add_every(PH_FRAME_STDERR, 2, "oops\n", 5);
    add_every(PH_FRAME_SIGNAL, 2, "\x0f\0\0\x07\xd0", PH_FRAME_SIGNAL_LEN); /* TERM, 2000 */
    add_every(PH_FRAME_EXIT, 2, "\0\x7f\0", PH_FRAME_EXIT_LEN);             /* exit 127 */
    add_every(PH_FRAME_EXIT, 4, "\x01\x09\x01", PH_FRAME_EXIT_LEN);         /* KILL, timed out */
}

static void test_round_trips(void)
{
    static Want w;
    static unsigned char buf[PH_FRAME_MAX];
    for (int i = 0; i < every_n; i++) {
        size_t n = enc(buf, every[i].type, every[i].stream, every[i].payload, every[i].length);
        check(feed_all(buf, n, chunk_all, &every[i], 1) == 1, "round trip of %s",
              ph_frame_type_name(every[i].type));
    }
    /* The largest payload, and stream ids at both ends of the range. */
    w.type = PH_FRAME_DATA;
    w.stream = UINT32_MAX;
    w.length = PH_FRAME_MAX_PAYLOAD;
    for (size_t i = 0; i < w.length; i++)
        w.payload[i] = (unsigned char)rnd(256);
    size_t n = enc(buf, w.type, w.stream, w.payload, w.length);
    check(n == PH_FRAME_MAX, "the largest frame is PH_FRAME_MAX bytes");
    check(feed_all(buf, n, chunk_all, &w, 1) == 1, "a DATA of PH_FRAME_MAX_PAYLOAD bytes");
    check(feed_all(buf, n, chunk_random, &w, 1) == 1, "the largest frame, in random chunks");
    w.type = PH_FRAME_CREDIT;
    w.stream = 1;
    w.length = 4;
    ph_frame_put_u32(w.payload, UINT32_MAX);
    n = enc_credit(buf, 1, UINT32_MAX);
    check(feed_all(buf, n, chunk_all, &w, 1) == 1, "CREDIT of 2^32-1");
    w.type = PH_FRAME_GOAWAY;
    w.stream = 0;
    w.length = 0;
    n = enc(buf, w.type, 0, "", 0);
    check(feed_all(buf, n, chunk_all, &w, 1) == 1, "GOAWAY without a reason");
    w.type = PH_FRAME_HELLO;
    w.length = PH_FRAME_HELLO_LEN;
    memcpy(w.payload, PH_FRAME_MAGIC "\xff\xff", PH_FRAME_HELLO_LEN);
    n = enc_hello(buf, 65535);
    check(feed_all(buf, n, chunk_all, &w, 1) == 1, "HELLO with port 65535");
    memcpy(w.payload, PH_FRAME_SERVE_MAGIC "\0\x01", PH_FRAME_HELLO_LEN);
    n = enc_hello_magic(buf, PH_FRAME_SERVE_MAGIC, 1);
    check(feed_all(buf, n, chunk_all, &w, 1) == 1, "the server's HELLO with 1 command");
    w.type = PH_FRAME_EXIT;
    w.stream = UINT32_MAX;
    w.length = PH_FRAME_EXIT_LEN;
    memcpy(w.payload, "\0\xff\x01", PH_FRAME_EXIT_LEN);
    n = enc_exit(buf, UINT32_MAX, 0, 255, PH_EXIT_TIMED_OUT);
    check(feed_all(buf, n, chunk_all, &w, 1) == 1, "EXIT 255, timed out");
    w.type = PH_FRAME_SIGNAL;
    w.length = PH_FRAME_SIGNAL_LEN;
    memcpy(w.payload, "\x40\xff\xff\xff\xff", PH_FRAME_SIGNAL_LEN);
    n = enc_signal(buf, UINT32_MAX, 64, UINT32_MAX);
    check(feed_all(buf, n, chunk_all, &w, 1) == 1, "SIGNAL 64, KILL after 2^32-1 ms");
    w.type = PH_FRAME_EXEC;
    w.length = PH_FRAME_MAX_PAYLOAD;
    for (size_t i = 0; i < w.length; i++)
        w.payload[i] = (unsigned char)rnd(256);
    n = enc(buf, w.type, w.stream, w.payload, w.length);
    check(feed_all(buf, n, chunk_random, &w, 1) == 1, "an EXEC of PH_FRAME_MAX_PAYLOAD bytes");

    unsigned char hdr[PH_FRAME_HEADER];
    ph_frame_put_header(hdr, PH_FRAME_DATA, 0x01020304, 0x0a0b0c0d);
    check(memcmp(hdr, "\x03\x01\x02\x03\x04\x0a\x0b\x0c\x0d", PH_FRAME_HEADER) == 0,
          "the header is type, then stream and length big-endian");
}

static void test_names(void)
{
    const char *names[] = { "HELLO", "OPEN", "DATA", "FIN", "RESET", "CREDIT", "GOAWAY" };
    for (unsigned t = 1; t <= 7; t++) {
        check(strcmp(ph_frame_type_name(t), names[t - 1]) == 0, "name of type %u", t);
        check(ph_frame_type_of(names[t - 1]) == t, "type of %s", names[t - 1]);
    }
    const char *serve[] = { "EXEC", "STDERR", "EXIT", "SIGNAL" };
    for (unsigned t = 0x10; t <= 0x13; t++) {
        check(strcmp(ph_frame_type_name(t), serve[t - 0x10]) == 0, "name of type 0x%02x", t);
        check(ph_frame_type_of(serve[t - 0x10]) == t, "type of %s", serve[t - 0x10]);
    }
    check(PH_FRAME_DATA == 3 && PH_FRAME_GOAWAY == 7, "type values as documented");
    check(PH_FRAME_EXEC == 0x10 && PH_FRAME_SIGNAL == 0x13 && PH_FRAME_TYPE_MAX == 0x13,
          "the server's type values as documented");
    for (unsigned t = 8; t < 0x10; t++)
        check(ph_frame_type_name(t) == NULL, "no name for 0x%02x", t);
    check(ph_frame_type_name(0) == NULL && ph_frame_type_name(0x14) == NULL &&
              ph_frame_type_name(0xff) == NULL,
          "no name for 0, 0x14 and 0xff");
    check(ph_frame_type_of("data") == 0 && ph_frame_type_of("") == 0, "names are exact");
}

static void test_splits(void)
{
    int all_ok = 1;
    for (size_t k = 0; k <= every_len; k++) {
        split_at = k;
        split_first = 1;
        if (feed_all(every_bytes, every_len, chunk_split, every, every_n) != every_n) {
            check(0, "split at byte %zu", k);
            all_ok = 0;
        }
    }
    check(all_ok, "every split point of %zu bytes decodes the %d frames", every_len, every_n);
    check(feed_all(every_bytes, every_len, chunk_one, every, every_n) == every_n, "byte by byte");
    check(feed_all(every_bytes, every_len, chunk_all, every, every_n) == every_n, "all at once");
    int ok = 1;
    for (int i = 0; i < 200 && ok; i++)
        ok = feed_all(every_bytes, every_len, chunk_random, every, every_n) == every_n;
    check(ok, "200 random chunkings");
}

/* Feeds bytes in one go; expects a refusal whose message contains what. */
static void refused(const char *label, const unsigned char *in, size_t len, const char *what)
{
    PhFrameDecoder *d = calloc(1, sizeof *d);
    PhFrame f;
    size_t used, pos = 0;
    int r;
    while ((r = ph_frame_decode(d, in + pos, len - pos, &used, &f)) == 1)
        pos += used;
    check(r == -1, "%s: refused (got %d)", label, r);
    check(strstr(d->error, what) != NULL && strncmp(d->error, "frame: ", 7) == 0,
          "%s: says '%s' (got '%s')", label, what, d->error);
    char first[PH_FRAME_ERROR_MAX];
    memcpy(first, d->error, sizeof first);
    static const unsigned char good[] = "\x04\0\0\0\x01\0\0\0\0"; /* FIN on stream 1 */
    check(ph_frame_decode(d, good, PH_FRAME_HEADER, &used, &f) == -1 && used == 0 &&
              strcmp(d->error, first) == 0,
          "%s: stays refused, with the same message", label);
    free(d);
}

static void hdr(unsigned char *out, unsigned type, uint32_t stream, uint32_t length)
{
    ph_frame_put_header(out, type, stream, length);
}

static void test_rejections(void)
{
    unsigned char b[64] = { 0 };
    char err[PH_FRAME_ERROR_MAX];

    hdr(b, 0, 1, 0);
    refused("type 0", b, PH_FRAME_HEADER, "unknown type 0x00");
    hdr(b, 8, 1, 0);
    refused("type 8", b, PH_FRAME_HEADER, "unknown type 0x08");
    hdr(b, 0x0f, 1, 0);
    refused("type 0x0f", b, PH_FRAME_HEADER, "unknown type 0x0f");
    hdr(b, 0x14, 1, 0);
    refused("type 0x14", b, PH_FRAME_HEADER, "unknown type 0x14");
    hdr(b, 0xff, 1, 0);
    refused("type 0xff", b, PH_FRAME_HEADER, "unknown type 0xff");
    hdr(b, PH_FRAME_DATA, 1, PH_FRAME_MAX_PAYLOAD + 1);
    refused("oversized DATA", b, PH_FRAME_HEADER, "DATA of 65537 bytes exceeds");
    hdr(b, PH_FRAME_GOAWAY, 0, UINT32_MAX);
    refused("oversized GOAWAY", b, PH_FRAME_HEADER, "exceeds the maximum of 65536");
    hdr(b, PH_FRAME_DATA, 1, 0);
    refused("empty DATA", b, PH_FRAME_HEADER, "empty DATA on stream 1");
    hdr(b, PH_FRAME_HELLO, 1, PH_FRAME_HELLO_LEN);
    refused("HELLO on a stream", b, PH_FRAME_HEADER, "HELLO on stream 1 (must be 0)");
    hdr(b, PH_FRAME_GOAWAY, 5, 0);
    refused("GOAWAY on a stream", b, PH_FRAME_HEADER, "GOAWAY on stream 5 (must be 0)");
    const unsigned stream_types[] = { PH_FRAME_OPEN,   PH_FRAME_DATA,   PH_FRAME_FIN,
                                      PH_FRAME_RESET,  PH_FRAME_CREDIT, PH_FRAME_EXEC,
                                      PH_FRAME_STDERR, PH_FRAME_EXIT,   PH_FRAME_SIGNAL };
    for (size_t i = 0; i < sizeof stream_types / sizeof stream_types[0]; i++) {
        unsigned t = stream_types[i];
        uint32_t len = t == PH_FRAME_CREDIT   ? 4
                       : t == PH_FRAME_EXIT   ? PH_FRAME_EXIT_LEN
                       : t == PH_FRAME_SIGNAL ? PH_FRAME_SIGNAL_LEN
                       : t == PH_FRAME_DATA || t == PH_FRAME_EXEC || t == PH_FRAME_STDERR ? 1
                                                                                          : 0;
        hdr(b, t, 0, len);
        char label[64], what[64];
        snprintf(label, sizeof label, "%s on stream 0", ph_frame_type_name(t));
        snprintf(what, sizeof what, "%s on stream 0", ph_frame_type_name(t));
        refused(label, b, PH_FRAME_HEADER + len, what);
    }
    hdr(b, PH_FRAME_CREDIT, 1, 3);
    refused("short CREDIT", b, PH_FRAME_HEADER + 3, "CREDIT of 3 bytes (must be 4)");
    hdr(b, PH_FRAME_CREDIT, 1, 5);
    refused("long CREDIT", b, PH_FRAME_HEADER + 5, "CREDIT of 5 bytes (must be 4)");
    enc_credit(b, 7, 0);
    refused("CREDIT of 0", b, PH_FRAME_HEADER + 4, "CREDIT of 0 bytes on stream 7");
    const unsigned empty_types[] = { PH_FRAME_OPEN, PH_FRAME_FIN, PH_FRAME_RESET };
    for (size_t i = 0; i < sizeof empty_types / sizeof empty_types[0]; i++) {
        hdr(b, empty_types[i], 1, 2);
        char label[64];
        snprintf(label, sizeof label, "%s with a payload", ph_frame_type_name(empty_types[i]));
        refused(label, b, PH_FRAME_HEADER + 2, "with a payload of 2 bytes (must be empty)");
    }
    hdr(b, PH_FRAME_HELLO, 0, 9);
    refused("short HELLO", b, PH_FRAME_HEADER + 9, "HELLO of 9 bytes (must be 10)");
    hdr(b, PH_FRAME_HELLO, 0, 11);
    refused("long HELLO", b, PH_FRAME_HEADER + 11, "HELLO of 11 bytes (must be 10)");
    size_t n = enc_hello(b, 80);
    b[PH_FRAME_HEADER] = 'p';
    refused("HELLO with a bad magic", b, n, "HELLO without the magic PHRELAY1");
    n = enc_hello(b, 0);
    refused("HELLO with port 0", b, n, "HELLO with port 0");
    n = enc_hello_magic(b, PH_FRAME_SERVE_MAGIC, 0);
    refused("the server's HELLO with 0 commands", b, n, "HELLO with 0 commands");
    n = enc_hello_magic(b, "PHSERVE2", 1);
    refused("HELLO with another magic", b, n, "without the magic PHRELAY1 or PHSERVE1");

    /* The server's types. */
    hdr(b, PH_FRAME_EXEC, 1, 0);
    refused("empty EXEC", b, PH_FRAME_HEADER, "empty EXEC on stream 1");
    hdr(b, PH_FRAME_STDERR, 2, 0);
    refused("empty STDERR", b, PH_FRAME_HEADER, "empty STDERR on stream 2");
    hdr(b, PH_FRAME_EXIT, 1, 2);
    refused("short EXIT", b, PH_FRAME_HEADER + 2, "EXIT of 2 bytes (must be 3)");
    hdr(b, PH_FRAME_EXIT, 1, 4);
    refused("long EXIT", b, PH_FRAME_HEADER, "EXIT of 4 bytes (must be 3)");
    n = enc_exit(b, 5, 2, 0, 0);
    refused("EXIT of kind 2", b, n, "EXIT of an unknown kind 2 on stream 5");
    n = enc_exit(b, 5, 1, 0, 0);
    refused("EXIT by signal 0", b, n, "EXIT by signal 0 on stream 5");
    n = enc_exit(b, 5, 0, 0, 2);
    refused("EXIT with flag 2", b, n, "EXIT with unknown flags 0x02 on stream 5");
    hdr(b, PH_FRAME_SIGNAL, 1, 4);
    refused("short SIGNAL", b, PH_FRAME_HEADER + 4, "SIGNAL of 4 bytes (must be 5)");
    n = enc_signal(b, 3, 0, 0);
    refused("SIGNAL 0", b, n, "SIGNAL of signal 0 on stream 3 (must be 1..64)");
    n = enc_signal(b, 3, 65, 0);
    refused("SIGNAL 65", b, n, "SIGNAL of signal 65 on stream 3");
    check(ph_frame_check(PH_FRAME_EXIT, 1, 3, NULL, err) == 0,
          "ph_frame_check of an EXIT header alone passes");

    /* A good frame, then a bad one: the good one comes out first. */
    size_t at = enc(b, PH_FRAME_DATA, 1, "ok", 2);
    hdr(b + at, 9, 1, 0);
    PhFrameDecoder *d = calloc(1, sizeof *d);
    PhFrame f;
    size_t used;
    int r = ph_frame_decode(d, b, at + PH_FRAME_HEADER, &used, &f);
    check(r == 1 && used == at && f.length == 2, "the frame before a bad one is delivered");
    r = ph_frame_decode(d, b + used, PH_FRAME_HEADER, &used, &f);
    check(r == -1 && used == PH_FRAME_HEADER, "then the bad header is refused");
    free(d);

    /* An oversized length is refused on its header, without waiting for the payload. */
    d = calloc(1, sizeof *d);
    hdr(b, PH_FRAME_DATA, 1, 1u << 31);
    r = ph_frame_decode(d, b, 5, &used, &f);
    check(r == 0 && used == 5, "half a header: waits");
    r = ph_frame_decode(d, b + 5, 4, &used, &f);
    check(r == -1 && used == 4, "the header's last byte: refused at once");
    free(d);

    check(ph_frame_check(PH_FRAME_DATA, 1, 1, (const unsigned char *)"x", err) == 0,
          "ph_frame_check accepts a good frame");
    check(ph_frame_check(PH_FRAME_CREDIT, 1, 4, NULL, err) == 0,
          "ph_frame_check with no payload checks the header only");
    check(ph_frame_check(PH_FRAME_CREDIT, 1, 4, (const unsigned char *)"\0\0\0\0", err) == -1 &&
              strstr(err, "CREDIT of 0") != NULL,
          "ph_frame_check with a payload checks it");
}

/* A random valid frame into w. */
static void random_frame(Want *w)
{
    static const unsigned types[] = { PH_FRAME_HELLO,  PH_FRAME_OPEN,  PH_FRAME_DATA,
                                      PH_FRAME_FIN,    PH_FRAME_RESET, PH_FRAME_CREDIT,
                                      PH_FRAME_GOAWAY, PH_FRAME_EXEC,  PH_FRAME_STDERR,
                                      PH_FRAME_EXIT,   PH_FRAME_SIGNAL };
    w->type = types[rnd(sizeof types / sizeof types[0])];
    w->stream = w->type == PH_FRAME_HELLO || w->type == PH_FRAME_GOAWAY
                    ? 0
                    : 1 + (uint32_t)rnd(rnd(2) ? 10 : UINT32_MAX);
    switch (w->type) {
    case PH_FRAME_HELLO:
        w->length = PH_FRAME_HELLO_LEN;
        memcpy(w->payload, rnd(2) ? PH_FRAME_MAGIC : PH_FRAME_SERVE_MAGIC, PH_FRAME_MAGIC_LEN);
        w->payload[8] = (unsigned char)(1 + rnd(255));
        w->payload[9] = (unsigned char)rnd(256);
        return;
    case PH_FRAME_EXIT:
        w->length = PH_FRAME_EXIT_LEN;
        w->payload[0] = (unsigned char)rnd(2);
        w->payload[1] = (unsigned char)(w->payload[0] ? 1 + rnd(64) : rnd(256));
        w->payload[2] = (unsigned char)rnd(2);
        return;
    case PH_FRAME_SIGNAL:
        w->length = PH_FRAME_SIGNAL_LEN;
        w->payload[0] = (unsigned char)(1 + rnd(64));
        ph_frame_put_u32(w->payload + 1, (uint32_t)rnd(UINT32_MAX));
        return;
    case PH_FRAME_CREDIT:
        w->length = 4;
        ph_frame_put_u32(w->payload, 1 + (uint32_t)rnd(UINT32_MAX - 1));
        return;
    case PH_FRAME_DATA:
    case PH_FRAME_STDERR:
    case PH_FRAME_EXEC:
        w->length = 1 + (uint32_t)rnd(rnd(4) ? 100 : PH_FRAME_MAX_PAYLOAD);
        break;
    case PH_FRAME_GOAWAY:
        w->length = (uint32_t)rnd(40);
        break;
    default:
        w->length = 0;
    }
    for (uint32_t i = 0; i < w->length; i++)
        w->payload[i] = (unsigned char)rnd(256);
}

/* Random frames, encoded back to back and fed in random chunks, sometimes ending in a bad
 * header: the decoder yields exactly the model's frames, in order, then the refusal. */
static void test_model(void)
{
    enum { FRAMES = 64 };
    static Want model[FRAMES];
    static unsigned char bytes[FRAMES * PH_FRAME_MAX + PH_FRAME_HEADER];
    int ok = 1;
    for (int walk = 0; walk < 300 && ok; walk++) {
        int n = 1 + (int)rnd(FRAMES);
        size_t len = 0;
        for (int i = 0; i < n; i++) {
            random_frame(&model[i]);
            len +=
                enc(bytes + len, model[i].type, model[i].stream, model[i].payload, model[i].length);
        }
        int bad = rnd(4) == 0; /* append a frame that must be refused */
        if (bad) {
            hdr(bytes + len, PH_FRAME_DATA, 0, 1);
            len += PH_FRAME_HEADER;
        }
        PhFrameDecoder *d = calloc(1, sizeof *d);
        int got = 0, refused_at = -1;
        size_t pos = 0;
        while (pos < len && ok && refused_at < 0) {
            size_t chunk = chunk_random(len - pos), off = 0;
            while (off < chunk) {
                PhFrame f;
                size_t used;
                int r = ph_frame_decode(d, bytes + pos + off, chunk - off, &used, &f);
                off += used;
                if (r == -1) {
                    refused_at = got;
                    break;
                }
                if (r == 1)
                    ok = got < n && same(&f, &model[got++]);
                if (!ok || (r == 0 && off != chunk))
                    break;
            }
            pos += chunk;
        }
        if (bad)
            ok = ok && refused_at == n && strstr(d->error, "DATA on stream 0") != NULL;
        else
            ok = ok && refused_at < 0 && got == n && d->have == 0;
        if (!ok)
            check(0, "walk %d diverged: %d of %d frames, refused at %d", walk, got, n, refused_at);
        free(d);
    }
    check(ok, "300 random walks decode exactly the model's frames");
}

int main(void)
{
    build_every();
    test_names();
    test_round_trips();
    test_splits();
    test_rejections();
    test_model();
    return check_report();
}
