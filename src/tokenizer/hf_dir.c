/*
 * hf_dir.c — the tokenizer of a Hugging Face model directory.
 *
 * tokenizer.json if present, else vocab.json + merges.txt (byte-level BPE;
 * the pre-tokenizer pattern follows tokenizer_class or config.json's
 * model_type: Qwen2 -> qwen2, GPT-2 -> gpt2). Then tokenizer_config.json
 * (added_tokens_decoder, bos/eos/unk/pad tokens, add_bos_token /
 * add_eos_token, chat_template), generation_config.json and config.json
 * (bos / eos ids; an eos list gives the extra end-of-generation ids).
 *
 * Precedence: explicit add_bos_token / add_eos_token in tokenizer_config
 * override what tokenizer.json's post-processor says (as transformers'
 * Llama tokenizers do); tokenizer_config's token names override the
 * post-processor's, which override generation_config, then config.json.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "../error.h"
#include "tok_internal.h"

/* ------------------------------------------------------------- helpers */

typedef struct {
    char path[4096];
} fpath;

static fpath join(const char *dir, const char *name) {
    fpath p;
    snprintf(p.path, sizeof p.path, "%s/%s", dir, name);
    return p;
}

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Parses a JSON file; *out NULL (and LOUPE_OK) if the file is absent. */
static loupe_status load_json(const char *path, cJSON **out) {
    *out = NULL;
    if (!file_exists(path)) return LOUPE_OK;
    char *text;
    size_t len;
    LP_TRY(lp_read_text_file(path, &text, &len));
    *out = cJSON_ParseWithLength(text, len);
    free(text);
    if (!*out || !cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        *out = NULL;
        return lp_fail(LOUPE_ERR_FORMAT, "%s: not a valid JSON object", path);
    }
    return LOUPE_OK;
}

/* An integral JSON number (cJSON saturates valueint, so no overflow). */
static int jint(const cJSON *v, int *out) {
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)v->valueint) return 0;
    *out = v->valueint;
    return 1;
}

/* An added_tokens_decoder key: a decimal id; -1 if it is not one. */
static int key_id(const char *k) {
    char *end;
    long v = strtol(k, &end, 10);
    return end != k && !*end && v >= 0 && v < (1L << 24) ? (int)v : -1;
}

static int32_t spec_find(const lp_tok_spec *s, const char *piece) {
    for (int i = 0; piece && i < s->n_vocab; i++)
        if (strcmp(s->pieces[i], piece) == 0) return i;
    return -1;
}

/* A token given as "text" or {"content": "text"}; NULL if neither. */
static const char *token_text(const cJSON *v) {
    if (cJSON_IsString(v)) return v->valuestring;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(c) ? c->valuestring : NULL;
}

/* ------------------------------------------------- vocab.json + merges */

static loupe_status read_vocab_json(const char *path, const cJSON *cfg,
                                    lp_tok_spec *s) {
    cJSON *v;
    LP_TRY(load_json(path, &v));
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(cfg, "added_tokens_decoder");
    int n = cJSON_GetArraySize(v) + cJSON_GetArraySize(dec), k = 0;
    lp_vocab_entry *e = malloc((size_t)(n + 1) * sizeof *e);
    loupe_status st = e ? LOUPE_OK : lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", path);
    const cJSON *it;
    int id;
    cJSON_ArrayForEach(it, v) {
        if (st != LOUPE_OK) break;
        if (!jint(it, &id))
            st = lp_fail(LOUPE_ERR_TOKENIZER, "%s: '%s' has no integer id", path, it->string);
        else e[k++] = (lp_vocab_entry){it->string, id};
    }
    cJSON_ArrayForEach(it, dec) {
        const char *c = token_text(it);
        if (st != LOUPE_OK) break;
        if (!c || key_id(it->string) < 0)
            st = lp_fail(LOUPE_ERR_TOKENIZER, "tokenizer_config.json next to %s: "
                         "added_tokens_decoder['%s'] is not an id with a content",
                         path, it->string);
        else e[k++] = (lp_vocab_entry){c, key_id(it->string)};
    }
    if (st == LOUPE_OK) st = lp_spec_set_vocab(s, e, k, path);
    free(e);
    cJSON_Delete(v);
    return st;
}

static loupe_status read_merges_txt(const char *path, lp_tok_spec *s) {
    char *text;
    size_t len;
    LP_TRY(lp_read_text_file(path, &text, &len));
    lp_strvec sv = {0};
    char *line = text, *end = text + len;
    if (len >= 8 && memcmp(text, "#version", 8) == 0) line = memchr(text, '\n', len);
    for (; line && line < end; line++) {
        char *nl = memchr(line, '\n', (size_t)(end - line));
        size_t n = nl ? (size_t)(nl - line) : (size_t)(end - line);
        if (n && line[n - 1] == '\r') n--;
        if (n && lp_strvec_pushn(&sv, line, n)) {
            lp_strvec_free(&sv);
            free(text);
            return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", path);
        }
        line = nl ? nl : end;
    }
    free(text);
    s->merges = sv.v;
    s->n_merges = sv.n;
    return LOUPE_OK;
}

/* Pre-tokenizer pattern for a vocab.json + merges.txt tokenizer. */
static loupe_status choose_pre(const char *dir, const cJSON *cfg, const cJSON *conf,
                               lp_tok_spec *s) {
    const char *cls = token_text(cJSON_GetObjectItemCaseSensitive(cfg, "tokenizer_class"));
    const char *mt = token_text(cJSON_GetObjectItemCaseSensitive(conf, "model_type"));
    const char *name = NULL;
    if (cls) {
        if (!strcmp(cls, "Qwen2Tokenizer") || !strcmp(cls, "Qwen2TokenizerFast")) name = "qwen2";
        else if (!strcmp(cls, "GPT2Tokenizer") || !strcmp(cls, "GPT2TokenizerFast")) name = "gpt-2";
    } else if (mt) {
        if (!strcmp(mt, "qwen2") || !strcmp(mt, "qwen2_moe")) name = "qwen2";
        else if (!strcmp(mt, "gpt2")) name = "gpt-2";
    } else {
        name = "gpt-2"; /* the format's origin, with nothing saying otherwise */
    }
    if (!name)
        return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: vocab.json + merges.txt with "
                       "tokenizer_class '%s', model_type '%s': pre-tokenizer unknown "
                       "(known: Qwen2Tokenizer, GPT2Tokenizer; model_type qwen2, gpt2)",
                       dir, cls ? cls : "", mt ? mt : "");
    return lp_spec_set_pre_by_name(s, name, NULL);
}

static loupe_status read_vocab_merges(const char *dir, const cJSON *cfg,
                                      const cJSON *conf, lp_tok_spec *s) {
    s->kind = LP_TOK_BPE_BYTES;
    if (!(s->source = lp_strdup(join(dir, "merges.txt").path)))
        return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", dir);
    LP_TRY(read_vocab_json(join(dir, "vocab.json").path, cfg, s));
    LP_TRY(read_merges_txt(join(dir, "merges.txt").path, s));
    loupe_status st = choose_pre(dir, cfg, conf, s);
    if (st != LOUPE_OK) return st;
    const cJSON *aps = cJSON_GetObjectItemCaseSensitive(cfg, "add_prefix_space");
    s->add_prefix_space = cJSON_IsTrue(aps) ? LP_PREFIX_NO_SPACE : LP_PREFIX_NEVER;
    return LOUPE_OK;
}

/* ------------------------------------------------------------ configs */

/* Flags from added_tokens_decoder for tokens already in the vocabulary. */
static void mark_config_added(const cJSON *cfg, lp_tok_spec *s) {
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(cfg, "added_tokens_decoder")) {
        int id = key_id(it->string);
        const char *c = token_text(it);
        if (id < 0 || id >= s->n_vocab || !c || strcmp(s->pieces[id], c) != 0) continue;
        uint8_t a = LP_TOKEN_ADDED;
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "special"))) a |= LP_TOKEN_SPECIAL;
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "lstrip"))) a |= LP_TOKEN_LSTRIP;
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "rstrip"))) a |= LP_TOKEN_RSTRIP;
        s->attrs[id] = a;
    }
}

/* bos_token etc.: a named token must exist. */
static loupe_status config_token(const char *dir, const cJSON *cfg,
                                 const char *key, lp_tok_spec *s, int *id) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    const char *name = token_text(v);
    if (!name) return LOUPE_OK;
    int32_t t = spec_find(s, name);
    if (t < 0)
        return lp_fail(LOUPE_ERR_TOKENIZER, "%s/tokenizer_config.json: %s '%s' "
                       "is not in the vocabulary", dir, key, name);
    *id = t;
    return LOUPE_OK;
}

/* An id or a list of ids (first = primary); returns how many. */
static int config_ids(const cJSON *o, const char *key, int *ids, int cap) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key), *it;
    if (cap > 0 && jint(v, &ids[0])) return 1;
    int n = 0;
    const cJSON *arr = cJSON_IsArray(v) ? v : NULL;
    cJSON_ArrayForEach(it, arr)
        if (n < cap && jint(it, &ids[n])) n++;
    return n;
}

static loupe_status add_eos_extra(lp_tok_spec *s, const int *ids, int n) {
    for (int i = 0; i < n; i++) {
        int dup = ids[i] == s->eos_id || ids[i] < 0 || ids[i] >= s->n_vocab;
        for (int k = 0; k < s->n_eos_extra; k++) dup |= s->eos_extra[k] == ids[i];
        if (dup) continue;
        int *e = realloc(s->eos_extra, (size_t)(s->n_eos_extra + 1) * sizeof *e);
        if (!e) return lp_fail(LOUPE_ERR_NOMEM, "tokenizer: out of memory");
        s->eos_extra = e;
        e[s->n_eos_extra++] = ids[i];
    }
    return LOUPE_OK;
}

static loupe_status read_chat_template(const cJSON *cfg, lp_tok_spec *s) {
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template"), *it;
    const char *tpl = cJSON_IsString(ct) ? ct->valuestring : NULL;
    const cJSON *arr = cJSON_IsArray(ct) ? ct : NULL; /* [{name, template}] */
    cJSON_ArrayForEach(it, arr) {
        const char *name = token_text(cJSON_GetObjectItemCaseSensitive(it, "name"));
        const char *t = token_text(cJSON_GetObjectItemCaseSensitive(it, "template"));
        if (t && (!tpl || (name && !strcmp(name, "default")))) tpl = t;
    }
    if (!tpl) return LOUPE_OK;
    free(s->chat_template);
    if (!(s->chat_template = lp_strdup(tpl)))
        return lp_fail(LOUPE_ERR_NOMEM, "tokenizer: out of memory");
    return LOUPE_OK;
}

/* Token names in the configs become special (HF splits them out). */
static void mark_named_special(lp_tok_spec *s) {
    const int ids[4] = {s->bos_id, s->eos_id, s->unk_id, s->pad_id};
    for (int k = 0; k < 4; k++)
        if (ids[k] >= 0 && !(s->attrs[ids[k]] & LP_TOKEN_SPECIAL))
            s->attrs[ids[k]] |= LP_TOKEN_SPECIAL | LP_TOKEN_ADDED;
}

static loupe_status apply_configs(const char *dir, const cJSON *cfg,
                                  const cJSON *gen, const cJSON *conf,
                                  lp_tok_spec *s) {
    mark_config_added(cfg, s);
    LP_TRY(config_token(dir, cfg, "bos_token", s, &s->bos_id));
    LP_TRY(config_token(dir, cfg, "eos_token", s, &s->eos_id));
    LP_TRY(config_token(dir, cfg, "unk_token", s, &s->unk_id));
    LP_TRY(config_token(dir, cfg, "pad_token", s, &s->pad_id));
    const cJSON *ab = cJSON_GetObjectItemCaseSensitive(cfg, "add_bos_token");
    const cJSON *ae = cJSON_GetObjectItemCaseSensitive(cfg, "add_eos_token");
    if (cJSON_IsBool(ab)) s->add_bos = cJSON_IsTrue(ab);
    if (cJSON_IsBool(ae)) s->add_eos = cJSON_IsTrue(ae);
    int ids[16], n;
    const cJSON *src[2] = {gen, conf};
    for (int k = 0; k < 2; k++) {
        if (s->bos_id < 0 && config_ids(src[k], "bos_token_id", ids, 1) == 1 &&
            ids[0] >= 0 && ids[0] < s->n_vocab)
            s->bos_id = ids[0];
        n = config_ids(src[k], "eos_token_id", ids, 16);
        if (s->eos_id < 0 && n > 0 && ids[0] >= 0 && ids[0] < s->n_vocab) s->eos_id = ids[0];
        LP_TRY(add_eos_extra(s, ids, n));
    }
    mark_named_special(s);
    return read_chat_template(cfg, s);
}

/* ------------------------------------------------------------------ main */

static loupe_status read_dir(const char *dir, const cJSON *cfg, const cJSON *gen,
                             const cJSON *conf, lp_tok_spec *out) {
    fpath tj = join(dir, "tokenizer.json");
    if (file_exists(tj.path)) {
        LP_TRY(lp_tok_spec_from_tokenizer_json(tj.path, out));
    } else if (file_exists(join(dir, "vocab.json").path) &&
               file_exists(join(dir, "merges.txt").path)) {
        LP_TRY(read_vocab_merges(dir, cfg, conf, out));
    } else {
        int spm = file_exists(join(dir, "tokenizer.model").path);
        return lp_fail(LOUPE_ERR_TOKENIZER, "%s: no tokenizer.json and no "
                       "vocab.json + merges.txt%s", dir,
                       spm ? " (a SentencePiece tokenizer.model alone is not supported)" : "");
    }
    return apply_configs(dir, cfg, gen, conf, out);
}

loupe_status lp_tok_spec_from_hf_dir(const char *dir, lp_tok_spec *out) {
    memset(out, 0, sizeof *out);
    out->bos_id = out->eos_id = out->unk_id = out->pad_id = -1;
    cJSON *cfg = NULL, *gen = NULL, *conf = NULL;
    loupe_status st = load_json(join(dir, "tokenizer_config.json").path, &cfg);
    if (st == LOUPE_OK) st = load_json(join(dir, "generation_config.json").path, &gen);
    if (st == LOUPE_OK) st = load_json(join(dir, "config.json").path, &conf);
    if (st == LOUPE_OK) st = read_dir(dir, cfg, gen, conf, out);
    cJSON_Delete(cfg);
    cJSON_Delete(gen);
    cJSON_Delete(conf);
    if (st != LOUPE_OK) {
        lp_tok_spec_free(out);
        out->bos_id = out->eos_id = out->unk_id = out->pad_id = -1;
    }
    return st;
}
