/*
 * quantize — converts a model (Hugging Face directory, GGUF or .loupe) into
 * a packed .loupe file with int8, f16 or f32 matmul weights.
 *
 *   quantize SRC DST [--type int8|f16|f32] [--threads N] [--force]
 *            [--keep GLOB=TYPE]... [--format 1.1|1.0]
 *   quantize --verify FILE
 *
 * Exit status: 0 success, 1 error, 2 usage error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loupe.h"
#include "quant/loupe_format.h"

#define MAX_KEEP 64

static void usage(FILE *out) {
    fprintf(out,
            "usage: quantize SRC DST [--type int8|f16|f32] [--threads N] [--force]\n"
            "                [--keep GLOB=TYPE]... [--format 1.1|1.0]\n"
            "       quantize --verify FILE\n"
            "\n"
            "Writes the model SRC (Hugging Face directory, GGUF or .loupe file) as a\n"
            "packed .loupe file DST.\n"
            "  --type T        matmul weights as int8 (GGUF Q8_0 blocks, default), f16\n"
            "                  or f32; norms and biases stay f32; token embeddings f16\n"
            "                  (f32 with --type f32; int8 when the source has them int8\n"
            "                  or, with --type int8, when they double as the output head)\n"
            "  --keep G=T      tensors whose name matches the glob G get type T\n"
            "                  (e.g. --keep 'output=f32' --keep 'blk.0.*=f16')\n"
            "  --threads N     conversion threads (default: all cores)\n"
            "  --force         overwrite an existing DST\n"
            "  --format V      1.1 (default): int8 matrices packed for the kernels, used\n"
            "                  in place; 1.0: int8 row-major, for loupe 1.0 readers\n"
            "                  (newer ones pack it at load)\n"
            "  --verify FILE   check every checksum and reload FILE\n");
}

/* ------------------------------------------------------------ progress */

typedef struct {
    int tty;
} progress_state;

static void fmt_mb(char *buf, size_t cap, uint64_t bytes) {
    snprintf(buf, cap, "%.1f MB", (double)bytes / 1e6);
}

static void on_progress(void *user, const lp_quant_progress *p) {
    progress_state *st = user;
    double rate = p->seconds > 0 ? (double)p->bytes_done / 1e6 / p->seconds : 0;
    double eta = p->bytes_done ? p->seconds * (double)(p->bytes_total - p->bytes_done) /
                                     (double)p->bytes_done
                               : 0;
    if (st->tty) {
        enum { W = 30 };
        int fill = p->n_tensors ? p->tensors_done * W / p->n_tensors : W;
        char bar[W + 1];
        for (int i = 0; i < W; i++) bar[i] = i < fill ? '#' : '.';
        bar[W] = 0;
        fprintf(stderr, "\r[%s] %d/%d tensors  %7.1f MB/s  ETA %5.1fs  %-24.24s", bar,
                p->tensors_done, p->n_tensors, rate, eta, p->name);
        if (p->tensors_done == p->n_tensors) fputc('\n', stderr);
    } else {
        fprintf(stderr, "%d/%d %s (%.1f MB/s)\n", p->tensors_done, p->n_tensors, p->name,
                rate);
    }
    fflush(stderr);
}

/* ------------------------------------------------------------ main */

static int parse_keep(const char *arg, lp_keep_rule *r) {
    const char *eq = strrchr(arg, '=');
    if (!eq || eq == arg || (size_t)(eq - arg) >= sizeof r->glob) return -1;
    memcpy(r->glob, arg, (size_t)(eq - arg));
    r->glob[eq - arg] = 0;
    return lp_quant_type_parse(eq + 1, &r->type);
}

static int verify_main(const char *path) {
    loupe_status st = lp_loupe_verify(path);
    if (st != LOUPE_OK) {
        fprintf(stderr, "quantize: %s\n", loupe_last_error());
        return 1;
    }
    printf("%s: OK (header, metadata, directory and every tensor checksum match; "
           "the model loads)\n", path);
    return 0;
}

int main(int argc, char **argv) {
    lp_quant_opts o;
    lp_quant_opts_default(&o);
    static lp_keep_rule keep[MAX_KEEP];
    const char *pos[2] = {0};
    int n_pos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_val = i + 1 < argc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--verify")) {
            if (!has_val || i + 2 != argc) return usage(stderr), 2;
            return verify_main(argv[i + 1]);
        } else if (!strcmp(a, "--type") && has_val) {
            if (lp_quant_type_parse(argv[++i], &o.type)) {
                fprintf(stderr, "quantize: unknown --type %s (int8, f16 or f32)\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "--threads") && has_val) {
            char *end;
            long n = strtol(argv[++i], &end, 10);
            if (*end || n < 1 || n > 1024) {
                fprintf(stderr, "quantize: bad --threads %s\n", argv[i]);
                return 2;
            }
            o.n_threads = (int)n;
        } else if (!strcmp(a, "--keep") && has_val) {
            if (o.n_keep == MAX_KEEP || parse_keep(argv[++i], &keep[o.n_keep])) {
                fprintf(stderr, "quantize: bad --keep %s (GLOB=int8|f16|f32)\n", argv[i]);
                return 2;
            }
            o.n_keep++;
        } else if (!strcmp(a, "--format") && has_val) {
            const char *v = argv[++i];
            if (strcmp(v, "1.0") && strcmp(v, "1.1")) {
                fprintf(stderr, "quantize: unknown --format %s (1.1 or 1.0)\n", v);
                return 2;
            }
            o.format_1_0 = !strcmp(v, "1.0");
        } else if (!strcmp(a, "--force")) {
            o.force = 1;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "quantize: unknown or incomplete option %s\n", a);
            usage(stderr);
            return 2;
        } else if (n_pos < 2) {
            pos[n_pos++] = a;
        } else {
            fprintf(stderr, "quantize: too many arguments\n");
            return 2;
        }
    }
    if (n_pos != 2) {
        usage(stderr);
        return 2;
    }
    o.keep = keep;
    progress_state ps = {isatty(2)};
    o.progress = on_progress;
    o.user = &ps;

    lp_quant_report rep;
    loupe_status st = lp_quantize_file(pos[0], pos[1], &o, &rep);
    if (st != LOUPE_OK) {
        fprintf(stderr, "quantize: %s\n", loupe_last_error());
        return 1;
    }
    for (int i = 0; i < rep.n_notes; i++) fprintf(stderr, "note: %s\n", rep.notes[i]);
    char before[32], after[32];
    fmt_mb(before, sizeof before, rep.src_bytes);
    fmt_mb(after, sizeof after, rep.dst_bytes);
    printf("%s: %d tensors, weights %s -> file %s (%s), %.2f s, verified\n", pos[1],
           rep.n_tensors, before, after, lp_quant_type_name(o.type), rep.seconds);
    return 0;
}
