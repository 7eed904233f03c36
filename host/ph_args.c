/* ph_args.c - argument checks shared by the modules: options tables, integers, seconds (see
 * ph.h for the two families: luaL_argerror's, and the facade-called functions' own names). */
#include "ph.h"

#include <math.h>
#include <stdarg.h>

#define MAX_SECONDS 1e9

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

/* [0, 1e9], or (0, 1e9] unless allow_zero; NaN is not a number of seconds. */
static int seconds_ok(double v, int allow_zero)
{
    return !isnan(v) && v <= MAX_SECONDS && v >= 0 && (allow_zero || v > 0);
}

double ph_opt_seconds(lua_State *L, int idx, const char *field, double dflt, int allow_zero)
{
    double v = ph_opt_number(L, idx, field, dflt);
    if (!seconds_ok(v, allow_zero))
        luaL_argerror(L, idx,
                      lua_pushfstring(L, "field '%s' must be a number of seconds in %s, 1e9]",
                                      field, allow_zero ? "[0" : "(0"));
    return v;
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

double ph_opt_seconds_in(lua_State *L, const char *fname, const char *field, double dflt,
                         int allow_zero)
{
    double v = dflt;
    if (ph_opt_field_in(L, fname, field, LUA_TNUMBER)) {
        v = lua_tonumber(L, -1);
        if (!seconds_ok(v, allow_zero))
            ph_argerror_in(L, fname, "field '%s' must be a number of seconds in %s, 1e9]", field,
                           allow_zero ? "[0" : "(0");
    }
    lua_pop(L, 1);
    return v;
}
