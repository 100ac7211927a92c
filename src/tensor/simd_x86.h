/* Small AVX-512 / AVX2 helpers shared by the x86 kernels (gemm_f32_x86.c,
 * gemm_bf16.c). Only for x86-64 GCC/Clang builds; every function carries its
 * target attribute, so including this header keeps a file baseline. */
#ifndef SDGEN_TENSOR_SIMD_X86_H
#define SDGEN_TENSOR_SIMD_X86_H

#include <immintrin.h>
#include <stdint.h>

#define SD_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define SD_AVX2_TARGET __attribute__((target("avx2,fma")))

/* Mask of the first n (clamped to [0, 16]) lanes. */
static inline __mmask16 sd_lanes16(int64_t n) {
  if (n <= 0) return 0;
  if (n >= 16) return 0xffff;
  return (__mmask16)((1u << n) - 1u);
}

/* In-register transpose of a 16 x 16 block of 32-bit elements. */
SD_AVX512_TARGET static inline void sd_transpose16x32(__m512i r[16]) {
  __m512i t[16], c[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  /* c[4g + j]: column 4L + j of rows 4g..4g+3, in each 128-bit lane L. */
#pragma GCC unroll 4
  for (int g = 0; g < 4; g++) {
    c[4 * g + 0] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
    c[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
    c[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    c[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  /* 4 x 4 transpose of 128-bit lanes among c[j], c[4+j], c[8+j], c[12+j]. */
#pragma GCC unroll 4
  for (int j = 0; j < 4; j++) {
    __m512i e0 = _mm512_shuffle_i32x4(c[j], c[4 + j], 0x44);
    __m512i e1 = _mm512_shuffle_i32x4(c[j], c[4 + j], 0xee);
    __m512i e2 = _mm512_shuffle_i32x4(c[8 + j], c[12 + j], 0x44);
    __m512i e3 = _mm512_shuffle_i32x4(c[8 + j], c[12 + j], 0xee);
    r[j] = _mm512_shuffle_i32x4(e0, e2, 0x88);
    r[4 + j] = _mm512_shuffle_i32x4(e0, e2, 0xdd);
    r[8 + j] = _mm512_shuffle_i32x4(e1, e3, 0x88);
    r[12 + j] = _mm512_shuffle_i32x4(e1, e3, 0xdd);
  }
}

/* In-register transpose of an 8 x 8 block of floats. */
SD_AVX2_TARGET static inline void sd_transpose8x32(__m256 r[8]) {
  __m256 t[8], u[8];
#pragma GCC unroll 4
  for (int i = 0; i < 4; i++) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 2
  for (int g = 0; g < 2; g++) {
    u[4 * g + 0] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
    u[4 * g + 1] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0xee);
    u[4 * g + 2] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
    u[4 * g + 3] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xee);
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; j++) {
    r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
    r[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
  }
}

#endif
