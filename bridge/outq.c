/* outq.c - the frames relay.c and serve.c send the host, queued for a non-blocking stdout. */

/* One queue in front of stdout, so that the loop never waits for the host to read. */
#include "outq.h"

#include "bytes.h"
#include "fail.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static PhBytes out;           /* frames for the host, not yet written to stdout */
static int stdout_flags = -1; /* before ph_out_start; -1: untouched */

void ph_out_start(void)
{
    int flags = fcntl(STDOUT_FILENO, F_GETFL);
    if (flags < 0 || fcntl(STDOUT_FILENO, F_SETFL, flags | O_NONBLOCK) != 0)
        ph_die("stdout: %s", strerror(errno));
    stdout_flags = flags;
}

void ph_out_restore(void)
{
    if (stdout_flags >= 0)
        fcntl(STDOUT_FILENO, F_SETFL, stdout_flags);
}

void ph_out_frame(unsigned type, uint32_t stream, const void *payload, uint32_t length)
{
    unsigned char *p = ph_bytes_room(&out, PH_FRAME_HEADER + (size_t)length);
    ph_frame_put_header(p, type, stream, length);
    if (length > 0)
        memcpy(p + PH_FRAME_HEADER, payload, length);
    out.len += PH_FRAME_HEADER + (size_t)length;
}

void ph_out_hello(const char *magic, unsigned n)
{
    unsigned char hello[PH_FRAME_HELLO_LEN];
    memcpy(hello, magic, PH_FRAME_MAGIC_LEN);
    hello[8] = (unsigned char)(n >> 8);
    hello[9] = (unsigned char)n;
    ph_out_frame(PH_FRAME_HELLO, 0, hello, sizeof hello);
}

void ph_out_credit(uint32_t stream, uint32_t n)
{
    unsigned char p[4];
    ph_frame_put_u32(p, n);
    ph_out_frame(PH_FRAME_CREDIT, stream, p, sizeof p);
}

ssize_t ph_out_read(int fd, unsigned type, uint32_t stream, size_t max)
{
    unsigned char *p = ph_bytes_room(&out, PH_FRAME_HEADER + max);
    ssize_t n = read(fd, p + PH_FRAME_HEADER, max); /* no copy: the frame is built in place */
    if (n > 0) {
        ph_frame_put_header(p, type, stream, (uint32_t)n);
        out.len += PH_FRAME_HEADER + (size_t)n;
    }
    return n;
}

size_t ph_out_queued(void)
{
    return out.len;
}

int ph_out_has_room(void)
{
    return out.len < PH_OUT_SOFT;
}

void ph_out_flush(void)
{
    while (out.len > 0) {
        ssize_t n = write(STDOUT_FILENO, out.p + out.off, out.len);
        if (n > 0) {
            ph_bytes_drop(&out, (size_t)n);
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        } else {
            ph_die("stdout: %s", n < 0 ? strerror(errno) : "closed");
        }
    }
}

_Noreturn void ph_protocol_error(const char *fmt, ...)
{
    char reason[256]; /* a GOAWAY's reason is short */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    ph_say("protocol error: %s", reason);
    ph_out_frame(PH_FRAME_GOAWAY, 0, reason, (uint32_t)strlen(reason));
    while (out.len > 0) { /* stdout stays non-blocking: we write only what it takes now */
        ssize_t n = write(STDOUT_FILENO, out.p + out.off, out.len);
        if (n <= 0 && errno != EINTR)
            break;
        if (n > 0)
            ph_bytes_drop(&out, (size_t)n);
    }
    ph_leave(1);
}
