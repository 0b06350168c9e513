/*
 * testutil.h: helpers shared by the tests: scratch folders, patterns,
 * seeds, reading whole files, strings that live until the end of the
 * program, and add-cow files written by hand from FORMAT.md.
 *
 * The helpers in testutil.c do not use cmocka (libtestutil is built even
 * where cmocka is missing): when the environment fails them (out of
 * memory, a file that cannot be written) or a test misuses them, they print
 * what went wrong and abort(), which fails the test program.  The few
 * helpers that check calls of the library under test, and so must fail
 * through cmocka, are at the end of this header and are defined only where
 * <cmocka.h> was included first.
 */
#ifndef AC_TESTUTIL_H
#define AC_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

/* AC_TEST_BACKEND (environment): posix (default) or io_uring is the backend
 * that backend=auto (the default option) means in a test program; a
 * constructor in testutil.c applies it, and skips the program (exit 77)
 * when io_uring is asked for and is not there.  "auto": the library's own
 * choice. */

/* Makes a fresh scratch folder under $TMPDIR (or /tmp) for this test and
 * returns its path (static storage; one per process).  Removed at exit
 * unless the test failed and AC_KEEP_SCRATCH is set. */
const char *tu_scratch(void);
/* tu_path("x.add-cow") -> "<scratch>/x.add-cow", newly allocated. */
char *tu_path(const char *name);

/* Writes `len` bytes to a new file (truncating an old one). 0 or -errno. */
int tu_write_file(const char *path, const void *buf, size_t len);
/* Reads a whole file, with a NUL after its last byte; *len gets its length.
 * NULL on error.  free() it. */
unsigned char *tu_read_file(const char *path, size_t *len);
/* Length of a file, or -errno. */
int64_t tu_file_size(const char *path);

/* A deterministic byte pattern: pattern(seed, offset). */
static inline unsigned char tu_pattern(uint32_t seed, uint64_t off)
{
    uint64_t x = (off + 1) * UINT64_C(0x9E3779B97F4A7C15) ^ ((uint64_t)seed << 17);
    x ^= x >> 29;
    return (unsigned char)(x ^ (x >> 8));
}
void tu_fill_pattern(void *buf, size_t len, uint32_t seed, uint64_t off);

/* The test's random seed: $AC_SEED if set, else from the clock.  Printed
 * once so that a failing run can be replayed with AC_SEED=<seed>. */
uint64_t tu_seed(const char *test_name);
/* xorshift64* PRNG. */
uint64_t tu_rand(uint64_t *state);
static inline uint64_t tu_rand_below(uint64_t *state, uint64_t n)
{
    return n ? tu_rand(state) % n : 0;
}

/* Iterations scaled by $AC_TEST_SCALE (default 1). */
unsigned tu_scale(unsigned base);

static inline uint64_t tu_min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* ---- strings that live until the end of the program ------------------------
 * For tests that build many paths: tu_str() returns a printf-formatted string
 * kept in a pool, so that tests need not free each one; tu_free_strings()
 * frees the pool (pass it as the group teardown of cmocka_run_group_tests, so
 * that valgrind sees no leak).  Not thread-safe: main thread only. */
char *tu_str(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int tu_free_strings(void **state);
/* Makes the folder <scratch>/name (name may hold '/': the parent must exist)
 * for one test and returns its path (a tu_str() string).  The folder must
 * not exist yet: two tests that pick the same name abort. */
const char *tu_subdir(const char *name);
/* Writes a file of len bytes of tu_pattern(seed, offset) (truncating an old
 * one). */
void tu_make_raw(const char *path, size_t len, uint32_t seed);

/* ---- the add-cow format, byte by byte --------------------------------------
 * The header layout as FORMAT.md writes it, spelled out here and encoded by
 * hand, independently of lib/codec.h: a wrong constant or encoder in the
 * library cannot make its own tests pass. */
#define TU_HDR_SIZE     2068u       /* the bitmap starts here */
#define TU_OFF_VERSION  8u
#define TU_OFF_BACKING  12u
#define TU_OFF_IMAGE    1036u
#define TU_OFF_SIZE     2060u
#define TU_PATH_FIELD   1024u
#define TU_MAGIC        UINT64_C(0x4144445F434F57FF)    /* "ADD_COW" 0xFF */

/* Big-endian integers of n bytes (n <= 8). */
void tu_put_be(unsigned char *p, uint64_t v, unsigned n);
uint64_t tu_get_be(const unsigned char *p, unsigned n);
/* Bitmap bytes for a header size field: ceil(floor(size / 512) / 8). */
uint64_t tu_bitmap_len(uint64_t size);
/* A header from explicit fields (any magic or version, to write corrupt
 * ones); backing NULL or "" = none.  Paths must fit their field with a NUL. */
void tu_build_header(unsigned char h[TU_HDR_SIZE], uint64_t magic, uint32_t version,
                     const char *backing, const char *image, uint64_t size);
/* Writes the first hlen bytes of h to a new file (truncating an old one),
 * then blen bitmap bytes of zeros (a sparse extension). */
void tu_write_addcow(const char *path, const unsigned char *h, size_t hlen, uint64_t blen);
/* A well-formed add-cow file with an all-clear bitmap. */
void tu_make_addcow(const char *path, const char *backing, const char *image,
                    uint64_t size);

/* ---- checked library calls (cmocka) ----------------------------------------
 * These fail the running cmocka test, with the caller's file and line and the
 * library's message, when the call does not succeed. */
#ifdef cmocka_unit_test
#include "addcow.h"

static inline addcow_image *tu_open_ok_at(const char *path, unsigned flags,
                                          const addcow_options *o, const char *file,
                                          int line)
{
    addcow_image *img = NULL;
    int r = addcow_open(path, flags, o, &img);
    if (r != 0 || img == NULL) {
        print_error("%s:%d: addcow_open(%s) returned %d: %s\n", file, line, path, r,
                    addcow_last_error());
        fail();
    }
    return img;
}
/* addcow_open() that must succeed; returns the handle. */
#define tu_open_ok(path, flags, o) tu_open_ok_at((path), (flags), (o), __FILE__, __LINE__)

/* New options with one key set (which must be accepted); free them with
 * addcow_options_free(). */
static inline addcow_options *tu_options1(const char *key, const char *value)
{
    addcow_options *o = addcow_options_new();
    assert_non_null(o);
    assert_int_equal(addcow_options_set(o, key, value), 0);
    return o;
}
#endif

#endif
