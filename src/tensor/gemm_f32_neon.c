/* ARM64 NEON micro-kernel of the F32 product (see gemm_f32_core.h): an
 * 8 x 12 register block (24 q-register accumulators, 3 loads of B and 2 of
 * A per step, FMAs by lane). Like the x86 kernels it computes
 * acc = fma(a, b, acc) in k order from zero and finishes with
 * C = fma(beta, C, alpha * acc). Packing is the portable packer's. Depends on
 * the C library only (cross-compiled with tests/arm/test_gemm_neon.c). */
#include "tensor/gemm_f32_neon.h"

#if defined(__aarch64__)
#include <arm_neon.h>

#define NMR 8
#define NNR 12

static void kernel_neon(int64_t kc, const float *a, const float *b, float *C, int64_t ldc, int mr,
                        int nr, float alpha, float beta) {
  float32x4_t acc[NMR][3];
  for (int i = 0; i < NMR; i++) acc[i][0] = acc[i][1] = acc[i][2] = vdupq_n_f32(0.0f);
  for (int64_t k = 0; k < kc; k++) {
    float32x4_t b0 = vld1q_f32(b + k * NNR), b1 = vld1q_f32(b + k * NNR + 4),
                b2 = vld1q_f32(b + k * NNR + 8);
    float32x4_t a0 = vld1q_f32(a + k * NMR), a1 = vld1q_f32(a + k * NMR + 4);
#define ROW(i, av, lane)                                     \
  acc[i][0] = vfmaq_laneq_f32(acc[i][0], b0, av, lane);      \
  acc[i][1] = vfmaq_laneq_f32(acc[i][1], b1, av, lane);      \
  acc[i][2] = vfmaq_laneq_f32(acc[i][2], b2, av, lane);
    ROW(0, a0, 0) ROW(1, a0, 1) ROW(2, a0, 2) ROW(3, a0, 3)
    ROW(4, a1, 0) ROW(5, a1, 1) ROW(6, a1, 2) ROW(7, a1, 3)
#undef ROW
  }
  float32x4_t va = vdupq_n_f32(alpha), vb = vdupq_n_f32(beta);
  for (int i = 0; i < mr; i++) {
    float *c = C + i * ldc;
    float32x4_t r[3];
    for (int v = 0; v < 3; v++) r[v] = vmulq_f32(acc[i][v], va);
    if (nr == NNR) {
      for (int v = 0; v < 3; v++) {
        float32x4_t o = beta != 0.0f ? vfmaq_f32(r[v], vb, vld1q_f32(c + 4 * v)) : r[v];
        vst1q_f32(c + 4 * v, o);
      }
    } else {
      float t[NNR];
      for (int v = 0; v < 3; v++) vst1q_f32(t + 4 * v, r[v]);
      for (int j = 0; j < nr; j++) c[j] = beta != 0.0f ? __builtin_fmaf(beta, c[j], t[j]) : t[j];
    }
  }
}

/* A block 8*24 x 256 floats = 192 KiB, B micro-panel 12 KiB. */
const sd_gemm_kernel_desc sd_gemm_desc_neon = {"neon", NMR, NNR, NMR * 24, 1020, kernel_neon,
                                               sd_gemm_pack_c, sd_gemm_pack_c};
#endif
