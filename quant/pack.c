/*
 * pack.c — int8 matrices between GGUF's row-major Q8_0 blocks and the
 * packed layout the matmul kernels read (LP_Q8P, described in blocks.h).
 * Both directions are exact: packing only moves bytes (and adds 128).
 */
#include <string.h>

#include "blocks.h"

/* Where block b of row i (0..15) of a group keeps its scale and values. */
static uint16_t *group_d(uint8_t *grp, int64_t b) {
    return (uint16_t *)(void *)(grp + (size_t)b * LP_Q8P_ROWS * 2);
}

static uint8_t *group_qs(uint8_t *grp, int64_t nb, int64_t b) {
    return grp + (size_t)nb * LP_Q8P_ROWS * 2 + (size_t)b * LP_Q8P_ROWS * LP_QK8;
}

void lp_q8p_pack(const lp_block_q8 *src, int64_t n_out, int64_t n_in, void *dst,
                 int64_t g0, int64_t g1) {
    const int64_t nb = n_in / LP_QK8;
    for (int64_t g = g0; g < g1; g++) {
        uint8_t *grp = (uint8_t *)dst + (size_t)g * LP_Q8P_GROUP_BYTES(n_in);
        for (int64_t b = 0; b < nb; b++) {
            uint16_t *d = group_d(grp, b);   /* (16) */
            uint8_t *qs = group_qs(grp, nb, b); /* (8, 16, 4) */
            for (int i = 0; i < LP_Q8P_ROWS; i++) {
                const int64_t r = g * LP_Q8P_ROWS + i;
                lp_block_q8 blk;
                if (r < n_out) memcpy(&blk, &src[r * nb + b], sizeof blk);
                else memset(&blk, 0, sizeof blk); /* padding row */
                d[i] = blk.d;
                for (int j = 0; j < LP_QK8 / 4; j++)
                    for (int k = 0; k < 4; k++)
                        qs[(j * LP_Q8P_ROWS + i) * 4 + k] = (uint8_t)(blk.qs[4 * j + k] ^ 0x80);
            }
        }
    }
}

/* Block b of row i (0..15) of the group at grp, as a Q8_0 block. */
static void unpack_block(uint8_t *grp, int64_t nb, int64_t b, int i, lp_block_q8 *out) {
    const uint8_t *qs = group_qs(grp, nb, b);
    out->d = group_d(grp, b)[i];
    for (int j = 0; j < LP_QK8 / 4; j++)
        for (int k = 0; k < 4; k++)
            out->qs[4 * j + k] = (int8_t)(qs[(j * LP_Q8P_ROWS + i) * 4 + k] ^ 0x80);
}

static uint8_t *row_group(const void *packed, int64_t n_in, int64_t r) {
    return (uint8_t *)packed + (size_t)(r / LP_Q8P_ROWS) * LP_Q8P_GROUP_BYTES(n_in);
}

void lp_q8p_unpack_row(const void *packed, int64_t n_in, int64_t r, lp_block_q8 *out) {
    const int64_t nb = n_in / LP_QK8;
    for (int64_t b = 0; b < nb; b++)
        unpack_block(row_group(packed, n_in, r), nb, b, (int)(r % LP_Q8P_ROWS), &out[b]);
}

void lp_q8p_dequant_row(const void *packed, int64_t n_in, int64_t r, float *out) {
    const int64_t nb = n_in / LP_QK8;
    for (int64_t b = 0; b < nb; b++) {
        lp_block_q8 blk;
        unpack_block(row_group(packed, n_in, r), nb, b, (int)(r % LP_Q8P_ROWS), &blk);
        const float d = lp_f16_to_f32(blk.d);
        for (int j = 0; j < LP_QK8; j++) out[b * LP_QK8 + j] = d * blk.qs[j];
    }
}
