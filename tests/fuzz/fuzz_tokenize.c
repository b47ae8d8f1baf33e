/*
 * fuzz_tokenize — real tokenizers encoding arbitrary bytes, then decoding.
 *
 * Byte 0 picks the tokenizer (value % 3) and, in bit 2, parse_special;
 * the rest is the text.
 *   0: GPT-2 tokenizer.json (byte-level BPE)
 *   1: Qwen2.5 vocab.json + merges.txt (byte-level BPE, Qwen2 pre-tokenizer)
 *   2: TinyLlama tokenizer.json (SentencePiece BPE with byte fallback)
 * Never crash; ids in range. Byte-level: the bytes of the ids are exactly
 * the text (decode(encode(x)) == x), whatever the bytes. SentencePiece:
 * for valid UTF-8 without special-token parsing, the streaming
 * detokenizer gives back the text (decode.c's documented guarantee).
 * Byte-level tokenizers may refuse invalid UTF-8 with an error, never
 * with a crash.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"

static lp_tokenizer *fz_toks[3];

static lp_tokenizer *fz_load(int which) {
    lp_tok_spec spec;
    loupe_status st;
    if (which == 0)
        st = lp_tok_spec_from_tokenizer_json(fz_shared("models/hf/gpt2/tokenizer.json"), &spec);
    else if (which == 1)
        st = lp_tok_spec_from_hf_dir(fz_shared("models/hf/Qwen2.5-0.5B-Instruct"), &spec);
    else
        st = lp_tok_spec_from_tokenizer_json(
            fz_shared("models/hf/TinyLlama-1.1B-Chat-v1.0/tokenizer.json"), &spec);
    lp_tokenizer *t = NULL;
    if (st == LOUPE_OK) st = lp_tok_build(&spec, &t);
    if (st != LOUPE_OK) fz_fail("cannot load tokenizer %d: %s", which, loupe_last_error());
    return t;
}

static void fz_free_toks(void) {
    for (int i = 0; i < 3; i++) lp_tok_free(fz_toks[i]);
}

/* Whether s[0..n) is valid UTF-8 (no overlongs, surrogates, > U+10FFFF). */
static int fz_valid_utf8(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t len = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
                   : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        if (!len || len > n - i) return 0;
        for (size_t k = 1; k < len; k++)
            if ((s[i + k] & 0xC0) != 0x80) return 0;
        if (len >= 3) {
            uint8_t d = s[i + 1];
            if ((c == 0xE0 && d < 0xA0) || (c == 0xED && d > 0x9F) || (c == 0xF0 && d < 0x90) ||
                (c == 0xF4 && d > 0x8F))
                return 0;
        }
        i += len;
    }
    return 1;
}

static void fz_mismatch(const char *what, int which, const char *got, size_t n_got,
                        const uint8_t *want, size_t n_want) {
    size_t i = 0;
    while (i < n_got && i < n_want && (uint8_t)got[i] == want[i]) i++;
    fz_fail("tokenizer %d: %s differs from the text at byte %zu (%zu vs %zu bytes)", which,
            what, i, n_got, n_want);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    for (int i = 0; i < 3; i++) fz_toks[i] = fz_load(i);
    atexit(fz_free_toks);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int which = data[0] % 3, parse_special = (data[0] >> 2) & 1;
    const uint8_t *text = data + 1;
    size_t len = size - 1;
    const lp_tokenizer *tok = fz_toks[which];
    int32_t *ids = NULL;
    size_t n = 0;
    loupe_status st = lp_tok_encode(tok, (const char *)text, len, 0, parse_special, &ids, &n);
    fz_check_error(st, "lp_tok_encode");
    int valid = fz_valid_utf8(text, len);
    if (st != LOUPE_OK) {
        if (valid) fz_fail("tokenizer %d refused valid UTF-8: %s", which, loupe_last_error());
        return 0;
    }
    int nv = lp_tok_n_vocab(tok), maxb = lp_tok_max_token_bytes(tok);
    size_t cap = 3 * ((size_t)maxb + 3);
    char *raw = malloc(n * (size_t)maxb + 1), *dec = malloc((n + 1) * cap + 1);
    if (!raw || !dec) fz_fail("out of memory");
    size_t n_raw = 0, n_dec = 0;
    lp_detok d;
    lp_detok_init(&d, tok);
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= nv) fz_fail("id %d of %d", ids[i], nv);
        int b = lp_tok_bytes(tok, ids[i], raw + n_raw, (size_t)maxb);
        if (b < 0 || b > maxb) fz_fail("token %d: %d bytes (max %d)", ids[i], b, maxb);
        n_raw += (size_t)b;
        n_dec += lp_detok_push(&d, tok, ids[i], dec + n_dec, cap);
    }
    n_dec += lp_detok_flush(&d, dec + n_dec, cap);
    int byte_level = lp_tok_get_spec(tok)->kind == LP_TOK_BPE_BYTES;
    if (byte_level && (n_raw != len || memcmp(raw, text, len)))
        fz_mismatch("the bytes of the ids", which, raw, n_raw, text, len);
    if (valid && (byte_level || !parse_special) && (n_dec != len || memcmp(dec, text, len)))
        fz_mismatch("the streaming decode", which, dec, n_dec, text, len);
    free(raw);
    free(dec);
    free(ids);
    return 0;
}
