/* generate — the command-line client of the sdgen library.
 *
 *   generate "a prompt" [--model PATH|ORG/NAME] [--quality PRESET] ...
 *
 * Parses arguments into sdgen_params (a preset fills what the flags leave
 * unset), renders events, and maps failures to one line on stderr and a
 * nonzero exit code (2 usage, 1 failure, 130 interrupted). */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/commands.h"
#include "cli/console.h"
#include "cli/presets.h"
#include "server/server.h"
#include "sdgen.h"

#define DEFAULT_MODEL "Lykon/DreamShaper-8"

static sdgen_ctx *g_ctx; /* only for the signal handler */

/* --preview: the preview image, replaced atomically at each call */
static char g_preview_path[4200];
static void on_preview(int step, int total, int width, int height, const unsigned char *rgb,
                       void *user) {
  (void)step, (void)total, (void)user;
  sdgen_write_png(g_preview_path, width, height, rgb);
}

static volatile sig_atomic_t g_signals;

/* First Ctrl-C: cancel cleanly (the run stops at the next step or stage
 * boundary, removes its temporary files, exits 130). Second: leave now. */
static void on_signal(int sig) {
  (void)sig;
  if (g_signals++ && g_ctx) _exit(130);
  if (g_ctx) sdgen_cancel(g_ctx);
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: generate \"PROMPT\" [options]\n"
          "       generate --list-presets | --list-models | --download MODEL\n"
          "       generate serve [options]    (HTTP API and web page; serve --help)\n"
          "       generate worker [options]   (Redis queue worker; worker --help)\n"
          "       generate --decode LATENTS_FILE [--model M] [--output DIR (default: beside it)]\n"
          "       generate --bench [--model M] [--precision fp32|bf16|fast] [--size PX]\n"
          "                [--threads N] [--steps 1] [--json FILE]\n"
          "\n"
          "model and quality\n"
          "  --model PATH|ORG/NAME   diffusers folder, .safetensors file or hub name\n"
          "                          (default " DEFAULT_MODEL ")\n"
          "  --quality PRESET        %s\n"
          "  --pro                   SD 3.5 Large, 28 steps (the 'pro' preset)\n"
          "  --style NAME            %s\n"
          "  --refiner MODEL         img2img refiner pass after the base image\n"
          "  --refiner-steps N       (default 20)   --refiner-strength X (default 0.3)\n"
          "  --lora PATH|NAME|ORG/NAME[:SCALE]  LoRA adapter (repeatable, scale 1.0 by\n"
          "                          default; also <lora:NAME:SCALE> in the prompt)\n"
          "  --lora-dir DIR          where LoRA names are looked up\n"
          "  --upscale 2|4           upscale the result (Lanczos, or --upscaler)\n"
          "  --upscaler FILE         Real-ESRGAN RRDBNet weights (.safetensors or .pth)\n"
          "  --vae taesd|PATH|ORG/NAME  decoder: the family's tiny autoencoder (taesd,\n"
          "                          taesdxl, taesd3), or an AutoencoderTiny folder / file\n"
          "  --preview N             every N steps a tiny-VAE preview in\n"
          "                          OUTPUT/output_<stamp>.preview.png\n"
          "sampling\n"
          "  --negative-prompt TEXT  what the image should not show\n"
          "  --seed N                random seed (default 42)\n"
          "  --steps N               denoising steps (default 30)\n"
          "  --n N                   images per prompt (default 1)\n"
          "  --width W --height H    image size, multiples of 8 (default: the model's)\n"
          "  --cfg X                 guidance scale (default 7.5 SD 1.5, 5.0 SDXL)\n"
          "  --sampler NAME          pndm ddim euler euler_a dpmpp_2m dpmpp_2m_karras lcm\n"
          "                          flow_euler (default: the model's scheduler)\n"
          "  --timestep-spacing S    leading, linspace or trailing (Turbo, Hyper-SD,\n"
          "                          Lightning: trailing; default: the scheduler config)\n"
          "  --prediction-type T     epsilon or v_prediction (default: the scheduler config;\n"
          "                          SD 2.x 768-v single files without --config: v_prediction)\n"
          "  --rng cpu|cuda          noise as torch's CPU generator (diffusers) or CUDA's\n"
          "  --init-image FILE       img2img from a PNG or JPEG\n"
          "  --strength X            img2img strength in (0, 1] (default 0.8)\n"
          "  --no-t5                 SD3: leave the T5 encoder out\n"
          "files\n"
          "  --output DIR            output folder (default ./outputs)\n"
          "  --tokenizers DIR        tokenizer files for single-file checkpoints\n"
          "  --config DIR            diffusers folder with configs for a single file\n"
          "  --clip-l/--clip-g/--t5 FILE  SD3 text encoders as separate files\n"
          "  --fp16-variant          load *.fp16.safetensors weights where present\n"
          "  --keep-latents          keep the latents file next to the image\n"
          "  --offline               never download (Hugging Face cache only)\n"
          "resources\n"
          "  --threads N             threads (default: all cores)\n"
          "  --precision fp32|bf16|fast  matrix products in fp32 (default, exact), bf16\n"
          "                          (needs AVX512_BF16) or fast: the quickest arithmetic\n"
          "                          this CPU has (the log and metadata say which)\n"
          "  --max-memory SIZE       memory budget, e.g. 4G or 600M\n"
          "  --dry-run               print the memory plan and exit\n"
          "  --plan NAME             at least this memory strategy: resident, release,\n"
          "                          slicing, tiling, streaming, sequential (default: the\n"
          "                          fastest that fits)\n"
          "  --quiet | --verbose     fewer / more messages\n"
          "benchmark\n"
          "  --bench                 time one denoiser step with CFG and one VAE decode,\n"
          "                          broken down by op class, against the sgemm ceiling\n"
          "                          (after a warm-up step; --steps 1: no warm-up)\n"
          "  --size PX               square image size (same as --width PX --height PX)\n"
          "  --json FILE             --bench: also write the results as JSON\n"
          "  --version, --help\n",
          preset_names(), style_names());
}

/* Parses an integer option value; prints and returns 0 on error. */
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

/* Which values the user gave explicitly (a preset fills only the others). */
typedef struct given {
  int model, steps, width, height, cfg, sampler, refiner, upscale, negative;
} given;

/* --lora VALUE[:SCALE]: the scale is the text after the last ':' when it is
 * a number (paths and hub names keep their own colons otherwise). */
#define MAX_CLI_LORAS 16
static int parse_lora(const char *v, sdgen_lora *out, char *buf, size_t n) {
  snprintf(buf, n, "%s", v);
  out->path = buf;
  out->scale = 1.0f;
  char *colon = strrchr(buf, ':');
  if (colon && colon[1]) {
    char *end;
    float s = strtof(colon + 1, &end);
    if (!*end) {
      *colon = 0;
      out->scale = s;
    }
  }
  return buf[0] != 0;
}

int main(int argc, char **argv) {
  sdgen_process_init(argv);
  /* generate serve / generate worker: the HTTP server and the Redis worker */
  if (argc > 1 && !strcmp(argv[1], "serve")) return srv_serve_main(argc - 1, argv + 1);
  if (argc > 1 && !strcmp(argv[1], "worker")) return srv_worker_main(argc - 1, argv + 1);
  static sdgen_lora loras[MAX_CLI_LORAS];
  static char lora_bufs[MAX_CLI_LORAS][4096];
  sdgen_params p = sdgen_default_params();
  given g = {0};
  int quiet = 0, verbose = 0;
  const char *prompt = NULL, *quality = NULL, *style_name = NULL;
  const char *download = NULL, *decode = NULL, *bench_json = NULL;
  int output_given = 0;
  int list_presets = 0, list_models = 0, bench = 0;
  long long v;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *val = i + 1 < argc ? argv[i + 1] : NULL;
#define IS(name) (strcmp(a, name) == 0)
#define NEED_VALUE                                                   \
  if (!val) {                                                        \
    fprintf(stderr, "error: %s needs a value\n", a);                 \
    return 2;                                                        \
  }                                                                  \
  i++
    if (IS("--help") || IS("-h")) {
      usage(stdout);
      return 0;
    } else if (IS("--version")) {
      printf("generate (sdgen) %s\n", sdgen_version());
      return 0;
    } else if (IS("--quiet") || IS("-q")) {
      quiet = 1;
    } else if (IS("--verbose") || IS("-v")) {
      verbose = 1;
    } else if (IS("--keep-latents")) {
      p.keep_latents = 1;
    } else if (IS("--fp16-variant")) {
      p.prefer_fp16 = 1;
    } else if (IS("--offline")) {
      p.offline = 1;
    } else if (IS("--dry-run")) {
      p.dry_run = 1;
    } else if (IS("--no-t5")) {
      p.no_t5 = 1;
    } else if (IS("--pro")) {
      quality = "pro";
    } else if (IS("--list-presets")) {
      list_presets = 1;
    } else if (IS("--list-models")) {
      list_models = 1;
    } else if (IS("--bench")) {
      bench = 1;
    } else if (IS("--json")) {
      NEED_VALUE;
      bench_json = val;
    } else if (IS("--precision")) {
      NEED_VALUE;
      if (strcmp(val, "fp32") != 0 && strcmp(val, "bf16") != 0 && strcmp(val, "fast") != 0) {
        fprintf(stderr, "error: --precision expects fp32, bf16 or fast, got '%s'\n", val);
        return 2;
      }
      p.precision = val;
    } else if (IS("--size")) {
      NEED_VALUE;
      if (!parse_int(a, val, 8, 16384, &v)) return 2;
      p.width = p.height = (int)v;
      g.width = g.height = 1;
    } else if (IS("--download")) {
      NEED_VALUE;
      download = val;
    } else if (IS("--decode")) {
      NEED_VALUE;
      decode = val;
    } else if (IS("--quality")) {
      NEED_VALUE;
      quality = val;
    } else if (IS("--style")) {
      NEED_VALUE;
      style_name = val;
    } else if (IS("--model") || IS("-m")) {
      NEED_VALUE;
      p.model = val;
      g.model = 1;
    } else if (IS("--lora")) {
      NEED_VALUE;
      if (p.n_loras == MAX_CLI_LORAS) {
        fprintf(stderr, "error: at most %d --lora\n", MAX_CLI_LORAS);
        return 2;
      }
      if (!parse_lora(val, &loras[p.n_loras], lora_bufs[p.n_loras], sizeof lora_bufs[0])) {
        fprintf(stderr, "error: --lora needs a file, a name or ORG/NAME\n");
        return 2;
      }
      p.loras = loras;
      p.n_loras++;
    } else if (IS("--lora-dir")) {
      NEED_VALUE;
      p.lora_dir = val;
    } else if (IS("--refiner")) {
      NEED_VALUE;
      p.refiner = val;
      g.refiner = 1;
    } else if (IS("--refiner-steps")) {
      NEED_VALUE;
      if (!parse_int(a, val, 1, 10000, &v)) return 2;
      p.refiner_steps = (int)v;
    } else if (IS("--refiner-strength")) {
      NEED_VALUE;
      if (!parse_float(a, val, &p.refiner_strength)) return 2;
    } else if (IS("--refiner-switch")) {
      NEED_VALUE;
      if (!parse_float(a, val, &p.refiner_switch)) return 2;
    } else if (IS("--aesthetic-score")) {
      NEED_VALUE;
      if (!parse_float(a, val, &p.aesthetic_score)) return 2;
    } else if (IS("--upscale")) {
      NEED_VALUE;
      if (!parse_int(a, val, 0, 64, &v)) return 2;
      p.upscale = (int)v;
      g.upscale = 1;
    } else if (IS("--upscaler")) {
      NEED_VALUE;
      p.upscaler = val;
    } else if (IS("--upscale-tile")) {
      NEED_VALUE;
      if (!parse_int(a, val, 16, 4096, &v)) return 2;
      p.upscale_tile = (int)v;
    } else if (IS("--negative-prompt")) {
      NEED_VALUE;
      p.negative_prompt = val;
      g.negative = 1;
    } else if (IS("--seed")) {
      NEED_VALUE;
      char *end;
      errno = 0;
      unsigned long long s = strtoull(val, &end, 10);
      if (errno || *end || end == val || val[0] == '-') {
        fprintf(stderr, "error: --seed expects a non-negative integer, got '%s'\n", val);
        return 2;
      }
      p.seed = s;
    } else if (IS("--steps")) {
      NEED_VALUE;
      if (!parse_int(a, val, 1, 10000, &v)) return 2;
      p.steps = (int)v;
      g.steps = 1;
    } else if (IS("--n") || IS("-n")) {
      NEED_VALUE;
      if (!parse_int(a, val, 1, SDGEN_MAX_IMAGES, &v)) return 2;
      p.n = (int)v;
    } else if (IS("--width") || IS("-W")) {
      NEED_VALUE;
      if (!parse_int(a, val, 8, 16384, &v)) return 2;
      p.width = (int)v;
      g.width = 1;
    } else if (IS("--height") || IS("-H")) {
      NEED_VALUE;
      if (!parse_int(a, val, 8, 16384, &v)) return 2;
      p.height = (int)v;
      g.height = 1;
    } else if (IS("--cfg")) {
      NEED_VALUE;
      if (!parse_float(a, val, &p.cfg)) return 2;
      if (p.cfg < 0) {
        fprintf(stderr, "error: --cfg must not be negative\n");
        return 2;
      }
      g.cfg = 1;
    } else if (IS("--sampler")) {
      NEED_VALUE;
      p.sampler = val;
      g.sampler = 1;
    } else if (IS("--vae")) {
      NEED_VALUE;
      p.vae = val;
    } else if (IS("--preview")) {
      NEED_VALUE;
      if (!parse_int(a, val, 1, 100000, &v)) return 2;
      p.preview_every = (int)v;
    } else if (IS("--timestep-spacing")) {
      NEED_VALUE;
      if (strcmp(val, "leading") && strcmp(val, "linspace") && strcmp(val, "trailing")) {
        fprintf(stderr, "error: --timestep-spacing expects leading, linspace or trailing, got "
                        "'%s'\n", val);
        return 2;
      }
      p.timestep_spacing = val;
    } else if (IS("--prediction-type")) {
      NEED_VALUE;
      if (strcmp(val, "epsilon") && strcmp(val, "v_prediction")) {
        fprintf(stderr, "error: --prediction-type expects epsilon or v_prediction, got '%s'\n",
                val);
        return 2;
      }
      p.prediction_type = val;
    } else if (IS("--rng")) {
      NEED_VALUE;
      p.rng = val;
    } else if (IS("--init-image")) {
      NEED_VALUE;
      p.init_image = val;
    } else if (IS("--strength")) {
      NEED_VALUE;
      if (!parse_float(a, val, &p.strength)) return 2;
    } else if (IS("--output") || IS("-o")) {
      NEED_VALUE;
      p.output_dir = val;
      output_given = 1;
    } else if (IS("--tokenizers")) {
      NEED_VALUE;
      p.tokenizers_dir = val;
    } else if (IS("--config")) {
      NEED_VALUE;
      p.config_dir = val;
    } else if (IS("--clip-l")) {
      NEED_VALUE;
      p.clip_l = val;
    } else if (IS("--clip-g")) {
      NEED_VALUE;
      p.clip_g = val;
    } else if (IS("--t5")) {
      NEED_VALUE;
      p.t5 = val;
    } else if (IS("--threads")) {
      NEED_VALUE;
      if (!parse_int(a, val, 1, 1024, &v)) return 2;
      p.threads = (int)v;
    } else if (IS("--plan")) {
      NEED_VALUE;
      static const char *const plans[] = {"resident", "release", "slicing", "tiling",
                                          "streaming", "sequential"};
      p.min_plan = -2;
      for (int k = 0; k < 6; k++)
        if (strcmp(val, plans[k]) == 0) p.min_plan = k;
      if (p.min_plan == -2) {
        fprintf(stderr, "error: --plan expects resident, release, slicing, tiling, streaming "
                        "or sequential\n");
        return 2;
      }
    } else if (IS("--max-memory")) {
      NEED_VALUE;
      p.max_memory = sdgen_parse_size(val);
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
  console con;
  console_init(&con, quiet, verbose);
  con.show_plan = p.dry_run;
  if (list_presets) {
    presets_print();
    return 0;
  }
  if (list_models) return cmd_list_models(&p, &con);
  if (download) return cmd_download(download, &p, &con);

  /* A preset fills what the flags left unset. */
  const preset *pr = NULL;
  if (quality && !(pr = preset_find(quality))) {
    fprintf(stderr, "error: unknown quality preset '%s' (%s)\n", quality, preset_names());
    return 2;
  }
  if (pr) {
    if (!g.model) p.model = pr->model;
    if (!g.steps) p.steps = pr->steps;
    if (!g.width && pr->width) p.width = pr->width;
    if (!g.height && pr->height) p.height = pr->height;
    if (!g.cfg && pr->cfg >= 0) p.cfg = pr->cfg;
    if (!g.sampler && pr->sampler) p.sampler = pr->sampler;
    if (!g.refiner && pr->refiner) p.refiner = pr->refiner;
    if (!g.upscale && pr->upscale) p.upscale = pr->upscale;
    if (!style_name && pr->style) style_name = pr->style;
    if (!p.timestep_spacing) p.timestep_spacing = pr->timestep_spacing;
    if (!p.prediction_type) p.prediction_type = pr->prediction_type;
    p.lcm_auto = pr->lcm_auto;
  }
  if (decode) { /* beside the latents file unless --output says otherwise */
    if (!output_given) p.output_dir = NULL;
    return cmd_decode(decode, &p, &con);
  } /* model: --model or the file's */
  if (!p.model) p.model = DEFAULT_MODEL;
  if (bench_json && !bench) {
    fprintf(stderr, "error: --json goes with --bench\n");
    return 2;
  }
  if (bench) {
    if (prompt) p.prompt = prompt;
    return cmd_bench(&p, bench_json, &con);
  }

  if (!prompt) {
    fprintf(stderr, "error: no prompt given (usage: generate \"a prompt\" [options])\n");
    return 2;
  }
  char styled[8192];
  if (style_name) {
    const style *st = style_find(style_name);
    if (!st) {
      fprintf(stderr, "error: unknown style '%s' (%s)\n", style_name, style_names());
      return 2;
    }
    snprintf(styled, sizeof styled, "%s%s", prompt, st->suffix);
    prompt = styled;
    if (!g.negative) p.negative_prompt = st->negative;
  }
  p.prompt = prompt;
  p.on_event = console_event;
  p.on_progress = console_progress;
  p.on_download = console_download;
  p.user = &con;
  if (p.preview_every > 0) {
    char stamp[32];
    time_t now = time(NULL);
    struct tm tmv;
    localtime_r(&now, &tmv);
    strftime(stamp, sizeof stamp, "%Y%m%d_%H%M%S", &tmv);
    snprintf(g_preview_path, sizeof g_preview_path, "%s/output_%s.preview.png", p.output_dir,
             stamp);
    p.on_preview = on_preview;
  }

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
    int cancelled = strcmp(sdgen_last_error(ctx), "cancelled") == 0;
    sdgen_result_free(&res);
    sdgen_ctx_free(ctx);
    return cancelled ? 130 : 1;
  }
  for (int i = 0; i < res.count; i++) printf("%s\n", res.images[i]);
  sdgen_result_free(&res);
  sdgen_ctx_free(ctx);
  return 0;
}
