/*
 * test-api.c: the normal behaviour of the public API on real files: create,
 * open, reads and writes (copy-on-write of partial sectors), write_zeroes,
 * truncate, block_status, cache modes, backing formats, persistence.
 *
 * Expectations come from FORMAT.md and API.md: the on-disk bytes are read
 * back and decoded here, and data is compared against a byte model of the
 * virtual disk kept by the test.
 */
#include "config.h"

#include <dirent.h>
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
#include <unistd.h>
#ifdef __linux__
#include <linux/falloc.h>
#endif
#include <setjmp.h>
#include <cmocka.h>

#include "addcow.h"
#include "testutil.h"

#define SECTOR     512u

/* S(): a string that lives until the end of the program. */
#define S tu_str

/* ---- helpers ---------------------------------------------------------------- */

static void create_ok_at(const char *path, uint64_t size, const char *backing,
                         const char *image, const addcow_options *o, const char *file,
                         int line)
{
    int r = addcow_create(path, size, backing, image, o);
    if (r != 0) {
        print_error("%s:%d: addcow_create(%s) returned %d: %s\n", file, line, path, r,
                    addcow_last_error());
        fail();
    }
}
#define create_ok(p, size, b, i, o) create_ok_at((p), (size), (b), (i), (o), __FILE__, __LINE__)

/* Checks a call that returns a count or -errno, printing the message. */
static void expect_val_at(int64_t got, int64_t want, const char *what, const char *file,
                          int line)
{
    if (got != want) {
        print_error("%s:%d: %s returned %" PRId64 ", expected %" PRId64 " (last error: %s)\n",
                    file, line, what, got, want, addcow_last_error());
        fail();
    }
}
#define EXPECT_VAL(expr, want) expect_val_at((int64_t)(expr), (int64_t)(want), #expr, \
                                             __FILE__, __LINE__)

/* The on-disk bit of sector n, read from the add-cow file's bytes. */
static int disk_bit(const char *acf, uint64_t n)
{
    unsigned char b;
    int fd = open(acf, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, &b, 1, (off_t)(TU_HDR_SIZE + n / 8)), 1);
    close(fd);
    return (b >> (n % 8)) & 1;
}

/* Decodes the add-cow file's header and checks every field and the length;
 * with bitmap_clear, also that every bitmap byte is zero. */
static void check_header_on_disk(const char *path, const char *backing, const char *image,
                                 uint64_t size, bool bitmap_clear)
{
    unsigned char field[TU_PATH_FIELD];
    size_t len;
    unsigned char *b = tu_read_file(path, &len);
    assert_non_null(b);
    assert_int_equal(len, TU_HDR_SIZE + tu_bitmap_len(size));
    assert_int_equal(tu_get_be(b, 8), TU_MAGIC);
    assert_int_equal(tu_get_be(b + TU_OFF_VERSION, 4), 1);
    memset(field, 0, sizeof(field));
    if (backing != NULL)
        memcpy(field, backing, strlen(backing));
    assert_memory_equal(b + TU_OFF_BACKING, field, TU_PATH_FIELD);
    memset(field, 0, sizeof(field));
    memcpy(field, image, strlen(image));
    assert_memory_equal(b + TU_OFF_IMAGE, field, TU_PATH_FIELD);
    assert_int_equal(tu_get_be(b + TU_OFF_SIZE, 8), size);
    for (size_t i = TU_HDR_SIZE; bitmap_clear && i < len; i++)
        assert_int_equal(b[i], 0);
    free(b);
}

static bool all_zero(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != 0)
            return false;
    return true;
}

/* Reads the whole disk and compares it with the model. */
static void check_disk_at(addcow_image *img, const unsigned char *model, uint64_t size,
                          const char *file, int line)
{
    unsigned char *buf = malloc(size + 1);
    assert_non_null(buf);
    expect_val_at(addcow_pread(img, buf, size, 0), (int64_t)size, "addcow_pread(all)",
                  file, line);
    for (uint64_t i = 0; i < size; i++) {
        if (buf[i] != model[i]) {
            print_error("%s:%d: byte %" PRIu64 " reads 0x%02x, expected 0x%02x\n", file,
                        line, i, buf[i], model[i]);
            free(buf);
            fail();
        }
    }
    free(buf);
}
#define check_disk(img, model, size) check_disk_at((img), (model), (size), __FILE__, __LINE__)

/* Opens path read-only, compares the whole disk with the model, closes it. */
static void check_reopened_at(const char *path, const unsigned char *model, uint64_t size,
                              const char *file, int line)
{
    addcow_image *img = tu_open_ok_at(path, ADDCOW_OPEN_RDONLY, NULL, file, line);
    check_disk_at(img, model, size, file, line);
    assert_int_equal(addcow_close(img), 0);
}
#define check_reopened(path, model, size) check_reopened_at((path), (model), (size), \
                                                            __FILE__, __LINE__)

static int64_t blocks_of(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return (int64_t)st.st_blocks;
}

/* Whether this file system frees blocks on FALLOC_FL_PUNCH_HOLE. */
static bool can_punch_holes(const char *dir)
{
#ifdef FALLOC_FL_PUNCH_HOLE
    const char *p = S("%s/punch-probe", dir);
    tu_make_raw(p, 1 << 20, 1);
    int fd = open(p, O_RDWR | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(fsync(fd), 0);
    int64_t before = blocks_of(p);
    bool ok = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 1 << 20) == 0;
    if (ok) {
        assert_int_equal(fsync(fd), 0);
        ok = blocks_of(p) < before;
    }
    close(fd);
    unlink(p);
    return ok;
#else
    (void)dir;
    return false;
#endif
}

/* The names in a folder, sorted, joined with ','. */
static const char *list_dir(const char *dir)
{
    struct dirent **names;
    int n = scandir(dir, &names, NULL, alphasort);
    assert_true(n >= 0);
    char *out = S("%s", "");
    for (int i = 0; i < n; i++) {
        if (strcmp(names[i]->d_name, ".") != 0 && strcmp(names[i]->d_name, "..") != 0)
            out = S("%s%s%s", out, out[0] ? "," : "", names[i]->d_name);
        free(names[i]);
    }
    free(names);
    return out;
}

/* ---- create and open ---------------------------------------------------------- */

static void test_create_open(void **state)
{
    (void)state;
    const char *d = tu_subdir("create");
    const char *p = S("%s/x.add-cow", d);
    struct stat st;

    /* 13 sectors: the bitmap needs 2 bytes. */
    create_ok(p, 13 * 512, NULL, "x.raw", NULL);
    check_header_on_disk(p, NULL, "x.raw", 13 * 512, true);
    assert_int_equal(tu_file_size(p), TU_HDR_SIZE + 2);
    assert_int_equal(tu_file_size(S("%s/x.raw", d)), 13 * 512);
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDONLY, NULL);
    assert_int_equal(addcow_get_size(img), 13 * 512);
    assert_null(addcow_get_backing_file(img));
    assert_string_equal(addcow_get_image_file(img), "x.raw");
    assert_int_equal(addcow_get_allocated_bytes(img), 0);
    unsigned char zeros[13 * 512];
    memset(zeros, 0, sizeof(zeros));
    check_disk(img, zeros, sizeof(zeros));
    assert_int_equal(addcow_close(img), 0);

    /* 64 MiB: 16384 bitmap bytes; the image file is sparse. */
    const char *big = S("%s/big.add-cow", d);
    create_ok(big, 64 << 20, NULL, "big.raw", NULL);
    check_header_on_disk(big, NULL, "big.raw", 64 << 20, true);
    assert_int_equal(tu_file_size(big), TU_HDR_SIZE + 16384);
    assert_int_equal(stat(S("%s/big.raw", d), &st), 0);
    assert_int_equal(st.st_size, 64 << 20);
    assert_true((uint64_t)st.st_blocks * 512 <= (1u << 20));
    img = tu_open_ok(big, ADDCOW_OPEN_RDWR, NULL);
    assert_int_equal(addcow_get_size(img), 64 << 20);
    assert_int_equal(addcow_close(img), 0);

    /* A backing file and an absolute image path: both stored as given. */
    tu_make_raw(S("%s/base.raw", d), 5000, 3);
    const char *y = S("%s/y.add-cow", d), *yraw = S("%s/y.raw", d);
    create_ok(y, 8192, "base.raw", yraw, NULL);
    check_header_on_disk(y, "base.raw", yraw, 8192, true);
    img = tu_open_ok(y, ADDCOW_OPEN_RDWR, NULL);
    assert_int_equal(addcow_get_size(img), 8192);
    assert_string_equal(addcow_get_backing_file(img), "base.raw");
    assert_string_equal(addcow_get_image_file(img), yraw);
    unsigned char model[8192];
    memset(model, 0, sizeof(model));
    tu_fill_pattern(model, 5000, 3, 0);
    check_disk(img, model, sizeof(model));
    assert_int_equal(addcow_close(img), 0);
    assert_int_equal(tu_file_size(yraw), 8192);
}

static void test_create_size_from_backing(void **state)
{
    (void)state;
    const char *d = tu_subdir("createsize");
    unsigned char buf[16384], model[16384];

    /* A raw backing file of odd length: rounded up to whole sectors. */
    tu_make_raw(S("%s/base.raw", d), 10000, 4);
    const char *p = S("%s/x.add-cow", d);
    create_ok(p, 0, "base.raw", "x.raw", NULL);
    check_header_on_disk(p, "base.raw", "x.raw", 10240, true);
    assert_int_equal(tu_file_size(S("%s/x.raw", d)), 10240);
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDONLY, NULL);
    assert_int_equal(addcow_get_size(img), 10240);
    memset(model, 0, sizeof(model));
    tu_fill_pattern(model, 10000, 4, 0);
    check_disk(img, model, 10240);
    assert_int_equal(addcow_close(img), 0);

    /* Exactly a multiple of 512. */
    tu_make_raw(S("%s/even.raw", d), 4096, 4);
    const char *q = S("%s/q.add-cow", d);
    create_ok(q, 0, "even.raw", "q.raw", NULL);
    check_header_on_disk(q, "even.raw", "q.raw", 4096, true);

    /* An add-cow backing file: its virtual size, not its file length. */
    const char *b = S("%s/b.add-cow", d);
    create_ok(b, 21 * 512, NULL, "b.raw", NULL);
    img = tu_open_ok(b, ADDCOW_OPEN_RDWR, NULL);
    tu_fill_pattern(buf, 1000, 5, 0);
    EXPECT_VAL(addcow_pwrite(img, buf, 1000, 0), 1000);
    assert_int_equal(addcow_close(img), 0);
    const char *t = S("%s/t.add-cow", d);
    create_ok(t, 0, "b.add-cow", "t.raw", NULL);
    check_header_on_disk(t, "b.add-cow", "t.raw", 21 * 512, true);
    img = tu_open_ok(t, ADDCOW_OPEN_RDONLY, NULL);
    assert_int_equal(addcow_get_size(img), 21 * 512);
    memset(model, 0, sizeof(model));
    tu_fill_pattern(model, 1000, 5, 0);
    check_disk(img, model, 21 * 512);
    assert_int_equal(addcow_close(img), 0);
}

static void test_create_existing_image_file(void **state)
{
    (void)state;
    const char *d = tu_subdir("createexisting");
    unsigned char want[20000];
    size_t len;

    /* Longer than the size: kept whole. */
    tu_make_raw(S("%s/long.raw", d), 20000, 6);
    create_ok(S("%s/l.add-cow", d), 8192, NULL, "long.raw", NULL);
    unsigned char *got = tu_read_file(S("%s/long.raw", d), &len);
    assert_non_null(got);
    assert_int_equal(len, 20000);
    tu_fill_pattern(want, 20000, 6, 0);
    assert_memory_equal(got, want, 20000);
    free(got);
    /* Its old bytes are not part of the disk: no bit is set. */
    addcow_image *img = tu_open_ok(S("%s/l.add-cow", d), ADDCOW_OPEN_RDONLY, NULL);
    assert_int_equal(addcow_get_size(img), 8192);
    unsigned char zeros[8192];
    memset(zeros, 0, sizeof(zeros));
    check_disk(img, zeros, sizeof(zeros));
    assert_int_equal(addcow_close(img), 0);

    /* Shorter: extended with zeros, its bytes kept. */
    tu_make_raw(S("%s/short.raw", d), 1000, 7);
    create_ok(S("%s/s.add-cow", d), 8192, NULL, "short.raw", NULL);
    got = tu_read_file(S("%s/short.raw", d), &len);
    assert_non_null(got);
    assert_int_equal(len, 8192);
    tu_fill_pattern(want, 1000, 7, 0);
    assert_memory_equal(got, want, 1000);
    assert_true(all_zero(got + 1000, 8192 - 1000));
    free(got);
}

/* FORMAT.md: an image whose header size is not a multiple of 512 has
 * floor(size / 512) sectors.  The file is written by hand here, since
 * create refuses such a size. */
static void test_open_unaligned_size(void **state)
{
    (void)state;
    const char *d = tu_subdir("unalignedsize");
    const char *p = S("%s/x.add-cow", d);
    const uint64_t stored = 9 * 512 + 100;
    unsigned char h[TU_HDR_SIZE + 2], buf[8192], want[8192];

    tu_build_header(h, TU_MAGIC, 1, NULL, "x.raw", stored);
    h[TU_HDR_SIZE] = 0x01;              /* sector 0 */
    h[TU_HDR_SIZE + 1] = 0x03;          /* sector 8, and a stray bit for sector 9 */
    assert_int_equal(tu_write_file(p, h, sizeof(h)), 0);
    tu_make_raw(S("%s/x.raw", d), 8192, 151);

    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDONLY, NULL);
    assert_int_equal(addcow_get_size(img), 9 * 512);
    assert_int_equal(addcow_get_allocated_bytes(img), 2 * 512);
    EXPECT_VAL(addcow_pread(img, buf, sizeof(buf), 0), 9 * 512);
    memset(want, 0, sizeof(want));
    tu_fill_pattern(want, 512, 151, 0);
    tu_fill_pattern(want + 8 * 512, 512, 151, 8 * 512);
    assert_memory_equal(buf, want, 9 * 512);
    EXPECT_VAL(addcow_pread(img, buf, 10, 9 * 512), 0);
    assert_int_equal(addcow_close(img), 0);
}

static void test_create_failure_leaves_nothing(void **state)
{
    (void)state;
    const char *d = tu_subdir("createfail");
    const char *p = S("%s/c.add-cow", d);
    unsigned char want[4096];
    size_t len;

    tu_make_raw(S("%s/base.raw", d), 4096, 8);
    tu_make_raw(S("%s/keep.raw", d), 3000, 9);
    assert_int_equal(mkdir(S("%s/adir", d), 0755), 0);
    assert_int_equal(symlink("nowhere", S("%s/link.add-cow", d)), 0);
    const char *names = "adir,base.raw,keep.raw,link.add-cow";
    assert_string_equal(list_dir(d), names);

    /* Fails before anything is written: the backing file is missing. */
    assert_int_equal(addcow_create(p, 0, "missing.raw", "c.raw", NULL), -ENOENT);
    assert_string_equal(list_dir(d), names);
    /* The image file cannot be opened. */
    assert_int_equal(addcow_create(p, 4096, NULL, "adir", NULL), -EISDIR);
    assert_string_equal(list_dir(d), names);
    assert_int_equal(addcow_create(p, 4096, NULL, "nofolder/c.raw", NULL), -ENOENT);
    assert_string_equal(list_dir(d), names);
    /* The image file is the backing file: that file is untouched. */
    assert_int_equal(addcow_create(p, 8192, "base.raw", "base.raw", NULL), -EINVAL);
    assert_string_equal(list_dir(d), names);
    unsigned char *got = tu_read_file(S("%s/base.raw", d), &len);
    assert_non_null(got);
    tu_fill_pattern(want, 4096, 8, 0);
    assert_int_equal(len, 4096);
    assert_memory_equal(got, want, 4096);
    free(got);

    /* Fails at the very end: the name is taken (by a dangling symlink)
     * when the complete file is to be renamed into place.  The new image
     * file and the temporary file are removed; an existing image file is
     * kept. */
    assert_int_equal(addcow_create(S("%s/link.add-cow", d), 4096, NULL, "c.raw", NULL),
                     -EEXIST);
    assert_string_equal(list_dir(d), names);
    assert_int_equal(addcow_create(S("%s/link.add-cow", d), 4096, "base.raw", "keep.raw",
                                   NULL), -EEXIST);
    assert_string_equal(list_dir(d), names);
    char target[64];
    ssize_t n = readlink(S("%s/link.add-cow", d), target, sizeof(target) - 1);
    assert_int_equal(n, 7);
    target[n] = '\0';
    assert_string_equal(target, "nowhere");
    got = tu_read_file(S("%s/keep.raw", d), &len);
    assert_non_null(got);
    assert_true(len >= 3000);
    tu_fill_pattern(want, 3000, 9, 0);
    assert_memory_equal(got, want, 3000);
    free(got);

    /* Larger than the file system allows for the image file (ext4: 16 TiB). */
    int r = addcow_create(p, UINT64_C(1) << 50, NULL, "c.raw", NULL);
    if (r == 0) {
        printf("# this file system holds a 1 PiB sparse file: skipping that case\n");
        unlink(p);
        unlink(S("%s/c.raw", d));
    } else {
        assert_true(r < 0);
    }
    assert_string_equal(list_dir(d), names);
}

/* Relative paths are relative to the add-cow file's folder, not the CWD. */
static void test_relative_paths(void **state)
{
    (void)state;
    tu_subdir("rel");
    const char *d = tu_subdir("rel/img"), *cwd = tu_subdir("rel/cwd");
    char old[PATH_MAX];
    unsigned char model[4096];

    tu_make_raw(S("%s/base.raw", d), 4096, 11);
    tu_make_raw(S("%s/base.raw", cwd), 4096, 12);  /* a decoy */
    assert_non_null(getcwd(old, sizeof(old)));
    assert_int_equal(chdir(cwd), 0);

    const char *p = S("%s/r.add-cow", d);
    create_ok(p, 0, "base.raw", "r.raw", NULL);
    assert_int_equal(tu_file_size(S("%s/r.raw", d)), 4096);
    assert_int_equal(tu_file_size(S("%s/r.raw", cwd)), -ENOENT);

    tu_fill_pattern(model, sizeof(model), 11, 0);
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);
    assert_int_equal(addcow_get_size(img), 4096);
    check_disk(img, model, sizeof(model));
    EXPECT_VAL(addcow_pwrite(img, "hello", 5, 100), 5);
    memcpy(model + 100, "hello", 5);
    assert_int_equal(addcow_close(img), 0);

    /* Opened through a relative path from elsewhere. */
    img = tu_open_ok("../img/r.add-cow", ADDCOW_OPEN_RDONLY, NULL);
    assert_string_equal(addcow_get_image_file(img), "r.raw");
    assert_string_equal(addcow_get_backing_file(img), "base.raw");
    check_disk(img, model, sizeof(model));
    assert_int_equal(addcow_close(img), 0);

    /* Created through a relative path. */
    create_ok("../img/s.add-cow", 0, "base.raw", "s.raw", NULL);
    assert_int_equal(tu_file_size(S("%s/s.raw", d)), 4096);
    assert_int_equal(tu_file_size(S("%s/s.raw", cwd)), -ENOENT);
    assert_int_equal(tu_file_size(S("%s/s.add-cow", d)), TU_HDR_SIZE + 1);

    /* And from yet another folder, by absolute path. */
    assert_int_equal(chdir(tu_scratch()), 0);
    img = tu_open_ok(S("%s/s.add-cow", d), ADDCOW_OPEN_RDONLY, NULL);
    tu_fill_pattern(model, sizeof(model), 11, 0);
    check_disk(img, model, sizeof(model));
    assert_int_equal(addcow_close(img), 0);
    assert_int_equal(chdir(old), 0);
}

/* ---- reads and writes ------------------------------------------------------- */

static void test_read_past_end(void **state)
{
    (void)state;
    const char *d = tu_subdir("readend");
    const char *p = S("%s/x.add-cow", d);
    unsigned char data[4096], buf[8192];
    /* The backing file is longer than the disk: reads still stop at the end. */
    tu_make_raw(S("%s/base.raw", d), 8192, 13);
    create_ok(p, 4096, "base.raw", "x.raw", NULL);
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);
    tu_fill_pattern(data, sizeof(data), 13, 0);
    tu_fill_pattern(data + 1000, 1000, 14, 0);
    EXPECT_VAL(addcow_pwrite(img, data + 1000, 1000, 1000), 1000);

    const uint64_t past[] = { 4096, 4097, 8192, UINT64_C(1) << 40, UINT64_MAX - 10,
                              UINT64_MAX };
    for (size_t i = 0; i < sizeof(past) / sizeof(past[0]); i++) {
        EXPECT_VAL(addcow_pread(img, buf, 100, past[i]), 0);
        struct iovec v = { buf, 100 };
        EXPECT_VAL(addcow_preadv(img, &v, 1, past[i]), 0);
    }
    EXPECT_VAL(addcow_pread(img, buf, 100, 4050), 46);
    assert_memory_equal(buf, data + 4050, 46);
    EXPECT_VAL(addcow_pread(img, buf, sizeof(buf), 0), 4096);
    assert_memory_equal(buf, data, 4096);
    EXPECT_VAL(addcow_pread(img, buf, 1, 4095), 1);
    assert_int_equal(buf[0], data[4095]);
    struct iovec v[3] = { { buf, 50 }, { buf + 50, 50 }, { buf + 100, 50 } };
    EXPECT_VAL(addcow_preadv(img, v, 3, 4000), 96);
    assert_memory_equal(buf, data + 4000, 96);
    EXPECT_VAL(addcow_pread(img, buf, 0, 10), 0);
    assert_int_equal(addcow_close(img), 0);
}

/* Many small iovecs, random offsets, over a backing file; compared with a
 * byte model. */
static void test_vectored_io(void **state)
{
    (void)state;
    const char *d = tu_subdir("vectored");
    const char *p = S("%s/x.add-cow", d);
    const uint64_t size = 64 * 1024, bsize = 40001;
    uint64_t seed = tu_seed("test_vectored_io");
    unsigned char *model = calloc(1, size), *buf = malloc(size), *src = malloc(size);
    unsigned char *alloc = calloc(1, size / SECTOR);
    struct iovec *iov = malloc(300 * sizeof(*iov));
    assert_non_null(model);
    assert_non_null(buf);
    assert_non_null(src);
    assert_non_null(alloc);
    assert_non_null(iov);

    tu_make_raw(S("%s/base.raw", d), bsize, 21);
    tu_fill_pattern(model, bsize, 21, 0);
    create_ok(p, size, "base.raw", "x.raw", NULL);
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);

    unsigned rounds = tu_scale(60);
    for (unsigned it = 0; it < rounds; it++) {
        int n = 1 + (int)tu_rand_below(&seed, 300);
        uint64_t total = 0;
        for (int i = 0; i < n; i++) {
            size_t len = (size_t)tu_rand_below(&seed, 41);   /* 0..40, zero-length too */
            iov[i].iov_len = len;
            total += len;
        }
        uint64_t off = tu_rand_below(&seed, size - total + 1);
        bool write = tu_rand_below(&seed, 2) == 0;
        uint64_t pos = 0;
        if (write)
            tu_fill_pattern(src, (size_t)total, (uint32_t)(100 + it), 0);
        for (int i = 0; i < n; i++) {
            iov[i].iov_base = (write ? src : buf) + pos;
            pos += iov[i].iov_len;
        }
        if (write) {
            EXPECT_VAL(addcow_pwritev(img, iov, n, off), total);
            memcpy(model + off, src, (size_t)total);
            for (uint64_t s = off / SECTOR; total && s <= (off + total - 1) / SECTOR; s++)
                alloc[s] = 1;
        } else {
            memset(buf, 0xEE, (size_t)total);
            EXPECT_VAL(addcow_preadv(img, iov, n, off), total);
            assert_memory_equal(buf, model + off, (size_t)total);
        }
    }
    uint64_t nalloc = 0;
    for (uint64_t s = 0; s < size / SECTOR; s++)
        nalloc += alloc[s];
    assert_int_equal(addcow_get_allocated_bytes(img), nalloc * SECTOR);
    check_disk(img, model, size);
    assert_int_equal(addcow_close(img), 0);
    img = tu_open_ok(p, ADDCOW_OPEN_RDONLY, NULL);
    check_disk(img, model, size);
    assert_int_equal(addcow_get_allocated_bytes(img), nalloc * SECTOR);
    for (uint64_t s = 0; s < size / SECTOR; s++)
        assert_int_equal(disk_bit(p, s), alloc[s]);
    assert_int_equal(addcow_close(img), 0);
    free(model);
    free(buf);
    free(src);
    free(alloc);
    free(iov);
}

/* A partial-sector write keeps the rest of the sector as it read before:
 * backing data, or zeros. */
static void test_partial_sector_cow(void **state)
{
    (void)state;
    const char *d = tu_subdir("cow");
    const char *p = S("%s/x.add-cow", d);
    const size_t size = 16384, bsize = 4096 + 200;   /* backing ends inside sector 8 */
    unsigned char model[16384], data[2000];

    tu_make_raw(S("%s/base.raw", d), bsize, 31);
    memset(model, 0, sizeof(model));
    tu_fill_pattern(model, bsize, 31, 0);
    create_ok(p, size, "base.raw", "x.raw", NULL);
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);
    tu_fill_pattern(data, sizeof(data), 32, 0);

    struct { uint64_t off; size_t len; } w[] = {
        { 100, 10 },            /* inside sector 0 */
        { 1024 + 300, 1000 },   /* sectors 2..4, both ends partial */
        { 4096 + 50, 10 },      /* sector 8: backing, then past its end */
        { 4096 + 300, 5 },      /* sector 8 again: already allocated */
        { 6000, 1 },            /* past the backing file */
        { 511, 2 },             /* across sectors 0 and 1 */
    };
    for (size_t i = 0; i < sizeof(w) / sizeof(w[0]); i++) {
        EXPECT_VAL(addcow_pwrite(img, data, w[i].len, w[i].off), w[i].len);
        memcpy(model + w[i].off, data, w[i].len);
        check_disk(img, model, size);
    }
    /* Sectors 0-4, 8 and 11 are allocated. */
    assert_int_equal(addcow_get_allocated_bytes(img), 7 * 512);
    assert_int_equal(addcow_close(img), 0);

    /* The image file holds whole sectors, copied data included. */
    size_t len;
    unsigned char *raw = tu_read_file(S("%s/x.raw", d), &len);
    assert_non_null(raw);
    assert_true(len >= 12 * 512);
    const int sectors[] = { 0, 1, 2, 3, 4, 8, 11 };
    for (size_t i = 0; i < sizeof(sectors) / sizeof(sectors[0]); i++)
        assert_memory_equal(raw + sectors[i] * 512, model + sectors[i] * 512, 512);
    free(raw);
    check_reopened(p, model, size);

    /* No backing file, and an image file full of old bytes: the rest of a
     * partly written sector reads zeros, not those bytes. */
    const char *q = S("%s/y.add-cow", d);
    tu_make_raw(S("%s/y.raw", d), size, 33);
    create_ok(q, size, NULL, "y.raw", NULL);
    img = tu_open_ok(q, ADDCOW_OPEN_RDWR, NULL);
    memset(model, 0, sizeof(model));
    EXPECT_VAL(addcow_pwrite(img, data, 10, 100), 10);
    memcpy(model + 100, data, 10);
    EXPECT_VAL(addcow_pwrite(img, data, 700, 3000), 700);
    memcpy(model + 3000, data, 700);
    check_disk(img, model, size);
    assert_int_equal(addcow_close(img), 0);
    check_reopened(q, model, size);
}

/* ---- write_zeroes ------------------------------------------------------------ */

static void test_write_zeroes_unmap(void **state)
{
    (void)state;
    const char *d = tu_subdir("zeroesunmap");
    const char *p = S("%s/x.add-cow", d), *raw = S("%s/x.raw", d);
    const uint64_t size = 4 << 20, wlen = 2 << 20;
    unsigned char *model = calloc(1, size);
    assert_non_null(model);
    bool punch = can_punch_holes(d);

    create_ok(p, size, NULL, "x.raw", NULL);
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);
    tu_fill_pattern(model, wlen, 41, 0);
    EXPECT_VAL(addcow_pwrite(img, model, wlen, 0), wlen);
    assert_int_equal(addcow_flush(img), 0);
    int64_t before = blocks_of(raw);

    EXPECT_VAL(addcow_write_zeroes(img, 100, wlen - 200, ADDCOW_ZEROES_MAY_UNMAP), 0);
    memset(model + 100, 0, wlen - 200);
    check_disk(img, model, size);
    /* Every sector is still allocated (it reads zeros from the image file). */
    assert_int_equal(addcow_get_allocated_bytes(img), wlen);
    assert_int_equal(addcow_flush(img), 0);
    int64_t after = blocks_of(raw);
    if (punch) {
        if (!((after + 2048) * 512 <= before * 512)) {
            print_error("image file blocks: %" PRId64 " before, %" PRId64 " after: expected "
                        "at least 1 MiB freed\n", before, after);
            fail();
        }
    } else {
        printf("# this file system cannot punch holes: st_blocks check skipped\n");
    }
    /* Over an area that is already unallocated zeros: stays unallocated. */
    EXPECT_VAL(addcow_write_zeroes(img, 3 << 20, 4096 + 7, ADDCOW_ZEROES_MAY_UNMAP), 0);
    assert_int_equal(addcow_get_allocated_bytes(img), wlen);
    assert_int_equal(addcow_close(img), 0);
    check_reopened(p, model, size);

    /* Over backing data: reads zeros, the backing data is hidden. */
    const char *q = S("%s/y.add-cow", d);
    const uint64_t bsize = 64 * 1024 + 3, ysize = 128 * 1024;
    tu_make_raw(S("%s/base.raw", d), bsize, 42);
    memset(model, 0, ysize);
    tu_fill_pattern(model, bsize, 42, 0);
    create_ok(q, ysize, "base.raw", "y.raw", NULL);
    img = tu_open_ok(q, ADDCOW_OPEN_RDWR, NULL);
    EXPECT_VAL(addcow_write_zeroes(img, 1000, 20000, ADDCOW_ZEROES_MAY_UNMAP), 0);
    memset(model + 1000, 0, 20000);
    /* Across the backing file's end, into the area past it. */
    EXPECT_VAL(addcow_write_zeroes(img, bsize - 1000, 3000, ADDCOW_ZEROES_MAY_UNMAP), 0);
    memset(model + bsize - 1000, 0, 3000);
    check_disk(img, model, ysize);
    assert_int_equal(addcow_close(img), 0);
    check_reopened(q, model, ysize);
    free(model);
}

static void test_write_zeroes_plain(void **state)
{
    (void)state;
    const char *d = tu_subdir("zeroes");
    const char *p = S("%s/x.add-cow", d);
    const uint64_t size = 256 * 1024, bsize = 100000;
    unsigned char *model = calloc(1, size), *data = malloc(size);
    assert_non_null(model);
    assert_non_null(data);

    tu_make_raw(S("%s/base.raw", d), bsize, 43);
    tu_fill_pattern(model, bsize, 43, 0);
    create_ok(p, size, "base.raw", "x.raw", NULL);
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);
    tu_fill_pattern(data, size, 44, 0);
    EXPECT_VAL(addcow_pwrite(img, data, 50000, 20000), 50000);
    memcpy(model + 20000, data, 50000);

    struct { uint64_t off, len; } z[] = {
        { 30000, 10000 },       /* written data */
        { 10, 5 },              /* backing data, inside a sector */
        { 65000, 10000 },       /* written, then backing */
        { 99000, 3000 },        /* across the backing end */
        { 200000, 4096 },       /* unallocated zeros */
        { 0, 0 },               /* nothing */
    };
    for (size_t i = 0; i < sizeof(z) / sizeof(z[0]); i++) {
        EXPECT_VAL(addcow_write_zeroes(img, z[i].off, z[i].len, 0), 0);
        memset(model + z[i].off, 0, z[i].len);
        check_disk(img, model, size);
    }
    assert_int_equal(addcow_close(img), 0);
    check_reopened(p, model, size);
    free(model);
    free(data);
}

/* ---- truncate ---------------------------------------------------------------- */

static void test_truncate_grow_over_longer_backing(void **state)
{
    (void)state;
    const char *d = tu_subdir("grow");
    const char *p = S("%s/x.add-cow", d);
    const uint64_t bsize = 20000, small = 4096, big = 32768;
    unsigned char model[32768];

    tu_make_raw(S("%s/base.raw", d), bsize, 51);
    memset(model, 0, sizeof(model));
    tu_fill_pattern(model, small, 51, 0);
    create_ok(p, small, "base.raw", "x.raw", NULL);
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);
    EXPECT_VAL(addcow_pwrite(img, "abc", 3, 600), 3);
    memcpy(model + 600, "abc", 3);
    assert_int_equal(addcow_truncate(img, big), 0);
    assert_int_equal(addcow_get_size(img), big);
    /* The grown area reads zeros, not the backing file's bytes there. */
    check_disk(img, model, big);
    /* ... and no byte of it reports backing data. */
    for (uint64_t off = small; off < big;) {
        uint64_t run = 0;
        int st = addcow_block_status(img, off, big - off, &run);
        assert_true(st >= 0);
        assert_true(st == ADDCOW_STATUS_ALLOCATED || st == ADDCOW_STATUS_ZERO);
        assert_true(run > 0 && run <= big - off);
        off += run;
    }
    assert_int_equal(tu_file_size(p), TU_HDR_SIZE + tu_bitmap_len(big));
    /* A write into the grown area, then it is still zeros around it. */
    EXPECT_VAL(addcow_pwrite(img, "xyz", 3, 10000), 3);
    memcpy(model + 10000, "xyz", 3);
    check_disk(img, model, big);
    assert_int_equal(addcow_close(img), 0);

    img = tu_open_ok(p, ADDCOW_OPEN_RDONLY, NULL);
    assert_int_equal(addcow_get_size(img), big);
    check_disk(img, model, big);
    assert_int_equal(addcow_close(img), 0);
    unsigned char *b = tu_read_file(p, NULL);
    assert_non_null(b);
    assert_int_equal(tu_get_be(b + TU_OFF_SIZE, 8), big);
    free(b);

    /* The image file is longer than the disk and holds old bytes past its
     * end (create keeps an existing image file): growing must not let
     * them show. */
    const char *q = S("%s/y.add-cow", d);
    tu_make_raw(S("%s/y.raw", d), big, 54);
    create_ok(q, small, "base.raw", "y.raw", NULL);
    img = tu_open_ok(q, ADDCOW_OPEN_RDWR, NULL);
    assert_int_equal(addcow_truncate(img, big), 0);
    memset(model, 0, sizeof(model));
    tu_fill_pattern(model, small, 51, 0);
    check_disk(img, model, big);
    assert_int_equal(addcow_close(img), 0);
    check_reopened(q, model, big);
}

static void test_truncate_shrink_then_grow(void **state)
{
    (void)state;
    const char *d = tu_subdir("shrink");
    unsigned char model[16384], data[16384];

    /* No backing file. */
    const char *p = S("%s/x.add-cow", d);
    create_ok(p, 16384, NULL, "x.raw", NULL);
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);
    tu_fill_pattern(data, sizeof(data), 52, 0);
    EXPECT_VAL(addcow_pwrite(img, data, sizeof(data), 0), sizeof(data));
    assert_int_equal(addcow_truncate(img, 8192), 0);
    assert_int_equal(addcow_close(img), 0);
    /* The smaller size is on disk. */
    unsigned char *hb = tu_read_file(p, NULL);
    assert_non_null(hb);
    assert_int_equal(tu_get_be(hb + TU_OFF_SIZE, 8), 8192);
    free(hb);
    img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);
    assert_int_equal(addcow_get_size(img), 8192);
    check_disk(img, data, 8192);
    assert_int_equal(addcow_truncate(img, 4096), 0);
    assert_int_equal(addcow_get_size(img), 4096);
    EXPECT_VAL(addcow_pread(img, model, 100, 4096), 0);
    EXPECT_VAL(addcow_pread(img, model, 200, 4000), 96);
    assert_int_equal(addcow_get_allocated_bytes(img), 4096);
    assert_int_equal(tu_file_size(p), TU_HDR_SIZE + 1);
    assert_true(tu_file_size(S("%s/x.raw", d)) <= 4096);
    assert_int_equal(addcow_truncate(img, 16384), 0);
    memset(model, 0, sizeof(model));
    memcpy(model, data, 4096);
    check_disk(img, model, sizeof(model));
    assert_int_equal(addcow_close(img), 0);
    check_reopened(p, model, sizeof(model));

    /* Shrink and grow in one session, and with a longer backing file:
     * neither the old data nor the backing data come back. */
    const char *q = S("%s/y.add-cow", d);
    tu_make_raw(S("%s/base.raw", d), 16384, 53);
    create_ok(q, 16384, "base.raw", "y.raw", NULL);
    img = tu_open_ok(q, ADDCOW_OPEN_RDWR, NULL);
    EXPECT_VAL(addcow_pwrite(img, data, 3000, 6000), 3000);
    assert_int_equal(addcow_flush(img), 0);
    assert_int_equal(addcow_truncate(img, 5120), 0);
    assert_int_equal(addcow_truncate(img, 16384), 0);
    memset(model, 0, sizeof(model));
    tu_fill_pattern(model, 5120, 53, 0);
    check_disk(img, model, sizeof(model));
    assert_int_equal(addcow_close(img), 0);
    check_reopened(q, model, sizeof(model));
}

/* ---- block_status ------------------------------------------------------------- */

struct smodel {
    uint64_t size, bsize;
    const unsigned char *alloc;      /* one byte per sector */
};

static unsigned model_status(const struct smodel *m, uint64_t b)
{
    if (m->alloc[b / SECTOR])
        return ADDCOW_STATUS_ALLOCATED;
    return b < m->bsize ? 0 : ADDCOW_STATUS_ZERO;
}

/* The longest run of equal status from off, at most len, inside the disk. */
static uint64_t model_run(const struct smodel *m, uint64_t off, uint64_t len, unsigned *st)
{
    uint64_t end = len > m->size - off ? m->size : off + len;
    unsigned s = model_status(m, off);
    uint64_t x = off;
    while (x < end && model_status(m, x) == s) {
        /* Status is constant up to the next sector boundary or backing end. */
        uint64_t nb = (x / SECTOR + 1) * SECTOR;
        if (m->bsize > x && m->bsize < nb)
            nb = m->bsize;
        x = nb < end ? nb : end;
    }
    *st = s;
    return x - off;
}

static void check_status_at(addcow_image *img, const struct smodel *m, uint64_t off,
                            uint64_t len, const char *file, int line)
{
    unsigned want_st;
    uint64_t want = model_run(m, off, len, &want_st), run = 0;
    int st = addcow_block_status(img, off, len, &run);
    if (st != (int)want_st || run != want) {
        print_error("%s:%d: block_status(%" PRIu64 ", %" PRIu64 ") = %d run %" PRIu64
                    ", expected %u run %" PRIu64 " (%s)\n", file, line, off, len, st, run,
                    want_st, want, st < 0 ? addcow_last_error() : "");
        fail();
    }
}
#define check_status(img, m, off, len) check_status_at((img), (m), (off), (len), __FILE__, \
                                                       __LINE__)

static void expect_run(addcow_image *img, uint64_t off, uint64_t len, int st, uint64_t run)
{
    uint64_t got = 0;
    assert_int_equal(addcow_block_status(img, off, len, &got), st);
    assert_int_equal(got, run);
}

static void test_block_status(void **state)
{
    (void)state;
    const char *d = tu_subdir("status");
    const char *p = S("%s/x.add-cow", d);
    const uint64_t size = 65536;
    unsigned char data[32768];

    /* Backing file ends at 10000, inside sector 19. */
    tu_make_raw(S("%s/base.raw", d), 10000, 61);
    create_ok(p, size, "base.raw", "x.raw", NULL);
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);
    memset(data, 7, sizeof(data));
    EXPECT_VAL(addcow_pwrite(img, data, 1536, 1024), 1536);        /* sectors 2..4 */
    EXPECT_VAL(addcow_pwrite(img, data, 30720, 20480), 30720);     /* sectors 40..99 */

    /* The walk, computed by hand. */
    expect_run(img, 0, size, 0, 1024);
    expect_run(img, 1024, size - 1024, ADDCOW_STATUS_ALLOCATED, 1536);
    expect_run(img, 2560, size - 2560, 0, 10000 - 2560);
    expect_run(img, 10000, size - 10000, ADDCOW_STATUS_ZERO, 20480 - 10000);
    expect_run(img, 20480, size - 20480, ADDCOW_STATUS_ALLOCATED, 30720);
    expect_run(img, 51200, size - 51200, ADDCOW_STATUS_ZERO, size - 51200);
    /* From inside runs, and cut by length. */
    expect_run(img, 1500, size - 1500, ADDCOW_STATUS_ALLOCATED, 2560 - 1500);
    expect_run(img, 9999, 10, 0, 1);
    expect_run(img, 9728, size - 9728, 0, 272);
    expect_run(img, 10001, size - 10001, ADDCOW_STATUS_ZERO, 20480 - 10001);
    expect_run(img, 0, 100, 0, 100);
    expect_run(img, 20480 + 1, 5, ADDCOW_STATUS_ALLOCATED, 5);
    expect_run(img, size - 1, 1, ADDCOW_STATUS_ZERO, 1);
    /* A length past the end: the run stops at the end. */
    expect_run(img, 51200, UINT64_MAX, ADDCOW_STATUS_ZERO, size - 51200);
    expect_run(img, 60000, 100000, ADDCOW_STATUS_ZERO, size - 60000);
    /* Allocating the sector with the backing end removes that split. */
    EXPECT_VAL(addcow_pwrite(img, data, 1, 9800), 1);
    expect_run(img, 2560, size - 2560, 0, 9728 - 2560);
    expect_run(img, 9728, size - 9728, ADDCOW_STATUS_ALLOCATED, 512);
    expect_run(img, 10240, size - 10240, ADDCOW_STATUS_ZERO, 20480 - 10240);
    assert_int_equal(addcow_close(img), 0);

    /* An add-cow backing file: its virtual size is where backing data ends,
     * whatever its own bitmap holds. */
    const char *b = S("%s/b.add-cow", d), *t = S("%s/t.add-cow", d);
    create_ok(b, 5120, NULL, "b.raw", NULL);
    create_ok(t, 16384, "b.add-cow", "t.raw", NULL);
    img = tu_open_ok(t, ADDCOW_OPEN_RDONLY, NULL);
    expect_run(img, 0, 16384, 0, 5120);
    expect_run(img, 5120, 16384 - 5120, ADDCOW_STATUS_ZERO, 16384 - 5120);
    assert_int_equal(addcow_close(img), 0);
}

/* Random allocations over a random (odd) backing length, queried at random
 * places against the model; and full walks whose runs must alternate. */
static void test_block_status_random(void **state)
{
    (void)state;
    const char *d = tu_subdir("statusrandom");
    uint64_t seed = tu_seed("test_block_status_random");
    const uint64_t sectors = 300, size = sectors * SECTOR;
    unsigned char *alloc = calloc(1, sectors), *data = calloc(1, size);
    assert_non_null(alloc);
    assert_non_null(data);
    unsigned rounds = tu_scale(12);

    for (unsigned round = 0; round < rounds; round++) {
        struct smodel m = { size, tu_rand_below(&seed, size + 20000), alloc };
        if (round == 0)
            m.bsize = 0;
        const char *p = S("%s/x%u.add-cow", d, round);
        tu_make_raw(S("%s/base%u.raw", d, round), (size_t)m.bsize, round);
        create_ok(p, size, S("base%u.raw", round), S("x%u.raw", round), NULL);
        addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);
        memset(alloc, 0, sectors);
        /* Runs of allocated sectors of all lengths, crossing 64-bit words. */
        unsigned nwrites = (unsigned)tu_rand_below(&seed, 25);
        for (unsigned i = 0; i < nwrites; i++) {
            uint64_t off = tu_rand_below(&seed, size);
            uint64_t len = 1 + tu_rand_below(&seed, tu_rand_below(&seed, 4) ? 3000 : 70000);
            if (len > size - off)
                len = size - off;
            EXPECT_VAL(addcow_pwrite(img, data, len, off), len);
            for (uint64_t s = off / SECTOR; s <= (off + len - 1) / SECTOR; s++)
                alloc[s] = 1;
        }
        for (unsigned q = 0; q < 200; q++) {
            uint64_t off = tu_rand_below(&seed, size);
            uint64_t len = 1 + tu_rand_below(&seed, size - off);
            if (q % 10 == 0)
                len = UINT64_MAX;
            check_status(img, &m, off, len);
        }
        uint64_t nalloc = 0;
        for (uint64_t s = 0; s < sectors; s++)
            nalloc += alloc[s];
        assert_int_equal(addcow_get_allocated_bytes(img), nalloc * SECTOR);
        /* Full walk: consecutive runs differ (each run is maximal). */
        int prev = -1;
        for (uint64_t off = 0; off < size;) {
            uint64_t run = 0;
            check_status(img, &m, off, size - off);
            int st = addcow_block_status(img, off, size - off, &run);
            assert_true(st != prev);
            prev = st;
            off += run;
        }
        assert_int_equal(addcow_close(img), 0);
    }
    free(alloc);
    free(data);
}

static void test_allocated_bytes(void **state)
{
    (void)state;
    const char *d = tu_subdir("allocated");
    const char *p = S("%s/x.add-cow", d);
    unsigned char data[8192];
    memset(data, 0x5A, sizeof(data));
    tu_make_raw(S("%s/base.raw", d), 3000, 71);
    create_ok(p, 1 << 20, "base.raw", "x.raw", NULL);
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);

    assert_int_equal(addcow_get_allocated_bytes(img), 0);
    EXPECT_VAL(addcow_pwrite(img, data, 1, 0), 1);
    assert_int_equal(addcow_get_allocated_bytes(img), 512);
    EXPECT_VAL(addcow_pwrite(img, data, 1, 511), 1);
    assert_int_equal(addcow_get_allocated_bytes(img), 512);
    EXPECT_VAL(addcow_pwrite(img, data, 2, 511), 2);
    assert_int_equal(addcow_get_allocated_bytes(img), 1024);
    EXPECT_VAL(addcow_pwrite(img, data, 4096, 10000), 4096);       /* sectors 19..27 */
    assert_int_equal(addcow_get_allocated_bytes(img), 11 * 512);
    EXPECT_VAL(addcow_pwrite(img, data, 512, (1 << 20) - 512), 512);
    assert_int_equal(addcow_get_allocated_bytes(img), 12 * 512);
    EXPECT_VAL(addcow_pwrite(img, data, 0, 5000), 0);
    assert_int_equal(addcow_get_allocated_bytes(img), 12 * 512);
    assert_int_equal(addcow_close(img), 0);
    img = tu_open_ok(p, ADDCOW_OPEN_RDONLY, NULL);
    assert_int_equal(addcow_get_allocated_bytes(img), 12 * 512);
    assert_int_equal(addcow_close(img), 0);
}

/* ---- cache modes and persistence ---------------------------------------------- */

static void test_writethrough(void **state)
{
    (void)state;
    const char *d = tu_subdir("writethrough");
    const char *p = S("%s/x.add-cow", d);
    tu_make_raw(S("%s/base.raw", d), 8192, 81);
    create_ok(p, 1 << 20, "base.raw", "x.raw", NULL);
    addcow_options *o = tu_options1("cache", "writethrough");
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, o);

    assert_int_equal(disk_bit(p, 5), 0);
    EXPECT_VAL(addcow_pwrite(img, "a", 1, 5 * 512 + 3), 1);
    assert_int_equal(disk_bit(p, 5), 1);
    assert_int_equal(disk_bit(p, 4), 0);
    assert_int_equal(disk_bit(p, 6), 0);
    char two[2] = { 'b', 'c' };
    struct iovec v[2] = { { two, 1 }, { two + 1, 1 } };
    EXPECT_VAL(addcow_pwritev(img, v, 2, 1000 * 512), 2);
    assert_int_equal(disk_bit(p, 1000), 1);
    /* write_zeroes over backing data allocates, and that reaches the disk too. */
    EXPECT_VAL(addcow_write_zeroes(img, 2 * 512, 512, 0), 0);
    assert_int_equal(disk_bit(p, 2), 1);
    /* So does one that may unmap whole sectors. */
    EXPECT_VAL(addcow_write_zeroes(img, 8 * 512, 4 * 512, ADDCOW_ZEROES_MAY_UNMAP), 0);
    for (uint64_t s = 8; s < 12; s++)
        assert_int_equal(disk_bit(p, s), 1);
    assert_int_equal(disk_bit(p, 12), 0);
    assert_int_equal(addcow_close(img), 0);
    addcow_options_free(o);
}

static void test_writeback_flush(void **state)
{
    (void)state;
    const char *d = tu_subdir("writeback");
    const char *p = S("%s/x.add-cow", d);
    create_ok(p, 1 << 20, NULL, "x.raw", NULL);
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);

    EXPECT_VAL(addcow_pwrite(img, "a", 1, 5 * 512), 1);
    assert_int_equal(disk_bit(p, 5), 0);
    assert_int_equal(addcow_flush(img), 0);
    assert_int_equal(disk_bit(p, 5), 1);
    EXPECT_VAL(addcow_pwrite(img, "b", 1, 1500 * 512 + 511), 1);
    assert_int_equal(disk_bit(p, 1500), 0);
    assert_int_equal(addcow_flush(img), 0);
    assert_int_equal(disk_bit(p, 1500), 1);
    assert_int_equal(disk_bit(p, 5), 1);
    /* A flush with nothing dirty is fine. */
    assert_int_equal(addcow_flush(img), 0);
    assert_int_equal(addcow_close(img), 0);
}

static void test_cache_none(void **state)
{
    (void)state;
    const char *d = tu_subdir("cachenone");
    const char *p = S("%s/x.add-cow", d);
    const size_t size = 256 * 1024, bsize = 10000;
    unsigned char *model = calloc(1, size), *aligned = NULL, *raw = malloc(8192 + 1);
    assert_non_null(model);
    assert_non_null(raw);
    assert_int_equal(posix_memalign((void **)&aligned, 4096, 65536), 0);

    tu_make_raw(S("%s/base.raw", d), bsize, 91);
    tu_fill_pattern(model, bsize, 91, 0);
    create_ok(p, size, "base.raw", "x.raw", NULL);
    addcow_options *o = tu_options1("cache", "none");
    addcow_image *img = NULL;
    int r = addcow_open(p, ADDCOW_OPEN_RDWR, o, &img);
    if (r == -EINVAL) {
        printf("# O_DIRECT is not supported here (%s): skipped\n", addcow_last_error());
        addcow_options_free(o);
        free(model);
        free(raw);
        free(aligned);
        skip();
    }
    assert_int_equal(r, 0);

    /* Aligned buffers, offsets and lengths. */
    tu_fill_pattern(aligned, 65536, 92, 0);
    EXPECT_VAL(addcow_pwrite(img, aligned, 65536, 65536), 65536);
    memcpy(model + 65536, aligned, 65536);
    memset(aligned, 0, 65536);
    EXPECT_VAL(addcow_pread(img, aligned, 65536, 65536), 65536);
    assert_memory_equal(aligned, model + 65536, 65536);
    /* Unaligned everything, over the backing file and its odd end. */
    unsigned char *u = raw + 1;
    tu_fill_pattern(u, 8192, 93, 0);
    EXPECT_VAL(addcow_pwrite(img, u, 1000, 777), 1000);
    memcpy(model + 777, u, 1000);
    EXPECT_VAL(addcow_pwrite(img, u, 333, 9900), 333);
    memcpy(model + 9900, u, 333);
    EXPECT_VAL(addcow_pwrite(img, u, 4096, 131072 + 100), 4096);
    memcpy(model + 131072 + 100, u, 4096);
    EXPECT_VAL(addcow_pread(img, u, 5000, 501), 5000);
    assert_memory_equal(u, model + 501, 5000);
    EXPECT_VAL(addcow_write_zeroes(img, 65536 + 10, 10000, ADDCOW_ZEROES_MAY_UNMAP), 0);
    memset(model + 65536 + 10, 0, 10000);
    check_disk(img, model, size);
    assert_int_equal(addcow_close(img), 0);

    check_reopened(p, model, size);
    img = tu_open_ok(p, ADDCOW_OPEN_RDONLY, o);
    check_disk(img, model, size);
    assert_int_equal(addcow_close(img), 0);
    addcow_options_free(o);
    free(model);
    free(raw);
    free(aligned);
}

static void test_backing_format_raw(void **state)
{
    (void)state;
    const char *d = tu_subdir("bfmt");
    const char *b = S("%s/b.add-cow", d), *t = S("%s/t.add-cow", d);
    unsigned char model[8192], pat[4096];

    create_ok(b, 4096, NULL, "b.raw", NULL);
    addcow_image *img = tu_open_ok(b, ADDCOW_OPEN_RDWR, NULL);
    tu_fill_pattern(pat, sizeof(pat), 101, 0);
    EXPECT_VAL(addcow_pwrite(img, pat, sizeof(pat), 0), sizeof(pat));
    assert_int_equal(addcow_close(img), 0);
    create_ok(t, 8192, "b.add-cow", "t.raw", NULL);

    /* raw: the add-cow file's own bytes (2069 of them), then zeros. */
    size_t blen;
    unsigned char *bbytes = tu_read_file(b, &blen);
    assert_non_null(bbytes);
    assert_int_equal(blen, TU_HDR_SIZE + 1);
    memset(model, 0, sizeof(model));
    memcpy(model, bbytes, blen);
    free(bbytes);
    addcow_options *o = tu_options1("backing-format", "raw");
    img = tu_open_ok(t, ADDCOW_OPEN_RDONLY, o);
    check_disk(img, model, sizeof(model));
    expect_run(img, 0, 8192, 0, TU_HDR_SIZE + 1);
    expect_run(img, TU_HDR_SIZE + 1, 8192 - TU_HDR_SIZE - 1, ADDCOW_STATUS_ZERO,
               8192 - TU_HDR_SIZE - 1);
    assert_int_equal(addcow_close(img), 0);
    addcow_options_free(o);

    /* auto and add-cow: the backing image's virtual disk. */
    memset(model, 0, sizeof(model));
    memcpy(model, pat, sizeof(pat));
    img = tu_open_ok(t, ADDCOW_OPEN_RDONLY, NULL);
    check_disk(img, model, sizeof(model));
    expect_run(img, 0, 8192, 0, 4096);
    assert_int_equal(addcow_close(img), 0);
    o = tu_options1("backing-format", "add-cow");
    img = tu_open_ok(t, ADDCOW_OPEN_RDONLY, o);
    check_disk(img, model, sizeof(model));
    assert_int_equal(addcow_close(img), 0);
    addcow_options_free(o);
}

static void test_chain_read(void **state)
{
    (void)state;
    const char *d = tu_subdir("chain");
    unsigned char model[8192], data[512];
    tu_make_raw(S("%s/base.raw", d), 5000, 111);
    memset(model, 0, sizeof(model));
    tu_fill_pattern(model, 5000, 111, 0);

    const char *mid = S("%s/mid.add-cow", d), *top = S("%s/top.add-cow", d);
    create_ok(mid, 8192, "base.raw", "mid.raw", NULL);
    addcow_image *img = tu_open_ok(mid, ADDCOW_OPEN_RDWR, NULL);
    tu_fill_pattern(data, sizeof(data), 112, 0);
    EXPECT_VAL(addcow_pwrite(img, data, 100, 1024 + 50), 100);      /* sector 2 */
    memcpy(model + 1024 + 50, data, 100);
    assert_int_equal(addcow_close(img), 0);

    create_ok(top, 0, "mid.add-cow", "top.raw", NULL);
    img = tu_open_ok(top, ADDCOW_OPEN_RDWR, NULL);
    assert_int_equal(addcow_get_size(img), 8192);
    check_disk(img, model, sizeof(model));
    tu_fill_pattern(data, sizeof(data), 113, 0);
    EXPECT_VAL(addcow_pwrite(img, data, 10, 1024 + 500), 10);      /* sector 2, COW */
    memcpy(model + 1024 + 500, data, 10);
    EXPECT_VAL(addcow_pwrite(img, data, 10, 4990), 10);            /* sector 9 */
    memcpy(model + 4990, data, 10);
    check_disk(img, model, sizeof(model));
    assert_int_equal(addcow_get_allocated_bytes(img), 1024);
    assert_int_equal(addcow_close(img), 0);
    /* The middle image is unchanged. */
    img = tu_open_ok(mid, ADDCOW_OPEN_RDONLY, NULL);
    assert_int_equal(addcow_get_allocated_bytes(img), 512);
    assert_int_equal(addcow_close(img), 0);
}

static void test_reopen(void **state)
{
    (void)state;
    const char *d = tu_subdir("reopen");
    const char *p = S("%s/x.add-cow", d);
    const size_t size = 128 * 1024;
    unsigned char *model = calloc(1, size), data[3000];
    assert_non_null(model);
    tu_make_raw(S("%s/base.raw", d), 50000, 121);
    tu_fill_pattern(model, 50000, 121, 0);
    create_ok(p, size, "base.raw", "x.raw", NULL);

    for (int round = 0; round < 3; round++) {
        addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);
        check_disk(img, model, size);
        tu_fill_pattern(data, sizeof(data), 122 + (uint32_t)round, 0);
        uint64_t off = 12345 + (uint64_t)round * 30011;
        EXPECT_VAL(addcow_pwrite(img, data, sizeof(data), off), sizeof(data));
        memcpy(model + off, data, sizeof(data));
        assert_int_equal(addcow_close(img), 0);
    }
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);
    check_disk(img, model, size);
    assert_int_equal(addcow_close(img), 0);
    free(model);
}

static void test_readonly_reads(void **state)
{
    (void)state;
    const char *d = tu_subdir("rdonly");
    const char *p = S("%s/x.add-cow", d);
    unsigned char model[16384], data[2000];
    tu_make_raw(S("%s/base.raw", d), 7000, 131);
    memset(model, 0, sizeof(model));
    tu_fill_pattern(model, 7000, 131, 0);
    create_ok(p, sizeof(model), "base.raw", "x.raw", NULL);
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);
    tu_fill_pattern(data, sizeof(data), 132, 0);
    EXPECT_VAL(addcow_pwrite(img, data, sizeof(data), 6000), sizeof(data));
    memcpy(model + 6000, data, sizeof(data));
    assert_int_equal(addcow_close(img), 0);

    addcow_image *a = tu_open_ok(p, ADDCOW_OPEN_RDONLY, NULL);
    addcow_image *b = tu_open_ok(p, ADDCOW_OPEN_RDONLY, NULL);
    check_disk(a, model, sizeof(model));
    check_disk(b, model, sizeof(model));
    assert_int_equal(addcow_get_size(a), sizeof(model));
    assert_int_equal(addcow_get_allocated_bytes(a), 5 * 512);    /* sectors 11..15 */
    expect_run(a, 0, sizeof(model), 0, 11 * 512);
    expect_run(a, 11 * 512, sizeof(model) - 11 * 512, ADDCOW_STATUS_ALLOCATED, 5 * 512);
    expect_run(a, 16 * 512, sizeof(model) - 16 * 512, ADDCOW_STATUS_ZERO,
               sizeof(model) - 16 * 512);
    assert_int_equal(addcow_close(a), 0);
    assert_int_equal(addcow_close(b), 0);
}

static void test_close_flushes(void **state)
{
    (void)state;
    const char *d = tu_subdir("closeflush");
    const char *p = S("%s/x.add-cow", d);
    unsigned char data[512];
    create_ok(p, 1 << 20, NULL, "x.raw", NULL);
    addcow_image *img = tu_open_ok(p, ADDCOW_OPEN_RDWR, NULL);
    tu_fill_pattern(data, sizeof(data), 141, 0);
    EXPECT_VAL(addcow_pwrite(img, data, sizeof(data), 3 * 512), 512);
    EXPECT_VAL(addcow_pwrite(img, data, 10, 100 * 512 + 7), 10);
    assert_int_equal(addcow_close(img), 0);

    assert_int_equal(disk_bit(p, 3), 1);
    assert_int_equal(disk_bit(p, 100), 1);
    assert_int_equal(disk_bit(p, 4), 0);
    assert_int_equal(disk_bit(p, 99), 0);
    size_t len;
    unsigned char *raw = tu_read_file(S("%s/x.raw", d), &len);
    assert_non_null(raw);
    assert_memory_equal(raw + 3 * 512, data, 512);
    assert_memory_equal(raw + 100 * 512 + 7, data, 10);
    assert_true(all_zero(raw + 100 * 512, 7));
    free(raw);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_open),
        cmocka_unit_test(test_create_size_from_backing),
        cmocka_unit_test(test_create_existing_image_file),
        cmocka_unit_test(test_open_unaligned_size),
        cmocka_unit_test(test_create_failure_leaves_nothing),
        cmocka_unit_test(test_relative_paths),
        cmocka_unit_test(test_read_past_end),
        cmocka_unit_test(test_vectored_io),
        cmocka_unit_test(test_partial_sector_cow),
        cmocka_unit_test(test_write_zeroes_unmap),
        cmocka_unit_test(test_write_zeroes_plain),
        cmocka_unit_test(test_truncate_grow_over_longer_backing),
        cmocka_unit_test(test_truncate_shrink_then_grow),
        cmocka_unit_test(test_block_status),
        cmocka_unit_test(test_block_status_random),
        cmocka_unit_test(test_allocated_bytes),
        cmocka_unit_test(test_writethrough),
        cmocka_unit_test(test_writeback_flush),
        cmocka_unit_test(test_cache_none),
        cmocka_unit_test(test_backing_format_raw),
        cmocka_unit_test(test_chain_read),
        cmocka_unit_test(test_reopen),
        cmocka_unit_test(test_readonly_reads),
        cmocka_unit_test(test_close_flushes),
    };
    tu_scratch();
    return cmocka_run_group_tests(tests, NULL, tu_free_strings);
}
