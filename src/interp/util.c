/*
 * util.c — strings, escaping and cJSON glue shared by the interp writers.
 */
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "interp.h"
#include "../error.h"

/* ------------------------------------------------------------ lp_sb */

static int lp_sb_reserve(lp_sb *b, size_t extra) {
    if (b->failed) return 0;
    if (b->len + extra + 1 <= b->cap) return 1;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) cap *= 2;
    char *s = realloc(b->s, cap);
    if (!s) {
        b->failed = 1;
        return 0;
    }
    b->s = s;
    b->cap = cap;
    return 1;
}

void lp_sb_put(lp_sb *b, const char *s, size_t n) {
    if (!lp_sb_reserve(b, n)) return;
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
}

void lp_sb_puts(lp_sb *b, const char *s) { lp_sb_put(b, s, strlen(s)); }

void lp_sb_printf(lp_sb *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !lp_sb_reserve(b, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void lp_sb_html(lp_sb *b, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '&': lp_sb_puts(b, "&amp;"); break;
        case '<': lp_sb_puts(b, "&lt;"); break;
        case '>': lp_sb_puts(b, "&gt;"); break;
        case '"': lp_sb_puts(b, "&quot;"); break;
        case '\'': lp_sb_puts(b, "&#39;"); break;
        default: lp_sb_put(b, s, 1);
        }
    }
}

void lp_sb_html_token(lp_sb *b, const char *s, int show_space) {
    for (; *s; s++) {
        if (*s == ' ' && show_space) lp_sb_puts(b, "\xe2\x90\xa3"); /* U+2423 */
        else if (*s == '\n') lp_sb_puts(b, "\\n");
        else if (*s == '\t') lp_sb_puts(b, "\\t");
        else if (*s == '\r') lp_sb_puts(b, "\\r");
        else {
            char one[2] = {*s, 0};
            lp_sb_html(b, one);
        }
    }
}

void lp_sb_json_for_script(lp_sb *b, const char *json) {
    for (; *json; json++) {
        switch (*json) {
        case '<': lp_sb_puts(b, "\\u003c"); break;
        case '>': lp_sb_puts(b, "\\u003e"); break;
        case '&': lp_sb_puts(b, "\\u0026"); break;
        default: lp_sb_put(b, json, 1);
        }
    }
}

void lp_sb_float(lp_sb *b, float x, int digits) {
    if (!isfinite(x)) {
        lp_sb_puts(b, "null");
        return;
    }
    if (x == 0.0f) {
        lp_sb_puts(b, "0");
        return;
    }
    lp_sb_printf(b, "%.*g", digits > 0 ? digits : 9, (double)x);
}

void lp_sb_float_array(lp_sb *b, const float *x, int n, int digits) {
    lp_sb_put(b, "[", 1);
    for (int i = 0; i < n; i++) {
        if (i) lp_sb_put(b, ",", 1);
        lp_sb_float(b, x[i], digits);
    }
    lp_sb_put(b, "]", 1);
}

char *lp_sb_finish(lp_sb *b) {
    if (b->failed || !lp_sb_reserve(b, 0)) {
        free(b->s);
        b->s = NULL;
        return NULL;
    }
    char *s = b->s;
    b->s = NULL;
    return s;
}

/* ------------------------------------------------------------ text */

/* Length of the valid UTF-8 character at s (n bytes left), 0 if invalid. */
static size_t lp_utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) len = 2, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, min = 0x10000;
    else return 0;
    if (n < len) return 0;
    unsigned cp = c & (0x7F >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

char *lp_display_text(const char *bytes, size_t n) {
    lp_sb b = {0};
    const unsigned char *s = (const unsigned char *)bytes;
    for (size_t i = 0; i < n;) {
        size_t len = lp_utf8_len(s + i, n - i);
        if (len == 0 || s[i] == 0) {
            lp_sb_printf(&b, "\\x%02X", s[i]);
            i++;
        } else {
            lp_sb_put(&b, (const char *)s + i, len);
            i += len;
        }
    }
    lp_sb_put(&b, "", 0);
    return lp_sb_finish(&b);
}

const char *lp_path_ext(const char *path, char *buf, size_t cap) {
    const char *dot = strrchr(path, '.');
    const char *slash = strrchr(path, '/');
    buf[0] = 0;
    if (!dot || (slash && dot < slash) || cap == 0) return buf;
    size_t i = 0;
    for (dot++; *dot && i + 1 < cap; dot++) buf[i++] = (char)tolower((unsigned char)*dot);
    buf[i] = 0;
    return buf;
}

loupe_status loupe_write_text(const char *path, const char *text) {
    if (!path || !text) return lp_fail(LOUPE_ERR_ARG, "loupe_write_text: NULL argument");
    FILE *f = fopen(path, "wb");
    if (!f) return lp_fail(LOUPE_ERR_IO, "%s: cannot open for writing", path);
    size_t n = strlen(text);
    size_t w = fwrite(text, 1, n, f);
    if (fclose(f) != 0 || w != n) return lp_fail(LOUPE_ERR_IO, "%s: write failed", path);
    return LOUPE_OK;
}

void loupe_interp_free(void *p) { free(p); }

/* ------------------------------------------------------------ cJSON glue */

cJSON *lp_json_ints(const int32_t *x, int n) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++)
        if (!lp_json_push(a, cJSON_CreateNumber(x[i]))) {
            cJSON_Delete(a);
            return NULL;
        }
    return a;
}

cJSON *lp_json_int_array(const int *x, int n) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++)
        if (!lp_json_push(a, cJSON_CreateNumber(x[i]))) {
            cJSON_Delete(a);
            return NULL;
        }
    return a;
}

cJSON *lp_json_strings(char *const *s, int n) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++)
        if (!lp_json_push(a, cJSON_CreateString(s[i] ? s[i] : ""))) {
            cJSON_Delete(a);
            return NULL;
        }
    return a;
}

static void lp_sb_nested(lp_sb *b, const float *x, int ndim, const int *shape, int digits) {
    if (ndim == 1) {
        lp_sb_float_array(b, x, shape[0], digits);
        return;
    }
    size_t inner = 1;
    for (int d = 1; d < ndim; d++) inner *= (size_t)shape[d];
    lp_sb_put(b, "[", 1);
    for (int i = 0; i < shape[0]; i++) {
        if (i) lp_sb_put(b, ",", 1);
        lp_sb_nested(b, x + i * inner, ndim - 1, shape + 1, digits);
    }
    lp_sb_put(b, "]", 1);
}

cJSON *lp_json_floats(const float *x, int ndim, const int *shape, int digits) {
    lp_sb b = {0};
    lp_sb_nested(&b, x, ndim, shape, digits);
    char *s = lp_sb_finish(&b);
    if (!s) return NULL;
    cJSON *raw = cJSON_CreateRaw(s);
    free(s);
    return raw;
}

cJSON *lp_json_range(int n) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++)
        if (!lp_json_push(a, cJSON_CreateNumber(i))) {
            cJSON_Delete(a);
            return NULL;
        }
    return a;
}

int lp_json_add(cJSON *obj, const char *key, cJSON *item) {
    if (obj && item && cJSON_AddItemToObject(obj, key, item)) return 1;
    cJSON_Delete(item);
    return 0;
}

int lp_json_push(cJSON *arr, cJSON *item) {
    if (arr && item && cJSON_AddItemToArray(arr, item)) return 1;
    cJSON_Delete(item);
    return 0;
}

cJSON *lp_json_doc(const char *format, const char *title) {
    cJSON *root = cJSON_CreateObject();
    int ok = lp_json_add(root, "format", cJSON_CreateString(format)) &&
             lp_json_add(root, "version", cJSON_CreateNumber(1)) &&
             lp_json_add(root, "model", title ? cJSON_CreateString(title) : cJSON_CreateNull());
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

cJSON *lp_json_number(double x) {
    return isfinite(x) ? cJSON_CreateNumber(x) : cJSON_CreateNull();
}

char *lp_json_finish(cJSON *root) {
    if (!root) return NULL;
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

/* ------------------------------------------------------------ HTML */

static const char lp_html_css[] =
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:16px;"
    "color:#222;background:#fff}"
    "h1{font-size:18px;margin:0 0 8px}h2{font-size:15px;margin:16px 0 6px}"
    ".meta{color:#666;font-size:12px;margin-bottom:8px}"
    ".tok{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre;"
    "padding:1px 2px;border-radius:3px}"
    "table{border-collapse:collapse;font-size:12px}"
    "td,th{border:1px solid #ddd;padding:2px 4px;text-align:left}"
    "th{background:#f4f4f4;font-weight:600}"
    ".tokens{line-height:1.9;margin:6px 0}";

void lp_html_begin(lp_sb *b, const char *title, const char *heading) {
    lp_sb_puts(b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                  "<meta name=\"viewport\" content=\"width=device-width\"><title>");
    lp_sb_html(b, heading);
    if (title && *title) {
        lp_sb_puts(b, " — ");
        lp_sb_html(b, title);
    }
    lp_sb_puts(b, "</title><style>");
    lp_sb_puts(b, lp_html_css);
    lp_sb_puts(b, "</style></head><body><h1>");
    lp_sb_html(b, heading);
    lp_sb_puts(b, "</h1>");
    if (title && *title) {
        lp_sb_puts(b, "<div class=\"meta\">model: ");
        lp_sb_html(b, title);
        lp_sb_puts(b, " · loupe " LOUPE_VERSION_STRING "</div>");
    }
}

void lp_html_end(lp_sb *b) { lp_sb_puts(b, "</body></html>\n"); }

void lp_html_signed_colour(lp_sb *b, float v) {
    if (!isfinite(v)) v = 0;
    if (v > 1) v = 1;
    if (v < -1) v = -1;
    /* fade from white to red (positive) or blue (negative) */
    int a = (int)lrintf(fabsf(v) * 200.0f);
    if (v >= 0) lp_sb_printf(b, "rgb(255,%d,%d)", 255 - a, 255 - a);
    else lp_sb_printf(b, "rgb(%d,%d,255)", 255 - a, 255 - a);
}
