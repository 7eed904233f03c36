/* input.c - the host's frames for relay.c and serve.c, read from stdin a chunk at a time. */

/* Nothing here waits for output room, so everything read is acted on at once and memory stays
 * bounded: one chunk, one frame being assembled. */
#include "input.h"

#include "fail.h"
#include "outq.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#define STDIN_CHUNK 65536

static PhFrameDecoder dec;

void ph_input_read(void (*on_frame)(const PhFrame *f))
{
    static unsigned char buf[STDIN_CHUNK];
    ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
    if (n < 0) {
        if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        ph_die("stdin: %s", strerror(errno));
    }
    if (n == 0) {
        if (dec.have != 0)
            ph_protocol_error("stdin ended inside a frame");
        ph_leave(0);
    }
    size_t pos = 0;
    while (pos < (size_t)n) {
        PhFrame f;
        size_t used;
        int r = ph_frame_decode(&dec, buf + pos, (size_t)n - pos, &used, &f);
        pos += used;
        if (r < 0)
            ph_protocol_error("%s", dec.error);
        if (r == 0)
            break;
        on_frame(&f);
    }
}
