/* Base and refiner stages for the UNet family (SD 1.x/2.x, SDXL). */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/memprobe.h"
#include "models/vae_tiled.h"
#include "pipeline/planner.h"
#include "io/image.h"
#include "io/json.h"
#include "pipeline/generate_internal.h"
#include "pipeline/unet_pipeline.h"
#include "tensor/ops.h"

/* LoRAs are merged below weight streaming (room for the F32 copies) and
 * stay a side path when weights are streamed. */
static int lora_merged(const sd_plan *pl) {
  return !pl || pl->level < SD_PLAN_STREAMING;
}

/* Conditioning for the prompt, then releases the text encoders. */
static int encode(gen_run *r, sd_unet_model *m, const sd_plan *pl, int n, float cfg, int W,
                  int H, sd_conditioning *cond) {
  const sdgen_params *p = r->p;
  double t = sd_now();
  int rc;
  /* merged LoRAs: the text encoders' copies now, the UNet's after the
   * encoders are gone (the plan counts them in those stages) */
  if (lora_merged(pl) && m->adapter &&
      ((rc = sd_adapter_merge(m->adapter, SD_LORA_TE1, r->err)) ||
       (rc = sd_adapter_merge(m->adapter, SD_LORA_TE2, r->err))))
    return rc;
  sd_prompt_options po = {.prompt = r->prompt ? r->prompt : p->prompt, .negative_prompt = p->negative_prompt, .n = n,
                          .guidance = cfg > 1.0f, .width = W, .height = H,
                          .aesthetic_score = p->aesthetic_score,
                          .negative_aesthetic_score = p->negative_aesthetic_score};
  rc = sd_encode_prompt(m, &po, cond, r->err);
  r->t_encode += sd_now() - t;
  if (rc) return rc;
  if (!pl || pl->level != SD_PLAN_RESIDENT) {
    if (m == r->model->unet && !m->adapter) { /* a handle keeps them parsed and mapped */
      if (m->w_te1) sd_weights_release_pages(m->w_te1);
      if (m->w_te2) sd_weights_release_pages(m->w_te2);
    } else { /* merged LoRA copies go with them (a handle reloads them next run) */
      sd_unet_model_drop_text_encoders(m);
    }
    sd_monitor_cleanup(&r->mon, "Releasing text encoders...");
  }
  if (lora_merged(pl) && m->adapter &&
      (rc = sd_adapter_merge(m->adapter, SD_LORA_UNET, r->err)))
    return rc;
  return SD_OK;
}

/* Saves latents next to the output before the decode (nothing lost). */
static int save_latents(gen_run *r, const float *lat, int n, int C, int h, int w,
                        const char *model) {
  if (r->p->output_in_memory) return SD_OK; /* nothing goes to disk */
  snprintf(r->latents_path, sizeof r->latents_path, "%s/output_%s.latents.safetensors",
           r->p->output_dir, r->stamp);
  sd_tensor lt = {.dtype = SD_F32, .ndim = 4, .shape = {n, C, h, w}, .data = (void *)lat};
  sd_named_tensor nt = {"latents", &lt};
  return sd_write_latents(r->latents_path, &nt, model, r->err);
}

static int decode_mode(const sd_plan *pl) {
  int level = pl ? pl->level : SD_PLAN_RELEASE_TE;
  return level >= SD_PLAN_VAE_TILING    ? SD_DECODE_TILED
         : level >= SD_PLAN_VAE_SLICING ? SD_DECODE_SLICED
                                        : SD_DECODE_BATCH;
}

/* The VAE decode under the plan, rerun once in fp32 on a NaN/Inf output. */
static int decode(gen_run *r, const sd_plan *pl, const char *stage, const sd_vae *vae,
                  const float *lat, int n, int h, int w, float *img) {
  double t = sd_now();
  int f = r->tiny ? sd_taesd_get_config(r->tiny)->decoder_factor : sd_vae_downscale(vae);
  int64_t total = (int64_t)n * 3 * h * w * f * f;
  gen_guard g;
  gen_guard_begin(&g, stage);
  int rc;
  do {
    rc = r->tiny ? sd_decode_latents_tiny(r->tiny, lat, n, h, w, img, r->err)
                 : sd_decode_latents(vae, lat, n, h, w, decode_mode(pl), img, r->err);
    if (!rc) rc = gen_guard_check(r, &g, img, total);
  } while (!rc && g.rerun);
  gen_guard_end(&g);
  r->t_decode += sd_now() - t;
  return rc;
}

/* ---- memory plan ---- */

typedef struct unet_plan_ctx {
  sd_unet_model *m;
  const gen_run *r; /* the tiny VAE (r->tiny) and the previews */
  int n, h, w, guidance;
  int img2img; /* the stage VAE-encodes an image (init image, refiner image mode) */
  int handoff; /* the stage continues from handed-off latents (refiner latent mode) */
  int carried_image; /* the stage starts with r->images alive (refiner image mode) */
  /* plan-mode results reused across levels: UNet by batch (full /
   * sequential), decode by mode, encode by batch; 0 = not measured yet */
  int64_t unet_act[2], dec_act[3], enc_act[2];
  int64_t te_bytes, unet_bytes, dec_bytes, enc_bytes; /* stored weight sizes */
  /* LoRAs: bytes the merged copies add (levels below streaming), bytes of
   * the side-path tensors (streaming levels) */
  int64_t te_merge, unet_merge, te_side, unet_side;
} unet_plan_ctx;

static int64_t prefix_bytes(const sd_weights *w, const char *prefix) {
  int64_t b = 0;
  size_t n = strlen(prefix);
  for (int i = 0; w && i < sd_weights_count(w); i++)
    if (strncmp(sd_weights_name_at(w, i), prefix, n) == 0)
      b += (int64_t)sd_tensor_nbytes(sd_weights_tensor_at(w, i));
  return b;
}

/* Kernel scratch (converted weight panels, conv tiles, bf16 packing,
 * attention blocks) is part of every plan-mode peak below: in plan mode each
 * kernel takes the address space it would allocate (tensor/ops_internal.h,
 * sd_plan_scratch), at the moment it would. */

/* Activation peak of one UNet forward, measured by running it in plan mode. */
static int64_t plan_unet_forward(const sd_unet_model *m, int B, int h, int w, int ctx_len,
                                 int ctx_dim, int pooled, int n_ids) {
  const sd_unet_config *c = sd_unet_get_config(m->unet);
  sd_plan_begin();
  float *x = sd_alloc(sizeof(float) * B * c->in_channels * h * w);
  float *out = sd_alloc(sizeof(float) * B * c->out_channels * h * w);
  float *ctx = sd_alloc(sizeof(float) * B * ctx_len * ctx_dim);
  float *ts = sd_calloc((size_t)B, sizeof(float));
  float *te = pooled ? sd_calloc((size_t)B * pooled, sizeof(float)) : NULL;
  float *ids = n_ids ? sd_calloc((size_t)B * n_ids, sizeof(float)) : NULL;
  float *tc = c->time_cond_proj_dim ? sd_calloc((size_t)B * c->time_cond_proj_dim, sizeof(float))
                                    : NULL;
  int64_t base = sd_alloc_get_stats().bytes_in_use;
  int64_t peak = -1;
  if (x && out && ctx && ts && (tc || !c->time_cond_proj_dim)) {
    sd_unet_cond cond = {ctx, ctx_len, te, ids, n_ids, tc};
    sd_error e = {0};
    sd_alloc_reset_peak();
    if (sd_unet_forward(m->unet, x, B, h, w, ts, &cond, out, 0, &e) == SD_OK)
      peak = sd_alloc_get_stats().peak_bytes - base;
  }
  sd_free(x);
  sd_free(out);
  sd_free(ctx);
  sd_free(ts);
  sd_free(te);
  sd_free(ids);
  sd_free(tc);
  sd_plan_end();
  return peak; /* -1: the plan run itself failed (out of memory) */
}

static int64_t plan_vae_decode(const sd_vae *vae, int n, int h, int w, int mode) {
  int f = sd_vae_downscale(vae);
  const sd_vae_config *c = sd_vae_get_config(vae);
  sd_plan_begin();
  float *lat = sd_calloc((size_t)n * c->latent_channels * h * w, sizeof(float));
  float *img = sd_alloc(sizeof(float) * n * c->out_channels * h * f * w * f);
  int64_t base = sd_alloc_get_stats().bytes_in_use, peak = -1;
  if (lat && img) {
    sd_error e = {0};
    sd_alloc_reset_peak();
    if (sd_decode_latents(vae, lat, n, h, w, mode, img, &e) == SD_OK)
      peak = sd_alloc_get_stats().peak_bytes - base;
  }
  sd_free(lat);
  sd_free(img);
  sd_plan_end();
  return peak; /* -1: the plan run itself failed (out of memory) */
}

static int estimate_unet(void *user, int level, sd_plan *p, sd_error *err) {
  unet_plan_ctx *u = user;
  sd_unet_model *m = u->m;
  const sd_unet_config *c = sd_unet_get_config(m->unet);
  int f = sd_vae_downscale(m->vae), n = u->n, h = u->h, w = u->w;
  int B = u->guidance ? 2 * n : n;
  int merged = lora_merged(&(sd_plan){.level = level});
  int64_t te = u->te_bytes + (merged ? u->te_merge : u->te_side);
  int64_t unet = u->unet_bytes + (merged ? u->unet_merge : u->unet_side);
  int64_t dec = u->dec_bytes, enc = u->enc_bytes;
  const sd_taesd *tiny = u->r ? u->r->tiny : NULL;
  int keep_te = level == SD_PLAN_RESIDENT;
  int ctx_dim = (m->te1 ? m->te1->cfg.hidden : 0) + (m->te2 && m->family != SD_MODEL_SD1
                                                          ? m->te2->cfg.hidden : 0);
  int pooled = m->family == SD_MODEL_SD1 || !m->te2 ? 0 : m->te2->cfg.projection_dim;
  int n_ids = pooled ? (m->family == SD_MODEL_SDXL_REFINER ? 5 : 6) : 0;
  int ctx_len = 77;
  int64_t lat = 4LL * n * c->in_channels * h * w;
  int64_t image = 4LL * n * 3 * h * f * w * f;
  int64_t cond = 4LL * B * (ctx_len * (int64_t)ctx_dim + pooled + n_ids);
  int64_t enc_act = 0;
  if (m->te1) enc_act = sd_clip_scratch_bytes(&m->te1->cfg, 1, ctx_len);
  if (m->te2 && sd_clip_scratch_bytes(&m->te2->cfg, 1, ctx_len) > enc_act)
    enc_act = sd_clip_scratch_bytes(&m->te2->cfg, 1, ctx_len);
  int64_t te_resident = te;
  if (level >= SD_PLAN_STREAMING) /* one encoder layer at a time */
    te_resident = (m->te1 ? sd_clip_largest_layer_bytes(m->te1) : 0) +
                  (m->te2 ? sd_clip_largest_layer_bytes(m->te2) : 0);
  /* Buffers the stage holds besides the conditioning and the latents: the
   * refiner's input (image or handed-off latents) from its start; during
   * the denoise, an img2img stage's input image and noise draw, or the
   * copy of the handed-off latents an fp32 rerun starts from. */
  int64_t carried = u->carried_image ? image : u->handoff ? lat : 0;
  int64_t side = u->img2img ? image + lat : u->handoff ? lat : 0;
  sd_plan_add_stage(p, "encode", te_resident, enc_act + (4 << 20), cond + carried);
  int64_t held = keep_te ? te : 0;
  int64_t enc_peak = 0, act, dec_act;
  if (u->img2img) {
    int one = level >= SD_PLAN_VAE_SLICING;
    if (!u->enc_act[one])
      u->enc_act[one] = tiny ? gen_plan_tiny(tiny, 1, one ? 1 : n, h, w)
                             : plan_vae_decode(m->vae, one ? 1 : n, h, w, 0);
    enc_peak = u->enc_act[one];
    if (enc_peak < 0) goto oom;
    sd_plan_add_stage(p, "vae encode", held + enc, enc_peak, cond + lat + side);
  }
  int64_t unet_w = level >= SD_PLAN_STREAMING ? sd_unet_largest_block_bytes(m->unet) : unet;
  int Bd = level >= SD_PLAN_SEQUENTIAL ? B / n : B; /* images denoised at once, x2 for CFG */
  int seq = Bd != B;
  if (!u->unet_act[seq])
    u->unet_act[seq] = plan_unet_forward(m, Bd, h, w, ctx_len, ctx_dim, pooled, n_ids);
  act = u->unet_act[seq];
  if (act < 0) goto oom;
  /* previews decode between two steps: the UNet's activations are gone,
   * its weights stay */
  int64_t pw = 0, pa = u->r ? gen_preview_bytes(u->r, h, w, &pw) : 0;
  if (pa < 0) goto oom;
  sd_plan_add_stage(p, "denoise", held + unet_w + pw, act > pa ? act : pa,
                    cond + lat + side + 2 * (lat / n) * Bd);
  int mode = decode_mode(p);
  if (!u->dec_act[mode])
    u->dec_act[mode] = tiny ? gen_plan_tiny(tiny, 0, n, h, w) : plan_vae_decode(m->vae, n, h, w, mode);
  dec_act = u->dec_act[mode];
  if (dec_act < 0) goto oom;
  sd_plan_add_stage(p, "decode", held + dec + (level == SD_PLAN_RESIDENT ? unet : 0),
                    dec_act, lat + image);
  return SD_OK;
oom:
  return sd_fail(err, SD_ERR_OOM, "out of memory while planning");
}

/* Evaluates the levels for model m and chooses one (sd_plan_choose). */
static int choose_plan(gen_run *r, sd_unet_model *m, unet_plan_ctx *u, int min_level,
                       sd_plan *out) {
  /* weight sizes are the same at every level: summed once here */
  u->m = m;
  u->te_bytes = (m->w_te1 ? (int64_t)sd_weights_total_bytes(m->w_te1) : 0) +
                (m->w_te2 ? (int64_t)sd_weights_total_bytes(m->w_te2) : 0);
  u->unet_bytes = (int64_t)sd_weights_total_bytes(m->w_unet);
  u->dec_bytes = prefix_bytes(m->w_vae, "decoder.") + prefix_bytes(m->w_vae, "post_quant_conv.");
  u->enc_bytes = prefix_bytes(m->w_vae, "encoder.") + prefix_bytes(m->w_vae, "quant_conv.");
  if (r->tiny) /* the tiny VAE replaces both halves */
    u->dec_bytes = u->enc_bytes = sd_taesd_weight_bytes(r->tiny);
  u->r = r;
  u->te_merge = sd_adapter_merge_extra_bytes(m->adapter, SD_LORA_TE1) +
                sd_adapter_merge_extra_bytes(m->adapter, SD_LORA_TE2);
  u->unet_merge = sd_adapter_merge_extra_bytes(m->adapter, SD_LORA_UNET);
  u->te_side = sd_adapter_side_bytes(m->adapter, SD_LORA_TE1) +
               sd_adapter_side_bytes(m->adapter, SD_LORA_TE2);
  u->unet_side = sd_adapter_side_bytes(m->adapter, SD_LORA_UNET);
  int64_t budget = r->p->max_memory > 0 ? r->p->max_memory : sd_plan_default_budget();
  int rc = sd_plan_choose(out, budget, min_level, estimate_unet, u, r->err);
  if (rc == SD_ERR_OOM && out->peak > budget) r->refused = 1;
  return rc;
}

/* Reports the chosen plan (low-memory warning, optimizations) and sets
 * the model's streaming flags. `who` names the stage in the lines. */
static void apply_plan(gen_run *r, sd_unet_model *m, const sd_plan *pl, int min_level, int n,
                       const char *who) {
  if (pl->level > SD_PLAN_RELEASE_TE && pl->level > min_level) { /* the budget forced it */
    sd_mem_sample s;
    sd_mem_probe(&s);
    char avail[32], need[32];
    sd_monitor_warn(&r->mon, "Low memory detected (%s available)",
                    sd_format_size(r->p->max_memory > 0 ? pl->budget : s.sys_available, avail,
                                   sizeof avail));
    sd_monitor_info(&r->mon, "   %s%s needs %s to run fully resident; using %s instead%s", who,
                    sd_model_family_name(m->family),
                    sd_format_size(pl->resident_peak, need, sizeof need),
                    sd_plan_level_name(pl->level),
                    pl->level >= SD_PLAN_STREAMING ? " (about 1.1x slower)" : "");
    if (m->family != SD_MODEL_SD1 && !who[0])
      sd_monitor_info(&r->mon, "   A smaller alternative: --quality fast (SD 1.5, 2.6GB)");
  }
  if (pl->level >= SD_PLAN_RELEASE_TE)
    sd_monitor_optimization(&r->mon, "%sRelease text encoders after encoding", who);
  sd_monitor_optimization(&r->mon, "%sEnabled attention slicing (flash-style key chunks)", who);
  if (pl->level >= SD_PLAN_VAE_SLICING)
    sd_monitor_optimization(&r->mon, "%sEnabled VAE slicing", who);
  if (pl->level >= SD_PLAN_VAE_TILING)
    sd_monitor_optimization(&r->mon, "%sEnabled VAE tiling", who);
  if (pl->level >= SD_PLAN_STREAMING) {
    sd_monitor_optimization(&r->mon, "%sEnabled weight streaming (one UNet block resident)", who);
    sd_unet_set_weight_streaming(m->unet, 1);
    if (m->te1) m->te1->stream_weights = 1;
    if (m->te2) m->te2->stream_weights = 1;
  }
  if (pl->level >= SD_PLAN_SEQUENTIAL && n > 1)
    sd_monitor_optimization(&r->mon, "%sDenoising the %d images one at a time", who, n);
  if (m->adapter) {
    int touched = sd_adapter_touched(m->adapter, SD_LORA_UNET) +
                  sd_adapter_touched(m->adapter, SD_LORA_TE1) +
                  sd_adapter_touched(m->adapter, SD_LORA_TE2);
    r->lora_mode = lora_merged(pl) ? "merged" : "side path";
    sd_monitor_optimization(&r->mon, "%sLoRA %s (%d weights)", who,
                            lora_merged(pl) ? "merged into F32 copies of the touched weights"
                                            : "applied as a low-rank side path",
                            touched);
  }
}

static void emit_plan(gen_run *r, const sd_plan *pl, const char *prefix) {
  char text[2048];
  size_t u = (size_t)snprintf(text, sizeof text, "%s", prefix);
  sd_plan_describe(pl, text + u, sizeof text - u);
  if (r->p->on_event) r->p->on_event(SDGEN_EVENT_PLAN, text, r->p->user);
}

/* Chooses the plan for this run and reports it; sets r->plan. */
static int plan_run(gen_run *r, sd_unet_model *m, int n, int h, int w, int guidance) {
  unet_plan_ctx u = {.n = n, .h = h, .w = w, .guidance = guidance,
                     .img2img = r->p->init_image != NULL};
  int rc = choose_plan(r, m, &u, r->min_level, &r->plan);
  emit_plan(r, &r->plan, "");
  r->have_plan = 1;
  if (rc) return rc;
  apply_plan(r, m, &r->plan, r->min_level, n, "");
  return SD_OK;
}

static float refiner_cfg(const sdgen_params *p, const sd_unet_model *m) {
  return p->cfg >= 0 ? p->cfg : (m->family == SD_MODEL_SD1 ? 7.5f : 5.0f);
}

int gen_plan_refiner(gen_run *r) {
  const sdgen_params *p = r->p;
  sd_unet_model *m = NULL;
  sd_load_options lo = {.path = r->refiner_path, .tokenizers_dir = p->tokenizers_dir,
                        .prefer_fp16 = p->prefer_fp16};
  int rc = sd_unet_model_load(&m, &lo, r->err); /* maps the weights, reads none */
  if (rc) return rc;
  int f = sd_vae_downscale(m->vae), latent_mode = p->refiner_switch > 0;
  unet_plan_ctx u = {.n = r->n, .h = r->height / f, .w = r->width / f,
                     .guidance = refiner_cfg(p, m) > 1.0f, .img2img = !latent_mode,
                     .handoff = latent_mode, .carried_image = !latent_mode};
  /* --plan applies to the refiner too; recovery raises only the base's level */
  rc = choose_plan(r, m, &u, p->min_plan, &r->refiner_plan);
  emit_plan(r, &r->refiner_plan, "Refiner ");
  r->have_refiner_plan = !rc;
  r->plan.refiner = rc ? NULL : &r->refiner_plan;
  sd_unet_model_free(m);
  return rc;
}

/* The batch one image at a time: image i gets rows [negative i, positive i]
 * of the conditioning and a fresh copy of the schedule. */
static int denoise_sequential(gen_run *r, const sd_unet_model *m, sd_scheduler *sched,
                              const sd_conditioning *cond, const sd_denoise_options *o,
                              float *lat, int n, int h, int w, sd_rng *rng) {
  int halves = cond->batch / n, C = sd_unet_get_config(m->unet)->in_channels;
  int64_t per = (int64_t)C * h * w, ctx = (int64_t)cond->ctx_len * cond->ctx_dim;
  sd_conditioning one = *cond;
  one.batch = halves;
  one.context = sd_alloc(sizeof(float) * halves * ctx);
  one.pooled = cond->pooled ? sd_alloc(sizeof(float) * halves * cond->pooled_dim) : NULL;
  one.time_ids = cond->time_ids ? sd_alloc(sizeof(float) * halves * cond->n_time_ids) : NULL;
  int rc = SD_OK;
  if (!one.context || (cond->pooled && !one.pooled) || (cond->time_ids && !one.time_ids))
    rc = sd_fail(r->err, SD_ERR_OOM, "out of memory");
  for (int i = 0; i < n && !rc; i++) {
    for (int k = 0; k < halves; k++) {
      int row = k * n + i;
      memcpy(one.context + k * ctx, cond->context + row * ctx, sizeof(float) * ctx);
      if (one.pooled)
        memcpy(one.pooled + (int64_t)k * cond->pooled_dim,
               cond->pooled + (int64_t)row * cond->pooled_dim, sizeof(float) * cond->pooled_dim);
      if (one.time_ids)
        memcpy(one.time_ids + (int64_t)k * cond->n_time_ids,
               cond->time_ids + (int64_t)row * cond->n_time_ids, sizeof(float) * cond->n_time_ids);
    }
    /* the scheduler keeps per-run state: restart its schedule per image */
    if (i > 0 && (rc = sd_scheduler_set_timesteps(sched, r->steps, r->err))) break;
    if (o->begin_index) sd_scheduler_set_begin_index(sched, o->begin_index);
    rc = sd_denoise(m, sched, &one, o, lat + per * i, 1, h, w, rng, r->err);
  }
  sd_free(one.context);
  sd_free(one.pooled);
  sd_free(one.time_ids);
  return rc;
}

/* Previews: the denoised estimate of each step (gen_preview decides
 * which steps are shown). */
static int unet_prediction(int i, const float *mo, const float *x, void *user) {
  gen_run *r = user;
  return gen_preview(r, r->pv.sched, i, i - r->pv.begin + 1, r->pv.total - r->pv.begin, mo, x,
                     r->pv.h, r->pv.w);
}

static void preview_hook(gen_run *r, sd_denoise_options *o, const sd_scheduler *sched, int h,
                         int w) {
  if (!r->preview || r->p->preview_every <= 0 || !r->p->on_preview) return;
  int total = sd_scheduler_num_steps(sched);
  if (o->end_index > 0 && o->end_index < total) total = o->end_index;
  r->pv.sched = sched;
  r->pv.begin = o->begin_index;
  r->pv.total = total;
  r->pv.h = h;
  r->pv.w = w;
  o->on_prediction = unet_prediction;
}

/* Where a denoise starts: pure noise (txt2img), an image to VAE-encode and
 * noise to `begin` (img2img, refiner image mode), or latents handed off by
 * the base (refiner latent mode). */
typedef struct denoise_input {
  const float *image; /* (n, 3, H, W) in [-1, 1], or NULL */
  const float *start; /* (n, C, h, w) hand-off latents, or NULL */
  float *noise;       /* scratch for the add_noise draw (with image) */
  int sequential;     /* the plan's one-image-at-a-time batch */
} denoise_input;

static int start_latents(gen_run *r, const sd_unet_model *m, sd_scheduler *sched, int begin,
                         const denoise_input *in, sd_rng *rng, float *lat, int n, int h,
                         int w) {
  int C = sd_unet_get_config(m->unet)->in_channels, f = sd_vae_downscale(m->vae);
  int64_t N = (int64_t)n * C * h * w;
  if (in->start) {
    memcpy(lat, in->start, sizeof(float) * N);
  } else if (in->image) {
    int rc = r->tiny ? sd_encode_image_tiny(r->tiny, in->image, n, h * f, w * f, lat, r->err)
                     : sd_encode_image(m->vae, in->image, n, h * f, w * f, rng, lat, r->err);
    if (rc) return rc;
    sd_rng_randn(rng, in->noise, N);
    sd_scheduler_add_noise(sched, begin, lat, in->noise, N);
  } else {
    sd_rng_randn(rng, lat, N);
    float sigma = sd_scheduler_init_noise_sigma(sched);
    for (int64_t i = 0; i < N; i++) lat[i] *= sigma;
  }
  return SD_OK;
}

/* The starting latents and the denoise loop, everything drawn from the
 * seed, so that the fp32 rerun after a NaN/Inf output (gen_guard) repeats
 * exactly the same draws. Output in lat (n, C, h, w). */
static int denoise_stage(gen_run *r, const sd_unet_model *m, sd_scheduler *sched,
                         const sd_conditioning *cond, const sd_denoise_options *o, int steps,
                         const denoise_input *in, float *lat, int n, int h, int w,
                         const char *stage) {
  const sdgen_params *p = r->p;
  int64_t N = (int64_t)n * sd_unet_get_config(m->unet)->in_channels * h * w;
  gen_guard g;
  gen_guard_begin(&g, stage);
  int rc;
  do {
    sd_rng *rng = sd_rng_new((sd_rng_kind)sd_rng_kind_parse(p->rng ? p->rng : "cpu"), p->seed);
    if (!rng) {
      rc = sd_fail(r->err, SD_ERR_OOM, "out of memory");
      break;
    }
    /* a rerun restarts the scheduler's per-run state */
    rc = g.reran ? sd_scheduler_set_timesteps(sched, steps, r->err) : SD_OK;
    if (!rc && (in->image || in->start)) sd_scheduler_set_begin_index(sched, o->begin_index);
    if (!rc) rc = start_latents(r, m, sched, o->begin_index, in, rng, lat, n, h, w);
    r->stage_start = sd_now();
    if (!rc)
      rc = in->sequential ? denoise_sequential(r, m, sched, cond, o, lat, n, h, w, rng)
                          : sd_denoise(m, sched, cond, o, lat, n, h, w, rng, r->err);
    sd_rng_free(rng);
    if (!rc) rc = gen_guard_check(r, &g, lat, N);
  } while (!rc && g.rerun);
  gen_guard_end(&g);
  return rc;
}

int gen_base_unet(gen_run *r) {
  const sdgen_params *p = r->p;
  sd_unet_model *m = NULL;
  sd_scheduler *sched = NULL;
  sd_conditioning cond = {0};
  float *lat = NULL, *init = NULL, *noise = NULL, *tcond = NULL;
  cJSON *overrides = NULL;
  /* the handle's model, reloaded when this run's LoRA set differs */
  int rc = gen_model_unet(r, &m);
  if (rc) return rc;
  sd_monitor_stage(&r->mon, "After model load");
  r->model_type = sd_model_family_name(m->family);

  const sd_unet_config *uc = sd_unet_get_config(m->unet);
  int f = sd_vae_downscale(m->vae);
  int W = p->width ? p->width : uc->sample_size * f;
  int H = p->height ? p->height : uc->sample_size * f;
  if (W % f || H % f) {
    rc = sd_fail(r->err, SD_ERR_ARG, "width and height must be multiples of %d", f);
    goto done;
  }
  r->width = W;
  r->height = H;
  /* An LCM-distilled UNet takes the guidance as an embedding input
   * (LatentConsistencyModelPipeline, default 8.5): never a CFG batch. */
  int lcm_unet = uc->time_cond_proj_dim > 0;
  r->cfg = p->cfg >= 0 ? p->cfg : lcm_unet ? 8.5f : (m->family == SD_MODEL_SD1 ? 7.5f : 5.0f);
  float cfg_batch = lcm_unet ? 0.0f : r->cfg;
  int n = r->n, h = H / f, w = W / f, C = uc->in_channels;
  sd_sampler kind = p->sampler ? (sd_sampler)sd_sampler_parse(p->sampler) : SD_SAMPLER_DEFAULT;
  if (p->timestep_spacing || p->prediction_type) {
    overrides = cJSON_CreateObject();
    if (!overrides ||
        (p->timestep_spacing &&
         !cJSON_AddStringToObject(overrides, "timestep_spacing", p->timestep_spacing)) ||
        (p->prediction_type &&
         !cJSON_AddStringToObject(overrides, "prediction_type", p->prediction_type)))
      goto oom;
  }
  if ((rc = sd_scheduler_create(&sched, m->scheduler_config, kind, overrides, r->err)) ||
      (rc = sd_scheduler_set_timesteps(sched, r->steps, r->err)))
    goto done;
  r->sampler = sd_scheduler_kind(sched);
  if (lcm_unet) {
    float wv = r->cfg - 1.0f;
    if (!(tcond = sd_alloc(sizeof(float) * n * uc->time_cond_proj_dim))) goto oom;
    for (int b = 0; b < n; b++)
      sd_unet_guidance_embedding(tcond + (int64_t)b * uc->time_cond_proj_dim, &wv, 1,
                                 uc->time_cond_proj_dim);
  }
  if ((rc = plan_run(r, m, n, h, w, cfg_batch > 1.0f))) goto done;
  /* Both stages are planned before any weight is read: a refiner that
   * cannot fit refuses the run here, not after the base has run. */
  if (p->refiner && (rc = gen_plan_refiner(r))) goto done;
  if (p->dry_run) {
    r->dry_run_done = 1;
    goto done;
  }

  sd_monitor_cleanup(&r->mon, "Cleaning memory before generation...");
  sd_monitor_stage(&r->mon, "Before generation");
  if ((rc = encode(r, m, r->have_plan ? &r->plan : NULL, n, cfg_batch, W, H, &cond))) goto done;

  int64_t N = (int64_t)n * C * h * w;
  lat = sd_alloc(sizeof(float) * N);
  if (!lat) goto oom;
  denoise_input in = {.sequential = r->have_plan && r->plan.level >= SD_PLAN_SEQUENTIAL && n > 1};
  int begin = 0;
  if (p->init_image) {
    sd_image img = {0};
    if ((rc = sd_image_read(p->init_image, &img, r->err))) goto done;
    if (img.width != W || img.height != H) {
      rc = sd_fail(r->err, SD_ERR_ARG,
                   "init image %s is %dx%d but the output is %dx%d (pass --width %d --height %d)",
                   p->init_image, img.width, img.height, W, H, img.width - img.width % f,
                   img.height - img.height % f);
      sd_image_free(&img);
      goto done;
    }
    init = sd_alloc(sizeof(float) * n * 3 * H * W);
    noise = sd_alloc(sizeof(float) * N);
    if (!init || !noise) {
      sd_image_free(&img);
      goto oom;
    }
    for (int b = 0; b < n; b++) {
      float *dst = init + (int64_t)b * 3 * H * W;
      for (int c = 0; c < 3; c++) /* alpha, if any, is ignored */
        for (int64_t i = 0; i < (int64_t)H * W; i++)
          dst[c * (int64_t)H * W + i] = 2.0f * ((float)img.data[i * img.channels + c] / 255.0f) - 1.0f;
    }
    sd_image_free(&img);
    begin = sd_img2img_begin_index(r->steps, p->strength) * sd_scheduler_order(sched);
    if (begin >= sd_scheduler_num_steps(sched)) {
      rc = sd_fail(r->err, SD_ERR_ARG, "strength %g leaves no denoising step at %d steps",
                   p->strength, r->steps);
      goto done;
    }
    in.image = init;
    in.noise = noise;
  }
  sd_denoise_options dopt = {.guidance_scale = cfg_batch, .steps = r->steps,
                             .sampler = r->sampler, .begin_index = begin,
                             .timestep_cond = tcond, .on_step = gen_progress, .user = r};
  if (p->refiner_switch > 0) /* the refiner takes over the low-noise end */
    dopt.end_index = sd_denoising_split_index(
        sched, p->refiner_switch, sd_json_int(m->scheduler_config, "num_train_timesteps", 1000));
  preview_hook(r, &dopt, sched, h, w);
  double t0 = sd_now();
  rc = denoise_stage(r, m, sched, &cond, &dopt, r->steps, &in, lat, n, h, w, "denoise");
  if (rc) goto done;
  r->t_denoise += sd_now() - t0;
  sd_conditioning_free(&cond);
  sd_free(init);
  sd_free(noise);
  init = noise = NULL;
  sd_monitor_stage(&r->mon, "After generation");
  if (p->refiner_switch > 0) {
    r->handoff = lat; /* latents go to the refiner undecoded */
    r->handoff_channels = C;
    lat = NULL;
    goto done;
  }

  if ((rc = save_latents(r, lat, n, C, h, w, r->model_path))) goto done;
  if (!r->have_plan || r->plan.level > SD_PLAN_RESIDENT) {
    sd_weights_release_pages(m->w_unet); /* the UNet is done: its pages leave RSS */
    sd_monitor_cleanup(&r->mon, "Releasing the UNet weights before the decode...");
  }
  r->images = sd_alloc(sizeof(float) * n * 3 * H * W);
  if (!r->images) goto oom;
  if ((rc = decode(r, r->have_plan ? &r->plan : NULL, "decode", m->vae, lat, n, h, w,
                   r->images)))
    goto done;
  sd_monitor_stage(&r->mon, "After decode");
  goto done;
oom:
  rc = sd_fail(r->err, SD_ERR_OOM, "out of memory");
done:
  sd_free(lat);
  sd_free(init);
  sd_free(noise);
  sd_free(tcond);
  cJSON_Delete(overrides);
  sd_conditioning_free(&cond);
  sd_scheduler_free(sched);
  return rc;
}

int gen_refine(gen_run *r) {
  const sdgen_params *p = r->p;
  sd_unet_model *m = NULL;
  sd_scheduler *sched = NULL;
  sd_conditioning cond = {0};
  float *lat = NULL, *noise = NULL, *start = NULL;
  sd_monitor_cleanup(&r->mon, "Unloading the base pipeline before the refiner...");
  sd_monitor_stage(&r->mon, "Before refiner");
  double t0 = sd_now();
  const char *path = r->refiner_path; /* resolved and checked by precheck() */
  const sd_plan *pl = r->have_refiner_plan ? &r->refiner_plan : NULL;
  int rc;
  sd_load_options lo = {.path = path, .tokenizers_dir = p->tokenizers_dir,
                        .prefer_fp16 = p->prefer_fp16};
  if ((rc = sd_unet_model_load(&m, &lo, r->err))) return rc;
  int latent_mode = r->handoff != NULL;
  r->refiner_mode = latent_mode ? "latent" : "image";
  int W = r->width, H = r->height, n = r->n;
  int f = sd_vae_downscale(m->vae), C = sd_unet_get_config(m->unet)->in_channels;
  int h = H / f, w = W / f;
  int steps = p->refiner_steps > 0 ? p->refiner_steps : 20;
  float strength = p->refiner_strength > 0 ? p->refiner_strength : 0.3f;
  float cfg = refiner_cfg(p, m);
  if (latent_mode) steps = r->steps; /* one schedule, split between the two models */
  if (pl) apply_plan(r, m, pl, p->min_plan, n, "Refiner: ");
  if ((rc = sd_scheduler_create(&sched, m->scheduler_config, SD_SAMPLER_DEFAULT, NULL, r->err)) ||
      (rc = sd_scheduler_set_timesteps(sched, steps, r->err)))
    goto done;
  if ((rc = encode(r, m, pl, n, cfg, W, H, &cond))) goto done;
  int64_t N = (int64_t)n * C * h * w;
  lat = sd_alloc(sizeof(float) * N);
  if (!lat) goto oom;
  denoise_input in = {0};
  int begin;
  if (latent_mode) {
    /* diffusers' denoising_start: continue from the base latents at the
     * first timestep below the cutoff, without adding noise. */
    if (r->handoff_channels != C) {
      rc = sd_fail(r->err, SD_ERR_ARG, "the refiner expects %d latent channels, the base gave %d",
                   C, r->handoff_channels);
      goto done;
    }
    begin = sd_denoising_split_index(
        sched, p->refiner_switch, sd_json_int(m->scheduler_config, "num_train_timesteps", 1000));
    start = r->handoff; /* kept until the denoise is final: an fp32 rerun starts from it */
    r->handoff = NULL;
    in.start = start;
  } else {
    /* The refiner sees the base image as a PNG holds it: 8-bit quantized. */
    int64_t img_n = (int64_t)n * 3 * H * W;
    for (int64_t i = 0; i < img_n; i++) {
      float v = r->images[i] / 2.0f + 0.5f;
      v = v < 0 ? 0 : v > 1 ? 1 : v;
      r->images[i] = 2.0f * (nearbyintf(v * 255.0f) / 255.0f) - 1.0f;
    }
    noise = sd_alloc(sizeof(float) * N);
    if (!noise) goto oom;
    begin = sd_img2img_begin_index(steps, strength) * sd_scheduler_order(sched);
    if (begin >= sd_scheduler_num_steps(sched)) {
      rc = sd_fail(r->err, SD_ERR_ARG, "refiner strength %g leaves no step at %d steps", strength,
                   steps);
      goto done;
    }
    in.image = r->images;
    in.noise = noise;
  }
  sd_denoise_options dopt = {.guidance_scale = cfg, .steps = steps, .begin_index = begin,
                             .on_step = gen_progress, .user = r};
  preview_hook(r, &dopt, sched, h, w);
  if ((rc = denoise_stage(r, m, sched, &cond, &dopt, steps, &in, lat, n, h, w,
                          "refiner-denoise")))
    goto done;
  sd_conditioning_free(&cond);
  sd_free(start);
  sd_free(noise);
  start = noise = NULL;
  if ((rc = save_latents(r, lat, n, C, h, w, r->refiner_path))) goto done;
  if (!pl || pl->level > SD_PLAN_RESIDENT) {
    sd_weights_release_pages(m->w_unet);
    sd_monitor_cleanup(&r->mon, "Releasing the refiner UNet weights before the decode...");
  }
  if (!r->images && !(r->images = sd_alloc(sizeof(float) * n * 3 * H * W))) goto oom;
  if ((rc = decode(r, pl, "refiner-decode", m->vae, lat, n, h, w, r->images))) goto done;
  r->t_refine = sd_now() - t0;
  sd_monitor_stage(&r->mon, "After refiner");
  goto done;
oom:
  rc = sd_fail(r->err, SD_ERR_OOM, "out of memory in the refiner");
done:
  sd_free(lat);
  sd_free(noise);
  sd_free(start);
  sd_conditioning_free(&cond);
  sd_scheduler_free(sched);
  sd_unet_model_free(m);
  return rc;
}
