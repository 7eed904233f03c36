/* mod_ssh_channel.c - host.core.ssh: the per-job state machines on a pooled session: open a
 * channel, set the environment, exec, then stream stdin out and stdout/stderr in until the
 * exit status; uploads speak scp's sink protocol on such a channel. A duplex (ssh.open) is a
 * command whose stdin comes from a queue of writes and whose output goes to its callbacks,
 * read only while the dispatcher keeps up (PH_SSH_HIGH_WATER) and its consumer did not pause
 * it (Channel:pause_output, io_pump). Each step runs only as far as libssh2 goes without
 * blocking (LIBSSH2_ERROR_EAGAIN); mod_ssh_session.c calls ph_ssh_step_jobs whenever the
 * session's socket is ready. See that file for the libssh2 1.10 rules these steps obey
 * (send_owner, one opener, no signals). */
#include "ph_ssh.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define READ_CHUNK        (64 * 1024)
#define WRITE_CHUNK       (32 * 1024)
#define MAX_PASSES        8
#define MAX_OPEN_REFUSALS 25 /* back-offs of 20 ms, 40 ms ...: about 6 s in all */

static char rbuf[READ_CHUNK];

/* The calls of the I/O phase (SshJob.pending_op). */
enum { OP_NONE, OP_READ_OUT, OP_READ_ERR, OP_WRITE, OP_EOF, OP_CLOSED, OP_PUMP };

static int job_abort_pending(SshJob *j);

/* The job's outcome is final: hand it to the dispatcher (which answers its task). */
void ph_ssh_job_finish(SshJob *j)
{
    if (j->finished)
        return;
    j->finished = 1;
    ph_timer_free(&j->timer);
    if (j->kind != JOB_PUMP) /* a pump has nobody to answer */
        ph_ssh_dispatch_add(j);
}

/* The channel is gone (or never existed): leave the session; free once answered. Never freed
 * here, pumps included: the callers up the stack (step_job, ph_ssh_step_jobs) still hold j. */
void ph_ssh_job_release(SshJob *j)
{
    j->state = J_DONE;
    j->ch = NULL;
    ph_ssh_job_detach(j);
    j->freed_pending = 1;
    ph_ssh_dispatch_add(j); /* frees it once its task was answered */
}

int ph_ssh_blocked_out(SshSession *s)
{
    return (libssh2_session_block_directions(s->ssh) & LIBSSH2_SESSION_BLOCK_OUTBOUND) != 0;
}

/* A call returned EAGAIN: when it left a packet half written, only this job may send next. */
static int would_block(SshSession *s, SshJob *j)
{
    if (ph_ssh_blocked_out(s))
        s->send_owner = j;
    return 0;
}

int ph_ssh_is_session_error(int rc)
{
    switch (rc) {
    case LIBSSH2_ERROR_SOCKET_NONE:
    case LIBSSH2_ERROR_BANNER_RECV:
    case LIBSSH2_ERROR_BANNER_SEND:
    case LIBSSH2_ERROR_INVALID_MAC:
    case LIBSSH2_ERROR_KEX_FAILURE:
    case LIBSSH2_ERROR_SOCKET_SEND:
    case LIBSSH2_ERROR_KEY_EXCHANGE_FAILURE:
    case LIBSSH2_ERROR_TIMEOUT:
    case LIBSSH2_ERROR_HOSTKEY_INIT:
    case LIBSSH2_ERROR_HOSTKEY_SIGN:
    case LIBSSH2_ERROR_DECRYPT:
    case LIBSSH2_ERROR_SOCKET_DISCONNECT:
    case LIBSSH2_ERROR_PROTO:
    case LIBSSH2_ERROR_SOCKET_TIMEOUT:
    case LIBSSH2_ERROR_SOCKET_RECV:
    case LIBSSH2_ERROR_BAD_USE:
    case LIBSSH2_ERROR_ENCRYPT:
    case LIBSSH2_ERROR_ALLOC:
        return 1;
    default:
        return 0;
    }
}

/* libssh2's last message and its error number (in a static buffer: use it at once). */
const char *ph_ssh_last_error(SshSession *s)
{
    static char text[512];
    char *m = NULL;
    int rc = libssh2_session_last_error(s->ssh, &m, NULL, 0);
    snprintf(text, sizeof text, "%s (libssh2 error %d)",
             m != NULL && *m != '\0' ? m : "unknown error", rc);
    return text;
}

char *ph_ssh_lost_message(SshSession *s, const char *what)
{
    return ph_printf_alloc("ssh: connection to %s:%d lost while %s: %s", s->t.host, s->t.port, what,
                           ph_ssh_last_error(s));
}

/* A libssh2 call on the job's channel failed with rc (not EAGAIN). */
static int job_error(SshSession *s, SshJob *j, int rc, const char *code, const char *what)
{
    if (ph_ssh_is_session_error(rc)) {
        ph_ssh_session_fail(s, "closed", ph_ssh_lost_message(s, what));
        return 1;
    }
    ph_ssh_job_fail(j, code, "ssh: %s:%d: %s failed: %s", s->t.host, s->t.port, what,
                    ph_ssh_last_error(s));
    if (j->ch != NULL) {
        j->state = J_FREE;
    } else {
        ph_ssh_job_finish(j);
        ph_ssh_job_release(j);
    }
    return 1;
}

/* ---- output ------------------------------------------------------------------------------ */

/* A duplex keeps output only until the dispatcher hands it to the callback; without one, or
 * once closing, the bytes are dropped (read all the same, so the window stays open). */
static void keep_duplex_output(SshJob *j, int which, const char *p, size_t n)
{
    if (j->finished || j->closing || !j->has_cb[which])
        return;
    if (ph_buf_append(&j->out[which], p, n) != 0) {
        ph_ssh_job_fail(j, "internal", "ssh: %s:%d: out of memory for the output", j->t.host,
                        j->t.port);
        ph_ssh_job_finish(j); /* the channel is torn down: never a silent gap in a stream */
        return;
    }
    ph_ssh_dispatch_add(j);
}

static void keep_output(SshJob *j, int which, const char *p, size_t n)
{
    if (j->kind == JOB_DUPLEX) {
        keep_duplex_output(j, which, p, n);
        return;
    }
    if (j->finished)
        return; /* answered already (timeout, cancel): nobody will read it */
    PhBuf *b = &j->out[which];
    size_t room = b->len < j->max_output ? j->max_output - b->len : 0;
    if (n > room) {
        j->truncated = 1; /* the rest is dropped; the command keeps running */
        n = room;
    }
    if (n == 0)
        return;
    if (ph_buf_append(b, p, n) != 0) {
        j->truncated = 1;
        return;
    }
    if (j->cb[which] != LUA_NOREF)
        ph_ssh_dispatch_add(j);
}

/* ---- the exec and upload state machines ------------------------------------------------ */

static void exit_status(SshJob *j)
{
    char *sig = NULL;
    size_t len = 0;
    libssh2_channel_get_exit_signal(j->ch, &sig, &len, NULL, NULL, NULL, NULL);
    if (sig != NULL && len > 0) {
        snprintf(j->exit_signal, sizeof j->exit_signal, "%.*s", (int)len, sig);
    } else {
        j->exit_code = libssh2_channel_get_exit_status(j->ch);
        j->has_exit = 1;
    }
    if (sig != NULL)
        libssh2_free(j->sess->ssh, sig);
}

/* What the job writes next: stdin for a command; scp's header, then the bytes, for an upload.
 * After a write returned EAGAIN the same call must come again: the source stays put until
 * the write completes. */
static int write_source(SshJob *j, const char **p, size_t *len, size_t **off)
{
    if (j->kind == JOB_DUPLEX) {
        SshWrite *w = j->wq; /* the head, until every byte of it went */
        if (w == NULL)
            return 0;
        *p = w->p, *len = w->len, *off = &w->off;
        return 1;
    }
    if (j->kind == JOB_UPLOAD && j->scp_stage == 1) {
        *p = j->hdr, *len = j->hdr_len, *off = &j->hdr_off;
        return 1;
    }
    if (j->in == NULL || (j->kind == JOB_UPLOAD && j->scp_stage != 3))
        return 0;
    *p = j->in, *len = j->in_len, *off = &j->in_off;
    return 1;
}

int ph_ssh_write_started(SshJob *j, SshWrite *w)
{
    return w == j->wq && (w->off > 0 || j->pending_op == OP_WRITE);
}

/* The head write is done (code NULL: every byte went): to the dispatcher, which answers it. */
static void duplex_write_done(SshJob *j, const char *code)
{
    SshWrite *w = j->wq, **tail = &j->wdone;
    j->wq = w->next;
    w->next = NULL;
    w->code = code;
    while (*tail != NULL)
        tail = &(*tail)->next;
    *tail = w;
    ph_ssh_dispatch_add(j);
}

static int write_pending(SshJob *j)
{
    const char *p;
    size_t len, *off;
    return write_source(j, &p, &len, &off) && *off < len;
}

/* The io_* calls of the I/O phase return 1 when they moved something, 0 when nothing moved
 * (EAGAIN included), -1 when the job failed and must stop now. */

/* Set while redo_pending repeats the call that left a packet half written: that call must
 * come again as it was (a read that was widening the window), paused output or not. */
static int redoing;

/* A duplex whose output its consumer paused (Channel:pause_output): take what arrives off the
 * socket into libssh2's queue without consuming the channel's data. libssh2_channel_read would
 * widen the window again; wait_eof only reads, so the window fills and the server stalls the
 * command. Not reading at all would leave the socket readable with nobody to read it: the
 * poll would fire again and again. 1 once the remote EOF came: nothing more can arrive, so
 * what libssh2 holds may be read into the buffer and the channel may end (its end waits for
 * resume_output in dispatch_duplex); else 0, or -1 when the job failed. */
static int io_pump(SshSession *s, SshJob *j)
{
    int n = libssh2_channel_wait_eof(j->ch);
    if (n == 0)
        return 1;
    j->rpaused = 1; /* resume_output drives the session again */
    if (n != LIBSSH2_ERROR_EAGAIN && ph_ssh_is_session_error(n)) {
        job_error(s, j, n, "closed", "reading output");
        return -1;
    }
    return 0;
}

/* Read stdout (OP_READ_OUT) or stderr (OP_READ_ERR) into the job's buffers. *called becomes
 * OP_PUMP when the call made was io_pump's: the one to repeat if it left a packet half written
 * (a key re-exchange answered while reading). */
static int io_read(SshSession *s, SshJob *j, int op, int *called)
{
    if (j->kind == JOB_DUPLEX && !redoing) {
        if (j->upaused) {
            int r = io_pump(s, j);
            if (r <= 0) {
                *called = OP_PUMP;
                return r;
            }
        } else if (j->out[op == OP_READ_OUT ? SSH_OUT : SSH_ERR].len >= PH_SSH_HIGH_WATER) {
            j->rpaused = 1; /* the dispatcher drives the session again once it delivered them */
            return 0;
        }
    }
    ssize_t n = libssh2_channel_read_ex(j->ch, op == OP_READ_OUT ? 0 : SSH_EXTENDED_DATA_STDERR,
                                        rbuf, sizeof rbuf);
    if (n > 0) {
        s->last_rx = ph_now();
        s->keepalive_wait = 0;
        keep_output(j, op == OP_READ_OUT ? SSH_OUT : SSH_ERR, rbuf, (size_t)n);
        return 1;
    }
    if (n != LIBSSH2_ERROR_EAGAIN && n < 0 && n != LIBSSH2_ERROR_CHANNEL_CLOSED) {
        job_error(s, j, (int)n, "closed", "reading output");
        return -1;
    }
    return 0;
}

/* Write the next piece of p[*off..len) (stdin, or an upload's header or bytes). */
static int io_write(SshSession *s, SshJob *j, const char *p, size_t len, size_t *off)
{
    ssize_t n = libssh2_channel_write_ex(j->ch, 0, p + *off,
                                         len - *off > WRITE_CHUNK ? WRITE_CHUNK : len - *off);
    if (n > 0) {
        *off += (size_t)n;
        if (j->kind == JOB_DUPLEX && *off >= len)
            duplex_write_done(j, NULL);
        return 1;
    }
    if (n == LIBSSH2_ERROR_EAGAIN || n == 0)
        return 0; /* 0: the window is full and nothing came in to open it */
    if (ph_ssh_is_session_error((int)n) || j->kind == JOB_UPLOAD) {
        job_error(s, j, (int)n, j->kind == JOB_UPLOAD ? "io" : "closed",
                  j->kind == JOB_UPLOAD ? "writing the upload" : "writing stdin");
        return -1;
    }
    if (j->kind == JOB_DUPLEX) { /* the server takes no more stdin: every write fails */
        j->stdin_dead = 1;
        while (j->wq != NULL)
            duplex_write_done(j, "closed");
        return 1;
    }
    *off = len; /* the command closed its stdin: drop the rest */
    return 1;
}

/* Send EOF: nothing more on stdin. */
static int io_eof(SshSession *s, SshJob *j)
{
    int n = libssh2_channel_send_eof(j->ch);
    if (n == LIBSSH2_ERROR_EAGAIN)
        return 0;
    if (n != 0 && ph_ssh_is_session_error(n)) {
        job_error(s, j, n, "closed", "sending EOF");
        return -1;
    }
    j->eof_sent = 1;
    return 1;
}

/* The command closed its output: has the channel closed too? */
static int io_closed(SshSession *s, SshJob *j)
{
    int n = libssh2_channel_wait_closed(j->ch);
    if (n == 0) {
        j->eof_sent = 1;
        j->state = J_WAITCLOSE;
        return 1;
    }
    if (n != LIBSSH2_ERROR_EAGAIN && ph_ssh_is_session_error(n)) {
        job_error(s, j, n, "closed", "waiting for the exit status");
        return -1;
    }
    return 0;
}

/* One libssh2 call of the I/O phase: 1 when it moved something, 0 when nothing moved, -1 when
 * the job must stop now: it failed, or it left a packet half written and so became the
 * send_owner, and only the same call (op, kept in pending_op) may come next. */
static int io_op(SshSession *s, SshJob *j, int op)
{
    const char *p;
    size_t len, *off;
    int r;
    switch (op) {
    case OP_READ_OUT:
    case OP_READ_ERR:
        r = io_read(s, j, op, &op);
        break;
    case OP_PUMP:
        r = io_pump(s, j) < 0 ? -1 : 0;
        break;
    case OP_WRITE:
        if (!write_source(j, &p, &len, &off) || *off >= len)
            return 0; /* nothing to write: no call made, nothing can be half written */
        r = io_write(s, j, p, len, off);
        break;
    case OP_EOF:
        r = io_eof(s, j);
        break;
    case OP_CLOSED:
        r = io_closed(s, j);
        break;
    default:
        return 0;
    }
    if (r != 0)
        return r;
    if (ph_ssh_blocked_out(s)) { /* EAGAIN with a packet half written */
        j->pending_op = op;
        s->send_owner = j;
        return -1;
    }
    return 0;
}

/* Redo the call that left a packet half written, if any. 0 when the job may go on. */
static int redo_pending(SshSession *s, SshJob *j, int *progress)
{
    int op = j->pending_op;
    if (op == OP_NONE)
        return 0;
    j->pending_op = OP_NONE;
    redoing = 1;
    int r = io_op(s, j, op);
    redoing = 0;
    if (r < 0) {
        if (s->send_owner != j)
            *progress = 1; /* it failed: that is a change */
        return -1;
    }
    *progress |= r;
    return j->state == J_IO ? 0 : -1;
}

/* Reads both streams, writes stdin, then sends EOF, until the remote EOF. Progress (1) or 0. */
static int step_io(SshSession *s, SshJob *j)
{
    int progress = 0;
    if (redo_pending(s, j, &progress) != 0)
        return progress;
    if (j->finished && job_abort_pending(j))
        return 1; /* the packet is out: now the channel can go (step_job) */
    for (int round = 0; round < 16; round++) {
        int moved = 0, r;
        static const int ops[] = { OP_READ_OUT, OP_READ_ERR, OP_WRITE };
        for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
            if ((r = io_op(s, j, ops[i])) < 0)
                return s->send_owner == j ? progress : 1;
            moved |= r;
        }
        int may_eof =
            j->kind == JOB_DUPLEX ? j->want_eof : j->kind == JOB_EXEC || j->scp_stage == 5;
        if (!j->eof_sent && may_eof && !write_pending(j)) {
            if ((r = io_op(s, j, OP_EOF)) < 0)
                return s->send_owner == j ? progress : 1;
            moved |= r;
        }
        if (libssh2_channel_eof(j->ch)) {
            if (j->eof_sent) {
                j->state = J_WAITCLOSE;
                return 1;
            }
            /* The command closed its output but may still read stdin: keep writing, unless
             * the channel is closed already (it exited without reading everything). */
            if ((r = io_op(s, j, OP_CLOSED)) < 0)
                return s->send_owner == j ? progress : 1;
            if (j->state == J_WAITCLOSE)
                return 1;
        }
        if (!moved)
            break;
        progress = 1;
    }
    return progress;
}

/* An upload speaks scp's sink protocol on an exec channel running "scp -t <path>": scp
 * answers each step with one byte, 0 for yes, or 1/2 and an error line. Stages:
 *   0 wait for scp's first answer; 1 write "C<mode> <size> <name>\n"; 2 wait for its answer;
 *   3 write the bytes and a NUL; 4 wait for the answer; 5 EOF, then the exit status.
 * Every write waits for the answer before it: the bytes never follow a refused header (scp
 * would read them as its next command). */
static int scp_answers(SshSession *s, SshJob *j)
{
    PhBuf *b = &j->out[SSH_OUT];
    while (j->scp_seen < b->len) {
        unsigned char c = (unsigned char)b->p[j->scp_seen];
        if (c == 0) {
            j->scp_seen++;
            j->scp_acks++;
            continue;
        }
        const char *nl = memchr(b->p + j->scp_seen, '\n', b->len - j->scp_seen);
        if (nl == NULL && b->len - j->scp_seen < 1024 && !libssh2_channel_eof(j->ch))
            return 0; /* the rest of the error line is on its way */
        size_t n = nl != NULL ? (size_t)(nl - (b->p + j->scp_seen)) : b->len - j->scp_seen;
        ph_ssh_job_fail(j, c == 1 || c == 2 ? "io" : "protocol",
                        "ssh: upload to %s:%d:%s failed: %.*s", s->t.host, s->t.port, j->path,
                        (int)(n > 1 ? n - 1 : 0), b->p + j->scp_seen + 1);
        j->state = J_FREE;
        return -1;
    }
    return 0;
}

static int step_upload(SshSession *s, SshJob *j)
{
    int progress = 0;
    if (redo_pending(s, j, &progress) != 0)
        return progress;
    for (int round = 0; round < 64; round++) {
        size_t had = j->out[SSH_OUT].len;
        int r, stage = j->scp_stage;
        if ((r = io_op(s, j, OP_READ_OUT)) < 0 || (r = io_op(s, j, OP_READ_ERR)) < 0)
            return s->send_owner == j ? progress : 1;
        if (scp_answers(s, j) != 0)
            return 1;
        if ((stage == 0 && j->scp_acks >= 1) || (stage == 2 && j->scp_acks >= 2) ||
            (stage == 4 && j->scp_acks >= 3)) {
            j->scp_stage++;
        } else if (stage == 1 || stage == 3) {
            if ((r = io_op(s, j, OP_WRITE)) < 0)
                return s->send_owner == j ? progress : 1;
            if (!write_pending(j))
                j->scp_stage++;
            else if (r == 0)
                return progress;
        } else if (stage == 5) {
            return step_io(s, j) | 1; /* EOF, then wait for scp to finish like a command */
        }
        if (libssh2_channel_eof(j->ch) && j->scp_stage < 5) {
            ph_ssh_job_fail(j, "io", "ssh: upload to %s:%d:%s failed: scp ended early: %.*s",
                            s->t.host, s->t.port, j->path, (int)j->out[SSH_ERR].len,
                            j->out[SSH_ERR].p != NULL ? j->out[SSH_ERR].p : "");
            j->state = J_FREE;
            return 1;
        }
        if (j->scp_stage == stage && j->out[SSH_OUT].len == had && r == 0)
            break;
        progress = 1;
    }
    return progress;
}

/* A free channel slot, and the opener lock: libssh2 keeps the state of a channel open in the
 * session, so a second open would take over the first one's. */
static int can_open(SshSession *s, SshJob *j)
{
    return s->channels < s->max_channels && (s->opener == NULL || s->opener == j) &&
           !s->open_wait && ph_now() >= s->open_after;
}

/* The requester lock, for requests that wait for CHANNEL_SUCCESS/FAILURE (setenv, exec).
 * libssh2 1.10's _libssh2_packet_requirev reads packets off the socket and, when one is a
 * SUCCESS or FAILURE for another channel, looks for its own, misses, and fails the request
 * with -1 ("Failed waiting for channel success"). With one request in flight per session,
 * every such reply is the waiting job's. */
static int take_requester(SshSession *s, SshJob *j)
{
    if (s->requester != NULL && s->requester != j)
        return 0;
    s->requester = j;
    return 1;
}

static int step_open(SshSession *s, SshJob *j)
{
    s->opener = j;
    j->ch = libssh2_channel_open_session(s->ssh);
    if (j->ch == NULL && libssh2_session_last_errno(s->ssh) == LIBSSH2_ERROR_EAGAIN)
        return would_block(s, j);
    s->opener = NULL;
    if (j->ch != NULL) {
        s->open_refusals = 0;
        j->state = j->kind == JOB_PUMP ? J_FREE : j->env != NULL ? J_ENV : J_EXEC;
        if (j->finished)
            j->state = J_FREE; /* canceled while opening */
        return 1;
    }
    int rc = libssh2_session_last_errno(s->ssh);
    if (ph_ssh_is_session_error(rc)) {
        ph_ssh_session_fail(s, "closed", ph_ssh_lost_message(s, "opening a channel"));
        return 1;
    }
    if (rc == LIBSSH2_ERROR_CHANNEL_FAILURE && j->kind != JOB_PUMP &&
        s->open_refusals < MAX_OPEN_REFUSALS) {
        /* The server's channel limit (OpenSSH MaxSessions), which also counts sessions it is
         * still closing: wait until one of ours closes, or back off and try again. */
        j->slot = 0;
        s->channels--;
        j->state = J_QUEUED;
        if (s->channels > 0) {
            s->open_wait = 1;
        } else {
            s->open_refusals++;
            ph_ssh_open_backoff(s, 0.02 * s->open_refusals);
        }
        return 0;
    }
    if (j->kind == JOB_PUMP) {
        ph_ssh_job_release(j);
        return 1;
    }
    return job_error(s, j, rc, "protocol", "opening a channel");
}

/* A stage of step_job returns progress (0 or 1), or STEP_ON: this stage is over and the next
 * one (already set in j->state) goes on at once. */
#define STEP_ON (-1)

/* J_ENV: one setenv request at a time, each awaiting its reply (the requester lock). */
static int step_env(SshSession *s, SshJob *j)
{
    while (j->env[j->env_at] != NULL) {
        const char *name = j->env[j->env_at], *value = j->env[j->env_at + 1];
        if (!take_requester(s, j))
            return 0;
        int rc = libssh2_channel_setenv_ex(j->ch, name, (unsigned)strlen(name), value,
                                           (unsigned)strlen(value));
        if (rc == LIBSSH2_ERROR_EAGAIN)
            return would_block(s, j);
        s->requester = NULL;
        if (rc == LIBSSH2_ERROR_CHANNEL_REQUEST_DENIED) {
            ph_ssh_job_fail(j, "protocol",
                            "ssh: %s:%d refused environment variable %s (sshd sets only the "
                            "names its AcceptEnv lists; put them in the command instead)",
                            s->t.host, s->t.port, name);
            j->state = J_FREE;
            return 1;
        }
        if (rc != 0)
            return job_error(s, j, rc, "protocol", "setting the environment");
        j->env_at += 2;
    }
    j->state = J_EXEC;
    return STEP_ON;
}

/* J_EXEC: the exec request (the requester lock again). */
static int step_exec(SshSession *s, SshJob *j)
{
    if (!take_requester(s, j))
        return 0;
    j->cmd_started = 1; /* from the first try on, the command may run remotely */
    int rc = libssh2_channel_process_startup(j->ch, "exec", 4, j->cmd, (unsigned)strlen(j->cmd));
    if (rc == LIBSSH2_ERROR_EAGAIN)
        return would_block(s, j);
    s->requester = NULL;
    if (rc != 0)
        return job_error(s, j, rc, "protocol", "starting the command");
    j->state = J_IO;
    if (j->kind == JOB_DUPLEX && !j->finished) {
        ph_ssh_job_opened(j);
        ph_ssh_dispatch_add(j); /* ssh.open returns the Channel */
    }
    return 1;
}

/* J_WAITCLOSE: the remote CLOSE, after which the exit status is known; an upload whose scp
 * did not exit 0 fails with scp's words. */
static int step_waitclose(SshSession *s, SshJob *j)
{
    int rc = libssh2_channel_wait_closed(j->ch);
    if (rc == LIBSSH2_ERROR_EAGAIN)
        return would_block(s, j);
    if (rc != 0 && ph_ssh_is_session_error(rc))
        return job_error(s, j, rc, "closed", "waiting for the exit status");
    exit_status(j);
    if (j->kind == JOB_UPLOAD && j->code == NULL && (!j->has_exit || j->exit_code != 0)) {
        PhBuf *e = &j->out[SSH_ERR];
        size_t n = e->len;
        while (n > 0 && (e->p[n - 1] == '\n' || e->p[n - 1] == '\r'))
            n--;
        ph_ssh_job_fail(j, "io", "ssh: upload to %s:%d:%s failed: scp exited %d%s%.*s", s->t.host,
                        s->t.port, j->path, j->exit_code, n > 0 ? ": " : "", (int)n,
                        n > 0 ? e->p : "");
    }
    ph_ssh_job_finish(j);
    j->state = J_FREE;
    return STEP_ON;
}

/* J_FREE: libssh2_channel_free sends our CLOSE and waits for the server's. */
static int step_free(SshSession *s, SshJob *j)
{
    int rc = libssh2_channel_free(j->ch);
    if (rc == LIBSSH2_ERROR_EAGAIN) {
        if (!ph_ssh_blocked_out(s) && s->send_owner == NULL && ph_now() - s->last_rx > 0.1) {
            /* waiting for any packet on a quiet session: ask the server for one (quiet,
             * so the socket buffer is empty and the keepalive goes out whole) */
            ph_ssh_keepalive(s, 1);
        }
        ph_ssh_redrive(s, 0.2); /* provoke later if the server stays quiet */
        return would_block(s, j);
    }
    if (!j->finished) {
        if (j->code == NULL)
            ph_ssh_job_fail(j, "closed", "ssh: %s:%d: channel closed", s->t.host, s->t.port);
        ph_ssh_job_finish(j);
    }
    ph_ssh_job_release(j);
    return 1;
}

/* Advance one job as far as it goes without blocking. Returns progress. */
static int step_job(SshSession *s, SshJob *j)
{
    int rc;
    if (j->state != J_QUEUED && j->state != J_OPEN && j->state < J_FREE && j->finished &&
        !j->owning && s->requester != j && job_abort_pending(j))
        j->state = J_FREE; /* answered (timeout, cancel): tear the channel down */
    switch (j->state) {
    case J_QUEUED:
        if (j->finished) { /* answered before it got a channel */
            ph_ssh_job_release(j);
            return 1;
        }
        if (!can_open(s, j))
            return 0;
        j->slot = 1;
        s->channels++;
        j->state = J_OPEN;
        /* fall through */
    case J_OPEN:
        return step_open(s, j); /* j may be gone now (a pump, or the session failed) */
    case J_ENV:
        if ((rc = step_env(s, j)) != STEP_ON)
            return rc;
        /* fall through */
    case J_EXEC:
        return step_exec(s, j);
    case J_IO:
        return j->kind == JOB_UPLOAD && j->scp_stage < 5 ? step_upload(s, j) : step_io(s, j);
    case J_WAITCLOSE:
        if ((rc = step_waitclose(s, j)) != STEP_ON)
            return rc;
        /* fall through */
    case J_FREE:
        return step_free(s, j);
    default:
        return 0;
    }
}

/* 1 when a finished job still holds a channel that should go (its task was answered). */
static int job_abort_pending(SshJob *j)
{
    if (j->kind == JOB_DUPLEX) /* its task was answered at open: it runs on without one */
        return j->ch != NULL && (j->closing || j->timed_out || j->code != NULL);
    return j->ch != NULL && (j->op.task == NULL || j->timed_out || j->code != NULL);
}

/* Put the jobs up to and including j at the end of the list: the next pass starts after
 * the job that filled the socket, so bulk writers take turns. */
static void rotate_after(SshSession *s, SshJob *j)
{
    if (j->next == NULL || j->sess != s)
        return;
    SshJob *first = s->head, *rest = j->next;
    rest->prev = NULL;
    j->next = NULL;
    s->tail->next = first;
    first->prev = s->tail;
    s->head = rest;
    s->tail = j;
}

/* One pass over a set of jobs: 0 done, 1 stop (a send owner appeared, or the session died). */
static int pass_over(SshSession *s, int io, int *progress)
{
    SshJob *j = s->head;
    while (j != NULL && !s->doomed) {
        SshJob *next = j->next;
        if ((j->state == J_IO) == io) {
            *progress |= step_job(s, j);
            if (s->send_owner != NULL) {
                if (s->send_owner == j)
                    rotate_after(s, j);
                return 1;
            }
        }
        j = next;
    }
    return s->doomed;
}

void ph_ssh_step_jobs(SshSession *s)
{
    for (int pass = 0; pass < MAX_PASSES; pass++) {
        /* Any libssh2 call that reads takes every packet off the socket and queues those of
         * other channels (or of this channel's other stream: reading stderr queues stdout). A
         * job stepped before that finds its data queued with no socket event to announce it:
         * so a pass that read anything from the socket counts as progress, and the jobs are
         * stepped again until a pass reads nothing. */
        unsigned long rx = s->rx_reads;
        int progress = 0;
        if (s->send_owner != NULL) { /* it alone may send until its call completes */
            SshJob *o = s->send_owner;
            s->send_owner = NULL;
            o->owning = 1;
            progress |= step_job(s, o);
            o->owning = 0;
            if (s->doomed || s->send_owner != NULL)
                return;
        }
        /* Opens, requests and teardowns first: they are small, and a bulk transfer must not
         * starve them (libssh2 fails a request still unanswered after 60 s). */
        if (pass_over(s, 0, &progress) || pass_over(s, 1, &progress))
            return;
        if (!progress && s->rx_reads == rx)
            return;
    }
    s->again = 1; /* still busy: continue after the loop polled I/O */
}
