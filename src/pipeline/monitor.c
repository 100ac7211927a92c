#define _GNU_SOURCE
#include "pipeline/monitor.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "base/alloc.h"

double sd_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void sd_monitor_init(sd_monitor *m, sd_event_cb cb, void *user) {
  memset(m, 0, sizeof *m);
  m->t0 = sd_now();
  m->cb = cb;
  m->user = user;
}

double sd_monitor_elapsed(const sd_monitor *m) { return sd_now() - m->t0; }

void sd_monitor_format(const sd_stage_record *r, char *buf, int n) {
  char a[32], b[32], c[32];
  double pct = r->mem.sys_total > 0 ? 100.0 * (double)r->mem.sys_used / (double)r->mem.sys_total
                                    : 0.0;
  snprintf(buf, (size_t)n, "\xF0\x9F\x92\xBE Memory [%s]: Process=%s, System=%s/%s (%.1f%%)",
           r->label, sd_format_size(r->mem.rss, a, sizeof a),
           sd_format_size(r->mem.sys_used, b, sizeof b),
           sd_format_size(r->mem.sys_total, c, sizeof c), pct);
}

void sd_monitor_stage(sd_monitor *m, const char *label) {
  sd_stage_record r;
  memset(&r, 0, sizeof r);
  snprintf(r.label, sizeof r.label, "%s", label);
  r.seconds = sd_monitor_elapsed(m);
  sd_mem_probe(&r.mem);
  r.tracked_peak = sd_alloc_get_stats().peak_bytes;
  /* Each record's peak covers the interval since the previous record, so a
   * stage's measured peak can be set against its predicted one. */
  sd_mem_reset_peak();
  sd_alloc_reset_peak();
  if (m->nrec < SD_MONITOR_MAX_RECORDS) m->rec[m->nrec++] = r;
  if (m->cb) {
    char line[256];
    sd_monitor_format(&r, line, sizeof line);
    m->cb(SD_EVENT_MEMORY, line, &r, m->user);
  }
}

static void emit(sd_monitor *m, sd_event_kind kind, char *store, size_t cap, int *count,
                 int max, const char *fmt, va_list ap) {
  char text[256];
  vsnprintf(text, sizeof text, fmt, ap);
  if (store && *count < max) snprintf(store + cap * (size_t)(*count)++, cap, "%s", text);
  if (m->cb) m->cb(kind, text, NULL, m->user);
}

void sd_monitor_cleanup(sd_monitor *m, const char *what) {
  sd_alloc_trim();
  if (m->cb) m->cb(SD_EVENT_CLEANUP, what, NULL, m->user);
}

#define NOTE(kind, arr, cnt)                                                           \
  va_list ap;                                                                          \
  va_start(ap, fmt);                                                                   \
  emit(m, kind, arr ? &arr[0][0] : NULL, sizeof arr[0], &cnt, SD_MONITOR_MAX_NOTES, fmt, \
       ap);                                                                            \
  va_end(ap)

void sd_monitor_warn(sd_monitor *m, const char *fmt, ...) {
  NOTE(SD_EVENT_WARNING, m->warnings, m->nwarn);
}
void sd_monitor_optimization(sd_monitor *m, const char *fmt, ...) {
  NOTE(SD_EVENT_OPTIMIZATION, m->optimizations, m->nopt);
}
void sd_monitor_recovered(sd_monitor *m, const char *fmt, ...) {
  NOTE(SD_EVENT_WARNING, m->recovered, m->nrecovered);
}
void sd_monitor_info(sd_monitor *m, const char *fmt, ...) {
  char text[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  if (m->cb) m->cb(SD_EVENT_INFO, text, NULL, m->user);
}

cJSON *sd_monitor_to_json(const sd_monitor *m) {
  cJSON *o = cJSON_CreateObject();
  if (!o) return NULL;
  cJSON *recs = cJSON_AddArrayToObject(o, "stages");
  for (int i = 0; recs && i < m->nrec; i++) {
    const sd_stage_record *r = &m->rec[i];
    cJSON *e = cJSON_CreateObject();
    if (!e) break;
    cJSON_AddStringToObject(e, "label", r->label);
    cJSON_AddNumberToObject(e, "seconds", r->seconds);
    cJSON_AddNumberToObject(e, "process_rss_bytes", (double)r->mem.rss);
    cJSON_AddNumberToObject(e, "process_peak_rss_bytes", (double)r->mem.peak_rss);
    cJSON_AddNumberToObject(e, "tracked_peak_bytes", (double)r->tracked_peak);
    cJSON_AddNumberToObject(e, "system_used_bytes", (double)r->mem.sys_used);
    cJSON_AddNumberToObject(e, "system_total_bytes", (double)r->mem.sys_total);
    cJSON_AddNumberToObject(e, "system_available_bytes", (double)r->mem.sys_available);
    cJSON_AddItemToArray(recs, e);
  }
  cJSON *w = cJSON_AddArrayToObject(o, "warnings");
  for (int i = 0; w && i < m->nwarn; i++)
    cJSON_AddItemToArray(w, cJSON_CreateString(m->warnings[i]));
  cJSON *rf = cJSON_AddArrayToObject(o, "recovered_failures");
  for (int i = 0; rf && i < m->nrecovered; i++)
    cJSON_AddItemToArray(rf, cJSON_CreateString(m->recovered[i]));
  return o;
}
