/* MMDiT: diffusers' SD3Transformer2DModel (SD 3 Medium, SD 3.5 Large /
 * Large Turbo, and the MMDiT-X of SD 3.5 Medium), config-driven.
 *
 * Weights use diffusers names (pos_embed.*, time_text_embed.*,
 * context_embedder.*, transformer_blocks.N.*, norm_out.*, proj_out.*);
 * single-file checkpoints are mapped to them by io/checkpoint_map_sd3.h.
 * Every size comes from config.json and is checked against the tensors:
 * hidden = heads * head_dim, the FFN width, the pos-embed grid, which blocks
 * carry the MMDiT-X second attention (dual_attention_layers) and whether
 * q/k are RMS-normalized (qk_norm "rms_norm").
 *
 * Reference behaviour matched (diffusers v0.31.0):
 *  - patch embedding: stride-p conv, then the stored 2-D sincos table
 *    (pos_embed_max_size^2 entries) center-cropped to the patch grid;
 *  - conditioning = timestep MLP(sinusoid 256, cos first) + pooled MLP;
 *  - joint attention over [image tokens, context tokens] in that order;
 *  - the last block is "context pre-only": its context stream gets a 2-chunk
 *    AdaLayerNormContinuous (scale, shift) and no output projection or FFN;
 *  - final AdaLayerNormContinuous, linear to p*p*C, unpatchify.
 *
 * Usage:
 *   sd_mmdit *m;
 *   if (sd_mmdit_load(&m, weights, config, &err)) ...;
 *   sd_mmdit_forward(m, x, B, H, W, t, ctx, L, pooled, out, 0, &err);
 *   sd_mmdit_free(m);  // weights stay owned by the caller */
#ifndef SDGEN_MODELS_MMDIT_H
#define SDGEN_MODELS_MMDIT_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "base/status.h"
#include "io/safetensors.h"

typedef struct sd_mmdit_config {
  int in_channels, out_channels, patch;
  int heads, head_dim, hidden; /* hidden = heads * head_dim */
  int layers;
  int joint_dim;   /* width of the context (prompt) embeddings */
  int pooled_dim;  /* width of the pooled text embedding */
  int ff_dim;      /* FFN inner width (4 * hidden in every release) */
  int pos_max;     /* pos_embed_max_size */
  int qk_norm;     /* 1: RMS norm on q and k per head */
  float eps;       /* 1e-6 for every norm */
} sd_mmdit_config;

typedef struct sd_mmdit_attn {
  const sd_tensor *q_w, *q_b, *k_w, *k_b, *v_w, *v_b; /* (D, D), (D) */
  const sd_tensor *out_w, *out_b;                      /* (D, D), (D) */
  const sd_tensor *norm_q, *norm_k;                    /* (head_dim) or NULL */
} sd_mmdit_attn;

typedef struct sd_mmdit_block {
  int context_pre_only; /* the last block */
  int dual;             /* MMDiT-X: attn2 + 9-chunk adaLN */
  const sd_tensor *mod_w, *mod_b;   /* norm1.linear: (6D or 9D, D) */
  const sd_tensor *cmod_w, *cmod_b; /* norm1_context.linear: (6D or 2D, D) */
  sd_mmdit_attn x_attn;   /* to_q/k/v, to_out.0, norm_q/k */
  sd_mmdit_attn c_attn;   /* add_q/k/v_proj, to_add_out (NULL when pre-only),
                             norm_added_q/k */
  sd_mmdit_attn attn2;    /* when dual */
  const sd_tensor *ff1_w, *ff1_b, *ff2_w, *ff2_b;   /* (F, D), (F), (D, F), (D) */
  const sd_tensor *cff1_w, *cff1_b, *cff2_w, *cff2_b; /* NULL when pre-only */
} sd_mmdit_block;

typedef struct sd_mmdit {
  sd_mmdit_config cfg;
  const sd_tensor *patch_w, *patch_b;  /* (D, C, p, p), (D) */
  const sd_tensor *pos_embed;          /* (1, M*M, D) */
  const sd_tensor *t1_w, *t1_b, *t2_w, *t2_b; /* (D, 256), (D, D) */
  const sd_tensor *p1_w, *p1_b, *p2_w, *p2_b; /* (D, pooled), (D, D) */
  const sd_tensor *ctx_w, *ctx_b;      /* (D, joint), (D) */
  sd_mmdit_block *block;               /* [layers] */
  const sd_tensor *out_mod_w, *out_mod_b; /* norm_out.linear (2D, D) */
  const sd_tensor *proj_w, *proj_b;    /* (p*p*C_out, D) */
  int stream_weights; /* drop each block's weight pages after it ran */
} sd_mmdit;

/* Weight streaming (see io/residency.h): only one joint block's weights
 * are resident at a time; the page cache keeps the file. */
void sd_mmdit_set_weight_streaming(sd_mmdit *m, int on);
/* Bytes resident at a time when streaming a forward at latent H x W: the
 * largest of the joint blocks' weights, the embedders' (patch, the touched
 * rows of the position table, time, pooled, context) and the output
 * layer's. */
int64_t sd_mmdit_streaming_resident_bytes(const sd_mmdit *m, int H, int W);

/* Binds w (which must outlive *out). config: the transformer's config.json
 * (required). */
int sd_mmdit_load(sd_mmdit **out, const sd_weights *w, const cJSON *config,
                  sd_error *err);
void sd_mmdit_free(sd_mmdit *m);
const sd_mmdit_config *sd_mmdit_get_config(const sd_mmdit *m);

/* out (B, C_out, H, W) = transformer(x (B, C_in, H, W), timesteps (B),
 * context (B, L, joint_dim), pooled (B, pooled_dim)). H and W must be
 * multiples of the patch size with a patch grid within pos_embed_max_size.
 * kv_chunk: attention key chunk (0 = kernel's choice). */
int sd_mmdit_forward(const sd_mmdit *m, const float *x, int B, int H, int W,
                     const float *timesteps, const float *context, int L,
                     const float *pooled, float *out, int kv_chunk,
                     sd_error *err);

/* Bytes of activations one forward needs (for the memory planner). */
int64_t sd_mmdit_scratch_bytes(const sd_mmdit_config *cfg, int B, int H, int W,
                               int L);

#endif
