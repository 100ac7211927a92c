/* Writing safetensors files too large to hold in memory (full-size
 * random-weight models: the SD3.5 Large transformer is 16 GB in BF16).
 *
 * The caller describes every tensor up front (name, dtype, shape) so the
 * header can be written first; then the writer asks for the bytes of one
 * tensor at a time through a callback, into one reusable buffer sized for
 * the largest tensor, and appends them. Peak memory is therefore one
 * tensor, not the file. Like sd_safetensors_write, the file is written
 * under a temporary name in the same folder and renamed when complete, so
 * a failure or a crash never leaves a half-written file under `path`.
 *
 * Usage:
 *   sd_stream_tensor t[2] = {{"a.weight", SD_F16, 2, {320, 4}},
 *                            {"a.bias", SD_F16, 1, {320}}};
 *   rc = sd_safetensors_write_stream(path, t, 2, NULL, fill_fn, ctx, &err);
 * where fill_fn(ctx, i, dst, nbytes, &err) writes tensor i's nbytes. */
#ifndef SDGEN_IO_SAFETENSORS_STREAM_H
#define SDGEN_IO_SAFETENSORS_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "tensor/tensor.h"

typedef struct sd_stream_tensor {
  const char *name;
  sd_dtype dtype;
  int ndim;
  int64_t shape[SD_MAX_DIMS];
} sd_stream_tensor;

/* Fills dst (nbytes, suitably aligned for any dtype) with the data of
 * tensors[index]. Returns SD_OK or a status (with a message in err), which
 * aborts the write. */
typedef int (*sd_tensor_fill_fn)(void *user, int index, void *dst,
                                 size_t nbytes, sd_error *err);

/* Writes the tensors in the order given. metadata_json: NULL or a JSON
 * object text of string values ("__metadata__"). */
int sd_safetensors_write_stream(const char *path,
                                const sd_stream_tensor *tensors, int count,
                                const char *metadata_json,
                                sd_tensor_fill_fn fill, void *user,
                                sd_error *err);

/* Bytes of one described tensor. */
size_t sd_stream_tensor_nbytes(const sd_stream_tensor *t);

#endif
