/*
 * fuzz_tokenizer_json — tokenizer.json bytes -> lp_tok_spec_from_tokenizer_json
 * -> lp_tok_build; an accepted tokenizer then encodes fixed texts and the
 * input itself (first 512 bytes) and decodes every id back.
 */
#include <string.h>

#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fz_write("tokenizer.json", data, size);
    lp_tok_spec spec;
    loupe_status st = lp_tok_spec_from_tokenizer_json(path, &spec);
    fz_check_error(st, "lp_tok_spec_from_tokenizer_json");
    if (st != LOUPE_OK) {
        if (spec.n_vocab || spec.pieces || spec.merges) fz_fail("failed read left a spec");
        return 0;
    }
    lp_tokenizer *tok = NULL;
    st = lp_tok_build(&spec, &tok);
    fz_check_error(st, "lp_tok_build");
    if (tok) fz_exercise_tokenizer(tok, (const char *)data, size < 512 ? size : 512);
    lp_tok_free(tok);
    lp_tok_spec_free(&spec);
    return 0;
}
