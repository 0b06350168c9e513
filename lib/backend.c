/*
 * backend.c: choosing the backend for a set of options, and helpers shared
 * by every backend user: loops over short reads and writes, batches.
 */
#include "config.h"

#include "hot.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "iov.h"
#include "options.h"

#define SMALL_IOV 16

/* ---- choosing a backend ------------------------------------------------ */

#ifndef HAVE_LIBURING
int ac_uring_probe(void)
{
    return -ENOTSUP;
}
#endif

/* Tests only: what "auto" resolves to, or -1 for the normal choice. */
static int auto_override = -1;

void ac_backend_set_auto_override(int kind)
{
    __atomic_store_n(&auto_override, kind, __ATOMIC_RELAXED);
}

/* What backend=auto means.  This is the one place that decides it: today
 * io_uring whenever it is built and the kernel accepts it, else posix.
 * (Whether auto should prefer io_uring is for benchmarks to say; to flip
 * it, return AC_BACKEND_POSIX here.) */
/* What "auto" means, from the measurements in BENCHMARKS.md: with the page
 * cache (cache=writeback/writethrough) single requests are as fast or
 * faster through pread/pwrite, so posix; with O_DIRECT (cache=none)
 * io_uring is faster, so io_uring when the kernel allows it. */
static enum ac_backend_kind auto_backend(const struct addcow_options *o)
{
    int forced = __atomic_load_n(&auto_override, __ATOMIC_RELAXED);
    if (forced >= 0)
        return (enum ac_backend_kind)forced;
    if (o->cache != AC_CACHE_NONE)
        return AC_BACKEND_POSIX;
    return ac_uring_probe() == 0 ? AC_BACKEND_IO_URING : AC_BACKEND_POSIX;
}

int ac_select_backend(const struct addcow_options *o, const struct ac_backend_ops **out)
{
    if (o->custom_backend != NULL) {
        *out = o->custom_backend;
        return 0;
    }
    enum ac_backend_kind kind = o->backend == AC_BACKEND_AUTO ? auto_backend(o) : o->backend;
    if (kind != AC_BACKEND_IO_URING) {
        *out = &ac_posix_backend;
        return 0;
    }
    int r = ac_uring_probe();
    if (r == -ENOTSUP)
        return ac_error(ENOTSUP, "backend 'io_uring' is not built into this library "
                        "(configure --with-liburing)");
    if (r == -ENOSYS)
        return ac_error(ENOSYS, "backend 'io_uring': the kernel refuses io_uring "
                        "(not built in, disabled by sysctl kernel.io_uring_disabled, "
                        "or forbidden by a seccomp policy); use backend=posix or auto");
    if (r < 0)
        return ac_error(r, "backend 'io_uring': cannot set up an io_uring ring");
#ifdef HAVE_LIBURING
    *out = &ac_uring_backend;
#endif
    return 0;
}

/* ---- operations, with EINTR repeated ------------------------------------ */

int ac_file_open(const struct ac_backend_ops *ops, const char *path, unsigned flags,
                 struct ac_file **out)
{
    int r;
    do
        r = ops->open(ops, path, flags, out);
    while (r == -EINTR);
    return r;
}

int ac_file_flush(struct ac_file *f)
{
    int r;
    do
        r = f->ops->flush(f);
    while (r == -EINTR);
    return r;
}

int ac_file_truncate(struct ac_file *f, uint64_t size)
{
    int r;
    do
        r = f->ops->truncate(f, size);
    while (r == -EINTR);
    return r;
}

int ac_file_punch_hole(struct ac_file *f, uint64_t offset, uint64_t length)
{
    int r;
    do
        r = f->ops->punch_hole(f, offset, length);
    while (r == -EINTR);
    return r;
}

int ac_file_lock(struct ac_file *f, int mode)
{
    int r;
    do
        r = f->ops->lock(f, mode);
    while (r == -EINTR);
    return r;
}

/* ---- transfers --------------------------------------------------------- */

/* Repeats preadv or pwritev until len bytes are done, end of file (reads),
 * or an error.  Returns the bytes done or a negative errno. */
AC_HOT static int64_t transfer_full(struct ac_file *f, const struct iovec *iov, int iovcnt,
                             uint64_t offset, uint64_t len, bool write)
{
    struct iovec small[SMALL_IOV], *piece = small;
    uint64_t done = 0;
    int64_t ret = 0;

    /* The usual case: one call does it all. */
    if (iovcnt <= IOV_MAX && len > 0 && ac_iov_size(iov, iovcnt) == len) {
        ssize_t r = write ? f->ops->pwritev(f, iov, iovcnt, offset)
                          : f->ops->preadv(f, iov, iovcnt, offset);
        if (r < 0 && r != -EINTR)
            return r;
        if (r > 0)
            done = (uint64_t)r;
        if (done == len || (r == 0 && !write))
            return (int64_t)done;
    }
    if (iovcnt > SMALL_IOV && (piece = malloc(sizeof(*piece) * (size_t)iovcnt)) == NULL)
        return -ENOMEM;
    while (done < len) {
        int n = ac_iov_slice(iov, iovcnt, done, len - done, piece);
        if (n > IOV_MAX)
            n = IOV_MAX;
        ssize_t r = write ? f->ops->pwritev(f, piece, n, offset + done)
                          : f->ops->preadv(f, piece, n, offset + done);
        if (r == -EINTR)
            continue;
        if (r < 0) {
            ret = r;
            break;
        }
        if (r == 0) {
            ret = write ? -EIO : 0;    /* a write that makes no progress */
            break;
        }
        done += (uint64_t)r;
    }
    if (piece != small)
        free(piece);
    return ret < 0 ? ret : (int64_t)done;
}

AC_HOT int64_t ac_file_read_full(struct ac_file *f, const struct iovec *iov, int iovcnt,
                          uint64_t offset, uint64_t len)
{
    return transfer_full(f, iov, iovcnt, offset, len, false);
}

AC_HOT int ac_file_write_full(struct ac_file *f, const struct iovec *iov, int iovcnt,
                       uint64_t offset, uint64_t len)
{
    int64_t r = transfer_full(f, iov, iovcnt, offset, len, true);
    return r < 0 ? (int)r : 0;
}

int64_t ac_file_pread(struct ac_file *f, void *buf, size_t len, uint64_t offset)
{
    struct iovec v = { buf, len };
    return ac_file_read_full(f, &v, 1, offset, len);
}

int ac_file_pwrite(struct ac_file *f, const void *buf, size_t len, uint64_t offset)
{
    struct iovec v = { (void *)buf, len };
    return ac_file_write_full(f, &v, 1, offset, len);
}

int ac_submit(struct ac_req *reqs, int n)
{
    if (n <= 0)
        return 0;
    const struct ac_backend_ops *ops = reqs[0].file->ops;
    bool cancel = false;

    if (ops->submit != NULL) {
        int r = ops->submit(ops, reqs, n);
        if (r < 0)
            return r;
    } else {
        for (int i = 0; i < n; i++) {
            struct ac_req *q = &reqs[i];
            if (cancel) {
                q->result = -ECANCELED;
            } else if (q->op == AC_REQ_READ) {
                q->result = ac_file_read_full(q->file, q->iov, q->iovcnt, q->offset, q->len);
            } else if (q->op == AC_REQ_WRITE) {
                q->result = ac_file_write_full(q->file, q->iov, q->iovcnt, q->offset, q->len);
            } else {
                q->result = ac_file_flush(q->file);
            }
            /* A chain ends at the first request without the link flag. */
            cancel = (q->flags & AC_REQ_LINK) && (cancel || q->result < 0);
        }
    }
    for (int i = 0; i < n; i++)
        if (reqs[i].result < 0)
            return (int)reqs[i].result;
    return 0;
}
