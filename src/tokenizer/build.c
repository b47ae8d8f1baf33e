/*
 * build.c — turns an lp_tok_spec into the runtime lp_tokenizer: lookup
 * tables (piece -> id, merge pair -> rank), byte maps, the decoded bytes of
 * every token, the added-token matcher and the compiled pre-tokenizer.
 */
#include <stdlib.h>
#include <string.h>

#include "../error.h"
#include "tok_internal.h"

/* ------------------------------------------------------------ hash maps */

uint32_t lp_hash_bytes(const char *s, size_t n) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

static uint32_t pow2_at_least(uint64_t n) {
    uint32_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

static int str_map_init(lp_str_map *m, int n) {
    m->cap = pow2_at_least((uint64_t)n * 2);
    m->slot = malloc(m->cap * sizeof *m->slot);
    m->hash = malloc(m->cap * sizeof *m->hash);
    if (!m->slot || !m->hash) return -1;
    memset(m->slot, 0xff, m->cap * sizeof *m->slot);
    return 0;
}

static int32_t str_map_get(const lp_tokenizer *t, const char *s, size_t n) {
    const lp_str_map *m = &t->vocab;
    uint32_t h = lp_hash_bytes(s, n);
    for (uint32_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        int32_t id = m->slot[i];
        if (id < 0) return -1;
        if (m->hash[i] == h && (size_t)t->piece_len[id] == n &&
            memcmp(t->spec.pieces[id], s, n) == 0)
            return id;
    }
}

/* Inserts id unless its piece is already there (the lower id wins). */
static void str_map_add(lp_tokenizer *t, int32_t id) {
    lp_str_map *m = &t->vocab;
    const char *s = t->spec.pieces[id];
    size_t n = (size_t)t->piece_len[id];
    uint32_t h = lp_hash_bytes(s, n);
    uint32_t i = h & (m->cap - 1);
    for (; m->slot[i] >= 0; i = (i + 1) & (m->cap - 1)) {
        int32_t o = m->slot[i];
        if (m->hash[i] == h && (size_t)t->piece_len[o] == n &&
            memcmp(t->spec.pieces[o], s, n) == 0)
            return;
    }
    m->slot[i] = id;
    m->hash[i] = h;
}

int32_t lp_tok_find(const lp_tokenizer *t, const char *piece, size_t len) {
    if (!t || !piece) return -1;
    return str_map_get(t, piece, len);
}

static uint32_t pair_hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return (uint32_t)k;
}

static int pair_map_init(lp_pair_map *m, int n) {
    m->cap = pow2_at_least((uint64_t)n * 2);
    m->key = malloc(m->cap * sizeof *m->key);
    m->rank = malloc(m->cap * sizeof *m->rank);
    m->merged = malloc(m->cap * sizeof *m->merged);
    if (!m->key || !m->rank || !m->merged) return -1;
    memset(m->key, 0xff, m->cap * sizeof *m->key);
    return 0;
}

/* Returns the slot of (a, b), or the empty slot where it would go. */
static uint32_t pair_slot(const lp_pair_map *m, int32_t a, int32_t b) {
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint32_t i = pair_hash(k) & (m->cap - 1);
    while (m->key[i] != UINT64_MAX && m->key[i] != k) i = (i + 1) & (m->cap - 1);
    return i;
}

/* Rank of merging a with b (and the merged id), or -1. */
int lp_pair_rank(const lp_tokenizer *t, int32_t a, int32_t b, int32_t *merged) {
    const lp_pair_map *m = &t->merges;
    if (!m->cap) return -1;
    uint32_t i = pair_slot(m, a, b);
    if (m->key[i] == UINT64_MAX) return -1;
    *merged = m->merged[i];
    return m->rank[i];
}

int32_t lp_vocab_get(const lp_tokenizer *t, const char *s, size_t n) {
    return str_map_get(t, s, n);
}

/* ---------------------------------------------------------------- merges */

/* Splits "left right" where both halves and their join are tokens. Token
 * texts may themselves contain spaces (HF's [a, b] merge form), so every
 * space is tried, first one first. */
static loupe_status resolve_merge(lp_tokenizer *t, int rank) {
    const char *m = t->spec.merges[rank];
    size_t n = strlen(m);
    char buf[1024];
    for (size_t sp = 1; sp + 1 < n; sp++) {
        if (m[sp] != ' ') continue;
        int32_t a = str_map_get(t, m, sp);
        int32_t b = str_map_get(t, m + sp + 1, n - sp - 1);
        if (a < 0 || b < 0 || n - 1 > sizeof buf) continue;
        memcpy(buf, m, sp);
        memcpy(buf + sp, m + sp + 1, n - sp - 1);
        int32_t ab = str_map_get(t, buf, n - 1);
        if (ab < 0)
            return lp_fail(LOUPE_ERR_TOKENIZER, "merges[%d] '%s': the merged "
                           "token '%.*s' is not in the vocabulary", rank, m,
                           (int)(n - 1), buf);
        uint32_t i = pair_slot(&t->merges, a, b);
        if (t->merges.key[i] != UINT64_MAX) return LOUPE_OK; /* first wins */
        t->merges.key[i] = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
        t->merges.rank[i] = rank;
        t->merges.merged[i] = ab;
        return LOUPE_OK;
    }
    return lp_fail(LOUPE_ERR_TOKENIZER, "merges[%d] '%s': not two "
                   "vocabulary tokens separated by a space", rank, m);
}

/* -------------------------------------------------------- decoded bytes */

static int is_byte_piece(const char *p, int *val) {
    static const char hex[] = "0123456789ABCDEF";
    if (strlen(p) != 6 || memcmp(p, "<0x", 3) != 0 || p[5] != '>') return 0;
    const char *h = strchr(hex, p[3]), *l = strchr(hex, p[4]);
    if (!h || !l) return 0; /* p[3], p[4] are not NUL: length is 6 */
    *val = (int)((h - hex) * 16 + (l - hex));
    return 1;
}

/* Writes the bytes token id stands for into out (room for piece_len). */
static size_t decode_piece(const lp_tokenizer *t, int32_t id, char *out) {
    const lp_tok_spec *s = &t->spec;
    const char *p = s->pieces[id];
    size_t n = (size_t)t->piece_len[id], o = 0;
    int bv;
    if (s->attrs[id] & (LP_TOKEN_SPECIAL | LP_TOKEN_ADDED)) {
        memcpy(out, p, n);
        return n;
    }
    if (s->kind == LP_TOK_SPM) {
        if ((s->attrs[id] & LP_TOKEN_BYTE) && is_byte_piece(p, &bv)) {
            out[0] = (char)bv;
            return 1;
        }
        for (size_t i = 0; i < n;) {
            if (n - i >= 3 && memcmp(p + i, "\xe2\x96\x81", 3) == 0) {
                out[o++] = ' ';
                i += 3;
            } else {
                out[o++] = p[i++];
            }
        }
        return o;
    }
    for (size_t i = 0; i < n;) { /* byte-level: every char is one byte */
        uint32_t cp;
        size_t l = lp_utf8_get(p + i, n - i, &cp);
        int b = l ? lp_cp_to_byte(cp) : -1;
        if (b < 0) { /* not a byte-map char: keep it as it is */
            l = l ? l : 1;
            memcpy(out + o, p + i, l);
            o += l;
        } else {
            out[o++] = (char)b;
        }
        i += l;
    }
    return o;
}

static loupe_status build_decoded(lp_tokenizer *t) {
    int nv = t->spec.n_vocab;
    size_t total = 0;
    for (int i = 0; i < nv; i++) total += (size_t)t->piece_len[i];
    t->dec = malloc(total + 1);
    t->dec_off = malloc((size_t)(nv + 1) * sizeof *t->dec_off);
    if (!t->dec || !t->dec_off || total > UINT32_MAX)
        return lp_fail(LOUPE_ERR_NOMEM, "tokenizer: out of memory");
    uint32_t off = 0;
    for (int i = 0; i < nv; i++) {
        t->dec_off[i] = off;
        size_t n = decode_piece(t, i, t->dec + off);
        if ((int)n > t->max_dec) t->max_dec = (int)n;
        off += (uint32_t)n;
    }
    t->dec_off[nv] = off;
    return LOUPE_OK;
}

/* ------------------------------------------------------------ byte maps */

static void build_byte_ids(lp_tokenizer *t) {
    lp_tok_spec *s = &t->spec;
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    if (s->kind == LP_TOK_BPE_BYTES) {
        for (int b = 0; b < 256; b++) {
            char u[4];
            size_t l = lp_utf8_put(lp_byte_to_cp((uint8_t)b), u);
            t->byte_id[b] = str_map_get(t, u, l);
        }
        return;
    }
    for (int i = 0; i < s->n_vocab; i++) { /* SPM: <0xAB> pieces */
        int v;
        if (!is_byte_piece(s->pieces[i], &v)) continue;
        if (s->byte_fallback) s->attrs[i] |= LP_TOKEN_BYTE;
        if ((s->attrs[i] & LP_TOKEN_BYTE) && t->byte_id[v] < 0) t->byte_id[v] = i;
    }
}

/* --------------------------------------------------------- added tokens */

typedef struct {
    uint8_t first;
    int32_t len, id;
} added_key;

/* By first byte, then longest first, then lower id. */
static int cmp_added(const void *a, const void *b) {
    const added_key *x = a, *y = b;
    if (x->first != y->first) return x->first < y->first ? -1 : 1;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

static loupe_status build_added(lp_tokenizer *t) {
    const lp_tok_spec *s = &t->spec;
    added_key *keys = malloc((size_t)s->n_vocab * sizeof *keys);
    t->added = malloc((size_t)s->n_vocab * sizeof *t->added);
    if (!keys || !t->added) {
        free(keys);
        return lp_fail(LOUPE_ERR_NOMEM, "tokenizer: out of memory");
    }
    for (int i = 0; i < s->n_vocab; i++)
        if ((s->attrs[i] & (LP_TOKEN_SPECIAL | LP_TOKEN_ADDED)) && t->piece_len[i] > 0)
            keys[t->n_added++] = (added_key){(uint8_t)s->pieces[i][0], t->piece_len[i], i};
    qsort(keys, (size_t)t->n_added, sizeof *keys, cmp_added);
    int k = 0;
    for (int b = 0; b < 256; b++) {
        t->added_start[b] = k;
        while (k < t->n_added && keys[k].first == b) k++;
    }
    t->added_start[256] = k;
    for (int i = 0; i < t->n_added; i++) t->added[i] = keys[i].id;
    free(keys);
    return LOUPE_OK;
}

/* -------------------------------------------------------- pre-tokenizer */

static loupe_status compile_pre(lp_tokenizer *t) {
    const lp_tok_spec *s = &t->spec;
    if (!s->n_pre) return LOUPE_OK;
    t->re = calloc((size_t)s->n_pre, sizeof *t->re);
    if (!t->re) return lp_fail(LOUPE_ERR_NOMEM, "tokenizer: out of memory");
    for (int i = 0; i < s->n_pre; i++) {
        int err;
        PCRE2_SIZE at;
        t->re[i] = pcre2_compile((PCRE2_SPTR)s->pre_regex[i], PCRE2_ZERO_TERMINATED,
                                 PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF,
                                 &err, &at, NULL);
        if (!t->re[i]) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(err, msg, sizeof msg);
            return lp_fail(LOUPE_ERR_TOKENIZER, "pre-tokenizer pattern %d "
                           "'%s': %s at offset %zu", i, s->pre_regex[i],
                           (const char *)msg, (size_t)at);
        }
        /* JIT is an optimisation: the interpreter is used without it */
        (void)pcre2_jit_compile(t->re[i], PCRE2_JIT_COMPLETE);
    }
    return LOUPE_OK;
}

/* ------------------------------------------------------------ validation */

static loupe_status check_spec(const lp_tok_spec *s) {
    if (s->kind != LP_TOK_BPE_BYTES && s->kind != LP_TOK_SPM)
        return lp_fail(LOUPE_ERR_TOKENIZER, "tokenizer: unknown kind %d", (int)s->kind);
    if (s->n_vocab <= 0 || !s->pieces || !s->attrs)
        return lp_fail(LOUPE_ERR_TOKENIZER, "tokenizer: empty vocabulary");
    for (int i = 0; i < s->n_vocab; i++)
        if (!s->pieces[i])
            return lp_fail(LOUPE_ERR_TOKENIZER, "tokenizer: token %d has no text", i);
    const int ids[4] = {s->bos_id, s->eos_id, s->unk_id, s->pad_id};
    static const char *names[4] = {"bos", "eos", "unk", "pad"};
    for (int k = 0; k < 4; k++)
        if (ids[k] < -1 || ids[k] >= s->n_vocab)
            return lp_fail(LOUPE_ERR_TOKENIZER, "tokenizer: %s id %d outside "
                           "the vocabulary (%d tokens)", names[k], ids[k], s->n_vocab);
    for (int k = 0; k < s->n_eos_extra; k++)
        if (s->eos_extra[k] < 0 || s->eos_extra[k] >= s->n_vocab)
            return lp_fail(LOUPE_ERR_TOKENIZER, "tokenizer: eos id %d outside "
                           "the vocabulary (%d tokens)", s->eos_extra[k], s->n_vocab);
    if (s->add_bos && s->bos_id < 0)
        return lp_fail(LOUPE_ERR_TOKENIZER, "tokenizer: add_bos is set but there is no BOS token");
    if (s->add_eos && s->eos_id < 0)
        return lp_fail(LOUPE_ERR_TOKENIZER, "tokenizer: add_eos is set but there is no EOS token");
    return LOUPE_OK;
}

/* ----------------------------------------------------------------- build */

static loupe_status build_tables(lp_tokenizer *t) {
    lp_tok_spec *s = &t->spec;
    t->piece_len = malloc((size_t)s->n_vocab * sizeof *t->piece_len);
    if (!t->piece_len || str_map_init(&t->vocab, s->n_vocab))
        return lp_fail(LOUPE_ERR_NOMEM, "tokenizer: out of memory");
    for (int i = 0; i < s->n_vocab; i++) {
        size_t l = strlen(s->pieces[i]);
        if (l > 65535)
            return lp_fail(LOUPE_ERR_TOKENIZER, "tokenizer: token %d is %zu bytes long", i, l);
        t->piece_len[i] = (int32_t)l;
    }
    for (int i = 0; i < s->n_vocab; i++)
        if (t->piece_len[i] > 0 && !(s->attrs[i] & LP_TOKEN_UNUSED)) str_map_add(t, i);
    if (s->n_merges > 0) {
        if (pair_map_init(&t->merges, s->n_merges))
            return lp_fail(LOUPE_ERR_NOMEM, "tokenizer: out of memory");
        for (int r = 0; r < s->n_merges; r++) LP_TRY(resolve_merge(t, r));
    }
    build_byte_ids(t);
    LP_TRY(build_decoded(t));
    LP_TRY(build_added(t));
    return compile_pre(t);
}

loupe_status lp_tok_build(lp_tok_spec *spec, lp_tokenizer **out) {
    *out = NULL;
    loupe_status st = check_spec(spec);
    if (st != LOUPE_OK) {
        if (spec->source) lp_error_prefix("%s", spec->source);
        lp_tok_spec_free(spec);
        return st;
    }
    lp_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        lp_tok_spec_free(spec);
        return lp_fail(LOUPE_ERR_NOMEM, "tokenizer: out of memory");
    }
    t->spec = *spec;
    memset(spec, 0, sizeof *spec);
    st = build_tables(t);
    if (st != LOUPE_OK) {
        if (t->spec.source) lp_error_prefix("%s", t->spec.source);
        lp_tok_free(t);
        return st;
    }
    *out = t;
    return LOUPE_OK;
}

void lp_tok_free(lp_tokenizer *t) {
    if (!t) return;
    if (t->re)
        for (int i = 0; i < t->spec.n_pre; i++) pcre2_code_free(t->re[i]);
    free(t->re);
    free(t->piece_len);
    free(t->vocab.slot);
    free(t->vocab.hash);
    free(t->merges.key);
    free(t->merges.rank);
    free(t->merges.merged);
    free(t->dec);
    free(t->dec_off);
    free(t->added);
    lp_tok_spec_free(&t->spec);
    free(t);
}

/* ------------------------------------------------------------- accessors */

const lp_tok_spec *lp_tok_get_spec(const lp_tokenizer *t) { return &t->spec; }
int lp_tok_n_vocab(const lp_tokenizer *t) { return t ? t->spec.n_vocab : 0; }
int lp_tok_max_token_bytes(const lp_tokenizer *t) { return t->max_dec; }

const char *lp_tok_piece(const lp_tokenizer *t, int32_t id) {
    if (!t || id < 0 || id >= t->spec.n_vocab) return NULL;
    return t->spec.pieces[id];
}

int lp_tok_is_eos(const lp_tokenizer *t, int32_t id) {
    if (id < 0) return 0;
    if (id == t->spec.eos_id) return 1;
    for (int i = 0; i < t->spec.n_eos_extra; i++)
        if (t->spec.eos_extra[i] == id) return 1;
    return 0;
}
