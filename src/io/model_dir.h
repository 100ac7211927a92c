/* Diffusers folder layout: locating a component's config and weights.
 *
 * A component folder (unet/, vae/, text_encoder/, transformer/ ...) holds
 * config.json and its weights as <base>.safetensors, the fp16 variant
 * <base>.fp16.safetensors, or shards listed by <base>.safetensors.index.json
 * (base = diffusion_pytorch_model or model). */
#ifndef SDGEN_IO_MODEL_DIR_H
#define SDGEN_IO_MODEL_DIR_H

#include <cjson/cJSON.h>

#include "base/status.h"
#include "io/safetensors.h"

/* Finds the weights file of a component folder; prefer_fp16 picks the fp16
 * variant first (as diffusers' variant="fp16"), else the plain file first.
 * Writes the path (a .safetensors or .index.json) into out. */
int sd_component_weights_path(const char *component_dir, int prefer_fp16,
                              char *out, size_t n, sd_error *err);

/* Opens a component: *weights (required) and *config (config.json, or NULL
 * when the folder has none and config may be NULL). */
int sd_component_open(const char *component_dir, int prefer_fp16,
                      sd_weights **weights, cJSON **config, sd_error *err);

/* 1 if path is a directory / a regular file. */
int sd_is_dir(const char *path);
int sd_is_file(const char *path);

/* out = a + "/" + b. */
void sd_path_join(char *out, size_t n, const char *a, const char *b);

#endif
