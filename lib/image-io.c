/*
 * image-io.c: reads, writes, write_zeroes, flush and truncate on an open
 * image, with copy-on-write of partial sectors and the crash-safe ordering
 * of FORMAT.md ("Crash safety"): data reaches the image file first; the
 * bits that cover it reach the add-cow file only at flush, after the image
 * file is durable.
 */
#include "config.h"

#include "hot.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "error.h"
#include "image.h"
#include "iov.h"

#define SMALL_IOV 16
#define ZERO_CHUNK (64u * 1024)          /* bytes of the shared zero buffer */
#define ZERO_IOVS 16                     /* 1 MiB of zeros per write */
#define FLUSH_BATCH_BLOCKS 2048u         /* 1 MiB of bitmap bytes per batch */
#define FLUSH_MAX_RUNS 64
#define FLUSH_MERGE_GAP 16u              /* clean blocks (8 KiB) a write may span */
#define CHUNK_BLOCKS (AC_BM_CHUNK_BYTES / AC_BM_DIRTY_BLOCK)

static const unsigned char zero_buf[ZERO_CHUNK] __attribute__((aligned(4096)));

static inline uint64_t sector_floor(uint64_t x)
{
    return x & ~(uint64_t)(AC_SECTOR_SIZE - 1);
}

/* ---- reads ------------------------------------------------------------- */

/* A batch of reads: one request per run that reads from a file, submitted
 * together (one system call for all of them where the backend can). */
#define READ_BATCH_SMALL 8
#define READ_BATCH_LARGE 256

struct read_batch {
    struct ac_req *reqs;
    struct iovec *pool;         /* the requests' iovec slices */
    int n, cap, pool_used;
};

/* Completes one read of a run: an error names the file; a run that ends
 * past its file's end reads zeros there. */
AC_HOT static int finish_read(struct addcow_image *img, const struct ac_req *q)
{
    if (q->result < 0) {
        bool image = q->file == img->imgf;
        return ac_error((int)q->result, "%s '%s': reading %" PRIu64 " bytes at %" PRIu64,
                        image ? "image file" : "backing file",
                        image ? img->image_path : img->backing_path, q->len, q->offset);
    }
    if ((uint64_t)q->result < q->len)
        ac_iov_memset0(q->iov, q->iovcnt, (uint64_t)q->result, q->len - (uint64_t)q->result);
    return 0;
}

/* Submits the batch and completes each read. */
static int read_batch_run(struct addcow_image *img, struct read_batch *b)
{
    if (b->n == 0)
        return 0;
    ac_submit(b->reqs, b->n);
    for (int i = 0; i < b->n; i++) {
        int r = finish_read(img, &b->reqs[i]);
        if (r < 0)
            return r;
    }
    b->n = 0;
    b->pool_used = 0;
    return 0;
}

AC_HOT int ac_image_readv(struct addcow_image *img, const struct iovec *iov, int iovcnt,
                   uint64_t offset, uint64_t len)
{
    struct ac_req small_reqs[READ_BATCH_SMALL];
    struct iovec small_pool[SMALL_IOV + READ_BATCH_SMALL];
    struct read_batch b = { small_reqs, small_pool, 0, READ_BATCH_SMALL, 0 };
    void *heap = NULL;
    int r = 0;

    /* The common case: every sector of the request is allocated, or every
     * one reads from a raw backing file that covers it all: one read. */
    uint64_t s0 = offset >> AC_SECTOR_SHIFT;
    uint64_t s1 = (offset + len + AC_SECTOR_SIZE - 1) >> AC_SECTOR_SHIFT;
    pthread_mutex_lock(&img->bm_lock);
    int u = ac_bm_uniform(&img->bm, s0, s1);
    pthread_mutex_unlock(&img->bm_lock);
    if (u == 1 || (u == 0 && img->backing.kind == AC_BK_RAW &&
                   offset + len <= img->backing.size)) {
        struct ac_req q = { .file = u == 1 ? img->imgf : img->backing.raw,
                            .op = AC_REQ_READ, .iov = iov, .iovcnt = iovcnt,
                            .offset = offset, .len = len };
        q.result = ac_file_read_full(q.file, iov, iovcnt, offset, len);
        return finish_read(img, &q);
    }

    /* One run of one file, found by the general walk. */
    uint64_t run0;
    int st0 = ac_image_status(img, offset, len, &run0);
    if (st0 < 0)
        return st0;
    if (run0 == len && !(st0 & ADDCOW_STATUS_ZERO) &&
        ((st0 & ADDCOW_STATUS_ALLOCATED) || img->backing.kind == AC_BK_RAW)) {
        struct ac_req q = { .file = (st0 & ADDCOW_STATUS_ALLOCATED) ? img->imgf
                                                                    : img->backing.raw,
                            .op = AC_REQ_READ, .iov = iov, .iovcnt = iovcnt,
                            .offset = offset, .len = len };
        q.result = ac_file_read_full(q.file, iov, iovcnt, offset, len);
        return finish_read(img, &q);
    }
    if (iovcnt > SMALL_IOV) {
        /* Room for every slice: the runs of a batch cover at most
         * iovcnt + cap - 1 iovec pieces. */
        heap = malloc(sizeof(struct iovec) * ((size_t)iovcnt + READ_BATCH_SMALL));
        if (heap == NULL)
            return ac_error(ENOMEM, "reading '%s'", img->path);
        b.pool = heap;
    }
    for (uint64_t pos = 0; pos < len && r == 0;) {
        uint64_t run = run0;
        int st = pos == 0 ? st0 : ac_image_status(img, offset + pos, len - pos, &run);
        if (st < 0) {
            r = st;
            break;
        }
        if (st & ADDCOW_STATUS_ZERO) {
            struct iovec *tmp = b.pool + b.pool_used;
            int n = ac_iov_slice(iov, iovcnt, pos, run, tmp);
            ac_iov_memset0(tmp, n, 0, run);
        } else if (!(st & ADDCOW_STATUS_ALLOCATED) && img->backing.kind == AC_BK_ADDCOW) {
            struct iovec *tmp = b.pool + b.pool_used;
            int n = ac_iov_slice(iov, iovcnt, pos, run, tmp);
            r = ac_image_readv(img->backing.img, tmp, n, offset + pos, run);
        } else {
            if (b.n == b.cap) {
                if (b.cap == READ_BATCH_SMALL) {
                    /* Many runs: move to a large batch (one allocation). */
                    r = read_batch_run(img, &b);
                    if (r < 0)
                        break;
                    void *big = malloc(sizeof(struct ac_req) * READ_BATCH_LARGE +
                                       sizeof(struct iovec) * ((size_t)iovcnt + READ_BATCH_LARGE));
                    if (big == NULL) {
                        r = ac_error(ENOMEM, "reading '%s'", img->path);
                        break;
                    }
                    free(heap);
                    heap = big;
                    b.reqs = big;
                    b.pool = (struct iovec *)(b.reqs + READ_BATCH_LARGE);
                    b.cap = READ_BATCH_LARGE;
                } else if ((r = read_batch_run(img, &b)) < 0) {
                    break;
                }
            }
            struct ac_req *q = &b.reqs[b.n++];
            q->file = (st & ADDCOW_STATUS_ALLOCATED) ? img->imgf : img->backing.raw;
            q->op = AC_REQ_READ;
            q->flags = 0;
            q->iov = b.pool + b.pool_used;
            q->iovcnt = ac_iov_slice(iov, iovcnt, pos, run, b.pool + b.pool_used);
            q->offset = offset + pos;
            q->len = run;
            q->result = 0;
            b.pool_used += q->iovcnt;
        }
        pos += run;
    }
    if (r == 0)
        r = read_batch_run(img, &b);
    free(heap);
    return r;
}

/* ---- writes ------------------------------------------------------------ */

/* 1 if sectors [s0, s1) are all allocated, 0 if not, or a negative errno
 * (their bitmap chunks are read first if need be). */
AC_HOT static int range_allocated(struct addcow_image *img, uint64_t s0, uint64_t s1)
{
    for (;;) {
        pthread_mutex_lock(&img->bm_lock);
        uint64_t u = ac_bm_first_unknown(&img->bm, s0, s1);
        bool all = u >= s1 && ac_bm_all_set(&img->bm, s0, s1 - s0);
        pthread_mutex_unlock(&img->bm_lock);
        if (u >= s1)
            return all;
        int r = ac_image_ensure_known(img, u, s1);
        if (r < 0)
            return r;
    }
}

/* Gives the bitmap the memory that marking [s0, s1) allocated will need,
 * before any data is written, so that the marking cannot fail after. */
static int reserve_bits(struct addcow_image *img, uint64_t s0, uint64_t s1)
{
    pthread_mutex_lock(&img->bm_lock);
    int r = ac_bm_prepare(&img->bm, s0, s1 - s0);
    pthread_mutex_unlock(&img->bm_lock);
    return r < 0 ? ac_error(r, "add-cow file '%s': bitmap memory", img->path) : 0;
}

static void mark_allocated(struct addcow_image *img, uint64_t s0, uint64_t s1)
{
    pthread_mutex_lock(&img->bm_lock);
    ac_bm_set_range(&img->bm, s0, s1 - s0);
    pthread_mutex_unlock(&img->bm_lock);
}

AC_HOT static int write_image_file(struct addcow_image *img, const struct iovec *iov, int iovcnt,
                            uint64_t offset, uint64_t len)
{
    int r = ac_file_write_full(img->imgf, iov, iovcnt, offset, len);
    if (r < 0)
        return ac_error(r, "image file '%s': writing %" PRIu64 " bytes at %" PRIu64,
                        img->image_path, len, offset);
    return 0;
}

/* Writes with the sectors [s0, s1) locked, some of them not yet allocated:
 * the untouched bytes of a partial, unallocated first or last sector are
 * copied from what the sector reads as now (backing data or zeros), so the
 * image file gets whole sectors, then the bits are set. */
static int write_allocating(struct addcow_image *img, const struct iovec *iov, int iovcnt,
                            uint64_t offset, uint64_t len, uint64_t s0, uint64_t s1)
{
    unsigned char cow[2 * AC_SECTOR_SIZE] __attribute__((aligned(AC_SECTOR_SIZE)));
    uint64_t end = offset + len;
    uint64_t head = offset - (s0 << AC_SECTOR_SHIFT);           /* bytes before offset */
    uint64_t tail = (s1 << AC_SECTOR_SHIFT) - end;              /* bytes after end */
    struct iovec small[SMALL_IOV + 2], *v = small;
    int r = 0, n = 0;

    pthread_mutex_lock(&img->bm_lock);
    bool head_cow = head != 0 && !ac_bm_test(&img->bm, s0);
    bool tail_cow = tail != 0 && !ac_bm_test(&img->bm, s1 - 1);
    pthread_mutex_unlock(&img->bm_lock);

    if ((r = reserve_bits(img, s0, s1)) < 0)
        return r;
    if (iovcnt > SMALL_IOV && (v = malloc(sizeof(*v) * ((size_t)iovcnt + 2))) == NULL)
        return ac_error(ENOMEM, "writing '%s'", img->path);
    /* The first and last sectors side by side: one read for both . */
    bool pair = head_cow && tail_cow && s1 - 1 == s0 + 1;
    if (head_cow) {
        struct iovec s = { cow, pair ? 2 * AC_SECTOR_SIZE : AC_SECTOR_SIZE };
        r = ac_image_readv(img, &s, 1, s0 << AC_SECTOR_SHIFT, s.iov_len);
        v[n].iov_base = cow;
        v[n++].iov_len = (size_t)head;
    }
    unsigned char *tail_src = cow + AC_SECTOR_SIZE;
    if (r == 0 && tail_cow && !pair) {
        if (head_cow && s1 - 1 == s0) {
            tail_src = cow;
        } else {
            struct iovec s = { cow + AC_SECTOR_SIZE, AC_SECTOR_SIZE };
            r = ac_image_readv(img, &s, 1, (s1 - 1) << AC_SECTOR_SHIFT, AC_SECTOR_SIZE);
        }
    }
    n += ac_iov_slice(iov, iovcnt, 0, len, v + n);
    if (tail_cow) {
        v[n].iov_base = tail_src + AC_SECTOR_SIZE - tail;
        v[n++].iov_len = (size_t)tail;
    }
    if (r == 0) {
        uint64_t wstart = head_cow ? s0 << AC_SECTOR_SHIFT : offset;
        uint64_t wlen = len + (head_cow ? head : 0) + (tail_cow ? tail : 0);
        r = write_image_file(img, v, n, wstart, wlen);
    }
    if (r == 0)
        mark_allocated(img, s0, s1);
    if (v != small)
        free(v);
    return r;
}

AC_HOT int ac_image_writev(struct addcow_image *img, const struct iovec *iov, int iovcnt,
                    uint64_t offset, uint64_t len)
{
    uint64_t s0 = offset >> AC_SECTOR_SHIFT;
    uint64_t s1 = (offset + len + AC_SECTOR_SIZE - 1) >> AC_SECTOR_SHIFT;
    int r = range_allocated(img, s0, s1);

    if (r < 0) {
        return r;
    } else if (r == 1) {
        /* Bits are only ever set while the handle is shared, so an allocated
         * range needs no lock: overwrite in place. */
        r = write_image_file(img, iov, iovcnt, offset, len);
    } else {
        struct ac_range lk;
        ac_rl_lock(&img->rl, &lk, s0, s1);
        r = write_allocating(img, iov, iovcnt, offset, len, s0, s1);
        ac_rl_unlock(&img->rl, &lk);
    }
    if (r == 0 && img->cache == AC_CACHE_WRITETHROUGH)
        r = ac_image_flush(img);
    return r;
}

/* ---- write_zeroes ------------------------------------------------------ */

/* Writes zeros over [offset, offset + len) through the ordinary write path,
 * a megabyte at a time. */
static int write_zero_bytes(struct addcow_image *img, uint64_t offset, uint64_t len)
{
    struct iovec v[ZERO_IOVS];
    for (int i = 0; i < ZERO_IOVS; i++) {
        v[i].iov_base = (void *)zero_buf;
        v[i].iov_len = ZERO_CHUNK;
    }
    while (len > 0) {
        uint64_t n = len < (uint64_t)ZERO_CHUNK * ZERO_IOVS ? len
                                                            : (uint64_t)ZERO_CHUNK * ZERO_IOVS;
        int r = ac_image_writev(img, v, ZERO_IOVS, offset, n);
        if (r < 0)
            return r;
        offset += n;
        len -= n;
    }
    return 0;
}

/* Frees the image file's blocks of whole sectors [a, b) and marks them
 * allocated (a hole reads as zeros).  Falls back to writing zeros when the
 * file cannot punch holes. */
static int punch_sectors(struct addcow_image *img, uint64_t a, uint64_t b)
{
    struct ac_range lk;
    uint64_t off = a << AC_SECTOR_SHIFT, len = (b - a) << AC_SECTOR_SHIFT;

    int r = reserve_bits(img, a, b);
    if (r < 0)
        return r;
    ac_rl_lock(&img->rl, &lk, a, b);
    r = ac_file_punch_hole(img->imgf, off, len);
    if (r == 0)
        mark_allocated(img, a, b);
    ac_rl_unlock(&img->rl, &lk);
    if (r == -EOPNOTSUPP || r == -ENOTSUP)
        return write_zero_bytes(img, off, len);
    if (r < 0)
        return ac_error(r, "image file '%s': punching a hole of %" PRIu64 " bytes at %" PRIu64,
                        img->image_path, len, off);
    return 0;
}

int ac_image_write_zeroes(struct addcow_image *img, uint64_t offset, uint64_t len,
                          unsigned flags)
{
    int r = 0;
    for (uint64_t pos = offset, end = offset + len; pos < end && r == 0;) {
        uint64_t run;
        int st = ac_image_status(img, pos, end - pos, &run);
        if (st < 0) {
            r = st;
            break;
        }
        /* A run can end inside a sector only at the backing file's end, where
         * backing data gives way to zeros.  The zeros of that sector go out
         * in one write (the bytes after the backing end read as zeros
         * already): in two, a write to the sector from another thread could
         * land between them and be left half zeroed, which no serial order
         * of the two calls gives. */
        uint64_t cut = (pos + run) & (AC_SECTOR_SIZE - 1);
        if (cut != 0 && pos + run < end && !(st & ADDCOW_STATUS_ZERO)) {
            uint64_t sector_end = pos + run + AC_SECTOR_SIZE - cut;
            run = (sector_end < end ? sector_end : end) - pos;
        }
        /* Unallocated with no backing data there: already reads as zeros. */
        if (!(st & ADDCOW_STATUS_ZERO)) {
            uint64_t a = (pos + AC_SECTOR_SIZE - 1) >> AC_SECTOR_SHIFT;
            uint64_t b = (pos + run) >> AC_SECTOR_SHIFT;
            if ((flags & ADDCOW_ZEROES_MAY_UNMAP) && a < b) {
                r = write_zero_bytes(img, pos, (a << AC_SECTOR_SHIFT) - pos);
                if (r == 0)
                    r = punch_sectors(img, a, b);
                if (r == 0)
                    r = write_zero_bytes(img, b << AC_SECTOR_SHIFT,
                                         pos + run - (b << AC_SECTOR_SHIFT));
            } else {
                r = write_zero_bytes(img, pos, run);
            }
        }
        pos += run;
    }
    if (r == 0 && img->cache == AC_CACHE_WRITETHROUGH)
        r = ac_image_flush(img);
    return r;
}

/* ---- flush ------------------------------------------------------------- */

struct dirty_run {
    uint64_t block, nblocks;
};

/* Takes up to FLUSH_BATCH_BLOCKS dirty blocks from `*from` on: copies their
 * bytes into *buf and clears their dirty marks.  Returns the runs taken. */
static int take_dirty(struct addcow_image *img, uint64_t *from, struct dirty_run *runs,
                      unsigned char **buf, bool *more)
{
    int nruns = 0;
    uint64_t total = 0;

    *buf = NULL;
    pthread_mutex_lock(&img->bm_lock);
    uint64_t b, nb;
    while (nruns < FLUSH_MAX_RUNS && total < FLUSH_BATCH_BLOCKS &&
           ac_bm_next_dirty(&img->bm, *from, FLUSH_BATCH_BLOCKS - total, &b, &nb)) {
        *from = b + nb;
        struct dirty_run *prev = nruns > 0 ? &runs[nruns - 1] : NULL;
        uint64_t prev_end = prev != NULL ? prev->block + prev->nblocks : 0;
        /* Dirty blocks a few clean blocks apart, in one chunk (so in memory),
         * go out as one write: the clean ones between are rewritten with the
         * bytes they already hold on disk.  One system call instead of many. */
        if (prev != NULL && b - prev_end <= FLUSH_MERGE_GAP &&
            prev->block / CHUNK_BLOCKS == (b + nb - 1) / CHUNK_BLOCKS &&
            total + (b - prev_end) + nb <= FLUSH_BATCH_BLOCKS) {
            total += b - prev_end + nb;
            prev->nblocks = b + nb - prev->block;
            continue;
        }
        runs[nruns].block = b;
        runs[nruns].nblocks = nb;
        total += nb;
        nruns++;
    }
    *more = ac_bm_next_dirty(&img->bm, *from, 1, &b, &nb);
    if (nruns > 0 && (*buf = malloc(total * AC_BM_DIRTY_BLOCK)) == NULL) {
        pthread_mutex_unlock(&img->bm_lock);
        return ac_error(ENOMEM, "add-cow file '%s': flushing the bitmap", img->path);
    }
    unsigned char *p = *buf;
    for (int i = 0; i < nruns; i++) {
        size_t n = (size_t)(runs[i].nblocks * AC_BM_DIRTY_BLOCK);
        ac_bm_store_bytes(&img->bm, runs[i].block * AC_BM_DIRTY_BLOCK, p, n);
        ac_bm_clear_dirty_blocks(&img->bm, runs[i].block, runs[i].nblocks);
        ac_bm_note_written(&img->bm, runs[i].block, runs[i].nblocks);
        p += n;
    }
    pthread_mutex_unlock(&img->bm_lock);
    return nruns;
}

/* The flush, as linked batches: each batch is "image file durable, then
 * these bitmap bytes", and the last one ends with "add-cow file durable".
 * A batch's bytes are copied (and their dirty marks cleared) before its
 * image flush is issued, so every bit it writes covers data already
 * written; the links keep the order without a round trip per step. */
static int flush_locked(struct addcow_image *img)
{
    uint64_t from = 0;

    for (;;) {
        struct dirty_run runs[FLUSH_MAX_RUNS];
        struct ac_req reqs[FLUSH_MAX_RUNS + 2];
        struct iovec vecs[FLUSH_MAX_RUNS];
        unsigned char *buf;
        int n = 0;

        bool more;
        int nruns = take_dirty(img, &from, runs, &buf, &more);
        if (nruns < 0)
            return nruns;
        bool last = !more;
        reqs[n++] = (struct ac_req){ .file = img->imgf, .op = AC_REQ_FLUSH,
                                     .flags = nruns ? AC_REQ_LINK : 0 };
        uint64_t nbytes = ac_bm_nbytes(&img->bm);
        unsigned char *p = buf;
        for (int i = 0; i < nruns; i++) {
            uint64_t boff = runs[i].block * AC_BM_DIRTY_BLOCK;
            uint64_t len = runs[i].nblocks * AC_BM_DIRTY_BLOCK;
            vecs[i].iov_base = p;
            vecs[i].iov_len = (size_t)(boff + len > nbytes ? nbytes - boff : len);
            reqs[n++] = (struct ac_req){ .file = img->acf, .op = AC_REQ_WRITE,
                                         .flags = AC_REQ_LINK, .iov = &vecs[i], .iovcnt = 1,
                                         .offset = AC_HEADER_SIZE + boff,
                                         .len = vecs[i].iov_len };
            p += len;
        }
        if (nruns > 0)
            img->acf_unsynced = true;
        if (last && img->acf_unsynced)
            reqs[n++] = (struct ac_req){ .file = img->acf, .op = AC_REQ_FLUSH };
        else
            reqs[n - 1].flags &= ~AC_REQ_LINK;
        int r = ac_submit(reqs, n);
        free(buf);
        if (r < 0) {
            int i = 0;
            while (reqs[i].result >= 0)
                i++;
            struct ac_req *q = &reqs[i];
            pthread_mutex_lock(&img->bm_lock);
            if (q->op == AC_REQ_FLUSH && q->file == img->acf) {
                /* What reached the disk is unknown: write again every block
                 * written since the add-cow file was last durable. */
                ac_bm_unsynced_done(&img->bm, false);
            } else {
                for (int k = 0; k < nruns; k++)
                    ac_bm_mark_dirty_blocks(&img->bm, runs[k].block, runs[k].nblocks);
            }
            pthread_mutex_unlock(&img->bm_lock);
            if (q->file == img->imgf)
                return ac_error(r, "image file '%s': flush", img->image_path);
            if (q->op == AC_REQ_FLUSH)
                return ac_error(r, "add-cow file '%s': flush", img->path);
            return ac_error(r, "add-cow file '%s': writing %" PRIu64 " bitmap bytes at %"
                            PRIu64, img->path, q->len, q->offset);
        }
        if (last) {
            if (img->acf_unsynced) {    /* its flush ended this batch */
                pthread_mutex_lock(&img->bm_lock);
                ac_bm_unsynced_done(&img->bm, true);
                pthread_mutex_unlock(&img->bm_lock);
            }
            img->acf_unsynced = false;
            return 0;
        }
    }
}

int ac_image_flush(struct addcow_image *img)
{
    if (!img->writable)
        return 0;
    pthread_mutex_lock(&img->flush_lock);
    int r = flush_locked(img);
    pthread_mutex_unlock(&img->flush_lock);
    return r;
}

/* ---- truncate ---------------------------------------------------------- */

/* Writes the header's size field and makes it durable.  Once the write
 * itself has succeeded the file may hold the new size, even if the flush
 * then fails: the handle takes the new size at that point, so that it never
 * disagrees with what a later flush or close makes durable. */
static int write_size_field(struct addcow_image *img, uint64_t size)
{
    unsigned char be[8];
    ac_put_be64(be, size);
    int r = ac_file_pwrite(img->acf, be, sizeof(be), AC_OFF_SIZE);
    if (r < 0)
        return ac_error(r, "add-cow file '%s': writing the new size", img->path);
    img->size = size;
    r = ac_file_flush(img->acf);
    if (r < 0)
        return ac_error(r, "add-cow file '%s': flush after writing the new size", img->path);
    return 0;
}

static int set_file_length(struct ac_file *f, uint64_t len, const char *what,
                           const char *name)
{
    int r = ac_file_truncate(f, len);
    if (r < 0)
        return ac_error(r, "%s '%s': setting its length to %" PRIu64, what, name, len);
    return 0;
}

/* A grow that failed before its size was written: the bitmap goes back
 * to the old size (its bit count matches the size again), so that a later
 * flush writes no bytes of a disk this image never had.  Shrinking cannot
 * fail.  Returns r. */
static int grow_undo(struct addcow_image *img, uint64_t old, int r)
{
    pthread_mutex_lock(&img->bm_lock);
    if (img->size == old && img->bm.nbits != old >> AC_SECTOR_SHIFT)
        ac_bm_resize(&img->bm, old >> AC_SECTOR_SHIFT);
    pthread_mutex_unlock(&img->bm_lock);
    return r;
}

/* Growing: the image file loses anything past the old end (a shrink that
 * was cut short may have left data there) and is extended with zeros; the
 * new sectors that the backing file covers are marked allocated, so they
 * read those zeros, not the backing data; the bitmap is written, and only
 * then the size: a crash leaves the old size or the new one. */
static int grow(struct addcow_image *img, uint64_t size)
{
    uint64_t old = img->size;
    int64_t ilen = img->imgf->ops->size(img->imgf);
    int r;

    if (ilen < 0)
        return ac_error((int)ilen, "image file '%s': cannot get size", img->image_path);
    /* The chunk holding the old last bit changes: it must be in memory. */
    if (old > 0 && (r = ac_image_ensure_known(img, (old >> AC_SECTOR_SHIFT) - 1,
                                              old >> AC_SECTOR_SHIFT)) < 0)
        return r;
    if ((uint64_t)ilen > old &&
        (r = set_file_length(img->imgf, old, "image file", img->image_path)) < 0)
        return r;
    if ((r = set_file_length(img->imgf, size, "image file", img->image_path)) < 0)
        return r;
    r = ac_file_flush(img->imgf);
    if (r < 0)
        return ac_error(r, "image file '%s': flush", img->image_path);

    uint64_t s_old = old >> AC_SECTOR_SHIFT, s_new = size >> AC_SECTOR_SHIFT;
    uint64_t s_back = (img->backing.size + AC_SECTOR_SIZE - 1) >> AC_SECTOR_SHIFT;
    pthread_mutex_lock(&img->bm_lock);
    r = ac_bm_resize(&img->bm, s_new);
    if (r == 0 && s_back > s_old) {
        uint64_t n = (s_back < s_new ? s_back : s_new) - s_old;
        r = ac_bm_prepare(&img->bm, s_old, n);
        if (r == 0)
            ac_bm_set_range(&img->bm, s_old, n);
    }
    pthread_mutex_unlock(&img->bm_lock);
    if (r < 0)
        return grow_undo(img, old, ac_error(r, "add-cow file '%s': growing the bitmap",
                                            img->path));

    /* The new bitmap bytes are zeros from the file system: cut off what
     * an interrupted shrink may have left past the old bitmap, then extend
     * (sparse).  Only set bits and the old tail byte are written. */
    uint64_t old_len = ac_file_length_for_size(old);
    int64_t alen = img->acf->ops->size(img->acf);
    if (alen < 0)
        return grow_undo(img, old, ac_error((int)alen, "add-cow file '%s': cannot get size",
                                            img->path));
    if ((uint64_t)alen > old_len)
        r = set_file_length(img->acf, old_len, "add-cow file", img->path);
    if (r == 0)
        r = set_file_length(img->acf, ac_file_length_for_size(size), "add-cow file", img->path);
    if (r == 0)
        r = flush_locked(img);
    if (r == 0)
        r = write_size_field(img, size);
    return r < 0 ? grow_undo(img, old, r) : r;
}

/* Shrinking: the size first (the bits past it are then ignored), then the
 * bitmap's last byte and the files' lengths. */
static int shrink(struct addcow_image *img, uint64_t size)
{
    uint64_t s_new = size >> AC_SECTOR_SHIFT;
    /* The chunk holding the new last bit changes: it must be in memory. */
    int r = s_new > 0 ? ac_image_ensure_known(img, s_new - 1, s_new) : 0;
    if (r < 0)
        return r;
    r = write_size_field(img, size);
    if (img->size != size)
        return r;               /* the size was not written: nothing changed */
    pthread_mutex_lock(&img->bm_lock);
    int rr = ac_bm_resize(&img->bm, size >> AC_SECTOR_SHIFT);
    pthread_mutex_unlock(&img->bm_lock);
    if (rr < 0)
        return ac_error(rr, "add-cow file '%s': shrinking the bitmap", img->path);
    if (r < 0)
        return r;
    r = flush_locked(img);
    if (r == 0)
        r = set_file_length(img->acf, ac_file_length_for_size(size), "add-cow file", img->path);
    int64_t ilen = img->imgf->ops->size(img->imgf);
    if (r == 0 && ilen > 0 && (uint64_t)ilen > size)
        r = set_file_length(img->imgf, size, "image file", img->image_path);
    if (r == 0 && (r = ac_file_flush(img->acf)) < 0)
        r = ac_error(r, "add-cow file '%s': flush", img->path);
    if (r == 0 && (r = ac_file_flush(img->imgf)) < 0)
        r = ac_error(r, "image file '%s': flush", img->image_path);
    return r;
}

int ac_image_truncate(struct addcow_image *img, uint64_t size)
{
    pthread_mutex_lock(&img->flush_lock);
    int r = flush_locked(img);
    if (r == 0 && size > img->size)
        r = grow(img, size);
    else if (r == 0 && size < img->size)
        r = shrink(img, size);
    pthread_mutex_unlock(&img->flush_lock);
    return r;
}
