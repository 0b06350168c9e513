/*
 * image-open.c: create, open and close add-cow images; resolving and
 * checking the three files, backing chains, locks.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend-posix.h"
#include "codec.h"
#include "error.h"
#include "image.h"
#include "path.h"

/* A file already in the chain being opened, for loop and identity checks. */
enum ac_chain_role { AC_ROLE_ADDCOW, AC_ROLE_IMAGE, AC_ROLE_BACKING };

struct ac_chain {
    uint64_t id[2];
    enum ac_chain_role role;
    const char *name;
    const struct ac_chain *up;
};

static const struct ac_chain *chain_find(const struct ac_chain *c, const uint64_t id[2])
{
    for (; c != NULL; c = c->up)
        if (c->id[0] == id[0] && c->id[1] == id[1])
            return c;
    return NULL;
}

static int chain_depth(const struct ac_chain *c)
{
    int n = 0;
    for (; c != NULL; c = c->up)
        n += c->role == AC_ROLE_ADDCOW;
    return n;
}

/* True if two open files are the same file (an identity error: false). */
static bool same_file(struct ac_file *a, struct ac_file *b)
{
    uint64_t ia[2], ib[2];
    return a->ops->identity(a, ia) == 0 && b->ops->identity(b, ib) == 0 &&
           ia[0] == ib[0] && ia[1] == ib[1];
}

/* Checks a stored path against the protocol rule and the "paths" policy.
 * `what` names the field ("image file", "backing file"). */
static int check_stored_path(const char *what, const char *stored, const char *addcow,
                             const struct addcow_options *o)
{
    if (o->paths == AC_PATHS_CONFINED && !ac_path_is_confined(stored))
        return ac_error(EACCES, "%s '%s' (from header of '%s') leaves the image's folder, "
                        "which paths=confined forbids (absolute path, '..' or protocol)",
                        what, stored, addcow);
    if (ac_path_has_protocol(stored))
        return ac_error(ENOTSUP, "%s '%s' (from header of '%s') has a protocol prefix, "
                        "and no enabled backend handles that protocol",
                        what, stored, addcow);
    return 0;
}

static void image_free(struct addcow_image *img)
{
    if (img == NULL)
        return;
    if (img->backing.kind == AC_BK_ADDCOW)
        ac_image_close(img->backing.img);
    else if (img->backing.kind == AC_BK_RAW)
        ac_file_close(img->backing.raw);
    ac_file_close(img->imgf);
    ac_file_close(img->acf);
    ac_bm_free(&img->bm);
    free(img->path);
    free(img->backing_stored);
    free(img->image_stored);
    free(img->image_path);
    free(img->backing_path);
    free(img);
}

struct holder_text {
    char s[128];
};

/* Who holds the lock that f could not take, as far as the OS tells:
 * "locked by process 1234", "locked by another handle in this process",
 * else "locked by another reader or writer" (or "writer"). */
static struct holder_text lock_holder(struct ac_file *f, int mode)
{
    struct holder_text t;
    pid_t pids[4];
    int n = f->ops->lock == ac_posix_lock ? ac_posix_lock_holders(f, mode, pids, 4) : 0;
    pid_t self = getpid();
    if (n == 1 && pids[0] == self) {
        snprintf(t.s, sizeof(t.s), "locked by another handle in this process");
    } else if (n > 0) {
        size_t k = (size_t)snprintf(t.s, sizeof(t.s), "locked by process%s", n > 1 ? "es" : "");
        for (int i = 0; i < n && k < sizeof(t.s); i++)
            k += (size_t)snprintf(t.s + k, sizeof(t.s) - k, "%s %ld%s", i ? "," : "",
                                  (long)pids[i], pids[i] == self ? " (this process)" : "");
    } else {
        snprintf(t.s, sizeof(t.s), "it is locked by another %s",
                 mode == AC_LOCK_EXCLUSIVE ? "reader or writer" : "writer");
    }
    return t;
}

static int lock_file(const struct addcow_options *o, struct ac_file *f, int mode,
                     const char *what, const char *name)
{
    if (!o->locking || f->ops->lock == NULL)
        return 0;
    int r = ac_file_lock(f, mode);
    if (r == -EBUSY)
        return ac_error(EBUSY, "%s '%s' is in use: %s (one writer or many readers; "
                        "locking=off overrides)", what, name, lock_holder(f, mode).s);
    if (r < 0)
        return ac_error(r, "%s '%s': cannot lock", what, name);
    return 0;
}

static int open_chain(const char *path, struct ac_file *already, unsigned flags,
                      const struct addcow_options *o, enum ac_backing_format bfmt,
                      const struct ac_chain *up, struct addcow_image **out);

/* Reads the first bytes of a backing file and tells whether it is add-cow:
 * 1 add-cow, 0 raw, or a negative errno when it cannot be read (never
 * guess "raw" on a read error: that would show a header as disk data). */
static int backing_is_addcow(struct ac_file *f, enum ac_backing_format fmt,
                             const char *name)
{
    unsigned char buf[16];
    if (fmt != AC_BFMT_AUTO)
        return fmt == AC_BFMT_ADDCOW;
    int64_t n = ac_file_pread(f, buf, sizeof(buf), 0);
    if (n < 0)
        return ac_error((int)n, "backing file '%s': reading its first bytes to probe "
                        "its format", name);
    return ac_header_probe(buf, (size_t)n);
}

static int open_backing(struct addcow_image *img, const struct addcow_options *o,
                        enum ac_backing_format bfmt, const struct ac_chain *here)
{
    struct ac_file *f = NULL;
    uint64_t id[2];
    int r;

    r = check_stored_path("backing file", img->backing_stored, img->path, o);
    if (r < 0)
        return r;
    img->backing_path = ac_path_resolve(img->path, img->backing_stored);
    if (img->backing_path == NULL)
        return ac_error(ENOMEM, "resolving backing file '%s'", img->backing_stored);
    r = ac_file_open(img->ops, img->backing_path,
                     AC_FILE_RDONLY | (o->cache == AC_CACHE_NONE ? AC_FILE_DIRECT : 0), &f);
    if (r < 0)
        return ac_error(r, "backing file '%s' (from header of '%s')",
                        img->backing_path, img->path);
    r = f->ops->identity(f, id);
    if (r < 0) {
        ac_file_close(f);
        return ac_error(r, "backing file '%s': cannot identify", img->backing_path);
    }
    const struct ac_chain *dup = chain_find(here, id);
    if (dup != NULL) {
        ac_file_close(f);
        if (dup->role == AC_ROLE_ADDCOW)
            return ac_error(ELOOP, "backing file '%s' (from header of '%s') is the add-cow "
                            "file '%s' again: the backing chain loops",
                            img->backing_path, img->path, dup->name);
        return ac_error(EINVAL, "backing file '%s' (from header of '%s') is the same file "
                        "as the image file '%s'", img->backing_path, img->path, dup->name);
    }
    int is_addcow = backing_is_addcow(f, bfmt, img->backing_path);
    if (is_addcow < 0) {
        ac_file_close(f);
        return is_addcow;
    }
    if (is_addcow) {
        if (chain_depth(here) >= AC_MAX_CHAIN_DEPTH) {
            ac_file_close(f);
            return ac_error(ELOOP, "backing file '%s' (from header of '%s'): the backing "
                            "chain is deeper than %d add-cow images",
                            img->backing_path, img->path, AC_MAX_CHAIN_DEPTH);
        }
        struct addcow_options sub = *o;
        sub.cache = o->cache == AC_CACHE_NONE ? AC_CACHE_NONE : AC_CACHE_WRITEBACK;
        r = open_chain(img->backing_path, f, ADDCOW_OPEN_RDONLY, &sub, AC_BFMT_AUTO,
                       here, &img->backing.img);
        if (r < 0)
            return r;
        img->backing.kind = AC_BK_ADDCOW;
        img->backing.size = img->backing.img->size;
        return 0;
    }
    r = lock_file(o, f, AC_LOCK_SHARED, "backing file", img->backing_path);
    if (r >= 0) {
        int64_t sz = f->ops->size(f);
        r = sz < 0 ? ac_error((int)sz, "backing file '%s': cannot get size",
                              img->backing_path) : 0;
        img->backing.size = sz < 0 ? 0 : (uint64_t)sz;
    }
    if (r < 0) {
        ac_file_close(f);
        return r;
    }
    img->backing.kind = AC_BK_RAW;
    img->backing.raw = f;
    return 0;
}

static int open_chain(const char *path, struct ac_file *already, unsigned flags,
                      const struct addcow_options *o, enum ac_backing_format bfmt,
                      const struct ac_chain *up, struct addcow_image **out)
{
    struct addcow_image *img = calloc(1, sizeof(*img));
    unsigned char hdr[AC_HEADER_SIZE];
    struct ac_header h;
    uint64_t id[2], img_id[2];
    int r;

    if (img == NULL) {
        ac_file_close(already);
        return ac_error(ENOMEM, "add-cow file '%s'", path);
    }
    r = ac_select_backend(o, &img->ops);
    if (r < 0) {
        ac_file_close(already);
        free(img);
        return r;
    }
    img->writable = (flags & ADDCOW_OPEN_RDWR) != 0;
    img->cache = o->cache;
    img->opts = *o;
    img->acf = already;
    img->path = strdup(path);
    if (img->path == NULL) {
        r = ac_error(ENOMEM, "add-cow file '%s'", path);
        goto fail;
    }
    if (img->acf == NULL) {
        r = ac_file_open(img->ops, path, img->writable ? AC_FILE_RDWR : AC_FILE_RDONLY,
                         &img->acf);
        if (r < 0) {
            r = ac_error(r, "add-cow file '%s'", path);
            goto fail;
        }
    }
    r = img->acf->ops->identity(img->acf, id);
    if (r < 0) {
        r = ac_error(r, "add-cow file '%s': cannot identify", path);
        goto fail;
    }
    /* An add-cow file met again (in any role) closes a loop. */
    const struct ac_chain *dup = chain_find(up, id);
    if (dup != NULL) {
        r = ac_error(ELOOP, "add-cow file '%s' is already in the chain as '%s': "
                     "the backing chain loops", path, dup->name);
        goto fail;
    }
    r = lock_file(o, img->acf, img->writable ? AC_LOCK_EXCLUSIVE : AC_LOCK_SHARED,
                  "add-cow file", path);
    if (r < 0)
        goto fail;

    int64_t flen = img->acf->ops->size(img->acf);
    if (flen < 0) {
        r = ac_error((int)flen, "add-cow file '%s': cannot get size", path);
        goto fail;
    }
    if (flen == 0) {
        r = ac_error(EINVAL, "add-cow file '%s' is empty: not an add-cow image", path);
        goto fail;
    }
    int64_t got = flen < AC_HEADER_SIZE ? flen
                : ac_file_pread(img->acf, hdr, AC_HEADER_SIZE, 0);
    if (got >= 0 && flen < AC_HEADER_SIZE)
        got = ac_file_pread(img->acf, hdr, (size_t)flen, 0);
    if (got < 0) {
        r = ac_error((int)got, "add-cow file '%s': reading the header", path);
        goto fail;
    }
    enum ac_header_fault fault = ac_header_decode(hdr, (size_t)got, &h);
    if (fault != AC_HDR_OK) {
        r = ac_header_fault_errno(fault);
        if (fault == AC_HDR_SHORT)
            r = ac_error(r, "add-cow file '%s': %s (it has %" PRId64 " bytes)", path,
                         ac_header_fault_str(fault), flen);
        else if (fault == AC_HDR_BAD_VERSION)
            r = ac_error(r, "add-cow file '%s': %s; this one is version %" PRIu32, path,
                         ac_header_fault_str(fault), h.version);
        else if (fault == AC_HDR_SIZE_TOO_BIG)
            r = ac_error(r, "add-cow file '%s': %s: header says %" PRIu64, path,
                         ac_header_fault_str(fault),
                         ac_get_be64(hdr + AC_OFF_SIZE));
        else
            r = ac_error(r, "add-cow file '%s': %s", path, ac_header_fault_str(fault));
        goto fail;
    }
    img->size = h.size & ~(uint64_t)(AC_SECTOR_SIZE - 1);
    img->image_stored = strdup(h.image_file);
    img->backing_stored = h.backing_file[0] ? strdup(h.backing_file) : NULL;
    if (img->image_stored == NULL || (h.backing_file[0] && img->backing_stored == NULL)) {
        r = ac_error(ENOMEM, "add-cow file '%s'", path);
        goto fail;
    }
    r = ac_image_bitmap_open(img, (uint64_t)flen);
    if (r < 0)
        goto fail;

    /* The image file. */
    r = check_stored_path("image file", img->image_stored, path, o);
    if (r < 0)
        goto fail;
    img->image_path = ac_path_resolve(path, img->image_stored);
    if (img->image_path == NULL) {
        r = ac_error(ENOMEM, "add-cow file '%s'", path);
        goto fail;
    }
    r = ac_file_open(img->ops, img->image_path,
                     (img->writable ? AC_FILE_RDWR : AC_FILE_RDONLY) |
                     (o->cache == AC_CACHE_NONE ? AC_FILE_DIRECT : 0), &img->imgf);
    if (r < 0) {
        r = ac_error(r, "image file '%s' (from header of '%s')", img->image_path, path);
        goto fail;
    }
    r = img->imgf->ops->identity(img->imgf, img_id);
    if (r < 0) {
        r = ac_error(r, "image file '%s': cannot identify", img->image_path);
        goto fail;
    }
    const struct ac_chain self = { { id[0], id[1] }, AC_ROLE_ADDCOW, path, up };
    if (img_id[0] == id[0] && img_id[1] == id[1]) {
        r = ac_error(EINVAL, "image file '%s' (from header of '%s') is the add-cow file "
                     "itself", img->image_path, path);
        goto fail;
    }
    dup = chain_find(up, img_id);
    if (dup != NULL) {
        r = ac_error(EINVAL, "image file '%s' (from header of '%s') is the same file as "
                     "'%s', which is already in the backing chain",
                     img->image_path, path, dup->name);
        goto fail;
    }
    r = lock_file(o, img->imgf, img->writable ? AC_LOCK_EXCLUSIVE : AC_LOCK_SHARED,
                  "image file", img->image_path);
    if (r < 0)
        goto fail;

    /* The backing file, below this image in the chain. */
    if (img->backing_stored != NULL) {
        const struct ac_chain with_image = { { img_id[0], img_id[1] }, AC_ROLE_IMAGE,
                                             img->image_path, &self };
        r = open_backing(img, o, bfmt, &with_image);
        if (r < 0)
            goto fail;
    }

    if (pthread_mutex_init(&img->bm_lock, NULL) != 0 ||
        pthread_mutex_init(&img->flush_lock, NULL) != 0 || ac_rl_init(&img->rl) != 0) {
        r = ac_error(ENOMEM, "add-cow file '%s': cannot create locks", path);
        goto fail;
    }
    *out = img;
    return 0;

fail:
    image_free(img);
    return r;
}

int ac_image_open(const char *path, unsigned flags, const struct addcow_options *o,
                  struct addcow_image **out)
{
    return open_chain(path, NULL, flags, o, o->backing_format, NULL, out);
}

int ac_image_close(struct addcow_image *img)
{
    int r = 0;
    if (img->writable)
        r = ac_image_flush(img);
    pthread_mutex_destroy(&img->bm_lock);
    pthread_mutex_destroy(&img->flush_lock);
    ac_rl_destroy(&img->rl);
    image_free(img);
    return r;
}

/* ---- reopening the backing file (commit) -------------------------------- */

int ac_image_open_backing(struct addcow_image *img, bool rdwr, bool lock,
                          struct ac_backing *out)
{
    struct addcow_options o = img->opts;
    uint64_t id[2], img_id[2];
    int r;

    memset(out, 0, sizeof(*out));
    o.locking = lock && img->opts.locking;
    o.custom_backend = img->ops;            /* the backend this handle has */
    if (img->backing.kind == AC_BK_ADDCOW) {
        /* The chain below is checked again, from this image down. */
        if ((r = img->acf->ops->identity(img->acf, id)) < 0)
            return ac_error(r, "add-cow file '%s': cannot identify", img->path);
        if ((r = img->imgf->ops->identity(img->imgf, img_id)) < 0)
            return ac_error(r, "image file '%s': cannot identify", img->image_path);
        const struct ac_chain self = { { id[0], id[1] }, AC_ROLE_ADDCOW, img->path, NULL };
        const struct ac_chain with_image = { { img_id[0], img_id[1] }, AC_ROLE_IMAGE,
                                             img->image_path, &self };
        o.cache = img->opts.cache == AC_CACHE_NONE ? AC_CACHE_NONE : AC_CACHE_WRITEBACK;
        r = open_chain(img->backing_path, NULL, rdwr ? ADDCOW_OPEN_RDWR : ADDCOW_OPEN_RDONLY,
                       &o, AC_BFMT_AUTO, &with_image, &out->img);
        if (r < 0)
            return r;
        out->kind = AC_BK_ADDCOW;
        out->size = out->img->size;
        return 0;
    }
    if (img->backing.kind != AC_BK_RAW)
        return ac_error(EINVAL, "'%s' has no backing file", img->path);
    struct ac_file *f;
    r = ac_file_open(img->ops, img->backing_path,
                     (rdwr ? AC_FILE_RDWR : AC_FILE_RDONLY) |
                     (o.cache == AC_CACHE_NONE ? AC_FILE_DIRECT : 0), &f);
    if (r < 0)
        return ac_error(r, "backing file '%s' (from header of '%s'): opening it %s",
                        img->backing_path, img->path, rdwr ? "read-write" : "read-only");
    r = lock_file(&o, f, rdwr ? AC_LOCK_EXCLUSIVE : AC_LOCK_SHARED, "backing file",
                  img->backing_path);
    if (r == 0) {
        int64_t sz = f->ops->size(f);
        if (sz < 0)
            r = ac_error((int)sz, "backing file '%s': cannot get size", img->backing_path);
        else
            out->size = (uint64_t)sz;
    }
    if (r < 0) {
        ac_file_close(f);
        return r;
    }
    out->kind = AC_BK_RAW;
    out->raw = f;
    return 0;
}

int ac_backing_close(struct ac_backing *b)
{
    int r = 0;
    if (b->kind == AC_BK_ADDCOW && b->img != NULL)
        r = ac_image_close(b->img);
    else if (b->kind == AC_BK_RAW)
        ac_file_close(b->raw);
    memset(b, 0, sizeof(*b));
    return r;
}

/* ---- create ------------------------------------------------------------ */

/* The size a backing file gives a new image: its virtual size if it is an
 * add-cow image, else its length; rounded up to 512. */
static int backing_size_for_create(const char *backing_path, const struct addcow_options *o,
                                   uint64_t *size)
{
    const struct ac_backend_ops *ops;
    struct ac_file *f;
    int r = ac_select_backend(o, &ops);
    if (r < 0)
        return r;
    r = ac_file_open(ops, backing_path, AC_FILE_RDONLY, &f);
    if (r < 0)
        return ac_error(r, "backing file '%s'", backing_path);
    if (size == NULL) {         /* a size was given: it only has to exist */
        ac_file_close(f);
        return 0;
    }
    int is_addcow = backing_is_addcow(f, o->backing_format, backing_path);
    if (is_addcow < 0) {
        ac_file_close(f);
        return is_addcow;
    }
    if (is_addcow) {
        struct addcow_image *b;
        struct addcow_options ro = *o;
        ro.cache = AC_CACHE_WRITEBACK;
        ro.locking = 0;         /* only its size is read, once */
        r = open_chain(backing_path, f, ADDCOW_OPEN_RDONLY, &ro, AC_BFMT_AUTO, NULL, &b);
        if (r < 0)
            return r;
        *size = b->size;
        ac_image_close(b);
        return 0;
    }
    int64_t sz = f->ops->size(f);
    ac_file_close(f);
    if (sz < 0)
        return ac_error((int)sz, "backing file '%s': cannot get size", backing_path);
    if ((uint64_t)sz > AC_MAX_VIRTUAL_SIZE)
        return ac_error(EFBIG, "backing file '%s' is too large", backing_path);
    *size = ((uint64_t)sz + AC_SECTOR_SIZE - 1) & ~(uint64_t)(AC_SECTOR_SIZE - 1);
    return 0;
}

int ac_image_create(const char *path, uint64_t size, const char *backing_file,
                    const char *image_file, const struct addcow_options *o)
{
    const struct ac_backend_ops *ops;
    int sel = ac_select_backend(o, &ops);
    if (sel < 0)
        return sel;
    char *image_path = NULL, *backing_path = NULL, *tmp = NULL;
    struct ac_file *f = NULL, *imgf = NULL, *tf = NULL;
    bool created_image = false;
    int r;

    if (backing_file != NULL && backing_file[0] == '\0')
        backing_file = NULL;
    if (strlen(image_file) > AC_PATH_MAX_LEN)
        return ac_error(ENAMETOOLONG, "image file name is %zu bytes; the header holds at most %u",
                        strlen(image_file), AC_PATH_MAX_LEN);
    if (backing_file != NULL && strlen(backing_file) > AC_PATH_MAX_LEN)
        return ac_error(ENAMETOOLONG, "backing file name is %zu bytes; the header holds at most %u",
                        strlen(backing_file), AC_PATH_MAX_LEN);
    if (size % AC_SECTOR_SIZE != 0)
        return ac_error(EINVAL, "size %" PRIu64 " is not a multiple of 512", size);
    if (size > AC_MAX_VIRTUAL_SIZE)
        return ac_error(EFBIG, "size %" PRIu64 " is too large", size);
    r = check_stored_path("image file", image_file, path, o);
    if (r < 0)
        return r;
    if (backing_file != NULL && (r = check_stored_path("backing file", backing_file, path, o)) < 0)
        return r;

    /* Refuse early if the add-cow file exists; the final rename refuses
     * atomically too. */
    if (ac_file_open(ops, path, AC_FILE_RDONLY, &f) == 0) {
        ac_file_close(f);
        return ac_error(EEXIST, "add-cow file '%s'", path);
    }

    image_path = ac_path_resolve(path, image_file);
    if (image_path == NULL)
        return ac_error(ENOMEM, "creating '%s'", path);
    if (backing_file != NULL) {
        uint64_t bsize = 0;
        backing_path = ac_path_resolve(path, backing_file);
        if (backing_path == NULL) {
            r = ac_error(ENOMEM, "creating '%s'", path);
            goto out;
        }
        r = backing_size_for_create(backing_path, o, size == 0 ? &bsize : NULL);
        if (r < 0)
            goto out;
        if (size == 0)
            size = bsize;
    }

    /* The image file: kept if it exists, extended (sparse) if shorter. */
    r = ac_file_open(ops, image_path, AC_FILE_RDWR | AC_FILE_CREATE | AC_FILE_EXCL, &imgf);
    if (r == 0) {
        created_image = true;
    } else if (r == -EEXIST) {
        r = ac_file_open(ops, image_path, AC_FILE_RDWR, &imgf);
    }
    if (r < 0) {
        r = ac_error(r, "image file '%s'", image_path);
        goto out;
    }
    if (backing_path != NULL) {
        struct ac_file *bf;
        if (ac_file_open(ops, backing_path, AC_FILE_RDONLY, &bf) == 0) {
            bool same = same_file(imgf, bf);
            ac_file_close(bf);
            if (same) {
                r = ac_error(EINVAL, "image file '%s' is the backing file '%s'",
                             image_path, backing_path);
                goto out;
            }
        }
    }
    int64_t isz = imgf->ops->size(imgf);
    if (isz < 0) {
        r = ac_error((int)isz, "image file '%s': cannot get size", image_path);
        goto out;
    }
    if ((uint64_t)isz < size) {
        r = ac_file_truncate(imgf, size);
        if (r == 0)
            r = ac_file_flush(imgf);
        if (r < 0) {
            r = ac_error(r, "image file '%s': extending to %" PRIu64 " bytes", image_path, size);
            goto out;
        }
    }

    /* The add-cow file: written complete under a temporary name, then
     * renamed into place, so no half-written image is ever visible. */
    static unsigned tmp_counter;
    unsigned seq = __atomic_fetch_add(&tmp_counter, 1, __ATOMIC_RELAXED);
    if (asprintf(&tmp, "%s.%ld-%u.tmp", path, (long)getpid(), seq) < 0) {
        tmp = NULL;
        r = ac_error(ENOMEM, "creating '%s'", path);
        goto out;
    }
    r = ac_file_open(ops, tmp, AC_FILE_RDWR | AC_FILE_CREATE | AC_FILE_EXCL, &tf);
    if (r < 0) {
        free(tmp);
        tmp = NULL;
        r = ac_error(r, "add-cow file '%s': creating its temporary file", path);
        goto out;
    }
    unsigned char hdr[AC_HEADER_SIZE];
    ac_header_encode(hdr, backing_file, image_file, size);
    r = ac_file_pwrite(tf, hdr, sizeof(hdr), 0);
    if (r == 0)
        r = ac_file_truncate(tf, ac_file_length_for_size(size));
    if (r == 0)
        r = ac_file_flush(tf);
    if (r < 0) {
        r = ac_error(r, "add-cow file '%s': writing", path);
        goto out;
    }
    ac_file_close(tf);
    tf = NULL;
    r = ops->rename_noreplace(ops, tmp, path);
    if (r == -EEXIST && ac_file_open(ops, path, AC_FILE_RDONLY, &f) == 0) {
        /* Taken since the first check: by the image file we just made? */
        bool same = same_file(f, imgf);
        ac_file_close(f);
        if (same) {
            r = ac_error(EINVAL, "image file '%s' is the add-cow file '%s' itself",
                         image_path, path);
            goto out;
        }
    }
    if (r < 0) {
        r = ac_error(r, "add-cow file '%s'", path);
        goto out;
    }
    free(tmp);
    tmp = NULL;

out:
    if (tf != NULL)
        ac_file_close(tf);
    if (tmp != NULL) {
        ops->unlink(ops, tmp);
        free(tmp);
    }
    ac_file_close(imgf);
    if (r < 0 && created_image)
        ops->unlink(ops, image_path);
    free(image_path);
    free(backing_path);
    return r;
}
