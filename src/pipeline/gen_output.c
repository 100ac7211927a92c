/* Save stage: PNG (with AUTOMATIC1111's "parameters" chunk) + JSON metadata
 * per image, each written to a temporary name and renamed when complete. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/image.h"

#include "io/model_dir.h"
#include "pipeline/generate_internal.h"
#include "tensor/ops.h"

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

static const char *base_name(const char *path) {
  size_t n = strlen(path);
  while (n > 1 && path[n - 1] == '/') n--; /* "dir/" -> "dir" */
  const char *s = path + n;
  while (s > path && s[-1] != '/') s--;
  return s;
}

void gen_model_display_name(const char *given, const char *path, char *out, size_t n) {
  /* a path inside the Hugging Face cache: .../models--ORG--NAME/snapshots/<commit>[/file] */
  const char *repo = path ? strstr(path, "/models--") : NULL;
  if (!repo && path && strncmp(path, "models--", 8) == 0) repo = path - 1;
  if (repo) {
    repo += 9;
    const char *sep = strstr(repo, "--"), *end = strchr(repo, '/');
    if (sep && (!end || sep < end)) {
      int org = (int)(sep - repo);
      int name = end ? (int)(end - sep - 2) : (int)strlen(sep + 2);
      const char *file = NULL;
      if (end && strncmp(end, "/snapshots/", 11) == 0) {
        file = strchr(end + 11, '/'); /* a single file of the repo */
        if (file && !file[1]) file = NULL;
      }
      snprintf(out, n, "%.*s/%.*s%s%s", org, repo, name, sep + 2, file ? "/" : "",
               file ? file + 1 : "");
      return;
    }
  }
  /* a hub name resolved through the cache (not a path we were given) */
  if (given && !sd_is_file(given) && !sd_is_dir(given)) {
    snprintf(out, n, "%s", given);
    return;
  }
  snprintf(out, n, "%s", base_name(path ? path : given ? given : ""));
}

/* File name of a LoRA without folder and extension (A1111's LoRA name). */
static const char *lora_stem(const char *path) {
  static __thread char stem[256];
  snprintf(stem, sizeof stem, "%s", base_name(path));
  char *dot = strrchr(stem, '.');
  if (dot && strcmp(dot, ".safetensors") == 0) *dot = 0;
  return stem;
}

/* "prompt\nNegative prompt: ...\nSteps: 30, Sampler: ..., Seed: 42, ..." */
void gen_infotext(const gen_run *r, char *buf, size_t n) {
  const sdgen_params *p = r->p;
  char model[1024], refiner[1024];
  gen_model_display_name(p->model, r->model_path, model, sizeof model);
  /* A1111 keeps LoRAs in the prompt as <lora:name:scale>: the given ones
   * are there already, those from params->loras are appended */
  size_t u = (size_t)snprintf(buf, n, "%s", p->prompt);
  for (int i = 0; i < p->n_loras && i < r->n_loras && u < n; i++)
    u += (size_t)snprintf(buf + u, n - u, " <lora:%s:%g>", lora_stem(r->loras[i].path),
                          r->loras[i].scale);
  if (u < n) u += (size_t)snprintf(buf + u, n - u, "\n");
  if (p->negative_prompt && u < n)
    u += (size_t)snprintf(buf + u, n - u, "Negative prompt: %s\n", p->negative_prompt);
  if (u < n)
    u += (size_t)snprintf(buf + u, n - u,
                          "Steps: %d, Sampler: %s, CFG scale: %g, Seed: %llu, Size: %dx%d, "
                          "Model: %s, RNG: %s",
                          r->steps, a1111_sampler(r->sampler), r->cfg,
                          (unsigned long long)p->seed, r->width, r->height, model,
                          p->rng && strcmp(p->rng, "cuda") == 0 ? "NV" : "CPU");
  if (p->init_image && u < n)
    u += (size_t)snprintf(buf + u, n - u, ", Denoising strength: %g", p->strength);
  if (r->refiner_mode && u < n)
    u += (size_t)snprintf(buf + u, n - u, ", Refiner: %s",
                          (gen_model_display_name(p->refiner, r->refiner_path, refiner,
                                                  sizeof refiner),
                           refiner));
  if (r->upscale_method[0] && u < n)
    u += (size_t)snprintf(buf + u, n - u, ", Upscale: %dx %s", p->upscale, r->upscale_method);
  if (p->timestep_spacing && u < n)
    u += (size_t)snprintf(buf + u, n - u, ", Schedule type: %s", p->timestep_spacing);
  if (r->tiny && u < n) /* "taesd", or the file / folder / repo name */
    u += (size_t)snprintf(buf + u, n - u, ", VAE: %s", base_name(p->vae));
  if (r->n_loras && u < n) {
    u += (size_t)snprintf(buf + u, n - u, ", Lora: \"");
    for (int i = 0; i < r->n_loras && u < n; i++)
      u += (size_t)snprintf(buf + u, n - u, "%s%s: %g", i ? ", " : "",
                            lora_stem(r->loras[i].path), r->loras[i].scale);
    if (u < n) u += (size_t)snprintf(buf + u, n - u, "\"");
    /* A1111: Lora hashes: "name: <12 hex>, ..." (files that could be read) */
    int hashed = 0;
    for (int i = 0; i < r->n_loras && u < n; i++) {
      if (!r->loras[i].hash[0]) continue;
      u += (size_t)snprintf(buf + u, n - u, "%s%s: %s", hashed++ ? ", " : ", Lora hashes: \"",
                            lora_stem(r->loras[i].path), r->loras[i].hash);
    }
    if (hashed && u < n) u += (size_t)snprintf(buf + u, n - u, "\"");
  }
  /* "fast" is recorded as the arithmetic it chose on this CPU */
  const char *prec = p->precision && !strcmp(p->precision, "fast")
                         ? sd_precision_name(sd_precision_fast(NULL))
                         : p->precision;
  if (prec && strcmp(prec, "fp32") != 0 && u < n)
    u += (size_t)snprintf(buf + u, n - u, ", Precision: %s", prec);
  if (u < n) snprintf(buf + u, n - u, ", Version: sdgen %s", SDGEN_VERSION);
}

static cJSON *metadata(const gen_run *r, int index, const char *png_name) {
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
  cJSON_AddNumberToObject(o, "steps", r->steps);
  cJSON_AddStringToObject(o, "sampler", sd_sampler_name(r->sampler));
  if (p->timestep_spacing)
    cJSON_AddStringToObject(o, "timestep_spacing", p->timestep_spacing);
  else
    cJSON_AddNullToObject(o, "timestep_spacing");
  if (p->prediction_type)
    cJSON_AddStringToObject(o, "prediction_type", p->prediction_type);
  else
    cJSON_AddNullToObject(o, "prediction_type");
  cJSON_AddNumberToObject(o, "cfg", r->cfg);
  cJSON_AddNumberToObject(o, "width", r->width);
  cJSON_AddNumberToObject(o, "height", r->height);
  cJSON_AddNumberToObject(o, "output_width", r->out_width);
  cJSON_AddNumberToObject(o, "output_height", r->out_height);
  cJSON_AddNumberToObject(o, "n", r->n);
  cJSON_AddNumberToObject(o, "index", index);
  cJSON_AddStringToObject(o, "image", png_name);
  if (p->init_image) {
    cJSON_AddStringToObject(o, "init_image", p->init_image);
    cJSON_AddNumberToObject(o, "strength", p->strength);
  }
  char display[1024];
  cJSON *model = cJSON_AddObjectToObject(o, "model");
  if (model) {
    gen_model_display_name(p->model, r->model_path, display, sizeof display);
    cJSON_AddStringToObject(model, "name", display);
    cJSON_AddStringToObject(model, "path", r->model_path);
    cJSON_AddStringToObject(model, "type", r->model_type ? r->model_type : "?");
  }
  if (r->tiny) { /* the decoder, when not the model's own VAE */
    cJSON *vae = cJSON_AddObjectToObject(o, "vae");
    if (vae) {
      cJSON_AddStringToObject(vae, "name", p->vae);
      cJSON_AddStringToObject(vae, "path", r->vae_path);
      cJSON_AddStringToObject(vae, "type", "tiny autoencoder (AutoencoderTiny)");
    }
  } else {
    cJSON_AddNullToObject(o, "vae");
  }
  if (r->refiner_mode) {
    cJSON *ref = cJSON_AddObjectToObject(o, "refiner");
    if (ref) {
      gen_model_display_name(p->refiner, r->refiner_path, display, sizeof display);
      cJSON_AddStringToObject(ref, "name", display);
      cJSON_AddStringToObject(ref, "path", r->refiner_path);
      cJSON_AddStringToObject(ref, "mode", r->refiner_mode);
      if (strcmp(r->refiner_mode, "latent") == 0) {
        cJSON_AddNumberToObject(ref, "steps", r->steps);
        cJSON_AddNumberToObject(ref, "switch", p->refiner_switch);
      } else {
        cJSON_AddNumberToObject(ref, "steps", p->refiner_steps > 0 ? p->refiner_steps : 20);
        cJSON_AddNumberToObject(ref, "strength",
                                p->refiner_strength > 0 ? p->refiner_strength : 0.3);
      }
    }
  } else {
    cJSON_AddNullToObject(o, "refiner");
  }
  cJSON *loras = cJSON_AddArrayToObject(o, "loras");
  for (int i = 0; loras && i < r->n_loras; i++) {
    cJSON *l = cJSON_CreateObject();
    if (!l) break;
    cJSON_AddStringToObject(l, "name", r->loras[i].name);
    cJSON_AddStringToObject(l, "path", r->loras[i].path);
    cJSON_AddNumberToObject(l, "scale", r->loras[i].scale);
    if (r->lora_mode) cJSON_AddStringToObject(l, "applied", r->lora_mode);
    cJSON_AddItemToArray(loras, l);
  }
  if (r->upscale_method[0]) {
    cJSON *up = cJSON_AddObjectToObject(o, "upscale");
    if (up) {
      cJSON_AddNumberToObject(up, "factor", p->upscale);
      cJSON_AddStringToObject(up, "method", r->upscale_method);
      cJSON_AddNumberToObject(up, "width", r->out_width);
      cJSON_AddNumberToObject(up, "height", r->out_height);
    }
  } else {
    cJSON_AddNullToObject(o, "upscale");
  }
  cJSON *t = cJSON_AddObjectToObject(o, "timings_s");
  if (t) {
    cJSON_AddNumberToObject(t, "model_load", r->t_load);
    cJSON_AddNumberToObject(t, "text_encoding", r->t_encode);
    cJSON_AddNumberToObject(t, "denoising", r->t_denoise);
    cJSON_AddNumberToObject(t, "vae_decode", r->t_decode);
    cJSON_AddNumberToObject(t, "refiner", r->t_refine);
    cJSON_AddNumberToObject(t, "upscale", r->t_upscale);
    cJSON_AddNumberToObject(t, "total", sd_monitor_elapsed(&r->mon));
  }
  cJSON_AddNumberToObject(o, "threads", sd_get_threads());
  if (p->precision && !strcmp(p->precision, "fast")) {
    cJSON_AddStringToObject(o, "precision", sd_precision_name(sd_precision_fast(NULL)));
    cJSON_AddStringToObject(o, "precision_requested", "fast");
  } else {
    cJSON_AddStringToObject(o, "precision", p->precision ? p->precision : "fp32");
  }
  cJSON_AddStringToObject(o, "version", SDGEN_VERSION);
  cJSON *opts = cJSON_AddArrayToObject(o, "optimizations");
  for (int i = 0; opts && i < r->mon.nopt; i++)
    cJSON_AddItemToArray(opts, cJSON_CreateString(r->mon.optimizations[i]));
  cJSON *mem = sd_monitor_to_json(&r->mon);
  if (mem) {
    if (r->have_plan) {
      cJSON *plan = sd_plan_to_json(&r->plan);
      if (plan) cJSON_AddItemToObject(mem, "plan", plan);
      cJSON_AddNumberToObject(mem, "budget_bytes", (double)r->plan.budget);
    }
    cJSON_AddItemToObject(o, "memory", mem);
  }
  return o;
}

static char *dup_text(const char *t) {
  size_t n = strlen(t) + 1;
  char *d = malloc(n); /* the caller frees it with sdgen_result_free */
  if (d) memcpy(d, t, n);
  return d;
}

/* Fills image b of res in memory (seed, texts, PNG bytes when asked). */
static int result_entry(gen_run *r, sdgen_result *res, int b, const char *params_text,
                        const char *json_text) {
  res->seeds[b] = r->p->seed;
  res->infotext[b] = dup_text(params_text);
  res->metadata_json[b] = dup_text(json_text);
  if (!res->infotext[b] || !res->metadata_json[b])
    return sd_fail(r->err, SD_ERR_OOM, "out of memory");
  if (!r->p->output_in_memory) return SD_OK;
  sd_png_text text = {"parameters", params_text};
  return sd_image_encode_png(&r->final[b], &text, 1, &res->png[b], &res->png_size[b], r->err);
}

static int save_in_memory(gen_run *r, sdgen_result *res) {
  char params_text[8192];
  int rc = SD_OK;
  gen_infotext(r, params_text, sizeof params_text);
  sd_monitor_stage(&r->mon, "On completion");
  for (int b = 0; b < r->n && !rc; b++) {
    char png_base[300];
    snprintf(png_base, sizeof png_base, "output_%s_%d.png", r->stamp, b);
    cJSON *meta = metadata(r, b, png_base);
    char *text_json = meta ? cJSON_Print(meta) : NULL;
    cJSON_Delete(meta);
    rc = text_json ? result_entry(r, res, b, params_text, text_json)
                   : sd_fail(r->err, SD_ERR_OOM, "out of memory");
    free(text_json);
    res->count = b + 1;
  }
  if (rc) sdgen_result_free(res);
  return rc;
}

int gen_save(gen_run *r, sdgen_result *res) {
  const sdgen_params *p = r->p;
  if (p->output_in_memory) return save_in_memory(r, res);
  char png[SDGEN_MAX_IMAGES][4096], name[SDGEN_MAX_IMAGES][256];
  int rc = SD_OK, written = 0, json_written = 0;
  char params_text[8192];
  gen_infotext(r, params_text, sizeof params_text);
  /* Images first, then the completion record, then every image's metadata
   * (so each JSON holds the whole run, "On completion" included). */
  for (int b = 0; b < r->n && !rc; b++) {
    int k = 0;
    do { /* never overwrite an earlier image */
      snprintf(name[b], sizeof name[b], k ? "output_%s_%d_%d" : "output_%s_%d", r->stamp, b, k);
      snprintf(png[b], sizeof png[b], "%.3800s/%s.png", p->output_dir, name[b]);
      k++;
    } while (sd_is_file(png[b]) && k < 1000);
    sd_png_text text = {"parameters", params_text};
    rc = sd_image_write_png(png[b], &r->final[b], &text, 1, r->err);
    if (!rc) written++;
  }
  if (!rc) sd_monitor_stage(&r->mon, "On completion");
  for (int b = 0; b < r->n && !rc; b++) {
    char json[4096], png_base[300];
    snprintf(json, sizeof json, "%.3800s/%s.json", p->output_dir, name[b]);
    snprintf(png_base, sizeof png_base, "%s.png", name[b]);
    cJSON *meta = metadata(r, b, png_base);
    char *text_json = meta ? cJSON_Print(meta) : NULL;
    cJSON_Delete(meta);
    if (!text_json) {
      rc = sd_fail(r->err, SD_ERR_OOM, "out of memory");
      break;
    }
    rc = sd_write_text_atomic(json, text_json, r->err);
    if (!rc) json_written++;
    if (!rc) rc = result_entry(r, res, res->count, params_text, text_json);
    free(text_json);
    if (rc) break;
    snprintf(res->images[res->count], sizeof res->images[0], "%s", png[b]);
    snprintf(res->metadata[res->count], sizeof res->metadata[0], "%s", json);
    res->count++;
  }
  if (rc) { /* no image without its metadata */
    for (int b = 0; b < written; b++) unlink(png[b]);
    for (int b = 0; b < json_written; b++) {
      char json[4096];
      snprintf(json, sizeof json, "%.3800s/%s.json", p->output_dir, name[b]);
      unlink(json);
    }
    sdgen_result_free(res);
  }
  return rc;
}
