/*
 * test-threads.c: one handle used by many threads at once (API.md: "A
 * handle may be used by several threads at once for reads, writes,
 * write_zeroes, flush and block_status"), on real files in the scratch
 * folder through the posix backend.
 *
 * Where a test needs to steer the I/O (slow it down, or hold one request
 * inside the backend), it opens the image through `hook_backend`, defined
 * below: a thin wrapper that passes every call to ac_posix_backend and adds
 * delays and a one-shot "trap" that parks a chosen request until released.
 *
 * Every expectation comes from the contract or from a model kept by the
 * test, never from what the library returned earlier.  Randomized tests
 * print their seed (replay with AC_SEED=<seed>; the thread interleaving is
 * of course not replayed); AC_TEST_SCALE scales the iteration counts.
 *
 * Nothing may hang: waits that a correct library always satisfies at once
 * have timeouts, and a watchdog (alarm) ends the program with a message if
 * a test runs far longer than it should (a deadlock).  Worker threads never
 * call cmocka asserts: they collect failures in an errbox that the main
 * thread checks after joining them.
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
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "addcow.h"
#include "backend.h"
#include "options.h"
#include "testutil.h"

#define SECTOR 512u
#ifndef WATCHDOG_SECONDS
#define WATCHDOG_SECONDS 240           /* generous: valgrind runs threads one at a time */
#endif
#define MUST_FINISH_MS 5000            /* a call that no lock may hold up gets this long */
#define TRAP_MAX_MS 60000              /* a parked request gives up after this */

#define STR_(x) #x
#define STR(x) STR_(x)

static uint64_t max_u64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

/* ---- watchdog ------------------------------------------------------------ */

static const char *volatile wd_name = "";

static void wd_fired(int sig)
{
    static const char pre[] = "test-threads: watchdog: test '";
    static const char post[] = "' still running after " STR(WATCHDOG_SECONDS)
                               " s: a deadlock, or a thread stuck in the library\n";
    const char *n = wd_name;
    (void)sig;
    if (write(2, pre, sizeof(pre) - 1) < 0 || write(2, n, strlen(n)) < 0 ||
        write(2, post, sizeof(post) - 1) < 0) {
        /* nothing more to do */
    }
    _exit(1);
}

static void wd_start(const char *name)
{
    wd_name = name;
    alarm(WATCHDOG_SECONDS);
}

static void wd_stop(void)
{
    alarm(0);
}

static struct timespec deadline_ms(unsigned ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* ---- failures seen by worker threads --------------------------------------- */

struct errbox {
    pthread_mutex_t mu;
    unsigned count;
    char first[768];
};

static void eb_init(struct errbox *e)
{
    pthread_mutex_init(&e->mu, NULL);
    e->count = 0;
    e->first[0] = '\0';
}

static void eb_add(struct errbox *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void eb_add(struct errbox *e, const char *fmt, ...)
{
    pthread_mutex_lock(&e->mu);
    if (e->count++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->first, sizeof(e->first), fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&e->mu);
}

static bool eb_any(struct errbox *e)
{
    pthread_mutex_lock(&e->mu);
    bool any = e->count != 0;
    pthread_mutex_unlock(&e->mu);
    return any;
}

/* Main thread only, after the workers are joined. */
static void eb_check(struct errbox *e, const char *what)
{
    if (e->count != 0)
        fail_msg("%s: %u failure(s); the first: %s", what, e->count, e->first);
}

/* ---- the hook backend ------------------------------------------------------ */

enum role { ROLE_OTHER = 0, ROLE_IMAGE, ROLE_BACKING };

struct hook_file {
    struct ac_file base;
    struct ac_file *inner;          /* a posix file */
    enum role role;                 /* told by the file name: *.raw, *.back */
};

enum { TRAP_IDLE = 0, TRAP_HELD, TRAP_LEFT };

/* Set by the main thread while no handle on the hook backend is open, or
 * (the trap) under mu. */
static struct hooks {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned image_write_delay_us;  /* before every pwritev of the image file */
    unsigned backing_read_delay_us; /* before every preadv of the backing file */
    /* The trap: the first request of this kind, on this file, that overlaps
     * [trap_off, trap_off + trap_len) waits in the backend (before doing its
     * I/O) until trap_release is set. */
    atomic_int trap_armed;
    int trap_write;
    enum role trap_role;
    uint64_t trap_off, trap_len;
    int trap_state;
    int trap_release;
    int trap_expired;
    /* The count: image file writes and hole punches that touch
     * [count_off, count_off + count_len). */
    uint64_t count_off, count_len;
    atomic_uint count_hits;
} hk = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

static void hook_reset(void)
{
    pthread_mutex_lock(&hk.mu);
    hk.image_write_delay_us = 0;
    hk.backing_read_delay_us = 0;
    atomic_store(&hk.trap_armed, 0);
    hk.trap_state = TRAP_IDLE;
    hk.trap_release = 0;
    hk.trap_expired = 0;
    hk.count_off = hk.count_len = 0;
    atomic_store(&hk.count_hits, 0);
    pthread_mutex_unlock(&hk.mu);
}

static void hook_count(struct hook_file *h, uint64_t off, uint64_t len)
{
    if (h->role == ROLE_IMAGE && off < hk.count_off + hk.count_len && hk.count_off < off + len)
        atomic_fetch_add(&hk.count_hits, 1);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static struct hook_file *hf(struct ac_file *f)
{
    return (struct hook_file *)f;
}

static uint64_t iov_bytes(const struct iovec *iov, int iovcnt)
{
    uint64_t n = 0;
    for (int i = 0; i < iovcnt; i++)
        n += iov[i].iov_len;
    return n;
}

static void hook_trap(struct hook_file *h, int is_write, const struct iovec *iov, int iovcnt,
                      uint64_t off)
{
    if (!atomic_load(&hk.trap_armed))
        return;
    uint64_t len = iov_bytes(iov, iovcnt);
    pthread_mutex_lock(&hk.mu);
    if (atomic_load(&hk.trap_armed) && hk.trap_write == is_write && hk.trap_role == h->role &&
        off < hk.trap_off + hk.trap_len && hk.trap_off < off + len) {
        atomic_store(&hk.trap_armed, 0);
        hk.trap_state = TRAP_HELD;
        pthread_cond_broadcast(&hk.cv);
        struct timespec dl = deadline_ms(TRAP_MAX_MS);
        while (!hk.trap_release) {
            if (pthread_cond_timedwait(&hk.cv, &hk.mu, &dl) == ETIMEDOUT) {
                hk.trap_expired = 1;
                break;
            }
        }
        hk.trap_state = TRAP_LEFT;
        pthread_cond_broadcast(&hk.cv);
    }
    pthread_mutex_unlock(&hk.mu);
}

static int hook_open(const struct ac_backend_ops *ops, const char *path, unsigned flags,
                     struct ac_file **out)
{
    struct hook_file *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return -ENOMEM;
    int r = ac_posix_backend.open(&ac_posix_backend, path, flags, &h->inner);
    if (r < 0) {
        free(h);
        return r;
    }
    h->base.ops = ops;
    h->role = ends_with(path, ".raw") ? ROLE_IMAGE
            : ends_with(path, ".back") ? ROLE_BACKING : ROLE_OTHER;
    *out = &h->base;
    return 0;
}

static void hook_close(struct ac_file *f)
{
    ac_file_close(hf(f)->inner);
    free(f);
}

static ssize_t hook_preadv(struct ac_file *f, const struct iovec *iov, int iovcnt,
                           uint64_t offset)
{
    struct hook_file *h = hf(f);
    if (h->role == ROLE_BACKING && hk.backing_read_delay_us != 0)
        usleep(hk.backing_read_delay_us);
    hook_trap(h, 0, iov, iovcnt, offset);
    return h->inner->ops->preadv(h->inner, iov, iovcnt, offset);
}

static ssize_t hook_pwritev(struct ac_file *f, const struct iovec *iov, int iovcnt,
                            uint64_t offset)
{
    struct hook_file *h = hf(f);
    if (h->role == ROLE_IMAGE && hk.image_write_delay_us != 0)
        usleep(hk.image_write_delay_us);
    hook_trap(h, 1, iov, iovcnt, offset);
    hook_count(h, offset, iov_bytes(iov, iovcnt));
    return h->inner->ops->pwritev(h->inner, iov, iovcnt, offset);
}

static int hook_flush(struct ac_file *f)
{
    return hf(f)->inner->ops->flush(hf(f)->inner);
}

static int hook_truncate(struct ac_file *f, uint64_t size)
{
    return hf(f)->inner->ops->truncate(hf(f)->inner, size);
}

static int64_t hook_size(struct ac_file *f)
{
    return hf(f)->inner->ops->size(hf(f)->inner);
}

static int hook_punch_hole(struct ac_file *f, uint64_t offset, uint64_t length)
{
    hook_count(hf(f), offset, length);
    return hf(f)->inner->ops->punch_hole(hf(f)->inner, offset, length);
}

static int hook_lock(struct ac_file *f, int mode)
{
    struct ac_file *in = hf(f)->inner;
    return in->ops->lock != NULL ? in->ops->lock(in, mode) : 0;
}

static int hook_identity(struct ac_file *f, uint64_t id[2])
{
    return hf(f)->inner->ops->identity(hf(f)->inner, id);
}

static int hook_rename_noreplace(const struct ac_backend_ops *ops, const char *from,
                                 const char *to)
{
    (void)ops;
    return ac_posix_backend.rename_noreplace(&ac_posix_backend, from, to);
}

static int hook_unlink(const struct ac_backend_ops *ops, const char *path)
{
    (void)ops;
    return ac_posix_backend.unlink(&ac_posix_backend, path);
}

static const struct ac_backend_ops hook_backend = {
    .version = AC_BACKEND_OPS_VERSION,
    .name = "test-hooks",
    .open = hook_open,
    .close = hook_close,
    .preadv = hook_preadv,
    .pwritev = hook_pwritev,
    .flush = hook_flush,
    .truncate = hook_truncate,
    .size = hook_size,
    .punch_hole = hook_punch_hole,
    .lock = hook_lock,
    .identity = hook_identity,
    .rename_noreplace = hook_rename_noreplace,
    .unlink = hook_unlink,
};

static addcow_options *hook_options(void)
{
    addcow_options *o = addcow_options_new();
    assert_non_null(o);
    ac_options_set_backend_ops(o, &hook_backend);
    return o;
}

/* ---- files and helpers ------------------------------------------------------ */

/* An add-cow image TAG.add-cow over TAG.raw, with the raw backing file
 * TAG.back holding a pattern (both paths stored relative). */
struct fx {
    char *acow, *raw, *back;
    uint64_t size, bsize;
    unsigned char *init;        /* size bytes: what the disk reads as after create */
};

static void fx_make(struct fx *f, const char *tag, uint64_t size, uint64_t bsize, uint32_t seed)
{
    char name[128], rawname[128], backname[128];

    snprintf(name, sizeof(name), "%s.add-cow", tag);
    snprintf(rawname, sizeof(rawname), "%s.raw", tag);
    snprintf(backname, sizeof(backname), "%s.back", tag);
    f->acow = tu_path(name);
    f->raw = tu_path(rawname);
    f->back = tu_path(backname);
    f->size = size;
    f->bsize = bsize;
    /* Left over by an earlier failed run of this test in this process. */
    unlink(f->acow);
    unlink(f->raw);
    unlink(f->back);

    unsigned char *b = malloc(bsize ? bsize : 1);
    f->init = calloc(size, 1);
    assert_non_null(b);
    assert_non_null(f->init);
    tu_fill_pattern(b, bsize, seed, 0);
    assert_int_equal(tu_write_file(f->back, b, bsize), 0);
    memcpy(f->init, b, tu_min_u64(bsize, size));
    free(b);
    int r = addcow_create(f->acow, size, backname, rawname, NULL);
    if (r != 0)
        fail_msg("addcow_create(%s): %d: %s", f->acow, r, addcow_last_error());
}

static void fx_free(struct fx *f)
{
    unlink(f->acow);
    unlink(f->raw);
    unlink(f->back);
    free(f->acow);
    free(f->raw);
    free(f->back);
    free(f->init);
}

/* cache=none needs O_DIRECT in the scratch folder's file system. */
static void skip_without_direct_io(void)
{
    char *p = tu_path("direct-probe");
    int fd = open(p, O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0644);
    int e = errno;
    if (fd >= 0)
        close(fd);
    unlink(p);
    free(p);
    if (fd < 0) {
        printf("# O_DIRECT does not work in %s (%s): skipped\n", tu_scratch(), strerror(e));
        skip();
    }
}

static void fill_random(unsigned char *p, size_t n, uint64_t *rng)
{
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (i % 8 == 0)
            x = tu_rand(rng);
        p[i] = (unsigned char)(x >> (8 * (i % 8)));
    }
}

/* Describes buf[0, len) as 1 to `max` iovecs of random non-zero lengths. */
static int split_iov(struct iovec *v, int max, void *buf, size_t len, uint64_t *rng)
{
    int want = 1 + (int)tu_rand_below(rng, (uint64_t)max);
    size_t pos = 0;
    int k = 0;
    while (k < want - 1 && len - pos > 1) {
        size_t piece = 1 + (size_t)tu_rand_below(rng, len - pos - 1);
        v[k].iov_base = (unsigned char *)buf + pos;
        v[k].iov_len = piece;
        pos += piece;
        k++;
    }
    v[k].iov_base = (unsigned char *)buf + pos;
    v[k].iov_len = len - pos;
    return k + 1;
}

/* Reads the whole disk and compares it with model (main thread). */
static void check_disk(addcow_image *img, const unsigned char *model, uint64_t size,
                       const char *when)
{
    unsigned char *buf = malloc(size);
    assert_non_null(buf);
    int64_t n = addcow_pread(img, buf, size, 0);
    uint64_t bad = UINT64_MAX;
    for (uint64_t i = 0; n == (int64_t)size && i < size; i++) {
        if (buf[i] != model[i]) {
            bad = i;
            break;
        }
    }
    unsigned char got = bad != UINT64_MAX ? buf[bad] : 0;
    free(buf);
    if (n != (int64_t)size)
        fail_msg("%s: reading the whole disk returned %" PRId64 ": %s", when, n,
                 addcow_last_error());
    if (bad != UINT64_MAX)
        fail_msg("%s: byte %" PRIu64 " (sector %" PRIu64 ") reads 0x%02x, expected 0x%02x",
                 when, bad, bad / SECTOR, got, model[bad]);
}

/* Reopens acow read-only: the disk must read as model, and (alloc >= 0) have
 * alloc bytes allocated (main thread). */
static void check_reopened(const char *acow, const unsigned char *model, uint64_t size,
                           int64_t alloc)
{
    addcow_image *img = tu_open_ok(acow, ADDCOW_OPEN_RDONLY, NULL);
    check_disk(img, model, size, "after close and reopen");
    if (alloc >= 0)
        assert_int_equal(addcow_get_allocated_bytes(img), alloc);
    assert_int_equal(addcow_close(img), 0);
}

/* Walks the whole disk with addcow_block_status and checks what the contract
 * says of every run.  Fills alloc (one byte per sector; may be NULL) and
 * returns the allocated bytes, or -1 with the reason in why.  Thread-safe. */
static int64_t walk_disk(addcow_image *img, uint64_t size, uint64_t bsize, unsigned char *alloc,
                         char *why, size_t wl)
{
    uint64_t off = 0, total = 0;
    if (alloc != NULL)
        memset(alloc, 0, size / SECTOR);
    while (off < size) {
        uint64_t run = 0;
        int st = addcow_block_status(img, off, size - off, &run);
        if (st < 0) {
            snprintf(why, wl, "block_status at %" PRIu64 " failed: %d", off, st);
            return -1;
        }
        if (st != 0 && st != ADDCOW_STATUS_ALLOCATED && st != ADDCOW_STATUS_ZERO) {
            snprintf(why, wl, "block_status at %" PRIu64 ": bad flags 0x%x", off, (unsigned)st);
            return -1;
        }
        if (run == 0 || run > size - off) {
            snprintf(why, wl, "block_status at %" PRIu64 ": run %" PRIu64 " (disk %" PRIu64 ")",
                     off, run, size);
            return -1;
        }
        if (st == ADDCOW_STATUS_ALLOCATED) {
            /* A walk is not atomic: the previous run may have ended at an
             * odd backing end, inside a sector that a writer allocated
             * since; then this run starts there.  Anywhere else an
             * allocated run is whole sectors. */
            bool at_backing_end = off == bsize && off % SECTOR != 0;
            if ((off % SECTOR != 0 && !at_backing_end) || (off + run) % SECTOR != 0) {
                snprintf(why, wl, "allocated run [%" PRIu64 ", +%" PRIu64 ") not whole sectors",
                         off, run);
                return -1;
            }
            uint64_t s0 = off / SECTOR, s1 = (off + run) / SECTOR;
            if (alloc != NULL)
                memset(alloc + s0, 1, s1 - s0);
            total += (s1 - s0) * SECTOR;
        } else if (st == ADDCOW_STATUS_ZERO && off < bsize) {
            snprintf(why, wl, "ZERO run at %" PRIu64 ", below the backing end %" PRIu64, off,
                     bsize);
            return -1;
        } else if (st == 0 && off + run > bsize) {
            snprintf(why, wl, "backing run [%" PRIu64 ", +%" PRIu64 ") past the backing end %"
                     PRIu64, off, run, bsize);
            return -1;
        }
        off += run;
    }
    return (int64_t)total;
}

/* The on-disk bitmap of an add-cow file, one byte per sector.  0, or -1 with
 * the reason in why.  Thread-safe. */
static int read_disk_bitmap(const char *acow, uint64_t sectors, unsigned char *bits, char *why,
                            size_t wl)
{
    size_t len = 0;
    uint64_t nbytes = (sectors + 7) / 8;
    unsigned char *file = tu_read_file(acow, &len);
    if (file == NULL || len < TU_HDR_SIZE + nbytes) {
        snprintf(why, wl, "add-cow file %s: %zu bytes, want at least %" PRIu64, acow, len,
                 TU_HDR_SIZE + nbytes);
        free(file);
        return -1;
    }
    const unsigned char *bm = file + TU_HDR_SIZE;
    for (uint64_t s = 0; s < sectors; s++)
        bits[s] = (bm[s / 8] >> (s % 8)) & 1;
    for (uint64_t s = sectors; s < nbytes * 8; s++) {
        if ((bm[s / 8] >> (s % 8)) & 1) {
            snprintf(why, wl, "on-disk bit %" PRIu64 " past the last sector is set", s);
            free(file);
            return -1;
        }
    }
    free(file);
    return 0;
}

/* Compares two per-sector sets (main thread). */
static void check_sector_set(const unsigned char *got, const unsigned char *want,
                             uint64_t sectors, const char *what)
{
    for (uint64_t s = 0; s < sectors; s++) {
        if (!got[s] != !want[s])
            fail_msg("%s: sector %" PRIu64 " is %s, expected %s", what, s,
                     got[s] ? "set" : "clear", want[s] ? "set" : "clear");
    }
}

/* The allocation that block_status reports (walk_disk into got, a byte per
 * sector) must be exactly the sectors in want (main thread). */
static void check_walk(addcow_image *img, uint64_t size, uint64_t bsize, unsigned char *got,
                       const unsigned char *want, const char *what)
{
    char why[512];
    if (walk_disk(img, size, bsize, got, why, sizeof(why)) < 0)
        fail_msg("%s: walk: %s", what, why);
    check_sector_set(got, want, size / SECTOR, what);
}

/* The on-disk bitmap of acow (read into got) must be exactly the sectors in
 * want (main thread). */
static void check_disk_bitmap(const char *acow, uint64_t sectors, unsigned char *got,
                              const unsigned char *want, const char *what)
{
    char why[512];
    if (read_disk_bitmap(acow, sectors, got, why, sizeof(why)) != 0)
        fail_msg("%s", why);
    check_sector_set(got, want, sectors, what);
}

static uint64_t count_set(const unsigned char *set, uint64_t n)
{
    uint64_t c = 0;
    for (uint64_t i = 0; i < n; i++)
        c += set[i] != 0;
    return c;
}

static void start_thread(pthread_t *t, void *(*fn)(void *), void *arg)
{
    assert_int_equal(pthread_create(t, NULL, fn, arg), 0);
}

/* ==== 1. the copy-on-write race ============================================== *
 *
 * Each round picks a sector that is not allocated yet; N threads, released
 * together by a barrier, each write a different byte range of it (so each
 * write copies the rest of the sector from the backing file first).  Then
 * the sector must read as one of the serial orders of those writes:
 *  - RACE_PARTIAL: only partial writes: the backing data with every
 *    thread's bytes in place (no lost update);
 *  - RACE_WHOLE / RACE_ZEROES: thread 0 writes the whole sector (data, or
 *    write_zeroes with or without MAY_UNMAP) while the others write partial
 *    ranges: the set of serial outcomes is "thread 0's sector with the
 *    ranges of any subset of the others on top" (those that came after it);
 *  - RACE_UNLOCKED_RMW: the self-check.  Each thread does what a library
 *    without the per-sector lock would do inside its copy-on-write: read
 *    the whole sector, patch its range, write the whole sector back.  The
 *    checker must find lost updates there, which shows that it can fail.
 *
 * How many rounds catch a broken lock: measured on a copy of the library
 * with the per-sector lock removed from the allocating write (or taken only
 * after the copy-on-write read), the plain partial-write run found the first
 * lost update after 12 to 1032 rounds (2 cores), so its 1500 rounds per
 * thread count (10500 rounds, about 1 s) plus the 5600 rounds of the
 * whole/zeroes variants miss it with negligible probability; the delayed
 * variant (the hook backend sleeps 300 us in every backing read and image
 * write) found it in its first round every time, as the self-check below
 * does with unlocked read-modify-writes (20 lost updates in 20 rounds).
 */

#define RACE_MAX 8

enum race_kind { RACE_PARTIAL, RACE_WHOLE, RACE_ZEROES, RACE_UNLOCKED_RMW };

static const char *const race_kind_name[] = {
    "partial writes", "one whole-sector write and partial writes",
    "one whole-sector write_zeroes and partial writes", "unlocked read-modify-write",
};

struct race {
    addcow_image *img;
    pthread_barrier_t start, done;
    enum race_kind kind;
    bool stop;
    uint64_t sector;
    unsigned zero_flags;
    unsigned off[RACE_MAX], len[RACE_MAX];     /* byte range in the sector */
    unsigned char data[RACE_MAX][SECTOR];      /* at the sector's positions */
    int64_t ret[RACE_MAX];
};

struct race_arg {
    struct race *r;
    unsigned id;
};

static bool race_has_whole(enum race_kind k)
{
    return k == RACE_WHOLE || k == RACE_ZEROES;
}

static void *race_worker(void *arg)
{
    struct race_arg *a = arg;
    struct race *r = a->r;
    unsigned i = a->id;

    for (;;) {
        pthread_barrier_wait(&r->start);
        if (r->stop)
            break;
        uint64_t base = r->sector * SECTOR;
        if (i == 0 && r->kind == RACE_ZEROES) {
            r->ret[i] = addcow_write_zeroes(r->img, base, SECTOR, r->zero_flags);
        } else if (i == 0 && r->kind == RACE_WHOLE) {
            r->ret[i] = addcow_pwrite(r->img, r->data[i], SECTOR, base);
        } else if (r->kind == RACE_UNLOCKED_RMW) {
            unsigned char s[SECTOR];
            int64_t g = addcow_pread(r->img, s, SECTOR, base);
            if (g == SECTOR) {
                memcpy(s + r->off[i], r->data[i] + r->off[i], r->len[i]);
                g = addcow_pwrite(r->img, s, SECTOR, base);
            }
            r->ret[i] = g == SECTOR ? (int64_t)r->len[i] : g < 0 ? g : -EIO;
        } else {
            r->ret[i] = addcow_pwrite(r->img, r->data[i] + r->off[i], r->len[i],
                                      base + r->off[i]);
        }
        pthread_barrier_wait(&r->done);
    }
    return NULL;
}

/* Appends to a NUL-terminated message, never past wl bytes. */
static void appendf(char *buf, size_t wl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void appendf(char *buf, size_t wl, const char *fmt, ...)
{
    size_t used = strlen(buf);
    if (used + 1 >= wl)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + used, wl - used, fmt, ap);
    va_end(ap);
}

/* Says which serial outcome `got` is not, for the failure message. */
static void race_explain(const struct race *r, unsigned n, const unsigned char *base,
                         const unsigned char *got, char *why, size_t wl)
{
    bool whole = race_has_whole(r->kind);
    const unsigned char *under = whole ? r->data[0] : base;

    snprintf(why, wl, "sector %" PRIu64 ", %u threads, %s: not a serial outcome:", r->sector, n,
             race_kind_name[r->kind]);
    for (unsigned i = whole ? 1 : 0; i < n; i++) {
        unsigned own = 0, old = 0, other = 0;
        for (unsigned j = r->off[i]; j < r->off[i] + r->len[i]; j++) {
            if (got[j] == r->data[i][j])
                own++;
            else if (got[j] == under[j] || got[j] == base[j])
                old++;
            else
                other++;
        }
        if (own != r->len[i] && !(whole && old == r->len[i]))
            appendf(why, wl, " thread %u's bytes [%u,%u): %u its own, %u %s, %u other;", i,
                    r->off[i], r->off[i] + r->len[i], own, old,
                    whole ? "from thread 0 or before" : "as before (lost)", other);
    }
    unsigned outside = 0;
    for (unsigned j = 0; j < SECTOR; j++) {
        bool in_range = false;
        for (unsigned i = whole ? 1 : 0; i < n; i++)
            in_range |= j >= r->off[i] && j < r->off[i] + r->len[i];
        outside += !in_range && got[j] != under[j];
    }
    if (outside != 0)
        appendf(why, wl, " %u bytes outside the partial ranges differ from %s", outside,
                whole ? "thread 0's sector" : "the data before the round");
}

/* One round on sector s; sec holds the sector's bytes before the round and
 * gets what it reads as after.  Returns false with a reason in why when the
 * result is not a serial outcome (or a call failed). */
static bool race_round(struct race *r, unsigned n, uint64_t s, uint64_t *rng,
                       unsigned char *sec, char *why, size_t wl)
{
    bool whole = race_has_whole(r->kind);
    unsigned first = whole ? 1 : 0, np = n - first, k = SECTOR / np;
    unsigned char base[SECTOR], got[SECTOR], cand[SECTOR];

    memcpy(base, sec, SECTOR);
    r->sector = s;
    r->zero_flags = (tu_rand(rng) & 1) ? ADDCOW_ZEROES_MAY_UNMAP : 0;
    if (r->kind == RACE_WHOLE) {
        for (unsigned j = 0; j < SECTOR; j++)
            r->data[0][j] = (unsigned char)(base[j] ^ (1 + tu_rand_below(rng, 255)));
    } else if (r->kind == RACE_ZEROES) {
        memset(r->data[0], 0, SECTOR);
    }
    if (whole) {
        r->off[0] = 0;
        r->len[0] = SECTOR;
    }
    /* Thread first+p writes inside slot p: disjoint ranges, gaps between
     * them, every byte different from what it replaces. */
    for (unsigned p = 0; p < np; p++) {
        unsigned i = first + p;
        unsigned a = (unsigned)tu_rand_below(rng, k / 2);
        r->off[i] = p * k + a;
        r->len[i] = 1 + (unsigned)tu_rand_below(rng, k - a);
        memcpy(r->data[i], base, SECTOR);
        for (unsigned j = r->off[i]; j < r->off[i] + r->len[i]; j++) {
            unsigned char v = (unsigned char)tu_rand(rng);
            while (v == base[j] || (whole && v == r->data[0][j]))
                v++;
            r->data[i][j] = v;
        }
    }

    pthread_barrier_wait(&r->start);
    pthread_barrier_wait(&r->done);

    for (unsigned i = 0; i < n; i++) {
        int64_t want = (i == 0 && r->kind == RACE_ZEROES) ? 0 : (int64_t)r->len[i];
        if (r->ret[i] != want) {
            snprintf(why, wl, "sector %" PRIu64 ": thread %u's call returned %" PRId64
                     " (%s), expected %" PRId64, s, i, r->ret[i],
                     r->ret[i] < 0 ? strerror((int)-r->ret[i]) : "short", want);
            return false;
        }
    }
    int64_t g = addcow_pread(r->img, got, SECTOR, s * SECTOR);
    if (g != SECTOR) {
        snprintf(why, wl, "reading sector %" PRIu64 " returned %" PRId64 ": %s", s, g,
                 addcow_last_error());
        return false;
    }
    memcpy(sec, got, SECTOR);

    /* The valid outcomes: every serial order of the writes. */
    if (!whole) {
        memcpy(cand, base, SECTOR);
        for (unsigned i = 0; i < n; i++)
            memcpy(cand + r->off[i], r->data[i] + r->off[i], r->len[i]);
        if (memcmp(cand, got, SECTOR) == 0)
            return true;
    } else {
        for (unsigned mask = 0; mask < (1u << np); mask++) {
            memcpy(cand, r->data[0], SECTOR);
            for (unsigned p = 0; p < np; p++) {
                unsigned i = first + p;
                if ((mask >> p) & 1)
                    memcpy(cand + r->off[i], r->data[i] + r->off[i], r->len[i]);
            }
            if (memcmp(cand, got, SECTOR) == 0)
                return true;
        }
    }
    race_explain(r, n, base, got, why, wl);
    return false;
}

struct race_cfg {
    const char *tag;            /* file names and seed label */
    enum race_kind kind;
    unsigned nmin, nmax;        /* thread counts */
    unsigned rounds_per_n;
    unsigned delay_us;          /* > 0: through the hook backend, with delays */
    const char *cache;          /* the "cache" option; NULL: the default */
};

/* Runs the rounds; returns how many were not serial outcomes (it stops at
 * the first one unless the kind is the self-check) with the first reason in
 * why.  Fails the test on errors outside the rounds. */
static unsigned race_run(const struct race_cfg *c, char *why, size_t wl)
{
    uint64_t rng = tu_seed(c->tag);
    bool count_all = c->kind == RACE_UNLOCKED_RMW;
    uint64_t total = (uint64_t)c->rounds_per_n * (c->nmax - c->nmin + 1);
    uint64_t sectors = 2 * total + 64;
    uint64_t size = sectors * SECTOR;
    /* Three quarters backed, the backing end inside a sector; the rest
     * reads as zeros. */
    uint64_t bsize = size / 4 * 3 + 123;
    struct fx f;
    addcow_options *o = NULL;

    fx_make(&f, c->tag, size, bsize, (uint32_t)rng);
    if (c->delay_us != 0) {
        o = hook_options();
        hk.image_write_delay_us = c->delay_us;
        hk.backing_read_delay_us = c->delay_us;
    }
    if (c->cache != NULL) {
        if (o == NULL)
            o = addcow_options_new();
        assert_non_null(o);
        assert_int_equal(addcow_options_set(o, "cache", c->cache), 0);
    }
    addcow_image *img = tu_open_ok(f.acow, ADDCOW_OPEN_RDWR, o);
    unsigned char *model = malloc(size);
    unsigned char *used = calloc(sectors, 1);
    struct race *r = calloc(1, sizeof(*r));
    assert_non_null(model);
    assert_non_null(used);
    assert_non_null(r);
    memcpy(model, f.init, size);
    r->img = img;
    r->kind = c->kind;

    unsigned bad = 0, rounds = 0;
    bool broken = false;          /* a failure that ends the run */
    why[0] = '\0';
    for (unsigned n = c->nmin; n <= c->nmax && !broken; n++) {
        pthread_t th[RACE_MAX];
        struct race_arg args[RACE_MAX];
        assert_int_equal(pthread_barrier_init(&r->start, NULL, n + 1), 0);
        assert_int_equal(pthread_barrier_init(&r->done, NULL, n + 1), 0);
        r->stop = false;
        for (unsigned i = 0; i < n; i++) {
            args[i].r = r;
            args[i].id = i;
            start_thread(&th[i], race_worker, &args[i]);
        }
        for (unsigned round = 0; round < c->rounds_per_n && !broken; round++) {
            uint64_t s, run = 0;
            do
                s = tu_rand_below(&rng, sectors);
            while (used[s]);
            used[s] = 1;
            int st = addcow_block_status(img, s * SECTOR, SECTOR, &run);
            if (st < 0 || (st & ADDCOW_STATUS_ALLOCATED)) {
                snprintf(why, wl, "sector %" PRIu64 " never written, but block_status says %d",
                         s, st);
                bad++;
                broken = true;
                break;
            }
            char w[1024];
            rounds++;
            if (!race_round(r, n, s, &rng, model + s * SECTOR, w, sizeof(w))) {
                if (bad++ == 0)
                    snprintf(why, wl, "%s", w);
                if (!count_all || strstr(w, "not a serial outcome") == NULL)
                    broken = true;
            }
            st = addcow_block_status(img, s * SECTOR, SECTOR, &run);
            if (!broken && st != ADDCOW_STATUS_ALLOCATED) {
                snprintf(why, wl, "sector %" PRIu64 " written, but block_status says %d", s, st);
                bad++;
                broken = true;
            }
        }
        r->stop = true;
        pthread_barrier_wait(&r->start);
        for (unsigned i = 0; i < n; i++)
            pthread_join(th[i], NULL);
        pthread_barrier_destroy(&r->start);
        pthread_barrier_destroy(&r->done);
    }
    int cr = addcow_close(img);
    hook_reset();
    addcow_options_free(o);
    if (cr != 0)
        fail_msg("%s: close: %d: %s", c->tag, cr, addcow_last_error());
    if (!broken) {
        /* What the rounds left must survive close and reopen, and no sector
         * outside them may have changed. */
        check_reopened(f.acow, model, size, -1);
    }
    printf("# %s: %u rounds, %u not a serial outcome\n", c->tag, rounds, bad);
    free(r);
    free(used);
    free(model);
    fx_free(&f);
    return bad;
}

static void race_strict(const struct race_cfg *c)
{
    char why[1024];
    wd_start(c->tag);
    unsigned bad = race_run(c, why, sizeof(why));
    wd_stop();
    if (bad != 0)
        fail_msg("%s: %s", c->tag, why);
}

static void test_cow_race_partial(void **state)
{
    (void)state;
    struct race_cfg c = { "race-partial", RACE_PARTIAL, 2, RACE_MAX, tu_scale(1500), 0, NULL };
    race_strict(&c);
}

static void test_cow_race_whole_and_partial(void **state)
{
    (void)state;
    struct race_cfg c = { "race-whole", RACE_WHOLE, 2, RACE_MAX, tu_scale(500), 0, NULL };
    race_strict(&c);
}

static void test_cow_race_zeroes_and_partial(void **state)
{
    (void)state;
    struct race_cfg c = { "race-zeroes", RACE_ZEROES, 2, RACE_MAX, tu_scale(300), 0, NULL };
    race_strict(&c);
}

/* cache=none: whole aligned sectors go to the image file with O_DIRECT,
 * partial in-place writes through its buffered twin. */
static void test_cow_race_cache_none(void **state)
{
    (void)state;
    skip_without_direct_io();
    struct race_cfg c = { "race-direct", RACE_PARTIAL, 2, RACE_MAX, tu_scale(200), 0, "none" };
    race_strict(&c);
    struct race_cfg w = { "race-direct-whole", RACE_WHOLE, 2, RACE_MAX, tu_scale(100), 0,
                          "none" };
    race_strict(&w);
}

/* The same race with every backing read and image write slowed down, so
 * that a write that copies the sector without holding it off from the
 * others would lose updates at once. */
static void test_cow_race_delayed_backend(void **state)
{
    (void)state;
    struct race_cfg c = { "race-delayed", RACE_PARTIAL, 2, RACE_MAX, tu_scale(25), 300, NULL };
    race_strict(&c);
    struct race_cfg w = { "race-delayed-whole", RACE_WHOLE, 2, RACE_MAX, tu_scale(15), 300,
                          NULL };
    race_strict(&w);
}

/* The checker must be able to fail: with unlocked read-modify-writes (what
 * the library's copy-on-write would be without its lock) and the delays,
 * it must report lost updates. */
static void test_race_checker_catches_unlocked_rmw(void **state)
{
    char why[1024];
    (void)state;
    struct race_cfg c = { "race-selfcheck", RACE_UNLOCKED_RMW, 4, 4, 20, 1000, NULL };
    wd_start(c.tag);
    unsigned bad = race_run(&c, why, sizeof(why));
    wd_stop();
    if (bad == 0)
        fail_msg("the race checker found no lost update in %u unlocked read-modify-write "
                 "rounds: it cannot detect a missing lock", c.rounds_per_n);
    if (strstr(why, "not a serial outcome") == NULL)
        fail_msg("self-check failed for another reason: %s", why);
    printf("# self-check: %u of %u unlocked rounds lost updates; e.g. %s\n", bad,
           c.rounds_per_n, why);
}

/* ==== 2. mixed stress ======================================================== *
 *
 * MIX_T workers each own a region (the regions are not sector-aligned, so
 * neighbours share a sector) and do random unaligned writes, pwritev,
 * write_zeroes, reads and preadv there, checking every read against their
 * own model.  Meanwhile a meta thread flushes, walks the disk with
 * block_status and reads get_allocated_bytes in a loop, checking that
 * allocation only grows and that every walk is consistent.  At the end the
 * disk must match the models (before and after close + reopen), and the
 * allocation (in memory and the on-disk bitmap) must be exactly the
 * sectors the model says: every sector touched by a write, and every sector
 * a write_zeroes touched in a part below the backing end (the rest of its
 * range is "ZERO" and stays unallocated).
 */

#define MIX_T 4

struct mix_shared {
    addcow_image *img;
    uint64_t size, bsize;
    atomic_bool stop;
    struct errbox eb;
    unsigned walks;
};

struct mix_worker {
    struct mix_shared *sh;
    unsigned id;
    uint64_t lo, hi;
    unsigned char *model;       /* hi - lo bytes */
    unsigned char *alloc;       /* one byte per sector of the disk */
    uint64_t rng;
    unsigned iters;
};

static void *mix_worker_run(void *arg)
{
    struct mix_worker *w = arg;
    struct mix_shared *sh = w->sh;
    uint64_t span = w->hi - w->lo;
    unsigned char *buf = malloc(16384), *chk = malloc(16384);
    struct iovec v[4];

    if (buf == NULL || chk == NULL) {
        eb_add(&sh->eb, "worker %u: out of memory", w->id);
        goto out;
    }
    for (unsigned it = 0; it < w->iters && !eb_any(&sh->eb); it++) {
        unsigned what = (unsigned)tu_rand_below(&w->rng, 100);
        uint64_t o = w->lo + tu_rand_below(&w->rng, span);
        uint64_t room = w->hi - o;
        if (what < 50) {
            size_t l = (size_t)(1 + tu_rand_below(&w->rng, tu_min_u64(room, 6000)));
            fill_random(buf, l, &w->rng);
            int64_t r;
            if (what < 30) {
                r = addcow_pwrite(sh->img, buf, l, o);
            } else {
                int n = split_iov(v, 4, buf, l, &w->rng);
                r = addcow_pwritev(sh->img, v, n, o);
            }
            if (r != (int64_t)l) {
                eb_add(&sh->eb, "worker %u: write of %zu at %" PRIu64 " returned %" PRId64 ": %s",
                       w->id, l, o, r, addcow_last_error());
                break;
            }
            memcpy(w->model + (o - w->lo), buf, l);
            memset(w->alloc + o / SECTOR, 1, (o + l - 1) / SECTOR - o / SECTOR + 1);
        } else if (what < 60) {
            uint64_t l = 1 + tu_rand_below(&w->rng, tu_min_u64(room, 9000));
            unsigned flags = (tu_rand(&w->rng) & 1) ? ADDCOW_ZEROES_MAY_UNMAP : 0;
            int r = addcow_write_zeroes(sh->img, o, l, flags);
            if (r != 0) {
                eb_add(&sh->eb, "worker %u: write_zeroes(%" PRIu64 ", %" PRIu64 ", %u): %d: %s",
                       w->id, o, l, flags, r, addcow_last_error());
                break;
            }
            memset(w->model + (o - w->lo), 0, l);
            for (uint64_t s = o / SECTOR; s <= (o + l - 1) / SECTOR; s++)
                if (max_u64(o, s * SECTOR) < sh->bsize)
                    w->alloc[s] = 1;
        } else {
            size_t l = (size_t)(1 + tu_rand_below(&w->rng, tu_min_u64(room, 12000)));
            int64_t r;
            memset(chk, 0xA5, l);
            if (what < 85) {
                r = addcow_pread(sh->img, chk, l, o);
            } else {
                int n = split_iov(v, 4, chk, l, &w->rng);
                r = addcow_preadv(sh->img, v, n, o);
            }
            if (r != (int64_t)l) {
                eb_add(&sh->eb, "worker %u: read of %zu at %" PRIu64 " returned %" PRId64 ": %s",
                       w->id, l, o, r, addcow_last_error());
                break;
            }
            const unsigned char *m = w->model + (o - w->lo);
            if (memcmp(chk, m, l) != 0) {
                size_t j = 0;
                while (chk[j] == m[j])
                    j++;
                eb_add(&sh->eb, "worker %u: byte %" PRIu64 " of its own region reads 0x%02x, "
                       "its model says 0x%02x (read of %zu at %" PRIu64 ", op %u)",
                       w->id, o + j, chk[j], m[j], l, o, it);
                break;
            }
        }
    }
out:
    free(buf);
    free(chk);
    return NULL;
}

static void *mix_meta_run(void *arg)
{
    struct mix_shared *sh = arg;
    int64_t last = 0;
    char why[512];

    do {
        int64_t g0 = addcow_get_allocated_bytes(sh->img);
        int64_t walked = walk_disk(sh->img, sh->size, sh->bsize, NULL, why, sizeof(why));
        int64_t g1 = addcow_get_allocated_bytes(sh->img);
        if (walked < 0) {
            eb_add(&sh->eb, "meta: walk %u: %s", sh->walks, why);
            break;
        }
        /* Bits are only ever set here, so every count is at least the one
         * taken before it. */
        if (!(last <= g0 && g0 <= walked && walked <= g1)) {
            eb_add(&sh->eb, "meta: allocation went backwards: before %" PRId64 ", then %" PRId64
                   ", walk %" PRId64 ", after %" PRId64, last, g0, walked, g1);
            break;
        }
        last = g1;
        int r = addcow_flush(sh->img);
        if (r != 0) {
            eb_add(&sh->eb, "meta: flush: %d: %s", r, addcow_last_error());
            break;
        }
        uint64_t run = 0;
        uint64_t o = (uint64_t)g0 % sh->size;
        r = addcow_block_status(sh->img, o, sh->size - o, &run);
        if (r < 0 || run == 0 || run > sh->size - o) {
            eb_add(&sh->eb, "meta: block_status(%" PRIu64 "): %d, run %" PRIu64, o, r, run);
            break;
        }
        sh->walks++;
    } while (!atomic_load(&sh->stop));
    return NULL;
}

static void test_mixed_stress(void **state)
{
    (void)state;
    wd_start(__func__);
    uint64_t seed = tu_seed("mixed-stress");
    const uint64_t region = 96 * 1024 + 300, first = 1000;
    const uint64_t size = 512 * 1024, sectors = size / SECTOR;
    const uint64_t bsize = first + region * 5 / 2 + 77;   /* ends inside region 2's sector */
    struct fx f;
    struct mix_shared sh;
    struct mix_worker w[MIX_T];
    pthread_t th[MIX_T], meta;

    fx_make(&f, "mixed", size, bsize, (uint32_t)seed);
    memset(&sh, 0, sizeof(sh));
    sh.img = tu_open_ok(f.acow, ADDCOW_OPEN_RDWR, NULL);
    sh.size = size;
    sh.bsize = bsize;
    atomic_init(&sh.stop, false);
    eb_init(&sh.eb);
    for (unsigned i = 0; i < MIX_T; i++) {
        w[i].sh = &sh;
        w[i].id = i;
        w[i].lo = first + i * region;
        w[i].hi = w[i].lo + region;
        w[i].model = malloc(region);
        w[i].alloc = calloc(sectors, 1);
        assert_non_null(w[i].model);
        assert_non_null(w[i].alloc);
        memcpy(w[i].model, f.init + w[i].lo, region);
        w[i].rng = seed * (2 * i + 3) + 1;
        w[i].iters = tu_scale(6000);
    }
    start_thread(&meta, mix_meta_run, &sh);
    for (unsigned i = 0; i < MIX_T; i++)
        start_thread(&th[i], mix_worker_run, &w[i]);
    for (unsigned i = 0; i < MIX_T; i++)
        pthread_join(th[i], NULL);
    atomic_store(&sh.stop, true);
    pthread_join(meta, NULL);
    printf("# mixed-stress: %u meta loops (flush + walk) ran alongside the workers\n", sh.walks);
    eb_check(&sh.eb, "mixed stress");

    unsigned char *model = malloc(size), *want = calloc(sectors, 1), *got = malloc(sectors);
    assert_non_null(model);
    assert_non_null(want);
    assert_non_null(got);
    memcpy(model, f.init, size);
    for (unsigned i = 0; i < MIX_T; i++) {
        memcpy(model + w[i].lo, w[i].model, region);
        for (uint64_t s = 0; s < sectors; s++)
            want[s] |= w[i].alloc[s];
        free(w[i].model);
        free(w[i].alloc);
    }
    check_disk(sh.img, model, size, "after the workers");
    check_walk(sh.img, size, bsize, got, want, "allocation (block_status) against the model");
    assert_int_equal(addcow_get_allocated_bytes(sh.img), count_set(want, sectors) * SECTOR);
    assert_int_equal(addcow_close(sh.img), 0);

    check_disk_bitmap(f.acow, sectors, got, want, "on-disk bitmap after close against the model");
    check_reopened(f.acow, model, size, (int64_t)(count_set(want, sectors) * SECTOR));
    free(model);
    free(want);
    free(got);
    fx_free(&f);
    wd_stop();
}

/* ==== 3. overlapping writers ================================================= *
 *
 * OW_T threads write 4 KiB blocks (8 whole sectors, at random sector-aligned
 * offsets, so blocks overlap partially) of a shared region, through pwritev
 * with the block cut at random places.  Every sector of every write is
 * self-describing: (write id, sector number) then a pattern of both, so a
 * sector that mixes two writes is caught.  Each write also records a start
 * and an end stamp from a shared counter.  Afterwards every sector must
 * hold whole sector contents of one write that covered it and that no
 * other write to it followed entirely (end stamp before the other's start),
 * or the backing data if no write covered it; before and after reopen.
 */

#define OW_T 4
#define OW_BLOCK 4096u
#define OW_TAG UINT64_C(0x5753414F43444441)

struct ow_log {
    uint64_t off;
    uint64_t start, end;
};

struct ow_shared {
    addcow_image *img;
    uint64_t lo, hi;
    uint32_t seed;
    unsigned per_thread;
    atomic_uint_fast64_t clock;
    struct ow_log *log;
    struct errbox eb;
};

struct ow_worker {
    struct ow_shared *sh;
    unsigned id;
    uint64_t rng;
};

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* Sector s as written by write w. */
static void ow_sector(unsigned char *p, uint32_t seed, uint64_t w, uint64_t s)
{
    put_le64(p, w ^ OW_TAG);
    put_le64(p + 8, s);
    tu_fill_pattern(p + 16, SECTOR - 16, seed ^ (uint32_t)(w * 2654435761u), s * SECTOR + 16);
}

static void *ow_worker_run(void *arg)
{
    struct ow_worker *wk = arg;
    struct ow_shared *sh = wk->sh;
    unsigned char *buf = malloc(OW_BLOCK);
    uint64_t slots = (sh->hi - sh->lo) / SECTOR - OW_BLOCK / SECTOR + 1;
    struct iovec v[3];

    if (buf == NULL) {
        eb_add(&sh->eb, "out of memory");
        return NULL;
    }
    for (unsigned j = 0; j < sh->per_thread && !eb_any(&sh->eb); j++) {
        uint64_t w = (uint64_t)wk->id * sh->per_thread + j;
        uint64_t off = sh->lo + SECTOR * tu_rand_below(&wk->rng, slots);
        for (unsigned k = 0; k < OW_BLOCK / SECTOR; k++)
            ow_sector(buf + k * SECTOR, sh->seed, w, off / SECTOR + k);
        int n = split_iov(v, 3, buf, OW_BLOCK, &wk->rng);
        sh->log[w].off = off;
        sh->log[w].start = atomic_fetch_add(&sh->clock, 1);
        int64_t r = addcow_pwritev(sh->img, v, n, off);
        sh->log[w].end = atomic_fetch_add(&sh->clock, 1);
        if (r != OW_BLOCK)
            eb_add(&sh->eb, "write %" PRIu64 " at %" PRIu64 " returned %" PRId64 ": %s", w, off, r,
                   addcow_last_error());
    }
    free(buf);
    return NULL;
}

static void ow_verify(addcow_image *img, const struct ow_shared *sh, const unsigned char *init,
                      const char *when)
{
    uint64_t total = (uint64_t)OW_T * sh->per_thread;
    uint64_t s_lo = sh->lo / SECTOR, ns = (sh->hi - sh->lo) / SECTOR;
    uint64_t *max_start = calloc(ns, sizeof(uint64_t));
    unsigned char *covered = calloc(ns, 1);
    unsigned char *buf = malloc(sh->hi - sh->lo);
    unsigned char want[SECTOR];
    char why[512] = "";

    assert_non_null(max_start);
    assert_non_null(covered);
    assert_non_null(buf);
    for (uint64_t w = 0; w < total; w++) {
        for (uint64_t k = 0; k < OW_BLOCK / SECTOR; k++) {
            uint64_t i = sh->log[w].off / SECTOR + k - s_lo;
            covered[i] = 1;
            max_start[i] = max_u64(max_start[i], sh->log[w].start);
        }
    }
    int64_t r = addcow_pread(img, buf, sh->hi - sh->lo, sh->lo);
    if (r != (int64_t)(sh->hi - sh->lo))
        snprintf(why, sizeof(why), "reading the region returned %" PRId64, r);
    for (uint64_t i = 0; i < ns && why[0] == '\0'; i++) {
        const unsigned char *p = buf + i * SECTOR;
        uint64_t s = s_lo + i;
        if (!covered[i]) {
            if (memcmp(p, init + s * SECTOR, SECTOR) != 0)
                snprintf(why, sizeof(why), "sector %" PRIu64 " was never written but does not "
                         "read as the backing data", s);
            continue;
        }
        uint64_t w = get_le64(p) ^ OW_TAG;
        if (w >= total) {
            snprintf(why, sizeof(why), "sector %" PRIu64 " holds no write's header%s", s,
                     memcmp(p, init + s * SECTOR, SECTOR) == 0 ? " (it still reads as the "
                     "backing data: a write was lost)" : "");
            continue;
        }
        const struct ow_log *lg = &sh->log[w];
        if (get_le64(p + 8) != s || lg->off > s * SECTOR || s * SECTOR >= lg->off + OW_BLOCK) {
            snprintf(why, sizeof(why), "sector %" PRIu64 " holds write %" PRIu64 "'s sector %"
                     PRIu64 " (that write covered [%" PRIu64 ", +4096))", s, w, get_le64(p + 8),
                     lg->off);
            continue;
        }
        ow_sector(want, sh->seed, w, s);
        if (memcmp(p, want, SECTOR) != 0) {
            unsigned j = 0;
            while (p[j] == want[j])
                j++;
            snprintf(why, sizeof(why), "sector %" PRIu64 " is torn: write %" PRIu64 "'s header "
                     "but byte %u differs from that write", s, w, j);
            continue;
        }
        if (lg->end < max_start[i])
            snprintf(why, sizeof(why), "sector %" PRIu64 " holds write %" PRIu64 " (stamps %"
                     PRIu64 "..%" PRIu64 "), but a later write to it started at %" PRIu64
                     " after that one had returned: a lost update", s, w, lg->start, lg->end,
                     max_start[i]);
    }
    free(max_start);
    free(covered);
    free(buf);
    if (why[0] != '\0')
        fail_msg("%s: %s", when, why);
}

static void overlapping_writers(const char *tag, const char *cache, unsigned per_thread)
{
    wd_start(tag);
    uint64_t seed = tu_seed(tag);
    const uint64_t size = 512 * 1024, lo = 60 * 1024 + 1536, hi = lo + 128 * 1024;
    struct fx f;
    struct ow_shared sh;
    struct ow_worker wk[OW_T];
    pthread_t th[OW_T];
    addcow_options *o = addcow_options_new();

    assert_non_null(o);
    assert_int_equal(addcow_options_set(o, "cache", cache), 0);
    fx_make(&f, tag, size, lo + 96 * 1024 + 200, (uint32_t)seed);
    memset(&sh, 0, sizeof(sh));
    sh.img = tu_open_ok(f.acow, ADDCOW_OPEN_RDWR, o);
    sh.lo = lo;
    sh.hi = hi;
    sh.seed = (uint32_t)(seed >> 7);
    sh.per_thread = per_thread;
    atomic_init(&sh.clock, 1);
    sh.log = calloc((size_t)OW_T * sh.per_thread, sizeof(*sh.log));
    assert_non_null(sh.log);
    eb_init(&sh.eb);
    for (unsigned i = 0; i < OW_T; i++) {
        wk[i].sh = &sh;
        wk[i].id = i;
        wk[i].rng = seed * (2 * i + 5) + 7;
        start_thread(&th[i], ow_worker_run, &wk[i]);
    }
    for (unsigned i = 0; i < OW_T; i++)
        pthread_join(th[i], NULL);
    eb_check(&sh.eb, "overlapping writers");

    ow_verify(sh.img, &sh, f.init, "after the writers");
    /* Allocated: exactly the sectors some write covered. */
    {
        uint64_t sectors = size / SECTOR;
        unsigned char *want = calloc(sectors, 1), *got = malloc(sectors);
        assert_non_null(want);
        assert_non_null(got);
        for (uint64_t w = 0; w < (uint64_t)OW_T * sh.per_thread; w++)
            memset(want + sh.log[w].off / SECTOR, 1, OW_BLOCK / SECTOR);
        check_walk(sh.img, size, f.bsize, got, want,
                   "allocation (block_status) after the writers");
        assert_int_equal(addcow_get_allocated_bytes(sh.img), count_set(want, sectors) * SECTOR);
        free(want);
        free(got);
    }
    /* Nothing outside the region changed. */
    unsigned char *model = malloc(size);
    assert_non_null(model);
    memcpy(model, f.init, size);
    unsigned char *buf = malloc(hi - lo);
    assert_non_null(buf);
    assert_int_equal(addcow_pread(sh.img, buf, hi - lo, lo), (int64_t)(hi - lo));
    memcpy(model + lo, buf, hi - lo);
    free(buf);
    check_disk(sh.img, model, size, "outside the shared region");
    assert_int_equal(addcow_close(sh.img), 0);

    addcow_image *img = tu_open_ok(f.acow, ADDCOW_OPEN_RDONLY, NULL);
    ow_verify(img, &sh, f.init, "after close and reopen");
    check_disk(img, model, size, "after close and reopen");
    assert_int_equal(addcow_close(img), 0);
    addcow_options_free(o);
    free(model);
    free(sh.log);
    fx_free(&f);
    wd_stop();
}

static void test_overlapping_writers(void **state)
{
    (void)state;
    overlapping_writers("overlapping-writers", "writeback", tu_scale(4000));
}

/* cache=none: the blocks go to the image file with O_DIRECT (through a
 * bounce buffer where the iovec pieces are not aligned). */
static void test_overlapping_writers_cache_none(void **state)
{
    (void)state;
    skip_without_direct_io();
    overlapping_writers("overlapping-direct", "none", tu_scale(1000));
}

/* ==== 4. no single lock across data I/O ====================================== *
 *
 * Thread 1's request on region A is parked inside the backend (the hook
 * trap, before its I/O).  Thread 2 then works on region B of the same
 * handle, which shares no sector with A; it must finish within
 * MUST_FINISH_MS while thread 1 is still parked.  If it does not, the
 * library holds a lock across I/O that covers more than the sectors being
 * written.  Then thread 1 is released, and both regions must read right.
 */

enum nl_op { NL_WRITE, NL_READ, NL_WRITE_READ };

struct nl_case {
    const char *name;
    bool a_allocated, b_allocated;
    bool b_adjacent;            /* B starts in the sector right after A's last */
    int trap_write;             /* the parked request: 1 = a write, 0 = a read */
    enum role trap_role;        /* ... of the image file or of the backing file */
    enum nl_op t1, t2;          /* thread 1 on A, thread 2 on B */
};

static const struct nl_case nl_cases[] = {
    { "allocating write parked; allocating write + read elsewhere",
      false, false, false, 1, ROLE_IMAGE, NL_WRITE, NL_WRITE_READ },
    { "allocating write parked; allocating write + read in the next sector",
      false, false, true, 1, ROLE_IMAGE, NL_WRITE, NL_WRITE_READ },
    { "allocating write parked in its copy-on-write read; allocating write + read elsewhere",
      false, false, false, 0, ROLE_BACKING, NL_WRITE, NL_WRITE_READ },
    { "overwrite parked; overwrite + read elsewhere",
      true, true, false, 1, ROLE_IMAGE, NL_WRITE, NL_WRITE_READ },
    { "overwrite parked; allocating write + read elsewhere",
      true, false, false, 1, ROLE_IMAGE, NL_WRITE, NL_WRITE_READ },
    { "allocating write parked; overwrite + read elsewhere",
      false, true, false, 1, ROLE_IMAGE, NL_WRITE, NL_WRITE_READ },
    { "allocating write parked; read of allocated data elsewhere",
      false, true, false, 1, ROLE_IMAGE, NL_WRITE, NL_READ },
    { "allocating write parked; read of backing data elsewhere",
      false, false, false, 1, ROLE_IMAGE, NL_WRITE, NL_READ },
    { "overwrite parked; read of allocated data elsewhere",
      true, true, false, 1, ROLE_IMAGE, NL_WRITE, NL_READ },
    { "read of allocated data parked; allocating write + read elsewhere",
      true, false, false, 0, ROLE_IMAGE, NL_READ, NL_WRITE_READ },
    { "read of allocated data parked; overwrite + read elsewhere",
      true, true, false, 0, ROLE_IMAGE, NL_READ, NL_WRITE_READ },
    { "read of backing data parked; allocating write + read elsewhere",
      false, false, false, 0, ROLE_BACKING, NL_READ, NL_WRITE_READ },
};

struct nl_thread {
    addcow_image *img;
    enum nl_op op;
    uint64_t off;
    size_t len;
    const unsigned char *data;      /* to write */
    const unsigned char *expect;    /* what the read must return */
    char err[512];
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
    bool done;
};

static void *nl_thread_run(void *arg)
{
    struct nl_thread *t = arg;
    unsigned char *buf = malloc(t->len);
    uint64_t run = 0;

    t->err[0] = '\0';
    if (buf == NULL) {
        snprintf(t->err, sizeof(t->err), "out of memory");
    } else if (t->op != NL_READ) {
        int64_t r = addcow_pwrite(t->img, t->data, t->len, t->off);
        if (r != (int64_t)t->len)
            snprintf(t->err, sizeof(t->err), "write of %zu at %" PRIu64 ": %" PRId64 ": %s",
                     t->len, t->off, r, addcow_last_error());
    }
    if (buf != NULL && t->err[0] == '\0' && t->op != NL_WRITE) {
        int64_t r = addcow_pread(t->img, buf, t->len, t->off);
        if (r != (int64_t)t->len)
            snprintf(t->err, sizeof(t->err), "read of %zu at %" PRIu64 ": %" PRId64 ": %s",
                     t->len, t->off, r, addcow_last_error());
        else if (memcmp(buf, t->expect, t->len) != 0)
            snprintf(t->err, sizeof(t->err), "read of %zu at %" PRIu64 ": wrong data",
                     t->len, t->off);
    }
    /* Metadata calls on the same handle, while the other request is parked. */
    if (buf != NULL && t->err[0] == '\0') {
        int st = addcow_block_status(t->img, t->off, t->len, &run);
        if (st < 0)
            snprintf(t->err, sizeof(t->err), "block_status: %d", st);
        else if (addcow_get_allocated_bytes(t->img) < 0)
            snprintf(t->err, sizeof(t->err), "get_allocated_bytes failed");
    }
    free(buf);
    pthread_mutex_lock(t->mu);
    t->done = true;
    pthread_cond_broadcast(t->cv);
    pthread_mutex_unlock(t->mu);
    return NULL;
}

static void test_no_global_lock(void **state)
{
    const struct nl_case *c = *state;
    wd_start(c->name);
    uint64_t rng = tu_seed("no-global-lock");
    const uint64_t size = 1024 * 1024, bsize = 768 * 1024 + 99;
    /* A: sectors 64..70, so that A's last sector and B's first one (in the
     * adjacent case) share a 4 KiB page: the lock is per sector. */
    const uint64_t a_sec = 32768, a_end = a_sec + 7 * SECTOR;
    const uint64_t a_off = a_sec + 100, a_len = 7 * SECTOR - 100 - 60;  /* partial ends */
    const uint64_t b_off = c->b_adjacent ? a_end + 10 : 512 * 1024 + 37;
    const uint64_t b_len = c->b_adjacent ? 2000 : 3000;
    const uint64_t b_sec = b_off / SECTOR * SECTOR;
    const uint64_t b_end = (b_off + b_len + SECTOR - 1) / SECTOR * SECTOR;
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    struct fx f;

    fx_make(&f, "nolock", size, bsize, (uint32_t)rng);
    addcow_options *o = hook_options();
    hook_reset();
    addcow_image *img = tu_open_ok(f.acow, ADDCOW_OPEN_RDWR, o);
    unsigned char *model = malloc(size), *pre = malloc(8192);
    unsigned char *d1 = malloc(a_len), *d2 = malloc(b_len);
    assert_non_null(model);
    assert_non_null(pre);
    assert_non_null(d1);
    assert_non_null(d2);
    memcpy(model, f.init, size);
    if (c->a_allocated) {
        fill_random(pre, a_end - a_sec, &rng);
        assert_int_equal(addcow_pwrite(img, pre, a_end - a_sec, a_sec), (int64_t)(a_end - a_sec));
        memcpy(model + a_sec, pre, a_end - a_sec);
    }
    if (c->b_allocated) {
        fill_random(pre, b_end - b_sec, &rng);
        assert_int_equal(addcow_pwrite(img, pre, b_end - b_sec, b_sec), (int64_t)(b_end - b_sec));
        memcpy(model + b_sec, pre, b_end - b_sec);
    }
    fill_random(d1, a_len, &rng);
    fill_random(d2, b_len, &rng);

    struct nl_thread t1 = { img, c->t1, a_off, a_len, d1, model + a_off, "", &mu, &cv, false };
    struct nl_thread t2 = { img, c->t2, b_off, b_len, d2, c->t2 == NL_READ ? model + b_off : d2,
                            "", &mu, &cv, false };
    pthread_t th1, th2;

    pthread_mutex_lock(&hk.mu);
    hk.trap_write = c->trap_write;
    hk.trap_role = c->trap_role;
    hk.trap_off = a_sec;
    hk.trap_len = a_end - a_sec;
    hk.trap_state = TRAP_IDLE;
    hk.trap_release = 0;
    atomic_store(&hk.trap_armed, 1);
    pthread_mutex_unlock(&hk.mu);

    start_thread(&th1, nl_thread_run, &t1);
    struct timespec dl = deadline_ms(MUST_FINISH_MS);
    pthread_mutex_lock(&hk.mu);
    while (hk.trap_state == TRAP_IDLE && pthread_cond_timedwait(&hk.cv, &hk.mu, &dl) == 0)
        ;
    bool parked = hk.trap_state == TRAP_HELD;
    pthread_mutex_unlock(&hk.mu);

    bool t2_in_time = false, t1_still_parked = false;
    if (parked) {
        start_thread(&th2, nl_thread_run, &t2);
        dl = deadline_ms(MUST_FINISH_MS);
        pthread_mutex_lock(&mu);
        while (!t2.done && pthread_cond_timedwait(&cv, &mu, &dl) == 0)
            ;
        t2_in_time = t2.done;
        pthread_mutex_unlock(&mu);
        pthread_mutex_lock(&hk.mu);
        t1_still_parked = hk.trap_state == TRAP_HELD;
        pthread_mutex_unlock(&hk.mu);
    }
    /* Release thread 1 (and disarm the trap if it never fired). */
    pthread_mutex_lock(&hk.mu);
    atomic_store(&hk.trap_armed, 0);
    hk.trap_release = 1;
    pthread_cond_broadcast(&hk.cv);
    pthread_mutex_unlock(&hk.mu);
    pthread_join(th1, NULL);
    if (parked)
        pthread_join(th2, NULL);
    bool expired = hk.trap_expired;
    hook_reset();

    if (c->t1 != NL_READ)
        memcpy(model + a_off, d1, a_len);
    if (parked && c->t2 != NL_READ)
        memcpy(model + b_off, d2, b_len);
    char t1err[512], t2err[512];
    snprintf(t1err, sizeof(t1err), "%s", t1.err);
    snprintf(t2err, sizeof(t2err), "%s", t2.err);
    if (parked && t2_in_time && t1_still_parked && t1err[0] == '\0' && t2err[0] == '\0') {
        check_disk(img, model, size, "after both threads");
        assert_int_equal(addcow_close(img), 0);
        img = tu_open_ok(f.acow, ADDCOW_OPEN_RDONLY, NULL);
        check_disk(img, model, size, "after close and reopen");
    }
    addcow_close(img);
    addcow_options_free(o);
    free(model);
    free(pre);
    free(d1);
    free(d2);
    fx_free(&f);
    pthread_mutex_destroy(&mu);
    pthread_cond_destroy(&cv);
    wd_stop();

    if (!parked)
        fail_msg("%s: thread 1's %s of the %s at A was never seen by the backend (test setup)",
                 c->name, c->trap_write ? "write" : "read",
                 c->trap_role == ROLE_IMAGE ? "image file" : "backing file");
    if (!t2_in_time)
        fail_msg("%s: thread 2 on region B did not finish within %d ms while thread 1's "
                 "request on region A was parked inside the backend: a lock is held across "
                 "I/O that covers more than A's sectors", c->name, MUST_FINISH_MS);
    if (!t1_still_parked)
        fail_msg("%s: thread 1 left the trap before it was released", c->name);
    if (expired)
        fail_msg("%s: the trap expired", c->name);
    if (t1err[0] != '\0')
        fail_msg("%s: thread 1: %s", c->name, t1err);
    if (t2err[0] != '\0')
        fail_msg("%s: thread 2: %s", c->name, t2err);
}

/* ==== 5. flush concurrent with writes ======================================== *
 *
 * Writers write random unaligned ranges anywhere on the disk (the byte at
 * offset x always gets pattern(seed, x), so the final data does not depend
 * on the order), while a flusher loops: walk the allocation (W0), flush,
 * read the on-disk bitmap (D), walk again (W1).  A flush makes every
 * completed write durable, and a bit reaches the disk only for a sector
 * that is allocated: W0 <= D <= W1 every time.  At the end, after a final
 * flush, D is exactly the set of sectors the writers touched, and the data
 * survives close and reopen.  The writethrough variant also flushes from
 * every writer after each write.
 */

#define FL_T 3

struct fl_shared {
    addcow_image *img;
    const char *acow;
    uint64_t size, bsize, sectors;
    uint32_t pat;
    unsigned char *written;     /* one byte per disk byte; set atomically */
    atomic_bool stop;
    struct errbox eb;
    atomic_uint flushes;
    unsigned min_flushes;       /* writers go on until this many flushes ran */
    atomic_uint writes;
};

struct fl_writer {
    struct fl_shared *sh;
    uint64_t rng;
    unsigned iters;
};

static void *fl_writer_run(void *arg)
{
    struct fl_writer *w = arg;
    struct fl_shared *sh = w->sh;
    unsigned char buf[4096];

    /* At least iters writes, and more (up to 50 times as many) until the
     * flusher has run min_flushes times alongside them. */
    for (unsigned it = 0; (it < w->iters || (atomic_load(&sh->flushes) < sh->min_flushes &&
                                            it < 50 * w->iters)) && !eb_any(&sh->eb); it++) {
        uint64_t o = tu_rand_below(&w->rng, sh->size);
        size_t l = (size_t)(1 + tu_rand_below(&w->rng, tu_min_u64(sizeof(buf), sh->size - o)));
        tu_fill_pattern(buf, l, sh->pat, o);
        int64_t r = addcow_pwrite(sh->img, buf, l, o);
        if (r != (int64_t)l) {
            eb_add(&sh->eb, "write of %zu at %" PRIu64 " returned %" PRId64 ": %s", l, o, r,
                   addcow_last_error());
            break;
        }
        for (size_t i = 0; i < l; i++)
            __atomic_store_n(&sh->written[o + i], 1, __ATOMIC_RELAXED);
        atomic_fetch_add(&sh->writes, 1);
    }
    return NULL;
}

static void *fl_flusher_run(void *arg)
{
    struct fl_shared *sh = arg;
    unsigned char *w0 = malloc(sh->sectors), *d = malloc(sh->sectors), *w1 = malloc(sh->sectors);
    char why[512];

    if (w0 == NULL || d == NULL || w1 == NULL) {
        eb_add(&sh->eb, "flusher: out of memory");
        goto out;
    }
    do {
        if (walk_disk(sh->img, sh->size, sh->bsize, w0, why, sizeof(why)) < 0) {
            eb_add(&sh->eb, "flusher: walk before flush %u: %s", atomic_load(&sh->flushes), why);
            break;
        }
        int r = addcow_flush(sh->img);
        if (r != 0) {
            eb_add(&sh->eb, "flusher: flush %u: %d: %s", atomic_load(&sh->flushes), r,
                   addcow_last_error());
            break;
        }
        if (read_disk_bitmap(sh->acow, sh->sectors, d, why, sizeof(why)) != 0) {
            eb_add(&sh->eb, "flusher: after flush %u: %s", atomic_load(&sh->flushes), why);
            break;
        }
        if (walk_disk(sh->img, sh->size, sh->bsize, w1, why, sizeof(why)) < 0) {
            eb_add(&sh->eb, "flusher: walk after flush %u: %s", atomic_load(&sh->flushes), why);
            break;
        }
        for (uint64_t s = 0; s < sh->sectors; s++) {
            if (w0[s] && !d[s]) {
                eb_add(&sh->eb, "flush %u: sector %" PRIu64 " was allocated before the flush "
                       "but its bit is not on disk after it", atomic_load(&sh->flushes), s);
                break;
            }
            if (d[s] && !w1[s]) {
                eb_add(&sh->eb, "flush %u: sector %" PRIu64 "'s bit is on disk but the sector "
                       "is not allocated", atomic_load(&sh->flushes), s);
                break;
            }
        }
        atomic_fetch_add(&sh->flushes, 1);
    } while (!atomic_load(&sh->stop) && !eb_any(&sh->eb));
out:
    free(w0);
    free(d);
    free(w1);
    return NULL;
}

static void flush_concurrent(const char *tag, uint64_t size, const char *cache, unsigned iters,
                             unsigned min_flushes)
{
    wd_start(tag);
    uint64_t seed = tu_seed(tag);
    uint64_t bsize = size / 8 + 333;
    struct fx f;
    struct fl_shared sh;
    struct fl_writer w[FL_T];
    pthread_t th[FL_T], fl;

    fx_make(&f, tag, size, bsize, (uint32_t)seed);
    addcow_options *o = addcow_options_new();
    assert_non_null(o);
    assert_int_equal(addcow_options_set(o, "cache", cache), 0);
    memset(&sh, 0, sizeof(sh));
    sh.img = tu_open_ok(f.acow, ADDCOW_OPEN_RDWR, o);
    sh.acow = f.acow;
    sh.size = size;
    sh.bsize = bsize;
    sh.sectors = size / SECTOR;
    sh.pat = (uint32_t)(seed >> 11) ^ 0x5eed;
    sh.written = calloc(size, 1);
    assert_non_null(sh.written);
    atomic_init(&sh.stop, false);
    atomic_init(&sh.flushes, 0);
    atomic_init(&sh.writes, 0);
    sh.min_flushes = min_flushes;
    eb_init(&sh.eb);
    start_thread(&fl, fl_flusher_run, &sh);
    for (unsigned i = 0; i < FL_T; i++) {
        w[i].sh = &sh;
        w[i].rng = seed * (2 * i + 9) + 3;
        w[i].iters = iters;
        start_thread(&th[i], fl_writer_run, &w[i]);
    }
    for (unsigned i = 0; i < FL_T; i++)
        pthread_join(th[i], NULL);
    atomic_store(&sh.stop, true);
    pthread_join(fl, NULL);
    printf("# %s: %u flushes ran alongside %u writes\n", tag, atomic_load(&sh.flushes),
           atomic_load(&sh.writes));
    eb_check(&sh.eb, tag);

    unsigned char *want = calloc(sh.sectors, 1), *got = malloc(sh.sectors);
    unsigned char *model = malloc(size);
    assert_non_null(want);
    assert_non_null(got);
    assert_non_null(model);
    for (uint64_t i = 0; i < size; i++) {
        model[i] = sh.written[i] ? tu_pattern(sh.pat, i) : f.init[i];
        want[i / SECTOR] |= sh.written[i];
    }
    assert_int_equal(addcow_flush(sh.img), 0);
    check_disk_bitmap(f.acow, sh.sectors, got, want, "on-disk bitmap after the final flush");
    assert_int_equal(addcow_get_allocated_bytes(sh.img), count_set(want, sh.sectors) * SECTOR);
    check_disk(sh.img, model, size, "after the writers");
    assert_int_equal(addcow_close(sh.img), 0);
    check_disk_bitmap(f.acow, sh.sectors, got, want, "on-disk bitmap after close");
    check_reopened(f.acow, model, size, -1);
    addcow_options_free(o);
    free(want);
    free(got);
    free(model);
    free(sh.written);
    fx_free(&f);
    wd_stop();
}

static void test_flush_concurrent_writeback(void **state)
{
    (void)state;
    /* 16 MiB: 8 dirty blocks of the bitmap (512 bytes = 4096 sectors each). */
    flush_concurrent("flush-writeback", 16 * 1024 * 1024, "writeback", tu_scale(3000), 12);
}

static void test_flush_concurrent_writethrough(void **state)
{
    (void)state;
    flush_concurrent("flush-writethrough", 4 * 1024 * 1024, "writethrough", tu_scale(60), 30);
}

/* ==== 6. reads racing an allocating write ==================================== *
 *
 * One thread writes an unaligned range over 1 to 8 unallocated sectors
 * while two readers read those sectors in a loop.  Every sector a reader
 * sees must be, as a whole, either what it read before (backing data or
 * zeros) or what it reads after (the copy-on-write result): never zeros
 * from the image file, never a mixture.  Once a reader has seen the new
 * sector it never sees the old one again, and a read that starts after the
 * write returned sees only new sectors.
 */

#define AR_READERS 2
#define AR_MAX_SECTORS 8

struct ar_shared {
    addcow_image *img;
    pthread_barrier_t start, done;
    bool stop;
    uint64_t s0, ns;
    uint64_t woff;
    size_t wlen;
    unsigned char wbuf[AR_MAX_SECTORS * SECTOR];
    unsigned char oldv[AR_MAX_SECTORS * SECTOR], newv[AR_MAX_SECTORS * SECTOR];
    atomic_int written;
    int64_t wret;
    struct errbox eb;
    atomic_uint mixed_reads;    /* reads that saw old and new sectors at once */
    atomic_uint old_reads;      /* reads that saw some old sector */
};

static void *ar_writer_run(void *arg)
{
    struct ar_shared *sh = arg;
    for (;;) {
        pthread_barrier_wait(&sh->start);
        if (sh->stop)
            break;
        sh->wret = addcow_pwrite(sh->img, sh->wbuf, sh->wlen, sh->woff);
        atomic_store(&sh->written, 1);
        pthread_barrier_wait(&sh->done);
    }
    return NULL;
}

static void *ar_reader_run(void *arg)
{
    struct ar_shared *sh = arg;
    unsigned char buf[AR_MAX_SECTORS * SECTOR];
    for (;;) {
        pthread_barrier_wait(&sh->start);
        if (sh->stop)
            break;
        bool seen_new[AR_MAX_SECTORS] = { false };
        bool failed = false;
        for (unsigned reads = 0; !failed; reads++) {
            int after = atomic_load(&sh->written);
            size_t len = (size_t)(sh->ns * SECTOR);
            int64_t g = addcow_pread(sh->img, buf, len, sh->s0 * SECTOR);
            if (g != (int64_t)len) {
                eb_add(&sh->eb, "read of sectors %" PRIu64 "+%" PRIu64 " returned %" PRId64,
                       sh->s0, sh->ns, g);
                break;
            }
            unsigned nold = 0, nnew = 0;
            for (unsigned k = 0; k < sh->ns && !failed; k++) {
                const unsigned char *p = buf + k * SECTOR;
                if (memcmp(p, sh->newv + k * SECTOR, SECTOR) == 0) {
                    seen_new[k] = true;
                    nnew++;
                } else if (memcmp(p, sh->oldv + k * SECTOR, SECTOR) == 0) {
                    nold++;
                    if (seen_new[k] || after) {
                        eb_add(&sh->eb, "sector %" PRIu64 " read as before the write %s (read %u)",
                               sh->s0 + k, after ? "after the write had returned"
                               : "after this reader had seen it written", reads);
                        failed = true;
                    }
                } else {
                    eb_add(&sh->eb, "sector %" PRIu64 " read as neither its old nor its new "
                           "contents during an allocating write (read %u)", sh->s0 + k, reads);
                    failed = true;
                }
            }
            if (nold != 0 && nnew != 0)
                atomic_fetch_add(&sh->mixed_reads, 1);
            if (nold != 0)
                atomic_fetch_add(&sh->old_reads, 1);
            if (after)
                break;
        }
        pthread_barrier_wait(&sh->done);
    }
    return NULL;
}

static void reads_during_allocation(const char *tag, unsigned rounds, unsigned delay_us)
{
    wd_start(tag);
    uint64_t rng = tu_seed(tag);
    addcow_options *o = NULL;
    const uint64_t sectors = (uint64_t)rounds * (AR_MAX_SECTORS + 4) + 16;
    const uint64_t size = sectors * SECTOR, bsize = size * 2 / 3 + 17;
    struct fx f;
    pthread_t wt, rt[AR_READERS];
    struct ar_shared *sh = calloc(1, sizeof(*sh));

    assert_non_null(sh);
    fx_make(&f, tag, size, bsize, (uint32_t)rng);
    if (delay_us != 0) {
        o = hook_options();
        hk.image_write_delay_us = delay_us;
        hk.backing_read_delay_us = delay_us;
    }
    sh->img = tu_open_ok(f.acow, ADDCOW_OPEN_RDWR, o);
    eb_init(&sh->eb);
    atomic_init(&sh->written, 0);
    atomic_init(&sh->mixed_reads, 0);
    atomic_init(&sh->old_reads, 0);
    assert_int_equal(pthread_barrier_init(&sh->start, NULL, AR_READERS + 2), 0);
    assert_int_equal(pthread_barrier_init(&sh->done, NULL, AR_READERS + 2), 0);
    unsigned char *model = malloc(size);
    assert_non_null(model);
    memcpy(model, f.init, size);
    start_thread(&wt, ar_writer_run, sh);
    for (unsigned i = 0; i < AR_READERS; i++)
        start_thread(&rt[i], ar_reader_run, sh);

    uint64_t cursor = 0;
    char why[512] = "";
    for (unsigned round = 0; round < rounds && why[0] == '\0'; round++) {
        uint64_t s0 = cursor + tu_rand_below(&rng, 4);
        uint64_t ns = 1 + tu_rand_below(&rng, AR_MAX_SECTORS);
        cursor = s0 + ns;
        uint64_t head = tu_rand_below(&rng, 2) ? tu_rand_below(&rng, SECTOR) : 0;
        uint64_t tail = tu_rand_below(&rng, 2) ? tu_rand_below(&rng, SECTOR) : 0;
        if (ns == 1 && head + tail >= SECTOR)
            tail = SECTOR - 1 - head;
        sh->s0 = s0;
        sh->ns = ns;
        sh->woff = s0 * SECTOR + head;
        sh->wlen = (size_t)(ns * SECTOR - head - tail);
        memcpy(sh->oldv, model + s0 * SECTOR, ns * SECTOR);
        memcpy(sh->newv, sh->oldv, ns * SECTOR);
        for (size_t j = 0; j < sh->wlen; j++) {
            unsigned char v = (unsigned char)tu_rand(&rng);
            if (v == sh->oldv[head + j])
                v++;
            sh->wbuf[j] = v;
            sh->newv[head + j] = v;
        }
        atomic_store(&sh->written, 0);
        pthread_barrier_wait(&sh->start);
        pthread_barrier_wait(&sh->done);
        if (sh->wret != (int64_t)sh->wlen)
            snprintf(why, sizeof(why), "write of %zu at %" PRIu64 " returned %" PRId64, sh->wlen,
                     sh->woff, sh->wret);
        else if (eb_any(&sh->eb))
            snprintf(why, sizeof(why), "round %u", round);
        memcpy(model + s0 * SECTOR, sh->newv, ns * SECTOR);
    }
    sh->stop = true;
    pthread_barrier_wait(&sh->start);
    pthread_join(wt, NULL);
    for (unsigned i = 0; i < AR_READERS; i++)
        pthread_join(rt[i], NULL);
    pthread_barrier_destroy(&sh->start);
    pthread_barrier_destroy(&sh->done);
    printf("# %s: %u reads during the writes saw the old data, %u saw old and new "
           "sectors at once\n", tag, atomic_load(&sh->old_reads), atomic_load(&sh->mixed_reads));
    eb_check(&sh->eb, "reads during allocation");
    if (why[0] != '\0')
        fail_msg("%s", why);
    check_disk(sh->img, model, size, "after the rounds");
    assert_int_equal(addcow_close(sh->img), 0);
    hook_reset();
    addcow_options_free(o);
    check_reopened(f.acow, model, size, -1);
    free(model);
    free(sh);
    fx_free(&f);
    wd_stop();
}

static void test_reads_during_allocation(void **state)
{
    (void)state;
    reads_during_allocation("reads-during-allocation", tu_scale(300), 0);
}

/* With every image write and backing read slowed down, readers see many
 * sectors while their allocating write is in flight. */
static void test_reads_during_allocation_delayed(void **state)
{
    (void)state;
    reads_during_allocation("reads-during-allocation-delayed", tu_scale(60), 300);
}

/* ==== 7. neighbours allocating at once ======================================= *
 *
 * IA_T threads allocate interleaved sectors (thread i writes sectors i,
 * i + IA_T, i + 2 IA_T, ...: whole sectors, or a part of one), meeting at a
 * barrier before each group of 64 sectors, so they set bits in the same
 * 64-bit bitmap word at the same time.  No bit may be lost (a bitmap update
 * outside the lock loses one now and then here; ThreadSanitizer finds it
 * every time):
 * afterwards every one of those sectors is allocated (block_status, the
 * allocated byte count, and the on-disk bitmap after close) and reads what
 * was written.
 */

#define IA_T 4

struct ia_worker {
    addcow_image *img;
    unsigned id, per_thread;
    uint32_t pat;
    struct errbox *eb;
    pthread_barrier_t *word;    /* keeps the threads in the same bitmap word */
};

static void *ia_worker_run(void *arg)
{
    struct ia_worker *w = arg;
    unsigned char buf[SECTOR];
    bool failed = false;
    for (unsigned k = 0; k < w->per_thread; k++) {
        uint64_t s = (uint64_t)k * IA_T + w->id;
        if (k % (64 / IA_T) == 0)
            pthread_barrier_wait(w->word);
        if (failed)
            continue;
        /* Every fourth write is partial: it copies the rest of the sector. */
        unsigned head = (k % 4 == 3) ? 100 : 0;
        tu_fill_pattern(buf, SECTOR, w->pat, s * SECTOR);
        int64_t r = addcow_pwrite(w->img, buf + head, SECTOR - head, s * SECTOR + head);
        if (r != (int64_t)(SECTOR - head)) {
            eb_add(w->eb, "thread %u: write of sector %" PRIu64 ": %" PRId64 ": %s", w->id, s, r,
                   addcow_last_error());
            failed = true;
        }
    }
    return NULL;
}

static void test_interleaved_allocation(void **state)
{
    (void)state;
    wd_start(__func__);
    uint64_t seed = tu_seed("interleaved-allocation");
    unsigned per_thread = tu_scale(8192) / 16 * 16;
    const uint64_t written = (uint64_t)per_thread * IA_T, sectors = written + 64;
    const uint64_t size = sectors * SECTOR, bsize = size / 2 + 5;
    uint32_t pat = (uint32_t)seed ^ 0xA110Cu;
    struct fx f;
    struct errbox eb;
    struct ia_worker w[IA_T];
    pthread_t th[IA_T];
    pthread_barrier_t word;

    assert_int_equal(pthread_barrier_init(&word, NULL, IA_T), 0);
    fx_make(&f, "interleaved", size, bsize, (uint32_t)(seed >> 3));
    addcow_image *img = tu_open_ok(f.acow, ADDCOW_OPEN_RDWR, NULL);
    eb_init(&eb);
    for (unsigned i = 0; i < IA_T; i++) {
        w[i] = (struct ia_worker){ img, i, per_thread, pat, &eb, &word };
        start_thread(&th[i], ia_worker_run, &w[i]);
    }
    for (unsigned i = 0; i < IA_T; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&word);
    eb_check(&eb, "interleaved allocation");

    unsigned char *model = malloc(size), *want = calloc(sectors, 1), *got = malloc(sectors);
    assert_non_null(model);
    assert_non_null(want);
    assert_non_null(got);
    memcpy(model, f.init, size);
    for (uint64_t s = 0; s < written; s++) {
        unsigned head = (s / IA_T) % 4 == 3 ? 100 : 0;
        tu_fill_pattern(model + s * SECTOR + head, SECTOR - head, pat, s * SECTOR + head);
        want[s] = 1;
    }
    check_walk(img, size, bsize, got, want, "allocation (block_status)");
    assert_int_equal(addcow_get_allocated_bytes(img), (int64_t)(written * SECTOR));
    check_disk(img, model, size, "after the writers");
    assert_int_equal(addcow_close(img), 0);
    check_disk_bitmap(f.acow, sectors, got, want, "on-disk bitmap after close");
    check_reopened(f.acow, model, size, (int64_t)(written * SECTOR));
    free(model);
    free(want);
    free(got);
    fx_free(&f);
    wd_stop();
}

/* ---- main -------------------------------------------------------------------- */

#define NOLOCK_TEST(i) \
    { nl_cases[i].name, test_no_global_lock, NULL, NULL, (void *)&nl_cases[i] }

/* ==== write_zeroes over the sector of the backing file's end ================= *
 *
 * That sector reads backing data up to the backing end and zeros after it,
 * so the status walk of write_zeroes splits it in two runs.  Zeroing it
 * must still be one write (or one hole punch) of the image file: in two,
 * a write from another thread to the sector can land between them and be
 * left half zeroed (test-threads' race-zeroes found this under valgrind:
 * "thread 2's bytes [119,160): 4 its own, 37 from thread 0", the backing
 * end being at byte 123 of the sector).  Counted in the hook backend, for
 * an unallocated and an allocated sector, with and without MAY_UNMAP, and
 * for ranges that start before the sector and end inside it or after it. */
static void test_zeroes_backing_end_sector_one_write(void **state)
{
    (void)state;
    const uint64_t size = 64 * SECTOR, bend_sector = 40, bsize = bend_sector * SECTOR + 123;
    static const struct { uint64_t off, len; } ranges[] = {
        { 40 * SECTOR, SECTOR },                /* the sector alone */
        { 38 * SECTOR, 3 * SECTOR },            /* ends with it */
        { 39 * SECTOR + 100, 2 * SECTOR },      /* partial at both ends */
        { 40 * SECTOR, 24 * SECTOR },           /* to the end of the disk */
    };
    unsigned char buf[SECTOR];

    for (unsigned k = 0; k < sizeof(ranges) / sizeof(ranges[0]); k++) {
        for (unsigned v = 0; v < 4; v++) {
            bool allocated = v & 1;
            unsigned flags = v & 2 ? ADDCOW_ZEROES_MAY_UNMAP : 0;
            struct fx f;
            fx_make(&f, "bend", size, bsize, 7 + k * 4 + v);
            hook_reset();
            addcow_options *o = hook_options();
            addcow_image *img = tu_open_ok(f.acow, ADDCOW_OPEN_RDWR, o);
            if (allocated) {
                memset(buf, 0x5a, sizeof(buf));
                assert_int_equal(addcow_pwrite(img, buf, SECTOR, bend_sector * SECTOR), SECTOR);
            }
            pthread_mutex_lock(&hk.mu);
            hk.count_off = bend_sector * SECTOR;
            hk.count_len = SECTOR;
            atomic_store(&hk.count_hits, 0);
            pthread_mutex_unlock(&hk.mu);
            int r = addcow_write_zeroes(img, ranges[k].off, ranges[k].len, flags);
            unsigned hits = atomic_load(&hk.count_hits);
            if (r != 0)
                fail_msg("write_zeroes(%" PRIu64 ", %" PRIu64 ", %u): %d: %s", ranges[k].off,
                         ranges[k].len, flags, r, addcow_last_error());
            if (hits != 1)
                fail_msg("write_zeroes(%" PRIu64 ", %" PRIu64 ", %s) over the backing end's "
                         "sector (%s): %u image file writes or punches touch that sector, "
                         "expected one", ranges[k].off, ranges[k].len,
                         flags ? "MAY_UNMAP" : "0", allocated ? "allocated" : "unallocated",
                         hits);
            /* and the disk reads as the call says */
            unsigned char *model = malloc(size);
            assert_non_null(model);
            memcpy(model, f.init, size);
            if (allocated)
                memset(model + bend_sector * SECTOR, 0x5a, SECTOR);
            memset(model + ranges[k].off, 0, ranges[k].len);
            check_disk(img, model, size, "after write_zeroes over the backing end");
            free(model);
            assert_int_equal(addcow_close(img), 0);
            addcow_options_free(o);
            hook_reset();
            fx_free(&f);
        }
    }
}

int main(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = wd_fired;
    sigaction(SIGALRM, &sa, NULL);
    tu_scratch();

    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cow_race_partial),
        cmocka_unit_test(test_cow_race_whole_and_partial),
        cmocka_unit_test(test_cow_race_zeroes_and_partial),
        cmocka_unit_test(test_zeroes_backing_end_sector_one_write),
        cmocka_unit_test(test_cow_race_delayed_backend),
        cmocka_unit_test(test_cow_race_cache_none),
        cmocka_unit_test(test_race_checker_catches_unlocked_rmw),
        cmocka_unit_test(test_mixed_stress),
        cmocka_unit_test(test_overlapping_writers),
        cmocka_unit_test(test_overlapping_writers_cache_none),
        NOLOCK_TEST(0),
        NOLOCK_TEST(1),
        NOLOCK_TEST(2),
        NOLOCK_TEST(3),
        NOLOCK_TEST(4),
        NOLOCK_TEST(5),
        NOLOCK_TEST(6),
        NOLOCK_TEST(7),
        NOLOCK_TEST(8),
        NOLOCK_TEST(9),
        NOLOCK_TEST(10),
        NOLOCK_TEST(11),
        cmocka_unit_test(test_flush_concurrent_writeback),
        cmocka_unit_test(test_flush_concurrent_writethrough),
        cmocka_unit_test(test_reads_during_allocation),
        cmocka_unit_test(test_reads_during_allocation_delayed),
        cmocka_unit_test(test_interleaved_allocation),
    };
    _Static_assert(sizeof(nl_cases) / sizeof(nl_cases[0]) == 12, "one NOLOCK_TEST per case");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
