/*
 * test_loader.c — checkpoint readers and model loaders.
 *
 *  stories260K.gguf: hyper-parameters as published, and every weight equal
 *    to the same model's llama2.c export (stories260K.bin), read here by
 *    hand; RoPE frequencies from the formula.
 *  slm-gpt2-char (HF): the Conv1D weights transposed and the fused c_attn
 *    split, against values numpy reads from the safetensors file.
 *  Synthetic models written by tests/ref/make_broken.py (GPT-2 and Llama
 *    variants: sharded, F16, BF16, mixed, untied, qkv bias, misaligned data,
 *    linear / llama3 RoPE, a scaled-down copy of every real config, GGUF
 *    llama Q8_0 / qwen2 / gpt2 with fused F16 qkv): every fact in
 *    expected.txt (hparams, weight elements, inv_freq, parameter count).
 *  Every real config.json in ../shared/models/hf parses to its published
 *    hyper-parameters.
 *  The broken corpus (broken.txt): each file fails with its status code and
 *    a message naming the problem.
 *  Tensor-set basics: dtype sizes, mappings, a 1000-tensor name index,
 *    GGUF metadata arrays, zero-copy vs converted weights.
 *  int8 in memory (LP_Q8P, groups of 16 rows, read here from the layout
 *    blocks.h documents): Q8_0 blocks land unchanged at their place, padding
 *    rows are zero, fused matrices split inside a group are packed apart,
 *    misaligned / wrong-sized / transposed sources are copied or refused,
 *    and the file pages of packed tensors leave the process's resident set.
 *  int8 logits: GGUF Q8_0 models (stories260K quantized by numpy; random
 *    models from tests/ref/q8_models.py with 517 output rows, k/v of 8 rows,
 *    a fused q|k|v split inside a group, a tied int8 head) against the
 *    float64 numpy int8 forward pass (tests/ref/q8_forward.py), and against
 *    loupe on the same weights dequantized to F32 within the int8 effect
 *    that reference measures (q8_forward.py --exact).
 */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "testutil.h"

#include "src/error.h"
#include "src/model.h"

static char gen_dir[4096]; /* output of make_broken.py */

static int setup(void **state) {
    (void)state;
    snprintf(gen_dir, sizeof gen_dir, "%s", tu_tmp("loader"));
    int rc = tu_system("LOUPE_SHARED='%s' '%s' '%s' '%s'", tu_shared(""), tu_python(),
                       tu_src("tests/ref/make_broken.py"), gen_dir);
    if (rc != 0) fprintf(stderr, "make_broken.py failed (%d)\n", rc);
    return rc == 0 ? 0 : -1;
}

static const char *gen_path(const char *rel) {
    static char buf[4][4096];
    static int next;
    char *b = buf[next++ % 4];
    int n = snprintf(b, sizeof buf[0], "%s/%s", gen_dir, rel);
    assert_true(n > 0 && n < (int)sizeof buf[0]);
    return b;
}

static loupe_model *open_ok(const char *path) {
    loupe_model *m = NULL;
    loupe_status st = loupe_model_open(path, NULL, &m);
    if (st != LOUPE_OK)
        print_error("%s: %s: %s\n", path, loupe_status_name(st), loupe_last_error());
    assert_int_equal(st, LOUPE_OK);
    assert_non_null(m);
    return m;
}

/* ------------------------------------------------------------ accessors */

/* Element (r, c) of a packed int8 matrix of cols columns, read straight
 * from the layout quant/blocks.h documents: group r / 16 holds nb = cols/32
 * blocks of 16 fp16 scales d[b][i], then qs[b][j][i][k] = q + 128 for
 * element 32b + 4j + k of row i. Scale and q come back apart. */
static void q8p_elem(const void *packed, int cols, int r, int c, uint16_t *d, int *q) {
    const int nb = cols / 32, b = c / 32, i = r % 16, e = c % 32;
    const uint8_t *grp = (const uint8_t *)packed + (size_t)(r / 16) * nb * 16 * 34;
    memcpy(d, grp + (size_t)b * 32 + 2 * i, 2);
    *q = (int)grp[(size_t)nb * 32 + (size_t)b * 512 + (size_t)((e / 4) * 16 + i) * 4 + e % 4] - 128;
}

static float q8p_at(const void *packed, int cols, int r, int c) {
    uint16_t d;
    int q;
    q8p_elem(packed, cols, r, c, &d, &q);
    return lp_f16_to_f32(d) * (float)q;
}

/* Rows [0, rows) of a packed matrix hold the Q8_0 blocks src (rows, cols/32)
 * bit for bit, and the padding rows up to the group's end are all zero. */
static void expect_packed(const void *packed, const lp_block_q8 *src, int rows, int cols) {
    const int nb = cols / 32;
    for (int r = 0; r < (rows + 15) / 16 * 16; r++)
        for (int c = 0; c < cols; c++) {
            uint16_t d;
            int q;
            q8p_elem(packed, cols, r, c, &d, &q);
            const lp_block_q8 *b = r < rows ? &src[(size_t)r * nb + c / 32] : NULL;
            if (d != (b ? b->d : 0) || q != (b ? b->qs[c % 32] : 0))
                fail_msg("packed (%d, %d): d %04x q %d, want d %04x q %d", r, c, d, q,
                         b ? b->d : 0, b ? b->qs[c % 32] : 0);
        }
}

static float mat_at(const lp_mat *w, int r, int c) {
    assert_true(r >= 0 && r < w->rows && c >= 0 && c < w->cols);
    size_t i = (size_t)r * w->cols + c;
    switch (w->type) {
    case LP_F32: return ((const float *)w->data)[i];
    case LP_F16: return lp_f16_to_f32(((const uint16_t *)w->data)[i]);
    case LP_Q8P: return q8p_at(w->data, w->cols, r, c);
    default: fail_msg("matrix of type %d", w->type);
    }
    return 0;
}

static const lp_mat *mat_field(const loupe_model *m, const char *f, int l) {
    if (l < 0) {
        if (!strcmp(f, "tok_embd")) return &m->w.tok_embd;
        if (!strcmp(f, "lm_head")) return &m->w.lm_head;
    } else {
        assert_true(l < m->hp.n_layers);
        const lp_layer *L = &m->w.layers[l];
        const char *names[] = {"wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"};
        const lp_mat *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (int i = 0; i < 7; i++)
            if (!strcmp(f, names[i])) return mats[i];
    }
    fail_msg("unknown matrix field %s", f);
    return NULL;
}

static const float *vec_field(const loupe_model *m, const char *f, int l) {
    if (l < 0) {
        if (!strcmp(f, "pos_embd")) return m->w.pos_embd;
        if (!strcmp(f, "out_norm_w")) return m->w.out_norm_w;
        if (!strcmp(f, "out_norm_b")) return m->w.out_norm_b;
    } else {
        const lp_layer *L = &m->w.layers[l];
        const char *names[] = {"attn_norm_w", "attn_norm_b", "bq", "bk", "bv", "bo",
                               "ffn_norm_w", "ffn_norm_b", "b_up", "b_down"};
        const float *vecs[] = {L->attn_norm_w, L->attn_norm_b, L->bq, L->bk, L->bv, L->bo,
                               L->ffn_norm_w, L->ffn_norm_b, L->b_up, L->b_down};
        for (int i = 0; i < 10; i++)
            if (!strcmp(f, names[i])) return vecs[i];
    }
    fail_msg("unknown vector field %s", f);
    return NULL;
}

static double hp_field(const loupe_model *m, const char *k) {
    const lp_hparams *h = &m->hp;
    struct { const char *name; double v; } t[] = {
        {"arch", h->arch}, {"n_vocab", h->n_vocab}, {"n_ctx", h->n_ctx}, {"dim", h->dim},
        {"n_layers", h->n_layers}, {"n_heads", h->n_heads}, {"n_kv_heads", h->n_kv_heads},
        {"head_dim", h->head_dim}, {"ffn_dim", h->ffn_dim}, {"act", h->act},
        {"tied_head", h->tied_head}, {"qkv_bias", h->qkv_bias}, {"rope_neox", h->rope_neox},
        {"rot_dim", h->rot_dim}, {"rope_scaling", h->rope_scaling}, {"bos_id", h->bos_id},
        {"eos_id", h->eos_id}, {"n_params", (double)m->n_params}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (!strcmp(t[i].name, k)) return t[i].v;
    fail_msg("unknown hparam %s", k);
    return 0;
}

/* ------------------------------------------------------------ stories260K */

/* stories260K.bin (llama2.c): 7 int32 (dim, hidden, layers, heads, kv_heads,
 * vocab, seq_len), then f32 arrays in a fixed order, (out, in) row-major. */
typedef struct {
    const float *emb, *rms_att, *wq, *wk, *wv, *wo, *rms_ffn, *w1, *w2, *w3, *rms_final;
} llama2c;

static void llama2c_map(const char *buf, llama2c *w, int dim, int hid, int nl, int kv, int voc) {
    const float *p = (const float *)(buf + 28);
    w->emb = p;        p += (size_t)voc * dim;
    w->rms_att = p;    p += (size_t)nl * dim;
    w->wq = p;         p += (size_t)nl * dim * dim;
    w->wk = p;         p += (size_t)nl * kv * dim;
    w->wv = p;         p += (size_t)nl * kv * dim;
    w->wo = p;         p += (size_t)nl * dim * dim;
    w->rms_ffn = p;    p += (size_t)nl * dim;
    w->w1 = p;         p += (size_t)nl * hid * dim;
    w->w2 = p;         p += (size_t)nl * dim * hid;
    w->w3 = p;         p += (size_t)nl * hid * dim;
    w->rms_final = p;
}

static void expect_mat_equal(const lp_mat *w, const float *ref, int rows, int cols) {
    assert_int_equal(w->rows, rows);
    assert_int_equal(w->cols, cols);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) assert_true(mat_at(w, r, c) == ref[(size_t)r * cols + c]);
}

static void expect_vec_equal(const float *v, const float *ref, int n) {
    assert_non_null(v);
    assert_memory_equal(v, ref, (size_t)n * sizeof(float));
}

static int in_mappings(const loupe_model *m, const void *p) {
    for (int i = 0; i < m->ts.n_maps; i++) {
        const uint8_t *b = m->ts.maps[i].data;
        if ((const uint8_t *)p >= b && (const uint8_t *)p < b + m->ts.maps[i].size) return 1;
    }
    return 0;
}

static void test_stories260k(void **state) {
    (void)state;
    loupe_model *m = open_ok(tu_shared("models/stories260K/stories260K.gguf"));
    const lp_hparams *hp = &m->hp;
    assert_int_equal(hp->arch, LP_ARCH_LLAMA);
    assert_string_equal(hp->model_type, "llama");
    assert_int_equal(hp->dim, 64);
    assert_int_equal(hp->n_layers, 5);
    assert_int_equal(hp->n_heads, 8);
    assert_int_equal(hp->n_kv_heads, 4);
    assert_int_equal(hp->n_vocab, 512);
    assert_int_equal(hp->head_dim, 8);
    assert_int_equal(hp->ffn_dim, 172);
    assert_int_equal(hp->n_ctx, 2048);
    assert_int_equal(hp->rot_dim, 8);
    assert_int_equal(hp->rope_neox, 0);
    assert_int_equal(hp->act, LP_ACT_SILU);
    assert_int_equal(hp->bos_id, 1);
    assert_int_equal(hp->eos_id, 2);
    assert_true(fabsf(hp->norm_eps - 1e-5f) < 1e-9f);
    assert_int_equal(hp->tied_head, 0); /* the file carries output.weight */

    size_t len;
    char *bin = tu_read_file(tu_shared("models/stories260K/stories260K.bin"), &len);
    assert_non_null(bin);
    int hdr[7];
    memcpy(hdr, bin, sizeof hdr);
    assert_int_equal(hdr[0], 64);
    int dim = 64, hid = hdr[1], nl = hdr[2], kv = dim * hdr[4] / hdr[3], voc = hdr[5];
    llama2c w;
    llama2c_map(bin, &w, dim, hid, nl, kv, voc);
    expect_mat_equal(&m->w.tok_embd, w.emb, voc, dim);
    for (int l = 0; l < nl; l++) {
        const lp_layer *L = &m->w.layers[l];
        expect_mat_equal(&L->wq, w.wq + (size_t)l * dim * dim, dim, dim);
        expect_mat_equal(&L->wk, w.wk + (size_t)l * kv * dim, kv, dim);
        expect_mat_equal(&L->wv, w.wv + (size_t)l * kv * dim, kv, dim);
        expect_mat_equal(&L->wo, w.wo + (size_t)l * dim * dim, dim, dim);
        expect_mat_equal(&L->w_gate, w.w1 + (size_t)l * hid * dim, hid, dim);
        expect_mat_equal(&L->w_down, w.w2 + (size_t)l * dim * hid, dim, hid);
        expect_mat_equal(&L->w_up, w.w3 + (size_t)l * hid * dim, hid, dim);
        expect_vec_equal(L->attn_norm_w, w.rms_att + (size_t)l * dim, dim);
        expect_vec_equal(L->ffn_norm_w, w.rms_ffn + (size_t)l * dim, dim);
        assert_null(L->bq);
        assert_null(L->attn_norm_b);
        assert_true(in_mappings(m, L->wq.data)); /* aligned F32: zero-copy */
    }
    expect_vec_equal(m->w.out_norm_w, w.rms_final, dim);
    assert_null(m->w.pos_embd);
    for (int i = 0; i < hp->rot_dim / 2; i++) {
        double want = 1.0 / pow(10000.0, 2.0 * i / hp->rot_dim);
        assert_true(fabs(m->rope_inv_freq[i] - want) <= 1e-6 * want);
    }
    free(bin);

    loupe_model_info info;
    loupe_model_get_info(m, &info);
    assert_string_equal(info.arch, "llama");
    assert_int_equal(info.n_vocab, 512);
    assert_int_equal(info.head_dim, 8);
    assert_int_equal(info.ffn_dim, 172);
    /* 48 F32 tensors, all bound: the file's element count */
    uint64_t n = 0;
    for (int i = 0; i < m->ts.n; i++) n += m->ts.t[i].nbytes / 4;
    assert_int_equal(info.n_params, n);
    assert_int_equal(info.weight_bytes, 4 * n);
    assert_int_equal(m->n_tensors, 48);

    char buf[16384];
    size_t w_len = loupe_model_describe(m, buf, sizeof buf);
    assert_int_equal(w_len, strlen(buf));
    assert_non_null(strstr(buf, "architecture:  llama"));
    assert_non_null(strstr(buf, "heads:         8 query, 4 key/value, head_dim 8"));
    assert_non_null(strstr(buf, "SentencePiece BPE, 512 tokens"));
    assert_non_null(strstr(buf, "blk.4.ffn_down.weight"));
    assert_non_null(strstr(buf, "[64, 172]"));
    /* a small buffer is filled, never overrun */
    char small[40];
    memset(small, 'x', sizeof small);
    assert_int_equal(loupe_model_describe(m, small, 32), 31);
    assert_int_equal(small[31], 0);
    assert_int_equal(small[32], 'x');
    loupe_model_close(m);
}

/* ------------------------------------------------------------ expected.txt */

/* Path of a model named in expected.txt. */
static const char *model_path(const char *name) {
    if (!strcmp(name, "slm-gpt2-char")) return tu_shared("models/slm-gpt2-char");
    char rel[512];
    snprintf(rel, sizeof rel, "gguf/%s.gguf", name);
    struct stat st;
    if (stat(gen_path(rel), &st) == 0) return gen_path(rel);
    snprintf(rel, sizeof rel, "models/%s", name);
    return gen_path(rel);
}

static int check_fact(const loupe_model *m, const char *name, const char *line) {
    char kind[16], field[32];
    int layer, r, c;
    double v;
    const char *rest = line + strlen(name) + 1;
    if (sscanf(rest, "hp %31s %lf", field, &v) == 2) {
        double got = hp_field(m, field);
        if (got != v) print_error("%s: hp %s = %.17g, want %.17g\n", name, field, got, v);
        return got == v;
    }
    if (sscanf(rest, "mat %31s %d %d %d %lf", field, &layer, &r, &c, &v) == 5) {
        float got = mat_at(mat_field(m, field, layer), r, c);
        if (got != (float)v)
            print_error("%s: %s[%d] (%d, %d) = %.9g, want %.9g\n", name, field, layer, r, c,
                        got, v);
        return got == (float)v;
    }
    if (sscanf(rest, "vec %31s %d %d %lf", field, &layer, &r, &v) == 4) {
        const float *p = vec_field(m, field, layer);
        if (!p) print_error("%s: %s[%d] is NULL\n", name, field, layer);
        if (!p) return 0;
        if (p[r] != (float)v)
            print_error("%s: %s[%d][%d] = %.9g, want %.9g\n", name, field, layer, r, p[r], v);
        return p[r] == (float)v;
    }
    if (sscanf(rest, "inv %d %lf", &r, &v) == 2) {
        assert_non_null(m->rope_inv_freq);
        assert_true(r < m->hp.rot_dim / 2);
        /* pow differs by an ulp or so between libms */
        float got = m->rope_inv_freq[r];
        int ok = fabs(got - v) <= 4e-7 * fabs(v);
        if (!ok) print_error("%s: inv_freq[%d] = %.9g, want %.9g\n", name, r, got, v);
        return ok;
    }
    if (sscanf(rest, "%15s", kind) == 1 && !strcmp(kind, "source")) return 1;
    fail_msg("unparsed fact: %s", line);
    return 0;
}

static void test_expected_facts(void **state) {
    (void)state;
    char *text = tu_read_file(gen_path("expected.txt"), NULL);
    assert_non_null(text);
    char cur[128] = "";
    loupe_model *m = NULL;
    int n_facts = 0, n_models = 0, bad = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char name[128];
        assert_int_equal(sscanf(line, "%127s", name), 1);
        if (strcmp(name, cur)) {
            loupe_model_close(m);
            m = open_ok(model_path(name));
            snprintf(cur, sizeof cur, "%s", name);
            n_models++;
        }
        bad += !check_fact(m, name, line);
        n_facts++;
    }
    loupe_model_close(m);
    free(text);
    assert_int_equal(bad, 0);
    assert_true(n_models >= 17);
    assert_true(n_facts >= 2000);
}

/* Weight storage: zero-copy when possible, converted copies otherwise. */
static void test_storage(void **state) {
    (void)state;
    loupe_model *m = open_ok(gen_path("models/llama-sharded"));
    assert_int_equal(m->ts.n_maps, 3); /* three shards, each read once */
    assert_int_equal(m->w.layers[1].w_down.type, LP_F32);
    assert_true(in_mappings(m, m->w.layers[1].w_down.data));
    assert_true(in_mappings(m, m->w.lm_head.data));
    assert_ptr_not_equal(m->w.lm_head.data, m->w.tok_embd.data);
    assert_int_equal(m->weight_bytes, 4 * m->n_params);
    loupe_model_close(m);

    m = open_ok(gen_path("models/llama-misaligned"));
    assert_false(in_mappings(m, m->w.layers[0].wq.data)); /* unaligned: copied */
    assert_int_equal((uintptr_t)m->w.layers[0].wq.data % 4, 0);
    assert_false(in_mappings(m, m->w.out_norm_w));
    loupe_model_close(m);

    m = open_ok(gen_path("models/llama-bf16"));
    assert_int_equal(m->w.tok_embd.type, LP_F32); /* BF16 widened at load */
    assert_ptr_equal(m->w.lm_head.data, m->w.tok_embd.data); /* tied */
    assert_int_equal(m->weight_bytes, 4 * m->n_params);
    loupe_model_close(m);

    m = open_ok(gen_path("models/gpt2-f16-untied-noprefix"));
    assert_int_equal(m->w.layers[0].wq.type, LP_F16); /* transposed, still F16 */
    assert_false(in_mappings(m, m->w.layers[0].wq.data));
    assert_int_equal(m->w.tok_embd.type, LP_F16);
    assert_true(in_mappings(m, m->w.tok_embd.data));
    loupe_model_close(m);

    m = open_ok(gen_path("gguf/llama-q8.gguf"));
    /* int8 is packed at load into the model's own aligned buffers */
    assert_int_equal(m->w.layers[0].wq.type, LP_Q8P);
    assert_int_equal(m->w.tok_embd.type, LP_Q8P);
    assert_false(in_mappings(m, m->w.layers[0].wq.data));
    assert_int_equal((uintptr_t)m->w.layers[0].wq.data % 64, 0);
    assert_string_equal(m->source_kind, "gguf");
    /* reported as the Q8_0 it holds, at its packed size (32 rows: 2 groups) */
    const lp_tensor_entry *e = NULL;
    for (int i = 0; i < m->n_tensors; i++)
        if (!strcmp(m->tensors[i].name, "blk.0.attn_q.weight")) e = &m->tensors[i];
    assert_non_null(e);
    assert_int_equal(e->type, LP_Q8);
    char desc[8192];
    loupe_model_describe(m, desc, sizeof desc);
    assert_non_null(strstr(desc, "blk.0.attn_q.weight                      Q8_0  [32, 32]"));
    loupe_model_close(m);

    m = open_ok(gen_path("gguf/gpt2-fused-f16.gguf"));
    const lp_layer *L = &m->w.layers[1];
    assert_int_equal(L->wq.type, LP_F16);
    /* q, k, v are consecutive row blocks of the one fused matrix */
    assert_ptr_equal((const uint16_t *)L->wk.data, (const uint16_t *)L->wq.data + 32 * 32);
    assert_ptr_equal((const uint16_t *)L->wv.data, (const uint16_t *)L->wk.data + 32 * 32);
    assert_ptr_equal(L->bv, L->bq + 64);
    loupe_model_close(m);
}

/* ------------------------------------------------------------ real configs */

typedef struct {
    const char *dir;
    int arch, dim, n_layers, n_heads, n_kv_heads, head_dim, ffn_dim, n_vocab, n_ctx;
    double eps, theta;
    int tied, qkv_bias, act, bos, eos, scaling;
    double factor, low, high;
    int orig_ctx;
} published;

/* From the model cards / config files; Mistral's usable context is its
 * 4096-token sliding window. */
static const published PUBLISHED[] = {
    {"gpt2", LP_ARCH_GPT2, 768, 12, 12, 12, 64, 3072, 50257, 1024, 1e-5, 0, 1, 0,
     LP_ACT_GELU_TANH, 50256, 50256, 0, 0, 0, 0, 0},
    {"TinyLlama-1.1B-Chat-v1.0", LP_ARCH_LLAMA, 2048, 22, 32, 4, 64, 5632, 32000, 2048, 1e-5,
     10000, 0, 0, LP_ACT_SILU, 1, 2, 0, 0, 0, 0, 0},
    {"Qwen2.5-0.5B-Instruct", LP_ARCH_LLAMA, 896, 24, 14, 2, 64, 4864, 151936, 32768, 1e-6,
     1000000, 1, 1, LP_ACT_SILU, 151643, 151645, 0, 0, 0, 0, 0},
    {"Llama-3.2-1B-Instruct", LP_ARCH_LLAMA, 2048, 16, 32, 8, 64, 8192, 128256, 131072, 1e-5,
     500000, 1, 0, LP_ACT_SILU, 128000, 128001, LP_ROPE_SCALING_LLAMA3, 32, 1, 4, 8192},
    {"SmolLM2-135M", LP_ARCH_LLAMA, 576, 30, 9, 3, 64, 1536, 49152, 8192, 1e-5, 100000, 1, 0,
     LP_ACT_SILU, 0, 0, 0, 0, 0, 0, 0},
    {"Mistral-7B-v0.1", LP_ARCH_LLAMA, 4096, 32, 32, 8, 128, 14336, 32000, 4096, 1e-5, 10000,
     0, 0, LP_ACT_SILU, 1, 2, 0, 0, 0, 0, 0},
};

static void check_published(const published *p, const lp_hparams *h) {
    assert_int_equal(h->arch, p->arch);
    assert_int_equal(h->dim, p->dim);
    assert_int_equal(h->n_layers, p->n_layers);
    assert_int_equal(h->n_heads, p->n_heads);
    assert_int_equal(h->n_kv_heads, p->n_kv_heads);
    assert_int_equal(h->head_dim, p->head_dim);
    assert_int_equal(h->ffn_dim, p->ffn_dim);
    assert_int_equal(h->n_vocab, p->n_vocab);
    assert_int_equal(h->n_ctx, p->n_ctx);
    assert_true(h->norm_eps == (float)p->eps);
    assert_int_equal(h->tied_head, p->tied);
    assert_int_equal(h->qkv_bias, p->qkv_bias);
    assert_int_equal(h->act, p->act);
    assert_int_equal(h->bos_id, p->bos);
    assert_int_equal(h->eos_id, p->eos);
    if (p->arch == LP_ARCH_LLAMA) {
        assert_true(h->rope_theta == (float)p->theta);
        assert_int_equal(h->rope_neox, 1);
        assert_int_equal(h->rot_dim, p->head_dim);
        assert_int_equal(h->rope_scaling, p->scaling);
    }
    if (p->scaling == LP_ROPE_SCALING_LLAMA3) {
        assert_true(h->rope_factor == (float)p->factor);
        assert_true(h->rope_low_freq_factor == (float)p->low);
        assert_true(h->rope_high_freq_factor == (float)p->high);
        assert_int_equal(h->rope_orig_ctx, p->orig_ctx);
    }
}

static void test_real_configs(void **state) {
    (void)state;
    DIR *d = opendir(tu_shared("models/hf"));
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        char cfg[4096];
        struct stat st;
        snprintf(cfg, sizeof cfg, "%s/%s/config.json", tu_shared("models/hf"), e->d_name);
        if (e->d_name[0] == '.' || stat(cfg, &st) != 0) continue;
        const published *p = NULL;
        for (size_t i = 0; i < sizeof PUBLISHED / sizeof *PUBLISHED; i++)
            if (!strcmp(PUBLISHED[i].dir, e->d_name)) p = &PUBLISHED[i];
        if (!p) fail_msg("no published values for %s", e->d_name);
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/%s", tu_shared("models/hf"), e->d_name);
        lp_hparams hp;
        loupe_status s = lp_hf_read_config(dir, &hp);
        if (s != LOUPE_OK) print_error("%s: %s\n", dir, loupe_last_error());
        assert_int_equal(s, LOUPE_OK);
        assert_string_equal(hp.model_type,
                            !strcmp(e->d_name, "gpt2") ? "gpt2" :
                            !strncmp(e->d_name, "Qwen", 4) ? "qwen2" :
                            !strncmp(e->d_name, "Mistral", 7) ? "mistral" : "llama");
        check_published(p, &hp);
        n++;
    }
    closedir(d);
    assert_int_equal(n, 6);

    lp_hparams hp;
    assert_int_equal(lp_hf_read_config(tu_shared("models/slm-gpt2-char"), &hp), LOUPE_OK);
    assert_int_equal(hp.act, LP_ACT_GELU_ERF);
    assert_int_equal(hp.ffn_dim, 256); /* n_inner null: 4 * n_embd */
    assert_int_equal(hp.bos_id, -1);
    assert_int_equal(hp.eos_id, -1);
    assert_int_equal(hp.tied_head, 1);
}

/* The scaled Llama 3.2 copy keeps rope_scaling llama3; its inv_freq facts
 * come from numpy's transcription of transformers' formula. The three
 * regimes (kept, smoothed, divided) are all present at head_dim 8. */
static void test_llama3_regimes(void **state) {
    (void)state;
    loupe_model *m = open_ok(gen_path("models/real-Llama-3.2-1B-Instruct"));
    assert_int_equal(m->hp.rope_scaling, LP_ROPE_SCALING_LLAMA3);
    int kept = 0, divided = 0, smoothed = 0;
    for (int i = 0; i < m->hp.rot_dim / 2; i++) {
        double raw = 1.0 / pow(m->hp.rope_theta, 2.0 * i / m->hp.rot_dim);
        double ratio = m->rope_inv_freq[i] / raw;
        if (fabs(ratio - 1) < 1e-6) kept++;
        else if (fabs(ratio * m->hp.rope_factor - 1) < 1e-6) divided++;
        else smoothed++;
    }
    assert_true(kept > 0 && divided > 0 && smoothed > 0);
    loupe_model_close(m);
}

/* ------------------------------------------------------------ broken corpus */

static void test_broken(void **state) {
    (void)state;
    char *text = tu_read_file(gen_path("broken.txt"), NULL);
    assert_non_null(text);
    int n = 0, bad = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char *path = line, *api = strchr(path, '\t');
        assert_non_null(api);
        *api++ = 0;
        char *want = strchr(api, '\t');
        assert_non_null(want);
        *want++ = 0;
        char *sub = strchr(want, '\t');
        assert_non_null(sub);
        *sub++ = 0;
        loupe_status st;
        lp_error_clear();
        if (!strcmp(api, "open")) {
            loupe_model *m = (loupe_model *)1;
            st = loupe_model_open(path, NULL, &m);
            if (st != LOUPE_OK) assert_null(m);
            loupe_model_close(st == LOUPE_OK ? m : NULL);
        } else {
            lp_tensor_set ts;
            memset(&ts, 0, sizeof ts);
            st = !strcmp(api, "st") ? lp_read_safetensors(path, &ts) : lp_read_gguf(path, &ts);
            if (st != LOUPE_OK) { /* a failed read leaves nothing behind */
                assert_int_equal(ts.n, 0);
                assert_int_equal(ts.n_maps, 0);
                assert_int_equal(ts.n_meta, 0);
            }
            lp_tensor_set_free(&ts);
        }
        const char *msg = loupe_last_error();
        int ok = !strcmp(loupe_status_name(st), want) && (!*sub || strstr(msg, sub));
        if (!ok)
            print_error("%s (%s): got %s \"%s\", want %s \"%s\"\n", path, api,
                        loupe_status_name(st), msg, want, sub);
        /* errors name the file they are about */
        if (ok && st != LOUPE_OK) {
            const char *base = strrchr(path, '/') + 1;
            if (!strstr(msg, base)) {
                print_error("%s: message does not name the file: %s\n", path, msg);
                ok = 0;
            }
        }
        bad += !ok;
        n++;
    }
    free(text);
    assert_int_equal(bad, 0);
    assert_true(n >= 20);
}

/* ------------------------------------------------------------ basics */

static void test_dtypes(void **state) {
    (void)state;
    assert_int_equal(lp_dtype_bytes(LP_F32, 10), 40);
    assert_int_equal(lp_dtype_bytes(LP_F16, 10), 20);
    assert_int_equal(lp_dtype_bytes(LP_BF16, 10), 20);
    assert_int_equal(lp_dtype_bytes(LP_Q8, 64), 68);
    assert_string_equal(lp_dtype_name(LP_F32), "F32");
    assert_string_equal(lp_dtype_name(LP_F16), "F16");
    assert_string_equal(lp_dtype_name(LP_BF16), "BF16");
    assert_string_equal(lp_dtype_name(LP_Q8), "Q8_0");
    /* packed: 17 rows of 64 take 2 groups of 16 rows x 2 blocks x 34 bytes */
    assert_int_equal(lp_q8p_bytes(17, 64), 2 * 16 * 2 * 34);
    assert_int_equal(lp_q8p_bytes(16, 64), 16 * 2 * 34);
    assert_string_equal(lp_arch_name(LP_ARCH_GPT2), "gpt2");
    assert_string_equal(lp_arch_name(LP_ARCH_LLAMA), "llama");
}

static void test_mapping(void **state) {
    (void)state;
    lp_mapping map;
    const char *empty = gen_path("empty.bin");
    assert_int_equal(tu_write_file(empty, "", 0), 0);
    assert_int_equal(lp_map_file(empty, &map), LOUPE_OK);
    assert_int_equal(map.size, 0);
    assert_null(map.data);
    assert_string_equal(map.path, empty);
    lp_unmap_file(&map);

    const char *small = gen_path("small.bin");
    assert_int_equal(tu_write_file(small, "hello", 5), 0);
    assert_int_equal(lp_map_file(small, &map), LOUPE_OK);
    assert_int_equal(map.size, 5);
    assert_memory_equal(map.data, "hello", 5);
    lp_unmap_file(&map);
    assert_null(map.path);

    assert_int_equal(lp_map_file(gen_path("nope/none.bin"), &map), LOUPE_ERR_IO);
    assert_non_null(strstr(loupe_last_error(), "nope/none.bin: cannot open: No such file"));
    assert_int_equal(lp_map_file(gen_dir, &map), LOUPE_ERR_IO);
    assert_non_null(strstr(loupe_last_error(), "not a regular file"));
}

/* 1000 tensors in one safetensors file, found by name through the index. */
static void test_many_tensors(void **state) {
    (void)state;
    enum { N = 1000 };
    size_t cap = 80 * N + 64;
    char *hdr = malloc(cap);
    assert_non_null(hdr);
    size_t len = (size_t)snprintf(hdr, cap, "{");
    for (int i = 0; i < N; i++)
        len += (size_t)snprintf(hdr + len, cap - len,
                                "%s\"layer.%d.w\":{\"dtype\":\"F32\",\"shape\":[1],"
                                "\"data_offsets\":[%d,%d]}", i ? "," : "", i, 4 * i, 4 * i + 4);
    len += (size_t)snprintf(hdr + len, cap - len, "}");
    size_t total = 8 + len + 4 * N;
    uint8_t *file = malloc(total);
    assert_non_null(file);
    uint64_t hl = len;
    for (int i = 0; i < 8; i++) file[i] = (uint8_t)(hl >> (8 * i));
    memcpy(file + 8, hdr, len);
    for (int i = 0; i < N; i++) {
        float v = (float)i;
        memcpy(file + 8 + len + 4 * i, &v, 4);
    }
    const char *path = gen_path("many.safetensors");
    assert_int_equal(tu_write_file(path, file, total), 0);
    free(hdr);
    free(file);

    lp_tensor_set ts;
    memset(&ts, 0, sizeof ts);
    assert_int_equal(lp_read_safetensors(path, &ts), LOUPE_OK);
    assert_int_equal(ts.n, N);
    for (int i = N - 1; i >= 0; i--) {
        char name[32];
        snprintf(name, sizeof name, "layer.%d.w", i);
        const lp_tensor_info *t = lp_tensor_find(&ts, name);
        assert_non_null(t);
        assert_string_equal(t->name, name);
        float v;
        memcpy(&v, t->data, 4);
        assert_true(v == (float)i);
        assert_int_equal(t->file_offset, 8 + len + 4 * (uint64_t)i);
    }
    assert_null(lp_tensor_find(&ts, "layer.1000.w"));
    assert_null(lp_tensor_find(&ts, "layer.1.w "));
    /* reading the same file again would duplicate every name */
    assert_int_equal(lp_read_safetensors(path, &ts), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(loupe_last_error(), "appears twice"));
    assert_int_equal(ts.n, N);
    assert_int_equal(ts.n_maps, 1);
    assert_non_null(lp_tensor_find(&ts, "layer.999.w"));
    lp_tensor_set_free(&ts);
    assert_int_equal(ts.n, 0);
}

static void test_gguf_metadata(void **state) {
    (void)state;
    lp_tensor_set ts;
    memset(&ts, 0, sizeof ts);
    assert_int_equal(lp_read_gguf(tu_shared("models/stories260K/stories260K.gguf"), &ts),
                     LOUPE_OK);
    assert_int_equal(ts.gguf_version, 3);
    assert_int_equal(ts.n, 48);
    assert_int_equal(ts.n_meta, 19);
    const lp_meta *m = lp_meta_find(&ts, "llama.block_count");
    assert_non_null(m);
    assert_int_equal(m->type, LP_META_U32);
    assert_int_equal(m->v.u, 5);
    m = lp_meta_find(&ts, "llama.attention.layer_norm_rms_epsilon");
    assert_int_equal(m->type, LP_META_F32);
    assert_true((float)m->v.f == 1e-5f);
    m = lp_meta_find(&ts, "general.architecture");
    assert_int_equal(m->type, LP_META_STRING);
    assert_int_equal(m->v.str.len, 5);
    assert_memory_equal(m->v.str.s, "llama", 5);
    m = lp_meta_find(&ts, "tokenizer.ggml.tokens");
    assert_int_equal(m->type, LP_META_ARRAY);
    assert_int_equal(m->arr_type, LP_META_STRING);
    assert_int_equal(m->arr_n, 512);
    assert_int_equal(m->arr_lens[1], 3);
    assert_memory_equal(m->arr_strs[1], "<s>", 3);
    assert_int_equal(m->arr_lens[3], 6);
    assert_memory_equal(m->arr_strs[3], "<0x00>", 6);
    m = lp_meta_find(&ts, "tokenizer.ggml.scores");
    assert_int_equal(m->arr_type, LP_META_F32);
    assert_null(m->arr_strs);
    assert_non_null(m->arr_data);
    assert_null(lp_meta_find(&ts, "llama.nothing"));
    const lp_tensor_info *t = lp_tensor_find(&ts, "blk.0.attn_k.weight");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->shape[0], 32); /* ne = [64, 32] reversed */
    assert_int_equal(t->shape[1], 64);
    assert_int_equal(t->type, LP_F32);
    assert_int_equal(t->nbytes, 32 * 64 * 4);
    assert_int_equal(t->file_offset % 32, 0);
    lp_tensor_set_free(&ts);

    /* a vocabulary-only file: metadata and no tensors */
    memset(&ts, 0, sizeof ts);
    assert_int_equal(lp_read_gguf(tu_shared("models/vocab/ggml-vocab-gpt-2.gguf"), &ts), LOUPE_OK);
    assert_int_equal(ts.n, 0);
    m = lp_meta_find(&ts, "tokenizer.ggml.merges");
    assert_int_equal(m->arr_n, 50000);
    assert_int_equal(m->arr_lens[0], 4);
    assert_memory_equal(m->arr_strs[0], "\xc4\xa0 t", 4);
    lp_tensor_set_free(&ts);
}

/* ------------------------------------------------------------ int8 binding */

/* An empty model to call the binders on directly (closed as usual). */
static loupe_model *shell_model(void) {
    loupe_model *m = calloc(1, sizeof *m);
    assert_non_null(m);
    m->load_threads = 2;
    return m;
}

/* rows x cols/32 Q8_0 blocks of a fixed pseudo-random sequence. */
static lp_block_q8 *random_q8(int rows, int cols, uint32_t seed) {
    size_t n = (size_t)rows * (cols / 32);
    lp_block_q8 *b = malloc(n * sizeof *b);
    assert_non_null(b);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        b[i].d = lp_f32_to_f16(0.001f * (float)(1 + (seed >> 16) % 1000));
        for (int j = 0; j < 32; j++) {
            seed = seed * 1103515245u + 12345u;
            b[i].qs[j] = (int8_t)((int)((seed >> 16) % 255) - 127);
        }
    }
    return b;
}

static lp_tensor_info int8_info(const void *data, lp_dtype type, int64_t rows, int64_t cols,
                                uint64_t nbytes) {
    lp_tensor_info t;
    memset(&t, 0, sizeof t);
    t.name = (char *)"w";
    t.file = "memory";
    t.type = type;
    t.n_dims = 2;
    t.shape[0] = rows;
    t.shape[1] = cols;
    t.data = data;
    t.nbytes = nbytes;
    return t;
}

static lp_tensor_info q8_rows_info(const void *data, int rows, int cols) {
    return int8_info(data, LP_Q8, rows, cols, (uint64_t)rows * (cols / 32) * sizeof(lp_block_q8));
}

/* Q8_0 rows, aligned or not, become packed copies; the heap source is left
 * alone (page release only touches file mappings). */
static void test_bind_q8_rows(void **state) {
    (void)state;
    const int R = 37, C = 96;
    lp_block_q8 *src = random_q8(R, C, 1);
    size_t bytes = (size_t)R * (C / 32) * sizeof *src;
    void *copy = malloc(bytes);
    memcpy(copy, src, bytes);
    loupe_model *m = shell_model();
    lp_mat w;
    lp_tensor_info t = q8_rows_info(src, R, C);
    assert_int_equal(lp_bind_mat(m, &t, R, C, 0, &w), LOUPE_OK);
    assert_int_equal(w.type, LP_Q8P);
    assert_int_equal(w.rows, R);
    assert_int_equal((uintptr_t)w.data % 64, 0);
    expect_packed(w.data, src, R, C);
    assert_memory_equal(src, copy, bytes);
    assert_int_equal(m->n_tensors, 1);
    assert_int_equal(m->tensors[0].type, LP_Q8);
    assert_int_equal(m->weight_bytes, lp_q8p_bytes(R, C));
    assert_int_equal(m->n_params, R * C);

    /* at an odd address: through an aligned copy */
    uint8_t *odd = malloc(bytes + 1);
    memcpy(odd + 1, src, bytes);
    t = q8_rows_info(odd + 1, R, C);
    assert_int_equal(lp_bind_mat(m, &t, R, C, 0, &w), LOUPE_OK);
    expect_packed(w.data, src, R, C);

    /* refused: transposed, rows not whole blocks */
    t = q8_rows_info(src, C, R);
    assert_int_equal(lp_bind_mat(m, &t, R, C, 1, &w), LOUPE_ERR_UNSUPPORTED);
    assert_non_null(strstr(loupe_last_error(), "memory: w: a Q8_0 tensor cannot be transposed"));
    t = q8_rows_info(src, 2 * R, 48);
    assert_int_equal(lp_bind_mat(m, &t, 2 * R, 48, 0, &w), LOUPE_ERR_SHAPE);
    assert_non_null(strstr(loupe_last_error(), "multiple of 32, got 48"));
    loupe_model_close(m);
    free(odd);
    free(copy);
    free(src);
}

/* A matrix large enough to be packed by two threads, same bytes. */
static void test_bind_q8_threads(void **state) {
    (void)state;
    const int R = 4001, C = 1024; /* 4.4 MB of Q8_0 */
    lp_block_q8 *src = random_q8(R, C, 2);
    loupe_model *m = shell_model();
    lp_mat w;
    lp_tensor_info t = q8_rows_info(src, R, C);
    assert_int_equal(lp_bind_mat(m, &t, R, C, 0, &w), LOUPE_OK);
    expect_packed(w.data, src, R, C);
    loupe_model_close(m);
    free(src);
}

/* Already packed sources: used in place when 64-byte aligned, copied when
 * not, refused when the size is not the packed size. */
static void test_bind_q8p(void **state) {
    (void)state;
    const int R = 37, C = 96;
    lp_block_q8 *src = random_q8(R, C, 3);
    loupe_model *m = shell_model();
    lp_mat packed, w;
    lp_tensor_info t = q8_rows_info(src, R, C);
    assert_int_equal(lp_bind_mat(m, &t, R, C, 0, &packed), LOUPE_OK);
    size_t bytes = lp_q8p_bytes(R, C);
    t = int8_info(packed.data, LP_Q8P, R, C, bytes);
    assert_int_equal(lp_bind_mat(m, &t, R, C, 0, &w), LOUPE_OK);
    assert_int_equal(w.type, LP_Q8P);
    assert_ptr_equal(w.data, packed.data); /* zero-copy */
    assert_int_equal(m->tensors[1].type, LP_Q8);

    uint8_t *buf = aligned_alloc(64, (bytes + 127) / 64 * 64);
    memcpy(buf + 32, packed.data, bytes);
    t = int8_info(buf + 32, LP_Q8P, R, C, bytes);
    assert_int_equal(lp_bind_mat(m, &t, R, C, 0, &w), LOUPE_OK);
    assert_ptr_not_equal(w.data, buf + 32);
    assert_int_equal((uintptr_t)w.data % 64, 0);
    expect_packed(w.data, src, R, C);

    t = int8_info(packed.data, LP_Q8P, R, C, bytes - 34);
    assert_int_equal(lp_bind_mat(m, &t, R, C, 0, &w), LOUPE_ERR_SHAPE);
    assert_non_null(strstr(loupe_last_error(), "a packed int8 37 x 96 matrix takes"));
    /* and a fused one split inside a group, which unpacks rows of it */
    const int parts[2] = {20, 17};
    lp_mat two[2];
    assert_int_equal(lp_bind_mat_parts(m, &t, 2, parts, C, 0, two), LOUPE_ERR_SHAPE);
    loupe_model_close(m);
    free(buf);
    free(src);
}

/* Fused matrices: split at multiples of 16 rows they share one packed
 * buffer; split inside a group, every part is packed on its own, from Q8_0
 * rows or from an already packed matrix. */
static void test_bind_q8_parts(void **state) {
    (void)state;
    const int C = 64, nb = C / 32;
    lp_block_q8 *src = random_q8(37, C, 4);
    loupe_model *m = shell_model();
    lp_mat part[3], whole;

    const int even[3] = {16, 16, 5};
    lp_tensor_info t = q8_rows_info(src, 37, C);
    assert_int_equal(lp_bind_mat_parts(m, &t, 3, even, C, 0, part), LOUPE_OK);
    size_t group = LP_Q8P_GROUP_BYTES(C);
    assert_ptr_equal(part[1].data, (const uint8_t *)part[0].data + group);
    assert_ptr_equal(part[2].data, (const uint8_t *)part[0].data + 2 * group);
    for (int i = 0, r0 = 0; i < 3; r0 += even[i++]) {
        assert_int_equal(part[i].rows, even[i]);
        expect_packed(part[i].data, src + r0 * nb, even[i], C);
    }
    assert_int_equal(m->n_tensors, 1);

    const int odd[3] = {21, 8, 8};
    assert_int_equal(lp_bind_mat_parts(m, &t, 3, odd, C, 0, part), LOUPE_OK);
    for (int i = 0, r0 = 0; i < 3; r0 += odd[i++]) {
        assert_int_equal(part[i].type, LP_Q8P);
        assert_int_equal(part[i].rows, odd[i]);
        assert_int_equal((uintptr_t)part[i].data % 64, 0);
        expect_packed(part[i].data, src + r0 * nb, odd[i], C);
    }
    assert_int_equal(m->n_tensors, 2);
    assert_int_equal(m->weight_bytes - lp_q8p_bytes(37, C),
                     lp_q8p_bytes(21, C) + 2 * lp_q8p_bytes(8, C));

    /* the same from a packed source; and lp_mat_rows will not split it there */
    assert_int_equal(lp_bind_mat(m, &t, 37, C, 0, &whole), LOUPE_OK);
    lp_tensor_info tp = int8_info(whole.data, LP_Q8P, 37, C, lp_q8p_bytes(37, C));
    assert_int_equal(lp_bind_mat_parts(m, &tp, 3, odd, C, 0, part), LOUPE_OK);
    for (int i = 0, r0 = 0; i < 3; r0 += odd[i++]) expect_packed(part[i].data, src + r0 * nb, odd[i], C);
    assert_null(lp_mat_rows(&whole, 21, 8).data);
    assert_ptr_equal(lp_mat_rows(&whole, 32, 5).data, (const uint8_t *)whole.data + 2 * group);

    /* the whole tensor must have the rows the parts add up to */
    const int bad[3] = {21, 8, 9};
    assert_int_equal(lp_bind_mat_parts(m, &t, 3, bad, C, 0, part), LOUPE_ERR_SHAPE);
    loupe_model_close(m);
    free(src);
}

/* ------------------------------------------------------------ int8 models */

static char q8_dir[4096]; /* tests/ref/q8_models.py output + stories Q8_0 */

static const char *q8_path(const char *name) {
    static char buf[4][4096];
    static int next;
    char *b = buf[next++ % 4];
    int n = snprintf(b, sizeof buf[0], "%s/%s", q8_dir, name);
    assert_true(n > 0 && n < (int)sizeof buf[0]);
    return b;
}

static void make_q8_models(void) {
    if (q8_dir[0]) return;
    snprintf(q8_dir, sizeof q8_dir, "%s", gen_path("q8"));
    const char *py = tu_python(), *np = tu_src("tests/ref/gguf_np.py");
    assert_int_equal(tu_system("LOUPE_SHARED='%s' '%s' '%s' '%s'", tu_shared(""), py,
                               tu_src("tests/ref/q8_models.py"), q8_dir), 0);
    assert_int_equal(tu_system("'%s' '%s' q8 '%s' '%s'", py, np,
                               tu_shared("models/stories260K/stories260K.gguf"),
                               q8_path("stories.gguf")), 0);
    assert_int_equal(tu_system("'%s' '%s' deq '%s' '%s'", py, np, q8_path("stories.gguf"),
                               q8_path("stories-deq.gguf")), 0);
}

/* Resident kB of the mapping of this process that holds addr (smaps). */
static long mapping_rss_kb(const void *addr) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[512];
    int inside = 0;
    long rss = -1;
    while (rss < 0 && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char perm;
        if (sscanf(line, "%lx-%lx %c", &lo, &hi, &perm) == 3) /* a mapping's header */
            inside = (uintptr_t)addr >= lo && (uintptr_t)addr < hi;
        else if (inside)
            sscanf(line, "Rss: %ld kB", &rss);
    }
    fclose(f);
    return rss;
}

/* After packing, the Q8_0 bytes in the file mapping are no longer resident
 * (one copy of the weights, not two): the mapping keeps at most the rest
 * of the file, plus 256 kB for pages the kernel maps around a read. */
static void test_q8_pages_released(void **state) {
    (void)state;
    make_q8_models();
    loupe_model *m = open_ok(q8_path("wide.gguf"));
    const lp_mapping *map = &m->ts.maps[0];
    long rss = mapping_rss_kb(map->data);
    if (rss < 0) {
        loupe_model_close(m);
        skip();
    }
    uint64_t q8 = 0;
    for (int i = 0; i < m->ts.n; i++)
        if (m->ts.t[i].type == LP_Q8) q8 += m->ts.t[i].nbytes;
    assert_true(q8 > 9u << 20);
    uint64_t bound = map->size - q8 + (256u << 10);
    print_message("wide.gguf: %zu bytes mapped, %llu of them Q8_0; resident %ld kB (bound %llu kB)\n",
                  map->size, (unsigned long long)q8, rss, (unsigned long long)(bound / 1024));
    assert_true((uint64_t)rss * 1024 <= bound);
    assert_int_equal(m->w.tok_embd.type, LP_Q8P);
    loupe_model_close(m);
}

#define Q8_N_TOK 20

/* (Q8_N_TOK, V) logits of the model at path: one batched evaluation, or
 * the tokens one at a time (decode). */
static float *logits_of(const char *path, const int32_t *ids, int *n_vocab, int one_at_a_time) {
    loupe_model *m = open_ok(path);
    loupe_session *s = NULL;
    loupe_session_params sp = {.n_ctx = 64, .n_threads = 2};
    assert_int_equal(loupe_session_new(m, &sp, &s), LOUPE_OK);
    *n_vocab = m->hp.n_vocab;
    float *lg = malloc(sizeof(float) * Q8_N_TOK * *n_vocab);
    assert_non_null(lg);
    if (one_at_a_time)
        for (int i = 0; i < Q8_N_TOK; i++)
            assert_int_equal(loupe_eval(s, ids + i, 1, lg + (size_t)i * *n_vocab, 0), LOUPE_OK);
    else
        assert_int_equal(loupe_eval(s, ids, Q8_N_TOK, lg, 1), LOUPE_OK);
    loupe_session_free(s);
    loupe_model_close(m);
    return lg;
}

/* q8_forward.py's (Q8_N_TOK, n_vocab) logits for deq (an F32 GGUF), with
 * its flags; ties (optional) gets the per-position distance of the
 * activations to a rounding tie. */
static float *reference_of(const char *deq, const char *idlist, const char *flags, size_t n,
                           float **ties) {
    char out[4200], tie_path[4200]; /* q8_path's ring may hold deq */
    snprintf(out, sizeof out, "%s/ref.f32", q8_dir);
    snprintf(tie_path, sizeof tie_path, "%s/ties.f32", q8_dir);
    assert_int_equal(tu_system("'%s' '%s' '%s' '%s' %s %s --ties='%s'", tu_python(),
                               tu_src("tests/ref/q8_forward.py"), deq, out, idlist, flags,
                               tie_path), 0);
    size_t len = 0;
    float *ref = (float *)tu_read_file(out, &len);
    assert_non_null(ref);
    assert_int_equal(len, n * sizeof(float));
    if (ties) {
        *ties = (float *)tu_read_file(tie_path, &len);
        assert_non_null(*ties);
        assert_int_equal(len, Q8_N_TOK * sizeof(float));
    }
    return ref;
}

static double rms_diff(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    return sqrt(s / (double)n);
}

/* A tie closer than this (in steps of the activation's quantizer) may round
 * either way between two correct f32 engines; flips seen here sat at 4e-6
 * and none below 1e-4 would need a relative error of 1e-6 in activations. */
#define Q8_TIE_MARGIN 1e-4

/* One GGUF Q8_0 model against q8_forward.py on the same weights in F32:
 *  - exact (1e-4 of the logit scale), evaluated as one batch and token by
 *    token, at every position before the first
 *    near-tie (a rounding flip there moves all later positions through
 *    attention by a quantization step: legitimately, and not by a bound
 *    worth asserting), and at least 3 such positions;
 *  - over all positions, loupe int8 minus loupe F32 has the RMS of the
 *    reference's int8 minus exact (the same rounding noise; a flip changes
 *    one rounding of thousands), within 20%. */
static void check_q8_model(const char *q8, const char *deq, const char *flags) {
    int32_t ids[Q8_N_TOK];
    char idlist[256] = "";
    for (int i = 0; i < Q8_N_TOK; i++) {
        ids[i] = i ? (i * 37 + 11) % 512 : 1;
        snprintf(idlist + strlen(idlist), sizeof idlist - strlen(idlist), "%s%d", i ? "," : "", ids[i]);
    }
    int V, V2;
    float *got = logits_of(q8, ids, &V, 0), *got_f32 = logits_of(deq, ids, &V2, 0);
    float *dec = logits_of(q8, ids, &V2, 1);
    assert_int_equal(V, V2);
    size_t n = (size_t)Q8_N_TOK * V;
    char exact_flags[64];
    snprintf(exact_flags, sizeof exact_flags, "%s --exact", flags);
    float *ties = NULL;
    float *ref = reference_of(deq, idlist, flags, n, &ties);
    float *ref_exact = reference_of(deq, idlist, exact_flags, n, NULL);
    double scale = 1, d_clean = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs((double)ref[i]));
    int clean = 0;
    while (clean < Q8_N_TOK && ties[clean] >= Q8_TIE_MARGIN) clean++;
    for (size_t i = 0; i < (size_t)clean * V; i++)
        d_clean = fmax(d_clean, fmax(fabs((double)got[i] - ref[i]), fabs((double)dec[i] - ref[i])));
    double rms = rms_diff(got, got_f32, n), rms_ref = rms_diff(ref, ref_exact, n);
    print_message("%s: %d positions before a near-tie: int8 (batch, decode) vs int8 reference "
                  "%.3g (scale %.3g); "
                  "int8 - F32 RMS %.4g, reference %.4g\n", strrchr(q8, '/') + 1, clean, d_clean,
                  scale, rms, rms_ref);
    assert_true(clean >= 3);
    assert_true(d_clean <= 1e-4 * scale);
    assert_true(rms_ref > 1e-4 * scale); /* activations really are quantized */
    assert_true(rms >= 0.8 * rms_ref && rms <= 1.2 * rms_ref);
    free(got);
    free(got_f32);
    free(dec);
    free(ref);
    free(ref_exact);
    free(ties);
}

static void test_q8_logits(void **state) {
    (void)state;
    make_q8_models();
    /* real weights; ffn_gate / ffn_up have 172 rows (10 groups + 12) */
    check_q8_model(q8_path("stories.gguf"), q8_path("stories-deq.gguf"), "");
    /* 517 output rows, k / v of 8 rows, Q8_0 token embedding */
    check_q8_model(q8_path("odd.gguf"), q8_path("odd-deq.gguf"), "");
    /* the tied head is the Q8_0 embedding, through the int8 matmul */
    check_q8_model(q8_path("odd-tied.gguf"), q8_path("odd-tied-deq.gguf"), "--int8-head");
}

/* q|k|v fused and split inside a group of 16 rows: the parts are packed
 * apart, and the model computes exactly what the unfused file does. */
static void test_q8_fused_split(void **state) {
    (void)state;
    make_q8_models();
    loupe_model *m = open_ok(q8_path("odd-fused.gguf"));
    const lp_layer *L = &m->w.layers[1];
    assert_int_equal(L->wq.rows, 64);
    assert_int_equal(L->wk.rows, 8);
    assert_int_equal(L->wv.rows, 8);
    assert_int_equal(L->wv.type, LP_Q8P);
    /* wq's 4 groups are whole; k and v each got a group of their own */
    assert_ptr_not_equal(L->wk.data, L->wv.data);
    assert_int_equal((uintptr_t)L->wk.data % 64, 0);
    assert_int_equal((uintptr_t)L->wv.data % 64, 0);
    loupe_model *u = open_ok(q8_path("odd.gguf"));
    const lp_layer *U = &u->w.layers[1];
    for (int r = 0; r < 8; r++)
        for (int c = 0; c < 64; c++) {
            assert_true(mat_at(&L->wk, r, c) == mat_at(&U->wk, r, c));
            assert_true(mat_at(&L->wv, r, c) == mat_at(&U->wv, r, c));
        }
    loupe_model_close(u);
    loupe_model_close(m);
    int32_t ids[Q8_N_TOK];
    for (int i = 0; i < Q8_N_TOK; i++) ids[i] = (i * 53 + 7) % 517;
    int V;
    float *a = logits_of(q8_path("odd-fused.gguf"), ids, &V, 0);
    float *b = logits_of(q8_path("odd.gguf"), ids, &V, 0);
    assert_memory_equal(a, b, sizeof(float) * Q8_N_TOK * V);
    free(a);
    free(b);
}

/* loupe_model_open argument handling. */
static void test_open_args(void **state) {
    (void)state;
    loupe_model *m = (loupe_model *)1;
    assert_int_equal(loupe_model_open(NULL, NULL, &m), LOUPE_ERR_ARG);
    assert_null(m);
    assert_int_equal(loupe_model_open("x", NULL, NULL), LOUPE_ERR_ARG);
    assert_int_equal(loupe_model_open(gen_path("models/no-such-model"), NULL, &m), LOUPE_ERR_IO);
    assert_non_null(strstr(loupe_last_error(), "no-such-model: cannot open"));
    /* the .loupe signature goes to the .loupe reader whatever the name */
    const char *fake = gen_path("fake-signature.bin");
    assert_int_equal(tu_write_file(fake, "LOUPE\r\n\x1a\0\0\0\0", 12), 0);
    assert_int_not_equal(loupe_model_open(fake, NULL, &m), LOUPE_OK);
    assert_null(m);
    assert_null(strstr(loupe_last_error(), "not a GGUF"));
    assert_non_null(strstr(loupe_last_error(), "fake-signature.bin"));
    loupe_model_close(NULL);
    loupe_model_info info;
    loupe_model_get_info(NULL, &info);
    assert_int_equal(info.n_vocab, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtypes),
        cmocka_unit_test(test_mapping),
        cmocka_unit_test(test_many_tensors),
        cmocka_unit_test(test_gguf_metadata),
        cmocka_unit_test(test_open_args),
        cmocka_unit_test(test_stories260k),
        cmocka_unit_test(test_expected_facts),
        cmocka_unit_test(test_storage),
        cmocka_unit_test(test_real_configs),
        cmocka_unit_test(test_llama3_regimes),
        cmocka_unit_test(test_broken),
        cmocka_unit_test(test_bind_q8_rows),
        cmocka_unit_test(test_bind_q8_threads),
        cmocka_unit_test(test_bind_q8p),
        cmocka_unit_test(test_bind_q8_parts),
        cmocka_unit_test(test_q8_pages_released),
        cmocka_unit_test(test_q8_logits),
        cmocka_unit_test(test_q8_fused_split),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
