/* Scheduler checks that need the fixtures (the per-case SD 1.5 / SDXL
 * scheduler goldens are in the conformance suite):
 *  - flow matching (SD3): golden/<sd3 model>/cases.json ->
 *    cases.scheduler.schedules (4, 8, 28 steps with shift 3.0, plus
 *    dynamic-shift schedules with their mu), built from
 *    <model>/scheduler/scheduler_config.json;
 *  - img2img (sd15 PNDM, sdxl-refiner Euler): the generator order (VAE sample
 *    noise, then add_noise noise), add_noise at timesteps[t_start], and the
 *    denoising steps from t_start fed with the stored noise predictions.
 * Fixtures: argv[1], else $SDGEN_FIXTURES, else ../shared/fixtures next to
 * the repository; absent -> exit 77. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/alloc.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "sample/scheduler.h"
#include "test_util.h"

static int f32_close(double a, double b, int ulps) {
  if (a == b) return 1;
  double ulp = fabs(b) > 0 ? ldexp(1.0, ilogb((float)b) - 23) : ldexp(1.0, -149);
  return fabs(a - b) <= ulps * ulp;
}

static void fixtures_dir(int argc, char **argv, char *out, size_t n) {
  if (argc > 1) {
    snprintf(out, n, "%s", argv[1]);
  } else if (getenv("SDGEN_FIXTURES")) {
    snprintf(out, n, "%s", getenv("SDGEN_FIXTURES"));
  } else {
    /* this file is <repo>/tests/unit/test_scheduler_fixtures.c */
    snprintf(out, n, "%s", __FILE__);
    char *p = strstr(out, "tests/unit/");
    if (p) snprintf(p, n - (size_t)(p - out), "../shared/fixtures");
    else snprintf(out, n, "../shared/fixtures");
  }
}

static void check_model(const char *fx, const char *model) {
  char path[4096];
  snprintf(path, sizeof path, "%s/golden/%s/cases.json", fx, model);
  struct stat st;
  if (stat(path, &st) != 0) {
    printf("note: %s absent, skipped\n", path);
    return;
  }
  cJSON *root = NULL, *cfg = NULL;
  sd_error err = {0};
  CHECK_MSG(sd_json_read_file(path, &root, &err) == SD_OK, "%s", err.msg);
  snprintf(path, sizeof path, "%s/%s/scheduler/scheduler_config.json", fx, model);
  CHECK_MSG(sd_json_read_file(path, &cfg, &err) == SD_OK, "%s", err.msg);
  const cJSON *sched = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "cases"), "scheduler");
  const cJSON *schedules = cJSON_GetObjectItem(sched, "schedules");
  if (!root || !cfg || !schedules) {
    printf("note: %s has no scheduler schedules\n", model);
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    return;
  }
  const cJSON *e;
  int checked = 0;
  cJSON_ArrayForEach(e, schedules) {
    const char *name = e->string;
    const char *us = strrchr(name, '_');
    int steps = atoi(us ? us + 1 : name);
    const cJSON *own_cfg = cJSON_GetObjectItem(e, "config");
    sd_scheduler *s = NULL;
    sd_error e1 = {0};
    if (sd_scheduler_create(&s, own_cfg ? own_cfg : cfg, SD_SAMPLER_DEFAULT, NULL, &e1)) {
      CHECK_MSG(0, "%s/%s: %s", model, name, e1.msg);
      continue;
    }
    if (cJSON_GetObjectItem(e, "mu")) sd_scheduler_set_mu(s, cJSON_GetObjectItem(e, "mu")->valuedouble);
    CHECK_MSG(sd_scheduler_set_timesteps(s, steps, &e1) == SD_OK, "%s/%s: %s", model, name, e1.msg);
    int ns = 0;
    const float *sig = sd_scheduler_sigmas(s, &ns);
    const cJSON *want_sig = cJSON_GetObjectItem(e, "sigmas");
    const cJSON *want_ts = cJSON_GetObjectItem(e, "timesteps");
    int ok = sig && ns == cJSON_GetArraySize(want_sig);
    for (int i = 0; ok && i < ns; i++)
      ok = f32_close(sig[i], cJSON_GetArrayItem(want_sig, i)->valuedouble, 2);
    CHECK_MSG(ok, "%s/%s: sigmas differ", model, name);
    if (want_ts) {
      ok = sd_scheduler_num_steps(s) == cJSON_GetArraySize(want_ts);
      for (int i = 0; ok && i < sd_scheduler_num_steps(s); i++)
        ok = (float)sd_scheduler_timestep(s, i) == (float)cJSON_GetArrayItem(want_ts, i)->valuedouble;
      CHECK_MSG(ok, "%s/%s: timesteps differ", model, name);
    }
    checked++;
    sd_scheduler_free(s);
  }
  printf("%s: %d flow schedules checked\n", model, checked);
  cJSON_Delete(root);
  cJSON_Delete(cfg);
}

static const float *tensor_f32(const sd_weights *w, const char *name, int64_t n) {
  const sd_tensor *t = sd_weights_get(w, name);
  if (!t || t->dtype != SD_F32 || sd_tensor_numel(t) < n) return NULL;
  return t->data;
}

static void check_img2img(const char *fx, const char *model) {
  char path[4096];
  snprintf(path, sizeof path, "%s/golden/%s/cases.json", fx, model);
  struct stat st;
  if (stat(path, &st) != 0) {
    printf("note: %s absent, skipped\n", path);
    return;
  }
  cJSON *root = NULL, *cfg = NULL;
  sd_weights *w = NULL;
  sd_scheduler *s = NULL;
  sd_rng *g = NULL;
  float *buf = NULL;
  sd_error err = {0};
  CHECK_MSG(sd_json_read_file(path, &root, &err) == SD_OK, "%s", err.msg);
  const cJSON *kase = NULL, *e;
  cJSON_ArrayForEach(e, cJSON_GetObjectItem(root, "cases")) {
    const char *kind = cJSON_GetStringValue(cJSON_GetObjectItem(e, "kind"));
    if (kind && strcmp(kind, "img2img") == 0) kase = e;
  }
  if (!kase) {
    printf("note: %s has no img2img case\n", model);
    goto done;
  }
  const char *folder = cJSON_GetStringValue(cJSON_GetObjectItem(root, "model_folder"));
  snprintf(path, sizeof path, "%s/%s/scheduler/scheduler_config.json", fx, folder ? folder : model);
  CHECK_MSG(sd_json_read_file(path, &cfg, &err) == SD_OK, "%s", err.msg);
  snprintf(path, sizeof path, "%s/golden/%s/%s", fx, model,
           cJSON_GetStringValue(cJSON_GetObjectItem(kase, "file")));
  CHECK_MSG(sd_weights_open(&w, path, &err) == SD_OK, "%s", err.msg);
  if (!cfg || !w) goto done;
  const cJSON *params = cJSON_GetObjectItem(kase, "params");
  int steps = sd_json_int(params, "num_inference_steps", 0);
  double strength = sd_json_num(params, "strength", 1.0);
  uint64_t seed = (uint64_t)sd_json_num(params, "generator_seed", 0);
  const int64_t n = 4 * 16 * 16;
  CHECK(sd_scheduler_create(&s, cfg, SD_SAMPLER_DEFAULT, NULL, &err) == SD_OK);
  CHECK(s && sd_scheduler_set_timesteps(s, steps, &err) == SD_OK);
  buf = sd_alloc(3 * (size_t)n * sizeof(float));
  g = sd_rng_new(SD_RNG_CPU, seed);
  if (!s || !buf || !g) goto done;
  float *noise = buf, *x = buf + n, *xin = buf + 2 * n;
  int t_start = steps - (int)(steps * strength);
  int begin = t_start * sd_scheduler_order(s);
  /* the generator's first draw is the VAE sample noise, the second the
   * add_noise noise */
  const float *vae_noise = tensor_f32(w, "img2img.vae_sample_noise", n);
  const float *add_noise = tensor_f32(w, "img2img.add_noise_noise", n);
  const float *init = tensor_f32(w, "img2img.init_latents", n);
  const float *noised = tensor_f32(w, "img2img.noised_latents", n);
  const float *final = tensor_f32(w, "img2img.final_latents", n);
  CHECK(vae_noise && add_noise && init && noised && final);
  if (!vae_noise || !add_noise || !init || !noised || !final) goto done;
  sd_rng_randn(g, noise, n);
  CHECK_MSG(memcmp(noise, vae_noise, (size_t)n * sizeof(float)) == 0, "%s: vae noise", model);
  sd_rng_randn(g, noise, n);
  CHECK_MSG(memcmp(noise, add_noise, (size_t)n * sizeof(float)) == 0, "%s: add_noise noise", model);
  sd_scheduler_set_begin_index(s, begin);
  memcpy(x, init, (size_t)n * sizeof(float));
  sd_scheduler_add_noise(s, begin, x, noise, n);
  CHECK_MSG(rel_l2(x, noised, n) < 1e-6, "%s: noised latents rel %g", model, rel_l2(x, noised, n));
  int calls = sd_scheduler_num_steps(s) - begin;
  for (int k = 0; k < calls; k++) {
    char name[64];
    snprintf(name, sizeof name, "img2img.step%d.model_input", k);
    const float *want_in = tensor_f32(w, name, n);
    snprintf(name, sizeof name, "img2img.step%d.noise_pred", k);
    const float *eps = tensor_f32(w, name, n);
    snprintf(name, sizeof name, "img2img.step%d.latents", k);
    const float *want = tensor_f32(w, name, n);
    CHECK_MSG(want_in && eps && want, "%s: step %d tensors missing", model, k);
    if (!want_in || !eps || !want) goto done;
    memcpy(xin, x, (size_t)n * sizeof(float));
    sd_scheduler_scale_model_input(s, begin + k, xin, n);
    /* model_input is the CFG batch [uncond, cond]; both halves are x */
    CHECK_MSG(rel_l2(xin, want_in, n) < 1e-4, "%s: step %d model input rel %g", model, k,
              rel_l2(xin, want_in, n));
    CHECK(sd_scheduler_step(s, begin + k, eps, x, n, g, &err) == SD_OK);
    CHECK_MSG(rel_l2(x, want, n) < 1e-4, "%s: step %d latents rel %g", model, k, rel_l2(x, want, n));
  }
  CHECK_MSG(rel_l2(x, final, n) < 1e-3, "%s: final latents rel %g", model, rel_l2(x, final, n));
  printf("%s: img2img scheduler path checked (%d steps from index %d)\n", model, calls, begin);
done:
  sd_free(buf);
  sd_rng_free(g);
  sd_scheduler_free(s);
  sd_weights_free(w);
  cJSON_Delete(cfg);
  cJSON_Delete(root);
}

int main(int argc, char **argv) {
  char fx[4096];
  fixtures_dir(argc, argv, fx, sizeof fx);
  struct stat st;
  if (stat(fx, &st) != 0) {
    printf("SKIP: fixtures folder %s not found; flow schedules not checked\n", fx);
    return 77;
  }
  check_model(fx, "sd35-large");
  check_model(fx, "sd35-medium");
  check_model(fx, "sd3-medium");
  check_img2img(fx, "sd15");
  check_img2img(fx, "sdxl-refiner");
  return test_finish();
}
