/*
 * test-lazy.c: the chunked, lazily read bitmap, on images spanning several
 * bitmap chunks (AC_BM_CHUNK_BITS sectors, 256 MiB of disk, each).
 *
 * - a randomized whole-sector workload over a multi-chunk disk, against a
 *   per-sector model, with reopen (chunks read back lazily), flush, and the
 *   on-disk bitmap compared bit for bit;
 * - opening a huge sparse image reads nothing: chunks in holes of the
 *   add-cow file are known clear, the others stay unread until touched,
 *   and a small read materialises at most the chunk it touches;
 * - chunks never read are never written back (their bits on disk survive a
 *   flush of other chunks);
 * - runs cross chunk boundaries as one run; whole chunks allocated are held
 *   without memory and written as 0xFF bytes;
 * - truncate across chunk boundaries after a lazy reopen.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "addcow.h"
#include "bitmap.h"
#include "codec.h"
#include "image.h"
#include "testutil.h"

#define SEC 512u
#define CHUNK_SECTORS AC_BM_CHUNK_BITS
#define CHUNK_DISK ((uint64_t)CHUNK_SECTORS * SEC)

static addcow_image *xopen(const char *p, unsigned flags)
{
    addcow_image *img = NULL;
    int r = addcow_open(p, flags, NULL, &img);
    if (r < 0)
        fail_msg("addcow_open(%s): %s", p, addcow_last_error());
    return img;
}

static int count_state(addcow_image *img, int state)
{
    int n = 0;
    for (uint64_t c = 0; c < img->bm.nchunks; c++)
        n += img->bm.chunks[c].state == state;
    return n;
}

/* Reads the on-disk bit of sector n from the add-cow file's bytes. */
static int disk_bit(const unsigned char *file, size_t flen, uint64_t n)
{
    uint64_t byte = AC_HEADER_SIZE + n / 8;
    if (byte >= flen)
        return -1;
    return (file[byte] >> (n % 8)) & 1;
}

/* ---- randomized workload over several chunks ----------------------------- */

struct model {
    uint64_t sectors;
    uint32_t *version;      /* 0: never written (reads zeros: no backing) */
};

static void sector_content(uint32_t version, uint64_t sector, unsigned char *out)
{
    if (version == 0)
        memset(out, 0, SEC);
    else
        tu_fill_pattern(out, SEC, version, sector * SEC);
}

static void check_sectors(addcow_image *img, const struct model *m, uint64_t s, uint64_t n)
{
    unsigned char *got = malloc(n * SEC), want[SEC];
    assert_non_null(got);
    assert_int_equal(addcow_pread(img, got, n * SEC, s * SEC), (int64_t)(n * SEC));
    for (uint64_t i = 0; i < n; i++) {
        sector_content(m->version[s + i], s + i, want);
        if (memcmp(got + i * SEC, want, SEC) != 0)
            fail_msg("sector %" PRIu64 " (version %u) reads wrong", s + i, m->version[s + i]);
    }
    free(got);
}

static void check_runs(addcow_image *img, const struct model *m)
{
    uint64_t size = m->sectors * SEC, off = 0;
    int prev = -1;
    while (off < size) {
        uint64_t run = 0;
        int f = addcow_block_status(img, off, size - off, &run);
        assert_true(f >= 0);
        assert_true(run > 0 && run % SEC == 0);
        assert_int_not_equal(f, prev);      /* runs are maximal */
        int want = f == (int)ADDCOW_STATUS_ALLOCATED;
        uint64_t s0 = off / SEC, s1 = (off + run) / SEC;
        for (uint64_t s = s0; s < s1; s++)
            if ((m->version[s] != 0) != want)
                fail_msg("sector %" PRIu64 " in a run of flags %d disagrees", s, f);
        prev = f;
        off += run;
    }
}

static void check_disk_bitmap(const char *acpath, const struct model *m)
{
    size_t flen;
    unsigned char *file = tu_read_file(acpath, &flen);
    assert_non_null(file);
    assert_int_equal(flen, AC_HEADER_SIZE + (m->sectors + 7) / 8);
    for (uint64_t s = 0; s < m->sectors; s++)
        if (disk_bit(file, flen, s) != (m->version[s] != 0))
            fail_msg("on-disk bit of sector %" PRIu64 " is %d", s, disk_bit(file, flen, s));
    free(file);
}

/* A sector near a chunk boundary, or anywhere. */
static uint64_t pick_sector(uint64_t *rng, uint64_t sectors)
{
    if (tu_rand_below(rng, 3) == 0)
        return tu_rand_below(rng, sectors);
    uint64_t nb = sectors / CHUNK_SECTORS;
    uint64_t b = (tu_rand_below(rng, nb) + 1) * CHUNK_SECTORS;
    uint64_t s = b - 80 + tu_rand_below(rng, 160);
    return s < sectors ? s : sectors - 1;
}

static void test_multichunk_model(void **state)
{
    (void)state;
    uint64_t rng = tu_seed("test_multichunk_model");
    char *ac = tu_path("multi.add-cow");
    struct model m;
    m.sectors = 3 * CHUNK_SECTORS + 777;
    m.version = calloc(m.sectors, sizeof(uint32_t));
    assert_non_null(m.version);
    assert_int_equal(addcow_create(ac, m.sectors * SEC, NULL, "multi.raw", NULL), 0);
    addcow_image *img = xopen(ac, ADDCOW_OPEN_RDWR);
    uint32_t next_version = 1;
    unsigned steps = tu_scale(400);
    unsigned char *buf = malloc(64 * SEC);
    assert_non_null(buf);

    for (unsigned step = 0; step < steps; step++) {
        unsigned op = (unsigned)tu_rand_below(&rng, 20);
        uint64_t s = pick_sector(&rng, m.sectors);
        uint64_t n = 1 + tu_rand_below(&rng, 64);
        if (s + n > m.sectors)
            n = m.sectors - s;
        if (op < 12) {                          /* write whole sectors */
            uint32_t v = next_version++;
            for (uint64_t i = 0; i < n; i++) {
                m.version[s + i] = v;
                sector_content(v, s + i, buf + i * SEC);
            }
            assert_int_equal(addcow_pwrite(img, buf, n * SEC, s * SEC), (int64_t)(n * SEC));
        } else if (op < 15) {
            check_sectors(img, &m, s, n);
        } else if (op < 17) {
            assert_int_equal(addcow_flush(img), 0);
            check_disk_bitmap(ac, &m);
        } else if (op < 19) {
            assert_int_equal(addcow_close(img), 0);
            check_disk_bitmap(ac, &m);
            img = xopen(ac, ADDCOW_OPEN_RDWR);
            /* Reopened: nothing is read until touched. */
            assert_int_equal(count_state(img, AC_CHUNK_MIXED), 0);
        } else {
            check_runs(img, &m);
        }
    }
    uint64_t want = 0;
    for (uint64_t s = 0; s < m.sectors; s++)
        want += m.version[s] != 0;
    assert_int_equal(addcow_get_allocated_bytes(img), (int64_t)(want * SEC));
    check_runs(img, &m);
    assert_int_equal(addcow_close(img), 0);
    check_disk_bitmap(ac, &m);
    free(buf);
    free(m.version);
    free(ac);
}

/* ---- huge sparse image: open reads nothing ---------------------------- */

static void test_huge_open_is_lazy(void **state)
{
    (void)state;
    char *ac = tu_path("huge.add-cow");
    uint64_t size = UINT64_C(8) << 40;          /* 8 TiB */
    int r = addcow_create(ac, size, NULL, "huge.raw", NULL);
    if (r == -EFBIG || r == -EINVAL || r == -ENOSPC) {
        print_message("# skipped: this file system cannot hold an 8 TiB sparse file (%s)\n",
                      addcow_last_error());
        free(ac);
        skip();
    }
    assert_int_equal(r, 0);
    addcow_image *img = xopen(ac, ADDCOW_OPEN_RDWR);
    /* A fresh image is one big hole: every chunk is known clear at once,
     * but maybe the first, which shares a file system block with the
     * header. */
    assert_true(img->bm.unknown <= 1);
    assert_int_equal(count_state(img, AC_CHUNK_MIXED), 0);
    /* 1 MiB in the middle of the disk. */
    uint64_t at = size / 2 + 12345 * SEC;
    unsigned char *mb = malloc(1 << 20);
    assert_non_null(mb);
    tu_fill_pattern(mb, 1 << 20, 7, at);
    assert_int_equal(addcow_pwrite(img, mb, 1 << 20, at), 1 << 20);
    assert_int_equal(count_state(img, AC_CHUNK_MIXED), 1);
    assert_int_equal(addcow_close(img), 0);

    img = xopen(ac, ADDCOW_OPEN_RDONLY);
    /* Only the chunk the write touched holds data on disk: it is unread,
     * and so may be the first chunk (it shares a file system block with the
     * header) and the neighbour of the written one (chunks start at 2068
     * + k * 64 KiB, so a file system block can straddle two); every other
     * chunk is known clear from the file's holes. */
    if (!(img->bm.unknown >= 1 && img->bm.unknown <= 3))
        fail_msg("unknown chunks: %" PRIu64 " of %" PRIu64, img->bm.unknown, img->bm.nchunks);
    assert_true(ac_bm_chunk_unknown(&img->bm, ac_bm_chunk_of(at / SEC)));
    assert_int_equal(count_state(img, AC_CHUNK_MIXED), 0);
    unsigned char got[4096];
    assert_int_equal(addcow_pread(img, got, sizeof(got), at), (int64_t)sizeof(got));
    assert_memory_equal(got, mb, sizeof(got));
    assert_int_equal(count_state(img, AC_CHUNK_MIXED), 1);
    /* A read far away touches a chunk known clear: nothing more is read. */
    assert_int_equal(addcow_pread(img, got, sizeof(got), 4096), (int64_t)sizeof(got));
    assert_int_equal(count_state(img, AC_CHUNK_MIXED), 1);
    assert_int_equal(addcow_get_allocated_bytes(img), 1 << 20);
    /* The walk: zeros, the written MiB, zeros; three runs. */
    uint64_t run;
    assert_int_equal(addcow_block_status(img, 0, size, &run), (int)ADDCOW_STATUS_ZERO);
    assert_int_equal(run, at);
    assert_int_equal(addcow_block_status(img, at, size - at, &run),
                     (int)ADDCOW_STATUS_ALLOCATED);
    assert_int_equal(run, 1 << 20);
    assert_int_equal(addcow_block_status(img, at + (1 << 20), size - at - (1 << 20), &run),
                     (int)ADDCOW_STATUS_ZERO);
    assert_int_equal(run, size - at - (1 << 20));
    assert_int_equal(addcow_close(img), 0);
    free(mb);
    unlink(ac);
    char *raw = tu_path("huge.raw");
    unlink(raw);
    free(raw);
    free(ac);
}

/* ---- chunks never read are never written ------------------------------- */

static void test_unread_chunks_survive_flush(void **state)
{
    (void)state;
    char *ac = tu_path("survive.add-cow");
    uint64_t sectors = 3 * CHUNK_SECTORS;
    assert_int_equal(addcow_create(ac, sectors * SEC, NULL, "survive.raw", NULL), 0);
    /* Bits for chunk 2 written by hand behind the library's back (as if by
     * an earlier writer): sectors 2*CHUNK_SECTORS + 0..15. */
    int fd = open(ac, O_RDWR);
    assert_true(fd >= 0);
    unsigned char ff[2] = { 0xff, 0xff };
    assert_int_equal(pwrite(fd, ff, 2, AC_HEADER_SIZE + 2 * AC_BM_CHUNK_BYTES), 2);
    close(fd);

    addcow_image *img = xopen(ac, ADDCOW_OPEN_RDWR);
    unsigned char b[SEC];
    memset(b, 0xab, sizeof(b));
    /* Touch chunk 0 only, and make the flush write everything it can. */
    assert_int_equal(addcow_pwrite(img, b, SEC, 5 * SEC), SEC);
    assert_int_equal(addcow_flush(img), 0);
    assert_int_equal(img->bm.chunks[2].state, AC_CHUNK_UNKNOWN);
    assert_int_equal(addcow_close(img), 0);

    size_t flen;
    unsigned char *file = tu_read_file(ac, &flen);
    assert_non_null(file);
    assert_int_equal(disk_bit(file, flen, 5), 1);
    for (uint64_t s = 0; s < 16; s++)
        assert_int_equal(disk_bit(file, flen, 2 * CHUNK_SECTORS + s), 1);
    assert_int_equal(disk_bit(file, flen, 2 * CHUNK_SECTORS + 16), 0);
    free(file);
    img = xopen(ac, ADDCOW_OPEN_RDONLY);
    assert_int_equal(addcow_get_allocated_bytes(img), 17 * SEC);
    assert_int_equal(addcow_close(img), 0);
    free(ac);
}

/* ---- runs across chunk boundaries; whole chunks -------------------------- */

static void test_runs_across_chunks_and_full_chunks(void **state)
{
    (void)state;
    char *ac = tu_path("full.add-cow");
    char *base = tu_path("full-base.raw");
    uint64_t sectors = 3 * CHUNK_SECTORS;
    uint64_t size = sectors * SEC;
    /* A sparse backing file as long as the disk, so that write_zeroes
     * allocates. */
    int fd = open(base, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)size), 0);
    close(fd);
    assert_int_equal(addcow_create(ac, 0, "full-base.raw", "full.raw", NULL), 0);
    addcow_image *img = xopen(ac, ADDCOW_OPEN_RDWR);
    /* All of chunk 1, and 100 sectors on each side: one run over three
     * chunks. */
    uint64_t a = CHUNK_SECTORS - 100, b = 2 * CHUNK_SECTORS + 100;
    assert_int_equal(addcow_write_zeroes(img, a * SEC, (b - a) * SEC, ADDCOW_ZEROES_MAY_UNMAP), 0);
    assert_int_equal(img->bm.chunks[1].state, AC_CHUNK_FULL);
    uint64_t run;
    assert_int_equal(addcow_block_status(img, 0, size, &run), 0);
    assert_int_equal(run, a * SEC);
    assert_int_equal(addcow_block_status(img, a * SEC, size - a * SEC, &run),
                     (int)ADDCOW_STATUS_ALLOCATED);
    assert_int_equal(run, (b - a) * SEC);
    assert_int_equal(addcow_close(img), 0);

    /* On disk: chunk 1's bytes are all 0xFF. */
    size_t flen;
    unsigned char *file = tu_read_file(ac, &flen);
    assert_non_null(file);
    for (size_t i = 0; i < AC_BM_CHUNK_BYTES; i++)
        if (file[AC_HEADER_SIZE + AC_BM_CHUNK_BYTES + i] != 0xff)
            fail_msg("chunk 1 byte %zu is 0x%02x", i, file[AC_HEADER_SIZE + AC_BM_CHUNK_BYTES + i]);
    free(file);

    /* Reopened lazily, the same walk, reading chunks as the run reaches
     * them; a loaded all-set chunk holds no words. */
    img = xopen(ac, ADDCOW_OPEN_RDONLY);
    assert_int_equal(addcow_block_status(img, (a + 1) * SEC, size - (a + 1) * SEC, &run),
                     (int)ADDCOW_STATUS_ALLOCATED);
    assert_int_equal(run, (b - a - 1) * SEC);
    assert_int_equal(img->bm.chunks[1].state, AC_CHUNK_FULL);
    assert_null(img->bm.chunks[1].words);
    assert_int_equal(addcow_get_allocated_bytes(img), (int64_t)((b - a) * SEC));
    unsigned char z[SEC], zero[SEC] = { 0 };
    assert_int_equal(addcow_pread(img, z, SEC, (CHUNK_SECTORS + 5) * SEC), SEC);
    assert_memory_equal(z, zero, SEC);
    assert_int_equal(addcow_close(img), 0);
    unlink(base);
    free(base);
    free(ac);
}

/* ---- truncate across chunks after a lazy reopen -------------------------- */

static void test_truncate_across_chunks(void **state)
{
    (void)state;
    char *ac = tu_path("trunc.add-cow");
    uint64_t sectors = 2 * CHUNK_SECTORS + 300;
    assert_int_equal(addcow_create(ac, sectors * SEC, NULL, "trunc.raw", NULL), 0);
    addcow_image *img = xopen(ac, ADDCOW_OPEN_RDWR);
    unsigned char b[4 * SEC];
    tu_fill_pattern(b, sizeof(b), 3, 0);
    uint64_t marks[] = { 10, CHUNK_SECTORS - 2, CHUNK_SECTORS + 50, 2 * CHUNK_SECTORS + 290 };
    for (int i = 0; i < 4; i++)
        assert_int_equal(addcow_pwrite(img, b, SEC, marks[i] * SEC), SEC);
    assert_int_equal(addcow_close(img), 0);

    /* Shrink into chunk 1 while it is still unread. */
    img = xopen(ac, ADDCOW_OPEN_RDWR);
    uint64_t s_small = CHUNK_SECTORS + 51;
    assert_int_equal(addcow_truncate(img, s_small * SEC), 0);
    assert_int_equal(addcow_get_allocated_bytes(img), 3 * SEC);
    /* Grow again past two chunk boundaries: the new area reads zeros and
     * is not allocated (no backing file). */
    uint64_t s_big = 3 * CHUNK_SECTORS + 9;
    assert_int_equal(addcow_truncate(img, s_big * SEC), 0);
    assert_int_equal(addcow_get_allocated_bytes(img), 3 * SEC);
    assert_int_equal(addcow_close(img), 0);

    img = xopen(ac, ADDCOW_OPEN_RDONLY);
    assert_int_equal(addcow_get_size(img), (int64_t)(s_big * SEC));
    assert_int_equal(addcow_get_allocated_bytes(img), 3 * SEC);
    uint64_t run;
    assert_int_equal(addcow_block_status(img, s_small * SEC, (s_big - s_small) * SEC, &run),
                     (int)ADDCOW_STATUS_ZERO);
    assert_int_equal(run, (s_big - s_small) * SEC);
    unsigned char got[SEC], zero[SEC] = { 0 };
    assert_int_equal(addcow_pread(img, got, SEC, (2 * CHUNK_SECTORS + 290) * SEC), SEC);
    assert_memory_equal(got, zero, SEC);
    assert_int_equal(addcow_pread(img, got, SEC, (CHUNK_SECTORS + 50) * SEC), SEC);
    assert_memory_equal(got, b, SEC);
    assert_int_equal(addcow_close(img), 0);
    size_t flen;
    unsigned char *file = tu_read_file(ac, &flen);
    assert_non_null(file);
    assert_int_equal(flen, AC_HEADER_SIZE + (s_big + 7) / 8);
    assert_int_equal(disk_bit(file, flen, CHUNK_SECTORS + 50), 1);
    assert_int_equal(disk_bit(file, flen, 2 * CHUNK_SECTORS + 290), 0);
    free(file);
    free(ac);
}

/* Growing to a huge size keeps the add-cow file sparse: the new bitmap
 * bytes are the file system's zeros, not written ones. */
static void test_grow_huge_stays_sparse(void **state)
{
    (void)state;
    char *ac = tu_path("grow.add-cow");
    char *raw = tu_path("grow.raw");
    assert_int_equal(addcow_create(ac, UINT64_C(1) << 30, NULL, "grow.raw", NULL), 0);
    addcow_image *img = xopen(ac, ADDCOW_OPEN_RDWR);
    unsigned char b[SEC];
    memset(b, 0x5a, sizeof(b));
    assert_int_equal(addcow_pwrite(img, b, SEC, (UINT64_C(1) << 30) - SEC), SEC);
    uint64_t huge = UINT64_C(8) << 40;
    int r = addcow_truncate(img, huge);
    if (r == -EFBIG) {
        print_message("# skipped: no 8 TiB files here (%s)\n", addcow_last_error());
        addcow_close(img);
        free(ac);
        free(raw);
        skip();
    }
    assert_int_equal(r, 0);
    assert_int_equal(addcow_close(img), 0);
    struct stat st;
    assert_int_equal(stat(ac, &st), 0);
    assert_int_equal((uint64_t)st.st_size, AC_HEADER_SIZE + huge / SEC / 8);
    if ((uint64_t)st.st_blocks * 512 > (UINT64_C(4) << 20))
        fail_msg("the add-cow file holds %llu bytes of data after the grow",
                 (unsigned long long)st.st_blocks * 512);
    img = xopen(ac, ADDCOW_OPEN_RDONLY);
    assert_int_equal(addcow_get_allocated_bytes(img), SEC);
    uint64_t run;
    assert_int_equal(addcow_block_status(img, UINT64_C(1) << 30, huge - (UINT64_C(1) << 30), &run),
                     (int)ADDCOW_STATUS_ZERO);
    assert_int_equal(run, huge - (UINT64_C(1) << 30));
    assert_int_equal(addcow_close(img), 0);
    unlink(ac);
    unlink(raw);
    free(ac);
    free(raw);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_multichunk_model),
        cmocka_unit_test(test_huge_open_is_lazy),
        cmocka_unit_test(test_unread_chunks_survive_flush),
        cmocka_unit_test(test_runs_across_chunks_and_full_chunks),
        cmocka_unit_test(test_truncate_across_chunks),
        cmocka_unit_test(test_grow_huge_stays_sparse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
