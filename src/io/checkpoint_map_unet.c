/* UNet: LDM names (input_blocks / middle_block / output_blocks) → diffusers
 * (down_blocks / mid_block / up_blocks).
 *
 * LDM numbers the down path as one flat list: input_blocks.0 is conv_in, then
 * each level contributes layers_per_block blocks (resnet at .0, transformer
 * at .1) followed by one downsampler block (.0.op), except the last level.
 * With L levels and n layers per block that is L*(n+1) input blocks. The up
 * path has n+1 blocks per level, the last of each level carrying the
 * upsampler at .1.conv (no attention) or .2.conv (after a transformer at .1).
 * So n is read from the position of the first downsampler and everything
 * else follows; nothing assumes SD 1.5's four levels. */
#include <stdio.h>
#include <string.h>

#include "io/checkpoint_map_internal.h"

static const char *const resnet_renames[][2] = {
    {"in_layers.0.", "norm1."},          {"in_layers.2.", "conv1."},
    {"emb_layers.1.", "time_emb_proj."}, {"out_layers.0.", "norm2."},
    {"out_layers.3.", "conv2."},         {"skip_connection.", "conv_shortcut."},
};

static const char *const top_renames[][2] = {
    {"time_embed.0.", "time_embedding.linear_1."},
    {"time_embed.2.", "time_embedding.linear_2."},
    {"label_emb.0.0.", "add_embedding.linear_1."},
    {"label_emb.0.2.", "add_embedding.linear_2."},
    {"input_blocks.0.0.", "conv_in."},
    {"out.0.", "conv_norm_out."},
    {"out.2.", "conv_out."},
};

/* Inner names of a transformer (Transformer2DModel) are the same on both
 * sides; only their first component is checked. */
static const char *const attention_parts[] = {"norm.", "proj_in.", "proj_out.",
                                              "transformer_blocks."};

static const char *const resnet_params[] = {
    "norm1.weight",         "norm1.bias", "conv1.weight", "conv1.bias",
    "time_emb_proj.weight", "time_emb_proj.bias",
    "norm2.weight",         "norm2.bias", "conv2.weight", "conv2.bias"};
static const char *const attention_params[] = {
    "norm.weight",     "norm.bias",     "proj_in.weight",
    "proj_in.bias",    "proj_out.weight", "proj_out.bias"};
static const char *const transformer_block_params[] = {
    "norm1.weight",          "norm1.bias",
    "attn1.to_q.weight",     "attn1.to_k.weight",
    "attn1.to_v.weight",     "attn1.to_out.0.weight",
    "attn1.to_out.0.bias",   "norm2.weight",
    "norm2.bias",            "attn2.to_q.weight",
    "attn2.to_k.weight",     "attn2.to_v.weight",
    "attn2.to_out.0.weight", "attn2.to_out.0.bias",
    "norm3.weight",          "norm3.bias",
    "ff.net.0.proj.weight",  "ff.net.0.proj.bias",
    "ff.net.2.weight",       "ff.net.2.bias"};
static const char *const conv_params[] = {"weight", "bias"};

#define NOT_IN_LAYOUT (-1)
#define MAX_BLOCKS 16 /* layers_per_block + 1 */

/* Transformer depth of each attention, seen while mapping: highest
 * transformer_blocks index + 1, so a hole in the middle is caught. */
typedef struct unet_depths {
  int down[SD_CHECKPOINT_MAX_LEVELS][MAX_BLOCKS];
  int up[SD_CHECKPOINT_MAX_LEVELS][MAX_BLOCKS];
  int mid;
} unet_depths;
#define COUNT(a) ((int)(sizeof(a) / sizeof *(a)))

int cm_unet_layout(const sd_weights *file, const char *prefix,
                   sd_checkpoint_info *info, sd_error *err) {
  int n_input = 0, n_output = 0, first_down = -1;
  int n = sd_weights_count(file);
  for (int i = 0; i < n; i++) {
    const char *rest = cm_after(sd_weights_name_at(file, i), prefix);
    if (!rest) continue;
    const char *s;
    int b;
    if ((s = cm_after(rest, "input_blocks.")) && (b = cm_index(&s)) >= 0) {
      if (b + 1 > n_input) n_input = b + 1;
      if (cm_after(s, "0.op.") && (first_down < 0 || b < first_down))
        first_down = b;
    } else if ((s = cm_after(rest, "output_blocks.")) && (b = cm_index(&s)) >= 0) {
      if (b + 1 > n_output) n_output = b + 1;
    }
  }
  if (n_input < 2)
    return sd_fail(err, SD_ERR_FORMAT,
                   "single-file UNet: no input_blocks under '%s'", prefix);
  /* The first downsampler follows conv_in and n resnets; with a single
   * level there is none and conv_in + n blocks is the whole list. */
  int per_level = first_down > 0 ? first_down : n_input;
  int layers = per_level - 1;
  if (layers < 1 || n_input % per_level != 0)
    return sd_fail(err, SD_ERR_FORMAT,
                   "single-file UNet: %d input_blocks do not form levels of "
                   "%d resnets + downsampler (first downsampler at "
                   "input_blocks.%d)",
                   n_input, layers, first_down);
  int levels = n_input / per_level;
  if (per_level > MAX_BLOCKS)
    return sd_fail(err, SD_ERR_UNSUPPORTED,
                   "single-file UNet: %d layers per block (at most %d supported)",
                   layers, MAX_BLOCKS - 1);
  if (levels > SD_CHECKPOINT_MAX_LEVELS)
    return sd_fail(err, SD_ERR_UNSUPPORTED,
                   "single-file UNet: %d levels (at most %d supported)", levels,
                   SD_CHECKPOINT_MAX_LEVELS);
  if (n_output != n_input)
    return sd_fail(err, SD_ERR_FORMAT,
                   "single-file UNet: %d input_blocks but %d output_blocks "
                   "(expected output_blocks.0 to output_blocks.%d)",
                   n_input, n_output, n_input - 1);

  info->unet_levels = levels;
  info->unet_layers_per_block = layers;
  memset(info->unet_level_attention, 0, sizeof info->unet_level_attention);
  for (int i = 0; i < n; i++) {
    const char *rest = cm_after(sd_weights_name_at(file, i), prefix);
    const char *s = rest ? cm_after(rest, "input_blocks.") : NULL;
    int b = s ? cm_index(&s) : -1;
    if (b < 1 || (b - 1) % per_level != 0 || !(s = cm_after(s, "1.transformer_blocks.")))
      continue;
    int depth = cm_index(&s) + 1;
    int level = (b - 1) / per_level;
    if (depth > info->unet_level_attention[level])
      info->unet_level_attention[level] = depth;
  }
  return SD_OK;
}

/* Renames a resnet tail ("in_layers.0.weight" → "norm1.weight"). */
static const char *resnet_tail(const char *tail, const char **param) {
  for (int i = 0; i < COUNT(resnet_renames); i++) {
    const char *p = cm_after(tail, resnet_renames[i][0]);
    if (p && cm_is_param(p)) {
      *param = p;
      return resnet_renames[i][1];
    }
  }
  return NULL;
}

/* 1 when tail names a part of a transformer; raises *depth past the
 * transformer block it belongs to, if any. */
static int is_attention_tail(const char *tail, int *depth) {
  for (int i = 0; i < COUNT(attention_parts); i++)
    if (cm_after(tail, attention_parts[i])) {
      const char *s = cm_after(tail, "transformer_blocks.");
      int k = s ? cm_index(&s) : -1;
      if (k + 1 > *depth) *depth = k + 1;
      return 1;
    }
  return 0;
}

static int is_conv_tail(const char *tail) {
  const char *p = cm_after(tail, "conv.");
  return p && cm_is_param(p);
}

/* Maps one key (after the UNet prefix) into out. Returns NOT_IN_LAYOUT when
 * the key does not fit the layout, else the status of adding it. */
static int map_key(const sd_weights *file, const char *key, const char *rest,
                   int per_level, sd_weights *out, unet_depths *depths,
                   sd_error *err) {
  const char *s, *param;
  for (int i = 0; i < COUNT(top_renames); i++)
    if ((s = cm_after(rest, top_renames[i][0])) && cm_is_param(s))
      return cm_alias(out, file, key, err, "%s%s", top_renames[i][1], s);

  int b, m;
  if ((s = cm_after(rest, "input_blocks.")) && (b = cm_index(&s)) >= 1 &&
      (m = cm_index(&s)) >= 0) {
    int level = (b - 1) / per_level, j = (b - 1) % per_level;
    if (j == per_level - 1) { /* downsampler slot */
      const char *p = m == 0 ? cm_after(s, "op.") : NULL;
      if (!p || !cm_is_param(p)) return NOT_IN_LAYOUT;
      return cm_alias(out, file, key, err,
                      "down_blocks.%d.downsamplers.0.conv.%s", level, p);
    }
    if (m == 0 && resnet_tail(s, &param))
      return cm_alias(out, file, key, err, "down_blocks.%d.resnets.%d.%s%s",
                      level, j, resnet_tail(s, &param), param);
    if (m == 1 && is_attention_tail(s, &depths->down[level][j]))
      return cm_alias(out, file, key, err, "down_blocks.%d.attentions.%d.%s",
                      level, j, s);
    return NOT_IN_LAYOUT;
  }
  if ((s = cm_after(rest, "middle_block.")) && (m = cm_index(&s)) >= 0) {
    if ((m == 0 || m == 2) && resnet_tail(s, &param))
      return cm_alias(out, file, key, err, "mid_block.resnets.%d.%s%s", m / 2,
                      resnet_tail(s, &param), param);
    if (m == 1 && is_attention_tail(s, &depths->mid))
      return cm_alias(out, file, key, err, "mid_block.attentions.0.%s", s);
    return NOT_IN_LAYOUT;
  }
  if ((s = cm_after(rest, "output_blocks.")) && (b = cm_index(&s)) >= 0 &&
      (m = cm_index(&s)) >= 0) {
    int level = b / per_level, j = b % per_level;
    if (m == 0 && resnet_tail(s, &param))
      return cm_alias(out, file, key, err, "up_blocks.%d.resnets.%d.%s%s", level,
                      j, resnet_tail(s, &param), param);
    if ((m == 1 || m == 2) && is_conv_tail(s) && j == per_level - 1)
      return cm_alias(out, file, key, err, "up_blocks.%d.upsamplers.0.%s", level,
                      s);
    if (m == 1 && is_attention_tail(s, &depths->up[level][j]))
      return cm_alias(out, file, key, err, "up_blocks.%d.attentions.%d.%s",
                      level, j, s);
    return NOT_IN_LAYOUT;
  }
  return NOT_IN_LAYOUT;
}

/* Checks one transformer (attention) in diffusers names: its own params and
 * every transformer block up to the highest one present. */
static int check_attention(const sd_weights *set, const char *prefix,
                           const char *origin, int depth, sd_error *err) {
  int rc = cm_require(set, "UNet", origin, prefix, attention_params,
                      COUNT(attention_params), err);
  char block[CM_NAME_MAX];
  if (depth == 0) depth = 1; /* a transformer needs at least one block */
  for (int k = 0; k < depth && !rc; k++) {
    snprintf(block, sizeof block, "%stransformer_blocks.%d.", prefix, k);
    rc = cm_require(set, "UNet", origin, block, transformer_block_params,
                    COUNT(transformer_block_params), err);
  }
  return rc;
}

static int has_attention(const sd_weights *set, const char *prefix) {
  char block[CM_NAME_MAX];
  snprintf(block, sizeof block, "%stransformer_blocks.0.", prefix);
  return cm_has_any(set, prefix, attention_params, COUNT(attention_params)) ||
         cm_has_any(set, block, transformer_block_params,
                    COUNT(transformer_block_params));
}

/* Every block the detected layout implies must be complete. */
static int check_unet(const sd_weights *set, const sd_checkpoint_info *info,
                      const unet_depths *depths, sd_error *err) {
  int levels = info->unet_levels, layers = info->unet_layers_per_block;
  int per_level = layers + 1;
  char prefix[CM_NAME_MAX], origin[64];
  static const char *const top[] = {
      "conv_in.weight",  "conv_in.bias",
      "time_embedding.linear_1.weight", "time_embedding.linear_1.bias",
      "time_embedding.linear_2.weight", "time_embedding.linear_2.bias",
      "conv_norm_out.weight", "conv_norm_out.bias",
      "conv_out.weight", "conv_out.bias"};
  static const char *const add_embedding[] = {
      "add_embedding.linear_1.weight", "add_embedding.linear_1.bias",
      "add_embedding.linear_2.weight", "add_embedding.linear_2.bias"};
  int rc = cm_require(set, "UNet", "input_blocks.0 / time_embed / out", "", top,
                      COUNT(top), err);
  if (!rc && cm_has_any(set, "", add_embedding, COUNT(add_embedding)))
    rc = cm_require(set, "UNet", "label_emb", "", add_embedding,
                    COUNT(add_embedding), err);

  int any_attention = 0;
  for (int l = 0; l < levels && !rc; l++) {
    int down_attn = 0, up_attn = 0;
    for (int j = 0; j < per_level; j++) {
      snprintf(prefix, sizeof prefix, "down_blocks.%d.attentions.%d.", l, j);
      down_attn |= has_attention(set, prefix);
      snprintf(prefix, sizeof prefix, "up_blocks.%d.attentions.%d.",
               levels - 1 - l, j);
      up_attn |= has_attention(set, prefix);
    }
    if (down_attn || up_attn) any_attention = 1;
    for (int j = 0; j < layers && !rc; j++) {
      snprintf(origin, sizeof origin, "input_blocks.%d.0", l * per_level + j + 1);
      snprintf(prefix, sizeof prefix, "down_blocks.%d.resnets.%d.", l, j);
      rc = cm_require(set, "UNet", origin, prefix, resnet_params,
                      COUNT(resnet_params), err);
      if (!rc && (down_attn || up_attn)) {
        snprintf(origin, sizeof origin, "input_blocks.%d.1", l * per_level + j + 1);
        snprintf(prefix, sizeof prefix, "down_blocks.%d.attentions.%d.", l, j);
        rc = check_attention(set, prefix, origin, depths->down[l][j], err);
      }
    }
    if (!rc && l < levels - 1) {
      snprintf(origin, sizeof origin, "input_blocks.%d.0.op", (l + 1) * per_level);
      snprintf(prefix, sizeof prefix, "down_blocks.%d.downsamplers.0.conv.", l);
      rc = cm_require(set, "UNet", origin, prefix, conv_params, 2, err);
    }
    int u = levels - 1 - l; /* up level mirroring down level l */
    for (int j = 0; j < per_level && !rc; j++) {
      snprintf(origin, sizeof origin, "output_blocks.%d.0", u * per_level + j);
      snprintf(prefix, sizeof prefix, "up_blocks.%d.resnets.%d.", u, j);
      rc = cm_require(set, "UNet", origin, prefix, resnet_params,
                      COUNT(resnet_params), err);
      if (!rc && (down_attn || up_attn)) {
        snprintf(origin, sizeof origin, "output_blocks.%d.1", u * per_level + j);
        snprintf(prefix, sizeof prefix, "up_blocks.%d.attentions.%d.", u, j);
        rc = check_attention(set, prefix, origin, depths->up[u][j], err);
      }
    }
    if (!rc && u < levels - 1) {
      snprintf(origin, sizeof origin, "output_blocks.%d.%d.conv",
               u * per_level + layers, down_attn || up_attn ? 2 : 1);
      snprintf(prefix, sizeof prefix, "up_blocks.%d.upsamplers.0.conv.", u);
      rc = cm_require(set, "UNet", origin, prefix, conv_params, 2, err);
    }
  }
  for (int r = 0; r < 2 && !rc; r++) {
    snprintf(origin, sizeof origin, "middle_block.%d", 2 * r);
    snprintf(prefix, sizeof prefix, "mid_block.resnets.%d.", r);
    rc = cm_require(set, "UNet", origin, prefix, resnet_params,
                    COUNT(resnet_params), err);
  }
  if (!rc && (any_attention || has_attention(set, "mid_block.attentions.0.")))
    rc = check_attention(set, "mid_block.attentions.0.", "middle_block.1",
                         depths->mid, err);
  return rc;
}

int cm_map_unet(const sd_weights *file, const char *prefix,
                const sd_checkpoint_info *info, sd_weights *out, sd_error *err) {
  int per_level = info->unet_layers_per_block + 1;
  int n = sd_weights_count(file);
  unet_depths depths;
  memset(&depths, 0, sizeof depths);
  for (int i = 0; i < n; i++) {
    const char *key = sd_weights_name_at(file, i);
    const char *rest = cm_after(key, prefix);
    if (!rest || cm_is_ignored(key)) continue;
    int rc = map_key(file, key, rest, per_level, out, &depths, err);
    if (rc == NOT_IN_LAYOUT) return cm_unexpected("UNet", key, err);
    if (rc) return rc;
  }
  return check_unet(out, info, &depths, err);
}
