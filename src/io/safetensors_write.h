/* Writing safetensors files (latents saved before the VAE decode, tools
 * that make random-weight models). Written to a temporary file in the same
 * folder and renamed into place when complete. */
#ifndef SDGEN_IO_SAFETENSORS_WRITE_H
#define SDGEN_IO_SAFETENSORS_WRITE_H

#include "base/status.h"
#include "tensor/tensor.h"

typedef struct sd_named_tensor {
  const char *name;
  const sd_tensor *tensor; /* any dtype, contiguous */
} sd_named_tensor;

/* metadata: NULL or a JSON object text of string values ("__metadata__"). */
int sd_safetensors_write(const char *path, const sd_named_tensor *tensors, int count,
                         const char *metadata_json, sd_error *err);

#endif
