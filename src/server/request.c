/* Request parsing and validation for the A1111-compatible API. */
#include "server/request.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const srv_sampler_names[][2] = {
    {"Euler a", "euler_a"},   {"Euler", "euler"},
    {"DPM++ 2M", "dpmpp_2m"}, {"DPM++ 2M Karras", "dpmpp_2m_karras"},
    {"DDIM", "ddim"},         {"PNDM", "pndm"},
    {"PLMS", "pndm"},         {"LCM", "lcm"},
};
const int srv_n_samplers = (int)(sizeof srv_sampler_names / sizeof srv_sampler_names[0]);

static const char *const our_samplers[] = {
    "pndm", "ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "lcm", "flow_euler"};

const char *srv_sampler_map(const char *name) {
  for (int i = 0; i < srv_n_samplers; i++)
    if (strcmp(name, srv_sampler_names[i][0]) == 0) return srv_sampler_names[i][1];
  /* A1111 clients also send "Karras" as a separate scheduler field and the
   * lower-case "euler_a" style names; ours pass through. */
  for (size_t i = 0; i < sizeof our_samplers / sizeof our_samplers[0]; i++)
    if (strcmp(name, our_samplers[i]) == 0) return our_samplers[i];
  return NULL;
}

void srv_set_error(srv_error *e, int status, const char *error, const char *fmt, ...) {
  e->status = status;
  snprintf(e->error, sizeof e->error, "%s", error);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->detail, sizeof e->detail, fmt, ap);
  va_end(ap);
}

/* ---- base64 ---- */

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *srv_b64_encode(const unsigned char *d, size_t n) {
  if (n > ((size_t)-1) / 2) return NULL;
  size_t m = 4 * ((n + 2) / 3);
  char *o = malloc(m + 1);
  if (!o) return NULL;
  size_t j = 0;
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)d[i] << 16;
    if (i + 1 < n) v |= (uint32_t)d[i + 1] << 8;
    if (i + 2 < n) v |= d[i + 2];
    o[j++] = b64chars[(v >> 18) & 63];
    o[j++] = b64chars[(v >> 12) & 63];
    o[j++] = i + 1 < n ? b64chars[(v >> 6) & 63] : '=';
    o[j++] = i + 2 < n ? b64chars[v & 63] : '=';
  }
  o[j] = 0;
  return o;
}

static int b64val(int c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+' || c == '-') return 62;
  if (c == '/' || c == '_') return 63;
  return -1;
}

unsigned char *srv_b64_decode(const char *s, size_t *out_len) {
  if (strncmp(s, "data:", 5) == 0) {
    const char *comma = strchr(s, ',');
    if (!comma) return NULL;
    s = comma + 1;
  }
  size_t n = strlen(s);
  unsigned char *o = malloc(n / 4 * 3 + 3);
  if (!o) return NULL;
  size_t j = 0;
  uint32_t acc = 0;
  int bits = 0, pad = 0;
  for (size_t i = 0; i < n; i++) {
    int c = (unsigned char)s[i];
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    if (c == '=') {
      pad++;
      continue;
    }
    int v = b64val(c);
    if (v < 0 || pad) {
      free(o);
      return NULL;
    }
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      o[j++] = (unsigned char)(acc >> bits);
    }
  }
  if (pad > 2 || j == 0) {
    free(o);
    return NULL;
  }
  *out_len = j;
  return o;
}

/* ---- fields ---- */

/* Each getter: absent or null keeps the default; a present field of the
 * wrong type or out of range is an error naming the field. */
static int get_int(const cJSON *o, const char *key, long lo, long hi, int *v, srv_error *e) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!it || cJSON_IsNull(it)) return 0;
  if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble)) {
    srv_set_error(e, 400, "bad field", "%s must be an integer", key);
    return -1;
  }
  if (it->valuedouble < lo || it->valuedouble > hi) {
    srv_set_error(e, 400, "bad field", "%s must be between %ld and %ld", key, lo, hi);
    return -1;
  }
  *v = (int)it->valuedouble;
  return 0;
}

static int get_float(const cJSON *o, const char *key, double lo, double hi, float *v,
                     srv_error *e) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!it || cJSON_IsNull(it)) return 0;
  if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble)) {
    srv_set_error(e, 400, "bad field", "%s must be a number", key);
    return -1;
  }
  if (it->valuedouble < lo || it->valuedouble > hi) {
    srv_set_error(e, 400, "bad field", "%s must be between %g and %g", key, lo, hi);
    return -1;
  }
  *v = (float)it->valuedouble;
  return 0;
}

/* Copies a string field into buf (n bytes); too long is an error. */
static int get_str(const cJSON *o, const char *key, char *buf, size_t n, srv_error *e) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!it || cJSON_IsNull(it)) return 0;
  if (!cJSON_IsString(it)) {
    srv_set_error(e, 400, "bad field", "%s must be a string", key);
    return -1;
  }
  if (strlen(it->valuestring) >= n) {
    srv_set_error(e, 400, "bad field", "%s is longer than %zu bytes", key, n - 1);
    return -1;
  }
  snprintf(buf, n, "%s", it->valuestring);
  return 0;
}

static int get_dup(const cJSON *o, const char *key, char **out, srv_error *e) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!it || cJSON_IsNull(it)) return 0;
  if (!cJSON_IsString(it)) {
    srv_set_error(e, 400, "bad field", "%s must be a string", key);
    return -1;
  }
  if (strlen(it->valuestring) > SRV_MAX_PROMPT) {
    srv_set_error(e, 400, "bad field", "%s is longer than %d bytes", key, SRV_MAX_PROMPT);
    return -1;
  }
  free(*out);
  *out = strdup(it->valuestring);
  if (!*out) {
    srv_set_error(e, 500, "out of memory", "request too large");
    return -1;
  }
  return 0;
}

/* Model names: what /sdapi/v1/sd-models lists ("name", "name [hash]") or a
 * hub name; checked against the model dirs later. Control characters are
 * refused here. */
static int check_name(const char *key, const char *s, srv_error *e) {
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    if (*p < 0x20 || *p == 0x7f) {
      srv_set_error(e, 400, "bad field", "%s has a control character", key);
      return -1;
    }
  return 0;
}

static int parse_loras(const cJSON *o, srv_request *r, srv_error *e) {
  const cJSON *arr = cJSON_GetObjectItemCaseSensitive(o, "loras");
  if (!arr || cJSON_IsNull(arr)) return 0;
  if (!cJSON_IsArray(arr)) {
    srv_set_error(e, 400, "bad field", "loras must be an array of {name, scale}");
    return -1;
  }
  const cJSON *it;
  cJSON_ArrayForEach(it, arr) {
    if (r->n_loras == SRV_MAX_LORAS) {
      srv_set_error(e, 400, "bad field", "at most %d loras", SRV_MAX_LORAS);
      return -1;
    }
    srv_lora *l = &r->loras[r->n_loras];
    l->scale = 1.0f;
    if (cJSON_IsString(it)) {
      if (strlen(it->valuestring) >= sizeof l->name) {
        srv_set_error(e, 400, "bad field", "lora name too long");
        return -1;
      }
      snprintf(l->name, sizeof l->name, "%s", it->valuestring);
    } else if (cJSON_IsObject(it)) {
      if (get_str(it, "name", l->name, sizeof l->name, e) ||
          get_float(it, "scale", -10, 10, &l->scale, e))
        return -1;
    } else {
      srv_set_error(e, 400, "bad field", "loras must be an array of {name, scale}");
      return -1;
    }
    if (!l->name[0]) {
      srv_set_error(e, 400, "bad field", "lora without a name");
      return -1;
    }
    if (check_name("lora name", l->name, e)) return -1;
    r->n_loras++;
  }
  return 0;
}

static void defaults(srv_request *r) {
  memset(r, 0, sizeof *r);
  /* A1111's StableDiffusionProcessing defaults */
  r->width = r->height = 512;
  r->steps = 50;
  r->cfg_scale = 7.0f;
  r->seed = -1;
  r->batch_size = r->n_iter = 1;
  r->denoising_strength = 0.75f;
}

static cJSON *parse_object(const char *body, size_t len, srv_error *e) {
  if (!body || len == 0) {
    srv_set_error(e, 400, "malformed JSON", "empty body");
    return NULL;
  }
  const char *end = NULL;
  cJSON *o = cJSON_ParseWithLengthOpts(body, len, &end, 0);
  while (o && end && end < body + len &&
         (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t'))
    end++;
  if (o && end != body + len) {
    cJSON_Delete(o);
    o = NULL;
  }
  if (!o) {
    srv_set_error(e, 400, "malformed JSON", "the body is not valid JSON");
    return NULL;
  }
  if (!cJSON_IsObject(o)) {
    cJSON_Delete(o);
    srv_set_error(e, 400, "malformed JSON", "the body must be a JSON object");
    return NULL;
  }
  return o;
}

static int check_common(srv_request *r, srv_error *e) {
  if (r->width % 8 || r->height % 8) {
    srv_set_error(e, 400, "bad field", "width and height must be multiples of 8");
    return -1;
  }
  if (!r->prompt && !(r->prompt = strdup(""))) {
    srv_set_error(e, 500, "out of memory", "request too large");
    return -1;
  }
  return 0;
}

int srv_parse_request(const char *body, size_t len, int img2img, srv_request *r, srv_error *e) {
  defaults(r);
  r->img2img = img2img;
  cJSON *o = parse_object(body, len, e);
  if (!o) return -1;
  double seed = -1;
  const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "seed");
  if (s && !cJSON_IsNull(s)) {
    if (!cJSON_IsNumber(s) || s->valuedouble != floor(s->valuedouble) || s->valuedouble < -1 ||
        s->valuedouble > 9007199254740991.0) {
      srv_set_error(e, 400, "bad field", "seed must be an integer from -1 to 2^53-1");
      goto fail;
    }
    seed = s->valuedouble;
  }
  r->seed = (int64_t)seed;
  if (get_dup(o, "prompt", &r->prompt, e) ||
      get_dup(o, "negative_prompt", &r->negative_prompt, e) ||
      get_int(o, "steps", 1, SRV_MAX_STEPS, &r->steps, e) ||
      get_int(o, "width", 64, SRV_MAX_SIDE, &r->width, e) ||
      get_int(o, "height", 64, SRV_MAX_SIDE, &r->height, e) ||
      get_int(o, "batch_size", 1, SRV_MAX_BATCH, &r->batch_size, e) ||
      get_int(o, "n_iter", 1, SRV_MAX_ITER, &r->n_iter, e) ||
      get_float(o, "cfg_scale", 0, 30, &r->cfg_scale, e) ||
      get_float(o, "denoising_strength", 0, 1, &r->denoising_strength, e) ||
      get_str(o, "sampler_name", r->sampler_name, sizeof r->sampler_name, e) ||
      get_str(o, "sd_model_checkpoint", r->model, sizeof r->model, e) ||
      get_str(o, "vae", r->vae, sizeof r->vae, e) ||
      get_str(o, "timestep_spacing", r->timestep_spacing, sizeof r->timestep_spacing, e) ||
      parse_loras(o, r, e))
    goto fail;
  /* sampler_index is the older field name of the same thing */
  if (!r->sampler_name[0] &&
      get_str(o, "sampler_index", r->sampler_name, sizeof r->sampler_name, e))
    goto fail;
  const cJSON *ov = cJSON_GetObjectItemCaseSensitive(o, "override_settings");
  if (ov && !cJSON_IsNull(ov)) {
    if (!cJSON_IsObject(ov)) {
      srv_set_error(e, 400, "bad field", "override_settings must be an object");
      goto fail;
    }
    if (get_str(ov, "sd_model_checkpoint", r->model, sizeof r->model, e)) goto fail;
  }
  if (check_name("sd_model_checkpoint", r->model, e) || check_name("vae", r->vae, e)) goto fail;
  if (r->sampler_name[0]) {
    const char *m = srv_sampler_map(r->sampler_name);
    if (!m) {
      srv_set_error(e, 400, "bad field", "unknown sampler_name (see /sdapi/v1/samplers)");
      goto fail;
    }
    snprintf(r->sampler, sizeof r->sampler, "%s", m);
  }
  if (r->timestep_spacing[0] && strcmp(r->timestep_spacing, "leading") &&
      strcmp(r->timestep_spacing, "linspace") && strcmp(r->timestep_spacing, "trailing")) {
    srv_set_error(e, 400, "bad field", "timestep_spacing must be leading, linspace or trailing");
    goto fail;
  }
  if (img2img) {
    const cJSON *imgs = cJSON_GetObjectItemCaseSensitive(o, "init_images");
    const cJSON *first = cJSON_IsArray(imgs) ? cJSON_GetArrayItem(imgs, 0) : NULL;
    if (!first || !cJSON_IsString(first)) {
      srv_set_error(e, 400, "bad field", "init_images must be an array with one base64 image");
      goto fail;
    }
    r->init_image = srv_b64_decode(first->valuestring, &r->init_image_len);
    if (!r->init_image) {
      srv_set_error(e, 400, "bad field", "init_images[0] is not base64");
      goto fail;
    }
    if (r->denoising_strength <= 0) {
      srv_set_error(e, 400, "bad field", "denoising_strength must be in (0, 1]");
      goto fail;
    }
  }
  if (check_common(r, e)) goto fail;
  cJSON_Delete(o);
  return 0;
fail:
  cJSON_Delete(o);
  srv_request_free(r);
  return -1;
}

int srv_parse_openai(const char *body, size_t len, srv_request *r, srv_error *e) {
  defaults(r);
  r->openai = 1;
  r->steps = 20;
  cJSON *o = parse_object(body, len, e);
  if (!o) return -1;
  char size[32] = "512x512", fmt[32] = "b64_json";
  if (get_dup(o, "prompt", &r->prompt, e) || get_int(o, "n", 1, SRV_MAX_BATCH, &r->batch_size, e) ||
      get_str(o, "size", size, sizeof size, e) ||
      get_str(o, "model", r->model, sizeof r->model, e) ||
      get_str(o, "response_format", fmt, sizeof fmt, e))
    goto fail;
  if (!r->prompt || !r->prompt[0]) {
    srv_set_error(e, 400, "bad field", "prompt is required");
    goto fail;
  }
  if (strcmp(fmt, "b64_json") != 0) {
    srv_set_error(e, 400, "bad field", "response_format must be b64_json");
    goto fail;
  }
  int w, h;
  char tail;
  if (sscanf(size, "%dx%d%c", &w, &h, &tail) != 2 || w < 64 || h < 64 || w > SRV_MAX_SIDE ||
      h > SRV_MAX_SIDE) {
    srv_set_error(e, 400, "bad field", "size must be WIDTHxHEIGHT, 64 to %d", SRV_MAX_SIDE);
    goto fail;
  }
  r->width = w;
  r->height = h;
  if (check_name("model", r->model, e) || check_common(r, e)) goto fail;
  cJSON_Delete(o);
  return 0;
fail:
  cJSON_Delete(o);
  srv_request_free(r);
  return -1;
}

void srv_request_free(srv_request *r) {
  free(r->prompt);
  free(r->negative_prompt);
  free(r->init_image);
  r->prompt = r->negative_prompt = NULL;
  r->init_image = NULL;
  r->init_image_len = 0;
}

cJSON *srv_request_echo(const srv_request *r) {
  cJSON *o = cJSON_CreateObject();
  if (!o) return NULL;
  cJSON_AddStringToObject(o, "prompt", r->prompt ? r->prompt : "");
  cJSON_AddStringToObject(o, "negative_prompt", r->negative_prompt ? r->negative_prompt : "");
  cJSON_AddNumberToObject(o, "seed", (double)r->seed);
  cJSON_AddNumberToObject(o, "steps", r->steps);
  cJSON_AddNumberToObject(o, "cfg_scale", r->cfg_scale);
  cJSON_AddNumberToObject(o, "width", r->width);
  cJSON_AddNumberToObject(o, "height", r->height);
  cJSON_AddNumberToObject(o, "batch_size", r->batch_size);
  cJSON_AddNumberToObject(o, "n_iter", r->n_iter);
  if (r->sampler_name[0])
    cJSON_AddStringToObject(o, "sampler_name", r->sampler_name);
  else
    cJSON_AddNullToObject(o, "sampler_name");
  if (r->img2img) cJSON_AddNumberToObject(o, "denoising_strength", r->denoising_strength);
  if (r->model[0]) {
    cJSON *ov = cJSON_AddObjectToObject(o, "override_settings");
    if (ov) cJSON_AddStringToObject(ov, "sd_model_checkpoint", r->model);
  }
  if (r->n_loras) {
    cJSON *a = cJSON_AddArrayToObject(o, "loras");
    for (int i = 0; a && i < r->n_loras; i++) {
      cJSON *l = cJSON_CreateObject();
      if (!l) break;
      cJSON_AddStringToObject(l, "name", r->loras[i].name);
      cJSON_AddNumberToObject(l, "scale", r->loras[i].scale);
      cJSON_AddItemToArray(a, l);
    }
  }
  if (r->vae[0]) cJSON_AddStringToObject(o, "vae", r->vae);
  return o;
}
