/* Conformance runner entry: discovers what the fixtures folder holds. */
#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "conformance.h"
#include "io/json.h"
#include "tensor/blas_setup.h"
#include "tensor/ops.h"

int conf_wants(const conf_ctx *c, const char *id) {
  return !c->filter || strstr(id, c->filter) != NULL;
}

void conf_result(conf_ctx *c, const char *id, int ok, const char *fmt, ...) {
  char detail[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, sizeof detail, fmt, ap);
  va_end(ap);
  if (ok) c->passed++; else c->failed++;
  printf("%s %s: %s\n", ok ? "PASS" : "FAIL", id, detail);
  fflush(stdout);
}

void conf_skip(conf_ctx *c, const char *id, const char *fmt, ...) {
  char detail[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, sizeof detail, fmt, ap);
  va_end(ap);
  c->skipped++;
  printf("SKIP %s: %s\n", id, detail);
  fflush(stdout);
}

/* Case features ("requires") this runner implements, one line each. */
static const char *const conf_features[] = {
    "timestep_cond",      /* unet cases: LCM guidance embedding */
    "lcm_pipeline",       /* kind lcm_txt2img */
    "scheduler_override", /* txt2img: params.scheduler_class + from_config_overrides */
    "model_folder",       /* txt2img / img2img: the case's own model folder */
    "vae_folder",         /* txt2img / img2img: an AutoencoderTiny as the VAE */
    "taesd",              /* kinds taesd_decode / taesd_encode, both file formats */
    "lora", /* text_encoder, unet, txt2img: the case's LoRA list, merged and side path */
    NULL,
};

int conf_requires_met(conf_ctx *c, const char *id, const cJSON *kase) {
  const cJSON *req = cJSON_GetObjectItemCaseSensitive(kase, "requires");
  if (!req) return 1;
  if (!cJSON_IsArray(req)) {
    conf_result(c, id, 0, "\"requires\" is not a list");
    return 0;
  }
  const cJSON *f;
  cJSON_ArrayForEach(f, req) {
    int known = 0;
    for (int i = 0; conf_features[i] && cJSON_IsString(f); i++)
      if (strcmp(conf_features[i], f->valuestring) == 0) known = 1;
    if (!known) {
      conf_result(c, id, 0, "requires feature '%s', which this runner does not implement",
                  cJSON_IsString(f) ? f->valuestring : "?");
      return 0;
    }
  }
  return 1;
}

double conf_rel_l2(const float *a, const float *b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = (double)a[i] - (double)b[i];
    num += d * d;
    den += (double)b[i] * (double)b[i];
  }
  if (num != num) return INFINITY;
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

double conf_max_abs(const float *a, const float *b, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - (double)b[i]);
    if (!(d <= m)) m = d; /* NaN propagates */
  }
  return m;
}

int conf_check_tensor(conf_ctx *c, const char *id, const float *got, int64_t n,
                      const sd_tensor *golden, double tol) {
  if (!golden) {
    conf_result(c, id, 0, "golden tensor missing");
    return 0;
  }
  if (sd_tensor_numel(golden) != n) {
    char s[96];
    conf_result(c, id, 0, "size %lld differs from golden %s", (long long)n,
                sd_tensor_shape_str(golden, s, sizeof s));
    return 0;
  }
  sd_tensor *g = sd_tensor_to_f32(golden);
  if (!g) {
    conf_result(c, id, 0, "out of memory");
    return 0;
  }
  double e = conf_rel_l2(got, g->data, n);
  if (c->bf16 && tol < CONF_BF16_TOL) tol = CONF_BF16_TOL;
  int ok = e <= tol;
  conf_result(c, id, ok, "rel_l2 %.3g (tol %.0e)", e, tol);
  sd_tensor_free(g);
  return ok;
}

void conf_path(char *out, size_t n, const char *a, const char *b) {
  snprintf(out, n, "%s/%s", a, b);
}

static int exists(const char *p) {
  struct stat st;
  return stat(p, &st) == 0;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv) {
  sd_blas_select_kernels(argv);
  conf_ctx c = {0};
  const char *pos[2] = {NULL, NULL};
  int npos = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--precision") && i + 1 < argc) {
      const char *v = argv[++i];
      if (!strcmp(v, "bf16")) {
        if (sd_set_precision(SD_PREC_BF16) != SD_OK) {
          printf("SKIP: this CPU has no bf16 dot instructions; bf16 mode not checked\n");
          printf("0 passed, 0 failed\n");
          return 77;
        }
        c.bf16 = 1;
      } else if (strcmp(v, "fp32") != 0) {
        fprintf(stderr, "conformance: unknown precision '%s' (fp32 or bf16)\n", v);
        return 2;
      }
    } else if (npos < 2) {
      pos[npos++] = argv[i];
    } else {
      npos = 3;
    }
  }
  if (npos < 1 || npos > 2) {
    fprintf(stderr, "usage: conformance FIXTURES_DIR [FILTER] [--precision fp32|bf16]\n");
    return 2;
  }
  c.fixtures = pos[0];
  c.filter = pos[1];
  c.verbose = getenv("SDGEN_CONF_VERBOSE") != NULL;
  if (!exists(c.fixtures)) {
    printf("SKIP: fixtures folder %s not found; conformance not checked\n",
           c.fixtures);
    printf("0 passed, 0 failed\n");
    return 77;
  }
  char p[4096];
  conf_path(p, sizeof p, c.fixtures, "tokenizers");
  if (exists(p)) conf_suite_tokenizers(&c, p);
  conf_path(p, sizeof p, c.fixtures, "rng");
  if (exists(p)) conf_suite_rng(&c, p);

  /* Every golden/<model>/cases.json, in name order. */
  conf_path(p, sizeof p, c.fixtures, "golden");
  DIR *d = opendir(p);
  char *names[256];
  int nn = 0;
  if (d) {
    struct dirent *e;
    while ((e = readdir(d)) && nn < 256)
      if (e->d_name[0] != '.') names[nn++] = strdup(e->d_name);
    closedir(d);
  }
  qsort(names, (size_t)nn, sizeof(char *), cmp_str);
  for (int i = 0; i < nn; i++) {
    char dir[4096], cj[4200];
    snprintf(dir, sizeof dir, "%s/golden/%s", c.fixtures, names[i]);
    snprintf(cj, sizeof cj, "%s/cases.json", dir);
    struct stat st;
    if (stat(dir, &st) == 0 && !S_ISDIR(st.st_mode)) { /* a file beside the folders */
      free(names[i]);
      continue;
    }
    if (!exists(cj)) {
      conf_result(&c, names[i], 0, "golden folder has no cases.json");
      free(names[i]);
      continue;
    }
    cJSON *root = NULL;
    sd_error err = {0};
    if (sd_json_read_file(cj, &root, &err)) {
      conf_result(&c, names[i], 0, "%s", err.msg);
      free(names[i]);
      continue;
    }
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases");
    if (strcmp(names[i], "upscale") == 0 ||
        cJSON_GetObjectItemCaseSensitive(root, "lanczos"))
      conf_suite_upscale(&c, dir, root);
    else if (cJSON_IsArray(cases))
      conf_suite_unet_family(&c, names[i], dir, root);
    else if (cJSON_IsObject(cases))
      conf_suite_sd3_family(&c, names[i], dir, root);
    else
      conf_result(&c, names[i], 0, "unrecognized cases.json layout");
    cJSON_Delete(root);
    free(names[i]);
  }
  if (c.skipped) printf("(%d cases skipped)\n", c.skipped);
  printf("%d passed, %d failed\n", c.passed, c.failed);
  return c.failed ? 1 : 0;
}
