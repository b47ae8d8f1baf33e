#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char lp_msg[1024];

loupe_status lp_fail(loupe_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(lp_msg, sizeof lp_msg, fmt, ap);
    va_end(ap);
    return st;
}

void lp_error_prefix(const char *fmt, ...) {
    char pre[512], old[sizeof lp_msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    memcpy(old, lp_msg, sizeof old);
    size_t n = strlen(pre);
    if (n > sizeof lp_msg - 3) n = sizeof lp_msg - 3;
    memcpy(lp_msg, pre, n);
    memcpy(lp_msg + n, ": ", 2);
    size_t room = sizeof lp_msg - n - 3;
    size_t m = strnlen(old, room);
    memcpy(lp_msg + n + 2, old, m);
    lp_msg[n + 2 + m] = 0;
}

void lp_error_clear(void) { lp_msg[0] = 0; }

const char *loupe_last_error(void) { return lp_msg; }

const char *loupe_status_name(loupe_status s) {
    static const char *names[] = {
        "LOUPE_OK",          "LOUPE_ERR_IO",       "LOUPE_ERR_FORMAT",
        "LOUPE_ERR_UNSUPPORTED", "LOUPE_ERR_SHAPE", "LOUPE_ERR_MISSING",
        "LOUPE_ERR_NOMEM",   "LOUPE_ERR_ARG",      "LOUPE_ERR_CONTEXT",
        "LOUPE_ERR_ISA",     "LOUPE_ERR_TOKENIZER", "LOUPE_ERR_CANCELLED",
        "LOUPE_ERR_INTERNAL"};
    if ((unsigned)s < sizeof names / sizeof names[0]) return names[s];
    return "LOUPE_ERR_UNKNOWN";
}

const char *loupe_version(void) { return LOUPE_VERSION_STRING; }
