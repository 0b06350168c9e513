/*
 * path.h: the rules for the paths stored in an add-cow header (FORMAT.md,
 * "Paths"): protocol prefixes, resolving relative paths against the
 * add-cow file's folder, and the "confined" policy for untrusted images.
 */
#ifndef AC_PATH_H
#define AC_PATH_H

#include <stdbool.h>

/* True if path starts with "name:" before any '/' (e.g. "nbd://h/x"). */
bool ac_path_has_protocol(const char *path);

/* True if path is relative, has no protocol prefix, and no ".." component:
 * it cannot leave the folder it is resolved against. */
bool ac_path_is_confined(const char *path);

/* The folder part of path ("" when it has no '/'), newly allocated. */
char *ac_path_dirname(const char *path);

/* Resolves a stored path against the folder of the add-cow file: absolute
 * stays as is, relative becomes dir/stored.  Newly allocated; NULL on ENOMEM. */
char *ac_path_resolve(const char *addcow_path, const char *stored);

#endif
