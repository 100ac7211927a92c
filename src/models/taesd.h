/* Tiny autoencoders (TAESD, TAESDXL, TAESD3; diffusers' AutoencoderTiny).
 *
 *   sd_taesd *t;
 *   sd_taesd_open(&t, "taesd", SD_TAESD_DECODER, &err);  folder or file
 *   sd_taesd_decode(t, latents, 1, 64, 64, image, &err);
 *   sd_taesd_free(t);
 *
 * Files: a diffusers AutoencoderTiny folder (config.json +
 * diffusion_pytorch_model.safetensors with "encoder.layers.N.*" /
 * "decoder.layers.N.*"), or madebyollin's original files
 * (taesd_decoder.safetensors / taesd_encoder.safetensors, taesdxl_*,
 * taesd3_*, or the same as .pth): nn.Sequential indices, the decoder's
 * index 0 being the parameter-free tanh clamp (original N = diffusers N + 1).
 * A file names one half; the other half is taken from the sibling file
 * (_decoder <-> _encoder) when it exists.
 *
 * The structure comes from the tensor names and shapes (blocks counted,
 * channels read from the weights) and is checked against config.json when
 * there is one:
 *   decoder: tanh(z / 3) * 3, conv, ReLU, {Block | 2x nearest upsample +
 *            conv without bias}..., conv  -> output 2 * x - 1
 *   encoder: (x + 1) / 2, conv, {Block | stride-2 conv without bias}..., conv
 *   Block(x) = ReLU(conv(ReLU(conv(ReLU(conv(x))))) + skip(x)),
 *   skip = identity or a 1x1 conv without bias when channels change.
 * Latents are the diffusion model's own (scaling_factor 1, shift 0 in every
 * release); images are NCHW in [-1, 1]. */
#ifndef SDGEN_MODELS_TAESD_H
#define SDGEN_MODELS_TAESD_H

#include <stdint.h>

#include "base/status.h"

enum { SD_TAESD_DECODER = 1, SD_TAESD_ENCODER = 2 };

typedef struct sd_taesd_config {
  int latent_channels;
  int image_channels; /* 3 */
  int has_decoder, has_encoder;
  int decoder_factor;                 /* 2^(upsamplings): 8 for every release */
  int encoder_factor;                 /* 2^(stride-2 convs) */
  int decoder_blocks, encoder_blocks; /* Block counts */
  int max_channels;                   /* widest layer (64 in the releases) */
  float scaling_factor, shift_factor; /* config.json, 1.0 / 0.0 by default */
  int original_format;                /* 1: madebyollin's files, 0: diffusers folder */
} sd_taesd_config;

typedef struct sd_taesd sd_taesd;

/* Opens a folder or a file. `need` is SD_TAESD_DECODER and/or
 * SD_TAESD_ENCODER: a missing half that is needed is an error naming the
 * file looked for. Weights stay mapped while the model lives. */
int sd_taesd_open(sd_taesd **out, const char *path, int need, sd_error *err);
void sd_taesd_free(sd_taesd *t);
const sd_taesd_config *sd_taesd_get_config(const sd_taesd *t);
/* Mapped weight bytes (both halves that were opened). */
int64_t sd_taesd_weight_bytes(const sd_taesd *t);

/* image (B, 3, f*h, f*w) in diffusers' range (2 * taesd - 1, not clamped)
 * from the latents (B, L, h, w) as the diffusion model sees them; decodes
 * one image at a time. */
int sd_taesd_decode(const sd_taesd *t, const float *latents, int B, int h, int w, float *image,
                    sd_error *err);
/* latents (B, L, ceil(H/f), ceil(W/f)) from image (B, 3, H, W) in [-1, 1]. */
int sd_taesd_encode(const sd_taesd *t, const float *image, int B, int H, int W, float *latents,
                    sd_error *err);

/* Activation peak (bytes, tracked allocations plus conv scratch) of a
 * decode of one h x w latent, measured by running the decode in plan
 * mode. */
int64_t sd_taesd_decode_bytes(const sd_taesd *t, int h, int w);

#endif
