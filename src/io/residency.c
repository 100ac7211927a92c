#define _GNU_SOURCE
#include "io/residency.h"

#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tensor/lowrank.h"

void sd_tensors_release_pages(const sd_tensor *const *t, int n) {
  for (int i = 0; i < n; i++) sd_tensor_release_pages(t[i]);
}

static void release_range(const sd_tensor *t);

void sd_tensor_release_pages(const sd_tensor *t) {
  if (!t) return;
  /* a LoRA side path streams with its weight */
  for (const sd_lowrank *s = t->side; s; s = s->next) {
    release_range(&s->down);
    release_range(&s->up);
  }
  release_range(t);
}

static void release_range(const sd_tensor *t) {
  if (t->owns_data || !t->data) return;
  static long page;
  if (!page) page = sysconf(_SC_PAGESIZE);
  uintptr_t begin = (uintptr_t)t->data, end = begin + sd_tensor_nbytes(t);
  /* Whole pages covering the tensor; a page shared with a neighbour is
   * dropped too, which is harmless for a clean file-backed mapping. */
  begin &= ~(uintptr_t)(page - 1);
  end = (end + (uintptr_t)page - 1) & ~(uintptr_t)(page - 1);
  if (end > begin) madvise((void *)begin, end - begin, MADV_DONTNEED);
}
