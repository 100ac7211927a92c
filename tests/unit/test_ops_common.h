/* Shared helpers for the kernel tests (test_ops*.c): deterministic random
 * data, weight views in each stored dtype, NaN poisoning. Header-only. */
#ifndef SDGEN_TEST_OPS_COMMON_H
#define SDGEN_TEST_OPS_COMMON_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "base/alloc.h"
#include "tensor/tensor.h"

static uint64_t g_rng_state = 0x9E3779B97F4A7C15ull;

static inline double rnd_uniform(void) { /* [0, 1) */
  g_rng_state ^= g_rng_state << 13;
  g_rng_state ^= g_rng_state >> 7;
  g_rng_state ^= g_rng_state << 17;
  return (double)(g_rng_state >> 11) * (1.0 / 9007199254740992.0);
}

static inline float rnd_normal(void) {
  double u1 = rnd_uniform(), u2 = rnd_uniform();
  if (u1 < 1e-300) u1 = 1e-300;
  return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static inline int rnd_int(int lo, int hi) { /* inclusive */
  return lo + (int)(rnd_uniform() * (hi - lo + 1));
}

static inline float *rnd_buffer(int64_t n, float scale) {
  float *p = sd_alloc((size_t)(n > 0 ? n : 1) * 4);
  for (int64_t i = 0; i < n; i++) p[i] = rnd_normal() * scale;
  return p;
}

static inline void poison(float *p, int64_t n) {
  for (int64_t i = 0; i < n; i++) p[i] = NAN;
}

static inline int has_nan(const float *p, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    if (p[i] != p[i]) return 1;
  return 0;
}

/* Stores `vals` as a tensor of dtype dt and rewrites vals with the values
 * the stored form actually holds, so references see what kernels see. */
static inline sd_tensor *make_weight(sd_dtype dt, int ndim,
                                     const int64_t *shape, float *vals) {
  sd_tensor *t = sd_tensor_new_dtype(dt, ndim, shape);
  int64_t n = sd_tensor_numel(t);
  for (int64_t i = 0; i < n; i++) {
    if (dt == SD_F32) {
      ((float *)t->data)[i] = vals[i];
    } else if (dt == SD_F16) {
      uint16_t h = sd_f32_to_f16(vals[i]);
      ((uint16_t *)t->data)[i] = h;
      vals[i] = sd_f16_to_f32(h);
    } else {
      uint16_t h = sd_f32_to_bf16(vals[i]);
      ((uint16_t *)t->data)[i] = h;
      vals[i] = sd_bf16_to_f32(h);
    }
  }
  return t;
}

static const sd_dtype k_weight_dtypes[3] = {SD_F32, SD_F16, SD_BF16};

#endif
