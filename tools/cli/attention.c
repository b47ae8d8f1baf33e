/*
 * attention.c — `loupe attention`: attention patterns of a prompt, like
 * Hugging Face's output_attentions, as JSON, .npy, HTML or a PNG grid, and
 * a per-head summary on stdout.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "interp_cli.h"

static const char attention_help[] =
    "Runs the prompt and captures the attention weights of the selected heads:\n"
    "an array (layers, heads, T, T) of softmax weights [query][key], causal.\n"
    "Prints one line per head: mean weight on the previous token, on the first\n"
    "token and on itself (a previous-token head scores near 1 in the first\n"
    "column).\n\n"
    "  -m, --model PATH     HF directory, .gguf or .loupe file\n"
    "  -p, --prompt TEXT    the text (tokenized with BOS when the model adds one)\n"
    "  -f, --file FILE      read the text from FILE ('-' = stdin)\n"
    "  --layers SEL         layers to keep, e.g. 0,2-4 (default all)\n"
    "  --heads SEL          heads to keep in each layer (default all)\n"
    "  -o, --output FILE    write FILE by its extension:\n"
    "                         .json  {tokens, layers, heads, attention[l][h][q][k]}\n"
    "                         .npy   float32 (layers, heads, T, T)\n"
    "                         .html  self-contained page: head view + model view\n"
    "                         .png   heatmap grid, a row per layer, a column per head\n"
    "                       (repeatable)\n"
    "  -q, --quiet          no per-head summary\n"
    "  -t, --threads N      threads (default: all cores)\n"
    "  --isa NAME           kernel set (scalar, avx2, avx512, neon)\n"
    "See docs/INTERPRETABILITY.md for the formats.\n";

/* Mean over queries of the weight on the previous token, the first token
 * and the query itself. */
static void head_summary(const float *A, int T, double *prev, double *first, double *self) {
    *prev = *first = *self = 0;
    for (int q = 0; q < T; q++) {
        const float *row = A + (size_t)q * T;
        if (q > 0) *prev += row[q - 1] / (T - 1);
        *first += row[0] / T;
        *self += row[q] / T;
    }
}

static void print_summary(const loupe_attention *a) {
    int T = a->tokens.n;
    printf("tokens (%d):", T);
    for (int i = 0; i < T; i++) {
        printf(" [");
        icli_put_token(stdout, a->tokens.text[i], 0);
        printf("]");
    }
    printf("\n\nlayer head  prev   first  self   (mean attention weight)\n");
    for (int l = 0; l < a->n_layers; l++)
        for (int h = 0; h < a->n_heads; h++) {
            double prev, first, self;
            head_summary(a->data + ((size_t)l * a->n_heads + h) * T * T, T, &prev, &first, &self);
            printf("%5d %4d  %.3f  %.3f  %.3f%s\n", a->layers[l], a->heads[h], prev, first, self,
                   T > 2 && prev > 0.5 ? "  <- previous-token head" : "");
        }
}

int cli_attention(int argc, char **argv) {
    const char *model = NULL, *prompt = NULL, *file = NULL, *layers = NULL, *heads = NULL,
               *isa = NULL;
    int quiet = 0, n_threads = 0;
    cli_strs outs = {NULL, 0};
    outs.v = calloc((size_t)argc + 1, sizeof *outs.v);
    if (!outs.v) return cli_fail("out of memory");
    const cli_opt opts[] = {
        {"-m|--model", CLI_STR, &model, 0, 0, 0, NULL},
        {"-p|--prompt", CLI_STR, &prompt, 0, 0, 0, NULL},
        {"-f|--file", CLI_STR, &file, 0, 0, 0, NULL},
        {"--layers", CLI_STR, &layers, 0, 0, 0, NULL},
        {"--heads", CLI_STR, &heads, 0, 0, 0, NULL},
        {"-o|--output", CLI_STRS, &outs, 0, 0, 0, NULL},
        {"-q|--quiet", CLI_FLAG, &quiet, 0, 0, 0, NULL},
        {"-t|--threads", CLI_INT, &n_threads, 1, 4096, 0, NULL},
        {"--isa", CLI_STR, &isa, 0, 0, 0, NULL},
    };
    cli_spec spec = {"attention",
                     "attention -m MODEL -p TEXT [--layers SEL] [--heads SEL] [-o FILE.json|.npy|.html|.png]",
                     attention_help, opts, (int)(sizeof opts / sizeof opts[0]), NULL, 0, 0};
    int rc = cli_parse(&spec, argc, argv);
    if (!rc && !model) rc = cli_usage_error(&spec, "no model given (-m PATH)");
    if (!rc && !prompt && !file) rc = cli_usage_error(&spec, "no text given (-p TEXT or -f FILE)");
    if (!rc && prompt && file) rc = cli_usage_error(&spec, "give -p or -f, not both");
    if (rc) {
        free(outs.v);
        return rc < 0 ? 0 : rc;
    }

    icli_model im;
    int32_t *ids = NULL;
    int n = 0, *ls = NULL, *hs = NULL, nl = 0, nh = 0;
    loupe_attention *a = NULL;
    rc = icli_open(model, isa, n_threads, 0, &im);
    if (!rc) {
        ls = malloc((size_t)im.info.n_layers * sizeof *ls);
        hs = malloc((size_t)im.info.n_heads * sizeof *hs);
        if (!ls || !hs) rc = cli_fail("out of memory");
    }
    if (!rc && (loupe_parse_index_set(layers, im.info.n_layers, ls, &nl) != LOUPE_OK ||
                loupe_parse_index_set(heads, im.info.n_heads, hs, &nh) != LOUPE_OK))
        rc = cli_fail(NULL);
    if (!rc) rc = icli_prompt(&im, prompt, file, &ids, &n);
    if (!rc && loupe_attention_capture(im.s, ids, n, ls, nl, hs, nh, &a) != LOUPE_OK)
        rc = cli_fail(NULL);
    for (int i = 0; !rc && i < outs.n; i++) {
        if (loupe_attention_write(a, im.title, outs.v[i]) != LOUPE_OK) rc = cli_fail(NULL);
        else fprintf(stderr, "loupe: wrote %s\n", outs.v[i]);
    }
    if (!rc && !quiet) print_summary(a);
    loupe_attention_free(a);
    free(ids), free(ls), free(hs), free(outs.v);
    if (im.m) icli_close(&im);
    return rc;
}
