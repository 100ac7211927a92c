/* Single-file checkpoint → diffusers names.
 *
 * Without fixtures: detection on synthetic key sets, malformed layouts, the
 * row-view / owned-tensor additions of weight sets.
 * With fixtures (argv[1], $SDGEN_FIXTURES, or the configured default): the
 * SD 1.5, SDXL base and refiner single files, mapped, must give every tensor
 * of the matching diffusers folder with the same shape and the same values
 * (exact, compared as F32), produce no tensor the folder lacks, and consume
 * every weight of the single file. Then malformed variants of those files
 * (a tensor or a whole block removed, a stray tensor added) must fail with a
 * message naming the missing / unexpected tensor. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/alloc.h"
#include "io/checkpoint_map.h"
#include "io/safetensors.h"
#include "test_util.h"

#ifndef SDGEN_FIXTURES_DEFAULT
#define SDGEN_FIXTURES_DEFAULT "../shared/fixtures"
#endif

/* ---- writing small safetensors files ---------------------------------- */

typedef struct spec {
  const char *name;
  sd_dtype dtype;
  int ndim;
  int64_t shape[4];
  const void *data; /* NULL: zeros */
} spec;

static char tmp_dir[256];

static const char *tmp_path(const char *leaf) {
  static char path[512];
  snprintf(path, sizeof path, "%s/%s", tmp_dir, leaf);
  return path;
}

/* Writes a safetensors file holding `n` tensors; returns 0 on success. */
static int write_safetensors(const char *path, const spec *s, int n) {
  size_t cap = 256 + (size_t)n * 512, len = 0;
  char *header = malloc(cap);
  if (!header) return -1;
  uint64_t offset = 0;
  len += (size_t)snprintf(header + len, cap - len, "{");
  for (int i = 0; i < n; i++) {
    uint64_t bytes = sd_dtype_size(s[i].dtype);
    len += (size_t)snprintf(header + len, cap - len,
                            "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", i ? "," : "",
                            s[i].name, sd_dtype_name(s[i].dtype));
    for (int d = 0; d < s[i].ndim; d++) {
      bytes *= (uint64_t)s[i].shape[d];
      len += (size_t)snprintf(header + len, cap - len, "%s%lld", d ? "," : "",
                              (long long)s[i].shape[d]);
    }
    len += (size_t)snprintf(header + len, cap - len,
                            "],\"data_offsets\":[%llu,%llu]}",
                            (unsigned long long)offset,
                            (unsigned long long)(offset + bytes));
    offset += bytes;
  }
  len += (size_t)snprintf(header + len, cap - len, "}");
  FILE *f = fopen(path, "wb");
  if (!f) {
    free(header);
    return -1;
  }
  unsigned char hlen[8];
  for (int i = 0; i < 8; i++) hlen[i] = (unsigned char)((uint64_t)len >> (8 * i));
  int ok = fwrite(hlen, 1, 8, f) == 8 && fwrite(header, 1, len, f) == len;
  for (int i = 0; i < n && ok; i++) {
    size_t bytes = sd_dtype_size(s[i].dtype);
    for (int d = 0; d < s[i].ndim; d++) bytes *= (size_t)s[i].shape[d];
    if (s[i].data) {
      ok = fwrite(s[i].data, 1, bytes, f) == bytes;
    } else {
      for (size_t b = 0; b < bytes && ok; b++) ok = fputc(0, f) != EOF;
    }
  }
  ok &= fclose(f) == 0;
  free(header);
  return ok ? 0 : -1;
}

static sd_weights *open_specs(const char *leaf, const spec *s, int n) {
  const char *path = tmp_path(leaf);
  if (write_safetensors(path, s, n)) return NULL;
  sd_weights *w = NULL;
  sd_error err = {0};
  if (sd_weights_open(&w, path, &err))
    fprintf(stderr, "open %s: %s\n", path, err.msg);
  return w;
}

#define T1(n, a) {n, SD_F16, 1, {a}, NULL}
#define T2(n, a, b) {n, SD_F16, 2, {a, b}, NULL}
#define T4(n, a, b, c, d) {n, SD_F16, 4, {a, b, c, d}, NULL}

static sd_checkpoint_family detect_specs(const char *leaf, const spec *s, int n,
                                         sd_checkpoint_info *info, int *rc) {
  sd_weights *w = open_specs(leaf, s, n);
  CHECK(w != NULL);
  memset(info, 0, sizeof *info);
  *rc = w ? sd_checkpoint_detect(w, info) : -1;
  sd_weights_free(w);
  return info->family;
}

static void test_detect_synthetic(void) {
  sd_checkpoint_info info;
  int rc;
  const spec sd1[] = {
      T2("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", 8, 4),
      T4("model.diffusion_model.input_blocks.0.0.weight", 4, 4, 3, 3),
      T1("first_stage_model.decoder.conv_in.bias", 4),
      T1("betas", 10)};
  CHECK(detect_specs("sd1.safetensors", sd1, 4, &info, &rc) == SD_FAMILY_SD1);
  CHECK(rc == SD_OK && info.has_unet && info.has_vae && info.has_text_encoder &&
        !info.has_text_encoder_2);

  const spec sd2[] = {T2("cond_stage_model.model.token_embedding.weight", 8, 4),
                      T4("model.diffusion_model.input_blocks.0.0.weight", 4, 4, 3, 3)};
  CHECK(detect_specs("sd2.safetensors", sd2, 2, &info, &rc) == SD_FAMILY_SD2);
  CHECK(info.has_text_encoder && !info.has_vae);

  const spec xl[] = {
      T2("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight", 8, 4),
      T2("conditioner.embedders.1.model.positional_embedding", 8, 4)};
  CHECK(detect_specs("xl.safetensors", xl, 2, &info, &rc) == SD_FAMILY_SDXL_BASE);
  CHECK(info.has_text_encoder && info.has_text_encoder_2 && !info.has_unet);

  const spec refiner[] = {T2("conditioner.embedders.0.model.text_projection", 4, 4)};
  CHECK(detect_specs("ref.safetensors", refiner, 1, &info, &rc) ==
        SD_FAMILY_SDXL_REFINER);
  CHECK(!info.has_text_encoder && info.has_text_encoder_2);

  const spec sd3[] = {
      T2("model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", 12, 4),
      T2("text_encoders.clip_g.transformer.text_model.embeddings.token_embedding.weight", 8, 4),
      T2("text_encoders.t5xxl.transformer.shared.weight", 8, 4)};
  CHECK(detect_specs("sd3.safetensors", sd3, 3, &info, &rc) == SD_FAMILY_SD3);
  CHECK(rc == SD_OK && info.has_unet && !info.has_text_encoder &&
        info.has_text_encoder_2 && info.has_text_encoder_3);

  const spec unknown[] = {T1("foo.bar", 3)};
  CHECK(detect_specs("unk.safetensors", unknown, 1, &info, &rc) ==
        SD_FAMILY_UNKNOWN);
  CHECK(rc == SD_ERR_UNSUPPORTED);

  /* UNet-only files: label_emb → SDXL (4 levels: refiner, 3: base); a linear
   * proj_in without label_emb → SD 2.x. Levels come from the downsamplers:
   * conv_in, 2 resnets, downsampler per level (input_blocks 3, 6, 9). */
  spec unet4[16];
  char names[16][96];
  int n = 0;
  for (int b = 0; b < 12; b++) {
    snprintf(names[n], sizeof names[n], "model.diffusion_model.input_blocks.%d.0.%s", b,
             b > 0 && b % 3 == 0 ? "op.weight" : "in_layers.0.weight");
    unet4[n] = (spec)T1(names[n], 4);
    n++;
  }
  unet4[n++] = (spec)T2("model.diffusion_model.label_emb.0.0.weight", 4, 4);
  unet4[n++] = (spec)T1("model.diffusion_model.output_blocks.11.0.in_layers.0.weight", 4);
  CHECK(detect_specs("unet4.safetensors", unet4, n, &info, &rc) ==
        SD_FAMILY_SDXL_REFINER);
  CHECK(info.unet_levels == 4 && info.unet_layers_per_block == 2);
  /* drop level 4 (input blocks 9..11) and label_emb, give a linear proj_in */
  n = 9;
  unet4[n++] = (spec)T2("model.diffusion_model.input_blocks.1.1.proj_in.weight", 4, 4);
  unet4[n++] = (spec)T1("model.diffusion_model.output_blocks.8.0.in_layers.0.weight", 4);
  CHECK(detect_specs("unet3.safetensors", unet4, n, &info, &rc) == SD_FAMILY_SD2);
  CHECK(info.unet_levels == 3 && info.unet_level_attention[0] == 0);

  /* mapping refuses SD3 and inconsistent UNet block lists */
  sd_weights *w = open_specs("sd3.safetensors", sd3, 3), *u = NULL;
  sd_error err = {0};
  CHECK(w && sd_checkpoint_map(w, &info, &u, NULL, NULL, NULL, &err) ==
                 SD_ERR_UNSUPPORTED);
  CHECK(u == NULL);
  sd_weights_free(w);

  n = 9; /* 3 levels of input blocks but output blocks 0..5 only */
  unet4[n++] = (spec)T1("model.diffusion_model.output_blocks.5.0.in_layers.0.weight", 4);
  unet4[n++] = (spec)T1("cond_stage_model.transformer.text_model.final_layer_norm.bias", 4);
  w = open_specs("bad_unet.safetensors", unet4, n);
  memset(&err, 0, sizeof err);
  rc = w ? sd_checkpoint_map(w, &info, &u, NULL, NULL, NULL, &err) : -1;
  CHECK_MSG(rc == SD_ERR_FORMAT && strstr(err.msg, "output_blocks"),
            "inconsistent UNet: rc %d '%s'", rc, err.msg);
  CHECK(u == NULL);
  sd_weights_free(w);
}

/* ---- weight-set additions: row views and owned tensors ------------------ */

static void test_rows_and_owned(void) {
  uint16_t qkv[6 * 2];
  for (int i = 0; i < 12; i++) qkv[i] = (uint16_t)(0x3c00 + i);
  spec s[] = {{"in_proj_weight", SD_F16, 2, {6, 2}, qkv}};
  sd_weights *file = open_specs("rows.safetensors", s, 1);
  CHECK(file != NULL);
  if (!file) return;
  sd_weights *set = sd_weights_new();
  sd_error err = {0};
  CHECK(sd_weights_alias_rows(set, "k", file, "in_proj_weight", 2, 2, &err) == SD_OK);
  const sd_tensor *k = sd_weights_get(set, "k");
  uint16_t v = 0; /* the data section need not be aligned: memcpy */
  if (k) memcpy(&v, k->data, 2);
  CHECK(k && k->ndim == 2 && k->shape[0] == 2 && k->shape[1] == 2 &&
        v == 0x3c00 + 4);
  CHECK(k && k->data == (const char *)sd_weights_get(file, "in_proj_weight")->data + 8);
  CHECK(sd_weights_alias_rows(set, "x", file, "in_proj_weight", 5, 2, &err) ==
        SD_ERR_ARG);
  CHECK(sd_weights_alias_rows(set, "y", file, "in_proj_weight", -1, 1, &err) ==
        SD_ERR_ARG);
  CHECK(sd_weights_alias_rows(set, "z", file, "absent", 0, 1, &err) == SD_ERR_ARG);

  sd_tensor *t = sd_tensor_new_dtype(SD_BF16, 1, (int64_t[]){3});
  CHECK(t != NULL);
  if (t) ((uint16_t *)t->data)[2] = 0x4000;
  CHECK(t && sd_weights_put_owned(set, "owned", t, &err) == SD_OK);
  /* an alias of the owned tensor outlives the set that received it */
  sd_weights *other = sd_weights_new();
  CHECK(sd_weights_alias(other, "copy", set, "owned", &err) == SD_OK);
  CHECK(sd_weights_alias(other, "k2", set, "k", &err) == SD_OK);
  /* a duplicate name fails and still frees the handed-over tensor */
  sd_tensor *dup = sd_tensor_new_dtype(SD_F32, 1, (int64_t[]){2});
  CHECK(sd_weights_put_owned(set, "owned", dup, &err) == SD_ERR_FORMAT);
  sd_weights_free(set);
  sd_weights_free(file);
  const sd_tensor *c = sd_weights_get(other, "copy");
  CHECK(c && c->dtype == SD_BF16 && ((const uint16_t *)c->data)[2] == 0x4000);
  const sd_tensor *k2 = sd_weights_get(other, "k2");
  if (k2) memcpy(&v, (const char *)k2->data + 6, 2);
  CHECK(k2 && v == 0x3c00 + 7);
  sd_weights_free(other);
}

/* ---- fixtures: mapped single files against diffusers folders ----------- */

static int is_non_weight(const char *key) {
  static const char *const top_level[] = {
      "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
      "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
      "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
      "posterior_variance", "posterior_log_variance_clipped",
      "posterior_mean_coef1", "posterior_mean_coef2"};
  for (size_t i = 0; i < sizeof top_level / sizeof *top_level; i++)
    if (strcmp(key, top_level[i]) == 0) return 1;
  size_t n = strlen(key);
  return strncmp(key, "model_ema.", 10) == 0 ||
         (n > 13 && strcmp(key + n - 13, ".position_ids") == 0) ||
         (n > 12 && strcmp(key + n - 12, ".logit_scale") == 0);
}

static float *to_f32(const sd_tensor *t) {
  int64_t n = sd_tensor_numel(t);
  float *buf = malloc(sizeof(float) * (size_t)(n ? n : 1));
  if (buf) sd_tensor_read_f32(t, 0, n, buf);
  return buf;
}

/* Every tensor of the folder file exists in `mapped` with the same shape and
 * values, and `mapped` holds nothing else. */
static void compare_component(const char *label, const sd_weights *mapped,
                              const char *folder_file) {
  sd_weights *ref = NULL;
  sd_error err = {0};
  int rc = sd_weights_open(&ref, folder_file, &err);
  CHECK_MSG(rc == SD_OK, "%s: %s", label, err.msg);
  CHECK_MSG(mapped != NULL, "%s: component not mapped", label);
  if (rc || !mapped) {
    sd_weights_free(ref);
    return;
  }
  int bad = 0, n = sd_weights_count(ref);
  for (int i = 0; i < n && bad < 10; i++) {
    const char *name = sd_weights_name_at(ref, i);
    const sd_tensor *want = sd_weights_tensor_at(ref, i);
    const sd_tensor *got = sd_weights_get(mapped, name);
    char a[96], b[96];
    if (!got) {
      fprintf(stderr, "%s: '%s' missing from the mapped set\n", label, name);
      bad++;
      continue;
    }
    if (!sd_tensor_same_shape(got, want)) {
      fprintf(stderr, "%s: '%s' shape %s, folder %s\n", label, name,
              sd_tensor_shape_str(got, a, sizeof a),
              sd_tensor_shape_str(want, b, sizeof b));
      bad++;
      continue;
    }
    float *x = to_f32(got), *y = to_f32(want);
    int64_t numel = sd_tensor_numel(want), diff = -1;
    for (int64_t e = 0; x && y && e < numel && diff < 0; e++)
      if (x[e] != y[e]) diff = e;
    if (!x || !y || diff >= 0) {
      fprintf(stderr, "%s: '%s' differs at element %lld\n", label, name,
              (long long)diff);
      bad++;
    }
    free(x);
    free(y);
  }
  int extra = 0;
  for (int i = 0; i < sd_weights_count(mapped); i++)
    if (!sd_weights_get(ref, sd_weights_name_at(mapped, i))) {
      if (extra++ < 5)
        fprintf(stderr, "%s: mapped '%s' is not in the folder\n", label,
                sd_weights_name_at(mapped, i));
    }
  CHECK_MSG(bad == 0 && extra == 0, "%s: %d tensors wrong, %d extra", label, bad,
            extra);
  printf("%s: %d tensors identical to %s\n", label, bad ? 0 : n, folder_file);
  sd_weights_free(ref);
}

typedef struct range {
  const char *begin, *end;
} range;

static int cmp_range(const void *a, const void *b) {
  const range *x = a, *y = b;
  return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* Every weight of the single file is read by some mapped tensor: its bytes
 * start where a mapped view starts or a mapped view starts inside it (q/k/v
 * rows). Owned copies (the transposed projection) do not point into the
 * file; the value comparison has covered them. */
static void check_consumed(const char *label, const sd_weights *file,
                           sd_weights *const *sets, int nsets) {
  int total = 0;
  for (int s = 0; s < nsets; s++) total += sets[s] ? sd_weights_count(sets[s]) : 0;
  range *views = malloc(sizeof(range) * (size_t)(total ? total : 1));
  int nv = 0;
  for (int s = 0; s < nsets; s++)
    for (int i = 0; sets[s] && i < sd_weights_count(sets[s]); i++) {
      const sd_tensor *t = sd_weights_tensor_at(sets[s], i);
      views[nv].begin = t->data;
      views[nv].end = (const char *)t->data + sd_tensor_nbytes(t);
      nv++;
    }
  qsort(views, (size_t)nv, sizeof(range), cmp_range);
  /* SD 2.x conditions on the penultimate OpenCLIP layer: the last resblock
   * is left out on purpose (as diffusers' from_single_file drops it) */
  static const char rb[] = "cond_stage_model.model.transformer.resblocks.";
  int last_rb = -1;
  for (int i = 0; i < sd_weights_count(file); i++)
    if (strncmp(sd_weights_name_at(file, i), rb, sizeof rb - 1) == 0) {
      int k = atoi(sd_weights_name_at(file, i) + sizeof rb - 1);
      if (k > last_rb) last_rb = k;
    }
  int unconsumed = 0;
  for (int i = 0; i < sd_weights_count(file); i++) {
    const char *key = sd_weights_name_at(file, i);
    size_t klen = strlen(key);
    if (is_non_weight(key) ||
        (klen >= 15 && strcmp(key + klen - 15, "text_projection") == 0) ||
        (last_rb >= 0 && strncmp(key, rb, sizeof rb - 1) == 0 &&
         atoi(key + sizeof rb - 1) == last_rb))
      continue;
    const sd_tensor *t = sd_weights_tensor_at(file, i);
    const char *b = t->data, *e = b + sd_tensor_nbytes(t);
    int lo = 0, hi = nv; /* first view starting at or after b */
    while (lo < hi) {
      int mid = (lo + hi) / 2;
      if (views[mid].begin < b) lo = mid + 1; else hi = mid;
    }
    if (!(lo < nv && views[lo].begin < e) && !(b == e)) {
      if (unconsumed++ < 5)
        fprintf(stderr, "%s: single-file tensor '%s' is not mapped\n", label, key);
    }
  }
  CHECK_MSG(unconsumed == 0, "%s: %d weights of the single file unmapped", label,
            unconsumed);
  free(views);
}

typedef struct fixture_case {
  const char *label, *single, *dir;
  sd_checkpoint_family family;
  const char *unet, *vae, *te, *te2; /* folder files; NULL = absent */
} fixture_case;

static void test_fixture(const char *fixtures, const fixture_case *c) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", fixtures, c->single);
  sd_weights *file = NULL;
  sd_error err = {0};
  CHECK_MSG(sd_weights_open(&file, path, &err) == SD_OK, "%s", err.msg);
  if (!file) return;
  sd_checkpoint_info info;
  sd_weights *sets[4] = {0};
  int rc = sd_checkpoint_map(file, &info, &sets[0], &sets[1], &sets[2], &sets[3],
                             &err);
  CHECK_MSG(rc == SD_OK, "%s: map failed: %s", c->label, err.msg);
  CHECK_MSG(info.family == c->family, "%s: detected %s", c->label,
            sd_checkpoint_family_name(info.family));
  CHECK_MSG(info.unmapped_keys == 0, "%s: %d unmapped keys, first '%s'", c->label,
            info.unmapped_keys, info.first_unmapped);
  const char *files[4] = {c->unet, c->vae, c->te, c->te2};
  int has[4] = {info.has_unet, info.has_vae, info.has_text_encoder,
                info.has_text_encoder_2};
  for (int i = 0; i < 4; i++)
    CHECK_MSG(has[i] == (files[i] != NULL) && (sets[i] != NULL) == has[i],
              "%s: component %d presence %d, set %p", c->label, i, has[i],
              (void *)sets[i]);
  printf("%s: %s, UNet %d levels x %d layers, attention depth per level", c->label,
         sd_checkpoint_family_name(info.family), info.unet_levels,
         info.unet_layers_per_block);
  for (int l = 0; l < info.unet_levels; l++) printf(" %d", info.unet_level_attention[l]);
  printf(", %d non-weights ignored\n", info.ignored_keys);

  /* VAE attention: 2-D view over the single file's [C, C, 1, 1] conv */
  const sd_tensor *q = sets[1] ? sd_weights_get(sets[1], "decoder.mid_block.attentions.0.to_q.weight") : NULL;
  const sd_tensor *q4 = sd_weights_get(file, "first_stage_model.decoder.mid.attn_1.q.weight");
  CHECK(q && q4 && q->ndim == 2 && q4->ndim == 4 && q->data == q4->data);

  check_consumed(c->label, file, sets, 4);
  /* the mapped sets must stay valid once the file's own set is gone */
  sd_weights_free(file);
  static const char *const names[4] = {"unet", "vae", "text_encoder", "text_encoder_2"};
  for (int i = 0; i < 4; i++) {
    if (!files[i]) continue;
    char label[128];
    snprintf(label, sizeof label, "%s %s", c->label, names[i]);
    snprintf(path, sizeof path, "%s/%s/%s", fixtures, c->dir, files[i]);
    compare_component(label, sets[i], path);
  }
  for (int i = 0; i < 4; i++) sd_weights_free(sets[i]);
}

/* Rewrites a fixture single file without the tensors whose name contains
 * `drop` (NULL: none) and with one extra tensor `extra` (NULL: none), maps it
 * and expects SD_ERR_FORMAT with `expect` in the message. */
static void test_malformed(const char *fixtures, const char *single,
                           const char *drop, const char *extra,
                           const char *expect) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", fixtures, single);
  sd_weights *src = NULL;
  sd_error err = {0};
  if (sd_weights_open(&src, path, &err)) {
    CHECK_MSG(0, "%s", err.msg);
    return;
  }
  int n = sd_weights_count(src), m = 0;
  spec *specs = calloc((size_t)n + 1, sizeof(spec));
  for (int i = 0; i < n; i++) {
    const char *name = sd_weights_name_at(src, i);
    if (drop && strstr(name, drop)) continue;
    const sd_tensor *t = sd_weights_tensor_at(src, i);
    specs[m].name = name;
    specs[m].dtype = t->dtype;
    specs[m].ndim = t->ndim;
    for (int d = 0; d < t->ndim; d++) specs[m].shape[d] = t->shape[d];
    specs[m].data = t->data;
    m++;
  }
  if (extra) specs[m++] = (spec)T1(extra, 4);
  CHECK_MSG(m != n || extra, "nothing matched '%s'", drop);
  sd_weights *bad = open_specs("malformed.safetensors", specs, m);
  free(specs);
  sd_weights_free(src);
  CHECK(bad != NULL);
  if (!bad) return;
  sd_checkpoint_info info;
  sd_weights *sets[4] = {(sd_weights *)1, (sd_weights *)1, (sd_weights *)1,
                         (sd_weights *)1};
  int rc = sd_checkpoint_map(bad, &info, &sets[0], &sets[1], &sets[2], &sets[3],
                             &err);
  CHECK_MSG(rc == SD_ERR_FORMAT && strstr(err.msg, expect),
            "without '%s' / with '%s': rc %d, message '%s' lacks '%s'",
            drop ? drop : "-", extra ? extra : "-", rc, err.msg, expect);
  CHECK(!sets[0] && !sets[1] && !sets[2] && !sets[3]);
  printf("malformed (%s%s): %s\n", drop ? "without " : "with ", drop ? drop : extra,
         err.msg);
  sd_weights_free(bad);
}

/* SQLite-style: allocation N fails, for N = 1, 2, ... until the mapping
 * succeeds; every failed run must end in SD_ERR_OOM with nothing held. */
static void test_alloc_failures(const char *fixtures, const char *single) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", fixtures, single);
  sd_weights *file = NULL;
  sd_error err = {0};
  if (sd_weights_open(&file, path, &err)) {
    CHECK_MSG(0, "%s", err.msg);
    return;
  }
  int64_t base = sd_alloc_get_stats().bytes_in_use;
  int runs = 0, clean = 1;
  for (int64_t n = 1; n < 1000000; n++) {
    sd_checkpoint_info info;
    sd_weights *sets[4] = {0};
    sd_error e = {0};
    sd_alloc_fail_at(n, 1);
    int rc = sd_checkpoint_map(file, &info, &sets[0], &sets[1], &sets[2],
                               &sets[3], &e);
    int triggered = sd_alloc_fault_triggered();
    sd_alloc_fail_at(0, 0);
    runs++;
    if (rc == SD_OK && !triggered) {
      for (int i = 0; i < 4; i++) sd_weights_free(sets[i]);
      break;
    }
    int held = sd_alloc_get_stats().bytes_in_use != base;
    if (rc != SD_ERR_OOM || held || sets[0] || sets[1] || sets[2] || sets[3]) {
      if (clean)
        fprintf(stderr, "%s: allocation %lld failing gave rc %d (%s), %s\n",
                single, (long long)n, rc, e.msg, held ? "memory held" : "");
      clean = 0;
      for (int i = 0; i < 4; i++) sd_weights_free(sets[i]);
    }
  }
  CHECK_MSG(clean, "%s: allocation failures not handled cleanly", single);
  printf("%s: mapping survives each of its %d allocations failing\n", single,
         runs - 1);
  sd_weights_free(file);
}

/* SD 2.x: no fixture, so the refiner's OpenCLIP is moved under SD 2.x's
 * prefix. diffusers' SD 2.x text encoder is a CLIPTextModel of all layers but
 * the last (the pipeline uses the penultimate one), without projection. */
static void test_sd2_from_refiner(const char *fixtures) {
  char path[1024];
  snprintf(path, sizeof path, "%s/sdxl-refiner.safetensors", fixtures);
  sd_weights *src = NULL;
  sd_error err = {0};
  if (sd_weights_open(&src, path, &err)) {
    CHECK_MSG(0, "%s", err.msg);
    return;
  }
  const char *from = "conditioner.embedders.0.model.";
  int n = sd_weights_count(src), moved = 0;
  spec *specs = calloc((size_t)n, sizeof(spec));
  char (*names)[256] = calloc((size_t)n, 256);
  for (int i = 0; i < n; i++) {
    const char *name = sd_weights_name_at(src, i);
    const sd_tensor *t = sd_weights_tensor_at(src, i);
    if (strncmp(name, from, strlen(from)) == 0) {
      snprintf(names[i], 256, "cond_stage_model.model.%s", name + strlen(from));
      moved++;
    } else {
      snprintf(names[i], 256, "%s", name);
    }
    specs[i] = (spec){names[i], t->dtype, t->ndim, {0}, t->data};
    for (int d = 0; d < t->ndim; d++) specs[i].shape[d] = t->shape[d];
  }
  sd_weights *w = open_specs("sd2.safetensors", specs, n);
  free(specs);
  free(names);
  sd_weights_free(src);
  CHECK(w != NULL && moved > 0);
  if (!w) return;
  sd_checkpoint_info info;
  sd_weights *te = NULL, *te2 = NULL;
  int rc = sd_checkpoint_map(w, &info, NULL, NULL, &te, &te2, &err);
  CHECK_MSG(rc == SD_OK, "SD 2.x map: %s", err.msg);
  CHECK(info.family == SD_FAMILY_SD2 && info.has_text_encoder && te && !te2);
  /* logit_scale + the last resblock's 12 tensors + text_projection */
  CHECK_MSG(info.ignored_keys == 14, "SD 2.x ignored %d", info.ignored_keys);
  if (te) {
    CHECK(sd_weights_get(te, "text_model.encoder.layers.0.self_attn.v_proj.bias"));
    CHECK(!sd_weights_get(te, "text_model.encoder.layers.1.layer_norm1.weight"));
    CHECK(!sd_weights_get(te, "text_projection.weight"));
    CHECK(sd_weights_count(te) == 4 + 16);
    snprintf(path, sizeof path, "%s/sdxl-refiner/text_encoder_2/model.safetensors",
             fixtures);
    sd_weights *ref = NULL;
    if (sd_weights_open(&ref, path, &err) == SD_OK) {
      int same = 1;
      for (int i = 0; i < sd_weights_count(te); i++) {
        const char *name = sd_weights_name_at(te, i);
        const sd_tensor *a = sd_weights_tensor_at(te, i), *b = sd_weights_get(ref, name);
        float *x = b ? to_f32(a) : NULL, *y = b ? to_f32(b) : NULL;
        same &= b && sd_tensor_same_shape(a, b) && x && y &&
                memcmp(x, y, sizeof(float) * (size_t)sd_tensor_numel(a)) == 0;
        free(x);
        free(y);
      }
      CHECK_MSG(same, "SD 2.x text encoder differs from the refiner's layers");
    }
    sd_weights_free(ref);
  }
  sd_weights_free(te);
  sd_weights_free(w);
}

static void test_sd3_detect(const char *fixtures) {
  char path[1024];
  snprintf(path, sizeof path, "%s/sd35-large-incl-encoders.safetensors", fixtures);
  sd_weights *w = NULL;
  sd_error err = {0};
  if (sd_weights_open(&w, path, &err)) {
    CHECK_MSG(0, "%s", err.msg);
    return;
  }
  sd_checkpoint_info info;
  CHECK(sd_checkpoint_detect(w, &info) == SD_OK);
  CHECK(info.family == SD_FAMILY_SD3 && info.has_unet && info.has_vae &&
        info.has_text_encoder && info.has_text_encoder_2 &&
        info.has_text_encoder_3);
  sd_weights_free(w);
}

int main(int argc, char **argv) {
  snprintf(tmp_dir, sizeof tmp_dir, "/tmp/sdgen_ckmap_%d", (int)getpid());
  if (mkdir(tmp_dir, 0700) != 0) {
    fprintf(stderr, "cannot create %s\n", tmp_dir);
    return 1;
  }
  test_detect_synthetic();
  test_rows_and_owned();

  const char *fixtures = argc > 1 ? argv[1] : getenv("SDGEN_FIXTURES");
  if (!fixtures || !*fixtures) fixtures = SDGEN_FIXTURES_DEFAULT;
  char probe[1024];
  snprintf(probe, sizeof probe, "%s/sd15.safetensors", fixtures);
  int have_fixtures = access(probe, R_OK) == 0;
  if (have_fixtures) {
    static const fixture_case cases[] = {
        {"sd15", "sd15.safetensors", "sd15", SD_FAMILY_SD1,
         "unet/diffusion_pytorch_model.safetensors",
         "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
         NULL},
        {"sdxl", "sdxl.safetensors", "sdxl", SD_FAMILY_SDXL_BASE,
         "unet/diffusion_pytorch_model.fp16.safetensors",
         "vae/diffusion_pytorch_model.fp16.safetensors",
         "text_encoder/model.fp16.safetensors",
         "text_encoder_2/model.fp16.safetensors"},
        /* SD 2.x: OpenCLIP names, fused in_proj rows, the unused last
         * resblock dropped */
        {"sd21", "sd21.safetensors", "sd21", SD_FAMILY_SD2,
         "unet/diffusion_pytorch_model.safetensors",
         "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", NULL},
        {"sdxl-refiner", "sdxl-refiner.safetensors", "sdxl-refiner",
         SD_FAMILY_SDXL_REFINER, "unet/diffusion_pytorch_model.safetensors",
         "vae/diffusion_pytorch_model.safetensors", NULL,
         "text_encoder_2/model.safetensors"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
      test_fixture(fixtures, &cases[i]);
    /* the F32 variant of the SDXL folder holds the same values */
    static const fixture_case xl32 = {
        "sdxl (F32 folder)", "sdxl.safetensors", "sdxl", SD_FAMILY_SDXL_BASE,
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
        "text_encoder_2/model.safetensors"};
    test_fixture(fixtures, &xl32);
    test_sd3_detect(fixtures);
    test_sd2_from_refiner(fixtures);
    test_alloc_failures(fixtures, "sd15.safetensors");
    test_alloc_failures(fixtures, "sdxl.safetensors");

    test_malformed(fixtures, "sd15.safetensors",
                   "model.diffusion_model.input_blocks.4.0.in_layers.2.weight", NULL,
                   "down_blocks.1.resnets.0.conv1.weight");
    test_malformed(fixtures, "sd15.safetensors",
                   "model.diffusion_model.output_blocks.5.", NULL,
                   "up_blocks.1.resnets.2.");
    test_malformed(fixtures, "sd15.safetensors",
                   "model.diffusion_model.input_blocks.6.0.op.", NULL,
                   "input_blocks");
    test_malformed(fixtures, "sd15.safetensors",
                   "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k",
                   NULL, "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight");
    test_malformed(fixtures, "sdxl.safetensors",
                   "model.diffusion_model.input_blocks.8.1.transformer_blocks.1.",
                   NULL, "down_blocks.2.attentions.1.transformer_blocks.1.");
    test_malformed(fixtures, "sd15.safetensors",
                   "first_stage_model.decoder.up.2.upsample.conv.weight", NULL,
                   "decoder.up_blocks.1.upsamplers.0.conv.weight");
    test_malformed(fixtures, "sd15.safetensors",
                   "first_stage_model.encoder.mid.attn_1.v.", NULL,
                   "encoder.mid_block.attentions.0.to_v.");
    test_malformed(fixtures, "sdxl.safetensors",
                   "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_bias",
                   NULL, "text_model.encoder.layers.1.self_attn.q_proj.bias");
    test_malformed(fixtures, "sdxl-refiner.safetensors",
                   "conditioner.embedders.0.model.text_projection", NULL,
                   "text_projection.weight");
    test_malformed(fixtures, "sd15.safetensors",
                   "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc2.bias",
                   NULL, "text_model.encoder.layers.0.mlp.fc2.bias");
    test_malformed(fixtures, "sd15.safetensors", NULL,
                   "model.diffusion_model.input_blocks.1.0.in_layers.1.weight",
                   "input_blocks.1.0.in_layers.1.weight");
    test_malformed(fixtures, "sdxl.safetensors", NULL,
                   "first_stage_model.decoder.mid.attn_2.q.weight",
                   "decoder.mid.attn_2.q.weight");
  }
  unlink(tmp_path("sd1.safetensors"));
  static const char *const leaves[] = {
      "sd2.safetensors",   "xl.safetensors",      "ref.safetensors",
      "sd3.safetensors",   "unk.safetensors",     "unet4.safetensors",
      "unet3.safetensors", "bad_unet.safetensors", "rows.safetensors",
      "malformed.safetensors"};
  for (size_t i = 0; i < sizeof leaves / sizeof *leaves; i++) unlink(tmp_path(leaves[i]));
  rmdir(tmp_dir);

  int rc = test_finish();
  if (rc == 0 && !have_fixtures) {
    printf("SKIP: fixtures not found at %s (set SDGEN_FIXTURES); only the "
           "synthetic checks ran\n", fixtures);
    return 77;
  }
  return rc;
}
