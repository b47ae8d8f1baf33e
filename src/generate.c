/*
 * generate.c — prompt prefill, then token-by-token decoding with the
 * sampler, streaming UTF-8-safe text through the caller's callback.
 *
 * Stop strings: generated text is held back while its end could still be
 * the start of a stop string, so no part of a stop string is ever emitted
 * and stop strings spanning token boundaries are found. The matched stop
 * string and everything after it are dropped.
 *
 * Control tokens (BOS, EOS with ignore_eos, <|im_end|>...) produce no text,
 * as with Hugging Face's decode(skip_special_tokens=True) and llama.cpp's
 * printed output.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "sampler.h"
#include "session.h"

/* -------------------------------------------------------------- defaults */

void loupe_generate_default(loupe_generate_params *p) {
    memset(p, 0, sizeof *p);
    p->max_new_tokens = 0; /* until EOS or the end of the context */
    loupe_sampling_default(&p->sampling);
}

/* ----------------------------------------------------------------- state */

typedef struct {
    loupe_session *s;
    const lp_tokenizer *tok;
    const loupe_generate_params *p;
    lp_sampler *smp;
    float *logits;  /* (n_vocab) next-token logits */
    lp_detok detok;
    char *piece;    /* (cap_piece) text of one token */
    size_t cap_piece;
    char *held;     /* (cap_held) generated text not yet emitted */
    size_t n_held, cap_held;
} lp_gen;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static void gen_free(lp_gen *g) {
    lp_sampler_free(g->smp);
    free(g->logits);
    free(g->piece);
    free(g->held);
}

static loupe_status gen_init(lp_gen *g, loupe_session *s,
                             const loupe_generate_params *p) {
    memset(g, 0, sizeof *g);
    g->s = s;
    g->p = p;
    g->tok = s->m->tok;
    int n_vocab = s->m->hp.n_vocab;
    LP_TRY(lp_sampler_new(&p->sampling, n_vocab, &g->smp));
    g->cap_piece = (size_t)lp_tok_max_token_bytes(g->tok) + 64; /* + flush room */
    g->cap_held = 256;
    g->logits = malloc((size_t)n_vocab * sizeof *g->logits);
    g->piece = malloc(g->cap_piece);
    g->held = malloc(g->cap_held);
    if (!g->logits || !g->piece || !g->held) {
        gen_free(g);
        return lp_fail(LOUPE_ERR_NOMEM, "loupe_generate: out of memory (n_vocab %d)",
                       n_vocab);
    }
    lp_detok_init(&g->detok, g->tok);
    return LOUPE_OK;
}

/* ------------------------------------------------------------ arguments */

static loupe_status check_args(const loupe_session *s, const int32_t *prompt,
                               int n_prompt, const loupe_generate_params *p) {
    if (!s || !p) return lp_fail(LOUPE_ERR_ARG, "loupe_generate: NULL session or params");
    if (!s->m->tok)
        return lp_fail(LOUPE_ERR_TOKENIZER, "loupe_generate: the model has no tokenizer");
    if (n_prompt < 1 || !prompt)
        return lp_fail(LOUPE_ERR_ARG,
                       "loupe_generate: empty prompt (give at least one token, e.g. BOS)");
    int n_vocab = s->m->hp.n_vocab;
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= n_vocab)
            return lp_fail(LOUPE_ERR_ARG,
                           "loupe_generate: prompt token %d (index %d) outside the "
                           "vocabulary [0, %d)", (int)prompt[i], i, n_vocab);
    if (p->n_stop < 0 || (p->n_stop > 0 && !p->stop))
        return lp_fail(LOUPE_ERR_ARG, "loupe_generate: bad stop list (n_stop %d)",
                       p->n_stop);
    for (int i = 0; i < p->n_stop; i++)
        if (!p->stop[i] || !p->stop[i][0])
            return lp_fail(LOUPE_ERR_ARG, "loupe_generate: stop string %d is empty", i);
    LP_TRY(lp_sampling_check(&p->sampling));
    int pos = loupe_session_pos(s), n_ctx = loupe_session_n_ctx(s);
    if (n_prompt > n_ctx - pos)
        return lp_fail(LOUPE_ERR_CONTEXT,
                       "the prompt has %d tokens but the context holds %d "
                       "(%d already in use): use a shorter prompt or a larger context",
                       n_prompt, n_ctx, pos);
    return LOUPE_OK;
}

/* ------------------------------------------------------------ streaming */

static loupe_status held_append(lp_gen *g, const char *text, size_t n) {
    if (g->n_held + n > g->cap_held) {
        size_t cap = g->cap_held;
        while (cap < g->n_held + n) cap *= 2;
        char *h = realloc(g->held, cap);
        if (!h) return lp_fail(LOUPE_ERR_NOMEM, "loupe_generate: out of memory");
        g->held = h;
        g->cap_held = cap;
    }
    memcpy(g->held + g->n_held, text, n);
    g->n_held += n;
    return LOUPE_OK;
}

/* Adds a token's text to the held text and hands the caller whatever can
 * no longer be part of a stop string (everything when last). Sets
 * *stopped if a stop string matched, *cancelled if the callback said so. */
static loupe_status release(lp_gen *g, int32_t id, const char *text, size_t n,
                            float logprob, int last, int *stopped, int *cancelled) {
    LP_TRY(held_append(g, text, n));
    size_t emit;
    *stopped = lp_stop_scan(g->held, g->n_held, g->p->stop, g->p->n_stop, &emit);
    if (last && !*stopped) emit = g->n_held;
    *cancelled = 0;
    if (g->p->on_token)
        *cancelled = g->p->on_token(g->p->user, id, g->held, emit, logprob) != 0;
    memmove(g->held, g->held + emit, g->n_held - emit);
    g->n_held -= emit;
    return LOUPE_OK;
}

/* ----------------------------------------------------------------- loop */

static int is_control(const lp_tokenizer *t, int32_t id) {
    return (lp_tok_get_spec(t)->attrs[id] & LP_TOKEN_SPECIAL) != 0;
}

/* Runs the prompt's text tokens through the detokenizer (output dropped)
 * so the first generated piece decodes as a continuation: SentencePiece
 * strips the leading space of a text's first piece only. Control tokens
 * are skipped here as in the output, so after a bare BOS the first
 * generated piece does start the text. */
static void detok_prime(lp_gen *g, const int32_t *prompt, int n_prompt) {
    for (int i = 0; i < n_prompt; i++)
        if (!is_control(g->tok, prompt[i]))
            lp_detok_push(&g->detok, g->tok, prompt[i], g->piece, g->cap_piece);
}

/* Samples, emits and evaluates tokens until a finish condition. */
static loupe_status decode(lp_gen *g, loupe_generate_result *r) {
    const loupe_generate_params *p = g->p;
    int n_ctx = loupe_session_n_ctx(g->s);
    for (;;) {
        float logprob;
        int32_t id = lp_sampler_sample(g->smp, g->logits, &logprob);
        r->n_generated++;
        int is_eos = !p->ignore_eos && lp_tok_is_eos(g->tok, id);
        int at_max = p->max_new_tokens > 0 && r->n_generated >= p->max_new_tokens;
        int at_ctx_end = loupe_session_pos(g->s) >= n_ctx; /* id cannot be evaluated */
        int last = is_eos || at_max || at_ctx_end;
        size_t n = is_eos || is_control(g->tok, id)
                       ? 0
                       : lp_detok_push(&g->detok, g->tok, id, g->piece, g->cap_piece);
        if (last) n += lp_detok_flush(&g->detok, g->piece + n, g->cap_piece - n);
        int stopped, cancelled;
        LP_TRY(release(g, id, g->piece, n, logprob, last, &stopped, &cancelled));
        if (stopped || is_eos) {
            r->finish = LOUPE_FINISH_STOP;
            return LOUPE_OK;
        }
        if (cancelled) {
            r->finish = LOUPE_FINISH_CANCELLED;
            return LOUPE_OK;
        }
        if (last) {
            r->finish = LOUPE_FINISH_LENGTH;
            return LOUPE_OK;
        }
        LP_TRY(lp_sampler_accept(g->smp, id));
        LP_TRY(loupe_eval(g->s, &id, 1, g->logits, 0));
    }
}

loupe_status loupe_generate(loupe_session *s, const int32_t *prompt, int n_prompt,
                            const loupe_generate_params *p,
                            loupe_generate_result *res) {
    loupe_generate_result r = {LOUPE_FINISH_NONE, n_prompt, 0, 0, 0};
    if (res) *res = r;
    LP_TRY(check_args(s, prompt, n_prompt, p));
    lp_gen g;
    LP_TRY(gen_init(&g, s, p));
    detok_prime(&g, prompt, n_prompt);
    loupe_status st = LOUPE_OK;
    for (int i = 0; i < n_prompt && st == LOUPE_OK; i++)
        st = lp_sampler_accept(g.smp, prompt[i]);
    double t0 = now_ms();
    if (st == LOUPE_OK) st = loupe_eval(s, prompt, n_prompt, g.logits, 0);
    double t1 = now_ms();
    r.prefill_ms = t1 - t0;
    if (st == LOUPE_OK) st = decode(&g, &r);
    r.decode_ms = now_ms() - t1;
    gen_free(&g);
    if (res) *res = r;
    return st;
}
