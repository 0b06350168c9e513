/*
 * options.h: the parsed form of addcow_options.
 */
#ifndef AC_OPTIONS_H
#define AC_OPTIONS_H

struct ac_backend_ops;

/* AC_BACKEND_AUTO is resolved when a file is opened (ac_select_backend). */
enum ac_backend_kind { AC_BACKEND_POSIX = 0, AC_BACKEND_IO_URING, AC_BACKEND_AUTO };
enum ac_cache_mode { AC_CACHE_WRITEBACK = 0, AC_CACHE_WRITETHROUGH, AC_CACHE_NONE };
enum ac_backing_format { AC_BFMT_AUTO = 0, AC_BFMT_RAW, AC_BFMT_ADDCOW };
enum ac_paths_policy { AC_PATHS_ANY = 0, AC_PATHS_CONFINED };

struct addcow_options {
    enum ac_backend_kind backend;
    enum ac_cache_mode cache;
    enum ac_backing_format backing_format;
    int locking;                        /* 1 = on */
    enum ac_paths_policy paths;
    /* Internal: a backend supplied by the tests (memory, fault injection,
     * recording); overrides `backend` when set. */
    const struct ac_backend_ops *custom_backend;
};

/* The defaults, for a NULL options pointer. */
extern const struct addcow_options ac_default_options;

int ac_options_set(struct addcow_options *o, const char *key, const char *value);

/* Internal hook for tests. */
void ac_options_set_backend_ops(struct addcow_options *o,
                                const struct ac_backend_ops *ops);

#endif
