/* ph_util.c - pure C helpers behind host.core.util (see ph_util.h). */
#include "ph_util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- SHA-256 (FIPS 180-4 section 6.2) --------------------------------------------------- */

/* First 32 bits of the fractional parts of the cube roots of the first 64 primes (4.2.2). */
static const uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static uint32_t load_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static void store_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* One 512-bit block: the message schedule (6.2.2 step 1) and the 64 rounds (steps 2-4). */
static void sha256_block(uint32_t h[8], const unsigned char *p)
{
    uint32_t w[64];
    for (int t = 0; t < 16; t++)
        w[t] = load_be32(p + 4 * t);
    for (int t = 16; t < 64; t++) {
        uint32_t s0 = ROTR(w[t - 15], 7) ^ ROTR(w[t - 15], 18) ^ (w[t - 15] >> 3);
        uint32_t s1 = ROTR(w[t - 2], 17) ^ ROTR(w[t - 2], 19) ^ (w[t - 2] >> 10);
        w[t] = s1 + w[t - 7] + s0 + w[t - 16];
    }

    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int t = 0; t < 64; t++) {
        uint32_t S1 = ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25);
        uint32_t ch = (e & f) ^ (~e & g);
        uint32_t t1 = hh + S1 + ch + sha256_k[t] + w[t];
        uint32_t S0 = ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22);
        uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
        uint32_t t2 = S0 + maj;
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
}

void ph_sha256_init(ph_sha256_ctx *c)
{
    /* First 32 bits of the fractional parts of the square roots of the first 8 primes. */
    static const uint32_t h0[8] = {
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
        0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    };
    memcpy(c->h, h0, sizeof h0);
    c->total = 0;
    c->used = 0;
}

void ph_sha256_update(ph_sha256_ctx *c, const void *data, size_t n)
{
    const unsigned char *p = data;
    c->total += n;
    if (c->used > 0) {
        size_t take = 64 - c->used < n ? 64 - c->used : n;
        memcpy(c->block + c->used, p, take);
        c->used += take;
        p += take;
        n -= take;
        if (c->used < 64)
            return;
        sha256_block(c->h, c->block);
        c->used = 0;
    }
    for (; n >= 64; p += 64, n -= 64)
        sha256_block(c->h, p);
    memcpy(c->block, p, n);
    c->used = n;
}

void ph_sha256_final(ph_sha256_ctx *c, unsigned char out[PH_SHA256_LEN])
{
    /* Padding (5.1.1): a 1 bit, zeros up to 56 mod 64 bytes, the length in bits (64-bit BE). */
    uint64_t bits = c->total * 8;
    c->block[c->used++] = 0x80;
    if (c->used > 56) {
        memset(c->block + c->used, 0, 64 - c->used);
        sha256_block(c->h, c->block);
        c->used = 0;
    }
    memset(c->block + c->used, 0, 56 - c->used);
    store_be32(c->block + 56, (uint32_t)(bits >> 32));
    store_be32(c->block + 60, (uint32_t)bits);
    sha256_block(c->h, c->block);
    for (int i = 0; i < 8; i++)
        store_be32(out + 4 * i, c->h[i]);
    memset(c, 0, sizeof *c); /* the state may hold secret material (HMAC keys) */
}

void ph_sha256(const void *data, size_t n, unsigned char out[PH_SHA256_LEN])
{
    ph_sha256_ctx c;
    ph_sha256_init(&c);
    ph_sha256_update(&c, data, n);
    ph_sha256_final(&c, out);
}

/* ---- base64 ----------------------------------------------------------------------------- */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t ph_base64_encoded_len(size_t n)
{
    return (n + 2) / 3 * 4;
}

size_t ph_base64_encode(const unsigned char *in, size_t n, char *out)
{
    char *o = out;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *o++ = b64_alphabet[v >> 18];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = b64_alphabet[(v >> 6) & 63];
        *o++ = b64_alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        *o++ = b64_alphabet[v >> 18];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        *o++ = b64_alphabet[v >> 18];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = b64_alphabet[(v >> 6) & 63];
        *o++ = '=';
    }
    return (size_t)(o - out);
}

size_t ph_base64_decoded_max(size_t n)
{
    return n / 4 * 3 + 2;
}

/* The 6-bit value of c, or -1 when c is not in the standard alphabet. */
static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int ph_base64_decode(const char *in, size_t n, unsigned char *out, size_t *outlen)
{
    const unsigned char *s = (const unsigned char *)in;
    size_t m = n; /* characters before the padding */
    if (m > 0 && s[m - 1] == '=') {
        if (n % 4 != 0) /* padding must complete the last group */
            return -1;
        m--;
        if (s[m - 1] == '=')
            m--;
    }
    if (m % 4 == 1)
        return -1;

    unsigned char *o = out;
    size_t i = 0;
    for (; i + 4 <= m; i += 4) {
        int a = b64_value(s[i]), b = b64_value(s[i + 1]);
        int c = b64_value(s[i + 2]), d = b64_value(s[i + 3]);
        if ((a | b | c | d) < 0)
            return -1;
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
        *o++ = (unsigned char)(v >> 16);
        *o++ = (unsigned char)(v >> 8);
        *o++ = (unsigned char)v;
    }
    if (m - i == 2) {
        int a = b64_value(s[i]), b = b64_value(s[i + 1]);
        if ((a | b) < 0 || (b & 0x0f) != 0) /* the 4 unused bits must be zero */
            return -1;
        *o++ = (unsigned char)(a << 2 | b >> 4);
    } else if (m - i == 3) {
        int a = b64_value(s[i]), b = b64_value(s[i + 1]), c = b64_value(s[i + 2]);
        if ((a | b | c) < 0 || (c & 0x03) != 0) /* the 2 unused bits must be zero */
            return -1;
        *o++ = (unsigned char)(a << 2 | b >> 4);
        *o++ = (unsigned char)((b & 0x0f) << 4 | c >> 2);
    }
    *outlen = (size_t)(o - out);
    return 0;
}

/* ---- hex and comparison ----------------------------------------------------------------- */

void ph_hex_encode(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
}

int ph_ct_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    /* volatile reads keep the compiler from turning the loop into an early-exit memcmp. */
    const volatile unsigned char *pa = a, *pb = b;
    size_t n = alen > blen ? alen : blen;
    unsigned diff = alen != blen;
    for (size_t i = 0; i < n; i++) {
        unsigned x = i < alen ? pa[i] : 0; /* branches on lengths only */
        unsigned y = i < blen ? pb[i] : 0;
        diff |= x ^ y;
    }
    return diff == 0;
}

/* ---- UTF-8 ------------------------------------------------------------------------------ */

int ph_utf8_next(const unsigned char *s, size_t n, size_t *len)
{
    unsigned c = s[0];
    unsigned lo = 0x80, hi = 0xBF; /* range of the second byte (Unicode table 3-7) */
    size_t need;

    if (c < 0x80) {
        *len = 1;
        return PH_UTF8_OK;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0)
            lo = 0xA0; /* below is overlong */
        else if (c == 0xED)
            hi = 0x9F; /* above is a surrogate */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0)
            lo = 0x90; /* below is overlong */
        else if (c == 0xF4)
            hi = 0x8F; /* above is past U+10FFFF */
    } else {
        /* continuation bytes, C0/C1 (always overlong), F5..FF (past U+10FFFF or 5/6-byte) */
        *len = 1;
        return PH_UTF8_BAD;
    }
    for (size_t i = 1; i < need; i++) {
        if (i == n) {
            *len = n;
            return PH_UTF8_TRUNCATED;
        }
        if (s[i] < lo || s[i] > hi) {
            *len = i; /* the maximal subpart ends before the offending byte */
            return PH_UTF8_BAD;
        }
        lo = 0x80;
        hi = 0xBF;
    }
    *len = need;
    return PH_UTF8_OK;
}

size_t ph_utf8_valid_len(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        /* ASCII goes 8 bytes at a time: text is mostly ASCII. */
        while (n - i >= 8) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & UINT64_C(0x8080808080808080))
                break;
            i += 8;
        }
        if (i == n)
            break;
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t len;
        if (ph_utf8_next(s + i, n - i, &len) != PH_UTF8_OK)
            break;
        i += len;
    }
    return i;
}

size_t ph_utf8_clean(const char *s, size_t n, int final, ph_utf8_sink sink, void *ud)
{
    size_t start = 0, i = 0; /* s[start..i) is valid and not yet sent */
    while (i < n) {
        i += ph_utf8_valid_len(s + i, n - i);
        if (i == n)
            break;
        size_t len;
        int r = ph_utf8_next((const unsigned char *)s + i, n - i, &len);
        if (i > start)
            sink(ud, s + start, i - start);
        if (r == PH_UTF8_TRUNCATED && !final)
            return i; /* may complete with the next chunk: the caller carries it */
        sink(ud, PH_UTF8_REPLACEMENT, PH_UTF8_REPLACEMENT_LEN);
        i += len;
        start = i;
    }
    if (n > start)
        sink(ud, s + start, n - start);
    return n;
}

/* ---- JSON string sizes ------------------------------------------------------------------ */

/* lua-cjson 2.1.0's escape table (char2escape), as sizes; 0: the byte is written as it is.
 * Rows of 32 from 0x00: control characters are \u00XX but for \b \t \n \f \r; then \" and
 * \/ (0x22, 0x2F), \\ (0x5C) and DEL as \u007f (0x7F). Bytes from 0x80 pass through. */
static const unsigned char json_escape_size[256] = {
    6, 6, 6, 6, 6, 6, 6, 6, 2, 2, 2, 6, 2, 2, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6,
    0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 6,
};

static inline size_t json_size(unsigned char c)
{
    return json_escape_size[c] ? json_escape_size[c] : 1;
}

size_t ph_json_byte_size(unsigned char c)
{
    return json_size(c);
}

void ph_json_clip(const char *str, size_t n, size_t budget, int final, ph_utf8_sink sink, void *ud,
                  ph_json_clip_result *r)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, start = 0, size = 0; /* s[start..i) is clean and not yet sent; size <= budget */
    r->cut = 0;
    while (i < n) {
        size_t len = 1, w;
        int kind = PH_UTF8_OK;
        if (s[i] < 0x80) {
            w = json_size(s[i]);
        } else {
            kind = ph_utf8_next(s + i, n - i, &len);
            if (kind == PH_UTF8_TRUNCATED && !final)
                break; /* may complete with the next chunk */
            w = kind == PH_UTF8_OK ? len : PH_UTF8_REPLACEMENT_LEN;
        }
        if (w > budget - size) {
            r->cut = 1;
            break;
        }
        size += w;
        if (kind != PH_UTF8_OK) { /* one U+FFFD for the maximal subpart (or the cut tail) */
            if (i > start)
                sink(ud, str + start, i - start);
            sink(ud, PH_UTF8_REPLACEMENT, PH_UTF8_REPLACEMENT_LEN);
            start = i + len;
        }
        i += len;
    }
    if (i > start)
        sink(ud, str + start, i - start);
    r->used = i;
    r->size = size;
}

size_t ph_json_escape(const char *str, size_t n, char *out, size_t outsz, size_t *used)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, o = 0;
    for (; i < n; i++) {
        unsigned char c = s[i];
        size_t w = json_size(c);
        if (w > outsz - o)
            break;
        if (w == 1) {
            out[o] = (char)c;
        } else if (w == 2) {
            /* pairs: the letter written after the backslash, then the byte it stands for */
            static const char short_form[] = "b\bt\tn\nf\fr\r\"\"//\\\\";
            const char *f = short_form;
            while (f[1] != (char)c)
                f += 2;
            out[o] = '\\';
            out[o + 1] = f[0];
        } else {
            memcpy(out + o, "\\u00", 4);
            out[o + 4] = hex[c >> 4];
            out[o + 5] = hex[c & 15];
        }
        o += w;
    }
    *used = i;
    return o;
}

/* ---- system ----------------------------------------------------------------------------- */

int ph_random(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t got = getrandom(p, n, 0);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        p += got; /* reads above 256 bytes may come back short */
        n -= (size_t)got;
    }
    return 0;
}

int ph_uuid(char out[PH_UUID_LEN + 1])
{
    unsigned char b[16];
    int err = ph_random(b, sizeof b);
    if (err != 0)
        return err;
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* variant 10xx (RFC 4122) */
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *o++ = '-';
        ph_hex_encode(b + i, 1, o);
        o += 2;
    }
    *o = '\0';
    return 0;
}

int ph_mkdtemp(const char *prefix, char *out, size_t outsz)
{
    if (strchr(prefix, '/') != NULL)
        return EINVAL;
    const char *base = getenv("TMPDIR");
    struct stat st;
    if (base == NULL || base[0] != '/' || stat(base, &st) != 0 || !S_ISDIR(st.st_mode))
        base = "/tmp";
    size_t blen = strlen(base);
    while (blen > 1 && base[blen - 1] == '/')
        blen--;
    if (blen == 1) /* the root: do not write "//" */
        blen = 0;
    int w = snprintf(out, outsz, "%.*s/%sXXXXXX", (int)blen, base, prefix);
    if (w < 0 || (size_t)w >= outsz)
        return ENAMETOOLONG;
    if (mkdtemp(out) == NULL) /* mode 0700 */
        return errno;
    return 0;
}

int ph_remove_tree_path_ok(const char *path)
{
    if (path == NULL || path[0] != '/')
        return 0;
    int named = 0;
    const char *p = path;
    for (;;) {
        while (*p == '/')
            p++;
        if (*p == '\0')
            break;
        const char *e = p;
        while (*e != '\0' && *e != '/')
            e++;
        size_t len = (size_t)(e - p);
        if ((len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.'))
            return 0;
        named = 1;
        p = e;
    }
    return named; /* "/" and "///" name the root */
}

/* How many times a directory is re-read for entries that appeared while it was emptied. */
#define REMOVE_PASSES 8

/* One directory being emptied: its name in its parent and its identity, so that climbing back
 * through ".." can prove it reached the parent it came from (nothing was moved meanwhile). */
typedef struct {
    char *name;
    dev_t dev;
    ino_t ino;
    int passes; /* full reads of it that still found entries */
} Level;

typedef struct {
    Level *v;
    size_t n, cap;
} Levels;

static int levels_push(Levels *ls, const char *name, const struct stat *st)
{
    if (ls->n == ls->cap) {
        size_t cap = ls->cap ? ls->cap * 2 : 16;
        Level *v = realloc(ls->v, cap * sizeof *v);
        if (v == NULL)
            return ENOMEM;
        ls->v = v;
        ls->cap = cap;
    }
    char *copy = strdup(name);
    if (copy == NULL)
        return ENOMEM;
    ls->v[ls->n++] = (Level){ copy, st->st_dev, st->st_ino, 0 };
    return 0;
}

static void levels_free(Levels *ls)
{
    for (size_t i = 0; i < ls->n; i++)
        free(ls->v[i].name);
    free(ls->v);
}

/* Give the directory name under dfd u+rwx without following a symlink: an O_PATH descriptor
 * pins the directory, and chmod goes through its /proc entry (fchmod refuses O_PATH). */
static void open_up(int dfd, const char *name)
{
    int p = openat(dfd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (p < 0)
        return;
    struct stat st;
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", p);
    if (fstat(p, &st) == 0)
        (void)chmod(link, (st.st_mode & 07777) | S_IRWXU);
    close(p);
}

/* Open name under dfd as a directory (never through a symlink) and push it. *fd gets it. A
 * directory its owner cannot read or write into (0555, 0000: a tree unpacked with its modes)
 * is given u+rwx first, as `rm -rf` by its owner would need. */
static int descend(int dfd, const char *name, Levels *ls, int *fd)
{
    int c = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (c < 0 && errno == EACCES) {
        open_up(dfd, name);
        c = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    }
    if (c < 0)
        return errno;
    struct stat st;
    if (fstat(c, &st) == 0 && (st.st_mode & S_IRWXU) != S_IRWXU)
        (void)fchmod(c, (st.st_mode & 07777) | S_IRWXU); /* its entries can go */
    int err = fstat(c, &st) != 0 ? errno : levels_push(ls, name, &st);
    if (err != 0) {
        close(c);
        return err;
    }
    *fd = c;
    return 0;
}

/* Back from the emptied top level to its parent through "..", checked against the identity
 * recorded on the way down (top: the caller's directory), and remove the emptied directory. */
static int ascend(int cur, Levels *ls, const struct stat *top, int *fd)
{
    *fd = -1;
    int up = openat(cur, "..", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int err = up < 0 ? errno : 0;
    close(cur);
    if (err != 0)
        return err;
    struct stat st;
    dev_t dev = ls->n > 1 ? ls->v[ls->n - 2].dev : top->st_dev;
    ino_t ino = ls->n > 1 ? ls->v[ls->n - 2].ino : top->st_ino;
    if (fstat(up, &st) != 0 || st.st_dev != dev || st.st_ino != ino) {
        close(up);
        return ESTALE; /* moved while we worked: stop rather than delete elsewhere */
    }
    Level *l = &ls->v[--ls->n];
    if (unlinkat(up, l->name, AT_REMOVEDIR) != 0 && errno != ENOENT)
        err = errno;
    free(l->name);
    *fd = up;
    return err;
}

/* Remove every entry of directory cur that is not a directory; *child gets the first
 * subdirectory found (to descend into), or stays NULL when cur holds no more of them.
 * Returns 0, or the first error. *seen: entries were found. */
static int empty_files(int cur, char **child, int *seen)
{
    int fd = dup(cur);
    DIR *d = fd < 0 ? NULL : fdopendir(fd);
    if (d == NULL) {
        int err = errno;
        if (fd >= 0)
            close(fd);
        return err;
    }
    int err = 0;
    struct dirent *de;
    errno = 0;
    while (err == 0 && *child == NULL && (de = readdir(d)) != NULL) {
        const char *n = de->d_name;
        if (n[0] == '.' && (n[1] == '\0' || (n[1] == '.' && n[2] == '\0')))
            continue;
        *seen = 1;
        if (unlinkat(cur, n, 0) == 0 || errno == ENOENT) {
            errno = 0;
            continue;
        }
        if (errno != EISDIR && errno != EPERM) { /* Linux says EISDIR, POSIX allows EPERM */
            err = errno;
        } else {
            *child = strdup(n);
            if (*child == NULL)
                err = ENOMEM;
        }
        errno = 0;
    }
    if (err == 0 && errno != 0)
        err = errno;
    closedir(d);
    return err;
}

/* Remove name under dfd, a file or a whole tree, depth first, holding at most two directory
 * descriptors however deep the tree: a nesting deeper than the fd limit is still removed, and
 * a deep removal never starves the worker's other descriptors. Never follows a symlink. */
static int remove_at(int dfd, const char *name)
{
    if (unlinkat(dfd, name, 0) == 0 || errno == ENOENT)
        return 0;
    int saved = errno;
    if (saved != EISDIR && saved != EPERM)
        return saved;
    struct stat top;
    if (fstat(dfd, &top) != 0)
        return errno;
    Levels ls = { NULL, 0, 0 };
    int cur = -1;
    int err = descend(dfd, name, &ls, &cur);
    if (err == ENOENT)
        return 0;
    if (err == ENOTDIR || err == ELOOP) /* a symlink or file replaced it: not ours to enter */
        return saved;
    while (err == 0 && ls.n > 0) {
        char *child = NULL;
        int seen = 0;
        err = empty_files(cur, &child, &seen);
        if (err == 0 && child != NULL) {
            int next = -1;
            err = descend(cur, child, &ls, &next);
            if (err == 0) {
                close(cur);
                cur = next;
            } else if (err == ENOENT || err == ENOTDIR || err == ELOOP) {
                err = 0; /* gone, or replaced by a file or symlink: the next read sees it */
            }
            free(child);
        } else if (err == 0 && seen && ++ls.v[ls.n - 1].passes < REMOVE_PASSES) {
            continue; /* deleting while reading may skip entries: read again */
        } else if (err == 0) {
            int up = -1;
            err = ascend(cur, &ls, &top, &up);
            cur = up;
            if (ls.n == 0 || err != 0)
                break;
        }
    }
    if (cur >= 0 && cur != dfd)
        close(cur);
    levels_free(&ls);
    return err;
}

int ph_remove_tree(const char *path)
{
    if (!ph_remove_tree_path_ok(path))
        return EINVAL;
    size_t len = strlen(path);
    char *copy = malloc(len + 1);
    if (copy == NULL)
        return ENOMEM;
    memcpy(copy, path, len + 1);
    while (len > 1 && copy[len - 1] == '/')
        copy[--len] = '\0';
    char *slash = strrchr(copy, '/'); /* not NULL: the path is absolute */
    const char *name = slash + 1;
    const char *parent = copy;
    if (slash == copy)
        parent = "/";
    else
        *slash = '\0';

    int err = 0;
    int dfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        err = errno == ENOENT ? 0 : errno; /* no parent, so no path */
    } else {
        err = remove_at(dfd, name);
        close(dfd);
    }
    free(copy);
    return err;
}
