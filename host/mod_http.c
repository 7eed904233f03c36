/* mod_http.c - host.core.http: placeholder until the primitive lands. */
#include "ph.h"

int luaopen_host_core_http(lua_State *L)
{
    lua_newtable(L);
    return 1;
}
