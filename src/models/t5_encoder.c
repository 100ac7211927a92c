#include "models/t5_encoder.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "io/json.h"
#include "io/residency.h"
#include "tensor/ops.h"

int sd_t5_relative_bucket(int relative_position, int num_buckets,
                          int max_distance) {
  /* Bidirectional: half the buckets for keys after the query. */
  int half = num_buckets / 2;
  int bucket = relative_position > 0 ? half : 0;
  int dist = relative_position < 0 ? -relative_position : relative_position;
  int max_exact = half / 2;
  if (dist < max_exact) return bucket + dist;
  /* The reference computes the log-spaced bucket in float32 and truncates;
   * doing the same keeps the bucket edges identical. */
  float scaled = logf((float)dist / (float)max_exact) /
                 (float)log((double)max_distance / (double)max_exact) *
                 (float)(half - max_exact);
  int large = max_exact + (int)scaled;
  if (large > half - 1) large = half - 1;
  return bucket + large;
}

const sd_t5_config *sd_t5_get_config(const sd_t5 *m) { return &m->cfg; }

static int bind_layer(const sd_weights *w, const sd_t5_config *c, int i,
                      sd_t5_layer *L, sd_error *err) {
  const int64_t inner = (int64_t)c->heads * c->d_kv;
  char name[256];
#define NEED(field, fmt, nd, ...)                                             \
  do {                                                                         \
    snprintf(name, sizeof name, "encoder.block.%d." fmt, i);                   \
    int rc_ = sd_weights_need(w, name, nd, (int64_t[]){__VA_ARGS__}, &L->field, \
                              err);                                            \
    if (rc_) return rc_;                                                       \
  } while (0)
  NEED(attn_norm, "layer.0.layer_norm.weight", 1, c->d_model);
  NEED(q, "layer.0.SelfAttention.q.weight", 2, inner, c->d_model);
  NEED(k, "layer.0.SelfAttention.k.weight", 2, inner, c->d_model);
  NEED(v, "layer.0.SelfAttention.v.weight", 2, inner, c->d_model);
  NEED(o, "layer.0.SelfAttention.o.weight", 2, c->d_model, inner);
  NEED(ff_norm, "layer.1.layer_norm.weight", 1, c->d_model);
  NEED(wi_0, "layer.1.DenseReluDense.wi_0.weight", 2, c->d_ff, c->d_model);
  NEED(wi_1, "layer.1.DenseReluDense.wi_1.weight", 2, c->d_ff, c->d_model);
  NEED(wo, "layer.1.DenseReluDense.wo.weight", 2, c->d_model, c->d_ff);
#undef NEED
  return SD_OK;
}

int sd_t5_load(sd_t5 **out, const sd_weights *w, const cJSON *config,
               sd_error *err) {
  *out = NULL;
  const sd_tensor *embed = sd_weights_get(w, "shared.weight");
  if (!embed) embed = sd_weights_get(w, "encoder.embed_tokens.weight");
  if (!embed || embed->ndim != 2)
    return sd_fail(err, SD_ERR_FORMAT,
                   "T5 encoder: shared.weight (vocab, d_model) missing");
  const sd_tensor *rel = sd_weights_get(
      w, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
  if (!rel || rel->ndim != 2)
    return sd_fail(err, SD_ERR_FORMAT,
                   "T5 encoder: encoder.block.0.layer.0.SelfAttention."
                   "relative_attention_bias.weight missing");

  sd_t5_config c = {0};
  c.vocab_size = (int)embed->shape[0];
  c.d_model = (int)embed->shape[1];
  c.num_buckets = (int)rel->shape[0];
  c.heads = (int)rel->shape[1];
  c.max_distance = 128;
  c.eps = 1e-6f;
  while (sd_weights_getf(w, "encoder.block.%d.layer.0.layer_norm.weight",
                         c.layers))
    c.layers++;
  const sd_tensor *q0 = sd_weights_get(w, "encoder.block.0.layer.0.SelfAttention.q.weight");
  const sd_tensor *wi = sd_weights_get(w, "encoder.block.0.layer.1.DenseReluDense.wi_0.weight");
  c.d_kv = q0 && c.heads > 0 ? (int)(q0->shape[0] / c.heads) : 0;
  c.d_ff = wi ? (int)wi->shape[0] : 0;
  if (config) {
    const char *proj = sd_json_str(config, "feed_forward_proj", "gated-gelu");
    if (strcmp(proj, "gated-gelu") != 0)
      return sd_fail(err, SD_ERR_UNSUPPORTED,
                     "T5 encoder: feed_forward_proj '%s' (only gated-gelu, "
                     "T5 v1.1)", proj);
    int d_model = sd_json_int(config, "d_model", c.d_model);
    int heads = sd_json_int(config, "num_heads", c.heads);
    int buckets = sd_json_int(config, "relative_attention_num_buckets", c.num_buckets);
    int vocab = sd_json_int(config, "vocab_size", c.vocab_size);
    if (d_model != c.d_model || heads != c.heads || buckets != c.num_buckets ||
        vocab != c.vocab_size)
      return sd_fail(err, SD_ERR_FORMAT,
                     "T5 encoder: config.json (d_model %d, heads %d, buckets "
                     "%d, vocab %d) disagrees with the weights (%d, %d, %d, %d)",
                     d_model, heads, buckets, vocab, c.d_model, c.heads,
                     c.num_buckets, c.vocab_size);
    int layers = sd_json_int(config, "num_layers", c.layers);
    if (layers > c.layers)
      return sd_fail(err, SD_ERR_FORMAT,
                     "T5 encoder: config has %d layers, weights only %d",
                     layers, c.layers);
    c.layers = layers;
    c.d_kv = sd_json_int(config, "d_kv", c.d_kv);
    c.d_ff = sd_json_int(config, "d_ff", c.d_ff);
    c.max_distance = sd_json_int(config, "relative_attention_max_distance", 128);
    c.eps = (float)sd_json_num(config, "layer_norm_epsilon", 1e-6);
  }
  if (c.layers < 1 || c.heads < 1 || c.d_kv < 1 || c.d_ff < 1 ||
      c.num_buckets < 4 || c.max_distance < c.num_buckets / 4 + 1)
    return sd_fail(err, SD_ERR_FORMAT,
                   "T5 encoder: implausible sizes (layers %d, heads %d, d_kv "
                   "%d, d_ff %d, buckets %d, max distance %d)",
                   c.layers, c.heads, c.d_kv, c.d_ff, c.num_buckets,
                   c.max_distance);

  sd_t5 *m = sd_calloc(1, sizeof *m);
  if (!m) return sd_fail(err, SD_ERR_OOM, "out of memory (T5 encoder)");
  m->layer = sd_calloc((size_t)c.layers, sizeof *m->layer);
  if (!m->layer) {
    sd_free(m);
    return sd_fail(err, SD_ERR_OOM, "out of memory (T5 encoder)");
  }
  m->cfg = c;
  m->embed = embed;
  m->rel_bias = rel;
  int rc = sd_weights_need(w, "encoder.final_layer_norm.weight", 1,
                           (int64_t[]){c.d_model}, &m->final_norm, err);
  for (int i = 0; !rc && i < c.layers; i++)
    rc = bind_layer(w, &c, i, &m->layer[i], err);
  if (rc) {
    sd_t5_free(m);
    return rc;
  }
  *out = m;
  return SD_OK;
}

/* The weights of one layer, in a fixed order; returns the count. */
static int layer_tensors(const sd_t5_layer *ly, const sd_tensor **t) {
  const sd_tensor *all[] = {ly->attn_norm, ly->q,    ly->k,    ly->v, ly->o,
                            ly->ff_norm,   ly->wi_0, ly->wi_1, ly->wo};
  int n = 0;
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    if (all[i]) t[n++] = all[i];
  return n;
}

int64_t sd_t5_largest_layer_bytes(const sd_t5 *m) {
  int64_t best = 0;
  const sd_tensor *t[9];
  for (int l = 0; l < m->cfg.layers; l++) {
    int64_t b = sd_tensors_nbytes(t, layer_tensors(&m->layer[l], t));
    if (b > best) best = b;
  }
  return best;
}

int64_t sd_t5_scratch_bytes(const sd_t5_config *c, int B, int L) {
  int64_t N = (int64_t)B * L, inner = (int64_t)c->heads * c->d_kv;
  return 4 * (N * c->d_model + 4 * N * inner + 2 * N * c->d_ff +
              (int64_t)c->heads * L * L + (int64_t)c->num_buckets * c->heads);
}

void sd_t5_free(sd_t5 *m) {
  if (!m) return;
  sd_free(m->layer);
  sd_free(m);
}

/* bias (heads, L, L) = table[bucket(k - q), head]; table (buckets, heads)
 * already converted to F32. The bias depends on k - q only, so each of the
 * 2L - 1 offsets is bucketed once. */
static int position_bias(const sd_t5_config *c, const float *table, int L,
                         float *bias) {
  const int H = c->heads;
  int *bucket = sd_alloc(sizeof(int) * (size_t)(2 * L - 1));
  if (!bucket) return SD_ERR_OOM;
  for (int r = -(L - 1); r <= L - 1; r++)
    bucket[r + L - 1] = sd_t5_relative_bucket(r, c->num_buckets, c->max_distance);
  for (int h = 0; h < H; h++)
    for (int qi = 0; qi < L; qi++) {
      float *row = bias + ((int64_t)h * L + qi) * L;
      const int *b = bucket + (L - 1 - qi); /* b[kj] = bucket of kj - qi */
      for (int kj = 0; kj < L; kj++) row[kj] = table[b[kj] * H + h];
    }
  sd_free(bucket);
  return SD_OK;
}

int sd_t5_encode(const sd_t5 *m, const int32_t *ids, int B, int L, float *out,
                 sd_error *err) {
  const sd_t5_config *c = &m->cfg;
  const int64_t D = c->d_model, inner = (int64_t)c->heads * c->d_kv;
  const int64_t N = (int64_t)B * L;
  if (B < 1 || L < 1) return sd_fail(err, SD_ERR_ARG, "T5 encode: empty batch");
  for (int64_t i = 0; i < N; i++)
    if (ids[i] < 0 || ids[i] >= c->vocab_size)
      return sd_fail(err, SD_ERR_ARG, "T5 encode: token id %d outside the "
                     "vocabulary (%d)", ids[i], c->vocab_size);

  float *h = sd_alloc((size_t)(N * D) * sizeof(float));
  float *q = sd_alloc((size_t)(N * inner) * sizeof(float));
  float *k = sd_alloc((size_t)(N * inner) * sizeof(float));
  float *v = sd_alloc((size_t)(N * inner) * sizeof(float));
  float *att = sd_alloc((size_t)(N * inner) * sizeof(float));
  float *g = sd_alloc((size_t)(N * c->d_ff) * sizeof(float));
  float *u = sd_alloc((size_t)(N * c->d_ff) * sizeof(float));
  float *bias = sd_alloc((size_t)((int64_t)c->heads * L * L) * sizeof(float));
  float *table = sd_alloc((size_t)c->num_buckets * c->heads * sizeof(float));
  int rc = SD_OK;
  if (!h || !q || !k || !v || !att || !g || !u || !bias || !table) {
    rc = sd_fail(err, SD_ERR_OOM, "out of memory (T5 encode, %d x %d tokens)", B, L);
    goto done;
  }
  float *x = out; /* the residual stream lives in the output buffer */
  for (int64_t i = 0; i < N; i++)
    sd_tensor_read_f32(m->embed, (int64_t)ids[i] * D, D, x + i * D);
  sd_tensor_read_f32(m->rel_bias, 0, (int64_t)c->num_buckets * c->heads, table);
  if (position_bias(c, table, L, bias)) {
    rc = sd_fail(err, SD_ERR_OOM, "out of memory (T5 position bias)");
    goto done;
  }

  sd_attn_args a = {.B = B, .Lq = L, .Lk = L, .heads = c->heads,
                    .head_dim = c->d_kv, .q_stride = inner, .kv_stride = inner,
                    .scale = 1.0f, .causal = 0, .bias = bias, .kv_chunk = 0};
  for (int li = 0; li < c->layers && !rc; li++) {
    const sd_t5_layer *ly = &m->layer[li];
    sd_rms_norm(h, x, N, D, ly->attn_norm, c->eps);
    if ((rc = sd_linear(q, h, N, D, ly->q, NULL)) ||
        (rc = sd_linear(k, h, N, D, ly->k, NULL)) ||
        (rc = sd_linear(v, h, N, D, ly->v, NULL)) ||
        (rc = sd_attention(att, q, k, v, &a)) ||
        (rc = sd_linear(h, att, N, inner, ly->o, NULL)))
      break;
    sd_add_inplace(x, h, N * D);

    sd_rms_norm(h, x, N, D, ly->ff_norm, c->eps);
    if ((rc = sd_linear(g, h, N, D, ly->wi_0, NULL)) ||
        (rc = sd_linear(u, h, N, D, ly->wi_1, NULL)))
      break;
    sd_gelu_tanh(g, N * c->d_ff);
    sd_mul_inplace(g, u, N * c->d_ff);
    if ((rc = sd_linear(h, g, N, c->d_ff, ly->wo, NULL))) break;
    sd_add_inplace(x, h, N * D);
    if (m->stream_weights) {
      const sd_tensor *t[9];
      int n = layer_tensors(ly, t);
      sd_tensors_release_pages(t, n);
    }
  }
  if (rc) {
    rc = sd_fail(err, rc, "T5 encode failed (%s)", sd_status_name(rc));
    goto done;
  }
  sd_rms_norm(x, x, N, D, m->final_norm, c->eps);
  if (m->stream_weights) {
    sd_tensor_release_pages(m->embed);
    sd_tensor_release_pages(m->rel_bias);
  }
done:
  sd_free(h);
  sd_free(q);
  sd_free(k);
  sd_free(v);
  sd_free(att);
  sd_free(g);
  sd_free(u);
  sd_free(bias);
  sd_free(table);
  return rc;
}
