/* frame.h - the frame codec of the sandbox callback bridge (DESIGN.md section 5), shared by the
 * in-sandbox relay (ph-sandbox-helper) and the host: pure C, no allocation, no libuv, no Lua.
 *
 * The wire format (this comment is the contract)
 * -----------------------------------------------
 * The relay's stdout and stdin carry a byte stream of frames, each
 *
 *     type:u8 | stream:u32 | length:u32 | payload[length]
 *
 * with integers big-endian: a 9-byte header (PH_FRAME_HEADER), then length bytes,
 * length <= PH_FRAME_MAX_PAYLOAD (65536), frames following each other with nothing in
 * between. "Relay" is the helper inside the sandbox, "host" the provider-host end of the exec
 * that runs it.
 *
 *   0x01 HELLO   stream 0, relay -> host, always the first frame. payload = the 8 bytes
 *                "PHRELAY1" then port:u16 (1..65535), the loopback port it listens on:
 *                exactly 10 bytes.
 *   0x02 OPEN    relay -> host: a TCP connection was accepted as this stream. Stream ids are
 *                chosen by the relay: odd, increasing, never reused within a run. No payload.
 *   0x03 DATA    both ways: bytes of the stream, length >= 1.
 *   0x04 FIN     both ways, no payload: the sender sends no more DATA on the stream (a TCP
 *                half-close). The relay sends it when the TCP peer half-closes, and does
 *                shutdown(SHUT_WR) once it has written everything the host sent before FIN.
 *                A stream ends when FIN went both ways.
 *   0x05 RESET   both ways, no payload: the stream is aborted; the receiver forgets it (the
 *                relay closes the socket with SO_LINGER 0, so the TCP peer sees an RST). The
 *                relay sends it when reading or writing the socket fails.
 *   0x06 CREDIT  both ways: payload = n:u32, n >= 1: the receiver of this frame may send n more
 *                DATA payload bytes on this stream.
 *   0x07 GOAWAY  stream 0, either way: payload = a short UTF-8 reason (may be empty); the
 *                sender is closing everything.
 *
 * Streams: HELLO and GOAWAY are on stream 0, every other type on a stream != 0.
 *
 * Flow control: each direction of each stream starts with PH_FRAME_WINDOW (262144) bytes of
 * credit; DATA uses it up, CREDIT adds to it, and DATA beyond the sender's credit is a protocol
 * error. The relay never reads more from a socket than its credit toward the host, and grants
 * credit back as it writes the host's bytes to the socket, so it buffers at most a window per
 * stream.
 *
 * The codec refuses: an unknown type; length > PH_FRAME_MAX_PAYLOAD (on the header, before
 * any payload is buffered); HELLO or GOAWAY on a stream != 0; any other type on stream 0; DATA
 * of length 0; OPEN, FIN or RESET with a payload; CREDIT whose payload is not 4 bytes or is 0;
 * HELLO whose payload is not 10 bytes, lacks the magic or names port 0.
 *
 * Beyond the codec, a receiver treats as protocol errors: a frame about a stream never opened
 * (for the relay: an even id, or one it has not assigned yet), DATA beyond credit, DATA after
 * FIN, a second FIN, credit that adds up past 2^32-1, and a frame type the other side never
 * sends (HELLO or OPEN from the host). Frames about a stream the receiver already forgot (it
 * sent or received RESET, or FIN went both ways) are dropped: they may have crossed on the
 * wire. After a stream's FIN arrives, credit on it is moot: the relay grants none.
 *
 * The relay's lifetime: it exits 0 when its stdin ends between frames or when the host sends
 * GOAWAY, closing every socket first; on a protocol error it writes the reason on stderr and
 * in a GOAWAY, and exits 1. */
#ifndef PH_FRAME_H
#define PH_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define PH_FRAME_HEADER      9
#define PH_FRAME_MAX_PAYLOAD 65536
#define PH_FRAME_MAX         (PH_FRAME_HEADER + PH_FRAME_MAX_PAYLOAD) /* the largest frame */
#define PH_FRAME_WINDOW      262144
#define PH_FRAME_MAGIC       "PHRELAY1" /* HELLO's payload starts with these 8 bytes */
#define PH_FRAME_MAGIC_LEN   8
#define PH_FRAME_HELLO_LEN   (PH_FRAME_MAGIC_LEN + 2)
#define PH_FRAME_ERROR_MAX   96 /* room for any error message of this codec */

enum {
    PH_FRAME_HELLO = 0x01,
    PH_FRAME_OPEN = 0x02,
    PH_FRAME_DATA = 0x03,
    PH_FRAME_FIN = 0x04,
    PH_FRAME_RESET = 0x05,
    PH_FRAME_CREDIT = 0x06,
    PH_FRAME_GOAWAY = 0x07,
};

/* A decoded frame. payload points into the decoder: valid until its next call. */
typedef struct {
    unsigned type;
    uint32_t stream;
    uint32_t length;
    const unsigned char *payload;
} PhFrame;

/* Zero it (PhFrameDecoder d = { 0 }) before use. It holds the frame being assembled, so input
 * may be split anywhere; after a refusal it refuses everything (error[0] != '\0'). */
typedef struct {
    size_t have; /* bytes of the current frame held in buf */
    char error[PH_FRAME_ERROR_MAX];
    unsigned char buf[PH_FRAME_MAX];
} PhFrameDecoder;

/* Decode from in[0..len): *used gets the number of bytes taken.
 * Returns 1: a frame is complete in *f (input may remain: call again with the rest);
 *         0: every byte was taken and no frame is complete yet;
 *        -1: the input breaks a rule of the format; d->error says which. */
int ph_frame_decode(PhFrameDecoder *d, const void *in, size_t len, size_t *used, PhFrame *f);

/* Whether a frame obeys the format: 0, or -1 with the reason in err. With payload NULL only
 * what the header decides is checked (the decoder checks the header before the payload is in);
 * otherwise payload holds length bytes. */
int ph_frame_check(unsigned type, uint32_t stream, uint32_t length, const unsigned char *payload,
                   char err[PH_FRAME_ERROR_MAX]);

/* Write the 9-byte header into out. Nothing is checked: see ph_frame_check. */
void ph_frame_put_header(unsigned char *out, unsigned type, uint32_t stream, uint32_t length);

/* "DATA" for PH_FRAME_DATA...; NULL for a type that does not exist. */
const char *ph_frame_type_name(unsigned type);
/* The type called name ("DATA"), or 0 for none. */
unsigned ph_frame_type_of(const char *name);

static inline void ph_frame_put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static inline uint32_t ph_frame_get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

#endif
