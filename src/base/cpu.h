/* What the CPU can do, detected once at run time.
 *
 * One binary runs on every x86-64 (and ARM64) machine: kernels pick their
 * code path from these flags, never from compile-time -march. */
#ifndef SDGEN_BASE_CPU_H
#define SDGEN_BASE_CPU_H

typedef struct sd_cpu_features {
  int amd;         /* x86 vendor AMD (decides what is fast, not what runs) */
  int avx2_fma;    /* AVX2 + FMA3 (x86-64-v3) */
  int avx512;      /* AVX-512 F, BW, DQ, VL, with OS support for ZMM state */
  int avx512_bf16; /* VDPBF16PS: bf16 pairs dotted into F32 accumulators */
  int avx512_vnni; /* VPDPBUSD on zmm: u8 x s8 dot into int32 */
  int avx_vnni;    /* the VEX (256-bit) form of VPDPBUSD */
  int avx512_fp16; /* VFMADDPH: fp16 FMA (Sapphire Rapids and later) */
  int amx;         /* AMX tiles with BF16 and INT8, enabled by the OS for us */
  int neon;        /* ARM64 Advanced SIMD */
  int arm_fp16;    /* ARMv8.2 FP16 arithmetic (FMLA .8h) */
  int arm_dotprod; /* ARMv8.2 SDOT/UDOT */
  int arm_bf16;    /* ARMv8.6 BFMMLA / BFDOT */
} sd_cpu_features;

/* Flags of the running CPU (detected on first call; thread-safe after). */
const sd_cpu_features *sd_cpu(void);

/* "avx512 avx512_bf16" style summary for logs and bench JSON; static. */
const char *sd_cpu_describe(void);

#endif
