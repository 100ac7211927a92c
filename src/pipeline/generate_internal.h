/* The generation recipe, split into stages that share one run state:
 *   base (UNet family or SD3) -> [refiner] -> [upscale] -> save
 * generate.c drives them; each gen_*.c file implements one stage. */
#ifndef SDGEN_PIPELINE_GENERATE_INTERNAL_H
#define SDGEN_PIPELINE_GENERATE_INTERNAL_H

#include "base/status.h"
#include "tensor/ops.h"
#include "io/image.h"
#include "io/lora.h"
#include "io/safetensors_write.h"
#include "pipeline/monitor.h"
#include "pipeline/planner.h"
#include "sample/scheduler.h"
#include "sdgen.h"

struct sdgen_ctx {
  sd_error err;
  volatile int cancel;
};

#define GEN_MAX_LORAS 16

typedef struct gen_lora {
  char name[512];  /* as given (path, name under lora_dir, hub name) */
  char path[4096]; /* resolved file */
  float scale;
  char hash[13]; /* A1111's short hash (io/sha256.h), "" when unreadable */
} gen_lora;

/* A resident model (sdgen_model_load): the resolved model, its load-time
 * settings (strings owned here), and the loaded bundle: a UNet-family model
 * (configs, tokenizers, weights mapped and bound) or an opened SD3 pipeline
 * (files mapped, tokenizers parsed; transformer and VAE bound per run). */
struct sd_unet_model;
struct sd3_pipeline;
struct sdgen_model {
  sdgen_params load;     /* the load params; its strings point into `text` */
  char path[4096];       /* resolved local path of load.model */
  const char *family;    /* "sd1", "sdxl", "sdxl-refiner", "sd3" or "" */
  struct sd_unet_model *unet;
  struct sd3_pipeline *sd3;
  double t_load;         /* seconds; reported by the handle's first generation */
  int generations;
  sdgen_lora *loras;     /* copy of load.loras (paths in `text`) */
  char *lora_sig;        /* the LoRA set unet was loaded with ("" none) */
  char *text;            /* owned copies of the load params' strings */
};

typedef struct gen_run {
  sdgen_ctx *ctx;
  const sdgen_params *p;
  struct sdgen_model *model; /* the loaded model this run generates with */
  sd_error *err;
  sd_monitor mon;
  /* settings resolved from the params and the model */
  char model_path[4096];
  const char *model_type; /* "sd1", "sdxl", "sd3" ... */
  int width, height, steps, n;
  float cfg;
  sd_sampler sampler;
  char stamp[64];           /* output file stem timestamp */
  char latents_path[4300];  /* saved before the decode; "" when none */
  /* timings (seconds) */
  double t_load, t_encode, t_denoise, t_decode, t_refine, t_upscale;
  double stage_start;
  /* results of the base stage: images (n, 3, H, W) in [-1, 1], or, with
   * --refiner-switch, latents handed to the refiner undecoded */
  float *images;
  float *handoff;
  int handoff_channels;
  /* refiner / upscale outcome for the metadata */
  char refiner_path[4096];
  const char *refiner_mode; /* "image" or "latent", NULL when none */
  char upscale_method[64];
  int out_width, out_height;
  sd_image *final; /* n 8-bit images written to disk */
  /* memory plan of the base stage */
  sd_plan plan;
  int have_plan;
  int dry_run_done;
  int min_level; /* lowest plan level allowed (raised by recovery) */
  int refused;   /* a stage's plan did not fit the budget: no retry helps */
  /* memory plan of the refiner stage, made with the base's (before any
   * weight is read) and applied when the refiner runs */
  sd_plan refiner_plan;
  int have_refiner_plan;
  /* LoRAs: params->loras, then the prompt's <lora:NAME:SCALE> tags */
  gen_lora loras[GEN_MAX_LORAS];
  sd_lora_spec lora_specs[GEN_MAX_LORAS];
  int n_loras;
  char *prompt;          /* the prompt without its LoRA tags (encoded) */
  const char *lora_mode; /* "merged" / "side path", NULL without LoRAs */
  /* params->vae: the tiny autoencoder decoding (and img2img-encoding) in
   * place of the model's VAE, NULL when the model's own VAE is used;
   * preview: the tiny VAE of the previews (== tiny, or the family's taesd
   * from the cache, or NULL: no previews) */
  struct sd_taesd *tiny, *preview;
  char vae_path[4096];
  struct { /* the loop being previewed */
    const sd_scheduler *sched;
    int begin, total, h, w;
  } pv;
} gen_run;

/* Fills r->loras (resolved files) and r->prompt. */
int gen_resolve_loras(gen_run *r);
/* Opens every LoRA (structure only) and refuses one made for another
 * family than `family` ("sd1", "sdxl", ..., "" unknown). */
int gen_check_loras(gen_run *r, const char *family);
void gen_free_loras(gen_run *r);

/* Opens params->vae and the preview VAE (gen_vae.c) before any model is
 * loaded: a missing file or a tiny VAE of the wrong latent channels is an
 * error here; no tiny VAE for previews is one warning. */
int gen_open_vaes(gen_run *r);
void gen_free_vaes(gen_run *r);
/* Activation peak of a tiny-VAE decode (encode = 0) or encode of n images
 * with h x w latents, measured in plan mode; -1 on failure. */
int64_t gen_plan_tiny(const struct sd_taesd *t, int encode, int n, int h, int w);
/* What a preview adds to the denoise stage: activations (returned) and
 * weights (*weights, 0 when the preview VAE is the run's VAE). */
int64_t gen_preview_bytes(const gen_run *r, int h, int w, int64_t *weights);
/* Every preview_every steps (and at the last): decodes the first image's
 * denoised estimate with the preview VAE and hands it to on_preview. */
int gen_preview(gen_run *r, const sd_scheduler *s, int i, int step, int total,
                const float *model_output, const float *sample, int h, int w);

/* Stage: the base image(s) from a UNet-family model (SD 1.x/2.x, SDXL). */
int gen_base_unet(gen_run *r);
/* Stage: the base image(s) from an SD3 / SD3.5 model. */
int gen_base_sd3(gen_run *r);
/* Stage: img2img refinement of r->images with p->refiner. */
int gen_refine(gen_run *r);
/* Stage: upscale r->final in place (2x / 4x). */
int gen_upscale(gen_run *r);
/* Stage: write PNG + JSON for each image into the result. */
int gen_save(gen_run *r, sdgen_result *res);

/* The VAE of any supported model (folder, single file, SD3). */
struct sd_weights;
struct sd_vae;
int gen_open_vae(const char *path, int prefer_fp16, const char *config_dir,
                 struct sd_weights **w, struct sd_vae **vae, sd_error *err);

/* Plans the refiner stage (p->refiner, image or latent hand-off mode) at
 * r->width x r->height with its weights mapped, not read; sets
 * r->refiner_plan. Fails (SD_ERR_OOM, r->refused set) when no plan fits. */
int gen_plan_refiner(gen_run *r);

/* NaN/Inf guard after a stage (issue 3): a stage's output with a
 * non-finite value reruns the stage once in fp32; a failure in fp32 is
 * SD_ERR_NUMERIC. Usage:
 *   gen_guard g; gen_guard_begin(&g, "decode");
 *   do { rc = run(); if (!rc) rc = gen_guard_check(r, &g, out, count); }
 *   while (!rc && g.rerun);
 *   gen_guard_end(&g);
 * Test hook: SDGEN_INJECT_NAN=stage[,stage...] poisons each named stage's
 * output once per process ("denoise", "decode", "refiner-denoise",
 * "refiner-decode"). */
typedef struct gen_guard {
  const char *stage;
  sd_precision saved; /* precision to restore after an fp32 rerun */
  int rerun;          /* the stage must run again (now in fp32) */
  int reran;          /* an fp32 rerun has been made */
} gen_guard;
void gen_guard_begin(gen_guard *g, const char *stage);
int gen_guard_check(gen_run *r, gen_guard *g, float *out, int64_t count);
void gen_guard_end(gen_guard *g);

/* Validation before any model is loaded (issue 11): the parameters, the
 * init image, the refiner (resolved into refiner_path, family checked
 * against the base at model_path), the upscaler file (opened, its network
 * bound), and every steps/strength combination that would leave a stage
 * without a step. Every check of a file a run will need plugs in here
 * (LoRA files, tiny VAEs): one clear error before the first weight is
 * read. refiner_path may be NULL when the caller does not need it. */
int gen_validate_inputs(const sdgen_params *p, const char *model_path, char *refiner_path,
                        size_t refiner_n, sd_error *err);
/* Opens an RRDBNet upscaler (safetensors or .pth) and checks that its
 * scale can give `factor`; *net (and the weights it views) on success. */
struct sd_rrdbnet;
struct sd_pth;
int gen_open_upscaler(const char *path, int factor, struct sd_weights **w, struct sd_pth **pth,
                      struct sd_rrdbnet **net, sd_error *err);
/* Resident handle helpers (gen_model.c): before a run, gives the pages of
 * the handle's mappings back and resets the streaming switches a previous
 * plan set; before the refiner, gives the base's pages back. */
void gen_model_begin_run(struct sdgen_model *m);
/* One generation with a loaded model: the one code path of sdgen_generate
 * and sdgen_model_generate. */
int gen_run_model(sdgen_ctx *ctx, struct sdgen_model *m, const sdgen_params *p,
                  sdgen_result *res);
void gen_model_release_pages(struct sdgen_model *m);
/* The handle's UNet-family model for this run: reloaded (mapped, parsed,
 * LoRAs attached) when r's LoRA set differs from the one it holds, or when
 * a previous run dropped its text encoders (merged LoRA copies go with
 * them). */
struct sd_unet_model;
int gen_model_unet(gen_run *r, struct sd_unet_model **out);
/* A1111 `parameters` text of the run (gen_output.c). */
void gen_infotext(const gen_run *r, char *buf, size_t n);
/* The name a user knows a model by: the hub name (ORG/NAME) for a model in
 * the Hugging Face cache, else the file or folder name. */
void gen_model_display_name(const char *given, const char *path, char *out, size_t n);

/* Shared helpers. */
/* Family of a model on disk, read from model_index.json or the tensor
 * names (no weights read): "sd1", "sdxl", "sdxl-refiner", "sd3", or ""
 * when unknown. */
int gen_model_family(const char *path, const char **family, sd_error *err);
/* params->lcm_auto: *out = *p, plus for a plain SD 1.x / SDXL model its
 * LCM-LoRA (the list in *loras: sd_free it after the run), the LCM sampler
 * and guidance 1.0 where unset; unchanged for an LCM-distilled UNet;
 * SD_ERR_ARG for any other model (gen_lcm.c). */
int gen_lcm_params(const char *model_path, const sdgen_params *p, sdgen_params *out,
                   sdgen_lora **loras, sd_error *err);
int gen_progress(int step, int total, void *user); /* sd_step_cb over gen_run */
int sd_validate_params(const sdgen_params *p, sd_error *err);
/* "fp32" (or NULL) / "bf16" -> sd_precision; fails for unknown names and
 * for bf16 on a CPU without it. */
int sd_parse_precision(const char *name, sd_precision *out, sd_error *err);
int sd_prepare_output_dir(const char *dir, sd_error *err);
int sd_write_text_atomic(const char *path, const char *text, sd_error *err);
/* A path that exists is used as is; otherwise a hub name is resolved
 * through the cache or downloaded. */
int sd_resolve_model(const sdgen_params *p, const char *name, char *out, size_t n,
                     sd_error *err);
/* Saves latents with the model path in the metadata (for --decode). */
int sd_write_latents(const char *path, const sd_named_tensor *latents, const char *model,
                     sd_error *err);

#endif
