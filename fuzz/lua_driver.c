/* lua_driver.c - libFuzzer driver for the Lua targets: the real runtime runs a check script. */
#include "ph.h"

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ndjson_stdio.c defines it (fuzz_ndjson only): the stdin/stdout plumbing of that target. */
int luaopen_fuzz_stdio(lua_State *L) __attribute__((weak));

static lua_State *L;
static int check_ref; /* the script's check(data) */
static int run_ref;   /* host.core.task's run(fn, ...): drives the loop until fn returns */

static void die(const char *what)
{
    fprintf(stderr, "fuzz: %s\n", what);
    fflush(stderr);
    abort();
}

/* Call run(fn, ...) with the nargs values above fn on the stack; abort when it raises, which
 * is how a property violation (an error raised by the check script) becomes a crash. */
static void run_in_task(int nargs)
{
    int base = lua_gettop(L) - nargs; /* fn is at base */
    lua_rawgeti(L, LUA_REGISTRYINDEX, run_ref);
    lua_insert(L, base); /* run fn args */
    lua_pushcfunction(L, ph_traceback);
    lua_insert(L, base); /* handler run fn args */
    if (lua_pcall(L, nargs + 1, 0, base) != LUA_OK) {
        fprintf(stderr, "fuzz: %s\n", lua_tostring(L, -1));
        die("the check raised (property violated or the code under test failed)");
    }
    lua_settop(L, base - 1);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN); /* as main.c: a closed pipe is an error result */
    L = ph_state_new();
    if (L == NULL)
        die("cannot create the Lua state");
    /* The check scripts and the providers' own modules (providers.local.schema) load by name,
     * as providers.load_file's environment would let them. */
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/?.lua;%s/?.lua;%s/?/init.lua;%s", PH_FUZZ_DIR, ph_runtime_root(),
                    ph_runtime_root(), lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);
    lua_pushliteral(L, PH_FUZZ_DIR);
    lua_setglobal(L, "FUZZ_DIR");
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    if (luaopen_fuzz_stdio != NULL) {
        lua_pushcfunction(L, luaopen_fuzz_stdio);
        lua_setfield(L, -2, "fuzz.stdio");
    }
    lua_pop(L, 1);

    lua_getglobal(L, "require");
    lua_pushliteral(L, "host.core.task");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK)
        die(lua_tostring(L, -1));
    lua_getfield(L, -1, "run");
    run_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);

    /* The script returns { init = fn (optional, run once in a task), check = fn(data) }. */
    lua_pushcfunction(L, ph_traceback);
    if (luaL_loadfile(L, PH_FUZZ_SCRIPT) != LUA_OK || lua_pcall(L, 0, 1, -2) != LUA_OK)
        die(lua_tostring(L, -1));
    if (!lua_istable(L, -1))
        die(PH_FUZZ_SCRIPT " must return a table");
    lua_getfield(L, -1, "check");
    if (!lua_isfunction(L, -1))
        die(PH_FUZZ_SCRIPT " must return { check = function(data) }");
    check_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (lua_getfield(L, -1, "init") == LUA_TFUNCTION)
        run_in_task(0);
    lua_settop(L, 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, check_ref);
    lua_pushlstring(L, (const char *)data, size);
    run_in_task(1);
    return 0;
}
