#include "models/rrdbnet.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "tensor/ops.h"

#define RRDB_LRELU_SLOPE 0.2f
/* BasicSR's residual scaling in both the dense block and the RRDB. */
#define RRDB_RES_SCALE 0.2f

typedef struct conv3x3 {
  const sd_tensor *w; /* (out, in, 3, 3) */
  const sd_tensor *b; /* (out) */
} conv3x3;

typedef struct rdb_weights {
  conv3x3 conv[5]; /* conv k reads F + k*G channels; conv 5 writes F */
} rdb_weights;

struct sd_rrdbnet {
  sd_rrdbnet_config cfg;
  int unshuffle; /* pixel-unshuffle factor before conv_first: 1, 2 or 4 */
  conv3x3 conv_first; /* (F, in_ch * unshuffle^2, 3, 3) */
  rdb_weights *rdb;   /* num_block * 3 dense blocks */
  conv3x3 conv_body, conv_up1, conv_up2, conv_hr; /* (F, F, 3, 3) */
  conv3x3 conv_last;  /* (out_ch, F, 3, 3) */
};

/* ---- binding ---- */

/* Weights come from a safetensors set or a .pth checkpoint; binding only
 * needs name -> view. */
typedef struct weight_source {
  const sd_tensor *(*get)(const void *src, const char *name);
  const void *src;
  const char *prefix;
} weight_source;

static const sd_tensor *get_from_weights(const void *src, const char *name) {
  return sd_weights_get(src, name);
}
static const sd_tensor *get_from_pth(const void *src, const char *name) {
  return sd_pth_get(src, name);
}

static const sd_tensor *lookup(const weight_source *ws, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static const sd_tensor *lookup(const weight_source *ws, const char *fmt, ...) {
  char name[256];
  int n = snprintf(name, sizeof name, "%s", ws->prefix);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name + n, sizeof name - (size_t)n, fmt, ap);
  va_end(ap);
  return ws->get(ws->src, name);
}

static int bind_tensor(const weight_source *ws, const char *name,
                       const char *suffix, int ndim, const int64_t *shape,
                       const sd_tensor **out, sd_error *err) {
  const sd_tensor *t = lookup(ws, "%s.%s", name, suffix);
  if (!t)
    return sd_fail(err, SD_ERR_FORMAT, "RRDBNet weights: %s%s.%s missing",
                   ws->prefix, name, suffix);
  int ok = t->ndim == ndim &&
           (t->dtype == SD_F32 || t->dtype == SD_F16 || t->dtype == SD_BF16);
  for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
  if (!ok) {
    char s[96];
    return sd_fail(err, SD_ERR_FORMAT,
                   "RRDBNet weights: %s%s.%s is %s %s, expected %lld output "
                   "and %lld input channels",
                   ws->prefix, name, suffix, sd_dtype_name(t->dtype),
                   sd_tensor_shape_str(t, s, sizeof s), (long long)shape[0],
                   ndim > 1 ? (long long)shape[1] : 0LL);
  }
  *out = t;
  return SD_OK;
}

static int bind_conv(conv3x3 *cv, const weight_source *ws, const char *name,
                     int64_t oc, int64_t ic, sd_error *err) {
  int st = bind_tensor(ws, name, "weight", 4, (const int64_t[]){oc, ic, 3, 3},
                       &cv->w, err);
  if (!st) st = bind_tensor(ws, name, "bias", 1, (const int64_t[]){oc}, &cv->b, err);
  return st;
}

static int rrdbnet_init(sd_rrdbnet **out, weight_source ws, sd_error *err) {
  *out = NULL;
  /* RealESRGANer prefers params_ema over params; bare keys are what
   * converted .safetensors files hold. */
  static const char *const prefixes[] = {"", "params_ema.", "params."};
  const sd_tensor *first = NULL;
  for (int i = 0; i < 3 && !first; i++) {
    ws.prefix = prefixes[i];
    first = lookup(&ws, "conv_first.weight");
  }
  if (!first)
    return sd_fail(err, SD_ERR_FORMAT,
                   "not an RRDBNet (Real-ESRGAN) weight file: no "
                   "conv_first.weight");
  const sd_tensor *last = lookup(&ws, "conv_last.weight");
  const sd_tensor *dense = lookup(&ws, "body.0.rdb1.conv1.weight");
  if (first->ndim != 4 || !last || last->ndim != 4 || !dense || dense->ndim != 4)
    return sd_fail(err, SD_ERR_FORMAT,
                   "RRDBNet weights: conv_first, conv_last or body.0.rdb1.conv1 "
                   "missing or not 4-D");
  sd_rrdbnet_config cfg;
  cfg.num_feat = (int)first->shape[0];
  cfg.num_out_ch = (int)last->shape[0];
  cfg.num_in_ch = cfg.num_out_ch;
  cfg.num_grow_ch = (int)dense->shape[0];
  const int64_t in_ch = first->shape[1];
  int unshuffle;
  if (in_ch == cfg.num_in_ch) {
    cfg.scale = 4;
    unshuffle = 1;
  } else if (in_ch == 4 * cfg.num_in_ch) {
    cfg.scale = 2;
    unshuffle = 2;
  } else if (in_ch == 16 * cfg.num_in_ch) {
    cfg.scale = 1;
    unshuffle = 4;
  } else {
    return sd_fail(err, SD_ERR_FORMAT,
                   "RRDBNet: conv_first takes %lld channels, expected %d, %d or "
                   "%d (scale 4, 2, 1)",
                   (long long)in_ch, cfg.num_in_ch, 4 * cfg.num_in_ch,
                   16 * cfg.num_in_ch);
  }
  cfg.num_block = 0;
  while (lookup(&ws, "body.%d.rdb1.conv1.weight", cfg.num_block)) cfg.num_block++;
  if (cfg.num_feat <= 0 || cfg.num_grow_ch <= 0)
    return sd_fail(err, SD_ERR_FORMAT, "RRDBNet: invalid channel counts");

  sd_rrdbnet *net = sd_calloc(1, sizeof *net);
  if (!net) return sd_fail(err, SD_ERR_OOM, "out of memory loading RRDBNet");
  net->cfg = cfg;
  net->unshuffle = unshuffle;
  net->rdb = sd_calloc((size_t)cfg.num_block * 3, sizeof *net->rdb);
  if (!net->rdb) {
    sd_rrdbnet_free(net);
    return sd_fail(err, SD_ERR_OOM, "out of memory loading RRDBNet");
  }
  const int F = cfg.num_feat, G = cfg.num_grow_ch;
  int st = bind_conv(&net->conv_first, &ws, "conv_first", F, in_ch, err);
  for (int b = 0; b < cfg.num_block && !st; b++)
    for (int r = 0; r < 3 && !st; r++)
      for (int k = 0; k < 5 && !st; k++) {
        char name[64];
        snprintf(name, sizeof name, "body.%d.rdb%d.conv%d", b, r + 1, k + 1);
        st = bind_conv(&net->rdb[b * 3 + r].conv[k], &ws, name,
                       k < 4 ? G : F, F + k * G, err);
      }
  if (!st) st = bind_conv(&net->conv_body, &ws, "conv_body", F, F, err);
  if (!st) st = bind_conv(&net->conv_up1, &ws, "conv_up1", F, F, err);
  if (!st) st = bind_conv(&net->conv_up2, &ws, "conv_up2", F, F, err);
  if (!st) st = bind_conv(&net->conv_hr, &ws, "conv_hr", F, F, err);
  if (!st)
    st = bind_conv(&net->conv_last, &ws, "conv_last", cfg.num_out_ch, F,
                   err);
  if (st) {
    sd_rrdbnet_free(net);
    return st;
  }
  *out = net;
  return SD_OK;
}

int sd_rrdbnet_init(sd_rrdbnet **out, const sd_weights *w, sd_error *err) {
  weight_source ws = {get_from_weights, w, ""};
  return rrdbnet_init(out, ws, err);
}

int sd_rrdbnet_init_pth(sd_rrdbnet **out, const sd_pth *p, sd_error *err) {
  weight_source ws = {get_from_pth, p, ""};
  return rrdbnet_init(out, ws, err);
}

void sd_rrdbnet_free(sd_rrdbnet *net) {
  if (!net) return;
  sd_free(net->rdb);
  sd_free(net);
}

const sd_rrdbnet_config *sd_rrdbnet_config_of(const sd_rrdbnet *net) {
  return &net->cfg;
}

/* ---- forward ---- */

static int conv(float *y, const float *x, int C, int H, int W,
                const conv3x3 *cv, const char *what, sd_error *err) {
  int st = sd_conv2d(y, x, 1, C, H, W, cv->w, cv->b, 1, 1);
  if (st)
    return sd_fail(err, st, "RRDBNet %s: convolution failed (%s)", what,
                   sd_status_name(st));
  return SD_OK;
}

/* torch.nn.functional.pixel_unshuffle: channel c*r*r + dy*r + dx at (y, x)
 * takes input (c, r*y + dy, r*x + dx). */
static void pixel_unshuffle(float *y, const float *x, int C, int H, int W,
                            int r) {
  const int h = H / r, w = W / r;
  for (int c = 0; c < C; c++)
    for (int dy = 0; dy < r; dy++)
      for (int dx = 0; dx < r; dx++) {
        float *dst = y + (int64_t)((c * r + dy) * r + dx) * h * w;
        for (int i = 0; i < h; i++) {
          const float *src = x + ((int64_t)c * H + (int64_t)i * r + dy) * W + dx;
          for (int j = 0; j < w; j++) dst[(int64_t)i * w + j] = src[(int64_t)j * r];
        }
      }
}

/* Activation buffers (floats), at feature resolution n = h*w:
 * feat F*n, h F*n, dense (F + 4G)*n, tmp F*n; upsampler: up_a F*4n then
 * F*16n, up_b F*16n. Everything is sized once per call. */
int64_t sd_rrdbnet_forward_bytes(const sd_rrdbnet *net, int H, int W) {
  const int r = net->unshuffle;
  const int64_t n = (int64_t)(H / r) * (W / r);
  const int64_t F = net->cfg.num_feat, G = net->cfg.num_grow_ch;
  int64_t lowres = (3 * F + (F + 4 * G)) * n;
  int64_t highres = 2 * F * 16 * n;
  int64_t unsh = r > 1 ? (int64_t)net->cfg.num_in_ch * H * W : 0;
  return (int64_t)sizeof(float) * (lowres + highres + unsh);
}

/* One residual dense block in place on dense[0 : F*n]. */
static int dense_block(const rdb_weights *rb, float *dense, float *tmp, int F,
                       int G, int h, int w, sd_error *err) {
  const int64_t n = (int64_t)h * w;
  /* cat(x, x1, ..) along channels of a (C, h, w) tensor is contiguous, so
   * each conv reads a growing prefix of `dense` and appends to it. */
  for (int k = 0; k < 4; k++) {
    float *xk = dense + (int64_t)(F + k * G) * n;
    int st = conv(xk, dense, F + k * G, h, w, &rb->conv[k], "dense conv", err);
    if (st) return st;
    sd_leaky_relu(xk, (int64_t)G * n, RRDB_LRELU_SLOPE);
  }
  int st = conv(tmp, dense, F + 4 * G, h, w, &rb->conv[4], "dense conv5", err);
  if (st) return st;
  sd_axpy(dense, tmp, (int64_t)F * n, RRDB_RES_SCALE);
  return SD_OK;
}

int sd_rrdbnet_forward_traced(const sd_rrdbnet *net, const float *x, int H,
                              int W, float *y, sd_rrdbnet_trace *trace,
                              sd_error *err) {
  const sd_rrdbnet_config *cfg = &net->cfg;
  const int r = net->unshuffle;
  if (H <= 0 || W <= 0 || H % r || W % r)
    return sd_fail(err, SD_ERR_ARG,
                   "RRDBNet x%d needs an input size divisible by %d, got %dx%d",
                   cfg->scale, r, W, H);
  const int F = cfg->num_feat, G = cfg->num_grow_ch;
  const int h = H / r, w = W / r;
  const int64_t n = (int64_t)h * w;
  const int C0 = cfg->num_in_ch * r * r;
  float *unsh = NULL, *feat = NULL, *hcur = NULL, *dense = NULL, *tmp = NULL,
        *up_a = NULL, *up_b = NULL;
  int st = SD_OK;
  if (r > 1) unsh = sd_alloc((size_t)C0 * n * sizeof(float));
  feat = sd_alloc((size_t)F * n * sizeof(float));
  hcur = sd_alloc((size_t)F * n * sizeof(float));
  dense = sd_alloc((size_t)(F + 4 * G) * n * sizeof(float));
  tmp = sd_alloc((size_t)F * n * sizeof(float));
  if ((r > 1 && !unsh) || !feat || !hcur || !dense || !tmp) goto oom;

  const float *in0 = x;
  if (r > 1) {
    pixel_unshuffle(unsh, x, cfg->num_in_ch, H, W, r);
    in0 = unsh;
  }
  if ((st = conv(feat, in0, C0, h, w, &net->conv_first, "conv_first", err)))
    goto done;
  if (trace) {
    if (r > 1) {
      trace->pixel_unshuffle = unsh;
      trace->pixel_unshuffle_numel = (int64_t)C0 * n;
      unsh = NULL;
    }
    trace->conv_first = sd_alloc((size_t)F * n * sizeof(float));
    if (!trace->conv_first) goto oom;
    memcpy(trace->conv_first, feat, (size_t)F * n * sizeof(float));
    trace->feat_numel = (int64_t)F * n;
  }
  sd_free(unsh);
  unsh = NULL;

  /* body: RRDB(h) = rdb3(rdb2(rdb1(h))) * 0.2 + h */
  memcpy(hcur, feat, (size_t)F * n * sizeof(float));
  for (int b = 0; b < cfg->num_block; b++) {
    memcpy(dense, hcur, (size_t)F * n * sizeof(float));
    for (int k = 0; k < 3; k++)
      if ((st = dense_block(&net->rdb[b * 3 + k], dense, tmp, F, G, h, w, err)))
        goto done;
    sd_axpy(hcur, dense, (int64_t)F * n, RRDB_RES_SCALE);
  }
  if ((st = conv(tmp, hcur, F, h, w, &net->conv_body, "conv_body", err)))
    goto done;
  sd_add_inplace(feat, tmp, (int64_t)F * n); /* feat is now the trunk */
  if (trace) {
    trace->trunk = sd_alloc((size_t)F * n * sizeof(float));
    if (!trace->trunk) goto oom;
    memcpy(trace->trunk, feat, (size_t)F * n * sizeof(float));
  }
  sd_free(dense);
  sd_free(hcur);
  sd_free(tmp);
  dense = hcur = tmp = NULL;

  /* upsampler: two nearest x2 + conv + lrelu, then conv_hr, conv_last */
  up_a = sd_alloc((size_t)F * 16 * n * sizeof(float));
  up_b = sd_alloc((size_t)F * 16 * n * sizeof(float));
  if (!up_a || !up_b) goto oom;
  sd_upsample_nearest2x(up_a, feat, 1, F, h, w);
  sd_free(feat);
  feat = NULL;
  if ((st = conv(up_b, up_a, F, 2 * h, 2 * w, &net->conv_up1, "conv_up1", err)))
    goto done;
  sd_leaky_relu(up_b, (int64_t)F * 4 * n, RRDB_LRELU_SLOPE);
  sd_upsample_nearest2x(up_a, up_b, 1, F, 2 * h, 2 * w);
  if ((st = conv(up_b, up_a, F, 4 * h, 4 * w, &net->conv_up2, "conv_up2", err)))
    goto done;
  sd_leaky_relu(up_b, (int64_t)F * 16 * n, RRDB_LRELU_SLOPE);
  if ((st = conv(up_a, up_b, F, 4 * h, 4 * w, &net->conv_hr, "conv_hr", err)))
    goto done;
  sd_leaky_relu(up_a, (int64_t)F * 16 * n, RRDB_LRELU_SLOPE);
  st = conv(y, up_a, F, 4 * h, 4 * w, &net->conv_last, "conv_last", err);
  goto done;
oom:
  st = sd_fail(err, SD_ERR_OOM, "out of memory running RRDBNet on %dx%d", W, H);
done:
  sd_free(unsh);
  sd_free(feat);
  sd_free(hcur);
  sd_free(dense);
  sd_free(tmp);
  sd_free(up_a);
  sd_free(up_b);
  return st;
}

int sd_rrdbnet_forward(const sd_rrdbnet *net, const float *x, int H, int W,
                       float *y, sd_error *err) {
  return sd_rrdbnet_forward_traced(net, x, H, W, y, NULL, err);
}

void sd_rrdbnet_trace_free(sd_rrdbnet_trace *t) {
  if (!t) return;
  sd_free(t->pixel_unshuffle);
  sd_free(t->conv_first);
  sd_free(t->trunk);
  memset(t, 0, sizeof *t);
}

/* ---- RealESRGANer ---- */

sd_realesrgan_params sd_realesrgan_default_params(void) {
  sd_realesrgan_params p = {0, 10, 0};
  return p;
}

/* F.pad(x, (0, pw, 0, ph), 'reflect') on (C, H, W): new row H + i is row
 * H - 2 - i (the edge itself is not repeated); torch needs pad < size. */
static void reflect_pad_br(float *y, const float *x, int C, int H, int W,
                           int ph, int pw) {
  const int W2 = W + pw, H2 = H + ph;
  for (int c = 0; c < C; c++)
    for (int i = 0; i < H2; i++) {
      const int si = i < H ? i : 2 * H - 2 - i;
      const float *src = x + ((int64_t)c * H + si) * W;
      float *dst = y + ((int64_t)c * H2 + i) * W2;
      memcpy(dst, src, (size_t)W * sizeof(float));
      for (int j = W; j < W2; j++) dst[j] = src[2 * W - 2 - j];
    }
}

/* RealESRGANer.tile_process on a (C, H, W) image already padded. */
static int tile_process(const sd_rrdbnet *net, const float *x, int H, int W,
                        const sd_realesrgan_params *p, float *y, sd_error *err) {
  const int C = net->cfg.num_in_ch, OC = net->cfg.num_out_ch, s = net->cfg.scale;
  const int T = p->tile, pad = p->tile_pad > 0 ? p->tile_pad : 0;
  const int tiles_x = (W + T - 1) / T, tiles_y = (H + T - 1) / T;
  const int OW = W * s;
  const int max_in = T + 2 * pad;
  float *tin = sd_alloc((size_t)C * max_in * max_in * sizeof(float));
  float *tout = sd_alloc((size_t)OC * max_in * s * max_in * s * sizeof(float));
  if (!tin || !tout) {
    sd_free(tin);
    sd_free(tout);
    return sd_fail(err, SD_ERR_OOM, "out of memory for %d-pixel tiles", T);
  }
  /* pixels no tile covers stay 0, as the reference's zero-initialized
   * output (every pixel is covered in practice) */
  memset(y, 0, (size_t)OC * H * s * OW * sizeof(float));
  int st = SD_OK;
  for (int ty = 0; ty < tiles_y && !st; ty++)
    for (int tx = 0; tx < tiles_x && !st; tx++) {
      const int x0 = tx * T, y0 = ty * T;
      const int x1 = x0 + T < W ? x0 + T : W, y1 = y0 + T < H ? y0 + T : H;
      const int px0 = x0 - pad > 0 ? x0 - pad : 0;
      const int py0 = y0 - pad > 0 ? y0 - pad : 0;
      const int px1 = x1 + pad < W ? x1 + pad : W;
      const int py1 = y1 + pad < H ? y1 + pad : H;
      const int tw = px1 - px0, th = py1 - py0;
      for (int c = 0; c < C; c++)
        for (int i = 0; i < th; i++)
          memcpy(tin + ((int64_t)c * th + i) * tw,
                 x + ((int64_t)c * H + py0 + i) * W + px0,
                 (size_t)tw * sizeof(float));
      st = sd_rrdbnet_forward(net, tin, th, tw, tout, err);
      if (st) break;
      /* paste the un-padded part: tile-output offset (x0 - px0) * s */
      const int ox = (x0 - px0) * s, oy = (y0 - py0) * s;
      const int cw = (x1 - x0) * s, chh = (y1 - y0) * s;
      for (int c = 0; c < OC; c++)
        for (int i = 0; i < chh; i++)
          memcpy(y + ((int64_t)c * H * s + y0 * s + i) * OW + x0 * s,
                 tout + ((int64_t)c * th * s + oy + i) * (tw * s) + ox,
                 (size_t)cw * sizeof(float));
    }
  sd_free(tin);
  sd_free(tout);
  return st;
}

int sd_realesrgan_run(const sd_rrdbnet *net, const float *x, int H, int W,
                      const sd_realesrgan_params *p, float *y, sd_error *err) {
  const int C = net->cfg.num_in_ch, OC = net->cfg.num_out_ch, s = net->cfg.scale;
  if (H <= 0 || W <= 0 || !p || p->tile < 0 || p->pre_pad < 0)
    return sd_fail(err, SD_ERR_ARG, "Real-ESRGAN: invalid size or parameters");
  /* pre_process: pre_pad first, then pad to the unshuffle multiple */
  const int mod = net->unshuffle;
  int H1 = H + p->pre_pad, W1 = W + p->pre_pad;
  const int mh = H1 % mod ? mod - H1 % mod : 0, mw = W1 % mod ? mod - W1 % mod : 0;
  const int H2 = H1 + mh, W2 = W1 + mw;
  if ((p->pre_pad && (p->pre_pad >= H || p->pre_pad >= W)) ||
      (mh && mh >= H1) || (mw && mw >= W1))
    return sd_fail(err, SD_ERR_ARG,
                   "Real-ESRGAN: a %dx%d image is too small for reflect padding",
                   W, H);
  const float *xin = x;
  float *padded = NULL, *stage = NULL, *out = y;
  int st = SD_OK;
  if (H2 != H || W2 != W) {
    padded = sd_alloc((size_t)C * H2 * W2 * sizeof(float));
    stage = p->pre_pad ? sd_alloc((size_t)C * H1 * W1 * sizeof(float)) : NULL;
    out = sd_alloc((size_t)OC * H2 * s * W2 * s * sizeof(float));
    if (!padded || (p->pre_pad && !stage) || !out) {
      st = sd_fail(err, SD_ERR_OOM, "out of memory padding a %dx%d image", W, H);
      goto done;
    }
    if (p->pre_pad) {
      reflect_pad_br(stage, x, C, H, W, p->pre_pad, p->pre_pad);
      reflect_pad_br(padded, stage, C, H1, W1, mh, mw);
    } else {
      reflect_pad_br(padded, x, C, H, W, mh, mw);
    }
    xin = padded;
  }
  st = p->tile > 0 ? tile_process(net, xin, H2, W2, p, out, err)
                   : sd_rrdbnet_forward(net, xin, H2, W2, out, err);
  if (!st && out != y) /* post_process: crop to the original size x scale */
    for (int c = 0; c < OC; c++)
      for (int i = 0; i < H * s; i++)
        memcpy(y + ((int64_t)c * H * s + i) * W * s,
               out + ((int64_t)c * H2 * s + i) * W2 * s,
               (size_t)W * s * sizeof(float));
done:
  sd_free(padded);
  sd_free(stage);
  if (out != y) sd_free(out);
  return st;
}

int sd_realesrgan_upscale_image(const sd_rrdbnet *net, const sd_image *in,
                                const sd_realesrgan_params *p, sd_image *out,
                                sd_error *err) {
  memset(out, 0, sizeof *out);
  if (!in || !in->data || (in->channels != 3 && in->channels != 4))
    return sd_fail(err, SD_ERR_ARG, "Real-ESRGAN: invalid input image");
  if (net->cfg.num_in_ch != 3 || net->cfg.num_out_ch != 3)
    return sd_fail(err, SD_ERR_UNSUPPORTED,
                   "Real-ESRGAN: only 3-channel models upscale images");
  const int s = net->cfg.scale, H = in->height, W = in->width;
  const int64_t in_n = (int64_t)H * W, out_n = in_n * s * s;
  sd_realesrgan_params params = p ? *p : sd_realesrgan_default_params();
  float *x = sd_alloc((size_t)in_n * in->channels * sizeof(float));
  float *y = sd_alloc((size_t)out_n * 3 * sizeof(float));
  int st = SD_OK;
  if (!x || !y) {
    st = sd_fail(err, SD_ERR_OOM, "out of memory upscaling a %dx%d image", W, H);
    goto done;
  }
  if ((st = sd_image_alloc(out, W * s, H * s, in->channels, err))) goto done;
  sd_image_to_planar(x, in, SD_RANGE_0_1);
  if ((st = sd_realesrgan_run(net, x, H, W, &params, y, err))) goto done;
  sd_image_from_planar(out, y, 3, SD_RANGE_0_1);
  if (in->channels == 4) {
    /* alpha plane as a gray RGB image (planes 0..2 of x are reused) */
    const float *alpha = x + 3 * in_n;
    for (int c = 0; c < 3; c++)
      memcpy(x + c * in_n, alpha, (size_t)in_n * sizeof(float));
    if ((st = sd_realesrgan_run(net, x, H, W, &params, y, err))) goto done;
    /* clamp to [0, 1], then cv2 BGR2GRAY: 0.299 R + 0.587 G + 0.114 B */
    for (int64_t i = 0; i < out_n; i++) {
      float v[3];
      for (int c = 0; c < 3; c++) {
        float t = y[c * out_n + i];
        v[c] = t > 0.0f ? (t < 1.0f ? t : 1.0f) : 0.0f;
      }
      y[i] = 0.299f * v[0] + 0.587f * v[1] + 0.114f * v[2];
    }
    for (int64_t i = 0; i < out_n; i++) {
      float t = y[i];
      t = t > 0.0f ? (t < 1.0f ? t : 1.0f) : 0.0f;
      out->data[i * 4 + 3] = (uint8_t)rintf(t * 255.0f);
    }
  }
done:
  if (st) sd_image_free(out);
  sd_free(x);
  sd_free(y);
  return st;
}
