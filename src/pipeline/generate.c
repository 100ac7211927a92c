/* sdgen_generate: the recipe of stages for one generation, with the memory
 * monitor's cleanup points, and the files it writes (PNG + JSON per image,
 * latents before the decode). Everything written goes to a temporary name
 * first and is renamed when complete. */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/alloc.h"
#include "io/hub.h"
#include "io/image.h"
#include "io/json.h"
#include "io/model_dir.h"
#include "io/safetensors_write.h"
#include "pipeline/generate_internal.h"
#include "pipeline/monitor.h"
#include "pipeline/unet_pipeline.h"
#include "sdgen.h"
#include "tensor/ops.h"

struct sdgen_ctx {
  sd_error err;
  volatile sig_atomic_t cancel;
};

const char *sdgen_version(void) { return SDGEN_VERSION; }

sdgen_params sdgen_default_params(void) {
  sdgen_params p;
  memset(&p, 0, sizeof p);
  p.output_dir = "outputs";
  p.steps = 30;
  p.cfg = -1.0f;
  p.seed = 42;
  p.n = 1;
  p.rng = "cpu";
  p.strength = 0.8f;
  return p;
}

int sdgen_ctx_new(sdgen_ctx **out) {
  *out = sd_calloc(1, sizeof **out);
  return *out ? 0 : SD_ERR_OOM;
}

void sdgen_ctx_free(sdgen_ctx *ctx) { sd_free(ctx); }
const char *sdgen_last_error(const sdgen_ctx *ctx) { return ctx ? ctx->err.msg : ""; }
void sdgen_cancel(sdgen_ctx *ctx) { ctx->cancel = 1; }

/* AUTOMATIC1111's sampler names, so its readers show ours. */
static const char *a1111_sampler(sd_sampler s) {
  switch (s) {
  case SD_SAMPLER_PNDM: return "PLMS";
  case SD_SAMPLER_DDIM: return "DDIM";
  case SD_SAMPLER_EULER: return "Euler";
  case SD_SAMPLER_EULER_A: return "Euler a";
  case SD_SAMPLER_DPMPP_2M: return "DPM++ 2M";
  case SD_SAMPLER_DPMPP_2M_KARRAS: return "DPM++ 2M Karras";
  case SD_SAMPLER_LCM: return "LCM";
  case SD_SAMPLER_FLOW_EULER: return "Euler";
  default: return "?";
  }
}

int sd_validate_params(const sdgen_params *p, sd_error *err) {
  if (!p->prompt) return sd_fail(err, SD_ERR_ARG, "no prompt given");
  if (p->width < 0 || p->height < 0 || p->width % 8 || p->height % 8)
    return sd_fail(err, SD_ERR_ARG, "width and height must be positive multiples of 8 (got %dx%d)",
                   p->width, p->height);
  if (p->width > 16384 || p->height > 16384)
    return sd_fail(err, SD_ERR_ARG, "image size %dx%d is too large", p->width, p->height);
  if (p->steps < 1 || p->steps > 10000)
    return sd_fail(err, SD_ERR_ARG, "steps must be between 1 and 10000 (got %d)", p->steps);
  if (p->n < 1 || p->n > SDGEN_MAX_IMAGES)
    return sd_fail(err, SD_ERR_ARG, "n must be between 1 and %d (got %d)", SDGEN_MAX_IMAGES,
                   p->n);
  if (p->sampler && sd_sampler_parse(p->sampler) < 0)
    return sd_fail(err, SD_ERR_ARG,
                   "unknown sampler '%s' (pndm, ddim, euler, euler_a, dpmpp_2m, "
                   "dpmpp_2m_karras, lcm, flow_euler)",
                   p->sampler);
  if (p->rng && sd_rng_kind_parse(p->rng) < 0)
    return sd_fail(err, SD_ERR_ARG, "unknown generator '%s' (cpu or cuda)", p->rng);
  if (p->init_image && !(p->strength > 0.0f && p->strength <= 1.0f))
    return sd_fail(err, SD_ERR_ARG, "strength must be in (0, 1] (got %g)", p->strength);
  if (p->init_image && !sd_is_file(p->init_image))
    return sd_fail(err, SD_ERR_IO, "init image %s not found", p->init_image);
  if (p->cfg > 100.0f) return sd_fail(err, SD_ERR_ARG, "cfg %g is out of range", p->cfg);
  return SD_OK;
}

/* Creates the output folder (and parents) and checks it is writable. */
int sd_prepare_output_dir(const char *dir, sd_error *err) {
  char path[4096];
  snprintf(path, sizeof path, "%s", dir);
  for (char *s = path + 1; *s; s++) {
    if (*s != '/') continue;
    *s = 0;
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
      return sd_fail(err, SD_ERR_IO, "cannot create output folder %s: %s", path,
                     strerror(errno));
    *s = '/';
  }
  if (mkdir(path, 0755) != 0 && errno != EEXIST)
    return sd_fail(err, SD_ERR_IO, "cannot create output folder %s: %s", path, strerror(errno));
  if (!sd_is_dir(path) || access(path, W_OK | X_OK) != 0)
    return sd_fail(err, SD_ERR_IO, "output folder %s is not writable", path);
  return SD_OK;
}

/* Writes text to path through a temporary file. */
int sd_write_text_atomic(const char *path, const char *text, sd_error *err) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  FILE *f = fopen(tmp, "w");
  if (!f) return sd_fail(err, SD_ERR_IO, "cannot write %s: %s", path, strerror(errno));
  size_t n = strlen(text);
  int ok = fwrite(text, 1, n, f) == n;
  if (fclose(f) != 0) ok = 0;
  if (!ok || rename(tmp, path) != 0) {
    unlink(tmp);
    return sd_fail(err, SD_ERR_IO, "cannot write %s: %s", path, strerror(errno));
  }
  return SD_OK;
}

int sd_resolve_model(const sdgen_params *p, const char *name, char *out, size_t n,
                     sd_error *err) {
  if (sd_is_dir(name) || sd_is_file(name)) {
    snprintf(out, n, "%s", name);
    return SD_OK;
  }
  /* Not a path: a hub name, looked up in the Hugging Face cache, then
   * downloaded (unless offline). */
  sd_hub_options ho = sd_hub_default_options();
  ho.offline = p->offline;
  ho.progress = p->on_download;
  ho.user = p->user;
  char repo[512], file[1024];
  sd_error perr = {0};
  if (sd_hub_parse_name(name, repo, sizeof repo, file, sizeof file, &perr))
    return sd_fail(err, SD_ERR_IO, "model %s not found (neither a file, a folder nor a hub name)",
                   name);
  return sd_hub_resolve(name, &ho, out, n, err);
}

/* ---- the run ---- */

typedef struct gen_run {
  sdgen_ctx *ctx;
  const sdgen_params *p;
  sd_monitor mon;
  sd_error *err;
  double t_load, t_encode, t_denoise, t_decode;
  double denoise_start;
} gen_run;

static void on_monitor_event(sd_event_kind kind, const char *text, const sd_stage_record *rec,
                             void *user) {
  const gen_run *r = user;
  if (r->p->on_event) r->p->on_event((int)kind, text, r->p->user);
}

static int on_step(int step, int total, void *user) {
  gen_run *r = user;
  if (r->ctx->cancel) return 1;
  if (r->p->on_progress)
    return r->p->on_progress(step, total, sd_now() - r->denoise_start, r->p->user);
  return 0;
}

static cJSON *metadata_json(const gen_run *r, const sd_unet_model *m, int index, int width,
                            int height, float cfg, int steps, sd_sampler sampler,
                            const char *png_name) {
  const sdgen_params *p = r->p;
  cJSON *o = cJSON_CreateObject();
  if (!o) return NULL;
  cJSON_AddStringToObject(o, "prompt", p->prompt);
  if (p->negative_prompt)
    cJSON_AddStringToObject(o, "negative_prompt", p->negative_prompt);
  else
    cJSON_AddNullToObject(o, "negative_prompt");
  cJSON_AddNumberToObject(o, "seed", (double)p->seed);
  cJSON_AddStringToObject(o, "generator", p->rng ? p->rng : "cpu");
  cJSON_AddNumberToObject(o, "steps", steps);
  cJSON_AddStringToObject(o, "sampler", sd_sampler_name(sampler));
  cJSON_AddNumberToObject(o, "cfg", cfg);
  cJSON_AddNumberToObject(o, "width", width);
  cJSON_AddNumberToObject(o, "height", height);
  cJSON_AddNumberToObject(o, "n", p->n);
  cJSON_AddNumberToObject(o, "index", index);
  cJSON_AddStringToObject(o, "image", png_name);
  if (p->init_image) {
    cJSON_AddStringToObject(o, "init_image", p->init_image);
    cJSON_AddNumberToObject(o, "strength", p->strength);
  }
  cJSON *model = cJSON_AddObjectToObject(o, "model");
  if (model) {
    cJSON_AddStringToObject(model, "path", m->path);
    cJSON_AddStringToObject(model, "type", sd_model_family_name(m->family));
  }
  cJSON *t = cJSON_AddObjectToObject(o, "timings_s");
  if (t) {
    cJSON_AddNumberToObject(t, "model_load", r->t_load);
    cJSON_AddNumberToObject(t, "text_encoding", r->t_encode);
    cJSON_AddNumberToObject(t, "denoising", r->t_denoise);
    cJSON_AddNumberToObject(t, "vae_decode", r->t_decode);
    cJSON_AddNumberToObject(t, "total", sd_monitor_elapsed(&r->mon));
  }
  cJSON_AddNumberToObject(o, "threads", sd_get_threads());
  cJSON_AddStringToObject(o, "version", SDGEN_VERSION);
  cJSON *opts = cJSON_AddArrayToObject(o, "optimizations");
  for (int i = 0; opts && i < r->mon.nopt; i++)
    cJSON_AddItemToArray(opts, cJSON_CreateString(r->mon.optimizations[i]));
  cJSON *mem = sd_monitor_to_json(&r->mon);
  if (mem) cJSON_AddItemToObject(o, "memory", mem);
  return o;
}

/* AUTOMATIC1111 "parameters" text: prompt, negative line, settings line. */
static void a1111_parameters(char *buf, size_t n, const sdgen_params *p, int steps,
                             sd_sampler sampler, float cfg, int w, int h, const char *model,
                             uint64_t seed) {
  const char *base = strrchr(model, '/');
  base = base ? base + 1 : model;
  size_t u = (size_t)snprintf(buf, n, "%s\n", p->prompt);
  if (p->negative_prompt && u < n)
    u += (size_t)snprintf(buf + u, n - u, "Negative prompt: %s\n", p->negative_prompt);
  if (u < n)
    snprintf(buf + u, n - u,
             "Steps: %d, Sampler: %s, CFG scale: %g, Seed: %llu, Size: %dx%d, Model: %s, "
             "RNG: %s, Version: sdgen %s",
             steps, a1111_sampler(sampler), cfg, (unsigned long long)seed, w, h, base,
             p->rng && strcmp(p->rng, "cuda") == 0 ? "NV" : "CPU", SDGEN_VERSION);
}

int sdgen_generate(sdgen_ctx *ctx, const sdgen_params *p, sdgen_result *res) {
  sd_error *err = &ctx->err;
  sd_error_clear(err);
  memset(res, 0, sizeof *res);
  ctx->cancel = 0;
  gen_run r = {.ctx = ctx, .p = p, .err = err};
  sd_monitor_init(&r.mon, on_monitor_event, &r);
  sd_unet_model *m = NULL;
  sd_scheduler *sched = NULL;
  sd_rng *rng = NULL;
  sd_conditioning cond = {0};
  float *lat = NULL, *img = NULL, *init = NULL;
  char latents_path[4200] = "";
  int rc = sd_validate_params(p, err);
  if (rc) return rc;
  if (!p->model) return sd_fail(err, SD_ERR_ARG, "no model given");
  if ((rc = sd_prepare_output_dir(p->output_dir, err))) return rc;
  if (p->threads > 0) sd_set_threads(p->threads);

  char model_path[4096];
  if ((rc = sd_resolve_model(p, p->model, model_path, sizeof model_path, err))) return rc;
  sd_monitor_stage(&r.mon, "Before model load");
  double t = sd_now();
  sd_load_options lo = {.path = model_path, .config_dir = p->config_dir,
                        .tokenizers_dir = p->tokenizers_dir, .prefer_fp16 = p->prefer_fp16};
  if ((rc = sd_unet_model_load(&m, &lo, err))) goto fail;
  r.t_load = sd_now() - t;
  sd_monitor_stage(&r.mon, "After model load");

  const sd_unet_config *uc = sd_unet_get_config(m->unet);
  int f = sd_vae_downscale(m->vae);
  int W = p->width ? p->width : uc->sample_size * f;
  int H = p->height ? p->height : uc->sample_size * f;
  if (W % f || H % f) {
    rc = sd_fail(err, SD_ERR_ARG, "width and height must be multiples of %d", f);
    goto fail;
  }
  float cfg = p->cfg >= 0 ? p->cfg : (m->family == SD_MODEL_SD1 ? 7.5f : 5.0f);
  int n = p->n, h = H / f, w = W / f, C = uc->in_channels;
  sd_sampler kind = p->sampler ? (sd_sampler)sd_sampler_parse(p->sampler) : SD_SAMPLER_DEFAULT;
  if ((rc = sd_scheduler_create(&sched, m->scheduler_config, kind, NULL, err)) ||
      (rc = sd_scheduler_set_timesteps(sched, p->steps, err)))
    goto fail;
  kind = sd_scheduler_kind(sched);

  sd_monitor_cleanup(&r.mon, "Cleaning memory before generation...");
  sd_monitor_stage(&r.mon, "Before generation");
  t = sd_now();
  sd_prompt_options po = {.prompt = p->prompt, .negative_prompt = p->negative_prompt, .n = n,
                          .guidance = cfg > 1.0f, .width = W, .height = H,
                          .aesthetic_score = 6.0f, .negative_aesthetic_score = 2.5f};
  if ((rc = sd_encode_prompt(m, &po, &cond, err))) goto fail;
  r.t_encode = sd_now() - t;
  sd_unet_model_drop_text_encoders(m);
  sd_monitor_cleanup(&r.mon, "Releasing text encoders...");
  sd_monitor_optimization(&r.mon, "Released text encoders after encoding");

  int64_t N = (int64_t)n * C * h * w;
  lat = sd_alloc(sizeof(float) * N);
  if (!lat) goto oom;
  rng = sd_rng_new((sd_rng_kind)sd_rng_kind_parse(p->rng ? p->rng : "cpu"), p->seed);
  if (!rng) goto oom;
  int begin = 0;
  if (p->init_image) {
    sd_image in = {0};
    if ((rc = sd_image_read(p->init_image, &in, err))) goto fail;
    if (in.width != W || in.height != H) {
      rc = sd_fail(err, SD_ERR_ARG, "init image %s is %dx%d, the output is %dx%d (pass "
                   "--width %d --height %d)", p->init_image, in.width, in.height, W, H,
                   in.width - in.width % 8, in.height - in.height % 8);
      sd_image_free(&in);
      goto fail;
    }
    init = sd_alloc(sizeof(float) * n * 3 * H * W);
    if (!init) {
      sd_image_free(&in);
      goto oom;
    }
    for (int b = 0; b < n; b++) {
      float *dst = init + (int64_t)b * 3 * H * W;
      if (in.channels == 3) {
        sd_image_to_planar(dst, &in, SD_RANGE_NEG1_1);
      } else {
        for (int c2 = 0; c2 < 3; c2++)
          for (int64_t i = 0; i < (int64_t)H * W; i++)
            dst[c2 * (int64_t)H * W + i] = /* alpha ignored */
                2.0f * ((float)in.data[i * in.channels + c2] / 255.0f) - 1.0f;
      }
    }
    sd_image_free(&in);
    if ((rc = sd_encode_image(m->vae, init, n, H, W, rng, lat, err))) goto fail;
    begin = sd_img2img_begin_index(p->steps, p->strength) * sd_scheduler_order(sched);
    if (begin >= sd_scheduler_num_steps(sched)) {
      rc = sd_fail(err, SD_ERR_ARG, "strength %g leaves no denoising step at %d steps",
                   p->strength, p->steps);
      goto fail;
    }
    sd_scheduler_set_begin_index(sched, begin);
    sd_rng_randn(rng, init, N); /* the add_noise draw; init reused as scratch */
    sd_scheduler_add_noise(sched, begin, lat, init, N);
    sd_free(init);
    init = NULL;
  } else {
    sd_rng_randn(rng, lat, N);
    float sigma = sd_scheduler_init_noise_sigma(sched);
    for (int64_t i = 0; i < N; i++) lat[i] *= sigma;
  }
  r.denoise_start = t = sd_now();
  sd_denoise_options dopt = {.guidance_scale = cfg, .steps = p->steps, .sampler = kind,
                             .begin_index = begin, .on_step = on_step, .user = &r};
  if ((rc = sd_denoise(m, sched, &cond, &dopt, lat, n, h, w, rng, err))) goto fail;
  r.t_denoise = sd_now() - t;
  sd_conditioning_free(&cond);
  sd_monitor_stage(&r.mon, "After generation");

  /* Nothing lost: the latents reach disk before the decode. */
  char stamp[64];
  time_t now = time(NULL);
  struct tm tmv;
  localtime_r(&now, &tmv);
  strftime(stamp, sizeof stamp, "%Y%m%d_%H%M%S", &tmv);
  snprintf(latents_path, sizeof latents_path, "%s/output_%s.latents.safetensors",
           p->output_dir, stamp);
  {
    sd_tensor lt = {.dtype = SD_F32, .ndim = 4, .shape = {n, C, h, w}, .data = lat};
    sd_named_tensor nt = {"latents", &lt};
    if ((rc = sd_write_latents(latents_path, &nt, m->path, err))) goto fail;
  }

  t = sd_now();
  int64_t img_per = 3LL * H * W;
  img = sd_alloc(sizeof(float) * img_per * n);
  if (!img) goto oom;
  if ((rc = sd_decode_latents(m->vae, lat, n, h, w, 1, img, err))) goto fail;
  r.t_decode = sd_now() - t;
  int bad = 0;
  for (int64_t i = 0; i < img_per * n; i++) bad |= !isfinite(img[i]);
  if (bad) sd_monitor_warn(&r.mon, "the decoded image holds NaN/Inf values (shown as black)");
  sd_monitor_stage(&r.mon, "After decode");

  for (int b = 0; b < n; b++) {
    char png[4096], json[4096], name[256], params_text[8192];
    int k = 0;
    do { /* never overwrite an existing image */
      snprintf(name, sizeof name, k ? "output_%s_%d_%d" : "output_%s_%d", stamp, b, k);
      snprintf(png, sizeof png, "%s/%s.png", p->output_dir, name);
      k++;
    } while (sd_is_file(png) && k < 1000);
    snprintf(json, sizeof json, "%s/%s.json", p->output_dir, name);
    sd_image out = {0};
    if ((rc = sd_image_alloc(&out, W, H, 3, err))) goto fail;
    sd_image_from_planar(&out, img + img_per * b, 3, SD_RANGE_NEG1_1);
    a1111_parameters(params_text, sizeof params_text, p, p->steps, kind, cfg, W, H, m->path,
                     p->seed);
    sd_png_text text = {"parameters", params_text};
    rc = sd_image_write_png(png, &out, &text, 1, err);
    sd_image_free(&out);
    if (rc) goto fail;
    sd_monitor_stage(&r.mon, b == n - 1 ? "On completion" : "After save");
    char png_base[300];
    snprintf(png_base, sizeof png_base, "%s.png", name);
    cJSON *meta = metadata_json(&r, m, b, W, H, cfg, p->steps, kind, png_base);
    char *text_json = meta ? cJSON_Print(meta) : NULL;
    cJSON_Delete(meta);
    if (!text_json) goto oom;
    rc = sd_write_text_atomic(json, text_json, err);
    free(text_json);
    if (rc) {
      unlink(png);
      goto fail;
    }
    snprintf(res->images[res->count], sizeof res->images[0], "%s", png);
    snprintf(res->metadata[res->count], sizeof res->metadata[0], "%s", json);
    res->count++;
  }
  if (!p->keep_latents) unlink(latents_path);
  goto done;
oom:
  rc = sd_fail(err, SD_ERR_OOM, "out of memory");
fail:
  sd_monitor_cleanup(&r.mon, "Cleaning up after the error...");
  sd_monitor_stage(&r.mon, "On error");
  /* Images already written stay; their set is incomplete only if n > 1. */
  if (latents_path[0] && rc != SD_ERR_CANCELLED && !p->keep_latents && res->count == 0) {
    /* keep the latents so `generate --decode` can finish the image */
    if (p->on_event) {
      char line[4400];
      snprintf(line, sizeof line, "latents kept in %s (finish with --decode)", latents_path);
      p->on_event(SDGEN_EVENT_INFO, line, p->user);
    }
  } else if (latents_path[0] && rc == SD_ERR_CANCELLED) {
    unlink(latents_path);
  }
done:
  sd_free(lat);
  sd_free(img);
  sd_free(init);
  sd_conditioning_free(&cond);
  sd_rng_free(rng);
  sd_scheduler_free(sched);
  sd_unet_model_free(m);
  sd_alloc_trim();
  return rc;
}

int sd_write_latents(const char *path, const sd_named_tensor *latents, const char *model,
                     sd_error *err) {
  cJSON *meta = cJSON_CreateObject();
  if (!meta) return sd_fail(err, SD_ERR_OOM, "out of memory");
  cJSON_AddStringToObject(meta, "model", model);
  cJSON_AddStringToObject(meta, "format", "sdgen latents (scaled, as the UNet sees them)");
  char *text = cJSON_PrintUnformatted(meta);
  cJSON_Delete(meta);
  if (!text) return sd_fail(err, SD_ERR_OOM, "out of memory");
  int rc = sd_safetensors_write(path, latents, 1, text, err);
  free(text);
  return rc;
}
