/*
 * membackend.c: memfs, the in-memory, fault-injecting, recording backend
 * the tests plug into the library (see membackend.h).
 */
#include "config.h"

#include <errno.h>
#include <fnmatch.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "addcow.h"
#include "membackend.h"
#include "options.h"

#define MAX_RULES 8
#define NKINDS 11
/* identity id[0] of every memfs file: "memfs" */
#define MEMFS_DEVICE UINT64_C(0x6d656d6673)

struct mem_inode {
    uint64_t id;
    bool is_dir;
    unsigned char *data;        /* current bytes */
    size_t len, cap;
    unsigned char *ddata;       /* durable bytes: as of the last flush */
    size_t dlen;
    char *name;                 /* current name, or the last one once unlinked */
    bool linked;                /* a name points at it */
    unsigned nopen;             /* open handles */
};

struct mem_entry {
    char *name;
    struct mem_inode *ino;
};

struct mem_handle {
    struct ac_file base;        /* first: the library holds &base */
    struct memfs *fs;
    struct mem_inode *ino;
    unsigned flags;
    int lock;                   /* 0, AC_LOCK_SHARED or AC_LOCK_EXCLUSIVE */
    struct mem_handle *prev, *next;
};

struct fault_rule {
    bool used;
    unsigned ops;
    char *pattern;
    uint64_t nth, seen;
    bool sticky;
    int err;
};

struct memfs {
    struct ac_backend_ops ops;  /* first: an ops pointer leads back here */
    pthread_mutex_t mu;

    struct mem_entry *ents;
    size_t nents, cap_ents;
    struct mem_handle *handles;
    unsigned nhandles;
    uint64_t next_id;

    size_t max_io;
    bool punch_ok;

    uint64_t counts[NKINDS];
    struct fault_rule rules[MAX_RULES];
    uint64_t hits;
    bool have_last;
    unsigned last_op;
    char *last_name;
    uint64_t last_seq;

    bool recording;
    struct memfs_rec **recs;
    size_t nrecs, cap_recs;
};

static struct memfs *fs_of(const struct ac_backend_ops *ops)
{
    return (struct memfs *)(void *)((char *)(uintptr_t)ops - offsetof(struct memfs, ops));
}

static struct mem_handle *mh(struct ac_file *f)
{
    return (struct mem_handle *)(void *)f;
}

/* ---- inodes and names (fs->mu held) ------------------------------------ */

static struct mem_entry *find_entry(struct memfs *fs, const char *name)
{
    for (size_t i = 0; i < fs->nents; i++)
        if (strcmp(fs->ents[i].name, name) == 0)
            return &fs->ents[i];
    return NULL;
}

static struct mem_inode *find_linked_id(struct memfs *fs, uint64_t id)
{
    for (size_t i = 0; i < fs->nents; i++)
        if (fs->ents[i].ino->id == id)
            return fs->ents[i].ino;
    return NULL;
}

static void inode_free(struct mem_inode *ino)
{
    free(ino->data);
    free(ino->ddata);
    free(ino->name);
    free(ino);
}

static void inode_release(struct mem_inode *ino)
{
    if (!ino->linked && ino->nopen == 0)
        inode_free(ino);
}

/* Sets the current length; new bytes are zeros. */
static int inode_set_len(struct mem_inode *ino, size_t len)
{
    if (len > ino->cap) {
        size_t cap = ino->cap ? ino->cap : 4096;
        while (cap < len)
            cap = cap > SIZE_MAX / 2 ? len : cap * 2;
        unsigned char *d = realloc(ino->data, cap);
        if (d == NULL)
            return -ENOMEM;
        ino->data = d;
        ino->cap = cap;
    }
    if (len > ino->len)
        memset(ino->data + ino->len, 0, len - ino->len);
    ino->len = len;
    return 0;
}

static int inode_make_durable(struct mem_inode *ino)
{
    unsigned char *d = realloc(ino->ddata, ino->len ? ino->len : 1);
    if (d == NULL)
        return -ENOMEM;
    if (ino->len)
        memcpy(d, ino->data, ino->len);
    ino->ddata = d;
    ino->dlen = ino->len;
    return 0;
}

static struct mem_inode *inode_new(struct memfs *fs, uint64_t id, const char *name, bool dir)
{
    struct mem_inode *ino = calloc(1, sizeof(*ino));
    if (ino == NULL)
        return NULL;
    ino->name = strdup(name);
    if (ino->name == NULL) {
        free(ino);
        return NULL;
    }
    ino->id = id ? id : fs->next_id++;
    if (ino->id >= fs->next_id)
        fs->next_id = ino->id + 1;
    ino->is_dir = dir;
    return ino;
}

static int add_entry(struct memfs *fs, const char *name, struct mem_inode *ino)
{
    if (fs->nents == fs->cap_ents) {
        size_t cap = fs->cap_ents ? fs->cap_ents * 2 : 16;
        struct mem_entry *e = realloc(fs->ents, cap * sizeof(*e));
        if (e == NULL)
            return -ENOMEM;
        fs->ents = e;
        fs->cap_ents = cap;
    }
    char *n = strdup(name);
    if (n == NULL)
        return -ENOMEM;
    fs->ents[fs->nents].name = n;
    fs->ents[fs->nents].ino = ino;
    fs->nents++;
    ino->linked = true;
    return 0;
}

/* Removes the entry; releases its inode if nothing holds it. */
static void remove_entry(struct memfs *fs, struct mem_entry *e)
{
    struct mem_inode *ino = e->ino;
    free(e->name);
    size_t i = (size_t)(e - fs->ents);
    memmove(&fs->ents[i], &fs->ents[i + 1], (fs->nents - i - 1) * sizeof(*e));
    fs->nents--;
    ino->linked = false;
    inode_release(ino);
}

static int rename_entry(struct mem_entry *e, const char *to)
{
    char *n = strdup(to), *n2 = strdup(to);
    if (n == NULL || n2 == NULL) {
        free(n);
        free(n2);
        return -ENOMEM;
    }
    free(e->name);
    e->name = n;
    free(e->ino->name);
    e->ino->name = n2;
    return 0;
}

/* ---- accounting and faults (fs->mu held) -------------------------------- */

static unsigned kind_index(unsigned op)
{
    return (unsigned)__builtin_ctz(op);
}

static uint64_t total_ops(struct memfs *fs)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < NKINDS; i++)
        n += fs->counts[i];
    return n;
}

static bool name_matches(const char *pattern, const char *a, const char *b)
{
    if (pattern == NULL)
        return true;
    return (a != NULL && fnmatch(pattern, a, 0) == 0) ||
           (b != NULL && fnmatch(pattern, b, 0) == 0);
}

/* Counts one operation and applies the fault rules: 0 or -errno. */
static int account(struct memfs *fs, unsigned op, const char *name, const char *name2)
{
    int fail = 0;
    fs->counts[kind_index(op)]++;
    for (int i = 0; i < MAX_RULES; i++) {
        struct fault_rule *r = &fs->rules[i];
        if (!r->used || !(r->ops & op) || !name_matches(r->pattern, name, name2))
            continue;
        r->seen++;
        bool hit = r->nth == 0 || r->seen == r->nth || (r->sticky && r->seen > r->nth);
        if (hit && fail == 0)
            fail = r->err > 0 ? r->err : EIO;
    }
    if (fail == 0)
        return 0;
    fs->hits++;
    fs->have_last = true;
    fs->last_op = op;
    fs->last_seq = total_ops(fs);
    free(fs->last_name);
    fs->last_name = strdup(name != NULL ? name : "");
    return -fail;
}

/* ---- recording (fs->mu held) ------------------------------------------- */

static void rec_free(struct memfs_rec *r)
{
    if (r == NULL)
        return;
    free(r->name);
    free(r->new_name);
    free(r->data);
    free(r);
}

static void log_clear(struct memfs *fs)
{
    for (size_t i = 0; i < fs->nrecs; i++)
        rec_free(fs->recs[i]);
    free(fs->recs);
    fs->recs = NULL;
    fs->nrecs = fs->cap_recs = 0;
}

/* Logs an operation; data, when given, is gathered from iov.  A record that
 * cannot be allocated aborts: a silently incomplete log would make the
 * crash tests pass for the wrong reason. */
static void rec_add(struct memfs *fs, enum memfs_rec_kind kind, const struct mem_inode *ino,
                    const char *name, const char *new_name, uint64_t offset,
                    uint64_t length, const struct iovec *iov, int iovcnt, size_t old_len)
{
    if (!fs->recording)
        return;
    if (fs->nrecs == fs->cap_recs) {
        size_t cap = fs->cap_recs ? fs->cap_recs * 2 : 256;
        struct memfs_rec **v = realloc(fs->recs, cap * sizeof(*v));
        if (v == NULL)
            abort();
        fs->recs = v;
        fs->cap_recs = cap;
    }
    struct memfs_rec *r = calloc(1, sizeof(*r));
    if (r == NULL)
        abort();
    r->kind = kind;
    r->file = ino->id;
    r->name = strdup(name);
    r->new_name = new_name ? strdup(new_name) : NULL;
    r->offset = offset;
    r->length = length;
    r->old_length = old_len;
    if (r->name == NULL || (new_name && r->new_name == NULL))
        abort();
    if (kind == MEMFS_REC_WRITE) {
        r->data = malloc(length ? (size_t)length : 1);
        if (r->data == NULL)
            abort();
        size_t done = 0;
        for (int i = 0; i < iovcnt && done < length; i++) {
            size_t n = iov[i].iov_len;
            if (n > length - done)
                n = (size_t)(length - done);
            memcpy(r->data + done, iov[i].iov_base, n);
            done += n;
        }
    }
    fs->recs[fs->nrecs++] = r;
}

/* ---- the backend ops ---------------------------------------------------- */

static int mem_open(const struct ac_backend_ops *ops, const char *path, unsigned flags,
                    struct ac_file **out)
{
    struct memfs *fs = fs_of(ops);
    int r;

    pthread_mutex_lock(&fs->mu);
    r = account(fs, MEMFS_OP_OPEN, path, NULL);
    if (r < 0)
        goto out;
    struct mem_handle *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        r = -ENOMEM;
        goto out;
    }
    struct mem_entry *e = find_entry(fs, path);
    struct mem_inode *ino;
    if (e != NULL) {
        if ((flags & AC_FILE_CREATE) && (flags & AC_FILE_EXCL))
            r = -EEXIST;
        else if (e->ino->is_dir)
            r = -EISDIR;
        ino = e->ino;
    } else if (!(flags & AC_FILE_CREATE)) {
        r = -ENOENT;
        ino = NULL;
    } else {
        ino = inode_new(fs, 0, path, false);
        if (ino == NULL || inode_make_durable(ino) < 0 || add_entry(fs, path, ino) < 0) {
            if (ino != NULL)
                inode_free(ino);
            r = -ENOMEM;
        } else {
            rec_add(fs, MEMFS_REC_CREATE, ino, path, NULL, 0, 0, NULL, 0, 0);
        }
    }
    if (r < 0) {
        free(h);
        goto out;
    }
    h->base.ops = ops;
    h->fs = fs;
    h->ino = ino;
    h->flags = flags;
    ino->nopen++;
    h->next = fs->handles;
    if (fs->handles != NULL)
        fs->handles->prev = h;
    fs->handles = h;
    fs->nhandles++;
    *out = &h->base;
out:
    pthread_mutex_unlock(&fs->mu);
    return r;
}

/* Unlinks a handle from the list and frees it (fs->mu held). */
static void handle_free(struct memfs *fs, struct mem_handle *h)
{
    if (h->prev != NULL)
        h->prev->next = h->next;
    else
        fs->handles = h->next;
    if (h->next != NULL)
        h->next->prev = h->prev;
    fs->nhandles--;
    h->ino->nopen--;
    inode_release(h->ino);
    free(h);
}

static void mem_close(struct ac_file *f)
{
    struct mem_handle *h = mh(f);
    struct memfs *fs = h->fs;
    pthread_mutex_lock(&fs->mu);
    handle_free(fs, h);
    pthread_mutex_unlock(&fs->mu);
}

static uint64_t iov_total(const struct iovec *iov, int iovcnt)
{
    uint64_t n = 0;
    for (int i = 0; i < iovcnt; i++)
        n += iov[i].iov_len;
    return n;
}

static ssize_t mem_preadv(struct ac_file *f, const struct iovec *iov, int iovcnt,
                          uint64_t offset)
{
    struct mem_handle *h = mh(f);
    struct memfs *fs = h->fs;
    ssize_t r;

    if (iovcnt < 0)
        return -EINVAL;
    pthread_mutex_lock(&fs->mu);
    r = account(fs, MEMFS_OP_READ, h->ino->name, NULL);
    if (r == 0 && offset < h->ino->len) {
        uint64_t n = iov_total(iov, iovcnt);
        if (n > h->ino->len - offset)
            n = h->ino->len - offset;
        if (fs->max_io && n > fs->max_io)
            n = fs->max_io;
        if (n > SSIZE_MAX)
            n = SSIZE_MAX;
        const unsigned char *src = h->ino->data + offset;
        uint64_t done = 0;
        for (int i = 0; i < iovcnt && done < n; i++) {
            size_t k = iov[i].iov_len;
            if (k > n - done)
                k = (size_t)(n - done);
            memcpy(iov[i].iov_base, src + done, k);
            done += k;
        }
        r = (ssize_t)n;
    }
    pthread_mutex_unlock(&fs->mu);
    return r;
}

static ssize_t mem_pwritev(struct ac_file *f, const struct iovec *iov, int iovcnt,
                           uint64_t offset)
{
    struct mem_handle *h = mh(f);
    struct memfs *fs = h->fs;
    struct mem_inode *ino = h->ino;
    ssize_t r;

    if (iovcnt < 0)
        return -EINVAL;
    pthread_mutex_lock(&fs->mu);
    r = account(fs, MEMFS_OP_WRITE, ino->name, NULL);
    if (r < 0)
        goto out;
    if (!(h->flags & AC_FILE_RDWR)) {
        r = -EBADF;
        goto out;
    }
    uint64_t n = iov_total(iov, iovcnt);
    if (fs->max_io && n > fs->max_io)
        n = fs->max_io;
    if (n > SSIZE_MAX)
        n = SSIZE_MAX;
    if (n == 0)
        goto out;
    if (offset > SIZE_MAX - n || offset + n > (uint64_t)INT64_MAX) {
        r = -EFBIG;
        goto out;
    }
    size_t old_len = ino->len;
    if (offset + n > ino->len && (r = inode_set_len(ino, (size_t)(offset + n))) < 0)
        goto out;
    uint64_t done = 0;
    for (int i = 0; i < iovcnt && done < n; i++) {
        size_t k = iov[i].iov_len;
        if (k > n - done)
            k = (size_t)(n - done);
        memcpy(ino->data + offset + done, iov[i].iov_base, k);
        done += k;
    }
    rec_add(fs, MEMFS_REC_WRITE, ino, ino->name, NULL, offset, n, iov, iovcnt, old_len);
    r = (ssize_t)n;
out:
    pthread_mutex_unlock(&fs->mu);
    return r;
}

static int mem_flush(struct ac_file *f)
{
    struct mem_handle *h = mh(f);
    struct memfs *fs = h->fs;
    pthread_mutex_lock(&fs->mu);
    int r = account(fs, MEMFS_OP_FLUSH, h->ino->name, NULL);
    if (r == 0)
        r = inode_make_durable(h->ino);
    if (r == 0)
        rec_add(fs, MEMFS_REC_FLUSH, h->ino, h->ino->name, NULL, 0, 0, NULL, 0, h->ino->len);
    pthread_mutex_unlock(&fs->mu);
    return r;
}

static int mem_truncate(struct ac_file *f, uint64_t size)
{
    struct mem_handle *h = mh(f);
    struct memfs *fs = h->fs;
    pthread_mutex_lock(&fs->mu);
    int r = account(fs, MEMFS_OP_TRUNCATE, h->ino->name, NULL);
    size_t old_len = h->ino->len;
    if (r == 0 && !(h->flags & AC_FILE_RDWR))
        r = -EBADF;
    if (r == 0 && size > (uint64_t)INT64_MAX)
        r = -EFBIG;
    if (r == 0 && size > SIZE_MAX)
        r = -ENOMEM;
    if (r == 0)
        r = inode_set_len(h->ino, (size_t)size);
    if (r == 0)
        rec_add(fs, MEMFS_REC_TRUNCATE, h->ino, h->ino->name, NULL, size, 0, NULL, 0, old_len);
    pthread_mutex_unlock(&fs->mu);
    return r;
}

static int64_t mem_size(struct ac_file *f)
{
    struct mem_handle *h = mh(f);
    struct memfs *fs = h->fs;
    pthread_mutex_lock(&fs->mu);
    int64_t r = account(fs, MEMFS_OP_SIZE, h->ino->name, NULL);
    if (r == 0)
        r = (int64_t)h->ino->len;
    pthread_mutex_unlock(&fs->mu);
    return r;
}

static int mem_punch_hole(struct ac_file *f, uint64_t offset, uint64_t length)
{
    struct mem_handle *h = mh(f);
    struct memfs *fs = h->fs;
    pthread_mutex_lock(&fs->mu);
    int r = account(fs, MEMFS_OP_PUNCH, h->ino->name, NULL);
    if (r == 0 && !fs->punch_ok)
        r = -EOPNOTSUPP;
    if (r == 0 && !(h->flags & AC_FILE_RDWR))
        r = -EBADF;
    if (r == 0) {
        struct mem_inode *ino = h->ino;
        if (offset < ino->len) {
            uint64_t n = length < ino->len - offset ? length : ino->len - offset;
            memset(ino->data + offset, 0, (size_t)n);
        }
        rec_add(fs, MEMFS_REC_PUNCH, ino, ino->name, NULL, offset, length, NULL, 0, ino->len);
    }
    pthread_mutex_unlock(&fs->mu);
    return r;
}

static int mem_lock(struct ac_file *f, int mode)
{
    struct mem_handle *h = mh(f);
    struct memfs *fs = h->fs;
    pthread_mutex_lock(&fs->mu);
    int r = account(fs, MEMFS_OP_LOCK, h->ino->name, NULL);
    if (r == 0 && mode != AC_LOCK_SHARED && mode != AC_LOCK_EXCLUSIVE)
        r = -EINVAL;
    for (struct mem_handle *o = fs->handles; r == 0 && o != NULL; o = o->next)
        if (o != h && o->ino == h->ino && o->lock != 0 &&
            (mode == AC_LOCK_EXCLUSIVE || o->lock == AC_LOCK_EXCLUSIVE))
            r = -EBUSY;
    if (r == 0)
        h->lock = mode;
    pthread_mutex_unlock(&fs->mu);
    return r;
}

static int mem_identity(struct ac_file *f, uint64_t id[2])
{
    struct mem_handle *h = mh(f);
    struct memfs *fs = h->fs;
    pthread_mutex_lock(&fs->mu);
    int r = account(fs, MEMFS_OP_IDENTITY, h->ino->name, NULL);
    if (r == 0) {
        id[0] = MEMFS_DEVICE;
        id[1] = h->ino->id;
    }
    pthread_mutex_unlock(&fs->mu);
    return r;
}

static int mem_rename_noreplace(const struct ac_backend_ops *ops, const char *from,
                                const char *to)
{
    struct memfs *fs = fs_of(ops);
    pthread_mutex_lock(&fs->mu);
    int r = account(fs, MEMFS_OP_RENAME, from, to);
    struct mem_entry *e = r == 0 ? find_entry(fs, from) : NULL;
    if (r == 0 && e == NULL)
        r = -ENOENT;
    if (r == 0 && find_entry(fs, to) != NULL)
        r = -EEXIST;
    if (r == 0)
        r = rename_entry(e, to);
    if (r == 0)
        rec_add(fs, MEMFS_REC_RENAME, e->ino, from, to, 0, 0, NULL, 0, e->ino->len);
    pthread_mutex_unlock(&fs->mu);
    return r;
}

static int mem_unlink(const struct ac_backend_ops *ops, const char *path)
{
    struct memfs *fs = fs_of(ops);
    pthread_mutex_lock(&fs->mu);
    int r = account(fs, MEMFS_OP_UNLINK, path, NULL);
    struct mem_entry *e = r == 0 ? find_entry(fs, path) : NULL;
    if (r == 0 && e == NULL)
        r = -ENOENT;
    if (r == 0 && e->ino->is_dir)
        r = -EISDIR;
    if (r == 0) {
        rec_add(fs, MEMFS_REC_UNLINK, e->ino, path, NULL, 0, 0, NULL, 0, e->ino->len);
        remove_entry(fs, e);
    }
    pthread_mutex_unlock(&fs->mu);
    return r;
}

static const struct ac_backend_ops mem_ops_template = {
    .version = AC_BACKEND_OPS_VERSION,
    .name = "memfs",
    .open = mem_open,
    .close = mem_close,
    .preadv = mem_preadv,
    .pwritev = mem_pwritev,
    .flush = mem_flush,
    .truncate = mem_truncate,
    .size = mem_size,
    .punch_hole = mem_punch_hole,
    .lock = mem_lock,
    .identity = mem_identity,
    .rename_noreplace = mem_rename_noreplace,
    .unlink = mem_unlink,
};

/* ---- life cycle --------------------------------------------------------- */

struct memfs *memfs_new(void)
{
    struct memfs *fs = calloc(1, sizeof(*fs));
    if (fs == NULL)
        return NULL;
    fs->ops = mem_ops_template;
    if (pthread_mutex_init(&fs->mu, NULL) != 0) {
        free(fs);
        return NULL;
    }
    fs->next_id = 1;
    fs->punch_ok = true;
    return fs;
}

void memfs_free(struct memfs *fs)
{
    if (fs == NULL)
        return;
    pthread_mutex_lock(&fs->mu);
    while (fs->handles != NULL)
        handle_free(fs, fs->handles);
    while (fs->nents > 0)
        remove_entry(fs, &fs->ents[fs->nents - 1]);
    free(fs->ents);
    for (int i = 0; i < MAX_RULES; i++)
        free(fs->rules[i].pattern);
    free(fs->last_name);
    log_clear(fs);
    pthread_mutex_unlock(&fs->mu);
    pthread_mutex_destroy(&fs->mu);
    free(fs);
}

const struct ac_backend_ops *memfs_ops(struct memfs *fs)
{
    return &fs->ops;
}

struct addcow_options *memfs_options(struct memfs *fs)
{
    addcow_options *o = addcow_options_new();
    if (o != NULL)
        ac_options_set_backend_ops(o, &fs->ops);
    return o;
}

/* ---- contents ----------------------------------------------------------- */

int memfs_put(struct memfs *fs, const char *path, const void *buf, size_t len)
{
    int r = 0;
    pthread_mutex_lock(&fs->mu);
    struct mem_entry *e = find_entry(fs, path);
    struct mem_inode *ino = e ? e->ino : NULL;
    if (ino != NULL && ino->is_dir) {
        r = -EISDIR;
        goto out;
    }
    if (ino == NULL) {
        ino = inode_new(fs, 0, path, false);
        if (ino == NULL || add_entry(fs, path, ino) < 0) {
            if (ino != NULL)
                inode_free(ino);
            r = -ENOMEM;
            goto out;
        }
    }
    ino->len = 0;
    r = inode_set_len(ino, len);
    if (r == 0 && len > 0)
        memcpy(ino->data, buf, len);
    if (r == 0)
        r = inode_make_durable(ino);
out:
    pthread_mutex_unlock(&fs->mu);
    return r;
}

static unsigned char *get_copy(struct memfs *fs, const char *path, size_t *len, bool durable)
{
    unsigned char *out = NULL;
    pthread_mutex_lock(&fs->mu);
    struct mem_entry *e = find_entry(fs, path);
    if (e != NULL && !e->ino->is_dir) {
        const unsigned char *src = durable ? e->ino->ddata : e->ino->data;
        size_t n = durable ? e->ino->dlen : e->ino->len;
        out = malloc(n ? n : 1);
        if (out != NULL) {
            if (n)
                memcpy(out, src, n);
            if (len != NULL)
                *len = n;
        }
    }
    pthread_mutex_unlock(&fs->mu);
    return out;
}

unsigned char *memfs_get(struct memfs *fs, const char *path, size_t *len)
{
    return get_copy(fs, path, len, false);
}

unsigned char *memfs_get_durable(struct memfs *fs, const char *path, size_t *len)
{
    return get_copy(fs, path, len, true);
}

int memfs_mkdir(struct memfs *fs, const char *path)
{
    int r = 0;
    pthread_mutex_lock(&fs->mu);
    if (find_entry(fs, path) != NULL) {
        r = -EEXIST;
    } else {
        struct mem_inode *ino = inode_new(fs, 0, path, true);
        if (ino == NULL || inode_make_durable(ino) < 0 || add_entry(fs, path, ino) < 0) {
            if (ino != NULL)
                inode_free(ino);
            r = -ENOMEM;
        }
    }
    pthread_mutex_unlock(&fs->mu);
    return r;
}

int memfs_exists(struct memfs *fs, const char *path)
{
    pthread_mutex_lock(&fs->mu);
    struct mem_entry *e = find_entry(fs, path);
    int r = e == NULL ? 0 : e->ino->is_dir ? 2 : 1;
    pthread_mutex_unlock(&fs->mu);
    return r;
}

uint64_t memfs_file_id(struct memfs *fs, const char *path)
{
    pthread_mutex_lock(&fs->mu);
    struct mem_entry *e = find_entry(fs, path);
    uint64_t id = e ? e->ino->id : 0;
    pthread_mutex_unlock(&fs->mu);
    return id;
}

size_t memfs_count(struct memfs *fs)
{
    pthread_mutex_lock(&fs->mu);
    size_t n = fs->nents;
    pthread_mutex_unlock(&fs->mu);
    return n;
}

char *memfs_name_at(struct memfs *fs, size_t i)
{
    pthread_mutex_lock(&fs->mu);
    char *n = i < fs->nents ? strdup(fs->ents[i].name) : NULL;
    pthread_mutex_unlock(&fs->mu);
    return n;
}

unsigned memfs_open_handles(struct memfs *fs)
{
    pthread_mutex_lock(&fs->mu);
    unsigned n = fs->nhandles;
    pthread_mutex_unlock(&fs->mu);
    return n;
}

/* ---- switches ------------------------------------------------------------ */

void memfs_set_max_io(struct memfs *fs, size_t max)
{
    pthread_mutex_lock(&fs->mu);
    fs->max_io = max;
    pthread_mutex_unlock(&fs->mu);
}

void memfs_set_punch_supported(struct memfs *fs, bool on)
{
    pthread_mutex_lock(&fs->mu);
    fs->punch_ok = on;
    pthread_mutex_unlock(&fs->mu);
}

void memfs_set_locking(struct memfs *fs, bool on)
{
    pthread_mutex_lock(&fs->mu);
    fs->ops.lock = on ? mem_lock : NULL;
    pthread_mutex_unlock(&fs->mu);
}

/* ---- counts and faults ----------------------------------------------------- */

const char *memfs_op_name(unsigned op)
{
    static const char *const names[NKINDS] = {
        "open", "read", "write", "flush", "truncate", "size", "punch_hole",
        "lock", "identity", "rename", "unlink",
    };
    if (op == 0 || (op & (op - 1)) != 0 || kind_index(op) >= NKINDS)
        return "?";
    return names[kind_index(op)];
}

uint64_t memfs_op_count(struct memfs *fs, unsigned mask)
{
    uint64_t n = 0;
    pthread_mutex_lock(&fs->mu);
    for (unsigned i = 0; i < NKINDS; i++)
        if (mask & (1u << i))
            n += fs->counts[i];
    pthread_mutex_unlock(&fs->mu);
    return n;
}

void memfs_op_count_reset(struct memfs *fs)
{
    pthread_mutex_lock(&fs->mu);
    memset(fs->counts, 0, sizeof(fs->counts));
    pthread_mutex_unlock(&fs->mu);
}

int memfs_fault_add(struct memfs *fs, const struct memfs_fault *rule)
{
    int r = -ENOSPC;
    pthread_mutex_lock(&fs->mu);
    for (int i = 0; i < MAX_RULES; i++) {
        struct fault_rule *fr = &fs->rules[i];
        if (fr->used)
            continue;
        char *pat = NULL;
        if (rule->pattern != NULL && (pat = strdup(rule->pattern)) == NULL) {
            r = -ENOMEM;
            break;
        }
        fr->used = true;
        fr->ops = rule->ops;
        fr->pattern = pat;
        fr->nth = rule->nth;
        fr->seen = 0;
        fr->sticky = rule->sticky;
        fr->err = rule->err;
        r = 0;
        break;
    }
    pthread_mutex_unlock(&fs->mu);
    return r;
}

int memfs_fail_nth(struct memfs *fs, uint64_t n, int err)
{
    struct memfs_fault f = { MEMFS_OP_ALL, NULL, n, false, err };
    return memfs_fault_add(fs, &f);
}

int memfs_fail_ops(struct memfs *fs, unsigned mask, const char *pattern, int err)
{
    struct memfs_fault f = { mask, pattern, 0, false, err };
    return memfs_fault_add(fs, &f);
}

void memfs_fault_clear(struct memfs *fs)
{
    pthread_mutex_lock(&fs->mu);
    for (int i = 0; i < MAX_RULES; i++) {
        free(fs->rules[i].pattern);
        memset(&fs->rules[i], 0, sizeof(fs->rules[i]));
    }
    pthread_mutex_unlock(&fs->mu);
}

uint64_t memfs_fault_hits(struct memfs *fs)
{
    pthread_mutex_lock(&fs->mu);
    uint64_t n = fs->hits;
    pthread_mutex_unlock(&fs->mu);
    return n;
}

bool memfs_fault_last(struct memfs *fs, unsigned *op, char *name, size_t name_size,
                      uint64_t *seq)
{
    pthread_mutex_lock(&fs->mu);
    bool have = fs->have_last;
    if (have) {
        if (op != NULL)
            *op = fs->last_op;
        if (seq != NULL)
            *seq = fs->last_seq;
        if (name != NULL && name_size > 0) {
            const char *n = fs->last_name ? fs->last_name : "";
            size_t k = strlen(n) < name_size - 1 ? strlen(n) : name_size - 1;
            memcpy(name, n, k);
            name[k] = '\0';
        }
    }
    pthread_mutex_unlock(&fs->mu);
    return have;
}

/* ---- recording and replay -------------------------------------------------- */

void memfs_record_start(struct memfs *fs)
{
    pthread_mutex_lock(&fs->mu);
    log_clear(fs);
    fs->recording = true;
    pthread_mutex_unlock(&fs->mu);
}

void memfs_record_stop(struct memfs *fs)
{
    pthread_mutex_lock(&fs->mu);
    fs->recording = false;
    pthread_mutex_unlock(&fs->mu);
}

size_t memfs_rec_count(struct memfs *fs)
{
    pthread_mutex_lock(&fs->mu);
    size_t n = fs->nrecs;
    pthread_mutex_unlock(&fs->mu);
    return n;
}

const struct memfs_rec *memfs_rec_at(struct memfs *fs, size_t i)
{
    pthread_mutex_lock(&fs->mu);
    const struct memfs_rec *r = i < fs->nrecs ? fs->recs[i] : NULL;
    pthread_mutex_unlock(&fs->mu);
    return r;
}

const char *memfs_rec_kind_name(enum memfs_rec_kind k)
{
    switch (k) {
    case MEMFS_REC_CREATE: return "create";
    case MEMFS_REC_WRITE: return "write";
    case MEMFS_REC_FLUSH: return "flush";
    case MEMFS_REC_TRUNCATE: return "truncate";
    case MEMFS_REC_PUNCH: return "punch";
    case MEMFS_REC_RENAME: return "rename";
    case MEMFS_REC_UNLINK: return "unlink";
    }
    return "?";
}

struct memfs *memfs_clone(struct memfs *src)
{
    struct memfs *fs = memfs_new();
    if (fs == NULL)
        return NULL;
    pthread_mutex_lock(&src->mu);
    fs->next_id = src->next_id;
    fs->max_io = src->max_io;
    fs->punch_ok = src->punch_ok;
    fs->ops.lock = src->ops.lock;
    bool ok = true;
    for (size_t i = 0; i < src->nents && ok; i++) {
        const struct mem_entry *e = &src->ents[i];
        struct mem_inode *ino = inode_new(fs, e->ino->id, e->name, e->ino->is_dir);
        ok = ino != NULL && inode_set_len(ino, e->ino->len) == 0;
        if (ok && e->ino->len)
            memcpy(ino->data, e->ino->data, e->ino->len);
        if (ok) {
            ino->ddata = malloc(e->ino->dlen ? e->ino->dlen : 1);
            ok = ino->ddata != NULL;
        }
        if (ok) {
            if (e->ino->dlen)
                memcpy(ino->ddata, e->ino->ddata, e->ino->dlen);
            ino->dlen = e->ino->dlen;
            ok = add_entry(fs, e->name, ino) == 0;
        }
        if (!ok && ino != NULL)
            inode_free(ino);
    }
    pthread_mutex_unlock(&src->mu);
    if (!ok) {
        memfs_free(fs);
        return NULL;
    }
    return fs;
}

int memfs_rec_apply_buf(const struct memfs_rec *r, unsigned char **buf, size_t *len)
{
    size_t newlen = *len;
    if (r->kind == MEMFS_REC_WRITE && r->offset + r->length > newlen)
        newlen = (size_t)(r->offset + r->length);
    else if (r->kind == MEMFS_REC_TRUNCATE)
        newlen = (size_t)r->offset;
    if (newlen != *len) {
        unsigned char *b = realloc(*buf, newlen ? newlen : 1);
        if (b == NULL)
            return -ENOMEM;
        if (newlen > *len)
            memset(b + *len, 0, newlen - *len);
        *buf = b;
        *len = newlen;
    }
    if (r->kind == MEMFS_REC_WRITE && r->length)
        memcpy(*buf + r->offset, r->data, (size_t)r->length);
    if (r->kind == MEMFS_REC_PUNCH && r->offset < *len) {
        uint64_t n = r->length < *len - r->offset ? r->length : *len - r->offset;
        memset(*buf + r->offset, 0, (size_t)n);
    }
    return 0;
}

int memfs_apply(struct memfs *fs, const struct memfs_rec *r)
{
    int ret = 0;
    pthread_mutex_lock(&fs->mu);
    struct mem_entry *e;
    struct mem_inode *ino;
    switch (r->kind) {
    case MEMFS_REC_CREATE:
        if (find_entry(fs, r->name) != NULL) {
            ret = -EEXIST;
            break;
        }
        ino = inode_new(fs, r->file, r->name, false);
        if (ino == NULL || inode_make_durable(ino) < 0 || add_entry(fs, r->name, ino) < 0) {
            if (ino != NULL)
                inode_free(ino);
            ret = -ENOMEM;
        }
        break;
    case MEMFS_REC_WRITE:
    case MEMFS_REC_TRUNCATE:
    case MEMFS_REC_PUNCH:
        ino = find_linked_id(fs, r->file);
        if (ino == NULL)
            break;
        {
            size_t newlen = ino->len;
            if (r->kind == MEMFS_REC_WRITE && r->offset + r->length > newlen)
                newlen = (size_t)(r->offset + r->length);
            else if (r->kind == MEMFS_REC_TRUNCATE)
                newlen = (size_t)r->offset;
            if ((ret = inode_set_len(ino, newlen)) < 0)
                break;
            if (r->kind == MEMFS_REC_WRITE && r->length)
                memcpy(ino->data + r->offset, r->data, (size_t)r->length);
            if (r->kind == MEMFS_REC_PUNCH && r->offset < ino->len) {
                uint64_t n = r->length < ino->len - r->offset ? r->length
                                                              : ino->len - r->offset;
                memset(ino->data + r->offset, 0, (size_t)n);
            }
        }
        break;
    case MEMFS_REC_FLUSH:
        ino = find_linked_id(fs, r->file);
        if (ino != NULL)
            ret = inode_make_durable(ino);
        break;
    case MEMFS_REC_RENAME:
        e = find_entry(fs, r->name);
        if (e == NULL)
            ret = -ENOENT;
        else if (find_entry(fs, r->new_name) != NULL)
            ret = -EEXIST;
        else
            ret = rename_entry(e, r->new_name);
        break;
    case MEMFS_REC_UNLINK:
        e = find_entry(fs, r->name);
        if (e == NULL)
            ret = -ENOENT;
        else
            remove_entry(fs, e);
        break;
    }
    pthread_mutex_unlock(&fs->mu);
    return ret;
}

/* ---- power-loss states ------------------------------------------------------ */

#define LOSS_SECTOR 512u

/* The bytes a record changes: [*lo, *hi) (empty for other kinds).  A
 * truncate changes what it cuts off (zeroed, so that a later growth reads
 * zeros) or what it adds. */
static void loss_span(const struct memfs_rec *r, uint64_t *lo, uint64_t *hi)
{
    *lo = *hi = 0;
    if (r->kind == MEMFS_REC_WRITE) {
        *lo = r->offset;
        *hi = r->offset + r->length;
    } else if (r->kind == MEMFS_REC_PUNCH) {
        *lo = r->offset;
        *hi = r->offset + r->length < r->old_length ? r->offset + r->length : r->old_length;
        if (*hi < *lo)
            *hi = *lo;
    } else if (r->kind == MEMFS_REC_TRUNCATE) {
        *lo = r->offset < r->old_length ? r->offset : r->old_length;
        *hi = r->offset < r->old_length ? r->old_length : r->offset;
    }
}

/* The file's length after the record, from `cur` before it. */
static uint64_t loss_len_after(const struct memfs_rec *r, uint64_t cur)
{
    if (r->kind == MEMFS_REC_WRITE && r->offset + r->length > cur)
        return r->offset + r->length;
    if (r->kind == MEMFS_REC_TRUNCATE)
        return r->offset;
    return cur;
}

static bool loss_kind(const struct memfs_rec *r)
{
    return r->kind == MEMFS_REC_WRITE || r->kind == MEMFS_REC_TRUNCATE ||
           r->kind == MEMFS_REC_PUNCH;
}

static uint64_t loss_rand(uint64_t *rng)
{
    /* xorshift64* (as tu_rand), kept here so that membackend needs
     * nothing from testutil; a zero state would stay zero. */
    uint64_t x = *rng ? *rng : UINT64_C(0x9E3779B97F4A7C15);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *rng = x;
    return x * UINT64_C(0x2545F4914F6CDD1D);
}

int memfs_loss_file(const unsigned char *durable, size_t dlen,
                    const struct memfs_rec *const *pend, size_t n, enum memfs_loss mode,
                    uint64_t *rng, unsigned char **out, size_t *out_len,
                    struct memfs_loss_stats *st)
{
    /* The length changes, and the largest length on the way. */
    uint64_t cur = dlen, maxlen = dlen;
    size_t nlen = 0;
    for (size_t i = 0; i < n; i++) {
        if (!loss_kind(pend[i]))
            continue;
        uint64_t next = loss_len_after(pend[i], cur);
        if (next != cur)
            nlen++;
        cur = next;
        if (cur > maxlen)
            maxlen = cur;
    }
    if (maxlen > SIZE_MAX - LOSS_SECTOR)
        return -ENOMEM;
    size_t len_keep = mode == MEMFS_LOSS_ALL ? nlen
                    : mode == MEMFS_LOSS_TORN ? (size_t)(loss_rand(rng) % (nlen + 1)) : 0;
    /* Torn: each write or punch lands with probability land/4, whole or
     * (tear: 3 times in 4) sector by sector with probability 1/2 each. */
    unsigned land = 1 + (unsigned)(loss_rand(rng) % 4);
    bool tear = loss_rand(rng) % 4 != 0;

    size_t nsect = (size_t)((maxlen + LOSS_SECTOR - 1) / LOSS_SECTOR);
    unsigned char *buf = malloc(nsect ? nsect * LOSS_SECTOR : 1);
    size_t *cut = calloc(nsect ? nsect : 1, sizeof(*cut));   /* records [0, cut[s]) */
    if (buf == NULL || cut == NULL) {
        free(buf);
        free(cut);
        return -ENOMEM;
    }
    if (dlen)
        memcpy(buf, durable, dlen);
    memset(buf + dlen, 0, nsect * LOSS_SECTOR - dlen);

    /* Which records land where. */
    size_t ord = 0;
    uint64_t final_len = dlen;
    cur = dlen;
    for (size_t i = 0; i < n; i++) {
        const struct memfs_rec *r = pend[i];
        if (!loss_kind(r))
            continue;
        uint64_t next = loss_len_after(r, cur), lo, hi;
        bool in_len = false;
        if (next != cur) {
            in_len = ord < len_keep;
            ord++;
            if (in_len)
                final_len = next;
        }
        cur = next;
        loss_span(r, &lo, &hi);
        if (lo >= hi)
            continue;
        bool lands;
        if (r->kind == MEMFS_REC_TRUNCATE)
            lands = in_len;
        else if (mode == MEMFS_LOSS_TORN)
            lands = loss_rand(rng) % 4 < land;
        else
            lands = mode == MEMFS_LOSS_ALL;
        if (!lands)
            continue;
        size_t total = 0, kept = 0;
        for (uint64_t s = lo / LOSS_SECTOR; s * LOSS_SECTOR < hi; s++) {
            total++;
            if (mode == MEMFS_LOSS_TORN && tear && r->kind != MEMFS_REC_TRUNCATE &&
                loss_rand(rng) % 2 == 0)
                continue;
            cut[s] = i + 1;
            kept++;
        }
        if (st != NULL && kept > 0) {
            st->landed++;
            if (kept < total)
                st->torn++;
        }
    }
    if (st != NULL)
        for (size_t i = 0; i < n; i++)
            st->pending += loss_kind(pend[i]);

    /* Each sector: the changes of its prefix, in order. */
    for (size_t i = 0; i < n; i++) {
        const struct memfs_rec *r = pend[i];
        uint64_t lo, hi;
        if (!loss_kind(r))
            continue;
        loss_span(r, &lo, &hi);
        for (uint64_t o = lo; o < hi;) {
            uint64_t s = o / LOSS_SECTOR;
            uint64_t end = (s + 1) * LOSS_SECTOR < hi ? (s + 1) * LOSS_SECTOR : hi;
            if (i < cut[s]) {
                if (r->kind == MEMFS_REC_WRITE)
                    memcpy(buf + o, r->data + (o - r->offset), (size_t)(end - o));
                else
                    memset(buf + o, 0, (size_t)(end - o));
            }
            o = end;
        }
    }
    free(cut);
    *out = buf;
    *out_len = (size_t)final_len;
    return 0;
}

struct crash_pending {
    uint64_t file;
    size_t *idx;
    size_t n, cap;
};

struct memfs_crashgen {
    struct memfs *replay;
    const struct memfs_rec **recs;
    size_t nrecs, pos;
    struct crash_pending *files;
    size_t nfiles, cap_files;
};

static struct crash_pending *crash_pending_of(struct memfs_crashgen *g, uint64_t file,
                                              bool add)
{
    for (size_t i = 0; i < g->nfiles; i++)
        if (g->files[i].file == file)
            return &g->files[i];
    if (!add)
        return NULL;
    if (g->nfiles == g->cap_files) {
        size_t cap = g->cap_files ? g->cap_files * 2 : 8;
        struct crash_pending *f = realloc(g->files, cap * sizeof(*f));
        if (f == NULL)
            return NULL;
        g->files = f;
        g->cap_files = cap;
    }
    struct crash_pending *p = &g->files[g->nfiles++];
    memset(p, 0, sizeof(*p));
    p->file = file;
    return p;
}

struct memfs_crashgen *memfs_crashgen_new(struct memfs *start,
                                          const struct memfs_rec *const *recs, size_t n)
{
    struct memfs_crashgen *g = calloc(1, sizeof(*g));
    if (g == NULL)
        return NULL;
    g->replay = memfs_clone(start);
    g->recs = malloc((n ? n : 1) * sizeof(*g->recs));
    if (g->replay == NULL || g->recs == NULL) {
        memfs_crashgen_free(g);
        return NULL;
    }
    if (n)
        memcpy(g->recs, recs, n * sizeof(*g->recs));
    g->nrecs = n;
    return g;
}

void memfs_crashgen_free(struct memfs_crashgen *g)
{
    if (g == NULL)
        return;
    for (size_t i = 0; i < g->nfiles; i++)
        free(g->files[i].idx);
    free(g->files);
    free(g->recs);
    memfs_free(g->replay);
    free(g);
}

int memfs_crashgen_seek(struct memfs_crashgen *g, size_t k)
{
    if (k > g->nrecs || k < g->pos)
        return -EINVAL;
    while (g->pos < k) {
        const struct memfs_rec *r = g->recs[g->pos];
        int e = memfs_apply(g->replay, r);
        if (e < 0)
            return e;
        if (r->kind == MEMFS_REC_FLUSH || r->kind == MEMFS_REC_CREATE ||
            r->kind == MEMFS_REC_UNLINK) {
            struct crash_pending *p = crash_pending_of(g, r->file, false);
            if (p != NULL)
                p->n = 0;
        } else if (loss_kind(r)) {
            struct crash_pending *p = crash_pending_of(g, r->file, true);
            if (p == NULL)
                return -ENOMEM;
            if (p->n == p->cap) {
                size_t cap = p->cap ? p->cap * 2 : 32;
                size_t *v = realloc(p->idx, cap * sizeof(*v));
                if (v == NULL)
                    return -ENOMEM;
                p->idx = v;
                p->cap = cap;
            }
            p->idx[p->n++] = g->pos;
        }
        g->pos++;
    }
    return 0;
}

size_t memfs_crashgen_pos(const struct memfs_crashgen *g)
{
    return g->pos;
}

size_t memfs_crashgen_pending(struct memfs_crashgen *g, const char *path)
{
    uint64_t id = memfs_file_id(g->replay, path);
    struct crash_pending *p = id ? crash_pending_of(g, id, false) : NULL;
    return p != NULL ? p->n : 0;
}

/* memfs_put() of a malloc'd buffer that dst takes over (one copy fewer:
 * the states of big files are made many times); buf is freed on error. */
static int put_owned(struct memfs *dst, const char *path, unsigned char *buf, size_t len)
{
    int r = memfs_put(dst, path, NULL, 0);
    if (r < 0) {
        free(buf);
        return r;
    }
    pthread_mutex_lock(&dst->mu);
    struct mem_entry *e = find_entry(dst, path);
    free(e->ino->data);
    e->ino->data = buf;
    e->ino->len = e->ino->cap = len;
    r = inode_make_durable(e->ino);
    pthread_mutex_unlock(&dst->mu);
    return r;
}

/* true if dst's file at path holds exactly buf[0..len), durable too: a
 * state of an unchanged file need not be copied again. */
static bool same_file_bytes(struct memfs *dst, const char *path, const unsigned char *buf,
                            size_t len)
{
    pthread_mutex_lock(&dst->mu);
    struct mem_entry *e = find_entry(dst, path);
    bool same = e != NULL && !e->ino->is_dir && e->ino->len == len && e->ino->dlen == len &&
                (len == 0 || (memcmp(e->ino->data, buf, len) == 0 &&
                              memcmp(e->ino->ddata, buf, len) == 0));
    pthread_mutex_unlock(&dst->mu);
    return same;
}

int memfs_crashgen_fill(struct memfs_crashgen *g, struct memfs *dst, enum memfs_loss mode,
                        uint64_t *rng, struct memfs_loss_stats *st)
{
    struct memfs *fs = g->replay;
    const struct memfs_rec **pend = NULL;
    size_t cap = 0;
    int r = 0;

    pthread_mutex_lock(&fs->mu);
    for (size_t i = 0; i < fs->nents && r == 0; i++) {
        const struct mem_entry *e = &fs->ents[i];
        if (e->ino->is_dir) {
            if (memfs_exists(dst, e->name) != 2)
                r = memfs_mkdir(dst, e->name);
            continue;
        }
        struct crash_pending *p = crash_pending_of(g, e->ino->id, false);
        size_t n = p != NULL ? p->n : 0;
        if (n == 0) {
            if (!same_file_bytes(dst, e->name, e->ino->ddata, e->ino->dlen))
                r = memfs_put(dst, e->name, e->ino->ddata, e->ino->dlen);
            continue;
        }
        if (n > cap) {
            const struct memfs_rec **v = realloc(pend, n * sizeof(*v));
            if (v == NULL) {
                r = -ENOMEM;
                break;
            }
            pend = v;
            cap = n;
        }
        for (size_t j = 0; j < n; j++)
            pend[j] = g->recs[p->idx[j]];
        unsigned char *buf;
        size_t len;
        r = memfs_loss_file(e->ino->ddata, e->ino->dlen, pend, n, mode, rng, &buf, &len, st);
        if (r == 0)
            r = put_owned(dst, e->name, buf, len);
    }
    pthread_mutex_unlock(&fs->mu);
    free(pend);
    return r;
}
