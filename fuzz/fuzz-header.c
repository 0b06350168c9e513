/*
 * fuzz-header.c: the header codec (lib/codec.h) on arbitrary bytes.
 *
 * Every input is decoded by ac_header_decode() and by a reference decoder
 * written here from FORMAT.md, and the two must agree on the verdict and
 * on every field.  A header that decodes is encoded again: the bytes must
 * be the input's header with each path field's bytes after its NUL zeroed
 * (the canonical form), and decoding them gives the same fields.  Probing,
 * the fault's errno and message, and the geometry helpers are checked on
 * the way.
 */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "addcow.h"
#include "codec.h"
#include "fuzz.h"

/* FORMAT.md, "Header": big-endian, at fixed offsets. */
static uint64_t be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* The reference verdict, in the order the fields come (the first fault
 * found is the one reported). */
static enum ac_header_fault ref_decode(const uint8_t *p, size_t len)
{
    if (len < 2068)
        return AC_HDR_SHORT;
    if (be(p, 8) != UINT64_C(0x4144445F434F57FF))
        return AC_HDR_BAD_MAGIC;
    if (be(p + 8, 4) != 1)
        return AC_HDR_BAD_VERSION;
    if (memchr(p + 12, 0, 1024) == NULL)
        return AC_HDR_BACKING_NO_NUL;
    if (memchr(p + 1036, 0, 1024) == NULL)
        return AC_HDR_IMAGE_NO_NUL;
    if (p[1036] == 0)
        return AC_HDR_IMAGE_EMPTY;
    /* Sizes past 2^63 - 512 (rounded down to sectors) are refused. */
    if (be(p + 2060, 8) >> 9 > (UINT64_C(1) << 54) - 1)
        return AC_HDR_SIZE_TOO_BIG;
    return AC_HDR_OK;
}

static void check_geometry(uint64_t size)
{
    uint64_t s = ac_sectors_for_size(size);
    uint64_t b = ac_bitmap_bytes(s);
    FUZZ_CHECK(s == size / 512, "sectors of %llu", (unsigned long long)size);
    FUZZ_CHECK(b * 8 >= s && (b == 0 || (b - 1) * 8 < s), "bitmap bytes of %llu sectors",
               (unsigned long long)s);
    FUZZ_CHECK(ac_file_length_for_size(size) == 2068 + b, "file length of %llu",
               (unsigned long long)size);
    FUZZ_CHECK(ac_file_length_for_size(size) > b, "file length overflows for %llu",
               (unsigned long long)size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Probe: magic and version 1 in the first 12 bytes. */
    int want_probe = size >= 12 && be(data, 8) == UINT64_C(0x4144445F434F57FF) &&
                     be(data + 8, 4) == 1;
    FUZZ_CHECK(ac_header_probe(data, size) == want_probe, "probe of %zu bytes", size);
    FUZZ_CHECK(addcow_probe(data, size) == want_probe, "addcow_probe of %zu bytes", size);
    FUZZ_CHECK(addcow_probe(NULL, size) == 0, "probe of NULL");

    /* Decode, from a copy of exactly the input (ASan sees overreads). */
    struct ac_header h;
    memset(&h, 0xA5, sizeof(h));
    enum ac_header_fault f = ac_header_decode(data, size, &h);
    enum ac_header_fault want = ref_decode(data, size);
    FUZZ_CHECK(f == want, "decode says %d, the reference %d", (int)f, (int)want);
    FUZZ_CHECK(ac_header_decode(NULL, size, &h) == AC_HDR_SHORT, "decode of NULL");

    int e = ac_header_fault_errno(f);
    const char *msg = ac_header_fault_str(f);
    FUZZ_CHECK(msg != NULL && msg[0] != '\0', "fault %d has no message", (int)f);
    switch (f) {
    case AC_HDR_OK:          FUZZ_CHECK(e == 0, "errno %d", e); break;
    case AC_HDR_BAD_VERSION: FUZZ_CHECK(e == -ENOTSUP, "errno %d", e); break;
    case AC_HDR_SIZE_TOO_BIG: FUZZ_CHECK(e == -EFBIG, "errno %d", e); break;
    default:                 FUZZ_CHECK(e == -EINVAL, "errno %d", e); break;
    }
    if (f == AC_HDR_BAD_VERSION)
        FUZZ_CHECK(h.version == (uint32_t)be(data + 8, 4), "version %u", h.version);
    if (f != AC_HDR_OK)
        return 0;

    /* The fields. */
    FUZZ_CHECK(h.version == 1, "version %u", h.version);
    FUZZ_CHECK(h.size == be(data + 2060, 8), "size %llu", (unsigned long long)h.size);
    size_t bl = strnlen((const char *)data + 12, 1024);
    size_t il = strnlen((const char *)data + 1036, 1024);
    FUZZ_CHECK(bl < 1024 && il < 1024 && il > 0, "path lengths %zu %zu", bl, il);
    FUZZ_CHECK(memcmp(h.backing_file, data + 12, bl) == 0 && h.backing_file[bl] == '\0',
               "backing_file differs");
    FUZZ_CHECK(memcmp(h.image_file, data + 1036, il) == 0 && h.image_file[il] == '\0',
               "image_file differs");
    for (size_t i = bl; i < 1024; i++)
        FUZZ_CHECK(h.backing_file[i] == '\0', "backing_file not NUL-padded at %zu", i);
    for (size_t i = il; i < 1024; i++)
        FUZZ_CHECK(h.image_file[i] == '\0', "image_file not NUL-padded at %zu", i);
    check_geometry(h.size);
    FUZZ_CHECK(h.size / 512 * 512 <= AC_MAX_VIRTUAL_SIZE, "accepted size %llu",
               (unsigned long long)h.size);

    /* Encode again: the canonical form of the input's header. */
    uint8_t canon[2068], enc[2068];
    memcpy(canon, data, 2068);
    memset(canon + 12 + bl, 0, 1024 - bl);
    memset(canon + 1036 + il, 0, 1024 - il);
    memset(enc, 0x5A, sizeof(enc));
    ac_header_encode(enc, bl ? h.backing_file : (data[2067] & 1 ? NULL : ""), h.image_file,
                     h.size);
    FUZZ_CHECK(memcmp(enc, canon, sizeof(enc)) == 0, "encode is not the canonical header");

    struct ac_header h2;
    FUZZ_CHECK(ac_header_decode(enc, sizeof(enc), &h2) == AC_HDR_OK, "re-decode");
    FUZZ_CHECK(h2.version == h.version && h2.size == h.size &&
               memcmp(h2.backing_file, h.backing_file, 1024) == 0 &&
               memcmp(h2.image_file, h.image_file, 1024) == 0, "round trip differs");
    FUZZ_CHECK(ac_header_probe(enc, sizeof(enc)) == 1, "probe of an encoded header");

    /* The big-endian helpers agree with the reference. */
    unsigned char b8[8], b4[4];
    ac_put_be64(b8, h.size);
    FUZZ_CHECK(memcmp(b8, data + 2060, 8) == 0 && ac_get_be64(b8) == h.size, "be64");
    ac_put_be32(b4, (uint32_t)h.size);
    FUZZ_CHECK(ac_get_be32(b4) == (uint32_t)h.size && be(b4, 4) == (uint32_t)h.size, "be32");
    return 0;
}
