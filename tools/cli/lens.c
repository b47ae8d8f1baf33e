/*
 * lens.c — `loupe lens`: the logit lens. For every layer L and position t,
 * the top-k tokens of softmax(unembed(final_norm(resid_post.L[t]))).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "interp_cli.h"

static const char lens_help[] =
    "Applies the model's final norm and unembedding to the residual stream\n"
    "after every layer (resid_post.L) and shows what each layer would predict\n"
    "next at each position. The last layer's row is the model's own output.\n"
    "Prints a table: one row per position (its token, then the next input token\n"
    "for reference), one column per layer with the top-1 token and its\n"
    "probability; with -k K > 1 the next K-1 follow on extra lines.\n\n"
    "  -m, --model PATH     HF directory, .gguf or .loupe file\n"
    "  -p, --prompt TEXT    the text (tokenized with BOS when the model adds one)\n"
    "  -f, --file FILE      read the text from FILE ('-' = stdin)\n"
    "  -k, --top-k K        tokens per cell (default 1 in the table, 5 in files)\n"
    "  -o, --output FILE    write .json or .html (repeatable)\n"
    "  -q, --quiet          no table\n"
    "  -t, --threads N      threads (default: all cores)\n"
    "  --isa NAME           kernel set (scalar, avx2, avx512, neon)\n";

#define CELL 12 /* columns per table cell: token (7) + probability (4) + space */

static void print_cell(const loupe_lens *l, int layer, int t, int j) {
    size_t at = ((size_t)layer * l->tokens.n + t) * l->k + j;
    icli_put_token(stdout, l->top_text[at], CELL - 5);
    float p = l->top_probs[at];
    if (p >= 0.995f) printf("1.00 ");
    else printf(".%02d  ", (int)(p * 100 + 0.5f));
}

static void print_table(const loupe_lens *l, int k) {
    int T = l->tokens.n;
    printf("%-4s %-8s %-8s", "pos", "token", "next");
    for (int layer = 0; layer < l->n_layers; layer++) {
        char h[16];
        snprintf(h, sizeof h, "L%d", layer);
        printf("%-*s", CELL, h);
    }
    printf("\n");
    for (int t = 0; t < T; t++) {
        for (int j = 0; j < k; j++) {
            if (j == 0) {
                printf("%-4d ", t);
                icli_put_token(stdout, l->tokens.text[t], 8);
                printf(" ");
                icli_put_token(stdout, t + 1 < T ? l->tokens.text[t + 1] : "", 8);
            } else {
                printf("%-22s", "");
            }
            for (int layer = 0; layer < l->n_layers; layer++) print_cell(l, layer, t, j);
            printf("\n");
        }
    }
}

int cli_lens(int argc, char **argv) {
    const char *model = NULL, *prompt = NULL, *file = NULL, *isa = NULL;
    int k = 0, quiet = 0, n_threads = 0;
    cli_strs outs = {NULL, 0};
    outs.v = calloc((size_t)argc + 1, sizeof *outs.v);
    if (!outs.v) return cli_fail("out of memory");
    const cli_opt opts[] = {
        {"-m|--model", CLI_STR, &model, 0, 0, 0, NULL},
        {"-p|--prompt", CLI_STR, &prompt, 0, 0, 0, NULL},
        {"-f|--file", CLI_STR, &file, 0, 0, 0, NULL},
        {"-k|--top-k", CLI_INT, &k, 1, 100, 0, NULL},
        {"-o|--output", CLI_STRS, &outs, 0, 0, 0, NULL},
        {"-q|--quiet", CLI_FLAG, &quiet, 0, 0, 0, NULL},
        {"-t|--threads", CLI_INT, &n_threads, 1, 4096, 0, NULL},
        {"--isa", CLI_STR, &isa, 0, 0, 0, NULL},
    };
    cli_spec spec = {"lens", "lens -m MODEL -p TEXT [-k K] [-o FILE.json|.html]", lens_help, opts,
                     (int)(sizeof opts / sizeof opts[0]), NULL, 0, 0};
    int rc = cli_parse(&spec, argc, argv);
    if (!rc && !model) rc = cli_usage_error(&spec, "no model given (-m PATH)");
    if (!rc && !prompt && !file) rc = cli_usage_error(&spec, "no text given (-p TEXT or -f FILE)");
    if (!rc && prompt && file) rc = cli_usage_error(&spec, "give -p or -f, not both");
    if (rc) {
        free(outs.v);
        return rc < 0 ? 0 : rc;
    }
    int table_k = k ? k : 1, file_k = k ? k : 5;

    icli_model im;
    int32_t *ids = NULL;
    int n = 0;
    loupe_lens *l = NULL;
    rc = icli_open(model, isa, n_threads, 0, &im);
    if (!rc) rc = icli_prompt(&im, prompt, file, &ids, &n);
    int want_k = outs.n ? (file_k > table_k ? file_k : table_k) : table_k;
    if (!rc && loupe_lens_run(im.s, ids, n, want_k, &l) != LOUPE_OK) rc = cli_fail(NULL);
    if (!rc && !quiet) print_table(l, table_k < l->k ? table_k : l->k);
    for (int i = 0; !rc && i < outs.n; i++) {
        if (loupe_lens_write(l, im.title, outs.v[i]) != LOUPE_OK) rc = cli_fail(NULL);
        else fprintf(stderr, "loupe: wrote %s\n", outs.v[i]);
    }
    loupe_lens_free(l);
    free(ids), free(outs.v);
    if (im.m) icli_close(&im);
    return rc;
}
