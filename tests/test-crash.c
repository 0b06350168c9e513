/*
 * test-crash.c: crash ordering (FORMAT.md, "Crash safety").
 *
 * Random workloads run on memfs with every change and flush recorded.  The
 * recorded sequence is then replayed one operation at a time, and at every
 * prefix of it (every point where the machine could lose power):
 *
 *  - ordering: each bitmap byte written to the add-cow file sets only bits
 *    whose sector's data was already made durable in the image file (the
 *    last write to that sector came before a flush of the image file that
 *    came before the bitmap write);
 *  - crash states: the files as durable (as of their last flush), as
 *    written (every unflushed write landed), and random mixes (any subset
 *    of the unflushed writes, sector by sector) are decoded by hand, and
 *    every sector reads either its content as of the last completed
 *    addcow_flush()/close or the content some later call gave it: never
 *    bytes that were never there, never an older state than the last
 *    flush;
 *  - truncate: the header's size is the size before or after the call in
 *    progress, and the add-cow file holds the whole bitmap for it.
 *
 * Plus the exact operations of addcow_flush() with nothing dirty and of
 * writes with cache=writethrough, and a check that the checkers themselves
 * catch broken orderings.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "addcow.h"
#include "membackend.h"
#include "options.h"
#include "testutil.h"

#define SECTOR 512u
#define BACKING_SEED 0xB0B0u

#define C_ADDCOW "/c/disk.add-cow"
#define C_IMAGE  "/c/disk.raw"
#define C_BACK   "/c/base.raw"

/* ---- workloads ------------------------------------------------------------- */

enum call_kind { C_CREATE, C_OPEN, C_WRITE, C_ZERO, C_FLUSH, C_TRUNC, C_CLOSE };

static const char *call_name(enum call_kind k)
{
    static const char *const n[] = { "create", "open", "pwrite", "write_zeroes", "flush",
                                      "truncate", "close" };
    return n[k];
}

struct call {
    enum call_kind kind;
    uint64_t off, len;          /* truncate: off = new size */
    unsigned flags;
    uint32_t seed;
    size_t ra, rb;              /* its records: [ra, rb) */
    bool flush_point;           /* on success, everything before it is durable */
    uint64_t size_before, size_after;
    unsigned char *after;       /* the virtual disk after it (maxdisk bytes,
                                 * zeros past size_after) */
    bool owns_after;
};

struct params {
    uint64_t disk;              /* size at create */
    uint64_t maxdisk;           /* truncate never goes past it */
    uint64_t backing_len;
    unsigned ncalls;
    bool writethrough;
    bool no_punch;
};

struct workload {
    struct params p;
    struct memfs *fs;           /* owns the records */
    struct memfs *start;        /* the files before the first record */
    unsigned char *backing;
    struct call *calls;
    size_t ncalls;
    const struct memfs_rec **recs;
    size_t nrecs;
    uint64_t acf_id, img_id;
};

static void workload_free(struct workload *wl)
{
    for (size_t i = 0; i < wl->ncalls; i++)
        if (wl->calls[i].owns_after)
            free(wl->calls[i].after);
    free(wl->calls);
    free(wl->recs);
    free(wl->backing);
    memfs_free(wl->start);
    memfs_free(wl->fs);
    memset(wl, 0, sizeof(*wl));
}

/* Picks the next call for a disk of `size` bytes. */
static struct call next_call(uint64_t *rng, const struct params *p, uint64_t size)
{
    struct call c = { .kind = C_WRITE, .seed = (uint32_t)tu_rand(rng) };
    unsigned pick = (unsigned)tu_rand_below(rng, 100);
    if (pick < 50) {
        switch (tu_rand_below(rng, 4)) {
        case 0:  /* whole sectors */
            c.len = SECTOR * (1 + tu_rand_below(rng, 12));
            c.off = SECTOR * tu_rand_below(rng, size / SECTOR);
            break;
        case 1:  /* inside one sector */
            c.len = 1 + tu_rand_below(rng, SECTOR - 1);
            c.off = tu_rand_below(rng, size / SECTOR) * SECTOR +
                    tu_rand_below(rng, SECTOR - c.len + 1);
            break;
        case 2:  /* around the backing file's end */
            c.len = 1 + tu_rand_below(rng, 3 * SECTOR);
            c.off = p->backing_len > c.len ? p->backing_len - tu_rand_below(rng, c.len) : 0;
            break;
        default:
            c.len = 1 + tu_rand_below(rng, 8 * SECTOR);
            c.off = tu_rand_below(rng, size);
            break;
        }
        if (c.len > size)
            c.len = size;
        if (c.off + c.len > size)
            c.off = size - c.len;
    } else if (pick < 62) {
        c.kind = C_ZERO;
        c.len = 1 + tu_rand_below(rng, 16 * SECTOR);
        if (c.len > size)
            c.len = size;
        c.off = tu_rand_below(rng, size - c.len + 1);
        c.flags = tu_rand_below(rng, 2) ? ADDCOW_ZEROES_MAY_UNMAP : 0;
    } else if (pick < 80) {
        c.kind = C_FLUSH;
    } else if (pick < 92) {
        c.kind = C_TRUNC;
        uint64_t lo = 16, hi = p->maxdisk / SECTOR;
        c.off = SECTOR * (lo + tu_rand_below(rng, hi - lo + 1));
    } else {
        c.kind = C_CLOSE;           /* followed by an open */
    }
    return c;
}

/* Runs one call on the image and applies it to the model. */
static void exec_call(struct workload *wl, struct call *c, addcow_image **img,
                      addcow_options *o, unsigned char *model, uint64_t *size)
{
    int64_t r = 0;
    unsigned char *data = NULL;
    c->size_before = *size;
    c->ra = memfs_rec_count(wl->fs);
    switch (c->kind) {
    case C_CREATE:
        r = addcow_create(C_ADDCOW, c->off, "base.raw", "disk.raw", o);
        memset(model, 0, wl->p.maxdisk);
        memcpy(model, wl->backing, wl->p.backing_len < c->off ? wl->p.backing_len : c->off);
        *size = c->off;
        break;
    case C_OPEN:
        r = addcow_open(C_ADDCOW, ADDCOW_OPEN_RDWR, o, img);
        break;
    case C_WRITE:
        data = malloc(c->len);
        assert_non_null(data);
        tu_fill_pattern(data, c->len, c->seed, c->off);
        r = addcow_pwrite(*img, data, c->len, c->off);
        if (r == (int64_t)c->len)
            r = 0;
        memcpy(model + c->off, data, c->len);
        break;
    case C_ZERO:
        r = addcow_write_zeroes(*img, c->off, c->len, c->flags);
        memset(model + c->off, 0, c->len);
        break;
    case C_FLUSH:
        r = addcow_flush(*img);
        break;
    case C_TRUNC:
        r = addcow_truncate(*img, c->off);
        if (c->off < *size)
            memset(model + c->off, 0, *size - c->off);
        *size = c->off;
        break;
    case C_CLOSE:
        r = addcow_close(*img);
        *img = NULL;
        break;
    }
    free(data);
    if (r != 0)
        fail_msg("%s(off %" PRIu64 ", len %" PRIu64 ") returned %" PRId64 ": %s",
                 call_name(c->kind), c->off, c->len, r, addcow_last_error());
    c->rb = memfs_rec_count(wl->fs);
    c->size_after = *size;
    c->flush_point = c->kind == C_CREATE || c->kind == C_FLUSH || c->kind == C_CLOSE ||
                     (wl->p.writethrough && (c->kind == C_WRITE || c->kind == C_ZERO));
}

/* A fresh memfs with the backing file in it, for a workload of parameters p;
 * wl->start keeps a copy of it as the files before the first record. */
static void workload_start(struct workload *wl, const struct params *p)
{
    memset(wl, 0, sizeof(*wl));
    wl->p = *p;
    wl->fs = memfs_new();
    wl->backing = malloc(p->backing_len);
    assert_true(wl->fs && wl->backing);
    tu_fill_pattern(wl->backing, p->backing_len, BACKING_SEED, 0);
    assert_int_equal(memfs_put(wl->fs, C_BACK, wl->backing, p->backing_len), 0);
    memfs_set_punch_supported(wl->fs, !p->no_punch);
    wl->start = memfs_clone(wl->fs);
    assert_non_null(wl->start);
}

/* After the calls: takes the records and the ids of the two files. */
static void workload_collect(struct workload *wl)
{
    wl->nrecs = memfs_rec_count(wl->fs);
    wl->recs = calloc(wl->nrecs + 1, sizeof(*wl->recs));
    assert_non_null(wl->recs);
    for (size_t i = 0; i < wl->nrecs; i++)
        wl->recs[i] = memfs_rec_at(wl->fs, i);
    wl->acf_id = memfs_file_id(wl->fs, C_ADDCOW);
    wl->img_id = memfs_file_id(wl->fs, C_IMAGE);
    assert_true(wl->acf_id != 0 && wl->img_id != 0 && wl->acf_id != wl->img_id);
}

/* Creates, opens, runs random calls and closes, on a fresh memfs, with
 * every change recorded. */
static void run_workload(struct workload *wl, const struct params *p, uint64_t *rng)
{
    workload_start(wl, p);
    addcow_options *o = memfs_options(wl->fs);
    assert_non_null(o);
    if (p->writethrough)
        assert_int_equal(addcow_options_set(o, "cache", "writethrough"), 0);
    size_t cap = p->ncalls * 2 + 4;
    wl->calls = calloc(cap, sizeof(*wl->calls));
    unsigned char *model = calloc(1, p->maxdisk);
    assert_true(wl->calls && model);
    addcow_image *img = NULL;
    uint64_t size = 0;

    memfs_record_start(wl->fs);
    for (unsigned i = 0; wl->ncalls < cap - 1; i++) {
        struct call c;
        if (i == 0)
            c = (struct call){ .kind = C_CREATE, .off = p->disk };
        else if (img == NULL)
            c = (struct call){ .kind = C_OPEN };
        else if (i >= p->ncalls)
            c = (struct call){ .kind = C_CLOSE };
        else
            c = next_call(rng, p, size);
        exec_call(wl, &c, &img, o, model, &size);
        bool changed = c.kind == C_CREATE || c.kind == C_WRITE || c.kind == C_ZERO ||
                       c.kind == C_TRUNC;
        if (changed || wl->ncalls == 0) {
            c.after = malloc(p->maxdisk);
            assert_non_null(c.after);
            memcpy(c.after, model, p->maxdisk);
            c.owns_after = true;
        } else {
            c.after = wl->calls[wl->ncalls - 1].after;
        }
        wl->calls[wl->ncalls++] = c;
        if (i >= p->ncalls && img == NULL)
            break;
    }
    memfs_record_stop(wl->fs);
    free(model);
    addcow_options_free(o);
    assert_int_equal(memfs_open_handles(wl->fs), 0);
    workload_collect(wl);
}

/* ---- violations -------------------------------------------------------------- */

struct report {
    unsigned violations;
    bool quiet;
    const char *ctx;
};

static void violation(struct report *rep, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void violation(struct report *rep, const char *fmt, ...)
{
    rep->violations++;
    if (rep->quiet || rep->violations > 5)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    print_message("# VIOLATION (%s): %s\n", rep->ctx, msg);
}

static void describe_rec(const struct memfs_rec *r, char *out, size_t n)
{
    snprintf(out, n, "%s %s @%" PRIu64 "+%" PRIu64, memfs_rec_kind_name(r->kind),
             r->name, r->offset, r->length);
}

/* ---- check 1: the order of bitmap writes and image flushes ------------------- */

static void check_ordering(const struct workload *wl, const struct memfs_rec *const *recs,
                           size_t n, struct report *rep)
{
    uint64_t nsect = wl->p.maxdisk / SECTOR + 64;
    int64_t *last_touch = malloc(nsect * sizeof(*last_touch));
    int64_t last_flush = -1;
    assert_non_null(last_touch);
    for (uint64_t s = 0; s < nsect; s++)
        last_touch[s] = -1;

    for (size_t i = 0; i < n; i++) {
        const struct memfs_rec *r = recs[i];
        if (r->file == wl->img_id) {
            uint64_t lo = 0, hi = 0;
            if (r->kind == MEMFS_REC_WRITE) {
                lo = r->offset;
                hi = r->offset + r->length;
            } else if (r->kind == MEMFS_REC_PUNCH) {
                lo = r->offset;
                hi = r->offset + r->length < r->old_length ? r->offset + r->length
                                                           : r->old_length;
            } else if (r->kind == MEMFS_REC_TRUNCATE) {
                lo = r->offset < r->old_length ? r->offset : r->old_length;
                hi = r->offset < r->old_length ? r->old_length : r->offset;
            } else if (r->kind == MEMFS_REC_FLUSH) {
                last_flush = (int64_t)i;
            }
            for (uint64_t s = lo / SECTOR; lo < hi && s < (hi + SECTOR - 1) / SECTOR &&
                                           s < nsect; s++)
                last_touch[s] = (int64_t)i;
        } else if (r->file == wl->acf_id && r->kind == MEMFS_REC_WRITE &&
                   r->offset + r->length > TU_HDR_SIZE) {
            for (uint64_t o = r->offset < TU_HDR_SIZE ? TU_HDR_SIZE : r->offset;
                 o < r->offset + r->length; o++) {
                unsigned char v = r->data[o - r->offset];
                for (unsigned b = 0; b < 8; b++) {
                    uint64_t s = (o - TU_HDR_SIZE) * 8 + b;
                    if (!((v >> b) & 1) || s >= nsect || last_touch[s] <= last_flush)
                        continue;
                    char d1[200], d2[200];
                    describe_rec(r, d1, sizeof(d1));
                    describe_rec(recs[last_touch[s]], d2, sizeof(d2));
                    violation(rep, "record %zu (%s) sets the bit of sector %" PRIu64
                              ", whose data (record %" PRId64 ": %s) the image file "
                              "has not flushed yet (its last flush: record %" PRId64 ")",
                              i, d1, s, last_touch[s], d2, last_flush);
                }
            }
        }
    }
    free(last_touch);
}

/* ---- check 2: crash states at every prefix ------------------------------------- */

/* Reads sector n of a file (zeros past its end) into out. */
static void file_sector(const unsigned char *f, size_t len, uint64_t n, unsigned char *out)
{
    uint64_t off = n * SECTOR;
    memset(out, 0, SECTOR);
    if (off < len)
        memcpy(out, f + off, len - off < SECTOR ? (size_t)(len - off) : SECTOR);
}

struct view {
    const char *what;
    unsigned char *acf, *img;
    size_t acf_len, img_len;
};

/* Decodes a crash state by hand and checks it: a valid header with the
 * right names and an allowed size, the whole bitmap present, and every
 * sector one of the allowed contents. */
static void check_view(const struct workload *wl, const struct view *v, size_t k,
                       const uint64_t sizes[2], const size_t *cand, size_t ncand,
                       struct report *rep)
{
    unsigned char sec[SECTOR];

    if (v->acf_len < TU_HDR_SIZE || tu_get_be(v->acf, 8) != TU_MAGIC ||
        tu_get_be(v->acf + TU_OFF_VERSION, 4) != 1 ||
        memcmp(v->acf + TU_OFF_BACKING, "base.raw", 9) != 0 ||
        memcmp(v->acf + TU_OFF_IMAGE, "disk.raw", 9) != 0) {
        violation(rep, "prefix %zu, %s view: the add-cow file (%zu bytes) has no valid "
                  "header", k, v->what, v->acf_len);
        return;
    }
    uint64_t size = tu_get_be(v->acf + TU_OFF_SIZE, 8);
    if (size != sizes[0] && size != sizes[1]) {
        violation(rep, "prefix %zu, %s view: header size %" PRIu64 ", but the call in "
                  "progress goes from %" PRIu64 " to %" PRIu64, k, v->what, size, sizes[0],
                  sizes[1]);
        return;
    }
    uint64_t nsect = size / SECTOR;
    uint64_t need = TU_HDR_SIZE + nsect / 8 + (nsect % 8 != 0);
    if (v->acf_len < need) {
        violation(rep, "prefix %zu, %s view: the add-cow file has %zu bytes; size %" PRIu64
                  " needs %" PRIu64, k, v->what, v->acf_len, size, need);
        return;
    }
    for (uint64_t n = 0; n < nsect; n++) {
        bool bit = (v->acf[TU_HDR_SIZE + n / 8] >> (n % 8)) & 1;
        if (bit)
            file_sector(v->img, v->img_len, n, sec);
        else
            file_sector(wl->backing, wl->p.backing_len, n, sec);
        bool ok = false;
        for (size_t j = 0; j < ncand && !ok; j++) {
            const struct call *c = &wl->calls[cand[j]];
            ok = (n + 1) * SECTOR <= c->size_after &&
                 memcmp(sec, c->after + n * SECTOR, SECTOR) == 0;
        }
        if (!ok) {
            const struct call *f = &wl->calls[cand[0]];
            bool had_flushed = (n + 1) * SECTOR <= f->size_after;
            violation(rep, "prefix %zu, %s view: sector %" PRIu64 " (bit %s) reads bytes "
                      "that are neither its content at the last flush (call %zu, %s) nor "
                      "any later call's%s", k, v->what, n, bit ? "set" : "clear", cand[0],
                      call_name(f->kind),
                      had_flushed && memcmp(sec, f->after + n * SECTOR, SECTOR) != 0
                          ? ": a flushed write is lost or never-written bytes show" : "");
            return;
        }
    }
}

/* Unflushed records of one file since its last flush. */
struct pending {
    size_t *idx;
    size_t n;
};

/* A crash state of one file: its durable bytes, then its unflushed
 * changes, each sector cut at its own random point of their sequence.
 * That is what a disk can hold: a sector is written whole, from a page
 * cache that already holds every earlier change to it, so each sector
 * shows the state after some prefix of the changes to it (from its last
 * flush on), and sectors go to the disk in any order.  The file's length
 * is the length after its own random prefix. */
static unsigned char *mixed_view(struct memfs *fs, const char *name, const struct pending *pd,
                                 const struct memfs_rec *const *recs, uint64_t *rng,
                                 size_t *len)
{
    size_t dlen;
    unsigned char *dur = memfs_get_durable(fs, name, &dlen);
    assert_non_null(dur);
    /* Lengths after each prefix, and the largest. */
    size_t cur = dlen, maxlen = dlen;
    size_t len_cut = (size_t)tu_rand_below(rng, pd->n + 1), final_len = dlen;
    for (size_t i = 0; i < pd->n; i++) {
        const struct memfs_rec *r = recs[pd->idx[i]];
        if (r->kind == MEMFS_REC_WRITE && r->offset + r->length > cur)
            cur = (size_t)(r->offset + r->length);
        else if (r->kind == MEMFS_REC_TRUNCATE)
            cur = (size_t)r->offset;
        if (cur > maxlen)
            maxlen = cur;
        if (i + 1 == len_cut)
            final_len = cur;
    }
    size_t nsect = maxlen / SECTOR + 1;
    unsigned char *buf = calloc(1, nsect * SECTOR);
    size_t *cut = malloc(nsect * sizeof(*cut));
    assert_true(buf && cut);
    memcpy(buf, dur, dlen);
    free(dur);
    for (size_t s = 0; s < nsect; s++)
        cut[s] = (size_t)tu_rand_below(rng, pd->n + 1);

    for (size_t i = 0; i < pd->n; i++) {
        const struct memfs_rec *r = recs[pd->idx[i]];
        uint64_t lo, hi;
        if (r->kind == MEMFS_REC_WRITE) {
            lo = r->offset;
            hi = r->offset + r->length;
        } else if (r->kind == MEMFS_REC_PUNCH) {
            lo = r->offset;
            hi = r->offset + r->length < r->old_length ? r->offset + r->length : r->old_length;
        } else {            /* truncate: a shrink zeroes what it cuts off */
            lo = r->offset;
            hi = r->old_length;
        }
        for (uint64_t o = lo; o < hi;) {
            uint64_t s = o / SECTOR, end = (s + 1) * SECTOR < hi ? (s + 1) * SECTOR : hi;
            if (i < cut[s]) {
                if (r->kind == MEMFS_REC_WRITE)
                    memcpy(buf + o, r->data + (o - r->offset), (size_t)(end - o));
                else
                    memset(buf + o, 0, (size_t)(end - o));
            }
            o = end;
        }
    }
    free(cut);
    *len = final_len;
    return buf;
}

static void pending_note(struct pending *pd, const struct memfs_rec *r, size_t i)
{
    if (r->kind == MEMFS_REC_FLUSH)
        pd->n = 0;
    else if (r->kind == MEMFS_REC_WRITE || r->kind == MEMFS_REC_TRUNCATE ||
             r->kind == MEMFS_REC_PUNCH)
        pd->idx[pd->n++] = i;
}

static void check_prefixes(const struct workload *wl, const struct memfs_rec *const *recs,
                           size_t n, uint64_t *rng, unsigned mixes, struct report *rep)
{
    struct memfs *fs = memfs_clone(wl->start);
    struct pending pa = { calloc(n + 1, sizeof(size_t)), 0 };
    struct pending pi = { calloc(n + 1, sizeof(size_t)), 0 };
    size_t *cand = calloc(wl->ncalls + 1, sizeof(size_t));
    assert_true(fs && pa.idx && pi.idx && cand);
    size_t create_end = wl->calls[0].rb;

    for (size_t k = 0; k <= n; k++) {
        if (k > 0) {
            const struct memfs_rec *r = recs[k - 1];
            int e = memfs_apply(fs, r);
            if (e != 0)
                fail_msg("replaying record %zu (%s %s): %d", k - 1,
                         memfs_rec_kind_name(r->kind), r->name, e);
            if (r->file == wl->acf_id)
                pending_note(&pa, r, k - 1);
            else if (r->file == wl->img_id)
                pending_note(&pi, r, k - 1);
        }
        bool exists = memfs_exists(fs, C_ADDCOW) == 1;
        if (exists != (k >= create_end)) {
            violation(rep, "prefix %zu: the add-cow file %s while create is %s", k,
                      exists ? "exists" : "is missing", k >= create_end ? "done" : "running");
            continue;
        }
        if (!exists)
            continue;

        /* The call that issued record k - 1; the last completed flush
         * point; every call begun since. */
        size_t c = 0, f = 0, last = 0;
        for (size_t j = 0; j < wl->ncalls; j++) {
            const struct call *cj = &wl->calls[j];
            if (cj->ra < k && k <= cj->rb && cj->ra < cj->rb)
                c = j;
            if (cj->flush_point && cj->rb <= k)
                f = j;
            if (cj->ra < k)
                last = j;
        }
        size_t ncand = 0;
        for (size_t j = f; j <= last; j++)
            if (j == f || wl->calls[j].after != wl->calls[j - 1].after)
                cand[ncand++] = j;
        const uint64_t sizes[2] = { wl->calls[c].size_before, wl->calls[c].size_after };

        struct view v;
        v.what = "as written";
        v.acf = memfs_get(fs, C_ADDCOW, &v.acf_len);
        v.img = memfs_get(fs, C_IMAGE, &v.img_len);
        assert_true(v.acf && v.img);
        check_view(wl, &v, k, sizes, cand, ncand, rep);
        /* After a truncate or create: exactly header + bitmap long. */
        if (k == wl->calls[c].rb &&
            (wl->calls[c].kind == C_TRUNC || wl->calls[c].kind == C_CREATE)) {
            uint64_t s = wl->calls[c].size_after / SECTOR;
            if (v.acf_len != TU_HDR_SIZE + s / 8 + (s % 8 != 0))
                violation(rep, "after %s to %" PRIu64 ": the add-cow file has %zu bytes",
                          call_name(wl->calls[c].kind), wl->calls[c].size_after, v.acf_len);
        }
        free(v.acf);
        free(v.img);

        v.what = "durable";
        v.acf = memfs_get_durable(fs, C_ADDCOW, &v.acf_len);
        v.img = memfs_get_durable(fs, C_IMAGE, &v.img_len);
        assert_true(v.acf && v.img);
        check_view(wl, &v, k, sizes, cand, ncand, rep);
        free(v.acf);
        free(v.img);

        for (unsigned m = 0; m < mixes && (pa.n > 0 || pi.n > 0); m++) {
            v.what = "mixed";
            v.acf = mixed_view(fs, C_ADDCOW, &pa, recs, rng, &v.acf_len);
            v.img = mixed_view(fs, C_IMAGE, &pi, recs, rng, &v.img_len);
            check_view(wl, &v, k, sizes, cand, ncand, rep);
            free(v.acf);
            free(v.img);
        }
    }
    free(pa.idx);
    free(pi.idx);
    free(cand);
    memfs_free(fs);
}

/* ---- check 3: writethrough writes end with the flush sequence ----------------- */

static void check_writethrough(const struct workload *wl, struct report *rep)
{
    for (size_t j = 0; j < wl->ncalls; j++) {
        const struct call *c = &wl->calls[j];
        if (c->kind != C_WRITE && c->kind != C_ZERO)
            continue;
        for (size_t i = c->ra; i < c->rb; i++) {
            const struct memfs_rec *r = wl->recs[i];
            uint64_t file = r->file;
            if (r->kind == MEMFS_REC_FLUSH || r->kind == MEMFS_REC_CREATE)
                continue;
            bool flushed = false;
            for (size_t t = i + 1; t < c->rb && !flushed; t++)
                flushed = wl->recs[t]->kind == MEMFS_REC_FLUSH && wl->recs[t]->file == file;
            if (!flushed) {
                char d[200];
                describe_rec(r, d, sizeof(d));
                violation(rep, "writethrough %s (call %zu): record %zu (%s) is not "
                          "flushed before the call returns", call_name(c->kind), j, i, d);
            }
        }
    }
}

/* ---- the tests ---------------------------------------------------------------------- */

static void crash_workloads(const char *name, const struct params *base, unsigned rounds,
                            unsigned mixes)
{
    uint64_t seed = tu_seed(name);
    for (unsigned round = 0; round < rounds; round++) {
        uint64_t rng = seed ^ (round * UINT64_C(0x9E3779B97F4A7C15));
        if (rng == 0)
            rng = 1;
        struct params p = *base;
        p.no_punch = tu_rand_below(&rng, 4) == 0;
        struct workload wl;
        char ctx[160];
        snprintf(ctx, sizeof(ctx), "%s seed %" PRIu64 " round %u%s", name, seed, round,
                 p.no_punch ? " (no punch)" : "");
        struct report rep = { 0, false, ctx };
        run_workload(&wl, &p, &rng);
        check_ordering(&wl, wl.recs, wl.nrecs, &rep);
        check_prefixes(&wl, wl.recs, wl.nrecs, &rng, mixes, &rep);
        if (p.writethrough)
            check_writethrough(&wl, &rep);

        /* The final files: bits past the end are zero, the length exact. */
        size_t alen;
        unsigned char *acf = memfs_get(wl.fs, C_ADDCOW, &alen);
        assert_non_null(acf);
        uint64_t s = wl.calls[wl.ncalls - 1].size_after / SECTOR;
        assert_int_equal(tu_get_be(acf + TU_OFF_SIZE, 8), s * SECTOR);
        assert_int_equal(alen, TU_HDR_SIZE + s / 8 + (s % 8 != 0));
        if (s % 8 != 0 && (acf[TU_HDR_SIZE + s / 8] >> (s % 8)) != 0)
            violation(&rep, "bits past the last sector are set in the last bitmap byte");
        free(acf);
        size_t nrecs = wl.nrecs, ncalls = wl.ncalls;
        workload_free(&wl);
        if (rep.violations > 0)
            fail_msg("%s: %u violations (first ones above)", ctx, rep.violations);
        if (round == 0)
            print_message("# %s: %zu calls, %zu recorded operations per workload\n", name,
                          ncalls, nrecs);
    }
}

static void test_crash_writeback(void **state)
{
    (void)state;
    struct params p = { .disk = 48 * 1024, .maxdisk = 80 * 1024, .backing_len = 30000,
                        .ncalls = 40 };
    crash_workloads("test_crash_writeback", &p, tu_scale(12), 2);
}

static void test_crash_writethrough(void **state)
{
    (void)state;
    struct params p = { .disk = 48 * 1024, .maxdisk = 80 * 1024, .backing_len = 30000,
                        .ncalls = 25, .writethrough = true };
    crash_workloads("test_crash_writethrough", &p, tu_scale(5), 1);
}

/* A disk whose bitmap spans more than one dirty block (512 bitmap bytes). */
static void test_crash_large_bitmap(void **state)
{
    (void)state;
    struct params p = { .disk = 2560 * 1024, .maxdisk = 2816 * 1024,
                        .backing_len = 2300 * 1024 + 100, .ncalls = 14 };
    crash_workloads("test_crash_large_bitmap", &p, tu_scale(2), 1);
}

/* broken[] is the log with the flushes of one file, from record `from` on,
 * turned into no-ops that keep their place (in noop[]: a flush of no file). */
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

/* Both checkers must report the broken log. */
static void expect_both_catch(const struct workload *wl, const struct memfs_rec *const *broken,
                              uint64_t *rng, unsigned mixes, const char *ctx)
{
    struct report ro = { 0, true, ctx };
    check_ordering(wl, broken, wl->nrecs, &ro);
    assert_true(ro.violations > 0);
    struct report rp = { 0, true, ctx };
    check_prefixes(wl, broken, wl->nrecs, rng, mixes, &rp);
    assert_true(rp.violations > 0);
}

/* The checkers must be able to fail: a hand-made workload whose log is
 * then broken in three ways. */
static void test_checkers_catch_bad_orders(void **state)
{
    (void)state;
    struct params p = { .disk = 16 * 1024, .maxdisk = 16 * 1024, .backing_len = 5000,
                        .ncalls = 0 };
    struct workload wl;
    workload_start(&wl, &p);
    wl.calls = calloc(8, sizeof(*wl.calls));
    addcow_options *o = memfs_options(wl.fs);
    unsigned char *model = calloc(1, p.maxdisk);
    addcow_image *img = NULL;
    uint64_t size = 0;
    const struct call script[] = {
        { .kind = C_CREATE, .off = p.disk },
        { .kind = C_OPEN },
        { .kind = C_WRITE, .off = 3 * SECTOR, .len = SECTOR, .seed = 1 },
        { .kind = C_FLUSH },
        { .kind = C_WRITE, .off = 10 * SECTOR + 7, .len = 100, .seed = 2 },
        { .kind = C_CLOSE },
    };
    memfs_record_start(wl.fs);
    for (size_t i = 0; i < sizeof(script) / sizeof(script[0]); i++) {
        struct call c = script[i];
        exec_call(&wl, &c, &img, o, model, &size);
        c.after = malloc(p.maxdisk);
        memcpy(c.after, model, p.maxdisk);
        c.owns_after = true;
        wl.calls[wl.ncalls++] = c;
    }
    memfs_record_stop(wl.fs);
    free(model);
    addcow_options_free(o);
    workload_collect(&wl);
    uint64_t rng = 12345;

    /* The real log passes. */
    struct report rep = { 0, false, "unbroken log" };
    check_ordering(&wl, wl.recs, wl.nrecs, &rep);
    check_prefixes(&wl, wl.recs, wl.nrecs, &rng, 4, &rep);
    assert_int_equal(rep.violations, 0);

    /* Records turned into no-ops keep their place: a flush of no file. */
    const struct memfs_rec **broken = calloc(wl.nrecs, sizeof(*broken));
    struct memfs_rec *noop = calloc(wl.nrecs, sizeof(*noop));
    assert_true(broken && noop);

    /* 1: the image file never flushed. */
    drop_flushes(&wl, broken, noop, wl.img_id, 0);
    expect_both_catch(&wl, broken, &rng, 4, "no image flush");

    /* 2: the add-cow file never flushed: the flushed write is lost. */
    drop_flushes(&wl, broken, noop, wl.acf_id, wl.calls[0].rb);
    struct report r2 = { 0, true, "no add-cow flush" };
    check_ordering(&wl, broken, wl.nrecs, &r2);
    assert_int_equal(r2.violations, 0);
    check_prefixes(&wl, broken, wl.nrecs, &rng, 4, &r2);
    assert_true(r2.violations > 0);

    /* 3: the first bitmap write moved before the image flush before it. */
    size_t bw = wl.nrecs, fl = wl.nrecs;
    for (size_t i = wl.calls[3].ra; i < wl.calls[3].rb; i++) {
        if (fl == wl.nrecs && wl.recs[i]->kind == MEMFS_REC_FLUSH &&
            wl.recs[i]->file == wl.img_id)
            fl = i;
        if (bw == wl.nrecs && wl.recs[i]->kind == MEMFS_REC_WRITE &&
            wl.recs[i]->file == wl.acf_id)
            bw = i;
    }
    assert_true(fl < bw && bw < wl.nrecs);
    for (size_t i = 0; i < wl.nrecs; i++)
        broken[i] = wl.recs[i];
    broken[fl] = wl.recs[bw];
    broken[bw] = wl.recs[fl];
    expect_both_catch(&wl, broken, &rng, 32, "bitmap before image flush");

    free(broken);
    free(noop);
    workload_free(&wl);
}

/* Starts a small image on memfs and opens it. */
static addcow_image *open_small(struct memfs *fs, addcow_options *o)
{
    unsigned char back[3000];
    addcow_image *img = NULL;
    tu_fill_pattern(back, sizeof(back), BACKING_SEED, 0);
    assert_int_equal(memfs_put(fs, C_BACK, back, sizeof(back)), 0);
    assert_int_equal(addcow_create(C_ADDCOW, 64 * 1024, "base.raw", "disk.raw", o), 0);
    assert_int_equal(addcow_open(C_ADDCOW, ADDCOW_OPEN_RDWR, o, &img), 0);
    return img;
}

/* Records what fn does and compares the record kinds and files with the
 * expected ones ('W' write, 'F' flush; 'i' image file, 'a' add-cow). */
static void expect_ops(struct memfs *fs, const char *what, const char *want)
{
    char got[256] = "";
    uint64_t img = memfs_file_id(fs, C_IMAGE), acf = memfs_file_id(fs, C_ADDCOW);
    for (size_t i = 0; i < memfs_rec_count(fs); i++) {
        const struct memfs_rec *r = memfs_rec_at(fs, i);
        char k = r->kind == MEMFS_REC_WRITE ? 'W' : r->kind == MEMFS_REC_FLUSH ? 'F'
               : r->kind == MEMFS_REC_TRUNCATE ? 'T' : r->kind == MEMFS_REC_PUNCH ? 'P' : '?';
        char f = r->file == img ? 'i' : r->file == acf ? 'a' : '?';
        size_t l = strlen(got);
        if (l + 4 < sizeof(got))
            snprintf(got + l, sizeof(got) - l, "%s%c%c", l ? " " : "", k, f);
    }
    if (strcmp(got, want) != 0)
        fail_msg("%s: operations '%s', expected '%s'", what, got, want);
}

/* Flushes img with every change recorded, and checks the operations. */
static void recorded_flush(struct memfs *fs, addcow_image *img, const char *what,
                           const char *want)
{
    memfs_record_start(fs);
    assert_int_equal(addcow_flush(img), 0);
    memfs_record_stop(fs);
    expect_ops(fs, what, want);
}

static void test_flush_without_dirty_bits(void **state)
{
    (void)state;
    struct memfs *fs = memfs_new();
    addcow_options *o = memfs_options(fs);
    addcow_image *img = open_small(fs, o);
    unsigned char data[1024];
    tu_fill_pattern(data, sizeof(data), 3, 0);

    /* Nothing written yet. */
    memfs_op_count_reset(fs);
    recorded_flush(fs, img, "flush of a fresh image", "Fi");
    assert_int_equal(memfs_op_count(fs, MEMFS_OP_FLUSH), 1);
    assert_int_equal(memfs_op_count(fs, MEMFS_OP_WRITE | MEMFS_OP_TRUNCATE | MEMFS_OP_PUNCH),
                     0);

    /* A write that allocates: the flush writes its bits, after the image
     * file's flush, and makes them durable. */
    assert_int_equal(addcow_pwrite(img, data, 1024, 8192), 1024);
    recorded_flush(fs, img, "flush after an allocating write", "Fi Wa Fa");
    const struct memfs_rec *bw = memfs_rec_at(fs, 1);
    assert_true(bw->offset <= TU_HDR_SIZE + 2 && bw->offset + bw->length > TU_HDR_SIZE + 2);
    assert_int_equal(bw->data[TU_HDR_SIZE + 2 - bw->offset] & 0x03, 0x03); /* sectors 16, 17 */

    /* Again: nothing dirty. */
    memfs_op_count_reset(fs);
    recorded_flush(fs, img, "second flush", "Fi");
    assert_int_equal(memfs_op_count(fs, MEMFS_OP_FLUSH), 1);
    assert_int_equal(memfs_op_count(fs, MEMFS_OP_WRITE), 0);

    /* An overwrite in place sets no new bit: its flush is the image's only. */
    assert_int_equal(addcow_pwrite(img, data + 5, 300, 8192 + 17), 300);
    memfs_op_count_reset(fs);
    recorded_flush(fs, img, "flush after an overwrite in place", "Fi");
    assert_int_equal(memfs_op_count(fs, MEMFS_OP_FLUSH), 1);
    assert_int_equal(memfs_op_count(fs, MEMFS_OP_WRITE), 0);

    assert_int_equal(addcow_close(img), 0);
    assert_int_equal(memfs_open_handles(fs), 0);
    addcow_options_free(o);
    memfs_free(fs);
}

static void test_writethrough_sequence(void **state)
{
    (void)state;
    struct memfs *fs = memfs_new();
    addcow_options *o = memfs_options(fs);
    assert_int_equal(addcow_options_set(o, "cache", "writethrough"), 0);
    addcow_image *img = open_small(fs, o);
    unsigned char data[1024];
    tu_fill_pattern(data, sizeof(data), 4, 0);

    /* Allocating: data, image flush, bits, add-cow flush. */
    memfs_record_start(fs);
    assert_int_equal(addcow_pwrite(img, data, 1024, 4096), 1024);
    memfs_record_stop(fs);
    expect_ops(fs, "writethrough allocating write", "Wi Fi Wa Fa");
    unsigned char *d = memfs_get_durable(fs, C_ADDCOW, NULL);
    assert_int_equal(d[TU_HDR_SIZE + 1] & 0x03, 0x03);                  /* sectors 8, 9 */
    free(d);

    /* Partial sector over the backing file: one write (with the copied
     * bytes), then the same flushes. */
    memfs_record_start(fs);
    assert_int_equal(addcow_pwrite(img, data, 10, 1000), 10);
    memfs_record_stop(fs);
    expect_ops(fs, "writethrough partial write", "Wi Fi Wa Fa");
    assert_int_equal(memfs_rec_at(fs, 0)->offset, 512);
    assert_int_equal(memfs_rec_at(fs, 0)->length, 512);

    /* In place: data and the image flush. */
    memfs_record_start(fs);
    assert_int_equal(addcow_pwrite(img, data, 100, 4096 + 50), 100);
    memfs_record_stop(fs);
    expect_ops(fs, "writethrough overwrite", "Wi Fi");

    /* write_zeroes over allocated sectors: the same. */
    memfs_record_start(fs);
    assert_int_equal(addcow_write_zeroes(img, 4096, 512, 0), 0);
    memfs_record_stop(fs);
    if (memfs_rec_count(fs) == 0 ||
        memfs_rec_at(fs, memfs_rec_count(fs) - 1)->kind != MEMFS_REC_FLUSH)
        fail_msg("writethrough write_zeroes does not end with a flush");

    /* Every write durable at once: a crash now (durable view) reads it. */
    d = memfs_get_durable(fs, C_IMAGE, NULL);
    assert_memory_equal(d + 4096 + 512, data + 512, 512);
    assert_memory_equal(d + 1000, data, 10);
    free(d);
    assert_int_equal(addcow_close(img), 0);
    addcow_options_free(o);
    memfs_free(fs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checkers_catch_bad_orders),
        cmocka_unit_test(test_flush_without_dirty_bits),
        cmocka_unit_test(test_writethrough_sequence),
        cmocka_unit_test(test_crash_writeback),
        cmocka_unit_test(test_crash_writethrough),
        cmocka_unit_test(test_crash_large_bitmap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
