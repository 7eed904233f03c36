/* ph_error.c - the nil, message, code failure convention, option parsing and stderr. */
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

int ph_fail_if_canceled(lua_State *L, ph_task *t)
{
    if (t == NULL || !ph_task_is_canceled(t))
        return 0;
    return ph_fail(L, "canceled", "operation canceled");
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

int ph_opt_field(lua_State *L, int idx, const char *field, int t, int required)
{
    int got = lua_getfield(L, idx, field);
    if (got != t && (required || got != LUA_TNIL))
        luaL_argerror(L, idx,
                      lua_pushfstring(L, "field '%s' must be a %s%s, got %s", field,
                                      lua_typename(L, t), required ? "" : " or nil",
                                      luaL_typename(L, -1)));
    return got != LUA_TNIL;
}

int ph_argerror_in(lua_State *L, const char *fname, const char *fmt, ...)
{
    va_list ap;
    lua_pushfstring(L, "bad argument #1 to '%s' (", fname);
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_pushliteral(L, ")");
    lua_concat(L, 3);
    return lua_error(L);
}

int ph_opt_field_in(lua_State *L, const char *fname, const char *field, int t)
{
    int got = lua_getfield(L, 1, field);
    if (got != LUA_TNIL && got != t)
        ph_argerror_in(L, fname, "field '%s' must be a %s, got %s", field, lua_typename(L, t),
                       luaL_typename(L, -1));
    return got != LUA_TNIL;
}

lua_Integer ph_opt_integer_in(lua_State *L, const char *fname, const char *field, lua_Integer dflt,
                              lua_Integer lo, lua_Integer hi)
{
    lua_Integer v = dflt;
    if (ph_opt_field_in(L, fname, field, LUA_TNUMBER)) {
        int isint;
        v = lua_tointegerx(L, -1, &isint);
        if (!isint || v < lo || v > hi)
            ph_argerror_in(L, fname, "field '%s' must be an integer in [%I, %I]", field,
                           (LUAI_UACINT)lo, (LUAI_UACINT)hi);
    }
    lua_pop(L, 1);
    return v;
}

double ph_opt_number(lua_State *L, int idx, const char *field, double dflt)
{
    double v = ph_opt_field(L, idx, field, LUA_TNUMBER, 0) ? lua_tonumber(L, -1) : dflt;
    lua_pop(L, 1);
    return v;
}

lua_Integer ph_opt_integer(lua_State *L, int idx, const char *field, lua_Integer dflt)
{
    lua_Integer v = dflt;
    if (ph_opt_field(L, idx, field, LUA_TNUMBER, 0)) {
        int isint;
        v = lua_tointegerx(L, -1, &isint);
        if (!isint)
            luaL_argerror(L, idx, lua_pushfstring(L, "field '%s' must be an integer", field));
    }
    lua_pop(L, 1);
    return v;
}
