#include "models/mmdit.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "io/residency.h"
#include "io/json.h"
#include "tensor/ops.h"

/* Width of the timestep sinusoid fed to the timestep MLP (diffusers'
 * Timesteps(num_channels=256)). */
#define MMDIT_TIME_CHANNELS 256

const sd_mmdit_config *sd_mmdit_get_config(const sd_mmdit *m) { return &m->cfg; }

/* Binds the tensor named by fmt, which must have the given shape. */
static int bind(const sd_weights *w, const sd_tensor **out, int ndim,
                const int64_t *shape, sd_error *err, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static int bind(const sd_weights *w, const sd_tensor **out, int ndim,
                const int64_t *shape, sd_error *err, const char *fmt, ...) {
  char name[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  return sd_weights_need(w, name, ndim, shape, out, err);
}

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})

/* Binds one attention of block i: q/k/v/out names differ between the image
 * stream (to_q, to_out.0, norm_q) and the context stream (add_q_proj,
 * to_add_out, norm_added_q). */
static int bind_attn(const sd_weights *w, const sd_mmdit_config *c, int i,
                     const char *attn, const char *q, const char *k,
                     const char *v, const char *o, const char *nq,
                     const char *nk, int need_out, sd_mmdit_attn *a,
                     sd_error *err) {
  const int64_t D = c->hidden;
  const char *p = "transformer_blocks";
  int rc;
  if ((rc = bind(w, &a->q_w, 2, SHAPE(D, D), err, "%s.%d.%s.%s.weight", p, i, attn, q)) ||
      (rc = bind(w, &a->q_b, 1, SHAPE(D), err, "%s.%d.%s.%s.bias", p, i, attn, q)) ||
      (rc = bind(w, &a->k_w, 2, SHAPE(D, D), err, "%s.%d.%s.%s.weight", p, i, attn, k)) ||
      (rc = bind(w, &a->k_b, 1, SHAPE(D), err, "%s.%d.%s.%s.bias", p, i, attn, k)) ||
      (rc = bind(w, &a->v_w, 2, SHAPE(D, D), err, "%s.%d.%s.%s.weight", p, i, attn, v)) ||
      (rc = bind(w, &a->v_b, 1, SHAPE(D), err, "%s.%d.%s.%s.bias", p, i, attn, v)))
    return rc;
  if (need_out &&
      ((rc = bind(w, &a->out_w, 2, SHAPE(D, D), err, "%s.%d.%s.%s.weight", p, i, attn, o)) ||
       (rc = bind(w, &a->out_b, 1, SHAPE(D), err, "%s.%d.%s.%s.bias", p, i, attn, o))))
    return rc;
  if (c->qk_norm &&
      ((rc = bind(w, &a->norm_q, 1, SHAPE(c->head_dim), err, "%s.%d.%s.%s.weight", p, i, attn, nq)) ||
       (rc = bind(w, &a->norm_k, 1, SHAPE(c->head_dim), err, "%s.%d.%s.%s.weight", p, i, attn, nk))))
    return rc;
  return SD_OK;
}

static int bind_block(const sd_weights *w, const sd_mmdit_config *c, int i,
                      int dual, sd_mmdit_block *b, sd_error *err) {
  const int64_t D = c->hidden, F = c->ff_dim;
  const char *p = "transformer_blocks";
  b->context_pre_only = i == c->layers - 1;
  b->dual = dual;
  int rc;
  int64_t chunks = dual ? 9 : 6, cchunks = b->context_pre_only ? 2 : 6;
  if ((rc = bind(w, &b->mod_w, 2, SHAPE(chunks * D, D), err, "%s.%d.norm1.linear.weight", p, i)) ||
      (rc = bind(w, &b->mod_b, 1, SHAPE(chunks * D), err, "%s.%d.norm1.linear.bias", p, i)) ||
      (rc = bind(w, &b->cmod_w, 2, SHAPE(cchunks * D, D), err, "%s.%d.norm1_context.linear.weight", p, i)) ||
      (rc = bind(w, &b->cmod_b, 1, SHAPE(cchunks * D), err, "%s.%d.norm1_context.linear.bias", p, i)))
    return rc;
  if ((rc = bind_attn(w, c, i, "attn", "to_q", "to_k", "to_v", "to_out.0",
                      "norm_q", "norm_k", 1, &b->x_attn, err)) ||
      (rc = bind_attn(w, c, i, "attn", "add_q_proj", "add_k_proj", "add_v_proj",
                      "to_add_out", "norm_added_q", "norm_added_k",
                      !b->context_pre_only, &b->c_attn, err)))
    return rc;
  if (dual && (rc = bind_attn(w, c, i, "attn2", "to_q", "to_k", "to_v", "to_out.0",
                              "norm_q", "norm_k", 1, &b->attn2, err)))
    return rc;
  if ((rc = bind(w, &b->ff1_w, 2, SHAPE(F, D), err, "%s.%d.ff.net.0.proj.weight", p, i)) ||
      (rc = bind(w, &b->ff1_b, 1, SHAPE(F), err, "%s.%d.ff.net.0.proj.bias", p, i)) ||
      (rc = bind(w, &b->ff2_w, 2, SHAPE(D, F), err, "%s.%d.ff.net.2.weight", p, i)) ||
      (rc = bind(w, &b->ff2_b, 1, SHAPE(D), err, "%s.%d.ff.net.2.bias", p, i)))
    return rc;
  if (!b->context_pre_only &&
      ((rc = bind(w, &b->cff1_w, 2, SHAPE(F, D), err, "%s.%d.ff_context.net.0.proj.weight", p, i)) ||
       (rc = bind(w, &b->cff1_b, 1, SHAPE(F), err, "%s.%d.ff_context.net.0.proj.bias", p, i)) ||
       (rc = bind(w, &b->cff2_w, 2, SHAPE(D, F), err, "%s.%d.ff_context.net.2.weight", p, i)) ||
       (rc = bind(w, &b->cff2_b, 1, SHAPE(D), err, "%s.%d.ff_context.net.2.bias", p, i))))
    return rc;
  return SD_OK;
}

static int read_config(const sd_weights *w, const cJSON *config,
                       sd_mmdit_config *c, sd_error *err) {
  memset(c, 0, sizeof *c);
  if (!config)
    return sd_fail(err, SD_ERR_ARG, "MMDiT: the transformer's config.json is required");
  c->in_channels = sd_json_int(config, "in_channels", 16);
  c->out_channels = sd_json_int(config, "out_channels", c->in_channels);
  c->patch = sd_json_int(config, "patch_size", 2);
  c->heads = sd_json_int(config, "num_attention_heads", 18);
  c->head_dim = sd_json_int(config, "attention_head_dim", 64);
  c->hidden = c->heads * c->head_dim;
  c->layers = sd_json_int(config, "num_layers", 18);
  c->joint_dim = sd_json_int(config, "joint_attention_dim", 4096);
  c->pooled_dim = sd_json_int(config, "pooled_projection_dim", 2048);
  c->pos_max = sd_json_int(config, "pos_embed_max_size", 96);
  c->eps = 1e-6f;
  const char *qk = sd_json_str(config, "qk_norm", NULL);
  if (qk && strcmp(qk, "rms_norm") != 0)
    return sd_fail(err, SD_ERR_UNSUPPORTED, "MMDiT: qk_norm '%s' (only rms_norm)", qk);
  c->qk_norm = qk != NULL;
  int cap = sd_json_int(config, "caption_projection_dim", c->hidden);
  if (cap != c->hidden)
    return sd_fail(err, SD_ERR_FORMAT,
                   "MMDiT: caption_projection_dim %d differs from heads x "
                   "head_dim %d", cap, c->hidden);
  if (c->in_channels < 1 || c->out_channels < 1 || c->patch < 1 ||
      c->heads < 1 || c->head_dim < 1 || c->layers < 1 || c->joint_dim < 1 ||
      c->pooled_dim < 1 || c->pos_max < 1)
    return sd_fail(err, SD_ERR_FORMAT, "MMDiT: config.json has an invalid size");
  const sd_tensor *ff = sd_weights_get(w, "transformer_blocks.0.ff.net.0.proj.weight");
  c->ff_dim = ff && ff->ndim == 2 ? (int)ff->shape[0] : 4 * c->hidden;
  return SD_OK;
}

int sd_mmdit_load(sd_mmdit **out, const sd_weights *w, const cJSON *config,
                  sd_error *err) {
  *out = NULL;
  sd_mmdit_config c;
  int rc = read_config(w, config, &c, err);
  if (rc) return rc;
  int dual[1024] = {0};
  if (c.layers > 1024)
    return sd_fail(err, SD_ERR_UNSUPPORTED, "MMDiT: %d layers", c.layers);
  const cJSON *dl = cJSON_GetObjectItemCaseSensitive(config, "dual_attention_layers");
  if (cJSON_IsArray(dl)) {
    const cJSON *e;
    cJSON_ArrayForEach(e, dl) {
      if (!cJSON_IsNumber(e) || e->valueint < 0 || e->valueint >= c.layers)
        return sd_fail(err, SD_ERR_FORMAT, "MMDiT: bad dual_attention_layers entry");
      dual[e->valueint] = 1;
    }
  }
  for (int i = 0; i < c.layers; i++)
    if (!dual[i] && sd_weights_getf(w, "transformer_blocks.%d.attn2.to_q.weight", i))
      return sd_fail(err, SD_ERR_FORMAT,
                     "MMDiT: block %d has attn2 weights but is not in the "
                     "config's dual_attention_layers", i);

  sd_mmdit *m = sd_calloc(1, sizeof *m);
  if (!m) return sd_fail(err, SD_ERR_OOM, "out of memory (MMDiT)");
  m->block = sd_calloc((size_t)c.layers, sizeof *m->block);
  if (!m->block) {
    sd_free(m);
    return sd_fail(err, SD_ERR_OOM, "out of memory (MMDiT)");
  }
  m->cfg = c;
  const int64_t D = c.hidden, P = c.patch;
  const int64_t M2 = (int64_t)c.pos_max * c.pos_max;
  const int64_t out_dim = P * P * c.out_channels;
  if ((rc = bind(w, &m->patch_w, 4, SHAPE(D, c.in_channels, P, P), err, "pos_embed.proj.weight")) ||
      (rc = bind(w, &m->patch_b, 1, SHAPE(D), err, "pos_embed.proj.bias")) ||
      (rc = bind(w, &m->pos_embed, 3, SHAPE(1, M2, D), err, "pos_embed.pos_embed")) ||
      (rc = bind(w, &m->t1_w, 2, SHAPE(D, MMDIT_TIME_CHANNELS), err, "time_text_embed.timestep_embedder.linear_1.weight")) ||
      (rc = bind(w, &m->t1_b, 1, SHAPE(D), err, "time_text_embed.timestep_embedder.linear_1.bias")) ||
      (rc = bind(w, &m->t2_w, 2, SHAPE(D, D), err, "time_text_embed.timestep_embedder.linear_2.weight")) ||
      (rc = bind(w, &m->t2_b, 1, SHAPE(D), err, "time_text_embed.timestep_embedder.linear_2.bias")) ||
      (rc = bind(w, &m->p1_w, 2, SHAPE(D, c.pooled_dim), err, "time_text_embed.text_embedder.linear_1.weight")) ||
      (rc = bind(w, &m->p1_b, 1, SHAPE(D), err, "time_text_embed.text_embedder.linear_1.bias")) ||
      (rc = bind(w, &m->p2_w, 2, SHAPE(D, D), err, "time_text_embed.text_embedder.linear_2.weight")) ||
      (rc = bind(w, &m->p2_b, 1, SHAPE(D), err, "time_text_embed.text_embedder.linear_2.bias")) ||
      (rc = bind(w, &m->ctx_w, 2, SHAPE(D, c.joint_dim), err, "context_embedder.weight")) ||
      (rc = bind(w, &m->ctx_b, 1, SHAPE(D), err, "context_embedder.bias")) ||
      (rc = bind(w, &m->out_mod_w, 2, SHAPE(2 * D, D), err, "norm_out.linear.weight")) ||
      (rc = bind(w, &m->out_mod_b, 1, SHAPE(2 * D), err, "norm_out.linear.bias")) ||
      (rc = bind(w, &m->proj_w, 2, SHAPE(out_dim, D), err, "proj_out.weight")) ||
      (rc = bind(w, &m->proj_b, 1, SHAPE(out_dim), err, "proj_out.bias")))
    goto fail;
  for (int i = 0; i < c.layers; i++)
    if ((rc = bind_block(w, &c, i, dual[i], &m->block[i], err))) goto fail;
  if (sd_weights_getf(w, "transformer_blocks.%d.norm1.linear.weight", c.layers)) {
    rc = sd_fail(err, SD_ERR_FORMAT,
                 "MMDiT: the weights hold more blocks than num_layers %d", c.layers);
    goto fail;
  }
  *out = m;
  return SD_OK;
fail:
  sd_mmdit_free(m);
  return rc;
}

void sd_mmdit_free(sd_mmdit *m) {
  if (!m) return;
  sd_free(m->block);
  sd_free(m);
}

/* ---- forward ---- */

typedef struct mmdit_scratch {
  float *x, *c;          /* residual streams (B, N, D), (B, L, D) */
  float *xn, *cn, *xn2;  /* modulated normed inputs */
  float *q, *k, *v, *att; /* (B, N + L, D) */
  float *ff;             /* (B * max(N, L), F) */
  float *tmp;            /* (B * max(N, L), D) */
  float *temb, *semb;    /* (B, D): conditioning and silu(conditioning) */
  float *mod, *cmod;     /* (B, 9D), (B, 6D) */
  float *tproj;          /* (B, 256) */
} mmdit_scratch;

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

int64_t sd_mmdit_scratch_bytes(const sd_mmdit_config *c, int B, int H, int W,
                               int L) {
  const int64_t D = c->hidden;
  const int64_t N = (int64_t)(H / c->patch) * (W / c->patch);
  const int64_t T = N + L, R = max64(N, L);
  int64_t floats = B * (N * D * 3 + L * D * 2) + 4 * B * T * D +
                   B * R * c->ff_dim + B * R * D + 2 * B * D + 15 * B * D +
                   B * MMDIT_TIME_CHANNELS;
  /* the patch conv's buffer, reused for the output projection: the larger
   * of the image-sized patch input/output and the (B, N, D) tokens */
  int64_t patch_out = (int64_t)B * max64(c->in_channels, c->out_channels) * H * W;
  patch_out = max64(patch_out, B * N * D);
  return (floats + patch_out) * (int64_t)sizeof(float);
}

/* y = layer_norm(x) * (1 + scale) + shift per batch row; the norms of every
 * AdaLN in the model have no affine parameters and eps 1e-6. */
static void norm_modulate(float *y, const float *x, int B, int64_t N, int64_t D,
                          const float *mod, int64_t mod_stride, int shift_i,
                          int scale_i, float eps) {
  sd_layer_norm(y, x, (int64_t)B * N, D, NULL, NULL, eps);
  for (int b = 0; b < B; b++) {
    const float *shift = mod + b * mod_stride + shift_i * D;
    const float *scale = mod + b * mod_stride + scale_i * D;
    float *yb = y + (int64_t)b * N * D;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
      float *row = yb + n * D;
      for (int64_t d = 0; d < D; d++) row[d] = row[d] * (1.0f + scale[d]) + shift[d];
    }
  }
}

/* x += gate * y per batch row. */
static void gated_add(float *x, const float *y, int B, int64_t N, int64_t D,
                      const float *mod, int64_t mod_stride, int gate_i) {
  for (int b = 0; b < B; b++) {
    const float *gate = mod + b * mod_stride + gate_i * D;
    float *xb = x + (int64_t)b * N * D;
    const float *yb = y + (int64_t)b * N * D;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++)
      for (int64_t d = 0; d < D; d++) xb[n * D + d] += gate[d] * yb[n * D + d];
  }
}

/* q/k/v of `rows` tokens per batch item into the joint (B, T, D) buffers at
 * token offset `at`, RMS-normalized per head when configured. */
static int project_qkv(const sd_mmdit_attn *a, const sd_mmdit_config *c,
                       const float *in, int B, int64_t rows, int64_t T,
                       int64_t at, mmdit_scratch *s) {
  const int64_t D = c->hidden;
  int rc;
  for (int b = 0; b < B; b++) {
    const float *src = in + (int64_t)b * rows * D;
    int64_t off = ((int64_t)b * T + at) * D;
    if ((rc = sd_linear(s->q + off, src, rows, D, a->q_w, a->q_b)) ||
        (rc = sd_linear(s->k + off, src, rows, D, a->k_w, a->k_b)) ||
        (rc = sd_linear(s->v + off, src, rows, D, a->v_w, a->v_b)))
      return rc;
    if (a->norm_q) {
      sd_rms_norm(s->q + off, s->q + off, rows * c->heads, c->head_dim, a->norm_q, c->eps);
      sd_rms_norm(s->k + off, s->k + off, rows * c->heads, c->head_dim, a->norm_k, c->eps);
    }
  }
  return SD_OK;
}

/* dst (B, rows, D) = out_proj(att rows [at, at + rows) of each batch item). */
static int project_out(const sd_mmdit_attn *a, const sd_mmdit_config *c,
                       const float *att, int B, int64_t rows, int64_t T,
                       int64_t at, float *dst) {
  const int64_t D = c->hidden;
  for (int b = 0; b < B; b++) {
    int rc = sd_linear(dst + (int64_t)b * rows * D, att + ((int64_t)b * T + at) * D,
                       rows, D, a->out_w, a->out_b);
    if (rc) return rc;
  }
  return SD_OK;
}

static int feed_forward(const sd_tensor *w1, const sd_tensor *b1,
                        const sd_tensor *w2, const sd_tensor *b2,
                        const float *in, int64_t rows, int64_t D, int64_t F,
                        float *hidden, float *out) {
  int rc = sd_linear(hidden, in, rows, D, w1, b1);
  if (rc) return rc;
  sd_gelu_tanh(hidden, rows * F);
  return sd_linear(out, hidden, rows, F, w2, b2);
}

static int run_block(const sd_mmdit *m, const sd_mmdit_block *blk, int B,
                     int64_t N, int64_t L, int kv_chunk, mmdit_scratch *s) {
  const sd_mmdit_config *c = &m->cfg;
  const int64_t D = c->hidden, F = c->ff_dim, T = N + L;
  const int64_t ms = (blk->dual ? 9 : 6) * D, cs = (blk->context_pre_only ? 2 : 6) * D;
  int rc;
  if ((rc = sd_linear(s->mod, s->semb, B, D, blk->mod_w, blk->mod_b)) ||
      (rc = sd_linear(s->cmod, s->semb, B, D, blk->cmod_w, blk->cmod_b)))
    return rc;
  /* AdaLayerNormZero chunks: shift, scale, gate (attention), shift, scale,
   * gate (FFN) [, shift, scale, gate (attn2)]. */
  norm_modulate(s->xn, s->x, B, N, D, s->mod, ms, 0, 1, c->eps);
  if (blk->dual) norm_modulate(s->xn2, s->x, B, N, D, s->mod, ms, 6, 7, c->eps);
  /* The pre-only context AdaLN is AdaLayerNormContinuous: (scale, shift). */
  if (blk->context_pre_only)
    norm_modulate(s->cn, s->c, B, L, D, s->cmod, cs, 1, 0, c->eps);
  else
    norm_modulate(s->cn, s->c, B, L, D, s->cmod, cs, 0, 1, c->eps);

  if ((rc = project_qkv(&blk->x_attn, c, s->xn, B, N, T, 0, s)) ||
      (rc = project_qkv(&blk->c_attn, c, s->cn, B, L, T, N, s)))
    return rc;
  sd_attn_args a = {.B = B, .Lq = (int)T, .Lk = (int)T, .heads = c->heads,
                    .head_dim = c->head_dim, .q_stride = D, .kv_stride = D,
                    .scale = 1.0f / sqrtf((float)c->head_dim), .causal = 0,
                    .bias = NULL, .kv_chunk = kv_chunk};
  if ((rc = sd_attention(s->att, s->q, s->k, s->v, &a))) return rc;
  if ((rc = project_out(&blk->x_attn, c, s->att, B, N, T, 0, s->tmp))) return rc;
  gated_add(s->x, s->tmp, B, N, D, s->mod, ms, 2);
  if (!blk->context_pre_only) {
    if ((rc = project_out(&blk->c_attn, c, s->att, B, L, T, N, s->tmp))) return rc;
    gated_add(s->c, s->tmp, B, L, D, s->cmod, cs, 2);
  }

  if (blk->dual) {
    /* MMDiT-X: image-only self-attention on the second modulation of the
     * block's input, added after the joint attention. */
    if ((rc = project_qkv(&blk->attn2, c, s->xn2, B, N, N, 0, s))) return rc;
    a.Lq = a.Lk = (int)N;
    if ((rc = sd_attention(s->att, s->q, s->k, s->v, &a)) ||
        (rc = project_out(&blk->attn2, c, s->att, B, N, N, 0, s->tmp)))
      return rc;
    gated_add(s->x, s->tmp, B, N, D, s->mod, ms, 8);
  }

  norm_modulate(s->xn, s->x, B, N, D, s->mod, ms, 3, 4, c->eps);
  if ((rc = feed_forward(blk->ff1_w, blk->ff1_b, blk->ff2_w, blk->ff2_b, s->xn,
                         B * N, D, F, s->ff, s->tmp)))
    return rc;
  gated_add(s->x, s->tmp, B, N, D, s->mod, ms, 5);

  if (!blk->context_pre_only) {
    norm_modulate(s->cn, s->c, B, L, D, s->cmod, cs, 3, 4, c->eps);
    if ((rc = feed_forward(blk->cff1_w, blk->cff1_b, blk->cff2_w, blk->cff2_b,
                           s->cn, B * L, D, F, s->ff, s->tmp)))
      return rc;
    gated_add(s->c, s->tmp, B, L, D, s->cmod, cs, 5);
  }
  return SD_OK;
}

/* x (B, N, D) = patch conv of the latent + center crop of the stored
 * pos-embed grid (diffusers' PatchEmbed.cropped_pos_embed). */
static int embed_patches(const sd_mmdit *m, const float *latent, int B, int H,
                         int W, float *conv_out, float *x, float *row) {
  const sd_mmdit_config *c = &m->cfg;
  const int gh = H / c->patch, gw = W / c->patch;
  const int64_t D = c->hidden, N = (int64_t)gh * gw;
  int rc = sd_conv2d(conv_out, latent, B, c->in_channels, H, W, m->patch_w,
                     m->patch_b, c->patch, 0);
  if (rc) return rc;
  sd_nchw_to_nhwc(x, conv_out, B, (int)D, N);
  const int top = (c->pos_max - gh) / 2, left = (c->pos_max - gw) / 2;
  for (int i = 0; i < gh; i++) {
    /* One grid row of the table is contiguous: gw entries of D. */
    sd_tensor_read_f32(m->pos_embed, ((int64_t)(top + i) * c->pos_max + left) * D,
                       (int64_t)gw * D, row);
    for (int b = 0; b < B; b++)
      sd_add_inplace(x + ((int64_t)b * N + (int64_t)i * gw) * D, row, (int64_t)gw * D);
  }
  return SD_OK;
}

/* temb (B, D) = timestep MLP(sinusoid(t)) + pooled MLP(pooled). */
static int embed_conditioning(const sd_mmdit *m, const float *t,
                              const float *pooled, int B, mmdit_scratch *s) {
  const sd_mmdit_config *c = &m->cfg;
  const int64_t D = c->hidden;
  int rc;
  sd_timestep_embedding(s->tproj, t, B, MMDIT_TIME_CHANNELS, 1, 0.0f, 1.0f, 10000.0f);
  if ((rc = sd_linear(s->tmp, s->tproj, B, MMDIT_TIME_CHANNELS, m->t1_w, m->t1_b)))
    return rc;
  sd_silu(s->tmp, B * D);
  if ((rc = sd_linear(s->temb, s->tmp, B, D, m->t2_w, m->t2_b))) return rc;
  if ((rc = sd_linear(s->tmp, pooled, B, c->pooled_dim, m->p1_w, m->p1_b))) return rc;
  sd_silu(s->tmp, B * D);
  if ((rc = sd_linear(s->semb, s->tmp, B, D, m->p2_w, m->p2_b))) return rc;
  sd_add_inplace(s->temb, s->semb, B * D);
  memcpy(s->semb, s->temb, (size_t)(B * D) * sizeof(float));
  sd_silu(s->semb, B * D);
  return SD_OK;
}

/* Every weight of a joint block, for residency bookkeeping. */
static int block_tensors(const sd_mmdit_block *b, const sd_tensor **list) {
  const sd_mmdit_attn *a[3] = {&b->x_attn, &b->c_attn, &b->attn2};
  int n = 0;
  list[n++] = b->mod_w, list[n++] = b->mod_b, list[n++] = b->cmod_w, list[n++] = b->cmod_b;
  for (int i = 0; i < 3; i++) {
    list[n++] = a[i]->q_w, list[n++] = a[i]->q_b, list[n++] = a[i]->k_w;
    list[n++] = a[i]->k_b, list[n++] = a[i]->v_w, list[n++] = a[i]->v_b;
    list[n++] = a[i]->out_w, list[n++] = a[i]->out_b, list[n++] = a[i]->norm_q;
    list[n++] = a[i]->norm_k;
  }
  list[n++] = b->ff1_w, list[n++] = b->ff1_b, list[n++] = b->ff2_w, list[n++] = b->ff2_b;
  list[n++] = b->cff1_w, list[n++] = b->cff1_b, list[n++] = b->cff2_w, list[n++] = b->cff2_b;
  return n;
}

void sd_mmdit_set_weight_streaming(sd_mmdit *m, int on) { m->stream_weights = on; }

/* The weights used before the blocks (embedders; the position table is
 * first) and after them (output layer): streamed like a block each. */
static int head_tensors(const sd_mmdit *m, const sd_tensor **t) {
  const sd_tensor *all[] = {m->pos_embed, m->patch_w, m->patch_b, m->t1_w,  m->t1_b,
                            m->t2_w,      m->t2_b,    m->p1_w,    m->p1_b,  m->p2_w,
                            m->p2_b,      m->ctx_w,   m->ctx_b};
  int n = (int)(sizeof all / sizeof all[0]);
  for (int i = 0; i < n; i++) t[i] = all[i];
  return n;
}

static int tail_tensors(const sd_mmdit *m, const sd_tensor **t) {
  const sd_tensor *all[] = {m->out_mod_w, m->out_mod_b, m->proj_w, m->proj_b};
  int n = (int)(sizeof all / sizeof all[0]);
  for (int i = 0; i < n; i++) t[i] = all[i];
  return n;
}

/* Bytes of pos_embed a forward at latent H x W touches: the cropped grid's
 * rows are gh separate runs of gw * D values, each rounded out to whole
 * pages (the table itself is pos_max^2 * D, far larger for 3.5 Medium). */
static int64_t pos_embed_touched_bytes(const sd_mmdit *m, int H, int W) {
  const sd_mmdit_config *c = &m->cfg;
  int64_t esize = (int64_t)sd_dtype_size(m->pos_embed->dtype), page = 4096;
  int64_t gh = H / c->patch, gw = W / c->patch;
  if (gh > c->pos_max) gh = c->pos_max;
  if (gw > c->pos_max) gw = c->pos_max;
  int64_t run = gw * c->hidden * esize;
  int64_t total = gh * ((run + page - 1) / page + 1) * page;
  int64_t whole = (int64_t)sd_tensor_nbytes(m->pos_embed);
  return total < whole ? total : whole;
}

int64_t sd_mmdit_streaming_resident_bytes(const sd_mmdit *m, int H, int W) {
  /* The embedders and the output layer are resident one group at a time
   * too (released after use when streaming): count the largest group. */
  const sd_tensor *list[48];
  int n = head_tensors(m, list); /* list[0] is the position table */
  int64_t head_bytes = pos_embed_touched_bytes(m, H, W) + sd_tensors_nbytes(list + 1, n - 1);
  int64_t tail_bytes = sd_tensors_nbytes(list, tail_tensors(m, list));
  int64_t best = head_bytes > tail_bytes ? head_bytes : tail_bytes;
  for (int i = 0; i < m->cfg.layers; i++) {
    int64_t b = sd_tensors_nbytes(list, block_tensors(&m->block[i], list));
    if (b > best) best = b;
  }
  return best;
}

int sd_mmdit_forward(const sd_mmdit *m, const float *x, int B, int H, int W,
                     const float *timesteps, const float *context, int L,
                     const float *pooled, float *out, int kv_chunk,
                     sd_error *err) {
  const sd_mmdit_config *c = &m->cfg;
  const int p = c->patch;
  if (B < 1 || L < 1 || H < p || W < p || H % p || W % p)
    return sd_fail(err, SD_ERR_ARG,
                   "MMDiT: latent %dx%d must be a positive multiple of the "
                   "patch size %d (batch %d, %d context tokens)", H, W, p, B, L);
  const int gh = H / p, gw = W / p;
  if (gh > c->pos_max || gw > c->pos_max)
    return sd_fail(err, SD_ERR_ARG,
                   "MMDiT: patch grid %dx%d exceeds pos_embed_max_size %d "
                   "(latent %dx%d too large for this model)",
                   gh, gw, c->pos_max, H, W);
  const int64_t D = c->hidden, N = (int64_t)gh * gw, T = N + L;
  const int64_t R = max64(N, L);
  const int64_t patch_floats = (int64_t)B * max64(c->in_channels, c->out_channels) * H * W;

  mmdit_scratch s = {0};
  float *conv = NULL;
  int rc = SD_OK;
#define ALLOC(ptr, count) \
  if (!((ptr) = sd_alloc((size_t)(count) * sizeof(float)))) goto oom
  ALLOC(s.x, B * N * D);
  ALLOC(s.c, (int64_t)B * L * D);
  ALLOC(s.xn, B * N * D);
  ALLOC(s.xn2, B * N * D);
  ALLOC(s.cn, (int64_t)B * L * D);
  ALLOC(s.q, B * T * D);
  ALLOC(s.k, B * T * D);
  ALLOC(s.v, B * T * D);
  ALLOC(s.att, B * T * D);
  ALLOC(s.ff, B * R * c->ff_dim);
  ALLOC(s.tmp, B * max64(R * D, MMDIT_TIME_CHANNELS));
  ALLOC(s.temb, B * D);
  ALLOC(s.semb, B * D);
  ALLOC(s.mod, B * 9 * D);
  ALLOC(s.cmod, B * 6 * D);
  ALLOC(s.tproj, B * MMDIT_TIME_CHANNELS);
  ALLOC(conv, patch_floats > B * N * D ? patch_floats : B * N * D);
#undef ALLOC

  if ((rc = embed_patches(m, x, B, H, W, conv, s.x, s.tmp)) ||
      (rc = embed_conditioning(m, timesteps, pooled, B, &s)) ||
      (rc = sd_linear(s.c, context, (int64_t)B * L, c->joint_dim, m->ctx_w, m->ctx_b)))
    goto done;
  /* Streaming: the embedders are done for this step; only a block's
   * weights (or the output layer's, later) are resident at a time. */
  const sd_tensor *used[48];
  if (m->stream_weights) sd_tensors_release_pages(used, head_tensors(m, used));
  for (int i = 0; i < c->layers; i++) {
    if ((rc = run_block(m, &m->block[i], B, N, L, kv_chunk, &s))) goto done;
    if (m->stream_weights) sd_tensors_release_pages(used, block_tensors(&m->block[i], used));
  }

  /* norm_out: AdaLayerNormContinuous, (scale, shift). */
  if ((rc = sd_linear(s.mod, s.semb, B, D, m->out_mod_w, m->out_mod_b))) goto done;
  norm_modulate(s.xn, s.x, B, N, D, s.mod, 2 * D, 1, 0, c->eps);
  const int64_t od = (int64_t)p * p * c->out_channels;
  float *y = conv; /* (B, N, p*p*C): fits, since N*p*p = H*W */
  if ((rc = sd_linear(y, s.xn, B * N, D, m->proj_w, m->proj_b))) goto done;
  if (m->stream_weights) sd_tensors_release_pages(used, tail_tensors(m, used));
  /* Unpatchify: token (i, j) channel (pi*p + pj)*C + ch -> pixel
   * (ch, i*p + pi, j*p + pj). */
  const int C = c->out_channels;
  for (int b = 0; b < B; b++)
#pragma omp parallel for schedule(static)
    for (int i = 0; i < gh; i++)
      for (int j = 0; j < gw; j++) {
        const float *tok = y + ((int64_t)b * N + (int64_t)i * gw + j) * od;
        for (int pi = 0; pi < p; pi++)
          for (int pj = 0; pj < p; pj++)
            for (int ch = 0; ch < C; ch++)
              out[(((int64_t)b * C + ch) * H + (int64_t)i * p + pi) * W + (int64_t)j * p + pj] =
                  tok[(pi * p + pj) * C + ch];
      }
  goto done;
oom:
  rc = sd_fail(err, SD_ERR_OOM, "out of memory (MMDiT forward, batch %d, %dx%d, "
               "%d context tokens)", B, H, W, L);
done:
  if (rc && !(err && err->code))
    sd_fail(err, rc, "MMDiT forward failed (%s)", sd_status_name(rc));
  sd_free(s.x);
  sd_free(s.c);
  sd_free(s.xn);
  sd_free(s.xn2);
  sd_free(s.cn);
  sd_free(s.q);
  sd_free(s.k);
  sd_free(s.v);
  sd_free(s.att);
  sd_free(s.ff);
  sd_free(s.tmp);
  sd_free(s.temb);
  sd_free(s.semb);
  sd_free(s.mod);
  sd_free(s.cmod);
  sd_free(s.tproj);
  sd_free(conv);
  return rc;
}
