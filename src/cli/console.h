/* Console rendering for the CLI: stage/memory lines, a progress bar with
 * ETA on a terminal (plain lines otherwise), errors. */
#ifndef SDGEN_CLI_CONSOLE_H
#define SDGEN_CLI_CONSOLE_H

#include <stdint.h>

typedef struct console {
  int quiet, verbose, tty;
  int show_plan; /* --dry-run: the plan is the output */
  int last_step_printed;
} console;

void console_init(console *c, int quiet, int verbose);
/* sdgen_params.on_event */
void console_event(int kind, const char *text, void *user);
/* sdgen_params.on_progress */
int console_progress(int step, int total, double elapsed_s, void *user);
/* sdgen_params.on_download */
int console_download(void *user, const char *file, int64_t done, int64_t total, double rate);

#endif
