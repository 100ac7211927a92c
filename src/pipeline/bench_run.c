/* sdgen_bench: where the time of a generation goes, measured in one run.
 *
 * Stages: the sgemm ceilings, load, prompt encoding, one denoiser step with
 * CFG (batch 2), one VAE decode. The step and the decode run with the op
 * profiler on (tensor/profile.h), so their time splits into op classes; the
 * rest of a stage's time ("other") is glue outside the ops (allocation,
 * copies in model code, weight conversion outside the kernels).
 *
 * FLOPs of a stage are analytic, from the weight shapes and the latent size
 * (conv 2*Cout*Cin*k*k*Hout*Wout, linear 2*out*in per token, attention
 * 4*Lq*Lk*C over all heads); norms and element-wise work are not counted.
 * The profiler's per-class FLOPs come from the same formulas applied to the
 * arguments of each op call, so the two agree up to those uncounted ops.
 *
 * The denoiser step is preceded by one untimed step: the first touch of the
 * memory-mapped weights pays the page faults (and F16 pages come from disk
 * when the page cache is cold), which is not the steady-state cost. */
#define _GNU_SOURCE
#include <cblas.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/alloc.h"
#include "base/cpu.h"
#include "base/memprobe.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "models/mmdit.h"
#include "pipeline/generate_internal.h"
#include "pipeline/sd3_pipeline.h"
#include "pipeline/unet_pipeline.h"
#include "tensor/blas_setup.h"
#include "tensor/cpu_limits.h"
#include "tensor/gemm_f32.h"
#include "tensor/ops.h"
#include "tensor/profile.h"

#define BENCH_MAX_STAGES 8
#define CEILING_N 2048
/* The bandwidth probe's buffer: far larger than any CPU's caches. */
#define BW_BYTES ((int64_t)256 << 20)
#define SD3_T5_TOKENS 256
#define DEFAULT_PROMPT "a photograph of an astronaut riding a horse on the moon, detailed"
#define DEFAULT_NEGATIVE "blurry, low quality"

typedef struct bench_stage {
  const char *name;
  double seconds;
  double cpu_seconds; /* process CPU time, all threads */
  double gflop;       /* analytic; 0 when not counted */
  int64_t rss, peak_rss;
  int profiled;
  sd_op_stats ops[SD_OPC_COUNT];
} bench_stage;

typedef struct bench {
  FILE *out;
  sd_error *err;
  int threads;
  sd_precision prec;
  const char *family; /* "sd1", "sdxl", "sdxl-refiner", "sd3" */
  int mmdit;
  int size;
  char model[4096];
  char load[64];        /* load average at the start */
  double sgemm_f32;     /* sd_gemm, our threading: the ceiling */
  double sgemm_blas;    /* cblas_sgemm on BLAS's own threads, for reference */
  double sgemm_bf16;    /* sd_gemm in bf16; 0 when the CPU has no bf16 */
  double sgemm_per_cpu; /* best F32 GFLOP per CPU-second */
  sd_cpu_limits lim;    /* the hardware limits, measured in this run */
  const char *fast_why; /* --precision fast: why it chose what it did */
  bench_stage st[BENCH_MAX_STAGES];
  int nst;
  int step_stage; /* index of the profiled denoiser step, -1 until run */
  int warmup;     /* run an untimed warm-up step first (not with --steps 1) */
  int64_t nonfinite;
  double t0, cpu0; /* start of the current stage */
} bench;

static double wall_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void stage_begin(bench *b, int profiled) {
  sd_mem_reset_peak();
  if (profiled) {
    sd_profile_reset();
    sd_profile_enable(1);
  }
  b->cpu0 = cpu_s();
  b->t0 = wall_s();
}

static bench_stage *stage_end(bench *b, const char *name, double gflop) {
  double t = wall_s() - b->t0;
  bench_stage *s = &b->st[b->nst < BENCH_MAX_STAGES ? b->nst++ : BENCH_MAX_STAGES - 1];
  memset(s, 0, sizeof *s);
  s->name = name;
  s->seconds = t;
  s->cpu_seconds = cpu_s() - b->cpu0;
  s->gflop = gflop;
  if (sd_profile_enabled()) {
    s->profiled = 1;
    sd_profile_read(s->ops);
    sd_profile_enable(0);
  }
  sd_mem_sample m;
  sd_mem_probe(&m);
  s->rss = m.rss;
  s->peak_rss = m.peak_rss;
  fprintf(b->out, "  %-24s %8.2f s\n", name, t);
  fflush(b->out);
  return s;
}

/* Deterministic uniform values of unit variance, times scale. */
static float *filled(int64_t n, uint32_t seed, float scale) {
  float *p = sd_alloc(sizeof(float) * (size_t)n);
  if (!p) return NULL;
  uint32_t s = seed;
  for (int64_t i = 0; i < n; i++) {
    s = s * 1664525u + 1013904223u;
    p[i] = ((float)(s >> 8) / 16777216.0f - 0.5f) * 3.4641f * scale;
  }
  return p;
}

static int64_t count_nonfinite(const float *x, int64_t n) {
  int64_t bad = 0;
  for (int64_t i = 0; i < n; i++) bad += !isfinite(x[i]);
  return bad;
}

static double rate(double amount, double seconds);

/* ---- the hardware limits and the sgemm ceilings ---- */

/* Best of 3 sd_gemm CEILING_N^3 in the current precision, in GFLOP/s. */
static double best_sd_gemm(bench *b, const float *A, const float *B, float *C) {
  const int n = CEILING_N;
  const double flop = 2.0 * n * n * n;
  double best = 0;
  for (int r = 0; r < 3; r++) {
    double t0 = wall_s(), c0 = cpu_s();
    sd_gemm(0, 0, n, n, n, 1.0f, A, n, B, n, 0.0f, C, n);
    double g = flop / (wall_s() - t0) * 1e-9, gc = flop / (cpu_s() - c0) * 1e-9;
    if (g > best) best = g;
    if (sd_get_precision() == SD_PREC_FP32 && gc > b->sgemm_per_cpu) b->sgemm_per_cpu = gc;
  }
  return best;
}

/* The limit of the arithmetic the products ran in (at the run's threads). */
static double arith_limit(const bench *b) {
  double bf = sd_cpu_limit(&b->lim, SD_LIMIT_BF16, 1);
  return b->prec == SD_PREC_BF16 && bf > 0 ? bf : sd_cpu_limit(&b->lim, SD_LIMIT_FP32, 1);
}

static const char *arith_limit_name(const bench *b) {
  return b->prec == SD_PREC_BF16 && sd_cpu_limit(&b->lim, SD_LIMIT_BF16, 1) > 0 ? "bf16 dot"
                                                                             : "fp32 FMA";
}

static int measure_limits(bench *b) {
  if (sd_cpu_limits_measure(&b->lim, b->threads, BW_BYTES))
    return sd_fail(b->err, SD_ERR_OOM, "out of memory (bandwidth probe buffer)");
  fprintf(b->out, "limits, 1 / %d threads (instruction loops, GFLOP/s):\n", b->threads);
  for (int i = 0; i < b->lim.nprobes; i++)
    fprintf(b->out, "  %-24s %8.1f / %8.1f\n", b->lim.probe[i].name, b->lim.probe[i].gflops[0],
            b->lim.probe[i].gflops[1]);
  fprintf(b->out, "  memory read (GB/s)       %8.1f / %8.1f\n", b->lim.read_gbs[0],
          b->lim.read_gbs[1]);
  fprintf(b->out, "  memory copy (GB/s)       %8.1f / %8.1f\n", b->lim.copy_gbs[0],
          b->lim.copy_gbs[1]);
  return SD_OK;
}

static int measure_ceilings(bench *b) {
  const int n = CEILING_N;
  const double flop = 2.0 * n * n * n;
  int64_t nn = (int64_t)n * n;
  float *A = filled(nn, 1, 1), *B = filled(nn, 2, 1), *C = filled(nn, 3, 1);
  if (!A || !B || !C) {
    sd_free(A);
    sd_free(B);
    sd_free(C);
    return sd_fail(b->err, SD_ERR_OOM, "out of memory (sgemm ceiling buffers)");
  }
  /* Reference: BLAS with its own thread pool, as a plain BLAS user gets. */
#ifndef SDGEN_ACCELERATE
  openblas_set_num_threads(b->threads);
#endif
  for (int r = 0; r < 3; r++) {
    double t0 = wall_s();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, A, n, B, n, 0.0f, C, n);
    double g = flop / (wall_s() - t0) * 1e-9;
    if (g > b->sgemm_blas) b->sgemm_blas = g;
  }
  sd_set_threads(b->threads); /* BLAS back to one thread per OpenMP worker */
  sd_set_precision(SD_PREC_FP32);
  b->sgemm_f32 = best_sd_gemm(b, A, B, C);
  if (sd_precision_supported(SD_PREC_BF16)) {
    sd_set_precision(SD_PREC_BF16);
    b->sgemm_bf16 = best_sd_gemm(b, A, B, C);
  }
  sd_set_precision(b->prec);
  sd_free(A);
  sd_free(B);
  sd_free(C);
  fprintf(b->out,
          "sgemm %d^3: sd_gemm fp32 %.1f GFLOP/s (the ceiling, %.1f%% of the fp32 FMA limit), "
          "cblas_sgemm %.1f GFLOP/s",
          n, b->sgemm_f32, 100.0 * rate(b->sgemm_f32, sd_cpu_limit(&b->lim, SD_LIMIT_FP32, 1)),
          b->sgemm_blas);
  if (b->sgemm_bf16 > 0)
    fprintf(b->out, ", sd_gemm bf16 %.1f GFLOP/s (%.1f%% of the bf16 dot limit)", b->sgemm_bf16,
            100.0 * rate(b->sgemm_bf16, sd_cpu_limit(&b->lim, SD_LIMIT_BF16, 1)));
  fprintf(b->out, "\n");
  return SD_OK;
}

/* ---- analytic FLOP counts ---- */

static int count_levels(const sd_weights *w, const char *fmt) {
  char p[96];
  for (int n = 0;; n++) {
    snprintf(p, sizeof p, fmt, n);
    if (!sd_weights_has_prefix(w, p)) return n;
  }
}

static int level_of(const char *name, const char *prefix) {
  const char *s = strstr(name, prefix);
  return s ? atoi(s + strlen(prefix)) : -1;
}

/* One image through the UNet at latent h x w with a context of ctx_len
 * tokens. Level l runs at (h >> l, w >> l); a downsampler writes level
 * l+1's size, an upsampler's conv runs at the size of the level above. */
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
 * at (h << i), its upsampler's conv at twice that. Works for any VAE with
 * diffusers names (4-channel SD, 16-channel SD3). */
static double vae_decode_flops(const sd_weights *wt, int h, int w) {
  const int L = count_levels(wt, "decoder.up_blocks.%d.");
  double f = 0;
  int n = sd_weights_count(wt);
  for (int i = 0; i < n; i++) {
    const char *name = sd_weights_name_at(wt, i);
    const sd_tensor *t = sd_weights_tensor_at(wt, i);
    if (strncmp(name, "decoder.", 8) != 0 && strncmp(name, "post_quant_conv.", 16) != 0) continue;
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

/* A linear over `tokens` rows: 2 * out * in per row; absent weights count 0. */
static double lin(const sd_tensor *t, double tokens) {
  return t ? 2.0 * (double)t->shape[0] * (double)t->shape[1] * tokens : 0.0;
}

static double attn_proj(const sd_mmdit_attn *a, double tokens) {
  return lin(a->q_w, tokens) + lin(a->k_w, tokens) + lin(a->v_w, tokens) + lin(a->out_w, tokens);
}

/* One image through the MMDiT at latent h x w with ctx context tokens:
 * ni = (h/p)(w/p) image tokens. Joint attention runs over ni + ctx tokens;
 * the MMDiT-X second attention over the image tokens only; adaLN
 * modulations and the timestep / pooled MLPs over one token. */
static double mmdit_flops(const sd_mmdit *m, int h, int w, int ctx) {
  const sd_mmdit_config *c = &m->cfg;
  double ni = (double)(h / c->patch) * (w / c->patch), lc = ctx, D = c->hidden;
  double f = 2.0 * (double)sd_tensor_numel(m->patch_w) * ni;
  f += lin(m->t1_w, 1) + lin(m->t2_w, 1) + lin(m->p1_w, 1) + lin(m->p2_w, 1);
  f += lin(m->ctx_w, lc);
  for (int i = 0; i < c->layers; i++) {
    const sd_mmdit_block *bk = &m->block[i];
    f += lin(bk->mod_w, 1) + lin(bk->cmod_w, 1);
    f += attn_proj(&bk->x_attn, ni) + attn_proj(&bk->c_attn, lc);
    f += 4.0 * (ni + lc) * (ni + lc) * D;
    if (bk->dual) f += attn_proj(&bk->attn2, ni) + 4.0 * ni * ni * D;
    f += lin(bk->ff1_w, ni) + lin(bk->ff2_w, ni) + lin(bk->cff1_w, lc) + lin(bk->cff2_w, lc);
  }
  return f + lin(m->out_mod_w, 1) + lin(m->proj_w, ni);
}

/* ---- stages per model family ---- */

static const char *g_step_names[2][2] = {{"unet warm-up step (B=2)", "unet step (B=2, CFG)"},
                                         {"mmdit warm-up step (B=2)", "mmdit step (B=2, CFG)"}};

static int run_decode(bench *b, const sd_vae *vae, const sd_weights *vw, const float *lat, int h,
                      int w) {
  const sd_vae_config *vc = sd_vae_get_config(vae);
  int f = sd_vae_downscale(vae);
  int64_t npix = (int64_t)vc->out_channels * h * f * w * f;
  float *image = sd_alloc(sizeof(float) * (size_t)npix);
  if (!image) return sd_fail(b->err, SD_ERR_OOM, "out of memory (decoded image)");
  double gf = vae_decode_flops(vw, h, w) * 1e-9;
  stage_begin(b, 1);
  int rc = sd_decode_latents(vae, lat, 1, h, w, SD_DECODE_BATCH, image, b->err);
  if (rc)
    sd_profile_enable(0);
  else {
    stage_end(b, "vae decode (1 image)", gf);
    b->nonfinite += count_nonfinite(image, npix);
  }
  sd_free(image);
  return rc;
}

static int bench_unet(bench *b, const sdgen_params *p, const char *prompt, const char *neg) {
  sd_unet_model *m = NULL;
  sd_conditioning cond = {0};
  float *x = NULL, *eps = NULL;
  int rc;
  stage_begin(b, 0);
  sd_load_options lo = {0};
  lo.path = b->model;
  lo.config_dir = p->config_dir;
  lo.tokenizers_dir = p->tokenizers_dir;
  lo.prefer_fp16 = p->prefer_fp16;
  if ((rc = sd_unet_model_load(&m, &lo, b->err))) return rc;
  stage_end(b, "load", 0);

  const sd_unet_config *uc = sd_unet_get_config(m->unet);
  int f = sd_vae_downscale(m->vae);
  if (!b->size) b->size = uc->sample_size * f;
  if (b->size % f) {
    rc = sd_fail(b->err, SD_ERR_ARG, "--size must be a multiple of %d for this model", f);
    goto done;
  }
  sd_prompt_options po = {0};
  po.prompt = prompt;
  po.negative_prompt = neg;
  po.n = 1;
  po.guidance = 1;
  po.width = po.height = b->size;
  po.aesthetic_score = p->aesthetic_score;
  po.negative_aesthetic_score = p->negative_aesthetic_score;
  stage_begin(b, 0);
  if ((rc = sd_encode_prompt(m, &po, &cond, b->err))) goto done;
  stage_end(b, "text encode (x2 CFG)", 0);

  const int h = b->size / f, w = b->size / f, B = 2;
  const int64_t lat = (int64_t)B * uc->in_channels * h * w;
  x = filled(lat, 7, 1);
  eps = sd_alloc(sizeof(float) * (size_t)((int64_t)B * uc->out_channels * h * w));
  if (!x || !eps) {
    rc = sd_fail(b->err, SD_ERR_OOM, "out of memory (latents)");
    goto done;
  }
  double gf = B * unet_flops(m->w_unet, h, w, cond.ctx_len) * 1e-9;
  sd_unet_cond uconds = {cond.context, cond.ctx_len, cond.pooled, cond.time_ids, cond.n_time_ids,
                         NULL};
  for (int s = b->warmup ? 0 : 1; s < 2; s++) {
    float ts[2] = {981.0f - 20.0f * s, 981.0f - 20.0f * s};
    stage_begin(b, s == 1);
    rc = sd_unet_forward(m->unet, x, B, h, w, ts, &uconds, eps, 0, b->err);
    if (rc) {
      sd_profile_enable(0);
      goto done;
    }
    stage_end(b, g_step_names[0][s], gf);
  }
  b->step_stage = b->nst - 1;
  b->nonfinite += count_nonfinite(eps, (int64_t)B * uc->out_channels * h * w);
  rc = run_decode(b, m->vae, m->w_vae, eps, h, w);
done:
  sd_free(x);
  sd_free(eps);
  sd_conditioning_free(&cond);
  sd_unet_model_free(m);
  return rc;
}

static int bench_sd3(bench *b, const sdgen_params *p, const char *prompt, const char *neg) {
  sd3_pipeline *pp = NULL;
  sd3_models mods = {0};
  float *embeds = NULL, *pooled = NULL, *x = NULL, *out = NULL;
  int tokens = 0, rc;
  sd3_sources src = {.model = b->model,
                     .clip_l = p->clip_l,
                     .clip_g = p->clip_g,
                     .t5 = p->t5,
                     .tokenizers = p->tokenizers_dir,
                     .skip_t5 = p->no_t5};
  stage_begin(b, 0);
  if ((rc = sd3_pipeline_open(&pp, &src, b->err)) ||
      (rc = sd3_pipeline_bind_models(pp, &mods, b->err)))
    goto done;
  stage_end(b, "load", 0);
  const sd_mmdit *m = mods.mmdit;
  const sd_vae *vae = mods.vae;

  int f = sd_vae_downscale(vae), step = f * m->cfg.patch;
  if (!b->size) b->size = sd_json_int(mods.transformer_config, "sample_size", 128) * f;
  if (b->size % step) {
    rc = sd_fail(b->err, SD_ERR_ARG, "--size must be a multiple of %d for this model", step);
    goto done;
  }
  /* The encoders are loaded, run and released one after the other inside
   * this stage, so it includes their load time. */
  const char *prompts[2] = {neg, prompt};
  stage_begin(b, 0);
  if ((rc = sd3_encode_prompts(pp, prompts, 2, SD3_T5_TOKENS, &embeds, &pooled, &tokens, b->err)))
    goto done;
  stage_end(b, "text encode (x2 CFG)", 0);

  const int h = b->size / f, w = b->size / f, B = 2;
  const int64_t lat = (int64_t)B * m->cfg.in_channels * h * w;
  const int64_t lat_out = (int64_t)B * m->cfg.out_channels * h * w;
  x = filled(lat, 7, 1);
  out = sd_alloc(sizeof(float) * (size_t)lat_out);
  if (!x || !out) {
    rc = sd_fail(b->err, SD_ERR_OOM, "out of memory (latents)");
    goto done;
  }
  double gf = B * mmdit_flops(m, h, w, tokens) * 1e-9;
  for (int s = b->warmup ? 0 : 1; s < 2; s++) {
    float ts[2] = {1000.0f - 20.0f * s, 1000.0f - 20.0f * s};
    stage_begin(b, s == 1);
    rc = sd_mmdit_forward(m, x, B, h, w, ts, embeds, tokens, pooled, out, 0, b->err);
    if (rc) {
      sd_profile_enable(0);
      goto done;
    }
    stage_end(b, g_step_names[1][s], gf);
  }
  b->step_stage = b->nst - 1;
  b->nonfinite += count_nonfinite(out, lat_out);
  rc = run_decode(b, vae, mods.vae_weights, out, h, w);
done:
  sd_free(embeds);
  sd_free(pooled);
  sd_free(x);
  sd_free(out);
  sd3_models_free(pp, &mods);
  sd3_pipeline_free(pp);
  return rc;
}

/* ---- report ---- */

static double rate(double amount, double seconds) {
  return seconds > 0 ? amount / seconds : 0;
}

static double classes_seconds(const bench_stage *s) {
  double t = 0;
  for (int c = 0; c < SD_OPC_COUNT; c++) t += s->ops[c].seconds;
  return t;
}

static void print_op_table(const bench *b, const bench_stage *s) {
  FILE *o = b->out;
  fprintf(o, "\n%s: %.3f s\n", s->name, s->seconds);
  fprintf(o, "  %-12s %7s %9s %7s %10s %9s %8s\n", "op class", "calls", "seconds", "share", "GFLOP",
          "GFLOP/s", "GB/s");
  for (int c = 0; c < SD_OPC_COUNT; c++) {
    const sd_op_stats *st = &s->ops[c];
    if (!st->calls) continue;
    fprintf(o, "  %-12s %7lld %9.3f %6.1f%%", sd_op_class_name((sd_op_class)c),
            (long long)st->calls, st->seconds, 100.0 * rate(st->seconds, s->seconds));
    if (st->flops > 0)
      fprintf(o, " %10.2f %9.1f", st->flops * 1e-9, rate(st->flops * 1e-9, st->seconds));
    else
      fprintf(o, " %10s %9s", "-", "-");
    fprintf(o, " %8.2f\n", rate(st->bytes * 1e-9, st->seconds));
  }
  double other = s->seconds - classes_seconds(s);
  fprintf(o, "  %-12s %7s %9.3f %6.1f%%\n", "other", "-", other, 100.0 * rate(other, s->seconds));
}

static void print_report(const bench *b) {
  FILE *o = b->out;
  for (int i = 0; i < b->nst; i++)
    if (b->st[i].profiled) print_op_table(b, &b->st[i]);
  char rss[32], peak[32];
  fprintf(o, "\n%-26s %9s %9s %9s %9s %8s %8s %10s %9s %9s\n", "stage", "seconds", "CPU s",
          "GFLOP", "GFLOP/s", "%limit", "%sgemm", "GFLOP/cpus", "RSS", "peak RSS");
  for (int i = 0; i < b->nst; i++) {
    const bench_stage *s = &b->st[i];
    fprintf(o, "%-26s %9.3f %9.2f", s->name, s->seconds, s->cpu_seconds);
    if (s->gflop > 0)
      fprintf(o, " %9.2f %9.1f %7.1f%% %7.1f%% %10.1f", s->gflop, rate(s->gflop, s->seconds),
              100.0 * rate(rate(s->gflop, s->seconds), arith_limit(b)),
              100.0 * rate(rate(s->gflop, s->seconds), b->sgemm_f32),
              rate(s->gflop, s->cpu_seconds));
    else
      fprintf(o, " %9s %9s %8s %8s %10s", "-", "-", "-", "-", "-");
    fprintf(o, " %9s %9s\n", sd_format_size(s->rss, rss, sizeof rss),
            sd_format_size(s->peak_rss, peak, sizeof peak));
  }
  fprintf(o, "%%limit: of the %s limit at %d threads (%.1f GFLOP/s)\n", arith_limit_name(b),
          b->threads, arith_limit(b));
  fprintf(o, "\n%s, %d threads, %s, GEMM kernels %s, BLAS %s; load average at start %s\n",
          sd_cpu_describe(), b->threads, sd_precision_name(b->prec),
          sd_gemm_path_name(sd_gemm_path_get()), sd_blas_kernel_name(), b->load);
  if (b->fast_why) fprintf(o, "precision fast: %s (%s)\n", sd_precision_name(b->prec), b->fast_why);
  /* On a shared machine wall-clock rates fall with the load while the rate
   * per CPU-second does not (much): threads x GFLOP/cpus estimates the rate
   * with the cores to ourselves. */
  fprintf(o,
          "GFLOP/cpus = GFLOP per CPU-second of this process; sgemm fp32: %.1f GFLOP/cpus, "
          "times %d threads = %.1f\n",
          b->sgemm_per_cpu, b->threads, b->sgemm_per_cpu * b->threads);
  if (b->nonfinite) fprintf(o, "warning: %lld non-finite outputs\n", (long long)b->nonfinite);
  if (b->step_stage >= 0) {
    const bench_stage *s = &b->st[b->step_stage];
    double gfs = rate(s->gflop, s->seconds);
    fprintf(o, "%s step: %.2f s, %.1f GFLOP/s, %.1f%% of the fp32 FMA limit, %.1f%% of sgemm ceiling",
            b->mmdit ? "mmdit" : "unet", s->seconds, gfs,
            100.0 * rate(gfs, sd_cpu_limit(&b->lim, SD_LIMIT_FP32, 1)),
            100.0 * rate(gfs, b->sgemm_f32));
    if (b->prec == SD_PREC_BF16)
      fprintf(o, ", %.1f%% of the bf16 dot limit, %.1f%% of bf16 ceiling",
              100.0 * rate(gfs, sd_cpu_limit(&b->lim, SD_LIMIT_BF16, 1)),
              100.0 * rate(gfs, b->sgemm_bf16));
    fprintf(o, "\n");
  }
  fflush(o);
}

static cJSON *stage_json(const bench *b, const bench_stage *s) {
  cJSON *o = cJSON_CreateObject();
  if (!o) return NULL;
  cJSON_AddStringToObject(o, "name", s->name);
  cJSON_AddNumberToObject(o, "seconds", s->seconds);
  cJSON_AddNumberToObject(o, "cpu_seconds", s->cpu_seconds);
  if (s->gflop > 0) {
    cJSON_AddNumberToObject(o, "gflop", s->gflop);
    cJSON_AddNumberToObject(o, "gflops", rate(s->gflop, s->seconds));
    cJSON_AddNumberToObject(o, "percent_of_sgemm",
                            100.0 * rate(rate(s->gflop, s->seconds), b->sgemm_f32));
    cJSON_AddNumberToObject(o, "percent_of_limit",
                            100.0 * rate(rate(s->gflop, s->seconds), arith_limit(b)));
    cJSON_AddNumberToObject(o, "percent_of_fp32_limit",
                            100.0 * rate(rate(s->gflop, s->seconds),
                                         sd_cpu_limit(&b->lim, SD_LIMIT_FP32, 1)));
    cJSON_AddNumberToObject(o, "gflop_per_cpu_second", rate(s->gflop, s->cpu_seconds));
  }
  cJSON_AddNumberToObject(o, "rss_bytes", (double)s->rss);
  cJSON_AddNumberToObject(o, "peak_rss_bytes", (double)s->peak_rss);
  if (s->profiled) {
    cJSON *ops = cJSON_AddArrayToObject(o, "ops");
    for (int c = 0; ops && c < SD_OPC_COUNT; c++) {
      const sd_op_stats *st = &s->ops[c];
      cJSON *e = cJSON_CreateObject();
      if (!e) break;
      cJSON_AddStringToObject(e, "class", sd_op_class_name((sd_op_class)c));
      cJSON_AddNumberToObject(e, "calls", (double)st->calls);
      cJSON_AddNumberToObject(e, "seconds", st->seconds);
      cJSON_AddNumberToObject(e, "share", rate(st->seconds, s->seconds));
      cJSON_AddNumberToObject(e, "gflop", st->flops * 1e-9);
      cJSON_AddNumberToObject(e, "gflops", rate(st->flops * 1e-9, st->seconds));
      cJSON_AddNumberToObject(e, "gbps", rate(st->bytes * 1e-9, st->seconds));
      cJSON_AddItemToArray(ops, e);
    }
    double other = s->seconds - classes_seconds(s);
    cJSON_AddNumberToObject(o, "other_seconds", other);
    cJSON_AddNumberToObject(o, "other_share", rate(other, s->seconds));
  }
  return o;
}

static void add_limits_json(cJSON *j, const bench *b) {
  cJSON *l = cJSON_AddObjectToObject(j, "limits");
  if (!l) return;
  cJSON_AddNumberToObject(l, "threads", b->lim.threads);
  cJSON *arr = cJSON_AddArrayToObject(l, "probes");
  for (int i = 0; arr && i < b->lim.nprobes; i++) {
    cJSON *e = cJSON_CreateObject();
    if (!e) break;
    cJSON_AddStringToObject(e, "name", b->lim.probe[i].name);
    cJSON_AddNumberToObject(e, "gflops_1_thread", b->lim.probe[i].gflops[0]);
    cJSON_AddNumberToObject(e, "gflops", b->lim.probe[i].gflops[1]);
    cJSON_AddItemToArray(arr, e);
  }
  static const char *const kinds[SD_LIMIT_COUNT] = {"fp32_fma", "bf16_dot", "fp16_fma",
                                                    "int8_dot"};
  for (int k = 0; k < SD_LIMIT_COUNT; k++) {
    char key[48];
    snprintf(key, sizeof key, "%s_gflops", kinds[k]);
    if (sd_cpu_limit(&b->lim, (sd_limit_kind)k, 1) > 0)
      cJSON_AddNumberToObject(l, key, sd_cpu_limit(&b->lim, (sd_limit_kind)k, 1));
    else
      cJSON_AddNullToObject(l, key);
  }
  cJSON_AddNumberToObject(l, "read_gbs", b->lim.read_gbs[1]);
  cJSON_AddNumberToObject(l, "copy_gbs", b->lim.copy_gbs[1]);
  cJSON_AddNumberToObject(l, "read_gbs_1_thread", b->lim.read_gbs[0]);
  cJSON_AddNumberToObject(l, "copy_gbs_1_thread", b->lim.copy_gbs[0]);
  cJSON_AddNumberToObject(l, "bandwidth_buffer_bytes", (double)b->lim.bw_bytes);
}

static int write_json(const bench *b, const char *path) {
  cJSON *j = cJSON_CreateObject();
  cJSON *arr = j ? cJSON_AddArrayToObject(j, "stages") : NULL;
  if (!arr) {
    cJSON_Delete(j);
    return sd_fail(b->err, SD_ERR_OOM, "out of memory (bench JSON)");
  }
  cJSON_AddStringToObject(j, "model", b->model);
  cJSON_AddStringToObject(j, "family", b->family);
  cJSON_AddNumberToObject(j, "size", b->size);
  cJSON_AddNumberToObject(j, "threads", b->threads);
  cJSON_AddStringToObject(j, "precision", sd_precision_name(b->prec));
  cJSON_AddStringToObject(j, "cpu", sd_cpu_describe());
  cJSON_AddStringToObject(j, "blas_kernel", sd_blas_kernel_name());
  cJSON_AddStringToObject(j, "loadavg_at_start", b->load);
  cJSON_AddStringToObject(j, "version", sdgen_version());
  cJSON_AddStringToObject(j, "gemm_kernels", sd_gemm_path_name(sd_gemm_path_get()));
  if (b->fast_why) cJSON_AddStringToObject(j, "fast_choice", b->fast_why);
  add_limits_json(j, b);
  cJSON *ce = cJSON_AddObjectToObject(j, "sgemm_ceiling_gflops");
  if (ce) {
    cJSON_AddNumberToObject(ce, "fp32", b->sgemm_f32);
    cJSON_AddNumberToObject(ce, "cblas_reference", b->sgemm_blas);
    if (b->sgemm_bf16 > 0)
      cJSON_AddNumberToObject(ce, "bf16", b->sgemm_bf16);
    else
      cJSON_AddNullToObject(ce, "bf16");
    cJSON_AddNumberToObject(ce, "fp32_gflop_per_cpu_second", b->sgemm_per_cpu);
  }
  for (int i = 0; i < b->nst; i++) {
    cJSON *o = stage_json(b, &b->st[i]);
    if (o) cJSON_AddItemToArray(arr, o);
  }
  if (b->step_stage >= 0) {
    const bench_stage *s = &b->st[b->step_stage];
    double gfs = rate(s->gflop, s->seconds);
    cJSON *st = cJSON_AddObjectToObject(j, "step");
    if (st) {
      cJSON_AddStringToObject(st, "denoiser", b->mmdit ? "mmdit" : "unet");
      cJSON_AddNumberToObject(st, "seconds", s->seconds);
      cJSON_AddNumberToObject(st, "gflop", s->gflop);
      cJSON_AddNumberToObject(st, "gflops", gfs);
      cJSON_AddNumberToObject(st, "percent_of_sgemm", 100.0 * rate(gfs, b->sgemm_f32));
      cJSON_AddNumberToObject(st, "percent_of_fp32_limit",
                              100.0 * rate(gfs, sd_cpu_limit(&b->lim, SD_LIMIT_FP32, 1)));
      if (b->prec == SD_PREC_BF16 && sd_cpu_limit(&b->lim, SD_LIMIT_BF16, 1) > 0)
        cJSON_AddNumberToObject(st, "percent_of_bf16_limit",
                                100.0 * rate(gfs, sd_cpu_limit(&b->lim, SD_LIMIT_BF16, 1)));
      if (b->prec == SD_PREC_BF16 && b->sgemm_bf16 > 0)
        cJSON_AddNumberToObject(st, "percent_of_bf16", 100.0 * rate(gfs, b->sgemm_bf16));
    }
  }
  cJSON_AddNumberToObject(j, "nonfinite_outputs", (double)b->nonfinite);
  char *text = cJSON_Print(j);
  cJSON_Delete(j);
  if (!text) return sd_fail(b->err, SD_ERR_OOM, "out of memory (bench JSON)");
  size_t len = strlen(text);
  char *full = malloc(len + 2);
  int rc = SD_OK;
  if (!full)
    rc = sd_fail(b->err, SD_ERR_OOM, "out of memory (bench JSON)");
  else {
    memcpy(full, text, len);
    memcpy(full + len, "\n", 2);
    rc = sd_write_text_atomic(path, full, b->err);
  }
  free(full);
  free(text);
  return rc;
}

static void read_loadavg(char *buf, size_t n) {
  snprintf(buf, n, "unknown");
  FILE *f = fopen("/proc/loadavg", "r");
  if (!f) return;
  double a, b, c;
  if (fscanf(f, "%lf %lf %lf", &a, &b, &c) == 3) snprintf(buf, n, "%.2f %.2f %.2f", a, b, c);
  fclose(f);
}

int sdgen_bench(sdgen_ctx *ctx, const sdgen_params *p, const char *json_path, FILE *out) {
  sd_error *err = &ctx->err;
  sd_error_clear(err);
  bench *b = sd_calloc(1, sizeof *b);
  if (!b) return sd_fail(err, SD_ERR_OOM, "out of memory");
  b->out = out ? out : stdout;
  b->err = err;
  b->step_stage = -1;
  b->warmup = p->steps != 1;
  int rc;
  if (!p->model) {
    rc = sd_fail(err, SD_ERR_ARG, "no model given");
    goto done;
  }
  if (p->width != p->height || p->width < 0 || p->width % 8) {
    rc = sd_fail(err, SD_ERR_ARG,
                 "bench size must be square, a positive multiple of 8 (got "
                 "%dx%d)",
                 p->width, p->height);
    goto done;
  }
  if ((rc = sd_parse_precision(p->precision, &b->prec, err))) goto done;
  if (p->precision && !strcmp(p->precision, "fast")) sd_precision_fast(&b->fast_why);
  b->size = p->width;
  if ((rc = sd_resolve_model(p, p->model, b->model, sizeof b->model, err))) goto done;
  if ((rc = gen_model_family(b->model, &b->family, err))) goto done;
  b->mmdit = strcmp(b->family, "sd3") == 0;
  sd_precision saved = sd_get_precision();
  sd_set_threads(p->threads > 0 ? p->threads : 0);
  b->threads = sd_get_threads();
  read_loadavg(b->load, sizeof b->load);
  fprintf(b->out, "bench: %s (%s), %d threads, %s, load average %s\n", b->model,
          b->family[0] ? b->family : "unknown family", b->threads, sd_precision_name(b->prec),
          b->load);
  fprintf(b->out, "cpu: %s; GEMM kernels %s; BLAS kernels %s (reference)\n", sd_cpu_describe(),
          sd_gemm_path_name(sd_gemm_path_get()), sd_blas_kernel_name());
  if ((rc = measure_limits(b)) || (rc = measure_ceilings(b))) goto restore;
  sd_set_precision(b->prec);
  const char *prompt = p->prompt ? p->prompt : DEFAULT_PROMPT;
  const char *neg = p->negative_prompt ? p->negative_prompt : DEFAULT_NEGATIVE;
  rc = b->mmdit ? bench_sd3(b, p, prompt, neg) : bench_unet(b, p, prompt, neg);
  if (rc) goto restore;
  fprintf(b->out, "size %dx%d\n", b->size, b->size);
  print_report(b);
  if (json_path && (rc = write_json(b, json_path))) goto restore;
  /* Random weights must keep activations finite: a NaN here is a bug. */
  if (b->nonfinite)
    rc = sd_fail(err, SD_ERR_NUMERIC, "%lld non-finite values in the outputs",
                 (long long)b->nonfinite);
restore:
  sd_profile_enable(0);
  sd_set_precision(saved);
done:
  sd_free(b);
  sd_alloc_trim();
  return rc;
}
