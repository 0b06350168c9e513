/*
 * error.c: per-thread error messages.
 */
#include "config.h"

#include "hot.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "error.h"

#define AC_ERRMSG_MAX 2048

static __thread char errmsg[AC_ERRMSG_MAX];
/* The public call running, written by every call.  Default (dynamic) TLS
 * model: an initial-exec variable would make dlopen() of the library fail
 * ("cannot allocate memory in static TLS block") in hosts that load it
 * late, such as Python through ctypes (python/test_addcow.py). */
static __thread const char *current_call;

AC_HOT void ac_enter(const char *call)
{
    current_call = call;
}

const char *ac_error_get(void)
{
    return errmsg;
}

int ac_error(int err, const char *fmt, ...)
{
    char what[AC_ERRMSG_MAX];
    char reason[256];
    va_list ap;

    if (err < 0)
        err = -err;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    /* GNU strerror_r: thread-safe, may return a static string. */
    const char *r = strerror_r(err, reason, sizeof(reason));
    /* Long messages are cut, never overflowed. */
    if (snprintf(errmsg, sizeof(errmsg), "%s: %s: %s",
                 current_call != NULL ? current_call : "addcow", what, r) < 0)
        errmsg[0] = '\0';
    return -err;
}
