/*
 * args.c — the declarative option parser of the `loupe` subcommands.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* ---------------------------------------------------------------- errors */

int cli_usage_error(const cli_spec *spec, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "loupe %s: ", spec->cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nusage: loupe %s\nTry 'loupe %s --help'.\n", spec->usage,
            spec->cmd);
    return 2;
}

/* ---------------------------------------------------------------- lookup */

/* Does arg (up to len bytes) equal one of the '|'-separated names? */
static int names_match(const char *names, const char *arg, size_t len) {
    const char *p = names;
    for (;;) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == len && memcmp(p, arg, len) == 0) return 1;
        if (!bar) return 0;
        p = bar + 1;
    }
}

/* The option named by arg ("--x" or "--x=v"); *inline_val gets "v". */
static const cli_opt *find_opt(const cli_spec *spec, const char *arg,
                               const char **inline_val) {
    const char *eq = strncmp(arg, "--", 2) == 0 ? strchr(arg, '=') : NULL;
    size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
    *inline_val = eq ? eq + 1 : NULL;
    for (int i = 0; i < spec->n_opts; i++)
        if (names_match(spec->opts[i].names, arg, len)) return &spec->opts[i];
    return NULL;
}

/* ---------------------------------------------------------------- values */

static int out_of_range(const cli_opt *o, double v) {
    return (o->lo_open ? !(v > o->lo) : !(v >= o->lo)) || !(v <= o->hi);
}

static int range_error(const cli_spec *spec, const cli_opt *o, const char *flag,
                       const char *val) {
    char lo[32], hi[32];
    snprintf(lo, sizeof lo, "%g", o->lo);
    snprintf(hi, sizeof hi, "%g", o->hi);
    if (isinf(o->hi))
        return cli_usage_error(spec, "%s must be %s %s, got '%s'", flag,
                               o->lo_open ? ">" : ">=", lo, val);
    return cli_usage_error(spec, "%s must be in %c%s, %s], got '%s'", flag,
                           o->lo_open ? '(' : '[', lo, hi, val);
}

static int store_value(const cli_spec *spec, const cli_opt *o, const char *flag,
                       const char *val) {
    char *end;
    errno = 0;
    switch (o->kind) {
    case CLI_FLAG:
        *(int *)o->dest = 1;
        return 0;
    case CLI_STR:
        *(const char **)o->dest = val;
        return 0;
    case CLI_STRS: {
        cli_strs *l = o->dest;
        l->v[l->n++] = val; /* v has room for argc entries */
        return 0;
    }
    case CLI_INT: {
        long v = strtol(val, &end, 10);
        if (end == val || *end || errno)
            return cli_usage_error(spec, "%s expects an integer, got '%s'", flag, val);
        if (v < INT_MIN || v > INT_MAX || out_of_range(o, (double)v))
            return range_error(spec, o, flag, val);
        *(int *)o->dest = (int)v;
        return 0;
    }
    case CLI_U64: {
        const char *p = val;
        while (*p == ' ') p++;
        unsigned long long v = strtoull(val, &end, 0);
        if (end == val || *end || errno || *p == '-')
            return cli_usage_error(spec, "%s expects a non-negative integer, got '%s'",
                                   flag, val);
        *(uint64_t *)o->dest = (uint64_t)v;
        return 0;
    }
    case CLI_FLOAT: {
        double v = strtod(val, &end);
        if (end == val || *end || errno || !isfinite(v))
            return cli_usage_error(spec, "%s expects a number, got '%s'", flag, val);
        if (out_of_range(o, v)) return range_error(spec, o, flag, val);
        *(float *)o->dest = (float)v;
        return 0;
    }
    }
    return 0;
}

/* ----------------------------------------------------------------- parse */

int cli_parse(cli_spec *spec, int argc, char **argv) {
    int options_done = 0;
    spec->n_pos = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (options_done || arg[0] != '-' || arg[1] == 0) { /* "-" = stdin */
            if (spec->n_pos == spec->max_pos)
                return cli_usage_error(spec, "unexpected argument '%s'", arg);
            spec->pos[spec->n_pos++] = arg;
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            options_done = 1;
            continue;
        }
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            printf("usage: loupe %s\n%s", spec->usage, spec->help ? spec->help : "");
            return -1;
        }
        const char *val;
        const cli_opt *o = find_opt(spec, arg, &val);
        if (!o) return cli_usage_error(spec, "unknown option '%s'", arg);
        char flag[64];
        snprintf(flag, sizeof flag, "%.*s", (int)strcspn(arg, "="), arg);
        if (o->kind == CLI_FLAG) {
            if (val) return cli_usage_error(spec, "%s takes no value", flag);
        } else if (!val) {
            if (i + 1 >= argc) return cli_usage_error(spec, "%s needs a value", flag);
            val = argv[++i];
        }
        int rc = store_value(spec, o, flag, val);
        if (rc) return rc;
        if (o->seen) *o->seen = 1;
    }
    return 0;
}
