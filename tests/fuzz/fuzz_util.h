/*
 * fuzz_util.h — shared helpers of the libFuzzer targets (tests/fuzz).
 *
 * Readers take a path, so each input is written to a per-process scratch
 * directory (on /dev/shm when there is one). The targets are linked with
 * -Wl,--wrap=mmap,--wrap=munmap: a read-only private file mapping made by
 * the library becomes a heap buffer of exactly the file's size, so
 * AddressSanitizer reports a read even one byte past the end of a file
 * (a real mapping would hide it up to the end of the page).
 *
 * Invariant checks that fail call fz_fail(), which prints and aborts: the
 * fuzzer records the input as a crash.
 */
#ifndef LOUPE_FUZZ_UTIL_H
#define LOUPE_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "loupe.h"
#include "src/io/tensors.h"
#include "src/tokenizer/tokenizer.h"

/* Prints "fuzz invariant: <message>" and aborts. */
void fz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Path of name inside this process's scratch directory (static buffer
 * ring of 8). The directory is created on first use, removed at exit. */
const char *fz_path(const char *name);
/* Writes data to fz_path(name) and returns that path. */
const char *fz_write(const char *name, const uint8_t *data, size_t size);
/* Removes fz_path(name) if it exists. */
void fz_remove(const char *name);
/* Path of a fixture under the shared models dir (env LOUPE_SHARED, else the
 * ../shared beside the source tree). */
const char *fz_shared(const char *rel);

/* A failing call must leave a message (every bad input gets one). */
void fz_check_error(loupe_status st, const char *what);
/* Every tensor and metadata payload of ts lies inside its file mapping;
 * reads the first and last byte of each so ASan checks them too. */
void fz_check_tensor_set(const lp_tensor_set *ts);
/* Encodes a few fixed texts and text (if not NULL) with both
 * parse_special settings and decodes every id back (never crashes; ids in
 * range). */
void fz_exercise_tokenizer(const lp_tokenizer *tok, const char *text, size_t len);
/* loupe_model_open(path); on success describes the model, tokenizes, and
 * evaluates two tokens in a small session. expect_ok: abort if it fails
 * (seed sanity checks, env FZ_EXPECT_LOAD=1). */
void fz_open_model(const char *path);

#endif
