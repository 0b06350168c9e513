/*
 * addcow.h: the public API of libaddcow, a library for add-cow disk images.
 *
 * Copyright (c) 2026 The libaddcow authors.  MIT licence: see COPYING.
 *
 * An add-cow image is three files: the add-cow file (a header and a bitmap,
 * one bit per 512-byte sector), a raw image file holding the written sectors
 * at their own offsets, and an optional read-only backing file that unwritten
 * sectors read from.  The on-disk format is described in docs/format.md.
 *
 * Conventions: every call that can fail returns a negative errno value
 * (-EINVAL, -ENOENT, ...) and 0 or a non-negative count on success; calls
 * that return a pointer return NULL on failure.  addcow_last_error() then
 * says, for the calling thread, what failed and on which file.
 *
 * This header is self-contained, uses only fixed-width integer types in the
 * ABI, and compiles as C99 and as C++.
 */
#ifndef ADDCOW_H
#define ADDCOW_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>     /* struct iovec */

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && __GNUC__ >= 4
#define ADDCOW_API __attribute__((visibility("default")))
#else
#define ADDCOW_API
#endif

/* ---- version ---------------------------------------------------------- */

#define ADDCOW_VERSION_MAJOR 1
#define ADDCOW_VERSION_MINOR 1
#define ADDCOW_VERSION_MICRO 0

/* The version of the library actually loaded, as "MAJOR.MINOR.MICRO". */
ADDCOW_API const char *addcow_version(void);

/* A message, local to the calling thread, describing the last failed call
 * of that thread: the call, the files and values involved, and the reason.
 * Never NULL; "" when no call of this thread has failed yet. */
ADDCOW_API const char *addcow_last_error(void);

/* ---- options ---------------------------------------------------------- */

/* Options are string keys with string values, so that every language can
 * set them.  Keys:
 *   "backend"        "auto" (default) | "posix" | "io_uring"   which I/O backend does
 *                    the file I/O; auto: io_uring for cache=none when the kernel
 *                    allows it, else posix
 *   "cache"          "writeback" (default) | "writethrough" | "none" (O_DIRECT)
 *   "backing-format" "auto" (default) | "raw" | "add-cow"
 *   "locking"        "on" (default) | "off"
 *   "paths"          "any" (default) | "confined"
 * An unknown key or value fails with -EINVAL and a message naming the key. */
typedef struct addcow_options addcow_options;

ADDCOW_API addcow_options *addcow_options_new(void);
ADDCOW_API void addcow_options_free(addcow_options *opts);   /* NULL is fine */
ADDCOW_API int addcow_options_set(addcow_options *opts, const char *key,
                                  const char *value);

/* ---- create, open, close ---------------------------------------------- */

/* Writes a new add-cow file at `path` (never a half-written one: the file
 * appears under its name only once complete).  `backing_file` may be NULL
 * (none); `image_file` is stored as given and created sparse if missing.
 * Relative paths are relative to the folder of `path`.  size 0 with a
 * backing file takes the backing file's (virtual) size rounded up to 512.
 * -EEXIST if path exists; -EINVAL for a size not a multiple of 512;
 * -ENAMETOOLONG for a stored path longer than 1023 bytes. */
ADDCOW_API int addcow_create(const char *path, uint64_t size,
                             const char *backing_file,
                             const char *image_file,
                             const addcow_options *opts);

typedef struct addcow_image addcow_image;

#define ADDCOW_OPEN_RDONLY 0x0u
#define ADDCOW_OPEN_RDWR   0x1u

ADDCOW_API int addcow_open(const char *path, unsigned flags,
                           const addcow_options *opts, addcow_image **out);

/* Flushes a writable image, then frees it, even when the flush fails (the
 * flush's error is returned).  NULL: does nothing, returns 0.  Must not run
 * alongside other calls on the same handle. */
ADDCOW_API int addcow_close(addcow_image *img);

ADDCOW_API int64_t addcow_get_size(addcow_image *img);
ADDCOW_API const char *addcow_get_backing_file(addcow_image *img);
ADDCOW_API const char *addcow_get_image_file(addcow_image *img);
ADDCOW_API int64_t addcow_get_allocated_bytes(addcow_image *img);

/* ---- data ------------------------------------------------------------- */

/* Any offset and length, no alignment needed.  A read returns count, or
 * fewer bytes only where it reaches the virtual size (0 at or past it).  A
 * write returns count or fails; one that would reach past the virtual size
 * fails with -ENOSPC and changes nothing.  Writes on a read-only handle fail
 * with -EBADF.  Safe to call from many threads at once on one handle. */
ADDCOW_API int64_t addcow_pread(addcow_image *img, void *buf, size_t count,
                                uint64_t offset);
ADDCOW_API int64_t addcow_pwrite(addcow_image *img, const void *buf,
                                 size_t count, uint64_t offset);
ADDCOW_API int64_t addcow_preadv(addcow_image *img, const struct iovec *iov,
                                 int iovcnt, uint64_t offset);
ADDCOW_API int64_t addcow_pwritev(addcow_image *img, const struct iovec *iov,
                                  int iovcnt, uint64_t offset);

/* May free the image file's blocks (punch a hole) where whole sectors are
 * zeroed. */
#define ADDCOW_ZEROES_MAY_UNMAP 0x1u

ADDCOW_API int addcow_write_zeroes(addcow_image *img, uint64_t offset,
                                   uint64_t length, unsigned flags);

/* Makes every completed write durable: the image file first, then the
 * bitmap bits that cover it. */
ADDCOW_API int addcow_flush(addcow_image *img);

/* Growing: the new area reads as zeros, even where the backing file is
 * longer.  Shrinking: data past the new end is gone.  size must be a
 * multiple of 512 (-EINVAL).  Must not run alongside other calls on the
 * same handle. */
ADDCOW_API int addcow_truncate(addcow_image *img, uint64_t size);

/* ---- allocation ------------------------------------------------------- */

#define ADDCOW_STATUS_ALLOCATED 0x1u  /* data is in this image's image file */
#define ADDCOW_STATUS_ZERO      0x2u  /* not allocated, no backing data there */

/* Returns the status flags of the byte at offset, and in *run_length the
 * length of the longest run from offset, at most length, in which every
 * byte has the same flags.  length 0 or offset at or past the end: -EINVAL. */
ADDCOW_API int addcow_block_status(addcow_image *img, uint64_t offset,
                                   uint64_t length, uint64_t *run_length);

/* ---- long operations (ABI 1.1) -------------------------------------- */

/* Called now and then by a long operation with the bytes done so far and
 * the total (both in bytes of the virtual disk).  A non-zero return stops
 * the operation cleanly: it returns -ECANCELED, and what it finished so far
 * is kept, durable and consistent.  Called on the caller's thread. */
typedef int (*addcow_progress_fn)(uint64_t done, uint64_t total, void *opaque);

/* Hydrate (stream): copies the backing file's data into the image file for
 * every unallocated sector of [offset, offset + length) that the backing
 * file covers, and sets those sectors' bits (sectors past the backing
 * file's end read as zeros and are left unallocated), so that this range no
 * longer needs the backing file.  length 0 means "to the end of the disk".
 * Crash-safe and resumable: the work is flushed as it goes, and a second
 * call skips what is allocated already.  Other threads may read and write
 * the same handle meanwhile.  progress may be NULL.  On a read-only handle:
 * -EBADF. */
ADDCOW_API int addcow_hydrate(addcow_image *img, uint64_t offset,
                              uint64_t length, addcow_progress_fn progress,
                              void *opaque);

/* Detach: once no sector reads from the backing file (every sector below
 * the backing file's end is allocated), clears the header's backing_file
 * field, durably and atomically; the image file is then the whole virtual
 * disk, a plain raw file.  -EBUSY (and nothing changes) while some sector
 * still reads backing data; 0 and no change without a backing file.  Must
 * not run alongside other calls on the same handle. */
ADDCOW_API int addcow_detach(addcow_image *img);

/* Commit: writes every allocated sector into the backing file (a raw file,
 * or the top image of an add-cow chain), makes it durable, then clears
 * those sectors' bits, so that the backing file alone holds the virtual
 * disk.  Interrupted at any point (crash, error, cancel), the virtual disk
 * still reads the same.  The backing file is reopened read-write for the
 * duration (-EBUSY if another handle holds it).  Without a backing file:
 * -EINVAL.  Must not run alongside other calls on the same handle.
 * progress may be NULL. */
ADDCOW_API int addcow_commit(addcow_image *img, addcow_progress_fn progress,
                             void *opaque);

/* ---- format codec ----------------------------------------------------- */

/* 1 if buf starts with an add-cow v1 header (magic and version); else 0. */
ADDCOW_API int addcow_probe(const void *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* ADDCOW_H */
