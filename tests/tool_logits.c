/*
 * tool_logits — runs a model over token ids through the public API and
 * writes every position's logits, for comparison with tests/ref/reference.py.
 *
 *   tool_logits [--one-at-a-time] [--isa NAME] [--threads N]
 *               MODEL OUT.f32 (ID ID ... | --ids-file FILE)
 *
 * OUT.f32 holds (T, n_vocab) float32, raw little-endian, row t = logits after
 * token t. By default the T tokens go through one batched loupe_eval (prefill);
 * --one-at-a-time evaluates them one by one, so every position after the
 * first reads its past from the KV cache (incremental decode).
 *
 * Exit status: 0 ok; 1 a loupe call failed (message from loupe_last_error);
 * 2 bad usage or I/O; 3 --isa names a kernel table this CPU cannot run.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loupe.h"

/* ------------------------------------------------------------ arguments */

typedef struct {
    const char *model_path;
    const char *out_path;
    const char *ids_file;
    const char *isa;
    int one_at_a_time;
    int n_threads;
    int32_t *ids; /* (n_ids) */
    int n_ids, cap_ids;
} tool_args;

static int push_id(tool_args *a, const char *text) {
    char *end;
    long v = strtol(text, &end, 10);
    if (end == text || *end || v < 0 || v > INT32_MAX) {
        fprintf(stderr, "tool_logits: bad token id '%s'\n", text);
        return -1;
    }
    if (a->n_ids == a->cap_ids) {
        int cap = a->cap_ids ? 2 * a->cap_ids : 64;
        int32_t *p = realloc(a->ids, (size_t)cap * sizeof *p);
        if (!p) return -1;
        a->ids = p;
        a->cap_ids = cap;
    }
    a->ids[a->n_ids++] = (int32_t)v;
    return 0;
}

/* Ids separated by spaces, commas or newlines. */
static int read_ids_file(tool_args *a) {
    FILE *f = fopen(a->ids_file, "r");
    if (!f) {
        fprintf(stderr, "tool_logits: cannot open %s\n", a->ids_file);
        return -1;
    }
    char word[32];
    int st = 0;
    while (st == 0 && fscanf(f, " %31[0-9]%*[ ,\n\t]", word) == 1) st = push_id(a, word);
    if (st == 0 && !feof(f) && fgetc(f) != EOF) {
        fprintf(stderr, "tool_logits: %s: not a list of token ids\n", a->ids_file);
        st = -1;
    }
    fclose(f);
    return st;
}

static int parse_args(int argc, char **argv, tool_args *a) {
    int n_pos = 0;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (!strcmp(s, "--one-at-a-time")) {
            a->one_at_a_time = 1;
        } else if (!strcmp(s, "--isa") && i + 1 < argc) {
            a->isa = argv[++i];
        } else if (!strcmp(s, "--threads") && i + 1 < argc) {
            a->n_threads = atoi(argv[++i]);
        } else if (!strcmp(s, "--ids-file") && i + 1 < argc) {
            a->ids_file = argv[++i];
        } else if (n_pos == 0) {
            a->model_path = s, n_pos++;
        } else if (n_pos == 1) {
            a->out_path = s, n_pos++;
        } else if (push_id(a, s) != 0) {
            return -1;
        }
    }
    if (a->ids_file && read_ids_file(a) != 0) return -1;
    if (n_pos < 2 || a->n_ids == 0) {
        fprintf(stderr, "usage: tool_logits [--one-at-a-time] [--isa NAME] [--threads N] "
                        "MODEL OUT.f32 (ID... | --ids-file FILE)\n");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ evaluation */

static int fail(const char *what, loupe_status st) {
    fprintf(stderr, "tool_logits: %s: %s: %s\n", what, loupe_status_name(st),
            loupe_last_error());
    return 1;
}

/* logits: (n_ids, n_vocab) */
static int run(const tool_args *a, loupe_session *s, float *logits, int n_vocab) {
    loupe_status st;
    if (!a->one_at_a_time) {
        st = loupe_eval(s, a->ids, a->n_ids, logits, 1);
        return st == LOUPE_OK ? 0 : fail("loupe_eval (batched)", st);
    }
    for (int t = 0; t < a->n_ids; t++) {
        st = loupe_eval(s, &a->ids[t], 1, logits + (size_t)t * (size_t)n_vocab, 1);
        if (st != LOUPE_OK) return fail("loupe_eval (one token)", st);
    }
    return 0;
}

static int write_logits(const char *path, const float *logits, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "tool_logits: cannot create %s\n", path);
        return 2;
    }
    size_t w = fwrite(logits, sizeof *logits, n, f);
    if (fclose(f) != 0 || w != n) {
        fprintf(stderr, "tool_logits: cannot write %s\n", path);
        return 2;
    }
    return 0;
}

int main(int argc, char **argv) {
    tool_args a = {0};
    if (parse_args(argc, argv, &a) != 0) {
        free(a.ids);
        return 2;
    }
    int rc = 0;
    loupe_model *m = NULL;
    loupe_session *s = NULL;
    float *logits = NULL;
    loupe_status st;
    if (a.isa && (st = loupe_set_isa(a.isa)) != LOUPE_OK) {
        rc = st == LOUPE_ERR_ISA ? 3 : fail("loupe_set_isa", st);
        if (rc == 3) fprintf(stderr, "tool_logits: ISA %s not available\n", a.isa);
        goto done;
    }
    loupe_model_params mp = {.n_threads = a.n_threads};
    if ((st = loupe_model_open(a.model_path, &mp, &m)) != LOUPE_OK) {
        rc = fail(a.model_path, st);
        goto done;
    }
    loupe_session_params sp = {.n_ctx = 0, .n_threads = a.n_threads};
    if ((st = loupe_session_new(m, &sp, &s)) != LOUPE_OK) {
        rc = fail("loupe_session_new", st);
        goto done;
    }
    loupe_model_info info;
    loupe_model_get_info(m, &info);
    int n_vocab = info.n_vocab; /* logits width: the model's, not the tokenizer's */
    size_t n = (size_t)a.n_ids * (size_t)n_vocab;
    logits = malloc(n * sizeof *logits);
    if (!logits) {
        fprintf(stderr, "tool_logits: out of memory\n");
        rc = 2;
        goto done;
    }
    rc = run(&a, s, logits, n_vocab);
    if (rc == 0) rc = write_logits(a.out_path, logits, n);
done:
    free(logits);
    loupe_session_free(s);
    loupe_model_close(m);
    free(a.ids);
    return rc;
}
