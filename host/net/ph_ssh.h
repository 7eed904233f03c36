/* ph_ssh.h - host.core.ssh internals shared by mod_ssh.c (Lua binding, duplex channels),
 * mod_ssh_session.c (pooled libssh2 sessions on the loop), mod_ssh_channel.c (the per-job
 * channel state machines) and mod_ssh_key.c (key checks, fingerprints, known_hosts). Nothing
 * here is Lua-visible. */
#ifndef PH_SSH_H
#define PH_SSH_H

#include "ph.h"

#include <libssh2.h>
#include <netdb.h>
#include <time.h>

enum { SSH_POLICY_ACCEPT_NEW, SSH_POLICY_YES, SSH_POLICY_NO };
enum { S_RESOLVE, S_CONNECT, S_HANDSHAKE, S_AUTH, S_READY, S_DEAD };
enum {
    J_QUEUED,    /* waiting for the session, a channel slot or the opener */
    J_OPEN,      /* libssh2_channel_open_session */
    J_ENV,       /* setenv requests */
    J_EXEC,      /* the exec request */
    J_IO,        /* stdin out, stdout/stderr in, until the remote EOF */
    J_WAITCLOSE, /* until the remote CLOSE: the exit status comes before it */
    J_FREE,      /* libssh2_channel_free (sends our CLOSE) */
    J_DONE,      /* no channel any more */
};
/* JOB_DUPLEX: ssh.open's long-lived command; its task is answered once the exec request was
 * accepted, then Lua writes stdin piece by piece (SshWrite) and waits for the end (SshWaiter)
 * through the host.ssh.Channel userdata (job->chan). */
enum { JOB_EXEC, JOB_UPLOAD, JOB_FINGERPRINT, JOB_PUMP, JOB_DUPLEX };
enum { SSH_OUT, SSH_ERR };

/* Bytes of one stream a duplex keeps for its callback before it stops reading (back-pressure
 * through the SSH window until the dispatcher delivered them). */
#define PH_SSH_HIGH_WATER (256 * 1024)

/* What a private key looked like before connecting (mod_ssh_key.c). */
typedef struct {
    char type[32]; /* "ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa", "pkcs8" ... */
    int encrypted;
    int rsa; /* libssh2 1.10 signs RSA keys with ssh-rsa (SHA-1) only */
} SshKeyInfo;

/* One private key to offer, kept in C memory and wiped on free. */
typedef struct {
    char *text;
    size_t len;
    char *label; /* where it came from, for messages: "key", or a file path; never secret */
    int rsa;     /* libssh2 1.10 signs RSA keys with ssh-rsa (SHA-1) only */
} SshIdentity;

/* Where and as whom to connect: the pool key (id) covers every field that changes what a
 * session is allowed to do. Every job owns a copy, so it can retry on a fresh session.
 * Authentication offers the agent's keys first, then ids in order, as OpenSSH does. */
typedef struct {
    char *host;
    int port;
    char *user; /* NULL for fingerprint */
    SshIdentity *ids;
    int nids;
    char *agent; /* an ssh-agent socket path, or NULL */
    char *passphrase;
    int policy;
    char *known_hosts; /* NULL with policy "no" */
    double connect_timeout, keepalive, idle_timeout;
    unsigned char id[32]; /* sha256 of everything above that makes the session */
} SshTarget;

typedef struct SshSession SshSession;
typedef struct SshJob SshJob;
typedef struct SshChan SshChan; /* the host.ssh.Channel userdata (mod_ssh.c) */

/* One Channel:write: the bytes are the caller's Lua string, anchored (ref) while libssh2 may
 * read them; the task waits until libssh2 took them all (op.task NULL once answered). */
typedef struct SshWrite SshWrite;
struct SshWrite {
    ph_op op; /* first */
    SshJob *job;
    const char *p;
    size_t len, off;
    int ref;          /* registry ref to the string */
    const char *code; /* done: NULL when every byte went, else why not ("closed") */
    SshWrite *next;
};

/* One Channel:wait, parked until the command ends (or its own timeout). */
typedef struct SshWaiter SshWaiter;
struct SshWaiter {
    ph_op op; /* first */
    SshJob *job;
    uv_timer_t *timer; /* NULL without a timeout */
    double timeout;
    SshWaiter *next;
};

/* One exec, upload or fingerprint (or an internal pump): a channel on a pooled session. */
struct SshJob {
    ph_op op; /* first: the parked task; op.task is NULL once the task got its answer */
    int kind;
    SshTarget t;
    SshSession *sess;
    SshJob *next, *prev; /* in sess's job list */
    LIBSSH2_CHANNEL *ch;
    int state; /* J_* in mod_ssh_session.c */
    int slot;  /* holds one of the session's channel slots */
    /* the request */
    char *cmd;
    char **env; /* name, value, name, value ..., NULL */
    int env_at;
    char *in; /* stdin, or the upload's bytes plus scp's closing NUL; NULL: none */
    size_t in_len, in_off;
    int eof_sent;
    char *path; /* upload: the remote path; the exec'd command is "scp -t <path>" */
    int mode;
    int scp_stage;   /* upload: which scp answer comes next (see step_upload) */
    size_t scp_seen; /* bytes of scp's answers parsed */
    int scp_acks;
    char *hdr; /* the "C0644 <size> <name>\n" line */
    size_t hdr_len, hdr_off;
    int owning;     /* being stepped as the session's send_owner */
    int pending_op; /* the I/O call that left a packet half written: it must come again */
    /* output */
    PhBuf out[2];
    size_t delivered[2]; /* bytes handed to on_stdout / on_stderr so far */
    int cb[2];           /* registry refs, or LUA_NOREF */
    size_t max_output;
    int truncated;
    /* timing and outcome */
    double started;
    uv_timer_t *timer; /* the whole-operation deadline */
    double timeout;
    int cmd_started; /* the exec request went out: never retried from here on */
    int retried;
    int timed_out;
    int exit_code, has_exit;
    char exit_signal[32];
    char fingerprint[64]; /* JOB_FINGERPRINT's result */
    const char *code;     /* failure: code and message; NULL when it succeeded */
    char *msg;
    int finished; /* the outcome is final (answered or to be answered) */
    int dispatch; /* in the dispatch list */
    SshJob *dnext;
    int freed_pending; /* free once dispatched */
    /* JOB_DUPLEX */
    SshChan *chan;       /* the Channel while it runs (anchored by chan_ref); NULL after */
    int chan_ref;        /* registry ref anchoring the Channel userdata, or LUA_NOREF */
    int has_cb[2];       /* on_stdout / on_stderr given (user values of the Channel) */
    int opened;          /* the exec request was accepted: ssh.open can return */
    double open_timeout; /* seconds until opened (the whole call's timeout may be shorter) */
    int want_eof;        /* close_stdin: EOF once the writes queued before it are out */
    int stdin_dead;      /* the server refused more stdin: writes fail with "closed" */
    int closing;         /* Channel:close() (or its end): tear the channel down */
    int rpaused;         /* a stream's undelivered bytes reached the high-water mark */
    int upaused;         /* Channel:pause_output: no callback, no reading until resume_output */
    SshWrite *wq;        /* writes in call order; the head is the one being written */
    SshWrite *wdone;     /* writes done (or failed), to be answered by the dispatcher */
    SshWaiter *waiters;
};

struct SshSession {
    SshTarget t;
    int state; /* S_* in mod_ssh_session.c */
    int pooled;
    int was_ready;
    int fp_only; /* a one-off session for ssh.fingerprint */
    uv_getaddrinfo_t *gai;
    struct addrinfo *ai, *ai_next;
    int connect_errno;
    int fd;
    uv_poll_t *poll;
    int poll_events;
    uv_timer_t *timer;
    LIBSSH2_SESSION *ssh;
    SshJob *head, *tail;
    int channels, max_channels;
    int open_wait;     /* the server refused a channel: open again once one of ours closes */
    int open_refusals; /* refused with none of ours open: back off (open_after) */
    double open_after;
    uv_timer_t *retry_timer;
    SshJob *send_owner; /* its partly sent packet must be finished before anyone else sends */
    SshJob *opener;     /* the one job opening a channel (libssh2 keeps that state per session) */
    SshJob *requester;  /* the one job waiting for a channel request's reply (setenv, exec) */
    double last_rx, last_used, connect_deadline;
    int keepalive_wait;     /* want_reply keepalives sent without any byte received since */
    time_t keepalive_sent;  /* when the last keepalive went out (time(): libssh2's clock) */
    unsigned long rx_reads; /* reads of the socket that got bytes (counted by mod_ssh_auth.c) */
    char fingerprint[64];
    /* authentication (mod_ssh_auth.c): the agent's keys, then t.ids[auth_next...] */
    LIBSSH2_AGENT *agent;
    struct libssh2_agent_publickey *agent_key; /* the agent key being offered */
    int agent_done, agent_trying, agent_offered, auth_next, auth_rsa;
    double agent_deadline;
    PhBuf tried; /* "what: outcome; ..." for the error when nothing is accepted */
    int busy, again, doomed;
    int pumping;
    SshSession *next, *prev;
};

/* ---- mod_ssh_key.c ---------------------------------------------------------------------- */

/* Inspect a private key before connecting. 0 with info filled, or -1 with *msg a static,
 * secret-free explanation ("ssh: private key is encrypted; give a passphrase" ...). */
int ph_ssh_key_check(const char *text, size_t len, int has_passphrase, SshKeyInfo *info,
                     const char **msg);
/* "SHA256:<base64, unpadded>" of a host key blob into out (at least 64 bytes). */
void ph_ssh_fingerprint(const char *blob, size_t len, char *out);
/* Before the handshake: prefer the host key types known_hosts already holds for the host, as
 * OpenSSH does, so a server with several keys is checked against the one we know. */
void ph_ssh_hostkey_prefs(LIBSSH2_SESSION *ssh, const SshTarget *t);
/* After the handshake: apply the policy. 0 accepted; -1 with *code and *msg (malloc'd). */
int ph_ssh_hostkey_verify(SshSession *s, const char **code, char **msg);

/* ---- mod_ssh_auth.c --------------------------------------------------------------------- */

/* Prepare a new libssh2 session for authentication (I/O callbacks that bound agent waits). */
void ph_ssh_auth_init(SshSession *s);
/* Offer identities until one is accepted: 0 authenticated, LIBSSH2_ERROR_EAGAIN to be called
 * again, -1 when the session was failed (with a message naming everything tried). */
int ph_ssh_auth_step(SshSession *s);
/* Forget keys and the agent once authenticated, or when the session dies. */
void ph_ssh_auth_done(SshSession *s);

/* ---- mod_ssh_session.c ------------------------------------------------------------------ */

/* Attach job to a pooled session for its target (connecting one when needed) and start it.
 * The job must be fully set up; the caller parks its task on job->op afterwards. -1 when no
 * session could even be created (out of memory, no resolver): nothing was started. */
int ph_ssh_job_start(SshJob *job);
/* The job's task went away (cancel): answer it now with "canceled"; the channel is torn
 * down in the background. */
void ph_ssh_job_cancel(ph_op *op);
void ph_ssh_close_all(void);
/* Drive the session again soon, from the loop (safe from Lua and from the dispatcher). */
void ph_ssh_kick(SshSession *s);
/* A duplex job's exec request was accepted: its deadline becomes the whole call's. */
void ph_ssh_job_opened(SshJob *j);
void ph_ssh_stats(int *sessions, int *channels, int *queued);
extern unsigned long ph_ssh_connects; /* TCP connections made since start */

/* Out of the pool; its jobs fail with code (or are retried); destroyed when no loop callback
 * works on it. Takes msg (malloc'd). */
void ph_ssh_session_fail(SshSession *s, const char *code, char *msg);
/* Leave the session (frees the channel slot). */
void ph_ssh_job_detach(SshJob *j);
/* Open no channel for seconds, then drive the session again. */
void ph_ssh_open_backoff(SshSession *s, double seconds);
/* Drive the session again within seconds (a wait no socket event would end). */
void ph_ssh_redrive(SshSession *s, double seconds);
/* Send a keepalive if libssh2 1.10 will: it sends one only when its clock (time(), whole
 * seconds) says 2 s passed since the last, whatever interval is asked. 1 when one went out:
 * only those can go unanswered. */
int ph_ssh_keepalive(SshSession *s, int want_reply);

/* ---- mod_ssh_channel.c ------------------------------------------------------------------ */

/* Step every job of a READY session as far as it goes; sets s->again when work is left. */
void ph_ssh_step_jobs(SshSession *s);
/* The job's outcome is final: stop its deadline, queue its answer. */
void ph_ssh_job_finish(SshJob *j);
/* Its channel is gone: leave the session, free once answered. */
void ph_ssh_job_release(SshJob *j);
int ph_ssh_blocked_out(SshSession *s); /* a packet is half written */
/* 1 when w (a duplex write) went partly to libssh2, which may need the same bytes again: it
 * must be finished, never dropped, while the channel lives. */
int ph_ssh_write_started(SshJob *j, SshWrite *w);
int ph_ssh_is_session_error(int rc); /* rc kills the whole session, not just a channel */
const char *ph_ssh_last_error(SshSession *s);
char *ph_ssh_lost_message(SshSession *s, const char *what);

/* ---- mod_ssh.c -------------------------------------------------------------------------- */

void ph_ssh_target_free(SshTarget *t);
void ph_ssh_target_free_ids(SshTarget *t); /* keys, agent and passphrase: wiped */
int ph_ssh_target_copy(SshTarget *dst, const SshTarget *src);
void ph_ssh_job_free(SshJob *job);
/* Queue job for the dispatcher: chunk callbacks, then its answer. Runs Lua later, at the
 * loop's top level, never inside libssh2. */
void ph_ssh_dispatch_add(SshJob *job);
void ph_ssh_dispatch_run(void);
/* A warning for host.log (policy "no"); delivered by the dispatcher. */
void ph_ssh_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Set a job's failure (first one wins). */
void ph_ssh_job_fail(SshJob *job, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
