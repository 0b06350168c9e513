/*
 * bitmap.c: word-at-a-time range operations on the sector bitmap.
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap.h"

static inline uint64_t div_round_up(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

/* Mask of bits [lo, hi) within one word, 0 <= lo < hi <= 64. */
static inline uint64_t word_mask(unsigned lo, unsigned hi)
{
    uint64_t m = hi == 64 ? ~UINT64_C(0) : (UINT64_C(1) << hi) - 1;
    return m & ~((UINT64_C(1) << lo) - 1);
}

/* Applies op to each word of [start, start + count) with its mask and
 * returns the sum of what op returns. */
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

void ac_bits_set(uint64_t *w, uint64_t start, uint64_t count)
{
    FOR_EACH_WORD(start, count, i, m, w[i] |= m);
}

void ac_bits_clear(uint64_t *w, uint64_t start, uint64_t count)
{
    FOR_EACH_WORD(start, count, i, m, w[i] &= ~m);
}

/* First bit in [start, end) that equals `want` (invert = ~0 looks for 0s). */
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

static uint64_t dirty_blocks_for(uint64_t nbits)
{
    return div_round_up(div_round_up(nbits, 8), AC_BM_DIRTY_BLOCK);
}

int ac_bm_init(struct ac_bitmap *bm, uint64_t nbits)
{
    memset(bm, 0, sizeof(*bm));
    uint64_t nwords = div_round_up(nbits, 64);
    uint64_t nblocks = dirty_blocks_for(nbits);
    if (nwords > SIZE_MAX / 8 || nblocks / 64 + 1 > SIZE_MAX / 8)
        return -ENOMEM;
    bm->words = calloc(nwords ? nwords : 1, sizeof(uint64_t));
    bm->dirty = calloc(div_round_up(nblocks, 64) + 1, sizeof(uint64_t));
    if (bm->words == NULL || bm->dirty == NULL) {
        ac_bm_free(bm);
        return -ENOMEM;
    }
    bm->nbits = nbits;
    bm->nwords = nwords;
    bm->ndirty_blocks = nblocks;
    return 0;
}

void ac_bm_free(struct ac_bitmap *bm)
{
    free(bm->words);
    free(bm->dirty);
    memset(bm, 0, sizeof(*bm));
}

static void mark_bits_dirty(struct ac_bitmap *bm, uint64_t start, uint64_t count)
{
    if (count == 0)
        return;
    uint64_t first = start / 8 / AC_BM_DIRTY_BLOCK;
    uint64_t last = (start + count - 1) / 8 / AC_BM_DIRTY_BLOCK;
    ac_bits_set(bm->dirty, first, last - first + 1);
}

int ac_bm_resize(struct ac_bitmap *bm, uint64_t nbits)
{
    struct ac_bitmap nb;
    int r = ac_bm_init(&nb, nbits);
    if (r < 0)
        return r;
    uint64_t keep = nbits < bm->nbits ? nbits : bm->nbits;
    memcpy(nb.words, bm->words, (keep / 64) * sizeof(uint64_t));
    if (keep % 64)
        nb.words[keep / 64] = bm->words[keep / 64] & word_mask(0, keep % 64);
    nb.count = ac_bm_count_range(&nb, 0, keep);
    uint64_t keep_blocks = nb.ndirty_blocks < bm->ndirty_blocks ? nb.ndirty_blocks
                                                                : bm->ndirty_blocks;
    memcpy(nb.dirty, bm->dirty, (keep_blocks / 64) * sizeof(uint64_t));
    if (keep_blocks % 64)
        nb.dirty[keep_blocks / 64] = bm->dirty[keep_blocks / 64] &
                                     word_mask(0, keep_blocks % 64);
    if (nbits > bm->nbits)
        mark_bits_dirty(&nb, bm->nbits, nbits - bm->nbits);
    else if (nbits > 0)
        mark_bits_dirty(&nb, nbits - 1, 1);
    ac_bm_free(bm);
    *bm = nb;
    return 0;
}

void ac_bm_load_bytes(struct ac_bitmap *bm, uint64_t byte_off,
                      const unsigned char *src, size_t len)
{
    uint64_t total = ac_bm_nbytes(bm);
    if (byte_off >= total)
        return;
    if (len > total - byte_off)
        len = (size_t)(total - byte_off);
    /* Copy into the words' bytes in little-endian order. */
    unsigned char *dst = (unsigned char *)bm->words;
#if __BYTE_ORDER == __LITTLE_ENDIAN
    memcpy(dst + byte_off, src, len);
#else
    for (size_t i = 0; i < len; i++) {
        uint64_t b = byte_off + i;
        uint64_t *w = &bm->words[b / 8];
        unsigned sh = (unsigned)(b % 8) * 8;
        *w = (*w & ~(UINT64_C(0xff) << sh)) | ((uint64_t)src[i] << sh);
    }
#endif
    /* Bits at or past nbits are ignored on read: keep them clear. */
    if (bm->nbits % 64)
        bm->words[bm->nwords - 1] &= word_mask(0, bm->nbits % 64);
    bm->count = ac_bm_count_range(bm, 0, bm->nbits);
}

void ac_bm_store_bytes(const struct ac_bitmap *bm, uint64_t byte_off,
                       unsigned char *dst, size_t len)
{
    uint64_t total = ac_bm_nbytes(bm);
    size_t n = byte_off >= total ? 0
             : (len > total - byte_off ? (size_t)(total - byte_off) : len);
#if __BYTE_ORDER == __LITTLE_ENDIAN
    memcpy(dst, (const unsigned char *)bm->words + byte_off, n);
#else
    for (size_t i = 0; i < n; i++) {
        uint64_t b = byte_off + i;
        dst[i] = (unsigned char)(bm->words[b / 8] >> ((b % 8) * 8));
    }
#endif
    memset(dst + n, 0, len - n);
}

uint64_t ac_bm_set_range(struct ac_bitmap *bm, uint64_t start, uint64_t count)
{
    uint64_t changed = 0;
    FOR_EACH_WORD(start, count, i, m, {
        changed += (uint64_t)__builtin_popcountll(~bm->words[i] & m);
        bm->words[i] |= m;
    });
    if (changed) {
        bm->count += changed;
        mark_bits_dirty(bm, start, count);
    }
    return changed;
}

uint64_t ac_bm_clear_range(struct ac_bitmap *bm, uint64_t start, uint64_t count)
{
    uint64_t changed = 0;
    FOR_EACH_WORD(start, count, i, m, {
        changed += (uint64_t)__builtin_popcountll(bm->words[i] & m);
        bm->words[i] &= ~m;
    });
    if (changed) {
        bm->count -= changed;
        mark_bits_dirty(bm, start, count);
    }
    return changed;
}

uint64_t ac_bm_find_next_set(const struct ac_bitmap *bm, uint64_t start, uint64_t end)
{
    if (end > bm->nbits)
        end = bm->nbits;
    return ac_bits_next_set(bm->words, start, end);
}

uint64_t ac_bm_find_next_clear(const struct ac_bitmap *bm, uint64_t start, uint64_t end)
{
    if (end > bm->nbits)
        end = bm->nbits;
    return ac_bits_next_clear(bm->words, start, end);
}

bool ac_bm_all_set(const struct ac_bitmap *bm, uint64_t start, uint64_t count)
{
    if (count == 0)
        return true;
    FOR_EACH_WORD(start, count, i, m, {
        if ((bm->words[i] & m) != m)
            return false;
    });
    return true;
}

uint64_t ac_bm_count_range(const struct ac_bitmap *bm, uint64_t start, uint64_t end)
{
    uint64_t n = 0;
    if (end <= start)
        return 0;
    FOR_EACH_WORD(start, end - start, i, m,
                  n += (uint64_t)__builtin_popcountll(bm->words[i] & m));
    return n;
}

bool ac_bm_next_dirty(const struct ac_bitmap *bm, uint64_t from,
                      uint64_t max_blocks, uint64_t *first, uint64_t *nblocks)
{
    uint64_t f = ac_bits_next_set(bm->dirty, from, bm->ndirty_blocks);
    if (f >= bm->ndirty_blocks)
        return false;
    uint64_t lim = bm->ndirty_blocks - f < max_blocks ? bm->ndirty_blocks
                                                      : f + max_blocks;
    uint64_t e = ac_bits_next_clear(bm->dirty, f, lim);
    *first = f;
    *nblocks = e - f;
    return true;
}

void ac_bm_mark_dirty_blocks(struct ac_bitmap *bm, uint64_t first, uint64_t nblocks)
{
    ac_bits_set(bm->dirty, first, nblocks);
}

void ac_bm_clear_dirty_blocks(struct ac_bitmap *bm, uint64_t first, uint64_t nblocks)
{
    ac_bits_clear(bm->dirty, first, nblocks);
}

bool ac_bm_any_dirty(const struct ac_bitmap *bm)
{
    return ac_bits_next_set(bm->dirty, 0, bm->ndirty_blocks) < bm->ndirty_blocks;
}
