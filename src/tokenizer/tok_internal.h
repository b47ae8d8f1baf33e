/*
 * tok_internal.h — what the tokenizer's .c files share: the runtime
 * lp_tokenizer, its lookup tables, and small helpers for building specs.
 * Not part of any public interface.
 */
#ifndef LOUPE_TOK_INTERNAL_H
#define LOUPE_TOK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer.h"

/* ------------------------------------------------------------ hash maps */

/* Piece text -> id. Open addressing; keys live in the spec's pieces. */
typedef struct {
    int32_t *slot;  /* (cap) token id or -1 */
    uint32_t *hash; /* (cap) full hash of the slot's key */
    uint32_t cap;   /* power of two */
} lp_str_map;

/* (left id, right id) -> merge rank and merged id. */
typedef struct {
    uint64_t *key;  /* (cap) left << 32 | right, or UINT64_MAX if empty */
    int32_t *rank;  /* (cap) */
    int32_t *merged;/* (cap) */
    uint32_t cap;
} lp_pair_map;

uint32_t lp_hash_bytes(const char *s, size_t n);

/* ----------------------------------------------------------- tokenizer */

struct lp_tokenizer {
    lp_tok_spec spec;
    int32_t *piece_len;   /* (n_vocab) strlen of each piece */
    lp_str_map vocab;     /* piece -> id (lowest id wins on duplicates) */
    lp_pair_map merges;   /* BPE merges by id pair */
    int32_t byte_id[256]; /* byte-level BPE: id of the byte's mapped char;
                             SPM: id of its <0xAB> piece; -1 if none */
    /* decoded bytes of every token, concatenated */
    char *dec;            /* (dec_off[n_vocab]) */
    uint32_t *dec_off;    /* (n_vocab + 1) */
    int max_dec;          /* longest decoded token */
    /* pre-tokenizer */
    pcre2_code **re;      /* (spec.n_pre) compiled patterns */
    /* added tokens, matched before pre-tokenizing */
    int32_t *added;       /* (n_added) ids sorted by first byte, then
                             longest first */
    int n_added;
    int32_t added_start[257]; /* added[added_start[b] .. added_start[b+1]]
                                 start with byte b */
};

/* Vocabulary lookup (-1 if absent) and merge rank of a pair (-1 if the
 * pair does not merge; *merged gets the result). */
int32_t lp_vocab_get(const lp_tokenizer *t, const char *s, size_t n);
int lp_pair_rank(const lp_tokenizer *t, int32_t a, int32_t b, int32_t *merged);

/* GPT-2 byte <-> unicode map: byte b is shown as code point
 * lp_byte_to_cp(b); lp_cp_to_byte gives -1 for a code point outside it. */
uint32_t lp_byte_to_cp(uint8_t b);
int lp_cp_to_byte(uint32_t cp);

/* UTF-8 helpers. lp_utf8_len: length of the sequence starting at s (1 for
 * an invalid lead byte or a truncated sequence), never more than n. */
size_t lp_utf8_len(const char *s, size_t n);
size_t lp_utf8_put(uint32_t cp, char *out); /* out has room for 4 */
/* Decodes one code point; returns its length, or 0 if s is not valid. */
size_t lp_utf8_get(const char *s, size_t n, uint32_t *cp);

/* ------------------------------------------------------- spec building */

/* A growable list of malloc'd strings. */
typedef struct {
    char **v;
    int n, cap;
} lp_strvec;

int lp_strvec_pushn(lp_strvec *sv, const char *s, size_t n); /* copies; 0 or -1 */
void lp_strvec_free(lp_strvec *sv);

char *lp_strdup(const char *s);
char *lp_strndup(const char *s, size_t n);

/* Adds one pre-tokenizer pattern with its behaviour to the spec. */
loupe_status lp_spec_add_pre(lp_tok_spec *s, const char *pattern,
                             uint8_t behavior);

/* Fills the pre-tokenizer (patterns, ignore_merges, default add_bos) for a
 * GGUF / llama.cpp pre-tokenizer name. LOUPE_ERR_UNSUPPORTED for unknown
 * names (message lists the known ones; the caller prefixes the file). */
loupe_status lp_spec_set_pre_by_name(lp_tok_spec *s, const char *name,
                                     int *default_add_bos);

/* Preset name whose patterns the spec has exactly, or NULL. */
const char *lp_pre_name_of(const lp_tok_spec *s);

/* The GPT-2 ByteLevel pattern (HF ByteLevel use_regex=true). */
extern const char lp_pre_gpt2[];

/* Reads a whole file; NUL-terminated; *out malloc'd. */
loupe_status lp_read_text_file(const char *path, char **out, size_t *len);

/* Sorts a freshly read spec's vocabulary into a dense id array: pieces[i]
 * for id i. Ids not given become "" with LP_TOKEN_UNUSED. */
typedef struct {
    const char *piece;
    int32_t id;
} lp_vocab_entry;

loupe_status lp_spec_set_vocab(lp_tok_spec *s, const lp_vocab_entry *e,
                               int n, const char *what);

#endif
