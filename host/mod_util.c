/* mod_util.c - host.core.util: random bytes, uuid, sha256, base64, hex, constant-time compare,
 * UTF-8 cleaning, JSON string sizes, private temp dirs and tree removal. The work is done in
 * ph_util.c. */
#include "ph.h"
#include "ph_util.h"

#include <limits.h>
#include <math.h>
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

/* Where json_clip's text goes: nothing is copied while the text is one piece of s (valid
 * input), so a valid string comes back as it is or as one lua_pushlstring of its prefix. */
typedef struct {
    luaL_Buffer b;
    const char *first; /* the first piece, not yet copied into b */
    size_t first_len;
    int pieces;
} ClipSink;

static void clip_sink(void *ud, const char *p, size_t n)
{
    ClipSink *c = ud;
    if (c->pieces++ == 0) {
        c->first = p;
        c->first_len = n;
        return;
    }
    if (c->pieces == 2)
        luaL_addlstring(&c->b, c->first, c->first_len);
    luaL_addlstring(&c->b, p, n); /* the buffer is on top: nothing else is pushed meanwhile */
}

/* util.json_clip(s, budget [, final [, n]]) -> text, used, size, cut
 * Cleans the first n bytes of s (default all) as utf8_clean does and keeps the longest run of
 * whole characters whose JSON-encoded size (as host.json writes it, quotes not counted) is at
 * most budget; cut tells that a character did not fit and the rest was dropped. used is the
 * bytes of s consumed; with final == false a truncated character at the end is left for the
 * next chunk (s:sub(used + 1)). A valid s that fits whole comes back as itself. */
static int util_json_clip(lua_State *L)
{
    size_t n;
    const char *s = check_bytes(L, 1, &n);
    lua_Integer budget = luaL_checkinteger(L, 2);
    luaL_argcheck(L, budget >= 0, 2, "must not be negative");
    int final = 1;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TBOOLEAN);
        final = lua_toboolean(L, 3);
    }
    if (!lua_isnoneornil(L, 4)) {
        lua_Integer m = luaL_checkinteger(L, 4);
        luaL_argcheck(L, m >= 0, 4, "must not be negative");
        if ((lua_Unsigned)m < n)
            n = (size_t)m;
    }

    lua_settop(L, 1); /* s stays at 1, so its bytes stay valid */
    ClipSink c = { .pieces = 0 };
    luaL_buffinit(L, &c.b);
    ph_json_clip_result r;
    ph_json_clip(s, n, (size_t)budget, final, clip_sink, &c, &r);
    if (c.pieces >= 2)
        luaL_pushresult(&c.b);
    else if (c.pieces == 0)
        lua_pushliteral(L, "");
    else if (c.first == s && c.first_len == lua_rawlen(L, 1))
        lua_pushvalue(L, 1); /* all of s, valid and within budget: no copy */
    else
        lua_pushlstring(L, c.first, c.first_len); /* a prefix of s, or one U+FFFD */
    lua_pushinteger(L, (lua_Integer)r.used);
    lua_pushinteger(L, (lua_Integer)r.size);
    lua_pushboolean(L, r.cut);
    return 4;
}

#define JSON_PIECE     (1 << 20) /* json_quote's default: a big string goes out in 1 MiB parts */
#define JSON_PIECE_MIN 8         /* room for the quote and the longest escape */

/* util.json_quote(s [, piece]) -> {part, ...}
 * The JSON string for s (quotes included), exactly as host.json / lua-cjson 2.1.0 writes it,
 * in parts of at most piece bytes (default 1 MiB) that concatenate to it: a 32 MiB output
 * then never has to exist as one string next to the cjson buffer it was copied from. */
static int util_json_quote(lua_State *L)
{
    size_t n;
    const char *s = check_bytes(L, 1, &n);
    lua_Integer piece = luaL_optinteger(L, 2, JSON_PIECE);
    luaL_argcheck(L, piece >= JSON_PIECE_MIN && piece <= LUA_MAXINTEGER / 2, 2,
                  "must be at least 8");

    lua_settop(L, 1);
    lua_createtable(L, (int)(n / (size_t)piece + 1), 0);
    size_t i = 0;
    lua_Integer k = 0;
    int closed = 0;
    while (!closed) {
        luaL_Buffer b;
        char *p = luaL_buffinitsize(L, &b, (size_t)piece);
        size_t o = 0, used;
        if (k == 0)
            p[o++] = '"';
        o += ph_json_escape(s + i, n - i, p + o, (size_t)piece - o, &used);
        i += used;
        if (i == n && o < (size_t)piece) {
            p[o++] = '"';
            closed = 1;
        }
        luaL_pushresultsize(&b, o);
        lua_rawseti(L, 2, ++k);
    }
    return 1;
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

#define SAFE_INTEGER 9007199254740992.0 /* 2^53: beyond it floats were already rounded */

/* Depth-first in place; the table to walk is at the top of the stack. Keys stay as they
 * are: lua_next forbids changing them during traversal, and JSON object keys are strings. */
static void integerize(lua_State *L, int depth)
{
    if (depth > 1000 || !lua_checkstack(L, 3))
        return;
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        int t = lua_type(L, -1);
        if (t == LUA_TTABLE && lua_getmetatable(L, -1) == 0) {
            integerize(L, depth + 1);
        } else if (t == LUA_TTABLE) {
            lua_pop(L, 1); /* a table with a metatable (cjson.null is not one) */
        } else if (t == LUA_TNUMBER && !lua_isinteger(L, -1)) {
            double d = lua_tonumber(L, -1);
            if (d == floor(d) && d >= -SAFE_INTEGER && d <= SAFE_INTEGER) {
                lua_pushvalue(L, -2);
                lua_pushinteger(L, (lua_Integer)d);
                lua_rawset(L, -5); /* assigning an existing field is allowed in traversal */
            }
        }
        lua_pop(L, 1);
    }
}

/* util.json_integers(v) -> v: integral floats up to 2^53 in v (a decoded JSON value)
 * become integers, in place. cjson 2.1.0 decodes every number as a float. */
static int util_json_integers(lua_State *L)
{
    luaL_checkany(L, 1);
    lua_settop(L, 1);
    if (lua_type(L, 1) == LUA_TTABLE) {
        integerize(L, 0);
    } else if (lua_type(L, 1) == LUA_TNUMBER && !lua_isinteger(L, 1)) {
        double d = lua_tonumber(L, 1);
        if (d == floor(d) && d >= -SAFE_INTEGER && d <= SAFE_INTEGER)
            lua_pushinteger(L, (lua_Integer)d);
    }
    return 1;
}

#define PLAIN_LIMIT 1e14 /* cjson prints 14 significant digits: below this, exactly */

static int plain_number(lua_State *L, int idx)
{
    if (lua_isinteger(L, idx)) {
        lua_Integer n = lua_tointeger(L, idx);
        return n > -(lua_Integer)PLAIN_LIMIT && n < (lua_Integer)PLAIN_LIMIT;
    }
    double d = lua_tonumber(L, idx);
    return d == floor(d) && d > -PLAIN_LIMIT && d < PLAIN_LIMIT && (d != 0 || !signbit(d));
}

/* Is the value at the top plain (see util_json_plain)? arrays and orders are stack indexes. */
static int plain_value(lua_State *L, int arrays, int orders, int depth)
{
    int t = lua_type(L, -1);
    if (t == LUA_TNUMBER)
        return plain_number(L, -1);
    if (t != LUA_TTABLE)
        return 1;
    if (depth > 1000 || !lua_checkstack(L, 4))
        return 0;
    lua_pushvalue(L, -1);
    if (lua_rawget(L, orders) != LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    int marked = lua_rawget(L, arrays) != LUA_TNIL;
    lua_pop(L, 1);
    int any = 0;
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        any = 1;
        if (lua_type(L, -2) == LUA_TNUMBER) {
            int integral =
                lua_isinteger(L, -2) || lua_tonumber(L, -2) == floor(lua_tonumber(L, -2));
            if (!plain_number(L, -2) || (marked && (lua_tonumber(L, -2) < 1 || !integral))) {
                lua_pop(L, 2);
                return 0;
            }
        } else if (marked) {
            lua_pop(L, 2); /* an array with a string key: the Lua encoder reports it */
            return 0;
        }
        int vt = lua_type(L, -1);
        if ((vt == LUA_TTABLE || vt == LUA_TNUMBER) && !plain_value(L, arrays, orders, depth + 1)) {
            lua_pop(L, 2);
            return 0;
        }
        lua_pop(L, 1);
    }
    return !(marked && !any); /* an empty marked array needs the Lua encoder's [] */
}

/* util.json_plain(v, arrays, orders) -> boolean: cjson alone encodes v exactly as host.json
 * wants (no marks to honour, no number it would round). arrays and orders are host.json's
 * weak mark tables. The check is the hot part of every reply, hence C. */
static int util_json_plain(lua_State *L)
{
    luaL_checkany(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_settop(L, 3);
    lua_pushvalue(L, 1);
    lua_pushboolean(L, plain_value(L, 2, 3, 0));
    return 1;
}

static const luaL_Reg util_funcs[] = {
    { "json_integers", util_json_integers },
    { "json_plain", util_json_plain },
    { "random", util_random },
    { "uuid", util_uuid },
    { "sha256", util_sha256 },
    { "base64_encode", util_base64_encode },
    { "base64_decode", util_base64_decode },
    { "hex", util_hex },
    { "constant_time_equal", util_constant_time_equal },
    { "utf8_valid", util_utf8_valid },
    { "utf8_clean", util_utf8_clean },
    { "json_clip", util_json_clip },
    { "json_quote", util_json_quote },
    { "mkdtemp", util_mkdtemp },
    { "remove_tree", util_remove_tree },
    { NULL, NULL },
};

int luaopen_host_core_util(lua_State *L)
{
    luaL_newlib(L, util_funcs); /* no state: requiring it again is harmless */
    return 1;
}
