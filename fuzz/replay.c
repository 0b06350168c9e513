/*
 * replay.c: runs a libFuzzer harness over saved inputs, without libFuzzer,
 * so that `make check` replays the corpus with any compiler.
 *
 *   replay-NAME            every file of the corpus folder built in
 *                          (FUZZ_CORPUS_DIR: fuzz/corpus/NAME in the source)
 *   replay-NAME PATH...    these files, or every file of these folders
 *
 * Prints how many inputs ran.  A broken expectation aborts inside the
 * harness (after "replay-NAME: FILE" says which input it was).
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

#ifndef FUZZ_CORPUS_DIR
#error "FUZZ_CORPUS_DIR must name the harness's corpus folder"
#endif
#ifndef FUZZ_NAME
#define FUZZ_NAME "replay"
#endif

static unsigned long ran;

static int read_all(const char *path, uint8_t **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -errno;
    size_t cap = 4096, n = 0;
    uint8_t *buf = malloc(cap);
    while (buf != NULL) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap)
            break;
        uint8_t *b = realloc(buf, cap * 2);
        if (b == NULL) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = b;
        cap *= 2;
    }
    int err = ferror(f) ? EIO : 0;
    fclose(f);
    if (buf == NULL)
        return -ENOMEM;
    if (err) {
        free(buf);
        return -err;
    }
    *out = buf;
    *len = n;
    return 0;
}

static int run_file(const char *path)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int r = read_all(path, &buf, &len);
    if (r < 0) {
        fprintf(stderr, "%s: cannot read %s: %s\n", FUZZ_NAME, path, strerror(-r));
        return -1;
    }
    /* A copy of exactly len bytes, so that a harness reading past the end
     * is caught (by valgrind or ASan) here as it would be under libFuzzer. */
    uint8_t *exact = malloc(len ? len : 1);
    if (exact == NULL) {
        free(buf);
        return -1;
    }
    memcpy(exact, buf, len);
    free(buf);
    /* The file's name on stderr first, so that an abort says which one. */
    fprintf(stderr, "%s: %s\n", FUZZ_NAME, path);
    LLVMFuzzerTestOneInput(exact, len);
    free(exact);
    ran++;
    return 0;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every regular file of a folder, in name order (not recursive). */
static int run_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        fprintf(stderr, "%s: cannot open %s: %s\n", FUZZ_NAME, dir, strerror(errno));
        return -1;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    int r = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nn = realloc(names, cap * sizeof(*nn));
            if (nn == NULL) {
                r = -1;
                break;
            }
            names = nn;
        }
        size_t l = strlen(dir) + strlen(e->d_name) + 2;
        if ((names[n] = malloc(l)) == NULL) {
            r = -1;
            break;
        }
        snprintf(names[n], l, "%s/%s", dir, e->d_name);
        n++;
    }
    closedir(d);
    if (n > 0)
        qsort(names, n, sizeof(*names), cmp_names);
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (r == 0 && stat(names[i], &st) == 0 && S_ISREG(st.st_mode))
            r = run_file(names[i]);
        free(names[i]);
    }
    free(names);
    return r;
}

static int run_path(const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0) {
        fprintf(stderr, "%s: %s: %s\n", FUZZ_NAME, path, strerror(errno));
        return -1;
    }
    return S_ISDIR(st.st_mode) ? run_dir(path) : run_file(path);
}

int main(int argc, char **argv)
{
    int r = 0;
    if (argc < 2) {
        r = run_path(FUZZ_CORPUS_DIR);
        if (r == 0 && ran == 0) {
            fprintf(stderr, "%s: no inputs in %s\n", FUZZ_NAME, FUZZ_CORPUS_DIR);
            r = -1;
        }
    }
    for (int i = 1; i < argc && r == 0; i++)
        r = run_path(argv[i]);
    printf("%s: ran %lu inputs%s\n", FUZZ_NAME, ran, r == 0 ? ", all passed" : "");
    return r == 0 ? 0 : 1;
}
