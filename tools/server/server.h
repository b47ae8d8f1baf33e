/*
 * server.h — `loupe serve`: an OpenAI-compatible HTTP server over one
 * shared model, and the chat helpers `loupe chat` shares with it.
 *
 * Pieces (one file each):
 *   openai.c  request parsing/validation and response JSON (OpenAI shapes)
 *   engine.c  slots (one worker thread + loupe_session each), the bounded
 *             job queue, generation with streaming, logprobs, cancellation
 *   http.c    libmicrohttpd glue: routes, auth, error envelope, SSE,
 *             disconnect detection, start and graceful shutdown
 *   chatfmt.c chat prompts: template rendering, stop strings, tokenizing
 *   interp.c  the /v1/loupe/ endpoints: attention, logit lens, attribution
 *
 * Threads: libmicrohttpd runs one thread per connection; it parses and
 * validates the request, queues a job and waits (polling its socket so a
 * client that goes away cancels the job). N worker threads each own one
 * session and take jobs from the queue.
 */
#ifndef LOUPE_SERVER_H
#define LOUPE_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "loupe.h"
#include "loupe_interp.h"

/* ---------------------------------------------------------------- config */

typedef struct {
    const char *host;      /* listen address (default 127.0.0.1) */
    int port;              /* 0: any free port (printed at start) */
    int parallel;          /* requests generating at once (slots) */
    int queue;             /* requests waiting for a slot before 503 */
    int n_ctx;             /* context per slot */
    int n_threads;         /* threads per slot */
    const char *api_key;   /* NULL: no auth */
    const char *model_name;/* "model" in responses */
    size_t max_body;       /* bytes */
    double drain_seconds;  /* SIGTERM: time in-flight requests get */
    int verbose;           /* log every request */
} srv_config;

/* -------------------------------------------------------------- chat fmt */

/* A prompt ready to generate from. */
typedef struct {
    int32_t *ids; /* (n) */
    int n;
    char *text;   /* the text that was tokenized */
} srv_prompt;

void srv_prompt_free(srv_prompt *p);

/* Renders messages with the model's template (or the fallback) and
 * tokenizes the result. LOUPE_ERR_ARG if the template rejects them. */
loupe_status srv_chat_prompt(const loupe_model *m, const loupe_chat_message *msgs, int n,
                             srv_prompt *out);
/* Tokenizes a completion prompt (BOS as the tokenizer adds it). */
loupe_status srv_text_prompt(const loupe_model *m, const char *text, size_t len,
                             srv_prompt *out);
/* Tokenizes text on its own: no BOS, special-token texts as plain text
 * (an attribution target, as `loupe attribute --target`). */
loupe_status srv_plain_text(const loupe_model *m, const char *text, size_t len,
                            srv_prompt *out);
/* Stop strings chat generation needs besides EOS: "\nUser:" for the
 * fallback template, none otherwise. Returns the count; *stops static. */
int srv_chat_stops(const loupe_model *m, const char *const **stops);
/* The UTF-8 text of a token (invalid bytes -> U+FFFD) into buf. */
size_t srv_token_text(const loupe_model *m, int32_t id, char *buf, size_t cap,
                      unsigned char *raw, size_t *n_raw);

/* --------------------------------------------------------------- request */

typedef enum { SRV_COMPLETION, SRV_CHAT, SRV_ATTENTION, SRV_LENS, SRV_ATTRIBUTE } srv_kind;

/* The /v1/loupe/ kinds run an interpretability function, not generation. */
#define SRV_IS_INTERP(kind) ((kind) >= SRV_ATTENTION)

#define SRV_MAX_STOP 4
#define SRV_MAX_CHOICES 64 /* prompts x n */
#define SRV_MAX_TOP 20

/* Parameters of the /v1/loupe/ endpoints (the prompt is prompts[0]). */
typedef struct {
    int *layers, *heads;   /* attention: (n_layers), (n_heads) model indices */
    int n_layers, n_heads;
    int k;                 /* lens: tokens per cell */
    srv_prompt target;     /* attribute: the target, without special tokens */
    loupe_attr_params ap;  /* attribute: method, samples, seed */
} srv_interp;

typedef struct {
    srv_kind kind;
    int stream, include_usage, echo;
    int ignore_eos;     /* extension: generate max_tokens even past EOS */
    int n;              /* choices per prompt */
    int max_tokens;     /* per choice, already checked against the context */
    int logprobs;       /* 1: report log-probabilities */
    int top_logprobs;   /* alternatives per token (0..20) */
    loupe_sampling sp;
    char *stop[SRV_MAX_STOP];
    int n_stop;
    srv_prompt *prompts; /* (n_prompts) */
    int n_prompts;
    char id[48];         /* "cmpl-..." / "chatcmpl-..." */
    long created;
    srv_interp interp;   /* SRV_IS_INTERP(kind) */
} srv_request;

/* An error in OpenAI's envelope: {"error": {message, type, param, code}}. */
typedef struct {
    int status;
    const char *type;  /* invalid_request_error, server_error, ... */
    const char *code;  /* NULL -> null */
    const char *param; /* NULL -> null */
    char message[512];
} srv_error;

int srv_error_set(srv_error *e, int status, const char *type, const char *code,
                  const char *param, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* The error body as a malloc'd JSON string. */
char *srv_error_json(const srv_error *e);

/* Everything the parser needs to know about the model being served. */
typedef struct {
    const loupe_model *m;
    loupe_model_info info;
    int n_ctx;
    const char *name;
} srv_model;

/* Parses and validates a request body; on failure fills err, returns -1. */
int srv_parse_request(const srv_model *sm, srv_kind kind, const char *body, size_t len,
                      srv_request *out, srv_error *err);
void srv_request_free(srv_request *r);

/* The same for the /v1/loupe/ endpoints (kind SRV_ATTENTION...). */
int srv_parse_interp(const srv_model *sm, srv_kind kind, const char *body, size_t len,
                     srv_request *out, srv_error *err);
void srv_interp_free(srv_interp *x);
/* Runs an interp request in session s (hooks cleared, session reset
 * afterwards): *json is the document `loupe attention|lens|attribute -o
 * FILE.json` writes (malloc'd). LOUPE_ERR_CANCELLED if the session's abort
 * check stopped it; other failures also fill err. */
loupe_status srv_interp_run(loupe_session *s, const srv_model *sm, const srv_request *r,
                            char **json, srv_error *err);

/* ---------------------------------------------------------------- results */

/* One generated (or echoed prompt) token with its log-probabilities. */
typedef struct {
    int32_t id;
    float logprob;
    int has_logprob;          /* 0 for the first echoed prompt token */
    int control;              /* a control token (BOS...): no text */
    int n_top;
    int32_t top_id[SRV_MAX_TOP + 1];
    float top_lp[SRV_MAX_TOP + 1];
} srv_tok;

typedef struct {
    int index;
    char *text;               /* (n_text) generated (echo: prompt first) */
    size_t n_text, cap_text;
    srv_tok *toks;            /* (n_toks) when logprobs */
    int n_toks, cap_toks;
    int n_generated;
    const char *finish;       /* "stop", "length" */
} srv_choice;

/* Response JSON (malloc'd strings) for a finished job. */
char *srv_response_json(const srv_model *sm, const srv_request *r, const srv_choice *ch,
                        int n_choices, int prompt_tokens, int completion_tokens);
/* One SSE chunk: delta text and tokens [tok0, tok1) of a choice; finish
 * NULL until the last; role_only: chat's first chunk. */
char *srv_chunk_json(const srv_model *sm, const srv_request *r, const srv_choice *ch,
                     const char *delta, size_t n_delta, int tok0, int tok1,
                     const char *finish, int role_only);
char *srv_usage_chunk_json(const srv_model *sm, const srv_request *r, int prompt_tokens,
                           int completion_tokens);
char *srv_models_json(const srv_model *sm, long created);

/* ----------------------------------------------------------------- engine */

typedef struct srv_job srv_job;
typedef struct srv_engine srv_engine;

struct srv_job {
    srv_request req;
    srv_choice *choices;      /* (n_choices) */
    int n_choices;
    int prompt_tokens, completion_tokens;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_int cancel;        /* client gone or server stopping */
    int done;                 /* under mu: out holds the whole answer */
    int refs;                 /* under mu */
    char *out;                /* (n_out) SSE events so far, or the JSON body */
    size_t n_out, cap_out;
    int status;               /* HTTP status of a non-streamed body */
    srv_job *next;            /* queue link */
};

/* Takes ownership of *req (zeroed). One reference for the caller. */
srv_job *srv_job_new(srv_request *req);
void srv_job_release(srv_job *j);
/* Waits up to ms for new output or completion; returns done. */
int srv_job_wait(srv_job *j, size_t seen, int ms);

loupe_status srv_engine_new(const srv_model *sm, const srv_config *cfg, srv_engine **out);
/* Queues a job (the engine takes its own reference). 0 queued, -1 queue
 * full, -2 shutting down. */
int srv_engine_submit(srv_engine *e, srv_job *j);
void srv_engine_stats(srv_engine *e, int *busy, int *queued, int *slots);
/* Refuses new jobs, answers queued ones with 503, cancels running ones
 * and joins the workers. Jobs still referenced stay valid. */
void srv_engine_stop(srv_engine *e);
void srv_engine_free(srv_engine *e);

/* ------------------------------------------------------------------ http */

typedef struct srv_http srv_http;

/* Starts listening; returns 0, or 1 after printing the error. */
int srv_http_start(srv_engine *e, const srv_model *sm, const srv_config *cfg,
                   srv_http **out);
int srv_http_port(const srv_http *h);
/* Stops accepting, lets in-flight requests finish for up to drain
 * seconds, then stops the engine (cancelling the rest) and the daemon.
 * The caller frees the engine afterwards. */
void srv_http_stop(srv_http *h, double drain_seconds);

#endif
