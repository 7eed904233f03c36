/* mod_util.c - host.core.util: random bytes, uuid, sha256, base64, hex, constant-time compare,
 * UTF-8 cleaning, private temp dirs and tree removal. The work is done in ph_util.c. */
#include "ph.h"
#include "ph_util.h"

#include <limits.h>
#include <string.h>

#define UTIL_RANDOM_MAX  (1 << 20) /* random(n): a key or a nonce, not a data generator */
#define UTIL_PREFIX_MAX  200       /* mkdtemp: leaves room for 6 random characters */
#define UTIL_PREFIX_DFLT "provider-host-"

/* Argument i must be a string. Numbers are refused, not converted: sha256(id) with an id that
 * cjson decoded as 1.0 would hash "1.0", a bug better raised than hidden. */
static const char *check_bytes(lua_State *L, int i, size_t *len)
{
    if (lua_type(L, i) != LUA_TSTRING)
        luaL_typeerror(L, i, "string");
    return lua_tolstring(L, i, len);
}

/* util.random(n) -> string of n bytes | nil, msg, "io"   (0 <= n <= 1 MiB) */
static int util_random(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n >= 0 && n <= UTIL_RANDOM_MAX, 1, "must be between 0 and 1048576");

    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, (size_t)n);
    int err = ph_random(p, (size_t)n);
    if (err != 0)
        return ph_fail_errno(L, "io", err, "random: getrandom failed");
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

/* util.uuid() -> "xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx" | nil, msg, "io" */
static int util_uuid(lua_State *L)
{
    char u[PH_UUID_LEN + 1];
    int err = ph_uuid(u);
    if (err != 0)
        return ph_fail_errno(L, "io", err, "uuid: getrandom failed");
    lua_pushlstring(L, u, PH_UUID_LEN);
    return 1;
}

/* util.sha256(s) -> 32 raw bytes */
static int util_sha256(lua_State *L)
{
    size_t n;
    const char *s = check_bytes(L, 1, &n);

    unsigned char d[PH_SHA256_LEN];
    ph_sha256(s, n, d);
    lua_pushlstring(L, (const char *)d, sizeof d);
    return 1;
}

/* util.base64_encode(s) -> standard base64, padded */
static int util_base64_encode(lua_State *L)
{
    size_t n;
    const char *s = check_bytes(L, 1, &n);

    luaL_Buffer b;
    size_t m = ph_base64_encoded_len(n);
    char *p = luaL_buffinitsize(L, &b, m);
    ph_base64_encode((const unsigned char *)s, n, p);
    luaL_pushresultsize(&b, m);
    return 1;
}

/* util.base64_decode(s) -> bytes | nil, msg, "protocol"
 * Standard alphabet only, no whitespace; padding optional but must be complete when present;
 * the unused bits of the last character must be zero. */
static int util_base64_decode(lua_State *L)
{
    size_t n;
    const char *s = check_bytes(L, 1, &n);

    luaL_Buffer b;
    unsigned char *p = (unsigned char *)luaL_buffinitsize(L, &b, ph_base64_decoded_max(n));
    size_t m;
    if (ph_base64_decode(s, n, p, &m) != 0)
        return ph_fail(L, "protocol", "base64_decode: invalid base64");
    luaL_pushresultsize(&b, m);
    return 1;
}

/* util.hex(s) -> lowercase hex digits, two per byte */
static int util_hex(lua_State *L)
{
    size_t n;
    const char *s = check_bytes(L, 1, &n);
    luaL_argcheck(L, n <= (size_t)LUA_MAXINTEGER / 2, 1, "too long");

    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, 2 * n);
    ph_hex_encode((const unsigned char *)s, n, p);
    luaL_pushresultsize(&b, 2 * n);
    return 1;
}

/* util.constant_time_equal(a, b) -> boolean
 * The time taken depends on the two lengths, never on the contents. */
static int util_constant_time_equal(lua_State *L)
{
    size_t alen, blen;
    const char *a = check_bytes(L, 1, &alen);
    const char *b = check_bytes(L, 2, &blen);

    lua_pushboolean(L, ph_ct_equal(a, alen, b, blen));
    return 1;
}

/* util.utf8_valid(s) -> boolean */
static int util_utf8_valid(lua_State *L)
{
    size_t n;
    const char *s = check_bytes(L, 1, &n);

    lua_pushboolean(L, ph_utf8_valid_len(s, n) == n);
    return 1;
}

static void util_sink(void *ud, const char *p, size_t n)
{
    luaL_addlstring(ud, p, n); /* the buffer is on top: nothing else is pushed meanwhile */
}

/* util.utf8_clean(s [, final]) -> cleaned, rest
 * Each maximal subpart of an ill-formed sequence becomes one U+FFFD. final defaults to true;
 * when false, a truncated character at the end is returned as rest, to be prepended to the
 * next chunk. Valid input is returned as is (the same string, no copy) with rest "". */
static int util_utf8_clean(lua_State *L)
{
    size_t n;
    const char *s = check_bytes(L, 1, &n);
    int final = 1;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TBOOLEAN);
        final = lua_toboolean(L, 2);
    }

    size_t valid = ph_utf8_valid_len(s, n);
    if (valid == n) {
        lua_settop(L, 1);
        lua_pushliteral(L, "");
        return 2;
    }
    lua_settop(L, 1); /* s stays at 1, so its bytes stay valid */
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addlstring(&b, s, valid);
    size_t used = valid + ph_utf8_clean(s + valid, n - valid, final, util_sink, &b);
    luaL_pushresult(&b);
    lua_pushlstring(L, s + used, n - used);
    return 2;
}

/* util.mkdtemp([prefix]) -> path | nil, msg, "io"
 * A new directory, mode 0700, named prefix plus 6 random characters, under $TMPDIR when that
 * is an absolute path to an existing directory, else under /tmp. */
static int util_mkdtemp(lua_State *L)
{
    size_t len = sizeof UTIL_PREFIX_DFLT - 1;
    const char *prefix = UTIL_PREFIX_DFLT;
    if (!lua_isnoneornil(L, 1))
        prefix = check_bytes(L, 1, &len);
    luaL_argcheck(L, strlen(prefix) == len && strchr(prefix, '/') == NULL, 1,
                  "must be a file name prefix, without '/'");
    luaL_argcheck(L, len <= UTIL_PREFIX_MAX, 1, "too long");

    char path[PATH_MAX];
    int err = ph_mkdtemp(prefix, path, sizeof path);
    if (err != 0)
        return ph_fail_errno(L, "io", err, "mkdtemp: cannot create a directory for '%s'", prefix);
    lua_pushstring(L, path);
    return 1;
}

/* util.remove_tree(path) -> true | nil, msg, "io"
 * path must be absolute, without "." or ".." components, and not "/". Symbolic links are
 * removed, never followed. A missing path is success. */
static int util_remove_tree(lua_State *L)
{
    size_t len;
    const char *path = check_bytes(L, 1, &len);
    luaL_argcheck(L, strlen(path) == len && ph_remove_tree_path_ok(path), 1,
                  "must be an absolute path, without '.' or '..', other than '/'");

    int err = ph_remove_tree(path);
    if (err != 0)
        return ph_fail_errno(L, "io", err, "remove_tree %s", path);
    lua_pushboolean(L, 1);
    return 1;
}

static const luaL_Reg util_funcs[] = {
    { "random", util_random },
    { "uuid", util_uuid },
    { "sha256", util_sha256 },
    { "base64_encode", util_base64_encode },
    { "base64_decode", util_base64_decode },
    { "hex", util_hex },
    { "constant_time_equal", util_constant_time_equal },
    { "utf8_valid", util_utf8_valid },
    { "utf8_clean", util_utf8_clean },
    { "mkdtemp", util_mkdtemp },
    { "remove_tree", util_remove_tree },
    { NULL, NULL },
};

int luaopen_host_core_util(lua_State *L)
{
    luaL_newlib(L, util_funcs); /* no state: requiring it again is harmless */
    return 1;
}
