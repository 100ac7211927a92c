/* The default terminal renderer for hub download progress (see io/hub.h). */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "io/hub.h"

static void format_bytes(char *out, size_t n, double v) {
  static const char *const units[] = {"B", "kB", "MB", "GB", "TB"};
  int u = 0;
  while (v >= 1000 && u < 4) {
    v /= 1000;
    u++;
  }
  snprintf(out, n, u ? "%.1f %s" : "%.0f %s", v, units[u]);
}

int sd_hub_progress_stderr(void *user, const char *file, int64_t done, int64_t total,
                           double bytes_per_s) {
  enum { BAR = 24, NAME = 40 };
  int finished = total >= 0 && done >= total;
  int tty = isatty(STDERR_FILENO);
  /* Without a terminal, redrawing would flood a log: one line per file. */
  if (!tty && !finished) return 0;
  char name[NAME + 4], bar[BAR + 1], d[32], t[32], rate[32], eta[32] = "";
  size_t len = strlen(file);
  if (len <= NAME) {
    snprintf(name, sizeof name, "%s", file);
  } else {
    /* Keep the component folder ("unet/") and the distinctive tail
     * (variant, shard number); drop the middle. */
    const char *slash = strchr(file, '/');
    int head = slash && slash - file < NAME / 3 ? (int)(slash - file) + 1 : 0;
    snprintf(name, sizeof name, "%.*s...%s", head, file, file + len - (NAME - 3 - head));
  }
  int filled = total > 0 ? (int)((double)done / (double)total * BAR) : 0;
  if (filled > BAR) filled = BAR;
  memset(bar, '#', (size_t)filled);
  memset(bar + filled, '-', (size_t)(BAR - filled));
  bar[BAR] = 0;
  format_bytes(d, sizeof d, (double)done);
  if (total >= 0) format_bytes(t, sizeof t, (double)total);
  else snprintf(t, sizeof t, "?");
  format_bytes(rate, sizeof rate, bytes_per_s);
  if (!finished && total > 0 && bytes_per_s > 0) {
    long s = (long)((double)(total - done) / bytes_per_s + 0.5);
    if (s >= 3600) snprintf(eta, sizeof eta, " ETA %ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else snprintf(eta, sizeof eta, " ETA %ld:%02ld", s / 60, s % 60);
  }
  fprintf(stderr, "%s%-*s [%s] %s / %s", tty ? "\r" : "", NAME, name, bar, d, t);
  if (!finished && bytes_per_s > 0) fprintf(stderr, "  %s/s%s", rate, eta);
  fprintf(stderr, "%s%s", tty ? "\033[K" : "", finished ? "\n" : "");
  fflush(stderr);
  return 0;
}
