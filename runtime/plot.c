/*
 * Plot canvas over a cairo RGB24 image surface (see plot.h). The surface is opaque, so the PNG
 * cairo writes is plain 8-bit RGB and every pixel read back is exactly what was drawn.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cairo.h>
#include "plot.h"

struct vtl_canvas {
  cairo_surface_t *surface;
  cairo_t *cr;
  int w, h;
};

vtl_canvas *vtl_plot_canvas_new(int w, int h) {
  if (w < 1 || h < 1 || w > VTL_PLOT_MAX_SIDE || h > VTL_PLOT_MAX_SIDE)
    return vtl_error_set(VTL_ERR_ARG, "canvas: size must be 1..%d pixels per side, got %d×%d", VTL_PLOT_MAX_SIDE, w, h),
           NULL;
  vtl_canvas *c = calloc(1, sizeof *c);
  if (!c) return vtl_error_set(VTL_ERR_OOM, "canvas: out of memory"), NULL;
  c->w = w;
  c->h = h;
  c->surface = cairo_image_surface_create(CAIRO_FORMAT_RGB24, w, h);
  if (cairo_surface_status(c->surface) != CAIRO_STATUS_SUCCESS) {
    vtl_error_set(VTL_ERR_OOM, "canvas: cannot create a %d×%d surface (%s)", w, h,
                  cairo_status_to_string(cairo_surface_status(c->surface)));
    cairo_surface_destroy(c->surface);
    free(c);
    return NULL;
  }
  c->cr = cairo_create(c->surface);
  if (cairo_status(c->cr) != CAIRO_STATUS_SUCCESS) {
    vtl_error_set(VTL_ERR_OOM, "canvas: cannot create a drawing context (%s)", cairo_status_to_string(cairo_status(c->cr)));
    cairo_destroy(c->cr);
    cairo_surface_destroy(c->surface);
    free(c);
    return NULL;
  }
  cairo_set_source_rgb(c->cr, 1, 1, 1);
  cairo_paint(c->cr);
  cairo_set_source_rgb(c->cr, 0, 0, 0);
  cairo_set_line_width(c->cr, 1);
  cairo_set_line_join(c->cr, CAIRO_LINE_JOIN_ROUND);
  cairo_set_line_cap(c->cr, CAIRO_LINE_CAP_BUTT);
  return c;
}

void vtl_plot_canvas_free(vtl_canvas *c) {
  if (!c) return;
  cairo_destroy(c->cr);
  cairo_surface_destroy(c->surface);
  free(c);
}

void vtl_plot_canvas_size(const vtl_canvas *c, int *w, int *h) {
  *w = c->w;
  *h = c->h;
}

static double unit(double v) { return v < 0 ? 0 : v > 1 ? 1 : v; }

void vtl_plot_color(vtl_canvas *c, double r, double g, double b, double a) {
  cairo_set_source_rgba(c->cr, unit(r), unit(g), unit(b), unit(a));
}

void vtl_plot_line_width(vtl_canvas *c, double w) { cairo_set_line_width(c->cr, w > 0 ? w : 0); }

void vtl_plot_dash(vtl_canvas *c, double on, double off) {
  if (on <= 0) {
    cairo_set_dash(c->cr, NULL, 0, 0);
    return;
  }
  double d[2] = {on, off > 0 ? off : on};
  cairo_set_dash(c->cr, d, 2, 0);
}

void vtl_plot_antialias(vtl_canvas *c, bool on) {
  cairo_set_antialias(c->cr, on ? CAIRO_ANTIALIAS_DEFAULT : CAIRO_ANTIALIAS_NONE);
}

void vtl_plot_move_to(vtl_canvas *c, double x, double y) { cairo_move_to(c->cr, x, y); }
void vtl_plot_line_to(vtl_canvas *c, double x, double y) { cairo_line_to(c->cr, x, y); }
void vtl_plot_rect(vtl_canvas *c, double x, double y, double w, double h) { cairo_rectangle(c->cr, x, y, w, h); }

void vtl_plot_circle(vtl_canvas *c, double x, double y, double r) {
  cairo_new_sub_path(c->cr);
  cairo_arc(c->cr, x, y, r > 0 ? r : 0, 0, 2 * M_PI);
  cairo_close_path(c->cr);
}

void vtl_plot_stroke(vtl_canvas *c) { cairo_stroke(c->cr); }
void vtl_plot_fill(vtl_canvas *c) { cairo_fill(c->cr); }

void vtl_plot_clip(vtl_canvas *c, double x, double y, double w, double h) {
  cairo_new_path(c->cr);
  cairo_rectangle(c->cr, x, y, w, h);
  cairo_clip(c->cr);
}

void vtl_plot_reset_clip(vtl_canvas *c) { cairo_reset_clip(c->cr); }

/* ---- text ---- */

/* Length of the valid UTF-8 sequence at s (1..4), or 0 when it is not one. */
static int utf8_len(const unsigned char *s) {
  unsigned c = s[0];
  int n;
  unsigned cp;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) n = 2, cp = c & 0x1F;
  else if (c >= 0xE0 && c <= 0xEF) n = 3, cp = c & 0x0F;
  else if (c >= 0xF0 && c <= 0xF4) n = 4, cp = c & 0x07;
  else return 0;
  for (int i = 1; i < n; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3F);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

/* A copy of s with every byte that does not start a valid UTF-8 sequence replaced by '?'
   (cairo puts its context in a permanent error state on invalid UTF-8). NULL: out of memory. */
static char *utf8_clean(const char *s) {
  size_t n = strlen(s);
  char *out = malloc(n + 1);
  if (!out) return NULL;
  size_t i = 0;
  while (i < n) {
    int k = utf8_len((const unsigned char *)s + i);
    if (k == 0) {
      out[i++] = '?';
      continue;
    }
    memcpy(out + i, s + i, (size_t)k);
    i += (size_t)k;
  }
  out[n] = 0;
  return out;
}

static void set_font(vtl_canvas *c, double size, bool bold) {
  cairo_select_font_face(c->cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(c->cr, size > 0 ? size : 1);
}

void vtl_plot_text_size(vtl_canvas *c, const char *s, double size, bool bold, double *w, double *h) {
  *w = 0;
  *h = 0;
  char *t = utf8_clean(s);
  if (!t) return;
  set_font(c, size, bold);
  cairo_text_extents_t te;
  cairo_font_extents_t fe;
  cairo_text_extents(c->cr, t, &te);
  cairo_font_extents(c->cr, &fe);
  *w = te.x_advance;
  *h = fe.ascent + fe.descent;
  free(t);
}

void vtl_plot_text(vtl_canvas *c, const char *s, double x, double y, double size, bool bold,
                   vtl_align align, vtl_valign valign, double angle) {
  char *t = utf8_clean(s);
  if (!t) return;
  set_font(c, size, bold);
  cairo_text_extents_t te;
  cairo_font_extents_t fe;
  cairo_text_extents(c->cr, t, &te);
  cairo_font_extents(c->cr, &fe);
  double dx = align == VTL_ALIGN_CENTER ? -te.x_advance / 2 : align == VTL_ALIGN_END ? -te.x_advance : 0;
  double dy = valign == VTL_VALIGN_MIDDLE ? (fe.ascent - fe.descent) / 2
            : valign == VTL_VALIGN_TOP    ? fe.ascent
            : valign == VTL_VALIGN_BOTTOM ? -fe.descent
                                          : 0;
  cairo_save(c->cr);
  cairo_new_path(c->cr);
  cairo_translate(c->cr, x, y);
  if (angle != 0) cairo_rotate(c->cr, -angle * M_PI / 180);
  cairo_move_to(c->cr, dx, dy);
  cairo_show_text(c->cr, t);
  cairo_restore(c->cr);
  cairo_new_path(c->cr);
  free(t);
}

/* ---- pixels ---- */

vtl_status vtl_plot_image(vtl_canvas *c, const vtl_tensor *img, int64_t x, int64_t y) {
  if (vtl_tensor_device(img).type != VTL_CPU) return vtl_error_set(VTL_ERR_DEVICE, "canvas:image: image must be on the CPU");
  if (img->dtype != VTL_U8) return vtl_error_set(VTL_ERR_ARG, "canvas:image: image must be u8 H×W×C, got %s", vtl_dtype_name(img->dtype));
  if (img->ndim != 2 && img->ndim != 3) {
    char buf[128];
    vtl_shape_format(img->shape, img->ndim, buf, sizeof buf);
    return vtl_error_set(VTL_ERR_ARG, "canvas:image: image must be H×W×C (or H×W), got shape %s", buf);
  }
  int64_t h = img->shape[0], w = img->shape[1], ch = img->ndim == 3 ? img->shape[2] : 1;
  if (ch < 1 || ch > 4) return vtl_error_set(VTL_ERR_ARG, "canvas:image: image must have 1 to 4 channels, got %lld", (long long)ch);
  int64_t sh = img->strides[0], sw = img->strides[1], sc = img->ndim == 3 ? img->strides[2] : 0;
  const uint8_t *p = vtl_tensor_data(img);
  cairo_surface_flush(c->surface);
  uint8_t *dst = cairo_image_surface_get_data(c->surface);
  int stride = cairo_image_surface_get_stride(c->surface);
  int64_t y0 = y < 0 ? -y : 0, y1 = h < c->h - y ? h : c->h - y;
  int64_t x0 = x < 0 ? -x : 0, x1 = w < c->w - x ? w : c->w - x;
  for (int64_t i = y0; i < y1; i++) {
    uint32_t *row = (uint32_t *)(dst + (size_t)(y + i) * (size_t)stride);
    for (int64_t j = x0; j < x1; j++) {
      const uint8_t *q = p + i * sh + j * sw;
      unsigned r, g, b, a = 255;
      if (ch <= 2) r = g = b = q[0];
      else r = q[0], g = q[sc], b = q[2 * sc];
      if (ch == 2) a = q[sc];
      else if (ch == 4) a = q[3 * sc];
      uint32_t *o = &row[x + j];
      if (a != 255) {
        unsigned orr = (*o >> 16) & 255, og = (*o >> 8) & 255, ob = *o & 255;
        r = (r * a + orr * (255 - a) + 127) / 255;
        g = (g * a + og * (255 - a) + 127) / 255;
        b = (b * a + ob * (255 - a) + 127) / 255;
      }
      *o = 0xFF000000u | (r << 16) | (g << 8) | b;
    }
  }
  cairo_surface_mark_dirty(c->surface);
  return VTL_OK;
}

vtl_tensor *vtl_plot_pixels(vtl_canvas *c) {
  int64_t shape[3] = {c->h, c->w, 3};
  vtl_tensor *t = vtl_tensor_empty(shape, 3, VTL_U8, (vtl_device){VTL_CPU, 0});
  if (!t) return NULL;
  cairo_surface_flush(c->surface);
  const uint8_t *src = cairo_image_surface_get_data(c->surface);
  int stride = cairo_image_surface_get_stride(c->surface);
  uint8_t *o = vtl_tensor_data(t);
  for (int i = 0; i < c->h; i++) {
    const uint32_t *row = (const uint32_t *)(src + (size_t)i * (size_t)stride);
    for (int j = 0; j < c->w; j++, o += 3) {
      o[0] = (row[j] >> 16) & 255;
      o[1] = (row[j] >> 8) & 255;
      o[2] = row[j] & 255;
    }
  }
  return t;
}

/* ---- PNG ---- */

typedef struct {
  int fd;
  int err; /* errno of the first failed write */
} png_sink;

static cairo_status_t png_write(void *closure, const unsigned char *data, unsigned int n) {
  png_sink *k = closure;
  while (n > 0) {
    ssize_t w = write(k->fd, data, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      k->err = errno;
      return CAIRO_STATUS_WRITE_ERROR;
    }
    data += w;
    n -= (unsigned)w;
  }
  return CAIRO_STATUS_SUCCESS;
}

vtl_status vtl_plot_save_png(vtl_canvas *c, const char *path, const char *op) {
  if (!path[0]) return vtl_error_set(VTL_ERR_ARG, "%s: the path is empty", op);
  /* name a missing directory plainly rather than through the temporary file's ENOENT */
  const char *slash = strrchr(path, '/');
  if (slash && slash != path) {
    size_t n = (size_t)(slash - path);
    char *dir = malloc(n + 1);
    if (!dir) return vtl_error_set(VTL_ERR_OOM, "%s: %s: out of memory", op, path);
    memcpy(dir, path, n);
    dir[n] = 0;
    struct stat sb;
    int st = stat(dir, &sb);
    vtl_status r = VTL_OK;
    if (st != 0) r = vtl_error_set(VTL_ERR_IO, "%s: cannot write %s: directory %s does not exist", op, path, dir);
    else if (!S_ISDIR(sb.st_mode)) r = vtl_error_set(VTL_ERR_IO, "%s: cannot write %s: %s is not a directory", op, path, dir);
    free(dir);
    if (r != VTL_OK) return r;
  }
  struct stat sb;
  if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) return vtl_error_set(VTL_ERR_IO, "%s: cannot write %s: it is a directory", op, path);

  size_t n = strlen(path) + 32;
  char *tmp = malloc(n);
  if (!tmp) return vtl_error_set(VTL_ERR_OOM, "%s: %s: out of memory", op, path);
  snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
  png_sink k = {open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666), 0};
  if (k.fd < 0) {
    vtl_status st = vtl_error_set(VTL_ERR_IO, "%s: cannot write %s (%s)", op, path, strerror(errno));
    free(tmp);
    return st;
  }
  cairo_surface_flush(c->surface);
  cairo_status_t cs = cairo_surface_write_to_png_stream(c->surface, png_write, &k);
  const char *what = NULL;
  int e = 0;
  if (cs != CAIRO_STATUS_SUCCESS) {
    what = k.err ? "write failed" : cairo_status_to_string(cs);
    e = k.err;
  } else if (fsync(k.fd) != 0 && errno != EINVAL && errno != EROFS) {
    what = "fsync failed";
    e = errno;
  }
  if (close(k.fd) != 0 && !what) {
    what = "close failed";
    e = errno;
  }
  if (!what && rename(tmp, path) != 0) {
    what = "cannot replace the file";
    e = errno;
  }
  if (what) {
    unlink(tmp);
    free(tmp);
    return vtl_error_set(VTL_ERR_IO, "%s: cannot write %s: %s%s%s%s", op, path, what, e ? " (" : "", e ? strerror(e) : "", e ? ")" : "");
  }
  free(tmp);
  return VTL_OK;
}
