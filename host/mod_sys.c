/* mod_sys.c - host.core.sys: signals, parent death, process facts and small file-system calls. */
#include "ph.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct {
    const char *name;
    int num;
} signals[] = {
    { "SIGTERM", SIGTERM }, { "SIGINT", SIGINT },
    { "SIGHUP", SIGHUP },   { "SIGKILL", SIGKILL },
    { "SIGQUIT", SIGQUIT }, { "SIGUSR1", SIGUSR1 },
    { "SIGUSR2", SIGUSR2 }, { "SIGPIPE", SIGPIPE },
    { "SIGALRM", SIGALRM }, { "SIGCHLD", SIGCHLD },
    { "SIGSEGV", SIGSEGV }, { "SIGABRT", SIGABRT },
    { "SIGBUS", SIGBUS },   { "SIGFPE", SIGFPE },
    { "SIGILL", SIGILL },   { "SIGTRAP", SIGTRAP },
    { "SIGSTOP", SIGSTOP }, { "SIGCONT", SIGCONT },
    { "SIGTSTP", SIGTSTP }, { "SIGXCPU", SIGXCPU },
    { "SIGXFSZ", SIGXFSZ }, { NULL, 0 },
};

int ph_signal_number(const char *name)
{
    for (int i = 0; signals[i].name != NULL; i++)
        if (strcmp(signals[i].name, name) == 0 || strcmp(signals[i].name + 3, name) == 0)
            return signals[i].num;
    return -1;
}

const char *ph_signal_name(int num)
{
    for (int i = 0; signals[i].name != NULL; i++)
        if (signals[i].num == num)
            return signals[i].name;
    return NULL;
}

static int check_signal(lua_State *L, int idx)
{
    const char *name = luaL_checkstring(L, idx);
    int sig = ph_signal_number(name);
    if (sig < 0)
        luaL_argerror(L, idx, lua_pushfstring(L, "unknown signal '%s'", name));
    return sig;
}

typedef struct {
    ph_op op;
    uv_signal_t *sig;
} SignalOp;

/* The wait is over: the handle closes (freed once libuv is done with it), the op goes now. */
static ph_task *signal_done(SignalOp *s)
{
    ph_task *t = s->op.task;
    uv_close((uv_handle_t *)s->sig, ph_handle_free); /* stops it */
    free(s);
    return t;
}

static void signal_arrived(uv_signal_t *h, int signum)
{
    ph_task *t = signal_done(h->data);
    lua_pushstring(ph_task_thread(t), ph_signal_name(signum));
    ph_task_resume(t, 1);
}

static void signal_cancel(ph_op *op)
{
    ph_task *t = signal_done((SignalOp *)op);
    ph_task_wake(t, ph_fail(ph_task_thread(t), "canceled", "signal wait canceled"));
}

/* sys.wait_signal(name) -> name | nil, msg, "canceled": park until the signal arrives. The
 * wait does not keep the loop alive by itself. */
static int sys_wait_signal(lua_State *L)
{
    int sig = check_signal(L, 1);
    ph_task *t = ph_task_current(L);
    if (ph_task_is_canceled(t))
        return ph_fail(L, "canceled", "signal wait canceled");
    SignalOp *s = calloc(1, sizeof *s);
    if (s == NULL || (s->sig = malloc(sizeof *s->sig)) == NULL) {
        free(s);
        return ph_fail(L, "internal", "out of memory");
    }
    s->op.cancel = signal_cancel;
    uv_signal_init(ph_loop(), s->sig);
    s->sig->data = s;
    uv_unref((uv_handle_t *)s->sig);
    int rc = uv_signal_start(s->sig, signal_arrived, sig);
    if (rc != 0) {
        signal_done(s);
        return ph_fail(L, "io", "cannot watch %s: %s", ph_signal_name(sig), uv_strerror(rc));
    }
    lua_settop(L, 0);
    return ph_task_park(L, t, &s->op);
}

static pid_t start_parent = -1;

void ph_note_parent(void)
{
    start_parent = getppid();
}

/* sys.parent_death_signal(name) -> true | nil, msg, "closed" when the parent is already gone.
 * Linux delivers the signal to us when the process that started us dies. */
static int sys_parent_death_signal(lua_State *L)
{
    int sig = check_signal(L, 1);
    pid_t parent = start_parent > 0 ? start_parent : getppid();
    if (prctl(PR_SET_PDEATHSIG, sig) != 0)
        return ph_fail_errno(L, "io", errno, "prctl(PR_SET_PDEATHSIG)");
    /* checked after the prctl: a death before it sent nothing, a death after it sends sig */
    if (getppid() != parent)
        return ph_fail(L, "closed", "parent process already exited");
    lua_pushboolean(L, 1);
    return 1;
}

/* sys.kill(pid, name) -> true | nil, msg, "io" */
static int sys_kill(lua_State *L)
{
    lua_Integer pid = luaL_checkinteger(L, 1);
    int sig = check_signal(L, 2);
    if (kill((pid_t)pid, sig) != 0)
        return ph_fail_errno(L, "io", errno, "kill(%d)", (int)pid);
    lua_pushboolean(L, 1);
    return 1;
}

static int sys_getpid(lua_State *L)
{
    lua_pushinteger(L, getpid());
    return 1;
}

static int sys_getppid(lua_State *L)
{
    lua_pushinteger(L, getppid());
    return 1;
}

/* sys.exe_path() -> absolute path of the running binary */
static int sys_exe_path(lua_State *L)
{
    char buf[PATH_MAX];
    size_t n = sizeof buf;
    int rc = uv_exepath(buf, &n);
    if (rc != 0)
        return ph_fail(L, "io", "cannot find the executable: %s", uv_strerror(rc));
    lua_pushlstring(L, buf, n);
    return 1;
}

/* sys.runtime_root() -> the directory holding lua/ and providers/ */
static int sys_runtime_root(lua_State *L)
{
    lua_pushstring(L, ph_runtime_root());
    return 1;
}

/* sys.isatty(fd) -> boolean */
static int sys_isatty(lua_State *L)
{
    lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
    return 1;
}


/* sys.list_dir(path) -> array of entry names (sorted, no . and ..) | nil, msg, "io" */
static int sys_list_dir(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    DIR *d = opendir(path);
    if (d == NULL)
        return ph_fail_errno(L, "io", errno, "cannot list %s", path);
    lua_newtable(L);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        lua_pushstring(L, e->d_name);
        lua_rawseti(L, -2, ++n);
    }
    closedir(d);
    /* sort in Lua order for stable listings */
    lua_getglobal(L, "table");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "sort");
        lua_pushvalue(L, -3);
        lua_call(L, 1, 0);
    }
    lua_pop(L, 1);
    return 1;
}

/* sys.stat(path [, follow]) -> {type=, mode=, size=, mtime=, uid=, nlink=} | nil, msg, "io" */
static int sys_stat(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    int follow = lua_isnoneornil(L, 2) ? 1 : lua_toboolean(L, 2);
    struct stat st;
    if ((follow ? stat(path, &st) : lstat(path, &st)) != 0)
        return ph_fail_errno(L, "io", errno, "cannot stat %s", path);
    lua_createtable(L, 0, 6);
    const char *type = S_ISREG(st.st_mode)    ? "file"
                       : S_ISDIR(st.st_mode)  ? "directory"
                       : S_ISLNK(st.st_mode)  ? "link"
                       : S_ISSOCK(st.st_mode) ? "socket"
                                              : "other";
    lua_pushstring(L, type);
    lua_setfield(L, -2, "type");
    lua_pushinteger(L, st.st_mode & 07777);
    lua_setfield(L, -2, "mode");
    lua_pushinteger(L, (lua_Integer)st.st_size);
    lua_setfield(L, -2, "size");
    lua_pushinteger(L, (lua_Integer)st.st_mtime);
    lua_setfield(L, -2, "mtime");
    lua_pushinteger(L, (lua_Integer)st.st_uid);
    lua_setfield(L, -2, "uid");
    lua_pushinteger(L, (lua_Integer)st.st_nlink);
    lua_setfield(L, -2, "nlink");
    return 1;
}

/* sys.mkdir(path [, mode [, exclusive]]) -> true | nil, msg, "io"
 * An existing directory is success unless exclusive is true. */
static int sys_mkdir(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lua_Integer mode = luaL_optinteger(L, 2, 0755);
    int exclusive = lua_toboolean(L, 3);
    if (mkdir(path, (mode_t)mode) != 0) {
        struct stat st;
        if (exclusive || !(errno == EEXIST && stat(path, &st) == 0 && S_ISDIR(st.st_mode)))
            return ph_fail_errno(L, "io", errno, "cannot create directory %s", path);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* sys.chmod(path, mode) -> true | nil, msg, "io" */
static int sys_chmod(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lua_Integer mode = luaL_checkinteger(L, 2);
    if (chmod(path, (mode_t)mode) != 0)
        return ph_fail_errno(L, "io", errno, "cannot chmod %s", path);
    lua_pushboolean(L, 1);
    return 1;
}

/* sys.realpath(path) -> absolute canonical path | nil, msg, "io" */
static int sys_realpath(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    char buf[PATH_MAX];
    if (realpath(path, buf) == NULL)
        return ph_fail_errno(L, "io", errno, "cannot resolve %s", path);
    lua_pushstring(L, buf);
    return 1;
}

/* sys.memory() -> resident set size in bytes (from /proc/self/statm) */
static int sys_memory(lua_State *L)
{
    size_t rss = 0;
    int rc = uv_resident_set_memory(&rss);
    if (rc != 0)
        return ph_fail(L, "io", "cannot read memory use: %s", uv_strerror(rc));
    lua_pushinteger(L, (lua_Integer)rss);
    return 1;
}

/* sys.account() -> {name=, uid=, gid=, home=, shell=} | nil, msg, "io": this process's entry in
 * the password database. OpenSSH takes the default user and the home of ~/.ssh from here, not
 * from $USER or $HOME, and Paperclip starts workers without either. */
static int sys_account(lua_State *L)
{
    uid_t uid = getuid();
    long hint = sysconf(_SC_GETPW_R_SIZE_MAX);
    size_t size = hint > 0 ? (size_t)hint : 16384;
    for (;;) {
        char *buf = malloc(size);
        if (buf == NULL)
            return ph_fail(L, "internal", "out of memory");
        struct passwd pw, *found = NULL;
        int rc = getpwuid_r(uid, &pw, buf, size, &found);
        if (rc == ERANGE && size < 1024 * 1024) {
            free(buf);
            size *= 2;
            continue;
        }
        if (found == NULL) {
            free(buf);
            if (rc != 0)
                return ph_fail_errno(L, "io", rc, "cannot read the password database for uid %d",
                                     (int)uid);
            return ph_fail(L, "io", "uid %d has no entry in the password database", (int)uid);
        }
        lua_createtable(L, 0, 5);
        lua_pushstring(L, pw.pw_name);
        lua_setfield(L, -2, "name");
        lua_pushinteger(L, (lua_Integer)pw.pw_uid);
        lua_setfield(L, -2, "uid");
        lua_pushinteger(L, (lua_Integer)pw.pw_gid);
        lua_setfield(L, -2, "gid");
        lua_pushstring(L, pw.pw_dir);
        lua_setfield(L, -2, "home");
        lua_pushstring(L, pw.pw_shell);
        lua_setfield(L, -2, "shell");
        free(buf);
        return 1;
    }
}

static const luaL_Reg sys_funcs[] = {
    { "account", sys_account },
    { "wait_signal", sys_wait_signal },
    { "parent_death_signal", sys_parent_death_signal },
    { "kill", sys_kill },
    { "getpid", sys_getpid },
    { "getppid", sys_getppid },
    { "exe_path", sys_exe_path },
    { "runtime_root", sys_runtime_root },
    { "isatty", sys_isatty },
    { "list_dir", sys_list_dir },
    { "stat", sys_stat },
    { "mkdir", sys_mkdir },
    { "chmod", sys_chmod },
    { "realpath", sys_realpath },
    { "memory", sys_memory },
    { NULL, NULL },
};

int luaopen_host_core_sys(lua_State *L)
{
    luaL_newlib(L, sys_funcs);
    return 1;
}
