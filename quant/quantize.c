/*
 * quantize.c — element type conversions for the writer: f32/f16/bf16 rows
 * to f32, f16 or int8 blocks (GGUF Q8_0 numerics), and int8 blocks back.
 */
#include <math.h>
#include <string.h>

#include "loupe_format.h"

/* ------------------------------------------------------------ int8 blocks */

void lp_quantize_q8(const float *x, lp_block_q8 *y, int64_t n) {
    for (int64_t b = 0; b < n / LP_QK8; b++, x += LP_QK8) {
        float amax = 0.0f;
        for (int i = 0; i < LP_QK8; i++) {
            float ax = fabsf(x[i]);
            amax = amax > ax ? amax : ax;
        }
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = lp_f32_to_f16(d);
        for (int i = 0; i < LP_QK8; i++) y[b].qs[i] = (int8_t)roundf(x[i] * id);
    }
}

void lp_dequantize_q8(const lp_block_q8 *x, float *y, int64_t n) {
    for (int64_t b = 0; b < n / LP_QK8; b++, y += LP_QK8) {
        float d = lp_f16_to_f32(x[b].d);
        for (int i = 0; i < LP_QK8; i++) y[i] = d * (float)x[b].qs[i];
    }
}

/* ------------------------------------------------------------ rows */

/* One source row as f32 into tmp (cols floats); returns it. */
static const float *row_as_f32(lp_dtype st, const void *src, int64_t cols, int64_t r,
                               float *tmp) {
    switch (st) {
    case LP_F32: return (const float *)src + r * cols;
    case LP_F16: {
        const uint16_t *s = (const uint16_t *)src + r * cols;
        for (int64_t i = 0; i < cols; i++) tmp[i] = lp_f16_to_f32(s[i]);
        return tmp;
    }
    case LP_BF16: {
        const uint16_t *s = (const uint16_t *)src + r * cols;
        for (int64_t i = 0; i < cols; i++) tmp[i] = lp_bf16_to_f32(s[i]);
        return tmp;
    }
    case LP_Q8:
        lp_dequantize_q8((const lp_block_q8 *)src + r * (cols / LP_QK8), tmp, cols);
        return tmp;
    case LP_Q8P:
        lp_q8p_dequant_row(src, cols, r, tmp);
        return tmp;
    }
    return NULL;
}

/* Converts row by row through an f32 row buffer on the stack (chunks of
 * 1024 columns keep it small; Q8 needs whole blocks, 1024 % 32 == 0). */
int lp_convert_rows(lp_dtype st, const void *src, lp_dtype dt, void *dst,
                    int64_t cols, int64_t r0, int64_t r1) {
    if ((st == LP_Q8 || dt == LP_Q8) && cols % LP_QK8) return -1;
    if (dt != LP_F32 && dt != LP_F16 && dt != LP_Q8) return -1;
    if (st != LP_F32 && st != LP_F16 && st != LP_BF16 && st != LP_Q8) return -1;
    uint64_t in_row = lp_dtype_bytes(st, (uint64_t)cols);
    uint64_t out_row = lp_dtype_bytes(dt, (uint64_t)cols);
    if (st == dt) { /* same type: a bit-exact copy (Q8 -> Q8 included) */
        memcpy((uint8_t *)dst + r0 * out_row, (const uint8_t *)src + r0 * in_row,
               (size_t)((r1 - r0) * out_row));
        return 0;
    }
    enum { CHUNK = 1024 };
    float tmp[CHUNK];
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t c0 = 0; c0 < cols; c0 += CHUNK) {
            int64_t n = cols - c0 < CHUNK ? cols - c0 : CHUNK;
            /* a chunk is a (1, n) sub-row starting at element r*cols + c0 */
            int64_t el = r * cols + c0;
            const void *s;
            if (st == LP_Q8)
                s = (const lp_block_q8 *)src + el / LP_QK8;
            else if (st == LP_F32)
                s = (const float *)src + el;
            else
                s = (const uint16_t *)src + el;
            const float *x = row_as_f32(st, s, n, 0, tmp);
            if (dt == LP_F32)
                memcpy((float *)dst + el, x, (size_t)n * sizeof(float));
            else if (dt == LP_F16)
                for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[el + i] = lp_f32_to_f16(x[i]);
            else
                lp_quantize_q8(x, (lp_block_q8 *)dst + el / LP_QK8, n);
        }
    }
    return 0;
}
