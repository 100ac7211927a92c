/* Conformance runner: shared context and helpers.
 *
 * `conformance FIXTURES_DIR [FILTER] [--precision bf16]` walks the fixtures
 * folder, reads the JSON that describes each set of cases and checks every
 * case it finds. Each suite lives in its own conf_*.c file and reports one
 * line per case.
 *
 * --precision bf16 runs everything in the fast mode (bf16 products, F32
 * accumulation) and holds every float golden to CONF_BF16_TOL relative L2
 * instead of its fp32 tolerance: the fast mode's documented quality bound.
 * The +-1 level uint8 image checks are fp32 bounds and are reported, not
 * asserted, in that mode (the float image they quantize is checked). */
#ifndef SDGEN_CONFORMANCE_H
#define SDGEN_CONFORMANCE_H

#include <cjson/cJSON.h>

#include "base/status.h"
#include "io/safetensors.h"
#include "tensor/tensor.h"

typedef struct conf_ctx {
  const char *fixtures; /* root folder, e.g. ../shared/fixtures */
  const char *filter;   /* substring a case id must contain, or NULL */
  int passed, failed, skipped;
  int verbose;
  int bf16; /* --precision bf16 */
} conf_ctx;

/* bf16 rounds both operands of every product to 8 significant bits (2^-9
 * relative). Measured on the fixtures: text encoders <= 1.1e-2, VAE <=
 * 1.8e-2, final latents 0.4e-2 (SD3.5 Turbo) to 2.2e-2 (SD 1.5 img2img; CFG
 * 7.5 multiplies the error of cond - uncond), decoded images <= 1.1e-2. The
 * bound leaves room for the unseen fixture sets; a kernel bug (a dropped
 * depth tail, truncation instead of rounding, a wrong pair order) is far
 * outside it, and test_gemm_bf16 checks the kernel itself to 1e-5 against
 * a reference on the rounded operands. */
#define CONF_BF16_TOL 5e-2

/* 1 if the case id passes the filter (call before doing work). */
int conf_wants(const conf_ctx *c, const char *id);
/* Records one case result and prints its line. `fmt` describes the measured
 * error (on pass) or the failure. */
void conf_result(conf_ctx *c, const char *id, int ok, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Records a case that cannot run here (prints SKIP with the reason). */
void conf_skip(conf_ctx *c, const char *id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A case may list under "requires" the features a runner must implement to
 * run it (fixtures README). Returns 1 when this runner implements every one;
 * otherwise reports the case as failed, naming the missing feature, and
 * returns 0: a case is never run while ignoring a feature, nor skipped
 * silently. The features are listed in main.c (conf_features). */
int conf_requires_met(conf_ctx *c, const char *id, const cJSON *kase);

/* Relative L2 error ||a - b|| / ||b|| (double accumulation). */
double conf_rel_l2(const float *a, const float *b, int64_t n);
/* Max |a - b|. */
double conf_max_abs(const float *a, const float *b, int64_t n);

/* Compares an F32 result against a golden tensor (any float dtype), shape
 * included; reports the case and returns 1 if within tol. */
int conf_check_tensor(conf_ctx *c, const char *id, const float *got,
                      int64_t n, const sd_tensor *golden, double tol);

/* Path join into a static-free buffer. */
void conf_path(char *out, size_t n, const char *a, const char *b);

/* Suites. Each takes the folder it is about; each reports its own cases. */
void conf_suite_tokenizers(conf_ctx *c, const char *tokenizers_dir);
void conf_suite_rng(conf_ctx *c, const char *rng_dir);
/* SD 1.5 / SDXL family: golden/<model>/cases.json with a "cases" list. */
void conf_suite_unet_family(conf_ctx *c, const char *model, const char *golden_dir,
                            const cJSON *cases_json);
/* SD3 family: golden/<model>/cases.json with a "cases" object. */
void conf_suite_sd3_family(conf_ctx *c, const char *model, const char *golden_dir,
                           const cJSON *cases_json);
/* Scheduler cases of the SD 1.5 / SDXL family (sample module). */
void conf_scheduler_case(conf_ctx *c, const char *model, const char *golden_dir,
                         const cJSON *root, const cJSON *kase);
/* The sampler of a diffusers scheduler class name, or -1. */
int conf_sampler_for_class(const char *cls);
/* txt2img / img2img cases of the SD 1.5 / SDXL family (pipeline module). */
void conf_pipeline_case(conf_ctx *c, const char *model, const char *golden_dir,
                        const cJSON *root, const cJSON *kase);
/* taesd_decode / taesd_encode cases on the AutoencoderTiny folder and on its
 * original-format files. */
void conf_taesd_case(conf_ctx *c, const char *folder, const sd_weights *g, const cJSON *kase,
                     const char *id);
void conf_suite_upscale(conf_ctx *c, const char *golden_dir, const cJSON *cases_json);

#endif
