/* Per-op-class counters (see profile.h). */
#include "tensor/profile.h"

#include <omp.h>
#include <string.h>
#include <time.h>

int sd_profile_on_;
static int g_depth; /* op nesting, touched only outside parallel regions */
static sd_op_stats g_stats[SD_OPC_COUNT];

static const char *const g_class_names[SD_OPC_COUNT] = {
    "conv3x3", "gemm", "conv_other", "attention", "norm", "elementwise", "data"};

const char *sd_op_class_name(sd_op_class c) {
  return (unsigned)c < SD_OPC_COUNT ? g_class_names[c] : "?";
}

void sd_profile_enable(int on) {
  sd_profile_on_ = on != 0;
}
int sd_profile_enabled(void) {
  return sd_profile_on_;
}

void sd_profile_reset(void) {
  memset(g_stats, 0, sizeof g_stats);
  g_depth = 0;
}

void sd_profile_read(sd_op_stats *out) {
  memcpy(out, g_stats, sizeof g_stats);
}

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  /* Monotonic time is > 0 after boot, so 0 stays free as "not recorded". */
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec + 1e-9;
}

sd_prof_scope sd_prof_begin(sd_op_class cls, double flops, double bytes) {
  sd_prof_scope s = {0.0, flops, bytes, cls};
  if (omp_in_parallel()) return s;
  s.t0 = g_depth++ == 0 ? now_seconds() : -1.0;
  return s;
}

void sd_prof_finish(sd_prof_scope *s) {
  g_depth--;
  if (s->t0 < 0.0) return;
  sd_op_stats *st = &g_stats[s->cls];
  st->calls++;
  st->seconds += now_seconds() - s->t0;
  st->flops += s->flops;
  st->bytes += s->bytes;
}

sd_prof_scope sd_prof_begin_conv(int N, int C, int H, int W, const sd_tensor *weight, int stride,
                                 int pad_h, int pad_w) {
  int64_t OC = weight->shape[0];
  int64_t KH = weight->ndim == 4 ? weight->shape[2] : 1;
  int64_t KW = weight->ndim == 4 ? weight->shape[3] : 1;
  sd_op_class cls = KH == 3 && KW == 3   ? SD_OPC_CONV3X3
                    : KH == 1 && KW == 1 ? SD_OPC_GEMM
                                         : SD_OPC_CONV_OTHER;
  int64_t OH = stride > 0 ? (H + pad_h - KH) / stride + 1 : 0;
  int64_t OW = stride > 0 ? (W + pad_w - KW) / stride + 1 : 0;
  if (OH < 0) OH = 0;
  if (OW < 0) OW = 0;
  double flops = 2.0 * (double)OC * C * KH * KW * (double)OH * OW * N;
  double bytes = 4.0 * N * C * (double)H * W + 4.0 * N * OC * (double)OH * OW +
                 (double)sd_tensor_numel(weight) * sd_dtype_size(weight->dtype);
  return sd_prof_begin(cls, flops, bytes);
}
