/* The fast mode's matrix product: operands rounded to bf16, F32 accumulation.
 *
 * sd_gemm_bf16 has exactly sd_gemm_block's contract (row-major,
 * C = alpha op(A) op(B) + beta C, one thread, any M, N, K >= 0; beta = 0
 * never reads C, so NaNs there do not leak). Each element of A and B is
 * rounded to bf16 (round to nearest even, denormals to zero, as VCVTNE2PS2BF16
 * does); products and sums are F32. Relative error is therefore of the 2^-8
 * class of the operands, not of the F32 product.
 *
 * On CPUs with AVX512_BF16 it is a GotoBLAS-style blocked product: op(B) is
 * packed KC deep into NR-column micro-panels of bf16 pairs interleaved per
 * column (one zmm holds 16 columns x one k-pair, the operand layout of
 * VDPBF16PS), an MC x KC block of op(A) into MR-row panels of 32-bit k-pairs
 * (broadcast one at a time), and an 8 x 48 register-blocked micro-kernel
 * keeps 24 zmm accumulators. Elsewhere (other x86 CPUs, ARM) a portable
 * path rounds the operands block by block and multiplies them with
 * cblas_sgemm: same rounding of the operands, different summation order.
 *
 * Memory: every call allocates one packing buffer of at most
 * SD_GEMM_BF16_SCRATCH_BYTES with sd_alloc and frees it before returning
 * (the portable path: at most SD_GEMM_BF16_PORTABLE_BYTES). If that
 * allocation fails the call still completes, with stack blocks of 64 KiB
 * (or an unblocked scalar loop on the portable path), because the function
 * has no status to report; results are the same up to summation order.
 *
 * Pre-packed weights (not implemented). A weight is the same operand in
 * every call: op(A) of each convolution tile (the same OC panel against
 * every pixel tile), op(B) of each linear row block. Packing it per call
 * costs a few percent of a tile's time, plus the conversion of F16 weights
 * to F32 panels before that. A cache behind sd_gemm_block keyed by the
 * pointer is not safe (a freed and reallocated panel can reuse the address
 * with other contents, and checking the contents reads as much as packing
 * does), so reuse needs the caller to say the operand is a weight:
 *
 *   typedef struct sd_bf16_packed {
 *     int64_t rows, depth;  // rows of op(A) / columns of op(B); K
 *     int side;             // 'A': MR-row panels, 'B': NR-column panels
 *     uint32_t *pairs;      // per KC block, per panel: ceil(kc/2) x R pairs
 *   } sd_bf16_packed;
 *   // Packs rows [r0, r0+n) of a 2-D weight view (F32/F16/BF16, read
 *   // directly, no F32 copy); sd_bf16_packed_free releases it.
 *   int  sd_bf16_pack_weight(sd_bf16_packed *p, const sd_tensor *w, int side,
 *                            int64_t r0, int64_t n);
 *   void sd_bf16_packed_free(sd_bf16_packed *p);
 *   // C = alpha op(A) op(B) + beta C with one operand pre-packed; the other
 *   // is packed per call as now. Same contract as sd_gemm_bf16 otherwise.
 *   void sd_gemm_bf16_packed_a(const sd_bf16_packed *a, int64_t row0,
 *                              int64_t M, int64_t N, int transB,
 *                              const float *B, int64_t ldb, float alpha,
 *                              float beta, float *C, int64_t ldc);
 *   void sd_gemm_bf16_packed_b(int transA, int64_t M, const float *A,
 *                              int64_t lda, const sd_bf16_packed *b,
 *                              int64_t col0, int64_t N, float alpha,
 *                              float beta, float *C, int64_t ldc);
 *
 * The panels are laid out exactly as the per-call packing does (KC-deep
 * slices of one panel contiguous), so the micro-kernel is unchanged. The
 * packed copy is half the size of an F32 one and could live with the model
 * (counted by the memory planner) or per layer call (bounded like the
 * F32 panels today). */
#ifndef SDGEN_TENSOR_GEMM_BF16_H
#define SDGEN_TENSOR_GEMM_BF16_H

#include <stdint.h>

/* Upper bounds of the per-call packing buffer (see above). */
#define SD_GEMM_BF16_SCRATCH_BYTES ((int64_t)2 << 20)
#define SD_GEMM_BF16_PORTABLE_BYTES ((int64_t)2 << 20)

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
