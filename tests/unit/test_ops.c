/* GEMM, linear and convolution kernels vs naive double-precision references,
 * on random odd shapes, every weight dtype, outputs poisoned with NaN. Also
 * shapes large enough to exercise weight panels and im2col tiles. */
#include <stdio.h>

#include "test_ops_common.h"
#include "test_util.h"
#include "tensor/ops.h"

/* float GEMM error grows ~ sqrt(K) * 2^-24; 1e-5 is far below any bug. */
#define GEMM_TOL 1e-5

static void ref_linear(double *y, const float *x, const float *w,
                       const float *b, int64_t M, int64_t N, int64_t K) {
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      double s = b ? b[n] : 0.0;
      for (int64_t k = 0; k < K; k++) s += (double)x[m * K + k] * w[n * K + k];
      y[m * N + n] = s;
    }
}

static double rel_l2_d(const float *a, const double *ref, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = a[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void check_linear(int64_t M, int64_t N, int64_t K, sd_dtype dt,
                         int with_bias) {
  float *x = rnd_buffer(M * K, 1.0f);
  float *w = rnd_buffer(N * K, 0.1f);
  float *b = rnd_buffer(N, 1.0f);
  sd_tensor *W = make_weight(dt, 2, (int64_t[]){N, K}, w);
  sd_tensor *B = with_bias ? make_weight(dt, 1, (int64_t[]){N}, b) : NULL;
  float *y = sd_alloc((size_t)(M * N) * 4);
  double *ref = sd_alloc((size_t)(M * N) * 8);
  poison(y, M * N);
  int rc = sd_linear(y, x, M, K, W, B);
  ref_linear(ref, x, w, with_bias ? b : NULL, M, N, K);
  double e = rel_l2_d(y, ref, M * N);
  CHECK_MSG(rc == 0 && !has_nan(y, M * N) && e <= GEMM_TOL,
            "linear M=%lld N=%lld K=%lld %s bias=%d: rc=%d err=%.3g",
            (long long)M, (long long)N, (long long)K, sd_dtype_name(dt),
            with_bias, rc, e);
  sd_free(x), sd_free(w), sd_free(b), sd_free(y), sd_free(ref);
  sd_tensor_free(W), sd_tensor_free(B);
}

static void test_linear(void) {
  for (int it = 0; it < 12; it++) {
    int64_t M = rnd_int(1, 37), N = rnd_int(1, 70), K = rnd_int(1, 90);
    check_linear(M, N, K, k_weight_dtypes[it % 3], it % 2);
  }
  /* K = 4096: panels of 512 rows, so N = 1100 needs three panels. */
  for (int d = 0; d < 3; d++) check_linear(3, 1100, 4096, k_weight_dtypes[d], 1);
}

static void test_gemm(void) {
  for (int it = 0; it < 8; it++) {
    int tA = it & 1, tB = (it >> 1) & 1;
    int64_t M = rnd_int(1, 30), N = rnd_int(1, 30), K = rnd_int(1, 30);
    int64_t lda = (tA ? M : K) + rnd_int(0, 3), ldb = (tB ? K : N) + rnd_int(0, 3);
    int64_t ldc = N + rnd_int(0, 3);
    float *A = rnd_buffer((tA ? K : M) * lda, 1.0f);
    float *B = rnd_buffer((tB ? N : K) * ldb, 1.0f);
    float *C = rnd_buffer(M * ldc, 1.0f);
    double *ref = sd_alloc((size_t)(M * N) * 8);
    float alpha = 0.5f, beta = it >= 4 ? 0.25f : 0.0f;
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) {
        double s = 0;
        for (int64_t k = 0; k < K; k++)
          s += (double)(tA ? A[k * lda + m] : A[m * lda + k]) *
               (tB ? B[n * ldb + k] : B[k * ldb + n]);
        ref[m * N + n] = alpha * s + beta * C[m * ldc + n];
      }
    if (beta == 0.0f) poison(C, M * ldc);
    sd_gemm(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    double num = 0, den = 0;
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) {
        double d = C[m * ldc + n] - ref[m * N + n];
        num += d * d, den += ref[m * N + n] * ref[m * N + n];
      }
    double e = sqrt(num / den);
    CHECK_MSG(e <= GEMM_TOL, "gemm tA=%d tB=%d %lldx%lldx%lld err=%.3g", tA, tB,
              (long long)M, (long long)N, (long long)K, e);
    sd_free(A), sd_free(B), sd_free(C), sd_free(ref);
  }
}

static void check_conv(int N, int C, int H, int W, int OC, int KH, int KW,
                       int stride, int pt, int pb, int pl, int pr, sd_dtype dt,
                       int with_bias) {
  int OH = (H + pt + pb - KH) / stride + 1, OW = (W + pl + pr - KW) / stride + 1;
  int64_t xn = (int64_t)N * C * H * W, yn = (int64_t)N * OC * OH * OW;
  int64_t wn = (int64_t)OC * C * KH * KW;
  float *x = rnd_buffer(xn, 1.0f), *w = rnd_buffer(wn, 0.1f);
  float *b = rnd_buffer(OC, 1.0f);
  sd_tensor *Wt = make_weight(dt, 4, (int64_t[]){OC, C, KH, KW}, w);
  sd_tensor *Bt = with_bias ? make_weight(dt, 1, (int64_t[]){OC}, b) : NULL;
  float *y = sd_alloc((size_t)yn * 4);
  double *ref = sd_alloc((size_t)yn * 8);
  poison(y, yn);
  int rc = (pt == pb && pl == pr && pt == pl)
               ? sd_conv2d(y, x, N, C, H, W, Wt, Bt, stride, pt)
               : sd_conv2d_pad4(y, x, N, C, H, W, Wt, Bt, stride, pt, pb, pl, pr);
  for (int n = 0; n < N; n++)
    for (int o = 0; o < OC; o++)
      for (int oh = 0; oh < OH; oh++)
        for (int ow = 0; ow < OW; ow++) {
          double s = with_bias ? b[o] : 0.0;
          for (int c = 0; c < C; c++)
            for (int kh = 0; kh < KH; kh++)
              for (int kw = 0; kw < KW; kw++) {
                int ih = oh * stride - pt + kh, iw = ow * stride - pl + kw;
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                s += (double)w[((int64_t)(o * C + c) * KH + kh) * KW + kw] *
                     x[((int64_t)(n * C + c) * H + ih) * W + iw];
              }
          ref[(((int64_t)n * OC + o) * OH + oh) * OW + ow] = s;
        }
  double e = rel_l2_d(y, ref, yn);
  CHECK_MSG(rc == 0 && !has_nan(y, yn) && e <= GEMM_TOL,
            "conv N=%d C=%d %dx%d OC=%d k=%dx%d s=%d pad=%d,%d,%d,%d %s: rc=%d "
            "err=%.3g",
            N, C, H, W, OC, KH, KW, stride, pt, pb, pl, pr, sd_dtype_name(dt),
            rc, e);
  sd_free(x), sd_free(w), sd_free(b), sd_free(y), sd_free(ref);
  sd_tensor_free(Wt), sd_tensor_free(Bt);
}

static void test_conv(void) {
  for (int it = 0; it < 24; it++) {
    int k = it % 4 == 0 ? 1 : 3;
    int stride = rnd_int(1, 2), pad = k == 1 ? rnd_int(0, 1) * (it % 2) : rnd_int(0, 1);
    check_conv(rnd_int(1, 2), rnd_int(1, 9), rnd_int(3, 13), rnd_int(3, 13),
               rnd_int(1, 9), k, k, stride, pad, pad, pad, pad,
               k_weight_dtypes[it % 3], it % 3 != 1);
  }
  /* VAE encoder downsampling: pad (0, 1, 0, 1), stride 2. */
  check_conv(1, 5, 9, 8, 4, 3, 3, 2, 0, 1, 0, 1, SD_F16, 1);
  check_conv(2, 3, 10, 7, 6, 3, 3, 2, 0, 1, 0, 1, SD_F32, 0);
  /* Non-square kernel. */
  check_conv(1, 3, 6, 7, 2, 1, 3, 1, 0, 0, 1, 1, SD_BF16, 1);
  /* CK = 2700 -> 776-pixel tiles: a 40x40 output needs three. */
  check_conv(1, 300, 40, 40, 5, 3, 3, 1, 1, 1, 1, 1, SD_F16, 1);
  /* OC*CK = 4.7M floats > bound: F16 weight converted in panels. */
  check_conv(1, 512, 2, 3, 1030, 3, 3, 1, 1, 1, 1, 1, SD_F16, 1);
  check_conv(2, 512, 2, 2, 1030, 1, 1, 1, 0, 0, 0, 0, SD_BF16, 1);
}

/* Same thread count: identical bits on reruns. Other thread counts: the
 * split changes only the float summation order. */
static void test_threads(void) {
  int64_t M = 300, K = 200, N = 150;
  float *x = rnd_buffer(M * K, 1.0f), *w = rnd_buffer(N * K, 0.1f);
  sd_tensor *W = make_weight(SD_F16, 2, (int64_t[]){N, K}, w);
  int C = 40, H = 21, Wd = 19, OC = 24;
  float *xc = rnd_buffer((int64_t)2 * C * H * Wd, 1.0f);
  float *wc = rnd_buffer((int64_t)OC * C * 9, 0.1f);
  sd_tensor *WC = make_weight(SD_BF16, 4, (int64_t[]){OC, C, 3, 3}, wc);
  int64_t yl = M * N, yc = (int64_t)2 * OC * H * Wd;
  float *ref_l = sd_alloc(yl * 4), *ref_c = sd_alloc(yc * 4);
  float *a = sd_alloc(yl * 4), *b = sd_alloc(yl * 4);
  float *ca = sd_alloc(yc * 4), *cb = sd_alloc(yc * 4);
  int saved = sd_get_threads();
  for (int nt = 1; nt <= 3; nt++) {
    sd_set_threads(nt);
    CHECK(sd_get_threads() == nt);
    sd_linear(a, x, M, K, W, NULL);
    sd_linear(b, x, M, K, W, NULL);
    sd_conv2d(ca, xc, 2, C, H, Wd, WC, NULL, 1, 1);
    sd_conv2d(cb, xc, 2, C, H, Wd, WC, NULL, 1, 1);
    CHECK_MSG(memcmp(a, b, yl * 4) == 0 && memcmp(ca, cb, yc * 4) == 0,
              "threads=%d: reruns differ", nt);
    if (nt == 1) {
      memcpy(ref_l, a, yl * 4);
      memcpy(ref_c, ca, yc * 4);
    } else {
      double el = rel_l2(a, ref_l, yl), ec = rel_l2(ca, ref_c, yc);
      CHECK_MSG(el <= 1e-6 && ec <= 1e-6,
                "threads=%d vs 1: linear %.3g conv %.3g", nt, el, ec);
    }
  }
  sd_set_threads(saved);
  sd_free(x), sd_free(w), sd_free(xc), sd_free(wc), sd_free(ref_l);
  sd_free(ref_c), sd_free(a), sd_free(b), sd_free(ca), sd_free(cb);
  sd_tensor_free(W), sd_tensor_free(WC);
}

int main(void) {
  test_threads();
  test_gemm();
  test_linear();
  test_conv();
  return test_finish();
}
