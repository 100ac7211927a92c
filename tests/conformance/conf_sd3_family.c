/* SD3 / SD3.5 family: golden/<model>/cases.json with a "cases" object
 * (text_encoders, transformer, vae, scheduler, e2e) and one
 * golden.safetensors. Components are checked on the diffusers folder and on
 * each single-file form the fixtures hold (the Stability checkpoint, the
 * checkpoint with encoders, the separately shipped encoder files), case ids
 * prefixed by the source: "sd35-large/transformer.c0" (folder),
 * "sd35-large.safetensors/transformer.c0" (single file, with the separate
 * encoder files for its e2e runs), "sd35-large+text_encoders/..." (the
 * separate text_encoders/{clip_l,clip_g,t5xxl}.safetensors files), "sd35-large-incl-encoders.
 * safetensors/...". "<id>.pipeline" cases run the same e2e through
 * pipeline/sd3_pipeline.h (tokenizers, seeded noise, staged loading). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "conformance.h"
#include "io/json.h"
#include "io/model_dir.h"
#include "models/clip_text.h"
#include "models/mmdit.h"
#include "models/t5_encoder.h"
#include "models/vae.h"
#include "pipeline/sd3_pipeline.h"
#include "sample/scheduler.h"
#include "text/clip_tokenizer.h"
#include "text/t5_tokenizer.h"

#define TOL_COMPONENT 1e-4
#define TOL_E2E 1e-3
#define TOL_SCHEDULE 1e-6
#define CLIP_TOKENS 77
#define T5_TOKENS 256
#define MAX_PROMPTS 16

typedef struct sd3_conf {
  conf_ctx *c;
  const char *model;    /* "sd35-large" */
  const char *folder;   /* fixtures/sd35-large */
  const sd_weights *g;  /* golden.safetensors */
  const cJSON *root, *cases;
} sd3_conf;

static sd_tensor *golden(const sd3_conf *s, const char *name) {
  const sd_tensor *t = sd_weights_get(s->g, name);
  return t ? sd_tensor_to_f32(t) : NULL;
}

/* Checks buffer against golden `name` under id "<label>/<name><suffix>". */
static int check(const sd3_conf *s, const char *label, const char *name,
                 const float *got, int64_t n, double tol) {
  char id[512];
  snprintf(id, sizeof id, "%s/%s", label, name);
  if (!conf_wants(s->c, id)) return 1;
  return conf_check_tensor(s->c, id, got, n, sd_weights_get(s->g, name), tol);
}

static int open_source(sd3_pipeline **p, const sd3_sources *src, conf_ctx *c,
                       const char *label) {
  sd_error err = {0};
  if (sd3_pipeline_open(p, src, &err)) {
    conf_result(c, label, 0, "open: %s", err.msg);
    return 1;
  }
  return 0;
}

/* ---- text encoders ---- */

typedef struct te_prompts {
  int n;
  int32_t l[MAX_PROMPTS * CLIP_TOKENS], g[MAX_PROMPTS * CLIP_TOKENS];
  int32_t t5[MAX_PROMPTS * T5_TOKENS];
} te_prompts;

static int read_ids(const cJSON *arr, int32_t *out, int n) {
  if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) != n) return -1;
  int i = 0;
  const cJSON *e;
  cJSON_ArrayForEach(e, arr) out[i++] = (int32_t)e->valuedouble;
  return 0;
}

static int read_prompts(const cJSON *te, te_prompts *tp) {
  const cJSON *arr = cJSON_GetObjectItemCaseSensitive(te, "prompts"), *pr;
  tp->n = 0;
  cJSON_ArrayForEach(pr, arr) {
    if (tp->n == MAX_PROMPTS) return -1;
    int i = sd_json_int(pr, "index", tp->n);
    if (i != tp->n ||
        read_ids(cJSON_GetObjectItemCaseSensitive(pr, "clip_l_input_ids"), tp->l + i * CLIP_TOKENS, CLIP_TOKENS) ||
        read_ids(cJSON_GetObjectItemCaseSensitive(pr, "clip_g_input_ids"), tp->g + i * CLIP_TOKENS, CLIP_TOKENS) ||
        read_ids(cJSON_GetObjectItemCaseSensitive(pr, "t5_input_ids"), tp->t5 + i * T5_TOKENS, T5_TOKENS))
      return -1;
    tp->n++;
  }
  return tp->n ? 0 : -1;
}

typedef struct clip_out {
  int D, P;
  float *last, *pen, *pooled, *emb;
} clip_out;

static void clip_out_free(clip_out *o) {
  sd_free(o->last);
  sd_free(o->pen);
  sd_free(o->pooled);
  sd_free(o->emb);
  memset(o, 0, sizeof *o);
}

static int run_clip(const sd3_pipeline *p, sd3_component which, const int32_t *ids,
                    int n, clip_out *o, sd_error *err) {
  sd_weights *w = NULL;
  cJSON *cfg = NULL;
  sd_clip *m = NULL;
  memset(o, 0, sizeof *o);
  int rc = sd3_pipeline_open_component(p, which, &w, &cfg, err);
  if (!rc)
    rc = sd_clip_load(&m, w, "", cfg, which == SD3_CLIP_L ? SD_ACT_QUICK_GELU : SD_ACT_GELU, err);
  if (!rc) {
    o->D = m->cfg.hidden;
    o->P = m->cfg.projection_dim;
    o->last = sd_alloc(sizeof(float) * n * CLIP_TOKENS * o->D);
    o->pen = sd_alloc(sizeof(float) * n * CLIP_TOKENS * o->D);
    o->pooled = sd_alloc(sizeof(float) * n * o->D);
    o->emb = sd_alloc(sizeof(float) * n * (o->P ? o->P : 1));
    if (!o->last || !o->pen || !o->pooled || !o->emb || !o->P)
      rc = sd_fail(err, SD_ERR_OOM, "out of memory or no text projection");
  }
  if (!rc) {
    sd_clip_outputs outs = {o->last, o->pen, o->pooled, o->emb};
    rc = sd_clip_encode(m, ids, n, CLIP_TOKENS, &outs, err);
  }
  if (rc) clip_out_free(o);
  sd_clip_free(m);
  sd_weights_free(w);
  cJSON_Delete(cfg);
  return rc;
}

static int run_t5(const sd3_pipeline *p, const int32_t *ids, int n, int L,
                  float **out, int *D, sd_error *err) {
  sd_weights *w = NULL;
  cJSON *cfg = NULL;
  sd_t5 *m = NULL;
  *out = NULL;
  int rc = sd3_pipeline_open_component(p, SD3_T5, &w, &cfg, err);
  if (!rc) rc = sd_t5_load(&m, w, cfg, err);
  if (!rc) {
    *D = m->cfg.d_model;
    if (!(*out = sd_alloc(sizeof(float) * n * L * *D)))
      rc = sd_fail(err, SD_ERR_OOM, "out of memory");
  }
  if (!rc) rc = sd_t5_encode(m, ids, n, L, *out, err);
  if (rc) {
    sd_free(*out);
    *out = NULL;
  }
  sd_t5_free(m);
  sd_weights_free(w);
  cJSON_Delete(cfg);
  return rc;
}

/* The T5 ids of max_sequence_length 77 from those of 256, when the prompt
 * ends (EOS) within 77 tokens: then both tokenizations agree on the prefix. */
static int t5_ids_77(const int32_t *ids256, int32_t *ids77) {
  for (int i = 0; i < 77; i++) {
    ids77[i] = ids256[i];
    if (ids256[i] == 1) {
      for (int j = i + 1; j < 77; j++) ids77[j] = 0;
      return 0;
    }
  }
  return -1;
}

static void check_text_encoders(const sd3_conf *s, const sd3_pipeline *p,
                                const char *label, const te_prompts *tp,
                                int has_clip, int has_t5) {
  char name[256];
  sd_error err = {0};
  const int n = tp->n;
  clip_out L = {0}, G = {0};
  float *t5 = NULL, *t5_77 = NULL, *emb = NULL, *pooled = NULL;
  int J = 0;
  if (has_clip) {
    if (run_clip(p, SD3_CLIP_L, tp->l, n, &L, &err) ||
        run_clip(p, SD3_CLIP_G, tp->g, n, &G, &err)) {
      snprintf(name, sizeof name, "%s/text_encoders.clip", label);
      conf_result(s->c, name, 0, "%s", err.msg);
      goto done;
    }
    static const char *const keys[] = {"last_hidden_state", "penultimate_hidden_state",
                                       "pooled_output", "text_embeds"};
    for (int e = 0; e < 2; e++) {
      const clip_out *o = e ? &G : &L;
      const float *bufs[] = {o->last, o->pen, o->pooled, o->emb};
      const int64_t per[] = {(int64_t)CLIP_TOKENS * o->D, (int64_t)CLIP_TOKENS * o->D, o->D, o->P};
      for (int i = 0; i < n; i++)
        for (int k = 0; k < 4; k++) {
          snprintf(name, sizeof name, "%s.p%d.%s", e ? "clip_g" : "clip_l", i, keys[k]);
          char id_name[300];
          snprintf(id_name, sizeof id_name, "text_encoders.%s", name);
          char id[600];
          snprintf(id, sizeof id, "%s/%s", label, id_name);
          if (conf_wants(s->c, id))
            conf_check_tensor(s->c, id, bufs[k] + i * per[k], per[k],
                              sd_weights_get(s->g, name), TOL_COMPONENT);
        }
    }
  }
  if (has_t5) {
    int32_t ids77[MAX_PROMPTS * 77];
    int ok77 = 1;
    for (int i = 0; i < n; i++)
      if (t5_ids_77(tp->t5 + i * T5_TOKENS, ids77 + i * 77)) ok77 = 0;
    if (run_t5(p, tp->t5, n, T5_TOKENS, &t5, &J, &err) ||
        (ok77 && run_t5(p, ids77, n, 77, &t5_77, &J, &err))) {
      snprintf(name, sizeof name, "%s/text_encoders.t5", label);
      conf_result(s->c, name, 0, "%s", err.msg);
      goto done;
    }
    for (int i = 0; i < n; i++) {
      snprintf(name, sizeof name, "t5.p%d.last_hidden_state", i);
      char id[600];
      snprintf(id, sizeof id, "%s/text_encoders.%s", label, name);
      if (conf_wants(s->c, id))
        conf_check_tensor(s->c, id, t5 + (int64_t)i * T5_TOKENS * J,
                          (int64_t)T5_TOKENS * J, sd_weights_get(s->g, name), TOL_COMPONENT);
    }
    if (!has_clip) goto done;
    /* Prompt embeddings as the pipeline assembles them. */
    emb = sd_alloc(sizeof(float) * n * (CLIP_TOKENS + T5_TOKENS) * J);
    pooled = sd_alloc(sizeof(float) * n * (L.P + G.P));
    if (!emb || !pooled) goto done;
    sd3_assemble_pooled(L.emb, L.P, G.emb, G.P, n, pooled);
    struct { const char *key; const float *t5; int Lt; } variants[] = {
        {"prompt_embeds", t5, T5_TOKENS},
        {"prompt_embeds_no_t5", NULL, T5_TOKENS},
        {"prompt_embeds_t5len77", t5_77, 77}};
    for (int v = 0; v < 3; v++) {
      if (v == 2 && !ok77) {
        snprintf(name, sizeof name, "%s/text_encoders.prompt_embeds_t5len77", label);
        conf_skip(s->c, name, "a prompt runs past 77 T5 tokens");
        continue;
      }
      const int64_t per = (int64_t)(CLIP_TOKENS + variants[v].Lt) * J;
      if (sd3_assemble_prompt_embeds(L.pen, L.D, G.pen, G.D, n, CLIP_TOKENS, variants[v].t5,
                                     variants[v].Lt, J, emb, &err)) {
        snprintf(name, sizeof name, "%s/text_encoders.%s", label, variants[v].key);
        conf_result(s->c, name, 0, "%s", err.msg);
        continue;
      }
      for (int i = 0; i < n; i++) {
        char id[600];
        snprintf(name, sizeof name, "%s.p%d", variants[v].key, i);
        snprintf(id, sizeof id, "%s/text_encoders.%s", label, name);
        if (conf_wants(s->c, id))
          conf_check_tensor(s->c, id, emb + i * per, per, sd_weights_get(s->g, name),
                            TOL_COMPONENT);
      }
    }
    for (int i = 0; i < n; i++) {
      char id[600];
      snprintf(name, sizeof name, "pooled_prompt_embeds.p%d", i);
      snprintf(id, sizeof id, "%s/text_encoders.%s", label, name);
      if (conf_wants(s->c, id))
        conf_check_tensor(s->c, id, pooled + (int64_t)i * (L.P + G.P), L.P + G.P,
                          sd_weights_get(s->g, name), TOL_COMPONENT);
    }
  }
done:
  clip_out_free(&L);
  clip_out_free(&G);
  sd_free(t5);
  sd_free(t5_77);
  sd_free(emb);
  sd_free(pooled);
}

/* ---- transformer ---- */

static void check_transformer(const sd3_conf *s, const sd3_pipeline *p, const char *label) {
  const cJSON *tc = cJSON_GetObjectItemCaseSensitive(s->cases, "transformer");
  const cJSON *arr = cJSON_GetObjectItemCaseSensitive(tc, "cases"), *kase;
  char id[512], prefix[64];
  int any = 0;
  cJSON_ArrayForEach(kase, arr) {
    snprintf(id, sizeof id, "%s/transformer.c%d", label, sd_json_int(kase, "index", 0));
    any |= conf_wants(s->c, id);
  }
  if (!any) return;
  sd_error err = {0};
  sd_weights *w = NULL;
  cJSON *cfg = NULL;
  sd_mmdit *m = NULL;
  if (sd3_pipeline_open_component(p, SD3_TRANSFORMER, &w, &cfg, &err) ||
      sd_mmdit_load(&m, w, cfg, &err)) {
    snprintf(id, sizeof id, "%s/transformer", label);
    conf_result(s->c, id, 0, "%s", err.msg);
    goto done;
  }
  cJSON_ArrayForEach(kase, arr) {
    int idx = sd_json_int(kase, "index", 0);
    snprintf(id, sizeof id, "%s/transformer.c%d", label, idx);
    if (!conf_wants(s->c, id)) continue;
    snprintf(prefix, sizeof prefix, "transformer.c%d.", idx);
    char nx[96], nt[96], nc[96], np[96], no[96];
    snprintf(nx, sizeof nx, "%shidden_states", prefix);
    snprintf(nt, sizeof nt, "%stimestep", prefix);
    snprintf(nc, sizeof nc, "%sencoder_hidden_states", prefix);
    snprintf(np, sizeof np, "%spooled_projections", prefix);
    snprintf(no, sizeof no, "%soutput", prefix);
    sd_tensor *x = golden(s, nx), *t = golden(s, nt), *ctx = golden(s, nc), *pool = golden(s, np);
    float *out = NULL;
    if (!x || !t || !ctx || !pool || x->ndim != 4 || ctx->ndim != 3) {
      conf_result(s->c, id, 0, "inputs missing from goldens");
    } else if (!(out = sd_alloc(sizeof(float) * sd_tensor_numel(x)))) {
      conf_result(s->c, id, 0, "out of memory");
    } else if (sd_mmdit_forward(m, sd_f32(x), (int)x->shape[0], (int)x->shape[2],
                                (int)x->shape[3], sd_f32(t), sd_f32(ctx),
                                (int)ctx->shape[1], sd_f32(pool), out, 0, &err)) {
      conf_result(s->c, id, 0, "%s", err.msg);
    } else {
      conf_check_tensor(s->c, id, out, sd_tensor_numel(x), sd_weights_get(s->g, no),
                        TOL_COMPONENT);
    }
    sd_free(out);
    sd_tensor_free(x);
    sd_tensor_free(t);
    sd_tensor_free(ctx);
    sd_tensor_free(pool);
  }
done:
  sd_mmdit_free(m);
  sd_weights_free(w);
  cJSON_Delete(cfg);
}

/* ---- VAE ---- */

static void check_vae(const sd3_conf *s, const sd3_pipeline *p, const char *label) {
  char id[512];
  snprintf(id, sizeof id, "%s/vae", label);
  if (!sd_weights_get(s->g, "vae.decode.latents") || !conf_wants(s->c, id)) return;
  sd_error err = {0};
  sd_weights *w = NULL;
  cJSON *cfg = NULL;
  sd_vae *vae = NULL;
  sd_tensor *lat = golden(s, "vae.decode.latents"), *img = golden(s, "vae.encode.image");
  float *zin = NULL, *out = NULL, *mean = NULL, *std = NULL, *logvar = NULL;
  if (!lat || !img) {
    conf_result(s->c, id, 0, "inputs missing from goldens");
    goto done;
  }
  if (sd3_pipeline_open_component(p, SD3_VAE, &w, &cfg, &err) ||
      sd_vae_load(&vae, w, cfg, &err)) {
    conf_result(s->c, id, 0, "%s", err.msg);
    goto done;
  }
  const sd_vae_config *vc = sd_vae_get_config(vae);
  int B = (int)lat->shape[0], h = (int)lat->shape[2], wd = (int)lat->shape[3];
  int f = sd_vae_downscale(vae);
  int64_t nl = sd_tensor_numel(lat), ni = (int64_t)B * vc->out_channels * h * f * wd * f;
  zin = sd_alloc(sizeof(float) * nl);
  out = sd_alloc(sizeof(float) * ni);
  int64_t ne = sd_tensor_numel(img) / 3 / (f * f) * vc->latent_channels;
  mean = sd_alloc(sizeof(float) * ne);
  std = sd_alloc(sizeof(float) * ne);
  logvar = sd_alloc(sizeof(float) * ne);
  if (!zin || !out || !mean || !std || !logvar) {
    conf_result(s->c, id, 0, "out of memory");
    goto done;
  }
  /* decode: the raw output and image01 separately */
  for (int64_t i = 0; i < nl; i++)
    zin[i] = sd_f32(lat)[i] / vc->scaling_factor + vc->shift_factor;
  check(s, label, "vae.decode.decoder_input", zin, nl, TOL_COMPONENT);
  if (sd_vae_decode(vae, zin, B, h, wd, out, &err)) {
    conf_result(s->c, id, 0, "decode: %s", err.msg);
  } else {
    check(s, label, "vae.decode.output", out, ni, TOL_COMPONENT);
    for (int64_t i = 0; i < ni; i++) {
      float y = out[i] / 2.0f + 0.5f;
      out[i] = y < 0.0f ? 0.0f : y > 1.0f ? 1.0f : y;
    }
    check(s, label, "vae.decode.image01", out, ni, TOL_COMPONENT);
  }
  int H = (int)img->shape[2], W = (int)img->shape[3];
  if (sd_vae_encode(vae, sd_f32(img), (int)img->shape[0], H, W, mean, std, logvar, &err)) {
    conf_result(s->c, id, 0, "encode: %s", err.msg);
  } else {
    check(s, label, "vae.encode.mean", mean, ne, TOL_COMPONENT);
    check(s, label, "vae.encode.std", std, ne, TOL_COMPONENT);
    check(s, label, "vae.encode.logvar", logvar, ne, TOL_COMPONENT);
    for (int64_t i = 0; i < ne; i++) mean[i] = (mean[i] - vc->shift_factor) * vc->scaling_factor;
    check(s, label, "vae.encode.latents_scaled", mean, ne, TOL_COMPONENT);
  }
done:
  sd_free(zin);
  sd_free(out);
  sd_free(mean);
  sd_free(std);
  sd_free(logvar);
  sd_tensor_free(lat);
  sd_tensor_free(img);
  sd_vae_free(vae);
  sd_weights_free(w);
  cJSON_Delete(cfg);
}

/* ---- scheduler ---- */

static void check_schedule(const sd3_conf *s, const cJSON *config, const cJSON *entry,
                           int steps, const char *golden_prefix) {
  char id[512], nt[256], ns[256];
  snprintf(id, sizeof id, "%s/%stimesteps", s->model, golden_prefix);
  snprintf(nt, sizeof nt, "%stimesteps", golden_prefix);
  snprintf(ns, sizeof ns, "%ssigmas", golden_prefix);
  if (!conf_wants(s->c, id)) return;
  sd_error err = {0};
  sd_scheduler *sch = NULL;
  float *t = NULL;
  if (sd_scheduler_create(&sch, config, SD_SAMPLER_DEFAULT, NULL, &err) ||
      (entry && sd_json_has(entry, "mu") && sd_scheduler_set_mu(sch, sd_json_num(entry, "mu", 0))) ||
      sd_scheduler_set_timesteps(sch, steps, &err)) {
    conf_result(s->c, id, 0, "%s", err.msg[0] ? err.msg : "scheduler setup failed");
    goto done;
  }
  int n = sd_scheduler_num_steps(sch), ns_count = 0;
  if (!(t = sd_alloc(sizeof(float) * (n + 1)))) goto done;
  for (int i = 0; i < n; i++) t[i] = (float)sd_scheduler_timestep(sch, i);
  check(s, s->model, nt, t, n, TOL_SCHEDULE);
  const float *sig = sd_scheduler_sigmas(sch, &ns_count);
  if (sig) check(s, s->model, ns, sig, ns_count, TOL_SCHEDULE);
  else conf_result(s->c, id, 0, "scheduler has no sigmas");
done:
  sd_free(t);
  sd_scheduler_free(sch);
}

static void check_scheduler(const sd3_conf *s) {
  char path[4200];
  cJSON *cfg = NULL;
  sd_error err = {0};
  snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", s->folder);
  if (sd_json_read_file(path, &cfg, &err)) {
    conf_result(s->c, s->model, 0, "scheduler config: %s", err.msg);
    return;
  }
  const cJSON *sch = cJSON_GetObjectItemCaseSensitive(s->cases, "scheduler");
  const cJSON *schedules = cJSON_GetObjectItemCaseSensitive(sch, "schedules"), *e;
  cJSON_ArrayForEach(e, schedules) {
    char prefix[128];
    const char *key = e->string;
    if (strncmp(key, "dynamic_", 8) == 0) {
      /* "dynamic_128px_8" -> golden "scheduler.dynamic_128px.steps8." */
      const char *us = strrchr(key, '_');
      snprintf(prefix, sizeof prefix, "scheduler.%.*s.steps%s.", (int)(us - key), key, us + 1);
      check_schedule(s, cJSON_GetObjectItemCaseSensitive(e, "config"), e, atoi(us + 1), prefix);
    } else {
      snprintf(prefix, sizeof prefix, "scheduler.steps%s.", key);
      check_schedule(s, cfg, NULL, atoi(key), prefix);
    }
  }
  cJSON_Delete(cfg);
}

/* ---- end to end ---- */

static int tokenize_all(const char *folder, const char *const *prompts, int n,
                        int32_t *l, int32_t *g, int32_t *t5, sd_error *err) {
  char dir[4200];
  sd_clip_tokenizer *tl = NULL, *tg = NULL;
  sd_t5_tokenizer *tt = NULL;
  int rc;
  sd_path_join(dir, sizeof dir, folder, "tokenizer");
  rc = sd_clip_tokenizer_load_dir(&tl, dir, err);
  sd_path_join(dir, sizeof dir, folder, "tokenizer_2");
  if (!rc) rc = sd_clip_tokenizer_load_dir(&tg, dir, err);
  sd_path_join(dir, sizeof dir, folder, "tokenizer_3");
  if (!rc) rc = sd_t5_tokenizer_load_dir(&tt, dir, err);
  for (int i = 0; i < n && !rc; i++)
    if ((rc = sd_clip_tokenize(tl, prompts[i], l + i * CLIP_TOKENS, err)) ||
        (rc = sd_clip_tokenize(tg, prompts[i], g + i * CLIP_TOKENS, err)))
      break;
    else
      rc = sd_t5_tokenize(tt, prompts[i], t5 + i * T5_TOKENS, T5_TOKENS, err);
  sd_clip_tokenizer_free(tl);
  sd_clip_tokenizer_free(tg);
  sd_t5_tokenizer_free(tt);
  return rc;
}

/* The StableDiffusion3Pipeline recipe written out with the models, so a
 * mismatch points at one stage: embeddings, schedule, loop, decode. */
static void run_e2e(const sd3_conf *s, const sd3_pipeline *p, const char *label,
                    const cJSON *run) {
  const char *tag = sd_json_str(run, "tag", "?");
  const char *prompt = sd_json_str(run, "prompt", "");
  const char *neg = sd_json_str(run, "negative_prompt", NULL);
  const float guidance = (float)sd_json_num(run, "guidance_scale", 0);
  const int steps = sd_json_int(run, "num_inference_steps", 4);
  const int cfg = sd_json_bool(run, "do_classifier_free_guidance", guidance > 1);
  const int use_t5 = strcmp(sd_json_str(run, "text_encoder_3", "used"), "used") == 0;
  char id[512], name[256];
  snprintf(id, sizeof id, "%s/e2e.%s", label, tag);
  if (!conf_wants(s->c, id)) return;
  const char *prompts[2] = {neg ? neg : "", prompt};
  const int n = cfg ? 2 : 1;
  const char *const *list = cfg ? prompts : prompts + 1;
  static int32_t ids_l[2 * CLIP_TOKENS], ids_g[2 * CLIP_TOKENS], ids_t[2 * T5_TOKENS];
  sd_error err = {0};
  clip_out L = {0}, G = {0};
  float *t5 = NULL, *emb = NULL, *pooled = NULL, *x = NULL, *v = NULL, *img = NULL;
  float *zin = NULL;
  sd_weights *w = NULL;
  cJSON *conf = NULL, *schcfg = NULL;
  sd_mmdit *m = NULL;
  sd_vae *vae = NULL;
  sd_scheduler *sch = NULL;
  sd_tensor *lat0 = NULL;
  int J = 0;
  char prefix[128];
  snprintf(prefix, sizeof prefix, "e2e.%s.", tag);
#define GOLDEN_NAME(suffix) (snprintf(name, sizeof name, "%s%s", prefix, suffix), name)

  if (tokenize_all(s->folder, list, n, ids_l, ids_g, ids_t, &err) ||
      run_clip(p, SD3_CLIP_L, ids_l, n, &L, &err) ||
      run_clip(p, SD3_CLIP_G, ids_g, n, &G, &err) ||
      (use_t5 && run_t5(p, ids_t, n, T5_TOKENS, &t5, &J, &err)))
    goto fail;
  if ((sd3_pipeline_open_component(p, SD3_TRANSFORMER, &w, &conf, &err)) ||
      sd_mmdit_load(&m, w, conf, &err))
    goto fail;
  J = m->cfg.joint_dim;
  const int tokens = CLIP_TOKENS + T5_TOKENS;
  emb = sd_alloc(sizeof(float) * n * tokens * J);
  pooled = sd_alloc(sizeof(float) * n * (L.P + G.P));
  if (!emb || !pooled) goto oom;
  if (sd3_assemble_prompt_embeds(L.pen, L.D, G.pen, G.D, n, CLIP_TOKENS, t5, T5_TOKENS, J,
                                 emb, &err))
    goto fail;
  sd3_assemble_pooled(L.emb, L.P, G.emb, G.P, n, pooled);
  check(s, label, GOLDEN_NAME("prompt_embeds"), emb, (int64_t)n * tokens * J, TOL_COMPONENT);
  check(s, label, GOLDEN_NAME("pooled_prompt_embeds"), pooled, (int64_t)n * (L.P + G.P),
        TOL_COMPONENT);

  char path[4200];
  snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", s->folder);
  if (sd_json_read_file(path, &schcfg, &err) ||
      sd_scheduler_create(&sch, schcfg, SD_SAMPLER_DEFAULT, NULL, &err) ||
      sd_scheduler_set_timesteps(sch, steps, &err))
    goto fail;
  {
    float tsv[64];
    int ns = sd_scheduler_num_steps(sch), nsig = 0;
    for (int i = 0; i < ns && i < 64; i++) tsv[i] = (float)sd_scheduler_timestep(sch, i);
    check(s, label, GOLDEN_NAME("timesteps"), tsv, ns, TOL_SCHEDULE);
    const float *sig = sd_scheduler_sigmas(sch, &nsig);
    if (sig) check(s, label, GOLDEN_NAME("sigmas"), sig, nsig, TOL_SCHEDULE);
  }

  if (!(lat0 = golden(s, GOLDEN_NAME("initial_latents")))) goto missing;
  const int C = (int)lat0->shape[1], h = (int)lat0->shape[2], wd = (int)lat0->shape[3];
  const int64_t nl = sd_tensor_numel(lat0);
  x = sd_alloc(sizeof(float) * 2 * nl);
  v = sd_alloc(sizeof(float) * 2 * nl);
  if (!x || !v) goto oom;
  float *latents = sd_f32(lat0);
  for (int i = 0; i < sd_scheduler_num_steps(sch); i++) {
    float t[2];
    t[0] = t[1] = (float)sd_scheduler_timestep(sch, i);
    for (int b = 0; b < n; b++) memcpy(x + b * nl, latents, sizeof(float) * nl);
    if (sd_mmdit_forward(m, x, n, h, wd, t, emb, tokens, pooled, v, 0, &err)) goto fail;
    if (cfg)
      for (int64_t j = 0; j < nl; j++) v[j] = v[j] + guidance * (v[nl + j] - v[j]);
    if (sd_scheduler_step(sch, i, v, latents, nl, NULL, &err)) goto fail;
  }
  check(s, label, GOLDEN_NAME("final_latents"), latents, nl, TOL_E2E);
  sd_mmdit_free(m);
  m = NULL;
  sd_weights_free(w);
  w = NULL;
  cJSON_Delete(conf);
  conf = NULL;

  if (sd3_pipeline_open_component(p, SD3_VAE, &w, &conf, &err) ||
      sd_vae_load(&vae, w, conf, &err))
    goto fail;
  const int f = sd_vae_downscale(vae);
  const int64_t ni = (int64_t)3 * h * f * wd * f;
  (void)C;
  img = sd_alloc(sizeof(float) * ni);
  zin = sd_alloc(sizeof(float) * nl);
  if (!img || !zin) goto oom;
  if (sd3_decode(vae, latents, 1, h, wd, zin, img, &err)) goto fail;
  check(s, label, GOLDEN_NAME("decoder_input"), zin, nl, TOL_E2E);
  check(s, label, GOLDEN_NAME("image"), img, ni, TOL_E2E);
  {
    const sd_tensor *u8 = sd_weights_get(s->g, GOLDEN_NAME("image_u8"));
    snprintf(id, sizeof id, "%s/%s", label, name);
    if (!u8 || u8->dtype != SD_U8 || sd_tensor_numel(u8) != ni) {
      conf_result(s->c, id, 0, "golden image_u8 missing");
    } else {
      int64_t off = 0;
      int worst = 0;
      for (int64_t i = 0; i < ni; i++) {
        int q = (int)lrintf(img[i] * 255.0f);
        int d = abs(q - ((const uint8_t *)u8->data)[i]);
        if (d) off++;
        if (d > worst) worst = d;
      }
      if (s->c->bf16)
        conf_skip(s->c, id, "bf16: %lld of %lld pixels differ, max %d levels, not asserted "
                  "(the +-1 bound is fp32's)", (long long)off, (long long)ni, worst);
      else /* a value within 1e-3 of a .5 boundary may round either way */
        conf_result(s->c, id, worst <= 1, "%lld of %lld pixels differ, max %d",
                    (long long)off, (long long)ni, worst);
    }
  }
  goto done;
missing:
  conf_result(s->c, id, 0, "golden tensors missing");
  goto done;
oom:
  conf_result(s->c, id, 0, "out of memory");
  goto done;
fail:
  conf_result(s->c, id, 0, "%s", err.msg);
done:
#undef GOLDEN_NAME
  clip_out_free(&L);
  clip_out_free(&G);
  sd_free(t5);
  sd_free(emb);
  sd_free(pooled);
  sd_free(x);
  sd_free(v);
  sd_free(img);
  sd_free(zin);
  sd_mmdit_free(m);
  sd_vae_free(vae);
  sd_weights_free(w);
  cJSON_Delete(conf);
  cJSON_Delete(schcfg);
  sd_scheduler_free(sch);
  sd_tensor_free(lat0);
}

/* The same run through the library pipeline (tokenizers, seeded noise,
 * stages releasing their models): its image must match too. */
static void run_pipeline(const sd3_conf *s, const sd3_sources *src, const char *label,
                         const cJSON *run) {
  const char *tag = sd_json_str(run, "tag", "?");
  char id[512], name[256];
  snprintf(id, sizeof id, "%s/e2e.%s.pipeline", label, tag);
  if (!conf_wants(s->c, id)) return;
  sd3_sources run_src = *src;
  run_src.skip_t5 = strcmp(sd_json_str(run, "text_encoder_3", "used"), "used") != 0;
  const char *desc = sd_json_str(run, "latents", "");
  const char *seed_at = strstr(desc, "seed ");
  snprintf(name, sizeof name, "e2e.%s.image", tag);
  const sd_tensor *gimg = sd_weights_get(s->g, name);
  if (!seed_at || !gimg) {
    conf_skip(s->c, id, "no seed or golden image");
    return;
  }
  sd3_params prm = sd3_default_params();
  prm.prompt = sd_json_str(run, "prompt", "");
  prm.negative_prompt = sd_json_str(run, "negative_prompt", NULL);
  prm.guidance = (float)sd_json_num(run, "guidance_scale", 0);
  prm.steps = sd_json_int(run, "num_inference_steps", 4);
  prm.width = sd_json_int(run, "width", 128);
  prm.height = sd_json_int(run, "height", 128);
  prm.max_sequence_length = sd_json_int(run, "max_sequence_length", 256);
  prm.seed = strtoull(seed_at + 5, NULL, 10);
  sd_error err = {0};
  sd3_pipeline *p = NULL;
  if (open_source(&p, &run_src, s->c, id)) return;
  float *img = sd_alloc(sizeof(float) * 3 * prm.width * prm.height);
  if (!img) {
    conf_result(s->c, id, 0, "out of memory");
  } else if (sd3_generate(p, &prm, img, &err)) {
    conf_result(s->c, id, 0, "%s", err.msg);
  } else {
    conf_check_tensor(s->c, id, img, (int64_t)3 * prm.width * prm.height, gimg, TOL_E2E);
  }
  sd_free(img);
  sd3_pipeline_free(p);
}

/* ---- suite ---- */

void conf_suite_sd3_family(conf_ctx *c, const char *model, const char *golden_dir,
                           const cJSON *root) {
  char path[4200], folder[4200], single[4200], incl[4200], te_dir[4200];
  sd_error err = {0};
  sd_weights *g = NULL;
  snprintf(path, sizeof path, "%s/golden.safetensors", golden_dir);
  if (sd_weights_open(&g, path, &err)) {
    conf_result(c, model, 0, "%s", err.msg);
    return;
  }
  const char *mf = sd_json_str(root, "model_folder", model);
  snprintf(folder, sizeof folder, "%s/%s", c->fixtures, mf);
  size_t fl = strlen(folder);
  if (fl > 1 && folder[fl - 1] == '/') folder[fl - 1] = '\0';
  sd3_conf s = {c, model, folder, g, root, cJSON_GetObjectItemCaseSensitive(root, "cases")};

  /* Sources: the folder, the single file (+ the separate encoders), the
   * single file with encoders. */
  const char *sf = sd_json_str(root, "single_file", NULL);
  single[0] = incl[0] = '\0';
  if (sf) {
    snprintf(single, sizeof single, "%s/%s", c->fixtures, sf);
    snprintf(incl, sizeof incl, "%s/%.*s-incl-encoders.safetensors", c->fixtures,
             (int)(strlen(sf) - strlen(".safetensors")), sf);
    if (!sd_is_file(incl)) incl[0] = '\0';
  }
  snprintf(te_dir, sizeof te_dir, "%s/text_encoders", c->fixtures);
  char te_l[4300], te_g[4300], te_t[4300];
  snprintf(te_l, sizeof te_l, "%s/clip_l.safetensors", te_dir);
  snprintf(te_g, sizeof te_g, "%s/clip_g.safetensors", te_dir);
  snprintf(te_t, sizeof te_t, "%s/t5xxl.safetensors", te_dir);
  int have_te_files = sd_is_file(te_l) && sd_is_file(te_g) && sd_is_file(te_t);

  const cJSON *te = cJSON_GetObjectItemCaseSensitive(s.cases, "text_encoders");
  static te_prompts tp;
  int have_prompts = te && read_prompts(te, &tp) == 0;
  if (te && !have_prompts) conf_result(c, model, 0, "text_encoders: unreadable prompts");
  const cJSON *runs = cJSON_GetObjectItemCaseSensitive(
      cJSON_GetObjectItemCaseSensitive(s.cases, "e2e"), "runs");

  sd3_pipeline *p = NULL;
  sd3_sources src = {.model = folder};
  if (!open_source(&p, &src, c, model)) {
    if (have_prompts) check_text_encoders(&s, p, model, &tp, 1, 1);
    check_transformer(&s, p, model);
    check_vae(&s, p, model);
    const cJSON *run;
    cJSON_ArrayForEach(run, runs) run_e2e(&s, p, model, run);
    sd3_pipeline_free(p);
    cJSON_ArrayForEach(run, runs) run_pipeline(&s, &src, model, run);
  }
  check_scheduler(&s);

  if (single[0]) {
    sd3_sources ss = {.model = single, .tokenizers = folder};
    if (have_te_files) {
      ss.clip_l = te_l;
      ss.clip_g = te_g;
      ss.t5 = te_t;
    }
    if (!open_source(&p, &ss, c, sf)) {
      check_transformer(&s, p, sf);
      check_vae(&s, p, sf);
      if (have_te_files) {
        const cJSON *run;
        cJSON_ArrayForEach(run, runs) run_e2e(&s, p, sf, run);
      }
      sd3_pipeline_free(p);
    }
  }
  if (have_prompts && have_te_files) {
    /* The separate encoder files on their own (no transformer needed). */
    sd3_sources ts = {.model = folder, .clip_l = te_l, .clip_g = te_g, .t5 = te_t,
                      .tokenizers = folder};
    char label[256];
    snprintf(label, sizeof label, "%s+text_encoders", model);
    if (!open_source(&p, &ts, c, label)) {
      check_text_encoders(&s, p, label, &tp, 1, 1);
      sd3_pipeline_free(p);
    }
  }
  if (have_prompts && incl[0]) {
    const char *label = strrchr(incl, '/') + 1;
    sd3_sources is = {.model = incl, .tokenizers = folder};
    if (!open_source(&p, &is, c, label)) {
      check_text_encoders(&s, p, label, &tp, 1, 1);
      check_transformer(&s, p, label);
      sd3_pipeline_free(p);
    }
  }
  sd_weights_free(g);
}
