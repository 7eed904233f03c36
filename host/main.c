/* main.c - provider-host entry: script mode (like lua) or the CLI in lua/host/cli/. */
#include "ph.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* 1000 concurrent commands need a few thousand descriptors; the soft limit is often 1024. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max > 65536 ? 65536 : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* arg table as lua.c builds it: arg[0] = script, arg[1..] = its arguments. */
static void create_arg_table(lua_State *L, int argc, char **argv, int script)
{
    lua_createtable(L, argc - script - 1, script + 1);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - script);
    }
    lua_setglobal(L, "arg");
}

static int run_script(lua_State *L, int argc, char **argv, int script)
{
    create_arg_table(L, argc, argv, script);
    lua_pushcfunction(L, ph_traceback);
    int status;
    const char *name = argv[script];
    if (strcmp(name, "-e") == 0) {
        if (script + 1 >= argc) {
            fprintf(stderr, "provider-host: '-e' needs an argument\n");
            return 2;
        }
        status = luaL_loadbuffer(L, argv[script + 1], strlen(argv[script + 1]), "=(command line)");
        script++;
    } else {
        status = luaL_loadfile(L, strcmp(name, "-") == 0 ? NULL : name);
    }
    if (status == LUA_OK) {
        int nargs = argc - script - 1;
        luaL_checkstack(L, nargs, "too many arguments");
        for (int i = script + 1; i < argc; i++)
            lua_pushstring(L, argv[i]);
        status = lua_pcall(L, nargs, 0, -(nargs + 2));
    }
    if (status != LUA_OK) {
        fprintf(stderr, "provider-host: %s\n", lua_tostring(L, -1));
        fflush(stderr);
        return 1;
    }
    return 0;
}

/* The CLI runs as a task, so every primitive is available to every command. */
static int run_cli(lua_State *L, int argc, char **argv)
{
    lua_pushcfunction(L, ph_traceback);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "host.cli");
    if (lua_pcall(L, 1, 1, -3) != LUA_OK) {
        fprintf(stderr, "provider-host: cannot load the runtime from %s: %s\n", ph_runtime_root(),
                lua_tostring(L, -1));
        return 70;
    }
    lua_getfield(L, -1, "main");
    lua_createtable(L, argc, 0);
    for (int i = 1; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
    }
    ph_task *t = ph_task_spawn(L, 1);
    ph_task_set_quiet(t);
    ph_task_drive(t);
    if (!ph_task_is_done(t)) {
        fprintf(stderr, "provider-host: internal error: the command can never finish\n");
        return 70;
    }
    if (!ph_task_state_ok(t)) {
        ph_task_push_error(L, t);
        fprintf(stderr, "provider-host: internal error: %s\n", luaL_tolstring(L, -1, NULL));
        return 70;
    }
    int n = ph_task_push_results(L, t);
    int code = n > 0 && lua_isinteger(L, -n) ? (int)lua_tointeger(L, -n) : 0;
    return code;
}

static int is_script(const char *a)
{
    size_t n = strlen(a);
    struct stat st;
    if (strcmp(a, "-") == 0 || strcmp(a, "-e") == 0)
        return 1;
    if (n > 4 && strcmp(a + n - 4, ".lua") == 0)
        return 1;
    return strchr(a, '/') != NULL && stat(a, &st) == 0 && S_ISREG(st.st_mode);
}

int main(int argc, char **argv)
{
    ph_note_parent();         /* first: whether our parent dies from now on can be told */
    signal(SIGPIPE, SIG_IGN); /* a closed pipe is an error result, not a death */
    raise_fd_limit();
    lua_State *L = ph_state_new();
    if (L == NULL) {
        fprintf(stderr, "provider-host: cannot create the Lua state: out of memory\n");
        return 70;
    }
    int code =
        argc > 1 && is_script(argv[1]) ? run_script(L, argc, argv, 1) : run_cli(L, argc, argv);
    fflush(stdout);
    fflush(stderr);
    /* No lua_close: open loop handles may point into Lua memory, and exit is immediate. */
    exit(code);
}
