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
        if (j->op.task != NULL && j->kind == JOB_EXEC)
            deliver(j); /* may run anything, even close_all or a cancel of this task */
        if (j->op.task != NULL && j->finished)
            answer(j);
        if (j->freed_pending && j->op.task == NULL && !j->dispatch)
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
    double timeout, connect_timeout, keepalive, idle;
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

static void read_exec(lua_State *L, Conf *c)
{
    static const char fname[] = "exec";
    size_t n;
    c->cmd = opt_string(L, fname, "cmd", 1, &n);
    if (n == 0)
        ph_argerror_in(L, fname, "field 'cmd' must not be empty");
    if (ph_opt_field_in(L, fname, "stdin", LUA_TSTRING))
        c->in = lua_tolstring(L, -1, &c->in_len); /* binary is fine here */
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
    j->max_output = kind == JOB_EXEC ? (size_t)c->max_output : 4096;
    int oom = build_target(&j->t, c, rsa) != 0;
    if (!oom && kind == JOB_EXEC)
        oom = fill_exec(L, j, c) != 0;
    else if (!oom && kind == JOB_UPLOAD)
        oom = fill_upload(j, c) != 0;
    if (oom) {
        ph_ssh_job_free(j);
        return NULL;
    }
    return j;
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
    if (kind == JOB_EXEC)
        read_exec(L, &c);
    else if (kind == JOB_UPLOAD)
        read_upload(L, &c);
    ph_task *task = ph_task_current(L); /* raises outside a task */
    if (ph_task_is_canceled(task))
        return ph_fail(L, "canceled", "ssh: %s:%d: canceled", c.host, c.port);
    int rsa[MAX_IDS] = { 0 };
    int n = check_keys(L, &c, rsa);
    if (n != 0)
        return n;

    SshJob *j = new_job(L, kind, &c, rsa);
    if (j == NULL)
        return ph_fail(L, "internal", "ssh: out of memory");
    for (int k = 0; k < 2; k++) {
        if (c.cb[k] != 0) {
            lua_pushvalue(L, c.cb[k]);
            j->cb[k] = luaL_ref(L, LUA_REGISTRYINDEX);
        }
    }
    j->op.cancel = ph_ssh_job_cancel;
    if (ph_ssh_job_start(j) != 0) {
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

static const luaL_Reg ssh_funcs[] = {
    { "exec", ssh_exec },
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
    luaL_newlib(L, ssh_funcs);
    return 1;
}
