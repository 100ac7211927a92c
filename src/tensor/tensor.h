/* The tensor type.
 *
 * A tensor is a dense, row-major (C-contiguous) block with up to 6 dims.
 * Two kinds exist:
 *  - views (owns_data == 0): weights pointing into a mapped file, in their
 *    stored dtype (F32/F16/BF16); never converted as a whole.
 *  - owned activations (owns_data == 1): F32 buffers from sd_alloc.
 * Shapes are int64 and listed outermost first, as in torch (NCHW for images,
 * (out, in) for linear weights, (out, in, kh, kw) for conv weights). */
#ifndef SDGEN_TENSOR_TENSOR_H
#define SDGEN_TENSOR_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#define SD_MAX_DIMS 6

typedef enum sd_dtype {
  SD_F32 = 0,
  SD_F16,
  SD_BF16,
  SD_F64,
  SD_I64,
  SD_I32,
  SD_I16,
  SD_I8,
  SD_U8,
  SD_BOOL,
  SD_DTYPE_COUNT
} sd_dtype;

struct sd_lowrank;

typedef struct sd_tensor {
  sd_dtype dtype;
  int ndim;
  int64_t shape[SD_MAX_DIMS];
  void *data;
  int owns_data; /* 1: data came from sd_alloc and is freed with the tensor;
                    2: heap data owned by a weight set (a transposed copy) */
  /* Low-rank adapters applied beside this weight (LoRA side path, see
   * tensor/lowrank.h): sd_linear and sd_conv2d add s * up(down(x)) for each
   * term of the list. NULL for plain weights. Not owned. */
  const struct sd_lowrank *side;
} sd_tensor;

/* Bytes per element; 0 for an unknown dtype. */
size_t sd_dtype_size(sd_dtype t);
/* "F32", "F16", "BF16", ... as safetensors spells them. */
const char *sd_dtype_name(sd_dtype t);
/* Parses a safetensors dtype name; returns -1 if unknown. */
int sd_dtype_from_name(const char *name);

int64_t sd_tensor_numel(const sd_tensor *t);
size_t sd_tensor_nbytes(const sd_tensor *t);
/* Total bytes of n tensors; NULL entries (optional weights) count 0. */
int64_t sd_tensors_nbytes(const sd_tensor *const *t, int n);

/* Allocates an owned F32 tensor (uninitialized) of the given shape. Returns
 * NULL on allocation failure or invalid shape. Free with sd_tensor_free. */
sd_tensor *sd_tensor_new(int ndim, const int64_t *shape);
/* Same, zero-filled. */
sd_tensor *sd_tensor_zeros(int ndim, const int64_t *shape);
/* Owned tensor of any dtype. */
sd_tensor *sd_tensor_new_dtype(sd_dtype dtype, int ndim, const int64_t *shape);
/* Convenience constructors for common ranks (F32, uninitialized). */
sd_tensor *sd_tensor_new1(int64_t a);
sd_tensor *sd_tensor_new2(int64_t a, int64_t b);
sd_tensor *sd_tensor_new3(int64_t a, int64_t b, int64_t c);
sd_tensor *sd_tensor_new4(int64_t a, int64_t b, int64_t c, int64_t d);
/* Owned F32 copy of any tensor (converting F16/BF16/F64 to F32). */
sd_tensor *sd_tensor_to_f32(const sd_tensor *t);
/* Owned copy (same dtype). */
sd_tensor *sd_tensor_clone(const sd_tensor *t);

/* Frees the tensor struct and, when owned, its data. NULL is ignored. */
void sd_tensor_free(sd_tensor *t);

/* Reinterprets the shape in place (same numel required; returns 0 on success,
 * -1 on mismatch). */
int sd_tensor_reshape(sd_tensor *t, int ndim, const int64_t *shape);

/* 1 if shapes are identical. */
int sd_tensor_same_shape(const sd_tensor *a, const sd_tensor *b);
/* Writes "[2, 4, 64, 64]" into buf. */
const char *sd_tensor_shape_str(const sd_tensor *t, char *buf, size_t n);

/* Scalar conversions. */
float sd_f16_to_f32(uint16_t h);
uint16_t sd_f32_to_f16(float f);
float sd_bf16_to_f32(uint16_t h);
uint16_t sd_f32_to_bf16(float f); /* round to nearest even */

/* Converts `count` elements starting at element `offset` of t (F32, F16,
 * BF16 or F64) into dst as F32. This is how kernels read weights panel by
 * panel without ever holding a full F32 copy. */
void sd_tensor_read_f32(const sd_tensor *t, int64_t offset, int64_t count,
                        float *dst);

/* Element pointer helpers for F32 tensors. */
static inline float *sd_f32(const sd_tensor *t) { return (float *)t->data; }

#endif
