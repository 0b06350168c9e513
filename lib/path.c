/*
 * path.c: stored-path rules.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "path.h"

bool ac_path_has_protocol(const char *path)
{
    size_t n = strcspn(path, ":/");
    return path[n] == ':';
}

bool ac_path_is_confined(const char *path)
{
    if (path[0] == '/' || ac_path_has_protocol(path))
        return false;
    for (const char *p = path; *p != '\0';) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return false;
        p += n;
        while (*p == '/')
            p++;
    }
    return true;
}

char *ac_path_dirname(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        return strdup("");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

char *ac_path_resolve(const char *addcow_path, const char *stored)
{
    if (stored[0] == '/')
        return strdup(stored);
    char *dir = ac_path_dirname(addcow_path);
    if (dir == NULL)
        return NULL;
    char *out;
    if (dir[0] == '\0')
        out = strdup(stored);
    else if (asprintf(&out, "%s%s%s", dir, strcmp(dir, "/") == 0 ? "" : "/", stored) < 0)
        out = NULL;
    free(dir);
    return out;
}
