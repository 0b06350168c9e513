/*
 * test-model.c: a model-based randomized test of the public API.
 *
 * Real files in the scratch folder, the default posix backend.  The test
 * keeps its own model of every image under test: the bytes the virtual disk
 * must read as, and one "allocated" flag per sector, derived from FORMAT.md,
 * API.md and the behaviour decisions of the library (write: every touched
 * sector becomes allocated; write_zeroes: runs that are ZERO stay
 * unallocated, every other touched sector becomes allocated; truncate grow:
 * the new area reads zeros, the new sectors that lie (even partly) below the
 * backing file's end become allocated; shrink drops the rest).  Thousands of
 * random operations (unaligned writes, pwritev with random splits, reads past
 * the end, write_zeroes with and without MAY_UNMAP, flush, truncate,
 * close/reopen) are run against the library and, after each one, the disk,
 * the allocation count and block_status are compared with the model; after
 * every flush and close the add-cow file and the image file are read from
 * disk and compared with the model byte for byte.
 *
 * One cmocka test per configuration: no backing file; a raw backing file
 * shorter than, as long as, longer than the disk, or of an odd length (not
 * a multiple of 512); and a chain (top -> middle add-cow -> raw base) whose
 * middle image got its own random content through the library first.
 *
 * A mismatch prints the seed, the round, the step, the operation and every
 * operation of the round so far; AC_SEED=<seed> replays the run.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "addcow.h"
#include "testutil.h"

#define SECTOR 512u

/* Most rounds use small disks (many operations per sector); every eighth one
 * a disk of 8192..12287 sectors, whose bitmap spans several of the
 * library's dirty blocks (512 bitmap bytes, 4096 sectors each). */
#define SMALL_SECTORS 300u
#define BIG_SECTORS 8192u
#define BIG_EVERY 8
#define MAX_SECTORS 12800u                   /* no disk grows past this */
#define MAX_BYTES ((uint64_t)MAX_SECTORS * SECTOR)
#define MAX_BASE (MAX_BYTES + 128u * SECTOR)  /* longest raw backing file */
#define BUF_BYTES (MAX_BYTES + 8192u)        /* I/O buffers: a disk and some */
#define MAX_IOV 12
#define IOV_GAP 16u                          /* bytes between scattered pieces */
#define SCATTER_BYTES (BUF_BYTES + MAX_IOV * IOV_GAP)
#define SENTINEL 0xEEu

#define LOG_MAX 1200
#define LOG_LEN 320                          /* one operation's description */
#define LOG_LINE (LOG_LEN + 48)              /* with the disk's name and step */
#define FULL_CHECK_EVERY 16

enum config {
    CFG_NONE,       /* no backing file */
    CFG_SHORTER,    /* raw backing file shorter than the disk */
    CFG_EQUAL,      /* raw backing file as long as the disk */
    CFG_LONGER,     /* raw backing file longer than the disk */
    CFG_ODD,        /* raw backing file whose length is not a multiple of 512 */
    CFG_CHAIN,      /* top -> middle add-cow -> raw base */
};

/* What a virtual disk must look like. */
struct model {
    uint64_t size;                  /* virtual size, a multiple of 512 */
    unsigned char *data;            /* MAX_BYTES: what each byte reads as */
    unsigned char *alloc;           /* MAX_SECTORS: 1 = the sector's bit is set */
    const unsigned char *bdata;     /* what the backing file reads as; NULL: none */
    uint64_t bsize;                 /* its length (virtual size for add-cow); 0: none */
};

/* One add-cow image under test, with its model. */
struct disk {
    const char *name;               /* "top" or "mid", for messages */
    char *path;                     /* the add-cow file */
    char *image_path;               /* the image file, resolved */
    char image_stored[256];         /* the header's image_file field */
    char backing_stored[4096];      /* the header's backing_file field; "" = none */
    addcow_image *img;
    struct model m;
};

struct ctx {
    const char *test;
    uint64_t seed, rng;
    unsigned round, step;
    const char *who;                /* the disk the current operation is on */
    char op[LOG_LEN];               /* the current operation */
    char (*log)[LOG_LINE];           /* this round's operations */
    unsigned nlog, nlog_dropped;
    unsigned long total_ops;        /* operations of the whole test */

    unsigned char *wbuf, *rbuf, *scatter;
    unsigned char *base;            /* the raw backing file's bytes */
    uint64_t base_len;
    char *base_path;
    struct disk top, mid;

    /* the middle image's files, as they were when it was closed */
    unsigned char *snap_acf, *snap_img;
    size_t snap_acf_len, snap_img_len;
    /* file contents being checked (freed by the teardown if a check fails) */
    unsigned char *file_a, *file_b;
};

/* ---- failure reports --------------------------------------------------- */

static void fail_at(struct ctx *c, const char *file, int line, const char *fmt, ...)
    CMOCKA_PRINTF_ATTRIBUTE(4, 5);

static void fail_at(struct ctx *c, const char *file, int line, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    printf("# operations of round %u so far (the last one failed):\n", c->round);
    if (c->nlog_dropped > 0)
        printf("#   ... %u earlier operations not kept\n", c->nlog_dropped);
    for (unsigned i = 0; i < c->nlog; i++)
        printf("#   %s\n", c->log[i]);
    printf("# MISMATCH in %s: seed %" PRIu64 " (replay with AC_SEED=%" PRIu64 "), round %u, "
           "%s step %u, operation: %s\n#   %s\n#   last library error: %s\n",
           c->test, c->seed, c->seed, c->round, c->who ? c->who : "-", c->step, c->op, msg,
           addcow_last_error());
    fflush(stdout);
    print_error("%s: seed %" PRIu64 ", round %u, step %u, %s: %s\n", c->test, c->seed,
                c->round, c->step, c->op, msg);
    _fail(file, line);
}

#define CHECK(c, cond, ...)                                         \
    do {                                                            \
        if (!(cond))                                                \
            fail_at((c), __FILE__, __LINE__, __VA_ARGS__);          \
    } while (0)

/* Records the operation about to run, for the failure report. */
static void note_op(struct ctx *c, struct disk *d, const char *fmt, ...)
    CMOCKA_PRINTF_ATTRIBUTE(3, 4);

static void note_op(struct ctx *c, struct disk *d, const char *fmt, ...)
{
    va_list ap;
    char body[LOG_LEN];

    va_start(ap, fmt);
    vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    c->who = d ? d->name : "-";
    c->step++;
    c->total_ops++;
    snprintf(c->op, sizeof(c->op), "%s", body);
    if (c->nlog == LOG_MAX) {
        memmove(c->log[0], c->log[1], (LOG_MAX - 1) * sizeof(c->log[0]));
        c->nlog--;
        c->nlog_dropped++;
    }
    snprintf(c->log[c->nlog++], LOG_LINE, "%.8s #%u: %s", c->who, c->step, body);
}

/* ---- random numbers ---------------------------------------------------- */

static uint64_t rnd(struct ctx *c, uint64_t n)
{
    return tu_rand_below(&c->rng, n);
}

static void rnd_bytes(struct ctx *c, unsigned char *p, size_t n)
{
    while (n > 0) {
        uint64_t x = tu_rand(&c->rng);
        size_t k = n < 8 ? n : 8;
        memcpy(p, &x, k);
        p += k;
        n -= k;
    }
}

/* ---- the model --------------------------------------------------------- */

static unsigned char backing_byte(const struct model *m, uint64_t b)
{
    return b < m->bsize ? m->bdata[b] : 0;
}

/* A freshly created image: nothing allocated, everything reads through. */
static void model_create(struct model *m, uint64_t size)
{
    m->size = size;
    memset(m->alloc, 0, MAX_SECTORS);
    for (uint64_t b = 0; b < size; b++)
        m->data[b] = backing_byte(m, b);
}

static uint64_t model_allocated_bytes(const struct model *m)
{
    uint64_t n = 0;
    for (uint64_t s = 0; s < m->size / SECTOR; s++)
        n += m->alloc[s];
    return n * SECTOR;
}

/* The block_status flags of byte b. */
static unsigned model_flags(const struct model *m, uint64_t b)
{
    if (m->alloc[b / SECTOR])
        return ADDCOW_STATUS_ALLOCATED;
    return b >= m->bsize ? ADDCOW_STATUS_ZERO : 0;
}

/* The longest run from off, at most len bytes, of bytes with equal flags.
 * Flags change only at sector boundaries and at the backing's end. */
static uint64_t model_run(const struct model *m, uint64_t off, uint64_t len)
{
    unsigned f = model_flags(m, off);
    uint64_t end = off + len, pos = off;

    for (;;) {
        uint64_t next = (pos / SECTOR + 1) * SECTOR;
        if (m->bsize > pos && m->bsize < next)
            next = m->bsize;
        if (next >= end)
            return end - off;
        if (model_flags(m, next) != f)
            return next - off;
        pos = next;
    }
}

static void model_write(struct model *m, const unsigned char *buf, uint64_t off, uint64_t len)
{
    memcpy(m->data + off, buf, (size_t)len);
    for (uint64_t s = off / SECTOR; s < (off + len + SECTOR - 1) / SECTOR; s++)
        m->alloc[s] = 1;
}

/* write_zeroes: a sector stays unallocated only when every byte of it that
 * the range touches is ZERO (unallocated, past the backing's end). */
static void model_write_zeroes(struct model *m, uint64_t off, uint64_t len)
{
    uint64_t end = off + len;
    for (uint64_t s = off / SECTOR; s * SECTOR < end; s++) {
        uint64_t first = s * SECTOR > off ? s * SECTOR : off;   /* first byte touched */
        if (!m->alloc[s] && first < m->bsize)
            m->alloc[s] = 1;
    }
    memset(m->data + off, 0, (size_t)len);
}

static void model_truncate(struct model *m, uint64_t size)
{
    uint64_t s_old = m->size / SECTOR, s_new = size / SECTOR;
    if (s_new < s_old) {
        memset(m->alloc + s_new, 0, (size_t)(s_old - s_new));
    } else {
        for (uint64_t s = s_old; s < s_new; s++)
            m->alloc[s] = s * SECTOR < m->bsize;
        memset(m->data + m->size, 0, (size_t)(size - m->size));
    }
    m->size = size;
}

/* ---- checks ------------------------------------------------------------ */

static void check_allocated(struct ctx *c, struct disk *d)
{
    int64_t got = addcow_get_allocated_bytes(d->img);
    uint64_t want = model_allocated_bytes(&d->m);
    CHECK(c, got >= 0 && (uint64_t)got == want,
          "addcow_get_allocated_bytes = %" PRId64 ", model %" PRIu64, got, want);
}

/* The model's bytes [off, off + got) against buf. */
static void check_bytes(struct ctx *c, struct disk *d, const unsigned char *buf,
                        uint64_t off, uint64_t got, const char *what)
{
    if (memcmp(buf, d->m.data + off, (size_t)got) == 0)
        return;
    uint64_t i = 0;
    while (buf[i] == d->m.data[off + i])
        i++;
    CHECK(c, false, "%s: byte %" PRIu64 " (sector %" PRIu64 ", %s) reads 0x%02x, model 0x%02x",
          what, off + i, (off + i) / SECTOR,
          d->m.alloc[(off + i) / SECTOR] ? "allocated" : "unallocated", buf[i],
          d->m.data[off + i]);
}

/* Reads [off, off + len) (clipped to the disk) and compares with the model. */
static void check_read(struct ctx *c, struct disk *d, uint64_t off, uint64_t len)
{
    if (off >= d->m.size)
        return;
    len = tu_min_u64(len, d->m.size - off);
    int64_t r = addcow_pread(d->img, c->rbuf, (size_t)len, off);
    CHECK(c, r == (int64_t)len, "check read of %" PRIu64 " bytes at %" PRIu64 " returned %" PRId64,
          len, off, r);
    check_bytes(c, d, c->rbuf, off, len, "check read");
}

/* Walks block_status over [off, end): every run against the model, and no
 * two consecutive runs with the same flags (runs are maximal). */
static void check_status_walk(struct ctx *c, struct disk *d, uint64_t off, uint64_t end)
{
    int prev = -1;
    for (uint64_t pos = off; pos < end;) {
        uint64_t run = UINT64_MAX;
        int st = addcow_block_status(d->img, pos, end - pos, &run);
        unsigned want = model_flags(&d->m, pos);
        uint64_t want_run = model_run(&d->m, pos, end - pos);
        CHECK(c, st >= 0 && (unsigned)st == want && run == want_run,
              "block_status(%" PRIu64 ", %" PRIu64 ") = %d, run %" PRIu64 "; model: flags %u, "
              "run %" PRIu64 " (backing end %" PRIu64 ")", pos, end - pos, st, run, want,
              want_run, d->m.bsize);
        CHECK(c, st != prev, "block_status run at %" PRIu64 " has the flags (%d) of the run "
              "before it: runs are not maximal", pos, st);
        prev = st;
        pos += run;
    }
}

/* The whole disk: contents, a read past the end, block_status, allocation. */
static void check_full(struct ctx *c, struct disk *d)
{
    uint64_t size = d->m.size;
    int64_t sz = addcow_get_size(d->img);
    CHECK(c, sz == (int64_t)size, "addcow_get_size = %" PRId64 ", model %" PRIu64, sz, size);
    /* ask for more than there is: a short count */
    int64_t r = addcow_pread(d->img, c->rbuf, (size_t)size + 1000, 0);
    CHECK(c, r == (int64_t)size, "reading the whole disk plus 1000 bytes returned %" PRId64
          ", want %" PRIu64, r, size);
    check_bytes(c, d, c->rbuf, 0, size, "whole-disk read");
    check_status_walk(c, d, 0, size);
    check_allocated(c, d);
}

static void check_path_field(struct ctx *c, const unsigned char *field, const char *want,
                             const char *what)
{
    size_t n = strlen(want);
    CHECK(c, memcmp(field, want, n) == 0 && field[n] == '\0',
          "on disk: %s field is '%.*s', want '%s'", what, (int)TU_PATH_FIELD - 1,
          (const char *)field, want);
    for (size_t i = n; i < TU_PATH_FIELD; i++)
        CHECK(c, field[i] == 0, "on disk: %s field byte %zu after the NUL is 0x%02x", what, i,
              field[i]);
}

/* The add-cow file and the image file as they are on disk against the
 * model: header, length, bitmap bits (exactly), and the data of every
 * allocated sector. */
static void check_on_disk(struct ctx *c, struct disk *d, const char *when)
{
    const struct model *m = &d->m;
    uint64_t nsect = m->size / SECTOR, nbytes = (nsect + 7) / 8;
    size_t alen = 0, ilen = 0;

    c->file_a = tu_read_file(d->path, &alen);
    CHECK(c, c->file_a != NULL, "%s: cannot read the add-cow file '%s'", when, d->path);
    const unsigned char *a = c->file_a;
    CHECK(c, alen == TU_HDR_SIZE + nbytes, "%s: the add-cow file is %zu bytes long, want "
          "2068 + %" PRIu64 " for a size of %" PRIu64, when, alen, nbytes, m->size);
    CHECK(c, tu_get_be(a, 8) == TU_MAGIC, "%s: bad magic on disk", when);
    CHECK(c, a[8] == 0 && a[9] == 0 && a[10] == 0 && a[11] == 1, "%s: version field is not 1",
          when);
    check_path_field(c, a + TU_OFF_BACKING, d->backing_stored, "backing_file");
    check_path_field(c, a + TU_OFF_IMAGE, d->image_stored, "image_file");
    uint64_t hsize = tu_get_be(a + TU_OFF_SIZE, 8);
    CHECK(c, hsize == m->size, "%s: header size field %" PRIu64 ", model %" PRIu64, when, hsize,
          m->size);
    const unsigned char *bm = a + TU_HDR_SIZE;
    for (uint64_t n = 0; n < nbytes * 8; n++) {
        unsigned bit = (bm[n / 8] >> (n % 8)) & 1u;
        unsigned want = n < nsect ? m->alloc[n] : 0;
        CHECK(c, bit == want, "%s: on-disk bit of sector %" PRIu64 " is %u, model %u%s", when, n,
              bit, want, n < nsect ? "" : " (a trailing bit past the last sector)");
    }

    c->file_b = tu_read_file(d->image_path, &ilen);
    CHECK(c, c->file_b != NULL, "%s: cannot read the image file '%s'", when, d->image_path);
    const unsigned char *im = c->file_b;
    for (uint64_t n = 0; n < nsect; n++) {
        if (!m->alloc[n])
            continue;
        if ((n + 1) * SECTOR <= ilen && memcmp(im + n * SECTOR, m->data + n * SECTOR, SECTOR) == 0)
            continue;
        for (uint64_t i = n * SECTOR; i < (n + 1) * SECTOR; i++) {
            unsigned char got = i < ilen ? im[i] : 0;
            CHECK(c, got == m->data[i], "%s: image file byte %" PRIu64 " (allocated sector %"
                  PRIu64 ") is 0x%02x, model 0x%02x (image file %zu bytes long)", when, i, n,
                  got, m->data[i], ilen);
        }
    }
    free(c->file_a);
    free(c->file_b);
    c->file_a = c->file_b = NULL;
}

/* After truncate: the size field and the add-cow file's length. */
static void check_size_on_disk(struct ctx *c, struct disk *d)
{
    uint64_t nbytes = (d->m.size / SECTOR + 7) / 8;
    size_t alen = 0;
    c->file_a = tu_read_file(d->path, &alen);
    CHECK(c, c->file_a != NULL, "cannot read the add-cow file '%s'", d->path);
    CHECK(c, alen == TU_HDR_SIZE + nbytes, "after truncate the add-cow file is %zu bytes long, "
          "want 2068 + %" PRIu64, alen, nbytes);
    uint64_t hsize = tu_get_be(c->file_a + TU_OFF_SIZE, 8);
    CHECK(c, hsize == d->m.size, "after truncate the header size field is %" PRIu64
          ", model %" PRIu64, hsize, d->m.size);
    free(c->file_a);
    c->file_a = NULL;
}

/* ---- choosing ranges --------------------------------------------------- */

/* A random range inside the disk, favouring the interesting places: sector
 * boundaries, the backing's end, the disk's end.  len 0 only for an empty disk. */
static void pick_range(struct ctx *c, struct disk *d, uint64_t *off, uint64_t *len)
{
    uint64_t size = d->m.size, nsect = size / SECTOR;
    uint64_t l, o;

    if (size == 0) {
        *off = *len = 0;
        return;
    }
    switch (rnd(c, 8)) {
    case 0:
        l = 1 + rnd(c, 16);                       /* a few bytes */
        break;
    case 1: case 2: case 3:
        l = 1 + rnd(c, 3 * SECTOR);               /* up to 3 sectors, mostly crossing */
        break;
    case 4:
        l = SECTOR * (1 + rnd(c, 4));             /* whole sectors' worth, any offset */
        break;
    case 5: {                                     /* aligned whole sectors */
        uint64_t s = rnd(c, nsect);
        *off = s * SECTOR;
        *len = SECTOR * (1 + rnd(c, tu_min_u64(8, nsect - s)));
        return;
    }
    default:
        /* large, multi-sector */
        l = 1 + rnd(c, (rnd(c, 3) ? 16 : 64) * SECTOR);
        break;
    }
    l = tu_min_u64(l, size);
    uint64_t room = size - l;                     /* o in [0, room] */
    switch (rnd(c, 6)) {
    case 0: {                                     /* across a sector boundary */
        uint64_t b = SECTOR * (1 + rnd(c, nsect));
        uint64_t back = 1 + rnd(c, tu_min_u64(l, 8));
        o = b >= back ? b - back : 0;
        break;
    }
    case 1:                                       /* around the backing's end */
        if (d->m.bsize > 0 && d->m.bsize < size + l) {
            uint64_t back = rnd(c, l + 1);
            o = d->m.bsize >= back ? d->m.bsize - back : 0;
        } else {
            o = rnd(c, room + 1);
        }
        break;
    case 2:                                       /* at the disk's end */
        o = room - rnd(c, tu_min_u64(room, 3) + 1);
        break;
    default:
        o = rnd(c, room + 1);
        break;
    }
    *off = o > room ? room : o;
    *len = l;
}

/* Cuts [0, len) into 1..MAX_IOV-1 pieces, some empty, placed with gaps in
 * c->scatter (filled with SENTINEL); returns the count. */
static int make_iov(struct ctx *c, uint64_t len, struct iovec *iov)
{
    int n = 1 + (int)rnd(c, MAX_IOV - 2);
    uint64_t cuts[MAX_IOV];
    int k = 0;

    for (int i = 0; i < n - 1; i++)
        cuts[k++] = rnd(c, len + 1);
    cuts[k++] = len;
    /* sort the cut points (few of them) */
    for (int i = 1; i < k; i++)
        for (int j = i; j > 0 && cuts[j - 1] > cuts[j]; j--) {
            uint64_t t = cuts[j];
            cuts[j] = cuts[j - 1];
            cuts[j - 1] = t;
        }
    memset(c->scatter, SENTINEL, (size_t)len + (size_t)(k + 1) * IOV_GAP);
    uint64_t from = 0, at = 0;
    for (int i = 0; i < k; i++) {
        at += rnd(c, IOV_GAP);
        iov[i].iov_base = c->scatter + at;
        iov[i].iov_len = (size_t)(cuts[i] - from);
        at += cuts[i] - from;
        from = cuts[i];
    }
    return k;
}

static void iov_describe(const struct iovec *iov, int n, char *out, size_t outlen)
{
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; i < n && used + 1 < outlen; i++) {
        int w = snprintf(out + used, outlen - used, "%s%zu", i ? "," : "", iov[i].iov_len);
        if (w < 0)
            break;
        used += (size_t)w;
    }
}

/* ---- operations -------------------------------------------------------- */

static void after_change(struct ctx *c, struct disk *d, uint64_t off, uint64_t len)
{
    uint64_t a = off / SECTOR * SECTOR;
    uint64_t b = tu_min_u64((off + len + SECTOR - 1) / SECTOR * SECTOR, d->m.size);
    check_read(c, d, a, b - a);
    if (b > a)
        check_status_walk(c, d, a, b);
    check_allocated(c, d);
}

static void op_write(struct ctx *c, struct disk *d, bool vectored)
{
    uint64_t off, len;
    pick_range(c, d, &off, &len);
    rnd_bytes(c, c->wbuf, (size_t)len);
    int64_t r;
    if (vectored) {
        struct iovec iov[MAX_IOV];
        char desc[128];
        int n = make_iov(c, len, iov);
        uint64_t from = 0;
        for (int i = 0; i < n; i++) {
            memcpy(iov[i].iov_base, c->wbuf + from, iov[i].iov_len);
            from += iov[i].iov_len;
        }
        iov_describe(iov, n, desc, sizeof(desc));
        note_op(c, d, "pwritev(off=%" PRIu64 ", len=%" PRIu64 ", iov=[%s])", off, len, desc);
        r = addcow_pwritev(d->img, iov, n, off);
    } else {
        note_op(c, d, "pwrite(off=%" PRIu64 ", len=%" PRIu64 ")", off, len);
        r = addcow_pwrite(d->img, c->wbuf, (size_t)len, off);
    }
    CHECK(c, r == (int64_t)len, "returned %" PRId64 ", want %" PRIu64, r, len);
    model_write(&d->m, c->wbuf, off, len);
    after_change(c, d, off, len);
}

static void op_read(struct ctx *c, struct disk *d)
{
    uint64_t size = d->m.size, off, count;
    unsigned k = (unsigned)rnd(c, 10);

    if (k < 6) {
        pick_range(c, d, &off, &count);
    } else if (k < 9) {                            /* reaching past the end */
        off = size - rnd(c, tu_min_u64(size, 2 * SECTOR) + 1);
        count = (size - off) + 1 + rnd(c, 3 * SECTOR);
    } else {                                       /* at or past the end, or empty */
        off = size + rnd(c, 2000);
        count = rnd(c, 2 * SECTOR);
    }
    if (rnd(c, 20) == 0)
        count = 0;
    uint64_t want = off >= size ? 0 : tu_min_u64(count, size - off);
    int64_t r;
    if (rnd(c, 3) == 0) {
        struct iovec iov[MAX_IOV];
        char desc[128];
        int n = make_iov(c, count, iov);
        iov_describe(iov, n, desc, sizeof(desc));
        note_op(c, d, "preadv(off=%" PRIu64 ", count=%" PRIu64 ", iov=[%s])", off, count, desc);
        r = addcow_preadv(d->img, iov, n, off);
        CHECK(c, r == (int64_t)want, "returned %" PRId64 ", want %" PRIu64, r, want);
        /* gather what was read; the gaps between pieces must be untouched */
        uint64_t from = 0;
        const unsigned char *prev_end = c->scatter;
        for (int i = 0; i < n; i++) {
            const unsigned char *p = iov[i].iov_base;
            for (const unsigned char *g = prev_end; g < p; g++)
                CHECK(c, *g == SENTINEL, "preadv wrote outside its iovecs (before piece %d)", i);
            memcpy(c->rbuf + from, p, iov[i].iov_len);
            from += iov[i].iov_len;
            prev_end = p + iov[i].iov_len;
        }
        for (const unsigned char *g = prev_end; g < prev_end + IOV_GAP; g++)
            CHECK(c, *g == SENTINEL, "preadv wrote past its last iovec");
    } else {
        note_op(c, d, "pread(off=%" PRIu64 ", count=%" PRIu64 ")", off, count);
        r = addcow_pread(d->img, c->rbuf, (size_t)count, off);
        CHECK(c, r == (int64_t)want, "returned %" PRId64 ", want %" PRIu64, r, want);
    }
    if (want > 0)
        check_bytes(c, d, c->rbuf, off, want, "read");
}

static void op_write_zeroes(struct ctx *c, struct disk *d)
{
    uint64_t off, len;
    pick_range(c, d, &off, &len);
    unsigned flags = rnd(c, 2) ? ADDCOW_ZEROES_MAY_UNMAP : 0;
    note_op(c, d, "write_zeroes(off=%" PRIu64 ", len=%" PRIu64 ", flags=%s)", off, len,
            flags ? "MAY_UNMAP" : "0");
    int r = addcow_write_zeroes(d->img, off, len, flags);
    CHECK(c, r == 0, "returned %d", r);
    model_write_zeroes(&d->m, off, len);
    after_change(c, d, off, len);
}

static void op_flush(struct ctx *c, struct disk *d)
{
    note_op(c, d, "flush()");
    int r = addcow_flush(d->img);
    CHECK(c, r == 0, "returned %d", r);
    check_allocated(c, d);
    check_on_disk(c, d, "after flush");
}

static void op_truncate(struct ctx *c, struct disk *d)
{
    uint64_t s = d->m.size / SECTOR, ns;
    unsigned k = (unsigned)rnd(c, 100);

    if (k < 46)
        ns = tu_min_u64(s + 1 + rnd(c, 64), MAX_SECTORS);
    else if (k < 92)
        ns = s > 1 ? s - 1 - rnd(c, tu_min_u64(s - 1, 64)) : s;
    else if (k < 96)
        ns = 0;
    else
        ns = s;
    note_op(c, d, "truncate(%" PRIu64 ")  [from %" PRIu64 ", %s]", ns * SECTOR, d->m.size,
            ns > s ? "grow" : ns < s ? "shrink" : "same size");
    int r = addcow_truncate(d->img, ns * SECTOR);
    CHECK(c, r == 0, "returned %d", r);
    model_truncate(&d->m, ns * SECTOR);
    check_size_on_disk(c, d);
    if (ns < s) {       /* the data past the new end is gone from the image file */
        int64_t ilen = tu_file_size(d->image_path);
        CHECK(c, ilen >= 0 && (uint64_t)ilen <= d->m.size, "after a shrink to %" PRIu64
              " the image file is %" PRId64 " bytes long", d->m.size, ilen);
    }
    check_full(c, d);
}

static void open_disk(struct ctx *c, struct disk *d, unsigned flags)
{
    int r = addcow_open(d->path, flags, NULL, &d->img);
    CHECK(c, r == 0 && d->img != NULL, "addcow_open('%s', %s) returned %d", d->path,
          flags == ADDCOW_OPEN_RDWR ? "RDWR" : "RDONLY", r);
    int64_t sz = addcow_get_size(d->img);
    CHECK(c, sz == (int64_t)d->m.size, "after open, addcow_get_size = %" PRId64 ", model %"
          PRIu64, sz, d->m.size);
    const char *img_stored = addcow_get_image_file(d->img);
    const char *bk_stored = addcow_get_backing_file(d->img);
    CHECK(c, img_stored != NULL && strcmp(img_stored, d->image_stored) == 0,
          "addcow_get_image_file = '%s', want '%s'", img_stored ? img_stored : "(null)",
          d->image_stored);
    if (d->backing_stored[0] == '\0')
        CHECK(c, bk_stored == NULL, "addcow_get_backing_file = '%s', want NULL", bk_stored);
    else
        CHECK(c, bk_stored != NULL && strcmp(bk_stored, d->backing_stored) == 0,
              "addcow_get_backing_file = '%s', want '%s'", bk_stored ? bk_stored : "(null)",
              d->backing_stored);
}

static void close_disk(struct ctx *c, struct disk *d)
{
    int r = addcow_close(d->img);
    d->img = NULL;
    CHECK(c, r == 0, "addcow_close returned %d", r);
    check_on_disk(c, d, "after close");
}

static void op_reopen(struct ctx *c, struct disk *d)
{
    note_op(c, d, "close() and open(RDWR)");
    close_disk(c, d);
    open_disk(c, d, ADDCOW_OPEN_RDWR);
    check_full(c, d);
}

static void op_status(struct ctx *c, struct disk *d)
{
    uint64_t off, len;
    if (d->m.size == 0)
        return;
    pick_range(c, d, &off, &len);
    note_op(c, d, "block_status(off=%" PRIu64 ", len=%" PRIu64 ")", off, len);
    uint64_t run = UINT64_MAX;
    int st = addcow_block_status(d->img, off, len, &run);
    unsigned want = model_flags(&d->m, off);
    uint64_t want_run = model_run(&d->m, off, len);
    CHECK(c, st >= 0 && (unsigned)st == want && run == want_run,
          "returned %d, run %" PRIu64 "; model: flags %u, run %" PRIu64, st, run, want,
          want_run);
}

/* Requests that must fail with ENOSPC and change nothing, and zero-length
 * ones that must succeed and change nothing. */
static void op_edge(struct ctx *c, struct disk *d)
{
    uint64_t size = d->m.size, off, len;
    int64_t r;

    switch (rnd(c, 5)) {
    case 0:                                     /* write reaching past the end */
        off = size - rnd(c, tu_min_u64(size, 3 * SECTOR) + 1);
        len = (size - off) + 1 + rnd(c, 2 * SECTOR);
        rnd_bytes(c, c->wbuf, (size_t)len);
        note_op(c, d, "pwrite(off=%" PRIu64 ", len=%" PRIu64 ") past the end", off, len);
        r = addcow_pwrite(d->img, c->wbuf, (size_t)len, off);
        CHECK(c, r == -ENOSPC, "returned %" PRId64 ", want -ENOSPC", r);
        break;
    case 1: {                                   /* pwritev starting past the end */
        struct iovec iov[MAX_IOV];
        off = size + 1 + rnd(c, 1000);
        len = 1 + rnd(c, 2 * SECTOR);
        int n = make_iov(c, len, iov);
        note_op(c, d, "pwritev(off=%" PRIu64 ", len=%" PRIu64 ") past the end", off, len);
        r = addcow_pwritev(d->img, iov, n, off);
        CHECK(c, r == -ENOSPC, "returned %" PRId64 ", want -ENOSPC", r);
        off = size - tu_min_u64(size, SECTOR);
        len = size - off;
        break;
    }
    case 2:                                     /* write_zeroes reaching past the end */
        off = size - rnd(c, tu_min_u64(size, 3 * SECTOR) + 1);
        len = (size - off) + 1 + rnd(c, 2 * SECTOR);
        note_op(c, d, "write_zeroes(off=%" PRIu64 ", len=%" PRIu64 ", MAY_UNMAP) past the end",
                off, len);
        r = addcow_write_zeroes(d->img, off, len, ADDCOW_ZEROES_MAY_UNMAP);
        CHECK(c, r == -ENOSPC, "returned %" PRId64 ", want -ENOSPC", r);
        break;
    case 3:                                     /* zero-length write */
        off = rnd(c, size + 1);
        len = 0;
        note_op(c, d, "pwrite(off=%" PRIu64 ", len=0)", off);
        r = addcow_pwrite(d->img, c->wbuf, 0, off);
        CHECK(c, r == 0, "returned %" PRId64 ", want 0", r);
        break;
    default:                                    /* zero-length write_zeroes */
        off = rnd(c, size + 1);
        len = 0;
        note_op(c, d, "write_zeroes(off=%" PRIu64 ", len=0)", off);
        r = addcow_write_zeroes(d->img, off, 0, 0);
        CHECK(c, r == 0, "returned %" PRId64 ", want 0", r);
        break;
    }
    /* nothing changed, not even the allocation */
    if (off < size)
        after_change(c, d, off, tu_min_u64(len, size - off));
    else
        check_allocated(c, d);
}

/* One random operation on d, then the periodic whole-disk check. */
static void random_step(struct ctx *c, struct disk *d)
{
    unsigned k = (unsigned)rnd(c, 100);

    if (k < 26)
        op_write(c, d, false);
    else if (k < 38)
        op_write(c, d, true);
    else if (k < 53)
        op_read(c, d);
    else if (k < 65)
        op_write_zeroes(c, d);
    else if (k < 71)
        op_flush(c, d);
    else if (k < 75)
        op_truncate(c, d);
    else if (k < 78)
        op_reopen(c, d);
    else if (k < 90)
        op_status(c, d);
    else
        op_edge(c, d);
    check_allocated(c, d);
    if (c->step % FULL_CHECK_EVERY == 0)
        check_full(c, d);
}

/* ---- rounds ------------------------------------------------------------ */

static void disk_paths(struct ctx *c, struct disk *d, const char *suffix, bool absolute)
{
    char name[128];
    snprintf(name, sizeof(name), "r%u-%s.add-cow", c->round, suffix);
    d->path = tu_path(name);
    snprintf(d->image_stored, sizeof(d->image_stored), "r%u-%s.raw", c->round, suffix);
    d->image_path = tu_path(d->image_stored);
    if (absolute)    /* store the image file's absolute path this time */
        snprintf(d->image_stored, sizeof(d->image_stored), "%s", d->image_path);
}

/* Creates d (size 0: the backing's size) and opens it read-write. */
static void create_disk(struct ctx *c, struct disk *d, uint64_t size, uint64_t want_size)
{
    note_op(c, d, "create(size=%" PRIu64 ", backing='%s', image='%s') and open(RDWR)", size,
            d->backing_stored, d->image_stored);
    int r = addcow_create(d->path, size, d->backing_stored[0] ? d->backing_stored : NULL,
                          d->image_stored, NULL);
    CHECK(c, r == 0, "addcow_create returned %d", r);
    model_create(&d->m, want_size);
    int64_t ilen = tu_file_size(d->image_path);
    CHECK(c, ilen == (int64_t)want_size, "after create the image file is %" PRId64
          " bytes long, want the virtual size %" PRIu64, ilen, want_size);
    check_on_disk(c, d, "after create");
    open_disk(c, d, ADDCOW_OPEN_RDWR);
    check_full(c, d);
}

static void run_steps(struct ctx *c, struct disk *d, unsigned steps)
{
    for (unsigned i = 0; i < steps; i++)
        random_step(c, d);
}

/* Closes d, checks it on disk, and reads it once more through a read-only
 * handle (where writes fail with EBADF). */
static void finish_disk(struct ctx *c, struct disk *d)
{
    note_op(c, d, "close(), then open(RDONLY) and check");
    close_disk(c, d);
    open_disk(c, d, ADDCOW_OPEN_RDONLY);
    check_full(c, d);
    if (d->m.size > 0) {
        int64_t r = addcow_pwrite(d->img, c->wbuf, 1, 0);
        CHECK(c, r == -EBADF, "pwrite on a read-only handle returned %" PRId64, r);
    }
    int r = addcow_close(d->img);
    d->img = NULL;
    CHECK(c, r == 0, "closing the read-only handle returned %d", r);
}

/* Removes d's files, unless keep (a failed round, AC_KEEP_SCRATCH set). */
static void free_disk_paths(struct disk *d, bool keep)
{
    if (d->path && !keep)
        unlink(d->path);
    if (d->image_path && !keep)
        unlink(d->image_path);
    free(d->path);
    free(d->image_path);
    d->path = d->image_path = NULL;
}

/* The raw backing file: a pattern of base_len bytes. */
static void make_base(struct ctx *c, uint64_t len)
{
    char name[64];
    snprintf(name, sizeof(name), "r%u-base.raw", c->round);
    c->base_path = tu_path(name);
    c->base_len = len;
    tu_fill_pattern(c->base, (size_t)len, (uint32_t)tu_rand(&c->rng), 0);
    int r = tu_write_file(c->base_path, c->base, (size_t)len);
    CHECK(c, r == 0, "cannot write the backing file '%s': %d", c->base_path, r);
}

static void set_backing(struct disk *d, const char *stored, const unsigned char *bdata,
                        uint64_t bsize)
{
    snprintf(d->backing_stored, sizeof(d->backing_stored), "%s", stored);
    d->m.bdata = bdata;
    d->m.bsize = bsize;
}

/* A raw backing file's stored name: relative or absolute. */
static const char *stored_name(const char *full, bool absolute)
{
    const char *slash = strrchr(full, '/');
    return absolute || slash == NULL ? full : slash + 1;
}

static void snapshot_mid(struct ctx *c)
{
    c->snap_acf = tu_read_file(c->mid.path, &c->snap_acf_len);
    c->snap_img = tu_read_file(c->mid.image_path, &c->snap_img_len);
    CHECK(c, c->snap_acf != NULL && c->snap_img != NULL, "cannot read the middle image's files");
}

/* The top image used the middle one read-only: its files must not change. */
static void check_mid_unchanged(struct ctx *c)
{
    size_t la = 0, li = 0;
    c->file_a = tu_read_file(c->mid.path, &la);
    c->file_b = tu_read_file(c->mid.image_path, &li);
    CHECK(c, c->file_a != NULL && c->file_b != NULL, "cannot read the middle image's files");
    CHECK(c, la == c->snap_acf_len && memcmp(c->file_a, c->snap_acf, la) == 0,
          "the middle add-cow file changed while it was the top's backing file");
    CHECK(c, li == c->snap_img_len && memcmp(c->file_b, c->snap_img, li) == 0,
          "the middle image file changed while it was the top's backing file");
    free(c->file_a);
    free(c->file_b);
    c->file_a = c->file_b = NULL;
}

static void run_round(struct ctx *c, enum config cfg, unsigned steps)
{
    struct disk *top = &c->top;
    bool absolute = (c->round % 2) == 1;
    bool big = c->round % BIG_EVERY == BIG_EVERY - 1;
    uint64_t nsect = big ? BIG_SECTORS + rnd(c, BIG_SECTORS / 2) : 8 + rnd(c, SMALL_SECTORS);
    uint64_t size = nsect * SECTOR, create_size = size;

    c->nlog = c->nlog_dropped = 0;
    c->step = 0;
    disk_paths(c, top, "top", absolute);
    set_backing(top, "", NULL, 0);

    switch (cfg) {
    case CFG_NONE:
        break;
    case CFG_SHORTER:
        make_base(c, SECTOR * (1 + rnd(c, nsect - 1)));
        break;
    case CFG_EQUAL:
        make_base(c, size);
        break;
    case CFG_LONGER:
        make_base(c, size + (rnd(c, 2) ? SECTOR * (1 + rnd(c, 64)) : 1 + rnd(c, 4000)));
        break;
    case CFG_ODD: {
        uint64_t len;
        if (rnd(c, 2)) {                /* near the disk's end */
            len = size - 100 + rnd(c, 199);
            if (len == size)
                len = size - 1;
        } else {                        /* anywhere */
            do
                len = 1 + rnd(c, size + 3000);
            while (len % SECTOR == 0);
        }
        make_base(c, len);
        if (len < size && rnd(c, 2)) {  /* size 0: the backing's size rounded up */
            create_size = 0;
            size = (len + SECTOR - 1) / SECTOR * SECTOR;
        }
        break;
    }
    case CFG_CHAIN: {
        struct disk *mid = &c->mid;
        uint64_t mid_size = big ? SECTOR * (BIG_SECTORS + rnd(c, BIG_SECTORS / 2))
                                : SECTOR * (8 + rnd(c, SMALL_SECTORS));
        uint64_t blen = rnd(c, 2) ? SECTOR * (1 + rnd(c, 400)) : 1 + rnd(c, 400 * SECTOR);
        make_base(c, blen);
        disk_paths(c, mid, "mid", absolute);
        set_backing(mid, stored_name(c->base_path, absolute), c->base, c->base_len);
        create_disk(c, mid, mid_size, mid_size);
        run_steps(c, mid, steps / 2);
        finish_disk(c, mid);
        snapshot_mid(c);
        /* the top reads the middle image as its model says it reads */
        set_backing(top, stored_name(c->mid.path, absolute), mid->m.data, mid->m.size);
        switch (rnd(c, 4)) {
        case 0: {
            uint64_t ms = mid->m.size / SECTOR;
            size = SECTOR * (ms > 1 ? ms - 1 - rnd(c, ms - 1) : 1 + rnd(c, 64));
            break;
        }
        case 1:
            size = mid->m.size ? mid->m.size : SECTOR;
            break;
        case 2:
            size = tu_min_u64(mid->m.size + SECTOR * (1 + rnd(c, 200)), MAX_BYTES);
            break;
        default:                        /* size 0: the middle image's virtual size */
            if (mid->m.size > 0) {
                create_size = 0;
                size = mid->m.size;
            } else {
                size = SECTOR * (1 + rnd(c, 64));
            }
            break;
        }
        if (create_size != 0)
            create_size = size;
        break;
    }
    }
    if (cfg != CFG_NONE && cfg != CFG_CHAIN)
        set_backing(top, stored_name(c->base_path, absolute), c->base, c->base_len);

    create_disk(c, top, create_size, size);
    run_steps(c, top, steps);
    finish_disk(c, top);
    if (cfg == CFG_CHAIN) {
        check_mid_unchanged(c);
        free(c->snap_acf);
        free(c->snap_img);
        c->snap_acf = c->snap_img = NULL;
        free_disk_paths(&c->mid, false);
    }
    free_disk_paths(top, false);
    if (c->base_path) {
        unlink(c->base_path);
        free(c->base_path);
        c->base_path = NULL;
    }
}

static void run_config(void **state, const char *name, enum config cfg)
{
    struct ctx *c = *state;
    unsigned rounds = tu_scale(8);

    c->test = name;
    c->seed = tu_seed(name);
    c->rng = c->seed;
    for (c->round = 0; c->round < rounds; c->round++)
        run_round(c, cfg, 150 + (unsigned)rnd(c, 100));
    printf("# %s: %u rounds, %lu operations\n", name, rounds, c->total_ops);
}

/* ---- cmocka ------------------------------------------------------------ */

static int setup(void **state)
{
    struct ctx *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -1;
    c->log = calloc(LOG_MAX, sizeof(*c->log));
    c->wbuf = malloc(BUF_BYTES);
    c->rbuf = malloc(BUF_BYTES);
    c->scatter = malloc(SCATTER_BYTES);
    c->base = malloc(MAX_BASE);
    c->top.name = "top";
    c->mid.name = "mid";
    c->top.m.data = malloc(MAX_BYTES);
    c->top.m.alloc = malloc(MAX_SECTORS);
    c->mid.m.data = malloc(MAX_BYTES);
    c->mid.m.alloc = malloc(MAX_SECTORS);
    *state = c;
    if (!c->log || !c->wbuf || !c->rbuf || !c->scatter || !c->base || !c->top.m.data ||
        !c->top.m.alloc || !c->mid.m.data || !c->mid.m.alloc)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    struct ctx *c = *state;
    if (c == NULL)
        return 0;
    /* After a failure: keep the round's files if asked to (AC_KEEP_SCRATCH). */
    bool keep = getenv("AC_KEEP_SCRATCH") != NULL;
    addcow_close(c->top.img);
    addcow_close(c->mid.img);
    free_disk_paths(&c->top, keep);
    free_disk_paths(&c->mid, keep);
    if (c->base_path && !keep)
        unlink(c->base_path);
    free(c->base_path);
    free(c->snap_acf);
    free(c->snap_img);
    free(c->file_a);
    free(c->file_b);
    free(c->top.m.data);
    free(c->top.m.alloc);
    free(c->mid.m.data);
    free(c->mid.m.alloc);
    free(c->log);
    free(c->wbuf);
    free(c->rbuf);
    free(c->scatter);
    free(c->base);
    free(c);
    *state = NULL;
    return 0;
}

static void test_no_backing(void **state)
{
    run_config(state, "model/no-backing", CFG_NONE);
}

static void test_backing_shorter(void **state)
{
    run_config(state, "model/backing-shorter", CFG_SHORTER);
}

static void test_backing_equal(void **state)
{
    run_config(state, "model/backing-equal", CFG_EQUAL);
}

static void test_backing_longer(void **state)
{
    run_config(state, "model/backing-longer", CFG_LONGER);
}

static void test_backing_odd(void **state)
{
    run_config(state, "model/backing-odd-length", CFG_ODD);
}

static void test_chain(void **state)
{
    run_config(state, "model/add-cow-chain", CFG_CHAIN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_no_backing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backing_shorter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backing_equal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backing_longer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backing_odd, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chain, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
