/* ph_buf.c - the growable byte buffer and malloc'd formatted strings (see ph_buf.h). */
#include "ph_buf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ph_buf_reserve(PhBuf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return 0;
    size_t cap = b->cap ? b->cap : PH_BUF_MIN;
    while (cap - b->len < extra) {
        if (cap > SIZE_MAX / 2)
            return -1;
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (p == NULL)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

int ph_buf_append(PhBuf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (ph_buf_reserve(b, n) != 0)
        return -1;
    memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

void ph_buf_consume(PhBuf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

void ph_buf_free(PhBuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

char *ph_vprintf_alloc(const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap); /* the first pass only measures: ap is still needed for the second */
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return NULL;
    char *s = malloc((size_t)n + 1);
    if (s != NULL)
        vsnprintf(s, (size_t)n + 1, fmt, ap);
    return s;
}

char *ph_printf_alloc(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = ph_vprintf_alloc(fmt, ap);
    va_end(ap);
    return s;
}
