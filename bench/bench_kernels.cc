// bench_kernels.cc — google-benchmark for every kernel x every ISA table
// this CPU can run, at GPT-2 124M and TinyLlama 1.1B shapes.
//
//   gemv/<isa>/<dtype>/<model>.<matrix>     T = 1 (decode): weight GB/s
//   gemm64/<isa>/<dtype>/<model>.<matrix>   T = 64 (prefill): GFLOP/s
//   <op>/<isa>/<model or n>                 vector ops, attention
//
// Single-threaded: each call covers all rows [0, n_out). Counters:
// "weights/s" = weight bytes streamed per second (1000-based, so 20G/s is
// 20 GB/s), "FLOP/s" = 2*T*n_in*n_out per second.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#define _Static_assert static_assert // quant/blocks.h is C11
extern "C" {
#include "simd/kernels.h"
}

namespace {

// ------------------------------------------------------------ inputs

struct MatShape {
    const char *model, *matrix;
    int n_in, n_out;
};

const MatShape kMatrices[] = {
    {"gpt2", "qkv", 768, 2304},         {"gpt2", "ffn_up", 768, 3072},
    {"gpt2", "ffn_down", 3072, 768},    {"gpt2", "lm_head", 768, 50257},
    {"tinyllama", "q", 2048, 2048},     {"tinyllama", "ffn_up", 2048, 5632},
    {"tinyllama", "ffn_down", 5632, 2048}, {"tinyllama", "lm_head", 2048, 32000},
};

// Cheap deterministic values in [-1, 1) (filling 250 MB with a real RNG
// would dominate start-up).
void fill(float *x, size_t n, uint32_t seed) {
    uint32_t s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = (float)(s >> 8) * (1.0f / 8388608.0f) - 1.0f;
    }
}

std::vector<float> rand_floats(size_t n, uint32_t seed) {
    std::vector<float> v(n);
    fill(v.data(), n, seed);
    return v;
}

const char *dtype_name(lp_dtype t) {
    return t == LP_F32 ? "f32" : t == LP_F16 ? "f16" : "q8";
}

// ------------------------------------------------------------ matmuls

void BM_matmul(benchmark::State &st, const lp_kernels *k, lp_dtype dt, MatShape m, int T) {
    const size_t nw = (size_t)m.n_in * m.n_out;
    std::vector<float> X = rand_floats((size_t)T * m.n_in, 1), Y((size_t)T * m.n_out);
    std::vector<float> wf;
    std::vector<uint16_t> wh;
    std::vector<lp_block_q8> wq, xq;
    double weight_bytes = 0;
    if (dt == LP_F32) {
        wf = rand_floats(nw, 2);
        weight_bytes = 4.0 * nw;
    } else if (dt == LP_F16) {
        wh.resize(nw);
        std::vector<float> row(m.n_in);
        for (int r = 0; r < m.n_out; r++) {
            fill(row.data(), row.size(), 3 + r);
            lp_kernels_scalar.f32_to_f16(row.data(), wh.data() + (size_t)r * m.n_in, m.n_in);
        }
        weight_bytes = 2.0 * nw;
    } else {
        wq.resize(nw / LP_QK8);
        std::vector<float> row(m.n_in);
        for (int r = 0; r < m.n_out; r++) {
            fill(row.data(), row.size(), 3 + r);
            lp_kernels_scalar.quantize_q8(row.data(), wq.data() + (size_t)r * (m.n_in / LP_QK8), m.n_in);
        }
        xq.resize((size_t)T * m.n_in / LP_QK8);
        lp_kernels_scalar.quantize_q8(X.data(), xq.data(), T * m.n_in);
        weight_bytes = (double)sizeof(lp_block_q8) * wq.size();
    }
    for (auto _ : st) {
        if (dt == LP_F32) k->gemm_f32(T, m.n_in, X.data(), wf.data(), Y.data(), m.n_out, 0, m.n_out);
        else if (dt == LP_F16) k->gemm_f16(T, m.n_in, X.data(), wh.data(), Y.data(), m.n_out, 0, m.n_out);
        else k->gemm_q8(T, m.n_in, xq.data(), wq.data(), Y.data(), m.n_out, 0, m.n_out);
        benchmark::DoNotOptimize(Y.data());
        benchmark::ClobberMemory();
    }
    using C = benchmark::Counter;
    st.counters["weights/s"] = C(weight_bytes, C::kIsIterationInvariantRate, C::OneK::kIs1000);
    st.counters["FLOP/s"] = C(2.0 * T * nw, C::kIsIterationInvariantRate, C::OneK::kIs1000);
}

// ---------------------------------------------------------- attention

struct AttnShape {
    const char *model;
    int n_heads, n_kv_heads, head_dim;
};

const AttnShape kAttn[] = {{"gpt2", 12, 12, 64}, {"tinyllama", 32, 4, 64}};

// T queries at positions pos0.. over a cache of pos0+T keys, all heads.
void BM_attention(benchmark::State &st, const lp_kernels *k, AttnShape a, lp_dtype kv, int T,
                  int pos0) {
    const int n_ctx = pos0 + T, qd = a.n_heads * a.head_dim, kvd = a.n_kv_heads * a.head_dim;
    std::vector<float> q = rand_floats((size_t)T * qd, 4), out((size_t)T * qd);
    std::vector<float> kf = rand_floats((size_t)n_ctx * kvd, 5), vf = rand_floats((size_t)n_ctx * kvd, 6);
    std::vector<uint16_t> kh(kf.size()), vh(vf.size());
    lp_kernels_scalar.f32_to_f16(kf.data(), kh.data(), (int)kf.size());
    lp_kernels_scalar.f32_to_f16(vf.data(), vh.data(), (int)vf.size());
    std::vector<float> scratch(n_ctx);
    lp_attn_args args = {};
    args.T = T, args.pos0 = pos0, args.n_heads = a.n_heads, args.n_kv_heads = a.n_kv_heads;
    args.head_dim = a.head_dim, args.scale = 1.0f / std::sqrt((float)a.head_dim);
    args.q = q.data(), args.kv_type = kv, args.out = out.data(), args.scratch = scratch.data();
    args.k = kv == LP_F16 ? (const void *)kh.data() : kf.data();
    args.v = kv == LP_F16 ? (const void *)vh.data() : vf.data();
    for (auto _ : st) {
        k->attention(&args, 0, a.n_heads);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    st.SetItemsProcessed(st.iterations() * T); // query tokens
}

// --------------------------------------------------------- vector ops

void BM_vec(benchmark::State &st, const lp_kernels *k, std::string op, int n) {
    std::vector<float> x = rand_floats(n, 7), w = rand_floats(n, 8), b = rand_floats(n, 9), y(n);
    std::vector<uint16_t> h(n);
    std::vector<lp_block_q8> q(n / LP_QK8 + 1);
    const int half = 32, n_heads = n / 64; // rope: 64-dim heads
    std::vector<float> cs(half), sn(half); // a true rotation: values stay bounded
    for (int i = 0; i < half; i++) cs[i] = std::cos(0.1f * i), sn[i] = std::sin(0.1f * i);
    for (auto _ : st) {
        if (op == "rmsnorm") k->rmsnorm(y.data(), x.data(), w.data(), n, 1e-5f);
        else if (op == "layernorm") k->layernorm(y.data(), x.data(), w.data(), b.data(), n, 1e-5f);
        else if (op == "softmax") {
            std::memcpy(y.data(), x.data(), n * sizeof(float));
            k->softmax(y.data(), n);
        } else if (op == "gelu_tanh") {
            std::memcpy(y.data(), x.data(), n * sizeof(float));
            k->gelu_tanh(y.data(), n);
        } else if (op == "gelu_erf") {
            std::memcpy(y.data(), x.data(), n * sizeof(float));
            k->gelu_erf(y.data(), n);
        } else if (op == "swiglu") k->swiglu(y.data(), x.data(), w.data(), n);
        else if (op == "add") k->add(y.data(), x.data(), n);
        else if (op == "dot") benchmark::DoNotOptimize(k->dot_f32(x.data(), w.data(), n));
        else if (op == "rope") k->rope(y.data(), n_heads, 64, 64, cs.data(), sn.data(), 1);
        else if (op == "quantize_q8") k->quantize_q8(x.data(), q.data(), n);
        else if (op == "f32_to_f16") k->f32_to_f16(x.data(), h.data(), n);
        else if (op == "f16_to_f32") k->f16_to_f32(h.data(), y.data(), n);
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    st.SetItemsProcessed(st.iterations() * (int64_t)n);
}

struct VecCase {
    const char *op, *label;
    int n;
};

const VecCase kVec[] = {
    {"rmsnorm", "tinyllama", 2048},   {"layernorm", "gpt2", 768},
    {"softmax", "gpt2.vocab", 50257}, {"softmax", "ctx512", 512},
    {"gelu_tanh", "gpt2.ffn", 3072},  {"gelu_erf", "gpt2.ffn", 3072},
    {"swiglu", "tinyllama.ffn", 5632}, {"add", "tinyllama", 2048},
    {"dot", "tinyllama", 2048},       {"rope", "tinyllama.q", 2048},
    {"quantize_q8", "tinyllama", 2048}, {"quantize_q8", "tinyllama.ffn", 5632},
    {"f32_to_f16", "64k", 65536},     {"f16_to_f32", "64k", 65536},
};

void register_all() {
    for (const char *const *name = lp_kern_names(); *name; name++) {
        const lp_kernels *k = lp_kern_get(*name);
        if (!k) continue;
        const std::string isa = *name;
        for (int T : {1, 64})
            for (lp_dtype dt : {LP_F32, LP_F16, LP_Q8})
                for (const MatShape &m : kMatrices) {
                    const std::string bname = std::string(T == 1 ? "gemv/" : "gemm64/") + isa +
                                              "/" + dtype_name(dt) + "/" + m.model + "." + m.matrix;
                    benchmark::RegisterBenchmark(bname.c_str(), BM_matmul, k, dt, m, T)
                        ->Unit(benchmark::kMicrosecond);
                }
        for (const AttnShape &a : kAttn)
            for (lp_dtype kv : {LP_F32, LP_F16}) {
                const std::string suffix = isa + "/" + a.model + "/kv_" + dtype_name(kv);
                benchmark::RegisterBenchmark(("attn_decode512/" + suffix).c_str(), BM_attention, k,
                                             a, kv, 1, 511)
                    ->Unit(benchmark::kMicrosecond);
                benchmark::RegisterBenchmark(("attn_prefill64/" + suffix).c_str(), BM_attention,
                                             k, a, kv, 64, 0)
                    ->Unit(benchmark::kMicrosecond);
            }
        for (const VecCase &v : kVec)
            benchmark::RegisterBenchmark((std::string(v.op) + "/" + isa + "/" + v.label).c_str(),
                                         BM_vec, k, std::string(v.op), v.n)
                ->Unit(benchmark::kMicrosecond);
    }
}

} // namespace

int main(int argc, char **argv) {
    register_all();
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
