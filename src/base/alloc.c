#define _GNU_SOURCE
#include "base/alloc.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

/* Each block is preceded by a 64-byte header holding its size, so the
 * payload stays 64-byte aligned and sd_free knows what to subtract. */
#define HEADER 64

static _Atomic int64_t g_in_use;
static _Atomic int64_t g_peak;
static _Atomic int64_t g_count;
static _Atomic int64_t g_calls;
static _Atomic int64_t g_fail_at = -1; /* -1: not yet read from env */
static _Atomic int g_fail_sticky;
static _Atomic int g_fault_hit;
static _Atomic int g_plan;
static int64_t g_plan_saved_in_use, g_plan_saved_peak;

/* The header records the payload size and whether the block is a plan-mode
 * mapping (freed with munmap) or a heap block. */
typedef struct block_header {
  size_t size;
  int mapped;
} block_header;

static void read_env_once(void) {
  int64_t expected = -1;
  if (atomic_load(&g_fail_at) != -1) return;
  const char *s = getenv("SDGEN_FAIL_ALLOC");
  int64_t n = s ? strtoll(s, NULL, 10) : 0;
  if (atomic_compare_exchange_strong(&g_fail_at, &expected, n < 0 ? 0 : n)) {
    const char *st = getenv("SDGEN_FAIL_ALLOC_STICKY");
    atomic_store(&g_fail_sticky, st && *st == '1');
  }
}

static int should_fail(void) {
  read_env_once();
  int64_t call = atomic_fetch_add(&g_calls, 1) + 1;
  int64_t at = atomic_load(&g_fail_at);
  if (at <= 0) return 0;
  if (call == at || (atomic_load(&g_fail_sticky) && call > at)) {
    atomic_store(&g_fault_hit, 1);
    return 1;
  }
  return 0;
}

void *sd_alloc(size_t size) {
  if (should_fail()) return NULL;
  if (size > SIZE_MAX - 2 * HEADER) return NULL;
  size_t total = (size + HEADER + 63) & ~(size_t)63;
  block_header h = {size, 0};
  unsigned char *base;
  if (atomic_load(&g_plan)) {
    /* Address space only: pages are committed when touched, and plan-mode
     * kernels touch nothing. */
    void *m = mmap(NULL, total, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    base = m == MAP_FAILED ? NULL : m;
    h.mapped = 1;
  } else {
    base = aligned_alloc(64, total);
  }
  if (!base) return NULL;
  memcpy(base, &h, sizeof h);
  int64_t now = atomic_fetch_add(&g_in_use, (int64_t)size) + (int64_t)size;
  int64_t peak = atomic_load(&g_peak);
  while (now > peak && !atomic_compare_exchange_weak(&g_peak, &peak, now)) {
  }
  atomic_fetch_add(&g_count, 1);
  return base + HEADER;
}

void *sd_calloc(size_t count, size_t size) {
  if (size && count > SIZE_MAX / size) return NULL;
  void *p = sd_alloc(count * size);
  if (!p) return NULL;
  /* A plan-mode block is fresh anonymous memory, zero already; writing it
   * would commit the pages that plan mode exists not to commit. */
  block_header h;
  memcpy(&h, (unsigned char *)p - HEADER, sizeof h);
  if (!h.mapped) memset(p, 0, count * size);
  return p;
}

void sd_free(void *p) {
  if (!p) return;
  unsigned char *base = (unsigned char *)p - HEADER;
  block_header h;
  memcpy(&h, base, sizeof h);
  atomic_fetch_sub(&g_in_use, (int64_t)h.size);
  if (h.mapped)
    munmap(base, (h.size + HEADER + 63) & ~(size_t)63);
  else
    free(base);
}

char *sd_strdup(const char *s) {
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  char *d = sd_alloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

sd_alloc_stats sd_alloc_get_stats(void) {
  sd_alloc_stats st = {atomic_load(&g_in_use), atomic_load(&g_peak),
                       atomic_load(&g_count)};
  return st;
}

void sd_alloc_reset_peak(void) { atomic_store(&g_peak, atomic_load(&g_in_use)); }

void sd_alloc_fail_at(int64_t n, int sticky) {
  read_env_once();
  atomic_store(&g_fail_at, n < 0 ? 0 : n);
  atomic_store(&g_fail_sticky, sticky);
  atomic_store(&g_calls, 0);
  atomic_store(&g_fault_hit, 0);
}

int64_t sd_alloc_calls_since_arm(void) { return atomic_load(&g_calls); }
int sd_alloc_fault_triggered(void) { return atomic_load(&g_fault_hit); }

void sd_plan_begin(void) {
  g_plan_saved_in_use = atomic_load(&g_in_use);
  g_plan_saved_peak = atomic_load(&g_peak);
  atomic_store(&g_peak, g_plan_saved_in_use);
  atomic_store(&g_plan, 1);
}

int64_t sd_plan_end(void) {
  atomic_store(&g_plan, 0);
  int64_t peak = atomic_load(&g_peak) - g_plan_saved_in_use;
  /* the real run's peak record is not disturbed by planning */
  atomic_store(&g_peak, g_plan_saved_peak);
  return peak;
}

int sd_plan_active(void) { return atomic_load(&g_plan); }

void sd_alloc_trim(void) {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}
