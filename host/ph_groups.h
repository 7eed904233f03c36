/* ph_groups.h - every process group this process started (each child is the leader of its
 * own group, see ph_spawn.h), so that none outlives it: the groups are ended (SIGTERM, then
 * SIGKILL) on the way out, and by a watchdog process when this one dies with no way out
 * (SIGKILL, a crash). */
#ifndef PH_GROUPS_H
#define PH_GROUPS_H

/* A child was started: its group (pgid = its pid) is recorded until it is known empty. */
void ph_groups_add(int pgid);
/* The leader was reaped: the group is forgotten if nothing of it is left; a group with
 * members left (a command's background children) stays recorded. */
void ph_groups_forget_if_empty(int pgid);
/* Send sig to every recorded group that still has a member; returns how many it reached. */
int ph_groups_signal_all(int sig);
/* How many recorded groups still have a running member (zombies waiting for their reaper
 * do not count). */
int ph_groups_running(void);
/* SIGTERM (and SIGCONT) to every group, up to grace seconds for them to end, SIGKILL to what
 * is left. Blocking: for the way out, when the loop no longer runs. Returns the groups that
 * had to be killed. Also run at exit (atexit) with a short grace. */
int ph_groups_end_all(double grace);

/* Start the watchdog: a process of its own (own session, stdio on /dev/null) that learns of
 * every group through a pipe and, when the pipe closes (this process is gone, however it
 * ended), ends every group still recorded: SIGTERM, then SIGKILL after grace seconds.
 * Returns 0 or -errno. Once per process; later calls return 0. */
int ph_watchdog_start(double grace);
/* The watchdog's pid, or 0 when none runs. */
int ph_watchdog_pid(void);

#endif
