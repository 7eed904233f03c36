/* test_util.c - unit test of host/ph_util.c: SHA-256, base64, hex, constant-time compare,
 * UTF-8 cleaning (fixed cases, a reference decoder, the chunk-split property), JSON string
 * sizes and escapes (against cjson's table; clipping at once and chunk by chunk), random, uuid,
 * private temp dirs and tree removal. Prints "N passed, M failed"; exits 1 on a failure. */
#include "check.h"
#include "ph_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- SHA-256 ---------------------------------------------------------------------------- */

static void sha_hex(const void *data, size_t n, char out[65])
{
    unsigned char d[PH_SHA256_LEN];
    ph_sha256(data, n, d);
    ph_hex_encode(d, sizeof d, out);
    out[64] = '\0';
}

static void test_sha256(void)
{
    static const struct {
        const char *in, *hex;
    } fips[] = {
        { "", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" },
        { "abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" },
        { "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1" },
        { "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmn"
          "opqrlmnopqrsmnopqrstnopqrstu",
          "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1" },
    };
    char hex[65];
    for (size_t i = 0; i < sizeof fips / sizeof fips[0]; i++) {
        sha_hex(fips[i].in, strlen(fips[i].in), hex);
        check(strcmp(hex, fips[i].hex) == 0, "sha256 vector %zu: %s", i, hex);
    }

    /* One million 'a', fed in uneven pieces through the incremental interface. */
    static unsigned char million[1000000];
    memset(million, 'a', sizeof million);
    ph_sha256_ctx c;
    ph_sha256_init(&c);
    for (size_t off = 0, step = 1; off < sizeof million; off += step, step = step * 3 % 977 + 1)
        ph_sha256_update(&c, million + off,
                         off + step > sizeof million ? sizeof million - off : step);
    unsigned char d[PH_SHA256_LEN];
    ph_sha256_final(&c, d);
    ph_hex_encode(d, sizeof d, hex);
    check(memcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0", 64) == 0,
          "sha256 of a million 'a' (incremental): %.64s", hex);
    sha_hex(million, sizeof million, hex);
    check(strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0,
          "sha256 of a million 'a' (one shot): %s", hex);

    /* Lengths around the padding boundaries (expected values from an independent tool). */
    static const struct {
        size_t n;
        const char *hex;
    } edges[] = {
        { 55, "e7313d333c272e639f790978283f9eb392e843d0f29b7016828bb1daa4aac70b" },
        { 56, "4324d65f3c103567f5589c710bc08f8523f929a9272e3af36fc968e52abc6c27" },
        { 63, "81c80242132f230c3bd41b3e63bbcff16107339549214a99614ff26664625055" },
        { 64, "39e3d7b6b5d075d37d053ad89b24b41bef4f3c29760c84447cab3f3be1882241" },
        { 65, "aacca6ff74fdbb296d165a45cecfa04e5127bc008770fbbdd48006f2d2fae95e" },
        { 119, "9ce7368e4daf32341631b492e80359dc9f594b48453cd0dd5bf0b19279cc177e" },
        { 120, "7836b787757e95e58b3ca5aec90b1b004e8deba1e50e9675af9cabf1a13a04b5" },
        { 127, "a8d23e75d936f303d248888d9b165ee543f4cbafcad3c9dd2a79bd84faa11d07" },
        { 128, "d2742f1f4ac6bb7ca2b239ee18402ba8b3f9f8e652d2a72973c2b9ba11c08cf6" },
        { 200, "2c7e18c942ef065b526a2d4e5546283749cd3ddfb51d8fc71f42717363685f46" },
    };
    unsigned char buf[256];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (unsigned char)(i * 7 + 3);
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) {
        sha_hex(buf, edges[i].n, hex);
        check(strcmp(hex, edges[i].hex) == 0, "sha256 of %zu bytes: %s", edges[i].n, hex);
    }

    /* Every split point of every length up to 200 gives the one-shot digest. */
    int bad = 0;
    for (size_t n = 0; n <= 200; n++) {
        unsigned char whole[PH_SHA256_LEN], parts[PH_SHA256_LEN];
        ph_sha256(buf, n, whole);
        for (size_t k = 0; k <= n; k++) {
            ph_sha256_init(&c);
            ph_sha256_update(&c, buf, k);
            ph_sha256_update(&c, buf + k, n - k);
            ph_sha256_final(&c, parts);
            bad += memcmp(whole, parts, sizeof whole) != 0;
        }
    }
    check(bad == 0, "sha256 incremental split mismatches: %d", bad);
}

/* ---- base64 and hex --------------------------------------------------------------------- */

static int b64_decode_str(const char *in, char *out, size_t *outlen)
{
    return ph_base64_decode(in, strlen(in), (unsigned char *)out, outlen);
}

static void test_base64(void)
{
    static const char *rfc[][2] = {
        /* RFC 4648 section 10 */
        { "", "" },
        { "f", "Zg==" },
        { "fo", "Zm8=" },
        { "foo", "Zm9v" },
        { "foob", "Zm9vYg==" },
        { "fooba", "Zm9vYmE=" },
        { "foobar", "Zm9vYmFy" },
    };
    char enc[64], dec[64];
    size_t dlen;
    for (size_t i = 0; i < sizeof rfc / sizeof rfc[0]; i++) {
        size_t n = strlen(rfc[i][0]);
        size_t m = ph_base64_encode((const unsigned char *)rfc[i][0], n, enc);
        check(m == ph_base64_encoded_len(n) && m == strlen(rfc[i][1]) &&
                  memcmp(enc, rfc[i][1], m) == 0,
              "base64 encode \"%s\"", rfc[i][0]);
        int r = b64_decode_str(rfc[i][1], dec, &dlen);
        check(r == 0 && dlen == n && memcmp(dec, rfc[i][0], n) == 0, "base64 decode \"%s\"",
              rfc[i][1]);
    }

    /* Unpadded input is accepted. */
    static const char *unpadded[][2] = {
        { "Zg", "f" },
        { "Zm8", "fo" },
        { "Zm9vYg", "foob" },
        { "Zm9vYmE", "fooba" },
    };
    for (size_t i = 0; i < sizeof unpadded / sizeof unpadded[0]; i++) {
        int r = b64_decode_str(unpadded[i][0], dec, &dlen);
        check(r == 0 && dlen == strlen(unpadded[i][1]) && memcmp(dec, unpadded[i][1], dlen) == 0,
              "base64 decode unpadded \"%s\"", unpadded[i][0]);
    }

    static const char *invalid[] = {
        "Z",                                /* one character cannot hold a byte */
        "Zm9vY",                            /* same, after a whole group */
        "Zg=",                              /* partial padding */
        "Zg===",                            /* too much padding */
        "=",                                /* padding only */
        "====",                             /* padding only */
        "Z===",                             /* three pad characters */
        "Zg==Zg==",                         /* padding in the middle */
        "Zm=v",                             /* padding in the middle of a group */
        "Zm9v Yg==",                        /* whitespace */
        "Zm9v\nYg==", "Zm9vYg==\n", "Zm-v", /* URL-safe alphabet */
        "Zm_v",                             /* URL-safe alphabet */
        "Zh==",                             /* nonzero unused bits */
        "Zm9=",                             /* nonzero unused bits */
        "Zh",                               /* nonzero unused bits, unpadded */
        "Zm\x80v",                          /* high byte */
    };
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++)
        check(b64_decode_str(invalid[i], dec, &dlen) == -1, "base64 rejects \"%s\"", invalid[i]);
    check(ph_base64_decode("Zm\0v", 4, (unsigned char *)dec, &dlen) == -1, "base64 rejects NUL");

    /* Round trips of random bytes of every length up to 300. */
    int bad = 0;
    unsigned char raw[300], back[300];
    char text[400];
    for (size_t n = 0; n <= sizeof raw; n++) {
        for (size_t i = 0; i < n; i++)
            raw[i] = (unsigned char)rnd(256);
        size_t m = ph_base64_encode(raw, n, text);
        bad += m != ph_base64_encoded_len(n) || ph_base64_decoded_max(m) > sizeof back + 2;
        bad += ph_base64_decode(text, m, back, &dlen) != 0 || dlen != n || memcmp(raw, back, n);
        /* and without the padding */
        while (m > 0 && text[m - 1] == '=')
            m--;
        bad += ph_base64_decode(text, m, back, &dlen) != 0 || dlen != n || memcmp(raw, back, n);
    }
    check(bad == 0, "base64 round trips: %d bad", bad);

    char hex[8];
    ph_hex_encode((const unsigned char *)"\x00\xff\x10\xab", 4, hex);
    check(memcmp(hex, "00ff10ab", 8) == 0, "hex encode");
}

static void test_ct_equal(void)
{
    check(ph_ct_equal("", 0, "", 0), "ct_equal empty");
    check(ph_ct_equal("secret", 6, "secret", 6), "ct_equal same");
    check(!ph_ct_equal("secret", 6, "secreT", 6), "ct_equal last byte");
    check(!ph_ct_equal("secret", 6, "Secret", 6), "ct_equal first byte");
    check(!ph_ct_equal("secret", 6, "secret2", 7), "ct_equal prefix");
    check(!ph_ct_equal("secret2", 7, "secret", 6), "ct_equal longer first");
    check(!ph_ct_equal("", 0, "a", 1), "ct_equal empty vs one");
    check(!ph_ct_equal("\0", 1, "", 0), "ct_equal NUL vs empty (zero fill must not match)");
    check(!ph_ct_equal("a\0", 2, "a", 1), "ct_equal trailing NUL");
    unsigned char a[64], b[64];
    int bad = 0;
    for (size_t i = 0; i < sizeof a; i++)
        a[i] = b[i] = (unsigned char)rnd(256);
    for (size_t i = 0; i < sizeof a; i++) {
        for (int bit = 0; bit < 8; bit++) {
            b[i] ^= (unsigned char)(1 << bit);
            bad += ph_ct_equal(a, sizeof a, b, sizeof b);
            b[i] ^= (unsigned char)(1 << bit);
        }
    }
    check(bad == 0 && ph_ct_equal(a, sizeof a, b, sizeof b), "ct_equal single bit flips");
}

/* ---- UTF-8 ------------------------------------------------------------------------------ */

typedef struct {
    char *p;
    size_t n, cap;
} Buf;

static void buf_add(void *ud, const char *p, size_t n)
{
    Buf *b = ud;
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        if (b->p == NULL)
            abort();
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = '\0';
}

/* Clean into a fresh buffer; returns the bytes consumed. */
static size_t clean(const char *s, size_t n, int final, Buf *out)
{
    out->n = 0;
    buf_add(out, "", 0);
    return ph_utf8_clean(s, n, final, buf_add, out);
}

/* An independent reference: well-formedness by decoding the bits and checking the scalar's
 * range, rather than by Unicode table 3-7's byte ranges. */
static size_t ref_seq_len(unsigned char c)
{
    if ((c & 0x80) == 0)
        return 1;
    if ((c & 0xE0) == 0xC0)
        return 2;
    if ((c & 0xF0) == 0xE0)
        return 3;
    if ((c & 0xF8) == 0xF0)
        return 4;
    return 0;
}

static int ref_wellformed(const unsigned char *s, size_t len)
{
    static const uint32_t min[5] = { 0, 0, 0x80, 0x800, 0x10000 };
    uint32_t cp = len == 1 ? s[0] : (uint32_t)(s[0] & (0x7F >> len));
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    return cp >= min[len] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
}

/* s[0..k) can be completed into a well-formed sequence. Overlong, surrogate and range limits
 * are all decided by the first two bytes, so trying every second byte and completing the rest
 * with 0x80 is enough. */
static int ref_prefix(const unsigned char *s, size_t k)
{
    size_t len = ref_seq_len(s[0]);
    if (len == 0 || k > len)
        return 0;
    unsigned char t[4] = { 0x80, 0x80, 0x80, 0x80 };
    memcpy(t, s, k);
    if (k > 1 || len == 1)
        return ref_wellformed(t, len);
    for (unsigned second = 0x80; second <= 0xBF; second++) {
        t[1] = (unsigned char)second;
        if (ref_wellformed(t, len))
            return 1;
    }
    return 0;
}

static size_t ref_clean(const unsigned char *s, size_t n, int final, Buf *out)
{
    out->n = 0;
    buf_add(out, "", 0);
    size_t i = 0;
    while (i < n) {
        size_t len = ref_seq_len(s[i]), k = 0;
        while (k < 4 && i + k < n && ref_prefix(s + i, k + 1))
            k++;
        if (len > 0 && k == len) {
            buf_add(out, (const char *)s + i, k);
            i += k;
        } else if (k > 0 && i + k == n && !final) {
            return i;
        } else {
            buf_add(out, PH_UTF8_REPLACEMENT, PH_UTF8_REPLACEMENT_LEN);
            i += k > 0 ? k : 1;
        }
    }
    return n;
}

#define R "\xEF\xBF\xBD"

static void test_utf8_cases(void)
{
    static const struct {
        const char *in;
        size_t n;
        int final;
        const char *out;
        size_t outn, consumed;
    } cases[] = {
#define FIN(in, out) { in, sizeof in - 1, 1, out, sizeof out - 1, sizeof in - 1 }
#define PART(in, out, consumed)                                                                    \
    {                                                                                              \
        in, sizeof in - 1, 0, out, sizeof out - 1, consumed                                        \
    }
        FIN("", ""),
        FIN("plain ascii", "plain ascii"),
        FIN("a\0b", "a\0b"),
        FIN("\xC3\xA9t\xC3\xA9", "\xC3\xA9t\xC3\xA9"),
        FIN("\xE2\x82\xAC", "\xE2\x82\xAC"),
        FIN("\xF0\x9F\x98\x80", "\xF0\x9F\x98\x80"),
        /* boundaries that are valid */
        FIN("\x7F", "\x7F"),
        FIN("\xC2\x80", "\xC2\x80"),
        FIN("\xDF\xBF", "\xDF\xBF"),
        FIN("\xE0\xA0\x80", "\xE0\xA0\x80"),
        FIN("\xED\x9F\xBF", "\xED\x9F\xBF"),
        FIN("\xEE\x80\x80", "\xEE\x80\x80"),
        FIN("\xEF\xBF\xBF", "\xEF\xBF\xBF"),
        FIN("\xEF\xBF\xBD", "\xEF\xBF\xBD"),
        FIN("\xF0\x90\x80\x80", "\xF0\x90\x80\x80"),
        FIN("\xF4\x8F\xBF\xBF", "\xF4\x8F\xBF\xBF"),
        /* lone continuation bytes: one U+FFFD each */
        FIN("\x80", R),
        FIN("\xBF", R),
        FIN("\x80\xBF\x80\xBF", R R R R),
        FIN("a\x80z", "a" R "z"),
        /* overlongs: the lead is a whole maximal subpart, then each continuation byte */
        FIN("\xC0\xAF", R R),
        FIN("\xC1\xBF", R R),
        FIN("\xC0\x80", R R),
        FIN("\xE0\x80\xAF", R R R),
        FIN("\xE0\x9F\xBF", R R R),
        FIN("\xF0\x80\x80\xAF", R R R R),
        FIN("\xF0\x8F\xBF\xBF", R R R R),
        /* surrogates, alone and paired */
        FIN("\xED\xA0\x80", R R R),
        FIN("\xED\xBF\xBF", R R R),
        FIN("\xED\xA0\x80\xED\xB0\x80", R R R R R R),
        /* above U+10FFFF */
        FIN("\xF4\x90\x80\x80", R R R R),
        FIN("\xF5\x80\x80\x80", R R R R),
        FIN("\xF7\xBF\xBF\xBF", R R R R),
        /* 5- and 6-byte forms */
        FIN("\xF8\x88\x80\x80\x80", R R R R R),
        FIN("\xFB\xBF\xBF\xBF\xBF", R R R R R),
        FIN("\xFC\x84\x80\x80\x80\x80", R R R R R R),
        FIN("\xFD\xBF\xBF\xBF\xBF\xBF", R R R R R R),
        /* 0xFE and 0xFF */
        FIN("\xFE", R),
        FIN("\xFF", R),
        FIN("\xFE\xFE\xFF\xFF", R R R R),
        /* truncated sequences: one U+FFFD for the whole maximal subpart */
        FIN("\xC3", R),
        FIN("\xE2\x82", R),
        FIN("\xF0\x9F\x98", R),
        FIN("\xE2\x82"
            "A",
            R "A"),
        FIN("\xF0\x9F\x98"
            "A",
            R "A"),
        FIN("\xE2"
            "A",
            R "A"),
        FIN("\xC3\xC3\xA9", R "\xC3\xA9"),
        FIN("\xF0\x9F\xF0\x9F\x98\x80", R "\xF0\x9F\x98\x80"),
        FIN("\xE0\xA0\xC0", R R),
        /* Unicode 15 table 3-8 */
        FIN("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64", "a" R R R "b" R "c" R R "d"),
        /* Markus Kuhn's 3.5 style concatenation: overlong-only leads are subparts of 1 byte */
        FIN("\xC0\xE0\x80\xF0\x80\x80\xDF\xEF\xBF\xF7\xBF\xBF", R R R R R R R R R R R),
        /* not final: a truncated but so-far-valid tail is left for the next chunk */
        PART("ab\xC3", "ab", 2),
        PART("ab\xE2", "ab", 2),
        PART("ab\xE2\x82", "ab", 2),
        PART("ab\xF0", "ab", 2),
        PART("ab\xF0\x9F\x98", "ab", 2),
        PART("\xF4\x8F\xBF", "", 0),
        PART("\xE0\xA0", "", 0),
        PART("\xED\x9F", "", 0),
        PART("\xC3\xA9\xE2\x82", "\xC3\xA9", 2),
        PART("\x80\xE2\x82", R, 1),
        /* ... but what is already invalid is replaced now */
        PART("ab\xE0\x80", "ab" R R, 4),
        PART("ab\xED\xA0", "ab" R R, 4),
        PART("ab\xF0\x8F", "ab" R R, 4),
        PART("ab\xF4\x90", "ab" R R, 4),
        PART("ab\xC0", "ab" R, 3),
        PART("ab\xF5", "ab" R, 3),
        PART("ab\xFF", "ab" R, 3),
        PART("ab\x80", "ab" R, 3),
        PART("ab", "ab", 2),
        PART("", "", 0),
#undef FIN
#undef PART
    };
    Buf out = { 0 };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t outlen = cases[i].outn;
        size_t used = clean(cases[i].in, cases[i].n, cases[i].final, &out);
        check(used == cases[i].consumed && out.n == outlen &&
                  memcmp(out.p, cases[i].out, outlen) == 0,
              "utf8_clean case %zu (final=%d): got %zu bytes, consumed %zu", i, cases[i].final,
              out.n, used);
        int valid = ph_utf8_valid_len(cases[i].in, cases[i].n) == cases[i].n;
        int same = cases[i].final && out.n == cases[i].n && memcmp(out.p, cases[i].in, out.n) == 0;
        if (cases[i].final)
            check(valid == same, "utf8_valid agrees with utf8_clean on case %zu", i);
    }
    free(out.p);
}

/* Encode code point cp (test-side encoder); returns the length. */
static size_t encode(uint32_t cp, unsigned char *o)
{
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

static void test_utf8_scalars(void)
{
    int bad = 0;
    unsigned char e[4];
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        size_t n = encode(cp, e), len;
        int r = ph_utf8_next(e, n, &len);
        int surrogate = cp >= 0xD800 && cp <= 0xDFFF;
        if (surrogate)
            bad += r != PH_UTF8_BAD || len != 1;
        else
            bad += r != PH_UTF8_OK || len != n || ph_utf8_valid_len((char *)e, n) != n;
        /* every proper prefix of a valid character is truncated, not bad */
        for (size_t k = 1; !surrogate && k < n; k++)
            bad += ph_utf8_next(e, k, &len) != PH_UTF8_TRUNCATED || len != k;
    }
    check(bad == 0, "every scalar value is accepted and every surrogate refused: %d bad", bad);
}

/* The chunking property: clean(a, partial) .. clean(rest .. b, final) == clean(a .. b, final),
 * carrying rest = the unconsumed tail of a. */
static int split_ok(const char *s, size_t n, const size_t *cuts, size_t ncuts, Buf *whole, Buf *acc,
                    Buf *piece, Buf *carry)
{
    clean(s, n, 1, whole);
    acc->n = 0;
    carry->n = 0;
    buf_add(acc, "", 0);
    buf_add(carry, "", 0);
    size_t prev = 0;
    for (size_t c = 0; c <= ncuts; c++) {
        size_t end = c < ncuts ? cuts[c] : n;
        int final = c == ncuts;
        buf_add(carry, s + prev, end - prev); /* rest .. next chunk */
        size_t used = clean(carry->p, carry->n, final, piece);
        if (ph_utf8_valid_len(piece->p, piece->n) != piece->n)
            return 0; /* every piece is valid UTF-8 on its own */
        if (carry->n - used > 3)
            return 0; /* the rest is at most a truncated character */
        buf_add(acc, piece->p, piece->n);
        memmove(carry->p, carry->p + used, carry->n - used);
        carry->n -= used;
        prev = end;
    }
    return carry->n == 0 && acc->n == whole->n && memcmp(acc->p, whole->p, acc->n) == 0;
}

/* Bytes that exercise every branch of the decoder. */
static const unsigned char interesting[] = {
    0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC,
    0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xF7, 0xF8, 0xFB, 0xFC, 0xFD, 0xFE, 0xFF,
};
#define NINTERESTING (sizeof interesting / sizeof interesting[0])

static void random_utf8ish(char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint32_t kind = rnd(4);
        if (kind == 0) {
            s[i++] = (char)rnd(256);
        } else if (kind == 1) {
            s[i++] = (char)interesting[rnd(NINTERESTING)];
        } else { /* a valid character, often of several bytes, to be cut or corrupted */
            static const uint32_t tops[] = { 0x80, 0x800, 0x10000, 0x110000 };
            uint32_t cp = rnd(tops[rnd(4)]);
            if (cp >= 0xD800 && cp <= 0xDFFF)
                cp = 0xFFFD;
            unsigned char e[4];
            size_t m = encode(cp, e);
            for (size_t k = 0; k < m && i < n; k++)
                s[i++] = (char)e[k];
        }
    }
}

static void test_utf8_property(void)
{
    Buf whole = { 0 }, acc = { 0 }, piece = { 0 }, carry = { 0 }, ref = { 0 }, mine = { 0 };
    char s[64];
    int bad_ref = 0, bad_split = 0, bad_multi = 0, bad_valid = 0;
    size_t cuts[8];

    /* Exhaustive over short strings of the interesting bytes: every string of 1..4 of them,
     * against the reference, split at every position, both final and not. */
    size_t total = 0;
    for (size_t len = 1; len <= 4; len++) {
        size_t count = 1;
        for (size_t k = 0; k < len; k++)
            count *= NINTERESTING;
        for (size_t idx = 0; idx < count; idx++, total++) {
            size_t v = idx;
            for (size_t k = 0; k < len; k++, v /= NINTERESTING)
                s[k] = (char)interesting[v % NINTERESTING];
            for (int final = 0; final <= 1; final++) {
                size_t a = clean(s, len, final, &mine);
                size_t b = ref_clean((unsigned char *)s, len, final, &ref);
                bad_ref += a != b || mine.n != ref.n || memcmp(mine.p, ref.p, ref.n) != 0;
            }
            bad_valid += (ph_utf8_valid_len(s, len) == len) !=
                         (mine.n == len && memcmp(mine.p, s, len) == 0);
            for (size_t k = 0; k <= len; k++) {
                cuts[0] = k;
                bad_split += !split_ok(s, len, cuts, 1, &whole, &acc, &piece, &carry);
            }
        }
    }
    /* Every string of two arbitrary bytes. */
    for (unsigned x = 0; x < 65536; x++, total++) {
        s[0] = (char)(x >> 8);
        s[1] = (char)x;
        for (int final = 0; final <= 1; final++) {
            size_t a = clean(s, 2, final, &mine);
            size_t b = ref_clean((unsigned char *)s, 2, final, &ref);
            bad_ref += a != b || mine.n != ref.n || memcmp(mine.p, ref.p, ref.n) != 0;
        }
        for (size_t k = 0; k <= 2; k++) {
            cuts[0] = k;
            bad_split += !split_ok(s, 2, cuts, 1, &whole, &acc, &piece, &carry);
        }
    }
    check(bad_ref == 0, "utf8_clean agrees with the reference on %zu short strings: %d bad", total,
          bad_ref);
    check(bad_valid == 0, "utf8_valid agrees with utf8_clean: %d bad", bad_valid);

    /* Random strings: every split position, and random multi-way splits. */
    enum { RANDOM_STRINGS = 5000 };
    for (int t = 0; t < RANDOM_STRINGS; t++) {
        size_t n = rnd(sizeof s + 1);
        random_utf8ish(s, n);
        clean(s, n, 1, &mine);
        ref_clean((unsigned char *)s, n, 1, &ref);
        bad_ref += mine.n != ref.n || memcmp(mine.p, ref.p, ref.n) != 0;
        for (size_t k = 0; k <= n; k++) {
            cuts[0] = k;
            bad_split += !split_ok(s, n, cuts, 1, &whole, &acc, &piece, &carry);
        }
        for (int rep = 0; rep < 4; rep++) {
            size_t ncuts = rnd(8) + 1;
            for (size_t c = 0; c < ncuts; c++)
                cuts[c] = rnd((uint32_t)n + 1);
            for (size_t c = 1; c < ncuts; c++) /* insertion sort: cuts must not decrease */
                for (size_t j = c; j > 0 && cuts[j - 1] > cuts[j]; j--) {
                    size_t tmp = cuts[j];
                    cuts[j] = cuts[j - 1];
                    cuts[j - 1] = tmp;
                }
            bad_multi += !split_ok(s, n, cuts, ncuts, &whole, &acc, &piece, &carry);
        }
        /* one byte at a time, the worst case for a streaming caller */
        size_t bytewise[64];
        for (size_t c = 0; c < n; c++)
            bytewise[c] = c;
        if (n <= 8)
            bad_multi += !split_ok(s, n, bytewise, n, &whole, &acc, &piece, &carry);
    }
    check(bad_ref == 0, "utf8_clean agrees with the reference on random strings: %d bad", bad_ref);
    check(bad_split == 0, "two-chunk splits at every position equal the whole: %d bad", bad_split);
    check(bad_multi == 0, "random multi-way splits equal the whole: %d bad", bad_multi);

    /* Long valid text goes through the ASCII fast path and the multibyte path unchanged. */
    char big[4096];
    size_t n = 0;
    unsigned char e[4];
    while (n + 4 <= sizeof big) {
        uint32_t cp = rnd(10) < 7 ? 0x20 + rnd(0x5F) : 0xA0 + rnd(0x2000);
        if (cp >= 0xD800 && cp <= 0xDFFF)
            cp = 0x41;
        size_t m = encode(cp, e);
        memcpy(big + n, e, m);
        n += m;
    }
    check(ph_utf8_valid_len(big, n) == n, "long valid text is valid");
    clean(big, n, 1, &mine);
    check(mine.n == n && memcmp(mine.p, big, n) == 0, "long valid text is unchanged");
    big[n - 1] = (char)0xFF;
    check(ph_utf8_valid_len(big, n) < n, "a bad last byte is found past the fast path");

    free(whole.p);
    free(acc.p);
    free(piece.p);
    free(carry.p);
    free(ref.p);
    free(mine.p);
}

/* ---- JSON string sizes ------------------------------------------------------------------ */

/* lua-cjson 2.1.0's bytes for c inside a string, written out independently of ph_util.c. */
static const char *ref_escape(unsigned c, char tmp[8])
{
    switch (c) {
    case '\b':
        return "\\b";
    case '\t':
        return "\\t";
    case '\n':
        return "\\n";
    case '\f':
        return "\\f";
    case '\r':
        return "\\r";
    case '"':
        return "\\\"";
    case '\\':
        return "\\\\";
    case '/':
        return "\\/";
    }
    if (c < 0x20 || c == 0x7F)
        snprintf(tmp, 8, "\\u%04x", c);
    else
        tmp[0] = (char)c, tmp[1] = '\0';
    return tmp;
}

/* The JSON-encoded size of s, from the reference table. */
static size_t ref_json_size(const char *s, size_t n)
{
    char tmp[8];
    size_t size = 0;
    for (size_t i = 0; i < n; i++)
        size += strlen(ref_escape((unsigned char)s[i], tmp));
    return size;
}

/* Clip into a fresh buffer. */
static void clip(const char *s, size_t n, size_t budget, int final, Buf *out,
                 ph_json_clip_result *r)
{
    out->n = 0;
    buf_add(out, "", 0);
    ph_json_clip(s, n, budget, final, buf_add, out, r);
}

/* Random bytes weighted towards what JSON escapes and what UTF-8 cleaning replaces. */
static void random_jsonish(char *s, size_t n)
{
    static const char escaped[] = "\"\\/\b\t\n\f\r\x01\x1f\x7f";
    random_utf8ish(s, n);
    for (size_t i = 0; i < n; i++)
        if (rnd(4) == 0)
            s[i] = rnd(2) ? escaped[rnd(sizeof escaped)] : (char)rnd(0x80);
}

static void test_json_fixed(void)
{
    char tmp[8], out[16];
    int bad_size = 0, bad_escape = 0;
    for (unsigned c = 0; c < 256; c++) {
        const char *want = c < 0x80 ? ref_escape(c, tmp) : (tmp[0] = (char)c, tmp[1] = 0, tmp);
        char in = (char)c;
        size_t used;
        size_t w = ph_json_escape(&in, 1, out, sizeof out, &used);
        bad_size += ph_json_byte_size((unsigned char)c) != strlen(want);
        bad_escape += used != 1 || w != strlen(want) || memcmp(out, want, w) != 0;
        w = ph_json_escape(&in, 1, out, strlen(want) - 1, &used);
        bad_escape += used != 0 || w != 0; /* an escape that does not fit is not begun */
    }
    check(bad_size == 0, "json_byte_size matches cjson's table for every byte: %d bad", bad_size);
    check(bad_escape == 0, "json_escape writes cjson's escape for every byte: %d bad", bad_escape);

    static const struct {
        const char *in;
        size_t n, budget;
        int final;
        const char *out;
        size_t out_n, used, size;
        int cut;
    } cases[] = {
        /* NUL is \u0000, 6 bytes: 2 fit in 12, 1 in 11 */
        { "\0\0\0", 3, 12, 1, "\0\0", 2, 2, 12, 1 },
        { "\0\0\0", 3, 11, 1, "\0", 1, 1, 6, 1 },
        { "\0\0\0", 3, 18, 1, "\0\0\0", 3, 3, 18, 0 },
        { "a\"b/", 4, 3, 1, "a\"", 2, 2, 3, 1 },
        { "a\"b/", 4, 5, 1, "a\"b", 3, 3, 4, 1 },
        { "a\"b/", 4, 6, 1, "a\"b/", 4, 4, 6, 0 },
        /* a 4-byte character is never split */
        { "\xF0\x9F\x98\x80\xF0\x9F\x98\x80", 8, 7, 1, "\xF0\x9F\x98\x80", 4, 4, 4, 1 },
        { "\xF0\x9F\x98\x80\xF0\x9F\x98\x80", 8, 3, 1, "", 0, 0, 0, 1 },
        /* each invalid byte is one U+FFFD, 3 bytes */
        { "\xFF\xFF\xFF", 3, 8, 1, "\xEF\xBF\xBD\xEF\xBF\xBD", 6, 2, 6, 1 },
        { "\xFF\xFF\xFF", 3, 9, 1, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD", 9, 3, 9, 0 },
        /* a character cut at the end: carried when not final, one U+FFFD when final */
        { "ab\xF0\x9F\x98", 5, 100, 0, "ab", 2, 2, 2, 0 },
        { "ab\xF0\x9F\x98", 5, 100, 1, "ab\xEF\xBF\xBD", 5, 5, 5, 0 },
        { "ab\xF0\x9F\x98", 5, 4, 1, "ab", 2, 2, 2, 1 },
        /* an exact fit is not a cut */
        { "\n\n", 2, 4, 1, "\n\n", 2, 2, 4, 0 },
        { "", 0, 0, 1, "", 0, 0, 0, 0 },
    };
    Buf got = { 0 };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ph_json_clip_result r;
        clip(cases[i].in, cases[i].n, cases[i].budget, cases[i].final, &got, &r);
        check(got.n == cases[i].out_n && memcmp(got.p, cases[i].out, got.n) == 0 &&
                  r.used == cases[i].used && r.size == cases[i].size && r.cut == cases[i].cut,
              "json_clip case %zu: got %zu bytes, used %zu, size %zu, cut %d", i, got.n, r.used,
              r.size, r.cut);
    }
    free(got.p);
}

static void test_json_property(void)
{
    Buf whole = { 0 }, full = { 0 }, part = { 0 }, acc = { 0 }, carry = { 0 }, esc = { 0 };
    char s[64];
    int bad_full = 0, bad_clip = 0, bad_stream = 0, bad_escape = 0;
    enum { STRINGS = 1500 };
    for (int t = 0; t < STRINGS; t++) {
        size_t n = rnd(sizeof s + 1);
        random_jsonish(s, n);
        /* unbounded: the cleaned text, and its size by the reference table */
        ph_json_clip_result r;
        clip(s, n, (size_t)-1, 1, &full, &r);
        clean(s, n, 1, &whole);
        size_t total = ref_json_size(whole.p, whole.n);
        bad_full += full.n != whole.n || memcmp(full.p, whole.p, whole.n) != 0 || r.size != total ||
                    r.cut || r.used != n;

        for (size_t budget = 0; budget <= total + 1; budget++) {
            /* at once: the longest prefix of whole characters within budget */
            clip(s, n, budget, 1, &part, &r);
            size_t next = part.n; /* the first character left out, if any */
            size_t next_size = 0;
            if (next < whole.n) {
                size_t len = 1;
                ph_utf8_next((const unsigned char *)whole.p + next, whole.n - next, &len);
                next_size = ref_json_size(whole.p + next, len);
            }
            bad_clip += memcmp(part.p, whole.p, part.n) != 0 || part.n > whole.n ||
                        r.size != ref_json_size(part.p, part.n) || r.size > budget ||
                        r.cut != (part.n < whole.n) || (r.cut && r.size + next_size <= budget) ||
                        ph_utf8_valid_len(part.p, part.n) != part.n;

            /* chunk by chunk, carrying the rest and what is left of the budget */
            acc.n = carry.n = 0;
            buf_add(&acc, "", 0);
            size_t prev = 0, left = budget;
            int cut = 0;
            while (!cut) {
                size_t end = prev + rnd(6);
                if (end > n)
                    end = n;
                int final = end == n;
                buf_add(&carry, s + prev, end - prev);
                ph_json_clip_result cr;
                Buf piece = { 0 };
                clip(carry.p, carry.n, left, final, &piece, &cr);
                buf_add(&acc, piece.p, piece.n);
                free(piece.p);
                left -= cr.size;
                cut = cr.cut;
                memmove(carry.p, carry.p + cr.used, carry.n - cr.used);
                carry.n -= cr.used;
                prev = end;
                if (final)
                    break;
            }
            bad_stream += acc.n != part.n || memcmp(acc.p, part.p, part.n) != 0 || cut != r.cut;
        }

        /* escaping in small pieces gives the whole escape, never splitting one */
        esc.n = 0;
        buf_add(&esc, "", 0);
        size_t i = 0, outsz = 6 + rnd(10);
        char out[16];
        while (i < whole.n) {
            size_t used;
            size_t w = ph_json_escape(whole.p + i, whole.n - i, out, outsz, &used);
            if (used == 0)
                break;
            buf_add(&esc, out, w);
            i += used;
        }
        char tmp[8];
        size_t k = 0;
        int ok = i == whole.n && esc.n == total;
        for (size_t j = 0; ok && j < whole.n; j++) {
            const char *e = ref_escape((unsigned char)whole.p[j], tmp);
            ok = memcmp(esc.p + k, e, strlen(e)) == 0;
            k += strlen(e);
        }
        bad_escape += !ok;
    }
    check(bad_full == 0, "json_clip without a limit is utf8_clean, sized by cjson: %d bad",
          bad_full);
    check(bad_clip == 0, "json_clip keeps the longest whole-character prefix within budget: %d bad",
          bad_clip);
    check(bad_stream == 0, "json_clip chunk by chunk equals json_clip at once: %d bad", bad_stream);
    check(bad_escape == 0, "json_escape in pieces equals cjson's escape: %d bad", bad_escape);
    free(whole.p);
    free(full.p);
    free(part.p);
    free(acc.p);
    free(carry.p);
    free(esc.p);
}

/* ---- random, uuid ----------------------------------------------------------------------- */

static int is_lower_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static void test_random_uuid(void)
{
    static unsigned char big[1 << 20];
    check(ph_random(big, 0) == 0, "random of 0 bytes");
    check(ph_random(big, sizeof big) == 0, "random of 1 MiB");
    size_t zeros = 0;
    for (size_t i = 0; i < sizeof big; i++)
        zeros += big[i] == 0;
    check(zeros < sizeof big / 128, "random bytes are not mostly zero (%zu zeros)", zeros);

    char u[PH_UUID_LEN + 1], v[PH_UUID_LEN + 1];
    int bad = 0;
    for (int t = 0; t < 1000; t++) {
        if (ph_uuid(u) != 0) {
            bad++;
            continue;
        }
        bad += strlen(u) != PH_UUID_LEN;
        for (int i = 0; i < PH_UUID_LEN; i++) {
            if (i == 8 || i == 13 || i == 18 || i == 23)
                bad += u[i] != '-';
            else
                bad += !is_lower_hex(u[i]);
        }
        bad += u[14] != '4';
        bad += strchr("89ab", u[19]) == NULL;
    }
    check(bad == 0, "uuid format (8-4-4-4-12 lowercase, version 4, variant 10): %d bad", bad);
    check(ph_uuid(u) == 0 && ph_uuid(v) == 0 && strcmp(u, v) != 0, "two uuids differ");
}

/* ---- mkdtemp, remove_tree --------------------------------------------------------------- */

static int exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        perror(path);
        abort();
    }
    fputs(text, f);
    fclose(f);
}

static void test_paths(void)
{
    static const struct {
        const char *path;
        int ok;
    } paths[] = {
        { "", 0 },       { "/", 0 },       { "//", 0 },   { "/.", 0 },
        { "/..", 0 },    { "rel", 0 },     { "./x", 0 },  { "/a/../b", 0 },
        { "/a/.", 0 },   { "/tmp/..", 0 }, { "/a", 1 },   { "/a/", 1 },
        { "//a//b", 1 }, { "/a/.b", 1 },   { "/...", 1 }, { "/a/..b", 1 },
    };
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
        check(ph_remove_tree_path_ok(paths[i].path) == paths[i].ok, "remove_tree path \"%s\"",
              paths[i].path);
    check(ph_remove_tree("/") == EINVAL, "remove_tree refuses /");
    check(ph_remove_tree("relative") == EINVAL, "remove_tree refuses a relative path");
}

static void test_tempdir_tree(void)
{
    char dir[4096], outside[4096], p[8192];
    struct stat st;

    unsetenv("TMPDIR");
    check(ph_mkdtemp("ph-test-", dir, sizeof dir) == 0, "mkdtemp: %s", strerror(errno));
    check(strncmp(dir, "/tmp/ph-test-", 13) == 0 && strlen(dir) == 19, "mkdtemp under /tmp: %s",
          dir);
    check(stat(dir, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 07777) == 0700,
          "mkdtemp makes a 0700 directory");
    check(ph_mkdtemp("a/b", p, sizeof p) == EINVAL, "mkdtemp refuses a prefix with /");
    check(ph_mkdtemp("x", p, 8) == ENAMETOOLONG, "mkdtemp reports a small buffer");

    /* $TMPDIR is used when absolute and existing, else ignored. */
    setenv("TMPDIR", dir, 1);
    check(ph_mkdtemp("in-", p, sizeof p) == 0 && strncmp(p, dir, strlen(dir)) == 0 &&
              p[strlen(dir)] == '/',
          "mkdtemp honours TMPDIR: %s", p);
    snprintf(p, sizeof p, "%s/", dir);
    setenv("TMPDIR", p, 1);
    char q[8192];
    check(ph_mkdtemp("slash-", q, sizeof q) == 0 && strstr(q, "//") == NULL,
          "mkdtemp with TMPDIR ending in /: %s", q);
    setenv("TMPDIR", "relative/dir", 1);
    check(ph_mkdtemp("rel-", q, sizeof q) == 0 && strncmp(q, "/tmp/rel-", 9) == 0 &&
              ph_remove_tree(q) == 0,
          "mkdtemp ignores a relative TMPDIR: %s", q);
    setenv("TMPDIR", "/nonexistent/ph-test", 1);
    check(ph_mkdtemp("gone-", q, sizeof q) == 0 && strncmp(q, "/tmp/gone-", 10) == 0 &&
              ph_remove_tree(q) == 0,
          "mkdtemp ignores a missing TMPDIR: %s", q);
    unsetenv("TMPDIR");

    /* A tree with files, nested and empty directories, a read-only file, and symlinks that
     * point outside: the links go, their targets stay. */
    check(ph_mkdtemp("ph-outside-", outside, sizeof outside) == 0, "mkdtemp outside");
    snprintf(p, sizeof p, "%s/keep.txt", outside);
    write_file(p, "keep");
    snprintf(p, sizeof p, "%s/sub", outside);
    mkdir(p, 0700);
    snprintf(p, sizeof p, "%s/sub/keep2.txt", outside);
    write_file(p, "keep2");

    snprintf(p, sizeof p, "%s/a", dir);
    mkdir(p, 0700);
    snprintf(p, sizeof p, "%s/a/b", dir);
    mkdir(p, 0700);
    snprintf(p, sizeof p, "%s/a/b/c", dir);
    mkdir(p, 0700);
    snprintf(p, sizeof p, "%s/a/b/c/deep.txt", dir);
    write_file(p, "deep");
    snprintf(p, sizeof p, "%s/a/empty", dir);
    mkdir(p, 0700);
    snprintf(p, sizeof p, "%s/ro.txt", dir);
    write_file(p, "ro");
    chmod(p, 0400);
    for (int i = 0; i < 300; i++) { /* enough entries for several getdents batches */
        snprintf(p, sizeof p, "%s/a/f%03d-with-a-longer-name-to-fill-buffers", dir, i);
        write_file(p, "x");
    }
    char target[8192];
    snprintf(p, sizeof p, "%s/link-to-dir", dir);
    check(symlink(outside, p) == 0, "symlink to a directory");
    snprintf(p, sizeof p, "%s/a/link-to-file", dir);
    snprintf(target, sizeof target, "%s/keep.txt", outside);
    check(symlink(target, p) == 0, "symlink to a file");
    snprintf(p, sizeof p, "%s/a/dangling", dir);
    check(symlink("/nonexistent/ph-test", p) == 0, "dangling symlink");

    /* the top path itself may be a symlink: only the link goes */
    char toplink[8192];
    snprintf(toplink, sizeof toplink, "%s/top-link", outside);
    snprintf(p, sizeof p, "%s/sub", outside);
    check(symlink(p, toplink) == 0, "symlink as the top path");
    check(ph_remove_tree(toplink) == 0 && !exists(toplink), "remove_tree removes a top link");
    snprintf(p, sizeof p, "%s/sub/keep2.txt", outside);
    check(exists(p), "remove_tree leaves the top link's target");

    snprintf(p, sizeof p, "%s/", dir); /* a trailing slash is fine */
    int err = ph_remove_tree(p);
    check(err == 0, "remove_tree: %s", strerror(err));
    check(!exists(dir), "remove_tree removed the tree");
    snprintf(p, sizeof p, "%s/keep.txt", outside);
    check(exists(p), "remove_tree did not follow the file link");
    snprintf(p, sizeof p, "%s/sub/keep2.txt", outside);
    check(exists(p), "remove_tree did not follow the directory link");

    check(ph_remove_tree(dir) == 0, "remove_tree of a missing path is success");
    snprintf(p, sizeof p, "%s/missing/deeper", dir);
    check(ph_remove_tree(p) == 0, "remove_tree of a path under a missing dir is success");

    /* a plain file */
    snprintf(p, sizeof p, "%s/keep.txt", outside);
    check(ph_remove_tree(p) == 0 && !exists(p), "remove_tree removes a plain file");

    check(ph_remove_tree(outside) == 0 && !exists(outside), "remove_tree cleans up");
}

/* A tree nested far deeper than the fd limit is removed: the removal holds a bounded number
 * of descriptors (it used to hold one per level, and failed with EMFILE). Wide directories,
 * files at every level, and a symlink to outside at the bottom are handled on the way. */
static void test_remove_deep(void)
{
    char dir[4096], outside[4096], p[8192];
    check(ph_mkdtemp("ph-deep-", dir, sizeof dir) == 0, "mkdtemp for the deep tree");
    check(ph_mkdtemp("ph-deep-out-", outside, sizeof outside) == 0, "mkdtemp outside");
    snprintf(p, sizeof p, "%s/keep", outside);
    int kf = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    check(kf >= 0, "a file outside");
    close(kf);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    const int depth = 300;
    for (int i = 0; i < depth && fd >= 0; i++) {
        for (int w = 0; w < 3; w++) { /* siblings: a file and an empty dir per level */
            char name[16];
            snprintf(name, sizeof name, "f%d", w);
            int f = openat(fd, name, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
            if (f >= 0)
                close(f);
        }
        mkdirat(fd, "e", 0700);
        check(mkdirat(fd, "d", 0700) == 0, "mkdir level %d", i);
        int next = openat(fd, "d", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        close(fd);
        fd = next;
    }
    check(fd >= 0 && symlinkat(outside, fd, "out") == 0, "a symlink out at the bottom");
    close(fd);
    struct rlimit saved, low;
    check(getrlimit(RLIMIT_NOFILE, &saved) == 0, "getrlimit");
    low = saved;
    low.rlim_cur = 64; /* far below the depth */
    check(setrlimit(RLIMIT_NOFILE, &low) == 0, "setrlimit");
    int err = ph_remove_tree(dir);
    setrlimit(RLIMIT_NOFILE, &saved);
    check(err == 0, "remove_tree of a %d-deep tree under 64 fds: %s", depth, strerror(err));
    check(!exists(dir), "the deep tree is gone");
    check(exists(p), "the symlink's target outside is kept");
    check(ph_remove_tree(outside) == 0, "cleanup outside");
}

int main(void)
{
    test_sha256();
    test_base64();
    test_ct_equal();
    test_utf8_cases();
    test_utf8_scalars();
    test_utf8_property();
    test_json_fixed();
    test_json_property();
    test_random_uuid();
    test_paths();
    test_tempdir_tree();
    test_remove_deep();
    return check_report();
}
