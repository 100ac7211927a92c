/* sdgen_decode: finishes a generation from the latents file saved before
 * the VAE decode (a decode that failed, a kill, a crash). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/alloc.h"
#include "io/checkpoint_map.h"
#include "io/checkpoint_map_sd3.h"
#include "io/json.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "models/vae.h"
#include "pipeline/generate_internal.h"
#include "pipeline/unet_pipeline.h"
#include "tensor/ops.h"

/* ---- NaN/Inf guard ---- */

/* Stages the test hook knows; bit i of `injected` marks stage i poisoned. */
static const char *const k_guard_stages[] = {"denoise", "decode", "refiner-denoise",
                                             "refiner-decode"};
static unsigned injected;

/* SDGEN_INJECT_NAN: poisons the first value of a named stage's output, once
 * per process, so the rerun path can be tested on any CPU. */
static void inject_nan(const char *stage, float *out, int64_t count) {
  const char *env = getenv("SDGEN_INJECT_NAN");
  if (!env || count <= 0) return;
  for (unsigned i = 0; i < sizeof k_guard_stages / sizeof *k_guard_stages; i++) {
    size_t len = strlen(k_guard_stages[i]);
    if (strcmp(stage, k_guard_stages[i]) != 0 || (injected & (1u << i))) continue;
    for (const char *s = env; (s = strstr(s, stage)) != NULL; s += len)
      if ((s == env || s[-1] == ',') && (s[len] == 0 || s[len] == ',')) {
        injected |= 1u << i;
        out[0] = NAN;
        return;
      }
  }
}

static int has_nonfinite(const float *x, int64_t count) {
  int bad = 0;
  for (int64_t i = 0; i < count; i++) bad |= !isfinite(x[i]);
  return bad;
}

void gen_guard_begin(gen_guard *g, const char *stage) {
  g->stage = stage;
  g->saved = sd_get_precision();
  g->rerun = 0;
  g->reran = 0;
}

int gen_guard_check(gen_run *r, gen_guard *g, float *out, int64_t count) {
  g->rerun = 0;
  inject_nan(g->stage, out, count);
  if (!has_nonfinite(out, count)) return SD_OK;
  sd_precision now = sd_get_precision();
  if (g->reran || now == SD_PREC_FP32) /* the latents of a failed decode stay for --decode */
    return sd_fail(r->err, SD_ERR_NUMERIC,
                   "the %s stage produced NaN/Inf values in fp32 (the model or its inputs "
                   "overflow)%s%s", g->stage, r->latents_path[0] ? "; latents kept in " : "",
                   r->latents_path);
  /* The reduced-precision overflow (the known fp16/bf16 VAE case): one
   * rerun of the stage in full precision. */
  sd_monitor_recovered(&r->mon, "%s: NaN/Inf in the output under %s; reran the stage in fp32",
                       g->stage, sd_precision_name(now));
  sd_set_precision(SD_PREC_FP32);
  g->rerun = 1;
  g->reran = 1;
  return SD_OK;
}

void gen_guard_end(gen_guard *g) {
  if (g->reran) sd_set_precision(g->saved);
}

/* The "model" entry of a safetensors file's __metadata__. */
static int latents_model(const char *path, char *out, size_t n, sd_error *err) {
  FILE *f = fopen(path, "rb");
  if (!f) return sd_fail(err, SD_ERR_IO, "cannot open %s", path);
  unsigned char len8[8];
  uint64_t hlen = 0;
  int ok = fread(len8, 1, 8, f) == 8;
  for (int i = 7; ok && i >= 0; i--) hlen = (hlen << 8) | len8[i];
  char *hdr = ok && hlen < (1u << 20) ? sd_alloc(hlen + 1) : NULL;
  ok = hdr && fread(hdr, 1, hlen, f) == hlen;
  fclose(f);
  out[0] = 0;
  if (ok) {
    hdr[hlen] = 0;
    cJSON *root = cJSON_Parse(hdr);
    const char *m = sd_json_str(cJSON_GetObjectItemCaseSensitive(root, "__metadata__"), "model",
                                NULL);
    if (m) snprintf(out, n, "%s", m);
    cJSON_Delete(root);
  }
  sd_free(hdr);
  return ok ? SD_OK : sd_fail(err, SD_ERR_FORMAT, "%s is not a latents file", path);
}

/* The VAE of any supported model: <folder>/vae, or mapped from a single
 * file. *w owns the mapping. */
int gen_open_vae(const char *path, int prefer_fp16, const char *config_dir, sd_weights **w,
                 sd_vae **vae, sd_error *err) {
  cJSON *cfg = NULL;
  char dir[4200];
  int rc;
  *w = NULL;
  *vae = NULL;
  if (sd_is_dir(path)) {
    sd_path_join(dir, sizeof dir, path, "vae");
    rc = sd_component_open(dir, prefer_fp16, w, &cfg, err);
  } else {
    sd_weights *file = NULL;
    if ((rc = sd_weights_open(&file, path, err))) return rc;
    if (sd_sd3_is_checkpoint(file)) {
      sd_sd3_components c = {0};
      rc = sd_sd3_checkpoint_map(file, &c, err);
      if (!rc) {
        *w = c.vae;
        cfg = c.vae_config;
        c.vae = NULL;
        c.vae_config = NULL;
      }
      sd_sd3_components_free(&c);
    } else {
      sd_checkpoint_info info;
      rc = sd_checkpoint_map(file, &info, NULL, w, NULL, NULL, err);
      if (!rc && info.family != SD_FAMILY_SD1 && info.family != SD_FAMILY_SD2)
        cfg = cJSON_Parse("{\"scaling_factor\": 0.13025}");
    }
    sd_weights_free(file);
    if (!rc && config_dir) {
      cJSON_Delete(cfg);
      cfg = NULL;
      sd_path_join(dir, sizeof dir, config_dir, "vae/config.json");
      if (sd_is_file(dir)) rc = sd_json_read_file(dir, &cfg, err);
    }
  }
  if (!rc && !*w) rc = sd_fail(err, SD_ERR_FORMAT, "%s has no VAE", path);
  if (!rc) rc = sd_vae_load(vae, *w, cfg, err);
  cJSON_Delete(cfg);
  if (rc) {
    sd_weights_free(*w);
    *w = NULL;
  }
  return rc;
}

/* The run's folder and stamp from its latents file: FILE's folder, and the
 * <stamp> of output_<stamp>.latents.safetensors (0 when the name has none). */
static int run_of_latents(const char *file, char *dir, size_t dn, char *stamp, size_t sn) {
  const char *slash = strrchr(file, '/');
  const char *base = slash ? slash + 1 : file;
  if (!slash) snprintf(dir, dn, ".");
  else if (slash == file) snprintf(dir, dn, "/");
  else snprintf(dir, dn, "%.*s", (int)(slash - file), file);
  static const char pre[] = "output_", suf[] = ".latents.safetensors";
  size_t len = strlen(base), lp = sizeof pre - 1, ls = sizeof suf - 1;
  if (len <= lp + ls || strncmp(base, pre, lp) != 0 || strcmp(base + len - ls, suf) != 0 ||
      len - lp - ls >= sn)
    return 0;
  snprintf(stamp, sn, "%.*s", (int)(len - lp - ls), base + lp);
  return 1;
}

int sdgen_decode(sdgen_ctx *ctx, const sdgen_params *params, const char *latents_file,
                 sdgen_result *res) {
  sd_error *err = &ctx->err;
  sd_error_clear(err);
  memset(res, 0, sizeof *res);
  /* The images go beside the latents file, under its run's stamp: a run
   * finished by --decode looks as if its decode had never failed. */
  char run_dir[4096], run_stamp[64];
  int have_stamp = run_of_latents(latents_file, run_dir, sizeof run_dir, run_stamp,
                                  sizeof run_stamp);
  sdgen_params q = *params;
  if (!q.output_dir) q.output_dir = run_dir;
  const sdgen_params *p = &q;
  gen_run r = {.ctx = ctx, .p = p, .err = err};
  sd_monitor_init(&r.mon, NULL, NULL);
  sd_weights *lw = NULL, *vw = NULL;
  sd_vae *vae = NULL;
  char model[4096];
  int rc = latents_model(latents_file, model, sizeof model, err);
  if (rc) return rc;
  if (p->model) snprintf(model, sizeof model, "%s", p->model);
  if (!model[0])
    return sd_fail(err, SD_ERR_ARG, "%s does not name its model: pass --model", latents_file);
  if (!p->output_in_memory && (rc = sd_prepare_output_dir(p->output_dir, err))) return rc;
  if (p->threads > 0) sd_set_threads(p->threads);
  sd_precision prec;
  if ((rc = sd_parse_precision(p->precision, &prec, err))) return rc;
  sd_set_precision(prec);
  if ((rc = sd_resolve_model(p, model, r.model_path, sizeof r.model_path, err))) return rc;
  if ((rc = sd_weights_open(&lw, latents_file, err))) return rc;
  const sd_tensor *lt = sd_weights_get(lw, "latents");
  if (!lt || lt->dtype != SD_F32 || lt->ndim != 4) {
    rc = sd_fail(err, SD_ERR_FORMAT, "%s holds no F32 (n, C, h, w) 'latents' tensor",
                 latents_file);
    goto done;
  }
  /* params.vae: the tiny autoencoder decodes instead of the model's VAE */
  if (p->vae ? (rc = gen_open_vaes(&r))
             : (rc = gen_open_vae(r.model_path, p->prefer_fp16, p->config_dir, &vw, &vae, err)))
    goto done;
  int n = (int)lt->shape[0], C = (int)lt->shape[1], h = (int)lt->shape[2], w = (int)lt->shape[3];
  int f = r.tiny ? sd_taesd_get_config(r.tiny)->decoder_factor : sd_vae_downscale(vae);
  int want = r.tiny ? sd_taesd_get_config(r.tiny)->latent_channels
                    : sd_vae_get_config(vae)->latent_channels;
  if (C != want) {
    rc = sd_fail(err, SD_ERR_ARG, "the latents have %d channels, the VAE of %s expects %d", C,
                 model, want);
    goto done;
  }
  if (n > SDGEN_MAX_IMAGES) {
    rc = sd_fail(err, SD_ERR_FORMAT, "%s holds %d images", latents_file, n);
    goto done;
  }
  r.n = n;
  r.width = w * f;
  r.height = h * f;
  r.model_type = "decode";
  if (have_stamp) {
    snprintf(r.stamp, sizeof r.stamp, "%s", run_stamp);
  } else {
    time_t now = time(NULL);
    struct tm tmv;
    localtime_r(&now, &tmv);
    strftime(r.stamp, sizeof r.stamp, "%Y%m%d_%H%M%S", &tmv);
  }
  r.images = sd_alloc(sizeof(float) * n * 3 * r.width * r.height);
  float *lat = sd_alloc(sizeof(float) * n * C * h * w);
  if (!r.images || !lat) {
    sd_free(lat);
    rc = sd_fail(err, SD_ERR_OOM, "out of memory");
    goto done;
  }
  memcpy(lat, lt->data, sizeof(float) * n * C * h * w); /* the view may be unaligned */
  gen_guard g;
  gen_guard_begin(&g, "decode");
  do {
    rc = r.tiny ? sd_decode_latents_tiny(r.tiny, lat, n, h, w, r.images, err)
                : sd_decode_latents(vae, lat, n, h, w, 1, r.images, err);
    if (!rc) rc = gen_guard_check(&r, &g, r.images, (int64_t)n * 3 * r.width * r.height);
  } while (!rc && g.rerun);
  gen_guard_end(&g);
  sd_free(lat);
  if (rc) goto done;
  r.final = sd_calloc((size_t)n, sizeof(sd_image));
  if (!r.final) {
    rc = sd_fail(err, SD_ERR_OOM, "out of memory");
    goto done;
  }
  int64_t per = 3LL * r.width * r.height;
  for (int b = 0; b < n && !rc; b++) {
    rc = sd_image_alloc(&r.final[b], r.width, r.height, 3, err);
    if (!rc) sd_image_from_planar(&r.final[b], r.images + per * b, 3, SD_RANGE_NEG1_1);
  }
  r.out_width = r.width;
  r.out_height = r.height;
  if (!rc) rc = gen_save(&r, res);
  /* as a run that decoded at once: the latents go once the images and
   * their metadata are complete, unless asked to keep them */
  if (!rc && !p->keep_latents) unlink(latents_file);
done:
  gen_free_vaes(&r);
  sd_vae_free(vae);
  sd_weights_free(vw);
  sd_weights_free(lw);
  sd_free(r.images);
  for (int b = 0; r.final && b < r.n; b++) sd_image_free(&r.final[b]);
  sd_free(r.final);
  return rc;
}
