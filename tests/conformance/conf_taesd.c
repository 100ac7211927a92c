/* Tiny autoencoder cases (kinds taesd_decode / taesd_encode, feature
 * "taesd"): golden/taesd, taesdxl, taesd3. Each case runs on the diffusers
 * AutoencoderTiny folder (<fixtures>/<model_folder>) and again on the
 * original-format files in the same folder (madebyollin's taesd_*.safetensors)
 * -> ids <model>/<name> and <model>/<name>[original files]. Rel L2 < 1e-4. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "conformance.h"
#include "io/json.h"
#include "models/taesd.h"

#define TAESD_TOL 1e-4

static const sd_tensor *golden_of(const sd_weights *g, const cJSON *kase, const char *group,
                                  const char *key) {
  const char *name = sd_json_str(cJSON_GetObjectItemCaseSensitive(kase, group), key, NULL);
  return name ? sd_weights_get(g, name) : NULL;
}

/* The original-format decoder (or encoder) file in the folder. */
static int original_file(const char *dir, const char *half, char *out, size_t n) {
  static const char *const stems[] = {"taesd", "taesdxl", "taesd3"};
  for (int i = 0; i < 3; i++) {
    snprintf(out, n, "%s/%s_%s.safetensors", dir, stems[i], half);
    FILE *f = fopen(out, "rb");
    if (f) {
      fclose(f);
      return 1;
    }
  }
  return 0;
}

static void run_decode(conf_ctx *c, const char *path, const sd_weights *g, const cJSON *kase,
                       const char *id) {
  sd_error err = {0};
  sd_taesd *t = NULL;
  const sd_tensor *lt = golden_of(g, kase, "inputs", "latents");
  if (!lt || lt->ndim != 4) {
    conf_result(c, id, 0, "golden latents missing");
    return;
  }
  if (sd_taesd_open(&t, path, SD_TAESD_DECODER, &err)) {
    conf_result(c, id, 0, "%s", err.msg);
    return;
  }
  const sd_taesd_config *cfg = sd_taesd_get_config(t);
  int B = (int)lt->shape[0], L = (int)lt->shape[1], h = (int)lt->shape[2], w = (int)lt->shape[3],
      f = cfg->decoder_factor;
  sd_tensor *z = sd_tensor_to_f32(lt);
  int64_t n = (int64_t)B * 3 * h * f * w * f;
  float *img = sd_alloc(sizeof(float) * n);
  if (!z || !img) {
    conf_result(c, id, 0, "out of memory");
  } else if (L != cfg->latent_channels) {
    conf_result(c, id, 0, "latents have %d channels, the model %d", L, cfg->latent_channels);
  } else {
    /* the pipelines pass latents / scaling_factor + shift_factor */
    float sf = (float)sd_json_num(kase, "scaling_factor", 1.0);
    float sh = (float)sd_json_num(kase, "shift_factor", 0.0);
    float *zd = z->data;
    for (int64_t i = 0; i < sd_tensor_numel(z); i++) zd[i] = zd[i] / sf + sh;
    if (sd_taesd_decode(t, zd, B, h, w, img, &err)) {
      conf_result(c, id, 0, "%s", err.msg);
    } else {
      char sid[600];
      snprintf(sid, sizeof sid, "%s.decoder_output", id);
      conf_check_tensor(c, sid, img, n, golden_of(g, kase, "outputs", "decoder_output"), TAESD_TOL);
      for (int64_t i = 0; i < n; i++) {
        float v = img[i] / 2.0f + 0.5f;
        img[i] = v < 0 ? 0 : v > 1 ? 1 : v;
      }
      snprintf(sid, sizeof sid, "%s.image", id);
      conf_check_tensor(c, sid, img, n, golden_of(g, kase, "outputs", "image"), TAESD_TOL);
    }
  }
  sd_tensor_free(z);
  sd_free(img);
  sd_taesd_free(t);
}

static void run_encode(conf_ctx *c, const char *path, const sd_weights *g, const cJSON *kase,
                       const char *id) {
  sd_error err = {0};
  sd_taesd *t = NULL;
  const sd_tensor *u8 = golden_of(g, kase, "inputs", "image_u8");
  if (!u8 || u8->dtype != SD_U8 || u8->ndim != 3 || u8->shape[2] != 3) {
    conf_result(c, id, 0, "golden image_u8 (H, W, 3) missing");
    return;
  }
  if (sd_taesd_open(&t, path, SD_TAESD_ENCODER, &err)) {
    conf_result(c, id, 0, "%s", err.msg);
    return;
  }
  const sd_taesd_config *cfg = sd_taesd_get_config(t);
  int H = (int)u8->shape[0], W = (int)u8->shape[1], f = cfg->encoder_factor;
  int h = (H + f - 1) / f, w = (W + f - 1) / f;
  int64_t n = (int64_t)cfg->latent_channels * h * w;
  float *img = sd_alloc(sizeof(float) * 3 * H * W), *lat = sd_alloc(sizeof(float) * n);
  if (!img || !lat) {
    conf_result(c, id, 0, "out of memory");
  } else {
    const unsigned char *px = u8->data;
    for (int ch = 0; ch < 3; ch++) /* HWC u8 -> NCHW in [-1, 1] as the pipelines do */
      for (int64_t i = 0; i < (int64_t)H * W; i++)
        img[ch * (int64_t)H * W + i] = 2.0f * (px[i * 3 + ch] / 255.0f) - 1.0f;
    if (sd_taesd_encode(t, img, 1, H, W, lat, &err)) {
      conf_result(c, id, 0, "%s", err.msg);
    } else {
      char sid[600];
      snprintf(sid, sizeof sid, "%s.latents", id);
      conf_check_tensor(c, sid, lat, n, golden_of(g, kase, "outputs", "latents"), TAESD_TOL);
      float sf = (float)sd_json_num(kase, "scaling_factor", 1.0);
      for (int64_t i = 0; i < n; i++) lat[i] *= sf;
      snprintf(sid, sizeof sid, "%s.scaled_latents", id);
      conf_check_tensor(c, sid, lat, n, golden_of(g, kase, "outputs", "scaled_latents"), TAESD_TOL);
    }
  }
  sd_free(img);
  sd_free(lat);
  sd_taesd_free(t);
}

void conf_taesd_case(conf_ctx *c, const char *folder, const sd_weights *g, const cJSON *kase,
                     const char *id) {
  int enc = strcmp(sd_json_str(kase, "kind", ""), "taesd_encode") == 0;
  void (*run)(conf_ctx *, const char *, const sd_weights *, const cJSON *, const char *) =
      enc ? run_encode : run_decode;
  run(c, folder, g, kase, id);
  char file[4200], oid[600];
  snprintf(oid, sizeof oid, "%s[original files]", id);
  if (!original_file(folder, enc ? "encoder" : "decoder", file, sizeof file)) {
    conf_result(c, oid, 0, "no taesd*_%s.safetensors in %s", enc ? "encoder" : "decoder", folder);
    return;
  }
  run(c, file, g, kase, oid);
}
