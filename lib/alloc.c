/*
 * alloc.c: the allocation map of an open image: the bitmap read from the
 * add-cow file chunk by chunk on first touch, and the allocation walk.
 *
 * Chunks are read without the bitmap lock held (two threads may read the
 * same chunk; the first to install it wins), so a chunk's first read never
 * stalls the I/O of other threads.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "codec.h"
#include "error.h"
#include "image.h"

/* Reads chunk c of the bitmap from the add-cow file and installs it. */
static int load_chunk(struct addcow_image *img, uint64_t c)
{
    uint64_t off;
    size_t len;

    pthread_mutex_lock(&img->bm_lock);
    bool unknown = ac_bm_chunk_unknown(&img->bm, c);
    ac_bm_chunk_bytes(&img->bm, c, &off, &len);
    pthread_mutex_unlock(&img->bm_lock);
    if (!unknown)
        return 0;
    unsigned char *buf = malloc(len ? len : 1);
    if (buf == NULL)
        return ac_error(ENOMEM, "add-cow file '%s': reading the bitmap", img->path);
    int64_t got = ac_file_pread(img->acf, buf, len, AC_HEADER_SIZE + off);
    int r = 0;
    if (got < 0 || (size_t)got != len) {
        r = ac_error(got < 0 ? (int)got : EIO, "add-cow file '%s': reading %zu bitmap "
                     "bytes at %" PRIu64 "%s", img->path, len, AC_HEADER_SIZE + off,
                     got >= 0 ? " (the file is shorter than its bitmap)" : "");
    } else {
        pthread_mutex_lock(&img->bm_lock);
        r = ac_bm_install_chunk(&img->bm, c, buf, len);
        pthread_mutex_unlock(&img->bm_lock);
        if (r < 0)
            r = ac_error(r, "add-cow file '%s': bitmap chunk %" PRIu64, img->path, c);
    }
    free(buf);
    return r;
}

int ac_image_bitmap_open(struct addcow_image *img, uint64_t file_len)
{
    uint64_t sectors = img->size >> AC_SECTOR_SHIFT;
    uint64_t nbytes = ac_bitmap_bytes(sectors);
    if (file_len - AC_HEADER_SIZE < nbytes)
        return ac_error(EINVAL, "add-cow file '%s' is corrupt: its bitmap is truncated "
                        "(the file has %" PRIu64 " bytes; a virtual size of %" PRIu64
                        " needs %" PRIu64 ")", img->path, file_len, img->size,
                        AC_HEADER_SIZE + nbytes);
    int r = ac_bm_init_unknown(&img->bm, sectors);
    if (r < 0)
        return ac_error(r, "add-cow file '%s': bitmap of %" PRIu64 " bytes", img->path, nbytes);
    if (img->acf->ops->next_data == NULL)
        return 0;
    /* Chunks that lie in holes of the add-cow file are all clear: known
     * without reading them. */
    uint64_t end = AC_HEADER_SIZE + nbytes;
    for (uint64_t pos = AC_HEADER_SIZE; pos < end;) {
        int64_t d = img->acf->ops->next_data(img->acf, pos);
        if (d < 0)
            break;                      /* holes unknown: read on demand */
        uint64_t data = (uint64_t)d < end ? (uint64_t)d : end;
        uint64_t c0 = (pos - AC_HEADER_SIZE + AC_BM_CHUNK_BYTES - 1) / AC_BM_CHUNK_BYTES;
        for (uint64_t c = c0; c < img->bm.nchunks; c++) {
            uint64_t off;
            size_t len;
            ac_bm_chunk_bytes(&img->bm, c, &off, &len);
            if (AC_HEADER_SIZE + off + len > data)
                break;
            ac_bm_set_chunk_zero(&img->bm, c);
        }
        if (data >= end)
            break;
        pos = AC_HEADER_SIZE +
              ((data - AC_HEADER_SIZE) / AC_BM_CHUNK_BYTES + 1) * AC_BM_CHUNK_BYTES;
    }
    return 0;
}

int ac_image_ensure_known(struct addcow_image *img, uint64_t s0, uint64_t s1)
{
    for (;;) {
        pthread_mutex_lock(&img->bm_lock);
        uint64_t u = ac_bm_first_unknown(&img->bm, s0, s1);
        pthread_mutex_unlock(&img->bm_lock);
        if (u >= s1)
            return 0;
        int r = load_chunk(img, ac_bm_chunk_of(u));
        if (r < 0)
            return r;
        s0 = u;
    }
}

int ac_image_status(struct addcow_image *img, uint64_t offset, uint64_t len,
                    uint64_t *run)
{
    uint64_t end = offset + len;
    uint64_t s = offset >> AC_SECTOR_SHIFT;
    uint64_t s_end = (end + AC_SECTOR_SIZE - 1) >> AC_SECTOR_SHIFT;
    uint64_t next = s + 1;
    unsigned flags;
    int r;

    pthread_mutex_lock(&img->bm_lock);
    while (ac_bm_chunk_unknown(&img->bm, ac_bm_chunk_of(s))) {
        pthread_mutex_unlock(&img->bm_lock);
        if ((r = load_chunk(img, ac_bm_chunk_of(s))) < 0)
            return r;
        pthread_mutex_lock(&img->bm_lock);
    }
    bool set = ac_bm_test(&img->bm, s);
    /* Chunk by chunk, so that a chunk not read yet is read only if the run
     * reaches it. */
    while (next < s_end) {
        uint64_t c = ac_bm_chunk_of(next);
        uint64_t c_end = (c + 1) * AC_BM_CHUNK_BITS < s_end ? (c + 1) * AC_BM_CHUNK_BITS
                                                            : s_end;
        if (ac_bm_chunk_unknown(&img->bm, c)) {
            pthread_mutex_unlock(&img->bm_lock);
            if ((r = load_chunk(img, c)) < 0)
                return r;
            pthread_mutex_lock(&img->bm_lock);
            continue;
        }
        next = set ? ac_bm_find_next_clear(&img->bm, next, c_end)
                   : ac_bm_find_next_set(&img->bm, next, c_end);
        if (next < c_end)
            break;
    }
    pthread_mutex_unlock(&img->bm_lock);

    flags = set ? ADDCOW_STATUS_ALLOCATED : 0;
    uint64_t run_end = next < s_end ? next << AC_SECTOR_SHIFT : end;
    if (run_end > end)
        run_end = end;
    if (!set) {
        uint64_t bsize = img->backing.size;   /* 0 without a backing file */
        if (offset >= bsize)
            flags = ADDCOW_STATUS_ZERO;
        else if (run_end > bsize)
            run_end = bsize;
    }
    *run = run_end - offset;
    return (int)flags;
}

int64_t ac_image_allocated_bytes(struct addcow_image *img)
{
    int r = ac_image_ensure_known(img, 0, img->size >> AC_SECTOR_SHIFT);
    if (r < 0)
        return r;
    pthread_mutex_lock(&img->bm_lock);
    uint64_t n = img->bm.count;
    pthread_mutex_unlock(&img->bm_lock);
    return (int64_t)(n << AC_SECTOR_SHIFT);
}
