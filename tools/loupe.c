/*
 * loupe.c — the `loupe` command: dispatches to one subcommand per file in
 * tools/cli/. To add a subcommand, write tools/cli/<name>.c defining
 * `int cli_<name>(int argc, char **argv)` and add one line to
 * LOUPE_COMMANDS below.
 */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

/* ------------------------------------------------------------ subcommands */

#define LOUPE_COMMANDS(X)                                                 \
    X(run, "generate text from a prompt")                                 \
    X(info, "describe a model (hparams, tensors, tokenizer) and the CPU") \
    X(tokenize, "print the token ids of the text on stdin")               \
    X(attention, "attention patterns as JSON, .npy, HTML or PNG")         \
    X(lens, "logit lens: top tokens of every layer at every position")   \
    X(attribute, "contribution of each prompt token to log p(target)")   \
    X(ablate, "ablate heads or patch activations; change in log p")      \
    X(steer, "generate with a vector added to the residual stream")     \
    X(compare, "per-layer attention JS and logit-lens KL of two models") \
    X(bench, "prefill and decode speed, like llama-bench (--json)")      \
    X(perplexity, "perplexity of a text; KL divergence against a base model") \
    X(serve, "OpenAI-compatible HTTP server (completions, chat)")      \
    X(chat, "interactive chat in the terminal with the chat template")

#define LOUPE_DECLARE(name, summary) int cli_##name(int argc, char **argv);
LOUPE_COMMANDS(LOUPE_DECLARE)

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} loupe_command;

#define LOUPE_ENTRY(name, summary) {#name, cli_##name, summary},
static const loupe_command commands[] = {LOUPE_COMMANDS(LOUPE_ENTRY)};
#define N_COMMANDS ((int)(sizeof commands / sizeof commands[0]))

/* ------------------------------------------------------------------ main */

static void print_help(FILE *f) {
    fprintf(f, "usage: loupe <command> [options]   (loupe <command> --help)\n\n"
               "commands:\n");
    for (int i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n  --help       this text\n  --version    the version\n"
               "\nenvironment: LOUPE_ISA=scalar|avx2|avx512|neon forces a kernel set.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        print_help(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 ||
        strcmp(cmd, "help") == 0) {
        print_help(stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "-V") == 0 ||
        strcmp(cmd, "version") == 0) {
        printf("loupe %s\n", loupe_version());
        return 0;
    }
    for (int i = 0; i < N_COMMANDS; i++)
        if (strcmp(cmd, commands[i].name) == 0) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "loupe: unknown command '%s'\n", cmd);
    print_help(stderr);
    return 2;
}
