/* test_buf.c - unit test of host/ph_buf.c: the growable byte buffer (reserve, append, consume,
 * free; growth; a model-checked random walk) and malloc'd printf. Prints "N passed, M failed";
 * exits 1 on a failure. */
#include "check.h"
#include "ph_buf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_empty(void)
{
    PhBuf b = { 0 };
    check(ph_buf_append(&b, "x", 0) == 0, "appending nothing succeeds");
    check(b.p == NULL && b.len == 0 && b.cap == 0, "appending nothing allocates nothing");
    ph_buf_consume(&b, 5);
    check(b.len == 0, "consuming from an empty buffer leaves it empty");
    ph_buf_free(&b);
    check(b.p == NULL && b.len == 0 && b.cap == 0, "freeing an empty buffer");
}

static void test_growth(void)
{
    PhBuf b = { 0 };
    check(ph_buf_reserve(&b, 1) == 0 && b.cap == PH_BUF_MIN, "the first room is PH_BUF_MIN");
    check(ph_buf_reserve(&b, PH_BUF_MIN) == 0 && b.cap == PH_BUF_MIN, "room that fits: no growth");
    check(ph_buf_reserve(&b, PH_BUF_MIN + 1) == 0 && b.cap == 2 * PH_BUF_MIN, "doubles");
    check(ph_buf_reserve(&b, 100000) == 0 && b.cap == 131072, "doubles until it fits: %zu", b.cap);
    check(b.len == 0, "reserving adds no content");
    size_t cap = b.cap;
    check(ph_buf_reserve(&b, SIZE_MAX) == -1, "an impossible size fails");
    check(b.cap == cap && b.len == 0, "a failed reserve leaves the buffer as it was");
    ph_buf_free(&b);
    check(b.p == NULL && b.cap == 0, "free releases the memory");
    check(ph_buf_append(&b, "again", 5) == 0 && b.len == 5 && memcmp(b.p, "again", 5) == 0,
          "a freed buffer is usable again");
    ph_buf_free(&b);
}

static void test_append_consume(void)
{
    PhBuf b = { 0 };
    check(ph_buf_append(&b, "hello ", 6) == 0 && ph_buf_append(&b, "world", 5) == 0,
          "append twice");
    check(b.len == 11 && memcmp(b.p, "hello world", 11) == 0, "the bytes, in order");
    ph_buf_consume(&b, 6);
    check(b.len == 5 && memcmp(b.p, "world", 5) == 0, "consume keeps the rest at the start");
    ph_buf_consume(&b, 100);
    check(b.len == 0 && b.cap >= 11, "consuming more than held empties it, keeping the memory");
    char nul[3] = { 'a', '\0', 'b' };
    check(ph_buf_append(&b, nul, 3) == 0 && b.len == 3 && memcmp(b.p, nul, 3) == 0,
          "binary bytes, NUL included");
    ph_buf_free(&b);
}

/* Random appends and consumes against a plain array: the content always matches. */
static void test_model(void)
{
    enum { MAX = 1 << 18 };
    static char model[MAX], chunk[8192];
    size_t mlen = 0;
    PhBuf b = { 0 };
    int ok = 1;
    for (int step = 0; step < 20000 && ok; step++) {
        if (rnd(3) != 0 && mlen + sizeof chunk < MAX) {
            size_t n = rnd(sizeof chunk + 1);
            for (size_t i = 0; i < n; i++)
                chunk[i] = (char)rnd(256);
            ok = ph_buf_append(&b, chunk, n) == 0;
            memcpy(model + mlen, chunk, n);
            mlen += n;
        } else {
            size_t n = rnd((uint32_t)mlen + 2);
            ph_buf_consume(&b, n);
            size_t drop = n < mlen ? n : mlen;
            memmove(model, model + drop, mlen - drop);
            mlen -= drop;
        }
        ok = ok && b.len == mlen && b.cap >= b.len && (mlen == 0 || memcmp(b.p, model, mlen) == 0);
        if (!ok)
            check(0, "model walk diverged at step %d (len %zu, model %zu)", step, b.len, mlen);
    }
    check(ok, "20000 random appends and consumes match the model");
    ph_buf_free(&b);
}

static char *vcall(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = ph_vprintf_alloc(fmt, ap);
    va_end(ap);
    return s;
}

static void test_printf(void)
{
    char *s = ph_printf_alloc("%s:%d %.*s", "host", 22, 3, "abcdef");
    check(s != NULL && strcmp(s, "host:22 abc") == 0, "formats: %s", s ? s : "(null)");
    free(s);
    s = ph_printf_alloc("%s", "");
    check(s != NULL && s[0] == '\0', "an empty result is an empty string");
    free(s);
    static char big[100000];
    memset(big, 'z', sizeof big - 1);
    s = ph_printf_alloc("<%s>", big);
    check(s != NULL && strlen(s) == sizeof big + 1 && s[0] == '<' && s[sizeof big] == '>',
          "a long result is whole");
    free(s);
    s = vcall("%zu-%s", (size_t)7, "va");
    check(s != NULL && strcmp(s, "7-va") == 0, "the va_list form: %s", s ? s : "(null)");
    free(s);
}

int main(void)
{
    test_empty();
    test_growth();
    test_append_consume();
    test_model();
    test_printf();
    return check_report();
}
