/* Group, layer and RMS norm vs double-precision references (relative L2
 * <= 1e-6), with offsets and scales that punish one-pass float variance,
 * parameters in every dtype, and in-place use. */
#include <stdio.h>

#include "test_ops_common.h"
#include "test_util.h"
#include "tensor/ops.h"

#define NORM_TOL 1e-6

static double rel_l2_d(const float *a, const double *ref, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = a[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Normalizes `count` values at x (stride 1) into ref with the given
 * per-element gamma/beta lookups folded in by the caller. */
static void ref_stats(const float *x, int64_t count, double *mean, double *var) {
  double s = 0, q = 0;
  for (int64_t i = 0; i < count; i++) s += x[i];
  *mean = s / count;
  for (int64_t i = 0; i < count; i++) q += (x[i] - *mean) * (x[i] - *mean);
  *var = q / count;
}

static void test_group_norm(void) {
  for (int it = 0; it < 12; it++) {
    int groups = rnd_int(1, 5), N = rnd_int(1, 2);
    int C = groups * rnd_int(1, 4);
    int64_t HW = rnd_int(1, 150);
    if (it == 0) groups = 32, C = 64, HW = 4096 + 7; /* SD-like, big offset */
    int64_t n = (int64_t)N * C * HW;
    float offset = it % 2 ? 100.0f : 0.5f;
    float *x = rnd_buffer(n, 3.0f);
    for (int64_t i = 0; i < n; i++) x[i] += offset;
    float *g = rnd_buffer(C, 1.0f), *b = rnd_buffer(C, 1.0f);
    sd_dtype dt = k_weight_dtypes[it % 3];
    int affine = it % 4 != 3;
    sd_tensor *G = affine ? make_weight(dt, 1, (int64_t[]){C}, g) : NULL;
    sd_tensor *B = affine ? make_weight(dt, 1, (int64_t[]){C}, b) : NULL;
    double *ref = sd_alloc((size_t)n * 8);
    int cpg = C / groups;
    for (int nn = 0; nn < N; nn++)
      for (int gr = 0; gr < groups; gr++) {
        int64_t off = ((int64_t)nn * C + gr * cpg) * HW;
        double mean, var;
        ref_stats(x + off, cpg * HW, &mean, &var);
        double rstd = 1.0 / sqrt(var + 1e-5);
        for (int c = 0; c < cpg; c++)
          for (int64_t i = 0; i < HW; i++) {
            int ch = gr * cpg + c;
            double v = (x[off + c * HW + i] - mean) * rstd;
            ref[off + c * HW + i] = affine ? v * g[ch] + b[ch] : v;
          }
      }
    float *y = sd_alloc((size_t)n * 4);
    int inplace = it % 3 == 2;
    if (!inplace) poison(y, n);
    else memcpy(y, x, (size_t)n * 4);
    sd_group_norm(y, inplace ? y : x, N, C, HW, groups, G, B, 1e-5f);
    double e = rel_l2_d(y, ref, n);
    CHECK_MSG(!has_nan(y, n) && e <= NORM_TOL,
              "group_norm N=%d C=%d HW=%lld G=%d %s inplace=%d err=%.3g", N, C,
              (long long)HW, groups, sd_dtype_name(dt), inplace, e);
    sd_free(x), sd_free(g), sd_free(b), sd_free(ref), sd_free(y);
    sd_tensor_free(G), sd_tensor_free(B);
  }
}

static void test_layer_rms_norm(int rms) {
  for (int it = 0; it < 12; it++) {
    int64_t rows = rnd_int(1, 40), dim = rnd_int(1, 300);
    if (it == 0) rows = 77, dim = 768;
    if (it == 1) dim = 1031; /* more than one stack block of parameters */
    int64_t n = rows * dim;
    float *x = rnd_buffer(n, 2.0f);
    if (!rms)
      for (int64_t i = 0; i < n; i++) x[i] += 50.0f;
    float *g = rnd_buffer(dim, 1.0f), *b = rnd_buffer(dim, 1.0f);
    sd_dtype dt = k_weight_dtypes[it % 3];
    int with_g = it % 4 != 3, with_b = !rms && it % 4 != 2;
    sd_tensor *G = with_g ? make_weight(dt, 1, (int64_t[]){dim}, g) : NULL;
    sd_tensor *B = with_b ? make_weight(dt, 1, (int64_t[]){dim}, b) : NULL;
    double *ref = sd_alloc((size_t)n * 8);
    float eps = rms ? 1e-6f : 1e-5f;
    for (int64_t r = 0; r < rows; r++) {
      const float *xr = x + r * dim;
      double mean = 0, var;
      if (rms) {
        double q = 0;
        for (int64_t i = 0; i < dim; i++) q += (double)xr[i] * xr[i];
        var = q / dim;
      } else {
        ref_stats(xr, dim, &mean, &var);
      }
      double rstd = 1.0 / sqrt(var + eps);
      for (int64_t i = 0; i < dim; i++) {
        double v = (xr[i] - mean) * rstd;
        if (with_g) v *= g[i];
        if (with_b) v += b[i];
        ref[r * dim + i] = v;
      }
    }
    float *y = sd_alloc((size_t)n * 4);
    int inplace = it % 3 == 1;
    if (!inplace) poison(y, n);
    else memcpy(y, x, (size_t)n * 4);
    if (rms) sd_rms_norm(y, inplace ? y : x, rows, dim, G, eps);
    else sd_layer_norm(y, inplace ? y : x, rows, dim, G, B, eps);
    double e = rel_l2_d(y, ref, n);
    CHECK_MSG(!has_nan(y, n) && e <= NORM_TOL,
              "%s rows=%lld dim=%lld %s g=%d b=%d inplace=%d err=%.3g",
              rms ? "rms_norm" : "layer_norm", (long long)rows, (long long)dim,
              sd_dtype_name(dt), with_g, with_b, inplace, e);
    sd_free(x), sd_free(g), sd_free(b), sd_free(ref), sd_free(y);
    sd_tensor_free(G), sd_tensor_free(B);
  }
}

int main(void) {
  test_group_norm();
  test_layer_rms_norm(0);
  test_layer_rms_norm(1);
  return test_finish();
}
