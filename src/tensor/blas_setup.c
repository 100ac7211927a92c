/* See blas_setup.h for why sdgen overrides OpenBLAS's CPU detection. */
#define _GNU_SOURCE
#include "tensor/blas_setup.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/cpu.h"

#ifndef SDGEN_ACCELERATE
#include <cblas.h>
#endif

const char *sd_blas_kernel_name(void) {
#ifdef SDGEN_ACCELERATE
  return "Accelerate";
#else
  const char *name = openblas_get_corename();
  return name ? name : "unknown";
#endif
}

/* OpenBLAS kernel families that use 512-bit registers. */
static int is_avx512_kernel(const char *name) {
  static const char *const wide[] = {"SkylakeX", "Cooperlake", "SapphireRapids"};
  for (size_t i = 0; i < sizeof wide / sizeof wide[0]; i++)
    if (name && strcmp(name, wide[i]) == 0) return 1;
  return 0;
}

void sd_blas_select_kernels(char **argv) {
#if defined(SDGEN_ACCELERATE) || !defined(__linux__) || !defined(__x86_64__)
  (void)argv;
#else
  if (!argv || !argv[0] || getenv("OPENBLAS_CORETYPE")) return;
  const char *off = getenv("SDGEN_NO_BLAS_REEXEC");
  if (off && *off && strcmp(off, "0") != 0) return;
  const sd_cpu_features *cpu = sd_cpu();
  if (!cpu->avx512 || is_avx512_kernel(openblas_get_corename())) return;
  if (setenv("OPENBLAS_CORETYPE", cpu->avx512_bf16 ? "Cooperlake" : "SkylakeX", 1) != 0)
    return;
  execv("/proc/self/exe", argv);
  /* exec failed (no /proc): carry on with the kernels we have. */
  unsetenv("OPENBLAS_CORETYPE");
#endif
}
