/* fuzz_rng.h - the C targets' split points and choices, drawn from a seed the input carries,
 * so that a crash reproduces from its input alone (xorshift32; seed rng_state before use). */
#ifndef FUZZ_RNG_H
#define FUZZ_RNG_H

#include <stdint.h>

static uint32_t rng_state;

/* A number in [0, n), or 0 when n is 0. */
static inline uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return n ? rng_state % n : 0;
}

#endif
