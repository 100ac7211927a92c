/* Inputs checked before work (issue 11): everything a run will need is
 * opened and validated, and every stage is checked to have a step, before
 * the first model weight is read. A run that would fail after the base
 * image was made fails here instead, in one line. */
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "io/image.h"
#include "io/model_dir.h"
#include "io/pth.h"
#include "io/safetensors.h"
#include "models/rrdbnet.h"
#include "pipeline/generate_internal.h"
#include "pipeline/unet_pipeline.h"

static int ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcmp(s + a - b, suffix) == 0;
}

int gen_open_upscaler(const char *path, int factor, sd_weights **w, sd_pth **pth,
                      sd_rrdbnet **net, sd_error *err) {
  *w = NULL;
  *pth = NULL;
  *net = NULL;
  int rc;
  if (ends_with(path, ".pth")) {
    rc = sd_pth_open(pth, path, err);
    if (!rc) rc = sd_rrdbnet_init_pth(net, *pth, err);
  } else {
    rc = sd_weights_open(w, path, err);
    if (!rc) rc = sd_rrdbnet_init(net, *w, err);
  }
  if (!rc) {
    int scale = sd_rrdbnet_config_of(*net)->scale;
    if (scale < 2 || factor % scale)
      rc = sd_fail(err, SD_ERR_ARG, "upscaler %s is x%d, which cannot give --upscale %d", path,
                   scale, factor);
  }
  if (rc) {
    sd_rrdbnet_free(*net);
    sd_weights_free(*w);
    sd_pth_free(*pth);
    *net = NULL;
    *w = NULL;
    *pth = NULL;
  }
  return rc;
}

static int check_init_image(const sdgen_params *p, sd_error *err) {
  sd_image img = {0};
  int rc = sd_image_read(p->init_image, &img, err);
  if (rc) return rc;
  int ok = (!p->width || img.width == p->width) && (!p->height || img.height == p->height);
  if (!ok)
    rc = sd_fail(err, SD_ERR_ARG, "init image %s is %dx%d but --width/--height ask for %dx%d",
                 p->init_image, img.width, img.height, p->width ? p->width : img.width,
                 p->height ? p->height : img.height);
  else if (img.width % 8 || img.height % 8)
    rc = sd_fail(err, SD_ERR_ARG,
                 "init image %s is %dx%d: width and height must be multiples of 8",
                 p->init_image, img.width, img.height);
  sd_image_free(&img);
  return rc;
}

/* The refiner: resolved, a model we know, and one that can follow the base. */
static int check_refiner(const sdgen_params *p, const char *model_path, char *refiner_path,
                         size_t n, sd_error *err) {
  int rc;
  if ((rc = sd_resolve_model(p, p->refiner, refiner_path, n, err))) return rc;
  const char *base, *ref;
  if ((rc = gen_model_family(model_path, &base, err)) ||
      (rc = gen_model_family(refiner_path, &ref, err)))
    return rc;
  if (!ref[0])
    return sd_fail(err, SD_ERR_FORMAT, "refiner %s is not a model we know", p->refiner);
  if (strcmp(ref, "sd3") == 0)
    return sd_fail(err, SD_ERR_ARG, "refiner %s is an SD3 model; use an SDXL refiner (or an "
                   "SD 1.5 model after SD 1.5)", p->refiner);
  if (strcmp(base, "sd1") == 0 && strcmp(ref, "sd1") != 0)
    return sd_fail(err, SD_ERR_ARG, "an %s refiner cannot follow an SD 1.5 model: use an SD "
                   "1.5 model as refiner", ref);
  if (base[0] && strcmp(base, "sd1") != 0 && strcmp(ref, "sd1") == 0)
    return sd_fail(err, SD_ERR_ARG, "an SD 1.5 refiner cannot follow an %s model: use the "
                   "SDXL refiner", base);
  if (p->refiner_switch > 0 && (strcmp(base, "sdxl") != 0 || strcmp(ref, "sdxl-refiner") != 0))
    return sd_fail(err, SD_ERR_ARG, "--refiner-switch hands SDXL latents to the SDXL refiner; "
                   "%s latents cannot go to a %s model", base[0] ? base : "these", ref);
  return SD_OK;
}

/* diffusers' img2img: int(steps * strength) steps run; none is an error.
 * (Schedulers of order 2 run each of those steps twice, so the count of
 * steps is what decides.) */
static int check_stage_steps(const sdgen_params *p, sd_error *err) {
  if (p->init_image && sd_img2img_begin_index(p->steps, p->strength) >= p->steps)
    return sd_fail(err, SD_ERR_ARG,
                   "strength %g leaves no denoising step at %d steps (int(steps x strength) "
                   "= 0): raise --strength or --steps", p->strength, p->steps);
  if (p->refiner && p->refiner_switch <= 0.0f) {
    int steps = p->refiner_steps > 0 ? p->refiner_steps : 20;
    float strength = p->refiner_strength > 0 ? p->refiner_strength : 0.3f;
    if (sd_img2img_begin_index(steps, strength) >= steps)
      return sd_fail(err, SD_ERR_ARG,
                     "refiner strength %g leaves no refiner step at %d steps (int(%d x %g) = "
                     "0): raise --refiner-steps or --refiner-strength", strength, steps, steps,
                     strength);
  }
  return SD_OK;
}

/* The files the run opens by name: every LoRA (params->loras and the
 * prompt's <lora:> tags: resolved, opened for their structure, checked
 * against the model's family) and the tiny VAE (opened, latent channels
 * checked). */
static int check_run_files(const sdgen_params *p, const char *model_path, sd_error *err) {
  if (p->n_loras == 0 && !strstr(p->prompt, "<lora:") && !p->vae) return SD_OK;
  gen_run *r = sd_calloc(1, sizeof *r); /* large (LoRA paths): not on the stack */
  if (!r) return sd_fail(err, SD_ERR_OOM, "out of memory");
  r->p = p;
  r->err = err;
  sd_monitor_init(&r->mon, NULL, NULL);
  snprintf(r->model_path, sizeof r->model_path, "%s", model_path);
  const char *family;
  int rc = gen_resolve_loras(r);
  if (!rc && r->n_loras && !(rc = gen_model_family(model_path, &family, err)))
    rc = gen_check_loras(r, family);
  if (!rc && p->vae) rc = gen_open_vaes(r);
  gen_free_vaes(r);
  gen_free_loras(r);
  sd_free(r);
  return rc;
}

int gen_validate_inputs(const sdgen_params *p, const char *model_path, char *refiner_path,
                        size_t refiner_n, sd_error *err) {
  int rc = sd_validate_params(p, err);
  if (rc) return rc;
  if ((rc = check_stage_steps(p, err))) return rc;
  if (p->init_image && (rc = check_init_image(p, err))) return rc;
  if (p->refiner) {
    char local[4096];
    if (!refiner_path) {
      refiner_path = local;
      refiner_n = sizeof local;
    }
    if ((rc = check_refiner(p, model_path, refiner_path, refiner_n, err))) return rc;
  }
  if (p->upscaler) {
    char path[4096];
    sd_weights *w;
    sd_pth *pth;
    sd_rrdbnet *net;
    if ((rc = sd_resolve_model(p, p->upscaler, path, sizeof path, err))) return rc;
    if ((rc = gen_open_upscaler(path, p->upscale, &w, &pth, &net, err))) return rc;
    sd_rrdbnet_free(net);
    sd_weights_free(w);
    sd_pth_free(pth);
  }
  if ((rc = check_run_files(p, model_path, err))) return rc;
  /* Further checks of files a run needs go here: before this returns, no
   * model weight has been read. */
  return SD_OK;
}
