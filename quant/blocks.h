/*
 * blocks.h — weight block formats shared by quant/ (which writes them) and
 * simd/ (whose kernels read them). Pure data layout plus scalar fp16/bf16
 * conversion; documented byte by byte in docs/FORMAT.md.
 */
#ifndef LOUPE_BLOCKS_H
#define LOUPE_BLOCKS_H

#include <stdint.h>
#include <string.h>

#define LP_QK8 32 /* elements per int8 block */

/* int8 block: 32 signed values and one fp16 scale; value = d * qs[i].
 * Byte-identical to GGUF's Q8_0 (34 bytes, no padding). */
typedef struct {
    uint16_t d;          /* fp16 scale (IEEE binary16 bits) */
    int8_t qs[LP_QK8];
} lp_block_q8;

_Static_assert(sizeof(lp_block_q8) == 34, "lp_block_q8 must be 34 bytes");

/* ---- packed int8 matrix (lp_dtype LP_Q8P): the layout the int8 matmul
 * kernels read, the same numbers as Q8_0 blocks re-ordered so that one
 * 64-byte load holds 4 consecutive elements of 16 consecutive rows.
 *
 * A (n_out, n_in) matrix (n_in % 32 == 0, nb = n_in / 32) is stored as
 * ceil(n_out / 16) groups of 16 rows, one after another; the last group is
 * padded with rows whose scale is 0 and whose values are 0. Group g
 * (rows 16g .. 16g+15), LP_Q8P_GROUP_BYTES(n_in) bytes:
 *   d  : uint16 [nb][16]        d[b][i] = fp16 scale of block b of row 16g+i
 *   qs : uint8  [nb][8][16][4]  qs[b][j][i][k] = 128 + q, q the int8 value of
 *                                row 16g+i, element 32b + 4j + k
 * Storing q + 128 (q xor 0x80) makes the weights the unsigned operand of
 * x86's vpdpbusd (unsigned x signed bytes); the kernels subtract
 * 128 * sum(x) per block (lp_q8_act.corr), and ARM flips the bit back.
 * The padding is bytes, not values: a packed matrix is exactly as large as
 * its Q8_0 rows plus its padding rows. */
#define LP_Q8P_ROWS 16
#define LP_Q8P_GROUP_BYTES(n_in) ((size_t)((n_in) / LP_QK8) * (LP_Q8P_ROWS * (2 + LP_QK8)))
#define LP_Q8P_GROUPS(n_out) (((n_out) + LP_Q8P_ROWS - 1) / LP_Q8P_ROWS)

/* Bytes of a packed (n_out, n_in) matrix. */
static inline size_t lp_q8p_bytes(int64_t n_out, int64_t n_in) {
    return (size_t)LP_Q8P_GROUPS(n_out) * LP_Q8P_GROUP_BYTES(n_in);
}

/* Packs rows [g0 * 16, min(g1 * 16, n_out)) of row-major Q8_0 blocks
 * (n_out rows of n_in / 32 blocks) into groups [g0, g1) of dst (a whole
 * packed matrix); padding rows are written too. quant/pack.c. */
void lp_q8p_pack(const lp_block_q8 *src, int64_t n_out, int64_t n_in, void *dst,
                 int64_t g0, int64_t g1);
/* Row r of a packed matrix back as n_in / 32 Q8_0 blocks (exact inverse). */
void lp_q8p_unpack_row(const void *packed, int64_t n_in, int64_t r, lp_block_q8 *out);
/* Row r of a packed matrix dequantized to n_in floats (embedding lookup). */
void lp_q8p_dequant_row(const void *packed, int64_t n_in, int64_t r, float *out);

/* ---- scalar IEEE half <-> float (round to nearest even), no FPU tricks -- */

static inline float lp_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            man &= 0x3ff;
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | (man << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t lp_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) /* inf or nan */
        return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 : 0));
    if (absx >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00);
    if (absx < 0x38800000u) { /* below smallest normal half: subnormal */
        if (absx < 0x33000000u) return (uint16_t)sign; /* < half of min subnormal */
        uint32_t e = absx >> 23;
        uint32_t m = (absx & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e; /* 14 + (113 - e) */
        uint32_t half_m = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half_m & 1))) half_m++;
        return (uint16_t)(sign | half_m);
    }
    uint32_t r = absx - 0x38000000u; /* rebias exponent 127 -> 15 */
    uint32_t half = r >> 13;
    uint32_t rem = r & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++;
    return (uint16_t)(sign | half);
}

static inline float lp_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

#endif /* LOUPE_BLOCKS_H */
