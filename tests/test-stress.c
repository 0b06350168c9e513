/*
 * test-stress.c: eight threads doing random mixed operations on ONE handle
 * (reads, unaligned writes, write_zeroes, flush, block_status), checked
 * against a model that accepts only serializable outcomes.
 *
 * The model.  The disk is cut into non-overlapping ranges of random,
 * mostly unaligned lengths (1 byte to a few KiB; a range may end inside a
 * sector, so writes have partial first and last sectors and copy-on-write
 * over the raw backing file).  Every write and write_zeroes covers whole
 * ranges (1 to 4 of them); a write stamps its bytes with its own pattern
 * (a unique stamp per operation), write_zeroes with zeros.  Each call is
 * timed with a global counter taken just before it is made and just after
 * it returns, so "a returned before b was made" is known exactly.
 *
 * The unit of atomicity is the piece: a range cut at sector boundaries
 * (API.md promises nothing per call; a disk's promise is per sector, and
 * write_zeroes walks the range as runs of block status, so it is several
 * writes).  Checked after the threads are joined:
 *   - every piece that a read returned equals the piece of the initial
 *     content or of one write to its range, a write that had started
 *     before the read returned and that was not wholly replaced (another
 *     write to the range made after it returned, and returning before the
 *     read was made) - no torn, stale or invented data.  Only a read that
 *     ran while a write to the same range was in flight may return a
 *     piece that mixes such contents (each byte still one of theirs): a
 *     read from the page cache copies while the write copies into the
 *     same page (seen here: the piece's first bytes from the write before,
 *     the rest from the one in flight), and the library does not lock
 *     reads against writes (rangelock.h);
 *   - the final content: each piece equals one of the range's *maximal*
 *     writes (writes after whose return no other write to that range was
 *     made), or the initial content if the range was never written;
 *     where the range's overlapping writes were all plain writes (each one
 *     call into the image file, which the kernel serializes), the whole
 *     range equals one maximal write (not with cache=none: two O_DIRECT
 *     writes are not serialized, a device promises atomicity per sector);
 *   - every block_status answer agrees with the writes: a sector reported
 *     unallocated had no write (that allocates it) returned before the call
 *     was made; a sector reported allocated had one started before the call
 *     returned; flags are exactly ALLOCATED, ZERO (past the backing file's
 *     end) or 0;
 *   - the final allocation is exactly the sectors that writes touched (and
 *     write_zeroes below the backing file's end; past it, unallocated
 *     sectors stay unallocated), walked as maximal runs;
 *   - after flush, close and reopen, the same content and allocation.
 *
 * Randomized: the seed is printed (AC_SEED=<n> replays the operations; not
 * the interleaving).  AC_TEST_SCALE scales the operation count.  Runs under
 * ThreadSanitizer with `make check-tsan` (configure --enable-tsan).
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "addcow.h"
#include "testutil.h"

#define SECTOR 512u
#define NTHREADS 8
#define BACKING_SIZE (192u * 1024)          /* sector-aligned */
#define DISK_SIZE (256u * 1024)             /* the last 64 KiB read as zeros */
#define BACKING_SECTORS (BACKING_SIZE / SECTOR)
#define DISK_SECTORS (DISK_SIZE / SECTOR)
#define HOT_RANGES 6                        /* 60% of the operations go here */
#define MAX_READ 3072u
#define MAX_STATUS (64u * 1024)
#define MAX_WRITE (16u * 1024)              /* 4 ranges of at most 3000 bytes */
#define WATCHDOG_SECONDS 900                /* a deadlock, even under valgrind */
#define MAX_REPORTS 8

#define STR_(x) #x
#define STR(x) STR_(x)

enum op_kind { OP_READ, OP_WRITE, OP_ZERO, OP_STATUS, OP_FLUSH };

struct op {
    enum op_kind kind;
    unsigned flags;                 /* OP_ZERO: ADDCOW_ZEROES_MAY_UNMAP or 0 */
    uint32_t r0, nr;                /* OP_WRITE, OP_ZERO: ranges [r0, r0 + nr) */
    uint64_t off, len;              /* bytes */
    uint32_t stamp;                 /* OP_WRITE: its pattern */
    /* Filled in by the thread that runs it. */
    uint64_t t0, t1;                /* the clock before the call, after it */
    size_t data_at;                 /* OP_READ: where its bytes are in the arena */
    int status;                     /* OP_STATUS: the flags */
    uint64_t run;                   /* OP_STATUS: the run length */
    bool done;
};

struct range {
    uint64_t off, len;
    uint32_t *writes;               /* ids of the writes and write_zeroes over it */
    uint32_t nwrites, cap;
};

struct worker {
    struct stress *s;
    unsigned idx;
    struct op *ops;
    unsigned char *arena;           /* the bytes of this thread's reads */
    pthread_t th;
    char err[512];
};

struct stress {
    addcow_image *img;
    uint32_t backing_seed;
    struct range *ranges;
    uint32_t nranges;
    uint32_t *range_of_byte;        /* DISK_SIZE entries: which range holds a byte */
    unsigned nops;                  /* per thread */
    struct worker w[NTHREADS];
    /* The sectors' allocating operations: writes touching the sector, and
     * write_zeroes touching it below the backing file's end. */
    uint32_t *alloc_ops[DISK_SECTORS];
    uint32_t alloc_n[DISK_SECTORS], alloc_cap[DISK_SECTORS];
    atomic_uint_fast64_t clock;
    pthread_barrier_t start;
    unsigned failures;
    char first_failure[1024];
    unsigned mixed_pieces;          /* read while written, a mix of contents */
    bool whole_ranges;              /* check final ranges whole, not only pieces */
};

/* ---- watchdog ---------------------------------------------------------------- */

static void wd_fired(int sig)
{
    static const char msg[] = "test-stress: watchdog: still running after "
                              STR(WATCHDOG_SECONDS) " s: a deadlock in the library\n";
    (void)sig;
    if (write(2, msg, sizeof(msg) - 1) < 0) {
        /* nothing more to do */
    }
    _exit(1);
}

/* ---- helpers ---------------------------------------------------------------- */

static void push_u32(uint32_t **v, uint32_t *n, uint32_t *cap, uint32_t x)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 8;
        *v = realloc(*v, *cap * sizeof(**v));
        assert_non_null(*v);
    }
    (*v)[(*n)++] = x;
}

static struct op *op_by_id(struct stress *s, uint32_t id)
{
    return &s->w[id / s->nops].ops[id % s->nops];
}

/* The byte that the write stamped `stamp` puts at `off`: a hash of both
 * (tu_pattern's seed only XORs a constant byte into one fixed sequence,
 * too weak to tell writes apart or to see a mix of two of them). */
static unsigned char stamp_byte(uint32_t stamp, uint64_t off)
{
    uint64_t z = off + (uint64_t)stamp * UINT64_C(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return (unsigned char)(z ^ (z >> 31));
}

static void fill_stamp(unsigned char *buf, size_t len, uint32_t stamp, uint64_t off)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = stamp_byte(stamp, off + i);
}

/* The byte at `off` of the initial disk. */
static unsigned char initial_byte(const struct stress *s, uint64_t off)
{
    return off < BACKING_SIZE ? tu_pattern(s->backing_seed, off) : 0;
}

/* 1 if buf (the bytes at [off, off + len)) equals what op w writes there;
 * w NULL: the initial content. */
static bool payload_eq(const struct stress *s, const struct op *w, const unsigned char *buf,
                       uint64_t off, uint64_t len)
{
    for (uint64_t i = 0; i < len; i++) {
        unsigned char want = w == NULL ? initial_byte(s, off + i)
                           : w->kind == OP_ZERO ? 0 : stamp_byte(w->stamp, off + i);
        if (buf[i] != want)
            return false;
    }
    return true;
}

/* True if write w (NULL: the initial content) of range r had been wholly
 * replaced before time t: another write to r was made after w returned and
 * returned itself before t. */
static bool replaced_before(struct stress *s, const struct range *r, const struct op *w,
                            uint64_t t)
{
    for (uint32_t i = 0; i < r->nwrites; i++) {
        const struct op *w2 = op_by_id(s, r->writes[i]);
        if (w2 == w)
            continue;
        if ((w == NULL || w->t1 < w2->t0) && w2->t1 < t)
            return true;
    }
    return false;
}

static void failure(struct stress *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void failure(struct stress *s, const char *fmt, ...)
{
    va_list ap;
    if (s->failures++ >= MAX_REPORTS)
        return;
    va_start(ap, fmt);
    char line[1024];
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    print_message("# FAIL: %s\n", line);
    if (s->failures == 1)
        snprintf(s->first_failure, sizeof(s->first_failure), "%s", line);
}

/* True if op w (NULL: the initial content) is a content that a read of
 * range r made at t0 and returned at t1 may see: w had been made before
 * t1 and not wholly replaced before t0. */
static bool visible(struct stress *s, const struct range *r, const struct op *w, uint64_t t0,
                    uint64_t t1)
{
    return (w == NULL || w->t0 < t1) && !replaced_before(s, r, w, t0);
}

/* Checks a piece [off, off + len) of range r, whose bytes are buf, seen by a
 * read made at t0 that returned at t1 (the final check: t0 = t1 = the end
 * of time).  The piece must be one visible content, whole; only where a
 * write to the range was in flight during the read may it be a mix, byte
 * by byte, of visible contents (the page cache gives no more: a buffered
 * read copies a page while a write into it copies too).  Returns false
 * after reporting a failure. */
static bool check_piece(struct stress *s, uint32_t ri, const unsigned char *buf, uint64_t off,
                        uint64_t len, uint64_t t0, uint64_t t1, const char *what)
{
    const struct range *r = &s->ranges[ri];
    unsigned matches = 0;
    bool racing = false;
    if (payload_eq(s, NULL, buf, off, len)) {
        matches++;
        if (visible(s, r, NULL, t0, t1))
            return true;
    }
    for (uint32_t i = 0; i < r->nwrites; i++) {
        const struct op *w = op_by_id(s, r->writes[i]);
        racing |= w->t0 < t1 && t0 < w->t1;
        if (!payload_eq(s, w, buf, off, len))
            continue;
        matches++;
        if (visible(s, r, w, t0, t1))
            return true;
    }
    uint64_t bad = len;
    if (racing) {
        for (bad = 0; bad < len; bad++) {
            bool ok = payload_eq(s, NULL, buf + bad, off + bad, 1) &&
                      visible(s, r, NULL, t0, t1);
            for (uint32_t i = 0; i < r->nwrites && !ok; i++) {
                const struct op *w = op_by_id(s, r->writes[i]);
                ok = payload_eq(s, w, buf + bad, off + bad, 1) && visible(s, r, w, t0, t1);
            }
            if (!ok)
                break;
        }
        if (bad == len) {
            s->mixed_pieces++;
            return true;
        }
    }
    char cands[256] = "";
    size_t used = 0;
    for (uint32_t i = 0; i < r->nwrites && used + 48 < sizeof(cands); i++) {
        const struct op *w = op_by_id(s, r->writes[i]);
        used += (size_t)snprintf(cands + used, sizeof(cands) - used, " %s[%" PRIu64 ",%" PRIu64 "]",
                                 w->kind == OP_ZERO ? "z" : "w", w->t0, w->t1);
    }
    char why[128];
    if (racing)
        snprintf(why, sizeof(why), "byte %" PRIu64 " is no visible content's, though writes "
                 "were in flight", off + bad);
    else
        snprintf(why, sizeof(why), "%s", matches == 0
                 ? "torn: neither the initial content nor any one write's bytes"
                 : "stale or early: matches only writes replaced before, or made after");
    failure(s, "%s: bytes [%" PRIu64 ", %" PRIu64 ") of range %u [%" PRIu64 ", +%" PRIu64 ") "
            "at time [%" PRIu64 ", %" PRIu64 "]: %s (%u writes to the range:%s%s)",
            what, off, off + len, ri, r->off, r->len, t0, t1, why, r->nwrites, cands,
            used + 48 >= sizeof(cands) ? " ..." : "");
    return false;
}

/* Checks the bytes [off, off + len), buf, against the model, piece by
 * piece. */
static void check_bytes(struct stress *s, const unsigned char *buf, uint64_t off, uint64_t len,
                        uint64_t t0, uint64_t t1, const char *what)
{
    uint64_t end = off + len;
    while (off < end) {
        uint32_t ri = s->range_of_byte[off];
        const struct range *r = &s->ranges[ri];
        uint64_t pe = (off / SECTOR + 1) * SECTOR;
        if (pe > r->off + r->len)
            pe = r->off + r->len;
        if (pe > end)
            pe = end;
        check_piece(s, ri, buf, off, pe - off, t0, t1, what);
        buf += pe - off;
        off = pe;
    }
}

/* ---- setup -------------------------------------------------------------------- */

static void make_ranges(struct stress *s, uint64_t *rng)
{
    uint32_t cap = 0;
    s->nranges = 0;
    s->ranges = NULL;
    s->range_of_byte = malloc(DISK_SIZE * sizeof(uint32_t));
    assert_non_null(s->range_of_byte);
    for (uint64_t pos = 0; pos < DISK_SIZE;) {
        uint64_t len;
        unsigned pick = (unsigned)tu_rand_below(rng, 100);
        if (pick < 15)
            len = 1 + tu_rand_below(rng, 40);                   /* tiny */
        else if (pick < 60)
            len = 41 + tu_rand_below(rng, 600);                 /* inside a sector or two */
        else if (pick < 85)
            len = SECTOR - pos % SECTOR + SECTOR * tu_rand_below(rng, 3);  /* ends aligned */
        else
            len = 600 + tu_rand_below(rng, 2400);
        if (len > DISK_SIZE - pos)
            len = DISK_SIZE - pos;
        if (s->nranges == cap) {
            cap = cap ? cap * 2 : 256;
            s->ranges = realloc(s->ranges, cap * sizeof(*s->ranges));
            assert_non_null(s->ranges);
        }
        s->ranges[s->nranges] = (struct range){ .off = pos, .len = len };
        for (uint64_t b = pos; b < pos + len; b++)
            s->range_of_byte[b] = s->nranges;
        s->nranges++;
        pos += len;
    }
}

/* A range index: mostly in the hot zone (a few ranges just below the
 * backing file's end), for many writes to the same range at once. */
static uint32_t pick_range(struct stress *s, uint64_t *rng)
{
    uint32_t hot0 = s->range_of_byte[BACKING_SIZE - 2048];
    if (hot0 + HOT_RANGES > s->nranges)
        hot0 = s->nranges > HOT_RANGES ? s->nranges - HOT_RANGES : 0;
    if (tu_rand_below(rng, 10) < 6)
        return hot0 + (uint32_t)tu_rand_below(rng, tu_min_u64(HOT_RANGES, s->nranges - hot0));
    return (uint32_t)tu_rand_below(rng, s->nranges);
}

static uint64_t pick_offset(struct stress *s, uint64_t *rng)
{
    return s->ranges[pick_range(s, rng)].off + tu_rand_below(rng, 512);
}

static void make_ops(struct stress *s, unsigned t, uint64_t *rng, unsigned mix_flush)
{
    struct worker *w = &s->w[t];
    w->ops = calloc(s->nops, sizeof(*w->ops));
    assert_non_null(w->ops);
    size_t arena = 0;
    for (unsigned i = 0; i < s->nops; i++) {
        struct op *o = &w->ops[i];
        unsigned pick = (unsigned)tu_rand_below(rng, 100);
        if (pick < 34) {
            o->kind = OP_READ;
            o->off = tu_min_u64(pick_offset(s, rng), DISK_SIZE - 1);
            o->len = tu_min_u64(1 + tu_rand_below(rng, MAX_READ), DISK_SIZE - o->off);
            o->data_at = arena;
            arena += o->len;
        } else if (pick < 82) {
            o->kind = pick < 70 ? OP_WRITE : OP_ZERO;
            o->r0 = pick_range(s, rng);
            unsigned k = (unsigned)tu_rand_below(rng, 20);
            o->nr = k < 10 ? 1 : k < 15 ? 2 : k < 18 ? 3 : 4;
            if (o->r0 + o->nr > s->nranges)
                o->nr = s->nranges - o->r0;
            o->off = s->ranges[o->r0].off;
            o->len = s->ranges[o->r0 + o->nr - 1].off + s->ranges[o->r0 + o->nr - 1].len - o->off;
            assert_true(o->len <= MAX_WRITE);
            o->stamp = (uint32_t)((t + 1) << 24 | i);     /* unique */
            if (o->kind == OP_ZERO)
                o->flags = tu_rand_below(rng, 2) ? ADDCOW_ZEROES_MAY_UNMAP : 0;
        } else if (pick < 100 - mix_flush) {
            o->kind = OP_STATUS;
            o->off = tu_min_u64(pick_offset(s, rng), DISK_SIZE - 1);
            o->len = tu_min_u64(1 + tu_rand_below(rng, MAX_STATUS), DISK_SIZE - o->off);
        } else {
            o->kind = OP_FLUSH;
        }
    }
    w->arena = malloc(arena ? arena : 1);
    assert_non_null(w->arena);
}

/* Indexes the writes by range and by sector. */
static void index_ops(struct stress *s)
{
    for (unsigned t = 0; t < NTHREADS; t++) {
        for (unsigned i = 0; i < s->nops; i++) {
            const struct op *o = &s->w[t].ops[i];
            uint32_t id = t * s->nops + i;
            if (o->kind != OP_WRITE && o->kind != OP_ZERO)
                continue;
            for (uint32_t r = o->r0; r < o->r0 + o->nr; r++)
                push_u32(&s->ranges[r].writes, &s->ranges[r].nwrites, &s->ranges[r].cap, id);
            for (uint64_t x = o->off / SECTOR; x < (o->off + o->len + SECTOR - 1) / SECTOR; x++)
                if (o->kind == OP_WRITE || x < BACKING_SECTORS)
                    push_u32(&s->alloc_ops[x], &s->alloc_n[x], &s->alloc_cap[x], id);
        }
    }
}

/* ---- the workers ---------------------------------------------------------------- */

static void *worker_run(void *arg)
{
    struct worker *w = arg;
    struct stress *s = w->s;
    unsigned char *wbuf = malloc(MAX_WRITE);
    pthread_barrier_wait(&s->start);
    if (wbuf == NULL) {
        snprintf(w->err, sizeof(w->err), "out of memory");
        return NULL;
    }
    for (unsigned i = 0; i < s->nops; i++) {
        struct op *o = &w->ops[i];
        int64_t r = 0, want = 0;
        if (o->kind == OP_WRITE)
            fill_stamp(wbuf, (size_t)o->len, o->stamp, o->off);
        o->t0 = atomic_fetch_add(&s->clock, 1);
        switch (o->kind) {
        case OP_READ:
            r = addcow_pread(s->img, w->arena + o->data_at, (size_t)o->len, o->off);
            want = (int64_t)o->len;
            break;
        case OP_WRITE:
            r = addcow_pwrite(s->img, wbuf, (size_t)o->len, o->off);
            want = (int64_t)o->len;
            break;
        case OP_ZERO:
            r = addcow_write_zeroes(s->img, o->off, o->len, o->flags);
            break;
        case OP_STATUS:
            r = o->status = addcow_block_status(s->img, o->off, o->len, &o->run);
            want = r < 0 ? 0 : r;
            break;
        case OP_FLUSH:
            r = addcow_flush(s->img);
            break;
        }
        o->t1 = atomic_fetch_add(&s->clock, 1);
        if (r != want) {
            snprintf(w->err, sizeof(w->err), "thread %u, operation %u (kind %d, %" PRIu64
                     " bytes at %" PRIu64 "): returned %" PRId64 ", not %" PRId64 ": %s",
                     w->idx, i, (int)o->kind, o->len, o->off, r, want, addcow_last_error());
            break;
        }
        o->done = true;
    }
    free(wbuf);
    return NULL;
}

/* ---- checks after the run --------------------------------------------------------- */

static void check_reads(struct stress *s)
{
    unsigned n = 0;
    for (unsigned t = 0; t < NTHREADS; t++) {
        for (unsigned i = 0; i < s->nops; i++) {
            const struct op *o = &s->w[t].ops[i];
            if (o->kind != OP_READ || !o->done)
                continue;
            check_bytes(s, s->w[t].arena + o->data_at, o->off, o->len, o->t0, o->t1,
                        "a read during the run");
            n++;
        }
    }
    /* How much the run overlapped: reads and writes of one range in flight
     * at once (the interesting cases; a run without them proves little). */
    unsigned racing_reads = 0, racing_writes = 0;
    for (uint32_t ri = 0; ri < s->nranges; ri++) {
        const struct range *r = &s->ranges[ri];
        for (uint32_t i = 0; i < r->nwrites; i++) {
            const struct op *a = op_by_id(s, r->writes[i]);
            for (uint32_t j = i + 1; j < r->nwrites; j++) {
                const struct op *b = op_by_id(s, r->writes[j]);
                racing_writes += a->t0 < b->t1 && b->t0 < a->t1;
            }
        }
    }
    for (unsigned t = 0; t < NTHREADS; t++) {
        for (unsigned i = 0; i < s->nops; i++) {
            const struct op *o = &s->w[t].ops[i];
            if (o->kind != OP_READ || !o->done)
                continue;
            bool racing = false;
            for (uint32_t ri = s->range_of_byte[o->off];
                 !racing && ri <= s->range_of_byte[o->off + o->len - 1]; ri++) {
                const struct range *r = &s->ranges[ri];
                for (uint32_t j = 0; j < r->nwrites && !racing; j++) {
                    const struct op *b = op_by_id(s, r->writes[j]);
                    racing = o->t0 < b->t1 && b->t0 < o->t1;
                }
            }
            racing_reads += racing;
        }
    }
    print_message("# %u reads checked; %u of them ran alongside a write to a range they "
                  "read (%u pieces read as a mix); %u pairs of writes to one range ran at "
                  "once\n", n, racing_reads, s->mixed_pieces, racing_writes);
}

static bool sector_allocated_by(struct stress *s, uint64_t x, uint64_t before, bool returned)
{
    for (uint32_t i = 0; i < s->alloc_n[x]; i++) {
        const struct op *w = op_by_id(s, s->alloc_ops[x][i]);
        if (returned ? w->t1 < before : w->t0 < before)
            return true;
    }
    return false;
}

static int expected_unallocated_flags(uint64_t x)
{
    return x >= BACKING_SECTORS ? ADDCOW_STATUS_ZERO : 0;
}

static void check_statuses(struct stress *s)
{
    for (unsigned t = 0; t < NTHREADS; t++) {
        for (unsigned i = 0; i < s->nops; i++) {
            const struct op *o = &s->w[t].ops[i];
            if (o->kind != OP_STATUS || !o->done)
                continue;
            if (o->run == 0 || o->run > o->len) {
                failure(s, "block_status(%" PRIu64 ", %" PRIu64 ") gave a run of %" PRIu64,
                        o->off, o->len, o->run);
                continue;
            }
            for (uint64_t x = o->off / SECTOR; x < (o->off + o->run + SECTOR - 1) / SECTOR; x++) {
                bool alloc = (o->status & ADDCOW_STATUS_ALLOCATED) != 0;
                int want = alloc ? (int)ADDCOW_STATUS_ALLOCATED : expected_unallocated_flags(x);
                const char *why = NULL;
                if (o->status != want)
                    why = "wrong flags";
                else if (alloc && !sector_allocated_by(s, x, o->t1, false))
                    why = "allocated before any write to it was made";
                else if (!alloc && sector_allocated_by(s, x, o->t0, true))
                    why = "unallocated after a write to it had returned";
                if (why != NULL) {
                    failure(s, "block_status(%" PRIu64 ", %" PRIu64 ") at time [%" PRIu64 ", %"
                            PRIu64 "] = flags %d, run %" PRIu64 ": sector %" PRIu64 ": %s",
                            o->off, o->len, o->t0, o->t1, o->status, o->run, x, why);
                    break;
                }
            }
        }
    }
}

/* The whole disk as it must read now: each piece one of its range's last
 * writes. */
static void check_final(struct stress *s, const unsigned char *disk)
{
    unsigned whole = 0, pieces_only = 0;
    check_bytes(s, disk, 0, DISK_SIZE, UINT64_MAX, UINT64_MAX, "the final content");
    /* Ranges whose concurrent writes were all plain writes: one write wins
     * the whole range. */
    for (uint32_t ri = 0; ri < s->nranges; ri++) {
        const struct range *r = &s->ranges[ri];
        bool zero_race = false;
        for (uint32_t i = 0; i < r->nwrites && !zero_race; i++) {
            const struct op *a = op_by_id(s, r->writes[i]);
            for (uint32_t j = i + 1; j < r->nwrites && !zero_race; j++) {
                const struct op *b = op_by_id(s, r->writes[j]);
                zero_race = (a->kind == OP_ZERO || b->kind == OP_ZERO) &&
                            a->t0 < b->t1 && b->t0 < a->t1;
            }
        }
        if (!s->whole_ranges || zero_race || r->nwrites == 0) {
            pieces_only += zero_race;
            continue;
        }
        whole++;
        bool ok = false;
        for (uint32_t i = 0; i < r->nwrites && !ok; i++) {
            const struct op *w = op_by_id(s, r->writes[i]);
            ok = !replaced_before(s, r, w, UINT64_MAX) &&
                 payload_eq(s, w, disk + r->off, r->off, r->len);
        }
        if (!ok)
            failure(s, "range %u [%" PRIu64 ", +%" PRIu64 "): its pieces come from different "
                    "writes (%u writes to it, plain writes only when they overlapped in time)",
                    ri, r->off, r->len, r->nwrites);
    }
    print_message("# final: %u ranges checked whole, %u piece by piece (a write_zeroes "
                  "overlapped another write in time)%s\n", whole, pieces_only,
                  s->whole_ranges ? "" : "; cache=none: all piece by piece");
}

/* Walks block_status over the disk: exactly the sectors that writes
 * allocate, as maximal runs. */
static void check_allocation(struct stress *s, addcow_image *img, const char *when)
{
    uint64_t pos = 0;
    int prev = -1;
    while (pos < DISK_SIZE) {
        uint64_t run = 0;
        int st = addcow_block_status(img, pos, DISK_SIZE - pos, &run);
        if (st < 0 || run == 0 || run > DISK_SIZE - pos || pos % SECTOR || run % SECTOR) {
            failure(s, "%s: block_status(%" PRIu64 ") = %d, run %" PRIu64 ": %s", when, pos, st,
                    run, addcow_last_error());
            return;
        }
        if (st == prev)
            failure(s, "%s: block_status: runs at %" PRIu64 " and before have the same flags %d",
                    when, pos, st);
        for (uint64_t x = pos / SECTOR; x < (pos + run) / SECTOR; x++) {
            int want = s->alloc_n[x] ? (int)ADDCOW_STATUS_ALLOCATED
                                     : expected_unallocated_flags(x);
            if (st != want) {
                failure(s, "%s: sector %" PRIu64 " has flags %d, not %d (%u writes allocate it)",
                        when, x, st, want, s->alloc_n[x]);
                return;
            }
        }
        prev = st;
        pos += run;
    }
}

/* ---- the test ------------------------------------------------------------------------ */

static void stress_free(struct stress *s)
{
    for (uint32_t r = 0; r < s->nranges; r++)
        free(s->ranges[r].writes);
    free(s->ranges);
    free(s->range_of_byte);
    for (unsigned x = 0; x < DISK_SECTORS; x++)
        free(s->alloc_ops[x]);
    for (unsigned t = 0; t < NTHREADS; t++) {
        free(s->w[t].ops);
        free(s->w[t].arena);
    }
    free(s);
}

static void run_stress(const char *tag, const char *cache, unsigned nops, unsigned mix_flush)
{
    uint64_t rng = tu_seed(tag);
    struct stress *s = calloc(1, sizeof(*s));
    assert_non_null(s);
    s->nops = nops;
    /* Two buffered writes to one file are serialized by the kernel (the
     * inode lock), so one of them wins a whole range; two O_DIRECT writes
     * are not (a device's promise is per sector). */
    s->whole_ranges = strcmp(cache, "none") != 0;
    s->backing_seed = (uint32_t)tu_rand(&rng);
    atomic_init(&s->clock, 1);

    const char *dir = tu_subdir(tag);
    char *acow = tu_str("%s/disk.add-cow", dir);
    tu_make_raw(tu_str("%s/base.raw", dir), BACKING_SIZE, s->backing_seed);
    assert_int_equal(addcow_create(acow, DISK_SIZE, "base.raw", "disk.raw", NULL), 0);

    make_ranges(s, &rng);
    for (unsigned t = 0; t < NTHREADS; t++)
        make_ops(s, t, &rng, mix_flush);
    index_ops(s);

    addcow_options *o = tu_options1("cache", cache);
    s->img = tu_open_ok(acow, ADDCOW_OPEN_RDWR, o);
    addcow_options_free(o);

    assert_int_equal(pthread_barrier_init(&s->start, NULL, NTHREADS), 0);
    for (unsigned t = 0; t < NTHREADS; t++) {
        s->w[t].s = s;
        s->w[t].idx = t;
        assert_int_equal(pthread_create(&s->w[t].th, NULL, worker_run, &s->w[t]), 0);
    }
    for (unsigned t = 0; t < NTHREADS; t++)
        pthread_join(s->w[t].th, NULL);
    pthread_barrier_destroy(&s->start);
    print_message("# %s: %u ranges, %u threads x %u operations, cache=%s\n", tag, s->nranges,
                  NTHREADS, nops, cache);
    for (unsigned t = 0; t < NTHREADS; t++)
        if (s->w[t].err[0] != '\0')
            failure(s, "%s", s->w[t].err);

    /* Every operation has returned: the checks. */
    check_reads(s);
    check_statuses(s);
    unsigned char *disk = malloc(DISK_SIZE), *again = malloc(DISK_SIZE);
    assert_non_null(disk);
    assert_non_null(again);
    assert_int_equal(addcow_pread(s->img, disk, DISK_SIZE, 0), (int64_t)DISK_SIZE);
    check_final(s, disk);
    check_allocation(s, s->img, "after the run");
    assert_int_equal(addcow_flush(s->img), 0);
    assert_int_equal(addcow_close(s->img), 0);

    s->img = tu_open_ok(acow, ADDCOW_OPEN_RDONLY, NULL);
    assert_int_equal(addcow_pread(s->img, again, DISK_SIZE, 0), (int64_t)DISK_SIZE);
    if (memcmp(disk, again, DISK_SIZE) != 0)
        failure(s, "after close and reopen the disk reads differently");
    check_allocation(s, s->img, "after reopening");
    assert_int_equal(addcow_close(s->img), 0);

    free(disk);
    free(again);
    unsigned failures = s->failures;
    char first[sizeof(s->first_failure)];
    memcpy(first, s->first_failure, sizeof(first));
    stress_free(s);
    if (failures != 0)
        fail_msg("%s: %u failure(s); the first: %s", tag, failures, first);
}

static void test_stress_writeback(void **state)
{
    (void)state;
    run_stress("stress-writeback", "writeback", tu_scale(600), 3);
}

/* Every write flushes: the bitmap is written while other threads write. */
static void test_stress_writethrough(void **state)
{
    (void)state;
    run_stress("stress-writethrough", "writethrough", tu_scale(120), 3);
}

/* O_DIRECT for aligned requests, the buffered twin for the rest. */
static void test_stress_cache_none(void **state)
{
    (void)state;
    run_stress("stress-cache-none", "none", tu_scale(300), 3);
}

int main(void)
{
    signal(SIGALRM, wd_fired);
    alarm(WATCHDOG_SECONDS);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stress_writeback),
        cmocka_unit_test(test_stress_writethrough),
        cmocka_unit_test(test_stress_cache_none),
    };
    return cmocka_run_group_tests(tests, NULL, tu_free_strings);
}
