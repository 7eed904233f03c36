/* mod_ssh.c - host.core.ssh: exec, upload and fingerprint over pooled libssh2 sessions; the
 * Lua side of the module: option checks, jobs, results, and the dispatcher that runs output
 * callbacks and wakes tasks outside any libssh2 frame. Sessions and channels live in
 * mod_ssh_session.c; keys and known_hosts in mod_ssh_key.c. */
#include "ph_ssh.h"
#include "ph_util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_TIMEOUT         3600.0
#define DEFAULT_CONNECT_TIMEOUT 15.0
#define DEFAULT_KEEPALIVE       15.0
#define DEFAULT_IDLE            60.0
#define DEFAULT_OPEN_TIMEOUT    60.0 /* ssh.open: until the command runs */
#define DEFAULT_MAX_OUTPUT      (16 * 1024 * 1024)
#define MAX_KEY                 (64 * 1024)
#define MAX_HOST                1024

/* ---- small helpers ------------------------------------------------------------------------ */

void ph_ssh_job_fail(SshJob *j, const char *code, const char *fmt, ...)
{
    if (j->code != NULL)
        return;
    va_list ap;
    va_start(ap, fmt);
    j->msg = ph_vprintf_alloc(fmt, ap);
    va_end(ap);
    j->code = code;
}

static char *dup_mem(const char *p, size_t n)
{
    char *d = malloc(n + 1);
    if (d != NULL) {
        memcpy(d, p, n);
        d[n] = '\0';
    }
    return d;
}

static void free_secret(char *p, size_t n)
{
    if (p != NULL) {
        explicit_bzero(p, n);
        free(p);
    }
}

void ph_ssh_target_free_ids(SshTarget *t)
{
    for (int i = 0; i < t->nids; i++) {
        free_secret(t->ids[i].text, t->ids[i].len);
        free(t->ids[i].label);
    }
    free(t->ids);
    t->ids = NULL;
    t->nids = 0;
    free(t->agent);
    t->agent = NULL;
    if (t->passphrase != NULL)
        free_secret(t->passphrase, strlen(t->passphrase));
    t->passphrase = NULL;
}

void ph_ssh_target_free(SshTarget *t)
{
    free(t->host);
    free(t->user);
    ph_ssh_target_free_ids(t);
    free(t->known_hosts);
    memset(t, 0, sizeof *t);
}

static char *dup_or_null(const char *p, int *oom)
{
    char *d = p != NULL ? strdup(p) : NULL;
    *oom |= p != NULL && d == NULL;
    return d;
}

int ph_ssh_target_copy(SshTarget *d, const SshTarget *s)
{
    int oom = 0;
    *d = *s;
    d->host = dup_or_null(s->host, &oom);
    d->user = dup_or_null(s->user, &oom);
    d->agent = dup_or_null(s->agent, &oom);
    d->passphrase = dup_or_null(s->passphrase, &oom);
    d->known_hosts = dup_or_null(s->known_hosts, &oom);
    d->ids = s->nids > 0 ? calloc((size_t)s->nids, sizeof *d->ids) : NULL;
    oom |= s->nids > 0 && d->ids == NULL;
    d->nids = d->ids != NULL ? s->nids : 0;
    for (int i = 0; i < d->nids; i++) {
        d->ids[i] = s->ids[i];
        d->ids[i].text = dup_mem(s->ids[i].text, s->ids[i].len);
        d->ids[i].label = dup_or_null(s->ids[i].label, &oom);
        oom |= d->ids[i].text == NULL;
    }
    if (oom) {
        ph_ssh_target_free(d);
        return -1;
    }
    return 0;
}

static void dispatch_remove(SshJob *j);

static void free_write(SshWrite *w)
{
    if (w->ref != LUA_NOREF && ph_main_state() != NULL)
        luaL_unref(ph_main_state(), LUA_REGISTRYINDEX, w->ref);
    free(w);
}

static void free_writes(SshWrite **list)
{
    while (*list != NULL) {
        SshWrite *w = *list;
        *list = w->next;
        free_write(w);
    }
}

void ph_ssh_job_free(SshJob *j)
{
    dispatch_remove(j);
    ph_timer_free(&j->timer);
    ph_ssh_target_free(&j->t);
    if (j->cmd != NULL)
        free_secret(j->cmd, strlen(j->cmd)); /* commands may carry tokens */
    if (j->env != NULL) {
        for (int i = 0; j->env[i] != NULL; i++)
            free_secret(j->env[i], strlen(j->env[i]));
        free(j->env);
    }
    free_secret(j->in, j->in_len);
    free(j->path);
    free(j->hdr);
    free(j->msg);
    for (int k = 0; k < 2; k++) {
        ph_buf_free(&j->out[k]);
        if (j->cb[k] != LUA_NOREF && ph_main_state() != NULL)
            luaL_unref(ph_main_state(), LUA_REGISTRYINDEX, j->cb[k]);
    }
    free_writes(&j->wq); /* only writes whose tasks were answered are left by now */
    free_writes(&j->wdone);
    while (j->waiters != NULL) {
        SshWaiter *w = j->waiters;
        j->waiters = w->next;
        ph_timer_free(&w->timer);
        free(w);
    }
    free(j);
}

/* ---- warnings for host.log --------------------------------------------------------------- */

typedef struct Warning {
    struct Warning *next;
    char text[];
} Warning;

static Warning *warnings, **warnings_tail = &warnings;
static int warn_ref = LUA_NOREF;

void ph_ssh_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = ph_vprintf_alloc(fmt, ap);
    va_end(ap);
    if (s == NULL)
        return;
    size_t n = strlen(s);
    Warning *w = malloc(sizeof *w + n + 1);
    if (w != NULL) {
        memcpy(w->text, s, n + 1);
        w->next = NULL;
        *warnings_tail = w;
        warnings_tail = &w->next;
    }
    free(s);
}

/* Under ph_protect: the warning function gets one warning. */
static void call_warn(lua_State *L, void *ud)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, warn_ref);
    lua_pushstring(L, ((Warning *)ud)->text);
    lua_call(L, 1, 0);
}

static void flush_warnings(void)
{
    while (warnings != NULL) {
        Warning *w = warnings;
        warnings = w->next;
        if (warnings == NULL)
            warnings_tail = &warnings;
        if (warn_ref != LUA_NOREF)
            ph_protect(call_warn, w, "ssh warning callback failed", NULL);
        else
            ph_diag("provider-host: warn: %s", w->text);
        free(w);
    }
}

/* ---- the dispatcher: callbacks and answers, at the loop's top level ----------------------- */

static SshJob *dhead, *dtail;
static int dispatching;
static uv_timer_t *dispatch_timer;

static void on_dispatch_timer(uv_timer_t *t)
{
    ph_ssh_dispatch_run();
}

void ph_ssh_dispatch_add(SshJob *j)
{
    if (!j->dispatch) {
        j->dispatch = 1;
        j->dnext = NULL;
        if (dtail != NULL)
            dtail->dnext = j;
        else
            dhead = j;
        dtail = j;
    }
    /* Added from a cancel or close_all (Lua running): the loop runs the dispatcher soon. */
    if (dispatch_timer == NULL && (dispatch_timer = ph_timer_new(NULL)) == NULL)
        return;
    if (!dispatching)
        ph_timer_start(dispatch_timer, on_dispatch_timer, 0);
}

static void dispatch_remove(SshJob *j)
{
    if (!j->dispatch)
        return;
    SshJob **pp = &dhead, *prev = NULL;
    while (*pp != NULL && *pp != j) {
        prev = *pp;
        pp = &(*pp)->dnext;
    }
    if (*pp == j) {
        *pp = j->dnext;
        if (dtail == j)
            dtail = prev;
    }
    j->dispatch = 0;
}

/* {exit_code=, signal=, stdout=, stderr=, timed_out=, truncated=, duration=} */
static int push_exec_result(lua_State *co, SshJob *j)
{
    lua_createtable(co, 0, 7);
    if (j->has_exit && !j->timed_out) {
        lua_pushinteger(co, j->exit_code);
        lua_setfield(co, -2, "exit_code");
    }
    if (j->exit_signal[0] != '\0' && !j->timed_out) {
        lua_pushstring(co, j->exit_signal);
        lua_setfield(co, -2, "signal");
    }
    for (int k = 0; k < 2; k++) {
        lua_pushlstring(co, j->out[k].p != NULL ? j->out[k].p : "", j->out[k].len);
        lua_setfield(co, -2, k == SSH_OUT ? "stdout" : "stderr");
    }
    lua_pushboolean(co, j->timed_out);
    lua_setfield(co, -2, "timed_out");
    lua_pushboolean(co, j->truncated);
    lua_setfield(co, -2, "truncated");
    lua_pushnumber(co, ph_now() - j->started);
    lua_setfield(co, -2, "duration");
    return 1;
}

static void answer(SshJob *j)
{
    ph_task *t = j->op.task;
    lua_State *co = ph_task_thread(t);
    int n;
    j->op.task = NULL;
    if (!lua_checkstack(co, 8)) {
        n = 0; /* cannot happen on a parked task's frame */
    } else if (j->code != NULL) {
        n = ph_fail(co, j->code, "%s", j->msg != NULL ? j->msg : "ssh: out of memory");
    } else if (j->kind == JOB_EXEC) {
        n = push_exec_result(co, j);
    } else if (j->kind == JOB_FINGERPRINT) {
        lua_pushstring(co, j->fingerprint);
        n = 1;
    } else {
        lua_pushboolean(co, 1);
        n = 1;
    }
    ph_task_wake(t, n);
}

/* New output of one stream for its callback. */
typedef struct {
    SshJob *j;
    int which;
} Output;

/* Under ph_protect: on_stdout / on_stderr gets the bytes kept since the last call. */
static void call_output(lua_State *L, void *ud)
{
    Output *o = ud;
    SshJob *j = o->j;
    PhBuf *b = &j->out[o->which];
    lua_rawgeti(L, LUA_REGISTRYINDEX, j->cb[o->which]);
    lua_pushlstring(L, b->p + j->delivered[o->which], b->len - j->delivered[o->which]);
    j->delivered[o->which] = b->len;
    lua_call(L, 1, 0);
}

/* Hand new output to on_stdout / on_stderr: the kept bytes, in order, on the main thread. */
static void deliver(SshJob *j)
{
    for (int k = 0; k < 2 && j->op.task != NULL; k++) {
        if (j->cb[k] == LUA_NOREF || j->delivered[k] >= j->out[k].len)
            continue;
        Output o = { j, k };
        ph_protect(call_output, &o,
                   k == SSH_OUT ? "ssh on_stdout callback failed" : "ssh on_stderr callback failed",
                   NULL);
    }
}

/* ---- duplex channels (ssh.open): the Channel userdata and its side of the dispatcher ------ */

#define CHANNEL_MT "host.ssh.Channel" /* also the __name shown in argument errors */

/* User values of a Channel: its callbacks, which live exactly as long as it does. */
enum { UVAL_ON_STDOUT = 1, UVAL_ON_STDERR, UVAL_COUNT = UVAL_ON_STDERR };

/* The Channel userdata. While its command runs, job points at the job and the job anchors the
 * Channel (job->chan_ref), so callbacks keep firing whatever Lua does with its references;
 * the two let go of each other when the command ended (the outcome is copied here), when the
 * Channel is closed, or when the open failed. Created closed (closed-first): it opens when
 * ssh.open returns it. */
struct SshChan {
    SshJob *job;
    int closed;
    int ended; /* the outcome below is known */
    int has_exit, exit_code, timed_out;
    char signal[32];
    const char *code; /* the end was a failure: its code and message */
    char *msg;
    char *where; /* "host:port", for messages */
};

static SshChan *check_channel(lua_State *L)
{
    return luaL_checkudata(L, 1, CHANNEL_MT);
}

static const char *chan_where(const SshChan *c)
{
    return c->where != NULL ? c->where : "?";
}

/* Pops the Channel on top of L and links it with j, anchored. */
static void attach_channel(lua_State *L, SshJob *j, SshChan *ch)
{
    j->chan_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    j->chan = ch;
    ch->job = j;
}

/* The job and its Channel let go of each other; the Channel may be collected from now on. */
static void detach_channel(SshJob *j)
{
    if (j->chan == NULL)
        return;
    j->chan->job = NULL;
    j->chan = NULL;
    if (j->chan_ref != LUA_NOREF && ph_main_state() != NULL)
        luaL_unref(ph_main_state(), LUA_REGISTRYINDEX, j->chan_ref);
    j->chan_ref = LUA_NOREF;
}

/* Answer a write's task: true, or nil, msg, code. Lua-safe contexts only (never in libssh2). */
static void wake_write(SshJob *j, SshWrite *w, const char *code)
{
    ph_task *t = w->op.task;
    if (t == NULL)
        return;
    w->op.task = NULL;
    lua_State *co = ph_task_thread(t);
    int n = 0;
    if (!lua_checkstack(co, 4))
        n = 0; /* cannot happen on a parked task's frame */
    else if (code == NULL)
        lua_pushboolean(co, 1), n = 1;
    else if (strcmp(code, "canceled") == 0)
        n = ph_fail(co, code, "ssh: write to %s:%d canceled", j->t.host, j->t.port);
    else if (j->code != NULL && j->msg != NULL) /* why the channel ended: a lost connection... */
        n = ph_fail(co, code, "%s", j->msg);
    else if (j->timed_out)
        n = ph_fail(co, code, "ssh: write to %s:%d: the command timed out", j->t.host, j->t.port);
    else
        n = ph_fail(co, code, "ssh: write to %s:%d: the channel is closed", j->t.host, j->t.port);
    ph_task_wake(t, n);
}

/* Every queued write fails with code. Bytes not yet given to libssh2 are dropped; a write that
 * went partly stays at the head, without a task, for the call libssh2 must see again. */
static void fail_writes(SshJob *j, const char *code)
{
    SshWrite **pp = &j->wq;
    while (*pp != NULL) {
        SshWrite *w = *pp;
        wake_write(j, w, code);
        if (ph_ssh_write_started(j, w)) {
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        free_write(w);
    }
}

/* Finished writes: answered in order. */
static void answer_writes(SshJob *j)
{
    while (j->wdone != NULL) {
        SshWrite *w = j->wdone;
        j->wdone = w->next;
        wake_write(j, w, w->code);
        free_write(w);
    }
}

/* The outcome, as wait() gives it: {exit_code=, signal=, timed_out=} | nil, msg, code. */
static int push_channel_result(lua_State *L, const SshChan *c)
{
    if (c->code != NULL)
        return ph_fail(L, c->code, "%s", c->msg != NULL ? c->msg : "ssh: out of memory");
    lua_createtable(L, 0, 3);
    if (c->has_exit) {
        lua_pushinteger(L, c->exit_code);
        lua_setfield(L, -2, "exit_code");
    }
    if (c->signal[0] != '\0') {
        lua_pushstring(L, c->signal);
        lua_setfield(L, -2, "signal");
    }
    lua_pushboolean(L, c->timed_out);
    lua_setfield(L, -2, "timed_out");
    return 1;
}

static void unlink_waiter(SshJob *j, SshWaiter *w)
{
    for (SshWaiter **pp = &j->waiters; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    }
    w->next = NULL;
}

/* Answer every waiter: with c's outcome, or (c NULL: the Channel was closed) "closed". */
static void answer_waiters(SshJob *j, const SshChan *c)
{
    while (j->waiters != NULL) {
        SshWaiter *w = j->waiters;
        j->waiters = w->next;
        ph_task *t = w->op.task;
        ph_timer_free(&w->timer);
        free(w);
        lua_State *co = ph_task_thread(t);
        int n = 0;
        if (!lua_checkstack(co, 8))
            n = 0; /* cannot happen on a parked task's frame */
        else if (c != NULL)
            n = push_channel_result(co, c);
        else
            n = ph_fail(co, "closed", "ssh: channel to %s:%d was closed", j->t.host, j->t.port);
        ph_task_wake(t, n);
    }
}

/* The command is over (exit status, timeout, lost connection): keep the outcome in the
 * Channel, answer every write and wait, and let the Channel go. */
static void end_duplex(SshJob *j)
{
    SshChan *c = j->chan;
    c->ended = 1;
    if (j->code != NULL) {
        c->code = j->code;
        c->msg = strdup(j->msg != NULL ? j->msg : "ssh: out of memory");
    } else if (j->timed_out) {
        c->timed_out = 1;
    } else {
        c->has_exit = j->has_exit;
        c->exit_code = j->exit_code;
        memcpy(c->signal, j->exit_signal, sizeof c->signal);
    }
    fail_writes(j, "closed");
    answer_waiters(j, c);
    detach_channel(j);
}

/* ssh.open's task: the Channel, or why it did not open (then the Channel is let go). */
static void answer_open(SshJob *j)
{
    ph_task *t = j->op.task;
    lua_State *co = ph_task_thread(t);
    int n;
    j->op.task = NULL;
    if (!lua_checkstack(co, 8)) {
        n = 0; /* cannot happen on a parked task's frame */
    } else if (j->opened) {
        lua_rawgeti(co, LUA_REGISTRYINDEX, j->chan_ref);
        j->chan->closed = 0;
        n = 1;
    } else {
        n = ph_fail(co, j->code != NULL ? j->code : "internal", "%s",
                    j->msg != NULL ? j->msg : "ssh: out of memory");
        detach_channel(j);
    }
    ph_task_wake(t, n);
}

/* Under ph_protect: on_stdout / on_stderr gets the bytes read since the last call, which are
 * then dropped: a duplex keeps nothing once delivered. */
static void call_duplex_output(lua_State *L, void *ud)
{
    Output *o = ud;
    SshJob *j = o->j;
    PhBuf *b = &j->out[o->which];
    lua_rawgeti(L, LUA_REGISTRYINDEX, j->chan_ref);
    lua_getiuservalue(L, -1, o->which == SSH_OUT ? UVAL_ON_STDOUT : UVAL_ON_STDERR);
    lua_pushlstring(L, b->p, b->len);
    b->len = 0;
    lua_call(L, 1, 0);
}

static void deliver_duplex(SshJob *j)
{
    for (int k = 0; k < 2; k++) {
        if (j->chan == NULL || j->closing) /* closed: nothing is called any more */
            return;
        if (j->upaused) /* kept until resume_output, which reads on too */
            return;
        if (j->out[k].len == 0)
            continue;
        Output o = { j, k };
        ph_protect(call_duplex_output, &o,
                   k == SSH_OUT ? "ssh on_stdout callback failed" : "ssh on_stderr callback failed",
                   NULL);
    }
    if (j->rpaused && j->sess != NULL) { /* it stopped reading for us: read on */
        j->rpaused = 0;
        ph_ssh_kick(j->sess);
    }
}

/* The end must not overtake output the consumer paused (pause_output): it waits for
 * resume_output. A failure (a lost connection...) ends at once, the output kept goes. */
static int end_held(const SshJob *j)
{
    return j->upaused && j->code == NULL && (j->out[SSH_OUT].len > 0 || j->out[SSH_ERR].len > 0);
}

static void dispatch_duplex(SshJob *j)
{
    if (j->op.task != NULL && (j->opened || j->finished))
        answer_open(j);
    if (j->op.task == NULL)
        deliver_duplex(j); /* the output first: it came before the end */
    answer_writes(j);
    if (j->finished && j->op.task == NULL && j->chan != NULL && !end_held(j))
        end_duplex(j);
}

void ph_ssh_dispatch_run(void)
{
    if (dispatching || ph_main_state() == NULL)
        return;
    dispatching = 1;
    flush_warnings();
    SshJob *j;
    while ((j = dhead) != NULL) {
        dhead = j->dnext;
        if (dhead == NULL)
            dtail = NULL;
        j->dispatch = 0;
        j->dnext = NULL;
        if (j->kind == JOB_DUPLEX) {
            dispatch_duplex(j); /* callbacks may run anything, even close() or close_all */
        } else {
            if (j->op.task != NULL && j->kind == JOB_EXEC)
                deliver(j); /* may run anything, even close_all or a cancel of this task */
            if (j->op.task != NULL && j->finished)
                answer(j);
        }
        if (j->freed_pending && j->op.task == NULL && !j->dispatch && j->chan == NULL)
            ph_ssh_job_free(j);
    }
    flush_warnings();
    dispatching = 0;
}

/* ---- options ------------------------------------------------------------------------------- */


/* A string without NUL bytes (C strings all the way down); left on the stack. */
static const char *opt_string(lua_State *L, const char *fname, const char *field, int required,
                              size_t *len)
{
    size_t n = 0;
    if (!ph_opt_field_in(L, fname, field, LUA_TSTRING)) {
        if (required)
            ph_argerror_in(L, fname, "field '%s' is required", field);
        if (len != NULL)
            *len = 0;
        return NULL;
    }
    const char *s = lua_tolstring(L, -1, &n);
    if (strlen(s) != n)
        ph_argerror_in(L, fname, "field '%s' must not contain a NUL byte", field);
    if (len != NULL)
        *len = n;
    return s;
}

#define MAX_IDS 16 /* identities per call: OpenSSH's defaults are 7, a config adds a few */

/* Everything a call asked for, pointing into Lua strings that stay on the stack. */
typedef struct {
    const char *host, *user, *passphrase, *known_hosts, *cmd, *in, *path, *data, *agent;
    const char *key[MAX_IDS], *label[MAX_IDS];
    size_t key_len[MAX_IDS], in_len, data_len;
    int nkeys, port, policy, mode;
    double timeout, connect_timeout, keepalive, idle, open_timeout; /* timeout < 0: none */
    lua_Integer max_output;
    int env, cb[2]; /* stack indexes, 0 when absent */
} Conf;

static void add_key(lua_State *L, const char *fname, Conf *c, const char *label)
{
    size_t n;
    const char *text = lua_tolstring(L, -1, &n);
    if (n == 0 || n > MAX_KEY)
        ph_argerror_in(L, fname, "a private key must hold 1 to %d bytes", MAX_KEY);
    if (c->nkeys == MAX_IDS)
        ph_argerror_in(L, fname, "at most %d keys", MAX_IDS);
    c->key[c->nkeys] = text;
    c->key_len[c->nkeys] = n;
    c->label[c->nkeys] = label;
    c->nkeys++;
}

/* key (one key text), keys ({ {key=, label=}, ... }: tried in order) and agent (a socket
 * path). The strings stay on the stack for the rest of the call. */
static void read_identities(lua_State *L, const char *fname, Conf *c)
{
    if (ph_opt_field_in(L, fname, "key", LUA_TSTRING))
        add_key(L, fname, c, NULL);
    if (ph_opt_field_in(L, fname, "keys", LUA_TTABLE)) {
        int list = lua_gettop(L);
        lua_Integer count = luaL_len(L, list);
        luaL_checkstack(L, 2 * MAX_IDS + 4, "ssh keys");
        for (lua_Integer i = 1; i <= count; i++) {
            if (lua_rawgeti(L, list, i) != LUA_TTABLE)
                ph_argerror_in(L, fname, "keys[%I] must be a table {key=, label=}", i);
            int entry = lua_gettop(L);
            const char *label = NULL;
            if (lua_getfield(L, entry, "label") == LUA_TSTRING)
                label = lua_tostring(L, -1);
            else if (!lua_isnil(L, -1))
                ph_argerror_in(L, fname, "keys[%I].label must be a string", i);
            if (lua_getfield(L, entry, "key") != LUA_TSTRING)
                ph_argerror_in(L, fname, "keys[%I].key must be a string", i);
            add_key(L, fname, c, label);
        }
    }
    c->agent = opt_string(L, fname, "agent", 0, NULL);
    if (c->agent != NULL && c->agent[0] == '\0')
        c->agent = NULL;
}

static void read_target(lua_State *L, const char *fname, int need_auth, Conf *c)
{
    size_t n;
    c->host = opt_string(L, fname, "host", 1, &n);
    if (n == 0 || n > MAX_HOST)
        ph_argerror_in(L, fname, "field 'host' must be a host name or address");
    c->port = (int)ph_opt_integer_in(L, fname, "port", 22, 1, 65535);
    c->user = opt_string(L, fname, "user", need_auth, &n);
    if (need_auth && n == 0)
        ph_argerror_in(L, fname, "field 'user' must not be empty");
    read_identities(L, fname, c);
    if (need_auth && c->nkeys == 0 && c->agent == NULL)
        ph_argerror_in(L, fname, "field 'key' is required (or 'keys', or 'agent')");
    c->passphrase = opt_string(L, fname, "passphrase", 0, &n);
    if (c->passphrase != NULL && n == 0)
        c->passphrase = NULL; /* "" means none */
    const char *policy = opt_string(L, fname, "host_key_policy", 0, NULL);
    if (policy == NULL || strcmp(policy, "accept-new") == 0)
        c->policy = SSH_POLICY_ACCEPT_NEW;
    else if (strcmp(policy, "yes") == 0)
        c->policy = SSH_POLICY_YES;
    else if (strcmp(policy, "no") == 0)
        c->policy = SSH_POLICY_NO;
    else
        ph_argerror_in(L, fname,
                       "field 'host_key_policy' must be \"accept-new\", \"yes\" or \"no\"");
    c->known_hosts = opt_string(L, fname, "known_hosts", 0, &n);
    if (c->known_hosts != NULL && n == 0)
        ph_argerror_in(L, fname, "field 'known_hosts' must be a file path");
    if (c->known_hosts == NULL && c->policy != SSH_POLICY_NO && need_auth)
        ph_argerror_in(L, fname,
                       "field 'known_hosts' is required unless host_key_policy is \"no\"");
    c->timeout = ph_opt_seconds_in(L, fname, "timeout", DEFAULT_TIMEOUT, 0);
    c->connect_timeout = ph_opt_seconds_in(L, fname, "connect_timeout", DEFAULT_CONNECT_TIMEOUT, 0);
    c->keepalive = ph_opt_seconds_in(L, fname, "keepalive", DEFAULT_KEEPALIVE, 1);
    c->idle = ph_opt_seconds_in(L, fname, "idle_timeout", DEFAULT_IDLE, 0);
}

/* exec's options, or open's (duplex): no stdin string and no max_output (nothing is kept),
 * an open_timeout, and no deadline unless a timeout is given. */
static void read_exec(lua_State *L, const char *fname, int duplex, Conf *c)
{
    size_t n;
    c->cmd = opt_string(L, fname, "cmd", 1, &n);
    if (n == 0)
        ph_argerror_in(L, fname, "field 'cmd' must not be empty");
    if (duplex) {
        if (lua_getfield(L, 1, "timeout") == LUA_TNIL)
            c->timeout = -1;
        lua_pop(L, 1);
        c->open_timeout = ph_opt_seconds_in(L, fname, "open_timeout", DEFAULT_OPEN_TIMEOUT, 0);
    } else if (ph_opt_field_in(L, fname, "stdin", LUA_TSTRING)) {
        c->in = lua_tolstring(L, -1, &c->in_len); /* binary is fine here */
    }
    if (ph_opt_field_in(L, fname, "env", LUA_TTABLE)) {
        c->env = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, c->env) != 0) {
            size_t kl, vl;
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
                ph_argerror_in(L, fname, "field 'env' must map names to strings");
            const char *k = lua_tolstring(L, -2, &kl), *v = lua_tolstring(L, -1, &vl);
            if (kl == 0 || strlen(k) != kl || strchr(k, '=') != NULL)
                ph_argerror_in(L, fname, "env name '%s' is not a valid name", k);
            if (strlen(v) != vl)
                ph_argerror_in(L, fname, "env value of '%s' must not contain a NUL byte", k);
            lua_pop(L, 1);
        }
    }
    for (int k = 0; k < 2; k++) {
        if (ph_opt_field_in(L, fname, k == SSH_OUT ? "on_stdout" : "on_stderr", LUA_TFUNCTION))
            c->cb[k] = lua_gettop(L);
    }
    if (!duplex)
        c->max_output =
            ph_opt_integer_in(L, fname, "max_output", DEFAULT_MAX_OUTPUT, 0, (lua_Integer)1 << 40);
}

static void read_upload(lua_State *L, Conf *c)
{
    static const char fname[] = "upload";
    size_t n;
    c->path = opt_string(L, fname, "path", 1, &n);
    if (n == 0 || strchr(c->path, '\n') != NULL || strchr(c->path, '\r') != NULL ||
        c->path[n - 1] == '/')
        ph_argerror_in(L, fname, "field 'path' must be a file path without line breaks");
    if (!ph_opt_field_in(L, fname, "data", LUA_TSTRING))
        ph_argerror_in(L, fname, "field 'data' is required");
    c->data = lua_tolstring(L, -1, &c->data_len);
    c->mode = (int)ph_opt_integer_in(L, fname, "mode", 0644, 0, 07777);
}

/* The pool key: every setting that changes what a session is, or may do. */
static void target_id(SshTarget *t)
{
    ph_sha256_ctx h;
    char port[16];
    ph_sha256_init(&h);
    const char *parts[] = { t->host, t->user, t->known_hosts };
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        ph_sha256_update(&h, parts[i] ? parts[i] : "", (parts[i] ? strlen(parts[i]) : 0) + 1);
    snprintf(port, sizeof port, "%d/%d/%d", t->port, t->policy, t->nids);
    ph_sha256_update(&h, port, strlen(port) + 1);
    ph_sha256_update(&h, t->agent ? t->agent : "", (t->agent ? strlen(t->agent) : 0) + 1);
    for (int i = 0; i < t->nids; i++) {
        char len[24];
        snprintf(len, sizeof len, "%zu", t->ids[i].len);
        ph_sha256_update(&h, len, strlen(len) + 1);
        ph_sha256_update(&h, t->ids[i].text, t->ids[i].len);
    }
    ph_sha256_final(&h, t->id);
}

static int build_target(SshTarget *t, const Conf *c, const int *rsa)
{
    int oom = 0;
    memset(t, 0, sizeof *t);
    t->host = dup_or_null(c->host, &oom);
    t->port = c->port;
    t->user = dup_or_null(c->user, &oom);
    t->agent = dup_or_null(c->agent, &oom);
    t->passphrase = dup_or_null(c->passphrase, &oom);
    t->policy = c->policy;
    t->known_hosts = dup_or_null(c->known_hosts, &oom);
    t->connect_timeout = c->connect_timeout;
    t->keepalive = c->keepalive;
    t->idle_timeout = c->idle;
    if (c->nkeys > 0) {
        t->ids = calloc((size_t)c->nkeys, sizeof *t->ids);
        if (t->ids == NULL)
            return -1;
        t->nids = c->nkeys;
        for (int i = 0; i < c->nkeys; i++) {
            t->ids[i].text = dup_mem(c->key[i], c->key_len[i]);
            t->ids[i].len = c->key_len[i];
            t->ids[i].label = dup_or_null(c->label[i] ? c->label[i] : "key", &oom);
            t->ids[i].rsa = rsa[i];
            oom |= t->ids[i].text == NULL;
        }
    }
    if (oom)
        return -1;
    target_id(t);
    return 0;
}

static char **build_env(lua_State *L, int idx)
{
    size_t count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        count++;
        lua_pop(L, 1);
    }
    char **env = calloc(2 * count + 1, sizeof *env);
    if (env == NULL)
        return NULL;
    size_t i = 0;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        env[i] = strdup(lua_tostring(L, -2));
        env[i + 1] = strdup(lua_tostring(L, -1));
        lua_pop(L, 1);
        if (env[i] == NULL || env[i + 1] == NULL) {
            lua_pop(L, 1);
            for (size_t k = 0; k <= i + 1; k++)
                free(env[k]);
            free(env);
            return NULL;
        }
        i += 2;
    }
    return env;
}

/* "scp -t '<path>'": the remote sink, the path single-quoted for the remote shell. */
static char *scp_command(const char *path)
{
    size_t n = strlen(path), quotes = 0;
    for (size_t i = 0; i < n; i++)
        quotes += path[i] == '\'';
    char *cmd = malloc(8 + n + 3 * quotes + 3);
    if (cmd == NULL)
        return NULL;
    char *o = cmd;
    memcpy(o, "scp -t '", 8);
    o += 8;
    for (size_t i = 0; i < n; i++) {
        if (path[i] == '\'') {
            memcpy(o, "'\\''", 4); /* close, escaped quote, reopen */
            o += 4;
        } else {
            *o++ = path[i];
        }
    }
    *o++ = '\'';
    *o = '\0';
    return cmd;
}

/* Check every private key before connecting: a key that cannot work fails the call ("auth")
 * at once, naming it. Returns 0 with rsa[] filled, or the count of values pushed. */
static int check_keys(lua_State *L, const Conf *c, int rsa[MAX_IDS])
{
    for (int i = 0; i < c->nkeys; i++) {
        SshKeyInfo info;
        const char *why = NULL;
        memset(&info, 0, sizeof info);
        if (ph_ssh_key_check(c->key[i], c->key_len[i], c->passphrase != NULL, &info, &why) != 0) {
            if (c->label[i] == NULL)
                return ph_fail(L, "auth", "%s", why);
            return ph_fail(L, "auth", "%s (%s)", why, c->label[i]);
        }
        rsa[i] = info.rsa;
    }
    return 0;
}

/* The command, its stdin and its environment, copied into the job. 0, or -1 without memory. */
static int fill_exec(lua_State *L, SshJob *j, const Conf *c)
{
    if ((j->cmd = strdup(c->cmd)) == NULL)
        return -1;
    if (c->in != NULL && c->in_len > 0) {
        if ((j->in = dup_mem(c->in, c->in_len)) == NULL)
            return -1;
        j->in_len = c->in_len;
    }
    if (c->env != 0) {
        if ((j->env = build_env(L, c->env)) == NULL)
            return -1;
        if (j->env[0] == NULL) { /* an empty table: nothing to send */
            free(j->env);
            j->env = NULL;
        }
    }
    return 0;
}

/* scp's command, its "C<mode> <size> <name>" header, and the bytes. 0, or -1 without memory. */
static int fill_upload(SshJob *j, const Conf *c)
{
    const char *base = strrchr(c->path, '/');
    j->path = strdup(c->path);
    j->cmd = scp_command(c->path);
    j->hdr =
        ph_printf_alloc("C%04o %zu %s\n", c->mode, c->data_len, base != NULL ? base + 1 : c->path);
    j->in = malloc(c->data_len + 1); /* the bytes, then the NUL that closes an scp file */
    j->mode = c->mode;
    if (j->path == NULL || j->cmd == NULL || j->hdr == NULL || j->in == NULL)
        return -1;
    j->hdr_len = strlen(j->hdr);
    memcpy(j->in, c->data, c->data_len);
    j->in[c->data_len] = '\0';
    j->in_len = c->data_len + 1;
    return 0;
}

/* The job for a checked call; NULL without memory. */
static SshJob *new_job(lua_State *L, int kind, const Conf *c, const int *rsa)
{
    SshJob *j = calloc(1, sizeof *j);
    if (j == NULL)
        return NULL;
    j->kind = kind;
    j->cb[0] = j->cb[1] = LUA_NOREF;
    j->started = ph_now();
    j->timeout = c->timeout;
    j->open_timeout = c->open_timeout;
    j->chan_ref = LUA_NOREF;
    j->max_output = kind == JOB_EXEC ? (size_t)c->max_output : 4096;
    int oom = build_target(&j->t, c, rsa) != 0;
    if (!oom && (kind == JOB_EXEC || kind == JOB_DUPLEX))
        oom = fill_exec(L, j, c) != 0;
    else if (!oom && kind == JOB_UPLOAD)
        oom = fill_upload(j, c) != 0;
    if (oom) {
        ph_ssh_job_free(j);
        return NULL;
    }
    return j;
}

/* A closed Channel with its callbacks as user values; left on the stack. */
static SshChan *new_channel(lua_State *L, const Conf *c)
{
    SshChan *ch = lua_newuserdatauv(L, sizeof *ch, UVAL_COUNT);
    memset(ch, 0, sizeof *ch);
    ch->closed = 1;
    luaL_setmetatable(L, CHANNEL_MT);
    for (int k = 0; k < 2; k++) {
        if (c->cb[k] != 0) {
            lua_pushvalue(L, c->cb[k]);
            lua_setiuservalue(L, -2, k == SSH_OUT ? UVAL_ON_STDOUT : UVAL_ON_STDERR);
        }
    }
    ch->where = ph_printf_alloc("%s:%d", c->host, c->port);
    return ch;
}

/* Validate, make the job, start it and park the task. Misuse raises before anything starts;
 * a bad private key fails ("auth") before connecting. */
static int start(lua_State *L, int kind, const char *fname)
{
    Conf c;
    memset(&c, 0, sizeof c);
    if (lua_type(L, 1) != LUA_TTABLE)
        ph_argerror_in(L, fname, "table expected, got %s", luaL_typename(L, 1));
    lua_settop(L, 1);
    luaL_checkstack(L, 40, "ssh options");
    read_target(L, fname, kind != JOB_FINGERPRINT, &c);
    if (kind == JOB_EXEC || kind == JOB_DUPLEX)
        read_exec(L, fname, kind == JOB_DUPLEX, &c);
    else if (kind == JOB_UPLOAD)
        read_upload(L, &c);
    ph_task *task = ph_task_current(L); /* raises outside a task */
    if (ph_task_is_canceled(task))
        return ph_fail(L, "canceled", "ssh: %s:%d: canceled", c.host, c.port);
    int rsa[MAX_IDS] = { 0 };
    int n = check_keys(L, &c, rsa);
    if (n != 0)
        return n;

    SshChan *ch = kind == JOB_DUPLEX ? new_channel(L, &c) : NULL; /* closed, before the job */
    SshJob *j = new_job(L, kind, &c, rsa);
    if (j == NULL)
        return ph_fail(L, "internal", "ssh: out of memory");
    if (ch != NULL) {
        /* Paused until ssh.lua's open resumes it: no callback runs before the caller holds
         * the Channel, which a callback may want to pause. */
        j->upaused = 1;
        for (int k = 0; k < 2; k++)
            j->has_cb[k] = c.cb[k] != 0;
        attach_channel(L, j, ch); /* pops the Channel: anchored until the command is over */
    } else {
        for (int k = 0; k < 2; k++) {
            if (c.cb[k] != 0) {
                lua_pushvalue(L, c.cb[k]);
                j->cb[k] = luaL_ref(L, LUA_REGISTRYINDEX);
            }
        }
    }
    j->op.cancel = ph_ssh_job_cancel;
    if (ph_ssh_job_start(j) != 0) {
        detach_channel(j);
        ph_ssh_job_free(j);
        return ph_fail(L, "internal", "ssh: cannot start a session for %s:%d", c.host, c.port);
    }
    lua_settop(L, 0);
    return ph_task_park(L, task, &j->op);
}

/* ---- module functions ----------------------------------------------------------------------- */

/* ssh.exec{host=, port=, user=, key=, passphrase=, host_key_policy=, known_hosts=, cmd=,
 *          stdin=, env=, timeout=, connect_timeout=, keepalive=, idle_timeout=,
 *          max_output=, on_stdout=, on_stderr=}
 *   -> {exit_code=, signal=, stdout=, stderr=, timed_out=, truncated=, duration=}
 *    | nil, msg, "dns"|"connect"|"auth"|"protocol"|"timeout"|"closed"|"canceled"|"io" */
static int ssh_exec(lua_State *L)
{
    return start(L, JOB_EXEC, "exec");
}

/* ssh.open{...connection options..., cmd=, env=, on_stdout=, on_stderr=, timeout=,
 *          open_timeout=} -> Channel | nil, msg, code: once the exec request was accepted. */
static int ssh_open(lua_State *L)
{
    return start(L, JOB_DUPLEX, "open");
}

/* ssh.upload{...connection options..., path=, data=, mode=} -> true | nil, msg, code */
static int ssh_upload(lua_State *L)
{
    return start(L, JOB_UPLOAD, "upload");
}

/* ssh.fingerprint{host=, port=, connect_timeout=, timeout=} -> "SHA256:..." | nil, msg, code */
static int ssh_fingerprint(lua_State *L)
{
    return start(L, JOB_FINGERPRINT, "fingerprint");
}

/* ssh.key_info(text [, has_passphrase]) -> {type=, encrypted=, rsa=} | nil, msg, "auth": what a
 * private key is, without using it (lets callers skip keys OpenSSH could not use either). */
static int ssh_key_info(lua_State *L)
{
    size_t n;
    const char *text = luaL_checklstring(L, 1, &n);
    SshKeyInfo info;
    const char *why = NULL;
    memset(&info, 0, sizeof info);
    if (ph_ssh_key_check(text, n, lua_toboolean(L, 2), &info, &why) != 0 && !info.encrypted)
        return ph_fail(L, "auth", "%s", why);
    lua_createtable(L, 0, 3);
    lua_pushstring(L, info.type);
    lua_setfield(L, -2, "type");
    lua_pushboolean(L, info.encrypted);
    lua_setfield(L, -2, "encrypted");
    lua_pushboolean(L, info.rsa);
    lua_setfield(L, -2, "rsa");
    return 1;
}

/* ssh.close_all(): close every session; running operations fail with "closed". */
static int ssh_close_all(lua_State *L)
{
    ph_ssh_close_all();
    return 0;
}

/* ssh.stats() -> {sessions=, channels=, queued=, connects=} */
static int ssh_stats(lua_State *L)
{
    int sessions, channels, queued;
    ph_ssh_stats(&sessions, &channels, &queued);
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, sessions);
    lua_setfield(L, -2, "sessions");
    lua_pushinteger(L, channels);
    lua_setfield(L, -2, "channels");
    lua_pushinteger(L, queued);
    lua_setfield(L, -2, "queued");
    lua_pushinteger(L, (lua_Integer)ph_ssh_connects);
    lua_setfield(L, -2, "connects");
    return 1;
}

/* ssh.set_warn(fn | nil): fn(message) receives warnings (host key checking off). */
static int ssh_set_warn(lua_State *L)
{
    if (!lua_isnoneornil(L, 1))
        luaL_checktype(L, 1, LUA_TFUNCTION);
    if (warn_ref != LUA_NOREF)
        luaL_unref(L, LUA_REGISTRYINDEX, warn_ref);
    warn_ref = LUA_NOREF;
    if (!lua_isnoneornil(L, 1)) {
        lua_pushvalue(L, 1);
        warn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    return 0;
}

/* ---- Channel methods ------------------------------------------------------------------------- */

/* Take w out of list; 1 when it was there. */
static int unlink_write(SshWrite **list, SshWrite *w)
{
    for (SshWrite **pp = list; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            return 1;
        }
    }
    return 0;
}

/* A write's task went away: it answers "canceled" now. A write not begun is dropped; one that
 * went partly goes out whole in the background, so the stream never carries half a write. */
static void write_cancel(ph_op *op)
{
    SshWrite *w = (SshWrite *)op;
    SshJob *j = w->job;
    ph_task *t = op->task;
    op->task = NULL;
    if (!ph_ssh_write_started(j, w) && (unlink_write(&j->wq, w) || unlink_write(&j->wdone, w)))
        free_write(w);
    ph_task_wake(t, ph_fail(ph_task_thread(t), "canceled", "ssh: write to %s:%d canceled",
                            j->t.host, j->t.port));
}

/* channel:write(data) -> true | nil, msg, "closed"|"canceled"
 * Yields until libssh2 took every byte (the SSH window is the back-pressure); writes of
 * several tasks go out in call order, each whole. */
static int channel_write(lua_State *L)
{
    SshChan *c = check_channel(L);
    luaL_checktype(L, 2, LUA_TSTRING);
    size_t n;
    const char *data = lua_tolstring(L, 2, &n);
    ph_task *t = ph_task_current(L);
    SshJob *j = c->job;
    if (ph_task_is_canceled(t))
        return ph_fail(L, "canceled", "ssh: write to %s canceled", chan_where(c));
    if (c->closed)
        return ph_fail(L, "closed", "ssh: write on a closed channel");
    if (j == NULL || j->finished || j->closing || j->stdin_dead || j->sess == NULL)
        return ph_fail(L, "closed", "ssh: write to %s: the channel is closed", chan_where(c));
    if (j->want_eof)
        return ph_fail(L, "closed", "ssh: write to %s: stdin was closed (close_stdin)",
                       chan_where(c));
    if (n == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushvalue(L, 2);
    int ref = luaL_ref(L, LUA_REGISTRYINDEX); /* the bytes stay where they are: no copy */
    SshWrite *w = calloc(1, sizeof *w);
    if (w == NULL) {
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
        return ph_fail(L, "internal", "ssh: out of memory");
    }
    w->op.cancel = write_cancel;
    w->job = j;
    w->p = data;
    w->len = n;
    w->ref = ref;
    SshWrite **tail = &j->wq;
    while (*tail != NULL)
        tail = &(*tail)->next;
    *tail = w;
    ph_ssh_kick(j->sess);
    return ph_task_park(L, t, &w->op);
}

/* channel:close_stdin() -> true: EOF to the command once the writes queued before it are out.
 * Idempotent; later writes fail with "closed". */
static int channel_close_stdin(lua_State *L)
{
    SshChan *c = check_channel(L);
    SshJob *j = c->job;
    if (j != NULL && !j->want_eof) {
        j->want_eof = 1;
        if (j->sess != NULL)
            ph_ssh_kick(j->sess);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* channel:pause_output() -> true: no on_stdout / on_stderr call until resume_output, even
 * from inside one of them. What was read stays here; reading stops (mod_ssh_channel.c's
 * io_pump), so the SSH window stalls the command. Idempotent. */
static int channel_pause_output(lua_State *L)
{
    SshChan *c = check_channel(L);
    if (c->job != NULL)
        c->job->upaused = 1;
    lua_pushboolean(L, 1);
    return 1;
}

/* channel:resume_output() -> true: the dispatcher delivers what was kept, in order (never from
 * inside this call: a task may not be where a callback should run), then the session reads
 * on. Idempotent. */
static int channel_resume_output(lua_State *L)
{
    SshChan *c = check_channel(L);
    SshJob *j = c->job;
    if (j != NULL && j->upaused) {
        j->upaused = 0;
        ph_ssh_dispatch_add(j); /* the output kept, then the end if it came meanwhile */
        if (j->sess != NULL) {
            j->rpaused = 0;
            ph_ssh_kick(j->sess); /* what libssh2 queued has no socket event to announce it */
        }
    }
    lua_pushboolean(L, 1);
    return 1;
}

static void waiter_cancel(ph_op *op)
{
    SshWaiter *w = (SshWaiter *)op;
    SshJob *j = w->job;
    ph_task *t = op->task;
    unlink_waiter(j, w);
    ph_timer_free(&w->timer);
    free(w);
    ph_task_wake(t, ph_fail(ph_task_thread(t), "canceled", "ssh: wait for %s:%d canceled",
                            j->t.host, j->t.port));
}

static void on_wait_timer(uv_timer_t *tm)
{
    SshWaiter *w = tm->data;
    SshJob *j = w->job;
    ph_task *t = w->op.task;
    double timeout = w->timeout;
    unlink_waiter(j, w);
    ph_timer_free(&w->timer);
    free(w);
    char secs[32]; /* ph_fail formats with lua_pushfstring, which has no %g */
    snprintf(secs, sizeof secs, "%g", timeout);
    ph_task_wake(t, ph_fail(ph_task_thread(t), "timeout",
                            "ssh: wait for %s:%d timed out after %ss (the command runs on)",
                            j->t.host, j->t.port, secs));
}

/* channel:wait([timeout]) -> {exit_code=, signal=, timed_out=} | nil, msg, code
 * Until the command ends. "timeout": this wait's own limit passed, the command runs on;
 * "closed": the channel was closed or the connection lost; "canceled". */
static int channel_wait(lua_State *L)
{
    SshChan *c = check_channel(L);
    double timeout = -1;
    if (!lua_isnoneornil(L, 2)) {
        timeout = luaL_checknumber(L, 2);
        luaL_argcheck(L, timeout >= 0 && timeout <= 1e9, 2,
                      "timeout must be a number of seconds in [0, 1e9]");
    }
    if (c->closed)
        return ph_fail(L, "closed", "ssh: wait on a closed channel");
    if (c->ended)
        return push_channel_result(L, c);
    ph_task *t = ph_task_current(L);
    if (ph_task_is_canceled(t))
        return ph_fail(L, "canceled", "ssh: wait for %s canceled", chan_where(c));
    SshJob *j = c->job;
    SshWaiter *w = calloc(1, sizeof *w);
    if (w == NULL)
        return ph_fail(L, "internal", "ssh: out of memory");
    w->op.cancel = waiter_cancel;
    w->job = j;
    w->timeout = timeout;
    if (timeout >= 0) {
        if ((w->timer = ph_timer_new(w)) == NULL) {
            free(w);
            return ph_fail(L, "internal", "ssh: out of memory");
        }
        ph_timer_start(w->timer, on_wait_timer, timeout);
    }
    SshWaiter **tail = &j->waiters;
    while (*tail != NULL)
        tail = &(*tail)->next;
    *tail = w;
    return ph_task_park(L, t, &w->op);
}

/* channel:close(); also __close and __gc, so idempotent. The channel is closed (EOF, then
 * CLOSE: sshd closes the command's pipes, see mod_ssh_session.c on signals) and torn down in
 * the background; pending writes and waits fail with "closed"; no callback runs any more. */
static int channel_close(lua_State *L)
{
    SshChan *c = check_channel(L);
    SshJob *j = c->job;
    c->closed = 1;
    if (j != NULL) {
        detach_channel(j);
        j->closing = 1;
        fail_writes(j, "closed");
        answer_waiters(j, NULL);
        for (int k = 0; k < 2; k++)
            ph_buf_free(&j->out[k]); /* undelivered output goes */
        if (!j->finished) {
            ph_ssh_job_fail(j, "closed", "ssh: %s:%d: channel closed", j->t.host, j->t.port);
            ph_ssh_job_finish(j);
        }
        if (j->sess != NULL)
            ph_ssh_kick(j->sess); /* tears the channel down */
        ph_ssh_dispatch_add(j);   /* frees the job once its channel is gone */
    }
    free(c->msg);
    c->msg = NULL;
    c->code = NULL;
    free(c->where);
    c->where = NULL;
    return 0;
}

static int channel_tostring(lua_State *L)
{
    SshChan *c = check_channel(L);
    const char *state = c->closed ? "closed" : c->ended ? "ended" : "running";
    lua_pushfstring(L, "%s (%s, %s): %p", CHANNEL_MT, chan_where(c), state, (void *)c);
    return 1;
}

static const luaL_Reg channel_methods[] = {
    { "write", channel_write },
    { "close_stdin", channel_close_stdin },
    { "wait", channel_wait },
    { "pause_output", channel_pause_output },
    { "resume_output", channel_resume_output },
    { "close", channel_close },
    { NULL, NULL },
};

static const luaL_Reg channel_meta[] = {
    { "__gc", channel_close }, /* only reached once the command is over: anchored till then */
    { "__close", channel_close },
    { "__tostring", channel_tostring },
    { NULL, NULL },
};

static const luaL_Reg ssh_funcs[] = {
    { "exec", ssh_exec },
    { "open", ssh_open },
    { "upload", ssh_upload },
    { "fingerprint", ssh_fingerprint },
    { "key_info", ssh_key_info },
    { "close_all", ssh_close_all },
    { "stats", ssh_stats },
    { "set_warn", ssh_set_warn },
    { NULL, NULL },
};

int luaopen_host_core_ssh(lua_State *L)
{
    static int initialized;
    if (!initialized) { /* once per process; busted re-requires the module per spec file */
        if (libssh2_init(0) != 0)
            return luaL_error(L, "host.core.ssh: libssh2_init failed");
        initialized = 1;
    }
    if (luaL_newmetatable(L, CHANNEL_MT)) { /* busted re-requires per spec file */
        luaL_setfuncs(L, channel_meta, 0);
        luaL_newlib(L, channel_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    luaL_newlib(L, ssh_funcs);
    return 1;
}
