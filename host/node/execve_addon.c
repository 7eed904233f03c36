/* execve_addon.c - execve.node, the package shim's Node-API addon: Node becomes the worker. */
#define NAPI_VERSION 3 /* Node-API 3 and older only: any Node >= 10 loads this addon */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* What replace() changed in this process, so a failed execve can put it back and Node (and
 * the shim's spawn fallback) go on as if nothing had happened. */
typedef struct {
    sigset_t mask;
    struct sigaction act[NSIG];
    char reset[NSIG]; /* act[sig] was replaced by SIG_DFL */
    int flags[3];     /* F_GETFL of fds 0-2, -1 when unknown */
    int fdflags[3];   /* F_GETFD of fds 0-2, -1 when unknown */
} Saved;

/* Every fd but 0-2 is to be closed by execve. Above all the IPC channel fork() put on fd 3:
 * the worker never reads it, and left open it would pass it on to every command it runs
 * (mod_proc keeps inherited fds), which could write to Paperclip's end or hold it open after
 * the worker is gone. Node 20 marks it close-on-exec when it opens the channel, but that is
 * Node's detail, and fds Node inherited without the flag would leak the same way. Node's own
 * process.execve keeps only 0-2 too. */
static int cloexec_above_stdio(void)
{
#ifdef CLOSE_RANGE_CLOEXEC
    if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) == 0)
        return 0; /* Linux >= 5.11 */
#endif
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return errno; /* no way to be sure: the shim spawns instead */
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int fd = atoi(e->d_name);
        if (fd > 2 && fd != dirfd(d))
            fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    closedir(d);
    return 0;
}

static void restore(const Saved *s)
{
    for (int fd = 0; fd < 3; fd++) {
        if (s->flags[fd] >= 0)
            fcntl(fd, F_SETFL, s->flags[fd]);
        if (s->fdflags[fd] >= 0)
            fcntl(fd, F_SETFD, s->fdflags[fd]);
    }
    for (int sig = 1; sig < NSIG; sig++)
        if (s->reset[sig])
            sigaction(sig, &s->act[sig], NULL);
    pthread_sigmask(SIG_SETMASK, &s->mask, NULL);
}

/* execve(path, argv, envp) after undoing what Node did to the process, so the worker starts
 * as if its parent had spawned it. Returns only on failure: an errno, with the process as
 * it was. Left as Node set it: the raised RLIMIT_NOFILE soft limit (the spawn path passes
 * it on too, and the worker raises it itself). */
static int replace(const char *path, char *const argv[], char *const envp[])
{
    Saved s;
    sigset_t all, none;
    struct sigaction dfl;

    if (access(path, X_OK) != 0)
        return errno; /* the likely failures, before anything changes */
    sigfillset(&all);
    sigemptyset(&none);
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);

    /* Every signal blocked while the dispositions change. Node ignores SIGPIPE and SIGXFSZ,
     * and execve keeps a signal ignored, so those go back to SIG_DFL. Node's handlers go too
     * (execve would reset them anyway): a signal that arrives from here on stays pending and,
     * once the mask is cleared below, gets its default action, instead of being queued for a
     * Node event loop that will never run again. */
    pthread_sigmask(SIG_SETMASK, &all, &s.mask);
    for (int sig = 1; sig < NSIG; sig++) {
        s.reset[sig] = 0;
        if (sig == SIGKILL || sig == SIGSTOP || sigaction(sig, NULL, &s.act[sig]) != 0)
            continue; /* glibc's own signals (32, 33) answer EINVAL */
        if (s.act[sig].sa_handler != SIG_DFL && sigaction(sig, &dfl, NULL) == 0)
            s.reset[sig] = 1;
    }
    /* Node marks fds 0-2 close-on-exec; the worker must get them. And libuv makes a pipe
     * non-blocking when Node opens it as a stream (process.stdin, or a write to
     * process.stderr); O_NONBLOCK belongs to the open file, which execve keeps, and the
     * worker expects blocking stdio, as a spawned child gets. */
    for (int fd = 0; fd < 3; fd++) {
        s.fdflags[fd] = fcntl(fd, F_GETFD);
        if (s.fdflags[fd] >= 0 && (s.fdflags[fd] & FD_CLOEXEC))
            fcntl(fd, F_SETFD, s.fdflags[fd] & ~FD_CLOEXEC);
        s.flags[fd] = fcntl(fd, F_GETFL);
        if (s.flags[fd] >= 0 && (s.flags[fd] & O_NONBLOCK))
            fcntl(fd, F_SETFL, s.flags[fd] & ~O_NONBLOCK);
    }
    int err = cloexec_above_stdio();
    if (err == 0) {
        pthread_sigmask(SIG_SETMASK, &none, NULL); /* execve keeps the mask: start unblocked */
        execve(path, argv, envp);
        err = errno;
        pthread_sigmask(SIG_SETMASK, &all, NULL);
    }
    restore(&s);
    return err;
}

/* ---- JS values to C strings ------------------------------------------------------------ */

/* A malloc'd copy of the JS string v, or NULL (an exception is pending, named after what). */
static char *c_string(napi_env env, napi_value v, const char *what)
{
    size_t len = 0;
    if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) {
        napi_throw_type_error(env, NULL, what);
        return NULL;
    }
    char *s = malloc(len + 1);
    if (s == NULL) {
        napi_throw_error(env, NULL, "execve: out of memory");
        return NULL;
    }
    napi_get_value_string_utf8(env, v, s, len + 1, &len);
    if (strlen(s) != len) { /* execve would cut it at the NUL */
        free(s);
        napi_throw_type_error(env, NULL, what);
        return NULL;
    }
    return s;
}

static void free_vector(char **v)
{
    for (size_t i = 0; v != NULL && v[i] != NULL; i++)
        free(v[i]);
    free(v);
}

/* A NULL-terminated malloc'd copy of the JS array of strings v, or NULL (exception pending). */
static char **c_vector(napi_env env, napi_value v, const char *what)
{
    bool is_array = false;
    uint32_t n = 0;
    if (napi_is_array(env, v, &is_array) != napi_ok || !is_array ||
        napi_get_array_length(env, v, &n) != napi_ok) {
        napi_throw_type_error(env, NULL, what);
        return NULL;
    }
    char **out = calloc((size_t)n + 1, sizeof *out);
    if (out == NULL) {
        napi_throw_error(env, NULL, "execve: out of memory");
        return NULL;
    }
    for (uint32_t i = 0; i < n; i++) {
        napi_value item;
        if (napi_get_element(env, v, i, &item) != napi_ok) {
            napi_throw_type_error(env, NULL, what);
            free_vector(out);
            return NULL;
        }
        if ((out[i] = c_string(env, item, what)) == NULL) {
            free_vector(out);
            return NULL;
        }
    }
    return out;
}

/* ---- the module ------------------------------------------------------------------------ */

/* Throws Error("execve PATH: strerror") with .errno set. */
static void throw_errno(napi_env env, int err, const char *path)
{
    napi_value msg, error, code;
    size_t len = strlen(path) + 128;
    char *text = malloc(len);
    if (text == NULL) {
        napi_throw_error(env, NULL, strerror(err));
        return;
    }
    snprintf(text, len, "execve %s: %s", path, strerror(err));
    napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg);
    free(text);
    napi_create_error(env, NULL, msg, &error);
    napi_create_int32(env, err, &code);
    napi_set_named_property(env, error, "errno", code);
    napi_throw(env, error);
}

/* execve(path, argv, envPairs): argv and envPairs ("NAME=value") are arrays of strings.
 * Never returns on success; throws a TypeError for bad arguments, an Error with .errno when
 * execve fails (the process is then as it was). */
static napi_value addon_execve(napi_env env, napi_callback_info info)
{
    size_t argc = 3;
    napi_value args[3];
    if (napi_get_cb_info(env, info, &argc, args, NULL, NULL) != napi_ok || argc < 3) {
        napi_throw_type_error(env, NULL, "execve(path, argv, envPairs): 3 arguments expected");
        return NULL;
    }
    char *path = c_string(env, args[0], "execve: path must be a string without NUL");
    char **argv = path ? c_vector(env, args[1], "execve: argv must be an array of strings") : NULL;
    char **envp =
        argv ? c_vector(env, args[2], "execve: envPairs must be an array of strings") : NULL;
    if (envp != NULL)
        throw_errno(env, replace(path, argv, envp), path);
    free_vector(envp);
    free_vector(argv);
    free(path);
    return NULL;
}

NAPI_MODULE_INIT()
{
    napi_value fn;
    napi_status st = napi_create_function(env, "execve", NAPI_AUTO_LENGTH, addon_execve, NULL, &fn);
    if (st == napi_ok)
        st = napi_set_named_property(env, exports, "execve", fn);
    return st == napi_ok ? exports : NULL;
}
