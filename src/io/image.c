#include "io/image.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h>
#include <jerror.h>
#include <spng.h>

#include "base/alloc.h"

/* Refuse images whose pixel buffer would not fit comfortably in memory
 * before allocating anything (a 16-byte PNG header can claim 4 G pixels). */
#define SD_IMAGE_MAX_SIDE 32768
#define SD_IMAGE_MAX_PIXELS ((int64_t)1 << 28)

int sd_image_alloc(sd_image *img, int width, int height, int channels,
                   sd_error *err) {
  img->data = NULL;
  img->width = img->height = img->channels = 0;
  if (width <= 0 || height <= 0 || (channels != 3 && channels != 4))
    return sd_fail(err, SD_ERR_ARG, "invalid image size %dx%d with %d channels",
                   width, height, channels);
  if (width > SD_IMAGE_MAX_SIDE || height > SD_IMAGE_MAX_SIDE ||
      (int64_t)width * height > SD_IMAGE_MAX_PIXELS)
    return sd_fail(err, SD_ERR_UNSUPPORTED, "image size %dx%d is too large",
                   width, height);
  img->data = sd_alloc((size_t)width * height * channels);
  if (!img->data)
    return sd_fail(err, SD_ERR_OOM, "out of memory for a %dx%d image", width,
                   height);
  img->width = width;
  img->height = height;
  img->channels = channels;
  return SD_OK;
}

void sd_image_free(sd_image *img) {
  if (!img) return;
  sd_free(img->data);
  img->data = NULL;
  img->width = img->height = img->channels = 0;
}

/* ---- PNG reading ---- */

static int png_open_decoder(const char *path, FILE **fp, spng_ctx **ctx,
                            sd_error *err) {
  *fp = fopen(path, "rb");
  if (!*fp)
    return sd_fail(err, SD_ERR_IO, "cannot open %s: %s", path, strerror(errno));
  *ctx = spng_ctx_new(0);
  if (!*ctx) {
    fclose(*fp);
    return sd_fail(err, SD_ERR_OOM, "out of memory reading %s", path);
  }
  /* Bounds what a hostile file can make the decoder cache (text chunks,
   * unknown chunks); real images stay far below. */
  spng_set_chunk_limits(*ctx, 64u << 20, 64u << 20);
  spng_set_image_limits(*ctx, SD_IMAGE_MAX_SIDE, SD_IMAGE_MAX_SIDE);
  int rc = spng_set_png_file(*ctx, *fp);
  if (rc) {
    spng_ctx_free(*ctx);
    fclose(*fp);
    return sd_fail(err, SD_ERR_IO, "cannot read %s: %s", path,
                   spng_strerror(rc));
  }
  return SD_OK;
}

int sd_image_read_png(const char *path, sd_image *out, sd_error *err) {
  FILE *fp;
  spng_ctx *ctx;
  memset(out, 0, sizeof *out);
  int st = png_open_decoder(path, &fp, &ctx, err);
  if (st) return st;
  struct spng_ihdr ihdr;
  struct spng_trns trns;
  int rc = spng_get_ihdr(ctx, &ihdr);
  if (rc) {
    st = sd_fail(err, SD_ERR_FORMAT, "%s is not a valid PNG: %s", path,
                 spng_strerror(rc));
    goto done;
  }
  int has_alpha = ihdr.color_type == SPNG_COLOR_TYPE_GRAYSCALE_ALPHA ||
                  ihdr.color_type == SPNG_COLOR_TYPE_TRUECOLOR_ALPHA ||
                  spng_get_trns(ctx, &trns) == 0;
  if ((int64_t)ihdr.width * ihdr.height > SD_IMAGE_MAX_PIXELS) {
    st = sd_fail(err, SD_ERR_UNSUPPORTED, "%s: image size %ux%u is too large",
                 path, ihdr.width, ihdr.height);
    goto done;
  }
  int channels = has_alpha ? 4 : 3;
  /* 16-bit samples keep their high byte, as PIL's RGB modes do */
  int fmt = has_alpha ? SPNG_FMT_RGBA8 : SPNG_FMT_RGB8;
  size_t len;
  rc = spng_decoded_image_size(ctx, fmt, &len);
  if (rc) {
    st = sd_fail(err, SD_ERR_FORMAT, "%s: unsupported PNG layout: %s", path,
                 spng_strerror(rc));
    goto done;
  }
  st = sd_image_alloc(out, (int)ihdr.width, (int)ihdr.height, channels, err);
  if (st) goto done;
  if (len != (size_t)out->width * out->height * channels) {
    st = sd_fail(err, SD_ERR_FORMAT, "%s: unexpected decoded size", path);
    goto done;
  }
  rc = spng_decode_image(ctx, out->data, len, fmt, SPNG_DECODE_TRNS);
  if (rc)
    st = sd_fail(err, SD_ERR_FORMAT, "%s is corrupt or truncated: %s", path,
                 spng_strerror(rc));
done:
  if (st) sd_image_free(out);
  spng_ctx_free(ctx);
  fclose(fp);
  return st;
}

int sd_png_read_text(const char *path, const char *key, char **value,
                     sd_error *err) {
  FILE *fp;
  spng_ctx *ctx;
  *value = NULL;
  int st = png_open_decoder(path, &fp, &ctx, err);
  if (st) return st;
  struct spng_text *texts = NULL;
  uint32_t n = 0;
  /* Text chunks before IDAT are parsed by get_ihdr; decoding the image
   * (discarded) also reaches those placed after it. */
  struct spng_ihdr ihdr;
  int rc = spng_get_ihdr(ctx, &ihdr);
  size_t len = 0;
  if (!rc) rc = spng_decoded_image_size(ctx, SPNG_FMT_RGBA8, &len);
  unsigned char *scratch = NULL;
  if (!rc) {
    scratch = sd_alloc(len);
    if (!scratch) {
      st = sd_fail(err, SD_ERR_OOM, "out of memory reading %s", path);
      goto done;
    }
    rc = spng_decode_image(ctx, scratch, len, SPNG_FMT_RGBA8, 0);
  }
  if (rc) {
    st = sd_fail(err, SD_ERR_FORMAT, "%s is not a valid PNG: %s", path,
                 spng_strerror(rc));
    goto done;
  }
  rc = spng_get_text(ctx, NULL, &n);
  if (rc == SPNG_ECHUNKAVAIL || n == 0) goto done; /* no text at all */
  if (rc) {
    st = sd_fail(err, SD_ERR_FORMAT, "%s: bad text chunk: %s", path,
                 spng_strerror(rc));
    goto done;
  }
  texts = sd_alloc(n * sizeof *texts);
  if (!texts) {
    st = sd_fail(err, SD_ERR_OOM, "out of memory reading %s", path);
    goto done;
  }
  rc = spng_get_text(ctx, texts, &n);
  if (rc) {
    st = sd_fail(err, SD_ERR_FORMAT, "%s: bad text chunk: %s", path,
                 spng_strerror(rc));
    goto done;
  }
  for (uint32_t i = 0; i < n; i++) {
    if (strcmp(texts[i].keyword, key) != 0) continue;
    /* tEXt/zTXt hold Latin-1: widened to UTF-8 (at most 2 bytes each) */
    const int widen = texts[i].type != SPNG_ITXT;
    *value = sd_alloc(texts[i].length * (widen ? 2 : 1) + 1);
    if (!*value) {
      st = sd_fail(err, SD_ERR_OOM, "out of memory reading %s", path);
      goto done;
    }
    size_t o = 0;
    for (size_t k = 0; k < texts[i].length; k++) {
      const unsigned char ch = (unsigned char)texts[i].text[k];
      if (widen && ch >= 0x80) {
        (*value)[o++] = (char)(0xc0 | ch >> 6);
        (*value)[o++] = (char)(0x80 | (ch & 0x3f));
      } else {
        (*value)[o++] = (char)ch;
      }
    }
    (*value)[o] = '\0';
    break;
  }
done:
  sd_free(scratch);
  sd_free(texts);
  spng_ctx_free(ctx);
  fclose(fp);
  return st;
}

/* ---- JPEG reading ---- */

typedef struct jpeg_error_jump {
  struct jpeg_error_mgr base;
  jmp_buf jump;
  char msg[JMSG_LENGTH_MAX];
} jpeg_error_jump;

/* libjpeg's default handler calls exit(); ours records the message and
 * jumps back to the reader, which turns it into a status. */
static void jpeg_error_exit_jump(j_common_ptr cinfo) {
  jpeg_error_jump *e = (jpeg_error_jump *)cinfo->err;
  (*cinfo->err->format_message)(cinfo, e->msg);
  longjmp(e->jump, 1);
}

/* libjpeg only warns about a truncated file and pads it with gray; PIL
 * refuses it ("image file is truncated"), and so do we. Other warnings
 * (extraneous bytes between markers) are tolerated as PIL does. */
static void jpeg_warning_jump(j_common_ptr cinfo, int level) {
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF)
    jpeg_error_exit_jump(cinfo);
}

int sd_image_read_jpeg(const char *path, sd_image *out, sd_error *err) {
  memset(out, 0, sizeof *out);
  FILE *fp = fopen(path, "rb");
  if (!fp)
    return sd_fail(err, SD_ERR_IO, "cannot open %s: %s", path, strerror(errno));
  struct jpeg_decompress_struct cinfo;
  jpeg_error_jump jerr;
  /* volatile: modified after setjmp and read after longjmp. */
  sd_image *volatile img = out;
  volatile int st = SD_OK;
  cinfo.err = jpeg_std_error(&jerr.base);
  jerr.base.error_exit = jpeg_error_exit_jump;
  jerr.base.emit_message = jpeg_warning_jump;
  if (setjmp(jerr.jump)) {
    if (st == SD_OK)
      st = sd_fail(err, SD_ERR_FORMAT, "%s is not a valid JPEG: %s", path,
                   jerr.msg);
    sd_image_free(img);
    jpeg_destroy_decompress(&cinfo);
    fclose(fp);
    return st;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_stdio_src(&cinfo, fp);
  jpeg_read_header(&cinfo, TRUE);
  if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
    st = sd_fail(err, SD_ERR_UNSUPPORTED, "%s: CMYK JPEG is not supported",
                 path);
    longjmp(jerr.jump, 1);
  }
  cinfo.out_color_space = JCS_RGB;
  jpeg_start_decompress(&cinfo);
  if (cinfo.output_components != 3) {
    st = sd_fail(err, SD_ERR_UNSUPPORTED, "%s: unexpected JPEG layout", path);
    longjmp(jerr.jump, 1);
  }
  st = sd_image_alloc(img, (int)cinfo.output_width, (int)cinfo.output_height,
                      3, err);
  if (st) longjmp(jerr.jump, 1);
  size_t stride = (size_t)img->width * 3;
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = img->data + (size_t)cinfo.output_scanline * stride;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  fclose(fp);
  return SD_OK;
}

int sd_image_read(const char *path, sd_image *out, sd_error *err) {
  memset(out, 0, sizeof *out);
  FILE *fp = fopen(path, "rb");
  if (!fp)
    return sd_fail(err, SD_ERR_IO, "cannot open %s: %s", path, strerror(errno));
  unsigned char magic[8] = {0};
  size_t got = fread(magic, 1, sizeof magic, fp);
  fclose(fp);
  static const unsigned char png_sig[8] = {0x89, 'P', 'N', 'G',
                                           0x0d, 0x0a, 0x1a, 0x0a};
  if (got == 8 && memcmp(magic, png_sig, 8) == 0)
    return sd_image_read_png(path, out, err);
  if (got >= 3 && magic[0] == 0xff && magic[1] == 0xd8 && magic[2] == 0xff)
    return sd_image_read_jpeg(path, out, err);
  return sd_fail(err, SD_ERR_FORMAT, "%s is neither a PNG nor a JPEG file",
                 path);
}

/* ---- PNG writing ---- */

/* PIL's add_text writes tEXt when the text encodes to Latin-1 and iTXt
 * (UTF-8) otherwise. Converts UTF-8 whose code points are all <= U+00FF
 * into Latin-1 in `out` (room for strlen(s) + 1 bytes) and returns its
 * length, or -1 when some character needs iTXt. */
static long utf8_to_latin1(const char *s, char *out) {
  long n = 0;
  for (const unsigned char *p = (const unsigned char *)s; *p; n++) {
    if (p[0] < 0x80) {
      out[n] = (char)*p++;
    } else if ((p[0] == 0xc2 || p[0] == 0xc3) && (p[1] & 0xc0) == 0x80) {
      out[n] = (char)(((p[0] & 0x03) << 6) | (p[1] & 0x3f));
      p += 2;
    } else {
      return -1;
    }
  }
  out[n] = '\0';
  return n;
}

/* Encodes into an open stream; returns an spng error code or a negative
 * value for our own argument errors. */
static int png_encode_to(FILE *fp, const sd_image *img,
                         const sd_png_text *texts, int n_text, sd_error *err,
                         const char *path) {
  spng_ctx *ctx = spng_ctx_new(SPNG_CTX_ENCODER);
  if (!ctx) return sd_fail(err, SD_ERR_OOM, "out of memory writing %s", path);
  struct spng_text *chunks = NULL;
  char **latin1 = NULL; /* tEXt copies of the values */
  int st = SD_OK;
  int rc = spng_set_png_file(ctx, fp);
  struct spng_ihdr ihdr = {0};
  ihdr.width = (uint32_t)img->width;
  ihdr.height = (uint32_t)img->height;
  ihdr.bit_depth = 8;
  ihdr.color_type = img->channels == 4 ? SPNG_COLOR_TYPE_TRUECOLOR_ALPHA
                                       : SPNG_COLOR_TYPE_TRUECOLOR;
  if (!rc) rc = spng_set_ihdr(ctx, &ihdr);
  if (!rc && n_text > 0) {
    chunks = sd_calloc((size_t)n_text, sizeof *chunks);
    latin1 = sd_calloc((size_t)n_text, sizeof *latin1);
    if (!chunks || !latin1) {
      st = sd_fail(err, SD_ERR_OOM, "out of memory writing %s", path);
      goto done;
    }
    for (int i = 0; i < n_text; i++) {
      size_t klen = strlen(texts[i].key);
      if (klen == 0 || klen >= sizeof chunks[i].keyword) {
        st = sd_fail(err, SD_ERR_ARG, "PNG text key '%s' must be 1-79 bytes",
                     texts[i].key);
        goto done;
      }
      memcpy(chunks[i].keyword, texts[i].key, klen + 1);
      const size_t vlen = strlen(texts[i].value);
      latin1[i] = sd_alloc(vlen + 1);
      if (!latin1[i]) {
        st = sd_fail(err, SD_ERR_OOM, "out of memory writing %s", path);
        goto done;
      }
      long l1 = utf8_to_latin1(texts[i].value, latin1[i]);
      chunks[i].type = l1 >= 0 ? SPNG_TEXT : SPNG_ITXT;
      chunks[i].text = l1 >= 0 ? latin1[i] : (char *)texts[i].value;
      chunks[i].length = l1 >= 0 ? (size_t)l1 : vlen;
      chunks[i].language_tag = (char *)"";
      chunks[i].translated_keyword = (char *)"";
    }
    rc = spng_set_text(ctx, chunks, (uint32_t)n_text);
  }
  if (!rc)
    rc = spng_encode_image(ctx, img->data,
                           (size_t)img->width * img->height * img->channels,
                           SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE);
  if (rc)
    st = sd_fail(err, rc == SPNG_EMEM ? SD_ERR_OOM : SD_ERR_IO,
                 "cannot write %s: %s", path, spng_strerror(rc));
done:
  spng_ctx_free(ctx);
  sd_free(chunks);
  for (int i = 0; latin1 && i < n_text; i++) sd_free(latin1[i]);
  sd_free(latin1);
  return st;
}

int sd_image_encode_png(const sd_image *img, const sd_png_text *texts, int n_text,
                        unsigned char **out, size_t *size, sd_error *err) {
  *out = NULL;
  *size = 0;
  if (!img || !img->data || img->width <= 0 || img->height <= 0 ||
      (img->channels != 3 && img->channels != 4))
    return sd_fail(err, SD_ERR_ARG, "cannot encode an empty or invalid image");
  char *buf = NULL;
  size_t len = 0;
  FILE *fp = open_memstream(&buf, &len);
  if (!fp) return sd_fail(err, SD_ERR_OOM, "out of memory encoding a PNG");
  int st = png_encode_to(fp, img, texts, n_text, err, "(memory)");
  if (fclose(fp) != 0 && !st) st = sd_fail(err, SD_ERR_OOM, "out of memory encoding a PNG");
  if (st) {
    free(buf);
    return st;
  }
  *out = (unsigned char *)buf;
  *size = len;
  return SD_OK;
}

int sd_image_write_png(const char *path, const sd_image *img,
                       const sd_png_text *texts, int n_text, sd_error *err) {
  if (!img || !img->data || img->width <= 0 || img->height <= 0 ||
      (img->channels != 3 && img->channels != 4))
    return sd_fail(err, SD_ERR_ARG, "cannot write %s: empty or invalid image",
                   path);
  /* The temporary name lives in the destination folder so that rename() is
   * atomic (same file system). */
  size_t plen = strlen(path);
  char *tmp = sd_alloc(plen + 16);
  if (!tmp) return sd_fail(err, SD_ERR_OOM, "out of memory writing %s", path);
  const char *slash = strrchr(path, '/');
  size_t dir_len = slash ? (size_t)(slash - path + 1) : 0;
  memcpy(tmp, path, dir_len);
  snprintf(tmp + dir_len, plen + 16 - dir_len, ".%s.XXXXXX", path + dir_len);
  int fd = mkstemp(tmp);
  if (fd < 0) {
    int st = sd_fail(err, SD_ERR_IO, "cannot write %s: %s", path,
                     strerror(errno));
    sd_free(tmp);
    return st;
  }
  /* mkstemp creates 0600; an image should get the usual umask mode. */
  mode_t mask = umask(0);
  umask(mask);
  fchmod(fd, 0666 & ~mask);
  FILE *fp = fdopen(fd, "wb");
  int st;
  if (!fp) {
    st = sd_fail(err, SD_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    close(fd);
    goto fail;
  }
  st = png_encode_to(fp, img, texts, n_text, err, path);
  if (st) {
    fclose(fp);
    goto fail;
  }
  if (fflush(fp) != 0 || ferror(fp)) {
    st = sd_fail(err, SD_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    fclose(fp);
    goto fail;
  }
  if (fclose(fp) != 0) {
    st = sd_fail(err, SD_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    goto fail;
  }
  if (rename(tmp, path) != 0) {
    st = sd_fail(err, SD_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    goto fail;
  }
  sd_free(tmp);
  return SD_OK;
fail:
  unlink(tmp);
  sd_free(tmp);
  return st;
}

/* ---- conversions ---- */

void sd_image_from_planar(sd_image *img, const float *chw, int C,
                          sd_pixel_range range) {
  const int64_t hw = (int64_t)img->width * img->height;
  const int ch = img->channels;
  if (C > ch) C = ch;
  for (int c = 0; c < C; c++) {
    const float *src = chw + (int64_t)c * hw;
    uint8_t *dst = img->data + c;
    for (int64_t i = 0; i < hw; i++) {
      float t = src[i];
      if (range == SD_RANGE_NEG1_1) t = t / 2.0f + 0.5f;
      /* written so that NaN fails both tests and ends up 0 */
      t = t > 0.0f ? (t < 1.0f ? t : 1.0f) : 0.0f;
      /* rintf rounds half to even in the default rounding mode, as numpy */
      dst[i * ch] = (uint8_t)rintf(t * 255.0f);
    }
  }
}

void sd_image_to_planar(float *chw, const sd_image *img, sd_pixel_range range) {
  const int64_t hw = (int64_t)img->width * img->height;
  const int ch = img->channels;
  for (int c = 0; c < ch; c++) {
    float *dst = chw + (int64_t)c * hw;
    const uint8_t *src = img->data + c;
    for (int64_t i = 0; i < hw; i++) {
      float t = (float)src[i * ch] / 255.0f;
      dst[i] = range == SD_RANGE_NEG1_1 ? 2.0f * t - 1.0f : t;
    }
  }
}
