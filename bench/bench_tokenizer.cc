// bench_tokenizer.cc — tokenizer throughput (google-benchmark).
//
//   encode/<vocabulary>   100 KB of mixed text (the GPT-2 vocabulary test
//                         texts from shared/models/vocab, repeated) encoded
//                         without special tokens: input bytes/s.
//
// Reads the fixtures from $LOUPE_SHARED (default: ../shared beside the
// source tree). Run e.g.
//   build/bench/bench_tokenizer --benchmark_repetitions=5
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#define _Static_assert static_assert // simd/kernels.h is C11
extern "C" {
#include "src/io/tensors.h"
#include "src/tokenizer/tokenizer.h"
}

namespace {

std::string SharedPath(const char *rel) {
    const char *root = std::getenv("LOUPE_SHARED");
    return std::string(root ? root : LOUPE_DEFAULT_SHARED) + "/" + rel;
}

bool ReadFile(const std::string &path, std::string *out) {
    FILE *f = std::fopen(path.c_str(), "rb");
    if (!f) return false;
    char buf[65536];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out->append(buf, n);
    std::fclose(f);
    return true;
}

lp_tokenizer *LoadGguf(const std::string &path) {
    lp_tensor_set ts;
    std::memset(&ts, 0, sizeof ts);
    lp_tok_spec spec;
    lp_tokenizer *t = nullptr;
    loupe_status st = lp_read_gguf(path.c_str(), &ts);
    if (st == LOUPE_OK) st = lp_tok_spec_from_gguf(&ts, path.c_str(), &spec);
    lp_tensor_set_free(&ts);
    if (st == LOUPE_OK) st = lp_tok_build(&spec, &t);
    return st == LOUPE_OK ? t : nullptr;
}

void BM_Encode(benchmark::State &state, const char *vocab) {
    std::string piece, text;
    if (!ReadFile(SharedPath("models/vocab/ggml-vocab-gpt-2.gguf.inp"), &piece) ||
        piece.empty()) {
        state.SkipWithError("cannot read the vocabulary test texts (set LOUPE_SHARED)");
        return;
    }
    while (text.size() < 100 * 1024) text += piece;
    lp_tokenizer *t = LoadGguf(SharedPath(vocab));
    if (!t) {
        state.SkipWithError("cannot load the vocabulary");
        return;
    }
    size_t n_tokens = 0;
    for (auto _ : state) {
        int32_t *ids = nullptr;
        if (lp_tok_encode(t, text.data(), text.size(), 0, 0, &ids, &n_tokens) != LOUPE_OK) {
            state.SkipWithError("encode failed");
            break;
        }
        std::free(ids);
    }
    state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
    state.counters["tokens"] = static_cast<double>(n_tokens);
    lp_tok_free(t);
}

BENCHMARK_CAPTURE(BM_Encode, gpt2_bpe, "models/vocab/ggml-vocab-gpt-2.gguf")
    ->Name("encode/gpt-2")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Encode, llama_spm, "models/vocab/ggml-vocab-llama-spm.gguf")
    ->Name("encode/llama-spm")->Unit(benchmark::kMillisecond);

} // namespace

BENCHMARK_MAIN();
