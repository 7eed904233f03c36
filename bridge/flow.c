/* flow.c - one stream's credit both ways (frame.h's flow control), for relay.c and serve.c. */

/* The relay's streams and the server's commands keep the same books, so that neither holds more
 * than a window of the host's bytes nor sends more than the host granted. */
#include "flow.h"

#include "frame.h"
#include "outq.h"

void ph_flow_init(PhFlow *f)
{
    *f = (PhFlow){ .credit = PH_FRAME_WINDOW, .allowed = PH_FRAME_WINDOW };
}

void ph_flow_data(PhFlow *f, uint32_t id, uint32_t length)
{
    if (f->host_fin)
        ph_protocol_error("DATA after FIN on stream %lu", (unsigned long)id);
    if (length > f->allowed)
        ph_protocol_error("DATA of %lu bytes on stream %lu exceeds its credit of %lu",
                          (unsigned long)length, (unsigned long)id, (unsigned long)f->allowed);
    f->allowed -= length;
}

void ph_flow_fin(PhFlow *f, uint32_t id)
{
    if (f->host_fin)
        ph_protocol_error("a second FIN on stream %lu", (unsigned long)id);
    f->host_fin = 1;
}

void ph_flow_credit(PhFlow *f, uint32_t id, const unsigned char *payload)
{
    f->credit += ph_frame_get_u32(payload);
    if (f->credit > UINT32_MAX)
        ph_protocol_error("CREDIT takes stream %lu past 2^32-1 bytes", (unsigned long)id);
}

void ph_flow_grant(PhFlow *f, uint32_t id, uint32_t n)
{
    f->allowed += n;
    ph_out_credit(id, n);
}

ssize_t ph_flow_send(PhFlow *f, int fd, unsigned type, uint32_t id)
{
    size_t want = f->credit < PH_FRAME_MAX_PAYLOAD ? (size_t)f->credit : PH_FRAME_MAX_PAYLOAD;
    ssize_t n = ph_out_read(fd, type, id, want);
    if (n > 0)
        f->credit -= (uint64_t)n;
    return n;
}
