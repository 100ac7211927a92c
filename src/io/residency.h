/* Residency of memory-mapped weights.
 *
 * Weights are views into read-only private file mappings. Touching them
 * faults pages in from the page cache and counts them in our RSS; dropping
 * them (madvise MADV_DONTNEED) takes them out of RSS while the page cache
 * keeps the data, so a later touch is a cheap minor fault. "Streaming"
 * weights is this: release each block's weights after the block ran, so at
 * any time only one block is resident. */
#ifndef SDGEN_IO_RESIDENCY_H
#define SDGEN_IO_RESIDENCY_H

#include "tensor/tensor.h"

/* Drops the pages holding t's data from the process (no-op for owned or
 * NULL tensors; data stays readable). */
void sd_tensor_release_pages(const sd_tensor *t);
/* The same for n tensors (a layer's weights); NULL entries are skipped. */
void sd_tensors_release_pages(const sd_tensor *const *t, int n);

#endif
