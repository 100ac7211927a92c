/* The LCM recipe for any SD 1.x / SDXL model (params->lcm_auto, the `lcm`
 * preset): an LCM-distilled UNet (unet/config.json time_cond_proj_dim, or
 * a single file with a time_embed cond_proj) runs as it is, the generation
 * stage then following LatentConsistencyModelPipeline; a plain SD 1.x or
 * SDXL base model gets its family's LCM-LoRA appended to the LoRA list, the
 * LCM sampler and guidance 1.0 (what the flags left unset), as diffusers'
 * LCM-LoRA recipe does. Everything else is refused before any weight is
 * read. */
#include <string.h>

#include "base/alloc.h"
#include "io/checkpoint_map.h"
#include "io/json.h"
#include "io/model_dir.h"
#include "pipeline/generate_internal.h"

#define LCM_LORA_SD15 "latent-consistency/lcm-lora-sdv1-5"
#define LCM_LORA_SDXL "latent-consistency/lcm-lora-sdxl"

/* *distilled = the UNet takes a guidance embedding; *kind = "sd1", "sd2",
 * "sdxl", or "" for any other model. */
static int inspect(const char *path, int *distilled, const char **kind, sd_error *err) {
  *distilled = 0;
  *kind = "";
  if (sd_is_dir(path)) {
    const char *family;
    int rc = gen_model_family(path, &family, err);
    if (rc) return rc;
    char p[4200];
    cJSON *cfg = NULL;
    sd_error e = {0};
    sd_path_join(p, sizeof p, path, "unet/config.json");
    if (sd_is_file(p) && (rc = sd_json_read_file(p, &cfg, &e)) == SD_ERR_OOM)
      return sd_fail(err, rc, "%s", e.msg);
    *distilled = sd_json_int(cfg, "time_cond_proj_dim", 0) > 0;
    int linear = sd_json_bool(cfg, "use_linear_projection", 0);
    cJSON_Delete(cfg);
    /* SD 2.x folders say StableDiffusionPipeline too: linear proj_in */
    *kind = strcmp(family, "sd1") == 0 ? (linear ? "sd2" : "sd1")
            : strcmp(family, "sdxl") == 0 ? "sdxl"
                                          : "";
    return SD_OK;
  }
  sd_weights *w = NULL;
  int rc = sd_weights_open(&w, path, err);
  if (rc) return rc;
  sd_checkpoint_info info;
  sd_checkpoint_detect(w, &info);
  for (int i = 0; i < sd_weights_count(w) && !*distilled; i++) {
    const char *name = sd_weights_name_at(w, i);
    *distilled = strstr(name, "time_embed") && strstr(name, "cond_proj.weight");
  }
  sd_weights_free(w);
  *kind = info.family == SD_FAMILY_SD1         ? "sd1"
          : info.family == SD_FAMILY_SD2       ? "sd2"
          : info.family == SD_FAMILY_SDXL_BASE ? "sdxl"
                                               : "";
  return SD_OK;
}

int gen_lcm_params(const char *model_path, const sdgen_params *p, sdgen_params *out,
                   sdgen_lora **loras, sd_error *err) {
  *out = *p;
  *loras = NULL;
  int distilled;
  const char *kind;
  int rc = inspect(model_path, &distilled, &kind, err);
  if (rc) return rc;
  if (distilled) return SD_OK; /* the UNet stage runs the LCM pipeline */
  if (!kind[0] || strcmp(kind, "sd2") == 0)
    return sd_fail(err, SD_ERR_ARG,
                   "the LCM recipe needs an LCM-distilled UNet or an SD 1.5 / SDXL base model "
                   "(for its LCM-LoRA); %s is %s",
                   p->model ? p->model : model_path, kind[0] ? "an SD 2.x model" : "neither");
  *loras = sd_alloc(sizeof(sdgen_lora) * (size_t)(p->n_loras + 1));
  if (!*loras) return sd_fail(err, SD_ERR_OOM, "out of memory");
  for (int i = 0; i < p->n_loras; i++) (*loras)[i] = p->loras[i];
  (*loras)[p->n_loras].path = strcmp(kind, "sdxl") == 0 ? LCM_LORA_SDXL : LCM_LORA_SD15;
  (*loras)[p->n_loras].scale = 1.0f;
  out->loras = *loras;
  out->n_loras = p->n_loras + 1;
  if (!out->sampler) out->sampler = "lcm";
  if (out->cfg < 0) out->cfg = 1.0f;
  return SD_OK;
}
