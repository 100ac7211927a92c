/* The exact mode's matrix product: our blocked F32 kernels (gemm_f32_core.h)
 * chosen by the CPU at run time, with OpenBLAS kept as a reference and a
 * fallback.
 *
 * Paths: "avx512" (AVX-512 F/BW/DQ/VL, 6 x 64 register block), "avx2"
 * (AVX2 + FMA, 6 x 16), "neon" (ARM64, 8 x 12), "c" (portable 4 x 16), and
 * "blas" (cblas_sgemm). The default is the widest kernel the CPU runs; the
 * environment variable SDGEN_GEMM=blas|c|avx2|avx512|neon overrides it (read
 * once; a name this CPU cannot run is ignored), and tests force each path in
 * turn with sd_gemm_path_set. */
#ifndef SDGEN_TENSOR_GEMM_F32_H
#define SDGEN_TENSOR_GEMM_F32_H

#include <stdint.h>

typedef enum sd_gemm_path {
  SD_GEMM_PATH_AUTO = 0,
  SD_GEMM_PATH_BLAS,
  SD_GEMM_PATH_C,
  SD_GEMM_PATH_AVX2,
  SD_GEMM_PATH_AVX512,
  SD_GEMM_PATH_NEON,
  SD_GEMM_PATH_COUNT
} sd_gemm_path;

const char *sd_gemm_path_name(sd_gemm_path p);
/* 1 when the path is compiled in and this CPU can run it. */
int sd_gemm_path_available(sd_gemm_path p);
/* Sets the path of every later product (AUTO: SDGEN_GEMM or the CPU's best);
 * SD_ERR_UNSUPPORTED when this CPU cannot run it. Not while products run. */
int sd_gemm_path_set(sd_gemm_path p);
/* The path in use (never AUTO). */
sd_gemm_path sd_gemm_path_get(void);

/* C = alpha op(A) op(B) + beta C on the calling thread in the current path
 * (sd_gemm_block's contract: row-major, any M, N, K >= 0, beta == 0 never
 * reads C). Packing uses one buffer per thread, kept for the thread's
 * lifetime (see gemm_f32.c). */
void sd_sgemm(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha,
              const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
              int64_t ldc);

#endif
