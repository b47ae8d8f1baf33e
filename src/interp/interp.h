/*
 * interp.h — shared internals of src/interp: a growable string, escaping,
 * number formatting, a seeded RNG and small math used by several methods.
 * The public side is include/loupe_interp.h.
 */
#ifndef LOUPE_INTERP_INTERNAL_H
#define LOUPE_INTERP_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "loupe_interp.h"

/* ------------------------------------------------------------ strings */

/* A growable NUL-terminated string. After an allocation failure `failed`
 * is set and further appends do nothing, so callers check once at the end. */
typedef struct {
    char *s;
    size_t len, cap;
    int failed;
} lp_sb;

void lp_sb_put(lp_sb *b, const char *s, size_t n);
void lp_sb_puts(lp_sb *b, const char *s);
void lp_sb_printf(lp_sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Text with & < > " ' escaped for HTML text and attribute values. */
void lp_sb_html(lp_sb *b, const char *s);
/* A token for display: HTML-escaped, with \n \t \r written as such and,
 * if show_space, spaces as U+2423 (a visible open box). */
void lp_sb_html_token(lp_sb *b, const char *s, int show_space);
/* JSON text made safe inside an HTML <script> element: '<', '>' and '&'
 * (which only occur inside JSON strings) become \u003c, \u003e, \u0026. */
void lp_sb_json_for_script(lp_sb *b, const char *json);
/* A float with enough digits to read back the same float32 ("%.9g"), or
 * with `digits` significant digits; non-finite values become null. */
void lp_sb_float(lp_sb *b, float x, int digits);
/* "[x0,x1,...]" of n floats with stride 1. */
void lp_sb_float_array(lp_sb *b, const float *x, int n, int digits);
/* Returns the string (caller frees) or NULL if an append failed. */
char *lp_sb_finish(lp_sb *b);

/* Display text of raw token bytes: valid UTF-8 kept, other bytes "\xNN".
 * Returns a malloc'd string (NULL on OOM). */
char *lp_display_text(const char *bytes, size_t n);

/* Lower-case extension of path without the dot ("" if none). */
const char *lp_path_ext(const char *path, char *buf, size_t cap);

/* ------------------------------------------------------------ cJSON glue */

struct cJSON;
/* Array of n ints / token texts as cJSON (NULL on OOM). */
struct cJSON *lp_json_ints(const int32_t *x, int n);
struct cJSON *lp_json_int_array(const int *x, int n);
struct cJSON *lp_json_strings(char *const *s, int n);
/* Nested array of floats of the given shape (ndim >= 1), formatted with
 * `digits` significant digits (0 = exact float32), as raw JSON. */
struct cJSON *lp_json_floats(const float *x, int ndim, const int *shape, int digits);
/* [0, 1, ..., n-1] */
struct cJSON *lp_json_range(int n);
/* Adds item under key (object) or at the end (array); on failure deletes
 * item and returns 0, so a chain of `ok = ok && lp_json_add(...)` leaks
 * nothing (a NULL item also fails). */
int lp_json_add(struct cJSON *obj, const char *key, struct cJSON *item);
int lp_json_push(struct cJSON *arr, struct cJSON *item);
/* The common head of every document: format, version, model (title). */
struct cJSON *lp_json_doc(const char *format, const char *title);
/* A double that is null when not finite. */
struct cJSON *lp_json_number(double x);
/* Prints and deletes root; NULL on OOM. */
char *lp_json_finish(struct cJSON *root);

/* ------------------------------------------------------------ HTML */

/* Shared page head (inline CSS, title) and foot. */
void lp_html_begin(lp_sb *b, const char *title, const char *heading);
void lp_html_end(lp_sb *b);
/* CSS background colour for a value in [-1, 1]: red positive, blue negative. */
void lp_html_signed_colour(lp_sb *b, float v);

/* ------------------------------------------------------------ math */

/* splitmix64: seeded, reproducible across platforms. */
uint64_t lp_rng_next(uint64_t *state);
/* Uniform integer in [0, n). */
int lp_rng_below(uint64_t *state, int n);

/* out (n) = log_softmax(x (n)) computed in double. */
void lp_log_softmax(const float *x, int n, float *out);
/* Indices of the k largest values of x (n), best first (ties: lower index). */
void lp_top_k(const float *x, int n, int k, int32_t *idx);
/* Jensen-Shannon divergence in bits of two distributions of n. */
double lp_js_divergence(const float *p, const float *q, int n);
/* KL(P || Q) in nats from two log-distributions of n. */
double lp_kl_logp(const float *logp, const float *logq, int n);

/* ------------------------------------------------------------ run helpers */

/* Number of layers / heads / width of a session's model (session.h free). */
typedef struct {
    int n_layers, n_heads, dim, n_vocab, head_dim, bos_id;
} lp_shape;
void lp_session_shape(const loupe_session *s, lp_shape *out);

/* Runs ids once from position 0 and returns a capture of resid_post.*
 * (the session's hooks are cleared). */
loupe_status lp_lens_capture(loupe_session *s, const int32_t *ids, int T, loupe_capture **out);
/* logp (T, V) = log_softmax(unembed(resid_post.layer)) from such a capture. */
loupe_status lp_lens_layer(loupe_session *s, const loupe_capture *c, int layer, int T,
                           float *logp);

#endif
