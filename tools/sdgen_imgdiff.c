/* sdgen_imgdiff A.png B.png [MAX_LEVELS [MAX_REL_L2]]: compares two 8-bit
 * images (B may also be FILE.safetensors:TENSOR, a u8 golden image batch
 * (N, H, W, 3) or (N, 3, H, W), of which the first image) and prints the largest per-value difference in levels and the
 * relative L2 error; exits 1 when sizes differ, the largest difference
 * exceeds MAX_LEVELS (default 0; -1 = no limit) or the relative L2 exceeds
 * MAX_REL_L2 (when given). Used by the CLI tests. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/image.h"
#include "io/safetensors.h"

/* "FILE.safetensors:NAME" -> the first image of that u8 tensor. */
static int read_golden(const char *spec, sd_image *img, sd_error *err) {
  char path[4096];
  const char *colon = strstr(spec, ".safetensors:");
  if (!colon) return sd_image_read(spec, img, err);
  snprintf(path, sizeof path, "%.*s", (int)(colon - spec) + 12, spec);
  sd_weights *w = NULL;
  int rc = sd_weights_open(&w, path, err);
  if (rc) return rc;
  const sd_tensor *t = sd_weights_get(w, colon + 13);
  int nchw = t && t->ndim == 4 && t->shape[1] == 3 && t->shape[3] != 3;
  if (!t || t->dtype != SD_U8 || t->ndim != 4 || (!nchw && t->shape[3] != 3)) {
    sd_weights_free(w);
    return sd_fail(err, SD_ERR_FORMAT, "%s: no u8 image batch named %s", path, colon + 13);
  }
  int H = (int)t->shape[nchw ? 2 : 1], W = (int)t->shape[nchw ? 3 : 2];
  if (!(rc = sd_image_alloc(img, W, H, 3, err))) {
    const uint8_t *src = t->data;
    for (long i = 0; i < (long)W * H; i++)
      for (int c = 0; c < 3; c++)
        img->data[i * 3 + c] = nchw ? src[(long)c * W * H + i] : src[i * 3 + c];
  }
  sd_weights_free(w);
  return rc;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: sdgen_imgdiff A.png B.png [MAX_LEVELS]\n");
    return 2;
  }
  int max_levels = argc > 3 ? atoi(argv[3]) : 0;
  double max_rel = argc > 4 ? atof(argv[4]) : -1.0;
  sd_image a = {0}, b = {0};
  sd_error err = {0};
  if (sd_image_read(argv[1], &a, &err) || read_golden(argv[2], &b, &err)) {
    fprintf(stderr, "error: %s\n", err.msg);
    return 2;
  }
  int rc = 0;
  if (a.width != b.width || a.height != b.height || a.channels != b.channels) {
    printf("size differs: %dx%dx%d vs %dx%dx%d\n", a.width, a.height, a.channels, b.width,
           b.height, b.channels);
    rc = 1;
  } else {
    long n = (long)a.width * a.height * a.channels;
    int worst = 0;
    double num = 0, den = 0;
    for (long i = 0; i < n; i++) {
      int d = abs((int)a.data[i] - (int)b.data[i]);
      if (d > worst) worst = d;
      num += (double)d * d;
      den += (double)b.data[i] * b.data[i];
    }
    double rel = den > 0 ? sqrt(num / den) : 0.0;
    printf("max |diff| %d levels, rel L2 %.3g\n", worst, rel);
    rc = (max_levels >= 0 && worst > max_levels) || (max_rel >= 0 && rel > max_rel);
  }
  sd_image_free(&a);
  sd_image_free(&b);
  return rc;
}
