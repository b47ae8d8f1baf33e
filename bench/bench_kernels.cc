// bench_kernels.cc — google-benchmark for every kernel x every ISA table
// this CPU can run, at GPT-2 124M and TinyLlama 1.1B shapes.
//
//   gemv/<isa>/<dtype>/<model>.<matrix>     T = 1 (decode): weight GB/s
//   gemm64/<isa>/<dtype>/<model>.<matrix>   T = 64 (prefill): GFLOP/s
//   gemm512/<isa>/q8p/<model>.<matrix>      T = 512, packed int8 only
//   gemm64|gemm512/avx512bf16/f16bf16/...   f16 weights in bf16 arithmetic
//   gemm64|gemm512/amx/{f16bf16,q8p}/...    the same on AMX tiles
//   <op>/<isa>/<model or n>                 vector ops, attention
//   peak/vnni512/<chains>                   int8 ceiling (bench_vnni_peak.cc)
//
// dtype q8 is the row-major Q8_0 gemm_q8, q8p the packed int8 gemm_q8p.
// Single-threaded: each call covers all rows [0, n_out). Counters:
// "weights/s" = weight bytes streamed per second (1000-based, so 20G/s is
// 20 GB/s), "FLOP/s" = 2*T*n_in*n_out per second (for int8: "OP/s", the
// same count). GEMVs (T = 1) rotate over copies of the matrix that together
// exceed the last-level cache, so their weights come from DRAM.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <memory>
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

// Weight matrices for a T = 1 (GEMV) benchmark are repeated until the
// copies exceed kDramBytes, and the calls go round them, so the weights
// come from DRAM as in decode; with T > 1 one copy (compute-bound).
constexpr size_t kDramBytes = 256u << 20; // >> any L3 here (32 MB)

size_t n_copies(int T, size_t bytes) { return T == 1 ? (kDramBytes + bytes - 1) / bytes : 1; }

template <class E>
std::vector<E> repeat(const std::vector<E> &one, size_t copies) {
    std::vector<E> all(one.size() * copies);
    for (size_t c = 0; c < copies; c++)
        std::memcpy(all.data() + c * one.size(), one.data(), one.size() * sizeof(E));
    return all;
}

void BM_matmul(benchmark::State &st, const lp_kernels *k, lp_dtype dt, MatShape m, int T) {
    const size_t nw = (size_t)m.n_in * m.n_out;
    std::vector<float> X = rand_floats((size_t)T * m.n_in, 1), Y((size_t)T * m.n_out);
    std::vector<float> wf;
    std::vector<uint16_t> wh;
    std::vector<lp_block_q8> wq, xq;
    double weight_bytes = 0;
    size_t copies = 1;
    if (dt == LP_F32) {
        weight_bytes = 4.0 * nw;
        copies = n_copies(T, (size_t)weight_bytes);
        wf = repeat(rand_floats(nw, 2), copies);
    } else if (dt == LP_F16) {
        std::vector<uint16_t> one(nw);
        std::vector<float> row(m.n_in);
        for (int r = 0; r < m.n_out; r++) {
            fill(row.data(), row.size(), 3 + r);
            lp_kernels_scalar.f32_to_f16(row.data(), one.data() + (size_t)r * m.n_in, m.n_in);
        }
        weight_bytes = 2.0 * nw;
        copies = n_copies(T, (size_t)weight_bytes);
        wh = repeat(one, copies);
    } else {
        std::vector<lp_block_q8> one(nw / LP_QK8);
        std::vector<float> row(m.n_in);
        for (int r = 0; r < m.n_out; r++) {
            fill(row.data(), row.size(), 3 + r);
            lp_kernels_scalar.quantize_q8(row.data(), one.data() + (size_t)r * (m.n_in / LP_QK8), m.n_in);
        }
        xq.resize((size_t)T * m.n_in / LP_QK8);
        lp_kernels_scalar.quantize_q8(X.data(), xq.data(), T * m.n_in);
        weight_bytes = (double)sizeof(lp_block_q8) * one.size();
        copies = n_copies(T, (size_t)weight_bytes);
        wq = repeat(one, copies);
    }
    size_t c = 0;
    for (auto _ : st) {
        if (dt == LP_F32)
            k->gemm_f32(T, m.n_in, X.data(), wf.data() + c * nw, Y.data(), m.n_out, 0, m.n_out);
        else if (dt == LP_F16)
            k->gemm_f16(T, m.n_in, X.data(), wh.data() + c * nw, Y.data(), m.n_out, 0, m.n_out);
        else
            k->gemm_q8(T, m.n_in, xq.data(), wq.data() + c * (nw / LP_QK8), Y.data(), m.n_out, 0, m.n_out);
        c = c + 1 == copies ? 0 : c + 1;
        benchmark::DoNotOptimize(Y.data());
        benchmark::ClobberMemory();
    }
    using C = benchmark::Counter;
    st.counters["weights/s"] = C(weight_bytes, C::kIsIterationInvariantRate, C::OneK::kIs1000);
    st.counters["FLOP/s"] = C(2.0 * T * nw, C::kIsIterationInvariantRate, C::OneK::kIs1000);
}

// ------------------------------------------- f16 weights, bf16 arithmetic

// gemm_f16_bf16 (prefill only): X rounded to bf16 once, as forward.c does
// per matmul call (that conversion is not timed: it is T*n_in elements
// against T*n_in*n_out products).
void BM_f16_bf16(benchmark::State &st, const lp_kernels *k, MatShape m, int T) {
    const size_t nw = (size_t)m.n_in * m.n_out;
    std::vector<float> X = rand_floats((size_t)T * m.n_in, 1), Y((size_t)T * m.n_out);
    std::vector<uint16_t> Xb((size_t)T * m.n_in), W(nw);
    k->f32_to_bf16(X.data(), Xb.data(), T * m.n_in);
    std::vector<float> row(m.n_in);
    for (int r = 0; r < m.n_out; r++) {
        fill(row.data(), row.size(), 3 + r);
        lp_kernels_scalar.f32_to_f16(row.data(), W.data() + (size_t)r * m.n_in, m.n_in);
    }
    for (auto _ : st) {
        k->gemm_f16_bf16(T, m.n_in, Xb.data(), W.data(), Y.data(), m.n_out, 0, m.n_out);
        benchmark::DoNotOptimize(Y.data());
        benchmark::ClobberMemory();
    }
    using C = benchmark::Counter;
    st.counters["FLOP/s"] = C(2.0 * T * nw, C::kIsIterationInvariantRate, C::OneK::kIs1000);
}

// -------------------------------------------------- packed int8 matmul

struct FreeDeleter {
    void operator()(void *p) const { std::free(p); }
};

// T activation rows quantized by quantize_q8a: qs (T, n_in), d and corr (T, n_in/32).
struct Q8Act {
    std::vector<int8_t> qs;
    std::vector<float> d;
    std::vector<int32_t> corr;
    lp_q8_act act;
};

void quantize_act(Q8Act &a, int T, int n_in) {
    const int nb = n_in / LP_QK8;
    std::vector<float> X = rand_floats((size_t)T * n_in, 1);
    a.qs.resize((size_t)T * n_in), a.d.resize((size_t)T * nb), a.corr.resize((size_t)T * nb);
    for (int t = 0; t < T; t++)
        lp_kernels_scalar.quantize_q8a(X.data() + (size_t)t * n_in, n_in, a.qs.data() + (size_t)t * n_in,
                                       a.d.data() + (size_t)t * nb, a.corr.data() + (size_t)t * nb);
    a.act = {a.qs.data(), a.d.data(), a.corr.data(), nullptr};
}

void BM_q8p(benchmark::State &st, const lp_kernels *k, MatShape m, int T) {
    const int nb = m.n_in / LP_QK8, groups = (int)LP_Q8P_GROUPS(m.n_out);
    const size_t bytes = lp_q8p_bytes(m.n_out, m.n_in);
    const size_t copies = n_copies(T, bytes);
    const size_t alloc = (bytes * copies + 63) / 64 * 64; // aligned_alloc: a multiple of 64
    std::unique_ptr<uint8_t, FreeDeleter> W((uint8_t *)std::aligned_alloc(64, alloc));
    {
        std::vector<lp_block_q8> rows((size_t)m.n_out * nb);
        std::vector<float> row(m.n_in);
        for (int r = 0; r < m.n_out; r++) {
            fill(row.data(), row.size(), 3 + r);
            lp_kernels_scalar.quantize_q8(row.data(), rows.data() + (size_t)r * nb, m.n_in);
        }
        lp_q8p_pack(rows.data(), m.n_out, m.n_in, W.get(), 0, groups);
        for (size_t c = 1; c < copies; c++) std::memcpy(W.get() + c * bytes, W.get(), bytes);
    }
    Q8Act x;
    quantize_act(x, T, m.n_in);
    std::vector<float> Y((size_t)T * m.n_out);
    size_t c = 0;
    for (auto _ : st) {
        k->gemm_q8p(T, m.n_in, &x.act, W.get() + c * bytes, m.n_out, Y.data(), m.n_out, 0, groups);
        c = c + 1 == copies ? 0 : c + 1;
        benchmark::DoNotOptimize(Y.data());
        benchmark::ClobberMemory();
    }
    using C = benchmark::Counter;
    st.counters["weights/s"] = C((double)bytes, C::kIsIterationInvariantRate, C::OneK::kIs1000);
    st.counters["OP/s"] = C(2.0 * T * m.n_in * m.n_out, C::kIsIterationInvariantRate, C::OneK::kIs1000);
}

// ---------------------------------------------------------- attention

struct AttnShape {
    const char *model;
    int n_heads, n_kv_heads, head_dim;
};

const AttnShape kAttn[] = {{"gpt2", 12, 12, 64},
                           {"tinyllama", 32, 4, 64},
                           {"llama3.2-1b", 32, 8, 64},
                           {"qwen2.5-0.5b", 14, 2, 64}};

// T queries at positions pos0.. over a cache of pos0+T keys, all heads.
// Decode (T = 1) rotates over copies of the cache that together exceed the
// last-level cache: in a model the weights read since a layer last ran
// have evicted its cache, so it comes from DRAM.
void BM_attention(benchmark::State &st, const lp_kernels *k, AttnShape a, lp_dtype kv, int T,
                  int pos0) {
    const int n_ctx = pos0 + T, qd = a.n_heads * a.head_dim, kvd = a.n_kv_heads * a.head_dim;
    const size_t n_kv = (size_t)n_ctx * kvd, elt = kv == LP_F16 ? 2 : 4;
    const size_t copies = n_copies(T, 2 * n_kv * elt);
    std::vector<float> q = rand_floats((size_t)T * qd, 4), out((size_t)T * qd);
    std::vector<float> kf = rand_floats(n_kv, 5), vf = rand_floats(n_kv, 6);
    std::vector<uint16_t> kh(n_kv), vh(n_kv);
    lp_kernels_scalar.f32_to_f16(kf.data(), kh.data(), (int)n_kv);
    lp_kernels_scalar.f32_to_f16(vf.data(), vh.data(), (int)n_kv);
    if (kv == LP_F16) kh = repeat(kh, copies), vh = repeat(vh, copies);
    else kf = repeat(kf, copies), vf = repeat(vf, copies);
    std::vector<float> scratch(lp_attn_scratch_floats(n_ctx, a.head_dim));
    lp_attn_args args = {};
    args.T = T, args.pos0 = pos0, args.n_heads = a.n_heads, args.n_kv_heads = a.n_kv_heads;
    args.head_dim = a.head_dim, args.scale = 1.0f / std::sqrt((float)a.head_dim);
    args.q = q.data(), args.kv_type = kv, args.out = out.data(), args.scratch = scratch.data();
    args.kv_row_ld = a.head_dim; // head by head, as the session keeps it
    args.kv_head_ld = (size_t)n_ctx * a.head_dim;
    size_t c = 0;
    for (auto _ : st) {
        const size_t at = c * n_kv * elt; // bytes
        args.k = (kv == LP_F16 ? (const char *)kh.data() : (const char *)kf.data()) + at;
        args.v = (kv == LP_F16 ? (const char *)vh.data() : (const char *)vf.data()) + at;
        k->attention(&args, 0, a.n_heads);
        c = c + 1 == copies ? 0 : c + 1;
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    st.SetItemsProcessed(st.iterations() * T); // query tokens
    using C = benchmark::Counter;
    st.counters["kv/s"] = C(2.0 * n_kv * elt, C::kIsIterationInvariantRate, C::OneK::kIs1000);
}

// --------------------------------------------------------- vector ops

void BM_vec(benchmark::State &st, const lp_kernels *k, std::string op, int n) {
    std::vector<float> x = rand_floats(n, 7), w = rand_floats(n, 8), b = rand_floats(n, 9), y(n);
    std::vector<uint16_t> h(n);
    std::vector<lp_block_q8> q(n / LP_QK8 + 1);
    std::vector<int8_t> qa(n);
    std::vector<float> xd(n / LP_QK8 + 1);
    std::vector<int32_t> xc(n / LP_QK8 + 1);
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
        else if (op == "quantize_q8a") k->quantize_q8a(x.data(), n, qa.data(), xd.data(), xc.data());
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
    {"quantize_q8a", "tinyllama", 2048}, {"quantize_q8a", "tinyllama.ffn", 5632},
    {"f32_to_f16", "64k", 65536},     {"f16_to_f32", "64k", 65536},
};

void register_all() {
    for (const char *const *name = lp_kern_names(); *name; name++) {
        const lp_kernels *k = lp_kern_get(*name);
        if (!k) continue;
        const std::string isa = *name;
        if (k->gemm_f16_bf16) { // the avx512 table plus this kernel: only it is new
            for (int T : {64, 512})
                for (const MatShape &m : kMatrices)
                    benchmark::RegisterBenchmark(("gemm" + std::to_string(T) + "/" + isa +
                                                  "/f16bf16/" + m.model + "." + m.matrix)
                                                     .c_str(),
                                                 BM_f16_bf16, k, m, T)
                        ->Unit(benchmark::kMicrosecond);
            if (isa == "amx") // and prefill int8 on tiles
                for (int T : {64, 512})
                    for (const MatShape &m : kMatrices)
                        benchmark::RegisterBenchmark(("gemm" + std::to_string(T) + "/" + isa +
                                                      "/q8p/" + m.model + "." + m.matrix)
                                                         .c_str(),
                                                     BM_q8p, k, m, T)
                            ->Unit(benchmark::kMicrosecond);
            continue;
        }
        for (int T : {1, 64})
            for (lp_dtype dt : {LP_F32, LP_F16, LP_Q8})
                for (const MatShape &m : kMatrices) {
                    const std::string bname = std::string(T == 1 ? "gemv/" : "gemm64/") + isa +
                                              "/" + dtype_name(dt) + "/" + m.model + "." + m.matrix;
                    benchmark::RegisterBenchmark(bname.c_str(), BM_matmul, k, dt, m, T)
                        ->Unit(benchmark::kMicrosecond);
                }
        for (int T : {1, 64, 512}) {
            if (T == 512 && k == &lp_kernels_scalar) continue; // minutes per call
            for (const MatShape &m : kMatrices) {
                const std::string bname = (T == 1 ? "gemv/" : "gemm" + std::to_string(T) + "/") +
                                          isa + "/q8p/" + m.model + "." + m.matrix;
                benchmark::RegisterBenchmark(bname.c_str(), BM_q8p, k, m, T)
                    ->Unit(benchmark::kMicrosecond);
            }
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
                benchmark::RegisterBenchmark(("attn_prefill512/" + suffix).c_str(), BM_attention,
                                             k, a, kv, 512, 0)
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
