/*
 * run_inspect.h — what `loupe run` can record while it generates: the
 * log-probability of every generated token with its top-K alternatives
 * (--logprobs K), and the attention weights of every layer and head over
 * the prompt and the generated text (--attention FILE). Both ride on hooks,
 * so a run without them pays nothing.
 */
#ifndef LOUPE_RUN_INSPECT_H
#define LOUPE_RUN_INSPECT_H

#include "loupe.h"

typedef struct run_inspect run_inspect;

typedef struct {
    int logprobs_k;          /* 0 = off */
    const char *logprobs_json; /* NULL = table on stderr only */
    const char *attn_path;   /* NULL = off; .json .npy .html .png */
    const char *attn_layers, *attn_heads; /* selections, NULL = all */
} run_inspect_opts;

/* Registers the hooks on s for one generation of at most max_rows
 * positions (prompt + generated). Returns 0, or 1 after printing an error. */
int run_inspect_begin(run_inspect **out, const run_inspect_opts *o, loupe_session *s,
                      const loupe_model *m, const int32_t *prompt, int n_prompt,
                      int max_rows);
/* Records one generated token (call from the token callback). */
void run_inspect_token(run_inspect *ri, int32_t id);
/* Prints/writes what was recorded; title names the model. 0 or 1. */
int run_inspect_end(run_inspect *ri, const char *title);
void run_inspect_free(run_inspect *ri, loupe_session *s);

#endif
