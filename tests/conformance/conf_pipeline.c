/* txt2img / img2img golden cases of the SD 1.5 / SDXL family, run through
 * the same pipeline stages the CLI uses. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "conformance.h"
#include "io/json.h"
#include "io/model_dir.h"
#include "pipeline/unet_pipeline.h"

#define TOL_EMBEDS 1e-4
#define TOL_E2E 1e-3

static const char *tensor_name(const cJSON *kase, const char *group, const char *key) {
  return sd_json_str(cJSON_GetObjectItemCaseSensitive(kase, group), key, NULL);
}

static int json_pair(const cJSON *params, const char *key, int *a, int *b) {
  int v[2];
  if (sd_json_int_array(params, key, v, 2) != 2) return 0;
  *a = v[0];
  *b = v[1];
  return 1;
}

/* Compares a u8 image with the golden u8 (same layout) within +-1 level. */
static void check_u8(conf_ctx *c, const char *id, const float *img01, int n, int C, int H,
                     int W, const sd_tensor *g) {
  if (!g || g->dtype != SD_U8 || sd_tensor_numel(g) != (int64_t)n * C * H * W) {
    conf_result(c, id, 0, "golden image_u8 missing or of another size");
    return;
  }
  const uint8_t *gp = g->data;
  int worst = 0;
  int64_t off = 0;
  for (int b = 0; b < n; b++)
    for (int y = 0; y < H; y++)
      for (int x = 0; x < W; x++)
        for (int ch = 0; ch < C; ch++) {
          float v = img01[(((int64_t)b * C + ch) * H + y) * W + x] * 255.0f;
          int q = (int)nearbyintf(v); /* round half to even, as numpy */
          int d = abs(q - gp[off++]);
          if (d > worst) worst = d;
        }
  if (c->bf16)
    conf_skip(c, id, "bf16: max |diff| %d levels, not asserted (the +-1 bound is fp32's)", worst);
  else
    conf_result(c, id, worst <= 1, "max |diff| %d levels (tol 1)", worst);
}

/* One run of a case; side_path: the case's LoRAs stay a side path instead
 * of being merged. */
static void run_case(conf_ctx *c, const char *model, const char *golden_dir, const cJSON *root,
                     const cJSON *kase, const char *id, int side_path) {
  const cJSON *params = cJSON_GetObjectItemCaseSensitive(kase, "params");
  int img2img = strcmp(sd_json_str(kase, "kind", ""), "img2img") == 0;
  /* LatentConsistencyModelPipeline: prompt only, guidance as a UNet input */
  int lcm = strcmp(sd_json_str(kase, "kind", ""), "lcm_txt2img") == 0;
  char cid[600], p[4096];
  sd_lora_spec loras[8];
  char lora_paths[8][4200];
  int n_loras = 0;
  const cJSON *l;
  cJSON_ArrayForEach(l, cJSON_GetObjectItemCaseSensitive(kase, "lora")) {
    if (n_loras == 8) break;
    snprintf(lora_paths[n_loras], sizeof lora_paths[n_loras], "%s/%s", c->fixtures,
             sd_json_str(l, "file", ""));
    loras[n_loras].path = lora_paths[n_loras];
    loras[n_loras].scale = (float)sd_json_num(l, "scale", 1.0);
    n_loras++;
  }
  sd_error err = {0};
  sd_weights *g = NULL;
  sd_unet_model *m = NULL;
  sd_scheduler *sched = NULL;
  sd_rng *rng = NULL;
  sd_taesd *tiny = NULL;
  sd_conditioning cond = {0};
  float *lat = NULL, *img = NULL, *x = NULL, *tcond = NULL;
  snprintf(p, sizeof p, "%s/%s", golden_dir, sd_json_str(kase, "file", "pipeline.safetensors"));
  if (sd_weights_open(&g, p, &err)) goto fail;
  char folder[4096];
  /* model_folder: the case's own model; vae_folder: its VAE replaced by
   * that AutoencoderTiny (decode, and img2img's encode) */
  snprintf(folder, sizeof folder, "%s/%s", c->fixtures,
           sd_json_str(kase, "model_folder", sd_json_str(root, "model_folder", model)));
  const char *vae_folder = sd_json_str(kase, "vae_folder", NULL);
  if (vae_folder) {
    snprintf(p, sizeof p, "%s/%s", c->fixtures, vae_folder);
    if (sd_taesd_open(&tiny, p, SD_TAESD_DECODER | (img2img ? SD_TAESD_ENCODER : 0), &err))
      goto fail;
  }
  sd_load_options lo = {.path = folder, .loras = loras, .n_loras = n_loras};
  if (sd_unet_model_load(&m, &lo, &err)) goto fail;
  if (!side_path && sd_unet_model_merge_loras(m, &err)) goto fail;

  float guidance = (float)sd_json_num(params, "guidance_scale", 7.5);
  int steps = sd_json_int(params, "num_inference_steps", 4);
  int n = sd_json_int(params, "num_images_per_prompt", 1);
  int W = sd_json_int(params, "width", 0), H = sd_json_int(params, "height", 0);
  if (img2img) {
    const sd_tensor *u8 = sd_weights_get(g, tensor_name(kase, "inputs", "init_image_u8"));
    if (!u8 || u8->dtype != SD_U8 || u8->ndim != 4) {
      snprintf(err.msg, sizeof err.msg, "init_image_u8 missing");
      goto fail;
    }
    n = (int)u8->shape[0];
    H = (int)u8->shape[1];
    W = (int)u8->shape[2];
  }
  const cJSON *neg = cJSON_GetObjectItemCaseSensitive(params, "negative_prompt");
  sd_prompt_options po = {
      .prompt = sd_json_str(params, "prompt", ""),
      .negative_prompt = cJSON_IsString(neg) ? neg->valuestring : NULL,
      .n = n, .guidance = !lcm && guidance > 1.0f, .width = W, .height = H,
      .aesthetic_score = (float)sd_json_num(params, "aesthetic_score", 6.0),
      .negative_aesthetic_score = (float)sd_json_num(params, "negative_aesthetic_score", 2.5)};
  json_pair(params, "original_size", &po.orig_height, &po.orig_width);
  json_pair(params, "crops_coords_top_left", &po.crop_top, &po.crop_left);
  if (sd_encode_prompt(m, &po, &cond, &err)) goto fail;
  snprintf(cid, sizeof cid, "%s.prompt_embeds", id);
  conf_check_tensor(c, cid, cond.context, (int64_t)cond.batch * cond.ctx_len * cond.ctx_dim,
                    sd_weights_get(g, tensor_name(kase, "intermediates", "prompt_embeds")),
                    TOL_EMBEDS);

  /* scheduler_override: params.scheduler_class from the folder's config
   * with params.from_config_overrides */
  const char *cls = sd_json_str(params, "scheduler_class", NULL);
  int kind = cls ? conf_sampler_for_class(cls) : SD_SAMPLER_DEFAULT;
  if (cls && kind < 0) {
    snprintf(err.msg, sizeof err.msg, "scheduler class %s unknown", cls);
    goto fail;
  }
  if (sd_scheduler_create(&sched, m->scheduler_config, (sd_sampler)kind,
                          cls ? cJSON_GetObjectItemCaseSensitive(params, "from_config_overrides")
                              : NULL,
                          &err) ||
      sd_scheduler_set_timesteps(sched, steps, &err))
    goto fail;
  if (lcm) {
    if (!(tcond = sd_alloc(sizeof(float) * n * sd_unet_get_config(m->unet)->time_cond_proj_dim)))
      goto oom;
    int dim = sd_unet_get_config(m->unet)->time_cond_proj_dim;
    float wv = guidance - 1.0f;
    for (int b = 0; b < n; b++) sd_unet_guidance_embedding(tcond + (int64_t)b * dim, &wv, 1, dim);
    snprintf(cid, sizeof cid, "%s.w_embedding", id);
    conf_check_tensor(c, cid, tcond, (int64_t)n * dim,
                      sd_weights_get(g, tensor_name(kase, "intermediates", "w_embedding")),
                      TOL_EMBEDS);
  }
  int f = tiny ? sd_taesd_get_config(tiny)->decoder_factor : sd_vae_downscale(m->vae), C = sd_unet_get_config(m->unet)->in_channels;
  int h = H / f, w = W / f;
  int64_t N = (int64_t)n * C * h * w;
  lat = sd_alloc(sizeof(float) * N);
  img = sd_alloc(sizeof(float) * n * 3 * H * W);
  if (!lat || !img) goto oom;
  int begin = 0;
  if (!img2img) {
    rng = sd_rng_new(SD_RNG_CPU, (uint64_t)sd_json_num(params, "latents_seed", 0));
    if (!rng) goto oom;
    sd_rng_randn(rng, lat, N);
    snprintf(cid, sizeof cid, "%s.latents_in", id);
    conf_check_tensor(c, cid, lat, N, sd_weights_get(g, tensor_name(kase, "inputs", "latents")),
                      1e-6);
    float sigma = sd_scheduler_init_noise_sigma(sched);
    for (int64_t i = 0; i < N; i++) lat[i] *= sigma;
  } else {
    const sd_tensor *u8 = sd_weights_get(g, tensor_name(kase, "inputs", "init_image_u8"));
    const uint8_t *px = u8->data;
    x = sd_alloc(sizeof(float) * n * 3 * H * W);
    if (!x) goto oom;
    for (int b = 0; b < n; b++)
      for (int ch = 0; ch < 3; ch++)
        for (int i = 0; i < H * W; i++)
          x[((int64_t)b * 3 + ch) * H * W + i] =
              2.0f * ((float)px[((int64_t)b * H * W + i) * 3 + ch] / 255.0f) - 1.0f;
    rng = sd_rng_new(SD_RNG_CPU, (uint64_t)sd_json_num(params, "generator_seed", 0));
    if (!rng) goto oom;
    if (tiny ? sd_encode_image_tiny(tiny, x, n, H, W, lat, &err)
             : sd_encode_image(m->vae, x, n, H, W, rng, lat, &err))
      goto fail;
    snprintf(cid, sizeof cid, "%s.init_latents", id);
    conf_check_tensor(c, cid, lat, N,
                      sd_weights_get(g, tensor_name(kase, "intermediates", "init_latents")),
                      TOL_EMBEDS);
    float strength = (float)sd_json_num(params, "strength", 0.3);
    begin = sd_img2img_begin_index(steps, strength) * sd_scheduler_order(sched);
    sd_scheduler_set_begin_index(sched, begin);
    float *noise = x; /* reuse: the image is no longer needed */
    sd_rng_randn(rng, noise, N);
    sd_scheduler_add_noise(sched, begin, lat, noise, N);
    snprintf(cid, sizeof cid, "%s.noised_latents", id);
    conf_check_tensor(c, cid, lat, N,
                      sd_weights_get(g, tensor_name(kase, "intermediates", "noised_latents")),
                      TOL_EMBEDS);
  }
  sd_denoise_options dopt = {.guidance_scale = lcm ? 0.0f : guidance, .steps = steps,
                             .begin_index = begin, .timestep_cond = tcond};
  if (sd_denoise(m, sched, &cond, &dopt, lat, n, h, w, rng, &err)) goto fail;
  snprintf(cid, sizeof cid, "%s.final_latents", id);
  conf_check_tensor(c, cid, lat, N, sd_weights_get(g, tensor_name(kase, "outputs", "final_latents")),
                    TOL_E2E);
  if (tiny ? sd_decode_latents_tiny(tiny, lat, n, h, w, img, &err)
           : sd_decode_latents(m->vae, lat, n, h, w, 0, img, &err))
    goto fail;
  int64_t in = (int64_t)n * 3 * H * W;
  for (int64_t i = 0; i < in; i++) {
    float v = img[i] / 2.0f + 0.5f;
    img[i] = v < 0 ? 0 : v > 1 ? 1 : v;
  }
  snprintf(cid, sizeof cid, "%s.image", id);
  conf_check_tensor(c, cid, img, in, sd_weights_get(g, tensor_name(kase, "outputs", "image")),
                    TOL_E2E);
  snprintf(cid, sizeof cid, "%s.image_u8", id);
  check_u8(c, cid, img, n, 3, H, W, sd_weights_get(g, tensor_name(kase, "outputs", "image_u8")));
  goto done;
oom:
  snprintf(err.msg, sizeof err.msg, "out of memory");
fail:
  conf_result(c, id, 0, "%s", err.msg);
done:
  sd_free(tcond);
  sd_free(lat);
  sd_free(img);
  sd_free(x);
  sd_conditioning_free(&cond);
  sd_rng_free(rng);
  sd_scheduler_free(sched);
  sd_unet_model_free(m);
  sd_taesd_free(tiny);
  sd_weights_free(g);
}

void conf_pipeline_case(conf_ctx *c, const char *model, const char *golden_dir,
                        const cJSON *root, const cJSON *kase) {
  char id[512], sid[560];
  snprintf(id, sizeof id, "%s/%s", model, sd_json_str(kase, "name", "?"));
  run_case(c, model, golden_dir, root, kase, id, 0);
  if (cJSON_GetObjectItemCaseSensitive(kase, "lora")) { /* both LoRA mechanisms */
    snprintf(sid, sizeof sid, "%s[lora side path]", id);
    run_case(c, model, golden_dir, root, kase, sid, 1);
  }
}
