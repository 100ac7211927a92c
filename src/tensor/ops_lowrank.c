/* The LoRA side path and merge (tensor/lowrank.h). */
#include "tensor/lowrank.h"

#include <string.h>

#include "tensor/ops.h"
#include "tensor/ops_internal.h"

/* up as F32 (out, r): small (out * rank floats). */
static float *up_f32(const sd_lowrank *t, int64_t out, int64_t r) {
  float *u = sd_alloc((size_t)(out * r) * 4);
  if (u && !sd_plan_active()) sd_tensor_read_f32(&t->up, 0, out * r, u);
  return u;
}

static int term_ok(const sd_lowrank *t, int64_t out, int64_t cols) {
  int64_t r = sd_lowrank_rank(t);
  return r > 0 && sd_tensor_numel(&t->up) == out * r && sd_tensor_numel(&t->down) == r * cols;
}

int sd_lowrank_linear(float *y, const float *x, int64_t M, int64_t K, int64_t N,
                      const sd_lowrank *side) {
  if (M <= 0 || N <= 0) return SD_OK;
  for (const sd_lowrank *t = side; t; t = t->next) {
    if (!term_ok(t, N, K)) return SD_ERR_ARG;
    int64_t r = sd_lowrank_rank(t);
    float *mid = sd_alloc((size_t)(M * r) * 4); /* down x: (M, r) */
    if (!mid) return SD_ERR_OOM;
    sd_tensor down = t->down;
    down.side = NULL;
    int rc = sd_linear(mid, x, M, K, &down, NULL);
    float *u = rc ? NULL : up_f32(t, N, r);
    if (!rc && !u) rc = SD_ERR_OOM;
    if (!rc) sd_gemm(0, 1, M, N, r, t->scale, mid, r, u, r, 1.0f, y, N);
    sd_free(u);
    sd_free(mid);
    if (rc) return rc;
  }
  return SD_OK;
}

int sd_lowrank_conv2d(float *y, const float *x, int N, int C, int H, int W, int64_t OC,
                      int OH, int OW, const sd_lowrank *side, int stride, int pad_top,
                      int pad_bottom, int pad_left, int pad_right) {
  int64_t P = (int64_t)OH * OW;
  if (N <= 0 || OC <= 0 || P <= 0) return SD_OK;
  for (const sd_lowrank *t = side; t; t = t->next) {
    int64_t r = sd_lowrank_rank(t);
    if (t->down.ndim != 4 || t->down.shape[1] != C || r <= 0 ||
        sd_tensor_numel(&t->up) != OC * r)
      return SD_ERR_ARG;
    float *mid = sd_alloc((size_t)(N * r * P) * 4); /* conv(x, down): (N, r, OH, OW) */
    if (!mid) return SD_ERR_OOM;
    sd_tensor down = t->down;
    down.side = NULL;
    int rc = sd_conv2d_pad4(mid, x, N, C, H, W, &down, NULL, stride, pad_top, pad_bottom,
                            pad_left, pad_right);
    float *u = rc ? NULL : up_f32(t, OC, r);
    if (!rc && !u) rc = SD_ERR_OOM;
    /* per image: y (OC, P) += scale * up (OC, r) @ mid (r, P) */
    for (int n = 0; !rc && n < N; n++)
      sd_gemm(0, 0, OC, P, r, t->scale, u, r, mid + (int64_t)n * r * P, P, 1.0f,
              y + (int64_t)n * OC * P, P);
    sd_free(u);
    sd_free(mid);
    if (rc) return rc;
  }
  return SD_OK;
}

int sd_lowrank_merge(float *w32, int64_t out, int64_t cols, const sd_lowrank *side) {
  for (const sd_lowrank *t = side; t; t = t->next) {
    if (!term_ok(t, out, cols)) return SD_ERR_ARG;
    int64_t r = sd_lowrank_rank(t);
    float *u = up_f32(t, out, r);
    float *d = sd_alloc((size_t)(r * cols) * 4);
    if (!u || !d) {
      sd_free(u);
      sd_free(d);
      return SD_ERR_OOM;
    }
    if (!sd_plan_active()) {
      sd_tensor_read_f32(&t->down, 0, r * cols, d);
      sd_gemm(0, 0, out, cols, r, t->scale, u, r, d, cols, 1.0f, w32, cols);
    }
    sd_free(u);
    sd_free(d);
  }
  return SD_OK;
}
