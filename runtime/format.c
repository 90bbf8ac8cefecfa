/* Printing tensors the way PyTorch does: one number format for the whole tensor (fixed with
   4 decimals, integer-valued floats as "1.", or scientific when the range is wide), aligned
   columns, rows wrapped at 80 characters, and large tensors summarised with "...". */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core.h"
#include "format.h"

#define EDGE 3
#define THRESHOLD 1000
#define LINEWIDTH 80

typedef struct { char *s; size_t n, cap; int oom; } sbuf;

static void sb_add(sbuf *b, const char *fmt, ...) {
  if (b->oom) return;
  va_list ap;
  va_start(ap, fmt);
  int k = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (b->n + (size_t)k + 1 > b->cap) {
    size_t cap = (b->cap + (size_t)k + 1) * 2;
    char *s = realloc(b->s, cap);
    if (!s) { b->oom = 1; return; }
    b->s = s;
    b->cap = cap;
  }
  va_start(ap, fmt);
  vsnprintf(b->s + b->n, (size_t)k + 1, fmt, ap);
  va_end(ap);
  b->n += (size_t)k;
}

typedef struct {
  const vtl_tensor *t;
  int summarize, mode; /* mode: 0 fixed, 1 integer-valued, 2 scientific, 3 int dtype, 4 bool */
  int width;
} fmt_t;

static double value_at(const vtl_tensor *t, const int64_t *idx) {
  int64_t off = t->offset;
  for (int d = 0; d < t->ndim; d++) off += idx[d] * t->strides[d];
  return vtl_load_as_double((const char *)t->storage->data + off * (int64_t)vtl_dtype_size(t->dtype), t->dtype);
}

static int64_t int_at(const vtl_tensor *t, const int64_t *idx) {
  int64_t off = t->offset;
  for (int d = 0; d < t->ndim; d++) off += idx[d] * t->strides[d];
  return vtl_load_as_int((const char *)t->storage->data + off * (int64_t)vtl_dtype_size(t->dtype), t->dtype);
}

static int fmt_value(const fmt_t *f, const int64_t *idx, char *buf, size_t n) {
  if (f->mode == 4) return snprintf(buf, n, "%s", int_at(f->t, idx) ? "true" : "false");
  if (f->mode == 3) return snprintf(buf, n, "%lld", (long long)int_at(f->t, idx));
  double v = value_at(f->t, idx);
  if (v != v) return snprintf(buf, n, "nan");
  if (isinf(v)) return snprintf(buf, n, v > 0 ? "inf" : "-inf");
  if (f->mode == 1) return snprintf(buf, n, "%.0f.", v);
  if (f->mode == 2) return snprintf(buf, n, "%.4e", v);
  return snprintf(buf, n, "%.4f", v);
}

/* Visits the printed elements (all, or the summarised edges) to pick mode and width. */
static void scan(fmt_t *f, int d, int64_t *idx, double *mx, double *mn, int *allint, int *any) {
  const vtl_tensor *t = f->t;
  if (d == t->ndim) {
    double v = value_at(t, idx);
    if (!isfinite(v)) return;
    if (v != nearbyint(v)) *allint = 0;
    double a = fabs(v);
    if (a == 0) return;
    if (!*any || a > *mx) *mx = a;
    if (!*any || a < *mn) *mn = a;
    *any = 1;
    return;
  }
  int64_t n = t->shape[d];
  for (int64_t i = 0; i < n; i++) {
    if (f->summarize && n > 2 * EDGE && i == EDGE) i = n - EDGE;
    idx[d] = i;
    scan(f, d + 1, idx, mx, mn, allint, any);
  }
}

static void emit(const fmt_t *f, sbuf *b, int d, int64_t *idx, int indent) {
  const vtl_tensor *t = f->t;
  char buf[64];
  if (d == t->ndim) {
    int w = fmt_value(f, idx, buf, sizeof buf);
    sb_add(b, "%*s%s", f->width - w, "", buf);
    return;
  }
  int64_t n = t->shape[d];
  sb_add(b, "[");
  int last = d == t->ndim - 1;
  int per_line = last ? (LINEWIDTH - indent) / (f->width + 2) : 0;
  if (per_line < 1) per_line = 1;
  int col = 0;
  for (int64_t i = 0; i < n; i++) {
    if (f->summarize && n > 2 * EDGE && i == EDGE) {
      if (last) sb_add(b, " ..., ");
      else {
        sb_add(b, "...,");
        for (int k = 0; k < t->ndim - d - 1; k++) sb_add(b, "\n");
        sb_add(b, "%*s", indent + 1, "");
      }
      i = n - EDGE;
    }
    idx[d] = i;
    if (last && col == per_line) { sb_add(b, "\n%*s", indent + 1, ""); col = 0; }
    emit(f, b, d + 1, idx, indent + 1);
    col++;
    if (i + 1 < n) {
      if (last) sb_add(b, ", ");
      else {
        sb_add(b, ",");
        for (int k = 0; k < t->ndim - d - 1; k++) sb_add(b, "\n");
        sb_add(b, "%*s", indent + 1, "");
      }
    }
  }
  sb_add(b, "]");
}

/* t's values (t on the CPU), labelled with device dev when that is not the CPU */
static char *format_host(const vtl_tensor *t, vtl_device dev) {
  sbuf b = {0};
  fmt_t f = {.t = t};
  int64_t idx[VTL_MAX_DIMS] = {0};
  int64_t numel = vtl_tensor_numel(t);
  f.summarize = numel > THRESHOLD;
  if (t->dtype == VTL_BOOL) f.mode = 4;
  else if (!vtl_dtype_is_float(t->dtype)) f.mode = 3;
  sb_add(&b, "tensor(");
  if (numel > 0) {
    if (f.mode < 3) {
      double mx = 0, mn = 0;
      int allint = 1, any = 0;
      scan(&f, 0, idx, &mx, &mn, &allint, &any);
      if (allint) f.mode = any && mx > 1e8 ? 2 : 1;
      else f.mode = any && (mx / mn > 1000 || mx > 1e8 || mn < 1e-4) ? 2 : 0;
    }
    memset(idx, 0, sizeof idx);
    int64_t id3[VTL_MAX_DIMS] = {0};
    {
      /* walk printed positions and take the widest formatted value */
      int nd = t->ndim;
      int64_t cnt[VTL_MAX_DIMS];
      for (int d = 0; d < nd; d++) cnt[d] = t->shape[d];
      int done = 0;
      while (!done) {
        char buf[64];
        int w = fmt_value(&f, id3, buf, sizeof buf);
        if (w > f.width) f.width = w;
        int d = nd - 1;
        for (; d >= 0; d--) {
          id3[d]++;
          if (f.summarize && cnt[d] > 2 * EDGE && id3[d] == EDGE) id3[d] = cnt[d] - EDGE;
          if (id3[d] < cnt[d]) break;
          id3[d] = 0;
        }
        if (d < 0) done = 1;
      }
    }
    if (t->ndim == 0) {
      char buf[64];
      fmt_value(&f, idx, buf, sizeof buf);
      sb_add(&b, "%s", buf);
    } else {
      emit(&f, &b, 0, idx, 7);
    }
  } else {
    sb_add(&b, "[]");
  }
  char shape[256];
  vtl_shape_format(t->shape, t->ndim, shape, sizeof shape);
  sb_add(&b, ", shape=%s, dtype=%s", shape, vtl_dtype_name(t->dtype));
  if (dev.type != VTL_CPU) {
    char ds[32];
    vtl_device_format(dev, ds, sizeof ds);
    sb_add(&b, ", device=%s", ds);
  }
  sb_add(&b, ")");
  if (b.oom) { free(b.s); return NULL; }
  return b.s;
}

/* Device tensors are copied to the host to be printed. */
char *vtl_tensor_format(const vtl_tensor *t) {
  vtl_device dev = vtl_tensor_device(t);
  if (dev.type == VTL_CPU) return format_host(t, dev);
  vtl_tensor *h = vtl_tensor_to_device((vtl_tensor *)t, (vtl_device){VTL_CPU, 0});
  if (!h) return NULL;
  char *s = format_host(h, dev);
  vtl_tensor_release(h);
  return s;
}
