#include "io/json.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"

int sd_read_file(const char *path, char **data, size_t *len, sd_error *err) {
  *data = NULL;
  if (len) *len = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return sd_fail(err, SD_ERR_IO, "cannot open %s: %s", path, strerror(errno));
  if (fseek(f, 0, SEEK_END) != 0) {
    fclose(f);
    return sd_fail(err, SD_ERR_IO, "cannot read %s", path);
  }
  long size = ftell(f);
  rewind(f);
  if (size < 0) {
    fclose(f);
    return sd_fail(err, SD_ERR_IO, "cannot read %s", path);
  }
  char *buf = sd_alloc((size_t)size + 1);
  if (!buf) {
    fclose(f);
    return sd_fail(err, SD_ERR_OOM, "out of memory reading %s", path);
  }
  size_t got = fread(buf, 1, (size_t)size, f);
  fclose(f);
  if (got != (size_t)size) {
    sd_free(buf);
    return sd_fail(err, SD_ERR_IO, "short read on %s", path);
  }
  buf[size] = 0;
  *data = buf;
  if (len) *len = (size_t)size;
  return SD_OK;
}

/* Python's json module writes Infinity, -Infinity and NaN, which cJSON does
 * not accept. Outside string literals they are rewritten in place to numbers
 * strtod reads as +-inf (1e999) and to null; the replacements are no longer
 * than the originals, the rest is padded with spaces. */
static void python_json_specials(char *s, size_t len) {
  int in_string = 0;
  for (size_t i = 0; i < len; i++) {
    char ch = s[i];
    if (in_string) {
      if (ch == '\\') i++;
      else if (ch == '"') in_string = 0;
      continue;
    }
    if (ch == '"') {
      in_string = 1;
    } else if (ch == 'I' && len - i >= 8 && memcmp(s + i, "Infinity", 8) == 0) {
      memcpy(s + i, "1e999   ", 8);
      i += 7;
    } else if (ch == 'N' && len - i >= 3 && memcmp(s + i, "NaN", 3) == 0) {
      memcpy(s + i, "0  ", 3); /* no JSON spelling for NaN; fields are advisory */
      i += 2;
    }
  }
}

int sd_json_read_file(const char *path, cJSON **out, sd_error *err) {
  char *text;
  size_t len;
  *out = NULL;
  int rc = sd_read_file(path, &text, &len, err);
  if (rc) return rc;
  python_json_specials(text, len);
  cJSON *root = cJSON_ParseWithLength(text, len);
  sd_free(text);
  if (!root) return sd_fail(err, SD_ERR_FORMAT, "%s is not valid JSON", path);
  *out = root;
  return SD_OK;
}

static const cJSON *get(const cJSON *obj, const char *key) {
  return obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

double sd_json_num(const cJSON *obj, const char *key, double def) {
  const cJSON *v = get(obj, key);
  return cJSON_IsNumber(v) ? v->valuedouble : def;
}

int sd_json_int(const cJSON *obj, const char *key, int def) {
  const cJSON *v = get(obj, key);
  return cJSON_IsNumber(v) ? (int)v->valuedouble : def;
}

int sd_json_bool(const cJSON *obj, const char *key, int def) {
  const cJSON *v = get(obj, key);
  if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
  return def;
}

const char *sd_json_str(const cJSON *obj, const char *key, const char *def) {
  const cJSON *v = get(obj, key);
  return cJSON_IsString(v) ? v->valuestring : def;
}

int sd_json_has(const cJSON *obj, const char *key) {
  const cJSON *v = get(obj, key);
  return v && !cJSON_IsNull(v);
}

int sd_json_int_array(const cJSON *obj, const char *key, int *out, int max) {
  const cJSON *v = get(obj, key);
  if (cJSON_IsNumber(v)) {
    for (int i = 0; i < max; i++) out[i] = (int)v->valuedouble;
    return max;
  }
  if (!cJSON_IsArray(v)) return -1;
  int n = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, v) {
    if (!cJSON_IsNumber(it) || n >= max) return -1;
    out[n++] = (int)it->valuedouble;
  }
  return n;
}
