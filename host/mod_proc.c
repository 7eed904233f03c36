/* mod_proc.c - host.core.proc: placeholder until the primitive lands. */
#include "ph.h"

int luaopen_host_core_proc(lua_State *L)
{
    lua_newtable(L);
    return 1;
}
