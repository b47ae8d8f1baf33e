/*
 * bench.c — `loupe bench`: prefill (pp) and decode (tg) speed, like
 * llama-bench. Each test runs once to warm up, then -r times; the table
 * gives mean ± standard deviation of tokens/s; --json prints one object per
 * test with llama-bench's field names so both tools' output can be joined.
 * -d runs each test with that many tokens already in the KV cache (filled,
 * untimed, before every run), as llama-bench's -d: decode speed at depth.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli.h"
#include "loupe_interp.h"

static const char bench_help[] =
    "Measures prompt processing (pp: one batched evaluation of -p tokens) and\n"
    "text generation (tg: -n tokens decoded one at a time) in tokens/s.\n\n"
    "  -m, --model PATH      model: HF directory, .gguf or .loupe\n"
    "  -p, --n-prompt LIST   prompt lengths, comma-separated (default 512; 0 = skip)\n"
    "  -n, --n-gen LIST      generation lengths (default 128; 0 = skip)\n"
    "  -t, --threads LIST    thread counts (default: all cores)\n"
    "  -d, --n-depth LIST    tokens already in the KV cache when each test\n"
    "                        starts, filled untimed before every run (default 0)\n"
    "  -r, --repetitions N   timed runs per test after one warm-up (default 5)\n"
    "  --kv-f16              fp16 KV cache\n"
    "  --capture HOOK        record a hook point while running (e.g.\n"
    "                        attn.pattern.* as `run --attention` does) to\n"
    "                        measure what inspection costs\n"
    "  --json                one JSON object per test (llama-bench field names)\n"
    "  --isa NAME            force a kernel set: scalar, avx2, avx512, neon\n";

#define BENCH_MAX_LIST 16

/* Parses "1,2,4" into v; returns the count or -1. */
static int parse_list(const char *s, int *v, int lo) {
    int n = 0;
    while (s && *s) {
        char *end;
        long x = strtol(s, &end, 10);
        if (end == s || x < lo || x > 1 << 20 || n == BENCH_MAX_LIST) return -1;
        v[n++] = (int)x;
        if (*end == ',') end++;
        else if (*end) return -1;
        s = end;
    }
    return n;
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* Deterministic pseudo-random token ids in [0, n_vocab). */
static void fill_tokens(int32_t *ids, int n, int n_vocab) {
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        ids[i] = (int32_t)(x % (uint64_t)n_vocab);
    }
}

/* One timed run after n_depth untimed tokens: pp evaluates n_prompt tokens
 * in one call; tg decodes n_gen tokens one at a time. Returns ns, or -1 on
 * error. */
static double run_once(loupe_session *s, const int32_t *ids, int n_depth, int n_prompt,
                       int n_gen, float *logits) {
    loupe_session_reset(s);
    if (n_depth > 0 && loupe_eval(s, ids, n_depth, logits, 0) != LOUPE_OK) return -1;
    ids += n_depth;
    double t0 = now_ns();
    if (n_prompt > 0 && loupe_eval(s, ids, n_prompt, logits, 0) != LOUPE_OK) return -1;
    for (int i = 0; i < n_gen; i++)
        if (loupe_eval(s, ids + i, 1, logits, 0) != LOUPE_OK) return -1;
    return now_ns() - t0;
}

typedef struct {
    const char *model;
    uint64_t size, n_params;
    int json, first_json, kv_f16;
    const char *capture; /* hook name or NULL */
} bench_ctx;

static void report(bench_ctx *c, int threads, int n_depth, int n_prompt, int n_gen,
                   const double *ns, int reps) {
    int n_tok = n_prompt + n_gen;
    double mean_ns = 0, mean_ts = 0, sd_ns = 0, sd_ts = 0;
    for (int r = 0; r < reps; r++) {
        mean_ns += ns[r] / reps;
        mean_ts += n_tok / (ns[r] / 1e9) / reps;
    }
    for (int r = 0; r < reps && reps > 1; r++) {
        double ts = n_tok / (ns[r] / 1e9);
        sd_ns += (ns[r] - mean_ns) * (ns[r] - mean_ns) / (reps - 1);
        sd_ts += (ts - mean_ts) * (ts - mean_ts) / (reps - 1);
    }
    sd_ns = sqrt(sd_ns);
    sd_ts = sqrt(sd_ts);
    char test[48];
    int at = snprintf(test, sizeof test, n_prompt ? "pp%d" : "tg%d", n_prompt ? n_prompt : n_gen);
    if (n_depth) snprintf(test + at, sizeof test - (size_t)at, " @ d%d", n_depth);
    if (!c->json) {
        printf("| %-28.28s | %9.2f MiB | %8.2f M | %-7s | %7d | %14s | %10.2f ± %-7.2f |\n",
               c->model, c->size / 1048576.0, c->n_params / 1e6, loupe_isa(), threads, test,
               mean_ts, sd_ts);
        fflush(stdout);
        return;
    }
    printf("%s  {\"model_filename\": \"%s\", \"model_size\": %llu, \"model_n_params\": %llu, "
           "\"backend\": \"CPU\", \"isa\": \"%s\", \"n_threads\": %d, \"n_prompt\": %d, "
           "\"n_gen\": %d, \"n_depth\": %d, \"avg_ns\": %.0f, \"stddev_ns\": %.0f, \"avg_ts\": %.6f, "
           "\"stddev_ts\": %.6f, \"samples_ns\": [",
           c->first_json ? "[\n" : ",\n", c->model, (unsigned long long)c->size,
           (unsigned long long)c->n_params, loupe_isa(), threads, n_prompt, n_gen, n_depth, mean_ns,
           sd_ns, mean_ts, sd_ts);
    for (int r = 0; r < reps; r++) printf("%s%.0f", r ? ", " : "", ns[r]);
    printf("]}");
    c->first_json = 0;
    fflush(stdout);
}

static int bench_one(bench_ctx *c, const loupe_model *m, int threads, int n_depth,
                     int n_prompt, int n_gen, int reps) {
    loupe_model_info info;
    loupe_model_get_info(m, &info);
    int need = n_depth + n_prompt + n_gen;
    if (need > info.n_ctx)
        return cli_fail("test of %d tokens at depth %d exceeds the model's context of %d",
                        n_prompt + n_gen, n_depth, info.n_ctx);
    loupe_session_params sp = {.n_ctx = need, .n_threads = threads, .kv_f16 = c->kv_f16};
    loupe_session *s;
    if (loupe_session_new(m, &sp, &s) != LOUPE_OK) return cli_fail(NULL);
    loupe_capture *cap = NULL;
    if (c->capture && loupe_capture_new(s, c->capture, need, &cap) != LOUPE_OK) {
        loupe_session_free(s);
        return cli_fail(NULL);
    }
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(need + 1));
    float *logits = malloc(sizeof(float) * (size_t)info.n_vocab);
    double *ns = malloc(sizeof(double) * (size_t)reps);
    int rc = 0;
    if (!ids || !logits || !ns) {
        rc = cli_fail("out of memory");
    } else {
        fill_tokens(ids, need + 1, info.n_vocab);
        if (run_once(s, ids, n_depth, n_prompt, n_gen, logits) < 0) rc = cli_fail(NULL); /* warm-up */
        for (int r = 0; r < reps && !rc; r++)
            if ((ns[r] = run_once(s, ids, n_depth, n_prompt, n_gen, logits)) < 0)
                rc = cli_fail(NULL);
        if (!rc) report(c, threads, n_depth, n_prompt, n_gen, ns, reps);
    }
    free(ids);
    free(logits);
    free(ns);
    loupe_session_free(s); /* before the capture its hook points to */
    loupe_capture_free(cap);
    return rc;
}

int cli_bench(int argc, char **argv) {
    const char *model = NULL, *pp = "512", *tg = "128", *th = NULL, *isa = NULL, *depth = "0";
    int reps = 5, json = 0, kv_f16 = 0;
    const char *capture = NULL;
    const cli_opt opts[] = {
        {"-m|--model", CLI_STR, &model, 0, 0, 0, NULL},
        {"-p|--n-prompt", CLI_STR, &pp, 0, 0, 0, NULL},
        {"-n|--n-gen", CLI_STR, &tg, 0, 0, 0, NULL},
        {"-d|--n-depth", CLI_STR, &depth, 0, 0, 0, NULL},
        {"-t|--threads", CLI_STR, &th, 0, 0, 0, NULL},
        {"-r|--repetitions", CLI_INT, &reps, 1, 1000, 0, NULL},
        {"--json", CLI_FLAG, &json, 0, 0, 0, NULL},
        {"--kv-f16", CLI_FLAG, &kv_f16, 0, 0, 0, NULL},
        {"--capture", CLI_STR, &capture, 0, 0, 0, NULL},
        {"--isa", CLI_STR, &isa, 0, 0, 0, NULL},
    };
    cli_spec spec = {"bench", "bench -m MODEL [-p 512] [-n 128] [-d 0] [-t 1,2] [-r 5] [--json]",
                     bench_help, opts, (int)(sizeof opts / sizeof opts[0]), NULL, 0, 0};
    int rc = cli_parse(&spec, argc, argv);
    if (rc) return rc < 0 ? 0 : rc;
    if (!model) return cli_usage_error(&spec, "no model given (-m PATH)");
    int pps[BENCH_MAX_LIST], tgs[BENCH_MAX_LIST], ths[BENCH_MAX_LIST], ds[BENCH_MAX_LIST];
    int n_pp = parse_list(pp, pps, 0), n_tg = parse_list(tg, tgs, 0);
    int n_d = parse_list(depth, ds, 0);
    int n_th = th ? parse_list(th, ths, 1) : 1;
    if (!th) ths[0] = 0;
    if (n_pp < 0) return cli_usage_error(&spec, "-p: expected comma-separated counts >= 0");
    if (n_tg < 0) return cli_usage_error(&spec, "-n: expected comma-separated counts >= 0");
    if (n_d < 1) return cli_usage_error(&spec, "-d: expected comma-separated counts >= 0");
    if (n_th < 1) return cli_usage_error(&spec, "-t: expected comma-separated counts >= 1");
    if (cli_select_isa(isa)) return 1;

    loupe_model *m;
    if (cli_open_model(model, 0, &m)) return 1;
    loupe_model_info info;
    loupe_model_get_info(m, &info);
    struct stat st;
    const char *base = strrchr(model, '/');
    bench_ctx c = {base && base[1] ? base + 1 : model,
                   stat(model, &st) == 0 && S_ISREG(st.st_mode) ? (uint64_t)st.st_size
                                                                  : info.weight_bytes,
                   info.n_params, json, 1, kv_f16, capture};
    if (!json)
        printf("| %-28s | %13s | %10s | %-7s | %7s | %14s | %20s |\n"
               "| %.28s | %.13s | %.10s | %.7s | %.7s | %.14s | %.20s |\n",
               "model", "size", "params", "isa", "threads", "test", "t/s",
               "----------------------------", "-------------", "----------", "-------",
               "------:", "-------------:", "-------------------:");
    for (int ti = 0; ti < n_th && !rc; ti++)
        for (int di = 0; di < n_d && !rc; di++) {
            for (int i = 0; i < n_pp && !rc; i++)
                if (pps[i] > 0) rc = bench_one(&c, m, ths[ti], ds[di], pps[i], 0, reps);
            for (int i = 0; i < n_tg && !rc; i++)
                if (tgs[i] > 0) rc = bench_one(&c, m, ths[ti], ds[di], 0, tgs[i], reps);
        }
    if (json && !c.first_json) printf("\n]\n");
    loupe_model_close(m);
    return rc;
}
