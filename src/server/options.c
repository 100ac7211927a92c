#include "server/options.h"

#include "server/engine.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int64_t srv_parse_size(const char *s) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || v <= 0) return -1;
  double mul = 1;
  switch (*end) {
    case 'K':
    case 'k':
      mul = 1024.0;
      end++;
      break;
    case 'M':
    case 'm':
      mul = 1024.0 * 1024;
      end++;
      break;
    case 'G':
    case 'g':
      mul = 1024.0 * 1024 * 1024;
      end++;
      break;
    case 'T':
    case 't':
      mul = 1024.0 * 1024 * 1024 * 1024;
      end++;
      break;
    default:
      break;
  }
  if (*end == 'B' || *end == 'b') end++;
  if (*end) return -1;
  return (int64_t)(v * mul);
}

int srv_parse_int(const char *opt, const char *v, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long x = v ? strtol(v, &end, 10) : 0;
  if (!v || errno || *end || end == v || x < lo || x > hi) {
    fprintf(stderr, "error: %s expects an integer between %ld and %ld\n", opt, lo, hi);
    return -1;
  }
  *out = x;
  return 0;
}

int srv_common_option(int argc, char **argv, int *i, srv_common *c) {
  const char *a = argv[*i];
  if (!strcmp(a, "--allow-paths")) {
    c->models.allow_paths = 1;
    return 1;
  }
  int dirs = !strcmp(a, "--model-dir"), loras = !strcmp(a, "--lora-dir");
  int model = !strcmp(a, "--model"), threads = !strcmp(a, "--threads");
  int mem = !strcmp(a, "--max-memory"), resident = !strcmp(a, "--max-models");
  if (!dirs && !loras && !model && !threads && !mem && !resident) return 0;
  if (*i + 1 >= argc) {
    fprintf(stderr, "error: %s needs a value\n", a);
    return -1;
  }
  const char *v = argv[++*i];
  if (dirs || loras) {
    int *n = dirs ? &c->models.n_dirs : &c->models.n_lora_dirs;
    if (*n == SRV_MAX_DIRS) {
      fprintf(stderr, "error: at most %d %s\n", SRV_MAX_DIRS, a);
      return -1;
    }
    (dirs ? c->models.dirs : c->models.lora_dirs)[(*n)++] = v;
  } else if (model) {
    c->model = v;
  } else if (threads) {
    if (srv_parse_int(a, v, 0, 1024, &c->threads)) return -1;
  } else if (resident) {
    if (srv_parse_int(a, v, 0, SRV_MAX_RESIDENT, &c->max_models)) return -1;
  } else if ((c->max_memory = srv_parse_size(v)) <= 0) {
    fprintf(stderr, "error: --max-memory expects a size like 4G\n");
    return -1;
  }
  return 1;
}
