/* Group, layer and RMS normalization.
 *
 * Statistics are accumulated in double (mean first, then the centred sum of
 * squares: two passes), so they are at least as accurate as torch's float
 * Welford kernels; the normalization itself is float. Affine parameters may
 * be stored F16/BF16: they are converted once per call, or block by block
 * on the stack if that allocation fails (these functions cannot fail). */
#include <math.h>

#include "base/alloc.h"
#include "tensor/ops.h"
#include "tensor/ops_internal.h"
#include "tensor/profile.h"

#define PARAM_BLOCK 256

/* Parameter vectors up to this length are converted on the stack: every
 * norm width of the supported models fits, so a norm needs no allocation
 * (and cannot meet an allocation failure it would have to absorb). */
#define PARAM_LOCAL 4096

/* F32 pointer to a whole parameter vector: the weight itself when F32, a
 * converted copy in `local` (PARAM_LOCAL floats) when it fits, else an owned
 * copy (*owned set, caller frees); NULL when t is NULL or the copy could not
 * be allocated (then *failed = 1 and the caller converts block-wise). */
static const float *param_vector(const sd_tensor *t, int64_t n, float *local,
                                 float **owned, int *failed) {
  *owned = NULL;
  if (!t) return NULL;
  if (t->dtype == SD_F32) return (const float *)t->data;
  if (n <= PARAM_LOCAL) {
    sd_tensor_read_f32(t, 0, n, local);
    return local;
  }
  *owned = sd_alloc((size_t)n * 4);
  if (!*owned) {
    *failed = 1;
    return NULL;
  }
  sd_tensor_read_f32(t, 0, n, *owned);
  return *owned;
}

SD_VEC_CLONES
static double sum_f64(const float *x, int64_t n) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; i++) s += x[i];
  return s;
}

SD_VEC_CLONES
static double centred_sq_f64(const float *x, int64_t n, double mean) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; i++) {
    double d = x[i] - mean;
    s += d * d;
  }
  return s;
}

SD_VEC_CLONES
static double sq_f64(const float *x, int64_t n) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; i++) {
    double d = x[i];
    s += d * d;
  }
  return s;
}

/* y = ((x - mean_hi) - mean_lo) * a + b. The double mean is split into two
 * floats so centring loses nothing even when the mean dwarfs the spread
 * (torch folds the mean into the shift, which cancels badly there). */
SD_VEC_CLONES
static void centre_scale_shift(float *y, const float *x, int64_t n,
                               float mean_hi, float mean_lo, float a, float b) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) y[i] = ((x[i] - mean_hi) - mean_lo) * a + b;
}

/* y = (x - mean) * rstd * g + beta with mean = mean_hi + mean_lo (see
 * centre_scale_shift); g/beta may be NULL (1 and 0). */
SD_VEC_CLONES
static void normalize_affine(float *y, const float *x, int64_t n, float mean_hi,
                             float mean_lo, float rstd, const float *g,
                             const float *beta) {
  float hi = mean_hi, lo = mean_lo;
  if (g && beta) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) y[i] = ((x[i] - hi) - lo) * rstd * g[i] + beta[i];
  } else if (g) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) y[i] = ((x[i] - hi) - lo) * rstd * g[i];
  } else if (beta) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) y[i] = ((x[i] - hi) - lo) * rstd + beta[i];
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) y[i] = ((x[i] - hi) - lo) * rstd;
  }
}

/* Applies normalize_affine to a row, converting F16/BF16 parameters block by
 * block on the stack when no converted copy is available. */
static void normalize_row(float *y, const float *x, int64_t dim, double mean,
                          float rstd, const sd_tensor *gamma,
                          const sd_tensor *beta, const float *gf,
                          const float *bf) {
  float hi = (float)mean, lo = (float)(mean - (double)hi);
  if ((!gamma || gf) && (!beta || bf)) {
    normalize_affine(y, x, dim, hi, lo, rstd, gf, bf);
    return;
  }
  float gbuf[PARAM_BLOCK], bbuf[PARAM_BLOCK];
  for (int64_t d0 = 0; d0 < dim; d0 += PARAM_BLOCK) {
    int64_t n = dim - d0 < PARAM_BLOCK ? dim - d0 : PARAM_BLOCK;
    if (gamma) sd_tensor_read_f32(gamma, d0, n, gbuf);
    if (beta) sd_tensor_read_f32(beta, d0, n, bbuf);
    normalize_affine(y + d0, x + d0, n, hi, lo, rstd, gamma ? gbuf : NULL,
                     beta ? bbuf : NULL);
  }
}

void sd_group_norm(float *y, const float *x, int N, int C, int64_t HW,
                   int groups, const sd_tensor *gamma, const sd_tensor *beta,
                   float eps) { if (sd_plan_active()) return;
  SD_PROFILE_OP(SD_OPC_NORM, 0, 8.0 * N * C * (double)HW);
  if (groups <= 0 || C % groups) return;
  int cpg = C / groups;
  int64_t gsize = (int64_t)cpg * HW;
  int64_t tasks = (int64_t)N * groups;
  int nt = tasks * gsize >= (1 << 15) ? sd_threads_internal() : 1;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < tasks; t++) {
    int64_t off = t * gsize;
    int g = (int)(t % groups);
    double mean = sum_f64(x + off, gsize) / (double)gsize;
    double var = centred_sq_f64(x + off, gsize, mean) / (double)gsize;
    double rstd = 1.0 / sqrt(var + (double)eps);
    float mean_hi = (float)mean, mean_lo = (float)(mean - (double)mean_hi);
    for (int c = 0; c < cpg; c++) {
      int ch = g * cpg + c;
      float gv = 1.0f, bv = 0.0f;
      if (gamma) sd_tensor_read_f32(gamma, ch, 1, &gv);
      if (beta) sd_tensor_read_f32(beta, ch, 1, &bv);
      centre_scale_shift(y + off + c * HW, x + off + c * HW, HW, mean_hi,
                         mean_lo, (float)(rstd * gv), bv);
    }
  }
}

void sd_layer_norm(float *y, const float *x, int64_t rows, int64_t dim,
                   const sd_tensor *gamma, const sd_tensor *beta, float eps) { if (sd_plan_active()) return;
  SD_PROFILE_OP(SD_OPC_NORM, 0, 8.0 * rows * (double)dim);
  float *gown, *bown, glocal[PARAM_LOCAL], blocal[PARAM_LOCAL];
  int failed = 0;
  const float *gf = param_vector(gamma, dim, glocal, &gown, &failed);
  const float *bf = param_vector(beta, dim, blocal, &bown, &failed);
  int nt = rows * dim >= (1 << 15) ? sd_threads_internal() : 1;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = x + r * dim;
    double mean = sum_f64(xr, dim) / (double)dim;
    double var = centred_sq_f64(xr, dim, mean) / (double)dim;
    float rstd = (float)(1.0 / sqrt(var + (double)eps));
    normalize_row(y + r * dim, xr, dim, mean, rstd, gamma, beta, gf, bf);
  }
  sd_free(gown);
  sd_free(bown);
}

void sd_rms_norm(float *y, const float *x, int64_t rows, int64_t dim,
                 const sd_tensor *gamma, float eps) { if (sd_plan_active()) return;
  SD_PROFILE_OP(SD_OPC_NORM, 0, 8.0 * rows * (double)dim);
  float *gown, glocal[PARAM_LOCAL];
  int failed = 0;
  const float *gf = param_vector(gamma, dim, glocal, &gown, &failed);
  int nt = rows * dim >= (1 << 15) ? sd_threads_internal() : 1;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = x + r * dim;
    double ms = sq_f64(xr, dim) / (double)dim;
    float rstd = (float)(1.0 / sqrt(ms + (double)eps));
    normalize_row(y + r * dim, xr, dim, 0.0, rstd, gamma, NULL, gf, NULL);
  }
  sd_free(gown);
}
