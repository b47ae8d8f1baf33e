/*
 * dispatch.c — picks the kernel table once, from what the CPU *and* the OS
 * support, and the LOUPE_ISA environment variable.
 *
 * Compiled without ISA flags: nothing here may execute an instruction the
 * baseline (x86-64 / armv8-a) lacks. On x86 a feature counts only when
 * CPUID reports it and XCR0 (xgetbv) shows the OS saves its registers; on
 * ARM getauxval(AT_HWCAP) is the authority.
 */
#include "kernels.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "src/error.h"

#if defined(__x86_64__) || defined(__i386__)
#define LP_X86 1
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#elif defined(__aarch64__)
#define LP_ARM 1
#include <sys/auxv.h>
#endif

#ifdef LP_HAVE_AVX2
extern const lp_kernels lp_kernels_avx2;
#endif
#ifdef LP_HAVE_AVX512
extern const lp_kernels lp_kernels_avx512;
#endif
#ifdef LP_HAVE_AVX512BF16
/* The avx512 table plus bf16 prefill (simd/avx512_bf16.c), built on first
 * use: it differs from lp_kernels_avx512 only in the bf16 entries. */
void lp_avx512bf16_fill(lp_kernels *k);
static lp_kernels g_avx512bf16;
static pthread_once_t g_avx512bf16_once = PTHREAD_ONCE_INIT;
static void make_avx512bf16(void) {
    g_avx512bf16 = lp_kernels_avx512;
    g_avx512bf16.name = "avx512bf16";
    lp_avx512bf16_fill(&g_avx512bf16);
}
#endif
#ifdef LP_HAVE_AMX
/* The avx512bf16 table with AMX tile matmuls for prefill (simd/amx.c). */
void lp_amx_fill(lp_kernels *k);
static lp_kernels g_amx;
static pthread_once_t g_amx_once = PTHREAD_ONCE_INIT;
static void make_amx(void) {
    pthread_once(&g_avx512bf16_once, make_avx512bf16);
    g_amx = g_avx512bf16;
    g_amx.name = "amx";
    lp_amx_fill(&g_amx);
}
#endif
#ifdef LP_HAVE_NEON
extern const lp_kernels lp_kernels_neon;     /* armv8-a ASIMD only */
extern const lp_kernels lp_kernels_neon_dot; /* same, gemm_q8 uses sdot */
#endif

/* ------------------------------------------------------- CPU features */

typedef struct {
    char brand[64];
    /* x86: instruction sets (CPUID) and register state (XCR0) */
    int avx, avx2, fma, f16c;
    int avx512f, avx512bw, avx512vl, avx512dq, avx512vnni, avx512bf16;
    int avxvnni, amx_tile, amx_int8, amx_bf16;
    int os_ymm, os_zmm, os_amx, amx_permitted;
    /* arm (getauxval) */
    int asimd, asimddp, asimdhp;
} lp_cpu;

#ifdef LP_X86
static uint64_t read_xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static void detect_x86(lp_cpu *c) {
    unsigned a, b, cx, d;
    unsigned max_ext = __get_cpuid_max(0x80000000u, NULL);
    if (max_ext >= 0x80000004u) {
        unsigned *w = (unsigned *)c->brand;
        for (unsigned i = 0; i < 3; i++)
            __get_cpuid(0x80000002u + i, &w[4 * i], &w[4 * i + 1], &w[4 * i + 2], &w[4 * i + 3]);
        c->brand[48] = 0;
    }
    if (!__get_cpuid(1, &a, &b, &cx, &d)) return;
    const int osxsave = (cx >> 27) & 1;
    c->fma = (cx >> 12) & 1;
    c->avx = (cx >> 28) & 1;
    c->f16c = (cx >> 29) & 1;
    uint64_t xcr0 = osxsave ? read_xcr0() : 0;
    c->os_ymm = (xcr0 & 0x6) == 0x6;               /* SSE + AVX state */
    c->os_zmm = c->os_ymm && (xcr0 & 0xe0) == 0xe0; /* opmask, ZMM0-15 hi, ZMM16-31 */
    c->os_amx = (xcr0 & 0x60000) == 0x60000;        /* XTILECFG + XTILEDATA */
    if (__get_cpuid_max(0, NULL) < 7) return;
    __cpuid_count(7, 0, a, b, cx, d);
    c->avx2 = (b >> 5) & 1;
    c->avx512f = (b >> 16) & 1;
    c->avx512dq = (b >> 17) & 1;
    c->avx512bw = (b >> 30) & 1;
    c->avx512vl = (b >> 31) & 1;
    c->avx512vnni = (cx >> 11) & 1;
    c->amx_bf16 = (d >> 22) & 1;
    c->amx_tile = (d >> 24) & 1;
    c->amx_int8 = (d >> 25) & 1;
    unsigned max_sub = a;
    if (max_sub >= 1) {
        __cpuid_count(7, 1, a, b, cx, d);
        c->avxvnni = (a >> 4) & 1;
        c->avx512bf16 = (a >> 5) & 1;
    }
#ifdef SYS_arch_prctl
    /* Linux grants AMX tile data per process: without the grant the first
     * tile instruction faults. Ask for it (ARCH_REQ_XCOMP_PERM = 0x1023,
     * XTILEDATA = feature 18), then read back what was granted
     * (ARCH_GET_XCOMP_PERM = 0x1022). Kernels before 5.16 refuse both. */
    if (c->amx_tile && c->os_amx) {
        unsigned long perm = 0;
        (void)syscall(SYS_arch_prctl, 0x1023, 18UL);
        if (syscall(SYS_arch_prctl, 0x1022, &perm) == 0) c->amx_permitted = (perm >> 18) & 1;
    }
#endif
}
#endif

#ifdef LP_ARM
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1UL << 1)
#endif
#ifndef HWCAP_ASIMDHP
#define HWCAP_ASIMDHP (1UL << 10)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
static void detect_arm(lp_cpu *c) {
    unsigned long hw = getauxval(AT_HWCAP);
    c->asimd = (hw & HWCAP_ASIMD) != 0;
    c->asimdhp = (hw & HWCAP_ASIMDHP) != 0;
    c->asimddp = (hw & HWCAP_ASIMDDP) != 0;
    snprintf(c->brand, sizeof c->brand, "aarch64");
}
#endif

/* ----------------------------------------------------------- ISA list */

/* Every name loupe knows, best first; a name whose table is not compiled
 * into this build is known but never runnable. */
static const char *const all_isas[] = {"amx", "avx512bf16", "avx512", "avx2", "neon", "scalar"};
enum { N_ISAS = sizeof all_isas / sizeof all_isas[0] };

static lp_cpu g_cpu;

/* Appends what `name` needs but this CPU/OS lacks to buf ("" = runnable). */
static void missing_features(const char *name, char *buf, size_t cap) {
    const lp_cpu *c = &g_cpu;
    buf[0] = 0;
    size_t n = 0;
#define NEED(cond, what) \
    if (!(cond) && n < cap) n += (size_t)snprintf(buf + n, cap - n, "%s%s", n ? ", " : "", what)
    if (!strcmp(name, "scalar")) return;
#ifdef LP_X86
    const int is_amx = !strcmp(name, "amx");
    const int is_bf16 = is_amx || !strcmp(name, "avx512bf16");
    const int is_avx512 = is_bf16 || !strcmp(name, "avx512");
    if (!strcmp(name, "avx2") || is_avx512) {
        NEED(c->avx2, "avx2");
        NEED(c->fma, "fma");
        NEED(c->f16c, "f16c");
        NEED(c->os_ymm, "OS ymm state (XCR0)");
    }
    if (is_avx512) {
        NEED(c->avx512f, "avx512f");
        NEED(c->avx512bw, "avx512bw");
        NEED(c->avx512vl, "avx512vl");
        NEED(c->avx512dq, "avx512dq");
        NEED(c->avx512vnni, "avx512_vnni");
        NEED(c->os_zmm, "OS zmm state (XCR0)");
    }
    if (is_bf16) NEED(c->avx512bf16, "avx512_bf16");
    if (is_amx) {
        NEED(c->amx_tile, "amx_tile");
        NEED(c->amx_int8, "amx_int8");
        NEED(c->amx_bf16, "amx_bf16");
        NEED(c->os_amx, "OS tile state (XCR0)");
        NEED(c->amx_permitted, "tile data permission (arch_prctl)");
    }
#ifndef LP_HAVE_AVX2
    if (!strcmp(name, "avx2")) NEED(0, "table not compiled in");
#endif
#ifndef LP_HAVE_AVX512
    if (!strcmp(name, "avx512")) NEED(0, "table not compiled in");
#endif
#if !defined(LP_HAVE_AVX512) || !defined(LP_HAVE_AVX512BF16)
    if (is_bf16) NEED(0, "table not compiled in");
#endif
#ifndef LP_HAVE_AMX
    if (is_amx) NEED(0, "table not compiled in");
#endif
    if (!strcmp(name, "neon")) NEED(0, "an ARM CPU");
#elif defined(LP_ARM)
    if (!strcmp(name, "neon")) NEED(c->asimd, "asimd");
#ifndef LP_HAVE_NEON
    if (!strcmp(name, "neon")) NEED(0, "table not compiled in");
#endif
    if (strcmp(name, "neon") && strcmp(name, "scalar")) NEED(0, "an x86-64 CPU");
#else
    if (strcmp(name, "scalar")) NEED(0, "a supported architecture");
#endif
#undef NEED
    (void)c;
}

static int is_known(const char *name) {
    for (int i = 0; i < N_ISAS; i++)
        if (!strcmp(name, all_isas[i])) return 1;
    return 0;
}

/* The compiled table for a known name, ignoring CPU support. */
static const lp_kernels *table_of(const char *name) {
    if (!strcmp(name, "scalar")) return &lp_kernels_scalar;
#ifdef LP_HAVE_AVX2
    if (!strcmp(name, "avx2")) return &lp_kernels_avx2;
#endif
#ifdef LP_HAVE_AVX512
    if (!strcmp(name, "avx512")) return &lp_kernels_avx512;
#endif
#if defined(LP_HAVE_AVX512) && defined(LP_HAVE_AVX512BF16)
    if (!strcmp(name, "avx512bf16")) {
        pthread_once(&g_avx512bf16_once, make_avx512bf16);
        return &g_avx512bf16;
    }
#endif
#if defined(LP_HAVE_AVX512) && defined(LP_HAVE_AVX512BF16) && defined(LP_HAVE_AMX)
    if (!strcmp(name, "amx")) {
        pthread_once(&g_amx_once, make_amx);
        return &g_amx;
    }
#endif
#ifdef LP_HAVE_NEON
    if (!strcmp(name, "neon")) return g_cpu.asimddp ? &lp_kernels_neon_dot : &lp_kernels_neon;
#endif
    return NULL;
}

/* Lower-cases a user-given name into buf (LOUPE_ISA=AVX2 is fine). */
static const char *canonical(const char *name, char *buf, size_t cap) {
    size_t i = 0;
    for (; name[i] && i + 1 < cap; i++)
        buf[i] = (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] - 'A' + 'a' : name[i]);
    buf[i] = 0;
    return buf;
}

/* ---------------------------------------------------------- selection */

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(const lp_kernels *) g_kern;
static char g_reason[512]; /* why g_kern was chosen; under g_lock */

static const lp_kernels *best_table(void) {
    char miss[256];
    for (int i = 0; i < N_ISAS; i++) {
        missing_features(all_isas[i], miss, sizeof miss);
        const lp_kernels *t = table_of(all_isas[i]);
        if (t && !miss[0]) return t;
    }
    return &lp_kernels_scalar;
}

/* Chooses the table from the features found and LOUPE_ISA. */
static void choose_table(void) {
    const lp_kernels *best = best_table();
    const char *env = getenv("LOUPE_ISA");
    pthread_mutex_lock(&g_lock);
    if (env && env[0]) {
        char name[32], miss[256];
        canonical(env, name, sizeof name);
        missing_features(name, miss, sizeof miss);
        if (!is_known(name)) {
            snprintf(g_reason, sizeof g_reason,
                     "LOUPE_ISA=%.32s rejected (unknown ISA); best available", env);
        } else if (miss[0] || !table_of(name)) {
            snprintf(g_reason, sizeof g_reason,
                     "LOUPE_ISA=%.32s rejected (missing: %s); best available", env, miss);
        } else {
            best = table_of(name);
            snprintf(g_reason, sizeof g_reason, "forced by LOUPE_ISA=%.32s", env);
        }
    } else {
        snprintf(g_reason, sizeof g_reason, "best available");
    }
    atomic_store(&g_kern, best);
    pthread_mutex_unlock(&g_lock);
}

static void init_once(void) {
#ifdef LP_X86
    detect_x86(&g_cpu);
#elif defined(LP_ARM)
    detect_arm(&g_cpu);
#endif
    choose_table();
}

void lp_kern_reset(void) {
    pthread_once(&g_once, init_once);
    choose_table();
}

const lp_kernels *lp_kern(void) {
    pthread_once(&g_once, init_once);
    return atomic_load_explicit(&g_kern, memory_order_acquire);
}

const lp_kernels *lp_kern_get(const char *name) {
    pthread_once(&g_once, init_once);
    char buf[32], miss[256];
    if (!name) return NULL;
    canonical(name, buf, sizeof buf);
    if (!is_known(buf)) return NULL;
    missing_features(buf, miss, sizeof miss);
    return miss[0] ? NULL : table_of(buf);
}

int lp_kern_force(const char *name) {
    pthread_once(&g_once, init_once);
    char buf[32];
    if (!name) return -1;
    canonical(name, buf, sizeof buf);
    if (!is_known(buf)) return -1;
    const lp_kernels *t = lp_kern_get(buf);
    if (!t) return -2;
    pthread_mutex_lock(&g_lock);
    atomic_store(&g_kern, t);
    snprintf(g_reason, sizeof g_reason, "forced by the application (%s)", buf);
    pthread_mutex_unlock(&g_lock);
    return 0;
}

const char *const *lp_kern_names(void) {
    static const char *const names[] = {
#if defined(LP_HAVE_AVX512) && defined(LP_HAVE_AVX512BF16) && defined(LP_HAVE_AMX)
        "amx",
#endif
#if defined(LP_HAVE_AVX512) && defined(LP_HAVE_AVX512BF16)
        "avx512bf16",
#endif
#ifdef LP_HAVE_AVX512
        "avx512",
#endif
#ifdef LP_HAVE_AVX2
        "avx2",
#endif
#ifdef LP_HAVE_NEON
        "neon",
#endif
        "scalar", NULL};
    return names;
}

/* ------------------------------------------------------------- report */

typedef struct {
    char *buf;
    size_t cap, len;
} lp_sbuf;

static void sb_printf(lp_sbuf *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(lp_sbuf *s, const char *fmt, ...) {
    if (s->cap == 0 || s->len >= s->cap - 1) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(s->buf + s->len, s->cap - s->len, fmt, ap);
    va_end(ap);
    if (n > 0) s->len += (size_t)n < s->cap - s->len ? (size_t)n : s->cap - s->len - 1;
}

static const char *yn(int v) { return v ? "yes" : "no"; }

size_t lp_cpu_report(char *buf, size_t cap) {
    const lp_kernels *cur = lp_kern();
    const lp_cpu *c = &g_cpu;
    lp_sbuf s = {buf, cap, 0};
    if (cap) buf[0] = 0;
    sb_printf(&s, "cpu: %s\n", c->brand[0] ? c->brand : "unknown");
#ifdef LP_X86
    sb_printf(&s, "x86 features: avx2 %s, fma %s, f16c %s, avx512f %s, avx512bw %s, "
                  "avx512vl %s, avx512dq %s, avx512_vnni %s, avx512_bf16 %s, avx_vnni %s\n",
              yn(c->avx2), yn(c->fma), yn(c->f16c), yn(c->avx512f), yn(c->avx512bw),
              yn(c->avx512vl), yn(c->avx512dq), yn(c->avx512vnni), yn(c->avx512bf16),
              yn(c->avxvnni));
    sb_printf(&s, "amx: tile %s, int8 %s, bf16 %s, OS state %s, permitted %s\n",
              yn(c->amx_tile), yn(c->amx_int8), yn(c->amx_bf16), yn(c->os_amx),
              yn(c->amx_permitted));
    sb_printf(&s, "OS register state (XCR0): ymm %s, zmm %s\n", yn(c->os_ymm), yn(c->os_zmm));
#elif defined(LP_ARM)
    sb_printf(&s, "arm features (HWCAP): asimd %s, asimddp (sdot) %s, asimdhp %s\n",
              yn(c->asimd), yn(c->asimddp), yn(c->asimdhp));
#endif
    sb_printf(&s, "kernel tables:");
    for (const char *const *n = lp_kern_names(); *n; n++) {
        char miss[256];
        missing_features(*n, miss, sizeof miss);
        if (miss[0]) sb_printf(&s, " %s (unavailable: %s)", *n, miss);
        else sb_printf(&s, " %s", *n);
        sb_printf(&s, n[1] ? "," : "\n");
    }
    pthread_mutex_lock(&g_lock);
    sb_printf(&s, "chosen: %s (%s)", cur->name, g_reason);
    pthread_mutex_unlock(&g_lock);
#ifdef LP_HAVE_NEON
    if (cur == &lp_kernels_neon_dot) sb_printf(&s, ", int8 matmul uses sdot");
    else if (cur == &lp_kernels_neon) sb_printf(&s, ", int8 matmul without sdot");
#endif
    if (cur->gemm_f16_bf16)
        sb_printf(&s, "; f16 weights in prefill computed in bf16 (LOUPE_ISA=avx512: exact f16)");
#if defined(LP_HAVE_AVX512) && defined(LP_HAVE_AVX512BF16) && defined(LP_HAVE_AMX)
    if (cur == &g_amx) sb_printf(&s, "; prompts of 16+ tokens on AMX tiles");
#endif
    sb_printf(&s, "\n");
    return s.len;
}

/* ---------------------------------------------------------- public API */

const char *loupe_isa(void) { return lp_kern()->name; }

loupe_status loupe_set_isa(const char *name) {
    if (!name || !name[0]) return lp_fail(LOUPE_ERR_ARG, "loupe_set_isa: no ISA name given");
    char buf[32], miss[256];
    canonical(name, buf, sizeof buf);
    int rc = lp_kern_force(buf);
    if (rc == -1)
        return lp_fail(LOUPE_ERR_ISA,
                       "ISA '%s' is unknown (known: amx, avx512bf16, avx512, avx2, neon, scalar)",
                       name);
    if (rc == -2) {
        missing_features(buf, miss, sizeof miss);
        return lp_fail(LOUPE_ERR_ISA, "ISA '%s' is not available here (missing: %s)", name,
                       miss);
    }
    return LOUPE_OK;
}

size_t loupe_cpu_report(char *buf, size_t cap) { return lp_cpu_report(buf, cap); }
