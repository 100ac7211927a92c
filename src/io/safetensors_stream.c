#include "io/safetensors_stream.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/alloc.h"

size_t sd_stream_tensor_nbytes(const sd_stream_tensor *t) {
  size_t n = sd_dtype_size(t->dtype);
  for (int d = 0; d < t->ndim; d++) n *= (size_t)t->shape[d];
  return n;
}

/* The header text, unformatted; caller frees with free(). */
static char *build_header(const sd_stream_tensor *tensors, int count,
                          const char *metadata_json, size_t *max_bytes) {
  cJSON *h = cJSON_CreateObject();
  if (!h) return NULL;
  if (metadata_json) {
    cJSON *meta = cJSON_Parse(metadata_json);
    if (meta) cJSON_AddItemToObject(h, "__metadata__", meta);
  }
  uint64_t offset = 0;
  *max_bytes = 0;
  for (int i = 0; i < count; i++) {
    const sd_stream_tensor *t = &tensors[i];
    cJSON *e = cJSON_AddObjectToObject(h, t->name);
    cJSON *shape = e ? cJSON_AddArrayToObject(e, "shape") : NULL;
    cJSON *off = e ? cJSON_AddArrayToObject(e, "data_offsets") : NULL;
    if (!shape || !off || !cJSON_AddStringToObject(e, "dtype", sd_dtype_name(t->dtype))) {
      cJSON_Delete(h);
      return NULL;
    }
    int ok = 1;
    for (int d = 0; d < t->ndim; d++)
      ok &= cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
    size_t n = sd_stream_tensor_nbytes(t);
    if (n > *max_bytes) *max_bytes = n;
    /* Offsets stay below 2^53, exact in a double, for any file that fits a disk. */
    ok &= cJSON_AddItemToArray(off, cJSON_CreateNumber((double)offset));
    ok &= cJSON_AddItemToArray(off, cJSON_CreateNumber((double)(offset + n)));
    if (!ok) { /* a NULL item is refused by AddItemToArray: out of memory */
      cJSON_Delete(h);
      return NULL;
    }
    offset += n;
  }
  char *text = cJSON_PrintUnformatted(h);
  cJSON_Delete(h);
  return text;
}

int sd_safetensors_write_stream(const char *path,
                                const sd_stream_tensor *tensors, int count,
                                const char *metadata_json,
                                sd_tensor_fill_fn fill, void *user,
                                sd_error *err) {
  for (int i = 0; i < count; i++)
    if (!tensors[i].name || tensors[i].ndim < 0 || tensors[i].ndim > SD_MAX_DIMS ||
        sd_dtype_size(tensors[i].dtype) == 0)
      return sd_fail(err, SD_ERR_ARG, "bad tensor description at index %d", i);
  size_t max_bytes = 0;
  char *text = build_header(tensors, count, metadata_json, &max_bytes);
  if (!text) return sd_fail(err, SD_ERR_OOM, "out of memory building a safetensors header");
  size_t len = strlen(text);
  size_t padded = (len + 7) & ~(size_t)7; /* keeps the data section 8-byte aligned */
  unsigned char *buf = sd_alloc(max_bytes ? max_bytes : 1);
  if (!buf) {
    free(text);
    return sd_fail(err, SD_ERR_OOM, "out of memory: %zu bytes for the largest tensor",
                   max_bytes);
  }
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  FILE *f = fopen(tmp, "wb");
  if (!f) {
    free(text);
    sd_free(buf);
    return sd_fail(err, SD_ERR_IO, "cannot write %s: %s", path, strerror(errno));
  }
  unsigned char hdr[8];
  for (int i = 0; i < 8; i++) hdr[i] = (unsigned char)((uint64_t)padded >> (8 * i));
  int ok = fwrite(hdr, 1, 8, f) == 8 && fwrite(text, 1, len, f) == len;
  for (size_t i = len; ok && i < padded; i++) ok = fputc(' ', f) != EOF;
  free(text);
  int rc = SD_OK;
  for (int i = 0; ok && i < count; i++) {
    size_t n = sd_stream_tensor_nbytes(&tensors[i]);
    if ((rc = fill(user, i, buf, n, err))) break;
    ok = fwrite(buf, 1, n, f) == n;
  }
  sd_free(buf);
  if (fclose(f) != 0) ok = 0;
  if (!rc && !ok) rc = sd_fail(err, SD_ERR_IO, "cannot write %s: %s", path, strerror(errno));
  if (!rc && rename(tmp, path) != 0)
    rc = sd_fail(err, SD_ERR_IO, "cannot rename %s into place: %s", path, strerror(errno));
  if (rc) unlink(tmp);
  return rc;
}
