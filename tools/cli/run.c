/*
 * run.c — `loupe run`: generate text from a prompt.
 *
 * stdout carries exactly the prompt text followed by the generated text
 * (with several sequences, each after a line "--- sequence i ---");
 * statistics go to stderr.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "run_inspect.h"

static const char run_help[] =
    "Generates text from a prompt. stdout gets the prompt followed by the\n"
    "generated text; statistics (token counts, speeds, finish reason, seed) go\n"
    "to stderr.\n\n"
    "input:\n"
    "  -m, --model PATH          HF directory, .gguf or .loupe file\n"
    "  -p, --prompt TEXT         prompt (default: empty: generation starts from\n"
    "                            BOS, if the tokenizer adds one)\n"
    "  -f, --file FILE           read the prompt from FILE ('-' = stdin)\n"
    "  The prompt is tokenized with the model's special tokens as configured\n"
    "  (BOS when the tokenizer adds it; special-token texts are recognised).\n\n"
    "length:\n"
    "  -n, --n-predict N         new tokens to generate, EOS included\n"
    "                            (default 256; -1 = until EOS or the context ends)\n"
    "  --max-length N            total tokens including the prompt (Hugging Face\n"
    "                            max_length); instead of -n\n"
    "  --ignore-eos              keep generating after EOS\n"
    "  --stop STR                stop when STR appears (repeatable); STR is not\n"
    "                            printed\n\n"
    "sampling (applied in this order, as Hugging Face generate does):\n"
    "  --repeat-penalty R        repetition penalty (default 1.0 = off)\n"
    "  --presence-penalty P      OpenAI presence penalty (default 0)\n"
    "  --frequency-penalty P     OpenAI frequency penalty (default 0)\n"
    "  --repeat-last-n N         tokens the penalties look back (default 64,\n"
    "                            -1 = all, 0 = none)\n"
    "  --temp T                  temperature (default 0.8; 0 = greedy)\n"
    "  --top-k K                 keep the K most likely (default 40; 0 = off)\n"
    "  --top-p P                 nucleus: smallest set with mass >= P\n"
    "                            (default 0.95; 1 = off)\n"
    "  --min-p P                 drop tokens below P x the top probability\n"
    "                            (default 0.05; 0 = off)\n"
    "  --seed S                  RNG seed (default: from the clock, printed);\n"
    "                            sequence i uses S + i - 1\n"
    "  --num-return-sequences K  generate K sequences from the same prompt\n\n"
    "  The defaults follow llama.cpp. Hugging Face's\n"
    "    generate(max_length=50, num_return_sequences=5, do_sample=True,\n"
    "             temperature=0.7)\n"
    "  is: loupe run -m M -p TEXT --max-length 50 --num-return-sequences 5\n"
    "      --temp 0.7 --top-k 50 --top-p 1 --min-p 0\n\n"
    "inspect (one sequence only):\n"
    "  --logprobs K              print each generated token's log-probability\n"
    "                            and the K best alternatives to stderr (0-20)\n"
    "  --logprobs-json FILE      write them as JSON\n"
    "  --attention FILE          write the attention weights of every layer and\n"
    "                            head over prompt + generated text: .json, .npy\n"
    "                            (layers, heads, T, T), .html or .png\n"
    "  --attn-layers SEL         layers to keep, e.g. 0,2-4 (default all)\n"
    "  --attn-heads SEL          heads to keep (default all)\n\n"
    "machine:\n"
    "  -t, --threads N           threads (default: all cores)\n"
    "  -c, --ctx-size N          context length (default: the model's)\n"
    "  --kv-f16                  keep the KV cache in fp16 (half the memory)\n"
    "  --isa NAME                kernel set: scalar, avx2, avx512, neon (also\n"
    "                            env LOUPE_ISA)\n";

static const char run_usage[] =
    "run -m MODEL [-p PROMPT | -f FILE] [-n N] [--temp T] [options]";

/* ------------------------------------------------------------------ args */

typedef struct {
    const char *model, *prompt, *file, *isa;
    int n_predict, max_length, n_seq, n_threads, n_ctx, ignore_eos, kv_f16;
    int seen_seed, seen_n, seen_max_length;
    cli_strs stop;
    loupe_sampling sp;
    run_inspect_opts inspect;
} run_args;

/* 0 parsed, -1 help printed, 2 usage error */
static int parse_run(run_args *a, int argc, char **argv) {
    memset(a, 0, sizeof *a);
    a->n_predict = 256;
    a->n_seq = 1;
    loupe_sampling_default(&a->sp);
    a->stop.v = calloc((size_t)argc + 1, sizeof *a->stop.v);
    if (!a->stop.v) return cli_fail("out of memory");
    const double inf = INFINITY;
    const cli_opt opts[] = {
        {"-m|--model", CLI_STR, &a->model, 0, 0, 0, NULL},
        {"-p|--prompt", CLI_STR, &a->prompt, 0, 0, 0, NULL},
        {"-f|--file", CLI_STR, &a->file, 0, 0, 0, NULL},
        {"-n|--n-predict", CLI_INT, &a->n_predict, -1, inf, 0, &a->seen_n},
        {"--max-length", CLI_INT, &a->max_length, 1, inf, 0, &a->seen_max_length},
        {"--ignore-eos", CLI_FLAG, &a->ignore_eos, 0, 0, 0, NULL},
        {"--stop", CLI_STRS, &a->stop, 0, 0, 0, NULL},
        {"--temp|--temperature", CLI_FLOAT, &a->sp.temperature, 0, inf, 0, NULL},
        {"--top-k", CLI_INT, &a->sp.top_k, 0, inf, 0, NULL},
        {"--top-p", CLI_FLOAT, &a->sp.top_p, 0, 1, 1, NULL},
        {"--min-p", CLI_FLOAT, &a->sp.min_p, 0, 1, 0, NULL},
        {"--repeat-penalty", CLI_FLOAT, &a->sp.repeat_penalty, 0, inf, 1, NULL},
        {"--presence-penalty", CLI_FLOAT, &a->sp.presence_penalty, -inf, inf, 0, NULL},
        {"--frequency-penalty", CLI_FLOAT, &a->sp.frequency_penalty, -inf, inf, 0, NULL},
        {"--repeat-last-n", CLI_INT, &a->sp.penalty_last_n, -1, inf, 0, NULL},
        {"--seed", CLI_U64, &a->sp.seed, 0, 0, 0, &a->seen_seed},
        {"--num-return-sequences", CLI_INT, &a->n_seq, 1, 100000, 0, NULL},
        {"-t|--threads", CLI_INT, &a->n_threads, 1, 4096, 0, NULL},
        {"-c|--ctx-size", CLI_INT, &a->n_ctx, 1, inf, 0, NULL},
        {"--kv-f16", CLI_FLAG, &a->kv_f16, 0, 0, 0, NULL},
        {"--logprobs", CLI_INT, &a->inspect.logprobs_k, 0, 20, 0, NULL},
        {"--logprobs-json", CLI_STR, &a->inspect.logprobs_json, 0, 0, 0, NULL},
        {"--attention", CLI_STR, &a->inspect.attn_path, 0, 0, 0, NULL},
        {"--attn-layers", CLI_STR, &a->inspect.attn_layers, 0, 0, 0, NULL},
        {"--attn-heads", CLI_STR, &a->inspect.attn_heads, 0, 0, 0, NULL},
        {"--isa", CLI_STR, &a->isa, 0, 0, 0, NULL},
    };
    cli_spec spec = {"run", run_usage, run_help, opts, (int)(sizeof opts / sizeof opts[0]),
                     NULL, 0, 0};
    int rc = cli_parse(&spec, argc, argv);
    if (rc) return rc;
    if (!a->model) return cli_usage_error(&spec, "no model given (-m PATH)");
    if (a->prompt && a->file) return cli_usage_error(&spec, "give -p or -f, not both");
    if (a->seen_n && a->seen_max_length)
        return cli_usage_error(&spec, "give -n or --max-length, not both");
    if (a->n_predict == 0)
        return cli_usage_error(&spec, "-n must be -1 (no limit) or >= 1");
    for (int i = 0; i < a->stop.n; i++)
        if (!a->stop.v[i][0]) return cli_usage_error(&spec, "--stop needs a non-empty string");
    const run_inspect_opts *in = &a->inspect;
    if ((in->logprobs_k || in->logprobs_json || in->attn_path) && a->n_seq > 1)
        return cli_usage_error(&spec, "--logprobs and --attention record one sequence: "
                                      "drop --num-return-sequences");
    if ((in->attn_layers || in->attn_heads) && !in->attn_path)
        return cli_usage_error(&spec, "--attn-layers/--attn-heads need --attention FILE");
    if (!a->seen_seed) a->sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    return 0;
}

/* -------------------------------------------------------------- printing */

/* The separator and prompt of a sequence are printed with its first
 * token, so a failing generation (e.g. a prompt too long for the context)
 * prints nothing to stdout. */
typedef struct {
    char last;          /* last byte written to stdout, 0 if none */
    int seq;            /* separator to print first; 0 = none */
    const char *prompt; /* prompt to print first; NULL once printed */
    size_t prompt_len;
    run_inspect *inspect; /* NULL unless --logprobs / --attention */
} run_out;

static void put_text(run_out *o, const char *text, size_t len) {
    if (!len) return;
    fwrite(text, 1, len, stdout);
    o->last = text[len - 1];
}

static void put_header(run_out *o) {
    if (o->seq) {
        if (o->last && o->last != '\n') fputc('\n', stdout);
        printf("--- sequence %d ---\n", o->seq);
        o->last = '\n';
        o->seq = 0;
    }
    if (o->prompt) {
        put_text(o, o->prompt, o->prompt_len);
        o->prompt = NULL;
    }
}

static int on_token(void *user, int32_t id, const char *text, size_t len, float lp) {
    (void)lp;
    run_inspect_token(((run_out *)user)->inspect, id);
    put_header(user);
    put_text(user, text, len);
    fflush(stdout);
    return 0;
}

static const char *finish_name(loupe_finish f) {
    switch (f) {
    case LOUPE_FINISH_STOP: return "stop";
    case LOUPE_FINISH_LENGTH: return "length";
    case LOUPE_FINISH_CANCELLED: return "cancelled";
    default: return "none";
    }
}

static void print_stats(const loupe_generate_result *r, uint64_t seed, int seq, int n_seq) {
    char tag[32] = "";
    if (n_seq > 1) snprintf(tag, sizeof tag, "[sequence %d] ", seq);
    double pre = r->prefill_ms > 0 ? r->n_prompt / (r->prefill_ms / 1e3) : 0;
    double dec = r->decode_ms > 0 ? r->n_generated / (r->decode_ms / 1e3) : 0;
    fprintf(stderr,
            "loupe: %sprompt tokens: %d, generated tokens: %d, finish: %s, seed: %llu\n"
            "loupe: %sprefill: %.2f ms (%.1f tok/s), decode: %.2f ms (%.1f tok/s)\n",
            tag, r->n_prompt, r->n_generated, finish_name(r->finish),
            (unsigned long long)seed, tag, r->prefill_ms, pre, r->decode_ms, dec);
}

/* ------------------------------------------------------------- generate */

static int generate_all(const run_args *a, const char *text, size_t text_len,
                        loupe_session *s, const int32_t *ids, int n_ids, int max_new,
                        run_inspect *inspect) {
    run_out out = {0};
    out.inspect = inspect;
    loupe_generate_params gp;
    loupe_generate_default(&gp);
    gp.max_new_tokens = max_new;
    gp.sampling = a->sp;
    gp.stop = a->stop.v;
    gp.n_stop = a->stop.n;
    gp.ignore_eos = a->ignore_eos;
    gp.on_token = on_token;
    gp.user = &out;
    for (int i = 1; i <= a->n_seq; i++) {
        out.seq = a->n_seq > 1 ? i : 0;
        out.prompt = text;
        out.prompt_len = text_len;
        gp.sampling.seed = a->sp.seed + (uint64_t)(i - 1);
        loupe_session_reset(s);
        loupe_generate_result r;
        if (loupe_generate(s, ids, n_ids, &gp, &r) != LOUPE_OK) {
            fflush(stdout);
            return cli_fail(NULL);
        }
        put_header(&out);
        fflush(stdout);
        print_stats(&r, gp.sampling.seed, i, a->n_seq);
    }
    if (isatty(STDOUT_FILENO) && out.last && out.last != '\n') fputc('\n', stdout);
    fflush(stdout);
    return 0;
}

/* Loads, tokenizes, checks the lengths and generates. */
static int run(const run_args *a, const char *text, size_t len) {
    loupe_model *m = NULL;
    loupe_session *s = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int rc = cli_open_model(a->model, a->n_threads, &m);
    if (!rc) rc = cli_tokenize_text(m, text, len, 1, 1, &ids, &n_ids);
    if (!rc && n_ids == 0)
        rc = cli_fail("%s: the prompt is empty and this tokenizer adds no BOS "
                      "token: give a prompt with -p or -f", a->model);
    int max_new = a->n_predict < 0 ? 0 : a->n_predict;
    if (!rc && a->seen_max_length) {
        max_new = a->max_length - (int)n_ids;
        if (max_new <= 0)
            rc = cli_fail("--max-length %d leaves no room: the prompt has %zu tokens",
                          a->max_length, n_ids);
    }
    loupe_session_params sp = {.n_ctx = a->n_ctx, .n_threads = a->n_threads,
                               .kv_f16 = a->kv_f16};
    if (!rc && loupe_session_new(m, &sp, &s) != LOUPE_OK) rc = cli_fail(NULL);
    run_inspect *inspect = NULL;
    if (!rc) {
        int n_ctx = loupe_session_n_ctx(s);
        int rows = max_new > 0 && (int)n_ids + max_new < n_ctx ? (int)n_ids + max_new : n_ctx;
        rc = run_inspect_begin(&inspect, &a->inspect, s, m, ids, (int)n_ids, rows);
    }
    if (!rc) rc = generate_all(a, text, len, s, ids, (int)n_ids, max_new, inspect);
    if (!rc) rc = run_inspect_end(inspect, a->model);
    run_inspect_free(inspect, s);
    if (s) loupe_session_free(s);
    free(ids);
    if (m) loupe_model_close(m);
    return rc;
}

int cli_run(int argc, char **argv) {
    run_args a;
    int rc = parse_run(&a, argc, argv);
    if (rc) {
        free(a.stop.v);
        return rc < 0 ? 0 : rc;
    }
    char *text = NULL;
    size_t len = 0;
    if (a.file) {
        rc = cli_read_file(a.file, &text, &len);
    } else {
        const char *p = a.prompt ? a.prompt : "";
        len = strlen(p);
        text = malloc(len + 1);
        if (text) memcpy(text, p, len + 1);
        else rc = cli_fail("out of memory");
    }
    if (!rc) rc = cli_select_isa(a.isa);
    if (!rc) rc = run(&a, text, len);
    free(text);
    free(a.stop.v);
    return rc;
}
