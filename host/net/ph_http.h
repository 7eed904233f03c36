/* ph_http.h - what host.core.http's client (mod_http.c) and server (mod_http_server.c) share. */
#ifndef PH_HTTP_H
#define PH_HTTP_H

#include "ph.h"

#include <stddef.h>

/* Header names are tokens (RFC 9110 5.6.2); values hold no CR, LF or NUL. */
int ph_http_token_ok(const char *s, size_t n);
int ph_http_value_ok(const char *s, size_t n);

#ifdef PH_VERSION
#define PH_HTTP_VERSION PH_VERSION
#else
#define PH_HTTP_VERSION "0"
#endif

/* Add the server's functions (serve) to the module table on the top of the stack, creating
 * their metatables once. */
void ph_http_server_open(lua_State *L);

#endif
