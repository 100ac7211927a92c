/* T5 (sentencepiece unigram) tokenizer on a toy model serialized by the test:
 * a hand-built double-array charsmap, Viterbi choices, <unk> runs, whitespace
 * handling, EOS/padding/truncation, the tokenizer.json route, every
 * truncation of the model file, and a random-bytes fuzz loop. Needs no
 * fixtures. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/alloc.h"
#include "test_util.h"
#include "text/t5_tokenizer.h"

typedef struct buf {
  unsigned char data[1 << 16];
  size_t len;
} buf;

static void put_byte(buf *b, unsigned char c) {
  b->data[b->len++] = c;
}
static void put_varint(buf *b, uint64_t v) {
  while (v >= 0x80) {
    put_byte(b, (unsigned char)(v | 0x80));
    v >>= 7;
  }
  put_byte(b, (unsigned char)v);
}
static void put_bytes_field(buf *b, int field, const void *p, size_t n) {
  put_varint(b, (uint64_t)field << 3 | 2);
  put_varint(b, n);
  memcpy(b->data + b->len, p, n);
  b->len += n;
}
static void put_varint_field(buf *b, int field, uint64_t v) {
  put_varint(b, (uint64_t)field << 3);
  put_varint(b, v);
}
static void put_float_field(buf *b, int field, float f) {
  uint32_t bits;
  memcpy(&bits, &f, 4);
  put_varint(b, (uint64_t)field << 3 | 5);
  for (int i = 0; i < 4; i++) put_byte(b, (unsigned char)(bits >> (8 * i)));
}

enum { NORMAL = 1, UNKNOWN = 2, CONTROL = 3, UNUSED = 5 };

typedef struct toy_piece {
  const char *text;
  float score;
  int type;
} toy_piece;

#define SP "\xe2\x96\x81"
static const toy_piece pieces[] = {
    {"<pad>", 0, CONTROL},   {"</s>", 0, CONTROL},  {"<unk>", 0, UNKNOWN},
    {SP, -2, NORMAL},        {"a", -3, NORMAL},     {"b", -3, NORMAL},
    {SP "a", -2.5f, NORMAL}, {SP "ab", -3, NORMAL}, {"ab", -4, NORMAL},
    {SP "b", -2.5f, NORMAL}, {"q", -3, NORMAL},     {SP "q", -2.5f, NORMAL},
    {"c", -1, UNUSED},
};
enum { N_PIECES = sizeof pieces / sizeof pieces[0] };

/* Single-byte rules in a darts-clone double array: root offset 256 puts byte
 * c's node at 256+c; its leaf (offset 1024) at 1280+c holds the replacement
 * string's offset with bit 31 set. */
static size_t build_charsmap(unsigned char *out) {
  static uint32_t units[1536];
  static const char strings[] = "a\0 \0\0q q"; /* offsets 0, 2, 4 (empty), 5 */
  const struct {
    unsigned char byte;
    uint32_t value;
  } rules[] = {{'A', 0}, {'\t', 2}, {'#', 4}, {'Q', 5}};
  memset(units, 0, sizeof units);
  units[0] = 256u << 10;
  for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++) {
    unsigned c = rules[i].byte;
    units[256 + c] = (1024u << 10) | (1u << 8) | c;
    units[1280 + c] = rules[i].value | (1u << 31);
  }
  uint32_t trie_bytes = sizeof units;
  size_t n = 0;
  for (int i = 0; i < 4; i++) out[n++] = (unsigned char)(trie_bytes >> (8 * i));
  for (size_t u = 0; u < 1536; u++)
    for (int i = 0; i < 4; i++) out[n++] = (unsigned char)(units[u] >> (8 * i));
  memcpy(out + n, strings, sizeof strings);
  return n + sizeof strings;
}

static void build_model(buf *m, int with_unk) {
  m->len = 0;
  for (int i = 0; i < N_PIECES; i++) {
    if (!with_unk && pieces[i].type == UNKNOWN) continue;
    buf p = {.len = 0};
    put_bytes_field(&p, 1, pieces[i].text, strlen(pieces[i].text));
    put_float_field(&p, 2, pieces[i].score);
    if (pieces[i].type != NORMAL) put_varint_field(&p, 3, (uint64_t)pieces[i].type);
    put_bytes_field(m, 1, p.data, p.len);
  }
  buf t = {.len = 0};
  put_varint_field(&t, 3, 1); /* unigram */
  put_bytes_field(m, 2, t.data, t.len);
  static unsigned char cmap[1 << 14];
  size_t cn = build_charsmap(cmap);
  buf nspec = {.len = 0};
  put_bytes_field(&nspec, 1, "toy", 3);
  put_bytes_field(&nspec, 2, cmap, cn);
  put_bytes_field(m, 3, nspec.data, nspec.len);
}

static int raw(const sd_t5_tokenizer *tok, const char *text, int32_t *out, int cap) {
  int32_t *ids;
  int n;
  sd_error err = {0};
  if (sd_t5_tokenize_raw(tok, text, &ids, &n, &err)) {
    fprintf(stderr, "tokenize failed: %s\n", err.msg);
    return -1;
  }
  int k = n < cap ? n : cap;
  if (k > 0) memcpy(out, ids, (size_t)k * sizeof(int32_t));
  sd_free(ids);
  return n;
}

static int ids_are(const sd_t5_tokenizer *tok, const char *text, int n, ...) {
  int32_t got[64];
  int got_n = raw(tok, text, got, 64);
  va_list ap;
  va_start(ap, n);
  int ok = got_n == n;
  for (int i = 0; ok && i < n; i++) ok = got[i] == va_arg(ap, int);
  va_end(ap);
  if (!ok) {
    fprintf(stderr, "  \"%s\" ->", text);
    for (int i = 0; i < got_n && i < 64; i++) fprintf(stderr, " %d", got[i]);
    fprintf(stderr, "\n");
  }
  return ok;
}

static void check_segmentation(const sd_t5_tokenizer *tok, int has_unused) {
  CHECK(ids_are(tok, "ab", 1, 7));           /* ▁ab beats ▁a+b and ▁+ab */
  CHECK(ids_are(tok, "  a   b  ", 2, 6, 9)); /* trimmed, runs collapsed */
  CHECK(ids_are(tok, "A", 1, 6));            /* charsmap A -> a */
  CHECK(ids_are(tok, "a\tb", 2, 6, 9));      /* charsmap tab -> space */
  CHECK(ids_are(tok, "a#b", 1, 7));          /* charsmap deletes # */
  CHECK(ids_are(tok, "Q", 2, 11, 11));       /* one rule, two words */
  CHECK(ids_are(tok, "xyz", 2, 3, 2));       /* one <unk> per unknown run */
  CHECK(ids_are(tok, "a xyz b", 4, 6, 3, 2, 9));
  CHECK(ids_are(tok, "", 0));
  CHECK(ids_are(tok, " \t ", 0));
  CHECK(ids_are(tok,
                "\xff"
                "a",
                3, 3, 2, 4));                        /* malformed byte -> U+FFFD, unknown */
  if (has_unused) CHECK(ids_are(tok, "c", 2, 3, 2)); /* unused piece never chosen */
}

static void test_model_proto(void) {
  static buf m;
  build_model(&m, 1);
  sd_t5_tokenizer *tok = NULL;
  sd_error err = {0};
  int rc = sd_t5_tokenizer_load_model(&tok, m.data, m.len, &err);
  CHECK_MSG(rc == 0, "load: %s", err.msg);
  if (rc) return;
  CHECK(sd_t5_tokenizer_eos_id(tok) == 1 && sd_t5_tokenizer_pad_id(tok) == 0 &&
        sd_t5_tokenizer_unk_id(tok) == 2 && sd_t5_tokenizer_vocab_size(tok) == N_PIECES);
  CHECK(strcmp(sd_t5_tokenizer_piece(tok, 7), SP "ab") == 0 && !sd_t5_tokenizer_piece(tok, 99));
  check_segmentation(tok, 1);
  char *norm;
  size_t nlen;
  CHECK(sd_t5_normalize(tok, "  A  b ", &norm, &nlen, &err) == 0);
  CHECK(norm && strcmp(norm, SP "a" SP "b") == 0 && nlen == strlen(SP "a" SP "b"));
  sd_free(norm);

  int32_t ids[8];
  CHECK(sd_t5_tokenize(tok, "a a a a a", ids, 4, &err) == 0);
  CHECK(ids[0] == 6 && ids[1] == 6 && ids[2] == 6 && ids[3] == 1); /* truncated + EOS */
  CHECK(sd_t5_tokenize(tok, "ab", ids, 5, &err) == 0);
  CHECK(ids[0] == 7 && ids[1] == 1 && ids[2] == 0 && ids[3] == 0 && ids[4] == 0);
  CHECK(sd_t5_tokenize(tok, "ab", ids, 1, &err) == 0 && ids[0] == 1);
  CHECK(sd_t5_tokenize(tok, "ab", ids, 0, &err) == SD_ERR_ARG);

  /* fuzz: random bytes never crash and give ids in range */
  srand(77);
  char text[160];
  int bad = 0;
  for (int iter = 0; iter < 20000; iter++) {
    int len = rand() % 159;
    for (int i = 0; i < len; i++) {
      int r = rand() % 6;
      text[i] = r < 2   ? (char)(1 + rand() % 255)
                : r < 4 ? "abAQ#\t "[rand() % 7]
                        : (char)(' ' + rand() % 95);
    }
    text[len] = 0;
    int32_t out[32];
    sd_error e = {0};
    if (sd_t5_tokenize(tok, text, out, 32, &e)) {
      bad++;
      continue;
    }
    for (int i = 0; i < 32; i++)
      if (out[i] < 0 || out[i] >= N_PIECES) bad++;
  }
  CHECK_MSG(bad == 0, "%d fuzz failures", bad);
  sd_t5_tokenizer_free(tok);
}

static void test_malformed_models(void) {
  static buf m;
  build_model(&m, 0);
  sd_t5_tokenizer *tok = NULL;
  sd_error err = {0};
  CHECK(sd_t5_tokenizer_load_model(&tok, m.data, m.len, &err) == SD_ERR_FORMAT && !tok);
  CHECK_MSG(strstr(err.msg, "unknown") != NULL, "message: %s", err.msg);

  /* every prefix of a valid model loads or fails cleanly */
  build_model(&m, 1);
  int loaded = 0;
  for (size_t cut = 0; cut < m.len; cut++) {
    sd_error e = {0};
    if (sd_t5_tokenizer_load_model(&tok, m.data, cut, &e) == 0) {
      loaded++;
      sd_t5_tokenizer_free(tok);
    } else {
      CHECK(tok == NULL && e.msg[0]);
    }
  }
  CHECK(loaded < (int)m.len);
  /* random garbage and flipped bytes */
  srand(5);
  for (int iter = 0; iter < 2000; iter++) {
    static buf g;
    g = m;
    for (int k = 0; k < 4; k++) g.data[rand() % g.len] = (unsigned char)rand();
    sd_error e = {0};
    if (sd_t5_tokenizer_load_model(&tok, g.data, g.len, &e) == 0) {
      int32_t ids[16];
      sd_t5_tokenize(tok, "a Qb#\txyz", ids, 16, &e);
      sd_t5_tokenizer_free(tok);
    }
  }
  unsigned char junk[64];
  for (int i = 0; i < 64; i++) junk[i] = (unsigned char)(i * 37 + 11);
  CHECK(sd_t5_tokenizer_load_model(&tok, junk, sizeof junk, &err) != 0 && !tok);
  CHECK(sd_t5_tokenizer_load_dir(&tok, "/nonexistent/dir", &err) == SD_ERR_IO && !tok);
  /* a file's error names the file */
  char dir[] = "/tmp/sdgen_test_t5bad_XXXXXX", path[128];
  if (mkdtemp(dir)) {
    snprintf(path, sizeof path, "%s/spiece.model", dir);
    FILE *f = fopen(path, "wb");
    if (f) {
      fwrite(junk, 1, sizeof junk, f);
      fclose(f);
    }
    sd_error e = {0};
    CHECK(sd_t5_tokenizer_load_dir(&tok, dir, &e) == SD_ERR_FORMAT && !tok);
    CHECK_MSG(strstr(e.msg, path) && strstr(e.msg, "protobuf"), "message: %s", e.msg);
    unlink(path);
    rmdir(dir);
  }
}

static void base64(const unsigned char *in, size_t n, char *out) {
  static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t w = 0;
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) |
                 (i + 2 < n ? in[i + 2] : 0);
    out[w++] = tab[v >> 18 & 63];
    out[w++] = tab[v >> 12 & 63];
    out[w++] = i + 1 < n ? tab[v >> 6 & 63] : '=';
    out[w++] = i + 2 < n ? tab[v & 63] : '=';
  }
  out[w] = 0;
}

static void test_tokenizer_json(void) {
  char dir[] = "/tmp/sdgen_test_t5_XXXXXX";
  if (!mkdtemp(dir)) {
    CHECK(0);
    return;
  }
  static unsigned char cmap[1 << 14];
  static char b64[1 << 15];
  base64(cmap, build_charsmap(cmap), b64);
  char path[256];
  snprintf(path, sizeof path, "%s/tokenizer.json", dir);
  FILE *f = fopen(path, "wb");
  if (!f) {
    CHECK(0);
    return;
  }
  fprintf(f,
          "{\"added_tokens\": [{\"id\": 0, \"content\": \"<pad>\", \"special\": true},"
          "{\"id\": 1, \"content\": \"</s>\", \"special\": true},"
          "{\"id\": 2, \"content\": \"<unk>\", \"special\": true}],"
          "\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Precompiled\","
          "\"precompiled_charsmap\": \"%s\"}]},"
          "\"model\": {\"type\": \"Unigram\", \"unk_id\": 2, \"vocab\": [",
          b64);
  for (int i = 0; i < N_PIECES - 1; i++) /* no "unused" type in tokenizer.json */
    fprintf(f, "%s[\"%s\", %g]", i ? "," : "", pieces[i].text, pieces[i].score);
  fprintf(f, "]}}");
  fclose(f);
  sd_t5_tokenizer *tok = NULL;
  sd_error err = {0};
  int rc = sd_t5_tokenizer_load_dir(&tok, dir, &err);
  CHECK_MSG(rc == 0, "tokenizer.json: %s", err.msg);
  if (!rc) {
    check_segmentation(tok, 0);
    sd_t5_tokenizer_free(tok);
  }
  unlink(path);
  rmdir(dir);
}

/* Allocation N fails, for N = 1, 2, ... until a load + tokenize completes. */
static void test_alloc_failures(void) {
  static buf m;
  build_model(&m, 1);
  int64_t before = sd_alloc_get_stats().bytes_in_use;
  int completed = 0, unclean = 0;
  for (int64_t n = 1; n < 10000 && !completed; n++) {
    sd_alloc_fail_at(n, 1);
    sd_t5_tokenizer *tok = NULL;
    sd_error err = {0};
    int32_t ids[16];
    int rc = sd_t5_tokenizer_load_model(&tok, m.data, m.len, &err);
    if (!rc) rc = sd_t5_tokenize(tok, "Qa ab xyz #b", ids, 16, &err);
    if (rc && (rc != SD_ERR_OOM || !err.msg[0])) unclean++;
    completed = !sd_alloc_fault_triggered();
    sd_t5_tokenizer_free(tok);
    sd_alloc_fail_at(0, 0);
    if (sd_alloc_get_stats().bytes_in_use != before) unclean++;
  }
  CHECK(completed);
  CHECK_MSG(unclean == 0, "%d runs failed uncleanly or leaked", unclean);
}

int main(void) {
  test_model_proto();
  test_malformed_models();
  test_tokenizer_json();
  test_alloc_failures();
  return test_finish();
}
