/* The images the CLI writes equal diffusers' goldens after 8-bit
 * quantization (+-1 level), for every txt2img case of every SD 1.5 / SDXL
 * family fixture, from the diffusers folder and from the single file.
 * Runs the built `generate` (ctest runs in the build folder). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/image.h"
#include "io/json.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "test_util.h"

#ifndef SDGEN_FIXTURES_DEFAULT
#define SDGEN_FIXTURES_DEFAULT "../../shared/fixtures"
#endif

/* Shell-quotes s into out (single quotes). */
static void quote(char *out, size_t n, const char *s) {
  size_t u = 0;
  out[u++] = '\'';
  for (; *s && u + 5 < n; s++) {
    if (*s == '\'') {
      memcpy(out + u, "'\\''", 4);
      u += 4;
    } else {
      out[u++] = *s;
    }
  }
  out[u++] = '\'';
  out[u] = 0;
}

static int compare_image(const char *png, const sd_tensor *g, int index, int *worst) {
  sd_image img = {0};
  sd_error err = {0};
  if (sd_image_read(png, &img, &err)) {
    fprintf(stderr, "%s\n", err.msg);
    return 0;
  }
  int64_t per = (int64_t)img.width * img.height * 3;
  if (g->ndim != 4 || g->shape[1] != img.height || g->shape[2] != img.width) {
    sd_image_free(&img);
    return 0;
  }
  const uint8_t *gp = (const uint8_t *)g->data + per * index;
  *worst = 0;
  for (int64_t i = 0; i < per; i++) {
    int d = abs((int)img.data[i] - (int)gp[i]);
    if (d > *worst) *worst = d;
  }
  sd_image_free(&img);
  return 1;
}

/* The command-line flags that give a case's `requires` features (LoRAs,
 * scheduler overrides, a tiny VAE). Returns 0, after saying why, for a case
 * whose settings the command line cannot express (the conformance runner
 * checks it through the library). */
static int case_flags(const char *fixtures, const cJSON *root, const cJSON *kase, char *out,
                      size_t n) {
  const cJSON *pa = cJSON_GetObjectItemCaseSensitive(kase, "params");
  const char *name = sd_json_str(kase, "name", "?");
  size_t u = 0;
  out[0] = 0;
  const cJSON *l;
  cJSON_ArrayForEach(l, cJSON_GetObjectItemCaseSensitive(kase, "lora"))
    u += (size_t)snprintf(out + u, u < n ? n - u : 0, " --lora %s/%s:%g", fixtures,
                          sd_json_str(l, "file", ""), sd_json_num(l, "scale", 1.0));
  const char *vae = sd_json_str(kase, "vae_folder", NULL);
  if (vae) u += (size_t)snprintf(out + u, u < n ? n - u : 0, " --vae %s/%s", fixtures, vae);
  const char *cls = sd_json_str(pa, "scheduler_class", NULL);
  if (cls) {
    static const struct { const char *cls, *sampler; } map[] = {
        {"EulerDiscreteScheduler", "euler"}, {"LCMScheduler", "lcm"}, {"DDIMScheduler", "ddim"},
        {"EulerAncestralDiscreteScheduler", "euler_a"}, {"PNDMScheduler", "pndm"}};
    const char *sampler = NULL;
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
      if (!strcmp(cls, map[i].cls)) sampler = map[i].sampler;
    /* overrides the CLI has a flag for; any other must equal the folder's */
    char path[4400];
    snprintf(path, sizeof path, "%s/%s/scheduler/scheduler_config.json", fixtures,
             sd_json_str(kase, "model_folder", sd_json_str(root, "model_folder", "")));
    cJSON *sc = NULL;
    sd_error err = {0};
    sd_json_read_file(path, &sc, &err);
    const cJSON *o;
    cJSON_ArrayForEach(o, cJSON_GetObjectItemCaseSensitive(pa, "from_config_overrides")) {
      if (!strcmp(o->string, "timestep_spacing") && cJSON_IsString(o)) {
        u += (size_t)snprintf(out + u, u < n ? n - u : 0, " --timestep-spacing %s",
                              o->valuestring);
        continue;
      }
      if (!strcmp(o->string, "prediction_type") && cJSON_IsString(o)) {
        u += (size_t)snprintf(out + u, u < n ? n - u : 0, " --prediction-type %s",
                              o->valuestring);
        continue;
      }
      const cJSON *f = sc ? cJSON_GetObjectItemCaseSensitive(sc, o->string) : NULL;
      if (!f || !cJSON_Compare(f, o, 1)) {
        printf("SKIP %s: override %s has no command-line flag (checked by conformance)\n", name,
               o->string);
        cJSON_Delete(sc);
        return 0;
      }
    }
    cJSON_Delete(sc);
    if (!sampler) {
      CHECK_MSG(0, "%s: scheduler class %s has no CLI sampler", name, cls);
      return 0;
    }
    u += (size_t)snprintf(out + u, u < n ? n - u : 0, " --sampler %s", sampler);
  }
  CHECK_MSG(u < n, "%s: flags too long", name);
  return u < n;
}

static void run_model(const char *fixtures, const char *model, const cJSON *root) {
  char golden_dir[4096], p[4200];
  snprintf(golden_dir, sizeof golden_dir, "%s/golden/%s", fixtures, model);
  const cJSON *kase;
  cJSON_ArrayForEach(kase, cJSON_GetObjectItemCaseSensitive(root, "cases")) {
    const char *kind = sd_json_str(kase, "kind", "");
    if (strcmp(kind, "txt2img") != 0 && strcmp(kind, "lcm_txt2img") != 0) continue;
    const cJSON *pa = cJSON_GetObjectItemCaseSensitive(kase, "params");
    char extra[8192];
    if (!case_flags(fixtures, root, kase, extra, sizeof extra)) continue;
    sd_weights *g = NULL;
    sd_error err = {0};
    snprintf(p, sizeof p, "%s/%s", golden_dir, sd_json_str(kase, "file", ""));
    if (sd_weights_open(&g, p, &err)) {
      CHECK_MSG(0, "%s", err.msg);
      continue;
    }
    const sd_tensor *gu8 = sd_weights_get(
        g, sd_json_str(cJSON_GetObjectItemCaseSensitive(kase, "outputs"), "image_u8", ""));
    const char *folder = sd_json_str(kase, "model_folder", sd_json_str(root, "model_folder", model));
    const char *single = sd_json_str(root, "single_file", NULL);
    for (int layout = 0; layout < (single ? 2 : 1); layout++) {
      char cmd[16384], qp[4096], qn[4096] = "", model_arg[8192], out[512];
      snprintf(out, sizeof out, "cli_golden_out/%s_%s_%d", model,
               sd_json_str(kase, "name", "x"), layout);
      quote(qp, sizeof qp, sd_json_str(pa, "prompt", ""));
      const cJSON *neg = cJSON_GetObjectItemCaseSensitive(pa, "negative_prompt");
      if (cJSON_IsString(neg)) {
        char q[4000];
        quote(q, sizeof q, neg->valuestring);
        snprintf(qn, sizeof qn, "--negative-prompt %s", q);
      }
      if (layout == 0)
        snprintf(model_arg, sizeof model_arg, "--model %s/%s", fixtures, folder);
      else
        snprintf(model_arg, sizeof model_arg, "--model %s/%s --config %s/%s --tokenizers %s/tokenizers",
                 fixtures, single, fixtures, folder, fixtures);
      snprintf(cmd, sizeof cmd,
               "rm -rf %s && ./generate %s %s %s %s --steps %d --n %d --cfg %g --seed %lld "
               "--width %d --height %d --output %s -q --threads 1 > %s.list",
               out, qp, qn, model_arg, extra, sd_json_int(pa, "num_inference_steps", 4),
               sd_json_int(pa, "num_images_per_prompt", 1),
               sd_json_num(pa, "guidance_scale", 7.5), (long long)sd_json_num(pa, "latents_seed", 0),
               sd_json_int(pa, "width", 128), sd_json_int(pa, "height", 128), out, out);
      int rc = system(cmd);
      CHECK_MSG(rc == 0, "%s/%s layout %d: generate failed (%d)", model,
                sd_json_str(kase, "name", ""), layout, rc);
      if (rc) continue;
      snprintf(p, sizeof p, "%s.list", out);
      FILE *f = fopen(p, "r");
      char line[4096];
      int idx = 0;
      while (f && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        int worst = 99;
        int ok = gu8 && compare_image(line, gu8, idx, &worst);
        CHECK_MSG(ok && worst <= 1, "%s/%s layout %d image %d: max diff %d levels", model,
                  sd_json_str(kase, "name", ""), layout, idx, worst);
        if (ok && worst <= 1)
          printf("PASS %s/%s %s image %d: max |diff| %d\n", model, sd_json_str(kase, "name", ""),
                 layout ? "single-file" : "folder", idx, worst);
        idx++;
      }
      if (f) fclose(f);
      CHECK_MSG(idx == sd_json_int(pa, "num_images_per_prompt", 1), "%s: %d images listed", out,
                idx);
    }
    sd_weights_free(g);
  }
}

/* SD3 family: cases.e2e.runs; image_u8 is (1, 3, H, W). The diffusers
 * folder, and the single file with the separate text encoder files. */
static void run_sd3_model(const char *fixtures, const char *model, const cJSON *root) {
  char p[4200];
  const cJSON *e2e = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "cases"), "e2e");
  const cJSON *run;
  sd_weights *g = NULL;
  sd_error err = {0};
  snprintf(p, sizeof p, "%s/golden/%s/golden.safetensors", fixtures, model);
  if (sd_weights_open(&g, p, &err)) {
    CHECK_MSG(0, "%s", err.msg);
    return;
  }
  char folder[1024];
  snprintf(folder, sizeof folder, "%s", sd_json_str(root, "model_folder", model));
  size_t fl = strlen(folder);
  if (fl && folder[fl - 1] == '/') folder[fl - 1] = 0;
  const char *single = sd_json_str(root, "single_file", NULL);
  char enc[1024];
  snprintf(enc, sizeof enc, "%.1000s/text_encoders", fixtures);
  cJSON_ArrayForEach(run, cJSON_GetObjectItemCaseSensitive(e2e, "runs")) {
    const char *tag = sd_json_str(run, "tag", "x");
    const char *lat = sd_json_str(run, "latents", "");
    const char *seedp = strstr(lat, "seed ");
    long long seed = seedp ? atoll(seedp + 5) : 0;
    int no_t5 = strcmp(sd_json_str(run, "text_encoder_3", "used"), "used") != 0;
    snprintf(p, sizeof p, "e2e.%s.image_u8", tag);
    const sd_tensor *gu8 = sd_weights_get(g, p);
    int layouts = single && sd_is_dir(enc) && strcmp(model, "sd35-large") == 0 ? 2 : 1;
    for (int layout = 0; layout < layouts; layout++) {
      char cmd[32768], qp[4096], qn[4096] = "", model_arg[16384], out[512];
      snprintf(out, sizeof out, "cli_golden_out/%s_%s_%d", model, tag, layout);
      quote(qp, sizeof qp, sd_json_str(run, "prompt", ""));
      const cJSON *neg = cJSON_GetObjectItemCaseSensitive(run, "negative_prompt");
      if (cJSON_IsString(neg)) {
        char q[4000];
        quote(q, sizeof q, neg->valuestring);
        snprintf(qn, sizeof qn, "--negative-prompt %s", q);
      }
      if (layout == 0)
        snprintf(model_arg, sizeof model_arg, "--model %s/%s", fixtures, folder);
      else
        snprintf(model_arg, sizeof model_arg,
                 "--model %s/%s --clip-l %s/clip_l.safetensors --clip-g %s/clip_g.safetensors "
                 "--t5 %s/t5xxl.safetensors --tokenizers %s/%s",
                 fixtures, single, enc, enc, enc, fixtures, folder);
      snprintf(cmd, sizeof cmd,
               "rm -rf %s && ./generate %s %s %s %s --steps %d --cfg %g --seed %lld --width %d "
               "--height %d --output %s -q --threads 1 > %s.list",
               out, qp, qn, model_arg, no_t5 ? "--no-t5" : "",
               sd_json_int(run, "num_inference_steps", 4), sd_json_num(run, "guidance_scale", 0),
               seed, sd_json_int(run, "width", 128), sd_json_int(run, "height", 128), out, out);
      int rc = system(cmd);
      CHECK_MSG(rc == 0, "%s/%s layout %d: generate failed (%d)", model, tag, layout, rc);
      if (rc || !gu8) continue;
      snprintf(p, sizeof p, "%s.list", out);
      FILE *f = fopen(p, "r");
      char line[4096] = "";
      if (f && fgets(line, sizeof line, f)) line[strcspn(line, "\n")] = 0;
      if (f) fclose(f);
      sd_image img = {0};
      int worst = 99;
      if (!sd_image_read(line, &img, &err) && gu8->ndim == 4 && gu8->shape[1] == 3 &&
          gu8->shape[2] == img.height && gu8->shape[3] == img.width) {
        const uint8_t *gp = gu8->data;
        int64_t hw = (int64_t)img.width * img.height;
        worst = 0;
        for (int64_t i = 0; i < hw; i++)
          for (int c = 0; c < 3; c++) {
            int d = abs((int)img.data[i * 3 + c] - (int)gp[c * hw + i]);
            if (d > worst) worst = d;
          }
      }
      sd_image_free(&img);
      CHECK_MSG(worst <= 1, "%s/%s layout %d: max diff %d levels", model, tag, layout, worst);
      if (worst <= 1)
        printf("PASS %s/e2e.%s %s: max |diff| %d\n", model, tag, layout ? "single-file" : "folder",
               worst);
    }
  }
  sd_weights_free(g);
}

int main(int argc, char **argv) {
  const char *fixtures = argc > 1 ? argv[1] : getenv("SDGEN_FIXTURES");
  if (!fixtures) fixtures = SDGEN_FIXTURES_DEFAULT;
  char p[4096];
  snprintf(p, sizeof p, "%s/golden", fixtures);
  if (!sd_is_dir(p)) {
    printf("SKIP: fixtures not found at %s\n", fixtures);
    return 77;
  }
  if (!sd_is_file("./generate")) {
    printf("SKIP: ./generate not built here\n");
    return 77;
  }
  mkdir("cli_golden_out", 0755);
  /* Every golden folder whose cases.json is a list (the UNet family). */
  DIR *d = opendir(p);
  struct dirent *e;
  while (d && (e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    cJSON *root = NULL;
    sd_error err = {0};
    char cj[4400];
    snprintf(cj, sizeof cj, "%s/%s/cases.json", p, e->d_name);
    if (!sd_is_file(cj)) continue;
    if (sd_json_read_file(cj, &root, &err)) {
      CHECK_MSG(0, "%s", err.msg);
      continue;
    }
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases");
    if (cJSON_IsArray(cases))
      run_model(fixtures, e->d_name, root);
    else if (cJSON_GetObjectItemCaseSensitive(cases, "e2e"))
      run_sd3_model(fixtures, e->d_name, root);
    cJSON_Delete(root);
  }
  if (d) closedir(d);
  return test_finish();
}
