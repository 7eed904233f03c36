/* outq.h - the frames a subcommand sends the host, queued for a non-blocking stdout (outq.c). */
#ifndef PH_OUTQ_H
#define PH_OUTQ_H

#include "frame.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* A subcommand adds output (reads a socket or pipe, grants credit, accepts a connection) only
 * while less than this is queued: each such step adds at most a frame, so the queue stays
 * under PH_OUT_SOFT plus a frame per step of a loop turn, whatever the host's reading pace. */
#define PH_OUT_SOFT (4 * PH_FRAME_MAX)

/* Make stdout non-blocking (dies if it cannot), so that a host that stops reading never stops
 * the loop; ph_out_restore, at exit, gives the flags back (the description may be shared, a
 * terminal's). */
void ph_out_start(void);
void ph_out_restore(void);

void ph_out_frame(unsigned type, uint32_t stream, const void *payload, uint32_t length);

/* HELLO: magic (PH_FRAME_MAGIC_LEN bytes) and n. */
void ph_out_hello(const char *magic, unsigned n);

/* CREDIT of n on stream. */
void ph_out_credit(uint32_t stream, uint32_t n);

/* Read at most max bytes (1..PH_FRAME_MAX_PAYLOAD) from fd straight into a frame of this type;
 * read's result: the frame is queued only when it is > 0. */
ssize_t ph_out_read(int fd, unsigned type, uint32_t stream, size_t max);

/* How many bytes wait for stdout; whether that is under PH_OUT_SOFT. */
size_t ph_out_queued(void);
int ph_out_has_room(void);

/* Write what stdout takes now; dies when it is closed or fails. */
void ph_out_flush(void);

/* The host broke the protocol: say why on stderr and, as a courtesy, in a GOAWAY (written only
 * if stdout takes it now), then ph_leave(1). */
__attribute__((format(printf, 1, 2))) _Noreturn void ph_protocol_error(const char *fmt, ...);

#endif
