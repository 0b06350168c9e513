/*
 * test-codec.c: the add-cow v1 header codec (lib/codec.h) and the public
 * addcow_probe(), against golden bytes written by hand from FORMAT.md.
 *
 * The offsets and byte values below are spelled out literally (not taken
 * from codec.h) so that a wrong constant in the library cannot make its own
 * test pass.
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "addcow.h"
#include "codec.h"
#include "testutil.h"

/* FORMAT.md, "Header": 2068 bytes, big-endian, no padding. */
#define G_HDR      2068
#define G_VERSION  8
#define G_BACKING  12
#define G_IMAGE    1036
#define G_SIZE     2060
#define G_FIELD    1024

static const unsigned char g_magic[8] = { 0x41, 0x44, 0x44, 0x5F, 0x43, 0x4F, 0x57, 0xFF };
static const unsigned char g_version1[4] = { 0x00, 0x00, 0x00, 0x01 };
/* "base.raw" and "data.raw" in ASCII. */
static const unsigned char g_base_raw[8] = { 0x62, 0x61, 0x73, 0x65, 0x2E, 0x72, 0x61, 0x77 };
static const unsigned char g_data_raw[8] = { 0x64, 0x61, 0x74, 0x61, 0x2E, 0x72, 0x61, 0x77 };
/* 20480 = 0x5000 as a big-endian u64. */
static const unsigned char g_size_20480[8] = { 0, 0, 0, 0, 0, 0, 0x50, 0x00 };

/* A zeroed header with the magic and version 1. */
static void golden_start(unsigned char *h)
{
    memset(h, 0, G_HDR);
    memcpy(h, g_magic, 8);
    memcpy(h + G_VERSION, g_version1, 4);
}

static void golden_size(unsigned char *h, const unsigned char be[8])
{
    memcpy(h + G_SIZE, be, 8);
}

static void golden_path(unsigned char *h, int field_off, const char *s)
{
    memcpy(h + field_off, s, strlen(s));
}

/* A header with no backing file, image file `image` and size field be. */
static void golden_image_only(unsigned char *h, const char *image, const unsigned char be[8])
{
    golden_start(h);
    golden_path(h, G_IMAGE, image);
    golden_size(h, be);
}

/* Both paths as long as they can be (1023 bytes and the NUL), size 20480. */
static void golden_longest_paths(unsigned char *h)
{
    golden_start(h);
    memset(h + G_BACKING, 'b', 1023);   /* byte 12+1023 stays NUL */
    memset(h + G_IMAGE, 'i', 1023);     /* byte 1036+1023 stays NUL */
    golden_size(h, g_size_20480);
}

/* The header of v1/disk.add-cow, byte by byte. */
static void golden_v1(unsigned char *h)
{
    golden_start(h);
    memcpy(h + G_BACKING, g_base_raw, 8);
    memcpy(h + G_IMAGE, g_data_raw, 8);
    golden_size(h, g_size_20480);
}

/* A buffer of exactly len bytes (so that valgrind sees any read past it)
 * holding the first len bytes of src. */
static unsigned char *exact_copy(const unsigned char *src, size_t len)
{
    unsigned char *p = malloc(len ? len : 1);
    assert_non_null(p);
    memcpy(p, src, len);
    return p;
}

static void assert_fault(const unsigned char *buf, size_t len,
                         enum ac_header_fault want, int want_errno)
{
    struct ac_header h;
    enum ac_header_fault f = ac_header_decode(buf, len, &h);
    assert_int_equal(f, want);
    assert_int_equal(ac_header_fault_errno(f), want_errno);
    const char *s = ac_header_fault_str(f);
    assert_non_null(s);
    assert_true(s[0] != '\0');
}

/* ---- big-endian helpers ------------------------------------------------ */

static void test_be_helpers(void **state)
{
    (void)state;
    static const unsigned char b8[8] = { 0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF };
    static const unsigned char b4[4] = { 0xDE, 0xAD, 0xBE, 0xEF };
    unsigned char out[10];

    assert_true(ac_get_be64(b8) == UINT64_C(0x0123456789ABCDEF));
    assert_true(ac_get_be32(b4) == UINT32_C(0xDEADBEEF));
    assert_true(ac_get_be64(g_magic) == UINT64_C(0x4144445F434F57FF));
    assert_true(ac_get_be32(g_version1) == 1);

    memset(out, 0xAA, sizeof(out));
    ac_put_be64(out + 1, UINT64_C(0x0123456789ABCDEF));
    assert_memory_equal(out + 1, b8, 8);
    assert_int_equal(out[0], 0xAA);     /* nothing written around it */
    assert_int_equal(out[9], 0xAA);

    memset(out, 0xAA, sizeof(out));
    ac_put_be32(out + 1, UINT32_C(0xDEADBEEF));
    assert_memory_equal(out + 1, b4, 4);
    assert_int_equal(out[0], 0xAA);
    assert_int_equal(out[5], 0xAA);

    ac_put_be64(out, UINT64_MAX);
    for (int i = 0; i < 8; i++)
        assert_int_equal(out[i], 0xFF);
    ac_put_be64(out, UINT64_C(1) << 63);
    assert_int_equal(out[0], 0x80);
    for (int i = 1; i < 8; i++)
        assert_int_equal(out[i], 0);
}

/* ---- encode ------------------------------------------------------------ */

static void test_encode_golden_v1(void **state)
{
    (void)state;
    unsigned char want[G_HDR], got[G_HDR];

    golden_v1(want);
    memset(got, 0xCC, sizeof(got));     /* encode must overwrite every byte */
    ac_header_encode(got, "base.raw", "data.raw", 20480);
    assert_memory_equal(got, want, G_HDR);
}

static void test_encode_golden_matches_vector_file(void **state)
{
    (void)state;
    size_t len;
    unsigned char *file = tu_read_file(TEST_DATA_DIR "/vectors/v1/disk.add-cow", &len);
    assert_non_null(file);
    assert_true(len >= G_HDR);
    unsigned char want[G_HDR];
    golden_v1(want);
    /* The hand-made golden header is the vector's header too. */
    assert_memory_equal(file, want, G_HDR);
    free(file);
}

static void test_encode_no_backing(void **state)
{
    (void)state;
    unsigned char want[G_HDR], got[G_HDR];
    static const unsigned char size_be[8] = { 0, 0, 0, 0, 0, 0, 0x14, 0x00 };  /* 5120 */

    golden_image_only(want, "odd.raw", size_be);

    memset(got, 0x5A, sizeof(got));
    ac_header_encode(got, NULL, "odd.raw", 5120);
    assert_memory_equal(got, want, G_HDR);

    memset(got, 0x5A, sizeof(got));
    ac_header_encode(got, "", "odd.raw", 5120);
    assert_memory_equal(got, want, G_HDR);
}

static void test_encode_size_bytes(void **state)
{
    (void)state;
    static const struct {
        uint64_t v;
        unsigned char be[8];
    } cases[] = {
        { 0, { 0, 0, 0, 0, 0, 0, 0, 0 } },
        { 512, { 0, 0, 0, 0, 0, 0, 0x02, 0x00 } },
        { UINT64_C(0x0102030405060708), { 1, 2, 3, 4, 5, 6, 7, 8 } },
        { UINT64_C(0x7FFFFFFFFFFFFE00), { 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE, 0x00 } },
        { UINT64_MAX, { 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF } },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        unsigned char want[G_HDR], got[G_HDR];
        golden_image_only(want, "i", cases[i].be);
        ac_header_encode(got, NULL, "i", cases[i].v);
        assert_memory_equal(got, want, G_HDR);
    }
}

static void test_encode_longest_paths(void **state)
{
    (void)state;
    char back[1024], img[1024];
    unsigned char want[G_HDR], got[G_HDR];

    memset(back, 'b', 1023);
    back[1023] = '\0';
    memset(img, 'i', 1023);
    img[1023] = '\0';

    golden_longest_paths(want);

    memset(got, 0xEE, sizeof(got));
    ac_header_encode(got, back, img, 20480);
    assert_memory_equal(got, want, G_HDR);
    assert_int_equal(got[G_BACKING + 1023], 0);
    assert_int_equal(got[G_IMAGE + 1023], 0);
}

static void test_encode_writes_exactly_2068_bytes(void **state)
{
    (void)state;
    unsigned char buf[G_HDR + 64];

    memset(buf, 0xA5, sizeof(buf));
    ac_header_encode(buf, "base.raw", "data.raw", 20480);
    for (size_t i = G_HDR; i < sizeof(buf); i++)
        assert_int_equal(buf[i], 0xA5);

    /* And into a buffer of exactly 2068 bytes (valgrind checks the end). */
    unsigned char *exact = malloc(G_HDR);
    assert_non_null(exact);
    ac_header_encode(exact, "base.raw", "data.raw", 20480);
    assert_memory_equal(exact, buf, G_HDR);
    free(exact);
}

/* ---- decode: valid headers --------------------------------------------- */

static void test_decode_golden_v1(void **state)
{
    (void)state;
    unsigned char h[G_HDR];
    struct ac_header out;

    golden_v1(h);
    assert_int_equal(ac_header_decode(h, G_HDR, &out), AC_HDR_OK);
    assert_int_equal(ac_header_fault_errno(AC_HDR_OK), 0);
    assert_int_equal(out.version, 1);
    assert_string_equal(out.backing_file, "base.raw");
    assert_string_equal(out.image_file, "data.raw");
    assert_true(out.size == 20480);
}

static void test_decode_golden_no_backing(void **state)
{
    (void)state;
    unsigned char h[G_HDR];
    struct ac_header out;
    static const unsigned char size_be[8] = { 0, 0, 0, 0, 0, 0, 0x15, 0x2C };  /* 5420 */

    golden_image_only(h, "odd.raw", size_be);
    assert_int_equal(ac_header_decode(h, G_HDR, &out), AC_HDR_OK);
    assert_string_equal(out.backing_file, "");
    assert_string_equal(out.image_file, "odd.raw");
    assert_true(out.size == 5420);
}

static void test_decode_longest_paths(void **state)
{
    (void)state;
    unsigned char h[G_HDR];
    struct ac_header out;

    golden_longest_paths(h);
    assert_int_equal(ac_header_decode(h, G_HDR, &out), AC_HDR_OK);
    assert_int_equal(strlen(out.backing_file), 1023);
    assert_int_equal(strlen(out.image_file), 1023);
    for (int i = 0; i < 1023; i++) {
        assert_int_equal(out.backing_file[i], 'b');
        assert_int_equal(out.image_file[i], 'i');
    }
}

static void test_decode_longer_buffer(void **state)
{
    (void)state;
    unsigned char h[G_HDR + 100];
    struct ac_header out;

    golden_v1(h);
    memset(h + G_HDR, 0xFF, 100);       /* bitmap bytes and more: not header */
    assert_int_equal(ac_header_decode(h, sizeof(h), &out), AC_HDR_OK);
    assert_string_equal(out.image_file, "data.raw");
    assert_true(out.size == 20480);
}

static void test_decode_bytes_after_nul_ignored(void **state)
{
    (void)state;
    unsigned char h[G_HDR];
    struct ac_header out;

    golden_v1(h);
    /* Garbage after the terminating NUL, up to the last byte of each field. */
    memset(h + G_BACKING + 9, 'X', G_FIELD - 9);
    memset(h + G_IMAGE + 9, 'Y', G_FIELD - 9);
    assert_int_equal(ac_header_decode(h, G_HDR, &out), AC_HDR_OK);
    assert_string_equal(out.backing_file, "base.raw");
    assert_string_equal(out.image_file, "data.raw");
    assert_true(out.size == 20480);

    /* An empty backing field (first byte NUL) with garbage after it is
     * still "no backing file". */
    memset(h + G_BACKING + 1, 'Z', G_FIELD - 1);
    h[G_BACKING] = '\0';
    assert_int_equal(ac_header_decode(h, G_HDR, &out), AC_HDR_OK);
    assert_string_equal(out.backing_file, "");
    assert_string_equal(out.image_file, "data.raw");
}

/* Decodes the v1 header with the size field be, which must be accepted. */
static void decode_v1_with_size(const unsigned char be[8], struct ac_header *out)
{
    unsigned char h[G_HDR];
    golden_v1(h);
    golden_size(h, be);
    assert_int_equal(ac_header_decode(h, G_HDR, out), AC_HDR_OK);
}

static void test_decode_size_not_multiple_of_512(void **state)
{
    (void)state;
    struct ac_header out;
    static const unsigned char be[8] = { 0, 0, 0, 0, 0, 0, 0x01, 0xFF };   /* 511 */

    decode_v1_with_size(be, &out);
    assert_true(out.size == 511);   /* stored as is; geometry rounds down */
    assert_true(ac_sectors_for_size(out.size) == 0);
}

static void test_decode_size_2p63_minus_1_accepted(void **state)
{
    (void)state;
    struct ac_header out;
    static const unsigned char be[8] = { 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF };

    decode_v1_with_size(be, &out);
    assert_true(out.size == UINT64_C(0x7FFFFFFFFFFFFFFF));
    /* Rounded down to whole sectors: 2^63 - 512 bytes, 2^54 - 1 sectors. */
    assert_true(ac_sectors_for_size(out.size) == (UINT64_C(1) << 54) - 1);
}

static void test_decode_size_2p63_minus_512_accepted(void **state)
{
    (void)state;
    struct ac_header out;
    static const unsigned char be[8] = { 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE, 0x00 };

    decode_v1_with_size(be, &out);
    assert_true(out.size == UINT64_C(0x7FFFFFFFFFFFFE00));
}

/* ---- decode: the test vectors ----------------------------------------- */

static void test_decode_vector_v1(void **state)
{
    (void)state;
    size_t len;
    unsigned char *file = tu_read_file(TEST_DATA_DIR "/vectors/v1/disk.add-cow", &len);
    struct ac_header out;

    assert_non_null(file);
    assert_int_equal(ac_header_decode(file, len, &out), AC_HDR_OK);
    /* manifest.json: backing "base.raw", image "data.raw", size 20480. */
    assert_int_equal(out.version, 1);
    assert_string_equal(out.backing_file, "base.raw");
    assert_string_equal(out.image_file, "data.raw");
    assert_true(out.size == 20480);

    /* 40 sectors, 5 bitmap bytes, file 2068 + 5 long. */
    assert_true(ac_sectors_for_size(out.size) == 40);
    assert_true(ac_bitmap_bytes(40) == 5);
    assert_true(ac_file_length_for_size(out.size) == 2073);
    assert_int_equal(len, 2073);

    /* manifest note: bits 0,7,8,22,23,29,30,31,39, read with FORMAT.md's
     * rule (bitmap[n / 8] >> (n % 8)) & 1. */
    static const int want_bits[] = { 0, 7, 8, 22, 23, 29, 30, 31, 39 };
    int k = 0;
    for (int n = 0; n < 40; n++) {
        int bit = (file[2068 + n / 8] >> (n % 8)) & 1;
        int want = k < 9 && want_bits[k] == n;
        assert_int_equal(bit, want);
        if (want)
            k++;
    }
    assert_int_equal(ac_header_probe(file, len), 1);
    assert_int_equal(addcow_probe(file, len), 1);
    free(file);
}

static void test_decode_vector_v2_odd(void **state)
{
    (void)state;
    size_t len;
    unsigned char *file = tu_read_file(TEST_DATA_DIR "/vectors/v2/odd.add-cow", &len);
    struct ac_header out;

    assert_non_null(file);
    assert_int_equal(ac_header_decode(file, len, &out), AC_HDR_OK);
    assert_string_equal(out.backing_file, "");          /* manifest: null */
    assert_string_equal(out.image_file, "odd.raw");
    assert_true(out.size == 5420);                      /* stored size */
    assert_true(ac_sectors_for_size(out.size) == 10);   /* virtual 5120 */
    assert_true(ac_sectors_for_size(out.size) * 512 == 5120);
    assert_true(ac_bitmap_bytes(10) == 2);
    assert_true(ac_file_length_for_size(out.size) == 2070);
    assert_int_equal(len, 2070 + 30);                   /* 30 trailing bytes */
    assert_int_equal(addcow_probe(file, len), 1);
    free(file);
}

static void test_decode_vector_v3_chain(void **state)
{
    (void)state;
    size_t len;
    unsigned char *file = tu_read_file(TEST_DATA_DIR "/vectors/v3/c2.add-cow", &len);
    struct ac_header out;

    assert_non_null(file);
    assert_int_equal(ac_header_decode(file, len, &out), AC_HDR_OK);
    assert_string_equal(out.backing_file, "c1.add-cow");
    assert_string_equal(out.image_file, "c2.raw");
    assert_true(out.size == 4096);
    free(file);

    /* Raw files of the vectors are not add-cow headers. */
    file = tu_read_file(TEST_DATA_DIR "/vectors/v3/c0.raw", &len);
    assert_non_null(file);
    assert_int_equal(addcow_probe(file, len), 0);
    free(file);
}

/* ---- decode: malformed headers, one case per test ------------------------ */

static void test_bad_magic_zero(void **state)
{
    (void)state;
    unsigned char h[G_HDR];
    golden_v1(h);
    memset(h, 0, 8);
    assert_fault(h, G_HDR, AC_HDR_BAD_MAGIC, -EINVAL);
}

static void test_bad_magic_each_byte(void **state)
{
    (void)state;
    unsigned char h[G_HDR];
    for (int i = 0; i < 8; i++) {
        for (int bit = 0; bit < 8; bit++) {
            golden_v1(h);
            h[i] ^= (unsigned char)(1u << bit);
            assert_fault(h, G_HDR, AC_HDR_BAD_MAGIC, -EINVAL);
            assert_int_equal(addcow_probe(h, G_HDR), 0);
        }
    }
}

static void test_bad_magic_qcow(void **state)
{
    (void)state;
    unsigned char h[G_HDR];
    golden_v1(h);
    /* "ADD_COW" then NUL instead of 0xFF, and a qcow2 magic. */
    h[7] = 0x00;
    assert_fault(h, G_HDR, AC_HDR_BAD_MAGIC, -EINVAL);
    static const unsigned char qfi[8] = { 'Q', 'F', 'I', 0xFB, 0, 0, 0, 3 };
    memcpy(h, qfi, 8);
    assert_fault(h, G_HDR, AC_HDR_BAD_MAGIC, -EINVAL);
}

static void test_bad_magic_little_endian(void **state)
{
    (void)state;
    unsigned char h[G_HDR];
    golden_v1(h);
    for (int i = 0; i < 8; i++)
        h[i] = g_magic[7 - i];
    assert_fault(h, G_HDR, AC_HDR_BAD_MAGIC, -EINVAL);
}

static void check_version(const unsigned char be[4])
{
    unsigned char h[G_HDR];
    golden_v1(h);
    memcpy(h + G_VERSION, be, 4);
    assert_fault(h, G_HDR, AC_HDR_BAD_VERSION, -ENOTSUP);
    assert_int_equal(ac_header_probe(h, G_HDR), 0);
    assert_int_equal(addcow_probe(h, G_HDR), 0);
}

static void test_bad_version_0(void **state)
{
    (void)state;
    static const unsigned char v[4] = { 0, 0, 0, 0 };
    check_version(v);
}

static void test_bad_version_2(void **state)
{
    (void)state;
    static const unsigned char v[4] = { 0, 0, 0, 2 };
    check_version(v);
}

static void test_bad_version_max(void **state)
{
    (void)state;
    static const unsigned char v[4] = { 0xFF, 0xFF, 0xFF, 0xFF };
    check_version(v);
}

static void test_bad_version_little_endian_1(void **state)
{
    (void)state;
    /* 1 stored little-endian is 0x01000000 big-endian: not version 1. */
    static const unsigned char v[4] = { 1, 0, 0, 0 };
    check_version(v);
}

static void test_short_buffers(void **state)
{
    (void)state;
    static const size_t lens[] = { 1, 7, 8, 11, 12, 13, 1036, 2059, 2060, 2067 };
    unsigned char h[G_HDR];
    golden_v1(h);
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        unsigned char *p = exact_copy(h, lens[i]);
        assert_fault(p, lens[i], AC_HDR_SHORT, -EINVAL);
        free(p);
        /* The length decides, even with a whole valid header there. */
        assert_fault(h, lens[i], AC_HDR_SHORT, -EINVAL);
    }
}

static void test_short_2067(void **state)
{
    (void)state;
    unsigned char h[G_HDR];
    golden_v1(h);
    unsigned char *p = exact_copy(h, 2067);
    assert_fault(p, 2067, AC_HDR_SHORT, -EINVAL);
    free(p);
    /* One more byte and it is valid. */
    p = exact_copy(h, 2068);
    assert_fault(p, 2068, AC_HDR_OK, 0);
    free(p);
}

static void test_empty_buffer(void **state)
{
    (void)state;
    unsigned char h[G_HDR];
    golden_v1(h);
    assert_fault(h, 0, AC_HDR_SHORT, -EINVAL);
    unsigned char *p = exact_copy(h, 0);
    assert_fault(p, 0, AC_HDR_SHORT, -EINVAL);
    free(p);
}

static void test_null_buffer(void **state)
{
    (void)state;
    struct ac_header out;
    assert_int_equal(ac_header_decode(NULL, 0, &out), AC_HDR_SHORT);
    assert_int_equal(ac_header_decode(NULL, G_HDR, &out), AC_HDR_SHORT);
}

static void test_backing_no_nul(void **state)
{
    (void)state;
    unsigned char h[G_HDR];
    golden_v1(h);
    memset(h + G_BACKING, 'b', G_FIELD);    /* 1024 bytes, none NUL */
    assert_fault(h, G_HDR, AC_HDR_BACKING_NO_NUL, -EINVAL);
}

static void test_backing_nul_only_in_last_byte(void **state)
{
    (void)state;
    unsigned char h[G_HDR];
    golden_v1(h);
    memset(h + G_BACKING, 'b', G_FIELD - 1);
    h[G_BACKING + G_FIELD - 1] = '\0';      /* 1023 bytes + NUL: valid */
    assert_fault(h, G_HDR, AC_HDR_OK, 0);
}

static void test_image_no_nul(void **state)
{
    (void)state;
    unsigned char h[G_HDR];
    golden_v1(h);
    memset(h + G_IMAGE, 'i', G_FIELD);
    /* The size field right after starts with NUL bytes: a decoder that
     * looks past the field would wrongly find a terminator there. */
    assert_int_equal(h[G_SIZE], 0);
    assert_fault(h, G_HDR, AC_HDR_IMAGE_NO_NUL, -EINVAL);
}

static void test_image_nul_only_in_last_byte(void **state)
{
    (void)state;
    unsigned char h[G_HDR];
    struct ac_header out;
    golden_v1(h);
    memset(h + G_IMAGE, 'i', G_FIELD - 1);
    h[G_IMAGE + G_FIELD - 1] = '\0';
    assert_int_equal(ac_header_decode(h, G_HDR, &out), AC_HDR_OK);
    assert_int_equal(strlen(out.image_file), 1023);
}

static void test_image_empty(void **state)
{
    (void)state;
    unsigned char h[G_HDR];
    golden_v1(h);
    memset(h + G_IMAGE, 0, G_FIELD);
    assert_fault(h, G_HDR, AC_HDR_IMAGE_EMPTY, -EINVAL);
}

static void test_image_empty_with_garbage(void **state)
{
    (void)state;
    unsigned char h[G_HDR];
    golden_v1(h);
    /* First byte NUL: empty, whatever follows. */
    h[G_IMAGE] = '\0';
    assert_fault(h, G_HDR, AC_HDR_IMAGE_EMPTY, -EINVAL);
}

static void check_size_too_big(const unsigned char be[8])
{
    unsigned char h[G_HDR];
    golden_v1(h);
    golden_size(h, be);
    assert_fault(h, G_HDR, AC_HDR_SIZE_TOO_BIG, -EFBIG);
}

static void test_size_2p63(void **state)
{
    (void)state;
    static const unsigned char be[8] = { 0x80, 0, 0, 0, 0, 0, 0, 0 };
    check_size_too_big(be);
}

static void test_size_2p64_minus_1(void **state)
{
    (void)state;
    static const unsigned char be[8] = { 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF };
    check_size_too_big(be);
}

static void test_size_2p63_plus_512(void **state)
{
    (void)state;
    static const unsigned char be[8] = { 0x80, 0, 0, 0, 0, 0, 0x02, 0x00 };
    check_size_too_big(be);
}

static void test_fault_strings(void **state)
{
    (void)state;
    static const enum ac_header_fault all[] = {
        AC_HDR_OK, AC_HDR_SHORT, AC_HDR_BAD_MAGIC, AC_HDR_BAD_VERSION,
        AC_HDR_BACKING_NO_NUL, AC_HDR_IMAGE_NO_NUL, AC_HDR_IMAGE_EMPTY,
        AC_HDR_SIZE_TOO_BIG,
    };
    static const int want_errno[] = {
        0, -EINVAL, -EINVAL, -ENOTSUP, -EINVAL, -EINVAL, -EINVAL, -EFBIG,
    };
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        const char *s = ac_header_fault_str(all[i]);
        assert_non_null(s);
        assert_true(strlen(s) > 0);
        assert_int_equal(ac_header_fault_errno(all[i]), want_errno[i]);
        /* Every fault has its own sentence. */
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(s, ac_header_fault_str(all[j]));
    }
}

/* ---- probe ------------------------------------------------------------- */

static void test_probe_null(void **state)
{
    (void)state;
    assert_int_equal(addcow_probe(NULL, 0), 0);
    assert_int_equal(addcow_probe(NULL, 12), 0);
    assert_int_equal(addcow_probe(NULL, G_HDR), 0);
    assert_int_equal(ac_header_probe(NULL, G_HDR), 0);
}

static void test_probe_short(void **state)
{
    (void)state;
    unsigned char h[G_HDR];
    golden_v1(h);
    for (size_t len = 0; len < 12; len++) {
        unsigned char *p = exact_copy(h, len);
        assert_int_equal(addcow_probe(p, len), 0);
        assert_int_equal(ac_header_probe(p, len), 0);
        free(p);
        /* The same, with the rest of a valid header right after: the
         * length, not the bytes, must decide. */
        assert_int_equal(addcow_probe(h, len), 0);
        assert_int_equal(ac_header_probe(h, len), 0);
    }
}

static void test_probe_12_bytes_enough(void **state)
{
    (void)state;
    unsigned char h[G_HDR];
    golden_v1(h);
    unsigned char *p = exact_copy(h, 12);
    assert_int_equal(addcow_probe(p, 12), 1);
    assert_int_equal(ac_header_probe(p, 12), 1);
    free(p);
}

static void test_probe_full_and_corrupt_rest(void **state)
{
    (void)state;
    unsigned char h[G_HDR];
    golden_v1(h);
    assert_int_equal(addcow_probe(h, G_HDR), 1);
    /* Probe only looks at magic and version: a header whose later fields
     * are corrupt still probes as add-cow (open then reports the fault). */
    memset(h + G_IMAGE, 0, G_FIELD);
    assert_int_equal(addcow_probe(h, G_HDR), 1);
}

static void test_probe_wrong_version(void **state)
{
    (void)state;
    unsigned char h[G_HDR];
    golden_v1(h);
    h[G_VERSION + 3] = 2;
    assert_int_equal(addcow_probe(h, G_HDR), 0);
    assert_int_equal(addcow_probe(h, 12), 0);
    h[G_VERSION + 3] = 0;
    assert_int_equal(addcow_probe(h, G_HDR), 0);
}

static void test_probe_wrong_magic(void **state)
{
    (void)state;
    unsigned char h[G_HDR];
    golden_v1(h);
    h[0] = 'a';
    assert_int_equal(addcow_probe(h, G_HDR), 0);
    memset(h, 0, sizeof(h));
    assert_int_equal(addcow_probe(h, G_HDR), 0);
}

/* ---- geometry ----------------------------------------------------------- */

static void test_geometry(void **state)
{
    (void)state;
    static const struct {
        uint64_t size, sectors, bytes, file_len;
    } cases[] = {
        { 0, 0, 0, 2068 },
        { 1, 0, 0, 2068 },
        { 511, 0, 0, 2068 },
        { 512, 1, 1, 2069 },
        { 1023, 1, 1, 2069 },
        { 4096, 8, 1, 2069 },
        { 4096 + 512, 9, 2, 2070 },
        { 5420, 10, 2, 2070 },
        { 8 * 512 * 2, 16, 2, 2070 },
        { 4097 * 512, 4097, 513, 2068 + 513 },
        { 4097 * 512 + 511, 4097, 513, 2068 + 513 },
        { UINT64_C(1) << 40, UINT64_C(1) << 31, UINT64_C(1) << 28,
          2068 + (UINT64_C(1) << 28) },
        { UINT64_C(0x7FFFFFFFFFFFFE00), (UINT64_C(1) << 54) - 1, UINT64_C(1) << 51,
          2068 + (UINT64_C(1) << 51) },
        { UINT64_C(0x7FFFFFFFFFFFFFFF), (UINT64_C(1) << 54) - 1, UINT64_C(1) << 51,
          2068 + (UINT64_C(1) << 51) },
        { UINT64_MAX, (UINT64_C(1) << 55) - 1, UINT64_C(1) << 52,
          2068 + (UINT64_C(1) << 52) },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_true(ac_sectors_for_size(cases[i].size) == cases[i].sectors);
        assert_true(ac_bitmap_bytes(cases[i].sectors) == cases[i].bytes);
        assert_true(ac_file_length_for_size(cases[i].size) == cases[i].file_len);
    }
}

static void test_bitmap_bytes_small_and_huge(void **state)
{
    (void)state;
    /* ceil(S / 8) for every small S, from its definition. */
    for (uint64_t s = 0; s < 100; s++) {
        uint64_t want = 0;
        while (want * 8 < s)
            want++;
        assert_true(ac_bitmap_bytes(s) == want);
    }
    /* No overflow at the top of the range. */
    assert_true(ac_bitmap_bytes(UINT64_MAX) == UINT64_C(1) << 61);
    assert_true(ac_bitmap_bytes(UINT64_MAX - 7) == (UINT64_C(1) << 61) - 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_be_helpers),
        cmocka_unit_test(test_encode_golden_v1),
        cmocka_unit_test(test_encode_golden_matches_vector_file),
        cmocka_unit_test(test_encode_no_backing),
        cmocka_unit_test(test_encode_size_bytes),
        cmocka_unit_test(test_encode_longest_paths),
        cmocka_unit_test(test_encode_writes_exactly_2068_bytes),
        cmocka_unit_test(test_decode_golden_v1),
        cmocka_unit_test(test_decode_golden_no_backing),
        cmocka_unit_test(test_decode_longest_paths),
        cmocka_unit_test(test_decode_longer_buffer),
        cmocka_unit_test(test_decode_bytes_after_nul_ignored),
        cmocka_unit_test(test_decode_size_not_multiple_of_512),
        cmocka_unit_test(test_decode_size_2p63_minus_1_accepted),
        cmocka_unit_test(test_decode_size_2p63_minus_512_accepted),
        cmocka_unit_test(test_decode_vector_v1),
        cmocka_unit_test(test_decode_vector_v2_odd),
        cmocka_unit_test(test_decode_vector_v3_chain),
        cmocka_unit_test(test_bad_magic_zero),
        cmocka_unit_test(test_bad_magic_each_byte),
        cmocka_unit_test(test_bad_magic_qcow),
        cmocka_unit_test(test_bad_magic_little_endian),
        cmocka_unit_test(test_bad_version_0),
        cmocka_unit_test(test_bad_version_2),
        cmocka_unit_test(test_bad_version_max),
        cmocka_unit_test(test_bad_version_little_endian_1),
        cmocka_unit_test(test_short_buffers),
        cmocka_unit_test(test_short_2067),
        cmocka_unit_test(test_empty_buffer),
        cmocka_unit_test(test_null_buffer),
        cmocka_unit_test(test_backing_no_nul),
        cmocka_unit_test(test_backing_nul_only_in_last_byte),
        cmocka_unit_test(test_image_no_nul),
        cmocka_unit_test(test_image_nul_only_in_last_byte),
        cmocka_unit_test(test_image_empty),
        cmocka_unit_test(test_image_empty_with_garbage),
        cmocka_unit_test(test_size_2p63),
        cmocka_unit_test(test_size_2p64_minus_1),
        cmocka_unit_test(test_size_2p63_plus_512),
        cmocka_unit_test(test_fault_strings),
        cmocka_unit_test(test_probe_null),
        cmocka_unit_test(test_probe_short),
        cmocka_unit_test(test_probe_12_bytes_enough),
        cmocka_unit_test(test_probe_full_and_corrupt_rest),
        cmocka_unit_test(test_probe_wrong_version),
        cmocka_unit_test(test_probe_wrong_magic),
        cmocka_unit_test(test_geometry),
        cmocka_unit_test(test_bitmap_bytes_small_and_huge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
