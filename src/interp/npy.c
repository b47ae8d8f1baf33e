/*
 * npy.c — NumPy .npy files: float32 writer (format 1.0) and a reader for
 * float32/float64/float16 arrays.
 *
 * Layout: "\x93NUMPY" major minor | header length (u16 LE in 1.0, u32 LE in
 * 2.0/3.0) | a Python dict literal {'descr': '<f4', 'fortran_order': False,
 * 'shape': (2, 3), } padded with spaces and ended by '\n' so that the data
 * starts at a multiple of 64 bytes | the raw array.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../error.h"
#include "interp.h"

static int lp_host_is_le(void) {
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

static void lp_swap_bytes(void *p, size_t n_items, size_t size) {
    uint8_t *b = p;
    for (size_t i = 0; i < n_items; i++, b += size)
        for (size_t j = 0; j < size / 2; j++) {
            uint8_t t = b[j];
            b[j] = b[size - 1 - j];
            b[size - 1 - j] = t;
        }
}

/* ------------------------------------------------------------ writer */

loupe_status loupe_npy_write(const char *path, const float *data, int ndim,
                             const int64_t *shape) {
    if (!path || ndim < 0 || ndim > LOUPE_NPY_MAX_DIMS || (ndim && !shape))
        return lp_fail(LOUPE_ERR_ARG, "loupe_npy_write: bad arguments");
    size_t count = 1;
    char dims[256];
    size_t k = 0;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) return lp_fail(LOUPE_ERR_ARG, "%s: negative dimension", path);
        count *= (size_t)shape[d];
        k += (size_t)snprintf(dims + k, sizeof dims - k, d ? ", %lld" : "%lld",
                              (long long)shape[d]);
    }
    if (ndim == 1) k += (size_t)snprintf(dims + k, sizeof dims - k, ",");
    dims[k] = 0;
    if (count && !data) return lp_fail(LOUPE_ERR_ARG, "%s: NULL data", path);

    char header[512];
    int hl = snprintf(header, sizeof header,
                      "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }", dims);
    /* 10 bytes of preamble + header + '\n' padded to a multiple of 64 */
    size_t total = ((size_t)10 + (size_t)hl + 1 + 63) / 64 * 64;
    while ((size_t)hl < total - 10 - 1) header[hl++] = ' ';
    header[hl++] = '\n';
    uint8_t pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (uint8_t)(hl & 0xFF),
                       (uint8_t)(hl >> 8)};

    FILE *f = fopen(path, "wb");
    if (!f) return lp_fail(LOUPE_ERR_IO, "%s: cannot open for writing", path);
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(header, 1, (size_t)hl, f) == (size_t)hl;
    if (ok && lp_host_is_le()) {
        ok = fwrite(data, sizeof(float), count, f) == count;
    } else if (ok) {
        for (size_t i = 0; ok && i < count; i++) {
            float v = data[i];
            lp_swap_bytes(&v, 1, sizeof v);
            ok = fwrite(&v, sizeof v, 1, f) == 1;
        }
    }
    if (fclose(f) != 0 || !ok) return lp_fail(LOUPE_ERR_IO, "%s: write failed", path);
    return LOUPE_OK;
}

/* ------------------------------------------------------------ reader */

/* Finds 'key': in the header dict and returns the text after the colon. */
static const char *lp_npy_key(const char *h, const char *key) {
    char pat[32];
    snprintf(pat, sizeof pat, "'%s'", key);
    const char *p = strstr(h, pat);
    if (!p) {
        snprintf(pat, sizeof pat, "\"%s\"", key);
        p = strstr(h, pat);
    }
    if (!p) return NULL;
    p += strlen(pat);
    while (*p == ' ') p++;
    if (*p != ':') return NULL;
    p++;
    while (*p == ' ') p++;
    return p;
}

typedef struct {
    char order;   /* '<' little, '>' big, '|' n/a */
    char kind;    /* 'f' */
    int size;     /* bytes per item */
    int fortran;
    int ndim;
    int64_t shape[LOUPE_NPY_MAX_DIMS];
} lp_npy_header;

static loupe_status lp_npy_parse_header(const char *path, const char *h, lp_npy_header *out) {
    const char *p = lp_npy_key(h, "descr");
    if (!p || (*p != '\'' && *p != '"'))
        return lp_fail(LOUPE_ERR_FORMAT, "%s: header has no 'descr'", path);
    p++;
    out->order = *p == '=' ? (lp_host_is_le() ? '<' : '>') : *p;
    out->kind = p[1];
    out->size = atoi(p + 2);
    if ((out->order != '<' && out->order != '>') || out->kind != 'f' ||
        (out->size != 2 && out->size != 4 && out->size != 8))
        return lp_fail(LOUPE_ERR_UNSUPPORTED,
                       "%s: dtype '%.6s' is not float16/float32/float64", path, p);
    p = lp_npy_key(h, "fortran_order");
    if (!p) return lp_fail(LOUPE_ERR_FORMAT, "%s: header has no 'fortran_order'", path);
    out->fortran = strncmp(p, "True", 4) == 0;
    p = lp_npy_key(h, "shape");
    if (!p || *p != '(') return lp_fail(LOUPE_ERR_FORMAT, "%s: header has no 'shape'", path);
    p++;
    out->ndim = 0;
    for (;;) {
        while (*p == ' ' || *p == ',') p++;
        if (*p == ')') break;
        if (!isdigit((unsigned char)*p))
            return lp_fail(LOUPE_ERR_FORMAT, "%s: bad shape in header", path);
        if (out->ndim == LOUPE_NPY_MAX_DIMS)
            return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: more than %d dimensions", path,
                           LOUPE_NPY_MAX_DIMS);
        char *end;
        long long v = strtoll(p, &end, 10);
        if (v < 0 || v > ((int64_t)1 << 40))
            return lp_fail(LOUPE_ERR_FORMAT, "%s: bad dimension %lld", path, v);
        out->shape[out->ndim++] = v;
        p = end;
    }
    if (out->fortran && out->ndim > 1)
        return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: Fortran-order arrays are not supported",
                       path);
    return LOUPE_OK;
}

static float lp_half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    uint32_t bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3FF) << 13);
        }
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Converts count raw items (in place order) to float32. */
static void lp_npy_convert(const uint8_t *raw, const lp_npy_header *h, size_t count,
                           float *out) {
    int swap = (h->order == '<') != lp_host_is_le();
    for (size_t i = 0; i < count; i++) {
        uint8_t b[8];
        memcpy(b, raw + i * (size_t)h->size, (size_t)h->size);
        if (swap) lp_swap_bytes(b, 1, (size_t)h->size);
        if (h->size == 4) {
            memcpy(&out[i], b, 4);
        } else if (h->size == 8) {
            double d;
            memcpy(&d, b, 8);
            out[i] = (float)d;
        } else {
            uint16_t u;
            memcpy(&u, b, 2);
            out[i] = lp_half_to_float(u);
        }
    }
}

loupe_status loupe_npy_read(const char *path, float **data, int *ndim,
                            int64_t shape[LOUPE_NPY_MAX_DIMS]) {
    if (!path || !data || !ndim || !shape) return lp_fail(LOUPE_ERR_ARG, "loupe_npy_read: NULL argument");
    *data = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return lp_fail(LOUPE_ERR_IO, "%s: cannot open", path);
    uint8_t pre[12];
    char *header = NULL;
    uint8_t *raw = NULL;
    float *out = NULL;
    loupe_status st = LOUPE_OK;
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0) {
        st = lp_fail(LOUPE_ERR_FORMAT, "%s: not a .npy file (bad magic)", path);
        goto done;
    }
    size_t hl;
    if (pre[6] == 1) {
        hl = pre[8] | (size_t)pre[9] << 8;
    } else if (pre[6] == 2 || pre[6] == 3) {
        if (fread(pre + 10, 1, 2, f) != 2) {
            st = lp_fail(LOUPE_ERR_FORMAT, "%s: truncated header", path);
            goto done;
        }
        hl = pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
    } else {
        st = lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: .npy format version %d", path, pre[6]);
        goto done;
    }
    if (hl > (1u << 20)) {
        st = lp_fail(LOUPE_ERR_FORMAT, "%s: header of %zu bytes is too large", path, hl);
        goto done;
    }
    header = malloc(hl + 1);
    if (!header) {
        st = lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    if (fread(header, 1, hl, f) != hl) {
        st = lp_fail(LOUPE_ERR_FORMAT, "%s: truncated header", path);
        goto done;
    }
    header[hl] = 0;
    lp_npy_header h;
    memset(&h, 0, sizeof h);
    if ((st = lp_npy_parse_header(path, header, &h)) != LOUPE_OK) goto done;
    size_t count = 1;
    for (int d = 0; d < h.ndim; d++) count *= (size_t)h.shape[d];
    raw = malloc(count * (size_t)h.size + 1);
    out = malloc((count ? count : 1) * sizeof(float));
    if (!raw || !out) {
        st = lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory for %zu values", path, count);
        goto done;
    }
    if (fread(raw, (size_t)h.size, count, f) != count) {
        st = lp_fail(LOUPE_ERR_FORMAT, "%s: data is shorter than the shape says (%zu values)",
                     path, count);
        goto done;
    }
    lp_npy_convert(raw, &h, count, out);
    *ndim = h.ndim;
    for (int d = 0; d < h.ndim; d++) shape[d] = h.shape[d];
    *data = out;
    out = NULL;
done:
    fclose(f);
    free(header);
    free(raw);
    free(out);
    return st;
}
