/* Low-rank adapter terms applied beside a weight (the LoRA "side path").
 *
 * A weight W (linear (out, in) or convolution (out, in, kh, kw)) may carry a
 * list of terms in its `side` field; sd_linear and sd_conv2d then compute
 *   y = W x + sum_t scale_t * up_t (down_t x)
 * where down_t is applied like W itself (same kernel size, stride and
 * padding for a convolution) and up_t is a 1x1 mix of the rank channels.
 * This is PEFT's unmerged LoRA forward; merging the same terms into a copy
 * of W (W + scale * up @ down) gives the same result up to rounding.
 *
 * Shapes: down (r, in) for a linear, (r, in, kh, kw) for a convolution
 * (any shape with r * in * kh * kw elements for a 1x1 one); up (out, r)
 * (or (out, r, 1, 1)). Both are views in their stored dtype. */
#ifndef SDGEN_TENSOR_LOWRANK_H
#define SDGEN_TENSOR_LOWRANK_H

#include <stdint.h>

#include "tensor/tensor.h"

typedef struct sd_lowrank {
  sd_tensor down;  /* (r, in[, kh, kw]) */
  sd_tensor up;    /* (out, r[, 1, 1]) */
  float scale;     /* user scale * alpha / rank */
  const struct sd_lowrank *next;
} sd_lowrank;

/* Rank of a term (down's first dim). */
static inline int64_t sd_lowrank_rank(const sd_lowrank *t) { return t->down.shape[0]; }

/* y (M, N) += the terms of `side` applied to x (M, K). In plan mode only
 * the scratch is taken. Returns SD_OK or SD_ERR_OOM / SD_ERR_ARG. */
int sd_lowrank_linear(float *y, const float *x, int64_t M, int64_t K, int64_t N,
                      const sd_lowrank *side);

/* y (n, OC, OH, OW) += the terms applied to x (n, C, H, W) with the
 * convolution's geometry. */
int sd_lowrank_conv2d(float *y, const float *x, int N, int C, int H, int W, int64_t OC,
                      int OH, int OW, const sd_lowrank *side, int stride, int pad_top,
                      int pad_bottom, int pad_left, int pad_right);

/* W32 (out, in*kh*kw, F32) += scale * up @ down for every term: the merged
 * weight. W32 starts as the F32 copy of the stored weight. */
int sd_lowrank_merge(float *w32, int64_t out, int64_t cols, const sd_lowrank *side);

#endif
