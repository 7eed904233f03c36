/* ph_slots.h - a cap on the children running at once. A spawn past it waits its turn (first
 * come, first served) within its deadline, instead of failing for want of descriptors. The
 * default comes from the open-files limit; PROVIDER_HOST_MAX_CHILDREN replaces it. */
#ifndef PH_SLOTS_H
#define PH_SLOTS_H

#include "ph.h"

/* The cap (computed on first use), and setting it (n < 1: back to the default). */
int ph_slots_limit(void);
void ph_slots_set_limit(int n);
/* Children holding a slot, and spawns waiting for one. */
int ph_slots_used(void);
int ph_slots_waiting(void);

/* 1: a slot was free and no one waits before us, and it is taken; 0: wait (ph_slots_park). */
int ph_slots_try_take(void);
/* Outside a task nothing can wait: the slot is taken past the cap. */
void ph_slots_take_anyway(void);
/* Park task t until a slot is reserved for it: resumed with true (then exactly one of
 * ph_slots_take_granted or ph_slots_drop_granted follows) or nil, msg, "timeout"|"canceled"
 * (timeout < 0: none). Tail call. */
int ph_slots_park(lua_State *L, ph_task *t, double timeout);
/* The slot reserved for a resumed spawn: taken for its child, or given back unused. */
void ph_slots_take_granted(void);
void ph_slots_drop_granted(void);
/* A child's descriptors are all closed (or it never started): its slot goes to the next. */
void ph_slots_release(void);

#endif
