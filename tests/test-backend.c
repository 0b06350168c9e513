/*
 * test-backend.c: the library on the in-memory backend (memfs).
 *
 *  - memfs itself behaves like a file system (the tests below trust it);
 *  - the library on memfs writes the same bytes as on real files;
 *  - fault injection: each I/O operation of a scripted workload fails in
 *    turn (once, or from then on), and the library reports it through the
 *    public call that hit it, with the errno and the file, frees what it
 *    holds, and never loses a flushed write.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include <cmocka.h>

#include "addcow.h"
#include "membackend.h"
#include "options.h"
#include "testutil.h"

#define SECTOR 512u
#define BACKING_LEN 40000u          /* not a multiple of 512: a partial last sector */
#define DISK (64u * 1024)
#define MAXDISK (128u * 1024)
#define BACKING_SEED 0xBA5Eu

/* memfs names: relative names in the header resolve to these. */
#define M_ADDCOW "/f/disk.add-cow"
#define M_IMAGE  "/f/disk.raw"
#define M_BACK   "/f/base.raw"

/* ---- a model of the virtual disk ---------------------------------------- */

struct model {
    unsigned char buf[MAXDISK];     /* bytes past size are kept zero */
    uint64_t size;
};

static void backing_bytes(unsigned char *b)
{
    tu_fill_pattern(b, BACKING_LEN, BACKING_SEED, 0);
}

static void model_init(struct model *m, uint64_t size)
{
    memset(m->buf, 0, sizeof(m->buf));
    backing_bytes(m->buf);
    if (size < BACKING_LEN)
        memset(m->buf + size, 0, BACKING_LEN - size);
    m->size = size;
}

static void model_write(struct model *m, uint64_t off, const void *data, uint64_t len)
{
    assert_true(off + len <= m->size);
    memcpy(m->buf + off, data, (size_t)len);
}

static void model_zero(struct model *m, uint64_t off, uint64_t len)
{
    assert_true(off + len <= m->size);
    memset(m->buf + off, 0, (size_t)len);
}

static void model_truncate(struct model *m, uint64_t size)
{
    if (size < m->size)
        memset(m->buf + size, 0, (size_t)(m->size - size));
    m->size = size;
}

/* Reads the whole disk and compares it with the model. */
static void check_reads_model(addcow_image *img, const struct model *m, const char *ctx)
{
    assert_int_equal(addcow_get_size(img), (int64_t)m->size);
    unsigned char *buf = malloc(m->size + 1);
    assert_non_null(buf);
    assert_int_equal(addcow_pread(img, buf, m->size, 0), (int64_t)m->size);
    for (uint64_t i = 0; i < m->size; i++) {
        if (buf[i] != m->buf[i]) {
            unsigned got = buf[i];
            free(buf);
            fail_msg("%s: byte %" PRIu64 " reads 0x%02x, expected 0x%02x", ctx, i,
                     got, m->buf[i]);
        }
    }
    /* Past the end: nothing. */
    assert_int_equal(addcow_pread(img, buf, 1, m->size), 0);
    free(buf);
}

/* A fresh memfs holding the backing file M_BACK (BACKING_LEN bytes of
 * backing_bytes(), also returned in *back) and options that put the library
 * on it.  Undone by fs_done(). */
static struct memfs *fs_with_backing(addcow_options **o, unsigned char **back)
{
    struct memfs *fs = memfs_new();
    *o = memfs_options(fs);
    *back = malloc(BACKING_LEN);
    assert_true(fs && *o && *back);
    backing_bytes(*back);
    assert_int_equal(memfs_put(fs, M_BACK, *back, BACKING_LEN), 0);
    return fs;
}

static void fs_done(struct memfs *fs, addcow_options *o, unsigned char *back)
{
    free(back);
    addcow_options_free(o);
    memfs_free(fs);
}

/* Creates M_ADDCOW (DISK bytes over base.raw, image file disk.raw) and opens
 * it read-write. */
static addcow_image *create_and_open(addcow_options *o)
{
    addcow_image *img = NULL;
    assert_int_equal(addcow_create(M_ADDCOW, DISK, "base.raw", "disk.raw", o), 0);
    assert_int_equal(addcow_open(M_ADDCOW, ADDCOW_OPEN_RDWR, o, &img), 0);
    return img;
}

/* ---- memfs on its own ------------------------------------------------------ */

static void test_memfs_basics(void **state)
{
    (void)state;
    struct memfs *fs = memfs_new();
    assert_non_null(fs);
    const struct ac_backend_ops *ops = memfs_ops(fs);
    struct ac_file *a, *b, *c;
    unsigned char buf[64];
    uint64_t ida[2], idb[2];

    /* open: missing, create, exclusive, directory. */
    assert_int_equal(ops->open(ops, "/x", AC_FILE_RDWR, &a), -ENOENT);
    assert_int_equal(ops->open(ops, "/x", AC_FILE_RDWR | AC_FILE_CREATE, &a), 0);
    assert_int_equal(ops->open(ops, "/x", AC_FILE_RDWR | AC_FILE_CREATE | AC_FILE_EXCL, &b),
                     -EEXIST);
    assert_int_equal(memfs_mkdir(fs, "/d"), 0);
    assert_int_equal(memfs_mkdir(fs, "/d"), -EEXIST);
    assert_int_equal(ops->open(ops, "/d", AC_FILE_RDONLY, &b), -EISDIR);
    assert_int_equal(memfs_exists(fs, "/d"), 2);
    assert_int_equal(memfs_exists(fs, "/x"), 1);
    assert_int_equal(memfs_exists(fs, "/nope"), 0);
    assert_int_equal(ops->size(a), 0);

    /* write with a gap, short read at the end, 0 past it. */
    struct iovec v[2] = { { (void *)"hello ", 6 }, { (void *)"world", 5 } };
    assert_int_equal(ops->pwritev(a, v, 2, 10), 11);
    assert_int_equal(ops->size(a), 21);
    memset(buf, 0xee, sizeof(buf));
    struct iovec r = { buf, sizeof(buf) };
    assert_int_equal(ops->preadv(a, &r, 1, 0), 21);
    static const unsigned char expect[21] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 'h', 'e', 'l',
                                              'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd' };
    assert_memory_equal(buf, expect, 21);
    assert_int_equal(buf[21], 0xee);
    assert_int_equal(ops->preadv(a, &r, 1, 21), 0);
    assert_int_equal(ops->preadv(a, &r, 1, 1000), 0);

    /* punch keeps the length and zeroes; truncate both ways. */
    assert_int_equal(ops->punch_hole(a, 11, 3), 0);
    assert_int_equal(ops->size(a), 21);
    assert_int_equal(ops->preadv(a, &r, 1, 10), 11);
    assert_memory_equal(buf, "h\0\0\0o world", 11);
    assert_int_equal(ops->truncate(a, 12), 0);
    assert_int_equal(ops->truncate(a, 16), 0);
    assert_int_equal(ops->preadv(a, &r, 1, 10), 6);
    assert_memory_equal(buf, "h\0\0\0\0\0", 6);

    /* durable view: empty until the flush. */
    size_t len;
    unsigned char *d = memfs_get_durable(fs, "/x", &len);
    assert_non_null(d);
    assert_int_equal(len, 0);
    free(d);
    assert_int_equal(ops->flush(a), 0);
    d = memfs_get_durable(fs, "/x", &len);
    assert_int_equal(len, 16);
    assert_memory_equal(d + 10, "h\0\0\0\0\0", 6);
    free(d);
    assert_int_equal(ops->pwritev(a, v, 1, 0), 6);
    d = memfs_get_durable(fs, "/x", &len);
    assert_int_equal(d[0], 0);
    free(d);
    d = memfs_get(fs, "/x", &len);
    assert_int_equal(len, 16);
    assert_memory_equal(d, "hello ", 6);
    free(d);

    /* locks: per handle; shared with shared only. */
    assert_int_equal(ops->open(ops, "/x", AC_FILE_RDONLY, &b), 0);
    assert_int_equal(ops->open(ops, "/x", AC_FILE_RDONLY, &c), 0);
    assert_int_equal(ops->lock(a, AC_LOCK_SHARED), 0);
    assert_int_equal(ops->lock(b, AC_LOCK_SHARED), 0);
    assert_int_equal(ops->lock(c, AC_LOCK_EXCLUSIVE), -EBUSY);
    ops->close(b);
    assert_int_equal(ops->lock(c, AC_LOCK_EXCLUSIVE), -EBUSY);
    assert_int_equal(ops->lock(a, AC_LOCK_EXCLUSIVE), 0);   /* upgrade, alone */
    assert_int_equal(ops->lock(c, AC_LOCK_SHARED), -EBUSY);
    ops->close(a);
    assert_int_equal(ops->lock(c, AC_LOCK_EXCLUSIVE), 0);

    /* read-only handles do not write. */
    assert_int_equal(ops->pwritev(c, v, 1, 0), -EBADF);
    assert_int_equal(ops->truncate(c, 0), -EBADF);

    /* identity: same file, same id; other file, other id; kept by rename. */
    assert_int_equal(ops->open(ops, "/x", AC_FILE_RDONLY, &a), 0);
    assert_int_equal(memfs_put(fs, "/y", "abc", 3), 0);
    assert_int_equal(ops->open(ops, "/y", AC_FILE_RDONLY, &b), 0);
    assert_int_equal(ops->identity(a, ida), 0);
    assert_int_equal(ops->identity(c, idb), 0);
    assert_memory_equal(ida, idb, sizeof(ida));
    assert_int_equal(ops->identity(b, idb), 0);
    assert_false(ida[0] == idb[0] && ida[1] == idb[1]);
    assert_int_equal(memfs_file_id(fs, "/x"), ida[1]);
    assert_int_equal(ops->rename_noreplace(ops, "/x", "/y"), -EEXIST);
    assert_int_equal(ops->rename_noreplace(ops, "/nope", "/z"), -ENOENT);
    assert_int_equal(ops->rename_noreplace(ops, "/x", "/z"), 0);
    assert_int_equal(memfs_exists(fs, "/x"), 0);
    assert_int_equal(memfs_file_id(fs, "/z"), ida[1]);

    /* unlink: the name goes, open handles keep the file. */
    assert_int_equal(ops->unlink(ops, "/z"), 0);
    assert_int_equal(ops->unlink(ops, "/z"), -ENOENT);
    assert_int_equal(ops->unlink(ops, "/d"), -EISDIR);
    assert_int_equal(ops->preadv(a, &r, 1, 0), 16);
    assert_memory_equal(buf, "hello ", 6);
    ops->close(a);
    ops->close(c);
    ops->close(b);
    assert_int_equal(memfs_open_handles(fs), 0);

    /* memfs_put/get round trip; names in creation order. */
    d = memfs_get(fs, "/y", &len);
    assert_int_equal(len, 3);
    assert_memory_equal(d, "abc", 3);
    free(d);
    assert_null(memfs_get(fs, "/z", &len));
    assert_null(memfs_get(fs, "/d", &len));
    assert_int_equal(memfs_put(fs, "/d", "a", 1), -EISDIR);
    assert_int_equal(memfs_count(fs), 2);
    char *n0 = memfs_name_at(fs, 0), *n1 = memfs_name_at(fs, 1);
    assert_string_equal(n0, "/d");
    assert_string_equal(n1, "/y");
    assert_null(memfs_name_at(fs, 2));
    free(n0);
    free(n1);
    memfs_free(fs);
}

static void test_memfs_faults_and_log(void **state)
{
    (void)state;
    struct memfs *fs = memfs_new();
    const struct ac_backend_ops *ops = memfs_ops(fs);
    struct ac_file *a;
    char name[64];
    unsigned op;
    uint64_t seq;
    struct iovec v = { (void *)"0123456789", 10 };

    /* The 3rd operation fails, once. */
    assert_int_equal(memfs_fail_nth(fs, 3, EIO), 0);
    assert_int_equal(ops->open(ops, "/a", AC_FILE_RDWR | AC_FILE_CREATE, &a), 0);   /* 1 */
    assert_int_equal(ops->pwritev(a, &v, 1, 0), 10);                                /* 2 */
    assert_int_equal(ops->flush(a), -EIO);                                          /* 3 */
    assert_int_equal(ops->flush(a), 0);                                             /* 4 */
    assert_int_equal(memfs_fault_hits(fs), 1);
    assert_true(memfs_fault_last(fs, &op, name, sizeof(name), &seq));
    assert_int_equal(op, MEMFS_OP_FLUSH);
    assert_string_equal(name, "/a");
    assert_int_equal(seq, 3);
    assert_int_equal(memfs_op_count(fs, MEMFS_OP_ALL), 4);
    assert_int_equal(memfs_op_count(fs, MEMFS_OP_FLUSH), 2);
    memfs_fault_clear(fs);

    /* Sticky: the 2nd write and every later one. */
    struct memfs_fault f = { MEMFS_OP_WRITE, NULL, 2, true, ENOSPC };
    assert_int_equal(memfs_fault_add(fs, &f), 0);
    assert_int_equal(ops->pwritev(a, &v, 1, 0), 10);
    assert_int_equal(ops->pwritev(a, &v, 1, 0), -ENOSPC);
    assert_int_equal(ops->size(a), 10);
    assert_int_equal(ops->pwritev(a, &v, 1, 0), -ENOSPC);
    memfs_fault_clear(fs);

    /* By name: reads of *.raw fail; others do not. */
    assert_int_equal(memfs_put(fs, "/b.raw", "xy", 2), 0);
    struct ac_file *b;
    assert_int_equal(ops->open(ops, "/b.raw", AC_FILE_RDONLY, &b), 0);
    assert_int_equal(memfs_fail_ops(fs, MEMFS_OP_READ, "*.raw", EROFS), 0);
    char buf[16];
    struct iovec r = { buf, sizeof(buf) };
    assert_int_equal(ops->preadv(b, &r, 1, 0), -EROFS);
    assert_int_equal(ops->preadv(b, &r, 1, 0), -EROFS);
    assert_int_equal(ops->preadv(a, &r, 1, 0), 10);
    memfs_fault_clear(fs);
    assert_int_equal(ops->preadv(b, &r, 1, 0), 2);
    ops->close(b);

    /* Short transfers. */
    memfs_set_max_io(fs, 4);
    assert_int_equal(ops->preadv(a, &r, 1, 0), 4);
    assert_int_equal(ops->pwritev(a, &v, 1, 20), 4);
    memfs_set_max_io(fs, 0);
    memfs_set_punch_supported(fs, false);
    assert_int_equal(ops->punch_hole(a, 0, 4), -EOPNOTSUPP);
    memfs_set_punch_supported(fs, true);

    /* The log: only successful changes and flushes, in order, with data. */
    memfs_record_start(fs);
    assert_int_equal(ops->pwritev(a, &v, 1, 30), 10);
    assert_int_equal(ops->size(a), 40);
    assert_int_equal(ops->truncate(a, 35), 0);
    assert_int_equal(ops->punch_hole(a, 31, 2), 0);
    assert_int_equal(ops->flush(a), 0);
    assert_int_equal(ops->rename_noreplace(ops, "/a", "/c"), 0);
    assert_int_equal(ops->unlink(ops, "/b.raw"), 0);
    memfs_fail_ops(fs, MEMFS_OP_WRITE, NULL, EIO);
    assert_int_equal(ops->pwritev(a, &v, 1, 0), -EIO);
    memfs_fault_clear(fs);
    memfs_record_stop(fs);
    assert_int_equal(ops->pwritev(a, &v, 1, 0), 10);     /* not logged */
    assert_int_equal(memfs_rec_count(fs), 6);
    const struct memfs_rec *rec = memfs_rec_at(fs, 0);
    assert_int_equal(rec->kind, MEMFS_REC_WRITE);
    assert_string_equal(rec->name, "/a");
    assert_int_equal(rec->offset, 30);
    assert_int_equal(rec->length, 10);
    assert_memory_equal(rec->data, "0123456789", 10);
    assert_int_equal(memfs_rec_at(fs, 1)->kind, MEMFS_REC_TRUNCATE);
    assert_int_equal(memfs_rec_at(fs, 1)->offset, 35);
    assert_int_equal(memfs_rec_at(fs, 2)->kind, MEMFS_REC_PUNCH);
    assert_int_equal(memfs_rec_at(fs, 3)->kind, MEMFS_REC_FLUSH);
    rec = memfs_rec_at(fs, 4);
    assert_int_equal(rec->kind, MEMFS_REC_RENAME);
    assert_string_equal(rec->name, "/a");
    assert_string_equal(rec->new_name, "/c");
    assert_int_equal(memfs_rec_at(fs, 5)->kind, MEMFS_REC_UNLINK);
    assert_null(memfs_rec_at(fs, 6));
    ops->close(a);

    /* Replay on a clone of the start reproduces the end (durable views too). */
    struct memfs *g = memfs_new();
    assert_int_equal(memfs_put(g, "/a", "", 0), 0);
    struct memfs *h = memfs_clone(g);
    const struct ac_backend_ops *gops = memfs_ops(g);
    assert_int_equal(gops->open(gops, "/a", AC_FILE_RDWR, &a), 0);
    memfs_record_start(g);
    assert_int_equal(gops->pwritev(a, &v, 1, 3), 10);
    assert_int_equal(gops->flush(a), 0);
    assert_int_equal(gops->pwritev(a, &v, 1, 20), 10);
    assert_int_equal(gops->truncate(a, 25), 0);
    assert_int_equal(gops->rename_noreplace(gops, "/a", "/b"), 0);
    memfs_record_stop(g);
    gops->close(a);
    unsigned char *img = NULL;
    size_t ilen = 0;
    for (size_t i = 0; i < memfs_rec_count(g); i++) {
        assert_int_equal(memfs_apply(h, memfs_rec_at(g, i)), 0);
        assert_int_equal(memfs_rec_apply_buf(memfs_rec_at(g, i), &img, &ilen), 0);
    }
    size_t l1, l2;
    unsigned char *x1 = memfs_get(g, "/b", &l1), *x2 = memfs_get(h, "/b", &l2);
    assert_int_equal(l1, 25);
    assert_int_equal(l2, 25);
    assert_int_equal(ilen, 25);
    assert_memory_equal(x1, x2, 25);
    assert_memory_equal(x1, img, 25);
    free(x1);
    free(x2);
    x1 = memfs_get_durable(g, "/b", &l1);
    x2 = memfs_get_durable(h, "/b", &l2);
    assert_int_equal(l1, 13);
    assert_int_equal(l2, 13);
    assert_memory_equal(x1, x2, 13);
    free(x1);
    free(x2);
    free(img);
    memfs_free(h);
    memfs_free(g);
    memfs_free(fs);
}

/* ---- the library on memfs, compared with real files ------------------------- */

enum step_kind { S_CREATE, S_OPEN, S_WRITE, S_WRITEV, S_ZERO, S_FLUSH, S_TRUNC, S_READ,
                 S_CLOSE };

struct step {
    enum step_kind kind;
    uint64_t off, len;         /* create, truncate: off = size */
    unsigned flags;
    uint32_t seed;
};

static const char *step_call(enum step_kind k)
{
    static const char *const names[] = {
        "addcow_create", "addcow_open", "addcow_pwrite", "addcow_pwritev",
        "addcow_write_zeroes", "addcow_flush", "addcow_truncate", "addcow_pread",
        "addcow_close",
    };
    return names[k];
}

/* Writes a step's data as a pwrite or, split in three, as a pwritev. */
static int64_t do_write(addcow_image *img, const struct step *s, const unsigned char *data)
{
    if (s->kind == S_WRITE)
        return addcow_pwrite(img, data, s->len, s->off);
    size_t a = (size_t)s->len / 3, b = (size_t)s->len / 2;
    struct iovec v[3] = { { (void *)data, a }, { (void *)(data + a), b - a },
                          { (void *)(data + b), (size_t)s->len - b } };
    return addcow_pwritev(img, v, 3, s->off);
}

/* Runs a step other than S_READ on the image at path (*img: its handle, once
 * open; a write's data in data).  Returns 0 on success (a write that wrote
 * everything), else what the call returned. */
static int64_t do_step(const char *path, addcow_options *o, addcow_image **img,
                       const struct step *s, const unsigned char *data)
{
    int64_t r = 0;
    switch (s->kind) {
    case S_CREATE: r = addcow_create(path, s->off, "base.raw", "disk.raw", o); break;
    case S_OPEN: r = addcow_open(path, ADDCOW_OPEN_RDWR, o, img); break;
    case S_WRITE:
    case S_WRITEV:
        r = do_write(*img, s, data);
        if (r == (int64_t)s->len)
            r = 0;
        break;
    case S_ZERO: r = addcow_write_zeroes(*img, s->off, s->len, s->flags); break;
    case S_FLUSH: r = addcow_flush(*img); break;
    case S_TRUNC: r = addcow_truncate(*img, s->off); break;
    case S_READ: fail_msg("do_step: S_READ is the caller's"); break;
    case S_CLOSE:
        r = addcow_close(*img);
        *img = NULL;
        break;
    }
    return r;
}

/* Applies a step to the model (what the disk holds if the step succeeds). */
static void model_step(struct model *m, const struct step *s, const unsigned char *data)
{
    switch (s->kind) {
    case S_CREATE: model_init(m, s->off); break;
    case S_WRITE:
    case S_WRITEV: model_write(m, s->off, data, s->len); break;
    case S_ZERO: model_zero(m, s->off, s->len); break;
    case S_TRUNC: model_truncate(m, s->off); break;
    default: break;
    }
}

static size_t gen_steps(uint64_t *rng, struct step *out, size_t max)
{
    size_t n = 0;
    uint64_t size = DISK;
    out[n++] = (struct step){ S_CREATE, DISK, 0, 0, 0 };
    out[n++] = (struct step){ S_OPEN, 0, 0, 0, 0 };
    /* A close adds two steps (close, open), and the final close one more. */
    while (n + 3 <= max) {
        struct step s = { S_WRITE, 0, 0, 0, (uint32_t)tu_rand(rng) };
        unsigned pick = (unsigned)tu_rand_below(rng, 100);
        if (pick < 45) {
            s.kind = pick < 30 ? S_WRITE : S_WRITEV;
            switch (tu_rand_below(rng, 3)) {
            case 0:  /* whole sectors */
                s.len = SECTOR * (1 + tu_rand_below(rng, 16));
                s.off = SECTOR * tu_rand_below(rng, size / SECTOR);
                break;
            case 1:  /* inside one sector */
                s.len = 1 + tu_rand_below(rng, SECTOR - 1);
                s.off = tu_rand_below(rng, size / SECTOR) * SECTOR +
                        tu_rand_below(rng, SECTOR - s.len + 1);
                break;
            default: /* anything */
                s.len = 1 + tu_rand_below(rng, 6000);
                s.off = tu_rand_below(rng, size);
                break;
            }
            if (s.len > size)
                s.len = size;
            if (s.off + s.len > size)
                s.off = size - s.len;
        } else if (pick < 60) {
            s.kind = S_ZERO;
            s.len = 1 + tu_rand_below(rng, 12000);
            if (s.len > size)
                s.len = size;
            s.off = tu_rand_below(rng, size - s.len + 1);
            s.flags = tu_rand_below(rng, 2) ? ADDCOW_ZEROES_MAY_UNMAP : 0;
        } else if (pick < 72) {
            s.kind = S_FLUSH;
        } else if (pick < 80) {
            s.kind = S_TRUNC;
            size = SECTOR * (16 + tu_rand_below(rng, MAXDISK / SECTOR - 15));
            s.off = size;
        } else if (pick < 90) {
            s.kind = S_READ;
            s.off = tu_rand_below(rng, size);
            s.len = 1 + tu_rand_below(rng, size);
        } else {
            s.kind = S_CLOSE;
            out[n++] = s;
            s = (struct step){ S_OPEN, 0, 0, 0, 0 };
        }
        out[n++] = s;
    }
    out[n++] = (struct step){ S_CLOSE, 0, 0, 0, 0 };
    return n;
}

struct outcome {
    unsigned char *addcow, *image;
    size_t addcow_len, image_len;
    int64_t allocated;
};

/* Runs steps on dir/disk.add-cow (dir/base.raw must exist), checking every
 * call and read against the model, then reads the files back. */
static void run_steps(const char *dir, addcow_options *o, struct memfs *fs,
                      const struct step *steps, size_t n, struct outcome *out)
{
    char path[4096];
    unsigned char *data = malloc(MAXDISK), *rbuf = malloc(MAXDISK);
    struct model *m = malloc(sizeof(*m));
    addcow_image *img = NULL;
    assert_true(data && rbuf && m);
    snprintf(path, sizeof(path), "%s/disk.add-cow", dir);

    for (size_t i = 0; i < n; i++) {
        const struct step *s = &steps[i];
        int64_t r = 0;
        if (s->kind == S_WRITE || s->kind == S_WRITEV)
            tu_fill_pattern(data, s->len, s->seed, s->off);
        if (s->kind == S_READ) {
            uint64_t want = s->len;
            if (s->off + want > m->size)
                want = m->size - s->off;
            r = addcow_pread(img, rbuf, s->len, s->off);
            assert_int_equal(r, (int64_t)want);
            assert_memory_equal(rbuf, m->buf + s->off, want);
            r = 0;
        } else {
            r = do_step(path, o, &img, s, data);
        }
        if (r != 0)
            fail_msg("step %zu (%s off %" PRIu64 " len %" PRIu64 ") returned %" PRId64
                     ": %s", i, step_call(s->kind), s->off, s->len, r, addcow_last_error());
        model_step(m, s, data);
    }
    assert_int_equal(addcow_open(path, ADDCOW_OPEN_RDONLY, o, &img), 0);
    check_reads_model(img, m, "after reopen");
    out->allocated = addcow_get_allocated_bytes(img);
    assert_int_equal(addcow_close(img), 0);

    if (fs != NULL) {
        out->addcow = memfs_get(fs, M_ADDCOW, &out->addcow_len);
        out->image = memfs_get(fs, M_IMAGE, &out->image_len);
        assert_int_equal(memfs_open_handles(fs), 0);
    } else {
        out->addcow = tu_read_file(path, &out->addcow_len);
        snprintf(path, sizeof(path), "%s/disk.raw", dir);
        out->image = tu_read_file(path, &out->image_len);
    }
    assert_non_null(out->addcow);
    assert_non_null(out->image);
    free(data);
    free(rbuf);
    free(m);
}

static void test_matches_posix(void **state)
{
    (void)state;
    uint64_t seed = tu_seed("test_matches_posix");
    unsigned rounds = tu_scale(6);
    unsigned char *back = malloc(BACKING_LEN);
    struct step steps[80];
    assert_non_null(back);
    backing_bytes(back);

    for (unsigned round = 0; round < rounds; round++) {
        uint64_t rng = seed + round * UINT64_C(0x9E3779B97F4A7C15);
        if (rng == 0)
            rng = 1;
        size_t n = gen_steps(&rng, steps, sizeof(steps) / sizeof(steps[0]));

        /* Real files, in a fresh folder. */
        const char *dir = tu_subdir(tu_str("posix-%u", round));
        assert_int_equal(tu_write_file(tu_str("%s/base.raw", dir), back, BACKING_LEN), 0);
        struct outcome px, mx;
        run_steps(dir, NULL, NULL, steps, n, &px);

        /* The same on memfs. */
        struct memfs *fs = memfs_new();
        addcow_options *o = memfs_options(fs);
        assert_int_equal(memfs_put(fs, M_BACK, back, BACKING_LEN), 0);
        run_steps("/f", o, fs, steps, n, &mx);

        assert_int_equal(mx.addcow_len, px.addcow_len);
        assert_memory_equal(mx.addcow, px.addcow, px.addcow_len);
        assert_int_equal(mx.image_len, px.image_len);
        assert_memory_equal(mx.image, px.image, px.image_len);
        assert_int_equal(mx.allocated, px.allocated);
        /* memfs holds exactly the three files: nothing temporary left. */
        assert_int_equal(memfs_count(fs), 3);

        free(px.addcow);
        free(px.image);
        free(mx.addcow);
        free(mx.image);
        addcow_options_free(o);
        memfs_free(fs);
    }
    free(back);
}

/* Refusals that need a file system's help: directories, missing files,
 * locks between two handles, and a backend without locks. */
static void test_memfs_refusals(void **state)
{
    (void)state;
    addcow_options *o;
    unsigned char *back;
    struct memfs *fs = fs_with_backing(&o, &back);
    addcow_image *a = NULL, *b = NULL;
    assert_int_equal(addcow_create(M_ADDCOW, DISK, "base.raw", "disk.raw", o), 0);

    /* Two writers in one process: the second is refused. */
    assert_int_equal(addcow_open(M_ADDCOW, ADDCOW_OPEN_RDWR, o, &a), 0);
    assert_int_equal(addcow_open(M_ADDCOW, ADDCOW_OPEN_RDWR, o, &b), -EBUSY);
    assert_null(b);
    assert_non_null(strstr(addcow_last_error(), M_ADDCOW));
    assert_int_equal(addcow_open(M_ADDCOW, ADDCOW_OPEN_RDONLY, o, &b), -EBUSY);
    assert_int_equal(addcow_close(a), 0);
    /* Two readers are fine. */
    assert_int_equal(addcow_open(M_ADDCOW, ADDCOW_OPEN_RDONLY, o, &a), 0);
    assert_int_equal(addcow_open(M_ADDCOW, ADDCOW_OPEN_RDONLY, o, &b), 0);
    assert_int_equal(addcow_close(a), 0);
    assert_int_equal(addcow_close(b), 0);
    /* A backend without locks: no refusal. */
    memfs_set_locking(fs, false);
    assert_int_equal(addcow_open(M_ADDCOW, ADDCOW_OPEN_RDWR, o, &a), 0);
    assert_int_equal(addcow_open(M_ADDCOW, ADDCOW_OPEN_RDWR, o, &b), 0);
    assert_int_equal(addcow_close(a), 0);
    assert_int_equal(addcow_close(b), 0);
    memfs_set_locking(fs, true);

    /* The image file missing, then a directory. */
    unsigned char *img = memfs_get(fs, M_IMAGE, NULL);
    assert_non_null(img);
    assert_int_equal(memfs_ops(fs)->unlink(memfs_ops(fs), M_IMAGE), 0);
    assert_int_equal(addcow_open(M_ADDCOW, ADDCOW_OPEN_RDONLY, o, &a), -ENOENT);
    assert_non_null(strstr(addcow_last_error(), "'" M_IMAGE "'"));
    assert_int_equal(memfs_mkdir(fs, M_IMAGE), 0);
    assert_int_equal(addcow_open(M_ADDCOW, ADDCOW_OPEN_RDONLY, o, &a), -EISDIR);
    assert_non_null(strstr(addcow_last_error(), M_IMAGE));
    /* The backing file missing. */
    assert_int_equal(memfs_ops(fs)->unlink(memfs_ops(fs), M_BACK), 0);
    assert_int_equal(addcow_create("/f/other.add-cow", 0, "base.raw", "o.raw", o), -ENOENT);
    assert_non_null(strstr(addcow_last_error(), M_BACK));
    assert_int_equal(memfs_exists(fs, "/f/other.add-cow"), 0);
    assert_int_equal(memfs_exists(fs, "/f/o.raw"), 0);
    assert_int_equal(memfs_open_handles(fs), 0);
    free(img);
    fs_done(fs, o, back);
}

/* ---- fault injection ---------------------------------------------------------- */

/* The scripted workload: every kind of call, over a backing file that ends
 * in the middle of a sector. */
static const struct step fault_script[] = {
    { S_CREATE, DISK, 0, 0, 0 },
    { S_OPEN, 0, 0, 0, 0 },
    { S_WRITE, 100, 300, 0, 1 },            /* partial sector: copy-on-write */
    { S_WRITE, 4096, 8192, 0, 2 },          /* whole sectors */
    { S_WRITE, 39900, 1000, 0, 3 },         /* across the backing file's end */
    { S_FLUSH, 0, 0, 0, 0 },
    { S_WRITE, 4106, 100, 0, 4 },           /* in place: already allocated */
    { S_WRITE, 60000, 700, 0, 5 },          /* past the backing file */
    { S_ZERO, 20000, 3000, 0, 0 },
    { S_ZERO, 8192, 16384, ADDCOW_ZEROES_MAY_UNMAP, 0 },
    { S_WRITEV, 30000, 2000, 0, 6 },
    { S_READ, 0, DISK, 0, 0 },
    { S_FLUSH, 0, 0, 0, 0 },
    { S_TRUNC, 96 * 1024, 0, 0, 0 },        /* grow */
    { S_WRITE, 70000, 5000, 0, 7 },
    { S_TRUNC, 48 * 1024, 0, 0, 0 },        /* shrink */
    { S_WRITE, 48 * 1024 - 200, 200, 0, 8 },
    { S_CLOSE, 0, 0, 0, 0 },
};
#define FAULT_STEPS (sizeof(fault_script) / sizeof(fault_script[0]))

/* What the disk may hold, sector by sector, after a failure: one of these
 * states (the last flushed one and every later one, the failed call's
 * intended result included). */
struct snaps {
    struct model *v[FAULT_STEPS + 2];
    int n;
};

static void snaps_reset(struct snaps *s)
{
    for (int i = 0; i < s->n; i++)
        free(s->v[i]);
    s->n = 0;
}

static void snaps_push(struct snaps *s, const struct model *m)
{
    assert_true(s->n < (int)(sizeof(s->v) / sizeof(s->v[0])));
    s->v[s->n] = malloc(sizeof(*m));
    assert_non_null(s->v[s->n]);
    memcpy(s->v[s->n], m, sizeof(*m));
    s->n++;
}

/* Every sector of the reopened disk must be that sector in one of the
 * allowed states (that has it), and the size one of theirs.  Returns false
 * and describes the first mismatch in why. */
static bool matches_snaps(addcow_image *img, const struct snaps *s, char *why, size_t n)
{
    int64_t size = addcow_get_size(img);
    bool size_ok = false;
    for (int j = 0; j < s->n; j++)
        size_ok |= (int64_t)s->v[j]->size == size;
    if (!size_ok) {
        snprintf(why, n, "size %" PRId64 " after reopen is no size the disk had", size);
        return false;
    }
    unsigned char *buf = malloc((size_t)size + 1);
    assert_non_null(buf);
    assert_int_equal(addcow_pread(img, buf, (size_t)size, 0), size);
    for (uint64_t sec = 0; sec < (uint64_t)size / SECTOR; sec++) {
        bool found = false;
        for (int j = 0; j < s->n && !found; j++)
            found = (sec + 1) * SECTOR <= s->v[j]->size &&
                    memcmp(buf + sec * SECTOR, s->v[j]->buf + sec * SECTOR, SECTOR) == 0;
        if (!found) {
            free(buf);
            snprintf(why, n, "sector %" PRIu64 " reads bytes it never held since the last "
                     "flush (%d candidate states)", sec, s->n);
            return false;
        }
    }
    free(buf);
    return true;
}

static void check_against_snaps(addcow_image *img, const struct snaps *s, const char *ctx)
{
    char why[256];
    if (!matches_snaps(img, s, why, sizeof(why)))
        fail_msg("%s: %s", ctx, why);
}

/* The message names the public call, the injected error, and the file the
 * fault hit (for the temporary file of a create: the add-cow file; NULL:
 * any file of the image). */
static void check_message(const char *call, int err, const char *file, const char *ctx)
{
    const char *msg = addcow_last_error();
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "%s: ", call);
    if (strncmp(msg, prefix, strlen(prefix)) != 0)
        fail_msg("%s: message does not start with '%s': %s", ctx, prefix, msg);
    if (strstr(msg, strerror(err)) == NULL)
        fail_msg("%s: message does not say '%s': %s", ctx, strerror(err), msg);
    if (file == NULL) {
        if (strstr(msg, M_ADDCOW) == NULL && strstr(msg, M_IMAGE) == NULL &&
            strstr(msg, M_BACK) == NULL)
            fail_msg("%s: message names none of the image's files: %s", ctx, msg);
        return;
    }
    size_t fl = strlen(file);
    bool named = strstr(msg, file) != NULL;
    if (!named && fl > 4 && strcmp(file + fl - 4, ".tmp") == 0)
        named = strstr(msg, M_ADDCOW) != NULL;
    if (!named)
        fail_msg("%s: message does not name '%s': %s", ctx, file, msg);
}

struct fault_stats {
    unsigned failed_calls, absorbed, unexpected;
};

/* Faults a call may absorb, because the operation only guards against a
 * mistake that a later step catches too:
 *  - create's early "does the add-cow file exist?" open: the final
 *    rename_noreplace refuses an existing file atomically anyway;
 *  - create's "is the image file the backing file?" check (open and
 *    identity of both): open refuses such an image later (-EINVAL);
 *  - truncate's look at the image file's length when shrinking: a longer
 *    image file is allowed, and grow cuts it back before extending.
 * Anything else absorbed (a read above all: it feeds data or the format
 * probe) is a fault lost. */
static bool absorb_allowed(enum step_kind k, unsigned op, const char *file)
{
    if (k == S_CREATE && op == MEMFS_OP_OPEN && strcmp(file, M_ADDCOW) == 0)
        return true;
    if (k == S_CREATE && (op == MEMFS_OP_OPEN || op == MEMFS_OP_IDENTITY) &&
        (strcmp(file, M_BACK) == 0 || strcmp(file, M_IMAGE) == 0))
        return true;
    if (k == S_TRUNC && op == MEMFS_OP_SIZE && strcmp(file, M_IMAGE) == 0)
        return true;
    return false;
}

static const int fault_errnos[] = { EIO, ENOSPC, EDQUOT, EROFS };

/* Runs the script with operation `nth` failing (0: none), once or from then
 * on; returns the number of memfs operations the steps performed. */
static uint64_t run_fault_script(uint64_t nth, bool sticky, int err, struct fault_stats *st)
{
    addcow_options *o;
    unsigned char *back, *data = malloc(MAXDISK);
    struct memfs *fs = fs_with_backing(&o, &back);
    struct model *m = malloc(sizeof(*m)), *want = malloc(sizeof(*m));
    struct snaps snaps = { .n = 0 };
    addcow_image *img = NULL;
    bool created = false, failed = false;
    char ctx[256], fname[256];
    int failed_step = -1;

    assert_true(data && m && want);
    memset(m, 0, sizeof(*m));
    if (nth > 0) {
        struct memfs_fault f = { MEMFS_OP_ALL, NULL, nth, sticky, err };
        assert_int_equal(memfs_fault_add(fs, &f), 0);
    }

    for (size_t i = 0; i < FAULT_STEPS && !failed; i++) {
        const struct step *s = &fault_script[i];
        int64_t r = 0;
        snprintf(ctx, sizeof(ctx), "fault at op %" PRIu64 "%s (%s), step %zu %s", nth,
                 sticky ? " and after" : "", strerror(err), i, step_call(s->kind));
        if (s->kind == S_WRITE || s->kind == S_WRITEV)
            tu_fill_pattern(data, s->len, s->seed, s->off);
        memcpy(want, m, sizeof(*m));
        model_step(want, s, data);
        uint64_t hits = memfs_fault_hits(fs);
        if (s->kind == S_READ) {
            unsigned char *rb = malloc(s->len);
            r = addcow_pread(img, rb, s->len, s->off);
            if (r == (int64_t)s->len) {
                if (memcmp(rb, m->buf + s->off, s->len) != 0) {
                    free(rb);
                    fail_msg("%s: read returned wrong bytes", ctx);
                }
                r = 0;
            }
            free(rb);
        } else {
            r = do_step(M_ADDCOW, o, &img, s, data);
        }
        bool hit = memfs_fault_hits(fs) > hits;
        unsigned op = 0;
        fname[0] = '\0';
        if (hit)
            memfs_fault_last(fs, &op, fname, sizeof(fname), NULL);
        if (r < 0) {
            if (!hit)
                fail_msg("%s: failed with %" PRId64 " (%s) but no fault was injected", ctx,
                         r, addcow_last_error());
            if (r != -err)
                fail_msg("%s: returned %" PRId64 " for an injected %s on %s of '%s': %s",
                         ctx, r, strerror(err), memfs_op_name(op), fname,
                         addcow_last_error());
            /* Sticky: later cleanup may have hit other files; the message
             * names the first, so any of the image's files will do. */
            check_message(step_call(s->kind), err,
                          sticky ? NULL : fname, ctx);
            st->failed_calls++;
            failed = true;
            failed_step = (int)i;
            if (created)
                snaps_push(&snaps, want);
            continue;
        }
        if (r > 0)
            fail_msg("%s: returned %" PRId64, ctx, r);
        if (hit) {
            bool ok = absorb_allowed(s->kind, op, fname);
            st->absorbed++;
            st->unexpected += !ok;
            print_message("# %s%s: the fault on %s of '%s' was absorbed (the call "
                          "succeeded)\n", ok ? "" : "UNEXPECTED: ", ctx, memfs_op_name(op),
                          fname);
        }
        memcpy(m, want, sizeof(*m));
        if (s->kind == S_CREATE) {
            created = true;
            snaps_push(&snaps, m);
        } else if (s->kind == S_FLUSH || s->kind == S_CLOSE) {
            snaps_reset(&snaps);
            snaps_push(&snaps, m);
        } else if (s->kind != S_OPEN && s->kind != S_READ) {
            snaps_push(&snaps, m);
        }
    }
    uint64_t ops_done = memfs_op_count(fs, MEMFS_OP_ALL);

    /* A handle left open by the failure: close frees it, flush error or not. */
    if (img != NULL) {
        int r = addcow_close(img);
        if (r != 0 && r != -err)
            fail_msg("%s: close after the failure returned %d: %s", ctx, r,
                     addcow_last_error());
        if (r == 0 && failed) {
            /* Everything that succeeded is now durable; the failed call may
             * have happened in part. */
            snaps_reset(&snaps);
            snaps_push(&snaps, m);
            if (fault_script[failed_step].kind != S_OPEN)
                snaps_push(&snaps, want);
        }
    }
    if (memfs_open_handles(fs) != 0)
        fail_msg("%s: %u backend handles still open after close", ctx,
                 memfs_open_handles(fs));
    memfs_fault_clear(fs);

    if (!created) {
        /* A failed create leaves no add-cow file; undone with no fault
         * in the way, it leaves nothing at all. */
        if (memfs_exists(fs, M_ADDCOW))
            fail_msg("%s: a failed create left '%s'", ctx, M_ADDCOW);
        if (!sticky && memfs_count(fs) != 1) {
            char *extra = memfs_name_at(fs, memfs_count(fs) - 1);
            print_message("# %s: left behind: %s\n", ctx, extra);
            free(extra);
            fail_msg("%s: a failed create left %zu files", ctx, memfs_count(fs) - 1);
        }
    } else {
        addcow_image *r = NULL;
        int rc = addcow_open(M_ADDCOW, ADDCOW_OPEN_RDONLY, o, &r);
        if (rc != 0)
            fail_msg("%s: reopen after clearing the fault: %d %s", ctx, rc,
                     addcow_last_error());
        check_against_snaps(r, &snaps, ctx);
        if (!failed)
            check_reads_model(r, m, ctx);
        assert_int_equal(addcow_close(r), 0);
        /* And it is writable again. */
        assert_int_equal(addcow_open(M_ADDCOW, ADDCOW_OPEN_RDWR, o, &r), 0);
        assert_int_equal(addcow_pwrite(r, data, 1000, 1234), 1000);
        assert_int_equal(addcow_close(r), 0);
    }
    assert_int_equal(memfs_open_handles(fs), 0);
    snaps_reset(&snaps);
    free(data);
    free(m);
    free(want);
    fs_done(fs, o, back);
    return ops_done;
}

/* The state check must be able to fail: a sector changed behind the
 * library's back, or a lost flushed write, is caught. */
static void test_snap_check_catches(void **state)
{
    (void)state;
    addcow_options *o;
    unsigned char *back, data[SECTOR];
    struct memfs *fs = fs_with_backing(&o, &back);
    struct model *m = malloc(sizeof(*m));
    struct snaps sn = { .n = 0 };
    char why[256];
    tu_fill_pattern(data, sizeof(data), 11, 0);
    addcow_image *img = create_and_open(o);
    model_init(m, DISK);
    assert_int_equal(addcow_pwrite(img, data, SECTOR, 7 * SECTOR), SECTOR);
    assert_int_equal(addcow_close(img), 0);
    model_write(m, 7 * SECTOR, data, SECTOR);
    snaps_push(&sn, m);

    assert_int_equal(addcow_open(M_ADDCOW, ADDCOW_OPEN_RDONLY, o, &img), 0);
    assert_true(matches_snaps(img, &sn, why, sizeof(why)));
    assert_int_equal(addcow_close(img), 0);

    /* The image file's copy of sector 7 altered. */
    size_t len;
    unsigned char *raw = memfs_get(fs, M_IMAGE, &len);
    raw[7 * SECTOR + 100] ^= 1;
    assert_int_equal(memfs_put(fs, M_IMAGE, raw, len), 0);
    assert_int_equal(addcow_open(M_ADDCOW, ADDCOW_OPEN_RDONLY, o, &img), 0);
    assert_false(matches_snaps(img, &sn, why, sizeof(why)));
    assert_non_null(strstr(why, "sector 7 "));
    assert_int_equal(addcow_close(img), 0);
    raw[7 * SECTOR + 100] ^= 1;
    assert_int_equal(memfs_put(fs, M_IMAGE, raw, len), 0);
    free(raw);

    /* The bit of sector 7 lost: it reads the backing file again. */
    raw = memfs_get(fs, M_ADDCOW, &len);
    raw[TU_HDR_SIZE + 0] &= (unsigned char)~0x80;
    assert_int_equal(memfs_put(fs, M_ADDCOW, raw, len), 0);
    free(raw);
    assert_int_equal(addcow_open(M_ADDCOW, ADDCOW_OPEN_RDONLY, o, &img), 0);
    assert_false(matches_snaps(img, &sn, why, sizeof(why)));
    assert_int_equal(addcow_close(img), 0);

    snaps_reset(&sn);
    free(m);
    fs_done(fs, o, back);
}

static void fault_each_op(bool sticky)
{
    struct fault_stats st = { 0, 0, 0 };
    uint64_t total = run_fault_script(0, false, 0, &st);
    assert_int_equal(st.failed_calls, 0);
    assert_true(total > 20);
    for (uint64_t n = 1; n <= total; n++)
        run_fault_script(n, sticky, fault_errnos[n % 4], &st);
    print_message("# %s faults: %" PRIu64 " operations, %u failed calls, %u absorbed\n",
                  sticky ? "sticky" : "one-shot", total, st.failed_calls, st.absorbed);
    /* Every fault is met by some call: a one-shot one fails it or is
     * absorbed (listed above); a sticky one fails some call, close at the
     * latest. */
    if (sticky)
        assert_int_equal(st.failed_calls, total);
    else
        assert_int_equal(st.failed_calls + st.absorbed, total);
    if (st.unexpected > 0)
        fail_msg("%u injected faults were absorbed by calls that then succeeded "
                 "(UNEXPECTED lines above)", st.unexpected);
}

static void test_fault_each_op_once(void **state)
{
    (void)state;
    fault_each_op(false);
}

static void test_fault_each_op_sticky(void **state)
{
    (void)state;
    fault_each_op(true);
}

/* Faults by file name and kind: the error reaches the call that met it,
 * names the file, and goes away when the fault does. */
static void test_fault_by_name(void **state)
{
    (void)state;
    addcow_options *o;
    unsigned char *back, buf[2048], data[2048];
    struct memfs *fs = fs_with_backing(&o, &back);
    addcow_image *img = create_and_open(o);
    tu_fill_pattern(data, sizeof(data), 77, 0);

    /* Image file writes refused. */
    assert_int_equal(memfs_fail_ops(fs, MEMFS_OP_WRITE, "*/disk.raw", EROFS), 0);
    assert_int_equal(addcow_pwrite(img, data, 1000, 5000), -EROFS);
    check_message("addcow_pwrite", EROFS, M_IMAGE, "image write");
    assert_int_equal(addcow_write_zeroes(img, 0, 4096, 0), -EROFS);
    check_message("addcow_write_zeroes", EROFS, M_IMAGE, "write_zeroes");
    assert_int_equal(addcow_get_allocated_bytes(img), 0);
    assert_int_equal(addcow_pread(img, buf, 1000, 5000), 1000);
    assert_memory_equal(buf, back + 5000, 1000);           /* unchanged */
    memfs_fault_clear(fs);
    assert_int_equal(addcow_pwrite(img, data, 1000, 5000), 1000);

    /* Backing reads refused: reads and copy-on-write fail, naming it. */
    assert_int_equal(memfs_fail_ops(fs, MEMFS_OP_READ, "*/base.raw", EIO), 0);
    assert_int_equal(addcow_pread(img, buf, 100, 0), -EIO);
    check_message("addcow_pread", EIO, M_BACK, "backing read");
    assert_int_equal(addcow_pwrite(img, data, 10, 20000), -EIO);
    check_message("addcow_pwrite", EIO, M_BACK, "copy-on-write read");
    assert_int_equal(addcow_pread(img, buf, 1000, 5000), 1000);   /* allocated: fine */
    assert_memory_equal(buf, data, 1000);
    memfs_fault_clear(fs);

    /* The add-cow file's flush refused: flush fails; the bits are written
     * again by the next flush. */
    assert_int_equal(addcow_pwrite(img, data, 512, 40 * 512), 512);
    assert_int_equal(memfs_fail_ops(fs, MEMFS_OP_FLUSH, "*.add-cow", EIO), 0);
    assert_int_equal(addcow_flush(img), -EIO);
    check_message("addcow_flush", EIO, M_ADDCOW, "add-cow flush");
    memfs_fault_clear(fs);
    memfs_record_start(fs);
    assert_int_equal(addcow_flush(img), 0);
    memfs_record_stop(fs);
    bool wrote_bits = false, flushed_acf = false;
    for (size_t i = 0; i < memfs_rec_count(fs); i++) {
        const struct memfs_rec *r = memfs_rec_at(fs, i);
        if (r->kind == MEMFS_REC_WRITE && strcmp(r->name, M_ADDCOW) == 0 &&
            r->offset <= TU_HDR_SIZE + 5 && r->offset + r->length > TU_HDR_SIZE + 5)
            wrote_bits = true;
        if (r->kind == MEMFS_REC_FLUSH && strcmp(r->name, M_ADDCOW) == 0)
            flushed_acf = wrote_bits;
    }
    assert_true(wrote_bits);
    assert_true(flushed_acf);
    unsigned char *d = memfs_get_durable(fs, M_ADDCOW, NULL);
    assert_non_null(d);
    assert_int_equal(d[TU_HDR_SIZE + 5] & 0x01, 0x01);     /* sector 40 */
    free(d);

    /* Punching refused with an error: write_zeroes fails; unsupported:
     * it writes zeros instead. */
    assert_int_equal(memfs_fail_ops(fs, MEMFS_OP_PUNCH, NULL, EIO), 0);
    assert_int_equal(addcow_write_zeroes(img, 8192, 8192, ADDCOW_ZEROES_MAY_UNMAP), -EIO);
    check_message("addcow_write_zeroes", EIO, M_IMAGE, "punch");
    memfs_fault_clear(fs);
    memfs_set_punch_supported(fs, false);
    assert_int_equal(addcow_write_zeroes(img, 8192, 8192, ADDCOW_ZEROES_MAY_UNMAP), 0);
    assert_int_equal(addcow_pread(img, buf, 2048, 8192), 2048);
    for (int i = 0; i < 2048; i++)
        assert_int_equal(buf[i], 0);

    /* close: the image file's flush fails; the handle is freed anyway. */
    assert_int_equal(addcow_pwrite(img, data, 700, 40000), 700);
    assert_int_equal(memfs_fail_ops(fs, MEMFS_OP_FLUSH, "*/disk.raw", EIO), 0);
    assert_int_equal(addcow_close(img), -EIO);
    check_message("addcow_close", EIO, M_IMAGE, "close");
    assert_int_equal(memfs_open_handles(fs), 0);
    memfs_fault_clear(fs);

    /* What was flushed is there; the write whose flush failed may be or
     * not, but nothing else. */
    assert_int_equal(addcow_open(M_ADDCOW, ADDCOW_OPEN_RDONLY, o, &img), 0);
    assert_int_equal(addcow_pread(img, buf, 1000, 5000), 1000);
    assert_memory_equal(buf, data, 1000);
    assert_int_equal(addcow_pread(img, buf, 512, 40 * 512), 512);
    assert_memory_equal(buf, data, 512);
    assert_int_equal(addcow_pread(img, buf, 700, 40000), 700);
    bool old = true, neu = true;
    for (int i = 0; i < 700; i++) {
        old &= buf[i] == 0;                       /* past the backing file: zeros */
        neu &= buf[i] == data[i];
    }
    assert_true(old || neu);
    assert_int_equal(addcow_close(img), 0);
    fs_done(fs, o, back);
}

/* EINTR from a read or a write is retried (the documented mapping: it is
 * not an error); short transfers are continued. */
static void test_eintr_and_short_io(void **state)
{
    (void)state;
    addcow_options *o;
    unsigned char *back, buf[3000], data[3000];
    struct memfs *fs = fs_with_backing(&o, &back);
    addcow_image *img = create_and_open(o);
    tu_fill_pattern(data, sizeof(data), 5, 0);

    struct memfs_fault f = { MEMFS_OP_READ | MEMFS_OP_WRITE, NULL, 1, false, EINTR };
    assert_int_equal(memfs_fault_add(fs, &f), 0);
    assert_int_equal(addcow_pwrite(img, data, 3000, 777), 3000);   /* COW read hit */
    assert_int_equal(memfs_fault_hits(fs), 1);
    memfs_fault_clear(fs);
    f.ops = MEMFS_OP_WRITE;
    assert_int_equal(memfs_fault_add(fs, &f), 0);
    assert_int_equal(addcow_pwrite(img, data, 1024, 8192), 1024);
    assert_int_equal(memfs_fault_hits(fs), 2);
    memfs_fault_clear(fs);

    memfs_set_max_io(fs, 7);
    assert_int_equal(addcow_pwrite(img, data + 5, 2000, 20001), 2000);
    assert_int_equal(addcow_flush(img), 0);
    assert_int_equal(addcow_pread(img, buf, 3000, 777), 3000);
    assert_memory_equal(buf, data, 3000);
    assert_int_equal(addcow_pread(img, buf, 2000, 20001), 2000);
    assert_memory_equal(buf, data + 5, 2000);
    assert_int_equal(addcow_pread(img, buf, 1000, 30000), 1000);
    assert_memory_equal(buf, back + 30000, 1000);
    assert_int_equal(addcow_close(img), 0);
    memfs_set_max_io(fs, 0);

    assert_int_equal(addcow_open(M_ADDCOW, ADDCOW_OPEN_RDONLY, o, &img), 0);
    assert_int_equal(addcow_pread(img, buf, 1024, 8192), 1024);
    assert_memory_equal(buf, data, 1024);
    assert_int_equal(addcow_pread(img, buf, 2000, 20001), 2000);
    assert_memory_equal(buf, data + 5, 2000);
    assert_int_equal(addcow_close(img), 0);
    fs_done(fs, o, back);
}

/* A shrink whose size-field flush fails: the handle must not go on
 * accepting writes that a reopen then drops. */
static void test_failed_shrink_then_write(void **state)
{
    (void)state;
    addcow_options *o;
    unsigned char *back, data[1000], buf[1000];
    struct memfs *fs = fs_with_backing(&o, &back);
    tu_fill_pattern(data, sizeof(data), 9, 0);
    addcow_image *img = create_and_open(o);
    assert_int_equal(addcow_flush(img), 0);

    /* The flush after the size field's write. */
    struct memfs_fault f = { MEMFS_OP_FLUSH, "*.add-cow", 1, false, EIO };
    assert_int_equal(memfs_fault_add(fs, &f), 0);
    int r = addcow_truncate(img, 32 * 1024);
    memfs_fault_clear(fs);
    assert_int_equal(r, -EIO);
    int64_t size = addcow_get_size(img);
    int64_t w = addcow_pwrite(img, data, sizeof(data), 40 * 1024);
    assert_int_equal(addcow_close(img), 0);

    assert_int_equal(addcow_open(M_ADDCOW, ADDCOW_OPEN_RDONLY, o, &img), 0);
    int64_t size2 = addcow_get_size(img);
    bool lost = false, read_ok = true;
    if (w == (int64_t)sizeof(data)) {
        /* The handle took the write: it must have survived close. */
        lost = size2 != size;
        read_ok = lost || (addcow_pread(img, buf, sizeof(buf), 40 * 1024) ==
                           (int64_t)sizeof(buf) && memcmp(buf, data, sizeof(buf)) == 0);
    } else {
        assert_int_equal(w, -ENOSPC);
        assert_int_equal(size2, 32 * 1024);
    }
    assert_int_equal(addcow_close(img), 0);
    fs_done(fs, o, back);
    if (lost)
        fail_msg("after a failed shrink the handle kept size %" PRId64 " and accepted a "
                 "write at 40960, but the image reopens with size %" PRId64
                 ": the write is lost", size, size2);
    assert_true(read_ok);
}

/* A read error while probing the backing file's format must fail the open,
 * not make an add-cow backing file pass for a raw one. */
static void test_probe_read_error(void **state)
{
    (void)state;
    addcow_options *o;
    unsigned char *back, buf[512];
    struct memfs *fs = fs_with_backing(&o, &back);
    addcow_image *img = NULL;
    assert_int_equal(addcow_create("/f/mid.add-cow", DISK, "base.raw", "mid.raw", o), 0);
    assert_int_equal(addcow_create(M_ADDCOW, DISK, "mid.add-cow", "disk.raw", o), 0);

    struct memfs_fault f = { MEMFS_OP_READ, "*/mid.add-cow", 1, false, EIO };
    assert_int_equal(memfs_fault_add(fs, &f), 0);
    int r = addcow_open(M_ADDCOW, ADDCOW_OPEN_RDONLY, o, &img);
    memfs_fault_clear(fs);
    if (r == 0) {
        /* Then it must at least read the chain's data, the base file. */
        assert_int_equal(addcow_pread(img, buf, sizeof(buf), 0), (int64_t)sizeof(buf));
        bool right = memcmp(buf, back, sizeof(buf)) == 0;
        assert_int_equal(addcow_close(img), 0);
        fs_done(fs, o, back);
        if (!right)
            fail_msg("a read error while probing the backing file's format was ignored: "
                     "the add-cow backing file was taken for raw and its header bytes "
                     "are read as disk data");
        return;
    }
    assert_int_equal(r, -EIO);
    check_message("addcow_open", EIO, "/f/mid.add-cow", "probe");
    fs_done(fs, o, back);
}

/* memfs under the library used from several threads at once: each thread
 * writes its own region of one handle; all of it reads back. */
struct writer {
    addcow_image *img;
    uint64_t base, rng;
    unsigned char model[16 * 1024];
    int err;
};

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    unsigned char buf[1500];
    for (int i = 0; i < 150 && w->err == 0; i++) {
        uint64_t len = 1 + tu_rand_below(&w->rng, sizeof(buf));
        uint64_t off = tu_rand_below(&w->rng, sizeof(w->model) - len + 1);
        tu_fill_pattern(buf, len, (uint32_t)tu_rand(&w->rng), off);
        if (addcow_pwrite(w->img, buf, len, w->base + off) != (int64_t)len)
            w->err = 1;
        memcpy(w->model + off, buf, len);
        if (i % 25 == 0 && addcow_flush(w->img) != 0)
            w->err = 2;
    }
    return NULL;
}

static void test_threads_on_memfs(void **state)
{
    (void)state;
    uint64_t seed = tu_seed("test_threads_on_memfs");
    addcow_options *o;
    unsigned char *back, *buf = malloc(16 * 1024);
    struct memfs *fs = fs_with_backing(&o, &back);
    struct writer *w = calloc(4, sizeof(*w));
    pthread_t t[4];
    addcow_image *img = create_and_open(o);
    for (int i = 0; i < 4; i++) {
        w[i].img = img;
        w[i].base = (uint64_t)i * sizeof(w[i].model);
        w[i].rng = seed + (uint64_t)i + 1;
        for (size_t b = 0; b < sizeof(w[i].model); b++)
            w[i].model[b] = w[i].base + b < BACKING_LEN ? back[w[i].base + b] : 0;
        assert_int_equal(pthread_create(&t[i], NULL, writer_main, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_int_equal(addcow_close(img), 0);
    assert_int_equal(addcow_open(M_ADDCOW, ADDCOW_OPEN_RDONLY, o, &img), 0);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(w[i].err, 0);
        assert_int_equal(addcow_pread(img, buf, sizeof(w[i].model), w[i].base),
                         (int64_t)sizeof(w[i].model));
        assert_memory_equal(buf, w[i].model, sizeof(w[i].model));
    }
    assert_int_equal(addcow_close(img), 0);
    assert_int_equal(memfs_open_handles(fs), 0);
    free(w);
    free(buf);
    fs_done(fs, o, back);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_memfs_basics),
        cmocka_unit_test(test_memfs_faults_and_log),
        cmocka_unit_test(test_matches_posix),
        cmocka_unit_test(test_memfs_refusals),
        cmocka_unit_test(test_threads_on_memfs),
        cmocka_unit_test(test_snap_check_catches),
        cmocka_unit_test(test_fault_each_op_once),
        cmocka_unit_test(test_fault_each_op_sticky),
        cmocka_unit_test(test_fault_by_name),
        cmocka_unit_test(test_eintr_and_short_io),
        cmocka_unit_test(test_failed_shrink_then_write),
        cmocka_unit_test(test_probe_read_error),
    };
    tu_scratch();
    return cmocka_run_group_tests(tests, NULL, tu_free_strings);
}
