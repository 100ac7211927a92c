/* SD3 single-file mapping and MMDiT argument handling, on the fixtures:
 *  - every tensor of the diffusers folder (transformer/, vae/, text
 *    encoders) equals its mapped counterpart from the single files exactly,
 *    and the mapping adds nothing the folder lacks;
 *  - the transformer config derived from shapes equals the folder's;
 *  - sd_mmdit_forward refuses latents it cannot embed, and its output does
 *    not depend on the attention chunk size.
 * Skips (exit 77) without fixtures. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../test_util.h"
#include "base/alloc.h"
#include "io/checkpoint_map_sd3.h"
#include "io/json.h"
#include "io/model_dir.h"
#include "models/mmdit.h"

#ifndef SDGEN_FIXTURES_DEFAULT
#define SDGEN_FIXTURES_DEFAULT "../shared/fixtures"
#endif

static int tensors_equal(const sd_tensor *a, const sd_tensor *b) {
  if (!sd_tensor_same_shape(a, b)) return 0;
  if (a->dtype == b->dtype) return memcmp(a->data, b->data, sd_tensor_nbytes(a)) == 0;
  int64_t n = sd_tensor_numel(a);
  float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
  int eq = x && y;
  if (eq) {
    sd_tensor_read_f32(a, 0, n, x);
    sd_tensor_read_f32(b, 0, n, y);
    eq = memcmp(x, y, sizeof(float) * n) == 0;
  }
  free(x);
  free(y);
  return eq;
}

/* Every tensor of `ref` is in `mapped` with equal values; same count. */
static void check_same_set(const char *what, const sd_weights *ref, const sd_weights *mapped) {
  int n = sd_weights_count(ref), bad = 0;
  for (int i = 0; i < n; i++) {
    const char *name = sd_weights_name_at(ref, i);
    const sd_tensor *m = sd_weights_get(mapped, name);
    if (!m || !tensors_equal(sd_weights_tensor_at(ref, i), m)) {
      if (bad++ < 5) fprintf(stderr, "%s: %s %s\n", what, name, m ? "differs" : "missing");
    }
  }
  CHECK_MSG(bad == 0, "%s: %d of %d tensors missing or different", what, bad, n);
  CHECK_MSG(sd_weights_count(mapped) == n, "%s: mapped set has %d tensors, folder %d", what,
            sd_weights_count(mapped), n);
}

static void check_config(const char *what, const cJSON *folder, const cJSON *derived) {
  static const char *const keys[] = {"in_channels", "out_channels", "patch_size",
                                     "num_attention_heads", "attention_head_dim", "num_layers",
                                     "joint_attention_dim", "pooled_projection_dim",
                                     "pos_embed_max_size", "caption_projection_dim"};
  for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
    CHECK_MSG(sd_json_int(folder, keys[i], -1) == sd_json_int(derived, keys[i], -2),
              "%s: %s %d vs derived %d", what, keys[i], sd_json_int(folder, keys[i], -1),
              sd_json_int(derived, keys[i], -2));
  CHECK_MSG(!sd_json_has(folder, "qk_norm") == !sd_json_has(derived, "qk_norm"), "%s: qk_norm",
            what);
  const cJSON *a = cJSON_GetObjectItemCaseSensitive(folder, "dual_attention_layers");
  const cJSON *b = cJSON_GetObjectItemCaseSensitive(derived, "dual_attention_layers");
  int na = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : 0;
  int nb = cJSON_IsArray(b) ? cJSON_GetArraySize(b) : 0;
  CHECK_MSG(na == nb, "%s: dual_attention_layers %d vs %d entries", what, na, nb);
  for (int i = 0; i < na && i < nb; i++)
    CHECK(cJSON_GetArrayItem(a, i)->valueint == cJSON_GetArrayItem(b, i)->valueint);
}

static void open_folder(const char *fixtures, const char *model, const char *comp,
                        sd_weights **w, cJSON **cfg) {
  char dir[1024];
  sd_error err = {0};
  snprintf(dir, sizeof dir, "%s/%s/%s", fixtures, model, comp);
  CHECK_MSG(sd_component_open(dir, 0, w, cfg, &err) == 0, "%s", err.msg);
}

static void test_checkpoint(const char *fixtures, const char *model) {
  char path[1024];
  sd_error err = {0};
  sd_weights *file = NULL, *tw = NULL, *vw = NULL;
  cJSON *tcfg = NULL, *vcfg = NULL;
  sd_sd3_components comp = {0};
  snprintf(path, sizeof path, "%s/%s.safetensors", fixtures, model);
  CHECK_MSG(sd_weights_open(&file, path, &err) == 0, "%s", err.msg);
  if (!file) return;
  CHECK(sd_sd3_is_checkpoint(file));
  CHECK_MSG(sd_sd3_checkpoint_map(file, &comp, &err) == 0, "%s: %s", model, err.msg);
  sd_weights_free(file); /* the mapped sets keep the file alive */
  open_folder(fixtures, model, "transformer", &tw, &tcfg);
  open_folder(fixtures, model, "vae", &vw, &vcfg);
  char what[256];
  if (comp.transformer && tw) {
    snprintf(what, sizeof what, "%s transformer", model);
    check_same_set(what, tw, comp.transformer);
    check_config(what, tcfg, comp.transformer_config);
  }
  if (comp.vae && vw) {
    snprintf(what, sizeof what, "%s vae", model);
    check_same_set(what, vw, comp.vae);
    CHECK(sd_json_num(vcfg, "scaling_factor", 0) == sd_json_num(comp.vae_config, "scaling_factor", 1));
    CHECK(sd_json_num(vcfg, "shift_factor", 0) == sd_json_num(comp.vae_config, "shift_factor", 1));
  }
  CHECK(comp.transformer && comp.vae && !comp.clip_l && !comp.t5);
  sd_sd3_components_free(&comp);
  sd_weights_free(tw);
  sd_weights_free(vw);
  cJSON_Delete(tcfg);
  cJSON_Delete(vcfg);
}

static void test_text_encoders(const char *fixtures) {
  static const char *const folders[] = {"text_encoder", "text_encoder_2", "text_encoder_3"};
  static const char *const files[] = {"clip_l", "clip_g", "t5xxl"};
  char path[1024], what[256];
  sd_error err = {0};
  sd_weights *ref[3] = {0};
  cJSON *cfg = NULL;
  for (int i = 0; i < 3; i++) {
    open_folder(fixtures, "sd35-large", folders[i], &ref[i], &cfg);
    cJSON_Delete(cfg);
    cfg = NULL;
  }
  /* The checkpoint with encoders. */
  sd_weights *file = NULL;
  sd_sd3_components comp = {0};
  snprintf(path, sizeof path, "%s/sd35-large-incl-encoders.safetensors", fixtures);
  if (sd_is_file(path)) {
    CHECK_MSG(sd_weights_open(&file, path, &err) == 0, "%s", err.msg);
    CHECK_MSG(file && sd_sd3_checkpoint_map(file, &comp, &err) == 0, "%s", err.msg);
    sd_weights *got[3] = {comp.clip_l, comp.clip_g, comp.t5};
    for (int i = 0; i < 3; i++)
      if (ref[i] && got[i]) {
        snprintf(what, sizeof what, "incl-encoders %s", files[i]);
        check_same_set(what, ref[i], got[i]);
      } else {
        CHECK_MSG(0, "incl-encoders: %s not mapped", files[i]);
      }
    sd_sd3_components_free(&comp);
    sd_weights_free(file);
  }
  /* The separately shipped files. */
  for (int i = 0; i < 3; i++) {
    snprintf(path, sizeof path, "%s/text_encoders/%s.safetensors", fixtures, files[i]);
    if (!sd_is_file(path) || !ref[i]) continue;
    sd_weights *f = NULL, *mapped = NULL;
    CHECK_MSG(sd_weights_open(&f, path, &err) == 0, "%s", err.msg);
    CHECK_MSG(f && sd_sd3_map_text_encoder(f, "", (sd_sd3_encoder)i, &mapped, &err) == 0, "%s",
              err.msg);
    sd_weights_free(f);
    if (mapped) {
      snprintf(what, sizeof what, "text_encoders/%s", files[i]);
      check_same_set(what, ref[i], mapped);
    }
    sd_weights_free(mapped);
  }
  for (int i = 0; i < 3; i++) sd_weights_free(ref[i]);
}

static void test_forward_args(const char *fixtures) {
  sd_weights *w = NULL;
  cJSON *cfg = NULL;
  sd_mmdit *m = NULL;
  sd_error err = {0};
  open_folder(fixtures, "sd35-medium", "transformer", &w, &cfg);
  if (!w) return;
  CHECK_MSG(sd_mmdit_load(&m, w, cfg, &err) == 0, "%s", err.msg);
  if (!m) goto done;
  const sd_mmdit_config *c = sd_mmdit_get_config(m);
  CHECK(c->hidden == 128 && c->layers == 2 && c->qk_norm == 1 && m->block[0].dual &&
        !m->block[1].dual && m->block[1].context_pre_only);
  enum { B = 2, L = 9 };
  const int H = 8, W = 6; /* grid 4x3 inside the 14x14 table */
  int64_t nx = (int64_t)B * c->in_channels * H * W;
  float *x = malloc(sizeof(float) * nx), *o1 = malloc(sizeof(float) * nx);
  float *o2 = malloc(sizeof(float) * nx);
  float *ctx = malloc(sizeof(float) * B * L * c->joint_dim);
  float *pooled = malloc(sizeof(float) * B * c->pooled_dim), t[B] = {999.0f, 3.5f};
  for (int64_t i = 0; i < nx; i++) x[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
  for (int64_t i = 0; i < (int64_t)B * L * c->joint_dim; i++) ctx[i] = (float)((i * 13) % 29) / 14.0f - 1.0f;
  for (int i = 0; i < B * c->pooled_dim; i++) pooled[i] = (float)(i % 7) / 3.0f - 1.0f;
  for (int64_t i = 0; i < nx; i++) o1[i] = o2[i] = NAN;
  CHECK_MSG(sd_mmdit_forward(m, x, B, H, W, t, ctx, L, pooled, o1, 0, &err) == 0, "%s", err.msg);
  CHECK_MSG(sd_mmdit_forward(m, x, B, H, W, t, ctx, L, pooled, o2, 3, &err) == 0, "%s", err.msg);
  double e = rel_l2(o2, o1, (long)nx);
  CHECK_MSG(e < 1e-5, "kv_chunk 3 vs default: rel L2 %g", e);
  /* Batch items are independent: item 1 alone equals item 1 in the batch. */
  CHECK(sd_mmdit_forward(m, x + nx / 2, 1, H, W, t + 1, ctx + L * c->joint_dim, L,
                         pooled + c->pooled_dim, o2, 0, &err) == 0);
  e = rel_l2(o2, o1 + nx / 2, (long)(nx / 2));
  CHECK_MSG(e < 1e-5, "batch of one vs batch of two: rel L2 %g", e);
  /* Refusals: odd size, grid beyond pos_embed_max_size (14 * 2 = 28). */
  sd_error e1 = {0}, e2 = {0};
  CHECK(sd_mmdit_forward(m, x, 1, 7, 6, t, ctx, L, pooled, o1, 0, &e1) == SD_ERR_ARG);
  float *big = calloc((size_t)c->in_channels * 30 * 2, sizeof(float));
  float *bigo = calloc((size_t)c->in_channels * 30 * 2, sizeof(float));
  CHECK(sd_mmdit_forward(m, big, 1, 30, 2, t, ctx, L, pooled, bigo, 0, &e2) == SD_ERR_ARG);
  CHECK(strstr(e2.msg, "pos_embed_max_size") != NULL);
  free(big);
  free(bigo);
  free(x);
  free(o1);
  free(o2);
  free(ctx);
  free(pooled);
  /* A config whose sizes disagree with the weights is refused. */
  cJSON_ReplaceItemInObject(cfg, "num_attention_heads", cJSON_CreateNumber(4));
  sd_mmdit *bad = NULL;
  sd_error e3 = {0};
  CHECK(sd_mmdit_load(&bad, w, cfg, &e3) == SD_ERR_FORMAT && !bad);
done:
  sd_mmdit_free(m);
  sd_weights_free(w);
  cJSON_Delete(cfg);
}

int main(int argc, char **argv) {
  const char *fixtures = argc > 1 ? argv[1] : getenv("SDGEN_FIXTURES");
  if (!fixtures || !*fixtures) fixtures = SDGEN_FIXTURES_DEFAULT;
  char probe[1024];
  snprintf(probe, sizeof probe, "%s/sd35-large.safetensors", fixtures);
  if (!sd_is_file(probe)) {
    printf("SKIP: SD3 fixtures not found at %s (set SDGEN_FIXTURES)\n", fixtures);
    return 77;
  }
  test_checkpoint(fixtures, "sd35-large");
  test_checkpoint(fixtures, "sd35-medium");
  test_text_encoders(fixtures);
  test_forward_args(fixtures);
  return test_finish();
}
