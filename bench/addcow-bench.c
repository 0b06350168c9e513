/*
 * addcow-bench: the benchmark suite of libaddcow (issue 3).
 *
 * Copyright (c) 2026 The libaddcow authors.  MIT licence: see COPYING.
 *
 * Every case runs the same work through libaddcow (public API only) and
 * through plain pread/pwrite/fdatasync on a raw file of the same size, in the
 * same run, repeated with the two sides interleaved (so they share the
 * machine's noise), and reports the median of each side and their ratio
 * (libaddcow / raw, higher is better), per I/O backend.  Where qemu-img is
 * installed, the peer cases also run `qemu-img bench` on a qcow2 overlay with
 * an external data file over the same backing file.
 *
 *   addcow-bench [--smoke] [--dir DIR] [--backends posix,io_uring] [--reps N]
 *                [--size MIB] [--cases LIST] [--csv FILE] [--svg FILE] ...
 *
 * `--help` lists every option.  Data read back is checked against the raw
 * side (same bytes at the same offsets), so a wrong answer fails the run
 * (exit 1) instead of producing a fast number.  A missed performance target
 * is reported (MISS) but fails the run only with --strict.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <addcow.h>

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)
#define TiB (UINT64_C(1) << 40)

#define BLOCK 4096u                 /* the 4 KiB block of the random cases */
#define SEQ_LEN (1024u * 1024u)     /* the 1 MiB request of the sequential cases */
#define SRC_SLOTS 16u               /* write sources rotate over this many buffers */

/* ---- configuration ---------------------------------------------------- */

struct config {
    uint64_t size;              /* image size of the throughput cases */
    int reps;
    unsigned seq_passes;        /* cases 1 and P1: passes over the image per run */
    unsigned alt_passes;        /* case 7 */
    size_t rand_reads;          /* case 3 */
    size_t rand_writes;         /* case 4, P4 */
    size_t flush_writes;        /* case 5, P5 */
    size_t small_writes;        /* case 6 */
    size_t thread_ops;          /* case 10, per thread */
    size_t peer_reads;          /* P3 */
    size_t peer_writes;         /* P4 */
    uint64_t walk_size;         /* case 8 */
    unsigned walk_runs;
    uint64_t open_size;         /* case 9 */
    uint64_t open_written;
    uint64_t as_limit;          /* address-space cap of the case 9 children */
    const char *parent_dir;
    const char *backends;
    const char *cases;
    const char *csv;
    const char *svg;
    const char *qemu_img;       /* NULL: look in PATH */
    bool no_peer;
    bool smoke;
    bool strict;
    bool keep;
    bool verbose;
    uint64_t seed;
};

static struct config C;
static char g_dir[PATH_MAX];    /* the work folder (we made it; removed at exit) */
static bool g_dir_made;
static char g_self[PATH_MAX];   /* this program, for the case 9 children */
static char g_start_dir[PATH_MAX];
static addcow_options *g_opts;  /* the current backend's options */
static const char *g_backend;
static bool g_failed;           /* a correctness check failed */

static void cleanup_dir(void);

__attribute__((format(printf, 1, 2), noreturn))
static void die(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fprintf(stderr, "addcow-bench: error: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

__attribute__((format(printf, 1, 2)))
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double secs_since(uint64_t t0)
{
    return (double)(now_ns() - t0) / 1e9;
}

/* splitmix64: small, fast, good enough to pick offsets and fill buffers. */
static uint64_t mix64(uint64_t z)
{
    z += UINT64_C(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static uint64_t rnd(uint64_t *state)
{
    *state += UINT64_C(0x9E3779B97F4A7C15);
    return mix64(*state);
}

/* Uniform in [0, n). */
static uint64_t rnd_below(uint64_t *state, uint64_t n)
{
    return n ? rnd(state) % n : 0;
}

static void *xmalloc(size_t n)
{
    void *p = NULL;
    if (posix_memalign(&p, 4096, n ? n : 1) != 0)
        die("out of memory (%zu bytes)", n);
    return p;
}

/* File content: word i of a file with content `id` at byte offset `off`
 * (a multiple of 8) is a hash of both, so any block can be told apart. */
static void fill_pattern(void *buf, size_t len, unsigned id, uint64_t off)
{
    uint64_t *w = buf;
    for (size_t i = 0; i < len / 8; i++)
        w[i] = mix64(((uint64_t)id << 56) ^ (off / 8 + i));
}

static void fill_random(void *buf, size_t len, uint64_t seed)
{
    uint64_t *w = buf, s = seed;
    for (size_t i = 0; i < len / 8; i++)
        w[i] = rnd(&s);
}

/* ---- raw file I/O ----------------------------------------------------- */

static void raw_pread(int fd, void *buf, size_t len, uint64_t off)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die("pread at %" PRIu64 ": %s", off, n < 0 ? strerror(errno) : "short read");
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
}

static void raw_pwrite(int fd, const void *buf, size_t len, uint64_t off)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die("pwrite at %" PRIu64 ": %s", off, n < 0 ? strerror(errno) : "short write");
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
}

static void raw_sync(int fd)
{
    if (fdatasync(fd) < 0)
        die("fdatasync: %s", strerror(errno));
}

static int raw_open(const char *name, int flags)
{
    int fd = open(name, flags | O_CLOEXEC, 0644);
    if (fd < 0)
        die("open '%s': %s", name, strerror(errno));
    return fd;
}

/* A fresh sparse raw file of `size` bytes, its size durable (as
 * addcow_create leaves a fresh image file). */
static int raw_fresh(const char *name, uint64_t size)
{
    int fd = raw_open(name, O_RDWR | O_CREAT | O_TRUNC);
    if (ftruncate(fd, (off_t)size) < 0)
        die("ftruncate '%s': %s", name, strerror(errno));
    raw_sync(fd);
    return fd;
}

/* Reads a file once so that it is in the page cache. */
static void warm(const char *name)
{
    int fd = raw_open(name, O_RDONLY);
    char *buf = xmalloc(SEQ_LEN);
    while (read(fd, buf, SEQ_LEN) > 0)
        ;
    free(buf);
    close(fd);
}

static void sync_file(const char *name)
{
    int fd = raw_open(name, O_RDONLY);
    fsync(fd);
    close(fd);
}

/* Copies src over dst and makes dst durable. */
static void copy_file(const char *src, const char *dst)
{
    int in = raw_open(src, O_RDONLY);
    int out = raw_open(dst, O_WRONLY | O_CREAT | O_TRUNC);
    char *buf = xmalloc(SEQ_LEN);
    ssize_t n;
    uint64_t off = 0;
    while ((n = read(in, buf, SEQ_LEN)) > 0) {
        raw_pwrite(out, buf, (size_t)n, off);
        off += (uint64_t)n;
    }
    if (n < 0)
        die("read '%s': %s", src, strerror(errno));
    if (fsync(out) < 0)
        die("fsync '%s': %s", dst, strerror(errno));
    free(buf);
    close(in);
    close(out);
}

/* ---- libaddcow I/O ---------------------------------------------------- */

static void lib_pread(addcow_image *img, void *buf, size_t len, uint64_t off)
{
    int64_t r = addcow_pread(img, buf, len, off);
    if (r != (int64_t)len)
        die("addcow_pread(%zu at %" PRIu64 ") = %" PRId64 ": %s", len, off, r,
            addcow_last_error());
}

static void lib_pwrite(addcow_image *img, const void *buf, size_t len, uint64_t off)
{
    int64_t r = addcow_pwrite(img, buf, len, off);
    if (r != (int64_t)len)
        die("addcow_pwrite(%zu at %" PRIu64 ") = %" PRId64 ": %s", len, off, r,
            addcow_last_error());
}

static void lib_flush(addcow_image *img)
{
    int r = addcow_flush(img);
    if (r < 0)
        die("addcow_flush: %s", addcow_last_error());
}

static void lib_close(addcow_image *img)
{
    if (addcow_close(img) < 0)
        die("addcow_close: %s", addcow_last_error());
}

/* Opens with the current backend; NULL (and why, in `why`) on failure. */
static addcow_image *lib_try_open(const char *name, unsigned flags, char *why, size_t whylen)
{
    addcow_image *img = NULL;
    int r = addcow_open(name, flags, g_opts, &img);
    if (r < 0) {
        snprintf(why, whylen, "%s", addcow_last_error());
        return NULL;
    }
    return img;
}

static addcow_image *lib_open(const char *name, unsigned flags)
{
    char why[512];
    addcow_image *img = lib_try_open(name, flags, why, sizeof(why));
    if (img == NULL)
        die("%s", why);
    return img;
}

/* A new add-cow file over `image`, which is kept if it exists. */
/* The options of everything that is not measured (making images): the
 * posix backend, so that setup is the same whatever the library's default
 * backend is (NULL, the defaults, if the key is refused). */
static const addcow_options *setup_opts(void)
{
    static addcow_options *o;
    static bool done;
    if (!done) {
        done = true;
        o = addcow_options_new();
        if (o != NULL && addcow_options_set(o, "backend", "posix") < 0) {
            addcow_options_free(o);
            o = NULL;
        }
    }
    return o;
}

static void lib_create(const char *acow, uint64_t size, const char *backing, const char *image)
{
    unlink(acow);
    if (addcow_create(acow, size, backing, image, setup_opts()) < 0)
        die("addcow_create '%s': %s", acow, addcow_last_error());
}

/* ---- results ---------------------------------------------------------- */

enum verdict { V_INFO, V_PASS, V_MISS, V_SKIP, V_FAIL };
static const char *const verdict_name[] = { "-", "PASS", "MISS", "SKIP", "FAIL" };

struct result {
    char id[8];
    char what[64];
    char backend[24];
    char unit[12];
    double lib, raw, ratio;        /* ratio: libaddcow speed / raw speed */
    double peer, peer_ratio;       /* qemu-img, and qemu-img / raw */
    double floor, lib_floor;       /* the floor (see struct io_wl), libaddcow / floor */
    char target[40];
    enum verdict v;
    char note[200];
    double plot, plot_peer, plot_target;   /* SVG: bar, peer bar, target tick */
};

#define MAX_RESULTS 128
static struct result results[MAX_RESULTS];
static int nresults;

static struct result *add_result(const char *id, const char *what, const char *unit)
{
    if (nresults == MAX_RESULTS)
        die("too many results");
    struct result *r = &results[nresults++];
    memset(r, 0, sizeof(*r));
    snprintf(r->id, sizeof(r->id), "%s", id);
    snprintf(r->what, sizeof(r->what), "%s", what);
    snprintf(r->backend, sizeof(r->backend), "%s", g_backend ? g_backend : "-");
    snprintf(r->unit, sizeof(r->unit), "%s", unit);
    r->lib = r->raw = r->ratio = r->peer = r->peer_ratio = r->floor = r->lib_floor = NAN;
    r->plot = r->plot_peer = r->plot_target = NAN;
    r->v = V_INFO;
    return r;
}

__attribute__((format(printf, 2, 3)))
static void set_note(struct result *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->note, sizeof(r->note), fmt, ap);
    va_end(ap);
}

static void judge_ratio(struct result *r, double min)
{
    snprintf(r->target, sizeof(r->target), "ratio >= %.2f", min);
    r->plot = r->ratio;
    r->plot_target = min;
    if (r->v == V_FAIL || r->v == V_SKIP)
        return;
    if (isnan(r->ratio))
        r->v = V_SKIP;
    else
        r->v = r->ratio >= min ? V_PASS : V_MISS;
}

static void fail_check(struct result *r, const char *what)
{
    r->v = V_FAIL;
    set_note(r, "WRONG DATA: %s", what);
    g_failed = true;
    fprintf(stderr, "addcow-bench: case %s (%s): wrong data: %s\n", r->id, r->backend, what);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    int k = 0;
    for (int i = 0; i < n; i++)     /* NAN: a failed run, left out */
        if (!isnan(v[i]))
            v[k++] = v[i];
    if (k == 0)
        return NAN;
    qsort(v, (size_t)k, sizeof(double), cmp_double);
    return k % 2 ? v[k / 2] : (v[k / 2 - 1] + v[k / 2]) / 2;
}

/* ---- the measurement loop -------------------------------------------- */

enum side { SIDE_LIB, SIDE_RAW, SIDE_PEER };
static const char *const side_name[] = { "libaddcow", "raw", "qemu-img|floor" };

/* One timed run of one side: the seconds the timed part took, or NAN if
 * that side could not run. */
typedef double (*run_fn)(void *ctx, enum side side, int rep);
/* Called after every side of a repetition ran (checks, removing files). */
typedef void (*rep_done_fn)(void *ctx, int rep);

/* Runs `nsides` sides C.reps times, rotating which side goes first, and
 * stores each side's median of work / seconds in med[side]. */
static void measure(run_fn fn, rep_done_fn done, void *ctx, int nsides, double work,
                    double med[3])
{
    double v[3][64];
    int reps = C.reps > 64 ? 64 : C.reps;
    for (int r = 0; r < reps; r++) {
        for (int k = 0; k < nsides; k++) {
            enum side s = (enum side)((r + k) % nsides);
            double t = fn(ctx, s, r);
            v[s][r] = isnan(t) || t <= 0 ? NAN : work / t;
            if (C.verbose)
                say("    rep %d %-9s %12.4g /s  (%.3f s)\n", r, side_name[s], v[s][r], t);
        }
        if (done != NULL)
            done(ctx, r);
    }
    for (int s = 0; s < 3; s++)
        med[s] = s < nsides ? median(v[s], reps) : NAN;
}

/* ---- shared files ----------------------------------------------------- */

static size_t g_nblocks;            /* 4 KiB blocks of the throughput images */
static uint8_t *g_half_map;         /* random half of the blocks allocated */
static uint8_t *g_alt_map;          /* every other block allocated */

/* Writes raw file `name` of C.size bytes: content 1 (the base) where
 * map[b] is 0, content 2 (the overlay's data) where it is 1; map NULL with
 * id: all content `id`.  So a raw file holds what an overlay reads as. */
static void make_raw(const char *name, const uint8_t *map, unsigned id)
{
    int fd = raw_open(name, O_RDWR | O_CREAT | O_TRUNC);
    char *buf = xmalloc(SEQ_LEN);
    for (uint64_t off = 0; off < C.size; off += SEQ_LEN) {
        size_t len = C.size - off < SEQ_LEN ? (size_t)(C.size - off) : SEQ_LEN;
        for (size_t b = 0; b < len; b += BLOCK) {
            unsigned cid = map ? (map[(off + b) / BLOCK] ? 2 : 1) : id;
            fill_pattern(buf + b, BLOCK, cid, off + b);
        }
        raw_pwrite(fd, buf, len, off);
    }
    if (fsync(fd) < 0)
        die("fsync '%s': %s", name, strerror(errno));
    free(buf);
    close(fd);
}

/* An overlay NAME.add-cow (image file NAME.img) over base.raw whose blocks
 * with map[b] == 1 (all, for NULL) hold content 2.  Built with default
 * options, one write per run of allocated blocks (at most 1 MiB).
 *
 * The image file is first written whole (content 7, which the overlay
 * never shows), so that it is not fragmented: on a file system mounted
 * with online discard (as this project's machines are), freeing a file of
 * thousands of extents takes seconds.  The library reads unallocated
 * sectors from the backing file whatever the image file holds there. */
static void make_overlay(const char *name, const uint8_t *map)
{
    char acow[64], image[64];
    snprintf(acow, sizeof(acow), "%s.add-cow", name);
    snprintf(image, sizeof(image), "%s.img", name);
    make_raw(image, NULL, 7);
    lib_create(acow, C.size, "base.raw", image);
    addcow_image *img = NULL;
    if (addcow_open(acow, ADDCOW_OPEN_RDWR, setup_opts(), &img) < 0)
        die("addcow_open '%s': %s", acow, addcow_last_error());
    char *buf = xmalloc(SEQ_LEN);
    for (size_t b = 0; b < g_nblocks;) {
        if (map != NULL && !map[b]) {
            b++;
            continue;
        }
        size_t e = b + 1;
        while (e < g_nblocks && e - b < SEQ_LEN / BLOCK && (map == NULL || map[e]))
            e++;
        uint64_t off = (uint64_t)b * BLOCK;
        size_t len = (e - b) * BLOCK;
        fill_pattern(buf, len, 2, off);
        lib_pwrite(img, buf, len, off);
        b = e;
    }
    free(buf);
    lib_close(img);
}

static void setup_shared(void)
{
    uint64_t t0 = now_ns();
    uint64_t seed = C.seed ^ 0x4a4cu;
    g_nblocks = (size_t)(C.size / BLOCK);
    g_half_map = xmalloc(g_nblocks);
    g_alt_map = xmalloc(g_nblocks);
    for (size_t b = 0; b < g_nblocks; b++) {
        g_half_map[b] = (uint8_t)(rnd(&seed) & 1);
        g_alt_map[b] = (uint8_t)(b % 2 == 0);
    }
    say("setup: base and overlay images of %" PRIu64 " MiB...\n", C.size / MiB);
    make_raw("base.raw", NULL, 1);
    make_overlay("full", NULL);
    make_raw("raw-full.raw", NULL, 2);
    make_overlay("half", g_half_map);
    make_raw("raw-half.raw", g_half_map, 0);
    make_overlay("alt", g_alt_map);
    make_raw("raw-alt.raw", g_alt_map, 0);
    make_overlay("thr", g_half_map);
    copy_file("thr.add-cow", "thr.tmpl");
    make_raw("raw-thr.raw", NULL, 3);
    make_raw("w.img", NULL, 7);
    make_raw("w.raw", NULL, 7);
    make_raw("f.img", NULL, 7);      /* the floor's image file */
    static const char *const files[] = {
        "base.raw", "full.img", "full.add-cow", "raw-full.raw", "half.img", "half.add-cow",
        "raw-half.raw", "alt.img", "alt.add-cow", "raw-alt.raw", "thr.img", "thr.tmpl",
        "raw-thr.raw", "w.img", "w.raw", "f.img" };
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        sync_file(files[i]);
        warm(files[i]);
    }
    say("setup: done in %.1f s\n", secs_since(t0));
}

/* ---- qemu-img --------------------------------------------------------- */

static char g_qemu_img[PATH_MAX];   /* "" when absent */

static void find_qemu_img(void)
{
    g_qemu_img[0] = '\0';
    if (C.no_peer)
        return;
    if (C.qemu_img != NULL) {
        if (access(C.qemu_img, X_OK) == 0)
            snprintf(g_qemu_img, sizeof(g_qemu_img), "%s", C.qemu_img);
        return;
    }
    const char *path = getenv("PATH");
    if (path == NULL)
        path = "/usr/bin:/bin";
    char *copy = strdup(path), *save = NULL;
    if (copy == NULL)
        die("out of memory");
    for (char *d = strtok_r(copy, ":", &save); d != NULL; d = strtok_r(NULL, ":", &save)) {
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/qemu-img", d);
        if (access(p, X_OK) == 0) {
            snprintf(g_qemu_img, sizeof(g_qemu_img), "%s", p);
            break;
        }
    }
    free(copy);
}

/* Runs argv (argv[0] = a path), its stdout and stderr into out; returns its
 * exit status (or -1). */
static int run_cmd(char *const argv[], char *out, size_t outlen)
{
    int pfd[2];
    if (pipe(pfd) < 0)
        die("pipe: %s", strerror(errno));
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(pfd[1], 1);
        dup2(pfd[1], 2);
        close(pfd[0]);
        close(pfd[1]);
        execv(argv[0], argv);
        _exit(127);
    }
    close(pfd[1]);
    size_t got = 0;
    for (;;) {
        char tmp[4096];
        ssize_t n = read(pfd[0], tmp, sizeof(tmp));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        size_t take = (size_t)n < outlen - 1 - got ? (size_t)n : outlen - 1 - got;
        memcpy(out + got, tmp, take);
        got += take;
    }
    out[got] = '\0';
    close(pfd[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static bool qemu_create(const char *name)
{
    char qcow[64], data[64], opt[96], sz[32], out[4096];
    snprintf(qcow, sizeof(qcow), "%s.qcow2", name);
    snprintf(data, sizeof(data), "%s.data", name);
    snprintf(opt, sizeof(opt), "data_file=%s", data);
    snprintf(sz, sizeof(sz), "%" PRIu64, C.size);
    unlink(qcow);
    unlink(data);
    char *argv[] = { g_qemu_img, "create", "-q", "-f", "qcow2", "-o", opt, "-b", "base.raw",
                     "-F", "raw", qcow, sz, NULL };
    if (run_cmd(argv, out, sizeof(out)) != 0) {
        fprintf(stderr, "addcow-bench: qemu-img create %s failed: %s\n", qcow, out);
        return false;
    }
    return true;
}

/* `qemu-img bench` on NAME.qcow2: count requests of len bytes, the first
 * at 0, each next one `step` further (modulo the size).  Returns the
 * seconds qemu-img reports for the run (open and close excluded), NAN on
 * failure; *wall (if not NULL): the whole command's wall-clock time. */
static double qemu_bench(const char *name, bool write, size_t count, size_t len, uint64_t step,
                         size_t flush_every, double *wall)
{
    char qcow[64], c[32], s[32], S[32], fl[48], out[8192];
    snprintf(qcow, sizeof(qcow), "%s.qcow2", name);
    snprintf(c, sizeof(c), "%zu", count);
    snprintf(s, sizeof(s), "%zu", len);
    snprintf(S, sizeof(S), "%" PRIu64, step);
    snprintf(fl, sizeof(fl), "--flush-interval=%zu", flush_every);
    char *argv[20];
    int a = 0;
    argv[a++] = g_qemu_img;
    argv[a++] = "bench";
    argv[a++] = "-f";
    argv[a++] = "qcow2";
    argv[a++] = "-t";
    argv[a++] = "writeback";
    argv[a++] = "-d";
    argv[a++] = "1";
    argv[a++] = "-c";
    argv[a++] = c;
    argv[a++] = "-s";
    argv[a++] = s;
    argv[a++] = "-S";
    argv[a++] = S;
    if (write) {
        argv[a++] = "-w";
        argv[a++] = "--pattern=90";
        if (flush_every)
            argv[a++] = fl;
    }
    argv[a++] = qcow;
    argv[a] = NULL;
    uint64_t t0 = now_ns();
    int st = run_cmd(argv, out, sizeof(out));
    if (wall != NULL)
        *wall = secs_since(t0);
    const char *p = strstr(out, "Run completed in ");
    double t;
    if (st != 0 || p == NULL || sscanf(p, "Run completed in %lf", &t) != 1) {
        fprintf(stderr, "addcow-bench: qemu-img bench on %s failed (status %d): %s\n",
                qcow, st, out);
        return NAN;
    }
    return t < 0.0005 ? 0.0005 : t;   /* it prints milliseconds */
}

/* ---- I/O workloads (cases 1-7 and the peer cases) --------------------- */

/* Write cases start every run from a fresh overlay: a new add-cow file
 * (empty bitmap) over base.raw, so the library does all of its allocation
 * work.  Its image file w.img, the raw side's w.raw and qemu-img's data
 * file are kept from run to run, written whole at setup (see make_overlay:
 * freeing fragmented files is slow here), so no side pays file-system block
 * allocation and all three get the same writes on the same kind of file. */
#define W_ACOW "w.add-cow"
#define W_IMG "w.img"
#define W_RAW "w.raw"
#define Q_W "q-w"                   /* q-w.qcow2 from q-w.tmpl, data file q-w.data */

struct io_wl {
    const char *id;
    const char *lib_name;       /* read cases: the image; writes: NULL (fresh W_ACOW) */
    const char *raw_name;       /* read cases: the raw twin; writes: NULL (W_RAW) */
    const char *peer_name;      /* read cases: the qcow2 (no suffix); writes: NULL (Q_W) */
    const uint64_t *offs;
    size_t n, len;
    bool write;
    size_t flush_every;         /* 0: none */
    bool final_flush;
    uint64_t peer_step;         /* the peer's offsets: i * step mod size */
    /* The floor of cases 3, 5 and 6: the fewest plain system calls that
     * any add-cow implementation must make for the same work (read from
     * the file the bitmap names; copy-on-write read then write; data
     * durable before bitmap bytes, then those durable), with the bitmap
     * in plain memory.  It runs in the third side's slot. */
    int floor;                  /* 0: none; else the case number */
    uint8_t *fmap;              /* floor: sectors allocated so far (case 6) */
    char *buf;                  /* read buffer, or write sources (SRC_SLOTS * len) */
    addcow_image *img;          /* read cases: opened once */
    int fd;
    struct result *res;
};

/* The closing flush, unless the periodic one just happened. */
static bool final_flush_needed(const struct io_wl *w)
{
    return w->final_flush && !(w->flush_every && w->n % w->flush_every == 0);
}

static double io_run_peer(struct io_wl *w)
{
    if (!w->write)
        return qemu_bench(w->peer_name, false, w->n, w->len, w->peer_step, 0, NULL);
    copy_file(Q_W ".tmpl", Q_W ".qcow2");       /* a fresh overlay */
    /* qemu-img's timer stops when the last request completes, before the
     * flush that follows it (that one happens in close).  So a write run
     * is timed as the command's wall-clock time less that of a one-request
     * run (start, open, one write, close with its flush), which puts the
     * last flush in. */
    double base, wall, reported;
    if (isnan(qemu_bench(Q_W, true, 1, w->len, w->peer_step, 1, &base)))
        return NAN;
    copy_file(Q_W ".tmpl", Q_W ".qcow2");
    reported = qemu_bench(Q_W, true, w->n, w->len, w->peer_step,
                          w->flush_every ? w->flush_every : w->n, &wall);
    if (isnan(reported))
        return NAN;
    /* never less than its own timer says (tiny runs: start-up noise) */
    return wall - base > reported ? wall - base : reported;
}

/* The floor side (see struct io_wl).  F_IMG and F_BM stand for the image
 * file and the add-cow file of a minimal implementation. */
#define F_IMG "f.img"
#define F_BM "f.bm"

static double io_run_floor(struct io_wl *w)
{
    if (w->floor == 3) {
        int fi = raw_open("half.img", O_RDONLY), fb = raw_open("base.raw", O_RDONLY);
        uint64_t t0 = now_ns();
        for (size_t i = 0; i < w->n; i++) {
            uint64_t off = w->offs[i];
            raw_pread(g_half_map[off / BLOCK] ? fi : fb, w->buf, w->len, off);
        }
        double t = secs_since(t0);
        close(fi);
        close(fb);
        return t;
    }
    uint64_t nsec = C.size / 512;
    size_t bm_len = (size_t)(nsec / 8);
    int fi = raw_open(F_IMG, O_RDWR), fb = -1, fbase = -1;
    uint8_t *bm = NULL;
    if (w->floor == 5) {
        /* a fresh bitmap file: header and bitmap, all zero, sparse */
        unlink(F_BM);
        fb = raw_open(F_BM, O_RDWR | O_CREAT | O_TRUNC);
        if (ftruncate(fb, 2068 + (off_t)bm_len) < 0)
            die("ftruncate '%s': %s", F_BM, strerror(errno));
        bm = calloc(1, bm_len);
        if (bm == NULL)
            die("out of memory");
    } else {
        memset(w->fmap, 0, (size_t)nsec);
        fbase = raw_open("base.raw", O_RDONLY);
    }
    uint64_t t0 = now_ns();
    if (w->floor == 5) {
        uint64_t lo = UINT64_MAX, hi = 0;       /* dirty bitmap bytes */
        for (size_t i = 0; i < w->n; i++) {
            uint64_t off = w->offs[i];
            raw_pwrite(fi, w->buf + (i % SRC_SLOTS) * w->len, w->len, off);
            for (uint64_t sct = off / 512; sct < (off + w->len) / 512; sct++)
                bm[sct / 8] |= (uint8_t)(1u << (sct % 8));
            lo = off / 4096 < lo ? off / 4096 : lo;
            hi = (off + w->len - 1) / 4096 > hi ? (off + w->len - 1) / 4096 : hi;
            bool last = i + 1 == w->n;
            if (((i + 1) % w->flush_every == 0) || last) {
                raw_sync(fi);
                uint64_t b0 = lo & ~UINT64_C(511), b1 = (hi + 512) & ~UINT64_C(511);
                if (b1 > bm_len)
                    b1 = bm_len;
                raw_pwrite(fb, bm + b0, (size_t)(b1 - b0), 2068 + b0);
                raw_sync(fb);
                lo = UINT64_MAX;
                hi = 0;
            }
        }
    } else {
        /* w->len <= 512: the write covers at most two sectors */
        char cow[1024];
        for (size_t i = 0; i < w->n; i++) {
            uint64_t off = w->offs[i], a = off & ~UINT64_C(511);
            uint64_t e = (off + w->len + 511) & ~UINT64_C(511);
            const char *src = w->buf + (i % SRC_SLOTS) * w->len;
            bool head = off != a && !w->fmap[a / 512];
            bool tail = off + w->len != e && !w->fmap[e / 512 - 1];
            if (head && tail) {             /* one read for both */
                raw_pread(fbase, cow, (size_t)(e - a), a);
            } else if (head) {
                raw_pread(fbase, cow, 512, a);
            } else if (tail) {
                raw_pread(fbase, cow + (e - 512 - a), 512, e - 512);
            }
            uint64_t ws = head ? a : off, we = tail ? e : off + w->len;
            memcpy(cow + (off - a), src, w->len);
            raw_pwrite(fi, cow + (ws - a), (size_t)(we - ws), ws);
            for (uint64_t sct = a / 512; sct < e / 512; sct++)
                w->fmap[sct] = 1;
        }
    }
    double t = secs_since(t0);
    close(fi);
    if (fb >= 0)
        close(fb);
    if (fbase >= 0)
        close(fbase);
    free(bm);
    return t;
}

static double io_run(void *ctx, enum side side, int rep)
{
    struct io_wl *w = ctx;
    (void)rep;

    if (side == SIDE_PEER)
        return w->floor ? io_run_floor(w) : io_run_peer(w);

    /* The two sides' timed loops are written out separately on purpose:
     * each must be the plain calls of its own API, with nothing shared in
     * between (no function pointer on the raw side) that would blur the
     * ratio. */
    if (side == SIDE_LIB) {
        addcow_image *img = w->img;
        if (w->write) {
            lib_create(W_ACOW, C.size, "base.raw", W_IMG);
            img = lib_open(W_ACOW, ADDCOW_OPEN_RDWR);
        } else if (img == NULL) {       /* peer cases: see run_io */
            img = lib_open(w->lib_name, ADDCOW_OPEN_RDONLY);
        }
        uint64_t t0 = now_ns();
        if (w->write) {
            for (size_t i = 0; i < w->n; i++) {
                lib_pwrite(img, w->buf + (i % SRC_SLOTS) * w->len, w->len, w->offs[i]);
                if (w->flush_every && (i + 1) % w->flush_every == 0)
                    lib_flush(img);
            }
            if (final_flush_needed(w))
                lib_flush(img);
        } else {
            for (size_t i = 0; i < w->n; i++)
                lib_pread(img, w->buf, w->len, w->offs[i]);
        }
        double t = secs_since(t0);
        if (img != w->img)
            lib_close(img);
        return t;
    }

    int fd = w->write ? raw_open(W_RAW, O_RDWR) : w->fd;
    uint64_t t0 = now_ns();
    if (w->write) {
        for (size_t i = 0; i < w->n; i++) {
            raw_pwrite(fd, w->buf + (i % SRC_SLOTS) * w->len, w->len, w->offs[i]);
            if (w->flush_every && (i + 1) % w->flush_every == 0)
                raw_sync(fd);
        }
        if (final_flush_needed(w))
            raw_sync(fd);
    } else {
        for (size_t i = 0; i < w->n; i++)
            raw_pread(fd, w->buf, w->len, w->offs[i]);
    }
    double t = secs_since(t0);
    if (w->write)
        close(fd);
    return t;
}

/* Compares what the libaddcow side and the raw side hold at up to `max`
 * of the workload's regions.  Returns false at the first difference. */
static bool compare_regions(const struct io_wl *w, addcow_image *img, int fd, size_t max)
{
    size_t step = w->n > max ? w->n / max : 1;
    char *a = xmalloc(w->len), *b = xmalloc(w->len);
    bool ok = true;
    for (size_t i = 0; i < w->n && ok; i += step) {
        lib_pread(img, a, w->len, w->offs[i]);
        raw_pread(fd, b, w->len, w->offs[i]);
        ok = memcmp(a, b, w->len) == 0;
        if (!ok)
            fprintf(stderr, "addcow-bench: %zu bytes at %" PRIu64 " differ\n", w->len, w->offs[i]);
    }
    free(a);
    free(b);
    return ok;
}

/* After the first repetition of a write case: the overlay must read as the
 * raw file wherever the run wrote (both got the same writes in the same
 * order), and read the backing file elsewhere. */
static void io_rep_done(void *ctx, int rep)
{
    struct io_wl *w = ctx;
    if (!w->write || rep != 0)
        return;
    addcow_image *img = lib_open(W_ACOW, ADDCOW_OPEN_RDONLY);
    int fd = raw_open(W_RAW, O_RDONLY);
    if (!compare_regions(w, img, fd, C.smoke ? 4096 : 512))
        fail_check(w->res, "the overlay does not read back what was written");
    /* A block no write touched reads as the backing file (content 1). */
    uint8_t *touched = xmalloc(g_nblocks);
    memset(touched, 0, g_nblocks);
    for (size_t i = 0; i < w->n; i++)
        for (uint64_t b = w->offs[i] / BLOCK; b <= (w->offs[i] + w->len - 1) / BLOCK; b++)
            touched[b] = 1;
    char *a = xmalloc(BLOCK), *e = xmalloc(BLOCK);
    for (size_t b = 0, checked = 0; b < g_nblocks && checked < 256; b++) {
        if (touched[b])
            continue;
        checked++;
        lib_pread(img, a, BLOCK, (uint64_t)b * BLOCK);
        fill_pattern(e, BLOCK, 1, (uint64_t)b * BLOCK);
        if (memcmp(a, e, BLOCK) != 0) {
            fail_check(w->res, "an unwritten block does not read the backing file");
            break;
        }
    }
    /* The floor wrote the same bytes as the raw side (the last write to a
     * place wins on both). */
    if (w->floor == 5 || w->floor == 6) {
        int ff = raw_open("f.img", O_RDONLY);
        size_t step = w->n > 512 ? w->n / 512 : 1;
        char *x = xmalloc(w->len), *y = xmalloc(w->len);
        for (size_t i = 0; i < w->n; i += step) {
            raw_pread(ff, x, w->len, w->offs[i]);
            raw_pread(fd, y, w->len, w->offs[i]);
            if (memcmp(x, y, w->len) != 0) {
                fail_check(w->res, "the floor side did not write what the raw side wrote");
                break;
            }
        }
        free(x);
        free(y);
        close(ff);
    }
    free(a);
    free(e);
    free(touched);
    close(fd);
    lib_close(img);
}

/* Runs one I/O workload and fills its result row.  unit_bytes: report
 * MiB/s (true) or operations/s. */
static void run_io(struct io_wl *w, struct result *res, bool unit_bytes, bool with_peer)
{
    w->res = res;
    w->img = NULL;
    w->fd = -1;
    w->buf = xmalloc(w->write ? SRC_SLOTS * w->len : w->len);
    if (w->write)
        fill_random(w->buf, SRC_SLOTS * w->len, C.seed ^ w->len);

    if (w->lib_name != NULL) {
        char why[512];
        w->img = lib_try_open(w->lib_name, w->write ? ADDCOW_OPEN_RDWR : ADDCOW_OPEN_RDONLY,
                              why, sizeof(why));
        if (w->img == NULL) {
            res->v = V_SKIP;
            set_note(res, "open failed: %s", why);
            say("  case %s: skipped: %s\n", res->id, why);
            free(w->buf);
            return;
        }
    }
    if (w->raw_name != NULL)
        w->fd = raw_open(w->raw_name, w->write ? O_RDWR : O_RDONLY);

    /* Reads: check (untimed) that the image reads as its raw twin. */
    if (!w->write && !compare_regions(w, w->img, w->fd,
                                      w->len >= SEQ_LEN ? (size_t)(C.size / w->len) : 4096))
        fail_check(res, "libaddcow reads differ from the raw file");

    /* With qemu-img in the loop, the image is open only during its own
     * runs: libaddcow's reader lock on base.raw covers the whole file,
     * which QEMU's byte-range lock protocol reads as "does not share
     * consistent reads", so qemu-img could not open its overlay of the
     * same backing file meanwhile. */
    if (with_peer && w->img != NULL) {
        lib_close(w->img);
        w->img = NULL;
    }
    double med[3];
    double work = unit_bytes ? (double)w->n * (double)w->len / (double)MiB : (double)w->n;
    if (w->floor == 6)
        w->fmap = xmalloc((size_t)(C.size / 512));
    measure(io_run, io_rep_done, w, with_peer || w->floor ? 3 : 2, work, med);
    res->lib = med[SIDE_LIB];
    res->raw = med[SIDE_RAW];
    res->ratio = res->lib / res->raw;
    if (with_peer) {
        res->peer = med[SIDE_PEER];
        res->peer_ratio = res->peer / res->raw;
    }
    if (w->floor) {
        res->floor = med[SIDE_PEER];
        res->lib_floor = res->lib / res->floor;
        set_note(res, "floor %.0f %s: lib/floor %.3f, floor/raw %.3f", res->floor, res->unit,
                 res->lib_floor, res->floor / res->raw);
    }
    free(w->fmap);
    w->fmap = NULL;
    if (w->img != NULL)
        lib_close(w->img);
    if (w->fd >= 0)
        close(w->fd);
    free(w->buf);
}

static uint64_t *offs_seq(size_t n, size_t len)
{
    uint64_t *o = xmalloc(n * sizeof(*o));
    uint64_t per = C.size / len;
    for (size_t i = 0; i < n; i++)
        o[i] = (i % per) * len;
    return o;
}

static uint64_t *offs_blocks(size_t n, uint64_t seed)
{
    uint64_t *o = xmalloc(n * sizeof(*o));
    for (size_t i = 0; i < n; i++)
        o[i] = rnd_below(&seed, g_nblocks) * BLOCK;
    return o;
}

/* The offsets `qemu-img bench -S step` visits: 0, step, 2 step, ... modulo
 * the size. */
static uint64_t *offs_stride(size_t n, uint64_t step)
{
    uint64_t *o = xmalloc(n * sizeof(*o));
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        o[i] = off;
        off = (off + step) % C.size;
    }
    return o;
}

static bool case_on(const char *id)
{
    if (C.cases == NULL)
        return true;
    size_t n = strlen(id);
    for (const char *p = C.cases; *p;) {
        size_t k = strcspn(p, ",");
        if (k == n && strncmp(p, id, n) == 0)
            return true;
        p += k;
        if (*p == ',')
            p++;
    }
    return false;
}

static void show(const struct result *r);

static void case_seq_read(void)
{
    size_t n = C.seq_passes * (size_t)(C.size / SEQ_LEN);
    uint64_t *o = offs_seq(n, SEQ_LEN);
    struct result *res = add_result("1", "seq read 1 MiB, full image", "MiB/s");
    struct io_wl w = { .id = "1", .lib_name = "full.add-cow", .raw_name = "raw-full.raw",
                       .offs = o, .n = n, .len = SEQ_LEN };
    run_io(&w, res, true, false);
    judge_ratio(res, 0.95);
    show(res);
    free(o);
}

static void case_seq_write(void)
{
    size_t n = (size_t)(C.size / SEQ_LEN);
    uint64_t *o = offs_seq(n, SEQ_LEN);
    struct result *res = add_result("2", "seq write 1 MiB, fresh overlay, flush", "MiB/s");
    struct io_wl w = { .id = "2", .offs = o, .n = n, .len = SEQ_LEN, .write = true,
                       .final_flush = true };
    run_io(&w, res, true, false);
    judge_ratio(res, 0.95);
    show(res);
    free(o);
}

static void case_rand_read(void)
{
    uint64_t *o = offs_blocks(C.rand_reads, C.seed ^ 3);
    struct result *res = add_result("3", "rand read 4 KiB, half allocated", "IOPS");
    struct io_wl w = { .id = "3", .lib_name = "half.add-cow", .raw_name = "raw-half.raw",
                       .offs = o, .n = C.rand_reads, .len = BLOCK, .floor = 3 };
    run_io(&w, res, false, false);
    judge_ratio(res, 0.95);
    show(res);
    free(o);
}

static void case_rand_write(const char *id, size_t n, size_t flush_every, double target)
{
    uint64_t *o = offs_blocks(n, C.seed ^ 4);
    char what[64];
    if (flush_every)
        snprintf(what, sizeof(what), "rand write 4 KiB, flush every %zu", flush_every);
    else
        snprintf(what, sizeof(what), "rand write 4 KiB, flush at end");
    struct result *res = add_result(id, what, "IOPS");
    struct io_wl w = { .id = id, .offs = o, .n = n, .len = BLOCK, .write = true,
                       .flush_every = flush_every, .final_flush = true,
                       .floor = flush_every ? 5 : 0 };
    run_io(&w, res, false, false);
    judge_ratio(res, target);
    show(res);
    free(o);
}

static void case_small_write(void)
{
    size_t n = C.small_writes;
    uint64_t *o = xmalloc(n * sizeof(*o));
    uint64_t seed = C.seed ^ 6;
    for (size_t i = 0; i < n; i++)
        o[i] = rnd_below(&seed, C.size - 512);
    struct result *res = add_result("6", "write 512 B unaligned, COW, no flush", "IOPS");
    struct io_wl w = { .id = "6", .offs = o, .n = n, .len = 512, .write = true, .floor = 6 };
    run_io(&w, res, false, false);
    judge_ratio(res, 0.60);
    show(res);
    free(o);
}

static void case_batched_read(void)
{
    size_t n = C.alt_passes * (size_t)(C.size / SEQ_LEN);
    uint64_t *o = offs_seq(n, SEQ_LEN);
    struct result *res = add_result("7", "read 1 MiB over 256 alternating runs", "MiB/s");
    struct io_wl w = { .id = "7", .lib_name = "alt.add-cow", .raw_name = "raw-alt.raw",
                       .offs = o, .n = n, .len = SEQ_LEN };
    run_io(&w, res, true, false);
    res->plot = res->ratio;
    snprintf(res->target, sizeof(res->target), "(see 7x)");
    show(res);
    free(o);
}

/* ---- case 10: two threads on one handle ------------------------------- */

struct thr_arg {
    addcow_image *img;
    int fd;
    const uint64_t *offs;
    const uint8_t *is_write;
    size_t n;
    char *rbuf, *wbuf;
};

static void *thr_main(void *p)
{
    struct thr_arg *a = p;
    for (size_t i = 0; i < a->n; i++) {
        if (a->img != NULL) {
            if (a->is_write[i])
                lib_pwrite(a->img, a->wbuf, BLOCK, a->offs[i]);
            else
                lib_pread(a->img, a->rbuf, BLOCK, a->offs[i]);
        } else {
            if (a->is_write[i])
                raw_pwrite(a->fd, a->wbuf, BLOCK, a->offs[i]);
            else
                raw_pread(a->fd, a->rbuf, BLOCK, a->offs[i]);
        }
    }
    return NULL;
}

struct thr_wl {
    struct thr_arg arg[2];
    int fd;
};

static double thr_run(void *ctx, enum side side, int rep)
{
    struct thr_wl *w = ctx;
    addcow_image *img = NULL;
    (void)rep;
    if (side == SIDE_LIB) {
        /* The half-allocated overlay afresh each time (writes allocate):
         * its add-cow file from the template, its image file kept. */
        copy_file("thr.tmpl", "thr.add-cow");
        img = lib_open("thr.add-cow", ADDCOW_OPEN_RDWR);
    }
    pthread_t t[2];
    uint64_t t0 = now_ns();
    for (int i = 0; i < 2; i++) {
        w->arg[i].img = img;
        w->arg[i].fd = w->fd;
        if (pthread_create(&t[i], NULL, thr_main, &w->arg[i]) != 0)
            die("pthread_create failed");
    }
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    double secs = secs_since(t0);
    if (img != NULL)
        lib_close(img);
    return secs;
}

static void case_threads(void)
{
    struct result *res = add_result("10", "2 threads rand 4 KiB r/w, one handle", "IOPS");
    char why[512];
    copy_file("thr.tmpl", "thr.add-cow");
    addcow_image *probe = lib_try_open("thr.add-cow", ADDCOW_OPEN_RDWR, why, sizeof(why));
    if (probe == NULL) {
        res->v = V_SKIP;
        set_note(res, "open failed: %s", why);
        show(res);
        return;
    }
    lib_close(probe);
    struct thr_wl w;
    memset(&w, 0, sizeof(w));
    w.fd = raw_open("raw-thr.raw", O_RDWR);
    for (int i = 0; i < 2; i++) {
        uint64_t seed = C.seed ^ (0x100u + (unsigned)i);
        uint64_t *o = xmalloc(C.thread_ops * sizeof(*o));
        uint8_t *wr = xmalloc(C.thread_ops);
        for (size_t k = 0; k < C.thread_ops; k++) {
            o[k] = rnd_below(&seed, g_nblocks) * BLOCK;
            wr[k] = (uint8_t)(rnd(&seed) & 1);
        }
        w.arg[i].offs = o;
        w.arg[i].is_write = wr;
        w.arg[i].n = C.thread_ops;
        w.arg[i].rbuf = xmalloc(BLOCK);
        w.arg[i].wbuf = xmalloc(BLOCK);
        fill_random(w.arg[i].wbuf, BLOCK, seed);
    }
    double med[3];
    measure(thr_run, NULL, &w, 2, 2.0 * (double)C.thread_ops, med);
    res->lib = med[SIDE_LIB];
    res->raw = med[SIDE_RAW];
    res->ratio = res->lib / res->raw;
    judge_ratio(res, 0.90);
    for (int i = 0; i < 2; i++) {
        free((void *)w.arg[i].offs);
        free((void *)w.arg[i].is_write);
        free(w.arg[i].rbuf);
        free(w.arg[i].wbuf);
    }
    close(w.fd);
    show(res);
}

/* ---- case 8: the allocation walk -------------------------------------- */

static uint64_t *g_walk_bits;       /* the plain bitmap of the same disk */
static uint64_t g_walk_words;
static uint64_t g_walk_expected;    /* runs: 2 * allocated runs + 1 */
static bool g_walk_ready;

/* Builds walk.add-cow (sparse, C.walk_size, no backing file) with
 * C.walk_runs allocated runs, and the same bits in a plain in-memory
 * bitmap.  Runs are 4 KiB to 64 KiB, one in each equal slice of the disk,
 * never touching each other. */
static void setup_walk(void)
{
    uint64_t t0 = now_ns();
    uint64_t slice = C.walk_size / C.walk_runs / BLOCK * BLOCK;
    uint64_t seed = C.seed ^ 8;
    if (slice < 80 * KiB)
        die("--walk-size too small for %u runs", C.walk_runs);
    lib_create("walk.add-cow", C.walk_size, NULL, "walk.img");
    addcow_image *img = NULL;
    if (addcow_open("walk.add-cow", ADDCOW_OPEN_RDWR, setup_opts(), &img) < 0)
        die("addcow_open walk.add-cow: %s", addcow_last_error());
    g_walk_words = C.walk_size / 512 / 64;
    g_walk_bits = xmalloc(g_walk_words * 8);
    memset(g_walk_bits, 0, g_walk_words * 8);     /* resident, as a real bitmap is */
    char *buf = xmalloc(64 * KiB);
    fill_random(buf, 64 * KiB, seed);
    for (unsigned i = 0; i < C.walk_runs; i++) {
        uint64_t len = (1 + rnd_below(&seed, 16)) * BLOCK;
        uint64_t room = (slice - len - 2 * BLOCK) / BLOCK;
        uint64_t off = (uint64_t)i * slice + BLOCK + rnd_below(&seed, room) * BLOCK;
        lib_pwrite(img, buf, (size_t)len, off);
        for (uint64_t s = off / 512; s < (off + len) / 512; s++)
            g_walk_bits[s / 64] |= UINT64_C(1) << (s % 64);
    }
    free(buf);
    lib_close(img);
    g_walk_expected = 2 * (uint64_t)C.walk_runs + 1;
    g_walk_ready = true;
    say("setup: %" PRIu64 " GiB image with %u runs in %.1f s\n", C.walk_size / GiB,
        C.walk_runs, secs_since(t0));
}

/* The plain scan: counts runs of equal bits, 64-bit words at a time. */
static uint64_t scan_runs(const uint64_t *w, uint64_t nwords)
{
    uint64_t runs = 1, cur = (w[0] & 1) ? ~UINT64_C(0) : 0;
    for (uint64_t i = 0; i < nwords; i++) {
        uint64_t x = w[i] ^ cur;
        while (x != 0) {
            int b = __builtin_ctzll(x);
            runs++;
            cur = ~cur;
            x = (w[i] ^ cur) & (~UINT64_C(0) << b);
        }
    }
    return runs;
}

struct walk_wl {
    addcow_image *img;          /* warm: one handle for every run */
    bool cold;                  /* open + first walk + close, each run */
    unsigned passes;            /* warm: walks per timed run */
    uint64_t lib_runs, raw_runs;
    bool lib_error;
};

/* One walk of the whole disk with addcow_block_status: its run count, or
 * 0 on failure. */
static uint64_t lib_walk(addcow_image *img)
{
    uint64_t runs = 0;
    for (uint64_t off = 0; off < C.walk_size; runs++) {
        uint64_t run = 0;
        int r = addcow_block_status(img, off, C.walk_size - off, &run);
        if (r < 0 || run == 0) {
            fprintf(stderr, "addcow-bench: addcow_block_status at %" PRIu64 ": %s\n", off,
                    r < 0 ? addcow_last_error() : "empty run");
            return 0;
        }
        off += run;
    }
    return runs;
}

static double walk_run(void *ctx, enum side side, int rep)
{
    struct walk_wl *w = ctx;
    (void)rep;
    uint64_t t0 = now_ns(), runs = 0;
    if (side == SIDE_LIB) {
        addcow_image *img = w->img;
        if (w->cold)
            img = lib_open("walk.add-cow", ADDCOW_OPEN_RDONLY);
        for (unsigned p = 0; p < (w->cold ? 1 : w->passes); p++)
            runs = lib_walk(img);
        if (w->cold)
            lib_close(img);
        w->lib_runs = runs;
        if (runs == 0) {
            w->lib_error = true;
            return NAN;
        }
    } else if (w->cold) {
        /* the naive one-shot way: read the whole bitmap from the add-cow
         * file into fresh memory, and scan it */
        uint64_t *bits = xmalloc(g_walk_words * 8);
        int fd = raw_open("walk.add-cow", O_RDONLY);
        raw_pread(fd, bits, g_walk_words * 8, 2068);
        close(fd);
        w->raw_runs = scan_runs(bits, g_walk_words);
        free(bits);
    } else {
        for (unsigned p = 0; p < w->passes; p++)
            w->raw_runs = scan_runs(g_walk_bits, g_walk_words);
    }
    return secs_since(t0);
}

static void walk_check(struct result *res, const struct walk_wl *w)
{
    if (w->lib_error || w->lib_runs != g_walk_expected || w->raw_runs != g_walk_expected) {
        char msg[160];
        snprintf(msg, sizeof(msg), "walk found %" PRIu64 " runs, scan %" PRIu64
                 ", expected %" PRIu64, w->lib_runs, w->raw_runs, g_walk_expected);
        fail_check(res, msg);
    }
}

static void case_walk(void)
{
    struct result *res = add_result("8", "block_status walk, 1 TiB, few k runs", "TiB/s");
    snprintf(res->what, sizeof(res->what), "block_status walk, %" PRIu64 " GiB, %u runs",
             C.walk_size / GiB, C.walk_runs);
    if (!g_walk_ready)
        setup_walk();
    char why[512];
    struct walk_wl w = { .passes = C.smoke ? 1 : 8 };
    uint64_t t0 = now_ns();
    w.img = lib_try_open("walk.add-cow", ADDCOW_OPEN_RDONLY, why, sizeof(why));
    double open_ms = secs_since(t0) * 1e3;
    if (w.img == NULL) {
        res->v = V_SKIP;
        set_note(res, "open failed: %s", why);
        show(res);
        return;
    }
    /* The first walk of a handle reads the bitmap: that is case 8o. */
    t0 = now_ns();
    w.lib_runs = lib_walk(w.img);
    double first_ms = secs_since(t0) * 1e3;
    double med[3];
    measure(walk_run, NULL, &w, 2, (double)w.passes * (double)C.walk_size / (double)TiB, med);
    lib_close(w.img);
    res->lib = med[SIDE_LIB];
    res->raw = med[SIDE_RAW];
    res->ratio = res->lib / res->raw;
    judge_ratio(res, 1.0);
    set_note(res, "runs %" PRIu64 "; warm handle (open %.1f ms, first walk %.0f ms)",
             w.lib_runs, open_ms, first_ms);
    walk_check(res, &w);
    show(res);

    /* 8o: what a one-shot tool pays: open + first walk + close, against
     * reading the whole bitmap from the (page-cached) add-cow file and
     * scanning it.  Informational: the target is the warm walk. */
    struct result *ro = add_result("8o", "open + first walk + close, same image", "TiB/s");
    struct walk_wl c = { .cold = true, .passes = 1 };
    int saved = C.reps;
    C.reps = C.reps < 3 ? C.reps : 3;     /* a second or so each */
    measure(walk_run, NULL, &c, 2, (double)C.walk_size / (double)TiB, med);
    set_note(ro, "medians of %d; raw: read the whole bitmap into new memory, scan",
             C.reps);
    C.reps = saved;
    ro->lib = med[SIDE_LIB];
    ro->raw = med[SIDE_RAW];
    ro->ratio = ro->lib / ro->raw;
    ro->plot = ro->ratio;
    snprintf(ro->target, sizeof(ro->target), "(info)");
    walk_check(ro, &c);
    show(ro);
}

/* ---- case 9: open + 4 KiB read + close of a huge image ----------------- */

static bool g_big_ready;
static char g_big_why[400];         /* why the libaddcow image could not be made */

static long vm_hwm_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmHWM: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

static void limit_as(void)
{
    struct rlimit rl = { .rlim_cur = C.as_limit, .rlim_max = C.as_limit };
    if (setrlimit(RLIMIT_AS, &rl) < 0)
        fprintf(stderr, "addcow-bench: setrlimit: %s\n", strerror(errno));
}

/* Runs this program again as `addcow-bench --child ARGS...`, capped to
 * C.as_limit of address space, its stdout into out.  An exec'd child
 * starts with its own small address space, so its peak RSS is its own.
 * Returns the child's exit status (-1: killed). */
static int spawn_self(char *const args[], char *out, size_t outlen)
{
    char *argv[12];
    int a = 0;
    argv[a++] = g_self;
    argv[a++] = "--child";
    for (int i = 0; args[i] != NULL && a < 11; i++)
        argv[a++] = args[i];
    argv[a] = NULL;
    int pfd[2];
    if (pipe(pfd) < 0)
        die("pipe: %s", strerror(errno));
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]);
        close(pfd[1]);
        limit_as();
        execv(g_self, argv);
        _exit(127);
    }
    close(pfd[1]);
    size_t got = 0;
    ssize_t n;
    while ((n = read(pfd[0], out + got, outlen - 1 - got)) > 0)
        got += (size_t)n;
    out[got] = '\0';
    out[strcspn(out, "\n")] = '\0';
    close(pfd[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            die("waitpid: %s", strerror(errno));
    if (WIFSIGNALED(st) && out[0] == '\0')
        snprintf(out, outlen, "err killed by signal %d", WTERMSIG(st));
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Makes big.add-cow (C.open_size bytes, C.open_written bytes written in
 * the middle) in a child capped to C.as_limit of address space, and
 * big.raw, a sparse raw file of the same size with the same bytes. */
static void setup_big(void)
{
    uint64_t mid = C.open_size / 2;
    char *buf = xmalloc(C.open_written);
    fill_random(buf, C.open_written, C.seed ^ 9);
    int fd = raw_fresh("big.raw", C.open_size);
    raw_pwrite(fd, buf, C.open_written, mid);
    raw_sync(fd);
    close(fd);
    free(buf);

    char size[32], off[32], len[32], seed[32], out[256];
    snprintf(size, sizeof(size), "%" PRIu64, C.open_size);
    snprintf(off, sizeof(off), "%" PRIu64, mid);
    snprintf(len, sizeof(len), "%" PRIu64, C.open_written);
    snprintf(seed, sizeof(seed), "%" PRIu64, C.seed ^ 9);
    char *args[] = { "make-big", size, off, len, seed, NULL };
    uint64_t t0 = now_ns();
    int st = spawn_self(args, out, sizeof(out));
    g_big_why[0] = '\0';
    if (st != 0)
        snprintf(g_big_why, sizeof(g_big_why), "%s (address space capped at %" PRIu64 " MiB)",
                 strncmp(out, "err ", 4) == 0 ? out + 4 : out[0] ? out : "child failed",
                 C.as_limit / MiB);
    g_big_ready = true;
    say("setup: %" PRIu64 " GiB image with %" PRIu64 " KiB written in %.1f s%s%s\n",
        C.open_size / GiB, C.open_written / KiB, secs_since(t0), st ? ": FAILED: " : "",
        g_big_why);
}

/* The children.  Each prints one line: "ok ..." or "err MESSAGE".
 *   open lib|raw FILE OFFSET BACKEND: open, read 4 KiB at OFFSET, close;
 *       prints "ok NANOSECONDS PEAK_RSS_KIB".
 *   make-big SIZE OFFSET LEN SEED: creates big.add-cow / big.img and
 *       writes LEN random bytes at OFFSET. */
static int child_main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[0], "open") == 0) {
        bool lib = strcmp(argv[1], "lib") == 0;
        const char *file = argv[2];
        uint64_t off = strtoull(argv[3], NULL, 10);
        char *buf = xmalloc(BLOCK);
        addcow_options *o = addcow_options_new();
        if (o == NULL || addcow_options_set(o, "backend", argv[4]) < 0) {
            printf("err %s\n", addcow_last_error());
            return 1;
        }
        uint64_t t0 = now_ns();
        if (lib) {
            addcow_image *img = NULL;
            if (addcow_open(file, ADDCOW_OPEN_RDONLY, o, &img) < 0 ||
                addcow_pread(img, buf, BLOCK, off) != BLOCK || addcow_close(img) < 0) {
                printf("err %s\n", addcow_last_error());
                return 1;
            }
        } else {
            int fd = open(file, O_RDONLY | O_CLOEXEC);
            if (fd < 0 || pread(fd, buf, BLOCK, (off_t)off) != BLOCK) {
                printf("err %s: %s\n", file, strerror(errno));
                return 1;
            }
            close(fd);
        }
        uint64_t ns = now_ns() - t0;
        printf("ok %" PRIu64 " %ld\n", ns, vm_hwm_kib());
        addcow_options_free(o);
        free(buf);
        return 0;
    }
    if (argc == 5 && strcmp(argv[0], "make-big") == 0) {
        uint64_t size = strtoull(argv[1], NULL, 10), off = strtoull(argv[2], NULL, 10);
        size_t len = (size_t)strtoull(argv[3], NULL, 10);
        char *buf = xmalloc(len);
        fill_random(buf, len, strtoull(argv[4], NULL, 10));
        addcow_image *img = NULL;
        const char *what = NULL;
        unlink("big.add-cow");
        unlink("big.img");
        if (addcow_create("big.add-cow", size, NULL, "big.img", setup_opts()) < 0)
            what = "create";
        else if (addcow_open("big.add-cow", ADDCOW_OPEN_RDWR, setup_opts(), &img) < 0)
            what = "open";
        else if (addcow_pwrite(img, buf, len, off) != (int64_t)len)
            what = "write";
        else if (addcow_close(img) < 0)
            what = "close";
        if (what != NULL) {
            printf("err %s: %s\n", what, addcow_last_error());
            return 1;
        }
        printf("ok\n");
        free(buf);
        return 0;
    }
    fprintf(stderr, "addcow-bench: bad --child arguments\n");
    return 2;
}

struct open_wl {
    double rss_kib[2][64];
    char err[512];
};

/* One open + read + close in an exec'd child: seconds, and its peak RSS. */
static double open_run(void *ctx, enum side side, int rep)
{
    struct open_wl *w = ctx;
    char off[32], out[256];
    snprintf(off, sizeof(off), "%" PRIu64, C.open_size / 2);
    char *args[] = { "open", side == SIDE_LIB ? "lib" : "raw",
                     side == SIDE_LIB ? "big.add-cow" : "big.raw", off, (char *)g_backend, NULL };
    int st = spawn_self(args, out, sizeof(out));
    uint64_t ns;
    long hwm;
    w->rss_kib[side][rep] = NAN;
    if (st != 0 || sscanf(out, "ok %" SCNu64 " %ld", &ns, &hwm) != 2) {
        if (w->err[0] == '\0')
            snprintf(w->err, sizeof(w->err), "%s: %s", side_name[side],
                     strncmp(out, "err ", 4) == 0 ? out + 4 : out[0] ? out : "child failed");
        return NAN;
    }
    w->rss_kib[side][rep] = (double)hwm;
    return (double)ns / 1e9;
}

/* Runs only the raw side (when the libaddcow image could not be made). */
static double open_run_raw_only(void *ctx, enum side side, int rep)
{
    return side == SIDE_RAW ? open_run(ctx, side, rep) : NAN;
}

static void case_open(void)
{
    struct result *rt = add_result("9t", "open+read 4K+close, 8 TiB, 1 MiB used", "ms");
    struct result *rm = add_result("9m", "peak RSS of the same", "MiB");
    snprintf(rt->what, sizeof(rt->what), "open+read 4K+close, %" PRIu64 " GiB, %" PRIu64
             " KiB used", C.open_size / GiB, C.open_written / KiB);
    if (!g_big_ready)
        setup_big();
    struct open_wl w;
    memset(&w, 0, sizeof(w));
    if (g_big_why[0] != '\0')
        snprintf(w.err, sizeof(w.err), "making the image failed: %s", g_big_why);
    double med[3];
    /* work 1: the medians are opens per second */
    measure(g_big_why[0] ? open_run_raw_only : open_run, NULL, &w, 2, 1.0, med);
    int reps = C.reps > 64 ? 64 : C.reps;
    rt->lib = 1e3 / med[SIDE_LIB];          /* ms per open */
    rt->raw = 1e3 / med[SIDE_RAW];
    rt->ratio = rt->raw / rt->lib;
    rm->lib = median(w.rss_kib[SIDE_LIB], reps) / 1024.0;
    rm->raw = median(w.rss_kib[SIDE_RAW], reps) / 1024.0;
    rm->ratio = rm->raw / rm->lib;
    snprintf(rt->target, sizeof(rt->target), "lib < 5 ms");
    snprintf(rm->target, sizeof(rm->target), "lib < 32 MiB");
    rt->plot = 5.0 / rt->lib;
    rm->plot = 32.0 / rm->lib;
    rt->plot_target = rm->plot_target = 1.0;
    if (isnan(rt->lib)) {
        rt->v = rm->v = V_SKIP;
        set_note(rt, "%s", w.err[0] ? w.err : "no run succeeded");
        set_note(rm, "as 9t");
    } else {
        rt->v = rt->lib < 5.0 ? V_PASS : V_MISS;
        rm->v = rm->lib < 32.0 ? V_PASS : V_MISS;
        set_note(rm, "VmHWM of the child; raw column = the program's own baseline");
    }
    show(rt);
    show(rm);
}

/* ---- peer cases ------------------------------------------------------- */

static bool g_peer_ready;
static bool g_peer_ok;

static void setup_peer(void)
{
    g_peer_ready = true;
    g_peer_ok = false;
    /* q-full: every block written; q-alt: every other 4 KiB block; q-w:
     * the write cases' fresh overlay (q-w.tmpl), its data file written
     * whole, as w.img is. */
    if (!qemu_create("q-full") || !qemu_create("q-alt") || !qemu_create(Q_W))
        return;
    copy_file(Q_W ".qcow2", Q_W ".tmpl");
    make_raw(Q_W ".data", NULL, 7);
    if (isnan(qemu_bench("q-full", true, (size_t)(C.size / SEQ_LEN), SEQ_LEN, SEQ_LEN, 0,
                         NULL)) ||
        isnan(qemu_bench("q-alt", true, (size_t)(C.size / (2 * BLOCK)), BLOCK, 2 * BLOCK, 0,
                         NULL)))
        return;
    static const char *const files[] = { "q-full.qcow2", "q-full.data", "q-alt.qcow2",
                                         "q-alt.data", Q_W ".tmpl", Q_W ".data" };
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        sync_file(files[i]);
        warm(files[i]);
    }
    g_peer_ok = true;
}

static void peer_judge(struct result *res)
{
    snprintf(res->target, sizeof(res->target), "lib > qemu-img");
    res->plot = res->ratio;
    res->plot_peer = res->peer_ratio;
    if (res->v == V_FAIL || res->v == V_SKIP)
        return;
    if (isnan(res->lib) || isnan(res->peer))
        res->v = V_SKIP;
    else
        res->v = res->lib > res->peer ? V_PASS : V_MISS;
}

static void case_peer(void)
{
    if (!g_peer_ready)
        setup_peer();
    if (!g_peer_ok) {
        struct result *r = add_result("P", "qemu-img peer cases", "-");
        r->v = V_SKIP;
        set_note(r, "%s", g_qemu_img[0] ? "qemu-img failed to set up its images (see above)"
                 : "qemu-img not found (apt-get install qemu-utils)");
        show(r);
        return;
    }
    /* Our side uses exactly the offsets `qemu-img bench` visits. */
    uint64_t nb = C.size / BLOCK;
    uint64_t stepb = (uint64_t)((double)nb * 0.618) | 1;   /* odd: visits every block */
    while (stepb * BLOCK > INT32_MAX)
        stepb = (stepb / 2) | 1;
    uint64_t step = stepb * BLOCK;
    struct {
        const char *id, *what;
        bool write, bytes;
        size_t n, len, flush_every;
        uint64_t step;
        const char *lib, *raw, *peer;
    } pc[] = {
        { "P1", "peer: seq read 1 MiB, full image", false, true,
          C.seq_passes * (size_t)(C.size / SEQ_LEN), SEQ_LEN, 0, SEQ_LEN,
          "full.add-cow", "raw-full.raw", "q-full" },
        { "P2", "peer: seq write 1 MiB, fresh, flush", true, true,
          (size_t)(C.size / SEQ_LEN), SEQ_LEN, 0, SEQ_LEN, NULL, NULL, NULL },
        { "P3", "peer: stride read 4 KiB, alternating", false, false,
          C.peer_reads, BLOCK, 0, step, "alt.add-cow", "raw-alt.raw", "q-alt" },
        { "P4", "peer: stride write 4 KiB, flush at end", true, false,
          C.peer_writes, BLOCK, 0, step, NULL, NULL, NULL },
        { "P5", "peer: stride write 4 KiB, flush every 64", true, false,
          C.flush_writes, BLOCK, 64, step, NULL, NULL, NULL },
    };
    for (size_t i = 0; i < sizeof(pc) / sizeof(pc[0]); i++) {
        if (!case_on(pc[i].id) && !case_on("P"))
            continue;
        uint64_t *o = offs_stride(pc[i].n, pc[i].step);
        struct result *res = add_result(pc[i].id, pc[i].what, pc[i].bytes ? "MiB/s" : "IOPS");
        struct io_wl w = { .id = pc[i].id, .lib_name = pc[i].lib, .raw_name = pc[i].raw,
                           .peer_name = pc[i].peer, .offs = o, .n = pc[i].n, .len = pc[i].len,
                           .write = pc[i].write, .flush_every = pc[i].flush_every,
                           .final_flush = pc[i].write, .peer_step = pc[i].step };
        run_io(&w, res, pc[i].bytes, true);
        peer_judge(res);
        show(res);
        free(o);
    }
}

/* ---- output ----------------------------------------------------------- */

static void fmt_val(char *out, size_t len, double v)
{
    if (isnan(v))
        snprintf(out, len, "-");
    else if (v >= 1000)
        snprintf(out, len, "%.0f", v);
    else if (v >= 10)
        snprintf(out, len, "%.1f", v);
    else
        snprintf(out, len, "%.3f", v);
}

static void print_header_row(FILE *f)
{
    fprintf(f, "%-4s %-44s %-9s %-6s %10s %10s %6s %10s %6s  %-15s %s\n", "case", "what",
            "backend", "unit", "libaddcow", "raw", "ratio", "qemu-img", "q/raw", "target",
            "result");
}

static void print_row(FILE *f, const struct result *r)
{
    char a[32], b[32], c[32], d[32], e[32];
    fmt_val(a, sizeof(a), r->lib);
    fmt_val(b, sizeof(b), r->raw);
    fmt_val(c, sizeof(c), r->ratio);
    fmt_val(d, sizeof(d), r->peer);
    fmt_val(e, sizeof(e), r->peer_ratio);
    fprintf(f, "%-4s %-44.44s %-9s %-6s %10s %10s %6s %10s %6s  %-15s %s%s%s\n", r->id, r->what,
            r->backend, r->unit, a, b, c, d, e, r->target, verdict_name[r->v],
            r->note[0] ? "  " : "", r->note);
}

static uint64_t g_case_t0;

static void show(const struct result *r)
{
    print_row(stdout, r);
    if (C.verbose)
        say("    (case %s took %.1f s)\n", r->id, secs_since(g_case_t0));
    fflush(stdout);
    g_case_t0 = now_ns();
}

static void csv_field(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void csv_num(FILE *f, double v)
{
    if (!isnan(v))
        fprintf(f, "%.6g", v);
}

static void write_csv(const char *path)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        die("cannot write '%s': %s", path, strerror(errno));
    fprintf(f, "case,what,backend,unit,lib,raw,ratio,qemu_img,qemu_ratio,floor,lib_floor,"
            "target,result,note,reps\n");
    for (int i = 0; i < nresults; i++) {
        const struct result *r = &results[i];
        csv_field(f, r->id);
        fputc(',', f);
        csv_field(f, r->what);
        fputc(',', f);
        csv_field(f, r->backend);
        fputc(',', f);
        csv_field(f, r->unit);
        fputc(',', f);
        csv_num(f, r->lib);
        fputc(',', f);
        csv_num(f, r->raw);
        fputc(',', f);
        csv_num(f, r->ratio);
        fputc(',', f);
        csv_num(f, r->peer);
        fputc(',', f);
        csv_num(f, r->peer_ratio);
        fputc(',', f);
        csv_num(f, r->floor);
        fputc(',', f);
        csv_num(f, r->lib_floor);
        fputc(',', f);
        csv_field(f, r->target);
        fputc(',', f);
        csv_field(f, verdict_name[r->v]);
        fputc(',', f);
        csv_field(f, r->note);
        fprintf(f, ",%d\n", C.reps);
    }
    if (fclose(f) != 0)
        die("writing '%s': %s", path, strerror(errno));
}

static void xml_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

/* A bar chart of the ratios (libaddcow / raw; for case 9 target /
 * measured, so that 1 is the target there too), one bar per case and
 * backend, with the target of each case as a red tick and qemu-img's ratio
 * as a grey bar beside the peer cases. */
static void write_svg(const char *path, const char *subtitle)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        die("cannot write '%s': %s", path, strerror(errno));
    int n = 0;
    double ymax = 1.2;
    for (int i = 0; i < nresults; i++) {
        const struct result *r = &results[i];
        n++;
        if (!isnan(r->plot) && r->plot > ymax)
            ymax = r->plot;
        if (!isnan(r->plot_peer) && r->plot_peer > ymax)
            ymax = r->plot_peer;
    }
    if (ymax > 3.0)
        ymax = 3.0;             /* taller bars are cut, their value written on them */
    const int slot = 46, left = 60, top = 70, plot_h = 300, bottom = 170;
    int width = left + (n > 0 ? n : 1) * slot + 20, height = top + plot_h + bottom;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
            "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"11\">\n",
            width, height, width, height);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"%d\" y=\"22\" font-size=\"15\" font-weight=\"bold\">libaddcow "
            "benchmarks: libaddcow / raw file (higher is better)</text>\n", left);
    fprintf(f, "<text x=\"%d\" y=\"40\" fill=\"#555\">", left);
    xml_text(f, subtitle);
    fprintf(f, "</text>\n");
#define Y(v) (top + plot_h - (int)((v) / ymax * plot_h + 0.5))
    for (double g = 0; g <= ymax + 1e-9; g += ymax > 2 ? 0.5 : 0.25) {
        fprintf(f, "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" stroke=\"%s\"/>\n", left,
                width - 10, Y(g), Y(g), g == 1.0 ? "#888" : "#e5e5e5");
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%.2f</text>\n", left - 6,
                Y(g) + 4, g);
    }
    for (int i = 0; i < nresults; i++) {
        const struct result *r = &results[i];
        int x = left + i * slot + 6;
        int bw = isnan(r->plot_peer) ? slot - 12 : (slot - 12) / 2;
        if (i == 0 || strcmp(r->backend, results[i - 1].backend) != 0) {
            /* a new backend: a separator and its name */
            if (i > 0)
                fprintf(f, "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" "
                        "stroke=\"#999\" stroke-dasharray=\"2,3\"/>\n", x - 6, x - 6,
                        top - 12, top + plot_h);
            fprintf(f, "<text x=\"%d\" y=\"%d\" font-weight=\"bold\" fill=\"#333\">",
                    x - 2, top - 16);
            xml_text(f, r->backend);
            fprintf(f, "</text>\n");
        }
        const char *color = r->v == V_PASS ? "#2e7d32" : r->v == V_MISS ? "#c62828"
                            : r->v == V_FAIL ? "#000" : "#1565c0";
        if (!isnan(r->plot)) {
            double v = r->plot > ymax ? ymax : r->plot;
            fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\">"
                    "<title>", x, Y(v), bw, Y(0) - Y(v), color);
            xml_text(f, r->id);
            fprintf(f, " %s: %.3f</title></rect>\n", r->backend, r->plot);
            fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"9\">%.2f"
                    "</text>\n", x + bw / 2, Y(v) - 3, r->plot);
        } else {
            fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" fill=\"#777\">%s"
                    "</text>\n", x + bw / 2, Y(0) - 4, verdict_name[r->v]);
        }
        if (!isnan(r->plot_peer)) {
            double v = r->plot_peer > ymax ? ymax : r->plot_peer;
            fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#9e9e9e\">"
                    "<title>qemu-img: %.3f</title></rect>\n", x + bw, Y(v), bw, Y(0) - Y(v),
                    r->plot_peer);
            fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"9\" "
                    "fill=\"#555\">%.2f</text>\n", x + bw + bw / 2, Y(v) - 3, r->plot_peer);
        }
        if (!isnan(r->plot_target) && r->plot_target <= ymax)
            fprintf(f, "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" stroke=\"#d50000\" "
                    "stroke-width=\"2\" stroke-dasharray=\"4,2\"/>\n", x - 4, x + slot - 8,
                    Y(r->plot_target), Y(r->plot_target));
        int lx = x + (slot - 12) / 2, ly = Y(0) + 12;
        fprintf(f, "<text x=\"%d\" y=\"%d\" transform=\"rotate(-55 %d %d)\" "
                "text-anchor=\"end\">", lx, ly, lx, ly);
        xml_text(f, r->id);
        fputc(' ', f);
        xml_text(f, r->backend);
        fprintf(f, " %s</text>\n", verdict_name[r->v]);
    }
    fprintf(f, "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", left,
            width - 10, Y(0), Y(0));
#undef Y
    int ly = height - 30;
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"10\" fill=\"#2e7d32\"/>"
            "<text x=\"%d\" y=\"%d\">PASS</text>\n", left, ly, left + 14, ly + 9);
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"10\" fill=\"#c62828\"/>"
            "<text x=\"%d\" y=\"%d\">MISS</text>\n", left + 60, ly, left + 74, ly + 9);
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"10\" fill=\"#9e9e9e\"/>"
            "<text x=\"%d\" y=\"%d\">qemu-img / raw</text>\n", left + 120, ly, left + 134,
            ly + 9);
    fprintf(f, "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" stroke=\"#d50000\" "
            "stroke-width=\"2\" stroke-dasharray=\"4,2\"/><text x=\"%d\" y=\"%d\">target"
            "</text>\n", left + 240, left + 260, ly + 5, ly + 5, left + 264, ly + 9);
    fprintf(f, "<text x=\"%d\" y=\"%d\" fill=\"#555\">case 9: target / measured (time, "
            "peak RSS); 7x: io_uring / posix; bars above %.1f are cut</text>\n", left,
            ly + 24, ymax);
    fprintf(f, "</svg>\n");
    if (fclose(f) != 0)
        die("writing '%s': %s", path, strerror(errno));
}

/* ---- machine description ---------------------------------------------- */

static const char *fs_name(long type)
{
    switch ((unsigned long)type) {
    case 0xEF53: return "ext4";
    case 0x58465342: return "xfs";
    case 0x9123683E: return "btrfs";
    case 0x01021994: return "tmpfs";
    case 0x794C7630: return "overlayfs";
    case 0x2FC12FC1: return "zfs";
    case 0xF2F52010: return "f2fs";
    default: return "other";
    }
}

/* The 1-minute load average: other work on the machine makes noise. */
static double loadavg(void)
{
    double l = NAN;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f != NULL) {
        if (fscanf(f, "%lf", &l) != 1)
            l = NAN;
        fclose(f);
    }
    return l;
}

static double g_load_start;

static void describe_machine(char *sub, size_t sublen)
{
    char cpu[128] = "unknown";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f != NULL) {
        char line[256];
        while (fgets(line, sizeof(line), f)) {
            char *p = strchr(line, ':');
            if (strncmp(line, "model name", 10) == 0 && p != NULL) {
                p++;
                p += strspn(p, " \t");
                p[strcspn(p, "\n")] = '\0';
                snprintf(cpu, sizeof(cpu), "%s", p);
                break;
            }
        }
        fclose(f);
    }
    struct utsname u;
    uname(&u);
    struct statfs sf;
    const char *fs = statfs(g_dir, &sf) == 0 ? fs_name(sf.f_type) : "?";
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    g_load_start = loadavg();
    say("machine: %ld CPUs (%s), Linux %s, files in %s (%s), load average %.2f\n", ncpu, cpu,
        u.release, g_dir, fs, g_load_start);
    say("libaddcow %s; image %" PRIu64 " MiB; %d repetitions; seed %" PRIu64 "%s\n",
        addcow_version(), C.size / MiB, C.reps, C.seed, C.smoke ? "; SMOKE sizes" : "");
    snprintf(sub, sublen, "%ld CPUs (%s), Linux %s, %s; image %" PRIu64 " MiB, median of %d",
             ncpu, cpu, u.release, fs, C.size / MiB, C.reps);
}

/* ---- main ------------------------------------------------------------- */

/* Whether the current backend works at all: create, open, write, flush,
 * read back and close a small image.  false, and why, if not. */
static bool probe_backend(char *why, size_t len)
{
    addcow_image *img = NULL;
    char buf[BLOCK], back[BLOCK];
    const char *what = NULL;
    fill_random(buf, sizeof(buf), 5);
    unlink("probe.add-cow");
    unlink("probe.img");
    if (addcow_create("probe.add-cow", MiB, NULL, "probe.img", g_opts) < 0)
        what = "addcow_create";
    else if (addcow_open("probe.add-cow", ADDCOW_OPEN_RDWR, g_opts, &img) < 0)
        what = "addcow_open";
    else if (addcow_pwrite(img, buf, BLOCK, 8192) != BLOCK)
        what = "addcow_pwrite";
    else if (addcow_flush(img) < 0)
        what = "addcow_flush";
    else if (addcow_pread(img, back, BLOCK, 8192) != BLOCK)
        what = "addcow_pread";
    if (what != NULL) {
        snprintf(why, len, "%s failed: %s", what, addcow_last_error());
        addcow_close(img);
        return false;
    }
    if (addcow_close(img) < 0) {
        snprintf(why, len, "addcow_close failed: %s", addcow_last_error());
        return false;
    }
    if (memcmp(buf, back, BLOCK) != 0) {
        snprintf(why, len, "reads back wrong data");
        g_failed = true;
        return false;
    }
    unlink("probe.add-cow");
    unlink("probe.img");
    return true;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void cleanup_dir(void)
{
    if (!g_dir_made || C.keep)
        return;
    if (chdir("/") == 0)
        nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    g_dir_made = false;
}

static void usage(FILE *f)
{
    fprintf(f,
"usage: addcow-bench [options]\n"
"  --smoke             tiny sizes, one repetition (a few seconds; part of make check)\n"
"  --dir DIR           make the work folder inside DIR (default /var/tmp); removed at exit\n"
"  --keep              keep the work folder\n"
"  --backends LIST     backends to run, comma-separated (default posix,io_uring)\n"
"  --cases LIST        only these cases: 1..10, P (all peer cases) or P1..P5\n"
"  --reps N            repetitions per case (default 7)\n"
"  --size MIB          image size of the throughput cases (default 256)\n"
"  --as-limit MIB      address-space cap of the case 9 children (default 3072)\n"
"  --qemu-img PATH     qemu-img to compare with (default: from PATH)\n"
"  --no-peer           skip the qemu-img cases\n"
"  --csv FILE          write the results as CSV\n"
"  --svg FILE          write a bar chart of the ratios as SVG\n"
"  --seed N            seed of the offsets and contents (default 1)\n"
"  --strict            exit 1 when a target is missed (else only wrong data fails)\n"
"  --verbose, -v       print every repetition's value\n");
}

static uint64_t parse_u64(const char *opt, const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end || end == s)
        die("%s: bad number '%s'", opt, s);
    return v;
}

/* argv[*i] is `name`: its value (the next argument, which is consumed). */
static const char *opt_value(int argc, char **argv, int *i, const char *name)
{
    if (strcmp(argv[*i], name) != 0)
        return NULL;
    if (*i + 1 >= argc)
        die("%s needs a value", name);
    return argv[++*i];
}

static void parse_args(int argc, char **argv)
{
    C.size = 256 * MiB;
    C.reps = 7;
    C.backends = "posix,io_uring";
    C.parent_dir = "/var/tmp";
    C.seed = 1;
    C.as_limit = 3072 * MiB;
    uint64_t size_mib = 0;
    int reps = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (strcmp(a, "--smoke") == 0) {
            C.smoke = true;
        } else if (strcmp(a, "--keep") == 0) {
            C.keep = true;
        } else if (strcmp(a, "--no-peer") == 0) {
            C.no_peer = true;
        } else if (strcmp(a, "--strict") == 0) {
            C.strict = true;
        } else if (strcmp(a, "--verbose") == 0 || strcmp(a, "-v") == 0) {
            C.verbose = true;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if ((v = opt_value(argc, argv, &i, "--dir")) != NULL) {
            C.parent_dir = v;
        } else if ((v = opt_value(argc, argv, &i, "--backends")) != NULL) {
            C.backends = v;
        } else if ((v = opt_value(argc, argv, &i, "--cases")) != NULL) {
            C.cases = v;
        } else if ((v = opt_value(argc, argv, &i, "--reps")) != NULL) {
            reps = (int)parse_u64(a, v);
        } else if ((v = opt_value(argc, argv, &i, "--size")) != NULL) {
            size_mib = parse_u64(a, v);
        } else if ((v = opt_value(argc, argv, &i, "--as-limit")) != NULL) {
            C.as_limit = parse_u64(a, v) * MiB;
        } else if ((v = opt_value(argc, argv, &i, "--qemu-img")) != NULL) {
            C.qemu_img = v;
        } else if ((v = opt_value(argc, argv, &i, "--csv")) != NULL) {
            C.csv = v;
        } else if ((v = opt_value(argc, argv, &i, "--svg")) != NULL) {
            C.svg = v;
        } else if ((v = opt_value(argc, argv, &i, "--seed")) != NULL) {
            C.seed = parse_u64(a, v);
        } else {
            usage(stderr);
            die("unknown option '%s'", a);
        }
    }
    if (C.smoke) {
        C.size = 8 * MiB;
        C.reps = 1;
        C.seq_passes = 1;
        C.alt_passes = 1;
        C.rand_reads = 2000;
        C.rand_writes = 1024;
        C.flush_writes = 256;
        C.small_writes = 1000;
        C.thread_ops = 1000;
        C.peer_reads = 2000;
        C.peer_writes = 1024;
        C.walk_size = 4 * GiB;
        C.walk_runs = 50;
        C.open_size = 64 * GiB;
        C.open_written = 64 * KiB;
    } else {
        C.seq_passes = 16;
        C.alt_passes = 4;
        C.rand_reads = 200000;
        C.rand_writes = 16384;
        C.flush_writes = 4096;
        C.small_writes = 32768;
        C.thread_ops = 50000;
        C.peer_reads = 32768;
        C.peer_writes = 8192;
        C.walk_size = TiB;
        C.walk_runs = 4000;
        C.open_size = 8 * TiB;
        C.open_written = MiB;
    }
    if (size_mib)
        C.size = size_mib * MiB;
    if (reps)
        C.reps = reps;
    if (C.size < 4 * MiB || C.size % MiB)
        die("--size must be a whole number of MiB, at least 4");
    if (C.reps < 1 || C.reps > 64)
        die("--reps must be 1..64");
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "--child") == 0)
        return child_main(argc - 2, argv + 2);
    parse_args(argc, argv);
    if (getcwd(g_start_dir, sizeof(g_start_dir)) == NULL)
        die("getcwd: %s", strerror(errno));

    ssize_t n = readlink("/proc/self/exe", g_self, sizeof(g_self) - 1);
    if (n <= 0)
        die("readlink /proc/self/exe: %s", strerror(errno));
    g_self[n] = '\0';

    snprintf(g_dir, sizeof(g_dir), "%s/addcow-bench.XXXXXX", C.parent_dir);
    if (mkdtemp(g_dir) == NULL)
        die("cannot make a folder in '%s': %s", C.parent_dir, strerror(errno));
    g_dir_made = true;
    atexit(cleanup_dir);
    if (chdir(g_dir) < 0)
        die("chdir '%s': %s", g_dir, strerror(errno));

    char subtitle[400];
    describe_machine(subtitle, sizeof(subtitle));
    find_qemu_img();
    if (!C.no_peer)
        say("peer: %s\n", g_qemu_img[0] ? g_qemu_img : "qemu-img not found: peer cases skipped");

    bool need_shared = false;
    static const char *const io_cases[] = { "1", "2", "3", "4", "5", "6", "7", "10",
                                            "P", "P1", "P2", "P3", "P4", "P5" };
    for (size_t i = 0; i < sizeof(io_cases) / sizeof(io_cases[0]); i++)
        need_shared |= case_on(io_cases[i]);
    if (need_shared)
        setup_shared();

    uint64_t t_start = now_ns();
    char *list = strdup(C.backends), *save = NULL;
    if (list == NULL)
        die("out of memory");
    for (char *b = strtok_r(list, ",", &save); b != NULL; b = strtok_r(NULL, ",", &save)) {
        g_backend = b;
        g_opts = addcow_options_new();
        if (g_opts == NULL)
            die("addcow_options_new failed");
        say("\n== backend %s ==\n", b);
        if (addcow_options_set(g_opts, "backend", b) < 0) {
            struct result *r = add_result("all", "every case", "-");
            r->v = V_SKIP;
            set_note(r, "%s", addcow_last_error());
            say("backend %s skipped: %s\n", b, addcow_last_error());
            addcow_options_free(g_opts);
            continue;
        }
        char why[600];
        if (!probe_backend(why, sizeof(why))) {
            struct result *r = add_result("all", "every case", "-");
            r->v = V_SKIP;
            set_note(r, "%s", why);
            say("backend %s skipped: %s\n", b, why);
            addcow_options_free(g_opts);
            continue;
        }
        print_header_row(stdout);
        g_case_t0 = now_ns();
        if (case_on("1")) case_seq_read();
        if (case_on("2")) case_seq_write();
        if (case_on("3")) case_rand_read();
        if (case_on("4")) case_rand_write("4", C.rand_writes, 0, 0.95);
        if (case_on("5")) case_rand_write("5", C.flush_writes, 64, 0.80);
        if (case_on("6")) case_small_write();
        if (case_on("7")) case_batched_read();
        if (case_on("8")) case_walk();
        if (case_on("9")) case_open();
        if (case_on("10")) case_threads();
        bool any_peer = case_on("P");
        for (int k = 1; k <= 5; k++) {
            char id[4];
            snprintf(id, sizeof(id), "P%d", k);
            any_peer |= case_on(id);
        }
        if (any_peer && !C.no_peer)
            case_peer();
        addcow_options_free(g_opts);
        g_opts = NULL;
    }
    g_backend = NULL;

    /* 7x: the batching case across backends. */
    if (case_on("7")) {
        const struct result *posix = NULL, *uring = NULL;
        for (int i = 0; i < nresults; i++) {
            if (strcmp(results[i].id, "7") != 0 || isnan(results[i].lib))
                continue;
            if (strcmp(results[i].backend, "posix") == 0)
                posix = &results[i];
            if (strcmp(results[i].backend, "io_uring") == 0)
                uring = &results[i];
        }
        struct result *r = add_result("7x", "case 7: io_uring vs posix (raw col = posix)",
                                      "MiB/s");
        snprintf(r->backend, sizeof(r->backend), "both");
        snprintf(r->target, sizeof(r->target), "io_uring > posix");
        r->plot_target = 1.0;
        if (posix != NULL && uring != NULL) {
            r->lib = uring->lib;
            r->raw = posix->lib;
            r->ratio = r->lib / r->raw;
            r->plot = r->ratio;
            r->v = r->ratio > 1.0 ? V_PASS : V_MISS;
        } else {
            r->v = V_SKIP;
            set_note(r, "needs case 7 on both backends");
        }
    }
    free(list);

    say("\n== results (medians of %d; ratio = libaddcow / raw, higher is better) ==\n",
        C.reps);
    print_header_row(stdout);
    int pass = 0, miss = 0, skip = 0, fail = 0;
    for (int i = 0; i < nresults; i++) {
        print_row(stdout, &results[i]);
        pass += results[i].v == V_PASS;
        miss += results[i].v == V_MISS;
        skip += results[i].v == V_SKIP;
        fail += results[i].v == V_FAIL;
    }
    say("\ntargets: %d PASS, %d MISS, %d SKIP, %d FAIL (wrong data); %.0f s; load average "
        "%.2f at the start, %.2f at the end\n", pass, miss, skip, fail, secs_since(t_start),
        g_load_start, loadavg());
    if (C.csv != NULL || C.svg != NULL) {
        /* The output names are relative to where we were started. */
        if (chdir(g_start_dir) < 0)
            die("chdir back: %s", strerror(errno));
    }
    if (C.csv != NULL) {
        write_csv(C.csv);
        say("csv: %s\n", C.csv);
    }
    if (C.svg != NULL) {
        write_svg(C.svg, subtitle);
        say("svg: %s\n", C.svg);
    }
    free(g_half_map);
    free(g_alt_map);
    free(g_walk_bits);
    if (g_failed)
        return 1;
    return C.strict && miss > 0 ? 1 : 0;
}
