/* Tensor kernels (CPU).
 *
 * Conventions:
 *  - Activations are contiguous F32 arrays passed as pointers with explicit
 *    sizes; images are NCHW, token sequences are (B, L, D) row-major.
 *  - Weights are sd_tensor views in their stored dtype (F32, F16 or BF16)
 *    and are converted to F32 panel by panel inside the kernel; callers never
 *    convert a whole weight.
 *  - Output buffers are owned by the caller and must not alias inputs unless
 *    a function says "in place allowed".
 *  - Functions that need scratch memory take it from sd_alloc and return
 *    SD_OK or SD_ERR_OOM; the others return void.
 *  - Multi-threaded internally (OpenMP for own loops, BLAS for GEMM). Results
 *    are deterministic for a given thread count.
 */
#ifndef SDGEN_TENSOR_OPS_H
#define SDGEN_TENSOR_OPS_H

#include <stdint.h>

#include "tensor/tensor.h"

/* ---- matrix products ---- */

/* y[M, N] = x[M, K] @ W[N, K]^T (+ bias[N]) — torch's nn.Linear.
 * W: (N, K) weight view; bias: (N) or NULL. */
int sd_linear(float *y, const float *x, int64_t M, int64_t K,
              const sd_tensor *W, const sd_tensor *bias);

/* Plain F32 GEMM through BLAS: C[M,N] = alpha * op(A) @ op(B) + beta * C,
 * row-major, transA/transB = 0 or 1. */
void sd_gemm(int transA, int transB, int64_t M, int64_t N, int64_t K,
             float alpha, const float *A, int64_t lda, const float *B,
             int64_t ldb, float beta, float *C, int64_t ldc);

/* ---- convolution ---- */

/* 2D convolution, NCHW. x: (N, C, H, W); weight (OC, C, KH, KW) view;
 * bias (OC) or NULL; symmetric zero padding `pad`, `stride`.
 * y: (N, OC, OH, OW) with OH = (H + 2*pad - KH)/stride + 1 (same for OW). */
int sd_conv2d(float *y, const float *x, int N, int C, int H, int W,
              const sd_tensor *weight, const sd_tensor *bias, int stride,
              int pad);

/* Same with asymmetric padding (top, bottom, left, right): SD's VAE encoder
 * downsamples with pad (0, 1, 0, 1). */
int sd_conv2d_pad4(float *y, const float *x, int N, int C, int H, int W,
                   const sd_tensor *weight, const sd_tensor *bias, int stride,
                   int pad_top, int pad_bottom, int pad_left, int pad_right);

/* Bytes of scratch sd_conv2d_pad4 allocates at its peak for these
 * arguments with the current thread count and precision (in plan mode the
 * kernel takes exactly this much address space; analytic memory replays
 * add it). */
int64_t sd_conv2d_scratch_bytes(int N, int C, int H, int W, const sd_tensor *weight,
                                int stride, int pad_top, int pad_bottom,
                                int pad_left, int pad_right);

/* ---- normalization ---- */

/* GroupNorm over (C/groups * HW) per (n, group); gamma/beta (C) views or
 * NULL. In place allowed (y == x). */
void sd_group_norm(float *y, const float *x, int N, int C, int64_t HW,
                   int groups, const sd_tensor *gamma, const sd_tensor *beta,
                   float eps);

/* LayerNorm over the last dim of (rows, dim); gamma/beta (dim) or NULL.
 * In place allowed. */
void sd_layer_norm(float *y, const float *x, int64_t rows, int64_t dim,
                   const sd_tensor *gamma, const sd_tensor *beta, float eps);

/* RMSNorm (T5 / SD3 qk-norm): y = x / sqrt(mean(x^2) + eps) * gamma.
 * gamma may be NULL. In place allowed. */
void sd_rms_norm(float *y, const float *x, int64_t rows, int64_t dim,
                 const sd_tensor *gamma, float eps);

/* ---- attention ---- */

/* Multi-head scaled dot-product attention, never materializing the full
 * (Lq, Lk) score matrix: keys are processed in chunks of `kv_chunk` (0 =
 * kernel's choice) with an online softmax.
 * q: (B, Lq, heads*head_dim) with row stride q_stride (floats between rows;
 * = heads*head_dim when packed), likewise k, v with kv_stride; out: (B, Lq,
 * heads*head_dim) packed. `causal` masks keys j > i (CLIP). `bias` adds a
 * per-head (heads, Lq, Lk) score bias (T5 relative positions) or NULL. */
typedef struct sd_attn_args {
  int B, Lq, Lk, heads, head_dim;
  int64_t q_stride, kv_stride;
  float scale;
  int causal;
  const float *bias; /* (heads, Lq, Lk) or NULL */
  int kv_chunk;
} sd_attn_args;

int sd_attention(float *out, const float *q, const float *k, const float *v,
                 const sd_attn_args *a);

/* ---- activations (in place) ---- */
void sd_silu(float *x, int64_t n);
void sd_gelu(float *x, int64_t n);       /* exact erf form */
void sd_gelu_tanh(float *x, int64_t n);  /* tanh approximation */
void sd_quick_gelu(float *x, int64_t n); /* x * sigmoid(1.702 x) */
void sd_relu(float *x, int64_t n);
void sd_leaky_relu(float *x, int64_t n, float slope);

/* ---- element-wise ---- */
void sd_add(float *y, const float *a, const float *b, int64_t n); /* y may alias a or b */
void sd_add_inplace(float *y, const float *x, int64_t n);
void sd_mul_inplace(float *y, const float *x, int64_t n);
void sd_scale(float *x, int64_t n, float s);
/* y += s * x */
void sd_axpy(float *y, const float *x, int64_t n, float s);
/* y[n, c, i] += v[n, c] for NCHW-like (N, C, inner) tensors */
void sd_add_channel_bias(float *y, const float *v, int N, int C, int64_t inner);

/* GEGLU (diffusers' GELU-gated feed-forward): x (rows, 2*inner) holds
 * [value, gate] per row; y (rows, inner) = value * gelu(gate). y may alias
 * x (the rows are compacted in place). */
void sd_geglu(float *y, float *x, int64_t rows, int64_t inner);

/* ---- layout and resampling ---- */
/* (N, C, HW) -> (N, HW, C) */
void sd_nchw_to_nhwc(float *y, const float *x, int N, int C, int64_t HW);
/* (N, HW, C) -> (N, C, HW) */
void sd_nhwc_to_nchw(float *y, const float *x, int N, int C, int64_t HW);
/* Nearest-neighbour 2x upsampling, NCHW: y (N, C, 2H, 2W). */
void sd_upsample_nearest2x(float *y, const float *x, int N, int C, int H, int W);
/* Channel concatenation of NCHW a (N, Ca, HW) and b (N, Cb, HW). */
void sd_concat_channels(float *y, const float *a, int Ca, const float *b,
                        int Cb, int N, int64_t HW);

/* Sinusoidal timestep embedding as diffusers' get_timestep_embedding:
 * out (n, dim); flip_sin_to_cos swaps to [cos, sin]; downscale_freq_shift
 * and scale as in diffusers. */
void sd_timestep_embedding(float *out, const float *t, int n, int dim,
                           int flip_sin_to_cos, float downscale_freq_shift,
                           float scale, float max_period);

/* Sets the threads used by own kernels and BLAS (<= 0: physical cores). */
void sd_set_threads(int n);
int sd_get_threads(void);

/* Arithmetic of the matrix products (linear, convolution, attention).
 * SD_PREC_FP32, the default ("exact"): F32 operands and accumulation, the
 * results the goldens are checked against. SD_PREC_BF16 ("fast"): both
 * operands rounded to bf16, products accumulated in F32 by the CPU's bf16
 * dot instructions; norms, softmax and element-wise work stay F32. */
typedef enum sd_precision { SD_PREC_FP32 = 0, SD_PREC_BF16 = 1 } sd_precision;

/* 1 when this CPU runs `p` natively (bf16: AVX512_BF16). */
int sd_precision_supported(sd_precision p);
/* Process-wide; SD_ERR_UNSUPPORTED (setting unchanged) when not supported.
 * Not to be changed while a kernel runs. */
int sd_set_precision(sd_precision p);
sd_precision sd_get_precision(void);
const char *sd_precision_name(sd_precision p); /* "fp32" / "bf16" */

/* What "fast" (--precision fast) means on this CPU: the quickest arithmetic
 * it has whose path is tested here, else the exact mode. Today: bf16 where
 * AVX512_BF16 dot products run at twice the fp32 FMA rate (AMD Zen 4/5);
 * fp32 elsewhere (Intel's VDPBF16PS runs at the fp32 FMA rate; the
 * AVX512-FP16 and ARM fp16/bf16 paths are not shipped: no CPU or emulator
 * here runs them). *why (may be NULL) gets a one-line reason. */
sd_precision sd_precision_fast(const char **why);

#endif
