/* SHA-256 against the FIPS 180-4 / NIST example vectors, fed in uneven
 * pieces so block boundaries fall everywhere. */
#include <string.h>

#include "io/sha256.h"
#include "test_util.h"

static void check_chunked(const char *data, size_t len, size_t chunk, const char *want) {
  sd_sha256 h;
  char hex[65];
  sd_sha256_init(&h);
  for (size_t i = 0; i < len; i += chunk)
    sd_sha256_update(&h, data + i, len - i < chunk ? len - i : chunk);
  sd_sha256_final_hex(&h, hex);
  CHECK_MSG(strcmp(hex, want) == 0, "len %zu chunk %zu: got %s want %s", len, chunk, hex,
            want);
}

int main(void) {
  char hex[65];
  sd_sha256_hex("", 0, hex);
  CHECK(strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == 0);
  sd_sha256_hex("abc", 3, hex);
  CHECK(strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0);
  const char *two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  for (size_t chunk = 1; chunk <= 64; chunk++)
    check_chunked(two_blocks, strlen(two_blocks), chunk,
                  "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  static char million[1000000];
  memset(million, 'a', sizeof million);
  size_t chunks[] = {1000000, 4096, 63, 65, 1};
  for (size_t i = 0; i < sizeof chunks / sizeof *chunks; i++)
    check_chunked(million, sizeof million, chunks[i],
                  "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  return test_finish();
}
