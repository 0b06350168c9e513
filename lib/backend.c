/*
 * backend.c: helpers shared by every backend user: loops over short reads
 * and writes.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>

#include "backend.h"
#include "iov.h"

#define SMALL_IOV 16

int64_t ac_file_read_full(struct ac_file *f, const struct iovec *iov, int iovcnt,
                          uint64_t offset, uint64_t len)
{
    struct iovec small[SMALL_IOV], *piece = small;
    uint64_t done = 0;
    int64_t ret = 0;

    if (iovcnt > SMALL_IOV && (piece = malloc(sizeof(*piece) * (size_t)iovcnt)) == NULL)
        return -ENOMEM;
    while (done < len) {
        int n = ac_iov_slice(iov, iovcnt, done, len - done, piece);
        ssize_t r = f->ops->preadv(f, piece, n > IOV_MAX ? IOV_MAX : n, offset + done);
        if (r == -EINTR)
            continue;
        if (r < 0) {
            ret = r;
            break;
        }
        if (r == 0)
            break;
        done += (uint64_t)r;
    }
    if (piece != small)
        free(piece);
    return ret < 0 ? ret : (int64_t)done;
}

int ac_file_write_full(struct ac_file *f, const struct iovec *iov, int iovcnt,
                       uint64_t offset, uint64_t len)
{
    struct iovec small[SMALL_IOV], *piece = small;
    uint64_t done = 0;
    int ret = 0;

    if (iovcnt > SMALL_IOV && (piece = malloc(sizeof(*piece) * (size_t)iovcnt)) == NULL)
        return -ENOMEM;
    while (done < len) {
        int n = ac_iov_slice(iov, iovcnt, done, len - done, piece);
        ssize_t r = f->ops->pwritev(f, piece, n > IOV_MAX ? IOV_MAX : n, offset + done);
        if (r == -EINTR)
            continue;
        if (r < 0) {
            ret = (int)r;
            break;
        }
        if (r == 0) {
            ret = -EIO;
            break;
        }
        done += (uint64_t)r;
    }
    if (piece != small)
        free(piece);
    return ret;
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
