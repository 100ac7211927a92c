/* The model catalog behind the public API: the Hugging Face cache, model
 * folders given by a client (--model-dir), LoRA folders, downloads, and the
 * small helpers clients need (sizes, the download progress line), so that
 * clients include nothing but sdgen.h. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/alloc.h"
#include "base/memprobe.h"
#include "io/hub.h"
#include "io/model_dir.h"
#include "pipeline/generate_internal.h"
#include "tensor/blas_setup.h"

int sdgen_download(sdgen_ctx *ctx, const sdgen_params *p, const char *name, char *path_out,
                   size_t path_n) {
  sd_error_clear(&ctx->err);
  if (!name || !name[0]) return sd_fail(&ctx->err, SD_ERR_ARG, "no model name given");
  sd_hub_options ho = sd_hub_default_options();
  ho.offline = p->offline;
  ho.progress = p->on_download;
  ho.user = p->user;
  return sd_hub_download(name, &ho, path_out, path_n, &ctx->err);
}

int sdgen_hub_cache_dir(sdgen_ctx *ctx, char *out, size_t n) {
  sd_error_clear(&ctx->err);
  sd_hub_options ho = sd_hub_default_options();
  ho.offline = 1;
  return sd_hub_cache_dir(&ho, out, n, &ctx->err);
}

typedef struct list_relay {
  int (*fn)(void *user, const sdgen_model_entry *m);
  void *user;
} list_relay;

static int relay_hub(void *user, const sd_hub_cached_repo *r) {
  list_relay *l = user;
  sdgen_model_entry e = {.name = r->repo, .path = r->snapshot, .source = "hub",
                         .pipeline = r->pipeline, .size_bytes = r->size_bytes,
                         .complete = r->complete, .partial_bytes = r->partial_bytes};
  return l->fn(l->user, &e);
}

static int ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcmp(s + a - b, suffix) == 0;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The entries of dir in name order (hidden ones left out); *names from
 * sd_alloc, each name too. */
static int sorted_entries(const char *dir, char ***names, int *count, sd_error *err) {
  *names = NULL;
  *count = 0;
  DIR *d = opendir(dir);
  if (!d) return sd_fail(err, SD_ERR_IO, "cannot read folder %s: %s", dir, strerror(errno));
  int cap = 0, rc = SD_OK;
  struct dirent *de;
  while ((de = readdir(d)) != NULL && !rc) {
    if (de->d_name[0] == '.') continue;
    if (*count == cap) {
      cap = cap ? 2 * cap : 32;
      char **grown = sd_alloc(sizeof(char *) * (size_t)cap);
      if (!grown) {
        rc = sd_fail(err, SD_ERR_OOM, "out of memory");
        break;
      }
      if (*count) memcpy(grown, *names, sizeof(char *) * (size_t)*count);
      sd_free(*names);
      *names = grown;
    }
    size_t len = strlen(de->d_name) + 1;
    char *s = sd_alloc(len);
    if (!s) {
      rc = sd_fail(err, SD_ERR_OOM, "out of memory");
      break;
    }
    memcpy(s, de->d_name, len);
    (*names)[(*count)++] = s;
  }
  closedir(d);
  if (*count > 1) qsort(*names, (size_t)*count, sizeof(char *), cmp_names);
  return rc;
}

static void free_entries(char **names, int count) {
  for (int i = 0; i < count; i++) sd_free(names[i]);
  sd_free(names);
}

static int64_t file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (int64_t)st.st_size : 0;
}

/* Model folders (model_index.json) and single checkpoint files directly
 * under dir, by their names there. */
static int list_model_dir(const char *dir, list_relay *l, sd_error *err) {
  char **names;
  int count, rc = sorted_entries(dir, &names, &count, err), stop = 0;
  for (int i = 0; i < count && !rc && !stop; i++) {
    char path[4200], index[4300];
    sd_path_join(path, sizeof path, dir, names[i]);
    sdgen_model_entry e = {.name = names[i], .path = path, .source = "dir", .pipeline = "",
                           .complete = 1};
    const char *family = "";
    if (sd_is_dir(path)) {
      sd_path_join(index, sizeof index, path, "model_index.json");
      if (!sd_is_file(index)) continue;
    } else if (ends_with(names[i], ".safetensors") || ends_with(names[i], ".ckpt")) {
      e.size_bytes = file_size(path);
    } else {
      continue;
    }
    if ((rc = gen_model_family(path, &family, err))) break;
    e.pipeline = strcmp(family, "sd1") == 0 ? "sd15" : family;
    stop = l->fn(l->user, &e);
  }
  free_entries(names, count);
  return rc;
}

int sdgen_list_models(sdgen_ctx *ctx, const char *const *model_dirs, int n_dirs,
                      int (*fn)(void *user, const sdgen_model_entry *m), void *user) {
  sd_error_clear(&ctx->err);
  list_relay l = {fn, user};
  for (int i = 0; i < n_dirs; i++) {
    if (!sd_is_dir(model_dirs[i]))
      return sd_fail(&ctx->err, SD_ERR_IO, "model folder %s not found", model_dirs[i]);
    int rc = list_model_dir(model_dirs[i], &l, &ctx->err);
    if (rc) return rc;
  }
  sd_hub_options ho = sd_hub_default_options();
  ho.offline = 1; /* listing never touches the network */
  return sd_hub_list_cached(&ho, relay_hub, &l, &ctx->err);
}

typedef int (*lora_fn)(void *user, const char *name, const char *path);

static int walk_loras(const char *dir, const char *prefix, int depth, lora_fn fn, void *user,
                      int *stop, sd_error *err) {
  char **names;
  int count, rc = sorted_entries(dir, &names, &count, err);
  for (int i = 0; i < count && !rc && !*stop; i++) {
    char path[4200], name[4200];
    sd_path_join(path, sizeof path, dir, names[i]);
    snprintf(name, sizeof name, "%s%s", prefix, names[i]);
    if (sd_is_dir(path)) {
      if (depth < 8) { /* bounded: a symlink loop ends here */
        char sub[4300];
        snprintf(sub, sizeof sub, "%s/", name);
        rc = walk_loras(path, sub, depth + 1, fn, user, stop, err);
      }
    } else if (ends_with(names[i], ".safetensors")) {
      name[strlen(name) - strlen(".safetensors")] = 0;
      *stop = fn(user, name, path);
    }
  }
  free_entries(names, count);
  return rc;
}

int sdgen_list_loras(sdgen_ctx *ctx, const char *dir, lora_fn fn, void *user) {
  sd_error_clear(&ctx->err);
  if (!dir || !sd_is_dir(dir))
    return sd_fail(&ctx->err, SD_ERR_IO, "LoRA folder %s not found", dir ? dir : "(none)");
  int stop = 0;
  return walk_loras(dir, "", 0, fn, user, &stop, &ctx->err);
}

int sdgen_print_download_progress(void *user, const char *file, int64_t done, int64_t total,
                                  double bytes_per_s) {
  return sd_hub_progress_stderr(user, file, done, total, bytes_per_s);
}

const char *sdgen_format_size(int64_t bytes, char *buf, size_t n) {
  return sd_format_size(bytes, buf, n > 1024 ? 1024 : (int)n);
}

int64_t sdgen_parse_size(const char *text) { return sd_parse_size(text); }

void sdgen_process_init(char **argv) { sd_blas_select_kernels(argv); }
