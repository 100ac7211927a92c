#include "text/t5_tokenizer.h"

#include <float.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "io/json.h"
#include "text/tok_util.h"

/* sentencepiece piece types (ModelProto.SentencePiece.Type). */
enum {
  PIECE_NORMAL = 1,
  PIECE_UNKNOWN = 2,
  PIECE_CONTROL = 3,
  PIECE_USER_DEFINED = 4,
  PIECE_UNUSED = 5,
  PIECE_BYTE = 6
};

#define SPACE_SYMBOL "\xe2\x96\x81" /* U+2581, sentencepiece's visible space */
#define UNK_PENALTY 10.0f           /* sentencepiece's kUnkPenalty */
#define MAX_TRIE_RESULTS 32         /* normalizer keeps the first 32 prefix matches */

struct sd_t5_tokenizer {
  int n_pieces;
  float *score;        /* (n_pieces) log-probabilities */
  uint8_t *type;       /* (n_pieces) PIECE_* */
  uint32_t *piece_off; /* (n_pieces + 1) offsets into piece_pool */
  char *piece_pool;    /* NUL-terminated pieces */
  sd_strmap lookup;    /* normal / user-defined / unused piece -> id */
  int max_piece_bytes;
  float min_score, max_score; /* over NORMAL pieces, as sentencepiece */
  int unk_id, eos_id, pad_id;
  /* Normalizer: darts-clone double array (little-endian units) + the
   * NUL-terminated replacement strings its leaf values point into. */
  uint32_t *trie;
  size_t trie_units;
  char *replacements;
  size_t replacements_len;
  int add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces;
};

void sd_t5_tokenizer_free(sd_t5_tokenizer *tok) {
  if (!tok) return;
  sd_free(tok->score);
  sd_free(tok->type);
  sd_free(tok->piece_off);
  sd_free(tok->piece_pool);
  sd_strmap_free(&tok->lookup);
  sd_free(tok->trie);
  sd_free(tok->replacements);
  sd_free(tok);
}

int sd_t5_tokenizer_vocab_size(const sd_t5_tokenizer *tok) {
  return tok->n_pieces;
}
int sd_t5_tokenizer_eos_id(const sd_t5_tokenizer *tok) {
  return tok->eos_id;
}
int sd_t5_tokenizer_pad_id(const sd_t5_tokenizer *tok) {
  return tok->pad_id;
}
int sd_t5_tokenizer_unk_id(const sd_t5_tokenizer *tok) {
  return tok->unk_id;
}

const char *sd_t5_tokenizer_piece(const sd_t5_tokenizer *tok, int id) {
  if (id < 0 || id >= tok->n_pieces) return NULL;
  return tok->piece_pool + tok->piece_off[id];
}

/* ---- building the piece table (shared by both file formats) ---- */

typedef struct piece_builder {
  sd_t5_tokenizer *tok;
  int cap;
  size_t pool_len, pool_cap;
} piece_builder;

static int builder_add(piece_builder *b, const char *piece, size_t len, float score, int type) {
  sd_t5_tokenizer *tok = b->tok;
  if (tok->n_pieces == b->cap) {
    int cap = b->cap ? b->cap * 2 : 1024;
    float *score_n = sd_alloc((size_t)cap * sizeof(float));
    uint8_t *type_n = sd_alloc((size_t)cap);
    uint32_t *off_n = sd_alloc((size_t)(cap + 1) * sizeof(uint32_t));
    if (!score_n || !type_n || !off_n) {
      sd_free(score_n);
      sd_free(type_n);
      sd_free(off_n);
      return SD_ERR_OOM;
    }
    if (tok->n_pieces) {
      memcpy(score_n, tok->score, (size_t)tok->n_pieces * sizeof(float));
      memcpy(type_n, tok->type, (size_t)tok->n_pieces);
      memcpy(off_n, tok->piece_off, (size_t)tok->n_pieces * sizeof(uint32_t));
    }
    sd_free(tok->score);
    sd_free(tok->type);
    sd_free(tok->piece_off);
    tok->score = score_n, tok->type = type_n, tok->piece_off = off_n;
    b->cap = cap;
  }
  if (b->pool_len + len + 1 > b->pool_cap) {
    size_t cap = b->pool_cap ? b->pool_cap * 2 : 65536;
    while (cap < b->pool_len + len + 1) cap *= 2;
    if (cap > UINT32_MAX) return SD_ERR_OOM;
    char *pool = sd_alloc(cap);
    if (!pool) return SD_ERR_OOM;
    if (b->pool_len) memcpy(pool, tok->piece_pool, b->pool_len);
    sd_free(tok->piece_pool);
    tok->piece_pool = pool;
    b->pool_cap = cap;
  }
  int id = tok->n_pieces++;
  tok->score[id] = score;
  tok->type[id] = (uint8_t)type;
  tok->piece_off[id] = (uint32_t)b->pool_len;
  memcpy(tok->piece_pool + b->pool_len, piece, len);
  tok->piece_pool[b->pool_len + len] = 0;
  b->pool_len += len + 1;
  return SD_OK;
}

/* After all pieces are in: lookup map, score range, special ids. Mirrors
 * sentencepiece's model setup: normal, user-defined and unused pieces are
 * matchable, exactly one unknown piece must exist, scores range over normal
 * pieces only. */
static int builder_finish(piece_builder *b, const char *what, sd_error *err) {
  sd_t5_tokenizer *tok = b->tok;
  if (tok->n_pieces == 0) return sd_fail(err, SD_ERR_FORMAT, "%s: no pieces", what);
  tok->piece_off[tok->n_pieces] = (uint32_t)b->pool_len;
  if (sd_strmap_init(&tok->lookup, (uint32_t)tok->n_pieces, b->pool_len))
    return sd_fail(err, SD_ERR_OOM, "out of memory loading %s", what);
  tok->min_score = FLT_MAX;
  tok->max_score = FLT_MIN;
  tok->unk_id = tok->eos_id = tok->pad_id = -1;
  for (int id = 0; id < tok->n_pieces; id++) {
    const char *p = tok->piece_pool + tok->piece_off[id];
    size_t len = tok->piece_off[id + 1] - tok->piece_off[id] - 1;
    int t = tok->type[id];
    if (len == 0) return sd_fail(err, SD_ERR_FORMAT, "%s: piece %d is empty", what, id);
    if (t == PIECE_NORMAL || t == PIECE_USER_DEFINED || t == PIECE_UNUSED) {
      int32_t prev;
      if (sd_strmap_get(&tok->lookup, p, len, &prev))
        return sd_fail(err, SD_ERR_FORMAT, "%s: piece \"%.64s\" defined twice", what, p);
      if (sd_strmap_put(&tok->lookup, p, len, id))
        return sd_fail(err, SD_ERR_OOM, "out of memory loading %s", what);
      if ((int)len > tok->max_piece_bytes) tok->max_piece_bytes = (int)len;
    }
    if (t == PIECE_NORMAL) {
      if (tok->score[id] < tok->min_score) tok->min_score = tok->score[id];
      if (tok->score[id] > tok->max_score) tok->max_score = tok->score[id];
    }
    if (t == PIECE_UNKNOWN) {
      if (tok->unk_id >= 0) return sd_fail(err, SD_ERR_FORMAT, "%s: two unknown pieces", what);
      tok->unk_id = id;
    }
    if (t == PIECE_CONTROL && strcmp(p, "</s>") == 0) tok->eos_id = id;
    if (t == PIECE_CONTROL && strcmp(p, "<pad>") == 0) tok->pad_id = id;
  }
  if (tok->unk_id < 0) return sd_fail(err, SD_ERR_FORMAT, "%s: no unknown piece", what);
  if (tok->eos_id < 0) return sd_fail(err, SD_ERR_FORMAT, "%s: no </s> piece", what);
  if (tok->pad_id < 0) tok->pad_id = 0; /* T5 pads with id 0 */
  return SD_OK;
}

/* precompiled_charsmap = uint32 trie size in bytes, the double array, then
 * the replacement strings. */
static int set_charsmap(sd_t5_tokenizer *tok, const unsigned char *blob, size_t len,
                        const char *what, sd_error *err) {
  if (len == 0) return SD_OK; /* identity normalization */
  uint32_t trie_bytes;
  if (len <= 4) return sd_fail(err, SD_ERR_FORMAT, "%s: charsmap truncated", what);
  trie_bytes = (uint32_t)blob[0] | (uint32_t)blob[1] << 8 | (uint32_t)blob[2] << 16 |
               (uint32_t)blob[3] << 24;
  if (trie_bytes >= len - 4 || trie_bytes % 4 || trie_bytes == 0)
    return sd_fail(err, SD_ERR_FORMAT, "%s: charsmap trie size %u does not fit", what, trie_bytes);
  tok->trie_units = trie_bytes / 4;
  tok->trie = sd_alloc(trie_bytes);
  tok->replacements_len = len - 4 - trie_bytes;
  tok->replacements = sd_alloc(tok->replacements_len + 1);
  if (!tok->trie || !tok->replacements) return sd_fail(err, SD_ERR_OOM, "out of memory");
  const unsigned char *u = blob + 4;
  for (size_t i = 0; i < tok->trie_units; i++, u += 4)
    tok->trie[i] =
        (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
  memcpy(tok->replacements, blob + 4 + trie_bytes, tok->replacements_len);
  tok->replacements[tok->replacements_len] = 0; /* a last string without NUL still ends */
  return SD_OK;
}

/* ---- spiece.model: the ModelProto subset we need ---- */

typedef struct pb_reader {
  const unsigned char *p, *end;
} pb_reader;

static int pb_varint(pb_reader *r, uint64_t *v) {
  uint64_t x = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (r->p >= r->end) return 0;
    unsigned char byte = *r->p++;
    x |= (uint64_t)(byte & 0x7f) << shift;
    if (!(byte & 0x80)) {
      *v = x;
      return 1;
    }
  }
  return 0;
}

/* Reads one field header and its payload. For length-delimited fields
 * (wire type 2) *data and *len give the bytes; for varints *v; for fixed32 *v
 * holds the 4 bytes. Returns 0 on malformed input. */
static int pb_field(pb_reader *r, uint32_t *field, int *wire, uint64_t *v,
                    const unsigned char **data, size_t *len) {
  uint64_t key;
  if (!pb_varint(r, &key)) return 0;
  *field = (uint32_t)(key >> 3);
  *wire = (int)(key & 7);
  switch (*wire) {
    case 0:
      return pb_varint(r, v);
    case 1:
      if (r->end - r->p < 8) return 0;
      r->p += 8;
      return 1;
    case 2:
      if (!pb_varint(r, v) || *v > (uint64_t)(r->end - r->p)) return 0;
      *data = r->p;
      *len = (size_t)*v;
      r->p += *len;
      return 1;
    case 5:
      if (r->end - r->p < 4) return 0;
      *v = (uint64_t)r->p[0] | (uint64_t)r->p[1] << 8 | (uint64_t)r->p[2] << 16 |
           (uint64_t)r->p[3] << 24;
      r->p += 4;
      return 1;
    default:
      return 0;
  }
}

static int parse_piece(piece_builder *b, const unsigned char *data, size_t len, sd_error *err) {
  pb_reader r = {data, data + len};
  const unsigned char *piece = NULL;
  size_t piece_len = 0;
  float score = 0;
  int type = PIECE_NORMAL;
  while (r.p < r.end) {
    uint32_t field;
    int wire;
    uint64_t v = 0;
    const unsigned char *d = NULL;
    size_t n = 0;
    if (!pb_field(&r, &field, &wire, &v, &d, &n))
      return sd_fail(err, SD_ERR_FORMAT, "sentencepiece model: malformed piece record");
    if (field == 1 && wire == 2) {
      piece = d, piece_len = n;
    } else if (field == 2 && wire == 5) {
      uint32_t bits = (uint32_t)v;
      memcpy(&score, &bits, sizeof score);
    } else if (field == 3 && wire == 0) {
      type = (int)v;
    }
  }
  if (!piece) return sd_fail(err, SD_ERR_FORMAT, "sentencepiece model: piece without text");
  if (type < PIECE_NORMAL || type > PIECE_BYTE)
    return sd_fail(err, SD_ERR_FORMAT, "sentencepiece model: unknown piece type %d", type);
  if (builder_add(b, (const char *)piece, piece_len, score, type))
    return sd_fail(err, SD_ERR_OOM, "out of memory loading a sentencepiece model");
  return SD_OK;
}

static int parse_trainer_spec(const unsigned char *data, size_t len, sd_error *err) {
  pb_reader r = {data, data + len};
  while (r.p < r.end) {
    uint32_t field;
    int wire;
    uint64_t v = 0;
    const unsigned char *d;
    size_t n;
    if (!pb_field(&r, &field, &wire, &v, &d, &n))
      return sd_fail(err, SD_ERR_FORMAT, "sentencepiece model: malformed trainer spec");
    if (field == 3 && wire == 0 && v != 1)
      return sd_fail(err, SD_ERR_UNSUPPORTED,
                     "sentencepiece model: type %d is not unigram (only unigram is supported)",
                     (int)v);
    if (field == 24 && wire == 0 && v != 0)
      return sd_fail(err, SD_ERR_UNSUPPORTED,
                     "sentencepiece model: treat_whitespace_as_suffix is not supported");
    if (field == 35 && wire == 0 && v != 0)
      return sd_fail(err, SD_ERR_UNSUPPORTED,
                     "sentencepiece model: byte_fallback is not supported");
  }
  return SD_OK;
}

static int parse_normalizer_spec(sd_t5_tokenizer *tok, const unsigned char *data, size_t len,
                                 sd_error *err) {
  pb_reader r = {data, data + len};
  while (r.p < r.end) {
    uint32_t field;
    int wire;
    uint64_t v = 0;
    const unsigned char *d = NULL;
    size_t n = 0;
    if (!pb_field(&r, &field, &wire, &v, &d, &n))
      return sd_fail(err, SD_ERR_FORMAT, "sentencepiece model: malformed normalizer spec");
    if (field == 2 && wire == 2) {
      int rc = set_charsmap(tok, d, n, "sentencepiece model", err);
      if (rc) return rc;
    } else if (field == 3 && wire == 0) {
      tok->add_dummy_prefix = v != 0;
    } else if (field == 4 && wire == 0) {
      tok->remove_extra_whitespaces = v != 0;
    } else if (field == 5 && wire == 0) {
      tok->escape_whitespaces = v != 0;
    } else if (field == 6 && wire == 2 && n > 0) {
      return sd_fail(err, SD_ERR_UNSUPPORTED,
                     "sentencepiece model: TSV normalization rules are not supported");
    }
  }
  return SD_OK;
}

static sd_t5_tokenizer *new_tokenizer(void) {
  sd_t5_tokenizer *tok = sd_calloc(1, sizeof *tok);
  if (!tok) return NULL;
  /* NormalizerSpec defaults (proto2 [default = true]). */
  tok->add_dummy_prefix = tok->remove_extra_whitespaces = tok->escape_whitespaces = 1;
  return tok;
}

int sd_t5_tokenizer_load_model(sd_t5_tokenizer **out, const void *data, size_t len, sd_error *err) {
  *out = NULL;
  sd_t5_tokenizer *tok = new_tokenizer();
  if (!tok) return sd_fail(err, SD_ERR_OOM, "out of memory");
  piece_builder b = {tok, 0, 0, 0};
  pb_reader r = {data, (const unsigned char *)data + len};
  int rc = SD_OK;
  while (!rc && r.p < r.end) {
    uint32_t field;
    int wire;
    uint64_t v = 0;
    const unsigned char *d = NULL;
    size_t n = 0;
    if (!pb_field(&r, &field, &wire, &v, &d, &n)) {
      rc = sd_fail(err, SD_ERR_FORMAT, "not a sentencepiece model (malformed protobuf)");
      break;
    }
    if (wire != 2) continue;
    if (field == 1)
      rc = parse_piece(&b, d, n, err);
    else if (field == 2)
      rc = parse_trainer_spec(d, n, err);
    else if (field == 3)
      rc = parse_normalizer_spec(tok, d, n, err);
  }
  if (!rc) rc = builder_finish(&b, "sentencepiece model", err);
  if (rc) {
    sd_t5_tokenizer_free(tok);
    return rc;
  }
  *out = tok;
  return SD_OK;
}

int sd_t5_tokenizer_load_model_file(sd_t5_tokenizer **out, const char *path, sd_error *err) {
  char *data;
  size_t len;
  *out = NULL;
  int rc = sd_read_file(path, &data, &len, err);
  if (rc) return rc;
  rc = sd_t5_tokenizer_load_model(out, data, len, err);
  sd_free(data);
  if (rc && err) {
    char inner[SD_ERROR_MSG_MAX];
    snprintf(inner, sizeof inner, "%s", err->msg);
    sd_fail_replace(err, rc, "%s: %s", path, inner);
  }
  return rc;
}

/* ---- tokenizer.json ---- */

static int base64_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

static int base64_decode(const char *s, unsigned char **out, size_t *out_len) {
  size_t n = strlen(s);
  unsigned char *o = sd_alloc(n / 4 * 3 + 3);
  if (!o) return SD_ERR_OOM;
  size_t w = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '=') break;
    int v = base64_value((unsigned char)s[i]);
    if (v < 0) {
      sd_free(o);
      return SD_ERR_FORMAT;
    }
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      o[w++] = (unsigned char)(acc >> bits);
    }
  }
  *out = o;
  *out_len = w;
  return SD_OK;
}

/* Depth-first search for the Precompiled normalizer (it sits in a Sequence). */
static const cJSON *find_precompiled(const cJSON *norm) {
  if (!cJSON_IsObject(norm)) return NULL;
  const char *type = sd_json_str(norm, "type", "");
  if (strcmp(type, "Precompiled") == 0) return norm;
  const cJSON *list = cJSON_GetObjectItemCaseSensitive(norm, "normalizers");
  for (const cJSON *it = cJSON_IsArray(list) ? list->child : NULL; it; it = it->next) {
    const cJSON *hit = find_precompiled(it);
    if (hit) return hit;
  }
  return NULL;
}

int sd_t5_tokenizer_load_json_file(sd_t5_tokenizer **out, const char *path, sd_error *err) {
  *out = NULL;
  cJSON *root = NULL;
  int rc = sd_json_read_file(path, &root, err);
  if (rc) return rc;
  sd_t5_tokenizer *tok = new_tokenizer();
  if (!tok) {
    cJSON_Delete(root);
    return sd_fail(err, SD_ERR_OOM, "out of memory");
  }
  const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
  const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
  int unk_id = sd_json_int(model, "unk_id", -1);
  if (strcmp(sd_json_str(model, "type", ""), "Unigram") != 0 || !cJSON_IsArray(vocab))
    rc = sd_fail(err, SD_ERR_FORMAT, "%s: not a Unigram tokenizer", path);
  else if (sd_json_bool(model, "byte_fallback", 0))
    rc = sd_fail(err, SD_ERR_UNSUPPORTED, "%s: byte_fallback is not supported", path);
  /* Added special tokens are control pieces in sentencepiece terms: never
   * produced by segmentation. */
  const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
  piece_builder b = {tok, 0, 0, 0};
  int index = 0;
  for (const cJSON *it = vocab ? vocab->child : NULL; !rc && it; it = it->next, index++) {
    const cJSON *piece = cJSON_GetArrayItem(it, 0), *score = cJSON_GetArrayItem(it, 1);
    if (!cJSON_IsString(piece) || !cJSON_IsNumber(score)) {
      rc = sd_fail(err, SD_ERR_FORMAT, "%s: vocab entry %d is not [piece, score]", path, index);
      break;
    }
    int type = PIECE_NORMAL;
    if (index == unk_id) {
      type = PIECE_UNKNOWN;
    } else {
      for (const cJSON *a = cJSON_IsArray(added) ? added->child : NULL; a; a = a->next)
        if (sd_json_int(a, "id", -1) == index && sd_json_bool(a, "special", 0))
          type = PIECE_CONTROL;
    }
    if (builder_add(&b, piece->valuestring, strlen(piece->valuestring), (float)score->valuedouble,
                    type))
      rc = sd_fail(err, SD_ERR_OOM, "out of memory loading %s", path);
  }
  if (!rc) rc = builder_finish(&b, path, err);
  const cJSON *pre = find_precompiled(cJSON_GetObjectItemCaseSensitive(root, "normalizer"));
  const char *b64 = sd_json_str(pre, "precompiled_charsmap", NULL);
  if (!rc && b64) {
    unsigned char *blob;
    size_t blob_len;
    int brc = base64_decode(b64, &blob, &blob_len);
    if (brc) {
      rc = sd_fail(err, brc, "%s: bad precompiled_charsmap", path);
    } else {
      rc = set_charsmap(tok, blob, blob_len, path, err);
      sd_free(blob);
    }
  }
  cJSON_Delete(root);
  if (rc) {
    sd_t5_tokenizer_free(tok);
    return rc;
  }
  *out = tok;
  return SD_OK;
}

int sd_t5_tokenizer_load_dir(sd_t5_tokenizer **out, const char *dir, sd_error *err) {
  char path[4096];
  snprintf(path, sizeof path, "%s/spiece.model", dir);
  FILE *f = fopen(path, "rb");
  if (f) {
    fclose(f);
    return sd_t5_tokenizer_load_model_file(out, path, err);
  }
  snprintf(path, sizeof path, "%s/tokenizer.json", dir);
  f = fopen(path, "rb");
  if (f) {
    fclose(f);
    return sd_t5_tokenizer_load_json_file(out, path, err);
  }
  *out = NULL;
  return sd_fail(err, SD_ERR_IO, "%s: neither spiece.model nor tokenizer.json found", dir);
}

/* ---- normalization ---- */

typedef struct byte_buf {
  char *data;
  size_t len, cap;
} byte_buf;

static int buf_append(byte_buf *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 256;
    while (cap < b->len + n + 1) cap *= 2;
    char *d = sd_alloc(cap);
    if (!d) return SD_ERR_OOM;
    if (b->len) memcpy(d, b->data, b->len);
    sd_free(b->data);
    b->data = d;
    b->cap = cap;
  }
  memcpy(b->data + b->len, s, n);
  b->len += n;
  b->data[b->len] = 0;
  return SD_OK;
}

/* Longest charsmap rule matching a prefix of s: darts-clone's
 * commonPrefixSearch over the double array (unit layout: bit 8 has_leaf,
 * bits 0-7 label with bit 31 set on leaves, offset in bits 10-31 scaled by
 * bit 9). Only the first 32 matches count, as in sentencepiece. Returns the
 * match length and sets *repl; 0 if no rule applies. */
static size_t charsmap_match(const sd_t5_tokenizer *tok, const unsigned char *s, size_t n,
                             const char **repl) {
  if (!tok->trie) return 0;
  const uint32_t *a = tok->trie;
  size_t units = tok->trie_units;
  size_t best_len = 0;
  uint32_t best_value = 0;
  int found = 0;
  uint32_t unit = a[0];
  size_t pos = (unit >> 10) << ((unit & (1u << 9)) >> 6);
  for (size_t i = 0; i < n; i++) {
    pos ^= s[i];
    if (pos >= units) break;
    unit = a[pos];
    if ((unit & ((1u << 31) | 0xffu)) != s[i]) break;
    pos ^= (unit >> 10) << ((unit & (1u << 9)) >> 6);
    if ((unit >> 8) & 1) {
      if (pos >= units) break;
      if (found < MAX_TRIE_RESULTS) {
        best_len = i + 1;
        best_value = a[pos] & 0x7fffffffu;
      }
      found++;
    }
  }
  if (!best_len || best_value >= tok->replacements_len) return 0;
  *repl = tok->replacements + best_value;
  return best_len;
}

/* One normalization step at s: the replacement of the longest rule, else the
 * character itself, else (malformed UTF-8) U+FFFD for one byte. */
static size_t normalize_prefix(const sd_t5_tokenizer *tok, const unsigned char *s, size_t n,
                               const char **out, size_t *out_len) {
  const char *repl;
  size_t m = charsmap_match(tok, s, n, &repl);
  if (m) {
    *out = repl;
    *out_len = strlen(repl);
    return m;
  }
  int32_t cp;
  int k = sd_utf8_decode(s, n, &cp);
  if (k == 0) {
    *out = "\xef\xbf\xbd";
    *out_len = 3;
    return 1;
  }
  *out = (const char *)s;
  *out_len = (size_t)k;
  return (size_t)k;
}

/* sentencepiece's Normalizer::Normalize with the model's spec. */
static int normalize_text(const sd_t5_tokenizer *tok, const char *text, byte_buf *out) {
  const unsigned char *in = (const unsigned char *)text;
  size_t n = strlen(text);
  const char *piece;
  size_t piece_len;
  if (tok->remove_extra_whitespaces) {
    while (n > 0) {
      size_t used = normalize_prefix(tok, in, n, &piece, &piece_len);
      if (piece_len != 1 || piece[0] != ' ') break;
      in += used, n -= used;
    }
  }
  if (n == 0) return buf_append(out, "", 0);
  const char *space = tok->escape_whitespaces ? SPACE_SYMBOL : " ";
  size_t space_len = strlen(space);
  if (tok->add_dummy_prefix && buf_append(out, space, space_len)) return SD_ERR_OOM;
  int prev_space = tok->remove_extra_whitespaces;
  while (n > 0) {
    size_t used = normalize_prefix(tok, in, n, &piece, &piece_len);
    if (prev_space)
      while (piece_len > 0 && piece[0] == ' ') piece++, piece_len--;
    if (piece_len > 0) {
      size_t start = 0;
      for (size_t i = 0; i <= piece_len; i++) {
        if (i < piece_len && piece[i] != ' ') continue;
        if (buf_append(out, piece + start, i - start)) return SD_ERR_OOM;
        if (i < piece_len && buf_append(out, space, space_len)) return SD_ERR_OOM;
        start = i + 1;
      }
      prev_space = piece[piece_len - 1] == ' ';
    }
    in += used, n -= used;
    if (!tok->remove_extra_whitespaces) prev_space = 0;
  }
  if (tok->remove_extra_whitespaces)
    while (out->len >= space_len && memcmp(out->data + out->len - space_len, space, space_len) == 0)
      out->data[out->len -= space_len] = 0;
  return SD_OK;
}

int sd_t5_normalize(const sd_t5_tokenizer *tok, const char *utf8, char **out, size_t *out_len,
                    sd_error *err) {
  *out = NULL;
  if (!tok || !utf8) return sd_fail(err, SD_ERR_ARG, "T5 normalize: NULL argument");
  byte_buf b = {0};
  if (normalize_text(tok, utf8, &b)) {
    sd_free(b.data);
    return sd_fail(err, SD_ERR_OOM, "out of memory normalizing");
  }
  *out = b.data;
  *out_len = b.len;
  return SD_OK;
}

/* ---- Viterbi segmentation ---- */

typedef struct best_node {
  float score;   /* best path score ending here */
  int starts_at; /* byte position the last piece starts at, -1 = unreached */
  int id;
} best_node;

static int utf8_char_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c & 0xe0) == 0xc0) return 2;
  if ((c & 0xf0) == 0xe0) return 3;
  if ((c & 0xf8) == 0xf0) return 4;
  return 1;
}

/* sentencepiece's unigram Encode: for each character position, every piece
 * that starts there (shortest first) relaxes the node where it ends; a
 * character no single piece covers gets an <unk> edge at min_score - 10.
 * Scores add in float; a user-defined piece scores len * max_score - 0.1 in
 * double, so candidates are compared in double as the reference does. */
static int viterbi(const sd_t5_tokenizer *tok, const char *s, int size, int32_t **ids_out,
                   int *n_out) {
  best_node *nodes = sd_alloc((size_t)(size + 1) * sizeof(best_node));
  int32_t *ids = sd_alloc((size_t)(size + 1) * sizeof(int32_t));
  if (!nodes || !ids) {
    sd_free(nodes);
    sd_free(ids);
    return SD_ERR_OOM;
  }
  for (int i = 0; i <= size; i++) nodes[i] = (best_node){0.0f, -1, -1};
  const float unk_score = tok->min_score - UNK_PENALTY;
  for (int start = 0; start < size;) {
    int mblen = utf8_char_len((unsigned char)s[start]);
    if (mblen > size - start) mblen = size - start;
    float here = nodes[start].score;
    int has_single = 0;
    int limit = size - start < tok->max_piece_bytes ? size - start : tok->max_piece_bytes;
    for (int len = 1; len <= limit; len++) {
      int32_t id;
      if (!sd_strmap_get(&tok->lookup, s + start, (size_t)len, &id)) continue;
      if (tok->type[id] == PIECE_UNUSED) continue;
      double score = tok->type[id] == PIECE_USER_DEFINED ? len * (double)tok->max_score - 0.1
                                                         : (double)tok->score[id];
      double cand = score + (double)here;
      best_node *t = &nodes[start + len];
      if (t->starts_at == -1 || cand > (double)t->score) {
        t->score = (float)cand;
        t->starts_at = start;
        t->id = id;
      }
      if (len == mblen) has_single = 1;
    }
    if (!has_single) {
      float cand = unk_score + here;
      best_node *t = &nodes[start + mblen];
      if (t->starts_at == -1 || cand > t->score) {
        t->score = cand;
        t->starts_at = start;
        t->id = tok->unk_id;
      }
    }
    start += mblen;
  }
  /* Backtrack, then reverse, merging runs of <unk> into one. */
  int n = 0;
  for (int end = size; end > 0; end = nodes[end].starts_at) {
    if (nodes[end].starts_at < 0) break; /* unreachable: every char has an edge */
    ids[n++] = nodes[end].id;
  }
  sd_free(nodes);
  for (int i = 0, j = n - 1; i < j; i++, j--) {
    int32_t t = ids[i];
    ids[i] = ids[j];
    ids[j] = t;
  }
  int w = 0;
  for (int i = 0; i < n; i++) {
    int32_t id = ids[i];
    if (id == tok->unk_id && w > 0 && ids[w - 1] == tok->unk_id) continue;
    ids[w++] = id;
  }
  *ids_out = ids;
  *n_out = w;
  return SD_OK;
}

int sd_t5_tokenize_raw(const sd_t5_tokenizer *tok, const char *utf8, int32_t **ids, int *n,
                       sd_error *err) {
  *ids = NULL;
  *n = 0;
  if (!tok || !utf8) return sd_fail(err, SD_ERR_ARG, "T5 tokenize: NULL argument");
  size_t in_len = strlen(utf8);
  if (in_len > (size_t)1 << 26)
    return sd_fail(err, SD_ERR_ARG, "T5 tokenize: text of %zu bytes is too long", in_len);
  byte_buf b = {0};
  if (normalize_text(tok, utf8, &b)) {
    sd_free(b.data);
    return sd_fail(err, SD_ERR_OOM, "out of memory tokenizing");
  }
  if (b.len > (size_t)INT32_MAX / 8) { /* charsmap expansion beyond any real prompt */
    sd_free(b.data);
    return sd_fail(err, SD_ERR_ARG, "T5 tokenize: normalized text too long");
  }
  int rc = viterbi(tok, b.data ? b.data : "", (int)b.len, ids, n);
  sd_free(b.data);
  if (rc) return sd_fail(err, rc, "out of memory tokenizing");
  return SD_OK;
}

int sd_t5_tokenize(const sd_t5_tokenizer *tok, const char *utf8, int32_t *ids_out, int max_len,
                   sd_error *err) {
  if (max_len < 1) return sd_fail(err, SD_ERR_ARG, "T5 max length %d is below 1", max_len);
  int32_t *ids;
  int n;
  int rc = sd_t5_tokenize_raw(tok, utf8, &ids, &n, err);
  if (rc) return rc;
  int keep = n < max_len - 1 ? n : max_len - 1;
  memcpy(ids_out, ids, (size_t)keep * sizeof(int32_t));
  ids_out[keep] = tok->eos_id;
  for (int i = keep + 1; i < max_len; i++) ids_out[i] = tok->pad_id;
  sd_free(ids);
  return SD_OK;
}
