/*
 * tokenize.c — `loupe tokenize -m MODEL`: token ids of the text on stdin.
 * The text is taken byte for byte (a trailing newline is part of it).
 */
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"

static const char tokenize_help[] =
    "Reads UTF-8 text from stdin and prints its token ids, space-separated,\n"
    "on one line. By default special tokens are added as the tokenizer's\n"
    "configuration says (BOS/EOS, like Hugging Face encode) and special-token\n"
    "texts such as \"<|endoftext|>\" become their ids.\n\n"
    "  -m, --model PATH   model (or tokenizer-bearing file) to use\n"
    "  --no-special       add no special tokens, parse no special-token text\n"
    "  --json             print {\"ids\":[...],\"tokens\":[...]} (vocabulary strings)\n";

/* Writes s as a JSON string literal. */
static void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p == '\n') fputs("\\n", f);
        else if (*p == '\t') fputs("\\t", f);
        else if (*p == '\r') fputs("\\r", f);
        else if (*p < 0x20 || *p == 0x7f) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

int cli_tokenize(int argc, char **argv) {
    const char *model = NULL, *pos[1];
    int no_special = 0, json = 0;
    const cli_opt opts[] = {
        {"-m|--model", CLI_STR, &model, 0, 0, 0, NULL},
        {"--no-special", CLI_FLAG, &no_special, 0, 0, 0, NULL},
        {"--json", CLI_FLAG, &json, 0, 0, 0, NULL},
    };
    cli_spec spec = {"tokenize", "tokenize -m MODEL [--no-special] [--json] < TEXT",
                     tokenize_help, opts, 3, pos, 1, 0};
    int rc = cli_parse(&spec, argc, argv);
    if (rc) return rc < 0 ? 0 : rc;
    if (spec.n_pos && model) return cli_usage_error(&spec, "give the model once");
    if (spec.n_pos) model = pos[0];
    if (!model) return cli_usage_error(&spec, "no model given (-m PATH)");

    char *text;
    size_t len, n;
    int32_t *ids;
    loupe_model *m;
    if (cli_read_file("-", &text, &len)) return 1;
    if (cli_open_model(model, 0, &m)) {
        free(text);
        return 1;
    }
    rc = cli_tokenize_text(m, text, len, !no_special, !no_special, &ids, &n);
    free(text);
    if (rc) {
        loupe_model_close(m);
        return 1;
    }
    if (json) {
        printf("{\"ids\":[");
        for (size_t i = 0; i < n; i++) printf("%s%d", i ? "," : "", (int)ids[i]);
        printf("],\"tokens\":[");
        for (size_t i = 0; i < n; i++) {
            const char *s = loupe_token_str(m, ids[i]);
            if (i) fputc(',', stdout);
            json_string(stdout, s ? s : "");
        }
        printf("]}\n");
    } else {
        for (size_t i = 0; i < n; i++) printf("%s%d", i ? " " : "", (int)ids[i]);
        printf("\n");
    }
    free(ids);
    loupe_model_close(m);
    return 0;
}
