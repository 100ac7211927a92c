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
#include "tensor/ops_internal.h"

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

static int conv2d_impl(float *y, const float *x, int N, int C, int H, int W,
                       const sd_tensor *weight, const sd_tensor *bias, int stride,
                       int pad_top, int pad_bottom, int pad_left, int pad_right) {
  if (weight->ndim != 4 || weight->shape[1] != C || stride < 1) return SD_ERR_ARG;
  conv_geom g = {C, H, W, (int)weight->shape[2], (int)weight->shape[3], stride,
                 pad_top, pad_left, 0, 0};
  int64_t OC = weight->shape[0];
  if (H + pad_top + pad_bottom < g.KH || W + pad_left + pad_right < g.KW)
    return SD_ERR_ARG;
  g.OH = (H + pad_top + pad_bottom - g.KH) / stride + 1;
  g.OW = (W + pad_left + pad_right - g.KW) / stride + 1;
  int64_t CK = (int64_t)C * g.KH * g.KW;
  int64_t P = (int64_t)g.OH * g.OW;
  int64_t HW = (int64_t)H * W;
  if (N <= 0 || OC <= 0 || P <= 0) return SD_OK;
  int nt = sd_threads_internal();
  if (omp_in_parallel()) nt = 1;

  int direct = g.KH == 1 && g.KW == 1 && stride == 1 && pad_top == 0 &&
               pad_bottom == 0 && pad_left == 0 && pad_right == 0;
  int64_t tile = SD_SCRATCH_FLOATS / nt / CK;
  if (tile < 256) tile = 256;
  /* Enough tiles for every thread when the image allows it. The tiling is
   * a function of one image only, never of the batch size, so an image
   * comes out bit-identical whether it is decoded alone or in a batch (VAE
   * slicing must not change results). */
  int64_t even = (P + nt - 1) / nt;
  if (tile > even && even >= 256) tile = even;
  if (tile > P) tile = P;
  int64_t ntiles = (P + tile - 1) / tile;

  /* Weight: used in place (F32), converted once, or converted per panel. */
  int64_t panel_rows = OC;
  int convert_once = 0;
  if (weight->dtype != SD_F32) {
    if (OC * CK <= 2 * SD_SCRATCH_FLOATS) {
      convert_once = 1;
    } else {
      panel_rows = SD_SCRATCH_FLOATS / nt / CK;
      if (panel_rows < 16) panel_rows = 16;
    }
  }
  /* Small images: split the output channels so all threads work. */
  if (ntiles < nt) {
    int64_t want = (OC + (nt / ntiles) - 1) / (nt / ntiles);
    want = (want + 15) & ~(int64_t)15;
    if (want < panel_rows) panel_rows = want;
  }
  if (panel_rows > OC) panel_rows = OC;
  int64_t npanels = (OC + panel_rows - 1) / panel_rows;
  int64_t tasks = (int64_t)N * ntiles * npanels;
  if (nt > tasks) nt = (int)tasks;

  float *b = NULL, *col = NULL, *wbuf = NULL, *wpanels = NULL;
  int rc = SD_OK;
  if (bias) {
    b = sd_alloc((size_t)OC * 4);
    if (!b) return SD_ERR_OOM;
    sd_param_f32(bias, OC, b);
  }
  if (!direct && !(col = sd_alloc((size_t)(CK * tile * nt) * 4))) {
    rc = SD_ERR_OOM;
    goto done;
  }
  if (convert_once) {
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

#pragma omp parallel num_threads(nt)
  {
    int tid = omp_get_thread_num();
    float *mycol = col ? col + CK * tile * tid : NULL;
    float *mypanel = wpanels ? wpanels + panel_rows * CK * tid : NULL;
    int64_t unfolded = -1; /* (image, tile) now in mycol */
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; t++) {
      int64_t it = t / npanels; /* image * ntiles + tile */
      int64_t oc0 = t % npanels * panel_rows;
      int n = (int)(it / ntiles);
      int64_t p0 = it % ntiles * tile;
      int64_t np = P - p0 < tile ? P - p0 : tile;
      int64_t ocn = OC - oc0 < panel_rows ? OC - oc0 : panel_rows;
      const float *xn = x + (int64_t)n * C * HW;
      const float *B;
      int64_t ldb;
      if (direct) {
        B = xn + p0;
        ldb = HW;
      } else {
        if (unfolded != it) im2col_tile(mycol, xn, &g, p0, np);
        unfolded = it;
        B = mycol;
        ldb = np;
      }
      const float *A;
      if (weight->dtype == SD_F32) {
        A = (const float *)weight->data + oc0 * CK;
      } else if (convert_once) {
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
  sd_free(b);
  sd_free(col);
  sd_free(wbuf);
  sd_free(wpanels);
  return rc;
}

int sd_conv2d_pad4(float *y, const float *x, int N, int C, int H, int W,
                   const sd_tensor *weight, const sd_tensor *bias, int stride,
                   int pad_top, int pad_bottom, int pad_left, int pad_right) {
  if (sd_plan_active()) return SD_OK;
  return conv2d_impl(y, x, N, C, H, W, weight, bias, stride, pad_top,
                     pad_bottom, pad_left, pad_right);
}

int sd_conv2d(float *y, const float *x, int N, int C, int H, int W,
              const sd_tensor *weight, const sd_tensor *bias, int stride,
              int pad) { if (sd_plan_active()) return SD_OK;
  return sd_conv2d_pad4(y, x, N, C, H, W, weight, bias, stride, pad, pad, pad,
                        pad);
}
