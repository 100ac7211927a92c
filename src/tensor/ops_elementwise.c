/* Activations, element-wise arithmetic, layout changes, resampling and the
 * sinusoidal timestep embedding.
 *
 * The transcendental activations use the inline exp/erfc of ops_internal.h
 * so that each loop vectorizes (AVX-512 / AVX2 clones chosen at run time).
 * Sigmoid forms are written as x / (1 + e^-u), which has no cancellation for
 * any sign of u; the tanh GELU uses 0.5(1+tanh(u)) = sigmoid(2u). */
#include <math.h>

#include "base/alloc.h"
#include "tensor/ops.h"
#include "tensor/ops_internal.h"
#include "tensor/profile.h"

/* Element-wise loops are memory-bound: thread only when worth it. */
#define PAR_MIN ((int64_t)1 << 16)
#define NT(n) ((n) >= PAR_MIN ? sd_threads_internal() : 1)
/* Each thread handles one contiguous block (so the inner loop vectorizes). */
#define BLOCKED_LOOP(n, body_fn, ...)                                    \
  do {                                                                   \
    int nt_ = NT(n);                                                     \
    int64_t chunk_ = (((n) + nt_ - 1) / nt_ + 15) & ~(int64_t)15;        \
    _Pragma("omp parallel for num_threads(nt_) schedule(static)")        \
    for (int t_ = 0; t_ < nt_; t_++) {                                   \
      int64_t s_ = (int64_t)t_ * chunk_;                                 \
      int64_t e_ = s_ + chunk_ < (n) ? s_ + chunk_ : (n);                \
      if (s_ < e_) body_fn(s_, e_, __VA_ARGS__);                         \
    }                                                                    \
  } while (0)

SD_VEC_CLONES
static void silu_range(int64_t s, int64_t e, float *x) {
#pragma omp simd
  for (int64_t i = s; i < e; i++) x[i] = x[i] / (1.0f + sd_expf_inline(-x[i]));
}
void sd_silu(float *x, int64_t n) { if (sd_plan_active()) return; SD_PROFILE_OP(SD_OPC_ELEMENTWISE, 0, 8.0 * n); BLOCKED_LOOP(n, silu_range, x); }

SD_VEC_CLONES
static void gelu_range(int64_t s, int64_t e, float *x) {
#pragma omp simd
  for (int64_t i = s; i < e; i++) {
    float v = x[i];
    x[i] = 0.5f * v * sd_one_plus_erf_inline(v * 0.70710678118654752f);
  }
}
void sd_gelu(float *x, int64_t n) { if (sd_plan_active()) return; SD_PROFILE_OP(SD_OPC_ELEMENTWISE, 0, 8.0 * n); BLOCKED_LOOP(n, gelu_range, x); }

SD_VEC_CLONES
static void gelu_tanh_range(int64_t s, int64_t e, float *x) {
#pragma omp simd
  for (int64_t i = s; i < e; i++) {
    float v = x[i];
    float u = 0.79788456080286536f * (v + 0.044715f * v * v * v);
    x[i] = v / (1.0f + sd_expf_inline(-2.0f * u));
  }
}
void sd_gelu_tanh(float *x, int64_t n) { if (sd_plan_active()) return; SD_PROFILE_OP(SD_OPC_ELEMENTWISE, 0, 8.0 * n); BLOCKED_LOOP(n, gelu_tanh_range, x); }

SD_VEC_CLONES
static void quick_gelu_range(int64_t s, int64_t e, float *x) {
#pragma omp simd
  for (int64_t i = s; i < e; i++)
    x[i] = x[i] / (1.0f + sd_expf_inline(-1.702f * x[i]));
}
void sd_quick_gelu(float *x, int64_t n) { if (sd_plan_active()) return; SD_PROFILE_OP(SD_OPC_ELEMENTWISE, 0, 8.0 * n); BLOCKED_LOOP(n, quick_gelu_range, x); }

SD_VEC_CLONES
static void relu_range(int64_t s, int64_t e, float *x) {
#pragma omp simd
  for (int64_t i = s; i < e; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}
void sd_relu(float *x, int64_t n) { if (sd_plan_active()) return; SD_PROFILE_OP(SD_OPC_ELEMENTWISE, 0, 8.0 * n); BLOCKED_LOOP(n, relu_range, x); }

SD_VEC_CLONES
static void leaky_relu_range(int64_t s, int64_t e, float *x, float slope) {
#pragma omp simd
  for (int64_t i = s; i < e; i++) x[i] = x[i] > 0.0f ? x[i] : x[i] * slope;
}
void sd_leaky_relu(float *x, int64_t n, float slope) { if (sd_plan_active()) return;
  SD_PROFILE_OP(SD_OPC_ELEMENTWISE, 0, 8.0 * n);
  BLOCKED_LOOP(n, leaky_relu_range, x, slope);
}

SD_VEC_CLONES
static void add_range(int64_t s, int64_t e, float *y, const float *a,
                      const float *b) {
#pragma omp simd
  for (int64_t i = s; i < e; i++) y[i] = a[i] + b[i];
}
void sd_add(float *y, const float *a, const float *b, int64_t n) { if (sd_plan_active()) return;
  SD_PROFILE_OP(SD_OPC_ELEMENTWISE, 0, 12.0 * n);
  BLOCKED_LOOP(n, add_range, y, a, b);
}

void sd_add_inplace(float *y, const float *x, int64_t n) { if (sd_plan_active()) return;
  SD_PROFILE_OP(SD_OPC_ELEMENTWISE, 0, 12.0 * n);
  BLOCKED_LOOP(n, add_range, y, y, x);
}

SD_VEC_CLONES
static void mul_range(int64_t s, int64_t e, float *y, const float *x) {
#pragma omp simd
  for (int64_t i = s; i < e; i++) y[i] *= x[i];
}
void sd_mul_inplace(float *y, const float *x, int64_t n) { if (sd_plan_active()) return;
  SD_PROFILE_OP(SD_OPC_ELEMENTWISE, 0, 12.0 * n);
  BLOCKED_LOOP(n, mul_range, y, x);
}

SD_VEC_CLONES
static void scale_range(int64_t s, int64_t e, float *x, float f) {
#pragma omp simd
  for (int64_t i = s; i < e; i++) x[i] *= f;
}
void sd_scale(float *x, int64_t n, float s) { if (sd_plan_active()) return; SD_PROFILE_OP(SD_OPC_ELEMENTWISE, 0, 8.0 * n); BLOCKED_LOOP(n, scale_range, x, s); }

SD_VEC_CLONES
static void axpy_range(int64_t s, int64_t e, float *y, const float *x, float f) {
#pragma omp simd
  for (int64_t i = s; i < e; i++) y[i] += f * x[i];
}
void sd_axpy(float *y, const float *x, int64_t n, float s) { if (sd_plan_active()) return;
  SD_PROFILE_OP(SD_OPC_ELEMENTWISE, 0, 12.0 * n);
  BLOCKED_LOOP(n, axpy_range, y, x, s);
}

SD_VEC_CLONES
static void add_scalar(float *y, int64_t n, float v) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) y[i] += v;
}

void sd_add_channel_bias(float *y, const float *v, int N, int C, int64_t inner) { if (sd_plan_active()) return;
  SD_PROFILE_OP(SD_OPC_ELEMENTWISE, 0, 8.0 * N * C * (double)inner + 4.0 * N * C);
  int64_t rows = (int64_t)N * C;
  int nt = NT(rows * inner);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < rows; r++) add_scalar(y + r * inner, inner, v[r]);
}

/* Transposes a (rows, cols) block of src (leading dim lds) into dst (ld ldd):
 * dst[j, i] = src[i, j]. 32x32 tiles keep both sides in L1. */
static void transpose_tile(float *dst, int64_t ldd, const float *src,
                           int64_t lds, int64_t rows, int64_t cols) {
  for (int64_t i = 0; i < rows; i++)
    for (int64_t j = 0; j < cols; j++) dst[j * ldd + i] = src[i * lds + j];
}

static void transpose_batched(float *y, const float *x, int N, int64_t R,
                              int64_t Cn) {
  const int64_t T = 32;
  int64_t tr = (R + T - 1) / T, tc = (Cn + T - 1) / T;
  int64_t tiles = (int64_t)N * tr * tc;
  int nt = NT((int64_t)N * R * Cn);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < tiles; t++) {
    int64_t n = t / (tr * tc), rem = t % (tr * tc);
    int64_t i0 = rem / tc * T, j0 = rem % tc * T;
    int64_t rows = R - i0 < T ? R - i0 : T, cols = Cn - j0 < T ? Cn - j0 : T;
    const float *src = x + n * R * Cn + i0 * Cn + j0;
    float *dst = y + n * R * Cn + j0 * R + i0;
    transpose_tile(dst, R, src, Cn, rows, cols);
  }
}

void sd_nchw_to_nhwc(float *y, const float *x, int N, int C, int64_t HW) { if (sd_plan_active()) return;
  SD_PROFILE_OP(SD_OPC_DATA, 0, 8.0 * N * C * (double)HW);
  transpose_batched(y, x, N, C, HW);
}

void sd_nhwc_to_nchw(float *y, const float *x, int N, int C, int64_t HW) { if (sd_plan_active()) return;
  SD_PROFILE_OP(SD_OPC_DATA, 0, 8.0 * N * C * (double)HW);
  transpose_batched(y, x, N, HW, C);
}

void sd_upsample_nearest2x(float *y, const float *x, int N, int C, int H,
                           int W) { if (sd_plan_active()) return;
  SD_PROFILE_OP(SD_OPC_DATA, 0, 20.0 * N * C * (double)H * W);
  int64_t planes = (int64_t)N * C;
  int nt = NT(planes * H * W * 4);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t p = 0; p < planes; p++) {
    const float *xp = x + p * H * W;
    float *yp = y + p * 4 * H * W;
    for (int h = 0; h < H; h++) {
      float *row = yp + (int64_t)(2 * h) * 2 * W;
      const float *src = xp + (int64_t)h * W;
      for (int w = 0; w < W; w++) row[2 * w] = row[2 * w + 1] = src[w];
      memcpy(row + 2 * W, row, (size_t)W * 2 * 4);
    }
  }
}

void sd_concat_channels(float *y, const float *a, int Ca, const float *b,
                        int Cb, int N, int64_t HW) { if (sd_plan_active()) return;
  SD_PROFILE_OP(SD_OPC_DATA, 0, 8.0 * N * (double)(Ca + Cb) * HW);
  for (int n = 0; n < N; n++) {
    float *yn = y + (int64_t)n * (Ca + Cb) * HW;
    memcpy(yn, a + (int64_t)n * Ca * HW, (size_t)(Ca * HW) * 4);
    memcpy(yn + Ca * HW, b + (int64_t)n * Cb * HW, (size_t)(Cb * HW) * 4);
  }
}

/* Mirrors diffusers' get_timestep_embedding step by step in float32 (the
 * dtype torch uses there), so rounding matches closely: exponent_i =
 * -ln(max_period) * i / (half - shift); arg = scale * t * exp(exponent);
 * [sin | cos], swapped to [cos | sin] by flip_sin_to_cos, odd dim padded
 * with one zero. Not a hot loop (n * dim values once per step). */
void sd_timestep_embedding(float *out, const float *t, int n, int dim,
                           int flip_sin_to_cos, float downscale_freq_shift,
                           float scale, float max_period) { if (sd_plan_active()) return;
  SD_PROFILE_OP(SD_OPC_ELEMENTWISE, 0, 4.0 * n + 4.0 * n * (double)dim);
  int half = dim / 2;
  float neg_log = (float)-log((double)max_period);
  float denom = (float)half - downscale_freq_shift;
  for (int r = 0; r < n; r++) {
    float *o = out + (int64_t)r * dim;
    for (int i = 0; i < half; i++) {
      float exponent = neg_log * (float)i / denom;
      float arg = t[r] * expf(exponent);
      arg = scale * arg;
      float s = sinf(arg), c = cosf(arg);
      o[i] = flip_sin_to_cos ? c : s;
      o[half + i] = flip_sin_to_cos ? s : c;
    }
    if (dim % 2) o[dim - 1] = 0.0f;
  }
}
