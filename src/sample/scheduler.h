/* Schedulers: diffusers-compatible timestep/sigma schedules and step
 * functions, one struct for every sampler.
 *
 * Usage (as a diffusers pipeline drives pipe.scheduler):
 *   sd_scheduler *s;
 *   sd_scheduler_create(&s, config_json, SD_SAMPLER_DEFAULT, NULL, &err);
 *   sd_scheduler_set_timesteps(s, steps, &err);
 *   x *= sd_scheduler_init_noise_sigma(s);
 *   for (i = 0; i < sd_scheduler_num_steps(s); i++) {
 *     t = sd_scheduler_timestep(s, i);
 *     sd_scheduler_scale_model_input(s, i, x_in, n);   // copy of x
 *     eps = model(x_in, t);
 *     sd_scheduler_step(s, i, eps, x, n, rng, &err);   // x updated in place
 *   }
 * `config` is the parsed scheduler_config.json; creating a different sampler
 * from it behaves as Cls.from_config(config, **overrides): only keys present
 * in the JSON are taken, the class defaults fill the rest. */
#ifndef SDGEN_SAMPLE_SCHEDULER_H
#define SDGEN_SAMPLE_SCHEDULER_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "base/status.h"
#include "sample/rng.h"

typedef enum sd_sampler {
  SD_SAMPLER_DEFAULT = -1, /* the class named by the config's _class_name */
  SD_SAMPLER_PNDM = 0,
  SD_SAMPLER_DDIM,
  SD_SAMPLER_EULER,
  SD_SAMPLER_EULER_A,
  SD_SAMPLER_DPMPP_2M,
  SD_SAMPLER_DPMPP_2M_KARRAS,
  SD_SAMPLER_LCM,
  SD_SAMPLER_FLOW_EULER, /* FlowMatchEulerDiscreteScheduler (SD3) */
  SD_SAMPLER_COUNT
} sd_sampler;

/* CLI names: "pndm", "ddim", "euler", "euler_a", "dpmpp_2m",
 * "dpmpp_2m_karras", "lcm", "flow_euler". Parse returns -1 if unknown. */
const char *sd_sampler_name(sd_sampler k);
int sd_sampler_parse(const char *name);

typedef struct sd_scheduler sd_scheduler;

/* overrides: a JSON object of config keys applied after the file's (as the
 * fixtures' from_config_overrides), or NULL. */
int sd_scheduler_create(sd_scheduler **out, const cJSON *config,
                        sd_sampler kind, const cJSON *overrides,
                        sd_error *err);
void sd_scheduler_free(sd_scheduler *s);

/* The sampler actually in use (resolves SD_SAMPLER_DEFAULT). */
sd_sampler sd_scheduler_kind(const sd_scheduler *s);

/* Computes timesteps (and sigmas) for `steps` inference steps (1 ..
 * num_train_timesteps; LCM: at most original_inference_steps). For flow
 * matching with use_dynamic_shifting, call sd_scheduler_set_mu first.
 * Resets all loop state, including the begin index. */
int sd_scheduler_set_timesteps(sd_scheduler *s, int steps, sd_error *err);

/* Flow matching with use_dynamic_shifting: the shift exponent mu used by
 * the next set_timesteps (diffusers' set_timesteps(mu=...)). Ignored by the
 * other samplers. */
int sd_scheduler_set_mu(sd_scheduler *s, double mu);

/* Number of model calls in the loop (PNDM repeats one timestep: steps + 1). */
int sd_scheduler_num_steps(const sd_scheduler *s);
/* The timestep passed to the model at loop index i (diffusers'
 * scheduler.timesteps[i], as float). */
double sd_scheduler_timestep(const sd_scheduler *s, int i);
/* 1 if the model receives float timesteps (Euler family, flow), 0 if int64. */
int sd_scheduler_float_timesteps(const sd_scheduler *s);
/* sigmas array (num_steps + 1 entries) or NULL if the sampler has none. */
const float *sd_scheduler_sigmas(const sd_scheduler *s, int *count);
float sd_scheduler_init_noise_sigma(const sd_scheduler *s);
/* diffusers' scheduler.order (img2img starts at timesteps[t_start * order]). */
int sd_scheduler_order(const sd_scheduler *s);

/* In place: x = scale_model_input(x, timesteps[i]). */
void sd_scheduler_scale_model_input(sd_scheduler *s, int i, float *x,
                                    int64_t n);

/* In place: sample = step(model_output, timesteps[i], sample).
 * i is the index into the full schedule (img2img: from t_start*order on).
 * Samplers that keep a step counter (Euler, Euler a, DPM, LCM, flow) take
 * their position from the first scale_model_input/step call as diffusers
 * does (the begin index if set, else where timesteps[i] sits) and then
 * advance one per step, so call them once per loop index, in order.
 * rng supplies step noise (Euler ancestral, LCM) drawn as torch.randn of the
 * sample's shape; required for those two (SD_ERR_ARG if NULL), ignored by
 * the others. The buffers' size is fixed by the first step until the next
 * set_timesteps. */
int sd_scheduler_step(sd_scheduler *s, int i, const float *model_output,
                      float *sample, int64_t n, sd_rng *rng, sd_error *err);

/* img2img: begin the loop at timestep index `begin` (diffusers
 * set_begin_index / timesteps[t_start*order:]). */
void sd_scheduler_set_begin_index(sd_scheduler *s, int begin);
/* img2img: x = add_noise(x, noise, timesteps[i]), in place: PNDM / DDIM /
 * LCM sqrt(a_t) x + sqrt(1 - a_t) noise; Euler family x + sigma_i noise;
 * DPM alpha_i x + sigma_i noise; flow matching (scale_noise)
 * sigma_i noise + (1 - sigma_i) x. */
void sd_scheduler_add_noise(const sd_scheduler *s, int i, float *x,
                            const float *noise, int64_t n);

/* The configuration in use, as a new JSON object with diffusers' key names
 * (class defaults filled in); NULL on allocation failure. Caller deletes. */
cJSON *sd_scheduler_resolved_config(const sd_scheduler *s);

/* Prediction type of the config: 0 epsilon, 1 v_prediction, 2 sample,
 * 3 flow. */
int sd_scheduler_prediction_type(const sd_scheduler *s);

/* The denoised estimate (x0 prediction) at loop index i from the model
 * output (after CFG) and the sample it was computed on, for previews:
 * epsilon / v / sample prediction through alphas_cumprod at timesteps[i]
 * (Euler samplers' sigma-space samples scaled back first); flow matching
 * x0 = x - sigma v. n floats each. */
void sd_scheduler_predict_x0(const sd_scheduler *s, int i, const float *model_output,
                             const float *sample, float *x0, int64_t n);

#endif
