#include "pipeline/unet_pipeline.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "io/checkpoint_map.h"
#include "io/json.h"
#include "io/model_dir.h"
#include "models/vae_tiled.h"
#include "pipeline/tokenizers.h"
#include "tensor/ops.h"

const char *sd_model_family_name(sd_model_family f) {
  switch (f) {
  case SD_MODEL_SD1: return "sd1";
  case SD_MODEL_SDXL: return "sdxl";
  case SD_MODEL_SDXL_REFINER: return "sdxl-refiner";
  case SD_MODEL_SD3: return "sd3";
  }
  return "?";
}

/* Scheduler configs of the released repositories, used for single files
 * that come without a folder (runwayml/stable-diffusion-v1-5 and
 * stabilityai/stable-diffusion-xl-base-1.0). */
static const char k_sd1_scheduler[] =
    "{\"_class_name\":\"PNDMScheduler\",\"beta_end\":0.012,\"beta_schedule\":"
    "\"scaled_linear\",\"beta_start\":0.00085,\"num_train_timesteps\":1000,"
    "\"set_alpha_to_one\":false,\"skip_prk_steps\":true,\"steps_offset\":1,"
    "\"trained_betas\":null,\"clip_sample\":false}";
static const char k_sdxl_scheduler[] =
    "{\"_class_name\":\"EulerDiscreteScheduler\",\"beta_end\":0.012,"
    "\"beta_schedule\":\"scaled_linear\",\"beta_start\":0.00085,\"interpolation_type\":"
    "\"linear\",\"num_train_timesteps\":1000,\"prediction_type\":\"epsilon\","
    "\"sample_max_value\":1.0,\"set_alpha_to_one\":false,\"skip_prk_steps\":true,"
    "\"steps_offset\":1,\"timestep_spacing\":\"leading\",\"trained_betas\":null,"
    "\"use_karras_sigmas\":false,\"clip_sample\":false}";

/* stabilityai/stable-diffusion-2-1 (the 768-v release): an SD 2.x single
 * file does not say whether it predicts v (768-v) or epsilon (512-base,
 * sd-turbo); --config or --prediction-type tell the others apart. */
static const char k_sd2_scheduler[] =
    "{\"_class_name\":\"DDIMScheduler\",\"beta_end\":0.012,\"beta_schedule\":"
    "\"scaled_linear\",\"beta_start\":0.00085,\"clip_sample\":false,"
    "\"num_train_timesteps\":1000,\"prediction_type\":\"v_prediction\","
    "\"set_alpha_to_one\":false,\"skip_prk_steps\":true,\"steps_offset\":1,"
    "\"trained_betas\":null}";

void sd_unet_model_drop_text_encoders(sd_unet_model *m) {
  sd_adapter_forget(m->adapter, m->w_te1);
  sd_adapter_forget(m->adapter, m->w_te2);
  sd_clip_free(m->te1);
  sd_clip_free(m->te2);
  m->te1 = m->te2 = NULL;
  sd_weights_free(m->w_te1);
  sd_weights_free(m->w_te2);
  m->w_te1 = m->w_te2 = NULL;
}

void sd_unet_model_free(sd_unet_model *m) {
  if (!m) return;
  sd_unet_model_drop_text_encoders(m);
  sd_clip_tokenizer_free(m->tok1);
  sd_clip_tokenizer_free(m->tok2);
  sd_unet_free(m->unet);
  sd_vae_free(m->vae);
  sd_weights_free(m->w_unet);
  sd_weights_free(m->w_vae);
  sd_adapter_free(m->adapter); /* after the sets whose entries point at its terms */
  cJSON_Delete(m->scheduler_config);
  sd_free(m);
}

int sd_unet_model_merge_loras(sd_unet_model *m, sd_error *err) {
  return m->adapter ? sd_adapter_merge(m->adapter, SD_LORA_TARGETS, err) : SD_OK;
}

/* Binds the run's LoRAs to the loaded components (names and shapes only)
 * and attaches them as side paths. */
static int attach_loras(sd_unet_model *m, const sd_load_options *opt, sd_error *err) {
  if (opt->n_loras <= 0) return SD_OK;
  sd_lora_family fam = m->family == SD_MODEL_SDXL           ? SD_LORA_FAMILY_SDXL
                       : m->family == SD_MODEL_SDXL_REFINER ? SD_LORA_FAMILY_SDXL_REFINER
                                                            : SD_LORA_FAMILY_SD1;
  sd_adapter_target t[] = {{SD_LORA_UNET, m->w_unet},
                           {SD_LORA_TE1, m->te1 ? m->w_te1 : NULL},
                           {SD_LORA_TE2, m->te2 ? m->w_te2 : NULL}};
  int rc = sd_adapter_load(&m->adapter, opt->loras, opt->n_loras, t, 3, fam, err);
  return rc ? rc : sd_adapter_attach_side(m->adapter, err);
}

static int read_json_opt(const char *dir, const char *sub, const char *file, cJSON **out,
                         sd_error *err) {
  char p[4096], q[4200];
  *out = NULL;
  if (!dir) return SD_OK;
  sd_path_join(p, sizeof p, dir, sub);
  sd_path_join(q, sizeof q, p, file);
  return sd_is_file(q) ? sd_json_read_file(q, out, err) : SD_OK;
}

/* Tokenizer from the model folder, then the --tokenizers folder. */
static int load_tokenizer(sd_clip_tokenizer **out, const char *model_dir, const char *sub,
                          const char *tokenizers_dir, sd_error *err) {
  return sd_open_clip_tokenizer(model_dir, tokenizers_dir, sub, out, err);
}

static int load_folder(sd_unet_model *m, const sd_load_options *opt, sd_error *err) {
  const char *dir = opt->path;
  cJSON *index = NULL, *cfg = NULL;
  char p[4096];
  int rc = read_json_opt(dir, ".", "model_index.json", &index, err);
  if (rc) return rc;
  if (!index) return sd_fail(err, SD_ERR_FORMAT, "%s has no model_index.json", dir);
  const char *cls = sd_json_str(index, "_class_name", "");
  if (strstr(cls, "StableDiffusion3"))
    m->family = SD_MODEL_SD3;
  else if (strstr(cls, "XLImg2Img") || !sd_json_has(index, "text_encoder"))
    m->family = sd_json_has(index, "text_encoder_2") ? SD_MODEL_SDXL_REFINER : SD_MODEL_SD1;
  else if (strstr(cls, "XL") || sd_json_has(index, "text_encoder_2"))
    m->family = SD_MODEL_SDXL;
  else
    m->family = SD_MODEL_SD1;
  m->force_zeros_for_empty_prompt =
      sd_json_bool(index, "force_zeros_for_empty_prompt", m->family == SD_MODEL_SDXL);
  m->requires_aesthetics_score = sd_json_bool(index, "requires_aesthetics_score", 0);
  cJSON_Delete(index);
  if (m->family == SD_MODEL_SD3)
    return sd_fail(err, SD_ERR_UNSUPPORTED, "%s is an SD3 model (use the SD3 pipeline)", dir);

  if ((rc = read_json_opt(dir, "scheduler", "scheduler_config.json", &m->scheduler_config, err)))
    return rc;
  if (!m->scheduler_config)
    return sd_fail(err, SD_ERR_FORMAT, "%s has no scheduler/scheduler_config.json", dir);

  sd_path_join(p, sizeof p, dir, "unet");
  if ((rc = sd_component_open(p, opt->prefer_fp16, &m->w_unet, &cfg, err))) return rc;
  rc = sd_unet_load(&m->unet, m->w_unet, cfg, err);
  cJSON_Delete(cfg);
  cfg = NULL;
  if (rc) return rc;
  sd_path_join(p, sizeof p, dir, "vae");
  if ((rc = sd_component_open(p, opt->prefer_fp16, &m->w_vae, &cfg, err))) return rc;
  rc = sd_vae_load(&m->vae, m->w_vae, cfg, err);
  cJSON_Delete(cfg);
  cfg = NULL;
  if (rc) return rc;
  if (opt->skip_text_encoders) return SD_OK;

  if (m->family != SD_MODEL_SDXL_REFINER) {
    sd_path_join(p, sizeof p, dir, "text_encoder");
    if ((rc = sd_component_open(p, opt->prefer_fp16, &m->w_te1, &cfg, err))) return rc;
    rc = sd_clip_load(&m->te1, m->w_te1, "", cfg, SD_ACT_QUICK_GELU, err);
    cJSON_Delete(cfg);
    cfg = NULL;
    if (rc) return rc;
    if ((rc = load_tokenizer(&m->tok1, dir, "tokenizer", opt->tokenizers_dir, err)))
      return rc;
  }
  if (m->family != SD_MODEL_SD1) {
    sd_path_join(p, sizeof p, dir, "text_encoder_2");
    if ((rc = sd_component_open(p, opt->prefer_fp16, &m->w_te2, &cfg, err))) return rc;
    rc = sd_clip_load(&m->te2, m->w_te2, "", cfg, SD_ACT_GELU, err);
    cJSON_Delete(cfg);
    if (rc) return rc;
    if ((rc = load_tokenizer(&m->tok2, dir, "tokenizer_2", opt->tokenizers_dir, err)))
      return rc;
  }
  return SD_OK;
}

/* A --tokenizers folder that is itself an SD 2.x diffusers folder keeps its
 * tokenizer/ (pad "!"); anything else: the tokenizer_2 convention. */
static const char *sd2_tokenizer_sub(const char *tokenizers_dir) {
  char p[4200];
  if (!tokenizers_dir) return "tokenizer_2";
  sd_path_join(p, sizeof p, tokenizers_dir, "tokenizer_2");
  if (sd_is_dir(p)) return "tokenizer_2";
  sd_path_join(p, sizeof p, tokenizers_dir, "text_encoder/config.json");
  cJSON *cfg = NULL;
  sd_error e = {0};
  int gelu = sd_is_file(p) && !sd_json_read_file(p, &cfg, &e) &&
             strcmp(sd_json_str(cfg, "hidden_act", ""), "gelu") == 0;
  cJSON_Delete(cfg);
  return gelu ? "tokenizer" : "tokenizer_2";
}

static int load_single_file(sd_unet_model *m, const sd_load_options *opt, sd_error *err) {
  sd_weights *file = NULL;
  sd_checkpoint_info info;
  int rc = sd_weights_open(&file, opt->path, err);
  if (rc) return rc;
  rc = sd_checkpoint_map(file, &info, &m->w_unet, &m->w_vae, &m->w_te1, &m->w_te2, err);
  sd_weights_free(file);
  if (rc) return rc;
  switch (info.family) {
  case SD_FAMILY_SD1:
  case SD_FAMILY_SD2: m->family = SD_MODEL_SD1; break;
  case SD_FAMILY_SDXL_BASE: m->family = SD_MODEL_SDXL; break;
  case SD_FAMILY_SDXL_REFINER: m->family = SD_MODEL_SDXL_REFINER; break;
  default: return sd_fail(err, SD_ERR_UNSUPPORTED, "%s: unsupported checkpoint", opt->path);
  }
  if (!m->w_unet || !m->w_vae)
    return sd_fail(err, SD_ERR_FORMAT, "%s lacks the UNet or the VAE", opt->path);
  m->force_zeros_for_empty_prompt = m->family == SD_MODEL_SDXL;
  m->requires_aesthetics_score = m->family == SD_MODEL_SDXL_REFINER;
  const char *cd = opt->config_dir;
  cJSON *cfg = NULL;
  if (cd) {
    cJSON *index = NULL;
    if ((rc = read_json_opt(cd, ".", "model_index.json", &index, err))) return rc;
    if (index) {
      m->force_zeros_for_empty_prompt =
          sd_json_bool(index, "force_zeros_for_empty_prompt", m->force_zeros_for_empty_prompt);
      m->requires_aesthetics_score =
          sd_json_bool(index, "requires_aesthetics_score", m->requires_aesthetics_score);
      cJSON_Delete(index);
    }
  }
  if ((rc = read_json_opt(cd, "scheduler", "scheduler_config.json", &m->scheduler_config, err)))
    return rc;
  if (!m->scheduler_config)
    m->scheduler_config = cJSON_Parse(info.family == SD_FAMILY_SD2 ? k_sd2_scheduler
                                      : m->family == SD_MODEL_SD1 ? k_sd1_scheduler
                                                                  : k_sdxl_scheduler);
  if (!m->scheduler_config) return sd_fail(err, SD_ERR_OOM, "out of memory");

  if ((rc = read_json_opt(cd, "unet", "config.json", &cfg, err))) return rc;
  if (!cfg && m->family == SD_MODEL_SD1 && info.family == SD_FAMILY_SD1)
    cfg = cJSON_Parse("{\"attention_head_dim\": 8}"); /* SD 1.x: 8 heads per level */
  rc = sd_unet_load(&m->unet, m->w_unet, cfg, err);
  cJSON_Delete(cfg);
  cfg = NULL;
  if (rc) return rc;
  if ((rc = read_json_opt(cd, "vae", "config.json", &cfg, err))) return rc;
  if (!cfg && m->family != SD_MODEL_SD1)
    cfg = cJSON_Parse("{\"scaling_factor\": 0.13025}");
  rc = sd_vae_load(&m->vae, m->w_vae, cfg, err);
  cJSON_Delete(cfg);
  cfg = NULL;
  if (rc || opt->skip_text_encoders) return rc;
  if (m->family != SD_MODEL_SDXL_REFINER) {
    if (!m->w_te1) return sd_fail(err, SD_ERR_FORMAT, "%s has no text encoder", opt->path);
    if ((rc = read_json_opt(cd, "text_encoder", "config.json", &cfg, err))) return rc;
    rc = sd_clip_load(&m->te1, m->w_te1, "", cfg,
                      info.family == SD_FAMILY_SD2 ? SD_ACT_GELU : SD_ACT_QUICK_GELU, err);
    cJSON_Delete(cfg);
    cfg = NULL;
    if (rc) return rc;
    /* Without a config folder an SD 2.x file takes the OpenCLIP tokenizer
     * convention (pad "!"), which SDXL's tokenizer_2 shares. */
    const char *sub = info.family == SD_FAMILY_SD2 && !cd ? sd2_tokenizer_sub(opt->tokenizers_dir)
                                                          : "tokenizer";
    if ((rc = load_tokenizer(&m->tok1, cd, sub, opt->tokenizers_dir, err))) return rc;
  }
  if (m->family != SD_MODEL_SD1) {
    if (!m->w_te2) return sd_fail(err, SD_ERR_FORMAT, "%s has no OpenCLIP encoder", opt->path);
    if ((rc = read_json_opt(cd, "text_encoder_2", "config.json", &cfg, err))) return rc;
    rc = sd_clip_load(&m->te2, m->w_te2, "", cfg, SD_ACT_GELU, err);
    cJSON_Delete(cfg);
    if (rc) return rc;
    if ((rc = load_tokenizer(&m->tok2, cd, "tokenizer_2", opt->tokenizers_dir, err)))
      return rc;
  }
  return SD_OK;
}

int sd_unet_model_load(sd_unet_model **out, const sd_load_options *opt, sd_error *err) {
  *out = NULL;
  sd_unet_model *m = sd_calloc(1, sizeof *m);
  if (!m) return sd_fail(err, SD_ERR_OOM, "out of memory");
  snprintf(m->path, sizeof m->path, "%s", opt->path);
  int rc;
  if (sd_is_dir(opt->path))
    rc = load_folder(m, opt, err);
  else if (sd_is_file(opt->path))
    rc = load_single_file(m, opt, err);
  else
    rc = sd_fail(err, SD_ERR_IO, "model %s not found", opt->path);
  if (!rc) rc = attach_loras(m, opt, err);
  if (rc) {
    sd_unet_model_free(m);
    return rc;
  }
  *out = m;
  return SD_OK;
}

/* ---- prompt encoding ---- */

void sd_conditioning_free(sd_conditioning *c) {
  if (!c) return;
  sd_free(c->context);
  sd_free(c->pooled);
  sd_free(c->time_ids);
  memset(c, 0, sizeof *c);
}

/* Encodes one text with one encoder: hidden (L, D) = last or penultimate
 * state, pooled (proj) = text_embeds when wanted. */
static int encode_text(const sd_clip *te, const sd_clip_tokenizer *tok, const char *text,
                       int penultimate, float *hidden, float *text_embeds, sd_error *err) {
  int L = sd_clip_tokenizer_max_len(tok);
  int32_t *ids = sd_alloc(sizeof(int32_t) * L);
  if (!ids) return sd_fail(err, SD_ERR_OOM, "out of memory");
  int rc = sd_clip_tokenize(tok, text, ids, err);
  if (!rc) {
    sd_clip_outputs o = {penultimate ? NULL : hidden, penultimate ? hidden : NULL, NULL,
                         text_embeds};
    rc = sd_clip_encode(te, ids, 1, L, &o, err);
  }
  sd_free(ids);
  return rc;
}

int sd_encode_prompt(const sd_unet_model *m, const sd_prompt_options *po, sd_conditioning *out,
                     sd_error *err) {
  memset(out, 0, sizeof *out);
  int n = po->n, halves = po->guidance ? 2 : 1;
  const sd_clip *te1 = m->te1, *te2 = m->te2;
  if ((m->family != SD_MODEL_SDXL_REFINER && !te1) || (m->family != SD_MODEL_SD1 && !te2))
    return sd_fail(err, SD_ERR_ARG, "text encoders were released before encoding");
  const sd_clip_tokenizer *tok = te1 ? m->tok1 : m->tok2;
  int L = sd_clip_tokenizer_max_len(tok);
  int D1 = te1 ? te1->cfg.hidden : 0, D2 = m->family == SD_MODEL_SD1 ? 0 : te2->cfg.hidden;
  int D = D1 + D2, P = m->family == SD_MODEL_SD1 ? 0 : te2->cfg.projection_dim;
  out->batch = halves * n;
  out->ctx_len = L;
  out->ctx_dim = D;
  out->pooled_dim = P;
  out->context = sd_calloc((size_t)halves * n * L * D, sizeof(float));
  float *h1 = sd_alloc(sizeof(float) * L * (D1 ? D1 : 1));
  float *h2 = sd_alloc(sizeof(float) * L * (D2 ? D2 : 1));
  float *pool = sd_alloc(sizeof(float) * (P ? P : 1));
  int rc = SD_OK;
  if (P) {
    out->pooled = sd_calloc((size_t)halves * n * P, sizeof(float));
    out->n_time_ids = m->family == SD_MODEL_SDXL_REFINER ? 5 : 6;
    out->time_ids = sd_calloc((size_t)halves * n * out->n_time_ids, sizeof(float));
  }
  if (!out->context || !h1 || !h2 || !pool || (P && (!out->pooled || !out->time_ids))) {
    rc = sd_fail(err, SD_ERR_OOM, "out of memory encoding the prompt");
    goto done;
  }
  for (int half = 0; half < halves; half++) {
    int negative = halves == 2 && half == 0;
    const char *text = negative ? po->negative_prompt : po->prompt;
    int zeros = negative && !text && m->force_zeros_for_empty_prompt;
    if (!text) text = "";
    float *ctx0 = out->context + (int64_t)half * n * L * D;
    float *pool0 = P ? out->pooled + (int64_t)half * n * P : NULL;
    if (!zeros) {
      if (m->family == SD_MODEL_SD1) {
        if ((rc = encode_text(te1, m->tok1, text, 0, h1, NULL, err))) goto done;
      } else {
        if (te1 && (rc = encode_text(te1, m->tok1, text, 1, h1, NULL, err))) goto done;
        if ((rc = encode_text(te2, m->tok2, text, 1, h2, pool, err))) goto done;
      }
      /* SDXL context = cat(CLIP-L penultimate, bigG penultimate) per token. */
      for (int t = 0; t < L; t++) {
        if (D1) memcpy(ctx0 + (int64_t)t * D, h1 + (int64_t)t * D1, sizeof(float) * D1);
        if (D2) memcpy(ctx0 + (int64_t)t * D + D1, h2 + (int64_t)t * D2, sizeof(float) * D2);
      }
      if (P) memcpy(pool0, pool, sizeof(float) * P);
    }
    for (int i = 1; i < n; i++) {
      memcpy(ctx0 + (int64_t)i * L * D, ctx0, sizeof(float) * L * D);
      if (P) memcpy(pool0 + (int64_t)i * P, pool0, sizeof(float) * P);
    }
    if (P) {
      /* [original h, w, crop top, left, target h, w] (refiner: aesthetic
       * score instead of the target size). */
      float ids[6] = {(float)(po->orig_height ? po->orig_height : po->height),
                      (float)(po->orig_width ? po->orig_width : po->width),
                      (float)po->crop_top, (float)po->crop_left, (float)po->height,
                      (float)po->width};
      if (m->family == SD_MODEL_SDXL_REFINER)
        ids[4] = negative ? po->negative_aesthetic_score : po->aesthetic_score;
      for (int i = 0; i < n; i++)
        memcpy(out->time_ids + ((int64_t)half * n + i) * out->n_time_ids, ids,
               sizeof(float) * out->n_time_ids);
    }
  }
done:
  sd_free(h1);
  sd_free(h2);
  sd_free(pool);
  if (rc) sd_conditioning_free(out);
  return rc;
}

/* ---- denoising ---- */

int sd_denoise(const sd_unet_model *m, sd_scheduler *sched, const sd_conditioning *cond,
               const sd_denoise_options *o, float *latents, int n, int h, int w, sd_rng *rng,
               sd_error *err) {
  const sd_unet_config *uc = sd_unet_get_config(m->unet);
  int C = uc->in_channels, cfg = o->guidance_scale > 1.0f;
  int B = cfg ? 2 * n : n;
  if (cond->batch != B)
    return sd_fail(err, SD_ERR_ARG, "conditioning holds %d entries, the batch needs %d",
                   cond->batch, B);
  if (uc->time_cond_proj_dim && (!o->timestep_cond || cfg))
    /* LCM: the guidance is an input of the UNet, never a CFG batch */
    return sd_fail(err, SD_ERR_ARG,
                   "this UNet is LCM-distilled: it takes the guidance as an embedding, "
                   "without an unconditional batch");
  int64_t per = (int64_t)C * h * w, N = per * n;
  float *x_in = sd_alloc(sizeof(float) * per * B);
  float *eps = sd_alloc(sizeof(float) * per * B);
  float *ts = sd_alloc(sizeof(float) * B);
  int rc = SD_OK;
  if (!x_in || !eps || !ts) {
    rc = sd_fail(err, SD_ERR_OOM, "out of memory denoising");
    goto done;
  }
  sd_unet_cond uc_cond = {cond->context, cond->ctx_len, cond->pooled, cond->time_ids,
                          cond->n_time_ids, NULL};
  uc_cond.timestep_cond = o->timestep_cond;
  int total = sd_scheduler_num_steps(sched);
  if (o->end_index > 0 && o->end_index < total) total = o->end_index;
  for (int i = o->begin_index; i < total; i++) {
    float t = (float)sd_scheduler_timestep(sched, i);
    memcpy(x_in, latents, sizeof(float) * N);
    if (cfg) memcpy(x_in + N, latents, sizeof(float) * N);
    sd_scheduler_scale_model_input(sched, i, x_in, N * (cfg ? 2 : 1));
    for (int b = 0; b < B; b++) ts[b] = t;
    if ((rc = sd_unet_forward(m->unet, x_in, B, h, w, ts, &uc_cond, eps, o->kv_chunk, err)))
      goto done;
    if (cfg) {
      /* eps = uncond + g * (cond - uncond), batch order [negative, positive] */
      float g = o->guidance_scale;
      for (int64_t k = 0; k < N; k++) eps[k] = eps[k] + g * (eps[N + k] - eps[k]);
    }
    if (o->on_prediction && (rc = o->on_prediction(i, eps, latents, o->user))) goto done;
    if ((rc = sd_scheduler_step(sched, i, eps, latents, N, rng, err))) goto done;
    if (o->on_step && o->on_step(i - o->begin_index + 1, total - o->begin_index, o->user)) {
      rc = sd_fail(err, SD_ERR_CANCELLED, "cancelled");
      goto done;
    }
  }
done:
  sd_free(x_in);
  sd_free(eps);
  sd_free(ts);
  return rc;
}

int sd_decode_latents(const sd_vae *vae, const float *latents, int n, int h, int w,
                      int mode, float *image, sd_error *err) {
  const sd_vae_config *c = sd_vae_get_config(vae);
  int f = sd_vae_downscale(vae);
  int64_t per = (int64_t)c->latent_channels * h * w;
  int64_t img_per = (int64_t)c->out_channels * h * f * w * f;
  int chunk = mode == SD_DECODE_BATCH ? n : 1;
  /* diffusers' tile is the VAE's sample size (512 or 1024 px), which does
   * not tile an image that small: the frugal plan then halves the tile. */
  sd_vae_tiling tiling = sd_vae_tiling_default(vae);
  int side = (h < w ? h : w) * f;
  if (side <= tiling.tile_sample_size) {
    sd_vae_tiling half = tiling;
    half.tile_sample_size = side / 2 / 32 * 32;
    if (half.tile_sample_size >= 64 && sd_vae_tiling_check(vae, &half, NULL) == SD_OK)
      tiling = half;
  }
  float *z = sd_alloc(sizeof(float) * per * chunk);
  if (!z) return sd_fail(err, SD_ERR_OOM, "out of memory decoding");
  int rc = SD_OK;
  for (int b = 0; b < n && !rc; b += chunk) {
    int cnt = n - b < chunk ? n - b : chunk;
    for (int64_t i = 0; i < per * cnt; i++)
      z[i] = latents[per * b + i] / c->scaling_factor + c->shift_factor;
    if (mode == SD_DECODE_TILED)
      rc = sd_vae_decode_tiled(vae, z, cnt, h, w, &tiling, image + img_per * b, err);
    else
      rc = sd_vae_decode(vae, z, cnt, h, w, image + img_per * b, err);
  }
  sd_free(z);
  return rc;
}

int sd_decode_latents_tiny(const sd_taesd *t, const float *latents, int n, int h, int w,
                           float *image, sd_error *err) {
  const sd_taesd_config *c = sd_taesd_get_config(t);
  int64_t per = (int64_t)c->latent_channels * h * w;
  float *z = sd_alloc(sizeof(float) * per);
  if (!z) return sd_fail(err, SD_ERR_OOM, "out of memory decoding");
  int64_t img_per = 3LL * h * c->decoder_factor * w * c->decoder_factor;
  int rc = SD_OK;
  for (int b = 0; b < n && !rc; b++) {
    if (!sd_plan_active())
      for (int64_t i = 0; i < per; i++)
        z[i] = latents[per * b + i] / c->scaling_factor + c->shift_factor;
    rc = sd_taesd_decode(t, z, 1, h, w, image + img_per * b, err);
  }
  sd_free(z);
  return rc;
}

int sd_encode_image_tiny(const sd_taesd *t, const float *image, int n, int H, int W,
                         float *latents, sd_error *err) {
  const sd_taesd_config *c = sd_taesd_get_config(t);
  int f = c->encoder_factor;
  int64_t per = (int64_t)c->latent_channels * ((H + f - 1) / f) * ((W + f - 1) / f);
  int rc = sd_taesd_encode(t, image, n, H, W, latents, err);
  if (!rc && !sd_plan_active())
    for (int64_t i = 0; i < per * n; i++)
      latents[i] = c->scaling_factor * (latents[i] - c->shift_factor);
  return rc;
}

int sd_encode_image(const sd_vae *vae, const float *image, int n, int H, int W, sd_rng *rng,
                    float *latents, sd_error *err) {
  const sd_vae_config *c = sd_vae_get_config(vae);
  int f = sd_vae_downscale(vae);
  int64_t per = (int64_t)c->latent_channels * (H / f) * (W / f);
  float *std = sd_alloc(sizeof(float) * per * n), *noise = sd_alloc(sizeof(float) * per * n);
  int rc = SD_OK;
  if (!std || !noise) {
    rc = sd_fail(err, SD_ERR_OOM, "out of memory encoding the image");
    goto done;
  }
  if ((rc = sd_vae_encode(vae, image, n, H, W, latents, std, NULL, err))) goto done;
  sd_rng_randn(rng, noise, per * n);
  for (int64_t i = 0; i < per * n; i++)
    latents[i] = c->scaling_factor * ((latents[i] + std[i] * noise[i]) - c->shift_factor);
done:
  sd_free(std);
  sd_free(noise);
  return rc;
}

int sd_denoising_split_index(const sd_scheduler *sched, float fraction, int train_steps) {
  double cutoff = (double)(int)llround(train_steps - (double)fraction * train_steps);
  int n = sd_scheduler_num_steps(sched), i = 0;
  while (i < n && sd_scheduler_timestep(sched, i) >= cutoff) i++;
  return i;
}

int sd_img2img_begin_index(int steps, float strength) {
  int init = (int)((float)steps * strength);
  if (init > steps) init = steps;
  return steps - init;
}
