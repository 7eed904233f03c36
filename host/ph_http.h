/* ph_http.h - what host.core.http's client (mod_http.c) and server (mod_http_server.c) share. */
#ifndef PH_HTTP_H
#define PH_HTTP_H

#include "ph.h"

#include <stddef.h>

/* A growable byte buffer in C memory: bytes that cross callbacks never live in Lua. */
typedef struct {
    char *p;
    size_t len, cap;
} PhBuf;

/* Make room for extra more bytes; -1 when out of memory (the buffer is unchanged). */
int ph_buf_reserve(PhBuf *b, size_t extra);
int ph_buf_append(PhBuf *b, const void *p, size_t n);
/* Drop the first n bytes, keeping the rest at the start. */
void ph_buf_consume(PhBuf *b, size_t n);
void ph_buf_free(PhBuf *b);

/* Header names are tokens (RFC 9110 5.6.2); values hold no CR, LF or NUL. */
int ph_http_token_ok(const char *s, size_t n);
int ph_http_value_ok(const char *s, size_t n);

/* Raise "bad argument #1 to 'fname' (...)": our functions are called through the facade, where
 * luaL_argerror could only name them '?'. */

/* opts[field] (opts at index 1) as a number of seconds in (0, 1e9], or dflt when absent. */
double ph_http_opt_seconds(lua_State *L, const char *fname, const char *field, double dflt);
/* opts[field] as an integer in [lo, hi], or dflt when absent. */

/* Message handler for lua_pcall: the message with a traceback. */
int ph_http_traceback(lua_State *L);

#ifdef PH_VERSION
#define PH_HTTP_VERSION PH_VERSION
#else
#define PH_HTTP_VERSION "0"
#endif

/* Add the server's functions (serve, and the spec-only raw TCP client) to the module table on
 * the top of the stack, creating their metatables once. */
void ph_http_server_open(lua_State *L);

#endif
