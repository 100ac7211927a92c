#include "pipeline/upscale_lanczos.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "base/alloc.h"

/* Pillow's 8-bit resampling precision: 32 - 8 (result depth) - 2 (sign and
 * headroom) fractional bits. Not 8 bits: that changes up to 3 levels. */
#define LANCZOS_PRECISION_BITS 22
#define LANCZOS_SUPPORT 3.0
/* Output rows produced per band; the horizontal intermediate holds about
 * BAND_ROWS * in/out + 6 rows. */
#define LANCZOS_BAND_ROWS 64

/* Integer coefficients of one axis: output pixel i reads `count[i]` input
 * pixels from `first[i]`, weights k[i * ksize + j]. */
typedef struct lanczos_axis {
  int ksize;
  int *first, *count;
  int32_t *k;
} lanczos_axis;

static double sinc(double x) {
  if (x == 0.0) return 1.0;
  x = x * M_PI;
  return sin(x) / x;
}

static double lanczos3(double x) {
  return (-3.0 <= x && x < 3.0) ? sinc(x) * sinc(x / 3.0) : 0.0;
}

static void lanczos_axis_free(lanczos_axis *a) {
  sd_free(a->first);
  sd_free(a->count);
  sd_free(a->k);
  memset(a, 0, sizeof *a);
}

/* Pillow's precompute_coeffs + normalize_coeffs_8bpc for box [0, in_size).
 * The expressions keep Pillow's order of operations (including multiplying
 * by 1/filterscale rather than dividing) so that the doubles, and hence the
 * quantized weights, are the same. */
static int lanczos_axis_init(lanczos_axis *a, int in_size, int out_size) {
  memset(a, 0, sizeof *a);
  const double scale = (double)in_size / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = LANCZOS_SUPPORT * filterscale;
  const double ss = 1.0 / filterscale;
  a->ksize = (int)ceil(support) * 2 + 1;
  a->first = sd_alloc((size_t)out_size * sizeof(int));
  a->count = sd_alloc((size_t)out_size * sizeof(int));
  a->k = sd_calloc((size_t)out_size * a->ksize, sizeof(int32_t));
  double *w = sd_alloc((size_t)a->ksize * sizeof(double));
  if (!a->first || !a->count || !a->k || !w) {
    sd_free(w);
    lanczos_axis_free(a);
    return SD_ERR_OOM;
  }
  for (int i = 0; i < out_size; i++) {
    const double center = (i + 0.5) * scale;
    int lo = (int)(center - support + 0.5);
    if (lo < 0) lo = 0;
    int hi = (int)(center + support + 0.5);
    if (hi > in_size) hi = in_size;
    const int n = hi - lo;
    double sum = 0.0;
    for (int j = 0; j < n; j++) {
      w[j] = lanczos3((j + lo - center + 0.5) * ss);
      sum += w[j];
    }
    int32_t *k = a->k + (size_t)i * a->ksize;
    for (int j = 0; j < n; j++) {
      double v = sum != 0.0 ? w[j] / sum : w[j];
      /* each weight rounded on its own, away from zero; no renormalization */
      k[j] = v < 0 ? (int32_t)(-0.5 + v * (1 << LANCZOS_PRECISION_BITS))
                   : (int32_t)(0.5 + v * (1 << LANCZOS_PRECISION_BITS));
    }
    a->first[i] = lo;
    a->count[i] = n;
  }
  sd_free(w);
  return SD_OK;
}

/* Pillow's clip8: acc carries the 2^21 rounding offset already. */
static inline uint8_t clip8(int32_t acc) {
  if (acc >= (1 << LANCZOS_PRECISION_BITS << 8)) return 255;
  if (acc <= 0) return 0;
  return (uint8_t)(acc >> LANCZOS_PRECISION_BITS);
}

/* PIL's MULDIV255 premultiplication (convert('RGBa')), alpha unchanged. */
static void premultiply_row(uint8_t *dst, const uint8_t *src, int width) {
  for (int x = 0; x < width; x++) {
    const uint32_t a = src[4 * x + 3];
    for (int c = 0; c < 3; c++) {
      uint32_t t = src[4 * x + c] * a + 128;
      dst[4 * x + c] = (uint8_t)((t + (t >> 8)) >> 8);
    }
    dst[4 * x + 3] = (uint8_t)a;
  }
}

/* PIL's convert('RGBA') from RGBa: alpha 0 and 255 keep the color bytes. */
static void unpremultiply_row(uint8_t *row, int width) {
  for (int x = 0; x < width; x++) {
    const uint32_t a = row[4 * x + 3];
    if (a == 0 || a == 255) continue;
    for (int c = 0; c < 3; c++) {
      uint32_t v = (255u * row[4 * x + c]) / a;
      row[4 * x + c] = (uint8_t)(v > 255 ? 255 : v);
    }
  }
}

/* One input row through the horizontal pass (or copied when the width does
 * not change). `scratch` holds a premultiplied copy for RGBA. */
static void horizontal_row(uint8_t *dst, const sd_image *in, int y,
                           const lanczos_axis *ax, int out_w, int premul,
                           uint8_t *scratch) {
  const int C = in->channels;
  const uint8_t *src = in->data + (size_t)y * in->width * C;
  if (premul) {
    premultiply_row(scratch, src, in->width);
    src = scratch;
  }
  if (!ax) {
    memcpy(dst, src, (size_t)in->width * C);
    return;
  }
  for (int x = 0; x < out_w; x++) {
    const int32_t *k = ax->k + (size_t)x * ax->ksize;
    const uint8_t *p = src + (size_t)ax->first[x] * C;
    const int n = ax->count[x];
    for (int c = 0; c < C; c++) {
      int32_t acc = 1 << (LANCZOS_PRECISION_BITS - 1);
      for (int j = 0; j < n; j++) acc += p[j * C + c] * k[j];
      dst[x * C + c] = clip8(acc);
    }
  }
}

int sd_lanczos_resize(const sd_image *in, int out_w, int out_h, sd_image *out,
                      sd_error *err) {
  memset(out, 0, sizeof *out);
  if (!in || !in->data || in->width <= 0 || in->height <= 0 ||
      (in->channels != 3 && in->channels != 4))
    return sd_fail(err, SD_ERR_ARG, "lanczos: invalid input image");
  int st = sd_image_alloc(out, out_w, out_h, in->channels, err);
  if (st) return st;
  const int C = in->channels;
  if (out_w == in->width && out_h == in->height) {
    memcpy(out->data, in->data, (size_t)out_w * out_h * C);
    return SD_OK;
  }
  const int premul = C == 4;
  const int need_h = out_w != in->width, need_v = out_h != in->height;
  lanczos_axis ax_h = {0}, ax_v = {0};
  uint8_t *band = NULL, *scratch = NULL;
  int32_t *acc = NULL;
  int nthreads = 1;
#ifdef _OPENMP
  nthreads = omp_get_max_threads();
#endif
  const size_t row_bytes = (size_t)out_w * C;
  if ((need_h && lanczos_axis_init(&ax_h, in->width, out_w)) ||
      (need_v && lanczos_axis_init(&ax_v, in->height, out_h)))
    goto oom;
  /* Largest input-row span any band needs, to size the band buffer once. */
  int band_rows = LANCZOS_BAND_ROWS < out_h ? LANCZOS_BAND_ROWS : out_h;
  int max_span = band_rows;
  if (need_v) {
    max_span = 0;
    for (int y0 = 0; y0 < out_h; y0 += band_rows) {
      int y1 = y0 + band_rows < out_h ? y0 + band_rows : out_h;
      int lo = ax_v.first[y0], hi = 0;
      for (int y = y0; y < y1; y++) {
        if (ax_v.first[y] < lo) lo = ax_v.first[y];
        if (ax_v.first[y] + ax_v.count[y] > hi)
          hi = ax_v.first[y] + ax_v.count[y];
      }
      if (hi - lo > max_span) max_span = hi - lo;
    }
  }
  band = sd_alloc((size_t)max_span * row_bytes);
  scratch = premul ? sd_alloc((size_t)nthreads * in->width * 4) : NULL;
  acc = need_v ? sd_alloc((size_t)nthreads * row_bytes * sizeof(int32_t)) : NULL;
  if (!band || (premul && !scratch) || (need_v && !acc)) goto oom;

  for (int y0 = 0; y0 < out_h; y0 += band_rows) {
    const int y1 = y0 + band_rows < out_h ? y0 + band_rows : out_h;
    int lo = y0, hi = y1;
    if (need_v) {
      lo = ax_v.first[y0];
      hi = 0;
      for (int y = y0; y < y1; y++) {
        if (ax_v.first[y] < lo) lo = ax_v.first[y];
        if (ax_v.first[y] + ax_v.count[y] > hi)
          hi = ax_v.first[y] + ax_v.count[y];
      }
    }
    /* Without a vertical pass the band rows are the output rows. */
    uint8_t *hdst = need_v ? band : out->data + (size_t)y0 * row_bytes;
#pragma omp parallel for schedule(static)
    for (int y = lo; y < hi; y++) {
      int t = 0;
#ifdef _OPENMP
      t = omp_get_thread_num();
#endif
      horizontal_row(hdst + (size_t)(y - lo) * row_bytes, in, y,
                     need_h ? &ax_h : NULL, out_w, premul,
                     premul ? scratch + (size_t)t * in->width * 4 : NULL);
    }
    if (need_v) {
#pragma omp parallel for schedule(static)
      for (int y = y0; y < y1; y++) {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        int32_t *a = acc + (size_t)t * row_bytes;
        for (size_t i = 0; i < row_bytes; i++)
          a[i] = 1 << (LANCZOS_PRECISION_BITS - 1);
        const int32_t *k = ax_v.k + (size_t)y * ax_v.ksize;
        for (int j = 0; j < ax_v.count[y]; j++) {
          const uint8_t *src = band + (size_t)(ax_v.first[y] + j - lo) * row_bytes;
          const int32_t kj = k[j];
          for (size_t i = 0; i < row_bytes; i++) a[i] += src[i] * kj;
        }
        uint8_t *dst = out->data + (size_t)y * row_bytes;
        for (size_t i = 0; i < row_bytes; i++) dst[i] = clip8(a[i]);
      }
    }
    if (premul)
      for (int y = y0; y < y1; y++)
        unpremultiply_row(out->data + (size_t)y * row_bytes, out_w);
  }
  lanczos_axis_free(&ax_h);
  lanczos_axis_free(&ax_v);
  sd_free(band);
  sd_free(scratch);
  sd_free(acc);
  return SD_OK;
oom:
  lanczos_axis_free(&ax_h);
  lanczos_axis_free(&ax_v);
  sd_free(band);
  sd_free(scratch);
  sd_free(acc);
  sd_image_free(out);
  return sd_fail(err, SD_ERR_OOM, "out of memory resizing to %dx%d", out_w,
                 out_h);
}

int sd_lanczos_upscale(const sd_image *in, int factor, sd_image *out,
                       sd_error *err) {
  if (!in || factor < 1 || factor > 16)
    return sd_fail(err, SD_ERR_ARG, "lanczos: invalid upscale factor %d",
                   factor);
  return sd_lanczos_resize(in, in->width * factor, in->height * factor, out,
                           err);
}
