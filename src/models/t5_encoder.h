/* T5 v1.1 encoder (transformers' T5EncoderModel), the third text encoder of
 * SD3 / SD3.5.
 *
 * Weights use the transformers names ("shared.weight",
 * "encoder.block.N.layer.0.SelfAttention.q.weight", ...,
 * "encoder.final_layer_norm.weight"); "encoder.embed_tokens.weight" is
 * accepted when "shared.weight" is absent (the two are tied). Sizes come from
 * config.json and are checked against the tensor shapes; without a config
 * they are read from the shapes (heads from the relative bias table).
 *
 * Matches the reference in fp32: no attention mask (SD3 encodes the padding
 * too), no 1/sqrt(d) score scaling, the layer-0 relative position bias shared
 * by every layer, RMS norms without mean subtraction, gated gelu_new FFN.
 *
 * Usage:
 *   sd_t5 *t5;
 *   if (sd_t5_load(&t5, weights, config, &err)) ...;
 *   float *h = sd_alloc(B * L * sd_t5_get_config(t5)->d_model * 4);
 *   sd_t5_encode(t5, ids, B, L, h, &err);
 *   sd_t5_free(t5);   // weights stay owned by the caller */
#ifndef SDGEN_MODELS_T5_ENCODER_H
#define SDGEN_MODELS_T5_ENCODER_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "base/status.h"
#include "io/safetensors.h"

typedef struct sd_t5_config {
  int vocab_size, d_model, d_kv, d_ff, heads, layers;
  int num_buckets, max_distance;
  float eps;
} sd_t5_config;

typedef struct sd_t5_layer {
  const sd_tensor *attn_norm;        /* (d_model) */
  const sd_tensor *q, *k, *v;        /* (heads*d_kv, d_model) */
  const sd_tensor *o;                /* (d_model, heads*d_kv) */
  const sd_tensor *ff_norm;          /* (d_model) */
  const sd_tensor *wi_0, *wi_1;      /* (d_ff, d_model): gate, linear */
  const sd_tensor *wo;               /* (d_model, d_ff) */
} sd_t5_layer;

typedef struct sd_t5 {
  sd_t5_config cfg;
  const sd_tensor *embed;     /* (vocab, d_model) */
  const sd_tensor *rel_bias;  /* (num_buckets, heads), layer 0's */
  const sd_tensor *final_norm; /* (d_model) */
  sd_t5_layer *layer;         /* [layers] */
  int stream_weights;         /* drop each layer's weight pages after it ran */
} sd_t5;

/* Binds the weights of w (which must outlive *out). config may be NULL. */
int sd_t5_load(sd_t5 **out, const sd_weights *w, const cJSON *config,
               sd_error *err);
void sd_t5_free(sd_t5 *m);
const sd_t5_config *sd_t5_get_config(const sd_t5 *m);

/* out (B, L, d_model) = encoder last_hidden_state for ids (B, L). Ids outside
 * the vocabulary are an SD_ERR_ARG. */
int sd_t5_encode(const sd_t5 *m, const int32_t *ids, int B, int L, float *out,
                 sd_error *err);

/* Bytes of the largest layer's weights: what stays resident at a time when
 * stream_weights is set (the embedding rows read are a few pages). */
int64_t sd_t5_largest_layer_bytes(const sd_t5 *m);

/* Bytes sd_t5_encode allocates for B x L tokens (the output excluded). */
int64_t sd_t5_scratch_bytes(const sd_t5_config *c, int B, int L);

/* Relative-position bucket of key position minus query position, as T5's
 * bidirectional _relative_position_bucket (exposed for unit tests). */
int sd_t5_relative_bucket(int relative_position, int num_buckets,
                          int max_distance);

#endif
