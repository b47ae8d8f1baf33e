/*
 * fuzz_safetensors — byte 0 picks a tiny model (bit 0: GPT-2 or Llama);
 * the rest is a .safetensors file: lp_read_safetensors (tensor set
 * invariants), then the whole Hugging Face directory load path
 * (loupe_model_open on a directory holding a fixed config.json and
 * tokenizer.json beside the fuzzed model.safetensors) and a forward pass.
 *
 * The configs must match tests/fuzz/make_seeds.py.
 */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_util.h"

static const char fz_gpt2_config[] =
    "{\"model_type\": \"gpt2\", \"vocab_size\": 16, \"n_embd\": 8, \"n_head\": 2,"
    " \"n_layer\": 1, \"n_positions\": 8, \"n_inner\": 16, \"layer_norm_epsilon\": 1e-5,"
    " \"activation_function\": \"gelu_new\", \"tie_word_embeddings\": true,"
    " \"bos_token_id\": 15, \"eos_token_id\": 15}";

static const char fz_llama_config[] =
    "{\"model_type\": \"llama\", \"vocab_size\": 16, \"hidden_size\": 8,"
    " \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"num_hidden_layers\": 1,"
    " \"intermediate_size\": 16, \"max_position_embeddings\": 8, \"rms_norm_eps\": 1e-5,"
    " \"rope_theta\": 10000.0, \"tie_word_embeddings\": false}";

/* 16 byte-level tokens, two merges, <|endoftext|> special. */
static const char fz_tokenizer[] =
    "{\"added_tokens\": [{\"id\": 15, \"content\": \"<|endoftext|>\", \"special\": true}],"
    " \"normalizer\": null,"
    " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false},"
    " \"decoder\": {\"type\": \"ByteLevel\"},"
    " \"model\": {\"type\": \"BPE\", \"vocab\": {\"\\u0120\": 0, \"H\": 1, \"e\": 2, \"l\": 3,"
    " \"o\": 4, \"w\": 5, \"r\": 6, \"d\": 7, \"W\": 8, \"ll\": 9, \"\\u0120w\": 10, \"a\": 11,"
    " \"b\": 12, \"c\": 13, \"\\u010a\": 14, \"<|endoftext|>\": 15},"
    " \"merges\": [\"l l\", \"\\u0120 w\"]}}";

static void fz_model_dir(const char *dir, const char *config) {
    char name[64];
    mkdir(fz_path(dir), 0700);
    snprintf(name, sizeof name, "%s/config.json", dir);
    fz_write(name, (const uint8_t *)config, strlen(config));
    snprintf(name, sizeof name, "%s/tokenizer.json", dir);
    fz_write(name, (const uint8_t *)fz_tokenizer, strlen(fz_tokenizer));
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    fz_model_dir("gpt2", fz_gpt2_config);
    fz_model_dir("llama", fz_llama_config);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const char *dir = data[0] & 1 ? "llama" : "gpt2";
    char name[64];
    snprintf(name, sizeof name, "%s/model.safetensors", dir);
    const char *path = fz_write(name, data + 1, size - 1);
    lp_tensor_set ts;
    memset(&ts, 0, sizeof ts);
    loupe_status st = lp_read_safetensors(path, &ts);
    fz_check_error(st, "lp_read_safetensors");
    if (st == LOUPE_OK) fz_check_tensor_set(&ts);
    else if (ts.n || ts.n_maps)
        fz_fail("lp_read_safetensors failed but left %d tensors, %d maps", ts.n, ts.n_maps);
    lp_tensor_set_free(&ts);
    fz_open_model(fz_path(dir));
    return 0;
}
