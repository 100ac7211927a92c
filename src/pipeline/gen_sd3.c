/* Base stage for SD3 / SD3.5 models (MMDiT, flow matching): the text
 * encoders run one after the other and are released, then the transformer
 * (streamed when the plan says so), then the VAE. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "base/memprobe.h"
#include "io/json.h"
#include "models/mmdit.h"
#include "models/vae_tiled.h"
#include "pipeline/generate_internal.h"
#include "pipeline/sd3_pipeline.h"
#include "pipeline/unet_pipeline.h"
#include "tensor/ops.h"

/* Kernel scratch beside the analytic activation counts of the encoders and
 * the MMDiT (a converted weight panel of at most 8 MB, bf16 packing and
 * attention blocks per thread); the decode's plan-mode peak includes its
 * own. */
#define KERNEL_SCRATCH (32LL << 20)
#define T5_TOKENS 256

typedef struct sd3_plan_ctx {
  const sd_mmdit *m;
  const gen_run *r; /* the tiny VAE and the previews */
  const sd_vae *vae;
  sd3_encoder_sizes enc[3]; /* CLIP-L, CLIP-G, T5 (zeros when left out) */
  int64_t transformer, vae_bytes;
  int n, h, w, guidance, no_t5;
  const sd_adapter *lora; /* transformer LoRAs or NULL */
} sd3_plan_ctx;

static int contains_ci(const char *s, const char *word) {
  size_t n = strlen(word);
  for (; *s; s++)
    if (strncasecmp(s, word, n) == 0) return 1;
  return 0;
}

static int64_t plan_decode(const sd_vae *vae, int n, int h, int w, int mode) {
  int f = sd_vae_downscale(vae);
  sd_plan_begin();
  float *lat = sd_calloc((size_t)n * sd_vae_get_config(vae)->latent_channels * h * w, 4);
  float *img = sd_alloc(4ull * n * 3 * h * f * w * f);
  int64_t base = sd_alloc_get_stats().bytes_in_use, peak = -1;
  if (lat && img) {
    sd_alloc_reset_peak();
    if (sd_decode_latents(vae, lat, n, h, w, mode, img, NULL) == SD_OK)
      peak = sd_alloc_get_stats().peak_bytes - base;
  }
  sd_free(lat);
  sd_free(img);
  sd_plan_end();
  return peak;
}

static int estimate_sd3(void *user, int level, sd_plan *p, sd_error *err) {
  sd3_plan_ctx *u = user;
  int B = u->guidance ? 2 : 1, f = sd_vae_downscale(u->vae);
  int tokens = 77 + T5_TOKENS, J = u->m->cfg.joint_dim;
  int64_t cond = 4LL * B * ((int64_t)tokens * J + u->m->cfg.pooled_dim);
  int64_t lat = 4LL * u->n * u->m->cfg.in_channels * u->h * u->w;
  int64_t image = 4LL * u->n * 3 * u->h * f * u->w * f;
  /* At every level the encoders run one at a time and each is released
   * after use (at the streaming level only its largest layer is resident
   * at a time), and the transformer is released before the decode
   * (gen_base_sd3): no stage holds another stage's weights, so the resident
   * and release-encoders levels differ in nothing for SD3. */
  int stream = level >= SD_PLAN_STREAMING;
  int64_t enc = 0, enc_act = 0;
  for (int i = 0; i < 3; i++) {
    const sd3_encoder_sizes *e = &u->enc[i];
    int64_t resident = stream ? e->largest_layer : e->weights;
    if (resident > enc) enc = resident;
    if (e->activations > enc_act) enc_act = e->activations;
  }
  sd_plan_add_stage(p, "encode", enc, enc_act + KERNEL_SCRATCH, cond);
  /* LoRAs: merged copies below streaming, side-path tensors (inside the
   * streamed blocks' bytes) and their scratch when streaming */
  int64_t tw = level >= SD_PLAN_STREAMING
                   ? sd_mmdit_streaming_resident_bytes(u->m, u->h, u->w)
                   : u->transformer + sd_adapter_merge_extra_bytes(u->lora, SD_LORA_TRANSFORMER);
  int64_t act = sd_mmdit_scratch_bytes(&u->m->cfg, B, u->h, u->w, tokens);
  int64_t pw = 0, pa = gen_preview_bytes(u->r, u->h, u->w, &pw);
  if (pa < 0) return sd_fail(err, SD_ERR_OOM, "out of memory while planning");
  if (level >= SD_PLAN_STREAMING) {
    int64_t rows = (int64_t)B * (u->h / u->m->cfg.patch) * (u->w / u->m->cfg.patch) + B * tokens;
    act += sd_adapter_side_scratch_bytes(u->lora, SD_LORA_TRANSFORMER, rows);
  }
  if (act + KERNEL_SCRATCH > pa) pa = act + KERNEL_SCRATCH;
  sd_plan_add_stage(p, "denoise", tw + pw, pa, cond + lat + 2 * (lat / u->n) * B);
  int mode = level >= SD_PLAN_VAE_TILING    ? SD_DECODE_TILED
             : level >= SD_PLAN_VAE_SLICING ? SD_DECODE_SLICED
                                            : SD_DECODE_BATCH;
  const sd_taesd *tiny = u->r->tiny;
  int64_t dec_act = tiny ? gen_plan_tiny(tiny, 0, u->n, u->h, u->w)
                         : plan_decode(u->vae, u->n, u->h, u->w, mode);
  if (dec_act < 0) return sd_fail(err, SD_ERR_OOM, "out of memory while planning");
  sd_plan_add_stage(p, "decode", tiny ? sd_taesd_weight_bytes(tiny) : u->vae_bytes,
                    dec_act, lat + image);
  return SD_OK;
}

typedef struct step_relay {
  gen_run *r;
  int offset, total;
} step_relay;

static int relay_progress(int step, int steps, void *user) {
  step_relay *s = user;
  return gen_progress(s->offset + step, s->total, s->r);
}

/* Previews of the flow loop's denoised estimate x - sigma v. */
static int relay_prediction(int i, const float *v, const float *x, void *user) {
  step_relay *s = user;
  return gen_preview(s->r, s->r->pv.sched, i, s->offset + i + 1, s->total, v, x, s->r->pv.h,
                     s->r->pv.w);
}

int gen_base_sd3(gen_run *r) {
  const sdgen_params *p = r->p;
  sd3_pipeline *pp = NULL, *own_pp = NULL; /* own_pp: reopened without T5, freed here */
  sd3_models mods = {0};
  cJSON *scfg = NULL;
  sd_mmdit *m = NULL;
  sd_vae *vae = NULL;
  sd_scheduler *sched = NULL;
  sd_rng *rng = NULL;
  float *embeds = NULL, *pooled = NULL, *lat = NULL;
  sd_adapter *lora = NULL;
  int tokens = 0, rc;
  sd3_sources src = {.model = r->model_path, .clip_l = p->clip_l, .clip_g = p->clip_g,
                     .t5 = p->t5, .tokenizers = p->tokenizers_dir, .skip_t5 = p->no_t5};
  if (p->timestep_spacing || p->prediction_type || p->lcm_auto)
    /* FlowMatchEulerDiscreteScheduler has neither setting; no LCM recipe */
    return sd_fail(r->err, SD_ERR_ARG, "%s applies to UNet models (SD 1.x / 2.x / SDXL), not to "
                   "SD3's flow-matching schedule",
                   p->lcm_auto ? "the LCM recipe"
                   : p->timestep_spacing ? "--timestep-spacing" : "--prediction-type");
  double t = sd_now();
  pp = r->model->sd3; /* opened by sdgen_model_load, kept by the handle */
  /* Bind (not read) the transformer and the VAE: their shapes size the plan. */
  if ((rc = sd3_pipeline_bind_models(pp, &mods, r->err))) goto done;
  m = mods.mmdit;
  vae = mods.vae;
  if (r->n_loras) { /* transformer LoRAs (diffusers format), side path until the plan */
    sd_adapter_target tg = {SD_LORA_TRANSFORMER, mods.transformer_weights};
    if ((rc = sd_adapter_load(&lora, r->lora_specs, r->n_loras, &tg, 1, SD_LORA_FAMILY_SD3,
                              r->err)) ||
        (rc = sd_adapter_attach_side(lora, r->err)))
      goto done;
  }
  r->t_load += sd_now() - t;
  sd_monitor_stage(&r->mon, "After model load");
  r->model_type = "sd3";
  int f = sd_vae_downscale(vae), C = m->cfg.in_channels;
  int native = sd_json_int(mods.transformer_config, "sample_size", 128) * f;
  int W = p->width ? p->width : native, H = p->height ? p->height : native;
  int step = f * m->cfg.patch;
  if (W % step || H % step) {
    rc = sd_fail(r->err, SD_ERR_ARG, "width and height must be multiples of %d for this model",
                 step);
    goto done;
  }
  r->width = W;
  r->height = H;
  /* Guidance: Turbo is distilled to run without it; 3.5 Medium (MMDiT-X)
   * is tuned lower than Large. */
  int medium = 0;
  for (int i = 0; i < m->cfg.layers; i++) medium |= m->block[i].dual;
  r->cfg = p->cfg >= 0 ? p->cfg : contains_ci(r->model_path, "turbo") ? 0.0f
                                   : medium                             ? 3.5f
                                                                        : 4.5f;
  int guidance = r->cfg > 1.0f, n = r->n, h = H / f, w = W / f;
  int no_t5 = p->no_t5;

  /* Memory plan. */
  sd3_plan_ctx u = {.m = m, .r = r, .vae = vae, .transformer = (int64_t)sd_weights_total_bytes(mods.transformer_weights),
                    .vae_bytes = (int64_t)sd_weights_total_bytes(mods.vae_weights), .n = n, .h = h, .w = w,
                    .guidance = guidance, .no_t5 = no_t5, .lora = lora};
  for (int i = 0; i < 3 && !rc; i++)
    if (i != SD3_T5 || !no_t5)
      rc = sd3_pipeline_encoder_sizes(pp, (sd3_component)i, guidance ? 2 : 1, T5_TOKENS,
                                      &u.enc[i], r->err);
  if (rc) goto done;
  int64_t budget = p->max_memory > 0 ? p->max_memory : sd_plan_default_budget();
  rc = sd_plan_choose(&r->plan, budget, r->min_level, estimate_sd3, &u, r->err);
  if (rc == SD_ERR_OOM && !no_t5) {
    /* Dropping T5 is the last resort: its part of the prompt becomes zeros,
     * as diffusers does without text_encoder_3. */
    u.no_t5 = 1;
    memset(&u.enc[SD3_T5], 0, sizeof u.enc[SD3_T5]);
    sd_error_clear(r->err);
    rc = sd_plan_choose(&r->plan, budget, r->min_level, estimate_sd3, &u, r->err);
    if (!rc) {
      no_t5 = 1;
      sd_monitor_warn(&r->mon, "the T5 encoder does not fit the memory budget: encoding "
                               "without it (its part of the prompt is zeros)");
    }
  }
  r->have_plan = 1;
  if (rc == SD_ERR_OOM && r->plan.peak > budget) r->refused = 1;
  char text[2048];
  sd_plan_describe(&r->plan, text, sizeof text);
  if (p->on_event) p->on_event(SDGEN_EVENT_PLAN, text, p->user);
  if (rc) goto done;
  /* the refiner is planned now too: one that cannot fit refuses the run
   * before any weight is read */
  if (p->refiner && (rc = gen_plan_refiner(r))) goto done;
  if (r->plan.level > SD_PLAN_RELEASE_TE && r->plan.level > r->min_level) {
    char avail[32], need[32];
    sd_monitor_warn(&r->mon, "Low memory detected (%s budget)",
                    sd_format_size(budget, avail, sizeof avail));
    sd_monitor_info(&r->mon, "   SD3 needs %s to run fully resident; using %s instead",
                    sd_format_size(r->plan.resident_peak, need, sizeof need),
                    sd_plan_level_name(r->plan.level));
  }
  sd_monitor_optimization(&r->mon, "Text encoders run one at a time and are released");
  sd_monitor_optimization(&r->mon, "Enabled attention slicing (flash-style key chunks)");
  if (r->plan.level >= SD_PLAN_VAE_SLICING) sd_monitor_optimization(&r->mon, "Enabled VAE slicing");
  if (r->plan.level >= SD_PLAN_VAE_TILING) sd_monitor_optimization(&r->mon, "Enabled VAE tiling");
  if (r->plan.level >= SD_PLAN_STREAMING) {
    sd_monitor_optimization(&r->mon, "Enabled weight streaming (one MMDiT block resident)");
    sd_monitor_optimization(&r->mon, "Enabled text-encoder weight streaming (one layer resident)");
    sd_mmdit_set_weight_streaming(m, 1);
  }
  if (no_t5) sd_monitor_optimization(&r->mon, "T5 left out (--no-t5)");
  if (lora) {
    int merged = r->plan.level < SD_PLAN_STREAMING;
    r->lora_mode = merged ? "merged" : "side path";
    sd_monitor_optimization(&r->mon, "LoRA %s (%d weights)",
                            merged ? "merged into F32 copies of the touched weights"
                                   : "applied as a low-rank side path",
                            sd_adapter_touched(lora, SD_LORA_TRANSFORMER));
  }
  if (p->dry_run) {
    r->dry_run_done = 1;
    goto done;
  }
  if (no_t5 != p->no_t5) { /* reopen without T5 (the handle keeps its own); the bound
                             * transformer and VAE own their weights and stay */
    src.skip_t5 = 1;
    if ((rc = sd3_pipeline_open(&own_pp, &src, r->err))) goto done;
    pp = own_pp;
  }

  sd3_pipeline_set_encoder_streaming(pp, r->plan.level >= SD_PLAN_STREAMING);
  sd_monitor_cleanup(&r->mon, "Cleaning memory before generation...");
  sd_monitor_stage(&r->mon, "Before generation");
  t = sd_now();
  const char *prompts[2] = {p->negative_prompt ? p->negative_prompt : "",
                            r->prompt ? r->prompt : p->prompt};
  if ((rc = sd3_encode_prompts(pp, guidance ? prompts : prompts + 1, guidance ? 2 : 1,
                               T5_TOKENS, &embeds, &pooled, &tokens, r->err)))
    goto done;
  r->t_encode = sd_now() - t;
  sd_monitor_stage(&r->mon, "After text encoding");
  if (lora && r->plan.level < SD_PLAN_STREAMING &&
      (rc = sd_adapter_merge(lora, SD_LORA_TRANSFORMER, r->err)))
    goto done;

  int64_t per = (int64_t)C * h * w;
  lat = sd_alloc(sizeof(float) * per * n);
  rng = sd_rng_new((sd_rng_kind)sd_rng_kind_parse(p->rng ? p->rng : "cpu"), p->seed);
  if (!lat || !rng) {
    rc = sd_fail(r->err, SD_ERR_OOM, "out of memory");
    goto done;
  }
  if ((rc = sd3_pipeline_scheduler_config(pp, &scfg, r->err))) goto done;
  sd_sampler kind = p->sampler ? (sd_sampler)sd_sampler_parse(p->sampler) : SD_SAMPLER_DEFAULT;
  if (kind != SD_SAMPLER_DEFAULT && kind != SD_SAMPLER_FLOW_EULER) {
    rc = sd_fail(r->err, SD_ERR_ARG, "SD3 models sample with flow_euler only (got %s)",
                 p->sampler);
    goto done;
  }
  r->stage_start = t = sd_now();
  /* A rerun after a NaN/Inf output (gen_guard, in fp32) starts again from
   * the seed, so it draws the same noise. */
  gen_guard g;
  gen_guard_begin(&g, "denoise");
  do {
    /* All images' noise in one draw, as diffusers does for a batch. */
    sd_rng_free(rng);
    rng = sd_rng_new((sd_rng_kind)sd_rng_kind_parse(p->rng ? p->rng : "cpu"), p->seed);
    if (!rng) {
      rc = sd_fail(r->err, SD_ERR_OOM, "out of memory");
      break;
    }
    sd_rng_randn(rng, lat, per * n);
    for (int b = 0; b < n && !rc; b++) {
      sd_scheduler_free(sched);
      sched = NULL;
      if ((rc = sd_scheduler_create(&sched, scfg, SD_SAMPLER_DEFAULT, NULL, r->err)) ||
          (rc = sd_scheduler_set_timesteps(sched, r->steps, r->err)))
        break;
      r->sampler = sd_scheduler_kind(sched);
      float sigma = sd_scheduler_init_noise_sigma(sched);
      for (int64_t i = 0; i < per; i++) lat[per * b + i] *= sigma;
      step_relay relay = {r, b * r->steps, n * r->steps};
      r->pv.sched = sched;
      r->pv.h = h;
      r->pv.w = w;
      int pv = r->preview && p->preview_every > 0 && p->on_preview;
      rc = sd3_denoise_ex(m, sched, lat + per * b, h, w, embeds, pooled, tokens, r->cfg, 0,
                          relay_progress, &relay, pv ? relay_prediction : NULL, &relay,
                          r->err);
    }
    if (!rc) rc = gen_guard_check(r, &g, lat, per * n);
  } while (!rc && g.rerun);
  gen_guard_end(&g);
  r->t_denoise = sd_now() - t;
  if (rc) goto done;
  sd_monitor_stage(&r->mon, "After generation");
  if (!p->output_in_memory) { /* nothing goes to disk in memory mode */
    snprintf(r->latents_path, sizeof r->latents_path, "%s/output_%s.latents.safetensors",
             p->output_dir, r->stamp);
    sd_tensor lt = {.dtype = SD_F32, .ndim = 4, .shape = {n, C, h, w}, .data = lat};
    sd_named_tensor nt = {"latents", &lt};
    if ((rc = sd_write_latents(r->latents_path, &nt, r->model_path, r->err))) goto done;
  }
  /* The transformer is done: its pages leave before the VAE runs. */
  sd3_models_drop_transformer(pp, &mods);
  m = NULL;
  sd_monitor_cleanup(&r->mon, "Releasing the transformer before the decode...");
  t = sd_now();
  r->images = sd_alloc(sizeof(float) * n * 3 * H * W);
  if (!r->images) {
    rc = sd_fail(r->err, SD_ERR_OOM, "out of memory");
    goto done;
  }
  int mode = r->plan.level >= SD_PLAN_VAE_TILING    ? SD_DECODE_TILED
             : r->plan.level >= SD_PLAN_VAE_SLICING ? SD_DECODE_SLICED
                                                    : SD_DECODE_BATCH;
  gen_guard_begin(&g, "decode");
  do {
    rc = r->tiny ? sd_decode_latents_tiny(r->tiny, lat, n, h, w, r->images, r->err)
                 : sd_decode_latents(vae, lat, n, h, w, mode, r->images, r->err);
    if (!rc) rc = gen_guard_check(r, &g, r->images, (int64_t)n * 3 * H * W);
  } while (!rc && g.rerun);
  gen_guard_end(&g);
  if (rc) goto done;
  r->t_decode = sd_now() - t;
  sd_monitor_stage(&r->mon, "After decode");
done:
  sd_free(embeds);
  sd_free(pooled);
  sd_free(lat);
  sd_rng_free(rng);
  sd_scheduler_free(sched);
  cJSON_Delete(scfg);
  sd3_models_free(pp, &mods);
  sd_adapter_free(lora); /* after the transformer set that points at its terms */
  sd3_pipeline_free(own_pp);
  return rc;
}
