/*
 * testutil.c: helpers shared by the tests.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"
#include "backend.h"
#include "options.h"

static char scratch[4096];

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st; (void)flag; (void)ftw;
    return remove(p);
}

static void rm_scratch(void)
{
    if (scratch[0] != '\0' && getenv("AC_KEEP_SCRATCH") == NULL)
        nftw(scratch, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

const char *tu_scratch(void)
{
    if (scratch[0] == '\0') {
        const char *t = getenv("TMPDIR");
        snprintf(scratch, sizeof(scratch), "%s/addcow-test-XXXXXX", t && *t ? t : "/tmp");
        if (mkdtemp(scratch) == NULL) {
            perror("mkdtemp");
            abort();
        }
        atexit(rm_scratch);
    }
    return scratch;
}

char *tu_path(const char *name)
{
    char *p;
    if (asprintf(&p, "%s/%s", tu_scratch(), name) < 0)
        abort();
    return p;
}

int tu_write_file(const char *path, const void *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        p += n;
        len -= (size_t)n;
    }
    return close(fd) < 0 ? -errno : 0;
}

unsigned char *tu_read_file(const char *path, size_t *len)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    if (fstat(fd, &st) < 0) {
        close(fd);
        return NULL;
    }
    unsigned char *buf = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (buf != NULL && got < (size_t)st.st_size) {
        ssize_t n = pread(fd, buf + got, (size_t)st.st_size - got, (off_t)got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    if (buf != NULL)
        buf[got] = '\0';       /* text files can be used as C strings */
    if (len != NULL)
        *len = got;
    return buf;
}

int64_t tu_file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) < 0 ? -errno : (int64_t)st.st_size;
}

void tu_fill_pattern(void *buf, size_t len, uint32_t seed, uint64_t off)
{
    unsigned char *p = buf;
    for (size_t i = 0; i < len; i++)
        p[i] = tu_pattern(seed, off + i);
}

uint64_t tu_seed(const char *test_name)
{
    const char *e = getenv("AC_SEED");
    uint64_t s;
    if (e != NULL && *e != '\0') {
        s = strtoull(e, NULL, 0);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        s = (uint64_t)ts.tv_sec * 1000000007u ^ (uint64_t)ts.tv_nsec ^ (uint64_t)getpid();
    }
    if (s == 0)
        s = 1;
    printf("# %s: seed %" PRIu64 " (replay with AC_SEED=%" PRIu64 ")\n", test_name, s, s);
    fflush(stdout);
    return s;
}

uint64_t tu_rand(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * UINT64_C(0x2545F4914F6CDD1D);
}

unsigned tu_scale(unsigned base)
{
    const char *e = getenv("AC_TEST_SCALE");
    double f = e ? strtod(e, NULL) : 1.0;
    if (f <= 0)
        f = 1.0;
    unsigned n = (unsigned)(base * f);
    return n ? n : 1;
}

/* Aborts the test program: for failures of the environment or misuse of a
 * helper, which no test expects. */
static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fputs("testutil: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

/* ---- strings that live until the end of the program ---------------------- */

static char **pool;
static size_t pool_len, pool_cap;

char *tu_str(const char *fmt, ...)
{
    va_list ap;
    char *s;
    va_start(ap, fmt);
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0)
        die("tu_str: out of memory");
    if (pool_len == pool_cap) {
        pool_cap = pool_cap ? 2 * pool_cap : 64;
        pool = realloc(pool, pool_cap * sizeof(*pool));
        if (pool == NULL)
            die("tu_str: out of memory");
    }
    pool[pool_len++] = s;
    return s;
}

int tu_free_strings(void **state)
{
    (void)state;
    for (size_t i = 0; i < pool_len; i++)
        free(pool[i]);
    free(pool);
    pool = NULL;
    pool_len = pool_cap = 0;
    return 0;
}

const char *tu_subdir(const char *name)
{
    const char *d = tu_str("%s/%s", tu_scratch(), name);
    if (mkdir(d, 0755) != 0)
        die("mkdir %s: %s", d, strerror(errno));
    return d;
}

void tu_make_raw(const char *path, size_t len, uint32_t seed)
{
    unsigned char *buf = malloc(len ? len : 1);
    if (buf == NULL)
        die("tu_make_raw(%s): out of memory", path);
    tu_fill_pattern(buf, len, seed, 0);
    int r = tu_write_file(path, buf, len);
    free(buf);
    if (r != 0)
        die("tu_make_raw: writing %s: %s", path, strerror(-r));
}

/* ---- the add-cow format, byte by byte ------------------------------------- */

void tu_put_be(unsigned char *p, uint64_t v, unsigned n)
{
    for (unsigned i = n; i-- > 0;) {
        p[i] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

uint64_t tu_get_be(const unsigned char *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

uint64_t tu_bitmap_len(uint64_t size)
{
    uint64_t sectors = size / 512;
    return sectors / 8 + (sectors % 8 != 0);
}

void tu_build_header(unsigned char h[TU_HDR_SIZE], uint64_t magic, uint32_t version,
                     const char *backing, const char *image, uint64_t size)
{
    memset(h, 0, TU_HDR_SIZE);
    tu_put_be(h, magic, 8);
    tu_put_be(h + TU_OFF_VERSION, version, 4);
    if (backing != NULL) {
        if (strlen(backing) >= TU_PATH_FIELD)
            die("tu_build_header: backing path of %zu bytes", strlen(backing));
        memcpy(h + TU_OFF_BACKING, backing, strlen(backing));
    }
    if (strlen(image) >= TU_PATH_FIELD)
        die("tu_build_header: image path of %zu bytes", strlen(image));
    memcpy(h + TU_OFF_IMAGE, image, strlen(image));
    tu_put_be(h + TU_OFF_SIZE, size, 8);
}

void tu_write_addcow(const char *path, const unsigned char *h, size_t hlen, uint64_t blen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        die("tu_write_addcow: open %s: %s", path, strerror(errno));
    if (hlen > 0 && pwrite(fd, h, hlen, 0) != (ssize_t)hlen)
        die("tu_write_addcow: writing %s: %s", path, strerror(errno));
    if (blen > 0 && ftruncate(fd, (off_t)(hlen + blen)) != 0)
        die("tu_write_addcow: extending %s: %s", path, strerror(errno));
    if (close(fd) != 0)
        die("tu_write_addcow: closing %s: %s", path, strerror(errno));
}

void tu_make_addcow(const char *path, const char *backing, const char *image,
                    uint64_t size)
{
    unsigned char h[TU_HDR_SIZE];
    tu_build_header(h, TU_MAGIC, 1, backing, image, size);
    tu_write_addcow(path, h, TU_HDR_SIZE, tu_bitmap_len(size));
}

/* ---- which backend "auto" means in a test program ------------------------
 * AC_TEST_BACKEND=posix (the default) or io_uring makes backend=auto, the
 * default of every addcow_options, mean that backend for the whole program;
 * "auto" leaves the library's own choice.  io_uring asked for and not
 * there (not built, or refused by the kernel): the program is skipped. */
__attribute__((constructor)) static void tu_pick_backend(void)
{
    const char *b = getenv("AC_TEST_BACKEND");
    if (b == NULL || *b == '\0' || strcmp(b, "posix") == 0) {
        ac_backend_set_auto_override(AC_BACKEND_POSIX);
    } else if (strcmp(b, "io_uring") == 0) {
        int r = ac_uring_probe();
        if (r < 0) {
            printf("SKIP: AC_TEST_BACKEND=io_uring, but %s (%s)\n",
                   r == -ENOTSUP ? "the library is built without liburing"
                                 : "io_uring cannot be used here", strerror(-r));
            exit(77);
        }
        ac_backend_set_auto_override(AC_BACKEND_IO_URING);
    } else if (strcmp(b, "auto") != 0) {
        fprintf(stderr, "testutil: AC_TEST_BACKEND=%s: expected posix, io_uring or auto\n", b);
        exit(99);
    }
}
