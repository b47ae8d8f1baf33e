/*
 * fuzz_gguf — GGUF bytes -> lp_read_gguf (tensor set invariants), the GGUF
 * tokenizer (lp_tok_spec_from_gguf, lp_tok_build, encode/decode), then the
 * whole GGUF load path through loupe_model_open and a two-token forward.
 */
#include <string.h>

#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fz_write("in.gguf", data, size);
    lp_tensor_set ts;
    memset(&ts, 0, sizeof ts);
    loupe_status st = lp_read_gguf(path, &ts);
    fz_check_error(st, "lp_read_gguf");
    if (st == LOUPE_OK) {
        fz_check_tensor_set(&ts);
        lp_tok_spec spec;
        st = lp_tok_spec_from_gguf(&ts, path, &spec);
        fz_check_error(st, "lp_tok_spec_from_gguf");
        lp_tokenizer *tok = NULL;
        if (st == LOUPE_OK) {
            st = lp_tok_build(&spec, &tok);
            fz_check_error(st, "lp_tok_build");
        }
        if (tok) fz_exercise_tokenizer(tok, NULL, 0);
        lp_tok_free(tok);
        lp_tok_spec_free(&spec);
    } else if (ts.n || ts.n_maps || ts.n_meta) {
        fz_fail("lp_read_gguf failed but left %d tensors, %d maps, %d meta", ts.n, ts.n_maps,
                ts.n_meta);
    }
    lp_tensor_set_free(&ts);
    if (size >= 4 && memcmp(data, "GGUF", 4) == 0) fz_open_model(path);
    return 0;
}
