#include "cli/commands.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "base/memprobe.h"
#include "io/hub.h"

static int print_repo(void *user, const sd_hub_cached_repo *r) {
  char size[32];
  int *count = user;
  (*count)++;
  printf("%-52s %9s  %-12s %s%s\n", r->repo, sd_format_size(r->size_bytes, size, sizeof size),
         r->pipeline[0] ? r->pipeline : "-", r->complete ? "complete" : "incomplete",
         r->partial_bytes > 0 ? " (partial download, resumable)" : "");
  return 0;
}

int cmd_list_models(const sdgen_params *p, console *con) {
  sd_hub_options ho = sd_hub_default_options();
  ho.offline = 1;
  char dir[4096];
  sd_error err = {0};
  if (sd_hub_cache_dir(&ho, dir, sizeof dir, &err)) {
    fprintf(stderr, "error: %s\n", err.msg);
    return 1;
  }
  printf("Hugging Face cache: %s\n", dir);
  printf("%-52s %9s  %-12s %s\n", "model", "size", "pipeline", "state");
  int count = 0;
  if (sd_hub_list_cached(&ho, print_repo, &count, &err)) {
    fprintf(stderr, "error: %s\n", err.msg);
    return 1;
  }
  if (!count) printf("(no models yet: generate --download ORG/NAME)\n");
  return 0;
}

int cmd_download(const char *model, const sdgen_params *p, console *con) {
  sd_hub_options ho = sd_hub_default_options();
  ho.offline = p->offline;
  ho.progress = con->quiet ? NULL : sd_hub_progress_stderr;
  char path[4096];
  sd_error err = {0};
  if (sd_hub_download(model, &ho, path, sizeof path, &err)) {
    fprintf(stderr, "error: %s\n", err.msg);
    return 1;
  }
  printf("%s\n", path);
  return 0;
}

int cmd_decode(const char *latents_file, const sdgen_params *p, console *con) {
  sdgen_params q = *p;
  q.prompt = q.prompt ? q.prompt : "";
  q.on_event = console_event;
  q.on_progress = console_progress;
  q.user = con;
  sdgen_ctx *ctx;
  if (sdgen_ctx_new(&ctx)) {
    fprintf(stderr, "error: out of memory\n");
    return 1;
  }
  sdgen_result res;
  int rc = sdgen_decode(ctx, &q, latents_file, &res);
  if (rc) fprintf(stderr, "error: %s\n", sdgen_last_error(ctx));
  for (int i = 0; !rc && i < res.count; i++) printf("%s\n", res.images[i]);
  sdgen_ctx_free(ctx);
  return rc ? 1 : 0;
}

int cmd_bench(const sdgen_params *p, const char *json_path, console *con) {
  (void)con;
  sdgen_ctx *ctx;
  if (sdgen_ctx_new(&ctx)) {
    fprintf(stderr, "error: out of memory\n");
    return 1;
  }
  int rc = sdgen_bench(ctx, p, json_path, stdout);
  if (rc) fprintf(stderr, "error: %s\n", sdgen_last_error(ctx));
  sdgen_ctx_free(ctx);
  return rc ? 1 : 0;
}
