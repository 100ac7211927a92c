#include "io/checkpoint_map_sd3.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "io/checkpoint_map_internal.h"

#define MMDIT_PREFIX "model.diffusion_model."
#define VAE_PREFIX "first_stage_model."

int sd_sd3_is_checkpoint(const sd_weights *file) {
  return sd_weights_has_prefix(file, MMDIT_PREFIX "joint_blocks.");
}

/* name = copy of key with its two halves along dim 0 swapped, in the stored
 * dtype: Stability's (shift, scale) AdaLN outputs become diffusers' (scale,
 * shift). */
static int put_swapped_halves(sd_weights *out, const sd_weights *file,
                              const char *key, const char *name, sd_error *err) {
  const sd_tensor *t = sd_weights_get(file, key);
  if (!t || t->ndim < 1 || t->shape[0] % 2)
    return sd_fail(err, SD_ERR_FORMAT,
                   "single-file SD3: %s is not an even-sized AdaLN projection", key);
  sd_tensor *s = sd_tensor_new_dtype(t->dtype, t->ndim, t->shape);
  if (!s) return sd_fail(err, SD_ERR_OOM, "out of memory (mapping %s)", key);
  size_t half = sd_tensor_nbytes(t) / 2;
  memcpy(s->data, (const char *)t->data + half, half);
  memcpy((char *)s->data + half, t->data, half);
  return sd_weights_put_owned(out, name, s, err);
}

/* q, k, v = the three row blocks of a fused qkv weight or bias. */
static int alias_qkv(sd_weights *out, const sd_weights *file, const char *key,
                     const char *const names[3], sd_error *err) {
  const sd_tensor *t = sd_weights_get(file, key);
  if (!t || t->shape[0] % 3)
    return sd_fail(err, SD_ERR_FORMAT,
                   "single-file SD3: %s is not a fused q/k/v projection", key);
  int64_t rows = t->shape[0] / 3;
  for (int i = 0; i < 3; i++) {
    int rc = sd_weights_alias_rows(out, names[i], file, key, i * rows, rows, err);
    if (rc) return rc;
  }
  return SD_OK;
}

/* The renames of one attention: original leaf → diffusers module names. */
typedef struct attn_names {
  const char *q, *k, *v, *proj, *ln_q, *ln_k;
} attn_names;

static const attn_names X_ATTN = {"attn.to_q", "attn.to_k", "attn.to_v",
                                  "attn.to_out.0", "attn.norm_q", "attn.norm_k"};
static const attn_names C_ATTN = {"attn.add_q_proj", "attn.add_k_proj",
                                  "attn.add_v_proj", "attn.to_add_out",
                                  "attn.norm_added_q", "attn.norm_added_k"};
static const attn_names X_ATTN2 = {"attn2.to_q", "attn2.to_k", "attn2.to_v",
                                   "attn2.to_out.0", "attn2.norm_q", "attn2.norm_k"};

/* rest: the part after "joint_blocks.N.{x,context}_block.". */
static int map_block_key(sd_weights *out, const sd_weights *file,
                         const char *key, const char *rest, int block,
                         int is_context, int pre_only, sd_error *err) {
  const char *param = NULL, *s;
  char name[CM_NAME_MAX];
  const attn_names *an = NULL;
  if ((s = cm_after(rest, "attn.")))
    an = is_context ? &C_ATTN : &X_ATTN;
  else if (!is_context && (s = cm_after(rest, "attn2.")))
    an = &X_ATTN2;
  if (an) {
    const char *leaf = NULL, *module = NULL;
    if ((param = cm_after(s, "qkv.")) && cm_is_param(param)) {
      char q[CM_NAME_MAX], k[CM_NAME_MAX], v[CM_NAME_MAX];
      snprintf(q, sizeof q, "transformer_blocks.%d.%s.%s", block, an->q, param);
      snprintf(k, sizeof k, "transformer_blocks.%d.%s.%s", block, an->k, param);
      snprintf(v, sizeof v, "transformer_blocks.%d.%s.%s", block, an->v, param);
      const char *const names[3] = {q, k, v};
      return alias_qkv(out, file, key, names, err);
    }
    if ((leaf = cm_after(s, "proj.")) && cm_is_param(leaf)) module = an->proj;
    else if ((leaf = cm_after(s, "ln_q.")) && strcmp(leaf, "weight") == 0) module = an->ln_q;
    else if ((leaf = cm_after(s, "ln_k.")) && strcmp(leaf, "weight") == 0) module = an->ln_k;
    if (!module) return cm_unexpected("transformer", key, err);
    return cm_alias(out, file, key, err, "transformer_blocks.%d.%s.%s", block, module, leaf);
  }
  if ((param = cm_after(rest, "adaLN_modulation.1.")) && cm_is_param(param)) {
    snprintf(name, sizeof name, "transformer_blocks.%d.%s.linear.%s", block,
             is_context ? "norm1_context" : "norm1", param);
    if (is_context && pre_only) return put_swapped_halves(out, file, key, name, err);
    return sd_weights_alias(out, name, file, key, err);
  }
  const char *ff = is_context ? "ff_context" : "ff";
  if ((param = cm_after(rest, "mlp.fc1.")) && cm_is_param(param))
    return cm_alias(out, file, key, err, "transformer_blocks.%d.%s.net.0.proj.%s", block, ff, param);
  if ((param = cm_after(rest, "mlp.fc2.")) && cm_is_param(param))
    return cm_alias(out, file, key, err, "transformer_blocks.%d.%s.net.2.%s", block, ff, param);
  return cm_unexpected("transformer", key, err);
}

/* Top-level renames (original prefix → diffusers prefix; leaves kept). */
static const char *const TOP_RENAMES[][2] = {
    {"x_embedder.proj.", "pos_embed.proj."},
    {"context_embedder.", "context_embedder."},
    {"t_embedder.mlp.0.", "time_text_embed.timestep_embedder.linear_1."},
    {"t_embedder.mlp.2.", "time_text_embed.timestep_embedder.linear_2."},
    {"y_embedder.mlp.0.", "time_text_embed.text_embedder.linear_1."},
    {"y_embedder.mlp.2.", "time_text_embed.text_embedder.linear_2."},
    {"final_layer.linear.", "proj_out."},
};

static int map_transformer(const sd_weights *file, sd_weights *out, sd_error *err) {
  int n = sd_weights_count(file), blocks = 0;
  for (int i = 0; i < n; i++) {
    const char *s = cm_after(sd_weights_name_at(file, i), MMDIT_PREFIX "joint_blocks.");
    int b = s ? cm_index(&s) : -1;
    if (b + 1 > blocks) blocks = b + 1;
  }
  for (int i = 0; i < n; i++) {
    const char *key = sd_weights_name_at(file, i);
    const char *rest = cm_after(key, MMDIT_PREFIX), *s, *param;
    if (!rest || cm_is_ignored(key)) continue;
    int rc;
    if ((s = cm_after(rest, "joint_blocks."))) {
      int b = cm_index(&s);
      const char *tail;
      if (b < 0) return cm_unexpected("transformer", key, err);
      if ((tail = cm_after(s, "x_block.")))
        rc = map_block_key(out, file, key, tail, b, 0, 0, err);
      else if ((tail = cm_after(s, "context_block.")))
        rc = map_block_key(out, file, key, tail, b, 1, b == blocks - 1, err);
      else
        rc = cm_unexpected("transformer", key, err);
    } else if (strcmp(rest, "pos_embed") == 0) {
      rc = sd_weights_alias(out, "pos_embed.pos_embed", file, key, err);
    } else if ((param = cm_after(rest, "final_layer.adaLN_modulation.1.")) &&
               cm_is_param(param)) {
      char name[CM_NAME_MAX];
      snprintf(name, sizeof name, "norm_out.linear.%s", param);
      rc = put_swapped_halves(out, file, key, name, err);
    } else {
      rc = -1;
      for (size_t r = 0; r < sizeof TOP_RENAMES / sizeof *TOP_RENAMES; r++)
        if ((param = cm_after(rest, TOP_RENAMES[r][0])) && cm_is_param(param)) {
          rc = cm_alias(out, file, key, err, "%s%s", TOP_RENAMES[r][1], param);
          break;
        }
      if (rc < 0) rc = cm_unexpected("transformer", key, err);
    }
    if (rc) return rc;
  }
  if (blocks == 0)
    return sd_fail(err, SD_ERR_FORMAT, "single-file SD3: no joint blocks");
  return SD_OK;
}

int sd_sd3_map_text_encoder(const sd_weights *file, const char *prefix,
                            sd_sd3_encoder kind, sd_weights **out,
                            sd_error *err) {
  *out = sd_weights_new();
  if (!*out) return sd_fail(err, SD_ERR_OOM, "out of memory");
  char tied[CM_NAME_MAX];
  snprintf(tied, sizeof tied, "%sshared.weight", prefix);
  /* T5: encoder.embed_tokens is tied to shared; the diffusers folder stores
   * shared only. */
  int skip_embed_tokens = kind == SD_SD3_T5 && sd_weights_get(file, tied);
  int n = sd_weights_count(file), found = 0, rc = SD_OK;
  for (int i = 0; i < n && !rc; i++) {
    const char *key = sd_weights_name_at(file, i);
    const char *rest = cm_after(key, prefix);
    if (!rest || cm_is_ignored(key)) continue;
    found++;
    if (skip_embed_tokens && strcmp(rest, "encoder.embed_tokens.weight") == 0) continue;
    /* CLIP-L's projection is unused by SD3 (replaced by the identity). */
    if (kind == SD_SD3_CLIP_L && strcmp(rest, "text_projection.weight") == 0) continue;
    rc = sd_weights_alias(*out, rest, file, key, err);
  }
  if (!rc && kind == SD_SD3_CLIP_L && found) {
    const sd_tensor *tok = sd_weights_get(*out, "text_model.embeddings.token_embedding.weight");
    if (!tok) {
      rc = sd_fail(err, SD_ERR_FORMAT, "single-file CLIP-L: token embedding missing");
    } else {
      int64_t D = tok->shape[1];
      sd_tensor *eye = sd_tensor_zeros(2, (int64_t[]){D, D});
      if (!eye) {
        rc = sd_fail(err, SD_ERR_OOM, "out of memory");
      } else {
        for (int64_t d = 0; d < D; d++) sd_f32(eye)[d * D + d] = 1.0f;
        rc = sd_weights_put_owned(*out, "text_projection.weight", eye, err);
      }
    }
  }
  if (!rc && !found)
    rc = sd_fail(err, SD_ERR_FORMAT, "no text encoder tensors under '%s'", prefix);
  if (rc) {
    sd_weights_free(*out);
    *out = NULL;
  }
  return rc;
}

int sd_sd3_transformer_config(const sd_weights *w, cJSON **out, sd_error *err) {
  *out = NULL;
  const sd_tensor *proj = sd_weights_get(w, "pos_embed.proj.weight");
  const sd_tensor *pos = sd_weights_get(w, "pos_embed.pos_embed");
  const sd_tensor *ctx = sd_weights_get(w, "context_embedder.weight");
  const sd_tensor *pooled = sd_weights_get(w, "time_text_embed.text_embedder.linear_1.weight");
  const sd_tensor *po = sd_weights_get(w, "proj_out.weight");
  if (!proj || proj->ndim != 4 || !pos || !ctx || !pooled || !po)
    return sd_fail(err, SD_ERR_FORMAT,
                   "SD3 transformer: patch embedding, context embedder or "
                   "output projection missing");
  int64_t D = proj->shape[0], C = proj->shape[1], P = proj->shape[2];
  int64_t grid = (int64_t)llround(sqrt((double)(sd_tensor_numel(pos) / D)));
  /* Stability's loader: 64 channels per head, one head per block. */
  const int head_dim = 64;
  if (D % head_dim || grid * grid * D != sd_tensor_numel(pos) ||
      po->shape[0] % (P * P))
    return sd_fail(err, SD_ERR_FORMAT, "SD3 transformer: inconsistent shapes "
                   "(hidden %lld, pos_embed %lld entries)", (long long)D,
                   (long long)sd_tensor_numel(pos));
  int layers = 0;
  while (sd_weights_getf(w, "transformer_blocks.%d.norm1.linear.weight", layers)) layers++;
  cJSON *c = cJSON_CreateObject();
  cJSON *dual = c ? cJSON_AddArrayToObject(c, "dual_attention_layers") : NULL;
  if (!dual) {
    cJSON_Delete(c);
    return sd_fail(err, SD_ERR_OOM, "out of memory");
  }
  cJSON_AddStringToObject(c, "_class_name", "SD3Transformer2DModel");
  cJSON_AddNumberToObject(c, "attention_head_dim", head_dim);
  cJSON_AddNumberToObject(c, "num_attention_heads", (double)(D / head_dim));
  cJSON_AddNumberToObject(c, "caption_projection_dim", (double)D);
  cJSON_AddNumberToObject(c, "in_channels", (double)C);
  cJSON_AddNumberToObject(c, "out_channels", (double)(po->shape[0] / (P * P)));
  cJSON_AddNumberToObject(c, "patch_size", (double)P);
  cJSON_AddNumberToObject(c, "num_layers", layers);
  cJSON_AddNumberToObject(c, "joint_attention_dim", (double)ctx->shape[1]);
  cJSON_AddNumberToObject(c, "pooled_projection_dim", (double)pooled->shape[1]);
  cJSON_AddNumberToObject(c, "pos_embed_max_size", (double)grid);
  if (sd_weights_get(w, "transformer_blocks.0.attn.norm_q.weight"))
    cJSON_AddStringToObject(c, "qk_norm", "rms_norm");
  for (int i = 0; i < layers; i++)
    if (sd_weights_getf(w, "transformer_blocks.%d.attn2.to_q.weight", i))
      cJSON_AddItemToArray(dual, cJSON_CreateNumber(i));
  *out = c;
  return SD_OK;
}

int sd_sd3_vae_config(const sd_weights *vae, cJSON **out, sd_error *err) {
  (void)vae;
  cJSON *c = cJSON_CreateObject();
  if (!c) return sd_fail(err, SD_ERR_OOM, "out of memory");
  /* The SD3 / SD3.5 VAE's released config; the rest comes from shapes. */
  cJSON_AddNumberToObject(c, "norm_num_groups", 32);
  cJSON_AddNumberToObject(c, "scaling_factor", 1.5305);
  cJSON_AddNumberToObject(c, "shift_factor", 0.0609);
  cJSON_AddBoolToObject(c, "force_upcast", 1);
  *out = c;
  return SD_OK;
}

void sd_sd3_components_free(sd_sd3_components *c) {
  if (!c) return;
  sd_weights_free(c->transformer);
  sd_weights_free(c->vae);
  sd_weights_free(c->clip_l);
  sd_weights_free(c->clip_g);
  sd_weights_free(c->t5);
  cJSON_Delete(c->transformer_config);
  cJSON_Delete(c->vae_config);
  memset(c, 0, sizeof *c);
}

int sd_sd3_checkpoint_map(const sd_weights *file, sd_sd3_components *out,
                          sd_error *err) {
  memset(out, 0, sizeof *out);
  int rc = SD_OK;
  if (sd_sd3_is_checkpoint(file)) {
    if (!(out->transformer = sd_weights_new())) rc = sd_fail(err, SD_ERR_OOM, "out of memory");
    if (!rc) rc = map_transformer(file, out->transformer, err);
    if (!rc) rc = sd_sd3_transformer_config(out->transformer, &out->transformer_config, err);
  }
  if (!rc && sd_weights_has_prefix(file, VAE_PREFIX)) {
    if (!(out->vae = sd_weights_new())) rc = sd_fail(err, SD_ERR_OOM, "out of memory");
    if (!rc) rc = cm_map_vae(file, VAE_PREFIX, out->vae, err);
    if (!rc) rc = sd_sd3_vae_config(out->vae, &out->vae_config, err);
  }
  static const struct { const char *prefix; sd_sd3_encoder kind; } enc[] = {
      {"text_encoders.clip_l.transformer.", SD_SD3_CLIP_L},
      {"text_encoders.clip_g.transformer.", SD_SD3_CLIP_G},
      {"text_encoders.t5xxl.transformer.", SD_SD3_T5}};
  sd_weights **dst[] = {&out->clip_l, &out->clip_g, &out->t5};
  for (int i = 0; i < 3 && !rc; i++)
    if (sd_weights_has_prefix(file, enc[i].prefix))
      rc = sd_sd3_map_text_encoder(file, enc[i].prefix, enc[i].kind, dst[i], err);
  if (!rc && !out->transformer && !out->vae && !out->clip_l && !out->clip_g && !out->t5)
    rc = sd_fail(err, SD_ERR_UNSUPPORTED, "not an SD3 single-file checkpoint");
  if (rc) sd_sd3_components_free(out);
  return rc;
}
