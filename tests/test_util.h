/* Minimal test helpers shared by unit tests: CHECK macros and a closing
 * "N passed, N failed" line. Header-only so each test is one file. */
#ifndef SDGEN_TEST_UTIL_H
#define SDGEN_TEST_UTIL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int t_passed, t_failed;

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (cond) {                                                              \
      t_passed++;                                                            \
    } else {                                                                 \
      t_failed++;                                                            \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                        \
  } while (0)

#define CHECK_MSG(cond, ...)                                                 \
  do {                                                                       \
    if (cond) {                                                              \
      t_passed++;                                                            \
    } else {                                                                 \
      t_failed++;                                                            \
      fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                        \
      fprintf(stderr, __VA_ARGS__);                                          \
      fprintf(stderr, "\n");                                                 \
    }                                                                        \
  } while (0)

/* Relative L2 error ||a - b|| / ||b|| in double. */
static inline double rel_l2(const float *a, const float *b, long n) {
  double num = 0, den = 0;
  for (long i = 0; i < n; i++) {
    double d = (double)a[i] - (double)b[i];
    num += d * d;
    den += (double)b[i] * (double)b[i];
  }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

static inline int test_finish(void) {
  printf("%d passed, %d failed\n", t_passed, t_failed);
  return t_failed ? 1 : 0;
}

#endif
