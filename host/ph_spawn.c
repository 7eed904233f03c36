/* ph_spawn.c - the two ways a child starts (see ph_spawn.h): posix_spawn plus a pidfd, and
 * the uv_spawn fallback. */
#include "ph_spawn.h"
#include "ph_groups.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

void ph_child_init(PhChild *c, ph_child_exit_cb on_exit, void *data)
{
    memset(c, 0, sizeof *c);
    c->watch = PH_WATCH_NONE;
    c->pidfd = -1;
    c->on_exit = on_exit;
    c->data = data;
}

void ph_child_unwatch(PhChild *c, void *data, uv_close_cb cb)
{
    if (c->watch == PH_WATCH_PIDFD) {
        c->leader.poll.data = data;
        uv_close((uv_handle_t *)&c->leader.poll, cb); /* takes the fd out of epoll now */
        close(c->pidfd);
        c->pidfd = -1;
    } else if (c->watch == PH_WATCH_PROCESS) {
        c->leader.process.data = data;
        uv_close((uv_handle_t *)&c->leader.process, cb);
    }
    c->watch = PH_WATCH_NONE;
    if (c->pid > 0)
        ph_groups_forget_if_empty(c->pid); /* its background children keep it recorded */
}

/* ---- uv_spawn (fallback) ------------------------------------------------------------------ */

/* libuv reaped the leader (its SIGCHLD handler waits for its own pids). */
static void process_exited(uv_process_t *h, int64_t status, int sig)
{
    PhChild *c = h->data;
    c->on_exit(c, status, sig);
}

/* libuv forks, and the child sets up its stdio (socketpairs), calls setsid (detached),
 * chdir and execvp. Sets c->watch = PH_WATCH_PROCESS even when it fails: the handle is
 * initialised either way. Returns 0 or a libuv error. */
static int spawn_uv(PhChild *c, const PhSpawn *o)
{
    uv_stdio_container_t stdio[3];
    stdio[0].flags =
        o->in != NULL ? (uv_stdio_flags)(UV_CREATE_PIPE | UV_READABLE_PIPE) : UV_IGNORE;
    stdio[0].data.stream = (uv_stream_t *)o->in;
    for (int i = 0; i < 2; i++) {
        stdio[1 + i].flags = (uv_stdio_flags)(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
        stdio[1 + i].data.stream = (uv_stream_t *)o->out[i];
    }
    uv_process_options_t opt;
    memset(&opt, 0, sizeof opt);
    opt.exit_cb = process_exited;
    opt.file = o->args[0];
    opt.args = o->args;
    opt.env = o->envp; /* NULL: inherit ours. Either way execvp searches the child's PATH. */
    opt.cwd = o->cwd;
    opt.flags = UV_PROCESS_DETACHED; /* setsid(): its own session and process group */
    opt.stdio_count = 3;
    opt.stdio = stdio;

    int rc = uv_spawn(ph_loop(), &c->leader.process, &opt);
    c->leader.process.data = c; /* uv_spawn initialised the handle, even when it failed */
    c->watch = PH_WATCH_PROCESS;
    if (rc == 0)
        c->pid = c->leader.process.pid;
    return rc;
}

/* ---- posix_spawn + pidfd ------------------------------------------------------------------ */

/* execvp's search list when the environment has no PATH (glibc's CS_PATH, `getconf PATH`). */
#define EXECVP_DEFAULT_PATH "/bin:/usr/bin"

/* pidfd_open works here: 1 yes, -1 no (ENOSYS, or a seccomp filter refusing it: uv_spawn
 * for good), 0 not known yet (also after a shortage of descriptors or memory). */
static int pidfd_state;

static int force_uv_spawn; /* ph_spawn_force_uv: the specs cover the fallback too */

static int pidfd_usable(void)
{
    if (pidfd_state == 0) {
        int fd = pidfd_open(getpid(), 0);
        if (fd >= 0) {
            close(fd);
            pidfd_state = 1;
        } else if (errno != EMFILE && errno != ENFILE && errno != ENOMEM) {
            pidfd_state = -1;
        }
    }
    return pidfd_state >= 0;
}

/* The same for every child: its own session and process group (setsid, as
 * UV_PROCESS_DETACHED did), no blocked signal, and every signal at its default disposition
 * (the host ignores SIGPIPE; libuv installs handlers). Set up once, never changed. */
static const posix_spawnattr_t *spawn_attr(void)
{
    static posix_spawnattr_t attr;
    static int ready;
    if (!ready) {
        sigset_t none, all;
        sigemptyset(&none);
        /* Not sigfillset: it leaves out glibc's internal signals (32, 33), which the
         * spawning child would then set to SIG_IGN, and exec keeps ignored. */
        memset(&all, 0xff, sizeof all);
        posix_spawnattr_init(&attr);
        posix_spawnattr_setsigmask(&attr, &none);
        posix_spawnattr_setsigdefault(&attr, &all);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK |
                                            POSIX_SPAWN_SETSIGDEF);
        ready = 1;
    }
    return &attr;
}

/* PATH as the child will see it: from envp when given (NULL when it has none), else ours. */
static const char *child_path(char **envp)
{
    if (envp == NULL)
        return getenv("PATH");
    for (char **e = envp; *e != NULL; e++)
        if (strncmp(*e, "PATH=", 5) == 0)
            return *e + 5;
    return NULL;
}

/* What execve(path) in the child would fail with, as far as stat and access can tell; 0
 * when it looks runnable. A relative path is taken from cwd, where the child will be. */
static int exec_error(const char *path, const char *cwd)
{
    char *full = NULL;
    if (cwd != NULL && path[0] != '/') {
        size_t a = strlen(cwd), b = strlen(path);
        full = malloc(a + b + 2);
        if (full == NULL)
            return ENOMEM;
        memcpy(full, cwd, a);
        full[a] = '/';
        memcpy(full + a + 1, path, b + 1);
        path = full;
    }
    struct stat st;
    int err = 0;
    if (stat(path, &st) != 0)
        err = errno;
    else if (!S_ISREG(st.st_mode)) /* execve refuses directories and devices so */
        err = EACCES;
    else if (faccessat(AT_FDCWD, path, X_OK, AT_EACCESS) != 0) /* also sees noexec mounts */
        err = errno;
    free(full);
    return err;
}

/* What chdir(cwd) in the child would fail with; 0 when it looks fine. The child changes
 * directory before it looks for the program, so this error comes first, as with uv_spawn. */
static int cwd_error(const char *cwd)
{
    struct stat st;
    if (stat(cwd, &st) != 0)
        return errno;
    if (!S_ISDIR(st.st_mode))
        return ENOTDIR;
    if (faccessat(AT_FDCWD, cwd, X_OK, AT_EACCESS) != 0)
        return errno;
    return 0;
}

/* execvp's search, done here before the spawn: file itself when it holds a '/', else the
 * first runnable PATH entry (of the child's environment) holding it; an empty entry is the
 * current directory. *found is malloc'ed. Returns 0 or an errno value: ENOENT when nothing
 * was found, EACCES when only non-runnable files were, or the error that stopped the search
 * (execvp gives up on anything but missing or refused files too). */
static int find_program(const char *file, char **envp, const char *cwd, char **found)
{
    *found = NULL;
    if (file[0] == '\0')
        return ENOENT;
    if (strchr(file, '/') != NULL) {
        int err = exec_error(file, cwd);
        if (err == 0 && (*found = strdup(file)) == NULL)
            err = ENOMEM;
        return err;
    }
    size_t flen = strlen(file);
    if (flen > NAME_MAX)
        return ENAMETOOLONG;
    const char *path = child_path(envp);
    if (path == NULL)
        path = EXECVP_DEFAULT_PATH;
    char *buf = malloc(strlen(path) + flen + 2);
    if (buf == NULL)
        return ENOMEM;
    int denied = 0;
    for (const char *dir = path;;) {
        const char *end = strchrnul(dir, ':');
        size_t dlen = (size_t)(end - dir);
        memcpy(buf, dir, dlen);
        if (dlen > 0)
            buf[dlen++] = '/';
        memcpy(buf + dlen, file, flen + 1);
        int err = exec_error(buf, cwd);
        if (err == 0) {
            *found = buf;
            return 0;
        }
        if (err == EACCES)
            denied = 1;
        else if (err != ENOENT && err != ENOTDIR && err != ESTALE && err != ENODEV &&
                 err != ETIMEDOUT) {
            free(buf);
            return err;
        }
        if (*end == '\0')
            break;
        dir = end + 1;
    }
    free(buf);
    return denied ? EACCES : ENOENT;
}

/* posix_spawn path with args; a file without a #! line goes to /bin/sh, as execvp does.
 * Returns 0 or an errno value (glibc reports the child's chdir and exec errors). */
static int spawn_file(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
                      char **args, char **envp)
{
    char **env = envp != NULL ? envp : environ;
    int err = posix_spawn(pid, path, fa, spawn_attr(), args, env);
    if (err != ENOEXEC)
        return err;
    size_t n = 0;
    while (args[n] != NULL)
        n++;
    char **sh = malloc((n + 2) * sizeof *sh); /* /bin/sh, path, args[1..n-1], NULL */
    if (sh == NULL)
        return ENOMEM;
    sh[0] = (char *)"/bin/sh";
    sh[1] = (char *)path;
    memcpy(sh + 2, args + 1, n * sizeof *sh);
    err = posix_spawn(pid, "/bin/sh", fa, spawn_attr(), sh, env);
    free(sh);
    return err;
}

/* Keep a pipe end off 0..2 (only possible when the host's own 0..2 were closed): a child
 * end there could be clobbered by the dup2 of another, or keep CLOEXEC (dup2 onto itself),
 * and libuv never closes a stream on 0..2 (the child would never see EOF). */
static int above_stdio(int *fd)
{
    if (*fd > 2)
        return 0;
    int moved = fcntl(*fd, F_DUPFD_CLOEXEC, 3);
    if (moved < 0)
        return uv_translate_sys_error(errno);
    close(*fd);
    *fd = moved;
    return 0;
}

/* A pipe for one stdio stream: the child's end in *child, ours opened on h, which owns it
 * from then on. parent_reads: the child writes (stdout, stderr). */
static int make_pipe(uv_pipe_t *h, int parent_reads, int *child)
{
    int fds[2];
    int rc = uv_pipe(fds, 0, 0); /* CLOEXEC, blocking: uv_pipe_open makes ours non-blocking */
    if (rc != 0)
        return rc;
    int ours = parent_reads ? fds[0] : fds[1];
    *child = parent_reads ? fds[1] : fds[0];
    rc = above_stdio(child);
    if (rc == 0)
        rc = above_stdio(&ours);
    if (rc == 0)
        rc = uv_pipe_open(h, ours);
    if (rc != 0)
        close(ours);
    return rc;
}

/* The pidfd became readable, so the leader is a zombie: reap exactly that pid (never
 * waitpid(-1): other code reaps its own children). */
static void pidfd_readable(uv_poll_t *h, int status, int events)
{
    PhChild *c = h->data;
    int st = 0;
    pid_t r;
    do
        r = waitpid((pid_t)c->pid, &st, WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r == 0) { /* not exited after all: keep watching (an error stopped the handle) */
        if (status < 0 && uv_poll_start(h, UV_READABLE, pidfd_readable) != 0)
            ph_diag("provider-host: process %d: cannot watch its exit", c->pid);
        return;
    }
    if (r < 0) {
        /* ECHILD: someone else reaped it. The status is lost; report exit code -1 rather
         * than waiting forever for an exit that was already seen. */
        c->on_exit(c, -1, 0);
        return;
    }
    c->on_exit(c, WIFEXITED(st) ? WEXITSTATUS(st) : 0, WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* Pipes (CLOEXEC; the child's ends dup2'ed onto 0..2, which clears it), then posix_spawn.
 * *pid is the child's; 0 or a libuv error. */
static int start_posix(const PhSpawn *o, pid_t *pid)
{
    char *path = NULL;
    int err = o->cwd != NULL ? cwd_error(o->cwd) : 0;
    if (err == 0)
        err = find_program(o->args[0], o->envp, o->cwd, &path);
    if (err != 0)
        return uv_translate_sys_error(err);

    int child[3] = { -1, -1, -1 }; /* the child's stdin, stdout, stderr */
    int rc = o->in != NULL ? make_pipe(o->in, 0, &child[0]) : 0;
    for (int i = 0; i < 2 && rc == 0; i++)
        rc = make_pipe(o->out[i], 1, &child[1 + i]);

    if (rc == 0) {
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        if (o->in != NULL)
            err = posix_spawn_file_actions_adddup2(&fa, child[0], 0);
        else /* as uv_spawn's UV_IGNORE */
            err = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        for (int i = 1; i <= 2 && err == 0; i++)
            err = posix_spawn_file_actions_adddup2(&fa, child[i], i);
        if (err == 0 && o->cwd != NULL)
            err = posix_spawn_file_actions_addchdir_np(&fa, o->cwd);
        if (err == 0)
            err = spawn_file(pid, path, &fa, o->args, o->envp);
        posix_spawn_file_actions_destroy(&fa);
        if (err != 0)
            rc = uv_translate_sys_error(err);
    }
    free(path);
    for (int i = 0; i < 3; i++)
        if (child[i] >= 0)
            close(child[i]);
    return rc;
}

/* Watch the running child through a pidfd. Sets c->watch = PH_WATCH_PIDFD once the poll handle
 * is initialised. 0 or a libuv error. */
static int watch_pidfd(PhChild *c, pid_t pid)
{
    /* The child is ours and only we reap it, so its pid cannot be reused before. */
    int pidfd = pidfd_open(pid, 0);
    if (pidfd < 0) {
        int err = errno;
        if (err == ENOSYS || err == EPERM)
            pidfd_state = -1; /* uv_spawn from now on */
        return uv_translate_sys_error(err);
    }
    int rc = uv_poll_init(ph_loop(), &c->leader.poll, pidfd);
    if (rc != 0) {
        close(pidfd);
        return rc;
    }
    c->leader.poll.data = c;
    c->watch = PH_WATCH_PIDFD;
    c->pidfd = pidfd;
    return uv_poll_start(&c->leader.poll, UV_READABLE, pidfd_readable);
}

/* posix_spawn, then a pidfd polled for the exit. Returns 0 or a libuv error. */
static int spawn_posix(PhChild *c, const PhSpawn *o)
{
    pid_t pid = -1;
    int rc = start_posix(o, &pid);
    if (rc != 0)
        return rc;
    rc = watch_pidfd(c, pid);
    if (rc == 0) {
        c->pid = pid;
        return 0;
    }
    /* It runs and we cannot watch it: it must not outlive this failure. It has just
     * exec'ed, so SIGKILL ends it at once (its group too, should it have forked already). */
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
    return rc;
}

/* ---- the interface ------------------------------------------------------------------------ */

int ph_spawn(PhChild *c, const PhSpawn *o)
{
    int rc = force_uv_spawn || !pidfd_usable() ? spawn_uv(c, o) : spawn_posix(c, o);
    if (rc == 0)
        ph_groups_add(c->pid); /* so that no group outlives this process */
    return rc;
}

int ph_spawn_force_uv(int on)
{
    int prev = force_uv_spawn;
    force_uv_spawn = on;
    return prev;
}

const char *ph_spawn_way(void)
{
    return force_uv_spawn || !pidfd_usable() ? "uv_spawn" : "posix_spawn";
}
