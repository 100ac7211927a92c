/* Helpers shared by the kernel files (ops_*.c); not part of the public API.
 *
 * Hot loops are written as plain C with `#pragma omp simd` (vectorized at
 * -O2 since the build uses -fopenmp) and compiled several times through
 * SD_VEC_CLONES, so one binary runs AVX-512, AVX2+FMA or baseline code,
 * chosen at load time by the CPU it runs on. The math helpers below are
 * static inline and branch-free so they vectorize inside those loops (libm
 * calls would be per-element function calls). */
#ifndef SDGEN_TENSOR_OPS_INTERNAL_H
#define SDGEN_TENSOR_OPS_INTERNAL_H

#include <stdint.h>
#include <string.h>

#include "base/alloc.h"
#include "base/status.h"
#include "tensor/tensor.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    defined(__linux__) && !defined(SDGEN_NO_CLONES)
#define SD_VEC_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SD_VEC_CLONES
#endif

/* Upper bound, in floats, of each scratch buffer a kernel allocates per call
 * (a weight panel converted to F32, an im2col tile, ...). 2M floats = 8 MiB:
 * big enough that GEMMs run near peak, small enough to never matter for the
 * memory budget. */
#define SD_SCRATCH_FLOATS ((int64_t)2 << 20)

int sd_threads_internal(void);

/* Pins BLAS to one thread (once): kernels call it from OpenMP threads. */
void sd_blas_single_thread(void);

/* sd_gemm's implementation: BLAS at one thread per OpenMP thread, the output
 * split in blocks (runs on the calling thread inside a parallel region). */
void sd_gemm_parallel(int transA, int transB, int64_t M, int64_t N, int64_t K,
                      float alpha, const float *A, int64_t lda, const float *B,
                      int64_t ldb, float beta, float *C, int64_t ldc);

/* One single-threaded row-major GEMM, C = alpha op(A) op(B) + beta C: the
 * unit every threaded product (sd_gemm_parallel, convolution tiles) is made
 * of, run on the calling thread in the process's precision (sd_precision). */
void sd_gemm_block(int transA, int transB, int64_t M, int64_t N, int64_t K,
                   float alpha, const float *A, int64_t lda, const float *B,
                   int64_t ldb, float beta, float *C, int64_t ldc);

/* Scratch one concurrent sd_gemm_block call takes in the current precision
 * (the bf16 kernel's packing buffers; the F32 kernels' per-thread packing
 * buffers, like BLAS's, are outside our allocator: see gemm_f32.c). */
int64_t sd_gemm_block_scratch_bytes(void);

/* Plan mode (see base/alloc.h): a kernel that would allocate `bytes` of
 * scratch takes and frees that much address space, so the plan-mode run's
 * tracked peak includes it at the moment it would exist. */
static inline int sd_plan_scratch(int64_t bytes) {
  if (bytes <= 0) return SD_OK;
  void *p = sd_alloc((size_t)bytes);
  if (!p) return SD_ERR_OOM;
  sd_free(p);
  return SD_OK;
}

/* Converts rows [r0, r0+nr) of a 2-D weight view with row length `cols` to
 * F32 (dst packed, nr*cols), in parallel for big panels. */
void sd_weight_rows_f32(const sd_tensor *w, int64_t r0, int64_t nr,
                        int64_t cols, float *dst);

/* Reads a small 1-D parameter (bias, gamma, beta) as F32 into dst. */
static inline void sd_param_f32(const sd_tensor *t, int64_t n, float *dst) {
  sd_tensor_read_f32(t, 0, n, dst);
}

/* Forced inline: GCC's size heuristics otherwise leave the erf chain as a
 * call, and a call in the loop body stops the loop from vectorizing (it
 * showed up as a scalar hot spot in the UNet's GEGLU). */
#define SD_MATH_INLINE static inline __attribute__((always_inline))

/* e^x with relative error ~2 ulp over the whole float range, including
 * subnormal results and +inf above 88.72, like expf. Range reduction
 * x = n ln2 + r with a two-part ln2, a degree-7 Taylor polynomial for e^r
 * (|r| <= ln2/2), and 2^n applied as two factors 2^(n/2) so that both stay
 * normal floats for every n in [-150, 128]. */
SD_MATH_INLINE float sd_expf_inline(float x) {
  const float hi = 88.8f, lo = -104.0f;
  float xc = x > hi ? hi : x;
  xc = xc < lo ? lo : xc;
  xc = xc == xc ? xc : 0.0f; /* NaN: keep the integer path defined */
  /* Adding 1.5*2^23 rounds to the nearest integer (no fast-math here). */
  const float magic = 12582912.0f;
  float t = xc * 1.44269504088896341f + magic;
  float n = t - magic;
  float r = xc - n * 0.693145751953125f;
  r = r - n * 1.428606765330187045e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t ni = (int32_t)n;
  int32_t n1 = ni >> 1, n2 = ni - n1;
  uint32_t b1 = (uint32_t)(n1 + 127) << 23, b2 = (uint32_t)(n2 + 127) << 23;
  float s1, s2;
  memcpy(&s1, &b1, 4);
  memcpy(&s2, &b2, 4);
  float y = p * s1 * s2;
  y = x < lo ? 0.0f : y;
  return x == x ? y : x; /* NaN in, NaN out */
}

/* erfc(|z|) with relative error ~1.2e-7 in exact arithmetic (Chebyshev fit
 * t*exp(poly(t)), t = 1/(1+|z|/2)), so 1+erf stays accurate in the far
 * negative tail where GELU's output is tiny. (The rounding of z*z in the
 * exponent, ~z^2 * 2^-24 relative, is the same conditioning torch has.) */
SD_MATH_INLINE float sd_erfc_abs_inline(float z) {
  float az = z < 0 ? -z : z;
  float t = 1.0f / (1.0f + 0.5f * az);
  float p = 0.17087277f;
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  return t * sd_expf_inline(-az * az + p);
}

/* 1 + erf(z), accurate to a few ulp everywhere: the odd Taylor series of erf
 * near 0 (|z| < 0.5, terms to z^15), erfc elsewhere. */
SD_MATH_INLINE float sd_one_plus_erf_inline(float z) {
  float z2 = z * z;
  float s = -1.0f / 75600.0f;
  s = s * z2 + 1.0f / 9360.0f;
  s = s * z2 - 1.0f / 1320.0f;
  s = s * z2 + 1.0f / 216.0f;
  s = s * z2 - 1.0f / 42.0f;
  s = s * z2 + 1.0f / 10.0f;
  s = s * z2 - 1.0f / 3.0f;
  s = s * z2 + 1.0f;
  float near0 = 1.0f + 1.12837916709551257f * z * s;
  float c = sd_erfc_abs_inline(z);
  float far = z < 0 ? c : 2.0f - c;
  float az = z < 0 ? -z : z;
  return az < 0.5f ? near0 : far;
}

#endif
