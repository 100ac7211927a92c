/* SQLite-style allocation-failure loop over a whole generation, in process.
 *
 * One 64x64, 1-step, 1-thread run of the tiny SD 1.5 fixture is repeated
 * with allocation N failing (sd_alloc_fail_at), for N = 1, 2, 3 ... until a
 * run no longer reaches N. Every run must end in one of two ways:
 *   - success: exactly one PNG and its JSON in the output folder, and, when
 *     the fault was hit, the failure recorded in memory.recovered_failures
 *     (the library retries the base stage on SD_ERR_OOM with a more frugal
 *     plan);
 *   - a clean error: nonzero status, a message, nothing half-written in the
 *     output folder, and tracked bytes in use back to the pre-run value.
 * The one file a failed run may leave is the latents file, and only when the
 * library announced it ("latents kept in PATH": a failed decode keeps the
 * denoised latents so that --decode can finish the image); it must then be
 * a complete latents file.
 *
 * Every N up to 400 and each of the last 40 (the save stage) are tested,
 * with a stride between chosen from the measured time of one run so the
 * test stays within its time budget (larger under AddressSanitizer). A
 * sticky variant (every allocation from N on fails) is sampled at up to 50
 * points and must never crash or leak either.
 *
 * LoRA: the load and application of two stacked adapters (the fixtures'
 * kohya LoCon + attention-only files) on the SD 1.5 UNet and text encoder,
 * merged and as a side path, is run with allocation N failing (io/lora.h
 * directly; every N of the parsing and first bindings, then about 100 N
 * strided over the rest): each must end in a clean error with a message and
 * nothing leaked, or succeed untouched by the fault; then generations with those
 * LoRAs (merged and side path) are sampled like the loop above.
 *
 * usage: test_fault_injection [FIXTURES_DIR [BUDGET_S]]  (77: no fixtures) */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "base/alloc.h"
#include "io/lora.h"
#include "io/safetensors.h"
#include "sdgen.h"
#include "test_util.h"

#ifndef SDGEN_FIXTURES_DEFAULT
#define SDGEN_FIXTURES_DEFAULT "../shared/fixtures"
#endif

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

/* Every N up to DENSE_LIMIT, then a stride; sticky faults at up to
 * STICKY_POINTS points. All of it sized to a time budget (seconds; argv[2]
 * overrides) from the measured time of one run: the dense range is cut
 * short, loudly, only where one run is too slow for it (AddressSanitizer,
 * a loaded machine). */
#define DENSE_LIMIT 400
#define STICKY_POINTS 50
#if UNDER_ASAN
#define DEFAULT_BUDGET_S 120.0
#else
#define DEFAULT_BUDGET_S 50.0
#endif

static char out_dir[4096];
static int g_latents_kept; /* failed runs that kept their latents for --decode */

/* What the library told the caller during one run. */
typedef struct run_events {
  char latents_kept[4096]; /* path from a "latents kept in PATH" event */
} run_events;

static void on_event(int kind, const char *text, void *user) {
  run_events *ev = user;
  static const char kept[] = "latents kept in ";
  if (kind == SDGEN_EVENT_INFO && strncmp(text, kept, sizeof kept - 1) == 0)
    snprintf(ev->latents_kept, sizeof ev->latents_kept, "%s", text + sizeof kept - 1);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Files in the output folder, by kind. */
typedef struct dir_census {
  int png, json, latents, other;
  char first_other[512];
  char latents_name[512];
} dir_census;

static dir_census census(void) {
  dir_census c = {0};
  DIR *d = opendir(out_dir);
  if (!d) return c;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    /* a temporary name ("x.png.tmp.123") is leftover, whatever it ends in */
    if (strstr(e->d_name, ".tmp")) {
      if (!c.other++) snprintf(c.first_other, sizeof c.first_other, "%s", e->d_name);
    } else if (ends_with(e->d_name, ".latents.safetensors")) {
      c.latents++;
      snprintf(c.latents_name, sizeof c.latents_name, "%s", e->d_name);
    } else if (ends_with(e->d_name, ".png")) {
      c.png++;
    } else if (ends_with(e->d_name, ".json")) {
      c.json++;
    } else if (!c.other++) {
      snprintf(c.first_other, sizeof c.first_other, "%s", e->d_name);
    }
  }
  closedir(d);
  return c;
}

static void empty_out_dir(void) {
  DIR *d = opendir(out_dir);
  if (!d) return;
  struct dirent *e;
  char path[4400];
  while ((e = readdir(d))) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    snprintf(path, sizeof path, "%s/%s", out_dir, e->d_name);
    unlink(path);
  }
  closedir(d);
}

/* Number of entries in the JSON's memory.recovered_failures (-1: unreadable). */
static int recovered_failures(const char *json_path) {
  FILE *f = fopen(json_path, "rb");
  if (!f) return -1;
  char *buf = NULL;
  size_t cap = 0, len = 0, got;
  char chunk[8192];
  while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) {
    if (len + got + 1 > cap) {
      cap = (len + got + 1) * 2;
      char *nb = realloc(buf, cap);
      if (!nb) break;
      buf = nb;
    }
    memcpy(buf + len, chunk, got);
    len += got;
  }
  fclose(f);
  if (!buf) return -1;
  buf[len] = 0;
  cJSON *o = cJSON_Parse(buf);
  free(buf);
  if (!o) return -1;
  const cJSON *mem = cJSON_GetObjectItemCaseSensitive(o, "memory");
  const cJSON *rf = mem ? cJSON_GetObjectItemCaseSensitive(mem, "recovered_failures") : NULL;
  int n = cJSON_IsArray(rf) ? cJSON_GetArraySize(rf) : -1;
  cJSON_Delete(o);
  return n;
}

/* A kept latents file must be complete: one (1, 4, 8, 8) tensor. */
static int latents_file_complete(const char *path) {
  sd_weights *w = NULL;
  sd_error err = {0};
  if (sd_weights_open(&w, path, &err)) return 0;
  const sd_tensor *t = sd_weights_get(w, "latents");
  int ok = t && t->ndim == 4 && t->shape[0] == 1 && t->shape[1] == 4 && t->shape[2] == 8 &&
           t->shape[3] == 8;
  sd_weights_free(w);
  return ok;
}

typedef struct run_outcome {
  int rc;
  int64_t calls;   /* allocation calls the run made after arming */
  int fault_hit;
  int ok;          /* every check passed */
} run_outcome;

/* One generation with allocation `n` failing (sticky: and all after it).
 * Checks the outcome; counts failures through CHECK_MSG. */
static run_outcome run_once(sdgen_ctx *ctx, sdgen_params *p, int64_t n, int sticky) {
  run_events ev = {{0}};
  p->user = &ev;
  sdgen_result res;
  int failed_before = t_failed;
  int64_t in_use_before = sd_alloc_get_stats().bytes_in_use;
  sd_alloc_fail_at(n, sticky);
  int rc = sdgen_generate(ctx, p, &res);
  run_outcome o = {rc, sd_alloc_calls_since_arm(), sd_alloc_fault_triggered(), 0};
  sd_alloc_fail_at(0, 0); /* the checks below allocate */
  int64_t in_use_after = sd_alloc_get_stats().bytes_in_use;
  const char *mode = sticky ? "sticky" : "once";
  dir_census c = census();

  CHECK_MSG(in_use_after == in_use_before,
            "N=%lld (%s) rc=%d: %lld tracked bytes leaked (message: %s)", (long long)n, mode,
            rc, (long long)(in_use_after - in_use_before), sdgen_last_error(ctx));
  CHECK_MSG(c.other == 0, "N=%lld (%s) rc=%d: leftover file %s", (long long)n, mode, rc,
            c.first_other);
  if (rc == 0) {
    CHECK_MSG(res.count == 1 && c.png == 1 && c.json == 1 && c.latents == 0,
              "N=%lld (%s): success but count=%d png=%d json=%d latents=%d", (long long)n, mode,
              res.count, c.png, c.json, c.latents);
    if (res.count == 1) {
      struct stat st;
      CHECK_MSG(stat(res.images[0], &st) == 0 && st.st_size > 0,
                "N=%lld (%s): reported image %s missing", (long long)n, mode, res.images[0]);
      int recovered = recovered_failures(res.metadata[0]);
      CHECK_MSG(recovered >= 0, "N=%lld (%s): metadata %s unreadable", (long long)n, mode,
                res.metadata[0]);
      CHECK_MSG(!o.fault_hit || recovered > 0,
                "N=%lld (%s): allocation failed but the run succeeded with no recovered "
                "failure recorded",
                (long long)n, mode);
    }
  } else {
    const char *msg = sdgen_last_error(ctx);
    CHECK_MSG(msg && msg[0], "N=%lld (%s): status %d without a message", (long long)n, mode, rc);
    CHECK_MSG(o.fault_hit, "N=%lld (%s): failed (%s) without the fault being hit", (long long)n,
              mode, msg);
    CHECK_MSG(c.png == 0 && c.json == 0, "N=%lld (%s): error (%s) left png=%d json=%d",
              (long long)n, mode, msg, c.png, c.json);
    if (c.latents) {
      g_latents_kept++;
      char path[4700];
      snprintf(path, sizeof path, "%s/%s", out_dir, c.latents_name);
      CHECK_MSG(c.latents == 1 && strcmp(ev.latents_kept, path) == 0,
                "N=%lld (%s): error (%s) left %s unannounced", (long long)n, mode, msg,
                c.latents_name);
      CHECK_MSG(latents_file_complete(path), "N=%lld (%s): kept latents file %s is incomplete",
                (long long)n, mode, c.latents_name);
    } else {
      CHECK_MSG(!ev.latents_kept[0], "N=%lld (%s): announced %s but no latents file",
                (long long)n, mode, ev.latents_kept);
    }
  }
  sdgen_result_free(&res);
  empty_out_dir();
  o.ok = t_failed == failed_before;
  return o;
}

/* Dense at the start (loading) and at the end (save stage, which is not
 * retried), strided between. */
#define TAIL_RUNS 40
static int64_t next_n(int64_t n, int64_t dense, int64_t stride, int64_t total) {
  int64_t tail = total - TAIL_RUNS;
  if (n < dense || n >= tail) return n + 1;
  return n + stride < tail ? n + stride : tail;
}

/* One LoRA load + application with allocation n failing: weights opened
 * (unarmed), adapters loaded and merged or attached (armed), all freed. */
static run_outcome lora_apply_once(const char *fix, int merge, int64_t n) {
  char unet[4200], te[4200], l1[4200], l2[4200];
  snprintf(unet, sizeof unet, "%s/sd15/unet/diffusion_pytorch_model.safetensors", fix);
  snprintf(te, sizeof te, "%s/sd15/text_encoder/model.safetensors", fix);
  snprintf(l1, sizeof l1, "%s/lora/sd15_locon.safetensors", fix);
  snprintf(l2, sizeof l2, "%s/lora/sd15_attn.safetensors", fix);
  run_outcome o = {0};
  int failed_before = t_failed;
  int64_t in_use_before = sd_alloc_get_stats().bytes_in_use;
  sd_error err = {0};
  sd_weights *wu = NULL, *wt = NULL;
  if (sd_weights_open(&wu, unet, &err) || sd_weights_open(&wt, te, &err)) {
    CHECK_MSG(0, "LoRA: cannot open the fixture weights: %s", err.msg);
    sd_weights_free(wu);
    o.rc = -1;
    return o;
  }
  sd_lora_spec specs[2] = {{l1, 0.8f}, {l2, 0.5f}};
  sd_adapter_target tg[2] = {{SD_LORA_UNET, wu}, {SD_LORA_TE1, wt}};
  sd_adapter *a = NULL;
  sd_alloc_fail_at(n, 0);
  int rc = sd_adapter_load(&a, specs, 2, tg, 2, SD_LORA_FAMILY_SD1, &err);
  if (!rc) rc = merge ? sd_adapter_merge(a, SD_LORA_TARGETS, &err) : sd_adapter_attach_side(a, &err);
  o.rc = rc;
  o.calls = sd_alloc_calls_since_arm();
  o.fault_hit = sd_alloc_fault_triggered();
  sd_alloc_fail_at(0, 0);
  const char *mode = merge ? "merged" : "side path";
  if (rc) {
    CHECK_MSG(err.msg[0], "LoRA %s N=%lld: status %d without a message", mode, (long long)n, rc);
    CHECK_MSG(o.fault_hit, "LoRA %s N=%lld: failed (%s) without the fault being hit", mode,
              (long long)n, err.msg);
  } else {
    CHECK_MSG(!o.fault_hit, "LoRA %s N=%lld: allocation failed but the load succeeded", mode,
              (long long)n);
    CHECK_MSG(a && sd_adapter_touched(a, SD_LORA_UNET) > 0 &&
                  sd_adapter_touched(a, SD_LORA_TE1) > 0,
              "LoRA %s N=%lld: success without touched weights", mode, (long long)n);
  }
  sd_weights_free(wu);
  sd_weights_free(wt);
  sd_adapter_free(a);
  int64_t in_use_after = sd_alloc_get_stats().bytes_in_use;
  CHECK_MSG(in_use_after == in_use_before, "LoRA %s N=%lld rc=%d: %lld tracked bytes leaked (%s)",
            mode, (long long)n, rc, (long long)(in_use_after - in_use_before), err.msg);
  o.ok = t_failed == failed_before;
  return o;
}

/* A LoRA load + merge and + side path, allocation N failing. */
static void lora_apply_loop(const char *fix) {
  for (int merge = 1; merge >= 0; merge--) {
    run_outcome ref = lora_apply_once(fix, merge, 0);
    CHECK_MSG(ref.rc == 0, "LoRA %s: reference load failed", merge ? "merged" : "side path");
    if (ref.rc) return;
    /* every N of the file parsing and the first bindings, then strided
     * over the rest (thousands of calls: one per term, merged copy, ...) */
    int64_t dense = 150, stride = ref.calls > dense ? (ref.calls - dense + 99) / 100 : 1;
    int runs = 0, errors = 0, bad = 0;
    for (int64_t n = 1;; n += n < dense ? 1 : stride) {
      run_outcome o = lora_apply_once(fix, merge, n);
      runs++;
      errors += o.rc != 0;
      bad += !o.ok;
      if (o.calls < n) break;
    }
    printf("LoRA load + %s: %lld allocation calls, every N up to %lld then stride %lld: %d "
           "runs (%d clean errors, %d failing a check)\n",
           merge ? "merge" : "side path", (long long)ref.calls, (long long)dense,
           (long long)stride, runs, errors, bad);
    fflush(stdout);
  }
}

int main(int argc, char **argv) {
  const char *fix = argc > 1 ? argv[1] : getenv("SDGEN_FIXTURES");
  if (!fix || !fix[0]) fix = SDGEN_FIXTURES_DEFAULT;
  char model[4096];
  snprintf(model, sizeof model, "%s/sd15", fix);
  struct stat st;
  if (stat(model, &st) != 0 || !S_ISDIR(st.st_mode)) {
    printf("SKIP: fixture model %s not found\n", model);
    return 77;
  }
  char lora1[4200], lora2[4200];
  snprintf(lora1, sizeof lora1, "%s/lora/sd15_locon.safetensors", fix);
  snprintf(lora2, sizeof lora2, "%s/lora/sd15_attn.safetensors", fix);
  int have_lora = stat(lora1, &st) == 0 && stat(lora2, &st) == 0;
  if (have_lora)
    lora_apply_loop(fix);
  else
    printf("NOTE: no LoRA fixtures (%s): the LoRA fault loops are not run\n", lora1);
  snprintf(out_dir, sizeof out_dir, "/tmp/sdgen_fault_XXXXXX");
  if (!mkdtemp(out_dir)) {
    perror("mkdtemp");
    return 1;
  }

  sdgen_ctx *ctx;
  if (sdgen_ctx_new(&ctx)) {
    fprintf(stderr, "cannot create a context\n");
    return 1;
  }
  sdgen_params p = sdgen_default_params();
  p.prompt = "a red fox in the snow";
  p.model = model;
  p.steps = 1;
  p.width = 64;
  p.height = 64;
  p.threads = 1;
  p.offline = 1; /* a local folder: never a reason to touch the network */
  p.output_dir = out_dir;
  p.on_event = on_event;

  double budget = argc > 2 ? atof(argv[2]) : DEFAULT_BUDGET_S;
  if (!(budget > 0)) budget = DEFAULT_BUDGET_S;

  /* Reference run: no fault. It also warms what is set up once per
   * process, so later runs start from the same tracked baseline; a second
   * one gives the warm time of a run. */
  run_outcome ref = run_once(ctx, &p, 0, 0);
  CHECK_MSG(ref.rc == 0, "reference run failed: %s", sdgen_last_error(ctx));
  double t0 = now_s(), c0 = cpu_s();
  run_outcome warm = run_once(ctx, &p, 0, 0);
  double t_run = now_s() - t0, c_run = cpu_s() - c0;
  CHECK_MSG(warm.rc == 0 && warm.calls == ref.calls,
            "second reference run: status %d, %lld allocation calls (first: %lld)", warm.rc,
            (long long)warm.calls, (long long)ref.calls);
  if (ref.rc != 0 || warm.rc != 0) {
    rmdir(out_dir);
    sdgen_ctx_free(ctx);
    return test_finish();
  }
  int64_t total = ref.calls;
  /* A run whose fault is recovered costs a run and part of another. */
  double per_run = t_run * 1.3;
  int64_t fit = (int64_t)(budget / per_run);
  int64_t sticky_points = fit / 8 < STICKY_POINTS ? fit / 8 : STICKY_POINTS;
  if (sticky_points < 10) sticky_points = 10;
  int64_t dense = total < DENSE_LIMIT ? total : DENSE_LIMIT;
  if (dense > fit / 2) dense = fit / 2 > 20 ? fit / 2 : 20;
  int64_t strided_runs = fit - dense - sticky_points - TAIL_RUNS;
  if (strided_runs < 10) strided_runs = 10;
  int64_t stride = total > dense ? (total - dense + strided_runs - 1) / strided_runs : 1;
  if (stride < 1) stride = 1;
  printf("one run: %lld allocation calls, %.3f s (%.3f s CPU)%s; budget %.0f s\n",
         (long long)total, t_run, c_run, UNDER_ASAN ? " under AddressSanitizer" : "", budget);
  printf("single faults: every N up to %lld, then stride %lld, then every N of the last %d; "
         "sticky faults at %lld points\n",
         (long long)dense, (long long)stride, TAIL_RUNS, (long long)sticky_points);
  if (dense < DENSE_LIMIT && dense < total)
    printf("NOTE: dense range cut from %d to %lld to fit the budget (pass a larger budget as "
           "the second argument for all of it)\n",
           DENSE_LIMIT, (long long)dense);
  fflush(stdout);

  int runs = 0, successes = 0, errors = 0, failing_runs = 0;
  double t_loop = now_s();
  for (int64_t n = 1;; n = next_n(n, dense, stride, total)) {
    run_outcome o = run_once(ctx, &p, n, 0);
    runs++;
    if (runs % 100 == 0) {
      printf("  %d runs, N=%lld, %.1f s\n", runs, (long long)n, now_s() - t_loop);
      fflush(stdout);
    }
    if (o.rc == 0)
      successes++;
    else
      errors++;
    failing_runs += !o.ok;
    if (o.calls < n) break; /* this run never reached allocation n */
  }
  printf("single faults: %d runs (%d succeeded, %d clean errors, %d failing a check) in "
         "%.1f s\n",
         runs, successes, errors, failing_runs, now_s() - t_loop);

  /* Sticky: every allocation from N on fails, so recovery cannot help. */
  int sticky_runs = 0, sticky_ok = 0;
  t_loop = now_s();
  for (int64_t i = 0; i < sticky_points; i++) {
    int64_t n = 1 + i * (total - 1) / (sticky_points - 1);
    run_outcome o = run_once(ctx, &p, n, 1);
    sticky_runs++;
    sticky_ok += o.ok;
  }
  printf("sticky faults: %d runs, %d clean, in %.1f s\n", sticky_runs, sticky_ok,
         now_s() - t_loop);
  printf("failed runs that kept a complete, announced latents file: %d\n", g_latents_kept);

  /* After all that, a normal run still works and leaks nothing. */
  run_outcome after = run_once(ctx, &p, 0, 0);
  CHECK_MSG(after.rc == 0, "run after the fault loop failed: %s", sdgen_last_error(ctx));

  /* Generations with two stacked LoRAs, merged (resident plan) and side
   * path (streaming plan): faults sampled over the whole run. */
  sdgen_lora loras[2] = {{lora1, 0.8f}, {lora2, 0.5f}};
  for (int plan = 0; have_lora && plan < 2; plan++) {
    p.loras = loras;
    p.n_loras = 2;
    p.min_plan = plan ? 4 : -1;
    const char *what = plan ? "side path" : "merged";
    run_outcome lref = run_once(ctx, &p, 0, 0);
    CHECK_MSG(lref.rc == 0, "LoRA (%s) reference run failed: %s", what, sdgen_last_error(ctx));
    if (lref.rc) break;
    int64_t points = sticky_points, lruns = 0, lerr = 0, lbad = 0;
    t_loop = now_s();
    for (int64_t i = 0; i < points; i++) {
      int64_t n = 1 + i * (lref.calls - 1) / (points - 1);
      run_outcome o = run_once(ctx, &p, n, 0);
      lruns++;
      lerr += o.rc != 0;
      lbad += !o.ok;
    }
    printf("LoRA generations (%s): %lld allocation calls, faults at %lld points (%lld clean "
           "errors, %lld failing a check) in %.1f s\n",
           what, (long long)lref.calls, (long long)lruns, (long long)lerr, (long long)lbad,
           now_s() - t_loop);
  }

  rmdir(out_dir);
  sdgen_ctx_free(ctx);
  return test_finish();
}
