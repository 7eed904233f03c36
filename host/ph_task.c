/* ph_task.c - tasks: coroutines created, anchored and resumed by C from the loop's top level. */
#include "ph.h"

#include <stdlib.h>
#include <string.h>

#define TASK_MT "host.task.Task"

enum { TASK_READY, TASK_RUNNING, TASK_PARKED, TASK_DONE };

typedef struct Join Join;

/* The Task userdata is the struct itself; its user value is the coroutine. */
struct ph_task {
    lua_State *co;
    int ref;       /* registry ref to the userdata while not done: C anchors what it runs */
    int state;     /* TASK_* */
    int canceled;  /* later primitives fail with "canceled" */
    int ok;        /* when done: returned (1) or raised (0) */
    int wake_args; /* values waiting on co's stack for the next resume */
    ph_op *op;     /* what the task is parked on */
    int quiet;     /* its error is delivered to a driver: do not also log it */
    int expired;   /* its deadline (ph_task_cancel_after) fired */
    uv_timer_t *deadline;
    int results; /* registry ref to {n=, ...}: returned values, or the error message */
    ph_task *next_ready;
    Join *joiners; /* tasks waiting for this one to finish */
};

/* A task waiting for another (task:wait) with an optional deadline. */
struct Join {
    ph_op op;
    ph_task *target;
    Join *next;
    uv_timer_t *timer; /* NULL without a deadline */
};

static ph_task *ready_head, *ready_tail;
static uv_idle_t *ready_idle;
static int running_tasks;
static int task_depth; /* > 0 while a task's Lua code runs: resuming then would nest */

static void run_ready(uv_idle_t *idle);

static void enqueue(ph_task *t, int nargs)
{
    t->state = TASK_READY;
    t->wake_args = nargs;
    t->next_ready = NULL;
    if (ready_tail != NULL)
        ready_tail->next_ready = t;
    else
        ready_head = t;
    ready_tail = t;
    if (ready_idle == NULL) {
        ready_idle = malloc(sizeof *ready_idle);
        if (ready_idle == NULL)
            abort(); /* nothing sane is left to do without a scheduler */
        uv_idle_init(ph_loop(), ready_idle);
    }
    if (!uv_is_active((uv_handle_t *)ready_idle))
        uv_idle_start(ready_idle, run_ready);
}

static ph_task *task_from_thread(lua_State *L)
{
    return *(ph_task **)lua_getextraspace(L);
}

ph_task *ph_task_of(lua_State *L)
{
    return task_from_thread(L);
}

ph_task *ph_task_current(lua_State *L)
{
    if (!lua_isyieldable(L))
        luaL_error(L, "this call must run inside a task (a hook, host.task.spawn or "
                      "host.task.run), not in a main chunk or a callback");
    ph_task *t = task_from_thread(L);
    if (t == NULL)
        luaL_error(L, "this call must run inside a host task, not a plain coroutine");
    return t;
}

lua_State *ph_task_thread(ph_task *t)
{
    return t->co;
}

int ph_task_is_canceled(ph_task *t)
{
    return t->canceled;
}

int ph_task_is_done(ph_task *t)
{
    return t->state == TASK_DONE;
}

int ph_tasks_running(void)
{
    return running_tasks;
}

int ph_task_park(lua_State *L, ph_task *t, ph_op *op)
{
    op->task = t;
    t->op = op;
    return lua_yield(L, 0);
}

static void join_finish(Join *j, lua_State *co);

/* The task's function returned or raised: keep its results for waiters, release the
 * anchor and wake everyone waiting. */
static void task_finish(ph_task *t, int status, int nres)
{
    lua_State *L = ph_main_state();
    lua_State *co = t->co;

    if (status == LUA_OK) {
        t->ok = 1;
        lua_createtable(L, nres, 1);
        int tb = lua_absindex(L, -1);
        lua_xmove(co, L, nres);
        for (int i = nres; i >= 1; i--)
            lua_rawseti(L, tb, i);
    } else {
        t->ok = 0;
        if (!t->quiet && t->joiners == NULL) { /* nobody will see it otherwise */
            const char *msg = luaL_tolstring(co, -1, NULL);
            luaL_traceback(L, co, msg, 0);
            ph_diag("provider-host: task failed: %s", lua_tostring(L, -1));
            lua_pop(L, 1);
            lua_pop(co, 1);
        }
        lua_createtable(L, 1, 1);
        lua_xmove(co, L, 1); /* the error object itself, for host.task.run to re-raise */
        lua_rawseti(L, -2, 1);
        nres = 1;
    }
    lua_pushinteger(L, nres);
    lua_setfield(L, -2, "n");
    t->results = luaL_ref(L, LUA_REGISTRYINDEX); /* dropped by the Task's __gc */

    ph_timer_free(&t->deadline);
    /* Closes pending to-be-closed variables now (after an error), not at collection. */
    lua_resetthread(co);
    *(ph_task **)lua_getextraspace(co) = NULL;
    t->state = TASK_DONE;
    t->op = NULL;
    running_tasks--;

    Join *j = t->joiners;
    t->joiners = NULL;
    while (j != NULL) {
        Join *next = j->next;
        join_finish(j, j->op.task->co);
        j = next;
    }
    luaL_unref(L, LUA_REGISTRYINDEX, t->ref); /* may let the userdata be collected */
    t->ref = LUA_NOREF;
}

static void task_run(ph_task *t, int nargs)
{
    int nres;
    t->state = TASK_RUNNING;
    t->op = NULL;
    task_depth++;
    int status = lua_resume(t->co, ph_main_state(), nargs, &nres);
    task_depth--;
    if (status == LUA_YIELD) {
        lua_pop(t->co, nres);
        if (t->op == NULL) {
            enqueue(t, 0); /* a bare coroutine.yield(): let others run, then go on */
        } else {
            t->state = TASK_PARKED;
            if (t->canceled)
                t->op->cancel(t->op); /* started after cancel: undo at once */
        }
        return;
    }
    task_finish(t, status, status == LUA_OK ? nres : 1);
}

void ph_task_resume(ph_task *t, int nargs)
{
    if (task_depth > 0) { /* defensive: never nest a resume inside running Lua */
        ph_task_wake(t, nargs);
        return;
    }
    task_run(t, nargs);
}

void ph_task_wake(ph_task *t, int nargs)
{
    t->op = NULL;
    enqueue(t, nargs);
}

/* Longest stretch of task code per loop turn before I/O gets a look-in: a burst of tasks
 * that each block briefly (1000 process spawns) must not hold replies back for seconds. */
#define READY_SLICE_NS (5 * 1000 * 1000)

static void run_ready(uv_idle_t *idle)
{
    /* Take the current batch only: tasks queued while it runs go in the next turn, so
     * timers and I/O are never starved by tasks that keep yielding. */
    ph_task *t = ready_head;
    ready_head = ready_tail = NULL;
    uint64_t until = uv_hrtime() + READY_SLICE_NS;
    while (t != NULL) {
        ph_task *next = t->next_ready;
        t->next_ready = NULL;
        if (t->state == TASK_READY)
            task_run(t, t->wake_args);
        t = next;
        if (t != NULL && uv_hrtime() > until) {
            /* Out of time: the rest of this batch goes first in the next turn. */
            ph_task *last = t;
            while (last->next_ready != NULL)
                last = last->next_ready;
            last->next_ready = ready_head;
            if (ready_head == NULL)
                ready_tail = last;
            ready_head = t;
            return; /* the idle handle stays active: the loop polls I/O without blocking */
        }
    }
    if (ready_head == NULL)
        uv_idle_stop(idle);
}

ph_task *ph_task_spawn(lua_State *L, int nargs)
{
    luaL_checktype(L, -(nargs + 1), LUA_TFUNCTION);
    lua_State *co = lua_newthread(L); /* fn args co */
    ph_task *t = lua_newuserdatauv(L, sizeof *t, 1);
    memset(t, 0, sizeof *t);
    t->co = co;
    t->results = LUA_NOREF;
    luaL_setmetatable(L, TASK_MT);
    lua_pushvalue(L, -2);
    lua_setiuservalue(L, -2, 1); /* the task keeps its coroutine alive */
    lua_pushvalue(L, -1);
    t->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    *(ph_task **)lua_getextraspace(co) = t;
    /* fn args co task -> move fn and args onto the coroutine, leave the task on L */
    lua_rotate(L, -(nargs + 3), 2); /* co task fn args */
    lua_xmove(L, co, nargs + 1);
    lua_remove(L, -2); /* task */
    running_tasks++;
    enqueue(t, nargs);
    return t;
}

/* ---- joining ------------------------------------------------------------------------- */

static void join_detach(Join *j)
{
    Join **pp = &j->target->joiners;
    while (*pp != NULL && *pp != j)
        pp = &(*pp)->next;
    if (*pp == j)
        *pp = j->next;
    ph_timer_free(&j->timer);
}

/* The target finished: hand its results to the waiter. */
static void join_finish(Join *j, lua_State *co)
{
    ph_task *waiter = j->op.task;
    ph_timer_free(&j->timer);
    int n = ph_task_push_results(co, j->target);
    free(j);
    ph_task_wake(waiter, n);
}

static void join_cancel(ph_op *op)
{
    Join *j = (Join *)op;
    ph_task *waiter = op->task;
    join_detach(j);
    free(j);
    ph_task_wake(waiter, ph_fail(waiter->co, "canceled", "wait canceled"));
}

static void join_timeout(uv_timer_t *timer)
{
    Join *j = timer->data;
    ph_task *waiter = j->op.task;
    join_detach(j);
    free(j);
    ph_task_resume(waiter, ph_fail(waiter->co, "timeout", "wait timed out"));
}

int ph_task_push_results(lua_State *L, ph_task *t)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->results);
    if (!t->ok) {
        lua_rawgeti(L, -1, 1);
        const char *msg = luaL_tolstring(L, -1, NULL);
        lua_pushfstring(L, "task failed: %s", msg);
        lua_remove(L, -2);
        lua_replace(L, -3);
        lua_pop(L, 1);
        luaL_pushfail(L);
        lua_insert(L, -2);
        lua_pushliteral(L, "internal");
        return 3;
    }
    lua_getfield(L, -1, "n");
    int n = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    luaL_checkstack(L, n, "too many task results");
    for (int i = 1; i <= n; i++)
        lua_rawgeti(L, -i, i);
    lua_remove(L, -(n + 1));
    return n;
}

int ph_task_wait(lua_State *L, ph_task *target, double timeout)
{
    ph_task *self = ph_task_current(L);
    if (target == self)
        return luaL_error(L, "a task cannot wait for itself");
    if (target->state == TASK_DONE)
        return ph_task_push_results(L, target);
    if (self->canceled)
        return ph_fail(L, "canceled", "wait canceled");
    Join *j = calloc(1, sizeof *j);
    if (j == NULL)
        return ph_fail(L, "internal", "out of memory");
    j->op.cancel = join_cancel;
    j->target = target;
    if (timeout >= 0) {
        if ((j->timer = ph_timer_new(j)) == NULL) {
            free(j);
            return ph_fail(L, "internal", "out of memory");
        }
        ph_timer_start(j->timer, join_timeout, timeout);
    }
    j->next = target->joiners;
    target->joiners = j;
    return ph_task_park(L, self, &j->op);
}

void ph_task_cancel(ph_task *t)
{
    if (t->state == TASK_DONE || t->canceled)
        return;
    t->canceled = 1;
    if (t->state == TASK_PARKED && t->op != NULL) {
        ph_op *op = t->op;
        t->op = NULL;
        op->cancel(op);
    }
}

static void deadline_fired(uv_timer_t *timer)
{
    ph_task *t = timer->data;
    t->expired = 1;
    ph_task_cancel(t);
}

int ph_task_cancel_after(ph_task *t, double seconds)
{
    if (t->state == TASK_DONE)
        return 0;
    if (seconds < 0) { /* disarm */
        if (t->deadline != NULL)
            uv_timer_stop(t->deadline);
        return 0;
    }
    if (t->deadline == NULL && (t->deadline = ph_timer_new(t)) == NULL)
        return -1;
    ph_timer_start(t->deadline, deadline_fired, seconds);
    return 0;
}

int ph_task_is_expired(ph_task *t)
{
    return t->expired;
}

void ph_task_drive(ph_task *t)
{
    while (t->state != TASK_DONE) {
        int alive = uv_run(ph_loop(), UV_RUN_ONCE);
        if (!alive && t->state != TASK_DONE && ready_head == NULL) {
            /* Nothing can ever wake it: fail loudly rather than spin. */
            ph_diag("provider-host: deadlock: the task waits for something that cannot happen");
            ph_task_cancel(t);
            if (ready_head == NULL)
                break;
        }
    }
}

static int task_gc(lua_State *L)
{
    ph_task *t = lua_touserdata(L, 1);
    if (t->results != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, t->results);
        t->results = LUA_NOREF;
    }
    return 0;
}

static int task_tostring(lua_State *L)
{
    ph_task *t = lua_touserdata(L, 1);
    static const char *names[] = { "ready", "running", "parked", "done" };
    lua_pushfstring(L, "host.task.Task (%s%s): %p", names[t->state],
                    t->canceled ? ", canceled" : "", (void *)t);
    return 1;
}

void ph_task_init(lua_State *L)
{
    /* New threads copy the main thread's extra space: NULL marks plain coroutines. Only the
     * main thread's is touched here; L may be a task requiring host.core.task. */
    *(ph_task **)lua_getextraspace(ph_main_state()) = NULL;
    if (luaL_newmetatable(L, TASK_MT)) {
        lua_pushcfunction(L, task_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, task_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
}

int ph_task_state_ok(ph_task *t)
{
    return t->ok;
}

void ph_task_push(lua_State *L, ph_task *t)
{
    if (t->ref != LUA_NOREF)
        lua_rawgeti(L, LUA_REGISTRYINDEX, t->ref);
    else
        lua_pushnil(L);
}

void ph_task_set_quiet(ph_task *t)
{
    t->quiet = 1;
}

int ph_task_push_error(lua_State *L, ph_task *t)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->results);
    lua_rawgeti(L, -1, 1);
    lua_remove(L, -2);
    return 1;
}
