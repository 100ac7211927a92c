/* The ARM64 (NEON) descriptor of the F32 product (gemm_f32_neon.c). Like
 * gemm_f32_core.*, the kernel file depends on the C library alone, so it
 * cross-compiles with its test (tests/arm/test_gemm_neon.c). */
#ifndef SDGEN_TENSOR_GEMM_F32_NEON_H
#define SDGEN_TENSOR_GEMM_F32_NEON_H

#include "tensor/gemm_f32_core.h"

#if defined(__aarch64__)
#define SD_GEMM_HAVE_NEON 1
extern const sd_gemm_kernel_desc sd_gemm_desc_neon;
#else
#define SD_GEMM_HAVE_NEON 0
#endif

#endif
