/* generate — the command-line client of the sdgen library.
 *
 *   generate "a prompt" [--model PATH|ORG/NAME] [--seed N] [--steps N] ...
 *
 * Parses arguments into sdgen_params, renders events, maps failures to one
 * line on stderr and a nonzero exit code. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/memprobe.h"
#include "cli/console.h"
#include "sdgen.h"

#define DEFAULT_MODEL "Lykon/DreamShaper-8"

static sdgen_ctx *g_ctx; /* only for the signal handler */

static void on_signal(int sig) {
  (void)sig;
  if (g_ctx) sdgen_cancel(g_ctx);
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: generate \"PROMPT\" [options]\n"
          "\n"
          "  --model PATH|ORG/NAME   diffusers folder, .safetensors file or hub name\n"
          "                          (default " DEFAULT_MODEL ")\n"
          "  --negative-prompt TEXT  what the image should not show\n"
          "  --seed N                random seed (default 42)\n"
          "  --steps N               denoising steps (default 30)\n"
          "  --n N                   images per prompt (default 1)\n"
          "  --width W --height H    image size, multiples of 8 (default: the model's)\n"
          "  --cfg X                 guidance scale (default 7.5 SD 1.5, 5.0 SDXL)\n"
          "  --sampler NAME          pndm ddim euler euler_a dpmpp_2m dpmpp_2m_karras lcm\n"
          "                          (default: the model's scheduler)\n"
          "  --rng cpu|cuda          noise as torch's CPU generator (diffusers) or CUDA's\n"
          "  --init-image FILE       img2img from a PNG or JPEG\n"
          "  --strength X            img2img strength in (0, 1] (default 0.8)\n"
          "  --output DIR            output folder (default ./outputs)\n"
          "  --tokenizers DIR        tokenizer files for single-file checkpoints\n"
          "  --config DIR            diffusers folder with configs for a single file\n"
          "  --fp16-variant          load *.fp16.safetensors weights where present\n"
          "  --threads N             threads (default: all cores)\n"
          "  --max-memory SIZE       memory budget, e.g. 4G or 600M\n"
          "  --keep-latents          keep the latents file next to the image\n"
          "  --offline               never download (Hugging Face cache only)\n"
          "  --quiet | --verbose     fewer / more messages\n"
          "  --version, --help\n");
}

/* Parses an integer option value; returns 0 and prints on error. */
static int parse_int(const char *opt, const char *v, long long lo, long long hi, long long *out) {
  char *end;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (errno || *end || end == v || x < lo || x > hi) {
    fprintf(stderr, "error: %s expects an integer between %lld and %lld, got '%s'\n", opt, lo,
            hi, v);
    return 0;
  }
  *out = x;
  return 1;
}

static int parse_float(const char *opt, const char *v, float *out) {
  char *end;
  errno = 0;
  float x = strtof(v, &end);
  if (errno || *end || end == v || x != x) {
    fprintf(stderr, "error: %s expects a number, got '%s'\n", opt, v);
    return 0;
  }
  *out = x;
  return 1;
}

int main(int argc, char **argv) {
  sdgen_params p = sdgen_default_params();
  int quiet = 0, verbose = 0;
  const char *prompt = NULL;
  long long v;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *val = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED_VALUE                                                   \
  if (!val) {                                                        \
    fprintf(stderr, "error: %s needs a value\n", a);                 \
    return 2;                                                        \
  }                                                                  \
  i++
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(a, "--version") == 0) {
      printf("generate (sdgen) %s\n", sdgen_version());
      return 0;
    } else if (strcmp(a, "--quiet") == 0 || strcmp(a, "-q") == 0) {
      quiet = 1;
    } else if (strcmp(a, "--verbose") == 0 || strcmp(a, "-v") == 0) {
      verbose = 1;
    } else if (strcmp(a, "--keep-latents") == 0) {
      p.keep_latents = 1;
    } else if (strcmp(a, "--fp16-variant") == 0) {
      p.prefer_fp16 = 1;
    } else if (strcmp(a, "--offline") == 0) {
      p.offline = 1;
    } else if (strcmp(a, "--dry-run") == 0) {
      p.dry_run = 1;
    } else if (strcmp(a, "--model") == 0 || strcmp(a, "-m") == 0) {
      NEED_VALUE;
      p.model = val;
    } else if (strcmp(a, "--negative-prompt") == 0) {
      NEED_VALUE;
      p.negative_prompt = val;
    } else if (strcmp(a, "--seed") == 0) {
      NEED_VALUE;
      char *end;
      errno = 0;
      unsigned long long s = strtoull(val, &end, 10);
      if (errno || *end || end == val || val[0] == '-') {
        fprintf(stderr, "error: --seed expects a non-negative integer, got '%s'\n", val);
        return 2;
      }
      p.seed = s;
    } else if (strcmp(a, "--steps") == 0) {
      NEED_VALUE;
      if (!parse_int(a, val, 1, 10000, &v)) return 2;
      p.steps = (int)v;
    } else if (strcmp(a, "--n") == 0 || strcmp(a, "-n") == 0) {
      NEED_VALUE;
      if (!parse_int(a, val, 1, SDGEN_MAX_IMAGES, &v)) return 2;
      p.n = (int)v;
    } else if (strcmp(a, "--width") == 0 || strcmp(a, "-W") == 0) {
      NEED_VALUE;
      if (!parse_int(a, val, 8, 16384, &v)) return 2;
      p.width = (int)v;
    } else if (strcmp(a, "--height") == 0 || strcmp(a, "-H") == 0) {
      NEED_VALUE;
      if (!parse_int(a, val, 8, 16384, &v)) return 2;
      p.height = (int)v;
    } else if (strcmp(a, "--cfg") == 0) {
      NEED_VALUE;
      if (!parse_float(a, val, &p.cfg) || p.cfg < 0) {
        if (p.cfg < 0) fprintf(stderr, "error: --cfg must not be negative\n");
        return 2;
      }
    } else if (strcmp(a, "--sampler") == 0) {
      NEED_VALUE;
      p.sampler = val;
    } else if (strcmp(a, "--rng") == 0) {
      NEED_VALUE;
      p.rng = val;
    } else if (strcmp(a, "--init-image") == 0) {
      NEED_VALUE;
      p.init_image = val;
    } else if (strcmp(a, "--strength") == 0) {
      NEED_VALUE;
      if (!parse_float(a, val, &p.strength)) return 2;
    } else if (strcmp(a, "--output") == 0 || strcmp(a, "-o") == 0) {
      NEED_VALUE;
      p.output_dir = val;
    } else if (strcmp(a, "--tokenizers") == 0) {
      NEED_VALUE;
      p.tokenizers_dir = val;
    } else if (strcmp(a, "--config") == 0) {
      NEED_VALUE;
      p.config_dir = val;
    } else if (strcmp(a, "--threads") == 0) {
      NEED_VALUE;
      if (!parse_int(a, val, 1, 1024, &v)) return 2;
      p.threads = (int)v;
    } else if (strcmp(a, "--max-memory") == 0) {
      NEED_VALUE;
      p.max_memory = sd_parse_size(val);
      if (p.max_memory <= 0) {
        fprintf(stderr, "error: --max-memory expects a size like 4G or 600M, got '%s'\n", val);
        return 2;
      }
    } else if (a[0] == '-' && a[1] == '-') {
      fprintf(stderr, "error: unknown option %s (see --help)\n", a);
      return 2;
    } else if (!prompt) {
      prompt = a;
    } else {
      fprintf(stderr, "error: unexpected argument '%s' (quote the prompt)\n", a);
      return 2;
    }
  }
  if (!prompt) {
    fprintf(stderr, "error: no prompt given (usage: generate \"a prompt\" [options])\n");
    return 2;
  }
  p.prompt = prompt;
  if (!p.model) p.model = DEFAULT_MODEL;

  console con;
  console_init(&con, quiet, verbose);
  p.on_event = console_event;
  p.on_progress = console_progress;
  p.on_download = console_download;
  p.user = &con;

  sdgen_ctx *ctx;
  if (sdgen_ctx_new(&ctx)) {
    fprintf(stderr, "error: out of memory\n");
    return 1;
  }
  g_ctx = ctx;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);

  sdgen_result res;
  int rc = sdgen_generate(ctx, &p, &res);
  if (rc) {
    fprintf(stderr, "error: %s\n", sdgen_last_error(ctx));
    int code = strstr(sdgen_last_error(ctx), "cancelled") ? 130 : 1;
    sdgen_ctx_free(ctx);
    return code;
  }
  for (int i = 0; i < res.count; i++) printf("%s\n", res.images[i]);
  sdgen_ctx_free(ctx);
  return 0;
}
