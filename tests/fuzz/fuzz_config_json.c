/*
 * fuzz_config_json — Hugging Face config.json parsing (lp_hf_read_config).
 * The input up to its first NUL byte is config.json; the rest, if there is
 * a NUL, is generation_config.json. An accepted config must be one the
 * model code can use (sizes positive and consistent).
 */
#include <string.h>

#include "fuzz_util.h"
#include "src/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *nul = memchr(data, 0, size);
    size_t n_cfg = nul ? (size_t)(nul - data) : size;
    fz_write("config.json", data, n_cfg);
    if (nul) fz_write("generation_config.json", nul + 1, size - n_cfg - 1);
    else fz_remove("generation_config.json");
    lp_hparams hp;
    loupe_status st = lp_hf_read_config(fz_path(""), &hp);
    fz_check_error(st, "lp_hf_read_config");
    if (st != LOUPE_OK) return 0;
    if (hp.arch != LP_ARCH_GPT2 && hp.arch != LP_ARCH_LLAMA) fz_fail("arch %d", (int)hp.arch);
    if (hp.n_vocab < 1 || hp.dim < 1 || hp.n_layers < 1 || hp.n_heads < 1 ||
        hp.n_kv_heads < 1 || hp.head_dim < 1 || hp.ffn_dim < 1 || hp.n_ctx < 1)
        fz_fail("accepted non-positive sizes: vocab %d dim %d layers %d heads %d/%d hd %d "
                "ffn %d ctx %d", hp.n_vocab, hp.dim, hp.n_layers, hp.n_heads, hp.n_kv_heads,
                hp.head_dim, hp.ffn_dim, hp.n_ctx);
    if (hp.n_heads % hp.n_kv_heads) fz_fail("%d heads, %d kv heads", hp.n_heads, hp.n_kv_heads);
    if (hp.bos_id < -1 || hp.bos_id >= hp.n_vocab || hp.eos_id < -1 || hp.eos_id >= hp.n_vocab)
        fz_fail("bos %d / eos %d outside %d tokens", hp.bos_id, hp.eos_id, hp.n_vocab);
    if (hp.arch == LP_ARCH_LLAMA && (hp.rot_dim < 2 || hp.rot_dim > hp.head_dim))
        fz_fail("rot_dim %d of head_dim %d", hp.rot_dim, hp.head_dim);
    if (!(hp.norm_eps > 0)) fz_fail("norm_eps %g", hp.norm_eps);
    return 0;
}
