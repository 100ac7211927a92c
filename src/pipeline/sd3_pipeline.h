/* SD3 / SD3.5 text-to-image: the recipe of diffusers'
 * StableDiffusion3Pipeline as stages (encode, denoise, decode).
 *
 * Sources: a diffusers folder (model_index.json, transformer/, vae/,
 * text_encoder{,_2,_3}/, tokenizer{,_2,_3}/) or a Stability single file
 * (mapped by io/checkpoint_map_sd3.h), plus optional separate text encoder
 * files (clip_l / clip_g / t5xxl .safetensors) and a folder to take the
 * tokenizers from when the single file has none.
 *
 * Memory: sd3_pipeline_open maps files and reads configs only. Each stage
 * loads the model it needs and releases it when done: the three text
 * encoders one after another, then the transformer, then the VAE.
 *
 * Reference behaviour matched (diffusers v0.31.0 except the no-T5 length):
 *  - prompt_embeds = cat(pad(cat(CLIP-L penultimate, CLIP-G penultimate),
 *    to the T5 width), T5 states) along the sequence: 77 + max_seq tokens;
 *    without T5 the T5 part is zeros of (max_seq, joint_dim) (diffusers
 *    >= 0.32);
 *  - pooled = cat(CLIP-L text_embeds, CLIP-G text_embeds);
 *  - CFG batch [negative, positive], v = u + g (c - u) when g > 1;
 *  - Euler flow steps from the model's scheduler_config.json;
 *  - decode of latents / scaling + shift, image01 = clamp(x / 2 + 0.5).
 *
 * Usage:
 *   sd3_sources src = {.model = "sd3.5_medium"};
 *   sd3_pipeline *p;
 *   if (sd3_pipeline_open(&p, &src, &err)) ...;
 *   sd3_params prm = sd3_default_params();
 *   prm.prompt = "a red fox"; prm.seed = 42;
 *   float *image01 = sd_alloc(3 * prm.width * prm.height * sizeof(float));
 *   sd3_generate(p, &prm, image01, &err);
 *   sd3_pipeline_free(p); */
#ifndef SDGEN_PIPELINE_SD3_PIPELINE_H
#define SDGEN_PIPELINE_SD3_PIPELINE_H

#include <stdint.h>

#include "base/status.h"
#include "models/clip_text.h"
#include "models/mmdit.h"
#include "models/t5_encoder.h"
#include "models/vae.h"
#include "sample/scheduler.h"

/* Tokens of the CLIP part of prompt_embeds. */
#define SD3_CLIP_TOKENS 77

typedef struct sd3_sources {
  const char *model;      /* diffusers folder or single .safetensors file */
  const char *clip_l;     /* separate encoder files, or NULL: from `model` */
  const char *clip_g;
  const char *t5;
  const char *tokenizers; /* folder with tokenizer{,_2,_3}/, or NULL: model */
  int skip_t5;            /* 1: never load T5, its part of the embeds is 0 */
} sd3_sources;

/* Called after each denoising step (1-based) of `steps`; a nonzero return
 * cancels the run (SD_ERR_CANCELLED). */
typedef int (*sd3_progress_fn)(int step, int steps, void *user);

typedef struct sd3_params {
  const char *prompt;
  const char *negative_prompt; /* NULL = "" */
  int width, height;           /* pixels, multiples of 16 */
  int steps;
  float guidance;              /* <= 1: no CFG, no negative encoding */
  uint64_t seed;               /* torch CPU generator */
  int max_sequence_length;     /* T5 tokens (256) */
  int kv_chunk;                /* attention key chunk, 0 = kernel's choice */
  sd3_progress_fn progress;
  void *user;
} sd3_params;

sd3_params sd3_default_params(void);

typedef struct sd3_pipeline sd3_pipeline;

int sd3_pipeline_open(sd3_pipeline **out, const sd3_sources *src, sd_error *err);
void sd3_pipeline_free(sd3_pipeline *p);

typedef enum sd3_component {
  SD3_CLIP_L = 0, /* text_encoder */
  SD3_CLIP_G,     /* text_encoder_2 */
  SD3_T5,         /* text_encoder_3 */
  SD3_TRANSFORMER,
  SD3_VAE
} sd3_component;

/* Opens one component in diffusers names: *w is a new set (free it with
 * sd_weights_free when the stage is done) and *cfg its config.json (or one
 * derived for a single file; NULL when none is known). Looks in a separate
 * encoder file first, then the single file, then the diffusers folder; a
 * text encoder from a file takes its config from the tokenizers folder's
 * text_encoder{,_2,_3} config.json when there is one. */
int sd3_pipeline_open_component(const sd3_pipeline *p, sd3_component which,
                                sd_weights **w, cJSON **cfg, sd_error *err);

/* The transformer and the VAE bound to their weights (mapped, nothing
 * read), with their configs; every field is owned by the struct. */
typedef struct sd3_models {
  sd_weights *transformer_weights, *vae_weights;
  cJSON *transformer_config, *vae_config;
  sd_mmdit *mmdit;
  sd_vae *vae;
} sd3_models;

/* Binds both; on failure *out holds nothing. */
int sd3_pipeline_bind_models(const sd3_pipeline *p, sd3_models *out, sd_error *err);
/* Frees the MMDiT and gives its weight pages back (unmapped for a folder;
 * released from RSS for a single file, which later stages still map). */
void sd3_models_drop_transformer(const sd3_pipeline *p, sd3_models *m);
void sd3_models_free(const sd3_pipeline *p, sd3_models *m);

/* Text encoders drop each layer's weight pages after it ran (weight
 * streaming; off by default). */
void sd3_pipeline_set_encoder_streaming(sd3_pipeline *p, int on);

/* Memory of one text encoder (binding only, nothing read): all its weights,
 * its largest layer (the resident set when streamed), and the activations
 * of encoding B prompts of L tokens (L is ignored for the CLIPs: 77). */
typedef struct sd3_encoder_sizes {
  int64_t weights, largest_layer, activations;
} sd3_encoder_sizes;
int sd3_pipeline_encoder_sizes(const sd3_pipeline *p, sd3_component which, int B, int L,
                               sd3_encoder_sizes *out, sd_error *err);

/* The model's scheduler_config.json (the release config for single files);
 * *cfg is owned by the caller. */
int sd3_pipeline_scheduler_config(const sd3_pipeline *p, cJSON **cfg, sd_error *err);

/* Encodes n prompts with each encoder in turn (each loaded, used for all
 * prompts, released). embeds: (n, 77 + max_seq, joint_dim), pooled:
 * (n, pooled_dim), both from sd_alloc (caller frees). */
int sd3_encode_prompts(sd3_pipeline *p, const char *const *prompts, int n,
                       int max_seq, float **embeds, float **pooled, int *tokens,
                       sd_error *err);

/* Full run: image01 (3, height, width) in [0, 1]. */
int sd3_generate(sd3_pipeline *p, const sd3_params *prm, float *image01,
                 sd_error *err);

/* ---- building blocks (also used by the conformance tests) ---- */

/* out (B, Lc + Lt, J) = [pad_J(cat(l_pen (B, Lc, Dl), g_pen (B, Lc, Dg))),
 * t5 (B, Lt, J) or zeros when t5 is NULL]. Dl + Dg must be <= J. */
int sd3_assemble_prompt_embeds(const float *l_pen, int Dl, const float *g_pen,
                               int Dg, int B, int Lc, const float *t5, int Lt,
                               int J, float *out, sd_error *err);

/* out (B, Pl + Pg) = cat(l_emb (B, Pl), g_emb (B, Pg)). */
void sd3_assemble_pooled(const float *l_emb, int Pl, const float *g_emb,
                         int Pg, int B, float *out);

/* The denoising loop on latents (1, C, H, W) in place. embeds / pooled hold
 * [negative, positive] when guidance > 1 (CFG), else the positive only. The
 * scheduler must have its timesteps set. */
int sd3_denoise(const sd_mmdit *m, sd_scheduler *s, float *latents, int H,
                int W, const float *embeds, const float *pooled, int tokens,
                float guidance, int kv_chunk, sd3_progress_fn progress,
                void *user, sd_error *err);
/* The same with a preview hook: pred(i, v, latents, user) after CFG and
 * before each scheduler step (nonzero return stops with that code). */
typedef int (*sd3_prediction_fn)(int i, const float *model_output, const float *sample,
                                 void *user);
int sd3_denoise_ex(const sd_mmdit *m, sd_scheduler *s, float *latents, int H,
                int W, const float *embeds, const float *pooled, int tokens,
                float guidance, int kv_chunk, sd3_progress_fn progress,
                void *user, sd3_prediction_fn pred,
                   void *pred_user, sd_error *err);


/* image01 (B, 3, 8H, 8W) = clamp(decode(latents / scaling + shift) / 2 +
 * 0.5, 0, 1); decoder_input (B, C, H, W) may be NULL or receives the scaled
 * latents. */
int sd3_decode(const sd_vae *vae, const float *latents, int B, int H, int W,
               float *decoder_input, float *image01, sd_error *err);

#endif
