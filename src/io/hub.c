#include "io/hub.h"

#include <ctype.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/alloc.h"
#include "io/json.h"
#include "io/sha256.h"

#define HUB_PATH_MAX 4096
#define HUB_DEFAULT_ENDPOINT "https://huggingface.co"
/* Hub API answers (file listings) are small; anything larger is not one. */
#define HUB_API_MAX_BYTES (64u << 20)
#define HUB_PROGRESS_INTERVAL_S 0.1

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */

typedef struct str_list {
  char **items;
  int count, cap;
} str_list;

static int list_push(str_list *l, const char *s) {
  if (l->count == l->cap) {
    int cap = l->cap ? l->cap * 2 : 16;
    char **items = sd_alloc((size_t)cap * sizeof *items);
    if (!items) return SD_ERR_OOM;
    if (l->count) memcpy(items, l->items, (size_t)l->count * sizeof *items);
    sd_free(l->items);
    l->items = items;
    l->cap = cap;
  }
  char *copy = sd_strdup(s);
  if (!copy) return SD_ERR_OOM;
  l->items[l->count++] = copy;
  return SD_OK;
}

static int list_has(const str_list *l, const char *s) {
  for (int i = 0; i < l->count; i++)
    if (strcmp(l->items[i], s) == 0) return 1;
  return 0;
}

static int list_push_unique(str_list *l, const char *s) {
  return list_has(l, s) ? SD_OK : list_push(l, s);
}

static void list_free(str_list *l) {
  for (int i = 0; i < l->count; i++) sd_free(l->items[i]);
  sd_free(l->items);
  l->items = NULL;
  l->count = l->cap = 0;
}

static int ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcmp(s + a - b, suffix) == 0;
}

static int is_hex(const char *s, size_t len) {
  if (strlen(s) != len) return 0;
  for (size_t i = 0; i < len; i++)
    if (!isxdigit((unsigned char)s[i])) return 0;
  return 1;
}

static int env_truthy(const char *name) {
  const char *v = getenv(name);
  if (!v) return 0;
  return strcmp(v, "1") == 0 || strcasecmp(v, "true") == 0 ||
         strcasecmp(v, "yes") == 0 || strcasecmp(v, "on") == 0;
}

static const char *env_nonempty(const char *name) {
  const char *v = getenv(name);
  return v && v[0] ? v : NULL;
}

/* snprintf that reports truncation as an error naming the path. */
static int path_fmt(char *out, size_t n, sd_error *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int path_fmt(char *out, size_t n, sd_error *err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int len = vsnprintf(out, n, fmt, ap);
  va_end(ap);
  if (len < 0 || (size_t)len >= n)
    return sd_fail(err, SD_ERR_ARG, "path too long: %.200s...", out);
  return SD_OK;
}

static int mkdir_p(const char *path, sd_error *err) {
  char buf[HUB_PATH_MAX];
  if (path_fmt(buf, sizeof buf, err, "%s", path)) return SD_ERR_ARG;
  for (char *p = buf + 1;; p++) {
    if (*p != '/' && *p != 0) continue;
    char saved = *p;
    *p = 0;
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
      return sd_fail(err, SD_ERR_IO, "cannot create folder %s: %s", buf,
                     strerror(errno));
    *p = saved;
    if (!saved) break;
  }
  return SD_OK;
}

static int mkdir_parent(const char *path, sd_error *err) {
  char buf[HUB_PATH_MAX];
  if (path_fmt(buf, sizeof buf, err, "%s", path)) return SD_ERR_ARG;
  char *slash = strrchr(buf, '/');
  if (!slash || slash == buf) return SD_OK;
  *slash = 0;
  return mkdir_p(buf, err);
}

static int is_regular_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Reads a short text file's first line (refs, tokens), whitespace trimmed.
 * Returns 0 when absent or empty. */
static int read_first_line(const char *path, char *out, size_t n) {
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  size_t got = fread(out, 1, n - 1, f);
  fclose(f);
  out[got] = 0;
  char *nl = strpbrk(out, "\r\n");
  if (nl) *nl = 0;
  size_t len = strlen(out);
  while (len && isspace((unsigned char)out[len - 1])) out[--len] = 0;
  size_t lead = strspn(out, " \t");
  if (lead) memmove(out, out + lead, len - lead + 1);
  return out[0] != 0;
}

/* Writes text to path through a temporary name so readers never see a
 * half-written ref. */
static int write_text_atomic(const char *path, const char *text, sd_error *err) {
  char tmp[HUB_PATH_MAX];
  if (path_fmt(tmp, sizeof tmp, err, "%s.tmp%ld", path, (long)getpid()))
    return SD_ERR_ARG;
  if (mkdir_parent(path, err)) return SD_ERR_IO;
  FILE *f = fopen(tmp, "wb");
  if (!f) return sd_fail(err, SD_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
  size_t len = strlen(text);
  int ok = fwrite(text, 1, len, f) == len;
  ok = (fclose(f) == 0) && ok;
  if (!ok || rename(tmp, path) != 0) {
    int e = errno;
    unlink(tmp);
    return sd_fail(err, SD_ERR_IO, "cannot write %s: %s", path, strerror(e));
  }
  return SD_OK;
}

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------------ */
/* Options and names                                                         */

sd_hub_options sd_hub_default_options(void) {
  sd_hub_options o;
  memset(&o, 0, sizeof o);
  return o;
}

typedef struct hub_ctx {
  char endpoint[1024];
  char token[1024];
  char cache[HUB_PATH_MAX];
  char revision[256];
  int offline;
  long stall_timeout_s;
  sd_hub_progress_fn progress;
  void *user;
  /* per repo */
  char repo[256];
  char repo_dir[HUB_PATH_MAX];
  char commit[128]; /* empty until the hub or refs/ named it */
  CURL *curl;       /* NULL until the first request */
} hub_ctx;

/* huggingface_hub's HF_HOME: $HF_HOME, else $XDG_CACHE_HOME/huggingface,
 * else ~/.cache/huggingface. */
static int hf_home(char *out, size_t n, sd_error *err) {
  const char *v;
  if ((v = env_nonempty("HF_HOME"))) return path_fmt(out, n, err, "%s", v);
  if ((v = env_nonempty("XDG_CACHE_HOME")))
    return path_fmt(out, n, err, "%s/huggingface", v);
  if ((v = env_nonempty("HOME")))
    return path_fmt(out, n, err, "%s/.cache/huggingface", v);
  return sd_fail(err, SD_ERR_ARG,
                 "cannot locate the Hugging Face cache: set HF_HOME or HOME");
}

int sd_hub_cache_dir(const sd_hub_options *opt, char *out, size_t out_n,
                     sd_error *err) {
  const char *v;
  if (opt && opt->cache_dir && opt->cache_dir[0])
    return path_fmt(out, out_n, err, "%s", opt->cache_dir);
  if ((v = env_nonempty("HF_HUB_CACHE"))) return path_fmt(out, out_n, err, "%s", v);
  if ((v = env_nonempty("HUGGINGFACE_HUB_CACHE")))
    return path_fmt(out, out_n, err, "%s", v);
  char home[HUB_PATH_MAX];
  if (hf_home(home, sizeof home, err)) return SD_ERR_ARG;
  return path_fmt(out, out_n, err, "%s/hub", home);
}

static int load_options(hub_ctx *c, const sd_hub_options *opt, sd_error *err) {
  sd_hub_options none = sd_hub_default_options();
  if (!opt) opt = &none;
  memset(c, 0, sizeof *c);
  const char *endpoint = opt->endpoint && opt->endpoint[0] ? opt->endpoint
                                                           : env_nonempty("HF_ENDPOINT");
  if (!endpoint) endpoint = HUB_DEFAULT_ENDPOINT;
  if (path_fmt(c->endpoint, sizeof c->endpoint, err, "%s", endpoint)) return SD_ERR_ARG;
  size_t len = strlen(c->endpoint);
  while (len && c->endpoint[len - 1] == '/') c->endpoint[--len] = 0;

  if (opt->token && opt->token[0]) {
    if (path_fmt(c->token, sizeof c->token, err, "%s", opt->token)) return SD_ERR_ARG;
  } else if (env_nonempty("HF_TOKEN")) {
    if (path_fmt(c->token, sizeof c->token, err, "%s", getenv("HF_TOKEN")))
      return SD_ERR_ARG;
  } else {
    char path[HUB_PATH_MAX], home[HUB_PATH_MAX];
    const char *token_path = env_nonempty("HF_TOKEN_PATH");
    if (token_path) {
      if (path_fmt(path, sizeof path, err, "%s", token_path)) return SD_ERR_ARG;
    } else {
      sd_error ignored = {0};
      if (hf_home(home, sizeof home, &ignored) == SD_OK &&
          path_fmt(path, sizeof path, &ignored, "%s/token", home) == SD_OK) {
      } else {
        path[0] = 0;
      }
    }
    if (path[0]) read_first_line(path, c->token, sizeof c->token);
  }
  /* Tokens go into a header line: anything that could break it is refused. */
  for (const char *p = c->token; *p; p++)
    if ((unsigned char)*p < 0x21 || *p == 0x7f)
      return sd_fail(err, SD_ERR_ARG,
                     "the Hugging Face token contains spaces or control "
                     "characters; check HF_TOKEN or the token file");

  if (sd_hub_cache_dir(opt, c->cache, sizeof c->cache, err)) return SD_ERR_ARG;
  if (path_fmt(c->revision, sizeof c->revision, err, "%s",
               opt->revision && opt->revision[0] ? opt->revision : "main"))
    return SD_ERR_ARG;
  if (strstr(c->revision, "..") || c->revision[0] == '/')
    return sd_fail(err, SD_ERR_ARG, "invalid revision '%s'", c->revision);
  c->offline = opt->offline || env_truthy("HF_HUB_OFFLINE");
  c->stall_timeout_s = opt->stall_timeout_s > 0 ? opt->stall_timeout_s : 60;
  c->progress = opt->progress;
  c->user = opt->user;
  return SD_OK;
}

static int valid_repo_char(char ch) {
  return isalnum((unsigned char)ch) || ch == '-' || ch == '_' || ch == '.';
}

int sd_hub_parse_name(const char *name, char *repo, size_t repo_n, char *file,
                      size_t file_n, sd_error *err) {
  if (!name || !name[0]) return sd_fail(err, SD_ERR_ARG, "empty model name");
  if (name[0] == '/' || name[0] == '.' || name[0] == '~')
    return sd_fail(err, SD_ERR_ARG, "'%s' is a path, not a hub name", name);
  const char *slash = strchr(name, '/');
  if (!slash) return sd_fail(err, SD_ERR_ARG, "'%s' is not of the form ORG/NAME", name);
  const char *name_end = strchr(slash + 1, '/');
  if (!name_end) name_end = name + strlen(name);
  /* ORG and NAME: the hub's repo id characters, no "." or ".." parts. */
  for (const char *p = name; p < name_end; p++)
    if (p != slash && !valid_repo_char(*p))
      return sd_fail(err, SD_ERR_ARG, "'%s' is not a valid hub repo name", name);
  size_t org_len = (size_t)(slash - name), nm_len = (size_t)(name_end - slash - 1);
  if (!org_len || !nm_len || name[0] == '.' || slash[1] == '.' ||
      name[0] == '-' || slash[1] == '-')
    return sd_fail(err, SD_ERR_ARG, "'%s' is not a valid hub repo name", name);
  size_t repo_len = (size_t)(name_end - name);
  if (repo_len >= repo_n) return sd_fail(err, SD_ERR_ARG, "repo name too long: %s", name);
  memcpy(repo, name, repo_len);
  repo[repo_len] = 0;
  const char *rest = *name_end ? name_end + 1 : name_end;
  if (*name_end && !*rest)
    return sd_fail(err, SD_ERR_ARG, "'%s': invalid path inside the repo", name);
  /* Path inside the repo: non-empty segments, never "." or "..". */
  for (const char *seg = rest; *seg;) {
    const char *end = strchr(seg, '/');
    size_t len = end ? (size_t)(end - seg) : strlen(seg);
    if (len == 0 || (len == 1 && seg[0] == '.') ||
        (len == 2 && seg[0] == '.' && seg[1] == '.'))
      return sd_fail(err, SD_ERR_ARG, "'%s': invalid path inside the repo", name);
    for (size_t i = 0; i < len; i++)
      if ((unsigned char)seg[i] < 0x20 || seg[i] == '\\')
        return sd_fail(err, SD_ERR_ARG, "'%s': invalid path inside the repo", name);
    seg += len;
    if (*seg) seg++;
    if (end && !*seg)
      return sd_fail(err, SD_ERR_ARG, "'%s': invalid path inside the repo", name);
  }
  if (strlen(rest) >= file_n) return sd_fail(err, SD_ERR_ARG, "path too long: %s", name);
  strcpy(file, rest);
  return SD_OK;
}

static int set_repo(hub_ctx *c, const char *repo, sd_error *err) {
  if (path_fmt(c->repo, sizeof c->repo, err, "%s", repo)) return SD_ERR_ARG;
  const char *slash = strchr(repo, '/');
  return path_fmt(c->repo_dir, sizeof c->repo_dir, err, "%s/models--%.*s--%s",
                  c->cache, (int)(slash - repo), repo, slash + 1);
}

/* ------------------------------------------------------------------------ */
/* Which files a pipeline needs                                              */

static int is_used_component(const char *key) {
  return strncmp(key, "text_encoder", 12) == 0 || strncmp(key, "tokenizer", 9) == 0 ||
         strcmp(key, "unet") == 0 || strcmp(key, "transformer") == 0 ||
         strcmp(key, "vae") == 0 || strcmp(key, "scheduler") == 0;
}

static int component_has_weights(const char *key) {
  return strncmp(key, "tokenizer", 9) != 0 && strcmp(key, "scheduler") != 0;
}

static const char *const config_names[] = {
    "config.json",          "scheduler_config.json",   "vocab.json",
    "merges.txt",           "tokenizer_config.json",   "special_tokens_map.json",
    "spiece.model",         "tokenizer.json"};

/* Weight files in order of preference. diffusers inserts the variant before
 * the last extension, so the fp16 shard index is
 * "<base>.safetensors.index.fp16.json". */
static const char *const weight_patterns[] = {
    "%s/%s.fp16.safetensors", "%s/%s.safetensors.index.fp16.json",
    "%s/%s.safetensors", "%s/%s.safetensors.index.json"};
static const char *const weight_bases[] = {"diffusion_pytorch_model", "model"};

static int is_shard_index(const char *path) {
  return ends_with(path, ".safetensors.index.json") ||
         ends_with(path, ".safetensors.index.fp16.json");
}

/* Lists the files of a pipeline repo to fetch, from its model_index.json
 * and the files `present` (the hub's listing or a local snapshot).
 * model_index.json comes first. If a part the pipeline cannot do without
 * is absent (a component's config, its safetensors weights), `missing`
 * names it; that is not an error here. */
static int plan_pipeline(const cJSON *index, const str_list *present, str_list *out,
                         char *missing, size_t missing_n, sd_error *err) {
  char path[HUB_PATH_MAX];
  missing[0] = 0;
  if (list_push(out, "model_index.json")) return sd_fail(err, SD_ERR_OOM, "out of memory");
  const cJSON *item;
  cJSON_ArrayForEach(item, index) {
    const char *key = item->string;
    if (!key || key[0] == '_' || !is_used_component(key)) continue;
    /* Absent components are written as [null, null]. */
    if (!cJSON_IsArray(item) || cJSON_GetArraySize(item) != 2 ||
        cJSON_IsNull(cJSON_GetArrayItem(item, 1)))
      continue;
    int configs = 0;
    for (size_t i = 0; i < sizeof config_names / sizeof *config_names; i++) {
      if (path_fmt(path, sizeof path, err, "%s/%s", key, config_names[i]))
        return SD_ERR_ARG;
      if (!list_has(present, path)) continue;
      if (list_push(out, path)) return sd_fail(err, SD_ERR_OOM, "out of memory");
      configs++;
    }
    if (!configs && !missing[0]) snprintf(missing, missing_n, "%s/ config files", key);
    if (!component_has_weights(key)) continue;
    int found = 0;
    for (size_t p = 0; p < 4 && !found; p++)
      for (size_t b = 0; b < 2 && !found; b++) {
        if (path_fmt(path, sizeof path, err, weight_patterns[p], key, weight_bases[b]))
          return SD_ERR_ARG;
        if (!list_has(present, path)) continue;
        if (list_push(out, path)) return sd_fail(err, SD_ERR_OOM, "out of memory");
        found = 1;
      }
    if (!found && !missing[0])
      snprintf(missing, missing_n, "%s/ safetensors weights", key);
  }
  return SD_OK;
}

/* Adds the shards a *.safetensors.index*.json names (they sit beside it). */
static int index_shards(const char *index_repo_path, const char *local_file,
                        str_list *out, sd_error *err) {
  cJSON *root = NULL;
  if (sd_json_read_file(local_file, &root, err)) return SD_ERR_FORMAT;
  const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
  int rc = SD_OK;
  if (!cJSON_IsObject(map)) {
    rc = sd_fail(err, SD_ERR_FORMAT, "%s has no weight_map", index_repo_path);
    goto done;
  }
  const char *slash = strrchr(index_repo_path, '/');
  int dir_len = slash ? (int)(slash - index_repo_path) : 0;
  const cJSON *entry;
  char path[HUB_PATH_MAX];
  cJSON_ArrayForEach(entry, map) {
    const char *shard = cJSON_IsString(entry) ? entry->valuestring : NULL;
    /* Shards are plain names beside the index; anything else could point
     * outside the repo. */
    if (!shard || !shard[0] || strchr(shard, '/') || strchr(shard, '\\') ||
        shard[0] == '.' || !ends_with(shard, ".safetensors")) {
      rc = sd_fail(err, SD_ERR_FORMAT, "%s names an invalid shard file",
                   index_repo_path);
      goto done;
    }
    if ((rc = path_fmt(path, sizeof path, err, "%.*s%s%s", dir_len, index_repo_path,
                       dir_len ? "/" : "", shard)))
      goto done;
    if (list_push_unique(out, path)) {
      rc = sd_fail(err, SD_ERR_OOM, "out of memory");
      goto done;
    }
  }
done:
  cJSON_Delete(root);
  return rc;
}

/* Relative paths of the readable files under dir (symlinks followed, so a
 * link whose blob is gone does not count). */
static int walk_files(const char *dir, const char *rel, int depth, str_list *out,
                      sd_error *err) {
  if (depth > 8) return SD_OK;
  DIR *d = opendir(dir);
  if (!d) return SD_OK;
  int rc = SD_OK;
  struct dirent *e;
  char full[HUB_PATH_MAX], sub[HUB_PATH_MAX];
  while (rc == SD_OK && (e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    if (path_fmt(full, sizeof full, err, "%s/%s", dir, e->d_name) ||
        path_fmt(sub, sizeof sub, err, "%s%s%s", rel, rel[0] ? "/" : "", e->d_name)) {
      rc = SD_ERR_ARG;
      break;
    }
    struct stat st;
    if (stat(full, &st) != 0) continue;
    if (S_ISDIR(st.st_mode))
      rc = walk_files(full, sub, depth + 1, out, err);
    else if (S_ISREG(st.st_mode) && list_push(out, sub))
      rc = sd_fail(err, SD_ERR_OOM, "out of memory");
  }
  closedir(d);
  return rc;
}

/* Checks that snapshot `snap` holds a whole pipeline. *complete = 1 when it
 * does; otherwise missing names the first absent part. */
static int check_pipeline_snapshot(const char *snap, int *complete, char *missing,
                                   size_t missing_n, char *class_name,
                                   size_t class_n, sd_error *err) {
  str_list present = {0}, plan = {0};
  cJSON *index = NULL;
  char path[HUB_PATH_MAX];
  int rc;
  *complete = 0;
  missing[0] = 0;
  if (class_name) class_name[0] = 0;
  if ((rc = walk_files(snap, "", 0, &present, err))) goto done;
  if (!list_has(&present, "model_index.json")) {
    snprintf(missing, missing_n, "model_index.json");
    goto done;
  }
  if ((rc = path_fmt(path, sizeof path, err, "%s/model_index.json", snap))) goto done;
  sd_error parse_err = {0};
  if (sd_json_read_file(path, &index, &parse_err) || !cJSON_IsObject(index)) {
    snprintf(missing, missing_n, "a readable model_index.json");
    goto done;
  }
  if (class_name) snprintf(class_name, class_n, "%s", sd_json_str(index, "_class_name", ""));
  if ((rc = plan_pipeline(index, &present, &plan, missing, missing_n, err))) goto done;
  if (missing[0]) goto done;
  for (int i = 0; i < plan.count && !missing[0]; i++) {
    if (!is_shard_index(plan.items[i])) continue;
    str_list shards = {0};
    if ((rc = path_fmt(path, sizeof path, err, "%s/%s", snap, plan.items[i]))) goto done;
    sd_error shard_err = {0};
    if (index_shards(plan.items[i], path, &shards, &shard_err)) {
      snprintf(missing, missing_n, "a readable %s", plan.items[i]);
    } else {
      for (int s = 0; s < shards.count; s++)
        if (!list_has(&present, shards.items[s])) {
          snprintf(missing, missing_n, "%s", shards.items[s]);
          break;
        }
    }
    list_free(&shards);
  }
  *complete = !missing[0];
done:
  cJSON_Delete(index);
  list_free(&present);
  list_free(&plan);
  return rc;
}

/* Commit the cache holds for c->revision: a 40-hex revision names its
 * snapshot directly, otherwise refs/<revision>. */
static int cached_commit(const hub_ctx *c, char *commit, size_t n) {
  char path[HUB_PATH_MAX];
  sd_error ignored = {0};
  struct stat st;
  commit[0] = 0;
  if (is_hex(c->revision, 40)) {
    if (path_fmt(path, sizeof path, &ignored, "%s/snapshots/%s", c->repo_dir,
                 c->revision) == SD_OK &&
        stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
      if (n < 41) return 0;
      memcpy(commit, c->revision, 41); /* 40 hex digits and the NUL */
      return 1;
    }
    return 0;
  }
  if (path_fmt(path, sizeof path, &ignored, "%s/refs/%s", c->repo_dir, c->revision))
    return 0;
  if (!read_first_line(path, commit, n)) return 0;
  /* A ref must name a snapshot folder, never a path elsewhere. */
  if (strchr(commit, '/') || strstr(commit, "..")) {
    commit[0] = 0;
    return 0;
  }
  return 1;
}

/* ------------------------------------------------------------------------ */
/* HTTP                                                                      */

/* What the hub's response headers tell. Over a redirect chain the first
 * value seen wins: the hub's own answer carries X-Repo-Commit and
 * X-Linked-Etag, the CDN it redirects to carries neither (or its own ETag).
 * Status and Content-Length describe the last response. */
typedef struct http_reply {
  long status;
  char commit[128];
  char etag[256];
  char linked_etag[256];
  int64_t linked_size;
  int64_t content_length;
  int64_t range_start; /* from Content-Range, -1 if none */
  char error_code[64];
  char error_message[256];
  char location[2048]; /* last response's Location */
} http_reply;

static void reply_init(http_reply *r) {
  memset(r, 0, sizeof *r);
  r->linked_size = r->content_length = r->range_start = -1;
}

static void copy_first(char *dst, size_t n, const char *value, size_t len) {
  if (dst[0] || !len) return;
  if (len >= n) len = n - 1;
  memcpy(dst, value, len);
  dst[len] = 0;
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *user) {
  http_reply *r = user;
  size_t len = size * nitems;
  if (len >= 5 && memcmp(buf, "HTTP/", 5) == 0) {
    const char *sp = memchr(buf, ' ', len);
    r->status = sp ? strtol(sp + 1, NULL, 10) : 0;
    r->content_length = -1;
    r->range_start = -1;
    r->location[0] = 0;
    return len;
  }
  const char *colon = memchr(buf, ':', len);
  if (!colon) return len;
  size_t name_len = (size_t)(colon - buf);
  const char *value = colon + 1;
  const char *end = buf + len;
  while (value < end && (*value == ' ' || *value == '\t')) value++;
  while (end > value && isspace((unsigned char)end[-1])) end--;
  size_t vlen = (size_t)(end - value);
  char num[32];
  size_t nlen = vlen < sizeof num - 1 ? vlen : sizeof num - 1;
  memcpy(num, value, nlen);
  num[nlen] = 0;
#define HEADER_IS(h) (name_len == sizeof(h) - 1 && strncasecmp(buf, h, name_len) == 0)
  if (HEADER_IS("X-Repo-Commit")) copy_first(r->commit, sizeof r->commit, value, vlen);
  else if (HEADER_IS("X-Linked-Etag"))
    copy_first(r->linked_etag, sizeof r->linked_etag, value, vlen);
  else if (HEADER_IS("ETag")) copy_first(r->etag, sizeof r->etag, value, vlen);
  else if (HEADER_IS("X-Linked-Size")) {
    if (r->linked_size < 0) r->linked_size = strtoll(num, NULL, 10);
  } else if (HEADER_IS("Content-Length")) r->content_length = strtoll(num, NULL, 10);
  else if (HEADER_IS("Content-Range")) {
    const char *digits = strpbrk(num, "0123456789");
    if (digits) r->range_start = strtoll(digits, NULL, 10);
  } else if (HEADER_IS("X-Error-Code"))
    copy_first(r->error_code, sizeof r->error_code, value, vlen);
  else if (HEADER_IS("Location")) {
    r->location[0] = 0;
    copy_first(r->location, sizeof r->location, value, vlen);
  } else if (HEADER_IS("X-Error-Message"))
    copy_first(r->error_message, sizeof r->error_message, value, vlen);
#undef HEADER_IS
  return len;
}

/* ETags arrive quoted and sometimes weak (W/"..."); the blob name is the
 * bare value, as huggingface_hub stores it. */
static int normalize_etag(const char *raw, char *out, size_t n) {
  if (strncmp(raw, "W/", 2) == 0) raw += 2;
  size_t len = strlen(raw);
  if (len >= 2 && raw[0] == '"' && raw[len - 1] == '"') {
    raw++;
    len -= 2;
  }
  if (!len || len >= n || raw[0] == '.') return 0;
  /* It becomes a file name: letters, digits, - and _ only. */
  for (size_t i = 0; i < len; i++)
    if (!isalnum((unsigned char)raw[i]) && raw[i] != '-' && raw[i] != '_') return 0;
  memcpy(out, raw, len);
  out[len] = 0;
  return 1;
}

static int curl_start(hub_ctx *c, sd_error *err) {
  if (c->curl) return SD_OK;
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
    return sd_fail(err, SD_ERR_NETWORK, "cannot initialise libcurl");
  c->curl = curl_easy_init();
  if (!c->curl) {
    curl_global_cleanup();
    return sd_fail(err, SD_ERR_NETWORK, "cannot initialise libcurl");
  }
  return SD_OK;
}

static void curl_stop(hub_ctx *c) {
  if (!c->curl) return;
  curl_easy_cleanup(c->curl);
  curl_global_cleanup();
  c->curl = NULL;
}

/* Percent-encodes each segment of a path, keeping the slashes. */
static int escape_path(hub_ctx *c, const char *path, char *out, size_t n, sd_error *err) {
  size_t used = 0;
  out[0] = 0;
  for (const char *seg = path;;) {
    const char *end = strchr(seg, '/');
    size_t len = end ? (size_t)(end - seg) : strlen(seg);
    char *esc = curl_easy_escape(c->curl, seg, (int)len);
    if (!esc) return sd_fail(err, SD_ERR_OOM, "out of memory");
    int w = snprintf(out + used, n - used, "%s%s", esc, end ? "/" : "");
    curl_free(esc);
    if (w < 0 || (size_t)w >= n - used) return sd_fail(err, SD_ERR_ARG, "URL too long");
    used += (size_t)w;
    if (!end) break;
    seg = end + 1;
  }
  return SD_OK;
}

static int resolve_url(hub_ctx *c, const char *path, char *url, size_t n, sd_error *err) {
  char rev[512], esc_path[HUB_PATH_MAX];
  if (escape_path(c, c->commit[0] ? c->commit : c->revision, rev, sizeof rev, err) ||
      escape_path(c, path, esc_path, sizeof esc_path, err))
    return SD_ERR_ARG;
  return path_fmt(url, n, err, "%s/%s/resolve/%s/%s", c->endpoint, c->repo, rev,
                  esc_path);
}

static int request_setup(hub_ctx *c, const char *url, http_reply *reply,
                         struct curl_slist **headers, const char *range,
                         sd_error *err) {
  CURL *h = c->curl;
  curl_easy_reset(h);
  reply_init(reply);
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(h, CURLOPT_MAXREDIRS, 10L);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 30L);
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, c->stall_timeout_s);
  curl_easy_setopt(h, CURLOPT_USERAGENT, "sdgen/" SDGEN_VERSION);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, reply);
#if LIBCURL_VERSION_NUM >= 0x075500
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
  curl_easy_setopt(h, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
  curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
  *headers = NULL;
  char line[1200];
  struct curl_slist *list = NULL, *next;
  /* Sizes and ETags must describe the stored bytes, not a compressed form. */
  if (!(next = curl_slist_append(list, "Accept-Encoding: identity"))) goto oom;
  list = next;
  if (c->token[0]) {
    /* libcurl drops this header when a redirect leaves the hub's host, so
     * the token never reaches the CDN. */
    snprintf(line, sizeof line, "Authorization: Bearer %s", c->token);
    if (!(next = curl_slist_append(list, line))) goto oom;
    list = next;
  }
  if (range) {
    snprintf(line, sizeof line, "Range: %s", range);
    if (!(next = curl_slist_append(list, line))) goto oom;
    list = next;
  }
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, list);
  *headers = list;
  return SD_OK;
oom:
  curl_slist_free_all(list);
  return sd_fail(err, SD_ERR_OOM, "out of memory");
}

static int is_connect_error(CURLcode rc) {
  return rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
         rc == CURLE_COULDNT_RESOLVE_PROXY;
}

static int transport_error(const hub_ctx *c, CURLcode rc, const char *what,
                           sd_error *err) {
  if (is_connect_error(rc))
    return sd_fail(err, SD_ERR_NETWORK,
                   "cannot reach %s (%s) to fetch %s: check the network "
                   "connection (or HF_ENDPOINT), or set HF_HUB_OFFLINE=1 to "
                   "use only the local cache",
                   c->endpoint, curl_easy_strerror(rc), what);
  return sd_fail(err, SD_ERR_NETWORK, "request for %s to %s failed (%s); retry later",
                 what, c->endpoint, curl_easy_strerror(rc));
}

/* One line for an HTTP error status; `file` is "" for repo-level requests. */
static int status_error(const hub_ctx *c, const http_reply *r, const char *file,
                        sd_error *err) {
  const char *sep = file[0] ? "/" : "";
  if ((r->status == 401 || r->status == 403 || r->status == 404) &&
      strcmp(r->error_code, "RepoNotFound") == 0)
    return sd_fail(err, SD_ERR_NETWORK,
                   "%s not found on the hub: check the name (if the repo is "
                   "private, set HF_TOKEN)",
                   c->repo);
  if (r->status == 401 || r->status == 403) {
    if (c->token[0])
      return sd_fail(err, SD_ERR_NETWORK,
                     "%s is gated and the token was refused: accept the license "
                     "at https://huggingface.co/%s with the account that owns "
                     "HF_TOKEN, or set a valid HF_TOKEN",
                     c->repo, c->repo);
    return sd_fail(err, SD_ERR_NETWORK,
                   "%s is gated: accept the license at https://huggingface.co/%s "
                   "and set HF_TOKEN",
                   c->repo, c->repo);
  }
  if (r->status == 404 && strcmp(r->error_code, "RevisionNotFound") == 0)
    return sd_fail(err, SD_ERR_NETWORK, "%s: revision '%s' not found on the hub",
                   c->repo, c->revision);
  if (r->status == 404)
    return sd_fail(err, SD_ERR_NETWORK, "%s%s%s not found on the hub", c->repo, sep,
                   file);
  if (r->status == 429)
    return sd_fail(err, SD_ERR_NETWORK,
                   "the hub is rate-limiting requests for %s%s%s (HTTP 429): "
                   "wait a minute and retry, or set HF_TOKEN",
                   c->repo, sep, file);
  if (r->status >= 500)
    return sd_fail(err, SD_ERR_NETWORK,
                   "the hub failed (HTTP %ld) on %s%s%s: retry later", r->status,
                   c->repo, sep, file);
  return sd_fail(err, SD_ERR_NETWORK, "unexpected HTTP %ld from the hub for %s%s%s%s%s",
                 r->status, c->repo, sep, file, r->error_message[0] ? ": " : "",
                 r->error_message);
}

typedef struct memory_sink {
  char *data;
  size_t len, cap;
  int too_big;
} memory_sink;

static size_t on_body_to_memory(char *buf, size_t size, size_t nitems, void *user) {
  memory_sink *m = user;
  size_t len = size * nitems;
  if (m->len + len + 1 > HUB_API_MAX_BYTES) {
    m->too_big = 1;
    return 0;
  }
  if (m->len + len + 1 > m->cap) {
    size_t cap = m->cap ? m->cap : 65536;
    while (cap < m->len + len + 1) cap *= 2;
    char *data = sd_alloc(cap);
    if (!data) return 0;
    if (m->len) memcpy(data, m->data, m->len);
    sd_free(m->data);
    m->data = data;
    m->cap = cap;
  }
  memcpy(m->data + m->len, buf, len);
  m->len += len;
  m->data[m->len] = 0;
  return len;
}

/* GET {endpoint}/api/models/{repo}/revision/{rev}: the commit and the list
 * of files. */
static int api_list_files(hub_ctx *c, str_list *files, sd_error *err) {
  char url[HUB_PATH_MAX];
  /* A revision with a slash (refs/pr/1) must stay one path segment. */
  char *esc_rev = curl_easy_escape(c->curl, c->revision, 0);
  if (!esc_rev) return sd_fail(err, SD_ERR_OOM, "out of memory");
  int rc = path_fmt(url, sizeof url, err, "%s/api/models/%s/revision/%s", c->endpoint,
                    c->repo, esc_rev);
  curl_free(esc_rev);
  if (rc) return rc;
  http_reply reply;
  struct curl_slist *headers;
  memory_sink body = {0};
  if ((rc = request_setup(c, url, &reply, &headers, NULL, err))) return rc;
  curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, on_body_to_memory);
  curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, &body);
  CURLcode cr = curl_easy_perform(c->curl);
  curl_slist_free_all(headers);
  cJSON *root = NULL;
  if (cr != CURLE_OK) {
    if (body.too_big)
      rc = sd_fail(err, SD_ERR_NETWORK, "the hub's file list for %s is too large", c->repo);
    else if (cr == CURLE_WRITE_ERROR)
      rc = sd_fail(err, SD_ERR_OOM, "out of memory reading the file list of %s", c->repo);
    else
      rc = transport_error(c, cr, c->repo, err);
    goto done;
  }
  if (reply.status != 200) {
    rc = status_error(c, &reply, "", err);
    goto done;
  }
  root = body.data ? cJSON_Parse(body.data) : NULL;
  const char *sha = root ? sd_json_str(root, "sha", "") : "";
  const cJSON *siblings = root ? cJSON_GetObjectItemCaseSensitive(root, "siblings") : NULL;
  if (!is_hex(sha, 40) || !cJSON_IsArray(siblings)) {
    rc = sd_fail(err, SD_ERR_NETWORK,
                 "the hub's answer for %s is not a model description (is "
                 "HF_ENDPOINT right?)",
                 c->repo);
    goto done;
  }
  snprintf(c->commit, sizeof c->commit, "%s", sha);
  const cJSON *s;
  cJSON_ArrayForEach(s, siblings) {
    const char *name = sd_json_str(s, "rfilename", NULL);
    if (name && list_push(files, name)) {
      rc = sd_fail(err, SD_ERR_OOM, "out of memory");
      goto done;
    }
  }
done:
  cJSON_Delete(root);
  sd_free(body.data);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Files into the cache                                                      */

typedef struct blob_sink {
  hub_ctx *c;
  const char *file; /* path in the repo, for progress and messages */
  int fd;
  int verify;
  sd_sha256 sha;
  int64_t offset;   /* bytes in the .incomplete file */
  int64_t resumed;  /* offset when this request started */
  int64_t expected; /* -1 if unknown */
  int first_chunk;
  long status;
  int http_error;
  int bad_range;
  int write_errno;
  double started, last_report;
} blob_sink;

static int restart_blob(blob_sink *b) {
  if (ftruncate(b->fd, 0) != 0 || lseek(b->fd, 0, SEEK_SET) != 0) {
    b->write_errno = errno;
    return 0;
  }
  b->offset = b->resumed = 0;
  sd_sha256_init(&b->sha);
  return 1;
}

static size_t on_body_to_blob(char *buf, size_t size, size_t nitems, void *user) {
  blob_sink *b = user;
  size_t len = size * nitems;
  if (b->first_chunk) {
    b->first_chunk = 0;
    curl_easy_getinfo(b->c->curl, CURLINFO_RESPONSE_CODE, &b->status);
    if (b->status >= 400) {
      b->http_error = 1;
      return 0;
    }
    /* A server that ignores Range answers 200 with the whole file. */
    if (b->status == 200 && b->offset > 0 && !restart_blob(b)) return 0;
  }
  for (size_t done = 0; done < len;) {
    ssize_t w = write(b->fd, buf + done, len - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      b->write_errno = w < 0 ? errno : EIO;
      /* Keep the hash in step with what did reach the file. */
      if (b->verify && done) sd_sha256_update(&b->sha, buf, done);
      b->offset += (int64_t)done;
      return 0;
    }
    done += (size_t)w;
  }
  if (b->verify) sd_sha256_update(&b->sha, buf, len);
  b->offset += (int64_t)len;
  return len;
}

static int on_transfer_progress(void *user, curl_off_t dltotal, curl_off_t dlnow,
                                curl_off_t ultotal, curl_off_t ulnow) {
  blob_sink *b = user;
  if (!b->c->progress) return 0;
  double now = now_seconds();
  if (now - b->last_report < HUB_PROGRESS_INTERVAL_S) return 0;
  b->last_report = now;
  double elapsed = now - b->started;
  double rate = elapsed > 0 ? (double)(b->offset - b->resumed) / elapsed : 0;
  return b->c->progress(b->c->user, b->file, b->offset, b->expected, rate) ? 1 : 0;
}

static int disk_full(int e) {
  return e == ENOSPC || e == EFBIG
#ifdef EDQUOT
         || e == EDQUOT
#endif
      ;
}

/* Hashes what an earlier, interrupted run left in the .incomplete file. */
static int hash_existing(int fd, int64_t len, sd_sha256 *sha, const char *path,
                         sd_error *err) {
  size_t cap = 1u << 20;
  unsigned char *buf = sd_alloc(cap);
  if (!buf) return sd_fail(err, SD_ERR_OOM, "out of memory");
  int64_t pos = 0;
  while (pos < len) {
    size_t want = (size_t)(len - pos < (int64_t)cap ? len - pos : (int64_t)cap);
    ssize_t got = pread(fd, buf, want, (off_t)pos);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      sd_free(buf);
      return sd_fail(err, SD_ERR_IO, "cannot read %s: %s", path,
                     got < 0 ? strerror(errno) : "unexpected end");
    }
    sd_sha256_update(sha, buf, (size_t)got);
    pos += got;
  }
  sd_free(buf);
  return SD_OK;
}

/* Downloads `url` into blob via blob.incomplete, resuming what is there.
 * On success the blob exists and the .incomplete is gone; on an
 * interruption or a full disk the .incomplete is kept; on a checksum
 * mismatch it is deleted. */
static int download_blob(hub_ctx *c, const char *file, const char *url,
                         const char *blob, int64_t expected, const char *sha256,
                         sd_error *err) {
  char partial[HUB_PATH_MAX];
  int rc;
  if ((rc = path_fmt(partial, sizeof partial, err, "%s.incomplete", blob))) return rc;
  blob_sink b;
  memset(&b, 0, sizeof b);
  b.c = c;
  b.file = file;
  b.expected = expected;
  b.verify = sha256 != NULL;
  sd_sha256_init(&b.sha);
  b.fd = open(partial, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (b.fd < 0)
    return sd_fail(err, SD_ERR_IO, "cannot write %s: %s", partial, strerror(errno));
  off_t have = lseek(b.fd, 0, SEEK_END);
  if (have < 0 || (expected >= 0 && have > expected)) {
    if (!restart_blob(&b)) {
      rc = sd_fail(err, SD_ERR_IO, "cannot write %s: %s", partial, strerror(b.write_errno));
      goto fail_keep;
    }
    have = 0;
  }
  b.offset = b.resumed = have;
  if (b.verify && have > 0 && (rc = hash_existing(b.fd, have, &b.sha, partial, err)))
    goto fail_keep;

  /* At most two tries: the second only when the server refused our Range
   * (416), starting over from byte 0. */
  for (int attempt = 0; attempt < 2 && (expected < 0 || b.offset < expected); attempt++) {
    char range[64];
    http_reply reply;
    struct curl_slist *headers;
    snprintf(range, sizeof range, "bytes=%lld-", (long long)b.offset);
    if ((rc = request_setup(c, url, &reply, &headers, b.offset > 0 ? range : NULL, err)))
      goto fail_keep;
    curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, on_body_to_blob);
    curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c->curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c->curl, CURLOPT_XFERINFOFUNCTION, on_transfer_progress);
    curl_easy_setopt(c->curl, CURLOPT_XFERINFODATA, &b);
    b.first_chunk = 1;
    b.http_error = 0;
    b.started = b.last_report = now_seconds();
    b.last_report -= HUB_PROGRESS_INTERVAL_S;
    int64_t offset_before = b.offset;
    CURLcode cr = curl_easy_perform(c->curl);
    curl_slist_free_all(headers);
    if (b.first_chunk) curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &b.status);
    if (b.status == 206 && reply.range_start >= 0 && reply.range_start != offset_before) {
      /* The server resumed elsewhere than asked: the bytes cannot be
       * trusted, so the next run starts over. */
      restart_blob(&b);
      rc = sd_fail(err, SD_ERR_NETWORK,
                   "the server resumed %s/%s at the wrong offset; rerun to "
                   "download it again",
                   c->repo, file);
      goto fail_keep;
    }
    if (b.write_errno) {
      if (disk_full(b.write_errno))
        rc = sd_fail(err, SD_ERR_IO,
                     "disk full while downloading %s/%s (%s): %lld of %lld bytes "
                     "kept in %s; free some space and rerun to resume",
                     c->repo, file, strerror(b.write_errno), (long long)b.offset,
                     (long long)expected, partial);
      else
        rc = sd_fail(err, SD_ERR_IO, "cannot write %s: %s", partial,
                     strerror(b.write_errno));
      goto fail_keep;
    }
    if (b.status == 416 && attempt == 0 && b.offset > 0) {
      if (!restart_blob(&b)) {
        rc = sd_fail(err, SD_ERR_IO, "cannot write %s: %s", partial,
                     strerror(b.write_errno));
        goto fail_keep;
      }
      continue;
    }
    if (b.http_error || b.status >= 400) {
      rc = status_error(c, &reply, file, err);
      goto fail_keep;
    }
    if (cr == CURLE_ABORTED_BY_CALLBACK) {
      rc = sd_fail(err, SD_ERR_CANCELLED,
                   "download of %s/%s cancelled at %lld of %lld bytes; rerun to resume",
                   c->repo, file, (long long)b.offset, (long long)expected);
      goto fail_keep;
    }
    if (cr != CURLE_OK && is_connect_error(cr)) {
      rc = transport_error(c, cr, file, err);
      goto fail_keep;
    }
    if (cr != CURLE_OK || (expected >= 0 && b.offset < expected)) {
      rc = sd_fail(err, SD_ERR_NETWORK,
                   "download of %s/%s interrupted at %lld of %lld bytes (%s); "
                   "rerun the same command to resume",
                   c->repo, file, (long long)b.offset, (long long)expected,
                   cr != CURLE_OK ? curl_easy_strerror(cr) : "connection closed early");
      goto fail_keep;
    }
    break;
  }
  if (expected >= 0 && b.offset != expected) {
    restart_blob(&b);
    rc = sd_fail(err, SD_ERR_NETWORK,
                 "%s/%s: received %lld bytes, the hub announced %lld; rerun to "
                 "download it again",
                 c->repo, file, (long long)b.offset, (long long)expected);
    goto fail_keep;
  }
  if (b.verify) {
    char got[65];
    sd_sha256_final_hex(&b.sha, got);
    if (strcmp(got, sha256) != 0) {
      close(b.fd);
      unlink(partial);
      return sd_fail(err, SD_ERR_FORMAT,
                     "checksum mismatch for %s/%s: expected sha256 %s, got %s; the "
                     "corrupt download was discarded, rerun to fetch it again",
                     c->repo, file, sha256, got);
    }
  }
  if (fsync(b.fd) != 0 && disk_full(errno)) {
    rc = sd_fail(err, SD_ERR_IO, "disk full while saving %s; free some space and rerun",
                 partial);
    goto fail_keep;
  }
  close(b.fd);
  if (rename(partial, blob) != 0)
    return sd_fail(err, SD_ERR_IO, "cannot rename %s to %s: %s", partial, blob,
                   strerror(errno));
  if (c->progress) c->progress(c->user, file, b.offset, b.offset, 0);
  return SD_OK;
fail_keep:
  close(b.fd);
  return rc;
}

/* snapshots/<commit>/<file> → ../../blobs/<etag>, one more ../ per folder
 * level of file, exactly as huggingface_hub links them. */
static int link_snapshot(const hub_ctx *c, const char *file, const char *etag,
                         sd_error *err) {
  char link[HUB_PATH_MAX], target[HUB_PATH_MAX];
  int rc;
  if ((rc = path_fmt(link, sizeof link, err, "%s/snapshots/%s/%s", c->repo_dir,
                     c->commit, file)))
    return rc;
  if ((rc = mkdir_parent(link, err))) return rc;
  size_t used = 0;
  int ups = 2;
  for (const char *p = file; *p; p++) ups += *p == '/';
  for (int i = 0; i < ups && used + 3 < sizeof target; i++, used += 3)
    memcpy(target + used, "../", 3);
  target[used] = 0;
  if ((rc = path_fmt(target + used, sizeof target - used, err, "blobs/%s", etag)))
    return rc;
  if (symlink(target, link) != 0) {
    if (errno != EEXIST || unlink(link) != 0 || symlink(target, link) != 0)
      return sd_fail(err, SD_ERR_IO, "cannot link %s: %s", link, strerror(errno));
  }
  return SD_OK;
}

static int fetch_locked(hub_ctx *c, const char *file, const char *url, const char *blob,
                        const char *etag, int lfs, int64_t expected, sd_error *err);

/* HEAD on the hub's resolve URL, as huggingface_hub does it: relative
 * redirects (renamed repos) are followed, an absolute one (to the CDN) is
 * not. That answer already carries the commit, the LFS ETag and size, and
 * CDN URLs are signed for GET only, so a HEAD there may be refused. */
static int head_metadata(hub_ctx *c, const char *url, const char *file,
                         http_reply *reply, sd_error *err) {
  char current[HUB_PATH_MAX * 2], origin[1024];
  int rc;
  /* scheme://host[:port] of the endpoint, for relative Location values. */
  const char *host = strstr(c->endpoint, "://");
  const char *path = host ? strchr(host + 3, '/') : NULL;
  size_t origin_len = path ? (size_t)(path - c->endpoint) : strlen(c->endpoint);
  if (origin_len >= sizeof origin) return sd_fail(err, SD_ERR_ARG, "endpoint too long");
  memcpy(origin, c->endpoint, origin_len);
  origin[origin_len] = 0;
  if ((rc = path_fmt(current, sizeof current, err, "%s", url))) return rc;
  for (int hop = 0;; hop++) {
    struct curl_slist *headers;
    if ((rc = request_setup(c, current, reply, &headers, NULL, err))) return rc;
    curl_easy_setopt(c->curl, CURLOPT_NOBODY, 1L);
    curl_easy_setopt(c->curl, CURLOPT_FOLLOWLOCATION, 0L);
    CURLcode cr = curl_easy_perform(c->curl);
    curl_slist_free_all(headers);
    if (cr != CURLE_OK) return transport_error(c, cr, file, err);
    if (reply->status < 300) return SD_OK;
    if (reply->status >= 400) return status_error(c, reply, file, err);
    if (!reply->location[0]) return status_error(c, reply, file, err);
    if (reply->location[0] != '/') return SD_OK; /* off to the CDN */
    if (hop == 5)
      return sd_fail(err, SD_ERR_NETWORK, "too many redirects for %s/%s", c->repo, file);
    if ((rc = path_fmt(current, sizeof current, err, "%s%s", origin, reply->location)))
      return rc;
  }
}

/* Brings one file of c->repo into the cache (blob + snapshot link). Sets
 * c->commit from the hub when not yet known. */
static int fetch_file(hub_ctx *c, const char *file, sd_error *err) {
  char url[HUB_PATH_MAX * 2], blob[HUB_PATH_MAX], etag[200];
  int rc;
  if ((rc = resolve_url(c, file, url, sizeof url, err))) return rc;
  http_reply reply;
  if ((rc = head_metadata(c, url, file, &reply, err))) return rc;
  int lfs = reply.linked_etag[0] != 0;
  if (!normalize_etag(lfs ? reply.linked_etag : reply.etag, etag, sizeof etag))
    return sd_fail(err, SD_ERR_NETWORK,
                   "the hub sent no usable ETag for %s/%s (is HF_ENDPOINT a hub?)",
                   c->repo, file);
  if (!c->commit[0]) {
    if (!is_hex(reply.commit, 40))
      return sd_fail(err, SD_ERR_NETWORK,
                     "the hub sent no commit for %s/%s (is HF_ENDPOINT a hub?)",
                     c->repo, file);
    snprintf(c->commit, sizeof c->commit, "%s", reply.commit);
  }
  int64_t expected = reply.linked_size >= 0 ? reply.linked_size : reply.content_length;
  if ((rc = path_fmt(blob, sizeof blob, err, "%s/blobs/%s", c->repo_dir, etag))) return rc;
  if ((rc = mkdir_parent(blob, err))) return rc;
  /* The same lock file huggingface_hub takes (filelock uses flock), so a
   * diffusers process and we never write one blob at once. */
  char lock_path[HUB_PATH_MAX];
  const char *repo_folder = strrchr(c->repo_dir, '/') + 1;
  if ((rc = path_fmt(lock_path, sizeof lock_path, err, "%s/.locks/%s/%s.lock", c->cache,
                     repo_folder, etag)) ||
      (rc = mkdir_parent(lock_path, err)))
    return rc;
  int lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd < 0)
    return sd_fail(err, SD_ERR_IO, "cannot create %s: %s", lock_path, strerror(errno));
  while (flock(lock_fd, LOCK_EX) != 0 && errno == EINTR) {
  }
  rc = fetch_locked(c, file, url, blob, etag, lfs, expected, err);
  flock(lock_fd, LOCK_UN);
  close(lock_fd);
  return rc;
}

static int fetch_locked(hub_ctx *c, const char *file, const char *url, const char *blob,
                        const char *etag, int lfs, int64_t expected, sd_error *err) {
  int rc;
  if (!is_regular_file(blob)) {
    /* Only an LFS ETag is a content SHA-256; git ETags hash a blob header
     * too, so small files are checked by size alone. */
    const char *sha = lfs && is_hex(etag, 64) ? etag : NULL;
    if ((rc = download_blob(c, file, url, blob, expected, sha, err))) return rc;
  } else if (c->progress) {
    struct stat st;
    int64_t size = stat(blob, &st) == 0 ? (int64_t)st.st_size : expected;
    c->progress(c->user, file, size, size, 0);
  }
  return link_snapshot(c, file, etag, err);
}

/* ------------------------------------------------------------------------ */
/* Resolution                                                                */

static int write_ref(const hub_ctx *c, sd_error *err) {
  char path[HUB_PATH_MAX];
  if (strcmp(c->revision, c->commit) == 0) return SD_OK;
  if (path_fmt(path, sizeof path, err, "%s/refs/%s", c->repo_dir, c->revision))
    return SD_ERR_ARG;
  return write_text_atomic(path, c->commit, err);
}

static int download_pipeline(hub_ctx *c, sd_error *err) {
  str_list listing = {0}, plan = {0};
  cJSON *index = NULL;
  char path[HUB_PATH_MAX], missing[HUB_PATH_MAX];
  int rc;
  if ((rc = api_list_files(c, &listing, err))) goto done;
  if (!list_has(&listing, "model_index.json")) {
    rc = sd_fail(err, SD_ERR_UNSUPPORTED,
                 "%s has no model_index.json, so it is not a diffusers pipeline: "
                 "name one weights file inside it instead (%s/<file>.safetensors)",
                 c->repo, c->repo);
    goto done;
  }
  if ((rc = fetch_file(c, "model_index.json", err))) goto done;
  if ((rc = path_fmt(path, sizeof path, err, "%s/snapshots/%s/model_index.json",
                     c->repo_dir, c->commit)))
    goto done;
  if ((rc = sd_json_read_file(path, &index, err))) goto done;
  if ((rc = plan_pipeline(index, &listing, &plan, missing, sizeof missing, err))) goto done;
  if (missing[0]) {
    rc = sd_fail(err, SD_ERR_UNSUPPORTED,
                 "%s has no %s on the hub (pickle .bin files are never loaded)",
                 c->repo, missing);
    goto done;
  }
  for (int i = 1; i < plan.count; i++) {
    if ((rc = fetch_file(c, plan.items[i], err))) goto done;
    if (!is_shard_index(plan.items[i])) continue;
    str_list shards = {0};
    if ((rc = path_fmt(path, sizeof path, err, "%s/snapshots/%s/%s", c->repo_dir,
                       c->commit, plan.items[i])) == SD_OK &&
        (rc = index_shards(plan.items[i], path, &shards, err)) == SD_OK)
      for (int s = 0; s < shards.count && rc == SD_OK; s++)
        rc = fetch_file(c, shards.items[s], err);
    list_free(&shards);
    if (rc) goto done;
  }
  rc = write_ref(c, err);
done:
  cJSON_Delete(index);
  list_free(&listing);
  list_free(&plan);
  return rc;
}

static int copy_out(char *out, size_t n, const char *path, sd_error *err) {
  if (!out) return SD_OK;
  return path_fmt(out, n, err, "%s", path);
}

static int offline_error(const hub_ctx *c, const char *what, const char *missing,
                         sd_error *err) {
  if (missing && missing[0])
    return sd_fail(err, SD_ERR_IO,
                   "%s is incomplete in the Hugging Face cache (%s lacks %s) and "
                   "offline mode is on: run once online to finish the download",
                   what, c->repo_dir, missing);
  return sd_fail(err, SD_ERR_IO,
                 "%s is not in the Hugging Face cache (%s) and offline mode is on "
                 "(--offline or HF_HUB_OFFLINE): run once online, or give a local path",
                 what, c->cache);
}

static int resolve_pipeline(hub_ctx *c, char *out, size_t n, sd_error *err) {
  char commit[128], snap[HUB_PATH_MAX], missing[HUB_PATH_MAX] = "";
  int rc, complete = 0;
  if (cached_commit(c, commit, sizeof commit)) {
    if ((rc = path_fmt(snap, sizeof snap, err, "%s/snapshots/%s", c->repo_dir, commit)))
      return rc;
    if ((rc = check_pipeline_snapshot(snap, &complete, missing, sizeof missing, NULL, 0,
                                      err)))
      return rc;
    if (complete) return copy_out(out, n, snap, err);
  }
  if (c->offline) return offline_error(c, c->repo, missing, err);
  if ((rc = curl_start(c, err))) return rc;
  rc = download_pipeline(c, err);
  curl_stop(c);
  if (rc) return rc;
  if ((rc = path_fmt(snap, sizeof snap, err, "%s/snapshots/%s", c->repo_dir, c->commit)))
    return rc;
  if ((rc = check_pipeline_snapshot(snap, &complete, missing, sizeof missing, NULL, 0,
                                    err)))
    return rc;
  if (!complete)
    return sd_fail(err, SD_ERR_IO, "%s: the download finished but %s lacks %s", c->repo,
                   snap, missing);
  return copy_out(out, n, snap, err);
}

static int resolve_single_file(hub_ctx *c, const char *file, char *out, size_t n,
                               sd_error *err) {
  char commit[128], path[HUB_PATH_MAX];
  int rc;
  if (cached_commit(c, commit, sizeof commit)) {
    if ((rc = path_fmt(path, sizeof path, err, "%s/snapshots/%s/%s", c->repo_dir,
                       commit, file)))
      return rc;
    if (is_regular_file(path)) return copy_out(out, n, path, err);
  }
  if (c->offline) {
    char what[HUB_PATH_MAX + 300];
    snprintf(what, sizeof what, "%s/%s", c->repo, file);
    return offline_error(c, what, NULL, err);
  }
  if ((rc = curl_start(c, err))) return rc;
  rc = fetch_file(c, file, err);
  curl_stop(c);
  if (rc || (rc = write_ref(c, err))) return rc;
  if ((rc = path_fmt(path, sizeof path, err, "%s/snapshots/%s/%s", c->repo_dir,
                     c->commit, file)))
    return rc;
  return copy_out(out, n, path, err);
}

static int resolve_hub_name(const char *name, const sd_hub_options *opt, char *out,
                            size_t n, sd_error *err) {
  char repo[256], file[HUB_PATH_MAX];
  sd_error parse_err = {0};
  if (sd_hub_parse_name(name, repo, sizeof repo, file, sizeof file, &parse_err))
    return sd_fail(err, SD_ERR_ARG,
                   "'%s' is neither an existing file or folder nor a Hugging Face "
                   "model name (ORG/NAME or ORG/NAME/file.safetensors)",
                   name);
  hub_ctx *c = sd_alloc(sizeof *c);
  if (!c) return sd_fail(err, SD_ERR_OOM, "out of memory");
  int rc = load_options(c, opt, err);
  if (rc == SD_OK) rc = set_repo(c, repo, err);
  if (rc == SD_OK)
    rc = file[0] ? resolve_single_file(c, file, out, n, err)
                 : resolve_pipeline(c, out, n, err);
  sd_free(c);
  return rc;
}

int sd_hub_resolve(const char *name, const sd_hub_options *opt, char *out_path,
                   size_t out_n, sd_error *err) {
  if (!name || !name[0]) return sd_fail(err, SD_ERR_ARG, "no model given");
  struct stat st;
  if (stat(name, &st) == 0) return copy_out(out_path, out_n, name, err);
  return resolve_hub_name(name, opt, out_path, out_n, err);
}

int sd_hub_download(const char *name, const sd_hub_options *opt, char *out_path,
                    size_t out_n, sd_error *err) {
  if (!name || !name[0]) return sd_fail(err, SD_ERR_ARG, "no model given");
  return resolve_hub_name(name, opt, out_path, out_n, err);
}

/* ------------------------------------------------------------------------ */
/* Listing the cache                                                         */

const char *sd_hub_pipeline_for_class(const char *class_name) {
  static const char *const map[][2] = {
      {"StableDiffusionPipeline", "sd15"},
      {"StableDiffusionXLPipeline", "sdxl"},
      {"StableDiffusionXLImg2ImgPipeline", "sdxl-refiner"},
      {"StableDiffusion3Pipeline", "sd3"}};
  if (!class_name) return "";
  for (size_t i = 0; i < sizeof map / sizeof *map; i++)
    if (strcmp(class_name, map[i][0]) == 0) return map[i][1];
  return "";
}

static void blob_sizes(const char *blobs_dir, int64_t *complete, int64_t *partial) {
  *complete = *partial = 0;
  DIR *d = opendir(blobs_dir);
  if (!d) return;
  struct dirent *e;
  char path[HUB_PATH_MAX];
  sd_error ignored = {0};
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    struct stat st;
    if (path_fmt(path, sizeof path, &ignored, "%s/%s", blobs_dir, e->d_name) ||
        lstat(path, &st) != 0 || !S_ISREG(st.st_mode))
      continue;
    if (ends_with(e->d_name, ".incomplete")) *partial += st.st_size;
    else *complete += st.st_size;
  }
  closedir(d);
}

static int is_model_entry(const struct dirent *e) {
  return strncmp(e->d_name, "models--", 8) == 0 && strstr(e->d_name + 8, "--") != NULL;
}

int sd_hub_list_cached(const sd_hub_options *opt,
                       int (*fn)(void *user, const sd_hub_cached_repo *repo),
                       void *user, sd_error *err) {
  hub_ctx *c = sd_alloc(sizeof *c);
  if (!c) return sd_fail(err, SD_ERR_OOM, "out of memory");
  int rc = load_options(c, opt, err);
  struct dirent **entries = NULL;
  int count = rc == SD_OK ? scandir(c->cache, &entries, is_model_entry, alphasort) : 0;
  if (count < 0) count = 0; /* no cache yet: nothing to list */
  char repo[256], commit[128], snap[HUB_PATH_MAX], path[HUB_PATH_MAX];
  char class_name[256], missing[HUB_PATH_MAX];
  int stop = 0;
  for (int i = 0; i < count; i++) {
    if (rc == SD_OK && !stop) {
      /* models--ORG--NAME: ORG cannot hold "--", so the first one splits. */
      const char *id = entries[i]->d_name + 8;
      const char *sep = strstr(id, "--");
      snprintf(repo, sizeof repo, "%.*s/%s", (int)(sep - id), id, sep + 2);
      if ((rc = set_repo(c, repo, err))) goto next;
      sd_hub_cached_repo r;
      memset(&r, 0, sizeof r);
      r.repo = repo;
      r.commit = r.snapshot = r.class_name = r.pipeline = "";
      snap[0] = class_name[0] = 0;
      if (cached_commit(c, commit, sizeof commit)) {
        r.commit = commit;
        if ((rc = path_fmt(snap, sizeof snap, err, "%s/snapshots/%s", c->repo_dir, commit)))
          goto next;
        r.snapshot = snap;
        if ((rc = check_pipeline_snapshot(snap, &r.complete, missing, sizeof missing,
                                          class_name, sizeof class_name, err)))
          goto next;
        r.class_name = class_name;
        r.pipeline = sd_hub_pipeline_for_class(class_name);
      }
      if ((rc = path_fmt(path, sizeof path, err, "%s/blobs", c->repo_dir))) goto next;
      blob_sizes(path, &r.size_bytes, &r.partial_bytes);
      stop = fn(user, &r) != 0;
    }
  next:
    free(entries[i]); /* scandir allocates with malloc */
  }
  free(entries);
  sd_free(c);
  return rc;
}
