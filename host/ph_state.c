/* ph_state.c - the Lua state: standard libraries, preloaded host.core modules, search paths. */
#include "ph.h"

#include <dlfcn.h>
#include <limits.h>
#include <lua-cjson.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef PH_NET_RELDIR
#define PH_NET_RELDIR "../lib/provider-host"
#endif

#ifndef PH_SOURCE_DIR
#define PH_SOURCE_DIR ""
#endif

int luaopen_cjson_safe(lua_State *L); /* in Debian's liblua5.4-cjson, not in its header */

static char runtime_root[PATH_MAX];

static const luaL_Reg preload[] = {
    { "host.core.task", luaopen_host_core_task },
    { "host.core.stdio", luaopen_host_core_stdio },
    { "host.core.sys", luaopen_host_core_sys },
    { "host.core.proc", luaopen_host_core_proc },
    { "host.core.http", ph_open_net_module },
    { "host.core.ssh", ph_open_net_module },
    { "host.core.util", luaopen_host_core_util },
    { "host.core.rawtcp", luaopen_host_core_rawtcp },         /* specs only */
    { "host.core.frame", luaopen_host_core_frame },           /* the bridge's frame codec */
    { "host.core.http_parse", luaopen_host_core_http_parse }, /* for the bridge's streams */
    { "cjson", luaopen_cjson },
    { "cjson.safe", luaopen_cjson_safe },
    { NULL, NULL },
};

static int has_runtime(const char *dir)
{
    char probe[PATH_MAX];
    struct stat st;
    int n = snprintf(probe, sizeof probe, "%s/lua/host/cli/init.lua", dir);
    return n > 0 && (size_t)n < sizeof probe && stat(probe, &st) == 0;
}

/* Installed and packaged layouts keep lua/ and providers/ in <exe>/../share/provider-host;
 * a build tree falls back to the source directory it was built from. */
static void find_runtime_root(void)
{
    const char *env = getenv("PROVIDER_HOST_ROOT");
    if (env != NULL && *env != '\0' && has_runtime(env)) {
        snprintf(runtime_root, sizeof runtime_root, "%s", env);
        return;
    }
    char exe[PATH_MAX];
    size_t n = sizeof exe;
    if (uv_exepath(exe, &n) == 0) {
        char *slash = strrchr(exe, '/');
        if (slash != NULL) {
            *slash = '\0';
            char cand[PATH_MAX];
            char real[PATH_MAX];
            int len = snprintf(cand, sizeof cand, "%s/../share/provider-host", exe);
            if (len > 0 && (size_t)len < sizeof cand && has_runtime(cand) &&
                realpath(cand, real) != NULL) {
                snprintf(runtime_root, sizeof runtime_root, "%s", real);
                return;
            }
        }
    }
    snprintf(runtime_root, sizeof runtime_root, "%s", PH_SOURCE_DIR);
}

const char *ph_runtime_root(void)
{
    return runtime_root;
}

/* The network module sits beside the binary (build tree, package) or in
 * <libdir>/provider-host (installed). Loaded once, on the first require. */
static void *open_net_library(char *err, size_t errlen)
{
    static void *handle;
    if (handle != NULL)
        return handle;
    char exe[PATH_MAX];
    size_t n = sizeof exe;
    if (uv_exepath(exe, &n) != 0) {
        snprintf(err, errlen, "cannot find the executable");
        return NULL;
    }
    char *slash = strrchr(exe, '/');
    if (slash != NULL)
        *slash = '\0';
    static const char *const places[] = {
        "%s/provider-host-net.so",                   /* build tree and packages */
        "%s/" PH_NET_RELDIR "/provider-host-net.so", /* installed: <libdir>/provider-host */
    };
    err[0] = '\0';
    for (size_t i = 0; i < sizeof places / sizeof places[0]; i++) {
        char path[PATH_MAX];
        int len = snprintf(path, sizeof path, places[i], exe);
        if (len < 0 || (size_t)len >= sizeof path)
            continue;
        handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (handle != NULL)
            return handle;
        if (err[0] == '\0' || access(path, F_OK) == 0)
            snprintf(err, errlen, "%s", dlerror());
    }
    return NULL;
}

int ph_open_net_module(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1); /* require passes the module name */
    char err[512];
    void *lib = open_net_library(err, sizeof err);
    if (lib == NULL)
        return luaL_error(L, "cannot load the network module for %s: %s", name, err);
    char sym[128];
    snprintf(sym, sizeof sym, "luaopen_%s", name);
    for (char *c = sym; *c != '\0'; c++)
        if (*c == '.')
            *c = '_';
    lua_CFunction open = (lua_CFunction)(uintptr_t)dlsym(lib, sym);
    if (open == NULL)
        return luaL_error(L, "the network module has no %s", sym);
    return open(L);
}

lua_State *ph_state_new(void)
{
    find_runtime_root();
    lua_State *L = luaL_newstate();
    if (L == NULL)
        return NULL;
    ph_set_main_state(L);
    luaL_openlibs(L);
    ph_task_init(L);

    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    for (const luaL_Reg *r = preload; r->name != NULL; r++) {
        lua_pushcfunction(L, r->func);
        lua_setfield(L, -2, r->name);
    }
    lua_pop(L, 1);

    /* Our runtime comes first; the system paths stay reachable (busted lives there). */
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;%s", runtime_root, runtime_root,
                    lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);
    return L;
}
