/* bytes.h - a growable byte queue (bytes.c), for frames and for bytes on their way to a fd. */
#ifndef PH_BYTES_H
#define PH_BYTES_H

#include <stddef.h>

/* p[off..off+len) is the content; zero it (PhBytes b = { 0 }) before use. */
typedef struct {
    unsigned char *p;
    size_t off, len, cap;
} PhBytes;

/* Room for n more bytes after the content (add them to len once written); dies without
 * memory. */
unsigned char *ph_bytes_room(PhBytes *b, size_t n);

/* Append n bytes. */
void ph_bytes_put(PhBytes *b, const void *data, size_t n);

/* Drop the first n bytes of the content. */
void ph_bytes_drop(PhBytes *b, size_t n);

/* Free the memory: an idle queue holds none. */
void ph_bytes_free(PhBytes *b);

#endif
