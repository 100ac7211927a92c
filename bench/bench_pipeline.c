/* Pipeline benchmark on a full-size model (random weights from
 * tools/make_random_model, or a real checkpoint).
 *
 * usage: bench_pipeline --model PATH [--arch sd15|sdxl] [--tokenizers DIR]
 *                       [--steps N] [--size PX] [--threads N] [--json FILE]
 *
 * Measures, in one run on one machine:
 *  - the cblas_sgemm ceiling (2048^3, best of 3, BLAS on --threads threads);
 *  - model load, prompt encoding (with CFG: negative + positive);
 *  - the UNet step with CFG: one sd_unet_forward on batch 2 at --size
 *    (default 512, SDXL 1024), run --steps times (default 2; SDXL 1), the
 *    last one reported, so page faults of the first touch of the mapped
 *    weights are not counted;
 *  - the VAE decode of one image;
 * each with its peak RSS (VmHWM, reset before the stage where the kernel
 * allows it). FLOPs are counted analytically from the weight shapes and
 * the latent size: convolutions 2*Cout*Cin*k*k*Hout*Wout, linears 2*out*in
 * per token, attention 4*Lq*Lk*C (QK^T and PV over all heads). Norms,
 * activations and element-wise work are not counted, so the achieved
 * GFLOP/s is a slight underestimate of the work done. */
#include <cblas.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/alloc.h"
#include "base/memprobe.h"
#include "base/status.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "pipeline/unet_pipeline.h"
#include "tensor/ops.h"
#include "tensor/blas_setup.h"

typedef struct stage {
  const char *name;
  double seconds;
  double cpu_seconds; /* process CPU time (all threads) */
  double gflop;      /* 0 when not counted */
  int64_t rss_after; /* bytes */
  int64_t peak_rss;
} stage;

#define MAX_STAGES 16
static stage g_stages[MAX_STAGES];
static int g_nstages;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double g_cpu0; /* CPU clock at the start of the current stage */

static void stage_begin(double *t0) {
  sd_mem_reset_peak();
  g_cpu0 = cpu_s();
  *t0 = now_s();
}

static stage *stage_end(const char *name, double t0, double gflop) {
  double t = now_s() - t0;
  sd_mem_sample s;
  sd_mem_probe(&s);
  stage *st = &g_stages[g_nstages < MAX_STAGES ? g_nstages++ : MAX_STAGES - 1];
  st->name = name;
  st->seconds = t;
  st->cpu_seconds = cpu_s() - g_cpu0;
  st->gflop = gflop;
  st->rss_after = s.rss;
  st->peak_rss = s.peak_rss;
  return st;
}

static float *filled(int64_t n, uint32_t seed, float scale) {
  float *p = sd_alloc(sizeof(float) * n);
  if (!p) return NULL;
  uint32_t s = seed;
  for (int64_t i = 0; i < n; i++) { /* uniform with unit variance, times scale */
    s = s * 1664525u + 1013904223u;
    p[i] = ((float)(s >> 8) / 16777216.0f - 0.5f) * 3.4641f * scale;
  }
  return p;
}

/* ---- the sgemm ceiling ---- */

static double g_sgemm_per_cpu; /* best GFLOP per CPU-second of the ceiling runs */

static double sgemm_ceiling(int threads, int n) {
  float *a = filled((int64_t)n * n, 1, 1), *b = filled((int64_t)n * n, 2, 1);
  float *c = filled((int64_t)n * n, 3, 1);
  double best = 0;
  if (a && b && c) {
    openblas_set_num_threads(threads);
    for (int r = 0; r < 3; r++) {
      double t0 = now_s(), c0 = cpu_s();
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f,
                  c, n);
      double g = 2.0 * n * n * n / (now_s() - t0) * 1e-9;
      double gc = 2.0 * n * n * n / (cpu_s() - c0) * 1e-9;
      if (g > best) best = g;
      if (gc > g_sgemm_per_cpu) g_sgemm_per_cpu = gc;
    }
    sd_set_threads(threads); /* back to the project's setting (BLAS pinned to 1) */
    /* The same product with one BLAS thread per OpenMP worker (how the
     * kernels call it): on some machines this beats BLAS's own threads, and
     * the ceiling is the better of the two. */
    for (int r = 0; r < 3; r++) {
      double t0 = now_s(), c0 = cpu_s();
      sd_gemm(0, 0, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
      double g = 2.0 * n * n * n / (now_s() - t0) * 1e-9;
      double gc = 2.0 * n * n * n / (cpu_s() - c0) * 1e-9;
      if (g > best) best = g;
      if (gc > g_sgemm_per_cpu) g_sgemm_per_cpu = gc;
    }
  }
  sd_free(a);
  sd_free(b);
  sd_free(c);
  return best;
}

/* ---- analytic FLOP counts ---- */

static int count_levels(const sd_weights *w, const char *fmt) {
  int n = 0;
  char p[96];
  for (;;) {
    snprintf(p, sizeof p, fmt, n);
    if (!sd_weights_has_prefix(w, p)) return n;
    n++;
  }
}

static int level_of(const char *name, const char *prefix) {
  const char *s = strstr(name, prefix);
  return s ? atoi(s + strlen(prefix)) : -1;
}

/* One image through the UNet at latent h x w, context of ctx_len tokens.
 * Level l runs at (h >> l, w >> l); a downsampler writes level l+1's size,
 * an upsampler's conv runs at the size of the level above. */
static double unet_flops(const sd_weights *wt, int h, int w, int ctx_len) {
  const int L = count_levels(wt, "down_blocks.%d.");
  double f = 0;
  int n = sd_weights_count(wt);
  for (int i = 0; i < n; i++) {
    const char *name = sd_weights_name_at(wt, i);
    const sd_tensor *t = sd_weights_tensor_at(wt, i);
    int lvl = 0, d;
    if ((d = level_of(name, "down_blocks.")) >= 0)
      lvl = strstr(name, "downsamplers") ? d + 1 : d;
    else if ((d = level_of(name, "up_blocks.")) >= 0)
      lvl = strstr(name, "upsamplers") ? L - 2 - d : L - 1 - d;
    else if (strncmp(name, "mid_block.", 10) == 0)
      lvl = L - 1;
    double hw = (double)(h >> lvl) * (w >> lvl);
    if (t->ndim == 4 && strstr(name, ".weight")) {
      f += 2.0 * t->shape[0] * t->shape[1] * t->shape[2] * t->shape[3] * hw;
    } else if (t->ndim == 2) {
      double tokens = hw;
      if (strstr(name, "time_emb") || strstr(name, "add_embedding"))
        tokens = 1;
      else if (strstr(name, "attn2.to_k") || strstr(name, "attn2.to_v"))
        tokens = ctx_len;
      f += 2.0 * t->shape[0] * t->shape[1] * tokens;
      if (strstr(name, "attn1.to_q.weight")) f += 4.0 * hw * hw * t->shape[0];
      if (strstr(name, "attn2.to_q.weight")) f += 4.0 * hw * ctx_len * t->shape[0];
    }
  }
  return f;
}

/* One image through the VAE decoder from an h x w latent: up level i runs
 * at (h << i), its upsampler's conv at twice that. */
static double vae_decode_flops(const sd_weights *wt, int h, int w) {
  const int L = count_levels(wt, "decoder.up_blocks.%d.");
  double f = 0;
  int n = sd_weights_count(wt);
  for (int i = 0; i < n; i++) {
    const char *name = sd_weights_name_at(wt, i);
    const sd_tensor *t = sd_weights_tensor_at(wt, i);
    if (strncmp(name, "decoder.", 8) != 0 && strncmp(name, "post_quant_conv.", 16) != 0)
      continue;
    int up = 0, d;
    if ((d = level_of(name, "up_blocks.")) >= 0)
      up = strstr(name, "upsamplers") ? d + 1 : d;
    else if (strstr(name, "conv_norm_out") || strstr(name, "decoder.conv_out"))
      up = L - 1;
    double hw = (double)(h << up) * (w << up);
    if (t->ndim == 4 && strstr(name, ".weight")) {
      f += 2.0 * t->shape[0] * t->shape[1] * t->shape[2] * t->shape[3] * hw;
    } else if (t->ndim == 2) {
      f += 2.0 * t->shape[0] * t->shape[1] * hw;
      if (strstr(name, "to_q.weight")) f += 4.0 * hw * hw * t->shape[0];
    }
  }
  return f;
}

static int64_t count_nonfinite(const float *x, int64_t n) {
  int64_t bad = 0;
  for (int64_t i = 0; i < n; i++) bad += !isfinite(x[i]);
  return bad;
}

/* ---- report ---- */

static void print_table(double ceiling, int threads, const char *load) {
  char rss[32], peak[32];
  printf("\n%-22s %9s %9s %8s %8s %8s %11s %9s %9s\n", "stage", "seconds", "CPU s", "GFLOP",
         "GFLOP/s", "%sgemm", "GFLOP/cpus", "RSS", "peak RSS");
  for (int i = 0; i < g_nstages; i++) {
    const stage *s = &g_stages[i];
    printf("%-22s %9.2f %9.2f", s->name, s->seconds, s->cpu_seconds);
    if (s->gflop > 0)
      printf(" %8.1f %8.1f %7.1f%% %11.1f", s->gflop, s->gflop / s->seconds,
             100.0 * s->gflop / s->seconds / ceiling, s->gflop / s->cpu_seconds);
    else
      printf(" %8s %8s %8s %11s", "-", "-", "-", "-");
    printf(" %9s %9s\n", sd_format_size(s->rss_after, rss, sizeof rss),
           sd_format_size(s->peak_rss, peak, sizeof peak));
  }
  printf("\ncblas_sgemm ceiling %.1f GFLOP/s (%d threads), %.1f GFLOP/cpus; "
         "load average at start: %s\n"
         "GFLOP/cpus = GFLOP per CPU-second of this process: on a loaded machine, times\n"
         "%d is what the stage would reach with its %d cores to itself.\n",
         ceiling, threads, g_sgemm_per_cpu, load, threads, threads);
}

static int write_json(const char *path, const char *model, const char *arch, int size,
                      int threads, int steps, double ceiling, const char *load,
                      int64_t nonfinite) {
  cJSON *j = cJSON_CreateObject();
  cJSON *arr = j ? cJSON_AddArrayToObject(j, "stages") : NULL;
  if (!arr) {
    cJSON_Delete(j);
    return 1;
  }
  cJSON_AddStringToObject(j, "model", model);
  cJSON_AddStringToObject(j, "arch", arch);
  cJSON_AddNumberToObject(j, "size", size);
  cJSON_AddNumberToObject(j, "threads", threads);
  cJSON_AddNumberToObject(j, "unet_steps_run", steps);
  cJSON_AddNumberToObject(j, "sgemm_ceiling_gflops", ceiling);
  cJSON_AddNumberToObject(j, "sgemm_gflop_per_cpu_second", g_sgemm_per_cpu);
  cJSON_AddStringToObject(j, "loadavg_at_start", load);
  cJSON_AddNumberToObject(j, "nonfinite_outputs", (double)nonfinite);
  for (int i = 0; i < g_nstages; i++) {
    const stage *s = &g_stages[i];
    cJSON *o = cJSON_CreateObject();
    if (!o) break;
    cJSON_AddStringToObject(o, "name", s->name);
    cJSON_AddNumberToObject(o, "seconds", s->seconds);
    cJSON_AddNumberToObject(o, "cpu_seconds", s->cpu_seconds);
    if (s->gflop > 0) {
      cJSON_AddNumberToObject(o, "gflop", s->gflop);
      cJSON_AddNumberToObject(o, "gflops", s->gflop / s->seconds);
      cJSON_AddNumberToObject(o, "percent_of_sgemm", 100.0 * s->gflop / s->seconds / ceiling);
    }
    cJSON_AddNumberToObject(o, "rss_bytes", (double)s->rss_after);
    cJSON_AddNumberToObject(o, "peak_rss_bytes", (double)s->peak_rss);
    cJSON_AddItemToArray(arr, o);
  }
  char *text = cJSON_Print(j);
  cJSON_Delete(j);
  if (!text) return 1;
  FILE *f = fopen(path, "w");
  int ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
  if (f && fclose(f) != 0) ok = 0;
  free(text);
  return ok ? 0 : 1;
}

static void read_loadavg(char *buf, size_t n) {
  snprintf(buf, n, "unknown");
  FILE *f = fopen("/proc/loadavg", "r");
  if (!f) return;
  double a, b, c;
  if (fscanf(f, "%lf %lf %lf", &a, &b, &c) == 3) snprintf(buf, n, "%.2f %.2f %.2f", a, b, c);
  fclose(f);
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: bench_pipeline --model PATH [--arch sd15|sdxl] [--tokenizers DIR]\n"
          "                      [--steps N] [--size PX] [--threads N] [--json FILE]\n"
          "PATH: a diffusers folder or single .safetensors (e.g. from make_random_model).\n");
}

int main(int argc, char **argv) {
  sd_blas_select_kernels(argv);
  const char *model = NULL, *arch = "sd15", *json = NULL;
  const char *tokenizers = "/work/shared/fixtures/tokenizers";
  int steps = -1, size = 0, threads = 2;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    }
    if (!v) {
      usage(stderr);
      return 2;
    }
    i++;
    if (!strcmp(a, "--model")) model = v;
    else if (!strcmp(a, "--arch")) arch = v;
    else if (!strcmp(a, "--tokenizers")) tokenizers = v;
    else if (!strcmp(a, "--steps")) steps = atoi(v);
    else if (!strcmp(a, "--size")) size = atoi(v);
    else if (!strcmp(a, "--threads")) threads = atoi(v);
    else if (!strcmp(a, "--json")) json = v;
    else {
      usage(stderr);
      return 2;
    }
  }
  int sdxl = !strcmp(arch, "sdxl");
  if (!model || (!sdxl && strcmp(arch, "sd15") != 0)) {
    usage(stderr);
    return 2;
  }
  if (steps < 1) steps = sdxl ? 1 : 2;
  if (size <= 0) size = sdxl ? 1024 : 512;
  if (size % 8 || threads < 1) {
    fprintf(stderr, "error: --size must be a multiple of 8, --threads >= 1\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0); /* progress lines show up when piped */
  if (!sd_is_dir(model) && !sd_is_file(model)) {
    fprintf(stderr, "error: model %s not found (make one with make_random_model)\n", model);
    return 1;
  }
  char load[64];
  read_loadavg(load, sizeof load);
  sd_set_threads(threads);
  printf("bench_pipeline: %s (%s), %dx%d, %d threads, load average %s\n", model, arch, size,
         size, threads, load);

  double ceiling = sgemm_ceiling(threads, 2048);
  printf("cblas_sgemm 2048^3: %.1f GFLOP/s\n", ceiling);

  sd_error err = {0};
  sd_unet_model *m = NULL;
  sd_conditioning cond = {0};
  float *x = NULL, *eps = NULL, *image = NULL;
  int64_t nonfinite = 0;
  double t0;
  int rc;

  stage_begin(&t0);
  sd_load_options lo = {0};
  lo.path = model;
  lo.tokenizers_dir = tokenizers;
  if ((rc = sd_unet_model_load(&m, &lo, &err))) goto fail;
  stage_end("load", t0, 0);

  sd_prompt_options po = {0};
  po.prompt = "a photograph of an astronaut riding a horse on the moon, detailed";
  po.negative_prompt = "blurry, low quality";
  po.n = 1;
  po.guidance = 1;
  po.width = po.height = size;
  po.aesthetic_score = 6.0f;
  po.negative_aesthetic_score = 2.5f;
  stage_begin(&t0);
  if ((rc = sd_encode_prompt(m, &po, &cond, &err))) goto fail;
  stage_end("text encode (x2 CFG)", t0, 0);

  const sd_unet_config *uc = sd_unet_get_config(m->unet);
  const int h = size / 8, w = size / 8, B = 2, C = uc->in_channels;
  const int64_t lat = (int64_t)B * C * h * w;
  x = filled(lat, 7, 1);
  eps = sd_alloc(sizeof(float) * lat);
  if (!x || !eps) {
    rc = sd_fail(&err, SD_ERR_OOM, "out of memory");
    goto fail;
  }
  double gf_unet = B * unet_flops(m->w_unet, h, w, cond.ctx_len) * 1e-9;
  sd_unet_cond uconds = {cond.context, cond.ctx_len, cond.pooled, cond.time_ids,
                         cond.n_time_ids};
  for (int s = 0; s < steps; s++) {
    float ts[2] = {981.0f - 20.0f * s, 981.0f - 20.0f * s};
    static char names[8][40];
    snprintf(names[s < 8 ? s : 7], sizeof names[0], "unet step %d (B=2)", s + 1);
    stage_begin(&t0);
    if ((rc = sd_unet_forward(m->unet, x, B, h, w, ts, &uconds, eps, 0, &err))) goto fail;
    stage_end(names[s < 8 ? s : 7], t0, gf_unet);
    printf("  unet step %d: %.2f s\n", s + 1, g_stages[g_nstages - 1].seconds);
  }
  nonfinite += count_nonfinite(eps, lat);

  const sd_vae_config *vc = sd_vae_get_config(m->vae);
  int f = sd_vae_downscale(m->vae);
  image = sd_alloc(sizeof(float) * vc->out_channels * (int64_t)h * f * w * f);
  if (!image) {
    rc = sd_fail(&err, SD_ERR_OOM, "out of memory");
    goto fail;
  }
  double gf_vae = vae_decode_flops(m->w_vae, h, w) * 1e-9;
  stage_begin(&t0);
  if ((rc = sd_decode_latents(m->vae, eps, 1, h, w, SD_DECODE_BATCH, image, &err))) goto fail;
  stage_end("vae decode (1 image)", t0, gf_vae);
  nonfinite += count_nonfinite(image, (int64_t)vc->out_channels * h * f * w * f);

  print_table(ceiling, threads, load);
  printf("UNet FLOPs per image %.1f GFLOP; VAE decode %.1f GFLOP; non-finite outputs: %lld\n",
         gf_unet / B, gf_vae, (long long)nonfinite);
  if (json && write_json(json, model, arch, size, threads, steps, ceiling, load, nonfinite))
    fprintf(stderr, "warning: could not write %s\n", json);
  sd_free(x);
  sd_free(eps);
  sd_free(image);
  sd_conditioning_free(&cond);
  sd_unet_model_free(m);
  return nonfinite ? 1 : 0;
fail:
  fprintf(stderr, "error: %s\n", err.msg);
  sd_free(x);
  sd_free(eps);
  sd_free(image);
  sd_conditioning_free(&cond);
  sd_unet_model_free(m);
  return 1;
}
