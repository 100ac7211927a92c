/* 8-bit images: PNG/JPEG reading, atomic PNG writing with text chunks, and
 * conversions between model tensors and pixels.
 *
 *   sd_image img = {0};
 *   if (sd_image_read(path, &img, &err)) ...         PNG or JPEG, by content
 *   sd_png_text t[] = {{"parameters", "a cat, Steps: 20, ..."}};
 *   sd_image_write_png(out_path, &img, t, 1, &err);  temp file + rename
 *   sd_image_free(&img);
 *
 * Pixels are interleaved HWC, row-major, no row padding, channels 3 (RGB) or
 * 4 (RGBA); the buffer comes from sd_alloc and belongs to the image. */
#ifndef SDGEN_IO_IMAGE_H
#define SDGEN_IO_IMAGE_H

#include <stdint.h>

#include "base/status.h"

typedef struct sd_image {
  int width, height;
  int channels;  /* 3 = RGB, 4 = RGBA */
  uint8_t *data; /* height * width * channels bytes, or NULL when empty */
} sd_image;

/* Allocates an uninitialized w x h image with 3 or 4 channels (img is
 * overwritten, not freed first). */
int sd_image_alloc(sd_image *img, int width, int height, int channels,
                   sd_error *err);
/* Frees the pixels and resets the struct; safe on a zeroed or freed image. */
void sd_image_free(sd_image *img);

/* Reads a PNG or JPEG file (detected from its first bytes). PNG: any bit
 * depth and color type becomes RGB, or RGBA when the file carries alpha (an
 * alpha channel or a tRNS chunk); 16-bit samples keep their high byte.
 * JPEG: grayscale and YCbCr become RGB. Corrupt or truncated files fail
 * with SD_ERR_FORMAT and a one-line message naming the file. */
int sd_image_read(const char *path, sd_image *out, sd_error *err);
int sd_image_read_png(const char *path, sd_image *out, sd_error *err);
int sd_image_read_jpeg(const char *path, sd_image *out, sd_error *err);

/* One text chunk: key is a PNG keyword (1-79 Latin-1 characters), value
 * UTF-8 text. Written as tEXt (in Latin-1) when every character fits
 * Latin-1 and as uncompressed iTXt otherwise, which is what PIL's
 * PngInfo.add_text does (AUTOMATIC1111 stores its generation settings under
 * "parameters"). */
typedef struct sd_png_text {
  const char *key;
  const char *value;
} sd_png_text;

/* Writes img as an 8-bit PNG with the given text chunks (n_text may be 0).
 * The data goes to a temporary file in the destination folder that is
 * renamed over `path` only once complete; on any failure the temporary file
 * is removed and `path` is untouched. */
int sd_image_write_png(const char *path, const sd_image *img,
                       const sd_png_text *texts, int n_text, sd_error *err);

/* The same PNG in memory: *out (malloc'd, the caller frees it with free())
 * holds *size bytes. */
int sd_image_encode_png(const sd_image *img, const sd_png_text *texts, int n_text,
                        unsigned char **out, size_t *size, sd_error *err);

/* Reads the value of the first tEXt/iTXt/zTXt chunk named `key` from a PNG,
 * as UTF-8 (tEXt/zTXt Latin-1 is converted). *value is a NUL-terminated
 * copy from sd_alloc (free with sd_free), or NULL with SD_OK when the file
 * has no such chunk. */
int sd_png_read_text(const char *path, const char *key, char **value,
                     sd_error *err);

/* ---- tensor <-> pixel conversions ---- */

typedef enum sd_pixel_range {
  SD_RANGE_0_1 = 0,  /* x = u8 / 255 (Real-ESRGAN) */
  SD_RANGE_NEG1_1,   /* x = 2 * (u8 / 255) - 1 (diffusers VAE input) */
} sd_pixel_range;

/* Converts one image held as planar float (C, H, W), C = img->channels or
 * fewer, into img (already allocated, same H and W; channels beyond C are
 * left as they are). Matches diffusers' postprocess / Real-ESRGAN's enhance:
 * for [-1, 1], t = x / 2 + 0.5 first; then u8 = round_half_even(clamp(t, 0,
 * 1) * 255) in float32, as numpy's round does. NaN becomes 0. */
void sd_image_from_planar(sd_image *img, const float *chw, int C,
                          sd_pixel_range range);

/* Converts img into planar float (channels, H, W), in float32 as numpy does
 * (u8 / 255.0, then 2 * t - 1 for [-1, 1]). */
void sd_image_to_planar(float *chw, const sd_image *img, sd_pixel_range range);

#endif
