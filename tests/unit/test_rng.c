/* RNG unit tests: known answers, stream properties, seeds. Fixture-backed
 * bitwise checks live in the conformance suite (rng/). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "base/alloc.h"
#include "sample/rng.h"
#include "sample/rng_internal.h"
#include "test_util.h"

static void draw(sd_rng_kind kind, uint64_t seed, float *out, int64_t n) {
  sd_rng *g = sd_rng_new(kind, seed);
  CHECK(g != NULL);
  if (!g) return;
  sd_rng_randn(g, out, n);
  sd_rng_free(g);
}

/* torch.manual_seed(0); torch.randn(2, 2) -> [[1.5410, -0.2934],
 * [-2.1788, 0.5684]] (the scalar path, numel < 16). */
static void test_torch_known_values(void) {
  float v[4];
  draw(SD_RNG_CPU, 0, v, 4);
  CHECK_MSG(fabsf(v[0] - 1.5410f) < 1e-4f, "randn[0] = %f", v[0]);
  CHECK_MSG(fabsf(v[1] + 0.2934f) < 1e-4f, "randn[1] = %f", v[1]);
  CHECK_MSG(fabsf(v[2] + 2.1788f) < 1e-4f, "randn[2] = %f", v[2]);
  CHECK_MSG(fabsf(v[3] - 0.5684f) < 1e-4f, "randn[3] = %f", v[3]);
}

/* Random123 known-answer vectors for Philox4x32-10. */
static void test_philox_kat(void) {
  uint32_t c0[4] = {0, 0, 0, 0};
  sd_philox4x32_10(c0, 0, 0);
  CHECK(c0[0] == 0x6627e8d5u && c0[1] == 0xe169c58du && c0[2] == 0xbc57ac4cu &&
        c0[3] == 0x9b00dbd8u);
  uint32_t c1[4] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu};
  sd_philox4x32_10(c1, 0xffffffffu, 0xffffffffu);
  CHECK(c1[0] == 0x408f276du && c1[1] == 0x41c83b0eu && c1[2] == 0xa20bc7c6u &&
        c1[3] == 0x6d5451fdu);
  uint32_t c2[4] = {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u};
  sd_philox4x32_10(c2, 0xa4093822u, 0x299f31d0u);
  CHECK(c2[0] == 0xd16cfe09u && c2[1] == 0x94fdccebu && c2[2] == 0x5001e420u &&
        c2[3] == 0x24126ea1u);
}

/* The vectorized path transforms whole blocks of 16 uniforms, so a draw of
 * 32 equals two consecutive draws of 16; a tail (n % 16 != 0) re-draws the
 * last 16, so 17 values are not the first 17 of a longer draw. */
static void test_stream_continuation(void) {
  float a[32], b[32], c[48];
  draw(SD_RNG_CPU, 1234, a, 32);
  sd_rng *g = sd_rng_new(SD_RNG_CPU, 1234);
  CHECK(g != NULL);
  if (!g) return;
  sd_rng_randn(g, b, 16);
  sd_rng_randn(g, b + 16, 16);
  sd_rng_free(g);
  CHECK(memcmp(a, b, sizeof a) == 0);
  draw(SD_RNG_CPU, 1234, c, 17);
  CHECK(memcmp(c, a, 16 * sizeof(float)) != 0 || c[16] != a[16]);
  /* the scalar path caches the second Box-Muller value: 3 + 1 == 4 */
  float d[4], e[4];
  draw(SD_RNG_CPU, 7, d, 4);
  g = sd_rng_new(SD_RNG_CPU, 7);
  CHECK(g != NULL);
  if (!g) return;
  sd_rng_randn(g, e, 3);
  sd_rng_randn(g, e + 3, 1);
  sd_rng_free(g);
  CHECK(memcmp(d, e, sizeof d) == 0);
}

static void test_seeds(void) {
  float a[64], b[64];
  /* torch's mt19937 keeps the low 32 bits of a 64-bit seed */
  draw(SD_RNG_CPU, 18446744073709551615ull, a, 64);
  draw(SD_RNG_CPU, 4294967295ull, b, 64);
  CHECK(memcmp(a, b, sizeof a) == 0);
  /* Philox keys on all 64 bits */
  draw(SD_RNG_CUDA, 18446744073709551615ull, a, 64);
  draw(SD_RNG_CUDA, 4294967295ull, b, 64);
  CHECK(memcmp(a, b, sizeof a) != 0);
  /* different seeds, different noise; same seed, same noise */
  draw(SD_RNG_CPU, 1, a, 64);
  draw(SD_RNG_CPU, 2, b, 64);
  CHECK(memcmp(a, b, sizeof a) != 0);
  draw(SD_RNG_CUDA, 42, a, 64);
  draw(SD_RNG_CUDA, 42, b, 64);
  CHECK(memcmp(a, b, sizeof a) == 0);
}

/* Moments of a large draw: mean ~ 0, variance ~ 1, no NaN/Inf. */
static void test_moments(void) {
  const int64_t n = 1 << 18;
  float *x = sd_alloc((size_t)n * sizeof(float));
  CHECK(x != NULL);
  if (!x) return;
  for (int kind = 0; kind < 2; kind++) {
    draw((sd_rng_kind)kind, 99, x, n);
    double s = 0, s2 = 0;
    int finite = 1;
    for (int64_t i = 0; i < n; i++) {
      finite &= isfinite(x[i]) != 0;
      s += x[i];
      s2 += (double)x[i] * x[i];
    }
    double mean = s / n, var = s2 / n - mean * mean;
    CHECK(finite);
    CHECK_MSG(fabs(mean) < 0.01, "%s mean %g", sd_rng_kind_name((sd_rng_kind)kind), mean);
    CHECK_MSG(fabs(var - 1) < 0.02, "%s var %g", sd_rng_kind_name((sd_rng_kind)kind), var);
  }
  sd_free(x);
}

static void test_names_and_edges(void) {
  CHECK(sd_rng_kind_parse("cpu") == SD_RNG_CPU);
  CHECK(sd_rng_kind_parse("cuda") == SD_RNG_CUDA);
  CHECK(sd_rng_kind_parse("gpu") == -1);
  CHECK(sd_rng_kind_parse(NULL) == -1);
  CHECK(strcmp(sd_rng_kind_name(SD_RNG_CUDA), "cuda") == 0);
  float x = 123.0f;
  sd_rng *g = sd_rng_new(SD_RNG_CPU, 0);
  CHECK(g != NULL);
  if (g) {
    sd_rng_randn(g, &x, 0); /* nothing drawn, nothing written */
    CHECK(x == 123.0f);
  }
  sd_rng_free(g);
  sd_rng_free(NULL);
  /* allocation failure is reported as NULL */
  sd_alloc_fail_at(1, 0);
  g = sd_rng_new(SD_RNG_CPU, 0);
  sd_alloc_fail_at(0, 0);
  CHECK(g == NULL);
  sd_rng_free(g);
}

int main(void) {
  test_torch_known_values();
  test_philox_kat();
  test_stream_continuation();
  test_seeds();
  test_moments();
  test_names_and_edges();
  return test_finish();
}
