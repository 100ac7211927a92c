/* The server's request parser against hostile bodies: malformed JSON, deep
 * nesting, huge strings, wrong types, random bytes and random mutations of
 * a valid body. Every call must either succeed with fields in range or fail
 * with a 400 and a message; nothing may crash or leak (run under ASan by
 * scripts/test.sh). Also the base64 round trip and the sampler names. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/request.h"

static int fails;
#define CHECK(c, ...)               \
  do {                              \
    if (!(c) && fails++ < 20) {     \
      printf("FAIL: " __VA_ARGS__); \
      printf("\n");                 \
    }                               \
  } while (0)

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t next(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)rng;
}

/* Parses body as txt2img and img2img; checks the invariants of a success
 * or of a failure. Returns 1 when txt2img accepted it. */
static int feed(const char *body, size_t len) {
  int ok = 0;
  for (int img = 0; img < 3; img++) {
    srv_request r;
    srv_error e;
    memset(&e, 0, sizeof e);
    int rc =
        img == 2 ? srv_parse_openai(body, len, &r, &e) : srv_parse_request(body, len, img, &r, &e);
    if (rc == 0) {
      CHECK(r.prompt != NULL, "accepted without prompt");
      CHECK(r.width % 8 == 0 && r.height % 8 == 0 && r.width >= 64 && r.width <= SRV_MAX_SIDE,
            "accepted size %dx%d", r.width, r.height);
      CHECK(r.steps >= 1 && r.steps <= SRV_MAX_STEPS, "accepted steps %d", r.steps);
      CHECK(r.batch_size >= 1 && r.batch_size <= SRV_MAX_BATCH, "accepted batch %d", r.batch_size);
      CHECK(img != 1 || r.init_image, "img2img accepted without an image");
      cJSON *echo = srv_request_echo(&r);
      CHECK(echo != NULL, "no echo");
      cJSON_Delete(echo);
      srv_request_free(&r);
      if (img == 0) ok = 1;
    } else {
      CHECK(e.status == 400 || e.status == 500, "status %d", e.status);
      CHECK(e.error[0] && e.detail[0], "failure without a message");
    }
  }
  return ok;
}

static int feed_s(const char *s) {
  return feed(s, strlen(s));
}

int main(void) {
  /* known answers */
  CHECK(feed_s("{\"prompt\":\"a cat\",\"steps\":4,\"width\":128,\"height\":128,\"seed\":42}"),
        "valid body refused");
  CHECK(feed_s("{}"), "empty object refused");
  const char *bad[] = {"",
                       "{",
                       "[]",
                       "null",
                       "\"x\"",
                       "{\"prompt\":1}",
                       "{\"steps\":\"4\"}",
                       "{\"steps\":4.5}",
                       "{\"steps\":0}",
                       "{\"steps\":151}",
                       "{\"width\":100}",
                       "{\"width\":4096}",
                       "{\"batch_size\":9}",
                       "{\"seed\":-2}",
                       "{\"seed\":1e300}",
                       "{\"cfg_scale\":\"7\"}",
                       "{\"sampler_name\":\"Heun\"}",
                       "{\"override_settings\":[]}",
                       "{\"override_settings\":{\"sd_model_checkpoint\":5}}",
                       "{\"loras\":{}}",
                       "{\"loras\":[1]}",
                       "{\"loras\":[{\"scale\":1}]}",
                       "{\"prompt\":\"a\"}garbage",
                       "{\"timestep_spacing\":\"sideways\"}",
                       "{\"sd_model_checkpoint\":\"a\\u0001b\"}"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    CHECK(!feed_s(bad[i]), "accepted bad body %s", bad[i]);
  CHECK(srv_parse_request("{\"init_images\":[\"@@@\"]}", 22, 1, &(srv_request){0},
                          &(srv_error){0}) != 0,
        "img2img accepted bad base64");
  {
    srv_request r;
    srv_error e;
    CHECK(srv_parse_request("{\"sampler_name\":\"DPM++ 2M Karras\"}", 34, 0, &r, &e) == 0 &&
              !strcmp(r.sampler, "dpmpp_2m_karras"),
          "sampler mapping");
    srv_request_free(&r);
  }

  /* deep nesting, both under and far over cJSON's limit */
  for (int depth = 10; depth <= 200000; depth *= 10) {
    size_t n = (size_t)depth * 2 + 32;
    char *b = malloc(n);
    size_t k = 0;
    k += (size_t)sprintf(b, "{\"prompt\":");
    for (int i = 0; i < depth; i++) b[k++] = '[';
    for (int i = 0; i < depth; i++) b[k++] = ']';
    b[k++] = '}';
    CHECK(!feed(b, k), "nested arrays accepted as a prompt");
    free(b);
  }
  /* huge strings: over the prompt limit, and a huge key */
  {
    size_t n = 4u << 20;
    char *b = malloc(n + 64);
    memcpy(b, "{\"prompt\":\"", 11);
    memset(b + 11, 'a', n);
    memcpy(b + 11 + n, "\"}", 2);
    CHECK(!feed(b, n + 13), "4 MB prompt accepted");
    b[1] = 'x';
    feed(b, n + 13);
    free(b);
  }
  /* random bytes and mutations of a valid body (no NUL terminator beyond len) */
  const char *valid =
      "{\"prompt\":\"a cat\",\"negative_prompt\":\"dog\",\"steps\":4,\"width\":128,"
      "\"height\":128,\"seed\":42,\"cfg_scale\":7,\"sampler_name\":\"Euler a\","
      "\"loras\":[{\"name\":\"x\",\"scale\":0.5}],\"override_settings\":"
      "{\"sd_model_checkpoint\":\"sd15\"},\"init_images\":[\"iVBORw0KGgo=\"]}";
  size_t vl = strlen(valid);
  char buf[512];
  for (int iter = 0; iter < 20000; iter++) {
    size_t len;
    if (iter % 4 == 0) {
      len = next() % 64;
      for (size_t i = 0; i < len; i++) buf[i] = (char)next();
    } else {
      len = vl;
      memcpy(buf, valid, vl);
      int muts = 1 + next() % 4;
      for (int m = 0; m < muts && len > 0; m++) {
        size_t at = next() % len;
        switch (next() % 3) {
          case 0:
            buf[at] = (char)next();
            break;
          case 1:
            len = at;
            break; /* truncate */
          default:
            buf[at] = "{}[]\":,\\0e-"[next() % 11];
            break;
        }
      }
    }
    char *heap = malloc(len ? len : 1); /* exact size: ASan sees over-reads */
    memcpy(heap, buf, len);
    feed(heap, len);
    free(heap);
  }
  /* base64 */
  for (int n = 0; n < 300; n++) {
    unsigned char in[300];
    for (int i = 0; i < n; i++) in[i] = (unsigned char)next();
    char *enc = srv_b64_encode(in, (size_t)n);
    size_t m = 0;
    unsigned char *dec = enc ? srv_b64_decode(enc, &m) : NULL;
    CHECK(n == 0 ? dec == NULL : (dec && m == (size_t)n && !memcmp(in, dec, (size_t)n)),
          "base64 round trip of %d bytes", n);
    free(enc);
    free(dec);
  }
  if (fails) {
    printf("%d failures\n", fails);
    return 1;
  }
  printf("server request parser: ok\n");
  return 0;
}
