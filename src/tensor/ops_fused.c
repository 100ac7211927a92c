/* Small fused element-wise kernels used by the models. */
#include "base/alloc.h"
#include "tensor/ops.h"
#include "tensor/ops_internal.h"
#include "tensor/profile.h"

/* dst[i] = val[i] * gelu(gate[i]) (exact erf GELU, as sd_gelu). dst may be
 * val itself. */
SD_VEC_CLONES
static void geglu_row(float *dst, const float *val, const float *gate,
                      int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) {
    float g = gate[i];
    float gelu = 0.5f * g * sd_one_plus_erf_inline(g * 0.70710678118654752f);
    dst[i] = val[i] * gelu;
  }
}

void sd_geglu(float *y, float *x, int64_t rows, int64_t inner) {
  if (sd_plan_active()) return;
  SD_PROFILE_OP(SD_OPC_ELEMENTWISE, 0, 12.0 * rows * (double)inner);
  int nt = rows * inner >= ((int64_t)1 << 15) ? sd_threads_internal() : 1;
  if (y != x) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
      float *val = x + r * 2 * inner;
      geglu_row(y + r * inner, val, val + inner, inner);
    }
    return;
  }
  /* In place: each row's product first overwrites its own value half (rows
   * are independent, so this runs in parallel), then rows are compacted in
   * order. Row r's destination ends at (r + 1) * inner <= 2 * r * inner +
   * inner, inside rows already moved, so the sequential pass is safe. */
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    float *val = x + r * 2 * inner;
    geglu_row(val, val, val + inner, inner);
  }
  for (int64_t r = 1; r < rows; r++)
    memmove(y + r * inner, x + r * 2 * inner, (size_t)inner * 4);
}
