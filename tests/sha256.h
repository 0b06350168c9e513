/* sha256.h: SHA-256 (FIPS 180-4), for checking test vectors' disk digests. */
#ifndef AC_SHA256_H
#define AC_SHA256_H

#include <stddef.h>
#include <stdint.h>

struct tu_sha256 {
    uint32_t h[8];
    uint64_t len;
    unsigned char buf[64];
    size_t fill;
};

void tu_sha256_init(struct tu_sha256 *s);
void tu_sha256_update(struct tu_sha256 *s, const void *data, size_t len);
/* Writes the digest as 64 lowercase hex digits and a NUL. */
void tu_sha256_hex(struct tu_sha256 *s, char out[65]);

#endif
