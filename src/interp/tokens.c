/*
 * tokens.c — token sequences with display texts for reports.
 */
#include <stdlib.h>
#include <string.h>

#include "../error.h"
#include "interp.h"

void loupe_tokens_clear(loupe_tokens *t) {
    if (!t) return;
    if (t->text)
        for (int i = 0; i < t->n; i++) free(t->text[i]);
    free(t->text);
    free(t->ids);
    memset(t, 0, sizeof *t);
}

/* Display text of one token (malloc'd). */
static loupe_status lp_token_display(const loupe_model *m, int32_t id, char **out) {
    char small[256];
    size_t n = 0;
    char *buf = small;
    loupe_status st = loupe_token_bytes(m, id, small, sizeof small, &n);
    if (st == LOUPE_ERR_ARG && n > sizeof small) { /* long token: retry with room */
        buf = malloc(n);
        if (!buf) return lp_fail(LOUPE_ERR_NOMEM, "out of memory for token %d", id);
        st = loupe_token_bytes(m, id, buf, n, &n);
    }
    if (st == LOUPE_OK) {
        *out = lp_display_text(buf, n);
        if (!*out) st = lp_fail(LOUPE_ERR_NOMEM, "out of memory for token %d", id);
    }
    if (buf != small) free(buf);
    return st;
}

loupe_status loupe_tokens_from_ids(const loupe_model *m, const int32_t *ids, int n,
                                   loupe_tokens *out) {
    if (!m || !out || n < 0 || (n && !ids))
        return lp_fail(LOUPE_ERR_ARG, "loupe_tokens_from_ids: bad arguments");
    memset(out, 0, sizeof *out);
    out->ids = malloc((size_t)(n ? n : 1) * sizeof *out->ids);
    out->text = calloc((size_t)(n ? n : 1), sizeof *out->text);
    if (!out->ids || !out->text) {
        loupe_tokens_clear(out);
        return lp_fail(LOUPE_ERR_NOMEM, "out of memory for %d tokens", n);
    }
    out->n = n;
    if (n) memcpy(out->ids, ids, (size_t)n * sizeof *ids);
    for (int i = 0; i < n; i++) {
        loupe_status st = lp_token_display(m, ids[i], &out->text[i]);
        if (st != LOUPE_OK) {
            loupe_tokens_clear(out);
            return st;
        }
    }
    return LOUPE_OK;
}

loupe_status loupe_tokens_from_text(const loupe_model *m, const char *text, int add_special,
                                    loupe_tokens *out) {
    if (!m || !text || !out) return lp_fail(LOUPE_ERR_ARG, "loupe_tokens_from_text: NULL argument");
    size_t len = strlen(text), n = 0, cap = len + 8;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) return lp_fail(LOUPE_ERR_NOMEM, "out of memory tokenizing %zu bytes", len);
    loupe_status st = loupe_tokenize(m, text, len, add_special, 1, ids, cap, &n);
    if (st == LOUPE_ERR_ARG && n > cap) { /* more tokens than bytes (special tokens) */
        int32_t *more = realloc(ids, n * sizeof *ids);
        if (!more) {
            free(ids);
            return lp_fail(LOUPE_ERR_NOMEM, "out of memory for %zu tokens", n);
        }
        ids = more;
        cap = n;
        st = loupe_tokenize(m, text, len, add_special, 1, ids, cap, &n);
    }
    if (st == LOUPE_OK) st = loupe_tokens_from_ids(m, ids, (int)n, out);
    free(ids);
    return st;
}
