/* CPU feature detection (see cpu.h). On x86 GCC/Clang's
 * __builtin_cpu_supports reads CPUID and also checks that the OS saves the
 * wide registers (XGETBV), which a raw CPUID test would miss. */
#include "base/cpu.h"

#include <stdio.h>
#include <string.h>

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

static sd_cpu_features g_cpu;
static int g_detected;
static char g_desc[96];

static void detect(void) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  g_cpu.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  g_cpu.avx512 = __builtin_cpu_supports("avx512f") &&
                 __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512dq") &&
                 __builtin_cpu_supports("avx512vl");
  g_cpu.avx512_bf16 = g_cpu.avx512 && __builtin_cpu_supports("avx512bf16");
#elif defined(__aarch64__)
  g_cpu.neon = 1;
#if defined(__linux__) && defined(HWCAP2_BF16)
  g_cpu.arm_bf16 = (getauxval(AT_HWCAP2) & HWCAP2_BF16) != 0;
#endif
#endif
  snprintf(g_desc, sizeof g_desc, "%s%s%s%s%s",
           g_cpu.avx2_fma ? "avx2 " : "", g_cpu.avx512 ? "avx512 " : "",
           g_cpu.avx512_bf16 ? "avx512_bf16 " : "", g_cpu.neon ? "neon " : "",
           g_cpu.arm_bf16 ? "bf16 " : "");
  size_t n = strlen(g_desc);
  if (n && g_desc[n - 1] == ' ') g_desc[n - 1] = 0;
  if (!n) snprintf(g_desc, sizeof g_desc, "baseline");
}

const sd_cpu_features *sd_cpu(void) {
  if (!__atomic_load_n(&g_detected, __ATOMIC_ACQUIRE)) {
    detect();
    __atomic_store_n(&g_detected, 1, __ATOMIC_RELEASE);
  }
  return &g_cpu;
}

const char *sd_cpu_describe(void) {
  sd_cpu();
  return g_desc;
}
