/* CPU feature detection (see cpu.h). On x86 GCC/Clang's
 * __builtin_cpu_supports reads CPUID and also checks that the OS saves the
 * wide registers (XGETBV), which a raw CPUID test would miss. */
#include "base/cpu.h"

#include <stdio.h>
#include <string.h>

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif
#if defined(__x86_64__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

static sd_cpu_features g_cpu;

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* AMX needs the CPU flags, the OS saving the tile state (XCR0 bits 17-18)
 * and, on Linux, this process's permission (arch_prctl ARCH_REQ_XCOMP_PERM),
 * which is requested here. */
static int amx_enabled(void) {
  if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16") ||
      !__builtin_cpu_supports("amx-int8"))
    return 0;
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & (3u << 17)) != (3u << 17)) return 0;
#if defined(__linux__)
  /* ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 */
  return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
  return 0;
#endif
}
#endif
static int g_detected;
static char g_desc[96];

static void detect(void) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  g_cpu.amd = __builtin_cpu_is("amd");
  g_cpu.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  g_cpu.avx512 = __builtin_cpu_supports("avx512f") &&
                 __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512dq") &&
                 __builtin_cpu_supports("avx512vl");
  g_cpu.avx512_bf16 = g_cpu.avx512 && __builtin_cpu_supports("avx512bf16");
  g_cpu.avx512_vnni = g_cpu.avx512 && __builtin_cpu_supports("avx512vnni");
  g_cpu.avx_vnni = g_cpu.avx2_fma && __builtin_cpu_supports("avxvnni");
  g_cpu.avx512_fp16 = g_cpu.avx512 && __builtin_cpu_supports("avx512fp16");
  g_cpu.amx = amx_enabled();
#elif defined(__aarch64__)
  g_cpu.neon = 1;
#if defined(__linux__)
  unsigned long hw = getauxval(AT_HWCAP);
#ifdef HWCAP_FPHP
  g_cpu.arm_fp16 = (hw & HWCAP_FPHP) && (hw & HWCAP_ASIMDHP);
#endif
#ifdef HWCAP_ASIMDDP
  g_cpu.arm_dotprod = (hw & HWCAP_ASIMDDP) != 0;
#endif
#ifdef HWCAP2_BF16
  g_cpu.arm_bf16 = (getauxval(AT_HWCAP2) & HWCAP2_BF16) != 0;
#endif
#endif
#endif
  snprintf(g_desc, sizeof g_desc, "%s%s%s%s%s%s%s%s%s%s%s",
           g_cpu.avx2_fma ? "avx2 " : "", g_cpu.avx512 ? "avx512 " : "",
           g_cpu.avx512_bf16 ? "avx512_bf16 " : "", g_cpu.avx512_vnni ? "avx512_vnni " : "",
           g_cpu.avx_vnni ? "avx_vnni " : "", g_cpu.avx512_fp16 ? "avx512_fp16 " : "",
           g_cpu.amx ? "amx " : "", g_cpu.neon ? "neon " : "", g_cpu.arm_fp16 ? "fp16 " : "",
           g_cpu.arm_dotprod ? "dotprod " : "", g_cpu.arm_bf16 ? "bf16 " : "");
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
