/* CLIP text encoder (transformers' CLIPTextModel / CLIPTextModelWithProjection).
 *
 * Serves SD 1.5 (CLIP-L), SDXL / SD3 (CLIP-L and OpenCLIP bigG, mapped to
 * these names at load time). Weights use the transformers names under a
 * prefix (usually "text_model."); sizes come from config.json or, without
 * one, from tensor shapes. Causal mask only, no padding mask: padding
 * positions are encoded too, as the reference does. */
#ifndef SDGEN_MODELS_CLIP_TEXT_H
#define SDGEN_MODELS_CLIP_TEXT_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "base/status.h"
#include "io/safetensors.h"

typedef enum sd_clip_act { SD_ACT_QUICK_GELU = 0, SD_ACT_GELU } sd_clip_act;

typedef struct sd_clip_config {
  int vocab_size, hidden, intermediate, heads, layers, max_positions;
  int projection_dim; /* 0 when the model has no text_projection */
  sd_clip_act act;
  float eps;
} sd_clip_config;

typedef struct sd_clip_layer {
  const sd_tensor *ln1_w, *ln1_b;       /* (D) */
  const sd_tensor *q_w, *q_b, *k_w, *k_b, *v_w, *v_b; /* (D, D), (D) */
  const sd_tensor *out_w, *out_b;       /* (D, D), (D) */
  const sd_tensor *ln2_w, *ln2_b;       /* (D) */
  const sd_tensor *fc1_w, *fc1_b;       /* (I, D), (I) */
  const sd_tensor *fc2_w, *fc2_b;       /* (D, I), (D) */
} sd_clip_layer;

typedef struct sd_clip {
  sd_clip_config cfg;
  const sd_tensor *tok_emb;   /* (V, D) */
  const sd_tensor *pos_emb;   /* (P, D) */
  const sd_tensor *final_ln_w, *final_ln_b; /* (D) */
  const sd_tensor *proj;      /* (proj_dim, D) or NULL */
  sd_clip_layer *layer;       /* [layers] */
  int stream_weights;         /* drop each layer's weight pages after it ran */
} sd_clip;

/* Bytes of the largest layer's weights (the resident set when streaming,
 * with the few embedding rows a prompt touches). */
int64_t sd_clip_largest_layer_bytes(const sd_clip *m);

/* Binds weights `<prefix>text_model.*` (and `<prefix>text_projection.weight`)
 * of w. config (transformers config.json) may be NULL: sizes are then read
 * from shapes, the activation from `act_if_no_config`. w must outlive *out. */
int sd_clip_load(sd_clip **out, const sd_weights *w, const char *prefix,
                 const cJSON *config, sd_clip_act act_if_no_config,
                 sd_error *err);
void sd_clip_free(sd_clip *m);

/* Outputs, each a caller-owned buffer or NULL when not wanted:
 *  last_hidden (B, L, D): after final_layer_norm
 *  penultimate (B, L, D): hidden_states[-2], output of the next-to-last layer
 *  pooled (B, D): final-LN output at argmax(ids) of each row (the EOS)
 *  text_embeds (B, proj_dim): text_projection(pooled) */
typedef struct sd_clip_outputs {
  float *last_hidden, *penultimate, *pooled, *text_embeds;
} sd_clip_outputs;

int sd_clip_encode(const sd_clip *m, const int32_t *ids, int B, int L,
                   sd_clip_outputs *out, sd_error *err);

/* Bytes of activations sd_clip_encode needs for B x L tokens. */
int64_t sd_clip_scratch_bytes(const sd_clip_config *cfg, int B, int L);

#endif
