/*
 * engine.c — slots, the job queue and generation for `loupe serve`.
 *
 * Each slot is a worker thread with its own loupe_session over the shared
 * model. A job (one HTTP request) is generated entirely by one slot:
 * every prompt x n choices in turn, the session reset between them. Output
 * goes into the job's buffer (SSE events as they come, or the whole JSON
 * body at the end) and the connection thread forwards it.
 *
 * A "logits" hook keeps a copy of the last logits row, which is the
 * distribution the sampled token came from (for logprobs). The session's
 * abort check stops the forward pass between layers once the job is
 * cancelled, so a client that leaves stops even a long prefill — and an
 * interpretability job (/v1/loupe/), whose library calls clear the
 * session's hooks: generation jobs register the hook again.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server.h"

#define SRV_ECHO_ROWS 16 /* prompt positions scored per eval for echo logprobs */

typedef struct {
    struct srv_engine *e;
    loupe_session *s;
    pthread_t th;
    int started;
    srv_job *job;   /* the job being generated (worker thread only) */
    int want_logits;
    float *logits;  /* (n_vocab) last row the "logits" hook saw */
    float *rows;    /* (SRV_ECHO_ROWS, n_vocab) */
} srv_slot;

struct srv_engine {
    const srv_model *sm;
    srv_config cfg;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    srv_job *head, *tail; /* waiting jobs, FIFO */
    int n_queued, busy;
    atomic_int stopping;
    srv_slot *slots;      /* (n_slots) */
    int n_slots;
    atomic_uchar *special; /* (n_vocab) 0 unknown, 1 normal, 2 control token */
};

/* ------------------------------------------------------------------- jobs */

srv_job *srv_job_new(srv_request *req) {
    srv_job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->n_choices = req->n_prompts * req->n;
    j->choices = calloc((size_t)j->n_choices, sizeof *j->choices);
    if (!j->choices) {
        free(j);
        return NULL;
    }
    j->req = *req;
    memset(req, 0, sizeof *req);
    for (int i = 0; i < j->n_choices; i++) j->choices[i].index = i;
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    j->refs = 1;
    return j;
}

void srv_job_release(srv_job *j) {
    if (!j) return;
    pthread_mutex_lock(&j->mu);
    int left = --j->refs;
    pthread_mutex_unlock(&j->mu);
    if (left) return;
    for (int i = 0; i < j->n_choices; i++) {
        free(j->choices[i].text);
        free(j->choices[i].toks);
    }
    free(j->choices);
    free(j->out);
    srv_request_free(&j->req);
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j);
}

int srv_job_wait(srv_job *j, size_t seen, int ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)ms * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_mutex_lock(&j->mu);
    if (!j->done && j->n_out <= seen) pthread_cond_timedwait(&j->cv, &j->mu, &ts);
    int done = j->done;
    pthread_mutex_unlock(&j->mu);
    return done;
}

/* Appends to the output under the lock; false on OOM. */
static int out_append(srv_job *j, const char *a, const char *b, const char *c) {
    size_t la = strlen(a), lb = b ? strlen(b) : 0, lc = c ? strlen(c) : 0;
    if (j->n_out + la + lb + lc + 1 > j->cap_out) {
        size_t cap = 2 * j->cap_out + la + lb + lc + 256;
        char *o = realloc(j->out, cap);
        if (!o) return 0;
        j->out = o;
        j->cap_out = cap;
    }
    memcpy(j->out + j->n_out, a, la);
    if (lb) memcpy(j->out + j->n_out + la, b, lb);
    if (lc) memcpy(j->out + j->n_out + la + lb, c, lc);
    j->n_out += la + lb + lc;
    j->out[j->n_out] = 0;
    return 1;
}

/* One server-sent event "data: <json>\n\n"; takes json. */
static void emit(srv_job *j, char *json) {
    if (!json) return;
    pthread_mutex_lock(&j->mu);
    if (!out_append(j, "data: ", json, "\n\n")) atomic_store(&j->cancel, 1);
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    free(json);
}

/* Ends the job: body (taken; may be NULL) appended, done set. */
static void finish(srv_job *j, int status, char *body) {
    pthread_mutex_lock(&j->mu);
    if (body && !j->out) { /* the whole answer: keep it, no copy (documents can be large) */
        j->n_out = strlen(body);
        j->cap_out = j->n_out + 1;
        j->out = body;
        body = NULL;
    }
    if (body && !out_append(j, body, NULL, NULL)) status = 500;
    j->status = status;
    j->done = 1;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    free(body);
}

static void finish_error(srv_job *j, int status, const char *type, const char *code, const char *msg) {
    srv_error err;
    srv_error_set(&err, status, type, code, NULL, "%s", msg);
    char *body = srv_error_json(&err);
    if (j->req.stream && body) {
        emit(j, body);
        finish(j, status, NULL);
    } else {
        finish(j, status, body);
    }
}

/* Answers a cancelled job: 503 when the server stops, else nobody listens. */
static void finish_cancelled(srv_engine *e, srv_job *j) {
    if (e->stopping)
        finish_error(j, 503, "server_error", "server_shutting_down", "the server is shutting down");
    else
        finish(j, 499, NULL); /* the client left: nobody reads this */
}

/* ------------------------------------------------------------------ hooks */

/* The session's abort check (kept when hooks are cleared). */
static int slot_aborted(void *user) {
    srv_slot *sl = user;
    return sl->job && atomic_load(&sl->job->cancel);
}

static int hook_logits(void *user, const loupe_activation *a) {
    srv_slot *sl = user;
    if (sl->want_logits)
        memcpy(sl->logits, a->data + (size_t)(a->T - 1) * (size_t)a->width, (size_t)a->width * sizeof(float));
    return 0;
}

/* (Re)registers the slot's hooks: interp jobs clear them. */
static loupe_status slot_hooks(srv_slot *sl) {
    loupe_session_clear_hooks(sl->s);
    return loupe_session_add_hook(sl->s, "logits", hook_logits, sl);
}

/* -------------------------------------------------------------- logprobs */

/* Log-probability of id and the k most likely tokens (ties: lower id
 * first) under the raw model distribution logits (n_vocab). */
static void score_token(const float *logits, int n_vocab, int32_t id, int k, srv_tok *t) {
    float mx = -INFINITY;
    for (int v = 0; v < n_vocab; v++) mx = logits[v] > mx ? logits[v] : mx;
    double sum = 0;
    for (int v = 0; v < n_vocab; v++) sum += exp((double)(logits[v] - mx));
    float lse = mx + (float)log(sum);
    memset(t, 0, sizeof *t);
    t->id = id;
    t->logprob = logits[id] - lse;
    t->has_logprob = 1;
    for (int v = 0; v < n_vocab && k > 0; v++) {
        if (t->n_top == k && !(logits[v] > logits[t->top_id[k - 1]])) continue;
        int at = t->n_top < k ? t->n_top++ : k - 1;
        while (at > 0 && logits[v] > logits[t->top_id[at - 1]]) {
            t->top_id[at] = t->top_id[at - 1];
            at--;
        }
        t->top_id[at] = v;
    }
    for (int i = 0; i < t->n_top; i++) t->top_lp[i] = logits[t->top_id[i]] - lse;
}

static srv_tok *push_tok(srv_choice *ch) {
    if (ch->n_toks == ch->cap_toks) {
        int cap = ch->cap_toks ? 2 * ch->cap_toks : 64;
        srv_tok *t = realloc(ch->toks, (size_t)cap * sizeof *t);
        if (!t) return NULL;
        ch->toks = t;
        ch->cap_toks = cap;
    }
    return &ch->toks[ch->n_toks++];
}

static int add_text(srv_choice *ch, const char *s, size_t n) {
    if (ch->n_text + n + 1 > ch->cap_text) {
        size_t cap = 2 * ch->cap_text + n + 256;
        char *t = realloc(ch->text, cap);
        if (!t) return 0;
        ch->text = t;
        ch->cap_text = cap;
    }
    memcpy(ch->text + ch->n_text, s, n);
    ch->n_text += n;
    ch->text[ch->n_text] = 0;
    return 1;
}

/* Is id a control token (EOS, <|im_end|>...)? Its text only tokenizes
 * back to it when special texts are parsed. Cached per id. */
static int is_control(srv_engine *e, int32_t id) {
    unsigned char c = atomic_load(&e->special[id]);
    if (c) return c == 2;
    const char *s = loupe_token_str(e->sm->m, id);
    int32_t a[4], b[4];
    size_t na = 0, nb = 0;
    int special = s && s[0] &&
                  loupe_tokenize(e->sm->m, s, strlen(s), 0, 1, a, 4, &na) == LOUPE_OK && na == 1 &&
                  a[0] == id &&
                  !(loupe_tokenize(e->sm->m, s, strlen(s), 0, 0, b, 4, &nb) == LOUPE_OK && nb == 1 && b[0] == id);
    atomic_store(&e->special[id], special ? 2 : 1);
    return special;
}

/* Log-probabilities of the prompt's tokens (echo): the first has none. */
static loupe_status prompt_logprobs(srv_slot *sl, srv_job *j, srv_choice *ch, const srv_prompt *p) {
    int V = sl->e->sm->info.n_vocab;
    srv_tok *t = push_tok(ch);
    if (!t) return LOUPE_ERR_NOMEM;
    memset(t, 0, sizeof *t);
    t->id = p->ids[0];
    t->control = is_control(sl->e, t->id);
    for (int i = 0; i + 1 < p->n; i += SRV_ECHO_ROWS) {
        int n = p->n - 1 - i < SRV_ECHO_ROWS ? p->n - 1 - i : SRV_ECHO_ROWS;
        loupe_status st = loupe_eval(sl->s, p->ids + i, n, sl->rows, 1);
        if (st != LOUPE_OK) return st;
        for (int r = 0; r < n; r++) {
            if (!(t = push_tok(ch))) return LOUPE_ERR_NOMEM;
            score_token(sl->rows + (size_t)r * (size_t)V, V, p->ids[i + r + 1], j->req.top_logprobs, t);
            t->control = is_control(sl->e, t->id);
        }
    }
    loupe_session_reset(sl->s);
    return LOUPE_OK;
}

/* ------------------------------------------------------------- generation */

typedef struct {
    srv_slot *sl;
    srv_job *j;
    srv_choice *ch;
    size_t text_sent; /* bytes of ch->text already streamed */
    int toks_sent;    /* tokens whose logprobs were streamed */
    int failed;       /* out of memory */
} gen_state;

static void stream_pending(gen_state *g, const char *finish) {
    const srv_model *sm = g->sl->e->sm;
    srv_choice *ch = g->ch;
    size_t n = ch->n_text - g->text_sent;
    if (!n && g->toks_sent == ch->n_toks && !finish) return;
    emit(g->j, srv_chunk_json(sm, &g->j->req, ch, ch->text ? ch->text + g->text_sent : NULL, n,
                              g->toks_sent, ch->n_toks, finish, 0));
    g->text_sent = ch->n_text;
    g->toks_sent = ch->n_toks;
}

static int on_token(void *user, int32_t id, const char *text, size_t len, float logprob) {
    (void)logprob;
    gen_state *g = user;
    if (atomic_load(&g->j->cancel)) return 1;
    const srv_request *r = &g->j->req;
    if (r->logprobs) {
        srv_tok *t = push_tok(g->ch);
        if (!t) return g->failed = 1;
        score_token(g->sl->logits, g->sl->e->sm->info.n_vocab, id, r->top_logprobs, t);
    }
    if (len && !add_text(g->ch, text, len)) return g->failed = 1;
    if (r->stream && len) stream_pending(g, NULL);
    return 0;
}

static loupe_status run_choice(srv_slot *sl, srv_job *j, int p, int k) {
    srv_request *r = &j->req;
    const srv_prompt *pr = &r->prompts[p];
    srv_choice *ch = &j->choices[p * r->n + k];
    gen_state g = {sl, j, ch, 0, 0, 0};
    loupe_session_reset(sl->s);
    if (r->echo && !add_text(ch, pr->text, strlen(pr->text))) return LOUPE_ERR_NOMEM;
    if (r->echo && r->logprobs) {
        loupe_status st = prompt_logprobs(sl, j, ch, pr);
        if (st != LOUPE_OK) return st;
    }
    if (r->stream && r->kind == SRV_CHAT)
        emit(j, srv_chunk_json(sl->e->sm, r, ch, NULL, 0, 0, 0, NULL, 1));
    if (r->stream) stream_pending(&g, NULL);

    loupe_generate_params gp;
    loupe_generate_default(&gp);
    gp.max_new_tokens = r->max_tokens;
    gp.sampling = r->sp;
    gp.sampling.seed = r->sp.seed + (uint64_t)ch->index;
    gp.stop = (const char *const *)r->stop;
    gp.n_stop = r->n_stop;
    gp.ignore_eos = r->ignore_eos;
    gp.on_token = on_token;
    gp.user = &g;
    sl->want_logits = r->logprobs;
    loupe_generate_result res;
    loupe_status st = loupe_generate(sl->s, pr->ids, pr->n, &gp, &res);
    if (g.failed) return LOUPE_ERR_NOMEM;
    if (st == LOUPE_ERR_CANCELLED || (st == LOUPE_OK && res.finish == LOUPE_FINISH_CANCELLED)) {
        atomic_store(&j->cancel, 1);
        return LOUPE_ERR_CANCELLED;
    }
    if (st != LOUPE_OK) return st;
    ch->n_generated = res.n_generated;
    j->completion_tokens += res.n_generated;
    ch->finish = res.finish == LOUPE_FINISH_LENGTH ? "length" : "stop";
    /* the end-of-turn token is not part of the answer's logprobs */
    if (r->logprobs && res.finish == LOUPE_FINISH_STOP && ch->n_toks > 0 &&
        is_control(sl->e, ch->toks[ch->n_toks - 1].id))
        ch->n_toks--;
    if (g.toks_sent > ch->n_toks) g.toks_sent = ch->n_toks;
    if (r->stream) stream_pending(&g, ch->finish);
    return LOUPE_OK;
}

static void run_generation(srv_slot *sl, srv_job *j) {
    srv_request *r = &j->req;
    loupe_status st = slot_hooks(sl);
    for (int p = 0; p < r->n_prompts && st == LOUPE_OK; p++) {
        j->prompt_tokens += r->prompts[p].n;
        for (int k = 0; k < r->n && st == LOUPE_OK && !atomic_load(&j->cancel); k++)
            st = run_choice(sl, j, p, k);
    }
    const srv_model *sm = sl->e->sm;
    if (atomic_load(&j->cancel) || st == LOUPE_ERR_CANCELLED) {
        finish_cancelled(sl->e, j);
    } else if (st != LOUPE_OK) {
        finish_error(j, 500, "server_error", loupe_status_name(st), loupe_last_error());
    } else if (r->stream) {
        if (r->include_usage) emit(j, srv_usage_chunk_json(sm, r, j->prompt_tokens, j->completion_tokens));
        pthread_mutex_lock(&j->mu);
        out_append(j, "data: [DONE]\n\n", NULL, NULL);
        pthread_mutex_unlock(&j->mu);
        finish(j, 200, NULL);
    } else {
        char *body = srv_response_json(sm, r, j->choices, j->n_choices, j->prompt_tokens, j->completion_tokens);
        if (body) finish(j, 200, body);
        else finish_error(j, 500, "server_error", NULL, "out of memory");
    }
}

/* -------------------------------------------------------- interpretability */

static void run_interp(srv_slot *sl, srv_job *j) {
    char *json = NULL;
    srv_error err;
    loupe_status st = srv_interp_run(sl->s, sl->e->sm, &j->req, &json, &err);
    if (atomic_load(&j->cancel) || st == LOUPE_ERR_CANCELLED) {
        free(json);
        finish_cancelled(sl->e, j);
    } else if (st != LOUPE_OK) {
        finish(j, err.status, srv_error_json(&err));
    } else {
        finish(j, 200, json);
    }
}

/* ------------------------------------------------------------------ slots */

static void *worker(void *arg) {
    srv_slot *sl = arg;
    srv_engine *e = sl->e;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        while (!e->head && !e->stopping) pthread_cond_wait(&e->cv, &e->mu);
        if (e->stopping) {
            pthread_mutex_unlock(&e->mu);
            return NULL;
        }
        srv_job *j = e->head;
        e->head = j->next;
        if (!e->head) e->tail = NULL;
        e->n_queued--;
        e->busy++;
        sl->job = j;
        pthread_mutex_unlock(&e->mu);

        if (atomic_load(&j->cancel)) finish(j, 499, NULL);
        else if (SRV_IS_INTERP(j->req.kind)) run_interp(sl, j);
        else run_generation(sl, j);

        pthread_mutex_lock(&e->mu);
        sl->job = NULL;
        e->busy--;
        pthread_mutex_unlock(&e->mu);
        srv_job_release(j);
    }
}

static loupe_status slot_init(srv_engine *e, srv_slot *sl) {
    int V = e->sm->info.n_vocab;
    sl->e = e;
    loupe_session_params sp = {.n_ctx = e->cfg.n_ctx, .n_threads = e->cfg.n_threads};
    loupe_status st = loupe_session_new(e->sm->m, &sp, &sl->s);
    if (st != LOUPE_OK) return st;
    sl->logits = calloc((size_t)V, sizeof(float));
    sl->rows = calloc((size_t)V * SRV_ECHO_ROWS, sizeof(float));
    if (!sl->logits || !sl->rows) return LOUPE_ERR_NOMEM;
    loupe_session_set_abort(sl->s, slot_aborted, sl);
    if (pthread_create(&sl->th, NULL, worker, sl) != 0) return LOUPE_ERR_INTERNAL;
    sl->started = 1;
    return LOUPE_OK;
}

loupe_status srv_engine_new(const srv_model *sm, const srv_config *cfg, srv_engine **out) {
    srv_engine *e = calloc(1, sizeof *e);
    if (!e) return LOUPE_ERR_NOMEM;
    e->sm = sm;
    e->cfg = *cfg;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    e->special = calloc((size_t)sm->info.n_vocab, sizeof *e->special);
    e->slots = calloc((size_t)cfg->parallel, sizeof *e->slots);
    loupe_status st = e->special && e->slots ? LOUPE_OK : LOUPE_ERR_NOMEM;
    for (int i = 0; i < cfg->parallel && st == LOUPE_OK; i++, e->n_slots++) st = slot_init(e, &e->slots[i]);
    if (st != LOUPE_OK) {
        srv_engine_stop(e);
        srv_engine_free(e);
        return st;
    }
    *out = e;
    return LOUPE_OK;
}

int srv_engine_submit(srv_engine *e, srv_job *j) {
    pthread_mutex_lock(&e->mu);
    int rc = 0;
    if (e->stopping) rc = -2;
    else if (e->n_queued >= e->cfg.queue + (e->n_slots - e->busy)) rc = -1;
    if (rc == 0) {
        pthread_mutex_lock(&j->mu);
        j->refs++;
        pthread_mutex_unlock(&j->mu);
        j->next = NULL;
        if (e->tail) e->tail->next = j;
        else e->head = j;
        e->tail = j;
        e->n_queued++;
        pthread_cond_signal(&e->cv);
    }
    pthread_mutex_unlock(&e->mu);
    return rc;
}

void srv_engine_stats(srv_engine *e, int *busy, int *queued, int *slots) {
    pthread_mutex_lock(&e->mu);
    *busy = e->busy;
    *queued = e->n_queued;
    *slots = e->n_slots;
    pthread_mutex_unlock(&e->mu);
}

void srv_engine_stop(srv_engine *e) {
    pthread_mutex_lock(&e->mu);
    int was = e->stopping;
    e->stopping = 1;
    srv_job *q = e->head;
    e->head = e->tail = NULL;
    e->n_queued = 0;
    for (int i = 0; i < e->n_slots; i++)
        if (e->slots[i].job) atomic_store(&e->slots[i].job->cancel, 1);
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    if (was) return;
    while (q) {
        srv_job *next = q->next;
        finish_error(q, 503, "server_error", "server_shutting_down", "the server is shutting down");
        srv_job_release(q);
        q = next;
    }
    for (int i = 0; i < e->n_slots; i++)
        if (e->slots[i].started) pthread_join(e->slots[i].th, NULL);
}

void srv_engine_free(srv_engine *e) {
    if (!e) return;
    for (int i = 0; i < e->n_slots; i++) {
        if (e->slots[i].s) loupe_session_free(e->slots[i].s);
        free(e->slots[i].logits);
        free(e->slots[i].rows);
    }
    free(e->slots);
    free(e->special);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e);
}
