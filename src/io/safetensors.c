#define _GNU_SOURCE
#include "io/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/alloc.h"
#include "io/json.h"

/* A mapped file, shared by every set that holds views into it. */
typedef struct mapped_file {
  int refs;
  void *base;
  size_t size;
  char *path;
  /* Set instead of base/size for a tensor handed over by
   * sd_weights_put_owned: the refcount then governs its lifetime. */
  sd_tensor *owned;
} mapped_file;

typedef struct entry {
  char *name;
  sd_tensor view;
  mapped_file *file;
} entry;

struct sd_weights {
  entry *entries;
  int count, cap;
  int *slots; /* open addressing over entries; -1 = empty */
  int nslots;
};

static uint32_t hash_name(const char *s) {
  uint32_t h = 2166136261u;
  while (*s) h = (h ^ (unsigned char)*s++) * 16777619u;
  return h;
}

sd_weights *sd_weights_new(void) {
  sd_weights *w = sd_calloc(1, sizeof *w);
  return w;
}

static void file_unref(mapped_file *f) {
  if (!f || --f->refs > 0) return;
  if (f->base && f->size) munmap(f->base, f->size);
  sd_tensor_free(f->owned);
  sd_free(f->path);
  sd_free(f);
}

static int find_slot(const sd_weights *w, const char *name) {
  if (!w->nslots) return -1;
  uint32_t mask = (uint32_t)w->nslots - 1;
  for (uint32_t i = hash_name(name) & mask;; i = (i + 1) & mask) {
    int e = w->slots[i];
    if (e < 0) return -(int)i - 2;
    if (strcmp(w->entries[e].name, name) == 0) return (int)i;
  }
}

static int rehash(sd_weights *w, int nslots) {
  int *slots = sd_alloc(sizeof(int) * (size_t)nslots);
  if (!slots) return -1;
  for (int i = 0; i < nslots; i++) slots[i] = -1;
  uint32_t mask = (uint32_t)nslots - 1;
  for (int e = 0; e < w->count; e++) {
    uint32_t i = hash_name(w->entries[e].name) & mask;
    while (slots[i] >= 0) i = (i + 1) & mask;
    slots[i] = e;
  }
  sd_free(w->slots);
  w->slots = slots;
  w->nslots = nslots;
  return 0;
}

/* Adds an entry; returns SD_OK, SD_ERR_OOM, or SD_ERR_FORMAT on duplicates. */
static int put(sd_weights *w, const char *name, const sd_tensor *view,
               mapped_file *file, sd_error *err) {
  if ((w->count + 1) * 2 > w->nslots &&
      rehash(w, w->nslots ? w->nslots * 2 : 64))
    return sd_fail(err, SD_ERR_OOM, "out of memory indexing weights");
  int slot = find_slot(w, name);
  if (slot >= 0)
    return sd_fail(err, SD_ERR_FORMAT, "duplicate tensor name '%s'", name);
  if (w->count == w->cap) {
    int cap = w->cap ? w->cap * 2 : 64;
    entry *e = sd_alloc(sizeof(entry) * (size_t)cap);
    if (!e) return sd_fail(err, SD_ERR_OOM, "out of memory indexing weights");
    if (w->count) memcpy(e, w->entries, sizeof(entry) * (size_t)w->count);
    sd_free(w->entries);
    w->entries = e;
    w->cap = cap;
  }
  entry *e = &w->entries[w->count];
  e->name = sd_strdup(name);
  if (!e->name) return sd_fail(err, SD_ERR_OOM, "out of memory indexing weights");
  e->view = *view;
  e->view.owns_data = view->owns_data == 2 ? 2 : 0; /* 2: heap data held by the set */
  e->file = file;
  if (file) file->refs++;
  w->slots[-slot - 2] = w->count++;
  return SD_OK;
}

typedef struct span {
  uint64_t begin, end;
  const char *name;
} span;

static int cmp_span(const void *a, const void *b) {
  const span *x = a, *y = b;
  return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* Parses and validates the header; when `w` is non-NULL also adds the views
 * (data pointers relative to `data_base`). */
static int parse_header(const unsigned char *buf, uint64_t avail,
                        uint64_t file_size, sd_weights *w, mapped_file *file,
                        const char *prefix, const char *what, sd_error *err) {
  if (file_size < 8 || avail < 8)
    return sd_fail(err, SD_ERR_FORMAT, "%s: too short to be a safetensors file",
                   what);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | buf[i];
  if (hlen < 2 || hlen > file_size - 8 || hlen > (100u << 20))
    return sd_fail(err, SD_ERR_FORMAT,
                   "%s: header length %llu does not fit the file (%llu bytes)",
                   what, (unsigned long long)hlen,
                   (unsigned long long)file_size);
  if (hlen > avail - 8)
    return sd_fail(err, SD_ERR_FORMAT, "%s: header truncated", what);
  const char *json = (const char *)buf + 8;
  cJSON *root = cJSON_ParseWithLength(json, (size_t)hlen);
  if (!root || !cJSON_IsObject(root)) {
    cJSON_Delete(root);
    return sd_fail(err, SD_ERR_FORMAT, "%s: header is not a JSON object", what);
  }
  uint64_t data_size = file_size - 8 - hlen;
  const unsigned char *data_base = buf + 8 + hlen;
  int n = cJSON_GetArraySize(root);
  span *spans = sd_alloc(sizeof(span) * (size_t)(n ? n : 1));
  int nspans = 0, rc = SD_OK;
  if (!spans) {
    cJSON_Delete(root);
    return sd_fail(err, SD_ERR_OOM, "out of memory reading %s", what);
  }
  const cJSON *it;
  cJSON_ArrayForEach(it, root) {
    if (strcmp(it->string, "__metadata__") == 0) continue;
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(it, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
    if (!cJSON_IsObject(it) || !cJSON_IsString(dt) || !cJSON_IsArray(sh) ||
        !cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2) {
      rc = sd_fail(err, SD_ERR_FORMAT, "%s: bad header entry for '%s'", what,
                   it->string);
      break;
    }
    int dtype = sd_dtype_from_name(dt->valuestring);
    if (dtype < 0) {
      rc = sd_fail(err, SD_ERR_FORMAT, "%s: tensor '%s' has unknown dtype '%s'",
                   what, it->string, dt->valuestring);
      break;
    }
    sd_tensor view = {0};
    view.dtype = (sd_dtype)dtype;
    view.ndim = cJSON_GetArraySize(sh);
    if (view.ndim > SD_MAX_DIMS) {
      rc = sd_fail(err, SD_ERR_FORMAT, "%s: tensor '%s' has too many dims", what,
                   it->string);
      break;
    }
    uint64_t numel = 1;
    int i = 0, bad = 0;
    const cJSON *d;
    cJSON_ArrayForEach(d, sh) {
      if (!cJSON_IsNumber(d) || d->valuedouble < 0 ||
          d->valuedouble > 9.0e15 || d->valuedouble != (double)(int64_t)d->valuedouble) {
        bad = 1;
        break;
      }
      view.shape[i++] = (int64_t)d->valuedouble;
      if (view.shape[i - 1] && numel > UINT64_MAX / 16 / (uint64_t)view.shape[i - 1])
        bad = 1;
      else
        numel *= (uint64_t)view.shape[i - 1];
    }
    const cJSON *b0 = cJSON_GetArrayItem(off, 0), *b1 = cJSON_GetArrayItem(off, 1);
    if (bad || !cJSON_IsNumber(b0) || !cJSON_IsNumber(b1) || b0->valuedouble < 0 ||
        b1->valuedouble < b0->valuedouble || b1->valuedouble > 1.8e19) {
      rc = sd_fail(err, SD_ERR_FORMAT, "%s: tensor '%s' has a bad shape or offsets",
                   what, it->string);
      break;
    }
    uint64_t begin = (uint64_t)b0->valuedouble, end = (uint64_t)b1->valuedouble;
    if (end > data_size) {
      rc = sd_fail(err, SD_ERR_FORMAT,
                   "%s: tensor '%s' extends past the end of the file (truncated?)",
                   what, it->string);
      break;
    }
    if (end - begin != numel * sd_dtype_size(view.dtype)) {
      rc = sd_fail(err, SD_ERR_FORMAT,
                   "%s: tensor '%s' byte size %llu disagrees with its shape",
                   what, it->string, (unsigned long long)(end - begin));
      break;
    }
    spans[nspans].begin = begin;
    spans[nspans].end = end;
    spans[nspans].name = it->string;
    nspans++;
    if (w) {
      char name[1024];
      snprintf(name, sizeof name, "%s%s", prefix ? prefix : "", it->string);
      view.data = (void *)(data_base + begin);
      rc = put(w, name, &view, file, err);
      if (rc) break;
    }
  }
  if (rc == SD_OK && nspans > 1) {
    qsort(spans, (size_t)nspans, sizeof(span), cmp_span);
    for (int i = 1; i < nspans; i++)
      if (spans[i].begin < spans[i - 1].end && spans[i].end > spans[i].begin) {
        rc = sd_fail(err, SD_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap", what,
                     spans[i - 1].name, spans[i].name);
        break;
      }
  }
  sd_free(spans);
  cJSON_Delete(root);
  return rc;
}

int sd_safetensors_check(const unsigned char *buf, uint64_t avail,
                         uint64_t file_size, sd_error *err) {
  return parse_header(buf, avail, file_size, NULL, NULL, NULL, "input", err);
}

int sd_weights_add_file(sd_weights *w, const char *path, const char *prefix,
                        sd_error *err) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return sd_fail(err, SD_ERR_IO, "cannot open %s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return sd_fail(err, SD_ERR_IO, "%s is not a regular file", path);
  }
  if (st.st_size < 8) {
    close(fd);
    return sd_fail(err, SD_ERR_FORMAT, "%s: too short to be a safetensors file",
                   path);
  }
  void *base = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (base == MAP_FAILED)
    return sd_fail(err, SD_ERR_IO, "cannot map %s: %s", path, strerror(errno));
  mapped_file *f = sd_calloc(1, sizeof *f);
  if (!f || !(f->path = sd_strdup(path))) {
    munmap(base, (size_t)st.st_size);
    sd_free(f);
    return sd_fail(err, SD_ERR_OOM, "out of memory opening %s", path);
  }
  f->base = base;
  f->size = (size_t)st.st_size;
  f->refs = 1; /* held by this function until the end */
  int before = w->count;
  int rc = parse_header(base, f->size, f->size, w, f, prefix, path, err);
  if (rc) { /* roll back entries added from this file */
    for (int i = before; i < w->count; i++) {
      sd_free(w->entries[i].name);
      w->entries[i].file->refs--;
    }
    w->count = before;
    rehash(w, w->nslots ? w->nslots : 64);
  }
  file_unref(f);
  return rc;
}

static int ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcmp(s + a - b, suffix) == 0;
}

int sd_weights_open(sd_weights **out, const char *path, sd_error *err) {
  *out = NULL;
  sd_weights *w = sd_weights_new();
  if (!w) return sd_fail(err, SD_ERR_OOM, "out of memory");
  int rc = SD_OK;
  if (ends_with(path, ".index.json")) {
    cJSON *idx = NULL;
    rc = sd_json_read_file(path, &idx, err);
    const cJSON *map = idx ? cJSON_GetObjectItemCaseSensitive(idx, "weight_map") : NULL;
    if (!rc && !cJSON_IsObject(map))
      rc = sd_fail(err, SD_ERR_FORMAT, "%s: no weight_map", path);
    /* Each shard once, in order of first appearance. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) slash[1] = 0; else dir[0] = 0;
    const cJSON *it;
    char **seen = NULL;
    int nseen = 0;
    if (!rc) {
      seen = sd_calloc((size_t)cJSON_GetArraySize(map) + 1, sizeof(char *));
      if (!seen) rc = sd_fail(err, SD_ERR_OOM, "out of memory");
    }
    if (!rc) cJSON_ArrayForEach(it, map) {
      if (!cJSON_IsString(it) || strchr(it->valuestring, '/')) {
        rc = sd_fail(err, SD_ERR_FORMAT, "%s: bad shard name", path);
        break;
      }
      int dup = 0;
      for (int i = 0; i < nseen; i++) dup |= strcmp(seen[i], it->valuestring) == 0;
      if (dup) continue;
      seen[nseen++] = it->valuestring;
      char shard[4096];
      snprintf(shard, sizeof shard, "%s%s", dir, it->valuestring);
      rc = sd_weights_add_file(w, shard, NULL, err);
      if (rc) break;
    }
    if (!rc) cJSON_ArrayForEach(it, map) {
      if (!sd_weights_get(w, it->string)) {
        rc = sd_fail(err, SD_ERR_FORMAT, "%s: tensor '%s' missing from its shard",
                     path, it->string);
        break;
      }
    }
    sd_free(seen);
    cJSON_Delete(idx);
  } else {
    rc = sd_weights_add_file(w, path, NULL, err);
  }
  if (rc) {
    sd_weights_free(w);
    return rc;
  }
  *out = w;
  return SD_OK;
}

int sd_weights_alias(sd_weights *w, const char *name, const sd_weights *src,
                     const char *existing, sd_error *err) {
  int slot = find_slot(src, existing);
  if (slot < 0) return sd_fail(err, SD_ERR_ARG, "tensor '%s' not found", existing);
  const entry *e = &src->entries[src->slots[slot]];
  sd_tensor view = e->view;
  return put(w, name, &view, e->file, err);
}

int sd_weights_put_owned(sd_weights *w, const char *name, sd_tensor *t,
                         sd_error *err) {
  mapped_file *holder = sd_calloc(1, sizeof *holder);
  if (!holder) {
    sd_tensor_free(t);
    return sd_fail(err, SD_ERR_OOM, "out of memory adding '%s'", name);
  }
  holder->owned = t;
  holder->refs = 1; /* dropped below: the entry (and its aliases) keep it */
  int rc = put(w, name, t, holder, err);
  /* Heap data, not a file mapping: mark the view so residency code never
   * drops its pages (owns_data 2 = owned by the set, not by the view). */
  if (!rc) w->entries[w->count - 1].view.owns_data = 2;
  file_unref(holder);
  return rc;
}

int sd_weights_alias_rows(sd_weights *w, const char *name, const sd_weights *src,
                          const char *existing, int64_t row_begin, int64_t rows,
                          sd_error *err) {
  int slot = find_slot(src, existing);
  if (slot < 0) return sd_fail(err, SD_ERR_ARG, "tensor '%s' not found", existing);
  const entry *e = &src->entries[src->slots[slot]];
  sd_tensor view = e->view;
  if (view.ndim < 1 || row_begin < 0 || rows < 0 ||
      row_begin > view.shape[0] - rows)
    return sd_fail(err, SD_ERR_ARG, "rows [%lld, %lld) outside tensor '%s'",
                   (long long)row_begin, (long long)(row_begin + rows), existing);
  size_t row_bytes = sd_dtype_size(view.dtype);
  for (int i = 1; i < view.ndim; i++) row_bytes *= (size_t)view.shape[i];
  view.data = (char *)view.data + (size_t)row_begin * row_bytes;
  view.shape[0] = rows;
  return put(w, name, &view, e->file, err);
}

int sd_weights_set_side(sd_weights *w, const char *name, const struct sd_lowrank *side,
                        sd_error *err) {
  int slot = find_slot(w, name);
  if (slot < 0) return sd_fail(err, SD_ERR_ARG, "tensor '%s' not found", name);
  w->entries[w->slots[slot]].view.side = side;
  return SD_OK;
}

int sd_weights_replace_owned(sd_weights *w, const char *name, sd_tensor *t, sd_error *err) {
  int slot = find_slot(w, name);
  mapped_file *holder = slot >= 0 ? sd_calloc(1, sizeof *holder) : NULL;
  if (!holder) {
    sd_tensor_free(t);
    return slot < 0 ? sd_fail(err, SD_ERR_ARG, "tensor '%s' not found", name)
                    : sd_fail(err, SD_ERR_OOM, "out of memory replacing '%s'", name);
  }
  holder->owned = t;
  holder->refs = 1; /* held by the entry */
  entry *e = &w->entries[w->slots[slot]];
  file_unref(e->file);
  e->file = holder;
  e->view = *t;
  e->view.owns_data = 2; /* heap data held by the set: never madvised */
  e->view.side = NULL;
  return SD_OK;
}

const sd_tensor *sd_weights_get(const sd_weights *w, const char *name) {
  int slot = find_slot(w, name);
  return slot >= 0 ? &w->entries[w->slots[slot]].view : NULL;
}

const sd_tensor *sd_weights_getf(const sd_weights *w, const char *fmt, ...) {
  char name[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  return sd_weights_get(w, name);
}

int sd_weights_need(const sd_weights *w, const char *name, int ndim,
                    const int64_t *shape, const sd_tensor **out, sd_error *err) {
  const sd_tensor *t = sd_weights_get(w, name);
  *out = NULL;
  if (!t) return sd_fail(err, SD_ERR_FORMAT, "missing tensor '%s'", name);
  if (t->dtype != SD_F32 && t->dtype != SD_F16 && t->dtype != SD_BF16)
    return sd_fail(err, SD_ERR_FORMAT, "tensor '%s' has unsupported dtype %s",
                   name, sd_dtype_name(t->dtype));
  if (ndim > 0) {
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
      ok = shape[i] < 0 || shape[i] == t->shape[i];
    if (!ok) {
      char got[128], want[128] = "[";
      size_t u = 1;
      for (int i = 0; i < ndim && u < sizeof want; i++)
        u += (size_t)snprintf(want + u, sizeof want - u, "%s%lld", i ? ", " : "",
                              (long long)shape[i]);
      if (u < sizeof want) snprintf(want + u, sizeof want - u, "]");
      return sd_fail(err, SD_ERR_FORMAT,
                     "tensor '%s' has shape %s, expected %s from the config",
                     name, sd_tensor_shape_str(t, got, sizeof got), want);
    }
  }
  *out = t;
  return SD_OK;
}

int sd_weights_count(const sd_weights *w) { return w->count; }
const char *sd_weights_name_at(const sd_weights *w, int i) {
  return w->entries[i].name;
}
const sd_tensor *sd_weights_tensor_at(const sd_weights *w, int i) {
  return &w->entries[i].view;
}

int sd_weights_has_prefix(const sd_weights *w, const char *prefix) {
  size_t n = strlen(prefix);
  for (int i = 0; i < w->count; i++)
    if (strncmp(w->entries[i].name, prefix, n) == 0) return 1;
  return 0;
}

uint64_t sd_weights_total_bytes(const sd_weights *w) {
  uint64_t total = 0;
  for (int i = 0; i < w->count; i++) {
    int dup = 0; /* aliases share data: count each pointer once */
    for (int j = 0; j < i && !dup; j++)
      dup = w->entries[j].view.data == w->entries[i].view.data &&
            w->entries[i].view.data != NULL;
    if (!dup) total += sd_tensor_nbytes(&w->entries[i].view);
  }
  return total;
}

void sd_weights_release_pages(sd_weights *w) {
  for (int i = 0; i < w->count; i++) {
    mapped_file *f = w->entries[i].file;
    if (f && f->base) madvise(f->base, f->size, MADV_DONTNEED);
  }
}

void sd_weights_free(sd_weights *w) {
  if (!w) return;
  for (int i = 0; i < w->count; i++) {
    sd_free(w->entries[i].name);
    file_unref(w->entries[i].file);
  }
  sd_free(w->entries);
  sd_free(w->slots);
  sd_free(w);
}
