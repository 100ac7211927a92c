/* .pth reader: checkpoints this test writes itself in torch.save's layout
 * (zip of stored entries, protocol-2 pickle with persistent storage ids),
 * hostile and broken variants, and, when the fixtures are present, the tiny
 * Real-ESRGAN x4plus weights re-packed as {"params_ema": {...}} running the
 * same as from safetensors. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/alloc.h"
#include "io/pth.h"
#include "io/safetensors.h"
#include "models/rrdbnet.h"
#include "test_util.h"

/* ---- a growable byte buffer ---- */
typedef struct buf {
  unsigned char *d;
  size_t n, cap;
} buf;

static void put(buf *b, const void *p, size_t n) {
  if (b->n + n > b->cap) {
    b->cap = (b->n + n) * 2 + 64;
    b->d = realloc(b->d, b->cap);
  }
  memcpy(b->d + b->n, p, n);
  b->n += n;
}
static void put1(buf *b, unsigned v) {
  unsigned char c = (unsigned char)v;
  put(b, &c, 1);
}
static void put_le(buf *b, uint64_t v, int n) {
  for (int i = 0; i < n; i++) put1(b, (unsigned)(v >> (8 * i)) & 0xff);
}

/* ---- pickle pieces, as torch.save (protocol 2) emits them ---- */
static void pk_str(buf *b, const char *s) {
  put1(b, 'X');
  put_le(b, strlen(s), 4);
  put(b, s, strlen(s));
}
static void pk_int(buf *b, int64_t v) {
  if (v >= 0 && v < 256) {
    put1(b, 'K');
    put1(b, (unsigned)v);
  } else {
    put1(b, 'J');
    put_le(b, (uint64_t)v, 4);
  }
}
static void pk_global(buf *b, const char *mod, const char *name) {
  put1(b, 'c');
  put(b, mod, strlen(mod));
  put1(b, '\n');
  put(b, name, strlen(name));
  put1(b, '\n');
}
static void pk_ordered_dict(buf *b) {
  pk_global(b, "collections", "OrderedDict");
  put1(b, ')');
  put1(b, 'R');
}
static void pk_int_tuple(buf *b, const int64_t *v, int n) {
  put1(b, '(');
  for (int i = 0; i < n; i++) pk_int(b, v[i]);
  put1(b, 't');
}

/* _rebuild_tensor_v2(persistent storage, offset, size, stride, False, {}) */
static void pk_tensor(buf *b, const char *key, int64_t storage_numel,
                      int64_t offset, const int64_t *shape,
                      const int64_t *stride, int ndim) {
  pk_global(b, "torch._utils", "_rebuild_tensor_v2");
  put1(b, '(');
  put1(b, '(');
  pk_str(b, "storage");
  pk_global(b, "torch", "FloatStorage");
  pk_str(b, key);
  pk_str(b, "cpu");
  pk_int(b, storage_numel);
  put1(b, 't');
  put1(b, 'Q');
  pk_int(b, offset);
  pk_int_tuple(b, shape, ndim);
  pk_int_tuple(b, stride, ndim);
  put1(b, 0x89);
  pk_ordered_dict(b);
  put1(b, 't');
  put1(b, 'R');
}

/* ---- zip writer: stored entries, data 64-byte aligned like torch ---- */
typedef struct zip_item {
  char name[128];
  const unsigned char *data;
  size_t size;
} zip_item;

static uint32_t crc32_of(const unsigned char *p, size_t n) {
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
  }
  return ~c;
}

static void zip_write(buf *z, const zip_item *items, int n, int method) {
  uint32_t offs[256];
  for (int i = 0; i < n; i++) {
    offs[i] = (uint32_t)z->n;
    size_t nl = strlen(items[i].name);
    size_t pad = (64 - (z->n + 30 + nl + 4) % 64) % 64 + 4;
    put_le(z, 0x04034b50, 4);
    put_le(z, 20, 2);
    put_le(z, 0, 2);
    put_le(z, (uint64_t)method, 2);
    put_le(z, 0, 4);
    put_le(z, crc32_of(items[i].data, items[i].size), 4);
    put_le(z, items[i].size, 4);
    put_le(z, items[i].size, 4);
    put_le(z, nl, 2);
    put_le(z, pad, 2);
    put(z, items[i].name, nl);
    put_le(z, 0xcafe, 2); /* an extra field of padding, as torch writes */
    put_le(z, pad - 4, 2);
    for (size_t k = 0; k < pad - 4; k++) put1(z, 'Z');
    put(z, items[i].data, items[i].size);
  }
  size_t cd = z->n;
  for (int i = 0; i < n; i++) {
    size_t nl = strlen(items[i].name);
    put_le(z, 0x02014b50, 4);
    put_le(z, 20, 2);
    put_le(z, 20, 2);
    put_le(z, 0, 2);
    put_le(z, (uint64_t)method, 2);
    put_le(z, 0, 4);
    put_le(z, crc32_of(items[i].data, items[i].size), 4);
    put_le(z, items[i].size, 4);
    put_le(z, items[i].size, 4);
    put_le(z, nl, 2);
    put_le(z, 0, 2);
    put_le(z, 0, 2);
    put_le(z, 0, 2);
    put_le(z, 0, 2);
    put_le(z, 0, 4);
    put_le(z, offs[i], 4);
    put(z, items[i].name, nl);
  }
  size_t cd_size = z->n - cd;
  put_le(z, 0x06054b50, 4);
  put_le(z, 0, 4);
  put_le(z, (uint64_t)n, 2);
  put_le(z, (uint64_t)n, 2);
  put_le(z, cd_size, 4);
  put_le(z, cd, 4);
  put_le(z, 0, 2);
}

/* A checkpoint {"params_ema": {"conv.weight": (2,3), "conv.bias": (2,),
 * "view": 2 elements of storage 0 from offset 4}, "step": 5}. `variant`
 * breaks it in one way. */
enum { OK_FILE, EVIL_CALL, TRUNCATED_PKL, MISSING_STORAGE, STRIDED, COMPRESSED };

static float g_w[6] = {1, 2, 3, 4, 5, 6}, g_b[2] = {-0.5f, 0.25f};

static void make_checkpoint(buf *out, int variant) {
  buf p = {0};
  put1(&p, 0x80);
  put1(&p, 2);
  put1(&p, '}');
  put1(&p, 'q');
  put1(&p, 0);
  put1(&p, '(');
  pk_str(&p, "params_ema");
  pk_ordered_dict(&p);
  put1(&p, '(');
  pk_str(&p, "conv.weight");
  const int64_t ws[2] = {2, 3}, wst[2] = {3, 1}, bs[1] = {2}, bst[1] = {1};
  const int64_t bad_st[2] = {1, 2};
  pk_tensor(&p, "0", 6, 0, ws, variant == STRIDED ? bad_st : wst, 2);
  put1(&p, 'q');
  put1(&p, 1); /* memo the weight, fetched again below */
  pk_str(&p, "conv.bias");
  pk_tensor(&p, variant == MISSING_STORAGE ? "7" : "1", 2, 0, bs, bst, 1);
  pk_str(&p, "view");
  pk_tensor(&p, "0", 6, 4, bs, bst, 1);
  pk_str(&p, "alias");
  put1(&p, 'h');
  put1(&p, 1);
  put1(&p, 'u');
  pk_str(&p, "step");
  pk_int(&p, 5);
  if (variant == EVIL_CALL) {
    pk_str(&p, "payload");
    pk_global(&p, "os", "system");
    put1(&p, '(');
    pk_str(&p, "echo pwned");
    put1(&p, 't');
    put1(&p, 'R');
  }
  put1(&p, 'u');
  put1(&p, '.');
  if (variant == TRUNCATED_PKL) p.n -= 20;
  zip_item items[4] = {
      {"archive/data.pkl", p.d, p.n},
      {"archive/data/0", (const unsigned char *)g_w, sizeof g_w},
      {"archive/data/1", (const unsigned char *)g_b, sizeof g_b},
      {"archive/version", (const unsigned char *)"3\n", 2},
  };
  zip_write(out, items, 4, variant == COMPRESSED ? 8 : 0);
  free(p.d);
}

static void test_small(void) {
  buf z = {0};
  make_checkpoint(&z, OK_FILE);
  sd_pth *p = NULL;
  sd_error err = {0};
  int st = sd_pth_open_memory(&p, z.d, z.n, &err);
  CHECK_MSG(st == SD_OK, "open: %s", err.msg);
  if (!st) {
    CHECK(sd_pth_count(p) == 4);
    const sd_tensor *w = sd_pth_get(p, "params_ema.conv.weight");
    const sd_tensor *b = sd_pth_get(p, "params_ema.conv.bias");
    const sd_tensor *v = sd_pth_get(p, "params_ema.view");
    const sd_tensor *a = sd_pth_get(p, "params_ema.alias");
    CHECK(w && w->dtype == SD_F32 && w->ndim == 2 && w->shape[0] == 2 &&
          w->shape[1] == 3 && memcmp(w->data, g_w, sizeof g_w) == 0);
    CHECK(b && b->ndim == 1 && ((const float *)b->data)[1] == 0.25f);
    CHECK(v && ((const float *)v->data)[0] == 5.0f && ((const float *)v->data)[1] == 6.0f);
    CHECK(a && a->data == w->data);
    CHECK(w && !w->owns_data && (const unsigned char *)w->data > z.d &&
          (const unsigned char *)w->data < z.d + z.n);
    CHECK(sd_pth_get(p, "step") == NULL && sd_pth_get(p, "conv.weight") == NULL);
    CHECK(strcmp(sd_pth_name_at(p, 0), "params_ema.conv.weight") == 0);
  }
  sd_pth_free(p);

  /* from a file */
  char path[] = "/tmp/sdgen_test_pth_XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  if (fd >= 0) {
    CHECK(write(fd, z.d, z.n) == (ssize_t)z.n);
    close(fd);
    p = NULL;
    CHECK(sd_pth_open(&p, path, &err) == SD_OK);
    CHECK(p && sd_pth_count(p) == 4);
    sd_pth_free(p);
    unlink(path);
  }
  free(z.d);
}

static void expect_error(int variant, int code, const char *needle) {
  buf z = {0};
  make_checkpoint(&z, variant);
  sd_pth *p = NULL;
  sd_error err = {0};
  int st = sd_pth_open_memory(&p, z.d, z.n, &err);
  CHECK_MSG(st == code, "variant %d: status %d (%s), want %d", variant, st,
            err.msg, code);
  CHECK_MSG(p == NULL && strstr(err.msg, needle), "variant %d: message '%s'",
            variant, err.msg);
  free(z.d);
}

static void test_errors(void) {
  expect_error(EVIL_CALL, SD_ERR_UNSUPPORTED, "os.system");
  expect_error(TRUNCATED_PKL, SD_ERR_FORMAT, "truncated");
  expect_error(MISSING_STORAGE, SD_ERR_FORMAT, "data/7");
  expect_error(STRIDED, SD_ERR_UNSUPPORTED, "not contiguous");
  expect_error(COMPRESSED, SD_ERR_UNSUPPORTED, "compressed");
  sd_pth *p = NULL;
  sd_error err = {0};
  const unsigned char junk[40] = "not a zip at all, just some bytes......";
  CHECK(sd_pth_open_memory(&p, junk, sizeof junk, &err) == SD_ERR_FORMAT);
  /* every prefix of a valid file fails cleanly */
  buf z = {0};
  make_checkpoint(&z, OK_FILE);
  int clean = 1;
  for (size_t n = 0; n < z.n; n += 7) {
    unsigned char *copy = malloc(n ? n : 1);
    memcpy(copy, z.d, n);
    sd_error_clear(&err);
    int st = sd_pth_open_memory(&p, copy, n, &err);
    if (st == SD_OK) {
      sd_pth_free(p);
      clean = 0;
    }
    free(copy);
  }
  CHECK_MSG(clean, "truncated zips are refused");
  /* random byte flips: any status is fine, crashes and leaks are not (run
   * under ASan) */
  unsigned seed = 1;
  unsigned char *copy = malloc(z.n);
  for (int it = 0; it < 3000; it++) {
    memcpy(copy, z.d, z.n);
    for (int k = 0; k < 1 + it % 3; k++) {
      seed = seed * 1103515245u + 12345u;
      size_t pos = (seed >> 8) % z.n;
      seed = seed * 1103515245u + 12345u;
      copy[pos] = (unsigned char)(seed >> 16);
    }
    p = NULL;
    sd_error_clear(&err);
    if (sd_pth_open_memory(&p, copy, z.n, &err) == SD_OK) sd_pth_free(p);
  }
  free(copy);
  CHECK(sd_alloc_get_stats().bytes_in_use == 0);
  sd_error_clear(&err);
  CHECK(sd_pth_open(&p, "/nonexistent/x.pth", &err) == SD_ERR_IO);
  free(z.d);
}

/* Fault points: every one of the first 19, then every step-th, ending
 * exactly at total + 1. */
static int64_t next_fault(int64_t k, int64_t total, int64_t step) {
  int64_t n = k < 20 ? k + 1 : k + step;
  return n > total + 1 && k <= total ? total + 1 : n;
}

/* The fixture's tiny x4plus weights as a .pth under params_ema. */
static void test_rrdbnet_from_pth(const char *fixtures) {
  char path[1024];
  snprintf(path, sizeof path, "%s/golden/upscale/realesrgan_x4plus_tiny.safetensors",
           fixtures);
  struct stat stt;
  if (stat(path, &stt) != 0) {
    printf("SKIP: %s not found; RRDBNet-from-.pth check not run\n", path);
    return;
  }
  sd_weights *w = NULL;
  sd_error err = {0};
  CHECK(sd_weights_open(&w, path, &err) == SD_OK);
  if (!w) return;
  int n = sd_weights_count(w);
  buf pk = {0};
  put1(&pk, 0x80);
  put1(&pk, 2);
  put1(&pk, '}');
  put1(&pk, '(');
  pk_str(&pk, "params_ema");
  pk_ordered_dict(&pk);
  put1(&pk, '(');
  zip_item *items = calloc((size_t)n + 1, sizeof *items);
  for (int i = 0; i < n; i++) {
    const sd_tensor *t = sd_weights_tensor_at(w, i);
    int64_t stride[SD_MAX_DIMS], s = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
      stride[d] = s;
      s *= t->shape[d];
    }
    char key[16];
    snprintf(key, sizeof key, "%d", i);
    pk_str(&pk, sd_weights_name_at(w, i));
    pk_tensor(&pk, key, sd_tensor_numel(t), 0, t->shape, stride, t->ndim);
    snprintf(items[i + 1].name, sizeof items[i + 1].name, "tiny/data/%d", i);
    items[i + 1].data = t->data;
    items[i + 1].size = sd_tensor_nbytes(t);
  }
  put1(&pk, 'u');
  put1(&pk, 'u');
  put1(&pk, '.');
  snprintf(items[0].name, sizeof items[0].name, "tiny/data.pkl");
  items[0].data = pk.d;
  items[0].size = pk.n;
  buf z = {0};
  CHECK(n + 1 <= 256);
  zip_write(&z, items, n + 1 > 256 ? 256 : n + 1, 0);

  sd_pth *p = NULL;
  sd_rrdbnet *a = NULL, *b = NULL;
  int st = sd_pth_open_memory(&p, z.d, z.n, &err);
  CHECK_MSG(st == SD_OK, "open: %s", err.msg);
  if (!st) st = sd_rrdbnet_init_pth(&b, p, &err);
  CHECK_MSG(st == SD_OK, "init from pth: %s", err.msg);
  CHECK(sd_rrdbnet_init(&a, w, &err) == SD_OK);
  if (a && b) {
    const sd_rrdbnet_config *ca = sd_rrdbnet_config_of(a), *cb = sd_rrdbnet_config_of(b);
    CHECK(memcmp(ca, cb, sizeof *ca) == 0);
    const int H = 10, W = 12;
    float x[3 * 10 * 12];
    for (int i = 0; i < 3 * H * W; i++) x[i] = (float)((i * 37) % 255) / 255.0f;
    size_t on = (size_t)3 * H * 4 * W * 4;
    float *ya = malloc(on * sizeof(float)), *yb = malloc(on * sizeof(float));
    CHECK(sd_rrdbnet_forward(a, x, H, W, ya, &err) == SD_OK);
    CHECK(sd_rrdbnet_forward(b, x, H, W, yb, &err) == SD_OK);
    CHECK_MSG(memcmp(ya, yb, on * sizeof(float)) == 0,
              "same output from .pth and .safetensors");
    /* the 8-bit entry point: u8 / 255 in, round(clamp(y) * 255) out; RGBA
     * gets its alpha through the network too */
    sd_image img = {0}, big = {0}, ref = {0};
    CHECK(sd_image_alloc(&img, W, H, 4, &err) == SD_OK);
    for (int i = 0; i < H * W; i++) {
      for (int c = 0; c < 3; c++)
        img.data[i * 4 + c] = (uint8_t)lrintf(x[c * H * W + i] * 255.0f);
      img.data[i * 4 + 3] = (uint8_t)(i * 2);
    }
    float *xr = malloc(sizeof(float) * 4 * H * W);
    sd_image_to_planar(xr, &img, SD_RANGE_0_1);
    CHECK(sd_rrdbnet_forward(a, xr, H, W, ya, &err) == SD_OK);
    CHECK(sd_image_alloc(&ref, W * 4, H * 4, 3, &err) == SD_OK);
    sd_image_from_planar(&ref, ya, 3, SD_RANGE_0_1);
    CHECK(sd_realesrgan_upscale_image(a, &img, NULL, &big, &err) == SD_OK);
    int same = big.data && big.channels == 4 && big.width == 4 * W;
    int alpha_varies = 0;
    for (int i = 0; same && i < 16 * H * W; i++) {
      same = memcmp(big.data + i * 4, ref.data + i * 3, 3) == 0;
      alpha_varies |= big.data[i * 4 + 3] != big.data[3];
    }
    CHECK_MSG(same, "upscale_image RGB equals the float path");
    CHECK(alpha_varies);
    free(xr);
    sd_image_free(&img);
    sd_image_free(&big);
    sd_image_free(&ref);

    /* one tile covering the image is the plain forward pass */
    sd_realesrgan_params rp = sd_realesrgan_default_params();
    rp.tile = 64;
    CHECK(sd_realesrgan_run(a, x, H, W, &rp, yb, &err) == SD_OK);
    CHECK(memcmp(ya, yb, on * sizeof(float)) == 0);
    /* every failing allocation of a tiled, padded run ends cleanly */
    rp.tile = 8;
    rp.tile_pad = 2;
    rp.pre_pad = 3;
    /* count the allocations of a full run, then fail ~100 of them spread
     * over the run (each check is a whole run) */
    sd_alloc_fail_at((int64_t)1 << 40, 0);
    CHECK(sd_realesrgan_run(a, x, H, W, &rp, yb, &err) == SD_OK);
    const int64_t total = sd_alloc_calls_since_arm();
    sd_alloc_fail_at(0, 0);
    const int64_t step = total / 100 + 1;
    int completed = 0;
    /* k = 1..19, then every step-th, and last total + 1, which must run
     * through without a fault */
    for (int64_t k = 1; k <= total + 1; k = next_fault(k, total, step)) {
      sd_alloc_fail_at(k, 1);
      sd_error_clear(&err);
      int rs = sd_realesrgan_run(a, x, H, W, &rp, yb, &err);
      int hit = sd_alloc_fault_triggered();
      sd_alloc_fail_at(0, 0);
      if (rs == SD_OK) { /* a kernel may recover from a failed scratch */
        if (!hit) completed = 1;
        if (!hit) break;
        continue;
      }
      CHECK_MSG(rs == SD_ERR_OOM && err.msg[0], "fault %lld: %d %s",
                (long long)k, rs, err.msg);
    }
    CHECK(completed);
    free(ya);
    free(yb);
  }
  sd_rrdbnet_free(a);
  sd_rrdbnet_free(b);
  sd_pth_free(p);
  sd_weights_free(w);
  free(items);
  free(pk.d);
  free(z.d);
}

int main(int argc, char **argv) {
  const char *fixtures = argc > 1 ? argv[1] : getenv("SDGEN_FIXTURES");
  struct stat st;
  if (!fixtures) /* ctest runs in the build folder inside the repo */
    fixtures = stat("../../shared/fixtures", &st) == 0 ? "../../shared/fixtures"
                                                       : "../shared/fixtures";
  test_small();
  test_errors();
  test_rrdbnet_from_pth(fixtures);
  CHECK(sd_alloc_get_stats().bytes_in_use == 0);
  return test_finish();
}
