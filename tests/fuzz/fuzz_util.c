/*
 * fuzz_util.c — scratch files, heap-backed file mappings and the invariant
 * checks shared by the fuzz targets (see fuzz_util.h).
 */
#include "fuzz_util.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef FZ_SHARED_DEFAULT
#define FZ_SHARED_DEFAULT "../shared"
#endif

void fz_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fuzz invariant: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

/* ------------------------------------------------------------ scratch files */

static char fz_dir[512];

/* Removes dir and what it holds (targets make at most one level of
 * subdirectories). */
static void fz_remove_tree(const char *dir, int depth) {
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        char p[1024];
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
                if (unlink(p) != 0 && depth < 2) fz_remove_tree(p, depth + 1);
            }
        closedir(d);
    }
    rmdir(dir);
}

static void fz_cleanup(void) { fz_remove_tree(fz_dir, 0); }

static void fz_init_dir(void) {
    const char *base = getenv("FZ_TMP");
    if (!base || !*base) base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
    if (!base || !*base) base = "/tmp";
    snprintf(fz_dir, sizeof fz_dir, "%s/loupe-fuzz-%ld", base, (long)getpid());
    if (mkdir(fz_dir, 0700) != 0 && errno != EEXIST)
        fz_fail("cannot create scratch dir %s: %s", fz_dir, strerror(errno));
    atexit(fz_cleanup);
}

const char *fz_path(const char *name) {
    static char ring[8][640];
    static int next;
    if (!fz_dir[0]) fz_init_dir();
    char *p = ring[next++ % 8];
    snprintf(p, sizeof ring[0], "%s/%s", fz_dir, name);
    return p;
}

const char *fz_write(const char *name, const uint8_t *data, size_t size) {
    const char *path = fz_path(name);
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0)
        fz_fail("cannot write %s", path);
    return path;
}

void fz_remove(const char *name) { unlink(fz_path(name)); }

const char *fz_shared(const char *rel) {
    static char buf[1024];
    const char *base = getenv("LOUPE_SHARED");
    snprintf(buf, sizeof buf, "%s/%s", base && *base ? base : FZ_SHARED_DEFAULT, rel);
    return buf;
}

/* ------------------------------------------------------------ heap mappings */

/* The library maps files PROT_READ / MAP_PRIVATE; those mappings become
 * exact-size heap buffers so ASan sees every byte past the end. */
void *__real_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
int __real_munmap(void *addr, size_t len);
void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
int __wrap_munmap(void *addr, size_t len);

#define FZ_MAX_MAPS 64
static struct {
    void *p;
    size_t n;
} fz_maps[FZ_MAX_MAPS];

void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    int slot = -1;
    for (int i = 0; i < FZ_MAX_MAPS && slot < 0; i++)
        if (!fz_maps[i].p) slot = i;
    if (addr || fd < 0 || prot != PROT_READ || flags != MAP_PRIVATE || off != 0 || slot < 0)
        return __real_mmap(addr, len, prot, flags, fd, off);
    void *p = NULL;
    if (posix_memalign(&p, 4096, len ? len : 1) != 0) {
        errno = ENOMEM;
        return MAP_FAILED;
    }
    for (size_t got = 0; got < len;) {
        ssize_t r = pread(fd, (char *)p + got, len - got, (off_t)got);
        if (r <= 0) {
            free(p);
            errno = r < 0 ? errno : EIO;
            return MAP_FAILED;
        }
        got += (size_t)r;
    }
    fz_maps[slot].p = p;
    fz_maps[slot].n = len;
    return p;
}

int __wrap_munmap(void *addr, size_t len) {
    for (int i = 0; i < FZ_MAX_MAPS; i++)
        if (fz_maps[i].p == addr && addr) {
            if (fz_maps[i].n != len)
                fz_fail("munmap of %zu bytes of a %zu-byte mapping", len, fz_maps[i].n);
            free(addr);
            fz_maps[i].p = NULL;
            return 0;
        }
    return __real_munmap(addr, len);
}

/* ------------------------------------------------------------ checks */

void fz_check_error(loupe_status st, const char *what) {
    if (st == LOUPE_OK) return;
    const char *msg = loupe_last_error();
    if (!msg || !*msg) fz_fail("%s: %s without an error message", what, loupe_status_name(st));
}

static volatile uint8_t fz_sink;

/* [p, p + n) inside one of ts's mappings; touches its ends. */
static void fz_check_range(const lp_tensor_set *ts, const void *p, uint64_t n, const char *what,
                           const char *name) {
    const uint8_t *b = p;
    for (int i = 0; i < ts->n_maps; i++) {
        const lp_mapping *m = &ts->maps[i];
        if (!m->data || b < m->data || b > m->data + m->size) continue;
        if (n > (uint64_t)(m->data + m->size - b)) break;
        if (n) fz_sink ^= b[0] ^ b[n - 1];
        return;
    }
    if (n) fz_fail("%s %s: %llu bytes outside every mapping", what, name, (unsigned long long)n);
}

static uint64_t fz_meta_elem_size(lp_meta_type t) {
    switch (t) {
    case LP_META_U8: case LP_META_I8: case LP_META_BOOL: return 1;
    case LP_META_U16: case LP_META_I16: return 2;
    case LP_META_U32: case LP_META_I32: case LP_META_F32: return 4;
    case LP_META_U64: case LP_META_I64: case LP_META_F64: return 8;
    default: return 0;
    }
}

void fz_check_tensor_set(const lp_tensor_set *ts) {
    for (int i = 0; i < ts->n; i++) {
        const lp_tensor_info *t = &ts->t[i];
        uint64_t nel = 1;
        for (int d = 0; d < t->n_dims; d++) {
            if (t->shape[d] < 0) fz_fail("tensor %s: negative dimension", t->name);
            nel *= (uint64_t)t->shape[d];
        }
        if (t->nbytes != lp_dtype_bytes(t->type, nel))
            fz_fail("tensor %s: %llu bytes for %llu elements", t->name,
                    (unsigned long long)t->nbytes, (unsigned long long)nel);
        fz_check_range(ts, t->data, t->nbytes, "tensor", t->name);
        if (lp_tensor_find(ts, t->name) != t) fz_fail("tensor %s: not found by name", t->name);
    }
    for (int i = 0; i < ts->n_meta; i++) {
        const lp_meta *m = &ts->meta[i];
        if (m->type == LP_META_STRING) fz_check_range(ts, m->v.str.s, m->v.str.len, "meta", m->key);
        if (m->type != LP_META_ARRAY) continue;
        if (m->arr_type == LP_META_STRING) {
            for (uint64_t k = 0; k < m->arr_n; k++)
                fz_check_range(ts, m->arr_strs[k], m->arr_lens[k], "meta string", m->key);
        } else if (fz_meta_elem_size(m->arr_type)) {
            fz_check_range(ts, m->arr_data, m->arr_n * fz_meta_elem_size(m->arr_type),
                           "meta array", m->key);
        }
    }
}

/* ------------------------------------------------------------ tokenizer */

static const char *const fz_texts[] = {
    "Hello world",
    "  leading spaces\n\tand tabs  ",
    "h\xc3\xa9llo w\xc3\xb6rld \xe2\x80\x94 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x8e\x89",
    "12345 67.8 don't I'll",
    "<s></s><|endoftext|><unk><|im_start|>",
    "",
};

static void fz_encode_decode(const lp_tokenizer *tok, const char *text, size_t len) {
    int nv = lp_tok_n_vocab(tok), maxb = lp_tok_max_token_bytes(tok);
    size_t cap = 3 * ((size_t)maxb + 3);
    char *buf = malloc(cap);
    if (!buf) fz_fail("out of memory");
    for (int mode = 0; mode < 4; mode++) {
        int32_t *ids = NULL;
        size_t n = 0;
        loupe_status st = lp_tok_encode(tok, text, len, mode & 1, mode >> 1, &ids, &n);
        fz_check_error(st, "lp_tok_encode");
        lp_detok d;
        lp_detok_init(&d, tok);
        for (size_t i = 0; st == LOUPE_OK && i < n; i++) {
            if (ids[i] < 0 || ids[i] >= nv) fz_fail("encode gave id %d of %d", ids[i], nv);
            int b = lp_tok_bytes(tok, ids[i], buf, cap);
            if (b < 0 || b > maxb) fz_fail("token %d: %d bytes (max %d)", ids[i], b, maxb);
            if (!lp_tok_piece(tok, ids[i])) fz_fail("token %d: no piece", ids[i]);
            lp_detok_push(&d, tok, ids[i], buf, cap);
        }
        lp_detok_flush(&d, buf, cap);
        free(ids);
    }
    free(buf);
}

void fz_exercise_tokenizer(const lp_tokenizer *tok, const char *text, size_t len) {
    for (size_t i = 0; i < sizeof fz_texts / sizeof *fz_texts; i++)
        fz_encode_decode(tok, fz_texts[i], strlen(fz_texts[i]));
    if (text) fz_encode_decode(tok, text, len);
    int nv = lp_tok_n_vocab(tok);
    char buf[16];
    for (int32_t id = -1; id <= nv; id += nv > 64 ? nv / 32 : 1) {
        int b = lp_tok_bytes(tok, id, buf, sizeof buf);
        if ((id < 0 || id >= nv) != (b < 0)) fz_fail("lp_tok_bytes(%d) = %d of %d", id, b, nv);
    }
}

/* ------------------------------------------------------------ models */

static void fz_run_model(loupe_model *m) {
    char report[8192];
    loupe_model_describe(m, report, sizeof report);
    loupe_model_info info;
    loupe_model_get_info(m, &info);
    int nv = loupe_n_vocab(m);
    if (nv < 1) fz_fail("model with %d tokens", nv);
    int32_t ids[64];
    size_t n = 0;
    loupe_status st = loupe_tokenize(m, "Hello world", 11, 1, 1, ids, 64, &n);
    fz_check_error(st, "loupe_tokenize");
    for (size_t i = 0; st == LOUPE_OK && i < n; i++) {
        if (ids[i] < 0 || ids[i] >= nv) fz_fail("tokenize gave id %d of %d", ids[i], nv);
        char b[64];
        size_t nb;
        fz_check_error(loupe_token_bytes(m, ids[i], b, sizeof b, &nb), "loupe_token_bytes");
        if (!loupe_token_str(m, ids[i])) fz_fail("token %d has no string", ids[i]);
    }
    const char *tmpl = loupe_chat_template(m);
    if (tmpl) {
        loupe_chat_message msg = {"user", "Hi"};
        char *out = NULL;
        fz_check_error(loupe_chat_render(m, &msg, 1, 1, &out), "loupe_chat_render");
        free(out);
    }
    loupe_session_params sp = {.n_ctx = info.n_ctx < 4 ? info.n_ctx : 4, .n_threads = 1};
    loupe_session *s = NULL;
    st = loupe_session_new(m, &sp, &s);
    fz_check_error(st, "loupe_session_new");
    if (st != LOUPE_OK) return;
    float *logits = malloc(sizeof(float) * (size_t)info.n_vocab); /* (n_vocab) */
    int32_t toks[2] = {info.bos_id >= 0 ? info.bos_id : 0, 1 % info.n_vocab};
    int nt = sp.n_ctx < 2 ? sp.n_ctx : 2;
    if (!logits) fz_fail("out of memory");
    fz_check_error(loupe_eval(s, toks, nt, logits, 0), "loupe_eval");
    free(logits);
    loupe_session_free(s);
}

void fz_open_model(const char *path) {
    const char *expect = getenv("FZ_EXPECT_LOAD");
    loupe_model_params mp = {.n_threads = 1};
    loupe_model *m = NULL;
    loupe_status st = loupe_model_open(path, &mp, &m);
    fz_check_error(st, "loupe_model_open");
    if (st != LOUPE_OK) {
        if (m) fz_fail("loupe_model_open failed but returned a model");
        if (expect && *expect == '1')
            fz_fail("FZ_EXPECT_LOAD: %s: %s", loupe_status_name(st), loupe_last_error());
        return;
    }
    fz_run_model(m);
    loupe_model_close(m);
}
