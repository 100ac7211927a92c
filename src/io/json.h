/* JSON helpers over cJSON: read a file, typed lookups with defaults.
 * Config files from diffusers omit fields whose default applies, so every
 * getter takes the default the reference uses. */
#ifndef SDGEN_IO_JSON_H
#define SDGEN_IO_JSON_H

#include <cjson/cJSON.h>

#include "base/status.h"

/* Parses the whole file. *out is owned by the caller (cJSON_Delete). */
int sd_json_read_file(const char *path, cJSON **out, sd_error *err);

/* Reads a whole file into a NUL-terminated buffer from sd_alloc. */
int sd_read_file(const char *path, char **data, size_t *len, sd_error *err);

double sd_json_num(const cJSON *obj, const char *key, double def);
int sd_json_int(const cJSON *obj, const char *key, int def);
int sd_json_bool(const cJSON *obj, const char *key, int def);
/* Returns the string or def (not copied; valid while obj lives). */
const char *sd_json_str(const cJSON *obj, const char *key, const char *def);
/* 1 if key exists and is not null. */
int sd_json_has(const cJSON *obj, const char *key);
/* Reads an int array (or a scalar broadcast to `n` entries) into out[n].
 * Returns the number of entries read, or -1 on type mismatch. */
int sd_json_int_array(const cJSON *obj, const char *key, int *out, int max);

#endif
