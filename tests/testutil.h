/* testutil.h — shared helpers for the cmocka tests. */
#ifndef LOUPE_TESTUTIL_H
#define LOUPE_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

/* Path of a fixture under ../shared (env LOUPE_SHARED), e.g.
 * tu_shared("models/stories260K/stories260K.gguf"). Static buffer ring. */
const char *tu_shared(const char *rel);
/* Path under the build's test scratch dir (env LOUPE_TEST_TMP). */
const char *tu_tmp(const char *rel);
/* Path under the source tree (env LOUPE_SRC). */
const char *tu_src(const char *rel);
/* Reads a whole file (NUL-terminated); NULL on error. */
char *tu_read_file(const char *path, size_t *len);
int tu_write_file(const char *path, const void *data, size_t len);
/* Runs a shell command; returns its exit status (-1 on failure to run). */
int tu_system(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Python interpreter with numpy (env LOUPE_PYTHON). */
const char *tu_python(void);

#endif
