/*
 * steer.c — `loupe steer`: generate with a vector added to the residual
 * stream after one layer (activation steering).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "interp_cli.h"

static const char steer_help[] =
    "Generates from the prompt while adding SCALE x VECTOR to resid_post.LAYER\n"
    "at every position (prompt and generated tokens alike).\n\n"
    "  -m, --model PATH     HF directory, .gguf or .loupe file\n"
    "  -p, --prompt TEXT    the prompt (tokenized with BOS when the model adds one)\n"
    "  --layer L            the layer whose output is shifted\n"
    "  --scale S            the multiplier (default 1)\n"
    "  --vector FILE.npy    the vector: float16/32/64, shape (dim,) or (1, dim)\n"
    "  --from A --to B      or: mean resid_post.L over B's tokens minus the mean\n"
    "                       over A's tokens (both tokenized like the prompt)\n"
    "  --save-vector FILE   write the vector used as .npy\n"
    "  --baseline           first print the unsteered continuation\n"
    "  -n, --n-predict N    tokens to generate (default 64)\n"
    "  --temp T             temperature (default 0 = greedy)\n"
    "  --seed S             sampling seed (default 1)\n"
    "  -t, --threads N      threads (default: all cores)\n"
    "  --isa NAME           kernel set (scalar, avx2, avx512, neon)\n";

static int print_token(void *user, int32_t id, const char *text, size_t len, float lp) {
    (void)user, (void)id, (void)lp;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

static int generate(icli_model *im, const char *label, const char *prompt, const int32_t *ids,
                    int n, int n_predict, float temp, uint64_t seed) {
    loupe_generate_params gp;
    loupe_generate_default(&gp);
    gp.max_new_tokens = n_predict;
    gp.sampling.temperature = temp;
    gp.sampling.seed = seed;
    gp.on_token = print_token;
    loupe_generate_result r;
    printf("--- %s ---\n%s", label, prompt);
    fflush(stdout);
    loupe_session_reset(im->s);
    if (loupe_generate(im->s, ids, n, &gp, &r) != LOUPE_OK) return cli_fail(NULL);
    printf("\n");
    return 0;
}

/* The steering vector from --vector or --from/--to into vec (dim). */
static int load_vector(icli_model *im, const char *path, const char *from, const char *to,
                       int layer, float *vec) {
    int dim = im->info.dim;
    if (path) {
        float *x = NULL;
        int nd = 0;
        int64_t shape[LOUPE_NPY_MAX_DIMS];
        if (loupe_npy_read(path, &x, &nd, shape) != LOUPE_OK) return cli_fail(NULL);
        int ok = (nd == 1 && shape[0] == dim) || (nd == 2 && shape[0] == 1 && shape[1] == dim);
        if (ok) memcpy(vec, x, (size_t)dim * sizeof *vec);
        free(x);
        return ok ? 0 : cli_fail("%s: expected a vector of %d floats (the model's width)", path, dim);
    }
    int32_t *a = NULL, *b = NULL;
    int na = 0, nb = 0;
    int rc = icli_prompt(im, from, NULL, &a, &na);
    if (!rc) rc = icli_prompt(im, to, NULL, &b, &nb);
    if (!rc && loupe_steering_vector(im->s, layer, a, na, b, nb, vec) != LOUPE_OK) rc = cli_fail(NULL);
    free(a), free(b);
    return rc;
}

int cli_steer(int argc, char **argv) {
    const char *model = NULL, *prompt = NULL, *vector = NULL, *from = NULL, *to = NULL,
               *save = NULL, *isa = NULL;
    int layer = -1, n_predict = 64, baseline = 0, n_threads = 0, seen_layer = 0;
    float scale = 1, temp = 0;
    uint64_t seed = 1;
    const double inf = 1e30;
    const cli_opt opts[] = {
        {"-m|--model", CLI_STR, &model, 0, 0, 0, NULL},
        {"-p|--prompt", CLI_STR, &prompt, 0, 0, 0, NULL},
        {"--layer", CLI_INT, &layer, 0, 1e6, 0, &seen_layer},
        {"--scale", CLI_FLOAT, &scale, -inf, inf, 0, NULL},
        {"--vector", CLI_STR, &vector, 0, 0, 0, NULL},
        {"--from", CLI_STR, &from, 0, 0, 0, NULL},
        {"--to", CLI_STR, &to, 0, 0, 0, NULL},
        {"--save-vector", CLI_STR, &save, 0, 0, 0, NULL},
        {"--baseline", CLI_FLAG, &baseline, 0, 0, 0, NULL},
        {"-n|--n-predict", CLI_INT, &n_predict, 1, 1e9, 0, NULL},
        {"--temp|--temperature", CLI_FLOAT, &temp, 0, inf, 0, NULL},
        {"--seed", CLI_U64, &seed, 0, 0, 0, NULL},
        {"-t|--threads", CLI_INT, &n_threads, 1, 4096, 0, NULL},
        {"--isa", CLI_STR, &isa, 0, 0, 0, NULL},
    };
    cli_spec spec = {"steer",
                     "steer -m MODEL -p PROMPT --layer L --scale S (--vector FILE.npy | --from A --to B)",
                     steer_help, opts, (int)(sizeof opts / sizeof opts[0]), NULL, 0, 0};
    int rc = cli_parse(&spec, argc, argv);
    if (rc) return rc < 0 ? 0 : rc;
    if (!model) return cli_usage_error(&spec, "no model given (-m PATH)");
    if (!prompt) return cli_usage_error(&spec, "no prompt given (-p TEXT)");
    if (!seen_layer) return cli_usage_error(&spec, "no layer given (--layer L)");
    if (!vector == !(from || to) || (!vector && (!from || !to)))
        return cli_usage_error(&spec, "give --vector FILE.npy or both --from A and --to B");

    icli_model im;
    int32_t *ids = NULL;
    int n = 0;
    float *vec = NULL;
    loupe_steering *st = NULL;
    rc = icli_open(model, isa, n_threads, 0, &im);
    if (!rc && layer >= im.info.n_layers)
        rc = cli_fail("--layer %d: the model has %d layers", layer, im.info.n_layers);
    if (!rc && !(vec = malloc((size_t)im.info.dim * sizeof *vec))) rc = cli_fail("out of memory");
    if (!rc) rc = load_vector(&im, vector, from, to, layer, vec);
    if (!rc && save) {
        int64_t dim = im.info.dim;
        if (loupe_npy_write(save, vec, 1, &dim) != LOUPE_OK) rc = cli_fail(NULL);
        else fprintf(stderr, "loupe: wrote %s\n", save);
    }
    if (!rc) rc = icli_prompt(&im, prompt, NULL, &ids, &n);
    if (!rc && baseline) rc = generate(&im, "baseline", prompt, ids, n, n_predict, temp, seed);
    if (!rc && loupe_steering_add(im.s, layer, vec, scale, &st) != LOUPE_OK) rc = cli_fail(NULL);
    char label[96];
    snprintf(label, sizeof label, "steered: layer %d, scale %g", layer, (double)scale);
    if (!rc) rc = generate(&im, label, prompt, ids, n, n_predict, temp, seed);
    if (im.s) loupe_session_clear_hooks(im.s);
    loupe_steering_free(st);
    free(vec), free(ids);
    if (im.m) icli_close(&im);
    return rc;
}
