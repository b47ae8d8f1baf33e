/*
 * model.h — the immutable model: hyper-parameters, weights, tokenizer.
 * A loupe_model is built by one of the loaders (HF directory, GGUF, .loupe)
 * and then only read, so any number of sessions may share it.
 */
#ifndef LOUPE_MODEL_H
#define LOUPE_MODEL_H

#include <stdint.h>

#include "../simd/kernels.h"
#include "io/tensors.h"
#include "loupe.h"
#include "tokenizer/tokenizer.h"

typedef enum { LP_ARCH_GPT2 = 1, LP_ARCH_LLAMA = 2 } lp_arch;

typedef enum {
    LP_ACT_GELU_TANH = 1, /* gelu_new, gelu_pytorch_tanh */
    LP_ACT_GELU_ERF = 2,  /* gelu (exact) */
    LP_ACT_SILU = 3       /* SwiGLU gate */
} lp_act;

typedef enum {
    LP_ROPE_SCALING_NONE = 0,
    LP_ROPE_SCALING_LINEAR = 1,
    LP_ROPE_SCALING_LLAMA3 = 2
} lp_rope_scaling;

typedef struct {
    lp_arch arch;
    char model_type[32];   /* config.json model_type: gpt2, llama, qwen2, mistral */
    int n_vocab;
    int n_ctx;             /* max positions the model was trained for */
    int dim;               /* residual width (hidden_size / n_embd) */
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int ffn_dim;           /* intermediate_size / n_inner */
    float norm_eps;
    lp_act act;
    int tied_head;         /* lm_head shares the token embedding */
    int qkv_bias;          /* Llama family: q/k/v have biases (Qwen2) */
    /* RoPE (Llama family) */
    float rope_theta;
    int rope_neox;         /* 1: rotate_half pairs (HF); 0: interleaved (GGUF llama) */
    int rot_dim;           /* dims rotated per head (= head_dim) */
    lp_rope_scaling rope_scaling;
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_orig_ctx;
    /* generation defaults (generation_config.json / GGUF) */
    int bos_id, eos_id;
} lp_hparams;

/* A matrix weight in the form the kernels consume: (rows, cols), rows =
 * output features. F32/F16 are row-major; int8 is always LP_Q8P (groups of
 * 16 rows, quant/blocks.h), 64-byte aligned, lp_q8p_bytes(rows, cols). */
typedef struct {
    lp_dtype type;  /* LP_F32, LP_F16 or LP_Q8P */
    int rows, cols;
    const void *data;
} lp_mat;

typedef struct {
    /* attention */
    const float *attn_norm_w, *attn_norm_b; /* (dim); b: GPT-2 only */
    lp_mat wq;                   /* (n_heads*head_dim, dim) */
    lp_mat wk, wv;               /* (n_kv_heads*head_dim, dim) */
    const float *bq, *bk, *bv;   /* (n_heads*hd), (n_kv*hd); NULL if none */
    lp_mat wo;                   /* (dim, n_heads*head_dim) */
    const float *bo;             /* (dim); GPT-2 only */
    /* MLP */
    const float *ffn_norm_w, *ffn_norm_b; /* (dim) */
    lp_mat w_gate;               /* (ffn_dim, dim); Llama only */
    lp_mat w_up;                 /* (ffn_dim, dim); GPT-2 c_fc */
    const float *b_up;           /* (ffn_dim); GPT-2 only */
    lp_mat w_down;               /* (dim, ffn_dim); GPT-2 mlp.c_proj */
    const float *b_down;         /* (dim); GPT-2 only */
} lp_layer;

typedef struct {
    lp_mat tok_embd;             /* (n_vocab, dim) */
    const float *pos_embd;       /* (n_ctx, dim); GPT-2 only */
    lp_layer *layers;            /* (n_layers) */
    const float *out_norm_w, *out_norm_b; /* (dim) */
    lp_mat lm_head;              /* (n_vocab, dim); = tok_embd when tied */
} lp_weights;

/* Registry entry of a loaded tensor, for `loupe info`. */
typedef struct {
    char *name;
    lp_dtype type;
    int n_dims;
    int64_t shape[LP_MAX_DIMS];
} lp_tensor_entry;

struct loupe_model {
    char *path;
    char *source_kind;           /* "hf", "gguf", "loupe" */
    lp_hparams hp;
    lp_weights w;
    lp_tokenizer *tok;
    float *rope_inv_freq;        /* (rot_dim/2), scaling applied */
    /* ownership */
    lp_tensor_set ts;            /* mappings the weights point into */
    void **owned;                /* buffers converted at load */
    int n_owned, cap_owned;
    int load_threads;            /* threads packing int8 weights at load */
    lp_tensor_entry *tensors;    /* every weight, for reports */
    int n_tensors;
    uint64_t weight_bytes;
    uint64_t n_params;
};

/* Allocates a buffer the model frees on close (NULL on OOM). */
void *lp_model_alloc(loupe_model *m, size_t bytes);

/* Validates hyper-parameters (positive, consistent, not absurd); fills
 * derived values (head_dim, rot_dim, rope_inv_freq). */
loupe_status lp_hparams_validate(loupe_model *m);

/* Loaders (src/io). Each fills m->hp, m->w, m->tok. */
loupe_status lp_load_hf_dir(loupe_model *m, const char *dir);
loupe_status lp_load_gguf(loupe_model *m, const char *path);
loupe_status lp_load_loupe(loupe_model *m, const char *path);

/* Binds one matrix weight from a tensor: checks the shape is (rows, cols)
 * (or (cols, rows) when transpose: GPT-2 Conv1D) and converts to a kernel
 * type (BF16 -> F32; F32/F16 kept, copied only if misaligned or
 * transposed). int8 becomes LP_Q8P: Q8_0 rows are packed into a buffer the
 * model owns and their file pages released; an LP_Q8P tensor is used in
 * place when 64-byte aligned. A Q8 tensor cannot be transposed. */
loupe_status lp_bind_mat(loupe_model *m, const lp_tensor_info *t, int rows,
                         int cols, int transpose, lp_mat *out);
/* Binds a fused matrix of sum(rows[0..n_parts)) rows (fused QKV) as n_parts
 * matrices of rows[i] consecutive rows each. They share one buffer when
 * they can (float, or int8 split at multiples of 16 rows); otherwise each
 * int8 part is packed on its own. Recorded once, under t's name. */
loupe_status lp_bind_mat_parts(loupe_model *m, const lp_tensor_info *t, int n_parts,
                               const int *rows, int cols, int transpose, lp_mat *out);
/* Binds a 1-D (or 2-D, n = product) vector weight as f32 of n elements. */
loupe_status lp_bind_vec(loupe_model *m, const lp_tensor_info *t, int64_t n,
                         const float **out);

const char *lp_arch_name(lp_arch a);

/* Records a weight in m->tensors (for `loupe info`) and counts its
 * elements in n_params and its in-memory bytes in weight_bytes.
 * lp_bind_mat / lp_bind_vec call it; loaders that build weights another
 * way call it themselves. */
loupe_status lp_model_add_tensor(loupe_model *m, const char *name, lp_dtype type,
                                 int n_dims, const int64_t *shape, uint64_t bytes);
/* LOUPE_ERR_SHAPE ("file: tensor: shape [a, b] but config.json implies
 * [c, d]") unless t has exactly the n_dims dimensions want. */
loupe_status lp_check_shape(const loupe_model *m, const lp_tensor_info *t, int n_dims,
                            const int64_t *want);
/* Rows [r0, r0 + n) of w as a matrix sharing w's data (fused QKV split).
 * An LP_Q8P matrix splits only at a group boundary (r0 % LP_Q8P_ROWS == 0);
 * otherwise the result has data == NULL (lp_bind_mat_parts avoids that). */
lp_mat lp_mat_rows(const lp_mat *w, int r0, int n);
/* Reads dir/config.json (and dir/generation_config.json if present) into
 * hp without touching weights, then checks it as lp_hparams_validate does
 * (derived fields filled). Messages name the file and key. */
loupe_status lp_hf_read_config(const char *dir, lp_hparams *hp);

#endif
