/* Matrix products (linear layers, plain GEMM) and the thread setting.
 *
 * One thread pool: OpenMP. BLAS (OpenBLAS, pthreads build) is kept at one
 * thread and called from inside OpenMP loops, each thread multiplying its
 * own block of the output. Two pools (OpenMP for our loops, OpenBLAS's for
 * GEMMs) would alternate at every kernel boundary, and the idle pool's
 * spinning threads steal the cores the other one needs (measured: conv2d
 * twice as slow on a loaded 2-core machine).
 *
 * Weights stored as F16/BF16 are converted to F32 one panel of output rows
 * at a time into a scratch buffer of at most SD_SCRATCH_FLOATS, so no call
 * ever holds a whole-model (or, for the biggest layers, whole-layer) F32
 * copy. */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/alloc.h"
#include "base/cpu.h"
#include "base/status.h"
#include "tensor/convert.h"
#include "tensor/gemm_bf16.h"
#include "tensor/gemm_f32.h"
#include "tensor/ops.h"
#include "tensor/lowrank.h"
#include "tensor/ops_internal.h"
#include "tensor/profile.h"

static int g_threads;      /* 0 until sd_set_threads: OpenMP's default */
static int g_blas_single;  /* BLAS pinned to one thread yet? */

void sd_blas_single_thread(void) {
  if (g_blas_single) return;
#ifndef SDGEN_ACCELERATE
  openblas_set_num_threads(1);
#endif
  g_blas_single = 1;
}

/* Hardware threads per core, from cpu0's sibling list ("0,8" or "0-1"):
 * SMT siblings share one core's FMA units, so GEMM-bound work gains nothing
 * from them. 1 when unknown. */
static int smt_per_core(void) {
  FILE *f = fopen("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list", "r");
  if (!f) return 1;
  char buf[128];
  int count = 0;
  if (fgets(buf, sizeof buf, f)) {
    char *p = buf;
    while (*p && *p != '\n') {
      long a = strtol(p, &p, 10), b = a;
      if (*p == '-') b = strtol(p + 1, &p, 10);
      if (b >= a) count += (int)(b - a + 1);
      if (*p == ',') p++;
      else if (*p && *p != '\n') break;
    }
  }
  fclose(f);
  return count >= 1 ? count : 1;
}

void sd_set_threads(int n) {
  if (n <= 0) n = omp_get_num_procs() / smt_per_core();
  if (n < 1) n = 1;
  g_threads = n;
  omp_set_num_threads(n);
  g_blas_single = 0;
  sd_blas_single_thread();
}

int sd_get_threads(void) { return sd_threads_internal(); }

static sd_precision g_precision = SD_PREC_FP32;

int sd_precision_supported(sd_precision p) {
  if (p == SD_PREC_FP32) return 1;
  if (p == SD_PREC_BF16) return sd_cpu()->avx512_bf16;
  return 0;
}

int sd_set_precision(sd_precision p) {
  if (!sd_precision_supported(p)) return SD_ERR_UNSUPPORTED;
  g_precision = p;
  return SD_OK;
}

sd_precision sd_get_precision(void) { return g_precision; }

sd_precision sd_precision_fast(const char **why) {
  const sd_cpu_features *cpu = sd_cpu();
  const char *w;
  sd_precision p = SD_PREC_FP32;
  if (cpu->avx512_bf16 && cpu->amd) {
    p = SD_PREC_BF16;
    w = "AVX512-BF16 dot products run at twice the fp32 FMA rate on this CPU";
  } else if (cpu->avx512_bf16) {
    w = "AVX512-BF16 dot products run at the fp32 FMA rate on this CPU: exact mode";
  } else if (cpu->avx512_fp16) {
    w = "the AVX512-FP16 path is not shipped (untested): exact mode";
  } else {
    w = "no reduced-precision arithmetic faster than fp32 on this CPU: exact mode";
  }
  if (why) *why = w;
  return p;
}

const char *sd_precision_name(sd_precision p) {
  return p == SD_PREC_BF16 ? "bf16" : "fp32";
}

int sd_threads_internal(void) {
  return g_threads > 0 ? g_threads : omp_get_max_threads();
}

void sd_weight_rows_f32(const sd_tensor *w, int64_t r0, int64_t nr,
                        int64_t cols, float *dst) {
  int64_t total = nr * cols;
  /* Conversion is memory-bound; split only when each thread gets enough.
   * Inside an enclosing parallel region this runs on the calling thread. */
  int nt = total >= (1 << 16) && !omp_in_parallel() ? sd_threads_internal() : 1;
  int64_t chunk = (total + nt - 1) / nt;
  chunk = (chunk + 15) & ~(int64_t)15;
  int64_t base = r0 * cols;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int t = 0; t < nt; t++) {
    int64_t s = (int64_t)t * chunk;
    int64_t e = s + chunk < total ? s + chunk : total;
    if (s >= e) continue;
    switch (w->dtype) {
    case SD_F16:
      sd_convert_f16_to_f32(dst + s, (const uint16_t *)w->data + base + s, e - s);
      break;
    case SD_BF16:
      sd_convert_bf16_to_f32(dst + s, (const uint16_t *)w->data + base + s, e - s);
      break;
    default:
      sd_tensor_read_f32(w, base + s, e - s, dst + s);
      break;
    }
  }
}

/* Rows per BLAS call for tall products (see sd_gemm_parallel). */
#define GEMM_ROW_BLOCK 256

void sd_gemm_block(int transA, int transB, int64_t M, int64_t N, int64_t K,
                   float alpha, const float *A, int64_t lda, const float *B,
                   int64_t ldb, float beta, float *C, int64_t ldc) {
  if (sd_get_precision() == SD_PREC_BF16) {
    sd_gemm_bf16(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  sd_sgemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* Concurrent block calls of sd_gemm_parallel for an M-row product. */
static int gemm_threads(int64_t M, int64_t N, int64_t K) {
  if (omp_in_parallel() || 2.0 * M * N * K < 4e6) return 1;
  return sd_threads_internal();
}

/* C = alpha op(A) op(B) + beta C with the rows (or, when there are few, the
 * columns) of C split into one block per thread. Blocks are multiples of 16
 * so every thread's BLAS call sees whole micro-tiles. */
void sd_gemm_parallel(int transA, int transB, int64_t M, int64_t N, int64_t K,
                      float alpha, const float *A, int64_t lda, const float *B,
                      int64_t ldb, float beta, float *C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  sd_blas_single_thread();
  int nt = gemm_threads(M, N, K);
  if (M > GEMM_ROW_BLOCK) {
    /* Fixed row blocks, whatever M and the thread count: a row's result
     * then depends only on its block, so an image computes the same alone
     * or in a batch (OpenBLAS picks other kernels, with other rounding, for
     * other shapes), and results do not change with the number of threads. */
    int64_t nb = (M + GEMM_ROW_BLOCK - 1) / GEMM_ROW_BLOCK;
    /* Dynamic: on a shared machine a preempted thread's blocks go to the
     * other threads instead of everyone waiting at the barrier. Which thread
     * computes a block never changes its result. */
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (int64_t t = 0; t < nb; t++) {
      int64_t s = t * GEMM_ROW_BLOCK;
      int64_t e = s + GEMM_ROW_BLOCK < M ? s + GEMM_ROW_BLOCK : M;
      const float *As = transA ? A + s : A + s * lda;
      sd_gemm_block(transA, transB, e - s, N, K, alpha, As, lda, B, ldb, beta, C + s * ldc, ldc);
    }
    return;
  }
  if (nt == 1) {
    sd_gemm_block(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  int split_rows = M >= 32 * nt || M >= N;
  int64_t len = split_rows ? M : N;
  int64_t block = ((len + nt - 1) / nt + 15) & ~(int64_t)15;
  int nb = (int)((len + block - 1) / block);
#pragma omp parallel for num_threads(nb) schedule(static)
  for (int t = 0; t < nb; t++) {
    int64_t s = (int64_t)t * block;
    int64_t e = s + block < len ? s + block : len;
    if (split_rows) {
      const float *As = transA ? A + s : A + s * lda;
      sd_gemm_block(transA, transB, e - s, N, K, alpha, As, lda, B, ldb, beta,
             C + s * ldc, ldc);
    } else {
      const float *Bs = transB ? B + s * ldb : B + s;
      sd_gemm_block(transA, transB, M, e - s, K, alpha, A, lda, Bs, ldb, beta, C + s,
             ldc);
    }
  }
}

int64_t sd_gemm_block_scratch_bytes(void) {
  return sd_get_precision() == SD_PREC_BF16 ? SD_GEMM_BF16_SCRATCH_BYTES : 0;
}

void sd_gemm(int transA, int transB, int64_t M, int64_t N, int64_t K,
             float alpha, const float *A, int64_t lda, const float *B,
             int64_t ldb, float beta, float *C, int64_t ldc) {
  if (sd_plan_active()) {
    sd_plan_scratch(gemm_threads(M, N, K) * sd_gemm_block_scratch_bytes());
    return;
  }
  SD_PROFILE_OP(SD_OPC_GEMM, 2.0 * M * N * K, 4.0 * ((double)M * K + (double)K * N + (double)M * N));
  sd_gemm_parallel(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C,
                   ldc);
}

/* Fills each of the M rows (stride ldy) with the N-vector b. */
static void fill_rows(float *y, int64_t M, int64_t N, int64_t ldy,
                      const float *b) {
  int nt = M * N >= (1 << 15) ? sd_threads_internal() : 1;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t m = 0; m < M; m++) memcpy(y + m * ldy, b, (size_t)N * 4);
}

/* Floats of the converted weight panel sd_linear takes (0 for F32). */
static int64_t linear_panel_rows(const sd_tensor *W, int64_t K) {
  int64_t N = W->shape[0];
  int64_t nb = SD_SCRATCH_FLOATS / (K > 0 ? K : 1);
  if (nb < 16) nb = 16;
  return nb > N ? N : nb;
}

static int linear_impl(float *y, const float *x, int64_t M, int64_t K,
                       const sd_tensor *W, const sd_tensor *bias);

int sd_linear(float *y, const float *x, int64_t M, int64_t K,
              const sd_tensor *W, const sd_tensor *bias) {
  int rc = linear_impl(y, x, M, K, W, bias);
  /* LoRA side path: y += s * up(down(x)), after the product (its scratch
   * is freed by then) */
  if (!rc && W->side) rc = sd_lowrank_linear(y, x, M, K, W->shape[0], W->side);
  return rc;
}

static int linear_impl(float *y, const float *x, int64_t M, int64_t K,
                       const sd_tensor *W, const sd_tensor *bias) {
  if (sd_plan_active()) {
    /* bias copy (freed before the panel is taken) or panel + the GEMM's */
    int64_t N = W->shape[0];
    int64_t panel = W->dtype == SD_F32 ? 0 : 4 * linear_panel_rows(W, K) * K;
    int64_t gemm = gemm_threads(M, N, K) * sd_gemm_block_scratch_bytes();
    int64_t peak = panel + gemm > (bias ? 4 * N : 0) ? panel + gemm : 4 * N;
    return M > 0 && N > 0 ? sd_plan_scratch(peak) : SD_OK;
  }
  SD_PROFILE_OP(SD_OPC_GEMM, 2.0 * M * K * W->shape[0],
                4.0 * M * (double)(K + W->shape[0]) +
                    (double)sd_tensor_numel(W) * sd_dtype_size(W->dtype));
  int64_t N = W->shape[0];
  if (sd_tensor_numel(W) != N * K) return SD_ERR_ARG;
  if (M <= 0 || N <= 0) return SD_OK;
  float beta = 0.0f;
  if (bias) {
    /* Bias is fused into the GEMM: rows start as the bias, beta = 1. */
    float *b = sd_alloc((size_t)N * 4);
    if (!b) return SD_ERR_OOM;
    sd_param_f32(bias, N, b);
    fill_rows(y, M, N, N, b);
    sd_free(b);
    beta = 1.0f;
  }
  if (K == 0) {
    if (!bias) memset(y, 0, (size_t)(M * N) * 4);
    return SD_OK;
  }
  if (W->dtype == SD_F32) {
    sd_gemm_parallel(0, 1, M, N, K, 1.0f, x, K, (const float *)W->data, K,
                     beta, y, N);
    return SD_OK;
  }
  int64_t nb = linear_panel_rows(W, K);
  float *panel = sd_alloc((size_t)(nb * K) * 4);
  if (!panel) return SD_ERR_OOM;
  for (int64_t n0 = 0; n0 < N; n0 += nb) {
    int64_t nn = N - n0 < nb ? N - n0 : nb;
    sd_weight_rows_f32(W, n0, nn, K, panel);
    sd_gemm_parallel(0, 1, M, nn, K, 1.0f, x, K, panel, K, beta, y + n0, N);
  }
  sd_free(panel);
  return SD_OK;
}
