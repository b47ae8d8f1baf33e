/*
 * encode.c — text -> token ids.
 *
 *   1. added tokens are split out first (leftmost, then longest match);
 *      special ones only when parse_special is set;
 *   2. every text segment between them is normalised: SPM replaces ' ' by
 *      "▁" and may prepend "▁"; byte-level BPE may prepend ' ';
 *   3. the pre-tokenizer patterns (PCRE2) cut the segment into words;
 *   4. each word is merged: byte-level BPE and tokenizer.json SPM by merge
 *      rank (lowest first, leftmost on ties, as HF tokenizers do); GGUF SPM
 *      by token score (highest first, as llama.cpp / sentencepiece do);
 *      characters missing from the vocabulary fall back to <0xAB> pieces.
 *
 * Merging is a linked list of symbols plus a binary heap of candidate
 * pairs, so a word of n characters costs O(n log n).
 */
#include <stdlib.h>
#include <string.h>

#include "../error.h"
#include "tok_internal.h"

/* --------------------------------------------------------------- buffers */

typedef struct {
    int32_t *v;
    size_t n, cap;
} idvec;

static int idvec_push(idvec *a, int32_t x) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 256;
        int32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return -1;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return 0;
}

typedef struct {
    size_t s, e;   /* byte range in the normalised segment */
    int match;     /* produced by a pattern match (vs a gap) */
} span;

typedef struct {
    span *v;
    size_t n, cap;
} spanvec;

static int spans_push(spanvec *a, size_t s, size_t e, int match) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        span *v = realloc(a->v, cap * sizeof *v);
        if (!v) return -1;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = (span){s, e, match};
    return 0;
}

/* A symbol of a word being merged. Dead symbols have len 0. */
typedef struct {
    int32_t id;         /* token id (rank merging) */
    int32_t prev, next; /* neighbours, -1 at the ends */
    uint32_t start, len;/* bytes in the word (score merging) */
} sym;

/* A candidate merge of symbols left and right. Min-heap on key. */
typedef struct {
    uint64_t key;
    int32_t left, right, aux;
} cand;

/* Scratch reused across the segments and words of one encode call. */
typedef struct {
    char *norm;            /* (norm_cap) normalised segment */
    size_t norm_cap;
    spanvec words, next, parts;
    sym *syms;             /* (syms_cap) */
    size_t syms_cap;
    cand *heap;            /* (heap_cap) */
    size_t heap_n, heap_cap;
    char *mapped;          /* (mapped_cap) byte-level text of a word */
    size_t mapped_cap;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit;
} scratch;

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

static void scratch_free(scratch *w) {
    free(w->norm);
    free(w->words.v);
    free(w->next.v);
    free(w->parts.v);
    free(w->syms);
    free(w->heap);
    free(w->mapped);
    if (w->md) pcre2_match_data_free(w->md);
    if (w->mctx) pcre2_match_context_free(w->mctx);
    if (w->jit) pcre2_jit_stack_free(w->jit);
}

/* ------------------------------------------------------------------ heap */

static int heap_push(scratch *w, cand c) {
    if (grow((void **)&w->heap, &w->heap_cap, w->heap_n + 1, sizeof c)) return -1;
    size_t i = w->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (w->heap[p].key <= c.key) break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = c;
    return 0;
}

static cand heap_pop(scratch *w) {
    cand top = w->heap[0], last = w->heap[--w->heap_n];
    size_t i = 0, n = w->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && w->heap[c + 1].key < w->heap[c].key) c++;
        if (last.key <= w->heap[c].key) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n) w->heap[i] = last;
    return top;
}

/* ---------------------------------------------------------- rank merging */

static int push_rank_pair(const lp_tokenizer *t, scratch *w, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return 0;
    int32_t merged;
    int rank = lp_pair_rank(t, w->syms[l].id, w->syms[r].id, &merged);
    if (rank < 0) return 0;
    cand c = {(uint64_t)(uint32_t)rank << 32 | (uint32_t)l, l, r, merged};
    return heap_push(w, c);
}

/* Merges the n symbols in w->syms (ids set) by rank and appends the
 * result. An entry is stale unless its pair still merges into the same
 * token (HF's rule). */
static int merge_by_rank(const lp_tokenizer *t, scratch *w, int n, idvec *out) {
    sym *s = w->syms;
    for (int i = 0; i < n; i++) {
        s[i].prev = i - 1;
        s[i].next = i + 1 < n ? i + 1 : -1;
        s[i].len = 1;
    }
    w->heap_n = 0;
    for (int i = 0; i + 1 < n; i++)
        if (push_rank_pair(t, w, i, i + 1)) return -1;
    while (w->heap_n) {
        cand c = heap_pop(w);
        int32_t l = c.left, r = s[l].next, merged;
        if (!s[l].len || r < 0) continue;
        if (lp_pair_rank(t, s[l].id, s[r].id, &merged) < 0 || merged != c.aux)
            continue;
        s[l].id = merged;
        s[r].len = 0;
        s[l].next = s[r].next;
        if (s[r].next >= 0) s[s[r].next].prev = l;
        if (push_rank_pair(t, w, s[l].prev, l) || push_rank_pair(t, w, l, s[l].next))
            return -1;
    }
    for (int i = 0; n > 0 && i >= 0; i = s[i].next)
        if (idvec_push(out, s[i].id)) return -1;
    return 0;
}

/* Byte-level BPE word: every byte starts as the token of its mapped char. */
static int word_bytes(const lp_tokenizer *t, scratch *w, const char *p,
                      size_t n, idvec *out) {
    if (t->spec.ignore_merges) { /* a whole word in the vocabulary wins */
        if (grow((void **)&w->mapped, &w->mapped_cap, n * 2, 1)) return -1;
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            m += lp_utf8_put(lp_byte_to_cp((uint8_t)p[i]), w->mapped + m);
        int32_t id = lp_vocab_get(t, w->mapped, m);
        if (id >= 0) return idvec_push(out, id);
    }
    if (grow((void **)&w->syms, &w->syms_cap, n, sizeof(sym))) return -1;
    int k = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[(uint8_t)p[i]];
        if (id < 0) id = t->spec.unk_id;
        if (id >= 0) w->syms[k++].id = id; /* else dropped, as HF does */
    }
    return merge_by_rank(t, w, k, out);
}

/* Whether bytes p[0..n) can all be written as <0xAB> pieces. */
static int bytes_fall_back(const lp_tokenizer *t, const char *p, size_t n) {
    if (!t->spec.byte_fallback) return 0;
    for (size_t i = 0; i < n; i++)
        if (t->byte_id[(uint8_t)p[i]] < 0) return 0;
    return 1;
}

/* Appends the byte-fallback pieces of p[0..n), else unk, else nothing. */
static int push_bytes(const lp_tokenizer *t, const char *p, size_t n, idvec *out) {
    if (!bytes_fall_back(t, p, n))
        return t->spec.unk_id >= 0 ? idvec_push(out, t->spec.unk_id) : 0;
    for (size_t i = 0; i < n; i++)
        if (idvec_push(out, t->byte_id[(uint8_t)p[i]])) return -1;
    return 0;
}

/* SentencePiece-style word merged by rank (tokenizer.json BPE): symbols
 * are characters; a character missing from the vocabulary becomes its
 * <0xAB> pieces (which never merge), else unk, else nothing (HF). */
static int word_chars_rank(const lp_tokenizer *t, scratch *w, const char *p,
                           size_t n, idvec *out) {
    if (t->spec.ignore_merges) {
        int32_t id = lp_vocab_get(t, p, n);
        if (id >= 0) return idvec_push(out, id);
    }
    if (grow((void **)&w->syms, &w->syms_cap, n, sizeof(sym))) return -1;
    int k = 0;
    for (size_t i = 0; i < n;) {
        size_t l = lp_utf8_len(p + i, n - i);
        int32_t id = lp_vocab_get(t, p + i, l);
        if (id >= 0) {
            w->syms[k++].id = id;
        } else if (bytes_fall_back(t, p + i, l)) {
            for (size_t j = 0; j < l; j++) w->syms[k++].id = t->byte_id[(uint8_t)p[i + j]];
        } else if (t->spec.unk_id >= 0) {
            w->syms[k++].id = t->spec.unk_id;
        }
        i += l;
    }
    return merge_by_rank(t, w, k, out);
}

/* --------------------------------------------------------- score merging */

/* Orders floats as unsigned integers; higher score -> smaller key. */
static uint32_t score_key(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ~u;
}

static int push_score_pair(const lp_tokenizer *t, scratch *w, const char *p,
                           int32_t l, int32_t r) {
    if (l < 0 || r < 0) return 0;
    uint32_t size = w->syms[l].len + w->syms[r].len;
    int32_t id = lp_vocab_get(t, p + w->syms[l].start, size);
    if (id < 0) return 0;
    float sc = t->spec.scores ? t->spec.scores[id] : 0.0f;
    cand c = {(uint64_t)score_key(sc) << 32 | (uint32_t)l, l, r, (int32_t)size};
    return heap_push(w, c);
}

/* llama.cpp / sentencepiece BPE: repeatedly merge the adjacent pair whose
 * join is the highest-scoring token (leftmost on ties). */
static int word_chars_score(const lp_tokenizer *t, scratch *w, const char *p,
                            size_t n, idvec *out) {
    if (grow((void **)&w->syms, &w->syms_cap, n, sizeof(sym))) return -1;
    sym *s = w->syms;
    int k = 0;
    for (size_t i = 0; i < n; k++) {
        size_t l = lp_utf8_len(p + i, n - i);
        s[k] = (sym){0, k - 1, -1, (uint32_t)i, (uint32_t)l};
        if (k > 0) s[k - 1].next = k;
        i += l;
    }
    w->heap_n = 0;
    for (int i = 0; i + 1 < k; i++)
        if (push_score_pair(t, w, p, i, i + 1)) return -1;
    while (w->heap_n) {
        cand c = heap_pop(w);
        sym *L = &s[c.left], *R = &s[c.right];
        if (!L->len || !R->len || L->next != c.right ||
            L->len + R->len != (uint32_t)c.aux)
            continue;
        L->len += R->len;
        R->len = 0;
        L->next = R->next;
        if (R->next >= 0) s[R->next].prev = c.left;
        if (push_score_pair(t, w, p, L->prev, c.left) ||
            push_score_pair(t, w, p, c.left, L->next))
            return -1;
    }
    for (int i = 0; k > 0 && i >= 0; i = s[i].next) {
        int32_t id = lp_vocab_get(t, p + s[i].start, s[i].len);
        if (id >= 0 ? idvec_push(out, id) : push_bytes(t, p + s[i].start, s[i].len, out))
            return -1;
    }
    return 0;
}

/* -------------------------------------------------------- pre-tokenizer */

/* Runs pattern re over piece [s, e) of w->norm, appending matches and
 * gaps to w->parts. */
static loupe_status find_matches(const lp_tokenizer *t, scratch *w, int ri,
                                 size_t s, size_t e) {
    const char *subj = w->norm + s;
    size_t len = e - s, off = 0, last = 0;
    w->parts.n = 0;
    while (off < len) {
        int rc = pcre2_match(t->re[ri], (PCRE2_SPTR)subj, len, off, 0, w->md, w->mctx);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return lp_fail(LOUPE_ERR_INTERNAL, "tokenizer: pre-tokenizer "
                           "pattern %d: %s", ri, (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(w->md);
        if (ov[1] <= ov[0]) { /* empty match: step over one character */
            off = ov[0] + lp_utf8_len(subj + ov[0], len - ov[0]);
            continue;
        }
        if ((ov[0] > last && spans_push(&w->parts, s + last, s + ov[0], 0)) ||
            spans_push(&w->parts, s + ov[0], s + ov[1], 1))
            return lp_fail(LOUPE_ERR_NOMEM, "tokenizer: out of memory");
        last = off = ov[1];
    }
    if (last < len && spans_push(&w->parts, s + last, e, 0))
        return lp_fail(LOUPE_ERR_NOMEM, "tokenizer: out of memory");
    return LOUPE_OK;
}

/* Applies a split behaviour to w->parts, appending pieces to w->next. */
static int apply_behavior(scratch *w, uint8_t beh) {
    span *p = w->parts.v;
    size_t n = w->parts.n;
    int invert = (beh & LP_PRE_INVERT) != 0;
    beh &= (uint8_t)~LP_PRE_INVERT;
    for (size_t i = 0; i < n; i++) p[i].match ^= invert;
    spanvec *o = &w->next;
    size_t first = o->n;
    for (size_t i = 0; i < n; i++) {
        int m = p[i].match, prev_m = i > 0 && p[i - 1].match;
        if (beh == LP_PRE_REMOVED && m) continue;
        if ((beh == LP_PRE_MERGED_PREV && m && !prev_m && o->n > first) ||
            (beh == LP_PRE_CONTIGUOUS && m && prev_m)) {
            o->v[o->n - 1].e = p[i].e;
            continue;
        }
        if (beh == LP_PRE_MERGED_NEXT && !m && prev_m && o->n > first) {
            o->v[o->n - 1].e = p[i].e;
            continue;
        }
        if (spans_push(o, p[i].s, p[i].e, m)) return -1;
    }
    return 0;
}

/* Cuts w->norm[0..n) into words (w->words) with every pattern in turn. */
static loupe_status pre_tokenize(const lp_tokenizer *t, scratch *w, size_t n) {
    const lp_tok_spec *s = &t->spec;
    w->words.n = 0;
    if (spans_push(&w->words, 0, n, 0))
        return lp_fail(LOUPE_ERR_NOMEM, "tokenizer: out of memory");
    for (int ri = 0; ri < s->n_pre; ri++) {
        w->next.n = 0;
        uint8_t beh = s->pre_behavior ? s->pre_behavior[ri] : LP_PRE_ISOLATED;
        for (size_t k = 0; k < w->words.n; k++) {
            LP_TRY(find_matches(t, w, ri, w->words.v[k].s, w->words.v[k].e));
            if (apply_behavior(w, beh))
                return lp_fail(LOUPE_ERR_NOMEM, "tokenizer: out of memory");
        }
        spanvec tmp = w->words;
        w->words = w->next;
        w->next = tmp;
    }
    return LOUPE_OK;
}

/* --------------------------------------------------------------- segments */

/* Whether a segment gets a prefix space (see LP_PREFIX_*). */
static int wants_prefix(const lp_tok_spec *s, const char *seg, int at_text_start) {
    switch (s->add_prefix_space) {
    case LP_PREFIX_ALWAYS: return 1;
    case LP_PREFIX_FIRST: return at_text_start && seg[0] != ' ';
    case LP_PREFIX_NO_SPACE: return seg[0] != ' ';
    default: return 0;
    }
}

/* Copies seg into w->norm with the kind's normalisation; SPM writes every
 * space (and the prefix) as "▁". */
static int normalize(const lp_tokenizer *t, scratch *w, const char *seg,
                     size_t n, int at_text_start, size_t *out_n) {
    const lp_tok_spec *s = &t->spec;
    int pre = wants_prefix(s, seg, at_text_start);
    if (grow((void **)&w->norm, &w->norm_cap, 3 * n + 4, 1)) return -1;
    size_t o = 0;
    if (s->kind == LP_TOK_SPM) {
        if (pre) { memcpy(w->norm, "\xe2\x96\x81", 3); o = 3; }
        for (size_t i = 0; i < n; i++) {
            if (seg[i] == ' ') { memcpy(w->norm + o, "\xe2\x96\x81", 3); o += 3; }
            else w->norm[o++] = seg[i];
        }
    } else {
        if (pre) w->norm[o++] = ' ';
        memcpy(w->norm + o, seg, n);
        o += n;
    }
    *out_n = o;
    return 0;
}

static loupe_status encode_segment(const lp_tokenizer *t, scratch *w,
                                   const char *seg, size_t n,
                                   int at_text_start, idvec *out) {
    size_t nn;
    if (n == 0) return LOUPE_OK;
    if (normalize(t, w, seg, n, at_text_start, &nn))
        return lp_fail(LOUPE_ERR_NOMEM, "tokenizer: out of memory");
    LP_TRY(pre_tokenize(t, w, nn));
    for (size_t k = 0; k < w->words.n; k++) {
        const char *p = w->norm + w->words.v[k].s;
        size_t len = w->words.v[k].e - w->words.v[k].s;
        int rc;
        if (len == 0) continue;
        if (t->spec.kind == LP_TOK_BPE_BYTES) rc = word_bytes(t, w, p, len, out);
        else if (t->spec.n_merges > 0) rc = word_chars_rank(t, w, p, len, out);
        else rc = word_chars_score(t, w, p, len, out);
        if (rc) return lp_fail(LOUPE_ERR_NOMEM, "tokenizer: out of memory");
    }
    return LOUPE_OK;
}

/* --------------------------------------------------------- added tokens */

/* Unicode White_Space as Rust's char::is_whitespace sees it (HF strips
 * this around lstrip / rstrip added tokens). */
static int is_ws(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

static size_t skip_ws_fwd(const char *s, size_t i, size_t n) {
    uint32_t cp;
    size_t l;
    while (i < n && (l = lp_utf8_get(s + i, n - i, &cp)) && is_ws(cp)) i += l;
    return i;
}

/* End of s[from..end) once trailing whitespace is removed. */
static size_t trim_ws_back(const char *s, size_t from, size_t end) {
    size_t keep = from, i = from;
    while (i < end) {
        uint32_t cp;
        size_t l = lp_utf8_get(s + i, end - i, &cp);
        if (!l) l = 1, cp = 0xFFFD;
        i += l;
        if (!is_ws(cp)) keep = i;
    }
    return keep;
}

/* Leftmost, then longest, added token in text[from..n); -1 if none. */
static int32_t find_added(const lp_tokenizer *t, const char *text, size_t n,
                          size_t from, int parse_special, size_t *at) {
    for (size_t i = from; i < n; i++) {
        uint8_t b = (uint8_t)text[i];
        for (int k = t->added_start[b]; k < t->added_start[b + 1]; k++) {
            int32_t id = t->added[k];
            size_t l = (size_t)t->piece_len[id];
            if (!parse_special && (t->spec.attrs[id] & LP_TOKEN_SPECIAL)) continue;
            if (l <= n - i && memcmp(text + i, t->spec.pieces[id], l) == 0) {
                *at = i;
                return id;
            }
        }
    }
    return -1;
}

/* ------------------------------------------------------------------ API */

static loupe_status scratch_init(const lp_tokenizer *t, scratch *w) {
    memset(w, 0, sizeof *w);
    if (!t->spec.n_pre) return LOUPE_OK;
    w->md = pcre2_match_data_create(8, NULL);
    w->mctx = pcre2_match_context_create(NULL);
    w->jit = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
    if (!w->md || !w->mctx || !w->jit)
        return lp_fail(LOUPE_ERR_NOMEM, "tokenizer: out of memory");
    pcre2_jit_stack_assign(w->mctx, NULL, w->jit);
    return LOUPE_OK;
}

static loupe_status encode_text(const lp_tokenizer *t, scratch *w,
                                const char *text, size_t len,
                                int parse_special, idvec *out) {
    size_t pos = 0;
    while (pos < len) {
        size_t at = len;
        int32_t id = t->n_added ? find_added(t, text, len, pos, parse_special, &at) : -1;
        size_t end = at;
        if (id >= 0 && (t->spec.attrs[id] & LP_TOKEN_LSTRIP))
            end = trim_ws_back(text, pos, at);
        LP_TRY(encode_segment(t, w, text + pos, end - pos, pos == 0, out));
        if (id < 0) break;
        if (idvec_push(out, id)) return lp_fail(LOUPE_ERR_NOMEM, "tokenizer: out of memory");
        pos = at + (size_t)t->piece_len[id];
        if (t->spec.attrs[id] & LP_TOKEN_RSTRIP) pos = skip_ws_fwd(text, pos, len);
    }
    return LOUPE_OK;
}

loupe_status lp_tok_encode(const lp_tokenizer *t, const char *text, size_t len,
                           int add_special, int parse_special, int32_t **ids,
                           size_t *n) {
    *ids = NULL;
    *n = 0;
    if (!t || (!text && len))
        return lp_fail(LOUPE_ERR_ARG, "tokenize: no tokenizer or no text");
    if (len > (size_t)1 << 29) /* symbol indices are int */
        return lp_fail(LOUPE_ERR_ARG, "tokenize: text of %zu bytes is too long (max 512 MiB)", len);
    const lp_tok_spec *s = &t->spec;
    idvec out = {0};
    scratch w;
    loupe_status st = scratch_init(t, &w);
    if (st == LOUPE_OK && add_special && s->add_bos && idvec_push(&out, s->bos_id))
        st = lp_fail(LOUPE_ERR_NOMEM, "tokenizer: out of memory");
    if (st == LOUPE_OK) st = encode_text(t, &w, text, len, parse_special, &out);
    if (st == LOUPE_OK && add_special && s->add_eos && idvec_push(&out, s->eos_id))
        st = lp_fail(LOUPE_ERR_NOMEM, "tokenizer: out of memory");
    size_t count = out.n;
    if (st == LOUPE_OK && !out.v && !(out.v = malloc(sizeof *out.v))) /* never NULL */
        st = lp_fail(LOUPE_ERR_NOMEM, "tokenizer: out of memory");
    scratch_free(&w);
    if (st != LOUPE_OK) {
        free(out.v);
        return st;
    }
    *ids = out.v;
    *n = count;
    return LOUPE_OK;
}
