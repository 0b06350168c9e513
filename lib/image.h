/*
 * image.h: an open add-cow image and the internal calls on it.  The public
 * layer (api.c) checks arguments and calls these; they assume valid
 * arguments (offsets inside the disk, non-NULL pointers).
 */
#ifndef AC_IMAGE_H
#define AC_IMAGE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "addcow.h"
#include "backend.h"
#include "bitmap.h"
#include "options.h"
#include "rangelock.h"

/* Add-cow images in one chain, the top one included. */
#define AC_MAX_CHAIN_DEPTH 16

enum ac_backing_kind { AC_BK_NONE = 0, AC_BK_RAW, AC_BK_ADDCOW };

struct ac_backing {
    enum ac_backing_kind kind;
    struct ac_file *raw;            /* AC_BK_RAW */
    struct addcow_image *img;       /* AC_BK_ADDCOW */
    uint64_t size;                  /* bytes of backing data: file or virtual size */
};

struct addcow_image {
    char *path;                     /* the add-cow file, as given */
    char *backing_stored;           /* header field; NULL: none */
    char *image_stored;             /* header field */
    char *image_path;               /* resolved */
    char *backing_path;             /* resolved; NULL: none */
    const struct ac_backend_ops *ops;
    struct ac_file *acf;            /* the add-cow file */
    struct ac_file *imgf;           /* the image file */
    struct ac_backing backing;
    uint64_t size;                  /* virtual size, a multiple of 512 */
    bool writable;
    enum ac_cache_mode cache;
    struct addcow_options opts;     /* as opened with, to reopen the backing file */

    pthread_mutex_t bm_lock;        /* guards bm; never held across I/O */
    struct ac_bitmap bm;
    pthread_mutex_t flush_lock;     /* one flush at a time */
    bool acf_unsynced;              /* bitmap bytes written, add-cow file not yet
                                     * durable (under flush_lock) */
    struct ac_rangelock rl;         /* allocating writes, by sector */
};

int ac_image_create(const char *path, uint64_t size, const char *backing_file,
                    const char *image_file, const struct addcow_options *o);
int ac_image_open(const char *path, unsigned flags, const struct addcow_options *o,
                  struct addcow_image **out);
int ac_image_close(struct addcow_image *img);

/* Opens img's backing file again into *out, in the format it has now (raw
 * or add-cow), with img's options and backend: read-write with exclusive
 * locks (rdwr), or read-only with shared ones; lock = false takes no
 * locks at all.  img is not changed.  0, or a negative errno with the
 * thread's message set. */
int ac_image_open_backing(struct addcow_image *img, bool rdwr, bool lock,
                          struct ac_backing *out);
/* Closes a backing file opened by open or ac_image_open_backing (flushing
 * a writable add-cow one; its error is returned) and marks *b empty. */
int ac_backing_close(struct ac_backing *b);

/* Data: offset + len <= size, len > 0. */
int ac_image_readv(struct addcow_image *img, const struct iovec *iov, int iovcnt,
                   uint64_t offset, uint64_t len);
int ac_image_writev(struct addcow_image *img, const struct iovec *iov, int iovcnt,
                    uint64_t offset, uint64_t len);
int ac_image_write_zeroes(struct addcow_image *img, uint64_t offset, uint64_t len,
                          unsigned flags);
int ac_image_flush(struct addcow_image *img);
int ac_image_truncate(struct addcow_image *img, uint64_t size);

/* The allocation map (alloc.c).  ac_image_bitmap_open sets up the bitmap
 * of a freshly opened image (nothing is read yet); ac_image_ensure_known
 * reads the chunks of sectors [s0, s1) not read yet.  ac_image_status: the
 * allocation walk, offset < size, len > 0, offset + len <= size; returns
 * the flags or a negative errno. */
int ac_image_bitmap_open(struct addcow_image *img, uint64_t file_len);
int ac_image_ensure_known(struct addcow_image *img, uint64_t s0, uint64_t s1);
int ac_image_status(struct addcow_image *img, uint64_t offset, uint64_t len,
                    uint64_t *run);
int64_t ac_image_allocated_bytes(struct addcow_image *img);

#endif
