/*
 * chatfmt.c — from messages or text to prompt tokens, shared by
 * `loupe serve` and `loupe chat`.
 */
#include <stdlib.h>
#include <string.h>

#include "server.h"

void srv_prompt_free(srv_prompt *p) {
    free(p->ids);
    free(p->text);
    memset(p, 0, sizeof *p);
}

static loupe_status tokenize(const loupe_model *m, const char *text, size_t len, int add_special,
                             int parse_special, srv_prompt *out) {
    size_t cap = len + 16, need = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        int32_t *ids = malloc(cap * sizeof *ids);
        if (!ids) return LOUPE_ERR_NOMEM;
        loupe_status st = loupe_tokenize(m, text, len, add_special, parse_special, ids, cap, &need);
        if (st == LOUPE_OK) {
            out->ids = ids;
            out->n = (int)need;
            return LOUPE_OK;
        }
        free(ids);
        if (st != LOUPE_ERR_ARG || need <= cap) return st;
        cap = need;
    }
    return LOUPE_ERR_INTERNAL;
}

static loupe_status text_tokens(const loupe_model *m, const char *text, size_t len, int special,
                                srv_prompt *out) {
    memset(out, 0, sizeof *out);
    out->text = malloc(len + 1);
    if (!out->text) return LOUPE_ERR_NOMEM;
    memcpy(out->text, text, len);
    out->text[len] = 0;
    loupe_status st = tokenize(m, text, len, special, special, out);
    if (st != LOUPE_OK) srv_prompt_free(out);
    return st;
}

loupe_status srv_text_prompt(const loupe_model *m, const char *text, size_t len, srv_prompt *out) {
    return text_tokens(m, text, len, 1, out);
}

loupe_status srv_plain_text(const loupe_model *m, const char *text, size_t len, srv_prompt *out) {
    return text_tokens(m, text, len, 0, out);
}

/* Templates write BOS themselves, hence add_special = 0. */
loupe_status srv_chat_prompt(const loupe_model *m, const loupe_chat_message *msgs, int n,
                             srv_prompt *out) {
    memset(out, 0, sizeof *out);
    loupe_status st = loupe_chat_render(m, msgs, n, 1, &out->text);
    if (st != LOUPE_OK) return st;
    st = tokenize(m, out->text, strlen(out->text), 0, 1, out);
    if (st != LOUPE_OK) srv_prompt_free(out);
    return st;
}

int srv_chat_stops(const loupe_model *m, const char *const **stops) {
    static const char *const fallback[] = {"\nUser:"};
    if (loupe_chat_template(m)) {
        *stops = NULL;
        return 0;
    }
    *stops = fallback;
    return 1;
}

/* Copies raw token bytes as valid UTF-8: each invalid byte -> U+FFFD. */
size_t srv_token_text(const loupe_model *m, int32_t id, char *buf, size_t cap, unsigned char *raw,
                      size_t *n_raw) {
    unsigned char bytes[256];
    size_t n = 0;
    if (loupe_token_bytes(m, id, (char *)bytes, sizeof bytes, &n) != LOUPE_OK) n = 0;
    if (n > sizeof bytes) n = sizeof bytes;
    if (raw) {
        memcpy(raw, bytes, n);
        *n_raw = n;
    }
    size_t o = 0;
    for (size_t i = 0; i < n && o + 4 < cap;) {
        unsigned char c = bytes[i];
        size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        int ok = k > 0 && i + k <= n;
        for (size_t j = 1; ok && j < k; j++) ok = (bytes[i + j] & 0xc0) == 0x80;
        if (ok) {
            memcpy(buf + o, bytes + i, k);
            o += k;
            i += k;
        } else {
            memcpy(buf + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    buf[o] = 0;
    return o;
}
