/* Decoder benchmark: one image decoded by a tiny autoencoder (TAESD family)
 * and, when given, by a full AutoencoderKL, at the same size.
 *
 * usage: bench_taesd --taesd PATH [--vae DIR] [--size PX] [--threads N]
 *                    [--repeat N]
 *
 * PATH: an AutoencoderTiny folder or original decoder file (e.g.
 * make_random_model --arch taesd); DIR: a model's vae/ folder (e.g.
 * make_random_model --arch sd15 → DIR/sd15/vae). Latents are seeded
 * normals; prints the best of --repeat runs per decoder and one JSON line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "io/model_dir.h"
#include "models/taesd.h"
#include "models/vae.h"
#include "pipeline/monitor.h"
#include "pipeline/unet_pipeline.h"
#include "sample/rng.h"
#include "tensor/blas_setup.h"
#include "tensor/ops.h"

int main(int argc, char **argv) {
  sd_blas_select_kernels(argv);
  const char *taesd = NULL, *vae_dir = NULL;
  int size = 512, threads = 0, repeat = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--taesd")) taesd = argv[i + 1];
    else if (!strcmp(argv[i], "--vae")) vae_dir = argv[i + 1];
    else if (!strcmp(argv[i], "--size")) size = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--repeat")) repeat = atoi(argv[i + 1]);
  }
  if (!taesd || size < 64 || size % 8 || repeat < 1) {
    fprintf(stderr, "usage: bench_taesd --taesd PATH [--vae DIR] [--size PX] [--threads N] "
                    "[--repeat N]\n");
    return 2;
  }
  if (threads > 0) sd_set_threads(threads);
  sd_error err = {0};
  sd_taesd *t = NULL;
  if (sd_taesd_open(&t, taesd, SD_TAESD_DECODER, &err)) {
    fprintf(stderr, "error: %s\n", err.msg);
    return 1;
  }
  const sd_taesd_config *tc = sd_taesd_get_config(t);
  int h = size / 8, w = size / 8, L = tc->latent_channels;
  float *lat = sd_alloc(sizeof(float) * 16 * h * w);
  float *img = sd_alloc(sizeof(float) * 3 * size * size);
  sd_rng *rng = sd_rng_new(SD_RNG_CPU, 42);
  if (!lat || !img || !rng) return 1;
  sd_rng_randn(rng, lat, 16LL * h * w);
  double best_tiny = 1e30, best_full = -1;
  for (int r = 0; r < repeat; r++) {
    double t0 = sd_now();
    if (sd_decode_latents_tiny(t, lat, 1, h, w, img, &err)) {
      fprintf(stderr, "error: %s\n", err.msg);
      return 1;
    }
    double dt = sd_now() - t0;
    if (dt < best_tiny) best_tiny = dt;
  }
  int64_t tiny_peak = sd_taesd_decode_bytes(t, h, w);
  printf("tiny autoencoder (%d latent ch, %d max ch, %.1f MB weights) %dx%d: %.3f s, "
         "activation peak %.0f MB\n", L, tc->max_channels, sd_taesd_weight_bytes(t) / 1e6, size,
         size, best_tiny, tiny_peak / 1e6);
  if (vae_dir) {
    sd_weights *vw = NULL;
    cJSON *cfg = NULL;
    sd_vae *vae = NULL;
    if (sd_component_open(vae_dir, 0, &vw, &cfg, &err) || sd_vae_load(&vae, vw, cfg, &err)) {
      fprintf(stderr, "error: %s\n", err.msg);
      return 1;
    }
    if (sd_vae_get_config(vae)->latent_channels != L)
      fprintf(stderr, "note: the VAE has %d latent channels, the tiny one %d\n",
              sd_vae_get_config(vae)->latent_channels, L);
    for (int r = 0; r < repeat; r++) {
      double t0 = sd_now();
      if (sd_decode_latents(vae, lat, 1, h, w, SD_DECODE_BATCH, img, &err)) {
        fprintf(stderr, "error: %s\n", err.msg);
        return 1;
      }
      double dt = sd_now() - t0;
      if (best_full < 0 || dt < best_full) best_full = dt;
    }
    printf("full VAE %dx%d: %.3f s (%.1fx the tiny one)\n", size, size, best_full,
           best_full / best_tiny);
    sd_vae_free(vae);
    sd_weights_free(vw);
    cJSON_Delete(cfg);
  }
  printf("{\"bench\":\"taesd_decode\",\"size\":%d,\"threads\":%d,\"tiny_s\":%.4f,"
         "\"full_vae_s\":%.4f,\"tiny_peak_bytes\":%lld}\n", size, sd_get_threads(), best_tiny,
         best_full, (long long)tiny_peak);
  sd_rng_free(rng);
  sd_free(lat);
  sd_free(img);
  sd_taesd_free(t);
  return 0;
}
