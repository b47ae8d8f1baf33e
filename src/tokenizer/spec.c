/*
 * spec.c — lp_tok_spec helpers shared by the readers: freeing, strings,
 * UTF-8 and the GPT-2 byte map, dense vocabularies, and the table of
 * pre-tokenizer patterns known by GGUF name.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../error.h"
#include "tok_internal.h"

/* ---------------------------------------------------------------- spec */

static void free_strs(char **v, int n) {
    if (!v) return;
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
}

void lp_tok_spec_free(lp_tok_spec *s) {
    if (!s) return;
    free_strs(s->pieces, s->n_vocab);
    free(s->scores);
    free(s->attrs);
    free_strs(s->merges, s->n_merges);
    free_strs(s->pre_regex, s->n_pre);
    free(s->pre_behavior);
    free(s->pre_name);
    free(s->chat_template);
    free(s->eos_extra);
    free(s->source);
    memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------- strings */

char *lp_strndup(const char *s, size_t n) {
    char *r = malloc(n + 1);
    if (!r) return NULL;
    memcpy(r, s, n);
    r[n] = 0;
    return r;
}

char *lp_strdup(const char *s) { return lp_strndup(s, strlen(s)); }

int lp_strvec_pushn(lp_strvec *sv, const char *s, size_t n) {
    if (sv->n == sv->cap) {
        int cap = sv->cap ? sv->cap * 2 : 64;
        char **v = realloc(sv->v, (size_t)cap * sizeof *v);
        if (!v) return -1;
        sv->v = v;
        sv->cap = cap;
    }
    char *c = lp_strndup(s, n);
    if (!c) return -1;
    sv->v[sv->n++] = c;
    return 0;
}

void lp_strvec_free(lp_strvec *sv) {
    free_strs(sv->v, sv->n);
    memset(sv, 0, sizeof *sv);
}

loupe_status lp_read_text_file(const char *path, char **out, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return lp_fail(LOUPE_ERR_IO, "%s: cannot open", path);
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (cap - n < 65536) {
            cap = cap ? cap * 2 : 1 << 20;
            char *b = realloc(buf, cap + 1);
            if (!b) {
                free(buf);
                fclose(f);
                return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", path);
            }
            buf = b;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return lp_fail(LOUPE_ERR_IO, "%s: read error", path);
    }
    buf[n] = 0;
    *out = buf;
    if (len) *len = n;
    return LOUPE_OK;
}

/* ---------------------------------------------------------------- UTF-8 */

size_t lp_utf8_get(const char *str, size_t n, uint32_t *cp) {
    const uint8_t *s = (const uint8_t *)str;
    if (n == 0) return 0;
    uint8_t c = s[0];
    size_t len;
    uint32_t v, min;
    if (c < 0x80) { *cp = c; return 1; }
    if (c >= 0xC2 && c <= 0xDF) { len = 2; v = c & 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; v = c & 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; v = c & 0x07; min = 0x10000; }
    else return 0;
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = v << 6 | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

size_t lp_utf8_len(const char *s, size_t n) {
    uint32_t cp;
    size_t l = lp_utf8_get(s, n, &cp);
    return l ? l : 1;
}

size_t lp_utf8_put(uint32_t cp, char *out) {
    uint8_t *o = (uint8_t *)out;
    if (cp < 0x80) { o[0] = (uint8_t)cp; return 1; }
    if (cp < 0x800) {
        o[0] = (uint8_t)(0xC0 | cp >> 6);
        o[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xE0 | cp >> 12);
        o[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | cp >> 18);
    o[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* ------------------------------------------------------ GPT-2 byte map */

/* Printable bytes (33..126, 161..172, 174..255) stand for themselves; the
 * other 68 bytes are shown as U+0100, U+0101, ... in byte order. */
static int byte_is_printable(int b) {
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
}

uint32_t lp_byte_to_cp(uint8_t b) {
    if (byte_is_printable(b)) return b;
    uint32_t k = 0;
    for (int i = 0; i < b; i++) k += !byte_is_printable(i);
    return 256 + k;
}

int lp_cp_to_byte(uint32_t cp) {
    if (cp < 256) return byte_is_printable((int)cp) ? (int)cp : -1;
    uint32_t k = 256;
    for (int b = 0; b < 256; b++) {
        if (byte_is_printable(b)) continue;
        if (k == cp) return b;
        k++;
    }
    return -1;
}

/* ----------------------------------------------------------- vocabulary */

/* Entries later in e override earlier ones with the same id (added tokens
 * come after the model vocabulary, as in HF). */
loupe_status lp_spec_set_vocab(lp_tok_spec *s, const lp_vocab_entry *e,
                               int n, const char *what) {
    int32_t max_id = -1;
    for (int i = 0; i < n; i++) {
        if (e[i].id < 0 || e[i].id >= (1 << 24))
            return lp_fail(LOUPE_ERR_TOKENIZER, "%s: token '%s' has id %d "
                           "(must be in [0, 16777216))", what, e[i].piece,
                           (int)e[i].id);
        if (e[i].id > max_id) max_id = e[i].id;
    }
    if (max_id < 0) return lp_fail(LOUPE_ERR_TOKENIZER, "%s: empty vocabulary", what);
    int nv = max_id + 1;
    /* ids are dense in real vocabularies; a huge gap would only make us
     * allocate empty pieces up to the highest id */
    if (nv > 2 * n + 1024)
        return lp_fail(LOUPE_ERR_TOKENIZER, "%s: %d tokens but the highest id is %d: "
                       "ids this sparse are not a vocabulary", what, n, (int)max_id);
    s->pieces = calloc((size_t)nv, sizeof *s->pieces);
    s->attrs = calloc((size_t)nv, 1);
    if (!s->pieces || !s->attrs) goto oom;
    s->n_vocab = nv;
    for (int i = 0; i < n; i++) {
        char *c = lp_strdup(e[i].piece);
        if (!c) goto oom;
        free(s->pieces[e[i].id]);
        s->pieces[e[i].id] = c;
    }
    for (int i = 0; i < nv; i++) {
        if (s->pieces[i]) continue;
        if (!(s->pieces[i] = lp_strdup(""))) goto oom;
        s->attrs[i] = LP_TOKEN_UNUSED;
    }
    return LOUPE_OK;
oom:
    return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", what);
}

/* ------------------------------------------------------ pre-tokenizers */

loupe_status lp_spec_add_pre(lp_tok_spec *s, const char *pattern,
                             uint8_t behavior) {
    char **r = realloc(s->pre_regex, (size_t)(s->n_pre + 1) * sizeof *r);
    if (!r) return lp_fail(LOUPE_ERR_NOMEM, "pre-tokenizer: out of memory");
    s->pre_regex = r;
    uint8_t *b = realloc(s->pre_behavior, (size_t)(s->n_pre + 1));
    if (!b) return lp_fail(LOUPE_ERR_NOMEM, "pre-tokenizer: out of memory");
    s->pre_behavior = b;
    if (!(r[s->n_pre] = lp_strdup(pattern)))
        return lp_fail(LOUPE_ERR_NOMEM, "pre-tokenizer: out of memory");
    b[s->n_pre] = behavior;
    s->n_pre++;
    return LOUPE_OK;
}

const char lp_pre_gpt2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+"
    "|\\s+(?!\\S)|\\s+";

/* The patterns come from the tokenizer.json files these models ship (the
 * original forms; PCRE2 understands (?i:...) and the \p classes). */
static const char pre_llama3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char pre_qwen2[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char pre_gpt2_no_ws[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+"
    "|\\s+(?!\\S)";
static const char pre_bloom[] = " ?[^(\\s|.,!?…。，、।۔،)]+";
static const char pre_gpt4o[] =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*"
    "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+"
    "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char pre_tekken[] =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*"
    "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|[^\\r\\n\\p{L}\\p{N}]?"
    "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*"
    "|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

typedef struct {
    const char *names;      /* '|'-separated GGUF names */
    const char *pre_name;   /* what the spec records */
    const char *pat[6];     /* applied in order, NULL-terminated */
    int ignore_merges;
    int add_bos;            /* default when the GGUF does not say */
} pre_preset;

static const pre_preset pre_presets[] = {
    {"default", "default",
     {"[\\p{P}\\$\\+<=>\\^~\\|]+", pre_gpt2_no_ws, "\\p{N}+", "[0-9][0-9][0-9]"},
     0, 0},
    {"gpt-2|gpt2|phi-2|mpt|olmo|jais|exaone4", "gpt2", {lp_pre_gpt2}, 0, 0},
    {"llama3|llama-v3|llama-bpe|falcon3|pixtral|falcon-h1|midm-2.0|lfm2",
     "llama3", {pre_llama3}, 1, 1},
    {"dbrx|smaug-bpe", "llama3", {pre_llama3}, 0, 0},
    {"chatglm-bpe|glm4", "llama3", {pre_llama3}, 0, 0},
    {"qwen2|deepseek-r1-qwen|megrez|stablelm2|hunyuan|kormo", "qwen2",
     {pre_qwen2}, 0, 0},
    {"starcoder|refact|command-r|smollm|codeshell|exaone|minerva-7b",
     "starcoder", {"\\p{N}", pre_gpt2_no_ws}, 0, 0},
    {"falcon", "falcon",
     {"[\\p{P}\\$\\+<=>\\^~\\|`]+", pre_gpt2_no_ws, "[0-9][0-9][0-9]"}, 0, 0},
    {"deepseek-coder", "deepseek-coder",
     {"[\\r\\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", "[一-龥ࠀ-一가-퟿]+", "\\p{N}"}, 0, 0},
    {"poro-chat|bloom|gpt3-finnish", "bloom", {pre_bloom}, 0, 0},
    {"viking", "viking", {pre_bloom, "\\p{N}"}, 0, 0},
    {"gpt-4o|llama4", "gpt-4o", {pre_gpt4o}, 0, 0},
    {"tekken", "tekken", {pre_tekken}, 1, 1},
};

static int name_in_list(const char *list, const char *name) {
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        const char *bar = strchr(p, '|');
        size_t l = bar ? (size_t)(bar - p) : strlen(p);
        if (l == n && memcmp(p, name, n) == 0) return 1;
        if (!bar) break;
        p = bar + 1;
    }
    return 0;
}

const char *lp_tok_known_pre_names(void) {
    static _Thread_local char buf[1024];
    size_t n = 0, np = sizeof pre_presets / sizeof pre_presets[0];
    for (size_t i = 0; i < np; i++) {
        for (const char *p = pre_presets[i].names; *p && n + 4 < sizeof buf; p++) {
            if (*p == '|') {
                buf[n++] = ',';
                buf[n++] = ' ';
            } else {
                buf[n++] = *p;
            }
        }
        if (i + 1 < np && n + 4 < sizeof buf) {
            buf[n++] = ',';
            buf[n++] = ' ';
        }
    }
    buf[n] = 0;
    return buf;
}

const char *lp_pre_name_of(const lp_tok_spec *s) {
    for (size_t i = 0; i < sizeof pre_presets / sizeof pre_presets[0]; i++) {
        const pre_preset *p = &pre_presets[i];
        int k = 0;
        while (k < 6 && p->pat[k] && k < s->n_pre && !strcmp(p->pat[k], s->pre_regex[k]) &&
               (!s->pre_behavior || s->pre_behavior[k] == LP_PRE_ISOLATED))
            k++;
        if (k == s->n_pre && (k == 6 || !p->pat[k])) return p->pre_name;
    }
    return NULL;
}

loupe_status lp_spec_set_pre_by_name(lp_tok_spec *s, const char *name,
                                     int *default_add_bos) {
    for (size_t i = 0; i < sizeof pre_presets / sizeof pre_presets[0]; i++) {
        const pre_preset *p = &pre_presets[i];
        if (!name_in_list(p->names, name)) continue;
        for (int k = 0; k < 6 && p->pat[k]; k++)
            LP_TRY(lp_spec_add_pre(s, p->pat[k], LP_PRE_ISOLATED));
        free(s->pre_name);
        if (!(s->pre_name = lp_strdup(p->pre_name)))
            return lp_fail(LOUPE_ERR_NOMEM, "pre-tokenizer: out of memory");
        s->ignore_merges = p->ignore_merges;
        if (default_add_bos) *default_add_bos = p->add_bos;
        return LOUPE_OK;
    }
    return lp_fail(LOUPE_ERR_UNSUPPORTED,
                   "pre-tokenizer '%s' is not known; known: %s", name,
                   lp_tok_known_pre_names());
}
