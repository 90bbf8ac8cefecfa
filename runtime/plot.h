/*
 * Plot canvas: an opaque RGB raster (cairo image surface) with the few drawing primitives the
 * charts of vtl.plot are made of — paths, rectangles, circles, text, pasted images — and an
 * atomic PNG writer.
 *
 * Coordinates are cairo's: x to the right, y downwards, in pixels, with the pixel in column i,
 * row j (0-based) covering [i, i+1) × [j, j+1). An axis-aligned rectangle on integer
 * coordinates fills whole pixels with exactly its colour. Colours are r, g, b, a in [0, 1].
 *
 * A canvas is used by one thread at a time. Text uses cairo's "toy" font API (fontconfig, no
 * display needed); strings that are not valid UTF-8 are drawn with '?' for the bad bytes.
 */
#ifndef VTL_PLOT_H
#define VTL_PLOT_H
#include "core.h"

#define VTL_PLOT_MAX_SIDE 16384

typedef struct vtl_canvas vtl_canvas;

typedef enum { VTL_ALIGN_START = 0, VTL_ALIGN_CENTER, VTL_ALIGN_END } vtl_align;
typedef enum { VTL_VALIGN_BASELINE = 0, VTL_VALIGN_MIDDLE, VTL_VALIGN_TOP, VTL_VALIGN_BOTTOM } vtl_valign;

/* A w×h canvas filled with white; NULL (error set) for sizes outside 1..VTL_PLOT_MAX_SIDE. */
vtl_canvas *vtl_plot_canvas_new(int w, int h);
void vtl_plot_canvas_free(vtl_canvas *c);
void vtl_plot_canvas_size(const vtl_canvas *c, int *w, int *h);

/* Drawing state: source colour, stroke width, dashes (on == 0: solid), antialiasing. */
void vtl_plot_color(vtl_canvas *c, double r, double g, double b, double a);
void vtl_plot_line_width(vtl_canvas *c, double w);
void vtl_plot_dash(vtl_canvas *c, double on, double off);
void vtl_plot_antialias(vtl_canvas *c, bool on);

/* Paths: built with move_to/line_to/rect/circle, consumed by stroke or fill. */
void vtl_plot_move_to(vtl_canvas *c, double x, double y);
void vtl_plot_line_to(vtl_canvas *c, double x, double y);
void vtl_plot_rect(vtl_canvas *c, double x, double y, double w, double h);
void vtl_plot_circle(vtl_canvas *c, double x, double y, double r);
void vtl_plot_stroke(vtl_canvas *c);
void vtl_plot_fill(vtl_canvas *c);

/* Restricts drawing to a rectangle (intersected with any current one); reset lifts it. */
void vtl_plot_clip(vtl_canvas *c, double x, double y, double w, double h);
void vtl_plot_reset_clip(vtl_canvas *c);

/* Draws s at (x, y) in the current colour: size in pixels, align horizontally about x and
   vertically about y (the baseline, the middle or top/bottom of the font's ascent/descent),
   rotated by angle degrees counter-clockwise about (x, y). */
void vtl_plot_text(vtl_canvas *c, const char *s, double x, double y, double size, bool bold,
                   vtl_align align, vtl_valign valign, double angle);
/* Advance width of s and the font's ascent + descent at that size. */
void vtl_plot_text_size(vtl_canvas *c, const char *s, double size, bool bold, double *w, double *h);

/* Pastes a u8 H×W×C image (C in 1..4, any strides) 1:1 with its top-left pixel at column x,
   row y (0-based; parts outside the canvas are cut). Grey is expanded; alpha is blended over
   what is there. */
vtl_status vtl_plot_image(vtl_canvas *c, const vtl_tensor *img, int64_t x, int64_t y);

/* The canvas as a new u8 H×W×3 tensor. */
vtl_tensor *vtl_plot_pixels(vtl_canvas *c);

/* Writes the canvas as an 8-bit RGB PNG, atomically: <path>.tmp.<pid> in the same directory,
   fsync'd, renamed over path. Messages begin with `op` and name the path; a missing directory
   is reported as such. */
vtl_status vtl_plot_save_png(vtl_canvas *c, const char *path, const char *op);

#endif
