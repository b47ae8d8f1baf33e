/*
 * png.c — attention heatmap grids as RGB PNG through libpng.
 */
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../error.h"
#include "interp.h"

#define LP_PNG_GAP 2
#define LP_PNG_MAX_SIDE 16384
#define LP_PNG_GAP_GREY 176 /* separates cells whose edges are white (weight 0) */

/* ------------------------------------------------------------ colour map */

/* A perceptually ordered ramp, white (0) through yellow, orange and red to
 * dark purple (1): low weights stay light so the structure of a pattern
 * reads at a glance. */
static const uint8_t lp_ramp[][3] = {
    {255, 255, 255}, {255, 237, 160}, {254, 178, 76}, {240, 59, 32}, {150, 0, 70}, {50, 0, 60}};
#define LP_RAMP_N ((int)(sizeof lp_ramp / sizeof lp_ramp[0]))

static void lp_colour(float v, uint8_t rgb[3]) {
    if (!(v > 0)) v = 0; /* also NaN */
    if (v > 1) v = 1;
    float x = v * (LP_RAMP_N - 1);
    int i = (int)x;
    if (i >= LP_RAMP_N - 1) i = LP_RAMP_N - 2;
    float t = x - (float)i;
    for (int c = 0; c < 3; c++)
        rgb[c] = (uint8_t)lrintf((1 - t) * lp_ramp[i][c] + t * lp_ramp[i + 1][c]);
}

/* ------------------------------------------------------------ writer */

typedef struct {
    char msg[256];
} lp_png_err;

static void lp_png_error(png_structp png, png_const_charp msg) {
    lp_png_err *e = png_get_error_ptr(png);
    snprintf(e->msg, sizeof e->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void lp_png_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

/* Fills one image row: grid row r, pixel row y within the cell (-1 = gap). */
static void lp_png_fill_row(uint8_t *row, const float *maps, int r, int cols, int T, int scale,
                            int y, int width) {
    memset(row, LP_PNG_GAP_GREY, (size_t)width * 3);
    if (y < 0) return;
    int q = y / scale;
    for (int c = 0; c < cols; c++) {
        const float *m = maps + ((size_t)r * cols + c) * T * T + (size_t)q * T; /* (T) */
        uint8_t *px = row + (size_t)(LP_PNG_GAP + c * (T * scale + LP_PNG_GAP)) * 3;
        for (int k = 0; k < T; k++) {
            uint8_t rgb[3];
            lp_colour(m[k], rgb);
            for (int s = 0; s < scale; s++, px += 3) memcpy(px, rgb, 3);
        }
    }
}

loupe_status loupe_heatmap_png(const char *path, const float *maps, int rows, int cols, int T,
                               int scale) {
    if (!path || !maps || rows <= 0 || cols <= 0 || T <= 0 || scale <= 0)
        return lp_fail(LOUPE_ERR_ARG, "loupe_heatmap_png: bad arguments");
    long w = LP_PNG_GAP + (long)cols * ((long)T * scale + LP_PNG_GAP);
    long h = LP_PNG_GAP + (long)rows * ((long)T * scale + LP_PNG_GAP);
    if (w > LP_PNG_MAX_SIDE || h > LP_PNG_MAX_SIDE)
        return lp_fail(LOUPE_ERR_ARG,
                       "%s: a %ldx%ld image is too large (select fewer layers/heads or a "
                       "smaller scale)", path, w, h);
    FILE *f = fopen(path, "wb");
    if (!f) return lp_fail(LOUPE_ERR_IO, "%s: cannot open for writing", path);
    uint8_t *row = malloc((size_t)w * 3);
    lp_png_err err = {{0}};
    png_structp png = row ? png_create_write_struct(PNG_LIBPNG_VER_STRING, &err, lp_png_error,
                                                    lp_png_warning)
                          : NULL;
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        free(row);
        fclose(f);
        return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory for the PNG writer", path);
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(row);
        fclose(f);
        return lp_fail(LOUPE_ERR_IO, "%s: libpng: %s", path, err.msg);
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (long y = 0; y < h; y++) {
        long cell = (long)T * scale + LP_PNG_GAP;
        long in = y - LP_PNG_GAP;
        int r = in < 0 ? -1 : (int)(in / cell);
        int yy = in < 0 || in % cell >= (long)T * scale ? -1 : (int)(in % cell);
        if (r >= rows) r = -1;
        lp_png_fill_row(row, maps, r < 0 ? 0 : r, cols, T, scale, r < 0 ? -1 : yy, (int)w);
        png_write_row(png, row);
    }
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(row);
    if (fclose(f) != 0) return lp_fail(LOUPE_ERR_IO, "%s: write failed", path);
    return LOUPE_OK;
}
