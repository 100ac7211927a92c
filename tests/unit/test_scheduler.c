/* Scheduler unit tests without fixtures: schedules against values diffusers
 * gives for the SD 1.5 / SDXL / SD3 configs, edge cases, bad configs,
 * step formulas on tiny inputs, img2img helpers and allocation failures. */
#include <math.h>
#include <string.h>

#include "base/alloc.h"
#include "sample/scheduler.h"
#include "test_util.h"

static const char *SD15_CONFIG =
    "{\"_class_name\": \"PNDMScheduler\", \"beta_end\": 0.012, \"beta_schedule\": "
    "\"scaled_linear\", \"beta_start\": 0.00085, \"clip_sample\": false, "
    "\"num_train_timesteps\": 1000, \"set_alpha_to_one\": false, \"skip_prk_steps\": true, "
    "\"steps_offset\": 1, \"trained_betas\": null}";

static const char *SD3_CONFIG =
    "{\"_class_name\": \"FlowMatchEulerDiscreteScheduler\", \"num_train_timesteps\": 1000, "
    "\"shift\": 3.0}";

/* Creates a scheduler from JSON text (+ optional overrides text). */
static sd_scheduler *make(const char *config, int kind, const char *overrides, sd_error *err) {
  cJSON *c = cJSON_Parse(config);
  cJSON *o = overrides ? cJSON_Parse(overrides) : NULL;
  sd_scheduler *s = NULL;
  if (!c) return NULL;
  if (sd_scheduler_create(&s, c, (sd_sampler)kind, o, err)) s = NULL;
  cJSON_Delete(c);
  cJSON_Delete(o);
  return s;
}

static int timesteps_equal(const sd_scheduler *s, const double *want, int n) {
  if (sd_scheduler_num_steps(s) != n) return 0;
  for (int i = 0; i < n; i++)
    if (sd_scheduler_timestep(s, i) != want[i]) return 0;
  return 1;
}

static void test_schedules(void) {
  sd_error err = {0};
  sd_scheduler *s = make(SD15_CONFIG, SD_SAMPLER_DEFAULT, NULL, &err);
  CHECK(s != NULL);
  if (!s) return;
  CHECK(sd_scheduler_kind(s) == SD_SAMPLER_PNDM);
  CHECK(sd_scheduler_set_timesteps(s, 4, &err) == SD_OK);
  const double pndm4[] = {751, 501, 501, 251, 1};
  CHECK(timesteps_equal(s, pndm4, 5));
  CHECK(sd_scheduler_sigmas(s, NULL) == NULL);
  CHECK(sd_scheduler_init_noise_sigma(s) == 1.0f);
  CHECK(!sd_scheduler_float_timesteps(s));
  sd_scheduler_free(s);

  /* Euler from the SD 1.5 file: the class default spacing "linspace". */
  s = make(SD15_CONFIG, SD_SAMPLER_EULER, NULL, &err);
  CHECK(s != NULL);
  if (!s) return;
  CHECK(sd_scheduler_set_timesteps(s, 4, &err) == SD_OK);
  const double euler4[] = {999, 666, 333, 0};
  CHECK(timesteps_equal(s, euler4, 4));
  int ns = 0;
  const float *sig = sd_scheduler_sigmas(s, &ns);
  CHECK(ns == 5 && sig && sig[4] == 0.0f);
  CHECK(sig && fabsf(sig[0] - 14.614645f) < 2e-6f);
  CHECK(fabsf(sd_scheduler_init_noise_sigma(s) - 14.614645f) < 2e-6f);
  CHECK(sd_scheduler_float_timesteps(s));
  sd_scheduler_free(s);

  /* spacings through overrides */
  s = make(SD15_CONFIG, SD_SAMPLER_EULER, "{\"timestep_spacing\": \"trailing\"}", &err);
  CHECK(s && sd_scheduler_set_timesteps(s, 4, &err) == SD_OK);
  const double trailing4[] = {999, 749, 499, 249};
  CHECK(s && timesteps_equal(s, trailing4, 4));
  sd_scheduler_free(s);
  s = make(SD15_CONFIG, SD_SAMPLER_DDIM, "{\"timestep_spacing\": \"linspace\"}", &err);
  CHECK(s && sd_scheduler_set_timesteps(s, 4, &err) == SD_OK);
  const double ddim_lin4[] = {999, 666, 333, 0};
  CHECK(s && timesteps_equal(s, ddim_lin4, 4));
  sd_scheduler_free(s);
  s = make(SD15_CONFIG, SD_SAMPLER_EULER, "{\"timestep_spacing\": \"leading\"}", &err);
  CHECK(s && sd_scheduler_set_timesteps(s, 4, &err) == SD_OK);
  const double leading4[] = {751, 501, 251, 1};
  CHECK(s && timesteps_equal(s, leading4, 4));
  /* leading spacing: init sigma is sqrt(max^2 + 1) */
  if (s) {
    float mx = sd_scheduler_sigmas(s, NULL)[0];
    CHECK(fabsf(sd_scheduler_init_noise_sigma(s) - sqrtf(mx * mx + 1)) < 1e-6f);
  }
  sd_scheduler_free(s);

  /* DPM++ 2M Karras */
  s = make(SD15_CONFIG, SD_SAMPLER_DPMPP_2M_KARRAS, NULL, &err);
  CHECK(s && sd_scheduler_set_timesteps(s, 4, &err) == SD_OK);
  const double karras4[] = {999, 687, 146, 0};
  CHECK(s && timesteps_equal(s, karras4, 4));
  sd_scheduler_free(s);

  /* LCM */
  s = make(SD15_CONFIG, SD_SAMPLER_LCM, NULL, &err);
  CHECK(s && sd_scheduler_set_timesteps(s, 4, &err) == SD_OK);
  const double lcm4[] = {999, 759, 499, 259};
  CHECK(s && timesteps_equal(s, lcm4, 4));
  sd_scheduler_free(s);

  /* SD3 flow matching, shift 3 (values of diffusers' schedule) */
  s = make(SD3_CONFIG, SD_SAMPLER_DEFAULT, NULL, &err);
  CHECK(s != NULL);
  if (!s) return;
  CHECK(sd_scheduler_kind(s) == SD_SAMPLER_FLOW_EULER);
  CHECK(sd_scheduler_prediction_type(s) == 3);
  CHECK(sd_scheduler_set_timesteps(s, 4, &err) == SD_OK);
  const float flow4[] = {1000.0f, 857.6923217773438f, 602.1505737304688f, 8.928571701049805f};
  int flow_ok = sd_scheduler_num_steps(s) == 4;
  for (int i = 0; flow_ok && i < 4; i++) flow_ok = (float)sd_scheduler_timestep(s, i) == flow4[i];
  CHECK(flow_ok);
  sig = sd_scheduler_sigmas(s, &ns);
  CHECK(ns == 5 && sig[0] == 1.0f && sig[4] == 0.0f && sig[3] == 0.008928571827709675f);
  sd_scheduler_free(s);
}

static void test_edge_cases(void) {
  sd_error err = {0};
  for (int k = 0; k < SD_SAMPLER_COUNT; k++) {
    const char *cfg = k == SD_SAMPLER_FLOW_EULER ? SD3_CONFIG : SD15_CONFIG;
    sd_scheduler *s = make(cfg, k, NULL, &err);
    CHECK_MSG(s != NULL, "%s: %s", sd_sampler_name((sd_sampler)k), err.msg);
    if (!s) continue;
    /* one step works and runs */
    CHECK_MSG(sd_scheduler_set_timesteps(s, 1, &err) == SD_OK, "%s: %s",
              sd_sampler_name((sd_sampler)k), err.msg);
    CHECK(sd_scheduler_num_steps(s) == 1);
    float x[8], eps[8];
    for (int i = 0; i < 8; i++) {
      x[i] = 0.1f * (float)(i - 4);
      eps[i] = 0.05f * (float)i;
    }
    sd_rng *g = sd_rng_new(SD_RNG_CPU, 5);
    sd_scheduler_scale_model_input(s, 0, x, 8);
    CHECK(sd_scheduler_step(s, 0, eps, x, 8, g, &err) == SD_OK);
    int finite = 1;
    for (int i = 0; i < 8; i++) finite &= isfinite(x[i]) != 0;
    CHECK_MSG(finite, "%s: non-finite output after 1 step", sd_sampler_name((sd_sampler)k));
    /* stepping past the schedule is an error, not a crash */
    CHECK(sd_scheduler_step(s, 1, eps, x, 8, g, &err) != SD_OK);
    sd_rng_free(g);
    /* more steps than training timesteps */
    sd_error e2 = {0};
    CHECK(sd_scheduler_set_timesteps(s, 1001, &e2) == SD_ERR_ARG);
    CHECK(strstr(e2.msg, "1001") != NULL);
    sd_error e3 = {0};
    CHECK(sd_scheduler_set_timesteps(s, 0, &e3) == SD_ERR_ARG);
    sd_scheduler_free(s);
  }
  /* LCM: more steps than original_inference_steps */
  sd_scheduler *s = make(SD15_CONFIG, SD_SAMPLER_LCM, NULL, &err);
  sd_error e4 = {0};
  CHECK(s && sd_scheduler_set_timesteps(s, 51, &e4) == SD_ERR_ARG);
  sd_scheduler_free(s);
  /* ancestral sampling needs a generator */
  s = make(SD15_CONFIG, SD_SAMPLER_EULER_A, NULL, &err);
  float x[4] = {0}, eps[4] = {0};
  sd_error e5 = {0};
  CHECK(s && sd_scheduler_set_timesteps(s, 4, &err) == SD_OK);
  CHECK(s && sd_scheduler_step(s, 0, eps, x, 4, NULL, &e5) == SD_ERR_ARG);
  sd_scheduler_free(s);
  /* PNDM with Runge-Kutta warm-up: 12 PRK calls + steps - 3 PLMS calls */
  s = make(SD15_CONFIG, SD_SAMPLER_PNDM, "{\"skip_prk_steps\": false}", &err);
  CHECK(s && sd_scheduler_set_timesteps(s, 10, &err) == SD_OK);
  if (s) {
    CHECK(sd_scheduler_num_steps(s) == 19);
    CHECK(sd_scheduler_timestep(s, 0) == 901 && sd_scheduler_timestep(s, 1) == 851 &&
          sd_scheduler_timestep(s, 2) == 851 && sd_scheduler_timestep(s, 11) == 601 &&
          sd_scheduler_timestep(s, 12) == 601 && sd_scheduler_timestep(s, 18) == 1);
    float xs[4] = {1, -1, 0.5f, 0}, e[4] = {0.1f, 0.2f, -0.3f, 0};
    int ok = 1;
    for (int i = 0; i < 19 && ok; i++) ok = sd_scheduler_step(s, i, e, xs, 4, NULL, &err) == SD_OK;
    CHECK(ok);
    CHECK(isfinite(xs[0]) && isfinite(xs[1]));
  }
  sd_scheduler_free(s);
}

static void expect_config_error(const char *config, int kind, const char *overrides,
                                int code, const char *needle) {
  sd_error err = {0};
  sd_scheduler *s = make(config, kind, overrides, &err);
  CHECK_MSG(s == NULL && err.code == code && strstr(err.msg, needle) != NULL,
            "expected error %d mentioning '%s', got %d '%s'", code, needle, err.code, err.msg);
  sd_scheduler_free(s);
}

static void test_bad_configs(void) {
  expect_config_error(SD15_CONFIG, SD_SAMPLER_DDIM, "{\"beta_schedule\": \"cosine\"}",
                      SD_ERR_FORMAT, "beta_schedule");
  expect_config_error(SD15_CONFIG, SD_SAMPLER_EULER, "{\"timestep_spacing\": 3}",
                      SD_ERR_FORMAT, "timestep_spacing");
  expect_config_error(SD15_CONFIG, SD_SAMPLER_EULER, "{\"num_train_timesteps\": \"many\"}",
                      SD_ERR_FORMAT, "num_train_timesteps");
  expect_config_error(SD15_CONFIG, SD_SAMPLER_EULER, "{\"num_train_timesteps\": 0}",
                      SD_ERR_FORMAT, "num_train_timesteps");
  expect_config_error(SD15_CONFIG, SD_SAMPLER_DDIM, "{\"prediction_type\": \"x0\"}",
                      SD_ERR_FORMAT, "prediction_type");
  expect_config_error(SD15_CONFIG, SD_SAMPLER_DDIM, "{\"beta_start\": -1}", SD_ERR_FORMAT,
                      "beta_start");
  expect_config_error(SD15_CONFIG, SD_SAMPLER_DPMPP_2M, "{\"solver_order\": 3}",
                      SD_ERR_UNSUPPORTED, "solver_order");
  expect_config_error(SD15_CONFIG, SD_SAMPLER_DPMPP_2M, "{\"algorithm_type\": \"sde-dpmsolver++\"}",
                      SD_ERR_FORMAT, "algorithm_type");
  expect_config_error(SD15_CONFIG, SD_SAMPLER_DDIM, "{\"trained_betas\": [0.1, 0.2]}",
                      SD_ERR_FORMAT, "trained_betas");
  expect_config_error(SD15_CONFIG, SD_SAMPLER_DDIM, "{\"clip_sample\": 1}", SD_ERR_FORMAT,
                      "clip_sample");
  expect_config_error(SD15_CONFIG, SD_SAMPLER_FLOW_EULER, NULL, SD_ERR_ARG, "flow");
  expect_config_error(SD3_CONFIG, SD_SAMPLER_EULER, NULL, SD_ERR_ARG, "flow");
  expect_config_error("{\"_class_name\": \"KDPM2DiscreteScheduler\"}", SD_SAMPLER_DEFAULT, NULL,
                      SD_ERR_UNSUPPORTED, "KDPM2DiscreteScheduler");
  expect_config_error("[1, 2]", SD_SAMPLER_EULER, NULL, SD_ERR_FORMAT, "object");
  expect_config_error(SD3_CONFIG, SD_SAMPLER_DEFAULT, "{\"shift\": -2}", SD_ERR_FORMAT, "shift");
  CHECK(sd_sampler_parse("euler_a") == SD_SAMPLER_EULER_A);
  CHECK(sd_sampler_parse("k_lms") == -1);
  CHECK(strcmp(sd_sampler_name(SD_SAMPLER_DPMPP_2M_KARRAS), "dpmpp_2m_karras") == 0);
}

/* Single-element checks of the step formulas against hand-computed
 * diffusers arithmetic. */
static void test_step_formulas(void) {
  sd_error err = {0};
  /* Euler epsilon: x' = x + (x - (x - sigma*eps))/sigma * (sigma_next - sigma) */
  sd_scheduler *s = make(SD15_CONFIG, SD_SAMPLER_EULER, NULL, &err);
  CHECK(s && sd_scheduler_set_timesteps(s, 4, &err) == SD_OK);
  if (s) {
    const float *sig = sd_scheduler_sigmas(s, NULL);
    float x = 2.0f, eps = 0.5f;
    float want = x + eps * (sig[1] - sig[0]);
    sd_scheduler_step(s, 0, &eps, &x, 1, NULL, &err);
    CHECK_MSG(fabsf(x - want) < 1e-5f * fabsf(want), "euler %g vs %g", x, want);
  }
  sd_scheduler_free(s);
  /* DDIM epsilon, eta 0 */
  s = make(SD15_CONFIG, SD_SAMPLER_DDIM, NULL, &err);
  CHECK(s && sd_scheduler_set_timesteps(s, 4, &err) == SD_OK);
  if (s) {
    float x = 1.0f, eps = 0.25f;
    /* x0 = (x - sqrt(1-a) eps)/sqrt(a); x' = sqrt(ap) x0 + sqrt(1-ap) eps */
    sd_scheduler_step(s, 0, &eps, &x, 1, NULL, &err);
    CHECK(isfinite(x) && x != 1.0f);
  }
  sd_scheduler_free(s);
  /* flow: x' = x + (sigma_next - sigma) v */
  s = make(SD3_CONFIG, SD_SAMPLER_DEFAULT, NULL, &err);
  CHECK(s && sd_scheduler_set_timesteps(s, 4, &err) == SD_OK);
  if (s) {
    const float *sig = sd_scheduler_sigmas(s, NULL);
    float x = 1.0f, v = -2.0f;
    float want = x + (sig[1] - sig[0]) * v;
    sd_scheduler_step(s, 0, &v, &x, 1, NULL, &err);
    CHECK(x == want);
  }
  sd_scheduler_free(s);
}

/* v-prediction (SD 2.x) through DDIM: with sqrt(a) read back from add_noise,
 * x0 = sa x - sb v, eps = sa v + sb x, x' = sap x0 + sqrt(1 - ap) eps. */
static void test_v_prediction(void) {
  sd_error err = {0};
  sd_scheduler *s = make(SD15_CONFIG, SD_SAMPLER_DDIM, "{\"prediction_type\": \"v_prediction\"}", &err);
  CHECK(s && sd_scheduler_set_timesteps(s, 4, &err) == SD_OK);
  if (!s) return;
  CHECK(sd_scheduler_prediction_type(s) == 1);
  float zero = 0.0f, sa = 1.0f, sap = 1.0f;
  sd_scheduler_add_noise(s, 0, &sa, &zero, 1);  /* timesteps[0] = 751 */
  sd_scheduler_add_noise(s, 1, &sap, &zero, 1); /* timesteps[1] = 501 */
  double sb = sqrt(1.0 - (double)sa * sa), sbp = sqrt(1.0 - (double)sap * sap);
  float x = 0.7f, v = -0.3f;
  double x0 = sa * x - sb * v, eps = sa * v + sb * x;
  double want = sap * x0 + sbp * eps;
  CHECK(sd_scheduler_step(s, 0, &v, &x, 1, NULL, &err) == SD_OK);
  CHECK_MSG(fabs(x - want) < 1e-5, "ddim v-pred %g vs %g", x, want);
  sd_scheduler_free(s);
}

/* rescale_betas_zero_snr: the terminal alpha_bar becomes 0, which Euler
 * replaces by 2^-24, so the first sigma is sqrt(2^24 - 1) ~ 4096. */
static void test_zero_snr(void) {
  sd_error err = {0};
  sd_scheduler *s = make(SD15_CONFIG, SD_SAMPLER_EULER,
                         "{\"rescale_betas_zero_snr\": true, \"timestep_spacing\": \"trailing\"}", &err);
  CHECK(s && sd_scheduler_set_timesteps(s, 4, &err) == SD_OK);
  if (!s) return;
  CHECK(sd_scheduler_timestep(s, 0) == 999);
  CHECK_MSG(fabsf(sd_scheduler_sigmas(s, NULL)[0] - 4096.0f) < 1.0f, "sigma0 %g",
            sd_scheduler_sigmas(s, NULL)[0]);
  sd_scheduler_free(s);
}

static void test_img2img(void) {
  sd_error err = {0};
  /* DDPM-family add_noise: sqrt(a_t) x + sqrt(1 - a_t) n */
  sd_scheduler *s = make(SD15_CONFIG, SD_SAMPLER_DDIM, NULL, &err);
  CHECK(s && sd_scheduler_set_timesteps(s, 10, &err) == SD_OK);
  if (s) {
    float x = 1.0f, n = 1.0f;
    sd_scheduler_add_noise(s, 7, &x, &n, 1);
    /* timesteps[7] = 201 (leading, offset 1): a strictly between 0 and 1 */
    CHECK(x > 1.0f && x < 1.42f);
  }
  sd_scheduler_free(s);
  /* Euler: x + sigma n, and the begin index drives the first step */
  s = make(SD15_CONFIG, SD_SAMPLER_EULER, NULL, &err);
  CHECK(s && sd_scheduler_set_timesteps(s, 10, &err) == SD_OK);
  if (s) {
    const float *sig = sd_scheduler_sigmas(s, NULL);
    float x = 1.0f, n = 2.0f;
    sd_scheduler_add_noise(s, 3, &x, &n, 1);
    CHECK(x == 1.0f + 2.0f * sig[3]);
    sd_scheduler_set_begin_index(s, 7);
    float y = 3.0f;
    sd_scheduler_scale_model_input(s, 7, &y, 1);
    CHECK(y == 3.0f / sqrtf(sig[7] * sig[7] + 1.0f));
  }
  sd_scheduler_free(s);
  /* flow scale_noise: sigma n + (1 - sigma) x */
  s = make(SD3_CONFIG, SD_SAMPLER_DEFAULT, NULL, &err);
  CHECK(s && sd_scheduler_set_timesteps(s, 8, &err) == SD_OK);
  if (s) {
    const float *sig = sd_scheduler_sigmas(s, NULL);
    float x = 1.0f, n = -1.0f;
    sd_scheduler_add_noise(s, 2, &x, &n, 1);
    CHECK(x == sig[2] * -1.0f + (1.0f - sig[2]) * 1.0f);
  }
  sd_scheduler_free(s);
  /* dynamic shifting needs mu */
  s = make(SD3_CONFIG, SD_SAMPLER_DEFAULT, "{\"use_dynamic_shifting\": true}", &err);
  sd_error e2 = {0};
  CHECK(s && sd_scheduler_set_timesteps(s, 8, &e2) == SD_ERR_ARG);
  if (s) {
    sd_scheduler_set_mu(s, 1.15);
    CHECK(sd_scheduler_set_timesteps(s, 8, &err) == SD_OK);
    CHECK(fabsf(sd_scheduler_sigmas(s, NULL)[1] - 0.9499281048774719f) < 2e-7f);
  }
  sd_scheduler_free(s);
}

static void test_resolved_config(void) {
  sd_error err = {0};
  sd_scheduler *s = make(SD15_CONFIG, SD_SAMPLER_EULER, NULL, &err);
  CHECK(s != NULL);
  if (!s) return;
  cJSON *j = sd_scheduler_resolved_config(s);
  CHECK(j != NULL);
  if (j) {
    CHECK(strcmp(cJSON_GetObjectItem(j, "timestep_spacing")->valuestring, "linspace") == 0);
    CHECK(strcmp(cJSON_GetObjectItem(j, "beta_schedule")->valuestring, "scaled_linear") == 0);
    CHECK(cJSON_GetObjectItem(j, "steps_offset")->valuedouble == 1);
    CHECK(strcmp(cJSON_GetObjectItem(j, "_class_name")->valuestring, "EulerDiscreteScheduler") == 0);
  }
  cJSON_Delete(j);
  sd_scheduler_free(s);
}

/* Every allocation failure ends in a clean error and leaks nothing. */
static void test_alloc_failures(void) {
  cJSON *c = cJSON_Parse(SD15_CONFIG);
  const int kinds[] = {SD_SAMPLER_PNDM, SD_SAMPLER_EULER_A, SD_SAMPLER_DPMPP_2M_KARRAS};
  for (int ki = 0; ki < 3; ki++) {
    int completed = 0;
    for (int64_t nfail = 1; nfail < 200 && !completed; nfail++) {
      int64_t before = sd_alloc_get_stats().bytes_in_use;
      sd_error err = {0};
      sd_scheduler *s = NULL;
      sd_alloc_fail_at(nfail, 1);
      int rc = sd_scheduler_create(&s, c, (sd_sampler)kinds[ki], NULL, &err);
      if (!rc) rc = sd_scheduler_set_timesteps(s, 4, &err);
      float x[4] = {1, 2, 3, 4}, e[4] = {0.1f, 0.1f, 0.1f, 0.1f};
      sd_rng *g = NULL;
      if (!rc) {
        g = sd_rng_new(SD_RNG_CPU, 1);
        if (!g) rc = SD_ERR_OOM;
      }
      for (int i = 0; !rc && i < sd_scheduler_num_steps(s); i++)
        rc = sd_scheduler_step(s, i, e, x, 4, g, &err);
      int triggered = sd_alloc_fault_triggered();
      sd_alloc_fail_at(0, 0);
      if (rc) CHECK_MSG(rc == SD_ERR_OOM, "alloc failure %lld gave %d: %s", (long long)nfail, rc, err.msg);
      if (!triggered) {
        CHECK(rc == SD_OK);
        completed = 1;
      }
      sd_rng_free(g);
      sd_scheduler_free(s);
      CHECK(sd_alloc_get_stats().bytes_in_use == before);
    }
    CHECK(completed);
  }
  cJSON_Delete(c);
}

int main(void) {
  test_schedules();
  test_edge_cases();
  test_bad_configs();
  test_step_formulas();
  test_v_prediction();
  test_zero_snr();
  test_img2img();
  test_resolved_config();
  test_alloc_failures();
  return test_finish();
}
