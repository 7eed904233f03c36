/* ph_call.c - protected calls: the one message handler, and the one way a loop callback runs
 * Lua (see ph_protect in ph.h). */
#include "ph.h"

#include <string.h>

int ph_traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        /* An error object that prints itself says what it means: no traceback (as lua.c). */
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

typedef struct {
    ph_protected_fn fn;
    void *ud;
} Protected;

static int protected_call(lua_State *L)
{
    Protected *p = lua_touserdata(L, 1);
    lua_pop(L, 1);
    p->fn(L, p->ud);
    return 0;
}

int ph_protect(ph_protected_fn fn, void *ud, const char *what, char **err)
{
    lua_State *L = ph_main_state();
    Protected p = { fn, ud };
    const char *msg = "stack overflow";
    int status = LUA_ERRMEM;
    if (err != NULL)
        *err = NULL;
    int base = lua_gettop(L);
    if (lua_checkstack(L, 3)) { /* reports, never raises */
        /* Light C functions and a light userdata: these pushes allocate nothing. */
        lua_pushcfunction(L, ph_traceback);
        lua_pushcfunction(L, protected_call);
        lua_pushlightuserdata(L, &p);
        status = lua_pcall(L, 1, 0, base + 1);
        if (status != LUA_OK && (msg = lua_tostring(L, -1)) == NULL)
            msg = "(error object is not a string)";
    }
    if (status != LUA_OK) {
        ph_diag("provider-host: %s: %s", what, msg);
        if (err != NULL)
            *err = ph_printf_alloc("%.*s", (int)strcspn(msg, "\n"), msg); /* not the traceback */
    }
    lua_settop(L, base);
    return status == LUA_OK ? 0 : -1;
}
