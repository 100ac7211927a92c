/* Base and refiner stages for the UNet family (SD 1.x/2.x, SDXL). */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "base/alloc.h"
#include "io/image.h"
#include "pipeline/generate_internal.h"
#include "pipeline/unet_pipeline.h"
#include "tensor/ops.h"

/* Loads `path` as a UNet-family model, reporting load time. */
static int load_model(gen_run *r, const char *path, sd_unet_model **m) {
  const sdgen_params *p = r->p;
  double t = sd_now();
  sd_load_options lo = {.path = path, .config_dir = p->config_dir,
                        .tokenizers_dir = p->tokenizers_dir, .prefer_fp16 = p->prefer_fp16};
  int rc = sd_unet_model_load(m, &lo, r->err);
  r->t_load += sd_now() - t;
  return rc;
}

/* Conditioning for the prompt, then releases the text encoders. */
static int encode(gen_run *r, sd_unet_model *m, int n, float cfg, int W, int H,
                  sd_conditioning *cond) {
  const sdgen_params *p = r->p;
  double t = sd_now();
  sd_prompt_options po = {.prompt = p->prompt, .negative_prompt = p->negative_prompt, .n = n,
                          .guidance = cfg > 1.0f, .width = W, .height = H,
                          .aesthetic_score = p->aesthetic_score,
                          .negative_aesthetic_score = p->negative_aesthetic_score};
  int rc = sd_encode_prompt(m, &po, cond, r->err);
  r->t_encode += sd_now() - t;
  if (rc) return rc;
  sd_unet_model_drop_text_encoders(m);
  sd_monitor_cleanup(&r->mon, "Releasing text encoders...");
  sd_monitor_optimization(&r->mon, "Released text encoders after encoding");
  return SD_OK;
}

/* Saves latents next to the output before the decode (nothing lost). */
static int save_latents(gen_run *r, const float *lat, int n, int C, int h, int w,
                        const char *model) {
  snprintf(r->latents_path, sizeof r->latents_path, "%s/output_%s.latents.safetensors",
           r->p->output_dir, r->stamp);
  sd_tensor lt = {.dtype = SD_F32, .ndim = 4, .shape = {n, C, h, w}, .data = (void *)lat};
  sd_named_tensor nt = {"latents", &lt};
  return sd_write_latents(r->latents_path, &nt, model, r->err);
}

static int decode(gen_run *r, const sd_vae *vae, const float *lat, int n, int h, int w,
                  float *img) {
  double t = sd_now();
  int rc = sd_decode_latents(vae, lat, n, h, w, 1, img, r->err);
  r->t_decode += sd_now() - t;
  if (rc) return rc;
  if (n > 1) sd_monitor_optimization(&r->mon, "VAE slicing: decoded one image at a time");
  int64_t total = (int64_t)n * 3 * h * w * 64;
  int bad = 0;
  for (int64_t i = 0; i < total; i++) bad |= !isfinite(img[i]);
  if (bad) sd_monitor_warn(&r->mon, "the decoded image holds NaN/Inf values");
  return SD_OK;
}

int gen_base_unet(gen_run *r) {
  const sdgen_params *p = r->p;
  sd_unet_model *m = NULL;
  sd_scheduler *sched = NULL;
  sd_rng *rng = NULL;
  sd_conditioning cond = {0};
  float *lat = NULL, *init = NULL;
  int rc = load_model(r, r->model_path, &m);
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
  r->cfg = p->cfg >= 0 ? p->cfg : (m->family == SD_MODEL_SD1 ? 7.5f : 5.0f);
  int n = r->n, h = H / f, w = W / f, C = uc->in_channels;
  sd_sampler kind = p->sampler ? (sd_sampler)sd_sampler_parse(p->sampler) : SD_SAMPLER_DEFAULT;
  if ((rc = sd_scheduler_create(&sched, m->scheduler_config, kind, NULL, r->err)) ||
      (rc = sd_scheduler_set_timesteps(sched, r->steps, r->err)))
    goto done;
  r->sampler = sd_scheduler_kind(sched);

  sd_monitor_cleanup(&r->mon, "Cleaning memory before generation...");
  sd_monitor_stage(&r->mon, "Before generation");
  if ((rc = encode(r, m, n, r->cfg, W, H, &cond))) goto done;

  int64_t N = (int64_t)n * C * h * w;
  lat = sd_alloc(sizeof(float) * N);
  rng = sd_rng_new((sd_rng_kind)sd_rng_kind_parse(p->rng ? p->rng : "cpu"), p->seed);
  if (!lat || !rng) goto oom;
  int begin = 0;
  if (p->init_image) {
    sd_image in = {0};
    if ((rc = sd_image_read(p->init_image, &in, r->err))) goto done;
    if (in.width != W || in.height != H) {
      rc = sd_fail(r->err, SD_ERR_ARG,
                   "init image %s is %dx%d but the output is %dx%d (pass --width %d --height %d)",
                   p->init_image, in.width, in.height, W, H, in.width - in.width % f,
                   in.height - in.height % f);
      sd_image_free(&in);
      goto done;
    }
    init = sd_alloc(sizeof(float) * n * 3 * H * W);
    if (!init) {
      sd_image_free(&in);
      goto oom;
    }
    for (int b = 0; b < n; b++) {
      float *dst = init + (int64_t)b * 3 * H * W;
      for (int c = 0; c < 3; c++) /* alpha, if any, is ignored */
        for (int64_t i = 0; i < (int64_t)H * W; i++)
          dst[c * (int64_t)H * W + i] = 2.0f * ((float)in.data[i * in.channels + c] / 255.0f) - 1.0f;
    }
    sd_image_free(&in);
    if ((rc = sd_encode_image(m->vae, init, n, H, W, rng, lat, r->err))) goto done;
    begin = sd_img2img_begin_index(r->steps, p->strength) * sd_scheduler_order(sched);
    if (begin >= sd_scheduler_num_steps(sched)) {
      rc = sd_fail(r->err, SD_ERR_ARG, "strength %g leaves no denoising step at %d steps",
                   p->strength, r->steps);
      goto done;
    }
    sd_scheduler_set_begin_index(sched, begin);
    sd_rng_randn(rng, init, N); /* the add_noise draw (init reused as scratch) */
    sd_scheduler_add_noise(sched, begin, lat, init, N);
  } else {
    sd_rng_randn(rng, lat, N);
    float sigma = sd_scheduler_init_noise_sigma(sched);
    for (int64_t i = 0; i < N; i++) lat[i] *= sigma;
  }
  r->stage_start = sd_now();
  sd_denoise_options dopt = {.guidance_scale = r->cfg, .steps = r->steps, .sampler = r->sampler,
                             .begin_index = begin, .on_step = gen_progress, .user = r};
  if ((rc = sd_denoise(m, sched, &cond, &dopt, lat, n, h, w, rng, r->err))) goto done;
  r->t_denoise += sd_now() - r->stage_start;
  sd_conditioning_free(&cond);
  sd_monitor_stage(&r->mon, "After generation");

  if ((rc = save_latents(r, lat, n, C, h, w, r->model_path))) goto done;
  r->images = sd_alloc(sizeof(float) * n * 3 * H * W);
  if (!r->images) goto oom;
  if ((rc = decode(r, m->vae, lat, n, h, w, r->images))) goto done;
  sd_monitor_stage(&r->mon, "After decode");
  goto done;
oom:
  rc = sd_fail(r->err, SD_ERR_OOM, "out of memory");
done:
  sd_free(lat);
  sd_free(init);
  sd_conditioning_free(&cond);
  sd_rng_free(rng);
  sd_scheduler_free(sched);
  sd_unet_model_free(m);
  return rc;
}

int gen_refine(gen_run *r) {
  const sdgen_params *p = r->p;
  sd_unet_model *m = NULL;
  sd_scheduler *sched = NULL;
  sd_rng *rng = NULL;
  sd_conditioning cond = {0};
  float *lat = NULL, *noise = NULL;
  sd_monitor_cleanup(&r->mon, "Unloading the base pipeline before the refiner...");
  sd_monitor_stage(&r->mon, "Before refiner");
  double t0 = sd_now();
  char path[4096];
  int rc = sd_resolve_model(p, p->refiner, path, sizeof path, r->err);
  if (rc) return rc;
  snprintf(r->refiner_path, sizeof r->refiner_path, "%s", path);
  if (sd_model_is_sd3(path))
    return sd_fail(r->err, SD_ERR_ARG, "refiner %s is an SD3 model; use an SDXL refiner or "
                   "an SD 1.5 model", p->refiner);
  sd_load_options lo = {.path = path, .tokenizers_dir = p->tokenizers_dir,
                        .prefer_fp16 = p->prefer_fp16};
  if ((rc = sd_unet_model_load(&m, &lo, r->err))) return rc;
  if (strcmp(r->model_type, "sd1") == 0 && m->family != SD_MODEL_SD1) {
    rc = sd_fail(r->err, SD_ERR_ARG, "an %s refiner cannot refine SD 1.5 images; use an SD 1.5 "
                 "model as refiner", sd_model_family_name(m->family));
    goto done;
  }
  r->refiner_mode = "image";
  int W = r->width, H = r->height, n = r->n;
  int f = sd_vae_downscale(m->vae), C = sd_unet_get_config(m->unet)->in_channels;
  int h = H / f, w = W / f;
  int steps = p->refiner_steps > 0 ? p->refiner_steps : 20;
  float strength = p->refiner_strength > 0 ? p->refiner_strength : 0.3f;
  float cfg = p->cfg >= 0 ? p->cfg : (m->family == SD_MODEL_SD1 ? 7.5f : 5.0f);
  if ((rc = sd_scheduler_create(&sched, m->scheduler_config, SD_SAMPLER_DEFAULT, NULL, r->err)) ||
      (rc = sd_scheduler_set_timesteps(sched, steps, r->err)))
    goto done;
  if ((rc = encode(r, m, n, cfg, W, H, &cond))) goto done;
  /* The refiner sees the base image as a PNG holds it: 8-bit quantized. */
  int64_t img_n = (int64_t)n * 3 * H * W;
  for (int64_t i = 0; i < img_n; i++) {
    float v = r->images[i] / 2.0f + 0.5f;
    v = v < 0 ? 0 : v > 1 ? 1 : v;
    r->images[i] = 2.0f * (nearbyintf(v * 255.0f) / 255.0f) - 1.0f;
  }
  int64_t N = (int64_t)n * C * h * w;
  lat = sd_alloc(sizeof(float) * N);
  noise = sd_alloc(sizeof(float) * N);
  rng = sd_rng_new((sd_rng_kind)sd_rng_kind_parse(p->rng ? p->rng : "cpu"), p->seed);
  if (!lat || !noise || !rng) {
    rc = sd_fail(r->err, SD_ERR_OOM, "out of memory in the refiner");
    goto done;
  }
  if ((rc = sd_encode_image(m->vae, r->images, n, H, W, rng, lat, r->err))) goto done;
  int begin = sd_img2img_begin_index(steps, strength) * sd_scheduler_order(sched);
  if (begin >= sd_scheduler_num_steps(sched)) {
    rc = sd_fail(r->err, SD_ERR_ARG, "refiner strength %g leaves no step at %d steps", strength,
                 steps);
    goto done;
  }
  sd_scheduler_set_begin_index(sched, begin);
  sd_rng_randn(rng, noise, N);
  sd_scheduler_add_noise(sched, begin, lat, noise, N);
  r->stage_start = sd_now();
  sd_denoise_options dopt = {.guidance_scale = cfg, .steps = steps, .begin_index = begin,
                             .on_step = gen_progress, .user = r};
  if ((rc = sd_denoise(m, sched, &cond, &dopt, lat, n, h, w, rng, r->err))) goto done;
  if ((rc = decode(r, m->vae, lat, n, h, w, r->images))) goto done;
  r->t_refine = sd_now() - t0;
  sd_monitor_stage(&r->mon, "After refiner");
done:
  sd_free(lat);
  sd_free(noise);
  sd_conditioning_free(&cond);
  sd_rng_free(rng);
  sd_scheduler_free(sched);
  sd_unet_model_free(m);
  return rc;
}
