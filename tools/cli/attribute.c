/*
 * attribute.c — `loupe attribute`: how much each prompt token contributes
 * to log p(target | prompt), by occlusion, sampled Shapley values or
 * attention rollout.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "interp_cli.h"

static const char attribute_help[] =
    "Scores every prompt token for the log-probability of the target text\n"
    "after the prompt.\n\n"
    "  -m, --model PATH       HF directory, .gguf or .loupe file\n"
    "  -p, --prompt TEXT      the prompt (tokenized with BOS when the model adds one)\n"
    "  --target TEXT          the continuation to explain, tokenized on its own\n"
    "                         without special tokens (include its leading space)\n"
    "  --method NAME          occlusion (default), shapley or rollout:\n"
    "      occlusion  log p(target | prompt) - log p(target | prompt without the\n"
    "                 token): the token is removed from the sequence\n"
    "      shapley    Shapley values of the same removal game, from N random\n"
    "                 orders of the tokens (exact when N >= n!); they sum to\n"
    "                 log p(target | prompt) - log p(target | no prompt token)\n"
    "      rollout    attention rollout (Abnar & Zuidema 2020): head-averaged\n"
    "                 attention plus identity, renormalised, multiplied over\n"
    "                 layers; the weight on each token, averaged over the\n"
    "                 positions that predict the target\n"
    "                 A leading BOS is always kept by occlusion and Shapley.\n"
    "  --samples N            Shapley orders (default 64)\n"
    "  --seed S               Shapley RNG seed (default 1)\n"
    "  -o, --output FILE      write .json or .html (heat-coloured tokens); repeatable\n"
    "  -t, --threads N        threads (default: all cores)\n"
    "  --isa NAME             kernel set (scalar, avx2, avx512, neon)\n";

static void print_table(const loupe_attribution *a) {
    printf("method %s: log p(target | prompt) = %.4f", loupe_attr_method_name(a->method), a->logprob);
    if (isfinite(a->empty_logprob)) printf(", with no prompt token %.4f", a->empty_logprob);
    if (a->method == LOUPE_ATTR_SHAPLEY)
        printf(", %d order(s)%s", a->samples, a->exact ? " (exact)" : "");
    printf("\ntarget:");
    for (int i = 0; i < a->target.n; i++) {
        printf(" [");
        icli_put_token(stdout, a->target.text[i], 0);
        printf("]");
    }
    float mx = 0;
    for (int i = 0; i < a->prompt.n; i++)
        if (fabsf(a->scores[i]) > mx) mx = fabsf(a->scores[i]);
    printf("\n\n%4s  %-10s %10s\n", "#", "token", "score");
    for (int i = 0; i < a->prompt.n; i++) {
        printf("%4d  ", i);
        icli_put_token(stdout, a->prompt.text[i], 10);
        printf(" %10.4f  ", a->scores[i]);
        int bar = mx > 0 ? (int)lrintf(fabsf(a->scores[i]) / mx * 30) : 0;
        for (int j = 0; j < bar; j++) putchar(a->scores[i] >= 0 ? '+' : '-');
        putchar('\n');
    }
}

int cli_attribute(int argc, char **argv) {
    const char *model = NULL, *prompt = NULL, *target = NULL, *method = "occlusion", *isa = NULL;
    int samples = 64, n_threads = 0;
    uint64_t seed = 1;
    cli_strs outs = {NULL, 0};
    outs.v = calloc((size_t)argc + 1, sizeof *outs.v);
    if (!outs.v) return cli_fail("out of memory");
    const cli_opt opts[] = {
        {"-m|--model", CLI_STR, &model, 0, 0, 0, NULL},
        {"-p|--prompt", CLI_STR, &prompt, 0, 0, 0, NULL},
        {"--target", CLI_STR, &target, 0, 0, 0, NULL},
        {"--method", CLI_STR, &method, 0, 0, 0, NULL},
        {"--samples", CLI_INT, &samples, 1, 100000000, 0, NULL},
        {"--seed", CLI_U64, &seed, 0, 0, 0, NULL},
        {"-o|--output", CLI_STRS, &outs, 0, 0, 0, NULL},
        {"-t|--threads", CLI_INT, &n_threads, 1, 4096, 0, NULL},
        {"--isa", CLI_STR, &isa, 0, 0, 0, NULL},
    };
    cli_spec spec = {"attribute",
                     "attribute -m MODEL -p PROMPT --target TEXT [--method occlusion|shapley|rollout] "
                     "[--samples N --seed S] [-o FILE.json|.html]",
                     attribute_help, opts, (int)(sizeof opts / sizeof opts[0]), NULL, 0, 0};
    int rc = cli_parse(&spec, argc, argv);
    loupe_attr_params ap = {LOUPE_ATTR_OCCLUSION, samples, seed};
    if (!rc && !model) rc = cli_usage_error(&spec, "no model given (-m PATH)");
    if (!rc && !prompt) rc = cli_usage_error(&spec, "no prompt given (-p TEXT)");
    if (!rc && (!target || !*target)) rc = cli_usage_error(&spec, "no target given (--target TEXT)");
    if (!rc && loupe_attr_method_parse(method, &ap.method) != LOUPE_OK)
        rc = cli_usage_error(&spec, "%s", loupe_last_error());
    if (rc) {
        free(outs.v);
        return rc < 0 ? 0 : rc;
    }
    ap.samples = samples;
    ap.seed = seed;

    icli_model im;
    int32_t *ids = NULL, *tgt = NULL;
    int n = 0, m = 0;
    loupe_attribution *a = NULL;
    rc = icli_open(model, isa, n_threads, 0, &im);
    if (!rc) rc = icli_prompt(&im, prompt, NULL, &ids, &n);
    if (!rc) rc = icli_target(&im, target, &tgt, &m);
    if (!rc && loupe_attribute(im.s, ids, n, tgt, m, &ap, &a) != LOUPE_OK) rc = cli_fail(NULL);
    if (!rc) print_table(a);
    for (int i = 0; !rc && i < outs.n; i++) {
        if (loupe_attribution_write(a, im.title, outs.v[i]) != LOUPE_OK) rc = cli_fail(NULL);
        else fprintf(stderr, "loupe: wrote %s\n", outs.v[i]);
    }
    loupe_attribution_free(a);
    free(ids), free(tgt), free(outs.v);
    if (im.m) icli_close(&im);
    return rc;
}
