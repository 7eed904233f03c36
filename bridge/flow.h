/* flow.h - one stream's credit, both ways, as frame.h's flow control has it (flow.c). */
#ifndef PH_FLOW_H
#define PH_FLOW_H

#include <stdint.h>
#include <sys/types.h>

typedef struct {
    uint64_t credit;        /* DATA (and STDERR) bytes we may still send the host; <= 2^32-1 */
    uint32_t allowed;       /* DATA bytes the host may still send us */
    unsigned char host_fin; /* the host sent FIN: no more DATA from it, credit to it is moot */
} PhFlow;

/* A new stream: a window each way. */
void ph_flow_init(PhFlow *f);

/* The host's DATA of length bytes on stream id: a protocol error after FIN or beyond what the
 * host was allowed. */
void ph_flow_data(PhFlow *f, uint32_t id, uint32_t length);

/* The host's FIN: a protocol error if it is the second. */
void ph_flow_fin(PhFlow *f, uint32_t id);

/* The host's CREDIT (payload: its 4 bytes): a protocol error past 2^32-1. */
void ph_flow_credit(PhFlow *f, uint32_t id, const unsigned char *payload);

/* We took n of the host's bytes off our hands: the host may send as many again (CREDIT). */
void ph_flow_grant(PhFlow *f, uint32_t id, uint32_t n);

/* fd is readable: up to the credit (at most a frame) becomes one frame of this type (DATA or
 * STDERR) for the host. read's result. */
ssize_t ph_flow_send(PhFlow *f, int fd, unsigned type, uint32_t id);

#endif
