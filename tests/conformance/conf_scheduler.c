/* Scheduler cases of the SD 1.5 / SDXL goldens (kind "scheduler").
 *
 * Each case is rebuilt the way the fixtures made it: Cls.from_config(<model
 * folder>/scheduler/scheduler_config.json, **from_config_overrides). Checks:
 *  - <id>.config: our class defaults against the case's resolved_config;
 *  - <id>.timesteps<N>: timesteps exact, sigmas and init_noise_sigma to
 *    float32 precision (2 ulp), for every entry of timesteps_by_steps;
 *  - <id>.step<k>.{timestep,model_input,step_noise,latents}: the stored
 *    4-step loop fed with the stored model outputs, our latents carried from
 *    step to step (rel L2 <= 1e-4 per step), step noise from a CPU generator
 *    seeded generator_seed (bitwise against stepK.step_noise);
 *  - <id>.final_latents: rel L2 <= 1e-3. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "conformance.h"
#include "io/json.h"
#include "sample/rng.h"
#include "sample/scheduler.h"

int conf_sampler_for_class(const char *cls) {
  static const struct { const char *cls; sd_sampler k; } map[] = {
      {"PNDMScheduler", SD_SAMPLER_PNDM},
      {"DDIMScheduler", SD_SAMPLER_DDIM},
      {"EulerDiscreteScheduler", SD_SAMPLER_EULER},
      {"EulerAncestralDiscreteScheduler", SD_SAMPLER_EULER_A},
      {"DPMSolverMultistepScheduler", SD_SAMPLER_DPMPP_2M},
      {"LCMScheduler", SD_SAMPLER_LCM},
      {"FlowMatchEulerDiscreteScheduler", SD_SAMPLER_FLOW_EULER},
  };
  for (size_t i = 0; cls && i < sizeof map / sizeof map[0]; i++)
    if (strcmp(cls, map[i].cls) == 0) return map[i].k;
  return -1;
}

/* Within `ulps` units in the last place of float32 (relative to b). */
static int f32_close(double a, double b, int ulps) {
  if (a == b) return 1;
  double ulp = fabs(b) > 0 ? ldexp(1.0, ilogb((float)b) - 23) : ldexp(1.0, -149);
  return fabs(a - b) <= ulps * ulp;
}

static int json_values_equal(const cJSON *a, const cJSON *b) {
  if (cJSON_IsNumber(a) && cJSON_IsNumber(b)) {
    double x = a->valuedouble, y = b->valuedouble;
    return x == y || fabs(x - y) <= 1e-12 * fmax(fabs(x), fabs(y));
  }
  if (cJSON_IsString(a) && cJSON_IsString(b)) return strcmp(a->valuestring, b->valuestring) == 0;
  if (cJSON_IsBool(a) && cJSON_IsBool(b)) return cJSON_IsTrue(a) == cJSON_IsTrue(b);
  return 0;
}

/* Every key we resolve must be in the reference's resolved_config with the
 * same value (the reference also lists keys a class does not use). */
static void check_config(conf_ctx *c, const char *id, const sd_scheduler *s,
                         const cJSON *resolved) {
  cJSON *ours = sd_scheduler_resolved_config(s);
  if (!ours) {
    conf_result(c, id, 0, "out of memory");
    return;
  }
  int checked = 0;
  char bad[256] = "";
  const cJSON *kv;
  cJSON_ArrayForEach(kv, ours) {
    const cJSON *ref = cJSON_GetObjectItemCaseSensitive(resolved, kv->string);
    if (!ref || !json_values_equal(kv, ref)) {
      if (!bad[0]) snprintf(bad, sizeof bad, "%s differs%s", kv->string, ref ? "" : " (absent in reference)");
    } else {
      checked++;
    }
  }
  if (bad[0]) conf_result(c, id, 0, "%s", bad);
  else conf_result(c, id, 1, "%d keys equal", checked);
  cJSON_Delete(ours);
}

static void check_schedule(conf_ctx *c, const char *id, sd_scheduler *s, int steps,
                           const cJSON *expect) {
  sd_error err = {0};
  if (sd_scheduler_set_timesteps(s, steps, &err)) {
    conf_result(c, id, 0, "%s", err.msg);
    return;
  }
  const cJSON *ts = cJSON_GetObjectItemCaseSensitive(expect, "timesteps");
  const cJSON *sg = cJSON_GetObjectItemCaseSensitive(expect, "sigmas");
  int nts = cJSON_GetArraySize(ts);
  if (nts != sd_scheduler_num_steps(s)) {
    conf_result(c, id, 0, "%d timesteps, expected %d", sd_scheduler_num_steps(s), nts);
    return;
  }
  for (int i = 0; i < nts; i++) {
    double want = cJSON_GetArrayItem(ts, i)->valuedouble;
    double got = sd_scheduler_timestep(s, i);
    if ((float)got != (float)want) {
      conf_result(c, id, 0, "timesteps[%d] = %.9g, expected %.9g", i, got, want);
      return;
    }
  }
  int nsig = 0;
  const float *sig = sd_scheduler_sigmas(s, &nsig);
  if (sg) {
    if (nsig != cJSON_GetArraySize(sg)) {
      conf_result(c, id, 0, "%d sigmas, expected %d", nsig, cJSON_GetArraySize(sg));
      return;
    }
    for (int i = 0; i < nsig; i++) {
      double want = cJSON_GetArrayItem(sg, i)->valuedouble;
      if (!f32_close(sig[i], want, 2)) {
        conf_result(c, id, 0, "sigmas[%d] = %.9g, expected %.9g", i, sig[i], want);
        return;
      }
    }
  }
  double ins = sd_json_num(expect, "init_noise_sigma", 1.0);
  if (!f32_close(sd_scheduler_init_noise_sigma(s), ins, 2)) {
    conf_result(c, id, 0, "init_noise_sigma %.9g, expected %.9g",
                sd_scheduler_init_noise_sigma(s), ins);
    return;
  }
  conf_result(c, id, 1, "%d timesteps exact%s", nts, sg ? ", sigmas within 2 ulp" : "");
}

static const sd_tensor *get_f32(const sd_weights *w, const char *fmt, const char *a, int k,
                                const char *b) {
  char name[256];
  snprintf(name, sizeof name, fmt, a, k, b);
  const sd_tensor *t = sd_weights_get(w, name);
  return t && t->dtype == SD_F32 ? t : NULL;
}

static void run_loop(conf_ctx *c, const char *base_id, sd_scheduler *s, const sd_weights *w,
                     const char *case_name, const cJSON *loop, const cJSON *kase) {
  char id[320], name[256];
  sd_error err = {0};
  int steps = sd_json_int(loop, "num_inference_steps", 0);
  int calls = sd_json_int(loop, "num_model_calls", steps);
  double gseed = sd_json_num(loop, "generator_seed", 0);
  const cJSON *inputs = cJSON_GetObjectItemCaseSensitive(kase, "inputs");
  const char *lat_name = sd_json_str(inputs, "latents", NULL);
  snprintf(name, sizeof name, "%s.latents_in", case_name);
  const sd_tensor *lat_in = sd_weights_get(w, lat_name ? lat_name : name);
  snprintf(id, sizeof id, "%s.loop", base_id);
  if (!lat_in || lat_in->dtype != SD_F32) {
    conf_result(c, id, 0, "latents_in missing");
    return;
  }
  if (sd_scheduler_set_timesteps(s, steps, &err)) {
    conf_result(c, id, 0, "%s", err.msg);
    return;
  }
  if (sd_scheduler_num_steps(s) != calls) {
    conf_result(c, id, 0, "%d model calls, expected %d", sd_scheduler_num_steps(s), calls);
    return;
  }
  int64_t n = sd_tensor_numel(lat_in);
  float *x = sd_alloc((size_t)n * sizeof(float));
  float *xin = sd_alloc((size_t)n * sizeof(float));
  float *shadow = sd_alloc((size_t)n * sizeof(float));
  sd_rng *g = sd_rng_new(SD_RNG_CPU, (uint64_t)gseed);
  sd_rng *g_shadow = sd_rng_new(SD_RNG_CPU, (uint64_t)gseed);
  if (!x || !xin || !shadow || !g || !g_shadow) {
    conf_result(c, id, 0, "out of memory");
    goto done;
  }
  /* The pipeline scales the drawn noise by init_noise_sigma. */
  float ins = sd_scheduler_init_noise_sigma(s);
  const float *l0 = lat_in->data;
  for (int64_t j = 0; j < n; j++) x[j] = l0[j] * ins;
  for (int k = 0; k < calls; k++) {
    const sd_tensor *t_ts = sd_weights_getf(w, "%s.step%d.timestep", case_name, k);
    const sd_tensor *t_in = get_f32(w, "%s.step%d.%s", case_name, k, "model_input");
    const sd_tensor *t_eps = get_f32(w, "%s.step%d.%s", case_name, k, "noise_pred");
    const sd_tensor *t_lat = get_f32(w, "%s.step%d.%s", case_name, k, "latents");
    const sd_tensor *t_noise = get_f32(w, "%s.step%d.%s", case_name, k, "step_noise");
    if (!t_in || !t_eps || !t_lat) {
      snprintf(id, sizeof id, "%s.step%d", base_id, k);
      conf_result(c, id, 0, "golden tensors missing");
      goto done;
    }
    if (t_ts) {
      /* safetensors data need not be aligned: copy the scalar out */
      double f64 = NAN;
      float f32 = NAN;
      int64_t i64 = 0;
      if (t_ts->dtype == SD_F64) memcpy(&f64, t_ts->data, 8);
      if (t_ts->dtype == SD_F32) memcpy(&f32, t_ts->data, 4);
      if (t_ts->dtype == SD_I64) memcpy(&i64, t_ts->data, 8);
      double want = t_ts->dtype == SD_F64   ? f64
                    : t_ts->dtype == SD_F32 ? f32
                    : t_ts->dtype == SD_I64 ? (double)i64
                                            : NAN;
      snprintf(id, sizeof id, "%s.step%d.timestep", base_id, k);
      double got = sd_scheduler_timestep(s, k);
      if (conf_wants(c, id)) conf_result(c, id, (float)got == (float)want, "%.9g (expected %.9g)", got, want);
    }
    memcpy(xin, x, (size_t)n * sizeof(float));
    sd_scheduler_scale_model_input(s, k, xin, n);
    snprintf(id, sizeof id, "%s.step%d.model_input", base_id, k);
    if (conf_wants(c, id)) conf_check_tensor(c, id, xin, n, t_in, 1e-4);
    if (t_noise) {
      /* The loop's generator feeds only the scheduler, so a twin seeded
       * alike draws the same noise in the same order. */
      sd_rng_randn(g_shadow, shadow, n);
      double max_abs = conf_max_abs(shadow, t_noise->data, n);
      snprintf(id, sizeof id, "%s.step%d.step_noise", base_id, k);
      if (conf_wants(c, id))
        conf_result(c, id, memcmp(shadow, t_noise->data, (size_t)n * sizeof(float)) == 0,
                    "bitwise %s (max |d| %.3g)",
                    memcmp(shadow, t_noise->data, (size_t)n * sizeof(float)) ? "differs" : "equal",
                    max_abs);
    }
    if (sd_scheduler_step(s, k, t_eps->data, x, n, g, &err)) {
      snprintf(id, sizeof id, "%s.step%d", base_id, k);
      conf_result(c, id, 0, "%s", err.msg);
      goto done;
    }
    snprintf(id, sizeof id, "%s.step%d.latents", base_id, k);
    if (conf_wants(c, id)) conf_check_tensor(c, id, x, n, t_lat, 1e-4);
  }
  {
    const cJSON *outs = cJSON_GetObjectItemCaseSensitive(kase, "outputs");
    const char *fname = sd_json_str(outs, "final_latents", NULL);
    snprintf(name, sizeof name, "%s.final_latents", case_name);
    snprintf(id, sizeof id, "%s.final_latents", base_id);
    if (conf_wants(c, id)) conf_check_tensor(c, id, x, n, sd_weights_get(w, fname ? fname : name), 1e-3);
  }
done:
  sd_rng_free(g);
  sd_rng_free(g_shadow);
  sd_free(x);
  sd_free(xin);
  sd_free(shadow);
}

void conf_scheduler_case(conf_ctx *c, const char *model, const char *golden_dir,
                         const cJSON *root, const cJSON *kase) {
  const char *case_name = sd_json_str(kase, "name", "scheduler");
  char base_id[256], id[320], path[4096];
  snprintf(base_id, sizeof base_id, "%s/%s", model, case_name);
  /* Run when the filter names this case, part of it, or a check inside it. */
  if (c->filter && !strstr(base_id, c->filter) && !strstr(c->filter, base_id)) return;

  const char *folder = sd_json_str(root, "model_folder", model);
  snprintf(path, sizeof path, "%s/%s/scheduler/scheduler_config.json", c->fixtures, folder);
  cJSON *cfg = NULL;
  sd_weights *w = NULL;
  sd_scheduler *s = NULL;
  sd_error err = {0};
  snprintf(id, sizeof id, "%s.create", base_id);
  if (sd_json_read_file(path, &cfg, &err)) {
    conf_result(c, id, 0, "%s", err.msg);
    return;
  }
  const char *cls = sd_json_str(kase, "scheduler_class", NULL);
  int kind = conf_sampler_for_class(cls);
  const cJSON *overrides = cJSON_GetObjectItemCaseSensitive(kase, "from_config_overrides");
  if (kind < 0) {
    conf_result(c, id, 0, "scheduler class %s unknown", cls ? cls : "(none)");
    goto done;
  }
  if (sd_scheduler_create(&s, cfg, (sd_sampler)kind, overrides, &err)) {
    conf_result(c, id, 0, "%s", err.msg);
    goto done;
  }

  snprintf(id, sizeof id, "%s.config", base_id);
  const cJSON *resolved = cJSON_GetObjectItemCaseSensitive(kase, "resolved_config");
  if (resolved && conf_wants(c, id)) check_config(c, id, s, resolved);

  const cJSON *by_steps = cJSON_GetObjectItemCaseSensitive(kase, "timesteps_by_steps");
  const cJSON *e;
  cJSON_ArrayForEach(e, by_steps) {
    snprintf(id, sizeof id, "%s.timesteps%s", base_id, e->string);
    if (conf_wants(c, id)) check_schedule(c, id, s, atoi(e->string), e);
  }

  const cJSON *loop = cJSON_GetObjectItemCaseSensitive(kase, "loop");
  if (loop) {
    const char *file = sd_json_str(kase, "file", "scheduler.safetensors");
    snprintf(path, sizeof path, "%s/%s", golden_dir, file);
    if (sd_weights_open(&w, path, &err)) {
      snprintf(id, sizeof id, "%s.loop", base_id);
      conf_result(c, id, 0, "%s", err.msg);
      goto done;
    }
    /* A fresh scheduler, as the pipeline would have. */
    sd_scheduler_free(s);
    s = NULL;
    if (sd_scheduler_create(&s, cfg, (sd_sampler)kind, overrides, &err)) {
      conf_result(c, base_id, 0, "%s", err.msg);
      goto done;
    }
    run_loop(c, base_id, s, w, case_name, loop, kase);
  }
done:
  sd_scheduler_free(s);
  sd_weights_free(w);
  cJSON_Delete(cfg);
}
