#include "tensor/tensor.h"
#include "tensor/lowrank.h"

#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "tensor/convert.h"

static const struct {
  const char *name;
  size_t size;
} k_dtypes[SD_DTYPE_COUNT] = {
    [SD_F32] = {"F32", 4}, [SD_F16] = {"F16", 2},  [SD_BF16] = {"BF16", 2},
    [SD_F64] = {"F64", 8}, [SD_I64] = {"I64", 8},  [SD_I32] = {"I32", 4},
    [SD_I16] = {"I16", 2}, [SD_I8] = {"I8", 1},    [SD_U8] = {"U8", 1},
    [SD_BOOL] = {"BOOL", 1},
};

size_t sd_dtype_size(sd_dtype t) {
  return (unsigned)t < SD_DTYPE_COUNT ? k_dtypes[t].size : 0;
}

const char *sd_dtype_name(sd_dtype t) {
  return (unsigned)t < SD_DTYPE_COUNT ? k_dtypes[t].name : "?";
}

int sd_dtype_from_name(const char *name) {
  for (int i = 0; i < SD_DTYPE_COUNT; i++)
    if (strcmp(name, k_dtypes[i].name) == 0) return i;
  return -1;
}

int64_t sd_tensor_numel(const sd_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
  return n;
}

size_t sd_tensor_nbytes(const sd_tensor *t) {
  return (size_t)sd_tensor_numel(t) * sd_dtype_size(t->dtype);
}

int64_t sd_tensors_nbytes(const sd_tensor *const *t, int n) {
  int64_t b = 0;
  for (int i = 0; i < n; i++) {
    if (!t[i]) continue;
    b += (int64_t)sd_tensor_nbytes(t[i]);
    /* a LoRA side path is resident with its weight */
    for (const sd_lowrank *s = t[i]->side; s; s = s->next)
      b += (int64_t)(sd_tensor_nbytes(&s->down) + sd_tensor_nbytes(&s->up));
  }
  return b;
}

sd_tensor *sd_tensor_new_dtype(sd_dtype dtype, int ndim, const int64_t *shape) {
  if (ndim < 0 || ndim > SD_MAX_DIMS || (unsigned)dtype >= SD_DTYPE_COUNT)
    return NULL;
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0 || (shape[i] && n > INT64_MAX / 16 / shape[i])) return NULL;
    n *= shape[i];
  }
  sd_tensor *t = sd_alloc(sizeof *t);
  if (!t) return NULL;
  memset(t, 0, sizeof *t);
  t->dtype = dtype;
  t->ndim = ndim;
  for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
  t->data = sd_alloc((size_t)n * sd_dtype_size(dtype));
  if (!t->data) {
    sd_free(t);
    return NULL;
  }
  t->owns_data = 1;
  return t;
}

sd_tensor *sd_tensor_new(int ndim, const int64_t *shape) {
  return sd_tensor_new_dtype(SD_F32, ndim, shape);
}

sd_tensor *sd_tensor_zeros(int ndim, const int64_t *shape) {
  sd_tensor *t = sd_tensor_new(ndim, shape);
  if (t) memset(t->data, 0, sd_tensor_nbytes(t));
  return t;
}

sd_tensor *sd_tensor_new1(int64_t a) { return sd_tensor_new(1, (int64_t[]){a}); }
sd_tensor *sd_tensor_new2(int64_t a, int64_t b) {
  return sd_tensor_new(2, (int64_t[]){a, b});
}
sd_tensor *sd_tensor_new3(int64_t a, int64_t b, int64_t c) {
  return sd_tensor_new(3, (int64_t[]){a, b, c});
}
sd_tensor *sd_tensor_new4(int64_t a, int64_t b, int64_t c, int64_t d) {
  return sd_tensor_new(4, (int64_t[]){a, b, c, d});
}

sd_tensor *sd_tensor_to_f32(const sd_tensor *t) {
  sd_tensor *o = sd_tensor_new(t->ndim, t->shape);
  if (o) sd_tensor_read_f32(t, 0, sd_tensor_numel(t), o->data);
  return o;
}

sd_tensor *sd_tensor_clone(const sd_tensor *t) {
  sd_tensor *o = sd_tensor_new_dtype(t->dtype, t->ndim, t->shape);
  if (o) memcpy(o->data, t->data, sd_tensor_nbytes(t));
  return o;
}

void sd_tensor_free(sd_tensor *t) {
  if (!t) return;
  if (t->owns_data) sd_free(t->data);
  sd_free(t);
}

int sd_tensor_reshape(sd_tensor *t, int ndim, const int64_t *shape) {
  int64_t n = 1;
  if (ndim < 0 || ndim > SD_MAX_DIMS) return -1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  if (n != sd_tensor_numel(t)) return -1;
  t->ndim = ndim;
  for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
  return 0;
}

int sd_tensor_same_shape(const sd_tensor *a, const sd_tensor *b) {
  if (a->ndim != b->ndim) return 0;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i]) return 0;
  return 1;
}

const char *sd_tensor_shape_str(const sd_tensor *t, char *buf, size_t n) {
  size_t used = 0;
  used += (size_t)snprintf(buf, n, "[");
  for (int i = 0; i < t->ndim && used < n; i++)
    used += (size_t)snprintf(buf + used, n - used, "%s%lld", i ? ", " : "",
                             (long long)t->shape[i]);
  if (used < n) snprintf(buf + used, n - used, "]");
  return buf;
}

float sd_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else { /* subnormal: normalize */
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) {
        mant <<= 1;
        exp--;
      }
      mant &= 0x3ff;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

uint16_t sd_f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  int32_t exp = (int32_t)((x >> 23) & 0xff);
  uint32_t mant = x & 0x7fffff;
  if (exp == 255) return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
  int32_t e = exp - 127 + 15;
  if (e >= 31) return (uint16_t)(sign | 0x7c00);
  if (e <= 0) {
    if (e < -10) return (uint16_t)sign;
    mant |= 0x800000;
    uint32_t shift = (uint32_t)(14 - e);
    uint32_t half = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) half++;
    return (uint16_t)(sign | half);
  }
  uint32_t h = sign | ((uint32_t)e << 10) | (mant >> 13);
  uint32_t rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
  return (uint16_t)h;
}

float sd_bf16_to_f32(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

uint16_t sd_f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40);
  x += 0x7fff + ((x >> 16) & 1);
  return (uint16_t)(x >> 16);
}

void sd_tensor_read_f32(const sd_tensor *t, int64_t offset, int64_t count,
                        float *dst) {
  switch (t->dtype) {
  case SD_F32:
    memcpy(dst, (const float *)t->data + offset, (size_t)count * 4);
    break;
  case SD_F16:
    sd_convert_f16_to_f32(dst, (const uint16_t *)t->data + offset, count);
    break;
  case SD_BF16:
    sd_convert_bf16_to_f32(dst, (const uint16_t *)t->data + offset, count);
    break;
  case SD_F64: { /* mapped data may be unaligned: copy each value out */
    const unsigned char *s = (const unsigned char *)t->data + offset * 8;
    for (int64_t i = 0; i < count; i++) {
      double v;
      memcpy(&v, s + 8 * i, 8);
      dst[i] = (float)v;
    }
    break;
  }
  default:
    for (int64_t i = 0; i < count; i++) dst[i] = 0.0f;
    break;
  }
}
