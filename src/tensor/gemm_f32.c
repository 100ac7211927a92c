/* Dispatch of the F32 product (see gemm_f32.h). */
#include "tensor/gemm_f32.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "base/cpu.h"
#include "base/status.h"
#include "tensor/gemm_f32_core.h"
#include "tensor/gemm_f32_neon.h"
#include "tensor/gemm_f32_x86.h"

#include <cblas.h>

static const char *const g_names[SD_GEMM_PATH_COUNT] = {"auto", "blas", "c",
                                                         "avx2", "avx512", "neon"};

static int g_path; /* sd_gemm_path; 0 until resolved */

const char *sd_gemm_path_name(sd_gemm_path p) {
  return p >= 0 && p < SD_GEMM_PATH_COUNT ? g_names[p] : "unknown";
}

static const sd_gemm_kernel_desc *desc_of(sd_gemm_path p) {
  switch (p) {
  case SD_GEMM_PATH_C:
    return &sd_gemm_desc_c;
#if SD_GEMM_HAVE_X86
  case SD_GEMM_PATH_AVX2:
    return &sd_gemm_desc_avx2;
  case SD_GEMM_PATH_AVX512:
    return &sd_gemm_desc_avx512;
#endif
#if SD_GEMM_HAVE_NEON
  case SD_GEMM_PATH_NEON:
    return &sd_gemm_desc_neon;
#endif
  default:
    return NULL;
  }
}

int sd_gemm_path_available(sd_gemm_path p) {
  const sd_cpu_features *cpu = sd_cpu();
  switch (p) {
  case SD_GEMM_PATH_BLAS:
  case SD_GEMM_PATH_C:
    return 1;
  case SD_GEMM_PATH_AVX2:
    return SD_GEMM_HAVE_X86 && cpu->avx2_fma;
  case SD_GEMM_PATH_AVX512:
    return SD_GEMM_HAVE_X86 && cpu->avx512 && cpu->avx2_fma;
  case SD_GEMM_PATH_NEON:
    return SD_GEMM_HAVE_NEON && cpu->neon;
  default:
    return 0;
  }
}

static sd_gemm_path best_path(void) {
  const char *env = getenv("SDGEN_GEMM");
  if (env)
    for (int p = SD_GEMM_PATH_BLAS; p < SD_GEMM_PATH_COUNT; p++)
      if (!strcmp(env, g_names[p]) && sd_gemm_path_available((sd_gemm_path)p))
        return (sd_gemm_path)p;
  static const sd_gemm_path order[] = {SD_GEMM_PATH_AVX512, SD_GEMM_PATH_AVX2,
                                       SD_GEMM_PATH_NEON};
  for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
    if (sd_gemm_path_available(order[i])) return order[i];
  /* No vector kernel of ours: the BLAS is tuned for this CPU, the C kernel
   * is not. */
  return SD_GEMM_PATH_BLAS;
}

int sd_gemm_path_set(sd_gemm_path p) {
  if (p == SD_GEMM_PATH_AUTO) p = best_path();
  if (!sd_gemm_path_available(p)) return SD_ERR_UNSUPPORTED;
  __atomic_store_n(&g_path, (int)p, __ATOMIC_RELEASE);
  return SD_OK;
}

sd_gemm_path sd_gemm_path_get(void) {
  int p = __atomic_load_n(&g_path, __ATOMIC_ACQUIRE);
  if (!p) {
    p = (int)best_path();
    __atomic_store_n(&g_path, p, __ATOMIC_RELEASE);
  }
  return (sd_gemm_path)p;
}

/* ---- per-thread packing buffers ----
 *
 * Each thread that multiplies keeps one packing buffer of the largest
 * kernel's bound (about 1.3 MB) for its lifetime, freed when the thread
 * exits: a product is called hundreds of times per step, and a fresh
 * allocation per call would fault its pages in every time. Like OpenBLAS's
 * own buffers before it, this is outside the tracked allocator (a bounded,
 * per-thread constant). If it cannot be allocated, products run on stack
 * panels with the same results. */

static pthread_once_t g_key_once = PTHREAD_ONCE_INIT;
static pthread_key_t g_key;
static int g_key_ok;
static _Thread_local float *tl_buf;

static void make_key(void) { g_key_ok = pthread_key_create(&g_key, free) == 0; }

static int64_t bound_floats(void) {
  const sd_gemm_kernel_desc *all[] = {&sd_gemm_desc_c,
#if SD_GEMM_HAVE_X86
                                      &sd_gemm_desc_avx2, &sd_gemm_desc_avx512,
#endif
#if SD_GEMM_HAVE_NEON
                                      &sd_gemm_desc_neon,
#endif
  };
  int64_t m = 0;
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
    int64_t f = SD_GEMM_KC * (all[i]->mc + all[i]->nc);
    if (f > m) m = f;
  }
  return m;
}

static float *thread_buffer(void) {
  if (tl_buf) return tl_buf;
  pthread_once(&g_key_once, make_key);
  void *p = NULL;
  if (!g_key_ok || posix_memalign(&p, 64, (size_t)bound_floats() * sizeof(float)) != 0)
    return NULL;
  if (pthread_setspecific(g_key, p) != 0) {
    free(p);
    return NULL;
  }
  tl_buf = p;
  return tl_buf;
}

void sd_sgemm(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha,
              const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
              int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  sd_gemm_path p = sd_gemm_path_get();
  const sd_gemm_kernel_desc *d = desc_of(p);
  if (!d) {
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans,
                transB ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K, alpha, A, (int)lda, B,
                (int)ldb, beta, C, (int)ldc);
    return;
  }
  sd_gemm_f32_run(d, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
                  thread_buffer());
}
