/* The ARM64 NEON kernel of the F32 product (src/tensor/gemm_f32_neon.c),
 * cross-compiled with the driver alone (no sdgen library: the kernel files
 * depend on the C library only) and run under qemu-aarch64 by ctest: the
 * same double-reference checks as tests/unit/test_gemm_kernels.c, through
 * the packed-buffer and the stack-panel paths (the blocking loops past the
 * cache blocks are the shared driver's, checked natively). */
#include <stdio.h>
#include <stdlib.h>

#include "gemm_check.h"
#include "tensor/gemm_f32_core.h"
#include "tensor/gemm_f32_neon.h"

static void via_buffer(void *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                       const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                       float *C, int64_t ldc) {
  const sd_gemm_kernel_desc *d = ctx;
  int64_t n = sd_gemm_f32_buffer_floats(d, M, N, K);
  float *buf = n > 0 ? aligned_alloc(64, (size_t)((n * 4 + 63) / 64 * 64)) : NULL;
  CHECK_MSG(n == 0 || buf, "out of memory");
  sd_gemm_f32_run(d, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, buf);
  free(buf);
}

static void via_stack(void *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                      const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                      float *C, int64_t ldc) {
  sd_gemm_f32_run(ctx, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL);
}

int main(void) {
#if SD_GEMM_HAVE_NEON
  gc_check_shapes(via_buffer, (void *)&sd_gemm_desc_neon, "neon", 0, 1);
  gc_check_shapes(via_stack, (void *)&sd_gemm_desc_neon, "neon stack panels", 0, 1);
#else
  printf("SKIP: not an aarch64 build\n");
  return 77;
#endif
  printf("%d passed, %d failed\n", t_passed, t_failed);
  return t_failed ? 1 : 0;
}
