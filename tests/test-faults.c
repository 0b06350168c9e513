/*
 * test-faults.c: fault injection over a whole workload.
 *
 *  - I/O faults: a workload of every kind of call (create, open, unaligned
 *    writes with copy-on-write over a raw backing file, reads, write_zeroes,
 *    flush, truncate up and down, block_status, commit, hydrate, detach,
 *    close) runs once cleanly, counting its backend operations; then once
 *    per operation with that operation failing: EIO, ENOSPC (the call
 *    returns it, says which call and file, the handle stays usable: the
 *    same call again succeeds; close frees everything; a crash right after
 *    the failure and a reopen after it both show every flushed write), or
 *    interrupted (EINTR) or cut short (a short read or write): then the
 *    workload must run exactly as the clean one.
 *  - Allocation failures: the same workload once per allocation the
 *    library makes, with that one failing (GNU ld --wrap of malloc and
 *    friends, armed only while a library call runs): -ENOMEM, no crash, no
 *    leak (every block the library allocates is tracked until freed), the
 *    handle usable.
 *  - A full disk: a 4 MiB tmpfs mounted by the test (root), else an ext4
 *    loop file, else a capacity model on the in-memory backend: writes get
 *    a clean -ENOSPC, flush still works, nothing flushed is lost; a bitmap
 *    block that cannot be allocated makes flush fail with -ENOSPC and loses
 *    nothing flushed before.
 *
 * The contract asserted after a call fails with an injected error:
 *  - options_new: NULL;
 *  - create: no add-cow file, no file left that was not there before (its
 *    temporary file, an image file it made), nothing open; create again
 *    succeeds;
 *  - open: *out is NULL, nothing open; open again succeeds;
 *  - close: the handle and every file are freed anyway; a reopen shows a
 *    state since the last durable point (which the model then takes);
 *  - any other call: the handle shows the state before or after the call
 *    (a mix of both, sector by sector, inside the call's range), and the
 *    same call again succeeds with the intended result;
 *  - and always: the call returns -errno of the fault, its message names
 *    the call, the errno and the file; a crash right after the failure
 *    leaves files that open and show, sector by sector, states since the
 *    last durable point (every flushed write is there).
 *
 * The backend faults come from a small wrapper backend here (fw_*) around
 * memfs: it counts operations, fails the n-th one of chosen kinds in a
 * chosen way, and can model a disk of limited capacity.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cmocka.h>

#include "addcow.h"
#include "backend.h"
#include "membackend.h"
#include "options.h"
#include "testutil.h"

#define SECTOR 512u
#define BACKING_LEN 50000u          /* ends inside a sector */
#define DISK (128u * 1024)
#define GROWN (160u * 1024)
#define SHRUNK (96u * 1024)
#define MAXDISK GROWN
#define MAXSECT (MAXDISK / SECTOR)

#define W_ADDCOW "/w/disk.add-cow"
#define W_IMAGE  "/w/disk.raw"
#define W_BACK   "/w/base.raw"

/* ==== allocation failure injection (ld --wrap) ============================
 * Every allocation function the library uses (grep in lib: malloc,
 * calloc, realloc, posix_memalign, strdup, strndup, asprintf) is wrapped.
 * An allocation counts when it is made while a library call of the
 * workload runs (lib_depth > 0) and not inside the test's backend
 * (backend_depth == 0: memfs's own memory is the "disk", not the
 * library's).  Counted blocks are tracked until freed, so that a leak on an
 * error path shows at the end of the run that made it. */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
int __real_posix_memalign(void **p, size_t a, size_t n);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);
void __real_free(void *p);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t m);
void *__wrap_realloc(void *p, size_t n);
int __wrap_posix_memalign(void **p, size_t a, size_t n);
char *__wrap_strdup(const char *s);
char *__wrap_strndup(const char *s, size_t n);
int __wrap_asprintf(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void __wrap_free(void *p);

/* volatile: the compiler must not move or merge the updates around calls
 * it knows (malloc, strdup), so that they count too. */
static __thread volatile int lib_depth; /* inside a library call of the workload */
static __thread int backend_depth;      /* inside the test backend */

static pthread_mutex_t alloc_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t alloc_seen;             /* counted allocations since alloc_reset() */
static uint64_t alloc_fail_at;          /* 0: none; n: the n-th counted one fails */
static uint64_t alloc_failed;           /* how many were failed */
#define TRACK_MAX 4096
static void *tracked[TRACK_MAX];
static size_t tracked_size[TRACK_MAX];
static unsigned ntracked;
static bool tracking;                   /* anything tracked at all (fast path for free) */

#define LIB(expr) __extension__({ lib_depth++; __typeof__(expr) lib_r_ = (expr); \
                                  lib_depth--; lib_r_; })

/* Forgets every tracked block (a failed run may leave some behind). */
static void untrack_all(void)
{
    pthread_mutex_lock(&alloc_mu);
    ntracked = 0;
    __atomic_store_n(&tracking, false, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&alloc_mu);
}

static void alloc_reset(uint64_t fail_at)
{
    pthread_mutex_lock(&alloc_mu);
    alloc_seen = 0;
    alloc_fail_at = fail_at;
    alloc_failed = 0;
    pthread_mutex_unlock(&alloc_mu);
}

/* true if this allocation is counted and must fail. */
static bool alloc_point(bool *counted)
{
    *counted = lib_depth > 0 && backend_depth == 0;
    if (!*counted)
        return false;
    pthread_mutex_lock(&alloc_mu);
    bool fail = ++alloc_seen == alloc_fail_at;
    alloc_failed += fail;
    pthread_mutex_unlock(&alloc_mu);
    return fail;
}

static void track(void *p, size_t n)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&alloc_mu);
    if (ntracked == TRACK_MAX) {
        pthread_mutex_unlock(&alloc_mu);
        fprintf(stderr, "test-faults: too many live library allocations\n");
        abort();
    }
    tracked[ntracked] = p;
    tracked_size[ntracked] = n;
    ntracked++;
    __atomic_store_n(&tracking, true, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&alloc_mu);
}

/* Forgets p if tracked; true if it was. */
static bool untrack(void *p)
{
    bool found = false;
    if (p == NULL || !__atomic_load_n(&tracking, __ATOMIC_RELAXED))
        return false;
    pthread_mutex_lock(&alloc_mu);
    for (unsigned i = 0; i < ntracked; i++) {
        if (tracked[i] == p) {
            tracked[i] = tracked[ntracked - 1];
            tracked_size[i] = tracked_size[ntracked - 1];
            ntracked--;
            found = true;
            break;
        }
    }
    if (ntracked == 0)
        __atomic_store_n(&tracking, false, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&alloc_mu);
    return found;
}

static unsigned live_library_blocks(size_t *bytes)
{
    pthread_mutex_lock(&alloc_mu);
    unsigned n = ntracked;
    size_t b = 0;
    for (unsigned i = 0; i < n; i++)
        b += tracked_size[i];
    pthread_mutex_unlock(&alloc_mu);
    if (bytes != NULL)
        *bytes = b;
    return n;
}

void *__wrap_malloc(size_t n)
{
    bool counted;
    if (alloc_point(&counted)) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = __real_malloc(n);
    if (counted)
        track(p, n);
    return p;
}

void *__wrap_calloc(size_t n, size_t m)
{
    bool counted;
    if (alloc_point(&counted)) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = __real_calloc(n, m);
    if (counted)
        track(p, n * m);
    return p;
}

void *__wrap_realloc(void *p, size_t n)
{
    bool counted;
    if (alloc_point(&counted)) {
        errno = ENOMEM;
        return NULL;        /* p stays valid, as realloc leaves it */
    }
    bool was = p != NULL && untrack(p);
    void *q = __real_realloc(p, n);
    if (q == NULL && was)
        track(p, n);
    else if (was || (counted && p == NULL))
        track(q, n);
    return q;
}

int __wrap_posix_memalign(void **p, size_t a, size_t n)
{
    bool counted;
    if (alloc_point(&counted))
        return ENOMEM;
    int r = __real_posix_memalign(p, a, n);
    if (r == 0 && counted)
        track(*p, n);
    return r;
}

char *__wrap_strdup(const char *s)
{
    bool counted;
    if (alloc_point(&counted)) {
        errno = ENOMEM;
        return NULL;
    }
    char *p = __real_strdup(s);
    if (counted && p != NULL)
        track(p, strlen(p) + 1);
    return p;
}

char *__wrap_strndup(const char *s, size_t n)
{
    bool counted;
    if (alloc_point(&counted)) {
        errno = ENOMEM;
        return NULL;
    }
    char *p = __real_strndup(s, n);
    if (counted && p != NULL)
        track(p, strlen(p) + 1);
    return p;
}

int __wrap_asprintf(char **out, const char *fmt, ...)
{
    bool counted;
    if (alloc_point(&counted)) {
        errno = ENOMEM;
        return -1;
    }
    va_list ap;
    va_start(ap, fmt);
    int r = vasprintf(out, fmt, ap);
    va_end(ap);
    if (r >= 0 && counted)
        track(*out, (size_t)r + 1);
    return r;
}

void __wrap_free(void *p)
{
    untrack(p);
    __real_free(p);
}

/* ==== the fault-injecting wrapper backend ================================ */

enum fmode { FM_NONE = 0, FM_ERR, FM_EINTR, FM_SHORT };

#define NKINDS 11
#define CAP_BLOCK 4096u
#define CAP_FILES 16

struct capfile {
    uint64_t id;                /* memfs identity; 0: free slot */
    unsigned char *blk;         /* one byte per CAP_BLOCK block: allocated */
    size_t n;
};

struct fw {
    struct ac_backend_ops ops;  /* the table the library gets */
    struct memfs *fs;
    const struct ac_backend_ops *in;

    /* the fault: the nth operation among the kinds in mask */
    unsigned mask;
    uint64_t nth, seen;
    enum fmode mode;
    int err;
    uint64_t hits;              /* faults injected */
    unsigned hit_op;
    char hit_name[512];
    uint64_t counts[NKINDS];    /* operations, by kind */
    unsigned open_files;

    /* capacity model (full disk on memfs): blocks of CAP_BLOCK bytes */
    bool cap_on;
    uint64_t cap_limit, cap_used;
    struct capfile cf[CAP_FILES];
};

struct wfile {
    struct ac_file base;        /* first: the library holds &base */
    struct ac_file *in;
    char *name;
    uint64_t id;
};

static struct fw W;

static struct wfile *wf(struct ac_file *f)
{
    return (struct wfile *)(void *)f;
}

static unsigned kind_index(unsigned op)
{
    return (unsigned)__builtin_ctz(op);
}

/* Counts an operation; returns the fault to inject, if this is the one. */
static enum fmode fw_point(unsigned op, const char *name)
{
    W.counts[kind_index(op)]++;
    if (W.mode == FM_NONE || !(op & W.mask))
        return FM_NONE;
    if (++W.seen != W.nth)
        return FM_NONE;
    W.hits++;
    W.hit_op = op;
    snprintf(W.hit_name, sizeof(W.hit_name), "%s", name != NULL ? name : "");
    return W.mode;
}

/* ---- capacity model ------------------------------------------------------ */

static struct capfile *cap_file(uint64_t id)
{
    struct capfile *freeslot = NULL;
    for (int i = 0; i < CAP_FILES; i++) {
        if (W.cf[i].id == id)
            return &W.cf[i];
        if (W.cf[i].id == 0 && freeslot == NULL)
            freeslot = &W.cf[i];
    }
    if (freeslot == NULL) {
        fprintf(stderr, "test-faults: too many files in the capacity model\n");
        abort();
    }
    freeslot->id = id;
    return freeslot;
}

static bool cap_has(struct capfile *c, uint64_t b)
{
    return b < c->n && c->blk[b];
}

static void cap_set(struct capfile *c, uint64_t b)
{
    if (b >= c->n) {
        size_t n = c->n ? c->n : 64;
        while (n <= b)
            n *= 2;
        unsigned char *p = __real_realloc(c->blk, n);
        if (p == NULL)
            abort();
        memset(p + c->n, 0, n - c->n);
        c->blk = p;
        c->n = n;
    }
    if (!c->blk[b]) {
        c->blk[b] = 1;
        W.cap_used++;
    }
}

/* Allocates the blocks of [off, off + len) while there is room; returns the
 * bytes that can be written from off. */
static uint64_t cap_room(uint64_t id, uint64_t off, uint64_t len, bool unlimited)
{
    struct capfile *c = cap_file(id);
    uint64_t pos = off, end = off + len;
    while (pos < end) {
        uint64_t b = pos / CAP_BLOCK;
        if (!cap_has(c, b)) {
            if (!unlimited && W.cap_used >= W.cap_limit)
                break;
            cap_set(c, b);
        }
        pos = tu_min_u64(end, (b + 1) * CAP_BLOCK);
    }
    return pos - off;
}

/* Frees the whole blocks inside [off, end). */
static void cap_free_range(uint64_t id, uint64_t off, uint64_t end)
{
    struct capfile *c = cap_file(id);
    uint64_t b0 = (off + CAP_BLOCK - 1) / CAP_BLOCK;
    for (uint64_t b = b0; b < c->n && (b + 1) * CAP_BLOCK <= end; b++)
        if (c->blk[b]) {
            c->blk[b] = 0;
            W.cap_used--;
        }
}

static void cap_truncate(uint64_t id, uint64_t size)
{
    struct capfile *c = cap_file(id);
    for (uint64_t b = (size + CAP_BLOCK - 1) / CAP_BLOCK; b < c->n; b++)
        if (c->blk[b]) {
            c->blk[b] = 0;
            W.cap_used--;
        }
}

static void cap_forget(uint64_t id)
{
    struct capfile *c = cap_file(id);
    cap_truncate(id, 0);
    __real_free(c->blk);
    memset(c, 0, sizeof(*c));
}

/* ---- the ops --------------------------------------------------------------- */

static int fw_open(const struct ac_backend_ops *ops, const char *path, unsigned flags,
                   struct ac_file **out)
{
    (void)ops;
    enum fmode m = fw_point(MEMFS_OP_OPEN, path);
    if (m == FM_ERR)
        return -W.err;
    if (m == FM_EINTR)
        return -EINTR;
    backend_depth++;
    struct wfile *w = calloc(1, sizeof(*w));
    char *name = strdup(path);
    struct ac_file *in = NULL;
    int r = (w == NULL || name == NULL) ? -ENOMEM : W.in->open(W.in, path, flags, &in);
    uint64_t id[2] = { 0, 0 };
    if (r == 0 && W.cap_on)
        r = in->ops->identity(in, id);
    if (r < 0) {
        if (in != NULL)
            in->ops->close(in);
        free(w);
        free(name);
        backend_depth--;
        return r;
    }
    w->base.ops = &W.ops;
    w->in = in;
    w->name = name;
    w->id = id[1];
    W.open_files++;
    *out = &w->base;
    backend_depth--;
    return 0;
}

static void fw_close(struct ac_file *f)
{
    struct wfile *w = wf(f);
    backend_depth++;
    w->in->ops->close(w->in);
    free(w->name);
    free(w);
    W.open_files--;
    backend_depth--;
}

/* The first n bytes of iov, as pieces in out (room for iovcnt). */
static int iov_cut(const struct iovec *iov, int iovcnt, uint64_t n, struct iovec *out)
{
    int k = 0;
    for (int i = 0; i < iovcnt && n > 0; i++) {
        size_t l = iov[i].iov_len < n ? iov[i].iov_len : (size_t)n;
        if (l == 0)
            continue;
        out[k].iov_base = iov[i].iov_base;
        out[k].iov_len = l;
        n -= l;
        k++;
    }
    return k;
}

static uint64_t iov_total(const struct iovec *iov, int iovcnt)
{
    uint64_t n = 0;
    for (int i = 0; i < iovcnt; i++)
        n += iov[i].iov_len;
    return n;
}

static ssize_t fw_rw(struct ac_file *f, const struct iovec *iov, int iovcnt, uint64_t offset,
                     bool write)
{
    struct wfile *w = wf(f);
    enum fmode m = fw_point(write ? MEMFS_OP_WRITE : MEMFS_OP_READ, w->name);
    uint64_t total = iov_total(iov, iovcnt);
    uint64_t n = total;
    if (m == FM_ERR)
        return -W.err;
    if (m == FM_EINTR)
        return -EINTR;
    if (m == FM_SHORT) {
        if (total >= 2)
            n = total / 2;
        else
            W.hits--;           /* nothing to cut: no fault */
    }
    if (write && W.cap_on) {
        uint64_t room = cap_room(w->id, offset, n, false);
        if (room == 0 && n > 0)
            return -ENOSPC;
        n = room;
    }
    struct iovec small[64], *v = small;
    ssize_t r;
    backend_depth++;
    if (iovcnt > 64 && (v = malloc(sizeof(*v) * (size_t)iovcnt)) == NULL) {
        backend_depth--;
        return -ENOMEM;
    }
    int k = n == total ? iovcnt : iov_cut(iov, iovcnt, n, v);
    const struct iovec *use = n == total ? iov : v;
    r = write ? w->in->ops->pwritev(w->in, use, k, offset)
              : w->in->ops->preadv(w->in, use, k, offset);
    if (v != small)
        free(v);
    backend_depth--;
    return r;
}

static ssize_t fw_preadv(struct ac_file *f, const struct iovec *iov, int iovcnt, uint64_t off)
{
    return fw_rw(f, iov, iovcnt, off, false);
}

static ssize_t fw_pwritev(struct ac_file *f, const struct iovec *iov, int iovcnt, uint64_t off)
{
    return fw_rw(f, iov, iovcnt, off, true);
}

/* For the operations without a transfer: EINTR and errors as asked. */
static int fw_simple_fault(unsigned op, const char *name)
{
    enum fmode m = fw_point(op, name);
    if (m == FM_ERR)
        return -W.err;
    if (m == FM_EINTR)
        return -EINTR;
    if (m == FM_SHORT)
        W.hits--;               /* no such thing as a short flush */
    return 0;
}

static int fw_flush(struct ac_file *f)
{
    struct wfile *w = wf(f);
    int r = fw_simple_fault(MEMFS_OP_FLUSH, w->name);
    if (r < 0)
        return r;
    backend_depth++;
    r = w->in->ops->flush(w->in);
    backend_depth--;
    return r;
}

static int fw_truncate(struct ac_file *f, uint64_t size)
{
    struct wfile *w = wf(f);
    int r = fw_simple_fault(MEMFS_OP_TRUNCATE, w->name);
    if (r < 0)
        return r;
    backend_depth++;
    r = w->in->ops->truncate(w->in, size);
    backend_depth--;
    if (r == 0 && W.cap_on)
        cap_truncate(w->id, size);
    return r;
}

static int64_t fw_size(struct ac_file *f)
{
    struct wfile *w = wf(f);
    int r = fw_simple_fault(MEMFS_OP_SIZE, w->name);
    if (r < 0)
        return r;
    backend_depth++;
    int64_t s = w->in->ops->size(w->in);
    backend_depth--;
    return s;
}

static int fw_punch(struct ac_file *f, uint64_t off, uint64_t len)
{
    struct wfile *w = wf(f);
    int r = fw_simple_fault(MEMFS_OP_PUNCH, w->name);
    if (r < 0)
        return r;
    backend_depth++;
    r = w->in->ops->punch_hole(w->in, off, len);
    backend_depth--;
    if (r == 0 && W.cap_on)
        cap_free_range(w->id, off, off + len);
    return r;
}

static int fw_lock(struct ac_file *f, int mode)
{
    struct wfile *w = wf(f);
    int r = fw_simple_fault(MEMFS_OP_LOCK, w->name);
    if (r < 0)
        return r;
    backend_depth++;
    r = w->in->ops->lock(w->in, mode);
    backend_depth--;
    return r;
}

static int fw_identity(struct ac_file *f, uint64_t id[2])
{
    struct wfile *w = wf(f);
    int r = fw_simple_fault(MEMFS_OP_IDENTITY, w->name);
    if (r < 0)
        return r;
    backend_depth++;
    r = w->in->ops->identity(w->in, id);
    backend_depth--;
    return r;
}

static int fw_rename(const struct ac_backend_ops *ops, const char *from, const char *to)
{
    (void)ops;
    int r = fw_simple_fault(MEMFS_OP_RENAME, from);
    if (r < 0)
        return r;
    backend_depth++;
    r = W.in->rename_noreplace(W.in, from, to);
    backend_depth--;
    return r;
}

static int fw_unlink(const struct ac_backend_ops *ops, const char *path)
{
    (void)ops;
    int r = fw_simple_fault(MEMFS_OP_UNLINK, path);
    if (r < 0)
        return r;
    backend_depth++;
    uint64_t id = memfs_file_id(W.fs, path);
    r = W.in->unlink(W.in, path);
    backend_depth--;
    if (r == 0 && W.cap_on && id != 0)
        cap_forget(id);
    return r;
}

/* Puts the wrapper around a fresh memfs; no fault armed. */
static void fw_setup(struct memfs *fs)
{
    for (int i = 0; i < CAP_FILES; i++)
        __real_free(W.cf[i].blk);
    memset(&W, 0, sizeof(W));
    W.fs = fs;
    W.in = memfs_ops(fs);
    W.ops.version = AC_BACKEND_OPS_VERSION;
    W.ops.name = "faults";
    W.ops.open = fw_open;
    W.ops.close = fw_close;
    W.ops.preadv = fw_preadv;
    W.ops.pwritev = fw_pwritev;
    W.ops.flush = fw_flush;
    W.ops.truncate = fw_truncate;
    W.ops.size = fw_size;
    W.ops.punch_hole = fw_punch;
    W.ops.lock = fw_lock;
    W.ops.identity = fw_identity;
    W.ops.rename_noreplace = fw_rename;
    W.ops.unlink = fw_unlink;
}

static void fw_teardown(void)
{
    for (int i = 0; i < CAP_FILES; i++)
        __real_free(W.cf[i].blk);
    memset(&W, 0, sizeof(W));
}

static void fw_arm(unsigned mask, uint64_t nth, enum fmode mode, int err)
{
    W.mask = mask;
    W.nth = nth;
    W.seen = 0;
    W.mode = mode;
    W.err = err;
}

/* ==== a model of the virtual disk ======================================== */

struct model {
    unsigned char buf[MAXDISK];     /* bytes past size are zero */
    bool alloc[MAXSECT];            /* the sector's bit */
    uint64_t size;
    uint64_t bsize;                 /* bytes of backing data (0: none) */
};

static void backing_bytes(unsigned char *b)
{
    tu_fill_pattern(b, BACKING_LEN, 0xBA5E, 0);
}

static void model_init(struct model *m)
{
    memset(m, 0, sizeof(*m));
    backing_bytes(m->buf);
    m->size = DISK;
    m->bsize = BACKING_LEN;
}

static void model_alloc_range(struct model *m, uint64_t off, uint64_t len)
{
    for (uint64_t s = off / SECTOR; s < (off + len + SECTOR - 1) / SECTOR; s++)
        m->alloc[s] = true;
}

static void model_write(struct model *m, uint64_t off, const void *data, uint64_t len)
{
    assert_true(off + len <= m->size);
    memcpy(m->buf + off, data, (size_t)len);
    model_alloc_range(m, off, len);
}

/* write_zeroes: runs reading zeros with no backing data (unallocated, past
 * the backing file's end) stay unallocated; every other touched sector is
 * allocated and reads zeros. */
static void model_zero(struct model *m, uint64_t off, uint64_t len)
{
    uint64_t end = off + len;
    for (uint64_t s = off / SECTOR; s < (end + SECTOR - 1) / SECTOR; s++) {
        uint64_t a = off > s * SECTOR ? off : s * SECTOR;
        uint64_t b = tu_min_u64(end, (s + 1) * SECTOR);
        if (tu_min_u64(b, m->bsize) > a)
            m->alloc[s] = true;
    }
    memset(m->buf + off, 0, (size_t)len);
}

static void model_truncate(struct model *m, uint64_t size)
{
    uint64_t s_old = m->size / SECTOR, s_new = size / SECTOR;
    if (size < m->size) {
        memset(m->buf + size, 0, (size_t)(m->size - size));
        for (uint64_t s = s_new; s < s_old; s++)
            m->alloc[s] = false;
    } else {
        uint64_t s_back = (m->bsize + SECTOR - 1) / SECTOR;
        for (uint64_t s = s_old; s < tu_min_u64(s_back, s_new); s++)
            m->alloc[s] = true;
    }
    m->size = size;
}

/* Commit: the backing file takes every allocated sector (growing to the
 * last one), every bit is cleared; the disk reads the same. */
static void model_commit(struct model *m)
{
    uint64_t last = 0;
    for (uint64_t s = 0; s < m->size / SECTOR; s++) {
        if (m->alloc[s])
            last = (s + 1) * SECTOR;
        m->alloc[s] = false;
    }
    if (last > m->bsize)
        m->bsize = last;
}

static void model_hydrate(struct model *m)
{
    uint64_t s_stop = tu_min_u64((m->bsize + SECTOR - 1) / SECTOR, m->size / SECTOR);
    for (uint64_t s = 0; s < s_stop; s++)
        m->alloc[s] = true;
}

static unsigned model_flags(const struct model *m, uint64_t x)
{
    if (m->alloc[x / SECTOR])
        return ADDCOW_STATUS_ALLOCATED;
    return x >= m->bsize ? ADDCOW_STATUS_ZERO : 0;
}

/* The longest run from pos (below end) with the flags at pos. */
static uint64_t model_run(const struct model *m, uint64_t pos, uint64_t end)
{
    unsigned f = model_flags(m, pos);
    uint64_t e = pos;
    while (e < end && model_flags(m, e) == f) {
        uint64_t nb = (e / SECTOR + 1) * SECTOR;
        if (e < m->bsize && m->bsize < nb)
            nb = m->bsize;
        e = nb;
    }
    return tu_min_u64(e, end) - pos;
}

static uint64_t model_allocated(const struct model *m)
{
    uint64_t n = 0;
    for (uint64_t s = 0; s < m->size / SECTOR; s++)
        n += m->alloc[s];
    return n * SECTOR;
}

/* ==== the workload ======================================================= */

enum step_kind {
    S_OPTS, S_CREATE, S_OPEN, S_CLOSE, S_WRITE, S_WRITEV, S_SCATTER, S_READ, S_READV,
    S_ZERO, S_FLUSH, S_TRUNC, S_STATUS, S_ALLOC, S_HYDRATE, S_COMMIT, S_DETACH,
};

struct step {
    enum step_kind kind;
    uint64_t off, len;
    unsigned arg;               /* writes: pattern seed; zero: flags */
};

/* S_SCATTER: SCATTER_N writes of SCATTER_LEN bytes, one every SCATTER_GAP
 * bytes from off + SCATTER_SKEW: many short runs for a read to gather. */
#define SCATTER_N 12
#define SCATTER_GAP 2048u
#define SCATTER_SKEW 700u
#define SCATTER_LEN 100u

static const struct step workload[] = {
    { S_OPTS, 0, 0, 0 },
    { S_CREATE, 0, DISK, 0 },
    { S_OPEN, 0, 0, 0 },
    { S_WRITE, 100, 300, 1 },                   /* inside one sector: COW both ends */
    { S_WRITE, 4000, 9000, 2 },                 /* COW head and tail, whole sectors */
    { S_WRITEV, 47000, 6000, 3 },               /* 20 pieces, across the backing end */
    { S_WRITE, 70000, 5000, 4 },                /* past the backing file */
    { S_SCATTER, 20480, SCATTER_N * SCATTER_GAP, 9 },
    { S_READ, 0, DISK, 0 },
    { S_READV, 333, DISK - 1000, 0 },           /* 24 pieces over every kind of run */
    { S_STATUS, 0, 0, 0 },
    { S_FLUSH, 0, 0, 0 },
    { S_ZERO, 3000, 20000, 0 },                 /* allocated and backing runs */
    { S_ZERO, 65000, 20000, ADDCOW_ZEROES_MAY_UNMAP }, /* allocated and zero runs */
    { S_ZERO, 25000, 16384, ADDCOW_ZEROES_MAY_UNMAP }, /* backing: punch + edges */
    { S_WRITE, 100000, 700, 5 },
    { S_CLOSE, 0, 0, 0 },
    { S_OPEN, 0, 0, 0 },
    { S_READ, 1, DISK - 1, 0 },
    { S_TRUNC, GROWN, 0, 0 },
    { S_WRITE, 150000, 2000, 6 },
    { S_TRUNC, SHRUNK, 0, 0 },
    { S_STATUS, 0, 0, 0 },
    { S_COMMIT, 0, 0, 0 },
    { S_READ, 0, SHRUNK, 0 },
    { S_WRITE, 30000, 3000, 7 },
    { S_HYDRATE, 0, 0, 0 },
    { S_ALLOC, 0, 0, 0 },
    { S_DETACH, 0, 0, 0 },
    { S_WRITE, 1000, 600, 8 },
    { S_STATUS, 0, 0, 0 },
    { S_READ, 0, SHRUNK, 0 },
    { S_CLOSE, 0, 0, 0 },
};
#define NSTEPS (sizeof(workload) / sizeof(workload[0]))

static const char *step_call(enum step_kind k)
{
    switch (k) {
    case S_OPTS: return "addcow_options_new";
    case S_CREATE: return "addcow_create";
    case S_OPEN: return "addcow_open";
    case S_CLOSE: return "addcow_close";
    case S_WRITE: case S_SCATTER: return "addcow_pwrite";
    case S_WRITEV: return "addcow_pwritev";
    case S_READ: return "addcow_pread";
    case S_READV: return "addcow_preadv";
    case S_ZERO: return "addcow_write_zeroes";
    case S_FLUSH: return "addcow_flush";
    case S_TRUNC: return "addcow_truncate";
    case S_STATUS: return "addcow_block_status";
    case S_ALLOC: return "addcow_get_allocated_bytes";
    case S_HYDRATE: return "addcow_hydrate";
    case S_COMMIT: return "addcow_commit";
    case S_DETACH: return "addcow_detach";
    }
    return "?";
}

/* After these, everything before is durable. */
static bool step_durable(enum step_kind k)
{
    return k == S_FLUSH || k == S_CLOSE || k == S_TRUNC || k == S_HYDRATE ||
           k == S_COMMIT || k == S_DETACH;
}

static bool step_mutates(enum step_kind k)
{
    return k == S_WRITE || k == S_WRITEV || k == S_SCATTER || k == S_ZERO || k == S_TRUNC;
}

/* The intended result of a step. */
static void model_step(struct model *m, const struct step *s, const unsigned char *data)
{
    switch (s->kind) {
    case S_CREATE: model_init(m); break;
    case S_WRITE: case S_WRITEV: model_write(m, s->off, data, s->len); break;
    case S_SCATTER:
        for (uint64_t i = 0; i < SCATTER_N; i++) {
            uint64_t at = i * SCATTER_GAP + SCATTER_SKEW;
            model_write(m, s->off + at, data + at, SCATTER_LEN);
        }
        break;
    case S_ZERO: model_zero(m, s->off, s->len); break;
    case S_TRUNC: model_truncate(m, s->off); break;
    case S_COMMIT: model_commit(m); break;
    case S_HYDRATE: model_hydrate(m); break;
    case S_DETACH: m->bsize = 0; break;
    default: break;
    }
}

/* Bytes [lo, hi) the step may leave half done when it fails. */
static void step_range(const struct step *s, const struct model *pre, uint64_t *lo, uint64_t *hi)
{
    *lo = *hi = 0;
    if (s->kind == S_WRITE || s->kind == S_WRITEV || s->kind == S_SCATTER ||
        s->kind == S_ZERO) {
        *lo = s->off / SECTOR * SECTOR;
        *hi = (s->off + s->len + SECTOR - 1) / SECTOR * SECTOR;
    } else if (s->kind == S_TRUNC) {
        *lo = tu_min_u64(pre->size, s->off);
        *hi = pre->size > s->off ? pre->size : s->off;
    }
}

/* States the disk may show: the last durable one and every later one. */
#define MAXSNAP 48
#define MAXMIX 48
struct snapset {
    struct model *pool[MAXSNAP];
    int n, cap;
    uint64_t mix_lo[MAXMIX], mix_hi[MAXMIX];    /* ranges of failed calls */
    int nmix;
};

/* The models of a snapset are allocated once (a run makes many). */
static void snaps_init(struct snapset *ss, int nmodels)
{
    if (ss->pool[0] == NULL) {
        for (int i = 0; i < nmodels; i++) {
            ss->pool[i] = malloc(sizeof(struct model));
            assert_non_null(ss->pool[i]);
        }
        ss->cap = nmodels;
    }
    ss->n = 0;
    ss->nmix = 0;
}

static void snaps_free(struct snapset *ss)
{
    for (int i = 0; i < MAXSNAP; i++) {
        free(ss->pool[i]);
        ss->pool[i] = NULL;
    }
}

static void snaps_push(struct snapset *ss, const struct model *m)
{
    assert_true(ss->n < ss->cap);
    memcpy(ss->pool[ss->n++], m, sizeof(*m));
}

static void snaps_reset(struct snapset *ss, const struct model *m)
{
    ss->n = 0;
    ss->nmix = 0;
    snaps_push(ss, m);
}

static void snaps_add_mix(struct snapset *ss, uint64_t lo, uint64_t hi)
{
    if (lo >= hi)
        return;
    assert_true(ss->nmix < MAXMIX);
    ss->mix_lo[ss->nmix] = lo;
    ss->mix_hi[ss->nmix] = hi;
    ss->nmix++;
}

/* Checks what an open handle shows against the states of ss: the size is
 * one of theirs; every sector is that sector of one of them, or, inside a
 * failed call's range, every byte is that byte of one of them.  false and
 * a reason in why on a mismatch. */
static bool view_matches(addcow_image *img, const struct snapset *ss, char *why, size_t nwhy)
{
    int64_t size = addcow_get_size(img);
    bool size_ok = false;
    for (int j = 0; j < ss->n; j++)
        size_ok |= (int64_t)ss->pool[j]->size == size;
    if (!size_ok) {
        snprintf(why, nwhy, "size %" PRId64 " is no size the disk had since the last "
                 "durable point", size);
        return false;
    }
    unsigned char *buf = malloc((size_t)size + 1);
    assert_non_null(buf);
    int64_t got = addcow_pread(img, buf, (size_t)size, 0);
    if (got != size) {
        snprintf(why, nwhy, "reading the disk returned %" PRId64 ": %s", got,
                 addcow_last_error());
        free(buf);
        return false;
    }
    for (uint64_t s = 0; s < (uint64_t)size / SECTOR; s++) {
        const unsigned char *p = buf + s * SECTOR;
        bool ok = false;
        for (int j = 0; j < ss->n && !ok; j++)
            ok = (s + 1) * SECTOR <= ss->pool[j]->size &&
                 memcmp(p, ss->pool[j]->buf + s * SECTOR, SECTOR) == 0;
        bool in_mix = false;
        for (int k = 0; k < ss->nmix; k++)
            in_mix |= s * SECTOR < ss->mix_hi[k] && (s + 1) * SECTOR > ss->mix_lo[k];
        if (!ok && in_mix) {
            ok = true;
            for (unsigned b = 0; b < SECTOR && ok; b++) {
                bool byte_ok = false;
                for (int j = 0; j < ss->n && !byte_ok; j++)
                    byte_ok = s * SECTOR + b < ss->pool[j]->size &&
                              p[b] == ss->pool[j]->buf[s * SECTOR + b];
                ok = byte_ok;
            }
        }
        if (!ok) {
            snprintf(why, nwhy, "sector %" PRIu64 " (offset %" PRIu64 ") holds bytes of no "
                     "state since the last durable point (%d states)", s, s * SECTOR, ss->n);
            free(buf);
            return false;
        }
    }
    free(buf);
    return true;
}

/* A memfs holding the durable bytes of every file of fs: the files as a
 * crash right now would leave them. */
static struct memfs *durable_copy(struct memfs *fs)
{
    struct memfs *c = memfs_new();
    assert_non_null(c);
    for (size_t i = 0; i < memfs_count(fs); i++) {
        char *name = memfs_name_at(fs, i);
        assert_non_null(name);
        if (memfs_exists(fs, name) == 2) {
            assert_int_equal(memfs_mkdir(c, name), 0);
        } else {
            size_t len = 0;
            unsigned char *d = memfs_get_durable(fs, name, &len);
            assert_non_null(d);
            assert_int_equal(memfs_put(c, name, d, len), 0);
            free(d);
        }
        free(name);
    }
    return c;
}

/* ---- one run of the workload ------------------------------------------------ */

/* What to break in a run: the nth backend operation among the kinds in
 * mask (mode, err), or the nth counted allocation (alloc_nth). */
struct fault_spec {
    enum fmode mode;
    int err;
    unsigned mask;
    uint64_t nth;
    uint64_t alloc_nth;
    size_t max_io;              /* memfs_set_max_io for the whole run */
};

struct stats {
    unsigned runs;              /* runs in which the fault was injected */
    unsigned failed;            /* calls that returned the fault */
    unsigned absorbed;          /* faults a call absorbed and still succeeded */
    unsigned crash_checks;
    unsigned retries;
    unsigned not_applicable;    /* short transfer of one byte: nothing to cut */
    uint64_t per_kind[NKINDS];  /* faults injected, by operation kind */
};

struct counts {
    uint64_t ops[NKINDS];
    uint64_t total;
    uint64_t allocs;
};

struct run {
    struct memfs *fs;
    addcow_options *o;
    addcow_image *img;
    struct model *m, *want;
    struct snapset *ss;         /* states since the last durable point */
    struct snapset *local;      /* scratch: before and after one call */
    bool created;
    bool adopt;                 /* a close failed: the next open takes what is there */
    unsigned char *data, *rbuf;
    const struct fault_spec *f;
    int err;                    /* the errno a failure must carry */
    char ctx[512];
    struct stats *st;
};

/* Reused by every run (a run is short; these are large). */
static struct snapset g_ss, g_local;
static struct model *g_m, *g_want;
static unsigned char *g_data, *g_rbuf;

static void globals_init(void)
{
    snaps_init(&g_ss, MAXSNAP);
    snaps_init(&g_local, 2);
    if (g_m == NULL) {
        g_m = malloc(sizeof(struct model));
        g_want = malloc(sizeof(struct model));
        g_data = malloc(MAXDISK);
        g_rbuf = malloc(MAXDISK);
        assert_true(g_m && g_want && g_data && g_rbuf);
    }
}

static int globals_free(void **state)
{
    snaps_free(&g_ss);
    snaps_free(&g_local);
    free(g_m);
    free(g_want);
    free(g_data);
    free(g_rbuf);
    g_m = g_want = NULL;
    g_data = g_rbuf = NULL;
    return tu_free_strings(state);
}

static const char *spec_name(const struct fault_spec *f)
{
    if (f->alloc_nth > 0)
        return "ENOMEM";
    if (f->max_io > 0)
        return "max_io";
    switch (f->mode) {
    case FM_NONE: return "clean";
    case FM_EINTR: return "EINTR";
    case FM_SHORT: return "short transfer";
    case FM_ERR: return f->err == EIO ? "EIO" : f->err == ENOSPC ? "ENOSPC" : "error";
    }
    return "?";
}

/* Faults a call may absorb and still succeed, because the operation only
 * guards against a mistake that a later step catches anyway:
 *  - create's early "does the add-cow file exist?" open (the final
 *    rename_noreplace refuses an existing file atomically);
 *  - create's "is the image file the backing file?" check (open and
 *    identity of both files): open refuses such an image later;
 *  - truncate's look at the image file's length when shrinking (a longer
 *    image file is allowed, and grow cuts it back before extending).
 * Anything else absorbed is a fault lost. */
static bool absorb_allowed(enum step_kind k, unsigned op, const char *file)
{
    if (k == S_CREATE && op == MEMFS_OP_OPEN && strcmp(file, W_ADDCOW) == 0)
        return true;
    if (k == S_CREATE && (op == MEMFS_OP_OPEN || op == MEMFS_OP_IDENTITY) &&
        (strcmp(file, W_BACK) == 0 || strcmp(file, W_IMAGE) == 0))
        return true;
    if (k == S_TRUNC && op == MEMFS_OP_SIZE && strcmp(file, W_IMAGE) == 0)
        return true;
    return false;
}

/* The message names the call, the errno, and (file != NULL) the file. */
static void check_message(const char *ctx, const char *call, int err, const char *file)
{
    const char *msg = addcow_last_error();
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "%s: ", call);
    if (strncmp(msg, prefix, strlen(prefix)) != 0)
        fail_msg("%s: message does not start with '%s': '%s'", ctx, prefix, msg);
    if (strstr(msg, strerror(err)) == NULL)
        fail_msg("%s: message does not say '%s': '%s'", ctx, strerror(err), msg);
    if (file == NULL)
        return;
    bool named = strstr(msg, file) != NULL;
    size_t fl = strlen(file);
    if (!named && fl > 4 && strcmp(file + fl - 4, ".tmp") == 0)
        named = strstr(msg, W_ADDCOW) != NULL;     /* create's temporary file */
    if (!named)
        fail_msg("%s: message does not name '%s': '%s'", ctx, file, msg);
}

/* Walks the disk with block_status and compares every run with the model. */
static int status_walk(struct run *r, const struct model *m)
{
    for (uint64_t pos = 0; pos < m->size;) {
        uint64_t run = 0;
        int f = LIB(addcow_block_status(r->img, pos, m->size - pos, &run));
        if (f < 0)
            return f;
        unsigned ef = model_flags(m, pos);
        uint64_t erun = model_run(m, pos, m->size);
        if ((unsigned)f != ef || run != erun)
            fail_msg("%s: block_status at %" PRIu64 ": flags %d run %" PRIu64
                     ", expected flags %u run %" PRIu64, r->ctx, pos, f, run, ef, erun);
        pos += run;
    }
    return 0;
}

/* Performs one step; returns the call's result (< 0: it failed).  What it
 * returns is compared with m (the state before the step). */
static int64_t do_step(struct run *r, const struct step *s, const struct model *m)
{
    int64_t ret = 0;
    switch (s->kind) {
    case S_OPTS:
        r->o = LIB(addcow_options_new());
        if (r->o == NULL)
            return -ENOMEM;
        ac_options_set_backend_ops(r->o, &W.ops);
        return 0;
    case S_CREATE:
        return LIB(addcow_create(W_ADDCOW, s->len, "base.raw", "disk.raw", r->o));
    case S_OPEN: {
        addcow_image *img = (addcow_image *)(uintptr_t)1;
        ret = LIB(addcow_open(W_ADDCOW, ADDCOW_OPEN_RDWR, r->o, &img));
        if (ret < 0 && img != NULL)
            fail_msg("%s: a failed open left *out = %p", r->ctx, (void *)img);
        if (ret == 0)
            r->img = img;
        return ret;
    }
    case S_CLOSE:
        ret = LIB(addcow_close(r->img));
        r->img = NULL;
        return ret;
    case S_WRITE:
        ret = LIB(addcow_pwrite(r->img, r->data, s->len, s->off));
        if (ret >= 0 && ret != (int64_t)s->len)
            fail_msg("%s: pwrite returned %" PRId64, r->ctx, ret);
        return ret < 0 ? ret : 0;
    case S_SCATTER:
        for (uint64_t i = 0; i < SCATTER_N && ret >= 0; i++) {
            uint64_t at = i * SCATTER_GAP + SCATTER_SKEW;
            ret = LIB(addcow_pwrite(r->img, r->data + at, SCATTER_LEN, s->off + at));
            if (ret >= 0 && ret != SCATTER_LEN)
                fail_msg("%s: pwrite returned %" PRId64, r->ctx, ret);
        }
        return ret < 0 ? ret : 0;
    case S_WRITEV: {
        struct iovec v[20];
        uint64_t piece = s->len / 20;
        for (int i = 0; i < 20; i++) {
            v[i].iov_base = r->data + i * piece;
            v[i].iov_len = i == 19 ? (size_t)(s->len - 19 * piece) : (size_t)piece;
        }
        ret = LIB(addcow_pwritev(r->img, v, 20, s->off));
        if (ret >= 0 && ret != (int64_t)s->len)
            fail_msg("%s: pwritev returned %" PRId64, r->ctx, ret);
        return ret < 0 ? ret : 0;
    }
    case S_READ:
    case S_READV: {
        uint64_t len = tu_min_u64(s->len, m->size - s->off);
        memset(r->rbuf, 0xA5, MAXDISK);
        if (s->kind == S_READ) {
            ret = LIB(addcow_pread(r->img, r->rbuf, len, s->off));
        } else {
            struct iovec v[24];
            uint64_t done = 0;
            for (int i = 0; i < 24; i++) {
                uint64_t n = i == 23 ? len - done
                                     : tu_min_u64(len - done, 37 + (uint64_t)i * 311);
                v[i].iov_base = r->rbuf + done;
                v[i].iov_len = (size_t)n;
                done += n;
            }
            ret = LIB(addcow_preadv(r->img, v, 24, s->off));
        }
        if (ret < 0)
            return ret;
        if (ret != (int64_t)len)
            fail_msg("%s: read returned %" PRId64 ", expected %" PRIu64, r->ctx, ret, len);
        for (uint64_t i = 0; i < len; i++)
            if (r->rbuf[i] != m->buf[s->off + i])
                fail_msg("%s: read: byte %" PRIu64 " is 0x%02x, expected 0x%02x", r->ctx,
                         s->off + i, r->rbuf[i], m->buf[s->off + i]);
        return 0;
    }
    case S_ZERO:
        return LIB(addcow_write_zeroes(r->img, s->off, s->len, s->arg));
    case S_FLUSH:
        return LIB(addcow_flush(r->img));
    case S_TRUNC:
        return LIB(addcow_truncate(r->img, s->off));
    case S_STATUS:
        return status_walk(r, m);
    case S_ALLOC:
        ret = LIB(addcow_get_allocated_bytes(r->img));
        if (ret >= 0 && ret != (int64_t)model_allocated(m))
            fail_msg("%s: allocated bytes %" PRId64 ", expected %" PRIu64, r->ctx, ret,
                     model_allocated(m));
        return ret < 0 ? ret : 0;
    case S_HYDRATE:
        return LIB(addcow_hydrate(r->img, 0, 0, NULL, NULL));
    case S_COMMIT:
        return LIB(addcow_commit(r->img, NULL, NULL));
    case S_DETACH:
        ret = LIB(addcow_detach(r->img));
        if (ret == 0 && addcow_get_backing_file(r->img) != NULL)
            fail_msg("%s: detach left a backing file", r->ctx);
        return ret;
    }
    return -EINVAL;
}

/* A crash right now: the durable bytes must open and show, sector by
 * sector, states since the last durable point (ss). */
static void check_crash_view(struct run *r)
{
    char why[256];
    struct memfs *c = durable_copy(r->fs);
    addcow_options *o = memfs_options(c);
    addcow_image *img = NULL;
    assert_non_null(o);
    int rc = addcow_open(W_ADDCOW, ADDCOW_OPEN_RDONLY, o, &img);
    if (rc != 0)
        fail_msg("%s: after a crash the image does not open: %d %s", r->ctx, rc,
                 addcow_last_error());
    if (!view_matches(img, r->ss, why, sizeof(why)))
        fail_msg("%s: after a crash: %s", r->ctx, why);
    assert_int_equal(addcow_close(img), 0);
    assert_int_equal(memfs_open_handles(c), 0);
    addcow_options_free(o);
    memfs_free(c);
    r->st->crash_checks++;
}

/* After a failed close, on the next open: check what is there against the
 * states since the last durable point, and take it as the model. */
static void adopt_state(struct run *r)
{
    char why[256];
    if (!view_matches(r->img, r->ss, why, sizeof(why)))
        fail_msg("%s: reopened after a failed close: %s", r->ctx, why);
    struct model *m = r->m;
    uint64_t bsize = m->bsize;
    memset(m, 0, sizeof(*m));
    m->bsize = bsize;
    m->size = (uint64_t)addcow_get_size(r->img);
    assert_int_equal(addcow_pread(r->img, m->buf, m->size, 0), (int64_t)m->size);
    for (uint64_t pos = 0; pos < m->size;) {
        uint64_t run;
        int f = addcow_block_status(r->img, pos, m->size - pos, &run);
        assert_true(f >= 0);
        if (f & ADDCOW_STATUS_ALLOCATED)
            model_alloc_range(m, pos, run);
        pos += run;
    }
    snaps_push(r->ss, m);
    r->adopt = false;
}

/* Checks after a call failed with the injected fault, then retries it. */
static void after_failure(struct run *r, const struct step *s, int64_t ret, bool io_hit,
                          const char *fname, unsigned files0, size_t names0)
{
    const struct fault_spec *f = r->f;
    if (f->alloc_nth == 0 && (f->mode == FM_EINTR || f->mode == FM_SHORT || f->max_io > 0))
        fail_msg("%s: the %s was not retried: the call failed with %" PRId64 ": %s",
                 r->ctx, spec_name(f), ret, addcow_last_error());
    if (ret != -r->err)
        fail_msg("%s: returned %" PRId64 " (%s), expected -%s: %s", r->ctx, ret,
                 strerror((int)-ret), strerror(r->err), addcow_last_error());
    if (s->kind != S_OPTS)
        check_message(r->ctx, step_call(s->kind), r->err, io_hit ? fname : NULL);
    r->st->failed++;

    /* What each call leaves behind when it fails. */
    if (s->kind == S_OPTS) {
        assert_null(r->o);
    } else if (s->kind == S_CREATE) {
        if (memfs_exists(r->fs, W_ADDCOW))
            fail_msg("%s: a failed create left '%s'", r->ctx, W_ADDCOW);
        if (memfs_count(r->fs) != names0) {
            char *extra = memfs_name_at(r->fs, memfs_count(r->fs) - 1);
            print_message("# %s: left behind: %s\n", r->ctx, extra);
            free(extra);
            fail_msg("%s: a failed create left %zu files", r->ctx, memfs_count(r->fs) - names0);
        }
    } else if (s->kind == S_CLOSE) {
        r->adopt = true;        /* what reached the disk is checked on reopen */
    } else if (s->kind != S_OPEN) {
        /* The handle shows the state before the call or after it (a
         * failed call may have happened in part, inside its range). */
        char why[256];
        uint64_t lo, hi;
        step_range(s, r->m, &lo, &hi);
        r->local->n = 0;
        r->local->nmix = 0;
        snaps_push(r->local, r->m);
        snaps_push(r->local, r->want);
        snaps_add_mix(r->local, lo, hi);
        if (!view_matches(r->img, r->local, why, sizeof(why)))
            fail_msg("%s: after the failure the handle shows: %s", r->ctx, why);
    }
    if (s->kind == S_OPEN || s->kind == S_CREATE || s->kind == S_CLOSE) {
        /* Nothing half open stays open. */
        unsigned want_files = s->kind == S_CLOSE ? 0 : files0;
        if (W.open_files != want_files)
            fail_msg("%s: %u files open after the failed call, expected %u", r->ctx,
                     W.open_files, want_files);
    }
    if (r->created && s->kind != S_CREATE) {
        /* A crash right after the failure. */
        uint64_t lo, hi;
        step_range(s, r->m, &lo, &hi);
        int n0 = r->ss->n, mix0 = r->ss->nmix;
        snaps_push(r->ss, r->want);
        snaps_add_mix(r->ss, lo, hi);
        check_crash_view(r);
        r->ss->n = n0;
        r->ss->nmix = mix0;
    }
    if (s->kind == S_CLOSE)
        return;                 /* nothing to retry: the handle is gone */
    /* The handle is usable: with the fault gone, the same call succeeds. */
    r->st->retries++;
    snprintf(r->ctx + strlen(r->ctx), sizeof(r->ctx) - strlen(r->ctx), ", retried");
    ret = do_step(r, s, r->m);
    if (ret < 0)
        fail_msg("%s: the call failed again with the fault gone: %" PRId64 " %s", r->ctx,
                 ret, addcow_last_error());
}

/* Runs the workload with fault f, checking as it goes; counts the
 * operations and allocations of a run into out (if not NULL). */
static void run_workload(const struct fault_spec *f, struct stats *st, struct counts *out)
{
    struct run R, *r = &R;
    memset(r, 0, sizeof(*r));
    globals_init();
    r->fs = memfs_new();
    assert_non_null(r->fs);
    r->m = g_m;
    r->want = g_want;
    r->data = g_data;
    r->rbuf = g_rbuf;
    r->ss = &g_ss;
    r->local = &g_local;
    r->ss->n = r->ss->nmix = 0;
    r->f = f;
    r->err = f->alloc_nth > 0 ? ENOMEM : f->err;
    r->st = st;
    model_init(r->m);
    backing_bytes(r->data);
    assert_int_equal(memfs_put(r->fs, W_BACK, r->data, BACKING_LEN), 0);
    if (f->max_io > 0)
        memfs_set_max_io(r->fs, f->max_io);
    fw_setup(r->fs);
    fw_arm(f->mask, f->nth, f->mode, f->err);
    untrack_all();
    alloc_reset(f->alloc_nth);
    uint64_t index = f->alloc_nth > 0 ? f->alloc_nth : f->nth;

    for (size_t i = 0; i < NSTEPS; i++) {
        const struct step *s = &workload[i];
        snprintf(r->ctx, sizeof(r->ctx), "%s fault #%" PRIu64 ", step %zu (%s)",
                 spec_name(f), index, i, step_call(s->kind));
        if (s->kind == S_WRITE || s->kind == S_WRITEV || s->kind == S_SCATTER)
            tu_fill_pattern(r->data, s->len, s->arg, s->off);
        memcpy(r->want, r->m, sizeof(*r->m));
        model_step(r->want, s, r->data);

        uint64_t hits0 = W.hits, afail0 = alloc_failed;
        unsigned files0 = W.open_files;
        size_t names0 = memfs_count(r->fs);
        int64_t ret = do_step(r, s, r->m);
        bool io_hit = W.hits > hits0;
        bool mem_hit = alloc_failed > afail0;
        unsigned op = W.hit_op;
        char fname[512];
        snprintf(fname, sizeof(fname), "%s", io_hit ? W.hit_name : "");
        if (io_hit || mem_hit) {
            st->runs++;
            if (io_hit)
                st->per_kind[kind_index(op)]++;
            snprintf(r->ctx + strlen(r->ctx), sizeof(r->ctx) - strlen(r->ctx),
                     " [%s%s%s%s]", io_hit ? memfs_op_name(op) : "an allocation",
                     io_hit ? " of '" : "", fname, io_hit ? "'" : "");
        }
        if (ret >= 0 && (io_hit || mem_hit) && f->mode == FM_ERR) {
            st->absorbed++;
            if (!absorb_allowed(s->kind, op, fname))
                fail_msg("%s: the injected %s was absorbed: the call succeeded", r->ctx,
                         strerror(f->err));
            print_message("# %s: absorbed (a check that a later step repeats)\n", r->ctx);
        } else if (ret >= 0 && mem_hit) {
            st->absorbed++;
            print_message("# %s: the failed allocation was absorbed (the call succeeded, "
                          "with the right results)\n", r->ctx);
        }
        if (ret < 0) {
            if (!io_hit && !mem_hit)
                fail_msg("%s: failed with %" PRId64 " (%s), but no fault was injected",
                         r->ctx, ret, addcow_last_error());
            after_failure(r, s, ret, io_hit, fname, files0, names0);
        }

        /* The call succeeded (maybe on the retry). */
        if (s->kind == S_CREATE) {
            r->created = true;
            snaps_reset(r->ss, r->want);
        }
        if (s->kind == S_CLOSE && r->adopt)
            continue;           /* the next open shows what is there */
        memcpy(r->m, r->want, sizeof(*r->m));
        if (s->kind == S_OPEN && r->adopt)
            adopt_state(r);
        if (step_durable(s->kind))
            snaps_reset(r->ss, r->m);
        else if (step_mutates(s->kind))
            snaps_push(r->ss, r->m);
    }

    /* The counts of the workload alone; no fault in the checks below. */
    if (out != NULL) {
        memset(out, 0, sizeof(*out));
        for (unsigned k = 0; k < NKINDS; k++) {
            out->ops[k] = W.counts[k];
            out->total += W.counts[k];
        }
        out->allocs = alloc_seen;
    }
    if (f->mode == FM_EINTR && W.hits != 1)
        fail_msg("%s fault #%" PRIu64 ": injected %" PRIu64 " times, expected once",
                 spec_name(f), index, W.hits);
    if (f->mode == FM_SHORT && W.hits == 0)
        st->not_applicable++;
    fw_arm(0, 0, FM_NONE, 0);
    alloc_reset(0);

    /* The end: everything closed, nothing leaked; a reopen shows the model
     * (or, after a failed last close, a state since the last durable
     * point). */
    snprintf(r->ctx, sizeof(r->ctx), "%s fault #%" PRIu64 ", at the end", spec_name(f), index);
    if (W.open_files != 0 || memfs_open_handles(r->fs) != 0)
        fail_msg("%s: %u files still open", r->ctx, W.open_files);
    addcow_image *img = NULL;
    int rc = addcow_open(W_ADDCOW, ADDCOW_OPEN_RDONLY, r->o, &img);
    if (rc != 0)
        fail_msg("%s: reopen: %d %s", r->ctx, rc, addcow_last_error());
    r->img = img;
    if (r->adopt) {
        adopt_state(r);
    } else {
        char why[256];
        r->local->n = 0;
        r->local->nmix = 0;
        snaps_push(r->local, r->m);
        if (!view_matches(img, r->local, why, sizeof(why)))
            fail_msg("%s: reopened: %s", r->ctx, why);
        assert_int_equal(status_walk(r, r->m), 0);
        assert_int_equal(addcow_get_allocated_bytes(img), (int64_t)model_allocated(r->m));
        assert_null(addcow_get_backing_file(img));
    }
    assert_int_equal(addcow_close(img), 0);
    r->img = NULL;
    addcow_options_free(r->o);
    if (W.open_files != 0 || memfs_open_handles(r->fs) != 0)
        fail_msg("%s: %u files still open", r->ctx, W.open_files);
    size_t bytes;
    unsigned live = live_library_blocks(&bytes);
    if (live != 0)
        fail_msg("%s: %u blocks (%zu bytes) that the library allocated were never freed",
                 r->ctx, live, bytes);
    memfs_free(r->fs);
    fw_teardown();
}

/* ---- the tests ---------------------------------------------------------------- */

static struct counts clean;
static bool have_clean;

static void get_clean_counts(void)
{
    if (have_clean)
        return;
    struct fault_spec f = { .mode = FM_NONE };
    struct stats st;
    memset(&st, 0, sizeof(st));
    run_workload(&f, &st, &clean);
    assert_int_equal(st.failed, 0);
    assert_int_equal(st.runs, 0);
    have_clean = true;
}

/* Every index at scale 1; at a smaller scale, every k-th from a random
 * start (the seed is printed). */
static uint64_t index_stride(uint64_t *start, const char *what)
{
    unsigned s = tu_scale(1000);
    uint64_t k = s >= 1000 ? 1 : (1000 + s - 1) / s;
    *start = 1;
    if (k > 1) {
        uint64_t seed = tu_seed(what);
        *start = seed % k + 1;
    }
    return k;
}

static void test_clean_run(void **state)
{
    (void)state;
    get_clean_counts();
    char line[512];
    int n = snprintf(line, sizeof(line), "# clean run: %" PRIu64 " backend operations (",
                     clean.total);
    bool first = true;
    for (unsigned k = 0; k < NKINDS; k++)
        if (clean.ops[k]) {
            n += snprintf(line + n, sizeof(line) - (size_t)n, "%s%s %" PRIu64,
                          first ? "" : ", ", memfs_op_name(1u << k), clean.ops[k]);
            first = false;
        }
    snprintf(line + n, sizeof(line) - (size_t)n, "), %" PRIu64 " library allocations\n",
             clean.allocs);
    print_message("%s", line);
    /* The workload reaches every kind of operation (but unlink: the library
     * unlinks only to clean up after a failure). */
    for (unsigned k = 0; k < NKINDS; k++)
        if (!clean.ops[k] && (1u << k) != MEMFS_OP_UNLINK)
            fail_msg("the workload never does a '%s'", memfs_op_name(1u << k));
    assert_true(clean.allocs > 20);
}

#define EINTR_KINDS (MEMFS_OP_OPEN | MEMFS_OP_READ | MEMFS_OP_WRITE | MEMFS_OP_FLUSH | \
                     MEMFS_OP_TRUNCATE | MEMFS_OP_PUNCH | MEMFS_OP_LOCK)

static void fault_every_op(enum fmode mode, int err, unsigned mask)
{
    get_clean_counts();
    uint64_t total = 0, start, tried = 0;
    for (unsigned k = 0; k < NKINDS; k++)
        if (mask & (1u << k))
            total += clean.ops[k];
    struct fault_spec probe = { .mode = mode, .err = err };
    uint64_t step = index_stride(&start, spec_name(&probe));
    struct stats st;
    memset(&st, 0, sizeof(st));
    for (uint64_t n = start; n <= total; n += step) {
        struct fault_spec f = { .mode = mode, .err = err, .mask = mask, .nth = n };
        run_workload(&f, &st, NULL);
        tried++;
    }
    char kinds[512];
    int k = 0;
    kinds[0] = '\0';
    for (unsigned i = 0; i < NKINDS; i++)
        if (st.per_kind[i])
            k += snprintf(kinds + k, sizeof(kinds) - (size_t)k, "%s%s %" PRIu64,
                          k ? ", " : "", memfs_op_name(1u << i), st.per_kind[i]);
    print_message("# %s: %" PRIu64 " of %" PRIu64 " operations faulted (%s): %u calls "
                  "failed and were retried, %u absorbed, %u one-byte transfers not cut, "
                  "%u crash views checked\n", spec_name(&probe), tried, total, kinds,
                  st.failed, st.absorbed, st.not_applicable, st.crash_checks);
    if (mode == FM_ERR) {
        /* Every fault was met: the call failed, or absorbed it (listed). */
        assert_int_equal(st.runs, tried);
        assert_int_equal(st.failed + st.absorbed, st.runs);
    } else {
        assert_int_equal(st.failed, 0);
        assert_int_equal(st.runs + st.not_applicable, tried);
    }
}

static void test_faults_eio(void **state)
{
    (void)state;
    fault_every_op(FM_ERR, EIO, MEMFS_OP_ALL);
}

static void test_faults_enospc(void **state)
{
    (void)state;
    fault_every_op(FM_ERR, ENOSPC, MEMFS_OP_ALL);
}

/* EINTR on every operation whose system call may be interrupted (open,
 * pread/pwrite, fdatasync, ftruncate, fallocate, fcntl(F_OFD_SETLK)). */
static void test_faults_eintr(void **state)
{
    (void)state;
    fault_every_op(FM_EINTR, 0, EINTR_KINDS);
}

static void test_faults_short(void **state)
{
    (void)state;
    fault_every_op(FM_SHORT, 0, MEMFS_OP_READ | MEMFS_OP_WRITE);
}

/* Every transfer of the run cut to a few bytes at a time. */
static void test_short_everywhere(void **state)
{
    (void)state;
    static const size_t caps[] = { 1, 7, 1000 };
    for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
        struct fault_spec f = { .mode = FM_NONE, .max_io = caps[i] };
        struct stats st;
        memset(&st, 0, sizeof(st));
        run_workload(&f, &st, NULL);
        assert_int_equal(st.failed, 0);
    }
}

/* Each allocation of the workload fails in turn; with max_io, every
 * transfer is short too (the loops over short transfers allocate). */
static void alloc_failures(size_t max_io)
{
    struct fault_spec c = { .mode = FM_NONE, .max_io = max_io };
    struct counts cnt;
    struct stats st;
    memset(&st, 0, sizeof(st));
    run_workload(&c, &st, &cnt);
    uint64_t start, tried = 0;
    uint64_t step = index_stride(&start, "ENOMEM");
    for (uint64_t n = start; n <= cnt.allocs; n += step) {
        struct fault_spec f = { .mode = FM_NONE, .alloc_nth = n, .max_io = max_io };
        run_workload(&f, &st, NULL);
        tried++;
    }
    print_message("# ENOMEM%s: %" PRIu64 " of %" PRIu64 " allocations failed in turn: %u "
                  "calls failed with -ENOMEM and were retried, %u absorbed, %u crash views "
                  "checked; no leak\n", max_io ? " (short transfers)" : "", tried,
                  cnt.allocs, st.failed, st.absorbed, st.crash_checks);
    assert_true(cnt.allocs > 20);
    assert_int_equal(st.runs, tried);
    assert_int_equal(st.failed + st.absorbed, st.runs);
}

static void test_alloc_failures(void **state)
{
    (void)state;
    alloc_failures(0);
}

static void test_alloc_failures_short_io(void **state)
{
    (void)state;
    alloc_failures(1000);
}

/* The checks above can fail: a flushed write lost in the durable files,
 * and a block the library never frees, are both caught. */
static void test_checks_catch(void **state)
{
    (void)state;
    char why[256];
    struct memfs *fs = memfs_new();
    addcow_options *o = memfs_options(fs);
    addcow_image *img = NULL;
    unsigned char d[SECTOR];
    assert_true(fs && o);
    globals_init();
    backing_bytes(g_data);
    assert_int_equal(memfs_put(fs, W_BACK, g_data, BACKING_LEN), 0);
    assert_int_equal(addcow_create(W_ADDCOW, DISK, "base.raw", "disk.raw", o), 0);
    assert_int_equal(addcow_open(W_ADDCOW, ADDCOW_OPEN_RDWR, o, &img), 0);
    tu_fill_pattern(d, SECTOR, 99, 0);
    assert_int_equal(addcow_pwrite(img, d, SECTOR, 9 * SECTOR), SECTOR);
    assert_int_equal(addcow_flush(img), 0);
    model_init(g_m);
    model_write(g_m, 9 * SECTOR, d, SECTOR);
    snaps_init(&g_ss, MAXSNAP);
    snaps_reset(&g_ss, g_m);
    assert_true(view_matches(img, &g_ss, why, sizeof(why)));
    assert_int_equal(addcow_close(img), 0);

    /* The bit of sector 9 lost from the durable add-cow file. */
    size_t len;
    unsigned char *acf = memfs_get_durable(fs, W_ADDCOW, &len);
    assert_non_null(acf);
    acf[TU_HDR_SIZE + 1] &= (unsigned char)~0x02;
    assert_int_equal(memfs_put(fs, W_ADDCOW, acf, len), 0);
    free(acf);
    struct memfs *c = durable_copy(fs);
    addcow_options *co = memfs_options(c);
    assert_int_equal(addcow_open(W_ADDCOW, ADDCOW_OPEN_RDONLY, co, &img), 0);
    assert_false(view_matches(img, &g_ss, why, sizeof(why)));
    assert_non_null(strstr(why, "sector 9 "));
    assert_int_equal(addcow_close(img), 0);
    addcow_options_free(co);
    memfs_free(c);
    addcow_options_free(o);
    memfs_free(fs);

    /* A library allocation not freed shows as live. */
    assert_int_equal(live_library_blocks(NULL), 0);
    char *p = LIB(strdup("leak"));
    assert_int_equal(live_library_blocks(NULL), 1);
    free(p);
    assert_int_equal(live_library_blocks(NULL), 0);
    /* And the n-th allocation does fail. */
    alloc_reset(2);
    void *a = LIB(malloc(10)), *b = LIB(malloc(10));
    assert_non_null(a);
    assert_null(b);
    free(a);
    alloc_reset(0);
}

/* ==== a full disk ========================================================== */

#define FD_CHUNK (256u * 1024)
#define FD_A_SIZE (16u << 20)       /* larger than the disk */
#define FD_B_SIZE (32u << 20)       /* its bitmap spans several 4 KiB pages */
#define FD_B_HOT (24u << 20)        /* a sector whose bits lie in a page never written */
#define FD_B_LEN (64u * 1024)
#define FD_MEMFS_BLOCKS 1024u       /* the capacity model: 4 MiB */

enum route_kind { RT_TMPFS, RT_LOOP, RT_MEMFS };

struct route {
    enum route_kind kind;
    const char *name;
    char dir[PATH_MAX];
    char loopdev[64];
    bool mounted;
    addcow_options *o;          /* NULL: the defaults (real files) */
    struct memfs *fs;           /* RT_MEMFS */
};

/* The mount, if any, comes off at exit too (before the scratch folder is
 * removed: atexit handlers run in reverse). */
static struct route *mounted_route;

static void route_unmount(struct route *rt)
{
    if (rt->mounted) {
        if (umount2(rt->dir, 0) != 0)
            umount2(rt->dir, MNT_DETACH);
        rt->mounted = false;
    }
    if (rt->loopdev[0] != '\0') {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "losetup -d %s 2>/dev/null", rt->loopdev);
        if (system(cmd) != 0)
            fprintf(stderr, "# could not detach %s\n", rt->loopdev);
        rt->loopdev[0] = '\0';
    }
}

static void unmount_at_exit(void)
{
    if (mounted_route != NULL)
        route_unmount(mounted_route);
}

static bool try_tmpfs(struct route *rt)
{
    snprintf(rt->dir, sizeof(rt->dir), "%s/tmpfs", tu_scratch());
    if (mkdir(rt->dir, 0700) != 0 && errno != EEXIST)
        return false;
    if (mount("tmpfs", rt->dir, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0700") != 0) {
        print_message("# full disk: cannot mount a tmpfs (%s)\n", strerror(errno));
        return false;
    }
    rt->mounted = true;
    rt->kind = RT_TMPFS;
    rt->name = "a 4 MiB tmpfs mounted by the test";
    return true;
}

static bool try_loop(struct route *rt)
{
    char img[PATH_MAX], cmd[PATH_MAX + 128];
    snprintf(img, sizeof(img), "%s/ext4.img", tu_scratch());
    snprintf(rt->dir, sizeof(rt->dir), "%s/loop", tu_scratch());
    if (mkdir(rt->dir, 0700) != 0 && errno != EEXIST)
        return false;
    int fd = open(img, O_CREAT | O_RDWR | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, 8 << 20) != 0) {
        if (fd >= 0)
            close(fd);
        return false;
    }
    close(fd);
    snprintf(cmd, sizeof(cmd), "losetup -f --show '%s' 2>/dev/null", img);
    FILE *p = popen(cmd, "r");
    if (p == NULL)
        return false;
    char dev[64] = "";
    if (fgets(dev, sizeof(dev), p) == NULL)
        dev[0] = '\0';
    pclose(p);
    dev[strcspn(dev, "\n")] = '\0';
    if (strncmp(dev, "/dev/", 5) != 0) {
        print_message("# full disk: no loop device (losetup)\n");
        return false;
    }
    snprintf(rt->loopdev, sizeof(rt->loopdev), "%s", dev);
    snprintf(cmd, sizeof(cmd), "mkfs.ext4 -q -F '%s' >/dev/null 2>&1", dev);
    if (system(cmd) != 0 || mount(dev, rt->dir, "ext4", MS_NOSUID | MS_NODEV, NULL) != 0) {
        print_message("# full disk: cannot make or mount ext4 on %s\n", dev);
        route_unmount(rt);
        return false;
    }
    rt->mounted = true;
    rt->kind = RT_LOOP;
    rt->name = "an 8 MiB ext4 loop file made by the test";
    return true;
}

static void use_memfs(struct route *rt)
{
    rt->kind = RT_MEMFS;
    rt->name = "memfs with a 4 MiB capacity model (ENOSPC once its blocks are used)";
    snprintf(rt->dir, sizeof(rt->dir), "/d");
    rt->fs = memfs_new();
    assert_non_null(rt->fs);
    fw_setup(rt->fs);
    W.cap_on = true;
    W.cap_limit = FD_MEMFS_BLOCKS;
    rt->o = addcow_options_new();
    assert_non_null(rt->o);
    ac_options_set_backend_ops(rt->o, &W.ops);
}

static void route_done(struct route *rt)
{
    if (rt->kind == RT_MEMFS) {
        assert_int_equal(W.open_files, 0);
        assert_int_equal(memfs_open_handles(rt->fs), 0);
        addcow_options_free(rt->o);
        memfs_free(rt->fs);
        fw_teardown();
    } else {
        route_unmount(rt);
        mounted_route = NULL;
    }
}

static const char *rpath(const struct route *rt, const char *name)
{
    return tu_str("%s/%s", rt->dir, name);
}

/* Makes the file's bytes [off, off + len) take disk space (rewriting what
 * they hold), as an earlier write would have. */
static void r_prealloc(struct route *rt, const char *path, uint64_t off, uint64_t len)
{
    if (rt->kind == RT_MEMFS) {
        uint64_t id = memfs_file_id(rt->fs, path);
        assert_true(id != 0);
        cap_room(id, off, len, true);
        return;
    }
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    unsigned char *b = malloc((size_t)len);
    assert_non_null(b);
    ssize_t n = pread(fd, b, (size_t)len, (off_t)off);
    assert_true(n >= 0);
    if ((uint64_t)n < len)
        memset(b + n, 0, (size_t)(len - (uint64_t)n));
    assert_int_equal(pwrite(fd, b, (size_t)len, (off_t)off), (ssize_t)len);
    assert_int_equal(fsync(fd), 0);
    free(b);
    close(fd);
}

/* Uses up every free block. */
static void r_fill(struct route *rt)
{
    if (rt->kind == RT_MEMFS) {
        W.cap_limit = W.cap_used;
        return;
    }
    int fd = open(rpath(rt, "filler"), O_CREAT | O_WRONLY | O_TRUNC, 0600);
    assert_true(fd >= 0);
    static unsigned char b[64 * 1024];
    memset(b, 0xF1, sizeof(b));
    size_t piece = sizeof(b);
    for (;;) {
        ssize_t n = write(fd, b, piece);
        if (n < 0 && errno == ENOSPC && piece > 512) {
            piece /= 2;
            continue;
        }
        if (n < 0) {
            assert_int_equal(errno, ENOSPC);
            break;
        }
    }
    fsync(fd);
    close(fd);
}

static void r_unfill(struct route *rt)
{
    if (rt->kind == RT_MEMFS)
        W.cap_limit = FD_MEMFS_BLOCKS;
    else
        unlink(rpath(rt, "filler"));
}

static void r_remove(struct route *rt, const char *path)
{
    if (rt->kind == RT_MEMFS)
        assert_int_equal(W.ops.unlink(&W.ops, path), 0);
    else
        assert_int_equal(unlink(path), 0);
}

static void r_file_size(struct route *rt, const char *path, uint64_t *len)
{
    if (rt->kind == RT_MEMFS) {
        unsigned char *b = memfs_get(rt->fs, path, (size_t *)len);
        assert_non_null(b);
        free(b);
    } else {
        int64_t n = tu_file_size(path);
        assert_true(n >= 0);
        *len = (uint64_t)n;
    }
}

/* Each sector of [off, off + len) reads zeros (never written) or the
 * pattern (seed, off): the data of a write that failed may or may not be
 * there, nothing else. */
static void check_old_or_new(addcow_image *img, uint64_t off, uint64_t len, uint32_t seed)
{
    unsigned char *got = malloc((size_t)len), *want = malloc((size_t)len);
    assert_true(got && want);
    tu_fill_pattern(want, (size_t)len, seed, off);
    assert_int_equal(addcow_pread(img, got, (size_t)len, off), (int64_t)len);
    for (uint64_t s = 0; s < len / SECTOR; s++) {
        const unsigned char *g = got + s * SECTOR;
        bool zero = true;
        for (unsigned i = 0; i < SECTOR; i++)
            zero &= g[i] == 0;
        if (!zero && memcmp(g, want + s * SECTOR, SECTOR) != 0)
            fail_msg("sector at %" PRIu64 " holds neither zeros nor the failed write's data",
                     off + s * SECTOR);
    }
    free(got);
    free(want);
}

static void check_pattern(addcow_image *img, uint64_t off, uint64_t len, uint32_t seed)
{
    unsigned char *got = malloc((size_t)len), *want = malloc((size_t)len);
    assert_true(got && want);
    tu_fill_pattern(want, (size_t)len, seed, off);
    assert_int_equal(addcow_pread(img, got, (size_t)len, off), (int64_t)len);
    if (memcmp(got, want, (size_t)len) != 0)
        fail_msg("data written at %" PRIu64 " (%" PRIu64 " bytes) is not there", off, len);
    free(got);
    free(want);
}

static int64_t write_pattern(addcow_image *img, uint64_t off, uint64_t len, uint32_t seed)
{
    unsigned char *b = malloc((size_t)len);
    assert_non_null(b);
    tu_fill_pattern(b, (size_t)len, seed, off);
    int64_t r = addcow_pwrite(img, b, (size_t)len, off);
    free(b);
    return r;
}

/* A: the image file fills the disk during writes.  The add-cow file's
 * bitmap already has its blocks, so flush needs no new space. */
static void full_disk_writes(struct route *rt)
{
    const char *acf = rpath(rt, "a.add-cow"), *raw = rpath(rt, "a.raw");
    addcow_image *img = NULL;
    uint64_t alen;
    assert_int_equal(addcow_create(acf, FD_A_SIZE, NULL, "a.raw", rt->o), 0);
    r_file_size(rt, acf, &alen);
    r_prealloc(rt, acf, 0, alen);
    assert_int_equal(addcow_open(acf, ADDCOW_OPEN_RDWR, rt->o, &img), 0);

    uint64_t ok = 0;
    int64_t r = 0;
    for (uint64_t c = 0; c < FD_A_SIZE / FD_CHUNK; c++) {
        r = write_pattern(img, c * FD_CHUNK, FD_CHUNK, (uint32_t)c + 1);
        if (r < 0)
            break;
        assert_int_equal(r, FD_CHUNK);
        ok++;
        if (c % 4 == 3)
            assert_int_equal(addcow_flush(img), 0);
    }
    print_message("# full disk (%s): %" PRIu64 " KiB written, then %s\n", rt->name,
                  ok * FD_CHUNK / 1024, r < 0 ? strerror((int)-r) : "no error");
    assert_int_equal(r, -ENOSPC);
    check_message("full disk write", "addcow_pwrite", ENOSPC, raw);
    assert_true(ok * FD_CHUNK >= (1u << 20));
    uint64_t failed_off = ok * FD_CHUNK;

    /* The handle goes on: flush works, what was written reads back,
     * overwriting allocated data works (no new space), the failed write
     * fails the same way again. */
    assert_int_equal(addcow_flush(img), 0);
    for (uint64_t c = 0; c < ok; c++)
        check_pattern(img, c * FD_CHUNK, FD_CHUNK, (uint32_t)c + 1);
    check_old_or_new(img, failed_off, FD_CHUNK, (uint32_t)ok + 1);
    assert_int_equal(write_pattern(img, 0, FD_CHUNK, 1000), FD_CHUNK);
    assert_int_equal(write_pattern(img, failed_off, FD_CHUNK, (uint32_t)ok + 1), -ENOSPC);
    check_message("full disk write again", "addcow_pwrite", ENOSPC, raw);
    assert_int_equal(addcow_flush(img), 0);
    assert_int_equal(addcow_close(img), 0);

    /* Nothing flushed is lost. */
    assert_int_equal(addcow_open(acf, ADDCOW_OPEN_RDONLY, rt->o, &img), 0);
    check_pattern(img, 0, FD_CHUNK, 1000);
    for (uint64_t c = 1; c < ok; c++)
        check_pattern(img, c * FD_CHUNK, FD_CHUNK, (uint32_t)c + 1);
    check_old_or_new(img, failed_off, FD_CHUNK, (uint32_t)ok + 1);
    assert_int_equal(addcow_close(img), 0);
    r_remove(rt, acf);
    r_remove(rt, raw);
}

/* B: the disk is full when flush has to give the bitmap a new block. */
static void full_disk_flush(struct route *rt)
{
    const char *acf = rpath(rt, "b.add-cow"), *raw = rpath(rt, "b.raw");
    addcow_image *img = NULL;
    assert_int_equal(addcow_create(acf, FD_B_SIZE, NULL, "b.raw", rt->o), 0);
    assert_int_equal(addcow_open(acf, ADDCOW_OPEN_RDWR, rt->o, &img), 0);
    assert_int_equal(write_pattern(img, 0, 4096, 1), 4096);
    assert_int_equal(addcow_flush(img), 0);             /* durable before the disk fills */

    /* The image file's blocks at FD_B_HOT exist; the bitmap's block for
     * them does not; then no block is left. */
    r_prealloc(rt, raw, FD_B_HOT, FD_B_LEN);
    r_fill(rt);
    assert_int_equal(write_pattern(img, FD_B_HOT, FD_B_LEN, 2), FD_B_LEN);
    int r = addcow_flush(img);
    print_message("# full disk (%s): flush needing a new bitmap block: %s\n", rt->name,
                  r < 0 ? strerror(-r) : "succeeded");
    assert_int_equal(r, -ENOSPC);
    check_message("bitmap flush on a full disk", "addcow_flush", ENOSPC, acf);
    assert_int_equal(addcow_flush(img), -ENOSPC);       /* consistently */
    check_pattern(img, 0, 4096, 1);                     /* the handle still reads */
    check_pattern(img, FD_B_HOT, FD_B_LEN, 2);
    assert_int_equal(addcow_close(img), -ENOSPC);       /* freed anyway */
    check_message("close on a full disk", "addcow_close", ENOSPC, acf);

    /* Reopened with the disk still full: the flushed write is there; the
     * unflushed one may be or not. */
    assert_int_equal(addcow_open(acf, ADDCOW_OPEN_RDONLY, rt->o, &img), 0);
    check_pattern(img, 0, 4096, 1);
    check_old_or_new(img, FD_B_HOT, FD_B_LEN, 2);
    assert_int_equal(addcow_close(img), 0);

    /* With space again, the image is writable and flushes. */
    r_unfill(rt);
    assert_int_equal(addcow_open(acf, ADDCOW_OPEN_RDWR, rt->o, &img), 0);
    assert_int_equal(write_pattern(img, FD_B_HOT, FD_B_LEN, 3), FD_B_LEN);
    assert_int_equal(addcow_flush(img), 0);
    assert_int_equal(addcow_close(img), 0);
    assert_int_equal(addcow_open(acf, ADDCOW_OPEN_RDONLY, rt->o, &img), 0);
    check_pattern(img, 0, 4096, 1);
    check_pattern(img, FD_B_HOT, FD_B_LEN, 3);
    assert_int_equal(addcow_close(img), 0);
    r_remove(rt, acf);
    r_remove(rt, raw);
}

static void full_disk(struct route *rt)
{
    print_message("# full disk: route: %s%s%s\n", rt->name, rt->kind == RT_MEMFS ? "" : " at ",
                  rt->kind == RT_MEMFS ? "" : rt->dir);
    full_disk_writes(rt);
    full_disk_flush(rt);
    route_done(rt);
}

/* A real file system that fills up: a tmpfs, else an ext4 loop file (both
 * need root), else the memfs capacity model.  AC_FULLDISK_ROUTE=tmpfs,
 * loop or memfs forces one. */
static void test_full_disk(void **state)
{
    (void)state;
    static struct route rt;
    static bool registered;
    memset(&rt, 0, sizeof(rt));
    const char *force = getenv("AC_FULLDISK_ROUTE");
    bool want_tmpfs = force == NULL || strcmp(force, "tmpfs") == 0;
    bool want_loop = force == NULL || strcmp(force, "loop") == 0;
    if (!registered) {
        tu_scratch();
        atexit(unmount_at_exit);
        registered = true;
    }
    mounted_route = &rt;
    bool real = false;
    if (geteuid() != 0) {
        print_message("# full disk: not root: no tmpfs or loop mount\n");
    } else {
        real = (want_tmpfs && try_tmpfs(&rt)) || (want_loop && try_loop(&rt));
    }
    if (!real) {
        mounted_route = NULL;
        use_memfs(&rt);
    }
    full_disk(&rt);
}

/* The same scenarios on the capacity model, always (the route above may
 * be a real file system). */
static void test_full_disk_memfs(void **state)
{
    (void)state;
    struct route rt;
    memset(&rt, 0, sizeof(rt));
    use_memfs(&rt);
    full_disk(&rt);
}

static int unmount_teardown(void **state)
{
    (void)state;
    if (mounted_route != NULL) {
        route_unmount(mounted_route);
        mounted_route = NULL;
    }
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checks_catch),
        cmocka_unit_test(test_clean_run),
        cmocka_unit_test(test_faults_eio),
        cmocka_unit_test(test_faults_enospc),
        cmocka_unit_test(test_faults_eintr),
        cmocka_unit_test(test_faults_short),
        cmocka_unit_test(test_short_everywhere),
        cmocka_unit_test(test_alloc_failures),
        cmocka_unit_test(test_alloc_failures_short_io),
        cmocka_unit_test(test_full_disk_memfs),
        cmocka_unit_test_teardown(test_full_disk, unmount_teardown),
    };
    tu_scratch();
    return cmocka_run_group_tests(tests, NULL, globals_free);
}
