/* Kernel benchmark: measures this machine's cblas_sgemm ceiling, then each
 * kernel at SD-1.5-like shapes, as GFLOP/s (compute kernels, with their
 * share of that ceiling) or GB/s (memory-bound kernels).
 *
 * usage: bench_kernels [--threads N] [--json FILE] [--quick] [--only WORD]
 *                      [--cpu-time]
 * (--cpu-time times with the process CPU clock instead of the wall clock:
 * with --threads 1 this gives stable numbers on a loaded machine.)
 * (--only runs the sections whose name contains WORD: sgemm, conv, linear,
 * attention, memory; the sgemm ceiling is always measured).
 * On CPUs with AVX512_BF16 the fast mode (sd_set_precision(SD_PREC_BF16)) is
 * measured too: the VDPBF16PS register peak (independent accumulators, no
 * memory traffic), the bf16 ceiling (sd_gemm on 2048^3 in that mode,
 * threaded as every product is) and a bf16 row after each convolution and
 * linear row, with its share of the bf16 ceiling and its speed-up over the
 * fp32 row above it.
 * Default 2 threads, the thread count of the reference timings. */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/alloc.h"
#include "base/cpu.h"
#include "tensor/convert.h"
#include "tensor/ops.h"
#include "tensor/blas_setup.h"

typedef struct bench_row {
  char name[64];
  double seconds;
  double gflops; /* 0 for memory-bound kernels */
  double gbytes; /* bytes moved / 1e9 per call, for GB/s */
  int bf16;      /* fast mode: compared with the bf16 ceiling */
  int vs;        /* index of the fp32 row it speeds up, or -1 */
} bench_row;

static clockid_t g_clock = CLOCK_MONOTONIC;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(g_clock, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static float *rnd(int64_t n, float scale) {
  float *p = sd_alloc((size_t)n * 4);
  if (!p) {
    fprintf(stderr, "out of memory\n");
    exit(1);
  }
  uint32_t s = 12345;
  for (int64_t i = 0; i < n; i++) {
    s = s * 1664525u + 1013904223u;
    p[i] = ((float)(s >> 8) / 16777216.0f - 0.5f) * scale;
  }
  return p;
}

static sd_tensor *weight(sd_dtype dt, int ndim, const int64_t *shape) {
  sd_tensor *t = sd_tensor_new_dtype(dt, ndim, shape);
  int64_t n = sd_tensor_numel(t);
  float *v = rnd(n, 0.1f);
  for (int64_t i = 0; i < n; i++) {
    if (dt == SD_F32) ((float *)t->data)[i] = v[i];
    else if (dt == SD_F16) ((uint16_t *)t->data)[i] = sd_f32_to_f16(v[i]);
    else ((uint16_t *)t->data)[i] = sd_f32_to_bf16(v[i]);
  }
  sd_free(v);
  return t;
}

typedef void (*bench_fn)(void *ctx);

/* Best time of `reps` runs after one warm-up. */
static double time_best(bench_fn fn, void *ctx, int reps) {
  fn(ctx);
  double best = 1e30;
  for (int r = 0; r < reps; r++) {
    double t0 = now_s();
    fn(ctx);
    double t = now_s() - t0;
    if (t < best) best = t;
  }
  return best;
}

typedef struct gemm_ctx { int64_t n; float *a, *b, *c; } gemm_ctx;
static void run_cblas(void *p) {
  gemm_ctx *g = p;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)g->n, (int)g->n,
              (int)g->n, 1.0f, g->a, (int)g->n, g->b, (int)g->n, 0.0f, g->c,
              (int)g->n);
}
static void run_gemm(void *p) {
  gemm_ctx *g = p;
  sd_gemm(0, 0, g->n, g->n, g->n, 1.0f, g->a, g->n, g->b, g->n, 0.0f, g->c, g->n);
}

typedef struct conv_ctx {
  float *x, *y;
  int N, C, H, W, stride, pad;
  sd_tensor *w, *b;
} conv_ctx;
static void run_conv(void *p) {
  conv_ctx *c = p;
  sd_conv2d(c->y, c->x, c->N, c->C, c->H, c->W, c->w, c->b, c->stride, c->pad);
}

typedef struct linear_ctx { float *x, *y; int64_t M, K; sd_tensor *w, *b; } linear_ctx;
static void run_linear(void *p) {
  linear_ctx *l = p;
  sd_linear(l->y, l->x, l->M, l->K, l->w, l->b);
}

typedef struct attn_ctx { float *q, *k, *v, *o; sd_attn_args a; } attn_ctx;
static void run_attn(void *p) {
  attn_ctx *c = p;
  sd_attention(c->o, c->q, c->k, c->v, &c->a);
}

typedef struct norm_ctx { float *x, *y; int C; int64_t HW, rows, dim; sd_tensor *g, *b; } norm_ctx;
static void run_group_norm(void *p) {
  norm_ctx *n = p;
  sd_group_norm(n->y, n->x, 1, n->C, n->HW, 32, n->g, n->b, 1e-5f);
}
static void run_layer_norm(void *p) {
  norm_ctx *n = p;
  sd_layer_norm(n->y, n->x, n->rows, n->dim, n->g, n->b, 1e-5f);
}

typedef struct act_ctx { float *x; int64_t n; } act_ctx;
static void run_gelu(void *p) { act_ctx *a = p; sd_gelu(a->x, a->n); }
static void run_silu(void *p) { act_ctx *a = p; sd_silu(a->x, a->n); }

typedef struct cvt_ctx { float *dst; uint16_t *src; int64_t n; } cvt_ctx;
static void run_f16(void *p) {
  cvt_ctx *c = p;
  sd_convert_f16_to_f32(c->dst, c->src, c->n);
}

static const char *g_only;
static int want(const char *section) {
  return !g_only || strstr(section, g_only) != NULL;
}

static bench_row g_rows[64];
static int g_nrows;

static int add_row(const char *name, double s, double flops, double bytes) {
  if (g_nrows == (int)(sizeof g_rows / sizeof g_rows[0])) return g_nrows - 1;
  bench_row *r = &g_rows[g_nrows++];
  snprintf(r->name, sizeof r->name, "%s", name);
  r->seconds = s;
  r->gflops = flops > 0 ? flops / s * 1e-9 : 0;
  r->gbytes = bytes / 1e9;
  r->bf16 = 0;
  r->vs = -1;
  return g_nrows - 1;
}

static int g_bf16; /* the fast mode is available on this CPU */

/* Times fn again in the fast mode and adds that row, compared with the fp32
 * row `fp32_row` (nothing without AVX512_BF16). */
static void add_bf16_row(int fp32_row, bench_fn fn, void *ctx, int reps,
                         double flops) {
  if (!g_bf16) return;
  sd_set_precision(SD_PREC_BF16);
  double t = time_best(fn, ctx, reps);
  sd_set_precision(SD_PREC_FP32);
  char name[64];
  snprintf(name, sizeof name, "%.58s bf16", g_rows[fp32_row].name);
  int i = add_row(name, t, flops, 0);
  g_rows[i].bf16 = 1;
  g_rows[i].vs = fp32_row;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* VDPBF16PS throughput of one thread: 24 independent accumulators (more than
 * latency times issue width), operands in registers; 64 FLOP each. */
__attribute__((target("avx512f,avx512bf16"))) static double dpbf16_peak_1(void) {
  __m512 acc[24];
#pragma GCC unroll 24
  for (int i = 0; i < 24; i++) acc[i] = _mm512_set1_ps((float)i); /* distinct: no CSE */
  __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80), b = a;
  const long iters = 2000000;
  /* Each thread times itself: the process CPU clock would count both. */
  clockid_t clock = g_clock == CLOCK_MONOTONIC ? g_clock : CLOCK_THREAD_CPUTIME_ID;
  struct timespec ts0, ts1;
  clock_gettime(clock, &ts0);
  for (long it = 0; it < iters; it++) {
#pragma GCC unroll 24
    for (int i = 0; i < 24; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
    __asm__ volatile("" : "+v"(a)); /* no folding across iterations */
  }
  clock_gettime(clock, &ts1);
  double t = (ts1.tv_sec - ts0.tv_sec) + (ts1.tv_nsec - ts0.tv_nsec) * 1e-9;
  __m512 s = acc[0];
  for (int i = 1; i < 24; i++) s = _mm512_add_ps(s, acc[i]);
  volatile float sink = _mm512_reduce_add_ps(s);
  (void)sink;
  return 64.0 * 24 * iters / t * 1e-9;
}

/* Register peak of `threads` threads (best of 3), on the bench's clock: the
 * sum of the threads' rates with the wall clock; with the process CPU clock,
 * which counts every thread's time, GFLOP/s are per busy core, so the mean. */
static double dpbf16_peak(int threads) {
  double best = 0;
  for (int r = 0; r < 3; r++) {
    double total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    total += dpbf16_peak_1();
    if (total > best) best = total;
  }
  return g_clock == CLOCK_MONOTONIC ? best : best / threads;
}
#else
static double dpbf16_peak(int threads) { return 0; }
#endif

int main(int argc, char **argv) {
  sd_blas_select_kernels(argv);
  int threads = 2, quick = 0;
  const char *json = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
    else if (!strcmp(argv[i], "--quick")) quick = 1;
    else if (!strcmp(argv[i], "--cpu-time")) g_clock = CLOCK_PROCESS_CPUTIME_ID;
    else if (!strcmp(argv[i], "--only") && i + 1 < argc) g_only = argv[++i];
    else {
      fprintf(stderr, "usage: %s [--threads N] [--json FILE] [--quick]\n", argv[0]);
      return 2;
    }
  }
  sd_set_threads(threads);
  int reps = quick ? 1 : 3;
  g_bf16 = sd_precision_supported(SD_PREC_BF16);

  /* Ceiling: cblas_sgemm with BLAS's own threads (then set back to one,
   * as the kernels run it) at large square sizes; sd_gemm for comparison. */
  double ceiling = 0;
  const int64_t sizes[] = {1024, 2048};
  for (int s = 0; s < (quick || g_only ? 1 : 2); s++) {
    gemm_ctx g = {sizes[s], rnd(sizes[s] * sizes[s], 1), rnd(sizes[s] * sizes[s], 1),
                  rnd(sizes[s] * sizes[s], 1)};
    double f = 2.0 * g.n * g.n * g.n;
    char name[64];
    openblas_set_num_threads(threads);
    double t = time_best(run_cblas, &g, reps);
    sd_set_threads(threads);
    snprintf(name, sizeof name, "cblas_sgemm %lld^3", (long long)g.n);
    add_row(name, t, f, 0);
    if (f / t * 1e-9 > ceiling) ceiling = f / t * 1e-9;
    t = time_best(run_gemm, &g, reps);
    snprintf(name, sizeof name, "sd_gemm %lld^3", (long long)g.n);
    add_row(name, t, f, 0);
    sd_free(g.a), sd_free(g.b), sd_free(g.c);
  }

  /* bf16 ceiling: the fast mode's sd_gemm on a big square product (row
   * blocks over the OpenMP threads, each running the bf16 kernel), and the
   * VDPBF16PS register peak of the same threads. */
  double bf16_ceiling = 0, bf16_peak = 0;
  if (g_bf16) {
    bf16_peak = dpbf16_peak(threads);
    gemm_ctx g = {2048, rnd(2048 * 2048, 1), rnd(2048 * 2048, 1),
                  rnd(2048 * 2048, 1)};
    double f = 2.0 * g.n * g.n * g.n;
    sd_set_precision(SD_PREC_BF16);
    double t = time_best(run_gemm, &g, reps);
    sd_set_precision(SD_PREC_FP32);
    g_rows[add_row("sd_gemm 2048^3 bf16", t, f, 0)].bf16 = 1;
    bf16_ceiling = f / t * 1e-9;
    sd_free(g.a), sd_free(g.b), sd_free(g.c);
  }

  /* Convolutions at the UNet's first level (64x64 latent, 320 channels). */
  for (int k = 0; k < 2 && want("conv"); k++) {
    for (int d = 0; d < 2; d++) {
      sd_dtype dt = d ? SD_F16 : SD_F32;
      int ks = k ? 1 : 3;
      conv_ctx c = {rnd(320 * 64 * 64, 1), rnd(320 * 64 * 64, 1), 1, 320, 64, 64, 1,
                    ks / 2, weight(dt, 4, (int64_t[]){320, 320, ks, ks}),
                    weight(dt, 1, (int64_t[]){320})};
      double t = time_best(run_conv, &c, reps);
      char name[64];
      snprintf(name, sizeof name, "conv%dx%d 320->320 64x64 %s", ks, ks,
               sd_dtype_name(dt));
      double flops = 2.0 * 320 * 4096 * 320 * ks * ks;
      add_bf16_row(add_row(name, t, flops, 0), run_conv, &c, reps, flops);
      sd_free(c.x), sd_free(c.y);
      sd_tensor_free(c.w), sd_tensor_free(c.b);
    }
  }

  /* Linear 4096 tokens x 320 -> 1280 (the feed-forward projection). */
  for (int d = 0; d < 2 && want("linear"); d++) {
    sd_dtype dt = d ? SD_F16 : SD_F32;
    linear_ctx l = {rnd(4096 * 320, 1), rnd(4096 * 1280, 1), 4096, 320,
                    weight(dt, 2, (int64_t[]){1280, 320}),
                    weight(dt, 1, (int64_t[]){1280})};
    double t = time_best(run_linear, &l, reps);
    char name[64];
    snprintf(name, sizeof name, "linear 4096x320->1280 %s", sd_dtype_name(dt));
    double flops = 2.0 * 4096 * 320 * 1280;
    add_bf16_row(add_row(name, t, flops, 0), run_linear, &l, reps, flops);
    sd_free(l.x), sd_free(l.y);
    sd_tensor_free(l.w), sd_tensor_free(l.b);
  }

  /* Self-attention at 64x64: 4096 tokens, 8 heads of 40. */
  if (want("attention")) {
    int L = quick ? 1024 : 4096;
    attn_ctx c = {rnd((int64_t)L * 320, 1), rnd((int64_t)L * 320, 1),
                  rnd((int64_t)L * 320, 1), rnd((int64_t)L * 320, 1), {0}};
    c.a.B = 1, c.a.Lq = L, c.a.Lk = L, c.a.heads = 8, c.a.head_dim = 40;
    c.a.q_stride = c.a.kv_stride = 320;
    c.a.scale = 0.158113883f;
    double t = time_best(run_attn, &c, quick ? 1 : 2);
    char name[64];
    snprintf(name, sizeof name, "attention %dx%d 8x40", L, L);
    add_row(name, t, 4.0 * L * L * 320, 0);
    sd_free(c.q), sd_free(c.k), sd_free(c.v), sd_free(c.o);
  }

  /* Memory-bound kernels: reported as GB/s. */
  if (want("memory")) {
    norm_ctx n = {rnd(320 * 4096, 1), rnd(320 * 4096, 1), 320, 4096, 4096, 320,
                  weight(SD_F16, 1, (int64_t[]){320}), weight(SD_F16, 1, (int64_t[]){320})};
    add_row("group_norm 320x64x64", time_best(run_group_norm, &n, reps * 3), 0,
            3.0 * 320 * 4096 * 4);
    add_row("layer_norm 4096x320", time_best(run_layer_norm, &n, reps * 3), 0,
            3.0 * 320 * 4096 * 4);
    act_ctx a = {n.x, 320 * 4096};
    add_row("gelu 1.3M", time_best(run_gelu, &a, reps * 3), 0, 2.0 * a.n * 4);
    add_row("silu 1.3M", time_best(run_silu, &a, reps * 3), 0, 2.0 * a.n * 4);
    sd_free(n.x), sd_free(n.y);
    sd_tensor_free(n.g), sd_tensor_free(n.b);
  }
  if (want("memory")) {
    cvt_ctx c = {sd_alloc((size_t)4 << 22), sd_alloc((size_t)2 << 22), 1 << 22};
    for (int64_t i = 0; i < c.n; i++) c.src[i] = (uint16_t)(i * 7919);
    add_row("f16->f32 4M", time_best(run_f16, &c, reps * 3), 0, 6.0 * c.n);
    sd_free(c.dst), sd_free(c.src);
  }

  printf("threads %d, %s time, sgemm ceiling %.1f GFLOP/s\n", threads,
         g_clock == CLOCK_MONOTONIC ? "wall" : "CPU", ceiling);
  if (g_bf16)
    printf("bf16 ceiling %.1f GFLOP/s = %.0f%% of the VDPBF16PS register peak "
           "%.1f (bf16 rows: %%ceil of the bf16 ceiling)\n",
           bf16_ceiling, 100.0 * bf16_ceiling / bf16_peak, bf16_peak);
  else
    printf("no AVX512_BF16 on this CPU: fast mode not measured\n");
  printf("%-40s %10s %10s %8s %8s %8s\n", "kernel", "ms", "GFLOP/s", "%ceil",
         "x fp32", "GB/s");
  for (int i = 0; i < g_nrows; i++) {
    bench_row *r = &g_rows[i];
    double ceil_r = r->bf16 ? bf16_ceiling : ceiling;
    char speedup[16] = "";
    if (r->vs >= 0)
      snprintf(speedup, sizeof speedup, "%.2fx",
               g_rows[r->vs].seconds / r->seconds);
    if (r->gflops > 0)
      printf("%-40s %10.2f %10.1f %7.0f%% %8s %8s\n", r->name,
             r->seconds * 1e3, r->gflops, 100.0 * r->gflops / ceil_r, speedup,
             "");
    else
      printf("%-40s %10.2f %10s %8s %8s %8.1f\n", r->name, r->seconds * 1e3,
             "", "", "", r->gbytes / r->seconds);
  }
  if (json) {
    FILE *f = fopen(json, "w");
    if (!f) {
      fprintf(stderr, "cannot write %s\n", json);
      return 1;
    }
    fprintf(f, "{\n  \"threads\": %d,\n  \"clock\": \"%s\",\n"
               "  \"sgemm_ceiling_gflops\": %.3f,\n"
               "  \"bf16_ceiling_gflops\": %.3f,\n"
               "  \"dpbf16_peak_gflops\": %.3f,\n  \"kernels\": [\n",
            threads, g_clock == CLOCK_MONOTONIC ? "wall" : "cpu", ceiling,
            bf16_ceiling, bf16_peak);
    for (int i = 0; i < g_nrows; i++) {
      bench_row *r = &g_rows[i];
      double ceil_r = r->bf16 ? bf16_ceiling : ceiling;
      fprintf(f, "    {\"name\": \"%s\", \"ms\": %.4f", r->name, r->seconds * 1e3);
      if (r->gflops > 0)
        fprintf(f, ", \"precision\": \"%s\", \"gflops\": %.3f, "
                   "\"fraction_of_ceiling\": %.4f",
                r->bf16 ? "bf16" : "fp32", r->gflops, r->gflops / ceil_r);
      else
        fprintf(f, ", \"gbytes_per_s\": %.3f", r->gbytes / r->seconds);
      if (r->vs >= 0)
        fprintf(f, ", \"speedup_vs_fp32\": %.3f",
                g_rows[r->vs].seconds / r->seconds);
      fprintf(f, "}%s\n", i + 1 < g_nrows ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    fclose(f);
  }
  return 0;
}
