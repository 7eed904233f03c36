/* ph_slots.c - the cap on children running at once and the queue of spawns waiting for a
 * slot (see ph_slots.h). */
#include "ph_slots.h"

#include <stdlib.h>
#include <sys/resource.h>

/* Descriptors kept for everything but children (stdio, the loop, HTTP and SSH sockets, the
 * watchdog), and what one child holds at most while it starts (three pipes, both ends, and
 * its pidfd; two of each pipe's ends close once it runs). */
#define FD_RESERVE    64
#define FDS_PER_CHILD 7
#define MAX_DEFAULT   4096

typedef struct SlotWait {
    ph_op op;
    struct SlotWait *next;
    uv_timer_t *timer; /* NULL without a deadline */
} SlotWait;

static SlotWait *head;
static int limit, used, granted, waiting;

static int default_limit(void)
{
    const char *env = getenv("PROVIDER_HOST_MAX_CHILDREN");
    char *end;
    long n = env != NULL ? strtol(env, &end, 10) : 0;
    if (env != NULL && *env != '\0' && *end == '\0' && n >= 1 && n <= 1000000)
        return (int)n;
    struct rlimit rl;
    long fds = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
                   ? (long)rl.rlim_cur
                   : 65536;
    long cap = (fds - FD_RESERVE) / FDS_PER_CHILD;
    return cap < 1 ? 1 : cap > MAX_DEFAULT ? MAX_DEFAULT : (int)cap;
}

int ph_slots_limit(void)
{
    if (limit == 0)
        limit = default_limit();
    return limit;
}

int ph_slots_used(void)
{
    return used;
}

int ph_slots_waiting(void)
{
    return waiting;
}

static void unlink_wait(SlotWait *w)
{
    SlotWait **at = &head;
    while (*at != NULL && *at != w)
        at = &(*at)->next;
    if (*at == w) {
        *at = w->next;
        waiting--;
    }
}

/* Hand the free slots to the first waiters, in order. Wake, not resume: this may run while
 * Lua code does (a slot given back from a call). */
static void grant_next(void)
{
    while (head != NULL && used + granted < ph_slots_limit()) {
        SlotWait *w = head;
        unlink_wait(w);
        ph_timer_free(&w->timer);
        granted++;
        ph_task *t = w->op.task;
        free(w);
        lua_State *co = ph_task_thread(t);
        lua_pushboolean(co, 1);
        ph_task_wake(t, 1);
    }
}

void ph_slots_set_limit(int n)
{
    limit = n >= 1 ? n : default_limit();
    grant_next();
}

int ph_slots_try_take(void)
{
    if (head != NULL || used + granted >= ph_slots_limit())
        return 0;
    used++;
    return 1;
}

void ph_slots_take_anyway(void)
{
    used++;
}

void ph_slots_take_granted(void)
{
    granted--;
    used++;
}

void ph_slots_drop_granted(void)
{
    granted--;
    grant_next();
}

void ph_slots_release(void)
{
    used--;
    grant_next();
}

static void wait_timeout(uv_timer_t *timer)
{
    SlotWait *w = timer->data;
    unlink_wait(w);
    ph_timer_free(&w->timer);
    ph_task *t = w->op.task;
    free(w);
    ph_task_resume(t, ph_fail(ph_task_thread(t), "timeout",
                              "no process slot came free within the command's deadline (%d "
                              "children running, the limit): it did not start",
                              ph_slots_limit()));
}

static void wait_cancel(ph_op *op)
{
    SlotWait *w = (SlotWait *)op;
    unlink_wait(w);
    ph_timer_free(&w->timer);
    ph_task *t = op->task;
    free(w);
    ph_task_wake(t, ph_fail(ph_task_thread(t), "canceled", "wait for a process slot canceled"));
}

int ph_slots_park(lua_State *L, ph_task *t, double timeout)
{
    SlotWait *w = calloc(1, sizeof *w);
    if (w == NULL)
        return ph_fail(L, "internal", "out of memory");
    w->op.cancel = wait_cancel;
    if (timeout >= 0) {
        if ((w->timer = ph_timer_new(w)) == NULL) {
            free(w);
            return ph_fail(L, "internal", "out of memory");
        }
        ph_timer_start(w->timer, wait_timeout, timeout);
    }
    SlotWait **at = &head; /* last in line */
    while (*at != NULL)
        at = &(*at)->next;
    *at = w;
    waiting++;
    lua_settop(L, 0);
    return ph_task_park(L, t, &w->op);
}
