#include "models/taesd.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "io/json.h"
#include "io/model_dir.h"
#include "io/pth.h"
#include "io/safetensors.h"
#include "tensor/ops.h"

/* Layers, in execution order. */
typedef enum { L_CONV, L_BLOCK, L_RELU, L_UP, L_CLAMP } layer_kind;

typedef struct taesd_layer {
  layer_kind kind;
  int in_ch, out_ch, stride;
  const sd_tensor *w[3], *b[3]; /* conv: w[0], b[0] (b may be NULL); block: 3 convs */
  const sd_tensor *skip;        /* block: 1x1 conv without bias, or NULL */
} taesd_layer;

typedef struct taesd_half {
  taesd_layer *layer;
  int n;
  sd_weights *w; /* one of the two owns the mapping */
  sd_pth *pth;
} taesd_half;

struct sd_taesd {
  sd_taesd_config cfg;
  taesd_half dec, enc;
  int shared; /* diffusers folder: enc.w is dec.w */
};

/* ---- weight lookup ---- */

typedef struct wsrc {
  const sd_weights *w;
  const sd_pth *pth;
  const char *prefix; /* "decoder.layers." or "" */
  int offset;         /* file index = layer index + offset */
  const char *what;   /* for messages */
} wsrc;

static const sd_tensor *get(const wsrc *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static const sd_tensor *get(const wsrc *s, const char *fmt, ...) {
  char name[256];
  int n = snprintf(name, sizeof name, "%s", s->prefix);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name + n, sizeof name - (size_t)n, fmt, ap);
  va_end(ap);
  return s->w ? sd_weights_get(s->w, name) : sd_pth_get(s->pth, name);
}

static int float_dtype(const sd_tensor *t) {
  return t->dtype == SD_F32 || t->dtype == SD_F16 || t->dtype == SD_BF16;
}

/* A conv weight (out, in, k, k) and its optional bias (out). */
static int check_conv(const wsrc *s, int idx, const char *sub, const sd_tensor *w,
                      const sd_tensor *b, int k, sd_error *err) {
  if (!float_dtype(w) || w->ndim != 4 || w->shape[2] != k || w->shape[3] != k || w->shape[0] <= 0 ||
      w->shape[1] <= 0)
    return sd_fail(err, SD_ERR_FORMAT, "%s: %s%d.%sweight is not a %dx%d conv weight", s->what,
                   s->prefix, idx + s->offset, sub, k, k);
  if (b && (!float_dtype(b) || b->ndim != 1 || b->shape[0] != w->shape[0]))
    return sd_fail(err, SD_ERR_FORMAT, "%s: %s%d.%sbias does not match its weight", s->what,
                   s->prefix, idx + s->offset, sub);
  return SD_OK;
}

/* Reads the nn.Sequential of one half: convs ("N.weight"), Blocks
 * ("N.conv.0.weight") and parameter-free layers (gaps in the numbering).
 * decoder: conv, gap (ReLU), then Blocks and [gap (upsample), conv without
 * bias] groups, final conv with bias. encoder: conv, then Blocks and
 * stride-2 convs without bias, final conv with bias. */
static int parse_half(taesd_half *h, const wsrc *s, int decoder, int *nblocks, int *factor,
                      int *latent, int *widest, sd_error *err) {
  enum { MAX_INDEX = 512 };
  int last = -1;
  for (int i = 0; i < MAX_INDEX; i++)
    if (get(s, "%d.weight", i + s->offset) || get(s, "%d.conv.0.weight", i + s->offset)) last = i;
  if (last < 2)
    return sd_fail(err, SD_ERR_FORMAT, "%s: no %s layers (%s0.weight ...)", s->what,
                   decoder ? "decoder" : "encoder", s->prefix);
  h->layer = sd_calloc((size_t)last + 3, sizeof *h->layer);
  if (!h->layer) return sd_fail(err, SD_ERR_OOM, "out of memory loading the tiny VAE");
  if (decoder) h->layer[h->n++] = (taesd_layer){.kind = L_CLAMP};
  int ch = -1, pending_up = 0;
  *nblocks = 0;
  *factor = 1;
  for (int i = 0; i <= last; i++) {
    int fi = i + s->offset;
    const sd_tensor *cw = get(s, "%d.weight", fi);
    const sd_tensor *b0 = get(s, "%d.conv.0.weight", fi);
    int first = ch < 0, final = i == last;
    if (!cw && !b0) { /* parameter-free layer */
      if (decoder && i == 1) {
        h->layer[h->n++] = (taesd_layer){.kind = L_RELU};
      } else if (decoder && !pending_up && !final) {
        pending_up = 1;
      } else {
        return sd_fail(err, SD_ERR_FORMAT,
                       "%s: layer %s%d has no weights where the %s needs "
                       "a conv or a block",
                       s->what, s->prefix, fi, decoder ? "decoder" : "encoder");
      }
      continue;
    }
    if (decoder && i == 1)
      return sd_fail(err, SD_ERR_FORMAT, "%s: %s%d should be the ReLU after the first conv",
                     s->what, s->prefix, fi);
    taesd_layer L = {0};
    if (cw) {
      const sd_tensor *cb = get(s, "%d.bias", fi);
      int rc = check_conv(s, i, "", cw, cb, 3, err);
      if (rc) return rc;
      L.kind = L_CONV;
      L.w[0] = cw;
      L.b[0] = cb;
      L.in_ch = (int)cw->shape[1];
      L.out_ch = (int)cw->shape[0];
      L.stride = 1;
      int want_bias = first || final;
      if (!!cb != want_bias)
        return sd_fail(err, SD_ERR_FORMAT, "%s: %s%d is a conv %s a bias, expected %s", s->what,
                       s->prefix, fi, cb ? "with" : "without",
                       want_bias ? "the first or last conv (with bias)"
                                 : (decoder ? "a conv without bias after an upsample"
                                            : "a stride-2 conv without bias"));
      if (!want_bias) {
        if (decoder) {
          if (!pending_up)
            return sd_fail(err, SD_ERR_FORMAT,
                           "%s: %s%d (conv without bias) does not follow "
                           "an upsample",
                           s->what, s->prefix, fi);
          h->layer[h->n++] = (taesd_layer){.kind = L_UP, .in_ch = ch, .out_ch = ch};
          pending_up = 0;
        } else {
          L.stride = 2;
        }
        *factor *= 2;
      }
      if (first) *latent = decoder ? L.in_ch : *latent;
      if (final && !decoder) *latent = L.out_ch;
    } else {
      L.kind = L_BLOCK;
      L.stride = 1;
      for (int k = 0; k < 3; k++) {
        char sub[16];
        snprintf(sub, sizeof sub, "conv.%d.", 2 * k);
        L.w[k] = get(s, "%d.conv.%d.weight", fi, 2 * k);
        L.b[k] = get(s, "%d.conv.%d.bias", fi, 2 * k);
        if (!L.w[k] || !L.b[k])
          return sd_fail(err, SD_ERR_FORMAT, "%s: block %s%d lacks conv.%d.weight/bias", s->what,
                         s->prefix, fi, 2 * k);
        int rc = check_conv(s, i, sub, L.w[k], L.b[k], 3, err);
        if (rc) return rc;
      }
      L.in_ch = (int)L.w[0]->shape[1];
      L.out_ch = (int)L.w[0]->shape[0];
      if (L.w[1]->shape[1] != L.out_ch || L.w[1]->shape[0] != L.out_ch ||
          L.w[2]->shape[1] != L.out_ch || L.w[2]->shape[0] != L.out_ch)
        return sd_fail(err, SD_ERR_FORMAT, "%s: block %s%d has mismatched channels", s->what,
                       s->prefix, fi);
      L.skip = get(s, "%d.skip.weight", fi);
      if (L.skip) {
        int rc = check_conv(s, i, "skip.", L.skip, NULL, 1, err);
        if (rc) return rc;
        if (L.skip->shape[0] != L.out_ch || L.skip->shape[1] != L.in_ch)
          return sd_fail(err, SD_ERR_FORMAT, "%s: %s%d.skip does not map %d to %d channels",
                         s->what, s->prefix, fi, L.in_ch, L.out_ch);
      } else if (L.in_ch != L.out_ch) {
        return sd_fail(err, SD_ERR_FORMAT,
                       "%s: block %s%d changes channels without a skip "
                       "conv",
                       s->what, s->prefix, fi);
      }
      if (first)
        return sd_fail(err, SD_ERR_FORMAT, "%s: %s%d: the first layer must be a conv", s->what,
                       s->prefix, fi);
      (*nblocks)++;
    }
    if (pending_up)
      return sd_fail(err, SD_ERR_FORMAT,
                     "%s: the upsample before %s%d is not followed by a "
                     "conv without bias",
                     s->what, s->prefix, fi);
    if (!first && L.in_ch != ch)
      return sd_fail(err, SD_ERR_FORMAT, "%s: %s%d takes %d channels, the layer before gives %d",
                     s->what, s->prefix, fi, L.in_ch, ch);
    if (L.out_ch > *widest) *widest = L.out_ch;
    if (L.in_ch > *widest) *widest = L.in_ch;
    ch = L.out_ch;
    h->layer[h->n++] = L;
  }
  if (!decoder && h->layer[0].in_ch != 3)
    return sd_fail(err, SD_ERR_FORMAT, "%s: the encoder takes %d channels, expected 3 (RGB)",
                   s->what, h->layer[0].in_ch);
  if (decoder && ch != 3)
    return sd_fail(err, SD_ERR_FORMAT, "%s: the decoder gives %d channels, expected 3 (RGB)",
                   s->what, ch);
  return SD_OK;
}

/* ---- opening ---- */

static int ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcmp(s + a - b, suffix) == 0;
}

static int open_file(taesd_half *h, const char *path, sd_error *err) {
  if (ends_with(path, ".pth") || ends_with(path, ".pt") || ends_with(path, ".ckpt"))
    return sd_pth_open(&h->pth, path, err);
  return sd_weights_open(&h->w, path, err);
}

/* "<dir>/<stem>_decoder.<ext>" for a file named *_encoder.* and back. */
static int sibling(const char *path, const char *from, const char *to, char *out, size_t n) {
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  const char *at = strstr(base, from);
  if (!at) return 0;
  snprintf(out, n, "%.*s%s%s", (int)(at - path), path, to, at + strlen(from));
  return sd_is_file(out);
}

/* In a folder without config.json: the original-format files. */
static int find_original(const char *dir, const char *half, char *out, size_t n) {
  static const char *const stems[] = {"taesd", "taesdxl", "taesd3", "taesd2", "taef1", NULL};
  static const char *const exts[] = {"safetensors", "pth", NULL};
  for (int i = 0; stems[i]; i++)
    for (int e = 0; exts[e]; e++) {
      char name[64];
      snprintf(name, sizeof name, "%s_%s.%s", stems[i], half, exts[e]);
      sd_path_join(out, n, dir, name);
      if (sd_is_file(out)) return 1;
    }
  return 0;
}

/* Cross-checks the structure with an AutoencoderTiny config.json. */
static int check_config(sd_taesd *t, const cJSON *cfg, const char *path, sd_error *err) {
  sd_taesd_config *c = &t->cfg;
  c->scaling_factor = (float)sd_json_num(cfg, "scaling_factor", 1.0);
  c->shift_factor = (float)sd_json_num(cfg, "shift_factor", 0.0);
  int lc = sd_json_int(cfg, "latent_channels", c->latent_channels);
  if (lc != c->latent_channels)
    return sd_fail(err, SD_ERR_FORMAT,
                   "%s: config.json says %d latent channels, the weights "
                   "have %d",
                   path, lc, c->latent_channels);
  if (sd_json_int(cfg, "upsampling_scaling_factor", 2) != 2)
    return sd_fail(err, SD_ERR_UNSUPPORTED, "%s: only upsampling_scaling_factor 2 is supported",
                   path);
  int blocks[16], nb;
  const struct {
    const char *key;
    int has, count, factor;
  } half[2] = {{"num_decoder_blocks", c->has_decoder, c->decoder_blocks, c->decoder_factor},
               {"num_encoder_blocks", c->has_encoder, c->encoder_blocks, c->encoder_factor}};
  for (int k = 0; k < 2; k++) {
    if (!half[k].has || !sd_json_has(cfg, half[k].key)) continue;
    nb = sd_json_int_array(cfg, half[k].key, blocks, 16);
    int sum = 0;
    for (int i = 0; i < nb; i++) sum += blocks[i];
    if (nb <= 0 || sum != half[k].count || (1 << (nb - 1)) != half[k].factor)
      return sd_fail(err, SD_ERR_FORMAT,
                     "%s: config.json %s does not match the weights (%d "
                     "blocks, factor %d)",
                     path, half[k].key, half[k].count, half[k].factor);
  }
  return SD_OK;
}

static int load_half(sd_taesd *t, taesd_half *h, int decoder, const wsrc *s, sd_error *err) {
  sd_taesd_config *c = &t->cfg;
  int latent = 0, widest = c->max_channels;
  int rc = parse_half(h, s, decoder, decoder ? &c->decoder_blocks : &c->encoder_blocks,
                      decoder ? &c->decoder_factor : &c->encoder_factor, &latent, &widest, err);
  if (rc) return rc;
  c->max_channels = widest;
  if (c->latent_channels && latent != c->latent_channels)
    return sd_fail(err, SD_ERR_FORMAT,
                   "tiny VAE: the encoder gives %d latent channels, the "
                   "decoder takes %d",
                   decoder ? c->latent_channels : latent, decoder ? latent : c->latent_channels);
  c->latent_channels = latent;
  if (decoder)
    c->has_decoder = 1;
  else
    c->has_encoder = 1;
  return SD_OK;
}

int sd_taesd_open(sd_taesd **out, const char *path, int need, sd_error *err) {
  *out = NULL;
  sd_taesd *t = sd_calloc(1, sizeof *t);
  if (!t) return sd_fail(err, SD_ERR_OOM, "out of memory loading the tiny VAE");
  t->cfg.image_channels = 3;
  t->cfg.scaling_factor = 1.0f;
  char dec[4200] = "", enc[4200] = "", cfgp[4200] = "", one[4200] = "";
  int rc = SD_OK;
  if (sd_is_dir(path)) {
    sd_path_join(cfgp, sizeof cfgp, path, "config.json");
    if (sd_is_file(cfgp)) {
      sd_path_join(one, sizeof one, path, "diffusion_pytorch_model.safetensors");
      if (!sd_is_file(one))
        rc = sd_fail(err, SD_ERR_IO,
                     "%s has a config.json but no "
                     "diffusion_pytorch_model.safetensors",
                     path);
    } else {
      cfgp[0] = 0;
      find_original(path, "decoder", dec, sizeof dec) || (dec[0] = 0);
      find_original(path, "encoder", enc, sizeof enc) || (enc[0] = 0);
      if (!dec[0] && !enc[0])
        rc = sd_fail(err, SD_ERR_IO,
                     "%s holds no tiny VAE (no config.json + "
                     "diffusion_pytorch_model.safetensors, no taesd*_decoder.safetensors)",
                     path);
    }
  } else if (sd_is_file(path)) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (strstr(base, "_decoder")) {
      snprintf(dec, sizeof dec, "%s", path);
      sibling(path, "_decoder", "_encoder", enc, sizeof enc) || (enc[0] = 0);
    } else if (strstr(base, "_encoder")) {
      snprintf(enc, sizeof enc, "%s", path);
      sibling(path, "_encoder", "_decoder", dec, sizeof dec) || (dec[0] = 0);
    } else {
      snprintf(one, sizeof one, "%s", path); /* AutoencoderTiny weights */
      const char *slash = strrchr(path, '/');
      snprintf(cfgp, sizeof cfgp, "%.*sconfig.json", slash ? (int)(slash - path + 1) : 0, path);
      if (!sd_is_file(cfgp)) cfgp[0] = 0;
    }
  } else {
    rc = sd_fail(err, SD_ERR_IO, "tiny VAE %s: no such file or folder", path);
  }
  if (!rc && one[0]) {
    t->shared = 1;
    t->cfg.original_format = 0;
    if (!(rc = sd_weights_open(&t->dec.w, one, err))) {
      wsrc sd = {t->dec.w, NULL, "decoder.layers.", 0, one};
      wsrc se = {t->dec.w, NULL, "encoder.layers.", 0, one};
      int has_dec = sd_weights_get(t->dec.w, "decoder.layers.0.weight") != NULL;
      int has_enc = sd_weights_get(t->enc.w = t->dec.w, "encoder.layers.0.weight") != NULL;
      if ((need & SD_TAESD_DECODER) && !has_dec)
        rc = sd_fail(err, SD_ERR_FORMAT, "%s has no tiny VAE decoder (decoder.layers.*)", one);
      else if ((need & SD_TAESD_ENCODER) && !has_enc)
        rc = sd_fail(err, SD_ERR_FORMAT, "%s has no tiny VAE encoder (encoder.layers.*)", one);
      if (!rc && has_dec) rc = load_half(t, &t->dec, 1, &sd, err);
      if (!rc && has_enc) rc = load_half(t, &t->enc, 0, &se, err);
    }
  } else if (!rc) {
    t->cfg.original_format = 1;
    if ((need & SD_TAESD_DECODER) && !dec[0])
      rc = sd_fail(err, SD_ERR_IO,
                   "%s: no tiny VAE decoder file (taesd*_decoder.safetensors "
                   "or .pth) beside it",
                   path);
    else if ((need & SD_TAESD_ENCODER) && !enc[0])
      rc = sd_fail(err, SD_ERR_IO,
                   "%s: no tiny VAE encoder file (taesd*_encoder.safetensors "
                   "or .pth) beside it",
                   path);
    if (!rc && dec[0] && !(rc = open_file(&t->dec, dec, err))) {
      wsrc s = {t->dec.w, t->dec.pth, "", 1, dec};
      rc = load_half(t, &t->dec, 1, &s, err);
    }
    if (!rc && enc[0] && !(rc = open_file(&t->enc, enc, err))) {
      wsrc s = {t->enc.w, t->enc.pth, "", 0, enc};
      rc = load_half(t, &t->enc, 0, &s, err);
    }
  }
  if (!rc && cfgp[0]) {
    cJSON *cfg = NULL;
    if (!(rc = sd_json_read_file(cfgp, &cfg, err))) rc = check_config(t, cfg, cfgp, err);
    cJSON_Delete(cfg);
  }
  if (!rc && t->cfg.has_decoder && t->cfg.has_encoder &&
      t->cfg.decoder_factor != t->cfg.encoder_factor)
    rc = sd_fail(err, SD_ERR_FORMAT,
                 "%s: the tiny VAE's encoder downsamples by %d, its decoder "
                 "upsamples by %d",
                 path, t->cfg.encoder_factor, t->cfg.decoder_factor);
  if (rc) {
    sd_taesd_free(t);
    return rc;
  }
  *out = t;
  return SD_OK;
}

void sd_taesd_free(sd_taesd *t) {
  if (!t) return;
  sd_free(t->dec.layer);
  sd_free(t->enc.layer);
  sd_weights_free(t->dec.w);
  if (!t->shared) sd_weights_free(t->enc.w);
  sd_pth_free(t->dec.pth);
  sd_pth_free(t->enc.pth);
  sd_free(t);
}

const sd_taesd_config *sd_taesd_get_config(const sd_taesd *t) {
  return &t->cfg;
}

static int64_t half_bytes(const taesd_half *h) {
  int64_t b = 0;
  for (int i = 0; i < h->n; i++) {
    const taesd_layer *L = &h->layer[i];
    for (int k = 0; k < 3; k++) {
      if (L->w[k]) b += (int64_t)sd_tensor_nbytes(L->w[k]);
      if (L->b[k]) b += (int64_t)sd_tensor_nbytes(L->b[k]);
    }
    if (L->skip) b += (int64_t)sd_tensor_nbytes(L->skip);
  }
  return b;
}

int64_t sd_taesd_weight_bytes(const sd_taesd *t) {
  return half_bytes(&t->dec) + half_bytes(&t->enc);
}

/* ---- forward ---- */

/* Runs one half on one image: x (C, H, W) owned buffer, consumed; returns
 * the output buffer in *y with its size. */
static int run_half(const taesd_half *h, float *x, int C, int H, int W, float **y, int *oc, int *oh,
                    int *ow, sd_error *err) {
  int rc = SD_OK;
  for (int i = 0; i < h->n && !rc; i++) {
    const taesd_layer *L = &h->layer[i];
    int64_t hw = (int64_t)H * W;
    float *o = NULL;
    switch (L->kind) {
      case L_CLAMP:
        if (!sd_plan_active())
          for (int64_t k = 0; k < C * hw; k++) x[k] = tanhf(x[k] / 3.0f) * 3.0f;
        continue;
      case L_RELU:
        sd_relu(x, C * hw);
        continue;
      case L_UP:
        if (!(o = sd_alloc(sizeof(float) * C * hw * 4))) break;
        sd_upsample_nearest2x(o, x, 1, C, H, W);
        H *= 2;
        W *= 2;
        break;
      case L_CONV: {
        int OH = (H + 2 - 3) / L->stride + 1, OW = (W + 2 - 3) / L->stride + 1;
        if (!(o = sd_alloc(sizeof(float) * L->out_ch * OH * OW))) break;
        rc = sd_conv2d(o, x, 1, C, H, W, L->w[0], L->b[0], L->stride, 1);
        H = OH;
        W = OW;
        C = L->out_ch;
        break;
      }
      case L_BLOCK: {
        int64_t n = (int64_t)L->out_ch * hw;
        float *a = sd_alloc(sizeof(float) * n), *b = sd_alloc(sizeof(float) * n);
        if (!a || !b) {
          sd_free(a);
          sd_free(b);
          break;
        }
        rc = sd_conv2d(a, x, 1, C, H, W, L->w[0], L->b[0], 1, 1);
        if (!rc) {
          sd_relu(a, n);
          rc = sd_conv2d(b, a, 1, L->out_ch, H, W, L->w[1], L->b[1], 1, 1);
        }
        if (!rc) {
          sd_relu(b, n);
          rc = sd_conv2d(a, b, 1, L->out_ch, H, W, L->w[2], L->b[2], 1, 1);
        }
        if (!rc && L->skip) {
          rc = sd_conv2d(b, x, 1, C, H, W, L->skip, NULL, 1, 0);
          if (!rc) sd_add_inplace(a, b, n);
        } else if (!rc) {
          sd_add_inplace(a, x, n);
        }
        if (!rc) sd_relu(a, n);
        sd_free(b);
        o = a;
        C = L->out_ch;
        break;
      }
    }
    sd_free(x);
    x = o;
    if (!o) return sd_fail(err, SD_ERR_OOM, "out of memory in the tiny VAE");
  }
  if (rc) {
    sd_free(x);
    return sd_fail(err, rc, "tiny VAE: a convolution failed (out of memory)");
  }
  *y = x;
  *oc = C;
  *oh = H;
  *ow = W;
  return SD_OK;
}

int sd_taesd_decode(const sd_taesd *t, const float *latents, int B, int h, int w, float *image,
                    sd_error *err) {
  const sd_taesd_config *c = &t->cfg;
  if (!c->has_decoder) return sd_fail(err, SD_ERR_ARG, "the tiny VAE has no decoder");
  if (B <= 0 || h <= 0 || w <= 0) return sd_fail(err, SD_ERR_ARG, "tiny VAE: empty input");
  int L = c->latent_channels;
  int64_t in_n = (int64_t)L * h * w;
  for (int b = 0; b < B; b++) {
    float *x = sd_alloc(sizeof(float) * in_n), *y = NULL;
    if (!x) return sd_fail(err, SD_ERR_OOM, "out of memory in the tiny VAE");
    if (!sd_plan_active()) memcpy(x, latents + in_n * b, sizeof(float) * in_n);
    int oc, oh, ow;
    int rc = run_half(&t->dec, x, L, h, w, &y, &oc, &oh, &ow, err);
    if (rc) return rc;
    int64_t out_n = (int64_t)oc * oh * ow;
    if (!sd_plan_active())
      for (int64_t k = 0; k < out_n; k++) image[out_n * b + k] = 2.0f * y[k] - 1.0f;
    sd_free(y);
  }
  return SD_OK;
}

int sd_taesd_encode(const sd_taesd *t, const float *image, int B, int H, int W, float *latents,
                    sd_error *err) {
  const sd_taesd_config *c = &t->cfg;
  if (!c->has_encoder) return sd_fail(err, SD_ERR_ARG, "the tiny VAE has no encoder");
  if (B <= 0 || H <= 0 || W <= 0) return sd_fail(err, SD_ERR_ARG, "tiny VAE: empty input");
  int64_t in_n = 3LL * H * W;
  for (int b = 0; b < B; b++) {
    float *x = sd_alloc(sizeof(float) * in_n), *y = NULL;
    if (!x) return sd_fail(err, SD_ERR_OOM, "out of memory in the tiny VAE");
    if (!sd_plan_active())
      for (int64_t k = 0; k < in_n; k++) x[k] = (image[in_n * b + k] + 1.0f) / 2.0f;
    int oc, oh, ow;
    int rc = run_half(&t->enc, x, 3, H, W, &y, &oc, &oh, &ow, err);
    if (rc) return rc;
    int64_t out_n = (int64_t)oc * oh * ow;
    if (!sd_plan_active()) memcpy(latents + out_n * b, y, sizeof(float) * out_n);
    sd_free(y);
  }
  return SD_OK;
}

int64_t sd_taesd_decode_bytes(const sd_taesd *t, int h, int w) {
  if (!t->cfg.has_decoder) return 0;
  sd_plan_begin();
  int64_t base = sd_alloc_get_stats().bytes_in_use, peak = -1;
  sd_error e = {0};
  sd_alloc_reset_peak();
  /* plan mode: no data is read or written, the buffers are never touched */
  static float dummy;
  if (sd_taesd_decode(t, &dummy, 1, h, w, &dummy, &e) == SD_OK)
    peak = sd_alloc_get_stats().peak_bytes - base;
  sd_plan_end();
  return peak;
}
