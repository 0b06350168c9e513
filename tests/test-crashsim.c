/*
 * test-crashsim.c: power-loss simulation (FORMAT.md, "Crash safety").
 *
 * Random, seeded workloads (unaligned writes, partial-sector copy-on-write,
 * write_zeroes with and without ADDCOW_ZEROES_MAY_UNMAP, truncate down and
 * up, flush, close and open, hydrate, commit, detach) run on memfs with
 * every write, truncate, punch and flush of the three files (add-cow file,
 * image file, backing file) recorded.  Then, at many points of the recorded
 * log (every kind of point: inside flushes, truncates, commits, detaches,
 * between calls; more where more is unflushed), power-loss states are built
 * (memfs_crashgen, membackend.h): each file as of its own last flush (a
 * flush of one file makes nothing of the others durable), plus a random
 * subset of its later writes and punches, each whole or torn at 512-byte
 * sectors, and a prefix, in order, of its later length changes (truncates
 * are all-or-nothing); a landed sector carries the earlier changes to it
 * too, as a page cache writes whole sectors (a partial-sector write cannot
 * land without the one before it in the same sector).  1 state in 10 keeps
 * nothing unflushed, 1 in 10 everything.  Each state is opened with the
 * library (read-only) and must
 *
 *  - open: the library's ordering makes every state consistent, so there
 *    is no "corrupt, repair it" outcome: a failed open is a violation;
 *  - have the size before or after the call in progress (the size of a
 *    completed truncate is durable);
 *  - read, in every sector, either the sector's content as of the last
 *    completed flush point or the content some later call gave it: never
 *    bytes that were never there, never an older state than the last flush.
 *
 * The model is independent of the library: the virtual disk, kept as plain
 * bytes and changed as the API says each call changes it; after each call
 * a hash of each sector.  Flush points (the content is durable once they
 * return): addcow_flush, addcow_close, addcow_hydrate, addcow_commit,
 * addcow_detach (all documented as durable), every write with
 * cache=writethrough, and the created image.  Candidates of a sector at a
 * crash point: its content after the last completed flush point, and after
 * every call begun since (a write, write_zeroes, truncate: its new content,
 * zeros for what a truncate down and up brought back; hydrate, commit,
 * detach change no content, commit only where it is read from).  A
 * truncate is no flush point for the content (the API does not say so),
 * only for the size.  Sectors are compared by a 64-bit hash: a mismatch is
 * always a real difference.
 *
 * test_crashsim_catches_broken_logs shows that the checker fails where it
 * should: a fixed workload's log with the image file's flushes dropped,
 * with the add-cow file's flushes dropped, and with a bitmap write moved
 * before the image flush, must give violations.
 *
 * Counts: AC_CRASH_STATES=<n> sets the number of random crash states (else
 * 5000, times AC_TEST_SCALE); `make check-crash` runs 100,000.  The last
 * line printed: "crash states checked: N, violations: V".  Replay a run
 * with AC_SEED=<seed> (each test prints its seed).
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "addcow.h"
#include "membackend.h"
#include "testutil.h"

#define SECTOR 512u

#define S_ADDCOW "/s/disk.add-cow"
#define S_IMAGE  "/s/disk.raw"
#define S_BACK   "/s/base.raw"

#define BACKING_SEED 0xBACCu
#define MAX_SHOWN 8                 /* violations printed per test */

/* Totals of the program, printed by the group teardown. */
static uint64_t g_states, g_violations;

/* ---- the model ----------------------------------------------------------------- */

static uint64_t sector_hash(const unsigned char *p)
{
    uint64_t h = UINT64_C(0x243F6A8885A308D3);
    for (unsigned i = 0; i < SECTOR / 8; i++) {
        uint64_t w;
        memcpy(&w, p + 8 * i, 8);
        h = (h ^ w) * UINT64_C(0xFF51AFD7ED558CCD);
        h ^= h >> 31;
    }
    return h;
}

enum call_kind { C_OPEN, C_WRITE, C_ZERO, C_FLUSH, C_TRUNC, C_HYDRATE, C_COMMIT, C_DETACH,
                 C_CLOSE };

static const char *call_name(enum call_kind k)
{
    static const char *const n[] = { "open", "pwrite", "write_zeroes", "flush", "truncate",
                                      "hydrate", "commit", "detach", "close" };
    return n[k];
}

struct call {
    enum call_kind kind;
    uint64_t off, len;          /* truncate: off = new size */
    unsigned flags;             /* write_zeroes flags; commit: 1 = cancel */
    uint32_t seed;
    size_t ra, rb;              /* its records: [ra, rb) */
    bool flush_point;           /* once done, its content is durable */
    uint64_t size_before, size_after;
    const uint64_t *after;      /* sector hashes after it (size_after / 512) */
};

struct params {
    uint64_t disk_min, disk_max;    /* size at create: a random multiple of 512 */
    uint64_t maxdisk;               /* truncate never goes past it */
    uint64_t back_min, back_max;    /* backing file length (back_max 0: none) */
    bool back_odd;                  /* the backing length is odd */
    unsigned ncalls;
    unsigned writethrough_in;       /* 1 in n workloads use cache=writethrough */
    unsigned budget;                /* crash states per workload */
};

struct workload {
    struct params p;
    uint64_t disk, backing_len;
    bool writethrough, no_punch;
    struct memfs *fs;           /* owns the records */
    struct memfs *start;        /* the files before the first record */
    unsigned char *backing;
    struct call *calls;
    size_t ncalls, cap;
    uint64_t **owned;           /* the `after` arrays */
    size_t nowned;
    const struct memfs_rec **recs;
    size_t nrecs;
    uint64_t acf_id, img_id, back_id;
};

static void workload_free(struct workload *wl)
{
    for (size_t i = 0; i < wl->nowned; i++)
        free(wl->owned[i]);
    free(wl->owned);
    free(wl->calls);
    free(wl->recs);
    free(wl->backing);
    memfs_free(wl->start);
    memfs_free(wl->fs);
    memset(wl, 0, sizeof(*wl));
}

/* The state of a running workload. */
struct runner {
    struct workload *wl;
    addcow_options *o;
    addcow_image *img;
    unsigned char *model;       /* the virtual disk (maxdisk bytes) */
    uint64_t size;
    bool has_backing;           /* the header names a backing file */
    unsigned char *data;        /* a write's bytes */
};

static const uint64_t *snapshot(struct runner *ru, bool changed)
{
    struct workload *wl = ru->wl;
    if (!changed && wl->ncalls > 0)
        return wl->calls[wl->ncalls - 1].after;
    uint64_t n = wl->p.maxdisk / SECTOR;
    uint64_t *h = calloc(n ? n : 1, sizeof(*h));
    assert_non_null(h);
    for (uint64_t s = 0; s < ru->size / SECTOR; s++)
        h[s] = sector_hash(ru->model + s * SECTOR);
    wl->owned[wl->nowned++] = h;
    return h;
}

static int cancel_progress(uint64_t done, uint64_t total, void *opaque)
{
    (void)done;
    (void)total;
    (void)opaque;
    return 1;
}

/* Runs one call on the image and on the model, and logs it. */
static void exec_call(struct runner *ru, struct call c)
{
    struct workload *wl = ru->wl;
    int64_t r = 0;
    bool changed = false;

    assert_true(wl->ncalls < wl->cap);
    c.size_before = ru->size;
    c.ra = memfs_rec_count(wl->fs);
    switch (c.kind) {
    case C_OPEN:
        r = addcow_open(S_ADDCOW, ADDCOW_OPEN_RDWR, ru->o, &ru->img);
        break;
    case C_WRITE:
        tu_fill_pattern(ru->data, c.len, c.seed, c.off);
        r = addcow_pwrite(ru->img, ru->data, c.len, c.off);
        if (r == (int64_t)c.len)
            r = 0;
        memcpy(ru->model + c.off, ru->data, c.len);
        changed = true;
        break;
    case C_ZERO:
        r = addcow_write_zeroes(ru->img, c.off, c.len, c.flags);
        memset(ru->model + c.off, 0, c.len);
        changed = true;
        break;
    case C_FLUSH:
        r = addcow_flush(ru->img);
        break;
    case C_TRUNC:
        r = addcow_truncate(ru->img, c.off);
        /* Shrunk away: a later growth reads zeros there. */
        if (c.off < ru->size)
            memset(ru->model + c.off, 0, ru->size - c.off);
        ru->size = c.off;
        changed = true;
        break;
    case C_HYDRATE:
        r = addcow_hydrate(ru->img, c.off, c.len, NULL, NULL);
        break;
    case C_COMMIT:
        r = addcow_commit(ru->img, c.flags ? cancel_progress : NULL, NULL);
        if (c.flags && r == -ECANCELED)
            r = 0;
        break;
    case C_DETACH:
        r = addcow_detach(ru->img);
        ru->has_backing = false;
        break;
    case C_CLOSE:
        r = addcow_close(ru->img);
        ru->img = NULL;
        break;
    }
    if (r != 0)
        fail_msg("%s(%" PRIu64 ", %" PRIu64 ") returned %" PRId64 ": %s", call_name(c.kind),
                 c.off, c.len, r, addcow_last_error());
    c.rb = memfs_rec_count(wl->fs);
    c.size_after = ru->size;
    c.flush_point = wl->ncalls == 0 || c.kind == C_FLUSH || c.kind == C_CLOSE ||
                    c.kind == C_HYDRATE || c.kind == C_COMMIT || c.kind == C_DETACH ||
                    (wl->writethrough && (c.kind == C_WRITE || c.kind == C_ZERO));
    c.after = snapshot(ru, changed);
    wl->calls[wl->ncalls++] = c;
}

/* A random write: whole sectors, inside one sector, across a boundary,
 * around the backing file's end, or anything. */
static struct call random_write(uint64_t *rng, const struct workload *wl, uint64_t size)
{
    struct call c = { .kind = C_WRITE, .seed = (uint32_t)tu_rand(rng) | 1u };
    uint64_t nsect = size / SECTOR;
    switch (tu_rand_below(rng, 5)) {
    case 0:
        c.len = SECTOR * (1 + tu_rand_below(rng, 16));
        c.off = SECTOR * tu_rand_below(rng, nsect);
        break;
    case 1:
        c.len = 1 + tu_rand_below(rng, SECTOR - 1);
        c.off = SECTOR * tu_rand_below(rng, nsect) + tu_rand_below(rng, SECTOR - c.len + 1);
        break;
    case 2: {
        uint64_t b = SECTOR * (1 + tu_rand_below(rng, nsect > 1 ? nsect - 1 : 1));
        uint64_t before = 1 + tu_rand_below(rng, 2 * SECTOR);
        c.off = b > before ? b - before : 0;
        c.len = before + 1 + tu_rand_below(rng, 2 * SECTOR);
        break;
    }
    case 3:
        c.len = 1 + tu_rand_below(rng, 3 * SECTOR);
        c.off = wl->backing_len > c.len ? wl->backing_len - tu_rand_below(rng, c.len) : 0;
        break;
    default:
        c.len = 1 + tu_rand_below(rng, 24 * SECTOR);
        c.off = tu_rand_below(rng, size);
        break;
    }
    if (c.len > size)
        c.len = size;
    if (c.off + c.len > size)
        c.off = size - c.len;
    return c;
}

static struct call random_call(uint64_t *rng, const struct runner *ru)
{
    const struct workload *wl = ru->wl;
    uint64_t size = ru->size;
    struct call c = { .kind = C_FLUSH };
    unsigned pick = (unsigned)tu_rand_below(rng, 100);
    if (!ru->has_backing && pick >= 88 && pick < 96)
        pick = 0;               /* no commit, no detach: a write */
    if (pick < 50) {
        c = random_write(rng, wl, size);
    } else if (pick < 64) {
        c.kind = C_ZERO;
        c.len = 1 + tu_rand_below(rng, 20 * SECTOR);
        if (tu_rand_below(rng, 3) == 0)
            c.len = SECTOR * (1 + tu_rand_below(rng, 20));
        if (c.len > size)
            c.len = size;
        c.off = tu_rand_below(rng, size - c.len + 1);
        if (c.len % SECTOR == 0 && tu_rand_below(rng, 2))
            c.off -= c.off % SECTOR;
        c.flags = tu_rand_below(rng, 2) ? ADDCOW_ZEROES_MAY_UNMAP : 0;
    } else if (pick < 72) {
        c.kind = C_FLUSH;
    } else if (pick < 82) {
        c.kind = C_TRUNC;
        uint64_t lo = 8, hi = wl->p.maxdisk / SECTOR, cur = size / SECTOR;
        if (tu_rand_below(rng, 2) && cur > lo)
            c.off = SECTOR * (lo + tu_rand_below(rng, cur - lo));          /* down */
        else
            c.off = SECTOR * (cur + tu_rand_below(rng, hi - cur + 1));     /* up */
    } else if (pick < 88) {
        c.kind = C_HYDRATE;
        if (tu_rand_below(rng, 3) != 0) {
            c.off = tu_rand_below(rng, size);
            c.len = tu_rand_below(rng, size - c.off + 1);
        }
    } else if (pick < 93) {
        c.kind = C_COMMIT;
        c.flags = tu_rand_below(rng, 4) == 0;
    } else if (pick < 96) {
        c.kind = C_DETACH;      /* preceded by a full hydrate */
    } else {
        c.kind = C_CLOSE;       /* followed by an open */
    }
    return c;
}

/* Makes the files (created before recording starts: a created image is
 * durable) and a runner over them. */
static void workload_begin(struct workload *wl, struct runner *ru, const struct params *p,
                           uint64_t *rng, size_t cap)
{
    memset(wl, 0, sizeof(*wl));
    memset(ru, 0, sizeof(*ru));
    wl->p = *p;
    wl->disk = SECTOR * (p->disk_min / SECTOR +
                         tu_rand_below(rng, (p->disk_max - p->disk_min) / SECTOR + 1));
    if (p->back_max > 0) {
        wl->backing_len = p->back_min + tu_rand_below(rng, p->back_max - p->back_min + 1);
        wl->backing_len = p->back_odd ? wl->backing_len | 1 : wl->backing_len & ~(uint64_t)511;
    }
    wl->writethrough = p->writethrough_in > 0 && tu_rand_below(rng, p->writethrough_in) == 0;
    wl->no_punch = tu_rand_below(rng, 4) == 0;
    wl->fs = memfs_new();
    wl->backing = malloc(wl->backing_len ? wl->backing_len : 1);
    wl->cap = cap;
    wl->calls = calloc(cap, sizeof(*wl->calls));
    wl->owned = calloc(cap, sizeof(*wl->owned));
    assert_true(wl->fs && wl->backing && wl->calls && wl->owned);
    memfs_set_punch_supported(wl->fs, !wl->no_punch);
    assert_int_equal(memfs_mkdir(wl->fs, "/s"), 0);
    if (p->back_max > 0) {
        tu_fill_pattern(wl->backing, wl->backing_len, BACKING_SEED, 0);
        assert_int_equal(memfs_put(wl->fs, S_BACK, wl->backing, wl->backing_len), 0);
    }

    ru->wl = wl;
    ru->o = memfs_options(wl->fs);
    ru->model = calloc(1, p->maxdisk);
    ru->data = malloc(p->maxdisk);
    assert_true(ru->o && ru->model && ru->data);
    if (wl->writethrough)
        assert_int_equal(addcow_options_set(ru->o, "cache", "writethrough"), 0);
    int r = addcow_create(S_ADDCOW, wl->disk, p->back_max > 0 ? "base.raw" : NULL, "disk.raw",
                          ru->o);
    if (r != 0)
        fail_msg("create: %d: %s", r, addcow_last_error());
    ru->size = wl->disk;
    ru->has_backing = p->back_max > 0;
    memcpy(ru->model, wl->backing, tu_min_u64(wl->backing_len, wl->disk));
    wl->start = memfs_clone(wl->fs);
    assert_non_null(wl->start);
    memfs_record_start(wl->fs);
    exec_call(ru, (struct call){ .kind = C_OPEN });
}

/* Closes, stops recording and takes the log. */
static void workload_end(struct runner *ru)
{
    struct workload *wl = ru->wl;
    if (ru->img != NULL)
        exec_call(ru, (struct call){ .kind = C_CLOSE });
    memfs_record_stop(wl->fs);
    addcow_options_free(ru->o);
    free(ru->model);
    free(ru->data);
    assert_int_equal(memfs_open_handles(wl->fs), 0);
    wl->nrecs = memfs_rec_count(wl->fs);
    wl->recs = calloc(wl->nrecs + 1, sizeof(*wl->recs));
    assert_non_null(wl->recs);
    for (size_t i = 0; i < wl->nrecs; i++)
        wl->recs[i] = memfs_rec_at(wl->fs, i);
    wl->acf_id = memfs_file_id(wl->fs, S_ADDCOW);
    wl->img_id = memfs_file_id(wl->fs, S_IMAGE);
    wl->back_id = memfs_file_id(wl->fs, S_BACK);
    assert_true(wl->acf_id != 0 && wl->img_id != 0 && wl->acf_id != wl->img_id);
}

static void run_random_workload(struct workload *wl, const struct params *p, uint64_t *rng)
{
    struct runner ru;
    workload_begin(wl, &ru, p, rng, 2 * p->ncalls + 4);
    for (unsigned i = 0; i < p->ncalls; i++) {
        struct call c = random_call(rng, &ru);
        if (c.kind == C_DETACH) {
            /* Every sector the backing file covers allocated first: by a
             * hydrate (durable), or by one write over them all (its bits
             * are only in memory when detach begins). */
            size_t blen = 0;
            free(memfs_get(wl->fs, S_BACK, &blen));     /* commit may have grown it */
            uint64_t end = tu_min_u64(ru.size, (blen + SECTOR - 1) & ~(uint64_t)511);
            if (tu_rand_below(rng, 2) && end > 0)
                exec_call(&ru, (struct call){ .kind = C_WRITE, .len = end,
                                              .seed = (uint32_t)tu_rand(rng) | 1u });
            else
                exec_call(&ru, (struct call){ .kind = C_HYDRATE });
        }
        exec_call(&ru, c);
        if (c.kind == C_CLOSE)
            exec_call(&ru, (struct call){ .kind = C_OPEN });
    }
    workload_end(&ru);
}

/* ---- checking crash states ----------------------------------------------------- */

struct report {
    const char *ctx;            /* test, seed, round */
    uint64_t states, violations;
    uint64_t torn;              /* states with a change torn */
    uint64_t newer;             /* states where a sector reads a change made
                                 * after the last flush point */
    bool quiet;
};

struct checker {
    const struct workload *wl;
    const struct memfs_rec *const *recs;
    size_t nrecs;
    struct memfs_crashgen *gen;
    struct memfs *dst;          /* the crash state */
    addcow_options *o;
    unsigned char *buf;
    struct report *rep;
    uint64_t *rng;
};

static void violation(struct checker *ck, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void violation(struct checker *ck, const char *fmt, ...)
{
    ck->rep->violations++;
    if (ck->rep->quiet || ck->rep->violations > MAX_SHOWN)
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    print_message("# VIOLATION (%s): %s\n", ck->rep->ctx, msg);
}

static const char *mode_name(enum memfs_loss m)
{
    return m == MEMFS_LOSS_NONE ? "nothing unflushed landed"
         : m == MEMFS_LOSS_ALL ? "everything landed" : "torn";
}

static void describe_rec(const struct checker *ck, size_t i, char *out, size_t n)
{
    if (i >= ck->nrecs) {
        snprintf(out, n, "end of log");
        return;
    }
    const struct memfs_rec *r = ck->recs[i];
    snprintf(out, n, "%s %s @%" PRIu64 "+%" PRIu64, memfs_rec_kind_name(r->kind),
             r->file == 0 ? "(dropped)" : r->name, r->offset, r->length);
}

/* The calls that matter at crash point k (records [0, k) issued). */
struct point {
    size_t flushed;     /* the last flush point done */
    size_t last;        /* the last call begun */
    uint64_t sizes[2];  /* the allowed virtual sizes */
};

static struct point point_at(const struct workload *wl, size_t k)
{
    struct point pt = { 0, 0, { 0, 0 } };
    for (size_t j = 0; j < wl->ncalls; j++) {
        const struct call *c = &wl->calls[j];
        if (c->flush_point && c->rb <= k)
            pt.flushed = j;
        if (c->ra < k || j == 0)
            pt.last = j;
    }
    if (pt.last < pt.flushed)
        pt.last = pt.flushed;
    const struct call *c = &wl->calls[pt.last];
    pt.sizes[1] = c->size_after;
    pt.sizes[0] = k <= c->rb ? c->size_before : c->size_after;
    return pt;
}

/* Where bytes read come from, for a report. */
static void origin(const struct checker *ck, uint64_t s, uint64_t h, const struct point *pt,
                   char *out, size_t n)
{
    static const unsigned char zeros[SECTOR];
    const struct workload *wl = ck->wl;
    const char *what = "bytes never written to this sector";
    unsigned char b[SECTOR] = { 0 };
    if (s * SECTOR < wl->backing_len)
        memcpy(b, wl->backing + s * SECTOR, tu_min_u64(SECTOR, wl->backing_len - s * SECTOR));
    if (h == sector_hash(zeros))
        what = "zeros";
    else if (s * SECTOR < wl->backing_len && sector_hash(b) == h)
        what = "the original backing file's data";
    for (size_t j = pt->flushed; j-- > 0;) {
        const struct call *c = &wl->calls[j];
        if (s < c->size_after / SECTOR && c->after[s] == h) {
            snprintf(out, n, "%s, its content after call %zu (%s), before the last flush "
                     "point: a flushed change is lost", what, j, call_name(c->kind));
            return;
        }
    }
    snprintf(out, n, "%s", what);
}

/* Builds one crash state at the generator's point and checks it. */
static void check_state(struct checker *ck, const struct point *pt, enum memfs_loss mode)
{
    const struct workload *wl = ck->wl;
    size_t k = memfs_crashgen_pos(ck->gen);
    uint64_t state = ck->rep->states++;
    struct memfs_loss_stats st = { 0, 0, 0 };
    char where[640], rec[200];

    assert_int_equal(memfs_crashgen_fill(ck->gen, ck->dst, mode, ck->rng, &st), 0);
    describe_rec(ck, k > 0 ? k - 1 : ck->nrecs, rec, sizeof(rec));
    snprintf(where, sizeof(where), "state %" PRIu64 ": crash after record %zu of %zu (%s), "
             "call %zu (%s) begun, last flush point call %zu (%s); unflushed changes: "
             "add-cow file %zu, image file %zu, backing file %zu; %s: %zu landed, %zu torn",
             state, k, ck->nrecs, k > 0 ? rec : "none", pt->last,
             call_name(wl->calls[pt->last].kind), pt->flushed,
             call_name(wl->calls[pt->flushed].kind),
             memfs_crashgen_pending(ck->gen, S_ADDCOW), memfs_crashgen_pending(ck->gen, S_IMAGE),
             memfs_crashgen_pending(ck->gen, S_BACK), mode_name(mode), st.landed, st.torn);

    addcow_image *img = NULL;
    int r = addcow_open(S_ADDCOW, ADDCOW_OPEN_RDONLY, ck->o, &img);
    if (r != 0) {
        violation(ck, "%s: open fails: %d: %s", where, r, addcow_last_error());
        return;
    }
    int64_t size = addcow_get_size(img);
    if (size < 0 || ((uint64_t)size != pt->sizes[0] && (uint64_t)size != pt->sizes[1])) {
        violation(ck, "%s: virtual size %" PRId64 ", allowed %" PRIu64 " or %" PRIu64, where,
                  size, pt->sizes[0], pt->sizes[1]);
        addcow_close(img);
        return;
    }
    int64_t got = addcow_pread(img, ck->buf, (size_t)size, 0);
    if (got != size) {
        violation(ck, "%s: reading %" PRId64 " bytes returns %" PRId64 ": %s", where, size,
                  got, addcow_last_error());
        addcow_close(img);
        return;
    }
    assert_int_equal(addcow_close(img), 0);

    ck->rep->torn += st.torn > 0;
    bool newer = false;
    const struct call *fc = &wl->calls[pt->flushed];
    for (uint64_t s = 0; s < (uint64_t)size / SECTOR; s++) {
        uint64_t h = sector_hash(ck->buf + s * SECTOR);
        bool ok = s < fc->size_after / SECTOR && fc->after[s] == h;
        const uint64_t *prev = fc->after;
        for (size_t j = pt->flushed + 1; j <= pt->last && !ok; j++) {
            const struct call *c = &wl->calls[j];
            if (c->after != prev && s < c->size_after / SECTOR)
                ok = newer = c->after[s] == h;
            prev = c->after;
        }
        if (ok)
            continue;
        char allowed[600] = "", from[200];
        size_t used = 0;
        prev = NULL;
        for (size_t j = pt->flushed; j <= pt->last && used + 80 < sizeof(allowed); j++) {
            const struct call *c = &wl->calls[j];
            if (c->after == prev || s >= c->size_after / SECTOR) {
                prev = c->after;
                continue;
            }
            prev = c->after;
            used += (size_t)snprintf(allowed + used, sizeof(allowed) - used,
                                     "%s%s call %zu (%s): %016" PRIx64, used ? ", " : "",
                                     j == pt->flushed ? "flushed" : "later", j,
                                     call_name(c->kind), c->after[s]);
        }
        origin(ck, s, h, pt, from, sizeof(from));
        const unsigned char *b = ck->buf + s * SECTOR;
        violation(ck, "%s: sector %" PRIu64 " reads %02x%02x%02x%02x%02x%02x%02x%02x... "
                  "(hash %016" PRIx64 ": %s); allowed: %s", where, s, b[0], b[1], b[2], b[3],
                  b[4], b[5], b[6], b[7], h, from, allowed[0] ? allowed : "nothing");
        return;     /* one per state */
    }
    ck->rep->newer += newer;
}

/* Points worth more states: right after a flush, a write or truncate of the
 * add-cow file, a write of the backing file, a truncate, the last one. */
static bool interesting(const struct checker *ck, size_t k)
{
    if (k == 0 || k == ck->nrecs)
        return true;
    const struct memfs_rec *r = ck->recs[k - 1];
    return r->kind == MEMFS_REC_FLUSH || r->kind == MEMFS_REC_TRUNCATE ||
           r->kind == MEMFS_REC_PUNCH || r->file == ck->wl->acf_id ||
           (ck->wl->back_id != 0 && r->file == ck->wl->back_id);
}

/* The weight of each point 0..n: 1, 2 more if interesting, and 1 more per
 * unflushed change (up to 8): where more can be lost, more states. */
static uint64_t *point_weights(const struct checker *ck, uint64_t *total)
{
    const struct workload *wl = ck->wl;
    uint64_t *w = calloc(ck->nrecs + 1, sizeof(*w));
    assert_non_null(w);
    const uint64_t ids[3] = { wl->acf_id, wl->img_id, wl->back_id };
    uint64_t pend[3] = { 0, 0, 0 };
    *total = 0;
    for (size_t k = 0; k <= ck->nrecs; k++) {
        if (k > 0) {
            const struct memfs_rec *r = ck->recs[k - 1];
            for (int f = 0; f < 3; f++) {
                if (r->file != ids[f] || ids[f] == 0)
                    continue;
                if (r->kind == MEMFS_REC_FLUSH)
                    pend[f] = 0;
                else if (r->kind == MEMFS_REC_WRITE || r->kind == MEMFS_REC_TRUNCATE ||
                         r->kind == MEMFS_REC_PUNCH)
                    pend[f]++;
            }
        }
        w[k] = 1 + (interesting(ck, k) ? 2 : 0) + tu_min_u64(pend[0] + pend[1] + pend[2], 8);
        *total += w[k];
    }
    return w;
}

static enum memfs_loss pick_mode(uint64_t *rng)
{
    unsigned m = (unsigned)tu_rand_below(rng, 10);
    return m == 0 ? MEMFS_LOSS_NONE : m == 1 ? MEMFS_LOSS_ALL : MEMFS_LOSS_TORN;
}

/* Checks crash states of a workload over the log recs[0..n): `budget`
 * states spread over the points (point_weights), or, with per_point > 0,
 * that many at every point. */
static void check_workload(const struct workload *wl, const struct memfs_rec *const *recs,
                           size_t n, unsigned budget, unsigned per_point, uint64_t *rng,
                           struct report *rep)
{
    struct checker ck = { .wl = wl, .recs = recs, .nrecs = n, .rep = rep, .rng = rng };
    ck.gen = memfs_crashgen_new(wl->start, recs, n);
    ck.dst = memfs_new();
    ck.buf = malloc(wl->p.maxdisk);
    assert_true(ck.gen && ck.dst && ck.buf);
    ck.o = memfs_options(ck.dst);
    assert_non_null(ck.o);

    uint64_t total;
    uint64_t *weight = point_weights(&ck, &total);
    for (size_t k = 0; k <= n; k++) {
        unsigned count = per_point;
        if (per_point == 0) {
            uint64_t w = weight[k] * (uint64_t)budget;
            count = (unsigned)(w / total) + (tu_rand_below(rng, total) < w % total);
        }
        if (count == 0)
            continue;
        int e = memfs_crashgen_seek(ck.gen, k);
        if (e != 0)
            fail_msg("replaying the log to record %zu: %d", k, e);
        struct point pt = point_at(wl, k);
        for (unsigned i = 0; i < count; i++)
            check_state(&ck, &pt, per_point ? (enum memfs_loss)(i % 3) : pick_mode(rng));
    }
    free(weight);
    addcow_options_free(ck.o);
    assert_int_equal(memfs_open_handles(ck.dst), 0);
    memfs_free(ck.dst);
    memfs_crashgen_free(ck.gen);
    free(ck.buf);
}

/* ---- the random tests --------------------------------------------------------- */

/* A round's PRNG state from the seed (splitmix64's finalizer). */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= UINT64_C(0xBF58476D1CE4E5B9);
    x ^= x >> 27;
    x *= UINT64_C(0x94D049BB133111EB);
    return x ^ (x >> 31);
}

/* The random crash states of the program: AC_CRASH_STATES, else 5000
 * (scaled by AC_TEST_SCALE). */
static uint64_t states_target(void)
{
    const char *e = getenv("AC_CRASH_STATES");
    if (e != NULL && *e != '\0') {
        char *end;
        unsigned long long v = strtoull(e, &end, 10);
        if (*end == '\0' && v > 0)
            return v;
        print_error("AC_CRASH_STATES=%s is not a positive number\n", e);
        fail();
    }
    return tu_scale(5000);
}

/* Runs random workloads until `share` percent of the target's states are
 * checked. */
static void crash_rounds(const char *name, const struct params *p, unsigned share)
{
    uint64_t seed = tu_seed(name);
    uint64_t want = (states_target() * share + 99) / 100;
    struct report rep = { .ctx = NULL };
    char ctx[200];
    unsigned round = 0;
    uint64_t nrecs = 0, ncalls = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);

    while (rep.states < want) {
        uint64_t rng = mix64(seed + round * UINT64_C(0x9E3779B97F4A7C15)) | 1;
        struct workload wl;
        run_random_workload(&wl, p, &rng);
        snprintf(ctx, sizeof(ctx), "%s, AC_SEED=%" PRIu64 ", round %u: disk %" PRIu64
                 ", backing %" PRIu64 "%s%s", name, seed, round, wl.disk, wl.backing_len,
                 wl.writethrough ? ", writethrough" : "", wl.no_punch ? ", no punch" : "");
        rep.ctx = ctx;
        uint64_t before = rep.violations;
        check_workload(&wl, wl.recs, wl.nrecs, p->budget, 0, &rng, &rep);
        nrecs += wl.nrecs;
        ncalls += wl.ncalls;
        workload_free(&wl);
        round++;
        if (rep.violations > before && rep.violations > 100)
            break;      /* enough to go on */
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    g_states += rep.states;
    g_violations += rep.violations;
    print_message("# %s: %u workloads (%" PRIu64 " calls, %" PRIu64 " records), %" PRIu64
                  " crash states (%" PRIu64 " with torn changes, %" PRIu64 " reading changes "
                  "made after the last flush), %" PRIu64 " violations, %.1f s\n", name, round,
                  ncalls, nrecs, rep.states, rep.torn, rep.newer, rep.violations,
                  (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    if (rep.violations > 0)
        fail_msg("%s: %" PRIu64 " violations in %" PRIu64 " crash states (the first ones "
                 "above); replay with AC_SEED=%" PRIu64, name, rep.violations, rep.states, seed);
}

static void test_crashsim_raw_backing(void **state)
{
    (void)state;
    struct params p = { .disk_min = 24 * 1024, .disk_max = 64 * 1024, .maxdisk = 96 * 1024,
                        .back_min = 8 * 1024, .back_max = 80 * 1024, .ncalls = 36,
                        .writethrough_in = 8, .budget = 64 };
    crash_rounds("test_crashsim_raw_backing", &p, 40);
}

static void test_crashsim_odd_backing(void **state)
{
    (void)state;
    struct params p = { .disk_min = 16 * 1024, .disk_max = 48 * 1024, .maxdisk = 72 * 1024,
                        .back_min = 5000, .back_max = 60000, .back_odd = true, .ncalls = 36,
                        .writethrough_in = 8, .budget = 64 };
    crash_rounds("test_crashsim_odd_backing", &p, 25);
}

static void test_crashsim_no_backing(void **state)
{
    (void)state;
    struct params p = { .disk_min = 16 * 1024, .disk_max = 48 * 1024, .maxdisk = 72 * 1024,
                        .ncalls = 36, .writethrough_in = 8, .budget = 64 };
    crash_rounds("test_crashsim_no_backing", &p, 25);
}

/* A bitmap of more than one dirty block (512 bytes: 2 MiB of disk), so
 * that flushes write several runs. */
static void test_crashsim_large_bitmap(void **state)
{
    (void)state;
    struct params p = { .disk_min = 2048 * 1024 + 8192, .disk_max = 2560 * 1024,
                        .maxdisk = 2816 * 1024, .back_min = 1024 * 1024,
                        .back_max = 2600 * 1024, .back_odd = true, .ncalls = 24,
                        .budget = 48 };
    crash_rounds("test_crashsim_large_bitmap", &p, 10);
}

/* ---- the checker must be able to fail ------------------------------------------- */

/* broken[] is the log with the flushes of one file, from record `from` on,
 * made no-ops that keep their place (noop[i]: a flush of no file). */
static void drop_flushes(const struct workload *wl, const struct memfs_rec **broken,
                         struct memfs_rec *noop, uint64_t file, size_t from)
{
    for (size_t i = 0; i < wl->nrecs; i++) {
        broken[i] = wl->recs[i];
        if (wl->recs[i]->kind == MEMFS_REC_FLUSH && wl->recs[i]->file == file && i >= from) {
            noop[i] = *wl->recs[i];
            noop[i].file = 0;
            broken[i] = &noop[i];
        }
    }
}

static uint64_t broken_violations(const struct workload *wl,
                                  const struct memfs_rec *const *broken, const char *what)
{
    uint64_t rng = 0x5EED;
    struct report rep = { .ctx = what, .quiet = true };
    check_workload(wl, broken, wl->nrecs, 0, 30, &rng, &rep);
    print_message("# self-check, %s: %" PRIu64 " violations in %" PRIu64 " crash states\n",
                  what, rep.violations, rep.states);
    return rep.violations;
}

/* A fixed workload whose real log passes, and three broken versions of it
 * (image file never flushed; add-cow file never flushed; one bitmap write
 * moved before the image flush that must precede it) that must not. */
static void test_crashsim_catches_broken_logs(void **state)
{
    (void)state;
    struct params p = { .disk_min = 32 * 1024, .disk_max = 32 * 1024, .maxdisk = 48 * 1024,
                        .back_min = 20 * 1024, .back_max = 20 * 1024, .ncalls = 0 };
    uint64_t rng = 1;
    struct workload wl;
    struct runner ru;
    workload_begin(&wl, &ru, &p, &rng, 16);
    wl.writethrough = false;
    const struct call script[] = {
        { .kind = C_WRITE, .off = 4 * SECTOR, .len = 3 * SECTOR, .seed = 11 },
        { .kind = C_WRITE, .off = 20 * SECTOR + 100, .len = 50, .seed = 12 },   /* COW */
        { .kind = C_FLUSH },
        { .kind = C_WRITE, .off = 50 * SECTOR + 7, .len = 1500, .seed = 13 },
        { .kind = C_ZERO, .off = 8 * SECTOR, .len = 4 * SECTOR },
        { .kind = C_FLUSH },
        { .kind = C_TRUNC, .off = 24 * 1024 },
        { .kind = C_WRITE, .off = 30 * SECTOR, .len = 700, .seed = 14 },
    };
    for (size_t i = 0; i < sizeof(script) / sizeof(script[0]); i++)
        exec_call(&ru, script[i]);
    workload_end(&ru);

    uint64_t rng2 = 7;
    struct report rep = { .ctx = "self-check, the real log" };
    check_workload(&wl, wl.recs, wl.nrecs, 0, 6, &rng2, &rep);
    assert_int_equal(rep.violations, 0);

    const struct memfs_rec **broken = calloc(wl.nrecs + 1, sizeof(*broken));
    struct memfs_rec *noop = calloc(wl.nrecs + 1, sizeof(*noop));
    assert_true(broken && noop);

    drop_flushes(&wl, broken, noop, wl.img_id, 0);
    assert_true(broken_violations(&wl, broken, "image file never flushed") > 0);

    drop_flushes(&wl, broken, noop, wl.acf_id, 0);
    assert_true(broken_violations(&wl, broken, "add-cow file never flushed") > 0);

    /* In the first flush call: its image flush and its first bitmap write
     * change places. */
    const struct call *fc = &wl.calls[3];
    assert_int_equal(fc->kind, C_FLUSH);
    size_t fi = wl.nrecs, wa = wl.nrecs;
    for (size_t i = fc->ra; i < fc->rb; i++) {
        const struct memfs_rec *r = wl.recs[i];
        if (fi == wl.nrecs && r->kind == MEMFS_REC_FLUSH && r->file == wl.img_id)
            fi = i;
        if (wa == wl.nrecs && r->kind == MEMFS_REC_WRITE && r->file == wl.acf_id)
            wa = i;
    }
    if (!(fi < wa && wa < wl.nrecs))
        fail_msg("the first flush does not flush the image file (record %zu) before it "
                 "writes the bitmap (record %zu)", fi, wa);
    for (size_t i = 0; i < wl.nrecs; i++)
        broken[i] = wl.recs[i];
    broken[fi] = wl.recs[wa];
    broken[wa] = wl.recs[fi];
    assert_true(broken_violations(&wl, broken, "bitmap written before the image flush") > 0);

    free(broken);
    free(noop);
    workload_free(&wl);
}

static int print_totals(void **state)
{
    (void)state;
    print_message("crash states checked: %" PRIu64 ", violations: %" PRIu64 "\n", g_states,
                  g_violations);
    return 0;
}

int main(void)
{
    /* Every crash state of the large disks makes and frees buffers of a few
     * MiB: keep them in the heap, not in fresh mappings whose page faults
     * would cost more than the copying. */
#ifdef M_MMAP_THRESHOLD
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crashsim_catches_broken_logs),
        cmocka_unit_test(test_crashsim_raw_backing),
        cmocka_unit_test(test_crashsim_odd_backing),
        cmocka_unit_test(test_crashsim_no_backing),
        cmocka_unit_test(test_crashsim_large_bitmap),
    };
    return cmocka_run_group_tests(tests, NULL, print_totals);
}
