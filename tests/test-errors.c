/*
 * test-errors.c: every bad input to the public API gets a specific negative
 * errno and a message that starts with the public call's name and names the
 * file (or the value) involved; nothing crashes.
 *
 * Corrupt add-cow files are written byte by byte, from explicit header
 * fields (FORMAT.md), by testutil's tu_build_header(): independently of the
 * library's own encoder.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include "addcow.h"
#include "testutil.h"

/* S(): a string that lives until the end of the program. */
#define S tu_str

/* ---- checking errors ----------------------------------------------------- */

/* Leaves a message that no checked call produces, so that a stale message
 * from an earlier call cannot pass for the one under test. */
static void reset_error(void)
{
    (void)addcow_options_set(NULL, "reset", "reset");
}

/* True if msg contains one of the '|'-separated alternatives of needles. */
static bool contains_any(const char *msg, const char *needles)
{
    if (needles == NULL)
        return true;
    char *copy = strdup(needles), *save = NULL;
    bool found = false;
    assert_non_null(copy);
    for (char *t = strtok_r(copy, "|", &save); t != NULL && !found;
         t = strtok_r(NULL, "|", &save))
        found = strstr(msg, t) != NULL;
    free(copy);
    return found;
}

static void check_msg(const char *call, const char *needles, const char *what,
                      const char *file, int line)
{
    const char *msg = addcow_last_error();
    size_t n = strlen(call);
    if (msg == NULL) {
        print_error("%s:%d: %s: addcow_last_error() returned NULL\n", file, line, what);
        fail();
    }
    if (strncmp(msg, call, n) != 0 || msg[n] != ':' || !contains_any(msg, needles)) {
        print_error("%s:%d: %s: message \"%s\" should start with \"%s:\" and contain "
                    "\"%s\"\n", file, line, what, msg, call, needles ? needles : "");
        fail();
    }
}

static void check_error(int64_t r, int err, const char *call, const char *needles,
                        const char *what, const char *file, int line)
{
    if (r != -(int64_t)err) {
        print_error("%s:%d: %s returned %" PRId64 " (%s), expected -%d (%s); message \"%s\"\n",
                    file, line, what, r, r < 0 && r > -4096 ? strerror((int)-r) : "-",
                    err, strerror(err), addcow_last_error());
        fail();
    }
    check_msg(call, needles, what, file, line);
}

/* EXPECT_ERR(call, errno, needles, expr): expr fails with -errno and the
 * message starts with "call:" and contains one of needles ('|'-separated;
 * NULL: any). */
#define EXPECT_ERR(call, err, needles, expr)                                      \
    do {                                                                          \
        reset_error();                                                            \
        int64_t r_ = (int64_t)(expr);                                             \
        check_error(r_, (err), (call), (needles), #expr, __FILE__, __LINE__);     \
    } while (0)

/* For the calls that return a pointer: NULL and a message. */
#define EXPECT_NULL(call, needles, expr)                                          \
    do {                                                                          \
        reset_error();                                                            \
        const void *p_ = (expr);                                                  \
        if (p_ != NULL) {                                                         \
            print_error("%s:%d: %s should return NULL\n", __FILE__, __LINE__, #expr); \
            fail();                                                               \
        }                                                                         \
        check_msg((call), (needles), #expr, __FILE__, __LINE__);                  \
    } while (0)

#define EXPECT_OPEN_ERR(err, needles, path, flags, opts)                          \
    do {                                                                          \
        addcow_image *img_ = NULL;                                                \
        EXPECT_ERR("addcow_open", (err), (needles),                               \
                   addcow_open((path), (flags), (opts), &img_));                  \
        assert_null(img_);                                                        \
    } while (0)

/* The same refusal for a read-only and for a read-write open. */
#define EXPECT_OPEN_ERR_BOTH(err, needles, path, opts)                            \
    do {                                                                          \
        EXPECT_OPEN_ERR((err), (needles), (path), ADDCOW_OPEN_RDONLY, (opts));    \
        EXPECT_OPEN_ERR((err), (needles), (path), ADDCOW_OPEN_RDWR, (opts));      \
    } while (0)

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A valid 8 KiB image with no backing file in its own folder; returns the
 * add-cow path. */
static const char *simple_image(const char *name)
{
    const char *d = tu_subdir(name);
    const char *p = S("%s/x.add-cow", d);
    tu_make_raw(S("%s/x.raw", d), 8192, 1);
    tu_make_addcow(p, NULL, "x.raw", 8192);
    return p;
}

/* ---- corrupt headers ----------------------------------------------------- */

static void test_bad_magic(void **state)
{
    (void)state;
    const char *d = tu_subdir("magic");
    const char *p = S("%s/m.add-cow", d);
    unsigned char h[TU_HDR_SIZE];
    tu_make_raw(S("%s/m.raw", d), 4096, 1);

    const uint64_t bad[] = { TU_MAGIC ^ 1, TU_MAGIC ^ (UINT64_C(1) << 63), 0,
                             UINT64_C(0x514649FB00000003) /* a qcow2 file */,
                             UINT64_C(0xFF574F435F444441) /* little-endian */ };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        tu_build_header(h, bad[i], 1, NULL, "m.raw", 4096);
        tu_write_addcow(p, h, TU_HDR_SIZE, 1);
        EXPECT_OPEN_ERR_BOTH(EINVAL, p, p, NULL);
    }
    /* The same file with the right magic opens. */
    tu_build_header(h, TU_MAGIC, 1, NULL, "m.raw", 4096);
    tu_write_addcow(p, h, TU_HDR_SIZE, 1);
    assert_int_equal(addcow_close(tu_open_ok(p, ADDCOW_OPEN_RDONLY, NULL)), 0);
}

static void test_bad_version(void **state)
{
    (void)state;
    const char *d = tu_subdir("version");
    const char *p = S("%s/v.add-cow", d);
    unsigned char h[TU_HDR_SIZE];
    tu_make_raw(S("%s/v.raw", d), 4096, 1);

    const uint32_t bad[] = { 0, 2, 3, 0x100, 0x01000000, UINT32_MAX };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        tu_build_header(h, TU_MAGIC, bad[i], NULL, "v.raw", 4096);
        tu_write_addcow(p, h, TU_HDR_SIZE, 1);
        EXPECT_OPEN_ERR_BOTH(ENOTSUP, p, p, NULL);
    }
    tu_build_header(h, TU_MAGIC, 1, NULL, "v.raw", 4096);
    tu_write_addcow(p, h, TU_HDR_SIZE, 1);
    assert_int_equal(addcow_close(tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL)), 0);
}

static void test_short_header(void **state)
{
    (void)state;
    const char *d = tu_subdir("short");
    const char *p = S("%s/s.add-cow", d);
    unsigned char h[TU_HDR_SIZE];
    tu_make_raw(S("%s/s.raw", d), 0, 1);
    /* size 0: no bitmap, so exactly 2068 bytes is a complete image. */
    tu_build_header(h, TU_MAGIC, 1, NULL, "s.raw", 0);

    const size_t lens[] = { 1, 8, 12, 1036, 2060, 2067 };
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        tu_write_addcow(p, h, lens[i], 0);
        assert_int_equal(tu_file_size(p), (int64_t)lens[i]);
        EXPECT_OPEN_ERR_BOTH(EINVAL, p, p, NULL);
    }
    tu_write_addcow(p, h, TU_HDR_SIZE, 0);
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDONLY, NULL);
    assert_int_equal(addcow_get_size(img), 0);
    assert_int_equal(addcow_close(img), 0);
}

static void test_empty_file(void **state)
{
    (void)state;
    const char *d = tu_subdir("empty");
    const char *p = S("%s/e.add-cow", d);
    assert_int_equal(tu_write_file(p, "", 0), 0);
    EXPECT_OPEN_ERR_BOTH(EINVAL, p, p, NULL);
    /* Nothing was written into it. */
    assert_int_equal(tu_file_size(p), 0);
}

static void test_truncated_bitmap(void **state)
{
    (void)state;
    const char *d = tu_subdir("bitmap");
    const char *p = S("%s/b.add-cow", d);
    unsigned char h[TU_HDR_SIZE];
    tu_make_raw(S("%s/b.raw", d), 0, 1);

    /* 1 MiB = 2048 sectors: 256 bitmap bytes. */
    tu_build_header(h, TU_MAGIC, 1, NULL, "b.raw", 1 << 20);
    tu_write_addcow(p, h, TU_HDR_SIZE, 0);
    EXPECT_OPEN_ERR(EINVAL, p, p, ADDCOW_OPEN_RDONLY, NULL);
    tu_write_addcow(p, h, TU_HDR_SIZE, 255);
    EXPECT_OPEN_ERR_BOTH(EINVAL, p, p, NULL);
    tu_write_addcow(p, h, TU_HDR_SIZE, 256);
    assert_int_equal(addcow_close(tu_open_ok(p, ADDCOW_OPEN_RDONLY, NULL)), 0);
    /* Longer is accepted (bytes past the bitmap are ignored). */
    tu_write_addcow(p, h, TU_HDR_SIZE, 300);
    assert_int_equal(addcow_close(tu_open_ok(p, ADDCOW_OPEN_RDONLY, NULL)), 0);

    /* 9 sectors: the ninth needs a second byte. */
    tu_build_header(h, TU_MAGIC, 1, NULL, "b.raw", 9 * 512);
    tu_write_addcow(p, h, TU_HDR_SIZE, 1);
    EXPECT_OPEN_ERR(EINVAL, p, p, ADDCOW_OPEN_RDONLY, NULL);
    tu_write_addcow(p, h, TU_HDR_SIZE, 2);
    assert_int_equal(addcow_close(tu_open_ok(p, ADDCOW_OPEN_RDONLY, NULL)), 0);
}

/* A huge size with a tiny file must be refused from the file length alone,
 * before any bitmap is allocated or read. */
static void test_huge_size_tiny_file(void **state)
{
    (void)state;
    const char *d = tu_subdir("huge");
    const char *p = S("%s/h.add-cow", d);
    unsigned char h[TU_HDR_SIZE];
    tu_make_raw(S("%s/h.raw", d), 0, 1);

    const uint64_t sizes[] = { UINT64_C(1) << 62, (UINT64_C(1) << 62) + 512,
                               UINT64_C(0x7FFFFFFFFFFFFE00) /* the largest valid */ };
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        for (uint64_t blen = 0; blen <= 1000; blen += 1000) {
            tu_build_header(h, TU_MAGIC, 1, NULL, "h.raw", sizes[i]);
            tu_write_addcow(p, h, TU_HDR_SIZE, blen);
            double t0 = now();
            EXPECT_OPEN_ERR_BOTH(EINVAL, p, p, NULL);
            double dt = now() - t0;
            if (dt >= 0.5) {
                print_error("opening a %" PRIu64 "-byte image with a tiny file took %.3f s\n",
                            sizes[i], dt);
                fail();
            }
        }
    }
}

static void test_path_without_nul(void **state)
{
    (void)state;
    const char *d = tu_subdir("nonul");
    const char *p = S("%s/n.add-cow", d);
    unsigned char h[TU_HDR_SIZE];
    tu_make_raw(S("%s/n.raw", d), 4096, 1);
    tu_make_raw(S("%s/base.raw", d), 4096, 2);

    /* backing_file: 1024 bytes, no NUL. */
    tu_build_header(h, TU_MAGIC, 1, NULL, "n.raw", 4096);
    memset(h + TU_OFF_BACKING, 'b', TU_PATH_FIELD);
    tu_write_addcow(p, h, TU_HDR_SIZE, 1);
    EXPECT_OPEN_ERR_BOTH(EINVAL, p, p, NULL);

    /* image_file: 1024 bytes, no NUL (the size field follows it). */
    tu_build_header(h, TU_MAGIC, 1, "base.raw", "n.raw", 4096);
    memset(h + TU_OFF_IMAGE, 'i', TU_PATH_FIELD);
    tu_write_addcow(p, h, TU_HDR_SIZE, 1);
    EXPECT_OPEN_ERR_BOTH(EINVAL, p, p, NULL);

    /* A NUL as the very last byte of each field is fine; junk after the
     * first NUL is ignored. */
    tu_build_header(h, TU_MAGIC, 1, "base.raw", "n.raw", 4096);
    memset(h + TU_OFF_BACKING + 9, 'x', TU_PATH_FIELD - 10);
    memset(h + TU_OFF_IMAGE + 6, 'y', TU_PATH_FIELD - 7);
    tu_write_addcow(p, h, TU_HDR_SIZE, 1);
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDONLY, NULL);
    assert_string_equal(addcow_get_backing_file(img), "base.raw");
    assert_string_equal(addcow_get_image_file(img), "n.raw");
    assert_int_equal(addcow_close(img), 0);
}

static void test_empty_image_file(void **state)
{
    (void)state;
    const char *d = tu_subdir("noimage");
    const char *p = S("%s/e.add-cow", d);
    unsigned char h[TU_HDR_SIZE];
    tu_make_raw(S("%s/base.raw", d), 4096, 2);

    tu_build_header(h, TU_MAGIC, 1, "base.raw", "", 4096);
    tu_write_addcow(p, h, TU_HDR_SIZE, 1);
    EXPECT_OPEN_ERR_BOTH(EINVAL, p, p, NULL);
    tu_build_header(h, TU_MAGIC, 1, NULL, "", 4096);
    tu_write_addcow(p, h, TU_HDR_SIZE, 1);
    EXPECT_OPEN_ERR(EINVAL, p, p, ADDCOW_OPEN_RDONLY, NULL);
}

/* ---- missing files: the message names the resolved path ---------------- */

static void test_missing_image_file(void **state)
{
    (void)state;
    /* As in the contract's example: <scratch>/sub/m.add-cow stores
     * "missing.raw", the message names <scratch>/sub/missing.raw. */
    const char *d = tu_subdir("sub");
    const char *p = S("%s/m.add-cow", d);

    tu_make_addcow(p, NULL, "missing.raw", 4096);
    EXPECT_OPEN_ERR_BOTH(ENOENT, S("%s/missing.raw", d), p, NULL);
    /* Also under a further folder. */
    tu_make_addcow(p, NULL, "deeper/missing.raw", 4096);
    EXPECT_OPEN_ERR(ENOENT, S("%s/deeper/missing.raw", d), p, ADDCOW_OPEN_RDWR, NULL);
    /* An absolute stored path stays as it is. */
    tu_make_addcow(p, NULL, S("%s/abs-missing.raw", tu_scratch()), 4096);
    EXPECT_OPEN_ERR(ENOENT, S("'%s/abs-missing.raw'", tu_scratch()), p,
                    ADDCOW_OPEN_RDONLY, NULL);
}

static void test_missing_backing_file(void **state)
{
    (void)state;
    tu_subdir("nobacking");
    const char *d = tu_subdir("nobacking/sub");
    const char *p = S("%s/m.add-cow", d);
    tu_make_raw(S("%s/m.raw", d), 4096, 1);

    tu_make_addcow(p, "missing-base.raw", "m.raw", 4096);
    EXPECT_OPEN_ERR_BOTH(ENOENT, S("%s/missing-base.raw", d), p, NULL);
    tu_make_addcow(p, "../missing-base.raw", "m.raw", 4096);
    EXPECT_OPEN_ERR(ENOENT, S("%s/../missing-base.raw|%s/nobacking/missing-base.raw", d,
                              tu_scratch()), p, ADDCOW_OPEN_RDONLY, NULL);
}

static void test_size_too_big(void **state)
{
    (void)state;
    const char *d = tu_subdir("toobig");
    const char *p = S("%s/t.add-cow", d);
    unsigned char h[TU_HDR_SIZE];
    tu_make_raw(S("%s/t.raw", d), 0, 1);

    const uint64_t sizes[] = { UINT64_C(1) << 63, (UINT64_C(1) << 63) + 512, UINT64_MAX };
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        tu_build_header(h, TU_MAGIC, 1, NULL, "t.raw", sizes[i]);
        tu_write_addcow(p, h, TU_HDR_SIZE, 4096);
        EXPECT_OPEN_ERR_BOTH(EFBIG, p, p, NULL);
    }
    /* 2^63 - 512 is the largest valid size: refused for its bitmap, not
     * for the size. */
    tu_build_header(h, TU_MAGIC, 1, NULL, "t.raw", UINT64_C(0x7FFFFFFFFFFFFE00));
    tu_write_addcow(p, h, TU_HDR_SIZE, 4096);
    EXPECT_OPEN_ERR(EINVAL, p, p, ADDCOW_OPEN_RDONLY, NULL);
}

/* ---- loops and identities -------------------------------------------------- */

static void test_backing_is_self(void **state)
{
    (void)state;
    const char *d = tu_subdir("self");
    const char *p = S("%s/a.add-cow", d);
    tu_make_raw(S("%s/a.raw", d), 4096, 1);

    tu_make_addcow(p, "a.add-cow", "a.raw", 4096);
    EXPECT_OPEN_ERR_BOTH(ELOOP, p, p, NULL);
    tu_make_addcow(p, p, "a.raw", 4096);    /* absolute */
    EXPECT_OPEN_ERR(ELOOP, p, p, ADDCOW_OPEN_RDWR, NULL);
    tu_make_addcow(p, "./a.add-cow", "a.raw", 4096);
    EXPECT_OPEN_ERR(ELOOP, p, p, ADDCOW_OPEN_RDONLY, NULL);
    addcow_options *o = tu_options1("locking", "off");
    EXPECT_OPEN_ERR(ELOOP, p, p, ADDCOW_OPEN_RDWR, o);
    addcow_options_free(o);
}

static void test_chain_loop(void **state)
{
    (void)state;
    const char *d = tu_subdir("loop");
    const char *a = S("%s/a.add-cow", d), *b = S("%s/b.add-cow", d);
    tu_make_raw(S("%s/a.raw", d), 4096, 1);
    tu_make_raw(S("%s/b.raw", d), 4096, 2);
    tu_make_addcow(a, "b.add-cow", "a.raw", 4096);
    tu_make_addcow(b, "a.add-cow", "b.raw", 4096);

    addcow_options *off = tu_options1("locking", "off");
    addcow_options *on = tu_options1("locking", "on");
    const addcow_options *all[] = { NULL, on, off };
    for (size_t i = 0; i < 3; i++) {
        EXPECT_OPEN_ERR(ELOOP, "a.add-cow", a, ADDCOW_OPEN_RDONLY, all[i]);
        EXPECT_OPEN_ERR(ELOOP, "a.add-cow", a, ADDCOW_OPEN_RDWR, all[i]);
        EXPECT_OPEN_ERR(ELOOP, "b.add-cow", b, ADDCOW_OPEN_RDWR, all[i]);
    }
    /* A longer loop: a -> b -> c -> a. */
    const char *c = S("%s/c.add-cow", d);
    tu_make_raw(S("%s/c.raw", d), 4096, 3);
    tu_make_addcow(b, "c.add-cow", "b.raw", 4096);
    tu_make_addcow(c, "a.add-cow", "c.raw", 4096);
    EXPECT_OPEN_ERR(ELOOP, "a.add-cow", a, ADDCOW_OPEN_RDWR, NULL);
    EXPECT_OPEN_ERR(ELOOP, "a.add-cow", a, ADDCOW_OPEN_RDWR, off);
    /* Broken, the chain opens. */
    tu_make_addcow(c, NULL, "c.raw", 4096);
    assert_int_equal(addcow_close(tu_open_ok(a, ADDCOW_OPEN_RDWR, NULL)), 0);
    addcow_options_free(on);
    addcow_options_free(off);
}

/* 16 add-cow images in a chain open; a 17th on top fails with -ELOOP. */
static void test_chain_depth(void **state)
{
    (void)state;
    const char *d = tu_subdir("depth");
    unsigned char h[TU_HDR_SIZE], sector[512], buf[512];

    /* c1, the bottom: sector 0 allocated, holding a pattern. */
    tu_fill_pattern(sector, sizeof(sector), 77, 0);
    assert_int_equal(tu_write_file(S("%s/c1.raw", d), sector, sizeof(sector)), 0);
    tu_build_header(h, TU_MAGIC, 1, NULL, "c1.raw", 4096);
    tu_write_addcow(S("%s/c1.add-cow", d), h, TU_HDR_SIZE, 1);
    int fd = open(S("%s/c1.add-cow", d), O_WRONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, "\x01", 1, TU_HDR_SIZE), 1);
    close(fd);
    for (int k = 2; k <= 17; k++) {
        tu_make_raw(S("%s/c%d.raw", d, k), 0, 1);
        tu_make_addcow(S("%s/c%d.add-cow", d, k), S("c%d.add-cow", k - 1), S("c%d.raw", k),
                       4096);
    }
    for (int k = 1; k <= 16; k++) {
        addcow_image *img = tu_open_ok(S("%s/c%d.add-cow", d, k), ADDCOW_OPEN_RDONLY, NULL);
        assert_int_equal(addcow_pread(img, buf, sizeof(buf), 0), (int64_t)sizeof(buf));
        assert_memory_equal(buf, sector, sizeof(buf));
        assert_int_equal(addcow_close(img), 0);
    }
    addcow_image *img = tu_open_ok(S("%s/c16.add-cow", d), ADDCOW_OPEN_RDWR, NULL);
    assert_int_equal(addcow_close(img), 0);
    const char *top = S("%s/c17.add-cow", d);
    EXPECT_OPEN_ERR(ELOOP, "c17.add-cow|c16.add-cow|c1.add-cow", top, ADDCOW_OPEN_RDONLY,
                    NULL);
    EXPECT_OPEN_ERR(ELOOP, "c17.add-cow|c16.add-cow|c1.add-cow", top, ADDCOW_OPEN_RDWR,
                    NULL);
}

static void test_image_is_directory(void **state)
{
    (void)state;
    const char *d = tu_subdir("isdir");
    const char *p = S("%s/x.add-cow", d);
    assert_int_equal(mkdir(S("%s/adir", d), 0755), 0);
    tu_make_addcow(p, NULL, "adir", 4096);
    EXPECT_OPEN_ERR_BOTH(EISDIR, S("%s/adir", d), p, NULL);
    /* The add-cow file's own folder. */
    tu_make_addcow(p, NULL, ".", 4096);
    EXPECT_OPEN_ERR(EISDIR, p, p, ADDCOW_OPEN_RDONLY, NULL);
}

static void test_image_is_addcow_file(void **state)
{
    (void)state;
    const char *d = tu_subdir("imgself");
    const char *p = S("%s/x.add-cow", d);
    tu_make_addcow(p, NULL, "x.add-cow", 4096);
    EXPECT_OPEN_ERR_BOTH(EINVAL, p, p, NULL);
    tu_make_addcow(p, NULL, p, 4096);
    EXPECT_OPEN_ERR(EINVAL, p, p, ADDCOW_OPEN_RDWR, NULL);
    addcow_options *o = tu_options1("locking", "off");
    EXPECT_OPEN_ERR(EINVAL, p, p, ADDCOW_OPEN_RDWR, o);
    addcow_options_free(o);
    /* Nothing was written into it: header and bitmap as before. */
    assert_int_equal(tu_file_size(p), (int64_t)TU_HDR_SIZE + 1);
}

static void test_image_is_backing_file(void **state)
{
    (void)state;
    const char *d = tu_subdir("imgback");
    const char *p = S("%s/x.add-cow", d);
    tu_make_raw(S("%s/base.raw", d), 4096, 2);
    assert_int_equal(link(S("%s/base.raw", d), S("%s/hard.raw", d)), 0);
    assert_int_equal(symlink("base.raw", S("%s/soft.raw", d)), 0);

    const char *images[] = { "base.raw", "hard.raw", "soft.raw", "./base.raw" };
    for (size_t i = 0; i < sizeof(images) / sizeof(images[0]); i++) {
        tu_make_addcow(p, "base.raw", images[i], 4096);
        EXPECT_OPEN_ERR_BOTH(EINVAL, images[i], p, NULL);
    }
    /* Also one level down: the image file of the top is the backing file
     * of the add-cow image below. */
    const char *mid = S("%s/mid.add-cow", d);
    tu_make_raw(S("%s/mid.raw", d), 0, 3);
    tu_make_addcow(mid, "base.raw", "mid.raw", 4096);
    tu_make_addcow(p, "mid.add-cow", "hard.raw", 4096);
    EXPECT_OPEN_ERR(EINVAL, "hard.raw|base.raw", p, ADDCOW_OPEN_RDWR, NULL);
    /* Or the image file of the image below. */
    tu_make_addcow(p, "mid.add-cow", "mid.raw", 4096);
    EXPECT_OPEN_ERR_BOTH(EINVAL, "mid.raw", p, NULL);
}

static void test_image_links_to_addcow(void **state)
{
    (void)state;
    const char *d = tu_subdir("imglink");
    const char *p = S("%s/x.add-cow", d);
    tu_make_addcow(p, NULL, "hard.raw", 4096);
    assert_int_equal(link(p, S("%s/hard.raw", d)), 0);
    EXPECT_OPEN_ERR_BOTH(EINVAL, "hard.raw", p, NULL);

    const char *q = S("%s/y.add-cow", d);
    tu_make_addcow(q, NULL, "soft.raw", 4096);
    assert_int_equal(symlink("y.add-cow", S("%s/soft.raw", d)), 0);
    EXPECT_OPEN_ERR_BOTH(EINVAL, "soft.raw", q, NULL);
    addcow_options *o = tu_options1("locking", "off");
    EXPECT_OPEN_ERR(EINVAL, "soft.raw", q, ADDCOW_OPEN_RDWR, o);
    addcow_options_free(o);
}

/* ---- path rules -------------------------------------------------------------- */

static void test_protocol_paths(void **state)
{
    (void)state;
    const char *d = tu_subdir("proto");
    const char *p = S("%s/x.add-cow", d);
    tu_make_raw(S("%s/x.raw", d), 4096, 1);
    /* A local file that has the very name: it must not be opened. */
    tu_make_raw(S("%s/file:disk.raw", d), 4096, 2);

    const char *bad[] = { "nbd://host/x", "file:disk.raw", "http://h/x.raw" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        tu_make_addcow(p, NULL, bad[i], 4096);
        EXPECT_OPEN_ERR_BOTH(ENOTSUP, bad[i], p, NULL);
        tu_make_addcow(p, bad[i], "x.raw", 4096);
        EXPECT_OPEN_ERR_BOTH(ENOTSUP, bad[i], p, NULL);
    }
    /* A ':' after a '/' is no protocol: "./file:disk.raw" is a local file. */
    tu_make_addcow(p, "./file:disk.raw", "x.raw", 4096);
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDONLY, NULL);
    unsigned char buf[16], want[16];
    tu_fill_pattern(want, sizeof(want), 2, 0);
    assert_int_equal(addcow_pread(img, buf, sizeof(buf), 0), 16);
    assert_memory_equal(buf, want, sizeof(buf));
    assert_int_equal(addcow_close(img), 0);
}

static void test_confined_paths(void **state)
{
    (void)state;
    const char *top = tu_subdir("confined");
    const char *d = tu_subdir("confined/img");
    tu_subdir("confined/img/a");
    tu_subdir("confined/img/sub");
    const char *p = S("%s/x.add-cow", d);
    tu_make_raw(S("%s/x.raw", d), 4096, 1);
    tu_make_raw(S("%s/x", top), 4096, 2);
    tu_make_raw(S("%s/sub/x.raw", d), 4096, 3);
    tu_make_raw(S("%s/sub/b.raw", d), 4096, 4);
    tu_make_raw(S("%s/file:disk.raw", d), 4096, 5);
    const char *abs_x = S("%s/x", top);
    addcow_options *conf = tu_options1("paths", "confined");

    const char *bad[] = { abs_x, "../x", "a/../../x", "sub/../../x", "nbd://host/x",
                          "file:disk.raw" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        tu_make_addcow(p, NULL, bad[i], 4096);
        EXPECT_OPEN_ERR_BOTH(EACCES, bad[i], p, conf);
        tu_make_addcow(p, bad[i], "x.raw", 4096);
        EXPECT_OPEN_ERR_BOTH(EACCES, bad[i], p, conf);
    }
    /* Without the option the local ones open. */
    tu_make_addcow(p, abs_x, "../x.raw", 4096);
    tu_make_raw(S("%s/x.raw", top), 4096, 6);
    assert_int_equal(addcow_close(tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL)), 0);
    tu_make_addcow(p, "a/../../x", "x.raw", 4096);
    assert_int_equal(addcow_close(tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL)), 0);

    /* A relative path inside the folder works under the policy. */
    tu_make_addcow(p, "sub/b.raw", "sub/x.raw", 4096);
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, conf);
    unsigned char buf[8], want[8];
    tu_fill_pattern(want, sizeof(want), 4, 100);
    assert_int_equal(addcow_pread(img, buf, sizeof(buf), 100), 8);
    assert_memory_equal(buf, want, sizeof(buf));
    assert_int_equal(addcow_close(img), 0);
    /* Names that only contain dots are not "..". */
    tu_make_raw(S("%s/..x.raw", d), 4096, 7);
    tu_make_addcow(p, NULL, "..x.raw", 4096);
    assert_int_equal(addcow_close(tu_open_ok(p, ADDCOW_OPEN_RDONLY, conf)), 0);
    addcow_options_free(conf);
}

static void test_create_confined(void **state)
{
    (void)state;
    const char *d = tu_subdir("createconf");
    tu_subdir("createconf/sub");
    tu_make_raw(S("%s/base.raw", d), 4096, 1);
    addcow_options *conf = tu_options1("paths", "confined");
    const char *p = S("%s/c.add-cow", d);

    EXPECT_ERR("addcow_create", EACCES, S("%s/abs.raw", d),
               addcow_create(p, 4096, NULL, S("%s/abs.raw", d), conf));
    EXPECT_ERR("addcow_create", EACCES, S("%s/base.raw", d),
               addcow_create(p, 4096, S("%s/base.raw", d), "c.raw", conf));
    EXPECT_ERR("addcow_create", EACCES, "../c.raw",
               addcow_create(p, 4096, NULL, "../c.raw", conf));
    EXPECT_ERR("addcow_create", EACCES, "sub/../../base.raw",
               addcow_create(p, 4096, "sub/../../base.raw", "c.raw", conf));
    /* Nothing was created. */
    assert_int_equal(tu_file_size(p), -ENOENT);
    assert_int_equal(tu_file_size(S("%s/abs.raw", d)), -ENOENT);
    assert_int_equal(tu_file_size(S("%s/c.raw", d)), -ENOENT);
    assert_int_equal(tu_file_size(S("%s/../c.raw", d)), -ENOENT);

    /* Confined relative paths work. */
    assert_int_equal(addcow_create(p, 4096, "base.raw", "sub/c.raw", conf), 0);
    assert_int_equal(tu_file_size(S("%s/sub/c.raw", d)), 4096);
    assert_int_equal(addcow_close(tu_open_ok(p, ADDCOW_OPEN_RDWR, conf)), 0);
    addcow_options_free(conf);
}

/* ---- API misuse ------------------------------------------------------------- */

static void test_null_handle(void **state)
{
    (void)state;
    unsigned char buf[16];
    struct iovec iov = { buf, sizeof(buf) };
    uint64_t run = 0;

    EXPECT_ERR("addcow_get_size", EINVAL, "NULL", addcow_get_size(NULL));
    EXPECT_NULL("addcow_get_backing_file", "NULL", addcow_get_backing_file(NULL));
    EXPECT_NULL("addcow_get_image_file", "NULL", addcow_get_image_file(NULL));
    EXPECT_ERR("addcow_get_allocated_bytes", EINVAL, "NULL", addcow_get_allocated_bytes(NULL));
    EXPECT_ERR("addcow_pread", EINVAL, "NULL", addcow_pread(NULL, buf, sizeof(buf), 0));
    EXPECT_ERR("addcow_pwrite", EINVAL, "NULL", addcow_pwrite(NULL, buf, sizeof(buf), 0));
    EXPECT_ERR("addcow_preadv", EINVAL, "NULL", addcow_preadv(NULL, &iov, 1, 0));
    EXPECT_ERR("addcow_pwritev", EINVAL, "NULL", addcow_pwritev(NULL, &iov, 1, 0));
    EXPECT_ERR("addcow_write_zeroes", EINVAL, "NULL", addcow_write_zeroes(NULL, 0, 512, 0));
    EXPECT_ERR("addcow_flush", EINVAL, "NULL", addcow_flush(NULL));
    EXPECT_ERR("addcow_truncate", EINVAL, "NULL", addcow_truncate(NULL, 512));
    EXPECT_ERR("addcow_block_status", EINVAL, "NULL",
               addcow_block_status(NULL, 0, 512, &run));
    EXPECT_ERR("addcow_options_set", EINVAL, "NULL",
               addcow_options_set(NULL, "cache", "none"));
    /* Zero-length requests still need a handle. */
    EXPECT_ERR("addcow_pread", EINVAL, "NULL", addcow_pread(NULL, buf, 0, 0));
    EXPECT_ERR("addcow_pwrite", EINVAL, "NULL", addcow_pwrite(NULL, buf, 0, 0));
    addcow_options_free(NULL);
}

static void test_close_null(void **state)
{
    (void)state;
    assert_int_equal(addcow_close(NULL), 0);
}

static void test_null_buffers(void **state)
{
    (void)state;
    const char *p = simple_image("nullbuf");
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);

    EXPECT_ERR("addcow_pread", EINVAL, "NULL|buffer", addcow_pread(img, NULL, 1, 0));
    EXPECT_ERR("addcow_pread", EINVAL, "NULL|buffer", addcow_pread(img, NULL, 4096, 100));
    EXPECT_ERR("addcow_pwrite", EINVAL, "NULL|buffer", addcow_pwrite(img, NULL, 1, 0));
    EXPECT_ERR("addcow_pwrite", EINVAL, "NULL|buffer", addcow_pwrite(img, NULL, 512, 512));
    /* Zero bytes need no buffer. */
    assert_int_equal(addcow_pread(img, NULL, 0, 0), 0);
    assert_int_equal(addcow_pwrite(img, NULL, 0, 0), 0);
    assert_int_equal(addcow_get_allocated_bytes(img), 0);
    assert_int_equal(addcow_close(img), 0);
}

static void test_bad_iov(void **state)
{
    (void)state;
    const char *p = simple_image("badiov");
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);
    unsigned char buf[IOV_MAX + 1];
    struct iovec *iov = calloc(IOV_MAX + 1, sizeof(*iov));
    assert_non_null(iov);
    memset(buf, 0xAB, sizeof(buf));
    for (int i = 0; i <= IOV_MAX; i++) {
        iov[i].iov_base = buf + i;
        iov[i].iov_len = 1;
    }

    EXPECT_ERR("addcow_preadv", EINVAL, NULL, addcow_preadv(img, NULL, 1, 0));
    EXPECT_ERR("addcow_pwritev", EINVAL, NULL, addcow_pwritev(img, NULL, 1, 0));
    EXPECT_ERR("addcow_preadv", EINVAL, "-1", addcow_preadv(img, iov, -1, 0));
    EXPECT_ERR("addcow_pwritev", EINVAL, "-1", addcow_pwritev(img, iov, -1, 0));
    EXPECT_ERR("addcow_preadv", EINVAL, NULL, addcow_preadv(img, iov, INT_MIN, 0));
    EXPECT_ERR("addcow_preadv", EINVAL, S("%d", IOV_MAX + 1),
               addcow_preadv(img, iov, IOV_MAX + 1, 0));
    EXPECT_ERR("addcow_pwritev", EINVAL, S("%d", IOV_MAX + 1),
               addcow_pwritev(img, iov, IOV_MAX + 1, 0));
    EXPECT_ERR("addcow_pwritev", EINVAL, NULL, addcow_pwritev(img, iov, INT_MAX, 0));
    /* A NULL buffer inside the array. */
    iov[3].iov_base = NULL;
    EXPECT_ERR("addcow_pwritev", EINVAL, NULL, addcow_pwritev(img, iov, 5, 0));
    EXPECT_ERR("addcow_preadv", EINVAL, NULL, addcow_preadv(img, iov, 5, 0));
    iov[3].iov_base = buf + 3;
    /* Nothing was written by any of them. */
    assert_int_equal(addcow_get_allocated_bytes(img), 0);

    /* IOV_MAX itself is fine, and iovcnt 0 is an empty request. */
    assert_int_equal(addcow_pwritev(img, iov, IOV_MAX, 0), IOV_MAX);
    assert_int_equal(addcow_preadv(img, NULL, 0, 0), 0);
    assert_int_equal(addcow_pwritev(img, NULL, 0, 0), 0);
    unsigned char back[IOV_MAX];
    assert_int_equal(addcow_pread(img, back, sizeof(back), 0), IOV_MAX);
    assert_memory_equal(back, buf, IOV_MAX);
    free(iov);
    assert_int_equal(addcow_close(img), 0);
}

static void test_open_null_out(void **state)
{
    (void)state;
    const char *p = simple_image("nullout");
    EXPECT_ERR("addcow_open", EINVAL, "NULL|pointer", addcow_open(p, ADDCOW_OPEN_RDWR, NULL, NULL));
    EXPECT_ERR("addcow_open", EINVAL, "NULL|pointer",
               addcow_open(p, ADDCOW_OPEN_RDONLY, NULL, NULL));
    /* A NULL or empty path. */
    addcow_image *img = NULL;
    EXPECT_ERR("addcow_open", EINVAL, NULL, addcow_open(NULL, ADDCOW_OPEN_RDONLY, NULL, &img));
    assert_null(img);
    EXPECT_ERR("addcow_open", EINVAL, NULL, addcow_open("", ADDCOW_OPEN_RDONLY, NULL, &img));
    assert_null(img);
    /* The failed opens left no lock behind. */
    assert_int_equal(addcow_close(tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL)), 0);
}

static void test_null_run_length(void **state)
{
    (void)state;
    const char *p = simple_image("nullrun");
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDONLY, NULL);
    EXPECT_ERR("addcow_block_status", EINVAL, "run_length|NULL",
               addcow_block_status(img, 0, 512, NULL));
    assert_int_equal(addcow_close(img), 0);
}

static void test_unknown_flags(void **state)
{
    (void)state;
    const char *p = simple_image("flags");
    const unsigned bad[] = { 0x2u, 0x3u, 0x100u, 0x80000000u };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        EXPECT_OPEN_ERR(EINVAL, S("0x%x|%u", bad[i] & ~1u, bad[i] & ~1u), p, bad[i], NULL);

    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);
    unsigned char data[1024];
    tu_fill_pattern(data, sizeof(data), 9, 0);
    assert_int_equal(addcow_pwrite(img, data, sizeof(data), 0), 1024);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        EXPECT_ERR("addcow_write_zeroes", EINVAL, S("0x%x|%u", bad[i] & ~1u, bad[i] & ~1u),
                   addcow_write_zeroes(img, 0, 1024, bad[i]));
    }
    /* The data is untouched. */
    unsigned char back[1024];
    assert_int_equal(addcow_pread(img, back, sizeof(back), 0), 1024);
    assert_memory_equal(back, data, sizeof(data));
    assert_int_equal(addcow_close(img), 0);
}

static void test_unknown_options(void **state)
{
    (void)state;
    addcow_options *o = addcow_options_new();
    assert_non_null(o);
    EXPECT_ERR("addcow_options_set", EINVAL, "cachee", addcow_options_set(o, "cachee", "none"));
    EXPECT_ERR("addcow_options_set", EINVAL, "'Cache'|\"Cache\"|Cache:| Cache",
               addcow_options_set(o, "Cache", "none"));
    EXPECT_ERR("addcow_options_set", EINVAL, "cache", addcow_options_set(o, "cache", "sometimes"));
    EXPECT_ERR("addcow_options_set", EINVAL, "cache", addcow_options_set(o, "cache", ""));
    EXPECT_ERR("addcow_options_set", EINVAL, "locking", addcow_options_set(o, "locking", "yes"));
    EXPECT_ERR("addcow_options_set", EINVAL, "paths", addcow_options_set(o, "paths", "all"));
    EXPECT_ERR("addcow_options_set", EINVAL, "backing-format",
               addcow_options_set(o, "backing-format", "qcow2"));
    EXPECT_ERR("addcow_options_set", EINVAL, "backend", addcow_options_set(o, "backend", "aio"));
    EXPECT_ERR("addcow_options_set", EINVAL, NULL, addcow_options_set(o, "", "on"));
    EXPECT_ERR("addcow_options_set", EINVAL, NULL, addcow_options_set(o, NULL, "on"));
    EXPECT_ERR("addcow_options_set", EINVAL, "locking", addcow_options_set(o, "locking", NULL));
    /* A refused value leaves the option as it was: locking stays on. */
    const char *p = simple_image("options");
    assert_int_equal(addcow_options_set(o, "locking", "on"), 0);
    EXPECT_ERR("addcow_options_set", EINVAL, "locking", addcow_options_set(o, "locking", "of"));
    addcow_image *a = tu_open_ok(p, ADDCOW_OPEN_RDWR, o);
    addcow_image *b = NULL;
    EXPECT_ERR("addcow_open", EBUSY, p, addcow_open(p, ADDCOW_OPEN_RDWR, o, &b));
    assert_int_equal(addcow_close(a), 0);
    addcow_options_free(o);
}

/* Writes that reach past the end fail with -ENOSPC and change nothing. */
static void test_write_past_end(void **state)
{
    (void)state;
    const char *d = tu_subdir("pastend");
    const char *p = S("%s/x.add-cow", d), *raw = S("%s/x.raw", d);
    tu_make_raw(S("%s/base.raw", d), 9000, 5);
    tu_make_raw(raw, 0, 0);
    tu_make_addcow(p, "base.raw", "x.raw", 8192);
    assert_int_equal(truncate(raw, 8192), 0);

    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);
    unsigned char data[1024], before[8192], after[8192];
    tu_fill_pattern(data, sizeof(data), 6, 0);
    assert_int_equal(addcow_pwrite(img, data, 300, 7000), 300);
    assert_int_equal(addcow_flush(img), 0);
    int64_t alloc = addcow_get_allocated_bytes(img);
    assert_int_equal(alloc, 1024);     /* sectors 13 and 14 */
    assert_int_equal(addcow_pread(img, before, sizeof(before), 0), 8192);
    size_t raw_len0, raw_len1, acf_len0, acf_len1;
    unsigned char *raw0 = tu_read_file(raw, &raw_len0);
    unsigned char *acf0 = tu_read_file(p, &acf_len0);
    assert_non_null(raw0);
    assert_non_null(acf0);

    struct { uint64_t off; size_t len; } w[] = {
        { 8192, 1 }, { 8191, 2 }, { 8000, 500 }, { 7680, 1024 }, { 0, 8193 },
        { 9000, 10 }, { UINT64_MAX, 1 }, { UINT64_MAX - 511, 1000 },
        { UINT64_C(1) << 63, 512 },
    };
    for (size_t i = 0; i < sizeof(w) / sizeof(w[0]); i++) {
        unsigned char *big = calloc(1, w[i].len);
        assert_non_null(big);
        struct iovec v[2] = { { big, w[i].len / 2 }, { big + w[i].len / 2,
                                                       w[i].len - w[i].len / 2 } };
        EXPECT_ERR("addcow_pwrite", ENOSPC, p, addcow_pwrite(img, big, w[i].len, w[i].off));
        EXPECT_ERR("addcow_pwritev", ENOSPC, p, addcow_pwritev(img, v, 2, w[i].off));
        EXPECT_ERR("addcow_write_zeroes", ENOSPC, p,
                   addcow_write_zeroes(img, w[i].off, w[i].len, 0));
        EXPECT_ERR("addcow_write_zeroes", ENOSPC, p,
                   addcow_write_zeroes(img, w[i].off, w[i].len, ADDCOW_ZEROES_MAY_UNMAP));
        free(big);
    }
    EXPECT_ERR("addcow_write_zeroes", ENOSPC, p, addcow_write_zeroes(img, 512, UINT64_MAX, 0));
    EXPECT_ERR("addcow_write_zeroes", ENOSPC, p,
               addcow_write_zeroes(img, 4096, UINT64_MAX - 4095, 0));

    assert_int_equal(addcow_get_allocated_bytes(img), alloc);
    assert_int_equal(addcow_get_size(img), 8192);
    assert_int_equal(addcow_pread(img, after, sizeof(after), 0), 8192);
    assert_memory_equal(after, before, sizeof(before));
    assert_int_equal(addcow_close(img), 0);
    /* On disk too: the image file and the add-cow file are as they were. */
    unsigned char *raw1 = tu_read_file(raw, &raw_len1);
    unsigned char *acf1 = tu_read_file(p, &acf_len1);
    assert_non_null(raw1);
    assert_non_null(acf1);
    assert_int_equal(raw_len1, raw_len0);
    assert_memory_equal(raw1, raw0, raw_len0);
    assert_int_equal(acf_len1, acf_len0);
    assert_memory_equal(acf1, acf0, acf_len0);
    free(raw0);
    free(raw1);
    free(acf0);
    free(acf1);
}

static void test_readonly_writes(void **state)
{
    (void)state;
    const char *p = simple_image("rdonly");
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDONLY, NULL);
    unsigned char data[512] = { 1 };
    struct iovec v = { data, sizeof(data) };

    EXPECT_ERR("addcow_pwrite", EBADF, p, addcow_pwrite(img, data, sizeof(data), 0));
    EXPECT_ERR("addcow_pwritev", EBADF, p, addcow_pwritev(img, &v, 1, 512));
    EXPECT_ERR("addcow_write_zeroes", EBADF, p, addcow_write_zeroes(img, 0, 512, 0));
    EXPECT_ERR("addcow_write_zeroes", EBADF, p,
               addcow_write_zeroes(img, 0, 4096, ADDCOW_ZEROES_MAY_UNMAP));
    EXPECT_ERR("addcow_truncate", EBADF, p, addcow_truncate(img, 16384));
    EXPECT_ERR("addcow_truncate", EBADF, p, addcow_truncate(img, 4096));
    assert_int_equal(addcow_get_size(img), 8192);
    assert_int_equal(addcow_get_allocated_bytes(img), 0);
    assert_int_equal(addcow_close(img), 0);
    assert_int_equal(tu_file_size(p), (int64_t)TU_HDR_SIZE + 2);
}

static void test_truncate_unaligned(void **state)
{
    (void)state;
    const char *p = simple_image("truncalign");
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);
    const uint64_t bad[] = { 1, 511, 513, 8191, 8193, 10000, UINT64_MAX };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        EXPECT_ERR("addcow_truncate", EINVAL, S("%" PRIu64, bad[i]),
                   addcow_truncate(img, bad[i]));
    assert_int_equal(addcow_get_size(img), 8192);
    assert_int_equal(addcow_close(img), 0);
    assert_int_equal(tu_file_size(p), (int64_t)TU_HDR_SIZE + 2);
}

static void test_block_status_bad(void **state)
{
    (void)state;
    const char *p = simple_image("statusbad");
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDONLY, NULL);
    uint64_t run = 12345;
    EXPECT_ERR("addcow_block_status", EINVAL, NULL, addcow_block_status(img, 0, 0, &run));
    EXPECT_ERR("addcow_block_status", EINVAL, NULL, addcow_block_status(img, 4096, 0, &run));
    EXPECT_ERR("addcow_block_status", EINVAL, "8192",
               addcow_block_status(img, 8192, 512, &run));
    EXPECT_ERR("addcow_block_status", EINVAL, "8193",
               addcow_block_status(img, 8193, 1, &run));
    EXPECT_ERR("addcow_block_status", EINVAL, "1048576",
               addcow_block_status(img, 1 << 20, 512, &run));
    EXPECT_ERR("addcow_block_status", EINVAL, S("%" PRIu64, UINT64_MAX),
               addcow_block_status(img, UINT64_MAX, 1, &run));
    /* The last byte is fine. */
    assert_int_equal(addcow_block_status(img, 8191, 1, &run), ADDCOW_STATUS_ZERO);
    assert_int_equal(run, 1);
    assert_int_equal(addcow_close(img), 0);
}

/* ---- create --------------------------------------------------------------- */

static void test_create_exists(void **state)
{
    (void)state;
    const char *d = tu_subdir("createexists");
    const char *p = S("%s/c.add-cow", d);
    tu_make_raw(p, 3000, 8);
    EXPECT_ERR("addcow_create", EEXIST, p, addcow_create(p, 4096, NULL, "c.raw", NULL));
    /* An existing add-cow image is not overwritten either. */
    const char *q = S("%s/d.add-cow", d);
    tu_make_raw(S("%s/d.raw", d), 4096, 1);
    tu_make_addcow(q, NULL, "d.raw", 4096);
    EXPECT_ERR("addcow_create", EEXIST, q, addcow_create(q, 8192, NULL, "e.raw", NULL));
    /* An existing directory. */
    EXPECT_ERR("addcow_create", EEXIST, d, addcow_create(d, 8192, NULL, "e.raw", NULL));

    size_t len;
    unsigned char *got = tu_read_file(p, &len), want[3000];
    assert_non_null(got);
    tu_fill_pattern(want, sizeof(want), 8, 0);
    assert_int_equal(len, 3000);
    assert_memory_equal(got, want, sizeof(want));
    free(got);
    assert_int_equal(tu_file_size(q), (int64_t)TU_HDR_SIZE + 1);
    assert_int_equal(tu_file_size(S("%s/c.raw", d)), -ENOENT);
    assert_int_equal(tu_file_size(S("%s/e.raw", d)), -ENOENT);
}

static void test_create_bad_size(void **state)
{
    (void)state;
    const char *d = tu_subdir("createsize");
    const char *p = S("%s/c.add-cow", d);
    const uint64_t bad[] = { 1, 511, 513, 1000, 10000, UINT64_MAX };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        EXPECT_ERR("addcow_create", EINVAL, S("%" PRIu64, bad[i]),
                   addcow_create(p, bad[i], NULL, "c.raw", NULL));
    assert_int_equal(tu_file_size(p), -ENOENT);
    assert_int_equal(tu_file_size(S("%s/c.raw", d)), -ENOENT);
}

/* A relative path of exactly len bytes, made of folders that exist under
 * dir, ending in a file name that starts with leaf. */
static const char *long_path(const char *dir, size_t len, const char *leaf)
{
    char *s = S("%*s", (int)len, "");
    size_t pos = 0;
    /* Folders of 200 characters while more than 250 remain. */
    while (len - pos > 250) {
        memset(s + pos, 'd', 200);
        s[pos + 200] = '\0';
        int r = mkdir(S("%s/%s", dir, s), 0755);
        assert_true(r == 0 || errno == EEXIST);
        s[pos + 200] = '/';
        pos += 201;
    }
    size_t n = strlen(leaf);
    assert_true(len - pos > n);
    memcpy(s + pos, leaf, n);
    memset(s + pos + n, 'f', len - pos - n);
    s[len] = '\0';
    assert_int_equal(strlen(s), len);
    return s;
}

static void test_create_name_too_long(void **state)
{
    (void)state;
    const char *d = tu_subdir("createlong");
    const char *p = S("%s/c.add-cow", d);
    const char *img1024 = long_path(d, 1024, "i");
    const char *back1024 = long_path(d, 1024, "b");
    const char *img1023 = long_path(d, 1023, "i");
    const char *back1023 = long_path(d, 1023, "b");
    tu_make_raw(S("%s/base.raw", d), 4096, 3);
    tu_make_raw(S("%s/%s", d, back1024), 4096, 3);
    tu_make_raw(S("%s/%s", d, back1023), 4096, 4);

    EXPECT_ERR("addcow_create", ENAMETOOLONG, S("1024|%.40s", img1024),
               addcow_create(p, 4096, NULL, img1024, NULL));
    EXPECT_ERR("addcow_create", ENAMETOOLONG, S("1024|%.40s", back1024),
               addcow_create(p, 4096, back1024, "c.raw", NULL));
    EXPECT_ERR("addcow_create", ENAMETOOLONG, S("1024|%.40s", back1024),
               addcow_create(p, 0, back1024, "c.raw", NULL));
    assert_int_equal(tu_file_size(p), -ENOENT);
    assert_int_equal(tu_file_size(S("%s/%s", d, img1024)), -ENOENT);
    assert_int_equal(tu_file_size(S("%s/c.raw", d)), -ENOENT);

    /* 1023 bytes fit: the image is created and stores them. */
    assert_int_equal(addcow_create(p, 0, back1023, img1023, NULL), 0);
    assert_int_equal(tu_file_size(S("%s/%s", d, img1023)), 4096);
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);
    assert_string_equal(addcow_get_image_file(img), img1023);
    assert_string_equal(addcow_get_backing_file(img), back1023);
    unsigned char buf[64], want[64];
    tu_fill_pattern(want, sizeof(want), 4, 0);
    assert_int_equal(addcow_pread(img, buf, sizeof(buf), 0), 64);
    assert_memory_equal(buf, want, sizeof(want));
    assert_int_equal(addcow_close(img), 0);
}

static void test_create_no_image_name(void **state)
{
    (void)state;
    const char *d = tu_subdir("createnoimg");
    const char *p = S("%s/c.add-cow", d);
    tu_make_raw(S("%s/base.raw", d), 4096, 3);
    EXPECT_ERR("addcow_create", EINVAL, NULL, addcow_create(p, 4096, NULL, NULL, NULL));
    EXPECT_ERR("addcow_create", EINVAL, NULL, addcow_create(p, 4096, NULL, "", NULL));
    EXPECT_ERR("addcow_create", EINVAL, NULL, addcow_create(p, 0, "base.raw", NULL, NULL));
    EXPECT_ERR("addcow_create", EINVAL, NULL, addcow_create(p, 0, "base.raw", "", NULL));
    EXPECT_ERR("addcow_create", EINVAL, NULL, addcow_create(NULL, 4096, NULL, "c.raw", NULL));
    EXPECT_ERR("addcow_create", EINVAL, NULL, addcow_create("", 4096, NULL, "c.raw", NULL));
    assert_int_equal(tu_file_size(p), -ENOENT);
    assert_int_equal(tu_file_size(S("%s/c.raw", d)), -ENOENT);
}

static void test_create_missing_backing(void **state)
{
    (void)state;
    const char *d = tu_subdir("createnoback");
    const char *p = S("%s/c.add-cow", d);
    EXPECT_ERR("addcow_create", ENOENT, "nothere.raw",
               addcow_create(p, 0, "nothere.raw", "c.raw", NULL));
    EXPECT_ERR("addcow_create", ENOENT, "nothere.raw",
               addcow_create(p, 0, S("%s/nothere.raw", d), "c.raw", NULL));
    assert_int_equal(tu_file_size(p), -ENOENT);
    assert_int_equal(tu_file_size(S("%s/c.raw", d)), -ENOENT);
}

static void test_create_image_is_addcow_path(void **state)
{
    (void)state;
    const char *d = tu_subdir("createself");
    const char *p = S("%s/c.add-cow", d);
    EXPECT_ERR("addcow_create", EINVAL, "c.add-cow",
               addcow_create(p, 4096, NULL, "c.add-cow", NULL));
    EXPECT_ERR("addcow_create", EINVAL, "c.add-cow",
               addcow_create(p, 4096, NULL, "./c.add-cow", NULL));
    assert_int_equal(tu_file_size(p), -ENOENT);
}

/* Zero-length writes succeed and do nothing, even at or past the end. */
static void test_zero_length_writes_anywhere(void **state)
{
    (void)state;
    const char *p = simple_image("zerolen");
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);
    char b = 'x';
    assert_int_equal(addcow_pwrite(img, &b, 0, 8192), 0);
    assert_int_equal(addcow_pwrite(img, &b, 0, 8192 + 1), 0);
    assert_int_equal(addcow_pwrite(img, &b, 0, UINT64_MAX), 0);
    assert_int_equal(addcow_write_zeroes(img, 8192 + 512, 0, 0), 0);
    assert_int_equal(addcow_write_zeroes(img, UINT64_MAX, 0, ADDCOW_ZEROES_MAY_UNMAP), 0);
    struct iovec v = { &b, 0 };
    assert_int_equal(addcow_pwritev(img, &v, 1, 1u << 20), 0);
    assert_int_equal(addcow_get_allocated_bytes(img), 0);
    assert_int_equal(addcow_close(img), 0);
}

/* With an explicit size, create only needs the backing file to exist: an
 * add-cow backing file held by a writer elsewhere does not stop it. */
static void test_create_sized_over_busy_backing(void **state)
{
    (void)state;
    const char *d = tu_subdir("createbusy");
    const char *mid = S("%s/mid.add-cow", d);
    tu_make_raw(S("%s/mid.raw", d), 8192, 1);
    tu_make_addcow(mid, NULL, "mid.raw", 8192);
    addcow_image *w = tu_open_ok(mid, ADDCOW_OPEN_RDWR, NULL);
    assert_int_equal(addcow_create(S("%s/top.add-cow", d), 8192, "mid.add-cow", "top.raw",
                                   NULL), 0);
    /* Size 0 reads the backing image's virtual size; that works too. */
    assert_int_equal(addcow_create(S("%s/top2.add-cow", d), 0, "mid.add-cow", "top2.raw",
                                   NULL), 0);
    assert_int_equal(addcow_close(w), 0);
    addcow_image *t = tu_open_ok(S("%s/top2.add-cow", d), ADDCOW_OPEN_RDONLY, NULL);
    assert_int_equal(addcow_get_size(t), 8192);
    assert_int_equal(addcow_close(t), 0);
}

/* ---- locking --------------------------------------------------------------- */

static void test_lock_two_writers(void **state)
{
    (void)state;
    const char *p = simple_image("lockww");
    addcow_image *a = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);
    EXPECT_OPEN_ERR(EBUSY, p, p, ADDCOW_OPEN_RDWR, NULL);
    assert_int_equal(addcow_close(a), 0);
    /* Released at close. */
    a = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);
    assert_int_equal(addcow_close(a), 0);
}

static void test_lock_reader_vs_writer(void **state)
{
    (void)state;
    const char *p = simple_image("lockrw");
    addcow_image *w = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);
    EXPECT_OPEN_ERR(EBUSY, p, p, ADDCOW_OPEN_RDONLY, NULL);
    assert_int_equal(addcow_close(w), 0);

    /* And the other way round: a writer while a reader has it. */
    addcow_image *r = tu_open_ok(p, ADDCOW_OPEN_RDONLY, NULL);
    EXPECT_OPEN_ERR(EBUSY, p, p, ADDCOW_OPEN_RDWR, NULL);
    assert_int_equal(addcow_close(r), 0);
}

static void test_lock_two_readers(void **state)
{
    (void)state;
    const char *p = simple_image("lockrr");
    addcow_image *a = tu_open_ok(p, ADDCOW_OPEN_RDONLY, NULL);
    addcow_image *b = tu_open_ok(p, ADDCOW_OPEN_RDONLY, NULL);
    unsigned char x[16], y[16];
    assert_int_equal(addcow_pread(a, x, sizeof(x), 0), 16);
    assert_int_equal(addcow_pread(b, y, sizeof(y), 0), 16);
    assert_memory_equal(x, y, sizeof(x));
    assert_int_equal(addcow_close(a), 0);
    assert_int_equal(addcow_close(b), 0);
}

/* The image file is locked too: two add-cow files naming one image file. */
static void test_lock_shared_image_file(void **state)
{
    (void)state;
    const char *d = tu_subdir("lockimg");
    const char *a = S("%s/a.add-cow", d), *b = S("%s/b.add-cow", d);
    tu_make_raw(S("%s/x.raw", d), 4096, 1);
    tu_make_addcow(a, NULL, "x.raw", 4096);
    tu_make_addcow(b, NULL, "x.raw", 4096);
    addcow_image *ia = tu_open_ok(a, ADDCOW_OPEN_RDWR, NULL);
    EXPECT_OPEN_ERR(EBUSY, "x.raw", b, ADDCOW_OPEN_RDWR, NULL);
    assert_int_equal(addcow_close(ia), 0);
    addcow_image *ib = tu_open_ok(b, ADDCOW_OPEN_RDWR, NULL);
    assert_int_equal(addcow_close(ib), 0);
}

static void test_lock_off(void **state)
{
    (void)state;
    const char *p = simple_image("lockoff");
    addcow_options *off = tu_options1("locking", "off");
    addcow_image *a = tu_open_ok(p, ADDCOW_OPEN_RDWR, off);
    addcow_image *b = tu_open_ok(p, ADDCOW_OPEN_RDWR, off);
    addcow_image *c = tu_open_ok(p, ADDCOW_OPEN_RDONLY, off);
    assert_int_equal(addcow_close(c), 0);
    assert_int_equal(addcow_close(b), 0);
    assert_int_equal(addcow_close(a), 0);
    addcow_options_free(off);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_magic),
        cmocka_unit_test(test_create_image_is_addcow_path),
        cmocka_unit_test(test_zero_length_writes_anywhere),
        cmocka_unit_test(test_create_sized_over_busy_backing),
        cmocka_unit_test(test_bad_version),
        cmocka_unit_test(test_short_header),
        cmocka_unit_test(test_empty_file),
        cmocka_unit_test(test_truncated_bitmap),
        cmocka_unit_test(test_huge_size_tiny_file),
        cmocka_unit_test(test_path_without_nul),
        cmocka_unit_test(test_empty_image_file),
        cmocka_unit_test(test_missing_image_file),
        cmocka_unit_test(test_missing_backing_file),
        cmocka_unit_test(test_size_too_big),
        cmocka_unit_test(test_backing_is_self),
        cmocka_unit_test(test_chain_loop),
        cmocka_unit_test(test_chain_depth),
        cmocka_unit_test(test_image_is_directory),
        cmocka_unit_test(test_image_is_addcow_file),
        cmocka_unit_test(test_image_is_backing_file),
        cmocka_unit_test(test_image_links_to_addcow),
        cmocka_unit_test(test_protocol_paths),
        cmocka_unit_test(test_confined_paths),
        cmocka_unit_test(test_create_confined),
        cmocka_unit_test(test_null_handle),
        cmocka_unit_test(test_close_null),
        cmocka_unit_test(test_null_buffers),
        cmocka_unit_test(test_bad_iov),
        cmocka_unit_test(test_open_null_out),
        cmocka_unit_test(test_null_run_length),
        cmocka_unit_test(test_unknown_flags),
        cmocka_unit_test(test_unknown_options),
        cmocka_unit_test(test_write_past_end),
        cmocka_unit_test(test_readonly_writes),
        cmocka_unit_test(test_truncate_unaligned),
        cmocka_unit_test(test_block_status_bad),
        cmocka_unit_test(test_create_exists),
        cmocka_unit_test(test_create_bad_size),
        cmocka_unit_test(test_create_name_too_long),
        cmocka_unit_test(test_create_no_image_name),
        cmocka_unit_test(test_create_missing_backing),
        cmocka_unit_test(test_lock_two_writers),
        cmocka_unit_test(test_lock_reader_vs_writer),
        cmocka_unit_test(test_lock_two_readers),
        cmocka_unit_test(test_lock_shared_image_file),
        cmocka_unit_test(test_lock_off),
    };
    tu_scratch();
    return cmocka_run_group_tests(tests, NULL, tu_free_strings);
}
