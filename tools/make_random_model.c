/* make_random_model: full-size random-weight models for benchmarks.
 *
 *   make_random_model --arch sd15|sdxl|sdxl-refiner|sd35-medium|sd35-large|
 *                            sd-turbo|lcm-sd15|taesd|taesdxl|taesd3
 *                     --layout folder|single|both --out DIR
 *                     [--dtype f16|bf16|f32] [--seed N] [--verify]
 *
 * Writes a model with the sizes, config fields and tensor names of the real
 * release: a diffusers folder (DIR/<arch>/: model_index.json, scheduler/,
 * unet/ or transformer/, vae/, text_encoder*; SD3.5's transformer and T5
 * sharded like the releases) and/or a single file (DIR/<arch>.safetensors,
 * original LDM / sgm / OpenCLIP / MMDiT key names; for SD3.5 Stability's
 * layout, MMDiT + VAE, with the encoders as DIR/text_encoders/{clip_l,
 * clip_g,t5xxl_fp16}.safetensors).
 * Tokenizer folders are NOT written: pass the tokenizer files to the
 * generator with --tokenizers (clip/vocab.json, clip/merges.txt, t5/...).
 *
 * Values are seeded normals (4096-point table) scaled like a sane init (std 1/sqrt(fan_in),
 * norm gammas 1, betas 0, biases std 0.01, embeddings std 0.02) so
 * activations stay finite through a full pipeline; they are a function of
 * (seed, component, diffusers name, element index) only, so the folder and
 * the single file hold the same numbers whatever the write order or thread
 * count. Files are streamed tensor by tensor (the SD3.5 Large transformer
 * alone is 16 GB in BF16): memory stays at one tensor.
 *
 * The single file is the inverse of io/checkpoint_map*.c: every tensor is
 * emitted with both its diffusers name and its original key (fused OpenCLIP
 * q/k/v are grouped back into in_proj_*, MMDiT q/k/v into qkv, the OpenCLIP
 * projection is stored transposed, VAE mid attention as 1x1 convs, the
 * MMDiT's pre-only and final adaLN with their halves swapped). --verify maps the written
 * single file back with the project's mapper and checks every tensor
 * against the folder (names, shapes and bytes when both layouts exist), and
 * loads the models with the project's loaders. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/status.h"
#include "io/checkpoint_map.h"
#include "io/checkpoint_map_sd3.h"
#include "io/model_dir.h"
#include "io/residency.h"
#include "io/safetensors.h"
#include "io/safetensors_stream.h"
#include "models/clip_text.h"
#include "models/mmdit.h"
#include "models/t5_encoder.h"
#include "models/unet.h"
#include "models/vae.h"
#include "pipeline/unet_pipeline.h"
#include "random_model_configs.h"

/* Names are built in fixed buffers of 160-224 bytes; the longest real name is
 * under 110 (SDXL up_blocks.0.attentions.2.transformer_blocks.9.attn2.to_out.0
 * .weight plus prefix), and --verify would catch a truncated one. */
#pragma GCC diagnostic ignored "-Wformat-truncation"

/* ---- tensor lists ---- */

typedef struct gen_tensor {
  char name[160];       /* diffusers / transformers name in its component */
  char orig[200];       /* single-file key, "" when not in the single file */
  int ndim;
  int64_t shape[4];
  int orig_ndim;        /* shape under the original key (same bytes) */
  int64_t orig_shape[4];
  int transposed;       /* the original stores the 2-D transpose */
  int swap_halves;      /* the original stores the two dim-0 halves swapped */
  int identity;         /* folder value is the identity matrix; the single
                           file keeps the seeded normals (SD3's CLIP-L) */
  const char *orig2;    /* a second single-file key with the same values */
} gen_tensor;

typedef struct component {
  const char *dir;      /* "unet", "vae", "text_encoder", ... */
  const char *file;     /* weights file name inside dir */
  const char *config;   /* config.json text */
  gen_tensor *t;
  int n, cap;
  int oom;
  int64_t max_shard_bytes;  /* folder file split like save_pretrained; 0: one file */
  const char *single_name;  /* own single file (SD3 encoders), NULL: the main one */
} component;

#define MAX_COMPONENTS 6

typedef struct model_spec {
  const char *arch;
  component comp[MAX_COMPONENTS];
  int ncomp;
  const char *model_index;
  const char *scheduler;
  sd_dtype dtype;
  sd_dtype transformer_dtype; /* SD3.5 ships its transformer in BF16 */
  uint64_t seed;
} model_spec;

static void add(component *c, const char *name, const char *orig, int ndim,
                const int64_t *shape) {
  if (c->oom) return;
  if (c->n == c->cap) {
    int cap = c->cap ? 2 * c->cap : 512;
    gen_tensor *t = sd_alloc(sizeof *t * cap);
    if (!t) {
      c->oom = 1;
      return;
    }
    if (c->n) memcpy(t, c->t, sizeof *t * c->n);
    sd_free(c->t);
    c->t = t;
    c->cap = cap;
  }
  gen_tensor *g = &c->t[c->n++];
  memset(g, 0, sizeof *g);
  snprintf(g->name, sizeof g->name, "%s", name);
  snprintf(g->orig, sizeof g->orig, "%s", orig ? orig : "");
  g->ndim = g->orig_ndim = ndim;
  for (int d = 0; d < ndim; d++) g->shape[d] = g->orig_shape[d] = shape[d];
}

/* One parameter: `dn` / `on` are the diffusers / original module prefixes
 * (on NULL: not in the single file), `param` "weight" or "bias". */
static gen_tensor *param(component *c, const char *dn, const char *on,
                         const char *param_name, int ndim, int64_t a, int64_t b,
                         int64_t k1, int64_t k2) {
  char name[192], orig[224];
  snprintf(name, sizeof name, "%s.%s", dn, param_name);
  if (on) snprintf(orig, sizeof orig, "%s.%s", on, param_name);
  int64_t shape[4] = {a, b, k1, k2};
  add(c, name, on ? orig : NULL, ndim, shape);
  return c->oom ? NULL : &c->t[c->n - 1];
}

static void linear(component *c, const char *dn, const char *on, int64_t out,
                   int64_t in, int bias) {
  param(c, dn, on, "weight", 2, out, in, 0, 0);
  if (bias) param(c, dn, on, "bias", 1, out, 0, 0, 0);
}

static void conv(component *c, const char *dn, const char *on, int64_t out,
                 int64_t in, int64_t k) {
  param(c, dn, on, "weight", 4, out, in, k, k);
  param(c, dn, on, "bias", 1, out, 0, 0, 0);
}

static void norm(component *c, const char *dn, const char *on, int64_t ch,
                 int bias) {
  param(c, dn, on, "weight", 1, ch, 0, 0, 0);
  if (bias) param(c, dn, on, "bias", 1, ch, 0, 0, 0);
}

/* "%s.%s" joins of a prefix and a suffix into a fixed buffer. */
typedef struct names {
  char d[192], o[224];
} names;

static const char *jd(names *n, const char *a, const char *b) {
  snprintf(n->d, sizeof n->d, "%s.%s", a, b);
  return n->d;
}
static const char *jo(names *n, const char *a, const char *b) {
  if (!a) return NULL;
  snprintf(n->o, sizeof n->o, "%s.%s", a, b);
  return n->o;
}

/* ---- UNet2DConditionModel (diffusers names + LDM names) ---- */

typedef struct unet_shape {
  int levels;
  int block_out[4];
  int has_attention[4];
  int depth[4];        /* transformer_layers_per_block */
  int layers_per_block;
  int cross_dim;
  int linear_projection;
  int add_in_dim;      /* 0: no add_embedding (SD 1.x) */
} unet_shape;

static void unet_resnet(component *c, const char *dp, const char *op, int in,
                        int out, int temb) {
  names n;
  norm(c, jd(&n, dp, "norm1"), jo(&n, op, "in_layers.0"), in, 1);
  conv(c, jd(&n, dp, "conv1"), jo(&n, op, "in_layers.2"), out, in, 3);
  linear(c, jd(&n, dp, "time_emb_proj"), jo(&n, op, "emb_layers.1"), out, temb, 1);
  norm(c, jd(&n, dp, "norm2"), jo(&n, op, "out_layers.0"), out, 1);
  conv(c, jd(&n, dp, "conv2"), jo(&n, op, "out_layers.3"), out, out, 3);
  if (in != out)
    conv(c, jd(&n, dp, "conv_shortcut"), jo(&n, op, "skip_connection"), out, in, 1);
}

/* Transformer2DModel: inner names are the same on both sides. */
static void unet_transformer(component *c, const char *dp, const char *op,
                             int ch, int depth, int cross, int linear_proj) {
  names n;
  norm(c, jd(&n, dp, "norm"), jo(&n, op, "norm"), ch, 1);
  if (linear_proj)
    linear(c, jd(&n, dp, "proj_in"), jo(&n, op, "proj_in"), ch, ch, 1);
  else
    conv(c, jd(&n, dp, "proj_in"), jo(&n, op, "proj_in"), ch, ch, 1);
  for (int k = 0; k < depth; k++) {
    char bd[192], bo[224];
    snprintf(bd, sizeof bd, "%s.transformer_blocks.%d", dp, k);
    snprintf(bo, sizeof bo, "%s.transformer_blocks.%d", op, k);
    static const char *const norms[] = {"norm1", "norm2", "norm3"};
    for (int i = 0; i < 3; i++) norm(c, jd(&n, bd, norms[i]), jo(&n, bo, norms[i]), ch, 1);
    for (int a = 1; a <= 2; a++) {
      char ad[200], ao[232], s[32];
      snprintf(s, sizeof s, "attn%d", a);
      snprintf(ad, sizeof ad, "%s.%s", bd, s);
      snprintf(ao, sizeof ao, "%s.%s", bo, s);
      int kv_in = a == 1 ? ch : cross;
      linear(c, jd(&n, ad, "to_q"), jo(&n, ao, "to_q"), ch, ch, 0);
      linear(c, jd(&n, ad, "to_k"), jo(&n, ao, "to_k"), ch, kv_in, 0);
      linear(c, jd(&n, ad, "to_v"), jo(&n, ao, "to_v"), ch, kv_in, 0);
      linear(c, jd(&n, ad, "to_out.0"), jo(&n, ao, "to_out.0"), ch, ch, 1);
    }
    /* GEGLU: one projection to 2 x (4 ch) */
    linear(c, jd(&n, bd, "ff.net.0.proj"), jo(&n, bo, "ff.net.0.proj"), 8 * ch, ch, 1);
    linear(c, jd(&n, bd, "ff.net.2"), jo(&n, bo, "ff.net.2"), ch, 4 * ch, 1);
  }
  if (linear_proj)
    linear(c, jd(&n, dp, "proj_out"), jo(&n, op, "proj_out"), ch, ch, 1);
  else
    conv(c, jd(&n, dp, "proj_out"), jo(&n, op, "proj_out"), ch, ch, 1);
}

/* LDM numbering: input_blocks.0 is conv_in, each level then holds
 * layers_per_block blocks and (but the last) one downsampler block; the up
 * path holds layers_per_block + 1 blocks per level. */
static void unet_tensors(component *c, const unet_shape *s, const char *pre) {
  char d[192], o[224];
  const int L = s->levels, per_level = s->layers_per_block + 1;
  const int T = 4 * s->block_out[0];
#define O(...) (snprintf(o, sizeof o, __VA_ARGS__), o)
#define D(...) (snprintf(d, sizeof d, __VA_ARGS__), d)
  conv(c, "conv_in", O("%sinput_blocks.0.0", pre), s->block_out[0], 4, 3);
  linear(c, "time_embedding.linear_1", O("%stime_embed.0", pre), T, s->block_out[0], 1);
  linear(c, "time_embedding.linear_2", O("%stime_embed.2", pre), T, T, 1);
  if (s->add_in_dim) {
    linear(c, "add_embedding.linear_1", O("%slabel_emb.0.0", pre), T, s->add_in_dim, 1);
    linear(c, "add_embedding.linear_2", O("%slabel_emb.0.2", pre), T, T, 1);
  }
  int ch = s->block_out[0];
  for (int l = 0; l < L; l++) {
    int out = s->block_out[l];
    for (int j = 0; j < s->layers_per_block; j++) {
      int b = l * per_level + j + 1;
      char dp[96];
      snprintf(dp, sizeof dp, "down_blocks.%d.resnets.%d", l, j);
      unet_resnet(c, dp, O("%sinput_blocks.%d.0", pre, b), j == 0 ? ch : out, out, T);
      if (s->has_attention[l])
        unet_transformer(c, D("down_blocks.%d.attentions.%d", l, j),
                         O("%sinput_blocks.%d.1", pre, b), out, s->depth[l], s->cross_dim,
                         s->linear_projection);
    }
    if (l < L - 1)
      conv(c, D("down_blocks.%d.downsamplers.0.conv", l),
           O("%sinput_blocks.%d.0.op", pre, (l + 1) * per_level), out, out, 3);
    ch = out;
  }
  int top = s->block_out[L - 1];
  unet_resnet(c, "mid_block.resnets.0", O("%smiddle_block.0", pre), top, top, T);
  unet_transformer(c, "mid_block.attentions.0", O("%smiddle_block.1", pre), top,
                   s->depth[L - 1], s->cross_dim, s->linear_projection);
  unet_resnet(c, "mid_block.resnets.1", O("%smiddle_block.2", pre), top, top, T);
  int prev = top;
  for (int u = 0; u < L; u++) {
    int lvl = L - 1 - u; /* the down level this up level mirrors */
    int out = s->block_out[lvl];
    int skip_in = s->block_out[lvl > 0 ? lvl - 1 : 0];
    for (int j = 0; j < per_level; j++) {
      int b = u * per_level + j;
      int in = (j == 0 ? prev : out) + (j == per_level - 1 ? skip_in : out);
      char dp[96];
      snprintf(dp, sizeof dp, "up_blocks.%d.resnets.%d", u, j);
      unet_resnet(c, dp, O("%soutput_blocks.%d.0", pre, b), in, out, T);
      if (s->has_attention[lvl])
        unet_transformer(c, D("up_blocks.%d.attentions.%d", u, j),
                         O("%soutput_blocks.%d.1", pre, b), out, s->depth[lvl], s->cross_dim,
                         s->linear_projection);
    }
    if (u < L - 1)
      conv(c, D("up_blocks.%d.upsamplers.0.conv", u),
           O("%soutput_blocks.%d.%d.conv", pre, u * per_level + per_level - 1,
             s->has_attention[lvl] ? 2 : 1),
           out, out, 3);
    prev = out;
  }
  norm(c, "conv_norm_out", O("%sout.0", pre), s->block_out[0], 1);
  conv(c, "conv_out", O("%sout.2", pre), 4, s->block_out[0], 3);
#undef O
#undef D
}

/* ---- AutoencoderKL (diffusers names + LDM names) ---- */

static void vae_resnet(component *c, const char *dp, const char *op, int in, int out) {
  names n;
  norm(c, jd(&n, dp, "norm1"), jo(&n, op, "norm1"), in, 1);
  conv(c, jd(&n, dp, "conv1"), jo(&n, op, "conv1"), out, in, 3);
  norm(c, jd(&n, dp, "norm2"), jo(&n, op, "norm2"), out, 1);
  conv(c, jd(&n, dp, "conv2"), jo(&n, op, "conv2"), out, out, 3);
  if (in != out) conv(c, jd(&n, dp, "conv_shortcut"), jo(&n, op, "nin_shortcut"), out, in, 1);
}

/* Mid-block attention: the LDM file stores q/k/v/proj_out as 1x1 convs. */
static void vae_attention(component *c, const char *dp, const char *op, int ch) {
  names n;
  norm(c, jd(&n, dp, "group_norm"), jo(&n, op, "norm"), ch, 1);
  static const char *const parts[][2] = {
      {"to_q", "q"}, {"to_k", "k"}, {"to_v", "v"}, {"to_out.0", "proj_out"}};
  for (int i = 0; i < 4; i++) {
    gen_tensor *w = param(c, jd(&n, dp, parts[i][0]), jo(&n, op, parts[i][1]), "weight",
                          2, ch, ch, 0, 0);
    if (w) {
      w->orig_ndim = 4;
      w->orig_shape[2] = w->orig_shape[3] = 1;
    }
    param(c, jd(&n, dp, parts[i][0]), jo(&n, op, parts[i][1]), "bias", 1, ch, 0, 0, 0);
  }
}

static void vae_mid(component *c, const char *side, const char *pre, int ch) {
  char d[96], o[128];
  const char *op = pre ? o : NULL;
  snprintf(d, sizeof d, "%s.mid_block.resnets.0", side);
  if (pre) snprintf(o, sizeof o, "%s%s.mid.block_1", pre, side);
  vae_resnet(c, d, op, ch, ch);
  snprintf(d, sizeof d, "%s.mid_block.attentions.0", side);
  if (pre) snprintf(o, sizeof o, "%s%s.mid.attn_1", pre, side);
  vae_attention(c, d, op, ch);
  snprintf(d, sizeof d, "%s.mid_block.resnets.1", side);
  if (pre) snprintf(o, sizeof o, "%s%s.mid.block_2", pre, side);
  vae_resnet(c, d, op, ch, ch);
}

static void vae_tensors(component *c, int latent, int quant_convs, const char *pre) {
  static const int block_out[4] = {128, 256, 512, 512};
  const int L = 4, layers = 2, top = block_out[L - 1];
  char d[128], o[160];
#define O(...) (pre ? (snprintf(o, sizeof o, __VA_ARGS__), o) : NULL)
#define D(...) (snprintf(d, sizeof d, __VA_ARGS__), d)
  conv(c, "encoder.conv_in", O("%sencoder.conv_in", pre), block_out[0], 3, 3);
  int ch = block_out[0];
  for (int l = 0; l < L; l++) {
    for (int j = 0; j < layers; j++) {
      char dp[96];
      snprintf(dp, sizeof dp, "encoder.down_blocks.%d.resnets.%d", l, j);
      vae_resnet(c, dp, O("%sencoder.down.%d.block.%d", pre, l, j), j == 0 ? ch : block_out[l],
                 block_out[l]);
    }
    if (l < L - 1)
      conv(c, D("encoder.down_blocks.%d.downsamplers.0.conv", l),
           O("%sencoder.down.%d.downsample.conv", pre, l), block_out[l], block_out[l], 3);
    ch = block_out[l];
  }
  vae_mid(c, "encoder", pre, top);
  norm(c, "encoder.conv_norm_out", O("%sencoder.norm_out", pre), top, 1);
  conv(c, "encoder.conv_out", O("%sencoder.conv_out", pre), 2 * latent, top, 3);
  if (quant_convs) conv(c, "quant_conv", O("%squant_conv", pre), 2 * latent, 2 * latent, 1);
  if (quant_convs) conv(c, "post_quant_conv", O("%spost_quant_conv", pre), latent, latent, 1);
  conv(c, "decoder.conv_in", O("%sdecoder.conv_in", pre), top, latent, 3);
  vae_mid(c, "decoder", pre, top);
  int prev = top;
  for (int u = 0; u < L; u++) {
    int out = block_out[L - 1 - u], ldm = L - 1 - u; /* LDM numbers from the bottom */
    for (int j = 0; j < layers + 1; j++) {
      char dp[96];
      snprintf(dp, sizeof dp, "decoder.up_blocks.%d.resnets.%d", u, j);
      vae_resnet(c, dp, O("%sdecoder.up.%d.block.%d", pre, ldm, j), j == 0 ? prev : out, out);
    }
    if (u < L - 1)
      conv(c, D("decoder.up_blocks.%d.upsamplers.0.conv", u),
           O("%sdecoder.up.%d.upsample.conv", pre, ldm), out, out, 3);
    prev = out;
  }
  norm(c, "decoder.conv_norm_out", O("%sdecoder.norm_out", pre), block_out[0], 1);
  conv(c, "decoder.conv_out", O("%sdecoder.conv_out", pre), 3, block_out[0], 3);
#undef O
#undef D
}

/* ---- CLIP text encoders ---- */

typedef struct clip_shape {
  int hidden, layers, intermediate, projection; /* projection 0: none */
} clip_shape;

/* open_clip: original names are OpenCLIP's (fused in_proj, transposed
 * projection); otherwise Hugging Face names under `pre` (NULL: not in any
 * single file). */
static void clip_tensors(component *c, const clip_shape *s, const char *pre, int open_clip) {
  const int64_t D = s->hidden, I = s->intermediate;
  char o[224];
  names n;
#define O(...) (pre ? (snprintf(o, sizeof o, __VA_ARGS__), o) : NULL)
#define HF(x) O("%s%s", pre, x)
  linear(c, "text_model.embeddings.token_embedding", open_clip ? O("%stoken_embedding", pre)
                                                               : HF("text_model.embeddings.token_embedding"),
         49408, D, 0);
  gen_tensor *pos = param(c, "text_model.embeddings.position_embedding",
                          open_clip ? NULL : HF("text_model.embeddings.position_embedding"),
                          "weight", 2, 77, D, 0, 0);
  if (pos && open_clip && pre) snprintf(pos->orig, sizeof pos->orig, "%spositional_embedding", pre);
  for (int l = 0; l < s->layers; l++) {
    char dp[96], hp[224];
    snprintf(dp, sizeof dp, "text_model.encoder.layers.%d", l);
    if (!open_clip) {
      const char *op = pre ? (snprintf(hp, sizeof hp, "%s%s", pre, dp), hp) : NULL;
      norm(c, jd(&n, dp, "layer_norm1"), jo(&n, op, "layer_norm1"), D, 1);
      static const char *const qkvo[] = {"self_attn.q_proj", "self_attn.k_proj",
                                         "self_attn.v_proj", "self_attn.out_proj"};
      for (int i = 0; i < 4; i++) linear(c, jd(&n, dp, qkvo[i]), jo(&n, op, qkvo[i]), D, D, 1);
      norm(c, jd(&n, dp, "layer_norm2"), jo(&n, op, "layer_norm2"), D, 1);
      linear(c, jd(&n, dp, "mlp.fc1"), jo(&n, op, "mlp.fc1"), I, D, 1);
      linear(c, jd(&n, dp, "mlp.fc2"), jo(&n, op, "mlp.fc2"), D, I, 1);
      continue;
    }
    const char *op = pre ? (snprintf(hp, sizeof hp, "%stransformer.resblocks.%d", pre, l), hp)
                         : NULL;
    norm(c, jd(&n, dp, "layer_norm1"), jo(&n, op, "ln_1"), D, 1);
    /* q, k, v weights then biases: each group shares one original key and
     * is concatenated along rows in that order. */
    static const char *const qkv[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"};
    for (int i = 0; i < 3; i++) {
      gen_tensor *w = param(c, jd(&n, dp, qkv[i]), op, "weight", 2, D, D, 0, 0);
      if (w && op) snprintf(w->orig, sizeof w->orig, "%s.attn.in_proj_weight", op);
    }
    for (int i = 0; i < 3; i++) {
      gen_tensor *b = param(c, jd(&n, dp, qkv[i]), op, "bias", 1, D, 0, 0, 0);
      if (b && op) snprintf(b->orig, sizeof b->orig, "%s.attn.in_proj_bias", op);
    }
    linear(c, jd(&n, dp, "self_attn.out_proj"), jo(&n, op, "attn.out_proj"), D, D, 1);
    norm(c, jd(&n, dp, "layer_norm2"), jo(&n, op, "ln_2"), D, 1);
    linear(c, jd(&n, dp, "mlp.fc1"), jo(&n, op, "mlp.c_fc"), I, D, 1);
    linear(c, jd(&n, dp, "mlp.fc2"), jo(&n, op, "mlp.c_proj"), D, I, 1);
  }
  norm(c, "text_model.final_layer_norm",
       open_clip ? O("%sln_final", pre) : HF("text_model.final_layer_norm"), D, 1);
  if (s->projection) {
    gen_tensor *p = param(c, "text_projection", open_clip ? NULL : HF("text_projection"),
                          "weight", 2, s->projection, D, 0, 0);
    if (p && open_clip && pre) {
      snprintf(p->orig, sizeof p->orig, "%stext_projection", pre);
      p->transposed = 1;
      p->orig_shape[0] = D;
      p->orig_shape[1] = s->projection;
    }
  }
#undef O
#undef HF
}

/* ---- SD3 / SD3.5 (diffusers names + Stability's MMDiT names) ---- */

typedef struct mmdit_shape {
  int layers, heads, pos_max, dual_layers; /* blocks 0..dual_layers-1 are MMDiT-X */
} mmdit_shape;

/* q, k, v share the original key `<op>.qkv` (rows in that order), the output
 * projection is `<op>.proj`, the RMS norms `<op>.ln_q` / `<op>.ln_k`. */
static void mmdit_attention(component *c, const char *dp, const char *op,
                            const char *const *proj, const char *out, const char *nq,
                            const char *nk, int64_t D) {
  names n;
  for (int i = 0; i < 3; i++) linear(c, jd(&n, dp, proj[i]), jo(&n, op, "qkv"), D, D, 1);
  if (out) linear(c, jd(&n, dp, out), jo(&n, op, "proj"), D, D, 1);
  norm(c, jd(&n, dp, nq), jo(&n, op, "ln_q"), 64, 0);
  norm(c, jd(&n, dp, nk), jo(&n, op, "ln_k"), 64, 0);
}

/* Stability stores (shift, scale) where diffusers stores (scale, shift): the
 * last `count` tensors are written with their dim-0 halves swapped. */
static void mark_swapped(component *c, int count) {
  for (int i = c->n - count; i >= 0 && i < c->n && !c->oom; i++) c->t[i].swap_halves = 1;
}

static void mmdit_tensors(component *c, const mmdit_shape *s, const char *pre) {
  const int64_t D = 64 * s->heads, M = s->pos_max;
  char o[224];
#define O(...) (snprintf(o, sizeof o, __VA_ARGS__), o)
  conv(c, "pos_embed.proj", O("%sx_embedder.proj", pre), D, 16, 2);
  add(c, "pos_embed.pos_embed", O("%spos_embed", pre), 3, (int64_t[]){1, M * M, D});
  linear(c, "time_text_embed.timestep_embedder.linear_1", O("%st_embedder.mlp.0", pre), D, 256, 1);
  linear(c, "time_text_embed.timestep_embedder.linear_2", O("%st_embedder.mlp.2", pre), D, D, 1);
  linear(c, "time_text_embed.text_embedder.linear_1", O("%sy_embedder.mlp.0", pre), D, 2048, 1);
  linear(c, "time_text_embed.text_embedder.linear_2", O("%sy_embedder.mlp.2", pre), D, D, 1);
  linear(c, "context_embedder", O("%scontext_embedder", pre), D, 4096, 1);
  static const char *const xqkv[] = {"to_q", "to_k", "to_v"};
  static const char *const cqkv[] = {"add_q_proj", "add_k_proj", "add_v_proj"};
  for (int i = 0; i < s->layers; i++) {
    char p[64], q[96], xo[160], co[160], ao[176];
    names n;
    snprintf(p, sizeof p, "transformer_blocks.%d", i);
    snprintf(xo, sizeof xo, "%sjoint_blocks.%d.x_block", pre, i);
    snprintf(co, sizeof co, "%sjoint_blocks.%d.context_block", pre, i);
    /* the last block's context stream is "pre only": adaLN of 2 chunks, no
     * attention output projection, no MLP */
    int last = i == s->layers - 1, dual = i < s->dual_layers;
    linear(c, jd(&n, p, "norm1.linear"), jo(&n, xo, "adaLN_modulation.1"), (dual ? 9 : 6) * D,
           D, 1);
    linear(c, jd(&n, p, "norm1_context.linear"), jo(&n, co, "adaLN_modulation.1"),
           (last ? 2 : 6) * D, D, 1);
    if (last) mark_swapped(c, 2);
    snprintf(q, sizeof q, "%s.attn", p);
    snprintf(ao, sizeof ao, "%s.attn", xo);
    mmdit_attention(c, q, ao, xqkv, "to_out.0", "norm_q", "norm_k", D);
    snprintf(ao, sizeof ao, "%s.attn", co);
    mmdit_attention(c, q, ao, cqkv, last ? NULL : "to_add_out", "norm_added_q", "norm_added_k", D);
    if (dual) {
      snprintf(q, sizeof q, "%s.attn2", p);
      snprintf(ao, sizeof ao, "%s.attn2", xo);
      mmdit_attention(c, q, ao, xqkv, "to_out.0", "norm_q", "norm_k", D);
    }
    linear(c, jd(&n, p, "ff.net.0.proj"), jo(&n, xo, "mlp.fc1"), 4 * D, D, 1);
    linear(c, jd(&n, p, "ff.net.2"), jo(&n, xo, "mlp.fc2"), D, 4 * D, 1);
    if (!last) {
      linear(c, jd(&n, p, "ff_context.net.0.proj"), jo(&n, co, "mlp.fc1"), 4 * D, D, 1);
      linear(c, jd(&n, p, "ff_context.net.2"), jo(&n, co, "mlp.fc2"), D, 4 * D, 1);
    }
  }
  linear(c, "norm_out.linear", O("%sfinal_layer.adaLN_modulation.1", pre), 2 * D, D, 1);
  mark_swapped(c, 2);
  linear(c, "proj_out", O("%sfinal_layer.linear", pre), 2 * 2 * 16, D, 1);
#undef O
}

/* T5 v1.1 XXL encoder: d_model 4096, 64 heads x 64, d_ff 10240, 24 blocks.
 * The separately shipped file keeps these names and also stores the tied
 * `encoder.embed_tokens.weight` (= shared), which the folder leaves out. */
static void t5_tensors(component *c) {
  const int64_t D = 4096, F = 10240;
  linear(c, "shared", "shared", 32128, D, 0);
  if (!c->oom) c->t[c->n - 1].orig2 = "encoder.embed_tokens.weight";
  for (int i = 0; i < 24; i++) {
    char p[64];
    names n;
    snprintf(p, sizeof p, "encoder.block.%d", i);
    norm(c, jd(&n, p, "layer.0.layer_norm"), jo(&n, p, "layer.0.layer_norm"), D, 0);
    static const char *const qkvo[] = {"q", "k", "v", "o"};
    for (int k = 0; k < 4; k++) {
      char a[96];
      snprintf(a, sizeof a, "%s.layer.0.SelfAttention.%s", p, qkvo[k]);
      linear(c, a, a, D, D, 0);
    }
    if (i == 0)
      linear(c, jd(&n, p, "layer.0.SelfAttention.relative_attention_bias"),
             jo(&n, p, "layer.0.SelfAttention.relative_attention_bias"), 32, 64, 0);
    norm(c, jd(&n, p, "layer.1.layer_norm"), jo(&n, p, "layer.1.layer_norm"), D, 0);
    static const char *const ff[] = {"layer.1.DenseReluDense.wi_0", "layer.1.DenseReluDense.wi_1"};
    for (int k = 0; k < 2; k++) linear(c, jd(&n, p, ff[k]), jo(&n, p, ff[k]), F, D, 0);
    linear(c, jd(&n, p, "layer.1.DenseReluDense.wo"), jo(&n, p, "layer.1.DenseReluDense.wo"), D,
           F, 0);
  }
  norm(c, "encoder.final_layer_norm", "encoder.final_layer_norm", D, 0);
}

/* ---- the architectures ---- */

static component *new_component(model_spec *m, const char *dir, const char *file,
                                const char *config) {
  component *c = &m->comp[m->ncomp++];
  memset(c, 0, sizeof *c);
  c->dir = dir;
  c->file = file;
  c->config = config;
  return c;
}

static const char UNET_FILE[] = "diffusion_pytorch_model.safetensors";
static const char TE_FILE[] = "model.safetensors";

static int build_spec(model_spec *m, sd_error *err) {
  const char *a = m->arch;
  static const clip_shape clip_l = {768, 12, 3072, 0}, clip_l_proj = {768, 12, 3072, 768},
                          big_g = {1280, 32, 5120, 1280};
  if (strcmp(a, "sd15") == 0) {
    static const unet_shape u = {4, {320, 640, 1280, 1280}, {1, 1, 1, 0}, {1, 1, 1, 1}, 2,
                                 768, 0, 0};
    m->model_index = CFG_SD15_INDEX;
    m->scheduler = CFG_SD15_SCHEDULER;
    unet_tensors(new_component(m, "unet", UNET_FILE, CFG_SD15_UNET), &u, "model.diffusion_model.");
    vae_tensors(new_component(m, "vae", UNET_FILE, CFG_SD15_VAE), 4, 1, "first_stage_model.");
    clip_tensors(new_component(m, "text_encoder", TE_FILE, CFG_CLIP_L), &clip_l,
                 "cond_stage_model.transformer.", 0);
  } else if (strcmp(a, "lcm-sd15") == 0) { /* folder only */
    static const unet_shape u = {4, {320, 640, 1280, 1280}, {1, 1, 1, 0}, {1, 1, 1, 1}, 2,
                                 768, 0, 0};
    m->model_index = CFG_LCM_INDEX;
    m->scheduler = CFG_LCM_SCHEDULER;
    component *un = new_component(m, "unet", UNET_FILE, CFG_LCM_UNET);
    unet_tensors(un, &u, "model.diffusion_model.");
    linear(un, "time_embedding.cond_proj", NULL, 320, 256, 0); /* guidance embedding */
    vae_tensors(new_component(m, "vae", UNET_FILE, CFG_SD15_VAE), 4, 1, "first_stage_model.");
    clip_tensors(new_component(m, "text_encoder", TE_FILE, CFG_CLIP_L), &clip_l, NULL, 0);
  } else if (strcmp(a, "sd-turbo") == 0) { /* SD 2.1 architecture, folder only */
    static const unet_shape u = {4, {320, 640, 1280, 1280}, {1, 1, 1, 0}, {1, 1, 1, 1}, 2,
                                 1024, 1, 0};
    static const clip_shape clip_h = {1024, 23, 4096, 0};
    m->model_index = CFG_SD15_INDEX;
    m->scheduler = CFG_SD_TURBO_SCHEDULER;
    unet_tensors(new_component(m, "unet", UNET_FILE, CFG_SD_TURBO_UNET), &u,
                 "model.diffusion_model.");
    vae_tensors(new_component(m, "vae", UNET_FILE, CFG_SD15_VAE), 4, 1, "first_stage_model.");
    clip_tensors(new_component(m, "text_encoder", TE_FILE, CFG_CLIP_H), &clip_h, NULL, 0);
  } else if (strcmp(a, "sdxl") == 0) {
    static const unet_shape u = {3, {320, 640, 1280}, {0, 1, 1}, {1, 2, 10}, 2, 2048, 1, 2816};
    m->model_index = CFG_SDXL_INDEX;
    m->scheduler = CFG_SDXL_SCHEDULER;
    unet_tensors(new_component(m, "unet", UNET_FILE, CFG_SDXL_UNET), &u, "model.diffusion_model.");
    vae_tensors(new_component(m, "vae", UNET_FILE, CFG_SDXL_VAE), 4, 1, "first_stage_model.");
    clip_tensors(new_component(m, "text_encoder", TE_FILE, CFG_CLIP_L), &clip_l,
                 "conditioner.embedders.0.transformer.", 0);
    clip_tensors(new_component(m, "text_encoder_2", TE_FILE, CFG_CLIP_BIGG), &big_g,
                 "conditioner.embedders.1.model.", 1);
  } else if (strcmp(a, "sdxl-refiner") == 0) {
    static const unet_shape u = {4, {384, 768, 1536, 1536}, {0, 1, 1, 0}, {4, 4, 4, 4}, 2,
                                 1280, 1, 2560};
    m->model_index = CFG_REFINER_INDEX;
    m->scheduler = CFG_SDXL_SCHEDULER;
    unet_tensors(new_component(m, "unet", UNET_FILE, CFG_REFINER_UNET), &u,
                 "model.diffusion_model.");
    vae_tensors(new_component(m, "vae", UNET_FILE, CFG_SDXL_VAE), 4, 1, "first_stage_model.");
    clip_tensors(new_component(m, "text_encoder_2", TE_FILE, CFG_CLIP_BIGG), &big_g,
                 "conditioner.embedders.0.model.", 1);
  } else if (strcmp(a, "sd35-medium") == 0 || strcmp(a, "sd35-large") == 0) {
    int large = strcmp(a, "sd35-large") == 0;
    static const mmdit_shape medium = {24, 24, 384, 13}, large_shape = {38, 38, 192, 0};
    m->model_index = CFG_SD3_INDEX;
    m->scheduler = CFG_SD3_SCHEDULER;
    /* As in the releases: the transformer in shards of at most 10 GB (Large:
     * 2 files, Medium: one), T5 in shards of at most 5 GB (2 files); the
     * single-file layout is Stability's (their sd3.5_large.safetensors is
     * DIR/<arch>.safetensors here): MMDiT + VAE, the encoders as separate
     * files under DIR/text_encoders/. */
    component *tr = new_component(m, "transformer", UNET_FILE,
                                  large ? CFG_SD35_LARGE_TRANSFORMER : CFG_SD35_MEDIUM_TRANSFORMER);
    tr->max_shard_bytes = 10000000000LL;
    mmdit_tensors(tr, large ? &large_shape : &medium, "model.diffusion_model.");
    vae_tensors(new_component(m, "vae", UNET_FILE, CFG_SD3_VAE), 16, 0, "first_stage_model.");
    component *te = new_component(m, "text_encoder", TE_FILE, CFG_CLIP_L_PROJ);
    te->single_name = "text_encoders/clip_l.safetensors";
    clip_tensors(te, &clip_l_proj, "", 0);
    /* SD3 uses CLIP-L's pooled output unprojected: the diffusers folder holds
     * the identity, Stability's clip_l file a projection nobody applies. */
    for (int i = 0; i < te->n; i++)
      if (strcmp(te->t[i].name, "text_projection.weight") == 0) te->t[i].identity = 1;
    component *te2 = new_component(m, "text_encoder_2", TE_FILE, CFG_CLIP_BIGG);
    te2->single_name = "text_encoders/clip_g.safetensors";
    clip_tensors(te2, &big_g, "", 0);
    component *te3 = new_component(m, "text_encoder_3", TE_FILE, CFG_T5_XXL);
    te3->single_name = "text_encoders/t5xxl_fp16.safetensors";
    te3->max_shard_bytes = 5000000000LL;
    t5_tensors(te3);
  } else {
    return sd_fail(err, SD_ERR_ARG, "unknown --arch '%s'", a);
  }
  for (int i = 0; i < m->ncomp; i++)
    if (m->comp[i].oom) return sd_fail(err, SD_ERR_OOM, "out of memory listing tensors");
  return SD_OK;
}

static void free_spec(model_spec *m) {
  for (int i = 0; i < m->ncomp; i++) sd_free(m->comp[i].t);
  m->ncomp = 0;
}

/* ---- values ---- */

#define CHUNK 4096 /* elements per independent random stream */

static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static uint64_t fnv1a(uint64_t h, const char *s) {
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
  return h;
}

/* How a tensor is initialised, from its name and shape. */
typedef struct init_rule {
  float std;   /* of the normal; 0 with constant */
  float constant;
} init_rule;

static int ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcmp(s + a - b, suffix) == 0;
}

static init_rule rule_for(const gen_tensor *t) {
  init_rule r = {0, 0};
  if (ends_with(t->name, ".bias")) {
    r.std = 0.01f;
  } else if (t->ndim == 1) { /* norm gammas (group, layer, RMS) */
    r.constant = 1;
  } else if (strstr(t->name, "embedding") || ends_with(t->name, "pos_embed") ||
             strcmp(t->name, "shared.weight") == 0) {
    r.std = 0.02f;
  } else {
    int64_t fan_in = 1;
    for (int d = 1; d < t->ndim; d++) fan_in *= t->shape[d];
    r.std = (float)(1.0 / sqrt((double)fan_in));
  }
  return r;
}

static int64_t numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int d = 0; d < ndim; d++) n *= shape[d];
  return n;
}

static inline uint16_t f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  x += 0x7fff + ((x >> 16) & 1); /* round to nearest even; values are finite */
  return (uint16_t)(x >> 16);
}

static inline uint16_t f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000, mant = x & 0x7fffff;
  int32_t e = (int32_t)((x >> 23) & 0xff) - 127 + 15;
  if (e >= 31) return (uint16_t)(sign | 0x7c00);
  if (e <= 0) { /* subnormal half: shift the implicit bit in, round to even */
    if (e < -10) return (uint16_t)sign;
    mant |= 0x800000;
    uint32_t shift = (uint32_t)(14 - e), half = 1u << (shift - 1);
    uint32_t v = mant >> shift, rest = mant & ((1u << shift) - 1);
    if (rest > half || (rest == half && (v & 1))) v++;
    return (uint16_t)(sign | v);
  }
  uint32_t v = ((uint32_t)e << 10) | (mant >> 13), rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (v & 1))) v++; /* may carry into the exponent: correct */
  return (uint16_t)(sign | v);
}

/* Element i of the tensor lands at element (base + i) of dst, in dtype. */
static void store(void *dst, sd_dtype dtype, int64_t at, const float *v, int n) {
  if (dtype == SD_F32) {
    memcpy((float *)dst + at, v, sizeof(float) * n);
  } else if (dtype == SD_F16) {
    uint16_t *o = (uint16_t *)dst + at;
    for (int i = 0; i < n; i++) o[i] = f32_to_f16(v[i]);
  } else {
    uint16_t *o = (uint16_t *)dst + at;
    for (int i = 0; i < n; i++) o[i] = f32_to_bf16(v[i]);
  }
}

/* Normal quantiles at (i + 0.5) / 4096: a draw is a table lookup with 12
 * random bits, five draws per 64-bit random number. Transcendental calls per
 * element (Box-Muller) made the SDXL UNet take minutes on 2 cores; this
 * 4096-point normal (tails cut at 3.5 sigma) is as good an init. */
#define NORMAL_BITS 12
#define NORMAL_POINTS (1 << NORMAL_BITS)
static float g_normal[NORMAL_POINTS];

static void init_normal_table(void) {
  for (int i = 0; i < NORMAL_POINTS; i++) {
    double p = (i + 0.5) / NORMAL_POINTS, x = 0;
    for (int it = 0; it < 60; it++) { /* Newton on Phi(x) = p */
      double cdf = 0.5 * erfc(-x / sqrt(2.0));
      double pdf = exp(-0.5 * x * x) / sqrt(2.0 * 3.14159265358979323846);
      x -= (cdf - p) / pdf;
    }
    g_normal[i] = (float)x;
  }
}

/* Writes the values of tensor t of component `dir` into dst (dtype) at
 * element offset `at`; `single`: the values under the single-file key (they
 * differ only for `identity` tensors). Chunks are independent streams, so
 * threads split them freely and the bytes do not depend on the thread count. */
static void generate(uint64_t seed, const char *dir, const gen_tensor *t, sd_dtype dtype,
                     void *dst, int64_t at, int single) {
  const init_rule r = rule_for(t);
  const int64_t n = numel(t->ndim, t->shape), chunks = (n + CHUNK - 1) / CHUNK;
  const int64_t cols = t->ndim == 2 ? t->shape[1] : 1;
  const int identity = t->identity && !single;
  const uint64_t key = fnv1a(fnv1a(fnv1a(0xcbf29ce484222325ULL ^ seed, dir), "/"), t->name);
#pragma omp parallel for schedule(static)
  for (int64_t ci = 0; ci < chunks; ci++) {
    float v[CHUNK];
    int len = (int)(n - ci * CHUNK < CHUNK ? n - ci * CHUNK : CHUNK);
    if (identity) {
      for (int i = 0; i < len; i++) {
        int64_t e = ci * CHUNK + i;
        v[i] = e / cols == e % cols ? 1.0f : 0.0f;
      }
    } else if (r.std == 0) {
      for (int i = 0; i < len; i++) v[i] = r.constant;
    } else {
      uint64_t s = key ^ ((uint64_t)ci * 0xd1342543de82ef95ULL);
      for (int i = 0; i < len; i += 5) {
        uint64_t bits = splitmix64(&s);
        for (int k = 0; k < 5 && i + k < len; k++, bits >>= NORMAL_BITS)
          v[i + k] = r.std * g_normal[bits & (NORMAL_POINTS - 1)];
      }
    }
    store(dst, dtype, at + ci * CHUNK, v, len);
  }
}

/* ---- writing ---- */

static sd_dtype dtype_of(const model_spec *m, const component *c) {
  return strcmp(c->dir, "transformer") == 0 ? m->transformer_dtype : m->dtype;
}

typedef struct folder_job {
  const model_spec *m;
  const component *c;
  int first; /* the shard's first tensor */
} folder_job;

static int fill_folder(void *user, int i, void *dst, size_t nbytes, sd_error *err) {
  const folder_job *j = user;
  generate(j->m->seed, j->c->dir, &j->c->t[j->first + i], dtype_of(j->m, j->c), dst, 0, 0);
  return SD_OK;
}

static int write_text(const char *path, const char *text, sd_error *err) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "wb");
  if (!f) return sd_fail(err, SD_ERR_IO, "cannot write %s", path);
  int ok = fputs(text, f) >= 0 && fputc('\n', f) != EOF;
  if (fclose(f) != 0 || !ok || rename(tmp, path) != 0) {
    unlink(tmp);
    return sd_fail(err, SD_ERR_IO, "cannot write %s", path);
  }
  return SD_OK;
}

static int make_dir(const char *path, sd_error *err) {
  if (mkdir(path, 0755) != 0 && !sd_is_dir(path))
    return sd_fail(err, SD_ERR_IO, "cannot create folder %s", path);
  return SD_OK;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int64_t component_params(const component *c) {
  int64_t n = 0;
  for (int i = 0; i < c->n; i++) n += numel(c->t[i].ndim, c->t[i].shape);
  return n;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp((*(const sd_stream_tensor *const *)a)->name,
                (*(const sd_stream_tensor *const *)b)->name);
}

/* `<file>.index.json` as save_pretrained writes it: total tensor bytes and
 * the shard of every tensor, names sorted. */
static int write_shard_index(const char *path, const sd_stream_tensor *st, const int *shard,
                             int n, int nshards, const char *stem, sd_error *err) {
  const sd_stream_tensor **order = sd_alloc(sizeof *order * n);
  if (!order) return sd_fail(err, SD_ERR_OOM, "out of memory");
  int64_t total = 0;
  for (int i = 0; i < n; i++) {
    order[i] = &st[i];
    total += (int64_t)sd_stream_tensor_nbytes(&st[i]);
  }
  qsort(order, n, sizeof *order, cmp_names);
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "wb");
  int ok = f != NULL;
  if (ok) ok = fprintf(f, "{\n  \"metadata\": {\n    \"total_size\": %lld\n  },\n"
                          "  \"weight_map\": {\n", (long long)total) > 0;
  for (int i = 0; ok && i < n; i++)
    ok = fprintf(f, "    \"%s\": \"%s-%05d-of-%05d.safetensors\"%s\n", order[i]->name, stem,
                 shard[order[i] - st] + 1, nshards, i + 1 < n ? "," : "") > 0;
  if (ok) ok = fputs("  }\n}\n", f) >= 0;
  if (f && fclose(f) != 0) ok = 0;
  sd_free(order);
  if (!ok || rename(tmp, path) != 0) {
    unlink(tmp);
    return sd_fail(err, SD_ERR_IO, "cannot write %s", path);
  }
  return SD_OK;
}

/* The weights of one component: one file, or shards cut as save_pretrained
 * cuts them (in order; a new shard when the next tensor would push the
 * current one past max_shard_bytes) plus their index. Whichever layout is
 * written, the other one's files are removed so a rerun leaves no stale
 * weights for the loader to pick. */
static int write_component_files(const model_spec *m, const component *c, const char *dir,
                                 const sd_stream_tensor *st, sd_error *err) {
  char p[4200], stem[256];
  snprintf(stem, sizeof stem, "%s", c->file);
  char *dot = strstr(stem, ".safetensors");
  if (dot) *dot = '\0';
  int *shard = sd_calloc(c->n ? c->n : 1, sizeof *shard);
  if (!shard) return sd_fail(err, SD_ERR_OOM, "out of memory");
  int nshards = 1;
  int64_t used = 0;
  for (int i = 0; i < c->n; i++) {
    int64_t b = (int64_t)sd_stream_tensor_nbytes(&st[i]);
    if (c->max_shard_bytes && used > 0 && used + b > c->max_shard_bytes) {
      nshards++;
      used = 0;
    }
    shard[i] = nshards - 1;
    used += b;
  }
  int rc = SD_OK;
  char index[4200];
  snprintf(index, sizeof index, "%s/%s.index.json", dir, c->file);
  if (nshards == 1) {
    unlink(index);
    sd_path_join(p, sizeof p, dir, c->file);
    folder_job job = {m, c, 0};
    rc = sd_safetensors_write_stream(p, st, c->n, "{\"format\":\"pt\"}", fill_folder, &job, err);
  } else {
    sd_path_join(p, sizeof p, dir, c->file);
    unlink(p);
    for (int k = 0, first = 0; k < nshards && !rc; k++) {
      int end = first;
      while (end < c->n && shard[end] == k) end++;
      snprintf(p, sizeof p, "%s/%s-%05d-of-%05d.safetensors", dir, stem, k + 1, nshards);
      folder_job job = {m, c, first};
      rc = sd_safetensors_write_stream(p, st + first, end - first, "{\"format\":\"pt\"}",
                                       fill_folder, &job, err);
      first = end;
    }
    if (!rc) rc = write_shard_index(index, st, shard, c->n, nshards, stem, err);
  }
  sd_free(shard);
  return rc;
}

static int write_folder(const model_spec *m, const char *root, sd_error *err) {
  char p[4096];
  int rc = make_dir(root, err);
  if (!rc) {
    sd_path_join(p, sizeof p, root, "model_index.json");
    rc = write_text(p, m->model_index, err);
  }
  if (!rc) {
    sd_path_join(p, sizeof p, root, "scheduler");
    if (!(rc = make_dir(p, err))) {
      sd_path_join(p, sizeof p, root, "scheduler/scheduler_config.json");
      rc = write_text(p, m->scheduler, err);
    }
  }
  for (int ci = 0; ci < m->ncomp && !rc; ci++) {
    const component *c = &m->comp[ci];
    char dir[4096];
    sd_path_join(dir, sizeof dir, root, c->dir);
    if ((rc = make_dir(dir, err))) break;
    sd_path_join(p, sizeof p, dir, "config.json");
    if ((rc = write_text(p, c->config, err))) break;
    sd_stream_tensor *st = sd_alloc(sizeof *st * c->n);
    if (!st) return sd_fail(err, SD_ERR_OOM, "out of memory");
    for (int i = 0; i < c->n; i++) {
      st[i].name = c->t[i].name;
      st[i].dtype = dtype_of(m, c);
      st[i].ndim = c->t[i].ndim;
      memcpy(st[i].shape, c->t[i].shape, sizeof(int64_t) * 4);
    }
    double t0 = now_s();
    rc = write_component_files(m, c, dir, st, err);
    sd_free(st);
    if (!rc)
      printf("  %-16s %5d tensors %7.1f M params  %6.1f s  %s/\n", c->dir, c->n,
             component_params(c) / 1e6, now_s() - t0, dir);
  }
  return rc;
}

/* A single-file tensor: one original key built from 1 to 3 diffusers
 * tensors (concatenated along rows) of one component, or a transpose. */
typedef struct single_entry {
  int comp, src[3], nsrc;
} single_entry;

typedef struct single_job {
  const model_spec *m;
  const single_entry *e;
  const sd_stream_tensor *st;
} single_job;

static int fill_single(void *user, int i, void *dst, size_t nbytes, sd_error *err) {
  const single_job *j = user;
  const single_entry *e = &j->e[i];
  const component *c = &j->m->comp[e->comp];
  sd_dtype dt = dtype_of(j->m, c);
  const gen_tensor *first = &c->t[e->src[0]];
  if (first->transposed) {
    int64_t rows = first->shape[0], cols = first->shape[1];
    float *tmp = sd_alloc(sizeof(float) * rows * cols);
    float *row = sd_alloc(sizeof(float) * rows);
    if (!tmp || !row) {
      sd_free(tmp);
      sd_free(row);
      return sd_fail(err, SD_ERR_OOM, "out of memory transposing %s", first->name);
    }
    generate(j->m->seed, c->dir, first, SD_F32, tmp, 0, 1);
    for (int64_t k = 0; k < cols; k++) { /* original row k = diffusers column k */
      for (int64_t r = 0; r < rows; r++) row[r] = tmp[r * cols + k];
      store(dst, dt, k * rows, row, (int)rows);
    }
    sd_free(tmp);
    sd_free(row);
    return SD_OK;
  }
  int64_t at = 0;
  for (int s = 0; s < e->nsrc; s++) {
    const gen_tensor *t = &c->t[e->src[s]];
    generate(j->m->seed, c->dir, t, dt, dst, at, 1);
    at += numel(t->ndim, t->shape);
  }
  if (first->swap_halves) { /* in place, through a small buffer */
    char buf[65536], *a = dst, *b = (char *)dst + nbytes / 2;
    for (size_t off = 0; off < nbytes / 2; off += sizeof buf) {
      size_t len = nbytes / 2 - off < sizeof buf ? nbytes / 2 - off : sizeof buf;
      memcpy(buf, a + off, len);
      memcpy(a + off, b + off, len);
      memcpy(b + off, buf, len);
    }
  }
  return SD_OK;
}

/* The single file `path` with the components whose single_name is `group`
 * (NULL: the main file). */
static int write_single(const model_spec *m, const char *group, const char *path,
                        sd_error *err) {
  int total = 0;
  for (int ci = 0; ci < m->ncomp; ci++) total += 2 * m->comp[ci].n;
  single_entry *e = sd_calloc(total, sizeof *e);
  sd_stream_tensor *st = sd_calloc(total, sizeof *st);
  if (!e || !st) {
    sd_free(e);
    sd_free(st);
    return sd_fail(err, SD_ERR_OOM, "out of memory");
  }
  int n = 0;
  for (int ci = 0; ci < m->ncomp; ci++) {
    const component *c = &m->comp[ci];
    if (group ? !c->single_name || strcmp(c->single_name, group) != 0 : c->single_name != NULL)
      continue;
    for (int i = 0; i < c->n; i++) {
      const gen_tensor *t = &c->t[i];
      if (!t->orig[0]) continue;
      /* fused q/k/v: the three parts are emitted within a few tensors */
      int k = n - 1;
      while (k >= 0 && k >= n - 6 && strcmp(st[k].name, t->orig) != 0) k--;
      if (k >= 0 && k >= n - 6 && e[k].nsrc < 3) {
        e[k].src[e[k].nsrc++] = i;
        st[k].shape[0] += t->orig_shape[0];
        continue;
      }
      e[n].comp = ci;
      e[n].src[0] = i;
      e[n].nsrc = 1;
      st[n].name = t->orig;
      st[n].dtype = dtype_of(m, c);
      st[n].ndim = t->orig_ndim;
      memcpy(st[n].shape, t->orig_shape, sizeof(int64_t) * 4);
      n++;
      if (t->orig2) { /* a tied copy under a second key */
        e[n] = e[n - 1];
        st[n] = st[n - 1];
        st[n].name = t->orig2;
        n++;
      }
    }
  }
  double t0 = now_s();
  single_job job = {m, e, st};
  int rc = sd_safetensors_write_stream(path, st, n, "{\"format\":\"pt\"}", fill_single, &job, err);
  if (!rc) printf("  single file      %5d tensors  %6.1f s  %s\n", n, now_s() - t0, path);
  sd_free(e);
  sd_free(st);
  return rc;
}

/* ---- --verify ---- */

/* Same bytes; across dtypes (the F32 identity the SD3 mapper puts in place
 * of CLIP-L's projection), the same values once both are F32. */
static int same_values(const sd_tensor *a, const sd_tensor *b) {
  if (sd_tensor_numel(a) != sd_tensor_numel(b)) return 0;
  if (a->dtype == b->dtype) return memcmp(a->data, b->data, sd_tensor_nbytes(a)) == 0;
  sd_tensor *fa = sd_tensor_to_f32(a), *fb = sd_tensor_to_f32(b);
  int same = fa && fb && memcmp(fa->data, fb->data, sd_tensor_nbytes(fa)) == 0;
  sd_tensor_free(fa);
  sd_tensor_free(fb);
  return same;
}

/* Every generated tensor is in `set` with its shape, and nothing else is;
 * with `ref` (the folder's set of the same component) the bytes match. */
static int check_set(const component *c, const sd_weights *set, const sd_weights *ref,
                     const char *what, sd_error *err) {
  if (sd_weights_count(set) != c->n)
    return sd_fail(err, SD_ERR_FORMAT, "%s %s: %d tensors, expected %d", what, c->dir,
                   sd_weights_count(set), c->n);
  for (int i = 0; i < c->n; i++) {
    const gen_tensor *g = &c->t[i];
    const sd_tensor *t = sd_weights_get(set, g->name);
    int same = t && t->ndim == g->ndim;
    for (int d = 0; same && d < g->ndim; d++) same = t->shape[d] == g->shape[d];
    if (!same)
      return sd_fail(err, SD_ERR_FORMAT, "%s %s: tensor '%s' missing or misshapen", what,
                     c->dir, g->name);
    const sd_tensor *r = ref ? sd_weights_get(ref, g->name) : NULL;
    if (ref && (!r || !same_values(r, t)))
      return sd_fail(err, SD_ERR_FORMAT, "%s %s: tensor '%s' differs from the folder's", what,
                     c->dir, g->name);
    /* the comparison touched mapped pages: hand them back, so verifying a
     * 27 GB model does not look like a 27 GB process */
    sd_tensor_release_pages(t);
    if (r) sd_tensor_release_pages(r);
  }
  return SD_OK;
}

/* Binds one component with the model loader the generator will use. */
static int load_component(const component *c, const sd_weights *w, const cJSON *cfg,
                          sd_error *err) {
  int rc;
  if (strcmp(c->dir, "unet") == 0) {
    sd_unet *m = NULL;
    rc = sd_unet_load(&m, w, cfg, err);
    sd_unet_free(m);
  } else if (strcmp(c->dir, "vae") == 0) {
    sd_vae *m = NULL;
    rc = sd_vae_load(&m, w, cfg, err);
    sd_vae_free(m);
  } else if (strcmp(c->dir, "transformer") == 0) {
    sd_mmdit *m = NULL;
    rc = sd_mmdit_load(&m, w, cfg, err);
    sd_mmdit_free(m);
  } else if (strcmp(c->dir, "text_encoder_3") == 0) {
    sd_t5 *m = NULL;
    rc = sd_t5_load(&m, w, cfg, err);
    sd_t5_free(m);
  } else {
    sd_clip *m = NULL;
    rc = sd_clip_load(&m, w, "", cfg, SD_ACT_QUICK_GELU, err);
    sd_clip_free(m);
  }
  return rc;
}

static int verify_folder(const model_spec *m, const char *root, sd_weights **sets,
                         sd_error *err) {
  int rc = SD_OK;
  for (int ci = 0; ci < m->ncomp && !rc; ci++) {
    char dir[4096];
    cJSON *cfg = NULL;
    sd_path_join(dir, sizeof dir, root, m->comp[ci].dir);
    rc = sd_component_open(dir, 0, &sets[ci], &cfg, err);
    if (!rc) rc = check_set(&m->comp[ci], sets[ci], NULL, "folder", err);
    if (!rc) rc = load_component(&m->comp[ci], sets[ci], cfg, err);
    cJSON_Delete(cfg);
  }
  if (!rc && strcmp(m->comp[0].dir, "unet") == 0) { /* the pipeline's own entry point */
    sd_unet_model *um = NULL;
    sd_load_options o = {0};
    o.path = root;
    o.skip_text_encoders = 1;
    rc = sd_unet_model_load(&um, &o, err);
    sd_unet_model_free(um);
  }
  if (!rc) printf("  verified folder: every tensor present with its shape; models load\n");
  return rc;
}

static int verify_single(const model_spec *m, const char *path, sd_weights *const *folder,
                         sd_error *err) {
  sd_weights *file = NULL, *sets[4] = {0};
  sd_checkpoint_info info;
  int rc = sd_weights_open(&file, path, err);
  if (rc) return rc;
  rc = sd_checkpoint_map(file, &info, &sets[0], &sets[1], &sets[2], &sets[3], err);
  sd_weights_free(file);
  if (!rc && (info.unmapped_keys || info.ignored_keys))
    rc = sd_fail(err, SD_ERR_FORMAT, "single file: %d unmapped keys (first '%s'), %d ignored",
                 info.unmapped_keys, info.first_unmapped, info.ignored_keys);
  for (int ci = 0; ci < m->ncomp && !rc; ci++) {
    const component *c = &m->comp[ci];
    int slot = strcmp(c->dir, "unet") == 0 ? 0 : strcmp(c->dir, "vae") == 0 ? 1
             : strcmp(c->dir, "text_encoder") == 0 ? 2 : 3;
    if (!sets[slot]) {
      rc = sd_fail(err, SD_ERR_FORMAT, "single file: component %s not found", c->dir);
      break;
    }
    rc = check_set(c, sets[slot], folder ? folder[ci] : NULL, "single file", err);
  }
  for (int i = 0; i < 4; i++) sd_weights_free(sets[i]);
  if (!rc) {
    sd_unet_model *um = NULL;
    sd_load_options o = {0};
    o.path = path;
    o.skip_text_encoders = 1;
    rc = sd_unet_model_load(&um, &o, err);
    sd_unet_model_free(um);
  }
  if (!rc)
    printf("  verified single file (%s): maps back to exactly the folder's tensors%s; "
           "UNet and VAE load\n",
           sd_checkpoint_family_name(info.family), folder ? ", byte for byte" : "");
  return rc;
}

/* Stability's SD3 layout: the main file maps back (sd_sd3_checkpoint_map) to
 * exactly the folder's transformer and VAE, each separate encoder file
 * (sd_sd3_map_text_encoder) to the folder's encoder, and every set binds with
 * its model loader under the config the pipeline derives for a single file. */
static int verify_single_sd3(const model_spec *m, const char *out, const char *path,
                             sd_weights *const *folder, sd_error *err) {
  sd_weights *file = NULL;
  sd_sd3_components comp;
  memset(&comp, 0, sizeof comp);
  int rc = sd_weights_open(&file, path, err);
  if (!rc) {
    for (int i = 0; i < sd_weights_count(file) && !rc; i++) {
      const char *k = sd_weights_name_at(file, i);
      if (strncmp(k, "model.diffusion_model.", 22) != 0 &&
          strncmp(k, "first_stage_model.", 18) != 0)
        rc = sd_fail(err, SD_ERR_FORMAT, "%s: key '%s' under no component prefix", path, k);
    }
    if (!rc) rc = sd_sd3_checkpoint_map(file, &comp, err);
    sd_weights_free(file);
  }
  for (int ci = 0; ci < m->ncomp && !rc; ci++) {
    const component *c = &m->comp[ci];
    sd_weights *set = NULL;
    const cJSON *cfg = NULL;
    cJSON *own_cfg = NULL;
    if (!c->single_name) {
      int tr = strcmp(c->dir, "transformer") == 0;
      set = tr ? comp.transformer : comp.vae;
      cfg = tr ? comp.transformer_config : comp.vae_config;
      if (!set) rc = sd_fail(err, SD_ERR_FORMAT, "%s: no %s", path, c->dir);
      if (!rc) rc = check_set(c, set, folder ? folder[ci] : NULL, "single file", err);
      if (!rc) rc = load_component(c, set, cfg, err);
      continue;
    }
    char ep[4300];
    snprintf(ep, sizeof ep, "%s/%s", out, c->single_name);
    sd_sd3_encoder kind = strcmp(c->dir, "text_encoder") == 0     ? SD_SD3_CLIP_L
                          : strcmp(c->dir, "text_encoder_2") == 0 ? SD_SD3_CLIP_G
                                                                   : SD_SD3_T5;
    rc = sd_weights_open(&file, ep, err);
    if (!rc) {
      rc = sd_sd3_map_text_encoder(file, "", kind, &set, err);
      sd_weights_free(file);
    }
    if (!rc) rc = check_set(c, set, folder ? folder[ci] : NULL, "encoder file", err);
    if (!rc && !(own_cfg = cJSON_Parse(c->config)))
      rc = sd_fail(err, SD_ERR_OOM, "out of memory");
    if (!rc) rc = load_component(c, set, own_cfg, err);
    cJSON_Delete(own_cfg);
    sd_weights_free(set);
  }
  sd_sd3_components_free(&comp);
  if (!rc)
    printf("  verified single files (SD 3, Stability layout: %s + %s/text_encoders/): map back "
           "to exactly the folder's tensors%s; MMDiT, VAE and encoders load\n",
           path, out, folder ? ", byte for byte" : "");
  return rc;
}

/* ---- main ---- */

/* ---- tiny autoencoders (TAESD / TAESDXL / TAESD3) ---- */

/* One half as nn.Sequential entries: diffusers names "<half>.layers.N.*";
 * the original files number the decoder from 1 (index 0 is its clamp).
 * orig: 1 to give the tensors their original-file keys too. */
static void tiny_half(component *c, int decoder, int latent, int orig) {
  enum { CH = 64 };
  static const int dec_blocks[4] = {3, 3, 3, 1}, enc_blocks[4] = {1, 3, 3, 3};
  const char *half = decoder ? "decoder" : "encoder";
  int idx = 0;
  char dn[96], on[96];
#define TINY_NAMES(k)                                                         \
  snprintf(dn, sizeof dn, "%s.layers.%d", half, idx + 0 * (k));            \
  snprintf(on, sizeof on, "%d", idx + decoder)
  for (int level = 0; level < 4; level++) {
    int nb = decoder ? dec_blocks[level] : enc_blocks[level];
    if (!decoder || level == 0) {
      if (decoder && level == 0) { /* conv in, ReLU */
        TINY_NAMES(0);
        conv(c, dn, orig ? on : NULL, CH, latent, 3);
        idx += 2;
      } else if (!decoder) { /* conv in, or a stride-2 conv without bias */
        TINY_NAMES(0);
        if (level == 0) conv(c, dn, orig ? on : NULL, CH, 3, 3);
        else param(c, dn, orig ? on : NULL, "weight", 4, CH, CH, 3, 3);
        idx++;
      }
    }
    for (int b = 0; b < nb; b++, idx++)
      for (int k = 0; k < 3; k++) {
        char bd[128], bo[128];
        TINY_NAMES(0);
        snprintf(bd, sizeof bd, "%s.conv.%d", dn, 2 * k);
        snprintf(bo, sizeof bo, "%s.conv.%d", on, 2 * k);
        conv(c, bd, orig ? bo : NULL, CH, CH, 3);
      }
    if (decoder && level < 3) { /* 2x upsample, conv without bias */
      idx++;
      TINY_NAMES(0);
      param(c, dn, orig ? on : NULL, "weight", 4, CH, CH, 3, 3);
      idx++;
    }
  }
  TINY_NAMES(0); /* conv out */
  conv(c, dn, orig ? on : NULL, decoder ? 3 : latent, CH, 3);
#undef TINY_NAMES
}

static int is_tiny_arch(const char *a) {
  return !strcmp(a, "taesd") || !strcmp(a, "taesdxl") || !strcmp(a, "taesd3");
}

/* DIR/<arch>/: config.json + diffusion_pytorch_model.safetensors (diffusers)
 * and <arch>_decoder.safetensors / <arch>_encoder.safetensors (the original
 * files), the same values (one seeded stream per diffusers name). */
static int write_tiny(model_spec *m, const char *out, sd_error *err) {
  int latent = !strcmp(m->arch, "taesd3") ? 16 : 4;
  char root[4096], p[4400], dec[128], enc[128];
  snprintf(root, sizeof root, "%s/%s", out, m->arch);
  snprintf(dec, sizeof dec, "%s_decoder.safetensors", m->arch);
  snprintf(enc, sizeof enc, "%s_encoder.safetensors", m->arch);
  const char *cfg = latent == 16 ? CFG_TAESD_16 : CFG_TAESD_4;
  component *all = new_component(m, m->arch, UNET_FILE, cfg);
  tiny_half(all, 1, latent, 0);
  tiny_half(all, 0, latent, 0);
  component *d = new_component(m, m->arch, UNET_FILE, cfg);
  d->single_name = dec;
  tiny_half(d, 1, latent, 1);
  component *e = new_component(m, m->arch, UNET_FILE, cfg);
  e->single_name = enc;
  tiny_half(e, 0, latent, 1);
  if (all->oom || d->oom || e->oom) return sd_fail(err, SD_ERR_OOM, "out of memory");
  int rc = make_dir(out, err);
  if (!rc) rc = make_dir(root, err);
  if (!rc) {
    sd_path_join(p, sizeof p, root, "config.json");
    rc = write_text(p, cfg, err);
  }
  sd_stream_tensor *st = sd_alloc(sizeof *st * all->n);
  if (!st) return sd_fail(err, SD_ERR_OOM, "out of memory");
  for (int i = 0; i < all->n; i++) {
    st[i].name = all->t[i].name;
    st[i].dtype = m->dtype;
    st[i].ndim = all->t[i].ndim;
    memcpy(st[i].shape, all->t[i].shape, sizeof(int64_t) * 4);
  }
  if (!rc) rc = write_component_files(m, all, root, st, err);
  sd_free(st);
  if (!rc) printf("  %-16s %5d tensors %7.2f M params  %s/\n", m->arch, all->n,
                  component_params(all) / 1e6, root);
  snprintf(p, sizeof p, "%s/%s", root, dec);
  if (!rc) rc = write_single(m, dec, p, err);
  snprintf(p, sizeof p, "%s/%s", root, enc);
  if (!rc) rc = write_single(m, enc, p, err);
  return rc;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: make_random_model --arch sd15|sdxl|sdxl-refiner|sd35-medium|sd35-large|\n"
          "                         sd-turbo|lcm-sd15|taesd|taesdxl|taesd3\n"
          "                         --out DIR [--layout folder|single|both]\n"
          "                         [--dtype f16|bf16|f32] [--seed N] [--verify|--verify-only]\n"
          "       make_random_model --arch ARCH --list   (names, shapes, sizes; writes nothing)\n"
          "\n"
          "Writes a random-weight model with the real release's configs, tensor names and\n"
          "sizes: DIR/<arch>/ (diffusers folder) and/or DIR/<arch>.safetensors (single\n"
          "file, original key names; SD3.5: Stability's layout, MMDiT + VAE, encoders in\n"
          "DIR/text_encoders/). Tokenizer folders are\n"
          "not written: give the generator the tokenizer files with --tokenizers DIR\n"
          "(e.g. ../shared/fixtures/tokenizers). SD3.5 transformers are written in BF16\n"
          "as released unless --dtype is given. --verify reloads what was written with\n"
          "the project's loaders and mapper (--verify-only: checks what an earlier run\n"
          "wrote, with the same --arch/--layout/--seed/--dtype, writing nothing).\n"
          "Sizes: SD 1.5 2.1 GB, SDXL 6.9 GB, refiner 6.1 GB, SD3.5 Medium 16.3 GB,\n"
          "Large 27.6 GB (F16 / BF16). taesd, taesdxl, taesd3: the tiny autoencoders\n"
          "(64 channels) as DIR/<arch>/ with config.json + diffusion_pytorch_model.safetensors\n"
          "and the original <arch>_decoder/_encoder.safetensors, F32 unless --dtype.\n");
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0); /* progress lines show up when piped */
  const char *arch = NULL, *out = NULL, *layout = "folder", *dtype = NULL;
  uint64_t seed = 42;
  int verify = 0, verify_only = 0, list = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(a, "--verify") == 0) {
      verify = 1;
      continue;
    } else if (strcmp(a, "--verify-only") == 0) {
      verify = verify_only = 1;
      continue;
    } else if (strcmp(a, "--list") == 0) {
      list = 1;
      continue;
    }
    if (!v) {
      fprintf(stderr, "error: %s needs a value\n", a);
      return 2;
    }
    i++;
    if (strcmp(a, "--arch") == 0) arch = v;
    else if (strcmp(a, "--out") == 0) out = v;
    else if (strcmp(a, "--layout") == 0) layout = v;
    else if (strcmp(a, "--dtype") == 0) dtype = v;
    else if (strcmp(a, "--seed") == 0) seed = strtoull(v, NULL, 10);
    else {
      fprintf(stderr, "error: unknown option %s\n", a);
      usage(stderr);
      return 2;
    }
  }
  if (!arch || (!out && !list)) {
    usage(stderr);
    return 2;
  }
  int folder = strcmp(layout, "folder") == 0 || strcmp(layout, "both") == 0;
  int single = strcmp(layout, "single") == 0 || strcmp(layout, "both") == 0;
  if (single && arch && (!strcmp(arch, "sd-turbo") || !strcmp(arch, "lcm-sd15"))) {
    /* their single files would need the unused OpenCLIP layer / cond_proj keys */
    fprintf(stderr, "error: --arch %s is written as a diffusers folder only\n", arch);
    return 2;
  }
  if (!folder && !single) {
    fprintf(stderr, "error: --layout must be folder, single or both\n");
    return 2;
  }
  model_spec m;
  memset(&m, 0, sizeof m);
  m.arch = arch;
  m.seed = seed;
  m.dtype = SD_F16;
  if (dtype) {
    if (strcmp(dtype, "f16") == 0) m.dtype = SD_F16;
    else if (strcmp(dtype, "bf16") == 0) m.dtype = SD_BF16;
    else if (strcmp(dtype, "f32") == 0) m.dtype = SD_F32;
    else {
      fprintf(stderr, "error: --dtype must be f16, bf16 or f32\n");
      return 2;
    }
  }
  m.transformer_dtype = dtype ? m.dtype : SD_BF16;
  sd_error err = {0};
  init_normal_table();
  if (is_tiny_arch(arch)) { /* F32 as released unless --dtype */
    if (!dtype) m.dtype = SD_F32;
    int rc = out ? write_tiny(&m, out, &err) : sd_fail(&err, SD_ERR_ARG, "--out needed");
    free_spec(&m);
    if (rc) fprintf(stderr, "error: %s\n", err.msg);
    return rc ? 1 : 0;
  }
  int rc = build_spec(&m, &err);
  int is_sd3 = !rc && strcmp(m.comp[0].dir, "transformer") == 0;
  if (!rc && list) { /* names, shapes and sizes only; nothing is written */
    int64_t total = 0;
    for (int ci = 0; ci < m.ncomp; ci++) {
      const component *c = &m.comp[ci];
      int64_t p = component_params(c);
      total += p;
      for (int i = 0; i < c->n; i++) {
        const gen_tensor *g = &c->t[i];
        printf("%s/%s [", c->dir, g->name);
        for (int d = 0; d < g->ndim; d++) printf(d ? ", %lld" : "%lld", (long long)g->shape[d]);
        printf("] %s\n", g->orig);
      }
      printf("# %s: %d tensors, %lld parameters, %.2f GB\n", c->dir, c->n, (long long)p,
             p * (double)sd_dtype_size(dtype_of(&m, c)) / 1e9);
    }
    printf("# total: %lld parameters\n", (long long)total);
    free_spec(&m);
    return 0;
  }
  char root[4096], file[4200];
  snprintf(root, sizeof root, "%s/%s", out, arch);
  snprintf(file, sizeof file, "%s/%s.safetensors", out, arch);
  if (!rc) rc = make_dir(out, &err);
  if (!rc) {
    int64_t params = 0;
    for (int i = 0; i < m.ncomp; i++) params += component_params(&m.comp[i]);
    printf("%s: %.2f G parameters, seed %llu\n", arch, params / 1e9, (unsigned long long)seed);
  }
  if (!rc && folder && !verify_only) rc = write_folder(&m, root, &err);
  if (!rc && single && !verify_only) rc = write_single(&m, NULL, file, &err);
  for (int ci = 0; ci < m.ncomp && !rc && single && !verify_only; ci++) {
    const char *name = m.comp[ci].single_name;
    char p[4400], d[4400];
    if (!name) continue;
    snprintf(p, sizeof p, "%s/%s", out, name);
    snprintf(d, sizeof d, "%s", p);
    char *slash = strrchr(d, '/');
    if (slash) *slash = '\0';
    rc = make_dir(d, &err);
    if (!rc) rc = write_single(&m, name, p, &err);
  }
  sd_weights *sets[MAX_COMPONENTS] = {0};
  if (!rc && verify && folder) rc = verify_folder(&m, root, sets, &err);
  if (!rc && verify && single)
    rc = is_sd3 ? verify_single_sd3(&m, out, file, folder ? sets : NULL, &err)
                : verify_single(&m, file, folder ? sets : NULL, &err);
  for (int i = 0; i < MAX_COMPONENTS; i++) sd_weights_free(sets[i]);
  free_spec(&m);
  if (rc) {
    fprintf(stderr, "error: %s\n", err.msg[0] ? err.msg : "failed");
    return 1;
  }
  return 0;
}
