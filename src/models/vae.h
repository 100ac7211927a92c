/* AutoencoderKL: the 4-channel VAE of SD 1.x / SDXL and the 16-channel VAE
 * of SD3 (no quant convs, shift factor), config-driven.
 *
 * Weights use diffusers names ("encoder.*", "decoder.*", "quant_conv.*",
 * "post_quant_conv.*"); either half may be absent when only the other is
 * used. Images are NCHW in [-1, 1]; latents are in the VAE's own space (the
 * pipeline applies scaling_factor / shift_factor with the helpers below). */
#ifndef SDGEN_MODELS_VAE_H
#define SDGEN_MODELS_VAE_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "base/status.h"
#include "io/safetensors.h"

#define SD_VAE_MAX_LEVELS 6

typedef struct sd_vae_config {
  int in_channels, out_channels, latent_channels;
  int levels, layers_per_block;
  int block_out[SD_VAE_MAX_LEVELS];
  int norm_groups;
  float scaling_factor, shift_factor;
  int force_upcast;
  int has_encoder, has_decoder, has_quant_conv;
  int sample_size; /* config "sample_size" (first entry if a list), 512 if absent:
                      diffusers' default tiling tile edge in pixels */
} sd_vae_config;

typedef struct sd_vae sd_vae;

int sd_vae_load(sd_vae **out, const sd_weights *w, const cJSON *config,
                sd_error *err);
void sd_vae_free(sd_vae *m);
const sd_vae_config *sd_vae_get_config(const sd_vae *m);
/* Spatial factor between image and latent (8 for every SD VAE). */
int sd_vae_downscale(const sd_vae *m);

/* image (B, out_ch, f*h, f*w) = decoder(post_quant_conv(z)), z (B, L, h, w)
 * the unscaled latent (latents / scaling_factor + shift_factor). */
int sd_vae_decode(const sd_vae *m, const float *z, int B, int h, int w,
                  float *image, sd_error *err);

/* Encoder posterior of image (B, in_ch, H, W): mean and std (B, L, H/f, W/f),
 * logvar clamped to [-30, 20] as diffusers does; logvar may be NULL. */
int sd_vae_encode(const sd_vae *m, const float *image, int B, int H, int W,
                  float *mean, float *std, float *logvar, sd_error *err);

#endif
