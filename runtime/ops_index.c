/* Ops: indexing (gather/scatter families, masks) and joining (cat, stack, repeat). */
#include <stdlib.h>
#include <string.h>
#include "ops.h"

/* index as a contiguous i64 tensor with every value in [0, size); NULL with an error naming
   the first bad value otherwise. */
static vtl_tensor *checked_index(const char *op, vtl_tensor *index, int64_t size, int dim) {
  if (index->dtype != VTL_I64 && index->dtype != VTL_I32 && index->dtype != VTL_U8)
    return vtl_error_set(VTL_ERR_ARG, "%s: index must be an integer tensor, got %s", op, vtl_dtype_name(index->dtype)), NULL;
  vtl_tensor *c = vtl_op_contiguous(index);
  vtl_tensor *t = c ? vtl_op_to_dtype(c, VTL_I64) : NULL;
  vtl_tensor_release(c);
  if (!t) return NULL;
  /* a device index is checked in a host copy (the kernels trust it) */
  vtl_tensor *h = vtl_tensor_device(t).type == VTL_CPU ? vtl_tensor_retain(t)
                                                       : vtl_tensor_to_device(t, (vtl_device){VTL_CPU, 0});
  if (!h) {
    vtl_tensor_release(t);
    return NULL;
  }
  const int64_t *p = vtl_tensor_data(h);
  int64_t n = vtl_tensor_numel(h);
  for (int64_t i = 0; i < n; i++)
    if (p[i] < 0 || p[i] >= size) {
      int64_t bad = p[i];
      vtl_tensor_release(h);
      vtl_tensor_release(t);
      return vtl_error_set(VTL_ERR_ARG, "%s: index %lld out of range for dim %d of size %lld", op,
                           (long long)bad + 1, dim + 1, (long long)size), NULL;
    }
  vtl_tensor_release(h);
  return t;
}

/* x, index (and src) on one device whose backend has the kernel (gather, or scatter) */
static vtl_status index_devices(const char *op, vtl_tensor *x, vtl_tensor *index, vtl_tensor *src, bool scatter) {
  if (vtl_tensor_device(x).type == VTL_CPU) {
    if (vtl_require_cpu(op, index) || (src && vtl_require_cpu(op, src))) return vtl_error_status();
    return VTL_OK;
  }
  const vtl_backend *be = vtl_backend_get(vtl_tensor_device(x));
  if (!be) return vtl_error_status();
  if (scatter ? !be->scatter : !be->gather) return vtl_require_cpu(op, x);
  if (vtl_check_same_device(op, x, index) || (src && vtl_check_same_device(op, x, src))) return vtl_error_status();
  return VTL_OK;
}

vtl_tensor *vtl_op_gather(vtl_tensor *x, int dim, vtl_tensor *index) {
  if (index_devices("gather", x, index, NULL, false)) return NULL;
  if (x->ndim == 0) return vtl_error_set(VTL_ERR_ARG, "gather: cannot gather from a 0-d tensor"), NULL;
  if (!vtl_check_dim("gather", dim, x->ndim)) return NULL;
  if (index->ndim != x->ndim)
    return vtl_error_set(VTL_ERR_ARG, "gather: index must have %d dims like the input, got %d", x->ndim, index->ndim), NULL;
  for (int d = 0; d < x->ndim; d++)
    if (d != dim && index->shape[d] > x->shape[d])
      return vtl_error_set(VTL_ERR_ARG, "gather: index size %lld exceeds input size %lld in dim %d",
                           (long long)index->shape[d], (long long)x->shape[d], d + 1), NULL;
  vtl_tensor *ix = checked_index("gather", index, x->shape[dim], dim);
  if (!ix) return NULL;
  vtl_tensor *out = vtl_tensor_empty(index->shape, index->ndim, x->dtype, vtl_tensor_device(x));
  const vtl_backend *be = vtl_backend_get(vtl_tensor_device(x));
  if (out && be->gather(out, x, dim, ix) != VTL_OK) { vtl_tensor_release(out); out = NULL; }
  vtl_tensor_release(ix);
  return out;
}

vtl_tensor *vtl_op_index_select(vtl_tensor *x, int dim, vtl_tensor *index) {
  if (index_devices("index_select", x, index, NULL, false)) return NULL;
  if (x->ndim == 0) return vtl_error_set(VTL_ERR_ARG, "index_select: cannot index a 0-d tensor"), NULL;
  if (!vtl_check_dim("index_select", dim, x->ndim)) return NULL;
  if (index->ndim > 1) return vtl_error_set(VTL_ERR_ARG, "index_select: index must be 1-D, got %d-D", index->ndim), NULL;
  vtl_tensor *ix = checked_index("index_select", index, x->shape[dim], dim);
  if (!ix) return NULL;
  /* the 1-D index broadcast along every other dim is a gather index */
  int64_t shape[VTL_MAX_DIMS], st[VTL_MAX_DIMS] = {0};
  memcpy(shape, x->shape, sizeof shape);
  shape[dim] = vtl_tensor_numel(ix);
  st[dim] = 1;
  vtl_tensor *g = vtl_tensor_view_of(ix, shape, st, x->ndim, 0);
  vtl_tensor_release(ix);
  if (!g) return NULL;
  vtl_tensor *out = vtl_tensor_empty(shape, x->ndim, x->dtype, vtl_tensor_device(x));
  const vtl_backend *be = vtl_backend_get(vtl_tensor_device(x));
  if (out && be->gather(out, x, dim, g) != VTL_OK) { vtl_tensor_release(out); out = NULL; }
  vtl_tensor_release(g);
  return out;
}

vtl_status vtl_op_scatter_(vtl_tensor *x, int dim, vtl_tensor *index, vtl_tensor *src, bool accumulate) {
  const char *op = accumulate ? "scatter_add" : "scatter";
  if (index_devices(op, x, index, src, true)) return vtl_error_status();
  if (x->ndim == 0) return vtl_error_set(VTL_ERR_ARG, "%s: cannot scatter into a 0-d tensor", op);
  if (!vtl_check_dim(op, dim, x->ndim)) return vtl_error_status();
  if (index->ndim != x->ndim || src->ndim != x->ndim)
    return vtl_error_set(VTL_ERR_ARG, "%s: index and src must have %d dims like the input", op, x->ndim);
  for (int d = 0; d < x->ndim; d++) {
    if (index->shape[d] > src->shape[d])
      return vtl_error_set(VTL_ERR_ARG, "%s: index size %lld exceeds src size %lld in dim %d", op,
                           (long long)index->shape[d], (long long)src->shape[d], d + 1);
    if (d != dim && index->shape[d] > x->shape[d])
      return vtl_error_set(VTL_ERR_ARG, "%s: index size %lld exceeds input size %lld in dim %d", op,
                           (long long)index->shape[d], (long long)x->shape[d], d + 1);
  }
  vtl_tensor *ix = checked_index(op, index, x->shape[dim], dim);
  if (!ix) return vtl_error_status();
  vtl_tensor *s = vtl_op_to_dtype(src, x->dtype);
  if (s && s->storage == x->storage) { vtl_tensor *c = vtl_op_clone(s); vtl_tensor_release(s); s = c; }
  vtl_status st = s ? vtl_backend_get(vtl_tensor_device(x))->scatter(x, dim, ix, s, accumulate) : vtl_error_status();
  vtl_tensor_release(ix);
  vtl_tensor_release(s);
  return st;
}

vtl_tensor *vtl_op_scatter(vtl_tensor *x, int dim, vtl_tensor *index, vtl_tensor *src, bool accumulate) {
  vtl_tensor *out = vtl_op_clone(x);
  if (out && vtl_op_scatter_(out, dim, index, src, accumulate) != VTL_OK) { vtl_tensor_release(out); return NULL; }
  return out;
}

vtl_status vtl_op_index_copy_(vtl_tensor *x, int dim, vtl_tensor *index, vtl_tensor *src) {
  if (index_devices("index_copy", x, index, src, true)) return vtl_error_status();
  if (x->ndim == 0) return vtl_error_set(VTL_ERR_ARG, "index_copy: cannot index a 0-d tensor");
  if (!vtl_check_dim("index_copy", dim, x->ndim)) return vtl_error_status();
  if (index->ndim > 1) return vtl_error_set(VTL_ERR_ARG, "index_copy: index must be 1-D, got %d-D", index->ndim);
  int64_t shape[VTL_MAX_DIMS];
  memcpy(shape, x->shape, sizeof shape);
  shape[dim] = vtl_tensor_numel(index);
  vtl_tensor *s = vtl_broadcast_to(src, shape, x->ndim);
  if (!s) {
    char a[128], b[128];
    vtl_shape_format(src->shape, src->ndim, a, sizeof a);
    vtl_shape_format(shape, x->ndim, b, sizeof b);
    return vtl_error_set(VTL_ERR_ARG, "index_copy: source of shape %s does not fit %s", a, b);
  }
  vtl_tensor *ix = checked_index("index_copy", index, x->shape[dim], dim);
  vtl_status st = ix ? VTL_OK : vtl_error_status();
  if (ix) {
    int64_t st1[VTL_MAX_DIMS] = {0};
    st1[dim] = 1;
    vtl_tensor *g = vtl_tensor_view_of(ix, shape, st1, x->ndim, 0);
    st = g ? vtl_op_scatter_(x, dim, g, s, false) : vtl_error_status();
    vtl_tensor_release(g);
  }
  vtl_tensor_release(ix);
  vtl_tensor_release(s);
  return st;
}

/* Flat positions (0-based, in x's logical order) where mask (broadcast to shape) is true. */
/* mask on a device whose backend finds non-zeros (the CPU, or a GPU with the kernel) */
static vtl_status mask_device(const char *op, vtl_tensor *mask) {
  if (vtl_tensor_device(mask).type == VTL_CPU) return VTL_OK;
  const vtl_backend *be = vtl_backend_get(vtl_tensor_device(mask));
  if (!be) return vtl_error_status();
  return be->nonzero_flat && be->gather ? VTL_OK : vtl_require_cpu(op, mask);
}

static vtl_tensor *mask_positions(const char *op, vtl_tensor *mask, const int64_t *shape, int nd) {
  if (mask_device(op, mask)) return NULL;
  if (mask->dtype != VTL_BOOL)
    return vtl_error_set(VTL_ERR_ARG, "%s: mask must be a bool tensor, got %s", op, vtl_dtype_name(mask->dtype)), NULL;
  vtl_tensor *m = vtl_broadcast_to(mask, shape, nd);
  if (!m) {
    char a[128], b[128];
    vtl_shape_format(mask->shape, mask->ndim, a, sizeof a);
    vtl_shape_format(shape, nd, b, sizeof b);
    return vtl_error_set(VTL_ERR_ARG, "%s: mask of shape %s does not match shape %s", op, a, b), NULL;
  }
  vtl_tensor *c = vtl_op_clone(m);
  vtl_tensor_release(m);
  if (!c) return NULL;
  vtl_tensor *cnt = vtl_op_reduce(VTL_RED_SUM, c, 0, false, 0, NULL);
  if (cnt && vtl_tensor_device(cnt).type != VTL_CPU) { /* the count, read on the host */
    vtl_tensor *h = vtl_tensor_to_device(cnt, (vtl_device){VTL_CPU, 0});
    vtl_tensor_release(cnt);
    cnt = h;
  }
  vtl_tensor *pos = NULL;
  if (cnt) {
    int64_t n = *(int64_t *)vtl_tensor_data(cnt);
    pos = vtl_tensor_empty(&n, 1, VTL_I64, vtl_tensor_device(c));
    if (pos && vtl_backend_get(vtl_tensor_device(c))->nonzero_flat(pos, c) != VTL_OK) { vtl_tensor_release(pos); pos = NULL; }
  }
  vtl_tensor_release(cnt);
  vtl_tensor_release(c);
  return pos;
}

vtl_tensor *vtl_op_masked_select(vtl_tensor *x, vtl_tensor *mask) {
  if (vtl_check_same_device("masked_select", x, mask) || mask_device("masked_select", x)) return NULL;
  int64_t shape[VTL_MAX_DIMS];
  int nd = vtl_broadcast_shape("masked_select", x, mask, shape);
  if (nd < 0) return NULL;
  vtl_tensor *pos = mask_positions("masked_select", mask, shape, nd);
  if (!pos) return NULL;
  vtl_tensor *ex = vtl_broadcast_to(x, shape, nd);
  int64_t n = 1;
  for (int d = 0; d < nd; d++) n *= shape[d];
  vtl_tensor *flat = ex ? vtl_op_reshape(ex, &n, 1) : NULL;
  vtl_tensor *out = flat ? vtl_op_index_select(flat, 0, pos) : NULL;
  vtl_tensor_release(ex);
  vtl_tensor_release(flat);
  vtl_tensor_release(pos);
  return out;
}

vtl_status vtl_op_masked_scatter_(vtl_tensor *x, vtl_tensor *mask, vtl_tensor *src) {
  if (index_devices("masked_scatter_", x, mask, src, true)) return vtl_error_status();
  vtl_tensor *pos = mask_positions("masked_scatter", mask, x->shape, x->ndim);
  if (!pos) return vtl_error_status();
  int64_t k = vtl_tensor_numel(pos), ns = vtl_tensor_numel(src);
  vtl_status st = VTL_OK;
  if (ns < k) {
    st = vtl_error_set(VTL_ERR_ARG, "masked_scatter: source has %lld elements but the mask selects %lld",
                       (long long)ns, (long long)k);
  } else {
    /* values laid out densely in x's shape, then taken where the mask is set */
    int64_t n = vtl_tensor_numel(x);
    vtl_tensor *dense = vtl_tensor_zeros(&n, 1, x->dtype, vtl_tensor_device(x));
    vtl_tensor *sflat = dense ? vtl_op_reshape(src, &ns, 1) : NULL;
    vtl_tensor *sk = sflat ? vtl_op_narrow(sflat, 0, 0, k) : NULL;
    if (sk) st = vtl_op_scatter_(dense, 0, pos, sk, false);
    else st = vtl_error_status();
    vtl_tensor *dv = st == VTL_OK ? vtl_op_view(dense, x->shape, x->ndim) : NULL;
    vtl_tensor *w = dv ? vtl_op_where(mask, dv, x) : NULL;
    if (st == VTL_OK) st = w ? vtl_op_copy_(x, w) : vtl_error_status();
    vtl_tensor_release(dense);
    vtl_tensor_release(sflat);
    vtl_tensor_release(sk);
    vtl_tensor_release(dv);
    vtl_tensor_release(w);
  }
  vtl_tensor_release(pos);
  return st;
}

/* The mask covers x's leading dims exactly (x[mask] in PyTorch); returns their count or -1. */
static int mask_leading(const char *op, const vtl_tensor *x, const vtl_tensor *mask) {
  int ok = mask->dtype == VTL_BOOL && mask->ndim <= x->ndim && mask->ndim > 0;
  for (int d = 0; ok && d < mask->ndim; d++) ok = mask->shape[d] == x->shape[d];
  if (!ok) {
    char a[128], b[128];
    vtl_shape_format(mask->shape, mask->ndim, a, sizeof a);
    vtl_shape_format(x->shape, x->ndim, b, sizeof b);
    if (mask->dtype != VTL_BOOL)
      vtl_error_set(VTL_ERR_ARG, "%s: mask must be a bool tensor, got %s", op, vtl_dtype_name(mask->dtype));
    else
      vtl_error_set(VTL_ERR_ARG, "%s: mask of shape %s does not match the leading dims of shape %s", op, a, b);
    return -1;
  }
  return mask->ndim;
}

vtl_tensor *vtl_op_mask_index(vtl_tensor *x, vtl_tensor *mask) {
  if (vtl_check_same_device("index", x, mask) || mask_device("index", x)) return NULL;
  int k = mask_leading("index", x, mask);
  if (k < 0) return NULL;
  int64_t shape[VTL_MAX_DIMS];
  shape[0] = vtl_tensor_numel(mask);
  for (int d = k; d < x->ndim; d++) shape[d - k + 1] = x->shape[d];
  vtl_tensor *pos = mask_positions("index", mask, mask->shape, mask->ndim);
  vtl_tensor *x2 = pos ? vtl_op_reshape(x, shape, x->ndim - k + 1) : NULL;
  vtl_tensor *out = x2 ? vtl_op_index_select(x2, 0, pos) : NULL;
  vtl_tensor_release(pos);
  vtl_tensor_release(x2);
  return out;
}

vtl_status vtl_op_mask_assign_(vtl_tensor *x, vtl_tensor *mask, vtl_tensor *src, double value) {
  if (index_devices("index assignment", x, mask, src, true)) return vtl_error_status();
  int k = mask_leading("index assignment", x, mask);
  if (k < 0) return vtl_error_status();
  /* the mask over every element: trailing dims added and expanded */
  int64_t ms[VTL_MAX_DIMS], mst[VTL_MAX_DIMS];
  for (int d = 0; d < x->ndim; d++) {
    ms[d] = x->shape[d];
    mst[d] = d < k ? mask->strides[d] : 0;
  }
  vtl_tensor *full = vtl_tensor_view_of(mask, ms, mst, x->ndim, mask->offset);
  if (!full) return vtl_error_status();
  vtl_status st;
  if (!src) st = vtl_op_masked_fill_(x, full, value);
  else {
    vtl_tensor *cnt = vtl_op_reduce(VTL_RED_SUM, mask, 0, false, 0, NULL);
    if (cnt && vtl_tensor_device(cnt).type != VTL_CPU) { /* the count, read on the host */
      vtl_tensor *h = vtl_tensor_to_device(cnt, (vtl_device){VTL_CPU, 0});
      vtl_tensor_release(cnt);
      cnt = h;
    }
    vtl_tensor *sel = NULL;
    if (cnt) {
      int64_t shape[VTL_MAX_DIMS];
      shape[0] = *(int64_t *)vtl_tensor_data(cnt);
      for (int d = k; d < x->ndim; d++) shape[d - k + 1] = x->shape[d];
      vtl_tensor *b = vtl_broadcast_to(src, shape, x->ndim - k + 1);
      if (!b) {
        char a1[128], a2[128];
        vtl_shape_format(src->shape, src->ndim, a1, sizeof a1);
        vtl_shape_format(shape, x->ndim - k + 1, a2, sizeof a2);
        vtl_error_set(VTL_ERR_ARG, "index assignment: value of shape %s does not fit the selection %s", a1, a2);
      } else {
        sel = vtl_op_contiguous(b);
        vtl_tensor_release(b);
      }
    }
    st = sel ? vtl_op_masked_scatter_(x, full, sel) : vtl_error_status();
    vtl_tensor_release(cnt);
    vtl_tensor_release(sel);
  }
  vtl_tensor_release(full);
  return st;
}

vtl_tensor *vtl_op_nonzero(vtl_tensor *x) {
  if (mask_device("nonzero", x)) return NULL;
  vtl_tensor *m = x->dtype == VTL_BOOL ? vtl_tensor_retain(x) : vtl_op_binary_scalar(VTL_BIN_NE, x, 0, false, false);
  if (!m) return NULL;
  vtl_tensor *pos = mask_positions("nonzero", m, x->shape, x->ndim);
  vtl_tensor_release(m);
  if (pos && vtl_tensor_device(pos).type != VTL_CPU) { /* coordinates made on the host, then moved */
    vtl_tensor *h = vtl_tensor_to_device(pos, (vtl_device){VTL_CPU, 0});
    vtl_tensor_release(pos);
    pos = h;
  }
  if (!pos) return NULL;
  int64_t n = vtl_tensor_numel(pos), shape[2] = {n, x->ndim};
  vtl_tensor *out = vtl_tensor_empty(shape, 2, VTL_I64, (vtl_device){VTL_CPU, 0});
  if (out) { /* unravel flat positions into coordinates */
    const int64_t *p = vtl_tensor_data(pos);
    int64_t *o = vtl_tensor_data(out);
    for (int64_t i = 0; i < n; i++) {
      int64_t r = p[i];
      for (int d = x->ndim - 1; d >= 0; d--) { o[i * x->ndim + d] = r % x->shape[d]; r /= x->shape[d]; }
    }
  }
  vtl_tensor_release(pos);
  if (out && vtl_tensor_device(x).type != VTL_CPU) {
    vtl_tensor *d = vtl_tensor_to_device(out, vtl_tensor_device(x));
    vtl_tensor_release(out);
    out = d;
  }
  return out;
}

/* ---- joining ---- */
vtl_tensor *vtl_op_cat(vtl_tensor *const *xs, int n, int dim) {
  if (n <= 0) return vtl_error_set(VTL_ERR_ARG, "cat: expected a non-empty list of tensors"), NULL;
  const vtl_tensor *ref = NULL;
  for (int i = 0; i < n; i++) /* 1-D empty tensors are skipped, as in PyTorch */
    if (!(xs[i]->ndim == 1 && xs[i]->shape[0] == 0)) { ref = xs[i]; break; }
  if (!ref) ref = xs[0];
  if (ref->ndim == 0) return vtl_error_set(VTL_ERR_ARG, "cat: zero-dimensional tensors cannot be concatenated"), NULL;
  if (!vtl_check_dim("cat", dim, ref->ndim)) return NULL;
  vtl_dtype dt = xs[0]->dtype;
  int64_t total = 0;
  for (int i = 0; i < n; i++) {
    const vtl_tensor *x = xs[i];
    if (vtl_check_same_device("cat", ref, x) != VTL_OK) return NULL;
    dt = vtl_dtype_promote(dt, x->dtype);
    if (x->ndim == 1 && x->shape[0] == 0 && ref->ndim != 1) continue;
    int ok = x->ndim == ref->ndim;
    for (int d = 0; ok && d < x->ndim; d++) ok = d == dim || x->shape[d] == ref->shape[d];
    if (!ok) {
      char a[128], b[128];
      vtl_shape_format(x->shape, x->ndim, a, sizeof a);
      vtl_shape_format(ref->shape, ref->ndim, b, sizeof b);
      return vtl_error_set(VTL_ERR_ARG, "cat: tensor %d has shape %s, expected %s except in dim %d", i + 1, a, b,
                           dim + 1), NULL;
    }
    total += x->shape[dim];
  }
  int64_t shape[VTL_MAX_DIMS];
  memcpy(shape, ref->shape, sizeof shape);
  shape[dim] = total;
  vtl_tensor *out = vtl_tensor_empty(shape, ref->ndim, dt, vtl_tensor_device(ref));
  if (!out) return NULL;
  int64_t at = 0;
  for (int i = 0; i < n; i++) {
    const vtl_tensor *x = xs[i];
    if (x->ndim != ref->ndim) continue;
    vtl_tensor *dst = vtl_op_narrow(out, dim, at, x->shape[dim]);
    vtl_status st = dst ? vtl_op_copy_(dst, x) : vtl_error_status();
    vtl_tensor_release(dst);
    if (st != VTL_OK) { vtl_tensor_release(out); return NULL; }
    at += x->shape[dim];
  }
  return out;
}

vtl_tensor *vtl_op_stack(vtl_tensor *const *xs, int n, int dim) {
  if (n <= 0) return vtl_error_set(VTL_ERR_ARG, "stack: expected a non-empty list of tensors"), NULL;
  if (dim < 0 || dim > xs[0]->ndim)
    return vtl_error_set(VTL_ERR_ARG, "stack: dim %d out of range for %d-D tensors (valid: 1..%d)", dim + 1,
                         xs[0]->ndim, xs[0]->ndim + 1), NULL;
  vtl_tensor **us = calloc((size_t)n, sizeof *us);
  if (!us) return vtl_error_set(VTL_ERR_OOM, "stack: out of memory"), NULL;
  vtl_tensor *out = NULL;
  int i = 0;
  for (; i < n; i++) {
    if (xs[i]->ndim != xs[0]->ndim || memcmp(xs[i]->shape, xs[0]->shape, (size_t)xs[0]->ndim * sizeof(int64_t))) {
      char a[128], b[128];
      vtl_shape_format(xs[i]->shape, xs[i]->ndim, a, sizeof a);
      vtl_shape_format(xs[0]->shape, xs[0]->ndim, b, sizeof b);
      vtl_error_set(VTL_ERR_ARG, "stack: tensor %d has shape %s, expected %s", i + 1, a, b);
      break;
    }
    if (!(us[i] = vtl_op_unsqueeze(xs[i], dim))) break;
  }
  if (i == n) out = vtl_op_cat(us, n, dim);
  for (int j = 0; j < n; j++) vtl_tensor_release(us[j]);
  free(us);
  return out;
}

vtl_tensor *vtl_op_repeat(vtl_tensor *x, const int64_t *reps, int n) {
  if (n < x->ndim)
    return vtl_error_set(VTL_ERR_ARG, "repeat: %d repeat counts given for a %d-D tensor (need at least %d)", n,
                         x->ndim, x->ndim), NULL;
  if (2 * n > VTL_MAX_DIMS) return vtl_error_set(VTL_ERR_ARG, "repeat: too many dims"), NULL;
  /* view x as (1, s0, 1, s1, ...) expanded to (r0, s0, r1, s1, ...), copy, then merge pairs */
  int64_t shape[VTL_MAX_DIMS], st[VTL_MAX_DIMS], fin[VTL_MAX_DIMS];
  int lead = n - x->ndim;
  for (int d = 0; d < n; d++) {
    if (reps[d] < 0) return vtl_error_set(VTL_ERR_ARG, "repeat: counts must be non-negative"), NULL;
    int xd = d - lead;
    int64_t s = xd >= 0 ? x->shape[xd] : 1;
    shape[2 * d] = reps[d];
    st[2 * d] = 0;
    shape[2 * d + 1] = s;
    st[2 * d + 1] = xd >= 0 ? x->strides[xd] : 0;
    fin[d] = reps[d] * s;
  }
  if (vtl_shape_numel(fin, n, vtl_dtype_size(x->dtype), "repeat") < 0) return NULL;
  vtl_tensor *v = vtl_tensor_view_of(x, shape, st, 2 * n, x->offset);
  vtl_tensor *c = v ? vtl_op_clone(v) : NULL;
  vtl_tensor_release(v);
  if (!c) return NULL;
  vtl_tensor *out = vtl_op_view(c, fin, n);
  vtl_tensor_release(c);
  return out;
}
