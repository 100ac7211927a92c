#include "tensor/convert.h"

#include <string.h>

#include "tensor/ops_internal.h"

/* Branch-free IEEE half -> float, exact for every input (normals, subnormals,
 * zeros, inf, NaN payloads), so the loop vectorizes. The exponent is rebiased
 * by adding (127-15) to the shifted bits; subnormals are renormalized by an
 * exact float subtraction of the implicit 2^-14 bit; inf/NaN get the rest of
 * the exponent range. */
SD_VEC_CLONES
void sd_convert_f16_to_f32(float *dst, const uint16_t *src, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) {
    uint32_t h = src[i];
    uint32_t sign = (h & 0x8000u) << 16;
    uint32_t body = (h & 0x7fffu) << 13;
    uint32_t exp = body & 0x0f800000u;
    uint32_t normal = body + 0x38000000u;
    uint32_t special = normal + 0x38000000u;
    /* subnormal: float(1.mant * 2^-14) - 2^-14 */
    uint32_t sub_bits = body + 0x38800000u;
    float sub_f;
    memcpy(&sub_f, &sub_bits, 4);
    sub_f -= 6.103515625e-05f;
    uint32_t sub;
    memcpy(&sub, &sub_f, 4);
    uint32_t out = exp == 0x0f800000u ? special : (exp == 0 ? sub : normal);
    out |= sign;
    memcpy(dst + i, &out, 4);
  }
}

SD_VEC_CLONES
void sd_convert_bf16_to_f32(float *dst, const uint16_t *src, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) {
    uint32_t bits = (uint32_t)src[i] << 16;
    memcpy(dst + i, &bits, 4);
  }
}
