/*
 * error.h — status codes with a thread-local message (SQLite style).
 * Library code never prints or exits: it calls lp_fail() and returns.
 */
#ifndef LOUPE_ERROR_H
#define LOUPE_ERROR_H

#include "loupe.h"

/* Sets this thread's message (printf format) and returns st, so that
 * `return lp_fail(LOUPE_ERR_FORMAT, "%s: bad magic", path);` reads well. */
loupe_status lp_fail(loupe_status st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Prefixes the current message with "<ctx>: ". */
void lp_error_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void lp_error_clear(void);

#define LP_TRY(expr)                          \
    do {                                      \
        loupe_status lp_st_ = (expr);         \
        if (lp_st_ != LOUPE_OK) return lp_st_; \
    } while (0)

#endif
