/*
 * attribute.c — how much each prompt token contributes to
 * log p(target | prompt): leave-one-out occlusion, sampled Shapley values
 * and attention rollout; JSON and HTML writers.
 *
 * The perturbation of occlusion and Shapley is removal: the value of a set
 * S of prompt tokens is v(S) = log p(target | the tokens of S, in their
 * original order). A leading BOS token is not a player: it is always kept
 * (score 0). Rollout scores every token, BOS included.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../error.h"
#include "../session.h"
#include "interp.h"

#define LP_SHAPLEY_CACHE_MAX 20 /* cache v(S) by bitmask up to 2^20 subsets */
#define LP_SHAPLEY_EXACT_MAX 8  /* enumerate all n! orders up to 8 players */

const char *loupe_attr_method_name(loupe_attr_method m) {
    switch (m) {
    case LOUPE_ATTR_OCCLUSION: return "occlusion";
    case LOUPE_ATTR_SHAPLEY: return "shapley";
    case LOUPE_ATTR_ROLLOUT: return "rollout";
    }
    return "?";
}

loupe_status loupe_attr_method_parse(const char *name, loupe_attr_method *out) {
    for (int m = 0; m <= LOUPE_ATTR_ROLLOUT; m++)
        if (name && strcmp(name, loupe_attr_method_name((loupe_attr_method)m)) == 0) {
            *out = (loupe_attr_method)m;
            return LOUPE_OK;
        }
    return lp_fail(LOUPE_ERR_ARG, "unknown attribution method '%s' (occlusion, shapley, rollout)",
                   name ? name : "(null)");
}

void loupe_attribution_free(loupe_attribution *a) {
    if (!a) return;
    loupe_tokens_clear(&a->prompt);
    loupe_tokens_clear(&a->target);
    free(a->scores);
    free(a);
}

/* ------------------------------------------------------------ coalitions */

typedef struct {
    loupe_session *s;
    const int32_t *prompt, *target;
    int n, m;
    int first;          /* index of the first player (1 after a kept BOS) */
    int n_players;      /* n - first */
    int32_t *buf;       /* (n) the kept tokens */
    double *cache;      /* (2^n_players) or NULL; NAN = not computed */
    long evals;
} lp_game;

/* v(S) for the players whose bits are set in mask (players < 64) or, for
 * more players, whose keep[] flag is set. */
static loupe_status lp_game_value(lp_game *g, uint64_t mask, const unsigned char *keep,
                                  double *v) {
    if (g->cache && !isnan(g->cache[mask])) {
        *v = g->cache[mask];
        return LOUPE_OK;
    }
    int k = 0;
    for (int i = 0; i < g->first; i++) g->buf[k++] = g->prompt[i];
    for (int p = 0; p < g->n_players; p++) {
        int in = keep ? keep[p] : (int)((mask >> p) & 1);
        if (in) g->buf[k++] = g->prompt[g->first + p];
    }
    g->evals++;
    LP_TRY(loupe_target_logprob(g->s, g->buf, k, g->target, g->m, v, NULL));
    if (g->cache) g->cache[mask] = *v;
    return LOUPE_OK;
}

static loupe_status lp_occlusion(lp_game *g, loupe_attribution *a) {
    unsigned char *keep = malloc((size_t)g->n_players + 1);
    if (!keep) return lp_fail(LOUPE_ERR_NOMEM, "out of memory");
    loupe_status st = LOUPE_OK;
    memset(keep, 0, (size_t)g->n_players + 1);
    st = lp_game_value(g, 0, keep, &a->empty_logprob);
    for (int p = 0; st == LOUPE_OK && p < g->n_players; p++) {
        memset(keep, 1, (size_t)g->n_players);
        keep[p] = 0;
        double v;
        st = lp_game_value(g, 0, keep, &v);
        a->scores[g->first + p] = (float)(a->logprob - v);
    }
    free(keep);
    return st;
}

/* ------------------------------------------------------------ Shapley */

/* Adds the marginal contributions along one order of the players. */
static loupe_status lp_shapley_order(lp_game *g, const int *order, unsigned char *keep,
                                     double v_empty, double v_full, double *phi) {
    memset(keep, 0, (size_t)g->n_players);
    uint64_t mask = 0;
    double prev = v_empty;
    for (int j = 0; j < g->n_players; j++) {
        int p = order[j];
        keep[p] = 1;
        if (g->cache) mask |= (uint64_t)1 << p;
        double cur = v_full;
        if (j + 1 < g->n_players) LP_TRY(lp_game_value(g, mask, g->cache ? NULL : keep, &cur));
        phi[p] += cur - prev;
        prev = cur;
    }
    return LOUPE_OK;
}

/* Next permutation in lexicographic order; 0 after the last. */
static int lp_next_permutation(int *x, int n) {
    int i = n - 2;
    while (i >= 0 && x[i] >= x[i + 1]) i--;
    if (i < 0) return 0;
    int j = n - 1;
    while (x[j] <= x[i]) j--;
    int t = x[i];
    x[i] = x[j], x[j] = t;
    for (int a = i + 1, b = n - 1; a < b; a++, b--) t = x[a], x[a] = x[b], x[b] = t;
    return 1;
}

static loupe_status lp_shapley(lp_game *g, const loupe_attr_params *p, loupe_attribution *a) {
    int np = g->n_players;
    double *phi = calloc((size_t)np + 1, sizeof *phi);
    int *order = malloc(((size_t)np + 1) * sizeof *order);
    unsigned char *keep = calloc((size_t)np + 1, 1);
    if (!phi || !order || !keep) {
        free(phi), free(order), free(keep);
        return lp_fail(LOUPE_ERR_NOMEM, "out of memory for Shapley sampling");
    }
    loupe_status st = lp_game_value(g, 0, g->cache ? NULL : keep, &a->empty_logprob);
    long fact = 1;
    for (int i = 2; i <= np && fact <= p->samples; i++) fact *= i;
    a->exact = np <= LP_SHAPLEY_EXACT_MAX && fact <= p->samples;
    for (int i = 0; i < np; i++) order[i] = i;
    uint64_t rng = p->seed;
    long count = 0;
    while (st == LOUPE_OK) {
        if (!a->exact) {
            if (count == p->samples) break;
            for (int i = np - 1; i > 0; i--) { /* Fisher-Yates */
                int j = lp_rng_below(&rng, i + 1);
                int t = order[i];
                order[i] = order[j], order[j] = t;
            }
        }
        st = lp_shapley_order(g, order, keep, a->empty_logprob, a->logprob, phi);
        count++;
        if (a->exact && !lp_next_permutation(order, np)) break;
    }
    for (int i = 0; st == LOUPE_OK && i < np; i++) a->scores[g->first + i] = (float)(phi[i] / count);
    a->samples = (int)count;
    free(phi), free(order), free(keep);
    return st;
}

/* ------------------------------------------------------------ rollout */

/* Score of prompt token i: the rollout weight on it, averaged over the
 * positions that predict the target tokens (n-1 .. n+m-2). */
static loupe_status lp_rollout_scores(loupe_session *s, const int32_t *prompt, int n,
                                      const int32_t *target, int m, float *scores) {
    int T = n + m - 1;
    int32_t *ids = malloc((size_t)T * sizeof *ids);
    float *R = malloc((size_t)T * T * sizeof *R); /* (T, T) */
    if (!ids || !R) {
        free(ids), free(R);
        return lp_fail(LOUPE_ERR_NOMEM, "out of memory for rollout");
    }
    memcpy(ids, prompt, (size_t)n * sizeof *ids);
    memcpy(ids + n, target, (size_t)(m - 1) * sizeof *ids);
    loupe_attention *att = NULL;
    loupe_status st = loupe_attention_capture(s, ids, T, NULL, 0, NULL, 0, &att);
    if (st == LOUPE_OK) st = loupe_attention_rollout(att->data, att->n_layers, att->n_heads, T, R);
    for (int i = 0; st == LOUPE_OK && i < n; i++) {
        double acc = 0;
        for (int r = n - 1; r < T; r++) acc += R[(size_t)r * T + i];
        scores[i] = (float)(acc / m);
    }
    loupe_attention_free(att);
    free(ids), free(R);
    return st;
}

/* ------------------------------------------------------------ entry */

static loupe_status lp_attribute_run(loupe_session *s, const int32_t *prompt, int n,
                                     const int32_t *target, int m, const loupe_attr_params *p,
                                     loupe_attribution *a) {
    lp_shape sh;
    lp_session_shape(s, &sh);
    LP_TRY(loupe_tokens_from_ids(s->m, prompt, n, &a->prompt));
    LP_TRY(loupe_tokens_from_ids(s->m, target, m, &a->target));
    a->scores = calloc((size_t)n, sizeof *a->scores);
    if (!a->scores) return lp_fail(LOUPE_ERR_NOMEM, "out of memory");
    loupe_session_clear_hooks(s);
    LP_TRY(loupe_target_logprob(s, prompt, n, target, m, &a->logprob, NULL));
    a->empty_logprob = NAN;
    if (p->method == LOUPE_ATTR_ROLLOUT) return lp_rollout_scores(s, prompt, n, target, m, a->scores);

    lp_game g = {s, prompt, target, n, m, 0, 0, NULL, NULL, 0};
    g.first = sh.bos_id >= 0 && prompt[0] == sh.bos_id ? 1 : 0;
    g.n_players = n - g.first;
    g.buf = malloc((size_t)n * sizeof *g.buf);
    if (p->method == LOUPE_ATTR_SHAPLEY && g.n_players <= LP_SHAPLEY_CACHE_MAX) {
        size_t nc = (size_t)1 << g.n_players;
        g.cache = malloc(nc * sizeof *g.cache);
        for (size_t i = 0; g.cache && i < nc; i++) g.cache[i] = NAN;
    }
    loupe_status st;
    if (!g.buf || (p->method == LOUPE_ATTR_SHAPLEY && g.n_players <= LP_SHAPLEY_CACHE_MAX &&
                   !g.cache))
        st = lp_fail(LOUPE_ERR_NOMEM, "out of memory for attribution");
    else if (g.n_players == 0)
        st = lp_game_value(&g, 0, (const unsigned char *)"", &a->empty_logprob);
    else if (p->method == LOUPE_ATTR_OCCLUSION)
        st = lp_occlusion(&g, a);
    else
        st = lp_shapley(&g, p, a);
    free(g.buf);
    free(g.cache);
    return st;
}

loupe_status loupe_attribute(loupe_session *s, const int32_t *prompt, int n,
                             const int32_t *target, int m, const loupe_attr_params *p,
                             loupe_attribution **out) {
    if (!s || !prompt || n <= 0 || !target || m <= 0 || !p || !out)
        return lp_fail(LOUPE_ERR_ARG, "loupe_attribute: needs a prompt and a target of >= 1 token");
    if (p->method == LOUPE_ATTR_SHAPLEY && p->samples <= 0)
        return lp_fail(LOUPE_ERR_ARG, "Shapley sampling needs >= 1 sample (got %d)", p->samples);
    if ((unsigned)p->method > LOUPE_ATTR_ROLLOUT)
        return lp_fail(LOUPE_ERR_ARG, "unknown attribution method %d", (int)p->method);
    *out = NULL;
    loupe_attribution *a = calloc(1, sizeof *a);
    if (!a) return lp_fail(LOUPE_ERR_NOMEM, "out of memory");
    a->method = p->method;
    loupe_status st = lp_attribute_run(s, prompt, n, target, m, p, a);
    loupe_session_clear_hooks(s);
    loupe_session_reset(s);
    if (st != LOUPE_OK) {
        loupe_attribution_free(a);
        return st;
    }
    *out = a;
    return LOUPE_OK;
}

/* ------------------------------------------------------------ writers */

char *loupe_attribution_json(const loupe_attribution *a, const char *title) {
    if (!a) return NULL;
    int n = a->prompt.n;
    cJSON *root = lp_json_doc("loupe-attribution", title);
    int ok = root &&
             lp_json_add(root, "method", cJSON_CreateString(loupe_attr_method_name(a->method))) &&
             lp_json_add(root, "prompt_tokens", lp_json_strings(a->prompt.text, n)) &&
             lp_json_add(root, "prompt_ids", lp_json_ints(a->prompt.ids, n)) &&
             lp_json_add(root, "target_tokens", lp_json_strings(a->target.text, a->target.n)) &&
             lp_json_add(root, "target_ids", lp_json_ints(a->target.ids, a->target.n)) &&
             lp_json_add(root, "logprob", lp_json_number(a->logprob)) &&
             lp_json_add(root, "empty_logprob", lp_json_number(a->empty_logprob)) &&
             lp_json_add(root, "samples", cJSON_CreateNumber(a->samples)) &&
             lp_json_add(root, "exact", cJSON_CreateBool(a->exact)) &&
             lp_json_add(root, "scores", lp_json_floats(a->scores, 1, &n, 0));
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return lp_json_finish(root);
}

char *loupe_attribution_html(const loupe_attribution *a, const char *title) {
    if (!a) return NULL;
    float mx = 0;
    for (int i = 0; i < a->prompt.n; i++)
        if (fabsf(a->scores[i]) > mx) mx = fabsf(a->scores[i]);
    lp_sb b = {0};
    lp_html_begin(&b, title, "Token attribution");
    lp_sb_printf(&b, "<div class=\"meta\">method: %s · log p(target | prompt) = %.4f",
                 loupe_attr_method_name(a->method), a->logprob);
    if (isfinite(a->empty_logprob))
        lp_sb_printf(&b, " · with no prompt token: %.4f", a->empty_logprob);
    if (a->method == LOUPE_ATTR_SHAPLEY)
        lp_sb_printf(&b, " · %d permutation(s)%s", a->samples, a->exact ? " (exact)" : "");
    lp_sb_puts(&b, ". Red: the token raises the target's probability; blue: lowers it. "
                   "Hover a token for its score.</div><div class=\"tokens\" style=\"font-size:18px\">");
    for (int i = 0; i < a->prompt.n; i++) {
        float v = mx > 0 ? a->scores[i] / mx : 0;
        lp_sb_puts(&b, "<span class=\"tok\" style=\"background:");
        lp_html_signed_colour(&b, v);
        lp_sb_printf(&b, "\" title=\"%d: %.5g\">", i, (double)a->scores[i]);
        lp_sb_html_token(&b, a->prompt.text[i], 0);
        lp_sb_puts(&b, "</span>");
    }
    lp_sb_puts(&b, "<span class=\"tok\" style=\"border-bottom:2px solid #333\" title=\"target\">");
    for (int i = 0; i < a->target.n; i++) lp_sb_html_token(&b, a->target.text[i], 0);
    lp_sb_puts(&b, "</span></div><table><tr><th>#</th><th>token</th><th>id</th><th>score</th></tr>");
    for (int i = 0; i < a->prompt.n; i++) {
        lp_sb_printf(&b, "<tr><td>%d</td><td><span class=\"tok\">", i);
        lp_sb_html_token(&b, a->prompt.text[i], 1);
        lp_sb_printf(&b, "</span></td><td>%d</td><td>%.5g</td></tr>", a->prompt.ids[i],
                     (double)a->scores[i]);
    }
    lp_sb_puts(&b, "</table>");
    lp_html_end(&b);
    return lp_sb_finish(&b);
}

loupe_status loupe_attribution_write(const loupe_attribution *a, const char *title,
                                     const char *path) {
    if (!a || !path) return lp_fail(LOUPE_ERR_ARG, "loupe_attribution_write: NULL argument");
    char ext[16];
    lp_path_ext(path, ext, sizeof ext);
    char *doc;
    if (strcmp(ext, "json") == 0) doc = loupe_attribution_json(a, title);
    else if (strcmp(ext, "html") == 0 || strcmp(ext, "htm") == 0) doc = loupe_attribution_html(a, title);
    else return lp_fail(LOUPE_ERR_ARG, "%s: unknown output type '.%s' (use .json or .html)", path, ext);
    if (!doc) return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory building the document", path);
    loupe_status st = loupe_write_text(path, doc);
    free(doc);
    return st;
}
