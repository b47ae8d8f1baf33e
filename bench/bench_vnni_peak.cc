// bench_vnni_peak.cc — the int8 compute ceiling of one core: independent
// chains of vpdpbusd zmm with register operands only (no loads, no stores).
// The packed int8 GEMM (gemm_q8p) is measured against this number.
//
//   peak/vnni512/<chains>     "OP/s" = 128 ops (64 multiply-adds) per instruction
//   peak/read512/<MB>         "bytes/s" of a plain zmm read of MB-sized slices of a
//                             256 MB buffer, in turn: the DRAM ceiling of a GEMV
//                             reading a matrix of that size, in the same process
//
// Compiled with -mavx512f -mavx512bw -mavx512vnni in the bench build only
// (bench/CMakeLists.txt, x86-64 only); the benchmark skips itself on CPUs
// or kernels without AVX-512 VNNI, so the executable still runs anywhere.
#include <benchmark/benchmark.h>

#include <immintrin.h>

#include <cstdlib>
#include <cstring>

#define _Static_assert static_assert // quant/blocks.h is C11
extern "C" {
#include "simd/kernels.h"
}

namespace {

// One step = one vpdpbusd on each of CHAINS accumulators (zmm0..), with
// the same two source registers (zmm30, zmm31). A chain waits only for its
// own previous instruction, so with enough chains the latency is hidden and
// the loop runs at the instruction's throughput. Written in assembly so the
// compiler can neither spill the accumulators nor merge the chains.
#define DP(i) "vpdpbusd %%zmm31, %%zmm30, %%zmm" #i "\n\t"
#define DP4(a, b, c, d) DP(a) DP(b) DP(c) DP(d)

template <int CHAINS>
__attribute__((noinline)) void dpbusd_chains(long steps) {
    static_assert(CHAINS % 4 == 0 && CHAINS <= 16, "4, 8, 12 or 16 chains");
    __asm__ volatile("vpternlogd $0xff, %%zmm30, %%zmm30, %%zmm30\n\t" // all ones
                     "vpternlogd $0xff, %%zmm31, %%zmm31, %%zmm31\n\t"
                     "1:\n\t" DP4(0, 1, 2, 3)
                     ".if %c[n] > 4\n\t" DP4(4, 5, 6, 7) ".endif\n\t"
                     ".if %c[n] > 8\n\t" DP4(8, 9, 10, 11) ".endif\n\t"
                     ".if %c[n] > 12\n\t" DP4(12, 13, 14, 15) ".endif\n\t"
                     "dec %[steps]\n\t"
                     "jnz 1b\n\t"
                     : [steps] "+r"(steps)
                     : [n] "i"(CHAINS)
                     : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
                       "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm30",
                       "xmm31", "cc");
}

template <int CHAINS>
void BM_vnni_peak(benchmark::State &st) {
    // the avx512 table requires VNNI, and dispatch checks the OS saves zmm
    if (!__builtin_cpu_supports("avx512vnni") || !lp_kern_get("avx512")) {
        st.SkipWithError("no AVX-512 VNNI on this CPU");
        return;
    }
    const long steps = 1 << 16;
    for (auto _ : st) dpbusd_chains<CHAINS>(steps);
    using C = benchmark::Counter;
    st.counters["OP/s"] = C(128.0 * CHAINS * steps, C::kIsIterationInvariantRate, C::OneK::kIs1000);
}

BENCHMARK(BM_vnni_peak<4>)->Name("peak/vnni512/4")->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_vnni_peak<8>)->Name("peak/vnni512/8")->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_vnni_peak<12>)->Name("peak/vnni512/12")->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_vnni_peak<16>)->Name("peak/vnni512/16")->Unit(benchmark::kMicrosecond);

// Sums a slice with 8 independent zmm accumulators (one load + one add
// per 64 bytes), like bench/membw.c.
__attribute__((noinline)) __m512i read_slice(const uint8_t *p, size_t bytes) {
    __m512i acc[8];
    for (int i = 0; i < 8; i++) acc[i] = _mm512_setzero_si512();
    for (size_t off = 0; off + 512 <= bytes; off += 512)
        for (int i = 0; i < 8; i++)
            acc[i] = _mm512_add_epi64(acc[i], _mm512_loadu_si512(p + off + 64 * i));
    for (int i = 1; i < 8; i++) acc[0] = _mm512_add_epi64(acc[0], acc[i]);
    return acc[0];
}

void BM_read_peak(benchmark::State &st) {
    if (!lp_kern_get("avx512")) {
        st.SkipWithError("no AVX-512 on this CPU");
        return;
    }
    const size_t total = 256u << 20, slice = (size_t)st.range(0) << 20;
    uint8_t *buf = (uint8_t *)std::aligned_alloc(64, total);
    std::memset(buf, 1, total);
    size_t off = 0;
    for (auto _ : st) {
        benchmark::DoNotOptimize(read_slice(buf + off, slice));
        off = off + 2 * slice <= total ? off + slice : 0;
    }
    std::free(buf);
    using C = benchmark::Counter;
    st.counters["bytes/s"] = C((double)slice, C::kIsIterationInvariantRate, C::OneK::kIs1000);
}

BENCHMARK(BM_read_peak)->Name("peak/read512")->Arg(4)->Arg(16)->Arg(64)->Unit(benchmark::kMicrosecond);

} // namespace
