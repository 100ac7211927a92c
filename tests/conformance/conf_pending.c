/* Weak fallbacks for suites whose implementation has not landed: each
 * reports its cases as skipped, loudly, so the closing line never hides
 * unchecked fixtures. A real definition in its own conf_*.c replaces the
 * fallback at link time. */
#include "conformance.h"

#define PENDING __attribute__((weak))

PENDING void conf_suite_sd3_family(conf_ctx *c, const char *model, const char *dir,
                                   const cJSON *j) {
  conf_skip(c, model, "suite not implemented yet");
}
PENDING void conf_pipeline_case(conf_ctx *c, const char *model, const char *golden_dir,
                                const cJSON *root, const cJSON *kase) {
  conf_skip(c, model, "pipeline case %s not implemented yet",
            cJSON_GetObjectItemCaseSensitive(kase, "name")->valuestring);
}
