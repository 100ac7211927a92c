/* The decoder as a component: params.vae (a tiny autoencoder in place of
 * the model's VAE) and the tiny-VAE previews during denoising. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "io/hub.h"
#include "io/image.h"
#include "io/model_dir.h"
#include "models/taesd.h"
#include "pipeline/generate_internal.h"
#include "pipeline/unet_pipeline.h"

/* madebyollin's tiny autoencoder of a family ("" unknown). */
static const char *family_repo(const char *family) {
  if (!strcmp(family, "sd1")) return "madebyollin/taesd";
  if (!strcmp(family, "sdxl") || !strcmp(family, "sdxl-refiner")) return "madebyollin/taesdxl";
  if (!strcmp(family, "sd3")) return "madebyollin/taesd3";
  return NULL;
}

static int family_latent_channels(const char *family) {
  return !strcmp(family, "sd3") ? 16 : family[0] ? 4 : 0;
}

/* An AutoencoderTiny hub repo (ORG/NAME) or one file in a repo, through the
 * cache or a download: *out is the folder (repo) or the file. */
static int resolve_hub(const gen_run *r, const char *name, int offline, char *out, size_t n,
                       sd_error *err) {
  char repo[512], file[1024];
  sd_error perr = {0};
  if (sd_hub_parse_name(name, repo, sizeof repo, file, sizeof file, &perr))
    return sd_fail(err, SD_ERR_IO,
                   "VAE %s not found (neither a file, a folder, \"taesd\" nor a "
                   "hub name)",
                   name);
  sd_hub_options ho = sd_hub_default_options();
  ho.offline = offline || r->p->offline;
  ho.progress = r->p->on_download;
  ho.user = r->p->user;
  if (file[0]) return sd_hub_resolve(name, &ho, out, n, err);
  /* a whole AutoencoderTiny repo: its config and weights, one folder */
  char one[1600];
  snprintf(one, sizeof one, "%s/config.json", repo);
  int rc = sd_hub_resolve(one, &ho, out, n, err);
  snprintf(one, sizeof one, "%s/diffusion_pytorch_model.safetensors", repo);
  if (!rc) rc = sd_hub_resolve(one, &ho, out, n, err);
  if (rc) return rc;
  char *slash = strrchr(out, '/');
  if (slash) *slash = 0;
  return SD_OK;
}

/* Opens a tiny VAE for `family` from params-style `name`, checking its
 * latent channels against the family. */
static int open_tiny(gen_run *r, const char *name, const char *family, int need, int offline,
                     sd_taesd **out, char *path, size_t pn, sd_error *err) {
  int rc;
  if (!strcmp(name, "taesd")) {
    const char *repo = family_repo(family);
    if (!repo)
      return sd_fail(err, SD_ERR_ARG,
                     "--vae taesd: cannot tell the family of %s; pass the "
                     "tiny VAE's path or hub name",
                     r->model_path);
    rc = resolve_hub(r, repo, offline, path, pn, err);
  } else if (sd_is_dir(name) || sd_is_file(name)) {
    snprintf(path, pn, "%s", name);
    rc = SD_OK;
  } else {
    rc = resolve_hub(r, name, offline, path, pn, err);
  }
  if (rc) return rc;
  if ((rc = sd_taesd_open(out, path, need, err))) return rc;
  int want = family_latent_channels(family), got = sd_taesd_get_config(*out)->latent_channels;
  const sd_taesd_config *c = sd_taesd_get_config(*out);
  if ((want && got != want) || (c->has_decoder && c->decoder_factor != 8)) {
    sd_taesd_free(*out);
    *out = NULL;
    if (want && got != want)
      return sd_fail(err, SD_ERR_ARG,
                     "VAE %s has %d latent channels but %s models use %d "
                     "(--vae taesd picks the model's own)",
                     name, got,
                     !strcmp(family, "sd3")   ? "SD3"
                     : !strcmp(family, "sd1") ? "SD 1.x/2.x"
                                              : "SDXL",
                     want);
    return sd_fail(err, SD_ERR_FORMAT, "VAE %s upsamples by %d, the model's latents need 8", name,
                   c->decoder_factor);
  }
  return SD_OK;
}

int gen_open_vaes(gen_run *r) {
  const sdgen_params *p = r->p;
  const char *family = "";
  int rc;
  if (!p->vae && p->preview_every <= 0) return SD_OK;
  if ((rc = gen_model_family(r->model_path, &family, r->err))) return rc;
  if (p->vae) {
    /* img2img and the refiner's image mode encode with it too */
    int need = SD_TAESD_DECODER |
               (p->init_image || (p->refiner && p->refiner_switch <= 0) ? SD_TAESD_ENCODER : 0);
    if ((rc = open_tiny(r, p->vae, family, need, 0, &r->tiny, r->vae_path, sizeof r->vae_path,
                        r->err)))
      return rc;
  }
  if (p->preview_every <= 0) return SD_OK;
  if (r->tiny) {
    r->preview = r->tiny;
    return SD_OK;
  }
  /* the family's tiny VAE, when the cache has it (previews never download) */
  char path[4096];
  sd_error e = {0};
  const char *why = NULL;
  if (!family_repo(family))
    why = "the model's family is unknown";
  else if (open_tiny(r, "taesd", family, SD_TAESD_DECODER, 1, &r->preview, path, sizeof path, &e))
    why = e.msg;
  if (why)
    sd_monitor_warn(&r->mon,
                    "no previews: no tiny VAE for this model (%s); pass --vae with a "
                    "tiny autoencoder, or download %s",
                    why, family_repo(family) ? family_repo(family) : "one");
  return SD_OK;
}

void gen_free_vaes(gen_run *r) {
  if (r->preview != r->tiny) sd_taesd_free(r->preview);
  sd_taesd_free(r->tiny);
  r->preview = r->tiny = NULL;
}

const char *gen_vae_label(const gen_run *r) {
  if (!r->tiny) return NULL;
  return r->p->vae;
}

int64_t gen_plan_tiny(const sd_taesd *t, int encode, int n, int h, int w) {
  const sd_taesd_config *c = sd_taesd_get_config(t);
  int f = encode ? c->encoder_factor : c->decoder_factor;
  sd_plan_begin();
  float *lat = sd_alloc(sizeof(float) * n * c->latent_channels * h * w);
  float *img = sd_alloc(sizeof(float) * n * 3 * h * f * w * f);
  int64_t base = sd_alloc_get_stats().bytes_in_use, peak = -1;
  if (lat && img) {
    sd_error e = {0};
    sd_alloc_reset_peak();
    int rc = encode ? sd_encode_image_tiny(t, img, n, h * f, w * f, lat, &e)
                    : sd_decode_latents_tiny(t, lat, n, h, w, img, &e);
    if (rc == SD_OK) peak = sd_alloc_get_stats().peak_bytes - base;
  }
  sd_free(lat);
  sd_free(img);
  sd_plan_end();
  return peak;
}

int64_t gen_preview_bytes(const gen_run *r, int h, int w, int64_t *weights) {
  *weights = 0;
  if (!r->preview || r->p->preview_every <= 0 || !r->p->on_preview) return 0;
  const sd_taesd_config *c = sd_taesd_get_config(r->preview);
  int64_t H = (int64_t)h * c->decoder_factor, W = (int64_t)w * c->decoder_factor;
  int64_t act = gen_plan_tiny(r->preview, 0, 1, h, w);
  if (act < 0) return -1;
  *weights = r->preview == r->tiny ? 0 : sd_taesd_weight_bytes(r->preview);
  /* + the x0 estimate, the float image and the RGB buffer */
  return act + 4LL * c->latent_channels * h * w + 4 * 3 * H * W + 3 * H * W;
}

int gen_preview(gen_run *r, const sd_scheduler *s, int i, int step, int total,
                const float *model_output, const float *sample, int h, int w) {
  const sdgen_params *p = r->p;
  if (!r->preview || p->preview_every <= 0 || !p->on_preview) return SD_OK;
  if (step % p->preview_every != 0 && step != total) return SD_OK;
  const sd_taesd_config *c = sd_taesd_get_config(r->preview);
  int f = c->decoder_factor, H = h * f, W = w * f;
  int64_t n = (int64_t)c->latent_channels * h * w, hw = (int64_t)H * W;
  float *x0 = sd_alloc(sizeof(float) * n), *img = sd_alloc(sizeof(float) * 3 * hw);
  unsigned char *rgb = sd_alloc((size_t)(3 * hw));
  int rc = SD_OK;
  if (!x0 || !img || !rgb) {
    rc = sd_fail(r->err, SD_ERR_OOM, "out of memory (preview)");
  } else {
    /* the first image of the batch: its denoised estimate */
    sd_scheduler_predict_x0(s, i, model_output, sample, x0, n);
    rc = sd_decode_latents_tiny(r->preview, x0, 1, h, w, img, r->err);
  }
  if (!rc) {
    for (int64_t k = 0; k < hw; k++)
      for (int ch = 0; ch < 3; ch++) {
        float v = img[ch * hw + k] / 2.0f + 0.5f;
        v = v < 0 ? 0 : v > 1 ? 1 : v;
        rgb[k * 3 + ch] = (unsigned char)lrintf(v * 255.0f);
      }
    p->on_preview(step, total, W, H, rgb, p->user);
  }
  sd_free(x0);
  sd_free(img);
  sd_free(rgb);
  return rc;
}

int sdgen_write_png(const char *path, int width, int height, const unsigned char *rgb) {
  if (!path || !rgb || width <= 0 || height <= 0) return SD_ERR_ARG;
  sd_image img = {.width = width, .height = height, .channels = 3, .data = (unsigned char *)rgb};
  sd_error e = {0};
  return sd_image_write_png(path, &img, NULL, 0, &e);
}
