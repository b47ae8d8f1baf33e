/*
 * info.c — `loupe info MODEL`: the model report and the CPU report.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char info_help[] =
    "Prints the model's hyper-parameters, tensors, tokenizer and memory use,\n"
    "then the CPU features found and the kernel set chosen.\n\n"
    "  -m, --model PATH   model: HF directory, .gguf or .loupe (or positional)\n"
    "  --isa NAME         force a kernel set: scalar, avx2, avx512, neon\n";

/* Calls a report writer with a growing buffer until the text fits. */
static char *report(size_t (*write)(const void *, char *, size_t), const void *arg) {
    for (size_t cap = 1 << 16; cap <= (size_t)1 << 28; cap *= 4) {
        char *buf = malloc(cap);
        if (!buf) return NULL;
        size_t n = write(arg, buf, cap);
        if (n + 1 < cap) return buf;
        free(buf);
    }
    return NULL;
}

static size_t write_model(const void *m, char *buf, size_t cap) {
    return loupe_model_describe(m, buf, cap);
}

static size_t write_cpu(const void *unused, char *buf, size_t cap) {
    (void)unused;
    return loupe_cpu_report(buf, cap);
}

int cli_info(int argc, char **argv) {
    const char *model = NULL, *isa = NULL, *pos[1];
    const cli_opt opts[] = {
        {"-m|--model", CLI_STR, &model, 0, 0, 0, NULL},
        {"--isa", CLI_STR, &isa, 0, 0, 0, NULL},
    };
    cli_spec spec = {"info", "info MODEL [--isa NAME]", info_help, opts, 2, pos, 1, 0};
    int rc = cli_parse(&spec, argc, argv);
    if (rc) return rc < 0 ? 0 : rc;
    if (spec.n_pos && model) return cli_usage_error(&spec, "give the model once");
    if (spec.n_pos) model = pos[0];
    if (!model) return cli_usage_error(&spec, "no model given");
    if (cli_select_isa(isa)) return 1;

    loupe_model *m;
    if (cli_open_model(model, 0, &m)) return 1;
    char *a = report(write_model, m), *b = report(write_cpu, NULL);
    if (a && b) {
        fputs(a, stdout);
        if (a[0] && a[strlen(a) - 1] != '\n') fputc('\n', stdout);
        fputs(b, stdout);
        if (b[0] && b[strlen(b) - 1] != '\n') fputc('\n', stdout);
    }
    free(a);
    free(b);
    loupe_model_close(m);
    if (!a || !b) return cli_fail("out of memory writing the report");
    return 0;
}
