/*
 * chat.c — `loupe chat`: an interactive conversation in the terminal.
 *
 * Each turn renders the whole conversation with the model's chat template
 * (tools/server/chatfmt.c) and tokenizes it. The session's KV cache holds
 * the tokens of the previous turns, so only the new suffix is evaluated;
 * if the new tokens do not extend the cached ones (a template that
 * rewrites history), the cache is rebuilt. Ctrl-C stops the answer being
 * written (a hook also stops a long prefill), not the program.
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../server/server.h"
#include "cli.h"

static const char chat_help[] =
    "Talks with a model in the terminal, using its chat template (models\n"
    "without one get the fallback template of docs/SERVER.md).\n\n"
    "  -m, --model PATH      HF directory, .gguf or .loupe file\n"
    "  -s, --system TEXT     system message\n"
    "  -n, --n-predict N     longest answer in tokens (default 512; -1 = until\n"
    "                        EOS or the context ends)\n"
    "  --temp T, --top-k K, --top-p P, --min-p P, --repeat-penalty R,\n"
    "  --repeat-last-n N, --seed S     sampling, as in `loupe run`\n"
    "  -c, --ctx-size N      context length (default: the model's, at most 4096)\n"
    "  -t, --threads N       threads (default: all cores)\n"
    "  --isa NAME            kernel set: scalar, avx2, avx512, neon\n"
    "  -v, --verbose         after each answer, print token counts (prompt,\n"
    "                        reused from the KV cache, generated) and speed\n\n"
    "In the conversation: /reset forgets it, /exit (or Ctrl-D) quits, Ctrl-C\n"
    "stops the answer being written. A line ending in '\\' continues on the next.\n";

static const char chat_usage[] = "chat -m MODEL [-s SYSTEM] [--temp T] [options]";

typedef struct {
    const char *model, *system, *isa;
    int n_predict, n_ctx, n_threads, seen_seed, verbose;
    loupe_sampling sp;
} chat_args;

static int parse_chat(chat_args *a, int argc, char **argv) {
    memset(a, 0, sizeof *a);
    a->n_predict = 512;
    loupe_sampling_default(&a->sp);
    const double inf = INFINITY;
    const cli_opt opts[] = {
        {"-m|--model", CLI_STR, &a->model, 0, 0, 0, NULL},
        {"-s|--system", CLI_STR, &a->system, 0, 0, 0, NULL},
        {"-n|--n-predict", CLI_INT, &a->n_predict, -1, inf, 0, NULL},
        {"--temp|--temperature", CLI_FLOAT, &a->sp.temperature, 0, inf, 0, NULL},
        {"--top-k", CLI_INT, &a->sp.top_k, 0, inf, 0, NULL},
        {"--top-p", CLI_FLOAT, &a->sp.top_p, 0, 1, 1, NULL},
        {"--min-p", CLI_FLOAT, &a->sp.min_p, 0, 1, 0, NULL},
        {"--repeat-penalty", CLI_FLOAT, &a->sp.repeat_penalty, 0, inf, 1, NULL},
        {"--repeat-last-n", CLI_INT, &a->sp.penalty_last_n, -1, inf, 0, NULL},
        {"--seed", CLI_U64, &a->sp.seed, 0, 0, 0, &a->seen_seed},
        {"-c|--ctx-size", CLI_INT, &a->n_ctx, 1, inf, 0, NULL},
        {"-t|--threads", CLI_INT, &a->n_threads, 1, 4096, 0, NULL},
        {"--isa", CLI_STR, &a->isa, 0, 0, 0, NULL},
        {"-v|--verbose", CLI_FLAG, &a->verbose, 0, 0, 0, NULL},
    };
    cli_spec spec = {"chat", chat_usage, chat_help, opts, (int)(sizeof opts / sizeof opts[0]), NULL, 0, 0};
    int rc = cli_parse(&spec, argc, argv);
    if (rc) return rc;
    if (!a->model) return cli_usage_error(&spec, "no model given (-m PATH)");
    if (a->n_predict == 0) return cli_usage_error(&spec, "-n must be -1 (no limit) or >= 1");
    if (!a->seen_seed) a->sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    return 0;
}

/* ------------------------------------------------------------ Ctrl-C */

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

static int hook_interrupt(void *user, const loupe_activation *a) {
    (void)user;
    (void)a;
    return interrupted;
}

/* ------------------------------------------------------------- history */

typedef struct {
    loupe_chat_message *msgs; /* (n) role is static, content malloc'd */
    int n, cap;
} history;

static int history_add(history *h, const char *role, const char *text, size_t len) {
    if (h->n == h->cap) {
        int cap = h->cap ? 2 * h->cap : 16;
        loupe_chat_message *m = realloc(h->msgs, (size_t)cap * sizeof *m);
        if (!m) return -1;
        h->msgs = m;
        h->cap = cap;
    }
    char *c = malloc(len + 1);
    if (!c) return -1;
    memcpy(c, text, len);
    c[len] = 0;
    h->msgs[h->n].role = role;
    h->msgs[h->n++].content = c;
    return 0;
}

/* Drops messages from index `from` on (keeps the system message). */
static void history_truncate(history *h, int from) {
    while (h->n > from) free((char *)h->msgs[--h->n].content);
}

/* Drops the oldest user/assistant exchange after the system message. */
static int history_drop_oldest(history *h, int first) {
    if (h->n - first < 3) return -1; /* keep at least the new user message */
    int k = h->msgs[first + 1].role[0] == 'a' ? 2 : 1;
    for (int i = 0; i < k; i++) free((char *)h->msgs[first + i].content);
    memmove(h->msgs + first, h->msgs + first + k, (size_t)(h->n - first - k) * sizeof *h->msgs);
    h->n -= k;
    return 0;
}

/* ------------------------------------------------------------- a turn */

typedef struct {
    const chat_args *a;
    const loupe_model *m;
    loupe_session *s;
    history h;
    int first;            /* index of the first non-system message */
    int32_t *cache;       /* (n_cache) tokens in the KV cache */
    int n_cache, cap_cache;
    int32_t *gen;         /* (n_gen) tokens of the answer being written */
    int n_gen, cap_gen;
    char *answer;         /* (n_answer) its text */
    size_t n_answer, cap_answer;
    int turn;             /* answers so far: seed + turn samples each */
} chat;

static int grow(void **p, int *cap, int need, size_t elem) {
    if (need <= *cap) return 0;
    int c = *cap ? *cap : 256;
    while (c < need) c *= 2;
    void *np = realloc(*p, (size_t)c * elem);
    if (!np) return -1;
    *p = np;
    *cap = c;
    return 0;
}

static int on_token(void *user, int32_t id, const char *text, size_t len, float lp) {
    (void)lp;
    chat *ch = user;
    if (grow((void **)&ch->gen, &ch->cap_gen, ch->n_gen + 1, sizeof(int32_t)) == 0) ch->gen[ch->n_gen++] = id;
    if (len) {
        fwrite(text, 1, len, stdout);
        fflush(stdout);
        if (ch->n_answer + len + 1 > ch->cap_answer) {
            size_t cap = 2 * ch->cap_answer + len + 256;
            char *a = realloc(ch->answer, cap);
            if (!a) return 1;
            ch->answer = a;
            ch->cap_answer = cap;
        }
        memcpy(ch->answer + ch->n_answer, text, len);
        ch->n_answer += len;
    }
    return interrupted;
}

static void forget_cache(chat *ch) {
    loupe_session_reset(ch->s);
    ch->n_cache = 0;
}

/* The prompt for the conversation so far; drops the oldest exchanges
 * while it does not fit with room for an answer. */
static int build_prompt(chat *ch, srv_prompt *p) {
    int n_ctx = loupe_session_n_ctx(ch->s);
    for (;;) {
        if (srv_chat_prompt(ch->m, ch->h.msgs, ch->h.n, p) != LOUPE_OK) return cli_fail(NULL);
        int room = ch->a->n_predict > 0 && ch->a->n_predict < n_ctx / 2 ? ch->a->n_predict : n_ctx / 4;
        if (p->n + room <= n_ctx) return 0;
        srv_prompt_free(p);
        if (history_drop_oldest(&ch->h, ch->first) != 0)
            return cli_fail("this message does not fit in the context (%d tokens)", n_ctx);
        fprintf(stderr, "(context full: the oldest exchange was dropped)\n");
        forget_cache(ch);
    }
}

/* Generates the answer to the last user message; 0, or 1 on error. */
static int answer(chat *ch) {
    srv_prompt p;
    if (build_prompt(ch, &p)) return 1;
    if (ch->n_cache >= p.n || (ch->n_cache && memcmp(ch->cache, p.ids, (size_t)ch->n_cache * sizeof(int32_t))))
        forget_cache(ch);
    const char *const *stops;
    loupe_generate_params gp;
    loupe_generate_default(&gp);
    gp.max_new_tokens = ch->a->n_predict > 0 ? ch->a->n_predict : 0;
    gp.sampling = ch->a->sp;
    gp.sampling.seed += (uint64_t)ch->turn++;
    gp.n_stop = srv_chat_stops(ch->m, &stops);
    gp.stop = stops;
    gp.on_token = on_token;
    gp.user = ch;
    ch->n_gen = 0;
    ch->n_answer = 0;
    loupe_generate_result r;
    int reused = ch->n_cache;
    loupe_status st = loupe_generate(ch->s, p.ids + ch->n_cache, p.n - ch->n_cache, &gp, &r);
    int rc = 0;
    if (st == LOUPE_OK || st == LOUPE_ERR_CANCELLED) {
        /* in the cache now: the prompt and every answer token but the last */
        int n = p.n + (ch->n_gen > 0 ? ch->n_gen - 1 : 0);
        if (st == LOUPE_OK && loupe_session_pos(ch->s) == n &&
            grow((void **)&ch->cache, &ch->cap_cache, n, sizeof(int32_t)) == 0) {
            memcpy(ch->cache, p.ids, (size_t)p.n * sizeof(int32_t));
            if (n > p.n) memcpy(ch->cache + p.n, ch->gen, (size_t)(n - p.n) * sizeof(int32_t));
            ch->n_cache = n;
        } else {
            forget_cache(ch); /* a cancelled forward pass leaves the cache unknown */
        }
        fputc('\n', stdout);
        if (interrupted) fprintf(stderr, "(stopped)\n");
        if (ch->a->verbose)
            fprintf(stderr, "(prompt %d tokens, %d reused from the KV cache, %d generated, %.1f tok/s)\n", p.n,
                    reused, r.n_generated, r.decode_ms > 0 ? r.n_generated / (r.decode_ms / 1e3) : 0.0);
        if (history_add(&ch->h, "assistant", ch->answer ? ch->answer : "", ch->n_answer)) rc = cli_fail("out of memory");
    } else {
        fputc('\n', stdout);
        rc = cli_fail(NULL);
        forget_cache(ch);
        history_truncate(&ch->h, ch->h.n - 1); /* forget the message that failed */
    }
    srv_prompt_free(&p);
    return rc;
}

/* --------------------------------------------------------------- input */

/* Reads one message (lines ending in '\' continue). Returns 1 with a line,
 * 0 at EOF, -1 when Ctrl-C interrupted the read. */
static int read_message(char **buf, size_t *cap, int tty) {
    size_t n = 0;
    if (tty) fputs("> ", stdout);
    fflush(stdout);
    for (;;) {
        if (*cap - n < 4096) {
            char *b = realloc(*buf, *cap + 8192);
            if (!b) return 0;
            *buf = b;
            *cap += 8192;
        }
        errno = 0;
        if (!fgets(*buf + n, (int)(*cap - n), stdin)) {
            if (ferror(stdin) && errno == EINTR) {
                clearerr(stdin);
                return -1;
            }
            return n > 0;
        }
        n += strlen(*buf + n);
        if (n && (*buf)[n - 1] != '\n' && !feof(stdin)) continue; /* longer than the buffer */
        while (n && ((*buf)[n - 1] == '\n' || (*buf)[n - 1] == '\r')) (*buf)[--n] = 0;
        if (n && (*buf)[n - 1] == '\\') {
            (*buf)[n - 1] = '\n';
            if (tty) fputs(". ", stdout);
            fflush(stdout);
            continue;
        }
        return 1;
    }
}

static int conversation(chat *ch) {
    int tty = isatty(STDIN_FILENO), rc = 0;
    char *line = NULL;
    size_t cap = 0;
    fprintf(stderr, "loupe chat: %s (%s template). /reset forgets the conversation, /exit quits, "
                    "Ctrl-C stops an answer.\n", ch->a->model, loupe_chat_template(ch->m) ? "chat" : "fallback");
    for (;;) {
        interrupted = 0;
        int got = read_message(&line, &cap, tty);
        if (got < 0) {
            fputs("\n", stdout);
            fputs("(type /exit to quit)\n", stderr);
            continue;
        }
        if (got == 0) break;
        if (!line[0]) continue;
        if (strcmp(line, "/exit") == 0 || strcmp(line, "/quit") == 0) break;
        if (strcmp(line, "/reset") == 0) {
            history_truncate(&ch->h, ch->first);
            forget_cache(ch);
            fputs("(conversation cleared)\n", stderr);
            continue;
        }
        if (strcmp(line, "/help") == 0) {
            fputs("/reset forgets the conversation, /exit quits, Ctrl-C stops an answer\n", stderr);
            continue;
        }
        if (history_add(&ch->h, "user", line, strlen(line))) {
            rc = cli_fail("out of memory");
            break;
        }
        if (answer(ch)) {
            if (!tty) {
                rc = 1;
                break;
            }
        }
    }
    free(line);
    return rc;
}

static int run_chat(chat_args *a) {
    chat ch = {0};
    ch.a = a;
    loupe_model *m = NULL;
    if (cli_open_model(a->model, a->n_threads, &m)) return 1;
    ch.m = m;
    loupe_model_info info;
    loupe_model_get_info(m, &info);
    loupe_session_params sp = {.n_ctx = a->n_ctx ? a->n_ctx : (info.n_ctx < 4096 ? info.n_ctx : 4096),
                               .n_threads = a->n_threads};
    int rc = 0;
    if (loupe_session_new(m, &sp, &ch.s) != LOUPE_OK ||
        loupe_session_add_hook(ch.s, "resid_post.*", hook_interrupt, NULL) != LOUPE_OK)
        rc = cli_fail(NULL);
    if (!rc && a->system && history_add(&ch.h, "system", a->system, strlen(a->system))) rc = cli_fail("out of memory");
    ch.first = ch.h.n;
    if (!rc) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_sigint; /* no SA_RESTART: Ctrl-C interrupts a read */
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        rc = conversation(&ch);
    }
    history_truncate(&ch.h, 0);
    free(ch.h.msgs);
    free(ch.cache);
    free(ch.gen);
    free(ch.answer);
    if (ch.s) loupe_session_free(ch.s);
    loupe_model_close(m);
    return rc;
}

int cli_chat(int argc, char **argv) {
    chat_args a;
    int rc = parse_chat(&a, argc, argv);
    if (rc) return rc < 0 ? 0 : rc;
    if (cli_select_isa(a.isa)) return 1;
    return run_chat(&a);
}
