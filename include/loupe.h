/*
 * loupe.h — the one public header of libloupe.
 *
 * A C11 inference engine for transformer language models on CPUs that lets
 * its user see inside the model while it runs.
 *
 * Conventions (SQLite-style):
 *   - every fallible call returns a loupe_status; LOUPE_OK is 0;
 *   - on failure, loupe_last_error() returns a message for the calling thread
 *     naming the file, tensor and problem; it stays valid until the next
 *     failing call on that thread;
 *   - handles are opaque; a loupe_model is immutable once opened and may be
 *     shared by any number of sessions on any threads; a loupe_session is
 *     used by one thread at a time.
 */
#ifndef LOUPE_H
#define LOUPE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LOUPE_VERSION_MAJOR 0
#define LOUPE_VERSION_MINOR 1
#define LOUPE_VERSION_PATCH 0
#define LOUPE_VERSION_STRING "0.1.0"

#if defined(_WIN32)
#define LOUPE_API
#else
#define LOUPE_API __attribute__((visibility("default")))
#endif

/* ---------------------------------------------------------------- status */

typedef enum loupe_status {
    LOUPE_OK = 0,
    LOUPE_ERR_IO = 1,          /* file missing, unreadable, mmap failed   */
    LOUPE_ERR_FORMAT = 2,      /* corrupt or malformed file / JSON         */
    LOUPE_ERR_UNSUPPORTED = 3, /* valid input loupe does not handle        */
    LOUPE_ERR_SHAPE = 4,       /* tensor shape disagrees with the config   */
    LOUPE_ERR_MISSING = 5,     /* a required tensor or key is absent       */
    LOUPE_ERR_NOMEM = 6,       /* allocation failed                        */
    LOUPE_ERR_ARG = 7,         /* bad argument from the caller             */
    LOUPE_ERR_CONTEXT = 8,     /* prompt longer than the context window    */
    LOUPE_ERR_ISA = 9,         /* requested ISA not available on this CPU  */
    LOUPE_ERR_TOKENIZER = 10,  /* tokenizer missing or malformed           */
    LOUPE_ERR_CANCELLED = 11,  /* a callback asked to stop                 */
    LOUPE_ERR_INTERNAL = 12
} loupe_status;

/* Message for the last failure on this thread ("" if none). */
LOUPE_API const char *loupe_last_error(void);
/* Short constant name of a status, e.g. "LOUPE_ERR_FORMAT". */
LOUPE_API const char *loupe_status_name(loupe_status s);
LOUPE_API const char *loupe_version(void);

/* ------------------------------------------------------------------ CPU */

/* Name of the kernel table in use ("scalar", "avx2", "avx512", "neon").
 * The table is chosen once, on first use, from the CPU's features and the
 * LOUPE_ISA environment variable. */
LOUPE_API const char *loupe_isa(void);
/* Forces a kernel table; LOUPE_ERR_ISA if this CPU lacks it. */
LOUPE_API loupe_status loupe_set_isa(const char *name);
/* Writes a human-readable description of the CPU features found and the
 * table chosen (and why) into buf. Returns the length written. */
LOUPE_API size_t loupe_cpu_report(char *buf, size_t cap);

/* ---------------------------------------------------------------- model */

typedef struct loupe_model loupe_model;

typedef struct loupe_model_params {
    int n_threads; /* threads for load-time conversion; 0 = all cores */
} loupe_model_params;

/* Opens a model: a Hugging Face directory (config.json + safetensors +
 * tokenizer files), a GGUF file, or a .loupe file. */
LOUPE_API loupe_status loupe_model_open(const char *path,
                                        const loupe_model_params *params,
                                        loupe_model **out);
LOUPE_API void loupe_model_close(loupe_model *m);

typedef struct loupe_model_info {
    const char *arch;       /* "gpt2" or "llama" (llama family)        */
    const char *model_type; /* as in config.json: gpt2, llama, qwen2…  */
    int n_vocab, n_ctx, dim, n_layers, n_heads, n_kv_heads, head_dim;
    int ffn_dim;
    int bos_id, eos_id;     /* -1 if the model has none                */
    uint64_t n_params;
    uint64_t weight_bytes;  /* bytes of weights as held in memory       */
} loupe_model_info;

LOUPE_API void loupe_model_get_info(const loupe_model *m, loupe_model_info *out);
/* Writes the `loupe info` report (hparams, tensors, tokenizer, memory). */
LOUPE_API size_t loupe_model_describe(const loupe_model *m, char *buf, size_t cap);

/* ------------------------------------------------------------ tokenizer */

/* Encodes UTF-8 text. add_special != 0 adds BOS/EOS as the tokenizer's
 * configuration says (like HF encode); parse_special != 0 turns special
 * token texts (e.g. "<|im_start|>") into their ids.
 * On success *n_out is the number of ids; if it exceeds cap, the call
 * returns LOUPE_ERR_ARG and *n_out says how many are needed. */
LOUPE_API loupe_status loupe_tokenize(const loupe_model *m, const char *text,
                                      size_t len, int add_special,
                                      int parse_special, int32_t *ids,
                                      size_t cap, size_t *n_out);
/* The raw bytes a token stands for (byte-level / byte-fallback decoded). */
LOUPE_API loupe_status loupe_token_bytes(const loupe_model *m, int32_t id,
                                         char *buf, size_t cap, size_t *n_out);
/* The token's string as stored in the vocabulary (e.g. "Ġthe"). */
LOUPE_API const char *loupe_token_str(const loupe_model *m, int32_t id);
LOUPE_API int loupe_n_vocab(const loupe_model *m);

/* ---------------------------------------------------------------- session */

typedef struct loupe_session loupe_session;

typedef struct loupe_session_params {
    int n_ctx;     /* context length; 0 = the model's maximum          */
    int n_threads; /* 0 = all cores                                     */
    int kv_f16;    /* 1: keep the KV cache in fp16 (half the memory and
                      bandwidth; attention still accumulates in fp32)    */
} loupe_session_params;

LOUPE_API loupe_status loupe_session_new(const loupe_model *m,
                                         const loupe_session_params *p,
                                         loupe_session **out);
LOUPE_API void loupe_session_free(loupe_session *s);
/* Forgets the KV cache (position back to 0). */
LOUPE_API void loupe_session_reset(loupe_session *s);
LOUPE_API int loupe_session_pos(const loupe_session *s);
LOUPE_API int loupe_session_n_ctx(const loupe_session *s);

/* Runs the model over n tokens appended at the current position.
 * logits: (n, n_vocab) if all_logits, else (n_vocab) for the last token;
 * may be NULL. LOUPE_ERR_CONTEXT if pos + n > n_ctx. */
LOUPE_API loupe_status loupe_eval(loupe_session *s, const int32_t *tokens,
                                  int n, float *logits, int all_logits);

/* ------------------------------------------------------ hooks (inspection) */

/* Hook points, named as in TransformerLens. L is a layer index. */
typedef enum loupe_hook_point {
    LOUPE_HOOK_EMBED = 0,        /* "embed"          (T, dim) token (+pos) embedding */
    LOUPE_HOOK_RESID_PRE,        /* "resid_pre.L"    (T, dim) residual before layer L */
    LOUPE_HOOK_ATTN_PATTERN,     /* "attn.pattern.L" (n_heads, T, n_keys) softmax weights */
    LOUPE_HOOK_ATTN_Z,           /* "attn.z.L"       (T, n_heads*head_dim) per-head outputs before W_O */
    LOUPE_HOOK_ATTN_OUT,         /* "attn_out.L"     (T, dim) attention block output (after W_O, bias) */
    LOUPE_HOOK_RESID_MID,        /* "resid_mid.L"    (T, dim) residual after attention */
    LOUPE_HOOK_MLP_OUT,          /* "mlp_out.L"      (T, dim) MLP block output */
    LOUPE_HOOK_RESID_POST,       /* "resid_post.L"   (T, dim) residual after layer L */
    LOUPE_HOOK_FINAL_NORM,       /* "final_norm"     (R, dim) final norm output */
    LOUPE_HOOK_LOGITS,           /* "logits"         (R, n_vocab) */
    LOUPE_HOOK_COUNT
} loupe_hook_point;

/* One activation handed to a hook. Rows are the tokens of the current
 * forward call: absolute positions pos0 .. pos0+T-1. For final_norm and
 * logits only the rows the head computes are given (R = T when all logits
 * were asked for, else R = 1: the last token; pos0 is then that token's).
 * attn.pattern is (n_heads, T, n_keys) with n_keys = pos0 + T: row t has
 * weights for keys 0..pos0+t and zeros after (causal). */
typedef struct loupe_activation {
    loupe_hook_point point;
    int layer;      /* -1 for embed, final_norm, logits */
    int pos0;       /* absolute position of row 0 */
    int T;          /* rows */
    int width;      /* floats per row (n_keys for attn.pattern) */
    int n_heads;    /* attn.pattern: heads (planes); else 1 */
    float *data;    /* contiguous; (n_heads, T, width) */
} loupe_activation;

/* Called during the forward pass. The hook may read the activation or
 * modify it in place (ablation, patching, steering): the forward pass goes
 * on with the modified values — except attn.pattern, which is read-only
 * (ablate heads through attn.z). Return non-zero to abort the forward pass
 * (loupe_eval then returns LOUPE_ERR_CANCELLED). */
typedef int (*loupe_hook_fn)(void *user, const loupe_activation *act);

/* Registers fn on a hook point name: "embed", "final_norm", "logits", or
 * "<point>.<L>" with L a layer index or "*" for every layer, e.g.
 * "attn.pattern.3", "resid_post.*". Hooks run in registration order.
 * A session without hooks computes nothing extra (attention weights are
 * only materialised when an attn.pattern hook is registered). */
LOUPE_API loupe_status loupe_session_add_hook(loupe_session *s, const char *name,
                                              loupe_hook_fn fn, void *user);
LOUPE_API void loupe_session_clear_hooks(loupe_session *s);
/* A check the forward pass calls before every layer, unlike hooks kept by
 * loupe_session_clear_hooks (which the interpretability functions call):
 * a non-zero return aborts the pass (LOUPE_ERR_CANCELLED), e.g. once the
 * client of a server request has gone. fn NULL removes it. */
LOUPE_API void loupe_session_set_abort(loupe_session *s, int (*fn)(void *user), void *user);
/* Parses a hook name into (point, layer); layer -1 for "*" or none. */
LOUPE_API loupe_status loupe_hook_parse(const char *name, loupe_hook_point *point,
                                        int *layer);
LOUPE_API const char *loupe_hook_point_name(loupe_hook_point p);

/* Logit lens: applies the final norm and the unembedding to n rows of
 * residual-stream vectors (n, dim), writing logits (n, n_vocab). */
LOUPE_API loupe_status loupe_unembed(loupe_session *s, const float *resid, int n,
                                     float *logits);

/* ------------------------------------------------------------- sampling */

typedef struct loupe_sampling {
    float temperature;        /* 0 = greedy                                */
    int top_k;                /* 0 = off                                   */
    float top_p;              /* 1 = off                                   */
    float min_p;              /* 0 = off                                   */
    float repeat_penalty;     /* 1 = off (llama.cpp/HF divide-or-multiply) */
    float presence_penalty;   /* 0 = off (OpenAI)                          */
    float frequency_penalty;  /* 0 = off (OpenAI)                          */
    int penalty_last_n;       /* window for penalties; -1 = whole context  */
    uint64_t seed;
} loupe_sampling;

LOUPE_API void loupe_sampling_default(loupe_sampling *s);

/* ----------------------------------------------------------- generation */

typedef enum loupe_finish {
    LOUPE_FINISH_NONE = 0,
    LOUPE_FINISH_STOP = 1,   /* EOS or a stop string */
    LOUPE_FINISH_LENGTH = 2, /* max tokens or the end of the context */
    LOUPE_FINISH_CANCELLED = 3
} loupe_finish;

/* Called for every generated token with the text it completes. The text
 * never splits a UTF-8 character: bytes of an incomplete character are held
 * back until it completes. Return non-zero to stop generation. */
typedef int (*loupe_token_cb)(void *user, int32_t id, const char *text,
                              size_t len, float logprob);

typedef struct loupe_generate_params {
    int max_new_tokens;        /* <= 0: until EOS or the context ends      */
    loupe_sampling sampling;
    const char *const *stop;   /* stop strings (not included in output)   */
    int n_stop;
    int ignore_eos;
    loupe_token_cb on_token;
    void *user;
} loupe_generate_params;

typedef struct loupe_generate_result {
    loupe_finish finish;
    int n_prompt, n_generated;
    double prefill_ms, decode_ms;
} loupe_generate_result;

LOUPE_API void loupe_generate_default(loupe_generate_params *p);
/* Evaluates the prompt tokens (appended to whatever the session holds) and
 * generates. LOUPE_ERR_CONTEXT if the prompt does not fit the context. */
LOUPE_API loupe_status loupe_generate(loupe_session *s, const int32_t *prompt,
                                      int n_prompt,
                                      const loupe_generate_params *p,
                                      loupe_generate_result *res);

/* -------------------------------------------------------- chat templates */

/* One chat turn. role: "system", "user", "assistant" (whatever the
 * template accepts); content: UTF-8 text. */
typedef struct loupe_chat_message {
    const char *role;
    const char *content;
} loupe_chat_message;

/* Renders messages into the prompt text with the model's chat template
 * (a Jinja subset with Hugging Face's semantics: trim_blocks, lstrip_blocks,
 * bos_token/eos_token/add_generation_prompt/tools=none, raise_exception,
 * strftime_now), or with the fallback template (docs/SERVER.md) if the
 * model has none. Tokenize the result with add_special = 0 and
 * parse_special = 1: templates write BOS themselves. *out is malloc'd
 * (release with free()). LOUPE_ERR_ARG: the template rejected the
 * messages (raise_exception); LOUPE_ERR_UNSUPPORTED: a construct outside
 * the subset; LOUPE_ERR_FORMAT: a syntax or type error. The message names
 * the template line. */
LOUPE_API loupe_status loupe_chat_render(const loupe_model *m,
                                         const loupe_chat_message *msgs,
                                         int n_msgs, int add_generation_prompt,
                                         char **out);
/* The model's own template text, or NULL if it has none. */
LOUPE_API const char *loupe_chat_template(const loupe_model *m);
LOUPE_API const char *loupe_chat_fallback_template(void);
/* Renders any template with variables given as a JSON object text
 * (e.g. {"messages": [...], "add_generation_prompt": true}); NULL = none.
 * Globals namespace(), range(), dict(), raise_exception() and
 * strftime_now() are always defined. *out is malloc'd. */
LOUPE_API loupe_status loupe_template_render(const char *tmpl,
                                             const char *vars_json, char **out);

#ifdef __cplusplus
}
#endif
#endif /* LOUPE_H */
