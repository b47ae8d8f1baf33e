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

static float mat_at(const lp_mat *w, int r, int c) {
    assert_true(r >= 0 && r < w->rows && c >= 0 && c < w->cols);
    size_t i = (size_t)r * w->cols + c;
    switch (w->type) {
    case LP_F32: return ((const float *)w->data)[i];
    case LP_F16: return lp_f16_to_f32(((const uint16_t *)w->data)[i]);
    case LP_Q8: {
        const lp_block_q8 *b = (const lp_block_q8 *)w->data + (size_t)r * (w->cols / 32) + c / 32;
        return lp_f16_to_f32(b->d) * b->qs[c % 32];
    }
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
    assert_int_equal(m->w.layers[0].wq.type, LP_Q8);
    assert_true(in_mappings(m, m->w.layers[0].wq.data));
    assert_string_equal(m->source_kind, "gguf");
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
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
