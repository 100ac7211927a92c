#define _GNU_SOURCE
#include "base/memprobe.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__APPLE__)
#include <mach/mach.h>
#include <sys/sysctl.h>
#endif

#if defined(__linux__)
/* Reads "Key:   123 kB" from a /proc file; -1 if absent. */
static int64_t proc_kb(const char *path, const char *key) {
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  char line[256];
  size_t kl = strlen(key);
  int64_t v = -1;
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
      v = strtoll(line + kl + 1, NULL, 10) * 1024;
      break;
    }
  }
  fclose(f);
  return v;
}

static int64_t read_number_file(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  char buf[64] = {0};
  int64_t v = -1;
  if (fgets(buf, sizeof buf, f) && isdigit((unsigned char)buf[0])) v = strtoll(buf, NULL, 10);
  fclose(f); /* "max" (no limit) stays -1 */
  return v;
}
#endif

void sd_mem_probe(sd_mem_sample *s) {
  memset(s, 0, sizeof *s);
  s->rss = s->peak_rss = s->sys_total = s->sys_used = s->sys_available = -1;
#if defined(__linux__)
  s->rss = proc_kb("/proc/self/status", "VmRSS");
  s->peak_rss = proc_kb("/proc/self/status", "VmHWM");
  s->sys_total = proc_kb("/proc/meminfo", "MemTotal");
  s->sys_available = proc_kb("/proc/meminfo", "MemAvailable");
  if (s->sys_total > 0 && s->sys_available >= 0) s->sys_used = s->sys_total - s->sys_available;
  int64_t limit = read_number_file("/sys/fs/cgroup/memory.max");
  int64_t usage = read_number_file("/sys/fs/cgroup/memory.current");
  if (limit > 0 && usage >= 0 && (s->sys_total < 0 || limit < s->sys_total)) {
    s->sys_total = limit;
    s->sys_used = usage;
    s->sys_available = limit > usage ? limit - usage : 0;
    s->limited_by_cgroup = 1;
  }
#elif defined(__APPLE__)
  struct mach_task_basic_info info;
  mach_msg_type_number_t count = MACH_TASK_BASIC_INFO_COUNT;
  if (task_info(mach_task_self(), MACH_TASK_BASIC_INFO, (task_info_t)&info, &count) ==
      KERN_SUCCESS) {
    s->rss = (int64_t)info.resident_size;
    s->peak_rss = (int64_t)info.resident_size_max;
  }
  int64_t mem = 0;
  size_t len = sizeof mem;
  if (sysctlbyname("hw.memsize", &mem, &len, NULL, 0) == 0) s->sys_total = mem;
  vm_statistics64_data_t vm;
  count = HOST_VM_INFO64_COUNT;
  if (host_statistics64(mach_host_self(), HOST_VM_INFO64, (host_info64_t)&vm, &count) ==
      KERN_SUCCESS) {
    int64_t page = (int64_t)vm_kernel_page_size;
    s->sys_available = ((int64_t)vm.free_count + vm.inactive_count + vm.purgeable_count) * page;
    if (s->sys_total > 0) s->sys_used = s->sys_total - s->sys_available;
  }
#endif
}

int sd_mem_reset_peak(void) {
#if defined(__linux__)
  FILE *f = fopen("/proc/self/clear_refs", "w");
  if (!f) return -1;
  int ok = fputs("5", f) >= 0;
  return (fclose(f) == 0 && ok) ? 0 : -1;
#else
  return -1;
#endif
}

int64_t sd_parse_size(const char *s) {
  if (!s || !*s) return -1;
  char *end;
  double v = strtod(s, &end);
  if (end == s || v < 0) return -1;
  while (*end == ' ') end++;
  double mult = 1;
  switch (toupper((unsigned char)*end)) {
  case 0: break;
  case 'B': mult = 1; end++; break;
  case 'K': mult = 1024.0; end++; break;
  case 'M': mult = 1024.0 * 1024; end++; break;
  case 'G': mult = 1024.0 * 1024 * 1024; end++; break;
  case 'T': mult = 1024.0 * 1024 * 1024 * 1024; end++; break;
  default: return -1;
  }
  if (*end == 'i' || *end == 'I') end++;
  if (*end == 'B' || *end == 'b') end++;
  if (*end) return -1;
  double bytes = v * mult;
  if (bytes > 9.0e18) return -1;
  return (int64_t)bytes;
}

const char *sd_format_size(int64_t bytes, char *buf, int n) {
  double b = (double)bytes;
  if (bytes < 0)
    snprintf(buf, (size_t)n, "?");
  else if (b >= 1024.0 * 1024 * 1024)
    snprintf(buf, (size_t)n, "%.1fGB", b / (1024.0 * 1024 * 1024));
  else
    snprintf(buf, (size_t)n, "%.0fMB", b / (1024.0 * 1024));
  return buf;
}
