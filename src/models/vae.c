#include "models/vae.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "io/json.h"
#include "models/bind.h"
#include "tensor/ops.h"

/* VAE resnets and attention use GroupNorm eps 1e-6 (diffusers Encoder/Decoder). */
#define VAE_EPS 1e-6f

typedef sd_resnet_weights vres;

typedef struct vattn {
  int ch;
  const sd_tensor *nw, *nb, *q_b, *k_b, *v_b, *o_b;
  sd_tensor q, k, v, o; /* 2-D views (C, C): linears or 1x1 convs */
} vattn;

typedef struct vlevel {
  int nres;
  vres res[4];
  const sd_tensor *sw, *sb; /* down/upsampler conv or NULL */
} vlevel;

typedef struct half {
  const sd_tensor *conv_in_w, *conv_in_b, *norm_out_w, *norm_out_b, *conv_out_w, *conv_out_b;
  vlevel lv[SD_VAE_MAX_LEVELS];
  vres mid[2];
  vattn mid_attn;
  int has_attn;
} half;

struct sd_vae {
  sd_vae_config cfg;
  half enc, dec;
  const sd_tensor *qw, *qb, *pqw, *pqb;
};




static void bind_attn(sd_binder *b, vattn *a, const char *p) {
  a->nw = sd_bind(b, 1, "%s.group_norm.weight", p);
  a->nb = sd_bind(b, 1, "%s.group_norm.bias", p);
  const sd_tensor *q = sd_bind(b, 0, "%s.to_q.weight", p), *k = sd_bind(b, 0, "%s.to_k.weight", p),
                  *v = sd_bind(b, 0, "%s.to_v.weight", p), *o = sd_bind(b, 0, "%s.to_out.0.weight", p);
  a->q_b = sd_bind(b, 1, "%s.to_q.bias", p);
  a->k_b = sd_bind(b, 1, "%s.to_k.bias", p);
  a->v_b = sd_bind(b, 1, "%s.to_v.bias", p);
  a->o_b = sd_bind(b, 1, "%s.to_out.0.bias", p);
  if (b->rc) return;
  a->q = sd_view2d(q);
  a->k = sd_view2d(k);
  a->v = sd_view2d(v);
  a->o = sd_view2d(o);
  a->ch = (int)a->q.shape[0];
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

static void bind_half(sd_binder *b, half *h, const char *side, int levels, int nres,
                      const char *blocks, const char *sampler) {
  h->conv_in_w = sd_bind(b, 4, "%s.conv_in.weight", side);
  h->conv_in_b = sd_bind(b, 1, "%s.conv_in.bias", side);
  h->norm_out_w = sd_bind(b, 1, "%s.conv_norm_out.weight", side);
  h->norm_out_b = sd_bind(b, 1, "%s.conv_norm_out.bias", side);
  h->conv_out_w = sd_bind(b, 4, "%s.conv_out.weight", side);
  h->conv_out_b = sd_bind(b, 1, "%s.conv_out.bias", side);
  for (int i = 0; i < levels && !b->rc; i++) {
    vlevel *L = &h->lv[i];
    L->nres = nres;
    for (int j = 0; j < nres; j++) {
      char p[128];
      snprintf(p, sizeof p, "%s.%s.%d.resnets.%d", side, blocks, i, j);
      sd_bind_resnet(b, &L->res[j], p, 0);
    }
    if (sd_weights_getf(b->w, "%s.%s.%d.%s.0.conv.weight", side, blocks, i, sampler)) {
      L->sw = sd_bind(b, 4, "%s.%s.%d.%s.0.conv.weight", side, blocks, i, sampler);
      L->sb = sd_bind(b, 1, "%s.%s.%d.%s.0.conv.bias", side, blocks, i, sampler);
    }
  }
  char p[128];
  snprintf(p, sizeof p, "%s.mid_block.resnets.0", side);
  sd_bind_resnet(b, &h->mid[0], p, 0);
  snprintf(p, sizeof p, "%s.mid_block.resnets.1", side);
  sd_bind_resnet(b, &h->mid[1], p, 0);
  snprintf(p, sizeof p, "%s.mid_block.attentions.0.", side);
  if (sd_weights_has_prefix(b->w, p)) {
    p[strlen(p) - 1] = 0;
    bind_attn(b, &h->mid_attn, p);
    h->has_attn = 1;
  }
}

int sd_vae_load(sd_vae **out, const sd_weights *w, const cJSON *config, sd_error *err) {
  *out = NULL;
  sd_vae *m = sd_calloc(1, sizeof *m);
  if (!m) return sd_fail(err, SD_ERR_OOM, "out of memory");
  sd_vae_config *c = &m->cfg;
  sd_binder b = {w, err, SD_OK, "VAE"};
  c->norm_groups = sd_json_int(config, "norm_num_groups", 32);
  c->scaling_factor = (float)sd_json_num(config, "scaling_factor", 0.18215);
  c->shift_factor = (float)sd_json_num(config, "shift_factor", 0.0);
  c->force_upcast = sd_json_bool(config, "force_upcast", 1);
  int sample_size[2];
  c->sample_size =
      sd_json_int_array(config, "sample_size", sample_size, 2) >= 1 ? sample_size[0] : 512;
  c->has_encoder = sd_weights_has_prefix(w, "encoder.");
  c->has_decoder = sd_weights_has_prefix(w, "decoder.");
  c->has_quant_conv = sd_weights_get(w, "quant_conv.weight") != NULL ||
                      sd_weights_get(w, "post_quant_conv.weight") != NULL;
  if (!c->has_encoder && !c->has_decoder) {
    sd_vae_free(m);
    return sd_fail(err, SD_ERR_FORMAT, "VAE: no encoder or decoder weights");
  }
  if (c->has_decoder) {
    c->levels = count_prefix(w, "decoder.up_blocks.%d.", SD_VAE_MAX_LEVELS);
    c->layers_per_block = count_prefix(w, "decoder.up_blocks.0.resnets.%d.", 4) - 1;
    if (c->levels < 1 || c->layers_per_block < 1) {
      sd_vae_free(m);
      return sd_fail(err, SD_ERR_FORMAT, "VAE: decoder blocks missing");
    }
    bind_half(&b, &m->dec, "decoder", c->levels, c->layers_per_block + 1, "up_blocks",
              "upsamplers");
    if (!b.rc) {
      c->latent_channels = (int)m->dec.conv_in_w->shape[1];
      c->out_channels = (int)m->dec.conv_out_w->shape[0];
      for (int i = 0; i < c->levels; i++)
        c->block_out[c->levels - 1 - i] = m->dec.lv[i].res[0].out_ch;
    }
    if (c->has_quant_conv) {
      m->pqw = sd_bind(&b, 4, "post_quant_conv.weight");
      m->pqb = sd_bind(&b, 1, "post_quant_conv.bias");
    }
  }
  if (c->has_encoder && !b.rc) {
    int levels = count_prefix(w, "encoder.down_blocks.%d.", SD_VAE_MAX_LEVELS);
    int nres = count_prefix(w, "encoder.down_blocks.0.resnets.%d.", 4);
    if (c->has_decoder && (levels != c->levels || nres != c->layers_per_block)) {
      sd_vae_free(m);
      return sd_fail(err, SD_ERR_FORMAT, "VAE: encoder and decoder shapes disagree");
    }
    c->levels = levels;
    c->layers_per_block = nres;
    bind_half(&b, &m->enc, "encoder", levels, nres, "down_blocks", "downsamplers");
    if (!b.rc) {
      c->in_channels = (int)m->enc.conv_in_w->shape[1];
      c->latent_channels = (int)m->enc.conv_out_w->shape[0] / 2;
      for (int i = 0; i < levels; i++) c->block_out[i] = m->enc.lv[i].res[0].out_ch;
    }
    if (c->has_quant_conv) {
      m->qw = sd_bind(&b, 4, "quant_conv.weight");
      m->qb = sd_bind(&b, 1, "quant_conv.bias");
    }
  }
  for (int i = 0; !b.rc && i < c->levels; i++)
    if (c->norm_groups < 1 || c->block_out[i] % c->norm_groups)
      b.rc = sd_fail(err, SD_ERR_FORMAT, "VAE: norm_num_groups %d does not divide %d channels",
                     c->norm_groups, c->block_out[i]);
  if (!b.rc && !(c->scaling_factor > 0 && c->scaling_factor < 1e6))
    b.rc = sd_fail(err, SD_ERR_FORMAT, "VAE: scaling_factor %g is not usable", c->scaling_factor);
  if (!b.rc && config && sd_json_has(config, "latent_channels") &&
      sd_json_int(config, "latent_channels", 0) != c->latent_channels)
    b.rc = sd_fail(err, SD_ERR_FORMAT, "VAE: config latent_channels %d, weights %d",
                   sd_json_int(config, "latent_channels", 0), c->latent_channels);
  if (b.rc) {
    sd_vae_free(m);
    return b.rc;
  }
  *out = m;
  return SD_OK;
}

void sd_vae_free(sd_vae *m) { sd_free(m); }
const sd_vae_config *sd_vae_get_config(const sd_vae *m) { return &m->cfg; }

int sd_vae_downscale(const sd_vae *m) {
  int f = 1;
  const half *h = m->cfg.has_decoder ? &m->dec : &m->enc;
  for (int i = 0; i < m->cfg.levels; i++)
    if (h->lv[i].sw) f *= 2;
  return f;
}

/* ---- forward ---- */

static int res_forward(const sd_vae *m, const vres *r, const float *x, int B, int H, int W,
                       float *y) {
  int64_t HW = (int64_t)H * W;
  int g = m->cfg.norm_groups, rc = SD_OK;
  float *h = sd_alloc(sizeof(float) * B * r->in_ch * HW);
  float *h2 = sd_alloc(sizeof(float) * B * r->out_ch * HW);
  if (!h || !h2) {
    rc = SD_ERR_OOM;
    goto done;
  }
  sd_group_norm(h, x, B, r->in_ch, HW, g, r->norm1_w, r->norm1_b, VAE_EPS);
  sd_silu(h, (int64_t)B * r->in_ch * HW);
  if ((rc = sd_conv2d(h2, h, B, r->in_ch, H, W, r->conv1_w, r->conv1_b, 1, 1))) goto done;
  sd_group_norm(h2, h2, B, r->out_ch, HW, g, r->norm2_w, r->norm2_b, VAE_EPS);
  sd_silu(h2, (int64_t)B * r->out_ch * HW);
  if ((rc = sd_conv2d(y, h2, B, r->out_ch, H, W, r->conv2_w, r->conv2_b, 1, 1))) goto done;
  if (r->skip_w) {
    if ((rc = sd_conv2d(h2, x, B, r->in_ch, H, W, r->skip_w, r->skip_b, 1, 0))) goto done;
    sd_add_inplace(y, h2, (int64_t)B * r->out_ch * HW);
  } else {
    sd_add_inplace(y, x, (int64_t)B * r->out_ch * HW);
  }
done:
  sd_free(h);
  sd_free(h2);
  return rc;
}

/* Single-head self-attention over pixels, in place on x (B, C, H, W). */
static int attn_forward(const sd_vae *m, const vattn *a, float *x, int B, int H, int W) {
  int C = a->ch, rc = SD_OK;
  int64_t HW = (int64_t)H * W, T = (int64_t)B * HW;
  float *n = sd_alloc(sizeof(float) * T * C), *t = sd_alloc(sizeof(float) * T * C);
  float *q = sd_alloc(sizeof(float) * T * C), *k = sd_alloc(sizeof(float) * T * C);
  float *v = sd_alloc(sizeof(float) * T * C);
  if (!n || !t || !q || !k || !v) {
    rc = SD_ERR_OOM;
    goto done;
  }
  sd_group_norm(n, x, B, C, HW, m->cfg.norm_groups, a->nw, a->nb, VAE_EPS);
  sd_nchw_to_nhwc(t, n, B, C, HW);
  if ((rc = sd_linear(q, t, T, C, &a->q, a->q_b)) || (rc = sd_linear(k, t, T, C, &a->k, a->k_b)) ||
      (rc = sd_linear(v, t, T, C, &a->v, a->v_b)))
    goto done;
  sd_attn_args args = {.B = B, .Lq = (int)HW, .Lk = (int)HW, .heads = 1, .head_dim = C,
                       .q_stride = C, .kv_stride = C, .scale = 1.0f / sqrtf((float)C)};
  if ((rc = sd_attention(n, q, k, v, &args))) goto done;
  if ((rc = sd_linear(t, n, T, C, &a->o, a->o_b))) goto done;
  sd_nhwc_to_nchw(n, t, B, C, HW);
  sd_add_inplace(x, n, T * C);
done:
  sd_free(n);
  sd_free(t);
  sd_free(q);
  sd_free(k);
  sd_free(v);
  return rc;
}

/* Runs a resnet into a fresh buffer and replaces *cur with it. */
static int step_res(const sd_vae *m, const vres *r, float **cur, int B, int H, int W) {
  float *y = sd_alloc(sizeof(float) * B * r->out_ch * H * W);
  if (!y) return SD_ERR_OOM;
  int rc = res_forward(m, r, *cur, B, H, W, y);
  if (rc) {
    sd_free(y);
    return rc;
  }
  sd_free(*cur);
  *cur = y;
  return SD_OK;
}

static int mid_forward(const sd_vae *m, const half *h, float **cur, int B, int H, int W) {
  int rc = step_res(m, &h->mid[0], cur, B, H, W);
  if (!rc && h->has_attn) rc = attn_forward(m, &h->mid_attn, *cur, B, H, W);
  if (!rc) rc = step_res(m, &h->mid[1], cur, B, H, W);
  return rc;
}

static int out_forward(const sd_vae *m, const half *h, float *cur, int B, int C, int H, int W,
                       float *out) {
  sd_group_norm(cur, cur, B, C, (int64_t)H * W, m->cfg.norm_groups, h->norm_out_w,
                h->norm_out_b, VAE_EPS);
  sd_silu(cur, (int64_t)B * C * H * W);
  return sd_conv2d(out, cur, B, C, H, W, h->conv_out_w, h->conv_out_b, 1, 1);
}

int sd_vae_decode(const sd_vae *m, const float *z, int B, int h, int w, float *image,
                  sd_error *err) {
  const sd_vae_config *c = &m->cfg;
  if (!c->has_decoder) return sd_fail(err, SD_ERR_FORMAT, "VAE has no decoder weights");
  int L = c->latent_channels, rc = SD_OK;
  float *cur = NULL, *zq = sd_alloc(sizeof(float) * B * L * h * w);
  if (!zq) goto oom;
  if (m->pqw) {
    if ((rc = sd_conv2d(zq, z, B, L, h, w, m->pqw, m->pqb, 1, 0))) goto oom;
  } else {
    memcpy(zq, z, sizeof(float) * B * L * h * w);
  }
  int ch = (int)m->dec.conv_in_w->shape[0];
  cur = sd_alloc(sizeof(float) * B * ch * h * w);
  if (!cur) goto oom;
  if ((rc = sd_conv2d(cur, zq, B, L, h, w, m->dec.conv_in_w, m->dec.conv_in_b, 1, 1))) goto oom;
  sd_free(zq);
  zq = NULL;
  if ((rc = mid_forward(m, &m->dec, &cur, B, h, w))) goto oom;
  for (int i = 0; i < c->levels; i++) {
    const vlevel *lv = &m->dec.lv[i];
    for (int j = 0; j < lv->nres; j++) {
      if ((rc = step_res(m, &lv->res[j], &cur, B, h, w))) goto oom;
      ch = lv->res[j].out_ch;
    }
    if (lv->sw) {
      float *u = sd_alloc(sizeof(float) * B * ch * 4 * h * w);
      if (!u) goto oom;
      sd_upsample_nearest2x(u, cur, B, ch, h, w);
      sd_free(cur);
      h *= 2;
      w *= 2;
      cur = sd_alloc(sizeof(float) * B * ch * h * w);
      rc = cur ? sd_conv2d(cur, u, B, ch, h, w, lv->sw, lv->sb, 1, 1) : SD_ERR_OOM;
      sd_free(u);
      if (rc) goto oom;
    }
  }
  rc = out_forward(m, &m->dec, cur, B, ch, h, w, image);
  if (rc) goto oom;
  sd_free(cur);
  return SD_OK;
oom:
  sd_free(zq);
  sd_free(cur);
  return sd_fail(err, SD_ERR_OOM, "out of memory in the VAE decoder");
}

int sd_vae_encode(const sd_vae *m, const float *image, int B, int H, int W, float *mean,
                  float *std, float *logvar, sd_error *err) {
  const sd_vae_config *c = &m->cfg;
  if (!c->has_encoder) return sd_fail(err, SD_ERR_FORMAT, "VAE has no encoder weights");
  int f = sd_vae_downscale(m);
  if (H % f || W % f)
    return sd_fail(err, SD_ERR_ARG, "image size %dx%d is not a multiple of %d", W, H, f);
  int ch = (int)m->enc.conv_in_w->shape[0], h = H, w = W, rc = SD_OK;
  float *cur = sd_alloc(sizeof(float) * B * ch * h * w), *mom = NULL, *mq = NULL;
  if (!cur) goto oom;
  if ((rc = sd_conv2d(cur, image, B, c->in_channels, H, W, m->enc.conv_in_w, m->enc.conv_in_b,
                      1, 1)))
    goto oom;
  for (int i = 0; i < c->levels; i++) {
    const vlevel *lv = &m->enc.lv[i];
    for (int j = 0; j < lv->nres; j++) {
      if ((rc = step_res(m, &lv->res[j], &cur, B, h, w))) goto oom;
      ch = lv->res[j].out_ch;
    }
    if (lv->sw) {
      /* diffusers pads (0, 1, 0, 1) and convolves with stride 2, padding 0. */
      int oh = (h + 1 - 3) / 2 + 1, ow = (w + 1 - 3) / 2 + 1;
      float *y = sd_alloc(sizeof(float) * B * ch * oh * ow);
      if (!y) goto oom;
      rc = sd_conv2d_pad4(y, cur, B, ch, h, w, lv->sw, lv->sb, 2, 0, 1, 0, 1);
      sd_free(cur);
      cur = y;
      if (rc) goto oom;
      h = oh;
      w = ow;
    }
  }
  if ((rc = mid_forward(m, &m->enc, &cur, B, h, w))) goto oom;
  int L2 = 2 * c->latent_channels;
  int64_t hw = (int64_t)h * w;
  mom = sd_alloc(sizeof(float) * B * L2 * hw);
  if (!mom) goto oom;
  if ((rc = out_forward(m, &m->enc, cur, B, ch, h, w, mom))) goto oom;
  if (m->qw) {
    mq = sd_alloc(sizeof(float) * B * L2 * hw);
    if (!mq) goto oom;
    if ((rc = sd_conv2d(mq, mom, B, L2, h, w, m->qw, m->qb, 1, 0))) goto oom;
    sd_free(mom);
    mom = mq;
    mq = NULL;
  }
  int L = c->latent_channels;
  for (int b = 0; b < B; b++)
    for (int64_t i = 0; i < (int64_t)L * hw; i++) {
      float mu = mom[(int64_t)b * L2 * hw + i];
      float lv = mom[(int64_t)b * L2 * hw + (int64_t)L * hw + i];
      lv = lv < -30.0f ? -30.0f : lv > 20.0f ? 20.0f : lv;
      mean[(int64_t)b * L * hw + i] = mu;
      std[(int64_t)b * L * hw + i] = expf(0.5f * lv);
      if (logvar) logvar[(int64_t)b * L * hw + i] = lv;
    }
  sd_free(cur);
  sd_free(mom);
  return SD_OK;
oom:
  sd_free(cur);
  sd_free(mom);
  sd_free(mq);
  return sd_fail(err, rc && rc != SD_ERR_OOM ? rc : SD_ERR_OOM, "out of memory in the VAE encoder");
}
