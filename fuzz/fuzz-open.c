/*
 * fuzz-open.c: addcow_open on arbitrary add-cow file bytes, then a short
 * script of calls on the image, each checked.
 *
 * Everything happens in a sparse in-memory file system of this file's own
 * ("vfs", behind a struct ac_backend_ops plugged in with
 * ac_options_set_backend_ops): no real file is ever touched, whatever path
 * a header names, and files may be huge and sparse (up to 16 TiB, like
 * ext4) at no cost, so multi-chunk bitmaps and truncates to large sizes are
 * reached.  It can also fail its n-th operation with a chosen errno (the
 * script arms it), to walk the error paths.
 *
 * The folder /vm holds:
 *   disk.add-cow  the input's bytes, then (optionally) a hole
 *   disk.raw      a pattern, of a length the input gives
 *   base.raw      another pattern, of a length the input gives (any bytes)
 *   mid.add-cow   (optional) a valid add-cow image over base.raw, image
 *                 file mid.raw, bits from the input: a chain
 *   mid.raw       a third pattern
 *   dir           (optional) a folder
 * The header in the input names whichever of them it likes (or anything
 * else), relative or absolute.
 *
 * Checks:
 *  - open succeeds exactly when a reference reader written here from
 *    FORMAT.md and API.md accepts the chain (valid header, bitmap not
 *    truncated, files there, no file twice, paths=confined and protocol
 *    rules); a header fault gives its errno (EINVAL, ENOTSUP, EFBIG);
 *  - after a successful open, a model of the virtual disk (content as
 *    extents over what the reference reader reads, allocation as sector
 *    intervals, the backing file's size) follows the script; every read is
 *    compared byte for byte, every block_status run is the exact run of the
 *    model, get_allocated_bytes is the model's count;
 *  - always: every failing call returns a negative errno and sets a
 *    message that starts with its own name; reads return count or stop
 *    short exactly at the end; block_status runs are positive and cover
 *    the range; after close no file handle is left open (and LeakSanitizer
 *    sees every allocation freed).
 * Once the vfs has failed an operation on purpose, the model is dropped
 * (only the always-checks remain) until the next close and reopen, which
 * must succeed; the reference reader then reads the files as they are.
 *
 * Input layout (all integers little-endian; short inputs read as zeros):
 *   0  u8   open flags: bit0 RDWR, bit1 paths=confined, bits2-3
 *           backing-format (auto, raw, add-cow, auto), bits4-5 cache
 *           (writeback, writethrough, none, writeback), bit6 locking=off
 *   1  u8   hole after the given bytes: (v & 0x7f) * 4 KiB, times 4096 if
 *           bit7 (up to 2 GiB of add-cow file: 8 TiB of disk)
 *   2  u16  n: add-cow file bytes given
 *   4  u16  disk.raw length / 64
 *   6  u16  base.raw length / 64
 *   8  u8   bits0-5: base.raw length % 64; bit6: mid.add-cow exists;
 *           bit7: /vm/dir exists
 *   9  u16  mid.add-cow virtual size / 512
 *   11 u8   mid.add-cow bitmap seed
 *   12 n bytes of add-cow file, then the script: see run_script().
 */
#include "config.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <sys/uio.h>

#include "addcow.h"
#include "backend.h"
#include "codec.h"
#include "fuzz.h"
#include "options.h"

#if defined(__clang__) && __clang_major__ >= 13
#define NOCOV __attribute__((no_sanitize("coverage")))
#else
#define NOCOV
#endif

#define PG 4096u
#define MAX_FILE (UINT64_C(1) << 44)       /* like ext4: 16 TiB */
#define MAX_PAGES 16384u                    /* 64 MiB of stored pages in all */
/* A read or write of the script: under ASan's large-allocation size, so
 * that its buffers do not cost a mmap each. */
#define MAX_IO (120u * 1024)
/* write_zeroes without MAY_UNMAP: at most this many bytes (see op_write_zeroes) */
#define ZERO_WRITE_MAX (UINT64_C(64) << 20)
#define MAX_OPS 32
#define DIR_PATH "/vm"
#define TOP_PATH "/vm/disk.add-cow"

/* ---- patterns ------------------------------------------------------------- */

/* Byte off of pattern seed: byte off % 8 of a word made from off / 8. */
NOCOV static inline uint64_t pat_word(uint32_t seed, uint64_t w)
{
    uint64_t x = w * UINT64_C(0x9E3779B97F4A7C15) + seed * UINT64_C(0x632BE59BD9B4E019);
    x ^= x >> 31;
    return x * UINT64_C(0xBF58476D1CE4E5B9);
}

NOCOV static inline uint8_t pat_byte(uint32_t seed, uint64_t off)
{
    return (uint8_t)(pat_word(seed, off >> 3) >> (8 * (off & 7)));
}

NOCOV static void pat_fill(uint8_t *dst, uint32_t seed, uint64_t off, size_t len)
{
    while (len > 0 && off % 8) {
        *dst++ = pat_byte(seed, off++);
        len--;
    }
    for (; len >= 8; len -= 8, off += 8, dst += 8) {
        uint64_t x = pat_word(seed, off >> 3);
        for (int k = 0; k < 8; k++)
            dst[k] = (uint8_t)(x >> (8 * k));
    }
    while (len > 0) {
        *dst++ = pat_byte(seed, off++);
        len--;
    }
}

/* ---- vfs: a sparse in-memory file system ------------------------------------ */

struct vpage {
    uint64_t idx;
    uint8_t *data;
};

struct vnode {
    char *name;
    bool dir;
    bool linked;
    unsigned nopen;
    uint64_t id;
    uint64_t len;
    uint32_t pat;               /* 0: none */
    uint64_t pat_limit;         /* the pattern shows below this */
    struct vpage *pg;           /* sorted by idx */
    size_t npg, cappg;
};

struct vhandle {
    struct ac_file base;        /* first */
    struct vfs *fs;
    struct vnode *node;
    unsigned flags;
    int lock;
};

struct vfs {
    struct ac_backend_ops ops;  /* first: ops leads back here */
    struct vnode **nodes;
    size_t nnodes, capnodes;
    struct vhandle **handles;
    size_t nhandles, caphandles;
    uint64_t next_id;
    size_t pages;
    /* fault injection: operation number fault_at (and every later one if
     * sticky) fails with fault_err */
    uint64_t opno, fault_at;
    bool fault_sticky;
    int fault_err;
    uint64_t hits;
    /* the end of the furthest write to the top add-cow file since reset */
    uint64_t top_write_end;
};

static struct vfs *vfs_of(const struct ac_backend_ops *ops)
{
    return (struct vfs *)(void *)(uintptr_t)ops;
}

static struct vhandle *vh(struct ac_file *f)
{
    return (struct vhandle *)(void *)f;
}

static int vfs_account(struct vfs *fs)
{
    fs->opno++;
    if (fs->fault_at != 0 && (fs->opno == fs->fault_at ||
                              (fs->fault_sticky && fs->opno > fs->fault_at))) {
        fs->hits++;
        return -fs->fault_err;
    }
    return 0;
}

static struct vnode *vfs_find(struct vfs *fs, const char *name)
{
    for (size_t i = 0; i < fs->nnodes; i++)
        if (fs->nodes[i]->linked && strcmp(fs->nodes[i]->name, name) == 0)
            return fs->nodes[i];
    return NULL;
}

static void node_free(struct vnode *n)
{
    for (size_t i = 0; i < n->npg; i++)
        free(n->pg[i].data);
    free(n->pg);
    free(n->name);
    free(n);
}

/* Frees a node nothing holds any more. */
static void vfs_release(struct vfs *fs, struct vnode *n)
{
    if (n->linked || n->nopen > 0)
        return;
    for (size_t i = 0; i < fs->nnodes; i++) {
        if (fs->nodes[i] == n) {
            fs->nodes[i] = fs->nodes[--fs->nnodes];
            break;
        }
    }
    fs->pages -= n->npg;
    node_free(n);
}

static struct vnode *vfs_add(struct vfs *fs, const char *name, bool dir)
{
    if (fs->nnodes == fs->capnodes) {
        size_t cap = fs->capnodes ? fs->capnodes * 2 : 8;
        struct vnode **nn = realloc(fs->nodes, cap * sizeof(*nn));
        if (nn == NULL)
            return NULL;
        fs->nodes = nn;
        fs->capnodes = cap;
    }
    struct vnode *n = calloc(1, sizeof(*n));
    if (n == NULL || (n->name = strdup(name)) == NULL) {
        free(n);
        return NULL;
    }
    n->dir = dir;
    n->linked = true;
    n->id = fs->next_id++;
    fs->nodes[fs->nnodes++] = n;
    return n;
}

/* Index in n->pg of the first page with idx >= p. */
NOCOV static size_t page_lb(const struct vnode *n, uint64_t p)
{
    size_t lo = 0, hi = n->npg;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (n->pg[mid].idx < p)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* What page p reads as when it is not stored. */
NOCOV static void page_fill(const struct vnode *n, uint64_t p, uint8_t *dst)
{
    uint64_t base = p * PG;
    if (n->pat == 0 || base >= n->pat_limit) {
        memset(dst, 0, PG);
        return;
    }
    pat_fill(dst, n->pat, base, PG);
    if (base + PG > n->pat_limit)
        memset(dst + (n->pat_limit - base), 0, (size_t)(base + PG - n->pat_limit));
}

/* Reads [off, off + len) of a node, zeros past its length. */
NOCOV static void node_read(const struct vnode *n, uint64_t off, uint8_t *buf, size_t len)
{
    uint8_t tmp[PG];
    size_t k = page_lb(n, off / PG);
    while (len > 0) {
        uint64_t p = off / PG;
        size_t in = (size_t)(off % PG);
        size_t take = PG - in < len ? PG - in : len;
        while (k < n->npg && n->pg[k].idx < p)
            k++;
        if (off >= n->len) {
            memset(buf, 0, take);
        } else if (k < n->npg && n->pg[k].idx == p) {
            memcpy(buf, n->pg[k].data + in, take);
        } else if (n->pat && off < n->pat_limit) {
            page_fill(n, p, tmp);
            memcpy(buf, tmp + in, take);
        } else {
            memset(buf, 0, take);
        }
        /* bytes of this piece at or past the length are zeros */
        if (off + take > n->len && off < n->len)
            memset(buf + (n->len - off), 0, (size_t)(off + take - n->len));
        buf += take;
        off += take;
        len -= take;
    }
}

NOCOV static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

/* The page p, stored (made from what it reads as if need be); NULL when
 * the page budget is spent. */
static uint8_t *page_get(struct vfs *fs, struct vnode *n, uint64_t p, size_t *at)
{
    size_t k = page_lb(n, p);
    if (k < n->npg && n->pg[k].idx == p) {
        *at = k;
        return n->pg[k].data;
    }
    if (fs->pages >= MAX_PAGES) {
        fs->hits++;             /* the model cannot follow a failed write */
        return NULL;
    }
    if (n->npg == n->cappg) {
        size_t cap = n->cappg ? n->cappg * 2 : 16;
        struct vpage *np = realloc(n->pg, cap * sizeof(*np));
        if (np == NULL)
            return NULL;
        n->pg = np;
        n->cappg = cap;
    }
    uint8_t *d = malloc(PG);
    if (d == NULL)
        return NULL;
    page_fill(n, p, d);
    /* bytes past the length read as zeros */
    if (p * PG + PG > n->len) {
        uint64_t keep = n->len > p * PG ? n->len - p * PG : 0;
        memset(d + keep, 0, PG - (size_t)keep);
    }
    memmove(n->pg + k + 1, n->pg + k, (n->npg - k) * sizeof(*n->pg));
    n->pg[k].idx = p;
    n->pg[k].data = d;
    n->npg++;
    fs->pages++;
    *at = k;
    return d;
}

static void page_drop(struct vfs *fs, struct vnode *n, size_t k)
{
    free(n->pg[k].data);
    memmove(n->pg + k, n->pg + k + 1, (n->npg - k - 1) * sizeof(*n->pg));
    n->npg--;
    fs->pages--;
}

/* A stored page that reads as it would unstored (all zero, past the
 * pattern) is dropped: zeros written make holes, as a deduplicating file
 * system would, which keeps the budget for real data. */
static void page_maybe_drop(struct vfs *fs, struct vnode *n, size_t k)
{
    uint64_t base = n->pg[k].idx * PG;
    if ((n->pat == 0 || base >= n->pat_limit) && all_zero(n->pg[k].data, PG))
        page_drop(fs, n, k);
}

/* Writes bytes (or zeros: src NULL) into [off, off + len) of a node,
 * growing it.  -ENOSPC when the page budget is spent. */
static int node_write(struct vfs *fs, struct vnode *n, uint64_t off, const uint8_t *src,
                      uint64_t len)
{
    if (off + len > n->len)
        n->len = off + len;
    while (len > 0) {
        uint64_t p = off / PG;
        size_t in = (size_t)(off % PG);
        size_t take = PG - in < len ? PG - in : (size_t)len;
        size_t k;
        /* Zeros over a page past the pattern that is not stored: nothing. */
        if (src == NULL && (n->pat == 0 || p * PG >= n->pat_limit)) {
            size_t kk = page_lb(n, p);
            if (kk >= n->npg || n->pg[kk].idx != p) {
                off += take;
                len -= take;
                continue;
            }
        }
        uint8_t *d = page_get(fs, n, p, &k);
        if (d == NULL)
            return -ENOSPC;
        if (src != NULL)
            memcpy(d + in, src, take);
        else
            memset(d + in, 0, take);
        page_maybe_drop(fs, n, k);
        if (src != NULL)
            src += take;
        off += take;
        len -= take;
    }
    return 0;
}

/* Zeros [off, off + len) inside the length; past the pattern only stored
 * pages are visited, so a huge range costs nothing. */
static int node_zero(struct vfs *fs, struct vnode *n, uint64_t off, uint64_t len)
{
    uint64_t end = off + len > n->len ? n->len : off + len;
    if (off >= end)
        return 0;
    uint64_t pat_end = n->pat ? (n->pat_limit < end ? n->pat_limit : end) : off;
    if (off < pat_end) {
        /* (this part is at most the pattern's few MiB) */
        uint64_t saved = n->len;
        int r = node_write(fs, n, off, NULL, pat_end - off);
        n->len = saved;
        if (r < 0)
            return r;
        off = pat_end;
    }
    /* Stored pages in [off, end): zero their part, drop them if all zero. */
    size_t k = page_lb(n, off / PG);
    while (k < n->npg && n->pg[k].idx * PG < end) {
        uint64_t base = n->pg[k].idx * PG;
        uint64_t a = off > base ? off - base : 0;
        uint64_t b = end < base + PG ? end - base : PG;
        memset(n->pg[k].data + a, 0, (size_t)(b - a));
        size_t before = n->npg;
        page_maybe_drop(fs, n, k);
        if (n->npg == before)
            k++;
    }
    return 0;
}

static int node_truncate(struct vfs *fs, struct vnode *n, uint64_t len)
{
    if (len < n->len) {
        size_t k = page_lb(n, len / PG);
        if (k < n->npg && n->pg[k].idx == len / PG && len % PG) {
            memset(n->pg[k].data + len % PG, 0, PG - len % PG);
            k++;
        }
        while (n->npg > k)
            page_drop(fs, n, n->npg - 1);
        if (n->pat_limit > len)
            n->pat_limit = len;
    }
    n->len = len;
    return 0;
}

/* ---- the backend ops -------------------------------------------------------- */

static int v_open(const struct ac_backend_ops *ops, const char *path, unsigned flags,
                  struct ac_file **out)
{
    struct vfs *fs = vfs_of(ops);
    int r = vfs_account(fs);
    if (r < 0)
        return r;
    struct vnode *n = vfs_find(fs, path);
    if (n != NULL && (flags & AC_FILE_CREATE) && (flags & AC_FILE_EXCL))
        return -EEXIST;
    if (n != NULL && n->dir)
        return -EISDIR;
    if (n == NULL && !(flags & AC_FILE_CREATE))
        return -ENOENT;
    if (fs->nhandles == fs->caphandles) {
        size_t cap = fs->caphandles ? fs->caphandles * 2 : 8;
        struct vhandle **nh = realloc(fs->handles, cap * sizeof(*nh));
        if (nh == NULL)
            return -ENOMEM;
        fs->handles = nh;
        fs->caphandles = cap;
    }
    struct vhandle *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return -ENOMEM;
    if (n == NULL && (n = vfs_add(fs, path, false)) == NULL) {
        free(h);
        return -ENOMEM;
    }
    h->base.ops = ops;
    h->fs = fs;
    h->node = n;
    h->flags = flags;
    n->nopen++;
    fs->handles[fs->nhandles++] = h;
    *out = &h->base;
    return 0;
}

static void v_close(struct ac_file *f)
{
    struct vhandle *h = vh(f);
    struct vfs *fs = h->fs;
    for (size_t i = 0; i < fs->nhandles; i++) {
        if (fs->handles[i] == h) {
            fs->handles[i] = fs->handles[--fs->nhandles];
            break;
        }
    }
    h->node->nopen--;
    vfs_release(fs, h->node);
    free(h);
}

static ssize_t v_preadv(struct ac_file *f, const struct iovec *iov, int iovcnt,
                        uint64_t offset)
{
    struct vhandle *h = vh(f);
    int r = vfs_account(h->fs);
    if (r < 0)
        return r;
    struct vnode *n = h->node;
    if (offset >= n->len)
        return 0;
    uint64_t done = 0;
    for (int i = 0; i < iovcnt && offset + done < n->len; i++) {
        uint64_t k = iov[i].iov_len;
        if (k > n->len - offset - done)
            k = n->len - offset - done;
        node_read(n, offset + done, iov[i].iov_base, (size_t)k);
        done += k;
    }
    return (ssize_t)done;
}

static ssize_t v_pwritev(struct ac_file *f, const struct iovec *iov, int iovcnt,
                         uint64_t offset)
{
    struct vhandle *h = vh(f);
    int r = vfs_account(h->fs);
    if (r < 0)
        return r;
    if (!(h->flags & AC_FILE_RDWR))
        return -EBADF;
    uint64_t total = 0;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    if (offset > MAX_FILE || total > MAX_FILE - offset)
        return -EFBIG;
    if (strcmp(h->node->name, TOP_PATH) == 0 && offset + total > h->fs->top_write_end)
        h->fs->top_write_end = offset + total;
    uint64_t done = 0;
    for (int i = 0; i < iovcnt; i++) {
        r = node_write(h->fs, h->node, offset + done, iov[i].iov_base, iov[i].iov_len);
        if (r < 0)
            return done > 0 ? (ssize_t)done : r;
        done += iov[i].iov_len;
    }
    return (ssize_t)done;
}

static int v_flush(struct ac_file *f)
{
    return vfs_account(vh(f)->fs);
}

static int v_truncate(struct ac_file *f, uint64_t size)
{
    struct vhandle *h = vh(f);
    int r = vfs_account(h->fs);
    if (r < 0)
        return r;
    if (!(h->flags & AC_FILE_RDWR))
        return -EBADF;
    if (size > MAX_FILE)
        return -EFBIG;
    return node_truncate(h->fs, h->node, size);
}

static int64_t v_size(struct ac_file *f)
{
    struct vhandle *h = vh(f);
    int r = vfs_account(h->fs);
    return r < 0 ? r : (int64_t)h->node->len;
}

static int v_punch(struct ac_file *f, uint64_t offset, uint64_t length)
{
    struct vhandle *h = vh(f);
    int r = vfs_account(h->fs);
    if (r < 0)
        return r;
    if (!(h->flags & AC_FILE_RDWR))
        return -EBADF;
    return node_zero(h->fs, h->node, offset, length);
}

static int v_lock(struct ac_file *f, int mode)
{
    struct vhandle *h = vh(f);
    struct vfs *fs = h->fs;
    int r = vfs_account(fs);
    if (r < 0)
        return r;
    for (size_t i = 0; i < fs->nhandles; i++) {
        struct vhandle *o = fs->handles[i];
        if (o != h && o->node == h->node && o->lock != 0 &&
            (mode == AC_LOCK_EXCLUSIVE || o->lock == AC_LOCK_EXCLUSIVE))
            return -EBUSY;
    }
    h->lock = mode;
    return 0;
}

static int v_identity(struct ac_file *f, uint64_t id[2])
{
    struct vhandle *h = vh(f);
    int r = vfs_account(h->fs);
    if (r < 0)
        return r;
    id[0] = 0x766673;
    id[1] = h->node->id;
    return 0;
}

static int v_rename(const struct ac_backend_ops *ops, const char *from, const char *to)
{
    struct vfs *fs = vfs_of(ops);
    int r = vfs_account(fs);
    if (r < 0)
        return r;
    struct vnode *n = vfs_find(fs, from);
    if (n == NULL)
        return -ENOENT;
    if (vfs_find(fs, to) != NULL)
        return -EEXIST;
    char *nn = strdup(to);
    if (nn == NULL)
        return -ENOMEM;
    free(n->name);
    n->name = nn;
    return 0;
}

static int v_unlink(const struct ac_backend_ops *ops, const char *path)
{
    struct vfs *fs = vfs_of(ops);
    int r = vfs_account(fs);
    if (r < 0)
        return r;
    struct vnode *n = vfs_find(fs, path);
    if (n == NULL)
        return -ENOENT;
    if (n->dir)
        return -EISDIR;
    n->linked = false;
    vfs_release(fs, n);
    return 0;
}

static int64_t v_next_data(struct ac_file *f, uint64_t offset)
{
    struct vhandle *h = vh(f);
    int r = vfs_account(h->fs);
    if (r < 0)
        return r;
    struct vnode *n = h->node;
    if (offset >= n->len)
        return (int64_t)n->len;
    if (n->pat && offset < n->pat_limit)
        return (int64_t)offset;
    size_t k = page_lb(n, offset / PG);
    if (k >= n->npg)
        return (int64_t)n->len;
    uint64_t d = n->pg[k].idx * PG;
    return (int64_t)(d > offset ? d : offset);
}

static const struct ac_backend_ops vfs_ops_template = {
    .version = AC_BACKEND_OPS_VERSION,
    .name = "fuzz-vfs",
    .open = v_open,
    .close = v_close,
    .preadv = v_preadv,
    .pwritev = v_pwritev,
    .flush = v_flush,
    .truncate = v_truncate,
    .size = v_size,
    .punch_hole = v_punch,
    .lock = v_lock,
    .identity = v_identity,
    .rename_noreplace = v_rename,
    .unlink = v_unlink,
    .next_data = v_next_data,
};

static void vfs_init(struct vfs *fs)
{
    memset(fs, 0, sizeof(*fs));
    fs->ops = vfs_ops_template;
    fs->next_id = 1;
}

static void vfs_destroy(struct vfs *fs)
{
    for (size_t i = 0; i < fs->nhandles; i++)
        free(fs->handles[i]);
    for (size_t i = 0; i < fs->nnodes; i++)
        node_free(fs->nodes[i]);
    free(fs->handles);
    free(fs->nodes);
    memset(fs, 0, sizeof(*fs));
}

/* A copy of the linked files (names, bytes), for the reference reader. */
static int vfs_snapshot(const struct vfs *fs, struct vfs *out)
{
    vfs_init(out);
    for (size_t i = 0; i < fs->nnodes; i++) {
        const struct vnode *s = fs->nodes[i];
        if (!s->linked)
            continue;
        struct vnode *d = vfs_add(out, s->name, s->dir);
        if (d == NULL)
            return -ENOMEM;
        d->id = s->id;
        d->len = s->len;
        d->pat = s->pat;
        d->pat_limit = s->pat_limit;
        if (s->npg > 0) {
            d->pg = calloc(s->npg, sizeof(*d->pg));
            if (d->pg == NULL)
                return -ENOMEM;
            d->cappg = s->npg;
            for (size_t k = 0; k < s->npg; k++) {
                d->pg[k].idx = s->pg[k].idx;
                if ((d->pg[k].data = malloc(PG)) == NULL)
                    return -ENOMEM;
                memcpy(d->pg[k].data, s->pg[k].data, PG);
                d->npg++;
            }
        }
    }
    return 0;
}

/* ---- the reference reader (FORMAT.md, API.md) ---------------------------- */

#define REF_MAX_DEPTH 16

struct ref {
    uint64_t size;                      /* virtual size, whole sectors */
    const struct vnode *acf, *img;
    int bkind;                          /* 0 none, 1 raw, 2 add-cow */
    const struct vnode *braw;
    struct ref *bimg;
    uint64_t bsize;                     /* bytes of backing data */
    char image_stored[1024], backing_stored[1024];
};

static void ref_free(struct ref *r)
{
    if (r == NULL)
        return;
    ref_free(r->bimg);
    free(r);
}

NOCOV static uint64_t be_get(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

static bool has_protocol(const char *p)
{
    size_t n = strcspn(p, ":/");
    return p[n] == ':';
}

static bool confined_ok(const char *p)
{
    if (p[0] == '/' || has_protocol(p))
        return false;
    for (const char *q = p; *q;) {
        size_t n = strcspn(q, "/");
        if (n == 2 && q[0] == '.' && q[1] == '.')
            return false;
        q += n;
        while (*q == '/')
            q++;
    }
    return true;
}

/* FORMAT.md, "Paths": relative to the folder of the add-cow file. */
static void resolve(const char *addcow, const char *stored, char *out, size_t outsz)
{
    if (stored[0] == '/') {
        snprintf(out, outsz, "%s", stored);
        return;
    }
    const char *slash = strrchr(addcow, '/');
    if (slash == NULL)
        snprintf(out, outsz, "%s", stored);
    else if (slash == addcow)
        snprintf(out, outsz, "/%s", stored);
    else
        snprintf(out, outsz, "%.*s/%s", (int)(slash - addcow), addcow, stored);
}

struct chain_set {
    const struct vnode *n[3 * REF_MAX_DEPTH + 4];
    int count;
};

static bool in_set(const struct chain_set *c, const struct vnode *n)
{
    for (int i = 0; i < c->count; i++)
        if (c->n[i] == n)
            return true;
    return false;
}

/* The header's verdict, as fuzz-header.c's reference has it. */
static int ref_header(const uint8_t *h, size_t len)
{
    if (len < 2068 || be_get(h, 8) != UINT64_C(0x4144445F434F57FF))
        return -EINVAL;
    if (be_get(h + 8, 4) != 1)
        return -ENOTSUP;
    if (memchr(h + 12, 0, 1024) == NULL || memchr(h + 1036, 0, 1024) == NULL || h[1036] == 0)
        return -EINVAL;
    if (be_get(h + 2060, 8) >> 9 > (UINT64_C(1) << 54) - 1)
        return -EFBIG;
    return 0;
}

/* Checks a stored path against the paths policy and protocol rule. */
static int ref_path(const char *stored, bool confined)
{
    if (confined && !confined_ok(stored))
        return -EACCES;
    if (has_protocol(stored))
        return -ENOTSUP;
    return 0;
}

static int ref_find(const struct vfs *snap, const char *path, const struct vnode **out)
{
    struct vnode *n = vfs_find((struct vfs *)(uintptr_t)snap, path);
    if (n == NULL)
        return -ENOENT;
    if (n->dir)
        return -EISDIR;
    *out = n;
    return 0;
}

/* Opens the image at path as the library must: 0 and *out, or a negative
 * errno (the header's faults exactly; others as the likely reason). */
static int ref_open(const struct vfs *snap, const char *path, int depth, int bfmt,
                    bool confined, struct chain_set *seen, struct ref **out)
{
    const struct vnode *acf, *img, *b;
    uint8_t h[2068];
    char p[2200];
    int r = ref_find(snap, path, &acf);
    if (r < 0)
        return r;
    if (in_set(seen, acf))
        return -ELOOP;
    if (acf->len == 0)
        return -EINVAL;
    size_t hl = acf->len < sizeof(h) ? (size_t)acf->len : sizeof(h);
    node_read(acf, 0, h, hl);
    if ((r = ref_header(h, hl)) < 0)
        return r;
    struct ref *ref = calloc(1, sizeof(*ref));
    if (ref == NULL)
        return -ENOMEM;
    ref->acf = acf;
    ref->size = be_get(h + 2060, 8) & ~UINT64_C(511);
    memcpy(ref->backing_stored, h + 12, 1024);
    memcpy(ref->image_stored, h + 1036, 1024);
    uint64_t sectors = ref->size / 512;
    if (acf->len - 2068 < sectors / 8 + (sectors % 8 != 0)) {
        r = -EINVAL;
        goto fail;
    }
    if ((r = ref_path(ref->image_stored, confined)) < 0)
        goto fail;
    resolve(path, ref->image_stored, p, sizeof(p));
    if ((r = ref_find(snap, p, &img)) < 0)
        goto fail;
    if (img == acf || in_set(seen, img)) {
        r = -EINVAL;
        goto fail;
    }
    ref->img = img;
    seen->n[seen->count++] = acf;
    seen->n[seen->count++] = img;
    if (ref->backing_stored[0] != '\0') {
        if ((r = ref_path(ref->backing_stored, confined)) < 0)
            goto fail;
        resolve(path, ref->backing_stored, p, sizeof(p));
        if ((r = ref_find(snap, p, &b)) < 0)
            goto fail;
        if (in_set(seen, b)) {
            r = -ELOOP;     /* or -EINVAL when it is an image file */
            goto fail;
        }
        bool addcow;
        if (bfmt != 0) {
            addcow = bfmt == 2;
        } else {
            uint8_t m[12];
            addcow = b->len >= 12;
            if (addcow) {
                node_read(b, 0, m, 12);
                addcow = be_get(m, 8) == UINT64_C(0x4144445F434F57FF) && be_get(m + 8, 4) == 1;
            }
        }
        if (addcow) {
            /* (the library counts this image and those above it) */
            if (depth + 1 >= REF_MAX_DEPTH) {
                r = -ELOOP;
                goto fail;
            }
            r = ref_open(snap, p, depth + 1, 0, confined, seen, &ref->bimg);
            if (r < 0)
                goto fail;
            ref->bkind = 2;
            ref->bsize = ref->bimg->size;
        } else {
            seen->n[seen->count++] = b;
            ref->bkind = 1;
            ref->braw = b;
            ref->bsize = b->len;
        }
    }
    *out = ref;
    return 0;
fail:
    ref_free(ref);
    return r;
}

/* Reads [off, off + len) of the virtual disk (inside its size). */
NOCOV static void ref_read(const struct ref *r, uint64_t off, uint8_t *buf, size_t len)
{
    while (len > 0) {
        uint64_t s = off / 512;
        uint8_t byte;
        node_read(r->acf, 2068 + s / 8, &byte, 1);
        bool set = (byte >> (s % 8)) & 1;
        /* the run of sectors with the same bit, within this read */
        uint64_t e = (s + 1) * 512;
        while (e < off + len) {
            uint64_t t = e / 512;
            node_read(r->acf, 2068 + t / 8, &byte, 1);
            if (((byte >> (t % 8)) & 1) != set)
                break;
            e += 512;
        }
        size_t n = (size_t)((e < off + len ? e : off + len) - off);
        if (set) {
            node_read(r->img, off, buf, n);
        } else if (r->bkind == 1) {
            node_read(r->braw, off, buf, n);
        } else if (r->bkind == 2) {
            size_t inb = off >= r->bimg->size ? 0
                       : (r->bimg->size - off < n ? (size_t)(r->bimg->size - off) : n);
            if (inb > 0)
                ref_read(r->bimg, off, buf, inb);
            memset(buf + inb, 0, n - inb);
        } else {
            memset(buf, 0, n);
        }
        buf += n;
        off += n;
        len -= n;
    }
}

/* ---- the model: content extents and allocated sectors ------------------------ */

enum { X_INIT = 0, X_ZERO, X_DATA };

struct ext {
    uint64_t start, end;
    int kind;
    uint8_t *data;              /* X_DATA: end - start bytes */
};

struct iv {
    uint64_t a, b;              /* allocated sectors [a, b) */
};

struct model {
    bool valid;
    uint64_t size;
    uint64_t bsize;             /* backing data bytes; 0 without */
    bool has_backing;
    int bkind;
    struct ref *ref;            /* what X_INIT reads: the files at open */
    struct vfs snap;
    struct ext *x;
    size_t nx, capx;
    struct iv *iv;
    size_t niv, capiv;
};

static void model_clear(struct model *m)
{
    for (size_t i = 0; i < m->nx; i++)
        free(m->x[i].data);
    free(m->x);
    free(m->iv);
    ref_free(m->ref);
    vfs_destroy(&m->snap);
    memset(m, 0, sizeof(*m));
}

static void x_insert(struct model *m, size_t at, struct ext e)
{
    if (m->nx == m->capx) {
        size_t cap = m->capx ? m->capx * 2 : 16;
        struct ext *nx = realloc(m->x, cap * sizeof(*nx));
        FUZZ_CHECK(nx != NULL, "out of memory");
        m->x = nx;
        m->capx = cap;
    }
    memmove(m->x + at + 1, m->x + at, (m->nx - at) * sizeof(*m->x));
    m->x[at] = e;
    m->nx++;
}

/* Cuts the extents at pos (no extent straddles it afterwards). */
static void x_split(struct model *m, uint64_t pos)
{
    for (size_t i = 0; i < m->nx; i++) {
        struct ext *e = &m->x[i];
        if (e->start < pos && pos < e->end) {
            struct ext tail = { pos, e->end, e->kind, NULL };
            if (e->kind == X_DATA) {
                size_t keep = (size_t)(pos - e->start), rest = (size_t)(e->end - pos);
                tail.data = malloc(rest);
                FUZZ_CHECK(tail.data != NULL, "out of memory");
                memcpy(tail.data, e->data + keep, rest);
                uint8_t *head = realloc(e->data, keep);
                if (head != NULL)
                    e->data = head;
            }
            e->end = pos;
            x_insert(m, i + 1, tail);
            return;
        }
    }
}

/* Replaces [a, b) by one extent (data: copied). */
static void x_set(struct model *m, uint64_t a, uint64_t b, int kind, const uint8_t *data)
{
    if (a >= b)
        return;
    x_split(m, a);
    x_split(m, b);
    size_t i = 0, at;
    while (i < m->nx && m->x[i].end <= a)
        i++;
    at = i;
    while (i < m->nx && m->x[i].start < b) {
        free(m->x[i].data);
        i++;
    }
    if (i > at) {
        memmove(m->x + at, m->x + i, (m->nx - i) * sizeof(*m->x));
        m->nx -= i - at;
    }
    struct ext e = { a, b, kind, NULL };
    if (kind == X_DATA) {
        e.data = malloc((size_t)(b - a));
        FUZZ_CHECK(e.data != NULL, "out of memory");
        memcpy(e.data, data, (size_t)(b - a));
    }
    x_insert(m, at, e);
}

/* Drops everything at or past pos. */
static void x_cut(struct model *m, uint64_t pos)
{
    x_split(m, pos);
    while (m->nx > 0 && m->x[m->nx - 1].start >= pos) {
        free(m->x[m->nx - 1].data);
        m->nx--;
    }
}

NOCOV static void model_read(const struct model *m, uint64_t off, uint8_t *buf, size_t len)
{
    memset(buf, 0, len);
    for (size_t i = 0; i < m->nx; i++) {
        const struct ext *e = &m->x[i];
        uint64_t a = e->start > off ? e->start : off;
        uint64_t b = e->end < off + len ? e->end : off + len;
        if (a >= b)
            continue;
        if (e->kind == X_INIT)
            ref_read(m->ref, a, buf + (a - off), (size_t)(b - a));
        else if (e->kind == X_DATA)
            memcpy(buf + (a - off), e->data + (a - e->start), (size_t)(b - a));
    }
}

/* -- allocated sectors: sorted, disjoint, not adjacent intervals -- */

static size_t iv_lb(const struct model *m, uint64_t s)
{
    /* first interval with b > s */
    size_t lo = 0, hi = m->niv;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->iv[mid].b <= s)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void iv_clear(struct model *m, uint64_t a, uint64_t b)
{
    if (a >= b)
        return;
    size_t i = iv_lb(m, a);
    while (i < m->niv && m->iv[i].a < b) {
        struct iv *v = &m->iv[i];
        if (v->a < a && v->b > b) {         /* split in two */
            if (m->niv == m->capiv) {
                size_t cap = m->capiv * 2 + 16;
                struct iv *n = realloc(m->iv, cap * sizeof(*n));
                FUZZ_CHECK(n != NULL, "out of memory");
                m->iv = n;
                m->capiv = cap;
                v = &m->iv[i];
            }
            memmove(m->iv + i + 1, m->iv + i, (m->niv - i) * sizeof(*m->iv));
            m->niv++;
            m->iv[i].b = a;
            m->iv[i + 1].a = b;
            return;
        }
        if (v->a < a) {
            v->b = a;
            i++;
        } else if (v->b > b) {
            v->a = b;
            return;
        } else {
            memmove(m->iv + i, m->iv + i + 1, (m->niv - i - 1) * sizeof(*m->iv));
            m->niv--;
        }
    }
}

static void iv_set(struct model *m, uint64_t a, uint64_t b)
{
    if (a >= b)
        return;
    /* merge with everything overlapping or adjacent */
    size_t i = a > 0 ? iv_lb(m, a - 1) : 0;
    size_t j = i;
    while (j < m->niv && m->iv[j].a <= b) {
        if (m->iv[j].a < a)
            a = m->iv[j].a;
        if (m->iv[j].b > b)
            b = m->iv[j].b;
        j++;
    }
    if (j == i) {
        if (m->niv == m->capiv) {
            size_t cap = m->capiv * 2 + 16;
            struct iv *n = realloc(m->iv, cap * sizeof(*n));
            FUZZ_CHECK(n != NULL, "out of memory");
            m->iv = n;
            m->capiv = cap;
        }
        memmove(m->iv + i + 1, m->iv + i, (m->niv - i) * sizeof(*m->iv));
        m->niv++;
    } else if (j > i + 1) {
        memmove(m->iv + i + 1, m->iv + j, (m->niv - j) * sizeof(*m->iv));
        m->niv -= j - i - 1;
    }
    m->iv[i].a = a;
    m->iv[i].b = b;
}

static bool iv_test(const struct model *m, uint64_t s)
{
    size_t i = iv_lb(m, s);
    return i < m->niv && m->iv[i].a <= s;
}

/* The first sector >= s whose allocation differs from s's. */
static uint64_t iv_next_change(const struct model *m, uint64_t s)
{
    size_t i = iv_lb(m, s);
    if (i < m->niv && m->iv[i].a <= s)
        return m->iv[i].b;
    return i < m->niv ? m->iv[i].a : UINT64_MAX;
}

static uint64_t iv_count(const struct model *m)
{
    uint64_t n = 0;
    for (size_t i = 0; i < m->niv; i++)
        n += m->iv[i].b - m->iv[i].a;
    return n;
}

/* The status flags at off and the exact run, at most len (FORMAT.md and
 * API.md: status changes at sector boundaries and the backing end). */
static unsigned model_status(const struct model *m, uint64_t off, uint64_t len, uint64_t *run)
{
    uint64_t end = off + len;
    uint64_t s = off / 512;
    uint64_t ch = iv_next_change(m, s);
    uint64_t e = ch > end / 512 + 1 ? end : (ch * 512 < end ? ch * 512 : end);
    if (iv_test(m, s)) {
        *run = e - off;
        return ADDCOW_STATUS_ALLOCATED;
    }
    if (off >= m->bsize) {
        *run = e - off;
        return ADDCOW_STATUS_ZERO;
    }
    *run = (e < m->bsize ? e : m->bsize) - off;
    return 0;
}

/* Builds the model of a freshly opened image from the files now. */
static int model_load(struct model *m, const struct vfs *fs, int bfmt, bool confined)
{
    model_clear(m);
    if (vfs_snapshot(fs, &m->snap) < 0)
        return -ENOMEM;
    struct chain_set seen = { .count = 0 };
    int r = ref_open(&m->snap, TOP_PATH, 0, bfmt, confined, &seen, &m->ref);
    if (r < 0)
        return r;
    m->size = m->ref->size;
    m->bsize = m->ref->bsize;
    m->has_backing = m->ref->bkind != 0;
    m->bkind = m->ref->bkind;
    x_set(m, 0, m->size, X_INIT, NULL);
    /* the bits: walk the bitmap's stored pages only (holes are zeros) */
    const struct vnode *acf = m->ref->acf;
    uint64_t nbytes = m->size / 512 / 8 + (m->size / 512 % 8 != 0);
    uint64_t sectors = m->size / 512;
    uint8_t buf[PG];
    for (size_t k = 0; k < acf->npg; k++) {
        uint64_t base = acf->pg[k].idx * PG;
        uint64_t lo = base > 2068 ? base : 2068, hi = base + PG;
        if (hi > 2068 + nbytes)
            hi = 2068 + nbytes;
        if (lo >= hi)
            continue;
        node_read(acf, lo, buf, (size_t)(hi - lo));
        for (uint64_t i = 0; i < hi - lo; i++) {
            if (buf[i] == 0)
                continue;
            for (unsigned bit = 0; bit < 8; bit++) {
                uint64_t s = (lo - 2068 + i) * 8 + bit;
                if (s < sectors && (buf[i] >> bit) & 1)
                    iv_set(m, s, s + 1);
            }
        }
    }
    m->valid = true;
    return 0;
}

/* ---- the script ----------------------------------------------------------------- */

static bool trace;     /* FUZZ_TRACE set: each operation on stderr */

static struct vnode *put_pattern(struct vfs *fs, const char *name, uint32_t seed, uint64_t len);

struct run {
    struct fuzz_in in;
    struct vfs fs;
    struct addcow_options *opts;
    addcow_image *img;
    bool writable;
    int bfmt;
    bool confined;
    bool locking;
    struct model m;
    uint64_t hits_seen;
    uint8_t *buf, *want;        /* MAX_IO each */
};

/* A failing call: a negative errno, and a message naming the call. */
static void check_err(int64_t r, const char *call)
{
    const char *msg = addcow_last_error();
    size_t n = strlen(call);
    FUZZ_CHECK(r < 0 && r >= -4095, "%s returned %lld", call, (long long)r);
    FUZZ_CHECK(msg != NULL && strncmp(msg, call, n) == 0 && msg[n] == ':' && msg[n + 1] == ' ' &&
               msg[n + 2] != '\0', "%s failed (%lld) with message '%s'", call, (long long)r,
               msg ? msg : "(null)");
}

/* A result: an expected one exactly while the model holds, else any
 * success or a well-formed failure. */
static void expect(struct run *R, int64_t r, int64_t want, const char *call)
{
    if (r < 0)
        check_err(r, call);
    if (R->m.valid)
        FUZZ_CHECK(r == want, "%s returned %lld (%s), the model says %lld", call, (long long)r,
                   r < 0 ? addcow_last_error() : "", (long long)want);
}

/* A flush (or the one in close) writes the header's size field and the
 * bitmap bytes of the image's size, nothing past them: not the bitmap of
 * a size it failed to grow to (which could be gigabytes). */
static void check_flush_writes(struct run *R, uint64_t size, const char *what)
{
    uint64_t lim = AC_HEADER_SIZE + ac_bitmap_bytes(size / 512);
    FUZZ_CHECK(R->fs.top_write_end <= lim, "%s wrote the add-cow file up to byte %llu; the "
               "bitmap of a %llu-byte disk ends at %llu", what,
               (unsigned long long)R->fs.top_write_end, (unsigned long long)size,
               (unsigned long long)lim);
}

/* Drops the model once the vfs has failed something on purpose. */
static void sync_faults(struct run *R)
{
    if (R->fs.hits != R->hits_seen) {
        R->hits_seen = R->fs.hits;
        R->m.valid = false;
    }
}

static uint64_t get_off(struct run *R)
{
    uint8_t sel = fuzz_u8(&R->in);
    uint32_t v = fuzz_u32(&R->in);
    uint64_t size = R->img ? (uint64_t)addcow_get_size(R->img) : 0;
    int64_t d = (int16_t)(v & 0xffff);
    uint64_t base;
    switch (sel & 7) {
    case 0: return v;
    case 1: return size - (v < size ? v : size);
    case 2: return (uint64_t)v * 512;
    case 3: base = (uint64_t)((sel >> 3) % 17) << 28; break;    /* bitmap chunk edges */
    case 4: base = R->m.bsize; break;
    case 5: return size + (v & 0xffff);
    case 6: return v % (size + 1);
    default: return (uint64_t)v << 20;
    }
    return d < 0 && base < (uint64_t)-d ? 0 : base + (uint64_t)d;
}

static uint64_t get_len(struct run *R, uint64_t off, bool data)
{
    uint8_t sel = fuzz_u8(&R->in);
    uint32_t v = fuzz_u32(&R->in);
    uint64_t size = R->img ? (uint64_t)addcow_get_size(R->img) : 0;
    uint64_t len;
    switch (sel & 7) {
    case 0: len = v % 4096; break;
    case 1: len = v % 65536; break;
    case 2: len = (uint64_t)(v % 2048) * 512; break;
    case 3: len = v % (MAX_IO + 1); break;
    case 4: len = 0; break;
    case 5: len = size > off ? size - off : 0; break;
    case 6: len = v; break;
    default: len = UINT64_MAX - (v & 0xff); break;
    }
    if (data && len > MAX_IO)
        len = (sel & 8) ? MAX_IO : len % (MAX_IO + 1);
    return len;
}

/* Splits buf[0, len) into 1 to 4 iovecs (some maybe empty). */
static int split_iov(struct run *R, uint8_t *buf, size_t len, struct iovec *v)
{
    int n = fuzz_u8(&R->in) % 4 + 1;
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        size_t k = i == n - 1 ? len - at : (len - at ? fuzz_u16(&R->in) % (len - at + 1) : 0);
        v[i].iov_base = buf + at;
        v[i].iov_len = k;
        at += k;
    }
    return n;
}

static void op_read(struct run *R, uint8_t how)
{
    uint64_t off = get_off(R), len = get_len(R, off, true);
    uint64_t size = R->m.size;
    int64_t r;
    memset(R->buf, 0xEE, len);
    if (how & 0x10) {
        struct iovec v[4];
        int n = split_iov(R, R->buf, (size_t)len, v);
        r = addcow_preadv(R->img, v, n, off);
    } else {
        r = addcow_pread(R->img, R->buf, (size_t)len, off);
    }
    sync_faults(R);
    if (r < 0) {
        check_err(r, how & 0x10 ? "addcow_preadv" : "addcow_pread");
        FUZZ_CHECK(!R->m.valid, "read of %llu at %llu failed: %s", (unsigned long long)len,
                   (unsigned long long)off, addcow_last_error());
        return;
    }
    FUZZ_CHECK((uint64_t)r <= len, "read returned %lld for %llu", (long long)r,
               (unsigned long long)len);
    if (!R->m.valid)
        return;
    uint64_t want = off >= size ? 0 : (len < size - off ? len : size - off);
    FUZZ_CHECK((uint64_t)r == want, "read of %llu at %llu returned %lld, size %llu",
               (unsigned long long)len, (unsigned long long)off, (long long)r,
               (unsigned long long)size);
    model_read(&R->m, off, R->want, (size_t)want);
    if (memcmp(R->buf, R->want, (size_t)want) != 0) {
        size_t i = 0;
        while (R->buf[i] == R->want[i])
            i++;
        FUZZ_CHECK(0, "read of %llu at %llu: byte %llu is 0x%02x, the model says 0x%02x",
                   (unsigned long long)want, (unsigned long long)off,
                   (unsigned long long)(off + i), R->buf[i], R->want[i]);
    }
}

static void op_write(struct run *R, uint8_t how)
{
    uint64_t off = get_off(R), len = get_len(R, off, true);
    uint8_t seed = fuzz_u8(&R->in);
    pat_fill(R->buf, 0x100u + seed, off, (size_t)len);
    int64_t r;
    if (how & 0x10) {
        struct iovec v[4];
        int n = split_iov(R, R->buf, (size_t)len, v);
        r = addcow_pwritev(R->img, v, n, off);
    } else {
        r = addcow_pwrite(R->img, R->buf, (size_t)len, off);
    }
    sync_faults(R);
    int64_t want = !R->writable ? -EBADF : len == 0 ? 0
                 : (off > R->m.size || len > R->m.size - off) ? -ENOSPC : (int64_t)len;
    expect(R, r, want, how & 0x10 ? "addcow_pwritev" : "addcow_pwrite");
    if (r > 0 && R->m.valid) {
        x_set(&R->m, off, off + len, X_DATA, R->buf);
        iv_set(&R->m, off / 512, (off + len + 511) / 512);
    }
}

static void op_write_zeroes(struct run *R, uint8_t how)
{
    uint64_t off = get_off(R), len = get_len(R, off, false);
    unsigned flags = how & 0x10 ? ADDCOW_ZEROES_MAY_UNMAP : 0;
    /* Without MAY_UNMAP the library writes zero bytes over every sector
     * that is not already zero, as API.md asks: over terabytes of backing
     * data that is terabytes of writes, which this file system in memory
     * does at about 1 GB/s (a fuzz run spent 20 minutes on one such call).
     * Such calls are cut to ZERO_WRITE_MAX here; the wide ones with
     * MAY_UNMAP punch holes and stay. */
    if (!(flags & ADDCOW_ZEROES_MAY_UNMAP) && len > ZERO_WRITE_MAX && off <= R->m.size &&
        len <= R->m.size - off)
        len = ZERO_WRITE_MAX;
    if ((how & 0x60) == 0x60)
        flags |= 0x4;           /* unknown flag */
    /* The allocation it makes, from the model before it: every sector
     * touched by a run that is not ZERO. */
    struct iv *touch = NULL;
    size_t ntouch = 0, cap = 0;
    bool in_range = len > 0 && off <= R->m.size && len <= R->m.size - off;
    if (R->m.valid && in_range && R->writable && !(flags & 0x4)) {
        for (uint64_t pos = off, run; pos < off + len; pos += run) {
            unsigned st = model_status(&R->m, pos, off + len - pos, &run);
            if (st & ADDCOW_STATUS_ZERO)
                continue;
            if (ntouch == cap) {
                cap = cap * 2 + 16;
                touch = realloc(touch, cap * sizeof(*touch));
                FUZZ_CHECK(touch != NULL, "out of memory");
            }
            touch[ntouch].a = pos / 512;
            touch[ntouch++].b = (pos + run + 511) / 512;
        }
    }
    int r = addcow_write_zeroes(R->img, off, len, flags);
    sync_faults(R);
    int want = (flags & 0x4) ? -EINVAL : !R->writable ? -EBADF : len == 0 ? 0
             : !in_range ? -ENOSPC : 0;
    expect(R, r, want, "addcow_write_zeroes");
    if (r == 0 && R->m.valid && len > 0) {
        for (size_t i = 0; i < ntouch; i++)
            iv_set(&R->m, touch[i].a, touch[i].b);
        x_set(&R->m, off, off + len, X_ZERO, NULL);
    }
    free(touch);
}

static void op_truncate(struct run *R)
{
    uint8_t sel = fuzz_u8(&R->in);
    uint64_t size;
    switch (sel & 3) {
    case 0: size = get_off(R) & ~UINT64_C(511); break;
    case 1: size = get_off(R); break;                   /* maybe unaligned */
    case 2: size = R->m.size + (uint64_t)(fuzz_u16(&R->in) % 64) * 512; break;
    default: size = (sel & 4) ? AC_MAX_VIRTUAL_SIZE + 512 : MAX_FILE + 512; break;
    }
    int r = addcow_truncate(R->img, size);
    sync_faults(R);
    if (trace)
        fprintf(stderr, "    truncate(%llu): %d %s\n", (unsigned long long)size, r,
                r < 0 ? addcow_last_error() : "");
    int want = !R->writable ? -EBADF : size % 512 ? -EINVAL
             : size > AC_MAX_VIRTUAL_SIZE ? -EFBIG : size > MAX_FILE ? -EFBIG : 0;
    expect(R, r, want, "addcow_truncate");
    if (r == 0 && R->m.valid) {
        struct model *m = &R->m;
        if (size < m->size) {
            x_cut(m, size);
            iv_clear(m, size / 512, UINT64_MAX);
        } else if (size > m->size) {
            uint64_t s_back = (m->bsize + 511) / 512;
            x_set(m, m->size, size, X_ZERO, NULL);
            if (s_back > m->size / 512)
                iv_set(m, m->size / 512, s_back < size / 512 ? s_back : size / 512);
        }
        m->size = size;
    }
    if (R->m.valid)
        FUZZ_CHECK((uint64_t)addcow_get_size(R->img) == R->m.size, "size after truncate");
}

static void op_status_walk(struct run *R)
{
    uint64_t off = get_off(R), len = get_len(R, off, false);
    uint64_t size = (uint64_t)addcow_get_size(R->img);
    if (len == 0 || off >= size) {
        uint64_t run = 77;
        int r = addcow_block_status(R->img, off, len, &run);
        sync_faults(R);
        FUZZ_CHECK(r == -EINVAL && run == 77, "block_status(%llu, %llu) past the end gave %d",
                   (unsigned long long)off, (unsigned long long)len, r);
        check_err(r, "addcow_block_status");
        return;
    }
    uint64_t end = len > size - off ? size : off + len;
    for (int n = 0; off < end && n < 4096; n++) {
        uint64_t run = 0;
        int r = addcow_block_status(R->img, off, end - off, &run);
        sync_faults(R);
        if (r < 0) {
            check_err(r, "addcow_block_status");
            FUZZ_CHECK(!R->m.valid, "block_status failed: %s", addcow_last_error());
            return;
        }
        FUZZ_CHECK(r == 0 || r == ADDCOW_STATUS_ALLOCATED || r == ADDCOW_STATUS_ZERO,
                   "block_status flags %d", r);
        FUZZ_CHECK(run > 0 && run <= end - off, "block_status(%llu, %llu): run %llu",
                   (unsigned long long)off, (unsigned long long)(end - off),
                   (unsigned long long)run);
        if (R->m.valid) {
            uint64_t mrun;
            unsigned st = model_status(&R->m, off, end - off, &mrun);
            FUZZ_CHECK((unsigned)r == st && run == mrun,
                       "block_status(%llu, %llu) = %d run %llu; the model: %u run %llu",
                       (unsigned long long)off, (unsigned long long)(end - off), r,
                       (unsigned long long)run, st, (unsigned long long)mrun);
        }
        off += run;
    }
}

struct prog {
    uint64_t calls, cancel_at, last_done, total;
    bool first;
    const char *what;
};

static int progress_cb(uint64_t done, uint64_t total, void *opaque)
{
    struct prog *p = opaque;
    FUZZ_CHECK(done <= total, "%s progress %llu of %llu", p->what, (unsigned long long)done,
               (unsigned long long)total);
    FUZZ_CHECK(p->first || (done >= p->last_done && total == p->total),
               "%s progress went from %llu/%llu to %llu/%llu", p->what,
               (unsigned long long)p->last_done, (unsigned long long)p->total,
               (unsigned long long)done, (unsigned long long)total);
    p->first = false;
    p->last_done = done;
    p->total = total;
    return ++p->calls == p->cancel_at;
}

static void op_hydrate(struct run *R)
{
    uint64_t off = get_off(R), len = get_len(R, off, false);
    struct prog p = { 0, fuzz_u8(&R->in) % 4, 0, 0, true, "hydrate" };
    bool with_cb = p.cancel_at != 0 || (fuzz_u8(&R->in) & 1);
    struct model *m = &R->m;
    int r = addcow_hydrate(R->img, off, len, with_cb ? progress_cb : NULL, &p);
    sync_faults(R);
    bool bad = off > m->size || len > m->size - off;
    bool cancelled = p.cancel_at != 0 && p.calls >= p.cancel_at;
    int want = !R->writable ? -EBADF : bad ? -EINVAL : cancelled ? -ECANCELED : 0;
    expect(R, r, want, "addcow_hydrate");
    if (!m->valid || (r != 0 && r != -ECANCELED))
        return;
    uint64_t l = len == 0 ? m->size - off : len;
    if (with_cb)
        FUZZ_CHECK(p.calls > 0 && p.total == l && (cancelled || p.last_done == l),
                   "hydrate progress: %llu calls, %llu of %llu (want %llu)",
                   (unsigned long long)p.calls, (unsigned long long)p.last_done,
                   (unsigned long long)p.total, (unsigned long long)l);
    uint64_t done = cancelled ? p.last_done : l;
    uint64_t s_to = (off + l + 511) / 512;
    uint64_t s_back = (m->bsize + 511) / 512, s_done = (off + done + 511) / 512;
    if (s_to > s_back)
        s_to = s_back;
    if (s_to > s_done)
        s_to = s_done;
    iv_set(m, off / 512, s_to);
}

static void op_detach(struct run *R)
{
    struct model *m = &R->m;
    int want = 0;
    if (!R->writable) {
        want = -EBADF;
    } else if (m->has_backing) {
        uint64_t need = ((m->bsize < m->size ? m->bsize : m->size) + 511) / 512;
        bool all = need == 0 || (iv_lb(m, 0) < m->niv && m->iv[0].a == 0 && m->iv[0].b >= need);
        want = all ? 0 : -EBUSY;
    }
    int r = addcow_detach(R->img);
    sync_faults(R);
    expect(R, r, want, "addcow_detach");
    if (r == 0 && m->valid) {
        m->has_backing = false;
        m->bsize = 0;
    }
    if (m->valid)
        FUZZ_CHECK((addcow_get_backing_file(R->img) == NULL) == !m->has_backing,
                   "backing file after detach");
}

static void op_commit(struct run *R)
{
    struct model *m = &R->m;
    struct prog p = { 0, fuzz_u8(&R->in) % 4, 0, 0, true, "commit" };
    bool with_cb = p.cancel_at != 0 || (fuzz_u8(&R->in) & 1);
    uint64_t total = iv_count(m) * 512;
    uint64_t last_end = m->niv ? m->iv[m->niv - 1].b * 512 : 0;
    int r = addcow_commit(R->img, with_cb ? progress_cb : NULL, &p);
    sync_faults(R);
    bool cancelled = p.cancel_at != 0 && p.calls >= p.cancel_at;
    int want = !R->writable ? -EBADF : !m->has_backing ? -EINVAL
             : cancelled ? -ECANCELED : 0;
    expect(R, r, want, "addcow_commit");
    if (!m->valid || (r != 0 && r != -ECANCELED))
        return;
    if (with_cb)
        FUZZ_CHECK(p.calls > 0 && p.total == total && (cancelled || p.last_done == total),
                   "commit progress: %llu calls, %llu of %llu (want %llu)",
                   (unsigned long long)p.calls, (unsigned long long)p.last_done,
                   (unsigned long long)p.total, (unsigned long long)total);
    /* Where it stopped: after `done` allocated bytes. */
    uint64_t done = cancelled ? p.last_done : total, pos = last_end, acc = 0;
    for (size_t i = 0; i < m->niv && done < total; i++) {
        uint64_t n = (m->iv[i].b - m->iv[i].a) * 512;
        if (acc + n >= done) {
            pos = m->iv[i].a * 512 + (done - acc);
            break;
        }
        acc += n;
    }
    iv_clear(m, 0, pos / 512);
    uint64_t grown = m->bkind == 2 ? last_end : pos;
    if (grown > m->bsize)
        m->bsize = grown;
}

static void op_getters(struct run *R)
{
    int64_t sz = addcow_get_size(R->img);
    int64_t al = addcow_get_allocated_bytes(R->img);
    sync_faults(R);
    if (al < 0)
        check_err(al, "addcow_get_allocated_bytes");
    const char *imgf = addcow_get_image_file(R->img);
    const char *bf = addcow_get_backing_file(R->img);
    FUZZ_CHECK(imgf != NULL && imgf[0] != '\0', "image file name");
    if (!R->m.valid)
        return;
    FUZZ_CHECK((uint64_t)sz == R->m.size, "size %lld, model %llu", (long long)sz,
               (unsigned long long)R->m.size);
    FUZZ_CHECK(al >= 0 && (uint64_t)al == iv_count(&R->m) * 512,
               "allocated bytes %lld, model %llu", (long long)al,
               (unsigned long long)iv_count(&R->m) * 512);
    FUZZ_CHECK(strcmp(imgf, R->m.ref->image_stored) == 0, "image file '%s'", imgf);
    FUZZ_CHECK((bf == NULL) == !R->m.has_backing, "backing file %s", bf ? bf : "NULL");
    if (bf != NULL)
        FUZZ_CHECK(strcmp(bf, R->m.ref->backing_stored) == 0, "backing file '%s'", bf);
}

static void op_badargs(struct run *R, uint8_t how)
{
    uint64_t run = 5;
    int64_t r;
    struct iovec v = { NULL, 3 };
    switch (how >> 4 & 7) {
    case 0:
        r = addcow_pread(R->img, NULL, 5, 0);
        FUZZ_CHECK(r == -EINVAL, "pread NULL: %lld", (long long)r);
        check_err(r, "addcow_pread");
        break;
    case 1:
        r = addcow_pwrite(R->img, NULL, 5, 0);
        FUZZ_CHECK(r == -EINVAL, "pwrite NULL: %lld", (long long)r);
        check_err(r, "addcow_pwrite");
        break;
    case 2:
        r = addcow_preadv(R->img, &v, -1, 0);
        FUZZ_CHECK(r == -EINVAL, "preadv -1: %lld", (long long)r);
        check_err(r, "addcow_preadv");
        r = addcow_pwritev(R->img, &v, 1, 0);
        FUZZ_CHECK(r == -EINVAL, "pwritev NULL base: %lld", (long long)r);
        check_err(r, "addcow_pwritev");
        break;
    case 3:
        r = addcow_block_status(R->img, 0, 512, NULL);
        FUZZ_CHECK(r == -EINVAL, "block_status NULL: %lld", (long long)r);
        check_err(r, "addcow_block_status");
        break;
    case 4: {
        addcow_image *other = (addcow_image *)&run;
        r = addcow_open(TOP_PATH, 0x6, R->opts, &other);
        FUZZ_CHECK(r == -EINVAL && other == NULL, "open flags 6: %lld", (long long)r);
        check_err(r, "addcow_open");
        break;
    }
    case 5:
        r = addcow_truncate(R->img, 513);
        FUZZ_CHECK(r == (R->writable ? -EINVAL : -EBADF), "truncate 513: %lld", (long long)r);
        check_err(r, "addcow_truncate");
        break;
    default:
        FUZZ_CHECK(addcow_close(NULL) == 0, "close NULL");
        r = addcow_flush(NULL);
        FUZZ_CHECK(r == -EINVAL, "flush NULL: %lld", (long long)r);
        check_err(r, "addcow_flush");
        break;
    }
    sync_faults(R);
}

static int do_open(struct run *R, unsigned flags, addcow_image **out)
{
    return addcow_open(TOP_PATH, flags, R->opts, out);
}

static void op_second(struct run *R, uint8_t how)
{
    unsigned flags = how & 0x10 ? ADDCOW_OPEN_RDWR : ADDCOW_OPEN_RDONLY;
    addcow_image *two = NULL;
    int r = do_open(R, flags, &two);
    sync_faults(R);
    int want = R->locking && (R->writable || flags) ? -EBUSY : 0;
    expect(R, r, want, "addcow_open");
    if (r < 0)
        return;
    /* With nothing pending on the first handle, the second reads the same. */
    if (R->m.valid && !R->writable && R->m.size > 0) {
        uint64_t off = get_off(R) % R->m.size;
        size_t n = (size_t)(R->m.size - off < 4096 ? R->m.size - off : 4096);
        int64_t got = addcow_pread(two, R->buf, n, off);
        sync_faults(R);
        if (R->m.valid) {
            FUZZ_CHECK(got == (int64_t)n, "second handle read %lld", (long long)got);
            model_read(&R->m, off, R->want, n);
            FUZZ_CHECK(memcmp(R->buf, R->want, n) == 0, "second handle reads otherwise");
        }
    }
    r = addcow_close(two);
    sync_faults(R);
    if (r < 0)
        check_err(r, "addcow_close");
}

/* Closes the image and opens it again (rdwr per `how`): nothing may stay
 * open in between, and the reopen must work, faults or not. */
static void op_reopen(struct run *R, uint8_t how)
{
    uint64_t size = (uint64_t)addcow_get_size(R->img);
    R->fs.top_write_end = 0;
    int r = addcow_close(R->img);
    R->img = NULL;
    sync_faults(R);
    check_flush_writes(R, size, "close");
    if (trace)
        fprintf(stderr, "    close: %d %s\n", r, r < 0 ? addcow_last_error() : "");
    expect(R, r, 0, "addcow_close");
    if (r < 0)
        R->m.valid = false;     /* what reached the files is not known */
    FUZZ_CHECK(R->fs.nhandles == 0, "%zu file handles left open after close",
               R->fs.nhandles);
    R->fs.fault_at = 0;
    R->writable = how & 0x10;
    r = do_open(R, R->writable ? ADDCOW_OPEN_RDWR : ADDCOW_OPEN_RDONLY, &R->img);
    if (r < 0) {
        check_err(r, "addcow_open");
        FUZZ_CHECK(0, "reopen failed: %s", addcow_last_error());
    }
    if (!R->m.valid) {
        r = model_load(&R->m, &R->fs, R->bfmt, R->confined);
        FUZZ_CHECK(r == 0, "the reference reader refuses the files after a reopen (%d)", r);
    }
    FUZZ_CHECK((uint64_t)addcow_get_size(R->img) == R->m.size, "size after reopen %lld, "
               "model %llu", (long long)addcow_get_size(R->img), (unsigned long long)R->m.size);
}

static void op_fault(struct run *R)
{
    static const int errs[] = { EIO, ENOSPC, EDQUOT, ENOMEM, EROFS, EINTR, EAGAIN, EBADF };
    uint8_t a = fuzz_u8(&R->in), b = fuzz_u8(&R->in);
    if (a == 0) {
        R->fs.fault_at = 0;
        return;
    }
    R->fs.fault_at = R->fs.opno + 1 + a % 48;
    R->fs.fault_err = errs[b % 8];
    R->fs.fault_sticky = b & 0x80;
}

/* addcow_create in the same folder, with names and sizes from the input;
 * a new image must open, be empty (nothing allocated) and read as its
 * backing file; a failed create leaves no file behind.  The new files
 * are removed again afterwards (straight from the vfs). */
static void op_create(struct run *R)
{
    static const char *const paths[] = { DIR_PATH "/new.add-cow", TOP_PATH, DIR_PATH "/dir",
                                         "/elsewhere/new.add-cow" };
    static const char *const backings[] = { NULL, "base.raw", "mid.add-cow", "disk.add-cow",
                                            "missing.raw", "nbd://host/x", "/vm/base.raw", "" };
    /* Image files that are not in the open image's chain (none of them
     * existed when it was opened): create may extend an existing one. */
    static const char *const images[] = { "new.raw", "spare.raw", "", "new.add-cow", "dir",
                                          "../vm/new.raw", "/vm/new.raw", "long" };
    uint8_t a = fuzz_u8(&R->in), b = fuzz_u8(&R->in);
    uint32_t v = fuzz_u32(&R->in);
    const char *path = paths[a & 3];
    const char *backing = backings[a >> 2 & 7];
    const char *image = images[b & 7];
    static char longname[1100];
    if (strcmp(image, "long") == 0) {
        memset(longname, 'x', 1024);
        longname[1024] = '\0';
        image = longname;
    }
    uint64_t size;
    switch (b >> 3 & 3) {
    case 0: size = 0; break;
    case 1: size = (uint64_t)(v % 100000) * 512; break;
    case 2: size = v; break;                            /* maybe unaligned */
    default: size = v & 1 ? AC_MAX_VIRTUAL_SIZE + 512 : (uint64_t)v << 20; break;
    }
    if (vfs_find(&R->fs, DIR_PATH "/spare.raw") == NULL)
        put_pattern(&R->fs, DIR_PATH "/spare.raw", 44, 3000);
    size_t names_before = 0;
    for (size_t i = 0; i < R->fs.nnodes; i++)
        names_before += R->fs.nodes[i]->linked;
    unsigned handles_before = (unsigned)R->fs.nhandles;
    int r = addcow_create(path, size, backing, image, R->opts);
    sync_faults(R);
    if (trace)
        fprintf(stderr, "    create(%s, %llu, %s, %.20s): %d %s\n", path,
                (unsigned long long)size, backing ? backing : "NULL", image, r,
                r < 0 ? addcow_last_error() : "");
    FUZZ_CHECK(R->fs.nhandles == handles_before, "create left %zu file handles open",
               R->fs.nhandles - handles_before);
    if (r < 0) {
        check_err(r, "addcow_create");
        if (size % 512 && image[0] && strlen(image) < 1024 && R->m.valid)
            FUZZ_CHECK(r == -EINVAL, "create of size %llu: %d", (unsigned long long)size, r);
        /* nothing new stays, but the image file it may have created and
         * could not remove when the vfs failed on purpose */
        size_t names = 0;
        for (size_t i = 0; i < R->fs.nnodes; i++)
            names += R->fs.nodes[i]->linked;
        if (R->m.valid)
            FUZZ_CHECK(names == names_before, "a failed create left %zu new files",
                       names - names_before);
        for (size_t i = 0; i < R->fs.nnodes; i++)
            FUZZ_CHECK(!R->fs.nodes[i]->linked || !R->m.valid ||
                       strstr(R->fs.nodes[i]->name, ".tmp") == NULL,
                       "a failed create left '%s'", R->fs.nodes[i]->name);
        return;
    }
    FUZZ_CHECK(strcmp(path, TOP_PATH) != 0, "create over an existing add-cow file");
    FUZZ_CHECK(size % 512 == 0 && size <= AC_MAX_VIRTUAL_SIZE, "create of size %llu succeeded",
               (unsigned long long)size);
    addcow_image *nw = NULL;
    struct addcow_options *o = addcow_options_new();
    FUZZ_CHECK(o != NULL, "out of memory");
    ac_options_set_backend_ops(o, &R->fs.ops);
    FUZZ_CHECK(addcow_options_set(o, "locking", "off") == 0, "options");
    r = addcow_open(path, ADDCOW_OPEN_RDONLY, o, &nw);
    sync_faults(R);
    if (r == 0) {
        int64_t al = addcow_get_allocated_bytes(nw);
        sync_faults(R);
        if (R->m.valid) {
            FUZZ_CHECK(al == 0, "a new image has %lld bytes allocated", (long long)al);
            if (size != 0)
                FUZZ_CHECK((uint64_t)addcow_get_size(nw) == size, "new image size %lld, "
                           "asked %llu", (long long)addcow_get_size(nw),
                           (unsigned long long)size);
            FUZZ_CHECK(addcow_get_size(nw) % 512 == 0, "new image size");
        }
        addcow_close(nw);
    } else {
        check_err(r, "addcow_open");
        FUZZ_CHECK(!R->m.valid, "a newly created image does not open: %s", addcow_last_error());
    }
    addcow_options_free(o);
    sync_faults(R);
    /* Remove what create made: the add-cow file, and its image file when
     * that did not exist before (names not in the starting set). */
    struct vnode *n = vfs_find(&R->fs, path);
    if (n != NULL) {
        n->linked = false;
        vfs_release(&R->fs, n);
    }
    if ((n = vfs_find(&R->fs, DIR_PATH "/new.raw")) != NULL) {
        n->linked = false;
        vfs_release(&R->fs, n);
    }
    if ((n = vfs_find(&R->fs, "/elsewhere/new.raw")) != NULL) {
        n->linked = false;
        vfs_release(&R->fs, n);
    }
}

static void run_script(struct run *R)
{
    static const char *const names[16] = {
        "read", "write", "write_zeroes", "flush", "truncate", "block_status walk",
        "hydrate", "reopen", "fault", "detach", "commit", "getters", "bad arguments",
        "second handle", "create", "write" };
    for (int n = 0; n < MAX_OPS && R->in.left > 0; n++) {
        uint8_t op = fuzz_u8(&R->in);
        sync_faults(R);
        if (trace)
            fprintf(stderr, "  op %d: %s (0x%02x)%s, size %llu, %zu allocated runs\n", n,
                    names[op & 15], op, R->m.valid ? "" : " [no model]",
                    (unsigned long long)R->m.size, R->m.niv);
        switch (op & 15) {
        case 0: op_read(R, op); break;
        case 1: op_write(R, op); break;
        case 2: op_write_zeroes(R, op); break;
        case 3: {
            uint64_t size = (uint64_t)addcow_get_size(R->img);
            R->fs.top_write_end = 0;
            int r = addcow_flush(R->img);
            sync_faults(R);
            expect(R, r, 0, "addcow_flush");
            check_flush_writes(R, size, "flush");
            break;
        }
        case 4: op_truncate(R); break;
        case 5: op_status_walk(R); break;
        case 6: op_hydrate(R); break;
        case 7: op_reopen(R, op); break;
        case 8: op_fault(R); break;
        case 9: op_detach(R); break;
        case 10: op_commit(R); break;
        case 11: op_getters(R); break;
        case 12: op_badargs(R, op); break;
        case 13: op_second(R, op); break;
        case 14: op_create(R); break;
        default: op_write(R, op); break;
        }
    }
}

/* ---- setup ------------------------------------------------------------------------ */

static struct vnode *put_pattern(struct vfs *fs, const char *name, uint32_t seed, uint64_t len)
{
    struct vnode *n = vfs_add(fs, name, false);
    FUZZ_CHECK(n != NULL, "out of memory");
    n->pat = seed;
    n->len = n->pat_limit = len;
    return n;
}

static void put_bytes(struct vfs *fs, struct vnode *n, uint64_t off, const uint8_t *p, size_t len)
{
    uint64_t saved = fs->hits;
    FUZZ_CHECK(node_write(fs, n, off, p, len) == 0, "setup write");
    fs->hits = saved;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t *bufs;
    if (bufs == NULL) {
        bufs = malloc(2 * (size_t)MAX_IO);
        FUZZ_CHECK(bufs != NULL, "out of memory");
    }
    struct run R;
    memset(&R, 0, sizeof(R));
    R.in.p = data;
    R.in.left = size;
    R.buf = bufs;
    R.want = bufs + MAX_IO;

    uint8_t flags = fuzz_u8(&R.in), hole = fuzz_u8(&R.in);
    uint16_t n = fuzz_u16(&R.in), img64 = fuzz_u16(&R.in), base64 = fuzz_u16(&R.in);
    uint8_t f2 = fuzz_u8(&R.in);
    uint16_t mid_sectors = fuzz_u16(&R.in);
    uint8_t mid_seed = fuzz_u8(&R.in);
    if (n > R.in.left)
        n = (uint16_t)R.in.left;

    vfs_init(&R.fs);
    FUZZ_CHECK(vfs_add(&R.fs, DIR_PATH, true) != NULL, "out of memory");
    if (f2 & 0x80)
        FUZZ_CHECK(vfs_add(&R.fs, DIR_PATH "/dir", true) != NULL, "out of memory");
    struct vnode *top = vfs_add(&R.fs, TOP_PATH, false);
    FUZZ_CHECK(top != NULL, "out of memory");
    put_bytes(&R.fs, top, 0, R.in.p, n);
    R.in.p += n;
    R.in.left -= n;
    top->len = n + ((uint64_t)(hole & 0x7f) * PG << (hole & 0x80 ? 12 : 0));
    put_pattern(&R.fs, DIR_PATH "/disk.raw", 11, (uint64_t)img64 * 64);
    put_pattern(&R.fs, DIR_PATH "/base.raw", 22, (uint64_t)base64 * 64 + (f2 & 63));
    if (f2 & 0x40) {
        uint64_t msize = (uint64_t)mid_sectors * 512;
        struct vnode *mid = vfs_add(&R.fs, DIR_PATH "/mid.add-cow", false);
        FUZZ_CHECK(mid != NULL, "out of memory");
        uint8_t h[AC_HEADER_SIZE];
        ac_header_encode(h, "base.raw", "mid.raw", msize);
        put_bytes(&R.fs, mid, 0, h, sizeof(h));
        size_t nb = (size_t)ac_bitmap_bytes(mid_sectors);
        for (size_t i = 0; i < nb; i++) {
            uint8_t b = 0;
            for (unsigned k = 0; k < 8; k++)
                if (i * 8 + k < mid_sectors && pat_byte(mid_seed, i * 8 + k) % 4 == 0)
                    b |= (uint8_t)(1u << k);
            put_bytes(&R.fs, mid, AC_HEADER_SIZE + i, &b, 1);
        }
        mid->len = AC_HEADER_SIZE + nb;
        put_pattern(&R.fs, DIR_PATH "/mid.raw", 33, msize);
    }

    static const char *const bfmts[] = { "auto", "raw", "add-cow", "auto" };
    static const char *const caches[] = { "writeback", "writethrough", "none", "writeback" };
    R.writable = flags & 1;
    R.confined = flags & 2;
    R.bfmt = (flags >> 2 & 3) == 3 ? 0 : flags >> 2 & 3;
    R.locking = !(flags & 0x40);
    R.opts = addcow_options_new();
    FUZZ_CHECK(R.opts != NULL, "out of memory");
    FUZZ_CHECK(addcow_options_set(R.opts, "paths", R.confined ? "confined" : "any") == 0 &&
               addcow_options_set(R.opts, "backing-format", bfmts[flags >> 2 & 3]) == 0 &&
               addcow_options_set(R.opts, "cache", caches[flags >> 4 & 3]) == 0 &&
               addcow_options_set(R.opts, "locking", R.locking ? "on" : "off") == 0,
               "options");
    ac_options_set_backend_ops(R.opts, &R.fs.ops);

    /* The reference reader's verdict on the files, before open. */
    uint8_t h[AC_HEADER_SIZE];
    size_t hl = top->len < sizeof(h) ? (size_t)top->len : sizeof(h);
    node_read(top, 0, h, hl);
    int hdr_fault = top->len == 0 ? -EINVAL : ref_header(h, hl);
    int want = model_load(&R.m, &R.fs, R.bfmt, R.confined);

    int r = do_open(&R, R.writable ? ADDCOW_OPEN_RDWR : ADDCOW_OPEN_RDONLY, &R.img);
    trace = getenv("FUZZ_TRACE") != NULL;
    if (trace)
        fprintf(stderr, "open: %d %s (reference %d)\n", r, r < 0 ? addcow_last_error() : "",
                want);
    if (r < 0) {
        check_err(r, "addcow_open");
        FUZZ_CHECK(R.img == NULL, "failed open left a handle");
        FUZZ_CHECK(want < 0, "open failed (%s); the reference reader accepts the image",
                   addcow_last_error());
        if (hdr_fault < 0)
            FUZZ_CHECK(r == hdr_fault, "open failed with %d (%s); the header's fault is %d",
                       r, addcow_last_error(), hdr_fault);
    } else {
        FUZZ_CHECK(want == 0, "open succeeded; the reference reader refuses the image (%d)",
                   want);
        FUZZ_CHECK((uint64_t)addcow_get_size(R.img) == R.m.size, "size %lld, reference %llu",
                   (long long)addcow_get_size(R.img), (unsigned long long)R.m.size);
        run_script(&R);
        uint64_t size_now = (uint64_t)addcow_get_size(R.img);
        R.fs.top_write_end = 0;
        r = addcow_close(R.img);
        sync_faults(&R);
        check_flush_writes(&R, size_now, "close");
        if (r < 0)
            check_err(r, "addcow_close");
        else if (R.m.valid)
            FUZZ_CHECK(r == 0, "close");
    }
    FUZZ_CHECK(R.fs.nhandles == 0, "%zu file handles left open", R.fs.nhandles);
    model_clear(&R.m);
    vfs_destroy(&R.fs);
    addcow_options_free(R.opts);
    return 0;
}
