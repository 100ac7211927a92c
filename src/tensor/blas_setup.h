/* Choosing the BLAS kernels for the CPU we run on. */
#ifndef SDGEN_TENSOR_BLAS_SETUP_H
#define SDGEN_TENSOR_BLAS_SETUP_H

/* OpenBLAS 0.3.21 (Debian 12) does not know AMD Zen 4/5 and runs its AVX2
 * "Haswell" kernels there, at half the speed the AVX-512 kernels reach on
 * the same cores (measured: sgemm 2048^3, one thread, 97 vs 198 GFLOP/s).
 * It picks its kernels in a library constructor, before main, from the
 * OPENBLAS_CORETYPE environment variable. So when the CPU has AVX-512 and
 * OpenBLAS chose a narrower kernel, this sets OPENBLAS_CORETYPE (Cooperlake
 * with AVX512_BF16, else SkylakeX) and re-executes the program once with the
 * same arguments. Call it first thing in main(), before any thread starts.
 * Returns only when nothing needs doing (or the re-exec failed); a user's
 * own OPENBLAS_CORETYPE, or SDGEN_NO_BLAS_REEXEC=1, is always respected. */
void sd_blas_select_kernels(char **argv);

/* OpenBLAS's kernel family name ("Cooperlake", "Haswell"...), or
 * "Accelerate"; for logs and bench JSON. */
const char *sd_blas_kernel_name(void);

#endif
