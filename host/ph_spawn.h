/* ph_spawn.h - starting a child in its own session and process group, with its stdio on pipes
 * the caller owns, and learning when it exits. Two backends behind one interface: posix_spawn
 * (a vfork-like clone: no copy of the host's memory) watched through a pidfd polled on the
 * loop, and uv_spawn, the fallback on kernels without pidfd_open. Used by mod_proc.c, which
 * owns the handles' lifetime and everything Lua sees. */
#ifndef PH_SPAWN_H
#define PH_SPAWN_H

#include "ph.h"

typedef struct PhChild PhChild;

/* The leader was reaped: status is its exit code (0 when a signal killed it, -1 when someone
 * else reaped it and the status is lost), sig the signal that killed it (0 when it exited). */
typedef void (*ph_child_exit_cb)(PhChild *c, int64_t status, int sig);

/* What watches the leader for its exit: nothing (yet, or any more), libuv's process handle
 * (uv_spawn), or a poll handle on its pidfd (posix_spawn). */
enum { PH_WATCH_NONE, PH_WATCH_PROCESS, PH_WATCH_PIDFD };

struct PhChild {
    union {
        uv_process_t process; /* PH_WATCH_PROCESS */
        uv_poll_t poll;       /* PH_WATCH_PIDFD: readable once the leader exited */
    } leader;
    int watch; /* PH_WATCH_*: which member of leader is initialised and not closed yet */
    int pidfd; /* PH_WATCH_PIDFD: the descriptor polled; -1 otherwise */
    int pid;   /* once started; its process group and session have the same number */
    ph_child_exit_cb on_exit;
    void *data; /* the caller's */
};

/* What to start. The pipes are initialised (uv_pipe_init) and not open yet: the child's ends
 * go to its 0..2, ours are opened on them. */
typedef struct {
    char **args;       /* args[0] is looked up in the child's PATH, as execvp does */
    char **envp;       /* "K=V" strings, NULL-terminated; NULL: ours */
    const char *cwd;   /* NULL: ours */
    uv_pipe_t *in;     /* for the child's stdin, or NULL: /dev/null */
    uv_pipe_t *out[2]; /* for its stdout and stderr */
} PhSpawn;

void ph_child_init(PhChild *c, ph_child_exit_cb on_exit, void *data);
/* Start the child and watch it: 0, or a libuv error, and then no child was left running.
 * Either way a leader handle may be initialised (c->watch != PH_WATCH_NONE): the caller counts
 * it among its handles and closes it with ph_child_unwatch. */
int ph_spawn(PhChild *c, const PhSpawn *o);
/* Stop watching the leader (it was reaped, or the spawn failed): its handle gets data and is
 * closed with cb, the pidfd is closed. Nothing happens when nothing is watched. */
void ph_child_unwatch(PhChild *c, void *data, uv_close_cb cb);

/* on != 0: start children with uv_spawn even where pidfd_open works, so that the specs cover
 * the fallback too. Returns the previous setting. */
int ph_spawn_force_uv(int on);
/* How the next child will start: "posix_spawn", or "uv_spawn" (forced, or no pidfd_open, as
 * under valgrind). */
const char *ph_spawn_way(void);

#endif
