/* Per-op-class profiler for the kernels of ops.h.
 *
 * Every public op opens a scope at entry (after the plan-mode check) with
 * SD_PROFILE_OP(class, flops, bytes); the scope closes on every return path
 * (GNU cleanup attribute), so a kernel needs one line, not one per return.
 *
 * Cost when disabled (the default): one load and one predictable branch at
 * entry, one at exit; the FLOP/byte expressions are not evaluated.
 *
 * Only the outermost op is recorded: an op called by another op (sd_conv2d
 * calling sd_conv2d_pad4, a model helper nesting ops) adds nothing of its
 * own. Ops run on the main thread with OpenMP inside, so the nesting depth is
 * a plain counter touched only outside parallel regions; an op entered from
 * inside a parallel region is not recorded at all.
 *
 * FLOPs are analytic, from the shapes (a multiply-add counts 2): conv
 * 2*OC*C*KH*KW*OH*OW*N, GEMM 2*M*N*K, attention 4*B*heads*Lq*Lk*head_dim.
 * Bytes are the minimum traffic: every input read once, the output written
 * once (weights at their stored width). */
#ifndef SDGEN_TENSOR_PROFILE_H
#define SDGEN_TENSOR_PROFILE_H

#include <stdint.h>

#include "tensor/tensor.h"

typedef enum sd_op_class {
  SD_OPC_CONV3X3 = 0,
  SD_OPC_GEMM,       /* linear, GEMM, 1x1 convolution */
  SD_OPC_CONV_OTHER, /* every other kernel size */
  SD_OPC_ATTENTION,
  SD_OPC_NORM,
  SD_OPC_ELEMENTWISE, /* activations, add/mul/scale, geglu, bias */
  SD_OPC_DATA,        /* layout transposes, upsample, concat, copies */
  SD_OPC_COUNT
} sd_op_class;

typedef struct sd_op_stats {
  int64_t calls;
  double seconds;
  double flops;
  double bytes;
} sd_op_stats;

/* Short stable name ("conv3x3", "gemm", ...), used in tables and JSON. */
const char *sd_op_class_name(sd_op_class c);

/* Process-wide switch; not to be flipped while an op runs. */
void sd_profile_enable(int on);
int sd_profile_enabled(void);
/* Zeroes the counters (the switch is unchanged). */
void sd_profile_reset(void);
/* Copies the counters of every class into out[SD_OPC_COUNT]. */
void sd_profile_read(sd_op_stats *out);

/* ---- kernel side ---- */

/* t0 > 0: outermost op, start time; t0 < 0: nested op (depth counted);
 * t0 == 0: not recorded. */
typedef struct sd_prof_scope {
  double t0;
  double flops, bytes;
  sd_op_class cls;
} sd_prof_scope;

extern int sd_profile_on_;

sd_prof_scope sd_prof_begin(sd_op_class cls, double flops, double bytes);
void sd_prof_finish(sd_prof_scope *s);
/* Class, FLOPs and bytes of a convolution from its arguments. */
sd_prof_scope sd_prof_begin_conv(int N, int C, int H, int W, const sd_tensor *weight, int stride,
                                 int pad_h, int pad_w);

static inline void sd_prof_scope_end(sd_prof_scope *s) {
  if (s->t0 != 0.0) sd_prof_finish(s);
}

#if defined(__GNUC__)
#define SD_PROFILE_SCOPE(begin_expr)                                         \
  sd_prof_scope sd_prof_scope_ __attribute__((cleanup(sd_prof_scope_end))) = \
      (sd_profile_on_ ? (begin_expr) : (sd_prof_scope){0})
#else
#define SD_PROFILE_SCOPE(begin_expr) ((void)0)
#endif

#define SD_PROFILE_OP(cls, flops, bytes) \
  SD_PROFILE_SCOPE(sd_prof_begin((cls), (double)(flops), (double)(bytes)))

#endif
