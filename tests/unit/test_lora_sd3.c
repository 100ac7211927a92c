/* SD 3 transformer LoRAs (diffusers / PEFT format), against the fixture
 * transformer: two tiny LoRA files written here (a 2x2 stride-2 patch
 * convolution, attention and feed-forward linears, the output projection;
 * ranks 3 and 5, one module with an alpha, scales 0.7 and -0.4 stacked),
 * applied merged and as a side path, must give the transformer output of
 * weights merged naively in double. Also: a key for no layer and a rank
 * mismatch are refused. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/alloc.h"
#include "io/lora.h"
#include "io/model_dir.h"
#include "io/safetensors_write.h"
#include "models/mmdit.h"
#include "test_util.h"

#ifndef SDGEN_FIXTURES_DEFAULT
#define SDGEN_FIXTURES_DEFAULT "../shared/fixtures"
#endif

static uint64_t g_seed = 12345;
static float frand(void) {
  g_seed = g_seed * 6364136223846793005ULL + 1442695040888963407ULL;
  return (float)((g_seed >> 40) / (double)(1 << 24)) - 0.5f;
}

typedef struct mod {
  const char *name;
  int rank;
  float alpha; /* 0: none in the file (alpha = rank) */
} mod;

/* Writes a PEFT LoRA for the modules of `ms` (shapes from the transformer). */
static int write_lora(const char *path, const sd_weights *tw, const mod *ms, int n,
                      sd_tensor **keep, int *nkeep) {
  sd_named_tensor nt[32];
  static char names[32][256];
  int k = 0;
  for (int i = 0; i < n; i++) {
    char wn[256];
    snprintf(wn, sizeof wn, "%s.weight", ms[i].name);
    const sd_tensor *W = sd_weights_get(tw, wn);
    if (!W) return 1;
    int64_t r = ms[i].rank, out = W->shape[0];
    int64_t dshape[4] = {r, W->shape[1], W->ndim == 4 ? W->shape[2] : 1,
                         W->ndim == 4 ? W->shape[3] : 1};
    int64_t ushape[4] = {out, r, 1, 1};
    sd_tensor *d = sd_tensor_new(W->ndim, dshape), *u = sd_tensor_new(W->ndim, ushape);
    for (int64_t j = 0; j < sd_tensor_numel(d); j++) sd_f32(d)[j] = 0.3f * frand();
    for (int64_t j = 0; j < sd_tensor_numel(u); j++) sd_f32(u)[j] = 0.3f * frand();
    keep[(*nkeep)++] = d;
    keep[(*nkeep)++] = u;
    snprintf(names[k], sizeof names[k], "transformer.%s.lora_A.weight", ms[i].name);
    nt[k].name = names[k];
    nt[k++].tensor = d;
    snprintf(names[k], sizeof names[k], "transformer.%s.lora_B.weight", ms[i].name);
    nt[k].name = names[k];
    nt[k++].tensor = u;
    if (ms[i].alpha > 0) {
      sd_tensor *a = sd_tensor_new(0, NULL);
      sd_f32(a)[0] = ms[i].alpha;
      keep[(*nkeep)++] = a;
      snprintf(names[k], sizeof names[k], "transformer.%s.alpha", ms[i].name);
      nt[k].name = names[k];
      nt[k++].tensor = a;
    }
  }
  sd_error err = {0};
  return sd_safetensors_write(path, nt, k, NULL, &err);
}

/* W += s * alpha / r * up @ down, in double. */
static void naive_merge(sd_weights *w, const char *name, const sd_tensor *down,
                        const sd_tensor *up, float scale, float alpha) {
  char wn[256];
  snprintf(wn, sizeof wn, "%s.weight", name);
  const sd_tensor *W = sd_weights_get(w, wn);
  sd_tensor *m = sd_tensor_to_f32(W);
  int64_t out = W->shape[0], cols = sd_tensor_numel(W) / out, r = down->shape[0];
  double s = (double)scale * (alpha > 0 ? alpha : (double)r) / (double)r;
  for (int64_t o = 0; o < out; o++)
    for (int64_t c = 0; c < cols; c++) {
      double acc = 0;
      for (int64_t k = 0; k < r; k++)
        acc += (double)sd_f32(up)[o * r + k] * (double)sd_f32(down)[k * cols + c];
      sd_f32(m)[o * cols + c] = (float)((double)sd_f32(m)[o * cols + c] + s * acc);
    }
  sd_error err = {0};
  sd_weights_replace_owned(w, wn, m, &err);
}

static int forward(const sd_weights *w, const cJSON *cfg, const float *x, const float *ctx,
                   const float *pooled, float *out) {
  sd_mmdit *m = NULL;
  sd_error err = {0};
  float t = 500.0f;
  int rc = sd_mmdit_load(&m, w, cfg, &err);
  if (!rc) rc = sd_mmdit_forward(m, x, 1, 8, 8, &t, ctx, 5, pooled, out, 0, &err);
  if (rc) fprintf(stderr, "forward: %s\n", err.msg);
  sd_mmdit_free(m);
  return rc;
}

int main(int argc, char **argv) {
  const char *fix = argc > 1 ? argv[1] : getenv("SDGEN_FIXTURES");
  if (!fix || !*fix) fix = SDGEN_FIXTURES_DEFAULT;
  char dir[4096], p1[64], p2[64], p3[64];
  snprintf(dir, sizeof dir, "%s/sd3-medium/transformer", fix);
  sd_weights *base = NULL;
  cJSON *cfg = NULL;
  sd_error err = {0};
  if (sd_component_open(dir, 0, &base, &cfg, &err)) {
    printf("SKIP: %s\n", err.msg);
    return 77;
  }
  char tmpl[] = "/tmp/sdgen_lora_sd3_XXXXXX";
  int fd = mkstemp(tmpl);
  close(fd);
  unlink(tmpl);
  snprintf(p1, sizeof p1, "%s_a.safetensors", tmpl);
  snprintf(p2, sizeof p2, "%s_b.safetensors", tmpl);
  snprintf(p3, sizeof p3, "%s_c.safetensors", tmpl);
  const mod m1[] = {{"pos_embed.proj", 3, 0},
                    {"transformer_blocks.0.attn.to_q", 3, 6.0f},
                    {"transformer_blocks.1.ff.net.0.proj", 3, 0},
                    {"proj_out", 3, 0}};
  const mod m2[] = {{"transformer_blocks.0.attn.to_q", 5, 0},
                    {"transformer_blocks.0.attn.add_k_proj", 5, 0}};
  sd_tensor *keep[64];
  int nkeep = 0;
  CHECK(write_lora(p1, base, m1, 4, keep, &nkeep) == 0);
  int first2 = nkeep;
  CHECK(write_lora(p2, base, m2, 2, keep, &nkeep) == 0);
  const float scales[2] = {0.7f, -0.4f};

  /* reference weights, merged naively */
  sd_weights *ref = NULL;
  cJSON *cfg2 = NULL;
  sd_component_open(dir, 0, &ref, &cfg2, &err);
  cJSON_Delete(cfg2);
  for (int i = 0, k = 0; i < 4; i++) {
    naive_merge(ref, m1[i].name, keep[k], keep[k + 1], scales[0], m1[i].alpha);
    k += m1[i].alpha > 0 ? 3 : 2;
  }
  for (int i = 0, k = first2; i < 2; i++, k += 2)
    naive_merge(ref, m2[i].name, keep[k], keep[k + 1], scales[1], m2[i].alpha);

  int64_t nx = 16 * 8 * 8, nc = 5 * 24;
  float *x = malloc(sizeof(float) * nx), *ctx = malloc(sizeof(float) * nc), pooled[20];
  for (int64_t i = 0; i < nx; i++) x[i] = 2 * frand();
  for (int64_t i = 0; i < nc; i++) ctx[i] = 2 * frand();
  for (int i = 0; i < 20; i++) pooled[i] = 2 * frand();
  float *o_base = malloc(sizeof(float) * nx), *o_ref = malloc(sizeof(float) * nx);
  float *o_merged = malloc(sizeof(float) * nx), *o_side = malloc(sizeof(float) * nx);
  CHECK(forward(base, cfg, x, ctx, pooled, o_base) == 0);
  CHECK(forward(ref, cfg, x, ctx, pooled, o_ref) == 0);

  for (int mode = 0; mode < 2; mode++) {
    sd_weights *w = NULL;
    cJSON *c3 = NULL;
    sd_component_open(dir, 0, &w, &c3, &err);
    cJSON_Delete(c3);
    sd_lora_spec specs[2] = {{p1, scales[0]}, {p2, scales[1]}};
    sd_adapter_target t = {SD_LORA_TRANSFORMER, w};
    sd_adapter *a = NULL;
    int rc = sd_adapter_load(&a, specs, 2, &t, 1, SD_LORA_FAMILY_SD3, &err);
    CHECK_MSG(rc == 0, "bind: %s", err.msg);
    CHECK(sd_adapter_touched(a, SD_LORA_TRANSFORMER) == 5);
    rc = mode ? sd_adapter_attach_side(a, &err) : sd_adapter_merge(a, SD_LORA_TARGETS, &err);
    CHECK(rc == 0);
    CHECK(forward(w, cfg, x, ctx, pooled, mode ? o_side : o_merged) == 0);
    sd_weights_free(w);
    sd_adapter_free(a);
  }
  double eff = rel_l2(o_ref, o_base, nx), dm = rel_l2(o_merged, o_ref, nx),
         ds = rel_l2(o_side, o_ref, nx);
  printf("LoRA effect %.3g, merged vs naive %.3g, side path vs naive %.3g\n", eff, dm, ds);
  CHECK_MSG(eff > 1e-2, "the LoRA changed the output by only %g", eff);
  CHECK_MSG(dm < 1e-5, "merged vs naive %g", dm);
  CHECK_MSG(ds < 1e-5, "side path vs naive %g", ds);

  /* a key for no layer, then a UNet LoRA on the transformer */
  const mod bad[] = {{"transformer_blocks.0.attn.to_q", 2, 0}};
  CHECK(write_lora(p3, base, bad, 1, keep, &nkeep) == 0);
  {
    sd_lora_spec specs[2] = {{p1, 1.0f}, {p3, 1.0f}};
    sd_adapter_target t = {SD_LORA_TRANSFORMER, base};
    sd_adapter *a = NULL;
    /* p3 alone binds; a file naming a layer the model lacks does not */
    sd_weights *empty = sd_weights_new();
    sd_adapter_target te = {SD_LORA_TRANSFORMER, empty};
    CHECK(sd_adapter_load(&a, specs, 1, &te, 1, SD_LORA_FAMILY_SD3, &err) != 0);
    CHECK_MSG(strstr(err.msg, "maps to no layer") != NULL, "%s", err.msg);
    CHECK(a == NULL);
    sd_weights_free(empty);
    sd_error_clear(&err);
    CHECK(sd_adapter_load(&a, specs + 1, 1, &t, 1, SD_LORA_FAMILY_SDXL, &err) != 0);
    CHECK_MSG(strstr(err.msg, "is for SD 3") != NULL, "%s", err.msg);
  }
  unlink(p1);
  unlink(p2);
  unlink(p3);
  for (int i = 0; i < nkeep; i++) sd_tensor_free(keep[i]);
  free(x);
  free(ctx);
  free(o_base);
  free(o_ref);
  free(o_merged);
  free(o_side);
  sd_weights_free(base);
  sd_weights_free(ref);
  cJSON_Delete(cfg);
  return test_finish();
}
