/* The machine's physical limits, measured: arithmetic throughput of each
 * kind of multiply-add the CPU has (a loop of independent FMA/dot
 * instructions, nothing else), at one thread and at N threads, and the
 * memory bandwidth (read, and copy, over a buffer far larger than the
 * caches). The bench reports every stage as % of the limit of the arithmetic
 * it used, so the figures carry from one machine to another.
 *
 * Each measurement is the best of a few runs of ~30 ms; the whole probe
 * takes one to three seconds. FLOPs count a multiply-add as 2 (int8 dot
 * products: operations, likewise). */
#ifndef SDGEN_TENSOR_CPU_LIMITS_H
#define SDGEN_TENSOR_CPU_LIMITS_H

#include <stdint.h>

typedef enum sd_limit_kind {
  SD_LIMIT_FP32 = 0, /* fp32 FMA, widest vector the CPU has */
  SD_LIMIT_BF16,     /* bf16 pairs dotted into fp32 (VDPBF16PS) */
  SD_LIMIT_FP16,     /* fp16 FMA (VFMADDPH) */
  SD_LIMIT_INT8,     /* u8 x s8 dot into int32 (VPDPBUSD) */
  SD_LIMIT_COUNT
} sd_limit_kind;

/* One probe: an instruction loop this CPU can run. */
typedef struct sd_limit_probe {
  const char *name;   /* "fp32 avx512 fma", "bf16 avx512 vdpbf16ps", ... */
  sd_limit_kind kind;
  double gflops[2];   /* [0]: 1 thread, [1]: `threads` threads */
} sd_limit_probe;

#define SD_LIMIT_MAX_PROBES 8

typedef struct sd_cpu_limits {
  int threads;
  int nprobes;
  sd_limit_probe probe[SD_LIMIT_MAX_PROBES];
  /* Best probe of each kind (-1: the CPU has none). */
  int best[SD_LIMIT_COUNT];
  double read_gbs[2], copy_gbs[2]; /* copy: bytes read + written */
  int64_t bw_bytes;                /* buffer the bandwidth ran over (0: not run) */
} sd_cpu_limits;

/* Runs every probe this CPU has at 1 and `threads` threads, and the
 * bandwidth over bw_bytes (0: skip it). SD_ERR_OOM when the bandwidth
 * buffer cannot be allocated (the arithmetic limits are filled anyway). */
int sd_cpu_limits_measure(sd_cpu_limits *l, int threads, int64_t bw_bytes);

/* The limit of one kind at 1 (nt_index 0) or N (1) threads; 0 when absent. */
double sd_cpu_limit(const sd_cpu_limits *l, sd_limit_kind k, int nt_index);
const char *sd_cpu_limit_name(const sd_cpu_limits *l, sd_limit_kind k);

#endif
