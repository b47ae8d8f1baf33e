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
