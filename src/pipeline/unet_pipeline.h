/* The UNet-family pipelines (SD 1.x / 2.x, SDXL base, SDXL refiner):
 * loading a model bundle and the three stages a generation runs —
 * prompt encoding, denoising, VAE decode — plus img2img preparation.
 * Each stage is a function over plain buffers so the CLI, the library API
 * and the conformance runner drive the same code. */
#ifndef SDGEN_PIPELINE_UNET_PIPELINE_H
#define SDGEN_PIPELINE_UNET_PIPELINE_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "base/status.h"
#include "io/lora.h"
#include "io/safetensors.h"
#include "models/clip_text.h"
#include "models/taesd.h"
#include "models/unet.h"
#include "models/vae.h"
#include "sample/rng.h"
#include "sample/scheduler.h"
#include "text/clip_tokenizer.h"

typedef enum sd_model_family {
  SD_MODEL_SD1 = 0, /* also SD 2.x: one CLIP encoder */
  SD_MODEL_SDXL,
  SD_MODEL_SDXL_REFINER,
  SD_MODEL_SD3,
} sd_model_family;

const char *sd_model_family_name(sd_model_family f);

typedef struct sd_load_options {
  const char *path;           /* diffusers folder or single .safetensors file */
  const char *config_dir;     /* single file: diffusers folder to take configs
                                 (and tokenizers) from, or NULL */
  const char *tokenizers_dir; /* folder with clip/vocab.json, clip/merges.txt */
  int prefer_fp16;            /* pick *.fp16.safetensors variants first */
  int skip_text_encoders;     /* load only unet + vae (memory plans) */
  const sd_lora_spec *loras;  /* adapters, attached as side paths at load */
  int n_loras;
} sd_load_options;

/* A loaded UNet-family model. Components may be NULL when absent (the
 * refiner has no CLIP-L). Weight sets own the file mappings. */
typedef struct sd_unet_model {
  sd_model_family family;
  sd_clip_tokenizer *tok1, *tok2; /* CLIP-L (pad EOS) / bigG (pad "!") */
  sd_clip *te1, *te2;
  sd_unet *unet;
  sd_vae *vae;
  cJSON *scheduler_config;
  int force_zeros_for_empty_prompt; /* SDXL base */
  int requires_aesthetics_score;    /* SDXL refiner */
  sd_weights *w_te1, *w_te2, *w_unet, *w_vae;
  sd_adapter *adapter; /* LoRAs (NULL: none); freed after the weight sets */
  char path[4096];
} sd_unet_model;

int sd_unet_model_load(sd_unet_model **out, const sd_load_options *opt, sd_error *err);
void sd_unet_model_free(sd_unet_model *m);
/* LoRAs are attached as a side path at load; this merges them into owned
 * F32 copies of the touched weights instead (faster steps, more memory:
 * sd_adapter_merge_extra_bytes). No-op without LoRAs. */
int sd_unet_model_merge_loras(sd_unet_model *m, sd_error *err);

/* Releases the text encoders (after encoding) and their weight mappings. */
void sd_unet_model_drop_text_encoders(sd_unet_model *m);

/* Conditioning for a batch of n images with classifier-free guidance:
 * context (2n, L, D) ordered [negative x n, positive x n]; SDXL also pooled
 * (2n, P) and time ids (2n, k). Without guidance only the positive half. */
typedef struct sd_conditioning {
  float *context;
  int batch, ctx_len, ctx_dim;
  float *pooled;
  int pooled_dim;
  float *time_ids;
  int n_time_ids;
} sd_conditioning;

typedef struct sd_prompt_options {
  const char *prompt;
  const char *negative_prompt; /* NULL = none (SDXL base: zeros) */
  int n;                       /* images per prompt */
  int guidance;                /* 1: build [negative, positive] */
  int width, height;           /* image size, for SDXL time ids */
  int orig_width, orig_height; /* SDXL original_size; 0 = image size */
  int crop_top, crop_left;     /* SDXL crops_coords_top_left */
  float aesthetic_score, negative_aesthetic_score; /* refiner: 6.0 / 2.5 */
} sd_prompt_options;

int sd_encode_prompt(const sd_unet_model *m, const sd_prompt_options *po,
                     sd_conditioning *out, sd_error *err);
void sd_conditioning_free(sd_conditioning *c);

/* Progress callback: step i of n finished. Return nonzero to cancel. */
typedef int (*sd_step_cb)(int step, int total, void *user);

typedef struct sd_denoise_options {
  float guidance_scale;  /* <= 1: no CFG (conditioning holds n entries) */
  int steps;
  sd_sampler sampler;
  int begin_index;       /* img2img: first timestep index */
  int end_index;         /* stop before this index (0: run to the end) */
  int kv_chunk;
  /* LCM-distilled UNets: guidance embedding (n, time_cond_proj_dim), one row
   * per image (sd_unet_guidance_embedding of guidance - 1), or NULL */
  const float *timestep_cond;
  sd_step_cb on_step;
  void *user;
  /* previews: called at each loop index i with the model output (after
   * CFG) and the sample it was computed on, (n, C, h, w) each, before the
   * scheduler step; nonzero return stops the loop with that code. NULL:
   * none. */
  int (*on_prediction)(int i, const float *model_output, const float *sample, void *user);
} sd_denoise_options;

/* Runs the loop in place on latents (n, C, h, w), already multiplied by
 * init_noise_sigma (txt2img) or noised (img2img). `sched` is prepared with
 * set_timesteps by the caller; rng supplies step noise. */
int sd_denoise(const sd_unet_model *m, sd_scheduler *sched, const sd_conditioning *cond,
               const sd_denoise_options *o, float *latents, int n, int h, int w, sd_rng *rng,
               sd_error *err);

/* How the VAE decodes a batch. */
enum { SD_DECODE_BATCH = 0, SD_DECODE_SLICED = 1, SD_DECODE_TILED = 2 };

/* image (n, 3, 8h, 8w) in [-1, 1] from latents (n, C, h, w) (scaled space).
 * mode: the whole batch at once, one image at a time (VAE slicing), or one
 * image at a time in blended tiles (VAE tiling, diffusers' defaults). */
int sd_decode_latents(const sd_vae *vae, const float *latents, int n, int h, int w,
                      int mode, float *image, sd_error *err);

/* The same with a tiny autoencoder (TAESD): it decodes the latents the
 * diffusion model sees (latents / scaling_factor + shift_factor, 1.0 / 0.0
 * in every release), one image at a time. */
int sd_decode_latents_tiny(const sd_taesd *t, const float *latents, int n, int h, int w,
                           float *image, sd_error *err);
/* img2img with a tiny autoencoder: latents = scaling_factor * (encoder(image)
 * - shift_factor); deterministic (no distribution, no draw from the rng). */
int sd_encode_image_tiny(const sd_taesd *t, const float *image, int n, int H, int W,
                         float *latents, sd_error *err);

/* img2img: init latents = scaling * (mean + std * noise) with noise drawn
 * from rng (as latent_dist.sample does); image (n, 3, H, W) in [-1, 1]. */
int sd_encode_image(const sd_vae *vae, const float *image, int n, int H, int W, sd_rng *rng,
                    float *latents, sd_error *err);

/* diffusers' img2img start: t_start = steps - int(steps * strength). */
int sd_img2img_begin_index(int steps, float strength);

/* Base/refiner hand-off at `fraction` of the schedule (diffusers'
 * denoising_end / denoising_start): the cutoff timestep is
 * round(T - fraction * T); the base runs the timesteps >= cutoff, the
 * refiner the ones below. Returns the index of the first timestep below
 * the cutoff in `sched` (after set_timesteps). */
int sd_denoising_split_index(const sd_scheduler *sched, float fraction, int train_steps);

#endif
