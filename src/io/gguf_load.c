/*
 * gguf_load.c — builds a model from a GGUF file (architectures llama,
 * qwen2, gpt2). Hyper-parameters come from "<arch>.*" metadata, the
 * vocabulary size from token_embd's rows, the tokenizer from the
 * tokenizer.ggml.* metadata. Weights stay in the mapping where they can.
 *
 * llama.cpp's converter permutes the rows of Q and K of llama models so
 * that RoPE rotates interleaved pairs (2i, 2i+1); we keep the weights and
 * rotate interleaved pairs (rope_neox = 0). qwen2 is converted without the
 * permutation and keeps HF's half-split pairs.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../error.h"
#include "../model.h"

/* ------------------------------------------------------------ metadata */

typedef struct {
    loupe_model *m;
    const char *path;
    const char *arch; /* general.architecture */
} lp_gl_ctx;

static const lp_meta *lp_gl_meta(const lp_gl_ctx *c, const char *suffix, char *key, size_t cap) {
    snprintf(key, cap, "%s.%s", c->arch, suffix);
    return lp_meta_find(&c->m->ts, key);
}

/* Integer metadata of any integer type, range-checked to int. */
static loupe_status lp_gl_int(const lp_gl_ctx *c, const char *suffix, int required, int dflt,
                              int *out) {
    char key[256];
    const lp_meta *v = lp_gl_meta(c, suffix, key, sizeof key);
    if (!v) {
        if (required)
            return lp_fail(LOUPE_ERR_MISSING, "%s: metadata %s is missing", c->path, key);
        *out = dflt;
        return LOUPE_OK;
    }
    int64_t x;
    switch (v->type) {
    case LP_META_U8: case LP_META_U16: case LP_META_U32: case LP_META_U64:
        x = v->v.u > INT32_MAX ? INT64_MAX : (int64_t)v->v.u;
        break;
    case LP_META_I8: case LP_META_I16: case LP_META_I32: case LP_META_I64:
        x = v->v.i;
        break;
    default:
        return lp_fail(LOUPE_ERR_FORMAT, "%s: metadata %s must be an integer", c->path, key);
    }
    if (x < INT32_MIN || x > INT32_MAX)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: metadata %s = %lld does not fit 32 bits", c->path,
                       key, (long long)x);
    *out = (int)x;
    return LOUPE_OK;
}

static loupe_status lp_gl_float(const lp_gl_ctx *c, const char *suffix, double dflt,
                                float *out) {
    char key[256];
    const lp_meta *v = lp_gl_meta(c, suffix, key, sizeof key);
    if (!v) {
        *out = (float)dflt;
        return LOUPE_OK;
    }
    if (v->type != LP_META_F32 && v->type != LP_META_F64)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: metadata %s must be a float", c->path, key);
    if (!isfinite(v->v.f))
        return lp_fail(LOUPE_ERR_FORMAT, "%s: metadata %s is not finite", c->path, key);
    *out = (float)v->v.f;
    return LOUPE_OK;
}

/* A token id from tokenizer.ggml.*: -1 when absent or "none" (~0u). */
static int lp_gl_token_id(const lp_gl_ctx *c, const char *key) {
    const lp_meta *v = lp_meta_find(&c->m->ts, key);
    if (!v) return -1;
    if (v->type == LP_META_U32 || v->type == LP_META_U64 || v->type == LP_META_U16)
        return v->v.u >= 0x7fffffffu ? -1 : (int)v->v.u;
    if (v->type == LP_META_I32 || v->type == LP_META_I64)
        return v->v.i < 0 || v->v.i > INT32_MAX ? -1 : (int)v->v.i;
    return -1;
}

/* <arch>.rope.scaling.type / .factor, or the older rope.scale_linear. */
static loupe_status lp_gl_rope_scaling(const lp_gl_ctx *c, lp_hparams *hp) {
    char key[256];
    const lp_meta *t = lp_gl_meta(c, "rope.scaling.type", key, sizeof key);
    if (t) {
        if (t->type != LP_META_STRING)
            return lp_fail(LOUPE_ERR_FORMAT, "%s: metadata %s must be a string", c->path, key);
        int n = (int)(t->v.str.len > 64 ? 64 : t->v.str.len);
        if (n == 4 && memcmp(t->v.str.s, "none", 4) == 0) return LOUPE_OK;
        if (n != 6 || memcmp(t->v.str.s, "linear", 6) != 0)
            return lp_fail(LOUPE_ERR_UNSUPPORTED,
                           "%s: rope scaling type '%.*s' is not supported (none, linear)",
                           c->path, n, t->v.str.s);
        hp->rope_scaling = LP_ROPE_SCALING_LINEAR;
        return lp_gl_float(c, "rope.scaling.factor", 1.0, &hp->rope_factor);
    }
    float lin = 0;
    LP_TRY(lp_gl_float(c, "rope.scale_linear", 0.0, &lin));
    if (lin != 0 && lin != 1) {
        hp->rope_scaling = LP_ROPE_SCALING_LINEAR;
        hp->rope_factor = lin;
    }
    return LOUPE_OK;
}

/* ------------------------------------------------------------ hparams */

static loupe_status lp_gl_hparams(lp_gl_ctx *c) {
    loupe_model *m = c->m;
    lp_hparams *hp = &m->hp;
    int gpt2 = strcmp(c->arch, "gpt2") == 0;
    snprintf(hp->model_type, sizeof hp->model_type, "%.31s", c->arch);
    hp->arch = gpt2 ? LP_ARCH_GPT2 : LP_ARCH_LLAMA;
    hp->act = gpt2 ? LP_ACT_GELU_TANH : LP_ACT_SILU;
    hp->rope_neox = strcmp(c->arch, "qwen2") == 0;
    LP_TRY(lp_gl_int(c, "context_length", 1, 0, &hp->n_ctx));
    LP_TRY(lp_gl_int(c, "embedding_length", 1, 0, &hp->dim));
    LP_TRY(lp_gl_int(c, "block_count", 1, 0, &hp->n_layers));
    /* default 4 * dim; an absurd dim (rejected by validation) must not overflow it */
    int ffn_default = hp->dim > 0 && hp->dim <= (1 << 20) ? 4 * hp->dim : 0;
    LP_TRY(lp_gl_int(c, "feed_forward_length", !gpt2, ffn_default, &hp->ffn_dim));
    LP_TRY(lp_gl_int(c, "attention.head_count", 1, 0, &hp->n_heads));
    LP_TRY(lp_gl_int(c, "attention.head_count_kv", 0, hp->n_heads, &hp->n_kv_heads));
    LP_TRY(lp_gl_int(c, "attention.key_length", 0, 0, &hp->head_dim));
    LP_TRY(lp_gl_float(c, gpt2 ? "attention.layer_norm_epsilon"
                               : "attention.layer_norm_rms_epsilon", 1e-5, &hp->norm_eps));
    LP_TRY(lp_gl_float(c, "rope.freq_base", 10000.0, &hp->rope_theta));
    if (!gpt2) LP_TRY(lp_gl_int(c, "rope.dimension_count", 0, 0, &hp->rot_dim));
    LP_TRY(lp_gl_rope_scaling(c, hp));
    hp->bos_id = lp_gl_token_id(c, "tokenizer.ggml.bos_token_id");
    hp->eos_id = lp_gl_token_id(c, "tokenizer.ggml.eos_token_id");
    /* the vocabulary is what the embedding holds */
    const lp_tensor_info *e = lp_tensor_find(&m->ts, "token_embd.weight");
    if (!e)
        return lp_fail(LOUPE_ERR_MISSING, "%s: tensor token_embd.weight is missing", c->path);
    if (e->n_dims != 2 || e->shape[0] < 1 || e->shape[0] > INT32_MAX)
        return lp_fail(LOUPE_ERR_SHAPE, "%s: token_embd.weight must be 2-D (vocab, dim)",
                       c->path);
    hp->n_vocab = (int)e->shape[0];
    hp->tied_head = lp_tensor_find(&m->ts, "output.weight") == NULL;
    hp->qkv_bias = !gpt2 && lp_tensor_find(&m->ts, "blk.0.attn_q.bias") != NULL;
    loupe_status st = lp_hparams_validate(m);
    if (st != LOUPE_OK) lp_error_prefix("%s", c->path);
    return st;
}

/* Llama 3 files carry rope_freqs.weight: per-pair divisors of inv_freq. */
static loupe_status lp_gl_rope_freqs(lp_gl_ctx *c) {
    loupe_model *m = c->m;
    const lp_tensor_info *t = lp_tensor_find(&m->ts, "rope_freqs.weight");
    if (!t || m->hp.arch != LP_ARCH_LLAMA) return LOUPE_OK;
    const float *ff;
    int64_t half = m->hp.rot_dim / 2;
    LP_TRY(lp_check_shape(m, t, 1, &half));
    LP_TRY(lp_bind_vec(m, t, half, &ff));
    for (int64_t i = 0; i < half; i++) {
        if (!(ff[i] > 0))
            return lp_fail(LOUPE_ERR_FORMAT, "%s: rope_freqs.weight[%lld] = %g is not positive",
                           c->path, (long long)i, ff[i]);
        m->rope_inv_freq[i] /= ff[i];
    }
    return LOUPE_OK;
}

/* ------------------------------------------------------------ binding */

static const lp_tensor_info *lp_gl_get(const lp_gl_ctx *c, const char *fmt, int l) {
    char name[256];
    snprintf(name, sizeof name, fmt, l);
    return lp_tensor_find(&c->m->ts, name);
}

static loupe_status lp_gl_missing(const lp_gl_ctx *c, const char *fmt, int l) {
    char name[256];
    snprintf(name, sizeof name, fmt, l);
    return lp_fail(LOUPE_ERR_MISSING, "%s: tensor %s is missing", c->path, name);
}

static loupe_status lp_gl_mat(const lp_gl_ctx *c, const char *fmt, int l, int rows, int cols,
                              lp_mat *out) {
    const lp_tensor_info *t = lp_gl_get(c, fmt, l);
    if (!t) return lp_gl_missing(c, fmt, l);
    return lp_bind_mat(c->m, t, rows, cols, 0, out);
}

/* A vector; optional ones are NULL when absent. */
static loupe_status lp_gl_vec(const lp_gl_ctx *c, const char *fmt, int l, int n, int optional,
                              const float **out) {
    const lp_tensor_info *t = lp_gl_get(c, fmt, l);
    *out = NULL;
    if (!t) return optional ? LOUPE_OK : lp_gl_missing(c, fmt, l);
    int64_t want = n;
    LP_TRY(lp_check_shape(c->m, t, 1, &want));
    return lp_bind_vec(c->m, t, n, out);
}

/* q, k, v: separate attn_q/k/v, or a fused attn_qkv split by rows. */
static loupe_status lp_gl_qkv(const lp_gl_ctx *c, int l, lp_layer *L) {
    const lp_hparams *hp = &c->m->hp;
    int C = hp->dim, Q = hp->n_heads * hp->head_dim, KV = hp->n_kv_heads * hp->head_dim;
    int opt = !hp->qkv_bias && hp->arch != LP_ARCH_GPT2;
    const lp_tensor_info *fused = lp_gl_get(c, "blk.%d.attn_qkv.weight", l);
    if (fused) {
        lp_mat qkv[3];
        const float *b;
        const int rows[3] = {Q, KV, KV};
        LP_TRY(lp_bind_mat_parts(c->m, fused, 3, rows, C, 0, qkv));
        L->wq = qkv[0];
        L->wk = qkv[1];
        L->wv = qkv[2];
        LP_TRY(lp_gl_vec(c, "blk.%d.attn_qkv.bias", l, Q + 2 * KV, opt, &b));
        if (b) {
            L->bq = b;
            L->bk = b + Q;
            L->bv = b + Q + KV;
        }
        return LOUPE_OK;
    }
    LP_TRY(lp_gl_mat(c, "blk.%d.attn_q.weight", l, Q, C, &L->wq));
    LP_TRY(lp_gl_mat(c, "blk.%d.attn_k.weight", l, KV, C, &L->wk));
    LP_TRY(lp_gl_mat(c, "blk.%d.attn_v.weight", l, KV, C, &L->wv));
    LP_TRY(lp_gl_vec(c, "blk.%d.attn_q.bias", l, Q, opt, &L->bq));
    LP_TRY(lp_gl_vec(c, "blk.%d.attn_k.bias", l, KV, opt, &L->bk));
    return lp_gl_vec(c, "blk.%d.attn_v.bias", l, KV, opt, &L->bv);
}

static loupe_status lp_gl_layer(const lp_gl_ctx *c, int l, lp_layer *L) {
    const lp_hparams *hp = &c->m->hp;
    int gpt2 = hp->arch == LP_ARCH_GPT2;
    int C = hp->dim, F = hp->ffn_dim, Q = hp->n_heads * hp->head_dim;
    LP_TRY(lp_gl_vec(c, "blk.%d.attn_norm.weight", l, C, 0, &L->attn_norm_w));
    LP_TRY(lp_gl_vec(c, "blk.%d.attn_norm.bias", l, C, !gpt2, &L->attn_norm_b));
    LP_TRY(lp_gl_qkv(c, l, L));
    LP_TRY(lp_gl_mat(c, "blk.%d.attn_output.weight", l, C, Q, &L->wo));
    LP_TRY(lp_gl_vec(c, "blk.%d.attn_output.bias", l, C, !gpt2, &L->bo));
    LP_TRY(lp_gl_vec(c, "blk.%d.ffn_norm.weight", l, C, 0, &L->ffn_norm_w));
    LP_TRY(lp_gl_vec(c, "blk.%d.ffn_norm.bias", l, C, !gpt2, &L->ffn_norm_b));
    if (!gpt2) LP_TRY(lp_gl_mat(c, "blk.%d.ffn_gate.weight", l, F, C, &L->w_gate));
    LP_TRY(lp_gl_mat(c, "blk.%d.ffn_up.weight", l, F, C, &L->w_up));
    LP_TRY(lp_gl_vec(c, "blk.%d.ffn_up.bias", l, F, !gpt2, &L->b_up));
    LP_TRY(lp_gl_mat(c, "blk.%d.ffn_down.weight", l, C, F, &L->w_down));
    return lp_gl_vec(c, "blk.%d.ffn_down.bias", l, C, !gpt2, &L->b_down);
}

static loupe_status lp_gl_weights(lp_gl_ctx *c) {
    loupe_model *m = c->m;
    const lp_hparams *hp = &m->hp;
    int gpt2 = hp->arch == LP_ARCH_GPT2;
    LP_TRY(lp_gl_mat(c, "token_embd.weight", 0, hp->n_vocab, hp->dim, &m->w.tok_embd));
    if (gpt2) {
        const lp_tensor_info *t = lp_gl_get(c, "position_embd.weight", 0);
        if (!t) return lp_gl_missing(c, "position_embd.weight", 0);
        int64_t want[2] = {hp->n_ctx, hp->dim};
        LP_TRY(lp_check_shape(m, t, 2, want));
        LP_TRY(lp_bind_vec(m, t, want[0] * want[1], &m->w.pos_embd));
    }
    m->w.layers = lp_model_alloc(m, sizeof(lp_layer) * (size_t)hp->n_layers); /* (n_layers) */
    if (!m->w.layers) return lp_fail(LOUPE_ERR_NOMEM, "out of memory");
    memset(m->w.layers, 0, sizeof(lp_layer) * (size_t)hp->n_layers);
    for (int l = 0; l < hp->n_layers; l++) LP_TRY(lp_gl_layer(c, l, &m->w.layers[l]));
    LP_TRY(lp_gl_vec(c, "output_norm.weight", 0, hp->dim, 0, &m->w.out_norm_w));
    LP_TRY(lp_gl_vec(c, "output_norm.bias", 0, hp->dim, !gpt2, &m->w.out_norm_b));
    if (hp->tied_head) {
        m->w.lm_head = m->w.tok_embd;
        return LOUPE_OK;
    }
    return lp_gl_mat(c, "output.weight", 0, hp->n_vocab, hp->dim, &m->w.lm_head);
}

/* ------------------------------------------------------------ entry */

static loupe_status lp_gl_arch(lp_gl_ctx *c, char *buf, size_t cap) {
    const lp_meta *a = lp_meta_find(&c->m->ts, "general.architecture");
    if (!a)
        return lp_fail(LOUPE_ERR_MISSING, "%s: metadata general.architecture is missing",
                       c->path);
    if (a->type != LP_META_STRING)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: general.architecture must be a string", c->path);
    int n = a->v.str.len >= cap ? (int)cap - 1 : (int)a->v.str.len;
    snprintf(buf, cap, "%.*s", n, a->v.str.s);
    if (strcmp(buf, "llama") && strcmp(buf, "qwen2") && strcmp(buf, "gpt2"))
        return lp_fail(LOUPE_ERR_UNSUPPORTED,
                       "%s: unsupported architecture '%s' (supported: llama, qwen2, gpt2)",
                       c->path, buf);
    c->arch = buf;
    return LOUPE_OK;
}

loupe_status lp_load_gguf(loupe_model *m, const char *path) {
    LP_TRY(lp_read_gguf(path, &m->ts));
    char arch[64];
    lp_gl_ctx c = {m, path, NULL};
    LP_TRY(lp_gl_arch(&c, arch, sizeof arch));
    LP_TRY(lp_gl_hparams(&c));
    LP_TRY(lp_gl_weights(&c));
    LP_TRY(lp_gl_rope_freqs(&c));
    lp_tok_spec spec;
    memset(&spec, 0, sizeof spec);
    LP_TRY(lp_tok_spec_from_gguf(&m->ts, path, &spec));
    loupe_status st = lp_tok_build(&spec, &m->tok);
    lp_tok_spec_free(&spec); /* zeroed by lp_tok_build: frees only leftovers */
    return st;
}
