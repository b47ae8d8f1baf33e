/*
 * compare.c — two models on the same tokens, layer by layer: Jensen-Shannon
 * divergence of their attention patterns and KL divergence of their
 * logit-lens distributions.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../error.h"
#include "../session.h"
#include "interp.h"

void loupe_comparison_free(loupe_comparison *c) {
    if (!c) return;
    loupe_tokens_clear(&c->tokens);
    free(c->attn_js);
    free(c->lens_kl);
    free(c);
}

/* Head-averaged pattern of one layer: out (T, T). */
static void lp_head_mean(const loupe_attention *a, int layer, int T, float *out) {
    size_t TT = (size_t)T * T;
    memset(out, 0, TT * sizeof *out);
    for (int h = 0; h < a->n_heads; h++) {
        const float *p = a->data + ((size_t)layer * a->n_heads + h) * TT;
        for (size_t i = 0; i < TT; i++) out[i] += p[i] / a->n_heads;
    }
}

/* Mean JS over heads (or over head means) and query rows, per layer. */
static loupe_status lp_compare_attention(const loupe_attention *A, const loupe_attention *B,
                                         int n_layers, int T, double *js) {
    size_t TT = (size_t)T * T;
    int same = A->n_heads == B->n_heads;
    float *ma = same ? NULL : malloc(TT * sizeof *ma), *mb = same ? NULL : malloc(TT * sizeof *mb);
    if (!same && (!ma || !mb)) {
        free(ma), free(mb);
        return lp_fail(LOUPE_ERR_NOMEM, "out of memory comparing patterns");
    }
    for (int l = 0; l < n_layers; l++) {
        int H = same ? A->n_heads : 1;
        if (!same) {
            lp_head_mean(A, l, T, ma);
            lp_head_mean(B, l, T, mb);
        }
        double acc = 0;
        for (int h = 0; h < H; h++) {
            const float *pa = same ? A->data + ((size_t)l * H + h) * TT : ma;
            const float *pb = same ? B->data + ((size_t)l * H + h) * TT : mb;
            for (int q = 0; q < T; q++)
                acc += lp_js_divergence(pa + (size_t)q * T, pb + (size_t)q * T, q + 1);
        }
        js[l] = acc / ((double)H * T);
    }
    free(ma), free(mb);
    return LOUPE_OK;
}

/* Mean KL(lens_A || lens_B) over positions, per layer. */
static loupe_status lp_compare_lens(loupe_session *a, loupe_session *b, const int32_t *ids,
                                    int T, int n_layers, int V, double *kl) {
    loupe_capture *ca = NULL, *cb = NULL;
    float *la = malloc((size_t)T * V * sizeof *la), *lb = malloc((size_t)T * V * sizeof *lb);
    loupe_status st = la && lb ? LOUPE_OK : lp_fail(LOUPE_ERR_NOMEM, "out of memory for lens logits");
    if (st == LOUPE_OK) st = lp_lens_capture(a, ids, T, &ca);
    if (st == LOUPE_OK) st = lp_lens_capture(b, ids, T, &cb);
    for (int l = 0; st == LOUPE_OK && l < n_layers; l++) {
        st = lp_lens_layer(a, ca, l, T, la);
        if (st == LOUPE_OK) st = lp_lens_layer(b, cb, l, T, lb);
        double acc = 0;
        for (int t = 0; st == LOUPE_OK && t < T; t++)
            acc += lp_kl_logp(la + (size_t)t * V, lb + (size_t)t * V, V);
        kl[l] = acc / T;
    }
    loupe_capture_free(ca);
    loupe_capture_free(cb);
    free(la), free(lb);
    return st;
}

loupe_status loupe_compare(loupe_session *a, loupe_session *b, const int32_t *ids, int T,
                           loupe_comparison **out) {
    if (!a || !b || !ids || T <= 0 || !out) return lp_fail(LOUPE_ERR_ARG, "loupe_compare: bad arguments");
    *out = NULL;
    lp_shape sa, sb;
    lp_session_shape(a, &sa);
    lp_session_shape(b, &sb);
    for (int t = 0; t < T; t++)
        if (ids[t] < 0 || ids[t] >= sa.n_vocab || ids[t] >= sb.n_vocab)
            return lp_fail(LOUPE_ERR_ARG, "token id %d at %d is outside a model's vocabulary", ids[t], t);
    loupe_comparison *c = calloc(1, sizeof *c);
    if (!c) return lp_fail(LOUPE_ERR_NOMEM, "out of memory");
    c->n_layers = sa.n_layers < sb.n_layers ? sa.n_layers : sb.n_layers;
    c->attn_js = calloc((size_t)c->n_layers, sizeof *c->attn_js);
    c->lens_kl = calloc((size_t)c->n_layers, sizeof *c->lens_kl);
    loupe_status st = c->attn_js && c->lens_kl ? LOUPE_OK : lp_fail(LOUPE_ERR_NOMEM, "out of memory");
    if (st == LOUPE_OK) st = loupe_tokens_from_ids(a->m, ids, T, &c->tokens);
    loupe_attention *A = NULL, *B = NULL;
    if (st == LOUPE_OK) st = loupe_attention_capture(a, ids, T, NULL, 0, NULL, 0, &A);
    if (st == LOUPE_OK) st = loupe_attention_capture(b, ids, T, NULL, 0, NULL, 0, &B);
    if (st == LOUPE_OK) st = lp_compare_attention(A, B, c->n_layers, T, c->attn_js);
    loupe_attention_free(A);
    loupe_attention_free(B);
    if (st == LOUPE_OK && sa.n_vocab == sb.n_vocab)
        st = lp_compare_lens(a, b, ids, T, c->n_layers, sa.n_vocab, c->lens_kl);
    else
        for (int l = 0; l < c->n_layers; l++) c->lens_kl[l] = NAN;
    if (st != LOUPE_OK) {
        loupe_comparison_free(c);
        return st;
    }
    *out = c;
    return LOUPE_OK;
}

char *loupe_comparison_json(const loupe_comparison *c, const char *title_a, const char *title_b) {
    if (!c) return NULL;
    cJSON *root = lp_json_doc("loupe-compare", NULL);
    cJSON *js = cJSON_CreateArray();
    int ok = lp_json_add(root, "attn_js", js);
    cJSON *kl = ok ? cJSON_CreateArray() : NULL;
    ok = ok && lp_json_add(root, "lens_kl", kl);
    for (int l = 0; ok && l < c->n_layers; l++)
        ok = lp_json_push(js, lp_json_number(c->attn_js[l])) &&
             lp_json_push(kl, lp_json_number(c->lens_kl[l]));
    ok = ok &&
         lp_json_add(root, "model_a", title_a ? cJSON_CreateString(title_a) : cJSON_CreateNull()) &&
         lp_json_add(root, "model_b", title_b ? cJSON_CreateString(title_b) : cJSON_CreateNull()) &&
         lp_json_add(root, "tokens", lp_json_strings(c->tokens.text, c->tokens.n)) &&
         lp_json_add(root, "token_ids", lp_json_ints(c->tokens.ids, c->tokens.n)) &&
         lp_json_add(root, "layers", lp_json_range(c->n_layers));
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return lp_json_finish(root);
}
