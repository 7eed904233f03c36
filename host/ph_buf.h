/* ph_buf.h - bytes in C memory: the one growable buffer every module uses, and formatted
 * strings allocated with malloc. Bytes that cross loop (or libcurl, libssh2) callbacks live
 * here, never in Lua, and are pushed to Lua once. No Lua here, so spec/c/test_buf.c tests it
 * alone. */
#ifndef PH_BUF_H
#define PH_BUF_H

#include <stdarg.h>
#include <stddef.h>

/* Zero-initialise ({ 0 }) before use. p is NULL until something is reserved; bytes p[0..len)
 * are the content, p[len..cap) room already allocated. */
typedef struct {
    char *p;
    size_t len, cap;
} PhBuf;

/* Make room for extra more bytes (doubling, from PH_BUF_MIN): afterwards cap - len >= extra.
 * 0, or -1 without memory, the buffer unchanged. */
#define PH_BUF_MIN 1024
int ph_buf_reserve(PhBuf *b, size_t extra);
/* Append n bytes; 0, or -1 without memory (nothing appended). */
int ph_buf_append(PhBuf *b, const void *p, size_t n);
/* Drop the first n bytes (all when n >= len), moving the rest to the start. */
void ph_buf_consume(PhBuf *b, size_t n);
/* Free the memory; the buffer is empty and usable again. */
void ph_buf_free(PhBuf *b);

/* printf into a new malloc'd string (free it); NULL without memory or on a bad format. */
char *ph_printf_alloc(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
char *ph_vprintf_alloc(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));

#endif
