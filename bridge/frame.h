/* frame.h - the frame codec of ph-sandbox-helper (DESIGN.md section 5), shared by the helper's
 * subcommands in the sandbox (relay.c, serve.c) and the host: pure C, no allocation, no libuv,
 * no Lua.
 *
 * The wire format (this comment is the contract)
 * -----------------------------------------------
 * The helper's stdout and stdin carry a byte stream of frames, each
 *
 *     type:u8 | stream:u32 | length:u32 | payload[length]
 *
 * with integers big-endian: a 9-byte header (PH_FRAME_HEADER), then length bytes,
 * length <= PH_FRAME_MAX_PAYLOAD (65536), frames following each other with nothing in
 * between. Two protocols use it: the bridge's relay (`ph-sandbox-helper relay`, types 0x01 to
 * 0x07) and the command server (`ph-sandbox-helper serve`, the same types but OPEN, plus 0x10
 * to 0x13). "Relay" and "server" are the helper inside the sandbox, "host" the provider-host
 * end of the duplex execution that runs it.
 *
 *   0x01 HELLO   stream 0, helper -> host, always the first frame. payload = an 8-byte magic,
 *                then n:u16, n >= 1: exactly 10 bytes. The relay says "PHRELAY1" and n = the
 *                loopback port it listens on (1..65535); the server says "PHSERVE1" and n =
 *                how many commands it runs at once (its --max-commands).
 *   0x02 OPEN    relay -> host: a TCP connection was accepted as this stream. Stream ids are
 *                chosen by the relay: odd, increasing, never reused within a run. No payload.
 *   0x03 DATA    both ways: bytes of the stream, length >= 1. On a server's stream: the
 *                command's stdin (host -> server) or its stdout (server -> host).
 *   0x04 FIN     both ways, no payload: the sender sends no more DATA on the stream (a TCP
 *                half-close). The relay sends it when the TCP peer half-closes, and does
 *                shutdown(SHUT_WR) once it has written everything the host sent before FIN.
 *                A relay stream ends when FIN went both ways. To a server: the command's
 *                stdin ends once what came before is written (the server never sends FIN).
 *   0x05 RESET   both ways, no payload: the stream is aborted; the receiver forgets it (the
 *                relay closes the socket with SO_LINGER 0, so the TCP peer sees an RST). The
 *                relay sends it when reading or writing the socket fails. To a server: the host
 *                gave up the command: the server TERMs its group (KILL 2 s later), drops its
 *                output and sends nothing more on the stream (the server never sends RESET).
 *   0x06 CREDIT  both ways: payload = n:u32, n >= 1: the receiver of this frame may send n more
 *                DATA (and STDERR) payload bytes on this stream.
 *   0x07 GOAWAY  stream 0, either way: payload = a short UTF-8 reason (may be empty); the
 *                sender is closing everything.
 *   0x10 EXEC    host -> server: starts a command on a new stream. Stream ids are chosen by the
 *                host: each greater than every id before it in the run. payload = a piece of
 *                the command's request, length >= 1: the request is the concatenation of the
 *                payloads of one or more EXEC frames on the stream, the first 4 bytes of which
 *                give its whole length (PH_SERVE_REQUEST_MAX at most); the command starts
 *                once that many bytes came. Nothing but EXEC and RESET may come on the stream
 *                before its request is whole, and no EXEC after. With --max-commands commands
 *                running already, the server answers at once with STDERR and EXIT 125 and
 *                forgets the stream (the rest of its frames are dropped).
 *   0x11 STDERR  server -> host: bytes of the command's stderr, length >= 1. It takes the
 *                stream's credit as DATA does (one window for both outputs).
 *   0x12 EXIT    server -> host, the stream's last frame: payload = how:u8 | code:u8 |
 *                flags:u8, exactly 3 bytes. how 0: the command exited with status code
 *                (0..255); how 1: a signal ended it, code = the signal's number (>= 1). flags
 *                bit 0 (PH_EXIT_TIMED_OUT): the request's timeout passed and the server stopped
 *                the group; the other bits are 0. Both ends then forget the stream.
 *   0x13 SIGNAL  host -> server: payload = signo:u8 | kill_after_ms:u32, exactly 5 bytes,
 *                signo 1..64: the server sends signo to the command's process group now and,
 *                when kill_after_ms > 0 and the group still has a process that much later,
 *                KILL. Only a stream whose request is whole.
 *
 * Streams: HELLO and GOAWAY are on stream 0, every other type on a stream != 0.
 *
 * Flow control: each direction of each stream starts with PH_FRAME_WINDOW (262144) bytes of
 * credit; DATA (and STDERR) uses it up, CREDIT adds to it, and DATA beyond the sender's credit
 * is a protocol error. The relay never reads more from a socket than its credit toward the
 * host, and grants credit back as it writes the host's bytes to the socket, so it buffers at
 * most a window per stream. The server does the same with the command's stdin pipe and its
 * stdout and stderr pipes: a host that does not grant credit stalls the command's output
 * (the command blocks in write), never the server's memory; the host grants credit for every
 * byte it takes, also for what it drops, until EXIT.
 *
 * The codec refuses: an unknown type; length > PH_FRAME_MAX_PAYLOAD (on the header, before
 * any payload is buffered); HELLO or GOAWAY on a stream != 0; any other type on stream 0; DATA,
 * STDERR or EXEC of length 0; OPEN, FIN or RESET with a payload; CREDIT whose payload is not 4
 * bytes or is 0; HELLO whose payload is not 10 bytes, lacks both magics or names n = 0; EXIT
 * whose payload is not 3 bytes, has how > 1, a signal 0 or unknown flags; SIGNAL whose payload
 * is not 5 bytes or whose signo is not 1..64.
 *
 * Beyond the codec, a receiver treats as protocol errors: a frame about a stream never opened
 * (for the relay: an even id, or one it has not assigned yet; for the server: an id above the
 * last EXEC's, or any frame but EXEC with such an id), DATA beyond credit, DATA after FIN, a
 * second FIN, credit that adds up past 2^32-1, and a frame type the other side never sends
 * (to the relay: HELLO or OPEN, while it ignores the server's types on a stream it knows; to
 * the server: HELLO, OPEN, STDERR or EXIT). Frames about a stream the receiver already forgot
 * (it sent or received RESET or EXIT, or FIN went both ways) are dropped: they may have
 * crossed on the wire. After a stream's FIN arrives, credit on it is moot: the relay and the
 * server grant none.
 *
 * The relay's lifetime: it exits 0 when its stdin ends between frames or when the host sends
 * GOAWAY, closing every socket first; on a protocol error it writes the reason on stderr and
 * in a GOAWAY, and exits 1.
 *
 * The server's request (inside EXEC): integers big-endian, a string is len:u32 | bytes (no
 * NUL byte in it), nothing after the last field:
 *
 *     length:u32            the whole request, these 4 bytes included
 *     timeout_ms:u32        0: none; else the server TERMs the group once it passed, KILLs it
 *                           2 s later, and says PH_EXIT_TIMED_OUT in EXIT (a backstop: the
 *                           host keeps its own, shorter one)
 *     ctl:string            the control dir's name in --ctl-base: 1..128 bytes of
 *                           [A-Za-z0-9._-], not "." or ".."
 *     cwd:string            the command's working directory; "" keeps the server's
 *     argc:u32              >= 1, then argc strings: the program (found on PATH as execvp
 *                           does; non-empty) and its arguments
 *     envc:u32              then envc pairs of strings: a name (non-empty, no '=') and its
 *                           value, put over the server's own environment for the command
 *
 * The server's lifetime: it exits 0 when its stdin ends between frames, when the host sends
 * GOAWAY, or on SIGTERM, SIGINT or SIGHUP, after it stopped every command (TERM to each group,
 * KILL 2 s later) and removed their control dirs; on a protocol error it says why on stderr
 * and in a GOAWAY, stops everything the same way and exits 1; so it does, without the GOAWAY,
 * when its stdout is closed. serve.c has the rest (control dirs, what a command inherits). */
#ifndef PH_FRAME_H
#define PH_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define PH_FRAME_HEADER      9
#define PH_FRAME_MAX_PAYLOAD 65536
#define PH_FRAME_MAX         (PH_FRAME_HEADER + PH_FRAME_MAX_PAYLOAD) /* the largest frame */
#define PH_FRAME_WINDOW      262144
#define PH_FRAME_MAGIC       "PHRELAY1" /* the relay's HELLO starts with these 8 bytes */
#define PH_FRAME_SERVE_MAGIC "PHSERVE1" /* the server's HELLO starts with these */
#define PH_FRAME_MAGIC_LEN   8
#define PH_FRAME_HELLO_LEN   (PH_FRAME_MAGIC_LEN + 2)
#define PH_FRAME_ERROR_MAX   96 /* room for any error message of this codec */
#define PH_FRAME_EXIT_LEN    3
#define PH_FRAME_SIGNAL_LEN  5
#define PH_EXIT_TIMED_OUT    0x01    /* EXIT's flags: the request's timeout stopped it */
#define PH_SERVE_REQUEST_MAX 1048576 /* the largest request EXEC frames may carry */

enum {
    PH_FRAME_HELLO = 0x01,
    PH_FRAME_OPEN = 0x02,
    PH_FRAME_DATA = 0x03,
    PH_FRAME_FIN = 0x04,
    PH_FRAME_RESET = 0x05,
    PH_FRAME_CREDIT = 0x06,
    PH_FRAME_GOAWAY = 0x07,
    PH_FRAME_EXEC = 0x10,
    PH_FRAME_STDERR = 0x11,
    PH_FRAME_EXIT = 0x12,
    PH_FRAME_SIGNAL = 0x13,
    PH_FRAME_TYPE_MAX = 0x13, /* the highest type byte in use */
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

/* "DATA" for PH_FRAME_DATA...; NULL for a type that does not exist (0, 0x08..0x0f, > 0x13). */
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
