/* Safetensors files and weight sets.
 *
 * A weight set maps tensor names to read-only views (sd_tensor with
 * owns_data == 0) into memory-mapped safetensors files, in the stored dtype.
 * One set may span several files (sharded checkpoints) and may hold aliases:
 * single-file checkpoints are mapped to diffusers names by adding views under
 * new names, without copying data.
 *
 * Headers are validated strictly before any view is handed out: header length
 * within the file, valid JSON, known dtypes, offsets inside the data region,
 * sizes equal to numel * dtype size, no two tensors overlapping. */
#ifndef SDGEN_IO_SAFETENSORS_H
#define SDGEN_IO_SAFETENSORS_H

#include <stdint.h>

#include "base/status.h"
#include "tensor/tensor.h"

typedef struct sd_weights sd_weights;

/* Creates an empty set. Returns NULL on allocation failure. */
sd_weights *sd_weights_new(void);

/* Maps one .safetensors file and adds all its tensors (names as stored,
 * prefixed with `prefix` if non-NULL). Fails with SD_ERR_IO / SD_ERR_FORMAT
 * and a message naming the file. A duplicate name is a format error. */
int sd_weights_add_file(sd_weights *w, const char *path, const char *prefix,
                        sd_error *err);

/* Validates a safetensors header held in memory (`file_size` bytes total,
 * the first `avail` of which are in buf). Used by the loader and by fuzzing.
 * Returns SD_OK or SD_ERR_FORMAT. */
int sd_safetensors_check(const unsigned char *buf, uint64_t avail,
                         uint64_t file_size, sd_error *err);

/* Opens `path`: a .safetensors file, or a *.safetensors.index.json shard
 * index (every shard it names is added). *out is a new set. */
int sd_weights_open(sd_weights **out, const char *path, sd_error *err);

/* Adds an alias: `name` refers to the same view as `existing` in `src`
 * (which may be w itself). The files stay mapped while any set refers to
 * them. Returns SD_ERR_ARG if `existing` is absent. */
int sd_weights_alias(sd_weights *w, const char *name, const sd_weights *src,
                     const char *existing, sd_error *err);

/* Adds `t` (from sd_tensor_new_dtype, any dtype) under `name`; the set takes
 * ownership, also on failure, and frees it when the last set referring to it
 * (through aliases) is freed. Used where a layout needs a converted copy,
 * e.g. a transposed projection. */
int sd_weights_put_owned(sd_weights *w, const char *name, sd_tensor *t,
                         sd_error *err);

/* Adds `name` as a view of rows [row_begin, row_begin + rows) of dimension 0
 * of `existing` in `src`, without copying (e.g. q/k/v out of a fused
 * in_proj_weight). SD_ERR_ARG if absent or the rows fall outside. */
int sd_weights_alias_rows(sd_weights *w, const char *name, const sd_weights *src,
                          const char *existing, int64_t row_begin, int64_t rows,
                          sd_error *err);

/* LoRA application (io/lora.h), in place on an existing entry, so that
 * models holding pointers to the entry see the change:
 *  - set_side: the entry's view gets `side` (NULL clears it); the terms must
 *    outlive the set's use.
 *  - replace_owned: the entry becomes `t` (owned by the set from now on, also
 *    on failure; no side path); the old data is no longer referenced by
 *    this entry.
 * SD_ERR_ARG when `name` is absent. */
int sd_weights_set_side(sd_weights *w, const char *name, const struct sd_lowrank *side,
                        sd_error *err);
int sd_weights_replace_owned(sd_weights *w, const char *name, sd_tensor *t, sd_error *err);

/* Looks up a tensor; NULL when absent. The view lives as long as the set. */
const sd_tensor *sd_weights_get(const sd_weights *w, const char *name);

/* printf-style lookup: sd_weights_getf(w, "down_blocks.%d.attentions.%d", i, j). */
const sd_tensor *sd_weights_getf(const sd_weights *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Looks up a tensor that must exist and, if ndim > 0, have exactly the given
 * shape (entries < 0 match any size). On failure sets a message naming the
 * tensor and returns SD_ERR_FORMAT. */
int sd_weights_need(const sd_weights *w, const char *name, int ndim,
                    const int64_t *shape, const sd_tensor **out, sd_error *err);

/* Number of tensors and positional access (for iteration, key mapping). */
int sd_weights_count(const sd_weights *w);
const char *sd_weights_name_at(const sd_weights *w, int i);
const sd_tensor *sd_weights_tensor_at(const sd_weights *w, int i);

/* 1 if any tensor name starts with prefix. */
int sd_weights_has_prefix(const sd_weights *w, const char *prefix);

/* Total bytes of all distinct tensors' stored data. */
uint64_t sd_weights_total_bytes(const sd_weights *w);

/* Tells the OS the mapped pages are no longer needed (madvise DONTNEED) so
 * resident memory drops while the set stays usable (pages fault back in). */
void sd_weights_release_pages(sd_weights *w);

/* Unmaps files no longer referenced by any set, frees the set. NULL ok. */
void sd_weights_free(sd_weights *w);

#endif
