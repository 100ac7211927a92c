/* PNG/JPEG I/O: round trips with text chunks, corrupt files, atomic writes,
 * and the float <-> u8 conversions. Files go to a fresh folder under /tmp. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h>
#include <spng.h>

#include "base/alloc.h"
#include "io/image.h"
#include "test_util.h"

static char g_dir[256];

static void path_in(char *out, size_t n, const char *name) {
  snprintf(out, n, "%s/%s", g_dir, name);
}

/* Number of entries in a folder other than . and .. */
static int count_entries(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
  closedir(d);
  return n;
}

static void fill_pattern(sd_image *img, unsigned seed) {
  size_t n = (size_t)img->width * img->height * img->channels;
  for (size_t i = 0; i < n; i++) {
    seed = seed * 1103515245u + 12345u;
    img->data[i] = (uint8_t)(seed >> 16);
  }
}

static long file_size(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

static void truncate_copy(const char *src, const char *dst, long keep) {
  FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
  for (long i = 0; i < keep && in && out; i++) {
    int ch = fgetc(in);
    if (ch == EOF) break;
    fputc(ch, out);
  }
  if (in) fclose(in);
  if (out) fclose(out);
}

static void test_png_round_trip(int channels) {
  sd_image img = {0}, back = {0};
  sd_error err = {0};
  char p[512];
  path_in(p, sizeof p, channels == 4 ? "rgba.png" : "rgb.png");
  CHECK(sd_image_alloc(&img, 37, 23, channels, &err) == SD_OK);
  fill_pattern(&img, 7u + (unsigned)channels);
  const char *params =
      "a photo of a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, "
      "CFG scale: 7.5, Seed: 42, Size: 512x512";
  const char *utf8 = "caf\xc3\xa9 \xe2\x98\x95 \xe6\x97\xa5\xe6\x9c\xac";
  const char *latin = "na\xc3\xafve caf\xc3\xa9 \xc2\xb5"; /* fits Latin-1: tEXt */
  sd_png_text texts[] = {{"parameters", params}, {"Comment", utf8}, {"Latin", latin}};
  int st = sd_image_write_png(p, &img, texts, 3, &err);
  CHECK_MSG(st == SD_OK, "write: %s", err.msg);
  CHECK(count_entries(g_dir) >= 1);
  st = sd_image_read(p, &back, &err);
  CHECK_MSG(st == SD_OK, "read: %s", err.msg);
  CHECK(back.width == 37 && back.height == 23 && back.channels == channels);
  CHECK(back.data && memcmp(back.data, img.data, (size_t)37 * 23 * channels) == 0);
  char *v = NULL;
  CHECK(sd_png_read_text(p, "parameters", &v, &err) == SD_OK);
  CHECK_MSG(v && strcmp(v, params) == 0, "parameters chunk read back: %s",
            v ? v : "(null)");
  sd_free(v);
  v = NULL;
  CHECK(sd_png_read_text(p, "Comment", &v, &err) == SD_OK);
  CHECK_MSG(v && strcmp(v, utf8) == 0, "iTXt chunk read back");
  sd_free(v);
  v = NULL;
  CHECK(sd_png_read_text(p, "Latin", &v, &err) == SD_OK);
  CHECK_MSG(v && strcmp(v, latin) == 0, "Latin-1 tEXt read back as UTF-8");
  sd_free(v);
  /* the file holds tEXt with the Latin-1 bytes and iTXt for the rest, as
   * PIL's add_text writes them */
  char *raw = NULL;
  size_t raw_len = 0;
  FILE *rf = fopen(p, "rb");
  if (rf) {
    raw = malloc(1 << 16);
    raw_len = fread(raw, 1, 1 << 16, rf);
    fclose(rf);
  }
  int found_text = 0, found_itxt = 0;
  for (size_t k = 0; raw && k + 20 < raw_len; k++) {
    if (!memcmp(raw + k, "tEXtLatin\0na\xefve caf\xe9 \xb5", 20)) found_text = 1;
    if (!memcmp(raw + k, "iTXtComment", 11)) found_itxt = 1;
  }
  CHECK(found_text && found_itxt);
  free(raw);
  v = (char *)1;
  CHECK(sd_png_read_text(p, "absent", &v, &err) == SD_OK && v == NULL);
  sd_image_free(&back);
  sd_image_free(&img);
  CHECK(img.data == NULL);
}

/* A file with the PNG signature but a corrupt body, a truncated one, and
 * one that is neither format. */
static void test_png_corrupt(void) {
  sd_image img = {0}, back = {0};
  sd_error err = {0};
  char good[512], bad[512];
  path_in(good, sizeof good, "good.png");
  CHECK(sd_image_alloc(&img, 64, 64, 3, &err) == SD_OK);
  fill_pattern(&img, 99);
  CHECK(sd_image_write_png(good, &img, NULL, 0, &err) == SD_OK);
  long n = file_size(good);
  CHECK(n > 100);

  path_in(bad, sizeof bad, "truncated.png");
  truncate_copy(good, bad, n / 2);
  sd_error_clear(&err);
  int st = sd_image_read(bad, &back, &err);
  CHECK(st == SD_ERR_FORMAT);
  CHECK_MSG(strstr(err.msg, "truncated.png") && !strchr(err.msg, '\n'),
            "one-line message naming the file: %s", err.msg);
  CHECK(back.data == NULL);

  /* flip bytes inside the IDAT payload: CRC mismatch */
  path_in(bad, sizeof bad, "flipped.png");
  truncate_copy(good, bad, n);
  FILE *f = fopen(bad, "r+b");
  CHECK(f != NULL);
  if (f) {
    fseek(f, n - 40, SEEK_SET);
    fputc(0x5a, f);
    fputc(0xa5, f);
    fclose(f);
  }
  sd_error_clear(&err);
  CHECK(sd_image_read(bad, &back, &err) == SD_ERR_FORMAT);
  CHECK_MSG(strstr(err.msg, "flipped.png"), "message: %s", err.msg);

  path_in(bad, sizeof bad, "header_only.png");
  truncate_copy(good, bad, 8);
  sd_error_clear(&err);
  CHECK(sd_image_read(bad, &back, &err) == SD_ERR_FORMAT);

  path_in(bad, sizeof bad, "text.png");
  f = fopen(bad, "w");
  if (f) {
    fputs("this is not an image\n", f);
    fclose(f);
  }
  sd_error_clear(&err);
  CHECK(sd_image_read(bad, &back, &err) == SD_ERR_FORMAT);
  CHECK_MSG(strstr(err.msg, "neither a PNG nor a JPEG"), "message: %s", err.msg);

  sd_error_clear(&err);
  path_in(bad, sizeof bad, "missing.png");
  CHECK(sd_image_read(bad, &back, &err) == SD_ERR_IO);
  sd_image_free(&img);
}

/* Writes a JPEG with libjpeg directly (the library only reads JPEG). */
static int write_jpeg(const char *path, const sd_image *img, int gray) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  struct jpeg_compress_struct ci;
  struct jpeg_error_mgr je;
  ci.err = jpeg_std_error(&je);
  jpeg_create_compress(&ci);
  jpeg_stdio_dest(&ci, f);
  ci.image_width = (JDIMENSION)img->width;
  ci.image_height = (JDIMENSION)img->height;
  ci.input_components = gray ? 1 : 3;
  ci.in_color_space = gray ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&ci);
  jpeg_set_quality(&ci, 95, TRUE);
  jpeg_start_compress(&ci, TRUE);
  unsigned char *row = malloc((size_t)img->width * 3);
  while (ci.next_scanline < ci.image_height) {
    const uint8_t *src = img->data + (size_t)ci.next_scanline * img->width * 3;
    for (int x = 0; x < img->width; x++)
      for (int c = 0; c < (gray ? 1 : 3); c++)
        row[x * (gray ? 1 : 3) + c] = src[x * 3 + c];
    JSAMPROW r = row;
    jpeg_write_scanlines(&ci, &r, 1);
  }
  jpeg_finish_compress(&ci);
  jpeg_destroy_compress(&ci);
  free(row);
  fclose(f);
  return 0;
}

static void test_jpeg(void) {
  sd_image img = {0}, back = {0};
  sd_error err = {0};
  char p[512], bad[512];
  path_in(p, sizeof p, "smooth.jpg");
  CHECK(sd_image_alloc(&img, 48, 40, 3, &err) == SD_OK);
  for (int y = 0; y < 40; y++)
    for (int x = 0; x < 48; x++) {
      uint8_t *px = img.data + ((size_t)y * 48 + x) * 3;
      px[0] = (uint8_t)(x * 5);
      px[1] = (uint8_t)(y * 6);
      px[2] = 128;
    }
  CHECK(write_jpeg(p, &img, 0) == 0);
  int st = sd_image_read(p, &back, &err);
  CHECK_MSG(st == SD_OK, "jpeg read: %s", err.msg);
  CHECK(back.width == 48 && back.height == 40 && back.channels == 3);
  int maxd = 0;
  for (size_t i = 0; back.data && i < (size_t)48 * 40 * 3; i++) {
    int d = abs((int)back.data[i] - (int)img.data[i]);
    if (d > maxd) maxd = d;
  }
  CHECK_MSG(maxd <= 12, "smooth JPEG decodes close to the source (max %d)", maxd);
  sd_image_free(&back);

  path_in(p, sizeof p, "gray.jpg");
  CHECK(write_jpeg(p, &img, 1) == 0);
  CHECK(sd_image_read(p, &back, &err) == SD_OK);
  CHECK(back.channels == 3 && back.data && back.data[0] == back.data[1] &&
        back.data[1] == back.data[2]);
  sd_image_free(&back);

  /* truncated: libjpeg would pad with gray and only warn */
  path_in(p, sizeof p, "smooth.jpg");
  path_in(bad, sizeof bad, "truncated.jpg");
  truncate_copy(p, bad, file_size(p) / 2);
  sd_error_clear(&err);
  st = sd_image_read(bad, &back, &err);
  CHECK(st == SD_ERR_FORMAT);
  CHECK_MSG(strstr(err.msg, "truncated.jpg") && !strchr(err.msg, '\n'),
            "message: %s", err.msg);
  CHECK(back.data == NULL);

  path_in(bad, sizeof bad, "garbage.jpg");
  FILE *f = fopen(bad, "wb");
  if (f) {
    const unsigned char junk[] = {0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 'J', 'F',
                                  'I',  'F',  0x00, 0x01, 0x02, 0x03, 0x04};
    fwrite(junk, 1, sizeof junk, f);
    fclose(f);
  }
  sd_error_clear(&err);
  CHECK(sd_image_read(bad, &back, &err) == SD_ERR_FORMAT);
  CHECK_MSG(strstr(err.msg, "garbage.jpg"), "message: %s", err.msg);
  sd_image_free(&img);
}

/* Failing writes leave neither the target nor a temporary file. */
static void test_write_failures(void) {
  sd_image img = {0};
  sd_error err = {0};
  CHECK(sd_image_alloc(&img, 8, 8, 3, &err) == SD_OK);
  fill_pattern(&img, 3);

  char sub[512], p[600];
  path_in(sub, sizeof sub, "fail");
  CHECK(mkdir(sub, 0755) == 0);
  snprintf(p, sizeof p, "%s/missing_folder/out.png", sub);
  CHECK(sd_image_write_png(p, &img, NULL, 0, &err) == SD_ERR_IO);
  CHECK_MSG(strstr(err.msg, "out.png") != NULL, "message: %s", err.msg);
  CHECK(count_entries(sub) == 0);

  /* the target is a folder: rename fails after the data was written */
  snprintf(p, sizeof p, "%s/taken.png", sub);
  CHECK(mkdir(p, 0755) == 0);
  sd_error_clear(&err);
  CHECK(sd_image_write_png(p, &img, NULL, 0, &err) == SD_ERR_IO);
  CHECK_MSG(count_entries(sub) == 1, "only the folder remains, no temp file");
  rmdir(p);

  /* invalid key: error before anything is left behind */
  snprintf(p, sizeof p, "%s/key.png", sub);
  sd_png_text bad_key[] = {{"", "x"}};
  sd_error_clear(&err);
  CHECK(sd_image_write_png(p, &img, bad_key, 1, &err) == SD_ERR_ARG);
  CHECK(count_entries(sub) == 0);

  /* read-only folder (root ignores permissions, so only checked otherwise) */
  if (geteuid() != 0) {
    CHECK(chmod(sub, 0555) == 0);
    snprintf(p, sizeof p, "%s/ro.png", sub);
    sd_error_clear(&err);
    CHECK(sd_image_write_png(p, &img, NULL, 0, &err) == SD_ERR_IO);
    CHECK(count_entries(sub) == 0);
    chmod(sub, 0755);
  }

  /* an existing file is replaced whole */
  snprintf(p, sizeof p, "%s/replace.png", sub);
  CHECK(sd_image_write_png(p, &img, NULL, 0, &err) == SD_OK);
  fill_pattern(&img, 4);
  CHECK(sd_image_write_png(p, &img, NULL, 0, &err) == SD_OK);
  sd_image back = {0};
  CHECK(sd_image_read(p, &back, &err) == SD_OK);
  CHECK(back.data && memcmp(back.data, img.data, 8 * 8 * 3) == 0);
  CHECK(count_entries(sub) == 1);
  sd_image_free(&back);
  unlink(p);
  rmdir(sub);
  sd_image_free(&img);
}

/* Encodes raw PNG-layout rows with libspng (any color type and depth). */
static int write_raw_png(const char *path, int w, int h, int color_type,
                         int depth, const unsigned char *rows, size_t len,
                         const struct spng_plte *plte,
                         const struct spng_trns *trns) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  spng_ctx *ctx = spng_ctx_new(SPNG_CTX_ENCODER);
  struct spng_ihdr ihdr = {0};
  ihdr.width = (uint32_t)w;
  ihdr.height = (uint32_t)h;
  ihdr.color_type = (uint8_t)color_type;
  ihdr.bit_depth = (uint8_t)depth;
  int rc = spng_set_png_file(ctx, f);
  if (!rc) rc = spng_set_ihdr(ctx, &ihdr);
  if (!rc && plte) rc = spng_set_plte(ctx, (struct spng_plte *)plte);
  if (!rc && trns) rc = spng_set_trns(ctx, (struct spng_trns *)trns);
  if (!rc)
    rc = spng_encode_image(ctx, rows, len, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE);
  spng_ctx_free(ctx);
  fclose(f);
  return rc;
}

/* Every PNG flavour comes back as 8-bit RGB, or RGBA when it has alpha. */
static void test_png_flavours(void) {
  char p[512];
  sd_image img = {0};
  sd_error err = {0};
  path_in(p, sizeof p, "flavour.png");

  const unsigned char gray[6] = {0, 50, 100, 150, 200, 255};
  CHECK(write_raw_png(p, 3, 2, SPNG_COLOR_TYPE_GRAYSCALE, 8, gray, 6, NULL, NULL) == 0);
  CHECK(sd_image_read(p, &img, &err) == SD_OK);
  CHECK(img.channels == 3 && img.data && img.data[3 * 4] == 200 &&
        img.data[3 * 4 + 1] == 200 && img.data[3 * 4 + 2] == 200);
  sd_image_free(&img);

  const unsigned char ga[4] = {10, 20, 30, 40};
  CHECK(write_raw_png(p, 2, 1, SPNG_COLOR_TYPE_GRAYSCALE_ALPHA, 8, ga, 4, NULL, NULL) == 0);
  CHECK(sd_image_read(p, &img, &err) == SD_OK);
  CHECK(img.channels == 4 && img.data && img.data[4] == 30 && img.data[6] == 30 &&
        img.data[7] == 40);
  sd_image_free(&img);

  /* 16-bit RGB: the high byte is kept (libspng's encoder takes 16-bit
   * samples in host order) */
  const uint16_t rgb16[6] = {0xabcd, 0x1234, 0xffff, 0x0001, 0x8000, 0x7fff};
  CHECK(write_raw_png(p, 2, 1, SPNG_COLOR_TYPE_TRUECOLOR, 16,
                      (const unsigned char *)rgb16, 12, NULL, NULL) == 0);
  CHECK(sd_image_read(p, &img, &err) == SD_OK);
  const unsigned char want16[6] = {0xab, 0x12, 0xff, 0x00, 0x80, 0x7f};
  CHECK(img.channels == 3 && img.data && memcmp(img.data, want16, 6) == 0);
  sd_image_free(&img);
  /* 16-bit RGBA */
  const uint16_t rgba16[4] = {0x1234, 0x5678, 0x9abc, 0xdef0};
  CHECK(write_raw_png(p, 1, 1, SPNG_COLOR_TYPE_TRUECOLOR_ALPHA, 16,
                      (const unsigned char *)rgba16, 8, NULL, NULL) == 0);
  CHECK(sd_image_read(p, &img, &err) == SD_OK);
  CHECK(img.channels == 4 && img.data && img.data[0] == 0x12 && img.data[1] == 0x56 &&
        img.data[2] == 0x9a && img.data[3] == 0xde);
  sd_image_free(&img);

  /* palette, then palette with a tRNS chunk (alpha per entry) */
  struct spng_plte plte = {0};
  plte.n_entries = 2;
  plte.entries[0].red = 255;
  plte.entries[1].green = 128;
  plte.entries[1].blue = 7;
  const unsigned char idx[3] = {1, 0, 1};
  CHECK(write_raw_png(p, 3, 1, SPNG_COLOR_TYPE_INDEXED, 8, idx, 3, &plte, NULL) == 0);
  CHECK(sd_image_read(p, &img, &err) == SD_OK);
  const unsigned char wantp[9] = {0, 128, 7, 255, 0, 0, 0, 128, 7};
  CHECK(img.channels == 3 && img.data && memcmp(img.data, wantp, 9) == 0);
  sd_image_free(&img);
  struct spng_trns trns = {0};
  trns.n_type3_entries = 1;
  trns.type3_alpha[0] = 33;
  CHECK(write_raw_png(p, 3, 1, SPNG_COLOR_TYPE_INDEXED, 8, idx, 3, &plte, &trns) == 0);
  CHECK(sd_image_read(p, &img, &err) == SD_OK);
  CHECK(img.channels == 4 && img.data && img.data[3] == 255 && img.data[4] == 255 &&
        img.data[7] == 33);
  sd_image_free(&img);

  /* 1-bit gray: 0 -> 0, 1 -> 255 */
  const unsigned char bits[1] = {0xa0}; /* 1 0 1 */
  CHECK(write_raw_png(p, 3, 1, SPNG_COLOR_TYPE_GRAYSCALE, 1, bits, 1, NULL, NULL) == 0);
  CHECK(sd_image_read(p, &img, &err) == SD_OK);
  CHECK(img.channels == 3 && img.data && img.data[0] == 255 && img.data[3] == 0 &&
        img.data[6] == 255);
  sd_image_free(&img);
  unlink(p);
}

static void test_conversions(void) {
  sd_image img = {0};
  sd_error err = {0};
  CHECK(sd_image_alloc(&img, 4, 2, 3, &err) == SD_OK);
  float chw[3 * 8];
  const float special[8] = {0.0f, 1.0f, -0.1f, 1.2f, NAN, 0.5f, INFINITY, -INFINITY};
  for (int c = 0; c < 3; c++)
    for (int i = 0; i < 8; i++) chw[c * 8 + i] = special[i];
  sd_image_from_planar(&img, chw, 3, SD_RANGE_0_1);
  const uint8_t want[8] = {0, 255, 0, 255, 0, 128, 255, 0};
  for (int i = 0; i < 8; i++)
    CHECK_MSG(img.data[i * 3] == want[i] && img.data[i * 3 + 2] == want[i],
              "value %d: got %d want %d", i, img.data[i * 3], want[i]);
  /* [-1, 1]: x / 2 + 0.5 first */
  for (int i = 0; i < 8; i++) chw[i] = special[i] * 2.0f - 1.0f;
  sd_image_from_planar(&img, chw, 1, SD_RANGE_NEG1_1);
  CHECK(img.data[0] == 0 && img.data[3] == 255 && img.data[15] == 128);

  /* halves round to even, as numpy: every float whose product with 255 is
   * exactly k + 0.5 */
  int checked = 0;
  sd_image one = {0};
  CHECK(sd_image_alloc(&one, 1, 1, 3, &err) == SD_OK);
  for (int k = 0; k < 255; k++) {
    float t = ((float)k + 0.5f) / 255.0f;
    if (t * 255.0f != (float)k + 0.5f) continue;
    float px[3] = {t, t, t};
    sd_image_from_planar(&one, px, 3, SD_RANGE_0_1);
    int even = (k % 2 == 0) ? k : k + 1;
    CHECK_MSG(one.data[0] == even, "%d.5 rounds to %d, got %d", k, even, one.data[0]);
    checked++;
  }
  CHECK(checked > 10);
  sd_image_free(&one);

  /* u8 -> float -> u8 is the identity in both ranges */
  sd_image all = {0}, back = {0};
  CHECK(sd_image_alloc(&all, 256, 1, 4, &err) == SD_OK);
  CHECK(sd_image_alloc(&back, 256, 1, 4, &err) == SD_OK);
  for (int i = 0; i < 256; i++)
    for (int c = 0; c < 4; c++) all.data[i * 4 + c] = (uint8_t)(c == 1 ? 255 - i : i);
  float *f = malloc(sizeof(float) * 256 * 4);
  for (int r = 0; r < 2; r++) {
    sd_image_to_planar(f, &all, r ? SD_RANGE_NEG1_1 : SD_RANGE_0_1);
    CHECK(f[1] == (r ? 2.0f * (1.0f / 255.0f) - 1.0f : 1.0f / 255.0f));
    sd_image_from_planar(&back, f, 4, r ? SD_RANGE_NEG1_1 : SD_RANGE_0_1);
    CHECK(memcmp(all.data, back.data, 256 * 4) == 0);
  }
  free(f);
  sd_image_free(&all);
  sd_image_free(&back);
  sd_image_free(&img);

  CHECK(sd_image_alloc(&img, 0, 5, 3, &err) == SD_ERR_ARG);
  CHECK(sd_image_alloc(&img, 5, 5, 2, &err) == SD_ERR_ARG);
  CHECK(sd_image_alloc(&img, 100000, 100000, 3, &err) == SD_ERR_UNSUPPORTED);
}

int main(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/sdgen_test_image_XXXXXX");
  if (!mkdtemp(g_dir)) {
    fprintf(stderr, "cannot create a temporary folder\n");
    return 1;
  }
  test_png_round_trip(3);
  test_png_round_trip(4);
  test_png_corrupt();
  test_png_flavours();
  test_jpeg();
  test_write_failures();
  test_conversions();
  CHECK(sd_alloc_get_stats().bytes_in_use == 0);
  /* clean up */
  DIR *d = opendir(g_dir);
  struct dirent *e;
  while (d && (e = readdir(d))) {
    char p[600];
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    snprintf(p, sizeof p, "%s/%s", g_dir, e->d_name);
    unlink(p);
  }
  if (d) closedir(d);
  rmdir(g_dir);
  return test_finish();
}
