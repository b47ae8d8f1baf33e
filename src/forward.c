/*
 * forward.c — the transformer forward pass (GPT-2 and Llama family).
 *
 * Shape legend: T tokens in this batch, C = dim, H = n_heads, K = n_kv_heads,
 * D = head_dim, F = ffn_dim, V = n_vocab. Every numeric loop is a call into
 * the kernel table (simd/kernels.h); this file only sequences them.
 */
#include "forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "hooks.h"

/* ------------------------------------------------------------ matmul */

/* Below this many multiply-adds a matmul or attention call runs on the
 * calling thread: waking a worker costs a few microseconds. */
#define LP_MIN_PARALLEL_MACS (1u << 18)

/* Up to LP_MATMUL_MAX products of one input X (T, n_in) run as one pool
 * job: the tasks of all of them in one list, so a decode step pays one
 * round trip for Q, K and V (and one for gate and up), not three. */
#define LP_MATMUL_MAX 3

/* f16 matmuls of at least this many tokens run in bf16 arithmetic where
 * the table offers it (gemm_f16_bf16): below it, packing each weight tile
 * for the bf16 kernel costs more than the faster products save. */
#define LP_BF16_MIN_T 32

typedef struct {
    const lp_kernels *k;
    const float *X;
    const uint16_t *Xb; /* X rounded to bf16, for LP_F16 in bf16; else NULL */
    lp_q8_act act;     /* X quantized, for LP_Q8P */
    int T;
    int n;             /* products */
    lp_matmul_out out[LP_MATMUL_MAX];
    int per_task[LP_MATMUL_MAX];       /* rows, or groups of 16 rows for LP_Q8P */
    int first_task[LP_MATMUL_MAX + 1]; /* product p owns tasks [first[p], first[p+1]) */
    int token_rows;    /* > 0: task i is rows [i*token_rows, ..) of every product
                          (lp_token_split), not a range of weight rows */
    float *task_y;     /* (n_threads, task_y_ld) a decode job's rows, per thread */
    size_t task_y_ld;
} lp_matmul_job;

/* Tokens per tile of the int8 activation layout (pack_q8a lays out 16
 * rows at a time): the unit in which int8 work splits tokens. */
#define LP_TOKEN_TILE 16

static int lp_mat_units(const lp_mat *W) {
    return W->type == LP_Q8P ? LP_Q8P_GROUPS(W->rows) : W->rows;
}

/* An input X (T, n) of LP_Q8P products quantized into the session's
 * buffers: by its own job before the matmul (lp_quant_task), or by the
 * step that produced X, while the rows are in cache. Full 16-row tiles are
 * also laid out in the table's tile format (pack_q8a). */
typedef struct lp_quant_job {
    const lp_kernels *k;
    const float *X;  /* (T, n) */
    int T, n;
    int8_t *qs;      /* (T, n) */
    float *d;        /* (T, n/32) */
    int32_t *corr;   /* (T, n/32) */
    int8_t *tiles;   /* q8a_tiles_bytes(T, n), or NULL */
    int per_task;    /* rows, for lp_quant_task */
} lp_quant_job;

/* Rows [t0, t1), columns [c0, c1) (multiples of 32) of X into j. */
static void lp_quant_rows(const lp_quant_job *j, int t0, int t1, int c0, int c1) {
    const size_t nb = (size_t)(j->n / LP_QK8);
    const int b0 = c0 / LP_QK8, b1 = c1 / LP_QK8;
    for (int t = t0; t < t1; t++) {
        const size_t o = (size_t)t * j->n + c0;
        j->k->quantize_q8a(j->X + o, c1 - c0, j->qs + o, j->d + t * nb + b0, j->corr + t * nb + b0);
    }
    if (!j->tiles) return;
    const lp_q8_act act = {j->qs, j->d, j->corr, NULL};
    for (int i = (t0 + LP_TOKEN_TILE - 1) / LP_TOKEN_TILE; (i + 1) * LP_TOKEN_TILE <= t1; i++)
        j->k->pack_q8a(&act, j->n, i, b0, b1, j->tiles);
}

/* The epilogue of out (see lp_matmul_out) on its columns [c0, c1). */
static void lp_matmul_epilogue(const lp_kernels *k, const lp_matmul_out *out, int T, int c0,
                               int c1) {
    for (int t = 0; t < T; t++) {
        float *y = out->Y + (size_t)t * out->ldy + c0;
        if (out->bias) k->add(y, out->bias + c0, c1 - c0);
        if (out->act == LP_EPI_GELU_TANH) k->gelu_tanh(y, c1 - c0);
        else if (out->act == LP_EPI_GELU_ERF) k->gelu_erf(y, c1 - c0);
        if (out->resid) k->add(out->resid + (size_t)t * out->ldy + c0, y, c1 - c0);
    }
}

static int lp_has_epilogue(const lp_matmul_out *out) {
    return out->bias || out->act != LP_EPI_NONE || out->resid || out->quant;
}

/* Y (T, ldy) columns of units [a, b) of W (rows, or groups of 16 rows). */
static void lp_matmul_units(const lp_matmul_job *j, const lp_matmul_out *out, int a, int b) {
    const lp_mat *W = out->W;
    float *Y = out->Y;
    const int ldy = out->ldy;
    if (W->type == LP_Q8P) j->k->gemm_q8p(j->T, W->cols, &j->act, W->data, W->rows, Y, ldy, a, b);
    else if (W->type == LP_F32) j->k->gemm_f32(j->T, W->cols, j->X, W->data, Y, ldy, a, b);
    else if (j->Xb) j->k->gemm_f16_bf16(j->T, W->cols, j->Xb, W->data, Y, ldy, a, b);
    else j->k->gemm_f16(j->T, W->cols, j->X, W->data, Y, ldy, a, b); /* LP_F16 */
}

/* Bytes of Y a task computes before its epilogue runs over them, so that
 * they are still in cache (a whole task's columns of a long prompt are not:
 * a strided pass over them from L3 costs more than the arithmetic). */
#define LP_EPILOGUE_BYTES (256u << 10)

/* int8 weights, groups [a, b) for tokens [ta, tb) (ta a multiple of 16):
 * the epilogue follows each (16 tokens, 8 groups) block of Y, which is
 * then in L1; the kernel is called per 16-token slice of the quantized
 * rows (and their tile layout), over the same weight groups. */
static void lp_matmul_q8_epilogue(const lp_matmul_job *j, const lp_matmul_out *out, int a, int b,
                                  int ta, int tb) {
    const lp_mat *W = out->W;
    const int n = W->cols, nb = n / LP_QK8;
    for (int c = a; c < b; c += 8) {
        const int e = c + 8 < b ? c + 8 : b;
        const int r0 = c * LP_Q8P_ROWS, r1 = e * LP_Q8P_ROWS < W->rows ? e * LP_Q8P_ROWS : W->rows;
        for (int t0 = ta; t0 < tb; t0 += LP_TOKEN_TILE) {
            const int tn = tb - t0 < LP_TOKEN_TILE ? tb - t0 : LP_TOKEN_TILE;
            const lp_q8_act act = {j->act.qs + (size_t)t0 * n, j->act.d + (size_t)t0 * nb,
                                   j->act.corr + (size_t)t0 * nb,
                                   j->act.tiles ? j->act.tiles + j->k->q8a_tiles_bytes(t0, n) : NULL};
            float *Y = out->Y + (size_t)t0 * out->ldy;
            j->k->gemm_q8p(tn, n, &act, W->data, W->rows, Y, out->ldy, c, e);
            lp_matmul_out o = *out;
            o.Y = Y;
            o.resid = out->resid ? out->resid + (size_t)t0 * out->ldy : NULL;
            lp_matmul_epilogue(j->k, &o, tn, r0, r1);
            if (out->quant) lp_quant_rows(out->quant, t0, t0 + tn, r0, r1);
        }
    }
}

/* The product of task i (not a token split) and its units [*a, *b). */
static const lp_matmul_out *lp_task_units(const lp_matmul_job *j, int i, int *a, int *b) {
    int p = 0;
    while (i >= j->first_task[p + 1]) p++;
    const lp_matmul_out *out = &j->out[p];
    *a = (i - j->first_task[p]) * j->per_task[p];
    *b = *a + j->per_task[p] < lp_mat_units(out->W) ? *a + j->per_task[p] : lp_mat_units(out->W);
    return out;
}

static void lp_matmul_task(void *ctx, int i, int thread) {
    (void)thread;
    const lp_matmul_job *j = ctx;
    if (j->token_rows) {
        const int ta = i * j->token_rows, tb = ta + j->token_rows < j->T ? ta + j->token_rows : j->T;
        for (int p = 0; p < j->n; p++)
            lp_matmul_q8_epilogue(j, &j->out[p], 0, lp_mat_units(j->out[p].W), ta, tb);
        return;
    }
    int a, b;
    const lp_matmul_out *out = lp_task_units(j, i, &a, &b);
    if (!lp_has_epilogue(out)) {
        lp_matmul_units(j, out, a, b);
    } else if (out->W->type == LP_Q8P) {
        lp_matmul_q8_epilogue(j, out, a, b, 0, j->T);
    } else { /* float weights: columns in steps of whole 16-row kernel tiles */
        int step = (int)(LP_EPILOGUE_BYTES / sizeof(float) / (size_t)j->T);
        step = step < 16 ? 16 : step / 16 * 16;
        for (int c = a; c < b; c += step) {
            const int e = c + step < b ? c + step : b;
            lp_matmul_units(j, out, c, e);
            lp_matmul_epilogue(j->k, out, j->T, c, e);
        }
    }
}

/* A decode step's matmul (T = 1) runs as a redoable pool job (see
 * threadpool.h): lp_matmul_compute puts a task's rows, bias and activation
 * applied, in the thread's row of task_y; lp_matmul_commit copies them out
 * and does the rest of the epilogue (residual add, quantization for the
 * next matmul). The arithmetic is the same as lp_matmul_task's, so the
 * results are too. */
static void lp_unit_rows(const lp_mat *W, int a, int b, int *r0, int *r1) {
    const int per = W->type == LP_Q8P ? LP_Q8P_ROWS : 1;
    *r0 = a * per;
    *r1 = b * per < W->rows ? b * per : W->rows;
}

static void lp_matmul_compute(void *ctx, int i, int thread) {
    const lp_matmul_job *j = ctx;
    int a, b, r0, r1;
    lp_matmul_out o = *lp_task_units(j, i, &a, &b);
    o.Y = j->task_y + (size_t)thread * j->task_y_ld;
    o.resid = NULL;
    o.quant = NULL;
    lp_matmul_units(j, &o, a, b);
    lp_unit_rows(o.W, a, b, &r0, &r1);
    lp_matmul_epilogue(j->k, &o, 1, r0, r1);
}

static void lp_matmul_commit(void *ctx, int i, int thread) {
    const lp_matmul_job *j = ctx;
    int a, b, r0, r1;
    const lp_matmul_out *out = lp_task_units(j, i, &a, &b);
    lp_unit_rows(out->W, a, b, &r0, &r1);
    const float *y = j->task_y + (size_t)thread * j->task_y_ld;
    memcpy(out->Y + r0, y + r0, (size_t)(r1 - r0) * sizeof(float));
    if (out->resid) j->k->add(out->resid + r0, y + r0, r1 - r0);
    if (out->quant && out->W->type == LP_Q8P) lp_quant_rows(out->quant, 0, 1, r0, r1);
}

_Static_assert(sizeof(lp_matmul_job) <= LP_POOL_CTX_MAX, "a decode matmul job is redoable");

/* Rows per task of a job over T rows: one task per thread, in whole tiles
 * of 16 rows (the int8 tile layout's), so that consecutive jobs over the
 * same rows give each thread the same rows (the pool runs task t on thread
 * t), and what one step writes the next reads from the same core's cache. */
static int lp_rows_per_task(int T, int n_threads) {
    const int tile = LP_TOKEN_TILE;
    return (T + tile * n_threads - 1) / (tile * n_threads) * tile;
}

static void lp_quant_task(void *ctx, int i, int thread) {
    (void)thread;
    const lp_quant_job *j = ctx;
    const int per = j->per_task;
    lp_quant_rows(j, i * per, (i + 1) * per < j->T ? (i + 1) * per : j->T, 0, j->n);
}

typedef struct {
    const lp_kernels *k;
    const float *X; /* (T, n) */
    int n;
    uint16_t *Xb;   /* (T, n) */
} lp_bf16_job;

static void lp_bf16_task(void *ctx, int t, int thread) {
    (void)thread;
    const lp_bf16_job *j = ctx;
    j->k->f32_to_bf16(j->X + (size_t)t * j->n, j->Xb + (size_t)t * j->n, j->n);
}

/* Tasks [0, n) of fn: on the calling thread when n_threads or n is 1 (not
 * worth a pool round trip), else on the pool. */
static void lp_run_tasks(loupe_session *s, int n_threads, int n, lp_task_fn fn, void *ctx) {
    if (n_threads == 1 || n == 1)
        for (int i = 0; i < n; i++) fn(ctx, i, 0);
    else
        lp_pool_run(s->pool, n, fn, ctx);
}

/* b->tiles with room for the tile layout of T rows of n (pack_q8a), or
 * NULL if memory runs out (each kernel call then lays out its own). */
static int8_t *lp_reserve_tiles(lp_q8_buf *b, const lp_kernels *k, int T, int n) {
    const size_t need = (k->q8a_tiles_bytes(T, n) + 63) / 64 * 64;
    if (need > b->cap_tiles) {
        int8_t *p = aligned_alloc(64, need);
        if (!p) return NULL;
        free(b->tiles);
        b->tiles = p;
        b->cap_tiles = need;
    }
    return b->tiles;
}

/* Buffer b of the session (s->xq), ready to take X (T, n) quantized. */
static lp_quant_job lp_quant_setup(loupe_session *s, int b, const float *X, int T, int n) {
    const lp_kernels *k = lp_kern();
    lp_q8_buf *q8 = &s->xq[b];
    lp_quant_job q = {k, X, T, n, q8->qs, q8->d, q8->corr, NULL, T};
    if (k->pack_q8a && T >= LP_TOKEN_TILE) q.tiles = lp_reserve_tiles(q8, k, T, n);
    return q;
}

/* Whether all n products take one int8 input (the step that makes it can
 * then quantize it: lp_quant_rows). */
static int lp_all_q8(const lp_matmul_out *out, int n) {
    for (int p = 0; p < n; p++)
        if (out[p].W->type != LP_Q8P || out[p].W->cols != out[0].W->cols) return 0;
    return 1;
}

/* Tasks of a matmul: ~4 per thread for balance. Float rows go in multiples
 * of 16; int8 groups in multiples of 4 (64 rows), so a kernel that blocks
 * groups pairs the same ones whatever the thread count. */
static int lp_matmul_per_task(const lp_mat *W, int n_threads) {
    int n_units = lp_mat_units(W);
    if (n_threads == 1) return n_units;
    int per = (n_units + 4 * n_threads - 1) / (4 * n_threads);
    if (W->type == LP_Q8P) return (per + 3) & ~3;
    per = (per + 15) & ~15;
    return per < 16 ? 16 : per;
}

/* Small int8 products of a long batch split tokens between threads, one
 * task each, rather than weight rows: the rows' activations then stay on
 * one core from the norm through the matmuls and their epilogues (GPT-2
 * prompt 1.1x faster at 2 threads); every thread reads all the weights,
 * which is cheap only while they fit in about two L2s. */
#define LP_TOKEN_SPLIT_BYTES (4u << 20)

static int lp_token_split(const lp_matmul_out *out, int n, int T, int n_threads) {
    size_t bytes = 0;
    for (int p = 0; p < n; p++) bytes += (size_t)out[p].W->rows * out[p].W->cols;
    return out[0].W->type == LP_Q8P && n_threads > 1 && T >= 32 * n_threads &&
           bytes <= LP_TOKEN_SPLIT_BYTES;
}

/* lp_matmul_n, with X already quantized into q (all products LP_Q8P of
 * width q->n) or, q NULL, not. */
static void lp_matmul_q(loupe_session *s, const float *X, int T, int n, const lp_matmul_out *out,
                        const lp_quant_job *q) {
    for (int p = 1; p < n; p++) /* one job needs one input format */
        if (out[p].W->type != out[0].W->type || out[p].W->cols != out[0].W->cols ||
            n > LP_MATMUL_MAX) {
            for (int i = 0; i < n; i++) lp_matmul_q(s, X, T, 1, &out[i], q);
            return;
        }
    const lp_kernels *k = lp_kern();
    const lp_mat *W0 = out[0].W;
    size_t macs = 0;
    for (int p = 0; p < n; p++) macs += (size_t)out[p].W->rows * W0->cols * T;
    /* a small product is not worth waking other threads for */
    int n_threads = macs < LP_MIN_PARALLEL_MACS ? 1 : lp_pool_size(s->pool);
    lp_matmul_job j = {k, X, NULL, {NULL, NULL, NULL, NULL}, T, n, {{0}}, {0}, {0}, 0, NULL, 0};
    if (W0->type == LP_Q8P) { /* quantize each activation row once */
        lp_quant_job qj;
        if (!q) {
            qj = lp_quant_setup(s, 0, X, T, W0->cols);
            qj.per_task = lp_rows_per_task(T, n_threads);
            lp_run_tasks(s, n_threads, (T + qj.per_task - 1) / qj.per_task, lp_quant_task, &qj);
            q = &qj;
        }
        j.act = (lp_q8_act){q->qs, q->d, q->corr, q->tiles};
    } else if (W0->type == LP_F16 && k->gemm_f16_bf16 && T >= LP_BF16_MIN_T &&
               W0->cols % 32 == 0) { /* round each activation row to bf16 once */
        lp_bf16_job bj = {k, X, W0->cols, s->xb16};
        lp_run_tasks(s, n_threads, T, lp_bf16_task, &bj);
        j.Xb = s->xb16;
    }
    if (lp_token_split(out, n, T, n_threads)) {
        for (int p = 0; p < n; p++) j.out[p] = out[p];
        j.token_rows = lp_rows_per_task(T, n_threads);
        lp_run_tasks(s, n_threads, (T + j.token_rows - 1) / j.token_rows, lp_matmul_task, &j);
        return;
    }
    for (int p = 0; p < n; p++) {
        j.out[p] = out[p];
        j.per_task[p] = lp_matmul_per_task(out[p].W, n_threads);
        int units = lp_mat_units(out[p].W);
        j.first_task[p + 1] = j.first_task[p] + (units + j.per_task[p] - 1) / j.per_task[p];
    }
    if (T == 1 && n_threads > 1 && s->task_y) { /* decode: a late worker's tasks can be redone */
        j.task_y = s->task_y;
        j.task_y_ld = s->task_y_ld;
        lp_pool_run_redo(s->pool, j.first_task[n], lp_matmul_compute, lp_matmul_commit, &j, sizeof j);
        return;
    }
    lp_run_tasks(s, n_threads, j.first_task[n], lp_matmul_task, &j);
}

void lp_matmul_n(loupe_session *s, const float *X, int T, int n, const lp_matmul_out *out) {
    lp_matmul_q(s, X, T, n, out, NULL);
}

void lp_matmul(loupe_session *s, float *Y, int ldy, const float *X, int T, const lp_mat *W) {
    const lp_matmul_out out = {Y, ldy, W, NULL, LP_EPI_NONE, NULL, NULL};
    lp_matmul_n(s, X, T, 1, &out);
}

/* ------------------------------------------------------------ row steps */

/* The element-wise steps between matmuls that no epilogue takes (norms,
 * swiglu, a residual add a hook may change first), split by rows over the
 * pool when the batch is large, so that the other cores need not wait for
 * one thread; each 16 rows then quantized for the next int8 matmul when
 * quant is set. Decode-sized steps stay on the calling thread (a pool round
 * trip costs microseconds). */
#define LP_MIN_PARALLEL_ELEMS (1u << 16)

/* T rows of a job touching elems values, as tasks of *per_task rows
 * (lp_rows_per_task) of fn over the pool, or one task on the calling
 * thread when the job is small. */
static void lp_run_rows(loupe_session *s, int T, size_t elems, lp_task_fn fn, void *ctx,
                        int *per_task) {
    const int n_threads = elems < LP_MIN_PARALLEL_ELEMS ? 1 : lp_pool_size(s->pool);
    *per_task = n_threads == 1 ? T : lp_rows_per_task(T, n_threads);
    lp_run_tasks(s, n_threads, (T + *per_task - 1) / *per_task, fn, ctx);
}

typedef enum {
    LP_STEP_NORM,      /* y = norm(x) * w (+ b): layernorm (GPT-2) or rmsnorm */
    LP_STEP_ADD,       /* y += x */
    LP_STEP_SWIGLU     /* y = silu(gate) * x */
} lp_step_op;

typedef struct {
    lp_step_op op;
    float *y;          /* (T, n) */
    const float *x;    /* (T, n): norm input, addend, or swiglu's up */
    const float *gate; /* (T, n): swiglu's gate */
    const float *w, *b; /* (n): norm weight and bias */
    int T, n;
    const lp_quant_job *quant; /* y into it, or NULL */
    const loupe_model *m;
    const lp_kernels *k;
    int per_task;      /* rows, lp_rows_per_task */
} lp_step_job;

static void lp_step_rows(const lp_step_job *j, int t0, int t1) {
    const int tile = LP_TOKEN_TILE;
    if (j->quant && t1 - t0 > tile) { /* a tile of rows at a time, quantized while in L1 */
        for (int t = t0; t < t1; t += tile) lp_step_rows(j, t, t + tile < t1 ? t + tile : t1);
        return;
    }
    const lp_kernels *k = j->k;
    for (int t = t0; t < t1; t++) {
        const size_t o = (size_t)t * j->n;
        switch (j->op) {
        case LP_STEP_NORM:
            if (j->m->hp.arch == LP_ARCH_GPT2)
                k->layernorm(j->y + o, j->x + o, j->w, j->b, j->n, j->m->hp.norm_eps);
            else
                k->rmsnorm(j->y + o, j->x + o, j->w, j->n, j->m->hp.norm_eps);
            break;
        case LP_STEP_ADD: k->add(j->y + o, j->x + o, j->n); break;
        case LP_STEP_SWIGLU: k->swiglu(j->y + o, j->gate + o, j->x + o, j->n); break;
        }
    }
    if (j->quant) lp_quant_rows(j->quant, t0, t1, 0, j->n);
}

static void lp_step_task(void *ctx, int i, int thread) {
    (void)thread;
    const lp_step_job *j = ctx;
    const int t0 = i * j->per_task;
    lp_step_rows(j, t0, t0 + j->per_task < j->T ? t0 + j->per_task : j->T);
}

static void lp_step(loupe_session *s, lp_step_job j) {
    j.m = s->m;
    j.k = lp_kern();
    lp_run_rows(s, j.T, (size_t)j.T * j.n, lp_step_task, &j, &j.per_task);
}

/* quant: out into it for the next int8 matmul, or NULL */
static void lp_norm_rows(loupe_session *s, float *out, const float *x, int T, const float *w,
                         const float *b, const lp_quant_job *quant) {
    lp_step(s, (lp_step_job){.op = LP_STEP_NORM, .y = out, .x = x, .w = w, .b = b, .T = T,
                             .n = s->m->hp.dim, .quant = quant});
}

/* x (T, n) += y: the residual stream takes a block's output. */
static void lp_residual_add(loupe_session *s, float *x, const float *y, int T, int n) {
    lp_step(s, (lp_step_job){.op = LP_STEP_ADD, .y = x, .x = y, .T = T, .n = n});
}

/* ------------------------------------------------------------ helpers */

/* Rotates q (T, H*D) and k (T, K*D) for positions pos0.. (Llama family). */
static void lp_rope_rows(const loupe_model *m, float *q, float *kk, int T, int pos0, int ldk) {
    const lp_hparams *hp = &m->hp;
    const lp_kernels *k = lp_kern();
    int half = hp->rot_dim / 2;
    float cs[512], sn[512]; /* rot_dim <= 1024 is checked at load */
    for (int t = 0; t < T; t++) {
        double pos = pos0 + t;
        for (int i = 0; i < half; i++) {
            double a = pos * (double)m->rope_inv_freq[i];
            cs[i] = (float)cos(a);
            sn[i] = (float)sin(a);
        }
        k->rope(q + (size_t)t * hp->n_heads * hp->head_dim, hp->n_heads, hp->head_dim,
                hp->rot_dim, cs, sn, hp->rope_neox);
        k->rope(kk + (size_t)t * ldk, hp->n_kv_heads, hp->head_dim, hp->rot_dim, cs, sn,
                hp->rope_neox);
    }
}

/* ------------------------------------------------------------ attention */

typedef struct {
    lp_attn_args a;
    float *scratch; /* (n_threads, scratch_ld) */
    size_t scratch_ld;
    float *task_y;  /* (n_threads, task_y_ld) a decode step's heads, per thread, or NULL */
    size_t task_y_ld;
} lp_attn_job;

/* Head h into a.out, or with task_y set (a decode step's attention, T = 1,
 * no pattern wanted, run as a redoable pool job like its matmuls) into the
 * thread's row of task_y, which lp_attn_commit copies out. */
static void lp_attn_task(void *ctx, int h, int thread) {
    const lp_attn_job *j = ctx;
    lp_attn_args a = j->a;
    a.scratch = j->scratch + (size_t)thread * j->scratch_ld;
    if (j->task_y) a.out = j->task_y + (size_t)thread * j->task_y_ld;
    lp_kern()->attention(&a, h, h + 1);
}

static void lp_attn_commit(void *ctx, int h, int thread) {
    const lp_attn_job *j = ctx;
    const size_t D = (size_t)j->a.head_dim;
    memcpy(j->a.out + h * D, j->task_y + (size_t)thread * j->task_y_ld + h * D, D * sizeof(float));
}

/* Makes sure s->pattern holds (n_heads, T, n_keys) floats. */
static int lp_reserve_pattern(loupe_session *s, size_t n) {
    if (n <= s->cap_pattern) return 1;
    float *p = realloc(s->pattern, n * sizeof(float));
    if (!p) return 0;
    s->pattern = p;
    s->cap_pattern = n;
    return 1;
}

/* Appends T new rows (T, K*D) at positions pos0.. of one layer's cache,
 * which keeps each KV head's rows together: (K, n_ctx, D). Attention
 * then reads every head's keys as one block, and threads taking different
 * heads read different memory. */
static void lp_kv_store(loupe_session *s, uint8_t *layer, const float *rows, int T, int pos0) {
    const lp_hparams *hp = &s->m->hp;
    const int K = hp->n_kv_heads, D = hp->head_dim;
    for (int t = 0; t < T; t++)
        for (int g = 0; g < K; g++) {
            const float *src = rows + ((size_t)t * K + g) * D; // (D)
            const size_t at = ((size_t)g * s->n_ctx + pos0 + t) * D;
            if (s->kv_type == LP_F16) lp_kern()->f32_to_f16(src, (uint16_t *)(void *)layer + at, D);
            else memcpy((float *)(void *)layer + at, src, (size_t)D * sizeof(float));
        }
}

/* After the Q, K, V matmuls: rotary embedding (Llama family) of q and k,
 * and k, v appended to the layer's cache, by rows over the pool. */
typedef struct {
    loupe_session *s;
    int T, pos0;
    uint8_t *k_layer, *v_layer; /* (K, n_ctx, D) */
    int per_task;               /* rows */
} lp_kv_job;

static void lp_kv_task(void *ctx, int i, int thread) {
    (void)thread;
    const lp_kv_job *j = ctx;
    loupe_session *s = j->s;
    const lp_hparams *hp = &s->m->hp;
    const int q_dim = hp->n_heads * hp->head_dim, kv_dim = hp->n_kv_heads * hp->head_dim;
    const int t0 = i * j->per_task, n = t0 + j->per_task < j->T ? j->per_task : j->T - t0;
    float *q = s->q + (size_t)t0 * q_dim, *k = s->kbuf + (size_t)t0 * kv_dim;
    if (hp->arch == LP_ARCH_LLAMA) lp_rope_rows(s->m, q, k, n, j->pos0 + t0, kv_dim);
    lp_kv_store(s, j->k_layer, k, n, j->pos0 + t0);
    lp_kv_store(s, j->v_layer, s->vbuf + (size_t)t0 * kv_dim, n, j->pos0 + t0);
}

/* x (T, C) += attention block of layer l. Returns 1 if a hook aborted. */
static int lp_attention_forward(loupe_session *s, int l, int T) {
    const loupe_model *m = s->m;
    const lp_hparams *hp = &m->hp;
    const lp_layer *L = &m->w.layers[l];
    int C = hp->dim, D = hp->head_dim;
    int q_dim = hp->n_heads * D, kv_dim = hp->n_kv_heads * D;
    int pos0 = s->pos;
    size_t elt = s->kv_type == LP_F16 ? sizeof(uint16_t) : sizeof(float);
    size_t layer_off = (size_t)l * s->n_ctx * kv_dim * elt; /* bytes */
    uint8_t *k_layer = (uint8_t *)s->k_cache + layer_off;   /* (K, n_ctx, D) */
    uint8_t *v_layer = (uint8_t *)s->v_cache + layer_off;   /* (K, n_ctx, D) */

    const lp_matmul_out qkv[3] = {{s->q, q_dim, &L->wq, L->bq, LP_EPI_NONE, NULL, NULL},
                                  {s->kbuf, kv_dim, &L->wk, L->bk, LP_EPI_NONE, NULL, NULL},
                                  {s->vbuf, kv_dim, &L->wv, L->bv, LP_EPI_NONE, NULL, NULL}};
    /* int8 Q, K, V: the norm quantizes its rows for them */
    lp_quant_job qn;
    const lp_quant_job *q = lp_all_q8(qkv, 3) ? (qn = lp_quant_setup(s, 0, s->xn, T, C), &qn) : NULL;
    lp_norm_rows(s, s->xn, s->x, T, L->attn_norm_w, L->attn_norm_b, q);
    lp_matmul_q(s, s->xn, T, 3, qkv, q);
    lp_kv_job kj = {s, T, pos0, k_layer, v_layer, 0};
    lp_run_rows(s, T, (size_t)T * (q_dim + 2 * kv_dim), lp_kv_task, &kj, &kj.per_task);

    lp_attn_job j;
    memset(&j, 0, sizeof j);
    j.a.T = T;
    j.a.pos0 = pos0;
    j.a.n_heads = hp->n_heads;
    j.a.n_kv_heads = hp->n_kv_heads;
    j.a.head_dim = D;
    j.a.scale = 1.0f / sqrtf((float)D);
    j.a.q = s->q;
    j.a.k = k_layer;
    j.a.v = v_layer;
    j.a.kv_row_ld = (size_t)D;
    j.a.kv_head_ld = (size_t)s->n_ctx * D;
    j.a.kv_type = s->kv_type;
    j.a.out = s->att;
    j.scratch = s->attn_scratch;
    j.scratch_ld = s->attn_scratch_ld;
    int n_keys = pos0 + T;
    int want_pattern = lp_hooks_want(s, LOUPE_HOOK_ATTN_PATTERN, l) &&
                       lp_reserve_pattern(s, (size_t)hp->n_heads * T * n_keys);
    if (want_pattern) {
        j.a.probs = s->pattern;
        j.a.probs_ld = n_keys;
    }
    size_t attn_macs = (size_t)hp->n_heads * T * n_keys * D * 2;
    int attn_threads = attn_macs < LP_MIN_PARALLEL_MACS ? 1 : lp_pool_size(s->pool);
    if (T == 1 && !want_pattern && attn_threads > 1 && s->task_y) {
        j.task_y = s->task_y;
        j.task_y_ld = s->task_y_ld;
        lp_pool_run_redo(s->pool, hp->n_heads, lp_attn_task, lp_attn_commit, &j, sizeof j);
    } else {
        lp_run_tasks(s, attn_threads, hp->n_heads, lp_attn_task, &j);
    }
    if (want_pattern && lp_hooks_fire(s, LOUPE_HOOK_ATTN_PATTERN, l, pos0, T, n_keys,
                                      hp->n_heads, s->pattern))
        return 1;
    if (lp_hooks_fire(s, LOUPE_HOOK_ATTN_Z, l, pos0, T, q_dim, 1, s->att)) return 1;

    /* the residual add joins the matmul unless a hook may change attn_out */
    const int hooked = lp_hooks_want(s, LOUPE_HOOK_ATTN_OUT, l);
    const lp_matmul_out o = {s->proj, C, &L->wo, L->bo, LP_EPI_NONE, hooked ? NULL : s->x, NULL};
    lp_matmul_n(s, s->att, T, 1, &o);
    if (hooked) {
        if (lp_hooks_fire(s, LOUPE_HOOK_ATTN_OUT, l, pos0, T, C, 1, s->proj)) return 1;
        lp_residual_add(s, s->x, s->proj, T, C);
    }
    return lp_hooks_fire(s, LOUPE_HOOK_RESID_MID, l, pos0, T, C, 1, s->x);
}

/* ------------------------------------------------------------ MLP */

/* x (T, C) += MLP block of layer l. Returns 1 if a hook aborted. */
static int lp_mlp_forward(loupe_session *s, int l, int T) {
    const loupe_model *m = s->m;
    const lp_hparams *hp = &m->hp;
    const lp_layer *L = &m->w.layers[l];
    int C = hp->dim, F = hp->ffn_dim;

    /* int8 weights: the norm quantizes its rows for up (and gate), and the
     * activation, in up's epilogue or the swiglu step, for down */
    const int silu = hp->act == LP_ACT_SILU;
    const lp_matmul_out up_gate[2] = {
        {s->hb, F, &L->w_up, L->b_up, LP_EPI_NONE, NULL, NULL},
        {s->hb2, F, &L->w_gate, NULL, LP_EPI_NONE, NULL, NULL}};
    lp_quant_job qn, qh;
    const lp_quant_job *q_up =
        lp_all_q8(up_gate, silu ? 2 : 1) ? (qn = lp_quant_setup(s, 0, s->xn, T, C), &qn) : NULL;
    const lp_quant_job *q_down = L->w_down.type == LP_Q8P && (silu || L->w_up.type == LP_Q8P)
                                     ? (qh = lp_quant_setup(s, 1, s->hb, T, F), &qh)
                                     : NULL;
    lp_norm_rows(s, s->xn, s->x, T, L->ffn_norm_w, L->ffn_norm_b, q_up);
    if (silu) { /* gate and up in one job, then silu(gate) * up */
        lp_matmul_q(s, s->xn, T, 2, up_gate, q_up);
        lp_step(s, (lp_step_job){.op = LP_STEP_SWIGLU, .y = s->hb, .x = s->hb, .gate = s->hb2,
                                 .T = T, .n = F, .quant = q_down});
    } else { /* gelu in the up matmul's epilogue */
        lp_matmul_out up = up_gate[0];
        up.act = hp->act == LP_ACT_GELU_TANH ? LP_EPI_GELU_TANH : LP_EPI_GELU_ERF;
        up.quant = q_down;
        lp_matmul_q(s, s->xn, T, 1, &up, q_up);
    }
    const int hooked = lp_hooks_want(s, LOUPE_HOOK_MLP_OUT, l);
    const lp_matmul_out down = {s->proj, C, &L->w_down, L->b_down, LP_EPI_NONE,
                                hooked ? NULL : s->x, NULL};
    lp_matmul_q(s, s->hb, T, 1, &down, q_down);
    if (hooked) {
        if (lp_hooks_fire(s, LOUPE_HOOK_MLP_OUT, l, s->pos, T, C, 1, s->proj)) return 1;
        lp_residual_add(s, s->x, s->proj, T, C);
    }
    return lp_hooks_fire(s, LOUPE_HOOK_RESID_POST, l, s->pos, T, C, 1, s->x);
}

/* ------------------------------------------------------------ embed, head */

static void lp_embed(loupe_session *s, const int32_t *tokens, int T) {
    const loupe_model *m = s->m;
    const lp_mat *E = &m->w.tok_embd;
    const lp_kernels *k = lp_kern();
    int C = m->hp.dim;
    for (int t = 0; t < T; t++) {
        float *row = s->x + (size_t)t * C;
        size_t r = (size_t)tokens[t];
        if (E->type == LP_F32) {
            memcpy(row, (const float *)E->data + r * C, (size_t)C * sizeof(float));
        } else if (E->type == LP_F16) {
            k->f16_to_f32((const uint16_t *)E->data + r * C, row, C);
        } else { /* LP_Q8P: the row's blocks dequantized */
            lp_q8p_dequant_row(E->data, C, (int64_t)r, row);
        }
        if (m->w.pos_embd) k->add(row, m->w.pos_embd + (size_t)(s->pos + t) * C, C);
    }
}

/* logits (n, V) of rows first..T-1. Returns 1 if a hook aborted. */
static int lp_head(loupe_session *s, int T, float *logits, int all_logits) {
    const loupe_model *m = s->m;
    int C = m->hp.dim;
    int first = all_logits ? 0 : T - 1;
    int n = T - first;
    lp_norm_rows(s, s->xn, s->x + (size_t)first * C, n, m->w.out_norm_w, m->w.out_norm_b, NULL);
    if (lp_hooks_fire(s, LOUPE_HOOK_FINAL_NORM, -1, s->pos + first, n, C, 1, s->xn)) return 1;
    lp_matmul(s, logits, m->hp.n_vocab, s->xn, n, &m->w.lm_head);
    return lp_hooks_fire(s, LOUPE_HOOK_LOGITS, -1, s->pos + first, n, m->hp.n_vocab, 1, logits);
}

/* ------------------------------------------------------------ forward */

loupe_status lp_forward(loupe_session *s, const int32_t *tokens, int T, float *logits,
                        int all_logits) {
    if (T <= 0 || T > s->cap_T || s->pos + T > s->n_ctx)
        return lp_fail(LOUPE_ERR_INTERNAL, "lp_forward: batch of %d at %d/%d", T, s->pos,
                       s->n_ctx);
    int C = s->m->hp.dim, aborted = 0;
    lp_embed(s, tokens, T);
    aborted = lp_hooks_fire(s, LOUPE_HOOK_EMBED, -1, s->pos, T, C, 1, s->x);
    for (int l = 0; l < s->m->hp.n_layers && !aborted; l++) {
        aborted = (s->abort_fn && s->abort_fn(s->abort_user)) ||
                  lp_hooks_fire(s, LOUPE_HOOK_RESID_PRE, l, s->pos, T, C, 1, s->x) ||
                  lp_attention_forward(s, l, T) || lp_mlp_forward(s, l, T);
    }
    if (!aborted && logits) aborted = lp_head(s, T, logits, all_logits);
    if (aborted)
        return lp_fail(LOUPE_ERR_CANCELLED, "a hook or the abort check stopped the forward pass");
    s->pos += T;
    return LOUPE_OK;
}

loupe_status loupe_unembed(loupe_session *s, const float *resid, int n, float *logits) {
    if (!s || !resid || !logits || n < 0) return lp_fail(LOUPE_ERR_ARG, "loupe_unembed: bad arguments");
    const loupe_model *m = s->m;
    int C = m->hp.dim, V = m->hp.n_vocab;
    for (int done = 0; done < n;) {
        int T = n - done < s->cap_T ? n - done : s->cap_T;
        lp_norm_rows(s, s->xn, resid + (size_t)done * C, T, m->w.out_norm_w, m->w.out_norm_b, NULL);
        lp_matmul(s, logits + (size_t)done * V, V, s->xn, T, &m->w.lm_head);
        done += T;
    }
    return LOUPE_OK;
}
