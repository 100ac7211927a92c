#include "models/clip_text.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "io/json.h"
#include "io/residency.h"
#include "tensor/ops.h"

static int need(const sd_weights *w, const char *prefix, const char *name,
                int ndim, const int64_t *shape, const sd_tensor **out,
                sd_error *err) {
  char full[512];
  snprintf(full, sizeof full, "%s%s", prefix, name);
  return sd_weights_need(w, full, ndim, shape, out, err);
}

int sd_clip_load(sd_clip **out, const sd_weights *w, const char *prefix,
                 const cJSON *config, sd_clip_act act_if_no_config,
                 sd_error *err) {
  *out = NULL;
  const sd_tensor *tok, *pos;
  int rc = need(w, prefix, "text_model.embeddings.token_embedding.weight", 2,
                (int64_t[]){-1, -1}, &tok, err);
  if (!rc)
    rc = need(w, prefix, "text_model.embeddings.position_embedding.weight", 2,
              (int64_t[]){-1, tok->shape[1]}, &pos, err);
  if (rc) return rc;

  sd_clip_config cfg = {0};
  cfg.vocab_size = (int)tok->shape[0];
  cfg.hidden = (int)tok->shape[1];
  cfg.max_positions = (int)pos->shape[0];
  cfg.eps = 1e-5f;
  cfg.act = act_if_no_config;
  while (sd_weights_getf(w, "%stext_model.encoder.layers.%d.layer_norm1.weight",
                         prefix, cfg.layers))
    cfg.layers++;
  const sd_tensor *fc1 = sd_weights_getf(
      w, "%stext_model.encoder.layers.0.mlp.fc1.weight", prefix);
  cfg.intermediate = fc1 ? (int)fc1->shape[0] : 0;
  cfg.heads = cfg.hidden / 64 > 0 ? cfg.hidden / 64 : 1;
  if (config) {
    if (sd_json_int(config, "hidden_size", cfg.hidden) != cfg.hidden ||
        sd_json_int(config, "vocab_size", cfg.vocab_size) != cfg.vocab_size)
      return sd_fail(err, SD_ERR_FORMAT,
                     "text encoder weights (hidden %d, vocab %d) disagree with "
                     "its config.json",
                     cfg.hidden, cfg.vocab_size);
    int nl = sd_json_int(config, "num_hidden_layers", cfg.layers);
    if (nl > cfg.layers)
      return sd_fail(err, SD_ERR_FORMAT,
                     "text encoder config has %d layers, weights only %d", nl,
                     cfg.layers);
    cfg.layers = nl;
    cfg.heads = sd_json_int(config, "num_attention_heads", cfg.heads);
    cfg.intermediate = sd_json_int(config, "intermediate_size", cfg.intermediate);
    cfg.eps = (float)sd_json_num(config, "layer_norm_eps", 1e-5);
    const char *act = sd_json_str(config, "hidden_act", "quick_gelu");
    if (strcmp(act, "quick_gelu") == 0)
      cfg.act = SD_ACT_QUICK_GELU;
    else if (strcmp(act, "gelu") == 0)
      cfg.act = SD_ACT_GELU;
    else
      return sd_fail(err, SD_ERR_UNSUPPORTED, "text encoder activation '%s'", act);
  }
  if (cfg.layers < 1 || cfg.heads < 1 || cfg.hidden % cfg.heads)
    return sd_fail(err, SD_ERR_FORMAT,
                   "text encoder has %d layers, hidden %d, %d heads",
                   cfg.layers, cfg.hidden, cfg.heads);

  sd_clip *m = sd_calloc(1, sizeof *m);
  if (!m) return sd_fail(err, SD_ERR_OOM, "out of memory");
  m->layer = sd_calloc((size_t)cfg.layers, sizeof *m->layer);
  if (!m->layer) {
    sd_free(m);
    return sd_fail(err, SD_ERR_OOM, "out of memory");
  }
  m->tok_emb = tok;
  m->pos_emb = pos;
  int64_t D = cfg.hidden, I = cfg.intermediate;
  const int64_t vec[1] = {D}, mat[2] = {D, D}, up[2] = {I, D}, down[2] = {D, I},
                ivec[1] = {I};
  for (int l = 0; l < cfg.layers && !rc; l++) {
    sd_clip_layer *L = &m->layer[l];
    char b[160];
#define W(field, name, nd, shape)                                              \
  if (!rc) {                                                                   \
    snprintf(b, sizeof b, "text_model.encoder.layers.%d.%s", l, name);         \
    rc = need(w, prefix, b, nd, shape, &L->field, err);                        \
  }
    W(ln1_w, "layer_norm1.weight", 1, vec) W(ln1_b, "layer_norm1.bias", 1, vec)
    W(q_w, "self_attn.q_proj.weight", 2, mat) W(q_b, "self_attn.q_proj.bias", 1, vec)
    W(k_w, "self_attn.k_proj.weight", 2, mat) W(k_b, "self_attn.k_proj.bias", 1, vec)
    W(v_w, "self_attn.v_proj.weight", 2, mat) W(v_b, "self_attn.v_proj.bias", 1, vec)
    W(out_w, "self_attn.out_proj.weight", 2, mat)
    W(out_b, "self_attn.out_proj.bias", 1, vec)
    W(ln2_w, "layer_norm2.weight", 1, vec) W(ln2_b, "layer_norm2.bias", 1, vec)
    W(fc1_w, "mlp.fc1.weight", 2, up) W(fc1_b, "mlp.fc1.bias", 1, ivec)
    W(fc2_w, "mlp.fc2.weight", 2, down) W(fc2_b, "mlp.fc2.bias", 1, vec)
#undef W
  }
  if (!rc)
    rc = need(w, prefix, "text_model.final_layer_norm.weight", 1, vec,
              &m->final_ln_w, err);
  if (!rc)
    rc = need(w, prefix, "text_model.final_layer_norm.bias", 1, vec,
              &m->final_ln_b, err);
  if (!rc) {
    m->proj = sd_weights_getf(w, "%stext_projection.weight", prefix);
    if (m->proj && (m->proj->ndim != 2 || m->proj->shape[1] != D))
      rc = sd_fail(err, SD_ERR_FORMAT, "text_projection has a bad shape");
    cfg.projection_dim = m->proj ? (int)m->proj->shape[0] : 0;
  }
  m->cfg = cfg;
  if (rc) {
    sd_clip_free(m);
    return rc;
  }
  *out = m;
  return SD_OK;
}

static int layer_tensors(const sd_clip_layer *L, const sd_tensor **t) {
  const sd_tensor *all[] = {L->ln1_w, L->ln1_b, L->q_w,  L->q_b,  L->k_w,   L->k_b,
                            L->v_w,   L->v_b,   L->out_w, L->out_b, L->ln2_w, L->ln2_b,
                            L->fc1_w, L->fc1_b, L->fc2_w, L->fc2_b};
  int n = (int)(sizeof all / sizeof all[0]);
  for (int i = 0; i < n; i++) t[i] = all[i];
  return n;
}

int64_t sd_clip_largest_layer_bytes(const sd_clip *m) {
  int64_t best = 0;
  const sd_tensor *t[16];
  for (int l = 0; l < m->cfg.layers; l++) {
    int64_t b = sd_tensors_nbytes(t, layer_tensors(&m->layer[l], t));
    if (b > best) best = b;
  }
  return best;
}

void sd_clip_free(sd_clip *m) {
  if (!m) return;
  sd_free(m->layer);
  sd_free(m);
}

int64_t sd_clip_scratch_bytes(const sd_clip_config *c, int B, int L) {
  int64_t T = (int64_t)B * L;
  return 4 * T * (5LL * c->hidden + c->intermediate);
}

int sd_clip_encode(const sd_clip *m, const int32_t *ids, int B, int L,
                   sd_clip_outputs *out, sd_error *err) {
  const sd_clip_config *c = &m->cfg;
  int64_t D = c->hidden, T = (int64_t)B * L;
  if (L > c->max_positions)
    return sd_fail(err, SD_ERR_ARG, "%d tokens exceed the encoder's %d positions",
                   L, c->max_positions);
  float *h = sd_alloc(sizeof(float) * T * D);   /* residual stream */
  float *x = sd_alloc(sizeof(float) * T * D);   /* normalized input */
  float *qkv = sd_alloc(sizeof(float) * T * D * 3);
  float *att = sd_alloc(sizeof(float) * T * D);
  float *mlp = sd_alloc(sizeof(float) * T * c->intermediate);
  int rc = SD_OK;
  if (!h || !x || !qkv || !att || !mlp) {
    rc = sd_fail(err, SD_ERR_OOM, "out of memory encoding text");
    goto done;
  }
  for (int b = 0; b < B; b++)
    for (int i = 0; i < L; i++) {
      int id = ids[b * L + i];
      if (id < 0 || id >= c->vocab_size) {
        rc = sd_fail(err, SD_ERR_ARG, "token id %d outside the vocabulary", id);
        goto done;
      }
      float *row = h + ((int64_t)b * L + i) * D;
      sd_tensor_read_f32(m->tok_emb, (int64_t)id * D, D, row);
      sd_tensor_read_f32(m->pos_emb, (int64_t)i * D, D, x);
      sd_add_inplace(row, x, D);
    }
  int hd = (int)(D / c->heads);
  sd_attn_args a = {.B = B, .Lq = L, .Lk = L, .heads = c->heads,
                    .head_dim = hd, .q_stride = D, .kv_stride = D,
                    .scale = 1.0f / sqrtf((float)hd), .causal = 1};
  for (int l = 0; l < c->layers; l++) {
    const sd_clip_layer *Ly = &m->layer[l];
    if (l == c->layers - 1 && out->penultimate)
      memcpy(out->penultimate, h, sizeof(float) * T * D);
    sd_layer_norm(x, h, T, D, Ly->ln1_w, Ly->ln1_b, c->eps);
    float *q = qkv, *k = qkv + T * D, *v = qkv + 2 * T * D;
    if ((rc = sd_linear(q, x, T, D, Ly->q_w, Ly->q_b)) ||
        (rc = sd_linear(k, x, T, D, Ly->k_w, Ly->k_b)) ||
        (rc = sd_linear(v, x, T, D, Ly->v_w, Ly->v_b)) ||
        (rc = sd_attention(att, q, k, v, &a)) ||
        (rc = sd_linear(x, att, T, D, Ly->out_w, Ly->out_b)))
      goto oom;
    sd_add_inplace(h, x, T * D);
    sd_layer_norm(x, h, T, D, Ly->ln2_w, Ly->ln2_b, c->eps);
    if ((rc = sd_linear(mlp, x, T, D, Ly->fc1_w, Ly->fc1_b))) goto oom;
    if (c->act == SD_ACT_QUICK_GELU)
      sd_quick_gelu(mlp, T * c->intermediate);
    else
      sd_gelu(mlp, T * c->intermediate);
    if ((rc = sd_linear(x, mlp, T, c->intermediate, Ly->fc2_w, Ly->fc2_b)))
      goto oom;
    sd_add_inplace(h, x, T * D);
    if (m->stream_weights) {
      const sd_tensor *t[16];
      int n = layer_tensors(Ly, t);
      sd_tensors_release_pages(t, n);
    }
  }
  if (c->layers == 1 && out->penultimate) {
    rc = sd_fail(err, SD_ERR_UNSUPPORTED, "one-layer encoder has no penultimate");
    goto done;
  }
  sd_layer_norm(x, h, T, D, m->final_ln_w, m->final_ln_b, c->eps);
  if (out->last_hidden) memcpy(out->last_hidden, x, sizeof(float) * T * D);
  if (out->pooled || out->text_embeds) {
    float *pooled = att; /* reuse: (B, D) */
    for (int b = 0; b < B; b++) {
      int best = 0; /* first position holding the largest id: the EOS */
      for (int i = 1; i < L; i++)
        if (ids[b * L + i] > ids[b * L + best]) best = i;
      memcpy(pooled + b * D, x + ((int64_t)b * L + best) * D, sizeof(float) * D);
    }
    if (out->pooled) memcpy(out->pooled, pooled, sizeof(float) * B * D);
    if (out->text_embeds) {
      if (!m->proj) {
        rc = sd_fail(err, SD_ERR_FORMAT, "text encoder has no text_projection");
        goto done;
      }
      if ((rc = sd_linear(out->text_embeds, pooled, B, D, m->proj, NULL))) goto oom;
    }
  }
  if (m->stream_weights) {
    sd_tensor_release_pages(m->tok_emb);
    sd_tensor_release_pages(m->pos_emb);
    sd_tensor_release_pages(m->proj);
  }
  goto done;
oom:
  sd_fail(err, rc, "out of memory encoding text");
done:
  sd_free(h);
  sd_free(x);
  sd_free(qkv);
  sd_free(att);
  sd_free(mlp);
  return rc;
}
