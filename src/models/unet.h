/* UNet2DConditionModel: SD 1.x, SD 2.x, SDXL base and refiner from one
 * config-driven implementation.
 *
 * Weights use diffusers names (single-file checkpoints are mapped to them by
 * io/checkpoint_map). Block structure, channels and depths come from the
 * weights; head counts, norm groups and embedding options from config.json
 * (diffusers' defaults apply to fields the file leaves out). */
#ifndef SDGEN_MODELS_UNET_H
#define SDGEN_MODELS_UNET_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "base/status.h"
#include "io/safetensors.h"

#define SD_UNET_MAX_LEVELS 6
#define SD_UNET_MAX_LAYERS 4

typedef struct sd_unet_config {
  int in_channels, out_channels;
  int levels;                   /* len(block_out_channels) */
  int block_out[SD_UNET_MAX_LEVELS];
  int layers_per_block;
  int heads[SD_UNET_MAX_LEVELS]; /* diffusers' num_attention_heads per level */
  int head_dim_fixed;            /* >0: heads = channels / this (SD2/SDXL single files) */
  int norm_groups;
  float norm_eps;
  int cross_dim;
  int flip_sin_to_cos;
  float freq_shift;
  int time_embed_dim;           /* 4 * block_out[0] normally */
  /* SDXL "text_time" additional conditioning; 0 when absent */
  int addition_time_embed_dim;
  int add_in_dim;               /* projection_class_embeddings_input_dim */
  int sample_size;              /* native latent size (64 SD1, 128 SDXL) */
  int time_cond_proj_dim;       /* LCM-distilled UNets: guidance embedding size; 0 = none */
} sd_unet_config;

typedef struct sd_unet sd_unet;

/* Binds the weights of w (diffusers names, no prefix). config may be NULL
 * for single-file checkpoints: defaults of the detected family are used,
 * with `heads_hint` (per level; 0 = derive from head_dim 64). */
int sd_unet_load(sd_unet **out, const sd_weights *w, const cJSON *config,
                 sd_error *err);
void sd_unet_free(sd_unet *m);
const sd_unet_config *sd_unet_get_config(const sd_unet *m);

/* Weight streaming: when on, every block's weights are dropped from the
 * process (madvise) right after the block ran, so only one block's weights
 * are resident at a time; the page cache keeps the file. Off by default. */
void sd_unet_set_weight_streaming(sd_unet *m, int on);
/* Bytes of the largest block's weights (the resident set when streaming). */
int64_t sd_unet_largest_block_bytes(const sd_unet *m);

/* Conditioning for one forward call. */
typedef struct sd_unet_cond {
  const float *context;   /* (B, ctx_len, cross_dim) */
  int ctx_len;
  const float *text_embeds; /* SDXL: (B, pooled_dim) or NULL */
  const float *time_ids;    /* SDXL: (B, n_ids) or NULL */
  int n_time_ids;
  const float *timestep_cond; /* LCM: (B, time_cond_proj_dim) guidance embedding or NULL */
} sd_unet_cond;

/* diffusers' get_guidance_scale_embedding (LatentConsistencyModelPipeline):
 * out (B, dim) = [sin(1000 w f), cos(1000 w f)], f_k = exp(-k ln(10000) /
 * (dim/2 - 1)), for w = guidance_scale - 1 per batch row; dim even. */
void sd_unet_guidance_embedding(float *out, const float *w, int B, int dim);

/* out (B, out_ch, H, W) = unet(sample (B, in_ch, H, W), t (B), cond).
 * kv_chunk: attention key chunk (0 = default). */
int sd_unet_forward(const sd_unet *m, const float *sample, int B, int H, int W,
                    const float *timesteps, const sd_unet_cond *cond,
                    float *out, int kv_chunk, sd_error *err);

#endif
