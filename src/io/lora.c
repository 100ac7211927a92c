/* LoRA files and their binding to model weights (io/lora.h). */
#include "io/lora.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "io/residency.h"
#include "tensor/lowrank.h"

const char *sd_lora_family_name(sd_lora_family f) {
  switch (f) {
  case SD_LORA_FAMILY_ANY: return "a UNet model";
  case SD_LORA_FAMILY_SD1: return "SD 1.x/2.x";
  case SD_LORA_FAMILY_SDXL: return "SDXL";
  case SD_LORA_FAMILY_SDXL_REFINER: return "the SDXL refiner";
  case SD_LORA_FAMILY_SD3: return "SD 3";
  }
  return "?";
}

/* ---- the file ---- */

typedef struct lora_module {
  char *name;               /* key without its suffix, as in the file */
  const char *first_key;    /* a key of the module, for messages */
  const sd_tensor *down, *up, *alpha;
  int matched;
} lora_module;

struct sd_lora {
  char *path;
  sd_weights *w;
  lora_module *mod; /* sorted by name */
  int nmod;
  sd_lora_family family;
};

/* Suffixes of the tensors a module has: role 0 down, 1 up, 2 alpha. */
static const struct {
  const char *suffix;
  int role;
} k_suffixes[] = {
    {".lora_down.weight", 0}, {".lora_up.weight", 1}, {".lora_A.weight", 0},
    {".lora_B.weight", 1},    {".lora.down.weight", 0}, {".lora.up.weight", 1},
    {".alpha", 2},
};

/* Prefixes of the module names and the family they imply. */
static const struct {
  const char *prefix;
  sd_lora_family family;
} k_prefixes[] = {
    {"lora_unet_", SD_LORA_FAMILY_ANY},  {"lora_te_", SD_LORA_FAMILY_SD1},
    {"lora_te1_", SD_LORA_FAMILY_SDXL},  {"lora_te2_", SD_LORA_FAMILY_SDXL},
    {"unet.", SD_LORA_FAMILY_ANY},       {"text_encoder.", SD_LORA_FAMILY_ANY},
    {"text_encoder_2.", SD_LORA_FAMILY_SDXL}, {"transformer.", SD_LORA_FAMILY_SD3},
};

#define COUNT(a) ((int)(sizeof(a) / sizeof *(a)))

static int ends_with(const char *s, const char *suffix, size_t *stem) {
  size_t a = strlen(s), b = strlen(suffix);
  if (a <= b || strcmp(s + a - b, suffix) != 0) return 0;
  *stem = a - b;
  return 1;
}

static int cmp_module(const void *a, const void *b) {
  return strcmp(((const lora_module *)a)->name, ((const lora_module *)b)->name);
}

static lora_module *find_module(const sd_lora *l, const char *name) {
  lora_module key = {.name = (char *)name};
  return bsearch(&key, l->mod, (size_t)l->nmod, sizeof key, cmp_module);
}

void sd_lora_free(sd_lora *l) {
  if (!l) return;
  for (int i = 0; i < l->nmod; i++) sd_free(l->mod[i].name);
  sd_free(l->mod);
  sd_weights_free(l->w);
  sd_free(l->path);
  sd_free(l);
}

sd_lora_family sd_lora_file_family(const sd_lora *l) { return l->family; }
int sd_lora_module_count(const sd_lora *l) { return l->nmod; }
const char *sd_lora_path(const sd_lora *l) { return l->path; }

static int is_float(const sd_tensor *t) {
  return t->dtype == SD_F32 || t->dtype == SD_F16 || t->dtype == SD_BF16;
}

/* Checks one module's tensors (shapes only). */
static int check_module(const sd_lora *l, const lora_module *m, sd_error *err) {
  const char *f = l->path;
  if (!m->down || !m->up)
    return sd_fail(err, SD_ERR_FORMAT, "LoRA %s: module '%s' has no %s tensor", f, m->name,
                   m->down ? "up (lora_up / lora_B)" : "down (lora_down / lora_A)");
  const sd_tensor *d = m->down, *u = m->up;
  if (!is_float(d) || !is_float(u) || (m->alpha && !is_float(m->alpha)))
    return sd_fail(err, SD_ERR_FORMAT, "LoRA %s: module '%s' is not F32/F16/BF16", f, m->name);
  if ((d->ndim != 2 && d->ndim != 4) || (u->ndim != 2 && u->ndim != 4) ||
      (u->ndim == 4 && (u->shape[2] != 1 || u->shape[3] != 1)) || d->shape[0] < 1)
    return sd_fail(err, SD_ERR_FORMAT, "LoRA %s: module '%s' has unusable shapes", f, m->name);
  if (u->shape[1] != d->shape[0])
    return sd_fail(err, SD_ERR_FORMAT,
                   "LoRA %s: rank mismatch in '%s': down has rank %lld, up has %lld", f,
                   m->name, (long long)d->shape[0], (long long)u->shape[1]);
  if (m->alpha && sd_tensor_numel(m->alpha) != 1)
    return sd_fail(err, SD_ERR_FORMAT, "LoRA %s: alpha of '%s' is not a scalar", f, m->name);
  return SD_OK;
}

int sd_lora_open(sd_lora **out, const char *path, sd_error *err) {
  *out = NULL;
  sd_lora *l = sd_calloc(1, sizeof *l);
  if (!l || !(l->path = sd_strdup(path))) {
    sd_free(l);
    return sd_fail(err, SD_ERR_OOM, "out of memory");
  }
  int rc = sd_weights_open(&l->w, path, err);
  if (rc) {
    sd_lora_free(l);
    return rc;
  }
  int n = sd_weights_count(l->w);
  if (n == 0) {
    sd_lora_free(l);
    return sd_fail(err, SD_ERR_FORMAT, "LoRA %s holds no tensors", path);
  }
  /* one module per key at most; collapsed after sorting */
  l->mod = sd_calloc((size_t)n, sizeof *l->mod);
  if (!l->mod) {
    sd_lora_free(l);
    return sd_fail(err, SD_ERR_OOM, "out of memory");
  }
  int kohya = 0, peft = 0, sgm = 0, any_family_set = 0;
  sd_lora_family fam = SD_LORA_FAMILY_ANY;
  for (int i = 0; i < n; i++) {
    const char *key = sd_weights_name_at(l->w, i);
    size_t stem = 0;
    int role = -1, p = -1;
    for (int s = 0; s < COUNT(k_suffixes) && role < 0; s++)
      if (ends_with(key, k_suffixes[s].suffix, &stem)) role = k_suffixes[s].role;
    for (int q = 0; q < COUNT(k_prefixes) && role >= 0 && p < 0; q++)
      if (strncmp(key, k_prefixes[q].prefix, strlen(k_prefixes[q].prefix)) == 0) p = q;
    if (role < 0 || p < 0) { /* key lives in l->w: the message first */
      rc = sd_fail(err, SD_ERR_FORMAT,
                   "LoRA %s: unknown key '%s' (not a kohya or diffusers/PEFT LoRA tensor)",
                   path, key);
      sd_lora_free(l);
      return rc;
    }
    if (key[0] == 'l') kohya = 1; else peft = 1;
    if (k_prefixes[p].family != SD_LORA_FAMILY_ANY) {
      if (any_family_set && fam != k_prefixes[p].family) {
        sd_lora_free(l);
        return sd_fail(err, SD_ERR_FORMAT, "LoRA %s mixes keys of %s and %s models", path,
                       sd_lora_family_name(fam), sd_lora_family_name(k_prefixes[p].family));
      }
      fam = k_prefixes[p].family;
      any_family_set = 1;
    }
    if (strncmp(key, "lora_unet_", 10) == 0 &&
        (strstr(key, "input_blocks_") || strstr(key, "output_blocks_") ||
         strstr(key, "middle_block_")))
      sgm = 1;
    lora_module *m = &l->mod[l->nmod];
    if (!(m->name = sd_alloc(stem + 1))) {
      sd_lora_free(l);
      return sd_fail(err, SD_ERR_OOM, "out of memory");
    }
    memcpy(m->name, key, stem);
    m->name[stem] = 0;
    m->first_key = key;
    const sd_tensor *t = sd_weights_tensor_at(l->w, i);
    if (role == 0) m->down = t; else if (role == 1) m->up = t; else m->alpha = t;
    l->nmod++;
  }
  (void)kohya;
  (void)peft;
  qsort(l->mod, (size_t)l->nmod, sizeof *l->mod, cmp_module);
  int k = 0;
  for (int i = 0; i < l->nmod; i++) { /* merge the entries of one module */
    lora_module *m = &l->mod[i];
    if (k > 0 && strcmp(l->mod[k - 1].name, m->name) == 0) {
      lora_module *d = &l->mod[k - 1];
      const sd_tensor *add[3] = {m->down, m->up, m->alpha};
      const sd_tensor **slot[3] = {&d->down, &d->up, &d->alpha};
      for (int r = 0; r < 3; r++) {
        if (!add[r]) continue;
        if (*slot[r]) {
          sd_free(m->name);
          for (int j = i + 1; j < l->nmod; j++) sd_free(l->mod[j].name);
          l->nmod = k;
          sd_lora_free(l);
          return sd_fail(err, SD_ERR_FORMAT, "LoRA %s: module has two %s tensors", path,
                         r == 0 ? "down" : r == 1 ? "up" : "alpha");
        }
        *slot[r] = add[r];
      }
      sd_free(m->name);
    } else {
      l->mod[k++] = *m;
    }
  }
  l->nmod = k;
  for (int i = 0; i < l->nmod; i++)
    if ((rc = check_module(l, &l->mod[i], err))) {
      sd_lora_free(l);
      return rc;
    }
  if (sgm && fam == SD_LORA_FAMILY_ANY) fam = SD_LORA_FAMILY_SDXL;
  l->family = fam;
  *out = l;
  return SD_OK;
}

/* ---- SGM names of a UNet's modules ---- */

static const char *const k_resnet_sgm[][2] = {
    {"conv1", "in_layers.2"},        {"conv2", "out_layers.3"},
    {"time_emb_proj", "emb_layers.1"}, {"conv_shortcut", "skip_connection"},
    {"norm1", "in_layers.0"},        {"norm2", "out_layers.0"},
};

static int resnet_sgm(const char *rest, char *out, size_t n, const char *block) {
  for (int i = 0; i < COUNT(k_resnet_sgm); i++) {
    size_t k = strlen(k_resnet_sgm[i][0]);
    if (strncmp(rest, k_resnet_sgm[i][0], k) == 0 && (rest[k] == 0 || rest[k] == '.'))
      return snprintf(out, n, "%s%s%s", block, k_resnet_sgm[i][1], rest + k) < (int)n;
  }
  return 0;
}

int sd_unet_sgm_path(const char *path, int lpb, const int *up_attn, char *out, size_t n) {
  static const char *const top[][2] = {
      {"time_embedding.linear_1", "time_embed.0"}, {"time_embedding.linear_2", "time_embed.2"},
      {"add_embedding.linear_1", "label_emb.0.0"}, {"add_embedding.linear_2", "label_emb.0.2"},
      {"conv_in", "input_blocks.0.0"},            {"conv_out", "out.2"},
      {"conv_norm_out", "out.0"},
  };
  for (int i = 0; i < COUNT(top); i++)
    if (strcmp(path, top[i][0]) == 0) return snprintf(out, n, "%s", top[i][1]) < (int)n;
  int lvl, j, used = 0;
  char block[96];
  if (sscanf(path, "down_blocks.%d.resnets.%d.%n", &lvl, &j, &used) == 2 && used) {
    snprintf(block, sizeof block, "input_blocks.%d.0.", 1 + lvl * (lpb + 1) + j);
    return resnet_sgm(path + used, out, n, block);
  }
  if (sscanf(path, "down_blocks.%d.attentions.%d.%n", &lvl, &j, &used) == 2 && used)
    return snprintf(out, n, "input_blocks.%d.1.%s", 1 + lvl * (lpb + 1) + j, path + used) <
           (int)n;
  if (sscanf(path, "down_blocks.%d.downsamplers.0.conv%n", &lvl, &used) == 1 && used &&
      !path[used])
    return snprintf(out, n, "input_blocks.%d.0.op", (lvl + 1) * (lpb + 1)) < (int)n;
  if (sscanf(path, "mid_block.resnets.%d.%n", &j, &used) == 1 && used) {
    snprintf(block, sizeof block, "middle_block.%d.", 2 * j);
    return resnet_sgm(path + used, out, n, block);
  }
  if (sscanf(path, "mid_block.attentions.0.%n", &used) == 0 && used)
    return snprintf(out, n, "middle_block.1.%s", path + used) < (int)n;
  if (sscanf(path, "up_blocks.%d.resnets.%d.%n", &lvl, &j, &used) == 2 && used) {
    snprintf(block, sizeof block, "output_blocks.%d.0.", lvl * (lpb + 1) + j);
    return resnet_sgm(path + used, out, n, block);
  }
  if (sscanf(path, "up_blocks.%d.attentions.%d.%n", &lvl, &j, &used) == 2 && used)
    return snprintf(out, n, "output_blocks.%d.1.%s", lvl * (lpb + 1) + j, path + used) < (int)n;
  if (sscanf(path, "up_blocks.%d.upsamplers.0.conv%n", &lvl, &used) == 1 && used &&
      !path[used] && lvl >= 0 && lvl < 16)
    return snprintf(out, n, "output_blocks.%d.%d.conv", lvl * (lpb + 1) + lpb,
                    up_attn[lvl] ? 2 : 1) < (int)n;
  return 0;
}

/* ---- binding ---- */

typedef struct touched {
  int target;
  const sd_weights *w; /* NULL once forgotten */
  char *name;          /* weight name in the set */
  sd_lowrank *terms;   /* the list the entry gets */
  int64_t stored_bytes, f32_bytes, side_bytes;
  int merged;
} touched;

struct sd_adapter {
  sd_lora **loras;
  int nloras;
  sd_adapter_target targets[SD_LORA_TARGETS];
  int ntargets;
  touched *t;
  int nt;
  int merged;
};

void sd_adapter_free(sd_adapter *a) {
  if (!a) return;
  for (int i = 0; i < a->nt; i++) {
    sd_free(a->t[i].name);
    for (sd_lowrank *s = a->t[i].terms; s;) {
      sd_lowrank *next = (sd_lowrank *)s->next;
      sd_free(s);
      s = next;
    }
  }
  sd_free(a->t);
  for (int i = 0; i < a->nloras; i++) sd_lora_free(a->loras[i]);
  sd_free(a->loras);
  sd_free(a);
}

/* The names a LoRA gives module `path` (dots) of a target: kohya with '_'
 * for '.', PEFT as is. SDXL UNets also by their SGM path. */
static int candidates(sd_lora_target_kind kind, sd_lora_family fam, const char *path,
                      int lpb, const int *up_attn, char out[][512]) {
  int n = 0;
  char sgm[400];
  const char *kohya = NULL, *peft = NULL;
  switch (kind) {
  case SD_LORA_UNET: kohya = "lora_unet_"; peft = "unet."; break;
  case SD_LORA_TE1: kohya = fam == SD_LORA_FAMILY_SD1 ? "lora_te_" : "lora_te1_";
    peft = "text_encoder."; break;
  case SD_LORA_TE2: kohya = "lora_te2_"; peft = "text_encoder_2."; break;
  case SD_LORA_TRANSFORMER: peft = "transformer."; break;
  default: return 0;
  }
  if (strlen(path) > 400) return 0;
  snprintf(out[n++], 512, "%s%s", peft, path);
  if (kohya) {
    int k = snprintf(out[n], 512, "%s%s", kohya, path);
    for (int i = (int)strlen(kohya); i < k; i++)
      if (out[n][i] == '.') out[n][i] = '_';
    n++;
    if (kind == SD_LORA_UNET && fam != SD_LORA_FAMILY_SD1 &&
        sd_unet_sgm_path(path, lpb, up_attn, sgm, sizeof sgm)) {
      k = snprintf(out[n], 512, "lora_unet_%s", sgm);
      for (int i = 10; i < k; i++)
        if (out[n][i] == '.') out[n][i] = '_';
      n++;
    }
  }
  return n;
}

/* Shapes of `m` against the weight W it targets; fills the term's views. */
static int fit_term(const sd_lora *l, const lora_module *m, const sd_tensor *W, const char *wname,
                    sd_lowrank *t, sd_error *err) {
  int64_t out = W->shape[0], cols = sd_tensor_numel(W) / (out ? out : 1);
  int64_t r = m->down->shape[0];
  int conv_k = W->ndim == 4 && (W->shape[2] != 1 || W->shape[3] != 1);
  int ok = m->up->shape[0] == out && sd_tensor_numel(m->up) == out * r &&
           sd_tensor_numel(m->down) == r * cols && m->down->shape[1] == W->shape[1];
  if (conv_k) ok = ok && m->down->ndim == 4 && m->down->shape[2] == W->shape[2] &&
                   m->down->shape[3] == W->shape[3];
  if (!ok) {
    char a[64], b[64], c[64];
    return sd_fail(err, SD_ERR_FORMAT,
                   "LoRA %s: module '%s' (down %s, up %s) does not fit '%s' %s (a LoRA for "
                   "another model?)",
                   l->path, m->name, sd_tensor_shape_str(m->down, a, sizeof a),
                   sd_tensor_shape_str(m->up, b, sizeof b), wname,
                   sd_tensor_shape_str(W, c, sizeof c));
  }
  t->down = *m->down;
  t->up = *m->up;
  t->down.side = t->up.side = NULL;
  if (W->ndim == 4) { /* applied as a convolution: (r, in, kh, kw) */
    t->down.ndim = 4;
    t->down.shape[0] = r;
    t->down.shape[1] = W->shape[1];
    t->down.shape[2] = W->shape[2];
    t->down.shape[3] = W->shape[3];
  } else {
    t->down.ndim = 2;
    t->down.shape[0] = r;
    t->down.shape[1] = cols;
  }
  t->up.ndim = 2;
  t->up.shape[0] = out;
  t->up.shape[1] = r;
  return SD_OK;
}

static int all_finite(const sd_tensor *t) {
  float buf[4096];
  int64_t n = sd_tensor_numel(t);
  for (int64_t o = 0; o < n; o += 4096) {
    int64_t c = n - o < 4096 ? n - o : 4096;
    sd_tensor_read_f32(t, o, c, buf);
    for (int64_t i = 0; i < c; i++)
      if (!isfinite(buf[i])) return 0;
  }
  return 1;
}

/* Binds one file to the targets: appends terms to a->t. */
static int bind_one(sd_adapter *a, int li, float scale, int **slot_of, sd_lora_family family,
                    sd_error *err) {
  sd_lora *l = a->loras[li];
  for (int ti = 0; ti < a->ntargets; ti++) {
    const sd_adapter_target *tg = &a->targets[ti];
    const sd_weights *w = tg->w;
    int lpb = 0, up_attn[16] = {0};
    if (tg->kind == SD_LORA_UNET) {
      while (sd_weights_getf(w, "down_blocks.0.resnets.%d.conv1.weight", lpb)) lpb++;
      for (int i = 0; i < 16; i++)
        up_attn[i] = sd_weights_getf(w, "up_blocks.%d.attentions.0.proj_in.weight", i) != NULL;
    }
    char cand[3][512], path[512];
    for (int e = 0; e < sd_weights_count(w); e++) {
      const char *name = sd_weights_name_at(w, e);
      const sd_tensor *W = sd_weights_tensor_at(w, e);
      size_t len = strlen(name);
      if ((W->ndim != 2 && W->ndim != 4) || len < 8 || len >= sizeof path ||
          strcmp(name + len - 7, ".weight") != 0)
        continue;
      memcpy(path, name, len - 7);
      path[len - 7] = 0;
      int nc = candidates(tg->kind, family, path, lpb, up_attn, cand);
      for (int c = 0; c < nc; c++) {
        lora_module *m = find_module(l, cand[c]);
        if (!m) continue;
        if (m->matched)
          return sd_fail(err, SD_ERR_FORMAT, "LoRA %s: module '%s' matches two layers", l->path,
                         m->name);
        m->matched = 1;
        sd_lowrank *term = sd_calloc(1, sizeof *term);
        if (!term) return sd_fail(err, SD_ERR_OOM, "out of memory");
        int rc = fit_term(l, m, W, name, term, err);
        if (rc) {
          sd_free(term);
          return rc;
        }
        float alpha = m->alpha ? 0.0f : (float)term->down.shape[0];
        if (m->alpha) sd_tensor_read_f32(m->alpha, 0, 1, &alpha);
        term->scale = scale * alpha / (float)term->down.shape[0];
        int k = slot_of[ti][e];
        if (k < 0) { /* first term on this weight */
          k = slot_of[ti][e] = a->nt++;
          touched *t = &a->t[k];
          memset(t, 0, sizeof *t);
          t->target = ti;
          t->w = w;
          if (!(t->name = sd_strdup(name))) {
            sd_free(term);
            return sd_fail(err, SD_ERR_OOM, "out of memory");
          }
          t->stored_bytes = (int64_t)sd_tensor_nbytes(W);
          t->f32_bytes = 4 * sd_tensor_numel(W);
        }
        touched *t = &a->t[k];
        sd_lowrank **tail = &t->terms; /* in file order: deltas add */
        while (*tail) tail = (sd_lowrank **)&(*tail)->next;
        *tail = term;
        t->side_bytes += (int64_t)(sd_tensor_nbytes(&term->down) + sd_tensor_nbytes(&term->up));
      }
    }
  }
  for (int i = 0; i < l->nmod; i++)
    if (!l->mod[i].matched)
      return sd_fail(err, SD_ERR_FORMAT, "LoRA %s: key '%s' maps to no layer of the model",
                     l->path, l->mod[i].first_key);
  for (int i = 0; i < l->nmod; i++) {
    const lora_module *m = &l->mod[i];
    if (!all_finite(m->down) || !all_finite(m->up) || (m->alpha && !all_finite(m->alpha)))
      return sd_fail(err, SD_ERR_FORMAT, "LoRA %s: module '%s' holds NaN or Inf values", l->path,
                     m->name);
  }
  return SD_OK;
}

static int family_fits(sd_lora_family file, sd_lora_family model) {
  if (file == SD_LORA_FAMILY_ANY) return model != SD_LORA_FAMILY_SD3;
  return file == model;
}

int sd_adapter_bind(sd_adapter **out, sd_lora **loras, const float *scales, int n,
                    const sd_adapter_target *targets, int ntargets, sd_lora_family family,
                    sd_error *err) {
  *out = NULL;
  int rc = SD_OK;
  sd_adapter *a = sd_calloc(1, sizeof *a);
  if (a) a->loras = sd_calloc((size_t)(n > 0 ? n : 1), sizeof *a->loras);
  if (!a || !a->loras) {
    for (int i = 0; i < n; i++) sd_lora_free(loras[i]);
    if (a) sd_free(a);
    return sd_fail(err, SD_ERR_OOM, "out of memory");
  }
  for (int i = 0; i < n; i++) a->loras[i] = loras[i];
  a->nloras = n;
  if (ntargets > SD_LORA_TARGETS) ntargets = SD_LORA_TARGETS;
  int64_t weights = 0;
  for (int i = 0; i < ntargets; i++)
    if (targets[i].w) {
      a->targets[a->ntargets++] = targets[i];
      weights += sd_weights_count(targets[i].w);
    }
  /* refused before any weight is read: the names say which family */
  for (int i = 0; i < n; i++) {
    sd_lora_family f = sd_lora_file_family(loras[i]);
    if (!family_fits(f, family)) {
      rc = sd_fail(err, SD_ERR_ARG, "LoRA %s is for %s, the model is %s", sd_lora_path(loras[i]),
                   sd_lora_family_name(f), sd_lora_family_name(family));
      goto fail;
    }
  }
  int **slot_of = sd_calloc((size_t)(a->ntargets ? a->ntargets : 1), sizeof *slot_of);
  a->t = sd_calloc((size_t)(weights ? weights : 1), sizeof *a->t);
  if (!slot_of || !a->t) {
    sd_free(slot_of);
    rc = sd_fail(err, SD_ERR_OOM, "out of memory");
    goto fail;
  }
  for (int i = 0; i < a->ntargets && !rc; i++) {
    int c = sd_weights_count(a->targets[i].w);
    if (!(slot_of[i] = sd_alloc(sizeof(int) * (size_t)(c ? c : 1))))
      rc = sd_fail(err, SD_ERR_OOM, "out of memory");
    else
      for (int k = 0; k < c; k++) slot_of[i][k] = -1;
  }
  for (int i = 0; i < n && !rc; i++) rc = bind_one(a, i, scales ? scales[i] : 1.0f, slot_of, family, err);
  for (int i = 0; i < a->ntargets; i++) sd_free(slot_of[i]);
  sd_free(slot_of);
  if (rc) goto fail;
  *out = a;
  return SD_OK;
fail:
  sd_adapter_free(a);
  return rc;
}

int sd_adapter_attach_side(sd_adapter *a, sd_error *err) {
  for (int i = 0; i < a->nt; i++) {
    touched *t = &a->t[i];
    if (!t->w) continue;
    int rc = sd_weights_set_side((sd_weights *)t->w, t->name, t->terms, err);
    if (rc) return rc;
  }
  return SD_OK;
}

int sd_adapter_merge(sd_adapter *a, sd_lora_target_kind kind, sd_error *err) {
  for (int i = 0; i < a->nt; i++) {
    touched *t = &a->t[i];
    if (!t->w || t->merged || (kind != SD_LORA_TARGETS && a->targets[t->target].kind != kind))
      continue;
    const sd_tensor *W = sd_weights_get(t->w, t->name);
    if (!W) return sd_fail(err, SD_ERR_ARG, "LoRA: weight '%s' vanished", t->name);
    sd_tensor *m = sd_tensor_new(W->ndim, W->shape);
    if (!m) return sd_fail(err, SD_ERR_OOM, "out of memory merging LoRA weights");
    int64_t out = W->shape[0], cols = sd_tensor_numel(W) / out;
    sd_tensor_read_f32(W, 0, out * cols, sd_f32(m));
    int rc = sd_lowrank_merge(sd_f32(m), out, cols, t->terms);
    if (rc) {
      sd_tensor_free(m);
      return sd_fail(err, rc, "out of memory merging LoRA weights");
    }
    sd_tensor_release_pages(W); /* the stored weight is not read again */
    if ((rc = sd_weights_replace_owned((sd_weights *)t->w, t->name, m, err))) return rc;
    t->merged = 1;
  }
  a->merged = 1;
  return SD_OK;
}

void sd_adapter_forget(sd_adapter *a, const sd_weights *w) {
  if (!a || !w) return;
  for (int i = 0; i < a->nt; i++)
    if (a->t[i].w == w) a->t[i].w = NULL;
}

static int kind_of(const sd_adapter *a, const touched *t) { return a->targets[t->target].kind; }

int64_t sd_adapter_side_bytes(const sd_adapter *a, sd_lora_target_kind kind) {
  int64_t b = 0;
  for (int i = 0; a && i < a->nt; i++)
    if (kind_of(a, &a->t[i]) == (int)kind) b += a->t[i].side_bytes;
  return b;
}

int64_t sd_adapter_merge_extra_bytes(const sd_adapter *a, sd_lora_target_kind kind) {
  int64_t b = 0;
  for (int i = 0; a && i < a->nt; i++)
    if (kind_of(a, &a->t[i]) == (int)kind) b += a->t[i].f32_bytes - a->t[i].stored_bytes;
  return b;
}

int sd_adapter_touched(const sd_adapter *a, sd_lora_target_kind kind) {
  int n = 0;
  for (int i = 0; a && i < a->nt; i++) n += kind_of(a, &a->t[i]) == (int)kind;
  return n;
}

int64_t sd_adapter_side_scratch_bytes(const sd_adapter *a, sd_lora_target_kind kind,
                                      int64_t rows) {
  int64_t best = 0;
  for (int i = 0; a && i < a->nt; i++) {
    if (kind_of(a, &a->t[i]) != (int)kind) continue;
    for (const sd_lowrank *s = a->t[i].terms; s; s = s->next) {
      int64_t b = 4 * sd_lowrank_rank(s) * (rows + s->up.shape[0]);
      if (b > best) best = b;
    }
  }
  return best;
}

int sd_adapter_is_merged(const sd_adapter *a) { return a && a->merged; }

int sd_adapter_load(sd_adapter **out, const sd_lora_spec *specs, int n,
                    const sd_adapter_target *targets, int ntargets, sd_lora_family family,
                    sd_error *err) {
  *out = NULL;
  if (n <= 0) return SD_OK;
  sd_lora **l = sd_calloc((size_t)n, sizeof *l);
  float *scales = sd_alloc(sizeof(float) * (size_t)n);
  int rc = l && scales ? SD_OK : sd_fail(err, SD_ERR_OOM, "out of memory");
  for (int i = 0; i < n && !rc; i++) {
    rc = sd_lora_open(&l[i], specs[i].path, err);
    scales[i] = specs[i].scale;
  }
  if (!rc) {
    rc = sd_adapter_bind(out, l, scales, n, targets, ntargets, family, err);
  } else {
    for (int i = 0; l && i < n; i++) sd_lora_free(l[i]);
  }
  sd_free(l);
  sd_free(scales);
  return rc;
}
