/*
 * serve.c — `loupe serve`: the OpenAI-compatible HTTP server
 * (tools/server/). Runs until SIGTERM or SIGINT, then drains.
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../server/server.h"
#include "cli.h"

static const char serve_help[] =
    "Serves a model over HTTP with OpenAI's API (docs/SERVER.md):\n"
    "  GET  /v1/models            POST /v1/completions\n"
    "  GET  /health               POST /v1/chat/completions\n"
    "and loupe's interpretability endpoints, answering the JSON of the CLI's -o:\n"
    "  POST /v1/loupe/attention   POST /v1/loupe/lens   POST /v1/loupe/attribute\n\n"
    "  -m, --model PATH      HF directory, .gguf or .loupe file\n"
    "  --host ADDR           numeric address to listen on (default 127.0.0.1)\n"
    "  --port N              port (default 8080; 0 = any free port, printed)\n"
    "  --parallel N          requests generating at once, one session each\n"
    "                        (default 1)\n"
    "  --queue N             requests waiting for a slot before 503 (default 16)\n"
    "  -c, --ctx N           context per slot (default: the model's, at most 4096)\n"
    "  -t, --threads N       threads per slot (default: cores / parallel)\n"
    "  --api-key KEY         require 'Authorization: Bearer KEY' (also env\n"
    "                        LOUPE_API_KEY)\n"
    "  --alias NAME          model name in responses (default: file name)\n"
    "  --max-body BYTES      largest request body (default 4194304)\n"
    "  --drain-timeout SEC   on SIGTERM, time in-flight requests get before\n"
    "                        they are cancelled (default 10)\n"
    "  -v, --verbose         log every request to stderr\n"
    "  --isa NAME            kernel set: scalar, avx2, avx512, neon\n";

static const char serve_usage[] = "serve -m MODEL [--host ADDR] [--port N] [--parallel N] [options]";

typedef struct {
    const char *model, *isa, *alias;
    srv_config cfg;
    int max_body;
} serve_args;

static int parse_serve(serve_args *a, int argc, char **argv) {
    memset(a, 0, sizeof *a);
    a->cfg.host = "127.0.0.1";
    a->cfg.port = 8080;
    a->cfg.parallel = 1;
    a->cfg.queue = 16;
    a->cfg.drain_seconds = 10;
    a->max_body = 4 << 20;
    float drain = 10;
    const double inf = INFINITY;
    const cli_opt opts[] = {
        {"-m|--model", CLI_STR, &a->model, 0, 0, 0, NULL},
        {"--host", CLI_STR, &a->cfg.host, 0, 0, 0, NULL},
        {"--port", CLI_INT, &a->cfg.port, 0, 65535, 0, NULL},
        {"--parallel", CLI_INT, &a->cfg.parallel, 1, 256, 0, NULL},
        {"--queue", CLI_INT, &a->cfg.queue, 0, 100000, 0, NULL},
        {"-c|--ctx|--ctx-size", CLI_INT, &a->cfg.n_ctx, 1, inf, 0, NULL},
        {"-t|--threads", CLI_INT, &a->cfg.n_threads, 1, 4096, 0, NULL},
        {"--api-key", CLI_STR, &a->cfg.api_key, 0, 0, 0, NULL},
        {"--alias", CLI_STR, &a->alias, 0, 0, 0, NULL},
        {"--max-body", CLI_INT, &a->max_body, 1024, 1 << 30, 0, NULL},
        {"--drain-timeout", CLI_FLOAT, &drain, 0, 3600, 0, NULL},
        {"-v|--verbose", CLI_FLAG, &a->cfg.verbose, 0, 0, 0, NULL},
        {"--isa", CLI_STR, &a->isa, 0, 0, 0, NULL},
    };
    cli_spec spec = {"serve", serve_usage, serve_help, opts, (int)(sizeof opts / sizeof opts[0]), NULL, 0, 0};
    int rc = cli_parse(&spec, argc, argv);
    if (rc) return rc;
    if (!a->model) return cli_usage_error(&spec, "no model given (-m PATH)");
    if (!a->cfg.api_key) {
        const char *env = getenv("LOUPE_API_KEY");
        if (env && env[0]) a->cfg.api_key = env;
    }
    if (a->cfg.api_key && !a->cfg.api_key[0]) return cli_usage_error(&spec, "--api-key must not be empty");
    a->cfg.drain_seconds = drain;
    a->cfg.max_body = (size_t)a->max_body;
    return 0;
}

/* "models/stories260K/stories260K.gguf" -> "stories260K.gguf". */
static void model_name(const char *path, char *out, size_t cap) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/') b--;
    snprintf(out, cap, "%.*s", (int)(n - b), path + b);
}

static int serve(serve_args *a, const sigset_t *sigs) {
    loupe_model *m = NULL;
    srv_engine *e = NULL;
    srv_http *h = NULL;
    char name[256];
    if (cli_open_model(a->model, 0, &m)) return 1;
    srv_model sm = {m, {0}, 0, name};
    loupe_model_get_info(m, &sm.info);
    model_name(a->model, name, sizeof name);
    if (a->alias) snprintf(name, sizeof name, "%s", a->alias);
    sm.n_ctx = a->cfg.n_ctx ? a->cfg.n_ctx : (sm.info.n_ctx < 4096 ? sm.info.n_ctx : 4096);
    a->cfg.n_ctx = sm.n_ctx;
    if (!a->cfg.n_threads) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        a->cfg.n_threads = cores / a->cfg.parallel > 1 ? (int)(cores / a->cfg.parallel) : 1;
    }
    a->cfg.model_name = name;
    int rc = 0;
    if (srv_engine_new(&sm, &a->cfg, &e) != LOUPE_OK) rc = cli_fail(NULL);
    if (!rc) rc = srv_http_start(e, &sm, &a->cfg, &h);
    if (!rc) {
        fprintf(stderr,
                "loupe serve: listening on http://%s:%d (model %s, %d slot%s x %d threads, ctx %d, %s template)\n",
                a->cfg.host, srv_http_port(h), name, a->cfg.parallel, a->cfg.parallel > 1 ? "s" : "",
                a->cfg.n_threads, sm.n_ctx, loupe_chat_template(m) ? "chat" : "fallback");
        fflush(stderr);
        int sig = 0;
        while (sigwait(sigs, &sig) != 0) continue;
        fprintf(stderr, "loupe serve: %s: draining (up to %.0f s)\n", sig == SIGINT ? "SIGINT" : "SIGTERM",
                a->cfg.drain_seconds);
        srv_http_stop(h, a->cfg.drain_seconds);
        fprintf(stderr, "loupe serve: stopped\n");
    }
    if (e) {
        srv_engine_stop(e);
        srv_engine_free(e);
    }
    loupe_model_close(m);
    return rc;
}

int cli_serve(int argc, char **argv) {
    serve_args a;
    int rc = parse_serve(&a, argc, argv);
    if (rc) return rc < 0 ? 0 : rc;
    if (cli_select_isa(a.isa)) return 1;
    /* Every thread starts with SIGINT/SIGTERM blocked; this one waits for them. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    return serve(&a, &sigs);
}
