/* signals.c - the signals exec and serve handle, blocked but while they wait. */
#include "signals.h"

#include <signal.h>
#include <string.h>
#include <time.h>

static const int SIGNALS[] = { SIGTERM, SIGINT, SIGHUP, SIGCHLD };
#define NSIGNALS ((int)(sizeof SIGNALS / sizeof SIGNALS[0]))

static sigset_t run_mask;   /* the mask while we wait in ppoll: our signals deliverable */
static sigset_t start_mask; /* the mask we were started with, given back to commands */
static struct sigaction saved[NSIGNALS];

void ph_signals_setup(void (*handler)(int sig))
{
    sigset_t ours;
    sigemptyset(&ours);
    for (int i = 0; i < NSIGNALS; i++)
        sigaddset(&ours, SIGNALS[i]);
    sigprocmask(SIG_BLOCK, &ours, &start_mask);
    run_mask = start_mask;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < NSIGNALS; i++) {
        sigaction(SIGNALS[i], &sa, &saved[i]);
        if (SIGNALS[i] != SIGCHLD && saved[i].sa_handler == SIG_IGN)
            sigaction(SIGNALS[i], &saved[i], NULL);
        sigdelset(&run_mask, SIGNALS[i]);
    }
    signal(SIGPIPE, SIG_IGN);
}

void ph_signals_restore(void)
{
    for (int i = 0; i < NSIGNALS; i++)
        if (SIGNALS[i] != SIGCHLD)
            sigaction(SIGNALS[i], &saved[i], NULL);
    signal(SIGCHLD, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    sigprocmask(SIG_SETMASK, &start_mask, NULL);
}

int64_t ph_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int ph_wait(struct pollfd *pfd, nfds_t n, int64_t wake, int64_t now)
{
    struct timespec ts, *tsp = NULL;
    if (wake != INT64_MAX) {
        int64_t ms = wake > now ? wake - now : 0;
        ts.tv_sec = (time_t)(ms / 1000);
        ts.tv_nsec = (long)(ms % 1000) * 1000000;
        tsp = &ts;
    }
    return ppoll(pfd, n, tsp, &run_mask);
}
