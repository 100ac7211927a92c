/* The fast mode's matrix product: operands rounded to bf16, F32 accumulation.
 *
 * sd_gemm_bf16 has exactly sd_gemm_block's contract (row-major,
 * C = alpha op(A) op(B) + beta C, one thread, any M, N, K >= 0; beta = 0
 * never reads C, so NaNs there do not leak). Each element of A and B is
 * rounded to bf16 (round to nearest even, denormals to zero, as VCVTNE2PS2BF16
 * does); products and sums are F32. Relative error is therefore of the 2^-8
 * class of the operands, not of the F32 product.
 *
 * On CPUs with AVX512_BF16 it is a GotoBLAS-style blocked product: a KC x NC
 * block of op(B) is packed into bf16 pairs interleaved per column (one zmm
 * holds 16 columns x one k-pair, the operand layout of VDPBF16PS), an
 * MC x KC block of op(A) into MR-row panels of 32-bit k-pairs (broadcast one
 * at a time), and an MR x NR register-blocked micro-kernel accumulates
 * MR*NR/16 zmm registers. Elsewhere (other x86 CPUs, ARM) a portable path
 * rounds the operands block by block and multiplies them with cblas_sgemm:
 * same rounding of the operands, different summation order.
 *
 * Memory: every call allocates one packing buffer of at most
 * SD_GEMM_BF16_SCRATCH_BYTES with sd_alloc and frees it before returning
 * (the portable path: at most SD_GEMM_BF16_PORTABLE_BYTES). If that
 * allocation fails the call still completes, with stack blocks of 64 KiB
 * (or an unblocked scalar loop on the portable path), because the function
 * has no status to report; results are the same up to summation order.
 *
 * Pre-packed weights (not implemented): a linear or convolution weight is the
 * same operand in every call, so its packing (op(A) panels for convolutions,
 * op(B) panels for linear layers) could be done once per model load:
 *
 *   typedef struct sd_bf16_packed {
 *     int64_t rows, depth;   // rows of op(A) (or columns of op(B)), K
 *     int64_t kc;            // depth block the panels were cut for
 *     uint32_t *pairs;       // ceil(rows/R) panels x ceil(K/2) pairs x R
 *   } sd_bf16_packed;
 *   int  sd_bf16_pack_a(sd_bf16_packed *p, const sd_tensor *w, ...);
 *   void sd_gemm_bf16_packed_a(const sd_bf16_packed *a, int64_t row0,
 *                              int64_t M, int64_t N, int transB,
 *                              const float *B, int64_t ldb, float beta,
 *                              float *C, int64_t ldc);
 *
 * with the panels stored K-block by K-block so that a block of KC depth of
 * one R-row panel is contiguous, exactly as the per-call packing lays it
 * out. It halves the weight's memory (bf16 instead of F32 copies) and removes
 * the per-call A packing (a few percent of a convolution tile's time); the
 * price is a second copy of every weight in the fast mode, so the memory
 * planner would have to count it. */
#ifndef SDGEN_TENSOR_GEMM_BF16_H
#define SDGEN_TENSOR_GEMM_BF16_H

#include <stdint.h>

/* Upper bounds of the per-call packing buffer (see above). */
#define SD_GEMM_BF16_SCRATCH_BYTES ((int64_t)2 << 20)
#define SD_GEMM_BF16_PORTABLE_BYTES ((int64_t)3 << 20)

void sd_gemm_bf16(int transA, int transB, int64_t M, int64_t N, int64_t K,
                  float alpha, const float *A, int64_t lda, const float *B,
                  int64_t ldb, float beta, float *C, int64_t ldc);

/* The portable path alone (what non-AVX512_BF16 machines run); exposed so
 * tests can check it on every machine. */
void sd_gemm_bf16_portable(int transA, int transB, int64_t M, int64_t N,
                           int64_t K, float alpha, const float *A, int64_t lda,
                           const float *B, int64_t ldb, float beta, float *C,
                           int64_t ldc);

/* x rounded to the nearest bf16 (ties to even), returned as a float: NaNs
 * stay NaN (quieted), infinities stay, denormals become signed zero. The
 * rounding both paths apply to every operand. */
float sd_bf16_round(float x);

/* 1 when sd_gemm_bf16 runs the AVX512_BF16 kernel on this CPU. */
int sd_gemm_bf16_native(void);

#endif
