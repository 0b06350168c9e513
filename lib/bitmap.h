/*
 * bitmap.h: the in-memory allocation bitmap, one bit per sector, held as
 * 64-bit words.  Bit n of the disk is bit (n % 64) of word n / 64, which is
 * the on-disk order (byte n / 8, least significant bit first) read as
 * little-endian words.  Range operations work a word at a time.
 *
 * Dirty tracking: the bitmap remembers which blocks of its on-disk bytes
 * (AC_BM_DIRTY_BLOCK bytes each) changed since they were last written.
 *
 * Not thread-safe: the image serialises access with its bitmap lock.
 */
#ifndef AC_BITMAP_H
#define AC_BITMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AC_BM_DIRTY_BLOCK 512u   /* bitmap bytes per dirty mark (4096 sectors) */

struct ac_bitmap {
    uint64_t *words;
    uint64_t nbits;         /* sectors */
    uint64_t nwords;
    uint64_t count;         /* set bits, kept up to date */
    uint64_t *dirty;        /* one bit per AC_BM_DIRTY_BLOCK bitmap bytes */
    uint64_t ndirty_blocks;
};

/* Allocates an all-clear bitmap of nbits bits.  -ENOMEM or 0. */
int ac_bm_init(struct ac_bitmap *bm, uint64_t nbits);
void ac_bm_free(struct ac_bitmap *bm);
/* Changes the bit count, keeping the bits below min(old, new); new bits are
 * clear; bits past the new end are dropped.  Marks the changed tail dirty.
 * -ENOMEM or 0 (on failure the bitmap is unchanged). */
int ac_bm_resize(struct ac_bitmap *bm, uint64_t nbits);

/* Byte-level import/export in the on-disk layout.  `byte_off` and `len`
 * address bitmap bytes; bits past nbits are ignored on load and written as
 * zero on store. */
void ac_bm_load_bytes(struct ac_bitmap *bm, uint64_t byte_off,
                      const unsigned char *src, size_t len);
void ac_bm_store_bytes(const struct ac_bitmap *bm, uint64_t byte_off,
                       unsigned char *dst, size_t len);
static inline uint64_t ac_bm_nbytes(const struct ac_bitmap *bm)
{
    return bm->nbits / 8 + (bm->nbits % 8 != 0);
}

static inline bool ac_bm_test(const struct ac_bitmap *bm, uint64_t n)
{
    return (bm->words[n / 64] >> (n % 64)) & 1;
}

/* Sets or clears bits [start, start + count); marks their bytes dirty.
 * Returns how many bits changed. */
uint64_t ac_bm_set_range(struct ac_bitmap *bm, uint64_t start, uint64_t count);
uint64_t ac_bm_clear_range(struct ac_bitmap *bm, uint64_t start, uint64_t count);

/* The first set (or clear) bit in [start, end), or end if there is none;
 * end is first cut to nbits. */
uint64_t ac_bm_find_next_set(const struct ac_bitmap *bm, uint64_t start, uint64_t end);
uint64_t ac_bm_find_next_clear(const struct ac_bitmap *bm, uint64_t start, uint64_t end);

/* True if every bit of [start, start + count) is set. */
bool ac_bm_all_set(const struct ac_bitmap *bm, uint64_t start, uint64_t count);
/* Set bits in [start, end), by popcount. */
uint64_t ac_bm_count_range(const struct ac_bitmap *bm, uint64_t start, uint64_t end);

/* Dirty blocks: finds the first run of dirty blocks at or after `from`,
 * at most max_blocks long.  Returns false when there is none. */
bool ac_bm_next_dirty(const struct ac_bitmap *bm, uint64_t from,
                      uint64_t max_blocks, uint64_t *first, uint64_t *nblocks);
void ac_bm_mark_dirty_blocks(struct ac_bitmap *bm, uint64_t first, uint64_t nblocks);
void ac_bm_clear_dirty_blocks(struct ac_bitmap *bm, uint64_t first, uint64_t nblocks);
bool ac_bm_any_dirty(const struct ac_bitmap *bm);

/* Word-range helpers on a plain uint64_t array, shared with the dirty map. */
void ac_bits_set(uint64_t *w, uint64_t start, uint64_t count);
void ac_bits_clear(uint64_t *w, uint64_t start, uint64_t count);
uint64_t ac_bits_next_set(const uint64_t *w, uint64_t start, uint64_t end);
uint64_t ac_bits_next_clear(const uint64_t *w, uint64_t start, uint64_t end);

#endif
