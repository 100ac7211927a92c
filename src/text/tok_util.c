#include "text/tok_util.h"

#include <string.h>

#include "base/alloc.h"

static uint64_t hash_bytes(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 1099511628211ull;
  }
  return h ^ (h >> 29);
}

static uint64_t hash_pair(uint64_t key) {
  key ^= key >> 33;
  key *= 0xff51afd7ed558ccdull;
  key ^= key >> 33;
  key *= 0xc4ceb9fe1a85ec53ull;
  key ^= key >> 33;
  return key;
}

static uint32_t capacity_for(uint32_t entries) {
  uint32_t cap = 16;
  while (cap < entries * 2u && cap < (1u << 30)) cap <<= 1;
  return cap;
}

/* ---- string map ---- */

int sd_strmap_init(sd_strmap *m, uint32_t expected_entries, size_t expected_key_bytes) {
  memset(m, 0, sizeof *m);
  m->capacity = capacity_for(expected_entries);
  m->entries_cap = expected_entries > 8 ? expected_entries : 8;
  m->pool_cap = expected_key_bytes ? expected_key_bytes + 1 : (size_t)m->entries_cap * 8;
  m->slots = sd_calloc(m->capacity, sizeof(uint32_t));
  m->key_off = sd_alloc(m->entries_cap * sizeof(uint32_t));
  m->key_len = sd_alloc(m->entries_cap * sizeof(uint32_t));
  m->value = sd_alloc(m->entries_cap * sizeof(int32_t));
  m->pool = sd_alloc(m->pool_cap);
  if (!m->slots || !m->key_off || !m->key_len || !m->value || !m->pool) {
    sd_strmap_free(m);
    return SD_ERR_OOM;
  }
  return SD_OK;
}

void sd_strmap_free(sd_strmap *m) {
  sd_free(m->slots);
  sd_free(m->key_off);
  sd_free(m->key_len);
  sd_free(m->value);
  sd_free(m->pool);
  memset(m, 0, sizeof *m);
}

static uint32_t *strmap_find_slot(const sd_strmap *m, const char *key, size_t len) {
  uint32_t mask = m->capacity - 1;
  uint32_t i = (uint32_t)hash_bytes(key, len) & mask;
  for (;;) {
    uint32_t e = m->slots[i];
    if (e == 0) return &m->slots[i];
    e--;
    if (m->key_len[e] == len && memcmp(m->pool + m->key_off[e], key, len) == 0) return &m->slots[i];
    i = (i + 1) & mask;
  }
}

static int grow_array(void **p, size_t elem, uint32_t old_n, uint32_t new_n) {
  void *q = sd_alloc((size_t)new_n * elem);
  if (!q) return SD_ERR_OOM;
  memcpy(q, *p, (size_t)old_n * elem);
  sd_free(*p);
  *p = q;
  return SD_OK;
}

static int strmap_rehash(sd_strmap *m, uint32_t new_capacity) {
  uint32_t *slots = sd_calloc(new_capacity, sizeof(uint32_t));
  if (!slots) return SD_ERR_OOM;
  sd_free(m->slots);
  m->slots = slots;
  m->capacity = new_capacity;
  for (uint32_t e = 0; e < m->count; e++) {
    uint32_t *slot = strmap_find_slot(m, m->pool + m->key_off[e], m->key_len[e]);
    *slot = e + 1;
  }
  return SD_OK;
}

int sd_strmap_put(sd_strmap *m, const char *key, size_t len, int32_t value) {
  if (len > UINT32_MAX / 2) return SD_ERR_ARG;
  uint32_t *slot = strmap_find_slot(m, key, len);
  if (*slot) {
    m->value[*slot - 1] = value;
    return SD_OK;
  }
  if (m->count == m->entries_cap) {
    uint32_t n = m->entries_cap * 2;
    if (grow_array((void **)&m->key_off, sizeof(uint32_t), m->count, n) ||
        grow_array((void **)&m->key_len, sizeof(uint32_t), m->count, n) ||
        grow_array((void **)&m->value, sizeof(int32_t), m->count, n))
      return SD_ERR_OOM;
    m->entries_cap = n;
  }
  if (m->pool_len + len + 1 > m->pool_cap) {
    size_t cap = m->pool_cap * 2;
    while (cap < m->pool_len + len + 1) cap *= 2;
    if (cap > UINT32_MAX) return SD_ERR_OOM;
    char *pool = sd_alloc(cap);
    if (!pool) return SD_ERR_OOM;
    memcpy(pool, m->pool, m->pool_len);
    sd_free(m->pool);
    m->pool = pool;
    m->pool_cap = cap;
  }
  uint32_t e = m->count++;
  m->key_off[e] = (uint32_t)m->pool_len;
  m->key_len[e] = (uint32_t)len;
  m->value[e] = value;
  memcpy(m->pool + m->pool_len, key, len);
  m->pool[m->pool_len + len] = 0;
  m->pool_len += len + 1;
  *slot = e + 1;
  if (m->count * 2u > m->capacity) return strmap_rehash(m, m->capacity * 2);
  return SD_OK;
}

int sd_strmap_get(const sd_strmap *m, const char *key, size_t len, int32_t *value) {
  if (!m->slots) return 0;
  uint32_t e = *strmap_find_slot(m, key, len);
  if (!e) return 0;
  *value = m->value[e - 1];
  return 1;
}

/* ---- pair map ---- */

int sd_pairmap_init(sd_pairmap *m, uint32_t expected_entries) {
  memset(m, 0, sizeof *m);
  m->capacity = capacity_for(expected_entries);
  m->keys = sd_alloc(m->capacity * sizeof(uint64_t));
  m->rank = sd_alloc(m->capacity * sizeof(int32_t));
  m->merged = sd_alloc(m->capacity * sizeof(int32_t));
  if (!m->keys || !m->rank || !m->merged) {
    sd_pairmap_free(m);
    return SD_ERR_OOM;
  }
  memset(m->keys, 0xff, m->capacity * sizeof(uint64_t));
  return SD_OK;
}

void sd_pairmap_free(sd_pairmap *m) {
  sd_free(m->keys);
  sd_free(m->rank);
  sd_free(m->merged);
  memset(m, 0, sizeof *m);
}

static uint64_t pair_key(int32_t a, int32_t b) {
  return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
}

static uint32_t pairmap_slot(const sd_pairmap *m, uint64_t key) {
  uint32_t mask = m->capacity - 1;
  uint32_t i = (uint32_t)hash_pair(key) & mask;
  while (m->keys[i] != UINT64_MAX && m->keys[i] != key) i = (i + 1) & mask;
  return i;
}

static int pairmap_rehash(sd_pairmap *m) {
  sd_pairmap bigger;
  if (sd_pairmap_init(&bigger, m->capacity)) return SD_ERR_OOM;
  for (uint32_t i = 0; i < m->capacity; i++) {
    if (m->keys[i] == UINT64_MAX) continue;
    uint32_t s = pairmap_slot(&bigger, m->keys[i]);
    bigger.keys[s] = m->keys[i];
    bigger.rank[s] = m->rank[i];
    bigger.merged[s] = m->merged[i];
  }
  bigger.count = m->count;
  sd_pairmap_free(m);
  *m = bigger;
  return SD_OK;
}

int sd_pairmap_put(sd_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged) {
  uint64_t key = pair_key(a, b);
  uint32_t s = pairmap_slot(m, key);
  if (m->keys[s] == key) return SD_OK;
  m->keys[s] = key;
  m->rank[s] = rank;
  m->merged[s] = merged;
  m->count++;
  if (m->count * 2u > m->capacity) return pairmap_rehash(m);
  return SD_OK;
}

int sd_pairmap_get(const sd_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *merged) {
  if (!m->keys) return 0;
  uint32_t s = pairmap_slot(m, pair_key(a, b));
  if (m->keys[s] == UINT64_MAX) return 0;
  *rank = m->rank[s];
  *merged = m->merged[s];
  return 1;
}

/* ---- UTF-8 ---- */

int sd_utf8_decode(const unsigned char *s, size_t n, int32_t *cp) {
  if (n == 0) return 0;
  unsigned c = s[0];
  if (c < 0x80) {
    *cp = (int32_t)c;
    return 1;
  }
  int len;
  int32_t v, min;
  if ((c & 0xe0) == 0xc0) {
    len = 2, v = c & 0x1f, min = 0x80;
  } else if ((c & 0xf0) == 0xe0) {
    len = 3, v = c & 0x0f, min = 0x800;
  } else if ((c & 0xf8) == 0xf0) {
    len = 4, v = c & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if ((size_t)len > n) return 0;
  for (int i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    v = (v << 6) | (s[i] & 0x3f);
  }
  if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return 0;
  *cp = v;
  return len;
}

int sd_utf8_encode(int32_t cp, char *out) {
  unsigned char *o = (unsigned char *)out;
  if (cp < 0x80) {
    o[0] = (unsigned char)cp;
    return 1;
  }
  if (cp < 0x800) {
    o[0] = (unsigned char)(0xc0 | (cp >> 6));
    o[1] = (unsigned char)(0x80 | (cp & 0x3f));
    return 2;
  }
  if (cp < 0x10000) {
    o[0] = (unsigned char)(0xe0 | (cp >> 12));
    o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    o[2] = (unsigned char)(0x80 | (cp & 0x3f));
    return 3;
  }
  o[0] = (unsigned char)(0xf0 | (cp >> 18));
  o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
  o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
  o[3] = (unsigned char)(0x80 | (cp & 0x3f));
  return 4;
}
