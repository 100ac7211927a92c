/* CLI commands other than generating: listing the model cache,
 * downloading, finishing a saved latents file. Each returns the exit code. */
#ifndef SDGEN_CLI_COMMANDS_H
#define SDGEN_CLI_COMMANDS_H

#include "cli/console.h"
#include "sdgen.h"

int cmd_list_models(const sdgen_params *p, console *con);
int cmd_download(const char *model, const sdgen_params *p, console *con);
int cmd_decode(const char *latents_file, const sdgen_params *p, console *con);
/* generate --bench: the report on stdout, JSON to json_path when given. */
int cmd_bench(const sdgen_params *p, const char *json_path, console *con);

#endif
