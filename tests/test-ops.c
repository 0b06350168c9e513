/*
 * test-ops.c: the long operations of ABI 1.1: addcow_hydrate, addcow_detach
 * and addcow_commit (include/addcow.h has their contract).
 *
 * Every expectation comes from a model kept by the test, never from what
 * the library returned earlier: `model` is what the virtual disk must read
 * (the backing file's pattern where nothing was written, zeros past its
 * end, the patterns written), `alloc` which sectors must be allocated
 * (those written, and those an operation must allocate or release).  Files
 * are checked with plain reads (tu_read_file, memfs_get), not through the
 * library.
 *
 * The behaviour is tested on real files (posix, and io_uring in
 * test-ops.uring); fault injection and crash states on memfs
 * (membackend.h): each I/O of a chosen kind fails in turn, and every prefix
 * of the recorded operations of a successful run is replayed to see what a
 * crash there would leave.  In every case the disk must read the model:
 * these operations never change what the virtual disk reads.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "addcow.h"
#include "membackend.h"
#include "options.h"
#include "testutil.h"

#define SECTOR 512u
#define KIB 1024u
#define MIB (1024u * 1024u)
#define BASE_SEED 0xBA5Eu
#define MID_PATTERN_SEED 0x3A1Du

static uint64_t ceil_sector(uint64_t x)
{
    return (x + SECTOR - 1) / SECTOR * SECTOR;
}

static void expect_prefix(const char *call)
{
    const char *msg = addcow_last_error();
    if (strncmp(msg, call, strlen(call)) != 0 || msg[strlen(call)] != ':')
        fail_msg("error message '%s' does not start with '%s:'", msg, call);
}

/* ---- the model ------------------------------------------------------------ */

struct disk {
    const char *dir, *addcow, *image, *base;    /* real files (tu_str paths) */
    uint64_t size;              /* virtual size */
    uint64_t blen;              /* backing data length (0: no backing file) */
    unsigned char *model;       /* what the disk must read: size bytes */
    bool *alloc;                /* per sector: must be allocated */
};

/* A model of a disk of `size` bytes over `blen` bytes of pattern `seed`. */
static void model_new(struct disk *d, uint64_t size, uint64_t blen, uint32_t seed)
{
    d->size = size;
    d->blen = blen;
    d->model = calloc(size ? size : 1, 1);
    d->alloc = calloc(size / SECTOR + 1, sizeof(bool));
    assert_true(d->model != NULL && d->alloc != NULL);
    tu_fill_pattern(d->model, tu_min_u64(blen, size), seed, 0);
}

static void model_free(struct disk *d)
{
    free(d->model);
    free(d->alloc);
    d->model = NULL;
    d->alloc = NULL;
}

/* A write of buf at off: its bytes, and every sector it touches allocated. */
static void model_write(struct disk *d, uint64_t off, const unsigned char *buf, uint64_t len)
{
    memcpy(d->model + off, buf, len);
    for (uint64_t s = off / SECTOR; s < ceil_sector(off + len) / SECTOR; s++)
        d->alloc[s] = true;
}

/* Hydrating [off, off + len): every sector there that the backing data
 * reaches (even partly) becomes allocated; nothing reads differently. */
static void model_hydrate(struct disk *d, uint64_t off, uint64_t len)
{
    uint64_t end = tu_min_u64(ceil_sector(off + len), ceil_sector(d->blen));
    for (uint64_t s = off / SECTOR; s * SECTOR < end; s++)
        d->alloc[s] = true;
}

static uint64_t model_allocated(const struct disk *d)
{
    uint64_t n = 0;
    for (uint64_t s = 0; s < d->size / SECTOR; s++)
        n += d->alloc[s];
    return n * SECTOR;
}

/* The end of the last allocated sector (0: none). */
static uint64_t model_last_alloc_end(const struct disk *d)
{
    for (uint64_t s = d->size / SECTOR; s-- > 0;)
        if (d->alloc[s])
            return (s + 1) * SECTOR;
    return 0;
}

/* Writes len bytes of pattern `seed` at off through img, and into the model. */
static void dwrite(addcow_image *img, struct disk *d, uint64_t off, uint64_t len, uint32_t seed)
{
    unsigned char *buf = malloc(len);
    assert_non_null(buf);
    tu_fill_pattern(buf, len, seed, off);
    int64_t n = addcow_pwrite(img, buf, len, off);
    if (n != (int64_t)len) {
        free(buf);
        fail_msg("pwrite(%" PRIu64 ", %" PRIu64 ") returned %" PRId64 ": %s", off, len, n,
                 addcow_last_error());
    }
    model_write(d, off, buf, len);
    free(buf);
}

static void compare_bytes(const unsigned char *got, const unsigned char *want, uint64_t len,
                          const char *what, const char *ctx)
{
    for (uint64_t i = 0; i < len; i++)
        if (got[i] != want[i])
            fail_msg("%s: %s: byte %" PRIu64 " is 0x%02x, expected 0x%02x", ctx, what, i,
                     got[i], want[i]);
}

/* The whole disk reads the model; nothing past its end. */
static void check_reads(addcow_image *img, const struct disk *d, const char *ctx)
{
    assert_int_equal(addcow_get_size(img), (int64_t)d->size);
    unsigned char *buf = malloc(d->size + 1);
    assert_non_null(buf);
    int64_t n = addcow_pread(img, buf, d->size, 0);
    if (n != (int64_t)d->size) {
        free(buf);
        fail_msg("%s: pread of the disk returned %" PRId64 ": %s", ctx, n, addcow_last_error());
    }
    for (uint64_t i = 0; i < d->size; i++) {
        if (buf[i] != d->model[i]) {
            unsigned got = buf[i];
            free(buf);
            fail_msg("%s: byte %" PRIu64 " reads 0x%02x, expected 0x%02x", ctx, i, got,
                     d->model[i]);
        }
    }
    assert_int_equal(addcow_pread(img, buf, 1, d->size), 0);
    free(buf);
}

/* Block status and the allocated bytes agree with the allocation model. */
static void check_alloc(addcow_image *img, const struct disk *d, const char *ctx)
{
    for (uint64_t pos = 0; pos < d->size;) {
        uint64_t run = 0;
        int st = addcow_block_status(img, pos, d->size - pos, &run);
        if (st < 0 || run == 0)
            fail_msg("%s: block_status(%" PRIu64 ") returned %d, run %" PRIu64 ": %s", ctx,
                     pos, st, run, addcow_last_error());
        bool a = (st & ADDCOW_STATUS_ALLOCATED) != 0;
        for (uint64_t s = pos / SECTOR; s * SECTOR < pos + run; s++)
            if (d->alloc[s] != a)
                fail_msg("%s: sector %" PRIu64 " is %sallocated, expected %sallocated", ctx, s,
                         a ? "" : "not ", d->alloc[s] ? "" : "not ");
        pos += run;
    }
    int64_t got = addcow_get_allocated_bytes(img);
    if (got != (int64_t)model_allocated(d))
        fail_msg("%s: %" PRId64 " bytes allocated, expected %" PRIu64, ctx, got,
                 model_allocated(d));
}

/* The bitmap in the add-cow file (read directly: what a crash now would
 * leave) is the allocation model. */
static void check_bitmap_bytes(const unsigned char *f, size_t flen, const struct disk *d,
                               const char *ctx)
{
    uint64_t sectors = d->size / SECTOR;
    if (flen < TU_HDR_SIZE + tu_bitmap_len(d->size))
        fail_msg("%s: add-cow file of %zu bytes", ctx, flen);
    for (uint64_t s = 0; s < sectors; s++) {
        bool bit = (f[TU_HDR_SIZE + s / 8] >> (s % 8)) & 1;
        if (bit != d->alloc[s])
            fail_msg("%s: on disk, sector %" PRIu64 "'s bit is %d, expected %d", ctx, s, bit,
                     d->alloc[s]);
    }
}

static void check_bitmap_file(const struct disk *d, const char *ctx)
{
    size_t len;
    unsigned char *f = tu_read_file(d->addcow, &len);
    assert_non_null(f);
    check_bitmap_bytes(f, len, d, ctx);
    free(f);
}

/* The file at path holds model bytes [0, len) (exact: and is len long). */
static void check_file_model(const char *path, const struct disk *d, uint64_t len, bool exact,
                             const char *ctx)
{
    size_t flen;
    unsigned char *f = tu_read_file(path, &flen);
    assert_non_null(f);
    if (flen < len || (exact && flen != len)) {
        free(f);
        fail_msg("%s: '%s' is %zu bytes long, expected %s%" PRIu64, ctx, path, flen,
                 exact ? "" : "at least ", len);
    }
    compare_bytes(f, d->model, len, path, ctx);
    free(f);
}

/* ---- progress ---------------------------------------------------------------- */

struct progress_log {
    unsigned calls;
    unsigned cancel_at;         /* return non-zero on this call (1-based); 0: never */
    uint64_t done, total;       /* of the last call */
    bool bad;                   /* done went down, total changed, done > total */
    char why[160];
    unsigned sleep_us;          /* pause in each call (to let other threads in) */
};

static int progress_cb(uint64_t done, uint64_t total, void *opaque)
{
    struct progress_log *p = opaque;
    if (!p->bad && p->calls > 0 && (done < p->done || total != p->total)) {
        p->bad = true;
        snprintf(p->why, sizeof(p->why), "call %u: %" PRIu64 "/%" PRIu64 " after %" PRIu64
                 "/%" PRIu64, p->calls + 1, done, total, p->done, p->total);
    }
    if (!p->bad && done > total) {
        p->bad = true;
        snprintf(p->why, sizeof(p->why), "call %u: done %" PRIu64 " > total %" PRIu64,
                 p->calls + 1, done, total);
    }
    p->calls++;
    p->done = done;
    p->total = total;
    if (p->sleep_us) {
        struct timespec ts = { 0, (long)p->sleep_us * 1000 };
        nanosleep(&ts, NULL);
    }
    return p->cancel_at != 0 && p->calls == p->cancel_at;
}

/* Progress went up to done == total == `total`. */
static void check_progress(const struct progress_log *p, uint64_t total, const char *ctx)
{
    if (p->bad)
        fail_msg("%s: progress: %s", ctx, p->why);
    if (p->calls == 0)
        fail_msg("%s: progress never called", ctx);
    if (p->total != total || p->done != total)
        fail_msg("%s: progress ended at %" PRIu64 "/%" PRIu64 ", expected %" PRIu64 "/%" PRIu64,
                 ctx, p->done, p->total, total, total);
}

/* ---- real files ------------------------------------------------------------------ */

/* <scratch>/name holds base.raw (blen bytes of pattern BASE_SEED; none if
 * blen is 0) and disk.add-cow of `size` bytes over it (image disk.raw). */
static void disk_setup(struct disk *d, const char *name, uint64_t size, uint64_t blen)
{
    memset(d, 0, sizeof(*d));
    d->dir = tu_subdir(name);
    d->addcow = tu_str("%s/disk.add-cow", d->dir);
    d->image = tu_str("%s/disk.raw", d->dir);
    d->base = tu_str("%s/base.raw", d->dir);
    if (blen > 0)
        tu_make_raw(d->base, blen, BASE_SEED);
    assert_int_equal(addcow_create(d->addcow, size, blen ? "base.raw" : NULL, "disk.raw", NULL),
                     0);
    model_new(d, size, blen, BASE_SEED);
}

static addcow_image *disk_open(const struct disk *d, unsigned flags)
{
    return tu_open_ok(d->addcow, flags, NULL);
}

/* Writes that exercise every case the disk allows: a partial sector, whole
 * sectors, a write across the backing file's end (and its partial last
 * sector), one past that end, one across a piece (MiB) boundary. */
static void typical_writes(addcow_image *img, struct disk *d)
{
    dwrite(img, d, 100, 300, 11);
    if (d->size >= 16 * KIB)
        dwrite(img, d, 8192, 4096, 12);
    uint64_t bend = ceil_sector(d->blen);
    if (bend >= 1200 && bend + 300 <= d->size)
        dwrite(img, d, bend - 900, 1200, 13);
    if (d->blen + 20000 < d->size)
        dwrite(img, d, d->size - 3000, 2000, 14);
    if (d->size > MIB + 4096)
        dwrite(img, d, MIB - 256, 512, 15);
}

/* hydrate over a raw backing file, in several geometries; the bits are
 * durable when it returns, and the disk no longer depends on the backing
 * data it covered. */
static void test_hydrate_raw(void **state)
{
    (void)state;
    static const struct { uint64_t size, blen; } cases[] = {
        { 4 * MIB, 5 * MIB / 2 + 123 },    /* odd backing end, area past it */
        { 64 * KIB, 1000 },                 /* tiny backing: one and a bit sectors */
        { 1 * MIB, 3 * MIB / 2 },           /* backing longer than the disk */
        { 3 * MIB, 3 * MIB },               /* backing exactly the disk */
    };
    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct disk d;
        const char *ctx = tu_str("case %u (size %" PRIu64 ", backing %" PRIu64 ")", i,
                                 cases[i].size, cases[i].blen);
        disk_setup(&d, tu_str("hydrate-raw-%u", i), cases[i].size, cases[i].blen);
        addcow_image *img = disk_open(&d, ADDCOW_OPEN_RDWR);
        typical_writes(img, &d);
        check_reads(img, &d, ctx);

        struct progress_log p = { 0 };
        int r = addcow_hydrate(img, 0, 0, progress_cb, &p);
        if (r != 0)
            fail_msg("%s: hydrate returned %d: %s", ctx, r, addcow_last_error());
        check_progress(&p, d.size, ctx);
        model_hydrate(&d, 0, d.size);
        check_reads(img, &d, ctx);
        check_alloc(img, &d, ctx);
        /* The image file alone holds the disk wherever the backing did. */
        check_file_model(d.image, &d, tu_min_u64(ceil_sector(d.blen), d.size), false, ctx);
        /* Durable at return, not only at close. */
        check_bitmap_file(&d, ctx);

        /* Again: nothing left to do, nothing changes. */
        memset(&p, 0, sizeof(p));
        assert_int_equal(addcow_hydrate(img, 0, 0, progress_cb, &p), 0);
        check_progress(&p, d.size, ctx);
        check_alloc(img, &d, ctx);
        assert_int_equal(addcow_close(img), 0);

        /* The backing file changes: the hydrated disk does not (its length
         * stays, so the area past it still reads zeros). */
        tu_make_raw(d.base, d.blen, BASE_SEED + 1);
        img = disk_open(&d, ADDCOW_OPEN_RDONLY);
        check_reads(img, &d, ctx);
        check_alloc(img, &d, ctx);
        assert_int_equal(addcow_close(img), 0);
        model_free(&d);
    }
}

/* A ranged hydrate touches only the sectors of its range; an unaligned
 * range takes its partial first and last sectors whole. */
static void test_hydrate_range(void **state)
{
    (void)state;
    struct disk d;
    disk_setup(&d, "hydrate-range", 4 * MIB, 4 * MIB - 1000);
    addcow_image *img = disk_open(&d, ADDCOW_OPEN_RDWR);
    typical_writes(img, &d);
    dwrite(img, &d, 900000, 5000, 21);      /* inside the range */

    struct progress_log p = { 0 };
    uint64_t off = 700000 + 100, len = 1300000;
    assert_int_equal(addcow_hydrate(img, off, len, progress_cb, &p), 0);
    check_progress(&p, len, "range 1");
    model_hydrate(&d, off, len);
    check_alloc(img, &d, "range 1");
    check_reads(img, &d, "range 1");

    /* To the end (length 0), from an odd offset near it: the backing ends
     * 1000 bytes before the disk. */
    memset(&p, 0, sizeof(p));
    off = d.size - 5000;
    assert_int_equal(addcow_hydrate(img, off, 0, progress_cb, &p), 0);
    check_progress(&p, 5000, "to the end");
    model_hydrate(&d, off, d.size - off);
    check_alloc(img, &d, "to the end");

    /* An empty range at the very end: nothing to do. */
    memset(&p, 0, sizeof(p));
    assert_int_equal(addcow_hydrate(img, d.size, 0, progress_cb, &p), 0);
    check_progress(&p, 0, "empty");
    /* One byte: its whole sector. */
    assert_int_equal(addcow_hydrate(img, 3 * MIB + 7, 1, NULL, NULL), 0);
    model_hydrate(&d, 3 * MIB + 7, 1);
    check_alloc(img, &d, "one byte");
    check_reads(img, &d, "end");
    assert_int_equal(addcow_close(img), 0);
    check_bitmap_file(&d, "after close");
    model_free(&d);
}

/* Arguments and handles hydrate refuses, and "nothing to do". */
static void test_hydrate_args(void **state)
{
    (void)state;
    struct disk d;
    disk_setup(&d, "hydrate-args", 1 * MIB, 100 * KIB);
    addcow_image *img = disk_open(&d, ADDCOW_OPEN_RDWR);

    assert_int_equal(addcow_hydrate(NULL, 0, 0, NULL, NULL), -EINVAL);
    expect_prefix("addcow_hydrate");
    assert_int_equal(addcow_hydrate(img, d.size + 512, 0, NULL, NULL), -EINVAL);
    expect_prefix("addcow_hydrate");
    assert_int_equal(addcow_hydrate(img, 512, d.size, NULL, NULL), -EINVAL);
    assert_int_equal(addcow_hydrate(img, 0, d.size + 1, NULL, NULL), -EINVAL);
    assert_int_equal(addcow_hydrate(img, UINT64_MAX - 10, 20, NULL, NULL), -EINVAL);
    assert_int_equal(addcow_hydrate(img, 512, UINT64_MAX, NULL, NULL), -EINVAL);
    check_alloc(img, &d, "after refused calls");
    assert_int_equal(addcow_close(img), 0);

    img = disk_open(&d, ADDCOW_OPEN_RDONLY);
    assert_int_equal(addcow_hydrate(img, 0, 0, NULL, NULL), -EBADF);
    expect_prefix("addcow_hydrate");
    assert_non_null(strstr(addcow_last_error(), d.addcow));
    check_alloc(img, &d, "read-only");
    assert_int_equal(addcow_close(img), 0);
    model_free(&d);

    /* No backing file: nothing to copy, nothing allocated; progress still
     * reports the range done. */
    disk_setup(&d, "hydrate-none", 256 * KIB, 0);
    img = disk_open(&d, ADDCOW_OPEN_RDWR);
    dwrite(img, &d, 4096, 100, 31);
    struct progress_log p = { 0 };
    assert_int_equal(addcow_hydrate(img, 0, 0, progress_cb, &p), 0);
    check_progress(&p, d.size, "no backing");
    check_alloc(img, &d, "no backing");
    check_reads(img, &d, "no backing");
    assert_int_equal(addcow_close(img), 0);
    model_free(&d);
}

/* A cancelled hydrate keeps (durably) what it did; a second call finishes
 * and does not copy again what the first one copied. */
static void test_hydrate_cancel_resume(void **state)
{
    (void)state;
    struct disk d;
    disk_setup(&d, "hydrate-cancel", 4 * MIB, 4 * MIB);
    addcow_image *img = disk_open(&d, ADDCOW_OPEN_RDWR);
    typical_writes(img, &d);

    struct progress_log p = { .cancel_at = 2 };
    assert_int_equal(addcow_hydrate(img, 0, 0, progress_cb, &p), -ECANCELED);
    expect_prefix("addcow_hydrate");
    assert_int_equal(p.calls, 2);
    uint64_t done = p.done;
    assert_true(done > 0 && done < d.size);
    check_reads(img, &d, "cancelled");
    /* What progress said is done is allocated, and durably so. */
    model_hydrate(&d, 0, done);
    size_t flen;
    unsigned char *f = tu_read_file(d.addcow, &flen);
    assert_non_null(f);
    for (uint64_t s = 0; s < done / SECTOR; s++)
        if (!((f[TU_HDR_SIZE + s / 8] >> (s % 8)) & 1))
            fail_msg("after cancel: sector %" PRIu64 " (below %" PRIu64 " done) is not "
                     "allocated on disk", s, done);
    free(f);
    int64_t alloc = addcow_get_allocated_bytes(img);
    assert_true(alloc >= (int64_t)done && alloc < (int64_t)d.size);

    /* The backing data under what is done changes: a resumed hydrate must
     * not copy it again (it skips allocated sectors), and the disk keeps
     * reading the old bytes there. */
    unsigned char *nb = malloc(done);
    assert_non_null(nb);
    memset(nb, 0xE7, done);
    size_t blen;
    unsigned char *b = tu_read_file(d.base, &blen);
    assert_non_null(b);
    memcpy(b, nb, done);
    assert_int_equal(tu_write_file(d.base, b, blen), 0);
    free(b);
    free(nb);

    memset(&p, 0, sizeof(p));
    assert_int_equal(addcow_hydrate(img, 0, 0, progress_cb, &p), 0);
    check_progress(&p, d.size, "resumed");
    model_hydrate(&d, 0, d.size);
    check_alloc(img, &d, "resumed");
    check_reads(img, &d, "resumed");
    check_file_model(d.image, &d, d.size, true, "resumed");
    assert_int_equal(addcow_close(img), 0);
    model_free(&d);
}

/* base.raw <- mid.add-cow <- top.add-cow in <scratch>/name, mid with some
 * writes of its own; d models top (size top_size), and mid_model what mid
 * reads (size mid_size). */
struct chain {
    struct disk d;
    const char *mid, *mid_image, *top, *top_image;
    unsigned char *mid_model;
    uint64_t mid_size;
};

static void chain_setup(struct chain *c, const char *name, uint64_t blen, uint64_t mid_size,
                        uint64_t top_size)
{
    memset(c, 0, sizeof(*c));
    c->d.dir = tu_subdir(name);
    c->d.base = tu_str("%s/base.raw", c->d.dir);
    c->mid = tu_str("%s/mid.add-cow", c->d.dir);
    c->mid_image = tu_str("%s/mid.raw", c->d.dir);
    c->top = tu_str("%s/top.add-cow", c->d.dir);
    c->top_image = tu_str("%s/top.raw", c->d.dir);
    c->d.addcow = c->top;
    c->d.image = c->top_image;
    tu_make_raw(c->d.base, blen, BASE_SEED);
    assert_int_equal(addcow_create(c->mid, mid_size, "base.raw", "mid.raw", NULL), 0);
    assert_int_equal(addcow_create(c->top, top_size, "mid.add-cow", "top.raw", NULL), 0);
    c->mid_size = mid_size;

    /* mid's own writes, modelled as mid reads them. */
    struct disk m;
    model_new(&m, mid_size, blen, BASE_SEED);
    addcow_image *img = tu_open_ok(c->mid, ADDCOW_OPEN_RDWR, NULL);
    dwrite(img, &m, 1000, 3000, MID_PATTERN_SEED);
    dwrite(img, &m, mid_size / 2, 70000, MID_PATTERN_SEED + 1);
    dwrite(img, &m, mid_size - 1000, 1000, MID_PATTERN_SEED + 2);
    assert_int_equal(addcow_close(img), 0);
    c->mid_model = m.model;
    free(m.alloc);

    /* top reads mid where it has not written; zeros past mid's end. */
    model_new(&c->d, top_size, mid_size, BASE_SEED);
    memcpy(c->d.model, c->mid_model, tu_min_u64(mid_size, top_size));
}

static void chain_free(struct chain *c)
{
    model_free(&c->d);
    free(c->mid_model);
}

/* hydrate over an add-cow backing (a chain): the top's image file then
 * holds everything the chain gave, and after detach the top stands alone
 * even once the rest of the chain is gone. */
static void test_hydrate_chain(void **state)
{
    (void)state;
    struct chain c;
    chain_setup(&c, "hydrate-chain", 3 * MIB - 200, 3 * MIB, 3 * MIB);
    addcow_image *img = tu_open_ok(c.top, ADDCOW_OPEN_RDWR, NULL);
    dwrite(img, &c.d, 500, 100, 41);
    dwrite(img, &c.d, 2 * MIB, 8192, 42);
    check_reads(img, &c.d, "chain before");

    struct progress_log p = { 0 };
    assert_int_equal(addcow_hydrate(img, 0, 0, progress_cb, &p), 0);
    check_progress(&p, c.d.size, "chain");
    model_hydrate(&c.d, 0, c.d.size);
    check_alloc(img, &c.d, "chain");
    check_reads(img, &c.d, "chain");
    check_file_model(c.top_image, &c.d, c.d.size, true, "chain");

    assert_int_equal(addcow_detach(img), 0);
    assert_null(addcow_get_backing_file(img));
    assert_int_equal(addcow_close(img), 0);
    assert_int_equal(unlink(c.mid), 0);
    assert_int_equal(unlink(c.mid_image), 0);
    assert_int_equal(unlink(c.d.base), 0);
    img = tu_open_ok(c.top, ADDCOW_OPEN_RDONLY, NULL);
    assert_null(addcow_get_backing_file(img));
    check_reads(img, &c.d, "chain detached");
    assert_int_equal(addcow_close(img), 0);
    chain_free(&c);
}

/* ---- hydrate while another thread writes ------------------------------------- */

struct writer {
    addcow_image *img;
    struct disk *d;
    uint64_t rng;
    atomic_bool stop;
    unsigned min_writes, writes;
    char err[256];
};

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    unsigned char *buf = malloc(64 * KIB);
    if (buf == NULL) {
        snprintf(w->err, sizeof(w->err), "out of memory");
        return NULL;
    }
    while (!atomic_load(&w->stop) || w->writes < w->min_writes) {
        /* Mostly small, often partial-sector writes, anywhere. */
        uint64_t len = 1 + tu_rand_below(&w->rng, tu_rand_below(&w->rng, 4) ? 2000 : 64 * KIB);
        uint64_t off = tu_rand_below(&w->rng, w->d->size - len + 1);
        uint32_t seed = (uint32_t)tu_rand(&w->rng);
        tu_fill_pattern(buf, (size_t)len, seed, off);
        int64_t n = addcow_pwrite(w->img, buf, (size_t)len, off);
        if (n != (int64_t)len) {
            snprintf(w->err, sizeof(w->err), "pwrite(%" PRIu64 ", %" PRIu64 ") returned %"
                     PRId64 ": %s", off, len, n, addcow_last_error());
            break;
        }
        model_write(w->d, off, buf, len);
        w->writes++;
    }
    free(buf);
    return NULL;
}

/* One thread hydrates while another writes into the same handle: every
 * write wins over the backing data (hydrate never copies over a sector
 * that a write allocated meanwhile), and the image file ends up holding
 * exactly the model. */
static void test_hydrate_concurrent(void **state)
{
    (void)state;
    uint64_t seed = tu_seed("hydrate_concurrent");
    struct disk d;
    disk_setup(&d, "hydrate-concurrent", 8 * MIB, 8 * MIB);
    addcow_image *img = disk_open(&d, ADDCOW_OPEN_RDWR);

    struct writer w = { .img = img, .d = &d, .rng = seed, .min_writes = tu_scale(300) };
    atomic_init(&w.stop, false);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, writer_main, &w), 0);
    struct progress_log p = { .sleep_us = 2000 };
    int r = addcow_hydrate(img, 0, 0, progress_cb, &p);
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", addcow_last_error());
    atomic_store(&w.stop, true);
    pthread_join(t, NULL);
    if (w.err[0] != '\0')
        fail_msg("writer: %s", w.err);
    if (r != 0)
        fail_msg("hydrate returned %d: %s", r, msg);
    check_progress(&p, d.size, "concurrent");
    printf("# %u writes alongside the hydrate\n", w.writes);

    model_hydrate(&d, 0, d.size);
    check_alloc(img, &d, "concurrent");
    check_reads(img, &d, "concurrent");
    assert_int_equal(addcow_flush(img), 0);
    check_file_model(d.image, &d, d.size, true, "concurrent");
    assert_int_equal(addcow_close(img), 0);
    img = disk_open(&d, ADDCOW_OPEN_RDONLY);
    check_alloc(img, &d, "concurrent, reopened");
    check_reads(img, &d, "concurrent, reopened");
    assert_int_equal(addcow_close(img), 0);
    model_free(&d);
}

/* ---- detach ------------------------------------------------------------------- */

static void check_backing_field(const struct disk *d, const char *want, const char *ctx)
{
    size_t len;
    unsigned char *f = tu_read_file(d->addcow, &len);
    assert_non_null(f);
    assert_true(len >= TU_HDR_SIZE);
    unsigned char field[TU_PATH_FIELD] = { 0 };
    memcpy(field, want, strlen(want));
    if (memcmp(f + TU_OFF_BACKING, field, TU_PATH_FIELD) != 0) {
        free(f);
        fail_msg("%s: header bytes 12..1035 are not '%s' and NULs", ctx, want);
    }
    free(f);
}

static void test_detach(void **state)
{
    (void)state;
    struct disk d;
    disk_setup(&d, "detach", 2 * MIB, 3 * MIB / 2 + 77);
    addcow_image *img = disk_open(&d, ADDCOW_OPEN_RDWR);
    typical_writes(img, &d);

    /* Backing data still needed: refused, nothing changes. */
    assert_int_equal(addcow_detach(img), -EBUSY);
    expect_prefix("addcow_detach");
    assert_non_null(strstr(addcow_last_error(), "base.raw"));
    assert_string_equal(addcow_get_backing_file(img), "base.raw");
    check_backing_field(&d, "base.raw", "refused");
    check_reads(img, &d, "refused");
    assert_int_equal(addcow_close(img), 0);
    img = disk_open(&d, ADDCOW_OPEN_RDWR);
    assert_string_equal(addcow_get_backing_file(img), "base.raw");

    /* One sector short: still refused. */
    assert_int_equal(addcow_hydrate(img, 0, 512 * KIB, NULL, NULL), 0);
    model_hydrate(&d, 0, 512 * KIB);
    assert_int_equal(addcow_hydrate(img, 512 * KIB + 512, 0, NULL, NULL), 0);
    model_hydrate(&d, 512 * KIB + 512, d.size - 512 * KIB - 512);
    assert_int_equal(addcow_detach(img), -EBUSY);
    assert_non_null(strstr(addcow_last_error(), "524288"));  /* the sector's offset */
    check_backing_field(&d, "base.raw", "one sector short");

    assert_int_equal(addcow_hydrate(img, 0, 0, NULL, NULL), 0);
    model_hydrate(&d, 0, d.size);
    assert_int_equal(addcow_detach(img), 0);
    assert_null(addcow_get_backing_file(img));
    check_backing_field(&d, "", "detached");        /* durable at return */
    check_reads(img, &d, "detached");
    check_alloc(img, &d, "detached");
    assert_int_equal(addcow_detach(img), 0);        /* no backing file: nothing to do */
    /* Unallocated sectors (past the old backing end) read zeros still; a
     * write there works as without a backing file. */
    dwrite(img, &d, d.size - 700, 600, 51);
    check_reads(img, &d, "detached, written");
    assert_int_equal(addcow_close(img), 0);

    assert_int_equal(unlink(d.base), 0);
    img = disk_open(&d, ADDCOW_OPEN_RDWR);
    assert_null(addcow_get_backing_file(img));
    check_reads(img, &d, "reopened without the backing file");
    check_alloc(img, &d, "reopened without the backing file");
    assert_int_equal(addcow_close(img), 0);
    /* The image file is the whole disk: a plain raw file. */
    check_file_model(d.image, &d, d.size, true, "image file after detach");
    model_free(&d);
}

/* Detach after plain writes covered the backing data (no hydrate), with an
 * odd backing end and a backing longer than the disk; and the refusals. */
static void test_detach_cases(void **state)
{
    (void)state;
    struct disk d;
    disk_setup(&d, "detach-writes", 64 * KIB, 5000);
    addcow_image *img = disk_open(&d, ADDCOW_OPEN_RDWR);
    dwrite(img, &d, 0, 4000, 61);
    assert_int_equal(addcow_detach(img), -EBUSY);       /* 4096..5000 still read it */
    dwrite(img, &d, 4000, 1000, 62);                    /* the last, partial sector */
    assert_int_equal(addcow_detach(img), 0);
    assert_null(addcow_get_backing_file(img));
    check_reads(img, &d, "detach after writes");
    assert_int_equal(addcow_close(img), 0);
    check_backing_field(&d, "", "detach after writes");
    model_free(&d);

    disk_setup(&d, "detach-long-backing", 4096, 8192);
    img = disk_open(&d, ADDCOW_OPEN_RDWR);
    dwrite(img, &d, 0, 4096, 63);
    assert_int_equal(addcow_detach(img), 0);
    check_reads(img, &d, "long backing");
    assert_int_equal(addcow_close(img), 0);
    model_free(&d);

    disk_setup(&d, "detach-refusals", 64 * KIB, 0);
    img = disk_open(&d, ADDCOW_OPEN_RDWR);
    assert_int_equal(addcow_detach(img), 0);            /* no backing file */
    assert_int_equal(addcow_close(img), 0);
    model_free(&d);
    assert_int_equal(addcow_detach(NULL), -EINVAL);

    disk_setup(&d, "detach-readonly", 4096, 4096);
    img = disk_open(&d, ADDCOW_OPEN_RDWR);
    dwrite(img, &d, 0, 4096, 64);
    assert_int_equal(addcow_close(img), 0);
    img = disk_open(&d, ADDCOW_OPEN_RDONLY);
    assert_int_equal(addcow_detach(img), -EBADF);
    expect_prefix("addcow_detach");
    assert_string_equal(addcow_get_backing_file(img), "base.raw");
    assert_int_equal(addcow_close(img), 0);
    check_backing_field(&d, "base.raw", "read-only");
    model_free(&d);
}

/* ---- commit --------------------------------------------------------------------- */

/* After a full commit: nothing is allocated, and the raw backing file alone
 * holds the disk; it grew only as far as the data written past its end. */
static void check_committed_raw(addcow_image *img, struct disk *d, uint64_t last_end,
                                const char *ctx)
{
    memset(d->alloc, 0, d->size / SECTOR + 1);
    check_alloc(img, d, ctx);
    check_reads(img, d, ctx);
    check_bitmap_file(d, ctx);
    uint64_t want_len = d->blen > last_end ? d->blen : last_end;
    check_file_model(d->base, d, tu_min_u64(want_len, d->size), false, ctx);
    assert_int_equal(tu_file_size(d->base), (int64_t)want_len);
}

static void test_commit_raw(void **state)
{
    (void)state;
    struct disk d;
    disk_setup(&d, "commit-raw", 4 * MIB, 5 * MIB / 2 + 123);
    addcow_image *img = disk_open(&d, ADDCOW_OPEN_RDWR);
    typical_writes(img, &d);
    dwrite(img, &d, 3 * MIB + 100, 5000, 71);       /* past the backing end */
    dwrite(img, &d, 1 * MIB, 1300 * KIB, 72);       /* a run longer than a MiB */
    uint64_t total = model_allocated(&d), last_end = model_last_alloc_end(&d);

    struct progress_log p = { 0 };
    int r = addcow_commit(img, progress_cb, &p);
    if (r != 0)
        fail_msg("commit returned %d: %s", r, addcow_last_error());
    check_progress(&p, total, "commit raw");
    assert_true(p.calls >= 2);
    assert_string_equal(addcow_get_backing_file(img), "base.raw");
    check_committed_raw(img, &d, last_end, "commit raw");

    /* Still a working overlay: writes allocate again, reads follow. */
    dwrite(img, &d, 2 * MIB, 3000, 73);
    check_reads(img, &d, "written after commit");
    assert_int_equal(addcow_close(img), 0);
    img = disk_open(&d, ADDCOW_OPEN_RDWR);
    check_reads(img, &d, "reopened after commit");
    check_alloc(img, &d, "reopened after commit");

    /* Again, then once more with nothing allocated: progress 0 of 0. */
    assert_int_equal(addcow_commit(img, NULL, NULL), 0);
    check_committed_raw(img, &d, last_end, "second commit");
    memset(&p, 0, sizeof(p));
    assert_int_equal(addcow_commit(img, progress_cb, &p), 0);
    check_progress(&p, 0, "empty commit");
    check_committed_raw(img, &d, last_end, "empty commit");
    assert_int_equal(addcow_close(img), 0);
    model_free(&d);
}

/* Commit into the top of an add-cow chain: mid then reads as top did; the
 * raw base is untouched.  A mid smaller than top grows only as far as the
 * data needs. */
static void test_commit_chain(void **state)
{
    (void)state;
    for (int grow = 0; grow < 2; grow++) {
        const char *ctx = grow ? "chain, mid grows" : "chain";
        struct chain c;
        uint64_t blen = 2 * MIB - 300;
        chain_setup(&c, tu_str("commit-chain-%d", grow), blen, 2 * MIB, grow ? 3 * MIB : 2 * MIB);
        addcow_image *img = tu_open_ok(c.top, ADDCOW_OPEN_RDWR, NULL);
        dwrite(img, &c.d, 300, 5000, 81);
        dwrite(img, &c.d, MIB - 1000, 2000, 82);
        if (grow)
            dwrite(img, &c.d, 5 * MIB / 2 + 10, 700, 83);
        uint64_t last_end = model_last_alloc_end(&c.d);
        uint64_t total = model_allocated(&c.d);

        struct progress_log p = { 0 };
        int r = addcow_commit(img, progress_cb, &p);
        if (r != 0)
            fail_msg("%s: commit returned %d: %s", ctx, r, addcow_last_error());
        check_progress(&p, total, ctx);
        memset(c.d.alloc, 0, c.d.size / SECTOR + 1);
        check_alloc(img, &c.d, ctx);
        check_reads(img, &c.d, ctx);
        assert_int_equal(addcow_close(img), 0);

        /* mid alone reads as top did, over its (maybe grown) size. */
        uint64_t mid_size = grow ? ceil_sector(last_end) : 2 * MIB;
        addcow_image *mid = tu_open_ok(c.mid, ADDCOW_OPEN_RDONLY, NULL);
        assert_int_equal(addcow_get_size(mid), (int64_t)mid_size);
        unsigned char *buf = malloc(mid_size);
        assert_non_null(buf);
        assert_int_equal(addcow_pread(mid, buf, mid_size, 0), (int64_t)mid_size);
        compare_bytes(buf, c.d.model, mid_size, "mid", ctx);
        free(buf);
        assert_int_equal(addcow_close(mid), 0);

        /* The base is as it was. */
        unsigned char *want = malloc(blen);
        assert_non_null(want);
        tu_fill_pattern(want, blen, BASE_SEED, 0);
        size_t flen;
        unsigned char *f = tu_read_file(c.d.base, &flen);
        assert_non_null(f);
        assert_int_equal(flen, blen);
        compare_bytes(f, want, blen, "base", ctx);
        free(f);
        free(want);

        img = tu_open_ok(c.top, ADDCOW_OPEN_RDONLY, NULL);
        check_reads(img, &c.d, ctx);
        check_alloc(img, &c.d, ctx);
        assert_int_equal(addcow_close(img), 0);
        chain_free(&c);
    }
}

/* Another handle holds the backing file: -EBUSY, and the handle keeps its
 * backing file (reads it, writes over it); once the other handle is gone,
 * the commit succeeds. */
static void test_commit_busy(void **state)
{
    (void)state;
    struct disk d;
    disk_setup(&d, "commit-busy", 1 * MIB, 1 * MIB - 3);
    const char *other = tu_str("%s/other.add-cow", d.dir);
    assert_int_equal(addcow_create(other, 0, "base.raw", "other.raw", NULL), 0);
    addcow_image *img = disk_open(&d, ADDCOW_OPEN_RDWR);
    typical_writes(img, &d);
    addcow_image *oimg = tu_open_ok(other, ADDCOW_OPEN_RDONLY, NULL);

    assert_int_equal(addcow_commit(img, NULL, NULL), -EBUSY);
    expect_prefix("addcow_commit");
    assert_non_null(strstr(addcow_last_error(), "base.raw"));
    check_reads(img, &d, "busy");
    check_alloc(img, &d, "busy");
    dwrite(img, &d, 200 * KIB + 5, 10, 91);             /* COW from the backing file */
    check_reads(img, &d, "busy, written");
    /* Twice: the locks are what they were. */
    assert_int_equal(addcow_commit(img, NULL, NULL), -EBUSY);
    assert_int_equal(addcow_close(oimg), 0);
    uint64_t last_end = model_last_alloc_end(&d);
    assert_int_equal(addcow_commit(img, NULL, NULL), 0);
    check_committed_raw(img, &d, last_end, "after busy");
    /* The backing file is shared again: another reader may open it. */
    oimg = tu_open_ok(other, ADDCOW_OPEN_RDONLY, NULL);
    assert_int_equal(addcow_close(oimg), 0);
    assert_int_equal(addcow_close(img), 0);
    model_free(&d);

    /* The chain: mid open elsewhere. */
    struct chain c;
    chain_setup(&c, "commit-busy-chain", 1 * MIB, 1 * MIB, 1 * MIB);
    img = tu_open_ok(c.top, ADDCOW_OPEN_RDWR, NULL);
    dwrite(img, &c.d, 4096, 4096, 92);
    addcow_image *mid = tu_open_ok(c.mid, ADDCOW_OPEN_RDONLY, NULL);
    assert_int_equal(addcow_commit(img, NULL, NULL), -EBUSY);
    expect_prefix("addcow_commit");
    check_reads(img, &c.d, "chain busy");
    check_alloc(img, &c.d, "chain busy");
    assert_int_equal(addcow_close(mid), 0);
    assert_int_equal(addcow_commit(img, NULL, NULL), 0);
    memset(c.d.alloc, 0, c.d.size / SECTOR + 1);
    check_alloc(img, &c.d, "chain after busy");
    check_reads(img, &c.d, "chain after busy");
    assert_int_equal(addcow_close(img), 0);
    chain_free(&c);
}

static void test_commit_args(void **state)
{
    (void)state;
    assert_int_equal(addcow_commit(NULL, NULL, NULL), -EINVAL);
    expect_prefix("addcow_commit");

    struct disk d;
    disk_setup(&d, "commit-none", 64 * KIB, 0);
    addcow_image *img = disk_open(&d, ADDCOW_OPEN_RDWR);
    dwrite(img, &d, 0, 1000, 101);
    assert_int_equal(addcow_commit(img, NULL, NULL), -EINVAL);
    expect_prefix("addcow_commit");
    check_alloc(img, &d, "no backing");
    assert_int_equal(addcow_close(img), 0);
    model_free(&d);

    disk_setup(&d, "commit-readonly", 64 * KIB, 10000);
    img = disk_open(&d, ADDCOW_OPEN_RDWR);
    dwrite(img, &d, 0, 1000, 102);
    assert_int_equal(addcow_close(img), 0);
    img = disk_open(&d, ADDCOW_OPEN_RDONLY);
    assert_int_equal(addcow_commit(img, NULL, NULL), -EBADF);
    expect_prefix("addcow_commit");
    check_alloc(img, &d, "read-only");
    check_reads(img, &d, "read-only");
    assert_int_equal(addcow_close(img), 0);
    model_free(&d);
}

/* A cancelled commit commits (durably) the first `done` allocated bytes, in
 * disk order, and nothing reads differently; a second commit finishes. */
static void test_commit_cancel(void **state)
{
    (void)state;
    struct disk d;
    disk_setup(&d, "commit-cancel", 4 * MIB, 4 * MIB);
    addcow_image *img = disk_open(&d, ADDCOW_OPEN_RDWR);
    dwrite(img, &d, 100, 1200 * KIB, 111);
    dwrite(img, &d, 3 * MIB / 2, 1200 * KIB, 112);
    dwrite(img, &d, 3 * MIB + 1000, 800 * KIB, 113);
    uint64_t total = model_allocated(&d), last_end = model_last_alloc_end(&d);

    struct progress_log p = { .cancel_at = 2 };
    assert_int_equal(addcow_commit(img, progress_cb, &p), -ECANCELED);
    expect_prefix("addcow_commit");
    assert_int_equal(p.calls, 2);
    assert_true(p.done > 0 && p.done < total);
    /* The first p.done allocated bytes are committed: their bits clear. */
    uint64_t left = p.done / SECTOR;
    for (uint64_t s = 0; s < d.size / SECTOR && left > 0; s++) {
        if (d.alloc[s]) {
            d.alloc[s] = false;
            left--;
        }
    }
    check_alloc(img, &d, "cancelled");
    check_reads(img, &d, "cancelled");
    check_bitmap_file(&d, "cancelled");
    assert_int_equal(addcow_close(img), 0);
    img = disk_open(&d, ADDCOW_OPEN_RDWR);
    check_reads(img, &d, "cancelled, reopened");

    memset(&p, 0, sizeof(p));
    assert_int_equal(addcow_commit(img, progress_cb, &p), 0);
    check_progress(&p, model_allocated(&d), "resumed");
    check_committed_raw(img, &d, last_end, "resumed");
    assert_int_equal(addcow_close(img), 0);
    model_free(&d);
}

/* ---- memfs: faults and crash states ------------------------------------------ */

#define M_ADDCOW "/f/disk.add-cow"
#define M_IMAGE "/f/disk.raw"
#define M_BACK "/f/base.raw"
#define M_DISK (64u * KIB)
#define M_BLEN 40000u               /* not a multiple of 512 */

struct mdisk {
    struct memfs *fs;
    addcow_options *o;
    struct disk d;
};

/* A memfs disk over base.raw with writes of every kind, flushed, open
 * read-write. */
static addcow_image *m_setup(struct mdisk *m)
{
    memset(m, 0, sizeof(*m));
    m->fs = memfs_new();
    assert_non_null(m->fs);
    m->o = memfs_options(m->fs);
    assert_non_null(m->o);
    unsigned char *b = malloc(M_BLEN);
    assert_non_null(b);
    tu_fill_pattern(b, M_BLEN, BASE_SEED, 0);
    assert_int_equal(memfs_put(m->fs, M_BACK, b, M_BLEN), 0);
    free(b);
    assert_int_equal(addcow_create(M_ADDCOW, M_DISK, "base.raw", "disk.raw", m->o), 0);
    model_new(&m->d, M_DISK, M_BLEN, BASE_SEED);
    addcow_image *img = tu_open_ok(M_ADDCOW, ADDCOW_OPEN_RDWR, m->o);
    dwrite(img, &m->d, 100, 300, 1);
    dwrite(img, &m->d, 8192, 4096, 2);
    dwrite(img, &m->d, 20000, 3000, 3);
    dwrite(img, &m->d, 39800, 700, 4);      /* across the backing end */
    dwrite(img, &m->d, 60000, 1000, 5);     /* past it */
    assert_int_equal(addcow_flush(img), 0);
    return img;
}

static void m_done(struct mdisk *m, addcow_image *img)
{
    if (img != NULL)
        assert_int_equal(addcow_close(img), 0);
    assert_int_equal(memfs_open_handles(m->fs), 0);
    addcow_options_free(m->o);
    memfs_free(m->fs);
    model_free(&m->d);
}

/* What a crash now could leave: every file at its durable bytes (durable)
 * or with every write landed (!durable). */
static struct memfs *m_crash_copy(struct memfs *fs, bool durable)
{
    struct memfs *c = memfs_new();
    assert_non_null(c);
    for (size_t i = 0; i < memfs_count(fs); i++) {
        char *name = memfs_name_at(fs, i);
        assert_non_null(name);
        if (memfs_exists(fs, name) == 1) {
            size_t len;
            unsigned char *buf = durable ? memfs_get_durable(fs, name, &len)
                                         : memfs_get(fs, name, &len);
            assert_non_null(buf);
            assert_int_equal(memfs_put(c, name, buf, len), 0);
            free(buf);
        }
        free(name);
    }
    return c;
}

/* The image in fs opens and reads d's model (d NULL: any contents);
 * returns its backing file name as stored (a tu_str copy; NULL: none). */
static const char *m_check_state(struct memfs *fs, const struct disk *d, const char *ctx)
{
    addcow_options *o = memfs_options(fs);
    assert_non_null(o);
    addcow_image *img = NULL;
    int r = addcow_open(M_ADDCOW, ADDCOW_OPEN_RDONLY, o, &img);
    if (r != 0)
        fail_msg("%s: open returned %d: %s", ctx, r, addcow_last_error());
    if (d != NULL)
        check_reads(img, d, ctx);
    const char *b = addcow_get_backing_file(img);
    const char *ret = b != NULL ? tu_str("%s", b) : NULL;
    assert_int_equal(addcow_close(img), 0);
    addcow_options_free(o);
    return ret;
}

/* Both crash extremes of fs read d's model. */
static void m_check_crash_now(struct memfs *fs, const struct disk *d, const char *ctx)
{
    for (int durable = 0; durable < 2; durable++) {
        struct memfs *c = m_crash_copy(fs, durable);
        m_check_state(c, d, tu_str("%s, crash (%s)", ctx, durable ? "durable bytes"
                                                                   : "all writes landed"));
        memfs_free(c);
    }
}

enum m_op { M_HYDRATE, M_COMMIT, M_DETACH };

static const char *m_op_name(enum m_op op)
{
    return op == M_HYDRATE ? "hydrate" : op == M_COMMIT ? "commit" : "detach";
}

static int m_run(enum m_op op, addcow_image *img)
{
    switch (op) {
    case M_HYDRATE: return addcow_hydrate(img, 0, 0, NULL, NULL);
    case M_COMMIT: return addcow_commit(img, NULL, NULL);
    case M_DETACH: return addcow_detach(img);
    }
    return -1;
}

/* The model after a successful op. */
static void m_model_after(enum m_op op, struct disk *d)
{
    if (op == M_COMMIT)
        memset(d->alloc, 0, d->size / SECTOR + 1);
    else
        model_hydrate(d, 0, d->size);
}

/* After a successful commit: the base holds the disk, as far as it
 * reaches (it grew to the last allocated sector). */
static void m_check_committed_base(struct mdisk *m, uint64_t last_end, const char *ctx)
{
    size_t len;
    unsigned char *b = memfs_get(m->fs, M_BACK, &len);
    assert_non_null(b);
    uint64_t want = last_end > M_BLEN ? last_end : M_BLEN;
    if (len != want) {
        free(b);
        fail_msg("%s: base is %zu bytes, expected %" PRIu64, ctx, len, want);
    }
    compare_bytes(b, m->d.model, len, "base", ctx);
    free(b);
}

struct fault_kind {
    unsigned ops;
    const char *pattern;
    const char *what;
};

/* Makes the k-th operation of one kind fail, for k = 1, 2, ... until the
 * operation no longer reaches a k-th one.  Each failure: the call returns
 * the error with its message, the handle keeps reading the model (and
 * writing), both crash extremes read the model, and a second call
 * succeeds. */
static void m_fault_sweep(enum m_op op, const struct fault_kind *fk)
{
    unsigned hits = 0;
    for (uint64_t k = 1;; k++) {
        struct mdisk m;
        addcow_image *img = m_setup(&m);
        if (op == M_DETACH) {
            assert_int_equal(addcow_hydrate(img, 0, 0, NULL, NULL), 0);
            model_hydrate(&m.d, 0, m.d.size);
        }
        uint64_t last_end = model_last_alloc_end(&m.d);
        const char *ctx = tu_str("%s, %s #%" PRIu64 " fails", m_op_name(op), fk->what, k);
        struct memfs_fault f = { fk->ops, fk->pattern, k, false, EIO };
        assert_int_equal(memfs_fault_add(m.fs, &f), 0);
        int r = m_run(op, img);
        bool hit = memfs_fault_hits(m.fs) > 0;
        memfs_fault_clear(m.fs);
        if (!hit) {
            /* Past the last such operation: a clean run. */
            if (r != 0)
                fail_msg("%s: returned %d without a fault: %s", ctx, r, addcow_last_error());
            if (hits == 0)
                fail_msg("%s %s: never reached", m_op_name(op), fk->what);
            m_done(&m, img);
            break;
        }
        hits++;
        if (r != -EIO)
            fail_msg("%s: returned %d (%s), expected -EIO", ctx, r, addcow_last_error());
        char call[32];
        snprintf(call, sizeof(call), "addcow_%s", m_op_name(op));
        expect_prefix(call);

        check_reads(img, &m.d, ctx);
        m_check_crash_now(m.fs, &m.d, ctx);

        /* A second call finishes the job. */
        r = m_run(op, img);
        if (r != 0)
            fail_msg("%s: the second call returned %d: %s", ctx, r, addcow_last_error());
        m_model_after(op, &m.d);
        check_reads(img, &m.d, ctx);
        check_alloc(img, &m.d, ctx);
        if (op == M_COMMIT)
            m_check_committed_base(&m, last_end, ctx);
        if (op == M_DETACH)
            assert_null(addcow_get_backing_file(img));
        /* Still a working handle. */
        dwrite(img, &m.d, 30000, 5000, 9);
        check_reads(img, &m.d, ctx);
        assert_int_equal(addcow_close(img), 0);
        img = tu_open_ok(M_ADDCOW, ADDCOW_OPEN_RDONLY, m.o);
        check_reads(img, &m.d, ctx);
        check_alloc(img, &m.d, ctx);
        if (op == M_DETACH)
            assert_null(addcow_get_backing_file(img));
        m_done(&m, img);
    }
}

static void test_hydrate_faults(void **state)
{
    (void)state;
    static const struct fault_kind kinds[] = {
        { MEMFS_OP_WRITE, "*disk.raw", "image file write" },
        { MEMFS_OP_READ, "*base.raw", "backing file read" },
        { MEMFS_OP_FLUSH, "*disk.raw", "image file flush" },
        { MEMFS_OP_WRITE, "*disk.add-cow", "bitmap write" },
        { MEMFS_OP_FLUSH, "*disk.add-cow", "add-cow file flush" },
    };
    for (unsigned i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
        m_fault_sweep(M_HYDRATE, &kinds[i]);
}

/* A hydrate finds allocated sectors and skips them: over a disk hydrated
 * already, it writes nothing at all (no data, and no bits since none
 * changed), and reads nothing from the backing file. */
static void test_hydrate_skips_allocated(void **state)
{
    (void)state;
    struct mdisk m;
    addcow_image *img = m_setup(&m);
    assert_int_equal(addcow_hydrate(img, 0, 0, NULL, NULL), 0);
    model_hydrate(&m.d, 0, m.d.size);
    struct memfs_fault f = { MEMFS_OP_READ, "*base.raw", 0, false, EIO };
    assert_int_equal(memfs_fault_add(m.fs, &f), 0);
    memfs_op_count_reset(m.fs);
    assert_int_equal(addcow_hydrate(img, 0, 0, NULL, NULL), 0);
    assert_int_equal(memfs_op_count(m.fs, MEMFS_OP_WRITE | MEMFS_OP_READ), 0);
    memfs_fault_clear(m.fs);
    check_alloc(img, &m.d, "second hydrate");
    check_reads(img, &m.d, "second hydrate");
    m_done(&m, img);
}

static void test_commit_faults(void **state)
{
    (void)state;
    static const struct fault_kind kinds[] = {
        { MEMFS_OP_OPEN, "*base.raw", "backing file open" },
        { MEMFS_OP_LOCK, "*base.raw", "backing file lock" },
        { MEMFS_OP_SIZE, "*base.raw", "backing file size" },
        { MEMFS_OP_WRITE, "*base.raw", "backing file write" },
        { MEMFS_OP_FLUSH, "*base.raw", "backing file flush" },
        { MEMFS_OP_READ, "*disk.raw", "image file read" },
        { MEMFS_OP_WRITE, "*disk.add-cow", "bitmap write" },
        { MEMFS_OP_FLUSH, "*disk.add-cow", "add-cow file flush" },
        { MEMFS_OP_FLUSH, "*disk.raw", "image file flush" },
    };
    for (unsigned i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
        m_fault_sweep(M_COMMIT, &kinds[i]);
}

static void test_detach_faults(void **state)
{
    (void)state;
    static const struct fault_kind kinds[] = {
        { MEMFS_OP_WRITE, "*disk.add-cow", "add-cow file write" },
        { MEMFS_OP_FLUSH, NULL, "flush" },
    };
    for (unsigned i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
        m_fault_sweep(M_DETACH, &kinds[i]);
}

/* Records a successful run of op and replays every prefix of its
 * operations: a crash after any of them, with the files at their durable
 * bytes or with every write landed, leaves a disk that reads the model (and
 * for detach, a header that names the backing file or none).
 * unflushed (detach): the backing data was covered by writes not flushed
 * yet: a crash may lose them as long as the header still names the backing
 * file, but once it names none, they must all be there. */
static void m_crash_points(enum m_op op, bool unflushed)
{
    struct mdisk m;
    addcow_image *img = m_setup(&m);
    if (op == M_DETACH && unflushed) {
        dwrite(img, &m.d, 0, M_BLEN, 7);
    } else if (op == M_DETACH) {
        assert_int_equal(addcow_hydrate(img, 0, 0, NULL, NULL), 0);
        model_hydrate(&m.d, 0, m.d.size);
        assert_int_equal(addcow_flush(img), 0);
    }
    struct memfs *start = memfs_clone(m.fs);
    assert_non_null(start);
    memfs_record_start(m.fs);
    int r = m_run(op, img);
    memfs_record_stop(m.fs);
    if (r != 0)
        fail_msg("%s returned %d: %s", m_op_name(op), r, addcow_last_error());
    size_t n = memfs_rec_count(m.fs);
    assert_true(n > 0);
    unsigned detached = 0;
    for (size_t i = 0; i <= n; i++) {
        struct memfs *c = memfs_clone(start);
        assert_non_null(c);
        for (size_t j = 0; j < i; j++)
            assert_int_equal(memfs_apply(c, memfs_rec_at(m.fs, j)), 0);
        for (int durable = 0; durable < 2; durable++) {
            struct memfs *s = m_crash_copy(c, durable);
            const char *ctx = tu_str("%s, crash after %zu of %zu operations (%s)",
                                     m_op_name(op), i, n,
                                     durable ? "durable bytes" : "all writes landed");
            const char *b = m_check_state(s, unflushed ? NULL : &m.d, ctx);
            if (b == NULL)
                detached++;
            else if (strcmp(b, "base.raw") != 0)
                fail_msg("%s: backing file '%s'", ctx, b);
            if (b == NULL && unflushed)
                m_check_state(s, &m.d, ctx);
            memfs_free(s);
        }
        memfs_free(c);
    }
    /* Detach: the last state has no backing file any more. */
    if (op == M_DETACH)
        assert_true(detached > 0);
    else
        assert_int_equal(detached, 0);
    memfs_free(start);
    m_done(&m, img);
}

static void test_crash_points(void **state)
{
    (void)state;
    m_crash_points(M_HYDRATE, false);
    m_crash_points(M_COMMIT, false);
    m_crash_points(M_DETACH, false);
    m_crash_points(M_DETACH, true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hydrate_raw),
        cmocka_unit_test(test_hydrate_range),
        cmocka_unit_test(test_hydrate_args),
        cmocka_unit_test(test_hydrate_cancel_resume),
        cmocka_unit_test(test_hydrate_chain),
        cmocka_unit_test(test_hydrate_concurrent),
        cmocka_unit_test(test_detach),
        cmocka_unit_test(test_detach_cases),
        cmocka_unit_test(test_commit_raw),
        cmocka_unit_test(test_commit_chain),
        cmocka_unit_test(test_commit_busy),
        cmocka_unit_test(test_commit_args),
        cmocka_unit_test(test_commit_cancel),
        cmocka_unit_test(test_hydrate_faults),
        cmocka_unit_test(test_hydrate_skips_allocated),
        cmocka_unit_test(test_commit_faults),
        cmocka_unit_test(test_detach_faults),
        cmocka_unit_test(test_crash_points),
    };
    return cmocka_run_group_tests(tests, NULL, tu_free_strings);
}
