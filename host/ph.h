/* ph.h - provider-host core: the loop, tasks, failure convention and module entry points. */
#ifndef PH_H
#define PH_H

#include <lauxlib.h>
#include <lua.h>
#include <stddef.h>
#include <uv.h>

/* ---- the loop (ph_loop.c) ------------------------------------------------------------ */

uv_loop_t *ph_loop(void);
lua_State *ph_main_state(void); /* the main thread: callbacks run on it, never on a task */
void ph_set_main_state(lua_State *L);
double ph_now(void); /* monotonic seconds */

/* Call fn (on the main thread's stack top, under nargs arguments) protected; an error is
 * logged to stderr with a traceback and swallowed. Used for callbacks from loop events. */
void ph_callback(lua_State *L, int nargs, const char *what);

/* ---- tasks (ph_task.c) ----------------------------------------------------------------- */

/* A task is a coroutine created and anchored by C. Primitives park a task on an operation
 * and yield; the loop resumes it with the operation's results. */
typedef struct ph_task ph_task;

/* Every pending operation embeds a ph_op as its first member. cancel() must tear the
 * operation down and arrange for the task to be resumed (ph_task_wake) with
 * nil, "...canceled", "canceled"; it is never called twice. */
typedef struct ph_op ph_op;
struct ph_op {
    void (*cancel)(ph_op *op);
    ph_task *task;
};

/* The task running on L; raises when L is not a task (main chunk, plain coroutine). */
ph_task *ph_task_current(lua_State *L);
/* Like ph_task_current but returns NULL instead of raising. */
ph_task *ph_task_of(lua_State *L);
lua_State *ph_task_thread(ph_task *t);
int ph_task_is_canceled(ph_task *t);

/* Park t on op and yield. Use as a tail call: `return ph_task_park(L, t, op);`. */
int ph_task_park(lua_State *L, ph_task *t, ph_op *op);
/* The op finished: results (nargs values) are already pushed on the task's thread. Resume
 * now; call only from a loop callback (never while Lua code is running). */
void ph_task_resume(ph_task *t, int nargs);
/* Same, but resume on the next loop iteration; safe from anywhere (cancel paths). */
void ph_task_wake(ph_task *t, int nargs);

/* Spawn a task running the function at stack index -(nargs+1) with nargs arguments, all
 * popped from L. Pushes the host.task.Task handle. It starts on the next loop turn. */
ph_task *ph_task_spawn(lua_State *L, int nargs);
/* Cancel: flag it and cancel its pending operation, if any. Later primitives called by the
 * task fail at once with code "canceled". */
void ph_task_cancel(ph_task *t);
/* Cancel t after seconds (its deadline); seconds < 0 disarms. Returns -1 without memory. */
int ph_task_cancel_after(ph_task *t, double seconds);
int ph_task_is_expired(ph_task *t); /* the deadline fired */
/* Run the loop until t finishes. Used by the CLI entry and host.task.run. */
void ph_task_drive(ph_task *t);
/* After t finished: push its returned values on L, or nil, "task failed: ...", "internal"
 * when it raised. Returns how many values were pushed. */
int ph_task_push_results(lua_State *L, ph_task *t);
/* From inside a task: wait for target to finish (timeout < 0: no deadline). Tail call. */
int ph_task_wait(lua_State *L, ph_task *target, double timeout);
/* Push the Task handle of a task that is not done (nil once done). */
void ph_task_push(lua_State *L, ph_task *t);
/* Its error goes to whoever drives it: do not log it when it raises. */
void ph_task_set_quiet(ph_task *t);
/* After t raised: push the raw error object. */
int ph_task_push_error(lua_State *L, ph_task *t);
/* Create the Task metatable and mark the main thread as "not a task". */
void ph_task_init(lua_State *L);
int ph_task_is_done(ph_task *t);
int ph_task_state_ok(ph_task *t); /* after done: returned (1) or raised (0) */
int ph_tasks_running(void);

/* ---- failure convention (ph_error.c) ------------------------------------------------- */

/* Push nil, message, code and return 3. code is one of the closed list in ph_codes. */
int ph_fail(lua_State *L, const char *code, const char *fmt, ...);
/* Same, with ": strerror(err)" appended to the message. */
int ph_fail_errno(lua_State *L, const char *code, int err, const char *fmt, ...);
/* Fail with code "canceled" when the task was canceled; returns 0 when it was not. */
int ph_fail_if_canceled(lua_State *L, ph_task *t);
/* Write one diagnostic line to stderr (never stdout), blocking, whole line at once. */
void ph_diag(const char *fmt, ...);

/* opts[field] must have Lua type t (or be absent unless required); misuse raises. The value
 * is left on the stack (so a string stays valid); returns 1 when present. */
int ph_opt_field(lua_State *L, int idx, const char *field, int t, int required);
/* Raise "bad argument #1 to 'fname' (...)": for facades that pass an options table on. */
int ph_argerror_in(lua_State *L, const char *fname, const char *fmt, ...);
/* Push opts[field] (opts at index 1); raise through ph_argerror_in unless nil or type t.
 * Returns 1 when present. */
int ph_opt_field_in(lua_State *L, const char *fname, const char *field, int t);
/* opts[field] as an integer in [lo, hi], dflt when absent; raises otherwise. */
lua_Integer ph_opt_integer_in(lua_State *L, const char *fname, const char *field, lua_Integer dflt,
                              lua_Integer lo, lua_Integer hi);
double ph_opt_number(lua_State *L, int idx, const char *field, double dflt);
lua_Integer ph_opt_integer(lua_State *L, int idx, const char *field, lua_Integer dflt);

/* ---- signals (mod_sys.c) ----------------------------------------------------------- */

int ph_signal_number(const char *name); /* "SIGTERM" or "TERM" -> number, -1 if unknown */
const char *ph_signal_name(int num);    /* NULL if not in our table */

/* ---- paths and state (ph_state.c) ---------------------------------------------------- */

lua_State *ph_state_new(const char *argv0);
const char *ph_runtime_root(void); /* directory holding lua/ and providers/ */
/* Preload loader for host.core.http and host.core.ssh: dlopens provider-host-net.so. */
int ph_open_net_module(lua_State *L);

/* ---- modules: host.core.<name> --------------------------------------------------------- */

int luaopen_host_core_task(lua_State *L);
int luaopen_host_core_stdio(lua_State *L);
int luaopen_host_core_sys(lua_State *L);
int luaopen_host_core_proc(lua_State *L);
int luaopen_host_core_http(lua_State *L); /* in provider-host-net.so */
int luaopen_host_core_ssh(lua_State *L);  /* in provider-host-net.so */
int luaopen_host_core_util(lua_State *L);

/* The closed list of failure codes, also documented in README.md. */
#define PH_CODES                                                                                   \
    "timeout connect dns tls auth closed busy canceled exit signal io protocol json upstream "     \
    "internal"

#endif
