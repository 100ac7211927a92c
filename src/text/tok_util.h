/* Shared pieces of the tokenizers: hash maps sized once at load time, and
 * UTF-8 helpers.
 *
 * Both tokenizers look strings up (vocabulary pieces) and the CLIP one also
 * looks up pairs of ids (merge ranks). The maps are open addressing with
 * power-of-two capacity, filled once while loading and read-only afterwards,
 * so a loaded tokenizer can be shared by threads. */
#ifndef SDGEN_TEXT_TOK_UTIL_H
#define SDGEN_TEXT_TOK_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

/* String -> int32 map. Keys are copied into one growing byte pool. */
typedef struct sd_strmap {
  uint32_t *slots; /* capacity entries: 0 = empty, else entry index + 1 */
  uint32_t capacity;
  uint32_t count;
  uint32_t *key_off; /* (count) offset of each key in pool */
  uint32_t *key_len; /* (count) */
  int32_t *value;    /* (count) */
  uint32_t entries_cap;
  char *pool;
  size_t pool_len, pool_cap;
} sd_strmap;

/* expected_entries and expected_key_bytes size the table and the key pool
 * (0 = a guess); both grow if exceeded. */
int sd_strmap_init(sd_strmap *m, uint32_t expected_entries, size_t expected_key_bytes);
void sd_strmap_free(sd_strmap *m);
/* Inserts or overwrites. SD_ERR_OOM on allocation failure. */
int sd_strmap_put(sd_strmap *m, const char *key, size_t len, int32_t value);
/* Returns 1 and sets *value if found. */
int sd_strmap_get(const sd_strmap *m, const char *key, size_t len, int32_t *value);

/* Pair of 32-bit ids -> (rank, result) map for BPE merges. */
typedef struct sd_pairmap {
  uint64_t *keys;  /* capacity; UINT64_MAX = empty */
  int32_t *rank;   /* capacity */
  int32_t *merged; /* capacity: id of the merged symbol */
  uint32_t capacity;
  uint32_t count;
} sd_pairmap;

int sd_pairmap_init(sd_pairmap *m, uint32_t expected_entries);
void sd_pairmap_free(sd_pairmap *m);
/* Keeps the first insertion of a pair (the lowest rank), as a merges file
 * with a repeated line is read by the reference. */
int sd_pairmap_put(sd_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged);
/* Returns 1 and sets rank/merged if found. */
int sd_pairmap_get(const sd_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *merged);

/* Length in bytes of the valid UTF-8 sequence at s (n bytes available), or 0
 * when the bytes there are not valid UTF-8 (overlong, surrogate, truncated,
 * > U+10FFFF). Sets *cp to the code point when valid. */
int sd_utf8_decode(const unsigned char *s, size_t n, int32_t *cp);
/* Writes cp as UTF-8 into out (4 bytes room), returns the length. */
int sd_utf8_encode(int32_t cp, char *out);

#endif
