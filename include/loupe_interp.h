/*
 * loupe_interp.h — interpretability on top of loupe's hooks: capture
 * buffers, attention patterns, logit lens, attribution, ablation,
 * activation patching, steering, model comparison, and writers for the
 * formats people already load (JSON, NumPy .npy, self-contained HTML, PNG).
 *
 * Conventions are those of loupe.h. Every function that runs the model
 * resets the session (position 0) and, unless it says otherwise, clears
 * the session's hooks before it returns. Results are plain structs the
 * caller frees with the matching *_free function.
 */
#ifndef LOUPE_INTERP_H
#define LOUPE_INTERP_H

#include "loupe.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------ index sets */

/* Parses a selection of indices in [0, n): comma-separated items, each an
 * index "3" or an inclusive range "2-4"; "", "all" or "*" (or NULL) select
 * everything. Writes the indices ascending, without repeats, into out
 * (room for n) and their count into *n_out. LOUPE_ERR_ARG on syntax errors
 * and indices out of range. */
LOUPE_API loupe_status loupe_parse_index_set(const char *spec, int n, int *out, int *n_out);

/* Parses heads "L.H,L.H-H2,..." (e.g. "0.1,2.0-3") into (layer, head)
 * pairs checked against n_layers x n_heads. *pairs is malloc'd: (n, 2). */
LOUPE_API loupe_status loupe_parse_heads(const char *spec, int n_layers, int n_heads,
                                         int **pairs, int *n_out);

/* ---------------------------------------------------------------- tokens */

/* A token sequence with display texts: each token's bytes as valid UTF-8,
 * a byte that is not part of a valid UTF-8 character written "\xNN". */
typedef struct loupe_tokens {
    int n;
    int32_t *ids;   /* (n) */
    char **text;    /* (n) NUL-terminated display texts */
} loupe_tokens;

LOUPE_API loupe_status loupe_tokens_from_ids(const loupe_model *m, const int32_t *ids, int n,
                                             loupe_tokens *out);
/* Tokenizes text (add_special as in loupe_tokenize) and fills out. */
LOUPE_API loupe_status loupe_tokens_from_text(const loupe_model *m, const char *text,
                                              int add_special, loupe_tokens *out);
LOUPE_API void loupe_tokens_clear(loupe_tokens *t);

/* ------------------------------------------------------------------ .npy */

#define LOUPE_NPY_MAX_DIMS 8

/* Writes a float32, C-order, little-endian NumPy file (format 1.0). */
LOUPE_API loupe_status loupe_npy_write(const char *path, const float *data, int ndim,
                                       const int64_t *shape);
/* Reads a NumPy file of float32, float64 or float16 (either byte order,
 * C order, or Fortran order for ndim <= 1) into a malloc'd float32 array. */
LOUPE_API loupe_status loupe_npy_read(const char *path, float **data, int *ndim,
                                      int64_t shape[LOUPE_NPY_MAX_DIMS]);

/* ------------------------------------------------------- capture buffers */

/* Records one hook point into a buffer indexed by absolute position, across
 * however many loupe_eval calls (and prefill chunks) the rows arrive in.
 * data is (n_layers, n_heads, max_rows, width):
 *   - n_layers is the model's layer count when the hook name ends in ".*",
 *     else 1 (plane 0 holds the named layer, or embed/final_norm/logits);
 *   - for attn.pattern, n_heads is the model's and width = max_rows (keys
 *     past the query's position are 0); else n_heads = 1.
 * Rows at positions >= max_rows are not stored; `dropped` counts them. */
typedef struct loupe_capture {
    loupe_hook_point point;
    int layer;        /* the hooked layer; -1 for ".*" or a layer-less point */
    int n_layers, n_heads, max_rows, width;
    int n_rows;       /* 1 + the highest position stored */
    long dropped;
    float *data;      /* (n_layers, n_heads, max_rows, width) */
} loupe_capture;

/* Allocates a capture and registers it on s under the hook name. The
 * capture must outlive the hook: free it only after the session's hooks are
 * cleared (or the session is freed). */
LOUPE_API loupe_status loupe_capture_new(loupe_session *s, const char *hook, int max_rows,
                                         loupe_capture **out);
/* Row at position pos of plane (layer index into the capture, head). */
LOUPE_API float *loupe_capture_row(const loupe_capture *c, int layer, int head, int pos);
LOUPE_API void loupe_capture_free(loupe_capture *c);

/* ------------------------------------------------------------ scoring */

/* log p(target | context): the sum over target tokens of their log-softmax
 * probabilities after context + the target tokens before them, in one
 * forward pass from position 0. With an empty context the first target
 * token has no prediction and is given the uniform log(1/n_vocab).
 * per_token (m) receives each token's log-prob (may be NULL). Hooks
 * registered on s are kept and take effect. */
LOUPE_API loupe_status loupe_target_logprob(loupe_session *s, const int32_t *context, int n,
                                            const int32_t *target, int m, double *logprob,
                                            float *per_token);

/* ------------------------------------------------------------ attention */

/* Attention patterns like Hugging Face's output_attentions, for a
 * selection of layers and heads. */
typedef struct loupe_attention {
    loupe_tokens tokens;  /* the T tokens */
    int n_layers, n_heads;
    int *layers;          /* (n_layers) model layer of each plane */
    int *heads;           /* (n_heads) model head of each plane */
    float *data;          /* (n_layers, n_heads, T, T): [l][h][query][key] */
} loupe_attention;

/* Runs ids through s and captures the patterns. layers/heads: the model's
 * indices to keep (NULL = all). */
LOUPE_API loupe_status loupe_attention_capture(loupe_session *s, const int32_t *ids, int T,
                                               const int *layers, int n_layers,
                                               const int *heads, int n_heads,
                                               loupe_attention **out);
LOUPE_API void loupe_attention_free(loupe_attention *a);

/* Writes by the path's extension: .json, .npy, .html or .png (see
 * docs/INTERPRETABILITY.md for each format). title names the model in
 * JSON/HTML (may be NULL). */
LOUPE_API loupe_status loupe_attention_write(const loupe_attention *a, const char *title,
                                             const char *path);
/* The JSON / HTML documents as malloc'd strings (NULL on failure). */
LOUPE_API char *loupe_attention_json(const loupe_attention *a, const char *title);
LOUPE_API char *loupe_attention_html(const loupe_attention *a, const char *title);

/* Heatmap grid as an RGB PNG: one row per layer, one column per head,
 * each cell T x T pixels scaled up by `scale` (>= 1), 2-pixel grey gaps. */
LOUPE_API loupe_status loupe_heatmap_png(const char *path, const float *maps, int rows,
                                         int cols, int T, int scale);

/* Attention rollout (Abnar & Zuidema 2020): per layer, the head average A
 * plus the identity, rows renormalised (A + I) / 2, multiplied across
 * layers: R = Â[L-1] · ... · Â[0]. patterns (L, H, T, T) -> rollout (T, T). */
LOUPE_API loupe_status loupe_attention_rollout(const float *patterns, int n_layers,
                                               int n_heads, int T, float *rollout);

/* ------------------------------------------------------------ logit lens */

/* For every layer L and position t: the top-k tokens of
 * softmax(unembed(final_norm(resid_post.L[t]))). The last layer's lens is
 * the model's own output. */
typedef struct loupe_lens {
    loupe_tokens tokens;  /* the T input tokens */
    int n_layers, k;
    int32_t *top_ids;     /* (n_layers, T, k) best first */
    float *top_probs;     /* (n_layers, T, k) */
    char **top_text;      /* (n_layers, T, k) display texts */
} loupe_lens;

LOUPE_API loupe_status loupe_lens_run(loupe_session *s, const int32_t *ids, int T, int k,
                                      loupe_lens **out);
LOUPE_API void loupe_lens_free(loupe_lens *l);
/* Log-softmax lens distributions of every layer: (n_layers, T, n_vocab),
 * malloc'd. */
LOUPE_API loupe_status loupe_lens_logprobs(loupe_session *s, const int32_t *ids, int T,
                                           float **out);
/* .json or .html by extension. */
LOUPE_API loupe_status loupe_lens_write(const loupe_lens *l, const char *title,
                                        const char *path);
LOUPE_API char *loupe_lens_json(const loupe_lens *l, const char *title);
LOUPE_API char *loupe_lens_html(const loupe_lens *l, const char *title);

/* ------------------------------------------------------------ attribution */

typedef enum loupe_attr_method {
    LOUPE_ATTR_OCCLUSION = 0, /* log p(all) - log p(all without token i) */
    LOUPE_ATTR_SHAPLEY = 1,   /* permutation-sampled Shapley values of removal */
    LOUPE_ATTR_ROLLOUT = 2    /* attention rollout weight on token i */
} loupe_attr_method;

LOUPE_API const char *loupe_attr_method_name(loupe_attr_method m);
/* "occlusion", "shapley", "rollout" -> method; LOUPE_ERR_ARG otherwise. */
LOUPE_API loupe_status loupe_attr_method_parse(const char *name, loupe_attr_method *out);

typedef struct loupe_attr_params {
    loupe_attr_method method;
    int samples;   /* Shapley permutations; exact (all n!) when n! <= samples */
    uint64_t seed; /* Shapley permutation order */
} loupe_attr_params;

typedef struct loupe_attribution {
    loupe_attr_method method;
    loupe_tokens prompt, target;
    double logprob;       /* log p(target | prompt) */
    double empty_logprob; /* log p(target | no prompt token) (occlusion, Shapley) */
    int samples;          /* permutations used (Shapley) */
    int exact;            /* Shapley: all permutations were enumerated */
    float *scores;        /* (prompt.n) */
} loupe_attribution;

/* Occlusion and Shapley perturb by removal: a removed prompt token is taken
 * out of the sequence (the rest keep their order and move up); a leading
 * BOS token is always kept and gets score 0. Rollout scores every prompt
 * token by the rollout weight on it, averaged over the positions that
 * predict the target tokens. See docs/INTERPRETABILITY.md. */
LOUPE_API loupe_status loupe_attribute(loupe_session *s, const int32_t *prompt, int n,
                                       const int32_t *target, int m,
                                       const loupe_attr_params *p, loupe_attribution **out);
LOUPE_API void loupe_attribution_free(loupe_attribution *a);
LOUPE_API loupe_status loupe_attribution_write(const loupe_attribution *a, const char *title,
                                               const char *path);
LOUPE_API char *loupe_attribution_json(const loupe_attribution *a, const char *title);
LOUPE_API char *loupe_attribution_html(const loupe_attribution *a, const char *title);

/* ------------------------------------------------------- ablation, patching */

/* log p(target | prompt) with heads (pairs (n, 2) of layer, head) ablated
 * through attn.z: their per-head outputs (before W_O, so the output bias
 * stays) are set to zero, or with mean != 0 to their mean over the
 * positions of an unablated run of the same prompt + target. */
LOUPE_API loupe_status loupe_ablate_heads(loupe_session *s, const int32_t *prompt, int n,
                                          const int32_t *target, int m, const int *pairs,
                                          int n_pairs, int mean, double *clean_logprob,
                                          double *ablated_logprob);

/* Activation patching of the residual stream: for each layer L and prompt
 * position p, the corrupted run with resid_pre.L[p] replaced by the clean
 * run's value. Both prompts must have the same token count. */
typedef struct loupe_patching {
    loupe_tokens clean, corrupt, target;
    int n_layers;
    double clean_logprob, corrupt_logprob; /* log p(target | each prompt) */
    float *logprob;                        /* (n_layers, n): patched log p(target) */
} loupe_patching;

LOUPE_API loupe_status loupe_patch_resid(loupe_session *s, const int32_t *clean,
                                         const int32_t *corrupt, int n, const int32_t *target,
                                         int m, loupe_patching **out);
LOUPE_API void loupe_patching_free(loupe_patching *p);
LOUPE_API char *loupe_patching_json(const loupe_patching *p, const char *title);

/* ------------------------------------------------------------ steering */

/* Adds scale * vec (dim) to every row of resid_post.<layer> while it is
 * registered. Does not reset or clear the session: register it, then run
 * loupe_eval / loupe_generate. Free only after the hooks are cleared. */
typedef struct loupe_steering loupe_steering;

LOUPE_API loupe_status loupe_steering_add(loupe_session *s, int layer, const float *vec,
                                          float scale, loupe_steering **out);
LOUPE_API void loupe_steering_free(loupe_steering *st);
/* Steering vector "from A to B": the mean over B's tokens of
 * resid_post.<layer> minus the mean over A's tokens. vec: (dim). */
LOUPE_API loupe_status loupe_steering_vector(loupe_session *s, int layer, const int32_t *a,
                                             int na, const int32_t *b, int nb, float *vec);

/* ------------------------------------------------------------ comparison */

/* Two models on the same tokens, layer by layer (layers 0..min-1):
 *   attn_js: mean over heads and query positions of the Jensen-Shannon
 *     divergence (base 2, in [0, 1]) between the two attention rows
 *     (head-averaged patterns when the head counts differ);
 *   lens_kl: mean over positions of KL(lens_A || lens_B) in nats (NaN when
 *     the vocabularies differ in size). */
typedef struct loupe_comparison {
    loupe_tokens tokens;
    int n_layers;
    double *attn_js; /* (n_layers) */
    double *lens_kl; /* (n_layers) */
} loupe_comparison;

LOUPE_API loupe_status loupe_compare(loupe_session *a, loupe_session *b, const int32_t *ids,
                                     int T, loupe_comparison **out);
LOUPE_API void loupe_comparison_free(loupe_comparison *c);
LOUPE_API char *loupe_comparison_json(const loupe_comparison *c, const char *title_a,
                                      const char *title_b);

/* ------------------------------------------------------------ helpers */

/* Writes a whole string to a file. */
LOUPE_API loupe_status loupe_write_text(const char *path, const char *text);
/* Frees strings returned by this header's functions. */
LOUPE_API void loupe_interp_free(void *p);

#ifdef __cplusplus
}
#endif
#endif /* LOUPE_INTERP_H */
