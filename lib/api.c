/*
 * api.c: the public entry points.  Each one names itself for error
 * messages, checks its arguments, and calls the internal function.
 */
#include "config.h"

#include "hot.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "addcow.h"
#include "codec.h"
#include "error.h"
#include "image.h"
#include "iov.h"
#include "options.h"

#define ENTER() ac_enter(__func__)

#define CHECK_IMG(img)                                                  \
    do {                                                                \
        if ((img) == NULL)                                              \
            return ac_error(EINVAL, "image handle is NULL");            \
    } while (0)

ADDCOW_API const char *addcow_version(void)
{
    return PACKAGE_VERSION;
}

ADDCOW_API const char *addcow_last_error(void)
{
    return ac_error_get();
}

/* ---- options ----------------------------------------------------------- */

ADDCOW_API addcow_options *addcow_options_new(void)
{
    ENTER();
    addcow_options *o = malloc(sizeof(*o));
    if (o == NULL) {
        ac_error(ENOMEM, "allocating options");
        return NULL;
    }
    *o = ac_default_options;
    return o;
}

ADDCOW_API void addcow_options_free(addcow_options *opts)
{
    free(opts);
}

ADDCOW_API int addcow_options_set(addcow_options *opts, const char *key, const char *value)
{
    ENTER();
    if (opts == NULL)
        return ac_error(EINVAL, "options handle is NULL");
    if (key == NULL)
        return ac_error(EINVAL, "option key is NULL");
    if (value == NULL)
        return ac_error(EINVAL, "option '%s': value is NULL", key);
    return ac_options_set(opts, key, value);
}

static const struct addcow_options *opts_or_default(const addcow_options *opts)
{
    return opts != NULL ? opts : &ac_default_options;
}

/* ---- create, open, close ------------------------------------------------ */

ADDCOW_API int addcow_create(const char *path, uint64_t size, const char *backing_file,
                             const char *image_file, const addcow_options *opts)
{
    ENTER();
    if (path == NULL || path[0] == '\0')
        return ac_error(EINVAL, "add-cow file path is %s", path == NULL ? "NULL" : "empty");
    if (image_file == NULL || image_file[0] == '\0')
        return ac_error(EINVAL, "image file name is %s (an add-cow image needs one)",
                        image_file == NULL ? "NULL" : "empty");
    return ac_image_create(path, size, backing_file, image_file, opts_or_default(opts));
}

ADDCOW_API int addcow_open(const char *path, unsigned flags, const addcow_options *opts,
                           addcow_image **out)
{
    ENTER();
    if (out == NULL)
        return ac_error(EINVAL, "output handle pointer is NULL");
    *out = NULL;
    if (path == NULL || path[0] == '\0')
        return ac_error(EINVAL, "add-cow file path is %s", path == NULL ? "NULL" : "empty");
    if (flags & ~ADDCOW_OPEN_RDWR)
        return ac_error(EINVAL, "unknown open flags 0x%x", flags & ~ADDCOW_OPEN_RDWR);
    return ac_image_open(path, flags, opts_or_default(opts), out);
}

ADDCOW_API int addcow_close(addcow_image *img)
{
    ENTER();
    if (img == NULL)
        return 0;
    return ac_image_close(img);
}

ADDCOW_API int64_t addcow_get_size(addcow_image *img)
{
    ENTER();
    CHECK_IMG(img);
    return (int64_t)img->size;
}

ADDCOW_API const char *addcow_get_backing_file(addcow_image *img)
{
    ENTER();
    if (img == NULL) {
        ac_error(EINVAL, "image handle is NULL");
        return NULL;
    }
    return img->backing_stored;
}

ADDCOW_API const char *addcow_get_image_file(addcow_image *img)
{
    ENTER();
    if (img == NULL) {
        ac_error(EINVAL, "image handle is NULL");
        return NULL;
    }
    return img->image_stored;
}

ADDCOW_API int64_t addcow_get_allocated_bytes(addcow_image *img)
{
    ENTER();
    CHECK_IMG(img);
    return ac_image_allocated_bytes(img);
}

/* ---- data -------------------------------------------------------------- */

static int check_iov(const struct iovec *iov, int iovcnt, uint64_t *total)
{
    if (iovcnt < 0 || iovcnt > IOV_MAX)
        return ac_error(EINVAL, "iovcnt %d is out of range (0..%d)", iovcnt, IOV_MAX);
    if (iov == NULL && iovcnt > 0)
        return ac_error(EINVAL, "iovec array is NULL");
    for (int i = 0; i < iovcnt; i++)
        if (iov[i].iov_base == NULL && iov[i].iov_len > 0)
            return ac_error(EINVAL, "iovec %d has a NULL buffer", i);
    *total = ac_iov_size(iov, iovcnt);
    if (*total > INT64_MAX)
        return ac_error(EINVAL, "request of more than 2^63 bytes");
    return 0;
}

AC_HOT static int check_buf(const void *buf, size_t count)
{
    if (buf == NULL && count > 0)
        return ac_error(EINVAL, "buffer is NULL");
    if (count > INT64_MAX)
        return ac_error(EINVAL, "count %zu is larger than 2^63 - 1", count);
    return 0;
}

AC_HOT static int64_t do_read(addcow_image *img, const struct iovec *iov, int iovcnt,
                       uint64_t total, uint64_t offset)
{
    if (offset >= img->size || total == 0)
        return 0;
    if (total > img->size - offset)
        total = img->size - offset;
    int r = ac_image_readv(img, iov, iovcnt, offset, total);
    return r < 0 ? r : (int64_t)total;
}

/* Checks that a write of len bytes at offset fits and may happen. */
AC_HOT static int check_write(addcow_image *img, uint64_t offset, uint64_t len, const char *what)
{
    if (!img->writable)
        return ac_error(EBADF, "'%s' is open read-only", img->path);
    if (len == 0)
        return 0;       /* zero-length writes succeed and do nothing, anywhere */
    if (offset > img->size || len > img->size - offset)
        return ac_error(ENOSPC, "%s of %" PRIu64 " bytes at %" PRIu64 " reaches past the "
                        "end of '%s' (virtual size %" PRIu64 ")", what, len, offset,
                        img->path, img->size);
    return 0;
}

AC_HOT static int64_t do_write(addcow_image *img, const struct iovec *iov, int iovcnt,
                        uint64_t total, uint64_t offset)
{
    int r = check_write(img, offset, total, "write");
    if (r < 0)
        return r;
    if (total == 0)
        return 0;
    r = ac_image_writev(img, iov, iovcnt, offset, total);
    return r < 0 ? r : (int64_t)total;
}

AC_HOT ADDCOW_API int64_t addcow_pread(addcow_image *img, void *buf, size_t count, uint64_t offset)
{
    ENTER();
    CHECK_IMG(img);
    int r = check_buf(buf, count);
    if (r < 0)
        return r;
    struct iovec v = { buf, count };
    return do_read(img, &v, 1, count, offset);
}

AC_HOT ADDCOW_API int64_t addcow_pwrite(addcow_image *img, const void *buf, size_t count,
                                 uint64_t offset)
{
    ENTER();
    CHECK_IMG(img);
    int r = check_buf(buf, count);
    if (r < 0)
        return r;
    struct iovec v = { (void *)buf, count };
    return do_write(img, &v, 1, count, offset);
}

ADDCOW_API int64_t addcow_preadv(addcow_image *img, const struct iovec *iov, int iovcnt,
                                 uint64_t offset)
{
    ENTER();
    CHECK_IMG(img);
    uint64_t total;
    int r = check_iov(iov, iovcnt, &total);
    if (r < 0)
        return r;
    return do_read(img, iov, iovcnt, total, offset);
}

ADDCOW_API int64_t addcow_pwritev(addcow_image *img, const struct iovec *iov, int iovcnt,
                                  uint64_t offset)
{
    ENTER();
    CHECK_IMG(img);
    uint64_t total;
    int r = check_iov(iov, iovcnt, &total);
    if (r < 0)
        return r;
    return do_write(img, iov, iovcnt, total, offset);
}

ADDCOW_API int addcow_write_zeroes(addcow_image *img, uint64_t offset, uint64_t length,
                                   unsigned flags)
{
    ENTER();
    CHECK_IMG(img);
    if (flags & ~ADDCOW_ZEROES_MAY_UNMAP)
        return ac_error(EINVAL, "unknown write_zeroes flags 0x%x",
                        flags & ~ADDCOW_ZEROES_MAY_UNMAP);
    int r = check_write(img, offset, length, "write_zeroes");
    if (r < 0 || length == 0)
        return r;
    return ac_image_write_zeroes(img, offset, length, flags);
}

ADDCOW_API int addcow_flush(addcow_image *img)
{
    ENTER();
    CHECK_IMG(img);
    return ac_image_flush(img);
}

ADDCOW_API int addcow_truncate(addcow_image *img, uint64_t size)
{
    ENTER();
    CHECK_IMG(img);
    if (!img->writable)
        return ac_error(EBADF, "'%s' is open read-only", img->path);
    if (size % AC_SECTOR_SIZE != 0)
        return ac_error(EINVAL, "new size %" PRIu64 " is not a multiple of 512", size);
    if (size > AC_MAX_VIRTUAL_SIZE)
        return ac_error(EFBIG, "new size %" PRIu64 " is too large", size);
    return ac_image_truncate(img, size);
}

/* ---- allocation ---------------------------------------------------------- */

ADDCOW_API int addcow_block_status(addcow_image *img, uint64_t offset, uint64_t length,
                                   uint64_t *run_length)
{
    ENTER();
    CHECK_IMG(img);
    if (run_length == NULL)
        return ac_error(EINVAL, "run_length pointer is NULL");
    if (length == 0)
        return ac_error(EINVAL, "length is 0");
    if (offset >= img->size)
        return ac_error(EINVAL, "offset %" PRIu64 " is at or past the end of '%s' (%" PRIu64
                        " bytes)", offset, img->path, img->size);
    if (length > img->size - offset)
        length = img->size - offset;
    return (int)ac_image_status(img, offset, length, run_length);
}

/* ---- codec ---------------------------------------------------------------- */

ADDCOW_API int addcow_probe(const void *buf, size_t len)
{
    return ac_header_probe(buf, len);
}
