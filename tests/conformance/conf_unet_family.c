/* SD 1.5 / SDXL / SDXL refiner family: golden/<model>/cases.json with a
 * "cases" list. Components (text encoders, UNet, VAE) are checked on the
 * diffusers folder and, where the fixtures have one, on the single-file
 * checkpoint; schedulers and pipelines by their own modules. */
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "conformance.h"
#include "io/checkpoint_map.h"
#include "io/json.h"
#include "io/lora.h"
#include "io/model_dir.h"
#include "models/clip_text.h"
#include "models/unet.h"
#include "models/vae.h"
#include "sample/rng.h"

#define TOL_COMPONENT 1e-4

/* Golden tensor of any numeric dtype as a new F32 tensor, or NULL. */
static sd_tensor *golden_f32(const sd_weights *g, const char *name) {
  const sd_tensor *t = name ? sd_weights_get(g, name) : NULL;
  if (!t) return NULL;
  if (t->dtype == SD_F32 || t->dtype == SD_F16 || t->dtype == SD_BF16 || t->dtype == SD_F64)
    return sd_tensor_to_f32(t);
  sd_tensor *o = sd_tensor_new(t->ndim, t->shape);
  if (!o) return NULL;
  int64_t n = sd_tensor_numel(t);
  for (int64_t i = 0; i < n; i++) {
    double v = 0;
    /* safetensors data need not be aligned for its type: copy, don't cast */
    const unsigned char *src = (const unsigned char *)t->data;
    switch (t->dtype) {
    case SD_I64: {
      int64_t x;
      memcpy(&x, src + 8 * i, 8);
      v = (double)x;
      break;
    }
    case SD_I32: {
      int32_t x;
      memcpy(&x, src + 4 * i, 4);
      v = x;
      break;
    }
    case SD_U8: v = src[i]; break;
    default: break;
    }
    sd_f32(o)[i] = (float)v;
  }
  return o;
}

static const char *io_name(const cJSON *kase, const char *group, const char *key) {
  return sd_json_str(cJSON_GetObjectItemCaseSensitive(kase, group), key, NULL);
}

/* A model source: the diffusers folder or the single file mapped to it. */
typedef struct source {
  const char *label; /* "sd15" or "sd15.safetensors" */
  char folder[4096];
  const char *single; /* the single file (configs still from `folder`), or NULL */
} source;

static int open_component(const source *s, const char *component, sd_weights **w,
                          cJSON **cfg, sd_error *err) {
  char dir[4200];
  sd_path_join(dir, sizeof dir, s->folder, component);
  if (!s->single) return sd_component_open(dir, 0, w, cfg, err);
  /* the single file's tensors mapped to this component's diffusers names */
  static const char *const comps[] = {"unet", "vae", "text_encoder", "text_encoder_2"};
  sd_weights *file = NULL, *sets[4] = {0};
  sd_checkpoint_info info;
  *w = NULL;
  *cfg = NULL;
  int rc = sd_weights_open(&file, s->single, err);
  if (!rc) rc = sd_checkpoint_map(file, &info, &sets[0], &sets[1], &sets[2], &sets[3], err);
  sd_weights_free(file);
  for (int i = 0; i < 4; i++) {
    if (!rc && !*w && strcmp(comps[i], component) == 0 && sets[i])
      *w = sets[i];
    else
      sd_weights_free(sets[i]);
  }
  if (!rc && !*w) rc = sd_fail(err, SD_ERR_FORMAT, "%s has no %s", s->single, component);
  char cp[4300];
  sd_path_join(cp, sizeof cp, dir, "config.json");
  if (!rc && (rc = sd_json_read_file(cp, cfg, err))) {
    sd_weights_free(*w);
    *w = NULL;
  }
  return rc;
}

/* How a case's "lora" list is applied: none, merged, side path. */
enum { LORA_NONE = 0, LORA_MERGED, LORA_SIDE };

/* The case's LoRAs bound to every component of the folder (so that every
 * key of the files must map), applied merged or as a side path. `keep`
 * names the component whose weight set the caller gets (*w); the other sets
 * are freed. *a must be freed after *w. */
static int open_with_loras(conf_ctx *c, const source *s, const cJSON *kase, const char *keep,
                           int mode, sd_weights **w, cJSON **cfg, sd_adapter **a,
                           sd_error *err) {
  static const char *const comps[] = {"unet", "text_encoder", "text_encoder_2"};
  static const sd_lora_target_kind kinds[] = {SD_LORA_UNET, SD_LORA_TE1, SD_LORA_TE2};
  sd_weights *sets[3] = {0};
  cJSON *cfgs[3] = {0};
  sd_lora_spec specs[8];
  char paths[8][4200];
  int n = 0, rc = SD_OK;
  const cJSON *l;
  cJSON_ArrayForEach(l, cJSON_GetObjectItemCaseSensitive(kase, "lora")) {
    if (n == 8) break;
    snprintf(paths[n], sizeof paths[n], "%s/%s", c->fixtures, sd_json_str(l, "file", ""));
    specs[n].path = paths[n];
    specs[n].scale = (float)sd_json_num(l, "scale", 1.0);
    n++;
  }
  sd_adapter_target t[3];
  for (int i = 0; i < 3 && !rc; i++) {
    char dir[4200];
    sd_path_join(dir, sizeof dir, s->folder, comps[i]);
    if (i == 2 && !sd_is_dir(dir)) break;
    rc = open_component(s, comps[i], &sets[i], &cfgs[i], err);
    t[i].kind = kinds[i];
    t[i].w = sets[i];
  }
  sd_lora_family fam = sets[2] ? SD_LORA_FAMILY_SDXL : SD_LORA_FAMILY_SD1;
  if (!rc) rc = sd_adapter_load(a, specs, n, t, sets[2] ? 3 : 2, fam, err);
  if (!rc && *a)
    rc = mode == LORA_SIDE ? sd_adapter_attach_side(*a, err)
                           : sd_adapter_merge(*a, SD_LORA_TARGETS, err);
  for (int i = 0; i < 3; i++) {
    if (!rc && strcmp(comps[i], keep) == 0) {
      *w = sets[i];
      *cfg = cfgs[i];
      sd_adapter_forget(*a, sets[i]);
      continue;
    }
    sd_adapter_forget(*a, sets[i]);
    sd_weights_free(sets[i]);
    cJSON_Delete(cfgs[i]);
  }
  if (rc) {
    sd_adapter_free(*a);
    *a = NULL;
  }
  return rc;
}

static void check_text_encoder(conf_ctx *c, const source *s, const sd_weights *g,
                               const cJSON *kase, const char *id, int lora) {
  const char *component = sd_json_str(kase, "component", "text_encoder");
  sd_error err = {0};
  sd_weights *w = NULL;
  cJSON *cfg = NULL;
  sd_clip *m = NULL;
  sd_adapter *adapter = NULL;
  sd_tensor *ids_f = golden_f32(g, io_name(kase, "inputs", "input_ids"));
  char cid[600];
  if (!ids_f) {
    conf_result(c, id, 0, "input_ids missing from goldens");
    return;
  }
  if ((lora ? open_with_loras(c, s, kase, component, lora, &w, &cfg, &adapter, &err)
            : open_component(s, component, &w, &cfg, &err)) ||
      sd_clip_load(&m, w, "", cfg, SD_ACT_QUICK_GELU, &err)) {
    conf_result(c, id, 0, "%s", err.msg);
    goto done;
  }
  int B = (int)ids_f->shape[0], L = (int)ids_f->shape[1];
  int D = m->cfg.hidden, P = m->cfg.projection_dim;
  int32_t *ids = sd_alloc(sizeof(int32_t) * B * L);
  float *last = sd_alloc(sizeof(float) * B * L * D), *pen = sd_alloc(sizeof(float) * B * L * D);
  float *pooled = sd_alloc(sizeof(float) * B * D);
  float *emb = P ? sd_alloc(sizeof(float) * B * P) : NULL;
  for (int i = 0; i < B * L; i++) ids[i] = (int32_t)sd_f32(ids_f)[i];
  const char *te = io_name(kase, "outputs", "text_embeds");
  sd_clip_outputs o = {last, pen, pooled, te ? emb : NULL};
  if (sd_clip_encode(m, ids, B, L, &o, &err)) {
    conf_result(c, id, 0, "%s", err.msg);
  } else {
    static const char *const keys[] = {"last_hidden_state", "penultimate_hidden_state",
                                       "pooled_output", "text_embeds"};
    float *bufs[] = {last, pen, pooled, emb};
    int64_t sizes[] = {(int64_t)B * L * D, (int64_t)B * L * D, (int64_t)B * D, (int64_t)B * P};
    for (int k = 0; k < 4; k++) {
      const char *name = io_name(kase, "outputs", keys[k]);
      if (!name) continue;
      snprintf(cid, sizeof cid, "%s.%s", id, keys[k]);
      conf_check_tensor(c, cid, bufs[k], sizes[k], sd_weights_get(g, name), TOL_COMPONENT);
    }
  }
  sd_free(ids);
  sd_free(last);
  sd_free(pen);
  sd_free(pooled);
  sd_free(emb);
done:
  sd_clip_free(m);
  sd_weights_free(w);
  sd_adapter_free(adapter);
  cJSON_Delete(cfg);
  sd_tensor_free(ids_f);
}

static void check_unet(conf_ctx *c, const source *s, const sd_weights *g, const cJSON *kase,
                       const char *id, int lora) {
  sd_error err = {0};
  sd_adapter *adapter = NULL;
  sd_weights *w = NULL;
  cJSON *cfg = NULL;
  sd_unet *m = NULL;
  sd_tensor *x = golden_f32(g, io_name(kase, "inputs", "sample"));
  sd_tensor *t = golden_f32(g, io_name(kase, "inputs", "timestep"));
  sd_tensor *ctx = golden_f32(g, io_name(kase, "inputs", "encoder_hidden_states"));
  sd_tensor *te = golden_f32(g, io_name(kase, "inputs", "text_embeds"));
  sd_tensor *tid = golden_f32(g, io_name(kase, "inputs", "time_ids"));
  float *out = NULL, *ts = NULL, *tc = NULL;
  if (!x || !t || !ctx) {
    conf_result(c, id, 0, "UNet inputs missing from goldens");
    goto done;
  }
  if ((lora ? open_with_loras(c, s, kase, "unet", lora, &w, &cfg, &adapter, &err)
            : open_component(s, "unet", &w, &cfg, &err)) ||
      sd_unet_load(&m, w, cfg, &err)) {
    conf_result(c, id, 0, "%s", err.msg);
    goto done;
  }
  int B = (int)x->shape[0], C = (int)x->shape[1], H = (int)x->shape[2], W = (int)x->shape[3];
  out = sd_alloc(sizeof(float) * B * sd_unet_get_config(m)->out_channels * H * W);
  ts = sd_alloc(sizeof(float) * B);
  for (int b = 0; b < B; b++) ts[b] = sd_f32(t)[sd_tensor_numel(t) == 1 ? 0 : b];
  sd_unet_cond cond = {sd_f32(ctx), (int)ctx->shape[1], te ? sd_f32(te) : NULL,
                       tid ? sd_f32(tid) : NULL, tid ? (int)tid->shape[1] : 0, NULL};
  (void)C;
  if (io_name(kase, "inputs", "timestep_cond")) {
    /* LCM: the guidance embedding is computed from params.w and checked
     * against the golden input before it conditions the UNet. */
    int dim = sd_unet_get_config(m)->time_cond_proj_dim;
    const cJSON *wj = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(kase, "params"), "w");
    if (!dim || B > 64 || cJSON_GetArraySize(wj) != B) {
      conf_result(c, id, 0, "UNet has no time_cond_proj_dim or params.w has not %d values", B);
      goto done;
    }
    float wv[64];
    for (int b = 0; b < B && b < 64; b++) wv[b] = (float)cJSON_GetArrayItem(wj, b)->valuedouble;
    tc = sd_alloc(sizeof(float) * B * dim);
    if (!tc) goto done;
    sd_unet_guidance_embedding(tc, wv, B, dim);
    char tid_[600];
    snprintf(tid_, sizeof tid_, "%s.timestep_cond", id);
    conf_check_tensor(c, tid_, tc, (int64_t)B * dim,
                      sd_weights_get(g, io_name(kase, "inputs", "timestep_cond")), TOL_COMPONENT);
    cond.timestep_cond = tc;
  }
  if (sd_unet_forward(m, sd_f32(x), B, H, W, ts, &cond, out, 0, &err))
    conf_result(c, id, 0, "%s", err.msg);
  else
    conf_check_tensor(c, id, out, sd_tensor_numel(x) / C * sd_unet_get_config(m)->out_channels,
                      sd_weights_get(g, io_name(kase, "outputs", "sample")), TOL_COMPONENT);
done:
  sd_free(out);
  sd_free(ts);
  sd_free(tc);
  sd_unet_free(m);
  sd_weights_free(w);
  sd_adapter_free(adapter);
  cJSON_Delete(cfg);
  sd_tensor_free(x);
  sd_tensor_free(t);
  sd_tensor_free(ctx);
  sd_tensor_free(te);
  sd_tensor_free(tid);
}

static void check_vae(conf_ctx *c, const source *s, const sd_weights *g, const cJSON *kase,
                      const char *id, int encode) {
  sd_error err = {0};
  sd_weights *w = NULL;
  cJSON *cfg = NULL;
  sd_vae *m = NULL;
  char cid[600];
  if (open_component(s, "vae", &w, &cfg, &err) || sd_vae_load(&m, w, cfg, &err)) {
    conf_result(c, id, 0, "%s", err.msg);
    goto done;
  }
  const sd_vae_config *vc = sd_vae_get_config(m);
  float scaling = (float)sd_json_num(kase, "scaling_factor", vc->scaling_factor);
  if (!encode) {
    sd_tensor *lat = golden_f32(g, io_name(kase, "inputs", "latents"));
    if (!lat) {
      conf_result(c, id, 0, "latents missing");
      goto done;
    }
    int B = (int)lat->shape[0], h = (int)lat->shape[2], wd = (int)lat->shape[3];
    int f = sd_vae_downscale(m);
    int64_t n = sd_tensor_numel(lat), img_n = (int64_t)B * vc->out_channels * h * f * wd * f;
    float *z = sd_alloc(sizeof(float) * n), *img = sd_alloc(sizeof(float) * img_n);
    for (int64_t i = 0; i < n; i++) z[i] = sd_f32(lat)[i] / scaling + vc->shift_factor;
    if (sd_vae_decode(m, z, B, h, wd, img, &err)) {
      conf_result(c, id, 0, "%s", err.msg);
    } else {
      snprintf(cid, sizeof cid, "%s.decoder_output", id);
      conf_check_tensor(c, cid, img, img_n,
                        sd_weights_get(g, io_name(kase, "outputs", "decoder_output")),
                        TOL_COMPONENT);
      for (int64_t i = 0; i < img_n; i++) {
        float v = img[i] / 2.0f + 0.5f;
        img[i] = v < 0 ? 0 : v > 1 ? 1 : v;
      }
      snprintf(cid, sizeof cid, "%s.image", id);
      conf_check_tensor(c, cid, img, img_n, sd_weights_get(g, io_name(kase, "outputs", "image")),
                        TOL_COMPONENT);
    }
    sd_free(z);
    sd_free(img);
    sd_tensor_free(lat);
  } else {
    const sd_tensor *u8 = sd_weights_get(g, io_name(kase, "inputs", "image_u8"));
    if (!u8 || u8->dtype != SD_U8 || u8->ndim != 3) {
      conf_result(c, id, 0, "image_u8 missing or not HWC u8");
      goto done;
    }
    int H = (int)u8->shape[0], W = (int)u8->shape[1], C = (int)u8->shape[2];
    int f = sd_vae_downscale(m), L = vc->latent_channels;
    int64_t ln = (int64_t)L * (H / f) * (W / f);
    float *x = sd_alloc(sizeof(float) * C * H * W);
    float *mean = sd_alloc(sizeof(float) * ln), *std = sd_alloc(sizeof(float) * ln),
          *logvar = sd_alloc(sizeof(float) * ln), *noise = sd_alloc(sizeof(float) * ln);
    const uint8_t *p = u8->data;
    for (int ch = 0; ch < C; ch++)
      for (int i = 0; i < H * W; i++)
        x[(int64_t)ch * H * W + i] = 2.0f * ((float)p[(int64_t)i * C + ch] / 255.0f) - 1.0f;
    if (sd_vae_encode(m, x, 1, H, W, mean, std, logvar, &err)) {
      conf_result(c, id, 0, "%s", err.msg);
    } else {
      struct { const char *key; float *buf; } outs[] = {
          {"mean", mean}, {"std", std}, {"logvar", logvar}};
      for (int k = 0; k < 3; k++) {
        snprintf(cid, sizeof cid, "%s.%s", id, outs[k].key);
        conf_check_tensor(c, cid, outs[k].buf, ln,
                          sd_weights_get(g, io_name(kase, "outputs", outs[k].key)),
                          TOL_COMPONENT);
      }
      sd_rng *rng = sd_rng_new(SD_RNG_CPU, (uint64_t)sd_json_num(kase, "sample_seed", 0));
      if (rng) {
        sd_rng_randn(rng, noise, ln);
        sd_rng_free(rng);
        for (int64_t i = 0; i < ln; i++) mean[i] = mean[i] + std[i] * noise[i];
        snprintf(cid, sizeof cid, "%s.sample", id);
        conf_check_tensor(c, cid, mean, ln, sd_weights_get(g, io_name(kase, "outputs", "sample")),
                          TOL_COMPONENT);
        for (int64_t i = 0; i < ln; i++) mean[i] *= scaling;
        snprintf(cid, sizeof cid, "%s.scaled_latents", id);
        conf_check_tensor(c, cid, mean, ln,
                          sd_weights_get(g, io_name(kase, "outputs", "scaled_latents")),
                          TOL_COMPONENT);
      }
    }
    sd_free(x);
    sd_free(mean);
    sd_free(std);
    sd_free(logvar);
    sd_free(noise);
  }
done:
  sd_vae_free(m);
  sd_weights_free(w);
  cJSON_Delete(cfg);
}

void conf_suite_unet_family(conf_ctx *c, const char *model, const char *golden_dir,
                            const cJSON *root) {
  source folder = {model, "", NULL};
  char p[4096];
  snprintf(folder.folder, sizeof folder.folder, "%s/%s", c->fixtures,
           sd_json_str(root, "model_folder", model));
  /* components are checked on the single file too where there is one */
  char single_path[4200];
  const char *sf = sd_json_str(root, "single_file", NULL);
  source single = folder;
  snprintf(single_path, sizeof single_path, "%s/%s", c->fixtures, sf ? sf : "");
  single.label = sf;
  single.single = sf ? single_path : NULL;
  const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases");
  /* Golden files are opened once per kind. */
  const cJSON *kase;
  cJSON_ArrayForEach(kase, cases) {
    const char *kind = sd_json_str(kase, "kind", "");
    const char *name = sd_json_str(kase, "name", "?");
    char id[512];
    snprintf(id, sizeof id, "%s/%s", model, name);
    if (!conf_wants(c, id)) continue;
    if (!conf_requires_met(c, id, kase)) continue;
    if (strcmp(kind, "scheduler") == 0) {
      conf_scheduler_case(c, model, golden_dir, root, kase);
      continue;
    }
    if (strcmp(kind, "txt2img") == 0 || strcmp(kind, "img2img") == 0 ||
        strcmp(kind, "lcm_txt2img") == 0) {
      conf_pipeline_case(c, model, golden_dir, root, kase);
      continue;
    }
    sd_weights *g = NULL;
    sd_error err = {0};
    snprintf(p, sizeof p, "%s/%s", golden_dir, sd_json_str(kase, "file", ""));
    if (sd_weights_open(&g, p, &err)) {
      conf_result(c, id, 0, "%s", err.msg);
      continue;
    }
    /* a LoRA case runs twice: merged, and through the side path */
    int lora = cJSON_GetObjectItemCaseSensitive(kase, "lora") != NULL;
    char sid[540], fid[560];
    snprintf(sid, sizeof sid, "%s[lora side path]", id);
    snprintf(fid, sizeof fid, "%s[%s]", id, sf ? sf : "");
    int lmode = lora ? LORA_MERGED : LORA_NONE;
    if (strcmp(kind, "text_encoder") == 0) {
      check_text_encoder(c, &folder, g, kase, id, lmode);
      if (lora) check_text_encoder(c, &folder, g, kase, sid, LORA_SIDE);
      if (sf) check_text_encoder(c, &single, g, kase, fid, lmode);
    } else if (strcmp(kind, "unet") == 0) {
      check_unet(c, &folder, g, kase, id, lmode);
      if (lora) check_unet(c, &folder, g, kase, sid, LORA_SIDE);
      if (sf) check_unet(c, &single, g, kase, fid, lmode);
    } else if (strcmp(kind, "vae_decode") == 0 || strcmp(kind, "vae_encode") == 0) {
      check_vae(c, &folder, g, kase, id, !strcmp(kind, "vae_encode"));
      if (sf) check_vae(c, &single, g, kase, fid, !strcmp(kind, "vae_encode"));
    }
    else if (strcmp(kind, "taesd_decode") == 0 || strcmp(kind, "taesd_encode") == 0)
      conf_taesd_case(c, folder.folder, g, kase, id);
    else
      conf_result(c, id, 0, "unknown case kind '%s'", kind);
    sd_weights_free(g);
  }
}
