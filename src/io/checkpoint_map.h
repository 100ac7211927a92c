/* Single-file checkpoints → diffusers names.
 *
 * A single .safetensors file as released by Stability / CompVis (SD 1.x,
 * SD 2.x, SDXL base, SDXL refiner) holds every component under the original
 * (LDM / sgm / OpenCLIP) names. sd_checkpoint_map turns it into one weight
 * set per component whose names are exactly those of the matching file of a
 * diffusers folder (unet/diffusion_pytorch_model.safetensors,
 * vae/..., text_encoder/model.safetensors, text_encoder_2/...), so model
 * loaders only ever see diffusers / transformers names.
 *
 * Every mapped tensor is a view into the mapped file (no copy), except
 * OpenCLIP's text_projection, which is stored [hidden, projection] and
 * applied as `x @ P`: diffusers' text_projection.weight is its transpose, so
 * that one tensor is a transposed copy in the stored dtype.
 *
 * The conversion follows diffusers v0.31.0 loaders/single_file_utils.py
 * (convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
 * convert_ldm_clip_checkpoint, convert_open_clip_checkpoint), with the UNet
 * block numbering derived from the keys (levels, layers per block) rather
 * than from a config.
 *
 * Usage:
 *   sd_weights *file, *unet, *vae, *te, *te2;
 *   sd_checkpoint_info info;
 *   if (sd_weights_open(&file, path, err)) return ...;
 *   if (sd_checkpoint_map(file, &info, &unet, &vae, &te, &te2, err)) ...;
 *   sd_weights_free(file);   // the component sets keep the file mapped
 *   ... load models from unet / vae / te / te2 (NULL when absent) ...
 */
#ifndef SDGEN_IO_CHECKPOINT_MAP_H
#define SDGEN_IO_CHECKPOINT_MAP_H

#include "base/status.h"
#include "io/safetensors.h"

typedef enum sd_checkpoint_family {
  SD_FAMILY_UNKNOWN = 0,
  SD_FAMILY_SD1,          /* CLIP-L (HF names), UNet with conv proj_in */
  SD_FAMILY_SD2,          /* OpenCLIP ViT-H (penultimate layer), linear proj */
  SD_FAMILY_SDXL_BASE,    /* CLIP-L + OpenCLIP bigG, label_emb */
  SD_FAMILY_SDXL_REFINER, /* OpenCLIP bigG only, 4-level UNet */
  SD_FAMILY_SD3,          /* MMDiT: detected only, mapped elsewhere */
} sd_checkpoint_family;

#define SD_CHECKPOINT_MAX_LEVELS 8

typedef struct sd_checkpoint_info {
  sd_checkpoint_family family;
  /* Components present in the file. For SD3: text_encoder = CLIP-L,
   * text_encoder_2 = CLIP-G, text_encoder_3 = T5. For SDXL base the
   * OpenCLIP bigG is text_encoder_2; for the refiner it is text_encoder_2
   * too (the refiner has no text_encoder); for SD2 it is text_encoder. */
  int has_unet, has_vae, has_text_encoder, has_text_encoder_2,
      has_text_encoder_3;

  /* UNet layout found in the keys (filled when has_unet and not SD3). */
  int unet_levels;
  int unet_layers_per_block;
  /* Transformer depth of each down level's first block (0: no attention),
   * e.g. SDXL base {0, 2, 10}, refiner {0, 4, 4, 0}, SD 1.5 {1, 1, 1, 0}. */
  int unet_level_attention[SD_CHECKPOINT_MAX_LEVELS];

  /* Filled by sd_checkpoint_map: tensors skipped on purpose (DDPM schedule
   * buffers, EMA scalars / copies, position_ids, logit_scale, SD2's unused
   * last OpenCLIP layer and projection), and tensors under no known
   * component prefix (left out; the first one is named). */
  int ignored_keys;
  int unmapped_keys;
  char first_unmapped[256];
} sd_checkpoint_info;

/* "SD 1.x", "SD 2.x", "SDXL base", "SDXL refiner", "SD 3", "unknown". */
const char *sd_checkpoint_family_name(sd_checkpoint_family f);

/* Looks at the key names (and a few shapes) of a single-file checkpoint.
 * Returns SD_OK when the family is recognised, SD_ERR_UNSUPPORTED (info still
 * filled, family SD_FAMILY_UNKNOWN) when not. Never touches tensor data. */
int sd_checkpoint_detect(const sd_weights *file, sd_checkpoint_info *info);

/* Detects, then builds one set per component present (NULL otherwise; any
 * output pointer may be NULL to skip that component). The sets hold views
 * into `file`'s mapping and stay valid after `file` is freed. Fails with
 * SD_ERR_FORMAT naming the tensor when a component is incomplete (a block
 * missing, a layer with a hole) or holds a tensor the layout does not
 * explain, SD_ERR_UNSUPPORTED for SD3 or an unknown family. On failure every
 * output is NULL. */
int sd_checkpoint_map(const sd_weights *file, sd_checkpoint_info *info,
                      sd_weights **unet, sd_weights **vae,
                      sd_weights **text_encoder, sd_weights **text_encoder_2,
                      sd_error *err);

#endif
