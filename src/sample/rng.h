/* Random number generators that reproduce torch's noise streams.
 *
 * SD_RNG_CPU: torch.Generator("cpu").manual_seed(seed) — mt19937 with
 * torch's normal transform (its scalar path for tensors < 16 elements and the
 * vectorized Box-Muller fill for larger ones), so sd_rng_randn(g, out, n)
 * equals torch.randn(shape, generator=g) for any shape with n elements, and
 * consecutive calls continue the stream as torch does.
 * SD_RNG_CUDA: torch.Generator("cuda") (Philox4x32-10), computed on the CPU:
 * the Philox stream, per-thread subsequences, counter offsets and element
 * placement of torch's randn kernel (launch grid as on the fixtures' H200;
 * every shape up to 270336 elements is grid-independent), so a seed means
 * the same noise as on the GPU; individual values differ from the GPU's by
 * up to ~2e-6 because its fast __sincosf cannot be reproduced bit for bit. */
#ifndef SDGEN_SAMPLE_RNG_H
#define SDGEN_SAMPLE_RNG_H

#include <stdint.h>

typedef enum sd_rng_kind { SD_RNG_CPU = 0, SD_RNG_CUDA = 1 } sd_rng_kind;

typedef struct sd_rng sd_rng;

/* New generator seeded like manual_seed(seed). NULL on allocation failure. */
sd_rng *sd_rng_new(sd_rng_kind kind, uint64_t seed);
void sd_rng_free(sd_rng *g);

/* Fills out[0..n) like torch.randn(<any shape of n elements>, generator=g). */
void sd_rng_randn(sd_rng *g, float *out, int64_t n);

/* "cpu" / "cuda"; parse returns -1 for an unknown name. */
const char *sd_rng_kind_name(sd_rng_kind k);
int sd_rng_kind_parse(const char *name);

#endif
