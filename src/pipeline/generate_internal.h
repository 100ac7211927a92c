/* Helpers shared by the generation recipe and the CLI's other commands. */
#ifndef SDGEN_PIPELINE_GENERATE_INTERNAL_H
#define SDGEN_PIPELINE_GENERATE_INTERNAL_H

#include "base/status.h"
#include "io/safetensors_write.h"
#include "sdgen.h"

/* A path that exists is used as is; otherwise a hub name is resolved
 * through the cache or downloaded. */
int sd_resolve_model(const sdgen_params *p, const char *name, char *out, size_t n,
                     sd_error *err);
int sd_validate_params(const sdgen_params *p, sd_error *err);
int sd_prepare_output_dir(const char *dir, sd_error *err);
int sd_write_text_atomic(const char *path, const char *text, sd_error *err);
/* Saves latents with the model path in the metadata (for --decode). */
int sd_write_latents(const char *path, const sd_named_tensor *latents, const char *model,
                     sd_error *err);

#endif
