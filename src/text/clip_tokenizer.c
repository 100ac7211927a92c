#include "text/clip_tokenizer.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "base/alloc.h"
#include "io/json.h"
#include "text/tok_util.h"

#define CLIP_DEFAULT_MAX_LEN 77
#define CLIP_BOS_TEXT "<|startoftext|>"
#define CLIP_EOS_TEXT "<|endoftext|>"
#define CLIP_WORD_END "</w>"
#define CLIP_MAX_SPECIALS 4

typedef struct clip_special {
  char *text; /* sd_alloc'd, NUL-terminated */
  int len;
  int32_t id;
} clip_special;

struct sd_clip_tokenizer {
  sd_strmap vocab;   /* piece -> id */
  sd_pairmap merges; /* (left id, right id) -> (rank, merged id) */
  int32_t vocab_size;
  /* Ids of the 256 byte-level symbols, alone and with "</w>" (a word's last
   * symbol carries the suffix from the start, as in the reference). */
  int32_t byte_sym[256];
  int32_t byte_sym_end[256];
  /* Added tokens split off the raw text, longest first. */
  clip_special specials[CLIP_MAX_SPECIALS];
  int n_specials;
  int32_t bos, eos, pad;
  int max_len;
};

/* GPT-2's reversible byte -> code point table: printable Latin-1 bytes map to
 * themselves, the other 68 bytes to U+0100.. in byte order. */
static void byte_to_unicode_table(int32_t table[256]) {
  int next = 256;
  for (int b = 0; b < 256; b++) {
    int printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[b] = printable ? b : next++;
  }
}

/* ---- loading ---- */

/* vocab.json is one flat object of string -> integer. It is read by a
 * dedicated scanner straight into the hash map: going through a cJSON tree
 * costs two heap blocks per entry and dominated load time. */
static void skip_ws(const char **p, const char *end) {
  while (*p < end && (**p == ' ' || **p == '\n' || **p == '\r' || **p == '\t')) (*p)++;
}

static int hex4(const char *p, const char *end, int32_t *v) {
  if (end - p < 4) return 0;
  int32_t x = 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    int d = c >= '0' && c <= '9'   ? c - '0'
            : c >= 'a' && c <= 'f' ? c - 'a' + 10
            : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                   : -1;
    if (d < 0) return 0;
    x = x * 16 + d;
  }
  *v = x;
  return 1;
}

/* Parses a JSON string at *p (at the opening quote) into buf (cap bytes),
 * decoding escapes. Returns the decoded length or -1. */
static int json_string(const char **p, const char *end, char *buf, int cap) {
  const char *s = *p;
  if (s >= end || *s != '"') return -1;
  s++;
  int n = 0;
  while (s < end && *s != '"') {
    if (n + 4 > cap) return -1;
    unsigned char c = (unsigned char)*s;
    if (c < 0x20) return -1;
    if (c != '\\') {
      buf[n++] = (char)c;
      s++;
      continue;
    }
    if (++s >= end) return -1;
    char e = *s++;
    int32_t cp;
    switch (e) {
      case '"':
        buf[n++] = '"';
        break;
      case '\\':
        buf[n++] = '\\';
        break;
      case '/':
        buf[n++] = '/';
        break;
      case 'b':
        buf[n++] = '\b';
        break;
      case 'f':
        buf[n++] = '\f';
        break;
      case 'n':
        buf[n++] = '\n';
        break;
      case 'r':
        buf[n++] = '\r';
        break;
      case 't':
        buf[n++] = '\t';
        break;
      case 'u':
        if (!hex4(s, end, &cp)) return -1;
        s += 4;
        if (cp >= 0xd800 && cp <= 0xdbff) {
          int32_t lo;
          if (end - s < 6 || s[0] != '\\' || s[1] != 'u' || !hex4(s + 2, end, &lo) || lo < 0xdc00 ||
              lo > 0xdfff)
            return -1;
          s += 6;
          cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        } else if (cp >= 0xdc00 && cp <= 0xdfff) {
          return -1;
        }
        n += sd_utf8_encode(cp, buf + n);
        break;
      default:
        return -1;
    }
  }
  if (s >= end) return -1;
  *p = s + 1;
  return n;
}

static int load_vocab(sd_clip_tokenizer *tok, const char *path, sd_error *err) {
  char *text;
  size_t len;
  int rc = sd_read_file(path, &text, &len, err);
  if (rc) return rc;
  /* Entries are at most one per ':' outside strings; counting ':' over-
   * estimates slightly, which only sizes the table. */
  uint32_t guess = 16;
  for (size_t i = 0; i < len; i++) guess += text[i] == ':';
  if (sd_strmap_init(&tok->vocab, guess, len)) { /* keys are shorter than the file */
    sd_free(text);
    return sd_fail(err, SD_ERR_OOM, "out of memory loading %s", path);
  }
  const char *p = text, *end = text + len;
  char key[1024];
  int32_t max_id = -1;
  skip_ws(&p, end);
  if (p >= end || *p != '{')
    rc = sd_fail(err, SD_ERR_FORMAT, "%s: vocabulary must be a JSON object", path);
  else
    p++;
  int entries = 0;
  while (!rc) {
    skip_ws(&p, end);
    if (p < end && *p == '}' && entries == 0) {
      p++;
      break;
    }
    int klen = json_string(&p, end, key, (int)sizeof key);
    skip_ws(&p, end);
    if (klen < 0 || p >= end || *p != ':') {
      rc = sd_fail(err, SD_ERR_FORMAT, "%s: malformed entry near byte %ld", path, (long)(p - text));
      break;
    }
    p++;
    skip_ws(&p, end);
    int64_t id = 0;
    const char *digits = p;
    while (p < end && *p >= '0' && *p <= '9' && id <= INT32_MAX) id = id * 10 + (*p++ - '0');
    if (p == digits || id > INT32_MAX - 1 || (p < end && (*p == '.' || *p == 'e' || *p == 'E'))) {
      rc = sd_fail(err, SD_ERR_FORMAT, "%s: id of \"%.*s\" is not a non-negative integer", path,
                   klen < 64 ? klen : 64, key);
      break;
    }
    if (sd_strmap_put(&tok->vocab, key, (size_t)klen, (int32_t)id)) {
      rc = sd_fail(err, SD_ERR_OOM, "out of memory loading %s", path);
      break;
    }
    if (id > max_id) max_id = (int32_t)id;
    entries++;
    skip_ws(&p, end);
    if (p < end && *p == ',') {
      p++;
      continue;
    }
    if (p < end && *p == '}') {
      p++;
      break;
    }
    rc = sd_fail(err, SD_ERR_FORMAT, "%s: expected ',' or '}' near byte %ld", path,
                 (long)(p - text));
  }
  if (!rc) {
    skip_ws(&p, end);
    if (p != end)
      rc = sd_fail(err, SD_ERR_FORMAT, "%s: trailing data after the vocabulary", path);
    else if (entries == 0)
      rc = sd_fail(err, SD_ERR_FORMAT, "%s: empty vocabulary", path);
  }
  sd_free(text);
  tok->vocab_size = max_id + 1;
  return rc;
}

static int vocab_id(const sd_clip_tokenizer *tok, const char *s, size_t len, int32_t *id) {
  return sd_strmap_get(&tok->vocab, s, len, id);
}

static int load_byte_symbols(sd_clip_tokenizer *tok, const char *path, sd_error *err) {
  int32_t table[256];
  byte_to_unicode_table(table);
  for (int b = 0; b < 256; b++) {
    char s[16];
    int len = sd_utf8_encode(table[b], s);
    if (!vocab_id(tok, s, (size_t)len, &tok->byte_sym[b]))
      return sd_fail(err, SD_ERR_FORMAT, "%s: byte symbol \"%.*s\" (byte 0x%02x) missing", path,
                     len, s, b);
    memcpy(s + len, CLIP_WORD_END, sizeof CLIP_WORD_END);
    if (!vocab_id(tok, s, strlen(s), &tok->byte_sym_end[b]))
      return sd_fail(err, SD_ERR_FORMAT, "%s: byte symbol \"%s\" (byte 0x%02x) missing", path, s,
                     b);
  }
  return SD_OK;
}

/* merges.txt: an optional "#version" first line, then one "left right" pair
 * per line; the line order is the merge priority. Both halves and their
 * concatenation must be vocabulary pieces. */
static int load_merges(sd_clip_tokenizer *tok, const char *path, sd_error *err) {
  char *text;
  size_t len;
  int rc = sd_read_file(path, &text, &len, err);
  if (rc) return rc;
  uint32_t lines = 1;
  for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
  if (sd_pairmap_init(&tok->merges, lines)) {
    sd_free(text);
    return sd_fail(err, SD_ERR_OOM, "out of memory loading %s", path);
  }
  char joined[1024];
  int32_t rank = 0;
  int line_no = 0;
  size_t pos = 0;
  while (pos < len && !rc) {
    size_t end = pos;
    while (end < len && text[end] != '\n') end++;
    size_t next = end + 1;
    line_no++;
    if (end > pos && text[end - 1] == '\r') end--;
    size_t n = end - pos;
    const char *line = text + pos;
    pos = next;
    if (n == 0) continue;
    if (line_no == 1 && n >= 8 && memcmp(line, "#version", 8) == 0) continue;
    const char *sp = memchr(line, ' ', n);
    if (!sp || sp == line || sp == line + n - 1 ||
        memchr(sp + 1, ' ', (size_t)(line + n - sp - 1))) {
      rc = sd_fail(err, SD_ERR_FORMAT, "%s:%d: expected \"left right\", got \"%.*s\"", path,
                   line_no, (int)(n < 80 ? n : 80), line);
      break;
    }
    size_t left_len = (size_t)(sp - line), right_len = n - left_len - 1;
    if (left_len + right_len >= sizeof joined) {
      rc = sd_fail(err, SD_ERR_FORMAT, "%s:%d: merge too long", path, line_no);
      break;
    }
    int32_t a, b, m;
    memcpy(joined, line, left_len);
    memcpy(joined + left_len, sp + 1, right_len);
    if (!vocab_id(tok, line, left_len, &a) || !vocab_id(tok, sp + 1, right_len, &b) ||
        !vocab_id(tok, joined, left_len + right_len, &m)) {
      rc = sd_fail(err, SD_ERR_FORMAT,
                   "%s:%d: merge \"%.*s\" uses a piece missing from the vocabulary", path, line_no,
                   (int)(n < 80 ? n : 80), line);
      break;
    }
    if (sd_pairmap_put(&tok->merges, a, b, rank++, m))
      rc = sd_fail(err, SD_ERR_OOM, "out of memory loading %s", path);
  }
  sd_free(text);
  return rc;
}

static int add_special(sd_clip_tokenizer *tok, const char *text, sd_error *err) {
  int32_t id;
  size_t len = strlen(text);
  if (len == 0) return sd_fail(err, SD_ERR_FORMAT, "empty special token");
  for (int i = 0; i < tok->n_specials; i++)
    if (strcmp(tok->specials[i].text, text) == 0) return SD_OK;
  if (!vocab_id(tok, text, len, &id))
    return sd_fail(err, SD_ERR_FORMAT, "special token \"%.64s\" is not in the vocabulary", text);
  if (tok->n_specials == CLIP_MAX_SPECIALS)
    return sd_fail(err, SD_ERR_UNSUPPORTED, "too many special tokens");
  char *copy = sd_strdup(text);
  if (!copy) return sd_fail(err, SD_ERR_OOM, "out of memory");
  /* Longest first, so a longer token wins where two start at one place. */
  int at = tok->n_specials;
  while (at > 0 && tok->specials[at - 1].len < (int)len) {
    tok->specials[at] = tok->specials[at - 1];
    at--;
  }
  tok->specials[at] = (clip_special){copy, (int)len, id};
  tok->n_specials++;
  return SD_OK;
}

/* pad_text names the pad token when known (config files); otherwise pad_id
 * is looked up. The pad piece becomes an added token like bos/eos. */
static int clip_load(sd_clip_tokenizer **out, const char *vocab_json, const char *merges_txt,
                     const char *bos_text, const char *eos_text, const char *pad_text, int pad_id,
                     int max_len, sd_error *err) {
  *out = NULL;
  if (max_len < 2) return sd_fail(err, SD_ERR_ARG, "CLIP max length %d is below 2", max_len);
  sd_clip_tokenizer *tok = sd_calloc(1, sizeof *tok);
  if (!tok) return sd_fail(err, SD_ERR_OOM, "out of memory");
  tok->max_len = max_len;
  int rc = load_vocab(tok, vocab_json, err);
  if (!rc) rc = load_byte_symbols(tok, vocab_json, err);
  if (!rc) rc = load_merges(tok, merges_txt, err);
  if (!rc && !vocab_id(tok, bos_text, strlen(bos_text), &tok->bos))
    rc = sd_fail(err, SD_ERR_FORMAT, "%s: no \"%s\" token", vocab_json, bos_text);
  if (!rc && !vocab_id(tok, eos_text, strlen(eos_text), &tok->eos))
    rc = sd_fail(err, SD_ERR_FORMAT, "%s: no \"%s\" token", vocab_json, eos_text);
  if (!rc) rc = add_special(tok, bos_text, err);
  if (!rc) rc = add_special(tok, eos_text, err);
  if (!rc && pad_text) {
    rc = add_special(tok, pad_text, err);
    if (!rc) vocab_id(tok, pad_text, strlen(pad_text), &tok->pad);
  } else if (!rc) {
    /* Reverse lookup of the pad id: linear, once per load. */
    const sd_strmap *v = &tok->vocab;
    uint32_t e = 0;
    while (e < v->count && v->value[e] != pad_id) e++;
    if (e == v->count)
      rc = sd_fail(err, SD_ERR_ARG, "pad id %d is not in the vocabulary", pad_id);
    else
      rc = add_special(tok, v->pool + v->key_off[e], err);
    tok->pad = pad_id;
  }
  if (rc) {
    sd_clip_tokenizer_free(tok);
    return rc;
  }
  *out = tok;
  return SD_OK;
}

int sd_clip_tokenizer_load(sd_clip_tokenizer **out, const char *vocab_json, const char *merges_txt,
                           int pad_id, int max_len, sd_error *err) {
  return clip_load(out, vocab_json, merges_txt, CLIP_BOS_TEXT, CLIP_EOS_TEXT, NULL, pad_id, max_len,
                   err);
}

/* A token in a config is a plain string or an AddedToken object {"content": ...}. */
static const char *config_token(const cJSON *cfg, const char *key) {
  const cJSON *v = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, key) : NULL;
  if (cJSON_IsString(v)) return v->valuestring;
  if (cJSON_IsObject(v)) {
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
    if (cJSON_IsString(c)) return c->valuestring;
  }
  return NULL;
}

static int file_exists(const char *path) {
  FILE *f = fopen(path, "rb");
  if (f) fclose(f);
  return f != NULL;
}

int sd_clip_tokenizer_load_dir_suffix(sd_clip_tokenizer **out, const char *dir, const char *suffix,
                                      sd_error *err) {
  char vocab[4096], merges[4096], cfg_path[4096], map_path[4096];
  *out = NULL;
  if (!suffix) suffix = "";
  snprintf(vocab, sizeof vocab, "%s/vocab.json", dir);
  snprintf(merges, sizeof merges, "%s/merges.txt", dir);
  snprintf(cfg_path, sizeof cfg_path, "%s/tokenizer_config%s.json", dir, suffix);
  snprintf(map_path, sizeof map_path, "%s/special_tokens_map%s.json", dir, suffix);
  cJSON *cfg = NULL, *map = NULL;
  int rc = SD_OK;
  if (file_exists(cfg_path)) rc = sd_json_read_file(cfg_path, &cfg, err);
  if (!rc && file_exists(map_path)) rc = sd_json_read_file(map_path, &map, err);
  if (rc) {
    cJSON_Delete(cfg);
    cJSON_Delete(map);
    return rc;
  }
  /* tokenizer_config.json is what transformers reads first; the special
   * tokens map fills what it leaves out. */
  const char *pad = config_token(cfg, "pad_token");
  if (!pad) pad = config_token(map, "pad_token");
  const char *bos = config_token(cfg, "bos_token");
  if (!bos) bos = config_token(map, "bos_token");
  const char *eos = config_token(cfg, "eos_token");
  if (!eos) eos = config_token(map, "eos_token");
  int max_len = CLIP_DEFAULT_MAX_LEN;
  /* Some configs carry a huge sentinel (1e30) for "no limit": CLIP's position
   * table has 77 rows, so anything outside a sane range means 77. */
  double cfg_max = sd_json_num(cfg, "model_max_length", CLIP_DEFAULT_MAX_LEN);
  if (cfg_max >= 2 && cfg_max <= 4096) max_len = (int)cfg_max;
  rc = clip_load(out, vocab, merges, bos ? bos : CLIP_BOS_TEXT, eos ? eos : CLIP_EOS_TEXT,
                 pad ? pad : CLIP_EOS_TEXT, 0, max_len, err);
  cJSON_Delete(cfg);
  cJSON_Delete(map);
  return rc;
}

int sd_clip_tokenizer_load_dir(sd_clip_tokenizer **out, const char *dir, sd_error *err) {
  return sd_clip_tokenizer_load_dir_suffix(out, dir, "", err);
}

void sd_clip_tokenizer_free(sd_clip_tokenizer *tok) {
  if (!tok) return;
  sd_strmap_free(&tok->vocab);
  sd_pairmap_free(&tok->merges);
  for (int i = 0; i < tok->n_specials; i++) sd_free(tok->specials[i].text);
  sd_free(tok);
}

int sd_clip_tokenizer_max_len(const sd_clip_tokenizer *tok) {
  return tok->max_len;
}
int sd_clip_tokenizer_pad_id(const sd_clip_tokenizer *tok) {
  return tok->pad;
}
int sd_clip_tokenizer_bos_id(const sd_clip_tokenizer *tok) {
  return tok->bos;
}
int sd_clip_tokenizer_eos_id(const sd_clip_tokenizer *tok) {
  return tok->eos;
}
int sd_clip_tokenizer_vocab_size(const sd_clip_tokenizer *tok) {
  return tok->vocab_size;
}

/* ---- tokenizing ---- */

typedef struct id_list {
  int32_t *ids;
  int n, cap;
} id_list;

static int id_list_push(id_list *l, int32_t id) {
  if (l->n == l->cap) {
    int cap = l->cap ? l->cap * 2 : 64;
    int32_t *ids = sd_alloc((size_t)cap * sizeof(int32_t));
    if (!ids) return SD_ERR_OOM;
    if (l->n) memcpy(ids, l->ids, (size_t)l->n * sizeof(int32_t));
    sd_free(l->ids);
    l->ids = ids;
    l->cap = cap;
  }
  l->ids[l->n++] = id;
  return SD_OK;
}

/* A candidate merge in the BPE heap: the pair (left, right) starting at
 * symbol position pos. Entries go stale when either symbol changes; they are
 * checked when popped. */
typedef struct bpe_pair {
  int32_t rank, pos, left, right, merged;
} bpe_pair;

/* Per-piece scratch, sized from the piece's byte length. */
typedef struct clip_scratch {
  int32_t *cps;  /* normalized code points */
  int32_t *sym;  /* BPE symbol id at each byte position of one pre-token */
  int32_t *next; /* linked list over live symbols, -1 = end */
  int32_t *prev;
  bpe_pair *heap; /* 3 entries per byte: initial pairs + 2 per merge */
  unsigned char *bytes;
  size_t cap; /* entries of each per-byte array */
} clip_scratch;

static void scratch_free(clip_scratch *s) {
  sd_free(s->cps);
  sd_free(s->sym);
  sd_free(s->next);
  sd_free(s->prev);
  sd_free(s->heap);
  sd_free(s->bytes);
  memset(s, 0, sizeof *s);
}

static int scratch_reserve(clip_scratch *s, size_t n) {
  if (n <= s->cap) return SD_OK;
  scratch_free(s);
  s->cps = sd_alloc(n * sizeof(int32_t));
  s->sym = sd_alloc(n * sizeof(int32_t));
  s->next = sd_alloc(n * sizeof(int32_t));
  s->prev = sd_alloc(n * sizeof(int32_t));
  s->heap = sd_alloc(3 * n * sizeof(bpe_pair));
  s->bytes = sd_alloc(n);
  if (!s->cps || !s->sym || !s->next || !s->prev || !s->heap || !s->bytes) {
    scratch_free(s);
    return SD_ERR_OOM;
  }
  s->cap = n;
  return SD_OK;
}

/* Min-heap on (rank, pos): the lowest-ranked merge first, the leftmost among
 * equal ranks. */
static int pair_before(const bpe_pair *a, const bpe_pair *b) {
  return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(bpe_pair *h, int *n, bpe_pair e) {
  int i = (*n)++;
  while (i > 0) {
    int parent = (i - 1) / 2;
    if (!pair_before(&e, &h[parent])) break;
    h[i] = h[parent];
    i = parent;
  }
  h[i] = e;
}

static bpe_pair heap_pop(bpe_pair *h, int *n) {
  bpe_pair top = h[0], last = h[--(*n)];
  int i = 0;
  for (;;) {
    int c = 2 * i + 1;
    if (c >= *n) break;
    if (c + 1 < *n && pair_before(&h[c + 1], &h[c])) c++;
    if (!pair_before(&h[c], &last)) break;
    h[i] = h[c];
    i = c;
  }
  if (*n > 0) h[i] = last;
  return top;
}

static void push_pair(const sd_clip_tokenizer *tok, clip_scratch *s, int *n_heap, int pos) {
  int right = s->next[pos];
  if (pos < 0 || right < 0) return;
  bpe_pair e = {0, pos, s->sym[pos], s->sym[right], 0};
  if (sd_pairmap_get(&tok->merges, e.left, e.right, &e.rank, &e.merged))
    heap_push(s->heap, n_heap, e);
}

/* BPE over one pre-token (nb bytes in s->bytes): repeatedly merge the
 * lowest-ranked adjacent pair, leftmost first, until no pair is in the
 * merges table. Merging one occurrence at a time gives the reference's "all
 * occurrences per pass" result, because a pair created by a merge always
 * ranks after the merge that created it. A heap keeps long words at
 * O(n log n) instead of the reference's O(n^2). */
static int bpe_word(const sd_clip_tokenizer *tok, clip_scratch *s, int nb, id_list *out) {
  for (int i = 0; i < nb; i++) {
    s->sym[i] = i < nb - 1 ? tok->byte_sym[s->bytes[i]] : tok->byte_sym_end[s->bytes[i]];
    s->next[i] = i + 1 < nb ? i + 1 : -1;
    s->prev[i] = i - 1;
  }
  int n_heap = 0;
  for (int i = 0; i + 1 < nb; i++) push_pair(tok, s, &n_heap, i);
  while (n_heap > 0) {
    bpe_pair e = heap_pop(s->heap, &n_heap);
    int right = s->next[e.pos];
    /* Stale unless both symbols are still what they were when pushed; a
     * removed position is never the left end of a live pair (its sym is
     * marked -1). */
    if (s->sym[e.pos] != e.left || right < 0 || s->sym[right] != e.right) continue;
    s->sym[e.pos] = e.merged;
    s->sym[right] = -1;
    s->next[e.pos] = s->next[right];
    if (s->next[right] >= 0) s->prev[s->next[right]] = e.pos;
    push_pair(tok, s, &n_heap, s->prev[e.pos]);
    push_pair(tok, s, &n_heap, e.pos);
  }
  for (int i = 0; i >= 0; i = s->next[i])
    if (id_list_push(out, s->sym[i])) return SD_ERR_OOM;
  return SD_OK;
}

static int is_white_space(int32_t c) {
  return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f ||
         c == 0x3000;
}

enum { CLS_SPACE, CLS_LETTER, CLS_NUMBER, CLS_OTHER };

static int char_class(int32_t c) {
  if (is_white_space(c)) return CLS_SPACE;
  utf8proc_category_t cat = utf8proc_category(c);
  if (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) return CLS_LETTER;
  if (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO) return CLS_NUMBER;
  return CLS_OTHER;
}

/* Length of the contraction 's|'t|'re|'ve|'m|'ll|'d at cps[i] (0 if none). */
static int contraction_len(const int32_t *cps, int n, int i) {
  if (cps[i] != '\'' || i + 1 >= n) return 0;
  int32_t a = cps[i + 1], b = i + 2 < n ? cps[i + 2] : 0;
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

/* Normalizes one piece between special tokens into s->cps; returns the count
 * or a negative status. */
static int normalize_piece(const char *text, size_t len, clip_scratch *s) {
  utf8proc_uint8_t *nfc = NULL;
  utf8proc_ssize_t nlen = utf8proc_map((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)len, &nfc,
                                       UTF8PROC_STABLE | UTF8PROC_COMPOSE);
  if (nlen < 0) return nlen == UTF8PROC_ERROR_NOMEM ? -SD_ERR_OOM : -SD_ERR_FORMAT;
  /* Lowercasing may turn one code point into two (U+0130), hence 2x. */
  if (scratch_reserve(s, 2 * (size_t)nlen + 8)) {
    free(nfc);
    return -SD_ERR_OOM;
  }
  int n = 0;
  utf8proc_ssize_t pos = 0;
  while (pos < nlen) {
    int32_t c;
    utf8proc_ssize_t k = utf8proc_iterate(nfc + pos, nlen - pos, &c);
    if (k <= 0) break; /* cannot happen: utf8proc_map output is valid */
    pos += k;
    if (is_white_space(c)) {
      if (n == 0 || s->cps[n - 1] != ' ') s->cps[n++] = ' ';
      continue;
    }
    /* Per-character full lowercase mapping, as the reference's Lowercase
     * normalizer applies it char by char: capital sigma is always U+03C3, and
     * U+0130 is the only code point whose lowercase is two code points. */
    if (c == 0x130) {
      s->cps[n++] = 'i';
      s->cps[n++] = 0x307;
    } else {
      s->cps[n++] = utf8proc_tolower(c);
    }
  }
  free(nfc);
  return n;
}

static int tokenize_piece(const sd_clip_tokenizer *tok, const char *text, size_t len,
                          clip_scratch *s, id_list *out) {
  int n = normalize_piece(text, len, s);
  if (n < 0) return -n;
  /* Lowercasing can lengthen a code point's UTF-8 (U+023A -> U+2C65), so the
   * byte buffer is checked against each pre-token below. */
  int i = 0;
  while (i < n) {
    int cls = char_class(s->cps[i]);
    int end;
    if (cls == CLS_SPACE) {
      i++;
      continue;
    }
    int clen = contraction_len(s->cps, n, i);
    if (clen) {
      end = i + clen;
    } else if (cls == CLS_LETTER) {
      end = i + 1;
      while (end < n && char_class(s->cps[end]) == CLS_LETTER) end++;
    } else if (cls == CLS_NUMBER) {
      end = i + 1;
    } else {
      end = i + 1;
      while (end < n && char_class(s->cps[end]) == CLS_OTHER) end++;
    }
    size_t need = (size_t)(end - i) * 4;
    if (need > s->cap) {
      /* Encode into a temporary so the code points survive the resize. */
      clip_scratch big = {0};
      if (scratch_reserve(&big, need + (size_t)n)) return SD_ERR_OOM;
      memcpy(big.cps, s->cps, (size_t)n * sizeof(int32_t));
      scratch_free(s);
      *s = big;
    }
    int nb = 0;
    for (int k = i; k < end; k++) nb += sd_utf8_encode(s->cps[k], (char *)s->bytes + nb);
    if (nb > 0 && bpe_word(tok, s, nb, out)) return SD_ERR_OOM;
    i = end;
  }
  return SD_OK;
}

/* Copy of text with every byte that is not valid UTF-8 replaced by U+FFFD, as
 * decoding with errors="replace" does before the reference sees a str. */
static char *valid_utf8_copy(const char *text, size_t len, size_t *out_len) {
  char *o = sd_alloc(len * 3 + 1);
  if (!o) return NULL;
  size_t w = 0;
  for (size_t i = 0; i < len;) {
    int32_t cp;
    int k = sd_utf8_decode((const unsigned char *)text + i, len - i, &cp);
    if (k == 0) {
      memcpy(o + w, "\xef\xbf\xbd", 3);
      w += 3;
      i++;
    } else {
      memcpy(o + w, text + i, (size_t)k);
      w += (size_t)k;
      i += (size_t)k;
    }
  }
  o[w] = 0;
  *out_len = w;
  return o;
}

int sd_clip_tokenize_raw(const sd_clip_tokenizer *tok, const char *utf8, int32_t **ids, int *n,
                         sd_error *err) {
  *ids = NULL;
  *n = 0;
  if (!tok || !utf8) return sd_fail(err, SD_ERR_ARG, "CLIP tokenize: NULL argument");
  size_t len = strlen(utf8);
  /* Positions are int; a prompt is far below this. */
  if (len > (size_t)1 << 26)
    return sd_fail(err, SD_ERR_ARG, "CLIP tokenize: text of %zu bytes is too long", len);
  char *text = valid_utf8_copy(utf8, len, &len);
  if (!text) return sd_fail(err, SD_ERR_OOM, "out of memory tokenizing");
  id_list out = {0};
  clip_scratch s = {0};
  int rc = SD_OK;
  size_t piece = 0, i = 0;
  while (i <= len && !rc) {
    const clip_special *hit = NULL;
    for (int k = 0; k < tok->n_specials && i < len; k++) {
      const clip_special *sp = &tok->specials[k];
      if ((size_t)sp->len <= len - i && memcmp(text + i, sp->text, (size_t)sp->len) == 0) {
        hit = sp;
        break;
      }
    }
    if (!hit && i < len) {
      i++;
      continue;
    }
    if (i > piece) rc = tokenize_piece(tok, text + piece, i - piece, &s, &out);
    if (!rc && hit) {
      rc = id_list_push(&out, hit->id);
      i += (size_t)hit->len;
      piece = i;
    } else {
      break; /* end of text */
    }
  }
  scratch_free(&s);
  sd_free(text);
  if (rc) {
    sd_free(out.ids);
    return sd_fail(err, rc, "CLIP tokenize: %s",
                   rc == SD_ERR_OOM ? "out of memory" : "cannot normalize text");
  }
  *ids = out.ids;
  *n = out.n;
  return SD_OK;
}

int sd_clip_tokenize(const sd_clip_tokenizer *tok, const char *utf8, int32_t *ids_out,
                     sd_error *err) {
  int32_t *ids;
  int n;
  int rc = sd_clip_tokenize_raw(tok, utf8, &ids, &n, err);
  if (rc) return rc;
  int keep = n < tok->max_len - 2 ? n : tok->max_len - 2;
  int w = 0;
  ids_out[w++] = tok->bos;
  for (int i = 0; i < keep; i++) ids_out[w++] = ids[i];
  ids_out[w++] = tok->eos;
  while (w < tok->max_len) ids_out[w++] = tok->pad;
  sd_free(ids);
  return SD_OK;
}
