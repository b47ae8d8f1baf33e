/*
 * gguf_vocab.c — the tokenizer stored in GGUF metadata (tokenizer.ggml.*).
 *
 *   model "gpt2"  -> byte-level BPE: tokens + merges, pre-tokenizer chosen
 *                    by tokenizer.ggml.pre (unknown names are an error);
 *   model "llama" -> SentencePiece BPE: tokens + scores, merged by score,
 *                    <0xAB> byte tokens, "▁" prepended (add_space_prefix).
 *
 * Token types: 2 unknown and 3 control become LP_TOKEN_SPECIAL (parsed in
 * text only with parse_special), 4 user-defined LP_TOKEN_ADDED (always
 * parsed), 5 unused, 6 byte. Defaults when a key is absent follow
 * llama.cpp: llama adds BOS (ids 1 / 2 / 0 for bos / eos / unk), gpt2 adds
 * it only for pre-tokenizers that do (llama3).
 */
#include <stdlib.h>
#include <string.h>

#include "../error.h"
#include "tok_internal.h"

/* ------------------------------------------------------------ metadata */

static int meta_int(const lp_meta *m, int64_t *out) {
    if (!m) return 0;
    switch (m->type) {
    case LP_META_U8: case LP_META_U16: case LP_META_U32: case LP_META_U64:
        *out = (int64_t)m->v.u;
        return 1;
    case LP_META_I8: case LP_META_I16: case LP_META_I32: case LP_META_I64:
        *out = m->v.i;
        return 1;
    case LP_META_BOOL:
        *out = m->v.b;
        return 1;
    default:
        return 0;
    }
}

/* A string value as a malloc'd C string; NULL if absent (or not a string). */
static char *meta_str(const lp_tensor_set *ts, const char *key) {
    const lp_meta *m = lp_meta_find(ts, key);
    if (!m || m->type != LP_META_STRING) return NULL;
    return lp_strndup(m->v.str.s, (size_t)m->v.str.len);
}

static loupe_status need_array(const lp_tensor_set *ts, const char *path,
                               const char *key, lp_meta_type et, uint64_t min_n,
                               int required, const lp_meta **out) {
    const lp_meta *m = lp_meta_find(ts, key);
    *out = NULL;
    if (!m) {
        if (!required) return LOUPE_OK;
        return lp_fail(LOUPE_ERR_TOKENIZER, "%s: %s is missing", path, key);
    }
    if (m->type != LP_META_ARRAY || m->arr_type != et)
        return lp_fail(LOUPE_ERR_TOKENIZER, "%s: %s has the wrong type", path, key);
    if (m->arr_n < min_n)
        return lp_fail(LOUPE_ERR_TOKENIZER, "%s: %s has %llu entries for %llu tokens",
                       path, key, (unsigned long long)m->arr_n, (unsigned long long)min_n);
    *out = m;
    return LOUPE_OK;
}

static int32_t arr_i32(const lp_meta *m, uint64_t i) {
    int32_t v;
    memcpy(&v, m->arr_data + 4 * i, 4);
    return v;
}

static float arr_f32(const lp_meta *m, uint64_t i) {
    float v;
    memcpy(&v, m->arr_data + 4 * i, 4);
    return v;
}

/* ---------------------------------------------------------------- tokens */

static loupe_status read_tokens(const lp_tensor_set *ts, const char *path,
                                lp_tok_spec *s) {
    const lp_meta *tok, *sc, *ty;
    LP_TRY(need_array(ts, path, "tokenizer.ggml.tokens", LP_META_STRING, 1, 1, &tok));
    if (tok->arr_n >= (1u << 24))
        return lp_fail(LOUPE_ERR_TOKENIZER, "%s: tokenizer.ggml.tokens has %llu "
                       "tokens", path, (unsigned long long)tok->arr_n);
    int n = (int)tok->arr_n;
    LP_TRY(need_array(ts, path, "tokenizer.ggml.token_type", LP_META_I32, (uint64_t)n, 0, &ty));
    sc = lp_meta_find(ts, "tokenizer.ggml.scores");
    if (sc && (sc->type != LP_META_ARRAY || sc->arr_n < (uint64_t)n ||
               (sc->arr_type != LP_META_F32 && sc->arr_type != LP_META_I32)))
        return lp_fail(LOUPE_ERR_TOKENIZER, "%s: tokenizer.ggml.scores is not "
                       "%d f32 values", path, n);
    s->pieces = calloc((size_t)n, sizeof *s->pieces);
    s->attrs = calloc((size_t)n, 1);
    s->scores = sc ? malloc((size_t)n * sizeof *s->scores) : NULL;
    if (!s->pieces || !s->attrs || (sc && !s->scores))
        return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", path);
    s->n_vocab = n;
    for (int i = 0; i < n; i++) {
        if (!(s->pieces[i] = lp_strndup(tok->arr_strs[i], (size_t)tok->arr_lens[i])))
            return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", path);
        if (sc) s->scores[i] = sc->arr_type == LP_META_F32 ? arr_f32(sc, i) : (float)arr_i32(sc, i);
        int32_t type = ty ? arr_i32(ty, i) : 1;
        s->attrs[i] = type == 2 || type == 3 ? LP_TOKEN_SPECIAL
                    : type == 4 ? LP_TOKEN_ADDED
                    : type == 5 ? LP_TOKEN_UNUSED
                    : type == 6 ? LP_TOKEN_BYTE : LP_TOKEN_NORMAL;
        if (type == 6) s->byte_fallback = 1;
    }
    return LOUPE_OK;
}

static loupe_status read_merges(const lp_tensor_set *ts, const char *path,
                                lp_tok_spec *s) {
    const lp_meta *m;
    LP_TRY(need_array(ts, path, "tokenizer.ggml.merges", LP_META_STRING, 0, 1, &m));
    if (m->arr_n > INT32_MAX)
        return lp_fail(LOUPE_ERR_TOKENIZER, "%s: too many merges", path);
    s->merges = calloc((size_t)m->arr_n + 1, sizeof *s->merges);
    if (!s->merges) return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", path);
    for (uint64_t i = 0; i < m->arr_n; i++) {
        if (!(s->merges[i] = lp_strndup(m->arr_strs[i], (size_t)m->arr_lens[i])))
            return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", path);
        s->n_merges = (int)i + 1;
    }
    return LOUPE_OK;
}

/* ----------------------------------------------------------- special ids */

/* Reads an id key into *id; absent keeps the default, "none" (-1 or
 * 0xFFFFFFFF) gives -1, anything else outside the vocabulary is an error. */
static loupe_status read_id(const lp_tensor_set *ts, const char *path,
                            const char *key, int n_vocab, int *id) {
    int64_t v;
    const lp_meta *m = lp_meta_find(ts, key);
    if (!m) return LOUPE_OK;
    if (!meta_int(m, &v))
        return lp_fail(LOUPE_ERR_TOKENIZER, "%s: %s is not an integer", path, key);
    if (v == -1 || v == 0xFFFFFFFFll) v = -1;
    else if (v < 0 || v >= n_vocab)
        return lp_fail(LOUPE_ERR_TOKENIZER, "%s: %s = %lld is outside the "
                       "vocabulary (%d tokens)", path, key, (long long)v, n_vocab);
    *id = (int)v;
    return LOUPE_OK;
}

static void read_flag(const lp_tensor_set *ts, const char *key, int *flag) {
    int64_t v;
    if (meta_int(lp_meta_find(ts, key), &v)) *flag = v != 0;
}

static loupe_status read_special(const lp_tensor_set *ts, const char *path,
                                 lp_tok_spec *s, int default_add_bos) {
    int n = s->n_vocab, eot = -1, eom = -1;
    LP_TRY(read_id(ts, path, "tokenizer.ggml.bos_token_id", n, &s->bos_id));
    LP_TRY(read_id(ts, path, "tokenizer.ggml.eos_token_id", n, &s->eos_id));
    LP_TRY(read_id(ts, path, "tokenizer.ggml.unknown_token_id", n, &s->unk_id));
    LP_TRY(read_id(ts, path, "tokenizer.ggml.padding_token_id", n, &s->pad_id));
    LP_TRY(read_id(ts, path, "tokenizer.ggml.eot_token_id", n, &eot));
    LP_TRY(read_id(ts, path, "tokenizer.ggml.eom_token_id", n, &eom));
    s->add_bos = default_add_bos && s->bos_id >= 0;
    read_flag(ts, "tokenizer.ggml.add_bos_token", &s->add_bos);
    read_flag(ts, "tokenizer.ggml.add_eos_token", &s->add_eos);
    int extra[2] = {eot, eom}, k = 0;
    s->eos_extra = malloc(2 * sizeof *s->eos_extra);
    if (!s->eos_extra) return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", path);
    for (int i = 0; i < 2; i++)
        if (extra[i] >= 0 && extra[i] != s->eos_id && (i == 0 || extra[1] != extra[0]))
            s->eos_extra[k++] = extra[i];
    s->n_eos_extra = k;
    return LOUPE_OK;
}

/* ------------------------------------------------------------------ main */

static loupe_status read_kind(const lp_tensor_set *ts, const char *path,
                              lp_tok_spec *s, int *default_add_bos) {
    char *model = meta_str(ts, "tokenizer.ggml.model");
    if (!model) return lp_fail(LOUPE_ERR_TOKENIZER, "%s: no tokenizer "
                               "(tokenizer.ggml.model is missing)", path);
    loupe_status st = LOUPE_OK;
    if (!strcmp(model, "llama")) {
        s->kind = LP_TOK_SPM;
        s->bos_id = 1, s->eos_id = 2, s->unk_id = 0; /* llama.cpp's defaults */
        s->add_prefix_space = LP_PREFIX_ALWAYS;
        *default_add_bos = 1;
        s->pre_name = lp_strdup("spm");
        if (!s->pre_name) st = lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", path);
    } else if (!strcmp(model, "gpt2")) {
        s->kind = LP_TOK_BPE_BYTES;
        char *pre = meta_str(ts, "tokenizer.ggml.pre");
        st = lp_spec_set_pre_by_name(s, pre ? pre : "default", default_add_bos);
        if (st != LOUPE_OK) lp_error_prefix("%s: tokenizer.ggml.pre", path);
        free(pre);
    } else {
        st = lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: tokenizer.ggml.model '%s' is "
                     "not supported (loupe reads 'gpt2' and 'llama')", path, model);
    }
    free(model);
    return st;
}

static loupe_status read_all(const lp_tensor_set *ts, const char *path, lp_tok_spec *s) {
    int default_add_bos = 0, prefix = s->add_prefix_space;
    if (!(s->source = lp_strdup(path))) return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", path);
    LP_TRY(read_kind(ts, path, s, &default_add_bos));
    LP_TRY(read_tokens(ts, path, s));
    if (s->kind == LP_TOK_BPE_BYTES) LP_TRY(read_merges(ts, path, s));
    if (s->kind == LP_TOK_SPM) prefix = LP_PREFIX_ALWAYS;
    read_flag(ts, "tokenizer.ggml.add_space_prefix", &prefix);
    s->add_prefix_space = prefix ? LP_PREFIX_ALWAYS : LP_PREFIX_NEVER;
    if (s->bos_id >= s->n_vocab) s->bos_id = -1; /* defaults on tiny vocabularies */
    if (s->eos_id >= s->n_vocab) s->eos_id = -1;
    if (s->unk_id >= s->n_vocab) s->unk_id = -1;
    LP_TRY(read_special(ts, path, s, default_add_bos));
    s->chat_template = meta_str(ts, "tokenizer.chat_template");
    return LOUPE_OK;
}

loupe_status lp_tok_spec_from_gguf(const lp_tensor_set *ts, const char *path,
                                   lp_tok_spec *out) {
    memset(out, 0, sizeof *out);
    out->bos_id = out->eos_id = out->unk_id = out->pad_id = -1;
    loupe_status st = read_all(ts, path, out);
    if (st != LOUPE_OK) {
        lp_tok_spec_free(out);
        out->bos_id = out->eos_id = out->unk_id = out->pad_id = -1;
    }
    return st;
}
