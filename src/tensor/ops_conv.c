/* 2-D convolution as implicit GEMM.
 *
 * For each image and each tile of output pixels, the receptive fields of the
 * tile are unfolded (im2col) into a (C*KH*KW, tile) scratch matrix and
 * multiplied by the weight matrix (OC, C*KH*KW) with BLAS, writing straight
 * into the NCHW output (ldc = OH*OW). The (image, tile, output-channel
 * panel) tasks are spread over OpenMP threads, each with its own unfolding
 * buffer and single-threaded BLAS (see ops_gemm.c for why one pool); a
 * thread's consecutive tasks share a tile, so each tile is unfolded once per
 * thread that touches it. Tiles are sized so a thread's buffer stays within
 * about SD_SCRATCH_FLOATS / threads (at least 256 pixels so the GEMM stays
 * efficient), which keeps memory bounded for VAE-sized images; small images
 * are split by output channels instead so every thread has work. F16/BF16
 * weights are converted once per call when they fit the scratch bound, and
 * per panel (per task) otherwise. 1x1 stride-1 unpadded convolutions skip
 * the unfolding: the input already is the (C, H*W) matrix. */
#include <omp.h>

#include "base/alloc.h"
#include "base/status.h"
#include "tensor/ops.h"
#include "tensor/lowrank.h"
#include "tensor/ops_internal.h"
#include "tensor/profile.h"

typedef struct conv_geom {
  int C, H, W, KH, KW, stride, pad_top, pad_left, OH, OW;
} conv_geom;

/* Unfolds output pixels [p0, p0+np) of one image into col (CK rows of np). */
static void im2col_tile(float *col, const float *x, const conv_geom *g,
                        int64_t p0, int64_t np) {
  int64_t rows = (int64_t)g->C * g->KH * g->KW;
  for (int64_t r = 0; r < rows; r++) {
    int c = (int)(r / (g->KH * g->KW));
    int kh = (int)(r / g->KW % g->KH);
    int kw = (int)(r % g->KW);
    const float *xc = x + (int64_t)c * g->H * g->W;
    float *dst = col + r * np;
    int64_t oh = p0 / g->OW, ow = p0 % g->OW;
    int64_t done = 0;
    while (done < np) {
      int64_t run = g->OW - ow;
      if (run > np - done) run = np - done;
      int64_t ih = oh * g->stride - g->pad_top + kh;
      float *d = dst + done;
      if (ih < 0 || ih >= g->H) {
        memset(d, 0, (size_t)run * 4);
      } else {
        const float *xr = xc + ih * g->W;
        int64_t iw0 = ow * g->stride - g->pad_left + kw;
        /* Outputs j in [lo, hi) read inside the row; the rest is padding. */
        int64_t lo = iw0 >= 0 ? 0 : (-iw0 + g->stride - 1) / g->stride;
        int64_t hi = g->W - iw0 <= 0 ? 0 : (g->W - iw0 + g->stride - 1) / g->stride;
        if (hi > run) hi = run;
        if (lo > hi) lo = hi;
        for (int64_t j = 0; j < lo; j++) d[j] = 0.0f;
        if (g->stride == 1) {
          memcpy(d + lo, xr + (iw0 + lo), (size_t)(hi - lo) * 4);
        } else {
          for (int64_t j = lo; j < hi; j++) d[j] = xr[iw0 + j * g->stride];
        }
        for (int64_t j = hi; j < run; j++) d[j] = 0.0f;
      }
      done += run;
      ow = 0;
      oh++;
    }
  }
}

/* Sets rows [0, rows) (stride ld) of columns [0, np) to the per-row bias. */
static void fill_bias_tile(float *y, int64_t ld, int64_t rows, int64_t np,
                           const float *b) {
  for (int64_t r = 0; r < rows; r++) {
    float v = b[r];
    float *d = y + r * ld;
    for (int64_t j = 0; j < np; j++) d[j] = v;
  }
}

/* Stride-1 convolutions with KH > 1 (the 3x3 convolutions that dominate
 * the UNet and the VAE) unfold only along the kernel's width ("rows" path):
 * for a tile of R output rows, X[(c, kw), r', ow] = x[c, oh0 + r' - pad_top,
 * ow + kw - pad_left] over the R + KH - 1 input rows the tile reads (zeros
 * outside the image). Kernel row kh is then one GEMM with K = C*KW whose
 * right operand is X shifted down by kh rows: a view (ldb = (R+KH-1)*OW),
 * not a copy. That unfolds (R+KH-1)/R * KW copies of the input instead of
 * KH*KW, and the KH products accumulate into the output (beta = 1). The
 * weights are laid out once per call as KH matrices (OC, C*KW) in F32. */

enum conv_path { PATH_DIRECT, PATH_IM2COL, PATH_ROWS };

/* How one call is split and what scratch it takes; a function of the
 * arguments only (one image's geometry, never the batch size, decides the
 * tiling, so an image comes out bit-identical alone or in a batch). */
typedef struct conv_plan {
  enum conv_path path;
  int nt;               /* threads */
  int64_t tile;         /* pixels (im2col) or output rows (rows) per tile */
  int64_t ntiles;       /* tiles per image */
  int64_t buf;          /* floats of one thread's unfolding buffer */
  int64_t panel_rows, npanels, tasks;
  int convert_once;     /* im2col: F16/BF16 weight converted in one piece */
  int64_t scratch;      /* floats allocated at the call's peak */
} conv_plan;

/* Output-channel panels: the whole weight, or per-thread panels when a
 * converted copy would exceed the scratch bound; small images also split
 * the channels so that every thread has work. */
static void plan_panels(conv_plan *cp, int64_t OC, int64_t CK, int cap_rows) {
  cp->panel_rows = OC;
  if (cap_rows) {
    cp->panel_rows = SD_SCRATCH_FLOATS / cp->nt / CK;
    if (cp->panel_rows < 16) cp->panel_rows = 16;
  }
  if (cp->ntiles < cp->nt) {
    int64_t split = cp->nt / cp->ntiles;
    int64_t want = ((OC + split - 1) / split + 15) & ~(int64_t)15;
    if (want < cp->panel_rows) cp->panel_rows = want;
  }
  if (cp->panel_rows > OC) cp->panel_rows = OC;
  cp->npanels = (OC + cp->panel_rows - 1) / cp->panel_rows;
}

static conv_plan plan_conv(const conv_geom *g, int N, int64_t OC, sd_dtype wtype,
                           int nt) {
  conv_plan cp = {PATH_IM2COL, nt, 0, 0, 0, 0, 0, 0, 0, 0};
  int64_t CK = (int64_t)g->C * g->KH * g->KW, P = (int64_t)g->OH * g->OW;
  int unpadded = g->pad_top == 0 && g->pad_left == 0 && g->OH == g->H && g->OW == g->W;
  if (g->KH == 1 && g->KW == 1 && g->stride == 1 && unpadded) cp.path = PATH_DIRECT;
  /* Rows path: needs the weight relaid out in one piece within the bound,
   * and room for at least one output row's unfolding per thread. */
  int64_t per_row = (int64_t)g->C * g->KW * g->OW;
  int64_t rows = SD_SCRATCH_FLOATS / nt / per_row - (g->KH - 1);
  if (g->stride == 1 && g->KH > 1 && OC * CK <= 2 * SD_SCRATCH_FLOATS && rows >= 1) {
    cp.path = PATH_ROWS;
    /* At least ~256 output pixels per GEMM, and work for every thread. */
    int64_t even = (g->OH + nt - 1) / nt;
    if (rows > even && even * g->OW >= 256) rows = even;
    if (rows > g->OH) rows = g->OH;
    cp.tile = rows;
    cp.ntiles = (g->OH + rows - 1) / rows;
    cp.buf = per_row * (rows + g->KH - 1);
    plan_panels(&cp, OC, CK, 0);
  } else {
    int64_t tile = SD_SCRATCH_FLOATS / nt / CK;
    if (tile < 256) tile = 256;
    int64_t even = (P + nt - 1) / nt;
    if (tile > even && even >= 256) tile = even;
    if (tile > P) tile = P;
    cp.tile = tile;
    cp.ntiles = (P + tile - 1) / tile;
    cp.buf = cp.path == PATH_DIRECT ? 0 : CK * tile;
    cp.convert_once = wtype != SD_F32 && OC * CK <= 2 * SD_SCRATCH_FLOATS;
    plan_panels(&cp, OC, CK, wtype != SD_F32 && !cp.convert_once);
  }
  cp.tasks = (int64_t)N * cp.ntiles * cp.npanels;
  if (cp.nt > cp.tasks) cp.nt = (int)cp.tasks;
  /* Peak: bias copy + unfolding buffers + the weight in F32 (rows: the
   * relaid-out copy and, while it is built, one converted row per thread;
   * im2col: a whole converted copy or one panel per thread). */
  int64_t w = 0;
  if (cp.path == PATH_ROWS)
    w = OC * CK + CK * cp.nt;
  else if (cp.convert_once)
    w = OC * CK;
  else if (wtype != SD_F32)
    w = cp.panel_rows * CK * cp.nt;
  cp.scratch = OC + cp.buf * cp.nt + w;
  return cp;
}

static void unfold_rows(float *X, const float *xn, const conv_geom *g,
                        int64_t oh0, int64_t in_rows) {
  int64_t plane = (int64_t)g->H * g->W;
  for (int c = 0; c < g->C; c++) {
    const float *xc = xn + c * plane;
    for (int kw = 0; kw < g->KW; kw++) {
      float *dst = X + ((int64_t)c * g->KW + kw) * in_rows * g->OW;
      int64_t iw0 = kw - g->pad_left; /* input column of output column 0 */
      int64_t lo = iw0 >= 0 ? 0 : -iw0;
      int64_t hi = g->W - iw0 < g->OW ? g->W - iw0 : g->OW;
      if (hi < lo) hi = lo;
      for (int64_t r = 0; r < in_rows; r++) {
        float *d = dst + r * g->OW;
        int64_t ih = oh0 + r - g->pad_top;
        if (ih < 0 || ih >= g->H) {
          memset(d, 0, (size_t)g->OW * 4);
          continue;
        }
        for (int64_t j = 0; j < lo; j++) d[j] = 0.0f;
        memcpy(d + lo, xc + ih * g->W + iw0 + lo, (size_t)(hi - lo) * 4);
        for (int64_t j = hi; j < g->OW; j++) d[j] = 0.0f;
      }
    }
  }
}

static int conv2d_rows(float *y, const float *x, int N, const conv_geom *g,
                       int64_t OC, const sd_tensor *weight, const float *b,
                       const conv_plan *cp) {
  int64_t P = (int64_t)g->OH * g->OW, HW = (int64_t)g->H * g->W;
  int64_t CKW = (int64_t)g->C * g->KW, CK = CKW * g->KH;
  int nt = cp->nt;
  float *X = sd_alloc((size_t)(cp->buf * nt) * 4);
  float *wk = sd_alloc((size_t)(OC * CK) * 4);
  float *row = sd_alloc((size_t)(CK * nt) * 4);
  if (!X || !wk || !row) {
    sd_free(X);
    sd_free(wk);
    sd_free(row);
    return SD_ERR_OOM;
  }
  /* wk[kh][oc][c*KW + kw] = weight[oc][c][kh][kw], converted row by row. */
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t oc = 0; oc < OC; oc++) {
    float *r = row + CK * omp_get_thread_num();
    sd_weight_rows_f32(weight, oc, 1, CK, r);
    for (int kh = 0; kh < g->KH; kh++) {
      float *d = wk + ((int64_t)kh * OC + oc) * CKW;
      for (int c = 0; c < g->C; c++)
        for (int kw = 0; kw < g->KW; kw++)
          d[c * g->KW + kw] = r[((int64_t)c * g->KH + kh) * g->KW + kw];
    }
  }
  sd_free(row);
  sd_blas_single_thread();
  int64_t npanels = cp->npanels, panel_rows = cp->panel_rows;
  int grab = cp->tasks >= 4 * (int64_t)nt * npanels ? (int)npanels : 1;
#pragma omp parallel num_threads(nt)
  {
    float *myX = X + cp->buf * omp_get_thread_num();
    int64_t unfolded = -1;
    /* Dynamic, by whole tiles when there are enough (one unfolding per
     * grab): a preempted thread's tiles go to the others instead of stalling
     * the barrier; the result of a task does not depend on its thread. */
#pragma omp for schedule(dynamic, grab)
    for (int64_t t = 0; t < cp->tasks; t++) {
      int64_t it = t / npanels; /* image * ntiles + tile */
      int64_t oc0 = t % npanels * panel_rows;
      int64_t ocn = OC - oc0 < panel_rows ? OC - oc0 : panel_rows;
      int n = (int)(it / cp->ntiles);
      int64_t oh0 = it % cp->ntiles * cp->tile;
      int64_t nr = g->OH - oh0 < cp->tile ? g->OH - oh0 : cp->tile;
      int64_t in_rows = nr + g->KH - 1;
      if (unfolded != it) unfold_rows(myX, x + (int64_t)n * g->C * HW, g, oh0, in_rows);
      unfolded = it;
      float *yt = y + (int64_t)n * OC * P + oc0 * P + oh0 * g->OW;
      if (b) fill_bias_tile(yt, P, ocn, nr * g->OW, b + oc0);
      for (int kh = 0; kh < g->KH; kh++)
        sd_gemm_block(0, 0, ocn, nr * g->OW, CKW, 1.0f,
                      wk + ((int64_t)kh * OC + oc0) * CKW, CKW, myX + kh * g->OW,
                      in_rows * g->OW, b || kh > 0 ? 1.0f : 0.0f, yt, P);
    }
  }
  sd_free(X);
  sd_free(wk);
  return SD_OK;
}

/* Full unfolding (im2col) of pixel tiles, or none for 1x1 convolutions. */
static int conv2d_im2col(float *y, const float *x, int N, const conv_geom *g,
                         int64_t OC, const sd_tensor *weight, const float *b,
                         const conv_plan *cp) {
  int64_t CK = (int64_t)g->C * g->KH * g->KW;
  int64_t P = (int64_t)g->OH * g->OW, HW = (int64_t)g->H * g->W;
  int nt = cp->nt, direct = cp->path == PATH_DIRECT;
  int64_t tile = cp->tile, ntiles = cp->ntiles;
  int64_t panel_rows = cp->panel_rows, npanels = cp->npanels, tasks = cp->tasks;
  float *col = NULL, *wbuf = NULL, *wpanels = NULL;
  int rc = SD_OK;
  if (!direct && !(col = sd_alloc((size_t)(cp->buf * nt) * 4))) {
    rc = SD_ERR_OOM;
    goto done;
  }
  if (cp->convert_once) {
    if (!(wbuf = sd_alloc((size_t)(OC * CK) * 4))) {
      rc = SD_ERR_OOM;
      goto done;
    }
    sd_weight_rows_f32(weight, 0, OC, CK, wbuf);
  } else if (weight->dtype != SD_F32) {
    if (!(wpanels = sd_alloc((size_t)(panel_rows * CK * nt) * 4))) {
      rc = SD_ERR_OOM;
      goto done;
    }
  }
  sd_blas_single_thread();
  int grab = tasks >= 4 * (int64_t)nt * npanels ? (int)npanels : 1;

#pragma omp parallel num_threads(nt)
  {
    int tid = omp_get_thread_num();
    float *mycol = col ? col + cp->buf * tid : NULL;
    float *mypanel = wpanels ? wpanels + panel_rows * CK * tid : NULL;
    int64_t unfolded = -1; /* (image, tile) now in mycol */
#pragma omp for schedule(dynamic, grab)
    for (int64_t t = 0; t < tasks; t++) {
      int64_t it = t / npanels; /* image * ntiles + tile */
      int64_t oc0 = t % npanels * panel_rows;
      int n = (int)(it / ntiles);
      int64_t p0 = it % ntiles * tile;
      int64_t np = P - p0 < tile ? P - p0 : tile;
      int64_t ocn = OC - oc0 < panel_rows ? OC - oc0 : panel_rows;
      const float *xn = x + (int64_t)n * g->C * HW;
      const float *B;
      int64_t ldb;
      if (direct) {
        B = xn + p0;
        ldb = HW;
      } else {
        if (unfolded != it) im2col_tile(mycol, xn, g, p0, np);
        unfolded = it;
        B = mycol;
        ldb = np;
      }
      const float *A;
      if (weight->dtype == SD_F32) {
        A = (const float *)weight->data + oc0 * CK;
      } else if (cp->convert_once) {
        A = wbuf + oc0 * CK;
      } else {
        sd_weight_rows_f32(weight, oc0, ocn, CK, mypanel);
        A = mypanel;
      }
      float *yt = y + (int64_t)n * OC * P + oc0 * P + p0;
      if (b) fill_bias_tile(yt, P, ocn, np, b + oc0);
      sd_gemm_block(0, 0, ocn, np, CK, 1.0f, A, CK, B, ldb, b ? 1.0f : 0.0f,
                    yt, P);
    }
  }
done:
  sd_free(col);
  sd_free(wbuf);
  sd_free(wpanels);
  return rc;
}

/* Geometry of a call; SD_ERR_ARG when the arguments do not make one. */
static int make_geom(conv_geom *g, int C, int H, int W, const sd_tensor *weight,
                     int stride, int pad_top, int pad_bottom, int pad_left,
                     int pad_right) {
  if (weight->ndim != 4 || weight->shape[1] != C || stride < 1) return SD_ERR_ARG;
  conv_geom v = {C, H, W, (int)weight->shape[2], (int)weight->shape[3], stride,
                 pad_top, pad_left, 0, 0};
  if (H + pad_top + pad_bottom < v.KH || W + pad_left + pad_right < v.KW)
    return SD_ERR_ARG;
  v.OH = (H + pad_top + pad_bottom - v.KH) / stride + 1;
  v.OW = (W + pad_left + pad_right - v.KW) / stride + 1;
  *g = v;
  return SD_OK;
}

static int conv_threads(void) {
  return omp_in_parallel() ? 1 : sd_threads_internal();
}

static int conv2d_impl(float *y, const float *x, int N, int C, int H, int W,
                       const sd_tensor *weight, const sd_tensor *bias, int stride,
                       int pad_top, int pad_bottom, int pad_left, int pad_right) {
  conv_geom g;
  int rc = make_geom(&g, C, H, W, weight, stride, pad_top, pad_bottom, pad_left, pad_right);
  if (rc) return rc;
  int64_t OC = weight->shape[0];
  if (N <= 0 || OC <= 0 || (int64_t)g.OH * g.OW <= 0) return SD_OK;
  conv_plan cp = plan_conv(&g, N, OC, weight->dtype, conv_threads());
  float *b = NULL;
  if (bias) {
    if (!(b = sd_alloc((size_t)OC * 4))) return SD_ERR_OOM;
    sd_param_f32(bias, OC, b);
  }
  rc = cp.path == PATH_ROWS ? conv2d_rows(y, x, N, &g, OC, weight, b, &cp)
                            : conv2d_im2col(y, x, N, &g, OC, weight, b, &cp);
  sd_free(b);
  return rc;
}

int64_t sd_conv2d_scratch_bytes(int N, int C, int H, int W, const sd_tensor *weight,
                                int stride, int pad_top, int pad_bottom,
                                int pad_left, int pad_right) {
  conv_geom g;
  if (make_geom(&g, C, H, W, weight, stride, pad_top, pad_bottom, pad_left, pad_right))
    return 0;
  int64_t OC = weight->shape[0];
  if (N <= 0 || OC <= 0) return 0;
  conv_plan cp = plan_conv(&g, N, OC, weight->dtype, conv_threads());
  /* + the block GEMMs' own scratch, one per thread */
  return 4 * cp.scratch + cp.nt * sd_gemm_block_scratch_bytes();
}

int sd_conv2d_pad4(float *y, const float *x, int N, int C, int H, int W,
                   const sd_tensor *weight, const sd_tensor *bias, int stride,
                   int pad_top, int pad_bottom, int pad_left, int pad_right) {
  int rc;
  if (sd_plan_active()) {
    rc = sd_plan_scratch(sd_conv2d_scratch_bytes(N, C, H, W, weight, stride, pad_top,
                                                 pad_bottom, pad_left, pad_right));
  } else {
    SD_PROFILE_SCOPE(sd_prof_begin_conv(N, C, H, W, weight, stride, pad_top + pad_bottom,
                                        pad_left + pad_right));
    rc = conv2d_impl(y, x, N, C, H, W, weight, bias, stride, pad_top, pad_bottom, pad_left,
                     pad_right);
  }
  if (!rc && weight->side) { /* LoRA side path: y += s * up(conv(x, down)) */
    conv_geom g;
    if ((rc = make_geom(&g, C, H, W, weight, stride, pad_top, pad_bottom, pad_left,
                        pad_right)))
      return rc;
    rc = sd_lowrank_conv2d(y, x, N, C, H, W, weight->shape[0], g.OH, g.OW, weight->side,
                           stride, pad_top, pad_bottom, pad_left, pad_right);
  }
  return rc;
}

int sd_conv2d(float *y, const float *x, int N, int C, int H, int W,
              const sd_tensor *weight, const sd_tensor *bias, int stride,
              int pad) {
  return sd_conv2d_pad4(y, x, N, C, H, W, weight, bias, stride, pad, pad, pad,
                        pad);
}
