/*
 * test-util.c: the small helpers: stored-path rules (lib/path.h), iovec
 * slicing and copying (lib/iov.h) against a flat model, options through the
 * public API, the version, the per-thread error message, and the sector
 * range lock (lib/rangelock.h).
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "addcow.h"
#include "iov.h"
#include "options.h"
#include "path.h"
#include "rangelock.h"
#include "testutil.h"

/* ---- paths -------------------------------------------------------------- */

static void test_path_has_protocol(void **state)
{
    (void)state;
    static const char *yes[] = { "nbd://h/x", "file:x", "a:b", ":x", "nbd:", "http://h/a:b",
                                 "a:/b" };
    static const char *no[] = { "a/b:c", "/abs:x", "plain", "", "dir/file", "/",
                                "./a:b", "disk.raw" };
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
        if (!ac_path_has_protocol(yes[i]))
            fail_msg("ac_path_has_protocol(\"%s\") is false, want true", yes[i]);
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        if (ac_path_has_protocol(no[i]))
            fail_msg("ac_path_has_protocol(\"%s\") is true, want false", no[i]);
}

static void test_path_is_confined(void **state)
{
    (void)state;
    static const char *yes[] = { "disk.raw", "sub/disk.raw", "a/./b", "...", "..x", "x..",
                                 "a/..b/c", "a/b..", "./disk.raw", "a//b" };
    static const char *no[] = { "/abs", "../x", "a/../b", "a/..", "..", "nbd://x",
                                "file:disk.raw", "../", "a/b/../../..", "a//../b",
                                "//x", "/" };
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
        if (!ac_path_is_confined(yes[i]))
            fail_msg("ac_path_is_confined(\"%s\") is false, want true", yes[i]);
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        if (ac_path_is_confined(no[i]))
            fail_msg("ac_path_is_confined(\"%s\") is true, want false", no[i]);
}

static void check_dirname(const char *path, const char *want)
{
    char *d = ac_path_dirname(path);
    assert_non_null(d);
    if (strcmp(d, want) != 0)
        fail_msg("ac_path_dirname(\"%s\") = \"%s\", want \"%s\"", path, d, want);
    free(d);
}

static void test_path_dirname(void **state)
{
    (void)state;
    check_dirname("dir/disk.add-cow", "dir");
    check_dirname("a/b/c", "a/b");
    check_dirname("disk.add-cow", "");
    check_dirname("/a/b.add-cow", "/a");
    check_dirname("/b.add-cow", "/");
    check_dirname("/x/y/z", "/x/y");
}

static void check_resolve(const char *addcow, const char *stored, const char *want)
{
    char *r = ac_path_resolve(addcow, stored);
    assert_non_null(r);
    if (strcmp(r, want) != 0)
        fail_msg("ac_path_resolve(\"%s\", \"%s\") = \"%s\", want \"%s\"", addcow, stored,
                 r, want);
    free(r);
}

static void test_path_resolve(void **state)
{
    (void)state;
    check_resolve("dir/disk.add-cow", "disk.raw", "dir/disk.raw");
    check_resolve("disk.add-cow", "x", "x");
    check_resolve("/a/b.add-cow", "c", "/a/c");
    check_resolve("/b.add-cow", "c", "/c");
    check_resolve("a/b/c.add-cow", "d/e.raw", "a/b/d/e.raw");
    check_resolve("vm/disk.add-cow", "../base.raw", "vm/../base.raw");
    /* An absolute stored path is used as it is. */
    check_resolve("dir/disk.add-cow", "/srv/base.raw", "/srv/base.raw");
    check_resolve("/a/b.add-cow", "/c", "/c");
    check_resolve("x.add-cow", "/", "/");
}

/* ---- iovec helpers ------------------------------------------------------- */

struct layout {
    int cnt;
    struct iovec *iov;
    size_t total;
    /* Address of flat byte i: for checking that slices alias the source. */
    char **addr;
};

/* Random layout of `total` bytes: pieces of random sizes (some empty), each
 * its own allocation so that valgrind sees any stray access. */
static void layout_new(struct layout *l, size_t total, uint64_t *rng)
{
    l->cnt = 0;
    l->total = total;
    l->iov = NULL;
    l->addr = malloc((total + 1) * sizeof(char *));
    assert_non_null(l->addr);
    size_t done = 0;
    int cap = 0;
    while (done < total || (l->cnt < 3 && tu_rand_below(rng, 2))) {
        if (l->cnt == cap) {
            cap = cap ? cap * 2 : 8;
            l->iov = realloc(l->iov, (size_t)cap * sizeof(*l->iov));
            assert_non_null(l->iov);
        }
        size_t n;
        switch (tu_rand_below(rng, 4)) {
        case 0: n = 0; break;
        case 1: n = 1; break;
        case 2: n = (size_t)tu_rand_below(rng, 16); break;
        default: n = (size_t)tu_rand_below(rng, 300); break;
        }
        if (n > total - done)
            n = total - done;
        char *p = malloc(n ? n : 1);
        assert_non_null(p);
        l->iov[l->cnt].iov_base = p;
        l->iov[l->cnt].iov_len = n;
        for (size_t i = 0; i < n; i++)
            l->addr[done + i] = p + i;
        done += n;
        l->cnt++;
    }
}

static void layout_free(struct layout *l)
{
    for (int i = 0; i < l->cnt; i++)
        free(l->iov[i].iov_base);
    free(l->iov);
    free(l->addr);
}

static void layout_fill(struct layout *l, const unsigned char *flat)
{
    for (size_t i = 0; i < l->total; i++)
        *l->addr[i] = (char)flat[i];
}

static void layout_read(const struct layout *l, unsigned char *flat)
{
    for (size_t i = 0; i < l->total; i++)
        flat[i] = (unsigned char)*l->addr[i];
}

static void random_bytes(unsigned char *p, size_t n, uint64_t *rng)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)tu_rand(rng);
}

static void test_iov_size(void **state)
{
    (void)state;
    struct iovec v[4] = {
        { NULL, 10 }, { NULL, 0 }, { NULL, 4096 }, { NULL, 1 },
    };
    assert_true(ac_iov_size(v, 0) == 0);
    assert_true(ac_iov_size(v, 1) == 10);
    assert_true(ac_iov_size(v, 4) == 4107);
    /* Saturates instead of wrapping. */
    struct iovec big[3] = { { NULL, SIZE_MAX }, { NULL, SIZE_MAX }, { NULL, 5 } };
    assert_true(ac_iov_size(big, 1) == (uint64_t)SIZE_MAX);
    assert_true(ac_iov_size(big, 3) == UINT64_MAX);
    struct iovec big2[2] = { { NULL, 10 }, { NULL, SIZE_MAX } };
    assert_true(ac_iov_size(big2, 2) == UINT64_MAX);
}

static void test_iov_slice_random(void **state)
{
    (void)state;
    uint64_t rng = tu_seed("test_iov_slice_random");
    for (unsigned round = 0; round < tu_scale(2000); round++) {
        struct layout l;
        size_t total = (size_t)tu_rand_below(&rng, round % 10 == 0 ? 3000 : 200);
        layout_new(&l, total, &rng);
        assert_true(ac_iov_size(l.iov, l.cnt) == total);

        size_t skip = (size_t)tu_rand_below(&rng, total + 1);
        size_t len = (size_t)tu_rand_below(&rng, total - skip + 1);
        /* dst has room for exactly src_cnt entries, as documented. */
        struct iovec *dst = malloc((size_t)(l.cnt ? l.cnt : 1) * sizeof(*dst));
        assert_non_null(dst);
        int n = ac_iov_slice(l.iov, l.cnt, skip, len, dst);
        assert_true(n >= 0 && n <= l.cnt);
        assert_true(ac_iov_size(dst, n) == len);
        /* Byte k of the slice is the very same byte as skip + k of src. */
        size_t k = 0;
        for (int i = 0; i < n; i++)
            for (size_t j = 0; j < dst[i].iov_len; j++, k++)
                if ((char *)dst[i].iov_base + j != l.addr[skip + k])
                    fail_msg("round %u: slice byte %zu is not source byte %zu "
                             "(skip %zu len %zu)", round, k, skip + k, skip, len);
        assert_true(k == len);
        if (len == 0)
            assert_int_equal(n, 0);
        free(dst);
        layout_free(&l);
    }
}

static void test_iov_slice_fixed(void **state)
{
    (void)state;
    char a[4], b[6], c[3];
    struct iovec src[4] = { { a, 4 }, { NULL, 0 }, { b, 6 }, { c, 3 } };
    struct iovec dst[4];

    /* Inside one element. */
    assert_int_equal(ac_iov_slice(src, 4, 5, 3, dst), 1);
    assert_ptr_equal(dst[0].iov_base, b + 1);
    assert_int_equal(dst[0].iov_len, 3);
    /* Across all three. */
    assert_int_equal(ac_iov_slice(src, 4, 3, 8, dst), 3);
    assert_ptr_equal(dst[0].iov_base, a + 3);
    assert_int_equal(dst[0].iov_len, 1);
    assert_ptr_equal(dst[1].iov_base, b);
    assert_int_equal(dst[1].iov_len, 6);
    assert_ptr_equal(dst[2].iov_base, c);
    assert_int_equal(dst[2].iov_len, 1);
    /* Starting exactly at an element boundary, to the end. */
    assert_int_equal(ac_iov_slice(src, 4, 10, 3, dst), 1);
    assert_ptr_equal(dst[0].iov_base, c);
    assert_int_equal(dst[0].iov_len, 3);
    /* Everything. */
    assert_int_equal(ac_iov_slice(src, 4, 0, 13, dst), 3);
    assert_true(ac_iov_size(dst, 3) == 13);
    /* Nothing. */
    assert_int_equal(ac_iov_slice(src, 4, 13, 0, dst), 0);
    assert_int_equal(ac_iov_slice(src, 4, 0, 0, dst), 0);
}

static void test_iov_copy_random(void **state)
{
    (void)state;
    uint64_t rng = tu_seed("test_iov_copy_random");
    for (unsigned round = 0; round < tu_scale(1500); round++) {
        struct layout l;
        size_t total = (size_t)tu_rand_below(&rng, round % 10 == 0 ? 5000 : 300);
        layout_new(&l, total, &rng);
        unsigned char *model = malloc(total + 1), *got = malloc(total + 1);
        assert_non_null(model);
        assert_non_null(got);
        random_bytes(model, total, &rng);
        layout_fill(&l, model);

        size_t skip = (size_t)tu_rand_below(&rng, total + 1);
        size_t len = (size_t)tu_rand_below(&rng, total - skip + 1);
        /* Flat buffers of exactly len bytes. */
        unsigned char *buf = malloc(len ? len : 1);
        assert_non_null(buf);

        switch (round % 3) {
        case 0:
            ac_iov_memset0(l.iov, l.cnt, skip, len);
            memset(model + skip, 0, len);
            break;
        case 1:
            memset(buf, 0xEE, len);
            ac_iov_to_buf(l.iov, l.cnt, skip, buf, len);
            assert_memory_equal(buf, model + skip, len);
            break;
        default:
            random_bytes(buf, len, &rng);
            ac_iov_from_buf(l.iov, l.cnt, skip, buf, len);
            memcpy(model + skip, buf, len);
            break;
        }
        layout_read(&l, got);
        if (total > 0 && memcmp(got, model, total) != 0) {
            size_t i = 0;
            while (got[i] == model[i])
                i++;
            fail_msg("round %u op %u: byte %zu is 0x%02x, model 0x%02x (skip %zu len %zu)",
                     round, round % 3, i, got[i], model[i], skip, len);
        }
        free(buf);
        free(model);
        free(got);
        layout_free(&l);
    }
}

/* ---- options, through the public API -------------------------------------- */

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static void test_options_all_valid(void **state)
{
    (void)state;
    static const struct {
        const char *key, *value;
    } ok[] = {
        { "backend", "posix" }, { "backend", "auto" },
        { "cache", "writeback" }, { "cache", "writethrough" }, { "cache", "none" },
        { "backing-format", "auto" }, { "backing-format", "raw" },
        { "backing-format", "add-cow" },
        { "locking", "on" }, { "locking", "off" },
        { "paths", "any" }, { "paths", "confined" },
    };
    addcow_options *o = addcow_options_new();
    assert_non_null(o);
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        int r = addcow_options_set(o, ok[i].key, ok[i].value);
        if (r != 0)
            fail_msg("addcow_options_set(\"%s\", \"%s\") = %d: %s", ok[i].key,
                     ok[i].value, r, addcow_last_error());
    }
    addcow_options_free(o);
}

static void test_options_values_take_effect(void **state)
{
    (void)state;
    addcow_options *o = addcow_options_new();
    assert_non_null(o);
    /* Fresh options are the defaults of API.md. */
    assert_int_equal(o->backend, AC_BACKEND_AUTO);
    assert_int_equal(o->cache, AC_CACHE_WRITEBACK);
    assert_int_equal(o->backing_format, AC_BFMT_AUTO);
    assert_int_equal(o->locking, 1);
    assert_int_equal(o->paths, AC_PATHS_ANY);
    assert_null(o->custom_backend);

    assert_int_equal(addcow_options_set(o, "cache", "none"), 0);
    assert_int_equal(o->cache, AC_CACHE_NONE);
    assert_int_equal(addcow_options_set(o, "cache", "writethrough"), 0);
    assert_int_equal(o->cache, AC_CACHE_WRITETHROUGH);
    assert_int_equal(addcow_options_set(o, "backing-format", "add-cow"), 0);
    assert_int_equal(o->backing_format, AC_BFMT_ADDCOW);
    assert_int_equal(addcow_options_set(o, "backing-format", "raw"), 0);
    assert_int_equal(o->backing_format, AC_BFMT_RAW);
    assert_int_equal(addcow_options_set(o, "locking", "off"), 0);
    assert_int_equal(o->locking, 0);
    assert_int_equal(addcow_options_set(o, "paths", "confined"), 0);
    assert_int_equal(o->paths, AC_PATHS_CONFINED);

    /* A refused value leaves the previous one. */
    assert_int_equal(addcow_options_set(o, "cache", "bogus"), -EINVAL);
    assert_int_equal(o->cache, AC_CACHE_WRITETHROUGH);
#ifdef HAVE_LIBURING
    assert_int_equal(addcow_options_set(o, "backend", "io_uring"), 0);
    assert_int_equal(o->backend, AC_BACKEND_IO_URING);
#else
    assert_int_equal(addcow_options_set(o, "backend", "io_uring"), -ENOTSUP);
    assert_int_equal(o->backend, AC_BACKEND_AUTO);
#endif
    assert_int_equal(addcow_options_set(o, "backend", "posix"), 0);
    assert_int_equal(o->backend, AC_BACKEND_POSIX);

    assert_int_equal(addcow_options_set(o, "locking", "on"), 0);
    assert_int_equal(o->locking, 1);
    assert_int_equal(addcow_options_set(o, "paths", "any"), 0);
    assert_int_equal(o->paths, AC_PATHS_ANY);
    addcow_options_free(o);
}

static void check_set_fails(addcow_options *o, const char *key, const char *value,
                            int want, const char *must_contain)
{
    int r = addcow_options_set(o, key, value);
    if (r != want)
        fail_msg("addcow_options_set(%s, %s) = %d, want %d", key ? key : "NULL",
                 value ? value : "NULL", r, want);
    const char *msg = addcow_last_error();
    assert_non_null(msg);
    if (!starts_with(msg, "addcow_options_set"))
        fail_msg("message \"%s\" does not start with \"addcow_options_set\"", msg);
    if (must_contain != NULL && strstr(msg, must_contain) == NULL)
        fail_msg("message \"%s\" does not name \"%s\"", msg, must_contain);
}

static void test_options_unknown_key(void **state)
{
    (void)state;
    addcow_options *o = addcow_options_new();
    assert_non_null(o);
    check_set_fails(o, "no-such-key", "on", -EINVAL, "no-such-key");
    check_set_fails(o, "Cache", "none", -EINVAL, "Cache");           /* case matters */
    check_set_fails(o, "", "on", -EINVAL, NULL);
    check_set_fails(o, "cache ", "none", -EINVAL, "cache ");
    addcow_options_free(o);
}

static void test_options_unknown_value(void **state)
{
    (void)state;
    static const struct {
        const char *key, *value;
    } bad[] = {
        { "backend", "posixx" }, { "backend", "" },
        { "cache", "always" }, { "cache", "" },
        { "backing-format", "qcow2" }, { "backing-format", "addcow" },
        { "locking", "yes" }, { "locking", "1" },
        { "paths", "relative" }, { "paths", "confined " },
    };
    addcow_options *o = addcow_options_new();
    assert_non_null(o);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        check_set_fails(o, bad[i].key, bad[i].value, -EINVAL, bad[i].key);
    addcow_options_free(o);
}

static void test_options_null_args(void **state)
{
    (void)state;
    addcow_options *o = addcow_options_new();
    assert_non_null(o);
    check_set_fails(NULL, "cache", "none", -EINVAL, NULL);
    check_set_fails(o, NULL, "none", -EINVAL, NULL);
    check_set_fails(o, "cache", NULL, -EINVAL, "cache");
    check_set_fails(NULL, NULL, NULL, -EINVAL, NULL);
    addcow_options_free(o);
}

static void test_options_io_uring_not_built(void **state)
{
    (void)state;
#ifdef HAVE_LIBURING
    skip();     /* built in: test-uring tests the backend */
#endif
    addcow_options *o = addcow_options_new();
    assert_non_null(o);
    check_set_fails(o, "backend", "io_uring", -ENOTSUP, "backend");
    /* The handle still works afterwards. */
    assert_int_equal(addcow_options_set(o, "backend", "posix"), 0);
    addcow_options_free(o);
}

static void test_options_free_null(void **state)
{
    (void)state;
    addcow_options_free(NULL);
}

/* ---- version ------------------------------------------------------------ */

static void test_version(void **state)
{
    (void)state;
    char buf[64];
    const char *v = addcow_version();
    assert_non_null(v);
    assert_string_equal(v, "1.1.0");
    snprintf(buf, sizeof(buf), "%d.%d.%d", ADDCOW_VERSION_MAJOR, ADDCOW_VERSION_MINOR,
             ADDCOW_VERSION_MICRO);
    assert_string_equal(v, buf);
    assert_int_equal(ADDCOW_VERSION_MAJOR, 1);
    assert_int_equal(ADDCOW_VERSION_MINOR, 1);
    assert_int_equal(ADDCOW_VERSION_MICRO, 0);
}

/* ---- the per-thread error message ---------------------------------------- */

static void *fresh_thread_error(void *arg)
{
    const char **out = arg;
    *out = addcow_last_error();
    return NULL;
}

static void test_last_error_never_null(void **state)
{
    (void)state;
    assert_non_null(addcow_last_error());
    /* In a thread that has called nothing yet: "" (addcow.h). */
    const char *seen = (const char *)1;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, fresh_thread_error, &seen), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_non_null(seen);
    /* (The pointer may be to the dead thread's storage: only NULL-ness is
     * checked here; the content is checked in the next test.) */

    /* After a failure and after a success it is still a string. */
    addcow_options *o = addcow_options_new();
    assert_non_null(o);
    assert_int_equal(addcow_options_set(o, "bogus", "x"), -EINVAL);
    assert_non_null(addcow_last_error());
    assert_int_equal(addcow_options_set(o, "cache", "none"), 0);
    assert_non_null(addcow_last_error());
    addcow_options_free(o);
}

struct err_thread {
    pthread_barrier_t *bar;
    const char *key;            /* this thread fails on this key */
    const char *other_key;      /* the other thread's */
    char fresh[64];             /* message before any call */
    char mine[512];             /* message right after the failure */
    char later[512];            /* message after the other thread failed */
};

static void *err_thread_main(void *arg)
{
    struct err_thread *t = arg;
    snprintf(t->fresh, sizeof(t->fresh), "%s", addcow_last_error());
    addcow_options *o = addcow_options_new();

    pthread_barrier_wait(t->bar);           /* 1: both started */
    if (strcmp(t->key, "alpha-key") == 0) {
        addcow_options_set(o, t->key, "v");
        snprintf(t->mine, sizeof(t->mine), "%s", addcow_last_error());
        pthread_barrier_wait(t->bar);       /* 2: alpha failed */
        pthread_barrier_wait(t->bar);       /* 3: beta failed */
    } else {
        pthread_barrier_wait(t->bar);       /* 2 */
        addcow_options_set(o, t->key, "v");
        snprintf(t->mine, sizeof(t->mine), "%s", addcow_last_error());
        pthread_barrier_wait(t->bar);       /* 3 */
    }
    snprintf(t->later, sizeof(t->later), "%s", addcow_last_error());
    addcow_options_free(o);
    return NULL;
}

static void test_last_error_per_thread(void **state)
{
    (void)state;
    pthread_barrier_t bar;
    struct err_thread a = { .bar = &bar, .key = "alpha-key", .other_key = "beta-key" };
    struct err_thread b = { .bar = &bar, .key = "beta-key", .other_key = "alpha-key" };
    pthread_t ta, tb;

    /* The main thread's own message, set before the threads run. */
    addcow_options *o = addcow_options_new();
    assert_non_null(o);
    assert_int_equal(addcow_options_set(o, "main-key", "v"), -EINVAL);
    char main_before[512];
    snprintf(main_before, sizeof(main_before), "%s", addcow_last_error());
    assert_non_null(strstr(main_before, "main-key"));

    assert_int_equal(pthread_barrier_init(&bar, NULL, 2), 0);
    assert_int_equal(pthread_create(&ta, NULL, err_thread_main, &a), 0);
    assert_int_equal(pthread_create(&tb, NULL, err_thread_main, &b), 0);
    assert_int_equal(pthread_join(ta, NULL), 0);
    assert_int_equal(pthread_join(tb, NULL), 0);
    pthread_barrier_destroy(&bar);

    const struct err_thread *ts[2] = { &a, &b };
    for (int i = 0; i < 2; i++) {
        const struct err_thread *t = ts[i];
        /* A new thread starts with "", not another thread's message. */
        assert_string_equal(t->fresh, "");
        assert_true(starts_with(t->mine, "addcow_options_set"));
        assert_non_null(strstr(t->mine, t->key));
        /* The other thread's failure did not touch this thread's message. */
        assert_string_equal(t->later, t->mine);
        assert_null(strstr(t->later, t->other_key));
    }
    assert_string_equal(addcow_last_error(), main_before);
    addcow_options_free(o);
}

/* ---- range lock ----------------------------------------------------------- */

#define WAIT_LIMIT_MS 5000

struct locker {
    struct ac_rangelock *rl;
    uint64_t start, end;
    int got;                    /* set (atomically) once the lock is held */
    int release;                /* the thread unlocks when this is set */
};

static void sleep_ms(unsigned ms)
{
    struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static void *locker_main(void *arg)
{
    struct locker *l = arg;
    struct ac_range r;
    ac_rl_lock(l->rl, &r, l->start, l->end);
    __atomic_store_n(&l->got, 1, __ATOMIC_SEQ_CST);
    for (int i = 0; i < WAIT_LIMIT_MS * 2 && !__atomic_load_n(&l->release, __ATOMIC_SEQ_CST); i++)
        sleep_ms(1);
    ac_rl_unlock(l->rl, &r);
    return NULL;
}

/* Waits up to WAIT_LIMIT_MS for *flag; true if it was set. */
static bool wait_flag(int *flag)
{
    for (int i = 0; i < WAIT_LIMIT_MS; i++) {
        if (__atomic_load_n(flag, __ATOMIC_SEQ_CST))
            return true;
        sleep_ms(1);
    }
    return __atomic_load_n(flag, __ATOMIC_SEQ_CST);
}

static void start_locker(pthread_t *t, struct locker *l, struct ac_rangelock *rl,
                         uint64_t start, uint64_t end)
{
    l->rl = rl;
    l->start = start;
    l->end = end;
    l->got = 0;
    l->release = 0;
    assert_int_equal(pthread_create(t, NULL, locker_main, l), 0);
}

static void release_locker(pthread_t t, struct locker *l)
{
    __atomic_store_n(&l->release, 1, __ATOMIC_SEQ_CST);
    assert_int_equal(pthread_join(t, NULL), 0);
}

/* The state of one two-lock check.  On the heap: if the lock under test is
 * broken so that the helper thread never gets in, the check fails and leaks
 * this rather than let a stuck thread use stack memory that later tests
 * reuse. */
struct pair_check {
    struct ac_rangelock rl;
    struct ac_range r1;
    struct locker l;
    pthread_t t;
};

static struct pair_check *pair_start(uint64_t s1, uint64_t e1, uint64_t s2, uint64_t e2)
{
    struct pair_check *pc = calloc(1, sizeof(*pc));
    assert_non_null(pc);
    assert_int_equal(ac_rl_init(&pc->rl), 0);
    ac_rl_lock(&pc->rl, &pc->r1, s1, e1);
    start_locker(&pc->t, &pc->l, &pc->rl, s2, e2);
    return pc;
}

/* Lets the helper finish and frees everything; false if the helper never
 * got its lock (then everything is leaked on purpose). */
static bool pair_finish(struct pair_check *pc, bool r1_held)
{
    if (r1_held)
        ac_rl_unlock(&pc->rl, &pc->r1);
    if (!wait_flag(&pc->l.got))
        return false;
    release_locker(pc->t, &pc->l);
    ac_rl_destroy(&pc->rl);
    free(pc);
    return true;
}

/* A lock on [s2, e2) taken while [s1, e1) is held does not wait. */
static void check_no_wait(uint64_t s1, uint64_t e1, uint64_t s2, uint64_t e2)
{
    struct pair_check *pc = pair_start(s1, e1, s2, e2);
    bool granted = wait_flag(&pc->l.got);
    if (granted) {
        /* Both are held now; the helper releases first. */
        release_locker(pc->t, &pc->l);
        ac_rl_unlock(&pc->rl, &pc->r1);
        ac_rl_destroy(&pc->rl);
        free(pc);
    } else {
        pair_finish(pc, true);
        fail_msg("lock [%llu, %llu) waited for the disjoint [%llu, %llu)",
                 (unsigned long long)s2, (unsigned long long)e2,
                 (unsigned long long)s1, (unsigned long long)e1);
    }
}

/* A lock on [s2, e2) waits while [s1, e1) is held, and gets it after. */
static void check_waits(uint64_t s1, uint64_t e1, uint64_t s2, uint64_t e2)
{
    struct pair_check *pc = pair_start(s1, e1, s2, e2);
    sleep_ms(100);
    bool early = __atomic_load_n(&pc->l.got, __ATOMIC_SEQ_CST);
    if (!pair_finish(pc, true))
        fail_msg("lock [%llu, %llu) not granted %d ms after [%llu, %llu) was released",
                 (unsigned long long)s2, (unsigned long long)e2, WAIT_LIMIT_MS,
                 (unsigned long long)s1, (unsigned long long)e1);
    if (early)
        fail_msg("lock [%llu, %llu) was granted while [%llu, %llu) is held",
                 (unsigned long long)s2, (unsigned long long)e2,
                 (unsigned long long)s1, (unsigned long long)e1);
}

struct same_thread {
    struct ac_rangelock rl;
    int done;
};

static void *same_thread_main(void *arg)
{
    struct same_thread *st = arg;
    struct ac_range a, b, c;
    ac_rl_lock(&st->rl, &a, 0, 10);
    ac_rl_lock(&st->rl, &b, 10, 20);
    ac_rl_lock(&st->rl, &c, 100, 101);
    ac_rl_unlock(&st->rl, &b);
    ac_rl_lock(&st->rl, &b, 11, 19);
    ac_rl_unlock(&st->rl, &a);
    ac_rl_unlock(&st->rl, &c);
    ac_rl_unlock(&st->rl, &b);
    __atomic_store_n(&st->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static void test_rangelock_disjoint_same_thread(void **state)
{
    (void)state;
    /* One thread holds several disjoint ranges at once.  Run in a helper
     * so that a lock that wrongly conflicts fails the test, not hangs it
     * (on failure the state is leaked on purpose). */
    struct same_thread *st = calloc(1, sizeof(*st));
    pthread_t t;
    assert_non_null(st);
    assert_int_equal(ac_rl_init(&st->rl), 0);
    assert_int_equal(pthread_create(&t, NULL, same_thread_main, st), 0);
    if (!wait_flag(&st->done))
        fail_msg("one thread could not hold [0, 10), [10, 20) and [100, 101) at once");
    assert_int_equal(pthread_join(t, NULL), 0);
    ac_rl_destroy(&st->rl);
    free(st);
}

static void test_rangelock_disjoint(void **state)
{
    (void)state;
    check_no_wait(0, 10, 10, 20);       /* adjacent, after */
    check_no_wait(10, 20, 0, 10);       /* adjacent, before */
    check_no_wait(0, 1, 1000, 2000);
    check_no_wait(0, 10, UINT64_MAX - 1, UINT64_MAX);
}

static void test_rangelock_overlap_waits(void **state)
{
    (void)state;
    check_waits(0, 10, 5, 6);           /* inside */
    check_waits(0, 10, 9, 20);          /* last sector shared */
    check_waits(10, 20, 0, 11);         /* first sector shared */
    check_waits(10, 20, 0, 100);        /* covers */
    check_waits(10, 20, 10, 20);        /* the same range */
    check_waits(0, UINT64_MAX, 12345, 12346);
}

struct wake_all {
    struct ac_rangelock rl;
    struct ac_range big;
    struct locker l1, l2;
    pthread_t t1, t2;
};

static void test_rangelock_release_wakes_all(void **state)
{
    (void)state;
    /* On the heap, and leaked if the waiters never wake (see pair_check). */
    struct wake_all *w = calloc(1, sizeof(*w));
    assert_non_null(w);
    assert_int_equal(ac_rl_init(&w->rl), 0);
    ac_rl_lock(&w->rl, &w->big, 0, 100);
    start_locker(&w->t1, &w->l1, &w->rl, 10, 20);
    start_locker(&w->t2, &w->l2, &w->rl, 50, 60);
    sleep_ms(100);
    bool early = __atomic_load_n(&w->l1.got, __ATOMIC_SEQ_CST) ||
                 __atomic_load_n(&w->l2.got, __ATOMIC_SEQ_CST);
    ac_rl_unlock(&w->rl, &w->big);
    /* Disjoint from each other: both get in, and both hold at once. */
    if (!wait_flag(&w->l1.got) || !wait_flag(&w->l2.got))
        fail_msg("waiters not all woken after the release");
    release_locker(w->t1, &w->l1);
    release_locker(w->t2, &w->l2);
    ac_rl_destroy(&w->rl);
    free(w);
    if (early)
        fail_msg("a lock inside [0, 100) was granted while [0, 100) was held");
}

/* Many threads lock random ranges; inside, each marks its sectors as owned
 * and checks that nobody else owns them. */
#define STRESS_SECTORS 64
#define STRESS_THREADS 4

struct stress {
    struct ac_rangelock rl;
    int owner[STRESS_SECTORS];
    int violations;
    int finished;
    uint64_t seed;
    unsigned iters;
};

struct stress_arg {
    struct stress *s;
    int id;
};

static void *stress_main(void *arg)
{
    struct stress_arg *a = arg;
    struct stress *s = a->s;
    uint64_t rng = s->seed + (uint64_t)a->id * UINT64_C(0x9E3779B97F4A7C15) + 1;
    for (unsigned i = 0; i < s->iters; i++) {
        uint64_t st = tu_rand_below(&rng, STRESS_SECTORS);
        uint64_t en = st + 1 + tu_rand_below(&rng, (STRESS_SECTORS - st < 8 ? STRESS_SECTORS - st : 8));
        struct ac_range r;
        ac_rl_lock(&s->rl, &r, st, en);
        for (uint64_t k = st; k < en; k++) {
            int prev = __atomic_exchange_n(&s->owner[k], a->id, __ATOMIC_SEQ_CST);
            if (prev != 0)
                __atomic_add_fetch(&s->violations, 1, __ATOMIC_SEQ_CST);
        }
        if (i % 16 == 0)
            sched_yield();
        for (uint64_t k = st; k < en; k++) {
            int prev = __atomic_exchange_n(&s->owner[k], 0, __ATOMIC_SEQ_CST);
            if (prev != a->id)
                __atomic_add_fetch(&s->violations, 1, __ATOMIC_SEQ_CST);
        }
        ac_rl_unlock(&s->rl, &r);
    }
    __atomic_add_fetch(&s->finished, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static void test_rangelock_stress(void **state)
{
    (void)state;
    /* On the heap, and leaked if the threads get stuck (see pair_check). */
    struct stress *s = calloc(1, sizeof(*s));
    struct stress_arg *args = calloc(STRESS_THREADS, sizeof(*args));
    pthread_t t[STRESS_THREADS];

    assert_non_null(s);
    assert_non_null(args);
    s->seed = tu_seed("test_rangelock_stress");
    s->iters = tu_scale(3000);
    assert_int_equal(ac_rl_init(&s->rl), 0);
    for (int i = 0; i < STRESS_THREADS; i++) {
        args[i].s = s;
        args[i].id = i + 1;
        assert_int_equal(pthread_create(&t[i], NULL, stress_main, &args[i]), 0);
    }
    /* Wait with a limit (a lost wake-up would otherwise hang the test). */
    for (int ms = 0; ms < 4 * WAIT_LIMIT_MS * (int)tu_scale(1); ms++) {
        if (__atomic_load_n(&s->finished, __ATOMIC_SEQ_CST) == STRESS_THREADS)
            break;
        sleep_ms(1);
    }
    if (__atomic_load_n(&s->finished, __ATOMIC_SEQ_CST) != STRESS_THREADS)
        fail_msg("range lock stress: threads still blocked after %d s",
                 4 * WAIT_LIMIT_MS / 1000);
    for (int i = 0; i < STRESS_THREADS; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_int_equal(s->violations, 0);
    assert_null(s->rl.held);
    ac_rl_destroy(&s->rl);
    free(args);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_path_has_protocol),
        cmocka_unit_test(test_path_is_confined),
        cmocka_unit_test(test_path_dirname),
        cmocka_unit_test(test_path_resolve),
        cmocka_unit_test(test_iov_size),
        cmocka_unit_test(test_iov_slice_fixed),
        cmocka_unit_test(test_iov_slice_random),
        cmocka_unit_test(test_iov_copy_random),
        cmocka_unit_test(test_options_all_valid),
        cmocka_unit_test(test_options_values_take_effect),
        cmocka_unit_test(test_options_unknown_key),
        cmocka_unit_test(test_options_unknown_value),
        cmocka_unit_test(test_options_null_args),
        cmocka_unit_test(test_options_io_uring_not_built),
        cmocka_unit_test(test_options_free_null),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_last_error_never_null),
        cmocka_unit_test(test_last_error_per_thread),
        cmocka_unit_test(test_rangelock_disjoint_same_thread),
        cmocka_unit_test(test_rangelock_disjoint),
        cmocka_unit_test(test_rangelock_overlap_waits),
        cmocka_unit_test(test_rangelock_release_wakes_all),
        cmocka_unit_test(test_rangelock_stress),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
