#include "cli/console.h"

#include <stdio.h>
#include <unistd.h>

#include "sdgen.h"

void console_init(console *c, int quiet, int verbose) {
  c->quiet = quiet;
  c->verbose = verbose;
  c->tty = isatty(STDERR_FILENO);
  c->last_step_printed = 0;
  c->show_plan = 0;
}

void console_event(int kind, const char *text, void *user) {
  console *c = user;
  if (kind == SDGEN_EVENT_PLAN) {
    if (c->verbose || c->show_plan) fprintf(stderr, "%s\n", text);
    return;
  }
  if (c->quiet && kind != SDGEN_EVENT_WARNING) return;
  switch (kind) {
  case SDGEN_EVENT_CLEANUP: fprintf(stderr, "\xF0\x9F\xA7\xB9 %s\n", text); break;
  case SDGEN_EVENT_OPTIMIZATION: fprintf(stderr, "  \xE2\x86\x92 %s\n", text); break;
  case SDGEN_EVENT_WARNING: fprintf(stderr, "\xE2\x9A\xA0\xEF\xB8\x8F  WARNING: %s\n", text); break;
  default: fprintf(stderr, "%s\n", text); break;
  }
}

int console_progress(int step, int total, double elapsed, void *user) {
  console *c = user;
  if (c->quiet) return 0;
  double eta = step > 0 ? elapsed / step * (total - step) : 0;
  if (c->tty) {
    int width = 30, filled = total > 0 ? step * width / total : width;
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < filled ? '#' : '-';
    bar[width] = 0;
    fprintf(stderr, "\r  [%s] step %d/%d  %.1fs elapsed, ETA %.1fs ", bar, step, total, elapsed,
            eta);
    if (step == total) fprintf(stderr, "\n");
  } else {
    fprintf(stderr, "step %d/%d (%.1fs elapsed, ETA %.1fs)\n", step, total, elapsed, eta);
  }
  fflush(stderr);
  return 0;
}

int console_download(void *user, const char *file, int64_t done, int64_t total, double rate) {
  console *c = user;
  if (c->quiet) return 0;
  return sdgen_print_download_progress(NULL, file, done, total, rate);
}
