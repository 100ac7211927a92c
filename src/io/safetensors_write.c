#include "io/safetensors_write.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int sd_safetensors_write(const char *path, const sd_named_tensor *tensors, int count,
                         const char *metadata_json, sd_error *err) {
  cJSON *h = cJSON_CreateObject();
  if (!h) return sd_fail(err, SD_ERR_OOM, "out of memory");
  if (metadata_json) {
    cJSON *meta = cJSON_Parse(metadata_json);
    if (meta) cJSON_AddItemToObject(h, "__metadata__", meta);
  }
  uint64_t offset = 0;
  for (int i = 0; i < count; i++) {
    const sd_tensor *t = tensors[i].tensor;
    cJSON *e = cJSON_AddObjectToObject(h, tensors[i].name);
    cJSON *shape = e ? cJSON_AddArrayToObject(e, "shape") : NULL;
    cJSON *off = e ? cJSON_AddArrayToObject(e, "data_offsets") : NULL;
    if (!shape || !off) {
      cJSON_Delete(h);
      return sd_fail(err, SD_ERR_OOM, "out of memory");
    }
    cJSON_AddStringToObject(e, "dtype", sd_dtype_name(t->dtype));
    for (int d = 0; d < t->ndim; d++)
      cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
    uint64_t n = sd_tensor_nbytes(t);
    cJSON_AddItemToArray(off, cJSON_CreateNumber((double)offset));
    cJSON_AddItemToArray(off, cJSON_CreateNumber((double)(offset + n)));
    offset += n;
  }
  char *text = cJSON_PrintUnformatted(h);
  cJSON_Delete(h);
  if (!text) return sd_fail(err, SD_ERR_OOM, "out of memory");
  size_t len = strlen(text);
  size_t padded = (len + 7) & ~(size_t)7; /* keep the data 8-byte aligned */
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  FILE *f = fopen(tmp, "wb");
  int rc = SD_OK;
  if (!f) {
    free(text);
    return sd_fail(err, SD_ERR_IO, "cannot write %s: %s", path, strerror(errno));
  }
  unsigned char hdr[8];
  for (int i = 0; i < 8; i++) hdr[i] = (unsigned char)((uint64_t)padded >> (8 * i));
  int ok = fwrite(hdr, 1, 8, f) == 8 && fwrite(text, 1, len, f) == len;
  for (size_t i = len; ok && i < padded; i++) ok = fputc(' ', f) != EOF;
  for (int i = 0; ok && i < count; i++) {
    size_t n = sd_tensor_nbytes(tensors[i].tensor);
    ok = fwrite(tensors[i].tensor->data, 1, n, f) == n;
  }
  free(text);
  if (fclose(f) != 0) ok = 0;
  if (!ok || rename(tmp, path) != 0) {
    rc = sd_fail(err, SD_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    unlink(tmp);
  }
  return rc;
}
