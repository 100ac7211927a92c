#include "models/vae_tiled.h"

#include <math.h>
#include <string.h>

#include "base/alloc.h"
#include "tensor/ops.h"
#include "tensor/ops_internal.h"

/* torch evaluates a*w1 + b*w2 as two rounded products and a rounded sum;
 * a fused multiply-add would round once and differ in the last bit. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

sd_vae_tiling sd_vae_tiling_default(const sd_vae *m) {
  sd_vae_tiling t = {sd_vae_get_config(m)->sample_size, 0.25};
  return t;
}

/* ---- tile geometry (diffusers' integer arithmetic, in double as Python) ---- */

typedef struct tile_grid {
  int in_h, in_w; /* input extent, input units */
  int tile_in;    /* tile edge, input units */
  int step_in;    /* distance between tile origins, input units */
  int up, down;   /* output units per input unit = up / down (8/1 decode, 1/8 encode) */
  int blend;      /* blend extent, output units */
  int row_limit;  /* kept part of each tile, output units (= step_in * up / down) */
} tile_grid;

static int out_units(const tile_grid *g, int n) {
  return n * g->up / g->down;
}

/* diffusers tiled_decode: tiles of tile_latent_min_size latents stepping by
 * int(tile_latent * (1 - overlap)), blended over int(tile_sample * overlap)
 * pixels. */
static tile_grid decode_grid(int f, const sd_vae_tiling *t, int h, int w) {
  int tile_latent = t->tile_sample_size / f;
  int blend = (int)(t->tile_sample_size * t->overlap);
  tile_grid g = {h, w, tile_latent, (int)(tile_latent * (1.0 - t->overlap)),
                 f, 1, blend,       t->tile_sample_size - blend};
  return g;
}

/* diffusers _tiled_encode: tiles of tile_sample_min_size pixels stepping by
 * int(tile_sample * (1 - overlap)), blended over int(tile_latent * overlap)
 * latents. */
static tile_grid encode_grid(int f, const sd_vae_tiling *t, int H, int W) {
  int tile_latent = t->tile_sample_size / f;
  int blend = (int)(tile_latent * t->overlap);
  tile_grid g = {H, W,     t->tile_sample_size, (int)(t->tile_sample_size * (1.0 - t->overlap)), 1,
                 f, blend, tile_latent - blend};
  return g;
}

int sd_vae_tiling_check(const sd_vae *m, const sd_vae_tiling *t, sd_error *err) {
  int f = sd_vae_downscale(m);
  if (!t || t->tile_sample_size < f || t->tile_sample_size % f || !(t->overlap >= 0.0) ||
      t->overlap > 0.5)
    return sd_fail(err, SD_ERR_ARG,
                   "VAE tiling: tile %d px must be a positive multiple of %d, overlap in [0, 0.5]",
                   t ? t->tile_sample_size : 0, f);
  tile_grid d = decode_grid(f, t, 1, 1), e = encode_grid(f, t, 1, 1);
  /* The crops must abut exactly, or diffusers' concatenation would give an
   * image of the wrong size. */
  if (d.step_in < 1 || d.step_in * f != d.row_limit || e.step_in != e.row_limit * f)
    return sd_fail(err, SD_ERR_ARG,
                   "VAE tiling: tile %d px with overlap %g gives tiles that do not abut "
                   "(use a multiple of %d px)",
                   t->tile_sample_size, t->overlap, 4 * f);
  return SD_OK;
}

/* ---- the tiled pass shared by decode and encode ---- */

/* Produces one tile: input rows [y0, y0+th), columns [x0, x0+tw) through the
 * model into out (B, C, th*up/down, tw*up/down). */
typedef int (*tile_run_fn)(void *ctx, int y0, int x0, int th, int tw, float *out, sd_error *err);

/* Output channels [0, split) go to planes0 (B, split, H, W), the rest to
 * planes1 (B, C - split, H, W). */
typedef struct tiled_output {
  float *planes0, *planes1;
  int split;
} tiled_output;

typedef struct tiled_buffers {
  float *tile;  /* (B, C, max_th, max_tw): the tile being blended */
  float *strip; /* per tile column j: (B, C, strip_rows, tw_j), the last rows of tile (i-1, j) */
  float *cols;  /* (B, C, th, col_cols): the last columns of tile (i, j-1) */
  float *w_old, *w_new; /* blend weights, blend entries each */
} tiled_buffers;

typedef struct tiled_sizes {
  int out_h, out_w, rows, cols;
  int max_th, max_tw; /* output units */
  int64_t tile_floats, strip_slot_floats, strip_floats, col_floats;
} tiled_sizes;

static tiled_sizes plan_tiles(const tile_grid *g, int B, int C) {
  tiled_sizes s;
  s.out_h = out_units(g, g->in_h);
  s.out_w = out_units(g, g->in_w);
  s.rows = (g->in_h + g->step_in - 1) / g->step_in;
  s.cols = (g->in_w + g->step_in - 1) / g->step_in;
  s.max_th = out_units(g, g->in_h < g->tile_in ? g->in_h : g->tile_in);
  s.max_tw = out_units(g, g->in_w < g->tile_in ? g->in_w : g->tile_in);
  s.tile_floats = (int64_t)B * C * s.max_th * s.max_tw;
  int blend_rows = g->blend < s.max_th ? g->blend : s.max_th;
  int blend_cols = g->blend < s.max_tw ? g->blend : s.max_tw;
  s.strip_slot_floats = (int64_t)B * C * blend_rows * s.max_tw;
  s.strip_floats = s.rows > 1 ? s.strip_slot_floats * s.cols : 0;
  s.col_floats = s.cols > 1 ? (int64_t)B * C * s.max_th * blend_cols : 0;
  return s;
}

static int64_t tiled_buffer_bytes(const tiled_sizes *s, const tile_grid *g) {
  return 4 * (s->tile_floats + s->strip_floats + s->col_floats + 2 * (int64_t)(g->blend + 1));
}

/* diffusers blend weights for extent e: the earlier tile gets 1 - k/e, the
 * current one k/e, each rounded to float as torch does with Python scalars. */
static void blend_weights(tiled_buffers *bf, int e) {
  for (int k = 0; k < e; k++) {
    double r = (double)k / e;
    bf->w_old[k] = (float)(1.0 - r);
    bf->w_new[k] = (float)r;
  }
}

/* blend_v: the first e rows of the tile take in the last e rows of the tile
 * above (stored: its last `stored` rows), e = min(above_h, th, blend). */
static void blend_rows_from_above(tiled_buffers *bf, const float *above, int stored, int above_h,
                                  int64_t planes, int th, int tw, int blend) {
  int e = above_h < th ? above_h : th;
  if (blend < e) e = blend;
  if (e <= 0) return;
  blend_weights(bf, e);
  for (int64_t p = 0; p < planes; p++)
    for (int y = 0; y < e; y++) {
      const float *a = above + (p * stored + stored - e + y) * tw;
      float *b = bf->tile + (p * th + y) * tw;
      float wo = bf->w_old[y], wn = bf->w_new[y];
      for (int x = 0; x < tw; x++) b[x] = a[x] * wo + b[x] * wn;
    }
}

/* blend_h: the first e columns take in the last e columns of the tile to the
 * left (stored: its last `stored` columns), e = min(left_w, tw, blend). */
static void blend_cols_from_left(tiled_buffers *bf, int stored, int left_w, int64_t planes, int th,
                                 int tw, int blend) {
  int e = left_w < tw ? left_w : tw;
  if (blend < e) e = blend;
  if (e <= 0) return;
  blend_weights(bf, e);
  const float *wo = bf->w_old, *wn = bf->w_new;
  for (int64_t r = 0; r < planes * th; r++) {
    const float *a = bf->cols + r * stored + stored - e;
    float *b = bf->tile + r * tw;
    for (int x = 0; x < e; x++) b[x] = a[x] * wo[x] + b[x] * wn[x];
  }
}

static int run_tiled(const tile_grid *g, int B, int C, tile_run_fn run, void *ctx,
                     const tiled_output *out, sd_error *err) {
  tiled_sizes s = plan_tiles(g, B, C);
  tiled_buffers bf = {0};
  int rc = SD_OK;
  bf.tile = sd_alloc((size_t)s.tile_floats * 4);
  bf.strip = s.strip_floats ? sd_alloc((size_t)s.strip_floats * 4) : NULL;
  bf.cols = s.col_floats ? sd_alloc((size_t)s.col_floats * 4) : NULL;
  bf.w_old = sd_alloc((size_t)(g->blend + 1) * 4);
  bf.w_new = sd_alloc((size_t)(g->blend + 1) * 4);
  if (!bf.tile || (s.strip_floats && !bf.strip) || (s.col_floats && !bf.cols) || !bf.w_old ||
      !bf.w_new) {
    rc = sd_fail(err, SD_ERR_OOM, "out of memory for VAE tiling buffers");
    goto done;
  }
  int64_t out_plane = (int64_t)s.out_h * s.out_w, planes = (int64_t)B * C;
  int prev_th = 0, strip_rows = 0;
  for (int i = 0; i < s.rows; i++) {
    int y0 = i * g->step_in;
    int th_in = g->in_h - y0 < g->tile_in ? g->in_h - y0 : g->tile_in;
    int th = out_units(g, th_in);
    int prev_tw = 0, col_cols = 0;
    for (int j = 0; j < s.cols; j++) {
      int x0 = j * g->step_in;
      int tw_in = g->in_w - x0 < g->tile_in ? g->in_w - x0 : g->tile_in;
      int tw = out_units(g, tw_in);
      if ((rc = run(ctx, y0, x0, th_in, tw_in, bf.tile, err))) goto done;
      if (sd_plan_active()) continue; /* sizes only: touch no data */
      float *slot = bf.strip ? bf.strip + s.strip_slot_floats * j : NULL;
      if (i > 0) blend_rows_from_above(&bf, slot, strip_rows, prev_th, planes, th, tw, g->blend);
      if (j > 0) blend_cols_from_left(&bf, col_cols, prev_tw, planes, th, tw, g->blend);
      /* Keep what the tiles below and to the right will blend with: this
       * tile as blended, as diffusers blends its stored tiles in place. */
      int keep_rows = g->blend < th ? g->blend : th;
      if (slot && i + 1 < s.rows)
        for (int64_t p = 0; p < planes; p++)
          memcpy(slot + p * keep_rows * tw, bf.tile + (p * th + th - keep_rows) * tw,
                 sizeof(float) * keep_rows * tw);
      int keep_cols = g->blend < tw ? g->blend : tw;
      if (bf.cols && j + 1 < s.cols)
        for (int64_t r = 0; r < planes * th; r++)
          memcpy(bf.cols + r * keep_cols, bf.tile + r * tw + tw - keep_cols,
                 sizeof(float) * keep_cols);
      int crop_h = th < g->row_limit ? th : g->row_limit;
      int crop_w = tw < g->row_limit ? tw : g->row_limit;
      int64_t oy = (int64_t)i * g->row_limit, ox = (int64_t)j * g->row_limit;
      for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++) {
          float *dst =
              c < out->split
                  ? out->planes0 + ((int64_t)b * out->split + c) * out_plane
                  : out->planes1 + ((int64_t)b * (C - out->split) + c - out->split) * out_plane;
          const float *src = bf.tile + ((int64_t)b * C + c) * th * tw;
          for (int y = 0; y < crop_h; y++)
            memcpy(dst + (oy + y) * s.out_w + ox, src + (int64_t)y * tw, sizeof(float) * crop_w);
        }
      prev_tw = tw;
      col_cols = keep_cols;
    }
    prev_th = th;
    strip_rows = g->blend < th ? g->blend : th;
  }
done:
  sd_free(bf.tile);
  sd_free(bf.strip);
  sd_free(bf.cols);
  sd_free(bf.w_old);
  sd_free(bf.w_new);
  return rc;
}

/* Copies rows [y0, y0+th), columns [x0, x0+tw) of every plane of src
 * (planes, H, W) into dst (planes, th, tw). */
static void crop_planes(float *dst, const float *src, int64_t planes, int H, int W, int y0, int x0,
                        int th, int tw) {
  for (int64_t p = 0; p < planes; p++)
    for (int y = 0; y < th; y++)
      memcpy(dst + (p * th + y) * tw, src + (p * H + y0 + y) * W + x0, sizeof(float) * tw);
}

/* ---- decode ---- */

typedef struct decode_ctx {
  const sd_vae *m;
  const float *z; /* (B, L, h, w) */
  int B, L, h, w;
  float *z_tile; /* (B, L, tile, tile) */
} decode_ctx;

static int decode_tile(void *vctx, int y0, int x0, int th, int tw, float *out, sd_error *err) {
  decode_ctx *c = vctx;
  if (!sd_plan_active())
    crop_planes(c->z_tile, c->z, (int64_t)c->B * c->L, c->h, c->w, y0, x0, th, tw);
  return sd_vae_decode(c->m, c->z_tile, c->B, th, tw, out, err);
}

/* diffusers tiles only when the latent exceeds one tile on some side. */
static int decode_fits_one_tile(const tile_grid *g) {
  return g->in_h <= g->tile_in && g->in_w <= g->tile_in;
}

int sd_vae_decode_tiled(const sd_vae *m, const float *z, int B, int h, int w,
                        const sd_vae_tiling *t, float *image, sd_error *err) {
  const sd_vae_config *cfg = sd_vae_get_config(m);
  if (!cfg->has_decoder) return sd_fail(err, SD_ERR_FORMAT, "VAE has no decoder weights");
  int rc = sd_vae_tiling_check(m, t, err);
  if (rc) return rc;
  tile_grid g = decode_grid(sd_vae_downscale(m), t, h, w);
  if (decode_fits_one_tile(&g)) return sd_vae_decode(m, z, B, h, w, image, err);
  int th = h < g.tile_in ? h : g.tile_in, tw = w < g.tile_in ? w : g.tile_in;
  decode_ctx c = {m, z, B, cfg->latent_channels, h, w, NULL};
  c.z_tile = sd_alloc(sizeof(float) * B * c.L * th * tw);
  if (!c.z_tile) return sd_fail(err, SD_ERR_OOM, "out of memory for a VAE latent tile");
  tiled_output out = {image, NULL, cfg->out_channels};
  rc = run_tiled(&g, B, cfg->out_channels, decode_tile, &c, &out, err);
  sd_free(c.z_tile);
  return rc;
}

/* ---- encode ---- */

typedef struct encode_ctx {
  const sd_vae *m;
  const float *image; /* (B, in_ch, H, W) */
  int B, C, H, W, L, f;
  float *image_tile;          /* (B, in_ch, tile, tile) */
  float *mean, *std, *logvar; /* (B, L, tile/f, tile/f) */
} encode_ctx;

/* The tile's moments as diffusers blends them: (B, 2L, th/f, tw/f), mean
 * channels then logvar channels. */
static int encode_tile(void *vctx, int y0, int x0, int th, int tw, float *out, sd_error *err) {
  encode_ctx *c = vctx;
  if (!sd_plan_active())
    crop_planes(c->image_tile, c->image, (int64_t)c->B * c->C, c->H, c->W, y0, x0, th, tw);
  int rc = sd_vae_encode(c->m, c->image_tile, c->B, th, tw, c->mean, c->std, c->logvar, err);
  if (rc || sd_plan_active()) return rc;
  int64_t n = (int64_t)c->L * (th / c->f) * (tw / c->f);
  for (int b = 0; b < c->B; b++) {
    memcpy(out + 2 * b * n, c->mean + b * n, sizeof(float) * n);
    memcpy(out + (2 * b + 1) * n, c->logvar + b * n, sizeof(float) * n);
  }
  return SD_OK;
}

int sd_vae_encode_tiled(const sd_vae *m, const float *image, int B, int H, int W,
                        const sd_vae_tiling *t, float *mean, float *std, float *logvar,
                        sd_error *err) {
  const sd_vae_config *cfg = sd_vae_get_config(m);
  if (!cfg->has_encoder) return sd_fail(err, SD_ERR_FORMAT, "VAE has no encoder weights");
  int rc = sd_vae_tiling_check(m, t, err);
  if (rc) return rc;
  int f = sd_vae_downscale(m);
  if (H % f || W % f)
    return sd_fail(err, SD_ERR_ARG, "image size %dx%d is not a multiple of %d", W, H, f);
  /* diffusers' _encode tiles only when the image exceeds one tile. */
  if (H <= t->tile_sample_size && W <= t->tile_sample_size)
    return sd_vae_encode(m, image, B, H, W, mean, std, logvar, err);
  tile_grid g = encode_grid(f, t, H, W);
  int th = H < g.tile_in ? H : g.tile_in, tw = W < g.tile_in ? W : g.tile_in;
  int L = cfg->latent_channels;
  int64_t lat = (int64_t)B * L * (th / f) * (tw / f);
  encode_ctx c = {m, image, B, cfg->in_channels, H, W, L, f, NULL, NULL, NULL, NULL};
  c.image_tile = sd_alloc(sizeof(float) * B * c.C * th * tw);
  c.mean = sd_alloc(sizeof(float) * lat);
  c.std = sd_alloc(sizeof(float) * lat);
  c.logvar = sd_alloc(sizeof(float) * lat);
  if (!c.image_tile || !c.mean || !c.std || !c.logvar) {
    rc = sd_fail(err, SD_ERR_OOM, "out of memory for a VAE image tile");
    goto done;
  }
  /* The blended logvar goes to std's buffer first, then becomes std there. */
  tiled_output out = {mean, std, L};
  if ((rc = run_tiled(&g, B, 2 * L, encode_tile, &c, &out, err)) || sd_plan_active()) goto done;
  int64_t n = (int64_t)B * L * (H / f) * (W / f);
  if (logvar) memcpy(logvar, std, sizeof(float) * n);
  for (int64_t i = 0; i < n; i++) std[i] = expf(0.5f * std[i]);
done:
  sd_free(c.image_tile);
  sd_free(c.mean);
  sd_free(c.std);
  sd_free(c.logvar);
  return rc;
}

/* ---- analytic activation peak ----
 *
 * Replays sd_vae_decode's allocation sequence (vae.c) and the scratch its
 * kernels take (ops_conv.c, ops_gemm.c, ops_norm.c, ops_attention.c), in
 * floats. Keep in step with those files; the unit test compares the result
 * with the tracked peak of a real decode. */

/* ops_attention.c's query block and default key chunk. */
#define ATTN_QUERY_BLOCK 256
#define ATTN_KEY_CHUNK 256

typedef struct mem_replay {
  int64_t now, peak; /* floats */
} mem_replay;

static void take(mem_replay *r, int64_t floats) {
  r->now += floats;
  if (r->now > r->peak) r->peak = r->now;
}
static void give(mem_replay *r, int64_t floats) {
  r->now -= floats;
}
static void transient(mem_replay *r, int64_t floats) {
  take(r, floats);
  give(r, floats);
}

/* Stride-1 "same" conv with bias: the kernel reports its own scratch for
 * the shape (weights assumed stored narrower than F32, which is the most it
 * takes). */
static void replay_conv(mem_replay *r, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OC,
                        int k) {
  sd_tensor w = {0};
  w.dtype = SD_F16;
  w.ndim = 4;
  w.shape[0] = OC;
  w.shape[1] = C;
  w.shape[2] = k;
  w.shape[3] = k;
  int pad = k / 2;
  transient(r, sd_conv2d_scratch_bytes((int)N, (int)C, (int)H, (int)W, &w, 1, pad, pad, pad,
                                       pad) / 4);
}

static void replay_linear(mem_replay *r, int64_t K, int64_t N) {
  transient(r, N);
  int64_t nb = SD_SCRATCH_FLOATS / K;
  if (nb < 16) nb = 16;
  if (nb > N) nb = N;
  transient(r, nb * K);
}

static void replay_res(mem_replay *r, int64_t B, int64_t in, int64_t out, int64_t H, int64_t W) {
  int64_t hw = H * W;
  take(r, B * out * hw);               /* result */
  take(r, B * in * hw + B * out * hw); /* the two work buffers */
  replay_conv(r, B, in, H, W, out, 3);
  replay_conv(r, B, out, H, W, out, 3);
  if (in != out) replay_conv(r, B, in, H, W, out, 1);
  give(r, B * in * hw + B * out * hw);
  give(r, B * in * hw); /* the input it replaces */
}

static void replay_attention(mem_replay *r, int64_t B, int64_t C, int64_t hw) {
  int64_t T = B * hw;
  take(r, 5 * T * C);
  for (int i = 0; i < 3; i++) replay_linear(r, C, C);
  int64_t kc = hw < ATTN_KEY_CHUNK ? hw : ATTN_KEY_CHUNK;
  int64_t tasks = B * ((hw + ATTN_QUERY_BLOCK - 1) / ATTN_QUERY_BLOCK);
  int64_t threads = sd_get_threads();
  if (threads > tasks) threads = tasks;
  transient(r, (2 * C + kc + 5) * ATTN_QUERY_BLOCK * threads);
  replay_linear(r, C, C);
  give(r, 5 * T * C);
}

int64_t sd_vae_decode_peak_bytes(const sd_vae *m, int B, int h, int w) {
  const sd_vae_config *c = sd_vae_get_config(m);
  mem_replay r = {0, 0};
  int64_t L = c->latent_channels, H = h, W = w;
  int upsamplers = 0;
  for (int f = sd_vae_downscale(m); f > 1; f /= 2) upsamplers++;
  take(&r, B * L * H * W);
  if (c->has_quant_conv) replay_conv(&r, B, L, H, W, L, 1);
  int64_t ch = c->block_out[c->levels - 1];
  take(&r, B * ch * H * W);
  replay_conv(&r, B, L, H, W, ch, 3);
  give(&r, B * L * H * W);
  replay_res(&r, B, ch, ch, H, W);
  replay_attention(&r, B, ch, H * W);
  replay_res(&r, B, ch, ch, H, W);
  for (int i = 0; i < c->levels; i++) {
    int64_t out = c->block_out[c->levels - 1 - i];
    for (int j = 0; j <= c->layers_per_block; j++) {
      replay_res(&r, B, ch, out, H, W);
      ch = out;
    }
    if (i < upsamplers) {
      take(&r, B * ch * 4 * H * W);
      give(&r, B * ch * H * W);
      H *= 2;
      W *= 2;
      take(&r, B * ch * H * W);
      replay_conv(&r, B, ch, H, W, ch, 3);
      give(&r, B * ch * H * W);
    }
  }
  replay_conv(&r, B, ch, H, W, c->out_channels, 3);
  return 4 * r.peak;
}

int64_t sd_vae_decode_tiled_peak_bytes(const sd_vae *m, int B, int h, int w,
                                       const sd_vae_tiling *t) {
  if (sd_vae_tiling_check(m, t, NULL)) return -1;
  const sd_vae_config *c = sd_vae_get_config(m);
  tile_grid g = decode_grid(sd_vae_downscale(m), t, h, w);
  if (decode_fits_one_tile(&g)) return sd_vae_decode_peak_bytes(m, B, h, w);
  int th = h < g.tile_in ? h : g.tile_in, tw = w < g.tile_in ? w : g.tile_in;
  tiled_sizes s = plan_tiles(&g, B, c->out_channels);
  /* Kernel scratch is not strictly monotone in the tile size, so every
   * distinct tile shape is replayed (at most three heights and widths). */
  int64_t worst = 0;
  for (int i = 0, last_h = -1; i < s.rows; i++) {
    int ih = h - i * g.step_in < g.tile_in ? h - i * g.step_in : g.tile_in;
    if (ih == last_h) continue;
    last_h = ih;
    for (int j = 0, last_w = -1; j < s.cols; j++) {
      int iw = w - j * g.step_in < g.tile_in ? w - j * g.step_in : g.tile_in;
      if (iw == last_w) continue;
      last_w = iw;
      int64_t p = sd_vae_decode_peak_bytes(m, B, ih, iw);
      if (p > worst) worst = p;
    }
  }
  return 4 * (int64_t)B * c->latent_channels * th * tw + tiled_buffer_bytes(&s, &g) + worst;
}
