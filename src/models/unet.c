#include "models/unet.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "io/json.h"
#include "models/bind.h"
#include "io/residency.h"
#include "tensor/ops.h"

/* ---- weights, bound once ---- */

typedef sd_resnet_weights resnet;

typedef struct attn {
  const sd_tensor *q, *k, *v;       /* (C, C) / (C, ctx) no bias */
  const sd_tensor *out_w, *out_b;   /* (C, C), (C) */
} attn;

typedef struct tblock {
  const sd_tensor *norm1_w, *norm1_b, *norm2_w, *norm2_b, *norm3_w, *norm3_b;
  attn self, cross;
  const sd_tensor *ff1_w, *ff1_b; /* GEGLU (2*I, C) */
  const sd_tensor *ff2_w, *ff2_b; /* (C, I) */
  int inner;
} tblock;

typedef struct transformer {
  int channels, heads, depth;
  const sd_tensor *norm_w, *norm_b;
  /* (C, C) linear or (C, C, 1, 1) conv, applied as a linear; pointers into
   * the weight set, so a LoRA merged there after loading is seen */
  const sd_tensor *proj_in, *proj_out;
  const sd_tensor *proj_in_b, *proj_out_b;
  tblock *blocks;
} transformer;

typedef struct level {
  int nres;
  resnet res[SD_UNET_MAX_LAYERS];
  transformer *attn[SD_UNET_MAX_LAYERS]; /* NULL where the block has none */
  const sd_tensor *sample_w, *sample_b;  /* down/up-sampler conv or NULL */
} level;

struct sd_unet {
  sd_unet_config cfg;
  const sd_tensor *conv_in_w, *conv_in_b;
  const sd_tensor *time1_w, *time1_b, *time2_w, *time2_b;
  const sd_tensor *add1_w, *add1_b, *add2_w, *add2_b;
  const sd_tensor *cond_proj_w; /* (C0, time_cond_proj_dim), LCM-distilled UNets; or NULL */
  level down[SD_UNET_MAX_LEVELS], up[SD_UNET_MAX_LEVELS];
  resnet mid_res[2];
  transformer *mid_attn;
  const sd_tensor *norm_out_w, *norm_out_b, *conv_out_w, *conv_out_b;
  int stream_weights;
};




static void bind_attn(sd_binder *b, attn *a, const char *p) {
  a->q = sd_bind(b, 2, "%s.to_q.weight", p);
  a->k = sd_bind(b, 2, "%s.to_k.weight", p);
  a->v = sd_bind(b, 2, "%s.to_v.weight", p);
  a->out_w = sd_bind(b, 2, "%s.to_out.0.weight", p);
  a->out_b = sd_bind(b, 1, "%s.to_out.0.bias", p);
}

static transformer *bind_transformer(sd_binder *b, const char *p, int heads,
                                     int head_dim_fixed) {
  if (b->rc) return NULL;
  transformer *t = sd_calloc(1, sizeof *t);
  if (!t) {
    b->rc = sd_fail(b->err, SD_ERR_OOM, "out of memory");
    return NULL;
  }
  while (sd_weights_getf(b->w, "%s.transformer_blocks.%d.norm1.weight", p, t->depth))
    t->depth++;
  t->blocks = sd_calloc((size_t)(t->depth ? t->depth : 1), sizeof(tblock));
  if (!t->blocks) {
    sd_free(t);
    b->rc = sd_fail(b->err, SD_ERR_OOM, "out of memory");
    return NULL;
  }
  t->norm_w = sd_bind(b, 1, "%s.norm.weight", p);
  t->norm_b = sd_bind(b, 1, "%s.norm.bias", p);
  const sd_tensor *pi = sd_bind(b, 0, "%s.proj_in.weight", p);
  const sd_tensor *po = sd_bind(b, 0, "%s.proj_out.weight", p);
  t->proj_in_b = sd_bind(b, 1, "%s.proj_in.bias", p);
  t->proj_out_b = sd_bind(b, 1, "%s.proj_out.bias", p);
  if (b->rc) return t;
  t->proj_in = pi;
  t->proj_out = po;
  t->channels = (int)pi->shape[0];
  if (sd_tensor_numel(pi) != (int64_t)t->channels * t->channels ||
      sd_tensor_numel(po) != (int64_t)t->channels * t->channels || po->shape[0] != t->channels ||
      (pi->ndim != 2 && (pi->ndim != 4 || pi->shape[2] != 1 || pi->shape[3] != 1)) ||
      (po->ndim != 2 && (po->ndim != 4 || po->shape[2] != 1 || po->shape[3] != 1))) {
    b->rc = sd_fail(b->err, SD_ERR_FORMAT, "UNet: '%s' projections are not square", p);
    return t;
  }
  t->heads = head_dim_fixed > 0 ? t->channels / head_dim_fixed : heads;
  if (t->heads < 1 || t->channels % t->heads) {
    b->rc = sd_fail(b->err, SD_ERR_FORMAT, "UNet: %d heads do not divide %d channels at '%s'",
                    t->heads, t->channels, p);
    return t;
  }
  for (int i = 0; i < t->depth && !b->rc; i++) {
    tblock *k = &t->blocks[i];
    char q[300];
    snprintf(q, sizeof q, "%s.transformer_blocks.%d", p, i);
    k->norm1_w = sd_bind(b, 1, "%s.norm1.weight", q);
    k->norm1_b = sd_bind(b, 1, "%s.norm1.bias", q);
    k->norm2_w = sd_bind(b, 1, "%s.norm2.weight", q);
    k->norm2_b = sd_bind(b, 1, "%s.norm2.bias", q);
    k->norm3_w = sd_bind(b, 1, "%s.norm3.weight", q);
    k->norm3_b = sd_bind(b, 1, "%s.norm3.bias", q);
    char a[320];
    snprintf(a, sizeof a, "%s.attn1", q);
    bind_attn(b, &k->self, a);
    snprintf(a, sizeof a, "%s.attn2", q);
    bind_attn(b, &k->cross, a);
    k->ff1_w = sd_bind(b, 2, "%s.ff.net.0.proj.weight", q);
    k->ff1_b = sd_bind(b, 1, "%s.ff.net.0.proj.bias", q);
    k->ff2_w = sd_bind(b, 2, "%s.ff.net.2.weight", q);
    k->ff2_b = sd_bind(b, 1, "%s.ff.net.2.bias", q);
    if (!b->rc) k->inner = (int)k->ff2_w->shape[1];
    if (!b->rc && k->ff1_w->shape[0] != 2 * k->inner)
      b->rc = sd_fail(b->err, SD_ERR_FORMAT, "UNet: '%s' feed-forward is not GEGLU", q);
  }
  return t;
}

static void free_transformer(transformer *t) {
  if (!t) return;
  sd_free(t->blocks);
  sd_free(t);
}

static int count_prefix(const sd_weights *w, const char *fmt, int max) {
  int n = 0;
  char p[128];
  while (n < max) {
    snprintf(p, sizeof p, fmt, n);
    if (!sd_weights_has_prefix(w, p)) break;
    n++;
  }
  return n;
}

int sd_unet_load(sd_unet **out, const sd_weights *w, const cJSON *config,
                 sd_error *err) {
  *out = NULL;
  sd_unet *m = sd_calloc(1, sizeof *m);
  if (!m) return sd_fail(err, SD_ERR_OOM, "out of memory");
  sd_binder b = {w, err, SD_OK, "UNet"};
  sd_unet_config *c = &m->cfg;
  m->conv_in_w = sd_bind(&b, 4, "conv_in.weight");
  m->conv_in_b = sd_bind(&b, 1, "conv_in.bias");
  m->time1_w = sd_bind(&b, 2, "time_embedding.linear_1.weight");
  m->time1_b = sd_bind(&b, 1, "time_embedding.linear_1.bias");
  m->time2_w = sd_bind(&b, 2, "time_embedding.linear_2.weight");
  m->time2_b = sd_bind(&b, 1, "time_embedding.linear_2.bias");
  m->norm_out_w = sd_bind(&b, 1, "conv_norm_out.weight");
  m->norm_out_b = sd_bind(&b, 1, "conv_norm_out.bias");
  m->conv_out_w = sd_bind(&b, 4, "conv_out.weight");
  m->conv_out_b = sd_bind(&b, 1, "conv_out.bias");
  if (b.rc) goto fail;

  c->in_channels = (int)m->conv_in_w->shape[1];
  c->out_channels = (int)m->conv_out_w->shape[0];
  c->time_embed_dim = (int)m->time1_w->shape[0];
  c->levels = count_prefix(w, "down_blocks.%d.", SD_UNET_MAX_LEVELS);
  if (c->levels < 1 || count_prefix(w, "up_blocks.%d.", SD_UNET_MAX_LEVELS) != c->levels) {
    b.rc = sd_fail(err, SD_ERR_FORMAT, "UNet: down/up block counts disagree or are missing");
    goto fail;
  }
  c->layers_per_block = count_prefix(w, "down_blocks.0.resnets.%d.", SD_UNET_MAX_LAYERS);
  if (c->layers_per_block < 1 ||
      count_prefix(w, "up_blocks.0.resnets.%d.", SD_UNET_MAX_LAYERS) != c->layers_per_block + 1) {
    b.rc = sd_fail(err, SD_ERR_FORMAT, "UNet: unexpected number of resnets per block");
    goto fail;
  }
  /* Config fields with diffusers' defaults. */
  c->norm_groups = sd_json_int(config, "norm_num_groups", 32);
  c->norm_eps = (float)sd_json_num(config, "norm_eps", 1e-5);
  c->flip_sin_to_cos = sd_json_bool(config, "flip_sin_to_cos", 1);
  c->freq_shift = (float)sd_json_num(config, "freq_shift", 0);
  c->addition_time_embed_dim = sd_json_int(config, "addition_time_embed_dim", 0);
  int heads[SD_UNET_MAX_LEVELS];
  const char *hkey = sd_json_has(config, "num_attention_heads") ? "num_attention_heads"
                                                                : "attention_head_dim";
  int nh = sd_json_int_array(config, hkey, heads, c->levels);
  if (config && nh == c->levels) {
    for (int i = 0; i < c->levels; i++) c->heads[i] = heads[i];
  } else if (config && sd_json_has(config, hkey)) {
    b.rc = sd_fail(err, SD_ERR_FORMAT, "UNet config: %s does not match %d levels", hkey, c->levels);
    goto fail;
  } else {
    c->head_dim_fixed = 64; /* no config: SD2/SDXL convention */
  }
  if (config && !sd_json_has(config, "num_attention_heads") &&
      sd_json_has(config, "_head_dim_hint"))
    c->head_dim_fixed = sd_json_int(config, "_head_dim_hint", 0);

  /* Down path. */
  for (int i = 0; i < c->levels && !b.rc; i++) {
    level *L = &m->down[i];
    L->nres = c->layers_per_block;
    for (int j = 0; j < L->nres && !b.rc; j++) {
      char p[96];
      snprintf(p, sizeof p, "down_blocks.%d.resnets.%d", i, j);
      sd_bind_resnet(&b, &L->res[j], p, 1);
      snprintf(p, sizeof p, "down_blocks.%d.attentions.%d.", i, j);
      if (sd_weights_has_prefix(w, p)) {
        p[strlen(p) - 1] = 0;
        L->attn[j] = bind_transformer(&b, p, c->heads[i], c->head_dim_fixed);
      }
    }
    if (b.rc) break;
    c->block_out[i] = L->res[0].out_ch;
    if (sd_weights_getf(w, "down_blocks.%d.downsamplers.0.conv.weight", i)) {
      L->sample_w = sd_bind(&b, 4, "down_blocks.%d.downsamplers.0.conv.weight", i);
      L->sample_b = sd_bind(&b, 1, "down_blocks.%d.downsamplers.0.conv.bias", i);
    }
  }
  /* Mid block. */
  sd_bind_resnet(&b, &m->mid_res[0], "mid_block.resnets.0", 1);
  sd_bind_resnet(&b, &m->mid_res[1], "mid_block.resnets.1", 1);
  if (sd_weights_has_prefix(w, "mid_block.attentions.0."))
    m->mid_attn = bind_transformer(&b, "mid_block.attentions.0", c->heads[c->levels - 1],
                                   c->head_dim_fixed);
  /* Up path: up level i mirrors down level levels-1-i. */
  for (int i = 0; i < c->levels && !b.rc; i++) {
    level *L = &m->up[i];
    L->nres = c->layers_per_block + 1;
    int hi = c->levels - 1 - i;
    for (int j = 0; j < L->nres && !b.rc; j++) {
      char p[96];
      snprintf(p, sizeof p, "up_blocks.%d.resnets.%d", i, j);
      sd_bind_resnet(&b, &L->res[j], p, 1);
      snprintf(p, sizeof p, "up_blocks.%d.attentions.%d.", i, j);
      if (sd_weights_has_prefix(w, p)) {
        p[strlen(p) - 1] = 0;
        L->attn[j] = bind_transformer(&b, p, c->heads[hi], c->head_dim_fixed);
      }
    }
    if (sd_weights_getf(w, "up_blocks.%d.upsamplers.0.conv.weight", i)) {
      L->sample_w = sd_bind(&b, 4, "up_blocks.%d.upsamplers.0.conv.weight", i);
      L->sample_b = sd_bind(&b, 1, "up_blocks.%d.upsamplers.0.conv.bias", i);
    }
  }
  if (b.rc) goto fail;
  /* Cross-attention width from the first attention's to_k. */
  c->cross_dim = 0;
  for (int i = 0; i < c->levels && !c->cross_dim; i++)
    for (int j = 0; j < c->layers_per_block; j++)
      if (m->down[i].attn[j] && m->down[i].attn[j]->depth) {
        c->cross_dim = (int)m->down[i].attn[j]->blocks[0].cross.k->shape[1];
        break;
      }
  if (config && sd_json_has(config, "cross_attention_dim") &&
      sd_json_int(config, "cross_attention_dim", 0) != c->cross_dim && c->cross_dim) {
    b.rc = sd_fail(err, SD_ERR_FORMAT, "UNet: cross_attention_dim %d in config, %d in weights",
                   sd_json_int(config, "cross_attention_dim", 0), c->cross_dim);
    goto fail;
  }
  if (sd_weights_get(w, "add_embedding.linear_1.weight")) {
    m->add1_w = sd_bind(&b, 2, "add_embedding.linear_1.weight");
    m->add1_b = sd_bind(&b, 1, "add_embedding.linear_1.bias");
    m->add2_w = sd_bind(&b, 2, "add_embedding.linear_2.weight");
    m->add2_b = sd_bind(&b, 1, "add_embedding.linear_2.bias");
    if (b.rc) goto fail;
    c->add_in_dim = (int)m->add1_w->shape[1];
    if (!c->addition_time_embed_dim) c->addition_time_embed_dim = 256;
  }
  if (sd_weights_get(w, "time_embedding.cond_proj.weight")) {
    m->cond_proj_w = sd_bind(&b, 2, "time_embedding.cond_proj.weight");
    if (b.rc) goto fail;
    c->time_cond_proj_dim = (int)m->cond_proj_w->shape[1];
    if (m->cond_proj_w->shape[0] != m->time1_w->shape[1] ||
        (config && sd_json_has(config, "time_cond_proj_dim") &&
         sd_json_int(config, "time_cond_proj_dim", 0) != c->time_cond_proj_dim)) {
      b.rc = sd_fail(err, SD_ERR_FORMAT,
                     "UNet: time_embedding.cond_proj.weight does not match the time "
                     "embedding or time_cond_proj_dim");
      goto fail;
    }
  } else if (sd_json_int(config, "time_cond_proj_dim", 0) > 0) {
    b.rc = sd_fail(err, SD_ERR_FORMAT,
                   "UNet: config has time_cond_proj_dim but the weights have no "
                   "time_embedding.cond_proj.weight");
    goto fail;
  }
  c->sample_size = sd_json_int(config, "sample_size", m->add1_w ? 128 : 64);
  for (int i = 0; i < c->levels; i++)
    if (c->norm_groups < 1 || c->block_out[i] % c->norm_groups) {
      b.rc = sd_fail(err, SD_ERR_FORMAT, "UNet: norm_num_groups %d does not divide %d channels",
                     c->norm_groups, c->block_out[i]);
      goto fail;
    }
  if (c->sample_size < 1 || c->sample_size > 4096 || !(c->norm_eps > 0)) {
    b.rc = sd_fail(err, SD_ERR_FORMAT, "UNet: sample_size %d or norm_eps %g out of range",
                   c->sample_size, c->norm_eps);
    goto fail;
  }
  *out = m;
  return SD_OK;
fail:
  sd_unet_free(m);
  return b.rc ? b.rc : SD_ERR_FORMAT;
}

void sd_unet_free(sd_unet *m) {
  if (!m) return;
  for (int i = 0; i < SD_UNET_MAX_LEVELS; i++)
    for (int j = 0; j < SD_UNET_MAX_LAYERS; j++) {
      free_transformer(m->down[i].attn[j]);
      free_transformer(m->up[i].attn[j]);
    }
  free_transformer(m->mid_attn);
  sd_free(m);
}

const sd_unet_config *sd_unet_get_config(const sd_unet *m) { return &m->cfg; }

/* ---- weight residency ---- */

#define RELEASE(...)                                                      \
  do {                                                                    \
    const sd_tensor *list_[] = {__VA_ARGS__};                             \
    sd_tensors_release_pages(list_, (int)(sizeof list_ / sizeof list_[0])); \
  } while (0)

static int64_t resnet_bytes(const resnet *r) {
  const sd_tensor *l[] = {r->norm1_w, r->norm1_b, r->conv1_w, r->conv1_b, r->temb_w, r->temb_b,
                          r->norm2_w, r->norm2_b, r->conv2_w, r->conv2_b, r->skip_w, r->skip_b};
  return sd_tensors_nbytes(l, 12);
}

static void release_resnet(const resnet *r) {
  RELEASE(r->norm1_w, r->norm1_b, r->conv1_w, r->conv1_b, r->temb_w, r->temb_b, r->norm2_w,
          r->norm2_b, r->conv2_w, r->conv2_b, r->skip_w, r->skip_b);
}

static int64_t tblock_bytes(const tblock *k) {
  const sd_tensor *l[] = {k->norm1_w, k->norm1_b, k->norm2_w, k->norm2_b, k->norm3_w, k->norm3_b,
                          k->self.q, k->self.k, k->self.v, k->self.out_w, k->self.out_b,
                          k->cross.q, k->cross.k, k->cross.v, k->cross.out_w, k->cross.out_b,
                          k->ff1_w, k->ff1_b, k->ff2_w, k->ff2_b};
  return sd_tensors_nbytes(l, 20);
}

static void release_tblock(const tblock *k) {
  RELEASE(k->norm1_w, k->norm1_b, k->norm2_w, k->norm2_b, k->norm3_w, k->norm3_b, k->self.q,
          k->self.k, k->self.v, k->self.out_w, k->self.out_b, k->cross.q, k->cross.k,
          k->cross.v, k->cross.out_w, k->cross.out_b, k->ff1_w, k->ff1_b, k->ff2_w, k->ff2_b);
}

void sd_unet_set_weight_streaming(sd_unet *m, int on) { m->stream_weights = on; }

int64_t sd_unet_largest_block_bytes(const sd_unet *m) {
  int64_t best = 0;
  const level *lv[2 * SD_UNET_MAX_LEVELS];
  int nl = 0;
  for (int i = 0; i < m->cfg.levels; i++) lv[nl++] = &m->down[i], lv[nl++] = &m->up[i];
  for (int i = 0; i < nl; i++)
    for (int j = 0; j < lv[i]->nres; j++) {
      int64_t b = resnet_bytes(&lv[i]->res[j]);
      if (b > best) best = b;
      if (lv[i]->attn[j])
        for (int k = 0; k < lv[i]->attn[j]->depth; k++) {
          int64_t tb = tblock_bytes(&lv[i]->attn[j]->blocks[k]);
          if (tb > best) best = tb;
        }
    }
  for (int j = 0; j < 2; j++)
    if (resnet_bytes(&m->mid_res[j]) > best) best = resnet_bytes(&m->mid_res[j]);
  return best;
}

/* ---- forward ---- */

typedef struct run {
  const sd_unet *m;
  int B;
  const float *temb_act; /* silu(emb), (B, T) */
  const sd_unet_cond *cond;
  int kv_chunk;
  sd_error *err;
} run;

#define OOM(r) sd_fail((r)->err, SD_ERR_OOM, "out of memory in the UNet")

/* x (B, in, H, W) -> y (B, out, H, W). */
static int resnet_forward(run *r, const resnet *rs, const float *x, int H, int W,
                          float *y) {
  const sd_unet_config *c = &r->m->cfg;
  int B = r->B;
  int64_t HW = (int64_t)H * W;
  int rc = SD_OK;
  float *h = sd_alloc(sizeof(float) * B * rs->in_ch * HW);
  float *h2 = sd_alloc(sizeof(float) * B * rs->out_ch * HW);
  float *t = sd_alloc(sizeof(float) * B * rs->out_ch);
  if (!h || !h2 || !t) {
    rc = OOM(r);
    goto done;
  }
  sd_group_norm(h, x, B, rs->in_ch, HW, c->norm_groups, rs->norm1_w, rs->norm1_b, c->norm_eps);
  sd_silu(h, (int64_t)B * rs->in_ch * HW);
  if ((rc = sd_conv2d(h2, h, B, rs->in_ch, H, W, rs->conv1_w, rs->conv1_b, 1, 1))) goto oom;
  if ((rc = sd_linear(t, r->temb_act, B, c->time_embed_dim, rs->temb_w, rs->temb_b))) goto oom;
  sd_add_channel_bias(h2, t, B, rs->out_ch, HW);
  sd_group_norm(h2, h2, B, rs->out_ch, HW, c->norm_groups, rs->norm2_w, rs->norm2_b, c->norm_eps);
  sd_silu(h2, (int64_t)B * rs->out_ch * HW);
  if ((rc = sd_conv2d(y, h2, B, rs->out_ch, H, W, rs->conv2_w, rs->conv2_b, 1, 1))) goto oom;
  if (rs->skip_w) {
    if ((rc = sd_conv2d(h2, x, B, rs->in_ch, H, W, rs->skip_w, rs->skip_b, 1, 0))) goto oom;
    sd_add_inplace(y, h2, (int64_t)B * rs->out_ch * HW);
  } else {
    sd_add_inplace(y, x, (int64_t)B * rs->out_ch * HW);
  }
  goto done;
oom:
  OOM(r);
done:
  if (r->m->stream_weights) release_resnet(rs);
  sd_free(h);
  sd_free(h2);
  sd_free(t);
  return rc;
}

/* Multi-head attention on token rows: x (B, Lq, C) attends to ctx (B, Lk, Cc). */
static int attn_forward(run *r, const attn *a, int heads, const float *x, int Lq,
                        const float *ctx, int Lk, int Cc, int C, float *y) {
  int B = r->B, rc = SD_OK;
  float *q = sd_alloc(sizeof(float) * B * Lq * C);
  float *k = sd_alloc(sizeof(float) * B * Lk * C);
  float *v = sd_alloc(sizeof(float) * B * Lk * C);
  float *o = sd_alloc(sizeof(float) * B * Lq * C);
  if (!q || !k || !v || !o) {
    rc = OOM(r);
    goto done;
  }
  if ((rc = sd_linear(q, x, (int64_t)B * Lq, C, a->q, NULL)) ||
      (rc = sd_linear(k, ctx, (int64_t)B * Lk, Cc, a->k, NULL)) ||
      (rc = sd_linear(v, ctx, (int64_t)B * Lk, Cc, a->v, NULL))) {
    OOM(r);
    goto done;
  }
  int hd = C / heads;
  sd_attn_args args = {.B = B, .Lq = Lq, .Lk = Lk, .heads = heads, .head_dim = hd,
                       .q_stride = C, .kv_stride = C,
                       .scale = 1.0f / sqrtf((float)hd), .kv_chunk = r->kv_chunk};
  if ((rc = sd_attention(o, q, k, v, &args)) ||
      (rc = sd_linear(y, o, (int64_t)B * Lq, C, a->out_w, a->out_b)))
    OOM(r);
done:
  sd_free(q);
  sd_free(k);
  sd_free(v);
  sd_free(o);
  return rc;
}

/* Transformer2DModel, in place on x (B, C, H, W). */
static int transformer_forward(run *r, const transformer *t, float *x, int H, int W) {
  int B = r->B, C = t->channels, rc = SD_OK;
  int64_t HW = (int64_t)H * W, T = (int64_t)B * HW;
  const sd_unet_cond *cond = r->cond;
  int Cc = r->m->cfg.cross_dim;
  int inner = t->depth ? t->blocks[0].inner : 0;
  float *g = sd_alloc(sizeof(float) * T * C);
  float *h = sd_alloc(sizeof(float) * T * C);   /* token stream (B, HW, C) */
  float *n = sd_alloc(sizeof(float) * T * C);
  float *a = sd_alloc(sizeof(float) * T * C);
  float *ff = sd_alloc(sizeof(float) * T * 2 * (inner ? inner : 1));
  if (!g || !h || !n || !a || !ff) {
    rc = OOM(r);
    goto done;
  }
  /* GroupNorm (eps 1e-6 in Transformer2DModel), then to tokens. The 1x1 conv
   * and the linear projection are the same product on token rows. */
  sd_group_norm(g, x, B, C, HW, r->m->cfg.norm_groups, t->norm_w, t->norm_b, 1e-6f);
  sd_nchw_to_nhwc(n, g, B, C, HW);
  if ((rc = sd_linear(h, n, T, C, t->proj_in, t->proj_in_b))) goto oom;
  for (int i = 0; i < t->depth; i++) {
    const tblock *k = &t->blocks[i];
    sd_layer_norm(n, h, T, C, k->norm1_w, k->norm1_b, 1e-5f);
    if ((rc = attn_forward(r, &k->self, t->heads, n, (int)HW, n, (int)HW, C, C, a))) goto done;
    sd_add_inplace(h, a, T * C);
    sd_layer_norm(n, h, T, C, k->norm2_w, k->norm2_b, 1e-5f);
    if ((rc = attn_forward(r, &k->cross, t->heads, n, (int)HW, cond->context, cond->ctx_len,
                           Cc, C, a)))
      goto done;
    sd_add_inplace(h, a, T * C);
    sd_layer_norm(n, h, T, C, k->norm3_w, k->norm3_b, 1e-5f);
    if ((rc = sd_linear(ff, n, T, C, k->ff1_w, k->ff1_b))) goto oom;
    sd_geglu(ff, ff, T, k->inner); /* [value, gate] -> value * gelu(gate) */
    if ((rc = sd_linear(a, ff, T, k->inner, k->ff2_w, k->ff2_b))) goto oom;
    sd_add_inplace(h, a, T * C);
    if (r->m->stream_weights) release_tblock(k);
  }
  if ((rc = sd_linear(n, h, T, C, t->proj_out, t->proj_out_b))) goto oom;
  sd_nhwc_to_nchw(g, n, B, C, HW);
  sd_add_inplace(x, g, T * C);
  if (r->m->stream_weights)
    RELEASE(t->norm_w, t->norm_b, t->proj_in, t->proj_in_b, t->proj_out, t->proj_out_b);
  goto done;
oom:
  OOM(r);
done:
  sd_free(g);
  sd_free(h);
  sd_free(n);
  sd_free(a);
  sd_free(ff);
  return rc;
}

void sd_unet_guidance_embedding(float *out, const float *w, int B, int dim) {
  int half = dim / 2;
  /* float32 throughout, in diffusers' order of operations */
  float step = logf(10000.0f) / (float)(half > 1 ? half - 1 : 1);
  for (int b = 0; b < B; b++) {
    float wb = w[b] * 1000.0f;
    float *row = out + (int64_t)b * dim;
    for (int k = 0; k < half; k++) {
      float a = wb * expf((float)k * -step);
      row[k] = (float)sin((double)a);
      row[half + k] = (float)cos((double)a);
    }
    if (dim % 2) row[dim - 1] = 0.0f;
  }
}

static int time_embedding(const sd_unet *m, int B, const float *timesteps,
                          const sd_unet_cond *cond, float *temb_act, sd_error *err) {
  const sd_unet_config *c = &m->cfg;
  int C0 = (int)m->time1_w->shape[1], T = c->time_embed_dim, rc = SD_OK;
  float *proj = sd_alloc(sizeof(float) * B * (C0 > c->add_in_dim ? C0 : c->add_in_dim));
  float *hid = sd_alloc(sizeof(float) * B * T);
  float *aug = sd_alloc(sizeof(float) * B * T);
  if (!proj || !hid || !aug) {
    rc = sd_fail(err, SD_ERR_OOM, "out of memory in the UNet");
    goto done;
  }
  sd_timestep_embedding(proj, timesteps, B, C0, c->flip_sin_to_cos, c->freq_shift, 1.0f,
                        10000.0f);
  if (m->cond_proj_w) {
    /* LCM-distilled UNets: the guidance embedding enters through cond_proj
     * (no bias), added to the sinusoid before linear_1. */
    if (!cond->timestep_cond) {
      rc = sd_fail(err, SD_ERR_ARG, "this UNet (LCM) needs a guidance embedding (timestep_cond)");
      goto done;
    }
    if ((rc = sd_linear(hid, cond->timestep_cond, B, c->time_cond_proj_dim, m->cond_proj_w,
                        NULL)))
      goto oom;
    sd_add_inplace(proj, hid, (int64_t)B * C0);
  }
  if ((rc = sd_linear(hid, proj, B, C0, m->time1_w, m->time1_b))) goto oom;
  sd_silu(hid, (int64_t)B * T);
  if ((rc = sd_linear(temb_act, hid, B, T, m->time2_w, m->time2_b))) goto oom;
  if (m->add1_w) {
    /* SDXL: [text_embeds, sinusoid(time_ids) flattened] -> add_embedding. */
    int d = c->addition_time_embed_dim;
    if (!cond->text_embeds || !cond->time_ids) {
      rc = sd_fail(err, SD_ERR_ARG, "SDXL UNet needs pooled text embeddings and time ids");
      goto done;
    }
    int pooled = c->add_in_dim - cond->n_time_ids * d;
    if (pooled <= 0) {
      rc = sd_fail(err, SD_ERR_FORMAT,
                   "UNet add_embedding input %d does not fit %d time ids of %d",
                   c->add_in_dim, cond->n_time_ids, d);
      goto done;
    }
    for (int b = 0; b < B; b++) {
      float *row = proj + (int64_t)b * c->add_in_dim;
      memcpy(row, cond->text_embeds + (int64_t)b * pooled, sizeof(float) * pooled);
      sd_timestep_embedding(row + pooled, cond->time_ids + (int64_t)b * cond->n_time_ids,
                            cond->n_time_ids, d, c->flip_sin_to_cos, c->freq_shift, 1.0f,
                            10000.0f);
    }
    if ((rc = sd_linear(hid, proj, B, c->add_in_dim, m->add1_w, m->add1_b))) goto oom;
    sd_silu(hid, (int64_t)B * T);
    if ((rc = sd_linear(aug, hid, B, T, m->add2_w, m->add2_b))) goto oom;
    sd_add_inplace(temb_act, aug, (int64_t)B * T);
  }
  sd_silu(temb_act, (int64_t)B * T); /* every resnet applies silu to emb first */
  goto done;
oom:
  sd_fail(err, rc, "out of memory in the UNet");
done:
  sd_free(proj);
  sd_free(hid);
  sd_free(aug);
  return rc;
}

int sd_unet_forward(const sd_unet *m, const float *sample, int B, int H, int W,
                    const float *timesteps, const sd_unet_cond *cond, float *out,
                    int kv_chunk, sd_error *err) {
  const sd_unet_config *c = &m->cfg;
  int down_factor = 1;
  for (int i = 0; i < c->levels; i++)
    if (m->down[i].sample_w) down_factor *= 2;
  if (H % down_factor || W % down_factor)
    return sd_fail(err, SD_ERR_ARG, "latent size %dx%d is not a multiple of %d", W, H,
                   down_factor);
  if (!cond || !cond->context || cond->ctx_len < 1)
    return sd_fail(err, SD_ERR_ARG, "UNet needs text conditioning");

  /* Skip connections: conv_in output, each down resnet(+attn), each downsampler. */
  enum { MAX_SKIPS = 1 + SD_UNET_MAX_LEVELS * (SD_UNET_MAX_LAYERS + 1) };
  float *skip[MAX_SKIPS] = {0};
  int skip_ch[MAX_SKIPS], skip_h[MAX_SKIPS], nskip = 0, rc = SD_OK;
  float *temb = sd_alloc(sizeof(float) * B * c->time_embed_dim);
  float *x = NULL, *y = NULL, *cat = NULL;
  float *cur = NULL; /* current activation; owned unless it is also a skip */
  int cur_is_skip = 0;
  run r = {m, B, temb, cond, kv_chunk, err};
  if (!temb) return OOM(&r);
  if ((rc = time_embedding(m, B, timesteps, cond, temb, err))) goto done;

  int ch = (int)m->conv_in_w->shape[0], h = H, w = W;
  x = sd_alloc(sizeof(float) * B * ch * h * w);
  if (!x) {
    rc = OOM(&r);
    goto done;
  }
  if ((rc = sd_conv2d(x, sample, B, c->in_channels, H, W, m->conv_in_w, m->conv_in_b, 1, 1)))
    goto oom;
  skip[nskip] = x;
  skip_ch[nskip] = ch;
  skip_h[nskip++] = h;
  x = NULL;

  cur = skip[0];
  cur_is_skip = 1;
  for (int i = 0; i < c->levels; i++) {
    const level *L = &m->down[i];
    for (int j = 0; j < L->nres; j++) {
      const resnet *rs = &L->res[j];
      y = sd_alloc(sizeof(float) * B * rs->out_ch * h * w);
      if (!y) goto oomv;
      if ((rc = resnet_forward(&r, rs, cur, h, w, y))) goto done;
      if (!cur_is_skip) sd_free(cur);
      cur = y;
      cur_is_skip = 0; /* not a skip until stored below: freed if attention fails */
      y = NULL;
      ch = rs->out_ch;
      if (L->attn[j] && (rc = transformer_forward(&r, L->attn[j], cur, h, w))) goto done;
      skip[nskip] = cur;
      skip_ch[nskip] = ch;
      skip_h[nskip++] = h;
      cur_is_skip = 1;
    }
    if (L->sample_w) {
      int oh = (h + 2 - 3) / 2 + 1, ow = (w + 2 - 3) / 2 + 1;
      y = sd_alloc(sizeof(float) * B * ch * oh * ow);
      if (!y) goto oomv;
      if ((rc = sd_conv2d(y, cur, B, ch, h, w, L->sample_w, L->sample_b, 2, 1))) goto oom;
      h = oh;
      w = ow;
      cur = y;
      y = NULL;
      skip[nskip] = cur;
      skip_ch[nskip] = ch;
      skip_h[nskip++] = h;
    }
  }
  /* Mid block. */
  for (int j = 0; j < 2; j++) {
    const resnet *rs = &m->mid_res[j];
    y = sd_alloc(sizeof(float) * B * rs->out_ch * h * w);
    if (!y) goto oomv;
    if ((rc = resnet_forward(&r, rs, cur, h, w, y))) goto done;
    if (!cur_is_skip) sd_free(cur);
    cur = y;
    cur_is_skip = 0;
    y = NULL;
    ch = rs->out_ch;
    if (j == 0 && m->mid_attn && (rc = transformer_forward(&r, m->mid_attn, cur, h, w)))
      goto done;
  }
  /* Up path: each resnet consumes the latest skip, concatenated after x. */
  for (int i = 0; i < c->levels; i++) {
    const level *L = &m->up[i];
    for (int j = 0; j < L->nres; j++) {
      const resnet *rs = &L->res[j];
      if (nskip == 0 || skip_h[nskip - 1] != h) {
        rc = sd_fail(err, SD_ERR_FORMAT, "UNet: skip connections do not line up");
        goto done;
      }
      float *s = skip[--nskip];
      int sc = skip_ch[nskip];
      if (ch + sc != rs->in_ch) {
        rc = sd_fail(err, SD_ERR_FORMAT, "UNet: up block %d resnet %d expects %d channels, got %d",
                     i, j, rs->in_ch, ch + sc);
        goto done;
      }
      cat = sd_alloc(sizeof(float) * B * (ch + sc) * h * w);
      if (!cat) goto oomv;
      sd_concat_channels(cat, cur, ch, s, sc, B, (int64_t)h * w);
      sd_free(s);
      skip[nskip] = NULL;
      if (!cur_is_skip) sd_free(cur);
      cur = NULL;
      y = sd_alloc(sizeof(float) * B * rs->out_ch * h * w);
      if (!y) goto oomv;
      if ((rc = resnet_forward(&r, rs, cat, h, w, y))) goto done;
      sd_free(cat);
      cat = NULL;
      cur = y;
      cur_is_skip = 0;
      y = NULL;
      ch = rs->out_ch;
      if (L->attn[j] && (rc = transformer_forward(&r, L->attn[j], cur, h, w))) goto done;
    }
    if (L->sample_w) {
      float *u = sd_alloc(sizeof(float) * B * ch * 4 * h * w);
      if (!u) goto oomv;
      sd_upsample_nearest2x(u, cur, B, ch, h, w);
      sd_free(cur);
      cur = NULL;
      h *= 2;
      w *= 2;
      y = sd_alloc(sizeof(float) * B * ch * h * w);
      if (!y) {
        sd_free(u);
        goto oomv;
      }
      rc = sd_conv2d(y, u, B, ch, h, w, L->sample_w, L->sample_b, 1, 1);
      sd_free(u);
      if (rc) goto oom;
      cur = y;
      y = NULL;
    }
  }
  sd_group_norm(cur, cur, B, ch, (int64_t)h * w, c->norm_groups, m->norm_out_w, m->norm_out_b,
                c->norm_eps);
  sd_silu(cur, (int64_t)B * ch * h * w);
  if ((rc = sd_conv2d(out, cur, B, ch, h, w, m->conv_out_w, m->conv_out_b, 1, 1))) goto oom;
  if (m->stream_weights) {
    /* the small tensors too: a streamed run leaves nothing resident */
    RELEASE(m->cond_proj_w, m->conv_in_w, m->conv_in_b, m->time1_w, m->time1_b, m->time2_w, m->time2_b,
            m->add1_w, m->add1_b, m->add2_w, m->add2_b, m->norm_out_w, m->norm_out_b,
            m->conv_out_w, m->conv_out_b);
    for (int i = 0; i < c->levels; i++)
      RELEASE(m->down[i].sample_w, m->down[i].sample_b, m->up[i].sample_w, m->up[i].sample_b);
  }
  sd_free(cur);
  cur = NULL;
  goto done;
oomv:
  rc = SD_ERR_OOM;
oom:
  OOM(&r);
done:
  if (rc && cur && !cur_is_skip) sd_free(cur);
  /* every slot, not just the first nskip: the up path pops a skip before
   * it is consumed (NULLed), and a failure in between must still free it */
  for (int i = 0; i < MAX_SKIPS; i++) sd_free(skip[i]);
  sd_free(temb);
  sd_free(x);
  sd_free(y);
  sd_free(cat);
  return rc;
}
