/* The x86 descriptors of the F32 product (gemm_f32_x86.c); only defined on
 * x86-64 GCC/Clang builds, usable only where the CPU has the instructions
 * (gemm_f32.c checks). */
#ifndef SDGEN_TENSOR_GEMM_F32_X86_H
#define SDGEN_TENSOR_GEMM_F32_X86_H

#include "tensor/gemm_f32_core.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SD_GEMM_HAVE_X86 1
extern const sd_gemm_kernel_desc sd_gemm_desc_avx512; /* AVX-512 F/BW/DQ/VL + FMA */
extern const sd_gemm_kernel_desc sd_gemm_desc_avx2;   /* AVX2 + FMA */
#else
#define SD_GEMM_HAVE_X86 0
#endif

#endif
