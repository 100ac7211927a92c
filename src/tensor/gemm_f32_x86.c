/* x86 micro-kernels and packers of the F32 product (see gemm_f32_core.h).
 *
 * Only functions with a target attribute contain AVX2/AVX-512 code; the file
 * stays baseline x86-64 and gemm_f32.c picks a descriptor at run time.
 *
 * AVX-512: 6 x 64 register block (24 zmm accumulators, 4 loads of B and 6
 * broadcasts of A per step). AVX2: 6 x 16 (12 ymm accumulators). Both compute
 * acc = fma(a, b, acc) in k order from zero and finish with
 * C = fma(beta, C, alpha * acc), so they give the same bits. */
#include "tensor/gemm_f32_x86.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <string.h>

#include "tensor/simd_x86.h"

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* ---- packing ---- */

/* The index-contiguous case is a row copy per depth step. */
static void pack_rows(float *dst, const float *src, int64_t ld, int64_t n, int64_t kc, int P) {
  for (int64_t i0 = 0; i0 < n; i0 += P) {
    float *d = dst + i0 * kc;
    int64_t np = min64(P, n - i0);
    for (int64_t k = 0; k < kc; k++) {
      memcpy(d + k * P, src + k * ld + i0, (size_t)np * sizeof(float));
      if (np < P) memset(d + k * P + np, 0, (size_t)(P - np) * sizeof(float));
    }
  }
}

/* k-contiguous: 16 indices x 16 depth steps transposed in registers. */
SD_AVX512_TARGET static void pack_avx512(float *dst, const float *src, int64_t ld, int kcontig,
                                         int64_t n, int64_t kc, int P) {
  if (!kcontig) {
    pack_rows(dst, src, ld, n, kc, P);
    return;
  }
  for (int64_t i0 = 0; i0 < n; i0 += P) {
    float *d = dst + i0 * kc;
    for (int g = 0; g < P; g += 16) {
      int gl = P - g < 16 ? P - g : 16;
      __mmask16 store = sd_lanes16(gl);
      int64_t rows = min64(gl, n - i0 - g); /* may be <= 0: all zero */
      for (int64_t k0 = 0; k0 < kc; k0 += 16) {
        __mmask16 km = sd_lanes16(kc - k0);
        __m512i r[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++)
          r[i] = i < rows ? _mm512_castps_si512(
                                _mm512_maskz_loadu_ps(km, src + (i0 + g + i) * ld + k0))
                          : _mm512_setzero_si512();
        sd_transpose16x32(r);
        int64_t kl = min64(16, kc - k0);
        for (int64_t kk = 0; kk < kl; kk++)
          _mm512_mask_storeu_ps(d + (k0 + kk) * P + g, store, _mm512_castsi512_ps(r[kk]));
      }
    }
  }
}

/* k-contiguous: 8 x 8 transposes; P is 6 (A) or a multiple of 8 (B). */
SD_AVX2_TARGET static void pack_avx2(float *dst, const float *src, int64_t ld, int kcontig,
                                     int64_t n, int64_t kc, int P) {
  if (!kcontig) {
    pack_rows(dst, src, ld, n, kc, P);
    return;
  }
  for (int64_t i0 = 0; i0 < n; i0 += P) {
    float *d = dst + i0 * kc;
    for (int g = 0; g < P; g += 8) {
      int gl = P - g < 8 ? P - g : 8;
      int64_t rows = min64(gl, n - i0 - g);
      int64_t k0 = 0;
      for (; k0 + 8 <= kc; k0 += 8) {
        __m256 r[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
          r[i] = i < rows ? _mm256_loadu_ps(src + (i0 + g + i) * ld + k0) : _mm256_setzero_ps();
        sd_transpose8x32(r);
        if (gl == 8) {
#pragma GCC unroll 8
          for (int kk = 0; kk < 8; kk++) _mm256_storeu_ps(d + (k0 + kk) * P + g, r[kk]);
        } else {
          float t[8];
          for (int kk = 0; kk < 8; kk++) {
            _mm256_storeu_ps(t, r[kk]);
            memcpy(d + (k0 + kk) * P + g, t, (size_t)gl * sizeof(float));
          }
        }
      }
      for (; k0 < kc; k0++)
        for (int i = 0; i < gl; i++) d[k0 * P + g + i] = i < rows ? src[(i0 + g + i) * ld + k0] : 0;
    }
  }
}

/* ---- micro-kernels ---- */


/* MR x 16 NV, fully unrolled over the tile; tails are masked. */
#define DEFINE_K512(name, MR, K512_NV)                                                                  \
  SD_AVX512_TARGET static void name(int64_t kc, const float *a, const float *b, float *C,      \
                                    int64_t ldc, int mr, int nr, float alpha, float beta) {    \
    for (int i = 0; i < mr; i++) {                                                             \
      _mm_prefetch((const char *)(C + i * ldc), _MM_HINT_T0);                                  \
      _mm_prefetch((const char *)(C + i * ldc + 16), _MM_HINT_T0);                             \
      _mm_prefetch((const char *)(C + i * ldc + (16 * K512_NV) - 1), _MM_HINT_T0);                    \
    }                                                                                          \
    __m512 acc[MR][K512_NV];                                                                   \
    _Pragma("GCC unroll 16") for (int i = 0; i < MR; i++)                                      \
        _Pragma("GCC unroll 4") for (int v = 0; v < K512_NV; v++) acc[i][v] =                  \
            _mm512_setzero_ps();                                                               \
    for (int64_t k = 0; k < kc; k++) {                                                         \
      __m512 bv[K512_NV];                                                                      \
      _Pragma("GCC unroll 4") for (int v = 0; v < K512_NV; v++) bv[v] =                        \
          _mm512_loadu_ps(b + k * (16 * K512_NV) + 16 * v);                                           \
      _Pragma("GCC unroll 16") for (int i = 0; i < MR; i++) {                                  \
        __m512 av = _mm512_set1_ps(a[k * MR + i]);                                             \
        _Pragma("GCC unroll 4") for (int v = 0; v < K512_NV; v++) acc[i][v] =                  \
            _mm512_fmadd_ps(av, bv[v], acc[i][v]);                                             \
      }                                                                                        \
    }                                                                                          \
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);                              \
    __mmask16 m[K512_NV];                                                                      \
    for (int v = 0; v < K512_NV; v++) m[v] = sd_lanes16(nr - 16 * v);                          \
    _Pragma("GCC unroll 16") for (int i = 0; i < MR; i++) {                                    \
      if (i >= mr) break;                                                                      \
      float *c = C + i * ldc;                                                                  \
      _Pragma("GCC unroll 4") for (int v = 0; v < K512_NV; v++) {                              \
        __m512 r = _mm512_mul_ps(acc[i][v], va);                                               \
        if (beta != 0.0f)                                                                      \
          r = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m[v], c + 16 * v), r);                 \
        _mm512_mask_storeu_ps(c + 16 * v, m[v], r);                                            \
      }                                                                                        \
    }                                                                                          \
  }

DEFINE_K512(kernel_avx512_6x64, 6, 4)

#define K2_MR 6
#define K2_NR 16

SD_AVX2_TARGET static void kernel_avx2(int64_t kc, const float *a, const float *b, float *C,
                                       int64_t ldc, int mr, int nr, float alpha, float beta) {
  for (int i = 0; i < mr; i++) {
    _mm_prefetch((const char *)(C + i * ldc), _MM_HINT_T0);
    _mm_prefetch((const char *)(C + i * ldc + K2_NR - 1), _MM_HINT_T0);
  }
  __m256 acc[K2_MR][2];
#pragma GCC unroll 6
  for (int i = 0; i < K2_MR; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; k++) {
    __m256 b0 = _mm256_loadu_ps(b + k * K2_NR), b1 = _mm256_loadu_ps(b + k * K2_NR + 8);
#pragma GCC unroll 6
    for (int i = 0; i < K2_MR; i++) {
      __m256 av = _mm256_broadcast_ss(a + k * K2_MR + i);
      acc[i][0] = _mm256_fmadd_ps(av, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(av, b1, acc[i][1]);
    }
  }
  __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
  if (nr == K2_NR) {
#pragma GCC unroll 6
    for (int i = 0; i < K2_MR; i++) {
      if (i >= mr) break;
      float *c = C + i * ldc;
      __m256 r0 = _mm256_mul_ps(acc[i][0], va), r1 = _mm256_mul_ps(acc[i][1], va);
      if (beta != 0.0f) {
        r0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(c), r0);
        r1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(c + 8), r1);
      }
      _mm256_storeu_ps(c, r0);
      _mm256_storeu_ps(c + 8, r1);
    }
    return;
  }
  /* Column tail: the same two roundings, lane by lane. */
#pragma GCC unroll 6
  for (int i = 0; i < K2_MR; i++) {
    if (i >= mr) break;
    float t[K2_NR];
    _mm256_storeu_ps(t, _mm256_mul_ps(acc[i][0], va));
    _mm256_storeu_ps(t + 8, _mm256_mul_ps(acc[i][1], va));
    float *c = C + i * ldc;
    for (int j = 0; j < nr; j++) c[j] = beta != 0.0f ? __builtin_fmaf(beta, c[j], t[j]) : t[j];
  }
}

/* Cache blocks: an A block of up to 324 rows (the 256-row blocks of
 * sd_gemm_parallel and 320-channel convolution panels in one piece) x 256
 * floats = 324 KiB stays in L2 with the 64 KiB B micro-panel it is
 * multiplied with. (14 x 32, 12 x 32 and 8 x 48 blocks ran at the same
 * speed from L1 on Zen 5; 6 x 64 wastes the least on the shapes here: M a
 * multiple of 2 and N of 64.) */
const sd_gemm_kernel_desc sd_gemm_desc_avx512 = {"avx512", 6, 64, 6 * 54, 1024,
                                                 kernel_avx512_6x64, pack_avx512, pack_avx512};
const sd_gemm_kernel_desc sd_gemm_desc_avx2 = {"avx2", K2_MR, K2_NR, 6 * 32, 1024, kernel_avx2,
                                               pack_avx2, pack_avx2};
#endif
