/* Base stage for SD3 / SD3.5 models. */
#include "pipeline/generate_internal.h"

int gen_base_sd3(gen_run *r) {
  return sd_fail(r->err, SD_ERR_UNSUPPORTED, "SD3 models are not wired into generate yet");
}
