/* The F32 product's kernels (tensor/gemm_f32*.h): every path this CPU can
 * run (forced in turn) against a double reference on odd shapes, the
 * results' independence of position and blocking (batch invariance), the
 * AVX2 and AVX-512 kernels giving the same bits, the stack fallback, and the
 * dispatch rules. Paths this CPU cannot run are named on stdout. The ARM
 * kernel is checked under qemu by tests/arm/test_gemm_neon.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/cpu.h"
#include "base/status.h"
#include "gemm_check.h"
#include "tensor/gemm_f32.h"
#include "tensor/gemm_f32_core.h"
#include "tensor/gemm_f32_x86.h"

static void via_sgemm(void *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                      const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                      float *C, int64_t ldc) {
  (void)ctx;
  sd_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* The driver with no buffer: one panel of each operand on the stack. */
static void via_stack(void *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                      const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                      float *C, int64_t ldc) {
  sd_gemm_f32_run((const sd_gemm_kernel_desc *)ctx, ta, tb, M, N, K, alpha, A, lda, B, ldb,
                  beta, C, ldc, NULL);
}

/* A row of C depends on K and KC only: rows [r0, r0+m) computed as their
 * own product (and columns likewise) equal the same rows of a taller one,
 * bit for bit. */
static void check_invariance(const char *label) {
  int64_t M = 300, N = 200, K = 700;
  float *A = gc_matrix(M, K, K), *B = gc_matrix(N, K, K);
  float *C = malloc(sizeof(float) * (size_t)(M * N)), *P = malloc(sizeof(float) * (size_t)(M * N));
  if (!A || !B || !C || !P) {
    CHECK_MSG(0, "out of memory");
  } else {
    sd_sgemm(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, C, N);
    static const int64_t cuts[][4] = {{0, 1, 0, 200}, {7, 13, 0, 200}, {256, 44, 5, 67},
                                      {1, 299, 130, 70}};
    int same = 1;
    for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
      int64_t r0 = cuts[c][0], m = cuts[c][1], c0 = cuts[c][2], n = cuts[c][3];
      sd_sgemm(0, 1, m, n, K, 1.0f, A + r0 * K, K, B + c0 * K, K, 0.0f, P, n);
      for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++)
          if (gc_bits(P[i * n + j]) != gc_bits(C[(r0 + i) * N + c0 + j])) same = 0;
    }
    CHECK_MSG(same, "%s: a block of rows/columns differs from the same part of a taller product",
              label);
  }
  free(A), free(B), free(C), free(P);
}

#if SD_GEMM_HAVE_X86
/* Same KC, same FMA order: AVX2 and AVX-512 give identical bits. */
static void check_avx2_equals_avx512(void) {
  int64_t M = 131, N = 77, K = 600;
  float *A = gc_matrix(M, K, K), *B = gc_matrix(K, N, N);
  float *C1 = malloc(sizeof(float) * (size_t)(M * N)), *C2 = malloc(sizeof(float) * (size_t)(M * N));
  if (A && B && C1 && C2) {
    sd_gemm_f32_run(&sd_gemm_desc_avx2, 0, 0, M, N, K, 0.5f, A, K, B, N, 0.0f, C1, N, NULL);
    sd_gemm_f32_run(&sd_gemm_desc_avx512, 0, 0, M, N, K, 0.5f, A, K, B, N, 0.0f, C2, N, NULL);
    CHECK_MSG(memcmp(C1, C2, sizeof(float) * (size_t)(M * N)) == 0,
              "avx2 and avx512 kernels give different bits");
  } else {
    CHECK_MSG(0, "out of memory");
  }
  free(A), free(B), free(C1), free(C2);
}
#endif

int main(void) {
  printf("cpu: %s\n", sd_cpu_describe());
  const char *untested[SD_GEMM_PATH_COUNT];
  int nun = 0;
  for (int p = SD_GEMM_PATH_BLAS; p < SD_GEMM_PATH_COUNT; p++) {
    if (!sd_gemm_path_available((sd_gemm_path)p)) {
      CHECK(sd_gemm_path_set((sd_gemm_path)p) == SD_ERR_UNSUPPORTED);
      untested[nun++] = sd_gemm_path_name((sd_gemm_path)p);
      continue;
    }
    CHECK(sd_gemm_path_set((sd_gemm_path)p) == SD_OK);
    CHECK(sd_gemm_path_get() == (sd_gemm_path)p);
    char label[32];
    snprintf(label, sizeof label, "path %s", sd_gemm_path_name((sd_gemm_path)p));
    gc_check_shapes(via_sgemm, NULL, label, 1, 0);
    if (p != SD_GEMM_PATH_BLAS) check_invariance(label);
  }
  /* The stack fallback of the best kernel: same checks, smaller. */
  CHECK(sd_gemm_path_set(SD_GEMM_PATH_AUTO) == SD_OK);
  sd_gemm_path best = sd_gemm_path_get();
  printf("default path on this CPU: %s\n", sd_gemm_path_name(best));
#if SD_GEMM_HAVE_X86
  if (sd_cpu()->avx512) {
    CHECK(best == SD_GEMM_PATH_AVX512 || getenv("SDGEN_GEMM"));
    gc_check_shapes(via_stack, (void *)&sd_gemm_desc_avx512, "avx512 stack panels", 0, 1);
  }
  if (sd_cpu()->avx512 && sd_cpu()->avx2_fma) check_avx2_equals_avx512();
  else
    printf("not exercised: avx2 == avx512 bitwise (needs both)\n");
#endif
  gc_check_shapes(via_stack, (void *)&sd_gemm_desc_c, "c stack panels", 0, 1);
  if (nun) {
    printf("paths this CPU cannot run (not exercised here):");
    for (int i = 0; i < nun; i++) printf(" %s", untested[i]);
    printf("\n");
  }
  printf("%d passed, %d failed\n", t_passed, t_failed);
  return t_failed ? 1 : 0;
}
