/* Memory monitor: stage records, warnings, optimizations and recovered
 * failures of one generation, reported through a callback as they happen
 * and kept for the image metadata. */
#ifndef SDGEN_PIPELINE_MONITOR_H
#define SDGEN_PIPELINE_MONITOR_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "base/memprobe.h"

#define SD_MONITOR_MAX_RECORDS 64
#define SD_MONITOR_MAX_NOTES 32

typedef enum sd_event_kind {
  SD_EVENT_MEMORY = 0, /* a stage record: "💾 Memory [label]: ..." */
  SD_EVENT_CLEANUP,    /* "🧹 text..." */
  SD_EVENT_OPTIMIZATION, /* "  → text" */
  SD_EVENT_WARNING,    /* "⚠️  WARNING: text" */
  SD_EVENT_INFO,       /* plain progress line */
  SD_EVENT_PLAN,       /* verbose: the memory plan */
} sd_event_kind;

typedef struct sd_stage_record {
  char label[64];
  double seconds; /* since the monitor started */
  sd_mem_sample mem; /* mem.peak_rss: the peak since the previous record */
  int64_t tracked_peak; /* peak of sd_alloc'd bytes since the previous record */
} sd_stage_record;

typedef void (*sd_event_cb)(sd_event_kind kind, const char *text, const sd_stage_record *rec,
                            void *user);

typedef struct sd_monitor {
  double t0;
  sd_stage_record rec[SD_MONITOR_MAX_RECORDS];
  int nrec;
  char warnings[SD_MONITOR_MAX_NOTES][256];
  int nwarn;
  char optimizations[SD_MONITOR_MAX_NOTES][128];
  int nopt;
  char recovered[SD_MONITOR_MAX_NOTES][256];
  int nrecovered;
  sd_event_cb cb;
  void *user;
} sd_monitor;

void sd_monitor_init(sd_monitor *m, sd_event_cb cb, void *user);
/* Probes memory, records it under label, emits SD_EVENT_MEMORY. */
void sd_monitor_stage(sd_monitor *m, const char *label);
/* Frees heap pages back to the OS (malloc_trim) and reports what is freed. */
void sd_monitor_cleanup(sd_monitor *m, const char *what);
void sd_monitor_warn(sd_monitor *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sd_monitor_optimization(sd_monitor *m, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void sd_monitor_recovered(sd_monitor *m, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void sd_monitor_info(sd_monitor *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
double sd_monitor_elapsed(const sd_monitor *m);

/* The metadata "memory" section (without the plan, which the planner adds). */
cJSON *sd_monitor_to_json(const sd_monitor *m);

/* Formats a stage record as the one-line terminal form:
 * "💾 Memory [After model load]: Process=2.8GB, System=9.4GB/24.0GB (39.1%)" */
void sd_monitor_format(const sd_stage_record *r, char *buf, int n);

/* Monotonic seconds. */
double sd_now(void);

#endif
