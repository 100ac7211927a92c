/* Op-class profiler: classes, analytic FLOPs, outermost-only recording,
 * nothing recorded when disabled or in plan mode. */
#include <string.h>

#include "base/alloc.h"
#include "base/status.h"
#include "tensor/ops.h"
#include "tensor/profile.h"
#include "test_util.h"

static sd_op_stats stat_of(sd_op_class c) {
  sd_op_stats all[SD_OPC_COUNT];
  sd_profile_read(all);
  return all[c];
}

static int64_t total_calls(void) {
  sd_op_stats all[SD_OPC_COUNT];
  sd_profile_read(all);
  int64_t n = 0;
  for (int c = 0; c < SD_OPC_COUNT; c++) n += all[c].calls;
  return n;
}

int main(void) {
  sd_set_threads(2);
  enum { N = 2, C = 3, H = 5, W = 7, OC = 4 };
  float x[N * C * H * W], y[N * OC * H * W * 4];
  float w3[OC * C * 9], w1[OC * C], wl[OC * W];
  for (int i = 0; i < N * C * H * W; i++) x[i] = (float)(i % 11) * 0.1f;
  for (int i = 0; i < OC * C * 9; i++) w3[i] = (float)(i % 5) * 0.01f;
  memset(w1, 0, sizeof w1);
  memset(wl, 0, sizeof wl);
  sd_tensor t3 = {0}, t1 = {0}, tl = {0};
  t3.dtype = t1.dtype = tl.dtype = SD_F32;
  t3.ndim = t1.ndim = 4;
  t3.shape[0] = t1.shape[0] = OC;
  t3.shape[1] = t1.shape[1] = C;
  t3.shape[2] = t3.shape[3] = 3;
  t1.shape[2] = t1.shape[3] = 1;
  t3.data = w3;
  t1.data = w1;
  tl.ndim = 2;
  tl.shape[0] = OC;
  tl.shape[1] = W;
  tl.data = wl;

  /* Disabled: nothing counted. */
  sd_profile_reset();
  CHECK(!sd_profile_enabled());
  CHECK(sd_conv2d(y, x, N, C, H, W, &t3, NULL, 1, 1) == SD_OK);
  CHECK(total_calls() == 0);

  sd_profile_enable(1);
  /* sd_conv2d calls sd_conv2d_pad4: one record, not two. */
  CHECK(sd_conv2d(y, x, N, C, H, W, &t3, NULL, 1, 1) == SD_OK);
  sd_op_stats s = stat_of(SD_OPC_CONV3X3);
  CHECK(s.calls == 1);
  CHECK(s.flops == 2.0 * OC * C * 9 * H * W * N);
  CHECK(s.seconds > 0.0);
  CHECK(total_calls() == 1);

  /* Stride 2 with asymmetric padding (0, 1, 0, 1): OH = 2, OW = 3. */
  CHECK(sd_conv2d_pad4(y, x, N, C, H, W, &t3, NULL, 2, 0, 1, 0, 1) == SD_OK);
  CHECK(stat_of(SD_OPC_CONV3X3).flops ==
        2.0 * OC * C * 9 * H * W * N + 2.0 * OC * C * 9 * 2 * 3 * N);

  /* A 1x1 convolution is GEMM-shaped; a linear too. */
  CHECK(sd_conv2d(y, x, N, C, H, W, &t1, NULL, 1, 0) == SD_OK);
  CHECK(sd_linear(y, x, N * C * H, W, &tl, NULL) == SD_OK);
  s = stat_of(SD_OPC_GEMM);
  CHECK(s.calls == 2);
  CHECK(s.flops == 2.0 * OC * C * H * W * N + 2.0 * (N * C * H) * OC * W);

  sd_gemm(0, 1, 4, 3, 5, 1.0f, x, 5, x, 5, 0.0f, y, 3);
  CHECK(stat_of(SD_OPC_GEMM).calls == 3);

  sd_attn_args a = {0};
  a.B = 1;
  a.Lq = 3;
  a.Lk = 5;
  a.heads = 2;
  a.head_dim = 4;
  a.q_stride = a.kv_stride = 8;
  a.scale = 0.5f;
  CHECK(sd_attention(y, x, x, x, &a) == SD_OK);
  s = stat_of(SD_OPC_ATTENTION);
  CHECK(s.calls == 1 && s.flops == 4.0 * 1 * 2 * 3 * 5 * 4);

  sd_silu(y, 10);
  sd_add(y, y, x, 10);
  sd_geglu(y, y, 2, 3);
  s = stat_of(SD_OPC_ELEMENTWISE);
  CHECK(s.calls == 3);
  CHECK(s.bytes == 8.0 * 10 + 12.0 * 10 + 12.0 * 6);

  sd_group_norm(y, x, N, C, H * W, 3, NULL, NULL, 1e-5f);
  sd_layer_norm(y, x, 6, 5, NULL, NULL, 1e-5f);
  CHECK(stat_of(SD_OPC_NORM).calls == 2);

  sd_nchw_to_nhwc(y, x, N, C, H * W);
  sd_upsample_nearest2x(y, x, N, C, H, W);
  sd_concat_channels(y, x, 1, x, 2, N, H * W);
  s = stat_of(SD_OPC_DATA);
  CHECK(s.calls == 3);
  CHECK(s.bytes == 8.0 * N * C * H * W + 20.0 * N * C * H * W + 8.0 * N * 3 * H * W);

  /* Plan mode: kernels return at once, nothing is recorded. */
  int64_t before = total_calls();
  sd_plan_begin();
  CHECK(sd_conv2d(y, x, N, C, H, W, &t3, NULL, 1, 1) == SD_OK);
  sd_silu(y, 10);
  sd_plan_end();
  CHECK(total_calls() == before);

  sd_profile_reset();
  CHECK(total_calls() == 0);
  sd_profile_enable(0);
  sd_silu(y, 10);
  CHECK(total_calls() == 0);
  CHECK(strcmp(sd_op_class_name(SD_OPC_CONV3X3), "conv3x3") == 0);
  return test_finish();
}
