#include "io/checkpoint_map.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/checkpoint_map_internal.h"

/* Original-layout prefixes of each component. */
#define UNET_PREFIX "model.diffusion_model."
#define VAE_PREFIX "first_stage_model."
#define SD1_CLIP_PREFIX "cond_stage_model.transformer."
#define SD2_OPEN_CLIP_PREFIX "cond_stage_model.model."
#define XL_CLIP_PREFIX "conditioner.embedders.0.transformer."
#define XL_OPEN_CLIP_PREFIX "conditioner.embedders.1.model."
#define REFINER_OPEN_CLIP_PREFIX "conditioner.embedders.0.model."

int cm_index(const char **s) {
  const char *p = *s;
  long v = 0;
  if (*p < '0' || *p > '9') return -1;
  while (*p >= '0' && *p <= '9') {
    v = v * 10 + (*p++ - '0');
    if (v > 1000000) return -1;
  }
  if (*p != '.') return -1;
  *s = p + 1;
  return (int)v;
}

int cm_is_param(const char *s) {
  return strcmp(s, "weight") == 0 || strcmp(s, "bias") == 0;
}

static int ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcmp(s + a - b, suffix) == 0;
}

int cm_is_ignored(const char *key) {
  /* The DDPM buffers of LatentDiffusion sit at the top level (no dot). */
  static const char *const ddpm_buffers[] = {
      "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
      "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
      "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
      "posterior_variance", "posterior_log_variance_clipped",
      "posterior_mean_coef1", "posterior_mean_coef2"};
  for (size_t i = 0; i < sizeof ddpm_buffers / sizeof *ddpm_buffers; i++)
    if (strcmp(key, ddpm_buffers[i]) == 0) return 1;
  /* model_ema.* holds the EMA scalars and, in non-pruned files, flattened
   * weight copies; diffusers reads the non-EMA weights by default. */
  if (cm_after(key, "model_ema.")) return 1;
  return ends_with(key, ".position_ids") || ends_with(key, ".logit_scale");
}

int cm_alias(sd_weights *out, const sd_weights *file, const char *key,
             sd_error *err, const char *fmt, ...) {
  char name[CM_NAME_MAX];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof name)
    return sd_fail(err, SD_ERR_FORMAT, "tensor name too long for '%s'", key);
  return sd_weights_alias(out, name, file, key, err);
}

int cm_require(const sd_weights *set, const char *component,
               const char *origin, const char *prefix,
               const char *const *params, int count, sd_error *err) {
  for (int i = 0; i < count; i++)
    if (!sd_weights_getf(set, "%s%s", prefix, params[i]))
      return sd_fail(err, SD_ERR_FORMAT,
                     "single-file %s is incomplete: missing tensor '%s%s' "
                     "(from %s)",
                     component, prefix, params[i], origin);
  return SD_OK;
}

int cm_has_any(const sd_weights *set, const char *prefix,
               const char *const *params, int count) {
  for (int i = 0; i < count; i++)
    if (sd_weights_getf(set, "%s%s", prefix, params[i])) return 1;
  return 0;
}

int cm_unexpected(const char *component, const char *key, sd_error *err) {
  return sd_fail(err, SD_ERR_FORMAT,
                 "single-file %s: unexpected tensor '%s' (no place for it "
                 "in the diffusers layout)",
                 component, key);
}

const char *sd_checkpoint_family_name(sd_checkpoint_family f) {
  switch (f) {
    case SD_FAMILY_SD1: return "SD 1.x";
    case SD_FAMILY_SD2: return "SD 2.x";
    case SD_FAMILY_SDXL_BASE: return "SDXL base";
    case SD_FAMILY_SDXL_REFINER: return "SDXL refiner";
    case SD_FAMILY_SD3: return "SD 3";
    default: return "unknown";
  }
}

/* The UNet's first proj_in tells SD1 (1x1 conv, 4-D) from SD2 (linear,
 * use_linear_projection), for files without text encoder. */
static int unet_proj_in_ndim(const sd_weights *file) {
  int n = sd_weights_count(file);
  for (int i = 0; i < n; i++) {
    const char *key = sd_weights_name_at(file, i);
    if (cm_after(key, UNET_PREFIX) && ends_with(key, ".proj_in.weight"))
      return sd_weights_tensor_at(file, i)->ndim;
  }
  return 0;
}

int sd_checkpoint_detect(const sd_weights *file, sd_checkpoint_info *info) {
  memset(info, 0, sizeof *info);
  info->has_unet = sd_weights_has_prefix(file, UNET_PREFIX);
  info->has_vae = sd_weights_has_prefix(file, VAE_PREFIX);

  if (sd_weights_has_prefix(file, UNET_PREFIX "joint_blocks.")) {
    info->family = SD_FAMILY_SD3;
    info->has_text_encoder = sd_weights_has_prefix(file, "text_encoders.clip_l.");
    info->has_text_encoder_2 = sd_weights_has_prefix(file, "text_encoders.clip_g.");
    info->has_text_encoder_3 = sd_weights_has_prefix(file, "text_encoders.t5xxl.");
    return SD_OK;
  }

  int sd1_clip = sd_weights_has_prefix(file, SD1_CLIP_PREFIX);
  int sd2_clip = sd_weights_has_prefix(file, SD2_OPEN_CLIP_PREFIX);
  int xl_clip = sd_weights_has_prefix(file, XL_CLIP_PREFIX);
  int xl_open_clip = sd_weights_has_prefix(file, XL_OPEN_CLIP_PREFIX);
  int refiner_open_clip =
      !xl_clip && sd_weights_has_prefix(file, REFINER_OPEN_CLIP_PREFIX);

  if (info->has_unet) {
    sd_error ignored = {0}; /* a broken layout is reported by the mapper */
    cm_unet_layout(file, UNET_PREFIX, info, &ignored);
  }

  if (xl_clip || xl_open_clip) {
    info->family = SD_FAMILY_SDXL_BASE;
    info->has_text_encoder = xl_clip;
    info->has_text_encoder_2 = xl_open_clip;
  } else if (refiner_open_clip) {
    info->family = SD_FAMILY_SDXL_REFINER;
    info->has_text_encoder_2 = 1;
  } else if (sd2_clip) {
    info->family = SD_FAMILY_SD2;
    info->has_text_encoder = 1;
  } else if (sd1_clip) {
    info->family = SD_FAMILY_SD1;
    info->has_text_encoder = 1;
  } else if (info->has_unet) {
    /* UNet-only file: SDXL has the label_emb (add_embedding) MLP; the
     * refiner is the 4-level one. */
    if (sd_weights_get(file, UNET_PREFIX "label_emb.0.0.weight"))
      info->family = info->unet_levels == 4 ? SD_FAMILY_SDXL_REFINER
                                            : SD_FAMILY_SDXL_BASE;
    else
      info->family = unet_proj_in_ndim(file) == 2 ? SD_FAMILY_SD2 : SD_FAMILY_SD1;
  }
  return info->family == SD_FAMILY_UNKNOWN ? SD_ERR_UNSUPPORTED : SD_OK;
}

/* Counts ignored keys and keys under no prefix the family maps. */
static void count_leftovers(const sd_weights *file, const char *const *prefixes,
                            int nprefixes, sd_checkpoint_info *info) {
  int n = sd_weights_count(file);
  for (int i = 0; i < n; i++) {
    const char *key = sd_weights_name_at(file, i);
    if (cm_is_ignored(key)) {
      info->ignored_keys++;
      continue;
    }
    int known = 0;
    for (int p = 0; p < nprefixes && !known; p++)
      known = prefixes[p] && cm_after(key, prefixes[p]) != NULL;
    if (!known && info->unmapped_keys++ == 0)
      snprintf(info->first_unmapped, sizeof info->first_unmapped, "%s", key);
  }
}

int sd_checkpoint_map(const sd_weights *file, sd_checkpoint_info *info,
                      sd_weights **unet, sd_weights **vae,
                      sd_weights **text_encoder, sd_weights **text_encoder_2,
                      sd_error *err) {
  sd_weights **outs[4] = {unet, vae, text_encoder, text_encoder_2};
  for (int i = 0; i < 4; i++)
    if (outs[i]) *outs[i] = NULL;
  int rc = sd_checkpoint_detect(file, info);
  if (info->family == SD_FAMILY_SD3)
    return sd_fail(err, SD_ERR_UNSUPPORTED,
                   "SD 3 single files are not mapped by the UNet-family mapper");
  if (rc)
    return sd_fail(err, SD_ERR_UNSUPPORTED,
                   "not a recognised SD 1.x / 2.x / XL single-file checkpoint "
                   "(no model.diffusion_model.*, cond_stage_model.* or "
                   "conditioner.* tensors)");

  const char *te_prefix = NULL, *te2_prefix = NULL;
  int te_open_clip = 0;
  switch (info->family) {
    case SD_FAMILY_SD1: te_prefix = SD1_CLIP_PREFIX; break;
    case SD_FAMILY_SD2: te_prefix = SD2_OPEN_CLIP_PREFIX; te_open_clip = 1; break;
    case SD_FAMILY_SDXL_BASE:
      te_prefix = XL_CLIP_PREFIX;
      te2_prefix = XL_OPEN_CLIP_PREFIX;
      break;
    case SD_FAMILY_SDXL_REFINER: te2_prefix = REFINER_OPEN_CLIP_PREFIX; break;
    default: break;
  }
  if (!info->has_text_encoder) te_prefix = NULL;
  if (!info->has_text_encoder_2) te2_prefix = NULL;

  sd_weights *sets[4] = {0};
  const char *present[4] = {info->has_unet ? UNET_PREFIX : NULL,
                            info->has_vae ? VAE_PREFIX : NULL, te_prefix,
                            te2_prefix};
  for (int i = 0; i < 4 && !rc; i++)
    if (present[i] && outs[i] && !(sets[i] = sd_weights_new()))
      rc = sd_fail(err, SD_ERR_OOM, "out of memory mapping a checkpoint");

  if (!rc && sets[0]) {
    if (info->unet_levels == 0) rc = cm_unet_layout(file, UNET_PREFIX, info, err);
    if (!rc) rc = cm_map_unet(file, UNET_PREFIX, info, sets[0], err);
  }
  if (!rc && sets[1]) rc = cm_map_vae(file, VAE_PREFIX, sets[1], err);
  int dropped = 0;
  if (!rc && sets[2]) {
    if (te_open_clip) /* SD 2.x: CLIPTextModel of the penultimate layer */
      rc = cm_map_open_clip(file, te_prefix, 1, 1, sets[2], &dropped, err);
    else
      rc = cm_map_clip_hf(file, te_prefix, sets[2], err);
  }
  if (!rc && sets[3])
    rc = cm_map_open_clip(file, te2_prefix, 0, 0, sets[3], &dropped, err);

  if (rc) {
    for (int i = 0; i < 4; i++) sd_weights_free(sets[i]);
    return rc;
  }
  count_leftovers(file, present, 4, info);
  info->ignored_keys += dropped;
  for (int i = 0; i < 4; i++)
    if (outs[i]) *outs[i] = sets[i];
  return SD_OK;
}
