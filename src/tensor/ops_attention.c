/* Scaled dot-product attention with an online softmax (flash-style).
 *
 * Work is split into tasks of (batch, head, block of QB query rows), run in
 * parallel with OpenMP. Everything inside a task is kept transposed, with
 * query rows along the vector lanes: the task packs its queries once as
 * Qt (head_dim, QB), then for each chunk of kv_chunk keys computes
 *   St (chunk, QB) = scale * K_chunk Qt          (scores, transposed)
 * and folds it into running per-query maxima m, normalizers l and the output
 * accumulator Ot (head_dim, QB):
 *   m' = max(m, max_j s_j);  l' = l e^(m-m') + sum_j e^(s_j-m');
 *   Ot' = Ot e^(m-m') + V_chunk^T e^(St-m')
 * and writes out = (Ot / l)^T at the end. In this layout the softmax
 * reductions run across rows of St (plain vector max/add, no horizontal
 * reductions) and K and V are read in place (broadcasts), never packed.
 * Only (chunk, QB) scores exist at a time per thread, never (Lq, Lk); the
 * result depends on kv_chunk only through float rounding.
 *
 * Both products are one register-blocked micro-kernel written with GCC
 * vector extensions (16 floats), compiled for AVX-512, AVX2 and baseline
 * x86-64 with block shapes that fit each register file; the variant is
 * picked once per call from the CPU's features. */
#include <math.h>
#include <omp.h>

#include "base/alloc.h"
#include "base/status.h"
#include "tensor/ops.h"
#include "tensor/ops_internal.h"
#include "tensor/profile.h"

#define QB 256
#define DEFAULT_KV_CHUNK 256
#define VW 16 /* floats per vector in the micro-kernel */

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));

#define INLINE static inline __attribute__((always_inline))

/* C[i0+i, c0 .. c0+CB*VW) (=|+=) scale * sum_k A(i0+i, k) B[k, c0 ..] for
 * i < R, with A(i, k) = a[i*ai + k*ak] (broadcast) and B row-major (ldb). */
INLINE void gemm_tile(float *c, int64_t ldc, const float *a, int64_t ai,
                      int64_t ak, const float *b, int64_t ldb, int K,
                      int64_t i0, int64_t c0, float scale, const int R,
                      const int CB, const int accumulate) {
  /* Fixed bounds (not VLAs) so that, once R and CB are constants, the array
   * is split into registers. */
  v16 acc[8][4];
#pragma GCC unroll 8
  for (int i = 0; i < R; i++)
#pragma GCC unroll 4
    for (int j = 0; j < CB; j++) acc[i][j] = (v16){0};
  const float *ar = a + i0 * ai;
  for (int k = 0; k < K; k++) {
    v16 bv[4];
#pragma GCC unroll 4
    for (int j = 0; j < CB; j++)
      bv[j] = *(const v16u *)(b + (int64_t)k * ldb + c0 + j * VW);
#pragma GCC unroll 8
    for (int i = 0; i < R; i++) {
      float x = ar[i * ai + (int64_t)k * ak];
#pragma GCC unroll 4
      for (int j = 0; j < CB; j++) acc[i][j] += x * bv[j];
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; i++)
#pragma GCC unroll 4
    for (int j = 0; j < CB; j++) {
      v16u *dst = (v16u *)(c + (i0 + i) * ldc + c0 + j * VW);
      *dst = accumulate ? *dst + acc[i][j] : acc[i][j] * scale;
    }
}

/* Rows [i, M) with M - i < R <= 8: one tile of exactly that many rows. */
INLINE void gemm_rows_left(float *c, int64_t ldc, const float *a, int64_t ai,
                           int64_t ak, const float *b, int64_t ldb, int K,
                           int64_t i, int64_t M, int64_t c0, float scale,
                           const int CB, const int accumulate) {
#define TILE(r) gemm_tile(c, ldc, a, ai, ak, b, ldb, K, i, c0, scale, r, CB, accumulate)
  switch (M - i) {
  case 1: TILE(1); break;
  case 2: TILE(2); break;
  case 3: TILE(3); break;
  case 4: TILE(4); break;
  case 5: TILE(5); break;
  case 6: TILE(6); break;
  case 7: TILE(7); break;
  default: break;
  }
#undef TILE
}

/* Whole product over rows [0, M) and columns [0, N), N a multiple of VW:
 * R x CB tiles, then the row and column leftovers with smaller tiles. */
INLINE void gemm_all(float *c, int64_t ldc, const float *a, int64_t ai,
                     int64_t ak, const float *b, int64_t ldb, int K, int64_t M,
                     int64_t N, float scale, const int R, const int CB,
                     const int accumulate) {
  int64_t c0 = 0;
  for (; c0 + CB * VW <= N; c0 += CB * VW) {
    int64_t i = 0;
    for (; i + R <= M; i += R)
      gemm_tile(c, ldc, a, ai, ak, b, ldb, K, i, c0, scale, R, CB, accumulate);
    gemm_rows_left(c, ldc, a, ai, ak, b, ldb, K, i, M, c0, scale, CB, accumulate);
  }
  for (; c0 < N; c0 += VW) {
    int64_t i = 0;
    for (; i + R <= M; i += R)
      gemm_tile(c, ldc, a, ai, ak, b, ldb, K, i, c0, scale, R, 1, accumulate);
    gemm_rows_left(c, ldc, a, ai, ak, b, ldb, K, i, M, c0, scale, 1, accumulate);
  }
}

typedef void (*gemm_fn)(float *, int64_t, const float *, int64_t, int64_t,
                        const float *, int64_t, int, int64_t, int64_t, float,
                        int);

/* AVX-512 has 32 vector registers: 6x2 tiles (12 accumulators). With AVX2 a
 * v16 spans 2 registers of 16, with SSE 4 registers of 16: smaller tiles. */
#define DEFINE_GEMM(name, attr, R, CB)                                        \
  attr static void name(float *c, int64_t ldc, const float *a, int64_t ai,   \
                        int64_t ak, const float *b, int64_t ldb, int K,       \
                        int64_t M, int64_t N, float scale, int accumulate) {  \
    if (accumulate)                                                           \
      gemm_all(c, ldc, a, ai, ak, b, ldb, K, M, N, scale, R, CB, 1);          \
    else                                                                      \
      gemm_all(c, ldc, a, ai, ak, b, ldb, K, M, N, scale, R, CB, 0);          \
  }

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define HAVE_ISA_VARIANTS 1
DEFINE_GEMM(gemm_v4, __attribute__((target("arch=x86-64-v4"))), 6, 2)
DEFINE_GEMM(gemm_v3, __attribute__((target("arch=x86-64-v3"))), 3, 1)
#endif
DEFINE_GEMM(gemm_base, , 1, 1)

static gemm_fn pick_gemm(void) {
#ifdef HAVE_ISA_VARIANTS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
    return gemm_v4;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return gemm_v3;
#endif
  return gemm_base;
}

/* ---- online softmax over a transposed score block (vectorized clones) ---- */

/* mx[r] = max over rows j < nk of st[j, r], for r < n. */
SD_VEC_CLONES
static void column_max(float *mx, const float *st, int64_t ld, int nk,
                       int64_t n) {
#pragma omp simd
  for (int64_t r = 0; r < n; r++) mx[r] = -INFINITY;
  for (int j = 0; j < nk; j++) {
    const float *row = st + j * ld;
#pragma omp simd
    for (int64_t r = 0; r < n; r++) mx[r] = row[r] > mx[r] ? row[r] : mx[r];
  }
}

/* Given the chunk's column maxima in mx: updates m and l, turns st into
 * e^(s - m'), and leaves the rescale factors e^(m - m') in corr. A query
 * with no unmasked key yet keeps m = -inf and gets p = 0, l = 0. */
SD_VEC_CLONES
static void softmax_update(float *st, int64_t ld, int nk, int64_t n,
                           float *m, float *l, const float *mx, float *corr,
                           float *ref) {
#pragma omp simd
  for (int64_t r = 0; r < n; r++) {
    float m_new = mx[r] > m[r] ? mx[r] : m[r];
    float m_use = m_new == -INFINITY ? 0.0f : m_new;
    corr[r] = sd_expf_inline(m[r] - m_use);
    ref[r] = m_use;
    m[r] = m_new;
    l[r] *= corr[r];
  }
  for (int j = 0; j < nk; j++) {
    float *row = st + j * ld;
#pragma omp simd
    for (int64_t r = 0; r < n; r++) {
      float e = sd_expf_inline(row[r] - ref[r]);
      row[r] = e;
      l[r] += e;
    }
  }
}

/* ot[d, r] *= corr[r] for d < hd. */
SD_VEC_CLONES
static void rescale_columns(float *ot, int64_t ld, int hd, int64_t n,
                            const float *corr) {
  for (int d = 0; d < hd; d++) {
    float *row = ot + (int64_t)d * ld;
#pragma omp simd
    for (int64_t r = 0; r < n; r++) row[r] *= corr[r];
  }
}

typedef struct attn_scratch {
  float *qt;                   /* (head_dim, QB) */
  float *st;                   /* (kv_chunk, QB) */
  float *ot;                   /* (head_dim, QB) */
  float *m, *l, *mx, *corr, *ref; /* (QB) */
} attn_scratch;

static void attention_task(float *out, const float *q, const float *k,
                           const float *v, const sd_attn_args *a, int b, int h,
                           int i0, int kc, attn_scratch *w, gemm_fn gemm) {
  int hd = a->head_dim;
  int nq = a->Lq - i0 < QB ? a->Lq - i0 : QB;
  int64_t n = (nq + VW - 1) / VW * VW; /* lanes computed; >= nq are padding */
  int64_t od = (int64_t)a->heads * hd;
  const float *qb = q + ((int64_t)b * a->Lq + i0) * a->q_stride + (int64_t)h * hd;
  const float *kb = k + (int64_t)b * a->Lk * a->kv_stride + (int64_t)h * hd;
  const float *vb = v + (int64_t)b * a->Lk * a->kv_stride + (int64_t)h * hd;
  for (int d = 0; d < hd; d++) {
    float *row = w->qt + (int64_t)d * QB;
    for (int r = 0; r < nq; r++) row[r] = qb[(int64_t)r * a->q_stride + d];
    for (int64_t r = nq; r < n; r++) row[r] = 0.0f;
    memset(w->ot + (int64_t)d * QB, 0, (size_t)n * 4);
  }
  for (int64_t r = 0; r < n; r++) {
    w->m[r] = -INFINITY;
    w->l[r] = 0.0f;
  }
  /* Causal: keys past the block's last query row are masked for all rows. */
  int kend = a->causal && i0 + nq < a->Lk ? i0 + nq : a->Lk;
  for (int j0 = 0; j0 < kend; j0 += kc) {
    int nk = kend - j0 < kc ? kend - j0 : kc;
    const float *kc_rows = kb + (int64_t)j0 * a->kv_stride;
    const float *vc_rows = vb + (int64_t)j0 * a->kv_stride;
    gemm(w->st, QB, kc_rows, a->kv_stride, 1, w->qt, QB, hd, nk, n, a->scale, 0);
    if (a->bias) {
      for (int j = 0; j < nk; j++) {
        float *row = w->st + (int64_t)j * QB;
        const float *br = a->bias + ((int64_t)h * a->Lq + i0) * a->Lk + j0 + j;
        for (int r = 0; r < nq; r++) row[r] += br[(int64_t)r * a->Lk];
      }
    }
    if (a->causal && j0 + nk - 1 > i0) {
      for (int j = 0; j < nk; j++) {
        float *row = w->st + (int64_t)j * QB;
        /* key j0+j is visible to queries i >= j0+j */
        int first = j0 + j - i0;
        for (int r = 0; r < first && r < nq; r++) row[r] = -INFINITY;
      }
    }
    column_max(w->mx, w->st, QB, nk, n);
    softmax_update(w->st, QB, nk, n, w->m, w->l, w->mx, w->corr, w->ref);
    rescale_columns(w->ot, QB, hd, n, w->corr);
    gemm(w->ot, QB, vc_rows, 1, a->kv_stride, w->st, QB, nk, hd, n, 1.0f, 1);
  }
  for (int r = 0; r < nq; r++) {
    float *dst = out + ((int64_t)b * a->Lq + i0 + r) * od + (int64_t)h * hd;
    /* A fully masked query has l = 0; torch gives NaN there, we give 0. */
    float inv = w->l[r] > 0.0f ? 1.0f / w->l[r] : 0.0f;
    for (int d = 0; d < hd; d++) dst[d] = w->ot[(int64_t)d * QB + r] * inv;
  }
}

int sd_attention(float *out, const float *q, const float *k, const float *v,
                 const sd_attn_args *a) {
  if (a->B <= 0 || a->Lq <= 0 || a->heads <= 0 || a->head_dim <= 0)
    return SD_OK;
  if (a->Lk <= 0) return SD_ERR_ARG;
  int kc = a->kv_chunk > 0 ? a->kv_chunk : DEFAULT_KV_CHUNK;
  if (kc > a->Lk) kc = a->Lk;
  int hd = a->head_dim;
  int64_t per_thread = (2 * (int64_t)hd + kc + 5) * QB;
  int qblocks = (a->Lq + QB - 1) / QB;
  int64_t tasks = (int64_t)a->B * a->heads * qblocks;
  int nt = sd_threads_internal();
  if (nt > tasks) nt = (int)tasks;
  if (sd_plan_active()) return sd_plan_scratch(4 * per_thread * nt);
  SD_PROFILE_OP(SD_OPC_ATTENTION, 4.0 * a->B * a->heads * (double)a->Lq * a->Lk * a->head_dim,
                4.0 * a->B * a->heads * a->head_dim * (2.0 * a->Lq + 2.0 * a->Lk));
  float *scratch = sd_alloc((size_t)(per_thread * nt) * 4);
  if (!scratch) return SD_ERR_OOM;
  gemm_fn gemm = pick_gemm();
#pragma omp parallel num_threads(nt)
  {
    attn_scratch w;
    w.qt = scratch + per_thread * omp_get_thread_num();
    w.st = w.qt + (int64_t)hd * QB;
    w.ot = w.st + (int64_t)kc * QB;
    w.m = w.ot + (int64_t)hd * QB;
    w.l = w.m + QB;
    w.mx = w.l + QB;
    w.corr = w.mx + QB;
    w.ref = w.corr + QB;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; t++) {
      int qbk = (int)(t % qblocks);
      int h = (int)(t / qblocks % a->heads);
      int b = (int)(t / qblocks / a->heads);
      attention_task(out, q, k, v, a, b, h, qbk * QB, kc, &w, gemm);
    }
  }
  sd_free(scratch);
  return SD_OK;
}
