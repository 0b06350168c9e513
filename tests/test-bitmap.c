/*
 * test-bitmap.c: the in-memory sector bitmap (lib/bitmap.h) against a naive
 * model, one byte per bit, on random operations (seed printed by tu_seed,
 * replay with AC_SEED=<seed>), plus hand-made checks of the on-disk byte
 * layout (FORMAT.md: sector n is bit n % 8 of byte n / 8) and of dirty
 * tracking.
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap.h"
#include "testutil.h"

/* The huge-allocation test expects calloc to fail with NULL; under
 * AddressSanitizer that needs allocator_may_return_null. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "allocator_may_return_null=1";
}

/* ---- the model ---------------------------------------------------------- */

struct model {
    uint64_t nbits;
    unsigned char *bit;     /* nbits entries, 0 or 1 */
    uint64_t count;
    /* Built by model_index(): prefix[i] = set bits below i; next_set[i] /
     * next_clear[i] = first set / clear bit at or after i (nbits if none). */
    uint64_t *prefix, *next_set, *next_clear;
};

static void model_init(struct model *m, uint64_t nbits)
{
    m->nbits = nbits;
    m->bit = calloc(nbits + 1, 1);
    m->prefix = calloc(nbits + 1, sizeof(uint64_t));
    m->next_set = calloc(nbits + 1, sizeof(uint64_t));
    m->next_clear = calloc(nbits + 1, sizeof(uint64_t));
    assert_non_null(m->bit);
    assert_non_null(m->prefix);
    assert_non_null(m->next_set);
    assert_non_null(m->next_clear);
    m->count = 0;
}

static void model_free(struct model *m)
{
    free(m->bit);
    free(m->prefix);
    free(m->next_set);
    free(m->next_clear);
}

static uint64_t model_set(struct model *m, uint64_t start, uint64_t count, int v)
{
    uint64_t changed = 0;
    for (uint64_t i = start; i < start + count; i++) {
        if (m->bit[i] != v) {
            m->bit[i] = (unsigned char)v;
            changed++;
        }
    }
    if (v)
        m->count += changed;
    else
        m->count -= changed;
    return changed;
}

static void model_index(struct model *m)
{
    uint64_t n = m->nbits;
    m->prefix[0] = 0;
    for (uint64_t i = 0; i < n; i++)
        m->prefix[i + 1] = m->prefix[i] + m->bit[i];
    m->next_set[n] = n;
    m->next_clear[n] = n;
    for (uint64_t i = n; i-- > 0;) {
        m->next_set[i] = m->bit[i] ? i : m->next_set[i + 1];
        m->next_clear[i] = m->bit[i] ? m->next_clear[i + 1] : i;
    }
}

/* Checks every query on [s, e) against the indexed model. */
static void check_range(const struct ac_bitmap *bm, const struct model *m,
                        uint64_t s, uint64_t e)
{
    uint64_t want_set = tu_min_u64(m->next_set[s], e);
    uint64_t want_clear = tu_min_u64(m->next_clear[s], e);
    uint64_t want_count = m->prefix[e] - m->prefix[s];
    uint64_t got;

    got = ac_bm_find_next_set(bm, s, e);
    if (got != want_set)
        fail_msg("find_next_set(%llu, %llu) = %llu, want %llu (nbits %llu)",
                 (unsigned long long)s, (unsigned long long)e, (unsigned long long)got,
                 (unsigned long long)want_set, (unsigned long long)m->nbits);
    got = ac_bm_find_next_clear(bm, s, e);
    if (got != want_clear)
        fail_msg("find_next_clear(%llu, %llu) = %llu, want %llu (nbits %llu)",
                 (unsigned long long)s, (unsigned long long)e, (unsigned long long)got,
                 (unsigned long long)want_clear, (unsigned long long)m->nbits);
    got = ac_bm_count_range(bm, s, e);
    if (got != want_count)
        fail_msg("count_range(%llu, %llu) = %llu, want %llu (nbits %llu)",
                 (unsigned long long)s, (unsigned long long)e, (unsigned long long)got,
                 (unsigned long long)want_count, (unsigned long long)m->nbits);
    bool all = ac_bm_all_set(bm, s, e - s);
    if (all != (want_count == e - s))
        fail_msg("all_set(%llu, %llu) = %d, want %d (nbits %llu)",
                 (unsigned long long)s, (unsigned long long)(e - s), (int)all,
                 (int)(want_count == e - s), (unsigned long long)m->nbits);
}

/* Interesting positions: word edges, the ends, the middle. */
static size_t edge_positions(uint64_t nbits, uint64_t *out)
{
    static const uint64_t fixed[] = { 0, 1, 2, 62, 63, 64, 65, 127, 128, 129, 191, 192, 193 };
    size_t n = 0;
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        if (fixed[i] <= nbits)
            out[n++] = fixed[i];
    const uint64_t tail[] = { nbits / 2, nbits >= 65 ? nbits - 65 : 0,
                              nbits >= 64 ? nbits - 64 : 0, nbits >= 63 ? nbits - 63 : 0,
                              nbits >= 2 ? nbits - 2 : 0, nbits >= 1 ? nbits - 1 : 0, nbits };
    for (size_t i = 0; i < sizeof(tail) / sizeof(tail[0]); i++)
        out[n++] = tail[i];
    return n;
}

/* Full comparison: every bit, the count, all edge pairs, random ranges. */
static void verify(const struct ac_bitmap *bm, struct model *m, uint64_t *rng)
{
    assert_true(bm->nbits == m->nbits);
    if (bm->count != m->count)
        fail_msg("bm.count %llu, model %llu", (unsigned long long)bm->count,
                 (unsigned long long)m->count);
    for (uint64_t i = 0; i < m->nbits; i++)
        if ((int)ac_bm_test(bm, i) != m->bit[i])
            fail_msg("bit %llu is %d, model %d (nbits %llu)", (unsigned long long)i,
                     (int)ac_bm_test(bm, i), m->bit[i], (unsigned long long)m->nbits);
    model_index(m);
    assert_true(ac_bm_count_range(bm, 0, m->nbits) == m->count);

    uint64_t pos[32];
    size_t np = edge_positions(m->nbits, pos);
    for (size_t i = 0; i < np; i++)
        for (size_t j = 0; j < np; j++)
            if (pos[i] <= pos[j])
                check_range(bm, m, pos[i], pos[j]);
    for (int k = 0; k < 64; k++) {
        uint64_t a = tu_rand_below(rng, m->nbits + 1);
        uint64_t b = tu_rand_below(rng, m->nbits + 1);
        check_range(bm, m, tu_min_u64(a, b), a < b ? b : a);
    }
}

/* A random range [start, start + count) inside [0, nbits): mostly short,
 * sometimes long, often starting or ending on a word edge. */
static void random_range(uint64_t *rng, uint64_t nbits, uint64_t *start, uint64_t *count)
{
    if (nbits == 0) {
        *start = 0;
        *count = 0;
        return;
    }
    uint64_t s, c;
    switch (tu_rand_below(rng, 6)) {
    case 0:     /* anywhere, any length */
        s = tu_rand_below(rng, nbits + 1);
        c = tu_rand_below(rng, nbits - s + 1);
        break;
    case 1:     /* start at a word edge +-1 */
        s = (tu_rand_below(rng, nbits / 64 + 1) * 64 + tu_rand_below(rng, 3) + nbits - 1) % nbits;
        c = tu_rand_below(rng, tu_min_u64(nbits - s, 200) + 1);
        break;
    case 2:     /* end at a word edge +-1 */
        s = tu_rand_below(rng, nbits);
        c = tu_rand_below(rng, tu_min_u64(nbits - s, 200) + 1);
        {
            uint64_t e = ((s + c) / 64) * 64 + tu_rand_below(rng, 3);
            e = e > 0 ? e - 1 : 0;
            c = e > s && e <= nbits ? e - s : c;
        }
        break;
    case 3:     /* a single bit, or nothing */
        s = tu_rand_below(rng, nbits + 1);
        c = s < nbits ? tu_rand_below(rng, 2) : 0;
        break;
    case 4:     /* reaching the very end */
        s = tu_rand_below(rng, nbits + 1);
        c = nbits - s;
        break;
    default:    /* short */
        s = tu_rand_below(rng, nbits);
        c = tu_rand_below(rng, tu_min_u64(nbits - s, 70) + 1);
        break;
    }
    *start = s;
    *count = c;
}

static void random_ops(uint64_t nbits, unsigned nops, uint64_t *rng)
{
    struct ac_bitmap bm;
    struct model m;

    assert_int_equal(ac_bm_init(&bm, nbits), 0);
    model_init(&m, nbits);
    verify(&bm, &m, rng);
    for (unsigned op = 0; op < nops; op++) {
        uint64_t s, c;
        random_range(rng, nbits, &s, &c);
        int v = (int)tu_rand_below(rng, 2);
        uint64_t want = model_set(&m, s, c, v);
        uint64_t got = v ? ac_bm_set_range(&bm, s, c) : ac_bm_clear_range(&bm, s, c);
        if (got != want)
            fail_msg("%s_range(%llu, %llu) returned %llu, model changed %llu (nbits %llu)",
                     v ? "set" : "clear", (unsigned long long)s, (unsigned long long)c,
                     (unsigned long long)got, (unsigned long long)want,
                     (unsigned long long)nbits);
        if (bm.count != m.count)
            fail_msg("after %s_range(%llu, %llu): count %llu, model %llu",
                     v ? "set" : "clear", (unsigned long long)s, (unsigned long long)c,
                     (unsigned long long)bm.count, (unsigned long long)m.count);
        /* A cheap spot check every time, a full one now and then. */
        if (nbits > 0) {
            uint64_t b = tu_rand_below(rng, nbits);
            assert_int_equal(ac_bm_test(&bm, b), m.bit[b]);
        }
        if (op % 64 == 63)
            verify(&bm, &m, rng);
    }
    verify(&bm, &m, rng);
    ac_bm_free(&bm);
    model_free(&m);
}

static void test_random_small_sizes(void **state)
{
    (void)state;
    uint64_t rng = tu_seed("test_random_small_sizes");
    static const uint64_t sizes[] = { 0, 1, 2, 63, 64, 65, 127, 128, 129, 200 };
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        random_ops(sizes[i], tu_scale(3000), &rng);
}

static void test_random_4096x8_plus_3(void **state)
{
    (void)state;
    uint64_t rng = tu_seed("test_random_4096x8_plus_3");
    random_ops(4096 * 8 + 3, tu_scale(3000), &rng);
}

static void test_random_random_sizes(void **state)
{
    (void)state;
    uint64_t rng = tu_seed("test_random_random_sizes");
    for (int i = 0; i < 4; i++) {
        uint64_t n = 1 + tu_rand_below(&rng, i < 2 ? 1000 : 70000);
        printf("# nbits %llu\n", (unsigned long long)n);
        random_ops(n, tu_scale(2000), &rng);
    }
}

/* ---- fixed cases of the range operations -------------------------------- */

static void test_set_clear_return_values(void **state)
{
    (void)state;
    struct ac_bitmap bm;

    assert_int_equal(ac_bm_init(&bm, 300), 0);
    assert_true(bm.count == 0);
    assert_true(ac_bm_set_range(&bm, 10, 100) == 100);
    assert_true(ac_bm_set_range(&bm, 10, 100) == 0);         /* already set */
    assert_true(ac_bm_set_range(&bm, 0, 300) == 200);
    assert_true(bm.count == 300);
    assert_true(ac_bm_set_range(&bm, 5, 0) == 0);            /* empty range */
    assert_true(ac_bm_clear_range(&bm, 63, 2) == 2);          /* across a word edge */
    assert_true(ac_bm_clear_range(&bm, 62, 4) == 2);
    assert_true(bm.count == 296);
    assert_false(ac_bm_test(&bm, 63));
    assert_false(ac_bm_test(&bm, 64));
    assert_true(ac_bm_test(&bm, 61));
    assert_true(ac_bm_test(&bm, 66));
    assert_true(ac_bm_clear_range(&bm, 0, 300) == 296);
    assert_true(ac_bm_clear_range(&bm, 0, 300) == 0);
    assert_true(bm.count == 0);
    ac_bm_free(&bm);
}

static void test_find_word_edges(void **state)
{
    (void)state;
    struct ac_bitmap bm;

    assert_int_equal(ac_bm_init(&bm, 200), 0);
    /* Empty range: start == end returns end. */
    assert_true(ac_bm_find_next_set(&bm, 64, 64) == 64);
    assert_true(ac_bm_find_next_clear(&bm, 64, 64) == 64);
    assert_true(ac_bm_find_next_set(&bm, 200, 200) == 200);
    assert_true(ac_bm_find_next_set(&bm, 0, 200) == 200);
    assert_true(ac_bm_find_next_clear(&bm, 0, 200) == 0);

    ac_bm_set_range(&bm, 64, 1);
    assert_true(ac_bm_find_next_set(&bm, 0, 200) == 64);
    assert_true(ac_bm_find_next_set(&bm, 63, 200) == 64);
    assert_true(ac_bm_find_next_set(&bm, 64, 200) == 64);
    assert_true(ac_bm_find_next_set(&bm, 65, 200) == 200);
    assert_true(ac_bm_find_next_set(&bm, 0, 64) == 64);       /* end excluded */
    assert_true(ac_bm_find_next_set(&bm, 0, 65) == 64);
    assert_true(ac_bm_find_next_set(&bm, 0, 63) == 63);
    assert_true(ac_bm_find_next_clear(&bm, 64, 200) == 65);
    assert_true(ac_bm_find_next_clear(&bm, 64, 65) == 65);

    ac_bm_set_range(&bm, 0, 200);
    assert_true(ac_bm_find_next_clear(&bm, 0, 200) == 200);
    assert_true(ac_bm_find_next_clear(&bm, 63, 65) == 65);
    ac_bm_clear_range(&bm, 199, 1);                             /* last bit */
    assert_true(ac_bm_find_next_clear(&bm, 0, 200) == 199);
    assert_true(ac_bm_find_next_clear(&bm, 0, 199) == 199);
    assert_true(ac_bm_find_next_set(&bm, 199, 200) == 200);
    assert_false(ac_bm_all_set(&bm, 0, 200));
    assert_true(ac_bm_all_set(&bm, 0, 199));
    assert_true(ac_bm_all_set(&bm, 199, 0));
    ac_bm_free(&bm);
}

static void test_size_zero(void **state)
{
    (void)state;
    struct ac_bitmap bm;

    assert_int_equal(ac_bm_init(&bm, 0), 0);
    assert_true(bm.nbits == 0);
    assert_true(bm.count == 0);
    assert_true(ac_bm_nbytes(&bm) == 0);
    assert_true(ac_bm_set_range(&bm, 0, 0) == 0);
    assert_true(ac_bm_clear_range(&bm, 0, 0) == 0);
    assert_true(ac_bm_find_next_set(&bm, 0, 0) == 0);
    assert_true(ac_bm_find_next_clear(&bm, 0, 0) == 0);
    assert_true(ac_bm_count_range(&bm, 0, 0) == 0);
    assert_true(ac_bm_all_set(&bm, 0, 0));
    assert_false(ac_bm_any_dirty(&bm));
    uint64_t f, n;
    assert_false(ac_bm_next_dirty(&bm, 0, 100, &f, &n));
    unsigned char out[4] = { 0xAA, 0xAA, 0xAA, 0xAA };
    ac_bm_store_bytes(&bm, 0, out, sizeof(out));
    for (int i = 0; i < 4; i++)
        assert_int_equal(out[i], 0);
    ac_bm_load_bytes(&bm, 0, out, 0);
    ac_bm_free(&bm);
}

/* ---- on-disk byte layout ------------------------------------------------ */

static void test_load_bytes_layout(void **state)
{
    (void)state;
    struct ac_bitmap bm;
    /* The bitmap of tests/data/vectors/v1: 40 sectors, bits 0,7,8,22,23,
     * 29,30,31,39 (byte n / 8, least significant bit first). */
    static const unsigned char bytes[5] = { 0x81, 0x01, 0xC0, 0xE0, 0x80 };
    static const uint64_t want[] = { 0, 7, 8, 22, 23, 29, 30, 31, 39 };

    assert_int_equal(ac_bm_init(&bm, 40), 0);
    assert_true(ac_bm_nbytes(&bm) == 5);
    ac_bm_load_bytes(&bm, 0, bytes, 5);
    size_t k = 0;
    for (uint64_t n = 0; n < 40; n++) {
        bool w = k < 9 && want[k] == n;
        if (ac_bm_test(&bm, n) != w)
            fail_msg("sector %llu: bit %d, want %d", (unsigned long long)n,
                     (int)ac_bm_test(&bm, n), (int)w);
        if (w)
            k++;
    }
    assert_true(bm.count == 9);

    unsigned char out[5];
    ac_bm_store_bytes(&bm, 0, out, 5);
    assert_memory_equal(out, bytes, 5);
    ac_bm_free(&bm);
}

static void test_store_bytes_layout(void **state)
{
    (void)state;
    struct ac_bitmap bm;
    unsigned char out[3];

    assert_int_equal(ac_bm_init(&bm, 24), 0);
    ac_bm_set_range(&bm, 1, 1);     /* byte 0 bit 1 -> 0x02 */
    ac_bm_set_range(&bm, 12, 4);    /* byte 1 bits 4..7 -> 0xF0 */
    ac_bm_set_range(&bm, 16, 1);    /* byte 2 bit 0 -> 0x01 */
    ac_bm_set_range(&bm, 23, 1);    /* byte 2 bit 7 -> 0x80 */
    ac_bm_store_bytes(&bm, 0, out, 3);
    assert_int_equal(out[0], 0x02);
    assert_int_equal(out[1], 0xF0);
    assert_int_equal(out[2], 0x81);

    /* Part of the bytes, from an offset. */
    unsigned char one = 0;
    ac_bm_store_bytes(&bm, 1, &one, 1);
    assert_int_equal(one, 0xF0);
    ac_bm_free(&bm);
}

static void test_load_ignores_bits_past_end(void **state)
{
    (void)state;
    struct ac_bitmap bm;
    /* 10 sectors (tests/data/vectors/v2/odd.add-cow): byte 1 is 0xFF but
     * only its bits 0 and 1 (sectors 8, 9) exist. */
    static const unsigned char bytes[2] = { 0x02, 0xFF };

    assert_int_equal(ac_bm_init(&bm, 10), 0);
    ac_bm_load_bytes(&bm, 0, bytes, 2);
    assert_true(bm.count == 3);
    assert_false(ac_bm_test(&bm, 0));
    assert_true(ac_bm_test(&bm, 1));
    for (uint64_t n = 2; n < 8; n++)
        assert_false(ac_bm_test(&bm, n));
    assert_true(ac_bm_test(&bm, 8));
    assert_true(ac_bm_test(&bm, 9));
    assert_true(ac_bm_find_next_clear(&bm, 8, 10) == 10);
    assert_true(ac_bm_all_set(&bm, 8, 2));
    assert_true(ac_bm_count_range(&bm, 0, 10) == 3);

    /* Stored with the bits past the end as 0. */
    unsigned char out[2];
    ac_bm_store_bytes(&bm, 0, out, 2);
    assert_int_equal(out[0], 0x02);
    assert_int_equal(out[1], 0x03);

    /* Growing later must not resurrect the ignored bits. */
    assert_int_equal(ac_bm_resize(&bm, 16), 0);
    for (uint64_t n = 10; n < 16; n++)
        assert_false(ac_bm_test(&bm, n));
    assert_true(bm.count == 3);
    ac_bm_free(&bm);
}

static void test_store_past_end_is_zero(void **state)
{
    (void)state;
    struct ac_bitmap bm;
    unsigned char out[8];

    assert_int_equal(ac_bm_init(&bm, 13), 0);   /* 2 bytes */
    ac_bm_set_range(&bm, 0, 13);
    memset(out, 0xAA, sizeof(out));
    ac_bm_store_bytes(&bm, 0, out, sizeof(out));
    assert_int_equal(out[0], 0xFF);
    assert_int_equal(out[1], 0x1F);             /* bits 8..12 only */
    for (int i = 2; i < 8; i++)
        assert_int_equal(out[i], 0);            /* past the bitmap */
    memset(out, 0xAA, sizeof(out));
    ac_bm_store_bytes(&bm, 5, out, 3);          /* wholly past the end */
    for (int i = 0; i < 3; i++)
        assert_int_equal(out[i], 0);
    ac_bm_free(&bm);
}

static void test_load_partial_bytes(void **state)
{
    (void)state;
    struct ac_bitmap bm;
    static const unsigned char ff = 0xFF, zero = 0;

    assert_int_equal(ac_bm_init(&bm, 64 * 3), 0);
    ac_bm_set_range(&bm, 0, 8);
    ac_bm_set_range(&bm, 100, 10);
    /* Loading byte 9 (sectors 72..79) touches only those bits. */
    ac_bm_load_bytes(&bm, 9, &ff, 1);
    assert_true(bm.count == 8 + 10 + 8);
    assert_true(ac_bm_all_set(&bm, 72, 8));
    assert_false(ac_bm_test(&bm, 71));
    assert_false(ac_bm_test(&bm, 80));
    assert_true(ac_bm_all_set(&bm, 0, 8));
    assert_true(ac_bm_all_set(&bm, 100, 10));
    /* Loading a zero byte over set bits clears exactly them. */
    ac_bm_load_bytes(&bm, 0, &zero, 1);
    assert_true(bm.count == 10 + 8);
    assert_true(ac_bm_find_next_set(&bm, 0, 192) == 72);
    /* Bytes addressed past the bitmap are ignored. */
    ac_bm_load_bytes(&bm, 24, &ff, 1);
    assert_true(bm.count == 18);
    ac_bm_free(&bm);
}

static void test_bytes_roundtrip_random(void **state)
{
    (void)state;
    uint64_t rng = tu_seed("test_bytes_roundtrip_random");
    static const uint64_t fixed[] = { 1, 7, 8, 9, 63, 64, 65, 4096 * 8 + 3 };

    for (int round = 0; round < 40; round++) {
        uint64_t nbits = round < 8 ? fixed[round] : 1 + tu_rand_below(&rng, 20000);
        uint64_t nbytes = (nbits + 7) / 8;
        unsigned char *src = malloc(nbytes), *out = malloc(nbytes + 16);
        struct ac_bitmap bm;
        assert_non_null(src);
        assert_non_null(out);
        for (uint64_t i = 0; i < nbytes; i++)
            src[i] = (unsigned char)tu_rand(&rng);

        assert_int_equal(ac_bm_init(&bm, nbits), 0);
        ac_bm_load_bytes(&bm, 0, src, (size_t)nbytes);
        uint64_t want_count = 0;
        for (uint64_t n = 0; n < nbits; n++) {
            int want = (src[n / 8] >> (n % 8)) & 1;
            want_count += (uint64_t)want;
            if ((int)ac_bm_test(&bm, n) != want)
                fail_msg("nbits %llu sector %llu: bit %d, byte says %d",
                         (unsigned long long)nbits, (unsigned long long)n,
                         (int)ac_bm_test(&bm, n), want);
        }
        assert_true(bm.count == want_count);

        /* Store it back, in random pieces, into a buffer longer than the
         * bitmap: the same bytes with the tail bits and the excess zeroed. */
        memset(out, 0xAA, (size_t)nbytes + 16);
        uint64_t off = 0;
        while (off < nbytes + 16) {
            uint64_t len = 1 + tu_rand_below(&rng, 700);
            if (len > nbytes + 16 - off)
                len = nbytes + 16 - off;
            ac_bm_store_bytes(&bm, off, out + off, (size_t)len);
            off += len;
        }
        for (uint64_t i = 0; i < nbytes; i++) {
            unsigned char want = src[i];
            if (i == nbytes - 1 && nbits % 8)
                want &= (unsigned char)((1u << (nbits % 8)) - 1);
            if (out[i] != want)
                fail_msg("nbits %llu byte %llu: stored 0x%02x, want 0x%02x",
                         (unsigned long long)nbits, (unsigned long long)i, out[i], want);
        }
        for (uint64_t i = nbytes; i < nbytes + 16; i++)
            assert_int_equal(out[i], 0);
        ac_bm_free(&bm);
        free(src);
        free(out);
    }
}

/* ---- dirty tracking ------------------------------------------------------ */

/* All dirty blocks, read with ac_bm_next_dirty and runs of at most
 * max_blocks; checks the run contract on the way. */
static void dirty_set(const struct ac_bitmap *bm, uint64_t max_blocks, unsigned char *out,
                      uint64_t nblocks)
{
    memset(out, 0, (size_t)nblocks);
    uint64_t from = 0, first, n;
    while (ac_bm_next_dirty(bm, from, max_blocks, &first, &n)) {
        assert_true(first >= from);
        assert_true(n >= 1);
        assert_true(n <= max_blocks);
        assert_true(first + n <= nblocks);
        for (uint64_t b = first; b < first + n; b++)
            out[b] = 1;
        from = first + n;
    }
}

static void test_dirty_fresh_bitmap_clean(void **state)
{
    (void)state;
    struct ac_bitmap bm;
    uint64_t f, n;

    assert_int_equal(ac_bm_init(&bm, 4096 * 8 * 3), 0);
    assert_false(ac_bm_any_dirty(&bm));
    assert_false(ac_bm_next_dirty(&bm, 0, 1000, &f, &n));
    ac_bm_free(&bm);
}

static void test_dirty_blocks_exact(void **state)
{
    (void)state;
    struct ac_bitmap bm;
    uint64_t f, n;
    const uint64_t per_block = AC_BM_DIRTY_BLOCK * 8;    /* sectors per block */

    assert_int_equal(AC_BM_DIRTY_BLOCK, 512);
    assert_int_equal(ac_bm_init(&bm, per_block * 5 + 100), 0);  /* 6 blocks */
    assert_true(bm.ndirty_blocks == 6);

    /* One bit in block 2. */
    ac_bm_set_range(&bm, per_block * 2 + 17, 1);
    assert_true(ac_bm_any_dirty(&bm));
    assert_true(ac_bm_next_dirty(&bm, 0, 100, &f, &n));
    assert_true(f == 2 && n == 1);
    assert_false(ac_bm_next_dirty(&bm, 3, 100, &f, &n));
    ac_bm_clear_dirty_blocks(&bm, 2, 1);
    assert_false(ac_bm_any_dirty(&bm));

    /* Setting an already set bit marks nothing. */
    assert_true(ac_bm_set_range(&bm, per_block * 2 + 17, 1) == 0);
    assert_false(ac_bm_any_dirty(&bm));
    /* Clearing an already clear range marks nothing. */
    assert_true(ac_bm_clear_range(&bm, 0, per_block * 2) == 0);
    assert_false(ac_bm_any_dirty(&bm));

    /* The last bit of block 0 and the first of block 1. */
    ac_bm_set_range(&bm, per_block - 1, 2);
    assert_true(ac_bm_next_dirty(&bm, 0, 100, &f, &n));
    assert_true(f == 0 && n == 2);
    assert_true(ac_bm_next_dirty(&bm, 0, 1, &f, &n));    /* capped run */
    assert_true(f == 0 && n == 1);
    assert_true(ac_bm_next_dirty(&bm, 1, 100, &f, &n));
    assert_true(f == 1 && n == 1);
    ac_bm_clear_dirty_blocks(&bm, 0, 6);
    assert_false(ac_bm_any_dirty(&bm));

    /* The partial last block. */
    ac_bm_set_range(&bm, per_block * 5 + 99, 1);
    assert_true(ac_bm_next_dirty(&bm, 0, 100, &f, &n));
    assert_true(f == 5 && n == 1);
    ac_bm_clear_dirty_blocks(&bm, 5, 1);

    /* Clearing bits marks too. */
    ac_bm_clear_range(&bm, per_block * 2, per_block);
    assert_true(ac_bm_next_dirty(&bm, 0, 100, &f, &n));
    assert_true(f == 2 && n == 1);
    ac_bm_free(&bm);
}

static void test_dirty_random(void **state)
{
    (void)state;
    uint64_t rng = tu_seed("test_dirty_random");
    const uint64_t per_block = AC_BM_DIRTY_BLOCK * 8;
    const uint64_t nbits = per_block * 9 + 777;
    const uint64_t nblocks = 10;
    struct ac_bitmap bm;
    struct model m;
    unsigned char got[10];

    assert_int_equal(ac_bm_init(&bm, nbits), 0);
    model_init(&m, nbits);
    unsigned nops = tu_scale(1500);
    for (unsigned op = 0; op < nops; op++) {
        uint64_t s, c;
        /* Mostly short ranges so that single blocks are exercised. */
        if (tu_rand_below(&rng, 4) == 0) {
            random_range(&rng, nbits, &s, &c);
        } else {
            s = tu_rand_below(&rng, nbits);
            c = tu_rand_below(&rng, tu_min_u64(nbits - s, 3000) + 1);
        }
        int v = (int)tu_rand_below(&rng, 2);
        unsigned char before_changed[10] = { 0 };
        for (uint64_t i = s; i < s + c; i++)
            if (m.bit[i] != v)
                before_changed[i / per_block] = 1;
        uint64_t want = model_set(&m, s, c, v);
        ac_bm_clear_dirty_blocks(&bm, 0, nblocks);
        assert_false(ac_bm_any_dirty(&bm));
        uint64_t r = v ? ac_bm_set_range(&bm, s, c) : ac_bm_clear_range(&bm, s, c);
        assert_true(r == want);

        dirty_set(&bm, 1 + tu_rand_below(&rng, 4), got, nblocks);
        for (uint64_t b = 0; b < nblocks; b++) {
            /* Every block holding a changed bit is dirty. */
            if (before_changed[b] && !got[b])
                fail_msg("op %u: %s_range(%llu, %llu) changed block %llu but it is "
                         "not dirty", op, v ? "set" : "clear", (unsigned long long)s,
                         (unsigned long long)c, (unsigned long long)b);
            /* A dirty block lies in the range; nothing is dirty if nothing
             * changed. */
            if (got[b] && (want == 0 || c == 0 || b < s / per_block ||
                           b > (s + c - 1) / per_block))
                fail_msg("op %u: %s_range(%llu, %llu) changed %llu bits; block %llu "
                         "dirty", op, v ? "set" : "clear", (unsigned long long)s,
                         (unsigned long long)c, (unsigned long long)want,
                         (unsigned long long)b);
        }
        assert_int_equal(ac_bm_any_dirty(&bm), want != 0);
    }
    ac_bm_free(&bm);
    model_free(&m);
}

static void test_dirty_mark_clear_model(void **state)
{
    (void)state;
    uint64_t rng = tu_seed("test_dirty_mark_clear_model");
    struct ac_bitmap bm;
    /* 200 dirty blocks: runs cross the dirty map's 64-bit words. */
    const uint64_t nblocks = 200;
    unsigned char model[200] = { 0 }, got[200];

    assert_int_equal(ac_bm_init(&bm, AC_BM_DIRTY_BLOCK * 8 * nblocks), 0);
    assert_true(bm.ndirty_blocks == nblocks);
    for (unsigned op = 0; op < tu_scale(2000); op++) {
        uint64_t f = tu_rand_below(&rng, nblocks);
        uint64_t n = tu_rand_below(&rng, nblocks - f + 1);
        if (tu_rand_below(&rng, 2)) {
            ac_bm_mark_dirty_blocks(&bm, f, n);
            memset(model + f, 1, (size_t)n);
        } else {
            ac_bm_clear_dirty_blocks(&bm, f, n);
            memset(model + f, 0, (size_t)n);
        }
        uint64_t cap = 1 + tu_rand_below(&rng, 80);
        dirty_set(&bm, cap, got, nblocks);
        assert_memory_equal(got, model, nblocks);

        /* The run from a random point is the longest one, up to cap. */
        uint64_t from = tu_rand_below(&rng, nblocks + 1), first, len;
        uint64_t want_first = from;
        while (want_first < nblocks && !model[want_first])
            want_first++;
        bool found = ac_bm_next_dirty(&bm, from, cap, &first, &len);
        assert_int_equal(found, want_first < nblocks);
        if (found) {
            uint64_t want_len = 0;
            while (want_first + want_len < nblocks && model[want_first + want_len] &&
                   want_len < cap)
                want_len++;
            assert_true(first == want_first);
            assert_true(len == want_len);
        }
        bool any = memchr(model, 1, nblocks) != NULL;
        assert_int_equal(ac_bm_any_dirty(&bm), any);
    }
    ac_bm_free(&bm);
}

/* ---- resize ------------------------------------------------------------- */

static void check_resize(uint64_t old_n, uint64_t new_n, uint64_t *rng)
{
    struct ac_bitmap bm;
    struct model m;
    const uint64_t per_block = AC_BM_DIRTY_BLOCK * 8;

    assert_int_equal(ac_bm_init(&bm, old_n), 0);
    model_init(&m, old_n > new_n ? old_n : new_n);
    m.nbits = old_n;
    for (int i = 0; i < 30 && old_n > 0; i++) {
        uint64_t s, c;
        random_range(rng, old_n, &s, &c);
        int v = (int)tu_rand_below(rng, 3) != 0;
        model_set(&m, s, c, v);
        assert_true((v ? ac_bm_set_range(&bm, s, c) : ac_bm_clear_range(&bm, s, c)) <= c);
    }
    /* Make sure the last old bit is set, so that a dropped bit would show. */
    if (old_n > 0) {
        model_set(&m, old_n - 1, 1, 1);
        ac_bm_set_range(&bm, old_n - 1, 1);
    }
    ac_bm_clear_dirty_blocks(&bm, 0, bm.ndirty_blocks);
    /* One dirty block before the tail must survive the resize. */
    uint64_t keep_min = old_n < new_n ? old_n : new_n;
    bool marked_block0 = keep_min > per_block * 2;
    if (marked_block0)
        ac_bm_mark_dirty_blocks(&bm, 0, 1);

    assert_int_equal(ac_bm_resize(&bm, new_n), 0);
    /* The model: bits below min kept, the rest clear. */
    for (uint64_t i = keep_min; i < (old_n > new_n ? old_n : new_n); i++)
        if (m.bit[i]) {
            m.bit[i] = 0;
            m.count--;
        }
    m.nbits = new_n;
    assert_true(bm.nbits == new_n);
    assert_true(ac_bm_nbytes(&bm) == (new_n + 7) / 8);
    assert_true(bm.ndirty_blocks == ((new_n + 7) / 8 + AC_BM_DIRTY_BLOCK - 1) / AC_BM_DIRTY_BLOCK);
    verify(&bm, &m, rng);

    /* Dirty: the block of the old tail byte (its bits past the old end are
     * now clear in memory and must be written), and the block marked
     * before.  Blocks wholly past the old end stay clean: the caller
     * extends the file with zeros there, and writing them would defeat a
     * sparse add-cow file (a grow to 8 TiB would write 2 GiB). */
    unsigned char *got = calloc(bm.ndirty_blocks + 1, 1);
    assert_non_null(got);
    dirty_set(&bm, UINT64_MAX, got, bm.ndirty_blocks);
    if (marked_block0)
        assert_int_equal(got[0], 1);
    if (new_n > old_n) {
        uint64_t tb = old_n / per_block;
        if (!got[tb])
            fail_msg("grow %llu -> %llu: block %llu of the old tail not dirty",
                     (unsigned long long)old_n, (unsigned long long)new_n,
                     (unsigned long long)tb);
        for (uint64_t b = tb + 1; b <= (new_n - 1) / per_block; b++)
            if (got[b])
                fail_msg("grow %llu -> %llu: block %llu, wholly new, is dirty",
                         (unsigned long long)old_n, (unsigned long long)new_n,
                         (unsigned long long)b);
    } else if (new_n < old_n && new_n > 0) {
        /* The last byte lost bits: its block must be rewritten. */
        uint64_t b = (new_n - 1) / per_block;
        if (!got[b])
            fail_msg("shrink %llu -> %llu: last block %llu not dirty",
                     (unsigned long long)old_n, (unsigned long long)new_n,
                     (unsigned long long)b);
    }
    free(got);

    /* Stored bytes past the new end are zero. */
    uint64_t nbytes = (new_n + 7) / 8;
    unsigned char *out = malloc(nbytes + 8);
    assert_non_null(out);
    ac_bm_store_bytes(&bm, 0, out, (size_t)nbytes + 8);
    for (uint64_t n = 0; n < new_n; n++)
        assert_int_equal((out[n / 8] >> (n % 8)) & 1, m.bit[n]);
    if (new_n % 8)
        assert_int_equal(out[nbytes - 1] >> (new_n % 8), 0);
    for (uint64_t i = nbytes; i < nbytes + 8; i++)
        assert_int_equal(out[i], 0);
    free(out);

    /* Growing back after a shrink: the dropped bits are gone. */
    if (new_n < old_n) {
        assert_int_equal(ac_bm_resize(&bm, old_n), 0);
        m.nbits = old_n;
        verify(&bm, &m, rng);
    }
    ac_bm_free(&bm);
    model_free(&m);
}

static void test_resize_fixed(void **state)
{
    (void)state;
    uint64_t rng = tu_seed("test_resize_fixed");
    static const uint64_t sizes[] = { 0, 1, 8, 63, 64, 65, 128, 4096 * 8, 4096 * 8 + 3,
                                      4096 * 8 * 3 + 1 };
    const size_t ns = sizeof(sizes) / sizeof(sizes[0]);
    for (size_t i = 0; i < ns; i++)
        for (size_t j = 0; j < ns; j++)
            check_resize(sizes[i], sizes[j], &rng);
}

static void test_resize_random(void **state)
{
    (void)state;
    uint64_t rng = tu_seed("test_resize_random");
    for (unsigned i = 0; i < tu_scale(60); i++) {
        uint64_t a = tu_rand_below(&rng, 50000), b;
        switch (tu_rand_below(&rng, 3)) {
        case 0: b = tu_rand_below(&rng, 50000); break;
        case 1: b = a + tu_rand_below(&rng, 130); break;
        default: b = a > 130 ? a - tu_rand_below(&rng, 130) : 0; break;
        }
        check_resize(a, b, &rng);
    }
}

/* Dirty marks below the resized tail survive the resize, in the dirty
 * map's first words too (more than 64 blocks). */
static void test_resize_keeps_dirty_marks(void **state)
{
    (void)state;
    const uint64_t per_block = AC_BM_DIRTY_BLOCK * 8;
    static const uint64_t marked[] = { 0, 1, 62, 63, 64, 65, 100 };
    static const struct {
        uint64_t from, to;      /* in blocks, plus a few bits */
    } cases[] = { { 130, 200 }, { 200, 130 }, { 130, 131 }, { 131, 130 } };

    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        struct ac_bitmap bm;
        uint64_t from = cases[c].from * per_block + 3, to = cases[c].to * per_block + 5;
        assert_int_equal(ac_bm_init(&bm, from), 0);
        for (size_t i = 0; i < sizeof(marked) / sizeof(marked[0]); i++)
            ac_bm_mark_dirty_blocks(&bm, marked[i], 1);
        ac_bm_set_range(&bm, 70 * per_block + 9, 1);        /* marks block 70 */
        assert_int_equal(ac_bm_resize(&bm, to), 0);

        unsigned char *got = calloc(bm.ndirty_blocks, 1);
        assert_non_null(got);
        dirty_set(&bm, UINT64_MAX, got, bm.ndirty_blocks);
        for (size_t i = 0; i < sizeof(marked) / sizeof(marked[0]); i++)
            if (!got[marked[i]])
                fail_msg("resize %llu -> %llu bits lost the dirty mark of block %llu",
                         (unsigned long long)from, (unsigned long long)to,
                         (unsigned long long)marked[i]);
        assert_int_equal(got[70], 1);
        assert_true(ac_bm_test(&bm, 70 * per_block + 9));
        assert_true(bm.count == 1);
        free(got);
        ac_bm_free(&bm);
    }
}

static void test_resize_keeps_ops_working(void **state)
{
    (void)state;
    uint64_t rng = tu_seed("test_resize_keeps_ops_working");
    struct ac_bitmap bm;
    struct model m;

    /* Model big enough for every size below. */
    model_init(&m, 5000);
    m.nbits = 100;
    assert_int_equal(ac_bm_init(&bm, 100), 0);
    static const uint64_t steps[] = { 100, 3000, 64, 65, 5000, 1, 0, 777 };
    for (size_t k = 0; k < sizeof(steps) / sizeof(steps[0]); k++) {
        uint64_t old_n = m.nbits, n = steps[k];
        assert_int_equal(ac_bm_resize(&bm, n), 0);
        for (uint64_t i = n < old_n ? n : old_n; i < 5000; i++)
            if (m.bit[i]) {
                m.bit[i] = 0;
                m.count--;
            }
        m.nbits = n;
        verify(&bm, &m, &rng);
        for (int op = 0; op < 300; op++) {
            uint64_t s, c;
            random_range(&rng, n, &s, &c);
            int v = (int)tu_rand_below(&rng, 2);
            uint64_t want = model_set(&m, s, c, v);
            uint64_t got = v ? ac_bm_set_range(&bm, s, c) : ac_bm_clear_range(&bm, s, c);
            assert_true(got == want);
            assert_true(bm.count == m.count);
        }
        verify(&bm, &m, &rng);
    }
    ac_bm_free(&bm);
    model_free(&m);
}

/* ---- allocation failure ------------------------------------------------- */

static void test_init_huge_enomem(void **state)
{
    (void)state;
    struct ac_bitmap bm;

    assert_int_equal(ac_bm_init(&bm, UINT64_MAX / 2), -ENOMEM);
    ac_bm_free(&bm);        /* safe after a failed init */
    assert_int_equal(ac_bm_init(&bm, UINT64_MAX), -ENOMEM);
    ac_bm_free(&bm);
}

static void test_resize_huge_enomem_keeps_bitmap(void **state)
{
    (void)state;
    struct ac_bitmap bm;

    assert_int_equal(ac_bm_init(&bm, 1000), 0);
    ac_bm_set_range(&bm, 10, 20);
    ac_bm_set_range(&bm, 999, 1);
    assert_int_equal(ac_bm_resize(&bm, UINT64_MAX / 2), -ENOMEM);
    /* Unchanged on failure. */
    assert_true(bm.nbits == 1000);
    assert_true(bm.count == 21);
    assert_true(ac_bm_find_next_set(&bm, 0, 1000) == 10);
    assert_true(ac_bm_find_next_clear(&bm, 10, 1000) == 30);
    assert_true(ac_bm_test(&bm, 999));
    ac_bm_free(&bm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_clear_return_values),
        cmocka_unit_test(test_find_word_edges),
        cmocka_unit_test(test_size_zero),
        cmocka_unit_test(test_random_small_sizes),
        cmocka_unit_test(test_random_4096x8_plus_3),
        cmocka_unit_test(test_random_random_sizes),
        cmocka_unit_test(test_load_bytes_layout),
        cmocka_unit_test(test_store_bytes_layout),
        cmocka_unit_test(test_load_ignores_bits_past_end),
        cmocka_unit_test(test_store_past_end_is_zero),
        cmocka_unit_test(test_load_partial_bytes),
        cmocka_unit_test(test_bytes_roundtrip_random),
        cmocka_unit_test(test_dirty_fresh_bitmap_clean),
        cmocka_unit_test(test_dirty_blocks_exact),
        cmocka_unit_test(test_dirty_random),
        cmocka_unit_test(test_dirty_mark_clear_model),
        cmocka_unit_test(test_resize_fixed),
        cmocka_unit_test(test_resize_random),
        cmocka_unit_test(test_resize_keeps_dirty_marks),
        cmocka_unit_test(test_resize_keeps_ops_working),
        cmocka_unit_test(test_init_huge_enomem),
        cmocka_unit_test(test_resize_huge_enomem_keeps_bitmap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
