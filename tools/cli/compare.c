/*
 * compare.c — `loupe compare A B`: two models on the same text, layer by
 * layer: how differently they attend and what their logit lenses predict.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "interp_cli.h"

static const char compare_help[] =
    "Runs the text through models A and B (they must tokenize it to the same\n"
    "ids) and prints, for each layer both have:\n"
    "  attn JS  mean Jensen-Shannon divergence (bits, 0..1) between the two\n"
    "           models' attention rows, over heads and query positions (over\n"
    "           head-averaged patterns when the head counts differ)\n"
    "  lens KL  mean KL(lens_A || lens_B) in nats over positions, where lens\n"
    "           = softmax(unembed(final_norm(resid_post.L))) of each model\n"
    "           (n/a when the vocabulary sizes differ)\n"
    "Typical uses: a model against its quantized or fine-tuned copy.\n\n"
    "  -p, --prompt TEXT    the text\n"
    "  -f, --file FILE      read the text from FILE ('-' = stdin)\n"
    "  -o, --output FILE    write .json\n"
    "  -t, --threads N      threads (default: all cores)\n"
    "  --isa NAME           kernel set (scalar, avx2, avx512, neon)\n";

int cli_compare(int argc, char **argv) {
    const char *prompt = NULL, *file = NULL, *out = NULL, *isa = NULL, *pos[2];
    int n_threads = 0;
    const cli_opt opts[] = {
        {"-p|--prompt", CLI_STR, &prompt, 0, 0, 0, NULL},
        {"-f|--file", CLI_STR, &file, 0, 0, 0, NULL},
        {"-o|--output", CLI_STR, &out, 0, 0, 0, NULL},
        {"-t|--threads", CLI_INT, &n_threads, 1, 4096, 0, NULL},
        {"--isa", CLI_STR, &isa, 0, 0, 0, NULL},
    };
    cli_spec spec = {"compare", "compare MODEL_A MODEL_B -p TEXT [-o FILE.json]", compare_help, opts,
                     (int)(sizeof opts / sizeof opts[0]), pos, 2, 0};
    int rc = cli_parse(&spec, argc, argv);
    if (rc) return rc < 0 ? 0 : rc;
    if (spec.n_pos != 2) return cli_usage_error(&spec, "give two models");
    if (!prompt && !file) return cli_usage_error(&spec, "no text given (-p TEXT or -f FILE)");
    if (prompt && file) return cli_usage_error(&spec, "give -p or -f, not both");

    icli_model a, b;
    memset(&b, 0, sizeof b);
    int32_t *ia = NULL, *ib = NULL;
    int na = 0, nb = 0;
    loupe_comparison *c = NULL;
    rc = icli_open(pos[0], isa, n_threads, 0, &a);
    if (!rc) rc = icli_open(pos[1], isa, n_threads, 0, &b);
    if (!rc) rc = icli_prompt(&a, prompt, file, &ia, &na);
    if (!rc) rc = icli_prompt(&b, prompt, file, &ib, &nb);
    if (!rc && (na != nb || memcmp(ia, ib, (size_t)na * sizeof *ia) != 0))
        rc = cli_fail("the two models tokenize the text differently (%d vs %d tokens): "
                      "compare needs the same token ids", na, nb);
    if (!rc && loupe_compare(a.s, b.s, ia, na, &c) != LOUPE_OK) rc = cli_fail(NULL);
    if (!rc) {
        printf("A: %s\nB: %s\n%d tokens\n\nlayer    attn JS    lens KL\n", pos[0], pos[1], na);
        for (int l = 0; l < c->n_layers; l++) {
            printf("%5d  %9.3g  ", l, c->attn_js[l]);
            if (isnan(c->lens_kl[l])) printf("%9s\n", "n/a");
            else printf("%9.3g\n", c->lens_kl[l]);
        }
    }
    if (!rc && out) {
        rc = icli_write_doc(out, loupe_comparison_json(c, a.title, b.title));
        if (!rc) fprintf(stderr, "loupe: wrote %s\n", out);
    }
    loupe_comparison_free(c);
    free(ia), free(ib);
    if (b.m) icli_close(&b);
    if (a.m) icli_close(&a);
    return rc;
}
