/* The bf16 matrix product (tensor/gemm_bf16.h): both paths against a double
 * reference computed from the bf16-rounded operands, over shapes with every
 * kind of tail, both transposes, alpha/beta variants and padded strides; and
 * the distance to the F32 product, which must be of the bf16 class (and not
 * zero: a path that silently computed in F32 would fail). The AVX512_BF16
 * checks skip (exit 77) on CPUs without it; the portable path always runs. */
#include <stdint.h>
#include <string.h>

#include <cblas.h>

#include "base/alloc.h"
#include "tensor/gemm_bf16.h"
#include "test_util.h"

typedef void (*gemm_fn)(int, int, int64_t, int64_t, int64_t, float,
                        const float *, int64_t, const float *, int64_t, float,
                        float *, int64_t);

static uint32_t g_seed = 0x12345u;
static float urand(void) {
  g_seed = g_seed * 1664525u + 1013904223u;
  return (float)(g_seed >> 8) / 16777216.0f * 2.0f - 1.0f;
}

static float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static uint32_t float_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static void check_rounding(void) {
  /* 1 + 2^-8 is a tie between 1 and 1 + 2^-7: to even (1). 1 + 3*2^-8 is a
   * tie between 1 + 2^-7 and 1 + 2^-6: to even (1 + 2^-6). */
  CHECK(sd_bf16_round(1.0f + 0x1p-8f) == 1.0f);
  CHECK(sd_bf16_round(1.0f + 3 * 0x1p-8f) == 1.0f + 0x1p-6f);
  CHECK(sd_bf16_round(1.0f + 0x1p-8f + 0x1p-20f) == 1.0f + 0x1p-7f);
  CHECK(sd_bf16_round(-1.0f - 0x1p-8f - 0x1p-20f) == -1.0f - 0x1p-7f);
  CHECK(sd_bf16_round(3.0e38f) == bits_to_float(0x7f62u << 16));
  CHECK(sd_bf16_round(3.4028235e38f) == INFINITY); /* rounds past the top */
  CHECK(sd_bf16_round(-INFINITY) == -INFINITY);
  CHECK(isnan(sd_bf16_round(NAN)));
  CHECK(isnan(sd_bf16_round(bits_to_float(0x7f800001u)))); /* low payload */
  CHECK(float_to_bits(sd_bf16_round(-1e-40f)) == 0x80000000u); /* denormal */
  CHECK(float_to_bits(sd_bf16_round(0x1p-126f)) == 0x00800000u);
}

/* Matrix with `rows` x `cols` used values in a row stride `ld` >= cols; the
 * padding holds NaN so a kernel reading it poisons its result. */
static float *make_matrix(int64_t rows, int64_t cols, int64_t ld) {
  float *m = sd_alloc((size_t)(rows * ld + 1) * 4);
  if (!m) return NULL;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < ld; c++) m[r * ld + c] = c < cols ? urand() : NAN;
  return m;
}

/* op(X)[r, k] of a row-major X with stride ld. */
static inline float op_at(const float *X, int64_t ld, int trans, int64_t r,
                          int64_t k) {
  return trans ? X[k * ld + r] : X[r * ld + k];
}

/* Runs one product and compares it with the double reference on the
 * rounded operands. Returns the max |C - ref| / (alpha S + |beta C0|). */
static double run_case(gemm_fn fn, int ta, int tb, int64_t M, int64_t N,
                       int64_t K, float alpha, float beta, int pad,
                       const char *label) {
  int64_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
  float *A = make_matrix(ta ? K : M, ta ? M : K, lda);
  float *B = make_matrix(tb ? N : K, tb ? K : N, ldb);
  float *C = make_matrix(M, N, ldc);
  float *C0 = sd_alloc((size_t)(M * ldc + 1) * 4);
  if (!A || !B || !C || !C0) {
    CHECK_MSG(0, "out of memory");
    sd_free(A), sd_free(B), sd_free(C), sd_free(C0);
    return 1e30;
  }
  if (beta == 0.0f)
    for (int64_t i = 0; i < M * ldc; i++) C[i] = NAN;
  memcpy(C0, C, (size_t)(M * ldc) * 4);
  fn(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  /* Rounded operands as op(A) (M, K) and op(B)^T (N, K), row-major. */
  double *Ar = sd_alloc((size_t)(M * K + 1) * 8);
  double *Br = sd_alloc((size_t)(N * K + 1) * 8);
  if (!Ar || !Br) {
    CHECK_MSG(0, "out of memory");
    sd_free(A), sd_free(B), sd_free(C), sd_free(C0), sd_free(Ar), sd_free(Br);
    return 1e30;
  }
  for (int64_t i = 0; i < M; i++)
    for (int64_t k = 0; k < K; k++)
      Ar[i * K + k] = sd_bf16_round(op_at(A, lda, ta, i, k));
  for (int64_t j = 0; j < N; j++)
    for (int64_t k = 0; k < K; k++)
      Br[j * K + k] = sd_bf16_round(op_at(B, ldb, !tb, j, k));
  double worst = 0;
  int bad_pad = 0;
  for (int64_t i = 0; i < M; i++) {
    for (int64_t j = 0; j < N; j++) {
      double s = 0, sa = 0;
      const double *ar = Ar + i * K, *br = Br + j * K;
      for (int64_t k = 0; k < K; k++) {
        double p = ar[k] * br[k];
        s += p;
        sa += fabs(p);
      }
      double c0 = beta == 0.0f ? 0.0 : (double)C0[i * ldc + j];
      double ref = alpha * s + beta * c0;
      double scale = fabs(alpha) * sa + fabs(beta * c0) + 1e-30;
      double err = fabs((double)C[i * ldc + j] - ref) / scale;
      if (!(err <= worst)) worst = err; /* NaN makes worst NaN */
      if (isnan(err)) worst = NAN;
    }
    for (int64_t j = N; j < ldc; j++)
      if (float_to_bits(C[i * ldc + j]) != float_to_bits(C0[i * ldc + j]))
        bad_pad = 1;
  }
  CHECK_MSG(!bad_pad, "%s: wrote past N (ta=%d tb=%d M=%lld N=%lld K=%lld)",
            label, ta, tb, (long long)M, (long long)N, (long long)K);
  CHECK_MSG(worst <= 1e-5,
            "%s: ta=%d tb=%d M=%lld N=%lld K=%lld alpha=%g beta=%g pad=%d: "
            "rel error %.3g",
            label, ta, tb, (long long)M, (long long)N, (long long)K, alpha,
            beta, pad, worst);
  sd_free(A), sd_free(B), sd_free(C), sd_free(C0), sd_free(Ar), sd_free(Br);
  return worst;
}

static void check_shapes(gemm_fn fn, const char *label) {
  static const int64_t sizes[] = {1, 2, 3, 7, 15, 16, 17, 31, 33, 100, 257};
  const int ns = (int)(sizeof sizes / sizeof sizes[0]);
  static const float alphas[] = {1.0f, -0.5f, 2.0f};
  static const float betas[] = {0.0f, 1.0f, 0.0f, -0.75f};
  int n = 0;
  int fails_before = t_failed;
  for (int a = 0; a < ns; a++)
    for (int b = 0; b < ns; b++)
      for (int c = 0; c < ns; c++) {
        /* The biggest cubes add little over their neighbours but cost most. */
        if (sizes[a] * sizes[b] * sizes[c] > 257 * 100 * 100) continue;
        int ta = n & 1, tb = (n >> 1) & 1;
        run_case(fn, ta, tb, sizes[a], sizes[b], sizes[c], alphas[n % 3],
                 betas[n % 4], (n % 5 == 0) ? 3 : 0, label);
        n++;
        if (t_failed - fails_before > 10) return; /* one bug, many lines */
      }
  /* Every blocking loop of the native path: M > MC, N > NC, K > 2 KC,
   * with each transpose combination. */
  for (int t = 0; t < 4; t++)
    run_case(fn, t & 1, t >> 1, 390, 1560, 530, 1.0f, t == 3 ? 1.0f : 0.0f, 5,
             label);
  /* K = 0: C = beta C. */
  run_case(fn, 0, 0, 5, 7, 0, 1.0f, 0.0f, 0, label);
  run_case(fn, 0, 0, 5, 7, 0, 1.0f, 0.5f, 0, label);
}

/* bf16 against F32: each operand is off by at most 2^-9 relative, so each
 * product by about 2^-8; the F32 product's own error is far below that. */
static void check_vs_f32(gemm_fn fn, const char *label) {
  int64_t M = 257, N = 100, K = 333;
  float *A = make_matrix(M, K, K), *B = make_matrix(K, N, N);
  float *C = sd_alloc((size_t)(M * N) * 4), *R = sd_alloc((size_t)(M * N) * 4);
  if (!A || !B || !C || !R) {
    CHECK_MSG(0, "out of memory");
  } else {
    fn(0, 0, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)N,
                (int)K, 1.0f, A, (int)K, B, (int)N, 0.0f, R, (int)N);
    double worst = 0, typical = 0;
    for (int64_t i = 0; i < M; i++)
      for (int64_t j = 0; j < N; j++) {
        double sa = 0;
        for (int64_t k = 0; k < K; k++) sa += fabs(A[i * K + k] * B[k * N + j]);
        double e = fabs((double)C[i * N + j] - R[i * N + j]) / sa;
        if (e > worst) worst = e;
        typical += e;
      }
    typical /= (double)(M * N);
    CHECK_MSG(worst <= 0x1p-8 * 1.01, "%s: error vs F32 %.3g > 2^-8", label,
              worst);
    CHECK_MSG(typical > 1e-5, "%s: mean error vs F32 %.3g: operands not rounded?",
              label, typical);
    printf("%s: error vs F32 product: max %.3g, mean %.3g (x sum|ab|)\n", label,
           worst, typical);
  }
  sd_free(A), sd_free(B), sd_free(C), sd_free(R);
}

/* The packing buffer cannot be allocated: the call must still be right. */
static void check_alloc_failure(gemm_fn fn, const char *label) {
  int64_t M = 70, N = 200, K = 300;
  float *A = make_matrix(M, K, K), *B = make_matrix(N, K, K);
  float *C = sd_alloc((size_t)(M * N) * 4), *R = sd_alloc((size_t)(M * N) * 4);
  if (!A || !B || !C || !R) {
    CHECK_MSG(0, "out of memory");
  } else {
    fn(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, R, N);
    sd_alloc_fail_at(1, 1);
    fn(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, C, N);
    int triggered = sd_alloc_fault_triggered();
    sd_alloc_fail_at(0, 0);
    CHECK_MSG(triggered, "%s: the packing allocation was not attempted", label);
    double worst = 0;
    for (int64_t i = 0; i < M * N; i++) {
      double e = fabs((double)C[i] - R[i]) / (fabs(R[i]) + 1.0);
      if (!(e <= worst)) worst = e;
    }
    CHECK_MSG(worst <= 1e-5, "%s: without scratch: differs by %.3g", label,
              worst);
  }
  sd_free(A), sd_free(B), sd_free(C), sd_free(R);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* The scalar rounding must be the instruction's, bit for bit (the reference
 * above relies on it). */
__attribute__((target("avx512f,avx512bw,avx512bf16"))) static void
check_rounding_vs_hardware(void) {
  int mismatches = 0;
  uint32_t s = 7;
  for (int it = 0; it < 200000; it++) {
    uint32_t in[16], out[16];
    for (int l = 0; l < 16; l++) {
      s = s * 1664525u + 1013904223u;
      uint32_t u = s;
      /* Bias toward ties, denormals, infinities and NaNs. */
      if (l % 4 == 1) u = (u & 0xffff0000u) | 0x8000u;
      if (l % 8 == 2) u &= 0x807fffffu;
      if (l % 8 == 3) u |= 0x7f800000u;
      in[l] = u;
    }
    __m512 v;
    memcpy(&v, in, 64);
    __m256i h = (__m256i)_mm512_cvtneps_pbh(v);
    uint16_t w[16];
    memcpy(w, &h, 32);
    for (int l = 0; l < 16; l++) out[l] = (uint32_t)w[l] << 16;
    for (int l = 0; l < 16; l++) {
      uint32_t mine = float_to_bits(sd_bf16_round(bits_to_float(in[l])));
      if (mine != out[l] && mismatches++ < 5)
        fprintf(stderr, "round %08x: hardware %08x, scalar %08x\n", in[l],
                out[l], mine);
    }
  }
  CHECK_MSG(mismatches == 0, "%d rounding mismatches", mismatches);
}
#endif

int main(void) {
  check_rounding();
  check_shapes(sd_gemm_bf16_portable, "portable");
  check_vs_f32(sd_gemm_bf16_portable, "portable");
  check_alloc_failure(sd_gemm_bf16_portable, "portable");
  if (!sd_gemm_bf16_native()) {
    int rc = test_finish();
    if (rc) return rc;
    printf("SKIP: this CPU has no AVX512_BF16; only the portable path was "
           "tested\n");
    return 77;
  }
#if defined(__x86_64__) && defined(__GNUC__)
  check_rounding_vs_hardware();
#endif
  check_shapes(sd_gemm_bf16, "native");
  check_vs_f32(sd_gemm_bf16, "native");
  check_alloc_failure(sd_gemm_bf16, "native");
  return test_finish();
}
