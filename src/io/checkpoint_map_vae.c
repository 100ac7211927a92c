/* VAE: LDM AutoencoderKL names → diffusers AutoencoderKL.
 *
 * Two quirks beyond renaming: the LDM decoder numbers its levels from the
 * lowest resolution up (decoder.up.(L-1) runs first), diffusers in execution
 * order, so up.B becomes up_blocks.(L-1-B); and the mid-block attention's
 * q/k/v/proj_out are 1x1 convs [C, C, 1, 1] where diffusers has linears
 * [C, C]: same bytes, so the alias is reshaped to 2-D in place. */
#include <stdio.h>
#include <string.h>

#include "io/checkpoint_map_internal.h"

#define NOT_IN_LAYOUT (-1)
#define COUNT(a) ((int)(sizeof(a) / sizeof *(a)))

static const char *const resnet_renames[][2] = {
    {"norm1.", "norm1."}, {"conv1.", "conv1."}, {"norm2.", "norm2."},
    {"conv2.", "conv2."}, {"nin_shortcut.", "conv_shortcut."},
};
static const char *const attention_renames[][2] = {
    {"norm.", "group_norm."}, {"q.", "to_q."}, {"k.", "to_k."},
    {"v.", "to_v."},          {"proj_out.", "to_out.0."},
};
static const char *const side_renames[][2] = {
    {"conv_in.", "conv_in."}, {"conv_out.", "conv_out."},
    {"norm_out.", "conv_norm_out."},
};

static const char *const resnet_params[] = {
    "norm1.weight", "norm1.bias", "conv1.weight", "conv1.bias",
    "norm2.weight", "norm2.bias", "conv2.weight", "conv2.bias"};
static const char *const attention_params[] = {
    "group_norm.weight", "group_norm.bias", "to_q.weight",    "to_q.bias",
    "to_k.weight",       "to_k.bias",       "to_v.weight",    "to_v.bias",
    "to_out.0.weight",   "to_out.0.bias"};
static const char *const side_params[] = {
    "conv_in.weight",       "conv_in.bias",       "conv_out.weight",
    "conv_out.bias",        "conv_norm_out.weight", "conv_norm_out.bias"};
static const char *const conv_params[] = {"weight", "bias"};

static const char *rename_tail(const char *tail, const char *const (*table)[2],
                          int count, const char **param) {
  for (int i = 0; i < count; i++) {
    const char *p = cm_after(tail, table[i][0]);
    if (p && cm_is_param(p)) {
      *param = p;
      return table[i][1];
    }
  }
  return NULL;
}

/* Drops the trailing 1x1 of a conv weight so the alias has a linear's shape.
 * The set hands out a const view, but the entry is this set's own copy of
 * the view struct (the mapped bytes are untouched), so changing its shape is
 * safe; done right after adding it, before the set grows again. */
static int reshape_to_linear(sd_weights *out, const char *name, sd_error *err) {
  sd_tensor *t = (sd_tensor *)sd_weights_get(out, name);
  if (!t) return sd_fail(err, SD_ERR_ARG, "tensor '%s' not found", name);
  for (int d = 2; d < t->ndim; d++)
    if (t->shape[d] != 1)
      return sd_fail(err, SD_ERR_FORMAT,
                     "single-file VAE: attention weight '%s' is not a 1x1 "
                     "conv or linear",
                     name);
  if (t->ndim < 2)
    return sd_fail(err, SD_ERR_FORMAT,
                   "single-file VAE: attention weight '%s' has %d dims", name,
                   t->ndim);
  t->ndim = 2;
  return SD_OK;
}

typedef struct vae_extent {
  int down_levels, down_resnets; /* encoder.down.I.block.J: max I+1, J+1 */
  int up_levels, up_resnets;     /* decoder.up.B.block.J */
} vae_extent;

static void scan_extent(const sd_weights *file, const char *prefix,
                        vae_extent *e) {
  memset(e, 0, sizeof *e);
  int n = sd_weights_count(file);
  for (int i = 0; i < n; i++) {
    const char *rest = cm_after(sd_weights_name_at(file, i), prefix), *s;
    int level, block;
    int *levels = NULL, *resnets = NULL;
    if (!rest) continue;
    if ((s = cm_after(rest, "encoder.down."))) {
      levels = &e->down_levels;
      resnets = &e->down_resnets;
    } else if ((s = cm_after(rest, "decoder.up."))) {
      levels = &e->up_levels;
      resnets = &e->up_resnets;
    } else {
      continue;
    }
    if ((level = cm_index(&s)) < 0) continue;
    if (level + 1 > *levels) *levels = level + 1;
    if ((s = cm_after(s, "block.")) && (block = cm_index(&s)) >= 0 &&
        block + 1 > *resnets)
      *resnets = block + 1;
  }
}

static int map_key(const sd_weights *file, const char *key, const char *rest,
                   const vae_extent *e, sd_weights *out, sd_error *err) {
  const char *s, *param, *to;
  if ((s = cm_after(rest, "quant_conv.")) && cm_is_param(s))
    return cm_alias(out, file, key, err, "quant_conv.%s", s);
  if ((s = cm_after(rest, "post_quant_conv.")) && cm_is_param(s))
    return cm_alias(out, file, key, err, "post_quant_conv.%s", s);

  const char *side = NULL;
  if ((s = cm_after(rest, "encoder.")))
    side = "encoder";
  else if ((s = cm_after(rest, "decoder.")))
    side = "decoder";
  else
    return NOT_IN_LAYOUT;

  if ((to = rename_tail(s, side_renames, COUNT(side_renames), &param)))
    return cm_alias(out, file, key, err, "%s.%s%s", side, to, param);

  const char *m;
  int k, level;
  if ((m = cm_after(s, "mid.block_")) && (k = cm_index(&m)) >= 1 && k <= 2 &&
      (to = rename_tail(m, resnet_renames, COUNT(resnet_renames), &param)))
    return cm_alias(out, file, key, err, "%s.mid_block.resnets.%d.%s%s", side,
                    k - 1, to, param);
  if ((m = cm_after(s, "mid.attn_1.")) &&
      (to = rename_tail(m, attention_renames, COUNT(attention_renames), &param))) {
    char name[CM_NAME_MAX];
    snprintf(name, sizeof name, "%s.mid_block.attentions.0.%s%s", side, to, param);
    int rc = sd_weights_alias(out, name, file, key, err);
    if (!rc && strcmp(param, "weight") == 0 && strcmp(to, "group_norm.") != 0)
      rc = reshape_to_linear(out, name, err);
    return rc;
  }

  int is_encoder = side[0] == 'e';
  m = cm_after(s, is_encoder ? "down." : "up.");
  if (!m || (level = cm_index(&m)) < 0) return NOT_IN_LAYOUT;
  /* diffusers runs the decoder levels in the opposite order */
  int target = is_encoder ? level : e->up_levels - 1 - level;
  const char *sampler = is_encoder ? "downsample.conv." : "upsample.conv.";
  const char *p;
  if ((p = cm_after(m, sampler)) && cm_is_param(p))
    return cm_alias(out, file, key, err, "%s.%s_blocks.%d.%s.0.conv.%s", side,
                    is_encoder ? "down" : "up", target,
                    is_encoder ? "downsamplers" : "upsamplers", p);
  if ((m = cm_after(m, "block.")) && (k = cm_index(&m)) >= 0 &&
      (to = rename_tail(m, resnet_renames, COUNT(resnet_renames), &param)))
    return cm_alias(out, file, key, err, "%s.%s_blocks.%d.resnets.%d.%s%s", side,
                    is_encoder ? "down" : "up", target, k, to, param);
  return NOT_IN_LAYOUT;
}

static int check_side(const sd_weights *set, const char *side, int levels,
                      int resnets, sd_error *err) {
  char prefix[CM_NAME_MAX], origin[96];
  int is_encoder = side[0] == 'e';
  snprintf(prefix, sizeof prefix, "%s.", side);
  snprintf(origin, sizeof origin, "%s.conv_in / conv_out / norm_out", side);
  int rc = cm_require(set, "VAE", origin, prefix, side_params,
                      COUNT(side_params), err);
  if (!rc && levels == 0)
    rc = sd_fail(err, SD_ERR_FORMAT, "single-file VAE: no %s.%s.* blocks", side,
                 is_encoder ? "down" : "up");
  for (int l = 0; l < levels && !rc; l++) {
    int original = is_encoder ? l : levels - 1 - l;
    for (int j = 0; j < resnets && !rc; j++) {
      snprintf(origin, sizeof origin, "%s.%s.%d.block.%d", side,
               is_encoder ? "down" : "up", original, j);
      snprintf(prefix, sizeof prefix, "%s.%s_blocks.%d.resnets.%d.", side,
               is_encoder ? "down" : "up", l, j);
      rc = cm_require(set, "VAE", origin, prefix, resnet_params,
                      COUNT(resnet_params), err);
    }
    if (!rc && l < levels - 1) {
      snprintf(origin, sizeof origin, "%s.%s.%d.%s", side,
               is_encoder ? "down" : "up", original,
               is_encoder ? "downsample.conv" : "upsample.conv");
      snprintf(prefix, sizeof prefix, "%s.%s_blocks.%d.%s.0.conv.", side,
               is_encoder ? "down" : "up", l,
               is_encoder ? "downsamplers" : "upsamplers");
      rc = cm_require(set, "VAE", origin, prefix, conv_params, 2, err);
    }
  }
  for (int r = 0; r < 2 && !rc; r++) {
    snprintf(origin, sizeof origin, "%s.mid.block_%d", side, r + 1);
    snprintf(prefix, sizeof prefix, "%s.mid_block.resnets.%d.", side, r);
    rc = cm_require(set, "VAE", origin, prefix, resnet_params,
                    COUNT(resnet_params), err);
  }
  if (!rc) {
    snprintf(origin, sizeof origin, "%s.mid.attn_1", side);
    snprintf(prefix, sizeof prefix, "%s.mid_block.attentions.0.", side);
    rc = cm_require(set, "VAE", origin, prefix, attention_params,
                    COUNT(attention_params), err);
  }
  return rc;
}

int cm_map_vae(const sd_weights *file, const char *prefix, sd_weights *out,
               sd_error *err) {
  vae_extent e;
  scan_extent(file, prefix, &e);
  int n = sd_weights_count(file);
  for (int i = 0; i < n; i++) {
    const char *key = sd_weights_name_at(file, i);
    const char *rest = cm_after(key, prefix);
    if (!rest || cm_is_ignored(key)) continue;
    int rc = map_key(file, key, rest, &e, out, err);
    if (rc == NOT_IN_LAYOUT) return cm_unexpected("VAE", key, err);
    if (rc) return rc;
  }
  if (e.down_levels != e.up_levels)
    return sd_fail(err, SD_ERR_FORMAT,
                   "single-file VAE: encoder has %d levels, decoder %d",
                   e.down_levels, e.up_levels);
  int rc = check_side(out, "encoder", e.down_levels, e.down_resnets, err);
  if (!rc) rc = check_side(out, "decoder", e.up_levels, e.up_resnets, err);
  /* SD3's VAE has no quant convs; SD 1.x/XL have both. */
  int quant = sd_weights_get(out, "quant_conv.weight") ||
              sd_weights_get(out, "quant_conv.bias") ||
              sd_weights_get(out, "post_quant_conv.weight") ||
              sd_weights_get(out, "post_quant_conv.bias");
  if (!rc && quant)
    rc = cm_require(out, "VAE", "quant_conv", "quant_conv.", conv_params, 2, err);
  if (!rc && quant)
    rc = cm_require(out, "VAE", "post_quant_conv", "post_quant_conv.",
                    conv_params, 2, err);
  return rc;
}
