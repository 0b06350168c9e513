/*
 * backend-posix.h: the posix backend's file and calls, for backends that
 * reuse them (backend-uring.c opens, locks and sizes files the posix way
 * and only moves the data differently).  Internal; the table itself is
 * ac_posix_backend in backend.h.
 */
#ifndef AC_BACKEND_POSIX_H
#define AC_BACKEND_POSIX_H

#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "backend.h"

/* Largest bounce buffer for direct I/O from unaligned memory; a longer
 * request is served in pieces of this size. */
#define AC_POSIX_BOUNCE_MAX (1u << 20)

struct posix_file {
    struct ac_file base;
    int fd;            /* the file; O_DIRECT when direct */
    int bfd;           /* buffered twin for unaligned requests, or -1 */
    unsigned mem_align;
    unsigned off_align;
};

static inline struct posix_file *ac_posix_file(struct ac_file *f)
{
    return (struct posix_file *)f;
}

/* How a request at `offset` with these buffers is served, the way posix_rw
 * serves it. */
enum ac_posix_route {
    AC_ROUTE_BUFFERED = 0,      /* through bfd: unaligned offset or length */
    AC_ROUTE_DIRECT = 1,        /* through fd, the buffers as they are */
    AC_ROUTE_BOUNCE = 2,        /* through fd, via an aligned bounce buffer of at
                                 * most AC_POSIX_BOUNCE_MAX bytes */
};
enum ac_posix_route ac_posix_route(const struct posix_file *p, const struct iovec *iov,
                                   int iovcnt, uint64_t offset);

/* The posix calls of ac_posix_backend.  open stores `ops` in the new file,
 * so another table can reuse it and still own its files. */
int ac_posix_open(const struct ac_backend_ops *ops, const char *path, unsigned flags,
                  struct ac_file **out);
/* The same, allocating `size` bytes (zeroed) for a struct that starts with
 * a struct posix_file, for backends that keep more per file; close frees
 * them. */
int ac_posix_open_sized(const struct ac_backend_ops *ops, const char *path, unsigned flags,
                        size_t size, struct ac_file **out);
void ac_posix_close(struct ac_file *f);
ssize_t ac_posix_preadv(struct ac_file *f, const struct iovec *iov, int iovcnt,
                        uint64_t offset);
ssize_t ac_posix_pwritev(struct ac_file *f, const struct iovec *iov, int iovcnt,
                         uint64_t offset);
int ac_posix_flush(struct ac_file *f);
int ac_posix_truncate(struct ac_file *f, uint64_t size);
int64_t ac_posix_size(struct ac_file *f);
int ac_posix_punch_hole(struct ac_file *f, uint64_t offset, uint64_t length);
int ac_posix_lock(struct ac_file *f, int mode);
/* After ac_posix_lock(f, mode) failed with -EBUSY: the processes that hold
 * the conflicting lock, at most max of them into pids; returns how many
 * were found, 0 if the OS does not tell (or the lock is gone).  Slow (it
 * may look through /proc): for error messages only. */
int ac_posix_lock_holders(struct ac_file *f, int mode, pid_t *pids, int max);
int ac_posix_identity(struct ac_file *f, uint64_t id[2]);
int ac_posix_rename_noreplace(const struct ac_backend_ops *ops, const char *from,
                              const char *to);
int ac_posix_unlink(const struct ac_backend_ops *ops, const char *path);
int64_t ac_posix_next_data(struct ac_file *f, uint64_t offset);

#endif
