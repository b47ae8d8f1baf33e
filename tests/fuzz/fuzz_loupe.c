/*
 * fuzz_loupe — .loupe bytes -> lp_loupe_parse (with every data checksum
 * verified: reads each tensor's bytes) -> the whole load path through
 * loupe_model_open and a forward pass. Seeds (.ci/fuzz.sh) include int8
 * files, whose matrices are packed (layout 1), so mutations reach the
 * layout checks and the zero-copy binding of packed weights.
 *
 * Random mutations would nearly always break the header, metadata and
 * directory checksums and stop at the first check, so the input is
 * repaired first: the header's file size becomes the input size and the
 * three checksums are recomputed over whatever the header's section table
 * says (when it lies inside the input). The checksum checks themselves are
 * plain comparisons covered by tests/test_quantize.c.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "quant/loupe_format.h"

static uint64_t fz_rd64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static void fz_wr64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void fz_fix_section(uint8_t *h, size_t size, int off_at, int size_at, int sum_at) {
    uint64_t off = fz_rd64(h + off_at), n = fz_rd64(h + size_at);
    if (off <= size && n <= size - off) fz_wr64(h + sum_at, lp_xxh64(h + off, (size_t)n, 0));
}

static void fz_repair(uint8_t *h, size_t size) {
    if (size < LOUPE_HEADER_SIZE || memcmp(h, LOUPE_FILE_MAGIC, LOUPE_MAGIC_LEN) != 0) return;
    fz_wr64(h + 16, size);
    fz_fix_section(h, size, 24, 32, 80); /* metadata */
    fz_fix_section(h, size, 40, 48, 88); /* directory */
    fz_wr64(h + 120, lp_xxh64(h, 120, 0));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *buf = malloc(size ? size : 1); /* (size) exact, so ASan sees overreads */
    if (!buf) fz_fail("out of memory");
    memcpy(buf, data, size);
    fz_repair(buf, size);
    lp_loupe_file f;
    loupe_status st = lp_loupe_parse(buf, size, "fuzz.loupe", 1, &f);
    fz_check_error(st, "lp_loupe_parse");
    if (st == LOUPE_OK) {
        for (int i = 0; i < f.n_tensors; i++) {
            const lp_loupe_tensor *t = &f.t[i];
            if (t->offset > size || t->size > size - t->offset)
                fz_fail("tensor %s outside the file", t->name);
            if (t->offset % LOUPE_ALIGN) fz_fail("tensor %s misaligned", t->name);
            if (t->layout == LOUPE_LAYOUT_Q8P && /* packed int8: exactly its groups */
                (t->type != LP_Q8P || t->n_dims != 2 || t->shape[1] % LP_QK8 ||
                 t->size != lp_q8p_bytes(t->shape[0], t->shape[1])))
                fz_fail("tensor %s: layout 1 accepted as %s, %d dims, %llu bytes", t->name,
                        lp_dtype_name(t->type), t->n_dims, (unsigned long long)t->size);
            if (t->layout != LOUPE_LAYOUT_Q8P && (t->layout != LOUPE_LAYOUT_ROWS || t->type == LP_Q8P))
                fz_fail("tensor %s: layout %u accepted as %s", t->name, t->layout,
                        lp_dtype_name(t->type));
        }
        for (int i = 0; i < f.n_meta; i++)
            if (f.meta[i].val < buf || f.meta[i].val > buf + size ||
                f.meta[i].val_size > (uint64_t)(buf + size - f.meta[i].val) + 8)
                fz_fail("metadata entry %d outside the file", i);
    } else if (f.t || f.meta) {
        fz_fail("lp_loupe_parse failed but kept its tables");
    }
    lp_loupe_file_free(&f);
    const char *path = fz_write("in.loupe", buf, size);
    free(buf);
    fz_open_model(path);
    return 0;
}
