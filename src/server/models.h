/* The models a server may load: entries of its --model-dir folders (a
 * diffusers folder with model_index.json, or a .safetensors / .ckpt file),
 * named by their file or folder name, and hub names already in the Hugging
 * Face cache. Request text never becomes a path unless --allow-paths. */
#ifndef SDGEN_SERVER_MODELS_H
#define SDGEN_SERVER_MODELS_H

#include <cjson/cJSON.h>

#define SRV_MAX_DIRS 16

typedef struct srv_models {
  const char *dirs[SRV_MAX_DIRS];
  int n_dirs;
  const char *lora_dirs[SRV_MAX_DIRS];
  int n_lora_dirs;
  int allow_paths;
} srv_models;

/* Resolves a model name to the path the library loads (path, n bytes).
 * Returns 0, or -1 when the name is not a listed model. */
int srv_model_resolve(const srv_models *m, const char *name, char *path, size_t n);
/* Same for a LoRA name (file name with or without .safetensors under the
 * lora dirs); hub names and --allow-paths paths pass through. */
int srv_lora_resolve(const srv_models *m, const char *name, char *path, size_t n);

/* /sdapi/v1/sd-models and /sdapi/v1/loras bodies. */
cJSON *srv_models_list(const srv_models *m);
cJSON *srv_loras_list(const srv_models *m);
/* The first model of the first dir ("" when none), for the default. */
void srv_models_first(const srv_models *m, char *name, size_t n);

#endif
