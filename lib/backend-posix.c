/*
 * backend-posix.c: the "posix" backend: pread/pwrite family, fdatasync,
 * fallocate, open file description (OFD) locks.
 *
 * With AC_FILE_DIRECT the file is opened twice: once with O_DIRECT, used for
 * requests whose offset and length are aligned to the file's direct-I/O
 * alignment (through an aligned bounce buffer when the caller's memory is
 * not aligned), and once without, for the rest.  Linux keeps the page cache
 * coherent with direct I/O, so both views see the same bytes.
 */
#include "config.h"

#include "hot.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#endif

#include "backend.h"
#include "backend-posix.h"
#include "iov.h"

#define DIRECT_DEFAULT_ALIGN 4096u
#define AC_POSIX_LOCK_BYTE ((off_t)0x7fffffff00000000LL)   /* libaddcow's lock byte */
#define BOUNCE_MAX AC_POSIX_BOUNCE_MAX

static struct posix_file *pf(struct ac_file *f)
{
    return ac_posix_file(f);
}

static void direct_alignment(struct posix_file *p)
{
    p->mem_align = DIRECT_DEFAULT_ALIGN;
    p->off_align = DIRECT_DEFAULT_ALIGN;
#if defined(STATX_DIOALIGN)
    struct statx stx;
    if (statx(p->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
        (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align != 0) {
        p->mem_align = stx.stx_dio_mem_align < sizeof(void *) ? sizeof(void *)
                                                              : stx.stx_dio_mem_align;
        p->off_align = stx.stx_dio_offset_align;
    }
#endif
}

int ac_posix_open(const struct ac_backend_ops *ops, const char *path,
                  unsigned flags, struct ac_file **out)
{
    return ac_posix_open_sized(ops, path, flags, sizeof(struct posix_file), out);
}

int ac_posix_open_sized(const struct ac_backend_ops *ops, const char *path,
                        unsigned flags, size_t size, struct ac_file **out)
{
    int oflags = O_CLOEXEC | ((flags & AC_FILE_RDWR) ? O_RDWR : O_RDONLY);
    struct stat st;

    if (flags & AC_FILE_CREATE)
        oflags |= O_CREAT | ((flags & AC_FILE_EXCL) ? O_EXCL : 0);
    struct posix_file *p = calloc(1, size < sizeof(*p) ? sizeof(*p) : size);
    if (p == NULL)
        return -ENOMEM;
    p->base.ops = ops;
    p->bfd = -1;
    /* O_NONBLOCK so that a FIFO named by a hostile header cannot hang the
     * open; only regular files and block devices are accepted. */
    p->fd = open(path, oflags | O_NONBLOCK, 0644);
    if (p->fd < 0) {
        int e = errno;
        free(p);
        return -e;
    }
    int e = 0;
    if (fstat(p->fd, &st) < 0)
        e = errno;
    else if (S_ISDIR(st.st_mode))
        e = EISDIR;
    else if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
        e = EINVAL;     /* a FIFO, socket or character device is no disk */
    else if (fcntl(p->fd, F_SETFL, fcntl(p->fd, F_GETFL) & ~O_NONBLOCK) < 0)
        e = errno;
    if (e != 0) {
        close(p->fd);
        free(p);
        return -e;
    }
    if (flags & AC_FILE_DIRECT) {
        p->bfd = p->fd;
        p->fd = open(path, (oflags & ~(O_CREAT | O_EXCL)) | O_DIRECT);
        if (p->fd < 0) {
            e = errno;
            close(p->bfd);
            free(p);
            return -e;
        }
        direct_alignment(p);
    }
    *out = &p->base;
    return 0;
}

void ac_posix_close(struct ac_file *f)
{
    struct posix_file *p = pf(f);
    close(p->fd);
    if (p->bfd >= 0)
        close(p->bfd);
    free(p);
}

static int is_aligned(uint64_t v, unsigned a)
{
    return (v & (a - 1)) == 0;
}

/* Which descriptor serves this request, and whether it needs a bounce
 * buffer. */
AC_HOT enum ac_posix_route ac_posix_route(const struct posix_file *p, const struct iovec *iov,
                                   int iovcnt, uint64_t offset)
{
    if (p->bfd < 0)
        return AC_ROUTE_DIRECT;
    if (!is_aligned(offset, p->off_align))
        return AC_ROUTE_BUFFERED;
    int mem_ok = 1;
    for (int i = 0; i < iovcnt; i++) {
        if (!is_aligned(iov[i].iov_len, p->off_align))
            return AC_ROUTE_BUFFERED;
        if (!is_aligned((uintptr_t)iov[i].iov_base, p->mem_align))
            mem_ok = 0;
    }
    return mem_ok ? AC_ROUTE_DIRECT : AC_ROUTE_BOUNCE;
}

static ssize_t bounce_io(struct posix_file *p, const struct iovec *iov, int iovcnt,
                         uint64_t offset, int write)
{
    uint64_t total = ac_iov_size(iov, iovcnt);
    size_t len = total > BOUNCE_MAX ? BOUNCE_MAX : (size_t)total;
    void *buf;
    ssize_t r;

    if (posix_memalign(&buf, p->mem_align, len) != 0)
        return -ENOMEM;
    if (write) {
        ac_iov_to_buf(iov, iovcnt, 0, buf, len);
        r = pwrite(p->fd, buf, len, (off_t)offset);
    } else {
        r = pread(p->fd, buf, len, (off_t)offset);
        if (r > 0)
            ac_iov_from_buf(iov, iovcnt, 0, buf, (uint64_t)r);
    }
    int e = errno;
    free(buf);
    return r < 0 ? -e : r;
}

AC_HOT static ssize_t posix_rw(struct ac_file *f, const struct iovec *iov, int iovcnt,
                        uint64_t offset, int write)
{
    struct posix_file *p = pf(f);
    enum ac_posix_route route = ac_posix_route(p, iov, iovcnt, offset);
    if (route == AC_ROUTE_BOUNCE)
        return bounce_io(p, iov, iovcnt, offset, write);
    int fd = route == AC_ROUTE_DIRECT ? p->fd : p->bfd;
    ssize_t r;
    if (iovcnt == 1)        /* the kernel's single-buffer path is the cheaper one */
        r = write ? pwrite(fd, iov[0].iov_base, iov[0].iov_len, (off_t)offset)
                  : pread(fd, iov[0].iov_base, iov[0].iov_len, (off_t)offset);
    else
        r = write ? pwritev(fd, iov, iovcnt, (off_t)offset)
                  : preadv(fd, iov, iovcnt, (off_t)offset);
    return r < 0 ? -errno : r;
}

AC_HOT ssize_t ac_posix_preadv(struct ac_file *f, const struct iovec *iov, int iovcnt,
                        uint64_t offset)
{
    return posix_rw(f, iov, iovcnt, offset, 0);
}

AC_HOT ssize_t ac_posix_pwritev(struct ac_file *f, const struct iovec *iov, int iovcnt,
                         uint64_t offset)
{
    return posix_rw(f, iov, iovcnt, offset, 1);
}

int ac_posix_flush(struct ac_file *f)
{
    return fdatasync(pf(f)->fd) < 0 ? -errno : 0;
}

int ac_posix_truncate(struct ac_file *f, uint64_t size)
{
    if (size > INT64_MAX)
        return -EFBIG;
    return ftruncate(pf(f)->fd, (off_t)size) < 0 ? -errno : 0;
}

int64_t ac_posix_size(struct ac_file *f)
{
    struct stat st;
    if (fstat(pf(f)->fd, &st) < 0)
        return -errno;
    if (S_ISBLK(st.st_mode)) {
        off_t end = lseek(pf(f)->fd, 0, SEEK_END);
        return end < 0 ? -errno : (int64_t)end;
    }
    return (int64_t)st.st_size;
}

int ac_posix_punch_hole(struct ac_file *f, uint64_t offset, uint64_t length)
{
#ifdef FALLOC_FL_PUNCH_HOLE
    if (fallocate(pf(f)->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  (off_t)offset, (off_t)length) == 0)
        return 0;
    return errno == ENOSYS ? -EOPNOTSUPP : -errno;
#else
    (void)f; (void)offset; (void)length;
    return -EOPNOTSUPP;
#endif
}

int ac_posix_lock(struct ac_file *f, int mode)
{
    struct flock fl;
    memset(&fl, 0, sizeof(fl));
    fl.l_type = mode == AC_LOCK_EXCLUSIVE ? F_WRLCK : F_RDLCK;
    fl.l_whence = SEEK_SET;
    /* One byte far past any data, not the whole file: QEMU locks bytes
     * 100 and up of the files it opens and reads any lock there as a
     * refusal to share, so a whole-file lock would stop qemu-img from
     * opening a base image that an add-cow overlay is reading. */
    fl.l_start = AC_POSIX_LOCK_BYTE;
    fl.l_len = 1;
    if (fcntl(pf(f)->fd, F_OFD_SETLK, &fl) == 0)
        return 0;
    if (errno == EAGAIN || errno == EACCES)
        return -EBUSY;
    /* A file system without locks (some network ones): proceed unlocked. */
    if (errno == ENOLCK || errno == EOPNOTSUPP || errno == EINVAL)
        return 0;
    return -errno;
}

/* One lock line of /proc/locks or of a /proc/PID/fdinfo/FD ("lock:\t" and
 * then the same): "1: OFDLCK ADVISORY  WRITE -1 fe:00:1234 START END".  True
 * if it is an OFD lock on the file (major:minor:inode) over `byte` that
 * conflicts with a lock of `mode`; *pid gets its pid (-1 for OFD locks on
 * Linux). */
static bool lock_line_conflicts(const char *line, unsigned maj, unsigned min,
                                unsigned long long ino, unsigned long long byte, int mode,
                                int *pid)
{
    char kind[16], type[16], end[32];
    unsigned lmaj, lmin;
    unsigned long long lino, start;
    const char *p = strchr(line, ':');      /* after the lock's number */
    if (p == NULL ||
        sscanf(p + 1, " %15s %*s %15s %d %x:%x:%llu %llu %31s", kind, type, pid, &lmaj, &lmin,
               &lino, &start, end) != 8)
        return false;
    if (strcmp(kind, "OFDLCK") != 0 || lmaj != maj || lmin != min || lino != ino)
        return false;
    if (mode != AC_LOCK_EXCLUSIVE && strcmp(type, "WRITE") != 0)
        return false;           /* readers share */
    return start <= byte && (strcmp(end, "EOF") == 0 || strtoull(end, NULL, 10) >= byte);
}

static void add_pid(pid_t *pids, int max, int *n, pid_t pid)
{
    for (int i = 0; i < *n; i++)
        if (pids[i] == pid)
            return;
    if (*n < max)
        pids[(*n)++] = pid;
}

int ac_posix_lock_holders(struct ac_file *f, int mode, pid_t *pids, int max)
{
    struct posix_file *p = pf(f);
    struct stat st;
    struct flock fl;
    int n = 0;
    char line[256];

    if (max <= 0 || fstat(p->fd, &st) < 0)
        return 0;
    memset(&fl, 0, sizeof(fl));
    fl.l_type = mode == AC_LOCK_EXCLUSIVE ? F_WRLCK : F_RDLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = AC_POSIX_LOCK_BYTE;
    fl.l_len = 1;
    if (fcntl(p->fd, F_OFD_GETLK, &fl) < 0 || fl.l_type == F_UNLCK)
        return 0;               /* no holder now */
    if (fl.l_pid > 0)           /* an OS that says who */
        add_pid(pids, max, &n, fl.l_pid);

    unsigned maj = major(st.st_dev), min = minor(st.st_dev);
    unsigned long long ino = (unsigned long long)st.st_ino;
    unsigned long long byte = (unsigned long long)AC_POSIX_LOCK_BYTE;
    int pid;
    /* /proc/locks, for kernels that show the owner of an OFD lock. */
    FILE *lf = n == 0 ? fopen("/proc/locks", "re") : NULL;
    if (lf != NULL) {
        while (fgets(line, sizeof(line), lf) != NULL)
            if (lock_line_conflicts(line, maj, min, ino, byte, mode, &pid) && pid > 0)
                add_pid(pids, max, &n, pid);
        fclose(lf);
    }
    if (n > 0)
        return n;
    /* Linux shows OFD locks with pid -1 there: look for the open file
     * descriptions that hold it, in /proc/PID/fdinfo/FD (the processes this
     * one may look into), keeping to descriptors of the same file. */
    DIR *proc = opendir("/proc");
    if (proc == NULL)
        return 0;
    struct dirent *de;
    while ((de = readdir(proc)) != NULL && n < max) {
        char *e;
        long lpid = strtol(de->d_name, &e, 10);
        if (*e != '\0' || lpid <= 0)
            continue;
        char path[64 + sizeof(de->d_name)];
        snprintf(path, sizeof(path), "/proc/%ld/fd", lpid);
        DIR *fds = opendir(path);
        if (fds == NULL)
            continue;           /* gone, or not ours to see */
        struct dirent *fe;
        bool held = false;
        while (!held && (fe = readdir(fds)) != NULL) {
            struct stat fst;
            if (fe->d_name[0] == '.' ||
                fstatat(dirfd(fds), fe->d_name, &fst, 0) < 0 ||
                fst.st_dev != st.st_dev || fst.st_ino != st.st_ino)
                continue;
            snprintf(path, sizeof(path), "/proc/%ld/fdinfo/%s", lpid, fe->d_name);
            FILE *fi = fopen(path, "re");
            if (fi == NULL)
                continue;
            while (!held && fgets(line, sizeof(line), fi) != NULL)
                held = strncmp(line, "lock:", 5) == 0 &&
                       lock_line_conflicts(line + 5, maj, min, ino, byte, mode, &pid);
            fclose(fi);
        }
        closedir(fds);
        if (held)
            add_pid(pids, max, &n, (pid_t)lpid);
    }
    closedir(proc);
    return n;
}

int ac_posix_identity(struct ac_file *f, uint64_t id[2])
{
    struct stat st;
    if (fstat(pf(f)->fd, &st) < 0)
        return -errno;
    id[0] = (uint64_t)st.st_dev;
    id[1] = (uint64_t)st.st_ino;
    return 0;
}

/* fsyncs the folder that holds path, so that a new name in it is durable. */
static int sync_parent_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir;
    if (slash == NULL)
        dir = strdup(".");
    else if (slash == path)
        dir = strdup("/");
    else
        dir = strndup(path, (size_t)(slash - path));
    if (dir == NULL)
        return -ENOMEM;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(dir);
    if (fd < 0)
        return -errno;
    int r = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return r == -EINVAL ? 0 : r;
}

int ac_posix_rename_noreplace(const struct ac_backend_ops *ops, const char *from,
                              const char *to)
{
    (void)ops;
    if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) < 0) {
        if (errno != EINVAL && errno != ENOSYS)
            return -errno;
        /* No RENAME_NOREPLACE here: link() refuses an existing name too. */
        if (link(from, to) < 0)
            return -errno;
        unlink(from);
    }
    return sync_parent_dir(to);
}

int ac_posix_unlink(const struct ac_backend_ops *ops, const char *path)
{
    (void)ops;
    return unlink(path) < 0 ? -errno : 0;
}

int64_t ac_posix_next_data(struct ac_file *f, uint64_t offset)
{
    off_t r = lseek(pf(f)->fd, (off_t)offset, SEEK_DATA);
    if (r >= 0)
        return (int64_t)r;
    if (errno == ENXIO)         /* only a hole up to the end */
        return ac_posix_size(f);
    return -errno;              /* e.g. EINVAL: no SEEK_DATA here */
}

const struct ac_backend_ops ac_posix_backend = {
    .version = AC_BACKEND_OPS_VERSION,
    .name = "posix",
    .open = ac_posix_open,
    .close = ac_posix_close,
    .preadv = ac_posix_preadv,
    .pwritev = ac_posix_pwritev,
    .flush = ac_posix_flush,
    .truncate = ac_posix_truncate,
    .size = ac_posix_size,
    .punch_hole = ac_posix_punch_hole,
    .lock = ac_posix_lock,
    .identity = ac_posix_identity,
    .rename_noreplace = ac_posix_rename_noreplace,
    .unlink = ac_posix_unlink,
    .next_data = ac_posix_next_data,
};
