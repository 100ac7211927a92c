/* The resident model handle on the tiny SD 1.5 fixture:
 *   - N generations on one handle give the image sdgen_generate gives for
 *     the same seed (pixel for pixel), files or in memory, under the
 *     resident and the streaming plans, and tracked allocations come back
 *     to the same value after every generation (nothing grows);
 *   - output_in_memory writes nothing and returns PNG bytes with the
 *     `parameters` chunk, the seed, the infotext and the JSON;
 *   - LoRAs per request (list and <lora:> tags): the handle re-binds when
 *     the set changes, and every image equals the one-shot run's;
 *   - two contexts: cancelling one does not touch the other;
 *   - inputs are refused before any load (refiner/img2img strengths that
 *     leave no step);
 *   - sdgen_list_models over a model folder and sdgen_list_loras.
 * usage: test_model_handle [FIXTURES_DIR]   (77: no fixtures) */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/memprobe.h"
#include "io/image.h"
#include "sdgen.h"
#include "test_util.h"

#ifndef SDGEN_FIXTURES_DEFAULT
#define SDGEN_FIXTURES_DEFAULT "../shared/fixtures"
#endif

#define RUNS 6

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

static char g_tmp[256];

static int count_files(const char *dir) {
  DIR *d = opendir(dir);
  int n = 0;
  struct dirent *e;
  while (d && (e = readdir(d)) != NULL)
    if (e->d_name[0] != '.') n++;
  if (d) closedir(d);
  return n;
}

static void empty_dir(const char *dir) {
  DIR *d = opendir(dir);
  struct dirent *e;
  char p[1024];
  while (d && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    unlink(p);
  }
  if (d) closedir(d);
}

/* Pixels of image 0 of a result (from its file, or its PNG bytes). */
static int result_pixels(const sdgen_result *res, sd_image *img) {
  char path[512];
  const char *src = res->images[0];
  if (res->png[0]) {
    snprintf(path, sizeof path, "%s/mem.png", g_tmp);
    FILE *f = fopen(path, "wb");
    if (!f) return 1;
    int ok = fwrite(res->png[0], 1, res->png_size[0], f) == res->png_size[0];
    fclose(f);
    if (!ok) return 1;
    src = path;
  }
  sd_error err = {0};
  int rc = sd_image_read(src, img, &err);
  if (res->png[0]) unlink(path);
  return rc;
}

static int same_pixels(const sd_image *a, const sd_image *b) {
  return a->width == b->width && a->height == b->height && a->channels == b->channels &&
         memcmp(a->data, b->data, (size_t)a->width * a->height * a->channels) == 0;
}

typedef struct cancel_probe {
  sdgen_ctx *other; /* cancelled from this run's progress callback */
  sdgen_ctx *self_cancel;
  int steps_seen;
} cancel_probe;

static int on_progress(int step, int total, double elapsed, void *user) {
  (void)total;
  (void)elapsed;
  cancel_probe *c = user;
  c->steps_seen = step;
  if (c->other) sdgen_cancel(c->other);
  if (c->self_cancel) sdgen_cancel(c->self_cancel);
  return 0;
}

static int list_cb(void *user, const sdgen_model_entry *m) {
  char *seen = user;
  if (strcmp(m->source, "dir") == 0) {
    strcat(seen, m->name);
    strcat(seen, ":");
    strcat(seen, m->pipeline);
    strcat(seen, ";");
  }
  return 0;
}

static int lora_cb(void *user, const char *name, const char *path) {
  int *n = user;
  (*n)++;
  CHECK_MSG(strstr(path, name) != NULL, "LoRA %s listed with path %s", name, path);
  return 0;
}

int main(int argc, char **argv) {
  const char *fx = argc > 1 ? argv[1] : getenv("SDGEN_FIXTURES");
  if (!fx) fx = SDGEN_FIXTURES_DEFAULT;
  char model[512];
  snprintf(model, sizeof model, "%s/sd15", fx);
  struct stat st;
  if (stat(model, &st) != 0) {
    fprintf(stderr, "SKIP: fixtures not found at %s\n", fx);
    return 77;
  }
  snprintf(g_tmp, sizeof g_tmp, "/tmp/sdgen_handle_XXXXXX");
  if (!mkdtemp(g_tmp)) return 1;
  char out_dir[300];
  snprintf(out_dir, sizeof out_dir, "%s/out", g_tmp);

  sdgen_ctx *ctx, *ctx2;
  if (sdgen_ctx_new(&ctx) || sdgen_ctx_new(&ctx2)) return 1;
  sdgen_params p = sdgen_default_params();
  p.prompt = "a lighthouse";
  p.model = model;
  p.width = p.height = 64;
  p.steps = 2;
  p.threads = 1;
  p.seed = 1234;
  p.output_dir = out_dir;
  cancel_probe probe = {0};
  p.on_progress = on_progress;
  p.user = &probe;

  /* the one-shot reference */
  sdgen_result res;
  int rc = sdgen_generate(ctx, &p, &res);
  CHECK_MSG(rc == 0, "sdgen_generate: %s", sdgen_last_error(ctx));
  sd_image ref = {0};
  CHECK(rc == 0 && res.count == 1 && result_pixels(&res, &ref) == 0);
  CHECK(res.seeds[0] == 1234);
  CHECK(res.infotext[0] && strstr(res.infotext[0], "Seed: 1234") &&
        strstr(res.infotext[0], "Model: sd15,"));
  CHECK(res.metadata_json[0] && strstr(res.metadata_json[0], "\"seed\""));
  CHECK(res.png[0] == NULL);
  sdgen_result_free(&res);
  empty_dir(out_dir);

  /* N generations on one handle */
  sdgen_model *m = NULL;
  rc = sdgen_model_load(ctx, &p, &m);
  CHECK_MSG(rc == 0, "sdgen_model_load: %s", sdgen_last_error(ctx));
  int64_t baseline = -1, rss_first = 0;
  for (int i = 0; m && i < RUNS; i++) {
    sdgen_params q = p;
    q.model = "ignored: the handle's model is used";
    q.output_in_memory = i % 2;       /* files and in memory */
    q.min_plan = i == 2 ? 4 : -1;     /* a streaming plan in between */
    rc = sdgen_model_generate(ctx, m, &q, &res);
    CHECK_MSG(rc == 0, "run %d: %s", i, sdgen_last_error(ctx));
    sd_image img = {0};
    CHECK_MSG(rc == 0 && res.count == 1 && result_pixels(&res, &img) == 0 &&
                  same_pixels(&img, &ref),
              "run %d: the handle's image differs from sdgen_generate's", i);
    sd_image_free(&img);
    if (q.output_in_memory) {
      CHECK_MSG(count_files(out_dir) == 0, "run %d: in-memory output wrote files", i);
      CHECK(res.png[0] && res.png_size[0] > 8 && memcmp(res.png[0] + 1, "PNG", 3) == 0);
      CHECK(res.images[0][0] == 0);
    }
    CHECK(res.infotext[0] && strstr(res.infotext[0], "Model: sd15,"));
    sdgen_result_free(&res);
    empty_dir(out_dir);
    int64_t in_use = sd_alloc_get_stats().bytes_in_use;
    if (baseline < 0) baseline = in_use;
    CHECK_MSG(in_use == baseline, "run %d: tracked bytes %lld, after run 0 %lld", i,
              (long long)in_use, (long long)baseline);
    sd_mem_sample ms;
    sd_mem_probe(&ms);
    if (i == 1) rss_first = ms.rss;
    fprintf(stderr, "run %d: RSS %.1f MB\n", i, ms.rss / 1e6);
    /* RSS does not grow from run to run (the allocator's slack aside; under
     * AddressSanitizer freed memory sits in its quarantine, so RSS is not
     * a measure there: the tracked bytes above are) */
    if (i > 1 && ms.rss > 0 && !UNDER_ASAN)
      CHECK_MSG(ms.rss <= rss_first + (4LL << 20), "run %d: RSS %lld, after run 1 %lld", i,
                (long long)ms.rss, (long long)rss_first);
  }

  /* LoRAs per request: the handle re-binds when the set changes and gives
   * each request the image a one-shot run gives */
  char lora_path[600], lora_dir[512];
  snprintf(lora_dir, sizeof lora_dir, "%s/lora", fx);
  snprintf(lora_path, sizeof lora_path, "%s/sd15_attn.safetensors", lora_dir);
  sdgen_lora lora = {lora_path, 0.8f};
  sdgen_params pl = p;
  pl.loras = &lora;
  pl.n_loras = 1;
  sd_image with_lora = {0};
  rc = sdgen_generate(ctx, &pl, &res);
  CHECK_MSG(rc == 0 && res.count == 1 && result_pixels(&res, &with_lora) == 0,
            "one-shot LoRA run: %s", sdgen_last_error(ctx));
  CHECK(with_lora.data && !same_pixels(&with_lora, &ref)); /* the LoRA changes the image */
  sdgen_result_free(&res);
  empty_dir(out_dir);
  sdgen_params tagged = p;
  tagged.prompt = "a lighthouse <lora:sd15_attn:0.8>";
  tagged.lora_dir = lora_dir;
  const sdgen_params *seq[] = {&pl, &p, &tagged, &pl, &p};
  const sd_image *want[] = {&with_lora, &ref, &with_lora, &with_lora, &ref};
  for (int i = 0; m && with_lora.data && i < 5; i++) {
    rc = sdgen_model_generate(ctx, m, seq[i], &res);
    sd_image img = {0};
    CHECK_MSG(rc == 0 && res.count == 1 && result_pixels(&res, &img) == 0 &&
                  same_pixels(&img, want[i]),
              "LoRA sequence %d: rc %d (%s), image differs from the one-shot run's", i, rc,
              sdgen_last_error(ctx));
    sd_image_free(&img);
    sdgen_result_free(&res);
    empty_dir(out_dir);
  }
  sd_image_free(&with_lora);

  /* two contexts: ctx2's cancel flag is its own */
  probe.other = ctx2;
  rc = m ? sdgen_model_generate(ctx, m, &p, &res) : 1;
  CHECK_MSG(rc == 0, "a cancel of another context stopped this one: %s", sdgen_last_error(ctx));
  sdgen_result_free(&res);
  empty_dir(out_dir);
  probe.other = NULL;
  probe.self_cancel = ctx2;
  rc = m ? sdgen_model_generate(ctx2, m, &p, &res) : 0;
  CHECK_MSG(rc != 0 && strcmp(sdgen_last_error(ctx2), "cancelled") == 0,
            "cancel of its own context: rc %d, '%s'", rc, sdgen_last_error(ctx2));
  CHECK(probe.steps_seen == 1); /* stopped after the first step */
  CHECK(strcmp(sdgen_last_error(ctx), "") == 0);
  sdgen_result_free(&res);
  CHECK_MSG(count_files(out_dir) == 0, "a cancelled run left files");
  probe.self_cancel = NULL;
  sdgen_model_free(m);

  /* inputs checked before any load */
  sdgen_params b = p;
  b.refiner = model;
  b.refiner_steps = 2;
  b.refiner_strength = 0.3f;
  rc = sdgen_generate(ctx, &b, &res);
  CHECK_MSG(rc != 0 && strstr(sdgen_last_error(ctx), "no refiner step"), "refiner: %s",
            sdgen_last_error(ctx));
  b = p;
  b.upscale = 2;
  b.upscaler = model; /* a folder, not an RRDBNet file */
  rc = sdgen_check_inputs(ctx, &b);
  CHECK_MSG(rc != 0, "a folder was accepted as upscaler");
  CHECK(count_files(out_dir) == 0);

  /* listing */
  char mdir[300], link[400], seen[4096] = "";
  snprintf(mdir, sizeof mdir, "%s/models", g_tmp);
  mkdir(mdir, 0755);
  snprintf(link, sizeof link, "%s/my-sd15", mdir);
  CHECK(symlink(model, link) == 0);
  snprintf(link, sizeof link, "%s/notes.txt", mdir);
  FILE *f = fopen(link, "w");
  if (f) fclose(f);
  const char *dirs[] = {mdir};
  rc = sdgen_list_models(ctx, dirs, 1, list_cb, seen);
  CHECK_MSG(rc == 0 && strcmp(seen, "my-sd15:sd15;") == 0, "model dir listing: rc %d '%s' (%s)",
            rc, seen, sdgen_last_error(ctx));
  int n_lora = 0;
  rc = sdgen_list_loras(ctx, lora_dir, lora_cb, &n_lora);
  CHECK_MSG(rc == 0 && n_lora >= 2, "LoRA listing: rc %d, %d files", rc, n_lora);
  CHECK(sdgen_list_loras(ctx, "/nonexistent/loras", lora_cb, &n_lora) != 0);

  sd_image_free(&ref);
  sdgen_ctx_free(ctx);
  sdgen_ctx_free(ctx2);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
  return test_finish();
}
