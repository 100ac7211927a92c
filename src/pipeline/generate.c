/* sdgen_generate: the recipe of stages for one generation,
 *   base (UNet family or SD3) -> [refiner] -> 8-bit -> [upscale] -> save,
 * with the memory monitor's cleanup points between them. Files are written
 * under temporary names and renamed when complete. */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/cpu.h"
#include "io/checkpoint_map.h"
#include "io/hub.h"
#include "io/image.h"
#include "io/json.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "pipeline/generate_internal.h"
#include "tensor/ops.h"

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
  p.refiner_steps = 20;
  p.refiner_strength = 0.3f;
  p.aesthetic_score = 6.0f;
  p.negative_aesthetic_score = 2.5f;
  p.min_plan = -1;
  return p;
}

int sdgen_ctx_new(sdgen_ctx **out) {
  *out = sd_calloc(1, sizeof **out);
  return *out ? 0 : SD_ERR_OOM;
}

void sdgen_ctx_free(sdgen_ctx *ctx) { sd_free(ctx); }
const char *sdgen_last_error(const sdgen_ctx *ctx) { return ctx ? ctx->err.msg : ""; }
void sdgen_cancel(sdgen_ctx *ctx) { ctx->cancel = 1; }

int sd_parse_precision(const char *name, sd_precision *out, sd_error *err) {
  *out = SD_PREC_FP32;
  if (!name || !strcmp(name, "fp32")) return SD_OK;
  if (!strcmp(name, "bf16")) {
    if (!sd_precision_supported(SD_PREC_BF16))
      return sd_fail(err, SD_ERR_UNSUPPORTED,
                     "--precision bf16 needs a CPU with bf16 dot instructions "
                     "(AVX512_BF16); this one has: %s", sd_cpu_describe());
    *out = SD_PREC_BF16;
    return SD_OK;
  }
  if (!strcmp(name, "fast")) {
    *out = sd_precision_fast(NULL);
    return SD_OK;
  }
  return sd_fail(err, SD_ERR_ARG, "unknown precision '%s' (fp32, bf16 or fast)", name);
}

int sd_validate_params(const sdgen_params *p, sd_error *err) {
  if (!p->prompt) return sd_fail(err, SD_ERR_ARG, "no prompt given");
  if (!p->model) return sd_fail(err, SD_ERR_ARG, "no model given");
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
  if (p->timestep_spacing && strcmp(p->timestep_spacing, "leading") &&
      strcmp(p->timestep_spacing, "linspace") && strcmp(p->timestep_spacing, "trailing"))
    return sd_fail(err, SD_ERR_ARG,
                   "unknown timestep spacing '%s' (leading, linspace or trailing)",
                   p->timestep_spacing);
  if (p->prediction_type && strcmp(p->prediction_type, "epsilon") &&
      strcmp(p->prediction_type, "v_prediction"))
    return sd_fail(err, SD_ERR_ARG, "unknown prediction type '%s' (epsilon or v_prediction)",
                   p->prediction_type);
  if (p->rng && sd_rng_kind_parse(p->rng) < 0)
    return sd_fail(err, SD_ERR_ARG, "unknown generator '%s' (cpu or cuda)", p->rng);
  sd_precision prec;
  int rc_prec = sd_parse_precision(p->precision, &prec, err);
  if (rc_prec) return rc_prec;
  if (p->init_image && !(p->strength > 0.0f && p->strength <= 1.0f))
    return sd_fail(err, SD_ERR_ARG, "strength must be in (0, 1] (got %g)", p->strength);
  if (p->init_image && !sd_is_file(p->init_image))
    return sd_fail(err, SD_ERR_IO, "init image %s not found", p->init_image);
  if (!(p->cfg <= 100.0f)) return sd_fail(err, SD_ERR_ARG, "cfg %g is out of range", p->cfg);
  if (p->upscale && p->upscale != 1 && p->upscale != 2 && p->upscale != 4)
    return sd_fail(err, SD_ERR_ARG, "upscale factor must be 2 or 4 (got %d)", p->upscale);
  if (p->upscaler && p->upscale < 2)
    return sd_fail(err, SD_ERR_ARG, "--upscaler needs --upscale 2 or 4");
  if (p->upscaler && !sd_is_file(p->upscaler) && !strchr(p->upscaler, '/'))
    return sd_fail(err, SD_ERR_IO, "upscaler %s not found", p->upscaler);
  if (p->refiner && !(p->refiner_strength > 0.0f && p->refiner_strength <= 1.0f))
    return sd_fail(err, SD_ERR_ARG, "refiner strength must be in (0, 1] (got %g)",
                   p->refiner_strength);
  if (p->refiner && (p->refiner_steps < 1 || p->refiner_steps > 10000))
    return sd_fail(err, SD_ERR_ARG, "refiner steps must be between 1 and 10000");
  if (p->refiner_switch > 0.0f && !p->refiner)
    return sd_fail(err, SD_ERR_ARG, "--refiner-switch needs --refiner");
  if (p->vae && !p->vae[0]) return sd_fail(err, SD_ERR_ARG, "empty VAE name");
  if (p->preview_every < 0)
    return sd_fail(err, SD_ERR_ARG, "preview interval must be >= 0 (got %d)", p->preview_every);
  if (p->refiner_switch < 0.0f || p->refiner_switch >= 1.0f)
    return sd_fail(err, SD_ERR_ARG, "refiner switch must be in (0, 1) (got %g)",
                   p->refiner_switch);
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

int sd_write_latents(const char *path, const sd_named_tensor *latents, const char *model,
                     sd_error *err) {
  cJSON *meta = cJSON_CreateObject();
  if (!meta) return sd_fail(err, SD_ERR_OOM, "out of memory");
  cJSON_AddStringToObject(meta, "model", model);
  cJSON_AddStringToObject(meta, "format", "sdgen latents (scaled, as the denoiser sees them)");
  char *text = cJSON_PrintUnformatted(meta);
  cJSON_Delete(meta);
  if (!text) return sd_fail(err, SD_ERR_OOM, "out of memory");
  int rc = sd_safetensors_write(path, latents, 1, text, err);
  free(text);
  return rc;
}

int sd_resolve_model(const sdgen_params *p, const char *name, char *out, size_t n,
                     sd_error *err) {
  if (sd_is_dir(name) || sd_is_file(name)) {
    snprintf(out, n, "%s", name);
    return SD_OK;
  }
  /* Not a path: a hub name, looked up in the Hugging Face cache, then
   * downloaded (unless offline). */
  char repo[512], file[1024];
  sd_error perr = {0};
  if (sd_hub_parse_name(name, repo, sizeof repo, file, sizeof file, &perr))
    return sd_fail(err, SD_ERR_IO, "model %s not found (neither a file, a folder nor a hub name)",
                   name);
  sd_hub_options ho = sd_hub_default_options();
  ho.offline = p->offline;
  ho.progress = p->on_download;
  ho.user = p->user;
  return sd_hub_resolve(name, &ho, out, n, err);
}


/* Family of a model on disk without reading weights: *family = "sd1",
 * "sdxl", "sdxl-refiner", "sd3" or "" when unknown. Fails only when the
 * files cannot be read (a malformed model is "" here and reported by the
 * loader with the details). */
static int model_family(const char *path, const char **family, sd_error *err) {
  char p[4200];
  *family = "";
  if (sd_is_dir(path)) {
    cJSON *idx = NULL;
    sd_path_join(p, sizeof p, path, "model_index.json");
    if (!sd_is_file(p)) return SD_OK;
    sd_error e = {0};
    int rc = sd_json_read_file(p, &idx, &e);
    if (rc == SD_ERR_OOM) return sd_fail(err, rc, "%s", e.msg);
    if (rc) return SD_OK;
    const char *cls = sd_json_str(idx, "_class_name", "");
    *family = strstr(cls, "StableDiffusion3")   ? "sd3"
              : strstr(cls, "XLImg2Img")        ? "sdxl-refiner"
              : strstr(cls, "XL")               ? "sdxl"
              : strstr(cls, "StableDiffusion") ? "sd1"
                                                : "";
    cJSON_Delete(idx);
    return SD_OK;
  }
  sd_weights *w = NULL;
  sd_error e = {0};
  int rc = sd_weights_open(&w, path, &e);
  if (rc == SD_ERR_OOM) return sd_fail(err, rc, "%s", e.msg);
  if (rc) return SD_OK;
  sd_checkpoint_info info;
  sd_checkpoint_detect(w, &info);
  sd_weights_free(w);
  switch (info.family) {
  case SD_FAMILY_SD1:
  case SD_FAMILY_SD2: *family = "sd1"; break;
  case SD_FAMILY_SDXL_BASE: *family = "sdxl"; break;
  case SD_FAMILY_SDXL_REFINER: *family = "sdxl-refiner"; break;
  case SD_FAMILY_SD3: *family = "sd3"; break;
  default: break;
  }
  return SD_OK;
}

int gen_model_family(const char *path, const char **family, sd_error *err) {
  return model_family(path, family, err);
}

int gen_progress(int step, int total, void *user) {
  gen_run *r = user;
  if (r->ctx->cancel) return 1;
  if (r->p->on_progress)
    return r->p->on_progress(step, total, sd_now() - r->stage_start, r->p->user);
  return 0;
}

static void on_monitor_event(sd_event_kind kind, const char *text, const sd_stage_record *rec,
                             void *user) {
  const gen_run *r = user;
  if (r->p->on_event) r->p->on_event((int)kind, text, r->p->user);
}

/* r->images (n, 3, H, W) in [-1, 1] -> r->final 8-bit images. */
static int quantize(gen_run *r) {
  r->final = sd_calloc((size_t)r->n, sizeof(sd_image));
  if (!r->final) return sd_fail(r->err, SD_ERR_OOM, "out of memory");
  int64_t per = 3LL * r->width * r->height;
  for (int b = 0; b < r->n; b++) {
    int rc = sd_image_alloc(&r->final[b], r->width, r->height, 3, r->err);
    if (rc) return rc;
    sd_image_from_planar(&r->final[b], r->images + per * b, 3, SD_RANGE_NEG1_1);
  }
  sd_free(r->images);
  r->images = NULL;
  r->out_width = r->width;
  r->out_height = r->height;
  return SD_OK;
}

void sdgen_result_free(sdgen_result *res) {
  if (!res) return;
  for (int i = 0; i < SDGEN_MAX_IMAGES; i++) {
    free(res->infotext[i]);
    free(res->metadata_json[i]);
    free(res->png[i]);
  }
  memset(res, 0, sizeof *res);
}

int sdgen_check_inputs(sdgen_ctx *ctx, const sdgen_params *p) {
  sd_error_clear(&ctx->err);
  int rc = sd_validate_params(p, &ctx->err);
  if (rc) return rc;
  char path[4096];
  if ((rc = sd_resolve_model(p, p->model, path, sizeof path, &ctx->err))) return rc;
  sdgen_params lcm_p; /* params->lcm_auto: the params with the LCM recipe */
  sdgen_lora *lcm_loras = NULL;
  if (p->lcm_auto) {
    if ((rc = gen_lcm_params(path, p, &lcm_p, &lcm_loras, &ctx->err))) return rc;
    p = &lcm_p;
  }
  rc = gen_validate_inputs(p, path, NULL, 0, &ctx->err);
  sd_free(lcm_loras);
  return rc;
}

/* Load, generate, free: a one-shot run is a resident model used once.
 * Every input is checked before the model is loaded. */
int sdgen_generate(sdgen_ctx *ctx, const sdgen_params *p, sdgen_result *res) {
  memset(res, 0, sizeof *res);
  ctx->cancel = 0;
  int rc = sdgen_check_inputs(ctx, p);
  if (rc) return rc;
  sdgen_model *m = NULL;
  if ((rc = sdgen_model_load(ctx, p, &m))) return rc;
  rc = gen_run_model(ctx, m, p, res); /* the load params are this run's */
  sdgen_model_free(m);
  return rc;
}

static int run_model(sdgen_ctx *ctx, sdgen_model *model, const sdgen_params *p,
                     sdgen_result *res) {
  sd_error *err = &ctx->err;
  sd_error_clear(err);
  memset(res, 0, sizeof *res);
  gen_run r = {.ctx = ctx, .p = p, .model = model, .err = err, .n = p->n, .steps = p->steps};
  sd_monitor_init(&r.mon, on_monitor_event, &r);
  int rc = sd_validate_params(p, err);
  if (rc) return rc;
  snprintf(r.model_path, sizeof r.model_path, "%s", model->path);
  /* this run's LoRA files, its prompt without tags, its tiny VAEs */
  if ((rc = gen_validate_inputs(p, r.model_path, r.refiner_path, sizeof r.refiner_path, err)) ||
      (rc = gen_resolve_loras(&r)) || (rc = gen_open_vaes(&r)) ||
      (!p->output_in_memory && (rc = sd_prepare_output_dir(p->output_dir, err)))) {
    gen_free_loras(&r);
    gen_free_vaes(&r);
    return rc;
  }
  if (p->threads > 0) sd_set_threads(p->threads);
  sd_precision prec;
  sd_parse_precision(p->precision, &prec, err); /* validated above */
  sd_set_precision(prec);
  if (p->precision && !strcmp(p->precision, "fast")) {
    const char *why;
    sd_precision_fast(&why);
    sd_monitor_info(&r.mon, "precision fast: %s (%s)", sd_precision_name(prec), why);
  }
  time_t now = time(NULL);
  struct tm tmv;
  localtime_r(&now, &tmv);
  strftime(r.stamp, sizeof r.stamp, "%Y%m%d_%H%M%S", &tmv);

  sd_monitor_stage(&r.mon, "Before model load");
  /* the handle's load time goes to its first generation's metadata */
  r.t_load = model->generations++ ? 0.0 : model->t_load;
  /* Recovery: an allocation failure inside the base stage is retried (at
   * most twice) with the next more frugal memory plan. */
  r.min_level = p->min_plan;
  for (int attempt = 0;; attempt++) {
    gen_model_begin_run(model);
    rc = strcmp(model->family, "sd3") == 0 ? gen_base_sd3(&r) : gen_base_unet(&r);
    if (rc != SD_ERR_OOM || attempt == 2 || r.dry_run_done || ctx->cancel || r.refused ||
        (r.have_plan && r.plan.level >= SD_PLAN_STREAMING && r.plan.peak > r.plan.budget))
      break;
    int failed_level = r.have_plan ? r.plan.level : SD_PLAN_RELEASE_TE;
    sd_monitor_recovered(&r.mon, "allocation failed in the base stage (%s); retrying with %s",
                         err->msg, sd_plan_level_name(failed_level + 1 < SD_PLAN_LEVELS
                                                          ? failed_level + 1
                                                          : failed_level));
    sd_monitor_cleanup(&r.mon, "Emergency cleanup after an allocation failure...");
    r.min_level = failed_level + 1 < SD_PLAN_LEVELS ? failed_level + 1 : failed_level;
    sd_free(r.images);
    r.images = NULL;
    sd_free(r.handoff);
    r.handoff = NULL;
    sd_error_clear(err);
  }
  if (rc) goto fail;
  if (r.dry_run_done) goto done;
  /* Between stages a pending Ctrl-C ends the run before anything is saved. */
#define STOP_IF_CANCELLED()                                         \
  if (ctx->cancel) {                                                \
    rc = sd_fail_replace(err, SD_ERR_CANCELLED, "cancelled");       \
    goto fail;                                                      \
  }
  STOP_IF_CANCELLED();
  gen_model_release_pages(model); /* mapped and parsed, out of RSS until the next run */
  sd_monitor_cleanup(&r.mon, "Unloading the base model...");
  if (p->refiner && (rc = gen_refine(&r))) goto fail;
  STOP_IF_CANCELLED();
  if ((rc = quantize(&r))) goto fail;
  if (p->upscale >= 2 && (rc = gen_upscale(&r))) goto fail;
  STOP_IF_CANCELLED();
#undef STOP_IF_CANCELLED
  if ((rc = gen_save(&r, res))) goto fail;
  if (!p->keep_latents && r.latents_path[0]) unlink(r.latents_path);
  goto done;
fail:
  if (ctx->cancel && rc != SD_ERR_CANCELLED)
    rc = sd_fail_replace(err, SD_ERR_CANCELLED, "cancelled");
  sd_monitor_cleanup(&r.mon, "Cleaning up after the error...");
  sd_monitor_stage(&r.mon, "On error");
  if (r.latents_path[0] && rc != SD_ERR_CANCELLED && res->count == 0) {
    /* the denoised latents survive a failed decode: finish with --decode */
    char line[4400];
    snprintf(line, sizeof line, "latents kept in %s", r.latents_path);
    if (p->on_event) p->on_event(SDGEN_EVENT_INFO, line, p->user);
  } else if (r.latents_path[0]) {
    unlink(r.latents_path);
  }
done:
  gen_free_loras(&r);
  gen_free_vaes(&r);
  sd_free(r.images);
  sd_free(r.handoff);
  for (int b = 0; r.final && b < r.n; b++) sd_image_free(&r.final[b]);
  sd_free(r.final);
  sd_alloc_trim();
  return rc;
}

/* One generation on a handle; params->lcm_auto becomes the LCM recipe
 * (sampler, guidance, the family's LCM-LoRA) for this run first. */
int gen_run_model(sdgen_ctx *ctx, sdgen_model *model, const sdgen_params *p,
                  sdgen_result *res) {
  if (!p->lcm_auto) return run_model(ctx, model, p, res);
  sdgen_params lcm_p;
  sdgen_lora *lcm_loras = NULL;
  memset(res, 0, sizeof *res);
  sd_error_clear(&ctx->err);
  int rc = gen_lcm_params(model->path, p, &lcm_p, &lcm_loras, &ctx->err);
  if (!rc) rc = run_model(ctx, model, &lcm_p, res);
  sd_free(lcm_loras);
  return rc;
}
