/* Tiny autoencoder against a naive double-precision reference on odd sizes,
 * with channel-changing blocks (skip convs), from the diffusers layout and
 * from the original-format files; and the loader's refusals. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/alloc.h"
#include "io/safetensors_write.h"
#include "models/taesd.h"
#include "test_util.h"

/* ---- a random network description ---- */

enum { CONV, BLOCK, RELU, UP };
typedef struct layer {
  int kind, in, out, stride, bias;
  float *w[3], *b[3], *skip;
} layer;

static unsigned rng_state = 12345;
static float frand(void) {
  rng_state = rng_state * 1103515245u + 12345u;
  return ((float)((rng_state >> 8) & 0xffff) / 65535.0f - 0.5f) * 0.6f;
}
static float *rand_buf(int64_t n) {
  float *p = malloc(sizeof(float) * n);
  for (int64_t i = 0; i < n; i++) p[i] = frand();
  return p;
}

static layer conv(int in, int out, int stride, int bias) {
  layer L = {CONV, in, out, stride, bias, {rand_buf(9LL * in * out)}, {NULL}, NULL};
  if (bias) L.b[0] = rand_buf(out);
  return L;
}
static layer block(int in, int out) {
  layer L = {BLOCK, in, out, 1, 1, {NULL}, {NULL}, NULL};
  for (int k = 0; k < 3; k++) {
    L.w[k] = rand_buf(9LL * (k ? out : in) * out);
    L.b[k] = rand_buf(out);
  }
  if (in != out) L.skip = rand_buf((int64_t)in * out);
  return L;
}

/* ---- naive reference ---- */

static double *ref_conv(const double *x, int C, int H, int W, const float *w, const float *b,
                        int OC, int k, int stride, int *OH, int *OW) {
  int pad = k / 2;
  *OH = (H + 2 * pad - k) / stride + 1;
  *OW = (W + 2 * pad - k) / stride + 1;
  double *y = calloc((size_t)OC * *OH * *OW, sizeof(double));
  for (int o = 0; o < OC; o++)
    for (int i = 0; i < *OH; i++)
      for (int j = 0; j < *OW; j++) {
        double s = b ? b[o] : 0;
        for (int c = 0; c < C; c++)
          for (int di = 0; di < k; di++)
            for (int dj = 0; dj < k; dj++) {
              int yi = i * stride + di - pad, xj = j * stride + dj - pad;
              if (yi < 0 || yi >= H || xj < 0 || xj >= W) continue;
              s += (double)w[((o * C + c) * k + di) * k + dj] * x[(c * H + yi) * W + xj];
            }
        y[(o * *OH + i) * *OW + j] = s;
      }
  return y;
}

static void relu(double *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) x[i] = x[i] > 0 ? x[i] : 0;
}

static double *ref_run(const layer *L, int n, double *x, int *C, int *H, int *W) {
  for (int i = 0; i < n; i++) {
    int OH, OW;
    double *y = NULL;
    if (L[i].kind == RELU) {
      relu(x, (int64_t)*C * *H * *W);
      continue;
    } else if (L[i].kind == UP) {
      OH = *H * 2, OW = *W * 2;
      y = malloc(sizeof(double) * *C * OH * OW);
      for (int c = 0; c < *C; c++)
        for (int a = 0; a < OH; a++)
          for (int b = 0; b < OW; b++) y[(c * OH + a) * OW + b] = x[(c * *H + a / 2) * *W + b / 2];
    } else if (L[i].kind == CONV) {
      y = ref_conv(x, *C, *H, *W, L[i].w[0], L[i].b[0], L[i].out, 3, L[i].stride, &OH, &OW);
      *C = L[i].out;
    } else {
      int o = L[i].out;
      int64_t m = (int64_t)o * *H * *W;
      double *a = ref_conv(x, *C, *H, *W, L[i].w[0], L[i].b[0], o, 3, 1, &OH, &OW);
      relu(a, m);
      double *b = ref_conv(a, o, *H, *W, L[i].w[1], L[i].b[1], o, 3, 1, &OH, &OW);
      relu(b, m);
      free(a);
      y = ref_conv(b, o, *H, *W, L[i].w[2], L[i].b[2], o, 3, 1, &OH, &OW);
      free(b);
      double *s = L[i].skip ? ref_conv(x, *C, *H, *W, L[i].skip, NULL, o, 1, 1, &OH, &OW) : x;
      for (int64_t k = 0; k < m; k++) y[k] += s[k];
      relu(y, m);
      if (s != x) free(s);
      *C = o;
    }
    free(x);
    x = y;
    *H = OH;
    *W = OW;
  }
  return x;
}

/* ---- writing the files ---- */

typedef struct file_builder {
  sd_named_tensor nt[256];
  sd_tensor t[256];
  char names[256][64];
  int n;
} file_builder;

static void put(file_builder *f, const char *name, float *data, int ndim, int64_t a, int64_t b,
                int64_t k) {
  int i = f->n++;
  snprintf(f->names[i], sizeof f->names[i], "%s", name);
  f->t[i] = (sd_tensor){.dtype = SD_F32, .ndim = ndim, .shape = {a, b, k, k}, .data = data};
  f->nt[i] = (sd_named_tensor){f->names[i], &f->t[i]};
}

/* Layers as nn.Sequential entries under prefix, indices from `first`; the
 * parameter-free ones take an index without tensors. */
static void put_layers(file_builder *f, const char *prefix, int first, const layer *L, int n) {
  char name[64];
  for (int i = 0; i < n; i++) {
    int idx = first + i;
    if (L[i].kind == CONV) {
      snprintf(name, sizeof name, "%s%d.weight", prefix, idx);
      put(f, name, L[i].w[0], 4, L[i].out, L[i].in, 3);
      if (L[i].b[0]) {
        snprintf(name, sizeof name, "%s%d.bias", prefix, idx);
        put(f, name, L[i].b[0], 1, L[i].out, 0, 0);
      }
    } else if (L[i].kind == BLOCK) {
      for (int k = 0; k < 3; k++) {
        snprintf(name, sizeof name, "%s%d.conv.%d.weight", prefix, idx, 2 * k);
        put(f, name, L[i].w[k], 4, L[i].out, k ? L[i].out : L[i].in, 3);
        snprintf(name, sizeof name, "%s%d.conv.%d.bias", prefix, idx, 2 * k);
        put(f, name, L[i].b[k], 1, L[i].out, 0, 0);
      }
      if (L[i].skip) {
        snprintf(name, sizeof name, "%s%d.skip.weight", prefix, idx);
        put(f, name, L[i].skip, 4, L[i].out, L[i].in, 1);
      }
    }
  }
}

static int write_file(const char *path, file_builder *f) {
  sd_error e = {0};
  int rc = sd_safetensors_write(path, f->nt, f->n, NULL, &e);
  if (rc) fprintf(stderr, "%s\n", e.msg);
  return rc;
}

static void compare_decode(const char *path, const layer *dec, int nd, int lat, int h, int w) {
  sd_taesd *t = NULL;
  sd_error e = {0};
  int rc = sd_taesd_open(&t, path, SD_TAESD_DECODER, &e);
  CHECK_MSG(rc == SD_OK, "open %s: %s", path, e.msg);
  if (rc) return;
  CHECK(sd_taesd_get_config(t)->latent_channels == lat);
  CHECK(sd_taesd_get_config(t)->decoder_factor == 2);
  float *z = rand_buf((int64_t)lat * h * w);
  double *x = malloc(sizeof(double) * lat * h * w);
  for (int64_t i = 0; i < (int64_t)lat * h * w; i++) x[i] = tanh(z[i] / 3.0) * 3.0;
  int C = lat, H = h, W = w;
  double *y = ref_run(dec, nd, x, &C, &H, &W);
  int64_t n = (int64_t)C * H * W;
  float *want = malloc(sizeof(float) * n), *got = sd_alloc(sizeof(float) * n * 2);
  for (int64_t i = 0; i < n; i++) want[i] = (float)(2 * y[i] - 1);
  /* two images: the second must equal the first decoded alone */
  float *z2 = malloc(sizeof(float) * 2 * lat * h * w);
  memcpy(z2, z, sizeof(float) * lat * h * w);
  memcpy(z2 + (int64_t)lat * h * w, z, sizeof(float) * lat * h * w);
  rc = sd_taesd_decode(t, z2, 2, h, w, got, &e);
  CHECK_MSG(rc == SD_OK, "decode: %s", e.msg);
  CHECK_MSG(C == 3 && H == 2 * h && W == 2 * w, "reference output %dx%dx%d", C, H, W);
  double e1 = rel_l2(got, want, (long)n), e2 = rel_l2(got + n, want, (long)n);
  CHECK_MSG(e1 < 1e-5 && e2 < 1e-5, "%s decode rel_l2 %g / %g", path, e1, e2);
  free(z);
  free(z2);
  free(y);
  free(want);
  sd_free(got);
  sd_taesd_free(t);
}

static void compare_encode(const char *path, const layer *enc, int ne, int lat, int H, int W) {
  sd_taesd *t = NULL;
  sd_error e = {0};
  int rc = sd_taesd_open(&t, path, SD_TAESD_ENCODER, &e);
  CHECK_MSG(rc == SD_OK, "open %s: %s", path, e.msg);
  if (rc) return;
  float *img = rand_buf(3LL * H * W);
  double *x = malloc(sizeof(double) * 3 * H * W);
  for (int64_t i = 0; i < 3LL * H * W; i++) x[i] = (img[i] + 1.0) / 2.0;
  int C = 3, OH = H, OW = W;
  double *y = ref_run(enc, ne, x, &C, &OH, &OW);
  int64_t n = (int64_t)C * OH * OW;
  CHECK_MSG(C == lat && OH == (H + 1) / 2 && OW == (W + 1) / 2, "encoder output %dx%dx%d", C,
            OH, OW);
  float *want = malloc(sizeof(float) * n), *got = sd_alloc(sizeof(float) * n);
  for (int64_t i = 0; i < n; i++) want[i] = (float)y[i];
  rc = sd_taesd_encode(t, img, 1, H, W, got, &e);
  CHECK_MSG(rc == SD_OK, "encode: %s", e.msg);
  double err1 = rel_l2(got, want, (long)n);
  CHECK_MSG(err1 < 1e-5, "%s encode rel_l2 %g", path, err1);
  free(img);
  free(y);
  free(want);
  sd_free(got);
  sd_taesd_free(t);
}

static void expect_refusal(const char *path, int need, const char *words) {
  sd_taesd *t = NULL;
  sd_error e = {0};
  int rc = sd_taesd_open(&t, path, need, &e);
  CHECK_MSG(rc != SD_OK && t == NULL && strstr(e.msg, words), "%s: rc %d, '%s' (want '%s')", path,
            rc, e.msg, words);
  sd_taesd_free(t);
}

int main(void) {
  char dir[] = "/tmp/sdgen_taesd_XXXXXX";
  if (!mkdtemp(dir)) return 1;
  const int LAT = 5;
  /* decoder: conv, ReLU, Block, Block(6 -> 7, skip), Up, conv (no bias),
   * Block, conv (bias) -> 3 */
  layer dec[] = {conv(LAT, 6, 1, 1), {.kind = RELU}, block(6, 6), block(6, 7), {.kind = UP}, conv(7, 7, 1, 0),
                 block(7, 7), conv(7, 3, 1, 1)};
  int nd = (int)(sizeof dec / sizeof dec[0]);
  /* encoder: conv, Block(4 -> 6, skip), stride-2 conv (no bias), Block, conv -> LAT */
  layer enc[] = {conv(3, 4, 1, 1), block(4, 6), conv(6, 6, 2, 0), block(6, 6), conv(6, LAT, 1, 1)};
  int ne = (int)(sizeof enc / sizeof enc[0]);

  /* diffusers layout: one file, decoder.layers.N = the list above without
   * the clamp; config.json beside it */
  file_builder *f = calloc(1, sizeof *f);
  put_layers(f, "decoder.layers.", 0, dec, nd);
  put_layers(f, "encoder.layers.", 0, enc, ne);
  char path[1024], folder[512];
  snprintf(folder, sizeof folder, "%s/folder", dir);
  CHECK(mkdir(folder, 0755) == 0);
  snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", folder);
  CHECK(write_file(path, f) == SD_OK);
  snprintf(path, sizeof path, "%s/config.json", folder);
  FILE *cf = fopen(path, "w");
  fprintf(cf, "{\"latent_channels\": %d, \"num_decoder_blocks\": [2, 1], "
              "\"num_encoder_blocks\": [1, 1], \"scaling_factor\": 1.0}\n", LAT);
  fclose(cf);
  compare_decode(folder, dec, nd, LAT, 5, 3);
  compare_decode(folder, dec, nd, LAT, 1, 7);
  compare_encode(folder, enc, ne, LAT, 13, 7);
  compare_encode(folder, enc, ne, LAT, 2, 9);

  /* original layout: decoder index 0 is the clamp */
  memset(f, 0, sizeof *f);
  put_layers(f, "", 1, dec, nd);
  snprintf(path, sizeof path, "%s/taesd_decoder.safetensors", dir);
  CHECK(write_file(path, f) == SD_OK);
  memset(f, 0, sizeof *f);
  put_layers(f, "", 0, enc, ne);
  snprintf(path, sizeof path, "%s/taesd_encoder.safetensors", dir);
  CHECK(write_file(path, f) == SD_OK);
  snprintf(path, sizeof path, "%s/taesd_decoder.safetensors", dir);
  compare_decode(path, dec, nd, LAT, 3, 5);
  compare_decode(dir, dec, nd, LAT, 3, 5); /* the folder holding the original files */
  compare_encode(path, enc, ne, LAT, 7, 11); /* the encoder found beside the decoder */

  /* refusals: a config that disagrees, a missing half, a broken sequence */
  snprintf(path, sizeof path, "%s/config.json", folder);
  cf = fopen(path, "w");
  fprintf(cf, "{\"latent_channels\": 4}\n");
  fclose(cf);
  expect_refusal(folder, SD_TAESD_DECODER, "latent channels");
  snprintf(path, sizeof path, "%s/taesd_encoder.safetensors", dir);
  unlink(path);
  snprintf(path, sizeof path, "%s/taesd_decoder.safetensors", dir);
  expect_refusal(path, SD_TAESD_DECODER | SD_TAESD_ENCODER, "no tiny VAE encoder");
  memset(f, 0, sizeof *f);
  put_layers(f, "", 0, dec, nd); /* diffusers numbering in an original file: no clamp gap */
  CHECK(write_file(path, f) == SD_OK);
  expect_refusal(path, SD_TAESD_DECODER, "ReLU");
  snprintf(path, sizeof path, "%s/nothing", dir);
  expect_refusal(path, SD_TAESD_DECODER, "no such file");

  free(f);
  for (int i = 0; i < nd; i++)
    for (int k = 0; k < 3; k++) free(dec[i].w[k]), free(dec[i].b[k]), free(k ? NULL : dec[i].skip);
  for (int i = 0; i < ne; i++)
    for (int k = 0; k < 3; k++) free(enc[i].w[k]), free(enc[i].b[k]), free(k ? NULL : enc[i].skip);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  return test_finish();
}
