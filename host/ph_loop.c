/* ph_loop.c - the one libuv loop, the main Lua thread, and protected loop callbacks. */
#include "ph.h"

static lua_State *main_state;

uv_loop_t *ph_loop(void)
{
    return uv_default_loop();
}

void ph_set_main_state(lua_State *L)
{
    main_state = L;
}

lua_State *ph_main_state(void)
{
    return main_state;
}

double ph_now(void)
{
    return (double)uv_hrtime() / 1e9;
}

static int traceback_handler(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL)
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    luaL_traceback(L, L, msg, 1);
    return 1;
}

void ph_callback(lua_State *L, int nargs, const char *what)
{
    int base = lua_gettop(L) - nargs; /* the function's index */
    lua_pushcfunction(L, traceback_handler);
    lua_insert(L, base);
    if (lua_pcall(L, nargs, 0, base) != LUA_OK) {
        ph_diag("provider-host: %s callback failed: %s", what, lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_remove(L, base);
}
