/*
 * backend.h: the I/O backend interface.  Every byte the library reads or
 * writes goes through one of these tables; the posix backend
 * (backend-posix.c) is the default, tests plug in their own (memory,
 * fault-injecting, recording), and further backends (io_uring) add a file
 * and a table.
 *
 * Calls return a negative errno on failure.  preadv and pwritev may return
 * short counts (preadv returns 0 at end of file); ac_file_read_full() and
 * ac_file_write_full() loop over them.
 */
#ifndef AC_BACKEND_H
#define AC_BACKEND_H

#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

/* ac_backend_ops.open flags */
#define AC_FILE_RDONLY  0x0u
#define AC_FILE_RDWR    0x1u
#define AC_FILE_CREATE  0x2u   /* create if missing */
#define AC_FILE_EXCL    0x4u   /* with CREATE: fail with -EEXIST if it exists */
#define AC_FILE_DIRECT  0x8u   /* bypass the page cache (O_DIRECT) */

/* lock modes */
#define AC_LOCK_SHARED    1
#define AC_LOCK_EXCLUSIVE 2

struct ac_file;

/* A request of a batch (ac_submit). */
#define AC_REQ_READ   0
#define AC_REQ_WRITE  1
#define AC_REQ_FLUSH  2     /* make the file's data durable (fdatasync) */

/* The next request of the batch starts only after this one has succeeded
 * (completely); if this one fails, the rest of the chain is cancelled. */
#define AC_REQ_LINK   0x1u

struct ac_req {
    struct ac_file *file;
    int op;                         /* AC_REQ_* */
    unsigned flags;                 /* AC_REQ_LINK */
    const struct iovec *iov;        /* READ/WRITE: the buffers */
    int iovcnt;
    uint64_t offset;
    uint64_t len;                   /* READ/WRITE: bytes, the sum of iov */
    int64_t result;                 /* out: READ: bytes read (short only at end of
                                     * file); WRITE/FLUSH: 0; or -errno;
                                     * -ECANCELED when a link before it failed */
};

#define AC_BACKEND_OPS_VERSION 1

struct ac_backend_ops {
    unsigned version;          /* AC_BACKEND_OPS_VERSION */
    const char *name;

    /* Opens a local file.  A directory fails with -EISDIR. */
    int (*open)(const struct ac_backend_ops *ops, const char *path,
                unsigned flags, struct ac_file **out);
    void (*close)(struct ac_file *f);
    ssize_t (*preadv)(struct ac_file *f, const struct iovec *iov, int iovcnt,
                      uint64_t offset);
    ssize_t (*pwritev)(struct ac_file *f, const struct iovec *iov, int iovcnt,
                       uint64_t offset);
    int (*flush)(struct ac_file *f);                 /* data durable (fdatasync) */
    int (*truncate)(struct ac_file *f, uint64_t size);
    int64_t (*size)(struct ac_file *f);
    /* Deallocates a range so that it reads as zeros; -EOPNOTSUPP if the
     * file cannot. */
    int (*punch_hole)(struct ac_file *f, uint64_t offset, uint64_t length);
    /* Advisory lock on the whole file, held until close; -EBUSY if another
     * holder conflicts.  NULL: the backend has no locks. */
    int (*lock)(struct ac_file *f, int mode);
    /* An identity that is equal for two opens of the same file. */
    int (*identity)(struct ac_file *f, uint64_t id[2]);
    /* Renames `from` to `to` unless `to` exists (-EEXIST), durably. */
    int (*rename_noreplace)(const struct ac_backend_ops *ops, const char *from,
                            const char *to);
    int (*unlink)(const struct ac_backend_ops *ops, const char *path);

    /* Optional.  Runs a batch of requests on files of this backend, all at
     * once where it can (one system call for the lot), honouring
     * AC_REQ_LINK; fills in each result.  Returns 0 when every request ran
     * (look at the results), or a negative errno when the batch could not
     * be run at all.  NULL: ac_submit() runs them one by one. */
    int (*submit)(const struct ac_backend_ops *ops, struct ac_req *reqs, int n);

    /* Optional.  The offset of the first byte at or after `offset` that is
     * not in a hole (SEEK_DATA), or the file size if there is none; NULL:
     * holes are unknown. */
    int64_t (*next_data)(struct ac_file *f, uint64_t offset);
};

struct ac_file {
    const struct ac_backend_ops *ops;
};

extern const struct ac_backend_ops ac_posix_backend;
#ifdef HAVE_LIBURING
/* backend-uring.c: files opened the posix way, data moved through io_uring. */
extern const struct ac_backend_ops ac_uring_backend;
#endif

/* 0 if the io_uring backend is built in and the kernel accepts io_uring
 * (found out once per process by setting up a small ring); else -ENOTSUP
 * (not built), -ENOSYS (the kernel or a seccomp policy refuses it), or
 * another negative errno for a passing failure (-ENOMEM, -EMFILE), which is
 * not remembered. */
int ac_uring_probe(void);

struct addcow_options;
/* The backend for a set of options: the tests' custom table, else the
 * "backend" option with "auto" resolved (io_uring if the kernel takes it,
 * else posix).  0, or a negative errno with the thread's message set:
 * -ENOSYS when io_uring was asked for and the kernel refuses it. */
int ac_select_backend(const struct addcow_options *o, const struct ac_backend_ops **out);

/* Tests only (not exported): makes "auto" resolve to `kind`, an enum
 * ac_backend_kind other than AC_BACKEND_AUTO; -1 restores the normal
 * choice.  Call it before any thread opens images. */
void ac_backend_set_auto_override(int kind);

/* The other operations, for the library's own use: each repeats a call
 * that a signal interrupted (-EINTR; fdatasync, ftruncate, fallocate, open
 * and fcntl locks may be), as the transfers below do, so that a signal
 * never fails a call of the API.  Otherwise as the ops. */
int ac_file_open(const struct ac_backend_ops *ops, const char *path, unsigned flags,
                 struct ac_file **out);
int ac_file_flush(struct ac_file *f);
int ac_file_truncate(struct ac_file *f, uint64_t size);
int ac_file_punch_hole(struct ac_file *f, uint64_t offset, uint64_t length);
int ac_file_lock(struct ac_file *f, int mode);

/* Reads until len bytes or end of file; returns the bytes read (the rest of
 * the buffers is left untouched) or a negative errno. */
int64_t ac_file_read_full(struct ac_file *f, const struct iovec *iov, int iovcnt,
                          uint64_t offset, uint64_t len);
/* Writes all len bytes or fails. */
int ac_file_write_full(struct ac_file *f, const struct iovec *iov, int iovcnt,
                       uint64_t offset, uint64_t len);
int64_t ac_file_pread(struct ac_file *f, void *buf, size_t len, uint64_t offset);

/* Runs a batch through its backend's submit op, or one request at a time
 * (full reads and writes, links honoured).  Every request's file must
 * belong to the same backend.  Returns 0 if all requests succeeded, else
 * the first failed request's result (the results say which). */
int ac_submit(struct ac_req *reqs, int n);
int ac_file_pwrite(struct ac_file *f, const void *buf, size_t len, uint64_t offset);

static inline void ac_file_close(struct ac_file *f)
{
    if (f != NULL)
        f->ops->close(f);
}

#endif
