/* frame.c - ph-sandbox-helper's frame codec (relay and serve): header checks, an incremental
 * decoder, the encoder. */
#include "frame.h"

#include <stdio.h>
#include <string.h>

static const char *const type_names[PH_FRAME_TYPE_MAX + 1] = {
    [PH_FRAME_HELLO] = "HELLO",   [PH_FRAME_OPEN] = "OPEN",     [PH_FRAME_DATA] = "DATA",
    [PH_FRAME_FIN] = "FIN",       [PH_FRAME_RESET] = "RESET",   [PH_FRAME_CREDIT] = "CREDIT",
    [PH_FRAME_GOAWAY] = "GOAWAY", [PH_FRAME_EXEC] = "EXEC",     [PH_FRAME_STDERR] = "STDERR",
    [PH_FRAME_EXIT] = "EXIT",     [PH_FRAME_SIGNAL] = "SIGNAL",
};
#define TYPE_COUNT (sizeof type_names / sizeof type_names[0])

const char *ph_frame_type_name(unsigned type)
{
    return type < TYPE_COUNT ? type_names[type] : NULL;
}

unsigned ph_frame_type_of(const char *name)
{
    for (unsigned t = 1; t < TYPE_COUNT; t++)
        if (type_names[t] != NULL && strcmp(name, type_names[t]) == 0)
            return t;
    return 0;
}

#define REFUSE(...) (snprintf(err, PH_FRAME_ERROR_MAX, "frame: " __VA_ARGS__), -1)

int ph_frame_check(unsigned type, uint32_t stream, uint32_t length, const unsigned char *payload,
                   char err[PH_FRAME_ERROR_MAX])
{
    const char *name = ph_frame_type_name(type);
    if (name == NULL)
        return REFUSE("unknown type 0x%02x", type);
    if (length > PH_FRAME_MAX_PAYLOAD)
        return REFUSE("%s of %lu bytes exceeds the maximum of %d", name, (unsigned long)length,
                      PH_FRAME_MAX_PAYLOAD);
    int on_zero = type == PH_FRAME_HELLO || type == PH_FRAME_GOAWAY;
    if (on_zero && stream != 0)
        return REFUSE("%s on stream %lu (must be 0)", name, (unsigned long)stream);
    if (!on_zero && stream == 0)
        return REFUSE("%s on stream 0", name);
    switch (type) {
    case PH_FRAME_HELLO:
        if (length != PH_FRAME_HELLO_LEN)
            return REFUSE("HELLO of %lu bytes (must be %d)", (unsigned long)length,
                          PH_FRAME_HELLO_LEN);
        break;
    case PH_FRAME_OPEN:
    case PH_FRAME_FIN:
    case PH_FRAME_RESET:
        if (length != 0)
            return REFUSE("%s with a payload of %lu bytes (must be empty)", name,
                          (unsigned long)length);
        break;
    case PH_FRAME_DATA:
    case PH_FRAME_STDERR:
    case PH_FRAME_EXEC:
        if (length == 0)
            return REFUSE("empty %s on stream %lu", name, (unsigned long)stream);
        break;
    case PH_FRAME_CREDIT:
        if (length != 4)
            return REFUSE("CREDIT of %lu bytes (must be 4)", (unsigned long)length);
        break;
    case PH_FRAME_EXIT:
        if (length != PH_FRAME_EXIT_LEN)
            return REFUSE("EXIT of %lu bytes (must be %d)", (unsigned long)length,
                          PH_FRAME_EXIT_LEN);
        break;
    case PH_FRAME_SIGNAL:
        if (length != PH_FRAME_SIGNAL_LEN)
            return REFUSE("SIGNAL of %lu bytes (must be %d)", (unsigned long)length,
                          PH_FRAME_SIGNAL_LEN);
        break;
    }
    if (payload == NULL)
        return 0;
    if (type == PH_FRAME_HELLO) {
        int relay = memcmp(payload, PH_FRAME_MAGIC, PH_FRAME_MAGIC_LEN) == 0;
        if (!relay && memcmp(payload, PH_FRAME_SERVE_MAGIC, PH_FRAME_MAGIC_LEN) != 0)
            return REFUSE("HELLO without the magic " PH_FRAME_MAGIC " or " PH_FRAME_SERVE_MAGIC);
        if (payload[8] == 0 && payload[9] == 0 && relay)
            return REFUSE("HELLO with port 0");
        if (payload[8] == 0 && payload[9] == 0)
            return REFUSE("HELLO with 0 commands");
    }
    if (type == PH_FRAME_CREDIT && ph_frame_get_u32(payload) == 0)
        return REFUSE("CREDIT of 0 bytes on stream %lu", (unsigned long)stream);
    if (type == PH_FRAME_EXIT) {
        if (payload[0] > 1)
            return REFUSE("EXIT of an unknown kind %u on stream %lu", payload[0],
                          (unsigned long)stream);
        if (payload[0] == 1 && payload[1] == 0)
            return REFUSE("EXIT by signal 0 on stream %lu", (unsigned long)stream);
        if (payload[2] & ~PH_EXIT_TIMED_OUT)
            return REFUSE("EXIT with unknown flags 0x%02x on stream %lu", payload[2],
                          (unsigned long)stream);
    }
    if (type == PH_FRAME_SIGNAL && (payload[0] == 0 || payload[0] > 64))
        return REFUSE("SIGNAL of signal %u on stream %lu (must be 1..64)", payload[0],
                      (unsigned long)stream);
    return 0;
}

void ph_frame_put_header(unsigned char *out, unsigned type, uint32_t stream, uint32_t length)
{
    out[0] = (unsigned char)type;
    ph_frame_put_u32(out + 1, stream);
    ph_frame_put_u32(out + 5, length);
}

int ph_frame_decode(PhFrameDecoder *d, const void *in, size_t len, size_t *used, PhFrame *f)
{
    const unsigned char *p = in;
    size_t pos = 0;
    *used = 0;
    if (d->error[0] != '\0')
        return -1;
    for (;;) {
        /* What the current frame needs: its header, then (once checked) header + payload. */
        size_t want = PH_FRAME_HEADER;
        if (d->have >= PH_FRAME_HEADER)
            want += ph_frame_get_u32(d->buf + 5);
        if (d->have == want) {
            f->type = d->buf[0];
            f->stream = ph_frame_get_u32(d->buf + 1);
            f->length = (uint32_t)(want - PH_FRAME_HEADER);
            f->payload = d->buf + PH_FRAME_HEADER;
            d->have = 0;
            *used = pos;
            return ph_frame_check(f->type, f->stream, f->length, f->payload, d->error) ? -1 : 1;
        }
        size_t take = want - d->have;
        if (take > len - pos)
            take = len - pos;
        if (take == 0) {
            *used = pos;
            return 0;
        }
        memcpy(d->buf + d->have, p + pos, take);
        d->have += take;
        pos += take;
        /* Refuse a bad header before waiting for (or buffering) its payload. */
        if (d->have == PH_FRAME_HEADER &&
            ph_frame_check(d->buf[0], ph_frame_get_u32(d->buf + 1), ph_frame_get_u32(d->buf + 5),
                           NULL, d->error) != 0) {
            *used = pos;
            return -1;
        }
    }
}
