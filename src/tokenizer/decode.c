/*
 * decode.c — token ids -> text.
 *
 * lp_tok_bytes gives the exact bytes of one token (byte-level map undone,
 * <0xAB> -> that byte, "▁" -> ' '; added and special tokens as their text).
 *
 * The streaming detokenizer concatenates those bytes and only lets out
 * whole UTF-8 characters: an incomplete trailing sequence is held until the
 * next token completes it; bytes that can never form a character come out
 * as U+FFFD, and lp_detok_flush turns a held incomplete sequence into one
 * U+FFFD.
 *
 * Leading space (SPM tokenizers that prepend "▁", i.e. add_prefix_space):
 * the first token pushed after lp_detok_init loses one leading ' ' (the
 * space the encoder added), unless it is a special token, whose text is
 * kept whole; later tokens are never stripped. This is what HF's
 * Strip(start=1) decoder does to the start of the decoded string and what
 * llama.cpp's detokenize does to the first token: [<s>, ▁Hello] decodes to
 * "<s> Hello", [▁Hello] (specials skipped) to "Hello". So for such a
 * tokenizer decode(encode(x)) == x for text without added tokens.
 */
#include <string.h>

#include "../error.h"
#include "tok_internal.h"

/* ---------------------------------------------------------- token bytes */

int lp_tok_bytes(const lp_tokenizer *t, int32_t id, char *buf, size_t cap) {
    if (!t || id < 0 || id >= t->spec.n_vocab) return -1;
    size_t n = t->dec_off[id + 1] - t->dec_off[id];
    memcpy(buf, t->dec + t->dec_off[id], n < cap ? n : cap);
    return (int)n;
}

/* ----------------------------------------------------------- streaming */

void lp_detok_init(lp_detok *d, const lp_tokenizer *t) {
    memset(d, 0, sizeof *d);
    d->at_start = t->spec.kind == LP_TOK_SPM && t->spec.add_prefix_space != LP_PREFIX_NEVER;
}

typedef struct {
    char *p;
    size_t n, cap;
} sink;

static void put(sink *o, const char *s, size_t n) {
    if (n > o->cap - o->n) n = o->cap - o->n;
    memcpy(o->p + o->n, s, n);
    o->n += n;
}

static const char replacement[] = "\xef\xbf\xbd"; /* U+FFFD */

/* Expected length of a sequence from its lead byte; 0 if c cannot start
 * one. */
static size_t seq_len(uint8_t c) {
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) return 3;
    if (c >= 0xF0 && c <= 0xF4) return 4;
    return 0;
}

/* Whether s[0..n) (n < full length) can still become a valid character:
 * the second byte has the narrower ranges after E0, ED, F0 and F4. */
static int valid_prefix(const uint8_t *s, size_t n) {
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    if (n < 2) return 1;
    uint8_t c = s[0], d = s[1];
    if (c == 0xE0) return d >= 0xA0;
    if (c == 0xED) return d <= 0x9F;
    if (c == 0xF0) return d >= 0x90;
    if (c == 0xF4) return d <= 0x8F;
    return 1;
}

/* Feeds bytes through the UTF-8 filter into o. */
static void feed(lp_detok *d, const char *s, size_t n, sink *o) {
    for (size_t i = 0; i < n; i++) {
        d->pending[d->n_pending++] = s[i];
        const uint8_t *p = (const uint8_t *)d->pending;
        size_t want = seq_len(p[0]);
        if (want == 0) { /* stray byte */
            put(o, replacement, 3);
            d->n_pending = 0;
            continue;
        }
        if (!valid_prefix(p, (size_t)d->n_pending)) {
            /* the held bytes are a dead end: one U+FFFD, then retry the
             * newest byte on its own */
            put(o, replacement, 3);
            d->n_pending = 0;
            i--;
            continue;
        }
        if ((size_t)d->n_pending < want) continue;
        put(o, d->pending, want);
        d->n_pending = 0;
    }
}

size_t lp_detok_push(lp_detok *d, const lp_tokenizer *t, int32_t id, char *out,
                     size_t cap) {
    sink o = {out, 0, cap};
    if (!t || id < 0 || id >= t->spec.n_vocab) return 0;
    const char *s = t->dec + t->dec_off[id];
    size_t n = t->dec_off[id + 1] - t->dec_off[id];
    if (d->at_start && !(t->spec.attrs[id] & LP_TOKEN_SPECIAL) && n > 0 && s[0] == ' ')
        s++, n--;
    d->at_start = 0;
    feed(d, s, n, &o);
    return o.n;
}

size_t lp_detok_flush(lp_detok *d, char *out, size_t cap) {
    sink o = {out, 0, cap};
    if (d->n_pending) put(&o, replacement, 3);
    d->n_pending = 0;
    return o.n;
}
