#include "cli/commands.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "sdgen.h"

static int print_model(void *user, const sdgen_model_entry *m) {
  char size[32];
  int *count = user;
  (*count)++;
  printf("%-52s %9s  %-12s %s%s\n", m->name, sdgen_format_size(m->size_bytes, size, sizeof size),
         m->pipeline[0] ? m->pipeline : "-", m->complete ? "complete" : "incomplete",
         m->partial_bytes > 0 ? " (partial download, resumable)" : "");
  return 0;
}

static int fail_ctx(sdgen_ctx *ctx) {
  fprintf(stderr, "error: %s\n", sdgen_last_error(ctx));
  sdgen_ctx_free(ctx);
  return 1;
}

static sdgen_ctx *new_ctx(void) {
  sdgen_ctx *ctx = NULL;
  if (sdgen_ctx_new(&ctx)) fprintf(stderr, "error: out of memory\n");
  return ctx;
}

int cmd_list_models(const sdgen_params *p, console *con) {
  (void)p;
  (void)con;
  sdgen_ctx *ctx = new_ctx();
  if (!ctx) return 1;
  char dir[4096];
  if (sdgen_hub_cache_dir(ctx, dir, sizeof dir)) return fail_ctx(ctx);
  printf("Hugging Face cache: %s\n", dir);
  printf("%-52s %9s  %-12s %s\n", "model", "size", "pipeline", "state");
  int count = 0;
  if (sdgen_list_models(ctx, NULL, 0, print_model, &count)) return fail_ctx(ctx);
  if (!count) printf("(no models yet: generate --download ORG/NAME)\n");
  sdgen_ctx_free(ctx);
  return 0;
}

int cmd_download(const char *model, const sdgen_params *p, console *con) {
  sdgen_params q = *p;
  q.on_download = con->quiet ? NULL : sdgen_print_download_progress;
  q.user = NULL;
  sdgen_ctx *ctx = new_ctx();
  if (!ctx) return 1;
  char path[4096];
  if (sdgen_download(ctx, &q, model, path, sizeof path)) return fail_ctx(ctx);
  printf("%s\n", path);
  sdgen_ctx_free(ctx);
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
  sdgen_result_free(&res);
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
