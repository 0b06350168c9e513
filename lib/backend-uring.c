/*
 * backend-uring.c: the "io_uring" backend.  Files are opened, closed,
 * locked, sized, truncated, punched, renamed and unlinked by the posix code
 * (backend-posix.c); only the data moves differently: reads, writes and
 * flushes go through io_uring, and a batch of requests (ac_submit) reaches
 * the kernel in one io_uring_enter, AC_REQ_LINK becoming IOSQE_IO_LINK.
 *
 * Rings: one per thread, made on the thread's first request and freed when
 * the thread exits (a pthread key destructor) or the library is unloaded.
 * No ring is shared, so submitting takes no lock; tests/bench-uring.c
 * measures this against one ring behind a lock (see README, Backends).
 *
 * A batch runs in rounds.  A round queues the unfinished requests, in
 * order, as many as the ring holds, submits them and waits for all of them
 * in one call, then reads the results:
 *   - a short read that moved some bytes, or a partial write: continued in
 *     the next round from where it stopped.  The kernel has failed the rest
 *     of its chain with -ECANCELED (a short transfer breaks a link); those
 *     requests run again after it, whatever they returned.
 *   - a read of 0 bytes: end of file; done, with the bytes read so far.
 *   - an error: done; the rest of its chain is -ECANCELED.
 * A chain longer than the free room of the ring is cut: the part queued in
 * one round completes before the next round starts the rest, so the order
 * of the chain holds without its links spanning two submissions.  Requests
 * that need more than one system call's worth (more than IOV_MAX buffers,
 * or a bounce buffer smaller than the request) end their round's part of
 * the chain the same way.
 *
 * Files opened with AC_FILE_DIRECT have two descriptors and alignment
 * rules; each request (and each continuation) is routed exactly as the
 * posix backend routes it (ac_posix_route), through a bounce buffer when the
 * memory is not aligned.  Writes through the two descriptors of one such
 * file never run at the same time (see struct uring_file).
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <liburing.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "backend.h"
#include "backend-posix.h"
#include "iov.h"

#ifdef HAVE_VALGRIND_MEMCHECK_H
#include <valgrind/memcheck.h>
#else
#define VALGRIND_MAKE_MEM_DEFINED(addr, len) ((void)(addr), (void)(len))
#endif

/* Submission queue entries of a thread's ring (the completion queue gets
 * twice as many).  A round never queues more, so the completion queue
 * cannot overflow. */
#define RING_ENTRIES 64u
/* A request that meets -EINTR, -EAGAIN or an unexplained -ECANCELED this
 * many times in a row fails with it. */
#define MAX_RETRIES 100
/* Requests whose state lives on the stack; larger batches allocate. */
#define SMALL_BATCH 16
/* The most one read or write moves in Linux (MAX_RW_COUNT). */
#define RW_MAX 0x7ffff000u

/* ---- is io_uring there? ------------------------------------------------ */

enum { PROBE_UNKNOWN = 1 };
static int probe_result = PROBE_UNKNOWN;    /* 0 or -ENOSYS once known */
static bool have_op_read;                   /* IORING_OP_READ/WRITE (5.6) */

/* io_uring_setup errors that mean "not here, ever": the kernel lacks it,
 * sysctl kernel.io_uring_disabled, seccomp, an LSM. */
static bool is_refusal(int err)
{
    return err == -ENOSYS || err == -EPERM || err == -EACCES || err == -EOPNOTSUPP ||
           err == -EINVAL;
}

int ac_uring_probe(void)
{
    int known = __atomic_load_n(&probe_result, __ATOMIC_ACQUIRE);
    if (known != PROBE_UNKNOWN)
        return known;

    struct io_uring ring;
    int r = io_uring_queue_init(4, &ring, 0);
    if (r < 0 && !is_refusal(r))
        return r;               /* passing (-ENOMEM, -EMFILE): ask again later */
    if (r == 0) {
        struct io_uring_probe *p = io_uring_get_probe_ring(&ring);
        if (p != NULL) {
            if (!io_uring_opcode_supported(p, IORING_OP_READV) ||
                !io_uring_opcode_supported(p, IORING_OP_WRITEV) ||
                !io_uring_opcode_supported(p, IORING_OP_FSYNC) ||
                !io_uring_opcode_supported(p, IORING_OP_NOP))
                r = -ENOSYS;
            __atomic_store_n(&have_op_read,
                             io_uring_opcode_supported(p, IORING_OP_READ) &&
                             io_uring_opcode_supported(p, IORING_OP_WRITE),
                             __ATOMIC_RELAXED);
            io_uring_free_probe(p);
        }
        /* No probe (before 5.6): READV, WRITEV, FSYNC and NOP are 5.1. */
        io_uring_queue_exit(&ring);
    }
    r = r == 0 ? 0 : -ENOSYS;
    __atomic_store_n(&probe_result, r, __ATOMIC_RELEASE);
    return r;
}

/* ---- one ring per thread ----------------------------------------------- */

enum ring_state { RING_IDLE, RING_BUSY, RING_CLOSED };

struct thread_ring {
    struct io_uring ring;
    int state;                      /* enum ring_state, atomic */
    unsigned generation;            /* fork_generation when it was made */
    struct thread_ring *prev, *next;
};

/* Every live ring, so that unloading the library can close them. */
static pthread_mutex_t rings_lock = PTHREAD_MUTEX_INITIALIZER;
static struct thread_ring *rings;
static pthread_key_t ring_key;
static pthread_once_t ring_key_once = PTHREAD_ONCE_INIT;
static bool ring_key_ok;
/* Bumped in a forked child, whose inherited rings are the parent's. */
static unsigned fork_generation;

static void rings_unlink(struct thread_ring *t)
{
    if (t->prev != NULL)
        t->prev->next = t->next;
    else if (rings == t)
        rings = t->next;
    if (t->next != NULL)
        t->next->prev = t->prev;
    t->prev = t->next = NULL;
}

/* Frees a ring that its thread no longer uses. */
static void ring_free(struct thread_ring *t)
{
    pthread_mutex_lock(&rings_lock);
    rings_unlink(t);
    bool closed = __atomic_load_n(&t->state, __ATOMIC_ACQUIRE) == RING_CLOSED;
    pthread_mutex_unlock(&rings_lock);
    if (!closed)
        io_uring_queue_exit(&t->ring);
    free(t);
}

/* The key destructor: the thread is exiting. */
static void ring_thread_exit(void *arg)
{
    ring_free(arg);
}

static void after_fork_child(void)
{
    fork_generation++;
}

static void ring_key_init(void)
{
    ac_uring_probe();           /* which opcodes there are */
    ring_key_ok = pthread_key_create(&ring_key, ring_thread_exit) == 0;
    if (ring_key_ok)
        pthread_atfork(NULL, NULL, after_fork_child);
}

/* Unloading (dlclose, or the end of the process): closes every ring not in
 * use this instant, and frees the calling thread's.  Another thread's ring
 * struct stays (that thread may still look at it, and then finds it
 * closed); a ring in use this instant is left alone. */
__attribute__((destructor)) static void rings_unload(void)
{
    if (!ring_key_ok)
        return;
    struct thread_ring *mine = pthread_getspecific(ring_key);
    pthread_mutex_lock(&rings_lock);
    for (struct thread_ring *t = rings; t != NULL; t = t->next) {
        int idle = RING_IDLE;
        if (__atomic_compare_exchange_n(&t->state, &idle, RING_CLOSED, false,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            io_uring_queue_exit(&t->ring);
    }
    if (mine != NULL && __atomic_load_n(&mine->state, __ATOMIC_ACQUIRE) == RING_CLOSED) {
        rings_unlink(mine);
        free(mine);
        pthread_setspecific(ring_key, NULL);
    }
    pthread_mutex_unlock(&rings_lock);
    /* No destructor may run in an unloaded library. */
    pthread_key_delete(ring_key);
    ring_key_ok = false;
}

static int ring_create(struct thread_ring **out)
{
    struct thread_ring *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return -ENOMEM;
    int r = io_uring_queue_init(RING_ENTRIES, &t->ring, 0);
    if (r < 0) {
        free(t);
        return r;
    }
    t->state = RING_IDLE;
    t->generation = __atomic_load_n(&fork_generation, __ATOMIC_RELAXED);
    if (pthread_setspecific(ring_key, t) != 0) {
        io_uring_queue_exit(&t->ring);
        free(t);
        return -ENOMEM;
    }
    pthread_mutex_lock(&rings_lock);
    t->next = rings;
    if (rings != NULL)
        rings->prev = t;
    rings = t;
    pthread_mutex_unlock(&rings_lock);
    *out = t;
    return 0;
}

/* The calling thread's ring, made if needed, marked busy. */
static int ring_acquire(struct thread_ring **out)
{
    pthread_once(&ring_key_once, ring_key_init);
    if (!ring_key_ok)
        return -EAGAIN;
    struct thread_ring *t = pthread_getspecific(ring_key);
    if (t != NULL && t->generation != __atomic_load_n(&fork_generation, __ATOMIC_RELAXED)) {
        /* A forked child: this is the parent's ring (the same kernel
         * object); close the child's hold on it and make a new one. */
        pthread_setspecific(ring_key, NULL);
        ring_free(t);
        t = NULL;
    }
    if (t == NULL) {
        int r = ring_create(&t);
        if (r < 0)
            return r;
    }
    int idle = RING_IDLE;
    if (!__atomic_compare_exchange_n(&t->state, &idle, RING_BUSY, false,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return -ESHUTDOWN;      /* closed: the library is being unloaded */
    *out = t;
    return 0;
}

static void ring_release(struct thread_ring *t)
{
    __atomic_store_n(&t->state, RING_IDLE, __ATOMIC_RELEASE);
}

/* After a failure that leaves the ring in doubt (unsubmitted entries,
 * unreaped completions): drop it; the thread's next request makes another. */
static void ring_discard(struct thread_ring *t)
{
    pthread_setspecific(ring_key, NULL);
    ring_free(t);
}

/* ---- files ------------------------------------------------------------- */

/* An O_DIRECT write through io_uring completes asynchronously: at its end
 * the kernel drops the page cache over its range without the inode lock
 * that it held at submission (a synchronous pwrite holds it throughout).  A
 * write through the buffered twin that dirties a page of the range in
 * between makes the drop fail, and the kernel then fails the next fsync
 * with EIO ("Page cache invalidation failure on direct I/O").  So, on a
 * file with a buffered twin, direct writes in flight hold twin_lock shared
 * and writes through the twin hold it exclusive.  A round holds one kind
 * per file (it is cut before a write of the other kind) and takes its locks
 * in address order, holding none between rounds: no deadlock. */
struct uring_file {
    struct posix_file p;
    pthread_rwlock_t twin_lock;
};

static int uring_open(const struct ac_backend_ops *ops, const char *path, unsigned flags,
                      struct ac_file **out)
{
    int r = ac_posix_open_sized(ops, path, flags, sizeof(struct uring_file), out);
    if (r < 0)
        return r;
    struct uring_file *u = (struct uring_file *)*out;
    pthread_rwlockattr_t attr;
    /* Writer-preferring, so that twin writes are not starved by a stream
     * of direct ones. */
    if (pthread_rwlockattr_init(&attr) != 0)
        r = -ENOMEM;
    else {
        pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
        r = -pthread_rwlock_init(&u->twin_lock, &attr);
        pthread_rwlockattr_destroy(&attr);
    }
    if (r < 0) {
        ac_posix_close(*out);
        *out = NULL;
    }
    return r;
}

static void uring_close(struct ac_file *f)
{
    pthread_rwlock_destroy(&((struct uring_file *)f)->twin_lock);
    ac_posix_close(f);
}

/* The twin locks one round takes. */
struct round_locks {
    unsigned n;
    struct {
        struct uring_file *f;
        bool exclusive;
    } h[RING_ENTRIES];
};

/* Notes that the round writes to f (a file with a twin) directly or through
 * the twin; false if the round already writes to it the other way. */
static bool round_lock_add(struct round_locks *l, struct uring_file *f, bool exclusive)
{
    for (unsigned i = 0; i < l->n; i++)
        if (l->h[i].f == f)
            return l->h[i].exclusive == exclusive;
    l->h[l->n].f = f;
    l->h[l->n].exclusive = exclusive;
    l->n++;
    return true;
}

static int by_address(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)*(struct uring_file *const *)a;
    uintptr_t y = (uintptr_t)*(struct uring_file *const *)b;
    return x < y ? -1 : x > y;
}

static void round_lock(struct round_locks *l)
{
    if (l->n > 1)
        qsort(l->h, l->n, sizeof(l->h[0]), by_address);
    for (unsigned i = 0; i < l->n; i++) {
        if (l->h[i].exclusive)
            pthread_rwlock_wrlock(&l->h[i].f->twin_lock);
        else
            pthread_rwlock_rdlock(&l->h[i].f->twin_lock);
    }
}

static void round_unlock(struct round_locks *l)
{
    for (unsigned i = 0; i < l->n; i++)
        pthread_rwlock_unlock(&l->h[i].f->twin_lock);
}

/* ---- batches ----------------------------------------------------------- */

/* The state of one request while its batch runs. */
struct req_state {
    uint64_t done;          /* bytes transferred so far */
    uint64_t asked;         /* bytes this round's entry asked for */
    int32_t res;            /* this round's completion */
    unsigned retries;
    bool finished;          /* result final (reqs[i].result) */
    bool queued;            /* in this round */
    struct iovec *rest;     /* the unfinished part of the buffers, or NULL */
    void *bounce;           /* this round's aligned bounce buffer, or NULL */
};

/* What one round's entry of a read or write does. */
struct rw_plan {
    int fd;
    enum ac_posix_route route;
    const struct iovec *iov;
    int iovcnt;
    void *bounce;           /* instead of iov, when set */
    uint64_t len;
    bool whole;             /* covers all that is left of the request */
};

static bool is_rw(const struct ac_req *q)
{
    return q->op == AC_REQ_READ || q->op == AC_REQ_WRITE;
}

/* Works out this round's entry of a read or write with bytes left,
 * routed as the posix backend would route it.  -ENOMEM possible. */
static int plan_rw(struct ac_req *q, struct req_state *s, struct rw_plan *p)
{
    struct posix_file *pf = ac_posix_file(q->file);
    uint64_t left = q->len - s->done;

    p->iov = q->iov;
    p->iovcnt = q->iovcnt;
    p->bounce = NULL;
    if (s->done > 0 || q->iovcnt > IOV_MAX || ac_iov_size(q->iov, q->iovcnt) != q->len) {
        if (s->rest == NULL &&
            (s->rest = malloc(sizeof(*s->rest) * (size_t)(q->iovcnt > 0 ? q->iovcnt : 1))) == NULL)
            return -ENOMEM;
        p->iovcnt = ac_iov_slice(q->iov, q->iovcnt, s->done, left, s->rest);
        p->iov = s->rest;
    }
    if (p->iovcnt > IOV_MAX)
        p->iovcnt = IOV_MAX;
    p->len = ac_iov_size(p->iov, p->iovcnt);
    if (p->len > RW_MAX)
        p->len = RW_MAX;        /* the kernel would stop there anyway */
    p->route = ac_posix_route(pf, p->iov, p->iovcnt, q->offset + s->done);
    p->fd = p->route == AC_ROUTE_BUFFERED ? pf->bfd : pf->fd;
    if (p->route == AC_ROUTE_BOUNCE) {
        if (p->len > AC_POSIX_BOUNCE_MAX)
            p->len = AC_POSIX_BOUNCE_MAX;
        if (posix_memalign(&p->bounce, pf->mem_align, (size_t)p->len) != 0)
            return -ENOMEM;
        if (q->op == AC_REQ_WRITE)
            ac_iov_to_buf(p->iov, p->iovcnt, 0, p->bounce, p->len);
    }
    p->whole = p->len == left;
    return 0;
}

static void fill_rw(struct io_uring_sqe *sqe, bool rd, const struct rw_plan *p,
                    uint64_t offset)
{
    bool one = p->bounce != NULL ||
               (p->iovcnt == 1 && __atomic_load_n(&have_op_read, __ATOMIC_RELAXED));
    void *buf = p->bounce != NULL ? p->bounce : one ? p->iov[0].iov_base : NULL;

    if (one) {
        if (rd)
            io_uring_prep_read(sqe, p->fd, buf, (unsigned)p->len, offset);
        else
            io_uring_prep_write(sqe, p->fd, buf, (unsigned)p->len, offset);
    } else if (rd) {
        io_uring_prep_readv(sqe, p->fd, p->iov, (unsigned)p->iovcnt, offset);
    } else {
        io_uring_prep_writev(sqe, p->fd, p->iov, (unsigned)p->iovcnt, offset);
    }
}

/* Finishes request i with `result`; if it failed and links to the next,
 * the rest of its chain (up to `end`) is cancelled. */
static void finish(struct ac_req *reqs, struct req_state *st, int i, int end,
                   int64_t result)
{
    reqs[i].result = result;
    st[i].finished = true;
    if (result >= 0 || !(reqs[i].flags & AC_REQ_LINK))
        return;
    for (int j = i + 1; j <= end; j++) {
        if (!st[j].finished) {
            reqs[j].result = -ECANCELED;
            st[j].finished = true;
        }
    }
}

/* The last request of the chain that starts at i. */
static int chain_end(const struct ac_req *reqs, int n, int i)
{
    while (i < n - 1 && (reqs[i].flags & AC_REQ_LINK))
        i++;
    return i;
}

/* Queues this round's entries and the twin locks they need; returns how
 * many (0: all finished). */
static unsigned queue_round(struct io_uring *ring, struct ac_req *reqs, struct req_state *st,
                            int n, struct round_locks *locks)
{
    unsigned queued = 0;
    bool full = false;

    locks->n = 0;
    for (int c = 0; c < n && !full;) {
        int end = chain_end(reqs, n, c);
        struct io_uring_sqe *last = NULL;
        for (int m = c; m <= end; m++) {
            struct ac_req *q = &reqs[m];
            struct rw_plan plan = { .bounce = NULL };
            bool whole = true;

            if (st[m].finished)
                continue;
            if (queued == RING_ENTRIES) {
                full = true;
                break;
            }
            if (q->op != AC_REQ_READ && q->op != AC_REQ_WRITE && q->op != AC_REQ_FLUSH) {
                if (last != NULL)
                    break;      /* fails once the requests before it are done */
                finish(reqs, st, m, end, -EINVAL);
                break;
            }
            if (is_rw(q) && q->len > 0) {
                int r = plan_rw(q, &st[m], &plan);
                if (r < 0) {
                    if (last != NULL)
                        break;
                    finish(reqs, st, m, end, r);
                    break;
                }
                whole = plan.whole;
                struct posix_file *pf = ac_posix_file(q->file);
                if (q->op == AC_REQ_WRITE && pf->bfd >= 0 &&
                    !round_lock_add(locks, (struct uring_file *)pf,
                                    plan.route == AC_ROUTE_BUFFERED)) {
                    free(plan.bounce);      /* the other kind: next round */
                    full = true;
                    break;
                }
            }
            struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
            if (sqe == NULL) {
                free(plan.bounce);
                full = true;
                break;
            }
            if (q->op == AC_REQ_FLUSH) {
                io_uring_prep_fsync(sqe, ac_posix_file(q->file)->fd, IORING_FSYNC_DATASYNC);
            } else if (q->len == 0) {
                io_uring_prep_nop(sqe);
            } else {
                fill_rw(sqe, q->op == AC_REQ_READ, &plan, q->offset + st[m].done);
                st[m].asked = plan.len;
                st[m].bounce = plan.bounce;
            }
            io_uring_sqe_set_data(sqe, (void *)(uintptr_t)m);
            st[m].queued = true;
            queued++;
            last = sqe;
            if (!whole)
                break;          /* the rest of the chain waits for this to finish */
            if (m < end)
                sqe->flags |= IOSQE_IO_LINK;
        }
        if (last != NULL)
            last->flags &= (__u8)~IOSQE_IO_LINK;
        c = end + 1;
    }
    return queued;
}

/* Submits the queued entries and waits for all their completions, with as
 * few system calls as the kernel allows (one, normally).  0 or a negative
 * errno when the ring failed (then in-flight entries were still waited
 * for where possible). */
static int submit_and_reap(struct io_uring *ring, unsigned queued, struct req_state *st)
{
    unsigned submitted = 0, reaped = 0, stuck = 0;
    int err = 0;

    while (reaped < queued) {
        int r;
        if (submitted < queued && err == 0) {
            r = io_uring_submit_and_wait(ring, queued - reaped);
            if (r > 0) {
                submitted += (unsigned)r;
                stuck = 0;
            } else if (r == 0 || r == -EINTR || r == -EAGAIN || r == -EBUSY) {
                /* Nothing taken (no memory for now, or completions to
                 * reap first): wait for one in flight, if any, and try
                 * again. */
                struct io_uring_cqe *cqe;
                if (submitted > reaped)
                    (void)io_uring_wait_cqe(ring, &cqe);
                else if (++stuck > MAX_RETRIES)
                    err = r < 0 ? r : -EAGAIN;
            } else {
                err = r;
            }
        } else if (submitted > reaped) {
            struct io_uring_cqe *cqe;
            r = io_uring_wait_cqe(ring, &cqe);
            if (r < 0 && r != -EINTR && r != -EAGAIN) {
                if (err == 0)
                    err = r;
                return err;     /* cannot even wait: give up on the ring */
            }
        } else {
            return err;         /* failed with nothing in flight */
        }
        unsigned head, seen = 0;
        struct io_uring_cqe *cqe;
        io_uring_for_each_cqe(ring, head, cqe) {
            uintptr_t i = (uintptr_t)io_uring_cqe_get_data(cqe);
            st[i].res = cqe->res;
            seen++;
        }
        io_uring_cq_advance(ring, seen);
        reaped += seen;
    }
    return err;
}

/* A retryable completion (-EINTR, -EAGAIN, or a -ECANCELED that no short
 * or failed request before it explains): true while the request may try
 * again. */
static bool retry(struct req_state *s, int res)
{
    return (res == -EINTR || res == -EAGAIN || res == -ECANCELED) && ++s->retries <= MAX_RETRIES;
}

/* Memcheck cannot see the kernel write into buffers through io_uring:
 * tells it that bytes [skip, skip + len) of the array were read. */
static void mark_read(const struct iovec *iov, int iovcnt, uint64_t skip, uint64_t len)
{
    for (int i = 0; i < iovcnt && len > 0; i++) {
        if (skip >= iov[i].iov_len) {
            skip -= iov[i].iov_len;
            continue;
        }
        uint64_t n = iov[i].iov_len - skip < len ? iov[i].iov_len - skip : len;
        VALGRIND_MAKE_MEM_DEFINED((char *)iov[i].iov_base + skip, n);
        len -= n;
        skip = 0;
    }
}

/* Takes in the round's completion of request m, which was queued and whose
 * chain predecessors are all finished.  Returns false if the request is not
 * finished (continued, or retried), so the rest of its chain must wait. */
static bool absorb(struct ac_req *reqs, struct req_state *st, int m, int end)
{
    struct ac_req *q = &reqs[m];
    struct req_state *s = &st[m];
    int res = s->res;

    if (q->op == AC_REQ_FLUSH || q->len == 0) {
        if (res >= 0) {
            finish(reqs, st, m, end, q->op == AC_REQ_READ ? (int64_t)s->done : 0);
            return true;
        }
    } else if (res > 0) {
        if (s->bounce != NULL && q->op == AC_REQ_READ) {
            VALGRIND_MAKE_MEM_DEFINED(s->bounce, (size_t)res);
            ac_iov_from_buf(q->iov, q->iovcnt, s->done, s->bounce, (uint64_t)res);
        } else if (q->op == AC_REQ_READ) {
            mark_read(q->iov, q->iovcnt, s->done, (uint64_t)res);
        }
        s->done += (uint64_t)res;
        s->retries = 0;
        if (s->done < q->len)
            return false;       /* short: continue where it stopped */
        finish(reqs, st, m, end, q->op == AC_REQ_READ ? (int64_t)s->done : 0);
        return true;
    } else if (res == 0) {
        /* A read of nothing is the end of the file; a write of nothing
         * would never end. */
        finish(reqs, st, m, end, q->op == AC_REQ_READ ? (int64_t)s->done : -EIO);
        return true;
    }
    if (retry(s, res))
        return false;
    finish(reqs, st, m, end, res);
    return true;
}

/* True if request m moved fewer bytes than its entry asked for this round:
 * the kernel then failed the rest of its chain with -ECANCELED, even when
 * the request itself is finished (a read that met the end of the file). */
static bool short_transfer(const struct ac_req *reqs, const struct req_state *st, int m)
{
    return is_rw(&reqs[m]) && reqs[m].len > 0 && st[m].res >= 0 &&
           (uint64_t)st[m].res < st[m].asked;
}

/* Reads the round's results, chain by chain, in order. */
static void absorb_round(struct ac_req *reqs, struct req_state *st, int n)
{
    for (int c = 0; c < n;) {
        int end = chain_end(reqs, n, c);
        bool blocked = false;   /* an earlier request of the chain is unfinished */
        for (int m = c; m <= end; m++) {
            bool queued = st[m].queued;
            st[m].queued = false;
            if (!st[m].finished) {
                /* Not queued (the chain was cut before it), or cancelled
                 * by the kernel after a short transfer before it: it runs
                 * again in a later round, once those before it are
                 * finished.  (Were it to have run all the same, running it
                 * again is harmless: same bytes, same place.) */
                if (!queued || blocked)
                    blocked = true;
                else
                    blocked = !absorb(reqs, st, m, end) || short_transfer(reqs, st, m);
            }
            free(st[m].bounce);
            st[m].bounce = NULL;
        }
        c = end + 1;
    }
}

static int uring_submit(const struct ac_backend_ops *ops, struct ac_req *reqs, int n)
{
    struct req_state small[SMALL_BATCH], *st = small;
    struct thread_ring *t;
    struct round_locks locks;
    unsigned queued;
    int r;

    (void)ops;
    if (n <= 0)
        return 0;
    if (n > SMALL_BATCH)
        st = calloc((size_t)n, sizeof(*st));
    else
        memset(small, 0, sizeof(small));
    r = st == NULL ? -ENOMEM : ring_acquire(&t);
    if (r < 0) {
        for (int i = 0; i < n; i++)
            reqs[i].result = r;
        if (st != small)
            free(st);
        return r;
    }
    while ((queued = queue_round(&t->ring, reqs, st, n, &locks)) > 0) {
        round_lock(&locks);
        r = submit_and_reap(&t->ring, queued, st);
        round_unlock(&locks);
        if (r < 0)
            break;
        absorb_round(reqs, st, n);
    }
    if (r < 0)
        ring_discard(t);
    else
        ring_release(t);
    for (int i = 0; i < n; i++) {
        if (r < 0 && !st[i].finished)
            reqs[i].result = r;
        free(st[i].bounce);
        free(st[i].rest);
    }
    if (st != small)
        free(st);
    return 0;
}

/* ---- single requests --------------------------------------------------- */

static ssize_t uring_rw(struct ac_file *f, const struct iovec *iov, int iovcnt,
                        uint64_t offset, int op)
{
    uint64_t len = ac_iov_size(iov, iovcnt);
    if (len > SSIZE_MAX)
        return -EINVAL;
    struct ac_req q = { .file = f, .op = op, .iov = iov, .iovcnt = iovcnt,
                        .offset = offset, .len = len };
    uring_submit(f->ops, &q, 1);
    if (q.result < 0)
        return (ssize_t)q.result;
    return op == AC_REQ_READ ? (ssize_t)q.result : (ssize_t)len;
}

static ssize_t uring_preadv(struct ac_file *f, const struct iovec *iov, int iovcnt,
                            uint64_t offset)
{
    return uring_rw(f, iov, iovcnt, offset, AC_REQ_READ);
}

static ssize_t uring_pwritev(struct ac_file *f, const struct iovec *iov, int iovcnt,
                             uint64_t offset)
{
    return uring_rw(f, iov, iovcnt, offset, AC_REQ_WRITE);
}

static int uring_flush(struct ac_file *f)
{
    struct ac_req q = { .file = f, .op = AC_REQ_FLUSH };
    uring_submit(f->ops, &q, 1);
    return (int)q.result;
}

const struct ac_backend_ops ac_uring_backend = {
    .version = AC_BACKEND_OPS_VERSION,
    .name = "io_uring",
    .open = uring_open,
    .close = uring_close,
    .preadv = uring_preadv,
    .pwritev = uring_pwritev,
    .flush = uring_flush,
    .truncate = ac_posix_truncate,
    .size = ac_posix_size,
    .punch_hole = ac_posix_punch_hole,
    .lock = ac_posix_lock,
    .identity = ac_posix_identity,
    .rename_noreplace = ac_posix_rename_noreplace,
    .unlink = ac_posix_unlink,
    .submit = uring_submit,
    .next_data = ac_posix_next_data,
};
