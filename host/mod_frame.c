/* mod_frame.c - host.core.frame: ph-sandbox-helper's frame codec (bridge/frame.h) for the host
 * side of the bridge (relay) and of host.remote's command server (serve), and for specs.
 * Internal: providers never load it. */
#include "frame.h"
#include "ph.h"

#include <string.h>

#define DECODER_MT "host.frame.Decoder"

/* frame.encode(type_name, stream, payload) -> string. payload defaults to "". A frame the
 * format refuses is a bug in the caller, so it raises with the codec's reason. */
static int frame_encode(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    lua_Integer stream = luaL_checkinteger(L, 2);
    size_t len;
    const char *payload = luaL_optlstring(L, 3, "", &len);
    unsigned type = ph_frame_type_of(name);
    if (type == 0)
        return luaL_argerror(L, 1,
                             "HELLO, OPEN, DATA, FIN, RESET, CREDIT, GOAWAY, EXEC, STDERR, EXIT "
                             "or SIGNAL expected");
    luaL_argcheck(L, stream >= 0 && stream <= (lua_Integer)UINT32_MAX, 2,
                  "stream out of range [0, 2^32-1]");
    luaL_argcheck(L, len <= PH_FRAME_MAX_PAYLOAD, 3, "payload longer than MAX_PAYLOAD");
    char err[PH_FRAME_ERROR_MAX];
    if (ph_frame_check(type, (uint32_t)stream, (uint32_t)len, (const unsigned char *)payload,
                       err) != 0)
        return luaL_error(L, "%s", err);
    luaL_Buffer b;
    unsigned char *p = (unsigned char *)luaL_buffinitsize(L, &b, PH_FRAME_HEADER + len);
    ph_frame_put_header(p, type, (uint32_t)stream, (uint32_t)len);
    memcpy(p + PH_FRAME_HEADER, payload, len);
    luaL_pushresultsize(&b, PH_FRAME_HEADER + len);
    return 1;
}

/* frame.decoder() -> Decoder. It owns no resource (a fixed buffer inside the userdata), so it
 * needs no close. */
static int frame_decoder(lua_State *L)
{
    PhFrameDecoder *d = lua_newuserdatauv(L, sizeof *d, 0);
    memset(d, 0, sizeof *d);
    luaL_setmetatable(L, DECODER_MT);
    return 1;
}

/* {type=, stream=, payload=}, plus credit= for CREDIT; magic= and port= (the relay's) or
 * max_commands= (the server's) for HELLO; exit_code= or signal= (a number), and timed_out=
 * for EXIT; signal= and kill_after_ms= for SIGNAL. */
static void push_frame(lua_State *L, const PhFrame *f)
{
    lua_createtable(L, 0, 4);
    lua_pushstring(L, ph_frame_type_name(f->type));
    lua_setfield(L, -2, "type");
    lua_pushinteger(L, f->stream);
    lua_setfield(L, -2, "stream");
    lua_pushlstring(L, (const char *)f->payload, f->length);
    lua_setfield(L, -2, "payload");
    if (f->type == PH_FRAME_CREDIT) {
        lua_pushinteger(L, ph_frame_get_u32(f->payload));
        lua_setfield(L, -2, "credit");
    } else if (f->type == PH_FRAME_HELLO) {
        int relay = memcmp(f->payload, PH_FRAME_MAGIC, PH_FRAME_MAGIC_LEN) == 0;
        lua_pushlstring(L, (const char *)f->payload, PH_FRAME_MAGIC_LEN);
        lua_setfield(L, -2, "magic");
        lua_pushinteger(L,
                        f->payload[PH_FRAME_MAGIC_LEN] << 8 | f->payload[PH_FRAME_MAGIC_LEN + 1]);
        lua_setfield(L, -2, relay ? "port" : "max_commands");
    } else if (f->type == PH_FRAME_EXIT) {
        lua_pushinteger(L, f->payload[1]);
        lua_setfield(L, -2, f->payload[0] == 0 ? "exit_code" : "signal");
        lua_pushboolean(L, f->payload[2] & PH_EXIT_TIMED_OUT);
        lua_setfield(L, -2, "timed_out");
    } else if (f->type == PH_FRAME_SIGNAL) {
        lua_pushinteger(L, f->payload[0]);
        lua_setfield(L, -2, "signal");
        lua_pushinteger(L, ph_frame_get_u32(f->payload + 1));
        lua_setfield(L, -2, "kill_after_ms");
    }
}

/* Decoder:feed(bytes) -> list of frames (maybe empty) | nil, message, "protocol". Bytes may
 * split frames anywhere; once it failed, a decoder fails every feed with the same message. */
static int decoder_feed(lua_State *L)
{
    PhFrameDecoder *d = luaL_checkudata(L, 1, DECODER_MT);
    size_t len, pos = 0;
    const char *in = luaL_checklstring(L, 2, &len);
    lua_newtable(L);
    for (lua_Integer n = 1;; n++) {
        PhFrame f;
        size_t used;
        int r = ph_frame_decode(d, in + pos, len - pos, &used, &f);
        pos += used;
        if (r < 0)
            return ph_fail(L, "protocol", "%s", d->error);
        if (r == 0)
            return 1;
        push_frame(L, &f);
        lua_rawseti(L, -2, n);
    }
}

/* Decoder:buffered() -> bytes of an unfinished frame held (0 between frames), so that an
 * end of input inside a frame can be told apart. */
static int decoder_buffered(lua_State *L)
{
    PhFrameDecoder *d = luaL_checkudata(L, 1, DECODER_MT);
    lua_pushinteger(L, (lua_Integer)d->have);
    return 1;
}

static const luaL_Reg decoder_methods[] = {
    { "feed", decoder_feed },
    { "buffered", decoder_buffered },
    { NULL, NULL },
};

static const luaL_Reg frame_funcs[] = {
    { "encode", frame_encode },
    { "decoder", frame_decoder },
    { NULL, NULL },
};

int luaopen_host_core_frame(lua_State *L)
{
    if (luaL_newmetatable(L, DECODER_MT)) { /* busted re-requires modules per spec file */
        luaL_newlib(L, decoder_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    luaL_newlib(L, frame_funcs);
    lua_pushinteger(L, PH_FRAME_WINDOW);
    lua_setfield(L, -2, "WINDOW");
    lua_pushinteger(L, PH_FRAME_MAX_PAYLOAD);
    lua_setfield(L, -2, "MAX_PAYLOAD");
    lua_pushinteger(L, PH_FRAME_HEADER);
    lua_setfield(L, -2, "HEADER_SIZE");
    lua_pushliteral(L, PH_FRAME_MAGIC);
    lua_setfield(L, -2, "MAGIC");
    lua_pushliteral(L, PH_FRAME_SERVE_MAGIC);
    lua_setfield(L, -2, "SERVE_MAGIC");
    lua_pushinteger(L, PH_SERVE_REQUEST_MAX);
    lua_setfield(L, -2, "REQUEST_MAX");
    lua_createtable(L, 0, 11); /* TYPES: name -> the type's byte */
    for (unsigned t = 1; t <= PH_FRAME_TYPE_MAX; t++) {
        if (ph_frame_type_name(t) == NULL)
            continue;
        lua_pushinteger(L, t);
        lua_setfield(L, -2, ph_frame_type_name(t));
    }
    lua_setfield(L, -2, "TYPES");
    return 1;
}
