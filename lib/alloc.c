/*
 * alloc.c: the allocation walk.  A run is found with two word-at-a-time
 * bitmap scans: the next bit that differs from the first one, then, for
 * unallocated runs, a cut at the backing file's end.
 */
#include "config.h"

#include "codec.h"
#include "image.h"

unsigned ac_image_status(struct addcow_image *img, uint64_t offset, uint64_t len,
                         uint64_t *run)
{
    uint64_t end = offset + len;
    uint64_t s = offset >> AC_SECTOR_SHIFT;
    uint64_t s_end = (end + AC_SECTOR_SIZE - 1) >> AC_SECTOR_SHIFT;
    uint64_t next;
    unsigned flags;

    pthread_mutex_lock(&img->bm_lock);
    if (ac_bm_test(&img->bm, s)) {
        flags = ADDCOW_STATUS_ALLOCATED;
        next = ac_bm_find_next_clear(&img->bm, s + 1, s_end);
    } else {
        flags = 0;
        next = ac_bm_find_next_set(&img->bm, s + 1, s_end);
    }
    pthread_mutex_unlock(&img->bm_lock);

    uint64_t run_end = next << AC_SECTOR_SHIFT;
    if (run_end > end || next >= s_end)
        run_end = end;
    if (flags == 0) {
        uint64_t bsize = img->backing.size;   /* 0 without a backing file */
        if (offset >= bsize)
            flags = ADDCOW_STATUS_ZERO;
        else if (run_end > bsize)
            run_end = bsize;
    }
    *run = run_end - offset;
    return flags;
}

uint64_t ac_image_allocated_bytes(struct addcow_image *img)
{
    pthread_mutex_lock(&img->bm_lock);
    uint64_t n = img->bm.count;
    pthread_mutex_unlock(&img->bm_lock);
    return n << AC_SECTOR_SHIFT;
}
