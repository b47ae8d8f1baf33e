/*
 * lens.c — the logit lens: final norm + unembedding applied to the residual
 * stream after every layer (resid_post.L), with JSON and HTML writers.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../error.h"
#include "../session.h"
#include "interp.h"

/* ------------------------------------------------------------ compute */

loupe_status lp_lens_capture(loupe_session *s, const int32_t *ids, int T,
                                    loupe_capture **out) {
    loupe_session_reset(s);
    loupe_session_clear_hooks(s);
    loupe_status st = loupe_capture_new(s, "resid_post.*", T, out);
    if (st == LOUPE_OK) st = loupe_eval(s, ids, T, NULL, 0);
    loupe_session_clear_hooks(s);
    loupe_session_reset(s);
    if (st != LOUPE_OK) {
        loupe_capture_free(*out);
        *out = NULL;
    }
    return st;
}

loupe_status lp_lens_layer(loupe_session *s, const loupe_capture *c, int layer, int T,
                                  float *logp) {
    lp_shape sh;
    lp_session_shape(s, &sh);
    LP_TRY(loupe_unembed(s, loupe_capture_row(c, layer, 0, 0), T, logp));
    for (int t = 0; t < T; t++) {
        float *row = logp + (size_t)t * sh.n_vocab;
        lp_log_softmax(row, sh.n_vocab, row);
    }
    return LOUPE_OK;
}

loupe_status loupe_lens_logprobs(loupe_session *s, const int32_t *ids, int T, float **out) {
    if (!s || !ids || T <= 0 || !out) return lp_fail(LOUPE_ERR_ARG, "loupe_lens_logprobs: bad arguments");
    *out = NULL;
    lp_shape sh;
    lp_session_shape(s, &sh);
    size_t plane = (size_t)T * sh.n_vocab;
    float *lp = malloc((size_t)sh.n_layers * plane * sizeof *lp); /* (L, T, V) */
    if (!lp) return lp_fail(LOUPE_ERR_NOMEM, "out of memory for %d x %d x %d lens log-probs",
                            sh.n_layers, T, sh.n_vocab);
    loupe_capture *c;
    loupe_status st = lp_lens_capture(s, ids, T, &c);
    for (int l = 0; st == LOUPE_OK && l < sh.n_layers; l++)
        st = lp_lens_layer(s, c, l, T, lp + l * plane);
    loupe_capture_free(c);
    if (st != LOUPE_OK) {
        free(lp);
        return st;
    }
    *out = lp;
    return LOUPE_OK;
}

void loupe_lens_free(loupe_lens *l) {
    if (!l) return;
    if (l->top_text) {
        size_t n = (size_t)l->n_layers * l->tokens.n * l->k;
        for (size_t i = 0; i < n; i++) free(l->top_text[i]);
    }
    loupe_tokens_clear(&l->tokens);
    free(l->top_ids);
    free(l->top_probs);
    free(l->top_text);
    free(l);
}

/* Fills the top-k of every (layer, position) from the capture. */
static loupe_status lp_lens_fill(loupe_session *s, const loupe_capture *c, loupe_lens *l) {
    lp_shape sh;
    lp_session_shape(s, &sh);
    int T = l->tokens.n, k = l->k;
    float *logp = malloc((size_t)T * sh.n_vocab * sizeof *logp); /* (T, V) */
    if (!logp) return lp_fail(LOUPE_ERR_NOMEM, "out of memory for lens logits");
    loupe_status st = LOUPE_OK;
    for (int layer = 0; st == LOUPE_OK && layer < l->n_layers; layer++) {
        st = lp_lens_layer(s, c, layer, T, logp);
        for (int t = 0; st == LOUPE_OK && t < T; t++) {
            size_t at = ((size_t)layer * T + t) * k;
            const float *row = logp + (size_t)t * sh.n_vocab;
            lp_top_k(row, sh.n_vocab, k, l->top_ids + at);
            for (int j = 0; j < k; j++) {
                l->top_probs[at + j] = expf(row[l->top_ids[at + j]]);
                loupe_tokens one;
                st = loupe_tokens_from_ids(s->m, &l->top_ids[at + j], 1, &one);
                if (st != LOUPE_OK) break;
                l->top_text[at + j] = one.text[0];
                one.text[0] = NULL;
                loupe_tokens_clear(&one);
            }
        }
    }
    free(logp);
    return st;
}

loupe_status loupe_lens_run(loupe_session *s, const int32_t *ids, int T, int k,
                            loupe_lens **out) {
    if (!s || !ids || T <= 0 || k <= 0 || !out) return lp_fail(LOUPE_ERR_ARG, "loupe_lens_run: bad arguments");
    *out = NULL;
    lp_shape sh;
    lp_session_shape(s, &sh);
    if (k > sh.n_vocab) k = sh.n_vocab;
    loupe_lens *l = calloc(1, sizeof *l);
    if (!l) return lp_fail(LOUPE_ERR_NOMEM, "out of memory");
    l->n_layers = sh.n_layers;
    l->k = k;
    loupe_status st = loupe_tokens_from_ids(s->m, ids, T, &l->tokens);
    size_t n = (size_t)sh.n_layers * T * k;
    if (st == LOUPE_OK) {
        l->top_ids = calloc(n, sizeof *l->top_ids);
        l->top_probs = calloc(n, sizeof *l->top_probs);
        l->top_text = calloc(n, sizeof *l->top_text);
        if (!l->top_ids || !l->top_probs || !l->top_text)
            st = lp_fail(LOUPE_ERR_NOMEM, "out of memory for the lens table");
    }
    loupe_capture *c = NULL;
    if (st == LOUPE_OK) st = lp_lens_capture(s, ids, T, &c);
    if (st == LOUPE_OK) st = lp_lens_fill(s, c, l);
    loupe_capture_free(c);
    if (st != LOUPE_OK) {
        loupe_lens_free(l);
        return st;
    }
    *out = l;
    return LOUPE_OK;
}

/* ------------------------------------------------------------ JSON */

char *loupe_lens_json(const loupe_lens *l, const char *title) {
    if (!l) return NULL;
    int T = l->tokens.n;
    int shape[3] = {l->n_layers, T, l->k};
    cJSON *root = lp_json_doc("loupe-lens", title);
    int ok = root && lp_json_add(root, "tokens", lp_json_strings(l->tokens.text, T)) &&
             lp_json_add(root, "token_ids", lp_json_ints(l->tokens.ids, T)) &&
             lp_json_add(root, "hook", cJSON_CreateString("resid_post")) &&
             lp_json_add(root, "layers", lp_json_range(l->n_layers)) &&
             lp_json_add(root, "k", cJSON_CreateNumber(l->k));
    cJSON *ids = ok ? cJSON_CreateArray() : NULL;
    ok = ok && lp_json_add(root, "top_ids", ids);
    cJSON *texts = ok ? cJSON_CreateArray() : NULL;
    ok = ok && lp_json_add(root, "top_tokens", texts);
    for (int i = 0; ok && i < l->n_layers; i++) {
        cJSON *li = cJSON_CreateArray();
        ok = lp_json_push(ids, li);
        cJSON *lt = ok ? cJSON_CreateArray() : NULL;
        ok = ok && lp_json_push(texts, lt);
        for (int t = 0; ok && t < T; t++) {
            size_t at = ((size_t)i * T + t) * l->k;
            ok = lp_json_push(li, lp_json_ints(l->top_ids + at, l->k)) &&
                 lp_json_push(lt, lp_json_strings(l->top_text + at, l->k));
        }
    }
    ok = ok && lp_json_add(root, "top_probs", lp_json_floats(l->top_probs, 3, shape, 0));
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return lp_json_finish(root);
}

/* ------------------------------------------------------------ HTML */

char *loupe_lens_html(const loupe_lens *l, const char *title) {
    if (!l) return NULL;
    int T = l->tokens.n, k = l->k;
    lp_sb b = {0};
    lp_html_begin(&b, title, "Logit lens");
    lp_sb_printf(&b, "<div class=\"meta\">Top-1 token of softmax(unembed(final_norm(resid_post.L))) "
                     "at each layer L (rows) and position (columns); shade = probability; "
                     "hover a cell for the top %d. A box marks the actual next token.</div>", k);
    lp_sb_puts(&b, "<table><tr><th>layer</th>");
    for (int t = 0; t < T; t++) {
        lp_sb_printf(&b, "<th title=\"position %d, id %d\"><span class=\"tok\">", t,
                     l->tokens.ids[t]);
        lp_sb_html_token(&b, l->tokens.text[t], 1);
        lp_sb_puts(&b, "</span></th>");
    }
    lp_sb_puts(&b, "</tr>");
    for (int i = 0; i < l->n_layers; i++) {
        lp_sb_printf(&b, "<tr><th>%d</th>", i);
        for (int t = 0; t < T; t++) {
            size_t at = ((size_t)i * T + t) * k;
            float p = l->top_probs[at];
            int hit = t + 1 < T && l->top_ids[at] == l->tokens.ids[t + 1];
            float v = p < 0 ? 0 : p > 1 ? 1 : p; /* white to pale blue */
            lp_sb_printf(&b, "<td style=\"background:rgb(%d,%d,255)%s\" title=\"",
                         (int)lrintf(255 - 105 * v), (int)lrintf(255 - 85 * v),
                         hit ? ";outline:2px solid #222;outline-offset:-2px" : "");
            for (int j = 0; j < k; j++) {
                lp_sb_printf(&b, "%s%.3f ", j ? "&#10;" : "", l->top_probs[at + j]);
                lp_sb_html(&b, l->top_text[at + j]);
            }
            lp_sb_puts(&b, "\"><span class=\"tok\">");
            lp_sb_html_token(&b, l->top_text[at], 1);
            lp_sb_puts(&b, "</span></td>");
        }
        lp_sb_puts(&b, "</tr>");
    }
    lp_sb_puts(&b, "</table>");
    lp_html_end(&b);
    return lp_sb_finish(&b);
}

loupe_status loupe_lens_write(const loupe_lens *l, const char *title, const char *path) {
    if (!l || !path) return lp_fail(LOUPE_ERR_ARG, "loupe_lens_write: NULL argument");
    char ext[16];
    lp_path_ext(path, ext, sizeof ext);
    char *doc;
    if (strcmp(ext, "json") == 0) doc = loupe_lens_json(l, title);
    else if (strcmp(ext, "html") == 0 || strcmp(ext, "htm") == 0) doc = loupe_lens_html(l, title);
    else return lp_fail(LOUPE_ERR_ARG, "%s: unknown output type '.%s' (use .json or .html)", path, ext);
    if (!doc) return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory building the document", path);
    loupe_status st = loupe_write_text(path, doc);
    free(doc);
    return st;
}
