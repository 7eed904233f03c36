/* ph_util.h - pure C helpers behind host.core.util: SHA-256, base64, hex, UTF-8 cleaning,
 * JSON string sizes, random bytes, private temp dirs and tree removal. No Lua here, so
 * spec/c/test_util.c tests them alone. Functions that touch the system return 0 or an errno
 * value. */
#ifndef PH_UTIL_H
#define PH_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* ---- SHA-256 (FIPS 180-4) --------------------------------------------------------------- */

#define PH_SHA256_LEN 32

typedef struct {
    uint32_t h[8];
    uint64_t total;          /* bytes fed so far */
    unsigned char block[64]; /* pending partial block */
    size_t used;             /* bytes in block */
} ph_sha256_ctx;

void ph_sha256_init(ph_sha256_ctx *c);
void ph_sha256_update(ph_sha256_ctx *c, const void *data, size_t n);
void ph_sha256_final(ph_sha256_ctx *c, unsigned char out[PH_SHA256_LEN]);
void ph_sha256(const void *data, size_t n, unsigned char out[PH_SHA256_LEN]);

/* ---- base64 (RFC 4648 section 4, standard alphabet) ------------------------------------- */

/* Encoded size of n bytes, always padded. */
size_t ph_base64_encoded_len(size_t n);
/* Writes exactly ph_base64_encoded_len(n) characters to out (no terminator); returns that. */
size_t ph_base64_encode(const unsigned char *in, size_t n, char *out);
/* An upper bound of the decoded size of n characters. */
size_t ph_base64_decoded_max(size_t n);
/* Decode strictly: only A-Z a-z 0-9 + /, no whitespace. Padding is optional, but when present
 * it must complete the last group (length a multiple of 4, "=" only at the end). The unused
 * bits of the last character must be zero, so every input has one canonical form. out must
 * hold ph_base64_decoded_max(n) bytes. Returns 0 and sets *outlen, or -1 on bad input. */
int ph_base64_decode(const char *in, size_t n, unsigned char *out, size_t *outlen);

/* ---- hex and comparison ----------------------------------------------------------------- */

/* Writes 2 * n lowercase hex digits to out (no terminator). */
void ph_hex_encode(const unsigned char *in, size_t n, char *out);
/* 1 when equal. Running time depends on the two lengths only, never on the contents. */
int ph_ct_equal(const void *a, size_t alen, const void *b, size_t blen);

/* ---- UTF-8 ------------------------------------------------------------------------------ */

/* Bytes of U+FFFD, the replacement character. */
#define PH_UTF8_REPLACEMENT     "\xEF\xBF\xBD"
#define PH_UTF8_REPLACEMENT_LEN 3

/* Classify the sequence at s[0] (n >= 1 bytes available):
 *   PH_UTF8_OK         a well-formed character of *len bytes (Unicode table 3-7);
 *   PH_UTF8_BAD        an ill-formed sequence; *len is its maximal subpart (1..3 bytes), the
 *                      bytes that one U+FFFD replaces (Unicode ch. 3, "U+FFFD substitution of
 *                      maximal subparts", as the WHATWG decoder does);
 *   PH_UTF8_TRUNCATED  all n bytes are a valid start of a longer character (*len = n). */
enum { PH_UTF8_OK, PH_UTF8_BAD, PH_UTF8_TRUNCATED };
int ph_utf8_next(const unsigned char *s, size_t n, size_t *len);

/* Length of the longest prefix of s made of whole well-formed characters. */
size_t ph_utf8_valid_len(const char *s, size_t n);

/* Receives the cleaned output piece by piece. */
typedef void (*ph_utf8_sink)(void *ud, const char *p, size_t n);

/* Clean s: valid runs pass through, every maximal subpart of an ill-formed sequence becomes
 * one U+FFFD. With final == 0 a truncated character at the very end is not replaced: the
 * return value (bytes consumed) stops before it, and the caller prepends s[ret..n) to the
 * next chunk. With final != 0 everything is consumed. Cleaning chunks this way, carrying the
 * rest forward and finishing with final != 0, outputs exactly what cleaning the whole does. */
size_t ph_utf8_clean(const char *s, size_t n, int final, ph_utf8_sink sink, void *ud);

/* ---- JSON string sizes ------------------------------------------------------------------ */

/* What lua-cjson 2.1.0 (host.json's encoder) writes for one byte inside a JSON string: 6 bytes
 * (\u0000 .. \u001f, \u007f) for DEL and the control characters without a short escape, 2
 * for \b \t \n \f \r \" \\ \/, 1 for any other byte (UTF-8 passes through as it is). */
size_t ph_json_byte_size(unsigned char c);

typedef struct {
    size_t used; /* bytes of the input consumed */
    size_t size; /* JSON-encoded size of the text sent to the sink, quotes not counted */
    int cut;     /* the next character did not fit in the budget: the rest was dropped */
} ph_json_clip_result;

/* Clean s exactly as ph_utf8_clean does, in the same pass keeping the JSON-encoded size of the
 * cleaned text within budget: it stops before the first character (a whole UTF-8 character,
 * or one U+FFFD, counted at 3 bytes) that would take the size past budget, and sets cut. A
 * character is never split and an escape is always counted whole. With final == 0 a truncated
 * character at the very end is not consumed (not a cut: the caller carries it to the next
 * chunk). Clipping chunk by chunk, with budget less what earlier chunks used, keeps the same
 * characters as clipping the whole at once: the first that does not fit ends both. */
void ph_json_clip(const char *s, size_t n, size_t budget, int final, ph_utf8_sink sink, void *ud,
                  ph_json_clip_result *r);

/* Escape s as lua-cjson 2.1.0 writes a string's contents (no quotes) into out, whole escapes
 * only, at most outsz bytes. Returns the bytes written; *used gets the bytes of s consumed. */
size_t ph_json_escape(const char *s, size_t n, char *out, size_t outsz, size_t *used);

/* ---- system ----------------------------------------------------------------------------- */

/* Fill buf with n bytes from getrandom(2); retries on EINTR and short reads. */
int ph_random(void *buf, size_t n);

/* An RFC 4122 version 4 UUID in lowercase, 36 characters plus a terminator. */
#define PH_UUID_LEN 36
int ph_uuid(char out[PH_UUID_LEN + 1]);

/* Create a new directory, mode 0700, named prefix + 6 random characters, under $TMPDIR when
 * that is an absolute path to an existing directory, else under /tmp. prefix must not hold
 * '/' (EINVAL). The path goes to out (size outsz; ENAMETOOLONG when it does not fit). */
int ph_mkdtemp(const char *prefix, char *out, size_t outsz);

/* 1 when path is acceptable to ph_remove_tree: absolute, without "." or ".." components,
 * and not the root directory. */
int ph_remove_tree_path_ok(const char *path);
/* Delete path and, when it is a directory, everything below it. Symbolic links are removed,
 * never followed: the walk opens each directory relative to its parent with O_NOFOLLOW, so a
 * link swapped in during the walk cannot redirect it. A missing path is success. EINVAL when
 * !ph_remove_tree_path_ok(path). Each directory level holds one descriptor while it is open. */
int ph_remove_tree(const char *path);

#endif
