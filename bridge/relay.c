/* relay.c - ph-sandbox-helper relay: accepts TCP connections on 127.0.0.1 and carries each as a
 * stream of frames (frame.h) over stdin/stdout, in one poll() loop with bounded memory. */
#include "relay.h"

#include "frame.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

/* Memory is bounded whatever either side does: stdin is read in STDIN_CHUNK pieces, each acted
 * on at once (nothing from the host waits for output room); a stream holds at most
 * PH_FRAME_WINDOW bytes from the host, since the host may send only the credit we grant as
 * the socket takes bytes; the output queue stays under OUT_SOFT plus one frame; and there are
 * at most --max-streams streams. */
#define DEFAULT_MAX_STREAMS 1024
#define MAX_STREAMS_LIMIT   65536
/* Sockets are read or written (a write grants credit) and connections accepted only while
 * less output than this is queued: each of those steps adds at most one frame, so the queue
 * stays under OUT_SOFT plus one frame, whatever the host's reading pace. */
#define OUT_SOFT     (4 * PH_FRAME_MAX)
#define STDIN_CHUNK  65536
#define ACCEPT_BURST 64 /* connections accepted per loop turn, so streams get their turn */

/* A byte queue: p[off..off+len) is the content. */
typedef struct {
    unsigned char *p;
    size_t off, len, cap;
} Bytes;

typedef struct {
    int fd;
    uint32_t id;
    uint64_t credit;          /* DATA bytes we may still send the host (up to 2^32-1) */
    uint32_t allowed;         /* DATA bytes the host may still send us; allowed + in.len = WINDOW */
    Bytes in;                 /* the host's bytes, not yet written to the socket */
    unsigned char read_done;  /* the socket's reading side ended: FIN sent */
    unsigned char host_fin;   /* the host sent FIN: shut the socket's writing side once drained */
    unsigned char write_done; /* shutdown(SHUT_WR) done */
    unsigned char dead;       /* closed and forgotten; freed at the end of the loop turn */
} Stream;

static struct {
    const char *prog;
    int listen_fd, spare_fd;
    int stdout_flags; /* restored at exit: the description may be shared (a terminal) */
    size_t max_streams;
    uint64_t next_id;
    Stream **streams; /* by increasing id: binary search */
    size_t nstreams;
    Bytes out; /* frames for the host, not yet written to stdout */
    PhFrameDecoder dec;
} R = { .listen_fd = -1, .spare_fd = -1, .stdout_flags = -1, .next_id = 1 };

/* ---- leaving -------------------------------------------------------------------------- */

static void say(const char *fmt, va_list ap)
{
    char line[512];
    int n = snprintf(line, sizeof line, "%s: ", R.prog);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    fprintf(stderr, "%s\n", line);
}

/* Close every socket and exit. */
static _Noreturn void finish(int status)
{
    for (size_t i = 0; i < R.nstreams; i++)
        if (R.streams[i]->fd >= 0)
            close(R.streams[i]->fd);
    if (R.listen_fd >= 0)
        close(R.listen_fd);
    if (R.stdout_flags >= 0)
        fcntl(STDOUT_FILENO, F_SETFL, R.stdout_flags);
    exit(status);
}

__attribute__((format(printf, 1, 2))) static _Noreturn void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    say(fmt, ap);
    va_end(ap);
    finish(1);
}

static void out_frame(unsigned type, uint32_t stream, const void *payload, uint32_t length);

/* The host broke the protocol: say why on stderr and, as a courtesy, in a GOAWAY (written only
 * if stdout takes it now), then exit 1. */
__attribute__((format(printf, 1, 2))) static _Noreturn void protocol_error(const char *fmt, ...)
{
    char reason[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s: protocol error: %s\n", R.prog, reason);
    out_frame(PH_FRAME_GOAWAY, 0, reason, (uint32_t)strlen(reason));
    while (R.out.len > 0) {
        ssize_t n = write(STDOUT_FILENO, R.out.p + R.out.off, R.out.len);
        if (n <= 0 && errno != EINTR)
            break;
        if (n > 0) {
            R.out.off += (size_t)n;
            R.out.len -= (size_t)n;
        }
    }
    finish(1);
}

/* ---- byte queues ---------------------------------------------------------------------- */

/* Room for n more bytes after the content; dies without memory. */
static unsigned char *bytes_room(Bytes *b, size_t n)
{
    if (b->cap - b->off - b->len < n && b->off > 0) {
        memmove(b->p, b->p + b->off, b->len);
        b->off = 0;
    }
    if (b->cap - b->len < n) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap - b->len < n)
            cap *= 2;
        unsigned char *p = realloc(b->p, cap);
        if (p == NULL)
            die("out of memory");
        b->p = p;
        b->cap = cap;
    }
    return b->p + b->off + b->len;
}

static void bytes_drop(Bytes *b, size_t n)
{
    b->off += n;
    b->len -= n;
    if (b->len == 0)
        b->off = 0;
}

static void bytes_free(Bytes *b)
{
    free(b->p);
    *b = (Bytes){ 0 };
}

/* ---- output to the host --------------------------------------------------------------- */

static void out_frame(unsigned type, uint32_t stream, const void *payload, uint32_t length)
{
    unsigned char *p = bytes_room(&R.out, PH_FRAME_HEADER + (size_t)length);
    ph_frame_put_header(p, type, stream, length);
    if (length > 0)
        memcpy(p + PH_FRAME_HEADER, payload, length);
    R.out.len += PH_FRAME_HEADER + (size_t)length;
}

static void out_credit(uint32_t stream, uint32_t n)
{
    unsigned char p[4];
    ph_frame_put_u32(p, n);
    out_frame(PH_FRAME_CREDIT, stream, p, sizeof p);
}

static int out_has_room(void)
{
    return R.out.len < OUT_SOFT;
}

/* Write what stdout takes now (it is non-blocking). */
static void out_flush(void)
{
    while (R.out.len > 0) {
        ssize_t n = write(STDOUT_FILENO, R.out.p + R.out.off, R.out.len);
        if (n > 0) {
            bytes_drop(&R.out, (size_t)n);
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        } else {
            die("stdout: %s", n < 0 ? strerror(errno) : "closed");
        }
    }
}

/* ---- streams -------------------------------------------------------------------------- */

static Stream *stream_find(uint32_t id)
{
    size_t lo = 0, hi = R.nstreams;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (R.streams[mid]->id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < R.nstreams && R.streams[lo]->id == id && !R.streams[lo]->dead)
        return R.streams[lo];
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
    bytes_free(&s->in);
}

/* The socket failed: tell the host and drop the stream. */
static void stream_reset(Stream *s)
{
    out_frame(PH_FRAME_RESET, s->id, NULL, 0);
    stream_close(s, 1);
}

/* After a change: half-close the socket once the host's FIN is due, and forget the stream
 * once FIN went both ways. */
static void stream_settle(Stream *s)
{
    if (s->host_fin && s->in.len == 0 && !s->write_done) {
        shutdown(s->fd, SHUT_WR);
        s->write_done = 1;
    }
    if (s->write_done && s->read_done)
        stream_close(s, 0);
}

/* The socket is readable: up to credit bytes become one DATA frame. */
static void stream_read(Stream *s)
{
    size_t want = s->credit < PH_FRAME_MAX_PAYLOAD ? (size_t)s->credit : PH_FRAME_MAX_PAYLOAD;
    unsigned char *p = bytes_room(&R.out, PH_FRAME_HEADER + want);
    ssize_t n = recv(s->fd, p + PH_FRAME_HEADER, want, 0);
    if (n > 0) {
        ph_frame_put_header(p, PH_FRAME_DATA, s->id, (uint32_t)n);
        R.out.len += PH_FRAME_HEADER + (size_t)n;
        s->credit -= (uint64_t)n;
    } else if (n == 0) {
        s->read_done = 1;
        out_frame(PH_FRAME_FIN, s->id, NULL, 0);
        stream_settle(s);
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        stream_reset(s);
    }
}

/* The socket is writable: write the host's bytes and grant the host as many again. */
static void stream_write(Stream *s)
{
    ssize_t n = send(s->fd, s->in.p + s->in.off, s->in.len, MSG_NOSIGNAL);
    if (n > 0) {
        bytes_drop(&s->in, (size_t)n);
        if (s->in.len == 0)
            bytes_free(&s->in); /* an idle stream holds no buffer */
        if (!s->host_fin) {     /* after FIN the host sends no DATA: credit is moot */
            s->allowed += (uint32_t)n;
            out_credit(s->id, (uint32_t)n);
        }
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
        finish(0);
    if (f->type == PH_FRAME_HELLO || f->type == PH_FRAME_OPEN)
        protocol_error("%s from the host", name);
    unsigned long id = f->stream;
    if (id % 2 == 0 || id >= R.next_id)
        protocol_error("%s on stream %lu, which was never opened", name, id);
    Stream *s = stream_find(f->stream);
    if (s == NULL)
        return; /* forgotten here: the frame crossed our RESET or FIN on the wire */
    switch (f->type) {
    case PH_FRAME_DATA:
        if (s->host_fin)
            protocol_error("DATA after FIN on stream %lu", id);
        if (f->length > s->allowed)
            protocol_error("DATA of %lu bytes on stream %lu exceeds its credit of %lu",
                           (unsigned long)f->length, id, (unsigned long)s->allowed);
        s->allowed -= f->length;
        memcpy(bytes_room(&s->in, f->length), f->payload, f->length);
        s->in.len += f->length;
        break;
    case PH_FRAME_FIN:
        if (s->host_fin)
            protocol_error("a second FIN on stream %lu", id);
        s->host_fin = 1;
        stream_settle(s);
        break;
    case PH_FRAME_RESET:
        stream_close(s, 1);
        break;
    case PH_FRAME_CREDIT:
        s->credit += ph_frame_get_u32(f->payload);
        if (s->credit > UINT32_MAX)
            protocol_error("CREDIT takes stream %lu past 2^32-1 bytes", id);
        break;
    }
}

/* stdin is readable: read a chunk and act on every frame in it. Nothing here waits for
 * output room, so everything read is consumed at once. */
static void host_input(void)
{
    static unsigned char buf[STDIN_CHUNK];
    ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
    if (n < 0) {
        if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        die("stdin: %s", strerror(errno));
    }
    if (n == 0) {
        if (R.dec.have != 0)
            protocol_error("stdin ended inside a frame");
        finish(0);
    }
    size_t pos = 0;
    while (pos < (size_t)n) {
        PhFrame f;
        size_t used;
        int r = ph_frame_decode(&R.dec, buf + pos, (size_t)n - pos, &used, &f);
        pos += used;
        if (r < 0)
            protocol_error("%s", R.dec.error);
        if (r == 0)
            break;
        host_frame(&f);
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
    for (int i = 0; i < ACCEPT_BURST && out_has_room(); i++) {
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
            die("out of memory");
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        s->fd = fd;
        s->id = (uint32_t)R.next_id;
        R.next_id += 2;
        s->credit = PH_FRAME_WINDOW;
        s->allowed = PH_FRAME_WINDOW;
        R.streams[R.nstreams++] = s;
        out_frame(PH_FRAME_OPEN, s->id, NULL, 0);
    }
}

/* ---- setup and the loop --------------------------------------------------------------- */

static int parse_number(const char *s, unsigned long lo, unsigned long hi, unsigned long *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (*s < '0' || *s > '9' || *end != '\0' || errno != 0 || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "%s: ", R.prog);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nusage: %s [--port N] [--max-streams N]\n", R.prog);
    return 2;
}

/* Room for every stream's socket and ours, when the hard limit allows. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    rlim_t want = (rlim_t)R.max_streams + 16;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want)
        return;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
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
        die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(R.listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(R.listen_fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        die("bind 127.0.0.1:%lu: %s", port, strerror(errno));
    if (listen(R.listen_fd, SOMAXCONN) != 0)
        die("listen: %s", strerror(errno));
    socklen_t len = sizeof sa;
    if (getsockname(R.listen_fd, (struct sockaddr *)&sa, &len) != 0)
        die("getsockname: %s", strerror(errno));
    R.spare_fd = fcntl(R.listen_fd, F_DUPFD_CLOEXEC, 0);
    return ntohs(sa.sin_port);
}

static void loop(void)
{
    /* stdin, stdout, the listener, then one per stream, in the streams' order. */
    enum { IN, OUT, LISTEN, FIRST };
    struct pollfd *pfd = calloc(FIRST + R.max_streams, sizeof *pfd);
    if (pfd == NULL)
        die("out of memory");
    for (;;) {
        int room = out_has_room();
        pfd[IN] = (struct pollfd){ STDIN_FILENO, POLLIN, 0 };
        pfd[OUT] = (struct pollfd){ STDOUT_FILENO, POLLOUT, 0 };
        pfd[LISTEN] = (struct pollfd){ R.listen_fd, POLLIN, 0 };
        if (R.out.len == 0)
            pfd[OUT].fd = -1;
        if (!room)
            pfd[LISTEN].fd = -1;
        size_t n = R.nstreams;
        for (size_t i = 0; i < n; i++) {
            Stream *s = R.streams[i];
            short ev = 0;
            if (room && !s->read_done && s->credit > 0)
                ev |= POLLIN;
            if (room && s->in.len > 0)
                ev |= POLLOUT; /* a write grants credit: it needs output room too */
            /* No interest, no entry: poll would report an error or hangup on it forever. */
            pfd[FIRST + i] = (struct pollfd){ ev ? s->fd : -1, ev, 0 };
        }
        if (poll(pfd, FIRST + n, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll: %s", strerror(errno));
        }
        if (pfd[OUT].revents)
            out_flush();
        if (pfd[IN].revents)
            host_input();
        for (size_t i = 0; i < n; i++) {
            Stream *s = R.streams[i];
            short ev = pfd[FIRST + i].events, rev = pfd[FIRST + i].revents;
            if ((ev & POLLIN) && (rev & (POLLIN | POLLHUP | POLLERR)) && !s->dead && out_has_room())
                stream_read(s);
            if ((ev & POLLOUT) && (rev & (POLLOUT | POLLHUP | POLLERR)) && !s->dead &&
                s->in.len > 0 && out_has_room())
                stream_write(s);
        }
        streams_compact();
        if (pfd[LISTEN].revents)
            accept_connections();
        out_flush();
    }
}

int ph_relay_main(const char *prog, int argc, char **argv)
{
    R.prog = prog;
    unsigned long port = 0, max_streams = DEFAULT_MAX_STREAMS;
    for (int i = 1; i < argc; i++) {
        int is_port = strcmp(argv[i], "--port") == 0;
        if (!is_port && strcmp(argv[i], "--max-streams") != 0)
            return usage_error("unknown argument '%s'", argv[i]);
        if (i + 1 >= argc)
            return usage_error("%s needs a number", argv[i]);
        if (is_port ? parse_number(argv[i + 1], 0, 65535, &port)
                    : parse_number(argv[i + 1], 1, MAX_STREAMS_LIMIT, &max_streams))
            return usage_error(is_port ? "bad port '%s'" : "bad --max-streams '%s'", argv[i + 1]);
        i++;
    }
    R.max_streams = max_streams;
    R.streams = calloc(R.max_streams, sizeof *R.streams);
    if (R.streams == NULL)
        die("out of memory");
    signal(SIGPIPE, SIG_IGN); /* a closed stdout or socket is an error return, not a death */
    raise_fd_limit();
    int flags = fcntl(STDOUT_FILENO, F_GETFL);
    if (flags < 0 || fcntl(STDOUT_FILENO, F_SETFL, flags | O_NONBLOCK) != 0)
        die("stdout: %s", strerror(errno));
    R.stdout_flags = flags;

    uint16_t bound = listen_on(port);
    unsigned char hello[PH_FRAME_HELLO_LEN];
    memcpy(hello, PH_FRAME_MAGIC, PH_FRAME_MAGIC_LEN);
    hello[8] = (unsigned char)(bound >> 8);
    hello[9] = (unsigned char)bound;
    out_frame(PH_FRAME_HELLO, 0, hello, sizeof hello);
    out_flush();
    loop();
    return 0;
}
