/*
 * interp_cli.h — pieces shared by the interpretability subcommands
 * (attention, lens, attribute, ablate, steer, compare): opening a model and
 * a session, tokenizing prompts and targets, printing tokens in tables.
 */
#ifndef LOUPE_INTERP_CLI_H
#define LOUPE_INTERP_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "cli.h"
#include "loupe_interp.h"

/* A model with one session on it. */
typedef struct {
    loupe_model *m;
    loupe_session *s;
    loupe_model_info info;
    char title[256]; /* the model path's last component, for reports */
} icli_model;

/* Selects the ISA, opens the model and a session. Returns 0, or 1 after
 * printing the error. */
int icli_open(const char *path, const char *isa, int n_threads, int n_ctx, icli_model *out);
void icli_close(icli_model *im);

/* The prompt from -p TEXT or -f FILE, tokenized with the model's special
 * tokens as configured (BOS when the tokenizer adds one). Returns 0, or 1
 * after printing the error (also for an empty result). */
int icli_prompt(const icli_model *im, const char *text, const char *file, int32_t **ids, int *n);
/* A target text tokenized on its own, without special tokens. */
int icli_target(const icli_model *im, const char *text, int32_t **ids, int *n);

/* Prints a token's display text with spaces as U+2423 and \n, \t, \r as
 * such, cut or padded to width columns (width <= 0: as is). */
void icli_put_token(FILE *f, const char *text, int width);

/* Writes doc (freed here) to path; "-" = stdout. Returns 0 or 1 (printed). */
int icli_write_doc(const char *path, char *doc);

#endif
