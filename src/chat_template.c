/*
 * chat_template.c — a small Jinja2 interpreter for chat templates.
 *
 * Pipeline: lexer (template text -> tokens, with whitespace control applied
 * the way Jinja's lexer does it under trim_blocks + lstrip_blocks) -> parser
 * (tokens -> statement and expression trees) -> evaluator (trees + variables
 * -> text). Everything one render allocates lives in one arena, freed at
 * the end; errors longjmp back to the entry point, so the deep recursion of
 * parser and evaluator needs no error plumbing and nothing leaks. The jump
 * never crosses code outside this file.
 */
#include "chat_template.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "model.h"

/* Bounds that turn a hostile or broken template into an error, not a hang
 * or an exhausted machine. */
#define JT_MAX_OUT ((size_t)64 << 20)    /* bytes of output */
#define JT_MAX_ARENA ((size_t)256 << 20) /* bytes of working memory */
#define JT_MAX_STEPS 20000000L           /* statements + expressions run */
#define JT_MAX_DEPTH 200                 /* expression nesting, macro calls */
#define JT_MAX_RANGE 1000000             /* items range() may make */
#define JT_MAX_FRAMES 2000               /* nested evaluations (C stack) */

/* =============================================================== values */

typedef enum { J_UNDEF, J_NONE, J_BOOL, J_INT, J_FLOAT, J_STR, J_LIST, J_DICT, J_FUNC } jtype;

typedef struct {
    const char *p;
    size_t n;
} jstr;

typedef struct jlist jlist;
typedef struct jdict jdict;
typedef struct jfunc jfunc;

/* A template value. J_UNDEF keeps the missing name in u.s for messages. */
typedef struct {
    jtype t;
    int tuple; /* J_LIST: a tuple (only changes how it prints) */
    union {
        int b;
        int64_t i;
        double f;
        jstr s;
        jlist *l;
        jdict *d;
        jfunc *fn;
    } u;
} jv;

struct jlist {
    int n;
    jv *v; /* (n) */
};

struct jdict {
    int n, cap;
    int ns;  /* made by namespace(): attributes may be assigned */
    jstr *k; /* (cap) keys, insertion order */
    jv *v;   /* (cap) */
};

struct stmt;
struct jfunc {
    int id;                  /* FN_* */
    jv self;                 /* bound object of a method */
    const struct stmt *macro; /* FN_MACRO */
};

enum {
    FN_NAMESPACE, FN_RAISE, FN_STRFTIME, FN_RANGE, FN_DICT, FN_MACRO,
    /* str methods */
    FN_STRIP, FN_LSTRIP, FN_RSTRIP, FN_STARTSWITH, FN_ENDSWITH, FN_SPLIT,
    FN_REPLACE, FN_UPPER, FN_LOWER, FN_TITLE, FN_CAPITALIZE, FN_FIND,
    FN_COUNT, FN_JOIN, FN_SPLITLINES,
    /* dict methods */
    FN_ITEMS, FN_KEYS, FN_VALUES, FN_GET
};

static const struct {
    const char *name;
    int id;
} jt_str_methods[] = {
    {"strip", FN_STRIP},     {"lstrip", FN_LSTRIP},         {"rstrip", FN_RSTRIP},
    {"startswith", FN_STARTSWITH}, {"endswith", FN_ENDSWITH}, {"split", FN_SPLIT},
    {"replace", FN_REPLACE}, {"upper", FN_UPPER},           {"lower", FN_LOWER},
    {"title", FN_TITLE},     {"capitalize", FN_CAPITALIZE}, {"find", FN_FIND},
    {"count", FN_COUNT},     {"join", FN_JOIN},             {"splitlines", FN_SPLITLINES}},
  jt_dict_methods[] = {
    {"items", FN_ITEMS}, {"keys", FN_KEYS}, {"values", FN_VALUES}, {"get", FN_GET}};

/* ============================================================= context */

typedef struct jt_block {
    struct jt_block *next;
    size_t used, cap;
} jt_block; /* data follows the header, 16-byte aligned */

#define JT_BLOCK_HDR ((sizeof(jt_block) + 15) & ~(size_t)15)

typedef struct scope scope;

typedef struct {
    jmp_buf fail;
    loupe_status st;
    char msg[640];
    jt_block *blocks;
    size_t arena_total;
    char *out; /* malloc'd output */
    size_t n_out, cap_out;
    long steps;
    int depth;  /* macro calls */
    int frames; /* eval + exec_stmt recursion */
    int line; /* line being run, for messages */
    scope *root;
} jt;

static _Noreturn __attribute__((format(printf, 4, 5))) void
jt_fail(jt *c, loupe_status st, int line, const char *fmt, ...) {
    char m[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    /* messages end up in JSON: never leave a truncated UTF-8 character */
    size_t n = strlen(m), k = n;
    while (k > 0 && ((unsigned char)m[k - 1] & 0xc0) == 0x80) k--;
    if (k > 0 && (unsigned char)m[k - 1] >= 0xc0) {
        unsigned char lead = (unsigned char)m[k - 1];
        size_t want = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2;
        if (n - (k - 1) < want) m[k - 1] = 0;
    }
    snprintf(c->msg, sizeof c->msg, "chat template line %d: %s", line, m);
    c->st = st;
    longjmp(c->fail, 1);
}

static void *jt_alloc(jt *c, size_t n) {
    n = (n + 15) & ~(size_t)15;
    jt_block *b = c->blocks;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        if (c->arena_total + cap > JT_MAX_ARENA)
            jt_fail(c, LOUPE_ERR_NOMEM, c->line, "template needs more than %zu MB of memory",
                    JT_MAX_ARENA >> 20);
        b = malloc(JT_BLOCK_HDR + cap);
        if (!b) jt_fail(c, LOUPE_ERR_NOMEM, c->line, "out of memory");
        b->next = c->blocks;
        b->used = 0;
        b->cap = cap;
        c->blocks = b;
        c->arena_total += cap;
    }
    void *p = (char *)b + JT_BLOCK_HDR + b->used;
    b->used += n;
    memset(p, 0, n);
    return p;
}

static void jt_free(jt *c) {
    while (c->blocks) {
        jt_block *n = c->blocks->next;
        free(c->blocks);
        c->blocks = n;
    }
    free(c->out);
    free(c);
}

static void jt_step(jt *c) {
    if (++c->steps > JT_MAX_STEPS)
        jt_fail(c, LOUPE_ERR_NOMEM, c->line, "template runs more than %ld steps", JT_MAX_STEPS);
}

/* Growable arrays: a power-of-two capacity is implied by the count. */
static void *jt_grow(jt *c, void *v, int n, size_t elem) {
    if (n == 0 || (n & (n - 1)) == 0) {
        size_t cap = n ? 2 * (size_t)n : 4;
        void *nv = jt_alloc(c, cap * elem);
        if (n) memcpy(nv, v, (size_t)n * elem);
        return nv;
    }
    return v;
}

/* String builder in the arena. */
typedef struct {
    jt *c;
    char *p;
    size_t n, cap;
} sb;

static void sb_put(sb *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = 2 * b->cap + n + 64;
        char *np = jt_alloc(b->c, cap);
        if (b->n) memcpy(np, b->p, b->n);
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_puts(sb *b, const char *s) { sb_put(b, s, strlen(s)); }

static jstr sb_str(sb *b) {
    if (!b->p) sb_put(b, "", 0);
    return (jstr){b->p, b->n};
}

static void out_put(jt *c, const char *s, size_t n) {
    if (c->n_out + n + 1 > c->cap_out) {
        if (c->n_out + n > JT_MAX_OUT)
            jt_fail(c, LOUPE_ERR_NOMEM, c->line, "output longer than %zu MB", JT_MAX_OUT >> 20);
        size_t cap = 2 * c->cap_out + n + 256;
        char *np = realloc(c->out, cap);
        if (!np) jt_fail(c, LOUPE_ERR_NOMEM, c->line, "out of memory");
        c->out = np;
        c->cap_out = cap;
    }
    memcpy(c->out + c->n_out, s, n);
    c->n_out += n;
}

/* Takes what was written since mark as an arena string (captures). */
static jstr out_take(jt *c, size_t mark) {
    size_t n = c->n_out - mark;
    char *p = jt_alloc(c, n + 1);
    if (n) memcpy(p, c->out + mark, n);
    c->n_out = mark;
    return (jstr){p, n};
}

/* ---------------------------------------------------- value constructors */

static jv v_undef(jstr name) { return (jv){.t = J_UNDEF, .u.s = name}; }
static jv v_none(void) { return (jv){.t = J_NONE}; }
static jv v_bool(int b) { return (jv){.t = J_BOOL, .u.b = !!b}; }
static jv v_int(int64_t i) { return (jv){.t = J_INT, .u.i = i}; }
static jv v_float(double f) { return (jv){.t = J_FLOAT, .u.f = f}; }
static jv v_str(jstr s) { return (jv){.t = J_STR, .u.s = s}; }
static jstr js(const char *s) { return (jstr){s, strlen(s)}; }
static jv v_cstr(const char *s) { return v_str(js(s)); }

static jv v_list(jt *c, int n) {
    jlist *l = jt_alloc(c, sizeof *l);
    l->n = n;
    l->v = n ? jt_alloc(c, (size_t)n * sizeof(jv)) : NULL;
    return (jv){.t = J_LIST, .u.l = l};
}

static jv v_dict(jt *c) {
    jdict *d = jt_alloc(c, sizeof *d);
    return (jv){.t = J_DICT, .u.d = d};
}

static jv v_func(jt *c, int id, jv self) {
    jfunc *f = jt_alloc(c, sizeof *f);
    f->id = id;
    f->self = self;
    return (jv){.t = J_FUNC, .u.fn = f};
}

static int jstr_eq(jstr a, jstr b) { return a.n == b.n && memcmp(a.p, b.p, a.n) == 0; }
static int jstr_is(jstr a, const char *s) { return jstr_eq(a, js(s)); }

static jstr jstr_dup(jt *c, const char *p, size_t n) {
    char *d = jt_alloc(c, n + 1);
    if (n) memcpy(d, p, n);
    return (jstr){d, n};
}

static jv *dict_find(const jdict *d, jstr k) {
    for (int i = 0; i < d->n; i++)
        if (jstr_eq(d->k[i], k)) return &d->v[i];
    return NULL;
}

static void dict_set(jt *c, jdict *d, jstr k, jv v) {
    jv *old = dict_find(d, k);
    if (old) {
        *old = v;
        return;
    }
    if (d->n == d->cap) {
        int cap = d->cap ? 2 * d->cap : 8;
        jstr *nk = jt_alloc(c, (size_t)cap * sizeof *nk);
        jv *nv = jt_alloc(c, (size_t)cap * sizeof *nv);
        if (d->n) {
            memcpy(nk, d->k, (size_t)d->n * sizeof *nk);
            memcpy(nv, d->v, (size_t)d->n * sizeof *nv);
        }
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = k;
    d->v[d->n++] = v;
}

/* =============================================================== scopes */

/* Variables of one frame. Jinja's rules: `if` shares its frame, each for
 * iteration and each macro call gets a child frame, so `set` inside a loop
 * does not leak out (hence namespace()). */
struct scope {
    scope *parent;
    jdict vars;
};

static scope *scope_new(jt *c, scope *parent) {
    scope *s = jt_alloc(c, sizeof *s);
    s->parent = parent;
    return s;
}

static jv scope_get(const scope *s, jstr name) {
    for (; s; s = s->parent) {
        jv *v = dict_find(&s->vars, name);
        if (v) return *v;
    }
    return v_undef(name);
}

/* ================================================================ UTF-8 */

/* Decodes one code point; invalid bytes decode as themselves, length 1. */
static uint32_t u8_dec(const char *p, size_t n, size_t *len) {
    const unsigned char *s = (const unsigned char *)p;
    uint32_t c0 = s[0];
    int k = c0 < 0x80 ? 1 : (c0 >> 5) == 6 ? 2 : (c0 >> 4) == 14 ? 3 : (c0 >> 3) == 30 ? 4 : 0;
    if (k == 0 || (size_t)k > n) {
        *len = 1;
        return c0;
    }
    uint32_t cp = k == 1 ? c0 : k == 2 ? (c0 & 0x1f) : k == 3 ? (c0 & 0x0f) : (c0 & 0x07);
    for (int i = 1; i < k; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            *len = 1;
            return c0;
        }
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    *len = (size_t)k;
    return cp;
}

static size_t u8_enc(uint32_t cp, char *o) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Byte offsets of the code points of s: (n_cp + 1), last = s.n. */
static size_t *u8_offsets(jt *c, jstr s, int64_t *n_cp) {
    size_t *off = jt_alloc(c, (s.n + 1) * sizeof *off);
    int64_t k = 0;
    for (size_t i = 0; i < s.n;) {
        size_t len;
        u8_dec(s.p + i, s.n - i, &len);
        off[k++] = i;
        i += len;
    }
    off[k] = s.n;
    *n_cp = k;
    return off;
}

static int64_t u8_len(jstr s) {
    int64_t k = 0;
    for (size_t i = 0; i < s.n; i++) k += ((unsigned char)s.p[i] & 0xc0) != 0x80;
    return k;
}

/* Python's str.isspace() code points. */
static int py_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 ||
           cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

static int jt_space(char ch) {
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v';
}

/* ================================================================ lexer */

typedef enum {
    K_TEXT, K_VAR, K_VAR_END, K_BLOCK, K_BLOCK_END, K_NAME, K_STR, K_INT, K_FLOAT, K_OP, K_EOF
} kkind;

typedef struct {
    kkind k;
    int line;
    jstr s; /* text, name, operator, decoded string */
    int64_t i;
    double f;
} tok;

typedef struct {
    jt *c;
    const char *s;
    size_t len, pos;
    int line;
    tok *v; /* (n) */
    int n;
} lexer;

static tok *lx_emit(lexer *L, kkind k, int line, const char *p, size_t n) {
    L->v = jt_grow(L->c, L->v, L->n, sizeof(tok));
    tok *t = &L->v[L->n++];
    *t = (tok){.k = k, .line = line, .s = {p, n}};
    return t;
}

static void lx_advance(lexer *L, size_t to) {
    for (; L->pos < to; L->pos++)
        if (L->s[L->pos] == '\n') L->line++;
}

/* End of the text before a tag at q, after `-` stripping or lstrip_blocks. */
static size_t lx_text_end(const lexer *L, size_t q, char kind, char mod, int line_starting) {
    const char *s = L->s;
    size_t end = q;
    if (mod == '-') {
        while (end > L->pos && jt_space(s[end - 1])) end--;
        return end;
    }
    if (mod == '+' || kind == '{') return end;
    size_t l = end;
    while (l > L->pos && s[l - 1] != '\n') l--;
    if (l == L->pos && !line_starting) return end;
    for (size_t i = l; i < end; i++)
        if (!jt_space(s[i])) return end;
    return l;
}

static void lx_string(lexer *L) {
    jt *c = L->c;
    const char *s = L->s;
    char q = s[L->pos];
    int line = L->line;
    sb b = {c, NULL, 0, 0};
    size_t i = L->pos + 1;
    for (;;) {
        if (i >= L->len) jt_fail(c, LOUPE_ERR_FORMAT, line, "unterminated string literal");
        char ch = s[i];
        if (ch == q) break;
        if (ch != '\\' || i + 1 >= L->len) {
            sb_put(&b, &s[i++], 1);
            continue;
        }
        char e = s[i + 1];
        static const char esc_in[] = "\\'\"abfnrtv\n", esc_out[] = "\\'\"\a\b\f\n\r\t\v";
        const char *simple = e ? strchr(esc_in, e) : NULL;
        if (simple) { /* backslash-newline continues the line */
            if (e != '\n') sb_put(&b, &esc_out[simple - esc_in], 1);
            i += 2;
            continue;
        }
        int digits = e == 'x' ? 2 : e == 'u' ? 4 : e == 'U' ? 8 : 0;
        if (digits) {
            uint32_t cp = 0;
            for (int k = 0; k < digits; k++) {
                char h = i + 2 + k < L->len ? s[i + 2 + k] : 0;
                if (!isxdigit((unsigned char)h))
                    jt_fail(c, LOUPE_ERR_FORMAT, line, "bad \\%c escape in string literal", e);
                cp = cp * 16 + (uint32_t)(isdigit((unsigned char)h) ? h - '0' : (tolower(h) - 'a' + 10));
            }
            if (cp > 0x10ffff) jt_fail(c, LOUPE_ERR_FORMAT, line, "escape out of Unicode range");
            char o[4];
            sb_put(&b, o, u8_enc(cp, o));
            i += 2 + (size_t)digits;
            continue;
        }
        if (e >= '0' && e <= '7') {
            uint32_t cp = 0;
            size_t k = i + 1;
            for (int d = 0; d < 3 && k < L->len && s[k] >= '0' && s[k] <= '7'; d++, k++)
                cp = cp * 8 + (uint32_t)(s[k] - '0');
            char o[4];
            sb_put(&b, o, u8_enc(cp, o));
            i = k;
            continue;
        }
        sb_put(&b, &s[i], 2); /* unknown escapes stay as written */
        i += 2;
    }
    tok *t = lx_emit(L, K_STR, line, NULL, 0);
    t->s = sb_str(&b);
    lx_advance(L, i + 1);
}

static void lx_number(lexer *L) {
    const char *s = L->s;
    char buf[128];
    size_t i = L->pos, n = 0;
    int is_float = 0;
    for (; i < L->len && n < sizeof buf - 1; i++) {
        char ch = s[i];
        if (isdigit((unsigned char)ch)) buf[n++] = ch;
        else if (ch == '_' && i + 1 < L->len && isdigit((unsigned char)s[i + 1])) continue;
        else if (ch == '.' && !is_float && i + 1 < L->len && isdigit((unsigned char)s[i + 1])) {
            buf[n++] = ch;
            is_float = 1;
        } else if ((ch == 'e' || ch == 'E') && i + 1 < L->len &&
                   (isdigit((unsigned char)s[i + 1]) ||
                    ((s[i + 1] == '+' || s[i + 1] == '-') && i + 2 < L->len &&
                     isdigit((unsigned char)s[i + 2])))) {
            buf[n++] = ch;
            buf[n++] = s[++i];
            is_float = 1;
        } else break;
    }
    buf[n] = 0;
    tok *t = lx_emit(L, is_float ? K_FLOAT : K_INT, L->line, s + L->pos, i - L->pos);
    if (is_float) {
        t->f = strtod(buf, NULL);
    } else {
        errno = 0;
        long long v = strtoll(buf, NULL, 10);
        if (errno == ERANGE) jt_fail(L->c, LOUPE_ERR_UNSUPPORTED, L->line, "integer literal too large");
        t->i = v;
    }
    lx_advance(L, i);
}

static void lx_op(lexer *L, int *depth) {
    static const char *const two[] = {"//", "**", "==", "!=", "<=", ">="};
    const char *s = L->s + L->pos;
    size_t room = L->len - L->pos;
    for (size_t k = 0; k < sizeof two / sizeof two[0]; k++)
        if (room >= 2 && memcmp(s, two[k], 2) == 0) {
            lx_emit(L, K_OP, L->line, s, 2);
            lx_advance(L, L->pos + 2);
            return;
        }
    if (!strchr("+-*/%~|.,:()[]{}<>=", *s) || *s == 0) {
        size_t len;
        uint32_t cp = u8_dec(s, room, &len);
        if (cp >= 0x21 && cp < 0x7f)
            jt_fail(L->c, LOUPE_ERR_FORMAT, L->line, "unexpected character '%c' in tag", *s);
        jt_fail(L->c, LOUPE_ERR_FORMAT, L->line, "unexpected character U+%04X in tag", cp);
    }
    if (*s == '(' || *s == '[' || *s == '{') (*depth)++;
    if ((*s == ')' || *s == ']' || *s == '}') && *depth > 0) (*depth)--;
    lx_emit(L, K_OP, L->line, s, 1);
    lx_advance(L, L->pos + 1);
}

/* The inside of {{ }} or {% %}, up to its end marker. *strip: `-` before
 * the end; *keep: `+` before the end (no trim_blocks). */
static void lx_tag(lexer *L, char kind, int *strip, int *keep) {
    const char *s = L->s;
    int open_line = L->line, depth = 0;
    char close = kind == '{' ? '}' : '%';
    lx_emit(L, kind == '{' ? K_VAR : K_BLOCK, L->line, s + L->pos, 0);
    for (;;) {
        while (L->pos < L->len && jt_space(s[L->pos])) lx_advance(L, L->pos + 1);
        if (L->pos >= L->len)
            jt_fail(L->c, LOUPE_ERR_FORMAT, open_line, "tag is never closed (missing '%c}')", close);
        size_t p = L->pos;
        if (depth == 0) {
            char m = 0;
            if ((s[p] == '-' || (s[p] == '+' && kind == '%')) && p + 1 < L->len &&
                s[p + 1] == close)
                m = s[p++];
            if (s[p] == close && p + 1 < L->len && s[p + 1] == '}') {
                lx_emit(L, kind == '{' ? K_VAR_END : K_BLOCK_END, L->line, s + p, 0);
                lx_advance(L, p + 2);
                *strip = m == '-';
                *keep = m == '+';
                return;
            }
            p = L->pos;
        }
        char ch = s[p];
        if (isalpha((unsigned char)ch) || ch == '_') {
            size_t e = p;
            while (e < L->len && (isalnum((unsigned char)s[e]) || s[e] == '_')) e++;
            lx_emit(L, K_NAME, L->line, s + p, e - p);
            lx_advance(L, e);
        } else if (isdigit((unsigned char)ch)) {
            lx_number(L);
        } else if (ch == '\'' || ch == '"') {
            lx_string(L);
        } else {
            lx_op(L, &depth);
        }
    }
}

static void lx_comment(lexer *L, int *strip, int *keep) {
    const char *e = NULL;
    for (size_t i = L->pos; i + 1 < L->len; i++)
        if (L->s[i] == '#' && L->s[i + 1] == '}') {
            e = L->s + i;
            break;
        }
    if (!e) jt_fail(L->c, LOUPE_ERR_FORMAT, L->line, "comment is never closed (missing '#}')");
    size_t ep = (size_t)(e - L->s);
    *strip = ep > L->pos && L->s[ep - 1] == '-';
    *keep = ep > L->pos && L->s[ep - 1] == '+';
    lx_advance(L, ep + 2);
}

static void lex(jt *c, const char *s, size_t len, lexer *L) {
    *L = (lexer){c, s, len, 0, 1, NULL, 0};
    int line_starting = 1;
    while (L->pos < len) {
        size_t q = L->pos;
        while (q + 1 < len && !(s[q] == '{' && (s[q + 1] == '{' || s[q + 1] == '%' || s[q + 1] == '#')))
            q++;
        if (q + 1 >= len) {
            lx_emit(L, K_TEXT, L->line, s + L->pos, len - L->pos);
            lx_advance(L, len);
            break;
        }
        char kind = s[q + 1], mod = q + 2 < len ? s[q + 2] : 0;
        size_t end = lx_text_end(L, q, kind, mod, line_starting);
        if (end > L->pos) lx_emit(L, K_TEXT, L->line, s + L->pos, end - L->pos);
        lx_advance(L, q + 2 + (mod == '-' || mod == '+'));
        int strip = 0, keep = 0;
        if (kind == '#') lx_comment(L, &strip, &keep);
        else lx_tag(L, kind, &strip, &keep);
        if (strip) {
            size_t e = L->pos;
            while (e < len && jt_space(s[e])) e++;
            lx_advance(L, e);
        } else if (kind != '{' && !keep && L->pos < len && s[L->pos] == '\n') {
            lx_advance(L, L->pos + 1); /* trim_blocks */
        }
        line_starting = L->pos > 0 && s[L->pos - 1] == '\n';
    }
    lx_emit(L, K_EOF, L->line, "", 0);
}

/* =============================================================== syntax */

typedef enum {
    E_LIT, E_NAME, E_LIST, E_TUPLE, E_DICT, E_ATTR, E_ITEM, E_SLICE, E_CALL, E_FILTER,
    E_TEST, E_NOT, E_NEG, E_POS, E_BIN, E_CONCAT, E_AND, E_OR, E_CMP, E_COND
} ekind;

enum { OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD, OP_POW,
       OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IN, OP_NOTIN };

typedef struct expr expr;
typedef struct jargs jargs;
typedef jv (*filter_fn)(jt *c, jv val, jargs *a, int line);
typedef int (*test_fn)(jt *c, jv val, jargs *a, int line);

struct expr {
    ekind k;
    int line;
    int op;        /* E_BIN: OP_*; E_TEST: negated */
    jv lit;        /* E_LIT */
    jstr name;     /* E_NAME, E_ATTR, E_FILTER, E_TEST */
    expr *a, *b, *c; /* operands; E_COND: a = condition, b = then, c = else */
    expr **args;   /* (n_args) items, call/filter/test arguments, dict k,v,k,v…,
                      E_CMP operands after a, E_SLICE start/stop/step */
    int n_args;
    jstr *kw;      /* (n_kw) keyword argument names */
    expr **kwv;    /* (n_kw) */
    int n_kw;
    int *ops;      /* E_CMP: (n_args) operator before each operand */
    filter_fn ffn;
    test_fn tfn;
};

typedef enum {
    S_TEXT, S_OUT, S_IF, S_FOR, S_SET, S_SETBLOCK, S_BREAK, S_CONTINUE, S_MACRO,
    S_FILTERBLOCK, S_BLOCK
} skind;

typedef struct stmt stmt;

typedef struct {
    stmt **v; /* (n) */
    int n;
} body;

struct stmt {
    skind k;
    int line;
    jstr text;        /* S_TEXT */
    expr *e;          /* output, condition, iterable, value, filter chain */
    expr *cond;       /* S_FOR: inline `if` */
    jstr *targets;    /* (n_targets) S_FOR names; S_SET/S_SETBLOCK/S_MACRO name */
    int n_targets;
    jstr attr;        /* S_SET ns.attr: the attribute ("" for a plain name) */
    body body, orelse;
    jstr *params;     /* (n_params) S_MACRO */
    expr **defaults;  /* (n_params) NULL where none */
    int n_params;
};

/* ----------------------------------------------------- filter/test tables */

static filter_fn find_filter(jstr name);
static test_fn find_test(jstr name);

/* =============================================================== parser */

typedef struct {
    jt *c;
    tok *t;
    int i;
    int loop_depth;
    int depth;
} P;

static tok *pk(P *p) { return &p->t[p->i]; }
static tok *pk2(P *p) { return p->t[p->i].k == K_EOF ? &p->t[p->i] : &p->t[p->i + 1]; }
static tok *nx(P *p) {
    tok *t = &p->t[p->i];
    if (t->k != K_EOF) p->i++;
    return t;
}
static int t_op(const tok *t, const char *op) { return t->k == K_OP && jstr_is(t->s, op); }
static int t_name(const tok *t, const char *kw) { return t->k == K_NAME && jstr_is(t->s, kw); }

static const char *tok_desc(const tok *t, char *buf, size_t cap) {
    switch (t->k) {
    case K_EOF: return "end of template";
    case K_VAR_END: return "'}}'";
    case K_BLOCK_END: return "'%}'";
    case K_STR: return "a string";
    case K_TEXT: return "text";
    default: snprintf(buf, cap, "'%.*s'", (int)(t->s.n > 40 ? 40 : t->s.n), t->s.p); return buf;
    }
}

static _Noreturn void p_unexpected(P *p, const char *want) {
    char buf[64];
    tok *t = pk(p);
    jt_fail(p->c, LOUPE_ERR_FORMAT, t->line, "expected %s, found %s", want,
            tok_desc(t, buf, sizeof buf));
}

static void expect_op(P *p, const char *op) {
    if (!t_op(pk(p), op)) {
        char want[16];
        snprintf(want, sizeof want, "'%s'", op);
        p_unexpected(p, want);
    }
    nx(p);
}

static jstr expect_name(P *p) {
    if (pk(p)->k != K_NAME) p_unexpected(p, "a name");
    return nx(p)->s;
}

static void expect_block_end(P *p) {
    if (pk(p)->k != K_BLOCK_END) p_unexpected(p, "'%}'");
    nx(p);
}

static expr *enew(P *p, ekind k, int line) {
    expr *e = jt_alloc(p->c, sizeof *e);
    e->k = k;
    e->line = line;
    return e;
}

static void push_arg(P *p, expr *e, expr *a) {
    e->args = jt_grow(p->c, e->args, e->n_args, sizeof(expr *));
    e->args[e->n_args++] = a;
}

static expr *parse_expr(P *p);
static expr *parse_or(P *p);
static expr *parse_unary(P *p, int with_filter);
static expr *parse_primary(P *p);
static expr *parse_postfix(P *p, expr *e);

/* (args, name=value, …) into e->args / e->kw. */
static void parse_call_args(P *p, expr *e) {
    expect_op(p, "(");
    while (!t_op(pk(p), ")")) {
        if (pk(p)->k == K_NAME && t_op(pk2(p), "=")) {
            jstr k = nx(p)->s;
            nx(p);
            e->kw = jt_grow(p->c, e->kw, e->n_kw, sizeof(jstr));
            e->kwv = jt_grow(p->c, e->kwv, e->n_kw, sizeof(expr *));
            e->kw[e->n_kw] = k;
            e->kwv[e->n_kw++] = parse_expr(p);
        } else {
            if (t_op(pk(p), "*") || t_op(pk(p), "**"))
                jt_fail(p->c, LOUPE_ERR_UNSUPPORTED, pk(p)->line, "*args/**kwargs calls are not supported");
            if (e->n_kw) jt_fail(p->c, LOUPE_ERR_FORMAT, pk(p)->line, "positional argument after keyword argument");
            push_arg(p, e, parse_expr(p));
        }
        if (!t_op(pk(p), ",")) break;
        nx(p);
    }
    expect_op(p, ")");
}

/* Items up to a closing bracket: [a, b] (a, b) {k: v}. */
static expr *parse_seq(P *p, ekind k, const char *close, int line) {
    expr *e = enew(p, k, line);
    while (!t_op(pk(p), close)) {
        push_arg(p, e, parse_expr(p));
        if (k == E_DICT) {
            expect_op(p, ":");
            push_arg(p, e, parse_expr(p));
        }
        if (!t_op(pk(p), ",")) break;
        nx(p);
    }
    expect_op(p, close);
    return e;
}

static expr *parse_primary(P *p) {
    tok *t = nx(p);
    expr *e;
    switch (t->k) {
    case K_NAME:
        e = enew(p, E_LIT, t->line);
        if (jstr_is(t->s, "true") || jstr_is(t->s, "True")) e->lit = v_bool(1);
        else if (jstr_is(t->s, "false") || jstr_is(t->s, "False")) e->lit = v_bool(0);
        else if (jstr_is(t->s, "none") || jstr_is(t->s, "None")) e->lit = v_none();
        else {
            e->k = E_NAME;
            e->name = t->s;
        }
        return e;
    case K_STR: {
        sb b = {p->c, NULL, 0, 0};
        sb_put(&b, t->s.p, t->s.n);
        while (pk(p)->k == K_STR) { /* "a" "b" concatenates */
            tok *u = nx(p);
            sb_put(&b, u->s.p, u->s.n);
        }
        e = enew(p, E_LIT, t->line);
        e->lit = v_str(sb_str(&b));
        return e;
    }
    case K_INT: e = enew(p, E_LIT, t->line); e->lit = v_int(t->i); return e;
    case K_FLOAT: e = enew(p, E_LIT, t->line); e->lit = v_float(t->f); return e;
    default: break;
    }
    if (t_op(t, "(")) {
        if (t_op(pk(p), ")")) {
            nx(p);
            return enew(p, E_TUPLE, t->line);
        }
        e = parse_expr(p);
        if (!t_op(pk(p), ",")) {
            expect_op(p, ")");
            return e;
        }
        nx(p);
        expr *tu = parse_seq(p, E_TUPLE, ")", t->line);
        tu->args = jt_grow(p->c, tu->args, tu->n_args, sizeof(expr *));
        memmove(tu->args + 1, tu->args, (size_t)tu->n_args * sizeof(expr *));
        tu->args[0] = e;
        tu->n_args++;
        return tu;
    }
    if (t_op(t, "[")) return parse_seq(p, E_LIST, "]", t->line);
    if (t_op(t, "{")) return parse_seq(p, E_DICT, "}", t->line);
    p->i--;
    p_unexpected(p, "an expression");
}

static expr *parse_subscript(P *p, expr *obj) {
    tok *t = nx(p);
    if (t_op(t, ".")) {
        tok *n = nx(p);
        if (n->k == K_NAME) {
            expr *e = enew(p, E_ATTR, t->line);
            e->a = obj;
            e->name = n->s;
            return e;
        }
        if (n->k == K_INT) {
            expr *e = enew(p, E_ITEM, t->line), *k = enew(p, E_LIT, n->line);
            k->lit = v_int(n->i);
            e->a = obj;
            e->b = k;
            return e;
        }
        p->i--;
        p_unexpected(p, "an attribute name");
    }
    expr *start = NULL;
    if (!t_op(pk(p), ":")) start = parse_expr(p);
    if (!t_op(pk(p), ":")) {
        expect_op(p, "]");
        expr *e = enew(p, E_ITEM, t->line);
        e->a = obj;
        e->b = start;
        return e;
    }
    expr *e = enew(p, E_SLICE, t->line), *stop = NULL, *step = NULL;
    nx(p);
    if (!t_op(pk(p), ":") && !t_op(pk(p), "]")) stop = parse_expr(p);
    if (t_op(pk(p), ":")) {
        nx(p);
        if (!t_op(pk(p), "]")) step = parse_expr(p);
    }
    expect_op(p, "]");
    e->a = obj;
    push_arg(p, e, start);
    push_arg(p, e, stop);
    push_arg(p, e, step);
    return e;
}

static expr *parse_postfix(P *p, expr *e) {
    for (;;) {
        tok *t = pk(p);
        if (t_op(t, ".") || t_op(t, "[")) {
            e = parse_subscript(p, e);
        } else if (t_op(t, "(")) {
            expr *call = enew(p, E_CALL, t->line);
            call->a = e;
            parse_call_args(p, call);
            e = call;
        } else {
            return e;
        }
    }
}

static expr *parse_filter(P *p, expr *e) {
    tok *t = nx(p); /* '|' */
    expr *f = enew(p, E_FILTER, t->line);
    f->a = e;
    f->name = expect_name(p);
    f->ffn = find_filter(f->name); /* NULL: fails when run, as Jinja 3 does */
    if (t_op(pk(p), "(")) parse_call_args(p, f);
    return f;
}

static expr *parse_test(P *p, expr *e) {
    tok *t = nx(p); /* 'is' */
    expr *x = enew(p, E_TEST, t->line);
    x->a = e;
    if (t_name(pk(p), "not")) {
        nx(p);
        x->op = 1;
    }
    x->name = expect_name(p);
    x->tfn = find_test(x->name); /* NULL: fails when run */
    tok *n = pk(p);
    if (t_op(n, "(")) {
        parse_call_args(p, x);
    } else if ((n->k == K_NAME || n->k == K_STR || n->k == K_INT || n->k == K_FLOAT ||
                t_op(n, "[") || t_op(n, "{")) &&
               !t_name(n, "else") && !t_name(n, "or") && !t_name(n, "and")) {
        push_arg(p, x, parse_postfix(p, parse_primary(p)));
    }
    return x;
}

static expr *parse_filter_expr(P *p, expr *e) {
    for (;;) {
        tok *t = pk(p);
        if (t_op(t, "|")) e = parse_filter(p, e);
        else if (t_name(t, "is")) e = parse_test(p, e);
        else if (t_op(t, "(")) e = parse_postfix(p, e);
        else return e;
    }
}

static expr *parse_unary(P *p, int with_filter) {
    tok *t = pk(p);
    if (++p->depth > JT_MAX_DEPTH)
        jt_fail(p->c, LOUPE_ERR_UNSUPPORTED, t->line, "expression nested too deeply");
    expr *e;
    if (t_op(t, "-") || t_op(t, "+")) {
        nx(p);
        e = enew(p, t_op(t, "-") ? E_NEG : E_POS, t->line);
        e->a = parse_unary(p, 0);
    } else {
        e = parse_primary(p);
    }
    e = parse_postfix(p, e);
    if (with_filter) e = parse_filter_expr(p, e);
    p->depth--;
    return e;
}

static expr *bin(P *p, int op, expr *a, expr *b, int line) {
    expr *e = enew(p, E_BIN, line);
    e->op = op;
    e->a = a;
    e->b = b;
    return e;
}

static expr *parse_pow(P *p) {
    expr *e = parse_unary(p, 1);
    while (t_op(pk(p), "**")) {
        int line = nx(p)->line;
        e = bin(p, OP_POW, e, parse_unary(p, 1), line);
    }
    return e;
}

static expr *parse_math2(P *p) {
    expr *e = parse_pow(p);
    for (;;) {
        tok *t = pk(p);
        int op = t_op(t, "*") ? OP_MUL : t_op(t, "/") ? OP_DIV : t_op(t, "//") ? OP_FLOORDIV
               : t_op(t, "%") ? OP_MOD : -1;
        if (op < 0) return e;
        nx(p);
        e = bin(p, op, e, parse_pow(p), t->line);
    }
}

static expr *parse_concat(P *p) {
    expr *e = parse_math2(p);
    if (!t_op(pk(p), "~")) return e;
    expr *c = enew(p, E_CONCAT, pk(p)->line);
    push_arg(p, c, e);
    while (t_op(pk(p), "~")) {
        nx(p);
        push_arg(p, c, parse_math2(p));
    }
    return c;
}

static expr *parse_math1(P *p) {
    expr *e = parse_concat(p);
    for (;;) {
        tok *t = pk(p);
        int op = t_op(t, "+") ? OP_ADD : t_op(t, "-") ? OP_SUB : -1;
        if (op < 0) return e;
        nx(p);
        e = bin(p, op, e, parse_concat(p), t->line);
    }
}

static int cmp_op(P *p) {
    static const char *const ops[] = {"==", "!=", "<", "<=", ">", ">="};
    tok *t = pk(p);
    for (int k = 0; k < 6; k++)
        if (t_op(t, ops[k])) {
            nx(p);
            return OP_EQ + k;
        }
    if (t_name(t, "in")) {
        nx(p);
        return OP_IN;
    }
    if (t_name(t, "not") && t_name(pk2(p), "in")) {
        nx(p);
        nx(p);
        return OP_NOTIN;
    }
    return -1;
}

static expr *parse_compare(P *p) {
    int line = pk(p)->line;
    expr *e = parse_math1(p);
    int op = cmp_op(p);
    if (op < 0) return e;
    expr *c = enew(p, E_CMP, line);
    c->a = e;
    for (; op >= 0; op = cmp_op(p)) {
        c->ops = jt_grow(p->c, c->ops, c->n_args, sizeof(int));
        c->ops[c->n_args] = op;
        push_arg(p, c, parse_math1(p));
    }
    return c;
}

static expr *parse_not(P *p) {
    if (t_name(pk(p), "not")) {
        if (++p->depth > JT_MAX_DEPTH)
            jt_fail(p->c, LOUPE_ERR_UNSUPPORTED, pk(p)->line, "expression nested too deeply");
        expr *e = enew(p, E_NOT, nx(p)->line);
        e->a = parse_not(p);
        p->depth--;
        return e;
    }
    return parse_compare(p);
}

static expr *parse_and(P *p) {
    expr *e = parse_not(p);
    while (t_name(pk(p), "and")) {
        expr *x = enew(p, E_AND, nx(p)->line);
        x->a = e;
        x->b = parse_not(p);
        e = x;
    }
    return e;
}

static expr *parse_or(P *p) {
    expr *e = parse_and(p);
    while (t_name(pk(p), "or")) {
        expr *x = enew(p, E_OR, nx(p)->line);
        x->a = e;
        x->b = parse_and(p);
        e = x;
    }
    return e;
}

/* `a if cond else b` (else optional: undefined). */
static expr *parse_expr(P *p) {
    if (++p->depth > JT_MAX_DEPTH)
        jt_fail(p->c, LOUPE_ERR_UNSUPPORTED, pk(p)->line, "expression nested too deeply");
    expr *e = parse_or(p);
    while (t_name(pk(p), "if")) {
        expr *x = enew(p, E_COND, nx(p)->line);
        x->b = e;
        x->a = parse_or(p);
        if (t_name(pk(p), "else")) {
            nx(p);
            x->c = parse_expr(p);
        }
        e = x;
    }
    p->depth--;
    return e;
}

/* An expression or an unparenthesised tuple `a, b`. with_cond = 0 for the
 * heads of if/for, where `if` belongs to the statement. */
static expr *parse_tuple(P *p, int with_cond) {
    int line = pk(p)->line;
    expr *e = with_cond ? parse_expr(p) : parse_or(p);
    if (!t_op(pk(p), ",")) return e;
    expr *tu = enew(p, E_TUPLE, line);
    push_arg(p, tu, e);
    while (t_op(pk(p), ",")) {
        nx(p);
        tok *t = pk(p);
        if (t->k == K_VAR_END || t->k == K_BLOCK_END || t_op(t, ")") || t_name(t, "if")) break;
        push_arg(p, tu, with_cond ? parse_expr(p) : parse_or(p));
    }
    return tu;
}

/* ----------------------------------------------------------- statements */

static stmt *snew(P *p, skind k, int line) {
    stmt *s = jt_alloc(p->c, sizeof *s);
    s->k = k;
    s->line = line;
    return s;
}

static void push_stmt(P *p, body *b, stmt *s) {
    b->v = jt_grow(p->c, b->v, b->n, sizeof(stmt *));
    b->v[b->n++] = s;
}

static body parse_body(P *p, const char *const *ends, int n_ends, const char *opener, int open_line);

/* After the closing tag name was read: `{% endX %}`. */
static void expect_end(P *p, const char *name) {
    if (pk(p)->k != K_BLOCK) p_unexpected(p, name);
    nx(p);
    if (!t_name(pk(p), name)) {
        char want[32];
        snprintf(want, sizeof want, "'%s'", name);
        p_unexpected(p, want);
    }
    nx(p);
    expect_block_end(p);
}

static stmt *parse_if(P *p, int line) {
    static const char *const ends[] = {"elif", "else", "endif"};
    stmt *s = snew(p, S_IF, line);
    s->e = parse_tuple(p, 0);
    expect_block_end(p);
    s->body = parse_body(p, ends, 3, "if", line);
    nx(p); /* the {% of elif/else/endif */
    tok *t = nx(p);
    if (jstr_is(t->s, "elif")) {
        push_stmt(p, &s->orelse, parse_if(p, t->line));
    } else if (jstr_is(t->s, "else")) {
        expect_block_end(p);
        s->orelse = parse_body(p, ends + 2, 1, "if", line);
        expect_end(p, "endif");
    } else {
        expect_block_end(p);
    }
    return s;
}

static stmt *parse_for(P *p, int line) {
    static const char *const ends[] = {"else", "endfor"};
    stmt *s = snew(p, S_FOR, line);
    for (;;) {
        s->targets = jt_grow(p->c, s->targets, s->n_targets, sizeof(jstr));
        s->targets[s->n_targets++] = expect_name(p);
        if (!t_op(pk(p), ",")) break;
        nx(p);
    }
    if (!t_name(pk(p), "in")) p_unexpected(p, "'in'");
    nx(p);
    s->e = parse_tuple(p, 0);
    if (t_name(pk(p), "if")) {
        nx(p);
        s->cond = parse_expr(p);
    }
    if (t_name(pk(p), "recursive"))
        jt_fail(p->c, LOUPE_ERR_UNSUPPORTED, line, "recursive for loops are not supported");
    expect_block_end(p);
    p->loop_depth++;
    s->body = parse_body(p, ends, 2, "for", line);
    p->loop_depth--;
    nx(p);
    if (jstr_is(nx(p)->s, "else")) {
        expect_block_end(p);
        s->orelse = parse_body(p, ends + 1, 1, "for", line);
        expect_end(p, "endfor");
    } else {
        expect_block_end(p);
    }
    return s;
}

static stmt *parse_set(P *p, int line) {
    static const char *const ends[] = {"endset"};
    stmt *s = snew(p, S_SET, line);
    for (;;) {
        s->targets = jt_grow(p->c, s->targets, s->n_targets, sizeof(jstr));
        s->targets[s->n_targets++] = expect_name(p);
        if (!t_op(pk(p), ",")) break;
        nx(p);
    }
    if (s->n_targets == 1 && t_op(pk(p), ".")) {
        nx(p);
        s->attr = expect_name(p);
    }
    if (s->n_targets > 1 && !t_op(pk(p), "=")) p_unexpected(p, "'='");
    if (t_op(pk(p), "=")) {
        nx(p);
        s->e = parse_tuple(p, 1);
        expect_block_end(p);
        return s;
    }
    if (s->attr.n || pk(p)->k != K_BLOCK_END) p_unexpected(p, "'='");
    nx(p);
    s->k = S_SETBLOCK;
    s->body = parse_body(p, ends, 1, "set", line);
    expect_end(p, "endset");
    return s;
}

static stmt *parse_macro(P *p, int line) {
    static const char *const ends[] = {"endmacro"};
    stmt *s = snew(p, S_MACRO, line);
    s->targets = jt_alloc(p->c, sizeof(jstr));
    s->targets[0] = expect_name(p);
    s->n_targets = 1;
    expect_op(p, "(");
    while (!t_op(pk(p), ")")) {
        s->params = jt_grow(p->c, s->params, s->n_params, sizeof(jstr));
        s->defaults = jt_grow(p->c, s->defaults, s->n_params, sizeof(expr *));
        s->params[s->n_params] = expect_name(p);
        s->defaults[s->n_params] = NULL;
        if (t_op(pk(p), "=")) {
            nx(p);
            s->defaults[s->n_params] = parse_expr(p);
        }
        s->n_params++;
        if (!t_op(pk(p), ",")) break;
        nx(p);
    }
    expect_op(p, ")");
    expect_block_end(p);
    int saved = p->loop_depth;
    p->loop_depth = 0;
    s->body = parse_body(p, ends, 1, "macro", line);
    p->loop_depth = saved;
    expect_end(p, "endmacro");
    return s;
}

/* {% filter f(args) | g %}: the chain is built on a placeholder name that
 * the evaluator binds to the captured body. */
static stmt *parse_filter_block(P *p, int line) {
    static const char *const ends[] = {"endfilter"};
    stmt *s = snew(p, S_FILTERBLOCK, line);
    expr *e = enew(p, E_NAME, line);
    e->name = js("\x01body");
    p->i--; /* parse_filter consumes one token where '|' would be */
    for (;;) {
        e = parse_filter(p, e);
        if (!t_op(pk(p), "|")) break;
    }
    expect_block_end(p);
    s->e = e;
    s->body = parse_body(p, ends, 1, "filter", line);
    expect_end(p, "endfilter");
    return s;
}

static stmt *parse_stmt_inner(P *p);

static stmt *parse_stmt(P *p) {
    if (++p->depth > JT_MAX_DEPTH)
        jt_fail(p->c, LOUPE_ERR_UNSUPPORTED, pk(p)->line, "blocks nested too deeply");
    stmt *s = parse_stmt_inner(p);
    p->depth--;
    return s;
}

static stmt *parse_stmt_inner(P *p) {
    tok *t = pk(p);
    int line = t->line;
    if (t->k != K_NAME) p_unexpected(p, "a tag name");
    nx(p);
    jstr n = t->s;
    if (jstr_is(n, "if")) return parse_if(p, line);
    if (jstr_is(n, "for")) return parse_for(p, line);
    if (jstr_is(n, "set")) return parse_set(p, line);
    if (jstr_is(n, "macro")) return parse_macro(p, line);
    if (jstr_is(n, "filter")) return parse_filter_block(p, line);
    if (jstr_is(n, "break") || jstr_is(n, "continue")) {
        if (p->loop_depth == 0)
            jt_fail(p->c, LOUPE_ERR_FORMAT, line, "'%.*s' outside a for loop", (int)n.n, n.p);
        expect_block_end(p);
        return snew(p, jstr_is(n, "break") ? S_BREAK : S_CONTINUE, line);
    }
    if (jstr_is(n, "generation")) { /* transformers' assistant-mask marker */
        static const char *const ends[] = {"endgeneration"};
        expect_block_end(p);
        stmt *s = snew(p, S_BLOCK, line);
        s->body = parse_body(p, ends, 1, "generation", line);
        expect_end(p, "endgeneration");
        return s;
    }
    static const char *const known[] = {"include", "import", "from", "extends", "block", "call",
                                        "raw", "with", "do", "autoescape", "trans"};
    for (size_t k = 0; k < sizeof known / sizeof known[0]; k++)
        if (jstr_is(n, known[k]))
            jt_fail(p->c, LOUPE_ERR_UNSUPPORTED, line, "tag '%s' is not supported", known[k]);
    jt_fail(p->c, LOUPE_ERR_FORMAT, line, "unexpected tag '%.*s'", (int)(n.n > 40 ? 40 : n.n), n.p);
}

/* Statements until a {% name %} with name in ends (left unconsumed). */
static body parse_body(P *p, const char *const *ends, int n_ends, const char *opener, int open_line) {
    body b = {NULL, 0};
    for (;;) {
        tok *t = pk(p);
        if (t->k == K_EOF) {
            if (n_ends)
                jt_fail(p->c, LOUPE_ERR_FORMAT, open_line, "'%s' is never closed (missing {%% %s %%})",
                        opener, ends[n_ends - 1]);
            return b;
        }
        if (t->k == K_TEXT) {
            stmt *s = snew(p, S_TEXT, t->line);
            s->text = nx(p)->s;
            push_stmt(p, &b, s);
        } else if (t->k == K_VAR) {
            nx(p);
            stmt *s = snew(p, S_OUT, t->line);
            s->e = parse_tuple(p, 1);
            if (pk(p)->k != K_VAR_END) p_unexpected(p, "'}}'");
            nx(p);
            push_stmt(p, &b, s);
        } else if (t->k == K_BLOCK) {
            tok *n = pk2(p);
            for (int k = 0; k < n_ends; k++)
                if (t_name(n, ends[k])) return b;
            int closer = n->k == K_NAME && (t_name(n, "elif") || t_name(n, "else") ||
                                            (n->s.n > 3 && memcmp(n->s.p, "end", 3) == 0));
            if (closer && n_ends)
                jt_fail(p->c, LOUPE_ERR_FORMAT, n->line, "found {%% %.*s %%} where {%% %s %%} should close "
                        "the '%s' of line %d", (int)(n->s.n > 40 ? 40 : n->s.n), n->s.p, ends[n_ends - 1],
                        opener, open_line);
            if (closer)
                jt_fail(p->c, LOUPE_ERR_FORMAT, n->line, "{%% %.*s %%} closes nothing",
                        (int)(n->s.n > 40 ? 40 : n->s.n), n->s.p);
            nx(p);
            push_stmt(p, &b, parse_stmt(p));
        } else {
            p_unexpected(p, "text or a tag");
        }
    }
}

/* ======================================================= value semantics */

struct jargs {
    int n;
    jv *v;   /* (n) positional */
    int nk;
    jstr *k; /* (nk) keyword names */
    jv *kv;  /* (nk) */
};

/* Positional argument pos, else keyword name, else dflt. */
static jv arg(const jargs *a, int pos, const char *name, jv dflt) {
    if (pos >= 0 && pos < a->n) return a->v[pos];
    for (int i = 0; name && i < a->nk; i++)
        if (jstr_is(a->k[i], name)) return a->kv[i];
    return dflt;
}

static const char *type_name(jv v) {
    switch (v.t) {
    case J_UNDEF: return "Undefined";
    case J_NONE: return "NoneType";
    case J_BOOL: return "bool";
    case J_INT: return "int";
    case J_FLOAT: return "float";
    case J_STR: return "str";
    case J_LIST: return v.tuple ? "tuple" : "list";
    case J_DICT: return v.u.d->ns ? "Namespace" : "dict";
    case J_FUNC: return "function";
    }
    return "?";
}

static _Noreturn void fail_undef(jt *c, jv v, int line) {
    if (v.u.s.n)
        jt_fail(c, LOUPE_ERR_FORMAT, line, "'%.*s' is undefined", (int)v.u.s.n, v.u.s.p);
    jt_fail(c, LOUPE_ERR_FORMAT, line, "value is undefined");
}

static int truthy(jv v) {
    switch (v.t) {
    case J_UNDEF: case J_NONE: return 0;
    case J_BOOL: return v.u.b;
    case J_INT: return v.u.i != 0;
    case J_FLOAT: return v.u.f != 0;
    case J_STR: return v.u.s.n != 0;
    case J_LIST: return v.u.l->n != 0;
    case J_DICT: return v.u.d->ns || v.u.d->n != 0;
    case J_FUNC: return 1;
    }
    return 0;
}

static int is_num(jv v) { return v.t == J_INT || v.t == J_FLOAT || v.t == J_BOOL; }
static double num(jv v) { return v.t == J_FLOAT ? v.u.f : v.t == J_INT ? (double)v.u.i : v.u.b; }
static int is_intlike(jv v) { return v.t == J_INT || v.t == J_BOOL; }
static int64_t ival(jv v) { return v.t == J_INT ? v.u.i : v.u.b; }

/* Python's repr(float): the shortest digits that read back exactly. */
static void fmt_pyfloat(double x, char *out, size_t cap) {
    if (isnan(x)) { snprintf(out, cap, "nan"); return; }
    if (isinf(x)) { snprintf(out, cap, x < 0 ? "-inf" : "inf"); return; }
    if (x == 0) { snprintf(out, cap, signbit(x) ? "-0.0" : "0.0"); return; }
    char e[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(e, sizeof e, "%.*e", prec - 1, x);
        if (strtod(e, NULL) == x) break;
    }
    char digits[24];
    int nd = 0, neg = e[0] == '-';
    const char *q = e + neg;
    for (; *q && *q != 'e'; q++)
        if (isdigit((unsigned char)*q)) digits[nd++] = *q;
    digits[nd] = 0;
    int exp = atoi(q + 1);
    char *o = out;
    size_t room = cap;
#define PUT(...) do { int w_ = snprintf(o, room, __VA_ARGS__); if (w_ < 0 || (size_t)w_ >= room) return; o += w_; room -= (size_t)w_; } while (0)
    if (neg) PUT("-");
    if (exp >= -4 && exp < 16) {
        if (exp >= 0) {
            for (int i = 0; i <= exp; i++) PUT("%c", i < nd ? digits[i] : '0');
            PUT(".");
            if (nd > exp + 1) PUT("%s", digits + exp + 1);
            else PUT("0");
        } else {
            PUT("0.");
            for (int i = 0; i < -exp - 1; i++) PUT("0");
            PUT("%s", digits);
        }
    } else {
        PUT("%c", digits[0]);
        if (nd > 1) PUT(".%s", digits + 1);
        PUT("e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    }
#undef PUT
}

static void repr_str(sb *b, jstr s) {
    int has_sq = memchr(s.p, '\'', s.n) != NULL, has_dq = memchr(s.p, '"', s.n) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    sb_put(b, &q, 1);
    for (size_t i = 0; i < s.n; i++) {
        unsigned char ch = (unsigned char)s.p[i];
        char esc[8];
        if (ch == '\\' || ch == (unsigned char)q) {
            esc[0] = '\\';
            esc[1] = (char)ch;
            sb_put(b, esc, 2);
        } else if (ch == '\n') sb_puts(b, "\\n");
        else if (ch == '\r') sb_puts(b, "\\r");
        else if (ch == '\t') sb_puts(b, "\\t");
        else if (ch < 0x20 || ch == 0x7f) {
            snprintf(esc, sizeof esc, "\\x%02x", ch);
            sb_puts(b, esc);
        } else sb_put(b, (const char *)&ch, 1);
    }
    sb_put(b, &q, 1);
}

/* Values nest (and a namespace can hold itself): recursions stop here. */
#define JT_MAX_NEST 100

static void write_any(sb *b, jv v, int repr, int depth);

static void write_seq(sb *b, jv v, int depth) {
    jlist *l = v.u.l;
    sb_puts(b, v.tuple ? "(" : "[");
    for (int i = 0; i < l->n; i++) {
        if (i) sb_puts(b, ", ");
        write_any(b, l->v[i], 1, depth + 1);
    }
    if (v.tuple && l->n == 1) sb_puts(b, ",");
    sb_puts(b, v.tuple ? ")" : "]");
}

/* Python str() (repr = 0) or repr() (repr = 1) of a value. */
static void write_any(sb *b, jv v, int repr, int depth) {
    char buf[64];
    if (depth > JT_MAX_NEST)
        jt_fail(b->c, LOUPE_ERR_UNSUPPORTED, b->c->line, "value nested more than %d deep", JT_MAX_NEST);
    switch (v.t) {
    case J_UNDEF: if (repr) sb_puts(b, "Undefined"); break;
    case J_NONE: sb_puts(b, "None"); break;
    case J_BOOL: sb_puts(b, v.u.b ? "True" : "False"); break;
    case J_INT: snprintf(buf, sizeof buf, "%lld", (long long)v.u.i); sb_puts(b, buf); break;
    case J_FLOAT: fmt_pyfloat(v.u.f, buf, sizeof buf); sb_puts(b, buf); break;
    case J_STR:
        if (repr) repr_str(b, v.u.s);
        else sb_put(b, v.u.s.p, v.u.s.n);
        break;
    case J_LIST: write_seq(b, v, depth); break;
    case J_DICT:
        sb_puts(b, v.u.d->ns ? "<Namespace {" : "{");
        for (int i = 0; i < v.u.d->n; i++) {
            if (i) sb_puts(b, ", ");
            repr_str(b, v.u.d->k[i]);
            sb_puts(b, ": ");
            write_any(b, v.u.d->v[i], 1, depth + 1);
        }
        sb_puts(b, v.u.d->ns ? "}>" : "}");
        break;
    case J_FUNC: sb_puts(b, "<function>"); break;
    }
}

static void write_str(sb *b, jv v, int repr) { write_any(b, v, repr, 0); }

static jstr to_str(jt *c, jv v) {
    if (v.t == J_STR) return v.u.s;
    sb b = {c, NULL, 0, 0};
    write_str(&b, v, 0);
    return sb_str(&b);
}

/* ------------------------------------------------------------- equality */

static int equal_d(jv a, jv b, int depth) {
    if (depth > JT_MAX_NEST) return 0;
    if (is_num(a) && is_num(b)) {
        if (is_intlike(a) && is_intlike(b)) return ival(a) == ival(b);
        return num(a) == num(b);
    }
    if (a.t != b.t) return 0;
    switch (a.t) {
    case J_UNDEF: case J_NONE: return 1;
    case J_STR: return jstr_eq(a.u.s, b.u.s);
    case J_LIST:
        if (a.tuple != b.tuple || a.u.l->n != b.u.l->n) return 0;
        for (int i = 0; i < a.u.l->n; i++)
            if (!equal_d(a.u.l->v[i], b.u.l->v[i], depth + 1)) return 0;
        return 1;
    case J_DICT:
        if (a.u.d->ns || b.u.d->ns) return a.u.d == b.u.d;
        if (a.u.d->n != b.u.d->n) return 0;
        for (int i = 0; i < a.u.d->n; i++) {
            jv *o = dict_find(b.u.d, a.u.d->k[i]);
            if (!o || !equal_d(a.u.d->v[i], *o, depth + 1)) return 0;
        }
        return 1;
    case J_FUNC: return a.u.fn == b.u.fn;
    default: return 0;
    }
}

static int equal(jv a, jv b) { return equal_d(a, b, 0); }

/* <, > ordering: numbers, strings (code point order = UTF-8 byte order),
 * lists element-wise. */
static int compare_d(jt *c, jv a, jv b, int line, int depth) {
    if (depth > JT_MAX_NEST)
        jt_fail(c, LOUPE_ERR_UNSUPPORTED, line, "value nested more than %d deep", JT_MAX_NEST);
    if (is_num(a) && is_num(b)) {
        if (is_intlike(a) && is_intlike(b)) return (ival(a) > ival(b)) - (ival(a) < ival(b));
        return (num(a) > num(b)) - (num(a) < num(b));
    }
    if (a.t == J_STR && b.t == J_STR) {
        size_t n = a.u.s.n < b.u.s.n ? a.u.s.n : b.u.s.n;
        int r = memcmp(a.u.s.p, b.u.s.p, n);
        if (r) return r < 0 ? -1 : 1;
        return (a.u.s.n > b.u.s.n) - (a.u.s.n < b.u.s.n);
    }
    if (a.t == J_LIST && b.t == J_LIST && a.tuple == b.tuple) {
        for (int i = 0; i < a.u.l->n && i < b.u.l->n; i++)
            if (!equal(a.u.l->v[i], b.u.l->v[i])) return compare_d(c, a.u.l->v[i], b.u.l->v[i], line, depth + 1);
        return (a.u.l->n > b.u.l->n) - (a.u.l->n < b.u.l->n);
    }
    if (a.t == J_UNDEF) fail_undef(c, a, line);
    if (b.t == J_UNDEF) fail_undef(c, b, line);
    jt_fail(c, LOUPE_ERR_FORMAT, line, "cannot order '%s' and '%s'", type_name(a), type_name(b));
}

static int compare(jt *c, jv a, jv b, int line) { return compare_d(c, a, b, line, 0); }

/* ----------------------------------------------------- attribute access */

static jv method(jt *c, jv obj, jstr name) {
    if (obj.t == J_STR) {
        for (size_t k = 0; k < sizeof jt_str_methods / sizeof jt_str_methods[0]; k++)
            if (jstr_is(name, jt_str_methods[k].name)) return v_func(c, jt_str_methods[k].id, obj);
    } else if (obj.t == J_DICT && !obj.u.d->ns) {
        for (size_t k = 0; k < sizeof jt_dict_methods / sizeof jt_dict_methods[0]; k++)
            if (jstr_is(name, jt_dict_methods[k].name)) return v_func(c, jt_dict_methods[k].id, obj);
    }
    return v_undef(name);
}

/* obj.name: Python attribute first, then item (Jinja's getattr). */
static jv get_attr(jt *c, jv obj, jstr name, int line) {
    if (obj.t == J_UNDEF) fail_undef(c, obj, line);
    jv m = method(c, obj, name);
    if (m.t != J_UNDEF) return m;
    if (obj.t == J_DICT) {
        jv *v = dict_find(obj.u.d, name);
        if (v) return *v;
    }
    return v_undef(name);
}

/* Code point index i of s (negative from the end); undefined if out of range. */
static jv str_index(jt *c, jstr s, int64_t i) {
    int64_t n;
    size_t *off = u8_offsets(c, s, &n);
    if (i < 0) i += n;
    if (i < 0 || i >= n) return v_undef(js("index"));
    return v_str((jstr){s.p + off[i], off[i + 1] - off[i]});
}

/* obj[key]: item first, then attribute (Jinja's getitem). */
static jv get_item(jt *c, jv obj, jv key, int line) {
    if (obj.t == J_UNDEF) fail_undef(c, obj, line);
    if (obj.t == J_LIST && is_intlike(key)) {
        int64_t i = ival(key), n = obj.u.l->n;
        if (i < 0) i += n;
        return i >= 0 && i < n ? obj.u.l->v[i] : v_undef(js("index"));
    }
    if (obj.t == J_STR && is_intlike(key)) return str_index(c, obj.u.s, ival(key));
    if (obj.t == J_DICT && key.t == J_STR) {
        jv *v = dict_find(obj.u.d, key.u.s);
        if (v) return *v;
    }
    if (key.t == J_STR) return method(c, obj, key.u.s);
    return v_undef(js("item"));
}

/* Python slice.indices(): number of items, first index and step. */
static int64_t slice_range(jt *c, int64_t len, jv *sss, int64_t *start, int64_t *step, int line) {
    for (int k = 0; k < 3; k++)
        if (sss[k].t != J_NONE && sss[k].t != J_UNDEF && !is_intlike(sss[k]))
            jt_fail(c, LOUPE_ERR_FORMAT, line, "slice indices must be integers or none");
    int64_t st = sss[2].t == J_NONE || sss[2].t == J_UNDEF ? 1 : ival(sss[2]);
    if (st == 0) jt_fail(c, LOUPE_ERR_FORMAT, line, "slice step cannot be zero");
    int64_t lower = st > 0 ? 0 : -1, upper = st > 0 ? len : len - 1, b[2];
    for (int k = 0; k < 2; k++) {
        if (sss[k].t == J_NONE || sss[k].t == J_UNDEF) {
            b[k] = (k == 0) == (st < 0) ? upper : lower;
            continue;
        }
        int64_t v = ival(sss[k]);
        if (v < 0) {
            v += len;
            if (v < lower) v = lower;
        } else if (v > upper) {
            v = upper;
        }
        b[k] = v;
    }
    *start = b[0];
    *step = st;
    if (st > 0) return b[1] > b[0] ? (b[1] - b[0] - 1) / st + 1 : 0;
    return b[0] > b[1] ? (b[0] - b[1] - 1) / (-st) + 1 : 0;
}

static jv do_slice(jt *c, jv obj, jv *sss, int line) {
    int64_t start, step;
    if (obj.t == J_LIST) {
        int64_t n = slice_range(c, obj.u.l->n, sss, &start, &step, line);
        jv r = v_list(c, (int)n);
        r.tuple = obj.tuple;
        for (int64_t i = 0; i < n; i++) r.u.l->v[i] = obj.u.l->v[start + i * step];
        return r;
    }
    if (obj.t == J_STR) {
        int64_t ncp;
        size_t *off = u8_offsets(c, obj.u.s, &ncp);
        int64_t n = slice_range(c, ncp, sss, &start, &step, line);
        sb b = {c, NULL, 0, 0};
        for (int64_t i = 0; i < n; i++) {
            int64_t k = start + i * step;
            sb_put(&b, obj.u.s.p + off[k], off[k + 1] - off[k]);
        }
        return v_str(sb_str(&b));
    }
    if (obj.t == J_UNDEF) fail_undef(c, obj, line);
    jt_fail(c, LOUPE_ERR_FORMAT, line, "'%s' object cannot be sliced", type_name(obj));
}

/* The items a for loop (or a filter) walks: list items, dict keys, string
 * characters; undefined walks nothing. */
static jlist *iterate(jt *c, jv v, int line) {
    static jlist empty = {0, NULL};
    switch (v.t) {
    case J_UNDEF: return &empty;
    case J_LIST: return v.u.l;
    case J_DICT: {
        if (v.u.d->ns) break;
        jv r = v_list(c, v.u.d->n);
        for (int i = 0; i < v.u.d->n; i++) r.u.l->v[i] = v_str(v.u.d->k[i]);
        return r.u.l;
    }
    case J_STR: {
        int64_t n;
        size_t *off = u8_offsets(c, v.u.s, &n);
        jv r = v_list(c, (int)n);
        for (int64_t i = 0; i < n; i++)
            r.u.l->v[i] = v_str((jstr){v.u.s.p + off[i], off[i + 1] - off[i]});
        return r.u.l;
    }
    default: break;
    }
    jt_fail(c, LOUPE_ERR_FORMAT, line, "'%s' object is not iterable", type_name(v));
}

static int contains(jt *c, jv hay, jv needle, int line) {
    if (hay.t == J_STR) {
        if (needle.t != J_STR)
            jt_fail(c, LOUPE_ERR_FORMAT, line, "'in <string>' needs a string, not '%s'", type_name(needle));
        if (needle.u.s.n == 0) return 1;
        for (size_t i = 0; i + needle.u.s.n <= hay.u.s.n; i++)
            if (memcmp(hay.u.s.p + i, needle.u.s.p, needle.u.s.n) == 0) return 1;
        return 0;
    }
    if (hay.t == J_DICT) return needle.t == J_STR && dict_find(hay.u.d, needle.u.s) != NULL;
    if (hay.t == J_LIST) {
        for (int i = 0; i < hay.u.l->n; i++)
            if (equal(hay.u.l->v[i], needle)) return 1;
        return 0;
    }
    if (hay.t == J_UNDEF) return 0;
    jt_fail(c, LOUPE_ERR_FORMAT, line, "argument of type '%s' is not iterable", type_name(hay));
}

/* ----------------------------------------------------------- arithmetic */

static int64_t floordiv_i(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
    return q;
}

static jv repeat(jt *c, jv seq, int64_t times, int line) {
    if (times < 0) times = 0;
    size_t unit = seq.t == J_STR ? seq.u.s.n : (size_t)seq.u.l->n;
    if (unit && (uint64_t)times > JT_MAX_OUT / unit)
        jt_fail(c, LOUPE_ERR_NOMEM, line, "repetition too large");
    if (seq.t == J_STR) {
        sb b = {c, NULL, 0, 0};
        for (int64_t i = 0; i < times; i++) sb_put(&b, seq.u.s.p, seq.u.s.n);
        return v_str(sb_str(&b));
    }
    jv r = v_list(c, (int)(unit * (size_t)times));
    r.tuple = seq.tuple;
    for (int64_t i = 0; i < times; i++)
        memcpy(r.u.l->v + (size_t)i * unit, seq.u.l->v, unit * sizeof(jv));
    return r;
}

static jv arith_int(jt *c, int op, int64_t a, int64_t b, int line) {
    int64_t r = 0;
    int ovf = 0;
    switch (op) {
    case OP_ADD: ovf = __builtin_add_overflow(a, b, &r); break;
    case OP_SUB: ovf = __builtin_sub_overflow(a, b, &r); break;
    case OP_MUL: ovf = __builtin_mul_overflow(a, b, &r); break;
    case OP_FLOORDIV:
    case OP_MOD:
        if (b == 0) jt_fail(c, LOUPE_ERR_FORMAT, line, "division by zero");
        if (a == INT64_MIN && b == -1) ovf = 1;
        else if (op == OP_FLOORDIV) r = floordiv_i(a, b);
        else r = a - floordiv_i(a, b) * b;
        break;
    case OP_POW:
        if (b < 0) return v_float(pow((double)a, (double)b));
        r = 1;
        for (int64_t i = 0; i < b && !ovf; i++) ovf = __builtin_mul_overflow(r, a, &r);
        break;
    }
    if (ovf) jt_fail(c, LOUPE_ERR_UNSUPPORTED, line, "integer overflow");
    return v_int(r);
}

static jv arith_float(jt *c, int op, double a, double b, int line) {
    switch (op) {
    case OP_ADD: return v_float(a + b);
    case OP_SUB: return v_float(a - b);
    case OP_MUL: return v_float(a * b);
    case OP_POW: return v_float(pow(a, b));
    default: break;
    }
    if (b == 0) jt_fail(c, LOUPE_ERR_FORMAT, line, "division by zero");
    if (op == OP_DIV) return v_float(a / b);
    if (op == OP_FLOORDIV) return v_float(floor(a / b));
    double m = fmod(a, b);
    if (m != 0 && ((m < 0) != (b < 0))) m += b;
    return v_float(m);
}

static jv binop(jt *c, int op, jv a, jv b, int line) {
    if (a.t == J_UNDEF) fail_undef(c, a, line);
    if (b.t == J_UNDEF) fail_undef(c, b, line);
    if (is_num(a) && is_num(b)) {
        if (is_intlike(a) && is_intlike(b) && op != OP_DIV) return arith_int(c, op, ival(a), ival(b), line);
        return arith_float(c, op, num(a), num(b), line);
    }
    if (op == OP_ADD && a.t == J_STR && b.t == J_STR) {
        sb s = {c, NULL, 0, 0};
        sb_put(&s, a.u.s.p, a.u.s.n);
        sb_put(&s, b.u.s.p, b.u.s.n);
        return v_str(sb_str(&s));
    }
    if (op == OP_ADD && a.t == J_LIST && b.t == J_LIST && a.tuple == b.tuple) {
        jv r = v_list(c, a.u.l->n + b.u.l->n);
        r.tuple = a.tuple;
        if (a.u.l->n) memcpy(r.u.l->v, a.u.l->v, (size_t)a.u.l->n * sizeof(jv));
        if (b.u.l->n) memcpy(r.u.l->v + a.u.l->n, b.u.l->v, (size_t)b.u.l->n * sizeof(jv));
        return r;
    }
    if (op == OP_MUL && (a.t == J_STR || a.t == J_LIST) && is_intlike(b)) return repeat(c, a, ival(b), line);
    if (op == OP_MUL && (b.t == J_STR || b.t == J_LIST) && is_intlike(a)) return repeat(c, b, ival(a), line);
    if (op == OP_MOD && a.t == J_STR)
        jt_fail(c, LOUPE_ERR_UNSUPPORTED, line, "%%-formatting of strings is not supported");
    static const char *const names[] = {"+", "-", "*", "/", "//", "%", "**"};
    jt_fail(c, LOUPE_ERR_FORMAT, line, "unsupported operand types for %s: '%s' and '%s'",
            names[op], type_name(a), type_name(b));
}

/* ============================================================= evaluator */

static jv eval(jt *c, scope *sc, const expr *e);
static int exec_body(jt *c, scope *sc, const body *b);
static jv call(jt *c, jv f, jargs *a, int line);

static jargs eval_args(jt *c, scope *sc, const expr *e) {
    jargs a = {e->n_args, NULL, e->n_kw, e->kw, NULL};
    if (e->n_args) a.v = jt_alloc(c, (size_t)e->n_args * sizeof(jv));
    if (e->n_kw) a.kv = jt_alloc(c, (size_t)e->n_kw * sizeof(jv));
    for (int i = 0; i < e->n_args; i++) a.v[i] = eval(c, sc, e->args[i]);
    for (int i = 0; i < e->n_kw; i++) a.kv[i] = eval(c, sc, e->kwv[i]);
    return a;
}

static jv eval_seq(jt *c, scope *sc, const expr *e) {
    if (e->k == E_DICT) {
        jv d = v_dict(c);
        for (int i = 0; i + 1 < e->n_args; i += 2) {
            jv k = eval(c, sc, e->args[i]);
            if (k.t != J_STR)
                jt_fail(c, LOUPE_ERR_UNSUPPORTED, e->line, "dict keys must be strings, not '%s'", type_name(k));
            dict_set(c, d.u.d, k.u.s, eval(c, sc, e->args[i + 1]));
        }
        return d;
    }
    jv l = v_list(c, e->n_args);
    l.tuple = e->k == E_TUPLE;
    for (int i = 0; i < e->n_args; i++) l.u.l->v[i] = eval(c, sc, e->args[i]);
    return l;
}

static jv eval_cmp(jt *c, scope *sc, const expr *e) {
    jv left = eval(c, sc, e->a);
    for (int i = 0; i < e->n_args; i++) {
        jv right = eval(c, sc, e->args[i]);
        int op = e->ops[i], ok;
        switch (op) {
        case OP_EQ: ok = equal(left, right); break;
        case OP_NE: ok = !equal(left, right); break;
        case OP_IN: ok = contains(c, right, left, e->line); break;
        case OP_NOTIN: ok = !contains(c, right, left, e->line); break;
        default: {
            int r = compare(c, left, right, e->line);
            ok = op == OP_LT ? r < 0 : op == OP_LE ? r <= 0 : op == OP_GT ? r > 0 : r >= 0;
        }
        }
        if (!ok) return v_bool(0);
        left = right;
    }
    return v_bool(1);
}

static jv eval_node(jt *c, scope *sc, const expr *e);

static jv eval(jt *c, scope *sc, const expr *e) {
    if (++c->frames > JT_MAX_FRAMES)
        jt_fail(c, LOUPE_ERR_UNSUPPORTED, e->line, "template nests more than %d evaluations", JT_MAX_FRAMES);
    jv v = eval_node(c, sc, e);
    c->frames--;
    return v;
}

static jv eval_node(jt *c, scope *sc, const expr *e) {
    c->line = e->line;
    jt_step(c);
    switch (e->k) {
    case E_LIT: return e->lit;
    case E_NAME: return scope_get(sc, e->name);
    case E_LIST: case E_TUPLE: case E_DICT: return eval_seq(c, sc, e);
    case E_ATTR: return get_attr(c, eval(c, sc, e->a), e->name, e->line);
    case E_ITEM: {
        jv obj = eval(c, sc, e->a);
        return get_item(c, obj, eval(c, sc, e->b), e->line);
    }
    case E_SLICE: {
        jv obj = eval(c, sc, e->a), sss[3];
        for (int k = 0; k < 3; k++) sss[k] = e->args[k] ? eval(c, sc, e->args[k]) : v_none();
        return do_slice(c, obj, sss, e->line);
    }
    case E_CALL: {
        jv f = eval(c, sc, e->a);
        jargs a = eval_args(c, sc, e);
        return call(c, f, &a, e->line);
    }
    case E_FILTER: {
        if (!e->ffn)
            jt_fail(c, LOUPE_ERR_UNSUPPORTED, e->line, "filter '%.*s' is not supported",
                    (int)e->name.n, e->name.p);
        jv v = eval(c, sc, e->a);
        jargs a = eval_args(c, sc, e);
        return e->ffn(c, v, &a, e->line);
    }
    case E_TEST: {
        if (!e->tfn)
            jt_fail(c, LOUPE_ERR_UNSUPPORTED, e->line, "test '%.*s' is not supported",
                    (int)e->name.n, e->name.p);
        jv v = eval(c, sc, e->a);
        jargs a = eval_args(c, sc, e);
        return v_bool(e->tfn(c, v, &a, e->line) != e->op);
    }
    case E_NOT: return v_bool(!truthy(eval(c, sc, e->a)));
    case E_NEG: case E_POS: {
        jv v = eval(c, sc, e->a);
        if (v.t == J_UNDEF) fail_undef(c, v, e->line);
        if (!is_num(v)) jt_fail(c, LOUPE_ERR_FORMAT, e->line, "bad operand type for unary %c: '%s'",
                                e->k == E_NEG ? '-' : '+', type_name(v));
        if (e->k == E_POS) return is_intlike(v) ? v_int(ival(v)) : v;
        if (v.t == J_FLOAT) return v_float(-v.u.f);
        return arith_int(c, OP_SUB, 0, ival(v), e->line);
    }
    case E_BIN: {
        jv a = eval(c, sc, e->a);
        return binop(c, e->op, a, eval(c, sc, e->b), e->line);
    }
    case E_CONCAT: {
        sb b = {c, NULL, 0, 0};
        for (int i = 0; i < e->n_args; i++) write_str(&b, eval(c, sc, e->args[i]), 0);
        return v_str(sb_str(&b));
    }
    case E_AND: {
        jv a = eval(c, sc, e->a);
        return truthy(a) ? eval(c, sc, e->b) : a;
    }
    case E_OR: {
        jv a = eval(c, sc, e->a);
        return truthy(a) ? a : eval(c, sc, e->b);
    }
    case E_CMP: return eval_cmp(c, sc, e);
    case E_COND:
        if (truthy(eval(c, sc, e->a))) return eval(c, sc, e->b);
        return e->c ? eval(c, sc, e->c) : v_undef(js("else"));
    }
    jt_fail(c, LOUPE_ERR_INTERNAL, e->line, "bad expression node");
}

/* ----------------------------------------------------------- str methods */

static jstr want_str(jt *c, jv v, const char *what, int line) {
    if (v.t != J_STR) {
        if (v.t == J_UNDEF) fail_undef(c, v, line);
        jt_fail(c, LOUPE_ERR_FORMAT, line, "%s expects a string, not '%s'", what, type_name(v));
    }
    return v.u.s;
}

/* Does the code point at s[i] belong to the strip set (NULL: whitespace)? */
static int in_set(uint32_t cp, const jstr *chars) {
    if (!chars) return py_space(cp);
    for (size_t i = 0; i < chars->n;) {
        size_t len;
        if (u8_dec(chars->p + i, chars->n - i, &len) == cp) return 1;
        i += len;
    }
    return 0;
}

static jstr str_strip(jstr s, const jstr *chars, int left, int right) {
    size_t a = 0, b = s.n;
    while (left && a < b) {
        size_t len;
        uint32_t cp = u8_dec(s.p + a, b - a, &len);
        if (!in_set(cp, chars)) break;
        a += len;
    }
    while (right && b > a) {
        size_t k = b - 1, len;
        while (k > a && ((unsigned char)s.p[k] & 0xc0) == 0x80) k--;
        uint32_t cp = u8_dec(s.p + k, b - k, &len);
        if (k + len != b) k = b - 1, cp = (unsigned char)s.p[k];
        if (!in_set(cp, chars)) break;
        b = k;
    }
    return (jstr){s.p + a, b - a};
}

static jstr str_case(jt *c, jstr s, int mode) { /* 0 lower, 1 upper, 2 capitalize, 3 title */
    char *o = jt_alloc(c, s.n + 1);
    int word_start = 1;
    for (size_t i = 0; i < s.n; i++) {
        unsigned char ch = (unsigned char)s.p[i];
        int up = mode == 1 || (mode == 2 && i == 0) || (mode == 3 && word_start);
        o[i] = (char)(up ? toupper(ch) : tolower(ch));
        word_start = !isalpha(ch) && ch < 0x80;
    }
    return (jstr){o, s.n};
}

static jv str_split(jt *c, jstr s, jv sepv, int64_t maxsplit, int line) {
    jv out = v_list(c, 0);
    jlist *l = out.u.l;
    size_t i = 0;
#define PUSH(p_, n_) do { l->v = jt_grow(c, l->v, l->n, sizeof(jv)); l->v[l->n++] = v_str((jstr){(p_), (n_)}); } while (0)
    if (sepv.t == J_NONE || sepv.t == J_UNDEF) { /* runs of Unicode whitespace */
        for (;;) {
            i = (size_t)(str_strip((jstr){s.p + i, s.n - i}, NULL, 1, 0).p - s.p);
            if (i >= s.n) break;
            if (maxsplit >= 0 && l->n == maxsplit) {
                jstr rest = str_strip((jstr){s.p + i, s.n - i}, NULL, 0, 1);
                PUSH(rest.p, rest.n);
                break;
            }
            size_t j = i, len;
            while (j < s.n && !py_space(u8_dec(s.p + j, s.n - j, &len))) j += len;
            PUSH(s.p + i, j - i);
            i = j;
        }
        return out;
    }
    jstr sep = want_str(c, sepv, "split()", line);
    if (sep.n == 0) jt_fail(c, LOUPE_ERR_FORMAT, line, "split(): empty separator");
    for (;;) {
        const char *hit = NULL;
        if (maxsplit < 0 || l->n < maxsplit)
            for (size_t j = i; j + sep.n <= s.n; j++)
                if (memcmp(s.p + j, sep.p, sep.n) == 0) {
                    hit = s.p + j;
                    break;
                }
        if (!hit) {
            PUSH(s.p + i, s.n - i);
            return out;
        }
        PUSH(s.p + i, (size_t)(hit - s.p) - i);
        i = (size_t)(hit - s.p) + sep.n;
    }
#undef PUSH
}

static jstr str_replace(jt *c, jstr s, jstr old, jstr new_, int64_t count) {
    sb b = {c, NULL, 0, 0};
    size_t i = 0;
    int64_t done = 0;
    if (old.n == 0) { /* Python inserts between every character */
        int64_t n;
        size_t *off = u8_offsets(c, s, &n);
        for (int64_t k = 0; k <= n; k++) {
            if (count < 0 || done < count) {
                sb_put(&b, new_.p, new_.n);
                done++;
            }
            if (k < n) sb_put(&b, s.p + off[k], off[k + 1] - off[k]);
        }
        return sb_str(&b);
    }
    while (i < s.n) {
        if ((count < 0 || done < count) && i + old.n <= s.n && memcmp(s.p + i, old.p, old.n) == 0) {
            sb_put(&b, new_.p, new_.n);
            i += old.n;
            done++;
        } else {
            sb_put(&b, s.p + i++, 1);
        }
    }
    return sb_str(&b);
}

static int64_t str_find(jstr s, jstr sub, int count_all) {
    int64_t hits = 0;
    for (size_t i = 0; i + sub.n <= s.n;) {
        if (memcmp(s.p + i, sub.p, sub.n) == 0) {
            if (!count_all) return u8_len((jstr){s.p, i});
            hits++;
            i += sub.n ? sub.n : 1;
        } else {
            i++;
        }
    }
    if (count_all && sub.n == 0) return u8_len(s) + 1;
    return count_all ? hits : -1;
}

static int affix(jt *c, jstr s, jv which, int end, int line) {
    if (which.t == J_LIST) {
        for (int i = 0; i < which.u.l->n; i++)
            if (affix(c, s, which.u.l->v[i], end, line)) return 1;
        return 0;
    }
    jstr a = want_str(c, which, end ? "endswith()" : "startswith()", line);
    if (a.n > s.n) return 0;
    return memcmp(end ? s.p + s.n - a.n : s.p, a.p, a.n) == 0;
}

static jv str_join(jt *c, jstr sep, jv items, int line) {
    jlist *l = iterate(c, items, line);
    sb b = {c, NULL, 0, 0};
    for (int i = 0; i < l->n; i++) {
        if (i) sb_put(&b, sep.p, sep.n);
        jstr s = want_str(c, l->v[i], "join()", line);
        sb_put(&b, s.p, s.n);
    }
    return v_str(sb_str(&b));
}

static jv str_splitlines(jt *c, jstr s) {
    jv out = v_list(c, 0);
    jlist *l = out.u.l;
    size_t i = 0;
    while (i < s.n) {
        size_t j = i;
        while (j < s.n && s.p[j] != '\n' && s.p[j] != '\r') j++;
        l->v = jt_grow(c, l->v, l->n, sizeof(jv));
        l->v[l->n++] = v_str((jstr){s.p + i, j - i});
        if (j < s.n && s.p[j] == '\r' && j + 1 < s.n && s.p[j + 1] == '\n') j++;
        i = j + 1;
    }
    return out;
}

static jv call_str_method(jt *c, int id, jstr s, jargs *a, int line) {
    jv none = v_none();
    switch (id) {
    case FN_STRIP: case FN_LSTRIP: case FN_RSTRIP: {
        jv ch = arg(a, 0, "chars", none);
        jstr set = ch.t == J_NONE ? (jstr){0} : want_str(c, ch, "strip()", line);
        return v_str(str_strip(s, ch.t == J_NONE ? NULL : &set, id != FN_RSTRIP, id != FN_LSTRIP));
    }
    case FN_STARTSWITH: case FN_ENDSWITH:
        return v_bool(affix(c, s, arg(a, 0, NULL, v_cstr("")), id == FN_ENDSWITH, line));
    case FN_SPLIT: {
        jv mx = arg(a, 1, "maxsplit", v_int(-1));
        return str_split(c, s, arg(a, 0, "sep", none), is_intlike(mx) ? ival(mx) : -1, line);
    }
    case FN_REPLACE: {
        jv cnt = arg(a, 2, "count", v_int(-1));
        return v_str(str_replace(c, s, want_str(c, arg(a, 0, NULL, none), "replace()", line),
                                 want_str(c, arg(a, 1, NULL, none), "replace()", line),
                                 is_intlike(cnt) ? ival(cnt) : -1));
    }
    case FN_UPPER: return v_str(str_case(c, s, 1));
    case FN_LOWER: return v_str(str_case(c, s, 0));
    case FN_CAPITALIZE: return v_str(str_case(c, s, 2));
    case FN_TITLE: return v_str(str_case(c, s, 3));
    case FN_FIND: case FN_COUNT:
        return v_int(str_find(s, want_str(c, arg(a, 0, NULL, none), "find()", line), id == FN_COUNT));
    case FN_JOIN: return str_join(c, s, arg(a, 0, NULL, none), line);
    case FN_SPLITLINES: return str_splitlines(c, s);
    }
    jt_fail(c, LOUPE_ERR_INTERNAL, line, "bad string method");
}

static jv call_dict_method(jt *c, int id, jdict *d, jargs *a) {
    if (id == FN_GET) {
        jv k = arg(a, 0, NULL, v_none());
        jv *v = k.t == J_STR ? dict_find(d, k.u.s) : NULL;
        return v ? *v : arg(a, 1, NULL, v_none());
    }
    jv r = v_list(c, d->n);
    for (int i = 0; i < d->n; i++) {
        if (id == FN_KEYS) r.u.l->v[i] = v_str(d->k[i]);
        else if (id == FN_VALUES) r.u.l->v[i] = d->v[i];
        else {
            jv pair = v_list(c, 2);
            pair.tuple = 1;
            pair.u.l->v[0] = v_str(d->k[i]);
            pair.u.l->v[1] = d->v[i];
            r.u.l->v[i] = pair;
        }
    }
    return r;
}

/* ------------------------------------------------------------- builtins */

static jv call_macro(jt *c, const stmt *m, jargs *a, int line) {
    if (++c->depth > JT_MAX_DEPTH) jt_fail(c, LOUPE_ERR_UNSUPPORTED, line, "macro calls nested too deeply");
    if (a->n > m->n_params)
        jt_fail(c, LOUPE_ERR_FORMAT, line, "macro '%.*s' takes %d arguments, got %d",
                (int)m->targets[0].n, m->targets[0].p, m->n_params, a->n);
    scope *ms = scope_new(c, c->root);
    for (int i = 0; i < a->nk; i++) {
        int known = 0;
        for (int k = 0; k < m->n_params; k++) known |= jstr_eq(a->k[i], m->params[k]);
        if (!known)
            jt_fail(c, LOUPE_ERR_FORMAT, line, "macro '%.*s' has no argument '%.*s'",
                    (int)m->targets[0].n, m->targets[0].p, (int)a->k[i].n, a->k[i].p);
    }
    for (int k = 0; k < m->n_params; k++) {
        jv v = arg(a, k, NULL, v_undef(m->params[k]));
        for (int i = 0; i < a->nk; i++)
            if (jstr_eq(a->k[i], m->params[k])) v = a->kv[i];
        if (v.t == J_UNDEF && m->defaults[k]) v = eval(c, ms, m->defaults[k]);
        dict_set(c, &ms->vars, m->params[k], v);
    }
    size_t mark = c->n_out;
    exec_body(c, ms, &m->body);
    c->depth--;
    return v_str(out_take(c, mark));
}

static jv call_range(jt *c, jargs *a, int line) {
    int64_t v[3] = {0, 0, 1};
    if (a->n < 1 || a->n > 3) jt_fail(c, LOUPE_ERR_FORMAT, line, "range() takes 1 to 3 arguments");
    for (int i = 0; i < a->n; i++) {
        if (!is_intlike(a->v[i])) jt_fail(c, LOUPE_ERR_FORMAT, line, "range() arguments must be integers");
        v[a->n == 1 ? 1 : i] = ival(a->v[i]);
    }
    if (v[2] == 0) jt_fail(c, LOUPE_ERR_FORMAT, line, "range() step must not be zero");
    int64_t n = v[2] > 0 ? (v[1] > v[0] ? (v[1] - v[0] - 1) / v[2] + 1 : 0)
                         : (v[0] > v[1] ? (v[0] - v[1] - 1) / -v[2] + 1 : 0);
    if (n > JT_MAX_RANGE) jt_fail(c, LOUPE_ERR_NOMEM, line, "range() of %lld items is too large", (long long)n);
    jv r = v_list(c, (int)n);
    for (int64_t i = 0; i < n; i++) r.u.l->v[i] = v_int(v[0] + i * v[2]);
    return r;
}

static jv call_builtin(jt *c, int id, jargs *a, int line) {
    switch (id) {
    case FN_NAMESPACE: case FN_DICT: {
        jv d = v_dict(c);
        d.u.d->ns = id == FN_NAMESPACE;
        for (int i = 0; i < a->n; i++) {
            if (a->v[i].t != J_DICT) jt_fail(c, LOUPE_ERR_FORMAT, line, "namespace()/dict() takes a dict or keywords");
            for (int k = 0; k < a->v[i].u.d->n; k++) dict_set(c, d.u.d, a->v[i].u.d->k[k], a->v[i].u.d->v[k]);
        }
        for (int i = 0; i < a->nk; i++) dict_set(c, d.u.d, a->k[i], a->kv[i]);
        return d;
    }
    case FN_RAISE: {
        jstr m = to_str(c, arg(a, 0, NULL, v_cstr("raise_exception() called")));
        jt_fail(c, LOUPE_ERR_ARG, line, "%.*s", (int)(m.n > 400 ? 400 : m.n), m.p);
    }
    case FN_STRFTIME: {
        jstr f = want_str(c, arg(a, 0, NULL, v_none()), "strftime_now()", line);
        char fmt[128], buf[256];
        if (f.n >= sizeof fmt) jt_fail(c, LOUPE_ERR_FORMAT, line, "strftime_now(): format too long");
        memcpy(fmt, f.p, f.n);
        fmt[f.n] = 0;
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        size_t n = strftime(buf, sizeof buf, fmt, &tm);
        return v_str(jstr_dup(c, buf, n));
    }
    case FN_RANGE: return call_range(c, a, line);
    }
    jt_fail(c, LOUPE_ERR_INTERNAL, line, "bad builtin");
}

static jv call(jt *c, jv f, jargs *a, int line) {
    if (f.t == J_UNDEF) fail_undef(c, f, line);
    if (f.t != J_FUNC) jt_fail(c, LOUPE_ERR_FORMAT, line, "'%s' object is not callable", type_name(f));
    jfunc *fn = f.u.fn;
    if (fn->id == FN_MACRO) return call_macro(c, fn->macro, a, line);
    if (fn->id >= FN_ITEMS) return call_dict_method(c, fn->id, fn->self.u.d, a);
    if (fn->id >= FN_STRIP) return call_str_method(c, fn->id, fn->self.u.s, a, line);
    return call_builtin(c, fn->id, a, line);
}

/* ============================================================ statements */

enum { FLOW_NEXT, FLOW_BREAK, FLOW_CONTINUE };

static void bind_targets(jt *c, scope *sc, const stmt *s, jv item) {
    if (s->n_targets == 1) {
        dict_set(c, &sc->vars, s->targets[0], item);
        return;
    }
    jlist *l = item.t == J_LIST ? item.u.l : NULL;
    if (!l || l->n != s->n_targets)
        jt_fail(c, LOUPE_ERR_FORMAT, s->line, "cannot unpack '%s' into %d names", type_name(item), s->n_targets);
    for (int k = 0; k < s->n_targets; k++) dict_set(c, &sc->vars, s->targets[k], l->v[k]);
}

static jv loop_info(jt *c, const jlist *items, int i) {
    jv d = v_dict(c);
    int n = items->n;
    jdict *x = d.u.d;
    dict_set(c, x, js("index"), v_int(i + 1));
    dict_set(c, x, js("index0"), v_int(i));
    dict_set(c, x, js("revindex"), v_int(n - i));
    dict_set(c, x, js("revindex0"), v_int(n - i - 1));
    dict_set(c, x, js("first"), v_bool(i == 0));
    dict_set(c, x, js("last"), v_bool(i == n - 1));
    dict_set(c, x, js("length"), v_int(n));
    dict_set(c, x, js("depth"), v_int(1));
    dict_set(c, x, js("depth0"), v_int(0));
    dict_set(c, x, js("previtem"), i > 0 ? items->v[i - 1] : v_undef(js("previtem")));
    dict_set(c, x, js("nextitem"), i + 1 < n ? items->v[i + 1] : v_undef(js("nextitem")));
    return d;
}

static void exec_for(jt *c, scope *sc, const stmt *s) {
    jlist *all = iterate(c, eval(c, sc, s->e), s->line), *items = all;
    if (s->cond) { /* the inline `if` filters before loop.* counts */
        jv kept = v_list(c, all->n);
        kept.u.l->n = 0;
        for (int i = 0; i < all->n; i++) {
            scope *fs = scope_new(c, sc);
            bind_targets(c, fs, s, all->v[i]);
            if (truthy(eval(c, fs, s->cond))) kept.u.l->v[kept.u.l->n++] = all->v[i];
        }
        items = kept.u.l;
    }
    if (items->n == 0) {
        exec_body(c, sc, &s->orelse);
        return;
    }
    for (int i = 0; i < items->n; i++) {
        jt_step(c);
        scope *is = scope_new(c, sc);
        bind_targets(c, is, s, items->v[i]);
        dict_set(c, &is->vars, js("loop"), loop_info(c, items, i));
        if (exec_body(c, is, &s->body) == FLOW_BREAK) break;
    }
}

static int exec_node(jt *c, scope *sc, const stmt *s);

static int exec_stmt(jt *c, scope *sc, const stmt *s) {
    if (++c->frames > JT_MAX_FRAMES)
        jt_fail(c, LOUPE_ERR_UNSUPPORTED, s->line, "template nests more than %d evaluations", JT_MAX_FRAMES);
    int r = exec_node(c, sc, s);
    c->frames--;
    return r;
}

static int exec_node(jt *c, scope *sc, const stmt *s) {
    c->line = s->line;
    jt_step(c);
    switch (s->k) {
    case S_TEXT: out_put(c, s->text.p, s->text.n); break;
    case S_OUT: {
        jv v = eval(c, sc, s->e);
        jstr t = to_str(c, v);
        out_put(c, t.p, t.n);
        break;
    }
    case S_IF: return exec_body(c, sc, truthy(eval(c, sc, s->e)) ? &s->body : &s->orelse);
    case S_FOR: exec_for(c, sc, s); break;
    case S_SET: {
        jv v = eval(c, sc, s->e);
        if (!s->attr.n) {
            bind_targets(c, sc, s, v);
            break;
        }
        jv ns = scope_get(sc, s->targets[0]);
        if (ns.t != J_DICT || !ns.u.d->ns)
            jt_fail(c, LOUPE_ERR_FORMAT, s->line, "cannot assign attribute on non-namespace object '%.*s'",
                    (int)s->targets[0].n, s->targets[0].p);
        dict_set(c, ns.u.d, s->attr, v);
        break;
    }
    case S_SETBLOCK: {
        size_t mark = c->n_out;
        exec_body(c, sc, &s->body);
        dict_set(c, &sc->vars, s->targets[0], v_str(out_take(c, mark)));
        break;
    }
    case S_BREAK: return FLOW_BREAK;
    case S_CONTINUE: return FLOW_CONTINUE;
    case S_MACRO: {
        jv f = v_func(c, FN_MACRO, v_none());
        f.u.fn->macro = s;
        dict_set(c, &sc->vars, s->targets[0], f);
        break;
    }
    case S_FILTERBLOCK: {
        size_t mark = c->n_out;
        exec_body(c, sc, &s->body);
        scope *fs = scope_new(c, sc);
        dict_set(c, &fs->vars, js("\x01body"), v_str(out_take(c, mark)));
        jstr t = to_str(c, eval(c, fs, s->e));
        out_put(c, t.p, t.n);
        break;
    }
    case S_BLOCK: return exec_body(c, sc, &s->body);
    }
    return FLOW_NEXT;
}

static int exec_body(jt *c, scope *sc, const body *b) {
    for (int i = 0; i < b->n; i++) {
        int r = exec_stmt(c, sc, b->v[i]);
        if (r != FLOW_NEXT) return r;
    }
    return FLOW_NEXT;
}

/* ================================================================ tojson */

typedef struct {
    int indent;       /* < 0: one line */
    int ascii;        /* ensure_ascii */
    int sort;         /* sort_keys */
    jstr item_sep, key_sep;
} json_opts;

static void json_str(sb *b, jstr s, int ascii) {
    sb_puts(b, "\"");
    for (size_t i = 0; i < s.n;) {
        size_t len;
        uint32_t cp = u8_dec(s.p + i, s.n - i, &len);
        char esc[16];
        const char *simple = cp == '"' ? "\\\"" : cp == '\\' ? "\\\\" : cp == '\n' ? "\\n"
                           : cp == '\r' ? "\\r" : cp == '\t' ? "\\t" : cp == '\b' ? "\\b"
                           : cp == '\f' ? "\\f" : NULL;
        if (simple) sb_puts(b, simple);
        else if (cp < 0x20 || (ascii && cp >= 0x7f && cp < 0x10000)) {
            snprintf(esc, sizeof esc, "\\u%04x", cp);
            sb_puts(b, esc);
        } else if (ascii && cp >= 0x10000) {
            uint32_t v = cp - 0x10000;
            snprintf(esc, sizeof esc, "\\u%04x\\u%04x", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff));
            sb_puts(b, esc);
        } else sb_put(b, s.p + i, len);
        i += len;
    }
    sb_puts(b, "\"");
}

static void json_nl(sb *b, const json_opts *o, int level) {
    if (o->indent < 0) return;
    sb_puts(b, "\n");
    for (int i = 0; i < o->indent * level; i++) sb_puts(b, " ");
}

static void json_dump(jt *c, sb *b, jv v, const json_opts *o, int level, int line);

static void json_dict(jt *c, sb *b, jdict *d, const json_opts *o, int level, int line) {
    if (d->n == 0) {
        sb_puts(b, "{}");
        return;
    }
    int *order = jt_alloc(c, (size_t)d->n * sizeof *order);
    for (int i = 0; i < d->n; i++) order[i] = i;
    for (int i = 1; o->sort && i < d->n; i++) /* insertion sort: dicts are small */
        for (int k = i; k > 0 && compare(c, v_str(d->k[order[k - 1]]), v_str(d->k[order[k]]), line) > 0; k--) {
            int t = order[k];
            order[k] = order[k - 1];
            order[k - 1] = t;
        }
    sb_puts(b, "{");
    for (int i = 0; i < d->n; i++) {
        if (i) sb_put(b, o->item_sep.p, o->item_sep.n);
        json_nl(b, o, level + 1);
        json_str(b, d->k[order[i]], o->ascii);
        sb_put(b, o->key_sep.p, o->key_sep.n);
        json_dump(c, b, d->v[order[i]], o, level + 1, line);
    }
    json_nl(b, o, level);
    sb_puts(b, "}");
}

/* json.dumps as transformers' tojson calls it. */
static void json_dump(jt *c, sb *b, jv v, const json_opts *o, int level, int line) {
    char buf[64];
    if (level > 100) jt_fail(c, LOUPE_ERR_FORMAT, line, "tojson: value nested too deeply");
    switch (v.t) {
    case J_NONE: sb_puts(b, "null"); return;
    case J_BOOL: sb_puts(b, v.u.b ? "true" : "false"); return;
    case J_INT: snprintf(buf, sizeof buf, "%lld", (long long)v.u.i); sb_puts(b, buf); return;
    case J_FLOAT:
        if (isnan(v.u.f)) sb_puts(b, "NaN");
        else if (isinf(v.u.f)) sb_puts(b, v.u.f < 0 ? "-Infinity" : "Infinity");
        else { fmt_pyfloat(v.u.f, buf, sizeof buf); sb_puts(b, buf); }
        return;
    case J_STR: json_str(b, v.u.s, o->ascii); return;
    case J_LIST:
        if (v.u.l->n == 0) {
            sb_puts(b, "[]");
            return;
        }
        sb_puts(b, "[");
        for (int i = 0; i < v.u.l->n; i++) {
            if (i) sb_put(b, o->item_sep.p, o->item_sep.n);
            json_nl(b, o, level + 1);
            json_dump(c, b, v.u.l->v[i], o, level + 1, line);
        }
        json_nl(b, o, level);
        sb_puts(b, "]");
        return;
    case J_DICT:
        if (!v.u.d->ns) {
            json_dict(c, b, v.u.d, o, level, line);
            return;
        }
        break;
    default: break;
    }
    jt_fail(c, LOUPE_ERR_FORMAT, line, "tojson: object of type '%s' is not JSON serializable", type_name(v));
}

/* ================================================================ filters */

static jv f_tojson(jt *c, jv v, jargs *a, int line) {
    jv ind = arg(a, 1, "indent", v_none()), sep = arg(a, 2, "separators", v_none());
    json_opts o = {-1, truthy(arg(a, 0, "ensure_ascii", v_bool(0))),
                   truthy(arg(a, 3, "sort_keys", v_bool(0))), js(", "), js(": ")};
    if (is_intlike(ind)) {
        o.indent = (int)(ival(ind) < 0 ? 0 : ival(ind) > 64 ? 64 : ival(ind));
        o.item_sep = js(",");
    } else if (ind.t != J_NONE) {
        jt_fail(c, LOUPE_ERR_UNSUPPORTED, line, "tojson: indent must be an integer");
    }
    if (sep.t == J_LIST && sep.u.l->n == 2) {
        o.item_sep = want_str(c, sep.u.l->v[0], "tojson separators", line);
        o.key_sep = want_str(c, sep.u.l->v[1], "tojson separators", line);
    }
    sb b = {c, NULL, 0, 0};
    json_dump(c, &b, v, &o, 0, line);
    return v_str(sb_str(&b));
}

static jv f_trim(jt *c, jv v, jargs *a, int line) {
    jv ch = arg(a, 0, "chars", v_none());
    jstr set = ch.t == J_NONE ? (jstr){0} : want_str(c, ch, "trim", line);
    return v_str(str_strip(to_str(c, v), ch.t == J_NONE ? NULL : &set, 1, 1));
}

static jv f_length(jt *c, jv v, jargs *a, int line) {
    (void)a;
    switch (v.t) {
    case J_UNDEF: return v_int(0);
    case J_STR: return v_int(u8_len(v.u.s));
    case J_LIST: return v_int(v.u.l->n);
    case J_DICT: if (!v.u.d->ns) return v_int(v.u.d->n); break;
    default: break;
    }
    jt_fail(c, LOUPE_ERR_FORMAT, line, "object of type '%s' has no length", type_name(v));
}

static jv f_string(jt *c, jv v, jargs *a, int line) { (void)a; (void)line; return v_str(to_str(c, v)); }
static jv f_safe(jt *c, jv v, jargs *a, int line) { (void)c; (void)a; (void)line; return v; }
static jv f_upper(jt *c, jv v, jargs *a, int line) { (void)a; (void)line; return v_str(str_case(c, to_str(c, v), 1)); }
static jv f_lower(jt *c, jv v, jargs *a, int line) { (void)a; (void)line; return v_str(str_case(c, to_str(c, v), 0)); }
static jv f_capitalize(jt *c, jv v, jargs *a, int line) { (void)a; (void)line; return v_str(str_case(c, to_str(c, v), 2)); }

/* Jinja's title: words start after '-', whitespace or an opening bracket. */
static jv f_title(jt *c, jv v, jargs *a, int line) {
    (void)a; (void)line;
    jstr s = to_str(c, v);
    char *o = jt_alloc(c, s.n + 1);
    int start = 1;
    for (size_t i = 0; i < s.n; i++) {
        unsigned char ch = (unsigned char)s.p[i];
        o[i] = (char)(start ? toupper(ch) : tolower(ch));
        start = strchr("-({[< \t\n\r\f\v", ch) != NULL && ch;
    }
    return v_str((jstr){o, s.n});
}

static jv f_default(jt *c, jv v, jargs *a, int line) {
    (void)c; (void)line;
    jv d = arg(a, 0, "default_value", v_cstr(""));
    int boolean = truthy(arg(a, 1, "boolean", v_bool(0)));
    return v.t == J_UNDEF || (boolean && !truthy(v)) ? d : v;
}

static jv f_first(jt *c, jv v, jargs *a, int line) {
    (void)a;
    jlist *l = iterate(c, v, line);
    return l->n ? l->v[0] : v_undef(js("first"));
}

static jv f_last(jt *c, jv v, jargs *a, int line) {
    (void)a;
    jlist *l = iterate(c, v, line);
    return l->n ? l->v[l->n - 1] : v_undef(js("last"));
}

static jv f_list(jt *c, jv v, jargs *a, int line) {
    (void)a;
    jlist *l = iterate(c, v, line);
    jv r = v_list(c, l->n);
    if (l->n) memcpy(r.u.l->v, l->v, (size_t)l->n * sizeof(jv));
    return r;
}

/* Attribute path "a.b" of an item (selectattr, map, join, sort). */
static jv attr_path(jt *c, jv item, jstr path, int line) {
    size_t i = 0;
    while (i <= path.n) {
        size_t j = i;
        while (j < path.n && path.p[j] != '.') j++;
        jstr part = {path.p + i, j - i};
        char *end;
        long idx = strtol(part.p, &end, 10);
        if (part.n && end == part.p + part.n && item.t == J_LIST) item = get_item(c, item, v_int(idx), line);
        else item = get_item(c, item, v_str(part), line);
        i = j + 1;
    }
    return item;
}

static jv f_join(jt *c, jv v, jargs *a, int line) {
    jstr sep = to_str(c, arg(a, 0, "d", v_cstr("")));
    jv at = arg(a, 1, "attribute", v_none());
    jlist *l = iterate(c, v, line);
    sb b = {c, NULL, 0, 0};
    for (int i = 0; i < l->n; i++) {
        if (i) sb_put(&b, sep.p, sep.n);
        jv item = at.t == J_STR ? attr_path(c, l->v[i], at.u.s, line) : l->v[i];
        write_str(&b, item, 0);
    }
    return v_str(sb_str(&b));
}

static jv f_items(jt *c, jv v, jargs *a, int line) {
    if (v.t == J_UNDEF) return v_list(c, 0);
    if (v.t != J_DICT || v.u.d->ns) jt_fail(c, LOUPE_ERR_FORMAT, line, "items: '%s' is not a mapping", type_name(v));
    return call_dict_method(c, FN_ITEMS, v.u.d, a);
}

static jv f_replace(jt *c, jv v, jargs *a, int line) {
    (void)line;
    jv cnt = arg(a, 2, "count", v_none());
    return v_str(str_replace(c, to_str(c, v), to_str(c, arg(a, 0, "old", v_cstr(""))),
                             to_str(c, arg(a, 1, "new", v_cstr(""))), is_intlike(cnt) ? ival(cnt) : -1));
}

static jv f_int(jt *c, jv v, jargs *a, int line) {
    (void)line;
    jv d = arg(a, 0, "default", v_int(0));
    if (is_intlike(v)) return v_int(ival(v));
    if (v.t == J_FLOAT) return isfinite(v.u.f) && fabs(v.u.f) < 9.2e18 ? v_int((int64_t)v.u.f) : d;
    if (v.t == J_STR) {
        jstr s = str_strip(v.u.s, NULL, 1, 1);
        char buf[64], *end;
        if (s.n == 0 || s.n >= sizeof buf) return d;
        memcpy(buf, s.p, s.n);
        buf[s.n] = 0;
        errno = 0;
        long long i = strtoll(buf, &end, 10);
        if (*end == 0 && errno == 0) return v_int(i);
        double f = strtod(buf, &end);
        if (*end == 0 && isfinite(f) && fabs(f) < 9.2e18) return v_int((int64_t)f);
    }
    (void)c;
    return d;
}

static jv f_float(jt *c, jv v, jargs *a, int line) {
    (void)c; (void)line;
    jv d = arg(a, 0, "default", v_float(0));
    if (is_num(v)) return v_float(num(v));
    if (v.t == J_STR) {
        jstr s = str_strip(v.u.s, NULL, 1, 1);
        char buf[64], *end;
        if (s.n == 0 || s.n >= sizeof buf) return d;
        memcpy(buf, s.p, s.n);
        buf[s.n] = 0;
        double f = strtod(buf, &end);
        if (*end == 0) return v_float(f);
    }
    return d;
}

static jv f_abs(jt *c, jv v, jargs *a, int line) {
    (void)a;
    if (v.t == J_FLOAT) return v_float(fabs(v.u.f));
    if (is_intlike(v)) return ival(v) < 0 ? arith_int(c, OP_SUB, 0, ival(v), line) : v_int(ival(v));
    jt_fail(c, LOUPE_ERR_FORMAT, line, "abs: bad operand type '%s'", type_name(v));
}

static jv f_reverse(jt *c, jv v, jargs *a, int line) {
    (void)a;
    if (v.t == J_STR) {
        jv sss[3] = {v_none(), v_none(), v_int(-1)};
        return do_slice(c, v, sss, line);
    }
    jlist *l = iterate(c, v, line);
    jv r = v_list(c, l->n);
    for (int i = 0; i < l->n; i++) r.u.l->v[i] = l->v[l->n - 1 - i];
    return r;
}

/* Sort key: the attribute, lower-cased strings unless case-sensitive. */
static jv sort_key(jt *c, jv item, jv at, int cs, int line) {
    if (at.t == J_STR) item = attr_path(c, item, at.u.s, line);
    if (!cs && item.t == J_STR) item = v_str(str_case(c, item.u.s, 0));
    return item;
}

static jv f_sort(jt *c, jv v, jargs *a, int line) {
    int rev = truthy(arg(a, 0, "reverse", v_bool(0))), cs = truthy(arg(a, 1, "case_sensitive", v_bool(0)));
    jv at = arg(a, 2, "attribute", v_none());
    jv r = f_list(c, v, a, line);
    jlist *l = r.u.l;
    jv *keys = jt_alloc(c, (size_t)(l->n + 1) * sizeof(jv));
    for (int i = 0; i < l->n; i++) keys[i] = sort_key(c, l->v[i], at, cs, line);
    for (int i = 1; i < l->n; i++) /* stable insertion sort */
        for (int k = i; k > 0; k--) {
            int cmpv = compare(c, keys[k - 1], keys[k], line);
            if (rev ? cmpv >= 0 : cmpv <= 0) break;
            jv t = keys[k]; keys[k] = keys[k - 1]; keys[k - 1] = t;
            t = l->v[k]; l->v[k] = l->v[k - 1]; l->v[k - 1] = t;
        }
    return r;
}

static jv f_unique(jt *c, jv v, jargs *a, int line) {
    int cs = truthy(arg(a, 0, "case_sensitive", v_bool(0)));
    jv at = arg(a, 1, "attribute", v_none());
    jlist *l = iterate(c, v, line);
    jv r = v_list(c, l->n), *seen = jt_alloc(c, (size_t)(l->n + 1) * sizeof(jv));
    r.u.l->n = 0;
    for (int i = 0; i < l->n; i++) {
        jv k = sort_key(c, l->v[i], at, cs, line);
        int dup = 0;
        for (int j = 0; j < r.u.l->n && !dup; j++) dup = equal(seen[j], k);
        if (dup) continue;
        seen[r.u.l->n] = k;
        r.u.l->v[r.u.l->n++] = l->v[i];
    }
    return r;
}

static jv f_indent(jt *c, jv v, jargs *a, int line) {
    jv w = arg(a, 0, "width", v_int(4));
    int first = truthy(arg(a, 1, "first", v_bool(0))), blank = truthy(arg(a, 2, "blank", v_bool(0)));
    jstr ind = w.t == J_STR ? w.u.s : (jstr){"                                ", is_intlike(w) && ival(w) >= 0 && ival(w) <= 32 ? (size_t)ival(w) : 4};
    sb t = {c, NULL, 0, 0};
    write_str(&t, v, 0);
    sb_puts(&t, "\n");
    jlist *lines = str_splitlines(c, sb_str(&t)).u.l;
    sb b = {c, NULL, 0, 0};
    if (first) sb_put(&b, ind.p, ind.n);
    for (int i = 0; i < lines->n; i++) {
        jstr ln = lines->v[i].u.s;
        if (i) {
            sb_puts(&b, "\n");
            if (blank || ln.n) sb_put(&b, ind.p, ind.n);
        }
        sb_put(&b, ln.p, ln.n);
    }
    (void)line;
    return v_str(sb_str(&b));
}

/* select/reject/selectattr/rejectattr share this: keep items whose
 * (attribute) passes the named test (truthiness when none is given). */
static jv select_items(jt *c, jv v, jargs *a, int line, int by_attr, int keep_if) {
    int base = by_attr ? 1 : 0;
    jv at = by_attr ? arg(a, 0, NULL, v_none()) : v_none();
    if (by_attr && at.t != J_STR) jt_fail(c, LOUPE_ERR_FORMAT, line, "selectattr/rejectattr need an attribute name");
    jv tname = arg(a, base, NULL, v_none());
    test_fn t = NULL;
    if (tname.t == J_STR) {
        t = find_test(tname.u.s);
        if (!t) jt_fail(c, LOUPE_ERR_UNSUPPORTED, line, "test '%.*s' is not supported", (int)tname.u.s.n, tname.u.s.p);
    }
    jargs ta = {a->n > base + 1 ? a->n - base - 1 : 0, a->n > base + 1 ? a->v + base + 1 : NULL, 0, NULL, NULL};
    jlist *l = iterate(c, v, line);
    jv r = v_list(c, l->n);
    r.u.l->n = 0;
    for (int i = 0; i < l->n; i++) {
        jv x = by_attr ? attr_path(c, l->v[i], at.u.s, line) : l->v[i];
        int ok = t ? t(c, x, &ta, line) : truthy(x);
        if (ok == keep_if) r.u.l->v[r.u.l->n++] = l->v[i];
    }
    return r;
}

static jv f_select(jt *c, jv v, jargs *a, int line) { return select_items(c, v, a, line, 0, 1); }
static jv f_reject(jt *c, jv v, jargs *a, int line) { return select_items(c, v, a, line, 0, 0); }
static jv f_selectattr(jt *c, jv v, jargs *a, int line) { return select_items(c, v, a, line, 1, 1); }
static jv f_rejectattr(jt *c, jv v, jargs *a, int line) { return select_items(c, v, a, line, 1, 0); }

static jv f_map(jt *c, jv v, jargs *a, int line) {
    jv at = arg(a, -1, "attribute", v_none());
    jlist *l = iterate(c, v, line);
    jv r = v_list(c, l->n);
    if (at.t == J_STR) {
        jv dflt = arg(a, -1, "default", v_undef(at.u.s));
        for (int i = 0; i < l->n; i++) {
            jv x = attr_path(c, l->v[i], at.u.s, line);
            r.u.l->v[i] = x.t == J_UNDEF ? dflt : x;
        }
        return r;
    }
    jv fname = arg(a, 0, NULL, v_none());
    filter_fn f = fname.t == J_STR ? find_filter(fname.u.s) : NULL;
    if (!f) jt_fail(c, LOUPE_ERR_UNSUPPORTED, line, "map: needs attribute= or a supported filter name");
    jargs fa = {a->n - 1, a->v + 1, a->nk, a->k, a->kv};
    for (int i = 0; i < l->n; i++) r.u.l->v[i] = f(c, l->v[i], &fa, line);
    return r;
}

static const struct {
    const char *name;
    filter_fn fn;
} jt_filters[] = {
    {"trim", f_trim},         {"length", f_length},       {"count", f_length},
    {"tojson", f_tojson},     {"string", f_string},       {"safe", f_safe},
    {"upper", f_upper},       {"lower", f_lower},         {"capitalize", f_capitalize},
    {"title", f_title},       {"default", f_default},     {"d", f_default},
    {"first", f_first},       {"last", f_last},           {"list", f_list},
    {"join", f_join},         {"items", f_items},         {"replace", f_replace},
    {"int", f_int},           {"float", f_float},         {"abs", f_abs},
    {"reverse", f_reverse},   {"sort", f_sort},           {"unique", f_unique},
    {"indent", f_indent},     {"select", f_select},       {"reject", f_reject},
    {"selectattr", f_selectattr}, {"rejectattr", f_rejectattr}, {"map", f_map},
};

static filter_fn find_filter(jstr name) {
    for (size_t k = 0; k < sizeof jt_filters / sizeof jt_filters[0]; k++)
        if (jstr_is(name, jt_filters[k].name)) return jt_filters[k].fn;
    return NULL;
}

/* ================================================================== tests */

#define TEST0(fname, expr_) \
    static int fname(jt *c, jv v, jargs *a, int line) { (void)c; (void)a; (void)line; return (expr_); }

TEST0(t_defined, v.t != J_UNDEF)
TEST0(t_undefined, v.t == J_UNDEF)
TEST0(t_none, v.t == J_NONE)
TEST0(t_boolean, v.t == J_BOOL)
TEST0(t_true, v.t == J_BOOL && v.u.b)
TEST0(t_false, v.t == J_BOOL && !v.u.b)
TEST0(t_integer, v.t == J_INT)
TEST0(t_float, v.t == J_FLOAT)
TEST0(t_number, is_num(v))
TEST0(t_string, v.t == J_STR)
TEST0(t_mapping, v.t == J_DICT && !v.u.d->ns)
TEST0(t_iterable, v.t == J_UNDEF || v.t == J_STR || v.t == J_LIST || (v.t == J_DICT && !v.u.d->ns))
TEST0(t_sequence, v.t == J_STR || v.t == J_LIST || (v.t == J_DICT && !v.u.d->ns))
TEST0(t_callable, v.t == J_FUNC)

static int t_odd_even(jt *c, jv v, int odd, int line) {
    if (!is_intlike(v)) jt_fail(c, LOUPE_ERR_FORMAT, line, "odd/even test on '%s'", type_name(v));
    return (int)(ival(v) & 1) == odd;
}
static int t_odd(jt *c, jv v, jargs *a, int line) { (void)a; return t_odd_even(c, v, 1, line); }
static int t_even(jt *c, jv v, jargs *a, int line) { (void)a; return t_odd_even(c, v, 0, line); }

static int t_divisibleby(jt *c, jv v, jargs *a, int line) {
    jv d = arg(a, 0, "num", v_none());
    if (!is_intlike(v) || !is_intlike(d) || ival(d) == 0)
        jt_fail(c, LOUPE_ERR_FORMAT, line, "divisibleby needs non-zero integers");
    return ival(v) % ival(d) == 0;
}

static int t_cmp(jt *c, jv v, jargs *a, int line, int op) {
    jv o = arg(a, 0, NULL, v_none());
    if (op == OP_EQ) return equal(v, o);
    if (op == OP_NE) return !equal(v, o);
    int r = compare(c, v, o, line);
    return op == OP_LT ? r < 0 : op == OP_LE ? r <= 0 : op == OP_GT ? r > 0 : r >= 0;
}
static int t_eq(jt *c, jv v, jargs *a, int line) { return t_cmp(c, v, a, line, OP_EQ); }
static int t_ne(jt *c, jv v, jargs *a, int line) { return t_cmp(c, v, a, line, OP_NE); }
static int t_lt(jt *c, jv v, jargs *a, int line) { return t_cmp(c, v, a, line, OP_LT); }
static int t_le(jt *c, jv v, jargs *a, int line) { return t_cmp(c, v, a, line, OP_LE); }
static int t_gt(jt *c, jv v, jargs *a, int line) { return t_cmp(c, v, a, line, OP_GT); }
static int t_ge(jt *c, jv v, jargs *a, int line) { return t_cmp(c, v, a, line, OP_GE); }
static int t_in(jt *c, jv v, jargs *a, int line) { return contains(c, arg(a, 0, NULL, v_none()), v, line); }

static int t_sameas(jt *c, jv v, jargs *a, int line) {
    (void)c; (void)line;
    jv o = arg(a, 0, NULL, v_none());
    if (v.t != o.t) return 0;
    if (v.t == J_NONE || v.t == J_UNDEF) return 1;
    if (v.t == J_BOOL) return v.u.b == o.u.b;
    return equal(v, o) && (v.t == J_INT || v.t == J_FLOAT || memcmp(&v.u, &o.u, sizeof v.u) == 0);
}

static int t_case(jt *c, jv v, int upper, int line) {
    jstr s = want_str(c, v, upper ? "upper test" : "lower test", line);
    int cased = 0;
    for (size_t i = 0; i < s.n; i++) {
        unsigned char ch = (unsigned char)s.p[i];
        if (upper ? islower(ch) : isupper(ch)) return 0;
        cased |= isalpha(ch) != 0;
    }
    return cased;
}
static int t_lower(jt *c, jv v, jargs *a, int line) { (void)a; return t_case(c, v, 0, line); }
static int t_upper(jt *c, jv v, jargs *a, int line) { (void)a; return t_case(c, v, 1, line); }

static const struct {
    const char *name;
    test_fn fn;
} jt_tests[] = {
    {"defined", t_defined},   {"undefined", t_undefined}, {"none", t_none},
    {"boolean", t_boolean},   {"true", t_true},           {"false", t_false},
    {"integer", t_integer},   {"float", t_float},         {"number", t_number},
    {"string", t_string},     {"mapping", t_mapping},     {"iterable", t_iterable},
    {"sequence", t_sequence}, {"callable", t_callable},   {"odd", t_odd},
    {"even", t_even},         {"divisibleby", t_divisibleby}, {"sameas", t_sameas},
    {"eq", t_eq},             {"equalto", t_eq},          {"==", t_eq},
    {"ne", t_ne},             {"!=", t_ne},               {"lt", t_lt},
    {"lessthan", t_lt},       {"le", t_le},               {"gt", t_gt},
    {"greaterthan", t_gt},    {"ge", t_ge},               {"in", t_in},
    {"lower", t_lower},       {"upper", t_upper},
};

static test_fn find_test(jstr name) {
    for (size_t k = 0; k < sizeof jt_tests / sizeof jt_tests[0]; k++)
        if (jstr_is(name, jt_tests[k].name)) return jt_tests[k].fn;
    return NULL;
}

/* ================================================================== entry */

static jv from_json(jt *c, const cJSON *j, int depth) {
    if (depth > 100) jt_fail(c, LOUPE_ERR_ARG, 0, "template variables nested too deeply");
    if (cJSON_IsBool(j)) return v_bool(cJSON_IsTrue(j));
    if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        return d == floor(d) && fabs(d) < 9007199254740992.0 ? v_int((int64_t)d) : v_float(d);
    }
    if (cJSON_IsString(j)) return v_str(jstr_dup(c, j->valuestring, strlen(j->valuestring)));
    if (cJSON_IsArray(j)) {
        jv l = v_list(c, cJSON_GetArraySize(j));
        int i = 0;
        for (const cJSON *x = j->child; x && i < l.u.l->n; x = x->next) l.u.l->v[i++] = from_json(c, x, depth + 1);
        return l;
    }
    if (cJSON_IsObject(j)) {
        jv d = v_dict(c);
        for (const cJSON *x = j->child; x; x = x->next)
            dict_set(c, d.u.d, jstr_dup(c, x->string, strlen(x->string)), from_json(c, x, depth + 1));
        return d;
    }
    return v_none();
}

/* Jinja reads templates with universal newlines and drops one final "\n". */
static jstr normalize(jt *c, const char *t) {
    size_t n = strlen(t), k = 0;
    char *s = jt_alloc(c, n + 1);
    for (size_t i = 0; i < n; i++) {
        if (t[i] == '\r') {
            s[k++] = '\n';
            if (i + 1 < n && t[i + 1] == '\n') i++;
        } else {
            s[k++] = t[i];
        }
    }
    if (k && s[k - 1] == '\n') k--;
    s[k] = 0;
    return (jstr){s, k};
}

static void render(jt *c, const char *tmpl, const cJSON *ctx) {
    jstr src = normalize(c, tmpl);
    lexer L;
    lex(c, src.p, src.n, &L);
    P p = {c, L.v, 0, 0, 0};
    body top = parse_body(&p, NULL, 0, NULL, 0);
    scope *root = scope_new(c, NULL);
    c->root = root;
    static const struct { const char *name; int id; } globals[] = {
        {"namespace", FN_NAMESPACE}, {"raise_exception", FN_RAISE},
        {"strftime_now", FN_STRFTIME}, {"range", FN_RANGE}, {"dict", FN_DICT}};
    for (size_t k = 0; k < sizeof globals / sizeof globals[0]; k++)
        dict_set(c, &root->vars, js(globals[k].name), v_func(c, globals[k].id, v_none()));
    if (ctx && !cJSON_IsObject(ctx)) jt_fail(c, LOUPE_ERR_ARG, 0, "template variables must be a JSON object");
    for (const cJSON *x = ctx ? ctx->child : NULL; x; x = x->next)
        dict_set(c, &root->vars, jstr_dup(c, x->string, strlen(x->string)), from_json(c, x, 0));
    exec_body(c, root, &top);
}

loupe_status lp_template_render(const char *tmpl, const cJSON *ctx, char **out, size_t *out_len) {
    if (!tmpl || !out) return lp_fail(LOUPE_ERR_ARG, "lp_template_render: NULL argument");
    *out = NULL;
    jt *c = calloc(1, sizeof *c);
    if (!c) return lp_fail(LOUPE_ERR_NOMEM, "chat template: out of memory");
    if (setjmp(c->fail)) {
        loupe_status st = c->st;
        lp_fail(st, "%s", c->msg);
        jt_free(c);
        return st;
    }
    render(c, tmpl, ctx);
    out_put(c, "", 0);
    char *res = c->out ? c->out : malloc(1);
    if (!res) jt_fail(c, LOUPE_ERR_NOMEM, 0, "out of memory");
    res[c->n_out] = 0;
    if (out_len) *out_len = c->n_out;
    c->out = NULL;
    jt_free(c);
    *out = res;
    return LOUPE_OK;
}

/* ============================================================= public API */

/* For models that ship no template: plain "User:/Assistant:" turns after
 * an optional system text; BOS first when the model has one. */
const char lp_chat_fallback_template[] =
    "{{- bos_token if bos_token is defined else '' -}}\n"
    "{%- for message in messages -%}\n"
    "{%- if message.role == 'system' -%}\n"
    "{{ message.content | trim }}{{ '\\n\\n' }}\n"
    "{%- elif message.role == 'user' -%}\n"
    "User: {{ message.content | trim }}{{ '\\n' }}\n"
    "{%- elif message.role == 'assistant' -%}\n"
    "Assistant: {{ message.content | trim }}{{ '\\n' }}\n"
    "{%- else -%}\n"
    "{{ raise_exception('unknown role: ' ~ message.role) }}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}Assistant:{%- endif -%}\n";

const char *loupe_chat_template(const loupe_model *m) {
    if (!m || !m->tok) return NULL;
    const lp_tok_spec *s = lp_tok_get_spec(m->tok);
    return s && s->chat_template && s->chat_template[0] ? s->chat_template : NULL;
}

const char *loupe_chat_fallback_template(void) { return lp_chat_fallback_template; }

static int add_token_var(cJSON *ctx, const loupe_model *m, const char *key, int id) {
    if (id < 0 || id >= loupe_n_vocab(m)) return 1;
    const char *s = loupe_token_str(m, id);
    return !s || cJSON_AddStringToObject(ctx, key, s) != NULL;
}

static cJSON *chat_context(const loupe_model *m, const loupe_chat_message *msgs, int n, int agp) {
    cJSON *ctx = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(ctx, "messages");
    if (!arr) goto fail;
    for (int i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        if (!o || !cJSON_AddItemToArray(arr, o)) {
            cJSON_Delete(o);
            goto fail;
        }
        if (!cJSON_AddStringToObject(o, "role", msgs[i].role) ||
            !cJSON_AddStringToObject(o, "content", msgs[i].content))
            goto fail;
    }
    loupe_model_info info;
    loupe_model_get_info(m, &info);
    if (!cJSON_AddBoolToObject(ctx, "add_generation_prompt", agp) || !cJSON_AddNullToObject(ctx, "tools") ||
        !add_token_var(ctx, m, "bos_token", info.bos_id) || !add_token_var(ctx, m, "eos_token", info.eos_id))
        goto fail;
    return ctx;
fail:
    cJSON_Delete(ctx);
    return NULL;
}

loupe_status loupe_chat_render(const loupe_model *m, const loupe_chat_message *msgs, int n_msgs,
                               int add_generation_prompt, char **out) {
    if (!m || !out || n_msgs < 0 || (n_msgs && !msgs))
        return lp_fail(LOUPE_ERR_ARG, "loupe_chat_render: NULL argument");
    *out = NULL;
    for (int i = 0; i < n_msgs; i++)
        if (!msgs[i].role || !msgs[i].content)
            return lp_fail(LOUPE_ERR_ARG, "loupe_chat_render: message %d has a NULL role or content", i);
    cJSON *ctx = chat_context(m, msgs, n_msgs, add_generation_prompt);
    if (!ctx) return lp_fail(LOUPE_ERR_NOMEM, "loupe_chat_render: out of memory");
    const char *tmpl = loupe_chat_template(m);
    loupe_status st = lp_template_render(tmpl ? tmpl : lp_chat_fallback_template, ctx, out, NULL);
    cJSON_Delete(ctx);
    return st;
}

loupe_status loupe_template_render(const char *tmpl, const char *vars_json, char **out) {
    if (!tmpl || !out) return lp_fail(LOUPE_ERR_ARG, "loupe_template_render: NULL argument");
    *out = NULL;
    cJSON *ctx = NULL;
    if (vars_json) {
        ctx = cJSON_Parse(vars_json);
        if (!ctx) {
            const char *at = cJSON_GetErrorPtr();
            return lp_fail(LOUPE_ERR_FORMAT, "template variables: invalid JSON near '%.20s'", at ? at : "");
        }
    }
    loupe_status st = lp_template_render(tmpl, ctx, out, NULL);
    cJSON_Delete(ctx);
    return st;
}
