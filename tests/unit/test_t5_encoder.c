/* T5 encoder: relative-position buckets against hand-computed values of the
 * reference formula, the full encoder on random weights against a naive
 * double-precision reference written from the T5 definition, and (with
 * fixtures) the tiny SD3.5 T5 against its golden output. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../test_util.h"
#include "base/alloc.h"
#include "io/json.h"
#include "io/model_dir.h"
#include "models/t5_encoder.h"

#ifndef SDGEN_FIXTURES_DEFAULT
#define SDGEN_FIXTURES_DEFAULT "../shared/fixtures"
#endif

static void test_buckets(void) {
  /* 32 buckets, max distance 128: 16 per direction, 8 exact. */
  CHECK(sd_t5_relative_bucket(0, 32, 128) == 0);
  CHECK(sd_t5_relative_bucket(-1, 32, 128) == 1);
  CHECK(sd_t5_relative_bucket(1, 32, 128) == 17);
  CHECK(sd_t5_relative_bucket(-7, 32, 128) == 7);
  CHECK(sd_t5_relative_bucket(-8, 32, 128) == 8);
  CHECK(sd_t5_relative_bucket(-12, 32, 128) == 9);   /* 8 + int(1.17) */
  CHECK(sd_t5_relative_bucket(-127, 32, 128) == 15); /* 8 + int(7.98) */
  CHECK(sd_t5_relative_bucket(-200, 32, 128) == 15); /* clamped */
  CHECK(sd_t5_relative_bucket(200, 32, 128) == 31);
  CHECK(sd_t5_relative_bucket(12, 32, 128) == 25);
}

static uint64_t rng_state = 88172645463325252ull;
static float urand(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (float)((rng_state >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static sd_tensor *rand_tensor(int ndim, const int64_t *shape, float scale) {
  sd_tensor *t = sd_tensor_new(ndim, shape);
  if (!t) return NULL;
  for (int64_t i = 0; i < sd_tensor_numel(t); i++) sd_f32(t)[i] = urand() * scale;
  return t;
}

enum { V = 20, D = 8, H = 2, DKV = 3, F = 10, NL = 2, NB = 8, MAXD = 16 };

static int put(sd_weights *w, const char *name, int ndim, const int64_t *shape,
               float scale) {
  sd_error err = {0};
  return sd_weights_put_owned(w, name, rand_tensor(ndim, shape, scale), &err);
}

static const float *W(const sd_weights *w, const char *fmt, int i) {
  char name[256];
  snprintf(name, sizeof name, fmt, i);
  return sd_f32(sd_weights_get(w, name));
}

static void naive_rms(double *y, const double *x, const float *g, int n) {
  double ss = 0;
  for (int i = 0; i < n; i++) ss += x[i] * x[i];
  double r = 1.0 / sqrt(ss / n + 1e-6);
  for (int i = 0; i < n; i++) y[i] = x[i] * r * g[i];
}

/* y[n_out] = W[n_out, n_in] x */
static void naive_mv(double *y, const float *Wt, const double *x, int n_out, int n_in) {
  for (int o = 0; o < n_out; o++) {
    double s = 0;
    for (int i = 0; i < n_in; i++) s += (double)Wt[o * n_in + i] * x[i];
    y[o] = s;
  }
}

/* Bucket computed in double from the published formula (independent of the
 * float32 path under test; they agree away from bucket edges). */
static int naive_bucket(int rel) {
  int half = NB / 2, b = rel > 0 ? half : 0, d = abs(rel), exact = half / 2;
  if (d < exact) return b + d;
  int large = exact + (int)(log((double)d / exact) / log((double)MAXD / exact) * (half - exact));
  return b + (large < half - 1 ? large : half - 1);
}

static void naive_t5(const sd_weights *w, const int32_t *ids, int L, double *out) {
  const float *emb = W(w, "shared.weight", 0);
  const float *rel = W(w, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", 0);
  double *x = calloc((size_t)L * D, sizeof *x), *h = calloc((size_t)L * D, sizeof *h);
  double *q = calloc((size_t)L * H * DKV, sizeof *q), *k = calloc((size_t)L * H * DKV, sizeof *k);
  double *v = calloc((size_t)L * H * DKV, sizeof *v), *a = calloc((size_t)L * H * DKV, sizeof *a);
  double g[F], u[F], tmp[D], s[64];
  for (int t = 0; t < L; t++)
    for (int d = 0; d < D; d++) x[t * D + d] = emb[ids[t] * D + d];
  for (int l = 0; l < NL; l++) {
    for (int t = 0; t < L; t++) {
      naive_rms(h + t * D, x + t * D, W(w, "encoder.block.%d.layer.0.layer_norm.weight", l), D);
      naive_mv(q + t * H * DKV, W(w, "encoder.block.%d.layer.0.SelfAttention.q.weight", l), h + t * D, H * DKV, D);
      naive_mv(k + t * H * DKV, W(w, "encoder.block.%d.layer.0.SelfAttention.k.weight", l), h + t * D, H * DKV, D);
      naive_mv(v + t * H * DKV, W(w, "encoder.block.%d.layer.0.SelfAttention.v.weight", l), h + t * D, H * DKV, D);
    }
    for (int hh = 0; hh < H; hh++)
      for (int i = 0; i < L; i++) {
        double mx = -1e300, sum = 0;
        for (int j = 0; j < L; j++) {
          double dot = 0;
          for (int c = 0; c < DKV; c++) dot += q[(i * H + hh) * DKV + c] * k[(j * H + hh) * DKV + c];
          s[j] = dot + rel[naive_bucket(j - i) * H + hh]; /* no 1/sqrt(d) */
          if (s[j] > mx) mx = s[j];
        }
        for (int j = 0; j < L; j++) sum += (s[j] = exp(s[j] - mx));
        for (int c = 0; c < DKV; c++) {
          double acc = 0;
          for (int j = 0; j < L; j++) acc += s[j] / sum * v[(j * H + hh) * DKV + c];
          a[(i * H + hh) * DKV + c] = acc;
        }
      }
    for (int t = 0; t < L; t++) {
      naive_mv(tmp, W(w, "encoder.block.%d.layer.0.SelfAttention.o.weight", l), a + t * H * DKV, D, H * DKV);
      for (int d = 0; d < D; d++) x[t * D + d] += tmp[d];
      naive_rms(h + t * D, x + t * D, W(w, "encoder.block.%d.layer.1.layer_norm.weight", l), D);
      naive_mv(g, W(w, "encoder.block.%d.layer.1.DenseReluDense.wi_0.weight", l), h + t * D, F, D);
      naive_mv(u, W(w, "encoder.block.%d.layer.1.DenseReluDense.wi_1.weight", l), h + t * D, F, D);
      for (int f = 0; f < F; f++) {
        double z = g[f];
        g[f] = 0.5 * z * (1.0 + tanh(0.7978845608028654 * (z + 0.044715 * z * z * z))) * u[f];
      }
      naive_mv(tmp, W(w, "encoder.block.%d.layer.1.DenseReluDense.wo.weight", l), g, D, F);
      for (int d = 0; d < D; d++) x[t * D + d] += tmp[d];
    }
  }
  for (int t = 0; t < L; t++)
    naive_rms(out + t * D, x + t * D, W(w, "encoder.final_layer_norm.weight", 0), D);
  free(x); free(h); free(q); free(k); free(v); free(a);
}

static void test_random_weights(void) {
  sd_weights *w = sd_weights_new();
  int rc = 0;
  char name[256];
  rc |= put(w, "shared.weight", 2, (int64_t[]){V, D}, 1.0f);
  rc |= put(w, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", 2,
            (int64_t[]){NB, H}, 1.0f);
  rc |= put(w, "encoder.final_layer_norm.weight", 1, (int64_t[]){D}, 1.0f);
  for (int l = 0; l < NL; l++) {
#define P(fmt, nd, ...) (snprintf(name, sizeof name, fmt, l), put(w, name, nd, (int64_t[]){__VA_ARGS__}, 0.5f))
    rc |= P("encoder.block.%d.layer.0.layer_norm.weight", 1, D);
    rc |= P("encoder.block.%d.layer.0.SelfAttention.q.weight", 2, H * DKV, D);
    rc |= P("encoder.block.%d.layer.0.SelfAttention.k.weight", 2, H * DKV, D);
    rc |= P("encoder.block.%d.layer.0.SelfAttention.v.weight", 2, H * DKV, D);
    rc |= P("encoder.block.%d.layer.0.SelfAttention.o.weight", 2, D, H * DKV);
    rc |= P("encoder.block.%d.layer.1.layer_norm.weight", 1, D);
    rc |= P("encoder.block.%d.layer.1.DenseReluDense.wi_0.weight", 2, F, D);
    rc |= P("encoder.block.%d.layer.1.DenseReluDense.wi_1.weight", 2, F, D);
    rc |= P("encoder.block.%d.layer.1.DenseReluDense.wo.weight", 2, D, F);
#undef P
  }
  CHECK(rc == 0);
  cJSON *cfg = cJSON_Parse("{\"d_model\": 8, \"d_kv\": 3, \"d_ff\": 10, \"num_heads\": 2, "
                           "\"num_layers\": 2, \"relative_attention_num_buckets\": 8, "
                           "\"relative_attention_max_distance\": 16, \"vocab_size\": 20, "
                           "\"feed_forward_proj\": \"gated-gelu\", \"layer_norm_epsilon\": 1e-6}");
  sd_t5 *m = NULL;
  sd_error err = {0};
  CHECK_MSG(sd_t5_load(&m, w, cfg, &err) == 0, "load: %s", err.msg);
  enum { B = 2, L = 23 };
  int32_t ids[B * L];
  for (int i = 0; i < B * L; i++) ids[i] = (i * 7 + 3) % V;
  float *out = sd_alloc(sizeof(float) * B * L * D);
  for (int i = 0; i < B * L * D; i++) out[i] = NAN; /* poisoned */
  if (m) {
    CHECK_MSG(sd_t5_encode(m, ids, B, L, out, &err) == 0, "encode: %s", err.msg);
    double ref[L * D];
    float reff[B * L * D];
    for (int b = 0; b < B; b++) {
      naive_t5(w, ids + b * L, L, ref);
      for (int i = 0; i < L * D; i++) reff[b * L * D + i] = (float)ref[i];
    }
    double e = rel_l2(out, reff, B * L * D);
    CHECK_MSG(e < 1e-5, "T5 vs naive reference: rel L2 %g", e);
    /* An id outside the vocabulary is refused, not read out of bounds. */
    ids[5] = V;
    CHECK(sd_t5_encode(m, ids, B, L, out, &err) == SD_ERR_ARG);
  }
  /* A config that disagrees with the shapes is a clear error. */
  cJSON_ReplaceItemInObject(cfg, "d_model", cJSON_CreateNumber(16));
  sd_t5 *bad = NULL;
  sd_error err2 = {0};
  CHECK(sd_t5_load(&bad, w, cfg, &err2) == SD_ERR_FORMAT && bad == NULL);
  sd_free(out);
  sd_t5_free(m);
  cJSON_Delete(cfg);
  sd_weights_free(w);
}

static int test_fixture(const char *fixtures) {
  char dir[1024], path[1024];
  snprintf(dir, sizeof dir, "%s/sd35-large/text_encoder_3", fixtures);
  snprintf(path, sizeof path, "%s/golden/sd35-large/golden.safetensors", fixtures);
  if (!sd_is_dir(dir) || !sd_is_file(path)) return 0;
  sd_error err = {0};
  sd_weights *w = NULL, *g = NULL;
  cJSON *cfg = NULL, *cases = NULL;
  sd_t5 *m = NULL;
  CHECK_MSG(sd_component_open(dir, 0, &w, &cfg, &err) == 0, "%s", err.msg);
  CHECK_MSG(sd_weights_open(&g, path, &err) == 0, "%s", err.msg);
  snprintf(path, sizeof path, "%s/golden/sd35-large/cases.json", fixtures);
  CHECK_MSG(sd_json_read_file(path, &cases, &err) == 0, "%s", err.msg);
  if (w && g && cases && sd_t5_load(&m, w, cfg, &err) == 0) {
    const cJSON *te = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(cases, "cases"), "text_encoders");
    const cJSON *pr = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(te, "prompts"), 0);
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(pr, "t5_input_ids"), *e;
    int32_t ids[256];
    int n = 0;
    cJSON_ArrayForEach(e, arr) if (n < 256) ids[n++] = e->valueint;
    CHECK(n == 256);
    float *out = sd_alloc(sizeof(float) * 256 * m->cfg.d_model);
    sd_tensor *gold = sd_tensor_to_f32(sd_weights_get(g, "t5.p0.last_hidden_state"));
    CHECK(gold != NULL);
    if (gold && n == 256 && sd_t5_encode(m, ids, 1, 256, out, &err) == 0) {
      double e2 = rel_l2(out, sd_f32(gold), 256 * m->cfg.d_model);
      CHECK_MSG(e2 < 1e-4, "T5 fixture rel L2 %g", e2);
      printf("T5 fixture (sd35-large/text_encoder_3): rel L2 %.3g\n", e2);
    } else {
      CHECK_MSG(0, "encode: %s", err.msg);
    }
    sd_tensor_free(gold);
    sd_free(out);
  } else {
    CHECK_MSG(0, "load: %s", err.msg);
  }
  sd_t5_free(m);
  sd_weights_free(w);
  sd_weights_free(g);
  cJSON_Delete(cfg);
  cJSON_Delete(cases);
  return 1;
}

int main(int argc, char **argv) {
  const char *fixtures = argc > 1 ? argv[1] : getenv("SDGEN_FIXTURES");
  if (!fixtures || !*fixtures) fixtures = SDGEN_FIXTURES_DEFAULT;
  test_buckets();
  test_random_weights();
  if (!test_fixture(fixtures))
    printf("NOTE: fixtures not found at %s: the golden T5 check was skipped\n", fixtures);
  return test_finish();
}
