/*
 * tokenizer.h — text <-> token ids, exact in both directions.
 *
 * Every source (tokenizer.json, vocab.json + merges.txt, a GGUF vocabulary,
 * a .loupe file) is first read into an lp_tok_spec: plain data that fully
 * describes the tokenizer and can be written back out (the .loupe format
 * stores it). lp_tok_build() turns a spec into the runtime lp_tokenizer.
 */
#ifndef LOUPE_TOKENIZER_H
#define LOUPE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "../io/tensors.h"
#include "loupe.h"

typedef enum {
    LP_TOK_BPE_BYTES = 1, /* byte-level BPE (GPT-2, Llama 3, Qwen2) */
    LP_TOK_SPM = 2        /* SentencePiece-style BPE: Metaspace, byte fallback
                             (Llama 2, TinyLlama, Phi-3) */
} lp_tok_kind;

/* Token attributes (bit flags). */
enum {
    LP_TOKEN_NORMAL = 0,
    LP_TOKEN_SPECIAL = 1, /* control token: <s>, <|endoftext|>, <|im_start|> */
    LP_TOKEN_BYTE = 2,    /* <0xAB> byte-fallback piece */
    LP_TOKEN_ADDED = 4,   /* an added token, matched before pre-tokenizing */
    LP_TOKEN_UNUSED = 8,
    LP_TOKEN_LSTRIP = 16, /* added token swallows whitespace on its left */
    LP_TOKEN_RSTRIP = 32  /* ...and on its right (HF lstrip / rstrip) */
};

/* How a pre-tokenizer pattern splits a piece (HF Split behaviours).
 * The matches and the gaps between them both become pieces unless said. */
enum {
    LP_PRE_ISOLATED = 0,     /* matches and gaps are separate pieces */
    LP_PRE_REMOVED = 1,      /* matches are dropped */
    LP_PRE_MERGED_PREV = 2,  /* a match joins the piece before it */
    LP_PRE_MERGED_NEXT = 3,  /* a match joins the piece after it */
    LP_PRE_CONTIGUOUS = 4,   /* adjacent matches form one piece */
    LP_PRE_INVERT = 16       /* flag: the pattern describes the gaps */
};

/* add_prefix_space values: whether a text segment (the text between added
 * tokens) gets "▁" (SPM) or " " (byte-level) in front. */
enum {
    LP_PREFIX_NEVER = 0,
    LP_PREFIX_ALWAYS = 1,   /* every segment, unconditionally (HF Prepend("▁")
                               normalizer, llama.cpp SPM) */
    LP_PREFIX_FIRST = 2,    /* only a segment at the very start of the text,
                               unless it starts with a space (HF Metaspace
                               prepend_scheme "first") */
    LP_PREFIX_NO_SPACE = 3  /* every segment unless it starts with a space
                               (HF Metaspace "always", ByteLevel
                               add_prefix_space) */
};

typedef struct {
    lp_tok_kind kind;
    int n_vocab;
    char **pieces;      /* (n_vocab) NUL-terminated vocabulary strings */
    float *scores;      /* (n_vocab) SPM scores (merged by score when there
                           are no merges), or NULL */
    uint8_t *attrs;     /* (n_vocab) LP_TOKEN_* flags */
    int n_merges;
    char **merges;      /* (n_merges) "left right", rank = index; when
                           present, merging is by rank (SPM too) */
    int n_pre;
    char **pre_regex;   /* (n_pre) PCRE2 split patterns applied in order */
    uint8_t *pre_behavior; /* (n_pre) LP_PRE_* (| LP_PRE_INVERT); NULL: all
                              LP_PRE_ISOLATED */
    char *pre_name;     /* e.g. "gpt2", "llama3", "qwen2" (informational) */
    int bos_id, eos_id, unk_id, pad_id; /* -1 if none */
    int add_bos, add_eos;
    int add_prefix_space; /* LP_PREFIX_* */
    int byte_fallback;
    int ignore_merges;    /* Llama 3: whole pre-token in vocab wins */
    char *chat_template;  /* NULL if none */
    int n_eos_extra;      /* further EOS ids (generation_config eos list) */
    int *eos_extra;
    char *source;         /* file it was read from, for lp_tok_build's
                             messages; NULL if none (not stored) */
} lp_tok_spec;

void lp_tok_spec_free(lp_tok_spec *s);

/* Spec readers. Errors name the file and what is wrong with it. */
loupe_status lp_tok_spec_from_hf_dir(const char *dir, lp_tok_spec *out);
loupe_status lp_tok_spec_from_tokenizer_json(const char *path, lp_tok_spec *out);
loupe_status lp_tok_spec_from_gguf(const lp_tensor_set *ts, const char *path,
                                   lp_tok_spec *out);

typedef struct lp_tokenizer lp_tokenizer;

/* Takes ownership of *spec (it is zeroed). */
loupe_status lp_tok_build(lp_tok_spec *spec, lp_tokenizer **out);
void lp_tok_free(lp_tokenizer *t);
const lp_tok_spec *lp_tok_get_spec(const lp_tokenizer *t);

/* Encodes text; *ids is malloc'd (caller frees). */
loupe_status lp_tok_encode(const lp_tokenizer *t, const char *text, size_t len,
                           int add_special, int parse_special, int32_t **ids,
                           size_t *n);
/* Raw bytes of a token (byte-level mapping undone, <0xAB> -> one byte,
 * "▁" -> " "). Returns the byte count, or -1 for an id out of range.
 * Writes at most cap bytes. Special tokens give their text. */
int lp_tok_bytes(const lp_tokenizer *t, int32_t id, char *buf, size_t cap);
int lp_tok_n_vocab(const lp_tokenizer *t);
const char *lp_tok_piece(const lp_tokenizer *t, int32_t id);
int lp_tok_is_eos(const lp_tokenizer *t, int32_t id);
/* Longest byte string any single token decodes to (for detok buffers). */
int lp_tok_max_token_bytes(const lp_tokenizer *t);
/* Id of a piece exactly as stored in the vocabulary, or -1. */
int32_t lp_tok_find(const lp_tokenizer *t, const char *piece, size_t len);
/* Names of the GGUF tokenizer.ggml.pre values loupe knows, ", "-joined. */
const char *lp_tok_known_pre_names(void);

/* Streaming detokenizer: feed ids, get text that never ends inside a
 * UTF-8 character (incomplete bytes are held until the next call). */
typedef struct {
    char pending[8];
    int n_pending;
    int at_start;  /* SPM: the first token's leading space is dropped
                      (see decode.c for the rule) */
} lp_detok;

void lp_detok_init(lp_detok *d, const lp_tokenizer *t);
/* Appends the text of id to out (cap bytes); returns bytes written.
 * Output is cut at cap; cap >= 3 * (lp_tok_max_token_bytes(t) + 3) never
 * cuts (every invalid byte can become a 3-byte U+FFFD). */
size_t lp_detok_push(lp_detok *d, const lp_tokenizer *t, int32_t id, char *out,
                     size_t cap);
/* Flushes held bytes (invalid sequences come out as U+FFFD). */
size_t lp_detok_flush(lp_detok *d, char *out, size_t cap);

#endif
