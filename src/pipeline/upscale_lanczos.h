/* Lanczos resizing that reproduces Pillow 9.4's
 * Image.resize((w, h), Image.LANCZOS) bit for bit on 8-bit RGB and RGBA
 * images, upscaling and downscaling alike (the original tool's
 * `--upscale 2|4` without a network).
 *
 * What makes it exact (fixtures/golden/upscale/README.md, section 1):
 * per-output-pixel float64 weights normalized over the window clipped to the
 * image, quantized to 22 fractional bits; horizontal pass first with a
 * rounded and clipped uint8 intermediate, then the vertical pass; RGBA goes
 * through premultiplied alpha as PIL's convert('RGBa') does.
 *
 * Memory: input + output + one band of intermediate rows (the horizontal
 * pass runs per band of output rows, recomputing the few input rows that
 * neighbouring bands share), so a 4096x4096 result needs no full-size
 * intermediate. */
#ifndef SDGEN_PIPELINE_UPSCALE_LANCZOS_H
#define SDGEN_PIPELINE_UPSCALE_LANCZOS_H

#include "base/status.h"
#include "io/image.h"

/* Resizes `in` (3 or 4 channels) to out_w x out_h into `out`, which is
 * allocated here with in->channels channels (free with sd_image_free).
 * Same size returns a copy, as PIL does. */
int sd_lanczos_resize(const sd_image *in, int out_w, int out_h, sd_image *out,
                      sd_error *err);

/* Convenience: integer factor (out = factor * in on both sides). */
int sd_lanczos_upscale(const sd_image *in, int factor, sd_image *out,
                       sd_error *err);

#endif
