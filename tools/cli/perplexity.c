/*
 * perplexity.c — `loupe perplexity -m MODEL -f TEXT [--ctx N] [--kl-base BASE]`:
 * how well a model predicts a text, and (with --kl-base) how far a
 * quantized model's next-token distributions are from a base model's.
 *
 * The text is tokenized once (no special tokens) and cut into
 * non-overlapping windows of ctx tokens; each window is evaluated from an
 * empty cache, with BOS in front (within the ctx) when the model's
 * tokenizer adds one. Like llama-perplexity, only the second half of each
 * window is scored, so every scored token sees at least ctx/2 tokens of
 * context (--score-all scores every prediction after the first token).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char perplexity_help[] =
    "Perplexity of MODEL on the text file TEXT, in non-overlapping windows of\n"
    "--ctx tokens (BOS first when the tokenizer adds one); the second half of\n"
    "each window is scored (all predictions with --score-all).\n\n"
    "  -m, --model PATH    model to evaluate\n"
    "  -f, --file PATH     text to score (\"-\" = stdin)\n"
    "  --ctx N             window length in tokens (default: min(model n_ctx, 512);\n"
    "                      shortened to the text when it is shorter)\n"
    "  --kl-base PATH      also run this model (same vocabulary) and report the\n"
    "                      KL divergence KL(base || model) per scored token (mean,\n"
    "                      median, p99, max) and top-1 agreement\n"
    "  --score-all         score every prediction, not only the second half\n"
    "  -t, --threads N     threads (default: all cores)\n"
    "  --isa NAME          force a kernel set (scalar, avx2, avx512, neon)\n";

/* ------------------------------------------------------------ statistics */

typedef struct {
    double nll;        /* sum of -log p(token) under the model */
    double nll_base;   /* ... under the base model */
    double *kl;        /* (n) per scored token */
    int n, top1_same;
} ppl_stats;

/* log-softmax of the logit of token id over a row of V logits. */
static double log_prob(const float *row, int V, int id) {
    double mx = row[0], sum = 0;
    for (int i = 1; i < V; i++) mx = row[i] > mx ? row[i] : mx;
    for (int i = 0; i < V; i++) sum += exp((double)row[i] - mx);
    return (double)row[id] - mx - log(sum);
}

static int argmax(const float *row, int V) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (row[i] > row[best]) best = i;
    return best;
}

/* KL(P || Q) for P = softmax(p), Q = softmax(q), in nats. */
static double kl_div(const float *p, const float *q, int V) {
    double mp = p[0], mq = q[0], sp = 0, sq = 0, kl = 0;
    for (int i = 1; i < V; i++) {
        mp = p[i] > mp ? p[i] : mp;
        mq = q[i] > mq ? q[i] : mq;
    }
    for (int i = 0; i < V; i++) {
        sp += exp((double)p[i] - mp);
        sq += exp((double)q[i] - mq);
    }
    double lsp = mp + log(sp), lsq = mq + log(sq);
    for (int i = 0; i < V; i++) {
        double lp = (double)p[i] - lsp, lq = (double)q[i] - lsq;
        kl += exp(lp) * (lp - lq);
    }
    return kl > 0 ? kl : 0; /* rounding can give -1e-17 */
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Value at quantile q (0..1) of a sorted array, nearest rank. */
static double quantile(const double *v, int n, double q) {
    int i = (int)ceil(q * n) - 1;
    return v[i < 0 ? 0 : i >= n ? n - 1 : i];
}

/* ------------------------------------------------------------ evaluation */

typedef struct {
    loupe_model *m, *base;
    loupe_session *s, *sb;
    int V, ctx, bos, score_all;
    float *lg, *lb; /* (ctx, V) */
} ppl_run;

/* Evaluates one window (w[0..n)) and adds its scored tokens to st. */
static int eval_window(ppl_run *r, const int32_t *w, int n, ppl_stats *st) {
    loupe_session_reset(r->s);
    if (loupe_eval(r->s, w, n, r->lg, 1) != LOUPE_OK) return cli_fail(NULL);
    if (r->base) {
        loupe_session_reset(r->sb);
        if (loupe_eval(r->sb, w, n, r->lb, 1) != LOUPE_OK) return cli_fail(NULL);
    }
    /* logits at position i predict token i + 1 */
    int first = r->score_all ? 0 : n / 2 - 1;
    if (first < 0) first = 0;
    for (int i = first; i < n - 1; i++) {
        const float *row = r->lg + (size_t)i * r->V;
        st->nll -= log_prob(row, r->V, w[i + 1]);
        if (r->base) {
            const float *brow = r->lb + (size_t)i * r->V;
            st->nll_base -= log_prob(brow, r->V, w[i + 1]);
            st->kl[st->n] = kl_div(brow, row, r->V);
            st->top1_same += argmax(brow, r->V) == argmax(row, r->V);
        }
        st->n++;
    }
    return 0;
}

static void report(const ppl_run *r, const char *model, const char *base, ppl_stats *st,
                   int n_tokens, int n_windows) {
    printf("model:        %s\n", model);
    printf("tokens:       %d in the text; %d windows of %d; %d scored (%s)\n", n_tokens,
           n_windows, r->ctx, st->n, r->score_all ? "all predictions" : "second halves");
    printf("perplexity:   %.6f\n", exp(st->nll / st->n));
    if (!base) return;
    qsort(st->kl, (size_t)st->n, sizeof *st->kl, cmp_double);
    double sum = 0;
    for (int i = 0; i < st->n; i++) sum += st->kl[i];
    printf("base:         %s\n", base);
    printf("base ppl:     %.6f\n", exp(st->nll_base / st->n));
    printf("KL(base||model) nats/token: mean %.6g  median %.6g  p99 %.6g  max %.6g\n",
           sum / st->n, quantile(st->kl, st->n, 0.5), quantile(st->kl, st->n, 0.99),
           st->kl[st->n - 1]);
    printf("top-1 agreement: %.2f%% (%d of %d)\n", 100.0 * st->top1_same / st->n,
           st->top1_same, st->n);
}

/* BOS id when the tokenizer adds one at the start of a text, else -1. */
static int bos_of(const loupe_model *m) {
    int32_t ids[4];
    size_t n = 0;
    loupe_model_info info;
    loupe_model_get_info(m, &info);
    if (loupe_tokenize(m, "", 0, 1, 0, ids, 4, &n) != LOUPE_OK || n < 1) return -1;
    return ids[0] == info.bos_id ? ids[0] : -1;
}

static int run_windows(ppl_run *r, const int32_t *ids, int n_ids, ppl_stats *st,
                       int *n_windows) {
    int step = r->bos >= 0 ? r->ctx - 1 : r->ctx; /* text tokens per window */
    int32_t *w = malloc(sizeof *w * (size_t)r->ctx);
    if (!w) return cli_fail("out of memory");
    int rc = 0;
    *n_windows = 0;
    for (int start = 0; start + step <= n_ids && !rc; start += step) {
        int k = 0;
        if (r->bos >= 0) w[k++] = r->bos;
        memcpy(w + k, ids + start, sizeof *w * (size_t)step);
        rc = eval_window(r, w, r->ctx, st);
        (*n_windows)++;
    }
    free(w);
    return rc;
}

static int perplexity(ppl_run *r, const char *model, const char *base, const int32_t *ids,
                      int n_ids, int n_threads) {
    loupe_session_params sp = {.n_ctx = r->ctx, .n_threads = n_threads};
    if (loupe_session_new(r->m, &sp, &r->s) != LOUPE_OK) return cli_fail(NULL);
    if (r->base && loupe_session_new(r->base, &sp, &r->sb) != LOUPE_OK) return cli_fail(NULL);
    size_t cells = (size_t)r->ctx * (size_t)r->V;
    r->lg = malloc(sizeof(float) * cells);
    r->lb = r->base ? malloc(sizeof(float) * cells) : NULL;
    ppl_stats st = {0};
    st.kl = malloc(sizeof(double) * (size_t)(n_ids + 1));
    if (!r->lg || (r->base && !r->lb) || !st.kl) {
        free(st.kl);
        return cli_fail("out of memory for %d x %d logits", r->ctx, r->V);
    }
    int n_windows = 0;
    int rc = run_windows(r, ids, n_ids, &st, &n_windows);
    if (!rc && st.n == 0) rc = cli_fail("no token was scored (text too short for --ctx %d)", r->ctx);
    if (!rc) report(r, model, base, &st, n_ids, n_windows);
    free(st.kl);
    return rc;
}

/* ------------------------------------------------------------ command */

static int check_base(const ppl_run *r, const char *base) {
    if (!r->base) return 0;
    if (loupe_n_vocab(r->base) != r->V)
        return cli_fail("%s: vocabulary of %d tokens, the model has %d", base,
                        loupe_n_vocab(r->base), r->V);
    loupe_model_info a, b;
    loupe_model_get_info(r->m, &a);
    loupe_model_get_info(r->base, &b);
    if (b.n_ctx < r->ctx) return cli_fail("%s: n_ctx %d is shorter than --ctx %d", base, b.n_ctx, r->ctx);
    return 0;
}

int cli_perplexity(int argc, char **argv) {
    const char *model = NULL, *file = NULL, *base = NULL, *isa = NULL, *pos[1];
    int ctx = 0, threads = 0, score_all = 0, ctx_seen = 0;
    const cli_opt opts[] = {
        {"-m|--model", CLI_STR, &model, 0, 0, 0, NULL},
        {"-f|--file", CLI_STR, &file, 0, 0, 0, NULL},
        {"--ctx", CLI_INT, &ctx, 2, 1 << 20, 0, &ctx_seen},
        {"--kl-base", CLI_STR, &base, 0, 0, 0, NULL},
        {"--score-all", CLI_FLAG, &score_all, 0, 0, 0, NULL},
        {"-t|--threads", CLI_INT, &threads, 1, 1024, 0, NULL},
        {"--isa", CLI_STR, &isa, 0, 0, 0, NULL},
    };
    cli_spec spec = {"perplexity", "perplexity -m MODEL -f TEXT [--ctx N] [--kl-base BASE]",
                     perplexity_help, opts, 7, pos, 1, 0};
    int rc = cli_parse(&spec, argc, argv);
    if (rc) return rc < 0 ? 0 : rc;
    if (spec.n_pos && model) return cli_usage_error(&spec, "give the model once");
    if (spec.n_pos) model = pos[0];
    if (!model) return cli_usage_error(&spec, "no model given (-m PATH)");
    if (!file) return cli_usage_error(&spec, "no text given (-f PATH)");
    if (cli_select_isa(isa)) return 1;

    char *text = NULL;
    size_t len = 0, n_ids = 0;
    int32_t *ids = NULL;
    ppl_run r = {0};
    r.score_all = score_all;
    rc = cli_read_file(file, &text, &len);
    if (!rc) rc = cli_open_model(model, threads, &r.m);
    if (!rc && base) rc = cli_open_model(base, threads, &r.base);
    if (!rc) rc = cli_tokenize_text(r.m, text, len, 0, 0, &ids, &n_ids);
    if (!rc) {
        loupe_model_info info;
        loupe_model_get_info(r.m, &info);
        r.V = loupe_n_vocab(r.m);
        r.bos = bos_of(r.m);
        int room = (int)n_ids + (r.bos >= 0);
        if (!ctx_seen) ctx = info.n_ctx < 512 ? info.n_ctx : 512;
        if (ctx > info.n_ctx) rc = cli_fail("--ctx %d exceeds the model's n_ctx %d", ctx, info.n_ctx);
        if (!rc && ctx > room) {
            fprintf(stderr, "note: the text has %zu tokens: --ctx %d shortened to %d\n", n_ids,
                    ctx, room);
            ctx = room;
        }
        if (!rc && ctx < 2) rc = cli_fail("%s: too few tokens to score", file);
        r.ctx = ctx;
        if (!rc) rc = check_base(&r, base);
    }
    if (!rc) rc = perplexity(&r, model, base, ids, (int)n_ids, threads);
    loupe_session_free(r.s);
    loupe_session_free(r.sb);
    free(r.lg);
    free(r.lb);
    free(ids);
    free(text);
    loupe_model_close(r.m);
    loupe_model_close(r.base);
    return rc;
}
