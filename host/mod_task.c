/* mod_task.c - host.core.task: spawn, wait, cancel, sleep, now and run for Lua. */
#include "ph.h"

#include <math.h>
#include <stdlib.h>

#define TASK_MT "host.task.Task"

static int driving; /* host.task.run is driving the loop: it cannot nest */

static ph_task *check_task(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, TASK_MT);
}

static double check_seconds(lua_State *L, int idx, double dflt)
{
    double s = luaL_optnumber(L, idx, dflt);
    luaL_argcheck(L, !isnan(s) && s <= 1e9, idx, "seconds must be a number up to 1e9");
    return s;
}

/* task.spawn(fn, ...) -> Task: fn(...) runs as a new task from the next loop turn. */
static int task_spawn(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    ph_task_spawn(L, lua_gettop(L) - 1);
    return 1;
}

/* task.wait(t [, timeout]) -> t's return values | nil, msg, "timeout"|"canceled"|"internal" */
static int task_wait(lua_State *L)
{
    ph_task *t = check_task(L, 1);
    double timeout = lua_isnoneornil(L, 2) ? -1 : check_seconds(L, 2, -1);
    if (lua_isnoneornil(L, 2) == 0)
        luaL_argcheck(L, timeout >= 0, 2, "timeout must not be negative");
    lua_settop(L, 1); /* nothing of ours may sit above the results */
    return ph_task_wait(L, t, timeout);
}

/* task.cancel(t): its pending operation ends with "canceled"; so do its later ones. */
static int task_cancel(lua_State *L)
{
    ph_task_cancel(check_task(L, 1));
    return 0;
}

/* task.cancel_after(t, seconds | nil): t is canceled when its deadline passes; nil disarms. */
static int task_cancel_after(lua_State *L)
{
    ph_task *t = check_task(L, 1);
    double s = lua_isnoneornil(L, 2) ? -1 : check_seconds(L, 2, 0);
    if (!lua_isnoneornil(L, 2))
        luaL_argcheck(L, s >= 0, 2, "seconds must not be negative");
    if (ph_task_cancel_after(t, s) != 0)
        return ph_fail(L, "internal", "out of memory");
    lua_pushboolean(L, 1);
    return 1;
}

/* task.expired(t) -> boolean: its deadline fired (and canceled it). */
static int task_expired(lua_State *L)
{
    lua_pushboolean(L, ph_task_is_expired(check_task(L, 1)));
    return 1;
}

/* task.done(t) -> boolean */
static int task_done(lua_State *L)
{
    lua_pushboolean(L, ph_task_is_done(check_task(L, 1)));
    return 1;
}

/* task.current() -> Task | nil */
static int task_current(lua_State *L)
{
    ph_task *t = ph_task_of(L);
    if (t == NULL || !lua_isyieldable(L))
        return 0;
    ph_task_push(L, t);
    return 1;
}

typedef struct {
    ph_op op;
    uv_timer_t *timer;
} SleepOp;

static void sleep_fired(uv_timer_t *timer)
{
    SleepOp *s = timer->data;
    ph_task *t = s->op.task;
    ph_timer_free(&s->timer);
    free(s);
    lua_pushboolean(ph_task_thread(t), 1);
    ph_task_resume(t, 1);
}

static void sleep_cancel(ph_op *op)
{
    SleepOp *s = (SleepOp *)op;
    ph_task *t = op->task;
    ph_timer_free(&s->timer);
    free(s);
    ph_task_wake(t, ph_fail(ph_task_thread(t), "canceled", "sleep canceled"));
}

/* task.sleep(seconds) -> true | nil, msg, "canceled" */
static int task_sleep(lua_State *L)
{
    double s = check_seconds(L, 1, 0);
    luaL_argcheck(L, s >= 0, 1, "seconds must not be negative");
    ph_task *t = ph_task_current(L);
    if (ph_task_is_canceled(t))
        return ph_fail(L, "canceled", "sleep canceled");
    SleepOp *op = calloc(1, sizeof *op);
    if (op == NULL || (op->timer = ph_timer_new(op)) == NULL) {
        free(op);
        return ph_fail(L, "internal", "out of memory");
    }
    op->op.cancel = sleep_cancel;
    ph_timer_start(op->timer, sleep_fired, s);
    lua_settop(L, 0);
    return ph_task_park(L, t, &op->op);
}

/* task.yield(): let every other ready task run, then continue. */
static int task_yield(lua_State *L)
{
    ph_task_current(L);
    return lua_yield(L, 0);
}

/* task.now() -> monotonic seconds (float) */
static int task_now(lua_State *L)
{
    lua_pushnumber(L, ph_now());
    return 1;
}

/* task.running() -> number of tasks not finished */
static int task_running(lua_State *L)
{
    lua_pushinteger(L, ph_tasks_running());
    return 1;
}

/* task.run(fn, ...) -> fn's results: drive the loop until fn finishes (script mode). Raises
 * fn's error. Not allowed inside a task or inside a running loop. */
static int task_run(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    if (ph_task_of(L) != NULL)
        return luaL_error(L, "host.task.run cannot be called inside a task; "
                             "call the function directly or use host.task.spawn");
    if (driving)
        return luaL_error(L, "host.task.run cannot be nested inside a loop callback");
    ph_task *t = ph_task_spawn(L, lua_gettop(L) - 1);
    ph_task_set_quiet(t);
    driving = 1;
    ph_task_drive(t);
    driving = 0;
    if (!ph_task_is_done(t))
        return luaL_error(L, "host.task.run: the task can never finish (deadlock)");
    if (!ph_task_state_ok(t)) {
        ph_task_push_error(L, t);
        return lua_error(L); /* the original error object, so test frameworks see it */
    }
    return ph_task_push_results(L, t);
}

/* ---- signals ------------------------------------------------------------------------------ */

#define SIGNAL_MT "host.task.Signal"

/* A condition tasks wait on until someone notifies it: what turns callbacks that cannot yield
 * (process output, stream frames) into a task that blocks until there is work. Level-free:
 * notify wakes the tasks waiting now, so waiters re-check their condition in a loop. */
typedef struct SignalWaiter SignalWaiter;
typedef struct {
    SignalWaiter *waiters;
} Signal;

struct SignalWaiter {
    ph_op op;
    Signal *sig;
    SignalWaiter *next;
    uv_timer_t *timer; /* NULL without a deadline */
};

static void signal_detach(SignalWaiter *w)
{
    SignalWaiter **pp = &w->sig->waiters;
    while (*pp != NULL && *pp != w)
        pp = &(*pp)->next;
    if (*pp == w)
        *pp = w->next;
    ph_timer_free(&w->timer);
}

static void signal_wait_cancel(ph_op *op)
{
    SignalWaiter *w = (SignalWaiter *)op;
    ph_task *t = op->task;
    signal_detach(w);
    free(w);
    ph_task_wake(t, ph_fail(ph_task_thread(t), "canceled", "wait canceled"));
}

static void signal_wait_timeout(uv_timer_t *timer)
{
    SignalWaiter *w = timer->data;
    ph_task *t = w->op.task;
    signal_detach(w);
    free(w);
    ph_task_resume(t, ph_fail(ph_task_thread(t), "timeout", "wait timed out"));
}

/* task.signal() -> Signal */
static int task_signal(lua_State *L)
{
    Signal *s = lua_newuserdatauv(L, sizeof *s, 0);
    s->waiters = NULL;
    luaL_setmetatable(L, SIGNAL_MT);
    return 1;
}

/* Signal:wait([timeout]) -> true | nil, msg, "timeout"|"canceled" */
static int signal_wait(lua_State *L)
{
    Signal *s = luaL_checkudata(L, 1, SIGNAL_MT);
    double timeout = lua_isnoneornil(L, 2) ? -1 : check_seconds(L, 2, -1);
    if (!lua_isnoneornil(L, 2))
        luaL_argcheck(L, timeout >= 0, 2, "timeout must not be negative");
    ph_task *t = ph_task_current(L);
    if (ph_task_is_canceled(t))
        return ph_fail(L, "canceled", "wait canceled");
    SignalWaiter *w = calloc(1, sizeof *w);
    if (w == NULL)
        return ph_fail(L, "internal", "out of memory");
    if (timeout >= 0 && (w->timer = ph_timer_new(w)) == NULL) {
        free(w);
        return ph_fail(L, "internal", "out of memory");
    }
    w->op.cancel = signal_wait_cancel;
    w->sig = s;
    w->next = s->waiters;
    s->waiters = w;
    if (w->timer != NULL)
        ph_timer_start(w->timer, signal_wait_timeout, timeout);
    lua_settop(L, 1); /* the Signal stays on the parked thread's stack: it outlives its waiters */
    return ph_task_park(L, t, &w->op);
}

/* Signal:notify() -> number of tasks woken. Safe from callbacks that run outside tasks. */
static int signal_notify(lua_State *L)
{
    Signal *s = luaL_checkudata(L, 1, SIGNAL_MT);
    SignalWaiter *w = s->waiters;
    s->waiters = NULL;
    lua_Integer n = 0;
    while (w != NULL) {
        SignalWaiter *next = w->next;
        ph_task *t = w->op.task;
        ph_timer_free(&w->timer);
        free(w);
        lua_pushboolean(ph_task_thread(t), 1);
        ph_task_wake(t, 1);
        n++;
        w = next;
    }
    lua_pushinteger(L, n);
    return 1;
}

static const luaL_Reg signal_methods[] = {
    { "wait", signal_wait },
    { "notify", signal_notify },
    { NULL, NULL },
};

static const luaL_Reg task_funcs[] = {
    { "spawn", task_spawn }, { "wait", task_wait },       { "cancel", task_cancel },
    { "done", task_done },   { "current", task_current }, { "sleep", task_sleep },
    { "yield", task_yield }, { "now", task_now },         { "running", task_running },
    { "run", task_run },     { "signal", task_signal },   { NULL, NULL },
};

static const luaL_Reg task_methods[] = {
    { "wait", task_wait },       { "cancel", task_cancel },
    { "done", task_done },       { "cancel_after", task_cancel_after },
    { "expired", task_expired }, { NULL, NULL },
};

int luaopen_host_core_task(lua_State *L)
{
    ph_task_init(L);
    luaL_getmetatable(L, TASK_MT);
    lua_getfield(L, -1, "__index");
    if (lua_isnil(L, -1)) {
        luaL_newlib(L, task_methods);
        lua_setfield(L, -3, "__index");
    }
    lua_pop(L, 2);
    if (luaL_newmetatable(L, SIGNAL_MT)) { /* busted re-requires modules per spec file */
        luaL_newlib(L, signal_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    luaL_newlib(L, task_funcs);
    return 1;
}
