/*
 * amx.c — prefill matmuls on AMX tiles (Intel Sapphire Rapids and later).
 *
 * Built with AMX flags; reached only through the amx table, which
 * dispatch.c offers when CPUID reports AMX-TILE, AMX-INT8 and AMX-BF16,
 * XCR0 shows the OS saves tile state, and Linux granted this process tile
 * data (arch_prctl ARCH_REQ_XCOMP_PERM). That table is the avx512bf16 one
 * with these two matmuls; decode (T < 16) and the edges of a product (the
 * last T % 16 tokens, a last group of fewer than 16 f16 rows) go to the
 * avx512bf16 kernels, which the amx table keeps as its fallbacks.
 *
 * A tile is 16 rows of up to 64 bytes; one tile product multiplies a
 * (16, K) tile by a (K, 16) tile in one instruction (K = 64 int8 or 32
 * bf16 per row): 16x16x64 int8 multiply-adds, 16 times a vpdpbusd.
 *
 * Both kernels put 16 tokens in the rows of A and 16 weight rows in the
 * columns of B. The activations are first copied so that each A tile is
 * one contiguous run: activation rows 2 or 4 KB apart would put all 16
 * rows of a tile in one or two L1 sets (the copy made the bf16 kernel 1.4x
 * faster). int8 activations are copied once per matmul (pack_q8a, called
 * by forward.c), bf16 ones by each call.
 *
 *  - int8 (gemm_q8p): the packed weights (quant/blocks.h) already are B
 *    tiles. Block b of a group, qs[b][j][i][k] (8, 16, 4), is a (8 rows x
 *    64 bytes) tile: row j holds elements 4j..4j+3 of the 16 weight rows.
 *    A tile product over one block (K = 32) gives the exact int32 dot of
 *    each token with each row; every block has its own scales, so each
 *    block's product goes to its own C tile, is stored, and is scaled into
 *    f32 accumulators with AVX-512 (the same arithmetic as the avx512
 *    kernel, in the same block order). Four blocks are in flight in C
 *    tiles 0-3 while the previous four are scaled. A tile store per 8192
 *    products and four vector instructions per 512 are the bound, not the
 *    tile products: about 1.25x the VNNI kernel (bench_kernels gemm512).
 *  - bf16 (gemm_f16_bf16): weights are f16, so lp_bf16_pack_group converts
 *    16 rows x 512 columns at a time to bf16 pairs, which is the B tile
 *    layout. Rows go in blocks of 256 and columns in chunks of 512: a
 *    block's packed chunk, every token's chunk of activations and the
 *    block's outputs stay in L2 while the chunks go by, and the C tiles
 *    accumulate in f32 in Y. About 7x the vdpbf16ps kernel.
 */
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "avx512_bf16.h"
#include "kernels.h"

#define LP_INLINE static inline __attribute__((always_inline))

/* Out of GCC's interprocedural analysis (see q8_pack_tokens); clang, which
 * builds the fuzz targets, has no noipa and no such problem. */
#if defined(__clang__)
#define LP_NOIPA __attribute__((noinline))
#else
#define LP_NOIPA __attribute__((noipa))
#endif

/* The operand of ldtilecfg (palette 1): bytes per row and rows per tile. */
typedef struct {
    _Alignas(64) uint8_t palette;
    uint8_t start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} lp_tilecfg;

_Static_assert(sizeof(lp_tilecfg) == 64, "ldtilecfg reads 64 bytes");

#define AMX_M 16 /* tokens per A tile */

/* Tile loads, stores and the config load, as asm that clobbers memory.
 * GCC 12's intrinsics name only the address register, not the memory, so
 * the compiler does not know that a tile load reads what C code stored or
 * that C code reads what a tile store wrote (and _tile_loadconfig says it
 * reads 8 of its 64 bytes, so stores to a config could be dropped as
 * dead). t: a tile number, a literal. */
#define LP_TILE_LOAD(t, base, stride)                                                   \
    __asm__ __volatile__("tileloadd (%0,%1,1), %%tmm" #t ::"r"((const void *)(base)), \
                         "r"((long)(stride))                                            \
                         : "memory")
#define LP_TILE_STORE(t, base, stride)                                                  \
    __asm__ __volatile__("tilestored %%tmm" #t ", (%0,%1,1)" ::"r"((void *)(base)),    \
                         "r"((long)(stride))                                            \
                         : "memory")
#define LP_TILE_CONFIG(cfg) __asm__ __volatile__("ldtilecfg %0" ::"m"(*(cfg)) : "memory")

/* The avx512bf16 entries this table replaces: decode and the edges. */
static void (*base_gemm_q8p)(int T, int n_in, const lp_q8_act *X, const uint8_t *W, int n_out,
                             float *Y, int ldy, int g0, int g1);
static void (*base_gemm_f16_bf16)(int T, int n_in, const uint16_t *Xb, const uint16_t *W,
                                  float *Y, int ldy, int r0, int r1);

/* ========================================================= int8 tiles */

/* Tiles 0-3: C, one block each (16 tokens x 16 int32); 4-5: A (16 tokens
 * x 32 bytes); 6-7: B (8 rows x 64 bytes, one block of one group). */
static const lp_tilecfg q8_config = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 32, 32, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 8, 8},
};

/* Block products of blocks b .. b+n-1 (n <= 4) into C tiles 0..n-1;
 * A and B alternate between tiles 4/6 and 5/7 so that a load need not
 * wait for the previous product. xa: the 16 tokens' (nb, 16, 32) bytes;
 * qs: the group's (nb, 512) bytes. */
#define Q8_BLOCK(c, at, bt)                                               \
    do {                                                                  \
        _tile_zero(c);                                                    \
        LP_TILE_LOAD(at, xa + 512 * (size_t)(b + c), 32);                 \
        LP_TILE_LOAD(bt, qs + 512 * (size_t)(b + c), 64);                 \
        _tile_dpbsud(c, at, bt);                                          \
    } while (0)
LP_INLINE void q8_blocks(const int8_t *xa, const uint8_t *qs, int b, int n) {
    Q8_BLOCK(0, 4, 6);
    if (n > 1) Q8_BLOCK(1, 5, 7);
    if (n > 2) Q8_BLOCK(2, 4, 6);
    if (n > 3) Q8_BLOCK(3, 5, 7);
}
#undef Q8_BLOCK

/* C tiles 0..n-1 to S. */
LP_INLINE void q8_store(int n, int32_t (*S)[AMX_M][16]) {
    LP_TILE_STORE(0, S[0], 64);
    if (n > 1) LP_TILE_STORE(1, S[1], 64);
    if (n > 2) LP_TILE_STORE(2, S[2], 64);
    if (n > 3) LP_TILE_STORE(3, S[3], 64);
}

/* One 16-token tile of activations, copied so that each A tile is one
 * contiguous 512-byte run (activation rows 2 or 4 KB apart would put all
 * 16 rows of a tile in one or two L1 sets) and each block's 16 scales and
 * corrections are one vector. Q8_TILE_BYTES(nb) bytes:
 *   qs   : int8  [nb][16][32]
 *   d    : float [nb][16]
 *   corr : int32 [nb][16]  */
#define Q8_TILE_BYTES(nb) ((size_t)(nb) * (512 + 64 + 64))

/* noipa: GCC 12.2 at -O3 (with both ipa-modref and ipa-pure-const on)
 * turned pack_q8a, which only calls this, into an empty function. */
LP_NOIPA static void q8_pack_tokens(const lp_q8_act *X, int n_in, int t0, int b0, int b1,
                                   int8_t *tile) {
    const int nb = n_in / LP_QK8;
    float *d = (float *)(void *)(tile + (size_t)nb * 512);
    int32_t *corr = (int32_t *)(void *)(tile + (size_t)nb * 576);
    for (int a = 0; a < AMX_M; a++) {
        const int8_t *x = X->qs + (size_t)(t0 + a) * n_in;
        const size_t row = (size_t)(t0 + a) * nb;
        for (int b = b0; b < b1; b++) {
            _mm256_storeu_si256((__m256i *)(tile + (size_t)b * 512 + 32 * a),
                                _mm256_loadu_si256((const __m256i *)(x + 32 * b)));
            d[b * 16 + a] = X->d[row + b];
            corr[b * 16 + a] = X->corr[row + b];
        }
    }
}

/* acc[a] += (S[j][a] + corr[b+j][a]) * d_w[b+j] * d[b+j][a] for the n
 * blocks in S: the avx512 kernel's scaling, block by block. */
LP_INLINE void q8_scale(__m512 acc[AMX_M], int32_t (*S)[AMX_M][16], const uint16_t *dw_all,
                        const float *xd, const int32_t *xc, int b, int n) {
    for (int j = 0; j < n; j++) {
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(dw_all + 16 * (b + j))));
        const float *d = xd + 16 * (b + j);
        const int32_t *c = xc + 16 * (b + j);
#pragma GCC unroll 16
        for (int a = 0; a < AMX_M; a++) {
            const __m512i s = _mm512_add_epi32(_mm512_load_si512(S[j][a]), _mm512_set1_epi32(c[a]));
            const __m512 sc = _mm512_mul_ps(dw, _mm512_set1_ps(d[a]));
            acc[a] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, acc[a]);
        }
    }
}

/* One token tile (q8_pack_tokens) x group g; writes rows < n_out of the
 * tile's 16 rows of Y. */
static void q8_tile(int n_in, const int8_t *tile, const uint8_t *W, int n_out, float *Y,
                    int ldy, int g) {
    const int nb = n_in / LP_QK8;
    const uint8_t *grp = W + (size_t)g * LP_Q8P_GROUP_BYTES(n_in);
    const uint16_t *dw = (const uint16_t *)(const void *)grp; /* (nb, 16) fp16 */
    const uint8_t *qs = grp + (size_t)nb * 32;                 /* (nb, 8, 16, 4) */
    const float *xd = (const float *)(const void *)(tile + (size_t)nb * 512);     /* (nb, 16) */
    const int32_t *xc = (const int32_t *)(const void *)(tile + (size_t)nb * 576); /* (nb, 16) */
    _Alignas(64) int32_t S[2][4][AMX_M][16]; /* double buffer */
    __m512 acc[AMX_M];
    for (int a = 0; a < AMX_M; a++) acc[a] = _mm512_setzero_ps();
    /* The tiles compute blocks b.. while the vector units scale the last
     * four; the next tile stores come after the scaling in program order,
     * so its loads are not queued behind them. */
    int prev_b = 0, prev_n = nb < 4 ? nb : 4;
    q8_blocks(tile, qs, 0, prev_n);
    q8_store(prev_n, S[0]);
    int cur = 1;
    for (int b = 4; b < nb; b += 4, cur ^= 1) {
        const int n = nb - b < 4 ? nb - b : 4;
        q8_blocks(tile, qs, b, n);
        q8_scale(acc, S[cur ^ 1], dw, xd, xc, prev_b, prev_n);
        q8_store(n, S[cur]);
        prev_b = b, prev_n = n;
    }
    q8_scale(acc, S[cur ^ 1], dw, xd, xc, prev_b, prev_n);
    const int r = g * LP_Q8P_ROWS, rows = n_out - r < 16 ? n_out - r : 16;
    const __mmask16 m = (__mmask16)((1u << rows) - 1);
    for (int a = 0; a < AMX_M; a++) _mm512_mask_storeu_ps(Y + (size_t)a * ldy + r, m, acc[a]);
}

static size_t q8a_tiles_bytes(int T, int n_in) {
    return (size_t)(T / AMX_M) * Q8_TILE_BYTES(n_in / LP_QK8);
}

static void pack_q8a(const lp_q8_act *X, int n_in, int i, int b0, int b1, int8_t *tiles) {
    q8_pack_tokens(X, n_in, i * AMX_M, b0, b1, tiles + (size_t)i * Q8_TILE_BYTES(n_in / LP_QK8));
}

/* Groups per block: a block (8 x 16 x n_in bytes) stays in L2 while every
 * 16-token tile passes over it, each tile staying in L1/L2 across the
 * block's groups. */
#define Q8_NG 8

/* Blocks of Q8_NG groups outer, tokens, then groups; the last T % 16
 * tokens go to the avx512 kernel, as does everything if the packing buffer
 * cannot be had. */
static void gemm_q8p(int T, int n_in, const lp_q8_act *X, const uint8_t *W, int n_out,
                     float *Y, int ldy, int g0, int g1) {
    const int nb = n_in / LP_QK8;
    int Tm = T / AMX_M * AMX_M;
    int8_t *own = NULL;
    const int8_t *xa = X->tiles;
    if (Tm > 0 && !xa) { /* not laid out by pack_q8a: do it here */
        own = aligned_alloc(64, q8a_tiles_bytes(T, n_in));
        if (!own) Tm = 0;
        for (int i = 0; i < Tm / AMX_M; i++) pack_q8a(X, n_in, i, 0, nb, own);
        xa = own;
    }
    if (Tm > 0) {
        LP_TILE_CONFIG(&q8_config);
        for (int gb = g0; gb < g1; gb += Q8_NG) {
            const int ge = g1 - gb < Q8_NG ? g1 : gb + Q8_NG;
            for (int t = 0; t < Tm; t += AMX_M)
                for (int g = gb; g < ge; g++)
                    q8_tile(n_in, xa + (size_t)(t / AMX_M) * Q8_TILE_BYTES(nb), W, n_out,
                            Y + (size_t)t * ldy, ldy, g);
        }
        _tile_release();
    }
    free(own);
    if (Tm < T) {
        const lp_q8_act tail = {X->qs + (size_t)Tm * n_in, X->d + (size_t)Tm * nb,
                                X->corr + (size_t)Tm * nb, NULL};
        base_gemm_q8p(T - Tm, n_in, &tail, W, n_out, Y + (size_t)Tm * ldy, ldy, g0, g1);
    }
}

/* ========================================================= bf16 tiles */

/* Tiles 0-3: C (16 tokens x 16 f32) for token tiles 0-1 x groups 0-1;
 * 4-5: A (16 tokens x 32 bf16); 6-7: B (16 pairs x 16 rows, bf16 pairs). */
static const lp_tilecfg bf16_config = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};

/* MT token tiles (16 tokens each) x NG groups over kc columns of one
 * packed chunk: C from Y (zero for the first chunk), += A x B, back to Y.
 * xa: the first token tile's (n_in/32, 16, 32) bf16 at the chunk's first
 * column (the second tile follows n_in * 16 elements later); y: Y at the
 * tile. */
LP_INLINE void bf16_tiles(const int MT, const int NG, int n_in, int kc, const uint16_t *xa,
                          const uint32_t *P0, const uint32_t *P1, float *y, int ldy, int first) {
    const size_t ys = (size_t)ldy * sizeof(float);
    float *y1 = y + (size_t)AMX_M * ldy;
    const uint16_t *xa1 = xa + (size_t)AMX_M * n_in;
    if (first) {
        _tile_zero(0);
        if (NG == 2) _tile_zero(1);
        if (MT == 2) _tile_zero(2);
        if (MT == 2 && NG == 2) _tile_zero(3);
    } else {
        LP_TILE_LOAD(0, y, ys);
        if (NG == 2) LP_TILE_LOAD(1, y + 16, ys);
        if (MT == 2) LP_TILE_LOAD(2, y1, ys);
        if (MT == 2 && NG == 2) LP_TILE_LOAD(3, y1 + 16, ys);
    }
    for (int k = 0; k < kc; k += 32) {
        LP_TILE_LOAD(4, xa + 16 * k, 64);
        LP_TILE_LOAD(6, P0 + 8 * k, 64); /* 16 pairs x 16 dwords per 32 columns */
        _tile_dpbf16ps(0, 4, 6);
        if (NG == 2) {
            LP_TILE_LOAD(7, P1 + 8 * k, 64);
            _tile_dpbf16ps(1, 4, 7);
        }
        if (MT == 2) {
            LP_TILE_LOAD(5, xa1 + 16 * k, 64);
            _tile_dpbf16ps(2, 5, 6);
            if (NG == 2) _tile_dpbf16ps(3, 5, 7);
        }
    }
    LP_TILE_STORE(0, y, ys);
    if (NG == 2) LP_TILE_STORE(1, y + 16, ys);
    if (MT == 2) LP_TILE_STORE(2, y1, ys);
    if (MT == 2 && NG == 2) LP_TILE_STORE(3, y1 + 16, ys);
}

/* Token tiles in pairs x group pairs of one row block and column chunk.
 * xa: (Tm/16, n_in/32, 16, 32); P: the block's groups, (kc/2, 16) each at
 * LP_BF16_KC/2 * 16 dwords apart. */
static void bf16_block(int Tm, int n_in, const uint16_t *xa, int k0, int kc, const uint32_t *P,
                       int n_rows, float *Y, int ldy, int rb) {
    const int first = k0 == 0;
    const size_t pg = LP_BF16_KC / 2 * 16;
    for (int t = 0; t < Tm; t += 2 * AMX_M) {
        const uint16_t *x = xa + (size_t)t * n_in + (size_t)k0 * 16;
        const int MT = Tm - t >= 2 * AMX_M ? 2 : 1;
        for (int r = 0; r < n_rows; r += 32) {
            const uint32_t *P0 = P + (size_t)(r / 16) * pg, *P1 = P0 + pg;
            float *y = Y + (size_t)t * ldy + rb + r;
            const int NG = n_rows - r >= 32 ? 2 : 1;
            if (MT == 2 && NG == 2) bf16_tiles(2, 2, n_in, kc, x, P0, P1, y, ldy, first);
            else if (MT == 2) bf16_tiles(2, 1, n_in, kc, x, P0, P1, y, ldy, first);
            else if (NG == 2) bf16_tiles(1, 2, n_in, kc, x, P0, P1, y, ldy, first);
            else bf16_tiles(1, 1, n_in, kc, x, P0, P1, y, ldy, first);
        }
    }
}

/* Rows [0, Tm) of Xb (T, n_in) as (Tm/16, n_in/32, 16, 32): each A tile
 * one contiguous KB (row strides of 4 KB would put a tile in one L1 set). */
LP_NOIPA /* as q8_pack_tokens */
static void bf16_pack_tokens(const uint16_t *Xb, int n_in, int Tm, uint16_t *xa) {
    for (int t = 0; t < Tm; t++) {
        const uint16_t *x = Xb + (size_t)t * n_in;
        uint16_t *dst = xa + (size_t)(t / AMX_M) * AMX_M * n_in + (size_t)(t % AMX_M) * 32;
        for (int k = 0; k < n_in; k += 32)
            _mm512_storeu_si512(dst + (size_t)k * 16, _mm512_loadu_si512(x + k));
    }
}

/* Rows per block: the block's packed chunk (256 KB), the chunk of every
 * token (T x 512 x 2 B) and the block's outputs (T x 256 x 4 B) stay in
 * L2 while the column chunks go by, so C tiles come back from L2. */
#define BF16_NB 256

/* Whole 16-row groups of [r0, r1), 16-token tiles; the last (r1 - r0) % 16
 * rows and T % 16 tokens go to the avx512bf16 kernel, as does everything
 * if the buffers cannot be had. */
static void gemm_f16_bf16(int T, int n_in, const uint16_t *Xb, const uint16_t *W, float *Y,
                          int ldy, int r0, int r1) {
    const int Tm = T / AMX_M * AMX_M;
    const int rm = r0 + (r1 - r0) / 16 * 16;
    const size_t pg = LP_BF16_KC / 2 * 16; /* dwords per packed group */
    uint16_t *xa = Tm > 0 && rm > r0 ? aligned_alloc(64, (size_t)Tm * n_in * 2) : NULL;
    uint32_t *P = xa ? aligned_alloc(64, BF16_NB / 16 * pg * 4) : NULL;
    if (!P) {
        free(xa);
        base_gemm_f16_bf16(T, n_in, Xb, W, Y, ldy, r0, r1);
        return;
    }
    bf16_pack_tokens(Xb, n_in, Tm, xa);
    LP_TILE_CONFIG(&bf16_config);
    for (int rb = r0; rb < rm; rb += BF16_NB) {
        const int n_rows = rm - rb < BF16_NB ? rm - rb : BF16_NB;
        for (int k0 = 0; k0 < n_in; k0 += LP_BF16_KC) {
            const int kc = n_in - k0 < LP_BF16_KC ? n_in - k0 : LP_BF16_KC;
            for (int r = 0; r < n_rows; r += 16)
                lp_bf16_pack_group(W, n_in, rb + r, 16, k0, kc, P + (size_t)(r / 16) * pg);
            bf16_block(Tm, n_in, xa, k0, kc, P, n_rows, Y, ldy, rb);
        }
    }
    _tile_release();
    free(xa);
    free(P);
    if (rm < r1) base_gemm_f16_bf16(Tm, n_in, Xb, W, Y, ldy, rm, r1);
    if (Tm < T)
        base_gemm_f16_bf16(T - Tm, n_in, Xb + (size_t)Tm * n_in, W, Y + (size_t)Tm * ldy, ldy, r0,
                           r1);
}

/* ============================================================== table */

/* k: a copy of the avx512bf16 table; its matmuls become the fallbacks. */
void lp_amx_fill(lp_kernels *k);
void lp_amx_fill(lp_kernels *k) {
    base_gemm_q8p = k->gemm_q8p;
    base_gemm_f16_bf16 = k->gemm_f16_bf16;
    k->gemm_q8p = gemm_q8p;
    k->q8a_tiles_bytes = q8a_tiles_bytes;
    k->pack_q8a = pack_q8a;
    k->gemm_f16_bf16 = gemm_f16_bf16;
}
