/* Text encoders: CLIP-L as stored by SD 1.x / SDXL (already Hugging Face
 * names under a prefix) and OpenCLIP (SD 2.x ViT-H, SDXL bigG) → Hugging Face
 * CLIPTextModel(WithProjection) names.
 *
 * OpenCLIP fuses q/k/v into attn.in_proj_weight [3D, D] = cat(q, k, v) (and
 * in_proj_bias [3D]); each third becomes a row view. Its text_projection is
 * a bare [D, P] parameter applied as `x @ P`, the transpose of the
 * nn.Linear weight [P, D] transformers stores, so it is the one tensor
 * copied (transposed, stored dtype kept). */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "io/checkpoint_map_internal.h"

#define NOT_IN_LAYOUT (-1)
#define COUNT(a) ((int)(sizeof(a) / sizeof *(a)))

static const char *const layer_params[] = {
    "layer_norm1.weight",      "layer_norm1.bias",
    "self_attn.q_proj.weight", "self_attn.q_proj.bias",
    "self_attn.k_proj.weight", "self_attn.k_proj.bias",
    "self_attn.v_proj.weight", "self_attn.v_proj.bias",
    "self_attn.out_proj.weight", "self_attn.out_proj.bias",
    "layer_norm2.weight",      "layer_norm2.bias",
    "mlp.fc1.weight",          "mlp.fc1.bias",
    "mlp.fc2.weight",          "mlp.fc2.bias"};
static const char *const model_params[] = {
    "text_model.embeddings.token_embedding.weight",
    "text_model.embeddings.position_embedding.weight",
    "text_model.final_layer_norm.weight", "text_model.final_layer_norm.bias"};

static const char *const open_clip_layer_renames[][2] = {
    {"ln_1.", "layer_norm1."},
    {"ln_2.", "layer_norm2."},
    {"attn.out_proj.", "self_attn.out_proj."},
    {"mlp.c_fc.", "mlp.fc1."},
    {"mlp.c_proj.", "mlp.fc2."},
};

static int is_layer_param(const char *s) {
  for (int i = 0; i < COUNT(layer_params); i++)
    if (strcmp(s, layer_params[i]) == 0) return 1;
  return 0;
}

/* 1 when `name` (diffusers) is a tensor CLIPTextModelWithProjection has. */
static int is_clip_name(const char *name) {
  for (int i = 0; i < COUNT(model_params); i++)
    if (strcmp(name, model_params[i]) == 0) return 1;
  if (strcmp(name, "text_projection.weight") == 0) return 1;
  const char *s = cm_after(name, "text_model.encoder.layers.");
  return s && cm_index(&s) >= 0 && is_layer_param(s);
}

int cm_check_clip(const sd_weights *set, const char *component,
                  int need_projection, sd_error *err) {
  int layers = 0, n = sd_weights_count(set);
  for (int i = 0; i < n; i++) {
    const char *s = cm_after(sd_weights_name_at(set, i), "text_model.encoder.layers.");
    int l = s ? cm_index(&s) : -1;
    if (l + 1 > layers) layers = l + 1;
  }
  int rc = cm_require(set, component, "embeddings / final layer norm", "",
                      model_params, COUNT(model_params), err);
  if (!rc && layers == 0)
    rc = sd_fail(err, SD_ERR_FORMAT, "single-file %s: no encoder layers",
                 component);
  char prefix[CM_NAME_MAX], origin[64];
  for (int l = 0; l < layers && !rc; l++) {
    snprintf(prefix, sizeof prefix, "text_model.encoder.layers.%d.", l);
    snprintf(origin, sizeof origin, "layer %d", l);
    rc = cm_require(set, component, origin, prefix, layer_params,
                    COUNT(layer_params), err);
  }
  static const char *const projection[] = {"text_projection.weight"};
  if (!rc && need_projection)
    rc = cm_require(set, component, "text_projection", "", projection, 1, err);
  return rc;
}

int cm_map_clip_hf(const sd_weights *file, const char *prefix, sd_weights *out,
                   sd_error *err) {
  int n = sd_weights_count(file);
  for (int i = 0; i < n; i++) {
    const char *key = sd_weights_name_at(file, i);
    const char *rest = cm_after(key, prefix);
    if (!rest || cm_is_ignored(key)) continue;
    /* transformers before 4.17 had no text_model level (CLIPTextTransformer
     * at the top): accept both spellings. */
    int bare = !cm_after(rest, "text_model.") &&
               strcmp(rest, "text_projection.weight") != 0;
    char name[CM_NAME_MAX];
    snprintf(name, sizeof name, "%s%s", bare ? "text_model." : "", rest);
    if (!is_clip_name(name)) return cm_unexpected("CLIP text encoder", key, err);
    int rc = sd_weights_alias(out, name, file, key, err);
    if (rc) return rc;
  }
  return cm_check_clip(out, "CLIP text encoder", 0, err);
}

/* Adds the transpose of 2-D `key` as `name`, in the stored dtype. */
static int put_transposed(sd_weights *out, const char *name,
                          const sd_weights *file, const char *key,
                          sd_error *err) {
  const sd_tensor *t = sd_weights_get(file, key);
  if (!t || t->ndim != 2)
    return sd_fail(err, SD_ERR_FORMAT,
                   "single-file OpenCLIP: '%s' is not a 2-D projection", key);
  int64_t rows = t->shape[0], cols = t->shape[1];
  sd_tensor *o = sd_tensor_new_dtype(t->dtype, 2, (int64_t[]){cols, rows});
  if (!o) return sd_fail(err, SD_ERR_OOM, "out of memory transposing '%s'", key);
  /* Byte copies of constant size: safetensors only aligns the data section
   * to the header length, so the source may be misaligned for its type. */
  size_t es = sd_dtype_size(t->dtype);
  const unsigned char *src = t->data;
  unsigned char *dst = o->data;
  if (es == 2) {
    for (int64_t r = 0; r < rows; r++)
      for (int64_t c = 0; c < cols; c++)
        memcpy(dst + 2 * (c * rows + r), src + 2 * (r * cols + c), 2);
  } else if (es == 4) {
    for (int64_t r = 0; r < rows; r++)
      for (int64_t c = 0; c < cols; c++)
        memcpy(dst + 4 * (c * rows + r), src + 4 * (r * cols + c), 4);
  } else {
    sd_tensor_free(o);
    return sd_fail(err, SD_ERR_UNSUPPORTED, "'%s' has unsupported dtype %s", key,
                   sd_dtype_name(t->dtype));
  }
  return sd_weights_put_owned(out, name, o, err);
}

/* Splits a fused [3D, ...] in_proj into q/k/v row views. */
static int split_qkv(sd_weights *out, int layer, const char *param,
                     const sd_weights *file, const char *key, sd_error *err) {
  const sd_tensor *t = sd_weights_get(file, key);
  if (!t || t->ndim < 1 || t->shape[0] % 3 != 0)
    return sd_fail(err, SD_ERR_FORMAT,
                   "single-file OpenCLIP: '%s' is not a fused q/k/v tensor", key);
  int64_t d = t->shape[0] / 3;
  static const char *const parts[] = {"q_proj", "k_proj", "v_proj"};
  for (int p = 0; p < 3; p++) {
    char name[CM_NAME_MAX];
    snprintf(name, sizeof name, "text_model.encoder.layers.%d.self_attn.%s.%s",
             layer, parts[p], param);
    int rc = sd_weights_alias_rows(out, name, file, key, p * d, d, err);
    if (rc) return rc;
  }
  return SD_OK;
}

static int map_open_clip_key(const sd_weights *file, const char *key,
                             const char *rest, int layers, int drop_last_layer,
                             int skip_projection, sd_weights *out, int *ignored,
                             sd_error *err) {
  const char *s;
  if (strcmp(rest, "token_embedding.weight") == 0)
    return cm_alias(out, file, key, err,
                    "text_model.embeddings.token_embedding.weight");
  if (strcmp(rest, "positional_embedding") == 0)
    return cm_alias(out, file, key, err,
                    "text_model.embeddings.position_embedding.weight");
  if ((s = cm_after(rest, "ln_final.")) && cm_is_param(s))
    return cm_alias(out, file, key, err, "text_model.final_layer_norm.%s", s);
  if (strcmp(rest, "text_projection") == 0) {
    if (skip_projection) {
      ++*ignored;
      return SD_OK;
    }
    return put_transposed(out, "text_projection.weight", file, key, err);
  }
  int layer;
  if (!(s = cm_after(rest, "transformer.resblocks.")) || (layer = cm_index(&s)) < 0)
    return NOT_IN_LAYOUT;
  if (drop_last_layer && layer == layers - 1) {
    ++*ignored;
    return SD_OK;
  }
  if (strcmp(s, "attn.in_proj_weight") == 0)
    return split_qkv(out, layer, "weight", file, key, err);
  if (strcmp(s, "attn.in_proj_bias") == 0)
    return split_qkv(out, layer, "bias", file, key, err);
  for (int i = 0; i < COUNT(open_clip_layer_renames); i++) {
    const char *p = cm_after(s, open_clip_layer_renames[i][0]);
    if (p && cm_is_param(p))
      return cm_alias(out, file, key, err, "text_model.encoder.layers.%d.%s%s",
                      layer, open_clip_layer_renames[i][1], p);
  }
  return NOT_IN_LAYOUT;
}

int cm_map_open_clip(const sd_weights *file, const char *prefix,
                     int drop_last_layer, int skip_projection, sd_weights *out,
                     int *ignored, sd_error *err) {
  int layers = 0, n = sd_weights_count(file);
  for (int i = 0; i < n; i++) {
    const char *rest = cm_after(sd_weights_name_at(file, i), prefix);
    const char *s = rest ? cm_after(rest, "transformer.resblocks.") : NULL;
    int l = s ? cm_index(&s) : -1;
    if (l + 1 > layers) layers = l + 1;
  }
  for (int i = 0; i < n; i++) {
    const char *key = sd_weights_name_at(file, i);
    const char *rest = cm_after(key, prefix);
    if (!rest || cm_is_ignored(key)) continue;
    int rc = map_open_clip_key(file, key, rest, layers, drop_last_layer,
                               skip_projection, out, ignored, err);
    if (rc == NOT_IN_LAYOUT) return cm_unexpected("OpenCLIP text encoder", key, err);
    if (rc) return rc;
  }
  return cm_check_clip(out, "OpenCLIP text encoder", !skip_projection, err);
}
