/* The run's LoRAs: params->loras plus the prompt's <lora:NAME:SCALE> tags
 * (AUTOMATIC1111 syntax), resolved to files and checked before any model is
 * loaded. */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "io/hub.h"
#include "io/lora.h"
#include "io/model_dir.h"
#include "io/sha256.h"
#include "pipeline/generate_internal.h"

/* A LoRA value -> a file: an existing path; NAME or NAME.safetensors under
 * lora_dir; a hub name (ORG/NAME: the repo's pytorch_lora_weights.safetensors,
 * as diffusers saves it; ORG/NAME/file.safetensors: that file), from the
 * cache or downloaded. */
static int resolve_lora(const sdgen_params *p, const char *name, char *out, size_t n,
                        sd_error *err) {
  if (sd_is_file(name)) {
    snprintf(out, n, "%s", name);
    return SD_OK;
  }
  if (p->lora_dir) {
    static const char *const ext[] = {"", ".safetensors"};
    for (int i = 0; i < 2; i++) {
      char cand[4300];
      snprintf(cand, sizeof cand, "%s/%s%s", p->lora_dir, name, ext[i]);
      if (sd_is_file(cand) && strlen(cand) < n) {
        memcpy(out, cand, strlen(cand) + 1);
        return SD_OK;
      }
    }
  }
  char repo[512], file[1024], full[1600];
  sd_error perr = {0};
  if (sd_hub_parse_name(name, repo, sizeof repo, file, sizeof file, &perr))
    return sd_fail(err, SD_ERR_IO, "LoRA %s not found (not a file%s%s, nor a hub name)", name,
                   p->lora_dir ? " or a name in " : "", p->lora_dir ? p->lora_dir : "");
  snprintf(full, sizeof full, "%s/%s", repo, file[0] ? file : "pytorch_lora_weights.safetensors");
  sd_hub_options ho = sd_hub_default_options();
  ho.offline = p->offline;
  ho.progress = p->on_download;
  ho.user = p->user;
  return sd_hub_resolve(full, &ho, out, n, err);
}

/* A1111's LoRA hash (its "addnet" hash of a .safetensors file): SHA-256 of
 * the bytes after the header (so editing the metadata keeps it), the first
 * 12 hex digits. Left empty when the file cannot be read. */
static void lora_short_hash(const char *path, char out[13]) {
  out[0] = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return;
  unsigned char len8[8], buf[65536];
  uint64_t header = 0;
  if (fread(len8, 1, 8, f) == 8) {
    for (int i = 7; i >= 0; i--) header = header << 8 | len8[i];
    if (header < (1ull << 40) && fseeko(f, (off_t)(8 + header), SEEK_SET) == 0) {
      sd_sha256 h;
      sd_sha256_init(&h);
      size_t got;
      while ((got = fread(buf, 1, sizeof buf, f)) > 0) sd_sha256_update(&h, buf, got);
      if (!ferror(f)) {
        char hex[65];
        sd_sha256_final_hex(&h, hex);
        memcpy(out, hex, 12);
        out[12] = 0;
      }
    }
  }
  fclose(f);
}

static int add_lora(gen_run *r, const char *name, size_t name_len, float scale) {
  if (r->n_loras == GEN_MAX_LORAS)
    return sd_fail(r->err, SD_ERR_ARG, "too many LoRAs (at most %d)", GEN_MAX_LORAS);
  gen_lora *l = &r->loras[r->n_loras];
  if (name_len >= sizeof l->name)
    return sd_fail(r->err, SD_ERR_ARG, "LoRA name too long: %.40s...", name);
  memcpy(l->name, name, name_len);
  l->name[name_len] = 0;
  l->scale = scale;
  int rc = resolve_lora(r->p, l->name, l->path, sizeof l->path, r->err);
  if (rc) return rc;
  lora_short_hash(l->path, l->hash);
  r->lora_specs[r->n_loras].path = l->path;
  r->lora_specs[r->n_loras].scale = scale;
  r->n_loras++;
  return SD_OK;
}

/* Parses "<lora:NAME[:SCALE]>" at s (after "<lora:"); returns the length
 * up to and including '>' or 0 when malformed. */
static size_t parse_tag(const char *s, const char **name, size_t *name_len, float *scale) {
  const char *end = strchr(s, '>');
  if (!end) return 0;
  const char *colon = NULL;
  for (const char *q = s; q < end; q++)
    if (*q == ':') colon = q; /* the last ':' (a path may hold none; Windows drives aside) */
  *name = s;
  *scale = 1.0f;
  *name_len = (size_t)((colon ? colon : end) - s);
  if (colon) {
    char num[64];
    size_t k = (size_t)(end - colon - 1);
    if (k == 0 || k >= sizeof num) return 0;
    memcpy(num, colon + 1, k);
    num[k] = 0;
    char *e;
    *scale = strtof(num, &e);
    if (*e) return 0;
  }
  return *name_len ? (size_t)(end - s) + 1 : 0;
}

int gen_resolve_loras(gen_run *r) {
  const sdgen_params *p = r->p;
  int rc;
  for (int i = 0; i < p->n_loras; i++) {
    if (!p->loras || !p->loras[i].path)
      return sd_fail(r->err, SD_ERR_ARG, "LoRA %d has no path", i + 1);
    if ((rc = add_lora(r, p->loras[i].path, strlen(p->loras[i].path), p->loras[i].scale)))
      return rc;
  }
  /* the prompt without its tags (what the text encoders see) */
  size_t n = strlen(p->prompt);
  r->prompt = sd_alloc(n + 1);
  if (!r->prompt) return sd_fail(r->err, SD_ERR_OOM, "out of memory");
  size_t u = 0;
  for (size_t i = 0; i < n;) {
    if (strncmp(p->prompt + i, "<lora:", 6) == 0) {
      const char *name;
      size_t len, tag;
      float scale;
      if (!(tag = parse_tag(p->prompt + i + 6, &name, &len, &scale)))
        return sd_fail(r->err, SD_ERR_ARG, "malformed LoRA tag in the prompt: %.60s",
                       p->prompt + i);
      if ((rc = add_lora(r, name, len, scale))) return rc;
      i += 6 + tag;
      continue;
    }
    r->prompt[u++] = p->prompt[i++];
  }
  /* trim the blanks and the separators a removed tag leaves behind */
  while (u > 0 && (isspace((unsigned char)r->prompt[u - 1]) || r->prompt[u - 1] == ','))
    u--;
  r->prompt[u] = 0;
  size_t lead = 0;
  while (r->prompt[lead] && isspace((unsigned char)r->prompt[lead])) lead++;
  if (lead) memmove(r->prompt, r->prompt + lead, u - lead + 1);
  return SD_OK;
}

int gen_check_loras(gen_run *r, const char *family) {
  sd_lora_family want = strcmp(family, "sdxl") == 0           ? SD_LORA_FAMILY_SDXL
                        : strcmp(family, "sdxl-refiner") == 0 ? SD_LORA_FAMILY_SDXL_REFINER
                        : strcmp(family, "sd3") == 0          ? SD_LORA_FAMILY_SD3
                                                              : SD_LORA_FAMILY_SD1;
  for (int i = 0; i < r->n_loras; i++) {
    sd_lora *l = NULL;
    int rc = sd_lora_open(&l, r->loras[i].path, r->err);
    if (rc) return rc;
    sd_lora_family f = sd_lora_file_family(l);
    sd_lora_free(l);
    int ok = f == SD_LORA_FAMILY_ANY ? want != SD_LORA_FAMILY_SD3 : f == want;
    if (family[0] && !ok)
      return sd_fail(r->err, SD_ERR_ARG, "LoRA %s is for %s, the model is %s", r->loras[i].path,
                     sd_lora_family_name(f), sd_lora_family_name(want));
  }
  return SD_OK;
}

void gen_free_loras(gen_run *r) {
  sd_free(r->prompt);
  r->prompt = NULL;
}
