/* Upscaler conformance: golden/upscale/cases.json.
 *
 * lanczos.cases: PIL 9.4 Image.resize(LANCZOS) outputs, checked exactly
 *   (0 levels) -> ids upscale/lanczos.<name>.
 * rrdbnet.cases.<model>[]: Real-ESRGAN RRDBNet with tiny random weights:
 *   "network" (raw forward, plus the pixel_unshuffle/conv_first/trunk
 *   intermediates when present), "realesrganer_modpad" (reflect pad to even,
 *   crop), "realesrganer_tiled" (tile_process, untiled output, output_u8)
 *   -> ids upscale/rrdbnet.<name>[.<part>]. Float tolerance: rel L2 < 1e-4;
 *   u8: +-1 level. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "conformance.h"
#include "io/image.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "models/rrdbnet.h"
#include "pipeline/upscale_lanczos.h"

#define RRDB_TOL 1e-4

/* Wraps an HxWxC U8 tensor as an image view (no copy). */
static int u8_tensor_as_image(const sd_tensor *t, sd_image *img) {
  if (!t || t->dtype != SD_U8 || t->ndim != 3 ||
      (t->shape[2] != 3 && t->shape[2] != 4))
    return 0;
  img->height = (int)t->shape[0];
  img->width = (int)t->shape[1];
  img->channels = (int)t->shape[2];
  img->data = t->data;
  return 1;
}

static void lanczos_cases(conf_ctx *c, const char *dir, const cJSON *lz) {
  const cJSON *cases = cJSON_GetObjectItemCaseSensitive(lz, "cases");
  const char *file = sd_json_str(lz, "file", "lanczos.safetensors");
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, file);
  if (!cJSON_IsArray(cases)) {
    conf_result(c, "upscale/lanczos", 0, "cases.json has no lanczos.cases list");
    return;
  }
  sd_weights *w = NULL;
  sd_error err = {0};
  if (sd_weights_open(&w, path, &err)) {
    conf_result(c, "upscale/lanczos", 0, "%s", err.msg);
    return;
  }
  const cJSON *cs;
  cJSON_ArrayForEach(cs, cases) {
    char id[256];
    snprintf(id, sizeof id, "upscale/lanczos.%s", sd_json_str(cs, "name", "?"));
    if (!conf_wants(c, id)) continue;
    sd_image in = {0}, want = {0}, got = {0};
    int ow = 0, oh = 0;
    const cJSON *osz = cJSON_GetObjectItemCaseSensitive(cs, "output_size_wh");
    if (cJSON_GetArraySize(osz) == 2) {
      ow = cJSON_GetArrayItem(osz, 0)->valueint;
      oh = cJSON_GetArrayItem(osz, 1)->valueint;
    }
    if (!u8_tensor_as_image(sd_weights_get(w, sd_json_str(cs, "input", "")), &in) ||
        !u8_tensor_as_image(sd_weights_get(w, sd_json_str(cs, "output", "")),
                            &want) ||
        want.width != ow || want.height != oh) {
      conf_result(c, id, 0, "input/output tensors missing or malformed");
      continue;
    }
    sd_error_clear(&err);
    if (sd_lanczos_resize(&in, ow, oh, &got, &err)) {
      conf_result(c, id, 0, "%s", err.msg);
      continue;
    }
    size_t n = (size_t)ow * oh * want.channels;
    int max_diff = 0;
    size_t n_diff = 0;
    for (size_t i = 0; i < n; i++) {
      int d = abs((int)got.data[i] - (int)want.data[i]);
      if (d) n_diff++;
      if (d > max_diff) max_diff = d;
    }
    conf_result(c, id, max_diff == 0, "%dx%d -> %dx%d, max diff %d levels (%zu of %zu values)",
                in.width, in.height, ow, oh, max_diff, n_diff, n);
    sd_image_free(&got);
  }
  sd_weights_free(w);
}

/* ---- RRDBNet ---- */

static const sd_tensor *need_f32(const sd_weights *g, const char *name,
                                 int64_t *numel) {
  const sd_tensor *t = name ? sd_weights_get(g, name) : NULL;
  if (!t || t->dtype != SD_F32) return NULL;
  if (numel) *numel = sd_tensor_numel(t);
  return t;
}

/* Network input (1, 3, H, W) from a golden tensor. */
static int input_dims(const sd_tensor *t, int *H, int *W) {
  if (!t || t->ndim != 4 || t->shape[0] != 1 || t->shape[1] != 3) return 0;
  *H = (int)t->shape[2];
  *W = (int)t->shape[3];
  return 1;
}

static void check_intermediates(conf_ctx *c, const char *base_id,
                                const sd_weights *g, const cJSON *cs,
                                const sd_rrdbnet_trace *tr) {
  const cJSON *inter = cJSON_GetObjectItemCaseSensitive(cs, "intermediates");
  const cJSON *it;
  cJSON_ArrayForEach(it, inter) {
    char id[320], gname[320];
    snprintf(id, sizeof id, "%s.%s", base_id, it->string);
    if (!conf_wants(c, id)) continue;
    snprintf(gname, sizeof gname, "%s.%s", sd_json_str(cs, "name", ""),
             it->string);
    const sd_tensor *gt = sd_weights_get(g, gname);
    const float *got = NULL;
    int64_t n = 0;
    if (strcmp(it->string, "pixel_unshuffle") == 0) {
      got = tr->pixel_unshuffle;
      n = tr->pixel_unshuffle_numel;
    } else if (strcmp(it->string, "conv_first") == 0) {
      got = tr->conv_first;
      n = tr->feat_numel;
    } else if (strcmp(it->string, "trunk") == 0) {
      got = tr->trunk;
      n = tr->feat_numel;
    }
    if (!got) {
      conf_result(c, id, 0, "intermediate '%s' not produced", it->string);
      continue;
    }
    conf_check_tensor(c, id, got, n, gt, RRDB_TOL);
  }
}

/* Compares an u8 golden image with round(clamp(out, 0, 1) * 255). */
static void check_output_u8(conf_ctx *c, const char *id, const float *out,
                            int W, int H, const sd_tensor *golden) {
  sd_image want = {0}, got = {0};
  sd_error err = {0};
  if (!u8_tensor_as_image(golden, &want) || want.width != W || want.height != H ||
      want.channels != 3) {
    conf_result(c, id, 0, "golden u8 image missing or malformed");
    return;
  }
  if (sd_image_alloc(&got, W, H, 3, &err)) {
    conf_result(c, id, 0, "%s", err.msg);
    return;
  }
  sd_image_from_planar(&got, out, 3, SD_RANGE_0_1);
  size_t n = (size_t)W * H * 3, n_diff = 0;
  int max_diff = 0;
  for (size_t i = 0; i < n; i++) {
    int d = abs((int)got.data[i] - (int)want.data[i]);
    if (d) n_diff++;
    if (d > max_diff) max_diff = d;
  }
  if (c->bf16)
    conf_skip(c, id, "bf16: max diff %d levels (%zu of %zu values differ), not asserted "
              "(the +-1 bound is fp32's)", max_diff, n_diff, n);
  else
    conf_result(c, id, max_diff <= 1,
                "max diff %d levels (%zu of %zu values differ, tol 1)", max_diff, n_diff, n);
  sd_image_free(&got);
}

/* The networks are tiny: every case runs whole and the filter only gates
 * which of its ids are reported. */
static void rrdbnet_case(conf_ctx *c, const sd_rrdbnet *net,
                         const sd_weights *g, const cJSON *cs) {
  const char *name = sd_json_str(cs, "name", "?");
  const char *kind = sd_json_str(cs, "kind", "");
  char id[256], sub[320];
  snprintf(id, sizeof id, "upscale/rrdbnet.%s", name);
  const sd_tensor *in = need_f32(g, sd_json_str(cs, "input", NULL), NULL);
  const sd_tensor *want = need_f32(g, sd_json_str(cs, "output", NULL), NULL);
  int H, W;
  if (!input_dims(in, &H, &W) || !want) {
    if (conf_wants(c, id)) conf_result(c, id, 0, "golden input/output missing");
    return;
  }
  const int s = sd_rrdbnet_config_of(net)->scale;
  const int64_t out_n = (int64_t)3 * H * s * W * s;
  float *out = sd_alloc((size_t)out_n * sizeof(float));
  if (!out) {
    conf_result(c, id, 0, "out of memory");
    return;
  }
  sd_error err = {0};
  if (strcmp(kind, "network") == 0) {
    sd_rrdbnet_trace tr = {0};
    if (sd_rrdbnet_forward_traced(net, in->data, H, W, out, &tr, &err)) {
      conf_result(c, id, 0, "%s", err.msg);
    } else {
      if (conf_wants(c, id)) conf_check_tensor(c, id, out, out_n, want, RRDB_TOL);
      check_intermediates(c, id, g, cs, &tr);
    }
    sd_rrdbnet_trace_free(&tr);
  } else if (strcmp(kind, "realesrganer_modpad") == 0 ||
             strcmp(kind, "realesrganer_tiled") == 0) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(cs, "params");
    sd_realesrgan_params rp = sd_realesrgan_default_params();
    rp.tile = sd_json_int(p, "tile", 0);
    rp.tile_pad = sd_json_int(p, "tile_pad", rp.tile_pad);
    rp.pre_pad = sd_json_int(p, "pre_pad", 0);
    if (sd_json_int(p, "scale", s) != s) {
      conf_result(c, id, 0, "params.scale %d differs from the model's %d",
                  sd_json_int(p, "scale", s), s);
    } else if (sd_realesrgan_run(net, in->data, H, W, &rp, out, &err)) {
      conf_result(c, id, 0, "%s", err.msg);
    } else {
      if (conf_wants(c, id)) conf_check_tensor(c, id, out, out_n, want, RRDB_TOL);
      const char *u8name = sd_json_str(cs, "output_u8", NULL);
      snprintf(sub, sizeof sub, "%s.output_u8", id);
      if (u8name && conf_wants(c, sub))
        check_output_u8(c, sub, out, W * s, H * s, sd_weights_get(g, u8name));
      /* the same image through the network in one piece */
      const char *untiled = sd_json_str(cs, "untiled_output", NULL);
      snprintf(sub, sizeof sub, "%s.untiled", id);
      if (untiled && conf_wants(c, sub)) {
        if (sd_rrdbnet_forward(net, in->data, H, W, out, &err))
          conf_result(c, sub, 0, "%s", err.msg);
        else
          conf_check_tensor(c, sub, out, out_n, need_f32(g, untiled, NULL),
                            RRDB_TOL);
      }
    }
  } else if (conf_wants(c, id)) {
    conf_result(c, id, 0, "unknown case kind '%s'", kind);
  }
  sd_free(out);
}

/* The released .pth files hold the dict under "params_ema": the same
 * weights under that prefix must give the same network, bit for bit. */
static void check_prefixed(conf_ctx *c, const char *id, const sd_rrdbnet *net,
                           const char *weights_path, const sd_weights *g,
                           const cJSON *list) {
  const cJSON *first = cJSON_GetArrayItem(list, 0);
  const sd_tensor *in = need_f32(g, sd_json_str(first, "input", NULL), NULL);
  int H, W;
  if (!input_dims(in, &H, &W)) {
    conf_result(c, id, 0, "no input to run");
    return;
  }
  sd_weights *w = sd_weights_new();
  sd_rrdbnet *pnet = NULL;
  sd_error err = {0};
  const int s = sd_rrdbnet_config_of(net)->scale;
  const int64_t n = (int64_t)3 * H * s * W * s;
  float *a = sd_alloc((size_t)n * sizeof(float));
  float *b = sd_alloc((size_t)n * sizeof(float));
  if (!w || !a || !b) {
    conf_result(c, id, 0, "out of memory");
  } else if (sd_weights_add_file(w, weights_path, "params_ema.", &err) ||
             sd_rrdbnet_init(&pnet, w, &err) ||
             sd_rrdbnet_forward(net, in->data, H, W, a, &err) ||
             sd_rrdbnet_forward(pnet, in->data, H, W, b, &err)) {
    conf_result(c, id, 0, "%s", err.msg);
  } else {
    int same = memcmp(a, b, (size_t)n * sizeof(float)) == 0 &&
               sd_rrdbnet_config_of(pnet)->num_block ==
                   sd_rrdbnet_config_of(net)->num_block;
    conf_result(c, id, same, "weights under params_ema.: %s",
                same ? "same config and identical output" : "output differs");
  }
  sd_rrdbnet_free(pnet);
  sd_weights_free(w);
  sd_free(a);
  sd_free(b);
}

static void rrdbnet_cases(conf_ctx *c, const char *dir, const cJSON *rr) {
  const cJSON *models = cJSON_GetObjectItemCaseSensitive(rr, "models");
  const cJSON *cases = cJSON_GetObjectItemCaseSensitive(rr, "cases");
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir,
           sd_json_str(rr, "golden_file", "rrdbnet_golden.safetensors"));
  sd_weights *g = NULL;
  sd_error err = {0};
  if (sd_weights_open(&g, path, &err)) {
    conf_result(c, "upscale/rrdbnet", 0, "%s", err.msg);
    return;
  }
  const cJSON *list;
  cJSON_ArrayForEach(list, cases) {
    const char *model = list->string;
    char mid[256];
    snprintf(mid, sizeof mid, "upscale/rrdbnet.%s", model);
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(models, model);
    snprintf(path, sizeof path, "%s/%s", dir, sd_json_str(m, "file", ""));
    sd_weights *w = NULL;
    sd_rrdbnet *net = NULL;
    sd_error_clear(&err);
    if (sd_weights_open(&w, path, &err) ||
        sd_rrdbnet_init(&net, w, &err)) {
      conf_result(c, mid, 0, "%s", err.msg);
      sd_weights_free(w);
      continue;
    }
    /* the config detected from shapes must be the one the fixture used */
    const cJSON *kw = cJSON_GetObjectItemCaseSensitive(m, "rrdbnet_kwargs");
    const sd_rrdbnet_config *cfg = sd_rrdbnet_config_of(net);
    char cid[300];
    snprintf(cid, sizeof cid, "%s.config", mid);
    if (kw && conf_wants(c, cid)) {
      int ok = cfg->num_feat == sd_json_int(kw, "num_feat", -1) &&
               cfg->num_block == sd_json_int(kw, "num_block", -1) &&
               cfg->num_grow_ch == sd_json_int(kw, "num_grow_ch", -1) &&
               cfg->scale == sd_json_int(kw, "scale", -1) &&
               cfg->num_in_ch == sd_json_int(kw, "num_in_ch", -1) &&
               cfg->num_out_ch == sd_json_int(kw, "num_out_ch", -1);
      conf_result(c, cid, ok,
                  "detected num_feat %d num_block %d num_grow_ch %d scale %d",
                  cfg->num_feat, cfg->num_block, cfg->num_grow_ch, cfg->scale);
    }
    const cJSON *cs;
    cJSON_ArrayForEach(cs, list) rrdbnet_case(c, net, g, cs);
    snprintf(cid, sizeof cid, "%s.params_ema_prefix", mid);
    if (conf_wants(c, cid)) check_prefixed(c, cid, net, path, g, list);
    sd_rrdbnet_free(net);
    sd_weights_free(w);
  }
  sd_weights_free(g);
}

void conf_suite_upscale(conf_ctx *c, const char *golden_dir,
                        const cJSON *cases_json) {
  const cJSON *lz = cJSON_GetObjectItemCaseSensitive(cases_json, "lanczos");
  const cJSON *rr = cJSON_GetObjectItemCaseSensitive(cases_json, "rrdbnet");
  if (lz) lanczos_cases(c, golden_dir, lz);
  if (rr) rrdbnet_cases(c, golden_dir, rr);
  if (!lz && !rr) conf_result(c, "upscale", 0, "cases.json has no known section");
}
