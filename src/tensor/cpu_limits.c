/* The hardware-limit probe (see cpu_limits.h).
 *
 * Every loop keeps ACC independent accumulators (more than FMA latency x
 * FMA ports on any current core) and nothing but the measured instruction in
 * its body, so it runs at the core's issue limit for that instruction. The
 * accumulators are folded into a volatile sink at the end, so the loop
 * cannot be removed. Functions with AVX-512/AVX2 code carry their target
 * attribute and run only where sd_cpu() says the CPU has the instructions. */
#include "tensor/cpu_limits.h"

#include <omp.h>
#include <string.h>
#include <time.h>

#include "base/alloc.h"
#include "base/cpu.h"
#include "base/status.h"
#include "tensor/ops_internal.h"

#define ACC 16
#define ACC256 12 /* 16 ymm registers: 12 accumulators + 2 operands */

static volatile float g_sink_f;
static volatile int g_sink_i;

typedef double (*probe_fn)(int64_t iters); /* returns FLOPs done */

/* Portable: the compiler vectorizes it for the baseline (SSE2, NEON). */
static double loop_fp32_base(int64_t n) {
  float acc[64];
  for (int j = 0; j < 64; j++) acc[j] = 1e-3f * (float)j;
  const float a = 0.999999f, b = 1e-7f;
  for (int64_t i = 0; i < n; i++) {
#pragma omp simd
    for (int j = 0; j < 64; j++) acc[j] = acc[j] * a + b;
  }
  float s = 0;
  for (int j = 0; j < 64; j++) s += acc[j];
  g_sink_f = s;
  return 2.0 * 64 * (double)n;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define T512 __attribute__((target("avx512f")))
#define T256 __attribute__((target("avx2,fma")))

T512 static double loop_fp32_avx512(int64_t n) {
  __m512 acc[ACC];
  for (int j = 0; j < ACC; j++) acc[j] = _mm512_set1_ps(1e-3f * (float)j);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int64_t i = 0; i < n; i++) {
#pragma GCC unroll 16
    for (int j = 0; j < ACC; j++) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
  }
  for (int j = 1; j < ACC; j++) acc[0] = _mm512_add_ps(acc[0], acc[j]);
  g_sink_f = _mm512_reduce_add_ps(acc[0]);
  return 2.0 * 16 * ACC * (double)n;
}

T256 static double loop_fp32_avx2(int64_t n) {
  __m256 acc[ACC256];
  for (int j = 0; j < ACC256; j++) acc[j] = _mm256_set1_ps(1e-3f * (float)j);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t i = 0; i < n; i++) {
#pragma GCC unroll 12
    for (int j = 0; j < ACC256; j++) acc[j] = _mm256_fmadd_ps(acc[j], a, b);
  }
  for (int j = 1; j < ACC256; j++) acc[0] = _mm256_add_ps(acc[0], acc[j]);
  float t[8];
  _mm256_storeu_ps(t, acc[0]);
  g_sink_f = t[0] + t[7];
  return 2.0 * 8 * ACC256 * (double)n;
}

__attribute__((target("avx512f,avx512bf16"))) static double loop_bf16_avx512(int64_t n) {
  __m512 acc[ACC];
  for (int j = 0; j < ACC; j++) acc[j] = _mm512_set1_ps(1e-3f * (float)j);
  const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(2e-3f));
  const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-4f), _mm512_set1_ps(3e-4f));
  for (int64_t i = 0; i < n; i++) {
#pragma GCC unroll 16
    for (int j = 0; j < ACC; j++) acc[j] = _mm512_dpbf16_ps(acc[j], a, b);
  }
  for (int j = 1; j < ACC; j++) acc[0] = _mm512_add_ps(acc[0], acc[j]);
  g_sink_f = _mm512_reduce_add_ps(acc[0]);
  return 2.0 * 32 * ACC * (double)n; /* 16 lanes x 2 pairs */
}

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define HAVE_FP16_PROBE 1
__attribute__((target("avx512f,avx512fp16"))) static double loop_fp16_avx512(int64_t n) {
  __m512h acc[ACC];
  for (int j = 0; j < ACC; j++) acc[j] = _mm512_set1_ph((_Float16)(1e-3f * (float)j));
  const __m512h a = _mm512_set1_ph((_Float16)0.999f), b = _mm512_set1_ph((_Float16)1e-4f);
  for (int64_t i = 0; i < n; i++) {
#pragma GCC unroll 16
    for (int j = 0; j < ACC; j++) acc[j] = _mm512_fmadd_ph(acc[j], a, b);
  }
  for (int j = 1; j < ACC; j++) acc[0] = _mm512_add_ph(acc[0], acc[j]);
  g_sink_f = (float)_mm512_reduce_add_ph(acc[0]);
  return 2.0 * 32 * ACC * (double)n;
}
#endif

__attribute__((target("avx512f,avx512vnni"))) static double loop_int8_avx512(int64_t n) {
  __m512i acc[ACC];
  for (int j = 0; j < ACC; j++) acc[j] = _mm512_set1_epi32(j);
  const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
  for (int64_t i = 0; i < n; i++) {
#pragma GCC unroll 16
    for (int j = 0; j < ACC; j++) acc[j] = _mm512_dpbusd_epi32(acc[j], a, b);
  }
  for (int j = 1; j < ACC; j++) acc[0] = _mm512_add_epi32(acc[0], acc[j]);
  g_sink_i = _mm512_reduce_add_epi32(acc[0]);
  return 2.0 * 64 * ACC * (double)n; /* 16 lanes x 4 products */
}

__attribute__((target("avx2,avxvnni"))) static double loop_int8_avxvnni(int64_t n) {
  __m256i acc[ACC256];
  for (int j = 0; j < ACC256; j++) acc[j] = _mm256_set1_epi32(j);
  const __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(-2);
  for (int64_t i = 0; i < n; i++) {
#pragma GCC unroll 12
    for (int j = 0; j < ACC256; j++) acc[j] = _mm256_dpbusd_avx_epi32(acc[j], a, b);
  }
  for (int j = 1; j < ACC256; j++) acc[0] = _mm256_add_epi32(acc[0], acc[j]);
  int t[8];
  _mm256_storeu_si256((__m256i *)t, acc[0]);
  g_sink_i = t[0] + t[7];
  return 2.0 * 32 * ACC256 * (double)n;
}
#endif

/* CPU time of the calling thread: on a shared machine a preempted thread's
 * wait is not counted, so the figure stays the hardware's, not the load's
 * (threads that share one core through SMT still slow each other down). */
static double thread_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* GFLOP/s of `fn` on nt threads at once (the sum of each thread's rate over
 * its own CPU time): best of 3 runs of ~30 ms. */
static double run_probe(probe_fn fn, int nt) {
  int64_t iters = 1 << 12;
  double best = 0;
  for (int tries = 0, runs = 0; runs < 3 && tries < 20; tries++) {
    double gflops = 0, tmin = 1e30;
#pragma omp parallel num_threads(nt) reduction(+ : gflops) reduction(min : tmin)
    {
      double t0 = thread_s();
      double f = fn(iters);
      double t = thread_s() - t0;
      gflops += t > 0 ? f / t * 1e-9 : 0;
      tmin = t;
    }
    if (tmin < 0.01) { /* calibrating: aim at ~30 ms per run */
      iters *= tmin > 1e-4 ? (int64_t)(0.03 / tmin) + 1 : 64;
      continue;
    }
    runs++;
    if (gflops > best) best = gflops;
  }
  return best;
}

/* ---- bandwidth ---- */

/* Sum of n floats (n a multiple of 64) with 64 independent lanes. */
SD_VEC_CLONES static float read_sum(const float *x, int64_t n) {
  float s[64] = {0};
  for (int64_t i = 0; i < n; i += 64) {
#pragma omp simd
    for (int j = 0; j < 64; j++) s[j] += x[i + j];
  }
  float t = 0;
  for (int j = 0; j < 64; j++) t += s[j];
  return t;
}

/* Best of 5: GB/s of reading all of x (op 0) or copying its first half to
 * its second (op 1, read + written bytes counted), split over nt threads. */
static double run_bw(float *x, int64_t floats, int nt, int op) {
  double best = 0;
  int64_t half = floats / 2, per = (op ? half : floats) / nt / 64 * 64;
  double bytes = (double)per * sizeof(float) * (op ? 2 : 1); /* per thread */
  for (int r = 0; r < 5; r++) {
    float s = 0;
    double gbs = 0;
#pragma omp parallel num_threads(nt) reduction(+ : s, gbs)
    {
      int64_t o = per * omp_get_thread_num();
      double t0 = thread_s();
      if (op)
        memcpy(x + half + o, x + o, (size_t)per * sizeof(float));
      else
        s += read_sum(x + o, per);
      double t = thread_s() - t0;
      gbs += t > 0 ? bytes / t * 1e-9 : 0;
    }
    g_sink_f = s;
    if (gbs > best) best = gbs;
  }
  return best;
}

static void add_probe(sd_cpu_limits *l, const char *name, sd_limit_kind k, probe_fn fn) {
  if (l->nprobes >= SD_LIMIT_MAX_PROBES) return;
  sd_limit_probe *p = &l->probe[l->nprobes];
  p->name = name;
  p->kind = k;
  p->gflops[0] = run_probe(fn, 1);
  p->gflops[1] = l->threads > 1 ? run_probe(fn, l->threads) : p->gflops[0];
  if (l->best[k] < 0 || p->gflops[1] > l->probe[l->best[k]].gflops[1]) l->best[k] = l->nprobes;
  l->nprobes++;
}

int sd_cpu_limits_measure(sd_cpu_limits *l, int threads, int64_t bw_bytes) {
  memset(l, 0, sizeof *l);
  l->threads = threads > 0 ? threads : 1;
  for (int k = 0; k < SD_LIMIT_COUNT; k++) l->best[k] = -1;
  const sd_cpu_features *cpu = sd_cpu();
  (void)cpu;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (cpu->avx512) add_probe(l, "fp32 avx512 fma", SD_LIMIT_FP32, loop_fp32_avx512);
  if (cpu->avx2_fma) add_probe(l, "fp32 avx2 fma", SD_LIMIT_FP32, loop_fp32_avx2);
  if (cpu->avx512_bf16) add_probe(l, "bf16 avx512 vdpbf16ps", SD_LIMIT_BF16, loop_bf16_avx512);
#ifdef HAVE_FP16_PROBE
  if (cpu->avx512_fp16) add_probe(l, "fp16 avx512 vfmaddph", SD_LIMIT_FP16, loop_fp16_avx512);
#endif
  if (cpu->avx512_vnni) add_probe(l, "int8 avx512 vpdpbusd", SD_LIMIT_INT8, loop_int8_avx512);
  if (cpu->avx_vnni) add_probe(l, "int8 avx-vnni vpdpbusd", SD_LIMIT_INT8, loop_int8_avxvnni);
#endif
  if (l->best[SD_LIMIT_FP32] < 0)
    add_probe(l, cpu->neon ? "fp32 neon fma" : "fp32 baseline", SD_LIMIT_FP32, loop_fp32_base);
  if (bw_bytes <= 0) return SD_OK;
  int64_t floats = bw_bytes / sizeof(float) / 128 * 128;
  float *x = sd_alloc((size_t)floats * sizeof(float));
  if (!x) return SD_ERR_OOM;
  /* First touch, spread like the reads (pages land near their readers). */
#pragma omp parallel for num_threads(l->threads) schedule(static)
  for (int64_t i = 0; i < floats; i++) x[i] = 1e-3f;
  l->bw_bytes = floats * (int64_t)sizeof(float);
  l->read_gbs[0] = run_bw(x, floats, 1, 0);
  l->copy_gbs[0] = run_bw(x, floats, 1, 1);
  l->read_gbs[1] = l->threads > 1 ? run_bw(x, floats, l->threads, 0) : l->read_gbs[0];
  l->copy_gbs[1] = l->threads > 1 ? run_bw(x, floats, l->threads, 1) : l->copy_gbs[0];
  sd_free(x);
  return SD_OK;
}

double sd_cpu_limit(const sd_cpu_limits *l, sd_limit_kind k, int nt_index) {
  if (k < 0 || k >= SD_LIMIT_COUNT || l->best[k] < 0) return 0;
  return l->probe[l->best[k]].gflops[nt_index ? 1 : 0];
}

const char *sd_cpu_limit_name(const sd_cpu_limits *l, sd_limit_kind k) {
  if (k < 0 || k >= SD_LIMIT_COUNT || l->best[k] < 0) return "none";
  return l->probe[l->best[k]].name;
}
