/*
 * hf_json.c — reads a Hugging Face tokenizer.json into an lp_tok_spec.
 *
 * Handled: model BPE (vocab, merges as "a b" strings or [a, b] pairs,
 * byte_fallback, ignore_merges, unk_token), added_tokens (special, lstrip,
 * rstrip), normalizers Prepend("▁") / Replace(" " -> "▁") / NFC, the
 * pre-tokenizers ByteLevel, Split, Metaspace and Digits (alone or in a
 * Sequence), and post-processors TemplateProcessing / Roberta / Bert /
 * ByteLevel (which say whether BOS / EOS are added).
 *
 * NFC is accepted without being applied: text that is already NFC (as
 * nearly all text is) tokenizes exactly; other text may differ from HF.
 */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../error.h"
#include "tok_internal.h"

/* What the normalizer, pre-tokenizer and decoder sections say. */
typedef struct {
    int byte_level;      /* a ByteLevel pre-tokenizer or decoder */
    int spm;             /* Metaspace, Prepend("▁"), Replace(" ", "▁") */
    int prefix;          /* LP_PREFIX_* */
    int n_pre_seen;      /* pre-tokenizer steps before this one */
} pipeline;

/* ------------------------------------------------------------- helpers */

static const char *jstr(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* An integral JSON number (cJSON saturates valueint, so no overflow). */
static int jint(const cJSON *v, int *out) {
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)v->valueint) return 0;
    *out = v->valueint;
    return 1;
}

static int jbool(const cJSON *o, const char *key, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return dflt;
}

/* Id of a piece by linear search (used for a handful of names). */
static int32_t spec_find(const lp_tok_spec *s, const char *piece) {
    if (!piece) return -1;
    for (int i = 0; i < s->n_vocab; i++)
        if (strcmp(s->pieces[i], piece) == 0) return i;
    return -1;
}

static const char spm_space[] = "\xe2\x96\x81"; /* ▁ */

/* A literal string as a PCRE2 pattern. */
static char *escape_literal(const char *s) {
    size_t n = strlen(s);
    char *r = malloc(2 * n + 1), *o = r;
    if (!r) return NULL;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80 && !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
                          (c >= 'A' && c <= 'Z')))
            *o++ = '\\';
        *o++ = (char)c;
    }
    *o = 0;
    return r;
}

/* ------------------------------------------------------------ vocabulary */

static loupe_status read_vocab(const cJSON *model, const cJSON *added,
                               const char *path, lp_tok_spec *s) {
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab))
        return lp_fail(LOUPE_ERR_TOKENIZER, "%s: model.vocab is %s, expected "
                       "an object of token -> id", path, vocab ? "not an object" : "missing");
    int nv = cJSON_GetArraySize(vocab), na = cJSON_GetArraySize(added);
    lp_vocab_entry *e = malloc((size_t)(nv + na + 1) * sizeof *e);
    if (!e) return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", path);
    int n = 0;
    const cJSON *it;
    int id;
    cJSON_ArrayForEach(it, vocab) {
        if (!jint(it, &id)) {
            free(e);
            return lp_fail(LOUPE_ERR_TOKENIZER, "%s: model.vocab['%s'] is not "
                           "an integer id", path, it->string);
        }
        e[n++] = (lp_vocab_entry){it->string, id};
    }
    cJSON_ArrayForEach(it, added) {
        const char *content = jstr(it, "content");
        if (!jint(cJSON_GetObjectItemCaseSensitive(it, "id"), &id) || !content) {
            free(e);
            return lp_fail(LOUPE_ERR_TOKENIZER, "%s: added_tokens entry without "
                           "an integer id and a content string", path);
        }
        e[n++] = (lp_vocab_entry){content, id};
    }
    loupe_status st = lp_spec_set_vocab(s, e, n, path);
    free(e);
    return st;
}

static void mark_added(const cJSON *added, lp_tok_spec *s) {
    const cJSON *it;
    cJSON_ArrayForEach(it, added) {
        int id = cJSON_GetObjectItemCaseSensitive(it, "id")->valueint; /* checked */
        uint8_t a = LP_TOKEN_ADDED;
        if (jbool(it, "special", 0)) a |= LP_TOKEN_SPECIAL;
        if (jbool(it, "lstrip", 0)) a |= LP_TOKEN_LSTRIP;
        if (jbool(it, "rstrip", 0)) a |= LP_TOKEN_RSTRIP;
        s->attrs[id] = a;
    }
}

static loupe_status read_merges(const cJSON *model, const char *path,
                                lp_tok_spec *s) {
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!m) return LOUPE_OK;
    if (!cJSON_IsArray(m))
        return lp_fail(LOUPE_ERR_TOKENIZER, "%s: model.merges is not an array", path);
    int n = cJSON_GetArraySize(m), k = 0;
    s->merges = calloc((size_t)n + 1, sizeof *s->merges);
    if (!s->merges) return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", path);
    const cJSON *it;
    cJSON_ArrayForEach(it, m) {
        char *r = NULL;
        if (cJSON_IsString(it)) {
            r = lp_strdup(it->valuestring);
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 &&
                   cJSON_IsString(it->child) && cJSON_IsString(it->child->next)) {
            size_t a = strlen(it->child->valuestring), b = strlen(it->child->next->valuestring);
            if ((r = malloc(a + b + 2))) {
                memcpy(r, it->child->valuestring, a);
                r[a] = ' ';
                memcpy(r + a + 1, it->child->next->valuestring, b + 1);
            }
        } else {
            s->n_merges = k;
            return lp_fail(LOUPE_ERR_TOKENIZER, "%s: model.merges[%d] is neither "
                           "\"a b\" nor [\"a\", \"b\"]", path, k);
        }
        if (!r) {
            s->n_merges = k;
            return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", path);
        }
        s->merges[k++] = r;
    }
    s->n_merges = k;
    return LOUPE_OK;
}

static loupe_status read_model(const cJSON *root, const char *path, lp_tok_spec *s) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model))
        return lp_fail(LOUPE_ERR_TOKENIZER, "%s: no \"model\" object", path);
    const char *type = jstr(model, "type");
    if (type && strcmp(type, "BPE") != 0)
        return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: model.type '%s' is not "
                       "supported (loupe reads BPE tokenizers)", path, type);
    if (!type && !cJSON_GetObjectItemCaseSensitive(model, "merges"))
        return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: model has no type and no "
                       "merges; only BPE tokenizers are supported", path);
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (added && !cJSON_IsArray(added))
        return lp_fail(LOUPE_ERR_TOKENIZER, "%s: added_tokens is not an array", path);
    LP_TRY(read_vocab(model, added, path, s));
    mark_added(added, s);
    LP_TRY(read_merges(model, path, s));
    s->byte_fallback = jbool(model, "byte_fallback", 0);
    s->ignore_merges = jbool(model, "ignore_merges", 0);
    const char *unk = jstr(model, "unk_token");
    s->unk_id = spec_find(s, unk);
    if (unk && s->unk_id < 0)
        return lp_fail(LOUPE_ERR_TOKENIZER, "%s: model.unk_token '%s' is not in "
                       "the vocabulary", path, unk);
    return LOUPE_OK;
}

/* ------------------------------------------------------------ normalizer */

static loupe_status read_normalizer(const cJSON *n, const char *path, pipeline *p) {
    if (!n || cJSON_IsNull(n)) return LOUPE_OK;
    const char *type = jstr(n, "type");
    if (!type) return lp_fail(LOUPE_ERR_TOKENIZER, "%s: normalizer without a type", path);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(n, "normalizers"))
            LP_TRY(read_normalizer(it, path, p));
        return LOUPE_OK;
    }
    if (strcmp(type, "Prepend") == 0) {
        const char *pre = jstr(n, "prepend");
        if (!pre || strcmp(pre, spm_space) != 0)
            return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: normalizer Prepend('%s') "
                           "is not supported (only \"▁\")", path, pre ? pre : "");
        p->spm = 1;
        p->prefix = LP_PREFIX_ALWAYS;
        return LOUPE_OK;
    }
    if (strcmp(type, "Replace") == 0) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(n, "pattern");
        const char *from = jstr(pat, "String"), *to = jstr(n, "content");
        if (!from || !to || strcmp(from, " ") != 0 || strcmp(to, spm_space) != 0)
            return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: normalizer Replace is only "
                           "supported as \" \" -> \"▁\"", path);
        p->spm = 1;
        return LOUPE_OK;
    }
    if (strcmp(type, "NFC") == 0) return LOUPE_OK; /* see the file comment */
    return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: normalizer type '%s' is not "
                   "supported", path, type);
}

/* --------------------------------------------------------- pre-tokenizer */

static int behavior_code(const char *b) {
    static const char *names[] = {"Isolated", "Removed", "MergedWithPrevious",
                                  "MergedWithNext", "Contiguous"};
    for (int i = 0; i < 5; i++)
        if (b && strcmp(b, names[i]) == 0) return i;
    return -1;
}

static loupe_status read_split(const cJSON *pt, const char *path, lp_tok_spec *s) {
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(pt, "pattern");
    const char *re = jstr(pat, "Regex"), *lit = jstr(pat, "String");
    int beh = behavior_code(jstr(pt, "behavior"));
    if ((!re && !lit) || beh < 0)
        return lp_fail(LOUPE_ERR_TOKENIZER, "%s: Split pre-tokenizer needs "
                       "pattern.Regex or pattern.String and a known behavior", path);
    if (jbool(pt, "invert", 0)) beh |= LP_PRE_INVERT;
    if (re) return lp_spec_add_pre(s, re, (uint8_t)beh);
    char *esc = escape_literal(lit);
    if (!esc) return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", path);
    loupe_status st = lp_spec_add_pre(s, esc, (uint8_t)beh);
    free(esc);
    return st;
}

static loupe_status read_metaspace(const cJSON *pt, const char *path,
                                   lp_tok_spec *s, pipeline *p) {
    const char *rep = jstr(pt, "replacement");
    if (rep && strcmp(rep, spm_space) != 0)
        return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: Metaspace replacement '%s' is "
                       "not supported (only \"▁\")", path, rep);
    const char *scheme = jstr(pt, "prepend_scheme");
    p->spm = 1;
    if (!scheme) p->prefix = jbool(pt, "add_prefix_space", 1) ? LP_PREFIX_NO_SPACE : LP_PREFIX_NEVER;
    else if (strcmp(scheme, "always") == 0) p->prefix = LP_PREFIX_NO_SPACE;
    else if (strcmp(scheme, "first") == 0) p->prefix = LP_PREFIX_FIRST;
    else if (strcmp(scheme, "never") == 0) p->prefix = LP_PREFIX_NEVER;
    else return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: Metaspace prepend_scheme "
                        "'%s' is not supported", path, scheme);
    if (jbool(pt, "split", 1)) return lp_spec_add_pre(s, spm_space, LP_PRE_MERGED_NEXT);
    return LOUPE_OK;
}

static loupe_status read_pre(const cJSON *pt, const char *path, lp_tok_spec *s,
                             pipeline *p) {
    if (!pt || cJSON_IsNull(pt)) return LOUPE_OK;
    const char *type = jstr(pt, "type");
    if (!type) return lp_fail(LOUPE_ERR_TOKENIZER, "%s: pre_tokenizer without a type", path);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers"))
            LP_TRY(read_pre(it, path, s, p));
        return LOUPE_OK;
    }
    int first = p->n_pre_seen++ == 0;
    if (strcmp(type, "ByteLevel") == 0) {
        p->byte_level = 1;
        if (jbool(pt, "add_prefix_space", 1)) {
            if (!first)
                return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: ByteLevel with "
                               "add_prefix_space after other pre-tokenizers", path);
            p->prefix = LP_PREFIX_NO_SPACE;
        }
        return jbool(pt, "use_regex", 1) ? lp_spec_add_pre(s, lp_pre_gpt2, LP_PRE_ISOLATED)
                                         : LOUPE_OK;
    }
    if (strcmp(type, "Split") == 0) return read_split(pt, path, s);
    if (strcmp(type, "Metaspace") == 0) return read_metaspace(pt, path, s, p);
    if (strcmp(type, "Digits") == 0)
        return lp_spec_add_pre(s, jbool(pt, "individual_digits", 0) ? "\\p{N}" : "\\p{N}+",
                               LP_PRE_ISOLATED);
    return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: pre_tokenizer type '%s' is not "
                   "supported", path, type);
}

static void read_decoder(const cJSON *d, pipeline *p) {
    if (!d || cJSON_IsNull(d)) return;
    const char *type = jstr(d, "type");
    if (!type) return;
    if (strcmp(type, "ByteLevel") == 0) p->byte_level = 1;
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(d, "decoders"))
            read_decoder(it, p);
    }
}

/* -------------------------------------------------------- post-processor */

/* Id of a special token named in a post-processor. */
static int32_t template_token_id(const cJSON *pp, const char *name,
                                 const lp_tok_spec *s) {
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(pp, "special_tokens");
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(st, name);
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(e, "ids");
    int id;
    if (cJSON_IsArray(ids) && jint(ids->child, &id)) return id;
    return spec_find(s, name);
}

static loupe_status read_template(const cJSON *pp, const char *path, lp_tok_spec *s) {
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(pp, "single"), *it;
    int seen_seq = 0;
    cJSON_ArrayForEach(it, single) {
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
        if (cJSON_GetObjectItemCaseSensitive(it, "Sequence")) {
            seen_seq = 1;
            continue;
        }
        const char *name = jstr(sp, "id");
        if (!name) continue;
        int32_t id = template_token_id(pp, name, s);
        if (id < 0 || id >= s->n_vocab)
            return lp_fail(LOUPE_ERR_TOKENIZER, "%s: post_processor token '%s' is "
                           "not in the vocabulary", path, name);
        if (!seen_seq) s->bos_id = id, s->add_bos = 1;
        else s->eos_id = id, s->add_eos = 1;
    }
    return LOUPE_OK;
}

/* Roberta / Bert processors: cls and sep are [text, id] pairs. */
static void read_cls_sep(const cJSON *pp, lp_tok_spec *s) {
    const cJSON *cls = cJSON_GetObjectItemCaseSensitive(pp, "cls");
    const cJSON *sep = cJSON_GetObjectItemCaseSensitive(pp, "sep");
    if (cJSON_GetArraySize(cls) == 2 && jint(cls->child->next, &s->bos_id)) s->add_bos = 1;
    if (cJSON_GetArraySize(sep) == 2 && jint(sep->child->next, &s->eos_id)) s->add_eos = 1;
}

static loupe_status read_post(const cJSON *pp, const char *path, lp_tok_spec *s) {
    if (!pp || cJSON_IsNull(pp)) return LOUPE_OK;
    const char *type = jstr(pp, "type");
    if (!type) return lp_fail(LOUPE_ERR_TOKENIZER, "%s: post_processor without a type", path);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(pp, "processors"))
            LP_TRY(read_post(it, path, s));
        return LOUPE_OK;
    }
    if (strcmp(type, "TemplateProcessing") == 0) return read_template(pp, path, s);
    if (strcmp(type, "RobertaProcessing") == 0 || strcmp(type, "BertProcessing") == 0)
        read_cls_sep(pp, s);
    return LOUPE_OK; /* ByteLevel: offsets only */
}

/* ------------------------------------------------------------------ main */

/* BOS / EOS when no post-processor names them: well-known names. */
static void guess_bos_eos(lp_tok_spec *s) {
    static const char *bos[] = {"<s>", "<|begin_of_text|>", "<bos>", "<|endoftext|>"};
    static const char *eos[] = {"</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>", "<|im_end|>"};
    for (size_t i = 0; s->bos_id < 0 && i < sizeof bos / sizeof *bos; i++) {
        int32_t id = spec_find(s, bos[i]);
        if (id >= 0 && (s->attrs[id] & LP_TOKEN_SPECIAL)) s->bos_id = id;
    }
    for (size_t i = 0; s->eos_id < 0 && i < sizeof eos / sizeof *eos; i++) {
        int32_t id = spec_find(s, eos[i]);
        if (id >= 0 && (s->attrs[id] & LP_TOKEN_SPECIAL)) s->eos_id = id;
    }
}

static loupe_status read_pipeline(const cJSON *root, const char *path, lp_tok_spec *s) {
    pipeline p = {0};
    LP_TRY(read_normalizer(cJSON_GetObjectItemCaseSensitive(root, "normalizer"), path, &p));
    LP_TRY(read_pre(cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), path, s, &p));
    read_decoder(cJSON_GetObjectItemCaseSensitive(root, "decoder"), &p);
    if (p.byte_level && p.spm)
        return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: mixes ByteLevel with "
                       "Metaspace / \"▁\" normalisation", path);
    if (p.byte_level) s->kind = LP_TOK_BPE_BYTES;
    else if (p.spm || s->byte_fallback) s->kind = LP_TOK_SPM;
    else
        return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: neither byte-level (ByteLevel) "
                       "nor SentencePiece-style (Metaspace, \"▁\" normalizer); "
                       "loupe supports only these two BPE flavours", path);
    s->add_prefix_space = p.prefix;
    free(s->pre_name);
    const char *known = lp_pre_name_of(s);
    s->pre_name = lp_strdup(s->kind == LP_TOK_SPM ? "spm"
                            : known ? known : s->n_pre ? "tokenizer.json" : "none");
    if (!s->pre_name) return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", path);
    return read_post(cJSON_GetObjectItemCaseSensitive(root, "post_processor"), path, s);
}

loupe_status lp_tok_spec_from_tokenizer_json(const char *path, lp_tok_spec *out) {
    memset(out, 0, sizeof *out);
    out->bos_id = out->eos_id = out->unk_id = out->pad_id = -1;
    char *text;
    size_t len;
    LP_TRY(lp_read_text_file(path, &text, &len));
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        size_t off = at && at >= text && at <= text + len ? (size_t)(at - text) : 0;
        free(text);
        return lp_fail(LOUPE_ERR_FORMAT, "%s: not valid JSON (error near byte %zu)", path, off);
    }
    free(text);
    loupe_status st = LOUPE_OK;
    if (!cJSON_IsObject(root))
        st = lp_fail(LOUPE_ERR_TOKENIZER, "%s: top level is not a JSON object", path);
    if (st == LOUPE_OK) st = read_model(root, path, out);
    if (st == LOUPE_OK) st = read_pipeline(root, path, out);
    cJSON_Delete(root);
    if (st != LOUPE_OK) {
        lp_tok_spec_free(out);
        out->bos_id = out->eos_id = out->unk_id = out->pad_id = -1;
        return st;
    }
    guess_bos_eos(out);
    if (!(out->source = lp_strdup(path))) {
        lp_tok_spec_free(out);
        return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", path);
    }
    return LOUPE_OK;
}
