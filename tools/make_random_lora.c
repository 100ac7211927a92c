/* Random-weight LoRA for a model folder, for benchmarks (bench/run_lora.sh).
 *
 * The modules are enumerated from the model's own weights (the diffusers
 * folder's unet/ and, on request, text_encoder/ and text_encoder_2/), so the
 * file fits whatever model the folder holds (full-size or tiny, SD 1.x/2.x
 * or SDXL). Two layouts:
 *   --format kohya  kohya / sd-scripts LoCon: `lora_unet_<path with _>`
 *                   `.lora_down.weight` / `.lora_up.weight` / `.alpha` on
 *                   every linear and convolution of the UNet's transformer
 *                   blocks, resnets, down- and upsamplers (plus, with
 *                   --text-encoder, the CLIP attention and MLP linears as
 *                   `lora_te_` / `lora_te1_` / `lora_te2_`). Linears and 1x1
 *                   convolutions get --rank / --alpha, the 3x3 convolutions
 *                   --conv-rank / --conv-alpha (sd-scripts' conv_dim /
 *                   conv_alpha; the defaults, rank/2 alpha, are common in
 *                   real files).
 *   --format peft   diffusers / PEFT, shaped like an LCM-LoRA
 *                   (latent-consistency/lcm-lora-sdv1-5): `unet.<path>`
 *                   `.lora_A.weight` / `.lora_B.weight`, no alpha (alpha =
 *                   rank), on the attention projections, feed-forwards,
 *                   proj_in/out, resnet convolutions and time projections,
 *                   down- and upsampler convolutions.
 * Weights: F16, deterministic from --seed and the key name; down ~ U(-a, a)
 * with a = 1/sqrt(fan_in), up ~ U(-0.01, 0.01): small deltas, like a
 * trained adapter (up is not zero, so the arithmetic is the real one).
 *
 * usage: make_random_lora --model DIR --out FILE.safetensors
 *          [--format kohya|peft] [--rank R] [--alpha A] [--conv-rank R]
 *          [--conv-alpha A] [--text-encoder] [--seed S] */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/status.h"
#include "io/safetensors.h"
#include "io/safetensors_stream.h"
#include "tensor/tensor.h"

typedef struct opts {
  const char *model, *out;
  int peft, rank, conv_rank, text_encoder;
  float alpha, conv_alpha;
  uint64_t seed;
} opts;

/* One tensor of the file: role 0 down, 1 up, 2 alpha. */
typedef struct lora_tensor {
  char *name;
  sd_stream_tensor st;
  int role;
  int64_t fan_in;
  float alpha;
} lora_tensor;

typedef struct lora_list {
  lora_tensor *t;
  int n, cap;
} lora_list;

static int ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcmp(s + a - b, suffix) == 0;
}

static int contains(const char *s, const char *part) { return strstr(s, part) != NULL; }

/* Does module `path` (a UNet weight without ".weight") get an adapter? */
static int unet_module(const char *path) {
  static const char *const attn_leaf[] = {
      ".to_q", ".to_k", ".to_v", ".to_out.0", ".ff.net.0.proj", ".ff.net.2", ".proj_in",
      ".proj_out"};
  static const char *const resnet_leaf[] = {".conv1", ".conv2", ".conv_shortcut",
                                            ".time_emb_proj"};
  if (contains(path, ".attentions.")) {
    for (size_t i = 0; i < sizeof attn_leaf / sizeof *attn_leaf; i++)
      if (ends_with(path, attn_leaf[i])) return 1;
    return 0;
  }
  if (contains(path, ".resnets.")) {
    for (size_t i = 0; i < sizeof resnet_leaf / sizeof *resnet_leaf; i++)
      if (ends_with(path, resnet_leaf[i])) return 1;
    return 0;
  }
  return ends_with(path, "samplers.0.conv");
}

static int te_module(const char *path) {
  static const char *const leaf[] = {".self_attn.q_proj", ".self_attn.k_proj",
                                     ".self_attn.v_proj", ".self_attn.out_proj", ".mlp.fc1",
                                     ".mlp.fc2"};
  if (!contains(path, "encoder.layers.")) return 0;
  for (size_t i = 0; i < sizeof leaf / sizeof *leaf; i++)
    if (ends_with(path, leaf[i])) return 1;
  return 0;
}

static int push(lora_list *l, const char *name, sd_dtype dt, int ndim, const int64_t *shape,
                int role, int64_t fan_in, float alpha) {
  if (l->n == l->cap) {
    int cap = l->cap ? 2 * l->cap : 256;
    lora_tensor *nt = realloc(l->t, sizeof *nt * (size_t)cap);
    if (!nt) return SD_ERR_OOM;
    l->t = nt;
    l->cap = cap;
  }
  lora_tensor *t = &l->t[l->n];
  memset(t, 0, sizeof *t);
  if (!(t->name = strdup(name))) return SD_ERR_OOM;
  t->st.dtype = dt;
  t->st.ndim = ndim;
  for (int i = 0; i < ndim; i++) t->st.shape[i] = shape[i];
  t->role = role;
  t->fan_in = fan_in;
  t->alpha = alpha;
  t->st.name = t->name;
  l->n++;
  return SD_OK;
}

/* Adds the tensors of every module of one component's weights. */
static int add_component(lora_list *l, const opts *o, const char *file, const char *kohya,
                         const char *peft, int unet, int *modules, sd_error *err) {
  sd_weights *w = NULL;
  int rc = sd_weights_open(&w, file, err);
  if (rc) return rc;
  for (int e = 0; e < sd_weights_count(w) && !rc; e++) {
    const char *name = sd_weights_name_at(w, e);
    const sd_tensor *W = sd_weights_tensor_at(w, e);
    char path[512], key[640];
    size_t len = strlen(name);
    if ((W->ndim != 2 && W->ndim != 4) || !ends_with(name, ".weight") || len >= sizeof path)
      continue;
    memcpy(path, name, len - 7);
    path[len - 7] = 0;
    if (unet ? !unet_module(path) : !te_module(path)) continue;
    int conv3 = W->ndim == 4 && (W->shape[2] != 1 || W->shape[3] != 1);
    int64_t r = conv3 ? o->conv_rank : o->rank;
    float alpha = conv3 ? o->conv_alpha : o->alpha;
    int64_t out = W->shape[0], fan_in = sd_tensor_numel(W) / out;
    int64_t dshape[4] = {r, W->shape[1], W->ndim == 4 ? W->shape[2] : 1,
                         W->ndim == 4 ? W->shape[3] : 1};
    int64_t ushape[4] = {out, r, 1, 1};
    const char *down_sfx = o->peft ? ".lora_A.weight" : ".lora_down.weight";
    const char *up_sfx = o->peft ? ".lora_B.weight" : ".lora_up.weight";
    if (o->peft) {
      snprintf(key, sizeof key, "%s%s", peft, path);
    } else {
      int k = snprintf(key, sizeof key, "%s%s", kohya, path);
      for (int i = (int)strlen(kohya); i < k; i++)
        if (key[i] == '.') key[i] = '_';
    }
    size_t kl = strlen(key);
    snprintf(key + kl, sizeof key - kl, "%s", down_sfx);
    rc = push(l, key, SD_F16, W->ndim, dshape, 0, fan_in, 0);
    snprintf(key + kl, sizeof key - kl, "%s", up_sfx);
    if (!rc) rc = push(l, key, SD_F16, W->ndim, ushape, 1, r, 0);
    if (!rc && !o->peft) {
      int64_t one = 1;
      snprintf(key + kl, sizeof key - kl, ".alpha");
      rc = push(l, key, SD_F16, 0, &one, 2, 0, alpha);
    }
    if (rc == SD_ERR_OOM) rc = sd_fail(err, SD_ERR_OOM, "out of memory");
    (*modules)++;
  }
  sd_weights_free(w);
  return rc;
}

static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

typedef struct fill_ctx {
  const lora_list *l;
  uint64_t seed;
} fill_ctx;

static int fill(void *user, int index, void *dst, size_t nbytes, sd_error *err) {
  (void)err;
  const fill_ctx *c = user;
  const lora_tensor *t = &c->l->t[index];
  uint16_t *h = dst;
  size_t n = nbytes / 2;
  if (t->role == 2) {
    h[0] = sd_f32_to_f16(t->alpha);
    return SD_OK;
  }
  uint64_t s = c->seed;
  for (const char *p = t->name; *p; p++) s = (s ^ (unsigned char)*p) * 0x100000001b3ull;
  float a = t->role == 0 ? 1.0f / sqrtf((float)t->fan_in) : 0.01f;
  for (size_t i = 0; i < n; i++) {
    double u = (double)(splitmix64(&s) >> 11) * (1.0 / 9007199254740992.0);
    h[i] = sd_f32_to_f16((float)((2.0 * u - 1.0) * a));
  }
  return SD_OK;
}

static int usage(void) {
  fprintf(stderr, "usage: make_random_lora --model DIR --out FILE.safetensors [--format "
                  "kohya|peft] [--rank R] [--alpha A] [--conv-rank R] [--conv-alpha A] "
                  "[--text-encoder] [--seed S]\n");
  return 2;
}

int main(int argc, char **argv) {
  opts o = {.rank = 64, .alpha = -1, .conv_rank = -1, .conv_alpha = -1, .seed = 1};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--text-encoder") == 0) {
      o.text_encoder = 1;
      continue;
    }
    if (!v) return usage();
    i++;
    if (strcmp(a, "--model") == 0) o.model = v;
    else if (strcmp(a, "--out") == 0) o.out = v;
    else if (strcmp(a, "--format") == 0 && (!strcmp(v, "kohya") || !strcmp(v, "peft")))
      o.peft = strcmp(v, "peft") == 0;
    else if (strcmp(a, "--rank") == 0) o.rank = atoi(v);
    else if (strcmp(a, "--alpha") == 0) o.alpha = strtof(v, NULL);
    else if (strcmp(a, "--conv-rank") == 0) o.conv_rank = atoi(v);
    else if (strcmp(a, "--conv-alpha") == 0) o.conv_alpha = strtof(v, NULL);
    else if (strcmp(a, "--seed") == 0) o.seed = strtoull(v, NULL, 10);
    else return usage();
  }
  if (!o.model || !o.out || o.rank < 1) return usage();
  if (o.alpha < 0) o.alpha = o.peft ? (float)o.rank : (float)o.rank / 2;
  if (o.conv_rank < 1) o.conv_rank = o.peft ? o.rank : (o.rank / 2 > 0 ? o.rank / 2 : 1);
  if (o.conv_alpha < 0) o.conv_alpha = o.peft ? (float)o.conv_rank : (float)o.conv_rank / 2;
  if (o.peft && (o.alpha != (float)o.rank || o.conv_alpha != (float)o.conv_rank)) {
    fprintf(stderr, "error: a PEFT file here has no alpha tensors (alpha = rank)\n");
    return 2;
  }

  sd_error err = {0};
  lora_list l = {0};
  int rc = SD_OK, unet_mods = 0, te_mods = 0;
  char file[4400];
  snprintf(file, sizeof file, "%s/unet/diffusion_pytorch_model.safetensors", o.model);
  rc = add_component(&l, &o, file, "lora_unet_", "unet.", 1, &unet_mods, &err);
  if (!rc && o.text_encoder) {
    char file2[4400];
    snprintf(file2, sizeof file2, "%s/text_encoder_2/model.safetensors", o.model);
    FILE *f2 = fopen(file2, "rb");
    int sdxl = f2 != NULL;
    if (f2) fclose(f2);
    snprintf(file, sizeof file, "%s/text_encoder/model.safetensors", o.model);
    rc = add_component(&l, &o, file, sdxl ? "lora_te1_" : "lora_te_", "text_encoder.", 0,
                       &te_mods, &err);
    if (!rc && sdxl)
      rc = add_component(&l, &o, file2, "lora_te2_", "text_encoder_2.", 0, &te_mods, &err);
  }
  if (!rc && l.n == 0) rc = sd_fail(&err, SD_ERR_FORMAT, "no LoRA-able module in %s", o.model);
  sd_stream_tensor *st = rc ? NULL : malloc(sizeof *st * (size_t)(l.n ? l.n : 1));
  if (!rc && !st) rc = sd_fail(&err, SD_ERR_OOM, "out of memory");
  int64_t bytes = 0;
  if (!rc) {
    for (int i = 0; i < l.n; i++) {
      st[i] = l.t[i].st;
      bytes += (int64_t)sd_stream_tensor_nbytes(&st[i]);
    }
    char meta[256];
    snprintf(meta, sizeof meta,
             "{\"sdgen_random_lora\":\"%s rank %d alpha %g conv rank %d alpha %g seed %llu\"}",
             o.peft ? "peft" : "kohya", o.rank, (double)o.alpha, o.conv_rank,
             (double)o.conv_alpha, (unsigned long long)o.seed);
    fill_ctx fc = {&l, o.seed};
    rc = sd_safetensors_write_stream(o.out, st, l.n, meta, fill, &fc, &err);
  }
  free(st);
  for (int i = 0; i < l.n; i++) free(l.t[i].name);
  free(l.t);
  if (rc) {
    fprintf(stderr, "error: %s\n", err.msg[0] ? err.msg : "cannot write the LoRA");
    return 1;
  }
  printf("wrote %s: %s, %d UNet + %d text-encoder modules, %d tensors, %.1f MB\n", o.out,
         o.peft ? "PEFT" : "kohya LoCon", unet_mods, te_mods, l.n, bytes / 1e6);
  return 0;
}
