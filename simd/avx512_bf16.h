/*
 * avx512_bf16.h — the bf16 weight packer of avx512_bf16.c, shared with the
 * AMX kernels (amx.c), which read the same layout as their B tiles.
 */
#ifndef LOUPE_AVX512_BF16_H
#define LOUPE_AVX512_BF16_H

#include <stdint.h>

/* Columns per packed chunk: 2 groups x 16 rows x 512 x 2 B = 32 KB. */
#define LP_BF16_KC 512

/* Rows [r, r + n_rows) (n_rows <= 16; missing rows are zeros) x columns
 * [k0, k0 + kc) of W (f16, n_in per row; kc <= LP_BF16_KC, kc % 32 == 0)
 * -> P (kc/2, 16) dwords, P[p][i] = the bf16 pair (k0 + 2p, k0 + 2p + 1)
 * of row r + i, low half first. Needs AVX512_BF16. */
void lp_bf16_pack_group(const uint16_t *W, int n_in, int r, int n_rows, int k0, int kc,
                        uint32_t *P);

#endif /* LOUPE_AVX512_BF16_H */
