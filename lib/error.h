/*
 * error.h: the per-thread error message behind addcow_last_error().
 *
 * Each public entry point calls ac_enter() with its own name; internal code
 * that fails calls ac_error(), which formats "<call>: <what>: <reason>" into
 * the calling thread's buffer and returns the negative errno to pass up.
 */
#ifndef AC_ERROR_H
#define AC_ERROR_H

#include <errno.h>

void ac_enter(const char *call);
const char *ac_error_get(void);

/* err is a positive or negative errno; returns it negated (-|err|). */
int ac_error(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
