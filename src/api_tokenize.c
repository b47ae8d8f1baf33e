/*
 * api_tokenize.c — the public tokenizer calls of loupe.h, on a model's
 * tokenizer (m->tok).
 */
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "model.h"
#include "tokenizer/tokenizer.h"

static loupe_status need_tok(const loupe_model *m) {
    if (!m) return lp_fail(LOUPE_ERR_ARG, "tokenizer: no model");
    if (!m->tok)
        return lp_fail(LOUPE_ERR_TOKENIZER, "%s: the model has no tokenizer",
                       m->path ? m->path : "model");
    return LOUPE_OK;
}

LOUPE_API loupe_status loupe_tokenize(const loupe_model *m, const char *text,
                                      size_t len, int add_special,
                                      int parse_special, int32_t *ids,
                                      size_t cap, size_t *n_out) {
    int32_t *tmp;
    size_t n;
    if (n_out) *n_out = 0;
    LP_TRY(need_tok(m));
    if (!n_out || (!ids && cap))
        return lp_fail(LOUPE_ERR_ARG, "loupe_tokenize: n_out is NULL, or ids is NULL with cap > 0");
    LP_TRY(lp_tok_encode(m->tok, text, len, add_special, parse_special, &tmp, &n));
    *n_out = n;
    if (n > cap) {
        free(tmp);
        return lp_fail(LOUPE_ERR_ARG, "loupe_tokenize: %zu tokens do not fit in %zu", n, cap);
    }
    if (n) memcpy(ids, tmp, n * sizeof *ids);
    free(tmp);
    return LOUPE_OK;
}

LOUPE_API loupe_status loupe_token_bytes(const loupe_model *m, int32_t id,
                                         char *buf, size_t cap, size_t *n_out) {
    if (n_out) *n_out = 0;
    LP_TRY(need_tok(m));
    if (!n_out || (!buf && cap))
        return lp_fail(LOUPE_ERR_ARG, "loupe_token_bytes: n_out is NULL, or buf is NULL with cap > 0");
    int n = lp_tok_bytes(m->tok, id, buf, cap);
    if (n < 0)
        return lp_fail(LOUPE_ERR_ARG, "loupe_token_bytes: id %d outside the vocabulary (%d tokens)",
                       (int)id, lp_tok_n_vocab(m->tok));
    *n_out = (size_t)n;
    if ((size_t)n > cap)
        return lp_fail(LOUPE_ERR_ARG, "loupe_token_bytes: token %d needs %d bytes, buffer has %zu",
                       (int)id, n, cap);
    return LOUPE_OK;
}

LOUPE_API const char *loupe_token_str(const loupe_model *m, int32_t id) {
    return m ? lp_tok_piece(m->tok, id) : NULL;
}

LOUPE_API int loupe_n_vocab(const loupe_model *m) {
    return m ? lp_tok_n_vocab(m->tok) : 0;
}
