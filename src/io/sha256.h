/* SHA-256 (FIPS 180-4), streaming.
 *
 * The Hugging Face hub names every LFS blob by the SHA-256 of its content
 * (the X-Linked-Etag header), so a download is verified by hashing the bytes
 * as they arrive, resumed parts included. */
#ifndef SDGEN_IO_SHA256_H
#define SDGEN_IO_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct sd_sha256 {
  uint32_t state[8];
  uint64_t total_bytes;
  unsigned char block[64];
  size_t block_used;
} sd_sha256;

void sd_sha256_init(sd_sha256 *h);
void sd_sha256_update(sd_sha256 *h, const void *data, size_t len);
/* Writes the 32-byte digest; h must be re-initialised before reuse. */
void sd_sha256_final(sd_sha256 *h, unsigned char digest[32]);
/* Writes the digest as 64 lowercase hex digits plus NUL into hex[65]. */
void sd_sha256_final_hex(sd_sha256 *h, char hex[65]);

/* One-shot helpers. */
void sd_sha256_hex(const void *data, size_t len, char hex[65]);

#endif
