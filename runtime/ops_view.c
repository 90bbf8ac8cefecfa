/* Ops: creation, copies and conversions, views. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ops.h"

int vtl_check_dim(const char *op, int dim, int ndim) {
  if (dim < 0 || dim >= (ndim ? ndim : 1)) {
    vtl_error_set(VTL_ERR_ARG, "%s: dim %d out of range for a %d-D tensor (valid: 1..%d or -%d..-1)", op,
                  dim + 1, ndim, ndim ? ndim : 1, ndim ? ndim : 1);
    return 0;
  }
  return 1;
}

/* ---- creation ---- */
vtl_tensor *vtl_op_full(const int64_t *shape, int ndim, double value, vtl_dtype dt, vtl_device dev) {
  vtl_tensor *t = vtl_tensor_empty(shape, ndim, dt, dev);
  if (t && vtl_op_fill_(t, value) != VTL_OK) { vtl_tensor_release(t); return NULL; }
  return t;
}

/* Values computed on the host then placed on the device; the last one is `last` when
   has_last (linspace ends exactly at its end). */
static vtl_tensor *from_host_values(int64_t n, vtl_dtype dt, vtl_device dev, double start, double step,
                                    bool has_last, double last) {
  if (!vtl_backend_get(dev)) return NULL;
  int64_t shape[1] = {n};
  vtl_tensor *t = vtl_tensor_empty(shape, 1, dt, (vtl_device){VTL_CPU, 0});
  if (!t) return NULL;
  char *p = vtl_tensor_data(t);
  size_t es = vtl_dtype_size(dt);
  for (int64_t i = 0; i < n; i++) {
    if (dt == VTL_I64) ((int64_t *)p)[i] = (int64_t)start + i * (int64_t)step;
    else vtl_store_from_double(p + i * (int64_t)es, dt, start + (double)i * step);
  }
  if (has_last && n > 0) vtl_store_from_double(p + (n - 1) * (int64_t)es, dt, last);
  vtl_tensor *r = vtl_tensor_to_device(t, dev);
  vtl_tensor_release(t);
  return r;
}

vtl_tensor *vtl_op_arange(double start, double end, double step, vtl_dtype dt, vtl_device dev) {
  if (step == 0 || step != step) return vtl_error_set(VTL_ERR_ARG, "arange: step must be non-zero"), NULL;
  if (!isfinite(start) || !isfinite(end))
    return vtl_error_set(VTL_ERR_ARG, "arange: start and end must be finite"), NULL;
  double nf = ceil((end - start) / step);
  if (nf < 0) nf = 0;
  if (nf > 4e18) return vtl_error_set(VTL_ERR_ARG, "arange: too many elements"), NULL;
  return from_host_values((int64_t)nf, dt, dev, start, step, false, 0);
}

vtl_tensor *vtl_op_linspace(double start, double end, int64_t steps, vtl_dtype dt, vtl_device dev) {
  if (steps < 0) return vtl_error_set(VTL_ERR_ARG, "linspace: steps must be non-negative, got %lld", (long long)steps), NULL;
  return from_host_values(steps, dt, dev, start, steps > 1 ? (end - start) / (double)(steps - 1) : 0, steps > 1, end);
}

vtl_tensor *vtl_op_eye(int64_t n, int64_t m, vtl_dtype dt, vtl_device dev) {
  if (n < 0 || m < 0) return vtl_error_set(VTL_ERR_ARG, "eye: sizes must be non-negative"), NULL;
  int64_t shape[2] = {n, m};
  vtl_tensor *t = vtl_tensor_zeros(shape, 2, dt, dev);
  if (!t || n == 0 || m == 0) return t;
  int64_t k = n < m ? n : m, st = m + 1;
  vtl_tensor *diag = vtl_tensor_view_of(t, &k, &st, 1, 0);
  vtl_status s = diag ? vtl_op_fill_(diag, 1) : VTL_ERR_OOM;
  vtl_tensor_release(diag);
  if (s != VTL_OK) { vtl_tensor_release(t); return NULL; }
  return t;
}

vtl_tensor *vtl_op_random(const int64_t *shape, int ndim, int kind, double lo, double hi, vtl_dtype dt,
                          vtl_device dev, uint64_t seed, uint64_t *offset) {
  static const char *names[3] = {"rand", "randn", "randint"};
  if (kind < 2 && !vtl_dtype_is_float(dt))
    return vtl_error_set(VTL_ERR_ARG, "%s: dtype must be a float type, got %s", names[kind], vtl_dtype_name(dt)), NULL;
  if (kind == 2 && !(hi > lo))
    return vtl_error_set(VTL_ERR_ARG, "randint: high (%g) must be greater than low (%g)", hi, lo), NULL;
  if (kind == 1 && !(hi >= 0)) return vtl_error_set(VTL_ERR_ARG, "randn: std must be non-negative"), NULL;
  vtl_tensor *t = vtl_tensor_empty(shape, ndim, dt, dev);
  if (!t) return NULL;
  const vtl_backend *be = vtl_backend_get(dev);
  if (!be->random) { vtl_tensor_release(t); return vtl_error_set(VTL_ERR_DEVICE, "%s: not supported on %s", names[kind], be->name), NULL; }
  if (be->random(t, kind, lo, hi, seed, *offset) != VTL_OK) { vtl_tensor_release(t); return NULL; }
  *offset += (uint64_t)(vtl_tensor_numel(t) + 1) / 2;
  return t;
}

/* ---- copies ---- */
static bool overlaps_differently(const vtl_tensor *a, const vtl_tensor *b) {
  if (a->storage != b->storage) return false;
  if (a->offset != b->offset || a->ndim != b->ndim || a->dtype != b->dtype) return true;
  for (int d = 0; d < a->ndim; d++)
    if (a->shape[d] != b->shape[d] || (a->shape[d] > 1 && a->strides[d] != b->strides[d])) return true;
  return false;
}

vtl_status vtl_op_copy_(vtl_tensor *dst, const vtl_tensor *src) {
  if (!vtl_device_eq(vtl_tensor_device(dst), vtl_tensor_device(src))) { /* across devices: moved first */
    vtl_tensor *m = vtl_tensor_to_device((vtl_tensor *)src, vtl_tensor_device(dst));
    vtl_status st = m ? vtl_op_copy_(dst, m) : vtl_error_status();
    vtl_tensor_release(m);
    return st;
  }
  vtl_tensor *s = vtl_broadcast_to(src, dst->shape, dst->ndim);
  if (!s) {
    char a[128], b[128];
    vtl_shape_format(src->shape, src->ndim, a, sizeof a);
    vtl_shape_format(dst->shape, dst->ndim, b, sizeof b);
    return vtl_error_set(VTL_ERR_ARG, "copy_: source of shape %s cannot be broadcast to %s", a, b);
  }
  if (overlaps_differently(dst, s)) {
    vtl_tensor *c = vtl_op_clone(s);
    vtl_tensor_release(s);
    if (!c) return vtl_error_status();
    s = c;
  }
  vtl_status st = vtl_backend_get(vtl_tensor_device(dst))->unary(VTL_UN_COPY, dst, s, dst->dtype, NULL);
  vtl_tensor_release(s);
  return st;
}

vtl_status vtl_op_fill_(vtl_tensor *dst, double value) {
  return vtl_backend_get(vtl_tensor_device(dst))->fill(dst, value);
}

vtl_tensor *vtl_op_clone(const vtl_tensor *x) {
  vtl_tensor *t = vtl_tensor_empty_like(x);
  if (t && vtl_op_copy_(t, x) != VTL_OK) { vtl_tensor_release(t); return NULL; }
  return t;
}

vtl_tensor *vtl_op_contiguous(vtl_tensor *x) {
  if (vtl_tensor_is_contiguous(x)) return vtl_tensor_retain(x);
  return vtl_op_clone(x);
}

vtl_tensor *vtl_op_contiguous_channels_last(vtl_tensor *x) {
  if (x->ndim != 4) {
    char b[128];
    vtl_shape_format(x->shape, x->ndim, b, sizeof b);
    return vtl_error_set(VTL_ERR_ARG, "contiguous: channels_last needs a 4-D (N,C,H,W) tensor, got shape %s", b), NULL;
  }
  if (vtl_tensor_is_channels_last(x)) return vtl_tensor_retain(x);
  vtl_tensor *t = vtl_tensor_empty_channels_last(x->shape, x->dtype, vtl_tensor_device(x));
  if (t && vtl_op_copy_(t, x) != VTL_OK) { vtl_tensor_release(t); return NULL; }
  return t;
}

vtl_tensor *vtl_op_to_dtype(vtl_tensor *x, vtl_dtype dt) {
  if (x->dtype == dt) return vtl_tensor_retain(x);
  vtl_tensor *t = vtl_tensor_empty_as(x, x->shape, x->ndim, dt);
  if (t && vtl_op_copy_(t, x) != VTL_OK) { vtl_tensor_release(t); return NULL; }
  return t;
}

/* ---- views ---- */
static vtl_tensor *view_like(const vtl_tensor *x, const int64_t *shape, const int64_t *strides, int nd, int64_t off) {
  return vtl_tensor_view_of(x, shape, strides, nd, off);
}

/* Resolves one -1 in a requested shape against numel. */
static int infer_shape(const char *op, const vtl_tensor *x, const int64_t *shape, int nd, int64_t *out) {
  if (nd > VTL_MAX_DIMS) return vtl_error_set(VTL_ERR_ARG, "%s: at most %d dims", op, VTL_MAX_DIMS), 0;
  int64_t numel = vtl_tensor_numel(x), known = 1;
  int neg = -1;
  for (int i = 0; i < nd; i++) {
    out[i] = shape[i];
    if (shape[i] == -1) {
      if (neg >= 0) return vtl_error_set(VTL_ERR_ARG, "%s: only one dimension can be -1", op), 0;
      neg = i;
    } else if (shape[i] < 0) {
      return vtl_error_set(VTL_ERR_ARG, "%s: invalid size %lld in dimension %d", op, (long long)shape[i], i + 1), 0;
    } else if (shape[i] && known > INT64_MAX / shape[i]) {
      known = -1;
      break;
    } else known *= shape[i];
  }
  if (neg >= 0 && known > 0 && numel % known == 0) out[neg] = numel / known;
  char buf[256];
  vtl_shape_format(shape, nd, buf, sizeof buf);
  if ((neg >= 0 && (known <= 0 || numel % known != 0)) || (neg < 0 && known != numel))
    return vtl_error_set(VTL_ERR_ARG, "%s: shape %s is invalid for input of size %lld", op, buf, (long long)numel), 0;
  return 1;
}

/* Strides for viewing x with a new shape without copying, or 0 when impossible. */
static int view_strides(const vtl_tensor *x, const int64_t *shape, int nd, int64_t *st) {
  if (vtl_tensor_numel(x) == 0 || x->ndim == 0) { vtl_contiguous_strides(shape, nd, st); return 1; }
  int vd = nd - 1;
  int64_t base = x->strides[x->ndim - 1], tn = 1, vn = 1;
  for (int td = x->ndim - 1; td >= 0; td--) {
    tn *= x->shape[td];
    if (td == 0 || (x->shape[td - 1] != 1 && x->strides[td - 1] != tn * base)) {
      while (vd >= 0 && (vn < tn || shape[vd] == 1)) {
        st[vd] = vn * base;
        vn *= shape[vd];
        vd--;
      }
      if (vn != tn) return 0;
      if (td > 0) { base = x->strides[td - 1]; tn = 1; vn = 1; }
    }
  }
  return vd == -1;
}

vtl_tensor *vtl_op_view(const vtl_tensor *x, const int64_t *shape, int nd) {
  int64_t s[VTL_MAX_DIMS], st[VTL_MAX_DIMS];
  if (!infer_shape("view", x, shape, nd, s)) return NULL;
  if (!view_strides(x, s, nd, st))
    return vtl_error_set(VTL_ERR_ARG, "view: the tensor's strides do not allow this shape without a copy; "
                         "use reshape or contiguous first"), NULL;
  return view_like(x, s, st, nd, x->offset);
}

vtl_tensor *vtl_op_reshape(vtl_tensor *x, const int64_t *shape, int nd) {
  int64_t s[VTL_MAX_DIMS], st[VTL_MAX_DIMS];
  if (!infer_shape("reshape", x, shape, nd, s)) return NULL;
  if (view_strides(x, s, nd, st)) return view_like(x, s, st, nd, x->offset);
  vtl_tensor *c = vtl_op_clone(x);
  if (!c) return NULL;
  vtl_tensor *v = vtl_op_view(c, s, nd);
  vtl_tensor_release(c);
  return v;
}

vtl_tensor *vtl_op_permute(const vtl_tensor *x, const int *perm, int n) {
  if (n != x->ndim) return vtl_error_set(VTL_ERR_ARG, "permute: got %d dims for a %d-D tensor", n, x->ndim), NULL;
  int seen[VTL_MAX_DIMS] = {0};
  int64_t s[VTL_MAX_DIMS], st[VTL_MAX_DIMS];
  for (int i = 0; i < n; i++) {
    if (perm[i] < 0 || perm[i] >= n || seen[perm[i]]++)
      return vtl_error_set(VTL_ERR_ARG, "permute: dims must be a permutation of 1..%d", n), NULL;
    s[i] = x->shape[perm[i]];
    st[i] = x->strides[perm[i]];
  }
  return view_like(x, s, st, n, x->offset);
}

vtl_tensor *vtl_op_transpose(const vtl_tensor *x, int d0, int d1) {
  if (x->ndim == 0) return view_like(x, NULL, NULL, 0, x->offset);
  if (!vtl_check_dim("transpose", d0, x->ndim) || !vtl_check_dim("transpose", d1, x->ndim)) return NULL;
  int perm[VTL_MAX_DIMS];
  for (int i = 0; i < x->ndim; i++) perm[i] = i;
  perm[d0] = d1;
  perm[d1] = d0;
  return vtl_op_permute(x, perm, x->ndim);
}

vtl_tensor *vtl_op_slice(const vtl_tensor *x, int dim, int64_t start, int64_t stop, int64_t step) {
  if (!vtl_check_dim("slice", dim, x->ndim) || x->ndim == 0) {
    if (x->ndim == 0) vtl_error_set(VTL_ERR_ARG, "slice: cannot slice a 0-d tensor");
    return NULL;
  }
  if (step <= 0) return vtl_error_set(VTL_ERR_ARG, "slice: step must be positive, got %lld", (long long)step), NULL;
  int64_t n = x->shape[dim];
  if (start < 0 || stop > n || start > stop)
    return vtl_error_set(VTL_ERR_ARG, "slice: range %lld..%lld out of bounds for dim %d of size %lld",
                         (long long)start + 1, (long long)stop, dim + 1, (long long)n), NULL;
  int64_t s[VTL_MAX_DIMS], st[VTL_MAX_DIMS];
  memcpy(s, x->shape, sizeof s);
  memcpy(st, x->strides, sizeof st);
  s[dim] = (stop - start + step - 1) / step;
  st[dim] = x->strides[dim] * step;
  return view_like(x, s, st, x->ndim, x->offset + start * x->strides[dim]);
}

vtl_tensor *vtl_op_narrow(const vtl_tensor *x, int dim, int64_t start, int64_t length) {
  if (x->ndim == 0) return vtl_error_set(VTL_ERR_ARG, "narrow: cannot narrow a 0-d tensor"), NULL;
  if (!vtl_check_dim("narrow", dim, x->ndim)) return NULL;
  if (start < 0 || length < 0 || start + length > x->shape[dim])
    return vtl_error_set(VTL_ERR_ARG, "narrow: start %lld with length %lld exceeds dim %d of size %lld",
                         (long long)start + 1, (long long)length, dim + 1, (long long)x->shape[dim]), NULL;
  return vtl_op_slice(x, dim, start, start + length, 1);
}

vtl_tensor *vtl_op_select(const vtl_tensor *x, int dim, int64_t index) {
  if (x->ndim == 0) return vtl_error_set(VTL_ERR_ARG, "select: cannot index a 0-d tensor"), NULL;
  if (!vtl_check_dim("select", dim, x->ndim)) return NULL;
  if (index < 0 || index >= x->shape[dim])
    return vtl_error_set(VTL_ERR_ARG, "index %lld out of range for dim %d of size %lld", (long long)index + 1,
                         dim + 1, (long long)x->shape[dim]), NULL;
  int64_t s[VTL_MAX_DIMS], st[VTL_MAX_DIMS];
  int k = 0;
  for (int d = 0; d < x->ndim; d++)
    if (d != dim) { s[k] = x->shape[d]; st[k] = x->strides[d]; k++; }
  return view_like(x, s, st, k, x->offset + index * x->strides[dim]);
}

vtl_tensor *vtl_op_squeeze(const vtl_tensor *x, int dim) {
  int64_t s[VTL_MAX_DIMS], st[VTL_MAX_DIMS];
  int k = 0;
  if (dim != VTL_SQUEEZE_ALL && x->ndim && !vtl_check_dim("squeeze", dim, x->ndim)) return NULL;
  for (int d = 0; d < x->ndim; d++) {
    if (x->shape[d] == 1 && (dim == VTL_SQUEEZE_ALL || dim == d)) continue;
    s[k] = x->shape[d];
    st[k] = x->strides[d];
    k++;
  }
  return view_like(x, s, st, k, x->offset);
}

vtl_tensor *vtl_op_unsqueeze(const vtl_tensor *x, int dim) {
  if (dim < 0 || dim > x->ndim)
    return vtl_error_set(VTL_ERR_ARG, "unsqueeze: dim %d out of range for a %d-D tensor (valid: 1..%d)", dim + 1,
                         x->ndim, x->ndim + 1), NULL;
  if (x->ndim >= VTL_MAX_DIMS) return vtl_error_set(VTL_ERR_ARG, "unsqueeze: at most %d dims", VTL_MAX_DIMS), NULL;
  int64_t s[VTL_MAX_DIMS], st[VTL_MAX_DIMS];
  for (int d = 0, k = 0; d <= x->ndim; d++) {
    if (d == dim) {
      s[d] = 1;
      st[d] = d < x->ndim ? x->shape[d] * x->strides[d] : 1;
    } else {
      s[d] = x->shape[k];
      st[d] = x->strides[k];
      k++;
    }
  }
  return view_like(x, s, st, x->ndim + 1, x->offset);
}

vtl_tensor *vtl_op_expand(const vtl_tensor *x, const int64_t *shape, int nd) {
  if (nd < x->ndim || nd > VTL_MAX_DIMS)
    return vtl_error_set(VTL_ERR_ARG, "expand: %d sizes given for a %d-D tensor", nd, x->ndim), NULL;
  int64_t s[VTL_MAX_DIMS], st[VTL_MAX_DIMS];
  int lead = nd - x->ndim;
  for (int d = 0; d < nd; d++) {
    int xd = d - lead;
    int64_t want = shape[d];
    if (xd < 0) {
      if (want < 0) return vtl_error_set(VTL_ERR_ARG, "expand: -1 not allowed for a new leading dim"), NULL;
      s[d] = want;
      st[d] = 0;
    } else if (want == -1 || want == x->shape[xd]) {
      s[d] = x->shape[xd];
      st[d] = x->strides[xd];
    } else if (x->shape[xd] == 1 && want >= 0) {
      s[d] = want;
      st[d] = 0;
    } else {
      char a[128], b[128];
      vtl_shape_format(x->shape, x->ndim, a, sizeof a);
      vtl_shape_format(shape, nd, b, sizeof b);
      return vtl_error_set(VTL_ERR_ARG, "expand: cannot expand shape %s to %s", a, b), NULL;
    }
  }
  if (vtl_shape_numel(s, nd, vtl_dtype_size(x->dtype), "expand") < 0) return NULL;
  return view_like(x, s, st, nd, x->offset);
}

vtl_tensor *vtl_op_flatten(vtl_tensor *x, int start, int end) {
  if (x->ndim == 0) {
    int64_t one = 1;
    return vtl_op_reshape(x, &one, 1);
  }
  if (!vtl_check_dim("flatten", start, x->ndim) || !vtl_check_dim("flatten", end, x->ndim)) return NULL;
  if (start > end) return vtl_error_set(VTL_ERR_ARG, "flatten: start dim must not come after end dim"), NULL;
  int64_t s[VTL_MAX_DIMS];
  int k = 0;
  for (int d = 0; d < x->ndim; d++) {
    if (d > start && d <= end) s[k - 1] *= x->shape[d];
    else s[k++] = x->shape[d];
  }
  return vtl_op_reshape(x, s, k);
}

vtl_tensor *vtl_op_unfold(const vtl_tensor *x, int dim, int64_t size, int64_t step) {
  if (x->ndim == 0 || !vtl_check_dim("unfold", dim, x->ndim)) {
    if (x->ndim == 0) vtl_error_set(VTL_ERR_ARG, "unfold: cannot unfold a 0-d tensor");
    return NULL;
  }
  if (x->ndim >= VTL_MAX_DIMS) return vtl_error_set(VTL_ERR_ARG, "unfold: at most %d dims", VTL_MAX_DIMS), NULL;
  if (size < 0 || size > x->shape[dim] || step <= 0)
    return vtl_error_set(VTL_ERR_ARG, "unfold: size %lld and step %lld invalid for dim %d of size %lld",
                         (long long)size, (long long)step, dim + 1, (long long)x->shape[dim]), NULL;
  int64_t s[VTL_MAX_DIMS], st[VTL_MAX_DIMS];
  memcpy(s, x->shape, sizeof s);
  memcpy(st, x->strides, sizeof st);
  s[dim] = (x->shape[dim] - size) / step + 1;
  st[dim] = x->strides[dim] * step;
  s[x->ndim] = size;
  st[x->ndim] = x->strides[dim];
  return view_like(x, s, st, x->ndim + 1, x->offset);
}

/* ---- broadcasting ---- */
int vtl_broadcast_shapes(const char *op, const int64_t *a, int na, const int64_t *b, int nb, int64_t *out) {
  int nd = na > nb ? na : nb;
  int64_t res[VTL_MAX_DIMS];
  for (int i = 0; i < nd; i++) {
    int ia = na - nd + i, ib = nb - nd + i;
    int64_t sa = ia >= 0 ? a[ia] : 1, sb = ib >= 0 ? b[ib] : 1;
    if (sa != sb && sa != 1 && sb != 1) {
      char x[128], y[128];
      vtl_shape_format(a, na, x, sizeof x);
      vtl_shape_format(b, nb, y, sizeof y);
      vtl_error_set(VTL_ERR_ARG, "%s: shapes %s and %s cannot be broadcast (dim %d: %lld vs %lld)", op, x, y,
                    i + 1, (long long)sa, (long long)sb);
      return -1;
    }
    res[i] = sa == 1 ? sb : sa;
  }
  memcpy(out, res, (size_t)nd * sizeof *res);
  return nd;
}

int vtl_broadcast_shape(const char *op, const vtl_tensor *a, const vtl_tensor *b, int64_t *out) {
  return vtl_broadcast_shapes(op, a->shape, a->ndim, b->shape, b->ndim, out);
}

vtl_tensor *vtl_broadcast_to(const vtl_tensor *x, const int64_t *shape, int nd) {
  if (nd < x->ndim) return vtl_error_set(VTL_ERR_ARG, "broadcast: cannot broadcast to fewer dims"), NULL;
  int64_t s[VTL_MAX_DIMS], st[VTL_MAX_DIMS];
  int lead = nd - x->ndim;
  for (int d = 0; d < nd; d++) {
    int xd = d - lead;
    s[d] = shape[d];
    if (xd < 0) st[d] = 0;
    else if (x->shape[xd] == shape[d]) st[d] = x->strides[xd];
    else if (x->shape[xd] == 1) st[d] = 0;
    else return vtl_error_set(VTL_ERR_ARG, "broadcast: shape mismatch in dim %d", d + 1), NULL;
  }
  return view_like(x, s, st, nd, x->offset);
}
