/* Helpers shared by the single-file mappers (checkpoint_map*.c). Not part of
 * the public API. */
#ifndef SDGEN_IO_CHECKPOINT_MAP_INTERNAL_H
#define SDGEN_IO_CHECKPOINT_MAP_INTERNAL_H

#include <stddef.h>
#include <string.h>

#include "io/checkpoint_map.h"

#define CM_NAME_MAX 1024

/* The part of s after prefix, or NULL when s does not start with it. */
static inline const char *cm_after(const char *s, const char *prefix) {
  size_t n = strlen(prefix);
  return strncmp(s, prefix, n) == 0 ? s + n : NULL;
}

/* Parses "<digits>." at *s, advancing past the dot. Returns the number, or
 * -1 (leaving *s alone) when *s does not start that way. */
int cm_index(const char **s);

/* 1 for "weight" and "bias": the only leaf names a renamed layer may have. */
int cm_is_param(const char *s);

/* Keys that are not weights and that every loader skips: DDPM schedule
 * buffers, EMA bookkeeping and copies, CLIP position_ids, logit_scale. */
int cm_is_ignored(const char *key);

/* Adds `name` (printf format) to out as an alias of `key` in file. */
int cm_alias(sd_weights *out, const sd_weights *file, const char *key,
             sd_error *err, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Checks that every `prefix + params[i]` exists in set; otherwise an
 * SD_ERR_FORMAT naming the missing diffusers tensor and `origin` (where the
 * single file should have held it). */
int cm_require(const sd_weights *set, const char *component,
               const char *origin, const char *prefix,
               const char *const *params, int count, sd_error *err);

/* 1 when any `prefix + params[i]` exists in set. */
int cm_has_any(const sd_weights *set, const char *prefix,
               const char *const *params, int count);

/* SD_ERR_FORMAT for a tensor the layout does not explain. */
int cm_unexpected(const char *component, const char *key, sd_error *err);

/* UNet (checkpoint_map_unet.c). cm_unet_layout reads levels, layers per
 * block and per-level transformer depth from the key names under prefix. */
int cm_unet_layout(const sd_weights *file, const char *prefix,
                   sd_checkpoint_info *info, sd_error *err);
int cm_map_unet(const sd_weights *file, const char *prefix,
                const sd_checkpoint_info *info, sd_weights *out, sd_error *err);

/* VAE (checkpoint_map_vae.c). */
int cm_map_vae(const sd_weights *file, const char *prefix, sd_weights *out,
               sd_error *err);

/* Text encoders (checkpoint_map_clip.c). cm_map_clip_hf: Hugging Face
 * names under a prefix. cm_map_open_clip: OpenCLIP names; drop_last_layer
 * and skip_projection reproduce SD 2.x's encoder (penultimate layer, no
 * projection); skipped tensors are counted in *ignored. */
int cm_map_clip_hf(const sd_weights *file, const char *prefix, sd_weights *out,
                   sd_error *err);
int cm_map_open_clip(const sd_weights *file, const char *prefix,
                     int drop_last_layer, int skip_projection, sd_weights *out,
                     int *ignored, sd_error *err);

/* Shared completeness check of a CLIP text model in diffusers names. */
int cm_check_clip(const sd_weights *set, const char *component,
                  int need_projection, sd_error *err);

#endif
