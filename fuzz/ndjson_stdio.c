/* ndjson_stdio.c - fuzz.stdio for fuzz_ndjson: the real stdin reader, reset between inputs. */

/* host.core.stdio keeps its reader in static state that was never meant to be reset (one
 * process reads one stdin). Compiling its source into this file (instead of linking it) lets
 * the fuzzer put that state back to zero between inputs, so the reader runs in-process,
 * instrumented, with nothing changed in host/mod_stdio.c. */
#include "mod_stdio.c"

#include <fcntl.h>
#include <sys/mman.h>

int luaopen_fuzz_stdio(lua_State *L);

static int saved_stdout = -1; /* the real fd 1, while an input's output goes to out_fd */
static int out_fd = -1;

/* fuzz.stdio.setup(data, as_file): fd 0 reads data (through a pipe, or a regular file when
 * as_file: the uv_fs_read path), fd 1 writes into a memory file; the reader starts fresh. */
static int fstdio_setup(lua_State *L)
{
    size_t n;
    const char *data = luaL_checklstring(L, 1, &n);
    int as_file = lua_toboolean(L, 2);
    int in_fd;
    if (as_file) {
        in_fd = memfd_create("fuzz-stdin", 0);
        if (in_fd < 0 || write(in_fd, data, n) != (ssize_t)n || lseek(in_fd, 0, SEEK_SET) != 0)
            return luaL_error(L, "fuzz.stdio: cannot make the stdin file");
    } else {
        int p[2];
        /* The whole input must fit in the pipe: nobody writes it later. */
        if (n > 65536 || pipe(p) != 0 || (n > 0 && write(p[1], data, n) != (ssize_t)n))
            return luaL_error(L, "fuzz.stdio: cannot make the stdin pipe");
        close(p[1]);
        in_fd = p[0];
    }
    if (dup2(in_fd, STDIN_FILENO) < 0)
        return luaL_error(L, "fuzz.stdio: dup2 stdin");
    close(in_fd);
    fflush(stdout);
    if (saved_stdout < 0 && (saved_stdout = dup(STDOUT_FILENO)) < 0)
        return luaL_error(L, "fuzz.stdio: dup stdout");
    out_fd = memfd_create("fuzz-stdout", 0);
    if (out_fd < 0 || dup2(out_fd, STDOUT_FILENO) < 0)
        return luaL_error(L, "fuzz.stdio: cannot make the stdout file");
    memset(&io, 0, sizeof io);
    return 0;
}

/* fuzz.stdio.busy() -> whether a read of the stdin file is still in the thread pool: finish
 * must wait until it is not (the request lives in the state it clears). */
static int fstdio_busy(lua_State *L)
{
    lua_pushboolean(L, io.fs_busy);
    return 1;
}

/* fuzz.stdio.finish() -> everything written to stdout. The reader's handle is closed (libuv
 * frees it on the next loop turn) and its state cleared; fd 1 is the real stdout again. */
static int fstdio_finish(lua_State *L)
{
    if (io.fs_busy)
        return luaL_error(L, "fuzz.stdio: finish while a read is pending");
    if (io.reader != NULL)
        return luaL_error(L, "fuzz.stdio: finish while a task waits for a line");
    if (io.in != NULL)
        uv_close((uv_handle_t *)io.in, ph_handle_free);
    if (io.out != NULL)
        uv_close((uv_handle_t *)io.out, ph_handle_free);
    ph_buf_free(&io.buf);
    memset(&io, 0, sizeof io);

    off_t end = lseek(out_fd, 0, SEEK_END);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    if (end > 0) {
        char *p = luaL_prepbuffsize(&b, (size_t)end);
        if (pread(out_fd, p, (size_t)end, 0) != (ssize_t)end)
            return luaL_error(L, "fuzz.stdio: cannot read the output back");
        luaL_addsize(&b, (size_t)end);
    }
    dup2(saved_stdout, STDOUT_FILENO);
    close(out_fd);
    out_fd = -1;
    luaL_pushresult(&b);
    return 1;
}

static const luaL_Reg fstdio_funcs[] = {
    { "setup", fstdio_setup },
    { "busy", fstdio_busy },
    { "finish", fstdio_finish },
    { NULL, NULL },
};

int luaopen_fuzz_stdio(lua_State *L)
{
    luaL_newlib(L, fstdio_funcs);
    return 1;
}
