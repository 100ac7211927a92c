/* Command-line helpers shared by `generate serve` and `generate worker`. */
#ifndef SDGEN_SERVER_OPTIONS_H
#define SDGEN_SERVER_OPTIONS_H

#include <stdint.h>

#include "server/models.h"

/* "4G", "600M", "1024K", "123" bytes; -1 on a bad value. */
int64_t srv_parse_size(const char *s);
/* Integer in [lo, hi]; prints "error: OPT ..." and returns -1 on a bad value. */
int srv_parse_int(const char *opt, const char *v, long lo, long hi, long *out);

/* Options of both serve and worker: --model-dir, --lora-dir, --model,
 * --allow-paths, --threads, --max-memory, --max-models. */
typedef struct srv_common {
  srv_models models;
  const char *model;
  long threads;
  int64_t max_memory;
  long max_models; /* -1: the engine's default */
} srv_common;

/* 1 when argv[*i] is a common option (*i then points at its value), 0 when
 * not, -1 after printing the error of a bad or missing value. */
int srv_common_option(int argc, char **argv, int *i, srv_common *c);

#endif
