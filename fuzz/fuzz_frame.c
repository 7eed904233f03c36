/* fuzz_frame.c - libFuzzer target: bridge/frame.c, decoding, re-encoding and round trips. */
#include "frame.h"
#include "fuzz_rng.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static void fail(const char *what)
{
    fprintf(stderr, "fuzz_frame: property violated: %s\n", what);
    abort();
}

/* Everything one decoding run saw: each frame's header and where its bytes are in the input
 * (payloads are compared against the input itself), the final status and error. */
#define MAX_FRAMES 4096
typedef struct {
    size_t count;
    unsigned type[MAX_FRAMES];
    uint32_t stream[MAX_FRAMES], length[MAX_FRAMES];
    size_t end[MAX_FRAMES]; /* input offset just past the frame */
    int rc;                 /* 0: input ran out, -1: refused */
    size_t consumed;
    char error[PH_FRAME_ERROR_MAX];
} Run;

/* The decoder lives on the heap: it holds a whole frame (64 KiB). */
static PhFrameDecoder *dec;

static void record(Run *r, const PhFrame *f, size_t at, const uint8_t *in)
{
    if (r->count == MAX_FRAMES)
        return;
    /* The payload must be the input's bytes just before at, and re-encode to them. */
    size_t flen = PH_FRAME_HEADER + (size_t)f->length;
    if (at < flen)
        fail("a frame longer than what was consumed");
    unsigned char hdr[PH_FRAME_HEADER];
    ph_frame_put_header(hdr, f->type, f->stream, f->length);
    if (memcmp(hdr, in + at - flen, PH_FRAME_HEADER) != 0 ||
        memcmp(f->payload, in + at - f->length, f->length) != 0)
        fail("a decoded frame does not re-encode to its input bytes");
    char err[PH_FRAME_ERROR_MAX];
    if (ph_frame_check(f->type, f->stream, f->length, f->payload, err) != 0)
        fail("the decoder returned a frame that ph_frame_check refuses");
    r->type[r->count] = f->type;
    r->stream[r->count] = f->stream;
    r->length[r->count] = f->length;
    r->end[r->count] = at;
    r->count++;
}

/* Decode in[0..n), in one call per frame (pieces = 0) or in random pieces. */
static void decode_run(const uint8_t *in, size_t n, int pieces, Run *r)
{
    size_t off = 0;
    r->count = 0; /* the arrays are only read up to count: no need to clear 80 KB */
    r->rc = 0;
    r->error[0] = '\0';
    dec->have = 0;
    dec->error[0] = '\0';
    for (;;) {
        size_t len = n - off;
        if (pieces) {
            size_t want = rnd(8) == 0 ? 1 + rnd(300) : 1 + rnd(12);
            if (want < len)
                len = want;
        }
        /* An exact-size copy of the piece: the decoder may not read past it. */
        uint8_t *chunk = malloc(len ? len : 1);
        if (chunk == NULL)
            abort();
        if (len)
            memcpy(chunk, in + off, len);
        size_t pos = 0;
        int rc;
        for (;;) {
            PhFrame f;
            size_t used = 0;
            rc = ph_frame_decode(dec, chunk + pos, len - pos, &used, &f);
            if (used > len - pos)
                fail("ph_frame_decode used more than it was given");
            pos += used;
            if (rc != 1)
                break;
            record(r, &f, off + pos, in);
        }
        free(chunk);
        off += pos;
        if (rc == -1) {
            if (dec->error[0] == '\0')
                fail("refused without an error message");
            memcpy(r->error, dec->error, sizeof r->error);
            size_t used = 1;
            PhFrame f;
            if (ph_frame_decode(dec, in, n, &used, &f) != -1 || used != 0)
                fail("the decoder does not stay refused");
            r->rc = -1;
            break;
        }
        if (pos != len)
            fail("ph_frame_decode returned 0 before taking all its input");
        if (off == n)
            break;
    }
    r->consumed = off;
}

static int runs_equal(const Run *a, const Run *b)
{
    if (a->count != b->count || a->rc != b->rc || a->consumed != b->consumed ||
        strcmp(a->error, b->error) != 0)
        return 0;
    for (size_t i = 0; i < a->count; i++)
        if (a->type[i] != b->type[i] || a->stream[i] != b->stream[i] ||
            a->length[i] != b->length[i] || a->end[i] != b->end[i])
            return 0;
    return 1;
}

static const unsigned types[] = {
    PH_FRAME_HELLO,  PH_FRAME_OPEN,   PH_FRAME_DATA,   PH_FRAME_FIN,
    PH_FRAME_RESET,  PH_FRAME_CREDIT, PH_FRAME_GOAWAY, PH_FRAME_EXEC,
    PH_FRAME_STDERR, PH_FRAME_EXIT,   PH_FRAME_SIGNAL, 0x08, /* one unknown type */
};

/* Frames built from the input: a script of (type, stream, length, payload) choices, each
 * encoded and decoded. The decoder accepts exactly what ph_frame_check accepts, and gives
 * back the frame that was encoded. */
static void roundtrip(const uint8_t *s, size_t n)
{
    static unsigned char wire[PH_FRAME_MAX + 16];
    size_t i = 0;
    while (i + 3 <= n) {
        unsigned type = types[s[i] % (sizeof types / sizeof types[0])];
        uint32_t stream = (s[i + 1] & 3) == 0 ? 0 : (uint32_t)s[i + 1] * 0x01010101u;
        uint32_t length = s[i + 2] < 240 ? (uint32_t)(s[i + 2] & 15)
                                         : PH_FRAME_MAX_PAYLOAD - 8u + (uint32_t)(s[i + 2] & 15);
        i += 3;
        ph_frame_put_header(wire, type, stream, length);
        for (uint32_t k = 0; k < length; k++) /* input bytes, then a pattern */
            wire[PH_FRAME_HEADER + k] = i + k < n ? s[i + k] : (unsigned char)(k * 7);
        i += length < n - i ? length : n - i;
        /* HELLO gets a magic often enough to pass. */
        if (type == PH_FRAME_HELLO && length == PH_FRAME_HELLO_LEN && (s[i - 1] & 1))
            memcpy(wire + PH_FRAME_HEADER, (s[i - 1] & 2) ? PH_FRAME_MAGIC : PH_FRAME_SERVE_MAGIC,
                   PH_FRAME_MAGIC_LEN);

        char err[PH_FRAME_ERROR_MAX];
        int ok = ph_frame_check(type, stream, length, wire + PH_FRAME_HEADER, err) == 0;
        size_t total = PH_FRAME_HEADER + (size_t)length;
        PhFrame f;
        size_t used = 0;
        dec->have = 0;
        dec->error[0] = '\0';
        int rc = ph_frame_decode(dec, wire, total, &used, &f);
        if (ok) {
            if (rc != 1 || used != total || f.type != type || f.stream != stream ||
                f.length != length || memcmp(f.payload, wire + PH_FRAME_HEADER, length) != 0)
                fail("a valid frame does not round-trip");
        } else {
            if (rc != -1 || strcmp(dec->error, err) != 0)
                fail("the decoder and ph_frame_check disagree on a bad frame");
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static Run whole, split;
    if (dec == NULL && (dec = malloc(sizeof *dec)) == NULL)
        abort();
    if (size < 2)
        return 0;
    rng_state = 0x2545f491u ^ ((uint32_t)data[0] << 8 | data[1]);
    const uint8_t *s = data + 2;
    size_t n = size - 2;

    decode_run(s, n, 0, &whole);
    decode_run(s, n, 1, &split);
    if (!runs_equal(&whole, &split))
        fail("decoding whole and in pieces differ");

    roundtrip(s, n);

    for (unsigned t = 0; t < 0x100; t++) {
        const char *name = ph_frame_type_name(t);
        if (name != NULL && ph_frame_type_of(name) != t)
            fail("type names do not round-trip");
    }
    return 0;
}
