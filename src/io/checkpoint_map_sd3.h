/* SD3 / SD3.5 single-file checkpoints → diffusers names.
 *
 * Stability's files hold the MMDiT under "model.diffusion_model." with the
 * original names (joint_blocks.N.{x,context}_block.*, x_embedder, t_embedder,
 * y_embedder, final_layer, fused attn.qkv), the VAE under
 * "first_stage_model." (LDM names) and, in the "incl. encoders" files, the
 * text encoders under "text_encoders.{clip_l,clip_g,t5xxl}.transformer."
 * (Hugging Face names). The separately shipped encoders (clip_l.safetensors,
 * clip_g.safetensors, t5xxl.safetensors) use the Hugging Face names at the
 * top level.
 *
 * Each component becomes a weight set named exactly as the matching file of
 * a diffusers folder (transformer/, vae/, text_encoder/, text_encoder_2/,
 * text_encoder_3/). Tensors are views into the mapped file, including q/k/v
 * (row ranges of the fused qkv), except:
 *  - the AdaLN of the last block's context stream and final_layer's AdaLN,
 *    stored (shift, scale) where diffusers stores (scale, shift): a copy with
 *    the halves swapped, in the stored dtype;
 *  - CLIP-L's text_projection, which both references ignore (diffusers puts
 *    the identity there): an F32 identity.
 * This follows diffusers v0.31.0 convert_sd3_transformer_checkpoint_to_
 * diffusers, convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint and
 * convert_sd3_t5_checkpoint_to_diffusers.
 *
 * Single files carry no config.json: sd_sd3_transformer_config derives the
 * transformer's config from tensor shapes (as Stability's loader does), and
 * sd_sd3_vae_config gives the SD3 VAE's.
 *
 * Usage:
 *   sd_weights *file; sd_sd3_components comp;
 *   sd_weights_open(&file, "sd3.5_large.safetensors", &err);
 *   sd_sd3_checkpoint_map(file, &comp, &err);
 *   sd_weights_free(file);  // the component sets keep the file mapped
 *   sd_mmdit_load(&m, comp.transformer, comp.transformer_config, &err);
 *   ...
 *   sd_sd3_components_free(&comp); */
#ifndef SDGEN_IO_CHECKPOINT_MAP_SD3_H
#define SDGEN_IO_CHECKPOINT_MAP_SD3_H

#include <cjson/cJSON.h>

#include "base/status.h"
#include "io/safetensors.h"

typedef struct sd_sd3_components {
  sd_weights *transformer; /* NULL when absent from the file */
  sd_weights *vae;
  sd_weights *clip_l, *clip_g, *t5;
  cJSON *transformer_config; /* derived from shapes, with transformer */
  cJSON *vae_config;         /* with vae */
} sd_sd3_components;

typedef enum sd_sd3_encoder {
  SD_SD3_CLIP_L = 0,
  SD_SD3_CLIP_G,
  SD_SD3_T5
} sd_sd3_encoder;

/* 1 if the file holds an SD3-family MMDiT ("model.diffusion_model.joint_
 * blocks.*"). */
int sd_sd3_is_checkpoint(const sd_weights *file);

/* Maps every component present. On failure all outputs are NULL. */
int sd_sd3_checkpoint_map(const sd_weights *file, sd_sd3_components *out,
                          sd_error *err);
void sd_sd3_components_free(sd_sd3_components *c);

/* Maps one text encoder: `prefix` "" for the separate files,
 * "text_encoders.clip_l.transformer." etc. inside a checkpoint. */
int sd_sd3_map_text_encoder(const sd_weights *file, const char *prefix,
                            sd_sd3_encoder kind, sd_weights **out,
                            sd_error *err);

/* A diffusers-style config.json for the mapped transformer, from shapes. */
int sd_sd3_transformer_config(const sd_weights *transformer, cJSON **out,
                              sd_error *err);
/* The SD3 / SD3.5 VAE's config (16 latent channels, scaling 1.5305, shift
 * 0.0609, no quant convs), block widths from the mapped weights. */
int sd_sd3_vae_config(const sd_weights *vae, cJSON **out, sd_error *err);

#endif
