/* Mutational fuzzing of the parsers that read user files: safetensors
 * headers (in memory and through the file loader) and model config.json
 * files fed to the model loaders. Every input must end in SD_OK or a clean
 * error with a message: no crash, no leak, no read out of bounds (run under
 * AddressSanitizer in CI). Deterministic (fixed seeds). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/alloc.h"
#include "io/json.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "models/clip_text.h"
#include "models/unet.h"
#include "models/vae.h"
#include "test_util.h"

#ifndef SDGEN_FIXTURES_DEFAULT
#define SDGEN_FIXTURES_DEFAULT "../../shared/fixtures"
#endif

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t next_u32(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (uint32_t)rng_state;
}

/* A small valid safetensors file image: two tensors. */
static size_t make_file(unsigned char *buf, size_t cap) {
  const char *hdr =
      "{\"__metadata__\":{\"format\":\"pt\"},"
      "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
      "\"b\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[24,32]}}";
  size_t hl = strlen(hdr);
  for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
  memcpy(buf + 8, hdr, hl);
  for (size_t i = 0; i < 32 && 8 + hl + i < cap; i++) buf[8 + hl + i] = (unsigned char)i;
  return 8 + hl + 32;
}

static const char *const k_tokens[] = {"-1", "1e30", "99999999999999999999", "\"F64\"", "\"Q8\"",
                                       "[]", "{}", "null", "[0,0]", "[1,2,3]", "\"", ",", "]"};

static void mutate(unsigned char *buf, size_t *len, size_t cap) {
  int kind = (int)(next_u32() % 5);
  size_t n = *len;
  if (kind == 0 && n) { /* flip bytes */
    for (int k = 0; k < 1 + (int)(next_u32() % 4); k++) buf[next_u32() % n] ^= (unsigned char)(1u << (next_u32() % 8));
  } else if (kind == 1 && n) { /* truncate */
    *len = next_u32() % n;
  } else if (kind == 2 && n > 16) { /* splice a token into the JSON */
    const char *t = k_tokens[next_u32() % (sizeof k_tokens / sizeof *k_tokens)];
    size_t tl = strlen(t), at = 8 + next_u32() % (n - 8);
    if (n + tl < cap) {
      memmove(buf + at + tl, buf + at, n - at);
      memcpy(buf + at, t, tl);
      *len = n + tl;
    }
  } else if (kind == 3) { /* corrupt the length prefix */
    uint64_t v = next_u32() % 4 == 0 ? ~0ull : next_u32() % (n + 64);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(v >> (8 * i));
  } else if (n > 9) { /* delete a span */
    size_t at = 8 + next_u32() % (n - 8), del = 1 + next_u32() % 16;
    if (at + del > n) del = n - at;
    memmove(buf + at, buf + at + del, n - at - del);
    *len = n - del;
  }
}

static void fuzz_safetensors(void) {
  unsigned char base[1024], buf[2048];
  size_t blen = make_file(base, sizeof base);
  sd_error err = {0};
  CHECK(sd_safetensors_check(base, blen, blen, &err) == SD_OK);
  char path[] = "/tmp/sdgen_fuzz_XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  close(fd);
  int64_t before = sd_alloc_get_stats().bytes_in_use;
  int ok = 0, rejected = 0;
  for (int it = 0; it < 4000; it++) {
    size_t len = blen;
    memcpy(buf, base, blen);
    for (int m = 0; m < 1 + it % 3; m++) mutate(buf, &len, sizeof buf);
    sd_error_clear(&err);
    int rc = sd_safetensors_check(buf, len, len, &err);
    if (rc) {
      rejected++;
      CHECK_MSG(err.msg[0], "rejection without a message (iteration %d)", it);
    } else {
      ok++;
    }
    if (it % 8 == 0) { /* also through the file loader (mmap path) */
      FILE *f = fopen(path, "wb");
      fwrite(buf, 1, len, f);
      fclose(f);
      sd_weights *w = NULL;
      sd_error_clear(&err);
      int frc = sd_weights_open(&w, path, &err);
      CHECK_MSG((frc == SD_OK) == (w != NULL), "loader result and set disagree");
      CHECK_MSG(frc == SD_OK || err.msg[0], "file rejected without a message");
      if (w) {
        /* every view must lie inside the mapping: read it all */
        for (int i = 0; i < sd_weights_count(w); i++) {
          const sd_tensor *t = sd_weights_tensor_at(w, i);
          volatile unsigned char sink = 0;
          const unsigned char *d = t->data;
          for (size_t b = 0; b < sd_tensor_nbytes(t); b++) sink ^= d[b];
          (void)sink;
        }
      }
      sd_weights_free(w);
    }
  }
  unlink(path);
  CHECK(sd_alloc_get_stats().bytes_in_use == before);
  printf("safetensors: %d accepted, %d rejected\n", ok, rejected);
}

/* Mutates config.json files and loads the fixture weights with them. */
static void fuzz_configs(const char *fixtures) {
  static const char *const comps[] = {"unet", "vae", "text_encoder"};
  char dir[4096];
  for (int c = 0; c < 3; c++) {
    snprintf(dir, sizeof dir, "%s/sd15/%s", fixtures, comps[c]);
    sd_weights *w = NULL;
    cJSON *cfg = NULL;
    sd_error err = {0};
    if (sd_component_open(dir, 0, &w, &cfg, &err)) {
      CHECK_MSG(0, "%s", err.msg);
      continue;
    }
    char *text = cJSON_PrintUnformatted(cfg);
    size_t tl = strlen(text);
    int accepted = 0, rejected = 0, unparsable = 0;
    int64_t before = sd_alloc_get_stats().bytes_in_use;
    for (int it = 0; it < 120; it++) {
      char *m = malloc(tl + 64);
      memcpy(m, text, tl + 1);
      size_t len = tl;
      for (int k = 0; k < 1 + it % 3; k++) {
        size_t at = next_u32() % (len ? len : 1);
        int op = (int)(next_u32() % 3);
        if (op == 0 && len) m[at] = "0123456789-.,:[]{}\"ae"[next_u32() % 21];
        else if (op == 1 && len) memmove(m + at, m + at + 1, len - at), len--;
        else if (len + 8 < tl + 64) {
          const char *t = k_tokens[next_u32() % (sizeof k_tokens / sizeof *k_tokens)];
          size_t n = strlen(t);
          if (len + n + 1 < tl + 64) {
            memmove(m + at + n, m + at, len - at + 1);
            memcpy(m + at, t, n);
            len += n;
          }
        }
      }
      m[len] = 0;
      cJSON *mc = cJSON_Parse(m);
      free(m);
      if (!mc) {
        unparsable++;
        continue;
      }
      sd_error_clear(&err);
      int rc;
      /* An accepted config must also run: a forward pass on a tiny input
       * ends in a result or a clean error. */
      if (c == 0) {
        sd_unet *u = NULL;
        rc = sd_unet_load(&u, w, mc, &err);
        if (!rc) {
          const sd_unet_config *uc = sd_unet_get_config(u);
          float *x = sd_calloc(4 * 16 * 16, 4), *o = sd_calloc((size_t)uc->out_channels * 256, 4);
          float *ctx = sd_calloc(77 * (size_t)uc->cross_dim, 4), ts = 10;
          sd_unet_cond cond = {ctx, 77, NULL, NULL, 0, NULL};
          sd_error ferr = {0};
          if (x && o && ctx && uc->in_channels == 4) {
            int frc = sd_unet_forward(u, x, 1, 16, 16, &ts, &cond, o, 0, &ferr);
            CHECK_MSG(frc == SD_OK || ferr.msg[0], "UNet forward failed without a message");
          }
          sd_free(x);
          sd_free(o);
          sd_free(ctx);
        }
        sd_unet_free(u);
      } else if (c == 1) {
        sd_vae *v = NULL;
        rc = sd_vae_load(&v, w, mc, &err);
        if (!rc) {
          const sd_vae_config *vc = sd_vae_get_config(v);
          int f = sd_vae_downscale(v);
          float *z = sd_calloc((size_t)vc->latent_channels * 4, 4);
          float *img = sd_calloc((size_t)vc->out_channels * 4 * f * f, 4);
          sd_error ferr = {0};
          if (z && img) {
            int frc = sd_vae_decode(v, z, 1, 2, 2, img, &ferr);
            CHECK_MSG(frc == SD_OK || ferr.msg[0], "VAE decode failed without a message");
          }
          sd_free(z);
          sd_free(img);
        }
        sd_vae_free(v);
      } else {
        sd_clip *t = NULL;
        rc = sd_clip_load(&t, w, "", mc, SD_ACT_QUICK_GELU, &err);
        if (!rc) {
          int32_t ids[77] = {49406, 320, 49407};
          float *hid = sd_alloc(sizeof(float) * 77 * t->cfg.hidden);
          sd_clip_outputs out = {hid, NULL, NULL, NULL};
          sd_error ferr = {0};
          if (hid) {
            int frc = sd_clip_encode(t, ids, 1, 77, &out, &ferr);
            CHECK_MSG(frc == SD_OK || ferr.msg[0], "text encoder failed without a message");
          }
          sd_free(hid);
        }
        sd_clip_free(t);
      }
      if (rc) {
        rejected++;
        CHECK_MSG(err.msg[0], "%s config rejected without a message", comps[c]);
      } else {
        accepted++;
      }
      cJSON_Delete(mc);
    }
    CHECK(sd_alloc_get_stats().bytes_in_use == before);
    printf("%s config: %d accepted, %d rejected, %d not JSON\n", comps[c], accepted, rejected,
           unparsable);
    free(text);
    cJSON_Delete(cfg);
    sd_weights_free(w);
  }
}

int main(int argc, char **argv) {
  fuzz_safetensors();
  const char *fixtures = argc > 1 ? argv[1] : getenv("SDGEN_FIXTURES");
  if (!fixtures) fixtures = SDGEN_FIXTURES_DEFAULT;
  char p[4096];
  snprintf(p, sizeof p, "%s/sd15/unet", fixtures);
  if (sd_is_dir(p))
    fuzz_configs(fixtures);
  else
    printf("SKIP: config fuzzing needs the fixtures (%s)\n", fixtures);
  return test_finish();
}
