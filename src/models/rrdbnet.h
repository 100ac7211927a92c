/* Real-ESRGAN's RRDBNet (BasicSR rrdbnet_arch.py) and RealESRGANer's
 * pre/post-processing and tiled inference (realesrgan/utils.py).
 *
 *   sd_weights *w; sd_rrdbnet *net;
 *   sd_weights_open(&w, "RealESRGAN_x4plus.safetensors", &err);
 *   sd_rrdbnet_init(&net, w, &err);           config from tensor shapes
 *   sd_realesrgan_params p = sd_realesrgan_default_params();
 *   p.tile = 256;
 *   sd_realesrgan_upscale_image(net, &img, &p, &big, &err);
 *   sd_rrdbnet_free(net); sd_weights_free(w);
 *
 * Weights use the released .pth key names (conv_first, body.N.rdbK.convJ,
 * conv_body, conv_up1, conv_up2, conv_hr, conv_last; weight and bias),
 * optionally under "params_ema." or "params." (params_ema preferred, as
 * RealESRGANer loads it when present). The weight set must outlive the net.
 *
 * Scale comes from conv_first's input channels: num_in_ch (scale 4),
 * 4 * num_in_ch (scale 2: pixel-unshuffle by 2), 16 * num_in_ch (scale 1:
 * pixel-unshuffle by 4); num_in_ch is taken equal to conv_last's output
 * channels (3 for every released model). */
#ifndef SDGEN_MODELS_RRDBNET_H
#define SDGEN_MODELS_RRDBNET_H

#include <stdint.h>

#include "base/status.h"
#include "io/image.h"
#include "io/pth.h"
#include "io/safetensors.h"

typedef struct sd_rrdbnet_config {
  int num_in_ch, num_out_ch;
  int num_feat;    /* 64 in the releases */
  int num_block;   /* RRDB blocks, 23 in the releases */
  int num_grow_ch; /* dense-block growth channels, 32 in the releases */
  int scale;       /* 1, 2 or 4: output size / input size */
} sd_rrdbnet_config;

typedef struct sd_rrdbnet sd_rrdbnet;

/* Detects the config from tensor shapes, checks every tensor's shape and
 * binds views (no copy). Missing or mis-shaped tensors are SD_ERR_FORMAT
 * naming the tensor. */
int sd_rrdbnet_init(sd_rrdbnet **out, const sd_weights *w, sd_error *err);
/* Same from a released .pth checkpoint (io/pth.h), which must outlive the
 * net. */
int sd_rrdbnet_init_pth(sd_rrdbnet **out, const sd_pth *p, sd_error *err);
void sd_rrdbnet_free(sd_rrdbnet *net);
const sd_rrdbnet_config *sd_rrdbnet_config_of(const sd_rrdbnet *net);

/* Bytes of activations a forward pass on an H x W input needs at its peak
 * (for memory planning and tile-size choice). */
int64_t sd_rrdbnet_forward_bytes(const sd_rrdbnet *net, int H, int W);

/* The raw network: x (num_in_ch, H, W) float -> y (num_out_ch, H*scale,
 * W*scale), unclamped. Scale 2 needs even H and W, scale 1 multiples of 4
 * (pixel-unshuffle), else SD_ERR_ARG. */
int sd_rrdbnet_forward(const sd_rrdbnet *net, const float *x, int H, int W,
                       float *y, sd_error *err);

/* Intermediates for conformance checks (owned copies from sd_alloc). */
typedef struct sd_rrdbnet_trace {
  float *pixel_unshuffle; /* (num_in_ch*r*r, H/r, W/r), scale 1/2 only */
  int64_t pixel_unshuffle_numel;
  float *conv_first; /* (num_feat, h, w) */
  float *trunk;      /* conv_first + conv_body(body(conv_first)) */
  int64_t feat_numel;
} sd_rrdbnet_trace;

int sd_rrdbnet_forward_traced(const sd_rrdbnet *net, const float *x, int H,
                              int W, float *y, sd_rrdbnet_trace *trace,
                              sd_error *err);
void sd_rrdbnet_trace_free(sd_rrdbnet_trace *trace);

/* RealESRGANer's knobs. */
typedef struct sd_realesrgan_params {
  int tile;     /* tile size in input pixels; 0 = whole image at once */
  int tile_pad; /* extra input pixels around each tile (clipped to image) */
  int pre_pad;  /* reflect padding bottom/right before the network */
} sd_realesrgan_params;

/* tile 0, tile_pad 10, pre_pad 0 (inference_realesrgan.py's defaults). */
sd_realesrgan_params sd_realesrgan_default_params(void);

/* RealESRGANer.pre_process -> (tile_process | process) -> post_process on
 * one image: x (num_in_ch, H, W) in [0, 1] -> y (num_out_ch, H*scale,
 * W*scale), raw float. pre_process reflect-pads bottom/right by pre_pad and
 * then to a multiple of 2 (scale 2) or 4 (scale 1); post_process crops back.
 * Tiles: tile x tile input pixels in raster order, each run with tile_pad
 * extra pixels per side (clipped to the image, no padding added), only the
 * un-padded part pasted into the output. */
int sd_realesrgan_run(const sd_rrdbnet *net, const float *x, int H, int W,
                      const sd_realesrgan_params *p, float *y, sd_error *err);

/* RealESRGANer.enhance on an 8-bit image at the network's own scale:
 * RGB -> u8 / 255 -> sd_realesrgan_run -> round(clamp(y, 0, 1) * 255).
 * RGBA: the alpha plane goes through the network as a gray RGB image and
 * back to gray with OpenCV's BGR2GRAY weights (RealESRGANer's default
 * alpha_upsampler 'realesrgan'). `out` is allocated here. */
int sd_realesrgan_upscale_image(const sd_rrdbnet *net, const sd_image *in,
                                const sd_realesrgan_params *p, sd_image *out,
                                sd_error *err);

#endif
