/* ph_error.c - the nil, message, code failure convention, and diagnostics on stderr. */
#include "ph.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int ph_fail(lua_State *L, const char *code, const char *fmt, ...)
{
    va_list ap;
    luaL_pushfail(L);
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_pushstring(L, code);
    return 3;
}

int ph_fail_errno(lua_State *L, const char *code, int err, const char *fmt, ...)
{
    va_list ap;
    luaL_pushfail(L);
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_pushfstring(L, ": %s", strerror(err));
    lua_concat(L, 2);
    lua_pushstring(L, code);
    return 3;
}

void ph_diag(const char *fmt, ...)
{
    char line[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    /* stderr may share a non-blocking file description with a pipe: retry on EAGAIN. */
    for (int off = 0; off < n;) {
        ssize_t w = write(STDERR_FILENO, line + off, (size_t)(n - off));
        if (w > 0)
            off += (int)w;
        else if (w < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        else
            break;
    }
}
