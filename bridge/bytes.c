/* bytes.c - a growable byte queue, its taken front reused before the memory grows. */
#include "bytes.h"

#include "fail.h"

#include <stdlib.h>
#include <string.h>

unsigned char *ph_bytes_room(PhBytes *b, size_t n)
{
    if (b->cap - b->off - b->len < n && b->off > 0) {
        memmove(b->p, b->p + b->off, b->len);
        b->off = 0;
    }
    if (b->cap - b->len < n) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap - b->len < n)
            cap *= 2;
        unsigned char *p = realloc(b->p, cap);
        if (p == NULL)
            ph_die("out of memory");
        b->p = p;
        b->cap = cap;
    }
    return b->p + b->off + b->len;
}

void ph_bytes_put(PhBytes *b, const void *data, size_t n)
{
    memcpy(ph_bytes_room(b, n), data, n);
    b->len += n;
}

void ph_bytes_drop(PhBytes *b, size_t n)
{
    b->off += n;
    b->len -= n;
    if (b->len == 0)
        b->off = 0;
}

void ph_bytes_free(PhBytes *b)
{
    free(b->p);
    *b = (PhBytes){ 0 };
}
