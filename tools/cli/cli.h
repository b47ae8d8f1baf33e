/*
 * cli.h — shared pieces of the `loupe` subcommands: a declarative option
 * parser and the few helpers every subcommand needs (model opening, ISA
 * choice, error reporting). Each subcommand lives in tools/cli/<name>.c as
 * `int cli_<name>(int argc, char **argv)` (argv[0] is the subcommand name)
 * and is listed once in LOUPE_COMMANDS in tools/loupe.c.
 *
 * Exit codes: 0 success, 1 a library or input error ("loupe: error: ..."),
 * 2 bad command-line usage (with a usage line).
 */
#ifndef LOUPE_CLI_H
#define LOUPE_CLI_H

#include <stddef.h>
#include <stdint.h>

#include "loupe.h"

/* --------------------------------------------------------------- options */

typedef enum {
    CLI_FLAG,  /* int: set to 1                                 */
    CLI_STR,   /* const char *                                   */
    CLI_STRS,  /* cli_strs: repeatable, every value kept         */
    CLI_INT,   /* int, range-checked                             */
    CLI_U64,   /* uint64_t (decimal or 0x hex)                   */
    CLI_FLOAT  /* float, finite, range-checked                   */
} cli_kind;

typedef struct {
    const char **v; /* (n) values in command-line order */
    int n;
} cli_strs;

typedef struct {
    const char *names; /* "-m|--model": every spelling, '|'-separated */
    cli_kind kind;
    void *dest;
    double lo, hi;     /* inclusive range for CLI_INT / CLI_FLOAT       */
    int lo_open;       /* 1: lo itself is out of range                  */
    int *seen;         /* optional: set to 1 when the option was given  */
} cli_opt;

typedef struct {
    const char *cmd;   /* "run" */
    const char *usage; /* one line after "usage: loupe " */
    const char *help;  /* full text for --help (may be NULL) */
    const cli_opt *opts;
    int n_opts;
    const char **pos;  /* (max_pos) positional arguments out */
    int max_pos;
    int n_pos;
} cli_spec;

/* Parses argv[1..] (argv[0] is the subcommand). Accepts "--name value",
 * "--name=value" and "-x value"; "--" ends options. Returns 0 when parsed,
 * 2 after printing a usage error, -1 after printing --help (exit 0). */
int cli_parse(cli_spec *spec, int argc, char **argv);

/* Prints "loupe <cmd>: <message>" and the usage line to stderr; returns 2. */
int cli_usage_error(const cli_spec *spec, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* --------------------------------------------------------------- helpers */

/* Prints "loupe: error: <loupe_last_error()>" (or fmt when given); returns 1. */
int cli_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Applies --isa NAME, else a non-empty LOUPE_ISA, through loupe_set_isa.
 * Returns 0, or 1 after printing the error. */
int cli_select_isa(const char *name);

/* Opens a model; returns 0, or 1 after printing the error. */
int cli_open_model(const char *path, int n_threads, loupe_model **out);

/* Reads a whole file ("-" = stdin) into a NUL-terminated buffer. Returns
 * 0, or 1 after printing the error. */
int cli_read_file(const char *path, char **out, size_t *len);

/* Tokenizes text into a malloc'd array. Returns 0, or 1 after printing. */
int cli_tokenize_text(const loupe_model *m, const char *text, size_t len,
                      int add_special, int parse_special, int32_t **ids, size_t *n);

#endif
