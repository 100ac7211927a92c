/* CLIP BPE tokenizer on a toy vocabulary written by the test: merges by
 * rank, special tokens (incl. pad "!"), normalization, truncation and
 * padding, config-driven loading, malformed files, and a random-bytes fuzz
 * loop. Needs no fixtures. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/alloc.h"
#include "test_util.h"
#include "text/clip_tokenizer.h"

static char tmp_dir[256];

static void write_file(const char *name, const char *text) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", tmp_dir, name);
  FILE *f = fopen(path, "wb");
  if (!f) {
    fprintf(stderr, "cannot write %s\n", path);
    exit(1);
  }
  fputs(text, f);
  fclose(f);
}

static const char *tmp_path(const char *name) {
  static char path[4][512];
  static int k;
  k = (k + 1) % 4;
  snprintf(path[k], sizeof path[k], "%s/%s", tmp_dir, name);
  return path[k];
}

/* GPT-2 byte order: printable Latin-1 first, then the rest mapped to U+0100+. */
static int byte_unicode(int b, int *next_extra) {
  int printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  return printable ? b : 256 + (*next_extra)++;
}

static int utf8(int cp, char *o) {
  if (cp < 0x80) {
    o[0] = (char)cp;
    return 1;
  }
  o[0] = (char)(0xc0 | (cp >> 6));
  o[1] = (char)(0x80 | (cp & 0x3f));
  return 2;
}

/* JSON string body of a symbol (escapes '"' and '\\'). */
static void json_key(char *out, const char *sym) {
  char *o = out;
  *o++ = '"';
  for (const char *s = sym; *s; s++) {
    if (*s == '"' || *s == '\\') *o++ = '\\';
    *o++ = *s;
  }
  *o++ = '"';
  *o = 0;
}

/* Toy vocabulary: ids 0..255 the byte symbols in GPT-2 order ("!" = 0),
 * 256..511 the same with "</w>", then the given merged pieces, then bos/eos.
 * Returns the id of the first extra piece. */
static int write_vocab(const char *name, const char **extra, int n_extra, int *bos, int *eos) {
  static char buf[1 << 16];
  char *o = buf;
  int id = 0, next_extra = 0;
  char syms[256][8];
  int order[256], n = 0;
  /* printable bytes first, in byte order, then the others */
  for (int pass = 0; pass < 2; pass++)
    for (int b = 0; b < 256; b++) {
      int printable =
          (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
      if (printable == (pass == 0)) order[n++] = b;
    }
  for (int b = 0; b < 256; b++) {
    int cp = byte_unicode(b, &next_extra);
    int len = utf8(cp, syms[b]);
    syms[b][len] = 0;
  }
  o += sprintf(o, "{");
  for (int pass = 0; pass < 2; pass++)
    for (int i = 0; i < 256; i++) {
      char key[64], sym[16];
      snprintf(sym, sizeof sym, "%s%s", syms[order[i]], pass ? "</w>" : "");
      json_key(key, sym);
      o += sprintf(o, "%s%s:%d", id ? "," : "", key, id);
      id++;
    }
  int first_extra = id;
  for (int i = 0; i < n_extra; i++) {
    char key[128];
    json_key(key, extra[i]);
    o += sprintf(o, ",%s:%d", key, id++);
  }
  *bos = id;
  o += sprintf(o, ",\"<|startoftext|>\":%d", id++);
  *eos = id;
  o += sprintf(o, ",\"<|endoftext|>\":%d}", id++);
  write_file(name, buf);
  return first_extra;
}

/* Id of a single printable ASCII character symbol in the toy vocab. */
static int char_id(char c, int end_of_word) {
  return (c - '!') + (end_of_word ? 256 : 0);
}

static int raw(const sd_clip_tokenizer *tok, const char *text, int32_t *out, int cap) {
  int32_t *ids;
  int n;
  sd_error err = {0};
  if (sd_clip_tokenize_raw(tok, text, &ids, &n, &err)) {
    fprintf(stderr, "tokenize failed: %s\n", err.msg);
    return -1;
  }
  int k = n < cap ? n : cap;
  if (k > 0) memcpy(out, ids, (size_t)k * sizeof(int32_t));
  sd_free(ids);
  return n;
}

static void test_merges_and_specials(void) {
  const char *extra[] = {"bc", "ab", "ll", "he", "hell", "hello</w>", "don", "'t</w>"};
  int bos, eos;
  int base = write_vocab("vocab.json", extra, 8, &bos, &eos);
  /* rank order: "b c" before "a b" */
  write_file("merges.txt",
             "#version: 0.2\nb c\na b\nl l\nh e\nhe ll\nhell o</w>\nd o\nd on\n' t</w>\n");
  /* "d o" / "d on" reference pieces missing from the vocab: loading must
   * refuse; a valid file follows. */
  sd_clip_tokenizer *tok = NULL;
  sd_error err = {0};
  int rc =
      sd_clip_tokenizer_load(&tok, tmp_path("vocab.json"), tmp_path("merges.txt"), eos, 77, &err);
  CHECK(rc == SD_ERR_FORMAT && tok == NULL);
  CHECK_MSG(strstr(err.msg, "merges.txt:8") != NULL, "message: %s", err.msg);

  write_file("merges.txt", "#version: 0.2\nb c\na b\nl l\nh e\nhe ll\nhell o</w>\n' t</w>\r\n");
  sd_error_clear(&err);
  rc = sd_clip_tokenizer_load(&tok, tmp_path("vocab.json"), tmp_path("merges.txt"), eos, 8, &err);
  CHECK_MSG(rc == 0, "load: %s", err.msg);
  if (rc) return;
  int32_t ids[64];
  int n = raw(tok, "abcd", ids, 64);
  /* b c (rank 0) wins over a b (rank 1): a | bc | d</w> */
  CHECK(n == 3 && ids[0] == char_id('a', 0) && ids[1] == base + 0 && ids[2] == char_id('d', 1));
  n = raw(tok, "HELLO hell", ids, 64);
  CHECK(n == 4 && ids[0] == base + 5 && ids[1] == base + 3 && ids[2] == char_id('l', 0) &&
        ids[3] == char_id('l', 1));
  /* contractions split off: don | 't */
  n = raw(tok, "don't", ids, 64);
  CHECK(n == 4 && ids[0] == char_id('d', 0) && ids[3] == base + 7);
  /* special tokens split exactly, case-sensitive */
  n = raw(tok, "a<|endoftext|>a <|ENDOFTEXT|>", ids, 64);
  CHECK(n >= 3 && ids[0] == char_id('a', 1) && ids[1] == eos && ids[2] == char_id('a', 1));
  CHECK(n > 3 && ids[3] != eos);
  /* whitespace only -> nothing; digits one token each */
  CHECK(raw(tok, " \t\n\r  ", ids, 64) == 0);
  n = raw(tok, "x12", ids, 64);
  CHECK(n == 3 && ids[1] == char_id('1', 1) && ids[2] == char_id('2', 1));
  /* "!" is an ordinary symbol with pad <|endoftext|> */
  n = raw(tok, "a!", ids, 64);
  CHECK(n == 2 && ids[1] == char_id('!', 1));

  /* truncation to max_len 8: bos + 6 + eos, padding with eos */
  int32_t padded[8];
  CHECK(sd_clip_tokenize(tok, "a a a a a a a a a", padded, &err) == 0);
  CHECK(padded[0] == bos && padded[7] == eos);
  for (int i = 1; i < 7; i++) CHECK(padded[i] == char_id('a', 1));
  CHECK(sd_clip_tokenize(tok, "", padded, &err) == 0);
  CHECK(padded[0] == bos && padded[1] == eos && padded[7] == eos);
  CHECK(sd_clip_tokenizer_max_len(tok) == 8 && sd_clip_tokenizer_pad_id(tok) == eos);
  sd_clip_tokenizer_free(tok);

  /* pad "!" (id 0): every "!" becomes id 0 before BPE, padding is 0 */
  rc = sd_clip_tokenizer_load(&tok, tmp_path("vocab.json"), tmp_path("merges.txt"), 0, 8, &err);
  CHECK_MSG(rc == 0, "load pad 0: %s", err.msg);
  if (rc) return;
  n = raw(tok, "a!!b", ids, 64);
  CHECK(n == 4 && ids[0] == char_id('a', 1) && ids[1] == 0 && ids[2] == 0 &&
        ids[3] == char_id('b', 1));
  CHECK(sd_clip_tokenize(tok, "a!", padded, &err) == 0);
  CHECK(padded[0] == bos && padded[2] == 0 && padded[3] == eos && padded[4] == 0 && padded[7] == 0);
  sd_clip_tokenizer_free(tok);
}

static void test_load_dir(void) {
  int bos, eos;
  write_vocab("vocab.json", NULL, 0, &bos, &eos);
  write_file("merges.txt", "#version: 0.2\n");
  write_file("tokenizer_config.json",
             "{\"model_max_length\": 12, \"pad_token\": {\"content\": \"!\", \"lstrip\": false}}");
  sd_clip_tokenizer *tok = NULL;
  sd_error err = {0};
  int rc = sd_clip_tokenizer_load_dir(&tok, tmp_dir, &err);
  CHECK_MSG(rc == 0, "load_dir: %s", err.msg);
  if (!rc) {
    CHECK(sd_clip_tokenizer_pad_id(tok) == 0 && sd_clip_tokenizer_max_len(tok) == 12);
    sd_clip_tokenizer_free(tok);
  }
  /* suffixed configs (fixtures layout) and the special tokens map */
  write_file("special_tokens_map_x.json", "{\"pad_token\": \"<|endoftext|>\"}");
  rc = sd_clip_tokenizer_load_dir_suffix(&tok, tmp_dir, "_x", &err);
  CHECK_MSG(rc == 0, "load_dir_suffix: %s", err.msg);
  if (!rc) {
    CHECK(sd_clip_tokenizer_pad_id(tok) == eos && sd_clip_tokenizer_max_len(tok) == 77);
    sd_clip_tokenizer_free(tok);
  }
  unlink(tmp_path("tokenizer_config.json"));
  unlink(tmp_path("special_tokens_map_x.json"));
}

static void expect_load_error(const char *what, int want_code) {
  sd_clip_tokenizer *tok = (sd_clip_tokenizer *)&tok; /* must be reset to NULL */
  sd_error err = {0};
  int rc =
      sd_clip_tokenizer_load(&tok, tmp_path("vocab.json"), tmp_path("merges.txt"), 0, 77, &err);
  CHECK_MSG(rc == want_code && tok == NULL && err.msg[0], "%s: rc %d msg '%s'", what, rc, err.msg);
  if (!rc) sd_clip_tokenizer_free(tok);
}

static void test_malformed_files(void) {
  int bos, eos;
  write_file("merges.txt", "#version: 0.2\n");
  write_file("vocab.json", "[1, 2, 3]");
  expect_load_error("vocab is an array", SD_ERR_FORMAT);
  write_file("vocab.json", "{\"a\": 1, \"b\": ");
  expect_load_error("truncated vocab", SD_ERR_FORMAT);
  write_file("vocab.json", "{\"a\": -1}");
  expect_load_error("negative id", SD_ERR_FORMAT);
  write_file("vocab.json", "{\"a\": 1.5}");
  expect_load_error("fractional id", SD_ERR_FORMAT);
  write_file("vocab.json", "{\"a\\q\": 1}");
  expect_load_error("bad escape", SD_ERR_FORMAT);
  write_file("vocab.json", "{}");
  expect_load_error("empty vocab", SD_ERR_FORMAT);
  write_file("vocab.json", "{\"a\": 0, \"b\": 1}");
  expect_load_error("missing byte symbols", SD_ERR_FORMAT);
  unlink(tmp_path("vocab.json"));
  expect_load_error("missing vocab file", SD_ERR_IO);

  write_vocab("vocab.json", NULL, 0, &bos, &eos);
  write_file("merges.txt", "#version: 0.2\nab\n");
  expect_load_error("merge with one half", SD_ERR_FORMAT);
  write_file("merges.txt", "a b c\n");
  expect_load_error("merge with three parts", SD_ERR_FORMAT);
  write_file("merges.txt", "a b\n");
  expect_load_error("merge result not in vocab", SD_ERR_FORMAT);
  unlink(tmp_path("merges.txt"));
  expect_load_error("missing merges file", SD_ERR_IO);
  write_file("merges.txt", "");
  sd_clip_tokenizer *tok = NULL;
  sd_error err = {0};
  CHECK(sd_clip_tokenizer_load(&tok, tmp_path("vocab.json"), tmp_path("merges.txt"), 99999, 77,
                               &err) == SD_ERR_ARG);
  CHECK(sd_clip_tokenizer_load(&tok, tmp_path("vocab.json"), tmp_path("merges.txt"), 0, 1, &err) ==
        SD_ERR_ARG);
  CHECK(tok == NULL);
}

static void test_normalization(void) {
  int bos, eos;
  write_vocab("vocab.json", NULL, 0, &bos, &eos);
  write_file("merges.txt", "");
  sd_clip_tokenizer *tok = NULL;
  sd_error err = {0};
  CHECK(sd_clip_tokenizer_load(&tok, tmp_path("vocab.json"), tmp_path("merges.txt"), eos, 77,
                               &err) == 0);
  if (!tok) return;
  int32_t a[64], b[64];
  /* NFC: e + U+0301 is the same as U+00E9 */
  int na = raw(tok, "caf\xc3\xa9", a, 64), nb = raw(tok, "cafe\xcc\x81", b, 64);
  CHECK(na == nb && na > 0 && memcmp(a, b, (size_t)na * sizeof(int32_t)) == 0);
  /* capital sigma lowercases to U+03C3 everywhere, never final sigma */
  na = raw(tok, "\xce\xa3", a, 64);
  nb = raw(tok, "\xcf\x83", b, 64);
  CHECK(na == nb && memcmp(a, b, (size_t)na * sizeof(int32_t)) == 0);
  /* no-break space and ideographic space separate words like a space */
  na = raw(tok,
           "a\xc2\xa0"
           "b\xe3\x80\x80"
           "c",
           a, 64);
  nb = raw(tok, "a b c", b, 64);
  CHECK(na == 3 && nb == 3 && memcmp(a, b, 3 * sizeof(int32_t)) == 0);
  /* invalid UTF-8 is replaced, not rejected */
  na = raw(tok,
           "a\xff\xfe"
           "b",
           a, 64);
  CHECK(na > 2);
  sd_clip_tokenizer_free(tok);
}

/* Parity with a direct restatement of the reference algorithm (find the
 * lowest-ranked pair, merge all its non-overlapping occurrences left to
 * right, repeat) on random merge tables over {a, b, c}. */
#define PARITY_MERGES 80
static char parity_sym[PARITY_MERGES + 6][64];
static char parity_left[PARITY_MERGES][64], parity_right[PARITY_MERGES][64];

static int parity_rank(const char *l, const char *r) {
  for (int m = 0; m < PARITY_MERGES; m++)
    if (strcmp(parity_left[m], l) == 0 && strcmp(parity_right[m], r) == 0) return m;
  return -1;
}

static int reference_bpe(const char *word, char out[][64]) {
  int n = (int)strlen(word);
  for (int i = 0; i < n; i++) snprintf(out[i], 64, "%c%s", word[i], i == n - 1 ? "</w>" : "");
  for (;;) {
    int best = -1;
    for (int i = 0; i + 1 < n; i++) {
      int r = parity_rank(out[i], out[i + 1]);
      if (r >= 0 && (best < 0 || r < best)) best = r;
    }
    if (best < 0) return n;
    int w = 0;
    for (int i = 0; i < n;) {
      if (i + 1 < n && strcmp(out[i], parity_left[best]) == 0 &&
          strcmp(out[i + 1], parity_right[best]) == 0) {
        char joined[64];
        snprintf(joined, sizeof joined, "%s%s", out[i], out[i + 1]);
        memcpy(out[w++], joined, 64);
        i += 2;
      } else {
        if (w != i) memcpy(out[w], out[i], 64);
        w++, i++;
      }
    }
    n = w;
  }
}

static void test_parity(void) {
  srand(99);
  for (int round = 0; round < 20; round++) {
    /* symbols known so far: the letters, alone and word-final */
    int n_sym = 0;
    const char *base_syms[] = {"a", "b", "c", "a</w>", "b</w>", "c</w>"};
    for (int i = 0; i < 6; i++) snprintf(parity_sym[n_sym++], 64, "%s", base_syms[i]);
    const char *extra[PARITY_MERGES];
    char merges[PARITY_MERGES * 64] = "";
    int n_merge = 0;
    while (n_merge < PARITY_MERGES) {
      const char *l = parity_sym[rand() % n_sym], *r = parity_sym[rand() % n_sym];
      if (strstr(l, "</w>") || strlen(l) + strlen(r) > 40) continue;
      char joined[128];
      snprintf(joined, sizeof joined, "%s%s", l, r);
      int known = 0;
      for (int i = 0; i < n_sym; i++) known |= strcmp(parity_sym[i], joined) == 0;
      if (known) continue;
      snprintf(parity_left[n_merge], 64, "%s", l);
      snprintf(parity_right[n_merge], 64, "%s", r);
      memcpy(parity_sym[n_sym], joined, strlen(joined) + 1); /* <= 41 bytes */
      extra[n_merge] = parity_sym[n_sym];
      n_sym++;
      strcat(merges, l);
      strcat(merges, " ");
      strcat(merges, r);
      strcat(merges, "\n");
      n_merge++;
    }
    int bos, eos;
    int base = write_vocab("vocab.json", extra, PARITY_MERGES, &bos, &eos);
    write_file("merges.txt", merges);
    sd_clip_tokenizer *tok = NULL;
    sd_error err = {0};
    if (sd_clip_tokenizer_load(&tok, tmp_path("vocab.json"), tmp_path("merges.txt"), eos, 77,
                               &err)) {
      CHECK_MSG(0, "parity load: %s", err.msg);
      return;
    }
    int mismatches = 0;
    for (int iter = 0; iter < 200; iter++) {
      char word[48];
      int len = 1 + rand() % 40;
      for (int i = 0; i < len; i++) word[i] = "abc"[rand() % (1 + rand() % 3)];
      word[len] = 0;
      static char want[64][64];
      int n_want = reference_bpe(word, want);
      int32_t got[64];
      int n_got = raw(tok, word, got, 64);
      int ok = n_got == n_want;
      for (int i = 0; ok && i < n_want; i++) {
        int32_t id = -1;
        if (strlen(want[i]) == 1)
          id = char_id(want[i][0], 0);
        else if (strlen(want[i]) == 5 && strcmp(want[i] + 1, "</w>") == 0)
          id = char_id(want[i][0], 1);
        else
          for (int m = 0; m < PARITY_MERGES; m++)
            if (strcmp(extra[m], want[i]) == 0) id = base + m;
        ok = got[i] == id;
      }
      mismatches += !ok;
    }
    CHECK_MSG(mismatches == 0, "round %d: %d words differ from the reference BPE", round,
              mismatches);
    sd_clip_tokenizer_free(tok);
  }
}

static void test_fuzz(void) {
  const char *extra[] = {"bc", "ab"};
  int bos, eos;
  write_vocab("vocab.json", extra, 2, &bos, &eos);
  write_file("merges.txt", "b c\na b\n");
  sd_clip_tokenizer *tok = NULL;
  sd_error err = {0};
  CHECK(sd_clip_tokenizer_load(&tok, tmp_path("vocab.json"), tmp_path("merges.txt"), 0, 77, &err) ==
        0);
  if (!tok) return;
  srand(1234);
  char text[200];
  int32_t ids[77];
  int failures = 0;
  int vocab = sd_clip_tokenizer_vocab_size(tok);
  for (int iter = 0; iter < 20000; iter++) {
    int len = rand() % 199;
    for (int i = 0; i < len; i++) {
      int r = rand() % 8;
      /* mix of raw bytes, ASCII, spaces and special-token fragments */
      text[i] = r < 3    ? (char)(1 + rand() % 255)
                : r < 5  ? (char)(' ' + rand() % 95)
                : r == 5 ? ' '
                         : "<|!'"[rand() % 4];
    }
    text[len] = 0;
    sd_error e = {0};
    if (sd_clip_tokenize(tok, text, ids, &e)) {
      failures++;
      continue;
    }
    for (int i = 0; i < 77; i++)
      if (ids[i] < 0 || ids[i] >= vocab) failures++;
  }
  CHECK_MSG(failures == 0, "%d fuzz failures", failures);
  sd_clip_tokenizer_free(tok);
}

/* Allocation N fails, for N = 1, 2, ... until a load + tokenize completes:
 * every run must end in a clean error and give back all it allocated. */
static void test_alloc_failures(void) {
  const char *extra[] = {"bc", "ab"};
  int bos, eos;
  write_vocab("vocab.json", extra, 2, &bos, &eos);
  write_file("merges.txt", "b c\na b\n");
  int64_t before = sd_alloc_get_stats().bytes_in_use;
  int completed = 0, unclean = 0;
  for (int64_t n = 1; n < 10000 && !completed; n++) {
    sd_alloc_fail_at(n, 1);
    sd_clip_tokenizer *tok = NULL;
    sd_error err = {0};
    int32_t ids[77];
    int rc =
        sd_clip_tokenizer_load(&tok, tmp_path("vocab.json"), tmp_path("merges.txt"), 0, 77, &err);
    if (!rc) rc = sd_clip_tokenize(tok, "abcd, Hello World! \xe2\x80\xa6 12", ids, &err);
    if (rc && (rc != SD_ERR_OOM || !err.msg[0])) unclean++;
    completed = !sd_alloc_fault_triggered();
    sd_clip_tokenizer_free(tok);
    sd_alloc_fail_at(0, 0);
    if (sd_alloc_get_stats().bytes_in_use != before) unclean++;
  }
  CHECK(completed);
  CHECK_MSG(unclean == 0, "%d runs failed uncleanly or leaked", unclean);
}

int main(void) {
  snprintf(tmp_dir, sizeof tmp_dir, "/tmp/sdgen_test_clip_XXXXXX");
  if (!mkdtemp(tmp_dir)) {
    perror("mkdtemp");
    return 1;
  }
  test_merges_and_specials();
  test_load_dir();
  test_malformed_files();
  test_normalization();
  test_parity();
  test_alloc_failures();
  test_fuzz();
  const char *files[] = {"vocab.json", "merges.txt", "tokenizer_config.json",
                         "special_tokens_map_x.json"};
  for (int i = 0; i < 4; i++) unlink(tmp_path(files[i]));
  rmdir(tmp_dir);
  return test_finish();
}
