/*
 * ops.c: the long operations of ABI 1.1 and their public entry points:
 * hydrate (copy the backing file's data into the image file), detach (drop
 * a backing file that no sector reads any more) and commit (write the
 * image's data into its backing file).
 *
 * All three keep FORMAT.md's invariant ("Crash safety"): a bit reaches the
 * add-cow file only over data already durable in the image file (hydrate
 * sets bits in memory after writing the data, and flush orders the rest),
 * and commit clears a bit only once the backing file durably holds the
 * same bytes; so the virtual disk reads the same at every point, whatever
 * is interrupted where.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "addcow.h"
#include "codec.h"
#include "error.h"
#include "image.h"

#define ENTER() ac_enter(__func__)

#define CHECK_IMG(img)                                                  \
    do {                                                                \
        if ((img) == NULL)                                              \
            return ac_error(EINVAL, "image handle is NULL");            \
    } while (0)

/* Work is done a piece at a time: one range lock (hydrate), one buffer,
 * one progress call. */
#define PIECE_BYTES (1u << 20)
#define PIECE_SECTORS (PIECE_BYTES >> AC_SECTOR_SHIFT)
/* Hydrate makes its work durable after this many bytes copied, so that an
 * interrupted run loses little and a second call resumes near where the
 * first stopped. */
#define HYDRATE_FLUSH_BYTES (64u << 20)
/* Buffers fit O_DIRECT (cache=none). */
#define BUF_ALIGN 4096

static inline uint64_t sector_ceil(uint64_t x)
{
    return (x + AC_SECTOR_SIZE - 1) & ~(uint64_t)(AC_SECTOR_SIZE - 1);
}

static inline uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* true if the caller asked to stop. */
static bool report(addcow_progress_fn progress, void *opaque, uint64_t done, uint64_t total)
{
    return progress != NULL && progress(done, total, opaque) != 0;
}

static unsigned char *piece_buffer(struct addcow_image *img)
{
    void *p = NULL;
    int e = posix_memalign(&p, BUF_ALIGN, PIECE_BYTES);
    if (e != 0) {
        ac_error(e, "'%s': a buffer of %u bytes", img->path, PIECE_BYTES);
        return NULL;
    }
    return p;
}

/* ---- hydrate ----------------------------------------------------------- */

/* Copies the backing data of every unallocated sector of [s0, s1) into the
 * image file and sets their bits, with those sectors range-locked: a write
 * that allocates any of them waits, and one that came first has set its
 * bits already, so the walk inside the lock skips its sectors (the guest's
 * data is never overwritten).  *copied grows by the bytes written. */
static int hydrate_piece(struct addcow_image *img, uint64_t s0, uint64_t s1,
                         unsigned char *buf, uint64_t *copied)
{
    uint64_t pos = s0 << AC_SECTOR_SHIFT, end = s1 << AC_SECTOR_SHIFT;
    struct ac_range lk;
    int r = 0;

    ac_rl_lock(&img->rl, &lk, s0, s1);
    while (pos < end) {
        uint64_t run;
        int st = ac_image_status(img, pos, end - pos, &run);
        if (st < 0) {
            r = st;
            break;
        }
        if (st & (ADDCOW_STATUS_ALLOCATED | ADDCOW_STATUS_ZERO)) {
            pos += run;
            continue;
        }
        /* Backing data up to pos + run.  A run that stops inside a sector
         * (at the backing file's end) takes the whole sector: the rest of
         * it reads as zeros, and the image file gets whole sectors. */
        uint64_t from = pos & ~(uint64_t)(AC_SECTOR_SIZE - 1);
        uint64_t to = sector_ceil(pos + run);
        uint64_t a = from >> AC_SECTOR_SHIFT, b = to >> AC_SECTOR_SHIFT;
        struct iovec v = { buf, (size_t)(to - from) };

        /* The bits' memory first, so that setting them cannot fail after
         * the data is written. */
        pthread_mutex_lock(&img->bm_lock);
        r = ac_bm_prepare(&img->bm, a, b - a);
        pthread_mutex_unlock(&img->bm_lock);
        if (r < 0) {
            r = ac_error(r, "add-cow file '%s': bitmap memory", img->path);
            break;
        }
        r = ac_image_readv(img, &v, 1, from, to - from);
        if (r < 0)
            break;
        r = ac_file_write_full(img->imgf, &v, 1, from, to - from);
        if (r < 0) {
            r = ac_error(r, "image file '%s': writing %" PRIu64 " bytes at %" PRIu64,
                         img->image_path, to - from, from);
            break;
        }
        pthread_mutex_lock(&img->bm_lock);
        ac_bm_set_range(&img->bm, a, b - a);
        pthread_mutex_unlock(&img->bm_lock);
        *copied += to - from;
        pos = to;
    }
    ac_rl_unlock(&img->rl, &lk);
    return r;
}

static int hydrate(struct addcow_image *img, uint64_t offset, uint64_t length,
                   addcow_progress_fn progress, void *opaque)
{
    uint64_t end = offset + length;
    /* Sectors that hold backing data: those below the backing file's end
     * (0 without a backing file). */
    uint64_t s = offset >> AC_SECTOR_SHIFT;
    uint64_t s_stop = min_u64(sector_ceil(end), sector_ceil(img->backing.size)) >> AC_SECTOR_SHIFT;
    uint64_t copied = 0, flushed = 0, done = 0;
    bool reported = false, cancelled = false;
    unsigned char *buf = NULL;
    int r = 0;

    if (s < s_stop && (buf = piece_buffer(img)) == NULL)
        return -ENOMEM;
    while (s < s_stop) {
        /* Pieces on PIECE_BYTES boundaries of the disk. */
        uint64_t s1 = min_u64(s_stop, (s / PIECE_SECTORS + 1) * PIECE_SECTORS);
        r = hydrate_piece(img, s, s1, buf, &copied);
        if (r < 0)
            break;
        if (copied - flushed >= HYDRATE_FLUSH_BYTES) {
            if ((r = ac_image_flush(img)) < 0)
                break;
            flushed = copied;
        }
        s = s1;
        done = min_u64(end, s1 << AC_SECTOR_SHIFT) - offset;
        reported = true;
        if (report(progress, opaque, done, length)) {
            cancelled = true;
            break;
        }
    }
    free(buf);
    /* The rest of the range (past the backing file's end) has nothing to
     * copy. */
    if (r == 0 && !cancelled && (!reported || done < length)) {
        done = length;
        cancelled = report(progress, opaque, done, length);
    }
    /* What was done is made durable, also when stopping early. */
    int f = ac_image_flush(img);
    if (r == 0)
        r = f;
    if (r == 0 && cancelled)
        r = ac_error(ECANCELED, "hydrating '%s': stopped by the progress callback after "
                     "%" PRIu64 " of %" PRIu64 " bytes (what was copied is kept)",
                     img->path, done, length);
    return r;
}

ADDCOW_API int addcow_hydrate(addcow_image *img, uint64_t offset, uint64_t length,
                              addcow_progress_fn progress, void *opaque)
{
    ENTER();
    CHECK_IMG(img);
    if (!img->writable)
        return ac_error(EBADF, "'%s' is open read-only", img->path);
    if (offset > img->size || length > img->size - offset)
        return ac_error(EINVAL, "range of %" PRIu64 " bytes at %" PRIu64 " reaches past the "
                        "end of '%s' (virtual size %" PRIu64 ")", length, offset,
                        img->path, img->size);
    if (length == 0)
        length = img->size - offset;
    return hydrate(img, offset, length, progress, opaque);
}

/* ---- detach ------------------------------------------------------------ */

/* Writes len zero bytes of the add-cow file at off and makes them durable. */
static int zero_header_bytes(struct addcow_image *img, uint64_t off, size_t len)
{
    static const unsigned char zeros[AC_PATH_FIELD];
    int r = ac_file_pwrite(img->acf, zeros, len, off);
    if (r < 0)
        return ac_error(r, "add-cow file '%s': clearing %zu bytes of the backing file "
                        "field at %" PRIu64, img->path, len, off);
    r = ac_file_flush(img->acf);
    if (r < 0)
        return ac_error(r, "add-cow file '%s': flush after clearing the backing file field",
                        img->path);
    return 0;
}

static int detach(struct addcow_image *img)
{
    /* Sectors that read backing data when unallocated. */
    uint64_t bend = min_u64(img->backing.size, img->size);
    uint64_t need = sector_ceil(bend) >> AC_SECTOR_SHIFT;
    int r = ac_image_ensure_known(img, 0, need);
    if (r < 0)
        return r;
    pthread_mutex_lock(&img->bm_lock);
    uint64_t first = ac_bm_find_next_clear(&img->bm, 0, need);
    uint64_t missing = first < need ? need - ac_bm_count_range(&img->bm, 0, need) : 0;
    bool last_clear = need > 0 && !ac_bm_test(&img->bm, need - 1);
    pthread_mutex_unlock(&img->bm_lock);
    if (first < need) {
        uint64_t bytes = missing << AC_SECTOR_SHIFT;
        if (last_clear)
            bytes -= (need << AC_SECTOR_SHIFT) - bend;     /* the part past its end */
        return ac_error(EBUSY, "'%s': %" PRIu64 " bytes in %" PRIu64 " sectors still read "
                        "from the backing file '%s' (the first at offset %" PRIu64 "); "
                        "hydrate them first", img->path, bytes, missing, img->backing_path,
                        first << AC_SECTOR_SHIFT);
    }

    /* Every bit that makes the backing file unneeded is durable before the
     * header stops naming it. */
    r = ac_image_flush(img);
    if (r < 0)
        return r;
    /* A NUL first byte alone means "no backing file": a one-byte write
     * inside the first sector cannot be torn.  Then the rest of the field,
     * which FORMAT.md wants zero after the NUL. */
    r = zero_header_bytes(img, AC_OFF_BACKING, 1);
    if (r == 0)
        r = zero_header_bytes(img, AC_OFF_BACKING + 1, AC_PATH_FIELD - 1);
    if (r < 0)
        return r;   /* the handle keeps its backing file, which reads the
                     * same as none now, so that a second call redoes both */
    ac_backing_close(&img->backing);
    free(img->backing_stored);
    free(img->backing_path);
    img->backing_stored = NULL;
    img->backing_path = NULL;
    return 0;
}

ADDCOW_API int addcow_detach(addcow_image *img)
{
    ENTER();
    CHECK_IMG(img);
    if (!img->writable)
        return ac_error(EBADF, "'%s' is open read-only", img->path);
    if (img->backing.kind == AC_BK_NONE)
        return 0;
    return detach(img);
}

/* ---- commit ------------------------------------------------------------ */

/* Replaces the handle's backing file by a new open of the same file:
 * read-write with exclusive locks (rdwr) or read-only with shared ones, as
 * open makes it.  This handle's own locks would conflict with the new ones,
 * so the old open is closed first, and a lock-free read-only open made
 * before that stands in meanwhile, and for good if the new open fails: the
 * handle never lacks its backing file.  When the read-write open fails, a
 * locked read-only one is tried (and the read-write failure returned).
 * Without a stand-in the current open stays (a read-write one too: it
 * reads as well, and a later commit or the close deals with it).  Closing a
 * read-write add-cow backing flushes it; that error is returned too. */
static int swap_backing(struct addcow_image *img, bool rdwr)
{
    struct ac_backing old = img->backing, spare, fresh;
    int r = ac_image_open_backing(img, false, false, &spare);
    if (r < 0)
        return r;
    img->backing = spare;
    int rc = ac_backing_close(&old);
    r = ac_image_open_backing(img, rdwr, true, &fresh);
    if (r < 0 && rdwr) {
        /* On success this leaves the read-write failure's message alone. */
        int r2 = ac_image_open_backing(img, false, true, &fresh);
        if (r2 < 0)
            r = r2;
    }
    if (fresh.kind != AC_BK_NONE) {
        img->backing = fresh;
        ac_backing_close(&spare);
    }
    return r < 0 ? r : rc;
}

/* Writes bytes [off, off + len) of the virtual disk, all allocated, from
 * the image file into the backing file at the same offset. */
static int commit_run(struct addcow_image *img, unsigned char *buf, uint64_t off, uint64_t len)
{
    struct iovec v = { buf, (size_t)len };
    int r = ac_image_readv(img, &v, 1, off, len);
    if (r < 0)
        return r;
    if (img->backing.kind == AC_BK_ADDCOW)
        return ac_image_writev(img->backing.img, &v, 1, off, len);
    r = ac_file_write_full(img->backing.raw, &v, 1, off, len);
    if (r < 0)
        return ac_error(r, "backing file '%s': writing %" PRIu64 " bytes at %" PRIu64,
                        img->backing_path, len, off);
    return 0;
}

/* Makes what was written into the backing file durable, takes its new
 * size, then clears the bits of the sectors below `upto` (every allocated
 * one of them was written) and makes that durable. */
static int commit_settle(struct addcow_image *img, uint64_t upto)
{
    int r;
    if (img->backing.kind == AC_BK_ADDCOW) {
        r = ac_image_flush(img->backing.img);
        if (r < 0)
            return r;
        img->backing.size = img->backing.img->size;
    } else {
        r = ac_file_flush(img->backing.raw);
        if (r < 0)
            return ac_error(r, "backing file '%s': flush", img->backing_path);
        int64_t sz = img->backing.raw->ops->size(img->backing.raw);
        if (sz < 0)
            return ac_error((int)sz, "backing file '%s': cannot get size", img->backing_path);
        /* A raw backing file grows as data past its end is written; the
         * sectors between its old and new end that stay unallocated read
         * the zeros it grew with, as they read zeros before. */
        img->backing.size = (uint64_t)sz;
    }
    uint64_t n = upto >> AC_SECTOR_SHIFT;
    if (n == 0)
        return 0;
    pthread_mutex_lock(&img->bm_lock);
    r = ac_bm_prepare(&img->bm, 0, n);
    if (r == 0)
        ac_bm_clear_range(&img->bm, 0, n);
    pthread_mutex_unlock(&img->bm_lock);
    if (r < 0)
        return ac_error(r, "add-cow file '%s': bitmap memory", img->path);
    return ac_image_flush(img);
}

/* With the backing file open read-write: writes every allocated run into
 * it, a piece at a time, then settles.  Stopped early (cancel), it settles
 * what it wrote. */
static int commit_data(struct addcow_image *img, uint64_t total, uint64_t last_end,
                       addcow_progress_fn progress, void *opaque)
{
    uint64_t done = 0, pos = 0;
    bool reported = false, cancelled = false;
    int r = 0;

    /* An add-cow backing smaller than the data grows first (its new area
     * reads zeros, as this image read it past the backing file's end). */
    if (img->backing.kind == AC_BK_ADDCOW && last_end > img->backing.img->size) {
        r = ac_image_truncate(img->backing.img, last_end);
        img->backing.size = img->backing.img->size;
        if (r < 0)
            return r;
    }
    unsigned char *buf = total > 0 ? piece_buffer(img) : NULL;
    if (total > 0 && buf == NULL)
        return -ENOMEM;
    while (pos < last_end && !cancelled) {
        uint64_t run;
        int st = ac_image_status(img, pos, last_end - pos, &run);
        if (st < 0) {
            r = st;
            break;
        }
        if (!(st & ADDCOW_STATUS_ALLOCATED)) {
            pos += run;
            continue;
        }
        for (uint64_t end = pos + run; pos < end;) {
            uint64_t n = min_u64(end - pos, PIECE_BYTES);
            if ((r = commit_run(img, buf, pos, n)) < 0)
                break;
            pos += n;
            done += n;
            reported = true;
            if (report(progress, opaque, done, total)) {
                cancelled = true;
                break;
            }
        }
        if (r < 0)
            break;
    }
    free(buf);
    if (r < 0)
        return r;       /* no bit cleared: the disk reads as before */
    if (!cancelled && (!reported || done < total)) {
        done = total;       /* (the allocated bytes were all written) */
        cancelled = report(progress, opaque, done, total);
    }
    r = commit_settle(img, pos);
    if (r == 0 && cancelled)
        r = ac_error(ECANCELED, "committing '%s': stopped by the progress callback after "
                     "%" PRIu64 " of %" PRIu64 " allocated bytes (those are committed)",
                     img->path, done, total);
    return r;
}

static int commit(struct addcow_image *img, addcow_progress_fn progress, void *opaque)
{
    uint64_t total = 0, last_end = 0;
    int r = ac_image_flush(img);
    if (r < 0)
        return r;
    /* What there is to do: the allocated bytes, and where they end. */
    for (uint64_t pos = 0, run; pos < img->size; pos += run) {
        int st = ac_image_status(img, pos, img->size - pos, &run);
        if (st < 0)
            return st;
        if (st & ADDCOW_STATUS_ALLOCATED) {
            total += run;
            last_end = pos + run;
        }
    }
    r = swap_backing(img, true);
    if (r < 0)
        return r;
    r = commit_data(img, total, last_end, progress, opaque);
    int r2 = swap_backing(img, false);
    return r < 0 ? r : r2;
}

ADDCOW_API int addcow_commit(addcow_image *img, addcow_progress_fn progress, void *opaque)
{
    ENTER();
    CHECK_IMG(img);
    if (!img->writable)
        return ac_error(EBADF, "'%s' is open read-only", img->path);
    if (img->backing.kind == AC_BK_NONE)
        return ac_error(EINVAL, "'%s' has no backing file to commit into", img->path);
    return commit(img, progress, opaque);
}
