/*
 * options.c: string keys and values for addcow_options.
 */
#include "config.h"

#include <stddef.h>
#include <string.h>

#include "error.h"
#include "options.h"

const struct addcow_options ac_default_options = {
    .backend = AC_BACKEND_AUTO,
    .cache = AC_CACHE_WRITEBACK,
    .backing_format = AC_BFMT_AUTO,
    .locking = 1,
    .paths = AC_PATHS_ANY,
    .custom_backend = NULL,
};

struct choice {
    const char *name;
    int value;
};

/* Looks value up in a NULL-terminated table; -1 if it is not there. */
static int lookup(const struct choice *c, const char *value)
{
    for (; c->name != NULL; c++)
        if (strcmp(c->name, value) == 0)
            return c->value;
    return -1;
}

static const struct choice backends[] = {
    { "auto", AC_BACKEND_AUTO }, { "posix", AC_BACKEND_POSIX },
    { "io_uring", AC_BACKEND_IO_URING }, { NULL, 0 } };
static const struct choice caches[] = {
    { "writeback", AC_CACHE_WRITEBACK }, { "writethrough", AC_CACHE_WRITETHROUGH },
    { "none", AC_CACHE_NONE }, { NULL, 0 } };
static const struct choice formats[] = {
    { "auto", AC_BFMT_AUTO }, { "raw", AC_BFMT_RAW }, { "add-cow", AC_BFMT_ADDCOW },
    { NULL, 0 } };
static const struct choice onoff[] = { { "on", 1 }, { "off", 0 }, { NULL, 0 } };
static const struct choice policies[] = {
    { "any", AC_PATHS_ANY }, { "confined", AC_PATHS_CONFINED }, { NULL, 0 } };

static const struct {
    const char *key;
    const struct choice *choices;
    const char *allowed;
} keys[] = {
    { "backend", backends, "auto, posix, io_uring" },
    { "cache", caches, "writeback, writethrough, none" },
    { "backing-format", formats, "auto, raw, add-cow" },
    { "locking", onoff, "on, off" },
    { "paths", policies, "any, confined" },
};

int ac_options_set(struct addcow_options *o, const char *key, const char *value)
{
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        if (strcmp(keys[i].key, key) != 0)
            continue;
        int v = lookup(keys[i].choices, value);
        if (v < 0)
            return ac_error(EINVAL, "option '%s': unknown value '%s' (expected one of: %s)",
                            key, value, keys[i].allowed);
        switch (i) {
        case 0:
#ifndef HAVE_LIBURING
            if (v == AC_BACKEND_IO_URING)
                return ac_error(ENOTSUP, "option 'backend': 'io_uring' is not built "
                                "into this library (configure --with-liburing)");
#endif
            /* Whether the kernel takes io_uring is found out at open. */
            o->backend = (enum ac_backend_kind)v;
            break;
        case 1: o->cache = (enum ac_cache_mode)v; break;
        case 2: o->backing_format = (enum ac_backing_format)v; break;
        case 3: o->locking = v; break;
        case 4: o->paths = (enum ac_paths_policy)v; break;
        }
        return 0;
    }
    return ac_error(EINVAL, "option '%s': unknown key (known keys: backend, cache, "
                    "backing-format, locking, paths)", key);
}

void ac_options_set_backend_ops(struct addcow_options *o,
                                const struct ac_backend_ops *ops)
{
    o->custom_backend = ops;
}
