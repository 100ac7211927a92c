/* Checks of one F32 product against a double-precision reference, shared by
 * the native kernel test (tests/unit/test_gemm_kernels.c) and the ARM one
 * cross-compiled without the library (tests/arm/test_gemm_neon.c): plain C,
 * malloc, test_util.h. */
#ifndef SDGEN_TESTS_GEMM_CHECK_H
#define SDGEN_TESTS_GEMM_CHECK_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

/* C = alpha op(A) op(B) + beta C, one thread, row-major. */
typedef void (*gc_gemm_fn)(void *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K,
                           float alpha, const float *A, int64_t lda, const float *B,
                           int64_t ldb, float beta, float *C, int64_t ldc);

static uint32_t gc_seed = 0x2468aceu;
static float gc_rand(void) {
  gc_seed = gc_seed * 1664525u + 1013904223u;
  return (float)(gc_seed >> 8) / 16777216.0f * 2.0f - 1.0f;
}

static uint32_t gc_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

/* rows x ld floats, the used `cols` random, the padding NaN (a kernel that
 * reads it poisons its result). */
static float *gc_matrix(int64_t rows, int64_t cols, int64_t ld) {
  float *m = malloc((size_t)(rows * ld + 1) * sizeof(float));
  if (!m) return NULL;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < ld; c++) m[r * ld + c] = c < cols ? gc_rand() : NAN;
  return m;
}

static inline float gc_op(const float *X, int64_t ld, int trans, int64_t r, int64_t k) {
  return trans ? X[k * ld + r] : X[r * ld + k];
}

/* One product against the double reference: the error of every element
 * over (|alpha| sum |a b| + |beta c0|) must be within 2 (K + 2) u
 * (u = 2^-24: twice the classical bound of K products, their sum, the
 * scaling by alpha and the addition of beta C); the padding of C must be untouched;
 * beta == 0 starts from NaN in C (must not leak). Returns the worst error
 * in units of that bound. */
static double gc_case(gc_gemm_fn fn, void *ctx, const char *label, int ta, int tb, int64_t M,
                      int64_t N, int64_t K, float alpha, float beta, int pad) {
  int64_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
  float *A = gc_matrix(ta ? K : M, ta ? M : K, lda > 0 ? lda : 1);
  float *B = gc_matrix(tb ? N : K, tb ? K : N, ldb > 0 ? ldb : 1);
  float *C = gc_matrix(M, N, ldc);
  float *C0 = malloc((size_t)(M * ldc + 1) * sizeof(float));
  if (!A || !B || !C || !C0) {
    CHECK_MSG(0, "out of memory");
    free(A), free(B), free(C), free(C0);
    return 1e30;
  }
  if (beta == 0.0f)
    for (int64_t i = 0; i < M * ldc; i++) C[i] = NAN;
  memcpy(C0, C, (size_t)(M * ldc) * sizeof(float));
  fn(ctx, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  double worst = 0, bound = 2.0 * (double)(K + 2) * 0x1p-24;
  int bad_pad = 0;
  for (int64_t i = 0; i < M; i++) {
    for (int64_t j = 0; j < N; j++) {
      double s = 0, sa = 0;
      for (int64_t k = 0; k < K; k++) {
        double p = (double)gc_op(A, lda, ta, i, k) * (double)gc_op(B, ldb, !tb, j, k);
        s += p;
        sa += fabs(p);
      }
      double c0 = beta == 0.0f ? 0.0 : (double)C0[i * ldc + j];
      double ref = alpha * s + beta * c0;
      double scale = fabs(alpha) * sa + fabs(beta * c0) + 1e-30;
      double err = fabs((double)C[i * ldc + j] - ref) / scale / bound;
      if (isnan(err) || err > worst) worst = isnan(err) ? INFINITY : err;
    }
    for (int64_t j = N; j < ldc; j++)
      if (gc_bits(C[i * ldc + j]) != gc_bits(C0[i * ldc + j])) bad_pad = 1;
  }
  CHECK_MSG(!bad_pad, "%s: wrote past N (ta=%d tb=%d M=%lld N=%lld K=%lld)", label, ta, tb,
            (long long)M, (long long)N, (long long)K);
  CHECK_MSG(worst <= 1.0,
            "%s: ta=%d tb=%d M=%lld N=%lld K=%lld alpha=%g beta=%g pad=%d: error %.3g x bound",
            label, ta, tb, (long long)M, (long long)N, (long long)K, alpha, beta, pad, worst);
  free(A), free(B), free(C), free(C0);
  return worst;
}

/* Odd shapes (edges of every register block in use: 4, 6, 8, 12, 16, 64),
 * tails, K around and past the depth block (256), both transposes,
 * strides, alpha/beta variants, K = 0, alpha = 0; with `big`, shapes past
 * the cache blocks too. `light` keeps a third of the grid (for emulators). */
static void gc_check_shapes(gc_gemm_fn fn, void *ctx, const char *label, int big, int light) {
  static const int64_t ms[] = {1, 5, 6, 7, 13, 17, 64, 97};
  static const int64_t ns[] = {1, 3, 15, 16, 17, 63, 65, 130};
  static const int64_t ks[] = {1, 2, 9, 255, 256, 257, 600};
  static const float alphas[] = {1.0f, -0.5f, 2.0f};
  static const float betas[] = {0.0f, 1.0f, 0.0f, -0.75f};
  int n = 0, cases = 0, fails_before = t_failed;
  double worst = 0;
  for (size_t a = 0; a < sizeof ms / sizeof ms[0]; a++)
    for (size_t b = 0; b < sizeof ns / sizeof ns[0]; b++)
      for (size_t c = 0; c < sizeof ks / sizeof ks[0]; c++) {
        if (ms[a] * ns[b] * ks[c] > 97 * 65 * 600) continue;
        n++;
        if (light && n % 3) continue;
        double w = gc_case(fn, ctx, label, n & 1, (n >> 1) & 1, ms[a], ns[b], ks[c],
                           alphas[n % 3], betas[n % 4], n % 5 == 0 ? 3 : 0);
        if (w > worst) worst = w;
        cases++;
        if (t_failed - fails_before > 10) return; /* one bug, many lines */
      }
  gc_case(fn, ctx, label, 0, 0, 5, 7, 0, 1.0f, 0.0f, 0); /* K = 0: C = beta C */
  gc_case(fn, ctx, label, 0, 0, 5, 7, 0, 1.0f, 0.5f, 2);
  gc_case(fn, ctx, label, 1, 1, 9, 33, 40, 0.0f, 0.5f, 1); /* alpha = 0 */
  cases += 3;
  if (big) /* M past the A block, N past the B block, three depth blocks */
    for (int t = 0; t < 4; t++, cases++)
      gc_case(fn, ctx, label, t & 1, t >> 1, 400, 1100, 530, 1.0f, t == 3 ? 1.0f : 0.0f, 5);
  printf("%s: %d shapes, worst error %.3g of the 2(K+2)u bound\n", label, cases, worst);
}

#endif
