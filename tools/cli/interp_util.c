/*
 * interp_util.c — helpers shared by the interpretability subcommands.
 */
#include <stdlib.h>
#include <string.h>

#include "interp_cli.h"

int icli_open(const char *path, const char *isa, int n_threads, int n_ctx, icli_model *out) {
    memset(out, 0, sizeof *out);
    if (cli_select_isa(isa) || cli_open_model(path, n_threads, &out->m)) return 1;
    loupe_model_get_info(out->m, &out->info);
    loupe_session_params sp = {.n_ctx = n_ctx, .n_threads = n_threads};
    if (loupe_session_new(out->m, &sp, &out->s) != LOUPE_OK) {
        icli_close(out);
        return cli_fail(NULL);
    }
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/') len--;
    size_t start = len;
    while (start > 0 && path[start - 1] != '/') start--;
    snprintf(out->title, sizeof out->title, "%.*s", (int)(len - start), path + start);
    return 0;
}

void icli_close(icli_model *im) {
    if (im->s) loupe_session_free(im->s);
    if (im->m) loupe_model_close(im->m);
    memset(im, 0, sizeof *im);
}

static int icli_tokens(const icli_model *im, const char *text, size_t len, int special,
                       const char *what, int32_t **ids, int *n) {
    size_t count = 0;
    if (cli_tokenize_text(im->m, text, len, special, special, ids, &count)) return 1;
    if (count == 0) {
        free(*ids);
        *ids = NULL;
        return cli_fail("the %s has no tokens", what);
    }
    *n = (int)count;
    return 0;
}

int icli_prompt(const icli_model *im, const char *text, const char *file, int32_t **ids, int *n) {
    if (!file) return icli_tokens(im, text ? text : "", strlen(text ? text : ""), 1, "prompt", ids, n);
    char *buf = NULL;
    size_t len = 0;
    if (cli_read_file(file, &buf, &len)) return 1;
    int rc = icli_tokens(im, buf, len, 1, "prompt", ids, n);
    free(buf);
    return rc;
}

int icli_target(const icli_model *im, const char *text, int32_t **ids, int *n) {
    return icli_tokens(im, text, strlen(text), 0, "target", ids, n);
}

/* Columns a UTF-8 string takes, counting one per character. */
static int icli_columns(const char *s, size_t n) {
    int c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

void icli_put_token(FILE *f, const char *text, int width) {
    char buf[256];
    size_t k = 0;
    for (const char *p = text; *p && k + 4 < sizeof buf; p++) {
        if (*p == ' ') { /* U+2423 OPEN BOX: a space you can see */
            memcpy(buf + k, "\xe2\x90\xa3", 3);
            k += 3;
        } else if (*p == '\n' || *p == '\t' || *p == '\r') {
            buf[k++] = '\\';
            buf[k++] = *p == '\n' ? 'n' : *p == '\t' ? 't' : 'r';
        } else {
            buf[k++] = *p;
        }
    }
    buf[k] = 0;
    if (width <= 0) {
        fputs(buf, f);
        return;
    }
    /* cut at a character boundary to width columns, then pad */
    size_t end = 0;
    int cols = 0;
    while (end < k) {
        size_t next = end + 1;
        while (next < k && ((unsigned char)buf[next] & 0xC0) == 0x80) next++;
        if (cols + 1 > width) break;
        cols++;
        end = next;
    }
    fwrite(buf, 1, end, f);
    for (int i = icli_columns(buf, end); i < width; i++) fputc(' ', f);
}

int icli_write_doc(const char *path, char *doc) {
    if (!doc) return cli_fail("%s: out of memory building the document", path);
    int rc = 0;
    if (strcmp(path, "-") == 0) {
        fputs(doc, stdout);
        fputc('\n', stdout);
    } else if (loupe_write_text(path, doc) != LOUPE_OK) {
        rc = cli_fail(NULL);
    }
    loupe_interp_free(doc);
    return rc;
}
