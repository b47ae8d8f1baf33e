/*
 * quantize.c — element type conversions for the writer: f32/f16/bf16 rows
 * to f32, f16 or int8 blocks (GGUF Q8_0 numerics), int8 blocks back, and
 * whole matrices into the packed int8 layout (LP_Q8P) the kernels read.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loupe_format.h"

/* ------------------------------------------------------------ int8 blocks */

/* x * id rounded to an int8 code. Finite inputs give GGUF's code; the
 * clamp only matters where id overflowed (amax below ~4e-37, whose fp16
 * scale is 0 anyway) and keeps the conversion defined there. */
static int8_t q8_code(float x, float id) {
    float v = x * id;
    if (v != v) return 0; /* NaN: 0 * inf */
    return (int8_t)roundf(fmaxf(-127.0f, fminf(127.0f, v)));
}

int lp_quantize_q8(const float *x, lp_block_q8 *y, int64_t n) {
    int n_bad = 0;
    for (int64_t b = 0; b < n / LP_QK8; b++, x += LP_QK8) {
        float amax = 0.0f;
        for (int i = 0; i < LP_QK8; i++) {
            float ax = fabsf(x[i]);
            if (!isfinite(ax)) n_bad++;
            else amax = amax > ax ? amax : ax;
        }
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = lp_f32_to_f16(d);
        for (int i = 0; i < LP_QK8; i++) y[b].qs[i] = isfinite(x[i]) ? q8_code(x[i], id) : 0;
    }
    return n_bad;
}

void lp_dequantize_q8(const lp_block_q8 *x, float *y, int64_t n) {
    for (int64_t b = 0; b < n / LP_QK8; b++, y += LP_QK8) {
        float d = lp_f16_to_f32(x[b].d);
        for (int i = 0; i < LP_QK8; i++) y[i] = d * (float)x[b].qs[i];
    }
}

/* ------------------------------------------------------------ rows */

/* n elements of a row (F32, F16, BF16 or Q8 at src) as f32: src itself or
 * tmp (n floats; n % 32 == 0 for Q8). */
static const float *chunk_as_f32(lp_dtype st, const void *src, int64_t n, float *tmp) {
    const uint16_t *h = src;
    switch (st) {
    case LP_F32: return src;
    case LP_F16:
        for (int64_t i = 0; i < n; i++) tmp[i] = lp_f16_to_f32(h[i]);
        return tmp;
    case LP_BF16:
        for (int64_t i = 0; i < n; i++) tmp[i] = lp_bf16_to_f32(h[i]);
        return tmp;
    case LP_Q8:
        lp_dequantize_q8(src, tmp, n);
        return tmp;
    case LP_Q8P: break; /* a packed row is unpacked to Q8 first */
    }
    return NULL;
}

/* One row of cols elements from st to dt (neither Q8P) through an f32
 * buffer on the stack (chunks of 1024 columns, whole int8 blocks).
 * Returns 0, -3 if int8 met a NaN or an infinity, -4 if a finite value is
 * beyond f16's range (|x| > 65504 after rounding). */
static int convert_row(lp_dtype st, const void *src, lp_dtype dt, void *dst, int64_t cols) {
    if (st == dt) { /* a bit-exact copy (Q8 -> Q8 included) */
        memcpy(dst, src, (size_t)lp_dtype_bytes(dt, (uint64_t)cols));
        return 0;
    }
    int bad = 0;
    enum { CHUNK = 1024 };
    float tmp[CHUNK];
    for (int64_t c0 = 0; c0 < cols; c0 += CHUNK) {
        int64_t n = cols - c0 < CHUNK ? cols - c0 : CHUNK;
        const void *s = st == LP_Q8    ? (const void *)((const lp_block_q8 *)src + c0 / LP_QK8)
                        : st == LP_F32 ? (const void *)((const float *)src + c0)
                                       : (const void *)((const uint16_t *)src + c0);
        const float *x = chunk_as_f32(st, s, n, tmp);
        if (dt == LP_F32)
            memcpy((float *)dst + c0, x, (size_t)n * sizeof(float));
        else if (dt == LP_F16)
            for (int64_t i = 0; i < n; i++) {
                uint16_t h = lp_f32_to_f16(x[i]);
                /* a finite weight that f16 would turn into an infinity */
                if ((h & 0x7fff) == 0x7c00 && isfinite(x[i])) bad |= 4;
                ((uint16_t *)dst)[c0 + i] = h;
            }
        else
            bad |= lp_quantize_q8(x, (lp_block_q8 *)dst + c0 / LP_QK8, n) ? 3 : 0;
    }
    return bad ? -bad : 0;
}

/* Rows [r0, r1) of src into dst, whose first row is row r0. */
static int convert_rows_to(lp_dtype st, const void *src, lp_dtype dt, void *dst,
                           int64_t cols, int64_t r0, int64_t r1) {
    int int8 = st == LP_Q8 || st == LP_Q8P || dt == LP_Q8;
    if (int8 && cols % LP_QK8) return -1;
    if (dt != LP_F32 && dt != LP_F16 && dt != LP_Q8) return -1;
    const uint64_t in_row = lp_dtype_bytes(st, (uint64_t)cols);
    const uint64_t out_row = lp_dtype_bytes(dt, (uint64_t)cols);
    if (st == LP_Q8P) { /* unpack each row to Q8 blocks, then convert those */
        lp_block_q8 *blk = NULL; /* (cols / 32) */
        if (dt != LP_Q8 && !(blk = malloc((size_t)lp_dtype_bytes(LP_Q8, (uint64_t)cols))))
            return -2;
        for (int64_t r = r0; r < r1; r++) {
            uint8_t *out = (uint8_t *)dst + (r - r0) * out_row;
            lp_q8p_unpack_row(src, cols, r, blk ? blk : (lp_block_q8 *)(void *)out);
            if (blk) convert_row(LP_Q8, blk, dt, out, cols); /* to f32/f16: always 0 */
        }
        free(blk);
        return 0;
    }
    if (st != LP_F32 && st != LP_F16 && st != LP_BF16 && st != LP_Q8) return -1;
    int rc = 0;
    for (int64_t r = r0; r < r1; r++) {
        int e = convert_row(st, (const uint8_t *)src + r * in_row, dt,
                            (uint8_t *)dst + (r - r0) * out_row, cols);
        if (e) rc = e;
    }
    return rc;
}

int lp_convert_rows(lp_dtype st, const void *src, lp_dtype dt, void *dst,
                    int64_t cols, int64_t r0, int64_t r1) {
    uint64_t out_row = lp_dtype_bytes(dt, (uint64_t)cols);
    return convert_rows_to(st, src, dt, (uint8_t *)dst + r0 * out_row, cols, r0, r1);
}

/* ------------------------------------------------------------ packed int8 */

int lp_convert_groups_q8p(lp_dtype st, const void *src, void *dst, int64_t rows,
                          int64_t cols, int64_t g0, int64_t g1) {
    if (cols % LP_QK8) return -1;
    const size_t gb = LP_Q8P_GROUP_BYTES(cols);
    if (st == LP_Q8P) { /* already packed: the same bytes */
        memcpy((uint8_t *)dst + g0 * gb, (const uint8_t *)src + g0 * gb, (size_t)(g1 - g0) * gb);
        return 0;
    }
    if (st == LP_Q8) {
        lp_q8p_pack(src, rows, cols, dst, g0, g1);
        return 0;
    }
    if (st != LP_F32 && st != LP_F16 && st != LP_BF16) return -1;
    /* quantize one group of rows to Q8 blocks, then pack it as a matrix
     * of its own (the last group's missing rows become padding) */
    lp_block_q8 *blk = malloc(LP_Q8P_ROWS * (size_t)lp_dtype_bytes(LP_Q8, (uint64_t)cols));
    if (!blk) return -2; /* (16, cols / 32) */
    int rc = 0;
    for (int64_t g = g0; g < g1; g++) {
        int64_t r0 = g * LP_Q8P_ROWS, n = rows - r0 < LP_Q8P_ROWS ? rows - r0 : LP_Q8P_ROWS;
        if (convert_rows_to(st, src, LP_Q8, blk, cols, r0, r0 + n)) rc = -3;
        lp_q8p_pack(blk, n, cols, (uint8_t *)dst + g * gb, 0, 1);
    }
    free(blk);
    return rc;
}
