/* bf16 matrix product (see gemm_bf16.h for the contract and the layout).
 *
 * Only the functions marked BF16_TARGET contain AVX-512 code; the file and
 * the binary stay baseline x86-64 and sd_gemm_bf16 chooses at run time. */
#include "tensor/gemm_bf16.h"

#include <cblas.h>
#include <string.h>

#include "base/alloc.h"
#include "base/cpu.h"

float sd_bf16_round(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  uint32_t exp = u & 0x7f800000u;
  if (exp == 0x7f800000u) {
    /* Inf stays; NaN keeps its sign and top payload bits, made quiet. */
    if (u & 0x007fffffu) u = (u & 0xffff0000u) | 0x00400000u;
  } else if (exp == 0) {
    u &= 0x80000000u;
  } else {
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
  }
  float r;
  memcpy(&r, &u, 4);
  return r;
}

/* ---- portable path: round blocks to bf16 values, multiply in F32 ---- */

#define PORT_MC 256
#define PORT_KC 256
#define PORT_NC 1024
_Static_assert((int64_t)(PORT_MC * PORT_KC + PORT_KC * PORT_NC) * 4 <=
                   SD_GEMM_BF16_PORTABLE_BYTES,
               "portable block bound");

/* op(X)[r, k] for r in [r0, r0+nr), k in [k0, k0+nk) rounded, stored
 * row-major with row length nk. */
static void round_block(float *dst, const float *X, int64_t ldx, int trans,
                        int64_t r0, int64_t nr, int64_t k0, int64_t nk) {
  for (int64_t r = 0; r < nr; r++) {
    float *d = dst + r * nk;
    if (!trans) {
      const float *s = X + (r0 + r) * ldx + k0;
      for (int64_t k = 0; k < nk; k++) d[k] = sd_bf16_round(s[k]);
    } else {
      const float *s = X + k0 * ldx + r0 + r;
      for (int64_t k = 0; k < nk; k++) d[k] = sd_bf16_round(s[k * ldx]);
    }
  }
}

/* C = beta C, with beta = 0 writing zeros whatever C held. */
static void scale_c(int64_t M, int64_t N, float beta, float *C, int64_t ldc) {
  for (int64_t i = 0; i < M; i++) {
    float *c = C + i * ldc;
    if (beta == 0.0f) memset(c, 0, (size_t)N * 4);
    else if (beta != 1.0f)
      for (int64_t j = 0; j < N; j++) c[j] *= beta;
  }
}

/* Unblocked fallback for when the block buffers cannot be allocated. */
static void portable_scalar(int transA, int transB, int64_t M, int64_t N,
                            int64_t K, float alpha, const float *A, int64_t lda,
                            const float *B, int64_t ldb, float *C,
                            int64_t ldc) {
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      float s = 0.0f;
      for (int64_t k = 0; k < K; k++) {
        float a = transA ? A[k * lda + i] : A[i * lda + k];
        float b = transB ? B[j * ldb + k] : B[k * ldb + j];
        s += sd_bf16_round(a) * sd_bf16_round(b);
      }
      C[i * ldc + j] += alpha * s;
    }
}

void sd_gemm_bf16_portable(int transA, int transB, int64_t M, int64_t N,
                           int64_t K, float alpha, const float *A, int64_t lda,
                           const float *B, int64_t ldb, float beta, float *C,
                           int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  scale_c(M, N, beta, C, ldc);
  if (K <= 0 || alpha == 0.0f) return;
  int64_t mc = M < PORT_MC ? M : PORT_MC;
  int64_t kc = K < PORT_KC ? K : PORT_KC;
  int64_t nc = N < PORT_NC ? N : PORT_NC;
  float *abuf = sd_alloc((size_t)(mc * kc + kc * nc) * 4);
  if (!abuf) {
    portable_scalar(transA, transB, M, N, K, alpha, A, lda, B, ldb, C, ldc);
    return;
  }
  float *bbuf = abuf + mc * kc;
  for (int64_t j0 = 0; j0 < N; j0 += nc) {
    int64_t nn = N - j0 < nc ? N - j0 : nc;
    for (int64_t k0 = 0; k0 < K; k0 += kc) {
      int64_t nk = K - k0 < kc ? K - k0 : kc;
      /* op(B)^T rows are op(B)'s columns: stored (nn, nk), used transposed. */
      round_block(bbuf, B, ldb, !transB, j0, nn, k0, nk);
      for (int64_t i0 = 0; i0 < M; i0 += mc) {
        int64_t nm = M - i0 < mc ? M - i0 : mc;
        round_block(abuf, A, lda, transA, i0, nm, k0, nk);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nm, (int)nn,
                    (int)nk, alpha, abuf, (int)nk, bbuf, (int)nk, 1.0f,
                    C + i0 * ldc + j0, (int)ldc);
      }
    }
  }
  sd_free(abuf);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include "tensor/simd_x86.h"
#define SD_BF16_NATIVE 1
#define BF16_TARGET \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

/* Register block: MR rows of C by NR columns, NR/16 zmm per row. MR = 8 lets
 * one 16-lane vector of packed A fill two panels exactly. */
#define MR 8
#define NR 48
#define NV (NR / 16)
/* Cache blocks: a KC-deep micro-panel of B (KC*NR*2 bytes = 24 KiB) stays in
 * L1 while the packed MC x KC block of A (up to 192 KiB) streams from L2.
 * The callers' row blocks (256 rows, a weight panel of a few hundred output
 * channels) fit one MC block: then each B panel is packed right before its
 * only use into one reused slot, A is packed once per depth block, and B is
 * read from memory once per call. Taller products keep the KC x NC block of
 * packed B (768 KiB) for every row block. KC trades the number of passes
 * over C against the L1 footprint; 256, 384 and 512 measured alike here. */
#ifndef KC
#define KC 256
#endif
#ifndef MC
#define MC 384
#endif
#ifndef NC
#define NC 1536
#endif
/* Stack fallback blocks (no allocation): 16 KiB of A, 48 KiB of B. */
#define MC_SMALL 32
#define NC_SMALL 96

_Static_assert((int64_t)(MC * KC + KC * NC) * 2 <= SD_GEMM_BF16_SCRATCH_BYTES,
               "packing buffer bound");
_Static_assert(MC % MR == 0 && NC % NR == 0 && MC_SMALL % MR == 0 &&
                   NC_SMALL % NR == 0 && KC % 32 == 0 && NR % 16 == 0,
               "blocks are whole panels");

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }


/* Stores 16 consecutive indices [i0, i0+16) of k-pair p into a panel layout
 * with P indices per panel (P = MR or NR): element (i, p) lives at
 * dst[(i / P) * panel_stride + p * P + i % P]. */
BF16_TARGET static inline void store_pairs16(uint32_t *dst, int P,
                                             int64_t panel_stride, int64_t npad,
                                             int64_t i0, int64_t p, __m512i v) {
  if (P % 16 == 0) {
    _mm512_storeu_si512(dst + (i0 / P) * panel_stride + p * P + i0 % P, v);
  } else {
    /* P == 8: the two halves go to consecutive panels (the second one may
     * lie past the last panel). */
    _mm256_storeu_si256((__m256i *)(dst + (i0 / P) * panel_stride + p * P),
                        _mm512_castsi512_si256(v));
    if (i0 + 8 < npad)
      _mm256_storeu_si256((__m256i *)(dst + (i0 / P + 1) * panel_stride + p * P),
                          _mm512_extracti64x4_epi64(v, 1));
  }
}

/* Packs X[k, i] = src[k * ld + i] (k in [0,kc), i in [0,n)): consecutive
 * indices are contiguous, so two source rows (k, k+1) become 16 interleaved
 * pairs with one conversion and one word shuffle. Indices up to the panel
 * multiple and the odd last k are zero-filled. */
BF16_TARGET static void pack_k_strided(uint32_t *dst, int P,
                                       int64_t panel_stride, const float *src,
                                       int64_t ld, int64_t n, int64_t kc) {
  const __m512i interleave = _mm512_set_epi16(
      31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22,
      6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  int64_t kp = (kc + 1) / 2;
  int64_t npad = (n + P - 1) / P * P;
  for (int64_t p = 0; p < kp; p++) {
    for (int64_t i0 = 0; i0 < npad; i0 += 16) {
      __mmask16 m = sd_lanes16(n - i0);
      const float *s = src + 2 * p * ld + i0;
      __m512 r0 = _mm512_maskz_loadu_ps(m, s);
      __m512 r1 = 2 * p + 1 < kc ? _mm512_maskz_loadu_ps(m, s + ld)
                                 : _mm512_setzero_ps();
      /* Words 0-15: bf16(row k); words 16-31: bf16(row k+1). */
      __m512i w = (__m512i)_mm512_cvtne2ps_pbh(r1, r0);
      store_pairs16(dst, P, panel_stride, npad, i0, p,
                    _mm512_permutexvar_epi16(interleave, w));
    }
  }
}

/* Packs X[k, i] = src[i * ld + k]: a k-pair is already adjacent in memory,
 * so each source row converts to 16 pairs at once and blocks of 16 rows x 16
 * pairs are transposed into the panel layout. */
BF16_TARGET static void pack_k_contiguous(uint32_t *dst, int P,
                                          int64_t panel_stride,
                                          const float *src, int64_t ld,
                                          int64_t n, int64_t kc) {
  int64_t kp = (kc + 1) / 2;
  int64_t npad = (n + P - 1) / P * P;
  for (int64_t i0 = 0; i0 < npad; i0 += 16) {
    for (int64_t p0 = 0; p0 < kp; p0 += 16) {
      __m512i r[16];
      __mmask16 mlo = sd_lanes16(kc - 2 * p0);
      __mmask16 mhi = sd_lanes16(kc - 2 * p0 - 16);
#pragma GCC unroll 16
      for (int i = 0; i < 16; i++) {
        if (i0 + i < n) {
          const float *s = src + (i0 + i) * ld + 2 * p0;
          __m512 lo = _mm512_maskz_loadu_ps(mlo, s);
          __m512 hi = _mm512_maskz_loadu_ps(mhi, s + 16);
          r[i] = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
        } else {
          r[i] = _mm512_setzero_si512();
        }
      }
      sd_transpose16x32(r);
      int64_t np = min64(16, kp - p0);
      for (int p = 0; p < np; p++)
        store_pairs16(dst, P, panel_stride, npad, i0, p0 + p, r[p]);
    }
  }
}

/* C[0:mr, 0:nr] = alpha * (A panel . B panel) + beta * C (C unread when
 * beta == 0). a: kp x MR pairs, b: kp x NR pairs. */
BF16_TARGET static void micro_kernel(int64_t kp, const uint32_t *a,
                                     const uint32_t *b, float *C, int64_t ldc,
                                     int mr, int nr, float alpha, float beta) {
  /* The C tile is read (or written) only after the depth loop: start
   * fetching its lines now so they arrive during the arithmetic. */
  for (int i = 0; i < mr; i++) {
    const char *c = (const char *)(C + i * ldc);
    for (int off = 0; off < nr * 4; off += 64) _mm_prefetch(c + off, _MM_HINT_T0);
    _mm_prefetch(c + nr * 4 - 1, _MM_HINT_T0);
  }
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kp; p++) {
    __m512bh bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++)
      bv[v] = (__m512bh)_mm512_loadu_si512(b + p * NR + 16 * v);
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
      __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[p * MR + i]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++)
        acc[i][v] = _mm512_dpbf16_ps(acc[i][v], av, bv[v]);
    }
  }
  __mmask16 m[NV];
  for (int v = 0; v < NV; v++) m[v] = sd_lanes16(nr - 16 * v);
  __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 8
  for (int i = 0; i < MR; i++) {
    if (i >= mr) break;
    float *c = C + i * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
      __m512 r = _mm512_mul_ps(acc[i][v], va);
      if (beta != 0.0f)
        r = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m[v], c + 16 * v), r);
      _mm512_mask_storeu_ps(c + 16 * v, m[v], r);
    }
  }
}

/* Prefetches (to L2) part `part` of `nparts` of the source of one B panel:
 * op(B)[k0:k0+kc, c0:c0+nr]. Spread over the micro-kernel calls that run
 * before the panel is packed, these loads overlap arithmetic instead of
 * stalling the packing loop (B is read from memory once per call). */
static inline void prefetch_b_part(const float *B, int64_t ldb, int transB,
                                   int64_t k0, int64_t kc, int64_t c0,
                                   int64_t nr, int64_t part, int64_t nparts) {
  int64_t rows = transB ? nr : kc, len = (transB ? kc : nr) * 4;
  int64_t r0 = rows * part / nparts, r1 = rows * (part + 1) / nparts;
  for (int64_t r = r0; r < r1; r++) {
    const char *row = (const char *)(transB ? B + (c0 + r) * ldb + k0
                                            : B + (k0 + r) * ldb + c0);
    for (int64_t off = 0; off < len; off += 64)
      _mm_prefetch(row + off, _MM_HINT_T1);
    _mm_prefetch(row + len - 1, _MM_HINT_T1);
  }
}

BF16_TARGET static void gemm_native(int transA, int transB, int64_t M,
                                    int64_t N, int64_t K, float alpha,
                                    const float *A, int64_t lda,
                                    const float *B, int64_t ldb, float beta,
                                    float *C, int64_t ldc, uint32_t *abuf,
                                    uint32_t *bbuf, int64_t mc_max,
                                    int64_t nc_max) {
  /* Row blocks of equal size (whole panels): M = 320 is one block, not
   * 256 + 64 with the second one re-reading all of packed B. */
  int64_t nblocks = (M + mc_max - 1) / mc_max;
  int64_t mc_even = ((M + nblocks - 1) / nblocks + MR - 1) / MR * MR;
  /* One row block: B panels go one at a time through a single slot (see
   * below), so the column block can be all of N and A is packed once per
   * depth block. */
  if (nblocks == 1) nc_max = N;
  for (int64_t j0 = 0; j0 < N; j0 += nc_max) {
    int64_t nc = min64(N - j0, nc_max);
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
      int64_t kc = min64(K - k0, KC);
      int64_t kp = (kc + 1) / 2;
      /* Later depth blocks add to what the first one wrote. */
      float beta_k = k0 == 0 ? beta : 1.0f;
      for (int64_t i0 = 0; i0 < M; i0 += mc_even) {
        int64_t mc = min64(M - i0, mc_even);
        if (transA)
          pack_k_strided(abuf, MR, kp * MR, A + k0 * lda + i0, lda, mc, kc);
        else
          pack_k_contiguous(abuf, MR, kp * MR, A + i0 * lda + k0, lda, mc, kc);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          /* With one row block a panel is dead once used: keep rewriting
           * the same L1-resident slot rather than write-allocating the whole
           * block buffer. */
          uint32_t *bp = nblocks == 1 ? bbuf : bbuf + jr / NR * kp * NR;
          int nr = (int)min64(nc - jr, NR);
          /* Each B panel is packed just before its first use, so the first
           * row block reads it from L1 and its source loads overlap the
           * previous panel's arithmetic. */
          if (i0 == 0) {
            if (transB)
              pack_k_contiguous(bp, NR, kp * NR, B + (j0 + jr) * ldb + k0, ldb,
                                nr, kc);
            else
              pack_k_strided(bp, NR, kp * NR, B + k0 * ldb + j0 + jr, ldb, nr,
                             kc);
          }
          int64_t next = jr + NR, calls = (mc + MR - 1) / MR;
          for (int64_t ir = 0; ir < mc; ir += MR) {
            int mr = (int)min64(mc - ir, MR);
            if (i0 == 0 && next < nc)
              prefetch_b_part(B, ldb, transB, k0, kc, j0 + next,
                              min64(nc - next, NR), ir / MR, calls);
            micro_kernel(kp, abuf + ir / MR * kp * MR, bp,
                         C + (i0 + ir) * ldc + j0 + jr, ldc, mr, nr, alpha,
                         beta_k);
          }
        }
      }
    }
  }
}

static void gemm_native_alloc(int transA, int transB, int64_t M, int64_t N,
                              int64_t K, float alpha, const float *A,
                              int64_t lda, const float *B, int64_t ldb,
                              float beta, float *C, int64_t ldc) {
  int64_t kp = (min64(K, KC) + 1) / 2;
  int64_t mc = min64((M + MR - 1) / MR * MR, MC);
  int64_t nc = M <= MC ? NR : min64((N + NR - 1) / NR * NR, NC);
  uint32_t *buf = sd_alloc((size_t)((mc + nc) * kp) * 4);
  if (buf) {
    gemm_native(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
                buf, buf + mc * kp, MC, NC);
    sd_free(buf);
    return;
  }
  /* No status to return: finish with small blocks on the stack. */
  uint32_t abuf[MC_SMALL * KC / 2], bbuf[NC_SMALL * KC / 2];
  gemm_native(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
              abuf, bbuf, MC_SMALL, NC_SMALL);
}
#else
#define SD_BF16_NATIVE 0
#endif

int sd_gemm_bf16_native(void) { return SD_BF16_NATIVE && sd_cpu()->avx512_bf16; }

void sd_gemm_bf16(int transA, int transB, int64_t M, int64_t N, int64_t K,
                  float alpha, const float *A, int64_t lda, const float *B,
                  int64_t ldb, float beta, float *C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == 0.0f || !sd_gemm_bf16_native()) {
    sd_gemm_bf16_portable(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta,
                          C, ldc);
    return;
  }
#if SD_BF16_NATIVE
  gemm_native_alloc(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C,
                    ldc);
#endif
}
