/* Pipeline benchmark: a thin client of sdgen_bench (include/sdgen.h), the
 * same run as `generate --bench`, kept for scripts that call this program.
 *
 * usage: bench_pipeline --model PATH [--tokenizers DIR] [--size PX]
 *                       [--threads N] [--precision fp32|bf16] [--json FILE]
 *
 * The model family (SD 1.x/2.x, SDXL, SD3) is detected from the model;
 * the size defaults to the model's native one. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sdgen.h"
#include "tensor/blas_setup.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: bench_pipeline --model PATH [--tokenizers DIR] [--size PX]\n"
          "                      [--threads N] [--precision fp32|bf16] [--json FILE]\n"
          "PATH: a diffusers folder or single .safetensors (e.g. from make_random_model).\n");
}

int main(int argc, char **argv) {
  sd_blas_select_kernels(argv);
  sdgen_params p = sdgen_default_params();
  p.model = NULL;
  p.threads = 2;
  const char *json = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    }
    if (!v) {
      usage(stderr);
      return 2;
    }
    i++;
    if (!strcmp(a, "--model"))
      p.model = v;
    else if (!strcmp(a, "--tokenizers"))
      p.tokenizers_dir = v;
    else if (!strcmp(a, "--size"))
      p.width = p.height = atoi(v);
    else if (!strcmp(a, "--threads"))
      p.threads = atoi(v);
    else if (!strcmp(a, "--precision"))
      p.precision = v;
    else if (!strcmp(a, "--json"))
      json = v;
    else {
      usage(stderr);
      return 2;
    }
  }
  if (!p.model) {
    usage(stderr);
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0); /* progress lines show up when piped */
  sdgen_ctx *ctx;
  if (sdgen_ctx_new(&ctx)) {
    fprintf(stderr, "error: out of memory\n");
    return 1;
  }
  int rc = sdgen_bench(ctx, &p, json, stdout);
  if (rc) fprintf(stderr, "error: %s\n", sdgen_last_error(ctx));
  sdgen_ctx_free(ctx);
  return rc ? 1 : 0;
}
