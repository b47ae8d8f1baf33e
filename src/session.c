/*
 * session.c — session lifetime and the loupe_eval entry point.
 */
#include "session.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "forward.h"

#define LP_MAX_BATCH 256 /* tokens per prefill chunk */

static int lp_max(int a, int b) { return a > b ? a : b; }

static void *lp_calloc_floats(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

loupe_status loupe_session_new(const loupe_model *m, const loupe_session_params *p,
                               loupe_session **out) {
    if (!m || !out) return lp_fail(LOUPE_ERR_ARG, "loupe_session_new: NULL argument");
    *out = NULL;
    const lp_hparams *hp = &m->hp;
    int n_ctx = p && p->n_ctx > 0 ? p->n_ctx : hp->n_ctx;
    if (n_ctx > hp->n_ctx && hp->arch == LP_ARCH_GPT2)
        return lp_fail(LOUPE_ERR_ARG,
                       "context %d exceeds the %d learned positions of this GPT-2 model",
                       n_ctx, hp->n_ctx);
    if (n_ctx < 1 || n_ctx > (1 << 24))
        return lp_fail(LOUPE_ERR_ARG, "context length %d out of range [1, %d]", n_ctx, 1 << 24);
    if (hp->rot_dim > 1024)
        return lp_fail(LOUPE_ERR_UNSUPPORTED, "rotary dimension %d exceeds 1024", hp->rot_dim);
    int n_threads = p && p->n_threads > 0 ? p->n_threads : lp_ncpu();

    loupe_session *s = calloc(1, sizeof *s);
    if (!s) return lp_fail(LOUPE_ERR_NOMEM, "out of memory for a session");
    s->m = m;
    s->n_ctx = n_ctx;
    s->cap_T = n_ctx < LP_MAX_BATCH ? n_ctx : LP_MAX_BATCH;
    s->pool = lp_pool_new(n_threads);

    size_t kv_dim = (size_t)hp->n_kv_heads * hp->head_dim;
    size_t q_dim = (size_t)hp->n_heads * hp->head_dim;
    size_t T = (size_t)s->cap_T;
    size_t wide = (size_t)lp_max(lp_max(hp->dim, hp->ffn_dim), (int)q_dim);
    size_t cache = (size_t)hp->n_layers * n_ctx * kv_dim;
    s->kv_type = p && p->kv_f16 ? LP_F16 : LP_F32;
    size_t kv_elt = s->kv_type == LP_F16 ? sizeof(uint16_t) : sizeof(float);
    s->k_cache = calloc(cache ? cache : 1, kv_elt);
    s->v_cache = calloc(cache ? cache : 1, kv_elt);
    s->kbuf = lp_calloc_floats(T * kv_dim);
    s->vbuf = lp_calloc_floats(T * kv_dim);
    s->history = calloc((size_t)n_ctx, sizeof(int32_t));
    s->x = lp_calloc_floats(T * hp->dim);
    s->xn = lp_calloc_floats(T * wide);
    s->q = lp_calloc_floats(T * q_dim);
    s->att = lp_calloc_floats(T * q_dim);
    s->hb = lp_calloc_floats(T * hp->ffn_dim);
    s->hb2 = lp_calloc_floats(T * hp->ffn_dim);
    s->proj = lp_calloc_floats(T * hp->dim);
    int xq_ok = 1;
    for (int i = 0; i < 2; i++) { /* [0] is also the bf16 rows, xb16 */
        s->xq[i].qs = calloc(T * wide, i == 0 ? sizeof(uint16_t) : 1);
        s->xq[i].d = lp_calloc_floats(T * (wide / LP_QK8 + 1));
        s->xq[i].corr = calloc(T * (wide / LP_QK8 + 1), sizeof(int32_t));
        xq_ok = xq_ok && s->xq[i].qs && s->xq[i].d && s->xq[i].corr;
    }
    s->xb16 = (uint16_t *)(void *)s->xq[0].qs;
    s->attn_scratch_ld = lp_attn_scratch_floats(n_ctx, hp->head_dim);
    s->attn_scratch = aligned_alloc(64, (size_t)lp_pool_size(s->pool) * s->attn_scratch_ld * sizeof(float));
    s->logits = lp_calloc_floats((size_t)hp->n_vocab);
    int task_y_ok = 1;
    if (s->pool && lp_pool_size(s->pool) > 1) {
        s->task_y_ld = ((size_t)lp_max((int)wide, hp->n_vocab) + 15) / 16 * 16;
        s->task_y = aligned_alloc(64, (size_t)lp_pool_size(s->pool) * s->task_y_ld * sizeof(float));
        task_y_ok = s->task_y != NULL;
    }
    if (!s->pool || !s->k_cache || !s->v_cache || !s->kbuf || !s->vbuf || !s->history || !s->x || !s->xn ||
        !s->q || !s->att || !s->hb || !s->hb2 || !s->proj || !xq_ok ||
        !s->attn_scratch || !s->logits || !task_y_ok) {
        loupe_session_free(s);
        return lp_fail(LOUPE_ERR_NOMEM,
                       "out of memory for a session with context %d (KV cache %.1f MiB)",
                       n_ctx, 2.0 * cache * kv_elt / (1 << 20));
    }
    *out = s;
    return LOUPE_OK;
}

void loupe_session_free(loupe_session *s) {
    if (!s) return;
    lp_pool_free(s->pool);
    free(s->k_cache);
    free(s->v_cache);
    free(s->kbuf);
    free(s->vbuf);
    free(s->history);
    free(s->x);
    free(s->xn);
    free(s->q);
    free(s->att);
    free(s->hb);
    free(s->hb2);
    free(s->proj);
    for (int i = 0; i < 2; i++) {
        free(s->xq[i].qs);
        free(s->xq[i].d);
        free(s->xq[i].corr);
        free(s->xq[i].tiles);
    }
    free(s->attn_scratch);
    free(s->logits);
    free(s->task_y);
    free(s->hooks);
    free(s->pattern);
    free(s);
}

void loupe_session_reset(loupe_session *s) {
    if (s) s->pos = 0;
}

int loupe_session_pos(const loupe_session *s) { return s ? s->pos : 0; }
int loupe_session_n_ctx(const loupe_session *s) { return s ? s->n_ctx : 0; }

loupe_status loupe_eval(loupe_session *s, const int32_t *tokens, int n, float *logits,
                        int all_logits) {
    if (!s || (!tokens && n > 0) || n < 0)
        return lp_fail(LOUPE_ERR_ARG, "loupe_eval: bad arguments");
    if (n == 0) return LOUPE_OK;
    if (n > s->n_ctx - s->pos)
        return lp_fail(LOUPE_ERR_CONTEXT,
                       "%d tokens do not fit the context: %d of %d positions are used",
                       n, s->pos, s->n_ctx);
    int n_vocab = s->m->hp.n_vocab;
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= n_vocab)
            return lp_fail(LOUPE_ERR_ARG, "token id %d at index %d is outside the vocabulary [0, %d)",
                           tokens[i], i, n_vocab);
    for (int done = 0; done < n;) {
        int T = n - done < s->cap_T ? n - done : s->cap_T;
        int last_chunk = done + T == n;
        float *out = NULL;
        if (logits && all_logits) out = logits + (size_t)done * n_vocab;
        else if (logits && last_chunk) out = logits;
        memcpy(s->history + s->pos, tokens + done, (size_t)T * sizeof(int32_t));
        LP_TRY(lp_forward(s, tokens + done, T, out, all_logits));
        done += T;
    }
    return LOUPE_OK;
}
