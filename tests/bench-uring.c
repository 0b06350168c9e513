/*
 * bench-uring.c: how should threads share io_uring?  A measurement, not a
 * test (not in make check): `make -C tests bench-uring && tests/bench-uring`.
 *
 * T threads (default 2) each read 4 KiB at random aligned offsets of one
 * file, one read at a time, for S seconds, with:
 *   per-thread   a ring per thread, created by the thread: submit and wait
 *                in one io_uring_enter, no lock (what backend-uring.c does)
 *   pt-single    the same with IORING_SETUP_SINGLE_ISSUER|DEFER_TASKRUN
 *   locked       one ring, a mutex held from submission to completion
 *   locked-reap  one ring, a mutex around submission only; completions are
 *                reaped by whichever waiting thread holds the reaper role and
 *                handed to their owners (a condition variable)
 *   posix        pread(), for reference
 *   lib-posix    ac_submit() of one read on the library's posix backend
 *   lib-uring    ac_submit() of one read on the library's io_uring backend
 * and prints reads per second of each, best of R rounds (default 3).
 *
 * Options: -t threads, -s seconds per run, -r rounds, -m MiB file size
 * (default 256), -d O_DIRECT (cache=none), -k keep the file between runs
 * (the file is made in $TMPDIR or /tmp, or is the last argument).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"

#define BLOCK 4096u
#define RING_ENTRIES 64u

enum strategy { S_PER_THREAD, S_PT_SINGLE, S_LOCKED, S_LOCKED_REAP, S_POSIX, S_LIB_POSIX,
                S_LIB_URING, S_COUNT };
static const char *const names[S_COUNT] = {
    "per-thread", "pt-single", "locked", "locked-reap", "posix", "lib-posix", "lib-uring"
};

static int fd;
static struct ac_file *lib_file;
static uint64_t nblocks;
static atomic_bool stop;

/* The shared ring of the two locked strategies. */
static struct io_uring shared;
static pthread_mutex_t sq_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t cq_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cq_cond = PTHREAD_COND_INITIALIZER;
static bool reaper_busy;

struct waiter {
    bool done;
    int res;
};

static void die(const char *what, int err)
{
    fprintf(stderr, "bench-uring: %s: %s\n", what, strerror(err < 0 ? -err : err));
    exit(1);
}

static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * UINT64_C(2685821657736338717);
}

static int read_ring_wait(struct io_uring *ring, void *buf, uint64_t off)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    struct io_uring_cqe *cqe;
    io_uring_prep_read(sqe, fd, buf, BLOCK, off);
    int r = io_uring_submit_and_wait(ring, 1);
    if (r < 0)
        return r;
    while ((r = io_uring_peek_cqe(ring, &cqe)) == -EAGAIN)
        if ((r = io_uring_wait_cqe(ring, &cqe)) == 0)
            break;
    if (r < 0)
        return r;
    r = cqe->res;
    io_uring_cqe_seen(ring, cqe);
    return r;
}

static int read_locked(void *buf, uint64_t off)
{
    pthread_mutex_lock(&sq_lock);
    int r = read_ring_wait(&shared, buf, off);
    pthread_mutex_unlock(&sq_lock);
    return r;
}

static int read_locked_reap(void *buf, uint64_t off)
{
    struct waiter w = { false, 0 };
    struct io_uring_cqe *cqe;

    pthread_mutex_lock(&sq_lock);
    struct io_uring_sqe *sqe = io_uring_get_sqe(&shared);
    io_uring_prep_read(sqe, fd, buf, BLOCK, off);
    io_uring_sqe_set_data(sqe, &w);
    int r = io_uring_submit(&shared);
    pthread_mutex_unlock(&sq_lock);
    if (r < 0)
        return r;

    pthread_mutex_lock(&cq_lock);
    while (!w.done) {
        if (reaper_busy) {
            pthread_cond_wait(&cq_cond, &cq_lock);
            continue;
        }
        reaper_busy = true;
        pthread_mutex_unlock(&cq_lock);
        r = io_uring_wait_cqe(&shared, &cqe);
        pthread_mutex_lock(&cq_lock);
        if (r < 0 && r != -EINTR)
            die("io_uring_wait_cqe", r);
        while (io_uring_peek_cqe(&shared, &cqe) == 0) {
            struct waiter *x = io_uring_cqe_get_data(cqe);
            x->res = cqe->res;
            x->done = true;
            io_uring_cqe_seen(&shared, cqe);
        }
        reaper_busy = false;
        pthread_cond_broadcast(&cq_cond);
    }
    pthread_mutex_unlock(&cq_lock);
    return w.res;
}

static int read_lib(void *buf, uint64_t off)
{
    struct iovec v = { buf, BLOCK };
    struct ac_req q = { .file = lib_file, .op = AC_REQ_READ, .iov = &v, .iovcnt = 1,
                        .offset = off, .len = BLOCK };
    int r = ac_submit(&q, 1);
    return r < 0 ? r : (int)q.result;
}

struct worker {
    pthread_t tid;
    enum strategy s;
    uint64_t seed;
    uint64_t ops;
};

static void *work(void *arg)
{
    struct worker *w = arg;
    struct io_uring own;
    void *buf;

    if (posix_memalign(&buf, BLOCK, BLOCK) != 0)
        die("posix_memalign", ENOMEM);
    if (w->s == S_PER_THREAD || w->s == S_PT_SINGLE) {
        unsigned flags = 0;
#if defined(IORING_SETUP_SINGLE_ISSUER) && defined(IORING_SETUP_DEFER_TASKRUN)
        if (w->s == S_PT_SINGLE)
            flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
#endif
        int r = io_uring_queue_init(RING_ENTRIES, &own, flags);
        if (r < 0)
            die("io_uring_queue_init", r);
    }
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        uint64_t off = next_rand(&w->seed) % nblocks * BLOCK;
        int r;
        switch (w->s) {
        case S_PER_THREAD:
        case S_PT_SINGLE: r = read_ring_wait(&own, buf, off); break;
        case S_LOCKED: r = read_locked(buf, off); break;
        case S_LOCKED_REAP: r = read_locked_reap(buf, off); break;
        case S_POSIX: r = (int)pread(fd, buf, BLOCK, (off_t)off); if (r < 0) r = -errno; break;
        default: r = read_lib(buf, off); break;
        }
        if (r != (int)BLOCK)
            die(names[w->s], r < 0 ? r : EIO);
        w->ops++;
    }
    if (w->s == S_PER_THREAD || w->s == S_PT_SINGLE)
        io_uring_queue_exit(&own);
    free(buf);
    return NULL;
}

static double run(enum strategy s, int threads, double seconds)
{
    struct worker *w = calloc((size_t)threads, sizeof(*w));
    struct timespec t0, t1, pause = { (time_t)seconds,
                                      (long)((seconds - (double)(time_t)seconds) * 1e9) };
    uint64_t total = 0;

    if (w == NULL)
        die("calloc", ENOMEM);
    atomic_store(&stop, false);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < threads; i++) {
        w[i].s = s;
        w[i].seed = UINT64_C(0x9E3779B97F4A7C15) * (uint64_t)(i + 1) + (uint64_t)t0.tv_nsec;
        if (pthread_create(&w[i].tid, NULL, work, &w[i]) != 0)
            die("pthread_create", EAGAIN);
    }
    nanosleep(&pause, NULL);
    atomic_store(&stop, true);
    for (int i = 0; i < threads; i++) {
        pthread_join(w[i].tid, NULL);
        total += w[i].ops;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    free(w);
    return (double)total / ((double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
}

int main(int argc, char **argv)
{
    int threads = 2, rounds = 3, opt;
    double seconds = 2;
    uint64_t mib = 256;
    bool direct = false, keep = false;

    while ((opt = getopt(argc, argv, "t:s:r:m:dk")) != -1) {
        switch (opt) {
        case 't': threads = atoi(optarg); break;
        case 's': seconds = atof(optarg); break;
        case 'r': rounds = atoi(optarg); break;
        case 'm': mib = strtoull(optarg, NULL, 10); break;
        case 'd': direct = true; break;
        case 'k': keep = true; break;
        default:
            fprintf(stderr, "usage: bench-uring [-t threads] [-s seconds] [-r rounds] "
                    "[-m MiB] [-d] [-k] [file]\n");
            return 2;
        }
    }
    char path[4096];
    const char *tmp = getenv("TMPDIR");
    if (optind < argc)
        snprintf(path, sizeof(path), "%s", argv[optind]);
    else
        snprintf(path, sizeof(path), "%s/bench-uring.data", tmp && *tmp ? tmp : "/tmp");

    /* The data file: written once (random bytes would not change a read). */
    int wfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (wfd < 0)
        die(path, errno);
    off_t have = lseek(wfd, 0, SEEK_END);
    if ((uint64_t)have < mib << 20) {
        char *chunk = malloc(1u << 20);
        if (chunk == NULL)
            die("malloc", ENOMEM);
        memset(chunk, 0xa5, 1u << 20);
        for (uint64_t i = 0; i < mib; i++)
            if (pwrite(wfd, chunk, 1u << 20, (off_t)(i << 20)) != 1 << 20)
                die("writing the data file", errno);
        free(chunk);
        fsync(wfd);
    }
    close(wfd);
    nblocks = (mib << 20) / BLOCK;
    fd = open(path, O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));
    if (fd < 0)
        die(path, errno);
    /* Warm the page cache so that buffered runs all read from memory. */
    if (!direct) {
        char *chunk = malloc(1u << 20);
        for (uint64_t i = 0; chunk && i < mib; i++)
            if (pread(fd, chunk, 1u << 20, (off_t)(i << 20)) < 0)
                break;
        free(chunk);
    }
    int r = io_uring_queue_init(RING_ENTRIES, &shared, 0);
    if (r < 0)
        die("io_uring_queue_init (is io_uring allowed here?)", r);

    double best[S_COUNT] = { 0 };
    for (int round = 0; round < rounds; round++) {
        for (int s = 0; s < S_COUNT; s++) {
            if (s == S_LIB_POSIX || s == S_LIB_URING) {
#ifdef HAVE_LIBURING
                const struct ac_backend_ops *ops = s == S_LIB_POSIX ? &ac_posix_backend
                                                                    : &ac_uring_backend;
#else
                const struct ac_backend_ops *ops = &ac_posix_backend;
                if (s == S_LIB_URING)
                    continue;
#endif
                r = ops->open(ops, path, direct ? AC_FILE_DIRECT : AC_FILE_RDONLY, &lib_file);
                if (r < 0)
                    die("opening through the library", r);
            }
            double v = run((enum strategy)s, threads, seconds);
            if (v > best[s])
                best[s] = v;
            if (lib_file != NULL) {
                ac_file_close(lib_file);
                lib_file = NULL;
            }
        }
    }
    printf("%d threads, 4 KiB random reads, %s, %" PRIu64 " MiB file, best of %d x %.1f s\n",
           threads, direct ? "O_DIRECT" : "page cache", mib, rounds, seconds);
    for (int s = 0; s < S_COUNT; s++)
        if (best[s] > 0)
            printf("  %-12s %10.0f reads/s\n", names[s], best[s]);
    io_uring_queue_exit(&shared);
    close(fd);
    if (!keep && optind >= argc)
        unlink(path);
    return 0;
}
