/* Tracked allocation.
 *
 * Every activation and scratch buffer goes through sd_alloc so that the
 * process knows how many bytes it holds (in use, peak) and so tests can make
 * the Nth allocation fail (SQLite-style fault injection). Buffers are 64-byte
 * aligned for vector kernels. Weights are not allocated here: they are views
 * into mapped files (see io/safetensors.h).
 *
 * The counters are process-wide atomics: they describe the process, which is
 * what the memory monitor reports too. */
#ifndef SDGEN_BASE_ALLOC_H
#define SDGEN_BASE_ALLOC_H

#include <stddef.h>
#include <stdint.h>

/* Returns a 64-byte aligned block of `size` bytes or NULL (size 0 gives a
 * valid minimal block). Free with sd_free. */
void *sd_alloc(size_t size);
/* Same, zero-filled. */
void *sd_calloc(size_t count, size_t size);
/* Frees a block from sd_alloc/sd_calloc; NULL is ignored. */
void sd_free(void *p);
/* Duplicates a string through the tracked allocator (NULL on failure). */
char *sd_strdup(const char *s);

typedef struct sd_alloc_stats {
  int64_t bytes_in_use;
  int64_t peak_bytes;
  int64_t allocations; /* successful calls so far */
} sd_alloc_stats;

sd_alloc_stats sd_alloc_get_stats(void);
/* Resets the peak to the current use (start of a new stage). */
void sd_alloc_reset_peak(void);

/* Fault injection: the Nth call to sd_alloc from now on (1-based) fails, and
 * so does every later one while `sticky`; 0 disables. The environment
 * variable SDGEN_FAIL_ALLOC=N sets the same at first use. Returns how many
 * allocation calls were made since the last arm (so a test loop can tell
 * whether a run got as far as N). */
void sd_alloc_fail_at(int64_t n, int sticky);
int64_t sd_alloc_calls_since_arm(void);
int sd_alloc_fault_triggered(void);

/* Plan mode: the same model code runs, but kernels return at once and
 * sd_alloc hands out untouched, lazily-committed address space, so a forward
 * pass costs almost nothing and the tracked peak is the activation peak of
 * the real run. Kernel-internal scratch (weight panels, conv tiles, bounded
 * by the kernels) is not seen, since the kernels return first; the planner
 * adds an allowance for it. Process-wide (it describes what the process
 * would allocate); not for concurrent real work. */
void sd_plan_begin(void);
/* Ends plan mode; returns the tracked peak bytes reached while planning. */
int64_t sd_plan_end(void);
int sd_plan_active(void);

/* Gives freed heap pages back to the operating system (malloc_trim). */
void sd_alloc_trim(void);

#endif
