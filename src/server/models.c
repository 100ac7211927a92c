/* Model and LoRA names of the server (see models.h). */
#define _GNU_SOURCE
#include "server/models.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int has_suffix(const char *s, const char *suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a >= b && strcmp(s + a - b, suf) == 0;
}

static int is_model_entry(const char *dir, const char *name) {
  char p[4096];
  struct stat st;
  if (name[0] == '.') return 0;
  if (has_suffix(name, ".safetensors") || has_suffix(name, ".ckpt")) {
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
  }
  snprintf(p, sizeof p, "%s/%s/model_index.json", dir, name);
  return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* A name is one path component: no separators, no "..". */
static int plain_name(const char *s) {
  return s[0] && s[0] != '.' && !strchr(s, '/') && !strchr(s, '\\');
}

/* ORG/NAME of the Hugging Face cache (models--ORG--NAME present). */
static int hub_cached(const char *name) {
  const char *slash = strchr(name, '/');
  if (!slash || strchr(slash + 1, '/') || slash == name || !slash[1]) return 0;
  for (const char *p = name; *p; p++)
    if (!(*p == '/' || *p == '-' || *p == '_' || *p == '.' || (*p >= '0' && *p <= '9') ||
          (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')))
      return 0;
  if (strstr(name, "..")) return 0;
  char cache[4096];
  const char *v;
  if ((v = getenv("HF_HUB_CACHE")) && *v)
    snprintf(cache, sizeof cache, "%s", v);
  else if ((v = getenv("HF_HOME")) && *v)
    snprintf(cache, sizeof cache, "%s/hub", v);
  else if ((v = getenv("XDG_CACHE_HOME")) && *v)
    snprintf(cache, sizeof cache, "%s/huggingface/hub", v);
  else if ((v = getenv("HOME")) && *v)
    snprintf(cache, sizeof cache, "%s/.cache/huggingface/hub", v);
  else
    return 0;
  char p[4200];
  int n = snprintf(p, sizeof p, "%s/models--", cache);
  for (const char *s = name; *s && n < (int)sizeof p - 3; s++) {
    if (*s == '/') {
      p[n++] = '-';
      p[n++] = '-';
    } else {
      p[n++] = *s;
    }
  }
  p[n] = 0;
  struct stat st;
  return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* "name [hash]" as A1111 titles read: the part before " [". */
static void strip_title(const char *name, char *out, size_t n) {
  snprintf(out, n, "%s", name);
  char *b = strstr(out, " [");
  if (b && has_suffix(out, "]")) *b = 0;
}

int srv_model_resolve(const srv_models *m, const char *name_in, char *path, size_t n) {
  char name[512];
  strip_title(name_in, name, sizeof name);
  if (plain_name(name)) {
    for (int i = 0; i < m->n_dirs; i++) {
      if (is_model_entry(m->dirs[i], name)) {
        snprintf(path, n, "%s/%s", m->dirs[i], name);
        return 0;
      }
      /* A1111 clients also send the file name without its extension */
      char f[600];
      snprintf(f, sizeof f, "%s.safetensors", name);
      if (is_model_entry(m->dirs[i], f)) {
        snprintf(path, n, "%s/%s", m->dirs[i], f);
        return 0;
      }
    }
  }
  if (hub_cached(name)) {
    snprintf(path, n, "%s", name);
    return 0;
  }
  if (m->allow_paths && name[0] == '/') {
    struct stat st;
    if (stat(name, &st) == 0) {
      snprintf(path, n, "%s", name);
      return 0;
    }
  }
  return -1;
}

int srv_lora_resolve(const srv_models *m, const char *name, char *path, size_t n) {
  if (plain_name(name)) {
    for (int i = 0; i < m->n_lora_dirs; i++) {
      char p[4096];
      struct stat st;
      snprintf(p, sizeof p, "%s/%s%s", m->lora_dirs[i], name,
               has_suffix(name, ".safetensors") ? "" : ".safetensors");
      if (stat(p, &st) == 0 && S_ISREG(st.st_mode)) {
        snprintf(path, n, "%s", p);
        return 0;
      }
    }
  }
  if (hub_cached(name)) {
    snprintf(path, n, "%s", name);
    return 0;
  }
  if (m->allow_paths && name[0] == '/') {
    snprintf(path, n, "%s", name);
    return 0;
  }
  return -1;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted entries of dir that pass keep(); returns the count, names in
 * *out (free each and the array). */
static int list_dir(const char *dir, int (*keep)(const char *, const char *), char ***out) {
  *out = NULL;
  DIR *d = opendir(dir);
  if (!d) return 0;
  int cnt = 0, cap = 0;
  char **v = NULL;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (!keep(dir, de->d_name)) continue;
    if (cnt == cap) {
      cap = cap ? cap * 2 : 16;
      char **nv = realloc(v, cap * sizeof *v);
      if (!nv) break;
      v = nv;
    }
    if (!(v[cnt] = strdup(de->d_name))) break;
    cnt++;
  }
  closedir(d);
  if (cnt) qsort(v, cnt, sizeof *v, cmp_str);
  *out = v;
  return cnt;
}

static void free_list(char **v, int n) {
  for (int i = 0; i < n; i++) free(v[i]);
  free(v);
}

cJSON *srv_models_list(const srv_models *m) {
  cJSON *a = cJSON_CreateArray();
  for (int i = 0; a && i < m->n_dirs; i++) {
    char **v;
    int n = list_dir(m->dirs[i], is_model_entry, &v);
    for (int k = 0; k < n; k++) {
      cJSON *o = cJSON_CreateObject();
      if (!o) break;
      /* title/model_name as A1111 has them; filename is the name too: local
       * paths stay on the server */
      cJSON_AddStringToObject(o, "title", v[k]);
      cJSON_AddStringToObject(o, "model_name", v[k]);
      cJSON_AddNullToObject(o, "hash");
      cJSON_AddNullToObject(o, "sha256");
      cJSON_AddStringToObject(o, "filename", v[k]);
      cJSON_AddNullToObject(o, "config");
      cJSON_AddItemToArray(a, o);
    }
    free_list(v, n);
  }
  return a;
}

static int is_lora(const char *dir, const char *name) {
  return name[0] != '.' && has_suffix(name, ".safetensors");
}

cJSON *srv_loras_list(const srv_models *m) {
  cJSON *a = cJSON_CreateArray();
  for (int i = 0; a && i < m->n_lora_dirs; i++) {
    char **v;
    int n = list_dir(m->lora_dirs[i], is_lora, &v);
    for (int k = 0; k < n; k++) {
      cJSON *o = cJSON_CreateObject();
      if (!o) break;
      v[k][strlen(v[k]) - strlen(".safetensors")] = 0;
      cJSON_AddStringToObject(o, "name", v[k]);
      cJSON_AddStringToObject(o, "alias", v[k]);
      cJSON_AddItemToArray(a, o);
    }
    free_list(v, n);
  }
  return a;
}

void srv_models_first(const srv_models *m, char *name, size_t n) {
  name[0] = 0;
  for (int i = 0; i < m->n_dirs && !name[0]; i++) {
    char **v;
    int k = list_dir(m->dirs[i], is_model_entry, &v);
    if (k) snprintf(name, n, "%s", v[0]);
    free_list(v, k);
  }
}
