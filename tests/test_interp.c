/*
 * test_interp.c — interpretability helpers (include/loupe_interp.h) against
 * independent expectations:
 *   - writers: .npy files loaded by numpy and numpy's files read back; PNG
 *     pixels decoded by a separate Python decoder; JSON re-parsed by cJSON;
 *   - math: attention rollout and divergences against numpy / closed forms;
 *   - captures on slm-gpt2-char and synthetic GPT-2/Llama checkpoints against
 *     the numpy forward pass of tests/ref/interp_ref.py (attention patterns
 *     within 1e-5, residual stream, z·W_O + b = attn_out, logit lens);
 *   - interventions defined precisely: zero-ablating every head of a layer
 *     equals replacing attn_out by the W_O bias; patching a prompt into
 *     itself changes nothing; patching the one differing token's embedding
 *     restores the clean run; steering at the last layer equals unembedding
 *     the shifted residual;
 *   - attribution against numpy occlusion / exact Shapley / rollout.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "loupe.h"
#include "loupe_interp.h"
#include "src/interp/interp.h"
#include "testutil.h"

#define SLM "models/slm-gpt2-char"
/* tu_shared/tu_tmp/tu_src return slots of one small ring: keep a copy of
 * any path used across many such calls. */
#define KEEP(var, expr) char var[1024]; snprintf(var, sizeof var, "%s", (expr))
#define SLM_PROMPT "Q: What is SLM?\nA:"

/* ------------------------------------------------------------ helpers */

static const char *ref_py(void) { return tu_src("tests/ref/interp_ref.py"); }

static void assert_close(double a, double b, double tol, const char *what) {
    if (!(fabs(a - b) <= tol)) fail_msg("%s: %.9g != %.9g (tol %g)", what, a, b, tol);
}

/* Reads an .npy and checks its shape (ndim entries of want). */
static float *load_npy(const char *path, int ndim, const int64_t *want) {
    float *x = NULL;
    int nd = 0;
    int64_t shape[LOUPE_NPY_MAX_DIMS];
    if (loupe_npy_read(path, &x, &nd, shape) != LOUPE_OK) fail_msg("%s", loupe_last_error());
    assert_int_equal(nd, ndim);
    for (int d = 0; d < ndim; d++)
        if (shape[d] != want[d]) fail_msg("%s: dim %d is %lld, want %lld", path, d,
                                          (long long)shape[d], (long long)want[d]);
    return x;
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double mx = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= mx)) mx = d; /* NaN propagates as a failure */
    }
    return mx;
}

static char *ids_csv(const int32_t *ids, int n) {
    static char buf[4][8192];
    static int next;
    char *b = buf[next++ % 4];
    size_t k = 0;
    b[0] = 0;
    for (int i = 0; i < n; i++) k += (size_t)snprintf(b + k, sizeof buf[0] - k, i ? ",%d" : "%d", ids[i]);
    return b;
}

static loupe_model *open_model(const char *dir) {
    loupe_model *m = NULL;
    if (loupe_model_open(dir, NULL, &m) != LOUPE_OK) fail_msg("%s: %s", dir, loupe_last_error());
    return m;
}

static loupe_session *new_session(const loupe_model *m) {
    loupe_session *s = NULL;
    loupe_session_params sp = {.n_ctx = 0, .n_threads = 2};
    if (loupe_session_new(m, &sp, &s) != LOUPE_OK) fail_msg("%s", loupe_last_error());
    return s;
}

/* Synthetic checkpoint of a tests/ref/synth.py variant (built once). */
static const char *synth(const char *variant) {
    static char dirs[8][1024];
    static char names[8][64];
    static int n;
    for (int i = 0; i < n; i++)
        if (strcmp(names[i], variant) == 0) return dirs[i];
    assert_true(n < 8);
    snprintf(dirs[n], sizeof dirs[n], "%s", tu_tmp("interp-synth-"));
    strncat(dirs[n], variant, sizeof dirs[n] - strlen(dirs[n]) - 1);
    assert_int_equal(tu_system("%s %s --variant %s --out %s", tu_python(),
                               tu_src("tests/ref/synth.py"), variant, dirs[n]), 0);
    snprintf(names[n], sizeof names[n], "%s", variant);
    return dirs[n++];
}

/* Tokens of the slm prompt. */
static int slm_prompt(const loupe_model *m, int32_t *ids, int cap) {
    size_t n = 0;
    assert_int_equal(loupe_tokenize(m, SLM_PROMPT, strlen(SLM_PROMPT), 1, 1, ids, (size_t)cap, &n),
                     LOUPE_OK);
    return (int)n;
}

/* A fixed token sequence inside the vocabulary of a synthetic model. */
static void synth_ids(int32_t *ids, int n, int vocab) {
    for (int i = 0; i < n; i++) ids[i] = (int32_t)((37 * i + 11) % (vocab - 8));
}

/* Runs interp_ref.py record; the arrays land in dir/<name>.npy. */
static const char *record_ref(const char *model_dir, const int32_t *ids, int n, const char *tag) {
    static char out[4][1024];
    static int next;
    char *o = out[next++ % 4];
    snprintf(o, sizeof out[0], "%s", tu_tmp(tag));
    assert_int_equal(tu_system("%s %s record %s %s --ids %s", tu_python(), ref_py(), model_dir, o,
                               ids_csv(ids, n)), 0);
    return o;
}

static const char *join(const char *dir, const char *name) {
    static char buf[4][2048];
    static int next;
    char *b = buf[next++ % 4];
    snprintf(b, sizeof buf[0], "%s/%s", dir, name);
    return b;
}

/* ------------------------------------------------------------ selections */

static void test_index_set(void **state) {
    (void)state;
    int out[16], n = -1;
    assert_int_equal(loupe_parse_index_set("0,2-4", 6, out, &n), LOUPE_OK);
    assert_int_equal(n, 4);
    assert_int_equal(out[0], 0);
    assert_int_equal(out[1], 2);
    assert_int_equal(out[3], 4);
    assert_int_equal(loupe_parse_index_set("3, 1-2,2", 6, out, &n), LOUPE_OK);
    assert_int_equal(n, 3);
    assert_int_equal(out[0], 1);
    assert_int_equal(out[2], 3);
    assert_int_equal(loupe_parse_index_set("all", 5, out, &n), LOUPE_OK);
    assert_int_equal(n, 5);
    assert_int_equal(loupe_parse_index_set(NULL, 3, out, &n), LOUPE_OK);
    assert_int_equal(n, 3);
    const char *bad[] = {"6", "4-2", "1,,2", "a", "1-", "-1", "1;2", "2-9"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (loupe_parse_index_set(bad[i], 6, out, &n) != LOUPE_ERR_ARG)
            fail_msg("'%s' accepted", bad[i]);
    assert_non_null(strstr(loupe_last_error(), "2-9")); /* names the bad item */

    int *pairs = NULL;
    assert_int_equal(loupe_parse_heads("0.1,2.0-2,0.1", 4, 4, &pairs, &n), LOUPE_OK);
    assert_int_equal(n, 4);
    int want[] = {0, 1, 2, 0, 2, 1, 2, 2};
    for (int i = 0; i < 8; i++) assert_int_equal(pairs[i], want[i]);
    free(pairs);
    assert_int_equal(loupe_parse_heads("4.0", 4, 4, &pairs, &n), LOUPE_ERR_ARG);
    assert_int_equal(loupe_parse_heads("1", 4, 4, &pairs, &n), LOUPE_ERR_ARG);
    assert_int_equal(loupe_parse_heads("1.4", 4, 4, &pairs, &n), LOUPE_ERR_ARG);
}

static void test_display_text(void **state) {
    (void)state;
    struct {
        const char *in;
        size_t n;
        const char *want;
    } cases[] = {{"abc", 3, "abc"},           {"\xc3\xa9t\xc3\xa9", 5, "\xc3\xa9t\xc3\xa9"},
                 {"\xff", 1, "\\xFF"},        {"a\xc3", 2, "a\\xC3"},
                 {"\xe2\x82", 2, "\\xE2\\x82"}, {"\xc0\xaf", 2, "\\xC0\\xAF"}, /* overlong */
                 {"\xed\xa0\x80", 3, "\\xED\\xA0\\x80"},                     /* surrogate */
                 {"x\0y", 3, "x\\x00y"},      {"\xf0\x9f\x99\x82", 4, "\xf0\x9f\x99\x82"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *s = lp_display_text(cases[i].in, cases[i].n);
        assert_non_null(s);
        assert_string_equal(s, cases[i].want);
        free(s);
    }
}

/* ------------------------------------------------------------ .npy */

static void test_npy_with_numpy(void **state) {
    (void)state;
    /* loupe -> numpy: values i/4 - 3 are exact in float32 */
    float x[2 * 3 * 4];
    for (int i = 0; i < 24; i++) x[i] = (float)i / 4.0f - 3.0f;
    int64_t shape[3] = {2, 3, 4};
    KEEP(p, tu_tmp("interp-a.npy"));
    assert_int_equal(loupe_npy_write(p, x, 3, shape), LOUPE_OK);
    assert_int_equal(tu_system("%s -c \"import numpy as np; a=np.load('%s'); "
                               "assert a.dtype==np.float32 and a.shape==(2,3,4), (a.dtype,a.shape); "
                               "assert a.flags.c_contiguous; "
                               "assert (a==np.arange(24,dtype=np.float64).reshape(2,3,4)/4-3).all(); "
                               "h=open('%s','rb').read(10); n=h[8]|h[9]<<8; assert (10+n)%%64==0\"",
                               tu_python(), p, p), 0);
    /* 1-D and 0-D headers */
    KEEP(p1, tu_tmp("interp-b.npy"));
    int64_t s1 = 5;
    assert_int_equal(loupe_npy_write(p1, x, 1, &s1), LOUPE_OK);
    assert_int_equal(tu_system("%s -c \"import numpy as np; a=np.load('%s'); "
                               "assert a.shape==(5,) and a[4]==-2.0\"", tu_python(), p1), 0);
    /* numpy -> loupe: float64, float16, big-endian float32, Fortran 1-D */
    KEEP(dir, tu_tmp(""));
    assert_int_equal(tu_system("%s -c \"import numpy as np; v=np.arange(24).reshape(2,3,4)/4-3; "
                               "np.save('%s/interp-f8.npy', v); "
                               "np.save('%s/interp-f2.npy', v.astype(np.float16)); "
                               "np.save('%s/interp-be.npy', v.astype('>f4')); "
                               "np.save('%s/interp-fo.npy', np.asfortranarray(v[0,0]))\"",
                               tu_python(), dir, dir, dir, dir), 0);
    const char *names[] = {"interp-f8.npy", "interp-f2.npy", "interp-be.npy"};
    for (int k = 0; k < 3; k++) {
        float *y = load_npy(join(dir, names[k]), 3, shape);
        assert_close(max_abs_diff(x, y, 24), 0, 0, names[k]);
        free(y);
    }
    int64_t s4 = 4;
    float *y = load_npy(join(dir, "interp-fo.npy"), 1, &s4);
    assert_close(max_abs_diff(x, y, 4), 0, 0, "fortran 1-D");
    free(y);
    /* a 2-D Fortran array and a non-float dtype are refused with a message */
    assert_int_equal(tu_system("%s -c \"import numpy as np; "
                               "np.save('%s/interp-f2d.npy', np.asfortranarray(np.ones((2,3)))); "
                               "np.save('%s/interp-i4.npy', np.ones(3, np.int32))\"",
                               tu_python(), dir, dir), 0);
    float *z = NULL;
    int nd;
    int64_t sh[LOUPE_NPY_MAX_DIMS];
    assert_int_equal(loupe_npy_read(join(dir, "interp-f2d.npy"), &z, &nd, sh), LOUPE_ERR_UNSUPPORTED);
    assert_int_equal(loupe_npy_read(join(dir, "interp-i4.npy"), &z, &nd, sh), LOUPE_ERR_UNSUPPORTED);
    assert_non_null(strstr(loupe_last_error(), "interp-i4.npy"));
    /* truncated data */
    assert_int_equal(tu_system("head -c 100 %s > %s/interp-short.npy", p, dir), 0);
    assert_int_equal(loupe_npy_read(join(dir, "interp-short.npy"), &z, &nd, sh), LOUPE_ERR_FORMAT);
    assert_null(z);
}

/* ------------------------------------------------------------ PNG */

static void test_png_pixels(void **state) {
    (void)state;
    /* 2 x 3 grid of 4x4 maps; map (r, c) is constant (r*3 + c) / 5 */
    enum { R = 2, C = 3, T = 4, S = 3 };
    float maps[R * C * T * T];
    for (int i = 0; i < R * C; i++)
        for (int j = 0; j < T * T; j++) maps[i * T * T + j] = (float)i / 5.0f;
    maps[0 * T * T + 1 * T + 2] = 1.0f; /* one dark pixel in map (0,0) at q=1, k=2 */
    KEEP(png, tu_tmp("interp-grid.png"));
    KEEP(npy, tu_tmp("interp-grid.npy"));
    assert_int_equal(loupe_heatmap_png(png, maps, R, C, T, S), LOUPE_OK);
    assert_int_equal(tu_system("%s %s png %s %s", tu_python(), ref_py(), png, npy), 0);
    int64_t shape[3] = {2 + R * (T * S + 2), 2 + C * (T * S + 2), 3};
    float *img = load_npy(npy, 3, shape);
    int W = (int)shape[1];
#define PX(y, x, ch) img[((size_t)(y) * W + (x)) * 3 + (ch)]
    /* gaps are grey (176) */
    for (int ch = 0; ch < 3; ch++) {
        assert_close(PX(0, 0, ch), 176, 0, "corner gap");
        assert_close(PX(2 + T * S, 5, ch), 176, 0, "row gap");
        assert_close(PX(5, 2 + T * S + 1, ch), 176, 0, "column gap");
    }
    /* value 0 is white, 1 is the ramp's end (50, 0, 60) */
    assert_close(PX(2, 2, 0), 255, 0, "zero");
    int y = 2 + 1 * S + 1, x = 2 + 2 * S + 2; /* inside (q=1, k=2) of cell (0,0) */
    assert_close(PX(y, x, 0), 50, 0, "one.r");
    assert_close(PX(y, x, 1), 0, 0, "one.g");
    assert_close(PX(y, x, 2), 60, 0, "one.b");
    /* cells get darker with their value: red+green+blue decreases */
    double prev = 1e9;
    for (int i = 1; i < R * C; i++) {
        int r = i / C, c = i % C;
        int yy = 2 + r * (T * S + 2) + 1, xx = 2 + c * (T * S + 2) + 1;
        double sum = PX(yy, xx, 0) + PX(yy, xx, 1) + PX(yy, xx, 2);
        if (!(sum < prev)) fail_msg("cell %d not darker than the one before (%g >= %g)", i, sum, prev);
        prev = sum;
    }
#undef PX
    free(img);
    assert_int_equal(loupe_heatmap_png("/nonexistent-dir/x.png", maps, R, C, T, S), LOUPE_ERR_IO);
}

/* ------------------------------------------------------------ math */

/* Causal, row-normalised patterns from a fixed formula. */
static void make_patterns(float *p, int L, int H, int T) {
    for (int l = 0; l < L; l++)
        for (int h = 0; h < H; h++)
            for (int q = 0; q < T; q++) {
                float *row = p + (((size_t)l * H + h) * T + q) * T;
                double sum = 0;
                for (int k = 0; k < T; k++) {
                    row[k] = k <= q ? (float)(1.0 + ((l * 7 + h * 5 + q * 3 + k * 11) % 13)) : 0.0f;
                    sum += row[k];
                }
                for (int k = 0; k < T; k++) row[k] = (float)(row[k] / sum);
            }
}

static void test_rollout_vs_numpy(void **state) {
    (void)state;
    enum { L = 3, H = 2, T = 7 };
    float p[L * H * T * T], r[T * T];
    make_patterns(p, L, H, T);
    int64_t shape[4] = {L, H, T, T};
    KEEP(src, tu_tmp("interp-pat.npy"));
    KEEP(dst, tu_tmp("interp-roll.npy"));
    assert_int_equal(loupe_npy_write(src, p, 4, shape), LOUPE_OK);
    assert_int_equal(tu_system("%s %s rollout %s %s", tu_python(), ref_py(), src, dst), 0);
    assert_int_equal(loupe_attention_rollout(p, L, H, T, r), LOUPE_OK);
    float *want = load_npy(dst, 2, shape + 2);
    assert_close(max_abs_diff(r, want, T * T), 0, 1e-6, "rollout");
    free(want);
    /* rows of a rollout are distributions and it stays causal */
    for (int q = 0; q < T; q++) {
        double s = 0;
        for (int k = 0; k < T; k++) {
            s += r[q * T + k];
            if (k > q) assert_close(r[q * T + k], 0, 0, "causal");
        }
        assert_close(s, 1, 1e-6, "row sum");
    }
}

static void test_divergences(void **state) {
    (void)state;
    float p[4] = {0.5f, 0.5f, 0, 0}, q[4] = {0, 0, 0.25f, 0.75f}, u[4] = {0.25f, 0.25f, 0.25f, 0.25f};
    assert_close(lp_js_divergence(p, p, 4), 0, 1e-12, "JS(p,p)");
    assert_close(lp_js_divergence(p, q, 4), 1, 1e-12, "JS disjoint = 1 bit");
    /* JS(p, u) = H(m) - (H(p) + H(u)) / 2 in bits, m = (3/8, 3/8, 1/8, 1/8) */
    double hm = -2 * (0.375 * log2(0.375)) - 2 * (0.125 * log2(0.125));
    assert_close(lp_js_divergence(p, u, 4), hm - (1.0 + 2.0) / 2, 1e-7, "JS(p,u)");
    float lp[2] = {logf(0.5f), logf(0.5f)}, lq[2] = {logf(0.25f), logf(0.75f)};
    assert_close(lp_kl_logp(lp, lq, 2), 0.5 * log(2.0) + 0.5 * log(0.5 / 0.75), 1e-7, "KL");
    float x[6] = {1, 5, 3, 5, -1, 4};
    int32_t idx[3];
    lp_top_k(x, 6, 3, idx);
    assert_int_equal(idx[0], 1);
    assert_int_equal(idx[1], 3);
    assert_int_equal(idx[2], 5);
}

/* ------------------------------------------------------------ writers */

static void test_attention_documents(void **state) {
    (void)state;
    enum { T = 3 };
    char t0[] = "<b>\"x\"", t1[] = "</script><p>", t2[] = "\n";
    char *texts[T] = {t0, t1, t2};
    int32_t ids[T] = {5, 6, 7};
    int layers[2] = {1, 3}, heads[1] = {2};
    float data[2 * 1 * T * T];
    make_patterns(data, 2, 1, T);
    loupe_attention a = {{T, ids, texts}, 2, 1, layers, heads, data};
    char *json = loupe_attention_json(&a, "unit");
    assert_non_null(json);
    cJSON *root = cJSON_Parse(json);
    assert_non_null(root);
    assert_string_equal(cJSON_GetObjectItem(root, "format")->valuestring, "loupe-attention");
    assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(root, "tokens"), 1)->valuestring, t1);
    assert_int_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(root, "layers"), 1)->valueint, 3);
    cJSON *att = cJSON_GetObjectItem(root, "attention");
    assert_int_equal(cJSON_GetArraySize(att), 2);
    for (int l = 0; l < 2; l++)
        for (int q = 0; q < T; q++)
            for (int k = 0; k < T; k++) {
                cJSON *v = cJSON_GetArrayItem(
                    cJSON_GetArrayItem(cJSON_GetArrayItem(cJSON_GetArrayItem(att, l), 0), q), k);
                /* %.9g round-trips float32 exactly */
                assert_true((float)v->valuedouble == data[(l * T + q) * T + k]);
            }
    cJSON_Delete(root);
    free(json);
    char *html = loupe_attention_html(&a, "unit");
    assert_non_null(html);
    /* token text never closes the data script or opens markup */
    assert_null(strstr(html, "</script><p>"));
    assert_null(strstr(html, "<b>\"x\""));
    assert_non_null(strstr(html, "&lt;/script&gt;&lt;p&gt;"));
    const char *d = strstr(html, "id=\"loupe-data\">");
    assert_non_null(d);
    const char *end = strstr(d, "</script>");
    assert_non_null(end);
    char *data_json = strndup(d + 16, (size_t)(end - d - 16));
    cJSON *r2 = cJSON_Parse(data_json);
    assert_non_null(r2);
    assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(r2, "tokens"), 1)->valuestring, t1);
    cJSON_Delete(r2);
    free(data_json);
    free(html);
    assert_int_equal(loupe_attention_write(&a, NULL, tu_tmp("interp-x.txt")), LOUPE_ERR_ARG);
}

/* ------------------------------------------------------------ captures */

/* Checks loupe's patterns for ids against the numpy reference. */
static void check_attention(const char *dir_arg, const int32_t *ids, int T, const char *tag) {
    KEEP(model_dir, dir_arg);
    loupe_model *m = open_model(model_dir);
    loupe_session *s = new_session(m);
    loupe_attention *a = NULL;
    if (loupe_attention_capture(s, ids, T, NULL, 0, NULL, 0, &a) != LOUPE_OK)
        fail_msg("%s", loupe_last_error());
    const char *dir = record_ref(model_dir, ids, T, tag);
    int64_t shape[4] = {a->n_layers, a->n_heads, T, T};
    float *want = load_npy(join(dir, "pattern.npy"), 4, shape);
    size_t n = (size_t)a->n_layers * a->n_heads * T * T;
    double err = max_abs_diff(a->data, want, n);
    if (err > 1e-5) fail_msg("%s: attention differs from numpy by %g", tag, err);
    for (size_t r = 0; r < n / T; r++) { /* every row: causal, sums to 1 */
        int q = (int)(r % T);
        double sum = 0;
        for (int k = 0; k < T; k++) {
            float v = a->data[r * T + k];
            if (k > q && v != 0.0f) fail_msg("%s: row %zu has weight %g on future key %d", tag, r, v, k);
            sum += v;
        }
        assert_close(sum, 1, 1e-5, "row sum");
    }
    free(want);
    /* a selection is the same numbers */
    int ls[1] = {a->n_layers - 1}, hs[2] = {a->n_heads - 1, 0};
    loupe_attention *b = NULL;
    assert_int_equal(loupe_attention_capture(s, ids, T, ls, 1, hs, 2, &b), LOUPE_OK);
    size_t TT = (size_t)T * T;
    for (int j = 0; j < 2; j++)
        assert_close(max_abs_diff(b->data + j * TT,
                                  a->data + ((size_t)ls[0] * a->n_heads + hs[j]) * TT, TT), 0, 0,
                     "selection");
    loupe_attention_free(b);
    loupe_attention_free(a);
    loupe_session_free(s);
    loupe_model_close(m);
}

static void test_attention_slm(void **state) {
    (void)state;
    loupe_model *m = open_model(tu_shared(SLM));
    int32_t ids[64];
    int T = slm_prompt(m, ids, 64);
    loupe_model_close(m);
    check_attention(tu_shared(SLM), ids, T, "interp-ref-slm");
}

static void test_attention_synthetic(void **state) {
    (void)state;
    const char *variants[] = {"gpt2-tanh", "llama-gqa", "qwen2-bias"};
    for (int i = 0; i < 3; i++) {
        int32_t ids[24];
        synth_ids(ids, 24, 300);
        char tag[64];
        snprintf(tag, sizeof tag, "interp-ref-%s", variants[i]);
        check_attention(synth(variants[i]), ids, 24, tag);
    }
}

/* A capture filled over two loupe_eval calls (pos0 > 0 in the second). */
static void test_capture_two_calls(void **state) {
    (void)state;
    const char *dir = synth("llama-gqa");
    int32_t ids[20];
    synth_ids(ids, 20, 300);
    loupe_model *m = open_model(dir);
    loupe_session *s = new_session(m);
    loupe_capture *pat = NULL, *res = NULL;
    assert_int_equal(loupe_capture_new(s, "attn.pattern.*", 20, &pat), LOUPE_OK);
    assert_int_equal(loupe_capture_new(s, "resid_post.*", 20, &res), LOUPE_OK);
    assert_int_equal(loupe_eval(s, ids, 7, NULL, 0), LOUPE_OK);
    assert_int_equal(loupe_eval(s, ids + 7, 13, NULL, 0), LOUPE_OK);
    assert_int_equal(pat->n_rows, 20);
    assert_int_equal(pat->dropped, 0);
    const char *ref = record_ref(dir, ids, 20, "interp-ref-two-calls");
    int64_t ps[4] = {pat->n_layers, pat->n_heads, 20, 20}, rs[3] = {res->n_layers, 20, 0};
    loupe_model_info info;
    loupe_model_get_info(m, &info);
    rs[2] = info.dim;
    float *wp = load_npy(join(ref, "pattern.npy"), 4, ps);
    float *wr = load_npy(join(ref, "resid_post.npy"), 3, rs);
    double ep = max_abs_diff(pat->data, wp, (size_t)ps[0] * ps[1] * 400);
    double er = max_abs_diff(res->data, wr, (size_t)rs[0] * rs[1] * rs[2]);
    if (ep > 1e-5 || er > 1e-4) fail_msg("pattern err %g, resid err %g", ep, er);
    free(wp), free(wr);
    loupe_session_clear_hooks(s);
    loupe_capture_free(pat);
    loupe_capture_free(res);
    loupe_session_free(s);
    loupe_model_close(m);
}

/* sum over heads of z_h W_O[h] + b equals attn_out (W_O from the checkpoint). */
static void check_z_wo(const char *model_dir, const int32_t *ids, int T, const char *tag) {
    KEEP(dir, model_dir);
    loupe_model *m = open_model(dir);
    loupe_session *s = new_session(m);
    loupe_model_info info;
    loupe_model_get_info(m, &info);
    loupe_capture *z = NULL, *o = NULL;
    assert_int_equal(loupe_capture_new(s, "attn.z.*", T, &z), LOUPE_OK);
    assert_int_equal(loupe_capture_new(s, "attn_out.*", T, &o), LOUPE_OK);
    assert_int_equal(loupe_eval(s, ids, T, NULL, 0), LOUPE_OK);
    for (int l = 0; l < info.n_layers; l++) {
        char name[64];
        snprintf(name, sizeof name, "%s-z%d.npy", tag, l);
        KEEP(zp, tu_tmp(name));
        snprintf(name, sizeof name, "%s-o%d.npy", tag, l);
        KEEP(op, tu_tmp(name));
        int64_t zs[2] = {T, z->width}, os[2] = {T, o->width};
        assert_int_equal(loupe_npy_write(zp, loupe_capture_row(z, l, 0, 0), 2, zs), LOUPE_OK);
        assert_int_equal(loupe_npy_write(op, loupe_capture_row(o, l, 0, 0), 2, os), LOUPE_OK);
        if (tu_system("%s %s check-wo %s %s %s --layer %d --tol 1e-4", tu_python(), ref_py(), dir,
                      zp, op, l) != 0)
            fail_msg("%s layer %d: z W_O + b != attn_out", tag, l);
    }
    loupe_session_clear_hooks(s);
    loupe_capture_free(z);
    loupe_capture_free(o);
    loupe_session_free(s);
    loupe_model_close(m);
}

static void test_z_wo_equals_attn_out(void **state) {
    (void)state;
    loupe_model *m = open_model(tu_shared(SLM));
    int32_t ids[64];
    int T = slm_prompt(m, ids, 64);
    loupe_model_close(m);
    check_z_wo(tu_shared(SLM), ids, T, "interp-zwo-slm");
    int32_t sid[16];
    synth_ids(sid, 16, 300);
    check_z_wo(synth("llama-gqa"), sid, 16, "interp-zwo-llama");
}

/* ------------------------------------------------------------ logit lens */

static void test_lens(void **state) {
    (void)state;
    KEEP(dir, tu_shared(SLM));
    loupe_model *m = open_model(dir);
    loupe_session *s = new_session(m);
    loupe_model_info info;
    loupe_model_get_info(m, &info);
    int32_t ids[64];
    int T = slm_prompt(m, ids, 64), V = info.n_vocab, L = info.n_layers;
    float *lens = NULL;
    assert_int_equal(loupe_lens_logprobs(s, ids, T, &lens), LOUPE_OK);
    /* last layer's lens = the model's own log-softmax output */
    float *logits = malloc((size_t)T * V * sizeof *logits);
    loupe_session_reset(s);
    assert_int_equal(loupe_eval(s, ids, T, logits, 1), LOUPE_OK);
    for (int t = 0; t < T; t++) lp_log_softmax(logits + (size_t)t * V, V, logits + (size_t)t * V);
    double e = max_abs_diff(lens + (size_t)(L - 1) * T * V, logits, (size_t)T * V);
    if (e > 1e-5) fail_msg("last-layer lens differs from the output by %g", e);
    /* every layer against numpy */
    const char *ref = record_ref(dir, ids, T, "interp-ref-lens");
    int64_t shape[3] = {L, T, V};
    float *want = load_npy(join(ref, "lens.npy"), 3, shape);
    e = max_abs_diff(lens, want, (size_t)L * T * V);
    if (e > 1e-4) fail_msg("lens differs from numpy by %g", e);
    /* top-k table agrees with the distributions */
    loupe_lens *lt = NULL;
    assert_int_equal(loupe_lens_run(s, ids, T, 3, &lt), LOUPE_OK);
    for (int l = 0; l < L; l++)
        for (int t = 0; t < T; t++) {
            const float *row = want + ((size_t)l * T + t) * V;
            size_t at = ((size_t)l * T + t) * 3;
            for (int j = 0; j < 3; j++) {
                assert_close(lt->top_probs[at + j], exp(row[lt->top_ids[at + j]]), 1e-4, "top prob");
                if (j) assert_true(lt->top_probs[at + j] <= lt->top_probs[at + j - 1]);
            }
            for (int v = 0; v < V; v++) /* nothing outside the top-3 beats the third */
                if (v != lt->top_ids[at] && v != lt->top_ids[at + 1] && v != lt->top_ids[at + 2])
                    assert_true(exp(row[v]) <= lt->top_probs[at + 2] + 1e-4);
        }
    char *json = loupe_lens_json(lt, "slm");
    cJSON *root = cJSON_Parse(json);
    assert_non_null(root);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(root, "top_ids")), L);
    cJSON_Delete(root);
    free(json);
    loupe_lens_free(lt);
    free(want), free(logits), free(lens);
    loupe_session_free(s);
    loupe_model_close(m);
}

/* ------------------------------------------------------------ ablation */

typedef struct {
    int dim;
    const float *bias; /* (dim) */
} set_rows;

static int set_rows_hook(void *user, const loupe_activation *a) {
    const set_rows *sr = user;
    for (int t = 0; t < a->T; t++) memcpy(a->data + (size_t)t * a->width, sr->bias, (size_t)sr->dim * 4);
    return 0;
}

/* Zero-ablating every head of layer L (z = 0) leaves attn_out.L = b_O at
 * every position: the same log-prob as replacing attn_out.L by b_O. */
static void check_zero_ablation(const char *dir_arg, const int32_t *ids, int n, int m_tgt,
                                int layer, int bias_free) {
    KEEP(dir, dir_arg);
    loupe_model *m = open_model(dir);
    loupe_session *s = new_session(m);
    loupe_model_info info;
    loupe_model_get_info(m, &info);
    int *pairs = malloc((size_t)info.n_heads * 2 * sizeof *pairs);
    for (int h = 0; h < info.n_heads; h++) pairs[2 * h] = layer, pairs[2 * h + 1] = h;
    double clean, ablated, replaced;
    assert_int_equal(loupe_ablate_heads(s, ids, n, ids + n, m_tgt, pairs, info.n_heads, 0,
                                        &clean, &ablated), LOUPE_OK);
    KEEP(bp, tu_tmp("interp-bias.npy"));
    assert_int_equal(tu_system("%s %s bias %s %s --layer %d", tu_python(), ref_py(), dir, bp, layer), 0);
    int64_t dim = info.dim;
    float *bias = load_npy(bp, 1, &dim);
    if (bias_free) /* nothing to add back: ablation = skipping the attention block */
        for (int i = 0; i < info.dim; i++) assert_close(bias[i], 0, 0, "o_proj has no bias");
    set_rows sr = {info.dim, bias};
    char name[32];
    snprintf(name, sizeof name, "attn_out.%d", layer);
    assert_int_equal(loupe_session_add_hook(s, name, set_rows_hook, &sr), LOUPE_OK);
    assert_int_equal(loupe_target_logprob(s, ids, n, ids + n, m_tgt, &replaced, NULL), LOUPE_OK);
    loupe_session_clear_hooks(s);
    assert_close(ablated, replaced, 1e-5, "zero ablation vs attn_out := b_O");
    if (fabs(clean - ablated) < 1e-4) fail_msg("ablating layer %d changed nothing (%g)", layer, clean);
    /* mean ablation keeps something of each head: differs from zero ablation */
    double mclean, mean_ablated;
    assert_int_equal(loupe_ablate_heads(s, ids, n, ids + n, m_tgt, pairs, info.n_heads, 1,
                                        &mclean, &mean_ablated), LOUPE_OK);
    assert_close(mclean, clean, 0, "clean run repeats");
    assert_true(fabs(mean_ablated - ablated) > 1e-6);
    free(bias), free(pairs);
    loupe_session_free(s);
    loupe_model_close(m);
}

static void test_zero_ablation(void **state) {
    (void)state;
    loupe_model *m = open_model(tu_shared(SLM));
    int32_t ids[64];
    assert_true(slm_prompt(m, ids, 64) > 13);
    loupe_model_close(m);
    /* "Q: What is " -> "SL": an uncertain target, so heads matter */
    check_zero_ablation(tu_shared(SLM), ids, 11, 2, 1, 0);
    int32_t sid[12];
    synth_ids(sid, 12, 300);
    check_zero_ablation(synth("llama-gqa"), sid, 10, 2, 0, 1);
}

/* ------------------------------------------------------------ patching */

static void test_patching(void **state) {
    (void)state;
    loupe_model *m = open_model(tu_shared(SLM));
    loupe_session *s = new_session(m);
    int32_t ids[64], corrupt[64];
    assert_true(slm_prompt(m, ids, 64) > 12);
    int n = 11; /* "Q: What is " -> "S" (log p about -7.7: far from certain) */
    /* a prompt patched into itself: every entry is the clean log-prob */
    loupe_patching *p = NULL;
    assert_int_equal(loupe_patch_resid(s, ids, ids, n, ids + n, 1, &p), LOUPE_OK);
    assert_close(p->clean_logprob, p->corrupt_logprob, 0, "same prompt");
    for (int i = 0; i < p->n_layers * n; i++) assert_close(p->logprob[i], p->clean_logprob, 1e-6, "self patch");
    loupe_patching_free(p);
    /* corrupt one token: patching its resid_pre.0 (= its embedding) restores
     * the clean run exactly; the other positions of layer 0 change nothing */
    memcpy(corrupt, ids, sizeof ids);
    int at = 4;
    corrupt[at] = ids[at] == 1 ? 2 : 1;
    assert_int_equal(loupe_patch_resid(s, ids, corrupt, n, ids + n, 1, &p), LOUPE_OK);
    assert_true(fabs(p->clean_logprob - p->corrupt_logprob) > 1e-4);
    assert_close(p->logprob[at], p->clean_logprob, 1e-5, "patched embedding");
    for (int i = 0; i < n; i++)
        if (i != at) assert_close(p->logprob[i], p->corrupt_logprob, 1e-5, "other positions");
    char *json = loupe_patching_json(p, "slm");
    assert_non_null(json);
    free(json);
    loupe_patching_free(p);
    loupe_session_free(s);
    loupe_model_close(m);
}

/* ------------------------------------------------------------ attribution */

static void check_attribution(const char *dir_arg, const int32_t *ids, int n, int m_tgt,
                              int keep_first) {
    KEEP(dir, dir_arg);
    loupe_model *m = open_model(dir);
    loupe_session *s = new_session(m);
    const int32_t *tgt = ids + n;
    loupe_attr_params ap = {LOUPE_ATTR_OCCLUSION, 0, 0};
    loupe_attribution *a = NULL;
    int64_t shape = n;
    /* occlusion */
    assert_int_equal(loupe_attribute(s, ids, n, tgt, m_tgt, &ap, &a), LOUPE_OK);
    KEEP(out, tu_tmp("interp-attr.npy"));
    assert_int_equal(tu_system("%s %s occlusion %s %s --ids %s --target %s %s", tu_python(), ref_py(),
                               dir, out, ids_csv(ids, n), ids_csv(tgt, m_tgt),
                               keep_first ? "--keep-first" : ""), 0);
    float *want = load_npy(out, 1, &shape);
    double e = max_abs_diff(a->scores, want, (size_t)n);
    if (e > 2e-4) fail_msg("occlusion differs from numpy by %g", e);
    free(want);
    loupe_attribution_free(a);
    /* exact Shapley (samples >= n!) */
    ap.method = LOUPE_ATTR_SHAPLEY;
    ap.samples = 1000000;
    assert_int_equal(loupe_attribute(s, ids, n, tgt, m_tgt, &ap, &a), LOUPE_OK);
    assert_true(a->exact);
    assert_int_equal(tu_system("%s %s shapley %s %s --ids %s --target %s %s", tu_python(), ref_py(),
                               dir, out, ids_csv(ids, n), ids_csv(tgt, m_tgt),
                               keep_first ? "--keep-first" : ""), 0);
    want = load_npy(out, 1, &shape);
    e = max_abs_diff(a->scores, want, (size_t)n);
    if (e > 2e-4) fail_msg("Shapley differs from numpy by %g", e);
    free(want);
    double sum = 0;
    for (int i = 0; i < n; i++) sum += a->scores[i];
    assert_close(sum, a->logprob - a->empty_logprob, 1e-4, "efficiency");
    loupe_attribution_free(a);
    /* sampled Shapley: efficiency holds for every sample; the seed decides */
    ap.samples = 3;
    loupe_attribution *b = NULL, *c = NULL;
    assert_int_equal(loupe_attribute(s, ids, n, tgt, m_tgt, &ap, &b), LOUPE_OK);
    assert_int_equal(loupe_attribute(s, ids, n, tgt, m_tgt, &ap, &c), LOUPE_OK);
    assert_false(b->exact);
    assert_int_equal(b->samples, 3);
    sum = 0;
    for (int i = 0; i < n; i++) {
        sum += b->scores[i];
        assert_close(b->scores[i], c->scores[i], 0, "same seed, same values");
    }
    assert_close(sum, b->logprob - b->empty_logprob, 1e-4, "sampled efficiency");
    loupe_attribution_free(b);
    loupe_attribution_free(c);
    loupe_session_free(s);
    loupe_model_close(m);
}

static void test_attribution(void **state) {
    (void)state;
    loupe_model *m = open_model(tu_shared(SLM));
    int32_t ids[64];
    int T = slm_prompt(m, ids, 64);
    loupe_model_close(m);
    /* the last 6 prompt tokens (6! = 720 orders) and 2 target tokens */
    check_attribution(tu_shared(SLM), ids + T - 8, 6, 2, 0);
    /* a Llama model with BOS kept out of the game */
    const char *dir = synth("llama-gqa");
    loupe_model *lm = open_model(dir);
    loupe_model_info info;
    loupe_model_get_info(lm, &info);
    loupe_model_close(lm);
    int32_t sid[8];
    synth_ids(sid, 8, 300);
    sid[0] = info.bos_id;
    check_attribution(dir, sid, 6, 2, 1);
}

static void test_rollout_attribution(void **state) {
    (void)state;
    KEEP(dir, tu_shared(SLM));
    loupe_model *m = open_model(dir);
    loupe_session *s = new_session(m);
    int32_t ids[64];
    int T = slm_prompt(m, ids, 64), n = T - 2;
    loupe_attr_params ap = {LOUPE_ATTR_ROLLOUT, 0, 0};
    loupe_attribution *a = NULL;
    assert_int_equal(loupe_attribute(s, ids, n, ids + n, 2, &ap, &a), LOUPE_OK);
    /* numpy: patterns of prompt + target[:-1], rollout, rows n-1 and n */
    const char *ref = record_ref(dir, ids, n + 1, "interp-ref-rollout");
    KEEP(rp, tu_tmp("interp-rollout.npy"));
    assert_int_equal(tu_system("%s %s rollout %s %s", tu_python(), ref_py(), join(ref, "pattern.npy"),
                               rp), 0);
    int64_t shape[2] = {n + 1, n + 1};
    float *R = load_npy(rp, 2, shape);
    for (int i = 0; i < n; i++)
        assert_close(a->scores[i], 0.5 * (R[(n - 1) * (n + 1) + i] + R[n * (n + 1) + i]), 1e-5,
                     "rollout score");
    free(R);
    char *html = loupe_attribution_html(a, "slm");
    assert_non_null(strstr(html, "rollout"));
    free(html);
    loupe_attribution_free(a);
    loupe_session_free(s);
    loupe_model_close(m);
}

/* ------------------------------------------------------------ steering */

static void test_steering(void **state) {
    (void)state;
    KEEP(dir, tu_shared(SLM));
    loupe_model *m = open_model(dir);
    loupe_session *s = new_session(m);
    loupe_model_info info;
    loupe_model_get_info(m, &info);
    int32_t ids[64];
    int T = slm_prompt(m, ids, 64), L = info.n_layers, D = info.dim, V = info.n_vocab;
    /* vector from A (first 5 tokens) to B (the rest) = mean difference */
    float *vec = malloc((size_t)D * sizeof *vec);
    assert_int_equal(loupe_steering_vector(s, L - 1, ids, 5, ids + 5, T - 5, vec), LOUPE_OK);
    const char *ra = record_ref(dir, ids, 5, "interp-ref-steer-a");
    int64_t sa[3] = {L, 5, D};
    float *rpa = load_npy(join(ra, "resid_post.npy"), 3, sa);
    const char *rb = record_ref(dir, ids + 5, T - 5, "interp-ref-steer-b");
    int64_t sb[3] = {L, T - 5, D};
    float *rpb = load_npy(join(rb, "resid_post.npy"), 3, sb);
    for (int i = 0; i < D; i++) {
        double ma = 0, mb = 0;
        for (int t = 0; t < 5; t++) ma += rpa[((size_t)(L - 1) * 5 + t) * D + i] / 5.0;
        for (int t = 0; t < T - 5; t++) mb += rpb[((size_t)(L - 1) * (T - 5) + t) * D + i] / (T - 5);
        assert_close(vec[i], mb - ma, 1e-4, "steering vector");
    }
    /* steering the last layer by s*v: logits = unembed(resid_post + s*v) */
    loupe_steering *st = NULL;
    float *logits = malloc((size_t)T * V * sizeof *logits), *want = malloc((size_t)T * V * sizeof *want);
    loupe_session_reset(s);
    assert_int_equal(loupe_steering_add(s, L - 1, vec, 2.5f, &st), LOUPE_OK);
    assert_int_equal(loupe_eval(s, ids, T, logits, 1), LOUPE_OK);
    loupe_session_clear_hooks(s);
    loupe_steering_free(st);
    const char *r = record_ref(dir, ids, T, "interp-ref-steer");
    int64_t sr[3] = {L, T, D};
    float *rp = load_npy(join(r, "resid_post.npy"), 3, sr);
    float *shifted = rp + (size_t)(L - 1) * T * D;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < D; i++) shifted[(size_t)t * D + i] += 2.5f * vec[i];
    assert_int_equal(loupe_unembed(s, shifted, T, want), LOUPE_OK);
    double e = max_abs_diff(logits, want, (size_t)T * V);
    if (e > 1e-3) fail_msg("steered logits differ by %g", e);
    /* and the steering did change them */
    float *plain = malloc((size_t)T * V * sizeof *plain);
    loupe_session_reset(s);
    assert_int_equal(loupe_eval(s, ids, T, plain, 1), LOUPE_OK);
    assert_true(max_abs_diff(plain, logits, (size_t)T * V) > 1e-2);
    free(plain), free(rp), free(rpa), free(rpb), free(vec), free(logits), free(want);
    loupe_session_free(s);
    loupe_model_close(m);
}

/* ------------------------------------------------------------ compare */

static void test_compare(void **state) {
    (void)state;
    const char *da = synth("gpt2-tanh"), *db = synth("gpt2-erf-untied");
    loupe_model *ma = open_model(da), *mb = open_model(db);
    loupe_session *sa = new_session(ma), *sb = new_session(mb);
    int32_t ids[16];
    synth_ids(ids, 16, 300);
    loupe_comparison *c = NULL;
    /* a model against itself: zero everywhere */
    assert_int_equal(loupe_compare(sa, sa, ids, 16, &c), LOUPE_OK);
    for (int l = 0; l < c->n_layers; l++) {
        assert_close(c->attn_js[l], 0, 1e-9, "JS self");
        assert_close(c->lens_kl[l], 0, 1e-9, "KL self");
    }
    loupe_comparison_free(c);
    assert_int_equal(loupe_compare(sa, sb, ids, 16, &c), LOUPE_OK);
    KEEP(out, tu_tmp("interp-compare.npy"));
    assert_int_equal(tu_system("%s %s compare %s %s %s --ids %s", tu_python(), ref_py(), da, db, out,
                               ids_csv(ids, 16)), 0);
    int64_t shape[2] = {2, c->n_layers};
    float *want = load_npy(out, 2, shape);
    for (int l = 0; l < c->n_layers; l++) {
        assert_close(c->attn_js[l], want[l], 1e-4, "JS");
        assert_close(c->lens_kl[l], want[c->n_layers + l], 1e-3 * (1 + want[c->n_layers + l]), "KL");
        assert_true(c->attn_js[l] > 1e-3);
    }
    char *json = loupe_comparison_json(c, "a", "b");
    assert_non_null(json);
    free(json);
    free(want);
    loupe_comparison_free(c);
    loupe_session_free(sa);
    loupe_session_free(sb);
    loupe_model_close(ma);
    loupe_model_close(mb);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_index_set),
        cmocka_unit_test(test_display_text),
        cmocka_unit_test(test_npy_with_numpy),
        cmocka_unit_test(test_png_pixels),
        cmocka_unit_test(test_rollout_vs_numpy),
        cmocka_unit_test(test_divergences),
        cmocka_unit_test(test_attention_documents),
        cmocka_unit_test(test_attention_slm),
        cmocka_unit_test(test_attention_synthetic),
        cmocka_unit_test(test_capture_two_calls),
        cmocka_unit_test(test_z_wo_equals_attn_out),
        cmocka_unit_test(test_lens),
        cmocka_unit_test(test_zero_ablation),
        cmocka_unit_test(test_patching),
        cmocka_unit_test(test_attribution),
        cmocka_unit_test(test_rollout_attribution),
        cmocka_unit_test(test_steering),
        cmocka_unit_test(test_compare),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
