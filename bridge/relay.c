/* relay.c - ph-sandbox-helper relay: accepts TCP connections on 127.0.0.1 and carries each as a
 * stream of frames (frame.h) over stdin/stdout, in one poll() loop with bounded memory. */
#include "relay.h"

#include "args.h"
#include "bytes.h"
#include "fail.h"
#include "fd.h"
#include "flow.h"
#include "frame.h"
#include "ids.h"
#include "input.h"
#include "outq.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

/* Memory is bounded whatever either side does: stdin is read a chunk at a time, each acted on
 * at once (input.c: nothing from the host waits for output room); a stream holds at most
 * PH_FRAME_WINDOW bytes from the host, since the host may send only the credit we grant as
 * the socket takes bytes (flow.c); the output queue stays under PH_OUT_SOFT plus one frame
 * (outq.h); and there are at most --max-streams streams. */
#define DEFAULT_MAX_STREAMS 1024
#define MAX_STREAMS_LIMIT   65536
/* Sockets are read or written (a write grants credit) and connections accepted only while
 * ph_out_has_room(): each of those steps adds at most one frame. */
#define ACCEPT_BURST 64 /* connections accepted per loop turn, so streams get their turn */

typedef struct {
    int fd;
    uint32_t id;
    PhFlow flow;              /* flow.allowed + in.len = WINDOW; once flow.host_fin, shut the
                                 socket's writing side when in is drained */
    PhBytes in;               /* the host's bytes, not yet written to the socket */
    unsigned char read_done;  /* the socket's reading side ended: FIN sent */
    unsigned char write_done; /* shutdown(SHUT_WR) done */
    unsigned char dead;       /* closed and forgotten; freed at the end of the loop turn */
} Stream;

static struct {
    const char *prog;
    int listen_fd, spare_fd;
    size_t max_streams;
    uint64_t next_id;
    Stream **streams; /* by increasing id: binary search */
    size_t nstreams;
} R = { .listen_fd = -1, .spare_fd = -1, .next_id = 1 };

/* ---- leaving -------------------------------------------------------------------------- */

/* Close every socket and exit: ph_leave's way out (fail.h). */
static void finish(int status)
{
    for (size_t i = 0; i < R.nstreams; i++)
        if (R.streams[i]->fd >= 0)
            close(R.streams[i]->fd);
    if (R.listen_fd >= 0)
        close(R.listen_fd);
    ph_out_restore();
    exit(status);
}

/* ---- streams -------------------------------------------------------------------------- */

static uint32_t stream_id(size_t i)
{
    return R.streams[i]->id;
}

static Stream *stream_find(uint32_t id)
{
    size_t i = ph_ids_search(R.nstreams, id, stream_id);
    if (i < R.nstreams && R.streams[i]->id == id && !R.streams[i]->dead)
        return R.streams[i];
    return NULL;
}

/* Close the socket and forget the stream; abort sends an RST instead of a FIN. */
static void stream_close(Stream *s, int abort)
{
    if (abort) {
        struct linger lg = { 1, 0 };
        setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close(s->fd);
    s->fd = -1;
    s->dead = 1;
    ph_bytes_free(&s->in);
}

/* The socket failed: tell the host and drop the stream. */
static void stream_reset(Stream *s)
{
    ph_out_frame(PH_FRAME_RESET, s->id, NULL, 0);
    stream_close(s, 1);
}

/* After a change: half-close the socket once the host's FIN is due, and forget the stream
 * once FIN went both ways. */
static void stream_settle(Stream *s)
{
    if (s->flow.host_fin && s->in.len == 0 && !s->write_done) {
        shutdown(s->fd, SHUT_WR);
        s->write_done = 1;
    }
    if (s->write_done && s->read_done)
        stream_close(s, 0);
}

/* The socket is readable: up to credit bytes become one DATA frame. */
static void stream_read(Stream *s)
{
    ssize_t n = ph_flow_send(&s->flow, s->fd, PH_FRAME_DATA, s->id);
    if (n == 0) {
        s->read_done = 1;
        ph_out_frame(PH_FRAME_FIN, s->id, NULL, 0);
        stream_settle(s);
    } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        stream_reset(s);
    }
}

/* The socket is writable: write the host's bytes and grant the host as many again. */
static void stream_write(Stream *s)
{
    ssize_t n = send(s->fd, s->in.p + s->in.off, s->in.len, MSG_NOSIGNAL);
    if (n > 0) {
        ph_bytes_drop(&s->in, (size_t)n);
        if (s->in.len == 0)
            ph_bytes_free(&s->in); /* an idle stream holds no buffer */
        if (!s->flow.host_fin)     /* after FIN the host sends no DATA: credit is moot */
            ph_flow_grant(&s->flow, s->id, (uint32_t)n);
        stream_settle(s);
    } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        stream_reset(s);
    }
}

/* Free the streams closed during this loop turn, keeping the order of the rest. */
static void streams_compact(void)
{
    size_t j = 0;
    for (size_t i = 0; i < R.nstreams; i++) {
        if (R.streams[i]->dead)
            free(R.streams[i]);
        else
            R.streams[j++] = R.streams[i];
    }
    R.nstreams = j;
}

/* ---- frames from the host ------------------------------------------------------------- */

static void host_frame(const PhFrame *f)
{
    const char *name = ph_frame_type_name(f->type);
    if (f->type == PH_FRAME_GOAWAY)
        ph_leave(0);
    if (f->type == PH_FRAME_HELLO || f->type == PH_FRAME_OPEN)
        ph_protocol_error("%s from the host", name);
    unsigned long id = f->stream;
    if (id % 2 == 0 || id >= R.next_id)
        ph_protocol_error("%s on stream %lu, which was never opened", name, id);
    Stream *s = stream_find(f->stream);
    if (s == NULL)
        return; /* forgotten here: the frame crossed our RESET or FIN on the wire */
    switch (f->type) {
    case PH_FRAME_DATA:
        ph_flow_data(&s->flow, s->id, f->length);
        ph_bytes_put(&s->in, f->payload, f->length);
        break;
    case PH_FRAME_FIN:
        ph_flow_fin(&s->flow, s->id);
        stream_settle(s);
        break;
    case PH_FRAME_RESET:
        stream_close(s, 1);
        break;
    case PH_FRAME_CREDIT:
        ph_flow_credit(&s->flow, s->id, f->payload);
        break;
    }
}

/* ---- accepting ------------------------------------------------------------------------ */

/* Out of descriptors: accept the waiting connection with the spare one and close it, so the
 * listener stops being readable instead of spinning. */
static void accept_and_drop(void)
{
    if (R.spare_fd >= 0)
        close(R.spare_fd);
    int fd = accept(R.listen_fd, NULL, NULL);
    if (fd >= 0)
        close(fd);
    R.spare_fd = fcntl(R.listen_fd, F_DUPFD_CLOEXEC, 0);
}

static void accept_connections(void)
{
    for (int i = 0; i < ACCEPT_BURST && ph_out_has_room(); i++) {
        int fd = accept4(R.listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE) {
                accept_and_drop();
                continue;
            }
            return; /* EAGAIN, or a shortage that the next turn may not have */
        }
        if (R.nstreams >= R.max_streams || R.next_id > UINT32_MAX) {
            close(fd); /* over the limit: the client sees the connection end at once */
            continue;
        }
        Stream *s = calloc(1, sizeof *s);
        if (s == NULL)
            ph_die("out of memory");
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        s->fd = fd;
        s->id = (uint32_t)R.next_id;
        R.next_id += 2;
        ph_flow_init(&s->flow);
        R.streams[R.nstreams++] = s;
        ph_out_frame(PH_FRAME_OPEN, s->id, NULL, 0);
    }
}

/* ---- setup and the loop --------------------------------------------------------------- */

static int usage_error(const char *problem, const char *arg)
{
    return ph_usage_error(R.prog, "[--port N] [--max-streams N]", problem, arg);
}

/* A fresh network namespace (the local provider's isolateNetwork) has its loopback down, and
 * nothing could listen on 127.0.0.1 there: bring it up when we may. Elsewhere it is up already,
 * or we lack the privilege and bind says why. */
static void loopback_up(void)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, "lo", 3);
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) == 0 && !(ifr.ifr_flags & IFF_UP)) {
        ifr.ifr_flags |= IFF_UP;
        ioctl(fd, SIOCSIFFLAGS, &ifr);
    }
    close(fd);
}

static uint16_t listen_on(unsigned long port)
{
    loopback_up();
    R.listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (R.listen_fd < 0)
        ph_die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(R.listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(R.listen_fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        ph_die("bind 127.0.0.1:%lu: %s", port, strerror(errno));
    if (listen(R.listen_fd, SOMAXCONN) != 0)
        ph_die("listen: %s", strerror(errno));
    socklen_t len = sizeof sa;
    if (getsockname(R.listen_fd, (struct sockaddr *)&sa, &len) != 0)
        ph_die("getsockname: %s", strerror(errno));
    R.spare_fd = fcntl(R.listen_fd, F_DUPFD_CLOEXEC, 0);
    return ntohs(sa.sin_port);
}

static void loop(void)
{
    /* stdin, stdout, the listener, then one per stream, in the streams' order. */
    enum { IN, OUT, LISTEN, FIRST };
    struct pollfd *pfd = calloc(FIRST + R.max_streams, sizeof *pfd);
    if (pfd == NULL)
        ph_die("out of memory");
    for (;;) {
        int room = ph_out_has_room();
        pfd[IN] = (struct pollfd){ STDIN_FILENO, POLLIN, 0 };
        pfd[OUT] = (struct pollfd){ STDOUT_FILENO, POLLOUT, 0 };
        pfd[LISTEN] = (struct pollfd){ R.listen_fd, POLLIN, 0 };
        if (ph_out_queued() == 0)
            pfd[OUT].fd = -1;
        if (!room)
            pfd[LISTEN].fd = -1;
        size_t n = R.nstreams;
        for (size_t i = 0; i < n; i++) {
            Stream *s = R.streams[i];
            short ev = 0;
            if (room && !s->read_done && s->flow.credit > 0)
                ev |= POLLIN;
            if (room && s->in.len > 0)
                ev |= POLLOUT; /* a write grants credit: it needs output room too */
            /* No interest, no entry: poll would report an error or hangup on it forever. */
            pfd[FIRST + i] = (struct pollfd){ ev ? s->fd : -1, ev, 0 };
        }
        if (poll(pfd, FIRST + n, -1) < 0) {
            if (errno == EINTR)
                continue;
            ph_die("poll: %s", strerror(errno));
        }
        if (pfd[OUT].revents)
            ph_out_flush();
        if (pfd[IN].revents)
            ph_input_read(host_frame);
        for (size_t i = 0; i < n; i++) {
            Stream *s = R.streams[i];
            short ev = pfd[FIRST + i].events, rev = pfd[FIRST + i].revents;
            if ((ev & POLLIN) && (rev & (POLLIN | POLLHUP | POLLERR)) && !s->dead &&
                ph_out_has_room())
                stream_read(s);
            if ((ev & POLLOUT) && (rev & (POLLOUT | POLLHUP | POLLERR)) && !s->dead &&
                s->in.len > 0 && ph_out_has_room())
                stream_write(s);
        }
        streams_compact();
        if (pfd[LISTEN].revents)
            accept_connections();
        ph_out_flush();
    }
}

int ph_relay_main(const char *prog, int argc, char **argv)
{
    R.prog = prog;
    ph_fail_init(prog, finish);
    unsigned long port = 0, max_streams = DEFAULT_MAX_STREAMS;
    for (int i = 1; i < argc; i += 2) { /* each option, then its number */
        int is_port = strcmp(argv[i], "--port") == 0;
        if (!is_port && strcmp(argv[i], "--max-streams") != 0)
            return usage_error("unknown argument '%s'", argv[i]);
        if (i + 1 >= argc)
            return usage_error("%s needs a number", argv[i]);
        if (is_port ? ph_parse_number(argv[i + 1], 0, 65535, &port)
                    : ph_parse_number(argv[i + 1], 1, MAX_STREAMS_LIMIT, &max_streams))
            return usage_error(is_port ? "bad port '%s'" : "bad --max-streams '%s'", argv[i + 1]);
    }
    R.max_streams = max_streams;
    R.streams = calloc(R.max_streams, sizeof *R.streams);
    if (R.streams == NULL)
        ph_die("out of memory");
    signal(SIGPIPE, SIG_IGN); /* a closed stdout or socket is an error return, not a death */
    ph_fd_limit_raise(R.max_streams + 16); /* every stream's socket and ours */
    ph_out_start();
    ph_out_hello(PH_FRAME_MAGIC, listen_on(port));
    ph_out_flush();
    loop();
    return 0;
}
