#include "cli/presets.h"

#include <stdio.h>
#include <string.h>

#define SD15 "Lykon/DreamShaper-8"
#define SDXL "stabilityai/stable-diffusion-xl-base-1.0"
#define SDXL_REFINER "stabilityai/stable-diffusion-xl-refiner-1.0"
#define SD35_LARGE "stabilityai/stable-diffusion-3.5-large"
#define SD35_TURBO "stabilityai/stable-diffusion-3.5-large-turbo"
#define SD_TURBO "stabilityai/sd-turbo"

/* Memory figures: peak process RSS of the fully resident plan at the
 * preset's size (weights F16/BF16 mapped + activations); the planner picks
 * frugal plans below them. */
static const preset k_presets[] = {
    {"fast", SD15, NULL, 20, 512, 512, -1, "dpmpp_2m_karras", 0, NULL, "2.6GB",
     "SD 1.5 (DreamShaper 8), 20 steps", NULL, NULL, 0},
    {"quality", SD15, NULL, 30, 512, 512, -1, NULL, 0, NULL, "2.6GB",
     "SD 1.5 (DreamShaper 8), 30 steps", NULL, NULL, 0},
    {"hd", SDXL, NULL, 30, 1024, 1024, -1, NULL, 0, NULL, "7.9GB", "SDXL base, 30 steps", NULL,
     NULL, 0},
    {"max", SDXL, SDXL_REFINER, 40, 1024, 1024, -1, NULL, 0, NULL, "7.9GB",
     "SDXL base + refiner, 40 steps", NULL, NULL, 0},
    {"ultra", SDXL, SDXL_REFINER, 50, 1024, 1024, -1, NULL, 0, NULL, "7.9GB",
     "SDXL base + refiner, 50 steps", NULL, NULL, 0},
    {"ultra-hd", SDXL, SDXL_REFINER, 50, 1024, 1024, -1, NULL, 2, NULL, "7.9GB",
     "SDXL base + refiner + 2x upscale (2048x2048), 50 steps", NULL, NULL, 0},
    {"4k", SDXL, NULL, 30, 1024, 1024, -1, NULL, 4, NULL, "7.9GB",
     "SDXL base + 4x upscale (4096x4096), 30 steps", NULL, NULL, 0},
    {"4k-ultra", SDXL, SDXL_REFINER, 50, 1024, 1024, -1, NULL, 4, NULL, "7.9GB",
     "SDXL base + refiner + 4x upscale (4096x4096), 50 steps", NULL, NULL, 0},
    {"photorealistic", SDXL, SDXL_REFINER, 40, 1024, 1024, -1, NULL, 0, "realism", "7.9GB",
     "SDXL base + refiner, realism style, 40 steps", NULL, NULL, 0},
    {"ultra-realistic", SDXL, SDXL_REFINER, 50, 1024, 1024, -1, NULL, 2, "realism", "7.9GB",
     "SDXL base + refiner + 2x, realism style, 50 steps", NULL, NULL, 0},
    {"cinematic", SDXL, NULL, 40, 1344, 768, -1, NULL, 0, "cinematic", "8.4GB",
     "SDXL base at 1344x768 (wide), cinematic style, 40 steps", NULL, NULL, 0},
    {"lcm", SD15, NULL, 4, 512, 512, -1, NULL, 0, NULL, "2.6GB",
     "SD 1.5 + LCM-LoRA (or an LCM-distilled model as is), 4 steps, guidance 1", NULL, NULL, 1},
    {"turbo", SD_TURBO, NULL, 1, 512, 512, 0.0f, "euler", 0, NULL, "2.6GB",
     "SD-Turbo (or SDXL-Turbo with --model), 1 step, trailing Euler, no guidance", "trailing",
     "epsilon", 0},
    {"sd3.5", SD35_TURBO, NULL, 8, 1024, 1024, 0.0f, NULL, 0, NULL, "26GB",
     "SD 3.5 Large Turbo, 8 steps, no guidance", NULL, NULL, 0},
    {"sd3.5-4k", SD35_TURBO, NULL, 8, 1024, 1024, 0.0f, NULL, 4, NULL, "26GB",
     "SD 3.5 Large Turbo + 4x upscale (4096x4096), 8 steps", NULL, NULL, 0},
    {"pro", SD35_LARGE, NULL, 28, 1024, 1024, 4.5f, NULL, 0, NULL, "26GB",
     "SD 3.5 Large, 28 steps, guidance 4.5 (--pro)", NULL, NULL, 0},
};

static const style k_styles[] = {
    {"anime", ", anime style, vibrant colors, cel shading, detailed illustration, studio quality",
     "photorealistic, photo, 3d render, lowres, blurry, bad anatomy, watermark, text"},
    {"fantasy", ", fantasy art, epic, magical atmosphere, intricate details, dramatic lighting",
     "modern, mundane, lowres, blurry, watermark, text, deformed"},
    {"scifi", ", science fiction, futuristic, high-tech, cinematic lighting, highly detailed",
     "medieval, rustic, lowres, blurry, watermark, text, deformed"},
    {"realism", ", photorealistic, ultra detailed, 8k, sharp focus, natural lighting, DSLR photo",
     "cartoon, anime, illustration, painting, drawing, 3d render, lowres, blurry, deformed, "
     "watermark, text"},
    {"cinematic", ", cinematic film still, shallow depth of field, dramatic lighting, film grain",
     "cartoon, anime, lowres, blurry, watermark, text, oversaturated"},
};

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

const preset *preset_find(const char *name) {
  for (int i = 0; i < COUNT(k_presets); i++)
    if (strcmp(k_presets[i].name, name) == 0) return &k_presets[i];
  return NULL;
}

const style *style_find(const char *name) {
  for (int i = 0; i < COUNT(k_styles); i++)
    if (strcmp(k_styles[i].name, name) == 0) return &k_styles[i];
  return NULL;
}

void presets_print(void) {
  printf("%-16s %-7s %-6s %-8s %-8s %s\n", "preset", "steps", "size", "upscale", "memory",
         "model (+ refiner)");
  for (int i = 0; i < COUNT(k_presets); i++) {
    const preset *p = &k_presets[i];
    char size[32], up[16];
    snprintf(size, sizeof size, "%d", p->width);
    snprintf(up, sizeof up, p->upscale ? "%dx" : "-", p->upscale);
    printf("%-16s %-7d %-6s %-8s %-8s %s%s%s\n", p->name, p->steps, size, up, p->memory, p->model,
           p->refiner ? " + " : "", p->refiner ? p->refiner : "");
    printf("%-16s %s\n", "", p->about);
  }
  printf("\nstyles: %s\n", style_names());
  printf(
      "--pro is the 'pro' preset. Explicit flags (--model, --steps, ...) override a preset.\n"
      "Memory is the fully resident peak; with less available the planner streams weights\n"
      "and slices attention/VAE instead (see --max-memory).\n");
}

static const char *join(const char *const *names, int n, char *buf, size_t cap) {
  size_t u = 0;
  buf[0] = 0;
  for (int i = 0; i < n && u < cap; i++)
    u += (size_t)snprintf(buf + u, cap - u, "%s%s", i ? ", " : "", names[i]);
  return buf;
}

const char *preset_names(void) {
  static char buf[512]; /* CLI-only, single-threaded */
  const char *names[COUNT(k_presets)];
  for (int i = 0; i < COUNT(k_presets); i++) names[i] = k_presets[i].name;
  return join(names, COUNT(k_presets), buf, sizeof buf);
}

const char *style_names(void) {
  static char buf[256];
  const char *names[COUNT(k_styles)];
  for (int i = 0; i < COUNT(k_styles); i++) names[i] = k_styles[i].name;
  return join(names, COUNT(k_styles), buf, sizeof buf);
}
