/* ph.h - the core every module builds on: the loop with its timer and handle helpers,
 * protected calls, tasks, the failure convention, argument checks and the module entry points.
 * Bytes in C memory (the growable buffer, formatted strings) are ph_buf.h's, included here. */
#ifndef PH_H
#define PH_H

#include <lauxlib.h>
#include <lua.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "ph_buf.h"

/* ---- the loop, timers and handles (ph_loop.c) ---------------------------------------- */

uv_loop_t *ph_loop(void);
lua_State *ph_main_state(void); /* the main thread: callbacks run on it, never on a task */
void ph_set_main_state(lua_State *L);
double ph_now(void); /* monotonic seconds */

/* Seconds as a timer's milliseconds, rounded to the nearest. */
uint64_t ph_ms(double seconds);
/* A timer of its own allocation, initialised on the loop, with data set; NULL without memory.
 * Free it with ph_timer_free. */
uv_timer_t *ph_timer_new(void *data);
/* (Re)start a one-shot timer that fires after seconds. */
void ph_timer_start(uv_timer_t *t, uv_timer_cb cb, double seconds);
/* Stop a ph_timer_new timer, close it and free it once libuv is done with it; *tp becomes
 * NULL. Nothing happens when *tp is NULL. */
void ph_timer_free(uv_timer_t **tp);
/* The close callback of a handle that is its own allocation (or starts one): frees it. */
void ph_handle_free(uv_handle_t *h);
/* An IPv4 or IPv6 address (or "localhost", as 127.0.0.1) and a port; 0, or a libuv error. */
int ph_ip_addr(const char *host, int port, struct sockaddr_storage *sa);

/* ---- protected calls (ph_call.c) ------------------------------------------------------- */

/* The message handler for lua_pcall, lua.c's: a message with a traceback; an error object
 * with __tostring as that string alone; any other value named by its type. */
int ph_traceback(lua_State *L);

/* Runs Lua for a loop callback (output callbacks, warnings, building a result): it is called
 * under lua_pcall on the main thread, so whatever it pushes or calls is protected. */
typedef void (*ph_protected_fn)(lua_State *L, void *ud);

/* Call fn(L, ud) on the main thread under lua_pcall with ph_traceback: the one way a loop
 * callback runs Lua outside a task (tasks are resumed with ph_task_resume). Nothing is pushed
 * before the protection starts: a push can raise on a memory error, which must never unwind
 * through libuv, libcurl or libssh2. On an error the message and its traceback are logged as
 * "provider-host: <what>: ..." and, when err is not NULL, *err gets the message's first line
 * (malloc'd, NULL without memory; free it). Returns 0, or -1 when fn raised. */
int ph_protect(ph_protected_fn fn, void *ud, const char *what, char **err);

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

/* Push nil, message, code and return 3. code is one of the closed list in README.md. */
int ph_fail(lua_State *L, const char *code, const char *fmt, ...);
/* Same, with ": strerror(err)" appended to the message. */
int ph_fail_errno(lua_State *L, const char *code, int err, const char *fmt, ...);
/* Write one diagnostic line to stderr (never stdout), blocking, whole line at once. */
void ph_diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- argument checks (ph_args.c) --------------------------------------------------------- */

/* Two families. The first raises with luaL_argerror, which names the function Lua called. */

/* opts[field] must have Lua type t (or be absent unless required); misuse raises. The value
 * is left on the stack (so a string stays valid); returns 1 when present. */
int ph_opt_field(lua_State *L, int idx, const char *field, int t, int required);
double ph_opt_number(lua_State *L, int idx, const char *field, double dflt);
lua_Integer ph_opt_integer(lua_State *L, int idx, const char *field, lua_Integer dflt);
/* opts[field] as a number of seconds in [0, 1e9] ((0, 1e9] unless allow_zero), dflt when
 * absent. */
double ph_opt_seconds(lua_State *L, int idx, const char *field, double dflt, int allow_zero);

/* The second is for functions called through a Lua facade, where luaL_argerror could only name
 * them '?': the caller names itself (fname), and the options table is at index 1. */

/* Raise "bad argument #1 to 'fname' (...)". */
int ph_argerror_in(lua_State *L, const char *fname, const char *fmt, ...);
/* Push opts[field]; raise through ph_argerror_in unless nil or type t. Returns 1 when present
 * (the value is left on the stack either way). */
int ph_opt_field_in(lua_State *L, const char *fname, const char *field, int t);
/* opts[field] as an integer in [lo, hi], dflt when absent; raises otherwise. */
lua_Integer ph_opt_integer_in(lua_State *L, const char *fname, const char *field, lua_Integer dflt,
                              lua_Integer lo, lua_Integer hi);
/* opts[field] as a number of seconds in [0, 1e9] ((0, 1e9] unless allow_zero), dflt when
 * absent; raises otherwise. */
double ph_opt_seconds_in(lua_State *L, const char *fname, const char *field, double dflt,
                         int allow_zero);

/* ---- signals (mod_sys.c) ----------------------------------------------------------- */

/* The parent pid main() started with (ph_note_parent): a later getppid() that differs means
 * the parent died and we were reparented. A parent that is pid 1 (a container's init) is a
 * parent like any other. */
void ph_note_parent(void);
int ph_signal_number(const char *name); /* "SIGTERM" or "TERM" -> number, -1 if unknown */
const char *ph_signal_name(int num);    /* NULL if not in our table */

/* ---- paths and state (ph_state.c) ---------------------------------------------------- */

lua_State *ph_state_new(void);
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
int luaopen_host_core_rawtcp(lua_State *L);     /* spec-only: a raw TCP client */
int luaopen_host_core_frame(lua_State *L);      /* the bridge's frame codec (bridge/frame.h) */
int luaopen_host_core_http_parse(lua_State *L); /* the server's request parser, for streams */

#endif
