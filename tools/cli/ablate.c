/*
 * ablate.c — `loupe ablate`: zero- or mean-ablate attention heads and report
 * the change in the target's log-probability; or, with --patch, activation
 * patching of the residual stream from a clean prompt into a corrupted one.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "interp_cli.h"

static const char ablate_help[] =
    "Head ablation (default): runs PROMPT + TARGET with the listed heads'\n"
    "outputs (attn.z, before W_O, so W_O's bias stays) set to zero, or with\n"
    "--mean to their mean over the positions of an unablated run, and prints\n"
    "log p(target | prompt) with and without.\n\n"
    "Activation patching (--patch CLEAN): PROMPT is the corrupted prompt and\n"
    "CLEAN the clean one (same token count). For every layer L and prompt\n"
    "position p, the corrupted run gets resid_pre.L[p] from the clean run; the\n"
    "table shows the normalised effect (lp - lp_corrupt) / (lp_clean -\n"
    "lp_corrupt): 1 = that patch alone restores the clean answer.\n\n"
    "  -m, --model PATH     HF directory, .gguf or .loupe file\n"
    "  -p, --prompt TEXT    the prompt (corrupted prompt with --patch)\n"
    "  --target TEXT        the continuation scored, tokenized on its own\n"
    "  --heads L.H,...      heads to ablate, e.g. 0.1,2.0-3 (layer.head[-head])\n"
    "  --mean               mean- instead of zero-ablation\n"
    "  --patch CLEAN        activation patching from the CLEAN prompt\n"
    "  -o, --output FILE    patching table as .json\n"
    "  -t, --threads N      threads (default: all cores)\n"
    "  --isa NAME           kernel set (scalar, avx2, avx512, neon)\n";

static int run_ablation(icli_model *im, const int32_t *ids, int n, const int32_t *tgt, int m,
                        const char *heads, int mean) {
    int *pairs = NULL, n_pairs = 0;
    double clean, ablated;
    if (loupe_parse_heads(heads, im->info.n_layers, im->info.n_heads, &pairs, &n_pairs) != LOUPE_OK)
        return cli_fail(NULL);
    loupe_status st = loupe_ablate_heads(im->s, ids, n, tgt, m, pairs, n_pairs, mean, &clean, &ablated);
    if (st == LOUPE_OK) {
        printf("%s-ablated heads:", mean ? "mean" : "zero");
        for (int i = 0; i < n_pairs; i++) printf(" %d.%d", pairs[2 * i], pairs[2 * i + 1]);
        printf("\nlog p(target | prompt)  clean %.4f  ablated %.4f  change %+.4f\n", clean, ablated,
               ablated - clean);
    }
    free(pairs);
    return st == LOUPE_OK ? 0 : cli_fail(NULL);
}

static void print_patching(const loupe_patching *p) {
    int n = p->clean.n;
    double span = p->clean_logprob - p->corrupt_logprob;
    printf("log p(target)  clean %.4f  corrupt %.4f\n", p->clean_logprob, p->corrupt_logprob);
    printf("%s of patching resid_pre.L at each position:\n%-6s",
           span != 0 ? "normalised effect" : "change in log p (clean = corrupt)", "");
    for (int i = 0; i < n; i++) {
        printf(" ");
        icli_put_token(stdout, p->clean.text[i], 5);
    }
    printf("\n%-6s", "");
    for (int i = 0; i < n; i++) {
        printf(" ");
        icli_put_token(stdout, strcmp(p->clean.text[i], p->corrupt.text[i]) ? p->corrupt.text[i] : "", 5);
    }
    printf("  (corrupt, where different)\n");
    for (int l = 0; l < p->n_layers; l++) {
        printf("L%-5d", l);
        for (int i = 0; i < n; i++) {
            double d = p->logprob[(size_t)l * n + i] - p->corrupt_logprob;
            double v = span != 0 ? d / span : d;
            printf(" %5.2f", v > -0.005 && v < 0.005 ? 0.0 : v); /* no "-0.00" */
        }
        printf("\n");
    }
}

int cli_ablate(int argc, char **argv) {
    const char *model = NULL, *prompt = NULL, *target = NULL, *heads = NULL, *patch = NULL,
               *out = NULL, *isa = NULL;
    int mean = 0, n_threads = 0;
    const cli_opt opts[] = {
        {"-m|--model", CLI_STR, &model, 0, 0, 0, NULL},
        {"-p|--prompt", CLI_STR, &prompt, 0, 0, 0, NULL},
        {"--target", CLI_STR, &target, 0, 0, 0, NULL},
        {"--heads", CLI_STR, &heads, 0, 0, 0, NULL},
        {"--mean", CLI_FLAG, &mean, 0, 0, 0, NULL},
        {"--patch", CLI_STR, &patch, 0, 0, 0, NULL},
        {"-o|--output", CLI_STR, &out, 0, 0, 0, NULL},
        {"-t|--threads", CLI_INT, &n_threads, 1, 4096, 0, NULL},
        {"--isa", CLI_STR, &isa, 0, 0, 0, NULL},
    };
    cli_spec spec = {"ablate",
                     "ablate -m MODEL -p PROMPT --target TEXT (--heads L.H,... [--mean] | "
                     "--patch CLEAN_PROMPT [-o FILE.json])",
                     ablate_help, opts, (int)(sizeof opts / sizeof opts[0]), NULL, 0, 0};
    int rc = cli_parse(&spec, argc, argv);
    if (rc) return rc < 0 ? 0 : rc;
    if (!model) return cli_usage_error(&spec, "no model given (-m PATH)");
    if (!prompt) return cli_usage_error(&spec, "no prompt given (-p TEXT)");
    if (!target || !*target) return cli_usage_error(&spec, "no target given (--target TEXT)");
    if (!heads == !patch) return cli_usage_error(&spec, "give --heads or --patch (one of them)");
    if (mean && patch) return cli_usage_error(&spec, "--mean goes with --heads");
    if (out && !patch) return cli_usage_error(&spec, "-o writes the --patch table");

    icli_model im;
    int32_t *ids = NULL, *tgt = NULL, *clean = NULL;
    int n = 0, m = 0, nc = 0;
    loupe_patching *p = NULL;
    rc = icli_open(model, isa, n_threads, 0, &im);
    if (!rc) rc = icli_prompt(&im, prompt, NULL, &ids, &n);
    if (!rc) rc = icli_target(&im, target, &tgt, &m);
    if (!rc && heads) rc = run_ablation(&im, ids, n, tgt, m, heads, mean);
    if (!rc && patch) {
        rc = icli_prompt(&im, patch, NULL, &clean, &nc);
        if (!rc && nc != n)
            rc = cli_fail("the clean prompt has %d tokens and the corrupted one %d: patching "
                          "needs the same count", nc, n);
        if (!rc && loupe_patch_resid(im.s, clean, ids, n, tgt, m, &p) != LOUPE_OK) rc = cli_fail(NULL);
        if (!rc) print_patching(p);
        if (!rc && out) {
            rc = icli_write_doc(out, loupe_patching_json(p, im.title));
            if (!rc) fprintf(stderr, "loupe: wrote %s\n", out);
        }
    }
    loupe_patching_free(p);
    free(ids), free(tgt), free(clean);
    if (im.m) icli_close(&im);
    return rc;
}
