/* Process and system memory probes.
 *
 * Linux: /proc/self/status (VmRSS, VmHWM), /proc/meminfo (MemTotal,
 * MemAvailable), and inside a cgroup v2 container memory.max / memory.current
 * count as the system when they are tighter. macOS: task_info and
 * host_statistics64. All values in bytes; -1 when unknown. */
#ifndef SDGEN_BASE_MEMPROBE_H
#define SDGEN_BASE_MEMPROBE_H

#include <stdint.h>

typedef struct sd_mem_sample {
  int64_t rss;          /* process resident set */
  int64_t peak_rss;     /* process high-water mark (VmHWM) */
  int64_t sys_total;    /* machine or cgroup limit */
  int64_t sys_used;     /* total - available */
  int64_t sys_available;
  int limited_by_cgroup;
} sd_mem_sample;

/* Fills s with the current readings. */
void sd_mem_probe(sd_mem_sample *s);

/* Resets the kernel's peak RSS counter where supported (Linux
 * /proc/self/clear_refs "5"); returns 0 on success. */
int sd_mem_reset_peak(void);

/* Parses "8G", "600M", "1.5GB", "512MiB", "1073741824" into bytes; -1 on
 * error. */
int64_t sd_parse_size(const char *s);

/* Formats bytes as "2.8GB" / "512MB" into buf. */
const char *sd_format_size(int64_t bytes, char *buf, int n);

#endif
