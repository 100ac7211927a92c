/* sdgen — Stable Diffusion text-to-image on the CPU, as a C library.
 *
 *   sdgen_ctx *ctx;
 *   if (sdgen_ctx_new(&ctx)) return 1;
 *   sdgen_params p = sdgen_default_params();
 *   p.prompt = "a lighthouse at dusk";
 *   p.model = "/models/stable-diffusion-v1-5";   // folder, .safetensors or hub name
 *   sdgen_result res;
 *   if (sdgen_generate(ctx, &p, &res) != 0)
 *     fprintf(stderr, "error: %s\n", sdgen_last_error(ctx));
 *   else
 *     printf("wrote %s\n", res.images[0]);
 *   sdgen_ctx_free(ctx);
 *
 * Every function returns 0 on success or a nonzero status; the message of
 * the last failure stays on the context. Nothing here prints or exits: the
 * caller receives progress and memory events through callbacks. */
#ifndef SDGEN_H
#define SDGEN_H

#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sdgen_ctx sdgen_ctx;

/* Event kinds delivered to on_event (see pipeline/monitor.h). */
enum {
  SDGEN_EVENT_MEMORY = 0,     /* "💾 Memory [stage]: ..." line */
  SDGEN_EVENT_CLEANUP,        /* what is being freed */
  SDGEN_EVENT_OPTIMIZATION,   /* an optimization the planner chose */
  SDGEN_EVENT_WARNING,
  SDGEN_EVENT_INFO,
  SDGEN_EVENT_PLAN,
};

/* One LoRA adapter: a .safetensors file (kohya / sd-scripts or diffusers /
 * PEFT layout), a name under lora_dir, or a hub name (ORG/NAME), and its
 * scale (1.0 = as trained; may be negative). */
typedef struct sdgen_lora {
  const char *path;
  float scale;
} sdgen_lora;

typedef struct sdgen_params {
  const char *prompt;
  const char *negative_prompt; /* NULL: none */
  const char *model;           /* folder, single file or hub name; NULL = default */
  const char *config_dir;      /* single files: diffusers folder with the configs */
  const char *tokenizers_dir;  /* folder with clip/ and t5/ tokenizer files */
  const char *output_dir;      /* default "outputs" */
  int width, height;           /* 0: the model's native size */
  int steps;                   /* default 30 */
  float cfg;                   /* guidance scale; < 0: model default */
  uint64_t seed;               /* default 42 */
  int n;                       /* images per prompt, default 1 */
  const char *sampler;         /* NULL: the model's scheduler */
  const char *rng;             /* "cpu" (default, diffusers) or "cuda" */
  const char *init_image;      /* img2img input (PNG or JPEG) or NULL */
  float strength;              /* img2img strength, (0, 1], default 0.8 */
  int prefer_fp16;             /* load *.fp16.safetensors variants first */
  /* refiner: img2img pass after the base image (the base model is unloaded
   * first). refiner_switch in (0, 1): SDXL base -> refiner hand-off in
   * latent space at that fraction of the steps instead. */
  const char *refiner;         /* folder, single file or hub name, or NULL */
  int refiner_steps;           /* default 20 */
  float refiner_strength;      /* default 0.3 */
  float refiner_switch;        /* 0: image mode */
  float aesthetic_score, negative_aesthetic_score; /* SDXL refiner: 6.0 / 2.5 */
  /* upscaling of the final image: factor 2 or 4 (0/1: none); Lanczos as
   * PIL does it, or Real-ESRGAN when upscaler names an RRDBNet model. */
  int upscale;
  const char *upscaler;
  int upscale_tile;            /* Real-ESRGAN tile size in pixels, 0 = auto */
  /* SD3 */
  int no_t5;                   /* leave T5 out: its part of the prompt is zeros */
  const char *clip_l, *clip_g, *t5; /* separate text encoder files */
  int threads;                 /* 0: physical cores */
  /* arithmetic of the matrix products: "fp32" (default, exact: matches the
   * goldens) or "bf16" (fast: bf16 operands, F32 accumulation; needs
   * AVX512_BF16). NULL: "fp32". */
  const char *precision;
  int keep_latents;            /* keep the .latents.safetensors file */
  int64_t max_memory;          /* bytes; 0: available memory minus a margin */
  int dry_run;                 /* plan only */
  /* memory plan: the planner picks the fastest strategy that fits
   * max_memory; min_plan forces at least this strategy (0 resident,
   * 1 release text encoders, 2 VAE slicing, 3 VAE tiling, 4 weight
   * streaming, 5 one image of the batch at a time; -1: no minimum) */
  int min_plan;
  int offline;                 /* never download; use the Hugging Face cache only */
  /* adapters and few-step schedules */
  const sdgen_lora *loras;     /* n_loras adapters, applied in order (deltas add) */
  int n_loras;
  const char *lora_dir;        /* where <lora:NAME:SCALE> and bare names are looked up */
  const char *timestep_spacing; /* "leading", "linspace", "trailing"; NULL: scheduler config */
  const char *prediction_type;  /* "epsilon", "v_prediction"; NULL: scheduler config */
  /* LCM recipe on any SD 1.x / SDXL model: an LCM-distilled UNet
   * (time_cond_proj_dim) runs the LatentConsistencyModelPipeline; a plain
   * one gets its family's LCM-LoRA (latent-consistency/lcm-lora-sdv1-5 or
   * lcm-lora-sdxl) after loras, the LCM sampler and guidance 1.0 unless
   * sampler / cfg are set. Other models are refused. */
  int lcm_auto;
  /* decoder: NULL = the model's VAE; "taesd" = the tiny autoencoder of the
   * model's family (taesd, taesdxl, taesd3); or a path / hub name of an
   * AutoencoderTiny folder or madebyollin's taesd_*.safetensors / .pth files */
  const char *vae;
  int preview_every;           /* > 0: a tiny-VAE preview every N denoising steps */
  /* callbacks */
  int (*on_progress)(int step, int total, double elapsed_s, void *user); /* nonzero: cancel */
  void (*on_event)(int kind, const char *text, void *user);
  /* download progress per file (total -1 if unknown); nonzero: cancel */
  int (*on_download)(void *user, const char *file, int64_t done, int64_t total,
                     double bytes_per_s);
  /* preview image (RGB, 8 bits, width x height x 3) every preview_every
   * steps; the buffer lives until the callback returns */
  void (*on_preview)(int step, int total, int width, int height, const unsigned char *rgb,
                     void *user);
  void *user;
} sdgen_params;

#define SDGEN_MAX_IMAGES 64

typedef struct sdgen_result {
  int count;
  char images[SDGEN_MAX_IMAGES][4096];    /* PNG paths */
  char metadata[SDGEN_MAX_IMAGES][4096];  /* JSON paths */
} sdgen_result;

sdgen_params sdgen_default_params(void);

int sdgen_ctx_new(sdgen_ctx **out);
void sdgen_ctx_free(sdgen_ctx *ctx);

/* Runs one generation: n images from params, written to output_dir as
 * output_<timestamp>_<index>.png + .json. */
int sdgen_generate(sdgen_ctx *ctx, const sdgen_params *params, sdgen_result *result);

/* Finishes a generation whose VAE decode did not complete: decodes the
 * latents file written next to the output (output_<stamp>.latents.safetensors)
 * with the VAE of params->model (NULL: the model named in the file) and
 * writes the images as sdgen_generate would. */
int sdgen_decode(sdgen_ctx *ctx, const sdgen_params *params, const char *latents_file,
                 sdgen_result *result);

/* Benchmark of params->model (UNet family or SD3) at params->width (0: the
 * model's native size), params->threads and params->precision, in one run:
 * the sgemm ceilings (F32, and bf16 where the CPU has it), load, prompt
 * encoding, one denoiser step with CFG (batch 2) after an untimed warm-up
 * step (none when params->steps is 1: the step then also pays the first
 * touch of the weights), and one VAE decode, the step and the decode broken down by op class.
 * The report goes to `out` (the one place this library prints: the caller
 * chooses the stream) and ends with the line
 *   unet step: X s, Y GFLOP/s, Z% of sgemm ceiling
 * ("mmdit step" for SD3; ", W% of bf16 ceiling" added in bf16 mode).
 * json_path: also write everything as JSON there (NULL: no file). */
int sdgen_bench(sdgen_ctx *ctx, const sdgen_params *params, const char *json_path, FILE *out);

/* Resident models: load once, generate many, release.
 *
 *   sdgen_model *m;
 *   if (sdgen_model_load(ctx, &p, &m) == 0) {
 *     for (...) sdgen_model_generate(ctx, m, &p, &res);   // p.model ignored
 *     sdgen_model_free(m);
 *   }
 *
 * A model handle keeps params->model (and its refiner, LoRAs and decoder as
 * given at load) mapped and parsed between generations; each generation
 * still runs the memory plan. A handle is used by one generation at a time. */
typedef struct sdgen_model sdgen_model;
int sdgen_model_load(sdgen_ctx *ctx, const sdgen_params *params, sdgen_model **out);
int sdgen_model_generate(sdgen_ctx *ctx, sdgen_model *model, const sdgen_params *params,
                         sdgen_result *result);
void sdgen_model_free(sdgen_model *model);

/* Message of the last failure on ctx ("" if none). */
const char *sdgen_last_error(const sdgen_ctx *ctx);

/* Requests cancellation of a running sdgen_generate (signal-safe: sets a
 * flag checked between steps). */
void sdgen_cancel(sdgen_ctx *ctx);

const char *sdgen_version(void);

/* Writes an 8-bit RGB buffer (width x height x 3, as on_preview hands it)
 * as a PNG, under a temporary name renamed when complete (a reader never
 * sees a partial file). 0 on success. */
int sdgen_write_png(const char *path, int width, int height, const unsigned char *rgb);

#ifdef __cplusplus
}
#endif
#endif
