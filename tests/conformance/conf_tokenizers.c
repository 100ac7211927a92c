/* Tokenizer conformance: tokenizers/golden_clip.json (both CLIP padding
 * conventions) and tokenizers/golden_t5.json, every case the JSON lists. */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "base/alloc.h"
#include "conformance.h"
#include "io/json.h"
#include "text/clip_tokenizer.h"
#include "text/t5_tokenizer.h"

static double clock_ms(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Load times are reported as wall and CPU time: on a busy machine the wall
 * time mostly measures waiting. */
static double now_ms(void) {
  return clock_ms(CLOCK_MONOTONIC);
}
static double cpu_ms(void) {
  return clock_ms(CLOCK_PROCESS_CPUTIME_ID);
}

static int path_exists(const char *p) {
  struct stat st;
  return stat(p, &st) == 0;
}

/* Compares got[0..n) with a JSON int array; on mismatch writes where. */
static int ids_equal(const int32_t *got, int n, const cJSON *want, char *why, size_t why_n) {
  int wn = cJSON_GetArraySize(want);
  int i = 0;
  for (const cJSON *it = want ? want->child : NULL; it && i < n; it = it->next, i++) {
    if (!cJSON_IsNumber(it) || got[i] != (int32_t)it->valuedouble) {
      snprintf(why, why_n, "id %d: got %d, want %d", i, got[i],
               cJSON_IsNumber(it) ? (int)it->valuedouble : -1);
      return 0;
    }
  }
  if (wn != n) {
    snprintf(why, why_n, "%d ids, want %d", n, wn);
    return 0;
  }
  return 1;
}

/* Loads the CLIP tokenizer of one padding convention from the shared folder:
 * the suffixed configs where present (tokenizers/clip/ layout), else the
 * folder's own configs, else the given pad id. */
static int load_clip(const char *clip_dir, const char *suffix, int pad_id, sd_clip_tokenizer **tok,
                     sd_error *err) {
  char cfg[4096];
  snprintf(cfg, sizeof cfg, "%s/tokenizer_config%s.json", clip_dir, suffix);
  if (path_exists(cfg)) return sd_clip_tokenizer_load_dir_suffix(tok, clip_dir, suffix, err);
  char vocab[4096], merges[4096];
  snprintf(vocab, sizeof vocab, "%s/vocab.json", clip_dir);
  snprintf(merges, sizeof merges, "%s/merges.txt", clip_dir);
  return sd_clip_tokenizer_load(tok, vocab, merges, pad_id, 77, err);
}

static void check_clip_case(conf_ctx *c, const char *id, const sd_clip_tokenizer *tok,
                            const char *prompt, const cJSON *want_bpe, const cJSON *want_ids) {
  if (!conf_wants(c, id)) return;
  if (!cJSON_IsArray(want_bpe) || !cJSON_IsArray(want_ids)) {
    conf_result(c, id, 0, "case lacks its id arrays");
    return;
  }
  sd_error err = {0};
  int32_t *raw = NULL;
  int n_raw = 0;
  if (sd_clip_tokenize_raw(tok, prompt, &raw, &n_raw, &err)) {
    conf_result(c, id, 0, "%s", err.msg);
    return;
  }
  char why[160];
  int ok = ids_equal(raw, n_raw, want_bpe, why, sizeof why);
  sd_free(raw);
  if (!ok) {
    conf_result(c, id, 0, "bpe ids: %s", why);
    return;
  }
  int max_len = sd_clip_tokenizer_max_len(tok);
  int32_t ids[4096];
  if (cJSON_GetArraySize(want_ids) != max_len) {
    conf_result(c, id, 0, "golden has %d input ids, tokenizer pads to %d",
                cJSON_GetArraySize(want_ids), max_len);
    return;
  }
  if (max_len > 4096 || sd_clip_tokenize(tok, prompt, ids, &err)) {
    conf_result(c, id, 0, "%s", err.msg[0] ? err.msg : "max length too large");
    return;
  }
  ok = ids_equal(ids, max_len, want_ids, why, sizeof why);
  if (ok)
    conf_result(c, id, 1, "%d bpe ids, %d input ids exact", n_raw, max_len);
  else
    conf_result(c, id, 0, "input ids: %s", why);
}

static void suite_clip(conf_ctx *c, const char *dir) {
  char path[4096], clip_dir[4096];
  snprintf(path, sizeof path, "%s/golden_clip.json", dir);
  snprintf(clip_dir, sizeof clip_dir, "%s/clip", dir);
  if (!path_exists(path)) return;
  cJSON *root = NULL;
  sd_error err = {0};
  if (sd_json_read_file(path, &root, &err)) {
    conf_result(c, "tokenizers/clip", 0, "%s", err.msg);
    return;
  }
  const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases");
  const cJSON *special = cJSON_GetObjectItemCaseSensitive(root, "special_ids");
  int pad_eos = sd_json_int(special, "pad_sd15", 49407);
  int pad_zero = sd_json_int(special, "pad_sdxl_tokenizer_2", 0);
  sd_clip_tokenizer *tok_eos = NULL, *tok_zero = NULL;
  double t0 = now_ms(), c0 = cpu_ms();
  int rc = load_clip(clip_dir, "_sd15", pad_eos, &tok_eos, &err);
  double load_ms = now_ms() - t0, load_cpu_ms = cpu_ms() - c0;
  if (!rc) rc = load_clip(clip_dir, "_sdxl2", pad_zero, &tok_zero, &err);
  if (rc || !cJSON_IsArray(cases)) {
    conf_result(c, "tokenizers/clip", 0, "%s", rc ? err.msg : "no \"cases\" array");
    sd_clip_tokenizer_free(tok_eos);
    cJSON_Delete(root);
    return;
  }
  if (conf_wants(c, "tokenizers/clip.load")) {
    int ok = sd_clip_tokenizer_pad_id(tok_eos) == pad_eos &&
             sd_clip_tokenizer_pad_id(tok_zero) == pad_zero;
    conf_result(c, "tokenizers/clip.load", ok,
                "vocab %d, pad ids %d / %d, load %.1f ms (%.1f ms CPU)",
                sd_clip_tokenizer_vocab_size(tok_eos), sd_clip_tokenizer_pad_id(tok_eos),
                sd_clip_tokenizer_pad_id(tok_zero), load_ms, load_cpu_ms);
  }
  int index = 0;
  for (const cJSON *cs = cases->child; cs; cs = cs->next, index++) {
    const char *prompt = sd_json_str(cs, "prompt", sd_json_str(cs, "text", NULL));
    char id[128];
    if (!prompt) {
      snprintf(id, sizeof id, "tokenizers/clip.%d", index);
      conf_result(c, id, 0, "case has no prompt");
      continue;
    }
    snprintf(id, sizeof id, "tokenizers/clip.%d", index);
    check_clip_case(c, id, tok_eos, prompt, cJSON_GetObjectItemCaseSensitive(cs, "bpe_ids"),
                    cJSON_GetObjectItemCaseSensitive(cs, "input_ids_pad_eos"));
    snprintf(id, sizeof id, "tokenizers/clip_pad0.%d", index);
    check_clip_case(c, id, tok_zero, prompt, cJSON_GetObjectItemCaseSensitive(cs, "bpe_ids_pad_0"),
                    cJSON_GetObjectItemCaseSensitive(cs, "input_ids_pad_0"));
  }
  sd_clip_tokenizer_free(tok_eos);
  sd_clip_tokenizer_free(tok_zero);
  cJSON_Delete(root);
}

/* Checks every case of golden_t5.json with one loaded tokenizer; prefix
 * names the cases ("tokenizers/t5" or "tokenizers/t5_json"). */
static void check_t5_cases(conf_ctx *c, const char *prefix, const sd_t5_tokenizer *tok,
                           const cJSON *cases, int max_len) {
  int32_t *ids = sd_alloc((size_t)max_len * sizeof(int32_t));
  if (!ids) {
    conf_result(c, prefix, 0, "out of memory");
    return;
  }
  int index = 0;
  for (const cJSON *cs = cases->child; cs; cs = cs->next, index++) {
    char id[128], why[160];
    snprintf(id, sizeof id, "%s.%d", prefix, index);
    if (!conf_wants(c, id)) continue;
    const char *text = sd_json_str(cs, "text", sd_json_str(cs, "prompt", NULL));
    const cJSON *want = cJSON_GetObjectItemCaseSensitive(cs, "input_ids");
    if (!text || !cJSON_IsArray(want)) {
      conf_result(c, id, 0, "case lacks text or input_ids");
      continue;
    }
    int n = cJSON_GetArraySize(want);
    if (n > max_len) n = max_len;
    sd_error e = {0};
    if (sd_t5_tokenize(tok, text, ids, n, &e)) {
      conf_result(c, id, 0, "%s", e.msg);
      continue;
    }
    if (ids_equal(ids, n, want, why, sizeof why))
      conf_result(c, id, 1, "%d ids exact (%d tokens)", n, sd_json_int(cs, "num_tokens", -1));
    else
      conf_result(c, id, 0, "%s", why);
  }
  sd_free(ids);
}

static void suite_t5(conf_ctx *c, const char *dir) {
  char path[4096], t5_dir[4096], json_path[4200], model_path[4200];
  snprintf(path, sizeof path, "%s/golden_t5.json", dir);
  snprintf(t5_dir, sizeof t5_dir, "%s/t5", dir);
  snprintf(json_path, sizeof json_path, "%s/tokenizer.json", t5_dir);
  snprintf(model_path, sizeof model_path, "%s/spiece.model", t5_dir);
  if (!path_exists(path)) return;
  cJSON *root = NULL;
  sd_error err = {0};
  if (sd_json_read_file(path, &root, &err)) {
    conf_result(c, "tokenizers/t5", 0, "%s", err.msg);
    return;
  }
  const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases");
  int max_len = sd_json_int(root, "max_length", 256);
  if (!cJSON_IsArray(cases) || max_len < 1 || max_len > 65536) {
    conf_result(c, "tokenizers/t5", 0, "no \"cases\" array or bad max_length");
    cJSON_Delete(root);
    return;
  }
  sd_t5_tokenizer *tok = NULL;
  double t0 = now_ms(), c0 = cpu_ms();
  int rc = sd_t5_tokenizer_load_dir(&tok, t5_dir, &err);
  double load_ms = now_ms() - t0, load_cpu_ms = cpu_ms() - c0;
  if (rc) {
    conf_result(c, "tokenizers/t5", 0, "%s", err.msg);
  } else {
    if (conf_wants(c, "tokenizers/t5.load"))
      conf_result(c, "tokenizers/t5.load", 1, "%d pieces, load %.1f ms (%.1f ms CPU)",
                  sd_t5_tokenizer_vocab_size(tok), load_ms, load_cpu_ms);
    check_t5_cases(c, "tokenizers/t5", tok, cases, max_len);
    sd_t5_tokenizer_free(tok);
  }
  /* The folder's tokenizer.json alone must give the same ids (a folder may
   * ship only that file); checked when spiece.model took the first pass. */
  if (path_exists(json_path) && path_exists(model_path) && conf_wants(c, "tokenizers/t5_json")) {
    sd_error_clear(&err);
    if (sd_t5_tokenizer_load_json_file(&tok, json_path, &err)) {
      conf_result(c, "tokenizers/t5_json", 0, "%s", err.msg);
    } else {
      check_t5_cases(c, "tokenizers/t5_json", tok, cases, max_len);
      sd_t5_tokenizer_free(tok);
    }
  }
  cJSON_Delete(root);
}

void conf_suite_tokenizers(conf_ctx *c, const char *tokenizers_dir) {
  suite_clip(c, tokenizers_dir);
  suite_t5(c, tokenizers_dir);
}
