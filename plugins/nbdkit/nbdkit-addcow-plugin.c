/*
 * nbdkit-addcow-plugin: serves an add-cow image over NBD with libaddcow.
 *
 *   nbdkit addcow file=vm.add-cow [readonly=true] [backend=auto|posix|io_uring]
 *                 [cache=writeback|writethrough|none]
 *
 * One libaddcow handle serves every connection: the handle is thread-safe,
 * so requests run in parallel (NBDKIT_THREAD_MODEL_PARALLEL), a flush on
 * any connection covers the writes of all of them (multi-conn), and two
 * clients never trip over the handle's write lock.  The image is opened by
 * the first connection (so in the serving process, after nbdkit has forked
 * into the background), read-write unless readonly=true or nbdkit runs
 * with -r, and closed, with its final flush, when nbdkit unloads the
 * plugin.  A configuration error (missing file, bad option value) is caught
 * before serving.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <addcow.h>

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

static char *file;                  /* absolute: nbdkit may chdir("/") */
static bool readonly_param;
static char *backend;
static char *cache;
static pthread_mutex_t img_lock = PTHREAD_MUTEX_INITIALIZER;
static addcow_image *img;           /* shared by every connection */
static bool img_writable;

struct conn {
    bool readonly;                  /* this connection may not write */
};

/* Reports a libaddcow failure (r: a negated errno) to nbdkit and its client. */
static int fail(int r)
{
    nbdkit_error("%s", addcow_last_error());
    nbdkit_set_error(-r);
    return -1;
}

static void addcow_unload(void)
{
    if (img != NULL) {
        if (addcow_close(img) < 0)
            nbdkit_error("%s", addcow_last_error());
        img = NULL;
    }
    free(file);
    free(backend);
    free(cache);
}

static int addcow_config(const char *key, const char *value)
{
    if (strcmp(key, "file") == 0) {
        free(file);
        file = nbdkit_absolute_path(value);
        return file == NULL ? -1 : 0;
    }
    if (strcmp(key, "readonly") == 0) {
        int b = nbdkit_parse_bool(value);
        if (b < 0)
            return -1;
        readonly_param = b;
        return 0;
    }
    if (strcmp(key, "backend") == 0 || strcmp(key, "cache") == 0) {
        char **slot = key[0] == 'b' ? &backend : &cache;
        free(*slot);
        *slot = strdup(value);
        if (*slot == NULL) {
            nbdkit_error("strdup: %m");
            return -1;
        }
        return 0;
    }
    nbdkit_error("unknown parameter '%s' (expected file, readonly, backend or cache)", key);
    return -1;
}

/* The library options of backend= and cache=, in *out (NULL on failure). */
static int make_options(addcow_options **out)
{
    addcow_options *o = addcow_options_new();
    *out = NULL;
    if (o == NULL)
        return -ENOMEM;
    int r = 0;
    if (backend != NULL)
        r = addcow_options_set(o, "backend", backend);
    if (r == 0 && cache != NULL)
        r = addcow_options_set(o, "cache", cache);
    if (r < 0) {
        addcow_options_free(o);
        return r;
    }
    *out = o;
    return 0;
}

static int addcow_config_complete(void)
{
    if (file == NULL) {
        nbdkit_error("the file parameter is required: file=IMAGE.add-cow");
        return -1;
    }
    /* Check the option values now, with a clear message. */
    addcow_options *o;
    int r = make_options(&o);
    addcow_options_free(o);
    return r < 0 ? fail(r) : 0;
}

#define addcow_config_help \
    "file=<FILENAME>     (required) The add-cow image to serve.\n" \
    "readonly=<BOOL>     Open the image read-only.\n" \
    "backend=<BACKEND>   libaddcow I/O backend: auto (default), posix, io_uring.\n" \
    "cache=<MODE>        writeback (default), writethrough or none (O_DIRECT)."

/* Opens the shared handle (with img_lock held). */
static int open_image(bool readonly)
{
    addcow_options *o;
    int r = make_options(&o);
    /* Under nbdkit -r every connection is read-only: no write lock then. */
    bool writable = !readonly_param && !readonly;
    if (r == 0)
        r = addcow_open(file, writable ? ADDCOW_OPEN_RDWR : ADDCOW_OPEN_RDONLY, o, &img);
    addcow_options_free(o);
    if (r < 0)
        return fail(r);
    img_writable = writable;
    return 0;
}

static void *addcow_open_conn(int readonly)
{
    struct conn *c = malloc(sizeof(*c));
    if (c == NULL) {
        nbdkit_error("malloc: %m");
        return NULL;
    }
    pthread_mutex_lock(&img_lock);
    int r = img == NULL ? open_image(readonly) : 0;
    bool writable = img_writable;
    pthread_mutex_unlock(&img_lock);
    if (r < 0) {
        free(c);
        return NULL;
    }
    c->readonly = readonly || !writable;
    return c;
}

static void addcow_close_conn(void *handle)
{
    free(handle);           /* the shared image lives until unload */
}

static int64_t addcow_get_size_cb(void *handle)
{
    (void)handle;
    int64_t s = addcow_get_size(img);
    return s < 0 ? fail((int)s) : s;
}

static int addcow_can_write(void *handle)
{
    return !((struct conn *)handle)->readonly;
}

static int addcow_can_one(void *handle)
{
    (void)handle;
    return 1;
}

static int addcow_can_fua(void *handle)
{
    (void)handle;
    return NBDKIT_FUA_NATIVE;
}

static int addcow_can_cache(void *handle)
{
    (void)handle;
    return NBDKIT_CACHE_NONE;
}

static int addcow_pread_cb(void *handle, void *buf, uint32_t count, uint64_t offset,
                           uint32_t flags)
{
    (void)handle;
    (void)flags;
    int64_t r = addcow_pread(img, buf, count, offset);
    if (r < 0)
        return fail((int)r);
    if ((uint64_t)r < count) {
        /* nbdkit checks ranges against get_size, so this is a race with
         * a resize: report it rather than return garbage. */
        nbdkit_error("short read: %" PRId64 " of %" PRIu32 " bytes at %" PRIu64,
                     r, count, offset);
        nbdkit_set_error(EIO);
        return -1;
    }
    return 0;
}

static int flush_if_fua(uint32_t flags)
{
    if (flags & NBDKIT_FLAG_FUA) {
        int r = addcow_flush(img);
        if (r < 0)
            return fail(r);
    }
    return 0;
}

static int addcow_pwrite_cb(void *handle, const void *buf, uint32_t count, uint64_t offset,
                            uint32_t flags)
{
    (void)handle;
    int64_t r = addcow_pwrite(img, buf, count, offset);
    if (r < 0)
        return fail((int)r);
    return flush_if_fua(flags);
}

static int addcow_flush_cb(void *handle, uint32_t flags)
{
    (void)handle;
    (void)flags;
    int r = addcow_flush(img);
    return r < 0 ? fail(r) : 0;
}

/* A trim may leave the range reading anything; this one reads zeros
 * afterwards, and frees the image file's blocks of whole sectors. */
static int addcow_trim_cb(void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
    (void)handle;
    int r = addcow_write_zeroes(img, offset, count, ADDCOW_ZEROES_MAY_UNMAP);
    if (r < 0)
        return fail(r);
    return flush_if_fua(flags);
}

/* True if every byte of the range already reads as zeros because no file
 * holds data there (the runs are ADDCOW_STATUS_ZERO). */
static int range_is_zero(uint64_t offset, uint64_t count)
{
    for (uint64_t pos = offset; pos < offset + count;) {
        uint64_t run;
        int st = addcow_block_status(img, pos, offset + count - pos, &run);
        if (st < 0)
            return st;
        if (!(st & ADDCOW_STATUS_ZERO))
            return 0;
        pos += run;
    }
    return 1;
}

static int addcow_zero_cb(void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
    (void)handle;
    bool may_trim = flags & NBDKIT_FLAG_MAY_TRIM;
    if (flags & NBDKIT_FLAG_FAST_ZERO) {
        /* Fast: nothing to do, or whole sectors that a hole punch frees.
         * Anything else writes zero bytes, no faster than the client would:
         * NBD's fast-zero contract says to refuse with ENOTSUP then. */
        int z = range_is_zero( offset, count);
        if (z < 0)
            return fail(z);
        bool aligned = offset % 512 == 0 && count % 512 == 0;
        if (!z && !(may_trim && aligned)) {
            nbdkit_set_error(ENOTSUP);
            return -1;
        }
        if (z)
            return flush_if_fua(flags);
    }
    int r = addcow_write_zeroes(img, offset, count, may_trim ? ADDCOW_ZEROES_MAY_UNMAP : 0);
    if (r < 0)
        return fail(r);
    return flush_if_fua(flags);
}

/* Runs as extents: hole+zero only where reads really return zeros (no
 * file holds data there); allocated data and backing data are data. */
static int addcow_extents_cb(void *handle, uint32_t count, uint64_t offset, uint32_t flags,
                             struct nbdkit_extents *extents)
{
    (void)handle;
    uint64_t end = offset + count;
    for (uint64_t pos = offset; pos < end;) {
        uint64_t run;
        int st = addcow_block_status(img, pos, end - pos, &run);
        if (st < 0)
            return fail(st);
        uint32_t type = (st & ADDCOW_STATUS_ZERO) ? NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO : 0;
        if (nbdkit_add_extent(extents, pos, run, type) < 0)
            return -1;
        pos += run;
        if (flags & NBDKIT_FLAG_REQ_ONE)
            break;
    }
    return 0;
}

static int addcow_thread_model(void)
{
    return NBDKIT_THREAD_MODEL_PARALLEL;
}

static void addcow_dump_plugin(void)
{
    printf("addcow_library_version=%s\n", addcow_version());
}

static struct nbdkit_plugin plugin = {
    .name = "addcow",
    .longname = "nbdkit add-cow plugin (libaddcow)",
    .version = PACKAGE_VERSION,
    .description = "Serves an add-cow copy-on-write image with libaddcow.",
    .unload = addcow_unload,
    .config = addcow_config,
    .config_complete = addcow_config_complete,
    .config_help = addcow_config_help,
    .magic_config_key = "file",
    .open = addcow_open_conn,
    .close = addcow_close_conn,
    .get_size = addcow_get_size_cb,
    .can_write = addcow_can_write,
    .can_flush = addcow_can_one,
    .can_trim = addcow_can_write,
    .can_zero = addcow_can_write,
    .can_fast_zero = addcow_can_one,
    .can_fua = addcow_can_fua,
    .can_multi_conn = addcow_can_one,
    .can_extents = addcow_can_one,
    .can_cache = addcow_can_cache,
    .pread = addcow_pread_cb,
    .pwrite = addcow_pwrite_cb,
    .flush = addcow_flush_cb,
    .trim = addcow_trim_cb,
    .zero = addcow_zero_cb,
    .extents = addcow_extents_cb,
    .thread_model = addcow_thread_model,
    .dump_plugin = addcow_dump_plugin,
    .errno_is_preserved = 0,
};

NBDKIT_REGISTER_PLUGIN(plugin)
