#include "pipeline/sd3_pipeline.h"

#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "io/checkpoint_map_sd3.h"
#include "io/json.h"
#include "io/model_dir.h"
#include "sample/rng.h"
#include "text/clip_tokenizer.h"
#include "text/t5_tokenizer.h"
#include "pipeline/tokenizers.h"

#define PATH_MAX_LEN 4096

static int open_component(const struct sd3_pipeline *p, int which,
                          sd_weights **w, cJSON **cfg, sd_error *err);

struct sd3_pipeline {
  sd3_sources src;
  char model[PATH_MAX_LEN], clip_l[PATH_MAX_LEN], clip_g[PATH_MAX_LEN],
      t5[PATH_MAX_LEN], tokenizers[PATH_MAX_LEN];
  int single_file;
  sd_sd3_components comp; /* the single file's mapped components */
  int stream_encoders;    /* encoders drop each layer's pages after it ran */
};

void sd3_pipeline_set_encoder_streaming(sd3_pipeline *p, int on) {
  p->stream_encoders = on;
}

sd3_params sd3_default_params(void) {
  sd3_params p = {0};
  p.negative_prompt = "";
  p.width = p.height = 1024;
  p.steps = 28;
  p.guidance = 7.0f;
  p.max_sequence_length = 256;
  return p;
}

static void copy_path(char *dst, const char *src) {
  snprintf(dst, PATH_MAX_LEN, "%s", src ? src : "");
}

int sd3_pipeline_open(sd3_pipeline **out, const sd3_sources *src, sd_error *err) {
  *out = NULL;
  if (!src || !src->model)
    return sd_fail(err, SD_ERR_ARG, "SD3 pipeline: no model given");
  sd3_pipeline *p = sd_calloc(1, sizeof *p);
  if (!p) return sd_fail(err, SD_ERR_OOM, "out of memory");
  p->src = *src;
  copy_path(p->model, src->model);
  copy_path(p->clip_l, src->clip_l);
  copy_path(p->clip_g, src->clip_g);
  copy_path(p->t5, src->t5);
  copy_path(p->tokenizers, src->tokenizers ? src->tokenizers : src->model);
  int rc = SD_OK;
  if (sd_is_file(p->model)) {
    sd_weights *file = NULL;
    p->single_file = 1;
    rc = sd_weights_open(&file, p->model, err);
    if (!rc) rc = sd_sd3_checkpoint_map(file, &p->comp, err);
    sd_weights_free(file);
    if (!rc && !p->comp.transformer)
      rc = sd_fail(err, SD_ERR_FORMAT, "%s holds no SD3 transformer", p->model);
  } else if (!sd_is_dir(p->model)) {
    rc = sd_fail(err, SD_ERR_IO, "model %s: no such file or folder", p->model);
  }
  if (rc) {
    sd3_pipeline_free(p);
    return rc;
  }
  *out = p;
  return SD_OK;
}

void sd3_pipeline_free(sd3_pipeline *p) {
  if (!p) return;
  sd_sd3_components_free(&p->comp);
  sd_free(p);
}

enum {
  COMP_CLIP_L = SD3_CLIP_L,
  COMP_CLIP_G = SD3_CLIP_G,
  COMP_T5 = SD3_T5,
  COMP_TRANSFORMER = SD3_TRANSFORMER,
  COMP_VAE = SD3_VAE
};
static const char *const FOLDER_NAMES[] = {"text_encoder", "text_encoder_2",
                                           "text_encoder_3", "transformer", "vae"};

/* Ends a stage's use of a component set. A folder's files are unmapped by
 * the free; a single file stays mapped for later stages, so its pages are
 * handed back to the OS (they fault in again if a stage needs them). */
static void close_component(const sd3_pipeline *p, sd_weights *w) {
  if (w && p && p->single_file) sd_weights_release_pages(w);
  sd_weights_free(w);
}

/* The config.json of encoder `which` in the tokenizers folder, or NULL. */
static cJSON *encoder_config_beside(const sd3_pipeline *p, int which) {
  char path[PATH_MAX_LEN + 64];
  cJSON *cfg = NULL;
  sd_error ignored = {0};
  if (which > COMP_T5) return NULL;
  snprintf(path, sizeof path, "%s/%s/config.json", p->tokenizers, FOLDER_NAMES[which]);
  if (!sd_is_file(path) || sd_json_read_file(path, &cfg, &ignored)) return NULL;
  return cfg;
}

int sd3_pipeline_open_component(const sd3_pipeline *p, sd3_component which,
                                sd_weights **w, cJSON **cfg, sd_error *err) {
  return open_component(p, (int)which, w, cfg, err);
}

/* A missing component gives SD_ERR_IO. */
static int open_component(const sd3_pipeline *p, int which, sd_weights **w,
                          cJSON **cfg, sd_error *err) {
  *w = NULL;
  *cfg = NULL;
  char dir[PATH_MAX_LEN + 64];
  const char *separate = which == COMP_CLIP_L ? p->clip_l
                         : which == COMP_CLIP_G ? p->clip_g
                         : which == COMP_T5 ? p->t5 : "";
  if (separate[0]) {
    sd_weights *file = NULL;
    int rc = sd_weights_open(&file, separate, err);
    if (!rc) rc = sd_sd3_map_text_encoder(file, "", (sd_sd3_encoder)which, w, err);
    sd_weights_free(file);
    /* A config beside the tokenizers (a diffusers folder), when present,
     * sizes the encoder; otherwise the loaders read the shapes. */
    if (!rc) *cfg = encoder_config_beside(p, which);
    return rc;
  }
  if (p->single_file) {
    const sd_sd3_components *c = &p->comp;
    const sd_weights *set = which == COMP_CLIP_L ? c->clip_l
                            : which == COMP_CLIP_G ? c->clip_g
                            : which == COMP_T5 ? c->t5
                            : which == COMP_TRANSFORMER ? c->transformer : c->vae;
    const cJSON *conf = which == COMP_TRANSFORMER ? c->transformer_config
                        : which == COMP_VAE ? c->vae_config : NULL;
    if (!set)
      return sd_fail(err, SD_ERR_IO, "%s has no %s: give it as a separate file",
                     p->model, FOLDER_NAMES[which]);
    /* A fresh set of aliases, so every caller frees what it opened. */
    sd_weights *copy = sd_weights_new();
    if (!copy) return sd_fail(err, SD_ERR_OOM, "out of memory");
    int rc = SD_OK, n = sd_weights_count(set);
    for (int i = 0; i < n && !rc; i++)
      rc = sd_weights_alias(copy, sd_weights_name_at(set, i), set,
                            sd_weights_name_at(set, i), err);
    if (!rc && conf && !(*cfg = cJSON_Duplicate(conf, 1)))
      rc = sd_fail(err, SD_ERR_OOM, "out of memory");
    if (!rc && !conf) *cfg = encoder_config_beside(p, which);
    if (rc) {
      sd_weights_free(copy);
      return rc;
    }
    *w = copy;
    return SD_OK;
  }
  sd_path_join(dir, sizeof dir, p->model, FOLDER_NAMES[which]);
  if (!sd_is_dir(dir))
    return sd_fail(err, SD_ERR_IO, "model folder has no %s/", FOLDER_NAMES[which]);
  return sd_component_open(dir, 0, w, cfg, err);
}

int sd3_assemble_prompt_embeds(const float *l_pen, int Dl, const float *g_pen,
                               int Dg, int B, int Lc, const float *t5, int Lt,
                               int J, float *out, sd_error *err) {
  if (Dl + Dg > J)
    return sd_fail(err, SD_ERR_FORMAT,
                   "SD3: CLIP widths %d + %d exceed the joint width %d", Dl, Dg, J);
  const int64_t L = (int64_t)Lc + Lt;
  memset(out, 0, (size_t)(B * L * J) * sizeof(float));
  for (int b = 0; b < B; b++) {
    float *ob = out + (int64_t)b * L * J;
    for (int64_t i = 0; i < Lc; i++) {
      memcpy(ob + i * J, l_pen + ((int64_t)b * Lc + i) * Dl, (size_t)Dl * sizeof(float));
      memcpy(ob + i * J + Dl, g_pen + ((int64_t)b * Lc + i) * Dg, (size_t)Dg * sizeof(float));
    }
    if (t5)
      memcpy(ob + (int64_t)Lc * J, t5 + (int64_t)b * Lt * J,
             (size_t)((int64_t)Lt * J) * sizeof(float));
  }
  return SD_OK;
}

void sd3_assemble_pooled(const float *l_emb, int Pl, const float *g_emb,
                         int Pg, int B, float *out) {
  for (int b = 0; b < B; b++) {
    memcpy(out + (int64_t)b * (Pl + Pg), l_emb + (int64_t)b * Pl, (size_t)Pl * sizeof(float));
    memcpy(out + (int64_t)b * (Pl + Pg) + Pl, g_emb + (int64_t)b * Pg, (size_t)Pg * sizeof(float));
  }
}

/* Runs CLIP encoder `which` over ids (n, 77): penultimate (n, 77, D) and
 * text_embeds (n, P), both new buffers. */
static int encode_clip(const sd3_pipeline *p, int which, const int32_t *ids,
                       int n, float **pen, float **emb, int *D, int *P,
                       sd_error *err) {
  sd_weights *w = NULL;
  cJSON *cfg = NULL;
  sd_clip *m = NULL;
  float *pooled = NULL;
  *pen = *emb = NULL;
  int rc = open_component(p, which, &w, &cfg, err);
  if (!rc)
    rc = sd_clip_load(&m, w, "", cfg,
                      which == COMP_CLIP_L ? SD_ACT_QUICK_GELU : SD_ACT_GELU, err);
  if (rc) goto done;
  m->stream_weights = p->stream_encoders;
  *D = m->cfg.hidden;
  *P = m->cfg.projection_dim ? m->cfg.projection_dim : m->cfg.hidden;
  *pen = sd_alloc((size_t)n * SD3_CLIP_TOKENS * *D * sizeof(float));
  *emb = sd_alloc((size_t)n * *P * sizeof(float));
  pooled = sd_alloc((size_t)n * *D * sizeof(float));
  if (!*pen || !*emb || !pooled) {
    rc = sd_fail(err, SD_ERR_OOM, "out of memory (text encoder outputs)");
    goto done;
  }
  sd_clip_outputs o = {NULL, *pen, pooled, m->cfg.projection_dim ? *emb : NULL};
  rc = sd_clip_encode(m, ids, n, SD3_CLIP_TOKENS, &o, err);
  if (!rc && !m->cfg.projection_dim)
    memcpy(*emb, pooled, (size_t)n * *D * sizeof(float));
done:
  if (rc) {
    sd_free(*pen);
    sd_free(*emb);
    *pen = *emb = NULL;
  }
  sd_free(pooled);
  sd_clip_free(m);
  close_component(p, w);
  cJSON_Delete(cfg);
  return rc;
}

static int tokenize_clip(const char *dir, const char *sub, const char *const *prompts,
                         int n, int32_t *ids, sd_error *err) {
  sd_clip_tokenizer *tok = NULL;
  int rc = sd_open_clip_tokenizer(dir, NULL, sub, &tok, err);
  if (!rc && sd_clip_tokenizer_max_len(tok) != SD3_CLIP_TOKENS)
    rc = sd_fail(err, SD_ERR_FORMAT, "%s/%s: max length %d, SD3 needs %d", dir, sub,
                 sd_clip_tokenizer_max_len(tok), SD3_CLIP_TOKENS);
  for (int i = 0; i < n && !rc; i++)
    rc = sd_clip_tokenize(tok, prompts[i] ? prompts[i] : "", ids + i * SD3_CLIP_TOKENS, err);
  sd_clip_tokenizer_free(tok);
  return rc;
}

int sd3_encode_prompts(sd3_pipeline *p, const char *const *prompts, int n,
                       int max_seq, float **embeds, float **pooled, int *tokens,
                       sd_error *err) {
  *embeds = *pooled = NULL;
  if (n < 1 || max_seq < 1)
    return sd_fail(err, SD_ERR_ARG, "SD3: nothing to encode");
  int32_t *ids_l = sd_alloc((size_t)n * SD3_CLIP_TOKENS * sizeof(int32_t));
  int32_t *ids_g = sd_alloc((size_t)n * SD3_CLIP_TOKENS * sizeof(int32_t));
  int32_t *ids_t = sd_alloc((size_t)n * max_seq * sizeof(int32_t));
  float *l_pen = NULL, *l_emb = NULL, *g_pen = NULL, *g_emb = NULL, *t5 = NULL;
  sd_weights *w = NULL;
  cJSON *cfg = NULL, *tcfg = NULL;
  sd_t5 *t5m = NULL;
  sd_t5_tokenizer *t5tok = NULL;
  int Dl = 0, Pl = 0, Dg = 0, Pg = 0, J = 0, rc = SD_OK;
  if (!ids_l || !ids_g || !ids_t) {
    rc = sd_fail(err, SD_ERR_OOM, "out of memory");
    goto done;
  }
  if ((rc = tokenize_clip(p->tokenizers, "tokenizer", prompts, n, ids_l, err)) ||
      (rc = tokenize_clip(p->tokenizers, "tokenizer_2", prompts, n, ids_g, err)) ||
      (rc = encode_clip(p, COMP_CLIP_L, ids_l, n, &l_pen, &l_emb, &Dl, &Pl, err)) ||
      (rc = encode_clip(p, COMP_CLIP_G, ids_g, n, &g_pen, &g_emb, &Dg, &Pg, err)))
    goto done;

  /* The joint width is the transformer's: read its config only. */
  if ((rc = open_component(p, COMP_TRANSFORMER, &w, &tcfg, err))) goto done;
  J = sd_json_int(tcfg, "joint_attention_dim", 4096);
  sd_weights_free(w);
  w = NULL;

  if (!p->src.skip_t5) {
    if ((rc = sd_open_t5_tokenizer(p->tokenizers, NULL, &t5tok, err))) goto done;
    for (int i = 0; i < n && !rc; i++)
      rc = sd_t5_tokenize(t5tok, prompts[i] ? prompts[i] : "", ids_t + (int64_t)i * max_seq,
                          max_seq, err);
    if (!rc) rc = open_component(p, COMP_T5, &w, &cfg, err);
    if (!rc) rc = sd_t5_load(&t5m, w, cfg, err);
    if (!rc) t5m->stream_weights = p->stream_encoders;
    if (!rc && t5m->cfg.d_model != J)
      rc = sd_fail(err, SD_ERR_FORMAT, "T5 width %d differs from the transformer's "
                   "joint_attention_dim %d", t5m->cfg.d_model, J);
    if (!rc && !(t5 = sd_alloc((size_t)n * max_seq * J * sizeof(float))))
      rc = sd_fail(err, SD_ERR_OOM, "out of memory (T5 states)");
    if (!rc) rc = sd_t5_encode(t5m, ids_t, n, max_seq, t5, err);
    if (rc) goto done;
  }
  *tokens = SD3_CLIP_TOKENS + max_seq;
  *embeds = sd_alloc((size_t)n * *tokens * J * sizeof(float));
  *pooled = sd_alloc((size_t)n * (Pl + Pg) * sizeof(float));
  if (!*embeds || !*pooled) {
    rc = sd_fail(err, SD_ERR_OOM, "out of memory (prompt embeddings)");
    goto done;
  }
  rc = sd3_assemble_prompt_embeds(l_pen, Dl, g_pen, Dg, n, SD3_CLIP_TOKENS, t5,
                                  max_seq, J, *embeds, err);
  if (!rc) sd3_assemble_pooled(l_emb, Pl, g_emb, Pg, n, *pooled);
done:
  if (rc) {
    sd_free(*embeds);
    sd_free(*pooled);
    *embeds = *pooled = NULL;
  }
  sd_t5_tokenizer_free(t5tok);
  sd_t5_free(t5m);
  close_component(p, w);
  cJSON_Delete(cfg);
  cJSON_Delete(tcfg);
  sd_free(ids_l);
  sd_free(ids_g);
  sd_free(ids_t);
  sd_free(l_pen);
  sd_free(l_emb);
  sd_free(g_pen);
  sd_free(g_emb);
  sd_free(t5);
  return rc;
}

int sd3_denoise(const sd_mmdit *m, sd_scheduler *s, float *latents, int H,
                int W, const float *embeds, const float *pooled, int tokens,
                float guidance, int kv_chunk, sd3_progress_fn progress,
                void *user, sd_error *err) {
  return sd3_denoise_ex(m, s, latents, H, W, embeds, pooled, tokens, guidance, kv_chunk,
                        progress, user, NULL, NULL, err);
}

int sd3_denoise_ex(const sd_mmdit *m, sd_scheduler *s, float *latents, int H,
                   int W, const float *embeds, const float *pooled, int tokens,
                   float guidance, int kv_chunk, sd3_progress_fn progress,
                   void *user, sd3_prediction_fn pred, void *pred_user, sd_error *err) {
  const sd_mmdit_config *c = sd_mmdit_get_config(m);
  const int cfg = guidance > 1.0f, B = cfg ? 2 : 1;
  const int64_t n = (int64_t)c->in_channels * H * W;
  if (c->out_channels != c->in_channels)
    return sd_fail(err, SD_ERR_FORMAT, "SD3: transformer in/out channels differ");
  float *x = sd_alloc((size_t)(B * n) * sizeof(float));
  float *v = sd_alloc((size_t)(B * n) * sizeof(float));
  int rc = SD_OK;
  if (!x || !v) {
    rc = sd_fail(err, SD_ERR_OOM, "out of memory (denoising buffers)");
    goto done;
  }
  const int steps = sd_scheduler_num_steps(s);
  for (int i = 0; i < steps && !rc; i++) {
    float t[2];
    t[0] = t[1] = (float)sd_scheduler_timestep(s, i);
    for (int b = 0; b < B; b++) memcpy(x + b * n, latents, (size_t)n * sizeof(float));
    if ((rc = sd_mmdit_forward(m, x, B, H, W, t, embeds, tokens, pooled, v,
                               kv_chunk, err)))
      break;
    if (cfg) {
      /* [negative, positive]: u + g (c - u), in this order as diffusers. */
      const float *u = v, *cc = v + n;
      for (int64_t j = 0; j < n; j++) v[j] = u[j] + guidance * (cc[j] - u[j]);
    }
    if (pred && (rc = pred(i, v, latents, pred_user))) break;
    if ((rc = sd_scheduler_step(s, i, v, latents, n, NULL, err))) break;
    if (progress && progress(i + 1, steps, user))
      rc = sd_fail(err, SD_ERR_CANCELLED, "cancelled at step %d of %d", i + 1, steps);
  }
done:
  sd_free(x);
  sd_free(v);
  return rc;
}

int sd3_decode(const sd_vae *vae, const float *latents, int B, int H, int W,
               float *decoder_input, float *image01, sd_error *err) {
  const sd_vae_config *c = sd_vae_get_config(vae);
  const int64_t n = (int64_t)B * c->latent_channels * H * W;
  const int f = sd_vae_downscale(vae);
  float *z = decoder_input ? decoder_input : sd_alloc((size_t)n * sizeof(float));
  if (!z) return sd_fail(err, SD_ERR_OOM, "out of memory (decoder input)");
  for (int64_t i = 0; i < n; i++) z[i] = latents[i] / c->scaling_factor + c->shift_factor;
  int rc = sd_vae_decode(vae, z, B, H, W, image01, err);
  if (!rc) {
    const int64_t m = (int64_t)B * c->out_channels * H * f * W * f;
    for (int64_t i = 0; i < m; i++) {
      float y = image01[i] / 2.0f + 0.5f;
      image01[i] = y < 0.0f ? 0.0f : y > 1.0f ? 1.0f : y;
    }
  }
  if (z != decoder_input) sd_free(z);
  return rc;
}

int sd3_pipeline_scheduler_config(const sd3_pipeline *p, cJSON **out, sd_error *err) {
  cJSON *cfg = NULL;
  int rc;
  char path[PATH_MAX_LEN + 64];
  snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", p->model);
  if (!p->single_file) {
    rc = sd_json_read_file(path, &cfg, err);
  } else {
    /* Every SD3 / SD3.5 release ships this scheduler config. */
    cfg = cJSON_Parse("{\"_class_name\": \"FlowMatchEulerDiscreteScheduler\", "
                      "\"num_train_timesteps\": 1000, \"shift\": 3.0}");
    rc = cfg ? SD_OK : sd_fail(err, SD_ERR_OOM, "out of memory");
  }
  *out = rc ? NULL : cfg;
  return rc;
}

static int load_scheduler(const sd3_pipeline *p, int steps, sd_scheduler **s,
                          sd_error *err) {
  cJSON *cfg = NULL;
  int rc = sd3_pipeline_scheduler_config(p, &cfg, err);
  if (!rc) rc = sd_scheduler_create(s, cfg, SD_SAMPLER_DEFAULT, NULL, err);
  if (!rc) rc = sd_scheduler_set_timesteps(*s, steps, err);
  cJSON_Delete(cfg);
  return rc;
}

int sd3_generate(sd3_pipeline *p, const sd3_params *prm, float *image01,
                 sd_error *err) {
  if (!prm->prompt || prm->width < 16 || prm->height < 16 || prm->width % 16 ||
      prm->height % 16 || prm->steps < 1 || prm->max_sequence_length < 1)
    return sd_fail(err, SD_ERR_ARG,
                   "SD3: need a prompt, width/height multiples of 16 and >= 1 step");
  const int cfg = prm->guidance > 1.0f;
  const char *prompts[2] = {prm->negative_prompt ? prm->negative_prompt : "", prm->prompt};
  float *embeds = NULL, *pooled = NULL, *latents = NULL;
  sd_weights *w = NULL;
  cJSON *conf = NULL;
  sd_mmdit *m = NULL;
  sd_vae *vae = NULL;
  sd_scheduler *s = NULL;
  sd_rng *rng = NULL;
  int tokens = 0;
  int rc = sd3_encode_prompts(p, cfg ? prompts : prompts + 1, cfg ? 2 : 1,
                              prm->max_sequence_length, &embeds, &pooled, &tokens, err);
  if (rc) goto done;
  if ((rc = open_component(p, COMP_TRANSFORMER, &w, &conf, err)) ||
      (rc = sd_mmdit_load(&m, w, conf, err)))
    goto done;
  const int C = m->cfg.in_channels, h = prm->height / 8, wd = prm->width / 8;
  latents = sd_alloc((size_t)C * h * wd * sizeof(float));
  rng = sd_rng_new(SD_RNG_CPU, prm->seed);
  if (!latents || !rng) {
    rc = sd_fail(err, SD_ERR_OOM, "out of memory (latents)");
    goto done;
  }
  if ((rc = load_scheduler(p, prm->steps, &s, err))) goto done;
  sd_rng_randn(rng, latents, (int64_t)C * h * wd);
  float sigma0 = sd_scheduler_init_noise_sigma(s);
  for (int64_t i = 0; i < (int64_t)C * h * wd; i++) latents[i] *= sigma0;
  rc = sd3_denoise(m, s, latents, h, wd, embeds, pooled, tokens, prm->guidance,
                   prm->kv_chunk, prm->progress, prm->user, err);
  /* The transformer is done: release it before the VAE loads. */
  sd_mmdit_free(m);
  m = NULL;
  close_component(p, w);
  w = NULL;
  cJSON_Delete(conf);
  conf = NULL;
  if (rc) goto done;
  if ((rc = open_component(p, COMP_VAE, &w, &conf, err)) ||
      (rc = sd_vae_load(&vae, w, conf, err)))
    goto done;
  rc = sd3_decode(vae, latents, 1, h, wd, NULL, image01, err);
done:
  sd_vae_free(vae);
  sd_mmdit_free(m);
  close_component(p, w);
  cJSON_Delete(conf);
  sd_scheduler_free(s);
  sd_rng_free(rng);
  sd_free(embeds);
  sd_free(pooled);
  sd_free(latents);
  return rc;
}

int sd3_pipeline_encoder_sizes(const sd3_pipeline *p, sd3_component which, int B, int L,
                               sd3_encoder_sizes *out, sd_error *err) {
  memset(out, 0, sizeof *out);
  if (which > SD3_T5) return sd_fail(err, SD_ERR_ARG, "not a text encoder");
  sd_weights *w = NULL;
  cJSON *cfg = NULL;
  int rc = open_component(p, (int)which, &w, &cfg, err);
  if (rc) return rc;
  out->weights = (int64_t)sd_weights_total_bytes(w);
  if (which == SD3_T5) {
    sd_t5 *m = NULL;
    if (!(rc = sd_t5_load(&m, w, cfg, err))) {
      out->largest_layer = sd_t5_largest_layer_bytes(m);
      out->activations = sd_t5_scratch_bytes(&m->cfg, B, L) +
                         4LL * B * L * m->cfg.d_model; /* the output */
    }
    sd_t5_free(m);
  } else {
    sd_clip *m = NULL;
    if (!(rc = sd_clip_load(&m, w, "", cfg, SD_ACT_GELU, err))) {
      const sd_clip_config *c = &m->cfg;
      int P = c->projection_dim ? c->projection_dim : c->hidden;
      out->largest_layer = sd_clip_largest_layer_bytes(m);
      /* scratch + penultimate states, pooled and projected outputs */
      out->activations = sd_clip_scratch_bytes(c, B, SD3_CLIP_TOKENS) +
                         4LL * B * (SD3_CLIP_TOKENS * (int64_t)c->hidden + c->hidden + P);
    }
    sd_clip_free(m);
  }
  close_component(p, w);
  cJSON_Delete(cfg);
  return rc;
}

int sd3_pipeline_bind_models(const sd3_pipeline *p, sd3_models *out, sd_error *err) {
  memset(out, 0, sizeof *out);
  int rc;
  if ((rc = open_component(p, COMP_TRANSFORMER, &out->transformer_weights,
                           &out->transformer_config, err)) ||
      (rc = sd_mmdit_load(&out->mmdit, out->transformer_weights, out->transformer_config, err)) ||
      (rc = open_component(p, COMP_VAE, &out->vae_weights, &out->vae_config, err)) ||
      (rc = sd_vae_load(&out->vae, out->vae_weights, out->vae_config, err)))
    sd3_models_free(p, out);
  return rc;
}

void sd3_models_drop_transformer(const sd3_pipeline *p, sd3_models *m) {
  sd_mmdit_free(m->mmdit);
  m->mmdit = NULL;
  close_component(p, m->transformer_weights);
  m->transformer_weights = NULL;
}

void sd3_models_free(const sd3_pipeline *p, sd3_models *m) {
  sd3_models_drop_transformer(p, m);
  sd_vae_free(m->vae);
  close_component(p, m->vae_weights);
  cJSON_Delete(m->transformer_config);
  cJSON_Delete(m->vae_config);
  memset(m, 0, sizeof *m);
}
