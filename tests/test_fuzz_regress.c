/*
 * test_fuzz_regress.c — inputs the fuzzers (tests/fuzz, .ci/fuzz.sh) found
 * to crash a reader, each replayed through the same entry points the
 * fuzz target used. Every one must now fail cleanly: the expected status
 * and a message naming the problem, nothing left allocated (the suite runs
 * under ASan/UBSan and valgrind). The byte arrays are the crash inputs,
 * shrunk by hand to the bytes that matter.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "testutil.h"

#include "src/model.h"

/* Which reader a case goes through (one per fuzz target that has found a
 * crash so far; add a kind with its replay branch for a new target). */
typedef enum { FZ_GGUF, FZ_CONFIG } fz_kind;

typedef struct {
    const char *name;
    fz_kind kind;
    const unsigned char *data;
    size_t size;
    int reader_ok;       /* GGUF: lp_read_gguf accepts it, the model load fails */
    loupe_status want;   /* status of the reader (or of the model load) */
    const char *message; /* a part of its error message */
} fz_case;

/* ------------------------------------------------------------ the inputs */

/* fuzz_gguf: one F32 tensor whose data offset is 2^64 - 32 (aligned, so it
 * passed the alignment check). The bounds check failed, but the tensor's
 * data pointer was still computed from the offset first: pointer
 * arithmetic overflow (UBSan), src/io/gguf.c lp_gg_place. */
static const unsigned char gguf_offset_overflow[] = {
    'G', 'G', 'U', 'F', 3, 0, 0, 0,                  /* magic, version 3 */
    1, 0, 0, 0, 0, 0, 0, 0,                          /* 1 tensor */
    0, 0, 0, 0, 0, 0, 0, 0,                          /* 0 metadata entries */
    1, 0, 0, 0, 0, 0, 0, 0, 'a',                     /* name "a" */
    1, 0, 0, 0,                                      /* 1 dimension */
    1, 0, 0, 0, 0, 0, 0, 0,                          /* ne[0] = 1 */
    0, 0, 0, 0,                                      /* F32 */
    0xe0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,  /* offset 2^64 - 32 */
    0, 0, 0, 0, 0, 0, 0                              /* padding to 64 */
};

/* fuzz_gguf: a gpt2 GGUF without gpt2.feed_forward_length and an
 * embedding length of 2^30: the default feed-forward size 4 * dim
 * overflowed int (UBSan) while the hyper-parameters were read,
 * src/io/gguf_load.c lp_gl_hparams. Now the load goes on to the next
 * problem: the file has no tensors. */
static const unsigned char gguf_gpt2_ffn_overflow[] = {
    /* "GGUF", v3, 0 tensors, 5 entries */
    0x47, 0x47, 0x55, 0x46, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    /* general.architecture */
    0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x67, 0x65, 0x6e, 0x65,
    0x72, 0x61, 0x6c, 0x2e, 0x61, 0x72, 0x63, 0x68, 0x69, 0x74, 0x65, 0x63,
    0x74, 0x75, 0x72, 0x65,
    /* = "gpt2" */
    0x08, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x67, 0x70, 0x74, 0x32,
    /* gpt2.context_length */
    0x13, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x67, 0x70, 0x74, 0x32,
    0x2e, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x78, 0x74, 0x5f, 0x6c, 0x65, 0x6e,
    0x67, 0x74, 0x68,
    /* u32 8 */
    0x04, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00,
    /* gpt2.embedding_length */
    0x15, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x67, 0x70, 0x74, 0x32,
    0x2e, 0x65, 0x6d, 0x62, 0x65, 0x64, 0x64, 0x69, 0x6e, 0x67, 0x5f, 0x6c,
    0x65, 0x6e, 0x67, 0x74, 0x68,
    /* u32 2^30 */
    0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40,
    /* gpt2.block_count */
    0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x67, 0x70, 0x74, 0x32,
    0x2e, 0x62, 0x6c, 0x6f, 0x63, 0x6b, 0x5f, 0x63, 0x6f, 0x75, 0x6e, 0x74,
    /* u32 1 */
    0x04, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
    /* gpt2.attention.head_count */
    0x19, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x67, 0x70, 0x74, 0x32,
    0x2e, 0x61, 0x74, 0x74, 0x65, 0x6e, 0x74, 0x69, 0x6f, 0x6e, 0x2e, 0x68,
    0x65, 0x61, 0x64, 0x5f, 0x63, 0x6f, 0x75, 0x6e, 0x74,
    /* u32 1 */
    0x04, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
};

/* The same overflow in config.json (n_inner absent, n_embd 2^30),
 * src/io/hf_load.c lp_hf_gpt2_config; found by reading the code after the
 * GGUF crash, confirmed by fuzz_config_json on this input. */
static const unsigned char config_gpt2_ffn_overflow[] =
    "{\"model_type\": \"gpt2\", \"vocab_size\": 16, \"n_embd\": 1073741824,"
    " \"n_layer\": 1, \"n_head\": 1, \"n_positions\": 8}";

#define CASE(n, k, ok, st, msg) {#n, k, n, sizeof n, ok, st, msg}
#define CASE_STR(n, k, st, msg) {#n, k, n, sizeof n - 1, 0, st, msg}

static const fz_case cases[] = {
    CASE(gguf_offset_overflow, FZ_GGUF, 0, LOUPE_ERR_FORMAT, "out of bounds"),
    CASE(gguf_gpt2_ffn_overflow, FZ_GGUF, 1, LOUPE_ERR_MISSING, "token_embd.weight is missing"),
    CASE_STR(config_gpt2_ffn_overflow, FZ_CONFIG, LOUPE_ERR_FORMAT, "hidden size 1073741824"),
};

/* ------------------------------------------------------------ replay */

static void expect(const fz_case *c, loupe_status st, const char *what) {
    if (st != c->want || !strstr(loupe_last_error(), c->message))
        print_error("%s: %s gave %s: %s\n", c->name, what, loupe_status_name(st),
                    loupe_last_error());
    assert_int_equal(st, c->want);
    assert_non_null(strstr(loupe_last_error(), c->message));
}

/* The whole model path as well: it must fail the same way. */
static void expect_open(const fz_case *c, const char *path) {
    loupe_model *m = NULL;
    expect(c, loupe_model_open(path, NULL, &m), "loupe_model_open");
    assert_null(m);
}

static void replay(const fz_case *c) {
    char name[256];
    const char *ext[] = {"gguf", "json"};
    snprintf(name, sizeof name, "fuzz-regress-%s.%s", c->name, ext[c->kind]);
    const char *path = tu_tmp(name);
    lp_tensor_set ts;
    memset(&ts, 0, sizeof ts);
    switch (c->kind) {
    case FZ_GGUF:
        assert_int_equal(tu_write_file(path, c->data, c->size), 0);
        if (c->reader_ok) {
            assert_int_equal(lp_read_gguf(path, &ts), LOUPE_OK);
        } else {
            expect(c, lp_read_gguf(path, &ts), "lp_read_gguf");
            assert_int_equal(ts.n + ts.n_maps + ts.n_meta, 0);
        }
        expect_open(c, path);
        break;
    case FZ_CONFIG: {
        const char *dir = tu_tmp("fuzz-regress-config");
        char file[4096];
        lp_hparams hp;
        mkdir(dir, 0700);
        snprintf(file, sizeof file, "%s/config.json", dir);
        assert_int_equal(tu_write_file(file, c->data, c->size), 0);
        expect(c, lp_hf_read_config(dir, &hp), "lp_hf_read_config");
        break;
    }
    }
    lp_tensor_set_free(&ts);
    remove(path);
}

static void test_regressions(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) replay(&cases[i]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_regressions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
