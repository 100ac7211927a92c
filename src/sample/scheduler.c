/* Schedulers restating diffusers v0.31.0: PNDM (PRK + PLMS), DDIM, Euler,
 * Euler ancestral, DPM-Solver++ multistep (orders 1-2), LCM and flow-matching
 * Euler (SD3).
 *
 * Precision follows the reference so that timesteps come out identical and
 * sigmas to float32 precision:
 *  - betas, alphas and alphas_cumprod are float32 torch tensors (linspace in
 *    float, cumprod accumulated in double as torch's CPU kernel does);
 *  - timestep grids are numpy float64 (np.round is half-to-even: rint);
 *  - sigma tables are torch float32 ops, interpolated with np.interp in
 *    float64 and cast to float32;
 *  - per-step scalars are 0-d float32 tensors; element-wise math is float32.
 *
 * The step index follows diffusers: on the first scale_model_input / step
 * call it is the begin index if one was set, else the position of the
 * timestep in the schedule (the second one if it occurs twice); afterwards
 * it advances by one per step. */
#include "sample/scheduler.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"

enum { PRED_EPSILON = 0, PRED_V = 1, PRED_SAMPLE = 2, PRED_FLOW = 3 };
enum { SPACE_LINSPACE, SPACE_LEADING, SPACE_TRAILING };
enum { BETA_LINEAR, BETA_SCALED_LINEAR, BETA_SQUAREDCOS };

#define MAX_ETS 4

struct sd_scheduler {
  sd_sampler kind;
  /* ---- config (class defaults, then the JSON, then overrides) ---- */
  int num_train;
  double beta_start, beta_end;
  int beta_schedule;
  int prediction;
  int spacing;
  int steps_offset;
  int set_alpha_to_one;
  int clip_sample;
  double clip_sample_range;
  int skip_prk_steps;
  int interp_log_linear;   /* Euler interpolation_type */
  int use_karras;
  int final_sigma_min;     /* final_sigmas_type "sigma_min" (else "zero") */
  int has_sigma_min, has_sigma_max;
  double cfg_sigma_min, cfg_sigma_max;
  int solver_order;        /* DPM */
  int dpm_plus_plus;       /* algorithm_type dpmsolver++ (else dpmsolver) */
  int solver_heun;         /* solver_type heun (else midpoint) */
  int lower_order_final, euler_at_final;
  double lambda_min_clipped;
  int original_steps;      /* LCM */
  double timestep_scaling; /* LCM */
  double shift;            /* flow */
  int dynamic_shifting;    /* flow */
  double mu;               /* flow, with dynamic shifting */
  int has_mu;
  /* ---- training schedule ---- */
  float *alphas_cumprod;   /* (num_train) */
  float final_alpha_cumprod;
  float flow_sigma_min, flow_sigma_max; /* flow: shifted 1/N and 1 */
  /* ---- inference schedule ---- */
  int inference_steps;     /* num_inference_steps given to set_timesteps */
  int n_ts;                /* entries of timesteps (model calls) */
  double *timesteps;       /* (n_ts) */
  float *sigmas;           /* (n_ts + 1) or NULL */
  float init_noise_sigma;
  int n_prk;               /* PNDM: leading PRK timesteps */
  /* ---- loop state ---- */
  int begin_index;         /* -1: none */
  int step_index;          /* -1: not started */
  int64_t n;               /* elements of the buffers below; 0 = none */
  float *ets[MAX_ETS];     /* PNDM past model outputs, oldest first */
  int n_ets;
  float *cur_sample;       /* PNDM */
  float *cur_model_output; /* PNDM PRK accumulator */
  int has_cur_sample, has_cur_model_output;
  int counter;             /* PNDM */
  float *model_outputs[2]; /* DPM: [older, newer] */
  int lower_order_nums;    /* DPM */
};

static const char *const sampler_names[SD_SAMPLER_COUNT] = {
    "pndm", "ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "lcm",
    "flow_euler"};

static const char *const sampler_classes[SD_SAMPLER_COUNT] = {
    "PNDMScheduler",
    "DDIMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverMultistepScheduler",
    "LCMScheduler",
    "FlowMatchEulerDiscreteScheduler"};

const char *sd_sampler_name(sd_sampler k) {
  return k >= 0 && k < SD_SAMPLER_COUNT ? sampler_names[k] : "default";
}

int sd_sampler_parse(const char *name) {
  if (!name) return -1;
  for (int i = 0; i < SD_SAMPLER_COUNT; i++)
    if (strcmp(name, sampler_names[i]) == 0) return i;
  return -1;
}

/* ------------------------------------------------------------------ */
/* Config reading: a key comes from `overrides` if present there, else from
 * `config`; wrong types are errors that name the key. */

typedef struct cfg_reader {
  const cJSON *config, *overrides;
  sd_error *err;
  int failed;
} cfg_reader;

static const cJSON *cfg_get(cfg_reader *r, const char *key) {
  const cJSON *v = NULL;
  if (r->overrides) v = cJSON_GetObjectItemCaseSensitive(r->overrides, key);
  if (!v && r->config) v = cJSON_GetObjectItemCaseSensitive(r->config, key);
  if (v && cJSON_IsNull(v)) return NULL;
  return v;
}

static double cfg_num(cfg_reader *r, const char *key, double def) {
  const cJSON *v = cfg_get(r, key);
  if (!v) return def;
  if (!cJSON_IsNumber(v)) {
    if (!r->failed) sd_fail(r->err, SD_ERR_FORMAT, "scheduler config: \"%s\" must be a number", key);
    r->failed = 1;
    return def;
  }
  return v->valuedouble;
}

static int cfg_int(cfg_reader *r, const char *key, int def) {
  double d = cfg_num(r, key, def);
  if (d != floor(d) || d < -1e9 || d > 1e9) {
    if (!r->failed) sd_fail(r->err, SD_ERR_FORMAT, "scheduler config: \"%s\" must be an integer", key);
    r->failed = 1;
    return def;
  }
  return (int)d;
}

static int cfg_bool(cfg_reader *r, const char *key, int def) {
  const cJSON *v = cfg_get(r, key);
  if (!v) return def;
  if (!cJSON_IsBool(v)) {
    if (!r->failed) sd_fail(r->err, SD_ERR_FORMAT, "scheduler config: \"%s\" must be true or false", key);
    r->failed = 1;
    return def;
  }
  return cJSON_IsTrue(v);
}

/* Index of the string value in `choices` (NULL-terminated); def if absent;
 * an error listing the choices if the value is not one of them. */
static int cfg_choice(cfg_reader *r, const char *key, const char *const *choices, int def) {
  const cJSON *v = cfg_get(r, key);
  if (!v) return def;
  if (cJSON_IsString(v)) {
    for (int i = 0; choices[i]; i++)
      if (strcmp(v->valuestring, choices[i]) == 0) return i;
  }
  if (!r->failed) {
    char list[256] = "";
    for (int i = 0; choices[i]; i++) {
      strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
      strncat(list, choices[i], sizeof list - strlen(list) - 1);
    }
    sd_fail(r->err, SD_ERR_FORMAT, "scheduler config: \"%s\" is %s%s%s; supported: %s", key,
            cJSON_IsString(v) ? "\"" : "", cJSON_IsString(v) ? v->valuestring : "not a string",
            cJSON_IsString(v) ? "\"" : "", list);
  }
  r->failed = 1;
  return def;
}

/* ------------------------------------------------------------------ */
/* Training schedule */

/* torch.linspace(start, end, n, dtype=float32) as torch's CPU kernel (AVX2
 * build) produces it: step = (end - start) / (n - 1) in float; the first
 * half is measured from start, the second back from end; pairs of 8-wide
 * vectors cover the bulk, each vector being base + k*step from one base
 * computed at its first index (even where it straddles the half), and the
 * remainder is scalar. That build contracts the multiply-adds into fused
 * ones, which changes last bits of the betas (and so of every sigma). */
static inline float linspace_point(float start, float end, float step, int n, int i) {
  return i < n / 2 ? fmaf(step, (float)i, start) : fmaf(-step, (float)(n - 1 - i), end);
}

static void linspace_f32(float start, float end, int n, float *out) {
  if (n == 1) {
    out[0] = start;
    return;
  }
  float step = (end - start) / (float)(n - 1);
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int v = i; v < i + 16; v += 8) {
      float base = linspace_point(start, end, step, n, v);
      out[v] = base;
      for (int k = 1; k < 8; k++) out[v + k] = fmaf((float)k, step, base);
    }
  }
  for (; i < n; i++) out[i] = linspace_point(start, end, step, n, i);
}

static double alpha_bar_cos(double t) {
  double c = cos((t + 0.008) / 1.008 * M_PI / 2);
  return c * c;
}

/* Cumulative product of 1 - beta; torch's CPU cumprod keeps a double
 * accumulator and rounds each output to float. */
static void cumprod_alphas(const float *betas, int n, float *out) {
  double acc = 1.0;
  for (int i = 0; i < n; i++) {
    float alpha = 1.0f - betas[i];
    acc *= alpha;
    out[i] = (float)acc;
  }
}

/* rescale_zero_terminal_snr (Lin et al. 2023), in float32 as diffusers. */
static void rescale_zero_snr(float *betas, int n) {
  float *abar_sqrt = sd_alloc((size_t)n * sizeof(float));
  if (!abar_sqrt) return;
  cumprod_alphas(betas, n, abar_sqrt);
  for (int i = 0; i < n; i++) abar_sqrt[i] = sqrtf(abar_sqrt[i]);
  float a0 = abar_sqrt[0], aT = abar_sqrt[n - 1];
  float scale = a0 / (a0 - aT);
  for (int i = 0; i < n; i++) {
    float v = (abar_sqrt[i] - aT) * scale;
    abar_sqrt[i] = v * v; /* alphas_bar */
  }
  betas[0] = 1.0f - abar_sqrt[0];
  for (int i = 1; i < n; i++) betas[i] = 1.0f - abar_sqrt[i] / abar_sqrt[i - 1];
  sd_free(abar_sqrt);
}

static int build_training_schedule(sd_scheduler *s, const cJSON *trained, int zero_snr,
                                   sd_error *err) {
  int n = s->num_train;
  float *betas = sd_alloc((size_t)n * sizeof(float));
  s->alphas_cumprod = sd_alloc((size_t)n * sizeof(float));
  if (!betas || !s->alphas_cumprod) {
    sd_free(betas);
    return sd_fail(err, SD_ERR_OOM, "out of memory for the scheduler's beta table");
  }
  if (trained) {
    if (!cJSON_IsArray(trained) || cJSON_GetArraySize(trained) != n) {
      sd_free(betas);
      return sd_fail(err, SD_ERR_FORMAT,
                     "scheduler config: \"trained_betas\" must be an array of num_train_timesteps (%d) numbers", n);
    }
    int i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, trained) {
      if (!cJSON_IsNumber(v)) {
        sd_free(betas);
        return sd_fail(err, SD_ERR_FORMAT, "scheduler config: \"trained_betas\" holds a non-number");
      }
      betas[i++] = (float)v->valuedouble;
    }
  } else if (s->beta_schedule == BETA_LINEAR) {
    linspace_f32((float)s->beta_start, (float)s->beta_end, n, betas);
  } else if (s->beta_schedule == BETA_SCALED_LINEAR) {
    linspace_f32((float)sqrt(s->beta_start), (float)sqrt(s->beta_end), n, betas);
    for (int i = 0; i < n; i++) betas[i] = betas[i] * betas[i];
  } else {
    for (int i = 0; i < n; i++) {
      double b = 1 - alpha_bar_cos((double)(i + 1) / n) / alpha_bar_cos((double)i / n);
      betas[i] = (float)(b < 0.999 ? b : 0.999);
    }
  }
  if (zero_snr) rescale_zero_snr(betas, n);
  cumprod_alphas(betas, n, s->alphas_cumprod);
  /* Euler-family: a zero terminal alpha_bar would make the first sigma
   * infinite; diffusers substitutes 2^-24. */
  if (zero_snr && (s->kind == SD_SAMPLER_EULER || s->kind == SD_SAMPLER_EULER_A))
    s->alphas_cumprod[n - 1] = 0x1p-24f;
  s->final_alpha_cumprod = s->set_alpha_to_one ? 1.0f : s->alphas_cumprod[0];
  sd_free(betas);
  return SD_OK;
}

/* ------------------------------------------------------------------ */
/* Creation */

static int class_to_sampler(const char *cls, int karras) {
  if (!cls) return -1;
  for (int i = 0; i < SD_SAMPLER_COUNT; i++)
    if (strcmp(cls, sampler_classes[i]) == 0)
      return i == SD_SAMPLER_DPMPP_2M && karras ? SD_SAMPLER_DPMPP_2M_KARRAS : i;
  return -1;
}

static void set_class_defaults(sd_scheduler *s) {
  s->num_train = 1000;
  s->beta_start = 0.0001;
  s->beta_end = 0.02;
  s->beta_schedule = BETA_LINEAR;
  s->prediction = PRED_EPSILON;
  s->spacing = SPACE_LINSPACE;
  s->clip_sample_range = 1.0;
  s->solver_order = 2;
  s->dpm_plus_plus = 1;
  s->lower_order_final = 1;
  s->lambda_min_clipped = -INFINITY;
  s->original_steps = 50;
  s->timestep_scaling = 10.0;
  s->shift = 1.0;
  switch (s->kind) {
    case SD_SAMPLER_PNDM: s->spacing = SPACE_LEADING; break;
    case SD_SAMPLER_DDIM:
      s->spacing = SPACE_LEADING;
      s->clip_sample = 1;
      s->set_alpha_to_one = 1;
      break;
    case SD_SAMPLER_LCM:
      s->spacing = SPACE_LEADING;
      s->set_alpha_to_one = 1;
      s->beta_start = 0.00085;
      s->beta_end = 0.012;
      s->beta_schedule = BETA_SCALED_LINEAR;
      break;
    case SD_SAMPLER_DPMPP_2M_KARRAS: s->use_karras = 1; break;
    default: break;
  }
}

static int read_config(sd_scheduler *s, cfg_reader *r, int *zero_snr, const cJSON **trained) {
  static const char *const beta_names[] = {"linear", "scaled_linear", "squaredcos_cap_v2", NULL};
  static const char *const pred_names[] = {"epsilon", "v_prediction", "sample", NULL};
  static const char *const spacing_names[] = {"linspace", "leading", "trailing", NULL};
  static const char *const interp_names[] = {"linear", "log_linear", NULL};
  static const char *const final_names[] = {"zero", "sigma_min", NULL};
  static const char *const algo_names[] = {"dpmsolver", "dpmsolver++", NULL};
  static const char *const solver_names[] = {"midpoint", "heun", NULL};
  static const char *const ttype_names[] = {"discrete", NULL};

  s->num_train = cfg_int(r, "num_train_timesteps", s->num_train);
  if (s->kind == SD_SAMPLER_FLOW_EULER) {
    s->shift = cfg_num(r, "shift", s->shift);
    s->dynamic_shifting = cfg_bool(r, "use_dynamic_shifting", 0);
    if (r->failed) return r->err ? r->err->code : SD_ERR_FORMAT;
    if (s->num_train < 1 || s->num_train > 100000)
      return sd_fail(r->err, SD_ERR_FORMAT, "scheduler config: num_train_timesteps %d out of range",
                     s->num_train);
    if (!(s->shift > 0))
      return sd_fail(r->err, SD_ERR_FORMAT, "scheduler config: shift must be positive");
    s->prediction = PRED_FLOW;
    return SD_OK;
  }
  s->beta_start = cfg_num(r, "beta_start", s->beta_start);
  s->beta_end = cfg_num(r, "beta_end", s->beta_end);
  s->beta_schedule = cfg_choice(r, "beta_schedule", beta_names, s->beta_schedule);
  *trained = cfg_get(r, "trained_betas");
  s->prediction = cfg_choice(r, "prediction_type", pred_names, s->prediction);
  s->spacing = cfg_choice(r, "timestep_spacing", spacing_names, s->spacing);
  s->steps_offset = cfg_int(r, "steps_offset", 0);
  *zero_snr = cfg_bool(r, "rescale_betas_zero_snr", 0);
  if (s->kind == SD_SAMPLER_PNDM || s->kind == SD_SAMPLER_DDIM || s->kind == SD_SAMPLER_LCM)
    s->set_alpha_to_one = cfg_bool(r, "set_alpha_to_one", s->set_alpha_to_one);
  if (s->kind == SD_SAMPLER_DDIM || s->kind == SD_SAMPLER_LCM) {
    s->clip_sample = cfg_bool(r, "clip_sample", s->clip_sample);
    s->clip_sample_range = cfg_num(r, "clip_sample_range", s->clip_sample_range);
    if (cfg_bool(r, "thresholding", 0) && !r->failed)
      return sd_fail(r->err, SD_ERR_UNSUPPORTED, "scheduler config: thresholding is not supported");
  }
  if (s->kind == SD_SAMPLER_PNDM) s->skip_prk_steps = cfg_bool(r, "skip_prk_steps", 0);
  if (s->kind == SD_SAMPLER_EULER) {
    s->interp_log_linear = cfg_choice(r, "interpolation_type", interp_names, 0);
    cfg_choice(r, "timestep_type", ttype_names, 0);
  }
  if (s->kind == SD_SAMPLER_EULER || s->kind == SD_SAMPLER_DPMPP_2M ||
      s->kind == SD_SAMPLER_DPMPP_2M_KARRAS) {
    s->use_karras = cfg_bool(r, "use_karras_sigmas", s->use_karras);
    if (s->kind == SD_SAMPLER_DPMPP_2M_KARRAS) s->use_karras = 1;
    s->final_sigma_min = cfg_choice(r, "final_sigmas_type", final_names, 0);
    if ((cfg_bool(r, "use_exponential_sigmas", 0) || cfg_bool(r, "use_beta_sigmas", 0) ||
         cfg_bool(r, "use_lu_lambdas", 0)) && !r->failed)
      return sd_fail(r->err, SD_ERR_UNSUPPORTED,
                     "scheduler config: exponential / beta / lu sigma schedules are not supported");
  }
  if (s->kind == SD_SAMPLER_EULER) {
    s->has_sigma_min = cfg_get(r, "sigma_min") != NULL;
    s->has_sigma_max = cfg_get(r, "sigma_max") != NULL;
    s->cfg_sigma_min = cfg_num(r, "sigma_min", 0);
    s->cfg_sigma_max = cfg_num(r, "sigma_max", 0);
  }
  if (s->kind == SD_SAMPLER_DPMPP_2M || s->kind == SD_SAMPLER_DPMPP_2M_KARRAS) {
    s->solver_order = cfg_int(r, "solver_order", 2);
    s->dpm_plus_plus = cfg_choice(r, "algorithm_type", algo_names, 1);
    s->solver_heun = cfg_choice(r, "solver_type", solver_names, 0);
    s->lower_order_final = cfg_bool(r, "lower_order_final", 1);
    s->euler_at_final = cfg_bool(r, "euler_at_final", 0);
    s->lambda_min_clipped = cfg_num(r, "lambda_min_clipped", -INFINITY);
    if (cfg_bool(r, "thresholding", 0) && !r->failed)
      return sd_fail(r->err, SD_ERR_UNSUPPORTED, "scheduler config: thresholding is not supported");
    const cJSON *vt = cfg_get(r, "variance_type");
    if (vt && !r->failed)
      return sd_fail(r->err, SD_ERR_UNSUPPORTED, "scheduler config: variance_type is not supported");
    if (!r->failed && (s->solver_order < 1 || s->solver_order > 2))
      return sd_fail(r->err, SD_ERR_UNSUPPORTED,
                     "scheduler config: solver_order %d not supported (1 or 2)", s->solver_order);
  }
  if (s->kind == SD_SAMPLER_LCM) {
    s->original_steps = cfg_int(r, "original_inference_steps", 50);
    s->timestep_scaling = cfg_num(r, "timestep_scaling", 10.0);
  }
  if (r->failed) return r->err ? r->err->code : SD_ERR_FORMAT;
  if (s->num_train < 2 || s->num_train > 100000)
    return sd_fail(r->err, SD_ERR_FORMAT, "scheduler config: num_train_timesteps %d out of range",
                   s->num_train);
  if (!*trained && !(s->beta_start > 0 && s->beta_end > 0 && s->beta_start < 1 && s->beta_end < 1))
    return sd_fail(r->err, SD_ERR_FORMAT, "scheduler config: beta_start/beta_end must lie in (0, 1)");
  if (s->steps_offset < 0 || s->steps_offset >= s->num_train)
    return sd_fail(r->err, SD_ERR_FORMAT, "scheduler config: steps_offset %d out of range",
                   s->steps_offset);
  if (s->kind == SD_SAMPLER_LCM && (s->original_steps < 1 || s->original_steps > s->num_train))
    return sd_fail(r->err, SD_ERR_FORMAT,
                   "scheduler config: original_inference_steps %d out of range", s->original_steps);
  return SD_OK;
}

int sd_scheduler_create(sd_scheduler **out, const cJSON *config, sd_sampler kind,
                        const cJSON *overrides, sd_error *err) {
  *out = NULL;
  if (config && !cJSON_IsObject(config))
    return sd_fail(err, SD_ERR_FORMAT, "scheduler config is not a JSON object");
  if (overrides && !cJSON_IsObject(overrides))
    return sd_fail(err, SD_ERR_ARG, "scheduler overrides are not a JSON object");
  cfg_reader r = {config, overrides, err, 0};
  const cJSON *cls_item = config ? cJSON_GetObjectItemCaseSensitive(config, "_class_name") : NULL;
  const char *cls = cJSON_IsString(cls_item) ? cls_item->valuestring : NULL;
  int config_is_flow = cls && strncmp(cls, "FlowMatch", 9) == 0;
  if ((int)kind == SD_SAMPLER_DEFAULT) {
    int karras = cfg_bool(&r, "use_karras_sigmas", 0);
    int k = class_to_sampler(cls, karras);
    if (k < 0)
      return sd_fail(err, SD_ERR_UNSUPPORTED, "scheduler class %s is not supported",
                     cls ? cls : "(missing _class_name)");
    kind = (sd_sampler)k;
  } else if ((int)kind < 0 || kind >= SD_SAMPLER_COUNT) {
    return sd_fail(err, SD_ERR_ARG, "unknown sampler %d", (int)kind);
  }
  if (config_is_flow != (kind == SD_SAMPLER_FLOW_EULER))
    return sd_fail(err, SD_ERR_ARG,
                   "sampler %s does not fit this model's scheduler (%s): %s",
                   sd_sampler_name(kind), cls ? cls : "no _class_name",
                   config_is_flow ? "a flow-matching model needs flow_euler"
                                  : "flow_euler needs a flow-matching model");

  sd_scheduler *s = sd_calloc(1, sizeof *s);
  if (!s) return sd_fail(err, SD_ERR_OOM, "out of memory");
  s->kind = kind;
  s->begin_index = -1;
  s->step_index = -1;
  set_class_defaults(s);
  int zero_snr = 0;
  const cJSON *trained = NULL;
  int rc = read_config(s, &r, &zero_snr, &trained);
  if (!rc) {
    if (kind == SD_SAMPLER_FLOW_EULER) {
      /* diffusers' constructor: sigmas of t = N..1, shifted in float32
       * (unless the shift is dynamic); the set_timesteps grid runs between
       * the first and last of them. */
      int n = s->num_train;
      float smax = (float)n / (float)n, smin = 1.0f / (float)n;
      if (!s->dynamic_shifting) {
        float sh = (float)s->shift;
        smax = sh * smax / (1.0f + (sh - 1.0f) * smax);
        smin = sh * smin / (1.0f + (sh - 1.0f) * smin);
      }
      s->flow_sigma_max = smax;
      s->flow_sigma_min = smin;
    } else {
      rc = build_training_schedule(s, trained, zero_snr, err);
    }
  }
  if (rc) {
    sd_scheduler_free(s);
    return rc;
  }
  *out = s;
  return SD_OK;
}

static void free_state(sd_scheduler *s) {
  for (int i = 0; i < MAX_ETS; i++) {
    sd_free(s->ets[i]);
    s->ets[i] = NULL;
  }
  sd_free(s->cur_sample);
  sd_free(s->cur_model_output);
  sd_free(s->model_outputs[0]);
  sd_free(s->model_outputs[1]);
  s->cur_sample = s->cur_model_output = NULL;
  s->model_outputs[0] = s->model_outputs[1] = NULL;
  s->n = 0;
  s->n_ets = 0;
  s->has_cur_sample = s->has_cur_model_output = 0;
  s->counter = 0;
  s->lower_order_nums = 0;
  s->step_index = -1;
  s->begin_index = -1;
}

void sd_scheduler_free(sd_scheduler *s) {
  if (!s) return;
  free_state(s);
  sd_free(s->alphas_cumprod);
  sd_free(s->timesteps);
  sd_free(s->sigmas);
  sd_free(s);
}

sd_sampler sd_scheduler_kind(const sd_scheduler *s) { return s->kind; }

int sd_scheduler_set_mu(sd_scheduler *s, double mu) {
  s->mu = mu;
  s->has_mu = 1;
  return SD_OK;
}

/* ------------------------------------------------------------------ */
/* Inference schedules */

/* np.linspace(a, b, n) in float64: a + i*step, the last entry exactly b. */
static double np_linspace_at(double a, double b, int n, int i) {
  if (n == 1) return a;
  if (i == n - 1) return b;
  double step = (b - a) / (double)(n - 1);
  return a + (double)i * step;
}

/* np.interp(x, arange(len), fp) for x within [0, len-1]. */
static double np_interp_index(double x, const float *fp, int len) {
  if (x <= 0) return fp[0];
  if (x >= len - 1) return fp[len - 1];
  int j = (int)floor(x);
  double slope = ((double)fp[j + 1] - (double)fp[j]) / 1.0;
  if (x == (double)j) return fp[j];
  return slope * (x - (double)j) + (double)fp[j];
}

/* Training sigmas sqrt((1 - a) / a) in float32, ascending in t. */
static float *training_sigmas(const sd_scheduler *s) {
  float *sig = sd_alloc((size_t)s->num_train * sizeof(float));
  if (!sig) return NULL;
  for (int i = 0; i < s->num_train; i++) {
    float a = s->alphas_cumprod[i];
    sig[i] = sqrtf((1.0f - a) / a);
  }
  return sig;
}

/* _sigma_to_t: fractional training index of a sigma by interpolating in
 * log sigma (log_sigmas are float32 as numpy computes them). */
static double sigma_to_t(double sigma, const float *log_sigmas, int n) {
  double log_sigma = log(sigma > 1e-10 ? sigma : 1e-10);
  int count = 0;
  for (int i = 0; i < n; i++)
    if (log_sigma - (double)log_sigmas[i] >= 0) count++;
  int low = count > 0 ? count - 1 : 0;
  if (low > n - 2) low = n - 2;
  float lo = log_sigmas[low], hi = log_sigmas[low + 1];
  double w = ((double)lo - log_sigma) / (double)(lo - hi);
  if (w < 0) w = 0;
  if (w > 1) w = 1;
  return (1 - w) * low + w * (low + 1);
}

/* Karras et al. (2022) sigmas, rho = 7, in float64. */
static void karras_sigmas(double smin, double smax, int steps, double *out) {
  double rho = 7.0;
  double min_inv = pow(smin, 1 / rho), max_inv = pow(smax, 1 / rho);
  for (int i = 0; i < steps; i++) {
    double ramp = np_linspace_at(0, 1, steps, i);
    out[i] = pow(max_inv + ramp * (min_inv - max_inv), rho);
  }
}

/* Integer timestep grid of the DDPM-style samplers (PNDM base grid in
 * ascending order, DDIM / LCM handled by their callers). */
static int64_t leading_or_trailing(const sd_scheduler *s, int steps, int i, int descending) {
  int N = s->num_train;
  if (s->spacing == SPACE_LEADING) {
    int ratio = N / steps;
    int k = descending ? steps - 1 - i : i;
    return (int64_t)k * ratio + s->steps_offset;
  }
  if (s->spacing == SPACE_TRAILING) {
    double ratio = (double)N / steps;
    /* np.arange(N, 0, -ratio): N - k*ratio, rounded, minus one. */
    int k = descending ? i : steps - 1 - i;
    return (int64_t)rint((double)N - k * ratio) - 1;
  }
  /* linspace(0, N-1, steps).round() */
  int k = descending ? steps - 1 - i : i;
  return (int64_t)rint(np_linspace_at(0, N - 1, steps, k));
}

static int alloc_schedule(sd_scheduler *s, int n_ts, int with_sigmas, sd_error *err) {
  sd_free(s->timesteps);
  sd_free(s->sigmas);
  s->sigmas = NULL;
  s->timesteps = sd_alloc((size_t)n_ts * sizeof(double));
  if (with_sigmas) s->sigmas = sd_alloc((size_t)(n_ts + 1) * sizeof(float));
  if (!s->timesteps || (with_sigmas && !s->sigmas))
    return sd_fail(err, SD_ERR_OOM, "out of memory for the timestep schedule");
  s->n_ts = n_ts;
  return SD_OK;
}

static int schedule_pndm(sd_scheduler *s, int steps, sd_error *err) {
  int N = s->num_train;
  int64_t *base = sd_alloc((size_t)steps * sizeof(int64_t)); /* ascending */
  if (!base) return sd_fail(err, SD_ERR_OOM, "out of memory");
  for (int i = 0; i < steps; i++) base[i] = leading_or_trailing(s, steps, i, 0);
  int rc;
  if (s->skip_prk_steps) {
    /* base[:-1], base[-2], base[-1], reversed: the second-to-last grid
     * point is visited twice (the PLMS warm-up). */
    int n = steps + 1;
    if (steps == 1) n = 1;
    rc = alloc_schedule(s, n, 0, err);
    if (!rc) {
      int k = 0;
      double *t = s->timesteps;
      if (steps == 1) {
        t[0] = (double)base[0];
      } else {
        for (int i = steps - 1; i >= 0; i--) {
          t[k++] = (double)base[i];
          if (i == steps - 2) t[k++] = (double)base[i];
        }
      }
      s->n_prk = 0;
    }
  } else {
    if (steps < 4) {
      sd_free(base);
      return sd_fail(err, SD_ERR_ARG, "PNDM without skip_prk_steps needs at least 4 steps");
    }
    /* PRK: the last 4 grid points, each with its half step, paired up. */
    int64_t prk8[8], prk14[14];
    int half = N / steps / 2;
    for (int i = 0; i < 4; i++) {
      prk8[2 * i] = base[steps - 4 + i];
      prk8[2 * i + 1] = base[steps - 4 + i] + half;
    }
    for (int i = 0; i < 7; i++) prk14[2 * i] = prk14[2 * i + 1] = prk8[i];
    int n_plms = steps - 3;
    rc = alloc_schedule(s, 12 + n_plms, 0, err);
    if (!rc) {
      for (int i = 0; i < 12; i++) s->timesteps[i] = (double)prk14[12 - i];
      for (int i = 0; i < n_plms; i++) s->timesteps[12 + i] = (double)base[n_plms - 1 - i];
      s->n_prk = 12;
    }
  }
  sd_free(base);
  s->init_noise_sigma = 1.0f;
  return rc;
}

static int schedule_ddim(sd_scheduler *s, int steps, sd_error *err) {
  int rc = alloc_schedule(s, steps, 0, err);
  if (rc) return rc;
  for (int i = 0; i < steps; i++) s->timesteps[i] = (double)leading_or_trailing(s, steps, i, 1);
  s->init_noise_sigma = 1.0f;
  return SD_OK;
}

static int schedule_lcm(sd_scheduler *s, int steps, sd_error *err) {
  int orig = s->original_steps;
  if (steps > orig)
    return sd_fail(err, SD_ERR_ARG,
                   "LCM: %d steps exceed original_inference_steps (%d)", steps, orig);
  int k = s->num_train / orig;
  int rc = alloc_schedule(s, steps, 0, err);
  if (rc) return rc;
  /* origin grid (reversed): (orig - j) * k - 1; indices floor(linspace(0,
   * orig, steps, endpoint=False)). */
  for (int i = 0; i < steps; i++) {
    int idx = (int)floor((double)i * ((double)orig / steps));
    s->timesteps[i] = (double)((int64_t)(orig - idx) * k - 1);
  }
  s->init_noise_sigma = 1.0f;
  return SD_OK;
}

static int schedule_euler(sd_scheduler *s, int steps, sd_error *err) {
  int N = s->num_train;
  int rc = alloc_schedule(s, steps, 1, err);
  if (rc) return rc;
  float *tsig = training_sigmas(s);
  float *logs = sd_alloc((size_t)N * sizeof(float));
  double *ksig = sd_alloc((size_t)steps * sizeof(double));
  if (!tsig || !logs || !ksig) {
    sd_free(tsig);
    sd_free(logs);
    sd_free(ksig);
    return sd_fail(err, SD_ERR_OOM, "out of memory");
  }
  for (int i = 0; i < N; i++) logs[i] = logf(tsig[i]);
  /* timesteps as float32 */
  for (int i = 0; i < steps; i++) {
    float t;
    if (s->spacing == SPACE_LINSPACE)
      t = (float)np_linspace_at(0, N - 1, steps, steps - 1 - i);
    else if (s->spacing == SPACE_LEADING)
      t = (float)((double)((int64_t)(steps - 1 - i) * (N / steps)) + s->steps_offset);
    else
      t = (float)(rint((double)N - i * ((double)N / steps)) - 1);
    s->timesteps[i] = t;
  }
  /* sigmas in float64 before the final cast */
  for (int i = 0; i < steps; i++) ksig[i] = np_interp_index(s->timesteps[i], tsig, N);
  if (s->interp_log_linear) {
    float *ll = sd_alloc((size_t)(steps + 1) * sizeof(float));
    if (!ll) {
      sd_free(tsig);
      sd_free(logs);
      sd_free(ksig);
      return sd_fail(err, SD_ERR_OOM, "out of memory");
    }
    linspace_f32(logf(tsig[N - 1]), logf(tsig[0]), steps + 1, ll);
    for (int i = 0; i < steps; i++) ksig[i] = expf(ll[i]);
    sd_free(ll);
  }
  if (s->use_karras) {
    double smin = s->has_sigma_min ? s->cfg_sigma_min : ksig[steps - 1];
    double smax = s->has_sigma_max ? s->cfg_sigma_max : ksig[0];
    karras_sigmas(smin, smax, steps, ksig);
    for (int i = 0; i < steps; i++) s->timesteps[i] = (float)sigma_to_t(ksig[i], logs, N);
  }
  for (int i = 0; i < steps; i++) s->sigmas[i] = (float)ksig[i];
  s->sigmas[steps] = s->final_sigma_min ? tsig[0] : 0.0f;
  float mx = 0;
  for (int i = 0; i <= steps; i++)
    if (s->sigmas[i] > mx) mx = s->sigmas[i];
  if (s->spacing == SPACE_LINSPACE || s->spacing == SPACE_TRAILING)
    s->init_noise_sigma = mx;
  else
    s->init_noise_sigma = sqrtf(mx * mx + 1.0f);
  sd_free(tsig);
  sd_free(logs);
  sd_free(ksig);
  return SD_OK;
}

static int schedule_dpm(sd_scheduler *s, int steps, sd_error *err) {
  int N = s->num_train;
  float *tsig = training_sigmas(s);
  float *logs = sd_alloc((size_t)N * sizeof(float));
  double *ksig = sd_alloc((size_t)steps * sizeof(double));
  int64_t *ts = sd_alloc((size_t)steps * sizeof(int64_t));
  int rc = SD_OK;
  if (!tsig || !logs || !ksig || !ts) {
    rc = sd_fail(err, SD_ERR_OOM, "out of memory");
    goto done;
  }
  for (int i = 0; i < N; i++) logs[i] = logf(tsig[i]);
  /* lambda_min_clipped: timesteps whose log-SNR falls below it are cut. */
  int clipped = 0;
  for (int i = N - 1; i >= 0; i--) {
    float a = s->alphas_cumprod[i];
    float lam = logf(sqrtf(a)) - logf(sqrtf(1.0f - a));
    if (lam < s->lambda_min_clipped) clipped++;
    else break;
  }
  int last = N - clipped;
  for (int i = 0; i < steps; i++) {
    if (s->spacing == SPACE_LINSPACE) {
      ts[i] = (int64_t)rint(np_linspace_at(0, last - 1, steps + 1, steps - i));
    } else if (s->spacing == SPACE_LEADING) {
      int ratio = last / (steps + 1);
      ts[i] = (int64_t)(steps - i) * ratio + s->steps_offset;
    } else {
      double ratio = (double)N / steps;
      ts[i] = (int64_t)rint((double)last - i * ratio) - 1;
    }
  }
  if (s->use_karras) {
    /* in_sigmas is the training table flipped: max first, min last. */
    karras_sigmas(tsig[0], tsig[N - 1], steps, ksig);
    for (int i = 0; i < steps; i++) ts[i] = (int64_t)rint(sigma_to_t(ksig[i], logs, N));
  } else {
    for (int i = 0; i < steps; i++) ksig[i] = np_interp_index((double)ts[i], tsig, N);
  }
  rc = alloc_schedule(s, steps, 1, err);
  if (rc) goto done;
  for (int i = 0; i < steps; i++) {
    s->timesteps[i] = (double)ts[i];
    s->sigmas[i] = (float)ksig[i];
  }
  s->sigmas[steps] = s->final_sigma_min ? tsig[0] : 0.0f;
  s->init_noise_sigma = 1.0f;
done:
  sd_free(tsig);
  sd_free(logs);
  sd_free(ksig);
  sd_free(ts);
  return rc;
}

static int schedule_flow(sd_scheduler *s, int steps, sd_error *err) {
  if (s->dynamic_shifting && !s->has_mu)
    return sd_fail(err, SD_ERR_ARG,
                   "flow scheduler with use_dynamic_shifting needs mu (sd_scheduler_set_mu)");
  int rc = alloc_schedule(s, steps, 1, err);
  if (rc) return rc;
  double N = s->num_train;
  double tmax = (double)s->flow_sigma_max * N, tmin = (double)s->flow_sigma_min * N;
  for (int i = 0; i < steps; i++) {
    double sg = np_linspace_at(tmax, tmin, steps, i) / N;
    if (s->dynamic_shifting)
      sg = exp(s->mu) / (exp(s->mu) + (1 / sg - 1));
    else
      sg = s->shift * sg / (1 + (s->shift - 1) * sg);
    float f = (float)sg;
    s->sigmas[i] = f;
    s->timesteps[i] = (double)(f * (float)s->num_train);
  }
  s->sigmas[steps] = 0.0f;
  s->init_noise_sigma = 1.0f;
  return SD_OK;
}

int sd_scheduler_set_timesteps(sd_scheduler *s, int steps, sd_error *err) {
  if (steps < 1)
    return sd_fail(err, SD_ERR_ARG, "number of steps must be at least 1 (got %d)", steps);
  if (steps > s->num_train)
    return sd_fail(err, SD_ERR_ARG,
                   "%d steps exceed the %d training timesteps of this scheduler", steps,
                   s->num_train);
  free_state(s);
  s->inference_steps = steps;
  switch (s->kind) {
    case SD_SAMPLER_PNDM: return schedule_pndm(s, steps, err);
    case SD_SAMPLER_DDIM: return schedule_ddim(s, steps, err);
    case SD_SAMPLER_LCM: return schedule_lcm(s, steps, err);
    case SD_SAMPLER_EULER:
    case SD_SAMPLER_EULER_A: return schedule_euler(s, steps, err);
    case SD_SAMPLER_DPMPP_2M:
    case SD_SAMPLER_DPMPP_2M_KARRAS: return schedule_dpm(s, steps, err);
    case SD_SAMPLER_FLOW_EULER: return schedule_flow(s, steps, err);
    default: return sd_fail(err, SD_ERR_ARG, "unknown sampler");
  }
}

int sd_scheduler_num_steps(const sd_scheduler *s) { return s->n_ts; }

double sd_scheduler_timestep(const sd_scheduler *s, int i) {
  return i >= 0 && i < s->n_ts ? s->timesteps[i] : 0.0;
}

int sd_scheduler_float_timesteps(const sd_scheduler *s) {
  return s->kind == SD_SAMPLER_EULER || s->kind == SD_SAMPLER_EULER_A ||
         s->kind == SD_SAMPLER_FLOW_EULER;
}

const float *sd_scheduler_sigmas(const sd_scheduler *s, int *count) {
  if (count) *count = s->sigmas ? s->n_ts + 1 : 0;
  return s->sigmas;
}

float sd_scheduler_init_noise_sigma(const sd_scheduler *s) { return s->init_noise_sigma; }

int sd_scheduler_order(const sd_scheduler *s) { return 1; }

int sd_scheduler_prediction_type(const sd_scheduler *s) { return s->prediction; }

void sd_scheduler_set_begin_index(sd_scheduler *s, int begin) { s->begin_index = begin; }

/* ------------------------------------------------------------------ */
/* Stepping */

/* diffusers' _init_step_index: the begin index, else the position of the
 * timestep (the second match when it occurs twice; DPM: the last index when
 * absent). */
static void ensure_step_index(sd_scheduler *s, int i) {
  if (s->step_index >= 0) return;
  if (s->begin_index >= 0) {
    s->step_index = s->begin_index;
    return;
  }
  double t = sd_scheduler_timestep(s, i);
  int first = -1, second = -1;
  for (int k = 0; k < s->n_ts; k++) {
    if (s->timesteps[k] == t) {
      if (first < 0) first = k;
      else if (second < 0) second = k;
    }
  }
  if (second >= 0) s->step_index = second;
  else if (first >= 0) s->step_index = first;
  else s->step_index = s->n_ts - 1;
}

static int uses_step_index(const sd_scheduler *s) {
  return s->kind == SD_SAMPLER_EULER || s->kind == SD_SAMPLER_EULER_A ||
         s->kind == SD_SAMPLER_DPMPP_2M || s->kind == SD_SAMPLER_DPMPP_2M_KARRAS ||
         s->kind == SD_SAMPLER_LCM || s->kind == SD_SAMPLER_FLOW_EULER;
}

void sd_scheduler_scale_model_input(sd_scheduler *s, int i, float *x, int64_t n) {
  if (s->kind != SD_SAMPLER_EULER && s->kind != SD_SAMPLER_EULER_A) return;
  ensure_step_index(s, i);
  int k = s->step_index < s->n_ts ? s->step_index : s->n_ts - 1;
  float sigma = s->sigmas[k];
  float denom = sqrtf(sigma * sigma + 1.0f);
  for (int64_t j = 0; j < n; j++) x[j] = x[j] / denom;
}

static int ensure_buffers(sd_scheduler *s, int64_t n, sd_error *err) {
  if (s->n == n) return SD_OK;
  if (s->n != 0)
    return sd_fail(err, SD_ERR_ARG, "sample size changed during the loop (%lld -> %lld)",
                   (long long)s->n, (long long)n);
  s->n = n;
  return SD_OK;
}

static float *state_buffer(float **slot, int64_t n) {
  if (!*slot) *slot = sd_alloc((size_t)n * sizeof(float));
  return *slot;
}

/* PNDM/DDIM shared: alphas_cumprod at a timestep, or the final value. */
static float alpha_at(const sd_scheduler *s, int64_t t) {
  if (t < 0) return s->final_alpha_cumprod;
  if (t >= s->num_train) t = s->num_train - 1;
  return s->alphas_cumprod[t];
}

/* PNDM _get_prev_sample (formula (9) of the PNDM paper). */
static void pndm_prev_sample(const sd_scheduler *s, float *sample, int64_t t, int64_t prev_t,
                             const float *eps, int64_t n, float *out) {
  float a = alpha_at(s, t), ap = alpha_at(s, prev_t);
  float b = 1.0f - a, bp = 1.0f - ap;
  float sample_coeff = sqrtf(ap / a);
  float denom = a * sqrtf(bp) + sqrtf(a * b * ap);
  float diff = ap - a;
  float sa = sqrtf(a), sb = sqrtf(b);
  for (int64_t j = 0; j < n; j++) {
    float e = eps[j];
    if (s->prediction == PRED_V) e = sa * e + sb * sample[j];
    out[j] = sample_coeff * sample[j] - (diff * e) / denom;
  }
}

static void push_ets(sd_scheduler *s, const float *mo, int64_t n, int trim) {
  if (trim && s->n_ets > 3) {
    /* keep the last three */
    float *old = s->ets[0];
    memmove(s->ets, s->ets + 1, (size_t)(MAX_ETS - 1) * sizeof(float *));
    s->ets[MAX_ETS - 1] = old;
    s->n_ets--;
  }
  if (s->n_ets == MAX_ETS) {
    float *old = s->ets[0];
    memmove(s->ets, s->ets + 1, (size_t)(MAX_ETS - 1) * sizeof(float *));
    s->ets[MAX_ETS - 1] = old;
    s->n_ets--;
  }
  memcpy(s->ets[s->n_ets], mo, (size_t)n * sizeof(float));
  s->n_ets++;
}

static int step_pndm(sd_scheduler *s, int i, const float *mo, float *sample, int64_t n,
                     sd_error *err) {
  for (int k = 0; k < MAX_ETS; k++)
    if (!state_buffer(&s->ets[k], n)) return sd_fail(err, SD_ERR_OOM, "out of memory");
  if (!state_buffer(&s->cur_sample, n) || !state_buffer(&s->cur_model_output, n))
    return sd_fail(err, SD_ERR_OOM, "out of memory");
  int ratio = s->num_train / s->inference_steps;
  int64_t t = (int64_t)s->timesteps[i];
  float *eps = s->cur_model_output; /* scratch for the combined output */

  if (s->counter < s->n_prk) {
    /* Runge-Kutta warm-up: four evaluations per step, weights 1/6, 1/3,
     * 1/3, 1/6, all from the sample at the start of the step. */
    int64_t prev_t = t - (s->counter % 2 ? 0 : ratio / 2);
    int64_t base_t = (int64_t)s->timesteps[s->counter / 4 * 4];
    int phase = s->counter % 4;
    float *acc = s->cur_model_output;
    float *combined = NULL;
    if (phase == 0) {
      for (int64_t j = 0; j < n; j++) acc[j] = (1.0f / 6.0f) * mo[j];
      push_ets(s, mo, n, 0);
      memcpy(s->cur_sample, sample, (size_t)n * sizeof(float));
      combined = (float *)mo;
    } else if (phase == 1 || phase == 2) {
      for (int64_t j = 0; j < n; j++) acc[j] = acc[j] + (1.0f / 3.0f) * mo[j];
      combined = (float *)mo;
    } else {
      for (int64_t j = 0; j < n; j++) acc[j] = acc[j] + (1.0f / 6.0f) * mo[j];
      combined = acc;
    }
    pndm_prev_sample(s, s->cur_sample, base_t, prev_t, combined, n, sample);
    if (phase == 3)
      for (int64_t j = 0; j < n; j++) acc[j] = 0.0f;
    s->counter++;
    return SD_OK;
  }

  int64_t prev_t = t - ratio;
  if (s->counter != 1) {
    push_ets(s, mo, n, 1);
  } else {
    prev_t = t;
    t = t + ratio;
  }
  float *src_sample = sample;
  float **e = s->ets;
  int ne = s->n_ets;
  if (ne == 1 && s->counter == 0) {
    memcpy(eps, mo, (size_t)n * sizeof(float));
    memcpy(s->cur_sample, sample, (size_t)n * sizeof(float));
    s->has_cur_sample = 1;
  } else if (ne == 1 && s->counter == 1) {
    for (int64_t j = 0; j < n; j++) eps[j] = (mo[j] + e[0][j]) / 2.0f;
    src_sample = s->cur_sample;
    s->has_cur_sample = 0;
  } else if (ne == 2) {
    for (int64_t j = 0; j < n; j++) eps[j] = (3.0f * e[1][j] - e[0][j]) / 2.0f;
  } else if (ne == 3) {
    for (int64_t j = 0; j < n; j++)
      eps[j] = (23.0f * e[2][j] - 16.0f * e[1][j] + 5.0f * e[0][j]) / 12.0f;
  } else {
    for (int64_t j = 0; j < n; j++)
      eps[j] = (1.0f / 24.0f) *
               (55.0f * e[3][j] - 59.0f * e[2][j] + 37.0f * e[1][j] - 9.0f * e[0][j]);
  }
  pndm_prev_sample(s, src_sample, t, prev_t, eps, n, sample);
  s->counter++;
  return SD_OK;
}

static int step_ddim(sd_scheduler *s, int i, const float *mo, float *sample, int64_t n) {
  int64_t t = (int64_t)s->timesteps[i];
  int64_t prev_t = t - s->num_train / s->inference_steps;
  float a = alpha_at(s, t), ap = alpha_at(s, prev_t);
  float b = 1.0f - a;
  float sa = sqrtf(a), sb = sqrtf(b), sap = sqrtf(ap);
  float dir = sqrtf(1.0f - ap - 0.0f); /* eta = 0: std_dev_t = 0 */
  float r = (float)s->clip_sample_range;
  for (int64_t j = 0; j < n; j++) {
    float x0, e;
    if (s->prediction == PRED_EPSILON) {
      x0 = (sample[j] - sb * mo[j]) / sa;
      e = mo[j];
    } else if (s->prediction == PRED_SAMPLE) {
      x0 = mo[j];
      e = (sample[j] - sa * x0) / sb;
    } else {
      x0 = sa * sample[j] - sb * mo[j];
      e = sa * mo[j] + sb * sample[j];
    }
    if (s->clip_sample) x0 = x0 < -r ? -r : (x0 > r ? r : x0);
    sample[j] = sap * x0 + dir * e;
  }
  return SD_OK;
}

static int step_euler(sd_scheduler *s, const float *mo, float *sample, int64_t n) {
  int k = s->step_index;
  float sigma = s->sigmas[k];
  float sigma_hat = sigma * 1.0f; /* s_churn = 0: gamma = 0 */
  float dt = s->sigmas[k + 1] - sigma_hat;
  float c_out = -sigma / sqrtf(sigma * sigma + 1.0f);
  float c_in = sigma * sigma + 1.0f;
  for (int64_t j = 0; j < n; j++) {
    float x0;
    if (s->prediction == PRED_EPSILON) x0 = sample[j] - sigma_hat * mo[j];
    else if (s->prediction == PRED_V) x0 = mo[j] * c_out + sample[j] / c_in;
    else x0 = mo[j];
    float d = (sample[j] - x0) / sigma_hat;
    sample[j] = sample[j] + d * dt;
  }
  return SD_OK;
}

static int step_euler_ancestral(sd_scheduler *s, const float *mo, float *sample, int64_t n,
                                sd_rng *rng, sd_error *err) {
  if (!rng) return sd_fail(err, SD_ERR_ARG, "euler_a draws step noise: a generator is required");
  float *noise = sd_alloc((size_t)n * sizeof(float));
  if (!noise) return sd_fail(err, SD_ERR_OOM, "out of memory");
  int k = s->step_index;
  float sf = s->sigmas[k], st = s->sigmas[k + 1];
  float sigma_up = sqrtf(st * st * (sf * sf - st * st) / (sf * sf));
  float sigma_down = sqrtf(st * st - sigma_up * sigma_up);
  float dt = sigma_down - sf;
  float c_out = -sf / sqrtf(sf * sf + 1.0f);
  float c_in = sf * sf + 1.0f;
  sd_rng_randn(rng, noise, n);
  for (int64_t j = 0; j < n; j++) {
    float x0;
    if (s->prediction == PRED_EPSILON) x0 = sample[j] - sf * mo[j];
    else if (s->prediction == PRED_V) x0 = mo[j] * c_out + sample[j] / c_in;
    else x0 = mo[j];
    float d = (sample[j] - x0) / sf;
    float prev = sample[j] + d * dt;
    sample[j] = prev + noise[j] * sigma_up;
  }
  sd_free(noise);
  return SD_OK;
}

/* alpha_t = 1/sqrt(sigma^2 + 1), sigma_t = sigma * alpha_t (float32). */
static void dpm_alpha_sigma(float sigma, float *alpha, float *sig) {
  *alpha = 1.0f / sqrtf(sigma * sigma + 1.0f);
  *sig = sigma * *alpha;
}

static int step_dpm(sd_scheduler *s, const float *mo, float *sample, int64_t n, sd_error *err) {
  if (!state_buffer(&s->model_outputs[0], n) || !state_buffer(&s->model_outputs[1], n))
    return sd_fail(err, SD_ERR_OOM, "out of memory");
  int k = s->step_index;
  int last = k == s->n_ts - 1;
  int lower_final = last && (s->euler_at_final || (s->lower_order_final && s->n_ts < 15) ||
                             !s->final_sigma_min);
  int lower_second = k == s->n_ts - 2 && s->lower_order_final && s->n_ts < 15;

  /* convert_model_output: data prediction (dpmsolver++) or noise
   * prediction (dpmsolver), into the newest slot. */
  float *older = s->model_outputs[0];
  s->model_outputs[0] = s->model_outputs[1];
  s->model_outputs[1] = older;
  float *m0 = s->model_outputs[1], *m1 = s->model_outputs[0];
  float a_s0, s_s0;
  dpm_alpha_sigma(s->sigmas[k], &a_s0, &s_s0);
  for (int64_t j = 0; j < n; j++) {
    float x0;
    if (s->prediction == PRED_EPSILON) x0 = (sample[j] - s_s0 * mo[j]) / a_s0;
    else if (s->prediction == PRED_V) x0 = a_s0 * sample[j] - s_s0 * mo[j];
    else x0 = mo[j];
    if (s->dpm_plus_plus) {
      m0[j] = x0;
    } else {
      /* noise prediction */
      m0[j] = s->prediction == PRED_EPSILON ? mo[j] : (sample[j] - a_s0 * x0) / s_s0;
    }
  }

  float a_t, s_t;
  dpm_alpha_sigma(s->sigmas[k + 1], &a_t, &s_t);
  float lam_t = logf(a_t) - logf(s_t);
  float lam_s0 = logf(a_s0) - logf(s_s0);
  float h = lam_t - lam_s0;
  if (s->solver_order == 1 || s->lower_order_nums < 1 || lower_final) {
    float c1, c2;
    if (s->dpm_plus_plus) {
      c1 = s_t / s_s0;
      c2 = a_t * (expf(-h) - 1.0f);
    } else {
      c1 = a_t / a_s0;
      c2 = s_t * (expf(h) - 1.0f);
    }
    for (int64_t j = 0; j < n; j++) sample[j] = c1 * sample[j] - c2 * m0[j];
  } else {
    (void)lower_second; /* order 2 is the highest supported */
    float a_s1, s_s1;
    dpm_alpha_sigma(s->sigmas[k - 1], &a_s1, &s_s1);
    float lam_s1 = logf(a_s1) - logf(s_s1);
    float h0 = lam_s0 - lam_s1;
    float r0 = h0 / h;
    float inv_r0 = 1.0f / r0;
    float c1, c2, c3;
    if (s->dpm_plus_plus) {
      c1 = s_t / s_s0;
      c2 = a_t * (expf(-h) - 1.0f);
      c3 = s->solver_heun ? -(a_t * ((expf(-h) - 1.0f) / h + 1.0f)) : 0.5f * c2;
    } else {
      c1 = a_t / a_s0;
      c2 = s_t * (expf(h) - 1.0f);
      c3 = s->solver_heun ? s_t * ((expf(h) - 1.0f) / h - 1.0f) : 0.5f * c2;
    }
    for (int64_t j = 0; j < n; j++) {
      float d1 = inv_r0 * (m0[j] - m1[j]);
      sample[j] = c1 * sample[j] - c2 * m0[j] - c3 * d1;
    }
  }
  if (s->lower_order_nums < s->solver_order) s->lower_order_nums++;
  return SD_OK;
}

static int step_lcm(sd_scheduler *s, const float *mo, float *sample, int64_t n, sd_rng *rng,
                    sd_error *err) {
  int k = s->step_index;
  int64_t t = (int64_t)s->timesteps[k];
  int64_t prev_t = k + 1 < s->n_ts ? (int64_t)s->timesteps[k + 1] : t;
  float a = alpha_at(s, t), ap = alpha_at(s, prev_t);
  float b = 1.0f - a, bp = 1.0f - ap;
  /* boundary condition scalings, sigma_data 0.5 */
  double scaled = (double)t * s->timestep_scaling;
  float sc2 = (float)(scaled * scaled) + 0.25f;
  float c_skip = 0.25f / sc2;
  float c_out = (float)scaled / sqrtf(sc2);
  float sa = sqrtf(a), sb = sqrtf(b);
  float r = (float)s->clip_sample_range;
  int final = k == s->inference_steps - 1;
  float *noise = NULL;
  if (!final) {
    if (!rng) return sd_fail(err, SD_ERR_ARG, "lcm draws step noise: a generator is required");
    noise = sd_alloc((size_t)n * sizeof(float));
    if (!noise) return sd_fail(err, SD_ERR_OOM, "out of memory");
    sd_rng_randn(rng, noise, n);
  }
  float sap = sqrtf(ap), sbp = sqrtf(bp);
  for (int64_t j = 0; j < n; j++) {
    float x0;
    if (s->prediction == PRED_EPSILON) x0 = (sample[j] - sb * mo[j]) / sa;
    else if (s->prediction == PRED_V) x0 = sa * sample[j] - sb * mo[j];
    else x0 = mo[j];
    if (s->clip_sample) x0 = x0 < -r ? -r : (x0 > r ? r : x0);
    float denoised = c_out * x0 + c_skip * sample[j];
    sample[j] = final ? denoised : sap * denoised + sbp * noise[j];
  }
  sd_free(noise);
  return SD_OK;
}

int sd_scheduler_step(sd_scheduler *s, int i, const float *model_output, float *sample,
                      int64_t n, sd_rng *rng, sd_error *err) {
  if (!s->timesteps) return sd_fail(err, SD_ERR_ARG, "set_timesteps was not called");
  if (i < 0 || i >= s->n_ts)
    return sd_fail(err, SD_ERR_ARG, "step %d outside the schedule (0..%d)", i, s->n_ts - 1);
  int rc = ensure_buffers(s, n, err);
  if (rc) return rc;
  if (uses_step_index(s)) {
    ensure_step_index(s, i);
    if (s->step_index >= s->n_ts)
      return sd_fail(err, SD_ERR_ARG, "more steps than the schedule holds (%d)", s->n_ts);
  }
  switch (s->kind) {
    case SD_SAMPLER_PNDM: rc = step_pndm(s, i, model_output, sample, n, err); break;
    case SD_SAMPLER_DDIM: rc = step_ddim(s, i, model_output, sample, n); break;
    case SD_SAMPLER_EULER: rc = step_euler(s, model_output, sample, n); break;
    case SD_SAMPLER_EULER_A:
      rc = step_euler_ancestral(s, model_output, sample, n, rng, err);
      break;
    case SD_SAMPLER_DPMPP_2M:
    case SD_SAMPLER_DPMPP_2M_KARRAS: rc = step_dpm(s, model_output, sample, n, err); break;
    case SD_SAMPLER_LCM: rc = step_lcm(s, model_output, sample, n, rng, err); break;
    case SD_SAMPLER_FLOW_EULER: {
      int k = s->step_index;
      float dt = s->sigmas[k + 1] - s->sigmas[k];
      for (int64_t j = 0; j < n; j++) sample[j] = sample[j] + dt * model_output[j];
      break;
    }
    default: rc = sd_fail(err, SD_ERR_ARG, "unknown sampler");
  }
  if (!rc && uses_step_index(s)) s->step_index++;
  return rc;
}

void sd_scheduler_add_noise(const sd_scheduler *s, int i, float *x, const float *noise,
                            int64_t n) {
  if (!s->timesteps || i < 0 || i >= s->n_ts) return;
  switch (s->kind) {
    case SD_SAMPLER_EULER:
    case SD_SAMPLER_EULER_A: {
      float sigma = s->sigmas[i];
      for (int64_t j = 0; j < n; j++) x[j] = x[j] + noise[j] * sigma;
      break;
    }
    case SD_SAMPLER_DPMPP_2M:
    case SD_SAMPLER_DPMPP_2M_KARRAS: {
      float a, sg;
      dpm_alpha_sigma(s->sigmas[i], &a, &sg);
      for (int64_t j = 0; j < n; j++) x[j] = a * x[j] + sg * noise[j];
      break;
    }
    case SD_SAMPLER_FLOW_EULER: {
      float sigma = s->sigmas[i];
      float keep = 1.0f - sigma;
      for (int64_t j = 0; j < n; j++) x[j] = sigma * noise[j] + keep * x[j];
      break;
    }
    default: {
      float a = alpha_at(s, (int64_t)s->timesteps[i]);
      float sa = sqrtf(a), sb = sqrtf(1.0f - a);
      for (int64_t j = 0; j < n; j++) x[j] = sa * x[j] + sb * noise[j];
      break;
    }
  }
}

/* ------------------------------------------------------------------ */
/* Resolved configuration, in diffusers' key names (for metadata and for
 * checking the class defaults against a reference). */

static const char *spacing_name(int sp) {
  return sp == SPACE_LEADING ? "leading" : sp == SPACE_TRAILING ? "trailing" : "linspace";
}

cJSON *sd_scheduler_resolved_config(const sd_scheduler *s) {
  static const char *const beta_names[] = {"linear", "scaled_linear", "squaredcos_cap_v2"};
  static const char *const pred_names[] = {"epsilon", "v_prediction", "sample", "flow"};
  cJSON *o = cJSON_CreateObject();
  if (!o) return NULL;
  int ok = 1;
#define ADD_NUM(k, v) ok &= cJSON_AddNumberToObject(o, k, v) != NULL
#define ADD_STR(k, v) ok &= cJSON_AddStringToObject(o, k, v) != NULL
#define ADD_BOOL(k, v) ok &= cJSON_AddBoolToObject(o, k, v) != NULL
  ADD_STR("_class_name", sampler_classes[s->kind]);
  ADD_NUM("num_train_timesteps", s->num_train);
  if (s->kind == SD_SAMPLER_FLOW_EULER) {
    ADD_NUM("shift", s->shift);
    ADD_BOOL("use_dynamic_shifting", s->dynamic_shifting);
  } else {
    ADD_NUM("beta_start", s->beta_start);
    ADD_NUM("beta_end", s->beta_end);
    ADD_STR("beta_schedule", beta_names[s->beta_schedule]);
    ADD_STR("prediction_type", pred_names[s->prediction]);
    ADD_STR("timestep_spacing", spacing_name(s->spacing));
    ADD_NUM("steps_offset", s->steps_offset);
  }
  switch (s->kind) {
    case SD_SAMPLER_PNDM:
      ADD_BOOL("skip_prk_steps", s->skip_prk_steps);
      ADD_BOOL("set_alpha_to_one", s->set_alpha_to_one);
      break;
    case SD_SAMPLER_DDIM:
    case SD_SAMPLER_LCM:
      ADD_BOOL("set_alpha_to_one", s->set_alpha_to_one);
      ADD_BOOL("clip_sample", s->clip_sample);
      ADD_NUM("clip_sample_range", s->clip_sample_range);
      ADD_BOOL("thresholding", 0);
      if (s->kind == SD_SAMPLER_LCM) {
        ADD_NUM("original_inference_steps", s->original_steps);
        ADD_NUM("timestep_scaling", s->timestep_scaling);
      }
      break;
    case SD_SAMPLER_EULER:
      ADD_STR("interpolation_type", s->interp_log_linear ? "log_linear" : "linear");
      ADD_STR("timestep_type", "discrete");
      /* fall through */
    case SD_SAMPLER_DPMPP_2M:
    case SD_SAMPLER_DPMPP_2M_KARRAS:
      ADD_BOOL("use_karras_sigmas", s->use_karras);
      ADD_STR("final_sigmas_type", s->final_sigma_min ? "sigma_min" : "zero");
      if (s->kind != SD_SAMPLER_EULER) {
        ADD_NUM("solver_order", s->solver_order);
        ADD_STR("algorithm_type", s->dpm_plus_plus ? "dpmsolver++" : "dpmsolver");
        ADD_STR("solver_type", s->solver_heun ? "heun" : "midpoint");
        ADD_BOOL("lower_order_final", s->lower_order_final);
        ADD_BOOL("euler_at_final", s->euler_at_final);
        ADD_NUM("lambda_min_clipped", s->lambda_min_clipped);
        ADD_BOOL("thresholding", 0);
      }
      break;
    default: break;
  }
#undef ADD_NUM
#undef ADD_STR
#undef ADD_BOOL
  if (!ok) {
    cJSON_Delete(o);
    return NULL;
  }
  return o;
}

/* ---- denoised estimate (previews) ---- */

void sd_scheduler_predict_x0(const sd_scheduler *s, int i, const float *model_output,
                             const float *sample, float *x0, int64_t n) {
  double t = sd_scheduler_timestep(s, i);
  if (s->prediction == PRED_FLOW) { /* x = (1 - sigma) x0 + sigma noise, v = noise - x0 */
    float sigma = (float)(t / s->num_train);
    for (int64_t j = 0; j < n; j++) x0[j] = sample[j] - sigma * model_output[j];
    return;
  }
  /* alphas_cumprod at t (linear between the integer timesteps around it) */
  int64_t lo = (int64_t)floor(t);
  if (lo < 0) lo = 0;
  if (lo > s->num_train - 1) lo = s->num_train - 1;
  int64_t hi = lo + 1 < s->num_train ? lo + 1 : lo;
  double fr = t - (double)lo, a = (1 - fr) * alpha_at(s, lo) + fr * alpha_at(s, hi);
  double sa = sqrt(a), sb = sqrt(1 - a);
  /* Euler-type samplers keep x / sqrt(a) (sigma space): back to x_t */
  int sigma_space = s->kind == SD_SAMPLER_EULER || s->kind == SD_SAMPLER_EULER_A;
  float in_scale = sigma_space ? (float)sa : 1.0f;
  for (int64_t j = 0; j < n; j++) {
    double x = sample[j] * in_scale, m = model_output[j];
    double v = s->prediction == PRED_EPSILON ? (x - sb * m) / sa
               : s->prediction == PRED_V     ? sa * x - sb * m
                                             : m;
    x0[j] = (float)v;
  }
}
