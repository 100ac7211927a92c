/* The blocked F32 product's driver and its portable kernel (see
 * gemm_f32_core.h). Standard C only. */
#include "tensor/gemm_f32_core.h"

#include <string.h>

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Rows of the A block and columns of the B buffer one call uses. */
static void buffer_shape(const sd_gemm_kernel_desc *d, int64_t M, int64_t N, int64_t *ma,
                         int64_t *nb) {
  int64_t mpad = (M + d->mr - 1) / d->mr * d->mr;
  int single = M <= d->mc;
  *ma = single ? mpad : d->mc;
  *nb = single ? d->nr : min64((N + d->nr - 1) / d->nr * d->nr, d->nc);
}

int64_t sd_gemm_f32_buffer_floats(const sd_gemm_kernel_desc *d, int64_t M, int64_t N,
                                  int64_t K) {
  if (M <= 0 || N <= 0 || K <= 0) return 0;
  int64_t ma, nb;
  buffer_shape(d, M, N, &ma, &nb);
  return min64(K, SD_GEMM_KC) * (ma + nb);
}

void sd_gemm_pack_c(float *dst, const float *src, int64_t ld, int kcontig, int64_t n, int64_t kc,
                    int P) {
  for (int64_t i0 = 0; i0 < n; i0 += P) {
    float *d = dst + i0 * kc;
    int64_t np = min64(P, n - i0);
    if (kcontig) {
      for (int64_t i = 0; i < np; i++) {
        const float *s = src + (i0 + i) * ld;
        for (int64_t k = 0; k < kc; k++) d[k * P + i] = s[k];
      }
      for (int64_t k = 0; k < kc; k++)
        for (int64_t i = np; i < P; i++) d[k * P + i] = 0.0f;
    } else {
      for (int64_t k = 0; k < kc; k++) {
        const float *s = src + k * ld + i0;
        float *dk = d + k * P;
        for (int64_t i = 0; i < np; i++) dk[i] = s[i];
        for (int64_t i = np; i < P; i++) dk[i] = 0.0f;
      }
    }
  }
}

/* C = beta C (beta 0 writes zeros whatever C held). */
static void scale_c(int64_t M, int64_t N, float beta, float *C, int64_t ldc) {
  for (int64_t i = 0; i < M; i++) {
    float *c = C + i * ldc;
    if (beta == 0.0f)
      memset(c, 0, (size_t)N * sizeof(float));
    else if (beta != 1.0f)
      for (int64_t j = 0; j < N; j++) c[j] *= beta;
  }
}

static void run_blocks(const sd_gemm_kernel_desc *d, int transA, int transB, int64_t M,
                       int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                       const float *B, int64_t ldb, float beta, float *C, int64_t ldc,
                       float *abuf, float *bbuf, int64_t mc_max, int64_t nc_max) {
  const int MR = d->mr, NR = d->nr;
  /* Row blocks of equal size (whole panels): M = 320 is one block, not
   * 256 + 64 with the second one re-reading all of packed B. */
  int64_t nblocks = (M + mc_max - 1) / mc_max;
  int64_t mc_even = ((M + nblocks - 1) / nblocks + MR - 1) / MR * MR;
  int single = nblocks == 1;
  if (single) nc_max = N;
  for (int64_t jc = 0; jc < N; jc += nc_max) {
    int64_t nc = min64(N - jc, nc_max);
    for (int64_t pc = 0; pc < K; pc += SD_GEMM_KC) {
      int64_t kc = min64(K - pc, SD_GEMM_KC);
      float beta_k = pc == 0 ? beta : 1.0f;
      /* op(B)[k, j]: k-contiguous when B is stored transposed. */
      const float *Bs = transB ? B + jc * ldb + pc : B + pc * ldb + jc;
      if (!single) d->pack_b(bbuf, Bs, ldb, transB, nc, kc, NR);
      for (int64_t ic = 0; ic < M; ic += mc_even) {
        int64_t mc = min64(M - ic, mc_even);
        const float *As = transA ? A + pc * lda + ic : A + ic * lda + pc;
        d->pack_a(abuf, As, lda, !transA, mc, kc, MR);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          int nr = (int)min64(nc - jr, NR);
          const float *bp;
          if (single) {
            /* One row block: each B micro-panel is used once, right after
             * it is packed into the same cache-resident slot. */
            const float *Bj = transB ? Bs + jr * ldb : Bs + jr;
            d->pack_b(bbuf, Bj, ldb, transB, nr, kc, NR);
            bp = bbuf;
          } else {
            bp = bbuf + jr * kc;
          }
          for (int64_t ir = 0; ir < mc; ir += MR) {
            int mr = (int)min64(mc - ir, MR);
            d->kernel(kc, abuf + ir * kc, bp, C + (ic + ir) * ldc + jc + jr, ldc, mr, nr, alpha,
                      beta_k);
          }
        }
      }
    }
  }
}

/* Stack blocks for when no buffer could be allocated: one panel of each. */
#define STACK_PANEL_FLOATS (SD_GEMM_KC * 80)

void sd_gemm_f32_run(const sd_gemm_kernel_desc *d, int transA, int transB, int64_t M, int64_t N,
                     int64_t K, float alpha, const float *A, int64_t lda, const float *B,
                     int64_t ldb, float beta, float *C, int64_t ldc, float *buf) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == 0.0f) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  if (buf) {
    int64_t ma, nb;
    buffer_shape(d, M, N, &ma, &nb);
    run_blocks(d, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, buf,
               buf + ma * min64(K, SD_GEMM_KC), d->mc, d->nc);
    return;
  }
  float stack[STACK_PANEL_FLOATS];
  if ((int64_t)(d->mr + d->nr) * SD_GEMM_KC <= STACK_PANEL_FLOATS) {
    run_blocks(d, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, stack,
               stack + d->mr * SD_GEMM_KC, d->mr, d->nr);
    return;
  }
  run_blocks(&sd_gemm_desc_c, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
             stack, stack + sd_gemm_desc_c.mr * SD_GEMM_KC, sd_gemm_desc_c.mr,
             sd_gemm_desc_c.nr);
}

/* ---- portable micro-kernel ---- */

#define CMR 4
#define CNR 16

static void kernel_c(int64_t kc, const float *a, const float *b, float *C, int64_t ldc, int mr,
                     int nr, float alpha, float beta) {
  float acc[CMR][CNR];
  for (int i = 0; i < CMR; i++)
    for (int j = 0; j < CNR; j++) acc[i][j] = 0.0f;
  for (int64_t k = 0; k < kc; k++) {
    const float *ak = a + k * CMR, *bk = b + k * CNR;
    for (int i = 0; i < CMR; i++) {
      float av = ak[i];
      for (int j = 0; j < CNR; j++) acc[i][j] += av * bk[j];
    }
  }
  for (int i = 0; i < mr; i++) {
    float *c = C + i * ldc;
    if (beta == 0.0f)
      for (int j = 0; j < nr; j++) c[j] = alpha * acc[i][j];
    else
      for (int j = 0; j < nr; j++) c[j] = alpha * acc[i][j] + beta * c[j];
  }
}

const sd_gemm_kernel_desc sd_gemm_desc_c = {"c", CMR, CNR, 128, 1024, kernel_c, sd_gemm_pack_c,
                                            sd_gemm_pack_c};
