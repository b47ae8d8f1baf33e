/*
 * test_quantize.c — the .loupe format and the quantize job.
 *
 *  checksums: xxHash64 and SHA-256 against published vectors and sha256sum.
 *  round trips: stories260K.gguf (Llama) and slm-gpt2-char (HF GPT-2) to
 *    f32 / f16 / int8 .loupe files through lp_quantize_file (what the tool
 *    runs); reloaded, hyper-parameters and tokenizer are identical (spec
 *    field by field, and encodings of several texts); f32 logits are
 *    bit-identical to the source model's; int8 weights equal an independent
 *    numpy Q8_0 quantization (tests/ref/gguf_np.py) of the source weights;
 *    int8 logits match a float64 numpy forward pass over those weights
 *    (tests/ref/q8_forward.py, activations quantized like the kernels)
 *    within 1e-4.
 *  int8 numerics: ties, zero blocks, and 20000 near-tie blocks against numpy.
 *  int8 matrices are stored packed for the kernels (layout 1, LP_Q8P) and
 *    used in place: every row unpacked equals the reference blocks, padding
 *    rows are zero, the weight points into the file mapping.
 *  GGUF Q8_0 (written by gguf_np.py) -> .loupe int8: every row of every
 *    packed matrix bit-identical to the GGUF bytes, logits bit-identical to
 *    the GGUF model's, and close to those of the same model with the blocks
 *    dequantized to f32 by numpy.
 *  Format 1.0 files (int8 row-major, layout 0) still load, packed at load,
 *    and give the same logits as the layout-1 file; requantizing converts
 *    between the layouts without changing a block.
 *  --keep rules and the n_in % 32 fallback.
 *  Corrupted files: each one is refused with its own clear message and
 *    status (run under ASan/UBSan too: never a crash).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>

#include "loupe.h"
#include "quant/loupe_format.h"
#include "src/model.h"
#include "testutil.h"

#define STORIES "models/stories260K/stories260K.gguf"
#define GPT2CHAR "models/slm-gpt2-char"

static const char *const TEXTS[] = {
    "Once upon a time, there was a little girl named Lily.",
    "She liked to play in the park with her dog.",
    "the cat sat on the mat",
    "  two  spaces and\nnew lines\n",
};
#define N_TEXTS (int)(sizeof TEXTS / sizeof TEXTS[0])

/* ------------------------------------------------------------ helpers */

/* tu_tmp() into a caller's buffer (its own buffers are a small ring). */
static const char *tmp_path(char *buf, const char *rel) {
    snprintf(buf, 512, "%s", tu_tmp(rel));
    return buf;
}

static loupe_model *open_ok(const char *path) {
    loupe_model *m = NULL;
    loupe_model_params p = {0};
    loupe_status st = loupe_model_open(path, &p, &m);
    if (st != LOUPE_OK) fail_msg("open %s: %s", path, loupe_last_error());
    return m;
}

/* quantize src -> dst; format_1_0 writes int8 matrices row-major (layout 0) */
static void quantize_as(const char *src, const char *dst, lp_dtype type,
                        const lp_keep_rule *keep, int n_keep, int format_1_0,
                        lp_quant_report *rep) {
    lp_quant_opts o;
    lp_quant_opts_default(&o);
    o.type = type;
    o.force = 1;
    o.n_threads = 2;
    o.keep = keep;
    o.n_keep = n_keep;
    o.format_1_0 = format_1_0;
    loupe_status st = lp_quantize_file(src, dst, &o, rep);
    if (st != LOUPE_OK) fail_msg("quantize %s -> %s: %s", src, dst, loupe_last_error());
}

static void quantize_ok(const char *src, const char *dst, lp_dtype type,
                        const lp_keep_rule *keep, int n_keep, lp_quant_report *rep) {
    quantize_as(src, dst, type, keep, n_keep, 0, rep);
}

/* Logits (T, n_vocab) of tokens evaluated from position 0; caller frees. */
static float *logits_of(loupe_model *m, const int32_t *ids, int n) {
    loupe_session *s = NULL;
    loupe_session_params sp = {.n_ctx = 0, .n_threads = 1};
    assert_int_equal(loupe_session_new(m, &sp, &s), LOUPE_OK);
    int V = loupe_n_vocab(m);
    float *lg = malloc(sizeof(float) * (size_t)n * (size_t)V);
    assert_non_null(lg);
    loupe_status st = loupe_eval(s, ids, n, lg, 1);
    if (st != LOUPE_OK) fail_msg("eval: %s", loupe_last_error());
    loupe_session_free(s);
    return lg;
}

/* Token ids of the first text that the model's vocabulary covers. */
static int tokens_of(loupe_model *m, const char *text, int32_t *ids, int cap) {
    size_t n = 0;
    assert_int_equal(loupe_tokenize(m, text, strlen(text), 1, 0, ids, (size_t)cap, &n), LOUPE_OK);
    return (int)n;
}

static void expect_same_hparams(const lp_hparams *a, const lp_hparams *b) {
    assert_int_equal(a->arch, b->arch);
    assert_string_equal(a->model_type, b->model_type);
#define SAME(f) assert_int_equal(a->f, b->f)
#define SAMEF(f) assert_memory_equal(&a->f, &b->f, sizeof a->f)
    SAME(n_vocab); SAME(n_ctx); SAME(dim); SAME(n_layers); SAME(n_heads);
    SAME(n_kv_heads); SAME(head_dim); SAME(ffn_dim); SAMEF(norm_eps); SAME(act);
    SAME(tied_head); SAME(qkv_bias); SAMEF(rope_theta); SAME(rope_neox);
    SAME(rot_dim); SAME(rope_scaling); SAMEF(rope_factor);
    SAMEF(rope_low_freq_factor); SAMEF(rope_high_freq_factor); SAME(rope_orig_ctx);
    SAME(bos_id); SAME(eos_id);
#undef SAME
#undef SAMEF
}

static void expect_same_strs(char **a, char **b, int n) {
    for (int i = 0; i < n; i++) assert_string_equal(a[i], b[i]);
}

static void expect_same_opt_str(const char *a, const char *b) {
    if (!a || !b) assert_ptr_equal(a, b);
    else assert_string_equal(a, b);
}

static void expect_same_tokenizer(loupe_model *a, loupe_model *b) {
    const lp_tok_spec *x = lp_tok_get_spec(a->tok), *y = lp_tok_get_spec(b->tok);
    assert_non_null(x);
    assert_non_null(y);
    assert_int_equal(x->kind, y->kind);
    assert_int_equal(x->n_vocab, y->n_vocab);
    expect_same_strs(x->pieces, y->pieces, x->n_vocab);
    assert_int_equal(!x->scores, !y->scores);
    if (x->scores) assert_memory_equal(x->scores, y->scores, sizeof(float) * (size_t)x->n_vocab);
    for (int i = 0; i < x->n_vocab; i++)
        assert_int_equal(x->attrs ? x->attrs[i] : 0, y->attrs ? y->attrs[i] : 0);
    assert_int_equal(x->n_merges, y->n_merges);
    expect_same_strs(x->merges, y->merges, x->n_merges);
    assert_int_equal(x->n_pre, y->n_pre);
    expect_same_strs(x->pre_regex, y->pre_regex, x->n_pre);
    for (int i = 0; i < x->n_pre; i++) /* NULL means every pattern isolates */
        assert_int_equal(x->pre_behavior ? x->pre_behavior[i] : LP_PRE_ISOLATED,
                         y->pre_behavior ? y->pre_behavior[i] : LP_PRE_ISOLATED);
    expect_same_opt_str(x->pre_name, y->pre_name);
    expect_same_opt_str(x->chat_template, y->chat_template);
    assert_int_equal(x->bos_id, y->bos_id);
    assert_int_equal(x->eos_id, y->eos_id);
    assert_int_equal(x->unk_id, y->unk_id);
    assert_int_equal(x->pad_id, y->pad_id);
    assert_int_equal(x->add_bos, y->add_bos);
    assert_int_equal(x->add_eos, y->add_eos);
    assert_int_equal(x->add_prefix_space, y->add_prefix_space);
    assert_int_equal(x->byte_fallback, y->byte_fallback);
    assert_int_equal(x->ignore_merges, y->ignore_merges);
    assert_int_equal(x->n_eos_extra, y->n_eos_extra);
    for (int i = 0; i < x->n_eos_extra; i++) assert_int_equal(x->eos_extra[i], y->eos_extra[i]);
    /* and the rebuilt tokenizer behaves the same */
    for (int t = 0; t < N_TEXTS; t++) {
        int32_t ia[256], ib[256];
        size_t na = 0, nb = 0;
        loupe_status sa = loupe_tokenize(a, TEXTS[t], strlen(TEXTS[t]), 1, 1, ia, 256, &na);
        loupe_status sb = loupe_tokenize(b, TEXTS[t], strlen(TEXTS[t]), 1, 1, ib, 256, &nb);
        assert_int_equal(sa, sb);
        if (sa != LOUPE_OK) continue;
        assert_int_equal(na, nb);
        assert_memory_equal(ia, ib, na * sizeof *ia);
    }
}

/* A weight of the model by canonical name (the slot table), or NULL. */
static const lp_weight_slot *find_slot(loupe_model *m, const char *name, lp_weight_slot *buf,
                                       int cap) {
    int n = lp_weight_slots(&m->hp, &m->w, buf, cap);
    assert_true(n <= cap);
    for (int i = 0; i < n; i++)
        if (!strcmp(buf[i].name, name)) return &buf[i];
    return NULL;
}

static int in_mappings(const loupe_model *m, const void *p) {
    for (int i = 0; i < m->ts.n_maps; i++) {
        const uint8_t *b = m->ts.maps[i].data;
        if ((const uint8_t *)p >= b && (const uint8_t *)p < b + m->ts.maps[i].size) return 1;
    }
    return 0;
}

/* A packed int8 matrix holds, row by row, the Q8_0 blocks ref (rows,
 * cols / 32) and zeros in its padding rows. */
static void expect_packed_rows(const lp_mat *w, const void *ref, const char *what) {
    if (w->type != LP_Q8P) fail_msg("%s is %s, expected packed int8", what, lp_dtype_name(w->type));
    const size_t nb = (size_t)w->cols / 32;
    lp_block_q8 *row = malloc(nb * sizeof *row), *zero = calloc(nb, sizeof *zero);
    assert_non_null(row);
    assert_non_null(zero);
    for (int r = 0; r < LP_Q8P_GROUPS(w->rows) * LP_Q8P_ROWS; r++) {
        lp_q8p_unpack_row(w->data, w->cols, r, row);
        const void *want = r < w->rows ? (const void *)((const char *)ref + (size_t)r * nb * 34)
                                    : (const void *)zero;
        if (memcmp(row, want, nb * 34) != 0)
            fail_msg("%s: %s row %d differs from the reference blocks", what,
                     r < w->rows ? "" : "padding", r);
    }
    free(row);
    free(zero);
}

/* Compares an int8 weight of m with the numpy blocks in dir/name.q8. */
static void expect_q8_equals_file(loupe_model *m, const char *dir, const char *name) {
    static lp_weight_slot slots[512];
    const lp_weight_slot *s = find_slot(m, name, slots, 512);
    assert_non_null(s);
    assert_non_null(s->mat);
    char path[512];
    snprintf(path, sizeof path, "%s/%s.q8", dir, name);
    size_t len = 0;
    char *ref = tu_read_file(path, &len);
    assert_non_null(ref);
    assert_int_equal(len, (size_t)s->mat->rows * (size_t)s->mat->cols / 32 * 34);
    expect_packed_rows(s->mat, ref, name);
    if (!in_mappings(m, s->mat->data)) fail_msg("%s: packed int8 was copied at load", name);
    free(ref);
}

/* ------------------------------------------------------------ file bytes */

static uint64_t rd64(const char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}
static uint32_t rd32(const char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static void wr64(char *p, uint64_t v) { memcpy(p, &v, 8); }
static void wr32(char *p, uint32_t v) { memcpy(p, &v, 4); }

static int n_entries(const char *f) { return (int)rd32(f + 72); }
static const char *entry_at(const char *f, int i) { return f + rd64(f + 40) + (size_t)i * 128; }

/* The directory entry of tensor name in the file bytes f. */
static const char *entry_named(const char *f, const char *name) {
    for (int i = 0; i < n_entries(f); i++)
        if (!strcmp(entry_at(f, i), name)) return entry_at(f, i);
    fail_msg("tensor %s not in the directory", name);
    return NULL;
}

/* Same names, types, layouts, shapes, sizes and data checksums, entry by
 * entry (offsets move with the provenance metadata). */
static void expect_same_tensors(const char *fa, const char *fb) {
    assert_int_equal(n_entries(fa), n_entries(fb));
    for (int i = 0; i < n_entries(fa); i++) {
        const char *ea = entry_at(fa, i), *eb = entry_at(fb, i);
        assert_memory_equal(ea, eb, 96);
        assert_memory_equal(ea + 104, eb + 104, 16);
    }
}

static int type_in_file(loupe_model *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return (int)m->tensors[i].type;
    return -1;
}

/* ------------------------------------------------------------ checksums */

static void test_checksums(void **state) {
    (void)state;
    /* xxHash64 reference vectors (seed 0) */
    assert_true(lp_xxh64("", 0, 0) == 0xEF46DB3751D8E999ull);
    assert_true(lp_xxh64("a", 1, 0) == 0xD24EC4F1A98C6E5Bull);
    assert_true(lp_xxh64("abc", 3, 0) == 0x44BC2CF5AD770999ull);
    const char *nob = "Nobody inspects the spammish repetition"; /* 39 bytes: stripes + tail */
    assert_true(lp_xxh64(nob, strlen(nob), 0) == 0xFBCEA83C8A378BF1ull);
    /* SHA-256 (FIPS 180-2 examples) */
    static const struct { const char *msg, *hex; } sv[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
    };
    for (size_t i = 0; i < sizeof sv / sizeof sv[0]; i++) {
        lp_sha256 s;
        uint8_t d[32];
        char hex[65];
        lp_sha256_init(&s);
        /* feed in two uneven pieces to exercise the buffering */
        size_t n = strlen(sv[i].msg), h = n / 3;
        lp_sha256_update(&s, sv[i].msg, h);
        lp_sha256_update(&s, sv[i].msg + h, n - h);
        lp_sha256_final(&s, d);
        for (int j = 0; j < 32; j++) snprintf(hex + 2 * j, 3, "%02x", d[j]);
        assert_string_equal(hex, sv[i].hex);
    }
    /* a whole file against the fixture's published SHA256SUMS */
    char hex[65], line[512];
    assert_int_equal(lp_sha256_file(tu_shared(STORIES), hex), LOUPE_OK);
    FILE *f = fopen(tu_shared("models/SHA256SUMS"), "r");
    assert_non_null(f);
    int found = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, "stories260K/stories260K.gguf")) {
            assert_memory_equal(line, hex, 64);
            found = 1;
        }
    fclose(f);
    assert_true(found);
}

/* ------------------------------------------------------------ int8 numerics */

static void test_q8_blocks(void **state) {
    (void)state;
    float x[64];
    lp_block_q8 b[2];
    for (int i = 0; i < 32; i++) x[i] = 0.0f; /* all-zero block: d = 0, q = 0 */
    for (int i = 0; i < 32; i++) x[32 + i] = (float)(i - 20) * 0.25f; /* amax 5 at i=0 */
    lp_quantize_q8(x, b, 64);
    assert_int_equal(b[0].d, 0);
    for (int i = 0; i < 32; i++) assert_int_equal(b[0].qs[i], 0);
    assert_int_equal(b[1].qs[0], -127); /* the extreme maps to -127 exactly */
    assert_int_equal(b[1].d, lp_f32_to_f16(5.0f / 127.0f));
    assert_int_equal(b[1].qs[20], 0);
    float d = 5.0f / 127.0f; /* every value within half a step of its code */
    for (int i = 0; i < 32; i++) assert_true(fabsf(b[1].qs[i] * d - x[32 + i]) <= 0.5f * d * 1.0001f);
    /* row conversion of a 2 x 64 f32 matrix to int8 and back to f32 */
    float m[128], back[128];
    lp_block_q8 q[4];
    for (int i = 0; i < 128; i++) m[i] = sinf((float)i);
    assert_int_equal(lp_convert_rows(LP_F32, m, LP_Q8, q, 64, 0, 2), 0);
    assert_int_equal(lp_convert_rows(LP_Q8, q, LP_F32, back, 64, 0, 2), 0);
    for (int i = 0; i < 128; i++) assert_true(fabsf(back[i] - m[i]) <= 1.0f / 127 * 0.5f + 1e-3f);
    assert_int_equal(lp_convert_rows(LP_F32, m, LP_Q8, q, 48, 0, 1), -1); /* 48 % 32 */

    /* exact ties round half away from zero (C roundf), not to even */
    float t[32] = {127.0f, 2.5f, -2.5f, 0.5f, -0.5f, 126.5f};
    lp_quantize_q8(t, b, 32); /* d = 1 */
    assert_int_equal(b[0].qs[1], 3);
    assert_int_equal(b[0].qs[2], -3);
    assert_int_equal(b[0].qs[3], 1);
    assert_int_equal(b[0].qs[4], -1);
    assert_int_equal(b[0].qs[5], 127);

    /* NaN and infinities are counted, stored as 0 and left out of the
     * scale; a block so small that 1/d overflows stays defined (UBSan) */
    for (int i = 0; i < 32; i++) x[i] = 0.5f * (float)(i - 16);   /* amax 8 */
    for (int i = 32; i < 64; i++) x[i] = 1e-40f * (float)(i - 40); /* subnormal */
    x[3] = NAN;
    x[7] = INFINITY;
    x[9] = -INFINITY;
    assert_int_equal(lp_quantize_q8(x, b, 64), 3);
    assert_int_equal(b[0].d, lp_f32_to_f16(8.0f / 127.0f));
    assert_int_equal(b[0].qs[0], -127);
    assert_int_equal(b[0].qs[3], 0);
    assert_int_equal(b[0].qs[7], 0);
    assert_int_equal(b[0].qs[9], 0);
    assert_int_equal(b[0].qs[31], 119); /* 7.5 * 127 / 8 = 119.06 */
    assert_int_equal(b[1].d, 0);        /* the fp16 scale underflows: all zero */
    assert_int_equal(b[1].qs[8], 0);    /* 0 * inf */
    assert_int_equal(b[1].qs[31], 127);
}

/* 20000 random near-tie blocks against numpy's Q8_0 (gguf_np.py): catches
 * x / d in place of x * (1/d), rounding to even, and fp16 rounding slips. */
static void test_q8_vectors(void **state) {
    (void)state;
    enum { N = 20000 };
    char b1[512], b2[512];
    const char *in = tmp_path(b1, "q8-vectors.f32"), *out = tmp_path(b2, "q8-vectors.q8");
    assert_int_equal(tu_system("%s %s q8-vectors %d %s %s", tu_python(),
                               tu_src("tests/ref/gguf_np.py"), N, in, out), 0);
    size_t li = 0, lo = 0;
    char *x = tu_read_file(in, &li), *ref = tu_read_file(out, &lo);
    assert_non_null(x);
    assert_non_null(ref);
    assert_int_equal(li, (size_t)N * 32 * 4);
    assert_int_equal(lo, (size_t)N * 34);
    lp_block_q8 *y = malloc(sizeof *y * N);
    assert_non_null(y);
    lp_quantize_q8((const float *)x, y, (int64_t)N * 32);
    int bad = 0;
    for (int i = 0; i < N; i++)
        if (memcmp(&y[i], ref + (size_t)i * 34, 34)) {
            if (!bad) print_error("block %d differs from numpy\n", i);
            bad++;
        }
    assert_int_equal(bad, 0);
    free(y);
    free(x);
    free(ref);
}

/* ------------------------------------------------------------ round trips */

static void round_trip(const char *src, const char *tag, const char *text) {
    loupe_model *m0 = open_ok(src);
    int32_t ids[128];
    int n = tokens_of(m0, text, ids, 128);
    assert_true(n > 4);
    float *ref = logits_of(m0, ids, n);
    size_t nl = (size_t)n * (size_t)loupe_n_vocab(m0);
    static const lp_dtype types[] = {LP_F32, LP_F16, LP_Q8};
    for (int k = 0; k < 3; k++) {
        char dst[256];
        snprintf(dst, sizeof dst, "%s", tu_tmp(""));
        snprintf(dst + strlen(dst), sizeof dst - strlen(dst), "%s-%s.loupe", tag,
                 lp_quant_type_name(types[k]));
        lp_quant_report rep;
        quantize_ok(src, dst, types[k], NULL, 0, &rep);
        struct stat st;
        assert_int_equal(stat(dst, &st), 0);
        assert_int_equal((uint64_t)st.st_size, rep.dst_bytes);
        loupe_model *m1 = open_ok(dst);
        expect_same_hparams(&m0->hp, &m1->hp);
        expect_same_tokenizer(m0, m1);
        float *got = logits_of(m1, ids, n);
        if (types[k] == LP_F32) {
            assert_memory_equal(ref, got, nl * sizeof(float)); /* bit-identical */
        } else { /* close: the top token agrees at most positions */
            double maxd = 0, maxv = 0;
            for (size_t i = 0; i < nl; i++) {
                maxd = fmax(maxd, fabs((double)ref[i] - got[i]));
                maxv = fmax(maxv, fabs((double)ref[i]));
            }
            if (maxd > 0.1 * maxv)
                fail_msg("%s %s: logits off by %g (max |logit| %g)", tag,
                         lp_quant_type_name(types[k]), maxd, maxv);
        }
        free(got);
        loupe_model_close(m1);
    }
    free(ref);
    loupe_model_close(m0);
}

static void test_round_trip_stories(void **state) {
    (void)state;
    round_trip(tu_shared(STORIES), "stories", TEXTS[0]);
}

static void test_round_trip_gpt2char(void **state) {
    (void)state;
    /* text from the model's own corpus, so every character is in its vocabulary */
    size_t len = 0;
    char *corpus = tu_read_file(tu_shared(GPT2CHAR "/corpus.txt"), &len);
    assert_non_null(corpus);
    corpus[len > 60 ? 60 : len] = 0;
    round_trip(tu_shared(GPT2CHAR), "gpt2char", corpus);
    free(corpus);
}

/* int8 weights = numpy's Q8_0 of the source weights, tensor by tensor. */
static void test_int8_matches_numpy_stories(void **state) {
    (void)state;
    char b1[512], b2[512];
    const char *dir = tmp_path(b1, "q8ref-stories");
    char maps[4096] = "";
    const char *kinds[] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up"};
    for (int l = 0; l < 5; l++)
        for (int k = 0; k < 6; k++)
            snprintf(maps + strlen(maps), sizeof maps - strlen(maps), " blk.%d.%s=blk.%d.%s.weight",
                     l, kinds[k], l, kinds[k]);
    strcat(maps, " output=output.weight");
    assert_int_equal(tu_system("%s %s dump-q8 %s %s%s", tu_python(), tu_src("tests/ref/gguf_np.py"),
                               tu_shared(STORIES), dir, maps), 0);
    const char *dst = tmp_path(b2, "stories-int8-np.loupe");
    lp_quant_report rep;
    quantize_ok(tu_shared(STORIES), dst, LP_Q8, NULL, 0, &rep);
    loupe_model *m = open_ok(dst);
    for (int l = 0; l < 5; l++)
        for (int k = 0; k < 6; k++) {
            char name[64];
            snprintf(name, sizeof name, "blk.%d.%s", l, kinds[k]);
            expect_q8_equals_file(m, dir, name);
        }
    expect_q8_equals_file(m, dir, "output");
    /* policy: the embedding becomes f16, the n_in = 172 ffn_down stays f32
     * (with a note), vectors f32 */
    assert_int_equal(type_in_file(m, "token_embd"), LP_F16);
    assert_int_equal(type_in_file(m, "blk.0.ffn_down"), LP_F32);
    assert_int_equal(type_in_file(m, "blk.0.attn_norm"), LP_F32);
    int noted = 0;
    for (int i = 0; i < rep.n_notes; i++) noted += strstr(rep.notes[i], "ffn_down") != NULL;
    assert_int_equal(noted, 5);
    loupe_model_close(m);
}

static void test_int8_matches_numpy_gpt2char(void **state) {
    (void)state;
    char b1[512], b2[512];
    const char *dir = tmp_path(b1, "q8ref-gpt2char");
    char maps[4096] = "";
    for (int l = 0; l < 4; l++)
        snprintf(maps + strlen(maps), sizeof maps - strlen(maps),
                 " blk.%d.attn_q=h.%d.attn.c_attn:q blk.%d.attn_k=h.%d.attn.c_attn:k"
                 " blk.%d.attn_v=h.%d.attn.c_attn:v blk.%d.attn_output=h.%d.attn.c_proj"
                 " blk.%d.ffn_up=h.%d.mlp.c_fc blk.%d.ffn_down=h.%d.mlp.c_proj",
                 l, l, l, l, l, l, l, l, l, l, l, l);
    assert_int_equal(tu_system("%s %s dump-q8 %s %s%s", tu_python(), tu_src("tests/ref/gguf_np.py"),
                               tu_shared(GPT2CHAR), dir, maps), 0);
    const char *dst = tmp_path(b2, "gpt2char-int8-np.loupe");
    quantize_ok(tu_shared(GPT2CHAR), dst, LP_Q8, NULL, 0, NULL);
    loupe_model *m = open_ok(dst);
    const char *kinds[] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_up", "ffn_down"};
    for (int l = 0; l < 4; l++)
        for (int k = 0; k < 6; k++) {
            char name[64];
            snprintf(name, sizeof name, "blk.%d.%s", l, kinds[k]);
            expect_q8_equals_file(m, dir, name);
        }
    assert_int_equal(type_in_file(m, "output"), -1); /* tied: stored once */
    /* policy: a token embedding that doubles as the head is int8 with the
     * other matmuls (an untied one stays f16: test_int8_matches_numpy_stories) */
    assert_int_equal(type_in_file(m, "token_embd"), LP_Q8);
    assert_int_equal(type_in_file(m, "position_embd"), LP_F32);
    assert_ptr_equal(m->w.lm_head.data, m->w.tok_embd.data);
    loupe_model_close(m);
}

/* int8 logits against an independent float64 numpy forward pass over the
 * numpy-quantized weights, activations quantized per block like the int8
 * kernels (tests/ref/q8_forward.py). */
static void test_int8_logits_reference(void **state) {
    (void)state;
    char b1[512], b2[512], idlist[1024] = "";
    const char *dst = tmp_path(b1, "stories-int8-ref.loupe"), *out = tmp_path(b2, "q8-ref-logits.f32");
    quantize_ok(tu_shared(STORIES), dst, LP_Q8, NULL, 0, NULL);
    loupe_model *m = open_ok(dst);
    int32_t ids[128];
    int n = tokens_of(m, TEXTS[0], ids, 128);
    for (int i = 0; i < n; i++)
        snprintf(idlist + strlen(idlist), sizeof idlist - strlen(idlist), "%s%d", i ? "," : "", ids[i]);
    assert_int_equal(tu_system("%s %s %s %s %s --f16-embd", tu_python(),
                               tu_src("tests/ref/q8_forward.py"), tu_shared(STORIES), out, idlist),
                     0);
    size_t len = 0;
    float *ref = (float *)tu_read_file(out, &len);
    int V = loupe_n_vocab(m);
    assert_non_null(ref);
    assert_int_equal(len, (size_t)n * (size_t)V * sizeof(float));
    float *got = logits_of(m, ids, n);
    double maxd = 0;
    for (size_t i = 0; i < (size_t)n * (size_t)V; i++) maxd = fmax(maxd, fabs((double)got[i] - ref[i]));
    print_message("int8 logits vs numpy reference: max |diff| %.3g over %d x %d\n", maxd, n, V);
    assert_true(maxd <= 1e-4);
    free(got);
    free(ref);
    loupe_model_close(m);
}

/* The matmuls' epilogues (bias, gelu and the residual add done by each
 * task on the columns it just computed, src/forward.c) against the same
 * forward pass with hooks on attn_out and mlp_out, which keep the residual
 * add a separate step: logits bit-identical, int8 and f16 weights, a
 * prompt of 37 tokens (two 16-token tiles and a tail), 2 threads, under
 * every kernel table this CPU can run. */
static int no_op_hook(void *user, const loupe_activation *act) {
    (void)act;
    ++*(int *)user;
    return 0;
}

static float *logits_hooked(loupe_model *m, const int32_t *ids, int n, int hooked) {
    loupe_session *s = NULL;
    loupe_session_params sp = {.n_ctx = 0, .n_threads = 2};
    assert_int_equal(loupe_session_new(m, &sp, &s), LOUPE_OK);
    int calls = 0;
    if (hooked) {
        assert_int_equal(loupe_session_add_hook(s, "attn_out.*", no_op_hook, &calls), LOUPE_OK);
        assert_int_equal(loupe_session_add_hook(s, "mlp_out.*", no_op_hook, &calls), LOUPE_OK);
    }
    float *lg = malloc(sizeof(float) * (size_t)n * (size_t)loupe_n_vocab(m));
    assert_non_null(lg);
    if (loupe_eval(s, ids, n, lg, 1) != LOUPE_OK) fail_msg("eval: %s", loupe_last_error());
    loupe_model_info info;
    loupe_model_get_info(m, &info);
    assert_int_equal(calls, hooked ? 2 * info.n_layers : 0);
    loupe_session_free(s);
    return lg;
}

static void test_epilogues_exact(void **state) {
    (void)state;
    static const char *const isas[] = {"scalar", "avx2", "avx512", "avx512bf16", "amx", "neon"};
    static const lp_dtype types[] = {LP_Q8, LP_F16};
    char saved[32];
    snprintf(saved, sizeof saved, "%s", loupe_isa());
    size_t len = 0;
    char *corpus = tu_read_file(tu_shared(GPT2CHAR "/corpus.txt"), &len);
    assert_non_null(corpus);
    corpus[len > 200 ? 200 : len] = 0;
    for (int k = 0; k < 2; k++) {
        char b[512], name[64];
        snprintf(name, sizeof name, "gpt2char-epi-%s.loupe", lp_quant_type_name(types[k]));
        const char *dst = tmp_path(b, name);
        quantize_ok(tu_shared(GPT2CHAR), dst, types[k], NULL, 0, NULL);
        loupe_model *m = open_ok(dst);
        int32_t ids[256];
        const int n = 37;
        assert_true(tokens_of(m, corpus, ids, 256) >= n);
        int n_run = 0;
        for (size_t i = 0; i < sizeof isas / sizeof isas[0]; i++) {
            if (loupe_set_isa(isas[i]) != LOUPE_OK) continue;
            n_run++;
            float *fused = logits_hooked(m, ids, n, 0), *split = logits_hooked(m, ids, n, 1);
            if (memcmp(fused, split, sizeof(float) * (size_t)n * (size_t)loupe_n_vocab(m)))
                fail_msg("%s %s: logits with the residual add in the matmul epilogue differ",
                         name, isas[i]);
            free(fused);
            free(split);
        }
        assert_true(n_run >= 2);
        loupe_model_close(m);
    }
    assert_int_equal(loupe_set_isa(saved), LOUPE_OK);
    free(corpus);
}

/* ------------------------------------------------------------ GGUF Q8_0 */

static void test_gguf_q8_bit_identical(void **state) {
    (void)state;
    char b1[512], b2[512], b3[512], b4[512];
    const char *q8 = tmp_path(b1, "stories-q8_0.gguf"), *deq = tmp_path(b2, "stories-q8_0-deq.gguf");
    const char *rawp = tmp_path(b3, "stories-q8_0-ffn_up2.raw");
    const char *py = tu_python(), *np = tu_src("tests/ref/gguf_np.py");
    assert_int_equal(tu_system("%s %s q8 %s %s", py, np, tu_shared(STORIES), q8), 0);
    assert_int_equal(tu_system("%s %s deq %s %s", py, np, q8, deq), 0);
    assert_int_equal(tu_system("%s %s raw %s blk.2.ffn_up.weight %s", py, np, q8, rawp), 0);
    /* token_embd is Q8_0 in this GGUF too: by default it stays int8 (the
     * lossless choice), not f16 */
    const char *dst = tmp_path(b4, "stories-from-q8_0.loupe");
    quantize_ok(q8, dst, LP_Q8, NULL, 0, NULL);
    loupe_model *mg = open_ok(q8), *ml = open_ok(dst);

    /* every Q8_0 tensor of the GGUF file, unpacked row by row from the
     * .loupe file's packed matrix, is the same bytes; the GGUF model packed
     * at load holds the very bytes the .loupe file stores */
    lp_tensor_set ts = {0};
    assert_int_equal(lp_read_gguf(q8, &ts), LOUPE_OK);
    static lp_weight_slot sg[512], sl[512];
    int ng = lp_weight_slots(&mg->hp, &mg->w, sg, 512), nl = lp_weight_slots(&ml->hp, &ml->w, sl, 512);
    assert_int_equal(ng, nl);
    int n_q8 = 0;
    for (int i = 0; i < ng; i++) {
        if (sg[i].kind == LP_SLOT_VEC || !sg[i].mat->data) continue;
        char gname[LOUPE_NAME_MAX + 8];
        snprintf(gname, sizeof gname, "%.47s.weight", sl[i].name);
        const lp_tensor_info *t = lp_tensor_find(&ts, gname);
        assert_non_null(t);
        if (t->type != LP_Q8) continue; /* ffn_down (n_in 172) is f32 in the GGUF */
        expect_packed_rows(sl[i].mat, t->data, sl[i].name);
        assert_true(in_mappings(ml, sl[i].mat->data)); /* zero copy */
        assert_int_equal(sg[i].mat->type, LP_Q8P);
        assert_memory_equal(sg[i].mat->data, sl[i].mat->data, lp_q8p_bytes(sl[i].rows, sl[i].cols));
        n_q8++;
    }
    assert_int_equal(n_q8, 5 * 6 + 2); /* 6 per layer, token_embd, output */
    lp_tensor_set_free(&ts);
    /* ...and equal to the bytes numpy reads from the GGUF file */
    size_t len = 0;
    char *raw = tu_read_file(rawp, &len);
    assert_non_null(raw);
    assert_int_equal(len, (size_t)ml->w.layers[2].w_up.rows * ml->w.layers[2].w_up.cols / 32 * 34);
    expect_packed_rows(&ml->w.layers[2].w_up, raw, "blk.2.ffn_up");
    free(raw);

    /* logits: bit-identical to the GGUF model; close to the dequantized one */
    int32_t ids[64];
    int n = tokens_of(mg, TEXTS[0], ids, 64);
    float *lg = logits_of(mg, ids, n), *ll = logits_of(ml, ids, n);
    size_t nv = (size_t)n * (size_t)loupe_n_vocab(mg);
    assert_memory_equal(lg, ll, nv * sizeof(float));
    loupe_model *md = open_ok(deq);
    float *ld = logits_of(md, ids, n);
    double maxd = 0, maxv = 0;
    for (size_t i = 0; i < nv; i++) {
        maxd = fmax(maxd, fabs((double)ld[i] - ll[i]));
        maxv = fmax(maxv, fabs((double)ld[i]));
    }
    /* int8 matmuls also quantize activations per block of 32 (the kernels'
     * design), so this is not exact: measured ~1e-2 of the logit range */
    if (maxd > 0.05 * maxv) fail_msg("int8 vs dequantized f32 logits differ by %g (max %g)", maxd, maxv);
    free(lg);
    free(ll);
    free(ld);
    loupe_model_close(md);
    loupe_model_close(mg);
    loupe_model_close(ml);
}

/* ------------------------------------------------------------ layouts */

/* The int8 tensors of a format 1.1 file fn (layout 1) and of a format 1.0
 * file fo (layout 0) of the same model hold the same blocks; every other
 * tensor is the same bytes. Returns the number of int8 tensors. */
static int expect_same_blocks(const char *fn, const char *fo) {
    assert_int_equal(rd32(fn + 8) >> 16, LOUPE_FORMAT_MINOR); /* header minor */
    assert_int_equal(rd32(fo + 8) >> 16, 0);
    assert_int_equal(n_entries(fn), n_entries(fo));
    int n_int8 = 0;
    for (int i = 0; i < n_entries(fn); i++) {
        const char *en = entry_at(fn, i), *eo = entry_named(fo, en);
        assert_memory_equal(en + 48, eo + 48, 4);       /* type */
        assert_memory_equal(en + 56, eo + 56, 4 + 36);  /* n_dims, reserved, shape */
        int64_t rows = (int64_t)rd64(en + 64), cols = (int64_t)rd64(en + 72);
        const char *dn = fn + rd64(en + 96), *dat_o = fo + rd64(eo + 96);
        if (rd32(en + 48) != LOUPE_T_Q8) {
            assert_int_equal(rd32(en + 52), LOUPE_LAYOUT_ROWS);
            assert_int_equal(rd32(eo + 52), LOUPE_LAYOUT_ROWS);
            assert_int_equal(rd64(en + 104), rd64(eo + 104));
            assert_memory_equal(dn, dat_o, rd64(en + 104));
            continue;
        }
        assert_int_equal(rd32(en + 52), LOUPE_LAYOUT_Q8P);
        assert_int_equal(rd32(eo + 52), LOUPE_LAYOUT_ROWS);
        assert_int_equal(rd64(en + 104), lp_q8p_bytes(rows, cols));
        assert_int_equal(rd64(eo + 104), (uint64_t)(rows * cols / 32 * 34));
        lp_mat w = {LP_Q8P, (int)rows, (int)cols, dn};
        expect_packed_rows(&w, dat_o, en);
        n_int8++;
    }
    return n_int8;
}

/* A format 1.0 file loads (its int8 packed at load) and computes the same
 * logits as the format 1.1 file, whose int8 weights are used in place;
 * requantizing converts between the layouts without changing a block. */
static void check_layouts(const char *src, const char *tag, const char *text,
                          const lp_keep_rule *keep, int n_keep, int want_int8) {
    char pn[512], po[512], pa[512], pb[512];
    snprintf(pn, sizeof pn, "%s", tu_tmp(tag));
    strcat(pn, "-layout1.loupe");
    snprintf(po, sizeof po, "%s", tu_tmp(tag));
    strcat(po, "-layout0.loupe");
    snprintf(pa, sizeof pa, "%s", tu_tmp(tag));
    strcat(pa, "-layout0-requant.loupe");
    snprintf(pb, sizeof pb, "%s", tu_tmp(tag));
    strcat(pb, "-layout1-requant.loupe");
    quantize_as(src, pn, LP_Q8, keep, n_keep, 0, NULL);
    quantize_as(src, po, LP_Q8, keep, n_keep, 1, NULL);
    size_t ln, lo;
    char *fn = tu_read_file(pn, &ln), *fo = tu_read_file(po, &lo);
    assert_non_null(fn);
    assert_non_null(fo);
    assert_int_equal(expect_same_blocks(fn, fo), want_int8);

    loupe_model *mn = open_ok(pn), *mo = open_ok(po);
    static lp_weight_slot sn[512], so[512];
    int n = lp_weight_slots(&mn->hp, &mn->w, sn, 512);
    assert_int_equal(lp_weight_slots(&mo->hp, &mo->w, so, 512), n);
    for (int i = 0; i < n; i++) {
        if (sn[i].kind == LP_SLOT_VEC || sn[i].mat->type != LP_Q8P) continue;
        assert_int_equal(so[i].mat->type, LP_Q8P);
        assert_true(in_mappings(mn, sn[i].mat->data));  /* used in place */
        assert_false(in_mappings(mo, so[i].mat->data)); /* packed at load */
        assert_memory_equal(sn[i].mat->data, so[i].mat->data, lp_q8p_bytes(sn[i].rows, sn[i].cols));
        assert_int_equal(type_in_file(mo, sn[i].name), LP_Q8); /* `loupe info`: int8 */
    }
    int32_t ids[128];
    int T = tokens_of(mn, text, ids, 128);
    float *ln_ = logits_of(mn, ids, T), *lo_ = logits_of(mo, ids, T);
    assert_memory_equal(ln_, lo_, sizeof(float) * (size_t)T * (size_t)loupe_n_vocab(mn));
    free(ln_);
    free(lo_);
    loupe_model_close(mn);
    loupe_model_close(mo);

    /* 1.0 -> 1.1 packs, 1.1 -> 1.0 unpacks: the same tensors as direct runs */
    quantize_as(po, pa, LP_Q8, keep, n_keep, 0, NULL);
    quantize_as(pn, pb, LP_Q8, keep, n_keep, 1, NULL);
    char *fa = tu_read_file(pa, &ln), *fb = tu_read_file(pb, &lo);
    assert_non_null(fa);
    assert_non_null(fb);
    expect_same_tensors(fa, fn);
    expect_same_tensors(fb, fo);
    free(fa);
    free(fb);
    free(fn);
    free(fo);
}

static void test_layouts_stories(void **state) {
    (void)state;
    lp_keep_rule keep = {"token_embd", LP_Q8};
    /* 7 matrices per layer but ffn_down (n_in 172), output, token_embd */
    check_layouts(tu_shared(STORIES), "stories", TEXTS[0], &keep, 1, 5 * 6 + 2);
}

static void test_layouts_gpt2char(void **state) {
    (void)state;
    size_t len = 0;
    char *corpus = tu_read_file(tu_shared(GPT2CHAR "/corpus.txt"), &len);
    assert_non_null(corpus);
    corpus[len > 60 ? 60 : len] = 0;
    /* an int8 token embedding of 54 rows (10 padding rows), looked up by
     * row and used as the tied output head */
    lp_keep_rule keep = {"token_embd", LP_Q8};
    check_layouts(tu_shared(GPT2CHAR), "gpt2char", corpus, &keep, 1, 4 * 6 + 1);
    free(corpus);
}

/* ------------------------------------------------------------ policy */

static void test_keep_rules(void **state) {
    (void)state;
    lp_keep_rule keep[] = {{"blk.*.ffn_*", LP_F16}, {"output", LP_F32}, {"blk.1.attn_norm", LP_Q8}};
    char b1[512];
    const char *dst = tmp_path(b1, "stories-keep.loupe");
    lp_quant_report rep;
    quantize_ok(tu_shared(STORIES), dst, LP_Q8, keep, 3, &rep);
    loupe_model *m = open_ok(dst);
    assert_int_equal(type_in_file(m, "blk.0.ffn_up"), LP_F16);
    assert_int_equal(type_in_file(m, "blk.4.ffn_down"), LP_F16);
    assert_int_equal(type_in_file(m, "blk.0.attn_q"), LP_Q8);
    assert_int_equal(type_in_file(m, "output"), LP_F32);
    assert_int_equal(type_in_file(m, "blk.1.attn_norm"), LP_F32); /* vectors stay f32 */
    int noted = 0;
    for (int i = 0; i < rep.n_notes; i++) noted += strstr(rep.notes[i], "blk.1.attn_norm") != NULL;
    assert_int_equal(noted, 1);
    loupe_model_close(m);
    /* --type f16: embeddings f16 too, vectors f32 */
    quantize_ok(tu_shared(STORIES), dst, LP_F16, NULL, 0, NULL);
    m = open_ok(dst);
    assert_int_equal(type_in_file(m, "token_embd"), LP_F16);
    assert_int_equal(type_in_file(m, "blk.3.attn_v"), LP_F16);
    assert_int_equal(type_in_file(m, "output_norm"), LP_F32);
    loupe_model_close(m);
}

/* quantizing a .loupe file again is lossless for its int8 blocks, and
 * refusals: the source itself, an existing dst without force */
static void test_requant_and_refusals(void **state) {
    (void)state;
    char b1[512], b2[512];
    const char *a = tmp_path(b1, "stories-int8-np.loupe"), *b = tmp_path(b2, "stories-int8-again.loupe");
    quantize_ok(tu_shared(STORIES), a, LP_Q8, NULL, 0, NULL);
    quantize_ok(a, b, LP_Q8, NULL, 0, NULL);
    size_t la, lb;
    char *fa = tu_read_file(a, &la), *fb = tu_read_file(b, &lb);
    assert_non_null(fa);
    assert_non_null(fb);
    expect_same_tensors(fa, fb);

    /* packed int8 -> f16 dequantizes each element: f16(d * q) */
    quantize_ok(a, b, LP_F16, NULL, 0, NULL);
    free(fb);
    fb = tu_read_file(b, &lb);
    assert_non_null(fb);
    const char *eq = entry_named(fa, "blk.0.ffn_gate"), *eh = entry_named(fb, "blk.0.ffn_gate");
    assert_int_equal(rd32(eh + 48), LOUPE_T_F16);
    lp_mat w = {LP_Q8P, (int)rd64(eq + 64), (int)rd64(eq + 72), fa + rd64(eq + 96)};
    const uint16_t *h = (const uint16_t *)(const void *)(fb + rd64(eh + 96));
    lp_block_q8 row[2]; /* 64 columns */
    assert_int_equal(w.cols, 64);
    for (int r = 0; r < w.rows; r++) {
        lp_q8p_unpack_row(w.data, w.cols, r, row);
        for (int c = 0; c < w.cols; c++) {
            float v = lp_f16_to_f32(row[c / 32].d) * (float)row[c / 32].qs[c % 32];
            if (h[r * w.cols + c] != lp_f32_to_f16(v))
                fail_msg("blk.0.ffn_gate[%d, %d]: f16 %04x, expected %04x", r, c,
                         h[r * w.cols + c], lp_f32_to_f16(v));
        }
    }
    free(fa);
    free(fb);

    lp_quant_opts o;
    lp_quant_opts_default(&o);
    assert_int_equal(lp_quantize_file(a, a, &o, NULL), LOUPE_ERR_ARG);
    assert_non_null(strstr(loupe_last_error(), "refusing to overwrite the source"));
    o.force = 1;
    assert_int_equal(lp_quantize_file(a, a, &o, NULL), LOUPE_ERR_ARG);
    o.force = 0;
    assert_int_equal(lp_quantize_file(tu_shared(STORIES), b, &o, NULL), LOUPE_ERR_ARG);
    assert_non_null(strstr(loupe_last_error(), "--force"));
    assert_int_equal(lp_quantize_file(tu_tmp("no-such-model.gguf"), b, &o, NULL), LOUPE_ERR_IO);

    /* a NaN weight cannot become int8: refused, naming the tensor */
    char b3[512], b4[512];
    const char *f32 = tmp_path(b3, "stories-nan-f32.loupe"), *q8 = tmp_path(b4, "stories-nan-int8.loupe");
    quantize_ok(tu_shared(STORIES), f32, LP_F32, NULL, 0, NULL);
    size_t len = 0;
    char *f = tu_read_file(f32, &len);
    assert_non_null(f);
    float nan = NAN;
    memcpy(f + rd64(entry_named(f, "blk.1.attn_v") + 96) + 4 * 70, &nan, 4);
    assert_int_equal(tu_write_file(f32, f, len), 0);
    free(f);
    o.force = 1;
    assert_int_equal(lp_quantize_file(f32, q8, &o, NULL), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(loupe_last_error(), "blk.1.attn_v: the source holds NaN or infinite"));
    quantize_ok(f32, q8, LP_F16, NULL, 0, NULL); /* f16 has a NaN */

    /* a finite weight beyond f16's range would become an infinity: the f16
     * embedding (the int8 default) is refused with the way out, which works */
    quantize_ok(tu_shared(STORIES), f32, LP_F32, NULL, 0, NULL);
    f = tu_read_file(f32, &len);
    assert_non_null(f);
    float big = 70000.0f;
    memcpy(f + rd64(entry_named(f, "token_embd") + 96) + 4 * 200, &big, 4);
    assert_int_equal(tu_write_file(f32, f, len), 0);
    free(f);
    assert_int_equal(lp_quantize_file(f32, q8, &o, NULL), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(loupe_last_error(), "token_embd: the source holds weights beyond "
                                               "f16's range (|w| > 65504); keep the tensor f32 "
                                               "with --keep 'token_embd=f32'"));
    lp_keep_rule keep = {"token_embd", LP_F32};
    quantize_ok(f32, q8, LP_Q8, &keep, 1, NULL);
    loupe_model *m = open_ok(q8);
    assert_int_equal(type_in_file(m, "token_embd"), LP_F32);
    loupe_model_close(m);
    o.type = LP_F16;
    assert_int_equal(lp_quantize_file(f32, q8, &o, NULL), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(loupe_last_error(), "token_embd: the source holds weights beyond"));
}

/* quantize drops the written file from the page cache (where the file
 * system keeps one: not tmpfs), so the first run reads it back in large
 * folios: no page of it is resident. Counted by util-linux's fincore in a
 * process of its own: a mapping made here would be read by valgrind, which
 * looks at the first pages of every file a program maps. */
static void test_written_file_not_cached(void **state) {
    (void)state;
    char b1[512], b2[512];
    const char *dst = tmp_path(b1, "stories-uncached.loupe");
    const char *count = tmp_path(b2, "stories-uncached.pages");
    quantize_ok(tu_shared(STORIES), dst, LP_Q8, NULL, 0, NULL);
    struct statfs fs;
    assert_int_equal(statfs(dst, &fs), 0);
    if (fs.f_type == 0x01021994) { /* TMPFS_MAGIC: its pages are the file */
        print_message("%s is on tmpfs: nothing to check\n", dst);
        return;
    }
    if (tu_system("fincore --noheadings --output PAGES '%s' > '%s'", dst, count) != 0)
        fail_msg("fincore failed (util-linux-extra; tools/setup-deps.sh installs it)");
    size_t len = 0;
    char *text = tu_read_file(count, &len);
    assert_non_null(text);
    long resident = strtol(text, NULL, 10);
    free(text);
    print_message("%ld pages of %s resident after quantize\n", resident, dst);
    assert_int_equal(resident, 0);
}

/* ------------------------------------------------------------ corruption */

static char *g_good; /* a valid file: stories int8 */
static size_t g_len;


/* Recomputes the header, metadata and directory checksums, so a test
 * reaches the check behind them. */
static void reseal(char *f) {
    uint64_t mo = rd64(f + 24), ms = rd64(f + 32), dof = rd64(f + 40), ds = rd64(f + 48);
    if (mo <= g_len && ms <= g_len - mo) wr64(f + 80, lp_xxh64(f + mo, ms, 0));
    if (dof <= g_len && ds <= g_len - dof) wr64(f + 88, lp_xxh64(f + dof, ds, 0));
    wr64(f + 120, lp_xxh64(f, 120, 0));
}

static char *entry(char *f, int i) { return f + rd64(f + 40) + (size_t)i * 128; }

/* Offset of the value of metadata key (after its type field). */
static size_t meta_value(const char *f, const char *key) {
    size_t klen = strlen(key), off = rd64(f + 24) + 8, end = off + rd64(f + 32) - 8;
    while (off < end) {
        uint32_t kl, type;
        memcpy(&kl, f + off, 4);
        memcpy(&type, f + off + 4 + kl, 4);
        size_t v = off + 8 + kl;
        if (kl == klen && !memcmp(f + off + 4, key, klen)) return v;
        uint64_t n = rd64(f + v);
        if (type == LOUPE_M_I32 || type == LOUPE_M_F32) off = v + 4;
        else if (type == LOUPE_M_STR || type == LOUPE_M_ARR_U8) off = v + 8 + n;
        else if (type == LOUPE_M_ARR_F32 || type == LOUPE_M_ARR_I32) off = v + 8 + 4 * n;
        else {
            off = v + 8;
            for (uint64_t i = 0; i < n; i++) off += 8 + rd64(f + off);
        }
    }
    fail_msg("metadata key %s not found", key);
    return 0;
}

typedef struct {
    const char *what;
    loupe_status status;
    const char *message; /* substring of the error */
    int verify_only;     /* loads fine; only --verify (data checksums) fails */
} corrupt_case;

static void expect_refused(const char *path, const corrupt_case *c, size_t len) {
    loupe_model *m = NULL;
    loupe_model_params p = {0};
    loupe_status st = loupe_model_open(path, &p, &m);
    if (c->verify_only) {
        if (st != LOUPE_OK) fail_msg("%s: open failed: %s", c->what, loupe_last_error());
        loupe_model_close(m);
        st = lp_loupe_verify(path);
    }
    if (st != c->status || !strstr(loupe_last_error(), c->message))
        fail_msg("%s (%zu bytes): got %s \"%s\", expected %s containing \"%s\"", c->what, len,
                 loupe_status_name(st), loupe_last_error(), loupe_status_name(c->status),
                 c->message);
    if (!c->verify_only) assert_null(m);
}

/* Applies one corruption (by index) to f of *len bytes; returns its case. */
static corrupt_case corrupt(int k, char *f, size_t *len) {
    uint64_t meta = rd64(f + 24), dir = rd64(f + 40), data = rd64(f + 56);
    char *e0 = entry(f, 0), *e1 = entry(f, 1);
    char *eq = (char *)entry_named(f, "blk.0.attn_k"), *ed = (char *)entry_named(f, "blk.0.ffn_down");
    char *en = (char *)entry_named(f, "blk.0.attn_norm");
    switch (k) {
    case 0: f[0] = 'X';
        return (corrupt_case){"bad magic", LOUPE_ERR_FORMAT, "bad magic", 0};
    case 1: f[6] = '\n'; f[5] = '\n';
        return (corrupt_case){"text-mode mangled magic", LOUPE_ERR_FORMAT, "signature", 0};
    case 2: f[8] = 2; reseal(f);
        return (corrupt_case){"newer major version", LOUPE_ERR_UNSUPPORTED, "version 2.1 is newer", 0};
    case 3: f[12] = 1; f[15] = 4;
        return (corrupt_case){"byte-swapped endianness marker", LOUPE_ERR_UNSUPPORTED, "endianness", 0};
    case 4: *len = 100;
        return (corrupt_case){"truncated in the header", LOUPE_ERR_FORMAT, "truncated", 0};
    case 5: *len = meta + 20;
        return (corrupt_case){"truncated in the metadata", LOUPE_ERR_FORMAT, "truncated", 0};
    case 6: *len = dir + 200;
        return (corrupt_case){"truncated in the directory", LOUPE_ERR_FORMAT, "truncated", 0};
    case 7: *len -= 1;
        return (corrupt_case){"truncated in the data", LOUPE_ERR_FORMAT, "truncated", 0};
    case 8: f[100] ^= 1;
        return (corrupt_case){"header checksum", LOUPE_ERR_FORMAT, "header checksum", 0};
    case 9: f[meta + 50] ^= 1;
        return (corrupt_case){"metadata checksum", LOUPE_ERR_FORMAT, "metadata checksum", 0};
    case 10: e1[100] ^= 1;
        return (corrupt_case){"directory checksum", LOUPE_ERR_FORMAT, "directory checksum", 0};
    case 11: f[rd64(e1 + 96) + 5] ^= 0x10;
        return (corrupt_case){"data checksum (verify)", LOUPE_ERR_FORMAT, "data checksum mismatch", 1};
    case 12: wr64(e0 + 96, rd64(f + 16) + 64); reseal(f);
        return (corrupt_case){"offset beyond the file", LOUPE_ERR_FORMAT, "outside the data section", 0};
    case 13: wr64(e1 + 96, rd64(e0 + 96)); reseal(f);
        return (corrupt_case){"overlapping tensors", LOUPE_ERR_FORMAT, "overlap", 0};
    case 14: wr64(e0 + 96, rd64(e0 + 96) + 4); reseal(f);
        return (corrupt_case){"unaligned offset", LOUPE_ERR_FORMAT, "aligned", 0};
    case 15: wr32(e0 + 48, 7); reseal(f);
        return (corrupt_case){"unknown tensor type", LOUPE_ERR_UNSUPPORTED, "unknown type 7", 0};
    case 16: wr64(e0 + 64, 1ull << 40); wr64(e0 + 72, 1ull << 40); reseal(f);
        return (corrupt_case){"shape element count overflow", LOUPE_ERR_FORMAT, "impossible element count", 0};
    case 17: wr32(f + 72, 0xFFFFFFF0u); reseal(f);
        return (corrupt_case){"absurd tensor count", LOUPE_ERR_FORMAT, "tensor count 4294967280", 0};
    case 18: wr64(f + meta_value(f, "hp.model_type"), 1ull << 40); reseal(f);
        return (corrupt_case){"string length beyond the file", LOUPE_ERR_FORMAT, "runs past", 0};
    case 19: memcpy(e0, "zzzzzzzzzz", 10); reseal(f); /* entry 0 is token_embd */
        return (corrupt_case){"missing required tensor", LOUPE_ERR_MISSING, "required tensor token_embd missing", 0};
    case 20: f[meta_value(f, "hp.dim") - 5] = 'x'; reseal(f); /* key "hp.dim" -> "hp.dix" */
        return (corrupt_case){"missing metadata key", LOUPE_ERR_MISSING, "hp.dim missing", 0};
    case 21: wr64(e0 + 104, rd64(e0 + 104) + 1); reseal(f);
        return (corrupt_case){"size disagrees with shape", LOUPE_ERR_FORMAT, "need", 0};
    case 22: wr32(e0 + 52, 7); reseal(f);
        return (corrupt_case){"unknown layout", LOUPE_ERR_UNSUPPORTED, "tensor token_embd: unknown layout 7", 0};
    case 23: wr64(f + 32, 1ull << 62); reseal(f);
        return (corrupt_case){"section out of range", LOUPE_ERR_FORMAT, "section table", 0};
    case 24: memset(e0, 'a', 48); reseal(f);
        return (corrupt_case){"name not terminated", LOUPE_ERR_FORMAT, "NUL-terminated", 0};
    case 25: memcpy(e1, e0, 48); reseal(f);
        return (corrupt_case){"duplicate tensor name", LOUPE_ERR_FORMAT, "appears twice", 0};
    case 26: wr64(e0 + 104, rd64(e0 + 104) + rd64(e0 + 104) / rd64(e0 + 64)); /* + 1 row */
        wr64(e0 + 64, rd64(e0 + 64) + 1);
        reseal(f); /* consistent size, wrong vocabulary rows: overlaps the next tensor */
        return (corrupt_case){"grown tensor", LOUPE_ERR_FORMAT, "overlap", 0};
    case 27: wr64(f + meta + 0, 1ull << 60); reseal(f);
        return (corrupt_case){"absurd metadata count", LOUPE_ERR_FORMAT, "metadata entry count", 0};
    case 28: wr32(f + meta_value(f, "hp.n_layers") - 4, 99); reseal(f);
        return (corrupt_case){"unknown metadata type", LOUPE_ERR_FORMAT, "unknown value type", 0};
    case 29: wr32(f + meta_value(f, "hp.n_layers"), 4); reseal(f);
        return (corrupt_case){"hparams disagree with tensors", LOUPE_ERR_FORMAT, "not a weight", 0};
    case 30: wr32(e0 + 56, 5); reseal(f);
        return (corrupt_case){"bad dimension count", LOUPE_ERR_FORMAT, "5 dimensions", 0};
    case 31: *len = 10;
        return (corrupt_case){"only the magic", LOUPE_ERR_FORMAT, "truncated", 0};
    case 32: *len = 0;
        return (corrupt_case){"empty file", LOUPE_ERR_FORMAT, "bad magic", 0};
    case 33: wr64(f + meta_value(f, "tok.pieces") + 8, 1ull << 62); reseal(f);
        return (corrupt_case){"piece length beyond the section", LOUPE_ERR_FORMAT, "runs past", 0};
    case 34: wr64(f + meta_value(f, "tok.scores"), 7); reseal(f); /* shrink: stray bytes */
        return (corrupt_case){"array count wrong", LOUPE_ERR_FORMAT, "metadata entry", 0};
    case 35: wr32(f + meta_value(f, "hp.n_layers"), 65536); reseal(f);
        return (corrupt_case){"inflated layer count", LOUPE_ERR_MISSING, "needs at least 524289 tensors", 0};
    /* layout 1 (packed int8): blk.0.attn_k is (32, 64), 2 groups of 16 rows */
    case 36: wr32(eq + 48, LOUPE_T_F16); reseal(f);
        return (corrupt_case){"layout 1 on an f16 tensor", LOUPE_ERR_FORMAT,
                              "tensor blk.0.attn_k: layout 1 (packed int8) on an f16 tensor", 0};
    case 37: wr32(e0 + 52, LOUPE_LAYOUT_Q8P); reseal(f); /* token_embd is f16 */
        return (corrupt_case){"layout 1 on an f16 tensor", LOUPE_ERR_FORMAT, "on an f16 tensor", 0};
    case 38: wr64(eq + 104, rd64(eq + 104) - LP_Q8P_GROUP_BYTES(64)); reseal(f);
        return (corrupt_case){"layout 1 one group short", LOUPE_ERR_FORMAT,
                              "tensor blk.0.attn_k: size 1088 bytes, but a packed int8 (32, 64) "
                              "matrix needs 2176 (2 groups of 16 rows)", 0};
    case 39: wr64(eq + 104, rd64(eq + 104) + LP_Q8P_GROUP_BYTES(64)); reseal(f);
        return (corrupt_case){"layout 1 one group long", LOUPE_ERR_FORMAT,
                              "size 3264 bytes, but a packed int8 (32, 64) matrix needs 2176", 0};
    case 40: wr32(ed + 48, LOUPE_T_Q8); wr32(ed + 52, LOUPE_LAYOUT_Q8P); reseal(f);
        return (corrupt_case){"layout 1 with cols % 32 != 0", LOUPE_ERR_FORMAT,
                              "tensor blk.0.ffn_down: int8 rows of 172 elements are not whole "
                              "blocks of 32", 0};
    case 41: wr32(en + 48, LOUPE_T_Q8); wr32(en + 52, LOUPE_LAYOUT_Q8P); reseal(f);
        return (corrupt_case){"layout 1 on a vector", LOUPE_ERR_FORMAT,
                              "tensor blk.0.attn_norm: layout 1 (packed int8) needs a matrix", 0};
    case 42: wr32(eq + 52, LOUPE_LAYOUT_ROWS); wr64(eq + 64, 33); reseal(f);
        /* read as row-major: 33 rows need 2244 bytes, the tensor has 2176 */
        return (corrupt_case){"layout 0 with a packed size", LOUPE_ERR_FORMAT, "need 2244", 0};
    }
    (void)data;
    return (corrupt_case){NULL, LOUPE_OK, NULL, 0};
}

static void test_corrupt_files(void **state) {
    (void)state;
    char good[512]; /* tu_tmp's buffers are reused: keep a copy */
    snprintf(good, sizeof good, "%s", tu_tmp("stories-corrupt-base.loupe"));
    quantize_ok(tu_shared(STORIES), good, LP_Q8, NULL, 0, NULL);
    g_good = tu_read_file(good, &g_len);
    assert_non_null(g_good);
    int n_cases = 0;
    for (int k = 0;; k++) {
        char *f = malloc(g_len);
        assert_non_null(f);
        memcpy(f, g_good, g_len);
        size_t len = g_len;
        corrupt_case c = corrupt(k, f, &len);
        if (!c.what) {
            free(f);
            break;
        }
        char path[512];
        snprintf(path, sizeof path, "%s", tu_tmp(""));
        snprintf(path + strlen(path), sizeof path - strlen(path), "corrupt-%02d.loupe", k);
        assert_int_equal(tu_write_file(path, f, len), 0);
        free(f);
        expect_refused(path, &c, len);
        n_cases++;
    }
    assert_true(n_cases >= 15);

    /* random damage to header, metadata and directory (checksums resealed so
     * the deeper checks run): any status, never a crash or a leak */
    uint64_t rng = 0x9E3779B97F4A7C15ull, data_off = rd64(g_good + 56);
    char path[512];
    snprintf(path, sizeof path, "%s", tu_tmp("corrupt-random.loupe"));
    int n_ok = 0;
    for (int k = 0; k < 400; k++) {
        char *f = malloc(g_len);
        assert_non_null(f);
        memcpy(f, g_good, g_len);
        int n_flips = 1 + k % 4;
        for (int j = 0; j < n_flips; j++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            uint64_t at = 16 + (rng >> 33) % (data_off - 16);
            f[at] = (char)(rng >> 13);
        }
        if (k % 2 == 0) reseal(f);
        assert_int_equal(tu_write_file(path, f, g_len), 0);
        free(f);
        loupe_model *m = NULL;
        loupe_model_params p = {0};
        if (loupe_model_open(path, &p, &m) == LOUPE_OK) {
            n_ok++; /* e.g. a changed score or a byte in a reserved field */
            loupe_model_close(m);
        } else {
            assert_null(m);
            assert_true(strlen(loupe_last_error()) > 0);
        }
    }
    print_message("random damage: %d of 400 files still loaded\n", n_ok);
    /* the untouched file verifies */
    assert_int_equal(lp_loupe_verify(good), LOUPE_OK);
    free(g_good);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checksums),
        cmocka_unit_test(test_q8_blocks),
        cmocka_unit_test(test_q8_vectors),
        cmocka_unit_test(test_round_trip_stories),
        cmocka_unit_test(test_round_trip_gpt2char),
        cmocka_unit_test(test_int8_matches_numpy_stories),
        cmocka_unit_test(test_int8_matches_numpy_gpt2char),
        cmocka_unit_test(test_int8_logits_reference),
        cmocka_unit_test(test_epilogues_exact),
        cmocka_unit_test(test_gguf_q8_bit_identical),
        cmocka_unit_test(test_keep_rules),
        cmocka_unit_test(test_requant_and_refusals),
        cmocka_unit_test(test_written_file_not_cached),
        cmocka_unit_test(test_layouts_stories),
        cmocka_unit_test(test_layouts_gpt2char),
        cmocka_unit_test(test_corrupt_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
