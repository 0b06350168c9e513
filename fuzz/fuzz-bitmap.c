/*
 * fuzz-bitmap.c: the chunked sector bitmap (lib/bitmap.h) against a naive
 * model: one byte per bit, a flag per chunk (known or not), and two flags
 * per dirty block (must be dirty: a bit of it changed; may be dirty: an
 * operation touched it).
 *
 * The input picks a size (often several chunks, or just around a chunk
 * boundary), whether the bitmap starts known (all clear) or UNKNOWN, then
 * a list of operations: set and clear ranges, the searches, all_set,
 * count_range, uniform, test, resize, load and store of on-disk bytes,
 * chunk install and set-zero, first_unknown, dirty-block marking, clearing
 * and walking, and the plain ac_bits_* helpers.  Each operation keeps to
 * its documented preconditions (no query reaches into an UNKNOWN chunk,
 * resize needs the chunks of the old and new last bits known); after each
 * one the results, the bits it touched, the counters and every chunk's
 * internal state are compared with the model, and at the end every bit.
 */
#include "config.h"

#include <stdbool.h>
#include <string.h>

#include "bitmap.h"
#include "fuzz.h"

/* The model's own loops are left out of libFuzzer's coverage (they would
 * only slow it down); NOCOV says so where the compiler knows how. */
#if defined(__clang__) && __clang_major__ >= 13
#define NOCOV __attribute__((no_sanitize("coverage")))
#else
#define NOCOV
#endif

#define CB AC_BM_CHUNK_BITS
#define MAX_BITS (4 * CB + 4096)
#define MAX_OPS 32
#define BLOCK_BITS ((uint64_t)AC_BM_DIRTY_BLOCK * 8)
#define SMALL_BITS 1000u

struct model {
    uint64_t nbits;
    uint8_t bit[MAX_BITS];
    uint8_t known[MAX_BITS / CB + 2];
    uint8_t must[MAX_BITS / BLOCK_BITS + 2];
    uint8_t may[MAX_BITS / BLOCK_BITS + 2];
    uint8_t unsynced[MAX_BITS / BLOCK_BITS + 2];   /* written, not yet durable */
};

static struct model m;
/* Blocks in which the operation running changed a bit. */
static uint8_t changed_now[MAX_BITS / BLOCK_BITS + 2];
static uint8_t scratch[MAX_BITS / 8 + 4096];
static uint8_t src_buf[AC_BM_CHUNK_BYTES + 4096];

NOCOV static uint64_t nchunks_of(uint64_t nbits)
{
    return (nbits + CB - 1) / CB;
}

NOCOV static uint64_t nblocks_of(uint64_t nbits)
{
    uint64_t bytes = (nbits + 7) / 8;
    return (bytes + AC_BM_DIRTY_BLOCK - 1) / AC_BM_DIRTY_BLOCK;
}

NOCOV static uint64_t chunk_valid(uint64_t c)
{
    uint64_t v = m.nbits - c * CB;
    return v < CB ? v : CB;
}

/* The first bit of [start, end) in an unknown chunk, or end. */
NOCOV static uint64_t model_first_unknown(uint64_t start, uint64_t end)
{
    for (uint64_t c = start / CB; c * CB < end && c < nchunks_of(m.nbits); c++)
        if (!m.known[c])
            return c * CB > start ? c * CB : start;
    return end;
}

NOCOV static bool range_known(uint64_t start, uint64_t end)
{
    return model_first_unknown(start, end) >= end;
}


/* Eight model bytes (each 0 or 1) as a word, bit k = byte k. */
NOCOV static inline uint64_t load8(const uint8_t *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

NOCOV static inline uint8_t pack8(const uint8_t *p)
{
    return (uint8_t)((load8(p) * UINT64_C(0x0102040810204080)) >> 56);
}

NOCOV static uint64_t model_count(uint64_t start, uint64_t end)
{
    uint64_t n = 0, i = start;
    for (; i < end && i % 8; i++)
        n += m.bit[i];
    for (; i + 8 <= end; i += 8)
        n += (load8(m.bit + i) * UINT64_C(0x0101010101010101)) >> 56;
    for (; i < end; i++)
        n += m.bit[i];
    return n;
}

/* Set bits of the known chunks, kept up to date by every operation. */
static uint64_t model_set;

NOCOV static uint64_t model_total(void)
{
    uint64_t n = 0;
    for (uint64_t c = 0; c < nchunks_of(m.nbits); c++)
        if (m.known[c])
            n += model_count(c * CB, c * CB + chunk_valid(c));
    return n;
}

NOCOV static uint64_t model_unknown(void)
{
    uint64_t n = 0;
    for (uint64_t c = 0; c < nchunks_of(m.nbits); c++)
        n += !m.known[c];
    return n;
}

/* Blocks of on-disk bytes that hold bits [start, end). */
NOCOV static void blocks_of(uint64_t start, uint64_t end, uint64_t *b0, uint64_t *b1)
{
    *b0 = start / BLOCK_BITS;
    *b1 = end == start ? *b0 : (end - 1) / BLOCK_BITS + 1;
}

NOCOV static bool block_known(uint64_t b)
{
    return m.known[b * AC_BM_DIRTY_BLOCK / AC_BM_CHUNK_BYTES];
}

/* ---- structural checks ---------------------------------------------------- */

NOCOV static uint64_t popcount_words(const uint64_t *w, uint64_t nbits)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < nbits / 64; i++)
        n += (uint64_t)__builtin_popcountll(w[i]);
    if (nbits % 64)
        n += (uint64_t)__builtin_popcountll(w[nbits / 64] & ((UINT64_C(1) << (nbits % 64)) - 1));
    return n;
}

NOCOV static void check_struct(const struct ac_bitmap *bm)
{
    uint64_t nc = nchunks_of(m.nbits);
    FUZZ_CHECK(bm->nbits == m.nbits, "nbits %llu, model %llu", (unsigned long long)bm->nbits,
               (unsigned long long)m.nbits);
    FUZZ_CHECK(bm->nchunks == nc, "nchunks %llu", (unsigned long long)bm->nchunks);
    FUZZ_CHECK(bm->ndirty_blocks == nblocks_of(m.nbits), "ndirty_blocks %llu",
               (unsigned long long)bm->ndirty_blocks);
    FUZZ_CHECK(bm->unknown == model_unknown(), "unknown %llu, model %llu",
               (unsigned long long)bm->unknown, (unsigned long long)model_unknown());
    uint64_t sum = 0;
    for (uint64_t c = 0; c < nc; c++) {
        const struct ac_chunk *k = &bm->chunks[c];
        uint64_t valid = chunk_valid(c);
        FUZZ_CHECK((k->state == AC_CHUNK_UNKNOWN) == !m.known[c], "chunk %llu known-ness",
                   (unsigned long long)c);
        switch (k->state) {
        case AC_CHUNK_UNKNOWN:
            FUZZ_CHECK(k->words == NULL, "UNKNOWN chunk with words");
            break;
        case AC_CHUNK_ZERO:
            FUZZ_CHECK(k->words == NULL && k->count == 0, "ZERO chunk %llu: count %u",
                       (unsigned long long)c, k->count);
            break;
        case AC_CHUNK_FULL:
            FUZZ_CHECK(k->words == NULL && k->count == valid, "FULL chunk %llu: count %u of %llu",
                       (unsigned long long)c, k->count, (unsigned long long)valid);
            break;
        case AC_CHUNK_MIXED:
            FUZZ_CHECK(k->words != NULL, "MIXED chunk without words");
            FUZZ_CHECK(popcount_words(k->words, valid) == k->count,
                       "chunk %llu: count %u, popcount %llu", (unsigned long long)c, k->count,
                       (unsigned long long)popcount_words(k->words, valid));
            FUZZ_CHECK(popcount_words(k->words, CB) == k->count,
                       "chunk %llu has bits set past its valid %llu", (unsigned long long)c,
                       (unsigned long long)valid);
            break;
        default:
            FUZZ_CHECK(0, "chunk %llu in state %u", (unsigned long long)c, k->state);
        }
        if (k->state != AC_CHUNK_UNKNOWN)
            sum += k->count;
    }
    for (uint64_t b = 0; b < nblocks_of(m.nbits); b++)
        FUZZ_CHECK(((bm->unsynced[b / 64] >> (b % 64)) & 1) == m.unsynced[b],
                   "unsynced mark of block %llu", (unsigned long long)b);
    FUZZ_CHECK(bm->count == sum, "count %llu, chunks sum to %llu", (unsigned long long)bm->count,
               (unsigned long long)sum);
    FUZZ_CHECK(bm->count == model_set, "count %llu, model %llu",
               (unsigned long long)bm->count, (unsigned long long)model_set);
}

/* Compares bits [lo, hi) with scratch, which holds the bitmap's bytes from
 * byte b0 on: whole bytes eight model bytes at a time. */
NOCOV static void compare_bits(uint64_t b0, uint64_t lo, uint64_t hi)
{
    uint64_t i = lo;
    for (;;) {
        if (i % 8 == 0) {
            while (i + 8 <= hi && scratch[i / 8 - b0] == pack8(m.bit + i))
                i += 8;
        }
        if (i >= hi)
            break;
        unsigned got = (scratch[i / 8 - b0] >> (i % 8)) & 1;
        FUZZ_CHECK(got == m.bit[i], "bit %llu is %u, model %u", (unsigned long long)i, got,
                   m.bit[i]);
        i++;
    }
}

/* Compares bits [start, end) (inside nbits, known chunks only) with the
 * model, through ac_bm_store_bytes and ac_bm_test. */
NOCOV static void check_bits(const struct ac_bitmap *bm, uint64_t start, uint64_t end)
{
    if (end > m.nbits)
        end = m.nbits;
    for (uint64_t c = start / CB; c * CB < end; c++) {
        if (!m.known[c])
            continue;
        uint64_t lo = start > c * CB ? start : c * CB;
        uint64_t hi = end < (c + 1) * CB ? end : (c + 1) * CB;
        uint64_t b0 = lo / 8, b1 = (hi + 7) / 8;
        ac_bm_store_bytes(bm, b0, scratch, (size_t)(b1 - b0));
        compare_bits(b0, lo, hi);
        /* A few bits through ac_bm_test too (all of a short range). */
        uint64_t step = (hi - lo) / 64 + 1;
        for (uint64_t i = lo; i < hi; i += step)
            FUZZ_CHECK(ac_bm_test(bm, i) == (m.bit[i] != 0), "ac_bm_test(%llu)",
                       (unsigned long long)i);
    }
}

/* Walks the dirty blocks with ac_bm_next_dirty (runs of at most max):
 * every block that must be dirty is, every dirty one may be, none lies in
 * an unknown chunk, and the runs are maximal up to max. */
NOCOV static void check_dirty(const struct ac_bitmap *bm, uint64_t max)
{
    uint64_t nb = nblocks_of(m.nbits), from = 0, first, n, seen = 0;
    static uint8_t dirty[MAX_BITS / BLOCK_BITS + 2];
    memset(dirty, 0, nb + 1);
    if (max == 0)
        max = 1;
    while (ac_bm_next_dirty(bm, from, max, &first, &n)) {
        FUZZ_CHECK(first >= from && n >= 1 && n <= max && first + n <= nb,
                   "next_dirty(%llu, %llu) gave %llu+%llu of %llu", (unsigned long long)from,
                   (unsigned long long)max, (unsigned long long)first, (unsigned long long)n,
                   (unsigned long long)nb);
        for (uint64_t b = from; b < first; b++)
            FUZZ_CHECK(!m.must[b], "block %llu must be dirty; next_dirty skipped it",
                       (unsigned long long)b);
        for (uint64_t b = first; b < first + n; b++) {
            FUZZ_CHECK(m.may[b], "block %llu is dirty though nothing touched it",
                       (unsigned long long)b);
            FUZZ_CHECK(block_known(b), "block %llu is dirty in an unknown chunk",
                       (unsigned long long)b);
            dirty[b] = 1;
        }
        uint64_t f2, n2;
        if (n < max && first + n < nb && ac_bm_next_dirty(bm, first + n, 1, &f2, &n2))
            FUZZ_CHECK(f2 > first + n, "dirty run %llu+%llu stops short",
                       (unsigned long long)first, (unsigned long long)n);
        from = first + n;
        seen += n;
        FUZZ_CHECK(seen <= nb, "more dirty blocks than blocks");
    }
    for (uint64_t b = from; b < nb; b++)
        FUZZ_CHECK(!m.must[b], "block %llu must be dirty; next_dirty missed it",
                   (unsigned long long)b);
    FUZZ_CHECK(ac_bm_any_dirty(bm) == (seen > 0), "any_dirty %d, walk found %llu",
               ac_bm_any_dirty(bm), (unsigned long long)seen);
}

/* ---- positions ------------------------------------------------------------- */

/* A bit position in [0, nbits], biased to the interesting places: chunk
 * and word boundaries, the end. */
NOCOV static uint64_t pick_pos(struct fuzz_in *in)
{
    uint8_t sel = fuzz_u8(in);
    uint32_t v = fuzz_u32(in);
    uint64_t n = m.nbits, p;
    switch (sel & 3) {
    case 0:
        p = v % (n + 1);
        break;
    case 1: {   /* around a chunk boundary */
        uint64_t c = (uint64_t)(sel >> 2) % (nchunks_of(n) + 1);
        int64_t d = (int8_t)(v & 0xff);
        p = c * CB;
        p = d < 0 ? (p > (uint64_t)-d ? p + (uint64_t)d : 0) : p + (uint64_t)d;
        break;
    }
    case 2:     /* near the end */
        p = n - (n < (v % 200) ? n : v % 200);
        break;
    default: {  /* around a word boundary */
        p = (v % (n / 64 + 1)) * 64 + (sel >> 2) % 3;
        p = p > 0 ? p - 1 : 0;
        break;
    }
    }
    return p > n ? n : p;
}

NOCOV static void pick_range(struct fuzz_in *in, uint64_t *start, uint64_t *end)
{
    uint64_t a = pick_pos(in), b = pick_pos(in);
    *start = a < b ? a : b;
    *end = a < b ? b : a;
}

/* Fills src_buf[0, len) from the input: a byte pattern chosen by it. */
NOCOV static void pick_bytes(struct fuzz_in *in, size_t len)
{
    uint8_t mode = fuzz_u8(in);
    switch (mode & 3) {
    case 0:
        memset(src_buf, 0, len);
        break;
    case 1:
        memset(src_buf, 0xff, len);
        break;
    case 2:
        for (size_t i = 0; i < len; i++)
            src_buf[i] = fuzz_u8(in);
        break;
    default: {  /* sparse: mostly one value with a few flips */
        uint8_t fill = mode & 4 ? 0xff : 0;
        memset(src_buf, fill, len);
        for (int k = 0; k < (mode >> 3) && len > 0; k++)
            src_buf[fuzz_u32(in) % len] = fuzz_u8(in);
        break;
    }
    }
}

/* ---- operations -------------------------------------------------------------- */

NOCOV static void op_change(struct ac_bitmap *bm, uint64_t start, uint64_t end, bool set)
{
    if (!range_known(start, end))
        return;
    FUZZ_CHECK(ac_bm_prepare(bm, start, end - start) == 0, "prepare");
    uint64_t want = 0;
    for (uint64_t i = start; i < end;) {
        uint64_t e = (i / BLOCK_BITS + 1) * BLOCK_BITS;
        if (e > end)
            e = end;
        uint64_t n = model_count(i, e);
        uint64_t changed = set ? (e - i) - n : n;
        if (changed) {
            m.must[i / BLOCK_BITS] = m.may[i / BLOCK_BITS] = 1;
            changed_now[i / BLOCK_BITS] = 1;
            want += changed;
            memset(m.bit + i, set, e - i);
        }
        i = e;
    }
    model_set = set ? model_set + want : model_set - want;
    /* May be dirty: the range's blocks in the chunks where something
     * changed (not the whole range: a wide clear that changes one chunk
     * must not make a flush rewrite the whole bitmap). */
    for (uint64_t c = start / CB; c * CB < end; c++) {
        uint64_t lo = start > c * CB ? start : c * CB;
        uint64_t hi = end < (c + 1) * CB ? end : (c + 1) * CB;
        bool any = false;
        for (uint64_t b = lo / BLOCK_BITS; b * BLOCK_BITS < hi && !any; b++)
            any = changed_now[b];
        if (any) {
            uint64_t b0, b1;
            blocks_of(lo, hi, &b0, &b1);
            for (uint64_t b = b0; b < b1; b++)
                m.may[b] = 1;
        }
    }
    for (uint64_t b = start / BLOCK_BITS; b * BLOCK_BITS < end; b++)
        changed_now[b] = 0;
    uint64_t got = set ? ac_bm_set_range(bm, start, end - start)
                       : ac_bm_clear_range(bm, start, end - start);
    FUZZ_CHECK(got == want, "%s_range(%llu, %llu) changed %llu, model %llu",
               set ? "set" : "clear", (unsigned long long)start,
               (unsigned long long)(end - start), (unsigned long long)got,
               (unsigned long long)want);
    check_bits(bm, start > 0 ? start - 1 : 0, end + 1);
}

NOCOV static void op_find(struct ac_bitmap *bm, uint64_t start, uint64_t end, bool want)
{
    /* end may pass nbits (it is cut); start may pass end (nothing found). */
    uint64_t e = end > m.nbits ? m.nbits : end;
    if (start < e && !range_known(start, e))
        return;
    uint64_t exp = e;
    if (start < e) {
        const uint8_t *f = memchr(m.bit + start, want, e - start);
        if (f != NULL)
            exp = (uint64_t)(f - m.bit);
    }
    uint64_t got = want ? ac_bm_find_next_set(bm, start, end)
                        : ac_bm_find_next_clear(bm, start, end);
    FUZZ_CHECK(got == exp, "find_next_%s(%llu, %llu) = %llu, model %llu",
               want ? "set" : "clear", (unsigned long long)start, (unsigned long long)end,
               (unsigned long long)got, (unsigned long long)exp);
}

NOCOV static void op_resize(struct ac_bitmap *bm, uint64_t nbits)
{
    uint64_t old = m.nbits;
    if (nbits > MAX_BITS)
        nbits = MAX_BITS;
    /* The chunks of the old and the new last bit must be known. */
    if (old > 0 && !m.known[(old - 1) / CB])
        return;
    if (nbits > 0 && nbits <= old && !m.known[(nbits - 1) / CB])
        return;
    if (getenv("FUZZ_TRACE") != NULL)
        fprintf(stderr, "    resize %llu -> %llu\n", (unsigned long long)old,
                (unsigned long long)nbits);
    if (ac_bm_resize(bm, nbits) != 0)
        FUZZ_CHECK(0, "resize to %llu failed", (unsigned long long)nbits);
    uint64_t nb_new = nblocks_of(nbits);
    if (nbits == old && nbits > 0) {
        /* Nothing changes; the library marks the last byte's block anyway
         * (one block written again at the next flush: harmless). */
        m.may[(nbits - 1) / BLOCK_BITS] = 1;
    } else if (nbits < old) {
        /* The new last byte is written again if it lost set bits. */
        if (nbits % 8 && model_count(nbits, (nbits / 8 + 1) * 8 < old ? (nbits / 8 + 1) * 8 : old))
            m.must[(nbits - 1) / BLOCK_BITS] = 1;
        if (nbits > 0)
            m.may[(nbits - 1) / BLOCK_BITS] = 1;
        model_set -= model_count(nbits, old);
        memset(m.bit + nbits, 0, old - nbits);
        for (uint64_t c = nchunks_of(nbits); c < nchunks_of(old); c++)
            m.known[c] = 0;
    } else if (nbits > old) {
        /* The old tail byte: its bits past the old end are written as 0. */
        if (old % 8)
            m.must[old / BLOCK_BITS] = 1;
        m.may[old / BLOCK_BITS] = 1;
        for (uint64_t c = nchunks_of(old); c < nchunks_of(nbits); c++)
            m.known[c] = 1;
        memset(m.bit + old, 0, nbits - old);
    }
    memset(m.must + nb_new, 0, sizeof(m.must) - nb_new);
    memset(m.unsynced + nb_new, 0, sizeof(m.unsynced) - nb_new);
    memset(m.may + nb_new, 0, sizeof(m.may) - nb_new);
    m.nbits = nbits;
    check_bits(bm, old < nbits ? (old > 64 ? old - 64 : 0) : (nbits > 64 ? nbits - 64 : 0),
               nbits);
}

NOCOV static void op_load(struct ac_bitmap *bm, uint64_t byte_off, size_t len)
{
    uint64_t total = (m.nbits + 7) / 8;
    uint64_t bstart = byte_off * 8;
    uint64_t bend = (byte_off + len) * 8 < m.nbits ? (byte_off + len) * 8 : m.nbits;
    if (bstart < bend && !range_known(bstart, bend))
        return;
    ac_bm_load_bytes(bm, byte_off, src_buf, len);
    if (bstart < bend)
        model_set -= model_count(bstart, bend);
    for (uint64_t i = bstart; i < bend; i++)
        m.bit[i] = (src_buf[i / 8 - byte_off] >> (i % 8)) & 1;
    if (bstart < bend)
        model_set += model_count(bstart, bend);
    (void)total;
    if (bstart < bend)
        check_bits(bm, bstart, bend);
}

NOCOV static void op_store(const struct ac_bitmap *bm, uint64_t byte_off, size_t len)
{
    uint64_t total = (m.nbits + 7) / 8;
    uint64_t bstart = byte_off * 8;
    uint64_t bend = (byte_off + len) * 8 < m.nbits ? (byte_off + len) * 8 : m.nbits;
    if (bstart < bend && !range_known(bstart, bend))
        return;
    memset(scratch, 0xA5, len);
    ac_bm_store_bytes(bm, byte_off, scratch, len);
    for (size_t i = 0; i < len; i++) {
        uint64_t b = byte_off + i;
        uint8_t want = 0;
        for (unsigned k = 0; k < 8 && b < total; k++)
            if (b * 8 + k < m.nbits && m.bit[b * 8 + k])
                want |= (uint8_t)(1u << k);
        FUZZ_CHECK(scratch[i] == want, "store_bytes(%llu, %zu): byte %zu is 0x%02x, model 0x%02x",
                   (unsigned long long)byte_off, len, i, scratch[i], want);
    }
}

NOCOV static void op_install(struct ac_bitmap *bm, struct fuzz_in *in, uint64_t c)
{
    uint64_t off;
    size_t len;
    ac_bm_chunk_bytes(bm, c, &off, &len);
    FUZZ_CHECK(off == c * AC_BM_CHUNK_BYTES, "chunk %llu starts at byte %llu",
               (unsigned long long)c, (unsigned long long)off);
    uint64_t total = (m.nbits + 7) / 8;
    uint64_t want_len = total - off < AC_BM_CHUNK_BYTES ? total - off : AC_BM_CHUNK_BYTES;
    FUZZ_CHECK(len == want_len, "chunk %llu is %zu bytes, want %llu", (unsigned long long)c,
               len, (unsigned long long)want_len);
    pick_bytes(in, len);
    FUZZ_CHECK(ac_bm_install_chunk(bm, c, src_buf, len) == 0, "install chunk");
    if (!m.known[c]) {
        m.known[c] = 1;
        for (uint64_t i = 0; i < chunk_valid(c); i++)
            m.bit[c * CB + i] = (src_buf[i / 8] >> (i % 8)) & 1;
        model_set += model_count(c * CB, c * CB + chunk_valid(c));
    }
    check_bits(bm, c * CB, c * CB + chunk_valid(c));
}

/* The plain word-array helpers, on a small array of their own. */
NOCOV static void op_bits(struct fuzz_in *in)
{
    static uint64_t w[SMALL_BITS / 64 + 1];
    static uint8_t mb[SMALL_BITS];
    memset(w, 0, sizeof(w));
    memset(mb, 0, sizeof(mb));
    for (int k = fuzz_u8(in) % 8 + 1; k > 0; k--) {
        uint8_t op = fuzz_u8(in);
        uint64_t a = fuzz_u16(in) % (SMALL_BITS + 1), b = fuzz_u16(in) % (SMALL_BITS + 1);
        uint64_t lo = a < b ? a : b, hi = a < b ? b : a;
        switch (op & 3) {
        case 0:
            ac_bits_set(w, lo, hi - lo);
            memset(mb + lo, 1, hi - lo);
            break;
        case 1:
            ac_bits_clear(w, lo, hi - lo);
            memset(mb + lo, 0, hi - lo);
            break;
        default: {
            bool want = (op & 3) == 2;
            uint64_t exp = hi;
            for (uint64_t i = lo; i < hi; i++)
                if (mb[i] == want) {
                    exp = i;
                    break;
                }
            uint64_t got = want ? ac_bits_next_set(w, lo, hi) : ac_bits_next_clear(w, lo, hi);
            FUZZ_CHECK(got == exp, "ac_bits_next_%s(%llu, %llu) = %llu, model %llu",
                       want ? "set" : "clear", (unsigned long long)lo, (unsigned long long)hi,
                       (unsigned long long)got, (unsigned long long)exp);
        }
        }
    }
    for (unsigned i = 0; i < SMALL_BITS; i++)
        FUZZ_CHECK(((w[i / 64] >> (i % 64)) & 1) == mb[i], "ac_bits bit %u", i);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = { data, size };
    struct ac_bitmap bm;
    uint8_t sel = fuzz_u8(&in);
    uint32_t v = fuzz_u32(&in);
    uint64_t nbits;

    /* Mostly small (fast, many runs); several chunks one time in four. */
    switch (sel & 7) {
    case 0: case 4: case 5: case 6:
        nbits = v % 8192; break;                             /* small */
    case 1: nbits = CB - 128 + v % 256; break;               /* around one chunk */
    case 2: nbits = (1 + (sel >> 3) % 3) * CB + v % 4096; break;
    default: nbits = v % (MAX_BITS + 1); break;
    }
    memset(m.bit, 0, sizeof(m.bit));
    memset(m.known, 0, sizeof(m.known));
    memset(m.must, 0, sizeof(m.must));
    memset(m.may, 0, sizeof(m.may));
    memset(m.unsynced, 0, sizeof(m.unsynced));
    m.nbits = nbits;
    model_set = 0;
    bool unknown = sel & 0x80;
    FUZZ_CHECK((unknown ? ac_bm_init_unknown(&bm, nbits) : ac_bm_init(&bm, nbits)) == 0, "init");
    if (!unknown)
        memset(m.known, 1, nchunks_of(nbits));
    check_struct(&bm);

    bool trace = getenv("FUZZ_TRACE") != NULL;
    if (trace)
        fprintf(stderr, "nbits %llu, %s\n", (unsigned long long)nbits,
                unknown ? "unknown" : "known");
    for (int n = 0; n < MAX_OPS && in.left > 0; n++) {
        uint8_t op = fuzz_u8(&in);
        uint64_t a, b;
        if (trace)
            fprintf(stderr, "  op %d: %u (0x%02x), nbits %llu, count %llu\n", n, op % 18, op,
                    (unsigned long long)m.nbits, (unsigned long long)model_set);
        switch (op % 18) {
        case 0:
        case 1:
            pick_range(&in, &a, &b);
            op_change(&bm, a, b, op % 18 == 0);
            break;
        case 2:
        case 3: {
            uint64_t s = pick_pos(&in), e = pick_pos(&in);
            if (op & 0x80)
                e += fuzz_u8(&in);   /* past nbits: cut */
            op_find(&bm, s, e, op % 18 == 2);
            break;
        }
        case 4:     /* all_set */
            pick_range(&in, &a, &b);
            if (range_known(a, b)) {
                bool want = model_count(a, b) == b - a;
                FUZZ_CHECK(ac_bm_all_set(&bm, a, b - a) == want, "all_set(%llu, %llu)",
                           (unsigned long long)a, (unsigned long long)(b - a));
            }
            break;
        case 5: {   /* count_range: end cut to nbits; empty when end <= start */
            uint64_t s = pick_pos(&in), e = pick_pos(&in) + (op & 0x80 ? fuzz_u8(&in) : 0);
            uint64_t ee = e > m.nbits ? m.nbits : e;
            if (s < ee && !range_known(s, ee))
                break;
            uint64_t want = s < ee ? model_count(s, ee) : 0;
            FUZZ_CHECK(ac_bm_count_range(&bm, s, e) == want, "count_range(%llu, %llu)",
                       (unsigned long long)s, (unsigned long long)e);
            break;
        }
        case 6: {   /* uniform: exact inside one known chunk, else -1 */
            uint64_t s = pick_pos(&in), e = pick_pos(&in);
            int want = -1;
            if (e > s && (e - 1) / CB == s / CB && m.known[s / CB]) {
                uint64_t c = model_count(s, e);
                want = c == 0 ? 0 : c == e - s ? 1 : -1;
            }
            int got = ac_bm_uniform(&bm, s, e);
            FUZZ_CHECK(got == want, "uniform(%llu, %llu) = %d, model %d", (unsigned long long)s,
                       (unsigned long long)e, got, want);
            break;
        }
        case 7:
            a = pick_pos(&in);
            if (a < m.nbits && m.known[a / CB])
                FUZZ_CHECK(ac_bm_test(&bm, a) == (m.bit[a] != 0), "test(%llu)",
                           (unsigned long long)a);
            break;
        case 8: {
            uint8_t how = fuzz_u8(&in);
            uint32_t x = fuzz_u32(&in);
            uint64_t nb;
            switch (how & 3) {
            case 0: nb = m.nbits + x % 300; break;
            case 1: nb = m.nbits - (m.nbits < x % 300 ? m.nbits : x % 300); break;
            case 2: nb = ((how >> 2) % 5) * CB + (int8_t)(x & 0xff); break;
            default: nb = x % (MAX_BITS + 1); break;
            }
            if ((int64_t)nb < 0)
                nb = 0;
            op_resize(&bm, nb);
            break;
        }
        case 9: {   /* load bytes */
            uint64_t total = (m.nbits + 7) / 8;
            uint64_t off = pick_pos(&in) / 8;
            size_t len = fuzz_u16(&in) % (op & 0x80 ? AC_BM_CHUNK_BYTES + 2048 : 600);
            if (off > total)
                off = total;
            pick_bytes(&in, len);
            op_load(&bm, off, len);
            break;
        }
        case 10: {  /* store bytes, maybe past the end (zero-filled) */
            uint64_t off = pick_pos(&in) / 8;
            size_t len = fuzz_u16(&in) % (op & 0x80 ? AC_BM_CHUNK_BYTES + 2048 : 600);
            op_store(&bm, off, len);
            break;
        }
        case 11: {
            uint64_t nc = nchunks_of(m.nbits);
            if (nc > 0)
                op_install(&bm, &in, fuzz_u8(&in) % nc);
            break;
        }
        case 12: {
            uint64_t nc = nchunks_of(m.nbits);
            if (nc > 0) {
                uint64_t c = fuzz_u8(&in) % nc;
                ac_bm_set_chunk_zero(&bm, c);
                if (!m.known[c]) {
                    m.known[c] = 1;
                    memset(m.bit + c * CB, 0, chunk_valid(c));
                }
            }
            break;
        }
        case 13: {
            uint64_t s = pick_pos(&in), e = pick_pos(&in) + (op & 0x80 ? fuzz_u8(&in) : 0);
            uint64_t want = s < e ? model_first_unknown(s, e) : e;
            FUZZ_CHECK(ac_bm_first_unknown(&bm, s, e) == want, "first_unknown(%llu, %llu)",
                       (unsigned long long)s, (unsigned long long)e);
            break;
        }
        case 14: {  /* mark dirty blocks (clamped to the end; not in unknown chunks) */
            uint64_t nb = nblocks_of(m.nbits);
            uint64_t first = fuzz_u16(&in) % (nb + 2), cnt = fuzz_u16(&in) % (nb + 3);
            if (op & 0x80) {    /* blocks written out, not yet durable */
                ac_bm_note_written(&bm, first, cnt);
                for (uint64_t x = first; x < first + cnt && x < nb; x++)
                    m.unsynced[x] = 1;
                break;
            }
            ac_bm_mark_dirty_blocks(&bm, first, cnt);
            for (uint64_t x = first; x < first + cnt && x < nb; x++)
                if (block_known(x))
                    m.must[x] = m.may[x] = 1;
            break;
        }
        case 15: {  /* clear dirty blocks inside the map */
            uint64_t nb = nblocks_of(m.nbits);
            if (op & 0x80) {    /* the sync after writing: done, or failed */
                bool durable = op & 0x40;
                ac_bm_unsynced_done(&bm, durable);
                for (uint64_t x = 0; x < nb; x++) {
                    if (m.unsynced[x] && !durable && block_known(x))
                        m.must[x] = m.may[x] = 1;
                    m.unsynced[x] = 0;
                }
                break;
            }
            uint64_t first = fuzz_u16(&in) % (nb + 1);
            uint64_t cnt = fuzz_u16(&in) % (nb - first + 1);
            ac_bm_clear_dirty_blocks(&bm, first, cnt);
            memset(m.must + first, 0, cnt);
            memset(m.may + first, 0, cnt);
            break;
        }
        case 16:
            check_dirty(&bm, fuzz_u16(&in) % 300 + 1);
            break;
        default:
            if (op & 0x80) {
                op_bits(&in);
            } else {    /* prepare alone changes no bit */
                pick_range(&in, &a, &b);
                if (range_known(a, b))
                    FUZZ_CHECK(ac_bm_prepare(&bm, a, b - a) == 0, "prepare");
                check_bits(&bm, a, b);
            }
            break;
        }
        check_struct(&bm);
    }
    FUZZ_CHECK(model_total() == model_set, "the model's own count is off");
    check_bits(&bm, 0, m.nbits);
    check_dirty(&bm, UINT64_MAX);
    ac_bm_free(&bm);
    return 0;
}
