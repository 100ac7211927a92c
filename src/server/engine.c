/* Runs requests through the sdgen library (see engine.h). */
#define _GNU_SOURCE
#include "server/engine.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <spng.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

double srv_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void srv_scrub_paths(char *s) {
  char *w = s;
  for (char *p = s; *p;) {
    int start =
        p == s || p[-1] == ' ' || p[-1] == '\'' || p[-1] == '"' || p[-1] == '(' || p[-1] == '=';
    if (*p == '/' && start) {
      char *end = p;
      while (*end && *end != ' ' && *end != '\'' && *end != '"' && *end != ')' && *end != ',' &&
             *end != ':')
        end++;
      char *last = p;
      for (char *q = p; q < end; q++)
        if (*q == '/' && q + 1 < end) last = q + 1;
      size_t n = (size_t)(end - last);
      memmove(w, last, n);
      w += n;
      p = end;
    } else {
      *w++ = *p++;
    }
  }
  *w = 0;
}

int srv_engine_init(srv_engine *e, const srv_models *models, const char *model,
                    const char *output_dir, int threads, int64_t max_memory, int preview_every,
                    char *msg, size_t n) {
  memset(e, 0, sizeof *e);
  e->models = *models;
  e->threads = threads;
  e->max_memory = max_memory;
  e->preview_every = preview_every;
  e->max_models = 2;
  pthread_mutex_init(&e->mu, NULL);
  if (model && model[0]) {
    char path[4096];
    if (srv_model_resolve(&e->models, model, path, sizeof path)) {
      snprintf(msg, n, "model '%s' is not in the model dirs or the hub cache", model);
      return -1;
    }
    snprintf(e->current_model, sizeof e->current_model, "%s", model);
  } else {
    srv_models_first(&e->models, e->current_model, sizeof e->current_model);
  }
  if (output_dir) {
    if (mkdir(output_dir, 0755) && errno != EEXIST) {
      snprintf(msg, n, "cannot create %s: %s", output_dir, strerror(errno));
      return -1;
    }
    snprintf(e->output_root, sizeof e->output_root, "%s", output_dir);
    e->keep_outputs = 1;
  } else {
    const char *tmp = getenv("TMPDIR");
    snprintf(e->output_root, sizeof e->output_root, "%s/sdgen-serve-XXXXXX",
             tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(e->output_root)) {
      snprintf(msg, n, "cannot create a temporary folder: %s", strerror(errno));
      return -1;
    }
  }
  if (sdgen_ctx_new(&e->ctx)) {
    snprintf(msg, n, "out of memory");
    return -1;
  }
  return 0;
}

void srv_engine_free(srv_engine *e) {
  for (int i = 0; i < e->n_cached; i++) sdgen_model_free(e->models_cache[i].model);
  e->n_cached = 0;
  if (e->ctx) sdgen_ctx_free(e->ctx);
  if (!e->keep_outputs && e->output_root[0]) rmdir(e->output_root);
  free(e->preview_b64);
  pthread_mutex_destroy(&e->mu);
}

int srv_engine_set_model(srv_engine *e, const char *name, srv_error *err) {
  char path[4096];
  if (srv_model_resolve(&e->models, name, path, sizeof path)) {
    srv_set_error(err, 404, "unknown model", "the model is not listed in /sdapi/v1/sd-models");
    return -1;
  }
  pthread_mutex_lock(&e->mu);
  snprintf(e->current_model, sizeof e->current_model, "%s", name);
  pthread_mutex_unlock(&e->mu);
  return 0;
}

void srv_engine_interrupt(srv_engine *e) {
  pthread_mutex_lock(&e->mu);
  if (e->busy) {
    e->interrupt = 1;
    sdgen_cancel(e->ctx);
  }
  pthread_mutex_unlock(&e->mu);
}

cJSON *srv_engine_progress(srv_engine *e, int job_count) {
  cJSON *o = cJSON_CreateObject();
  if (!o) return NULL;
  pthread_mutex_lock(&e->mu);
  double frac = 0, eta = 0;
  if (e->busy && e->total > 0 && e->n_iter > 0) {
    frac = ((double)e->iter + (double)e->step / e->total) / e->n_iter;
    double el = srv_now() - e->started;
    if (frac > 0) eta = el / frac - el;
  }
  cJSON_AddNumberToObject(o, "progress", frac);
  cJSON_AddNumberToObject(o, "eta_relative", eta);
  cJSON *st = cJSON_AddObjectToObject(o, "state");
  if (st) {
    cJSON_AddBoolToObject(st, "skipped", 0);
    cJSON_AddBoolToObject(st, "interrupted", e->interrupt);
    cJSON_AddStringToObject(st, "job", e->busy ? "txt2img" : "");
    cJSON_AddNumberToObject(st, "job_count", job_count);
    cJSON_AddNumberToObject(st, "job_no", e->busy ? e->iter : 0);
    cJSON_AddNumberToObject(st, "sampling_step", e->busy ? e->step : 0);
    cJSON_AddNumberToObject(st, "sampling_steps", e->busy ? e->total : 0);
  }
  if (e->busy && e->preview_b64)
    cJSON_AddStringToObject(o, "current_image", e->preview_b64);
  else
    cJSON_AddNullToObject(o, "current_image");
  cJSON_AddStringToObject(o, "textinfo", e->busy ? "generating" : "idle");
  pthread_mutex_unlock(&e->mu);
  return o;
}

/* ---- callbacks ---- */

static int on_progress(int step, int total, double elapsed, void *user) {
  srv_engine *e = user;
  pthread_mutex_lock(&e->mu);
  e->step = step;
  e->total = total;
  int stop = e->interrupt;
  pthread_mutex_unlock(&e->mu);
  return stop;
}

/* RGB -> PNG bytes in memory (malloc'd), or NULL. */
static unsigned char *png_encode(const unsigned char *rgb, int w, int h, size_t *len) {
  spng_ctx *c = spng_ctx_new(SPNG_CTX_ENCODER);
  if (!c) return NULL;
  unsigned char *out = NULL;
  struct spng_ihdr ihdr = {.width = (uint32_t)w,
                           .height = (uint32_t)h,
                           .bit_depth = 8,
                           .color_type = SPNG_COLOR_TYPE_TRUECOLOR};
  int err = 0;
  if (!spng_set_option(c, SPNG_ENCODE_TO_BUFFER, 1) && !spng_set_ihdr(c, &ihdr) &&
      !spng_encode_image(c, rgb, (size_t)w * h * 3, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE))
    out = spng_get_png_buffer(c, len, &err);
  spng_ctx_free(c);
  return out;
}

static void on_preview(int step, int total, int w, int h, const unsigned char *rgb, void *user) {
  srv_engine *e = user;
  size_t len = 0;
  unsigned char *png = png_encode(rgb, w, h, &len);
  if (!png) return;
  char *b64 = srv_b64_encode(png, len);
  free(png);
  if (!b64) return;
  pthread_mutex_lock(&e->mu);
  free(e->preview_b64);
  e->preview_b64 = b64;
  pthread_mutex_unlock(&e->mu);
}

/* ---- files of one job ---- */

static unsigned char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  unsigned char *buf = NULL;
  if (fseek(f, 0, SEEK_END) == 0) {
    long n = ftell(f);
    if (n > 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1))) {
      if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
      } else {
        buf[n] = 0;
        *len = (size_t)n;
      }
    }
  }
  fclose(f);
  return buf;
}

/* The text of a PNG's "parameters" tEXt/iTXt chunk (malloc'd), or NULL. */
static char *png_parameters(const unsigned char *d, size_t n) {
  size_t i = 8;
  while (i + 12 <= n) {
    uint32_t len =
        (uint32_t)d[i] << 24 | (uint32_t)d[i + 1] << 16 | (uint32_t)d[i + 2] << 8 | d[i + 3];
    if (len > n - i - 12) break;
    const unsigned char *type = d + i + 4, *body = d + i + 8;
    if (len > 11 && memcmp(body, "parameters", 11) == 0) {
      size_t off = 11;
      if (memcmp(type, "iTXt", 4) == 0) {
        /* compression flag, method, language\0, translated keyword\0 */
        off += 2;
        for (int z = 0; z < 2; z++) {
          while (off < len && body[off]) off++;
          off++;
        }
        if (body[11]) return NULL; /* compressed: not written by sdgen */
      } else if (memcmp(type, "tEXt", 4) != 0) {
        off = len + 1;
      }
      if (off <= len) {
        char *s = malloc(len - off + 1);
        if (!s) return NULL;
        memcpy(s, body + off, len - off);
        s[len - off] = 0;
        return s;
      }
    }
    i += 12 + len;
  }
  return NULL;
}

static void remove_tree(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *de;
  char p[4400];
  while ((de = readdir(d))) {
    if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
    snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
    unlink(p);
  }
  closedir(d);
  rmdir(dir);
}

static uint64_t random_seed(void) {
  uint32_t v = 0;
  int fd = open("/dev/urandom", O_RDONLY);
  if (fd < 0 || read(fd, &v, sizeof v) != sizeof v) v = (uint32_t)(srv_now() * 1e6);
  if (fd >= 0) close(fd);
  return v;
}

/* ---- resident models ----
 *
 * Up to max_models handles (sdgen_model_load) stay loaded, keyed by what
 * shapes a loaded model (path and decoder); the least recently used is
 * released first. Each generation still runs the memory plan under
 * max_memory. max_models 0: every request loads its model. */
static void result_free(sdgen_result *res) {
  sdgen_result_free(res);
  free(res);
}

static int run_generation(srv_engine *e, const sdgen_params *p, sdgen_result *res) {
  if (e->max_models <= 0) return sdgen_generate(e->ctx, p, res);
  char key[sizeof e->models_cache[0].key];
  snprintf(key, sizeof key, "%s|%s", p->model, p->vae ? p->vae : "");
  srv_resident *slot = NULL;
  for (int i = 0; i < e->n_cached; i++)
    if (!strcmp(e->models_cache[i].key, key)) slot = &e->models_cache[i];
  if (!slot) {
    if (e->n_cached == e->max_models) { /* release the least recently used */
      int lru = 0;
      for (int i = 1; i < e->n_cached; i++)
        if (e->models_cache[i].last_used < e->models_cache[lru].last_used) lru = i;
      sdgen_model_free(e->models_cache[lru].model);
      e->models_cache[lru] = e->models_cache[--e->n_cached];
    }
    sdgen_model *m = NULL;
    if (sdgen_model_load(e->ctx, p, &m)) return -1;
    slot = &e->models_cache[e->n_cached++];
    snprintf(slot->key, sizeof slot->key, "%s", key);
    slot->model = m;
  }
  slot->last_used = srv_now();
  return sdgen_model_generate(e->ctx, slot->model, p, res);
}

/* ---- one job ---- */

typedef struct job_out {
  cJSON *images, *seeds, *infotexts;
} job_out;

static int add_images(const sdgen_result *res, job_out *o, uint64_t seed, int keep) {
  for (int k = 0; k < res->count; k++) {
    size_t len = 0;
    unsigned char *png = read_file(res->images[k], &len);
    if (!png) return -1;
    char *b64 = srv_b64_encode(png, len);
    char *info = png_parameters(png, len);
    free(png);
    if (!b64) {
      free(info);
      return -1;
    }
    cJSON_AddItemToArray(o->images, cJSON_CreateString(b64));
    cJSON_AddItemToArray(o->seeds, cJSON_CreateNumber((double)seed));
    cJSON_AddItemToArray(o->infotexts, cJSON_CreateString(info ? info : ""));
    free(b64);
    free(info);
    if (!keep) {
      unlink(res->images[k]);
      unlink(res->metadata[k]);
    }
  }
  return 0;
}

static cJSON *make_info(const srv_request *r, const char *model, uint64_t seed, job_out *o) {
  cJSON *i = cJSON_CreateObject();
  if (!i) return NULL;
  const char *neg = r->negative_prompt ? r->negative_prompt : "";
  int count = cJSON_GetArraySize(o->images);
  cJSON_AddStringToObject(i, "prompt", r->prompt);
  cJSON *ap = cJSON_AddArrayToObject(i, "all_prompts");
  cJSON *an = cJSON_AddArrayToObject(i, "all_negative_prompts");
  for (int k = 0; k < count; k++) {
    if (ap) cJSON_AddItemToArray(ap, cJSON_CreateString(r->prompt));
    if (an) cJSON_AddItemToArray(an, cJSON_CreateString(neg));
  }
  cJSON_AddStringToObject(i, "negative_prompt", neg);
  cJSON_AddNumberToObject(i, "seed", (double)seed);
  cJSON_AddItemToObject(i, "all_seeds", cJSON_Duplicate(o->seeds, 1));
  cJSON_AddNumberToObject(i, "subseed", -1);
  cJSON_AddNumberToObject(i, "width", r->width);
  cJSON_AddNumberToObject(i, "height", r->height);
  if (r->sampler_name[0])
    cJSON_AddStringToObject(i, "sampler_name", r->sampler_name);
  else
    cJSON_AddNullToObject(i, "sampler_name");
  cJSON_AddNumberToObject(i, "cfg_scale", r->cfg_scale);
  cJSON_AddNumberToObject(i, "steps", r->steps);
  cJSON_AddNumberToObject(i, "batch_size", r->batch_size);
  cJSON_AddStringToObject(i, "sd_model_name", model);
  if (r->img2img) cJSON_AddNumberToObject(i, "denoising_strength", r->denoising_strength);
  cJSON_AddItemToObject(i, "infotexts", cJSON_Duplicate(o->infotexts, 1));
  char stamp[32];
  time_t t = time(NULL);
  struct tm tmv;
  gmtime_r(&t, &tmv);
  strftime(stamp, sizeof stamp, "%Y%m%d%H%M%S", &tmv);
  cJSON_AddStringToObject(i, "job_timestamp", stamp);
  return i;
}

int srv_engine_run(srv_engine *e, const srv_request *r, cJSON **out, srv_error *err) {
  *out = NULL;
  char model[512], model_path[4096];
  pthread_mutex_lock(&e->mu);
  snprintf(model, sizeof model, "%s", r->model[0] ? r->model : e->current_model);
  pthread_mutex_unlock(&e->mu);
  if (!model[0]) {
    srv_set_error(err, 404, "unknown model", "no model given and none in the model dirs");
    return -1;
  }
  if (srv_model_resolve(&e->models, model, model_path, sizeof model_path)) {
    srv_set_error(err, 404, "unknown model", "the model is not listed in /sdapi/v1/sd-models");
    return -1;
  }
  sdgen_lora loras[SRV_MAX_LORAS];
  char lora_paths[SRV_MAX_LORAS][4096];
  for (int k = 0; k < r->n_loras; k++) {
    if (srv_lora_resolve(&e->models, r->loras[k].name, lora_paths[k], sizeof lora_paths[k])) {
      srv_set_error(err, 404, "unknown lora", "loras[%d] is not listed in /sdapi/v1/loras", k);
      return -1;
    }
    loras[k].path = lora_paths[k];
    loras[k].scale = r->loras[k].scale;
  }
  char vae_path[4096] = "";
  if (r->vae[0] && strcmp(r->vae, "taesd") != 0 &&
      srv_model_resolve(&e->models, r->vae, vae_path, sizeof vae_path)) {
    srv_set_error(err, 404, "unknown vae", "vae is not taesd or a listed model");
    return -1;
  }
  if (r->vae[0] && !vae_path[0]) snprintf(vae_path, sizeof vae_path, "taesd");

  /* the job's own folder: names from a counter, never from request text */
  char dir[4200], init_path[4300] = "";
  pthread_mutex_lock(&e->mu);
  uint64_t id = ++e->job_counter;
  pthread_mutex_unlock(&e->mu);
  snprintf(dir, sizeof dir, "%s/job-%ld-%llu", e->output_root, (long)getpid(),
           (unsigned long long)id);
  if (mkdir(dir, 0755) && errno != EEXIST) {
    srv_set_error(err, 500, "server error", "cannot create the job folder");
    return -1;
  }
  if (r->img2img) {
    const unsigned char *b = r->init_image;
    int png = r->init_image_len > 8 && !memcmp(b, "\x89PNG\r\n\x1a\n", 8);
    int jpg = r->init_image_len > 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff;
    if (!png && !jpg) {
      srv_set_error(err, 400, "bad field", "init_images[0] is not a PNG or JPEG image");
      remove_tree(dir);
      return -1;
    }
    snprintf(init_path, sizeof init_path, "%s/init.%s", dir, png ? "png" : "jpg");
    FILE *f = fopen(init_path, "wb");
    int ok = f && fwrite(b, 1, r->init_image_len, f) == r->init_image_len;
    if (f && fclose(f)) ok = 0;
    if (!ok) {
      srv_set_error(err, 500, "server error", "cannot store the init image");
      remove_tree(dir);
      return -1;
    }
  }

  uint64_t seed = r->seed < 0 ? random_seed() : (uint64_t)r->seed;
  job_out o = {cJSON_CreateArray(), cJSON_CreateArray(), cJSON_CreateArray()};
  int rc = 0;
  pthread_mutex_lock(&e->mu);
  e->busy = 1;
  e->interrupt = 0;
  e->step = 0;
  e->total = r->steps;
  e->iter = 0;
  e->n_iter = r->n_iter;
  e->started = srv_now();
  free(e->preview_b64);
  e->preview_b64 = NULL;
  pthread_mutex_unlock(&e->mu);
  int interrupted = 0;
  for (int it = 0; it < r->n_iter && !rc; it++) {
    sdgen_params p = sdgen_default_params();
    p.prompt = r->prompt;
    p.negative_prompt = r->negative_prompt;
    p.model = model_path;
    p.output_dir = dir;
    p.width = r->width;
    p.height = r->height;
    p.steps = r->steps;
    p.cfg = r->cfg_scale;
    p.seed = seed + (uint64_t)it;
    p.n = r->batch_size;
    p.sampler = r->sampler[0] ? r->sampler : NULL;
    p.timestep_spacing = r->timestep_spacing[0] ? r->timestep_spacing : NULL;
    p.init_image = r->img2img ? init_path : NULL;
    p.strength = r->denoising_strength;
    p.threads = e->threads;
    p.max_memory = e->max_memory;
    p.offline = 1;
    p.loras = r->n_loras ? loras : NULL;
    p.n_loras = r->n_loras;
    p.vae = vae_path[0] ? vae_path : NULL;
    p.preview_every = e->preview_every;
    p.on_progress = on_progress;
    p.on_preview = on_preview;
    p.user = e;
    pthread_mutex_lock(&e->mu);
    e->iter = it;
    e->step = 0;
    pthread_mutex_unlock(&e->mu);
    sdgen_result *res = calloc(1, sizeof *res);
    if (!res) {
      srv_set_error(err, 500, "out of memory", "cannot start the generation");
      rc = -1;
      break;
    }
    if (run_generation(e, &p, res)) {
      result_free(res);
      pthread_mutex_lock(&e->mu);
      interrupted = e->interrupt;
      pthread_mutex_unlock(&e->mu);
      if (!interrupted) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s", sdgen_last_error(e->ctx));
        srv_scrub_paths(msg);
        srv_set_error(err, 500, "generation failed", "%s", msg);
        rc = -1;
      }
      break;
    }
    if (add_images(res, &o, p.seed, e->keep_outputs)) {
      srv_set_error(err, 500, "server error", "cannot read the generated image");
      rc = -1;
    }
    result_free(res);
  }
  pthread_mutex_lock(&e->mu);
  e->busy = 0;
  e->interrupt = 0;
  pthread_mutex_unlock(&e->mu);
  if (init_path[0]) unlink(init_path);
  if (!e->keep_outputs)
    remove_tree(dir);
  else
    rmdir(dir); /* only when empty */
  if (!rc) {
    cJSON *resp = cJSON_CreateObject();
    cJSON *info = make_info(r, model, seed, &o);
    char *info_s = info ? cJSON_PrintUnformatted(info) : NULL;
    if (!resp || !info_s) {
      cJSON_Delete(resp);
      resp = NULL;
      srv_set_error(err, 500, "out of memory", "response too large");
      rc = -1;
    } else if (r->openai) {
      cJSON *data = cJSON_AddArrayToObject(resp, "data");
      cJSON_AddNumberToObject(resp, "created", (double)time(NULL));
      const cJSON *img;
      cJSON_ArrayForEach(img, o.images) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "b64_json", img->valuestring);
        cJSON_AddItemToArray(data, d);
      }
    } else {
      cJSON_AddItemToObject(resp, "images", o.images);
      o.images = NULL;
      cJSON_AddItemToObject(resp, "parameters", srv_request_echo(r));
      cJSON_AddStringToObject(resp, "info", info_s);
      if (interrupted) cJSON_AddBoolToObject(resp, "interrupted", 1);
    }
    *out = resp;
    cJSON_Delete(info);
    free(info_s);
  }
  cJSON_Delete(o.images);
  cJSON_Delete(o.seeds);
  cJSON_Delete(o.infotexts);
  return rc;
}
