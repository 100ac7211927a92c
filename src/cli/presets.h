/* Quality presets and styles of the seed tool: a preset names a model,
 * step count, refiner and upscale factor; explicit flags override it. */
#ifndef SDGEN_CLI_PRESETS_H
#define SDGEN_CLI_PRESETS_H

#include "sdgen.h"

typedef struct preset {
  const char *name;
  const char *model;
  const char *refiner; /* NULL: none */
  int steps;
  int width, height;   /* 0: model default */
  float cfg;           /* < 0: model default */
  const char *sampler; /* NULL: model default */
  int upscale;         /* 0: none */
  const char *style;   /* NULL: none */
  const char *memory;  /* peak RAM of the fully resident plan, for --list-presets */
  const char *about;
  /* few-step recipes (0 / NULL: as the model's scheduler says) */
  const char *timestep_spacing;
  const char *prediction_type;
  int lcm_auto; /* LCM-distilled UNet as is, else the family's LCM-LoRA */
} preset;

typedef struct style {
  const char *name;
  const char *suffix;   /* appended to the prompt */
  const char *negative; /* default negative prompt */
} style;

const preset *preset_find(const char *name);
const style *style_find(const char *name);
/* Prints every preset with its model, steps, refiner, upscale and memory. */
void presets_print(void);
/* Comma-separated names, for error messages. */
const char *preset_names(void);
const char *style_names(void);

#endif
