/*
 * hf_load.c — loads a Hugging Face model directory:
 *   config.json (+ generation_config.json)  -> lp_hparams
 *   model.safetensors, or model.safetensors.index.json + shards -> weights
 *   tokenizer files                          -> lp_tokenizer
 *
 * Tensor names may carry a "model." / "transformer." prefix or none.
 * GPT-2 stores its linear layers as Conv1D, (in, out): they are transposed
 * to (out, in) at load, and the fused c_attn is split into q, k, v.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../error.h"
#include "../model.h"

#define LP_MAX_IDS 16 /* token ids read from a list */

/* ------------------------------------------------------------ JSON */

/* Parses a JSON file; a missing optional file gives *out == NULL. */
static loupe_status lp_json_file(const char *path, int optional, cJSON **out) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (optional && errno == ENOENT) return LOUPE_OK;
        return lp_fail(errno == ENOENT ? LOUPE_ERR_MISSING : LOUPE_ERR_IO,
                       "%s: cannot open: %s", path, strerror(errno));
    }
    char *buf = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        n < (64L << 20))
        buf = malloc((size_t)n + 1);
    size_t got = buf ? fread(buf, 1, (size_t)n, f) : 0;
    fclose(f);
    if (!buf || got != (size_t)n) {
        free(buf);
        return lp_fail(LOUPE_ERR_IO, "%s: cannot read (or larger than 64 MiB)", path);
    }
    buf[n] = 0;
    *out = cJSON_ParseWithLength(buf, (size_t)n);
    free(buf);
    if (!*out) return lp_fail(LOUPE_ERR_FORMAT, "%s: not valid JSON", path);
    if (!cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        *out = NULL;
        return lp_fail(LOUPE_ERR_FORMAT, "%s: not a JSON object", path);
    }
    return LOUPE_OK;
}

/* A key's value, NULL when absent or JSON null. */
static const cJSON *lp_js_get(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNull(v) ? NULL : v;
}

static loupe_status lp_js_int(const cJSON *o, const char *file, const char *key,
                              int required, int dflt, int *out) {
    const cJSON *v = lp_js_get(o, key);
    if (!v) {
        if (required) return lp_fail(LOUPE_ERR_MISSING, "%s: key \"%s\" is missing", file, key);
        *out = dflt;
        return LOUPE_OK;
    }
    double d = v->valuedouble;
    if (!cJSON_IsNumber(v) || d != floor(d) || d < -2147483648.0 || d > 2147483647.0)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: \"%s\" must be an integer that fits 32 bits", file,
                       key);
    *out = (int)d;
    return LOUPE_OK;
}

static loupe_status lp_js_float(const cJSON *o, const char *file, const char *key,
                                int required, double dflt, float *out) {
    const cJSON *v = lp_js_get(o, key);
    if (!v) {
        if (required) return lp_fail(LOUPE_ERR_MISSING, "%s: key \"%s\" is missing", file, key);
        *out = (float)dflt;
        return LOUPE_OK;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return lp_fail(LOUPE_ERR_FORMAT, "%s: \"%s\" must be a number", file, key);
    *out = (float)v->valuedouble;
    return LOUPE_OK;
}

static loupe_status lp_js_bool(const cJSON *o, const char *file, const char *key, int dflt,
                               int *out) {
    const cJSON *v = lp_js_get(o, key);
    if (!v) {
        *out = dflt;
        return LOUPE_OK;
    }
    if (!cJSON_IsBool(v))
        return lp_fail(LOUPE_ERR_FORMAT, "%s: \"%s\" must be true or false", file, key);
    *out = cJSON_IsTrue(v);
    return LOUPE_OK;
}

/* A string value, dflt when absent; LOUPE_ERR_FORMAT if not a string. */
static loupe_status lp_js_str(const cJSON *o, const char *file, const char *key,
                              const char *dflt, const char **out) {
    const cJSON *v = lp_js_get(o, key);
    if (!v) {
        *out = dflt;
        return LOUPE_OK;
    }
    if (!cJSON_IsString(v))
        return lp_fail(LOUPE_ERR_FORMAT, "%s: \"%s\" must be a string", file, key);
    *out = v->valuestring;
    return LOUPE_OK;
}

/* A token id given as an int or a list of ints (the first is kept; the
 * tokenizer reads the whole eos list itself). Absent: left unchanged. */
static loupe_status lp_js_token_id(const cJSON *o, const char *file, const char *key,
                                   int *id) {
    const cJSON *v = lp_js_get(o, key);
    if (!v) return LOUPE_OK;
    int n = 0, tmp[LP_MAX_IDS];
    if (cJSON_IsArray(v)) {
        const cJSON *e;
        cJSON_ArrayForEach(e, v) {
            double d = e->valuedouble;
            if (!cJSON_IsNumber(e) || d != floor(d) || d < 0 || d > 2147483647.0)
                return lp_fail(LOUPE_ERR_FORMAT, "%s: \"%s\" must hold token ids", file, key);
            if (n < LP_MAX_IDS) tmp[n++] = (int)d;
        }
        if (n == 0) return LOUPE_OK;
    } else {
        LP_TRY(lp_js_int(o, file, key, 1, 0, &tmp[0]));
        n = 1;
    }
    *id = tmp[0];
    return LOUPE_OK;
}

/* ------------------------------------------------------------ config */

static loupe_status lp_hf_gpt2_config(const cJSON *c, const char *file, lp_hparams *hp) {
    hp->arch = LP_ARCH_GPT2;
    LP_TRY(lp_js_int(c, file, "vocab_size", 1, 0, &hp->n_vocab));
    LP_TRY(lp_js_int(c, file, "n_embd", 1, 0, &hp->dim));
    LP_TRY(lp_js_int(c, file, "n_layer", 1, 0, &hp->n_layers));
    LP_TRY(lp_js_int(c, file, "n_head", 1, 0, &hp->n_heads));
    hp->n_kv_heads = hp->n_heads;
    const char *ctx_key = lp_js_get(c, "n_positions") ? "n_positions" : "n_ctx";
    LP_TRY(lp_js_int(c, file, ctx_key, 1, 0, &hp->n_ctx));
    /* default 4 * n_embd; an absurd n_embd (rejected by validation) must not overflow it */
    int ffn_default = hp->dim > 0 && hp->dim <= (1 << 20) ? 4 * hp->dim : 0;
    LP_TRY(lp_js_int(c, file, "n_inner", 0, ffn_default, &hp->ffn_dim));
    LP_TRY(lp_js_float(c, file, "layer_norm_epsilon", 0, 1e-5, &hp->norm_eps));
    LP_TRY(lp_js_bool(c, file, "tie_word_embeddings", 1, &hp->tied_head));
    const char *act;
    LP_TRY(lp_js_str(c, file, "activation_function", "gelu_new", &act));
    if (strcmp(act, "gelu_new") == 0 || strcmp(act, "gelu_pytorch_tanh") == 0)
        hp->act = LP_ACT_GELU_TANH;
    else if (strcmp(act, "gelu") == 0)
        hp->act = LP_ACT_GELU_ERF;
    else
        return lp_fail(LOUPE_ERR_UNSUPPORTED,
                       "%s: activation_function '%s' is not supported (gelu, gelu_new, "
                       "gelu_pytorch_tanh)", file, act);
    int scale = 1, by_layer = 0, upcast = 0;
    LP_TRY(lp_js_bool(c, file, "scale_attn_weights", 1, &scale));
    LP_TRY(lp_js_bool(c, file, "scale_attn_by_inverse_layer_idx", 0, &by_layer));
    LP_TRY(lp_js_bool(c, file, "reorder_and_upcast_attn", 0, &upcast));
    if (!scale || by_layer)
        return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: non-standard GPT-2 attention scaling", file);
    return LOUPE_OK;
}

static loupe_status lp_hf_rope_scaling(const cJSON *c, const char *file, lp_hparams *hp) {
    const cJSON *rs = lp_js_get(c, "rope_scaling");
    if (!rs) return LOUPE_OK;
    if (!cJSON_IsObject(rs))
        return lp_fail(LOUPE_ERR_FORMAT, "%s: \"rope_scaling\" must be an object or null", file);
    const char *type = NULL;
    LP_TRY(lp_js_str(rs, file, "rope_type", NULL, &type));
    if (!type) LP_TRY(lp_js_str(rs, file, "type", NULL, &type));
    if (!type)
        return lp_fail(LOUPE_ERR_MISSING, "%s: rope_scaling has no \"rope_type\"", file);
    if (strcmp(type, "default") == 0) return LOUPE_OK;
    if (strcmp(type, "linear") == 0) {
        hp->rope_scaling = LP_ROPE_SCALING_LINEAR;
        return lp_js_float(rs, file, "factor", 1, 1, &hp->rope_factor);
    }
    if (strcmp(type, "llama3") == 0) {
        hp->rope_scaling = LP_ROPE_SCALING_LLAMA3;
        LP_TRY(lp_js_float(rs, file, "factor", 1, 1, &hp->rope_factor));
        LP_TRY(lp_js_float(rs, file, "low_freq_factor", 1, 1, &hp->rope_low_freq_factor));
        LP_TRY(lp_js_float(rs, file, "high_freq_factor", 1, 4, &hp->rope_high_freq_factor));
        return lp_js_int(rs, file, "original_max_position_embeddings", 1, 0,
                         &hp->rope_orig_ctx);
    }
    return lp_fail(LOUPE_ERR_UNSUPPORTED,
                   "%s: rope_scaling type '%s' is not supported (supported: linear, llama3)",
                   file, type);
}

static loupe_status lp_hf_llama_config(const cJSON *c, const char *file, lp_hparams *hp) {
    int is_qwen2 = strcmp(hp->model_type, "qwen2") == 0;
    int is_mistral = strcmp(hp->model_type, "mistral") == 0;
    hp->arch = LP_ARCH_LLAMA;
    hp->act = LP_ACT_SILU;
    hp->rope_neox = 1; /* HF checkpoints use rotate_half */
    LP_TRY(lp_js_int(c, file, "vocab_size", 1, 0, &hp->n_vocab));
    LP_TRY(lp_js_int(c, file, "hidden_size", 1, 0, &hp->dim));
    LP_TRY(lp_js_int(c, file, "intermediate_size", 1, 0, &hp->ffn_dim));
    LP_TRY(lp_js_int(c, file, "num_hidden_layers", 1, 0, &hp->n_layers));
    LP_TRY(lp_js_int(c, file, "num_attention_heads", 1, 0, &hp->n_heads));
    LP_TRY(lp_js_int(c, file, "num_key_value_heads", 0, hp->n_heads, &hp->n_kv_heads));
    LP_TRY(lp_js_int(c, file, "head_dim", 0, 0, &hp->head_dim));
    LP_TRY(lp_js_int(c, file, "max_position_embeddings", 0,
                     is_qwen2 ? 32768 : is_mistral ? 131072 : 2048, &hp->n_ctx));
    LP_TRY(lp_js_float(c, file, "rms_norm_eps", 0, 1e-6, &hp->norm_eps));
    LP_TRY(lp_js_float(c, file, "rope_theta", 0, 10000.0, &hp->rope_theta));
    LP_TRY(lp_js_bool(c, file, "tie_word_embeddings", 0, &hp->tied_head));
    LP_TRY(lp_js_bool(c, file, "attention_bias", 0, &hp->qkv_bias));
    if (is_qwen2) hp->qkv_bias = 1; /* Qwen2 always has q/k/v biases */
    int mlp_bias = 0;
    LP_TRY(lp_js_bool(c, file, "mlp_bias", 0, &mlp_bias));
    if (mlp_bias) return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: mlp_bias is not supported", file);
    const char *act;
    LP_TRY(lp_js_str(c, file, "hidden_act", "silu", &act));
    if (strcmp(act, "silu") != 0)
        return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: hidden_act '%s' is not supported (silu)",
                       file, act);
    /* Sliding-window attention is exact only inside the window, so a
     * windowed model's usable context is the window. */
    int use_window = !is_qwen2, window = 0;
    if (is_qwen2) LP_TRY(lp_js_bool(c, file, "use_sliding_window", 0, &use_window));
    LP_TRY(lp_js_int(c, file, "sliding_window", 0, 0, &window));
    if (use_window && window > 0 && window < hp->n_ctx) hp->n_ctx = window;
    return lp_hf_rope_scaling(c, file, hp);
}

/* Parses config.json and generation_config.json of dir into hp. */
static loupe_status lp_hf_config(const char *dir, lp_hparams *hp) {
    char file[4096], gfile[4096];
    snprintf(file, sizeof file, "%s/config.json", dir);
    snprintf(gfile, sizeof gfile, "%s/generation_config.json", dir);
    memset(hp, 0, sizeof *hp);
    hp->bos_id = hp->eos_id = -1;
    cJSON *c, *g = NULL;
    LP_TRY(lp_json_file(file, 0, &c));
    const char *mt = NULL;
    loupe_status st = lp_js_str(c, file, "model_type", NULL, &mt);
    if (st == LOUPE_OK && !mt)
        st = lp_fail(LOUPE_ERR_MISSING, "%s: key \"model_type\" is missing", file);
    if (st == LOUPE_OK && mt) {
        snprintf(hp->model_type, sizeof hp->model_type, "%s", mt);
        if (strcmp(mt, "gpt2") == 0)
            st = lp_hf_gpt2_config(c, file, hp);
        else if (strcmp(mt, "llama") == 0 || strcmp(mt, "mistral") == 0 ||
                 strcmp(mt, "qwen2") == 0)
            st = lp_hf_llama_config(c, file, hp);
        else
            st = lp_fail(LOUPE_ERR_UNSUPPORTED,
                         "%s: unknown model_type '%s' (supported: gpt2, llama, mistral, qwen2)",
                         file, mt);
    }
    if (st == LOUPE_OK) st = lp_js_token_id(c, file, "bos_token_id", &hp->bos_id);
    if (st == LOUPE_OK) st = lp_js_token_id(c, file, "eos_token_id", &hp->eos_id);
    if (st == LOUPE_OK) st = lp_json_file(gfile, 1, &g);
    if (st == LOUPE_OK && g) { /* generation_config.json overrides */
        st = lp_js_token_id(g, gfile, "bos_token_id", &hp->bos_id);
        if (st == LOUPE_OK) st = lp_js_token_id(g, gfile, "eos_token_id", &hp->eos_id);
    }
    cJSON_Delete(c);
    cJSON_Delete(g);
    return st;
}

loupe_status lp_hf_read_config(const char *dir, lp_hparams *hp) {
    LP_TRY(lp_hf_config(dir, hp));
    loupe_model *tmp = calloc(1, sizeof *tmp);
    if (!tmp) return lp_fail(LOUPE_ERR_NOMEM, "out of memory");
    tmp->hp = *hp;
    loupe_status st = lp_hparams_validate(tmp);
    if (st == LOUPE_OK) *hp = tmp->hp;
    else lp_error_prefix("%s/config.json", dir);
    loupe_model_close(tmp);
    return st;
}

/* ------------------------------------------------------------ weights */

/* A shard file name from the index: a plain name inside the directory. */
static int lp_hf_safe_name(const char *s) {
    return *s && !strchr(s, '/') && !strchr(s, '\\') && strcmp(s, ".") && strcmp(s, "..");
}

static loupe_status lp_hf_check_index(const char *index, const cJSON *map,
                                      const lp_tensor_set *ts) {
    const cJSON *e;
    cJSON_ArrayForEach(e, map) {
        const lp_tensor_info *t = lp_tensor_find(ts, e->string);
        const char *base = t ? strrchr(t->file, '/') : NULL;
        base = base ? base + 1 : t ? t->file : NULL;
        if (!t || strcmp(base, e->valuestring) != 0)
            return lp_fail(LOUPE_ERR_FORMAT, "%s: weight_map puts %s in %s but it is not there",
                           index, e->string, e->valuestring);
    }
    return LOUPE_OK;
}

/* Reads each shard named in the index's weight_map once. */
static loupe_status lp_hf_read_sharded(const char *dir, const char *index, lp_tensor_set *ts) {
    cJSON *root;
    LP_TRY(lp_json_file(index, 0, &root));
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    loupe_status st = LOUPE_OK;
    if (!cJSON_IsObject(map))
        st = lp_fail(LOUPE_ERR_FORMAT, "%s: no \"weight_map\" object", index);
    const cJSON *e;
    int i = 0;
    if (st == LOUPE_OK) cJSON_ArrayForEach(e, map) {
        if (!cJSON_IsString(e) || !lp_hf_safe_name(e->valuestring)) {
            st = lp_fail(LOUPE_ERR_FORMAT, "%s: weight_map entry %s is not a plain file name",
                         index, e->string);
            break;
        }
        int seen = 0; /* earlier entry with the same shard? */
        const cJSON *p = map->child;
        for (int j = 0; j < i && !seen; j++, p = p->next)
            seen = strcmp(p->valuestring, e->valuestring) == 0;
        i++;
        if (seen) continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->valuestring);
        st = lp_read_safetensors(path, ts);
        if (st != LOUPE_OK) break;
    }
    if (st == LOUPE_OK) st = lp_hf_check_index(index, map, ts);
    cJSON_Delete(root);
    return st;
}

static loupe_status lp_hf_read_weights(const char *dir, lp_tensor_set *ts) {
    char index[4096], single[4096];
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", dir);
    snprintf(single, sizeof single, "%s/model.safetensors", dir);
    FILE *f = fopen(index, "rb");
    if (f) {
        fclose(f);
        return lp_hf_read_sharded(dir, index, ts);
    }
    f = fopen(single, "rb");
    if (f) {
        fclose(f);
        return lp_read_safetensors(single, ts);
    }
    return lp_fail(LOUPE_ERR_MISSING,
                   "%s: no model.safetensors or model.safetensors.index.json (only safetensors "
                   "checkpoints are supported)", dir);
}

/* ------------------------------------------------------------ binding */

/* Finds tensors under the checkpoint's prefix ("", "model.", "transformer."). */
typedef struct {
    loupe_model *m;
    const char *dir;
    const char *prefix;
} lp_hf_ctx;

static const lp_tensor_info *lp_hf_get(const lp_hf_ctx *c, const char *fmt, int l) {
    char name[256], full[300];
    snprintf(name, sizeof name, fmt, l);
    snprintf(full, sizeof full, "%s%s", c->prefix, name);
    return lp_tensor_find(&c->m->ts, full);
}

static loupe_status lp_hf_missing(const lp_hf_ctx *c, const char *fmt, int l) {
    char name[256];
    snprintf(name, sizeof name, fmt, l);
    return lp_fail(LOUPE_ERR_MISSING, "%s: tensor %s%s is missing", c->dir, c->prefix, name);
}

static loupe_status lp_hf_mat(const lp_hf_ctx *c, const char *fmt, int l, int rows, int cols,
                              int transpose, lp_mat *out) {
    const lp_tensor_info *t = lp_hf_get(c, fmt, l);
    if (!t) return lp_hf_missing(c, fmt, l);
    return lp_bind_mat(c->m, t, rows, cols, transpose, out);
}

static loupe_status lp_hf_vec(const lp_hf_ctx *c, const char *fmt, int l, int n,
                              const float **out) {
    const lp_tensor_info *t = lp_hf_get(c, fmt, l);
    if (!t) return lp_hf_missing(c, fmt, l);
    int64_t want = n;
    LP_TRY(lp_check_shape(c->m, t, 1, &want));
    return lp_bind_vec(c->m, t, n, out);
}

/* Picks the prefix under which the token embedding is found. */
static loupe_status lp_hf_prefix(lp_hf_ctx *c, const char *embd, const char *usual) {
    static const char *const prefixes[] = {"", "model.", "transformer."};
    for (int i = 0; i < 3; i++) {
        c->prefix = prefixes[i];
        if (lp_hf_get(c, embd, 0)) return LOUPE_OK;
    }
    c->prefix = usual;
    return lp_hf_missing(c, embd, 0);
}

/* lm_head.weight (top level, or under the prefix) unless tied. */
static loupe_status lp_hf_head(lp_hf_ctx *c) {
    loupe_model *m = c->m;
    if (m->hp.tied_head) {
        m->w.lm_head = m->w.tok_embd;
        return LOUPE_OK;
    }
    const lp_tensor_info *t = lp_tensor_find(&m->ts, "lm_head.weight");
    if (!t) t = lp_hf_get(c, "lm_head.weight", 0);
    if (!t)
        return lp_fail(LOUPE_ERR_MISSING,
                       "%s: tensor lm_head.weight is missing and tie_word_embeddings is false",
                       c->dir);
    return lp_bind_mat(m, t, m->hp.n_vocab, m->hp.dim, 0, &m->w.lm_head);
}

static loupe_status lp_hf_gpt2_layer(lp_hf_ctx *c, int l, lp_layer *L) {
    int C = c->m->hp.dim, F = c->m->hp.ffn_dim;
    lp_mat qkv[3];
    const int rows[3] = {C, C, C};
    const float *b;
    LP_TRY(lp_hf_vec(c, "h.%d.ln_1.weight", l, C, &L->attn_norm_w));
    LP_TRY(lp_hf_vec(c, "h.%d.ln_1.bias", l, C, &L->attn_norm_b));
    const lp_tensor_info *fused = lp_hf_get(c, "h.%d.attn.c_attn.weight", l);
    if (!fused) return lp_hf_missing(c, "h.%d.attn.c_attn.weight", l);
    LP_TRY(lp_bind_mat_parts(c->m, fused, 3, rows, C, 1, qkv)); /* Conv1D: (in, out) */
    L->wq = qkv[0];
    L->wk = qkv[1];
    L->wv = qkv[2];
    LP_TRY(lp_hf_vec(c, "h.%d.attn.c_attn.bias", l, 3 * C, &b));
    L->bq = b;
    L->bk = b + C;
    L->bv = b + 2 * C;
    LP_TRY(lp_hf_mat(c, "h.%d.attn.c_proj.weight", l, C, C, 1, &L->wo));
    LP_TRY(lp_hf_vec(c, "h.%d.attn.c_proj.bias", l, C, &L->bo));
    LP_TRY(lp_hf_vec(c, "h.%d.ln_2.weight", l, C, &L->ffn_norm_w));
    LP_TRY(lp_hf_vec(c, "h.%d.ln_2.bias", l, C, &L->ffn_norm_b));
    LP_TRY(lp_hf_mat(c, "h.%d.mlp.c_fc.weight", l, F, C, 1, &L->w_up));
    LP_TRY(lp_hf_vec(c, "h.%d.mlp.c_fc.bias", l, F, &L->b_up));
    LP_TRY(lp_hf_mat(c, "h.%d.mlp.c_proj.weight", l, C, F, 1, &L->w_down));
    return lp_hf_vec(c, "h.%d.mlp.c_proj.bias", l, C, &L->b_down);
}

static loupe_status lp_hf_gpt2(lp_hf_ctx *c) {
    loupe_model *m = c->m;
    const lp_hparams *hp = &m->hp;
    LP_TRY(lp_hf_prefix(c, "wte.weight", "transformer."));
    LP_TRY(lp_hf_mat(c, "wte.weight", 0, hp->n_vocab, hp->dim, 0, &m->w.tok_embd));
    const lp_tensor_info *t = lp_hf_get(c, "wpe.weight", 0);
    if (!t) return lp_hf_missing(c, "wpe.weight", 0);
    int64_t pshape[2] = {hp->n_ctx, hp->dim};
    LP_TRY(lp_check_shape(m, t, 2, pshape));
    LP_TRY(lp_bind_vec(m, t, (int64_t)hp->n_ctx * hp->dim, &m->w.pos_embd));
    for (int l = 0; l < hp->n_layers; l++) LP_TRY(lp_hf_gpt2_layer(c, l, &m->w.layers[l]));
    LP_TRY(lp_hf_vec(c, "ln_f.weight", 0, hp->dim, &m->w.out_norm_w));
    LP_TRY(lp_hf_vec(c, "ln_f.bias", 0, hp->dim, &m->w.out_norm_b));
    return lp_hf_head(c);
}

/* An optional bias: bound if present, else NULL. */
static loupe_status lp_hf_opt_vec(const lp_hf_ctx *c, const char *fmt, int l, int n,
                                  const float **out) {
    *out = NULL;
    if (!lp_hf_get(c, fmt, l)) return LOUPE_OK;
    return lp_hf_vec(c, fmt, l, n, out);
}

static loupe_status lp_hf_llama_layer(lp_hf_ctx *c, int l, lp_layer *L) {
    const lp_hparams *hp = &c->m->hp;
    int C = hp->dim, F = hp->ffn_dim;
    int Q = hp->n_heads * hp->head_dim, KV = hp->n_kv_heads * hp->head_dim;
    LP_TRY(lp_hf_vec(c, "layers.%d.input_layernorm.weight", l, C, &L->attn_norm_w));
    LP_TRY(lp_hf_mat(c, "layers.%d.self_attn.q_proj.weight", l, Q, C, 0, &L->wq));
    LP_TRY(lp_hf_mat(c, "layers.%d.self_attn.k_proj.weight", l, KV, C, 0, &L->wk));
    LP_TRY(lp_hf_mat(c, "layers.%d.self_attn.v_proj.weight", l, KV, C, 0, &L->wv));
    if (hp->qkv_bias) {
        LP_TRY(lp_hf_vec(c, "layers.%d.self_attn.q_proj.bias", l, Q, &L->bq));
        LP_TRY(lp_hf_vec(c, "layers.%d.self_attn.k_proj.bias", l, KV, &L->bk));
        LP_TRY(lp_hf_vec(c, "layers.%d.self_attn.v_proj.bias", l, KV, &L->bv));
    }
    LP_TRY(lp_hf_mat(c, "layers.%d.self_attn.o_proj.weight", l, C, Q, 0, &L->wo));
    LP_TRY(lp_hf_opt_vec(c, "layers.%d.self_attn.o_proj.bias", l, C, &L->bo));
    LP_TRY(lp_hf_vec(c, "layers.%d.post_attention_layernorm.weight", l, C, &L->ffn_norm_w));
    LP_TRY(lp_hf_mat(c, "layers.%d.mlp.gate_proj.weight", l, F, C, 0, &L->w_gate));
    LP_TRY(lp_hf_mat(c, "layers.%d.mlp.up_proj.weight", l, F, C, 0, &L->w_up));
    return lp_hf_mat(c, "layers.%d.mlp.down_proj.weight", l, C, F, 0, &L->w_down);
}

static loupe_status lp_hf_llama(lp_hf_ctx *c) {
    loupe_model *m = c->m;
    const lp_hparams *hp = &m->hp;
    LP_TRY(lp_hf_prefix(c, "embed_tokens.weight", "model."));
    LP_TRY(lp_hf_mat(c, "embed_tokens.weight", 0, hp->n_vocab, hp->dim, 0, &m->w.tok_embd));
    for (int l = 0; l < hp->n_layers; l++) LP_TRY(lp_hf_llama_layer(c, l, &m->w.layers[l]));
    LP_TRY(lp_hf_vec(c, "norm.weight", 0, hp->dim, &m->w.out_norm_w));
    return lp_hf_head(c);
}

/* ------------------------------------------------------------ tokenizer */

static loupe_status lp_hf_tokenizer(loupe_model *m, const char *dir) {
    lp_tok_spec spec;
    memset(&spec, 0, sizeof spec);
    LP_TRY(lp_tok_spec_from_hf_dir(dir, &spec));
    if (m->hp.bos_id < 0) m->hp.bos_id = spec.bos_id;
    if (m->hp.eos_id < 0) m->hp.eos_id = spec.eos_id;
    loupe_status st = lp_tok_build(&spec, &m->tok);
    lp_tok_spec_free(&spec); /* zeroed by lp_tok_build: frees only leftovers */
    return st;
}

/* ------------------------------------------------------------ entry */

loupe_status lp_load_hf_dir(loupe_model *m, const char *dir) {
    LP_TRY(lp_hf_config(dir, &m->hp));
    loupe_status st = lp_hparams_validate(m);
    if (st != LOUPE_OK) {
        lp_error_prefix("%s/config.json", dir);
        return st;
    }
    LP_TRY(lp_hf_read_weights(dir, &m->ts));
    m->w.layers = lp_model_alloc(m, sizeof(lp_layer) * (size_t)m->hp.n_layers); /* (n_layers) */
    if (!m->w.layers) return lp_fail(LOUPE_ERR_NOMEM, "out of memory");
    memset(m->w.layers, 0, sizeof(lp_layer) * (size_t)m->hp.n_layers);
    lp_hf_ctx c = {m, dir, ""};
    LP_TRY(m->hp.arch == LP_ARCH_GPT2 ? lp_hf_gpt2(&c) : lp_hf_llama(&c));
    return lp_hf_tokenizer(m, dir);
}
