/*
 * test_tokenizer.c — tokenizer parity and robustness.
 *
 * Expectations come from outside loupe:
 *   - shared/models/vocab/ggml-vocab-*.gguf.inp/.out: texts and the ids
 *     Hugging Face tokenizers gives for them (llama.cpp's test vectors,
 *     encoded without special tokens: the SPM .out lines have no BOS);
 *   - the real GPT-2, Qwen2.5, TinyLlama and Phi-3.5 tokenizer files;
 *   - small hand-made tokenizers whose results follow by hand from the
 *     HF rules (merge order, split behaviours, lstrip / rstrip);
 *   - UTF-8 itself (the bytes of an emoji) for the streaming detokenizer.
 * The llama-bpe vectors are not checked: no Llama 3 vocabulary is among the
 * fixtures.
 */
#include "testutil.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "src/error.h"
#include "src/model.h"
#include "src/tokenizer/tokenizer.h"

/* ------------------------------------------------------------- loading */

typedef enum { SRC_JSON, SRC_DIR, SRC_GGUF } src_kind;

static loupe_status try_load(src_kind k, const char *path, lp_tokenizer **t) {
    lp_tok_spec spec;
    loupe_status st;
    *t = NULL;
    if (k == SRC_JSON) {
        st = lp_tok_spec_from_tokenizer_json(path, &spec);
    } else if (k == SRC_DIR) {
        st = lp_tok_spec_from_hf_dir(path, &spec);
    } else {
        lp_tensor_set ts;
        memset(&ts, 0, sizeof ts);
        st = lp_read_gguf(path, &ts);
        if (st == LOUPE_OK) st = lp_tok_spec_from_gguf(&ts, path, &spec);
        lp_tensor_set_free(&ts); /* the spec owns copies of everything */
    }
    if (st != LOUPE_OK) return st;
    return lp_tok_build(&spec, t);
}

static lp_tokenizer *load(src_kind k, const char *path) {
    lp_tokenizer *t;
    loupe_status st = try_load(k, path, &t);
    if (st != LOUPE_OK) fprintf(stderr, "load %s: %s\n", path, loupe_last_error());
    assert_int_equal(st, LOUPE_OK);
    return t;
}

/* ------------------------------------------------------------- vectors */

/* Texts of an .inp file: separated by "\n__ggml_vocab_test__\n", the file
 * ending with one (so the last, empty, piece is not a text). */
typedef struct {
    char *inp, *out;
    const char *text[128];
    size_t len[128];
    const char *ids[128]; /* line of the .out file */
    int n;
} vectors;

static void read_vectors(const char *name, vectors *v) {
    char rel[256];
    memset(v, 0, sizeof *v);
    snprintf(rel, sizeof rel, "models/vocab/ggml-vocab-%s.gguf.inp", name);
    size_t n;
    v->inp = tu_read_file(tu_shared(rel), &n);
    snprintf(rel, sizeof rel, "models/vocab/ggml-vocab-%s.gguf.out", name);
    v->out = tu_read_file(tu_shared(rel), NULL);
    assert_non_null(v->inp);
    assert_non_null(v->out);
    static const char sep[] = "\n__ggml_vocab_test__\n";
    char *p = v->inp, *o = v->out;
    for (char *e; (e = strstr(p, sep)) && v->n < 128; p = e + strlen(sep)) {
        char *nl = strchr(o, '\n');
        assert_non_null(nl);
        *nl = 0;
        v->text[v->n] = p;
        v->len[v->n] = (size_t)(e - p);
        v->ids[v->n++] = o;
        o = nl + 1;
    }
    assert_int_equal((size_t)(p - v->inp), n); /* nothing after the last separator */
    assert_int_equal(v->n, 46);
}

static void free_vectors(vectors *v) {
    free(v->inp);
    free(v->out);
}

/* Decodes ids with the streaming detokenizer, pushing one id at a time. */
static size_t detok_all(const lp_tokenizer *t, const int32_t *ids, size_t n,
                        char *buf, size_t cap) {
    lp_detok d;
    size_t len = 0;
    lp_detok_init(&d, t);
    for (size_t i = 0; i < n; i++) len += lp_detok_push(&d, t, ids[i], buf + len, cap - len);
    return len + lp_detok_flush(&d, buf + len, cap - len);
}

/* Every text encodes to exactly the expected ids and decodes back. */
static void check_vectors(const lp_tokenizer *t, const char *name) {
    vectors v;
    read_vectors(name, &v);
    static char got[16384], back[16384];
    for (int i = 0; i < v.n; i++) {
        int32_t *ids;
        size_t n, g = 0;
        assert_int_equal(lp_tok_encode(t, v.text[i], v.len[i], 0, 0, &ids, &n), LOUPE_OK);
        got[0] = 0;
        for (size_t k = 0; k < n; k++) g += (size_t)snprintf(got + g, sizeof got - g, " %d", ids[k]);
        if (strcmp(got, v.ids[i]) != 0)
            fprintf(stderr, "%s text %d [%.*s]\n  want%s\n  got %s\n", name, i,
                    (int)v.len[i], v.text[i], v.ids[i], got);
        assert_string_equal(got, v.ids[i]);
        size_t bl = detok_all(t, ids, n, back, sizeof back);
        assert_int_equal(bl, v.len[i]);
        assert_memory_equal(back, v.text[i], bl);
        free(ids);
    }
    free_vectors(&v);
}

static void test_gguf_gpt2_vectors(void **state) {
    (void)state;
    lp_tokenizer *t = load(SRC_GGUF, tu_shared("models/vocab/ggml-vocab-gpt-2.gguf"));
    const lp_tok_spec *s = lp_tok_get_spec(t);
    assert_int_equal(s->kind, LP_TOK_BPE_BYTES);
    assert_int_equal(lp_tok_n_vocab(t), 50257);
    assert_int_equal(s->eos_id, 50256);
    check_vectors(t, "gpt-2");
    lp_tok_free(t);
}

static void test_gguf_spm_vectors(void **state) {
    (void)state;
    lp_tokenizer *t = load(SRC_GGUF, tu_shared("models/vocab/ggml-vocab-llama-spm.gguf"));
    const lp_tok_spec *s = lp_tok_get_spec(t);
    assert_int_equal(s->kind, LP_TOK_SPM);
    assert_int_equal(s->n_merges, 0); /* merged by score */
    assert_int_equal(s->bos_id, 1);
    assert_int_equal(s->eos_id, 2);
    check_vectors(t, "llama-spm");
    lp_tok_free(t);
}

static void test_hf_gpt2_json_vectors(void **state) {
    (void)state;
    lp_tokenizer *t = load(SRC_JSON, tu_shared("models/hf/gpt2/tokenizer.json"));
    assert_string_equal(lp_tok_get_spec(t)->pre_name, "gpt2");
    check_vectors(t, "gpt-2");
    lp_tok_free(t);
}

/* A scratch directory holding links to some of a fixture dir's files. */
static const char *link_dir(const char *name, const char *src_rel, const char *const *files) {
    static char dir[4096];
    snprintf(dir, sizeof dir, "%s", tu_tmp(name));
    mkdir(dir, 0755);
    char src_dir[PATH_MAX]; /* absolute: the links must not depend on the cwd */
    assert_non_null(realpath(tu_shared(src_rel), src_dir));
    for (int i = 0; files[i]; i++) {
        char dst[4200], src[PATH_MAX + 256];
        snprintf(src, sizeof src, "%s/%s", src_dir, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        unlink(dst);
        assert_int_equal(symlink(src, dst), 0);
    }
    return dir;
}

static void test_hf_gpt2_vocab_merges_vectors(void **state) {
    (void)state;
    static const char *const files[] = {"vocab.json", "merges.txt", "tokenizer_config.json",
                                        "config.json", "generation_config.json", NULL};
    const char *dir = link_dir("tok_gpt2_vm", "models/hf/gpt2", files);
    lp_tokenizer *t = load(SRC_DIR, dir);
    assert_string_equal(lp_tok_get_spec(t)->pre_name, "gpt2");
    assert_int_equal(lp_tok_get_spec(t)->eos_id, 50256); /* generation_config */
    check_vectors(t, "gpt-2");
    lp_tok_free(t);
}

static void test_qwen2_dir_vectors(void **state) {
    (void)state;
    lp_tokenizer *t = load(SRC_DIR, tu_shared("models/hf/Qwen2.5-0.5B-Instruct"));
    const lp_tok_spec *s = lp_tok_get_spec(t);
    assert_string_equal(s->pre_name, "qwen2");
    assert_int_equal(lp_tok_n_vocab(t), 151665); /* 151643 + 22 added */
    assert_int_equal(s->eos_id, 151645);          /* <|im_end|> */
    assert_true(lp_tok_is_eos(t, 151643));        /* generation_config list */
    assert_int_equal(s->add_bos, 0);
    assert_non_null(s->chat_template);
    assert_non_null(strstr(s->chat_template, "<|im_start|>"));
    check_vectors(t, "qwen2");
    lp_tok_free(t);
}

static void test_tinyllama_json_vectors(void **state) {
    (void)state;
    lp_tokenizer *t = load(SRC_JSON, tu_shared("models/hf/TinyLlama-1.1B-Chat-v1.0/tokenizer.json"));
    assert_int_equal(lp_tok_get_spec(t)->n_merges, 61249); /* merged by rank */
    check_vectors(t, "llama-spm");
    lp_tok_free(t);
}

/* ------------------------------------------------------ special tokens */

static void encode_ok(const lp_tokenizer *t, const char *text, int add_special,
                      int parse_special, const int32_t *want, size_t n_want) {
    int32_t *ids;
    size_t n;
    assert_int_equal(lp_tok_encode(t, text, strlen(text), add_special, parse_special, &ids, &n),
                     LOUPE_OK);
    if (n != n_want || memcmp(ids, want, n * sizeof *ids) != 0) {
        fprintf(stderr, "[%s] got", text);
        for (size_t i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n");
    }
    assert_int_equal(n, n_want);
    assert_memory_equal(ids, want, n * sizeof *ids);
    free(ids);
}

static size_t encode_n(const lp_tokenizer *t, const char *text, int add_special,
                       int parse_special, int32_t *out, size_t cap) {
    int32_t *ids;
    size_t n;
    assert_int_equal(lp_tok_encode(t, text, strlen(text), add_special, parse_special, &ids, &n),
                     LOUPE_OK);
    assert_true(n <= cap);
    memcpy(out, ids, n * sizeof *ids);
    free(ids);
    return n;
}

static void test_bos_eos_per_config(void **state) {
    (void)state;
    lp_tokenizer *t = load(SRC_JSON, tu_shared("models/hf/TinyLlama-1.1B-Chat-v1.0/tokenizer.json"));
    encode_ok(t, "Hello world", 1, 0, (const int32_t[]){1, 15043, 3186}, 3);
    lp_tok_free(t);
    t = load(SRC_GGUF, tu_shared("models/vocab/ggml-vocab-llama-spm.gguf"));
    encode_ok(t, "Hello world", 1, 0, (const int32_t[]){1, 15043, 3186}, 3);
    lp_tok_free(t);
    t = load(SRC_GGUF, tu_shared("models/vocab/ggml-vocab-gpt-2.gguf"));
    encode_ok(t, "Hello world", 1, 0, (const int32_t[]){15496, 995}, 2); /* GPT-2 adds none */
    lp_tok_free(t);
}

/* ChatML markers are split out only with parse_special; the text between
 * them tokenizes as it does alone. <|fim_prefix|> is a non-special added
 * token: always split out. */
static void test_qwen2_special_tokens(void **state) {
    (void)state;
    lp_tokenizer *t = load(SRC_DIR, tu_shared("models/hf/Qwen2.5-0.5B-Instruct"));
    int32_t mid[16], all[32], plain[64];
    size_t nm = encode_n(t, "user\nHi", 0, 0, mid, 16);
    size_t na = encode_n(t, "<|im_start|>user\nHi<|im_end|>", 0, 1, all, 32);
    assert_int_equal(na, nm + 2);
    assert_int_equal(all[0], 151644);
    assert_memory_equal(all + 1, mid, nm * sizeof *mid);
    assert_int_equal(all[na - 1], 151645);
    size_t np = encode_n(t, "<|im_start|>user\nHi<|im_end|>", 0, 0, plain, 64);
    assert_true(np > na);
    for (size_t i = 0; i < np; i++) assert_true(plain[i] < 151643);
    size_t nf = encode_n(t, "<|fim_prefix|>x", 0, 0, all, 32);
    assert_int_equal(all[0], 151659);
    assert_int_equal(nf, 2);
    lp_tok_free(t);
}

/* Phi-3.5's chat markers have rstrip: the whitespace after them is
 * swallowed, and the next segment gets its own "▁" (HF Prepend normalizer
 * runs per segment): "<|user|>\nHello<|end|>\n<|assistant|>\n" is
 * [<|user|>, ▁Hello, <|end|>, <|assistant|>]. */
static void test_phi35_loads_roundtrips(void **state) {
    (void)state;
    lp_tokenizer *t = load(SRC_JSON, tu_shared("models/hf/Phi-3.5-mini-instruct/tokenizer.json"));
    assert_int_equal(lp_tok_n_vocab(t), 32011);
    assert_int_equal(lp_tok_get_spec(t)->add_bos, 0);
    encode_ok(t, "<|user|>\nHello<|end|>\n<|assistant|>\n", 0, 1,
              (const int32_t[]){32010, 15043, 32007, 32001}, 4);
    check_vectors(t, "llama-spm"); /* the Llama 2 vocabulary plus added tokens */
    lp_tok_free(t);
}

/* ------------------------------------------------- hand-made tokenizers */

/* tiny_metaspace.json: Metaspace prepend_scheme "first" with split, rank
 * merges (given in both forms), byte fallback, BOS + EOS template, <sep>
 * with rstrip and the non-special <L> with lstrip. */
static void test_tiny_metaspace(void **state) {
    (void)state;
    lp_tokenizer *t = load(SRC_JSON, tu_src("tests/data/tokenizer/tiny_metaspace.json"));
    const lp_tok_spec *s = lp_tok_get_spec(t);
    assert_int_equal(s->kind, LP_TOK_SPM);
    assert_int_equal(s->add_prefix_space, LP_PREFIX_FIRST);
    encode_ok(t, "ab ab", 1, 0, (const int32_t[]){1, 9, 9, 2}, 4);
    encode_ok(t, " ab", 0, 0, (const int32_t[]){9}, 1); /* already starts with ▁ */
    encode_ok(t, "ab<sep>  ab", 0, 1, (const int32_t[]){9, 11, 8}, 3);
    encode_ok(t, "a  <L>b", 0, 0, (const int32_t[]){6, 12, 5}, 3);
    encode_ok(t, "!", 0, 0, (const int32_t[]){3, 10}, 2);     /* byte fallback */
    encode_ok(t, "\xc3\xa7", 0, 0, (const int32_t[]){3, 0}, 2); /* no <0xC3>: unk */
    char buf[64];
    size_t n = detok_all(t, (const int32_t[]){9, 9}, 2, buf, sizeof buf);
    assert_int_equal(n, 5);
    assert_memory_equal(buf, "ab ab", 5);
    n = detok_all(t, (const int32_t[]){1, 9}, 2, buf, sizeof buf);
    assert_int_equal(n, 6);
    assert_memory_equal(buf, "<s> ab", 6);
    lp_tok_free(t);
}

/* tiny_split_bytelevel.json: Llama 3's layout (Split digits + ByteLevel
 * without regex, ignore_merges, BOS from a TemplateProcessing inside a
 * Sequence). Unsplit, "1234" would merge "3 4" first and give [12, 34]. */
static void test_tiny_split_bytelevel(void **state) {
    (void)state;
    lp_tokenizer *t = load(SRC_JSON, tu_src("tests/data/tokenizer/tiny_split_bytelevel.json"));
    const lp_tok_spec *s = lp_tok_get_spec(t);
    assert_int_equal(s->kind, LP_TOK_BPE_BYTES);
    assert_int_equal(s->n_pre, 1);
    assert_int_equal(s->add_bos, 1);
    assert_int_equal(s->bos_id, 12);
    encode_ok(t, "ab1234 a", 1, 0, (const int32_t[]){12, 7, 9, 5, 10}, 5);
    encode_ok(t, "aba", 0, 0, (const int32_t[]){13}, 1); /* ignore_merges: no "ab a" merge */
    char buf[64];
    size_t n = detok_all(t, (const int32_t[]){12, 7, 9, 5, 10}, 5, buf, sizeof buf);
    assert_int_equal(n, 15);
    assert_memory_equal(buf, "<|bos|>ab1234 a", 15);
    lp_tok_free(t);
}

/* The character-level GPT-2 model's prompts and greedy continuation, as
 * tokenized / decoded by the independent reference (greedy.json). */
static void test_slm_char_greedy_json(void **state) {
    (void)state;
    lp_tokenizer *t = load(SRC_DIR, tu_shared("models/slm-gpt2-char"));
    assert_int_equal(lp_tok_n_vocab(t), 54);
    assert_int_equal(lp_tok_get_spec(t)->eos_id, -1); /* a model with no EOS */
    char *text = tu_read_file(tu_shared("models/slm-gpt2-char/greedy.json"), NULL);
    cJSON *root = cJSON_Parse(text);
    assert_non_null(root);
    const cJSON *c, *x;
    int n_cases = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        int32_t want[512];
        size_t nw = 0;
        cJSON_ArrayForEach(x, cJSON_GetObjectItem(c, "prompt_ids")) want[nw++] = (int32_t)x->valueint;
        encode_ok(t, cJSON_GetObjectItem(c, "prompt")->valuestring, 0, 0, want, nw);
        nw = 0;
        cJSON_ArrayForEach(x, cJSON_GetObjectItem(c, "greedy_ids")) want[nw++] = (int32_t)x->valueint;
        char buf[2048];
        size_t n = detok_all(t, want, nw, buf, sizeof buf);
        const char *g = cJSON_GetObjectItem(c, "greedy_text")->valuestring;
        assert_int_equal(n, strlen(g));
        assert_memory_equal(buf, g, n);
        n_cases++;
    }
    assert_true(n_cases > 0);
    cJSON_Delete(root);
    free(text);
    lp_tok_free(t);
}

/* TinyLlama's directory: tokenizer.json plus its configs. */
static void test_tinyllama_dir_configs(void **state) {
    (void)state;
    lp_tokenizer *t = load(SRC_DIR, tu_shared("models/hf/TinyLlama-1.1B-Chat-v1.0"));
    const lp_tok_spec *s = lp_tok_get_spec(t);
    assert_int_equal(s->bos_id, 1);
    assert_int_equal(s->eos_id, 2);
    assert_int_equal(s->unk_id, 0);
    assert_int_equal(s->add_bos, 1);
    assert_int_equal(s->add_eos, 0);
    assert_non_null(s->chat_template);
    assert_non_null(strstr(s->chat_template, "<|user|>"));
    lp_tok_free(t);
}

/* stories260K's 512-token SentencePiece vocabulary: lossless round trip
 * of its own golden text (byte fallback covers what the pieces miss). */
static void test_stories260k_roundtrip(void **state) {
    (void)state;
    lp_tokenizer *t = load(SRC_GGUF, tu_shared("models/stories260K/stories260K.gguf"));
    assert_int_equal(lp_tok_n_vocab(t), 512);
    size_t len;
    char *text = tu_read_file(tu_shared("models/stories260K/greedy-from-bos.txt"), &len);
    assert_non_null(text);
    int32_t *ids;
    size_t n;
    assert_int_equal(lp_tok_encode(t, text, len, 1, 0, &ids, &n), LOUPE_OK);
    assert_int_equal(ids[0], 1);
    assert_true(n > 10 && n < len);
    char *back = malloc(len + 64);
    size_t bl = detok_all(t, ids + 1, n - 1, back, len + 64); /* without BOS */
    assert_int_equal(bl, len);
    assert_memory_equal(back, text, len);
    free(back);
    free(ids);
    free(text);
    lp_tok_free(t);
}

/* A spec built by hand: single-letter SPM vocabulary a b c - plus joins. */
static void tiny_spec(lp_tok_spec *s, const char *const *pieces, int n,
                      const char *const *merges, int n_merges) {
    memset(s, 0, sizeof *s);
    s->kind = LP_TOK_SPM;
    s->n_vocab = n;
    s->pieces = calloc((size_t)n, sizeof *s->pieces);
    s->attrs = calloc((size_t)n, 1);
    for (int i = 0; i < n; i++) s->pieces[i] = strdup(pieces[i]);
    s->n_merges = n_merges;
    s->merges = calloc((size_t)n_merges + 1, sizeof *s->merges);
    for (int i = 0; i < n_merges; i++) s->merges[i] = strdup(merges[i]);
    s->bos_id = s->eos_id = s->unk_id = s->pad_id = -1;
}

static lp_tokenizer *tiny_build(lp_tok_spec *s) {
    lp_tokenizer *t;
    assert_int_equal(lp_tok_build(s, &t), LOUPE_OK);
    return t;
}

/* The lowest-ranked merge applies first. */
static void test_merge_rank_order(void **state) {
    (void)state;
    static const char *const v[] = {"a", "b", "c", "ab", "bc", "abc"};
    static const char *const m1[] = {"b c", "a b", "ab c"}, *const m2[] = {"a b", "b c", "ab c"};
    lp_tok_spec s;
    tiny_spec(&s, v, 6, m1, 3);
    lp_tokenizer *t = tiny_build(&s);
    encode_ok(t, "abc", 0, 0, (const int32_t[]){0, 4}, 2); /* a + bc: no "a bc" merge */
    lp_tok_free(t);
    tiny_spec(&s, v, 6, m2, 3);
    t = tiny_build(&s);
    encode_ok(t, "abc", 0, 0, (const int32_t[]){5}, 1);
    lp_tok_free(t);
    tiny_spec(&s, v, 6, m2, 1); /* only "a b": abc has no merge path... */
    t = tiny_build(&s);
    encode_ok(t, "abc", 0, 0, (const int32_t[]){3, 2}, 2);
    lp_tok_free(t);
    tiny_spec(&s, v, 6, m2, 1);
    s.ignore_merges = 1; /* ...unless a whole word in the vocabulary wins */
    t = tiny_build(&s);
    encode_ok(t, "abc", 0, 0, (const int32_t[]){5}, 1);
    lp_tok_free(t);
}

/* Without merges, SPM merges by score: the higher-scoring join first. */
static void test_merge_by_score(void **state) {
    (void)state;
    static const char *const v[] = {"a", "b", "c", "ab", "bc"};
    for (int flip = 0; flip < 2; flip++) {
        lp_tok_spec s;
        tiny_spec(&s, v, 5, NULL, 0);
        s.scores = calloc(5, sizeof *s.scores);
        s.scores[3] = flip ? -0.5f : -1.0f; /* ab */
        s.scores[4] = flip ? -1.0f : -0.5f; /* bc */
        lp_tokenizer *t = tiny_build(&s);
        if (flip) encode_ok(t, "abc", 0, 0, (const int32_t[]){3, 2}, 2);
        else encode_ok(t, "abc", 0, 0, (const int32_t[]){0, 4}, 2);
        lp_tok_free(t);
    }
}

/* HF Split behaviours on "a-b" (and "a--b") with pattern "-". Merges join
 * across a piece boundary only if the split keeps the letters together. */
static void test_split_behaviors(void **state) {
    (void)state;
    static const char *const v[] = {"a", "b", "-", "a-", "-b", "--", "a-b"};
    static const char *const m[] = {"a -", "- b", "- -", "a- b"};
    static const struct {
        uint8_t beh;
        const char *text;
        int32_t want[4];
        size_t n;
    } cases[] = {
        {LP_PRE_ISOLATED, "a-b", {0, 2, 1}, 3},
        {LP_PRE_REMOVED, "a-b", {0, 1}, 2},
        {LP_PRE_MERGED_PREV, "a-b", {3, 1}, 2},
        {LP_PRE_MERGED_NEXT, "a-b", {0, 4}, 2},
        {LP_PRE_CONTIGUOUS, "a--b", {0, 5, 1}, 3},
        {LP_PRE_ISOLATED, "a--b", {0, 2, 2, 1}, 4},
        /* inverted: the letters are the gaps, so "-" is what is removed */
        {LP_PRE_REMOVED | LP_PRE_INVERT, "a-b", {0, 1}, 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lp_tok_spec s;
        tiny_spec(&s, v, 7, m, 4);
        s.pre_regex = calloc(1, sizeof *s.pre_regex);
        s.pre_regex[0] = strdup(i == 6 ? "[ab]" : "-");
        s.pre_behavior = calloc(1, 1);
        s.pre_behavior[0] = cases[i].beh;
        s.n_pre = 1;
        lp_tokenizer *t = tiny_build(&s);
        encode_ok(t, cases[i].text, 0, 0, cases[i].want, cases[i].n);
        lp_tok_free(t);
    }
    lp_tok_spec s; /* no pre-tokenizer: everything merges */
    tiny_spec(&s, v, 7, m, 4);
    lp_tokenizer *t = tiny_build(&s);
    encode_ok(t, "a-b", 0, 0, (const int32_t[]){6}, 1);
    lp_tok_free(t);
}

/* --------------------------------------------------------- decoding */

/* 🦙 is F0 9F A6 99. SPM spells it with four byte-fallback tokens, GPT-2
 * with "Ġ\xf0\x9f" + two byte tokens; no chunk may split the character. */
static void test_streaming_detok_utf8(void **state) {
    (void)state;
    static const char llama[] = "\xf0\x9f\xa6\x99";
    lp_tokenizer *t = load(SRC_GGUF, tu_shared("models/vocab/ggml-vocab-llama-spm.gguf"));
    static const int32_t bytes[] = {243, 162, 169, 156}; /* <0xF0> <0x9F> <0xA6> <0x99> */
    lp_detok d;
    char out[64];
    lp_detok_init(&d, t);
    assert_int_equal(lp_detok_push(&d, t, 29871, out, sizeof out), 0); /* "▁": the leading space */
    for (int i = 0; i < 3; i++) assert_int_equal(lp_detok_push(&d, t, bytes[i], out, sizeof out), 0);
    assert_int_equal(lp_detok_push(&d, t, bytes[3], out, sizeof out), 4);
    assert_memory_equal(out, llama, 4);
    assert_int_equal(lp_detok_flush(&d, out, sizeof out), 0);
    /* an incomplete character: flush gives U+FFFD; a broken one, U+FFFD
     * followed by what broke it */
    lp_detok_init(&d, t);
    lp_detok_push(&d, t, 29871, out, sizeof out);
    assert_int_equal(lp_detok_push(&d, t, bytes[0], out, sizeof out), 0);
    assert_int_equal(lp_detok_push(&d, t, bytes[1], out, sizeof out), 0);
    assert_int_equal(lp_detok_flush(&d, out, sizeof out), 3);
    assert_memory_equal(out, "\xef\xbf\xbd", 3);
    lp_detok_init(&d, t);
    lp_detok_push(&d, t, 29871, out, sizeof out);
    assert_int_equal(lp_detok_push(&d, t, bytes[0], out, sizeof out), 0);
    size_t n = lp_detok_push(&d, t, 29874, out, sizeof out); /* "a" */
    assert_int_equal(n, 4);
    assert_memory_equal(out, "\xef\xbf\xbd" "a", 4);
    lp_tok_free(t);

    t = load(SRC_GGUF, tu_shared("models/vocab/ggml-vocab-gpt-2.gguf"));
    lp_detok_init(&d, t);
    assert_int_equal(lp_detok_push(&d, t, 12520, out, sizeof out), 1); /* " " + F0 9F held */
    assert_int_equal(out[0], ' ');
    assert_int_equal(lp_detok_push(&d, t, 99, out, sizeof out), 0);
    assert_int_equal(lp_detok_push(&d, t, 247, out, sizeof out), 4);
    assert_memory_equal(out, llama, 4);
    lp_tok_free(t);
}

static void test_token_bytes(void **state) {
    (void)state;
    lp_tokenizer *t = load(SRC_GGUF, tu_shared("models/vocab/ggml-vocab-llama-spm.gguf"));
    char buf[64];
    assert_int_equal(lp_tok_bytes(t, 15043, buf, sizeof buf), 6); /* ▁Hello */
    assert_memory_equal(buf, " Hello", 6);
    assert_int_equal(lp_tok_bytes(t, 13, buf, sizeof buf), 1); /* <0x0A> */
    assert_int_equal(buf[0], '\n');
    assert_int_equal(lp_tok_bytes(t, 1, buf, sizeof buf), 3); /* <s> as text */
    assert_memory_equal(buf, "<s>", 3);
    assert_int_equal(lp_tok_bytes(t, 32000, buf, sizeof buf), -1);
    assert_int_equal(lp_tok_bytes(t, -1, buf, sizeof buf), -1);
    lp_tok_free(t);
    t = load(SRC_JSON, tu_shared("models/hf/gpt2/tokenizer.json"));
    assert_string_equal(lp_tok_piece(t, 18435), "\xc4\xa0Hello"); /* ĠHello */
    assert_int_equal(lp_tok_bytes(t, 18435, buf, sizeof buf), 6);
    assert_memory_equal(buf, " Hello", 6);
    assert_int_equal(lp_tok_bytes(t, 198, buf, sizeof buf), 1); /* Ċ */
    assert_int_equal(buf[0], '\n');
    lp_tok_free(t);
}

/* Text that is not UTF-8 still round-trips byte for byte: byte-level BPE
 * maps every byte, SPM falls back to <0xAB> pieces. */
static void test_invalid_utf8_bytes(void **state) {
    (void)state;
    static const char text[] = "\xff\xfe a \xc3 b\xe2\x82 \xf0\x9f\xa6\x99\x99!";
    static const char *const srcs[] = {"models/vocab/ggml-vocab-gpt-2.gguf",
                                       "models/vocab/ggml-vocab-llama-spm.gguf"};
    for (int k = 0; k < 2; k++) {
        lp_tokenizer *t = load(SRC_GGUF, tu_shared(srcs[k]));
        int32_t *ids;
        size_t n, len = sizeof text - 1, bl = 0;
        assert_int_equal(lp_tok_encode(t, text, len, 0, 0, &ids, &n), LOUPE_OK);
        char back[256];
        for (size_t i = 0; i < n; i++) {
            int b = lp_tok_bytes(t, ids[i], back + bl, sizeof back - bl);
            assert_true(b >= 0);
            bl += (size_t)b;
        }
        size_t off = k == 1; /* SPM: the added "▁" */
        assert_int_equal(bl, len + off);
        assert_memory_equal(back + off, text, len);
        free(ids);
        lp_tok_free(t);
    }
}

/* ------------------------------------------------------ public API */

static void test_public_api(void **state) {
    (void)state;
    loupe_model m;
    memset(&m, 0, sizeof m);
    m.tok = load(SRC_GGUF, tu_shared("models/vocab/ggml-vocab-llama-spm.gguf"));
    int32_t ids[8];
    size_t n;
    assert_int_equal(loupe_tokenize(&m, "Hello world", 11, 1, 0, ids, 8, &n), LOUPE_OK);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 1);
    assert_int_equal(loupe_tokenize(&m, "Hello world", 11, 1, 0, ids, 2, &n), LOUPE_ERR_ARG);
    assert_int_equal(n, 3); /* how many are needed */
    char buf[8];
    assert_int_equal(loupe_token_bytes(&m, 15043, buf, sizeof buf, &n), LOUPE_OK);
    assert_int_equal(n, 6);
    assert_int_equal(loupe_token_bytes(&m, 15043, buf, 2, &n), LOUPE_ERR_ARG);
    assert_int_equal(loupe_token_bytes(&m, 99999, buf, sizeof buf, &n), LOUPE_ERR_ARG);
    assert_string_equal(loupe_token_str(&m, 15043), "\xe2\x96\x81Hello");
    assert_null(loupe_token_str(&m, -5));
    assert_int_equal(loupe_n_vocab(&m), 32000);
    lp_tok_free(m.tok);
    m.tok = NULL;
    assert_int_equal(loupe_tokenize(&m, "x", 1, 0, 0, ids, 8, &n), LOUPE_ERR_TOKENIZER);
}

/* 100 KB of mixed text (the vector texts, repeated) in well under 1 s. */
/* 100 KB of mixed text (the GPT-2 vocabulary test texts, repeated) through
 * a BPE and an SPM tokenizer: every byte comes back, none is dropped or
 * duplicated at the pre-tokenizer's chunk boundaries. Throughput is
 * measured by bench/bench_tokenizer.cc, not here. */
static void test_large_input_roundtrip(void **state) {
    (void)state;
    size_t n;
    char *inp = tu_read_file(tu_shared("models/vocab/ggml-vocab-gpt-2.gguf.inp"), &n);
    assert_non_null(inp);
    char *big = malloc(100 * 1024 + n);
    size_t len = 0;
    while (len < 100 * 1024) memcpy(big + len, inp, n), len += n;
    char *back = malloc(len + 64);
    static const char *const srcs[] = {"models/vocab/ggml-vocab-gpt-2.gguf",
                                       "models/vocab/ggml-vocab-llama-spm.gguf"};
    for (int k = 0; k < 2; k++) {
        lp_tokenizer *t = load(SRC_GGUF, tu_shared(srcs[k]));
        int32_t *ids;
        size_t ni;
        assert_int_equal(lp_tok_encode(t, big, len, 0, 0, &ids, &ni), LOUPE_OK);
        assert_true(ni > len / 8 && ni < len);
        size_t bl = detok_all(t, ids, ni, back, len + 64);
        assert_int_equal(bl, len);
        assert_memory_equal(back, big, len);
        free(ids);
        lp_tok_free(t);
    }
    free(back);
    free(big);
    free(inp);
}

/* ------------------------------------------------------ malformed input */

static void expect_fail(src_kind k, const char *path, loupe_status want, const char *msg) {
    lp_tokenizer *t;
    loupe_status st = try_load(k, path, &t);
    if (st != want || !strstr(loupe_last_error(), msg))
        fprintf(stderr, "%s: status %s, message: %s\n", path, loupe_status_name(st),
                loupe_last_error());
    assert_int_equal(st, want);
    assert_null(t);
    assert_non_null(strstr(loupe_last_error(), msg));
}

static void test_malformed_tokenizer_json(void **state) {
    (void)state;
    static const struct {
        const char *file;
        loupe_status st;
        const char *msg;
    } cases[] = {
        {"not_json.json", LOUPE_ERR_FORMAT, "not valid JSON"},
        {"no_model.json", LOUPE_ERR_TOKENIZER, "no \"model\" object"},
        {"vocab_not_object.json", LOUPE_ERR_TOKENIZER, "model.vocab is not an object"},
        {"vocab_id_not_int.json", LOUPE_ERR_TOKENIZER, "model.vocab['a'] is not an integer id"},
        {"vocab_sparse_ids.json", LOUPE_ERR_TOKENIZER, "ids this sparse are not a vocabulary"},
        {"merge_unknown_token.json", LOUPE_ERR_TOKENIZER, "merges[1] 'a c': not two vocabulary tokens"},
        {"merge_result_missing.json", LOUPE_ERR_TOKENIZER, "'ab' is not in the vocabulary"},
        {"merge_not_string.json", LOUPE_ERR_TOKENIZER, "model.merges[0] is neither"},
        {"wordpiece.json", LOUPE_ERR_UNSUPPORTED, "model.type 'WordPiece' is not supported"},
        {"unigram.json", LOUPE_ERR_UNSUPPORTED, "model.type 'Unigram' is not supported"},
        {"whitespace_pre.json", LOUPE_ERR_UNSUPPORTED, "pre_tokenizer type 'Whitespace'"},
        {"lowercase_norm.json", LOUPE_ERR_UNSUPPORTED, "normalizer type 'Lowercase'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char rel[256];
        snprintf(rel, sizeof rel, "tests/data/tokenizer/%s", cases[i].file);
        expect_fail(SRC_JSON, tu_src(rel), cases[i].st, cases[i].msg);
        if (cases[i].st != LOUPE_ERR_FORMAT) /* messages name the file */
            assert_non_null(strstr(loupe_last_error(), cases[i].file));
    }
    expect_fail(SRC_JSON, tu_src("tests/data/tokenizer/missing.json"), LOUPE_ERR_IO, "cannot open");
}

static void test_hf_dir_without_tokenizer(void **state) {
    (void)state;
    /* Llama 3.2's fixture dir has tokenizer_config.json but no vocabulary */
    expect_fail(SRC_DIR, tu_shared("models/hf/Llama-3.2-1B-Instruct"), LOUPE_ERR_TOKENIZER,
                "no tokenizer.json and no vocab.json + merges.txt");
}

/* ------------------------------------------------------- GGUF vocabulary */

typedef struct {
    uint8_t b[4096];
    size_t n;
} buf_t;

static void put(buf_t *b, const void *p, size_t n) {
    assert_true(b->n + n <= sizeof b->b);
    memcpy(b->b + b->n, p, n);
    b->n += n;
}
static void put_u32(buf_t *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(buf_t *b, uint64_t v) { put(b, &v, 8); }
static void put_s(buf_t *b, const char *s) { put_u64(b, strlen(s)), put(b, s, strlen(s)); }

static void kv_str(buf_t *b, const char *k, const char *v) {
    put_s(b, k), put_u32(b, 8), put_s(b, v);
}

static void kv_strs(buf_t *b, const char *k, const char *const *v, int n) {
    put_s(b, k), put_u32(b, 9), put_u32(b, 8), put_u64(b, (uint64_t)n);
    for (int i = 0; i < n; i++) put_s(b, v[i]);
}

/* A vocabulary-only GGUF v3 (little-endian host assumed, as loupe does). */
static const char *write_vocab_gguf(const char *name, const char *model, const char *pre) {
    static const char *const toks[] = {"a", "b", "ab", "<|end|>"};
    static const char *const merges[] = {"a b"};
    buf_t b = {{0}, 0};
    put(&b, "GGUF", 4), put_u32(&b, 3), put_u64(&b, 0), put_u64(&b, 4);
    kv_str(&b, "tokenizer.ggml.model", model);
    kv_str(&b, "tokenizer.ggml.pre", pre);
    kv_strs(&b, "tokenizer.ggml.tokens", toks, 4);
    kv_strs(&b, "tokenizer.ggml.merges", merges, 1);
    const char *path = tu_tmp(name);
    assert_int_equal(tu_write_file(path, b.b, b.n), 0);
    return path;
}

static void test_gguf_vocab_errors(void **state) {
    (void)state;
    lp_tokenizer *t = load(SRC_GGUF, write_vocab_gguf("tok_ok.gguf", "gpt2", "gpt-2"));
    encode_ok(t, "ab", 0, 0, (const int32_t[]){2}, 1); /* the hand-made file works */
    lp_tok_free(t);
    const char *p = write_vocab_gguf("tok_pre.gguf", "gpt2", "mystery-pre");
    expect_fail(SRC_GGUF, p, LOUPE_ERR_UNSUPPORTED, "'mystery-pre' is not known");
    assert_non_null(strstr(loupe_last_error(), "tokenizer.ggml.pre"));
    assert_non_null(strstr(loupe_last_error(), "llama-bpe")); /* lists known names */
    assert_non_null(strstr(loupe_last_error(), "qwen2"));
    p = write_vocab_gguf("tok_model.gguf", "bert", "default");
    expect_fail(SRC_GGUF, p, LOUPE_ERR_UNSUPPORTED, "tokenizer.ggml.model 'bert' is not supported");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gguf_gpt2_vectors),
        cmocka_unit_test(test_gguf_spm_vectors),
        cmocka_unit_test(test_hf_gpt2_json_vectors),
        cmocka_unit_test(test_hf_gpt2_vocab_merges_vectors),
        cmocka_unit_test(test_qwen2_dir_vectors),
        cmocka_unit_test(test_tinyllama_json_vectors),
        cmocka_unit_test(test_bos_eos_per_config),
        cmocka_unit_test(test_qwen2_special_tokens),
        cmocka_unit_test(test_phi35_loads_roundtrips),
        cmocka_unit_test(test_tiny_metaspace),
        cmocka_unit_test(test_tiny_split_bytelevel),
        cmocka_unit_test(test_slm_char_greedy_json),
        cmocka_unit_test(test_tinyllama_dir_configs),
        cmocka_unit_test(test_stories260k_roundtrip),
        cmocka_unit_test(test_merge_rank_order),
        cmocka_unit_test(test_merge_by_score),
        cmocka_unit_test(test_split_behaviors),
        cmocka_unit_test(test_streaming_detok_utf8),
        cmocka_unit_test(test_token_bytes),
        cmocka_unit_test(test_invalid_utf8_bytes),
        cmocka_unit_test(test_public_api),
        cmocka_unit_test(test_large_input_roundtrip),
        cmocka_unit_test(test_malformed_tokenizer_json),
        cmocka_unit_test(test_hf_dir_without_tokenizer),
        cmocka_unit_test(test_gguf_vocab_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
