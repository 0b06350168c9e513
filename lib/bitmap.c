/*
 * bitmap.c: the chunked sector bitmap: word-at-a-time range operations,
 * whole-chunk shortcuts for chunks known to be all clear or all set, and
 * dirty tracking of the on-disk bytes.
 */
#include "config.h"

#include "hot.h"

#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap.h"

#define CB AC_BM_CHUNK_BITS

static inline uint64_t div_round_up(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

static inline uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* Mask of bits [lo, hi) within one word, 0 <= lo < hi <= 64. */
static inline uint64_t word_mask(unsigned lo, unsigned hi)
{
    uint64_t m = hi == 64 ? ~UINT64_C(0) : (UINT64_C(1) << hi) - 1;
    return m & ~((UINT64_C(1) << lo) - 1);
}

/* Runs BODY for each word W of bits [start, start + count) of an array,
 * with M the mask of the range's bits in that word. */
#define FOR_EACH_WORD(start, count, W, M, BODY)                         \
    do {                                                                \
        uint64_t _s = (start), _e = (start) + (count);                  \
        while (_s < _e) {                                               \
            uint64_t W = _s / 64;                                       \
            unsigned _lo = (unsigned)(_s % 64);                         \
            unsigned _hi = (_e - W * 64) >= 64 ? 64u                    \
                                               : (unsigned)(_e - W * 64); \
            uint64_t M = word_mask(_lo, _hi);                           \
            BODY;                                                       \
            _s = W * 64 + _hi;                                          \
        }                                                               \
    } while (0)

/* Runs BODY for each chunk C overlapping bits [start, end), with LO and HI
 * the range's bits inside the chunk (chunk-local). */
#define FOR_EACH_CHUNK(start, end, C, LO, HI, BODY)                     \
    do {                                                                \
        uint64_t _cs = (start), _ce = (end);                            \
        while (_cs < _ce) {                                             \
            uint64_t C = _cs / CB;                                      \
            uint64_t LO = _cs - C * CB;                                 \
            uint64_t HI = min_u64(_ce - C * CB, CB);                    \
            BODY;                                                       \
            _cs = C * CB + HI;                                          \
        }                                                               \
    } while (0)

/* ---- plain word arrays ------------------------------------------------- */

void ac_bits_set(uint64_t *w, uint64_t start, uint64_t count)
{
    FOR_EACH_WORD(start, count, i, m, w[i] |= m);
}

void ac_bits_clear(uint64_t *w, uint64_t start, uint64_t count)
{
    FOR_EACH_WORD(start, count, i, m, w[i] &= ~m);
}

/* First bit in [start, end) that is set in (w ^ invert). */
static uint64_t bits_next(const uint64_t *w, uint64_t start, uint64_t end,
                          uint64_t invert)
{
    if (start >= end)
        return end;
    uint64_t i = start / 64;
    uint64_t cur = (w[i] ^ invert) & ~((UINT64_C(1) << (start % 64)) - 1);
    uint64_t last = (end - 1) / 64;
    for (;;) {
        if (cur != 0) {
            uint64_t bit = i * 64 + (uint64_t)__builtin_ctzll(cur);
            return bit < end ? bit : end;
        }
        if (i == last)
            return end;
        cur = w[++i] ^ invert;
    }
}

uint64_t ac_bits_next_set(const uint64_t *w, uint64_t start, uint64_t end)
{
    return bits_next(w, start, end, 0);
}

uint64_t ac_bits_next_clear(const uint64_t *w, uint64_t start, uint64_t end)
{
    return bits_next(w, start, end, ~UINT64_C(0));
}

static uint64_t popcount_range(const uint64_t *w, uint64_t start, uint64_t end)
{
    uint64_t n = 0;
    if (end > start)
        FOR_EACH_WORD(start, end - start, i, m, n += (uint64_t)__builtin_popcountll(w[i] & m));
    return n;
}

/* ---- chunks -------------------------------------------------------------- */

/* Valid bits of chunk c (the last chunk may be short). */
static uint64_t chunk_bits(const struct ac_bitmap *bm, uint64_t c)
{
    return min_u64(CB, bm->nbits - c * CB);
}

void ac_bm_chunk_bytes(const struct ac_bitmap *bm, uint64_t c, uint64_t *byte_off,
                       size_t *len)
{
    *byte_off = c * AC_BM_CHUNK_BYTES;
    *len = (size_t)min_u64(AC_BM_CHUNK_BYTES, ac_bm_nbytes(bm) - *byte_off);
}

/* Gives a ZERO or FULL chunk its words.  -ENOMEM or 0. */
static int materialize(struct ac_bitmap *bm, uint64_t c)
{
    struct ac_chunk *k = &bm->chunks[c];
    if (k->state == AC_CHUNK_MIXED)
        return 0;
    uint64_t *w = calloc(AC_BM_CHUNK_WORDS, sizeof(uint64_t));
    if (w == NULL)
        return -ENOMEM;
    if (k->state == AC_CHUNK_FULL)
        ac_bits_set(w, 0, chunk_bits(bm, c));
    k->words = w;
    k->state = AC_CHUNK_MIXED;
    return 0;
}

/* Drops the words of a chunk that turned all clear or all set. */
static void normalize(struct ac_bitmap *bm, uint64_t c)
{
    struct ac_chunk *k = &bm->chunks[c];
    if (k->state != AC_CHUNK_MIXED)
        return;
    if (k->count == 0 || k->count == chunk_bits(bm, c)) {
        free(k->words);
        k->words = NULL;
        k->state = k->count ? AC_CHUNK_FULL : AC_CHUNK_ZERO;
    }
}

static int init_common(struct ac_bitmap *bm, uint64_t nbits, enum ac_chunk_state st)
{
    memset(bm, 0, sizeof(*bm));
    uint64_t nchunks = div_round_up(nbits, CB);
    uint64_t nblocks = div_round_up(div_round_up(nbits, 8), AC_BM_DIRTY_BLOCK);
    if (nchunks > SIZE_MAX / sizeof(struct ac_chunk) / 2 || nblocks / 64 + 1 > SIZE_MAX / 16)
        return -ENOMEM;
    bm->chunks = calloc(nchunks ? nchunks : 1, sizeof(struct ac_chunk));
    bm->dirty = calloc(div_round_up(nblocks, 64) + 1, sizeof(uint64_t));
    bm->unsynced = calloc(div_round_up(nblocks, 64) + 1, sizeof(uint64_t));
    if (bm->chunks == NULL || bm->dirty == NULL || bm->unsynced == NULL) {
        ac_bm_free(bm);
        return -ENOMEM;
    }
    bm->nbits = nbits;
    bm->nchunks = nchunks;
    bm->ndirty_blocks = nblocks;
    if (st != AC_CHUNK_UNKNOWN) {       /* calloc made them UNKNOWN (0) */
        for (uint64_t c = 0; c < nchunks; c++)
            bm->chunks[c].state = (uint8_t)st;
    } else {
        bm->unknown = nchunks;
    }
    return 0;
}

int ac_bm_init(struct ac_bitmap *bm, uint64_t nbits)
{
    return init_common(bm, nbits, AC_CHUNK_ZERO);
}

int ac_bm_init_unknown(struct ac_bitmap *bm, uint64_t nbits)
{
    return init_common(bm, nbits, AC_CHUNK_UNKNOWN);
}

void ac_bm_free(struct ac_bitmap *bm)
{
    for (uint64_t c = 0; bm->chunks != NULL && c < bm->nchunks; c++)
        free(bm->chunks[c].words);
    free(bm->chunks);
    free(bm->dirty);
    free(bm->unsynced);
    memset(bm, 0, sizeof(*bm));
}

void ac_bm_set_chunk_zero(struct ac_bitmap *bm, uint64_t c)
{
    if (bm->chunks[c].state != AC_CHUNK_UNKNOWN)
        return;
    bm->chunks[c].state = AC_CHUNK_ZERO;
    bm->chunks[c].count = 0;
    bm->unknown--;
}

/* Copies on-disk bytes into words (little-endian order). */
static void bytes_to_words(uint64_t *w, uint64_t byte_off, const unsigned char *src,
                           size_t len)
{
#if __BYTE_ORDER == __LITTLE_ENDIAN
    memcpy((unsigned char *)w + byte_off, src, len);
#else
    for (size_t i = 0; i < len; i++) {
        uint64_t b = byte_off + i;
        unsigned sh = (unsigned)(b % 8) * 8;
        w[b / 8] = (w[b / 8] & ~(UINT64_C(0xff) << sh)) | ((uint64_t)src[i] << sh);
    }
#endif
}

static void words_to_bytes(const uint64_t *w, uint64_t byte_off, unsigned char *dst,
                           size_t len)
{
#if __BYTE_ORDER == __LITTLE_ENDIAN
    memcpy(dst, (const unsigned char *)w + byte_off, len);
#else
    for (size_t i = 0; i < len; i++) {
        uint64_t b = byte_off + i;
        dst[i] = (unsigned char)(w[b / 8] >> ((b % 8) * 8));
    }
#endif
}

/* Clears the bits of a chunk's words past its valid bits. */
static void mask_tail(const struct ac_bitmap *bm, uint64_t c, uint64_t *w)
{
    uint64_t valid = chunk_bits(bm, c);
    if (valid < CB)
        ac_bits_clear(w, valid, CB - valid);
}

int ac_bm_install_chunk(struct ac_bitmap *bm, uint64_t c, const unsigned char *src,
                        size_t len)
{
    struct ac_chunk *k = &bm->chunks[c];
    if (k->state != AC_CHUNK_UNKNOWN)
        return 0;
    uint64_t *w = calloc(AC_BM_CHUNK_WORDS, sizeof(uint64_t));
    if (w == NULL)
        return -ENOMEM;
    bytes_to_words(w, 0, src, len < AC_BM_CHUNK_BYTES ? len : AC_BM_CHUNK_BYTES);
    mask_tail(bm, c, w);
    k->words = w;
    k->state = AC_CHUNK_MIXED;
    k->count = (uint32_t)popcount_range(w, 0, CB);
    bm->count += k->count;
    bm->unknown--;
    normalize(bm, c);
    return 0;
}

AC_HOT uint64_t ac_bm_first_unknown(const struct ac_bitmap *bm, uint64_t start, uint64_t end)
{
    if (bm->unknown == 0 || start >= end)
        return end;
    for (uint64_t c = start / CB; c * CB < end && c < bm->nchunks; c++)
        if (bm->chunks[c].state == AC_CHUNK_UNKNOWN)
            return c * CB > start ? c * CB : start;
    return end;
}

/* ---- dirty marks --------------------------------------------------------- */

#define BLOCKS_PER_CHUNK (AC_BM_CHUNK_BYTES / AC_BM_DIRTY_BLOCK)

/* Marks blocks dirty, except in UNKNOWN chunks: their bytes were never
 * changed in memory, and writing them from memory would write zeros over
 * the bits on disk. */
static void mark_blocks(struct ac_bitmap *bm, uint64_t first, uint64_t n)
{
    uint64_t end = first + n;
    if (end > bm->ndirty_blocks)
        end = bm->ndirty_blocks;
    for (uint64_t b = first; b < end;) {
        uint64_t c = b / BLOCKS_PER_CHUNK;
        uint64_t e = min_u64(end, (c + 1) * BLOCKS_PER_CHUNK);
        if (bm->unknown == 0 || bm->chunks[c].state != AC_CHUNK_UNKNOWN)
            ac_bits_set(bm->dirty, b, e - b);
        b = e;
    }
}

static void mark_bits_dirty(struct ac_bitmap *bm, uint64_t start, uint64_t count)
{
    if (count == 0)
        return;
    uint64_t first = start / 8 / AC_BM_DIRTY_BLOCK;
    uint64_t last = (start + count - 1) / 8 / AC_BM_DIRTY_BLOCK;
    mark_blocks(bm, first, last - first + 1);
}

bool ac_bm_next_dirty(const struct ac_bitmap *bm, uint64_t from,
                      uint64_t max_blocks, uint64_t *first, uint64_t *nblocks)
{
    uint64_t f = ac_bits_next_set(bm->dirty, from, bm->ndirty_blocks);
    if (f >= bm->ndirty_blocks)
        return false;
    uint64_t lim = bm->ndirty_blocks - f < max_blocks ? bm->ndirty_blocks : f + max_blocks;
    uint64_t e = ac_bits_next_clear(bm->dirty, f, lim);
    *first = f;
    *nblocks = e - f;
    return true;
}

void ac_bm_mark_dirty_blocks(struct ac_bitmap *bm, uint64_t first, uint64_t nblocks)
{
    mark_blocks(bm, first, nblocks);
}

void ac_bm_clear_dirty_blocks(struct ac_bitmap *bm, uint64_t first, uint64_t nblocks)
{
    ac_bits_clear(bm->dirty, first, nblocks);
}

bool ac_bm_any_dirty(const struct ac_bitmap *bm)
{
    return ac_bits_next_set(bm->dirty, 0, bm->ndirty_blocks) < bm->ndirty_blocks;
}

void ac_bm_note_written(struct ac_bitmap *bm, uint64_t first, uint64_t nblocks)
{
    if (first < bm->ndirty_blocks)
        ac_bits_set(bm->unsynced, first, min_u64(nblocks, bm->ndirty_blocks - first));
}

void ac_bm_unsynced_done(struct ac_bitmap *bm, bool durable)
{
    for (uint64_t b = ac_bits_next_set(bm->unsynced, 0, bm->ndirty_blocks);
         b < bm->ndirty_blocks;) {
        uint64_t e = ac_bits_next_clear(bm->unsynced, b, bm->ndirty_blocks);
        if (!durable)
            mark_blocks(bm, b, e - b);
        ac_bits_clear(bm->unsynced, b, e - b);
        b = ac_bits_next_set(bm->unsynced, e, bm->ndirty_blocks);
    }
}

/* ---- resize -------------------------------------------------------------- */

int ac_bm_resize(struct ac_bitmap *bm, uint64_t nbits)
{
    uint64_t old = bm->nbits;
    uint64_t nchunks = div_round_up(nbits, CB);
    uint64_t nblocks = div_round_up(div_round_up(nbits, 8), AC_BM_DIRTY_BLOCK);
    uint64_t old_dwords = div_round_up(bm->ndirty_blocks, 64) + 1;
    uint64_t new_dwords = div_round_up(nblocks, 64) + 1;

    if (nchunks > SIZE_MAX / sizeof(struct ac_chunk) / 2 || new_dwords > SIZE_MAX / 16)
        return -ENOMEM;
    /* Growing: a FULL last chunk gets new clear bits, so it needs words. */
    uint64_t last_old = old ? (old - 1) / CB : 0;
    bool grow_full_tail = nbits > old && old % CB != 0 &&
                          bm->chunks[last_old].state == AC_CHUNK_FULL;
    uint64_t *tail_words = NULL;
    if (grow_full_tail && (tail_words = calloc(AC_BM_CHUNK_WORDS, sizeof(uint64_t))) == NULL)
        return -ENOMEM;
    struct ac_chunk *chunks = bm->chunks;
    if (nchunks > bm->nchunks) {
        chunks = realloc(bm->chunks, nchunks * sizeof(*chunks));
        if (chunks == NULL) {
            free(tail_words);
            return -ENOMEM;
        }
        for (uint64_t c = bm->nchunks; c < nchunks; c++)
            chunks[c] = (struct ac_chunk){ NULL, 0, AC_CHUNK_ZERO };
        bm->chunks = chunks;
    }
    uint64_t *dirty = bm->dirty;
    if (new_dwords > old_dwords) {
        dirty = realloc(bm->dirty, new_dwords * sizeof(uint64_t));
        if (dirty == NULL) {
            free(tail_words);
            return -ENOMEM;
        }
        memset(dirty + old_dwords, 0, (new_dwords - old_dwords) * sizeof(uint64_t));
        bm->dirty = dirty;
        uint64_t *uns = realloc(bm->unsynced, new_dwords * sizeof(uint64_t));
        if (uns == NULL) {
            free(tail_words);
            return -ENOMEM;     /* (dirty is only larger: no change) */
        }
        memset(uns + old_dwords, 0, (new_dwords - old_dwords) * sizeof(uint64_t));
        bm->unsynced = uns;
    }

    if (grow_full_tail) {
        ac_bits_set(tail_words, 0, old - last_old * CB);
        chunks[last_old].words = tail_words;
        chunks[last_old].state = AC_CHUNK_MIXED;
    }
    /* Shrinking: drop whole chunks past the end, then the tail's bits. */
    for (uint64_t c = nchunks; c < bm->nchunks; c++) {
        if (chunks[c].state == AC_CHUNK_UNKNOWN)
            bm->unknown--;
        else
            bm->count -= chunks[c].count;
        free(chunks[c].words);
        chunks[c].words = NULL;
    }
    bm->nchunks = nchunks;
    bm->nbits = nbits;
    if (nbits < old && nbits % CB != 0) {
        uint64_t c = nbits / CB;
        struct ac_chunk *k = &chunks[c];
        uint64_t valid = nbits - c * CB;
        if (k->state == AC_CHUNK_MIXED) {
            uint64_t drop = popcount_range(k->words, valid, CB);
            ac_bits_clear(k->words, valid, CB - valid);
            k->count -= (uint32_t)drop;
            bm->count -= drop;
            normalize(bm, c);
        } else if (k->state == AC_CHUNK_FULL) {
            bm->count -= k->count - valid;
            k->count = (uint32_t)valid;
        }
    }
    /* Dirty marks past the new end go. */
    if (nblocks < bm->ndirty_blocks) {
        ac_bits_clear(bm->dirty, nblocks, bm->ndirty_blocks - nblocks);
        ac_bits_clear(bm->unsynced, nblocks, bm->ndirty_blocks - nblocks);
    }
    bm->ndirty_blocks = nblocks;
    /* Growing: only the old tail byte's block changes on disk (its bits
     * past the old end are written as 0); the bytes after it are zeros in
     * the file, which the caller extends.  Shrinking: the new last byte. */
    if (nbits > old)
        mark_bits_dirty(bm, old, 1);
    else if (nbits > 0)
        mark_bits_dirty(bm, nbits - 1, 1);
    return 0;
}

/* ---- bytes ----------------------------------------------------------------- */

void ac_bm_load_bytes(struct ac_bitmap *bm, uint64_t byte_off,
                      const unsigned char *src, size_t len)
{
    uint64_t total = ac_bm_nbytes(bm);
    if (byte_off >= total)
        return;
    if (len > total - byte_off)
        len = (size_t)(total - byte_off);
    uint64_t end = byte_off + len;
    for (uint64_t b = byte_off; b < end;) {
        uint64_t c = b / AC_BM_CHUNK_BYTES;
        uint64_t cb0 = c * AC_BM_CHUNK_BYTES;
        uint64_t n = min_u64(end, cb0 + AC_BM_CHUNK_BYTES) - b;
        struct ac_chunk *k = &bm->chunks[c];
        if (k->state == AC_CHUNK_UNKNOWN) {
            k->state = AC_CHUNK_ZERO;
            k->count = 0;
            bm->unknown--;
        }
        if (materialize(bm, c) == 0) {
            bytes_to_words(k->words, b - cb0, src + (b - byte_off), (size_t)n);
            mask_tail(bm, c, k->words);
            bm->count -= k->count;
            k->count = (uint32_t)popcount_range(k->words, 0, CB);
            bm->count += k->count;
            normalize(bm, c);
        }
        b += n;
    }
}

void ac_bm_store_bytes(const struct ac_bitmap *bm, uint64_t byte_off,
                       unsigned char *dst, size_t len)
{
    uint64_t total = ac_bm_nbytes(bm);
    size_t n = byte_off >= total ? 0
             : (len > total - byte_off ? (size_t)(total - byte_off) : len);
    uint64_t end = byte_off + n;
    for (uint64_t b = byte_off; b < end;) {
        uint64_t c = b / AC_BM_CHUNK_BYTES;
        uint64_t cb0 = c * AC_BM_CHUNK_BYTES;
        size_t k = (size_t)(min_u64(end, cb0 + AC_BM_CHUNK_BYTES) - b);
        unsigned char *out = dst + (b - byte_off);
        const struct ac_chunk *ch = &bm->chunks[c];
        if (ch->state == AC_CHUNK_MIXED) {
            words_to_bytes(ch->words, b - cb0, out, k);
        } else if (ch->state == AC_CHUNK_FULL) {
            memset(out, 0xff, k);
            /* The chunk's last valid byte may be partial. */
            uint64_t valid = chunk_bits(bm, c);
            uint64_t last_byte = cb0 + valid / 8;
            if (valid % 8 != 0 && last_byte >= b && last_byte < b + k)
                out[last_byte - b] = (unsigned char)((1u << (valid % 8)) - 1);
        } else {
            memset(out, 0, k);
        }
        b += k;
    }
    memset(dst + n, 0, len - n);
}

/* ---- queries and changes --------------------------------------------------- */

bool ac_bm_test(const struct ac_bitmap *bm, uint64_t n)
{
    const struct ac_chunk *k = &bm->chunks[n / CB];
    if (k->state == AC_CHUNK_FULL)
        return true;
    if (k->state != AC_CHUNK_MIXED)
        return false;
    uint64_t i = n % CB;
    return (k->words[i / 64] >> (i % 64)) & 1;
}

int ac_bm_prepare(struct ac_bitmap *bm, uint64_t start, uint64_t count)
{
    int r = 0;
    FOR_EACH_CHUNK(start, start + count, c, lo, hi, {
        uint8_t st = bm->chunks[c].state;
        bool whole = lo == 0 && hi == chunk_bits(bm, c);
        if (!whole && (st == AC_CHUNK_ZERO || st == AC_CHUNK_FULL) && r == 0)
            r = materialize(bm, c);
    });
    return r;
}

/* Sets (set = true) or clears bits of one chunk; returns how many changed. */
static uint64_t change_chunk(struct ac_bitmap *bm, uint64_t c, uint64_t lo, uint64_t hi,
                             bool set)
{
    struct ac_chunk *k = &bm->chunks[c];
    uint64_t valid = chunk_bits(bm, c);
    uint64_t changed = 0;

    if (k->state == (set ? AC_CHUNK_FULL : AC_CHUNK_ZERO) || k->state == AC_CHUNK_UNKNOWN)
        return 0;
    if (lo == 0 && hi == valid) {
        /* The whole chunk: a change of state, no words needed. */
        changed = set ? valid - k->count : k->count;
        free(k->words);
        k->words = NULL;
        k->state = set ? AC_CHUNK_FULL : AC_CHUNK_ZERO;
        k->count = set ? (uint32_t)valid : 0;
        return changed;
    }
    if (materialize(bm, c) < 0)
        return 0;       /* unreachable when the caller used ac_bm_prepare() */
    uint64_t *w = k->words;
    if (set) {
        FOR_EACH_WORD(lo, hi - lo, i, m, {
            changed += (uint64_t)__builtin_popcountll(~w[i] & m);
            w[i] |= m;
        });
        k->count += (uint32_t)changed;
    } else {
        FOR_EACH_WORD(lo, hi - lo, i, m, {
            changed += (uint64_t)__builtin_popcountll(w[i] & m);
            w[i] &= ~m;
        });
        k->count -= (uint32_t)changed;
    }
    normalize(bm, c);
    return changed;
}

static uint64_t change_range(struct ac_bitmap *bm, uint64_t start, uint64_t count, bool set)
{
    uint64_t changed = 0;
    if (count == 0)
        return 0;
    /* Only the chunks that changed are marked dirty: a wide range with few
     * changes (commit clears every bit below its last run) must not make
     * flush rewrite the whole bitmap. */
    FOR_EACH_CHUNK(start, start + count, c, lo, hi, {
        uint64_t n = change_chunk(bm, c, lo, hi, set);
        if (n) {
            changed += n;
            mark_bits_dirty(bm, c * CB + lo, hi - lo);
        }
    });
    if (set)
        bm->count += changed;
    else
        bm->count -= changed;
    return changed;
}

uint64_t ac_bm_set_range(struct ac_bitmap *bm, uint64_t start, uint64_t count)
{
    return change_range(bm, start, count, true);
}

uint64_t ac_bm_clear_range(struct ac_bitmap *bm, uint64_t start, uint64_t count)
{
    return change_range(bm, start, count, false);
}

/* The first bit in [start, end) equal to `want`; chunks all of the other
 * value are skipped whole. */
static uint64_t find_next(const struct ac_bitmap *bm, uint64_t start, uint64_t end, bool want)
{
    if (end > bm->nbits)
        end = bm->nbits;
    FOR_EACH_CHUNK(start, end, c, lo, hi, {
        const struct ac_chunk *k = &bm->chunks[c];
        if (k->state == AC_CHUNK_MIXED) {
            uint64_t r = want ? ac_bits_next_set(k->words, lo, hi)
                              : ac_bits_next_clear(k->words, lo, hi);
            if (r < hi)
                return c * CB + r;
        } else if ((k->state == AC_CHUNK_FULL) == want) {
            return c * CB + lo;
        }
    });
    return end;
}

uint64_t ac_bm_find_next_set(const struct ac_bitmap *bm, uint64_t start, uint64_t end)
{
    return find_next(bm, start, end, true);
}

uint64_t ac_bm_find_next_clear(const struct ac_bitmap *bm, uint64_t start, uint64_t end)
{
    return find_next(bm, start, end, false);
}

AC_HOT bool ac_bm_all_set(const struct ac_bitmap *bm, uint64_t start, uint64_t count)
{
    if (count == 0)
        return true;
    FOR_EACH_CHUNK(start, start + count, c, lo, hi, {
        const struct ac_chunk *k = &bm->chunks[c];
        if (k->state == AC_CHUNK_MIXED) {
            const uint64_t *w = k->words;
            FOR_EACH_WORD(lo, hi - lo, i, m, {
                if ((w[i] & m) != m)
                    return false;
            });
        } else if (k->state != AC_CHUNK_FULL) {
            return false;
        }
    });
    return true;
}

AC_HOT int ac_bm_uniform(const struct ac_bitmap *bm, uint64_t start, uint64_t end)
{
    uint64_t c = start / CB;
    if (end <= start || (end - 1) / CB != c)
        return -1;
    const struct ac_chunk *k = &bm->chunks[c];
    if (k->state == AC_CHUNK_FULL)
        return 1;
    if (k->state == AC_CHUNK_ZERO)
        return 0;
    if (k->state != AC_CHUNK_MIXED)
        return -1;
    uint64_t lo = start - c * CB, hi = end - c * CB;
    const uint64_t *w = k->words;
    uint64_t i = lo / 64, last = (hi - 1) / 64;
    uint64_t m = word_mask((unsigned)(lo % 64), i == last ? (unsigned)(hi - last * 64) : 64u);
    uint64_t v = w[i] & m;
    if (v != 0 && v != m)
        return -1;
    int set = v != 0;
    while (++i <= last) {
        m = i == last ? word_mask(0, (unsigned)(hi - last * 64)) : ~UINT64_C(0);
        v = w[i] & m;
        if (v != (set ? m : 0))
            return -1;
    }
    return set;
}

uint64_t ac_bm_count_range(const struct ac_bitmap *bm, uint64_t start, uint64_t end)
{
    uint64_t n = 0;
    if (end > bm->nbits)
        end = bm->nbits;
    if (end <= start)
        return 0;
    FOR_EACH_CHUNK(start, end, c, lo, hi, {
        const struct ac_chunk *k = &bm->chunks[c];
        if (k->state == AC_CHUNK_MIXED)
            n += popcount_range(k->words, lo, hi);
        else if (k->state == AC_CHUNK_FULL)
            n += hi - lo;
    });
    return n;
}
