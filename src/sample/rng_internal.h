/* Internals of rng.c exposed for unit tests (known-answer vectors). */
#ifndef SDGEN_SAMPLE_RNG_INTERNAL_H
#define SDGEN_SAMPLE_RNG_INTERNAL_H

#include <stdint.h>

/* Philox4x32-10 block function (Random123 / curand): ctr is replaced by
 * the output block for key (k0, k1). */
void sd_philox4x32_10(uint32_t ctr[4], uint32_t k0, uint32_t k1);

#endif
