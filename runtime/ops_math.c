/* Ops: elementwise (with broadcasting and type promotion), reductions, sort, matmul. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "ops.h"
#include "gemm.h"

static const char *unary_names[VTL_UN_COUNT] = {
  "copy", "neg", "abs", "sign", "exp", "log", "sqrt", "rsqrt", "sigmoid", "tanh", "relu", "floor", "ceil",
  "round", "trunc", "sin", "cos", "log1p", "expm1", "reciprocal", "square", "logical_not", "clamp", "isnan",
  "isinf", "log2", "erf"};
static const char *binary_names[VTL_BIN_COUNT] = {
  "add", "sub", "mul", "div", "pow", "maximum", "minimum", "remainder", "floor_divide", "atan2", "eq", "ne",
  "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor"};

const char *vtl_unary_name(vtl_unary_op op) { return unary_names[op]; }
const char *vtl_binary_name(vtl_binary_op op) { return binary_names[op]; }

/* The backend of the tensors' common device, or NULL with an error naming the op. */
static const vtl_backend *backend_of(const char *op, vtl_tensor *const *ts, int n) {
  for (int i = 1; i < n; i++)
    if (vtl_check_same_device(op, ts[0], ts[i]) != VTL_OK) return NULL;
  return vtl_backend_get(vtl_tensor_device(ts[0]));
}

/* dtype the kernels compute in: half types in f32, bool arithmetic in u8 */
static vtl_dtype compute_of(vtl_dtype d) {
  if (d == VTL_F16 || d == VTL_BF16) return VTL_F32;
  if (d == VTL_BOOL) return VTL_U8;
  return d;
}

static int unary_floaty(vtl_unary_op op) {
  switch (op) {
  case VTL_UN_EXP: case VTL_UN_LOG: case VTL_UN_LOG2: case VTL_UN_SQRT: case VTL_UN_RSQRT:
  case VTL_UN_SIGMOID: case VTL_UN_TANH: case VTL_UN_SIN: case VTL_UN_COS: case VTL_UN_LOG1P:
  case VTL_UN_EXPM1: case VTL_UN_RECIPROCAL: case VTL_UN_ERF:
    return 1;
  default: return 0;
  }
}

/* result dtype and compute dtype of a unary op; 0 with the error set when unsupported */
static int unary_types(vtl_unary_op op, vtl_dtype in, vtl_dtype *res, vtl_dtype *cdt) {
  if (unary_floaty(op)) {
    *res = vtl_dtype_is_float(in) ? in : VTL_F32;
    *cdt = *res == VTL_F64 ? VTL_F64 : VTL_F32;
    return 1;
  }
  if (op == VTL_UN_LOGICAL_NOT) { *res = VTL_BOOL; *cdt = VTL_BOOL; return 1; }
  if (op == VTL_UN_ISNAN || op == VTL_UN_ISINF) { *res = VTL_BOOL; *cdt = in == VTL_F64 ? VTL_F64 : VTL_F32; return 1; }
  if (in == VTL_BOOL && op != VTL_UN_COPY)
    return vtl_error_set(VTL_ERR_ARG, "%s: not supported for bool tensors", unary_names[op]), 0;
  *res = in;
  *cdt = compute_of(in);
  return 1;
}

vtl_tensor *vtl_op_unary(vtl_unary_op op, vtl_tensor *x, const double *params) {
  vtl_dtype res, cdt;
  if (!unary_types(op, x->dtype, &res, &cdt)) return NULL;
  const vtl_backend *be = backend_of(unary_names[op], &x, 1);
  if (!be) return NULL;
  vtl_tensor *out = vtl_tensor_empty_as(x, x->shape, x->ndim, res);
  if (!out) return NULL;
  vtl_status st;
  if ((op == VTL_UN_ISNAN || op == VTL_UN_ISINF) && !vtl_dtype_is_float(x->dtype)) st = be->fill(out, 0);
  else st = be->unary(op, out, x, cdt, params);
  if (st != VTL_OK) { vtl_tensor_release(out); return NULL; }
  return out;
}

vtl_status vtl_op_unary_(vtl_unary_op op, vtl_tensor *x, const double *params) {
  vtl_dtype res, cdt;
  if (!unary_types(op, x->dtype, &res, &cdt)) return vtl_error_status();
  if (res != x->dtype)
    return vtl_error_set(VTL_ERR_ARG, "%s_: result type %s cannot be stored in a %s tensor in place", unary_names[op],
                         vtl_dtype_name(res), vtl_dtype_name(x->dtype));
  const vtl_backend *be = backend_of(unary_names[op], &x, 1);
  return be ? be->unary(op, x, x, cdt, params) : vtl_error_status();
}

static int is_compare(vtl_binary_op op) { return op >= VTL_BIN_EQ && op <= VTL_BIN_GE; }
static int is_logical(vtl_binary_op op) { return op >= VTL_BIN_LOGICAL_AND; }

/* result dtype of op on operands promoted to `p` */
static int binary_result(vtl_binary_op op, vtl_dtype p, vtl_dtype *res) {
  if (is_compare(op) || is_logical(op)) { *res = VTL_BOOL; return 1; }
  if (op == VTL_BIN_DIV || op == VTL_BIN_ATAN2) { *res = vtl_dtype_is_float(p) ? p : VTL_F32; return 1; }
  if (p == VTL_BOOL && op != VTL_BIN_ADD && op != VTL_BIN_MUL && op != VTL_BIN_MAXIMUM && op != VTL_BIN_MINIMUM)
    return vtl_error_set(VTL_ERR_ARG, "%s: not supported for bool tensors", binary_names[op]), 0;
  *res = p;
  return 1;
}

static vtl_dtype binary_compute(vtl_binary_op op, vtl_dtype p, vtl_dtype res) {
  if (is_logical(op)) return VTL_BOOL;
  if (is_compare(op)) return compute_of(p);
  return compute_of(res);
}

/* Integer division by zero would trap: refuse it like PyTorch does. */
static int check_int_divisor(vtl_binary_op op, vtl_dtype cdt, vtl_tensor *b) {
  if ((op != VTL_BIN_REMAINDER && op != VTL_BIN_FLOOR_DIVIDE) || vtl_dtype_is_float(cdt)) return 1;
  vtl_tensor *z = vtl_op_binary_scalar(VTL_BIN_EQ, b, 0, false, false);
  if (!z) return 0;
  vtl_tensor *any = vtl_op_reduce(VTL_RED_ANY, z, 0, false, 0, NULL);
  vtl_tensor_release(z);
  vtl_tensor *host = any ? vtl_tensor_to_device(any, (vtl_device){VTL_CPU, 0}) : NULL;
  vtl_tensor_release(any);
  if (!host) return 0;
  int has_zero = *(uint8_t *)vtl_tensor_data(host);
  vtl_tensor_release(host);
  if (has_zero) return vtl_error_set(VTL_ERR_ARG, "%s: integer division by zero", binary_names[op]), 0;
  return 1;
}

/* a (op) b into out (already shaped to the broadcast shape, of dtype res) */
static vtl_status binary_into(vtl_binary_op op, vtl_tensor *out, vtl_tensor *a, vtl_tensor *b, vtl_dtype cdt,
                              const vtl_backend *be) {
  vtl_tensor *ea = vtl_broadcast_to(a, out->shape, out->ndim);
  vtl_tensor *eb = ea ? vtl_broadcast_to(b, out->shape, out->ndim) : NULL;
  vtl_status st = eb ? VTL_OK : vtl_error_status();
  if (eb && !check_int_divisor(op, cdt, b)) st = vtl_error_status();
  if (st == VTL_OK) st = be->binary(op, out, ea, eb, cdt);
  vtl_tensor_release(ea);
  vtl_tensor_release(eb);
  return st;
}

/* the operand whose layout the result takes: a channels-last one of the result's shape (a
   first), else a (contiguous result) */
static const vtl_tensor *layout_source(const vtl_tensor *a, const vtl_tensor *b, const int64_t *shape, int nd) {
  const vtl_tensor *ts[2] = {a, b};
  for (int i = 0; i < 2; i++)
    if (ts[i]->ndim == nd && memcmp(ts[i]->shape, shape, (size_t)nd * sizeof *shape) == 0 &&
        vtl_tensor_keeps_channels_last(ts[i]))
      return ts[i];
  return a;
}

static vtl_tensor *binary_typed(vtl_binary_op op, vtl_tensor *a, vtl_tensor *b, vtl_dtype p) {
  vtl_tensor *ts[2] = {a, b};
  const vtl_backend *be = backend_of(binary_names[op], ts, 2);
  if (!be) return NULL;
  vtl_dtype res;
  if (!binary_result(op, p, &res)) return NULL;
  int64_t shape[VTL_MAX_DIMS];
  int nd = vtl_broadcast_shape(binary_names[op], a, b, shape);
  if (nd < 0) return NULL;
  vtl_tensor *out = vtl_tensor_empty_as(layout_source(a, b, shape, nd), shape, nd, res);
  if (!out) return NULL;
  if (binary_into(op, out, a, b, binary_compute(op, p, res), be) != VTL_OK) { vtl_tensor_release(out); return NULL; }
  return out;
}

static int category(vtl_dtype d) { return d == VTL_BOOL ? 0 : vtl_dtype_is_float(d) ? 2 : 1; }

/* PyTorch's rule: a 0-d operand decides the dtype only when it is of a higher category
   (bool < integer < float) than the dimensioned one. */
vtl_dtype vtl_result_type(const vtl_tensor *a, const vtl_tensor *b) {
  if ((a->ndim == 0) != (b->ndim == 0)) {
    const vtl_tensor *dimd = a->ndim ? a : b, *zero = a->ndim ? b : a;
    if (category(zero->dtype) <= category(dimd->dtype)) return dimd->dtype;
  }
  return vtl_dtype_promote(a->dtype, b->dtype);
}

vtl_tensor *vtl_op_binary(vtl_binary_op op, vtl_tensor *a, vtl_tensor *b) {
  return binary_typed(op, a, b, vtl_result_type(a, b));
}

/* A 0-d tensor holding a Lua number, in dtype dt, on x's device. */
static vtl_tensor *scalar_like(const vtl_tensor *x, double v, vtl_dtype dt) {
  vtl_tensor *t = vtl_tensor_empty(NULL, 0, dt, vtl_tensor_device(x));
  if (t && vtl_op_fill_(t, v) != VTL_OK) { vtl_tensor_release(t); return NULL; }
  return t;
}

vtl_tensor *vtl_op_binary_scalar(vtl_binary_op op, vtl_tensor *a, double s, bool s_is_float, bool scalar_first) {
  vtl_dtype p = vtl_dtype_promote_scalar(a->dtype, s_is_float);
  vtl_dtype sdt = compute_of(p);
  if (is_compare(op)) {
    /* compare in a type that holds both the tensor's values and the number */
    p = vtl_dtype_is_float(a->dtype) ? a->dtype : s_is_float ? VTL_F64 : VTL_I64;
    sdt = compute_of(p);
  }
  if (is_logical(op)) sdt = VTL_BOOL;
  vtl_tensor *st = scalar_like(a, s, sdt);
  if (!st) return NULL;
  vtl_tensor *r = scalar_first ? binary_typed(op, st, a, p) : binary_typed(op, a, st, p);
  vtl_tensor_release(st);
  return r;
}

static bool shares_differently(const vtl_tensor *x, const vtl_tensor *b) {
  if (x->storage != b->storage) return false;
  if (x->offset != b->offset || x->ndim != b->ndim) return true;
  for (int d = 0; d < x->ndim; d++)
    if (x->shape[d] != b->shape[d] || x->strides[d] != b->strides[d]) return true;
  return false;
}

vtl_status vtl_op_binary_(vtl_binary_op op, vtl_tensor *x, vtl_tensor *b, double s) {
  vtl_tensor *owned = NULL;
  if (!b) {
    owned = scalar_like(x, s, compute_of(vtl_dtype_promote_scalar(x->dtype, s != floor(s))));
    if (!owned) return vtl_error_status();
    b = owned;
  } else if (shares_differently(x, b)) {
    owned = vtl_op_clone(b);
    if (!owned) return vtl_error_status();
    b = owned;
  }
  vtl_status st = VTL_OK;
  vtl_tensor *ts[2] = {x, b};
  const vtl_backend *be = backend_of(binary_names[op], ts, 2);
  vtl_dtype p = vtl_result_type(x, b), res;
  if (!be || !binary_result(op, p, &res)) st = vtl_error_status();
  else if (vtl_dtype_promote(res, x->dtype) != x->dtype && !(res == VTL_F32 && vtl_dtype_is_float(x->dtype)))
    st = vtl_error_set(VTL_ERR_ARG, "%s_: result type %s cannot be stored in a %s tensor in place", binary_names[op],
                       vtl_dtype_name(res), vtl_dtype_name(x->dtype));
  else {
    int64_t shape[VTL_MAX_DIMS];
    int nd = vtl_broadcast_shape(binary_names[op], x, b, shape);
    if (nd < 0) st = vtl_error_status();
    else if (nd != x->ndim || memcmp(shape, x->shape, (size_t)nd * sizeof *shape) != 0) {
      char a1[128], a2[128];
      vtl_shape_format(b->shape, b->ndim, a1, sizeof a1);
      vtl_shape_format(x->shape, x->ndim, a2, sizeof a2);
      st = vtl_error_set(VTL_ERR_ARG, "%s_: operand of shape %s cannot be broadcast to the in-place shape %s",
                         binary_names[op], a1, a2);
    } else st = binary_into(op, x, x, b, binary_compute(op, p, res), be);
  }
  vtl_tensor_release(owned);
  return st;
}

vtl_status vtl_op_fused_(vtl_fused_op op, vtl_tensor *y, vtl_tensor *a, vtl_tensor *b, double value) {
  static const char *names[] = {"add_", "addcmul_", "addcdiv_"};
  vtl_tensor *ts[3] = {y, a, b};
  const vtl_backend *be = backend_of(names[op], ts, b ? 3 : 2);
  if (!be) return vtl_error_status();
  if (!vtl_dtype_is_float(y->dtype))
    return vtl_error_set(VTL_ERR_ARG, "%s: expected a float tensor, got %s", names[op], vtl_dtype_name(y->dtype));
  vtl_tensor *ea = vtl_broadcast_to(a, y->shape, y->ndim);
  vtl_tensor *eb = ea && b ? vtl_broadcast_to(b, y->shape, y->ndim) : NULL;
  vtl_status st;
  if (!ea || (b && !eb)) {
    char s1[128], s2[128];
    const vtl_tensor *bad = !ea ? a : b;
    vtl_shape_format(bad->shape, bad->ndim, s1, sizeof s1);
    vtl_shape_format(y->shape, y->ndim, s2, sizeof s2);
    st = vtl_error_set(VTL_ERR_ARG, "%s: operand of shape %s cannot be broadcast to the in-place shape %s", names[op], s1, s2);
  } else if ((shares_differently(y, ea)) || (eb && shares_differently(y, eb))) {
    st = vtl_error_set(VTL_ERR_ARG, "%s: an operand overlaps the tensor being updated", names[op]);
  } else {
    st = be->fused(op, y, ea, eb, value);
  }
  vtl_tensor_release(ea);
  vtl_tensor_release(eb);
  return st;
}

vtl_tensor *vtl_op_where(vtl_tensor *cond, vtl_tensor *a, vtl_tensor *b) {
  if (cond->dtype != VTL_BOOL)
    return vtl_error_set(VTL_ERR_ARG, "where: condition must be a bool tensor, got %s", vtl_dtype_name(cond->dtype)), NULL;
  vtl_tensor *ts[3] = {cond, a, b};
  const vtl_backend *be = backend_of("where", ts, 3);
  if (!be) return NULL;
  int64_t s1[VTL_MAX_DIMS], s2[VTL_MAX_DIMS];
  int n1 = vtl_broadcast_shape("where", a, b, s1);
  if (n1 < 0) return NULL;
  int n2 = vtl_broadcast_shapes("where", cond->shape, cond->ndim, s1, n1, s2);
  if (n2 < 0) return NULL;
  vtl_dtype res = vtl_dtype_promote(a->dtype, b->dtype);
  vtl_tensor *out = vtl_tensor_empty(s2, n2, res, vtl_tensor_device(a));
  vtl_tensor *ec = out ? vtl_broadcast_to(cond, s2, n2) : NULL;
  vtl_tensor *ea = ec ? vtl_broadcast_to(a, s2, n2) : NULL;
  vtl_tensor *eb = ea ? vtl_broadcast_to(b, s2, n2) : NULL;
  vtl_status st = eb ? be->where(out, ec, ea, eb, res) : vtl_error_status();
  vtl_tensor_release(ec);
  vtl_tensor_release(ea);
  vtl_tensor_release(eb);
  if (st != VTL_OK) { vtl_tensor_release(out); return NULL; }
  return out;
}

vtl_status vtl_op_masked_fill_(vtl_tensor *x, vtl_tensor *mask, double value) {
  if (mask->dtype != VTL_BOOL)
    return vtl_error_set(VTL_ERR_ARG, "masked_fill: mask must be a bool tensor, got %s", vtl_dtype_name(mask->dtype));
  vtl_tensor *ts[2] = {x, mask};
  const vtl_backend *be = backend_of("masked_fill", ts, 2);
  if (!be) return vtl_error_status();
  vtl_tensor *em = vtl_broadcast_to(mask, x->shape, x->ndim);
  if (!em) {
    char a[128], b[128];
    vtl_shape_format(mask->shape, mask->ndim, a, sizeof a);
    vtl_shape_format(x->shape, x->ndim, b, sizeof b);
    return vtl_error_set(VTL_ERR_ARG, "masked_fill: mask of shape %s cannot be broadcast to %s", a, b);
  }
  vtl_tensor *v = scalar_like(x, value, x->dtype);
  vtl_tensor *ev = v ? vtl_broadcast_to(v, x->shape, x->ndim) : NULL;
  vtl_status st = ev ? be->where(x, em, ev, x, x->dtype) : vtl_error_status();
  vtl_tensor_release(em);
  vtl_tensor_release(v);
  vtl_tensor_release(ev);
  return st;
}

vtl_tensor *vtl_op_lerp(vtl_tensor *a, vtl_tensor *b, vtl_tensor *w) {
  vtl_tensor *ts[3] = {a, b, w};
  const vtl_backend *be = backend_of("lerp", ts, 3);
  if (!be) return NULL;
  if (!vtl_dtype_is_float(a->dtype) || !vtl_dtype_is_float(b->dtype))
    return vtl_error_set(VTL_ERR_ARG, "lerp: expected float tensors, got %s and %s", vtl_dtype_name(a->dtype),
                         vtl_dtype_name(b->dtype)), NULL;
  int64_t s1[VTL_MAX_DIMS], s2[VTL_MAX_DIMS];
  int n1 = vtl_broadcast_shape("lerp", a, b, s1);
  if (n1 < 0) return NULL;
  int n2 = vtl_broadcast_shapes("lerp", s1, n1, w->shape, w->ndim, s2);
  if (n2 < 0) return NULL;
  vtl_tensor *out = vtl_tensor_empty(s2, n2, vtl_dtype_promote(a->dtype, b->dtype), vtl_tensor_device(a));
  vtl_tensor *ea = out ? vtl_broadcast_to(a, s2, n2) : NULL;
  vtl_tensor *eb = ea ? vtl_broadcast_to(b, s2, n2) : NULL;
  vtl_tensor *ew = eb ? vtl_broadcast_to(w, s2, n2) : NULL;
  vtl_status st = ew ? be->lerp(out, ea, eb, ew) : vtl_error_status();
  vtl_tensor_release(ea);
  vtl_tensor_release(eb);
  vtl_tensor_release(ew);
  if (st != VTL_OK) { vtl_tensor_release(out); return NULL; }
  return out;
}

/* ---- reductions ---- */
static const char *reduce_names[VTL_RED_COUNT] = {"sum", "prod", "max", "min", "argmax", "argmin", "mean",
                                                  "var", "norm", "logsumexp", "any", "all"};

static vtl_dtype reduce_result(vtl_reduce_op op, vtl_dtype in) {
  switch (op) {
  case VTL_RED_SUM: case VTL_RED_PROD: return vtl_dtype_is_float(in) ? in : VTL_I64;
  case VTL_RED_MAX: case VTL_RED_MIN: return in;
  case VTL_RED_ARGMAX: case VTL_RED_ARGMIN: return VTL_I64;
  case VTL_RED_ANY: case VTL_RED_ALL: return VTL_BOOL;
  default: return vtl_dtype_is_float(in) ? in : VTL_F32;
  }
}

/* dtype the reduce kernel reads: f32/f64 as they are, halves as f32, integers as i64 (f64
   for the float-valued reductions) */
static vtl_dtype reduce_kernel_dtype(vtl_reduce_op op, vtl_dtype in) {
  if (in == VTL_F32 || in == VTL_F64) return in;
  if (in == VTL_F16 || in == VTL_BF16) return VTL_F32;
  switch (op) {
  case VTL_RED_MEAN: case VTL_RED_VAR: case VTL_RED_NORM: case VTL_RED_LOGSUMEXP: return VTL_F64;
  default: return VTL_I64;
  }
}

vtl_tensor *vtl_op_reduce(vtl_reduce_op op, vtl_tensor *x, uint32_t dims, bool keepdim, double param,
                          vtl_tensor **indices) {
  const char *name = reduce_names[op];
  const vtl_backend *be = backend_of(name, &x, 1);
  if (!be) return NULL;
  int nd = x->ndim;
  if (dims == 0 || nd == 0) dims = nd ? (uint32_t)((1ull << nd) - 1) : 0;
  if (nd && (dims >> nd)) return vtl_error_set(VTL_ERR_ARG, "%s: dim out of range", name), NULL;
  int64_t R = 1, A = 1, B = 1;
  int first = -1, last = -1, adjacent = 1;
  int64_t oshape[VTL_MAX_DIMS];
  int ond = 0;
  for (int d = 0; d < nd; d++) {
    if (dims >> d & 1) {
      R *= x->shape[d];
      if (first < 0) first = d;
      else if (last != d - 1) adjacent = 0;
      last = d;
      if (keepdim) oshape[ond++] = 1;
    } else oshape[ond++] = x->shape[d];
  }
  if (R == 0 && (op == VTL_RED_MAX || op == VTL_RED_MIN || op == VTL_RED_ARGMAX || op == VTL_RED_ARGMIN))
    return vtl_error_set(VTL_ERR_ARG, "%s: cannot reduce over an empty dimension", name), NULL;
  vtl_dtype kdt = reduce_kernel_dtype(op, x->dtype);
  vtl_tensor *xk = NULL;
  if (first < 0 || adjacent) {
    for (int d = 0; d < first; d++) A *= x->shape[d];
    for (int d = last + 1; d < nd && last >= 0; d++) B *= x->shape[d];
    vtl_tensor *c = vtl_op_contiguous(x);
    xk = c ? vtl_op_to_dtype(c, kdt) : NULL;
    vtl_tensor_release(c);
  } else { /* move the reduced dims last, then reduce rows */
    int perm[VTL_MAX_DIMS], k = 0;
    for (int d = 0; d < nd; d++) if (!(dims >> d & 1)) { perm[k++] = d; A *= x->shape[d]; }
    for (int d = 0; d < nd; d++) if (dims >> d & 1) perm[k++] = d;
    vtl_tensor *p = vtl_op_permute(x, perm, nd);
    vtl_tensor *c = p ? vtl_tensor_empty(p->shape, nd, kdt, vtl_tensor_device(x)) : NULL;
    if (c && vtl_op_copy_(c, p) != VTL_OK) { vtl_tensor_release(c); c = NULL; }
    vtl_tensor_release(p);
    xk = c;
  }
  if (!xk) return NULL;
  vtl_dtype res = reduce_result(op, x->dtype);
  /* the kernel writes results in its own dtype when it differs from the result */
  vtl_dtype kout = (res == VTL_F16 || res == VTL_BF16) ? VTL_F32 : res;
  vtl_tensor *out = vtl_tensor_empty(oshape, ond, kout, vtl_tensor_device(x));
  vtl_tensor *idx = NULL;
  if (out && indices) idx = vtl_tensor_empty(oshape, ond, VTL_I64, vtl_tensor_device(x));
  vtl_status st = out && (!indices || idx) ? be->reduce(op, out, idx, xk, A, R, B, param) : vtl_error_status();
  vtl_tensor_release(xk);
  if (st == VTL_OK && kout != res) {
    vtl_tensor *o2 = vtl_op_to_dtype(out, res);
    vtl_tensor_release(out);
    out = o2;
    if (!out) st = vtl_error_status();
  }
  if (st != VTL_OK) { vtl_tensor_release(out); vtl_tensor_release(idx); return NULL; }
  if (indices) *indices = idx;
  return out;
}

vtl_tensor *vtl_op_cumsum(vtl_tensor *x, int dim) {
  const vtl_backend *be = backend_of("cumsum", &x, 1);
  if (!be) return NULL;
  if (!be->cumsum) return vtl_require_cpu("cumsum", x), NULL;
  if (x->ndim && !vtl_check_dim("cumsum", dim, x->ndim)) return NULL;
  int64_t A = 1, R = x->ndim ? x->shape[dim] : 1, B = 1;
  for (int d = 0; d < dim; d++) A *= x->shape[d];
  for (int d = dim + 1; d < x->ndim; d++) B *= x->shape[d];
  vtl_dtype res = vtl_dtype_is_float(x->dtype) ? x->dtype : VTL_I64;
  vtl_dtype kdt = res == VTL_F64 ? VTL_F64 : res == VTL_I64 ? VTL_I64 : VTL_F32;
  vtl_tensor *c = vtl_op_contiguous(x);
  vtl_tensor *xk = c ? vtl_op_to_dtype(c, kdt) : NULL;
  vtl_tensor_release(c);
  if (!xk) return NULL;
  vtl_tensor *out = vtl_tensor_empty(x->shape, x->ndim, kdt, vtl_tensor_device(x));
  vtl_status st = out ? be->cumsum(out, xk, A, R, B) : vtl_error_status();
  vtl_tensor_release(xk);
  if (st != VTL_OK) { vtl_tensor_release(out); return NULL; }
  if (kdt != res) {
    vtl_tensor *o2 = vtl_op_to_dtype(out, res);
    vtl_tensor_release(out);
    return o2;
  }
  return out;
}

/* x with dim moved last, contiguous, in the sort key dtype; perm receives the permutation */
static vtl_tensor *dim_last(vtl_tensor *x, int dim, vtl_dtype kdt, int *perm) {
  int nd = x->ndim, k = 0;
  for (int d = 0; d < nd; d++) if (d != dim) perm[k++] = d;
  perm[k] = dim;
  vtl_tensor *p = nd ? vtl_op_permute(x, perm, nd) : vtl_tensor_retain(x);
  if (!p) return NULL;
  vtl_tensor *c = vtl_tensor_empty(p->shape, p->ndim, kdt, vtl_tensor_device(x));
  if (c && vtl_op_copy_(c, p) != VTL_OK) { vtl_tensor_release(c); c = NULL; }
  vtl_tensor_release(p);
  return c;
}

/* inverse of dim_last for a result t: permute back and make contiguous in dtype dt */
static vtl_tensor *dim_restore(vtl_tensor *t, const int *perm, int nd, vtl_dtype dt) {
  int inv[VTL_MAX_DIMS];
  for (int i = 0; i < nd; i++) inv[perm[i]] = i;
  vtl_tensor *p = nd ? vtl_op_permute(t, inv, nd) : vtl_tensor_retain(t);
  if (!p) return NULL;
  vtl_tensor *c = vtl_tensor_empty(p->shape, nd, dt, vtl_tensor_device(t));
  if (c && vtl_op_copy_(c, p) != VTL_OK) { vtl_tensor_release(c); c = NULL; }
  vtl_tensor_release(p);
  return c;
}

vtl_status vtl_op_topk(vtl_tensor *x, int64_t k, int dim, bool largest, bool sorted, vtl_tensor **values,
                       vtl_tensor **indices) {
  (void)sorted; /* results are always sorted */
  const vtl_backend *be = backend_of("sort", &x, 1);
  if (!be) return vtl_error_status();
  if (!be->sort) return vtl_require_cpu("sort", x);
  if (x->ndim && !vtl_check_dim("sort", dim, x->ndim)) return vtl_error_status();
  if (x->dtype == VTL_BOOL) return vtl_error_set(VTL_ERR_ARG, "sort: not supported for bool tensors");
  int nd = x->ndim, perm[VTL_MAX_DIMS];
  int64_t R = nd ? x->shape[dim] : 1;
  if (k < 0 || k > R)
    return vtl_error_set(VTL_ERR_ARG, "topk: k = %lld out of range for a dimension of size %lld", (long long)k, (long long)R);
  vtl_dtype kdt = vtl_dtype_is_float(x->dtype) ? VTL_F64 : VTL_I64;
  vtl_tensor *xk = dim_last(x, nd ? dim : 0, kdt, perm);
  if (!xk) return vtl_error_status();
  int64_t A = R ? vtl_tensor_numel(xk) / R : 0;
  vtl_tensor *v = vtl_tensor_empty(xk->shape, xk->ndim, kdt, vtl_tensor_device(x));
  vtl_tensor *ix = v ? vtl_tensor_empty(xk->shape, xk->ndim, VTL_I64, vtl_tensor_device(x)) : NULL;
  vtl_status st = ix ? be->sort(v, ix, xk, A, R, largest) : vtl_error_status();
  vtl_tensor_release(xk);
  vtl_tensor *vk = NULL, *ik = NULL;
  if (st == VTL_OK && k < R) {
    vk = nd ? vtl_op_narrow(v, nd - 1, 0, k) : vtl_tensor_retain(v);
    ik = vk && nd ? vtl_op_narrow(ix, nd - 1, 0, k) : NULL;
    if (!ik) st = vtl_error_status();
  } else if (st == VTL_OK) {
    vk = vtl_tensor_retain(v);
    ik = vtl_tensor_retain(ix);
  }
  vtl_tensor_release(v);
  vtl_tensor_release(ix);
  if (st == VTL_OK) {
    *values = dim_restore(vk, perm, nd, x->dtype);
    *indices = *values ? dim_restore(ik, perm, nd, VTL_I64) : NULL;
    if (!*indices) { vtl_tensor_release(*values); st = vtl_error_status(); }
  }
  vtl_tensor_release(vk);
  vtl_tensor_release(ik);
  return st;
}

vtl_status vtl_op_sort(vtl_tensor *x, int dim, bool descending, vtl_tensor **values, vtl_tensor **indices) {
  return vtl_op_topk(x, x->ndim ? x->shape[dim < 0 || dim >= x->ndim ? 0 : dim] : 1, dim, descending, true,
                     values, indices);
}

/* moves *t (when not NULL) to dev, releasing the old tensor; false with the error set */
static bool move_to(vtl_tensor **t, vtl_device dev) {
  if (!t || !*t) return true;
  vtl_tensor *m = vtl_tensor_to_device(*t, dev);
  vtl_tensor_release(*t);
  *t = m;
  return m != NULL;
}

vtl_status vtl_op_unique(vtl_tensor *x, vtl_tensor **values, vtl_tensor **inverse, vtl_tensor **counts) {
  vtl_device dev = vtl_tensor_device(x);
  if (dev.type != VTL_CPU) { /* on the host (its result size is data-dependent), the results moved back */
    vtl_tensor *h = vtl_tensor_to_device(x, (vtl_device){VTL_CPU, 0});
    if (!h) return vtl_error_status();
    vtl_tensor *u = NULL, *inv = NULL, *cnt = NULL;
    vtl_status st = vtl_op_unique(h, &u, inverse ? &inv : NULL, counts ? &cnt : NULL);
    vtl_tensor_release(h);
    if (st == VTL_OK && !(move_to(&u, dev) && move_to(&inv, dev) && move_to(&cnt, dev))) st = vtl_error_status();
    if (st != VTL_OK) {
      vtl_tensor_release(u);
      vtl_tensor_release(inv);
      vtl_tensor_release(cnt);
      return st;
    }
    *values = u;
    if (inverse) *inverse = inv;
    if (counts) *counts = cnt;
    return VTL_OK;
  }
  int64_t n = vtl_tensor_numel(x);
  vtl_tensor *flat = vtl_op_reshape(x, &n, 1);
  vtl_tensor *sv = NULL, *si = NULL;
  vtl_status st = flat ? vtl_op_sort(flat, 0, false, &sv, &si) : vtl_error_status();
  vtl_tensor_release(flat);
  if (st != VTL_OK) return st;
  /* walk the sorted values: positions where a new value starts */
  const char *vp = vtl_tensor_data(sv);
  const int64_t *ip = vtl_tensor_data(si);
  size_t es = vtl_dtype_size(x->dtype);
  int64_t nu = 0;
  int64_t *start = malloc((size_t)(n + 1) * sizeof *start);
  if (!start) { vtl_tensor_release(sv); vtl_tensor_release(si); return vtl_error_set(VTL_ERR_OOM, "unique: out of memory"); }
  for (int64_t i = 0; i < n; i++)
    if (i == 0 || memcmp(vp + i * (int64_t)es, vp + (i - 1) * (int64_t)es, es) != 0) start[nu++] = i;
  start[nu] = n;
  vtl_tensor *u = vtl_tensor_empty(&nu, 1, x->dtype, vtl_tensor_device(x));
  vtl_tensor *inv = u && inverse ? vtl_tensor_empty(x->shape, x->ndim, VTL_I64, vtl_tensor_device(x)) : NULL;
  vtl_tensor *cnt = u && counts ? vtl_tensor_empty(&nu, 1, VTL_I64, vtl_tensor_device(x)) : NULL;
  if (!u || (inverse && !inv) || (counts && !cnt)) st = vtl_error_status();
  else {
    for (int64_t j = 0; j < nu; j++) {
      memcpy((char *)vtl_tensor_data(u) + j * (int64_t)es, vp + start[j] * (int64_t)es, es);
      if (cnt) ((int64_t *)vtl_tensor_data(cnt))[j] = start[j + 1] - start[j];
      if (inv)
        for (int64_t i = start[j]; i < start[j + 1]; i++) ((int64_t *)vtl_tensor_data(inv))[ip[i]] = j;
    }
  }
  free(start);
  vtl_tensor_release(sv);
  vtl_tensor_release(si);
  if (st != VTL_OK) { vtl_tensor_release(u); vtl_tensor_release(inv); vtl_tensor_release(cnt); return st; }
  *values = u;
  if (inverse) *inverse = inv;
  if (counts) *counts = cnt;
  return VTL_OK;
}

/* ---- matmul ---- */
static int gemm_layout_ok(const vtl_tensor *x) {
  int t, nd = x->ndim;
  int64_t ld;
  return vtl_gemm_layout(x->shape[nd - 2], x->shape[nd - 1], x->strides[nd - 2], x->strides[nd - 1], &t, &ld);
}

vtl_tensor *vtl_op_matmul(vtl_tensor *a, vtl_tensor *b) {
  vtl_tensor *ts[2] = {a, b};
  const vtl_backend *be = backend_of("matmul", ts, 2);
  if (!be) return NULL;
  char sa[128], sb[128];
  vtl_shape_format(a->shape, a->ndim, sa, sizeof sa);
  vtl_shape_format(b->shape, b->ndim, sb, sizeof sb);
  if (a->ndim == 0 || b->ndim == 0)
    return vtl_error_set(VTL_ERR_ARG, "matmul: both arguments need at least 1 dim, got shapes %s and %s", sa, sb), NULL;
  if (a->dtype == VTL_BOOL || b->dtype == VTL_BOOL)
    return vtl_error_set(VTL_ERR_ARG, "matmul: not supported for bool tensors"), NULL;
  /* 1-D operands become matrices, and the added dim is dropped from the result */
  vtl_tensor *A2 = a->ndim == 1 ? vtl_op_unsqueeze(a, 0) : vtl_tensor_retain(a);
  vtl_tensor *B2 = b->ndim == 1 ? vtl_op_unsqueeze(b, 1) : vtl_tensor_retain(b);
  vtl_tensor *out = NULL, *ea = NULL, *eb = NULL, *ca = NULL, *cb = NULL;
  if (!A2 || !B2) goto done;
  int na = A2->ndim, nb = B2->ndim;
  int64_t M = A2->shape[na - 2], K = A2->shape[na - 1], K2 = B2->shape[nb - 2], N = B2->shape[nb - 1];
  if (K != K2) {
    vtl_error_set(VTL_ERR_ARG, "matmul: shapes %s and %s cannot be multiplied (%lld vs %lld)", sa, sb,
                  (long long)K, (long long)K2);
    goto done;
  }
  /* broadcast batch dims */
  int64_t bs[VTL_MAX_DIMS];
  int nbatch = (na > nb ? na : nb) - 2;
  for (int i = 0; i < nbatch; i++) {
    int ia = na - 2 - nbatch + i, ib = nb - 2 - nbatch + i;
    int64_t x = ia >= 0 ? A2->shape[ia] : 1, y = ib >= 0 ? B2->shape[ib] : 1;
    if (x != y && x != 1 && y != 1) {
      vtl_error_set(VTL_ERR_ARG, "matmul: batch dims of shapes %s and %s cannot be broadcast", sa, sb);
      goto done;
    }
    bs[i] = x == 1 ? y : x;
  }
  int64_t shp[VTL_MAX_DIMS];
  memcpy(shp, bs, (size_t)nbatch * sizeof *bs);
  shp[nbatch] = M; shp[nbatch + 1] = K;
  ea = vtl_op_expand(A2, shp, nbatch + 2);
  shp[nbatch] = K; shp[nbatch + 1] = N;
  eb = ea ? vtl_op_expand(B2, shp, nbatch + 2) : NULL;
  if (!eb) goto done;
  vtl_dtype res = vtl_dtype_promote(a->dtype, b->dtype);
  vtl_dtype kdt = vtl_dtype_is_float(res) ? (res == VTL_F64 ? VTL_F64 : VTL_F32) : VTL_I64;
  if (be->matmul_dtypes >> res & 1) kdt = res; /* e.g. f16/bf16 straight to a GPU GEMM */
  if (kdt != res && be->matmul_half && a->dtype == res && b->dtype == res && (res == VTL_F16 || res == VTL_BF16)) {
    shp[nbatch] = M; shp[nbatch + 1] = N;
    out = vtl_tensor_empty(shp, nbatch + 2, res, vtl_tensor_device(a));
    if (!out) goto done;
    if (be->matmul_half(out, ea, eb) > 0) goto drop;
    vtl_tensor_release(out); /* not handled: in f32 below */
    out = NULL;
  }
  ca = vtl_op_to_dtype(ea, kdt);
  cb = ca ? vtl_op_to_dtype(eb, kdt) : NULL;
  if (!cb) goto done;
  if (kdt != VTL_I64) {
    if (!gemm_layout_ok(ca)) { vtl_tensor *t = vtl_op_clone(ca); vtl_tensor_release(ca); ca = t; }
    if (ca && !gemm_layout_ok(cb)) { vtl_tensor *t = vtl_op_clone(cb); vtl_tensor_release(cb); cb = t; }
    if (!ca || !cb) goto done;
  }
  shp[nbatch] = M; shp[nbatch + 1] = N;
  out = vtl_tensor_empty(shp, nbatch + 2, kdt, vtl_tensor_device(a));
  if (!out) goto done;
  if (be->matmul(out, ca, cb) != VTL_OK) { vtl_tensor_release(out); out = NULL; goto done; }
  if (kdt != res) {
    vtl_tensor *t = vtl_op_to_dtype(out, res);
    vtl_tensor_release(out);
    out = t;
    if (!out) goto done;
  }
drop:
  if (a->ndim == 1 || b->ndim == 1) { /* drop the added dims */
    int64_t rs[VTL_MAX_DIMS];
    int k = 0;
    for (int i = 0; i < nbatch; i++) rs[k++] = bs[i];
    if (a->ndim != 1) rs[k++] = M;
    if (b->ndim != 1) rs[k++] = N;
    vtl_tensor *t = vtl_op_view(out, rs, k);
    vtl_tensor_release(out);
    out = t;
  }
done:
  vtl_tensor_release(A2);
  vtl_tensor_release(B2);
  vtl_tensor_release(ea);
  vtl_tensor_release(eb);
  vtl_tensor_release(ca);
  vtl_tensor_release(cb);
  return out;
}
