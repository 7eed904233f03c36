/* mod_ssh_auth.c - host.core.ssh: public key authentication, offering identities as OpenSSH
 * does: every key of the ssh-agent first, then each key given, until the server accepts one.
 *
 * libssh2 1.10's agent client talks to the agent socket through the session's send/recv
 * callbacks, on a blocking socket, and loses its place if a call returns EAGAIN half way. So
 * the callbacks installed here wait for the agent with poll() under a deadline instead: the
 * agent is a local process that answers in microseconds, and a stuck one costs at most
 * AGENT_WAIT seconds before its keys are given up (the keys given in memory are tried next).
 * The session's own socket is untouched: non-blocking, driven by the loop. */
#include "ph_ssh.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#define AGENT_WAIT 5.0 /* seconds for the whole conversation with the agent */

/* ---- I/O: the session socket as libssh2 would do it, the agent socket bounded ----------- */

/* Wait until the agent socket is ready; 0 when the deadline passed first. */
static int agent_ready(SshSession *s, int fd, short events)
{
    for (;;) {
        double left = s->agent_deadline - ph_now();
        if (left <= 0)
            return 0;
        struct pollfd p = { .fd = fd, .events = events };
        int rc = poll(&p, 1, (int)(left * 1000.0) + 1);
        if (rc > 0)
            return 1;
        if (rc < 0 && errno != EINTR)
            return 1; /* let the call itself report the error */
    }
}

static LIBSSH2_RECV_FUNC(session_recv)
{
    SshSession *s = *abstract;
    int agent = socket != s->fd;
    for (;;) {
        if (agent && !agent_ready(s, socket, POLLIN))
            return -ETIMEDOUT;
        ssize_t n = recv(socket, buffer, length, flags | MSG_DONTWAIT);
        if (n > 0 && !agent)
            s->rx_reads++; /* packets came in: ph_ssh_step_jobs steps every job again */
        if (n >= 0)
            return n;
        if (errno == EINTR || (agent && (errno == EAGAIN || errno == EWOULDBLOCK)))
            continue;
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

static LIBSSH2_SEND_FUNC(session_send)
{
    SshSession *s = *abstract;
    int agent = socket != s->fd;
    for (;;) {
        if (agent && !agent_ready(s, socket, POLLOUT))
            return -ETIMEDOUT;
        ssize_t n = send(socket, buffer, length, flags | MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n >= 0)
            return n;
        if (errno == EINTR || (agent && (errno == EAGAIN || errno == EWOULDBLOCK)))
            continue;
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

void ph_ssh_auth_init(SshSession *s)
{
    libssh2_session_callback_set(s->ssh, LIBSSH2_CALLBACK_RECV, (void *)session_recv);
    libssh2_session_callback_set(s->ssh, LIBSSH2_CALLBACK_SEND, (void *)session_send);
}

/* ---- what was offered, for the error when nothing was accepted --------------------------- */

static void note(SshSession *s, const char *fmt, ...)
{
    char text[600];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (s->tried.len > 0)
        ph_buf_append(&s->tried, "; ", 2);
    ph_buf_append(&s->tried, text, strlen(text));
}

static int is_rsa_blob(const unsigned char *blob, size_t len)
{
    return len >= 11 && memcmp(blob, "\0\0\0\7ssh-rsa", 11) == 0;
}

/* ---- the agent's keys --------------------------------------------------------------------- */

static void agent_close(SshSession *s)
{
    if (s->agent != NULL) {
        libssh2_agent_disconnect(s->agent);
        libssh2_agent_free(s->agent);
        s->agent = NULL;
    }
    s->agent_key = NULL;
}

/* 0: accepted; LIBSSH2_ERROR_EAGAIN; another libssh2 error that killed the session; 1: the
 * agent has nothing more to offer. */
static int agent_step(SshSession *s)
{
    const char *path = s->t.agent;
    if (s->agent == NULL) {
        s->agent_deadline = ph_now() + AGENT_WAIT;
        s->agent = libssh2_agent_init(s->ssh);
        if (s->agent == NULL) {
            note(s, "ssh-agent at %s: out of memory", path);
            return 1;
        }
        libssh2_agent_set_identity_path(s->agent, path);
        if (libssh2_agent_connect(s->agent) != 0) {
            note(s, "ssh-agent at %s: cannot connect to it", path);
            return 1;
        }
        if (libssh2_agent_list_identities(s->agent) != 0) {
            note(s, "ssh-agent at %s: it did not list its keys", path);
            return 1;
        }
    }
    for (;;) {
        if (!s->agent_trying) {
            struct libssh2_agent_publickey *next = NULL;
            if (libssh2_agent_get_identity(s->agent, &next, s->agent_key) != 0) {
                if (s->agent_offered == 0)
                    note(s, "ssh-agent at %s: it holds no keys", path);
                else
                    note(s, "ssh-agent at %s: %d key%s refused", path, s->agent_offered,
                         s->agent_offered == 1 ? "" : "s");
                return 1;
            }
            s->agent_key = next;
            s->agent_trying = 1;
            s->agent_offered++;
            s->agent_deadline = ph_now() + AGENT_WAIT; /* per signature */
            if (is_rsa_blob(next->blob, next->blob_len))
                s->auth_rsa = 1;
        }
        int rc = libssh2_agent_userauth(s->agent, s->t.user, s->agent_key);
        if (rc == LIBSSH2_ERROR_EAGAIN)
            return rc;
        s->agent_trying = 0;
        if (rc == 0 || (ph_ssh_is_session_error(rc) && rc != LIBSSH2_ERROR_PROTO))
            return rc;
        /* refused, or the agent would not sign: offer its next key */
    }
}

/* ---- the keys given ------------------------------------------------------------------------ */

static void fail_all(SshSession *s)
{
    const SshTarget *t = &s->t;
    const char *rsa_note = s->auth_rsa ? "; libssh2 1.10 signs RSA keys with ssh-rsa (SHA-1), "
                                         "which OpenSSH 8.8+ refuses unless "
                                         "PubkeyAcceptedAlgorithms allows it: prefer an ed25519 "
                                         "key"
                                       : "";
    ph_buf_append(&s->tried, "", 1); /* NUL-terminate */
    ph_ssh_session_fail(s, "auth",
                        ph_printf_alloc("ssh: %s@%s:%d accepted none of the identities "
                                        "offered (%s)%s",
                                        t->user, t->host, t->port,
                                        s->tried.p != NULL ? s->tried.p : "", rsa_note));
}

/* The one key given refused or unusable: the words of a single-key failure. */
static void fail_single(SshSession *s, int rc)
{
    const SshTarget *t = &s->t;
    const char *why = ph_ssh_last_error(s);
    if (rc == LIBSSH2_ERROR_AUTHENTICATION_FAILED || rc == LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED) {
        ph_ssh_session_fail(
            s, "auth",
            ph_printf_alloc("ssh: %s@%s:%d refused the key (publickey authentication failed)%s",
                            t->user, t->host, t->port,
                            s->auth_rsa
                                ? "; libssh2 1.10 signs RSA keys with ssh-rsa (SHA-1), which "
                                  "OpenSSH 8.8+ refuses unless PubkeyAcceptedAlgorithms "
                                  "allows it: prefer an ed25519 key"
                                : ""));
    } else if (t->passphrase != NULL) {
        ph_ssh_session_fail(s, "auth",
                            ph_printf_alloc("ssh: cannot decrypt the private key for %s@%s:%d "
                                            "(wrong passphrase?): %s",
                                            t->user, t->host, t->port, why));
    } else {
        ph_ssh_session_fail(s, "auth",
                            ph_printf_alloc("ssh: cannot use the private key for %s@%s:%d: %s",
                                            t->user, t->host, t->port, why));
    }
}

int ph_ssh_auth_step(SshSession *s)
{
    int rc;
    if (s->t.agent != NULL && !s->agent_done) {
        rc = agent_step(s);
        if (rc == LIBSSH2_ERROR_EAGAIN) {
            ph_ssh_redrive(s, 0.002); /* the agent's socket is not on the loop */
            return rc;
        }
        if (rc == 0)
            return 0;
        if (rc < 0) {
            ph_ssh_session_fail(s, "closed", ph_ssh_lost_message(s, "authenticating"));
            return -1;
        }
        agent_close(s);
        s->agent_done = 1;
    }
    while (s->auth_next < s->t.nids) {
        SshIdentity *id = &s->t.ids[s->auth_next];
        rc = libssh2_userauth_publickey_frommemory(s->ssh, s->t.user, strlen(s->t.user), NULL, 0,
                                                   id->text, id->len, s->t.passphrase);
        if (rc == LIBSSH2_ERROR_EAGAIN || rc == 0)
            return rc;
        s->auth_next++;
        if (id->rsa)
            s->auth_rsa = 1;
        if (ph_ssh_is_session_error(rc) && rc != LIBSSH2_ERROR_PROTO) {
            ph_ssh_session_fail(s, "closed", ph_ssh_lost_message(s, "authenticating"));
            return -1;
        }
        if (s->t.nids == 1 && s->t.agent == NULL) {
            fail_single(s, rc);
            return -1;
        }
        if (rc == LIBSSH2_ERROR_AUTHENTICATION_FAILED || rc == LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED)
            note(s, "%s: refused", id->label);
        else
            note(s, "%s: cannot use it (%s)", id->label, ph_ssh_last_error(s));
    }
    fail_all(s);
    return -1;
}

void ph_ssh_auth_done(SshSession *s)
{
    agent_close(s);
    ph_ssh_target_free_ids(&s->t); /* the session no longer needs any key: jobs keep theirs */
    ph_buf_free(&s->tried);
}
