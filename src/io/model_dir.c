#include "io/model_dir.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "io/json.h"

int sd_is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int sd_is_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

void sd_path_join(char *out, size_t n, const char *a, const char *b) {
  size_t la = strlen(a);
  snprintf(out, n, "%s%s%s", a, la && a[la - 1] == '/' ? "" : "/", b);
}

int sd_component_weights_path(const char *dir, int prefer_fp16, char *out, size_t n,
                              sd_error *err) {
  static const char *const bases[] = {"diffusion_pytorch_model", "model"};
  char name[256], path[4096];
  for (int pass = 0; pass < 2; pass++) {
    int fp16 = prefer_fp16 ? pass == 0 : pass == 1;
    for (int b = 0; b < 2; b++) {
      const char *variant = fp16 ? ".fp16" : "";
      snprintf(name, sizeof name, "%s%s.safetensors", bases[b], variant);
      sd_path_join(path, sizeof path, dir, name);
      if (sd_is_file(path)) {
        snprintf(out, n, "%s", path);
        return SD_OK;
      }
      snprintf(name, sizeof name, "%s.safetensors%s.index.json", bases[b], variant);
      if (fp16) snprintf(name, sizeof name, "%s.safetensors.index.fp16.json", bases[b]);
      sd_path_join(path, sizeof path, dir, name);
      if (sd_is_file(path)) {
        snprintf(out, n, "%s", path);
        return SD_OK;
      }
    }
  }
  if (!sd_is_dir(dir)) return sd_fail(err, SD_ERR_IO, "model folder %s not found", dir);
  return sd_fail(err, SD_ERR_IO, "no .safetensors weights in %s", dir);
}

int sd_component_open(const char *dir, int prefer_fp16, sd_weights **weights, cJSON **config,
                      sd_error *err) {
  char path[4096];
  *weights = NULL;
  if (config) *config = NULL;
  int rc = sd_component_weights_path(dir, prefer_fp16, path, sizeof path, err);
  if (rc) return rc;
  if (config) {
    char cfg[4096];
    sd_path_join(cfg, sizeof cfg, dir, "config.json");
    if (sd_is_file(cfg) && (rc = sd_json_read_file(cfg, config, err))) return rc;
  }
  rc = sd_weights_open(weights, path, err);
  if (rc && config) {
    cJSON_Delete(*config);
    *config = NULL;
  }
  return rc;
}
