/*
 * backend.c: helpers shared by every backend user: loops over short reads
 * and writes.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>

#include "backend.h"
#include "iov.h"

#define SMALL_IOV 16

/* Repeats preadv or pwritev until len bytes are done, end of file (reads),
 * or an error.  Returns the bytes done or a negative errno. */
static int64_t transfer_full(struct ac_file *f, const struct iovec *iov, int iovcnt,
                             uint64_t offset, uint64_t len, bool write)
{
    struct iovec small[SMALL_IOV], *piece = small;
    uint64_t done = 0;
    int64_t ret = 0;

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

int64_t ac_file_read_full(struct ac_file *f, const struct iovec *iov, int iovcnt,
                          uint64_t offset, uint64_t len)
{
    return transfer_full(f, iov, iovcnt, offset, len, false);
}

int ac_file_write_full(struct ac_file *f, const struct iovec *iov, int iovcnt,
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
                q->result = q->file->ops->flush(q->file);
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
