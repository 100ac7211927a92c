/* Tiled VAE decode / encode: bounded activation memory at any image size.
 *
 * Reproduces diffusers v0.31.0 AutoencoderKL.tiled_decode / _tiled_encode
 * (what `vae.enable_tiling()` gives): the input is cut into square tiles of
 * `tile` input units stepping by int(tile * (1 - overlap)); each tile runs
 * through the plain sd_vae_decode / sd_vae_encode; every tile is then blended
 * into its upper and left neighbours (blend_v, then blend_h) with linear
 * weights over blend = int(tile_out * overlap) output units, cropped to
 * row_limit = tile_out - blend and concatenated. Blends see the neighbours
 * as already blended themselves (diffusers blends in place, row by row).
 * When the input is no larger than one tile, diffusers does not tile and
 * neither do we: the result is then the untiled one, bit for bit.
 *
 * Unlike diffusers, which keeps every decoded tile until the end, one tile is
 * decoded at a time; what the later blends need of earlier tiles is kept in
 * two small buffers (the last `blend` rows of each tile of the previous tile
 * row, the last `blend` columns of the previous tile). The activation peak is
 * that of one tile decode plus those buffers (a strip of out_ch * blend rows
 * across the width: a few MiB for SDXL at 4096 px), whatever the image size.
 * The output buffer is the caller's.
 * In plan mode (base/alloc.h) both passes only allocate: no tile is copied or
 * blended, so planning a tiled decode touches no image memory.
 *
 * Tiling is not exact by design: each tile sees less context, and every
 * GroupNorm takes its statistics over the tile instead of the image.
 * Tolerance, measured on the tiny SD1.5 fixture VAE (random weights) with
 * 64 px tiles (8 latents) on a 128x160 image, tiled vs untiled in [0,1] image
 * space: relative L2 0.132, max abs diff 0.361 (unit test limits 0.20 / 0.50);
 * 96 px tiles: 0.078 / 0.254; 128 px: 0.047 / 0.275. Encode, 64 px tiles,
 * latent mean: relative L2 0.43 (limit 0.60). These are what diffusers'
 * algorithm gives on such tiny tiles, not errors of this code: the blending
 * itself matches a double-precision transcription of diffusers to 1e-6.
 * Real VAEs with their 512/1024 px default tiles see far more context per
 * tile and differ much less.
 *
 *   sd_vae_tiling t = sd_vae_tiling_default(vae);
 *   rc = sd_vae_decode_tiled(vae, z, B, h, w, &t, image, &err);
 */
#ifndef SDGEN_MODELS_VAE_TILED_H
#define SDGEN_MODELS_VAE_TILED_H

#include <stdint.h>

#include "base/status.h"
#include "models/vae.h"

typedef struct sd_vae_tiling {
  int tile_sample_size; /* tile edge in image pixels (diffusers tile_sample_min_size) */
  double overlap;       /* diffusers tile_overlap_factor, in [0, 0.5] */
} sd_vae_tiling;

/* diffusers' defaults: tile = config sample_size (512 for SD1.5, 1024 for
 * SDXL), overlap 0.25. */
sd_vae_tiling sd_vae_tiling_default(const sd_vae *m);

/* Checks that a tiling fits the VAE: tile a multiple of the downscale
 * factor, and tiles that after cropping cover the output exactly
 * (f * int(tile/f * (1-overlap)) == tile - int(tile*overlap), which holds for
 * every tile that is a multiple of 32 px at overlap 0.25). */
int sd_vae_tiling_check(const sd_vae *m, const sd_vae_tiling *t, sd_error *err);

/* image (B, out_ch, f*h, f*w) from z (B, L, h, w), the unscaled latent, as
 * sd_vae_decode, tile by tile. */
int sd_vae_decode_tiled(const sd_vae *m, const float *z, int B, int h, int w,
                        const sd_vae_tiling *t, float *image, sd_error *err);

/* Posterior of image (B, in_ch, H, W) as sd_vae_encode, tile by tile: the
 * tiles' moments (mean, logvar) are blended, then std = exp(logvar / 2).
 * One deviation: sd_vae_encode hands out logvar already clamped to
 * [-30, 20], so the clamp comes before the blend here and after it in
 * diffusers; they differ only where a tile's logvar leaves that range.
 * logvar may be NULL. */
int sd_vae_encode_tiled(const sd_vae *m, const float *image, int B, int H, int W,
                        const sd_vae_tiling *t, float *mean, float *std, float *logvar,
                        sd_error *err);

/* Activation peak in bytes (tracked sd_alloc bytes above what the caller
 * holds; z and image not counted) of sd_vae_decode on (B, L, h, w), derived
 * from the channel counts by replaying vae.c's allocation sequence, kernel
 * scratch included (im2col tiles, attention scratch for the current thread
 * count, weight panels assuming F16/BF16 weights: an F32 VAE needs up to one
 * panel less). Assumes a mid-block attention, as in every SD VAE. */
int64_t sd_vae_decode_peak_bytes(const sd_vae *m, int B, int h, int w);

/* Same for sd_vae_decode_tiled: one tile's decode peak plus the tiling
 * buffers; equals sd_vae_decode_peak_bytes where the latent fits one tile.
 * Returns -1 for a tiling that sd_vae_tiling_check rejects. */
int64_t sd_vae_decode_tiled_peak_bytes(const sd_vae *m, int B, int h, int w,
                                       const sd_vae_tiling *t);

#endif
