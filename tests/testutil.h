/*
 * testutil.h: helpers shared by the tests: scratch folders, patterns,
 * seeds, reading whole files.
 */
#ifndef AC_TESTUTIL_H
#define AC_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

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

#endif
