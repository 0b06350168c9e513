/*
 * bitmap.h: the allocation bitmap, one bit per sector, in chunks.
 *
 * Bit n of the disk is bit (n % 64) of word n / 64, which is the on-disk
 * order (byte n / 8, least significant bit first) read as little-endian
 * words.  The bitmap is cut into chunks of AC_BM_CHUNK_BYTES on-disk bytes
 * (256 MiB of disk each).  A chunk is
 *   - UNKNOWN: not read from the add-cow file yet (no memory);
 *   - ZERO or FULL: every bit clear, or set (no memory);
 *   - MIXED: its words are in memory.
 * so memory and open time follow what was touched, not the virtual size.
 * Opening an image starts with UNKNOWN chunks (holes of the add-cow file
 * are ZERO at once); the image reads a chunk on first touch and installs it
 * with ac_bm_install_chunk(), which keeps only MIXED chunks' words.
 * Queries must not reach into UNKNOWN chunks: ac_bm_first_unknown() tells
 * where the known part of a range ends.
 *
 * Range operations work a word at a time, and skip ZERO and FULL chunks
 * whole.  Dirty tracking: the bitmap remembers which blocks of its on-disk
 * bytes (AC_BM_DIRTY_BLOCK bytes each) changed since they were last written.
 *
 * Not thread-safe: the image serialises access with its bitmap lock.
 */
#ifndef AC_BITMAP_H
#define AC_BITMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AC_BM_DIRTY_BLOCK 512u                         /* bytes per dirty mark */
#define AC_BM_CHUNK_BYTES (64u * 1024)                 /* bitmap bytes per chunk */
#define AC_BM_CHUNK_BITS  ((uint64_t)AC_BM_CHUNK_BYTES * 8)
#define AC_BM_CHUNK_WORDS (AC_BM_CHUNK_BYTES / 8)

enum ac_chunk_state { AC_CHUNK_UNKNOWN = 0, AC_CHUNK_ZERO, AC_CHUNK_FULL, AC_CHUNK_MIXED };

struct ac_chunk {
    uint64_t *words;            /* MIXED only */
    uint32_t count;             /* set bits, when known */
    uint8_t state;
};

struct ac_bitmap {
    uint64_t nbits;             /* sectors */
    uint64_t nchunks;
    struct ac_chunk *chunks;
    uint64_t count;             /* set bits in the known chunks */
    uint64_t unknown;           /* chunks still UNKNOWN */
    uint64_t *dirty;            /* one bit per AC_BM_DIRTY_BLOCK bitmap bytes */
    uint64_t *unsynced;         /* blocks written out, not yet known durable */
    uint64_t ndirty_blocks;
};

/* An all-clear (known) bitmap of nbits bits.  -ENOMEM or 0. */
int ac_bm_init(struct ac_bitmap *bm, uint64_t nbits);
/* A bitmap whose chunks are all UNKNOWN, to be loaded on demand. */
int ac_bm_init_unknown(struct ac_bitmap *bm, uint64_t nbits);
void ac_bm_free(struct ac_bitmap *bm);

static inline uint64_t ac_bm_nbytes(const struct ac_bitmap *bm)
{
    return bm->nbits / 8 + (bm->nbits % 8 != 0);
}

/* Chunks: index of a bit's chunk, the on-disk bytes of chunk c, and its
 * state. */
static inline uint64_t ac_bm_chunk_of(uint64_t bit)
{
    return bit / AC_BM_CHUNK_BITS;
}
void ac_bm_chunk_bytes(const struct ac_bitmap *bm, uint64_t c, uint64_t *byte_off,
                       size_t *len);
static inline bool ac_bm_chunk_unknown(const struct ac_bitmap *bm, uint64_t c)
{
    return bm->chunks[c].state == AC_CHUNK_UNKNOWN;
}
/* Marks an UNKNOWN chunk known all-clear (it lies in a hole of the file). */
void ac_bm_set_chunk_zero(struct ac_bitmap *bm, uint64_t c);
/* Installs an UNKNOWN chunk from its on-disk bytes (len as given by
 * ac_bm_chunk_bytes); a chunk that is no longer UNKNOWN is left alone.
 * -ENOMEM or 0. */
int ac_bm_install_chunk(struct ac_bitmap *bm, uint64_t c, const unsigned char *src,
                        size_t len);
/* The first bit in [start, end) that lies in an UNKNOWN chunk, or end. */
uint64_t ac_bm_first_unknown(const struct ac_bitmap *bm, uint64_t start, uint64_t end);

/* Changes the bit count, keeping the bits below min(old, new); new bits are
 * clear (known); bits past the new end are dropped.  The chunks holding the
 * old and the new last bit must be known.  Marks dirty the block of the
 * last byte that changes on disk: the old tail byte when growing (the
 * caller makes the file hold zeros after it), the new last byte when
 * shrinking.  -ENOMEM or 0 (on failure the bitmap is unchanged). */
int ac_bm_resize(struct ac_bitmap *bm, uint64_t nbits);

/* Byte-level import/export in the on-disk layout, over known chunks.
 * Bits past nbits are ignored on load and written as zero on store. */
void ac_bm_load_bytes(struct ac_bitmap *bm, uint64_t byte_off,
                      const unsigned char *src, size_t len);
void ac_bm_store_bytes(const struct ac_bitmap *bm, uint64_t byte_off,
                       unsigned char *dst, size_t len);

bool ac_bm_test(const struct ac_bitmap *bm, uint64_t n);
/* 1 if bits [start, end) are all set, 0 if all clear, -1 if mixed, empty,
 * or not inside one known chunk (the caller then takes the general path). */
int ac_bm_uniform(const struct ac_bitmap *bm, uint64_t start, uint64_t end);

/* Gives memory to the chunks that a set or clear of [start, start + count)
 * would change in part, so that the change itself cannot fail.  -ENOMEM
 * or 0. */
int ac_bm_prepare(struct ac_bitmap *bm, uint64_t start, uint64_t count);
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
/* Blocks taken for writing (their dirty marks cleared) are remembered
 * until the file is known durable: ac_bm_unsynced_done(bm, true) forgets
 * them; (bm, false), after a failed sync, marks them dirty again (and only
 * them: not the whole bitmap, which may be gigabytes). */
void ac_bm_note_written(struct ac_bitmap *bm, uint64_t first, uint64_t nblocks);
void ac_bm_unsynced_done(struct ac_bitmap *bm, bool durable);

/* Word-range helpers on a plain uint64_t array, shared with the dirty map. */
void ac_bits_set(uint64_t *w, uint64_t start, uint64_t count);
void ac_bits_clear(uint64_t *w, uint64_t start, uint64_t count);
uint64_t ac_bits_next_set(const uint64_t *w, uint64_t start, uint64_t end);
uint64_t ac_bits_next_clear(const uint64_t *w, uint64_t start, uint64_t end);

#endif
