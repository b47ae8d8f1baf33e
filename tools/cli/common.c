/*
 * common.c — helpers shared by the `loupe` subcommands.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int cli_fail(const char *fmt, ...) {
    fputs("loupe: error: ", stderr);
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
    } else {
        fputs(loupe_last_error(), stderr);
    }
    fputc('\n', stderr);
    return 1;
}

int cli_select_isa(const char *name) {
    const char *env = getenv("LOUPE_ISA");
    if (!name && env && env[0]) name = env;
    if (!name) return 0;
    if (loupe_set_isa(name) != LOUPE_OK) return cli_fail(NULL);
    return 0;
}

int cli_open_model(const char *path, int n_threads, loupe_model **out) {
    loupe_model_params mp = {.n_threads = n_threads};
    if (loupe_model_open(path, &mp, out) != LOUPE_OK) return cli_fail(NULL);
    return 0;
}

int cli_read_file(const char *path, char **out, size_t *len) {
    int is_stdin = strcmp(path, "-") == 0;
    FILE *f = is_stdin ? stdin : fopen(path, "rb");
    if (!f) return cli_fail("%s: cannot open", path);
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - 1 - n, f);
        if (n < cap - 1) break;
        char *bigger = realloc(buf, cap * 2);
        if (!bigger) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = bigger;
        cap *= 2;
    }
    int bad = ferror(f);
    if (!is_stdin) fclose(f);
    if (!buf) return cli_fail("%s: out of memory", path);
    if (bad) {
        free(buf);
        return cli_fail("%s: read error", is_stdin ? "stdin" : path);
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

int cli_tokenize_text(const loupe_model *m, const char *text, size_t len,
                      int add_special, int parse_special, int32_t **ids, size_t *n) {
    size_t cap = len + 16, need = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        int32_t *buf = malloc(cap * sizeof *buf);
        if (!buf) return cli_fail("out of memory tokenizing %zu bytes", len);
        loupe_status st = loupe_tokenize(m, text, len, add_special, parse_special,
                                         buf, cap, &need);
        if (st == LOUPE_OK) {
            *ids = buf;
            *n = need;
            return 0;
        }
        free(buf);
        if (st != LOUPE_ERR_ARG || need <= cap) return cli_fail(NULL);
        cap = need; /* too small: retry with the size asked for */
    }
    return cli_fail(NULL);
}
