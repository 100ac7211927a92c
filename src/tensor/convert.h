/* Bulk dtype conversion to F32 (vectorized, chosen at run time for the CPU).
 * Used by sd_tensor_read_f32 and by the kernels that convert weight panels. */
#ifndef SDGEN_TENSOR_CONVERT_H
#define SDGEN_TENSOR_CONVERT_H

#include <stdint.h>

void sd_convert_f16_to_f32(float *dst, const uint16_t *src, int64_t n);
void sd_convert_bf16_to_f32(float *dst, const uint16_t *src, int64_t n);

#endif
