/* mod_ssh_session.c - host.core.ssh: pooled libssh2 sessions driven by the libuv loop.
 *
 * One non-blocking libssh2 session per (host, port, user, key, host key policy, known_hosts):
 * a uv_poll on its socket, and state machines advanced on readiness (LIBSSH2_ERROR_EAGAIN and
 * libssh2_session_block_directions). Every exec, upload or fingerprint is a job with its own
 * channel; many jobs share one session. No Lua runs here: finished jobs and output are handed
 * to the dispatcher (mod_ssh.c), which runs callbacks and wakes tasks after libssh2 returned.
 *
 * libssh2 1.10 rules this file lives by:
 *  - A packet only partly written to the socket must be finished by the very same call before
 *    anything else is sent on the session (other senders get LIBSSH2_ERROR_BAD_USE). The job
 *    whose call blocked on OUTBOUND becomes the session's send_owner and is stepped alone until
 *    that call completes; canceled or timed-out jobs finish such a call before tearing down.
 *  - Opening a channel keeps its state in the session, not the channel: one open at a time
 *    per session (the opener). A request that waits for CHANNEL_SUCCESS/FAILURE (setenv,
 *    exec) fails with -1 when it reads another channel's reply: one such request in flight
 *    per session (the requester), and it is never abandoned half way.
 *  - A request unanswered for 60 s fails with LIBSSH2_ERROR_TIMEOUT (LIBSSH2_READ_TIMEOUT; not
 *    settable before 1.11), so requests are stepped before bulk transfers, and writers take
 *    turns.
 *  - libssh2_scp_send64 drops scp's error text and, on its error path, spins on
 *    libssh2_channel_free until the server answers: uploads speak scp's protocol themselves.
 *  - There is no channel "signal" request (libssh2_channel_signal_ex is 1.11): a timed-out or
 *    canceled command gets EOF and CLOSE; OpenSSH then closes the command's pipes, so it dies
 *    of SIGPIPE at its next write. A silent command runs on until it ends by itself.
 *  - channel_close returns after reading any one packet; a keepalive with want_reply provokes
 *    one when the server is quiet, so a teardown never waits for the command to end. */
#include "ph_ssh.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_MAX_CHANNELS 10 /* OpenSSH's MaxSessions default */
#define KEEPALIVE_MISSES     3
#define KEEPALIVE_SPACING    2 /* seconds: libssh2 1.10 makes an interval of 1 into 2 */

unsigned long ph_ssh_connects;

static SshSession *sessions;
static uv_timer_t *kick_timer;

static void session_drive(SshSession *s);
static void session_destroy(SshSession *s);
static void update_poll(SshSession *s);
static void arm_session_timer(SshSession *s);
static void enter(SshSession *s);
static void leave(SshSession *s);

static void after_event(void)
{
    ph_ssh_dispatch_run();
}

/* ---- kicks: drive a session from the loop soon (never from inside a libssh2 frame) ------- */

static void on_kick(uv_timer_t *t)
{
    for (int round = 0; round < 4; round++) {
        int any = 0;
        SshSession *s = sessions;
        while (s != NULL) {
            SshSession *next = s->next;
            if (s->again && !s->busy) {
                s->again = 0;
                any = 1;
                session_drive(s); /* may destroy s */
            }
            s = next;
        }
        if (!any)
            break;
    }
    after_event();
    for (SshSession *s = sessions; s != NULL; s = s->next)
        if (s->again)
            ph_timer_start(kick_timer, on_kick, 0); /* more work: after I/O had a turn */
}

static void kick(SshSession *s)
{
    s->again = 1;
    if (kick_timer == NULL && (kick_timer = ph_timer_new(NULL)) == NULL)
        return;
    ph_timer_start(kick_timer, on_kick, 0);
}

void ph_ssh_kick(SshSession *s)
{
    kick(s);
}

/* ---- jobs on a session ------------------------------------------------------------------- */

static void attach(SshSession *s, SshJob *j)
{
    j->sess = s;
    j->state = J_QUEUED;
    j->next = NULL;
    j->prev = s->tail;
    if (s->tail != NULL)
        s->tail->next = j;
    else
        s->head = j;
    s->tail = j;
    s->last_used = ph_now();
    if (s->poll != NULL)
        uv_ref((uv_handle_t *)s->poll);
    if (s->timer != NULL)
        uv_ref((uv_handle_t *)s->timer);
}

void ph_ssh_job_detach(SshJob *j)
{
    SshSession *s = j->sess;
    if (s == NULL)
        return;
    if (j->prev != NULL)
        j->prev->next = j->next;
    else
        s->head = j->next;
    if (j->next != NULL)
        j->next->prev = j->prev;
    else
        s->tail = j->prev;
    j->next = j->prev = NULL;
    if (j->slot) {
        j->slot = 0;
        s->channels--;
        s->open_wait = 0; /* a slot freed: a refused open may try again */
    }
    if (s->send_owner == j)
        s->send_owner = NULL;
    if (s->opener == j)
        s->opener = NULL;
    if (s->requester == j)
        s->requester = NULL;
    if (j->kind == JOB_PUMP)
        s->pumping = 0;
    j->sess = NULL;
    s->last_used = ph_now();
    if (s->head == NULL) { /* idle: do not keep the loop alive for it */
        if (s->poll != NULL)
            uv_unref((uv_handle_t *)s->poll);
        if (s->timer != NULL)
            uv_unref((uv_handle_t *)s->timer);
        if (s->state == S_READY)
            arm_session_timer(s);
    }
}

/* ---- connecting --------------------------------------------------------------------------- */

static void on_poll(uv_poll_t *h, int status, int events);
static void connect_next(SshSession *s);

static void close_socket(SshSession *s)
{
    if (s->poll != NULL) {
        uv_close((uv_handle_t *)s->poll, ph_handle_free); /* stops it: the fd may close now */
        s->poll = NULL;
        s->poll_events = 0;
    }
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
}

static void start_handshake(SshSession *s)
{
    s->ssh = libssh2_session_init_ex(NULL, NULL, NULL, s);
    if (s->ssh == NULL) {
        ph_ssh_session_fail(s, "internal", ph_printf_alloc("ssh: out of memory"));
        return;
    }
    libssh2_session_set_blocking(s->ssh, 0);
    ph_ssh_auth_init(s);
    if (!s->fp_only)
        ph_ssh_hostkey_prefs(s->ssh, &s->t);
    s->state = S_HANDSHAKE;
}

/* What went wrong on the socket: libuv reports POLLERR as UV_EBADF, SO_ERROR says why. */
static int socket_error(SshSession *s, int status)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
    if (err == 0 && status < 0)
        err = -status;
    return err;
}

static void connect_done(SshSession *s, int status)
{
    int err = socket_error(s, status);
    if (err != 0) {
        s->connect_errno = err;
        close_socket(s);
        connect_next(s);
        return;
    }
    ph_ssh_connects++;
    start_handshake(s);
}

static void connect_next(SshSession *s)
{
    while (s->ai_next != NULL) {
        struct addrinfo *ai = s->ai_next;
        s->ai_next = ai->ai_next;
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            s->connect_errno = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* small packets, no wait */
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
            s->connect_errno = errno;
            close(fd);
            continue;
        }
        s->fd = fd;
        s->poll = malloc(sizeof *s->poll);
        if (s->poll == NULL || uv_poll_init_socket(ph_loop(), s->poll, fd) != 0) {
            free(s->poll);
            s->poll = NULL;
            close(fd);
            s->fd = -1;
            ph_ssh_session_fail(s, "internal", ph_printf_alloc("ssh: cannot poll a socket"));
            return;
        }
        s->poll->data = s;
        if (s->head == NULL)
            uv_unref((uv_handle_t *)s->poll);
        s->state = S_CONNECT;
        update_poll(s);
        return;
    }
    ph_ssh_session_fail(
        s, "connect",
        ph_printf_alloc("ssh: connect to %s:%d: %s", s->t.host, s->t.port,
                        strerror(s->connect_errno ? s->connect_errno : EHOSTUNREACH)));
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    SshSession *s = req->data;
    free(req);
    if (s == NULL) { /* the session went away meanwhile */
        if (res != NULL)
            uv_freeaddrinfo(res);
        return;
    }
    s->gai = NULL;
    enter(s);
    if (status != 0) {
        ph_ssh_session_fail(
            s, "dns",
            ph_printf_alloc("ssh: cannot resolve %s: %s", s->t.host, uv_strerror(status)));
    } else {
        s->ai = s->ai_next = res;
        connect_next(s);
    }
    leave(s);
    after_event();
}

/* ---- the session state machine ---------------------------------------------------------- */

static void finish_fingerprints(SshSession *s)
{
    size_t len = 0;
    int type = 0;
    const char *key = libssh2_session_hostkey(s->ssh, &len, &type);
    for (SshJob *j = s->head; j != NULL; j = j->next) {
        if (key == NULL)
            ph_ssh_job_fail(j, "protocol", "ssh: %s:%d sent no host key", s->t.host, s->t.port);
        else
            ph_ssh_fingerprint(key, len, j->fingerprint);
        ph_ssh_job_finish(j);
    }
    s->doomed = 1; /* a one-off session: disconnect */
}

static void session_advance(SshSession *s)
{
    int rc;
    switch (s->state) {
    case S_HANDSHAKE:
        rc = libssh2_session_handshake(s->ssh, s->fd);
        if (rc == LIBSSH2_ERROR_EAGAIN)
            return;
        if (rc != 0) {
            int lost = rc == LIBSSH2_ERROR_SOCKET_DISCONNECT || rc == LIBSSH2_ERROR_SOCKET_RECV ||
                       rc == LIBSSH2_ERROR_SOCKET_SEND;
            ph_ssh_session_fail(s, lost ? "closed" : "protocol",
                                ph_printf_alloc("ssh: handshake with %s:%d failed: %s", s->t.host,
                                                s->t.port, ph_ssh_last_error(s)));
            return;
        }
        if (s->fp_only) {
            finish_fingerprints(s);
            return;
        }
        {
            const char *code = NULL;
            char *msg = NULL;
            if (ph_ssh_hostkey_verify(s, &code, &msg) != 0) {
                ph_ssh_session_fail(s, code, msg);
                return;
            }
        }
        s->state = S_AUTH;
        /* fall through */
    case S_AUTH:
        rc = ph_ssh_auth_step(s);
        if (rc != 0) /* would block, or the session was failed */
            return;
        ph_ssh_auth_done(s);
        s->state = S_READY;
        s->was_ready = 1;
        s->last_rx = s->last_used = ph_now();
        arm_session_timer(s);
        /* fall through */
    case S_READY:
        ph_ssh_step_jobs(s);
        return;
    default:
        return;
    }
}

static void update_poll(SshSession *s)
{
    if (s->poll == NULL)
        return;
    int ev = 0;
    if (s->state == S_CONNECT) {
        ev = UV_WRITABLE;
    } else if (s->state >= S_HANDSHAKE && s->state <= S_READY) {
        ev = UV_READABLE; /* always: a dead peer (EOF, reset) is noticed at once */
        if (s->ssh != NULL && ph_ssh_blocked_out(s))
            ev |= UV_WRITABLE;
    }
    if (ev == s->poll_events)
        return;
    s->poll_events = ev;
    if (ev == 0)
        uv_poll_stop(s->poll);
    else
        uv_poll_start(s->poll, ev, on_poll);
}

/* Every loop entry point works on a session between enter() and leave(): a session that
 * fails meanwhile is only marked (doomed), and destroyed in leave(), when nothing of ours
 * is on the stack any more. */
static void enter(SshSession *s)
{
    s->busy = 1;
}

static void leave(SshSession *s)
{
    s->busy = 0;
    if (s->doomed) {
        session_destroy(s);
        return;
    }
    update_poll(s);
    if (s->again)
        kick(s);
}

static void session_drive(SshSession *s)
{
    if (s->busy) {
        s->again = 1;
        return;
    }
    enter(s);
    if (!s->doomed && s->state >= S_HANDSHAKE && s->state <= S_READY)
        session_advance(s);
    leave(s);
}

static int only_pumps(SshSession *s)
{
    for (SshJob *j = s->head; j != NULL; j = j->next)
        if (j->kind != JOB_PUMP)
            return 0;
    return 1;
}

/* An idle pooled session became readable: EOF means the server went away; anything else
 * (a server keepalive, a rekey) needs libssh2 to read it, which only channel calls do, so a
 * throwaway channel is opened and freed to pump it. */
static void idle_readable(SshSession *s)
{
    char c;
    ssize_t n = recv(s->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        ph_ssh_session_fail(
            s, "closed",
            ph_printf_alloc("ssh: %s:%d closed the idle connection", s->t.host, s->t.port));
        return;
    }
    if (n > 0 && !s->pumping) {
        SshJob *p = calloc(1, sizeof *p);
        if (p == NULL)
            return;
        p->kind = JOB_PUMP;
        p->cb[0] = p->cb[1] = LUA_NOREF;
        s->pumping = 1;
        attach(s, p);
        uv_unref((uv_handle_t *)s->poll);
        if (s->timer != NULL)
            uv_unref((uv_handle_t *)s->timer);
    }
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    SshSession *s = h->data;
    enter(s);
    if (s->state == S_CONNECT) {
        connect_done(s, status);
    } else if (status < 0) {
        ph_ssh_session_fail(s, "closed",
                            ph_printf_alloc("ssh: connection to %s:%d failed: %s", s->t.host,
                                            s->t.port, strerror(socket_error(s, status))));
    } else if (events & UV_READABLE) {
        s->last_rx = ph_now();
        s->keepalive_wait = 0;
        if (s->state == S_READY && (s->head == NULL || only_pumps(s)))
            idle_readable(s);
    }
    if (!s->doomed && s->state >= S_HANDSHAKE && s->state <= S_READY)
        session_advance(s);
    leave(s);
    after_event();
}

/* ---- timers: connect deadline, keepalive, idle close ------------------------------------ */

int ph_ssh_keepalive(SshSession *s, int want_reply)
{
    time_t now = time(NULL);
    if (s->keepalive_sent != 0 && now < s->keepalive_sent + KEEPALIVE_SPACING)
        return 0; /* libssh2 would not send it */
    libssh2_keepalive_config(s->ssh, want_reply, 1);
    int next = 0;
    if (libssh2_keepalive_send(s->ssh, &next) != 0)
        return 0;
    s->keepalive_sent = now;
    return 1;
}

static void on_retry_timer(uv_timer_t *tm)
{
    SshSession *s = tm->data;
    session_drive(s);
    after_event();
}

void ph_ssh_open_backoff(SshSession *s, double seconds)
{
    s->open_after = ph_now() + seconds;
    ph_ssh_redrive(s, seconds);
}

void ph_ssh_redrive(SshSession *s, double seconds)
{
    if (s->retry_timer != NULL && uv_is_active((uv_handle_t *)s->retry_timer) &&
        uv_timer_get_due_in(s->retry_timer) <= ph_ms(seconds))
        return; /* an earlier drive is already due */
    if (s->retry_timer == NULL && (s->retry_timer = ph_timer_new(s)) == NULL)
        return;
    ph_timer_start(s->retry_timer, on_retry_timer, seconds);
}

static void on_session_timer(uv_timer_t *tm)
{
    SshSession *s = tm->data;
    double now = ph_now();
    enter(s);
    if (s->state < S_READY) {
        ph_ssh_session_fail(s, "timeout",
                            ph_printf_alloc("ssh: connecting to %s:%d timed out after %gs",
                                            s->t.host, s->t.port, s->t.connect_timeout));
    } else if (s->state == S_READY && s->head == NULL && now - s->last_used >= s->t.idle_timeout) {
        s->doomed = 1; /* idle long enough: close quietly */
    } else if (s->state == S_READY) {
        if (s->t.keepalive > 0 && now - s->last_rx >= s->t.keepalive) {
            int active = s->channels > 0;
            if (active && s->keepalive_wait >= KEEPALIVE_MISSES) {
                ph_ssh_session_fail(s, "closed",
                                    ph_printf_alloc("ssh: %s:%d stopped answering (%d keepalives "
                                                    "without a reply)",
                                                    s->t.host, s->t.port, KEEPALIVE_MISSES));
            } else if (s->send_owner == NULL && !ph_ssh_blocked_out(s)) {
                /* want_reply only while channels run: their reads consume the reply */
                if (ph_ssh_keepalive(s, active) && active)
                    s->keepalive_wait++; /* only one that went out can go unanswered */
            }
        }
        if (!s->doomed) {
            arm_session_timer(s);
            session_advance(s);
        }
    }
    leave(s);
    after_event();
}

static void arm_session_timer(SshSession *s)
{
    if (s->timer == NULL)
        return;
    double wait;
    if (s->state < S_READY) {
        wait = s->connect_deadline - ph_now();
    } else {
        wait = 3600;
        if (s->t.keepalive > 0)
            wait = s->t.keepalive;
        if (s->head == NULL) {
            double idle = s->t.idle_timeout - (ph_now() - s->last_used);
            if (idle < wait)
                wait = idle;
        }
    }
    if (wait < 0.001)
        wait = 0.001;
    ph_timer_start(s->timer, on_session_timer, wait);
}

/* ---- life and death of sessions ---------------------------------------------------------- */

static SshSession *session_new(const SshTarget *t, int fp_only)
{
    SshSession *s = calloc(1, sizeof *s);
    if (s == NULL || ph_ssh_target_copy(&s->t, t) != 0) {
        free(s);
        return NULL;
    }
    s->fd = -1;
    s->fp_only = fp_only;
    s->pooled = !fp_only;
    s->max_channels = DEFAULT_MAX_CHANNELS;
    s->state = S_RESOLVE;
    s->connect_deadline = ph_now() + t->connect_timeout;
    s->gai = malloc(sizeof *s->gai);
    if (s->gai == NULL || (s->timer = ph_timer_new(s)) == NULL) {
        free(s->gai);
        ph_ssh_target_free(&s->t);
        free(s);
        return NULL;
    }
    arm_session_timer(s);
    s->next = sessions;
    if (sessions != NULL)
        sessions->prev = s;
    sessions = s;
    char port[16];
    snprintf(port, sizeof port, "%d", t->port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    s->gai->data = s;
    if (uv_getaddrinfo(ph_loop(), s->gai, on_resolved, s->t.host, port, &hints) != 0) {
        free(s->gai);
        s->gai = NULL;
        s->state = S_DEAD;
        session_destroy(s);
        return NULL;
    }
    return s;
}

/* Whether a job that lost its session may go again on a fresh one: the session had worked
 * (a pooled connection that died), the command never started, and it was not retried yet. */
static int may_retry(SshSession *s, SshJob *j, const char *code)
{
    return s->was_ready && !j->cmd_started && !j->retried && !j->finished && j->kind != JOB_PUMP &&
           strcmp(code, "closed") == 0 && j->op.task != NULL;
}

static int closing_all; /* ssh.close_all: nothing is retried */

/* Every job leaves the session. Jobs that never started on a session that had worked are
 * retried once on a fresh one; the rest fail with code and msg. */
static void fail_jobs(SshSession *s, const char *code, const char *msg)
{
    SshJob *j;
    while ((j = s->head) != NULL) {
        int retry = !closing_all && may_retry(s, j, code);
        j->ch = NULL; /* libssh2_session_free frees the channels */
        ph_ssh_job_detach(j);
        if (j->kind == JOB_PUMP) { /* freed by the dispatcher: a step may still hold it */
            j->state = J_DONE;
            j->freed_pending = 1;
            ph_ssh_dispatch_add(j);
            continue;
        }
        if (retry) {
            j->retried = 1;
            j->state = J_QUEUED;
            if (ph_ssh_job_start(j) == 0)
                continue;
            ph_ssh_job_fail(j, "internal", "ssh: out of memory starting a session");
        }
        if (!j->finished) {
            ph_ssh_job_fail(j, code, "%s", msg != NULL ? msg : "ssh: out of memory");
            ph_ssh_job_finish(j);
        }
        j->state = J_DONE;
        j->freed_pending = 1;
        ph_ssh_dispatch_add(j);
    }
}

/* The session is broken (or closed on purpose): out of the pool, its jobs failed or retried;
 * destroyed now, or by leave() when a loop callback is working on it. Takes msg. */
void ph_ssh_session_fail(SshSession *s, const char *code, char *msg)
{
    if (s->state == S_DEAD) {
        free(msg);
        return;
    }
    s->state = S_DEAD;
    s->pooled = 0;
    s->doomed = 1;
    fail_jobs(s, code, msg);
    free(msg);
    if (!s->busy)
        session_destroy(s);
}

static void session_destroy(SshSession *s)
{
    if (s->busy) {
        s->doomed = 1;
        return;
    }
    if (s->head != NULL) {
        int was = s->state;
        s->state = S_DEAD;
        fail_jobs(s, "closed", "ssh: connection closed");
        s->state = was;
    }
    if (s->prev != NULL)
        s->prev->next = s->next;
    else if (sessions == s)
        sessions = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    s->next = s->prev = NULL;
    if (s->gai != NULL) { /* its callback frees it */
        s->gai->data = NULL;
        uv_cancel((uv_req_t *)s->gai);
        s->gai = NULL;
    }
    if (s->ai != NULL) {
        uv_freeaddrinfo(s->ai);
        s->ai = s->ai_next = NULL;
    }
    ph_ssh_auth_done(s); /* the agent first: it lives in the session's allocator */
    if (s->ssh != NULL) {
        if (s->state == S_READY)
            libssh2_session_disconnect(s->ssh, "bye"); /* best effort, never waits */
        if (s->fd >= 0)
            shutdown(s->fd, SHUT_RDWR); /* libssh2 then fails at once instead of EAGAIN */
        for (int i = 0; i < 16 && libssh2_session_free(s->ssh) == LIBSSH2_ERROR_EAGAIN; i++)
            ;
        s->ssh = NULL;
    }
    close_socket(s);
    ph_timer_free(&s->timer);
    ph_timer_free(&s->retry_timer);
    ph_ssh_target_free(&s->t);
    free(s);
}

/* ---- entry points --------------------------------------------------------------------------- */

/* Seconds from j->started to the job's deadline, or < 0 for none. A duplex has no deadline of
 * its own unless asked (timeout < 0), but opening it is bounded: open_timeout until opened. */
static double job_deadline(SshJob *j)
{
    if (j->kind != JOB_DUPLEX || j->opened)
        return j->timeout;
    if (j->timeout >= 0 && j->timeout < j->open_timeout)
        return j->timeout;
    return j->open_timeout;
}

static void arm_job_timer(SshJob *j);

static void on_job_timer(uv_timer_t *tm)
{
    SshJob *j = tm->data;
    SshSession *s = j->sess;
    const char *host = j->t.host;
    if (j->kind == JOB_DUPLEX && j->opened) {
        j->timed_out = 1; /* wait() gets {timed_out = true}; the channel is torn down */
    } else if (j->kind == JOB_DUPLEX) {
        ph_ssh_job_fail(j, "timeout", "ssh: %s:%d: opening a channel timed out after %gs%s", host,
                        j->t.port, job_deadline(j),
                        s != NULL && s->state < S_READY ? " while connecting" : "");
    } else if (j->kind == JOB_EXEC && j->cmd_started) {
        j->timed_out = 1; /* a result with what arrived so far; the channel is torn down */
    } else if (j->cmd_started) {
        ph_ssh_job_fail(j, "timeout", "ssh: upload to %s:%d:%s timed out after %gs", host,
                        j->t.port, j->path, j->timeout);
    } else {
        ph_ssh_job_fail(j, "timeout", "ssh: %s:%d: timed out after %gs%s", host, j->t.port,
                        j->timeout, s != NULL && s->state < S_READY ? " while connecting" : "");
    }
    ph_ssh_job_finish(j);
    if (s != NULL) {
        if (s->state < S_READY) {
            ph_ssh_job_detach(j); /* the connection goes on for the others, or times out itself */
            j->state = J_DONE;
            j->freed_pending = 1;
            ph_ssh_dispatch_add(j);
        } else {
            kick(s);
        }
    }
    after_event();
}

static void arm_job_timer(SshJob *j)
{
    double deadline = job_deadline(j);
    if (deadline < 0) {
        ph_timer_free(&j->timer);
        return;
    }
    if (j->timer == NULL && (j->timer = ph_timer_new(j)) == NULL)
        return;
    double left = deadline - (ph_now() - j->started);
    ph_timer_start(j->timer, on_job_timer, left < 0.001 ? 0.001 : left);
}

void ph_ssh_job_opened(SshJob *j)
{
    j->opened = 1;
    ph_ssh_target_free_ids(&j->t); /* never retried from here on: the keys can go */
    if (!j->finished)
        arm_job_timer(j);
}

int ph_ssh_job_start(SshJob *j)
{
    SshSession *s = NULL;
    if (j->kind != JOB_FINGERPRINT)
        for (s = sessions; s != NULL; s = s->next)
            if (s->pooled && s->state != S_DEAD && memcmp(s->t.id, j->t.id, sizeof j->t.id) == 0)
                break;
    if (s == NULL)
        s = session_new(&j->t, j->kind == JOB_FINGERPRINT);
    if (s == NULL)
        return -1;
    if (j->timer == NULL && !j->finished)
        arm_job_timer(j);
    attach(s, j);
    if (s->state == S_READY)
        kick(s);
    return 0;
}

void ph_ssh_job_cancel(ph_op *op)
{
    SshJob *j = (SshJob *)op;
    ph_task *t = op->task;
    lua_State *co = ph_task_thread(t);
    op->task = NULL;
    if (!j->finished) {
        ph_ssh_job_fail(j, "canceled", "ssh: %s:%d: canceled", j->t.host, j->t.port);
        ph_ssh_job_finish(j);
    }
    ph_task_wake(t, ph_fail(co, "canceled", "ssh: %s:%d: canceled", j->t.host, j->t.port));
    SshSession *s = j->sess;
    if (s != NULL) {
        if (s->state < S_READY) {
            ph_ssh_job_detach(j);
            j->state = J_DONE;
            j->freed_pending = 1;
            ph_ssh_dispatch_add(j);
        } else {
            kick(s);
        }
    }
}

void ph_ssh_close_all(void)
{
    closing_all = 1;
    SshSession *s = sessions;
    while (s != NULL) {
        SshSession *next = s->next;
        ph_ssh_session_fail(
            s, "closed", ph_printf_alloc("ssh: connection to %s:%d closed", s->t.host, s->t.port));
        s = next;
    }
    closing_all = 0;
}

void ph_ssh_stats(int *nsessions, int *nchannels, int *queued)
{
    *nsessions = *nchannels = *queued = 0;
    for (SshSession *s = sessions; s != NULL; s = s->next) {
        if (s->state == S_DEAD)
            continue;
        (*nsessions)++;
        *nchannels += s->channels;
        for (SshJob *j = s->head; j != NULL; j = j->next)
            if (j->state == J_QUEUED)
                (*queued)++;
    }
}
