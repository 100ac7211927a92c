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
  /* 1: nothing is written to disk (no PNG, JSON or latents file, output_dir
   * unused): each image comes back in sdgen_result as PNG bytes (with its
   * `parameters` chunk) and its metadata as JSON text. For servers. */
  int output_in_memory;
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

/* What a generation made. The heap members are owned by the result: call
 * sdgen_result_free after every sdgen_generate / sdgen_model_generate /
 * sdgen_decode (also after a failure; it is safe on a zeroed result). */
typedef struct sdgen_result {
  int count;
  char images[SDGEN_MAX_IMAGES][4096];    /* PNG paths ("" with output_in_memory) */
  char metadata[SDGEN_MAX_IMAGES][4096];  /* JSON paths ("" with output_in_memory) */
  /* The seed of each image. A batch (params->n) is drawn from one generator
   * as diffusers does, so every image of a batch has the request's seed; the
   * image is reproduced by the same seed, n and index. */
  uint64_t seeds[SDGEN_MAX_IMAGES];
  char *infotext[SDGEN_MAX_IMAGES];      /* A1111 `parameters` text of each image */
  char *metadata_json[SDGEN_MAX_IMAGES]; /* the JSON metadata text of each image */
  unsigned char *png[SDGEN_MAX_IMAGES];  /* output_in_memory: the PNG file bytes */
  size_t png_size[SDGEN_MAX_IMAGES];
} sdgen_result;

/* Frees the heap members of a result and zeroes it. */
void sdgen_result_free(sdgen_result *result);

sdgen_params sdgen_default_params(void);

int sdgen_ctx_new(sdgen_ctx **out);
void sdgen_ctx_free(sdgen_ctx *ctx);

/* Runs one generation: n images from params, written to output_dir as
 * output_<timestamp>_<index>.png + .json. */
int sdgen_generate(sdgen_ctx *ctx, const sdgen_params *params, sdgen_result *result);

/* Finishes a generation whose VAE decode did not complete: decodes the
 * latents file written next to the output (output_<stamp>.latents.safetensors)
 * with the VAE of params->model (NULL: the model named in the file) and
 * writes the images as sdgen_generate would, under the run's own stamp
 * (output_<stamp>_<i>.png + .json), beside the latents file when
 * params->output_dir is NULL, else in output_dir. The latents file is then
 * removed as a run that decoded at once removes it (kept with keep_latents,
 * and always kept when the decode fails). */
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
 *     for (...) {
 *       sdgen_model_generate(ctx, m, &p, &res);   // p.model ignored
 *       ...; sdgen_result_free(&res);
 *     }
 *     sdgen_model_free(m);
 *   }
 *
 * Loading resolves params->model (hub cache or download), maps its weight
 * files, parses the configs and tokenizers and binds the weights (nothing is
 * read yet). The handle keeps these between generations, with the settings
 * that shape the loaded model as given at load: model, config_dir,
 * tokenizers_dir, prefer_fp16, clip_l/clip_g/t5/no_t5 and vae (the
 * request's values of these are ignored). Everything else (prompt, size,
 * steps, sampler, seed, LoRAs, refiner, upscale, output, callbacks) comes
 * from each request's params. LoRAs (params->loras and <lora:> tags) are
 * attached at load; a request with another LoRA set re-binds the handle's
 * UNet model to it (mapping and parsing again, no weights read), the same
 * set reuses it, merged copies included. Each generation still runs the memory plan;
 * it first gives the pages of the handle's mappings back (the page cache
 * keeps the files, a later touch is a minor fault), so the plan measures
 * the process without them and counts the weights as it does for a fresh
 * load. Refiners are mapped per generation. sdgen_generate is exactly
 * load + generate + free. A handle is used by one generation at a time;
 * separate contexts (one per request or worker thread) each have their own
 * error message and cancel flag. */
typedef struct sdgen_model sdgen_model;
int sdgen_model_load(sdgen_ctx *ctx, const sdgen_params *params, sdgen_model **out);
int sdgen_model_generate(sdgen_ctx *ctx, sdgen_model *model, const sdgen_params *params,
                         sdgen_result *result);
void sdgen_model_free(sdgen_model *model);

/* Validates every input a generation would need (parameters, the model
 * name, the init image, the refiner, the upscaler, steps/strength
 * combinations that leave a stage without a step) without loading any
 * model; sdgen_generate and sdgen_model_generate run it first. */
int sdgen_check_inputs(sdgen_ctx *ctx, const sdgen_params *params);

/* ---- models on disk and in the Hugging Face cache ---- */

/* Downloads a hub model (ORG/NAME or ORG/NAME/FILE) into the Hugging Face
 * cache (or finds it there), with params->offline and params->on_download;
 * the local path goes to path_out. */
int sdgen_download(sdgen_ctx *ctx, const sdgen_params *params, const char *name,
                   char *path_out, size_t path_n);

/* The Hugging Face cache folder ($HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/...). */
int sdgen_hub_cache_dir(sdgen_ctx *ctx, char *out, size_t n);

typedef struct sdgen_model_entry {
  const char *name;     /* what params->model takes: "ORG/NAME" for the hub
                           cache, the folder or file name for a model dir */
  const char *path;     /* local path (hub: the snapshot folder, "" if none) */
  const char *source;   /* "hub" or "dir" */
  const char *pipeline; /* "sd15", "sdxl", "sdxl-refiner", "sd3" or "" */
  int64_t size_bytes;
  int complete;         /* hub: every file present; dir: 1 */
  int64_t partial_bytes; /* hub: interrupted downloads awaiting resume */
} sdgen_model_entry;

/* Lists the models of the Hugging Face cache (never touching the network)
 * and, for each of the n_dirs folders in model_dirs, each model folder
 * (model_index.json) or single .safetensors / .ckpt file directly under it,
 * by its name there (model_dirs may be NULL). fn returning nonzero stops the
 * walk. A folder that cannot be read is an error. */
int sdgen_list_models(sdgen_ctx *ctx, const char *const *model_dirs, int n_dirs,
                      int (*fn)(void *user, const sdgen_model_entry *m), void *user);

/* Lists the LoRA files (.safetensors) under dir (recursively, names
 * relative to dir without the extension, as <lora:NAME:SCALE> takes them). */
int sdgen_list_loras(sdgen_ctx *ctx, const char *dir,
                     int (*fn)(void *user, const char *name, const char *path), void *user);

/* ---- helpers for clients ---- */

/* Download progress renderer for a terminal (stderr), usable as
 * params->on_download; user is ignored. */
int sdgen_print_download_progress(void *user, const char *file, int64_t done, int64_t total,
                                  double bytes_per_s);
/* "1.5GB"-style sizes, and "600M" / "2G" / "1.5GB" parsed to bytes (-1: bad). */
const char *sdgen_format_size(int64_t bytes, char *buf, size_t n);
int64_t sdgen_parse_size(const char *text);
/* Call first in main(): picks the BLAS kernels for this CPU (may re-execute
 * the program once with the environment OpenBLAS needs). */
void sdgen_process_init(char **argv);

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
