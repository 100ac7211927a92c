/* The F32 matrix product's blocked driver (GotoBLAS/BLIS style), shared by
 * every micro-kernel: five loops around a register-blocked micro-kernel,
 * with op(A) and op(B) packed into cache-sized panels.
 *
 *   for jc in N by NC          (B block: KC x NC, packed once per depth block)
 *     for pc in K by KC        (depth block: later ones add to C)
 *       for ic in M by MC      (A block: MC x KC, packed, stays in L2)
 *         for jr in NC by NR   (B micro-panel: KC x NR, stays in L1)
 *           for ir in MC by MR micro-kernel: C[MR x NR] (+)= A panel . B panel
 *
 * When all of M is one A block, each B micro-panel is packed right before
 * its only use into one reused slot (it never leaves L1/L2), and NC is all
 * of N.
 *
 * Results. Every element of C is alpha * (sum over each KC-deep block, in k
 * order, of fused multiply-adds from 0) added block by block to beta * C:
 * the order depends on K and KC only, never on the element's position, on
 * M, N, MC, NC or the thread, so a row computes the same alone or inside a
 * taller product (batch invariance), and every kernel with the same KC and
 * FMA gives the same bits. beta == 0 never reads C (NaNs there do not leak).
 *
 * This file depends on nothing but the C library: the ARM kernel and its
 * test cross-compile with it alone. */
#ifndef SDGEN_TENSOR_GEMM_F32_CORE_H
#define SDGEN_TENSOR_GEMM_F32_CORE_H

#include <stdint.h>

/* Depth of one block: fixed for every kernel (see "Results" above). */
#define SD_GEMM_KC 256

/* C[0:mr, 0:nr] = alpha * (a . b) + beta * C over kc steps; a holds kc x MR
 * values (MR per step), b kc x NR; C is not read when beta == 0. */
typedef void (*sd_ukernel_fn)(int64_t kc, const float *a, const float *b, float *C,
                              int64_t ldc, int mr, int nr, float alpha, float beta);

/* Packs n indices x kc depth of a matrix view into panels of P indices:
 * element (i, k) goes to dst[(i / P) * P * kc + k * P + i % P], indices past
 * n up to the next multiple of P are zero. The source element (i, k) is
 * src[i * ld + k] when kcontig, src[k * ld + i] otherwise. */
typedef void (*sd_pack_fn)(float *dst, const float *src, int64_t ld, int kcontig, int64_t n,
                           int64_t kc, int P);

typedef struct sd_gemm_kernel_desc {
  const char *name;
  int mr, nr;          /* register block */
  int64_t mc, nc;      /* cache blocks (multiples of mr, nr) */
  sd_ukernel_fn kernel;
  sd_pack_fn pack_a, pack_b;
} sd_gemm_kernel_desc;

/* Floats of packing buffer an M x N x K call of sd_gemm_f32_run takes
 * (at most SD_GEMM_KC * (mc + nc), whatever the shape). */
int64_t sd_gemm_f32_buffer_floats(const sd_gemm_kernel_desc *d, int64_t M, int64_t N,
                                  int64_t K);

/* C = alpha op(A) op(B) + beta C (row-major, one thread) with the packing
 * buffer `buf` of sd_gemm_f32_buffer_floats(d, M, N, K) floats, or, when buf
 * is NULL, one panel of each operand on the stack (same results). */
void sd_gemm_f32_run(const sd_gemm_kernel_desc *d, int transA, int transB, int64_t M, int64_t N,
                     int64_t K, float alpha, const float *A, int64_t lda, const float *B,
                     int64_t ldb, float beta, float *C, int64_t ldc, float *buf);

/* The portable pieces: a plain C packer and a 4 x 16 C micro-kernel. */
void sd_gemm_pack_c(float *dst, const float *src, int64_t ld, int kcontig, int64_t n, int64_t kc,
                    int P);
extern const sd_gemm_kernel_desc sd_gemm_desc_c;

#endif
