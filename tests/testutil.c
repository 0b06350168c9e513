/*
 * testutil.c: helpers shared by the tests.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

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
