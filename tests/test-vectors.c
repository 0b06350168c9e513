/*
 * test-vectors.c: the add-cow images in tests/data/vectors, made from
 * FORMAT.md by another implementation, read through the library.  For each
 * image in manifest.json: the virtual size, the stored paths, the allocated
 * bytes, the SHA-256 of the whole disk and every run of block_status must
 * match the manifest's figures.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "addcow.h"
#include "sha256.h"
#include "testutil.h"

#define MAX_RUNS 256

struct vector {
    char image[256];
    uint64_t virtual_size;
    char backing_file[256];
    int has_backing;
    char image_file[256];
    uint64_t allocated_bytes;
    char sha256[65];
    uint64_t runs[MAX_RUNS][3];
    int nruns;
};

/* ---- a small reader for manifest.json's shape ------------------------- */

static const char *skip_ws(const char *p)
{
    while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t' || *p == ',')
        p++;
    return p;
}

/* Finds "key": inside [p, end) and returns the value's first character. */
static const char *find_key(const char *p, const char *end, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\"", key);
    const char *k = strstr(p, pat);
    if (k == NULL || k >= end)
        return NULL;
    k = strchr(k + strlen(pat), ':');
    return k ? skip_ws(k + 1) : NULL;
}

static int get_string(const char *p, const char *end, const char *key, char *out, size_t n)
{
    const char *v = find_key(p, end, key);
    if (v == NULL)
        return -1;
    if (strncmp(v, "null", 4) == 0)
        return 0;
    if (*v != '"')
        return -1;
    const char *q = strchr(v + 1, '"');
    if (q == NULL || (size_t)(q - v - 1) >= n)
        return -1;
    memcpy(out, v + 1, (size_t)(q - v - 1));
    out[q - v - 1] = '\0';
    return 1;
}

static int get_u64(const char *p, const char *end, const char *key, uint64_t *out)
{
    const char *v = find_key(p, end, key);
    if (v == NULL)
        return -1;
    *out = strtoull(v, NULL, 10);
    return 0;
}

static int parse_runs(const char *p, const char *end, struct vector *v)
{
    const char *r = find_key(p, end, "runs");
    if (r == NULL || *r != '[')
        return -1;
    r = skip_ws(r + 1);
    while (*r == '[') {
        if (v->nruns == MAX_RUNS)
            return -1;
        char *q;
        r = skip_ws(r + 1);
        for (int i = 0; i < 3; i++) {
            v->runs[v->nruns][i] = strtoull(r, &q, 10);
            r = skip_ws(q);
        }
        if (*r != ']')
            return -1;
        r = skip_ws(r + 1);
        v->nruns++;
    }
    return *r == ']' ? 0 : -1;
}

/* Reads every image of the manifest; returns how many. */
static int load_manifest(struct vector *vs, int max)
{
    char *path = NULL;
    if (asprintf(&path, "%s/vectors/manifest.json", TEST_DATA_DIR) < 0)
        return -1;
    char *text = (char *)tu_read_file(path, NULL);
    free(path);
    if (text == NULL)
        return -1;
    int n = 0;
    const char *p = text;
    while (n < max && (p = strstr(p, "\"image\"")) != NULL) {
        const char *next = strstr(p + 1, "\"image\"");
        const char *end = next ? next : p + strlen(p);
        struct vector *v = &vs[n];
        memset(v, 0, sizeof(*v));
        if (get_string(p, end, "image", v->image, sizeof(v->image)) != 1 ||
            get_u64(p, end, "virtual_size", &v->virtual_size) < 0 ||
            (v->has_backing = get_string(p, end, "backing_file", v->backing_file,
                                         sizeof(v->backing_file))) < 0 ||
            get_string(p, end, "image_file", v->image_file, sizeof(v->image_file)) != 1 ||
            get_u64(p, end, "allocated_bytes", &v->allocated_bytes) < 0 ||
            get_string(p, end, "disk_sha256", v->sha256, sizeof(v->sha256)) != 1 ||
            parse_runs(p, end, v) < 0) {
            free(text);
            return -1;
        }
        n++;
        p = end;
    }
    free(text);
    return n;
}

static struct vector vectors[16];
static int nvectors;

static char *vector_path(const struct vector *v)
{
    char *p;
    if (asprintf(&p, "%s/vectors/%s", TEST_DATA_DIR, v->image) < 0)
        abort();
    return p;
}

static addcow_image *open_vector(const struct vector *v)
{
    char *p = vector_path(v);
    addcow_image *img = NULL;
    int r = addcow_open(p, ADDCOW_OPEN_RDONLY, NULL, &img);
    if (r < 0)
        fail_msg("%s: addcow_open: %s", p, addcow_last_error());
    free(p);
    return img;
}

/* ---- tests --------------------------------------------------------------- */

static void test_manifest_loaded(void **state)
{
    (void)state;
    nvectors = load_manifest(vectors, 16);
    assert_true(nvectors >= 3);
}

static void test_metadata(void **state)
{
    (void)state;
    for (int i = 0; i < nvectors; i++) {
        const struct vector *v = &vectors[i];
        addcow_image *img = open_vector(v);
        assert_int_equal(addcow_get_size(img), (int64_t)v->virtual_size);
        assert_string_equal(addcow_get_image_file(img), v->image_file);
        if (v->has_backing)
            assert_string_equal(addcow_get_backing_file(img), v->backing_file);
        else
            assert_null(addcow_get_backing_file(img));
        assert_int_equal(addcow_get_allocated_bytes(img), (int64_t)v->allocated_bytes);
        assert_int_equal(addcow_close(img), 0);
    }
}

/* The disk's digest, read in pieces of a few odd sizes so that unaligned
 * reads are covered too. */
static void test_disk_sha256(void **state)
{
    (void)state;
    static const size_t pieces[] = { 512, 4096, 1, 777, 65536 };
    for (int i = 0; i < nvectors; i++) {
        const struct vector *v = &vectors[i];
        for (size_t k = 0; k < sizeof(pieces) / sizeof(pieces[0]); k++) {
            addcow_image *img = open_vector(v);
            struct tu_sha256 sha;
            char hex[65];
            unsigned char *buf = malloc(pieces[k]);
            assert_non_null(buf);
            tu_sha256_init(&sha);
            uint64_t off = 0;
            for (;;) {
                int64_t n = addcow_pread(img, buf, pieces[k], off);
                assert_true(n >= 0);
                if (n == 0)
                    break;
                tu_sha256_update(&sha, buf, (size_t)n);
                off += (uint64_t)n;
            }
            tu_sha256_hex(&sha, hex);
            assert_int_equal(off, v->virtual_size);
            if (strcmp(hex, v->sha256) != 0)
                fail_msg("%s read in pieces of %zu: sha256 %s, manifest says %s",
                         v->image, pieces[k], hex, v->sha256);
            free(buf);
            assert_int_equal(addcow_close(img), 0);
        }
    }
}

static void test_runs(void **state)
{
    (void)state;
    for (int i = 0; i < nvectors; i++) {
        const struct vector *v = &vectors[i];
        addcow_image *img = open_vector(v);
        uint64_t off = 0;
        for (int k = 0; k < v->nruns; k++) {
            uint64_t run = 0;
            assert_int_equal(off, v->runs[k][0]);
            int flags = addcow_block_status(img, off, v->virtual_size - off, &run);
            if (flags != (int)v->runs[k][2] || run != v->runs[k][1])
                fail_msg("%s run at %" PRIu64 ": got flags %d length %" PRIu64
                         ", manifest says flags %" PRIu64 " length %" PRIu64,
                         v->image, off, flags, run, v->runs[k][2], v->runs[k][1]);
            off += run;
        }
        assert_int_equal(off, v->virtual_size);
        /* From inside a run, the rest of that run is returned. */
        for (int k = 0; k < v->nruns; k++) {
            uint64_t start = v->runs[k][0], len = v->runs[k][1], run = 0;
            if (len <= 512)
                continue;
            int flags = addcow_block_status(img, start + 512, v->virtual_size - start - 512, &run);
            assert_int_equal(flags, (int)v->runs[k][2]);
            assert_int_equal(run, len - 512);
            /* And a length limit cuts the run. */
            flags = addcow_block_status(img, start, 100, &run);
            assert_int_equal(flags, (int)v->runs[k][2]);
            assert_int_equal(run, 100);
        }
        assert_int_equal(addcow_close(img), 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_manifest_loaded),
        cmocka_unit_test(test_metadata),
        cmocka_unit_test(test_disk_sha256),
        cmocka_unit_test(test_runs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
