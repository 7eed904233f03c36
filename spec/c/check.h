/* check.h - what the C unit tests share: counted checks, a reproducible random generator,
 * and the "N passed, M failed" report. Each test includes it once. */
#ifndef PH_SPEC_CHECK_H
#define PH_SPEC_CHECK_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

static int passed, failed;

/* Counts a check; a failed one is printed with its printf-style description. */
__attribute__((format(printf, 2, 3))) static inline void check(int ok, const char *fmt, ...)
{
    if (ok) {
        passed++;
        return;
    }
    failed++;
    va_list ap;
    va_start(ap, fmt);
    fputs("FAIL: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* Deterministic xorshift64*, so a failure can be replayed. */
static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static inline uint64_t rng(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * UINT64_C(0x2545f4914f6cdd1d);
}

/* A number in [0, bound), or 0 when bound is 0. */
static inline size_t rnd(size_t bound)
{
    return bound ? (size_t)(rng() >> 32) % bound : 0;
}

/* Prints the counts; the test's exit status. */
static inline int check_report(void)
{
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

#endif
