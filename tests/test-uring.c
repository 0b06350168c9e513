/*
 * test-uring.c: the io_uring backend (lib/backend-uring.c) on its own:
 * batches through ac_submit() with links, failures that cancel the rest of
 * a chain, flushes inside chains, short reads at the end of a file,
 * continued requests, batches far bigger than a ring, O_DIRECT routing,
 * many threads at once, rings freed at thread exit and remade after fork,
 * the backend choice, and -ENOSYS when the kernel refuses io_uring
 * (simulated with a seccomp filter in a child process).
 *
 * Expected bytes come from a model (a buffer written in parallel) or from
 * tu_pattern(), and files are checked through plain pread(), not through
 * the backend under test.  Exits 77 where io_uring is not built or not
 * allowed.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(HAVE_LIBURING) && defined(__linux__)
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#endif

#include "addcow.h"
#include "backend.h"
#include "options.h"
#include "testutil.h"

#ifdef HAVE_LIBURING
#include "backend-posix.h"

static const struct ac_backend_ops *const U = &ac_uring_backend;

/* ---- helpers ------------------------------------------------------------ */

static struct ac_file *uopen(const char *path, unsigned flags)
{
    struct ac_file *f = NULL;
    int r = U->open(U, path, flags, &f);
    if (r != 0)
        fail_msg("open(%s) = %d", path, r);
    return f;
}

/* A file of `len` bytes of tu_pattern(seed), or zeros with seed 0. */
static const char *make_file(const char *name, size_t len, uint32_t seed)
{
    const char *p = tu_str("%s/%s", tu_scratch(), name);
    if (seed != 0) {
        tu_make_raw(p, len, seed);
    } else {
        unsigned char *z = calloc(1, len ? len : 1);
        assert_non_null(z);
        assert_int_equal(tu_write_file(p, z, len), 0);
        free(z);
    }
    return p;
}

/* The file's bytes [off, off + len), read with plain pread(). */
static unsigned char *disk(const char *path, uint64_t off, size_t len)
{
    unsigned char *b = malloc(len ? len : 1);
    assert_non_null(b);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, b, len, (off_t)off), (ssize_t)len);
    close(fd);
    return b;
}

static void assert_disk_pattern(const char *path, uint64_t off, size_t len, uint32_t seed,
                                uint64_t pattern_off)
{
    unsigned char *got = disk(path, off, len), *want = malloc(len);
    assert_non_null(want);
    tu_fill_pattern(want, len, seed, pattern_off);
    assert_memory_equal(got, want, len);
    free(got);
    free(want);
}

static void assert_disk_zero(const char *path, uint64_t off, size_t len)
{
    unsigned char *got = disk(path, off, len), *zero = calloc(1, len);
    assert_non_null(zero);
    assert_memory_equal(got, zero, len);
    free(got);
    free(zero);
}

static struct ac_req rw(struct ac_file *f, int op, const struct iovec *iov, int iovcnt,
                        uint64_t off, unsigned flags)
{
    uint64_t len = 0;
    for (int i = 0; i < iovcnt; i++)
        len += iov[i].iov_len;
    return (struct ac_req){ .file = f, .op = op, .flags = flags, .iov = iov,
                            .iovcnt = iovcnt, .offset = off, .len = len,
                            .result = INT64_MIN };
}

static struct ac_req flush_req(struct ac_file *f, unsigned flags)
{
    return (struct ac_req){ .file = f, .op = AC_REQ_FLUSH, .flags = flags,
                            .result = INT64_MIN };
}

static void *pattern_buf(size_t len, uint32_t seed, uint64_t off)
{
    unsigned char *b = malloc(len ? len : 1);
    assert_non_null(b);
    tu_fill_pattern(b, len, seed, off);
    return b;
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    assert_non_null(d);
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n;
}

/* ---- single requests ----------------------------------------------------- */

static void test_single_ops(void **state)
{
    (void)state;
    const char *p = make_file("single", 0, 0);
    struct ac_file *f = uopen(p, AC_FILE_RDWR);
    unsigned char *a = pattern_buf(5000, 11, 0);
    struct iovec w[3] = { { a, 100 }, { a + 100, 3900 }, { a + 4000, 1000 } };

    assert_int_equal(f->ops->pwritev(f, w, 3, 300), 5000);
    assert_int_equal(f->ops->flush(f), 0);
    assert_int_equal(f->ops->size(f), 5300);

    unsigned char got[6000];
    memset(got, 0xEE, sizeof(got));
    struct iovec r[2] = { { got, 7 }, { got + 7, 5993 } };
    /* From 300 to the end: 5000 bytes, the rest of the buffers untouched. */
    assert_int_equal(f->ops->preadv(f, r, 2, 300), 5000);
    assert_memory_equal(got, a, 5000);
    for (size_t i = 5000; i < sizeof(got); i++)
        assert_int_equal(got[i], 0xEE);
    assert_int_equal(f->ops->preadv(f, r, 2, 5300), 0);
    assert_int_equal(f->ops->preadv(f, r, 2, 1u << 30), 0);
    assert_int_equal(ac_file_pread(f, got, 10, 5295), 5);

    unsigned char *d = disk(p, 300, 5000);
    assert_memory_equal(d, a, 5000);
    free(d);
    free(a);
    ac_file_close(f);
}

/* ---- links --------------------------------------------------------------- */

static void test_failed_link_cancels_rest(void **state)
{
    (void)state;
    const char *p = make_file("links", 64 * 1024, 0);
    struct ac_file *a = uopen(p, AC_FILE_RDWR);
    struct ac_file *ro = uopen(p, AC_FILE_RDONLY);     /* writes fail: -EBADF */
    unsigned char *b0 = pattern_buf(4096, 1, 0), *b1 = pattern_buf(4096, 2, 0);
    unsigned char *b2 = pattern_buf(4096, 3, 0), *b4 = pattern_buf(4096, 4, 0);
    unsigned char rd[4096];
    memset(rd, 0xEE, sizeof(rd));
    struct iovec v0 = { b0, 4096 }, v1 = { b1, 4096 }, v2 = { b2, 4096 }, v4 = { b4, 4096 };
    struct iovec vr = { rd, 4096 };

    struct ac_req q[7] = {
        rw(a, AC_REQ_WRITE, &v0, 1, 0, AC_REQ_LINK),        /* runs */
        rw(ro, AC_REQ_WRITE, &v1, 1, 4096, AC_REQ_LINK),    /* fails */
        rw(a, AC_REQ_WRITE, &v2, 1, 8192, AC_REQ_LINK),     /* cancelled */
        flush_req(a, 0),                                    /* cancelled: chain ends */
        rw(a, AC_REQ_WRITE, &v4, 1, 12288, 0),              /* its own chain: runs */
        rw(a, AC_REQ_READ, &vr, 1, 32768, 0),               /* untouched zeros */
        rw(ro, AC_REQ_WRITE, &v1, 1, 40960, AC_REQ_LINK),   /* fails; nothing after */
    };
    assert_int_equal(ac_submit(q, 7), -EBADF);
    assert_int_equal(q[0].result, 0);
    assert_int_equal(q[1].result, -EBADF);
    assert_int_equal(q[2].result, -ECANCELED);
    assert_int_equal(q[3].result, -ECANCELED);
    assert_int_equal(q[4].result, 0);
    assert_int_equal(q[5].result, 4096);
    assert_int_equal(q[6].result, -EBADF);
    for (size_t i = 0; i < sizeof(rd); i++)
        assert_int_equal(rd[i], 0);

    assert_disk_pattern(p, 0, 4096, 1, 0);
    assert_disk_zero(p, 4096, 8192);        /* neither the failed nor the cancelled */
    assert_disk_pattern(p, 12288, 4096, 4, 0);
    assert_disk_zero(p, 40960, 4096);

    /* A failure at the head of a chain; an unlinked failure cancels nothing. */
    struct ac_req h[5] = {
        rw(ro, AC_REQ_WRITE, &v1, 1, 16384, AC_REQ_LINK),
        rw(a, AC_REQ_READ, &vr, 1, 0, AC_REQ_LINK),
        flush_req(a, 0),
        rw(ro, AC_REQ_WRITE, &v1, 1, 20480, 0),
        rw(a, AC_REQ_WRITE, &v2, 1, 24576, 0),
    };
    assert_int_equal(ac_submit(h, 5), -EBADF);
    assert_int_equal(h[0].result, -EBADF);
    assert_int_equal(h[1].result, -ECANCELED);
    assert_int_equal(h[2].result, -ECANCELED);
    assert_int_equal(h[3].result, -EBADF);
    assert_int_equal(h[4].result, 0);
    assert_disk_pattern(p, 24576, 4096, 3, 0);

    free(b0);
    free(b1);
    free(b2);
    free(b4);
    ac_file_close(a);
    ac_file_close(ro);
}

/* A flush inside a chain: what follows it waits for it, and a failed flush
 * stops the chain (the order the image's flush relies on: image data
 * durable, then bitmap bytes, then the add-cow file durable). */
static void test_flush_in_chain(void **state)
{
    (void)state;
    const char *p = make_file("flushchain", 8192, 0);
    struct ac_file *a = uopen(p, AC_FILE_RDWR);
    /* A file of this backend whose descriptor is closed: its flush fails. */
    struct posix_file bad = { .base = { .ops = U }, .fd = -1, .bfd = -1,
                              .mem_align = 4096, .off_align = 4096 };
    unsigned char *b1 = pattern_buf(512, 21, 0), *b2 = pattern_buf(512, 22, 0);
    struct iovec v1 = { b1, 512 }, v2 = { b2, 512 };

    struct ac_req q[4] = {
        rw(a, AC_REQ_WRITE, &v1, 1, 0, AC_REQ_LINK),
        flush_req(&bad.base, AC_REQ_LINK),
        rw(a, AC_REQ_WRITE, &v2, 1, 4096, AC_REQ_LINK),
        flush_req(a, 0),
    };
    assert_int_equal(ac_submit(q, 4), -EBADF);
    assert_int_equal(q[0].result, 0);
    assert_int_equal(q[1].result, -EBADF);
    assert_int_equal(q[2].result, -ECANCELED);
    assert_int_equal(q[3].result, -ECANCELED);
    assert_disk_pattern(p, 0, 512, 21, 0);
    assert_disk_zero(p, 4096, 512);

    /* Write, flush, write, flush, read, as one chain, many times over the
     * same sector: every step sees the one before it. */
    enum { STEPS = 30 };
    struct ac_req c[STEPS * 2 + 1];
    unsigned char *bufs[STEPS];
    struct iovec vs[STEPS];
    unsigned char last[512];
    memset(last, 0xEE, sizeof(last));
    struct iovec vl = { last, 512 };
    int n = 0;
    for (int i = 0; i < STEPS; i++) {
        bufs[i] = pattern_buf(512, 100 + (uint32_t)i, 0);
        vs[i] = (struct iovec){ bufs[i], 512 };
        c[n++] = rw(a, AC_REQ_WRITE, &vs[i], 1, 2048, AC_REQ_LINK);
        c[n++] = flush_req(a, AC_REQ_LINK);
    }
    c[n++] = rw(a, AC_REQ_READ, &vl, 1, 2048, 0);
    assert_int_equal(ac_submit(c, n), 0);
    for (int i = 0; i < n - 1; i++)
        assert_int_equal(c[i].result, 0);
    assert_int_equal(c[n - 1].result, 512);
    assert_memory_equal(last, bufs[STEPS - 1], 512);
    assert_disk_pattern(p, 2048, 512, 100 + STEPS - 1, 0);
    for (int i = 0; i < STEPS; i++)
        free(bufs[i]);
    free(b1);
    free(b2);
    ac_file_close(a);
}

/* ---- short reads, continued requests --------------------------------------- */

static void test_short_reads_at_eof(void **state)
{
    (void)state;
    const char *p = make_file("eof", 10000, 31);
    const char *c = make_file("eof-out", 0, 0);
    struct ac_file *f = uopen(p, AC_FILE_RDONLY), *o = uopen(c, AC_FILE_RDWR);
    unsigned char b[5][16384];
    memset(b, 0xEE, sizeof(b));
    struct iovec v0 = { b[0], 16384 }, v1 = { b[1], 4096 }, v2 = { b[2], 4096 };
    struct iovec v3 = { b[3], 100 };
    struct iovec v4[3] = { { b[4], 3000 }, { b[4] + 3000, 5000 }, { b[4] + 8000, 4000 } };

    struct ac_req q[5] = {
        rw(f, AC_REQ_READ, &v0, 1, 0, 0),
        rw(f, AC_REQ_READ, &v1, 1, 9000, 0),
        rw(f, AC_REQ_READ, &v2, 1, 10000, 0),
        rw(f, AC_REQ_READ, &v3, 1, 20000, 0),
        rw(f, AC_REQ_READ, v4, 3, 0, 0),
    };
    assert_int_equal(ac_submit(q, 5), 0);
    assert_int_equal(q[0].result, 10000);
    assert_int_equal(q[1].result, 1000);
    assert_int_equal(q[2].result, 0);
    assert_int_equal(q[3].result, 0);
    assert_int_equal(q[4].result, 10000);
    unsigned char *want = pattern_buf(10000, 31, 0);
    assert_memory_equal(b[0], want, 10000);
    assert_memory_equal(b[1], want + 9000, 1000);
    assert_memory_equal(b[4], want, 10000);
    for (int i = 10000; i < 16384; i++)
        assert_int_equal(b[0][i], 0xEE);
    for (int i = 1000; i < 4096; i++)
        assert_int_equal(b[1][i], 0xEE);
    for (int i = 10000; i < 12000; i++)
        assert_int_equal(b[4][i], 0xEE);

    /* A read that ends short at the end of the file succeeds, so the
     * chain goes on (although the kernel breaks a link on a short read). */
    unsigned char rb[4096], back[1808];
    memset(back, 0xEE, sizeof(back));
    struct iovec vr = { rb, sizeof(rb) }, vw = { rb, 1808 }, vb = { back, sizeof(back) };
    struct ac_req ch[4] = {
        rw(f, AC_REQ_READ, &vr, 1, 8192, AC_REQ_LINK),
        rw(o, AC_REQ_WRITE, &vw, 1, 0, AC_REQ_LINK),
        flush_req(o, AC_REQ_LINK),
        rw(o, AC_REQ_READ, &vb, 1, 0, 0),
    };
    assert_int_equal(ac_submit(ch, 4), 0);
    assert_int_equal(ch[0].result, 1808);
    assert_int_equal(ch[1].result, 0);
    assert_int_equal(ch[2].result, 0);
    assert_int_equal(ch[3].result, 1808);
    assert_memory_equal(back, want + 8192, 1808);
    assert_disk_pattern(c, 0, 1808, 31, 8192);

    free(want);
    ac_file_close(f);
    ac_file_close(o);
}

/* Requests with more buffers than one system call takes (IOV_MAX) are
 * continued in later rounds, and what is linked after them waits. */
static void test_continued_requests(void **state)
{
    (void)state;
    enum { N = IOV_MAX + 700, PIECE = 24 };
    const char *p = make_file("cont", 0, 0);
    struct ac_file *f = uopen(p, AC_FILE_RDWR);
    size_t total = (size_t)N * PIECE;
    unsigned char *src = pattern_buf(total, 41, 0), *dst = malloc(total);
    unsigned char *after = pattern_buf(100, 42, 0), *dst2 = malloc(total + 100);
    struct iovec *wv = malloc(sizeof(*wv) * N), *rv = malloc(sizeof(*rv) * (N + 50));
    assert_non_null(dst);
    assert_non_null(dst2);
    assert_non_null(wv);
    assert_non_null(rv);
    memset(dst, 0xEE, total);
    memset(dst2, 0xEE, total + 100);
    for (int i = 0; i < N; i++)
        wv[i] = (struct iovec){ src + (size_t)i * PIECE, PIECE };
    /* Reading back with other splits: N + 50 buffers of uneven sizes. */
    size_t at = 0;
    int rn = 0;
    while (at < total) {
        size_t l = (size_t)(rn % 3 == 0 ? 7 : 33);
        if (rn == N + 49 || at + l > total)
            l = total - at;
        rv[rn++] = (struct iovec){ dst + at, l };
        at += l;
    }
    struct iovec va = { after, 100 }, vall = { dst2, total + 100 };

    struct ac_req q[5] = {
        rw(f, AC_REQ_WRITE, wv, N, 1000, AC_REQ_LINK),
        rw(f, AC_REQ_WRITE, &va, 1, 1000 + total, AC_REQ_LINK),
        rw(f, AC_REQ_READ, rv, rn, 1000, AC_REQ_LINK),
        rw(f, AC_REQ_READ, &vall, 1, 1000, AC_REQ_LINK),
        flush_req(f, 0),
    };
    assert_int_equal(ac_submit(q, 5), 0);
    assert_int_equal(q[0].result, 0);
    assert_int_equal(q[1].result, 0);
    assert_int_equal(q[2].result, (int64_t)total);
    assert_int_equal(q[3].result, (int64_t)total + 100);
    assert_int_equal(q[4].result, 0);
    assert_memory_equal(dst, src, total);
    assert_memory_equal(dst2, src, total);
    assert_memory_equal(dst2 + total, after, 100);
    unsigned char *d = disk(p, 1000, total);
    assert_memory_equal(d, src, total);
    free(d);
    assert_disk_zero(p, 0, 1000);

    free(src);
    free(dst);
    free(dst2);
    free(after);
    free(wv);
    free(rv);
    ac_file_close(f);
}

/* ---- batches bigger than a ring ------------------------------------------ */

static void test_batch_bigger_than_ring(void **state)
{
    (void)state;
    enum { BLK = 512, NBLK = 2048, N = 1000, CHAIN_FROM = 600, CHAIN_TO = 899 };
    const char *p = make_file("big", (size_t)NBLK * BLK, 51);
    struct ac_file *f = uopen(p, AC_FILE_RDWR);
    struct ac_req *q = calloc(N, sizeof(*q));
    struct iovec *v = calloc(N, sizeof(*v));
    unsigned char *bufs = malloc((size_t)N * BLK), *expect = pattern_buf(BLK, 51, 1500 * BLK);
    assert_non_null(q);
    assert_non_null(v);
    assert_non_null(bufs);

    for (int i = 0; i < N; i++) {
        unsigned char *b = bufs + (size_t)i * BLK;
        v[i] = (struct iovec){ b, BLK };
        if (i < CHAIN_FROM) {           /* independent writes of blocks 0..599 */
            tu_fill_pattern(b, BLK, 52, (uint64_t)i * BLK);
            q[i] = rw(f, AC_REQ_WRITE, &v[i], 1, (uint64_t)i * BLK, 0);
        } else if (i < CHAIN_TO) {      /* one chain of 299 writes to block 1000 */
            tu_fill_pattern(b, BLK, 1000 + (uint32_t)i, 0);
            q[i] = rw(f, AC_REQ_WRITE, &v[i], 1, 1000 * BLK, AC_REQ_LINK);
        } else if (i == CHAIN_TO) {     /* ... that ends reading it back */
            memset(b, 0xEE, BLK);
            q[i] = rw(f, AC_REQ_READ, &v[i], 1, 1000 * BLK, 0);
        } else {                        /* independent reads of untouched blocks */
            memset(b, 0xEE, BLK);
            q[i] = rw(f, AC_REQ_READ, &v[i], 1, (uint64_t)(1500 + i - 900) * BLK, 0);
        }
    }
    assert_int_equal(ac_submit(q, N), 0);
    for (int i = 0; i < N; i++)
        assert_int_equal(q[i].result, q[i].op == AC_REQ_READ ? BLK : 0);
    unsigned char *lastw = pattern_buf(BLK, 1000 + CHAIN_TO - 1, 0);
    assert_memory_equal(bufs + (size_t)CHAIN_TO * BLK, lastw, BLK);
    for (int i = 900; i < N; i++) {
        unsigned char *w = pattern_buf(BLK, 51, (uint64_t)(1500 + i - 900) * BLK);
        assert_memory_equal(bufs + (size_t)i * BLK, w, BLK);
        free(w);
    }
    assert_disk_pattern(p, 0, (size_t)CHAIN_FROM * BLK, 52, 0);
    unsigned char *d = disk(p, 1000 * BLK, BLK);
    assert_memory_equal(d, lastw, BLK);
    free(d);

    /* A chain of 300 (longer than the ring) failing at its 150th request:
     * the 150 before it ran, the 149 after it were cancelled. */
    struct ac_file *ro = uopen(p, AC_FILE_RDONLY);
    for (int i = 0; i < 300; i++) {
        tu_fill_pattern(bufs + (size_t)i * BLK, BLK, 53, (uint64_t)i * BLK);
        q[i] = rw(i == 150 ? ro : f, AC_REQ_WRITE, &v[i], 1, (uint64_t)i * BLK,
                  i < 299 ? AC_REQ_LINK : 0);
    }
    assert_int_equal(ac_submit(q, 300), -EBADF);
    for (int i = 0; i < 300; i++)
        assert_int_equal(q[i].result, i < 150 ? 0 : i == 150 ? -EBADF : -ECANCELED);
    assert_disk_pattern(p, 0, 150 * BLK, 53, 0);
    assert_disk_pattern(p, 150 * BLK, (CHAIN_FROM - 150) * BLK, 52, 150 * BLK);

    free(lastw);
    free(expect);
    free(bufs);
    free(v);
    free(q);
    ac_file_close(ro);
    ac_file_close(f);
}

/* ---- odd requests --------------------------------------------------------- */

static void test_empty_and_invalid_requests(void **state)
{
    (void)state;
    const char *p = make_file("odd", 4096, 61);
    struct ac_file *f = uopen(p, AC_FILE_RDWR);
    unsigned char b[512];
    memset(b, 0xEE, sizeof(b));
    struct iovec v = { b, sizeof(b) }, none = { b, 0 };

    struct ac_req q[5] = {
        rw(f, AC_REQ_WRITE, &none, 1, 100, AC_REQ_LINK),
        rw(f, AC_REQ_READ, &none, 1, 1u << 30, AC_REQ_LINK),
        rw(f, AC_REQ_READ, &v, 1, 0, AC_REQ_LINK),
        { .file = f, .op = 77, .result = INT64_MIN },
        rw(f, AC_REQ_WRITE, NULL, 0, 0, 0),
    };
    assert_int_equal(ac_submit(q, 5), -EINVAL);
    assert_int_equal(q[0].result, 0);
    assert_int_equal(q[1].result, 0);
    assert_int_equal(q[2].result, 512);
    assert_int_equal(q[3].result, -EINVAL);
    assert_int_equal(q[4].result, 0);
    unsigned char *want = pattern_buf(512, 61, 0);
    assert_memory_equal(b, want, 512);
    free(want);
    assert_int_equal(ac_submit(q, 0), 0);
    ac_file_close(f);
}

/* ---- O_DIRECT: the routes of the posix backend ------------------------------ */

static void test_direct_routes(void **state)
{
    (void)state;
    const char *p = make_file("direct", 0, 0);
    struct ac_file *f = NULL;
    int r = U->open(U, p, AC_FILE_RDWR | AC_FILE_DIRECT, &f);
    if (r == -EINVAL) {
        skip();     /* a file system without O_DIRECT */
        return;
    }
    assert_int_equal(r, 0);
    const size_t big = 2 * (1u << 20) + 3 * 4096;   /* more than one bounce buffer */
    size_t span = (1u << 20) + big;
    unsigned char *model = calloc(1, span);
    unsigned char *al = NULL, *raw = malloc(big + 1), *back = malloc(big + 1);
    assert_non_null(model);
    assert_non_null(raw);
    assert_non_null(back);
    assert_int_equal(posix_memalign((void **)&al, 4096, 8192), 0);
    tu_fill_pattern(al, 8192, 71, 0);
    unsigned char *una = raw + 1;                   /* unaligned memory */
    tu_fill_pattern(una, big, 72, 0);
    unsigned char *small = pattern_buf(333, 73, 0);
    unsigned char *un4k = pattern_buf(4096 + 1, 74, 0);

    struct iovec v0 = { al, 8192 }, v1 = { un4k + 1, 4096 }, v2 = { small, 333 };
    struct iovec v3 = { una, big }, v4 = { back + 1, big };
    memset(back, 0xEE, big + 1);
    struct ac_req q[6] = {
        rw(f, AC_REQ_WRITE, &v0, 1, 0, 0),                     /* direct */
        rw(f, AC_REQ_WRITE, &v1, 1, 8192, 0),                  /* bounced */
        rw(f, AC_REQ_WRITE, &v2, 1, 12288 + 100, 0),           /* buffered twin */
        rw(f, AC_REQ_WRITE, &v3, 1, 1u << 20, AC_REQ_LINK),    /* bounced, in pieces */
        rw(f, AC_REQ_READ, &v4, 1, 1u << 20, AC_REQ_LINK),
        flush_req(f, 0),
    };
    assert_int_equal(ac_submit(q, 6), 0);
    for (int i = 0; i < 6; i++)
        assert_int_equal(q[i].result, i == 4 ? (int64_t)big : 0);
    memcpy(model, al, 8192);
    memcpy(model + 8192, un4k + 1, 4096);
    memcpy(model + 12288 + 100, small, 333);
    memcpy(model + (1u << 20), una, big);
    assert_memory_equal(back + 1, una, big);
    unsigned char *d = disk(p, 0, span);
    assert_memory_equal(d, model, span);

    /* Reads of every route, into unaligned and aligned memory. */
    unsigned char *rd = malloc(span + 1);
    assert_non_null(rd);
    memset(rd, 0xEE, span + 1);
    struct iovec r0 = { rd + 1, span };
    assert_int_equal(f->ops->preadv(f, &r0, 1, 0) > 0, 1);
    assert_int_equal(ac_file_read_full(f, &r0, 1, 0, span), (int64_t)span);
    assert_memory_equal(rd + 1, model, span);
    assert_int_equal(ac_file_pread(f, al, 4096, 4096), 4096);
    assert_memory_equal(al, model + 4096, 4096);
    assert_int_equal(ac_file_pread(f, rd, 50, 12288 + 90), 50);
    assert_memory_equal(rd, model + 12288 + 90, 50);

    free(d);
    free(rd);
    free(model);
    free(raw);
    free(back);
    free(al);
    free(small);
    free(un4k);
    ac_file_close(f);
}

/* Direct writes and writes through the buffered twin of one O_DIRECT
 * file, from many threads over the same pages: every write and every
 * fdatasync succeeds (unserialised, the kernel fails the fsync with EIO
 * after a page cache invalidation failure), and afterwards each page holds
 * bytes that one of the writes put there. */
struct twin_arg {
    struct ac_file *f;
    int id;
    unsigned rounds;
    uint64_t seed;
    int failures;
};

enum { TW_PAGES = 32 };

static void *twin_main(void *arg)
{
    struct twin_arg *a = arg;
    unsigned char *buf = NULL;
    if (posix_memalign((void **)&buf, 4096, 8192) != 0)
        return NULL;
    /* Every byte a thread writes is its id + 1: any torn mix still reads
     * as values from 1 to 4. */
    memset(buf, a->id + 1, 8192);
    for (unsigned k = 0; k < a->rounds; k++) {
        struct iovec v;
        uint64_t off;
        if (a->id % 2 == 0) {           /* direct: whole aligned pages */
            off = tu_rand_below(&a->seed, TW_PAGES) * 4096;
            v = (struct iovec){ buf, 4096 };
        } else {                        /* through the twin: unaligned */
            off = tu_rand_below(&a->seed, TW_PAGES * 4096 - 1000);
            v = (struct iovec){ buf + 1, 1000 };
        }
        struct ac_req q[2] = { rw(a->f, AC_REQ_WRITE, &v, 1, off, 0),
                               rw(a->f, AC_REQ_WRITE, &v, 1, (off + 8192) % (TW_PAGES * 4096 - 4096), 0) };
        if (ac_submit(q, 2) != 0)
            a->failures++;
        if (k % 16 == 15 && a->f->ops->flush(a->f) != 0)
            a->failures++;
        /* Holes again, so that direct writes keep allocating blocks (their
         * completion then runs later, in a kernel worker). */
        if (a->id == 0 && k % 4 == 3 &&
            a->f->ops->punch_hole(a->f, tu_rand_below(&a->seed, TW_PAGES / 4) * 16384,
                                  16384) != 0)
            a->failures++;
    }
    free(buf);
    return NULL;
}

static void test_direct_and_twin_writes_race(void **state)
{
    (void)state;
    const char *p = make_file("twinrace", 0, 0);
    assert_int_equal(truncate(p, TW_PAGES * 4096), 0);     /* sparse */
    struct ac_file *f = NULL;
    int r = U->open(U, p, AC_FILE_RDWR | AC_FILE_DIRECT, &f);
    if (r == -EINVAL) {
        skip();
        return;
    }
    assert_int_equal(r, 0);
    uint64_t seed = tu_seed("test_direct_and_twin_writes_race");
    struct twin_arg a[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (struct twin_arg){ f, i, tu_scale(400), seed + (uint64_t)i * 7919 + 1, 0 };
        assert_int_equal(pthread_create(&th[i], NULL, twin_main, &a[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(a[i].failures, 0);
    }
    assert_int_equal(f->ops->flush(f), 0);
    unsigned char *d = disk(p, 0, TW_PAGES * 4096);
    for (size_t i = 0; i < TW_PAGES * 4096; i++)
        if (d[i] > 4)
            fail_msg("byte %zu is %u: no write put it there", i, d[i]);
    free(d);
    ac_file_close(f);
}

/* ---- threads ---------------------------------------------------------------- */

enum { T_THREADS = 8, T_BLK = 4096, T_BLOCKS = 16 };

struct t_arg {
    struct ac_file *f;
    int id;
    unsigned rounds;
    uint64_t seed;
    uint32_t last[T_BLOCKS];     /* the pattern seed each block holds */
    int failures;
};

/* Each thread owns T_BLOCKS blocks of the shared file; each round writes a
 * few of them and a linked flush, then reads them all back in one batch. */
static void *t_main(void *arg)
{
    struct t_arg *a = arg;
    unsigned char *w = malloc(4 * T_BLK), *r = malloc(T_BLOCKS * T_BLK);
    uint64_t base = (uint64_t)a->id * T_BLOCKS * T_BLK;
    if (w == NULL || r == NULL) {
        a->failures++;
        goto out;
    }
    for (unsigned k = 0; k < a->rounds; k++) {
        struct ac_req q[T_BLOCKS + 1];
        struct iovec v[T_BLOCKS];
        int n = 0;
        for (int j = 0; j < 4; j++) {
            int blk = (int)tu_rand_below(&a->seed, T_BLOCKS);
            uint32_t s = (uint32_t)tu_rand(&a->seed) | 1;
            tu_fill_pattern(w + j * T_BLK, T_BLK, s, 0);
            v[n] = (struct iovec){ w + j * T_BLK, T_BLK };
            q[n] = rw(a->f, AC_REQ_WRITE, &v[n], 1, base + (uint64_t)blk * T_BLK, AC_REQ_LINK);
            n++;
            a->last[blk] = s;
        }
        q[n++] = flush_req(a->f, 0);
        if (ac_submit(q, n) != 0)
            a->failures++;
        n = 0;
        memset(r, 0, T_BLOCKS * T_BLK);
        for (int b = 0; b < T_BLOCKS; b++) {
            v[b] = (struct iovec){ r + b * T_BLK, T_BLK };
            q[n++] = rw(a->f, AC_REQ_READ, &v[b], 1, base + (uint64_t)b * T_BLK, 0);
        }
        if (ac_submit(q, n) != 0)
            a->failures++;
        unsigned char want[T_BLK];
        for (int b = 0; b < T_BLOCKS; b++) {
            if (a->last[b] == 0)
                memset(want, 0, T_BLK);     /* never written */
            else
                tu_fill_pattern(want, T_BLK, a->last[b], 0);
            if (q[b].result != T_BLK || memcmp(r + b * T_BLK, want, T_BLK) != 0)
                a->failures++;
        }
    }
out:
    free(w);
    free(r);
    return NULL;
}

static void test_threads_share_a_file(void **state)
{
    (void)state;
    const char *p = make_file("threads", (size_t)T_THREADS * T_BLOCKS * T_BLK, 0);
    struct ac_file *f = uopen(p, AC_FILE_RDWR);
    struct t_arg a[T_THREADS];
    pthread_t th[T_THREADS];
    uint64_t seed = tu_seed("test_threads_share_a_file");

    memset(a, 0, sizeof(a));
    for (int i = 0; i < T_THREADS; i++) {
        a[i].f = f;
        a[i].id = i;
        a[i].rounds = tu_scale(60);
        a[i].seed = seed + (uint64_t)i * 0x9E3779B97F4A7C15u + 1;
        assert_int_equal(pthread_create(&th[i], NULL, t_main, &a[i]), 0);
    }
    for (int i = 0; i < T_THREADS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    for (int i = 0; i < T_THREADS; i++) {
        assert_int_equal(a[i].failures, 0);
        for (int b = 0; b < T_BLOCKS; b++) {
            uint64_t off = ((uint64_t)i * T_BLOCKS + (uint64_t)b) * T_BLK;
            if (a[i].last[b] == 0)
                assert_disk_zero(p, off, T_BLK);
            else
                assert_disk_pattern(p, off, T_BLK, a[i].last[b], 0);
        }
    }
    ac_file_close(f);
}

static void *one_read(void *arg)
{
    struct ac_file *f = arg;
    unsigned char b[64];
    int64_t *ok = malloc(sizeof(*ok));
    if (ok != NULL)
        *ok = ac_file_pread(f, b, sizeof(b), 0);
    return ok;
}

struct fd_probe {
    struct ac_file *f;
    int before, during;
};

static void *read_and_count(void *arg)
{
    struct fd_probe *fp = arg;
    unsigned char b[64];
    fp->before = count_fds();
    if (ac_file_pread(fp->f, b, sizeof(b), 0) == (int64_t)sizeof(b))
        fp->during = count_fds();
    return NULL;
}

/* A thread's ring is made at its first request and freed when it exits. */
static void test_rings_freed_at_thread_exit(void **state)
{
    (void)state;
    const char *p = make_file("rings", 4096, 81);
    struct ac_file *f = uopen(p, AC_FILE_RDONLY);
    unsigned char b[64];
    assert_int_equal(ac_file_pread(f, b, sizeof(b), 0), 64);    /* this thread's ring */
    int base = count_fds();

    struct fd_probe fp = { f, -1, -1 };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, read_and_count, &fp), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(fp.during, fp.before + 1);     /* one ring: one descriptor */
    assert_int_equal(count_fds(), base);

    for (int round = 0; round < 3; round++) {
        pthread_t ts[16];
        for (int i = 0; i < 16; i++)
            assert_int_equal(pthread_create(&ts[i], NULL, one_read, f), 0);
        for (int i = 0; i < 16; i++) {
            void *ret;
            assert_int_equal(pthread_join(ts[i], &ret), 0);
            assert_non_null(ret);
            assert_int_equal(*(int64_t *)ret, 64);
            free(ret);
        }
        assert_int_equal(count_fds(), base);
    }
    ac_file_close(f);
}

/* A forked child cannot use its parent's ring (the same kernel object): it
 * gets its own, and the parent's keeps working. */
static void test_fork_child_makes_its_own_ring(void **state)
{
    (void)state;
    const char *p = make_file("fork", 8192, 91);
    struct ac_file *f = uopen(p, AC_FILE_RDWR);
    unsigned char b[4096];
    assert_int_equal(ac_file_pread(f, b, sizeof(b), 0), 4096);

    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        alarm(20);      /* a child on its parent's ring may wait forever */
        unsigned char w[4096], r[4096];
        tu_fill_pattern(w, sizeof(w), 92, 0);
        struct iovec vw = { w, sizeof(w) }, vr = { r, sizeof(r) };
        struct ac_req q[3] = {
            rw(f, AC_REQ_WRITE, &vw, 1, 4096, AC_REQ_LINK),
            flush_req(f, AC_REQ_LINK),
            rw(f, AC_REQ_READ, &vr, 1, 4096, 0),
        };
        int ok = ac_submit(q, 3) == 0 && q[2].result == 4096 && memcmp(w, r, 4096) == 0;
        _exit(ok ? 0 : 1);
    }
    int status;
    assert_int_equal(ac_file_pread(f, b, sizeof(b), 0), 4096);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_disk_pattern(p, 4096, 4096, 92, 0);
    assert_int_equal(ac_file_pread(f, b, sizeof(b), 4096), 4096);
    unsigned char *want = pattern_buf(4096, 92, 0);
    assert_memory_equal(b, want, 4096);
    free(want);
    ac_file_close(f);
}

/* ---- the backend choice, through images ---------------------------------- */

/* What the test program's constructor made "auto" mean. */
static void restore_auto(void)
{
    const char *b = getenv("AC_TEST_BACKEND");
    if (b != NULL && strcmp(b, "auto") == 0)
        ac_backend_set_auto_override(-1);
    else if (b != NULL && strcmp(b, "io_uring") == 0)
        ac_backend_set_auto_override(AC_BACKEND_IO_URING);
    else
        ac_backend_set_auto_override(AC_BACKEND_POSIX);
}

static void test_select_backend(void **state)
{
    (void)state;
    const struct ac_backend_ops *ops = NULL;
    addcow_options *o = addcow_options_new();
    assert_non_null(o);
    assert_int_equal(o->backend, AC_BACKEND_AUTO);      /* the default */

    assert_int_equal(addcow_options_set(o, "backend", "io_uring"), 0);
    assert_int_equal(ac_select_backend(o, &ops), 0);
    assert_ptr_equal(ops, &ac_uring_backend);
    assert_int_equal(addcow_options_set(o, "backend", "posix"), 0);
    assert_int_equal(ac_select_backend(o, &ops), 0);
    assert_ptr_equal(ops, &ac_posix_backend);

    assert_int_equal(addcow_options_set(o, "backend", "auto"), 0);
    ac_backend_set_auto_override(-1);       /* the library's own choice: */
    assert_int_equal(ac_select_backend(o, &ops), 0);
    assert_ptr_equal(ops, &ac_posix_backend);   /* page cache: posix */
    assert_int_equal(addcow_options_set(o, "cache", "none"), 0);
    assert_int_equal(ac_select_backend(o, &ops), 0);
    assert_ptr_equal(ops, &ac_uring_backend);   /* O_DIRECT: io_uring, which works here */
    assert_int_equal(addcow_options_set(o, "cache", "writeback"), 0);
    ac_backend_set_auto_override(AC_BACKEND_POSIX);
    assert_int_equal(ac_select_backend(o, &ops), 0);
    assert_ptr_equal(ops, &ac_posix_backend);
    ac_backend_set_auto_override(AC_BACKEND_IO_URING);
    assert_int_equal(ac_select_backend(o, &ops), 0);
    assert_ptr_equal(ops, &ac_uring_backend);
    restore_auto();

    /* A test's own table wins over the option. */
    ac_options_set_backend_ops(o, &ac_posix_backend);
    assert_int_equal(addcow_options_set(o, "backend", "io_uring"), 0);
    assert_int_equal(ac_select_backend(o, &ops), 0);
    assert_ptr_equal(ops, &ac_posix_backend);
    addcow_options_free(o);
}

/* An image written through io_uring (with a backing file, and with
 * cache=none) reads back the same through posix, and the other way round. */
static void test_image_both_backends(void **state)
{
    (void)state;
    const char *caches[2] = { "writeback", "none" };
    for (int c = 0; c < 2; c++) {
        const char *dir = tu_subdir(tu_str("image-%s", caches[c]));
        const char *base = tu_str("%s/base.raw", dir), *top = tu_str("%s/top.add-cow", dir);
        tu_make_raw(base, 1u << 20, 101);
        addcow_options *ou = tu_options1("backend", "io_uring");
        addcow_options *op = tu_options1("backend", "posix");
        assert_int_equal(addcow_options_set(ou, "cache", caches[c]), 0);
        assert_int_equal(addcow_options_set(op, "cache", caches[c]), 0);
        int r = addcow_create(top, 0, "base.raw", "top.img", ou);
        if (r != 0)
            fail_msg("addcow_create: %d: %s", r, addcow_last_error());

        unsigned char *model = pattern_buf(1u << 20, 101, 0);
        unsigned char *w = pattern_buf(70000, 102, 0), *got = malloc(1u << 20);
        assert_non_null(got);
        addcow_image *img = tu_open_ok(top, ADDCOW_OPEN_RDWR, ou);
        assert_int_equal(addcow_pwrite(img, w, 70000, 1000), 70000);
        memcpy(model + 1000, w, 70000);
        assert_int_equal(addcow_pwrite(img, w, 4096, 524288), 4096);
        memcpy(model + 524288, w, 4096);
        assert_int_equal(addcow_flush(img), 0);
        assert_int_equal(addcow_pread(img, got, 1u << 20, 0), 1 << 20);
        assert_memory_equal(got, model, 1u << 20);
        assert_int_equal(addcow_close(img), 0);

        img = tu_open_ok(top, ADDCOW_OPEN_RDWR, op);
        memset(got, 0xEE, 1u << 20);
        assert_int_equal(addcow_pread(img, got, 1u << 20, 0), 1 << 20);
        assert_memory_equal(got, model, 1u << 20);
        assert_int_equal(addcow_pwrite(img, w + 5, 3000, 900000), 3000);
        memcpy(model + 900000, w + 5, 3000);
        assert_int_equal(addcow_close(img), 0);

        img = tu_open_ok(top, ADDCOW_OPEN_RDONLY, ou);
        memset(got, 0xEE, 1u << 20);
        assert_int_equal(addcow_pread(img, got, 1u << 20, 0), 1 << 20);
        assert_memory_equal(got, model, 1u << 20);
        assert_int_equal(addcow_close(img), 0);

        free(model);
        free(w);
        free(got);
        addcow_options_free(ou);
        addcow_options_free(op);
    }
}

struct img_arg {
    addcow_image *img;
    int id;
    unsigned rounds;
    int failures;
};

static void *img_thread(void *arg)
{
    struct img_arg *a = arg;
    enum { SPAN = 64 * 1024 };
    unsigned char *w = malloc(SPAN), *r = malloc(SPAN);
    if (w == NULL || r == NULL) {
        a->failures++;
    } else {
        for (unsigned k = 0; k < a->rounds; k++) {
            uint64_t off = (uint64_t)a->id * SPAN;
            tu_fill_pattern(w, SPAN, (uint32_t)(a->id * 1000 + (int)k), 0);
            if (addcow_pwrite(a->img, w, SPAN, off) != SPAN ||
                addcow_pread(a->img, r, SPAN, off) != SPAN || memcmp(w, r, SPAN) != 0)
                a->failures++;
            if (k % 8 == 7 && addcow_flush(a->img) != 0)
                a->failures++;
        }
    }
    free(w);
    free(r);
    return NULL;
}

/* One image handle, many threads, each with its own ring. */
static void test_image_many_threads(void **state)
{
    (void)state;
    enum { THREADS = 6 };
    const char *dir = tu_subdir("image-threads");
    const char *top = tu_str("%s/t.add-cow", dir);
    addcow_options *ou = tu_options1("backend", "io_uring");
    assert_int_equal(addcow_create(top, THREADS * 64 * 1024, NULL, "t.img", ou), 0);
    addcow_image *img = tu_open_ok(top, ADDCOW_OPEN_RDWR, ou);
    struct img_arg a[THREADS];
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) {
        a[i] = (struct img_arg){ img, i, tu_scale(40), 0 };
        assert_int_equal(pthread_create(&th[i], NULL, img_thread, &a[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(a[i].failures, 0);
    }
    assert_int_equal(addcow_close(img), 0);
    img = tu_open_ok(top, ADDCOW_OPEN_RDONLY, ou);
    unsigned char *got = malloc(64 * 1024), *want = malloc(64 * 1024);
    assert_non_null(got);
    assert_non_null(want);
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(addcow_pread(img, got, 64 * 1024, (uint64_t)i * 64 * 1024),
                         64 * 1024);
        tu_fill_pattern(want, 64 * 1024, (uint32_t)(i * 1000 + (int)a[i].rounds - 1), 0);
        assert_memory_equal(got, want, 64 * 1024);
    }
    free(got);
    free(want);
    assert_int_equal(addcow_close(img), 0);
    addcow_options_free(ou);
}

/* ---- the kernel says no ----------------------------------------------------- */

/* Runs in a child re-executed under a seccomp filter that fails
 * io_uring_setup with errno `err` (see refused_child_run). */
static int refused_child(const char *dir)
{
    if (ac_uring_probe() != -ENOSYS)
        return 10;
    addcow_options *o = addcow_options_new();
    if (o == NULL || addcow_options_set(o, "backend", "io_uring") != 0)
        return 11;
    const char *top = tu_str("%s/x.add-cow", dir);
    addcow_image *img = NULL;
    if (addcow_open(top, ADDCOW_OPEN_RDONLY, o, &img) != -ENOSYS || img != NULL)
        return 12;
    const char *msg = addcow_last_error();
    if (strncmp(msg, "addcow_open", 11) != 0 || strstr(msg, "io_uring") == NULL ||
        strstr(msg, "refuses") == NULL) {
        fprintf(stderr, "message: %s\n", msg);
        return 13;
    }
    const char *made = tu_str("%s/new.add-cow", dir);
    if (addcow_create(made, 1u << 20, NULL, "new.img", o) != -ENOSYS)
        return 14;
    if (access(made, F_OK) == 0 || access(tu_str("%s/new.img", dir), F_OK) == 0)
        return 15;
    /* auto falls back to posix. */
    addcow_options *d = addcow_options_new();
    const struct ac_backend_ops *ops = NULL;
    if (d == NULL || ac_select_backend(d, &ops) != 0 || ops != &ac_posix_backend)
        return 16;
    /* Even where auto would take io_uring (O_DIRECT). */
    if (addcow_options_set(d, "cache", "none") != 0 || ac_select_backend(d, &ops) != 0 ||
        ops != &ac_posix_backend || addcow_options_set(d, "cache", "writeback") != 0)
        return 19;
    if (addcow_open(top, ADDCOW_OPEN_RDWR, d, &img) != 0)
        return 17;
    unsigned char b[512];
    if (addcow_pread(img, b, sizeof(b), 0) != 512 || addcow_close(img) != 0)
        return 18;
    addcow_options_free(o);
    addcow_options_free(d);
    tu_free_strings(NULL);
    return 0;
}

#if defined(__linux__) && (defined(__x86_64__) || defined(__aarch64__))
#if defined(__x86_64__)
#define THIS_AUDIT_ARCH AUDIT_ARCH_X86_64
#else
#define THIS_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif
/* In a child: a seccomp filter that fails io_uring_setup with err, then
 * this program again, in refused_child mode.  77 if seccomp is not there. */
static void refused_child_run(const char *self, const char *dir, int err)
{
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, THIS_AUDIT_ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((unsigned)err & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { (unsigned short)(sizeof(filter) / sizeof(filter[0])), filter };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
        _exit(77);
    setenv("AC_TEST_BACKEND", "auto", 1);   /* no override: the library's choice */
    execl(self, self, "--refused-child", dir, (char *)NULL);
    _exit(98);
}
#define HAVE_REFUSED_CHILD 1
#endif

static void test_enosys_when_kernel_refuses(void **state)
{
    (void)state;
#ifdef HAVE_REFUSED_CHILD
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    assert_true(n > 0);
    self[n] = '\0';
    const char *dir = tu_subdir("refused");
    const char *top = tu_str("%s/x.add-cow", dir);
    addcow_options *op = tu_options1("backend", "posix");
    assert_int_equal(addcow_create(top, 1u << 20, NULL, "x.img", op), 0);
    addcow_options_free(op);

    static const int errs[] = { ENOSYS, EPERM };
    for (size_t i = 0; i < sizeof(errs) / sizeof(errs[0]); i++) {
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
            refused_child_run(self, dir, errs[i]);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        if (WEXITSTATUS(status) == 77) {
            skip();     /* no seccomp here: cannot make the kernel refuse */
            return;
        }
        if (WEXITSTATUS(status) != 0)
            fail_msg("with io_uring_setup failing with %s, step %d of the child failed",
                     strerror(errs[i]), WEXITSTATUS(status));
    }
#else
    skip();
#endif
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--refused-child") == 0)
        return refused_child(argv[2]);

    int r = ac_uring_probe();
    if (r < 0) {
        printf("SKIP: io_uring cannot be used here: %s\n", strerror(-r));
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single_ops),
        cmocka_unit_test(test_failed_link_cancels_rest),
        cmocka_unit_test(test_flush_in_chain),
        cmocka_unit_test(test_short_reads_at_eof),
        cmocka_unit_test(test_continued_requests),
        cmocka_unit_test(test_batch_bigger_than_ring),
        cmocka_unit_test(test_empty_and_invalid_requests),
        cmocka_unit_test(test_direct_routes),
        cmocka_unit_test(test_direct_and_twin_writes_race),
        cmocka_unit_test(test_threads_share_a_file),
        cmocka_unit_test(test_rings_freed_at_thread_exit),
        cmocka_unit_test(test_fork_child_makes_its_own_ring),
        cmocka_unit_test(test_select_backend),
        cmocka_unit_test(test_image_both_backends),
        cmocka_unit_test(test_image_many_threads),
        cmocka_unit_test(test_enosys_when_kernel_refuses),
    };
    return cmocka_run_group_tests(tests, NULL, tu_free_strings);
}

#else /* !HAVE_LIBURING */

int main(void)
{
    printf("SKIP: the library is built without liburing (configure --with-liburing)\n");
    return 77;
}

#endif
