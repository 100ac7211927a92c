/* Activations vs double-precision formulas (including far tails), the
 * element-wise and layout helpers (exact), and the timestep embedding vs a
 * double evaluation of diffusers' get_timestep_embedding. */
#include <stdio.h>

#include "test_ops_common.h"
#include "test_util.h"
#include "tensor/ops.h"

typedef void (*act_fn)(float *, int64_t);

static double ref_act(int which, double x) {
  switch (which) {
  case 0: return x / (1 + exp(-x));
  /* 1 + erf(z) = erfc(-z) and 1 + tanh(u) = 2 / (1 + e^-2u), written so the
   * reference itself does not cancel in the negative tail */
  case 1: return 0.5 * x * erfc(-x / sqrt(2.0));
  case 2: return x / (1 + exp(-2 * sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
  case 3: return x / (1 + exp(-1.702 * x));
  case 4: return x > 0 ? x : 0;
  default: return x > 0 ? x : 0.01 * x;
  }
}

static void leaky(float *x, int64_t n) { sd_leaky_relu(x, n, 0.01f); }

static void test_activations(void) {
  static const char *names[] = {"silu", "gelu", "gelu_tanh", "quick_gelu",
                                "relu", "leaky_relu"};
  act_fn fns[] = {sd_silu, sd_gelu, sd_gelu_tanh, sd_quick_gelu, sd_relu, leaky};
  const int64_t n = 200003; /* odd, and large enough to be threaded */
  float *x = rnd_buffer(n, 3.0f), *y = sd_alloc(n * 4);
  const float specials[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 1e-8f, -1e-8f, 5.0f,
                            -5.0f, 9.0f, -9.0f, 20.0f, -20.0f, 87.0f, -87.0f,
                            100.0f, -100.0f};
  for (int i = 0; i < 16; i++) x[i] = specials[i];
  for (int f = 0; f < 6; f++) {
    memcpy(y, x, n * 4);
    fns[f](y, n);
    double num = 0, den = 0, worst = 0;
    int64_t worst_i = 0;
    for (int64_t i = 0; i < n; i++) {
      double r = ref_act(f, x[i]);
      double d = fabs(y[i] - r);
      num += d * d, den += r * r;
      /* per element: a few ulps times the condition number of evaluating
       * the formula in float (the exp/erfc argument grows like x^2 in the
       * negative tails), plus a floor: results under 1e-36 may flush to 0
       * (torch's own tanh GELU returns exactly 0 there) */
      double allowed = 3e-7 * fabs(r) * (1.0 + (double)x[i] * x[i]) + 1e-36;
      if (d / allowed > worst) worst = d / allowed, worst_i = i;
    }
    double e = sqrt(num / den);
    CHECK_MSG(e <= 2e-7 && worst <= 1.0,
              "%s: rel L2 %.3g, worst element x=%.9g got %.9g want %.9g",
              names[f], e, x[worst_i], y[worst_i], ref_act(f, x[worst_i]));
  }
  sd_free(x), sd_free(y);
}

static void test_arith(void) {
  const int64_t n = 70001;
  float *a = rnd_buffer(n, 1.0f), *b = rnd_buffer(n, 1.0f), *y = sd_alloc(n * 4);
  int ok = 1;
  poison(y, n);
  sd_add(y, a, b, n);
  for (int64_t i = 0; i < n; i++) ok &= y[i] == a[i] + b[i];
  CHECK_MSG(ok, "sd_add");
  memcpy(y, a, n * 4);
  sd_add_inplace(y, b, n);
  for (int64_t i = 0; i < n; i++) ok &= y[i] == a[i] + b[i];
  CHECK_MSG(ok, "sd_add_inplace");
  memcpy(y, a, n * 4);
  sd_mul_inplace(y, b, n);
  for (int64_t i = 0; i < n; i++) ok &= y[i] == a[i] * b[i];
  CHECK_MSG(ok, "sd_mul_inplace");
  memcpy(y, a, n * 4);
  sd_scale(y, n, 0.37f);
  for (int64_t i = 0; i < n; i++) ok &= y[i] == a[i] * 0.37f;
  CHECK_MSG(ok, "sd_scale");
  memcpy(y, a, n * 4);
  sd_axpy(y, b, n, -1.5f);
  for (int64_t i = 0; i < n; i++) ok &= fabsf(y[i] - (a[i] + -1.5f * b[i])) <= 1e-6f * (fabsf(a[i]) + 1.5f * fabsf(b[i]));
  CHECK_MSG(ok, "sd_axpy");
  int N = 2, C = 7;
  int64_t inner = n / (N * C);
  memcpy(y, a, n * 4);
  sd_add_channel_bias(y, b, N, C, inner);
  for (int64_t i = 0; i < N * C * inner; i++) ok &= y[i] == a[i] + b[i / inner];
  CHECK_MSG(ok, "sd_add_channel_bias");
  sd_free(a), sd_free(b), sd_free(y);
}

static void test_layout(void) {
  int N = 2, C = 37, H = 9, W = 11;
  int64_t HW = (int64_t)H * W, n = (int64_t)N * C * HW;
  float *x = rnd_buffer(n, 1.0f), *t = sd_alloc(n * 4), *back = sd_alloc(n * 4);
  poison(t, n), poison(back, n);
  sd_nchw_to_nhwc(t, x, N, C, HW);
  int ok = 1;
  for (int b = 0; b < N; b++)
    for (int c = 0; c < C; c++)
      for (int64_t p = 0; p < HW; p++)
        ok &= t[(b * HW + p) * C + c] == x[(b * C + c) * HW + p];
  CHECK_MSG(ok, "nchw_to_nhwc");
  sd_nhwc_to_nchw(back, t, N, C, HW);
  CHECK_MSG(memcmp(back, x, n * 4) == 0, "nhwc_to_nchw round trip");

  float *up = sd_alloc(n * 4 * 4);
  poison(up, n * 4);
  sd_upsample_nearest2x(up, x, N, C, H, W);
  ok = 1;
  for (int64_t p = 0; p < (int64_t)N * C; p++)
    for (int h = 0; h < 2 * H; h++)
      for (int w = 0; w < 2 * W; w++)
        ok &= up[(p * 2 * H + h) * 2 * W + w] == x[(p * H + h / 2) * W + w / 2];
  CHECK_MSG(ok, "upsample_nearest2x");

  int Ca = 5, Cb = 3;
  float *a = rnd_buffer((int64_t)N * Ca * HW, 1.0f), *b = rnd_buffer((int64_t)N * Cb * HW, 1.0f);
  float *cat = sd_alloc((size_t)N * (Ca + Cb) * HW * 4);
  poison(cat, (int64_t)N * (Ca + Cb) * HW);
  sd_concat_channels(cat, a, Ca, b, Cb, N, HW);
  ok = 1;
  for (int bb = 0; bb < N; bb++)
    for (int c = 0; c < Ca + Cb; c++)
      for (int64_t p = 0; p < HW; p++)
        ok &= cat[((int64_t)bb * (Ca + Cb) + c) * HW + p] ==
              (c < Ca ? a[((int64_t)bb * Ca + c) * HW + p]
                      : b[((int64_t)bb * Cb + c - Ca) * HW + p]);
  CHECK_MSG(ok, "concat_channels");
  sd_free(x), sd_free(t), sd_free(back), sd_free(up), sd_free(a), sd_free(b), sd_free(cat);
}

static void check_timestep(int dim, int flip, float shift, float scale) {
  const float t[3] = {0.0f, 1.0f, 999.0f};
  float *out = sd_alloc((size_t)3 * dim * 4);
  poison(out, 3 * dim);
  sd_timestep_embedding(out, t, 3, dim, flip, shift, scale, 10000.0f);
  int half = dim / 2;
  double worst = 0;
  for (int r = 0; r < 3; r++)
    for (int i = 0; i < half; i++) {
      double arg = scale * t[r] * exp(-log(10000.0) * i / (half - shift));
      double s = sin(arg), c = cos(arg);
      double first = flip ? c : s, second = flip ? s : c;
      /* float evaluation of an argument up to ~1000 is off by ~1e-4 */
      double tol = 2e-7 + 4e-7 * fabs(arg);
      double e1 = fabs(out[r * dim + i] - first) / tol;
      double e2 = fabs(out[r * dim + half + i] - second) / tol;
      if (e1 > worst) worst = e1;
      if (e2 > worst) worst = e2;
    }
  int pad_ok = dim % 2 == 0 || out[dim - 1] == 0.0f;
  CHECK_MSG(worst <= 1.0 && pad_ok && !has_nan(out, 3 * dim),
            "timestep_embedding dim=%d flip=%d shift=%g: worst/tol %.3g pad %d",
            dim, flip, shift, worst, pad_ok);
  sd_free(out);
}

/* NaN must survive every activation (the pipeline's NaN check relies on it). */
static void test_nan_propagation(void) {
  act_fn fns[] = {sd_silu, sd_gelu, sd_gelu_tanh, sd_quick_gelu};
  for (int f = 0; f < 4; f++) {
    float v[37];
    for (int i = 0; i < 37; i++) v[i] = (float)i - 18.0f;
    v[5] = NAN;
    v[30] = NAN;
    fns[f](v, 37);
    CHECK_MSG(v[5] != v[5] && v[30] != v[30] && !has_nan(v, 5),
              "activation %d lost a NaN", f);
  }
}

static void test_geglu(void) {
  const int64_t rows = 37, inner = 301;
  for (int inplace = 0; inplace < 2; inplace++) {
    float *x = rnd_buffer(rows * 2 * inner, 2.0f), *orig = sd_alloc(rows * 2 * inner * 4);
    memcpy(orig, x, rows * 2 * inner * 4);
    float *y = inplace ? x : sd_alloc(rows * inner * 4);
    if (!inplace) poison(y, rows * inner);
    sd_geglu(y, x, rows, inner);
    double num = 0, den = 0;
    for (int64_t r = 0; r < rows; r++)
      for (int64_t i = 0; i < inner; i++) {
        double v = orig[r * 2 * inner + i], g = orig[r * 2 * inner + inner + i];
        double ref = v * ref_act(1, g), d = y[r * inner + i] - ref;
        num += d * d, den += ref * ref;
      }
    double e = sqrt(num / den);
    CHECK_MSG(e <= 2e-7 && !has_nan(y, rows * inner), "geglu inplace=%d: %.3g",
              inplace, e);
    if (!inplace) sd_free(y);
    sd_free(x), sd_free(orig);
  }
}

int main(void) {
  test_geglu();
  test_nan_propagation();
  test_activations();
  test_arith();
  test_layout();
  check_timestep(320, 1, 0.0f, 1.0f);   /* SD 1.5 / SDXL UNet */
  check_timestep(256, 1, 0.0f, 1.0f);   /* SD3 */
  check_timestep(33, 0, 1.0f, 2.0f);    /* odd dim, default shift */
  return test_finish();
}
