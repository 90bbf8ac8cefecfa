/* Differentiable tensor ops: forward through ops.h, backward rules recorded as nodes. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "grad_ops.h"
#include "autocast.h"

/* ---- temporaries of a backward rule: any failure makes the rest no-ops ---- */
typedef struct { vtl_tensor *t[32]; int n; bool fail; } scope;

static vtl_tensor *keep(scope *s, vtl_tensor *x) {
  if (!x || s->n == 32) { s->fail = true; vtl_tensor_release(x); return NULL; }
  s->t[s->n++] = x;
  return x;
}
static vtl_tensor *B(scope *s, vtl_binary_op op, vtl_tensor *a, vtl_tensor *b) {
  return s->fail || !a || !b ? (s->fail = true, NULL) : keep(s, vtl_op_binary(op, a, b));
}
static vtl_tensor *BS(scope *s, vtl_binary_op op, vtl_tensor *a, double v) {
  return s->fail || !a ? (s->fail = true, NULL) : keep(s, vtl_op_binary_scalar(op, a, v, true, false));
}
/* v (op) a, the number first */
static vtl_tensor *SB(scope *s, vtl_binary_op op, double v, vtl_tensor *a) {
  return s->fail || !a ? (s->fail = true, NULL) : keep(s, vtl_op_binary_scalar(op, a, v, true, true));
}
static vtl_tensor *U(scope *s, vtl_unary_op op, vtl_tensor *a) {
  return s->fail || !a ? (s->fail = true, NULL) : keep(s, vtl_op_unary(op, a, NULL));
}
static vtl_tensor *W(scope *s, vtl_tensor *c, vtl_tensor *a, vtl_tensor *b) {
  return s->fail || !c || !a || !b ? (s->fail = true, NULL) : keep(s, vtl_op_where(c, a, b));
}
/* zeros of g's dtype on g's device */
static vtl_tensor *ZEROS(scope *s, const int64_t *shape, int nd, const vtl_tensor *g) {
  return s->fail ? NULL : keep(s, vtl_tensor_zeros(shape, nd, g->dtype, vtl_tensor_device(g)));
}
static vtl_tensor *SAVED(scope *s, vtl_node *n, int k) {
  if (s->fail || !n->saved[k]) return NULL; /* nothing saved in that slot */
  vtl_tensor *t = vtl_ag_saved(n, k);
  if (!t) s->fail = true;
  return t;
}
/* Ends a rule: *out gets r (a new reference) unless something failed; temporaries go. */
static vtl_status finish(scope *s, vtl_tensor **out, vtl_tensor *r) {
  if (!s->fail && r && out) *out = vtl_tensor_retain(r);
  for (int i = 0; i < s->n; i++) vtl_tensor_release(s->t[i]);
  if (!s->fail) return VTL_OK;
  vtl_status st = vtl_error_status();
  return st != VTL_OK ? st : vtl_error_set(VTL_ERR_ARG, "backward: a gradient rule failed");
}
/* 0 where cond is false, g where true */
static vtl_tensor *PASS(scope *s, vtl_tensor *cond, vtl_tensor *g) {
  vtl_tensor *z = s->fail ? NULL : keep(s, vtl_op_full(NULL, 0, 0, g->dtype, vtl_tensor_device(g)));
  return W(s, cond, g, z);
}

/* Records a node for out when needed; on failure releases out. */
static vtl_node *record(vtl_tensor **out, const char *name, vtl_backward_fn bw, vtl_tensor *const *in, int n) {
  if (!*out || !vtl_ag_needs(in, n)) return NULL;
  vtl_node *nd = vtl_ag_node(name, bw, in, n);
  if (!nd) { vtl_tensor_release(*out); *out = NULL; }
  return nd;
}

/* ---- unary ---- */
static vtl_status unary_bw(vtl_node *n, vtl_tensor *g, vtl_tensor **gin) {
  scope s = {0};
  vtl_unary_op op = (vtl_unary_op)n->i[0];
  vtl_tensor *x = SAVED(&s, n, 0), *y = SAVED(&s, n, 1), *r = NULL;
  switch (op) {
  case VTL_UN_NEG: r = U(&s, VTL_UN_NEG, g); break;
  case VTL_UN_EXP: r = B(&s, VTL_BIN_MUL, g, y); break;
  case VTL_UN_LOG: r = B(&s, VTL_BIN_DIV, g, x); break;
  case VTL_UN_LOG2: r = B(&s, VTL_BIN_DIV, g, BS(&s, VTL_BIN_MUL, x, M_LN2)); break;
  case VTL_UN_SQRT: r = B(&s, VTL_BIN_DIV, g, BS(&s, VTL_BIN_MUL, y, 2)); break;
  case VTL_UN_RSQRT: r = BS(&s, VTL_BIN_MUL, B(&s, VTL_BIN_MUL, g, B(&s, VTL_BIN_MUL, y, U(&s, VTL_UN_SQUARE, y))), -0.5); break;
  case VTL_UN_ABS: r = B(&s, VTL_BIN_MUL, g, U(&s, VTL_UN_SIGN, x)); break;
  case VTL_UN_SIGMOID: r = B(&s, VTL_BIN_MUL, g, B(&s, VTL_BIN_MUL, y, SB(&s, VTL_BIN_SUB, 1, y))); break;
  case VTL_UN_TANH: r = B(&s, VTL_BIN_MUL, g, SB(&s, VTL_BIN_SUB, 1, U(&s, VTL_UN_SQUARE, y))); break;
  case VTL_UN_RELU: r = PASS(&s, BS(&s, VTL_BIN_GT, y, 0), g); break;
  case VTL_UN_SIN: r = B(&s, VTL_BIN_MUL, g, U(&s, VTL_UN_COS, x)); break;
  case VTL_UN_COS: r = U(&s, VTL_UN_NEG, B(&s, VTL_BIN_MUL, g, U(&s, VTL_UN_SIN, x))); break;
  case VTL_UN_LOG1P: r = B(&s, VTL_BIN_DIV, g, BS(&s, VTL_BIN_ADD, x, 1)); break;
  case VTL_UN_EXPM1: r = B(&s, VTL_BIN_MUL, g, BS(&s, VTL_BIN_ADD, y, 1)); break;
  case VTL_UN_RECIPROCAL: r = U(&s, VTL_UN_NEG, B(&s, VTL_BIN_MUL, g, U(&s, VTL_UN_SQUARE, y))); break;
  case VTL_UN_SQUARE: r = B(&s, VTL_BIN_MUL, g, BS(&s, VTL_BIN_MUL, x, 2)); break;
  case VTL_UN_ERF:
    r = B(&s, VTL_BIN_MUL, g, BS(&s, VTL_BIN_MUL, U(&s, VTL_UN_EXP, U(&s, VTL_UN_NEG, U(&s, VTL_UN_SQUARE, x))), M_2_SQRTPI));
    break;
  case VTL_UN_CLAMP:
    r = PASS(&s, B(&s, VTL_BIN_LOGICAL_AND, BS(&s, VTL_BIN_GE, x, n->f[0]), BS(&s, VTL_BIN_LE, x, n->f[1])), g);
    break;
  default: r = BS(&s, VTL_BIN_MUL, g, 0); break; /* piecewise constant: zero gradient */
  }
  return finish(&s, &gin[0], r);
}

vtl_tensor *vtl_fn_unary(vtl_unary_op op, vtl_tensor *x, const double *params) {
  vtl_tensor *out = vtl_op_unary(op, x, params);
  if (op == VTL_UN_LOGICAL_NOT || op == VTL_UN_ISNAN || op == VTL_UN_ISINF || op == VTL_UN_COPY) return out;
  vtl_node *nd = record(&out, "UnaryBackward", unary_bw, &x, 1);
  if (!nd) return out;
  nd->name = vtl_unary_name(op);
  nd->i[0] = op;
  if (params) { nd->f[0] = params[0]; nd->f[1] = params[1]; }
  bool uses_out = op == VTL_UN_EXP || op == VTL_UN_SQRT || op == VTL_UN_RSQRT || op == VTL_UN_SIGMOID ||
                  op == VTL_UN_TANH || op == VTL_UN_RELU || op == VTL_UN_EXPM1 || op == VTL_UN_RECIPROCAL;
  vtl_ag_save(nd, uses_out ? NULL : x);
  vtl_ag_save(nd, uses_out ? out : NULL);
  return vtl_ag_attach(out, nd);
}

/* ---- binary ---- */
static vtl_status binary_bw(vtl_node *n, vtl_tensor *g, vtl_tensor **gin) {
  vtl_binary_op op = (vtl_binary_op)n->i[0];
  scope s = {0};
  vtl_tensor *a = SAVED(&s, n, 0), *b = SAVED(&s, n, 1), *y = SAVED(&s, n, 2), *ga = NULL, *gb = NULL;
  switch (op) {
  case VTL_BIN_ADD: ga = g; gb = g; break;
  case VTL_BIN_SUB: ga = g; gb = n->needs[1] ? U(&s, VTL_UN_NEG, g) : NULL; break;
  case VTL_BIN_MUL:
    if (n->needs[0]) ga = B(&s, VTL_BIN_MUL, g, b);
    if (n->needs[1]) gb = B(&s, VTL_BIN_MUL, g, a);
    break;
  case VTL_BIN_DIV:
    if (n->needs[0]) ga = B(&s, VTL_BIN_DIV, g, b);
    if (n->needs[1]) gb = U(&s, VTL_UN_NEG, B(&s, VTL_BIN_DIV, B(&s, VTL_BIN_MUL, g, y), b));
    break;
  case VTL_BIN_POW: /* a^b: b a^(b-1); a^b log a (0 where a == 0 and b >= 0, as PyTorch) */
    if (n->needs[0]) ga = B(&s, VTL_BIN_MUL, g, B(&s, VTL_BIN_MUL, b, B(&s, VTL_BIN_POW, a, BS(&s, VTL_BIN_SUB, b, 1))));
    if (n->needs[1]) {
      vtl_tensor *t = B(&s, VTL_BIN_MUL, g, B(&s, VTL_BIN_MUL, y, U(&s, VTL_UN_LOG, a)));
      gb = PASS(&s, U(&s, VTL_UN_LOGICAL_NOT, B(&s, VTL_BIN_LOGICAL_AND, BS(&s, VTL_BIN_EQ, a, 0), BS(&s, VTL_BIN_GE, b, 0))), t);
    }
    break;
  case VTL_BIN_MAXIMUM: case VTL_BIN_MINIMUM: { /* ties share the gradient equally */
    vtl_tensor *win = B(&s, op == VTL_BIN_MAXIMUM ? VTL_BIN_GT : VTL_BIN_LT, a, b), *tie = B(&s, VTL_BIN_EQ, a, b);
    vtl_tensor *half = BS(&s, VTL_BIN_MUL, g, 0.5);
    if (n->needs[0]) ga = W(&s, tie, half, PASS(&s, win, g));
    if (n->needs[1]) gb = W(&s, tie, half, PASS(&s, U(&s, VTL_UN_LOGICAL_NOT, B(&s, VTL_BIN_LOGICAL_OR, win, tie)), g));
    break;
  }
  case VTL_BIN_REMAINDER: /* a - floor(a / b) b */
    ga = g;
    if (n->needs[1]) gb = U(&s, VTL_UN_NEG, B(&s, VTL_BIN_MUL, g, U(&s, VTL_UN_FLOOR, B(&s, VTL_BIN_DIV, a, b))));
    break;
  case VTL_BIN_ATAN2: { /* d/da = b / (a² + b²), d/db = -a / (a² + b²) */
    vtl_tensor *den = B(&s, VTL_BIN_ADD, U(&s, VTL_UN_SQUARE, a), U(&s, VTL_UN_SQUARE, b));
    if (n->needs[0]) ga = B(&s, VTL_BIN_MUL, g, B(&s, VTL_BIN_DIV, b, den));
    if (n->needs[1]) gb = U(&s, VTL_UN_NEG, B(&s, VTL_BIN_MUL, g, B(&s, VTL_BIN_DIV, a, den)));
    break;
  }
  default: /* floor_divide: zero gradient */
    ga = BS(&s, VTL_BIN_MUL, g, 0);
    gb = ga;
    break;
  }
  if (n->needs[0] && ga && !s.fail) gin[0] = vtl_tensor_retain(ga);
  if (n->needs[1] && gb && !s.fail) gin[1] = vtl_tensor_retain(gb);
  return finish(&s, NULL, NULL);
}

static bool differentiable_binary(vtl_binary_op op) { return op <= VTL_BIN_ATAN2; }

static vtl_tensor *record_binary(vtl_binary_op op, vtl_tensor *out, vtl_tensor *a, vtl_tensor *b) {
  if (!differentiable_binary(op) || !out || !vtl_dtype_is_float(out->dtype)) return out;
  vtl_tensor *in[2] = {a, b};
  vtl_node *nd = record(&out, "BinaryBackward", binary_bw, in, 2);
  if (!nd) return out;
  nd->name = vtl_binary_name(op);
  nd->i[0] = op;
  bool need_ab = op != VTL_BIN_ADD && op != VTL_BIN_SUB;
  vtl_ag_save(nd, need_ab ? a : NULL);
  vtl_ag_save(nd, need_ab ? b : NULL);
  vtl_ag_save(nd, op == VTL_BIN_DIV || op == VTL_BIN_POW ? out : NULL);
  return vtl_ag_attach(out, nd);
}

vtl_tensor *vtl_fn_binary(vtl_binary_op op, vtl_tensor *a, vtl_tensor *b) {
  return record_binary(op, vtl_op_binary(op, a, b), a, b);
}

vtl_tensor *vtl_fn_binary_scalar(vtl_binary_op op, vtl_tensor *a, double v, bool s_is_float, bool scalar_first) {
  if (!vtl_ag_needs(&a, 1) || !differentiable_binary(op)) return vtl_op_binary_scalar(op, a, v, s_is_float, scalar_first);
  /* the number as a 0-d tensor of the result's dtype, so the rule sees two tensors */
  vtl_dtype dt = vtl_dtype_promote_scalar(a->dtype, s_is_float);
  vtl_tensor *st = vtl_op_full(NULL, 0, v, dt == VTL_F16 || dt == VTL_BF16 ? VTL_F32 : dt, vtl_tensor_device(a));
  if (!st) return NULL;
  vtl_tensor *out = vtl_op_binary_scalar(op, a, v, s_is_float, scalar_first);
  out = scalar_first ? record_binary(op, out, st, a) : record_binary(op, out, a, st);
  vtl_tensor_release(st);
  return out;
}

/* ---- where, lerp, masked_fill ---- */
static vtl_status where_bw(vtl_node *n, vtl_tensor *g, vtl_tensor **gin) {
  scope s = {0};
  vtl_tensor *c = SAVED(&s, n, 0);
  vtl_tensor *z = s.fail ? NULL : keep(&s, vtl_op_full(NULL, 0, 0, g->dtype, vtl_tensor_device(g)));
  vtl_tensor *ga = n->needs[1] ? W(&s, c, g, z) : NULL, *gb = n->needs[2] ? W(&s, c, z, g) : NULL;
  if (!s.fail) { if (ga) gin[1] = vtl_tensor_retain(ga); if (gb) gin[2] = vtl_tensor_retain(gb); }
  return finish(&s, NULL, NULL);
}

vtl_tensor *vtl_fn_where(vtl_tensor *cond, vtl_tensor *a, vtl_tensor *b) {
  vtl_tensor *out = vtl_op_where(cond, a, b);
  vtl_tensor *in[3] = {cond, a, b};
  if (!out || !vtl_dtype_is_float(out->dtype)) return out;
  vtl_node *nd = record(&out, "WhereBackward", where_bw, in, 3);
  if (!nd) return out;
  vtl_ag_save(nd, cond);
  return vtl_ag_attach(out, nd);
}

static vtl_status lerp_bw(vtl_node *n, vtl_tensor *g, vtl_tensor **gin) {
  scope s = {0};
  vtl_tensor *a = SAVED(&s, n, 0), *b = SAVED(&s, n, 1), *w = SAVED(&s, n, 2);
  vtl_tensor *gw = B(&s, VTL_BIN_MUL, g, w);
  vtl_tensor *ga = B(&s, VTL_BIN_SUB, g, gw);
  vtl_tensor *gww = n->needs[2] ? B(&s, VTL_BIN_MUL, g, B(&s, VTL_BIN_SUB, b, a)) : NULL;
  if (!s.fail) {
    if (n->needs[0]) gin[0] = vtl_tensor_retain(ga);
    if (n->needs[1]) gin[1] = vtl_tensor_retain(gw);
    if (gww) gin[2] = vtl_tensor_retain(gww);
  }
  return finish(&s, NULL, NULL);
}

vtl_tensor *vtl_fn_lerp(vtl_tensor *a, vtl_tensor *b, vtl_tensor *w) {
  vtl_tensor *out = vtl_op_lerp(a, b, w);
  vtl_tensor *in[3] = {a, b, w};
  vtl_node *nd = record(&out, "LerpBackward", lerp_bw, in, 3);
  if (!nd) return out;
  vtl_ag_save(nd, a);
  vtl_ag_save(nd, b);
  vtl_ag_save(nd, w);
  return vtl_ag_attach(out, nd);
}

static vtl_status masked_fill_bw(vtl_node *n, vtl_tensor *g, vtl_tensor **gin) {
  scope s = {0};
  vtl_tensor *m = SAVED(&s, n, 0);
  return finish(&s, &gin[0], PASS(&s, U(&s, VTL_UN_LOGICAL_NOT, m), g));
}

vtl_tensor *vtl_fn_masked_fill(vtl_tensor *x, vtl_tensor *mask, double value) {
  vtl_tensor *out = vtl_op_clone(x);
  if (out && vtl_op_masked_fill_(out, mask, value) != VTL_OK) { vtl_tensor_release(out); return NULL; }
  vtl_node *nd = record(&out, "MaskedFillBackward", masked_fill_bw, &x, 1);
  if (!nd) return out;
  vtl_ag_save(nd, mask);
  return vtl_ag_attach(out, nd);
}

/* ---- copies ---- */
static vtl_status identity_bw(vtl_node *n, vtl_tensor *g, vtl_tensor **gin) {
  gin[0] = vtl_tensor_retain(g); /* the engine casts to the input's dtype */
  return VTL_OK;
}

static vtl_tensor *record_identity(vtl_tensor *out, vtl_tensor *x, const char *name) {
  if (out == x) { /* the op returned its input: a new header so the graph gets its node */
    vtl_tensor *v = vtl_detach(x);
    vtl_tensor_release(out);
    out = v;
  }
  vtl_node *nd = record(&out, name, identity_bw, &x, 1);
  return nd ? vtl_ag_attach(out, nd) : out;
}

vtl_tensor *vtl_fn_to_dtype(vtl_tensor *x, vtl_dtype dt) {
  vtl_tensor *out = vtl_op_to_dtype(x, dt);
  if (!out || !vtl_dtype_is_float(dt) || !vtl_ag_needs(&x, 1)) return out;
  return record_identity(out, x, "ToCopyBackward");
}

/* a copy on another device: the gradient goes back to the source device */
static vtl_status to_device_bw(vtl_node *n, vtl_tensor *g, vtl_tensor **gin) {
  vtl_device src = {(vtl_device_type)n->i[0], (int)n->i[1]};
  gin[0] = vtl_tensor_to_device(g, src);
  return gin[0] ? VTL_OK : vtl_error_status();
}
vtl_tensor *vtl_fn_to_device(vtl_tensor *x, vtl_device dev, bool async) {
  vtl_tensor *out = async ? vtl_tensor_to_device_async(x, dev) : vtl_tensor_to_device(x, dev);
  if (!out || !vtl_dtype_is_float(x->dtype) || !vtl_ag_needs(&x, 1)) return out;
  vtl_device src = vtl_tensor_device(x);
  vtl_node *nd = record(&out, "ToDeviceBackward", to_device_bw, &x, 1);
  if (!nd) return out;
  nd->i[0] = src.type;
  nd->i[1] = src.index;
  return vtl_ag_attach(out, nd);
}
/* a copy in x's layout when that is channels-last (PyTorch's preserve_format), else contiguous */
vtl_tensor *vtl_fn_clone(vtl_tensor *x) {
  vtl_tensor *c = NULL;
  if (vtl_tensor_keeps_channels_last(x)) {
    c = vtl_tensor_empty_channels_last(x->shape, x->dtype, vtl_tensor_device(x));
    if (c && vtl_op_copy_(c, x) != VTL_OK) {
      vtl_tensor_release(c);
      c = NULL;
    }
  } else {
    c = vtl_op_clone(x);
  }
  return record_identity(c, x, "CloneBackward");
}
vtl_tensor *vtl_fn_contiguous(vtl_tensor *x) {
  vtl_tensor *out = vtl_op_contiguous(x);
  if (!vtl_ag_needs(&x, 1)) return out;
  return record_identity(out, x, "CloneBackward");
}

vtl_tensor *vtl_fn_contiguous_channels_last(vtl_tensor *x) {
  vtl_tensor *out = vtl_op_contiguous_channels_last(x);
  if (!vtl_ag_needs(&x, 1)) return out;
  return record_identity(out, x, "CloneBackward");
}

/* ---- views ---- */
/* reshape-like: the gradient takes the input's shape back */
static vtl_status reshape_bw(vtl_node *n, vtl_tensor *g, vtl_tensor **gin) {
  gin[0] = vtl_op_reshape(g, n->in_shape[0], n->in_ndim[0]);
  return gin[0] ? VTL_OK : vtl_error_status();
}
static vtl_tensor *record_reshape(vtl_tensor *out, vtl_tensor *x, const char *name) {
  vtl_node *nd = record(&out, name, reshape_bw, &x, 1);
  return nd ? vtl_ag_attach(out, nd) : out;
}
vtl_tensor *vtl_fn_view(vtl_tensor *x, const int64_t *shape, int nd) { return record_reshape(vtl_op_view(x, shape, nd), x, "ViewBackward"); }
vtl_tensor *vtl_fn_reshape(vtl_tensor *x, const int64_t *shape, int nd) {
  vtl_tensor *out = vtl_op_reshape(x, shape, nd);
  if (out == x) return out;
  return record_reshape(out, x, "ReshapeBackward");
}
vtl_tensor *vtl_fn_squeeze(vtl_tensor *x, int dim) { return record_reshape(vtl_op_squeeze(x, dim), x, "SqueezeBackward"); }
vtl_tensor *vtl_fn_unsqueeze(vtl_tensor *x, int dim) { return record_reshape(vtl_op_unsqueeze(x, dim), x, "UnsqueezeBackward"); }
vtl_tensor *vtl_fn_flatten(vtl_tensor *x, int start, int end) { return record_reshape(vtl_op_flatten(x, start, end), x, "FlattenBackward"); }

/* expand: the engine sums the gradient down to the input's shape */
vtl_tensor *vtl_fn_expand(vtl_tensor *x, const int64_t *shape, int nd) {
  vtl_tensor *out = vtl_op_expand(x, shape, nd);
  vtl_node *n = record(&out, "ExpandBackward", identity_bw, &x, 1);
  return n ? vtl_ag_attach(out, n) : out;
}

static vtl_status permute_bw(vtl_node *n, vtl_tensor *g, vtl_tensor **gin) {
  int inv[VTL_MAX_DIMS];
  for (int d = 0; d < g->ndim; d++) inv[n->i[d]] = d;
  gin[0] = vtl_op_permute(g, inv, g->ndim);
  return gin[0] ? VTL_OK : vtl_error_status();
}
vtl_tensor *vtl_fn_permute(vtl_tensor *x, const int *perm, int np) {
  vtl_tensor *out = vtl_op_permute(x, perm, np);
  vtl_node *nd = record(&out, "PermuteBackward", permute_bw, &x, 1);
  if (!nd) return out;
  for (int d = 0; d < np; d++) nd->i[d] = perm[d];
  return vtl_ag_attach(out, nd);
}
vtl_tensor *vtl_fn_transpose(vtl_tensor *x, int d0, int d1) {
  if (x->ndim == 0 || d0 < 0 || d1 < 0 || d0 >= x->ndim || d1 >= x->ndim) return vtl_op_transpose(x, d0, d1);
  int perm[VTL_MAX_DIMS];
  for (int i = 0; i < x->ndim; i++) perm[i] = i;
  perm[d0] = d1;
  perm[d1] = d0;
  return vtl_fn_permute(x, perm, x->ndim);
}

/* slice/select: the gradient is scattered into zeros of the input's shape */
static vtl_status slice_bw(vtl_node *n, vtl_tensor *g, vtl_tensor **gin) {
  vtl_tensor *z = vtl_tensor_zeros(n->in_shape[0], n->in_ndim[0], g->dtype, vtl_tensor_device(g));
  if (!z) return vtl_error_status();
  vtl_tensor *v = n->i[0] == 0 ? vtl_op_slice(z, (int)n->i[1], n->i[2], n->i[3], n->i[4])
                               : vtl_op_select(z, (int)n->i[1], n->i[2]);
  vtl_status st = v ? vtl_op_copy_(v, g) : vtl_error_status();
  vtl_tensor_release(v);
  if (st != VTL_OK) { vtl_tensor_release(z); return st; }
  gin[0] = z;
  return VTL_OK;
}
vtl_tensor *vtl_fn_slice(vtl_tensor *x, int dim, int64_t start, int64_t stop, int64_t step) {
  vtl_tensor *out = vtl_op_slice(x, dim, start, stop, step);
  vtl_node *nd = record(&out, "SliceBackward", slice_bw, &x, 1);
  if (!nd) return out;
  nd->i[0] = 0; nd->i[1] = dim; nd->i[2] = start; nd->i[3] = stop; nd->i[4] = step;
  return vtl_ag_attach(out, nd);
}
vtl_tensor *vtl_fn_narrow(vtl_tensor *x, int dim, int64_t start, int64_t length) {
  if (x->ndim == 0 || dim < 0 || dim >= x->ndim || start < 0 || length < 0 || start + length > x->shape[dim])
    return vtl_op_narrow(x, dim, start, length); /* reports the error */
  return vtl_fn_slice(x, dim, start, start + length, 1);
}
vtl_tensor *vtl_fn_select(vtl_tensor *x, int dim, int64_t index) {
  vtl_tensor *out = vtl_op_select(x, dim, index);
  vtl_node *nd = record(&out, "SelectBackward", slice_bw, &x, 1);
  if (!nd) return out;
  nd->i[0] = 1; nd->i[1] = dim; nd->i[2] = index;
  return vtl_ag_attach(out, nd);
}

/* repeat: sum the gradient over the repeated copies */
static vtl_status repeat_bw(vtl_node *n, vtl_tensor *g, vtl_tensor **gin) {
  int nr = (int)n->i[0];
  int64_t split[VTL_MAX_DIMS];
  uint32_t mask = 0;
  int lead = nr - n->in_ndim[0];
  for (int d = 0; d < nr; d++) {
    int64_t sz = d < lead ? 1 : n->in_shape[0][d - lead];
    split[2 * d] = n->i[1 + d];
    split[2 * d + 1] = sz;
    mask |= 1u << (2 * d);
  }
  vtl_tensor *v = vtl_op_reshape(g, split, 2 * nr);
  vtl_tensor *s = v ? vtl_op_reduce(VTL_RED_SUM, v, mask, false, 0, NULL) : NULL;
  vtl_tensor_release(v);
  if (!s) return vtl_error_status();
  gin[0] = vtl_op_reshape(s, n->in_shape[0], n->in_ndim[0]);
  vtl_tensor_release(s);
  return gin[0] ? VTL_OK : vtl_error_status();
}
vtl_tensor *vtl_fn_repeat(vtl_tensor *x, const int64_t *reps, int nr) {
  vtl_tensor *out = vtl_op_repeat(x, reps, nr);
  if (out && 2 * nr > VTL_MAX_DIMS) return out;
  vtl_node *nd = record(&out, "RepeatBackward", repeat_bw, &x, 1);
  if (!nd) return out;
  nd->i[0] = nr;
  for (int d = 0; d < nr; d++) nd->i[1 + d] = reps[d];
  return vtl_ag_attach(out, nd);
}

/* ---- reductions ---- */
/* g of the reduced shape brought back to the input's shape (broadcast view) */
static vtl_tensor *unreduce(scope *s, vtl_tensor *g, const vtl_node *n, uint32_t dims, bool keepdim) {
  if (s->fail) return NULL;
  int nd = n->in_ndim[0];
  int64_t ks[VTL_MAX_DIMS];
  for (int d = 0; d < nd; d++) ks[d] = (dims >> d & 1) ? 1 : n->in_shape[0][d];
  vtl_tensor *k = keep(s, keepdim ? vtl_tensor_retain(g) : vtl_op_reshape(g, ks, nd));
  return s->fail ? NULL : keep(s, vtl_op_expand(k, n->in_shape[0], nd));
}

static vtl_status reduce_bw(vtl_node *n, vtl_tensor *g, vtl_tensor **gin) {
  scope s = {0};
  vtl_reduce_op op = (vtl_reduce_op)n->i[0];
  uint32_t dims = (uint32_t)n->i[1];
  bool keepdim = n->i[2];
  int64_t count = n->i[3];
  vtl_tensor *x = SAVED(&s, n, 0), *y = SAVED(&s, n, 1), *idx = SAVED(&s, n, 2), *r = NULL;
  vtl_tensor *ge = unreduce(&s, g, n, dims, keepdim);
  switch (op) {
  case VTL_RED_SUM: r = ge; break;
  case VTL_RED_MEAN: r = BS(&s, VTL_BIN_DIV, ge, (double)(count ? count : 1)); break;
  case VTL_RED_PROD: r = B(&s, VTL_BIN_DIV, B(&s, VTL_BIN_MUL, ge, unreduce(&s, y, n, dims, keepdim)), x); break;
  case VTL_RED_LOGSUMEXP:
    r = B(&s, VTL_BIN_MUL, ge, U(&s, VTL_UN_EXP, B(&s, VTL_BIN_SUB, x, unreduce(&s, y, n, dims, keepdim))));
    break;
  case VTL_RED_VAR: { /* 2 (x - mean) / (N - correction) */
    vtl_tensor *mean = s.fail ? NULL : keep(&s, vtl_op_reduce(VTL_RED_MEAN, x, dims, true, 0, NULL));
    double dof = (double)count - n->f[0];
    r = B(&s, VTL_BIN_MUL, ge, BS(&s, VTL_BIN_MUL, B(&s, VTL_BIN_SUB, x, mean), 2.0 / (dof > 0 ? dof : 0)));
    break;
  }
  case VTL_RED_NORM: {
    double p = n->f[0];
    vtl_tensor *ye = unreduce(&s, y, n, dims, keepdim);
    if (p == 2) r = B(&s, VTL_BIN_MUL, ge, W(&s, BS(&s, VTL_BIN_EQ, ye, 0), BS(&s, VTL_BIN_MUL, x, 0), B(&s, VTL_BIN_DIV, x, ye)));
    else if (p == 1) r = B(&s, VTL_BIN_MUL, ge, U(&s, VTL_UN_SIGN, x));
    else if (isinf(p)) { /* evenly among the entries reaching the max */
      vtl_tensor *ax = U(&s, VTL_UN_ABS, x), *hit = B(&s, VTL_BIN_EQ, ax, ye);
      vtl_tensor *cnt = s.fail ? NULL : keep(&s, vtl_op_reduce(VTL_RED_SUM, hit, dims, true, 0, NULL));
      r = B(&s, VTL_BIN_DIV, B(&s, VTL_BIN_MUL, PASS(&s, hit, ge), U(&s, VTL_UN_SIGN, x)), cnt);
    } else { /* x |x|^(p-2) / norm^(p-1) */
      vtl_tensor *num = B(&s, VTL_BIN_MUL, x, BS(&s, VTL_BIN_POW, U(&s, VTL_UN_ABS, x), p - 2));
      r = B(&s, VTL_BIN_MUL, ge, B(&s, VTL_BIN_DIV, num, BS(&s, VTL_BIN_POW, ye, p - 1)));
    }
    break;
  }
  case VTL_RED_MAX: case VTL_RED_MIN:
    if (n->in_ndim[0] == 0) r = g; /* one element */
    else if (idx) { /* along one dim: to the selected positions */
      int d = __builtin_ctz(dims);
      vtl_tensor *z = ZEROS(&s, n->in_shape[0], n->in_ndim[0], g);
      vtl_tensor *gk = keepdim ? g : (s.fail ? NULL : keep(&s, vtl_op_unsqueeze(g, d)));
      vtl_tensor *ik = keepdim ? idx : (s.fail ? NULL : keep(&s, vtl_op_unsqueeze(idx, d)));
      if (!s.fail && vtl_op_scatter_(z, d, ik, gk, false) != VTL_OK) s.fail = true;
      r = z;
    } else { /* over everything: evenly among ties */
      vtl_tensor *hit = B(&s, VTL_BIN_EQ, x, unreduce(&s, y, n, dims, keepdim));
      vtl_tensor *cnt = s.fail ? NULL : keep(&s, vtl_op_reduce(VTL_RED_SUM, hit, dims, true, 0, NULL));
      r = B(&s, VTL_BIN_DIV, PASS(&s, hit, ge), cnt);
    }
    break;
  default: break;
  }
  return finish(&s, &gin[0], r);
}

vtl_tensor *vtl_fn_reduce(vtl_reduce_op op, vtl_tensor *x, uint32_t dims, bool keepdim, double param,
                          vtl_tensor **indices) {
  vtl_tensor *idx = NULL;
  bool want_idx = indices || ((op == VTL_RED_MAX || op == VTL_RED_MIN) && dims && !(dims & (dims - 1)) && vtl_ag_needs(&x, 1));
  vtl_tensor *out = vtl_op_reduce(op, x, dims, keepdim, param, want_idx ? &idx : NULL);
  if (indices) *indices = idx ? vtl_tensor_retain(idx) : NULL;
  bool diff = op == VTL_RED_SUM || op == VTL_RED_MEAN || op == VTL_RED_PROD || op == VTL_RED_LOGSUMEXP ||
              op == VTL_RED_VAR || op == VTL_RED_NORM || op == VTL_RED_MAX || op == VTL_RED_MIN;
  if (!diff || !out || !vtl_dtype_is_float(out->dtype)) { vtl_tensor_release(idx); return out; }
  vtl_node *nd = record(&out, "ReduceBackward", reduce_bw, &x, 1);
  if (!nd) { vtl_tensor_release(idx); return out; }
  uint32_t all = x->ndim ? (uint32_t)((1ull << x->ndim) - 1) : 0;
  uint32_t d = dims ? dims : all;
  int64_t count = 1;
  for (int k = 0; k < x->ndim; k++) if (d >> k & 1) count *= x->shape[k];
  nd->i[0] = op; nd->i[1] = d; nd->i[2] = keepdim || !x->ndim; nd->i[3] = count;
  nd->f[0] = param;
  vtl_ag_save(nd, op == VTL_RED_SUM || op == VTL_RED_MEAN ? NULL : x);
  vtl_ag_save(nd, op == VTL_RED_PROD || op == VTL_RED_LOGSUMEXP || op == VTL_RED_NORM || op == VTL_RED_MAX || op == VTL_RED_MIN ? out : NULL);
  vtl_ag_save(nd, idx);
  vtl_tensor_release(idx);
  return vtl_ag_attach(out, nd);
}

/* cumsum: x_i receives the sum of g_j for j >= i = total - cumsum(g) + g */
static vtl_status cumsum_bw(vtl_node *n, vtl_tensor *g, vtl_tensor **gin) {
  scope s = {0};
  int d = (int)n->i[0];
  vtl_tensor *tot = s.fail ? NULL : keep(&s, vtl_op_reduce(VTL_RED_SUM, g, g->ndim ? 1u << d : 0, true, 0, NULL));
  vtl_tensor *cs = keep(&s, vtl_op_cumsum(g, d));
  return finish(&s, &gin[0], B(&s, VTL_BIN_ADD, B(&s, VTL_BIN_SUB, tot, cs), g));
}
vtl_tensor *vtl_fn_cumsum(vtl_tensor *x, int dim) {
  vtl_tensor *out = vtl_op_cumsum(x, dim);
  if (!out || !vtl_dtype_is_float(out->dtype)) return out;
  vtl_node *nd = record(&out, "CumsumBackward", cumsum_bw, &x, 1);
  if (!nd) return out;
  nd->i[0] = dim;
  return vtl_ag_attach(out, nd);
}

/* gather-like: scatter-add the gradient back along dim at the saved (0-based) index */
static vtl_status gather_bw(vtl_node *n, vtl_tensor *g, vtl_tensor **gin) {
  scope s = {0};
  vtl_tensor *idx = SAVED(&s, n, 0);
  vtl_tensor *z = ZEROS(&s, n->in_shape[0], n->in_ndim[0], g);
  if (!s.fail && vtl_op_scatter_(z, (int)n->i[0], idx, g, true) != VTL_OK) s.fail = true;
  return finish(&s, &gin[0], z);
}

vtl_status vtl_fn_topk(vtl_tensor *x, int64_t k, int dim, bool largest, vtl_tensor **values, vtl_tensor **indices) {
  vtl_status st = vtl_op_topk(x, k, dim, largest, true, values, indices);
  if (st != VTL_OK || !vtl_dtype_is_float(x->dtype)) return st;
  if (!x->ndim) { /* one element: the value is the input */
    vtl_node *nd = record(values, "TopkBackward", identity_bw, &x, 1);
    if (nd) vtl_ag_attach(*values, nd);
    else if (!*values) { vtl_tensor_release(*indices); return vtl_error_status(); }
    return VTL_OK;
  }
  vtl_node *nd = record(values, "TopkBackward", gather_bw, &x, 1);
  if (!nd) { if (!*values) { vtl_tensor_release(*indices); return vtl_error_status(); } return VTL_OK; }
  nd->i[0] = dim;
  vtl_ag_save(nd, *indices);
  vtl_ag_attach(*values, nd);
  return VTL_OK;
}

/* Records an op that picks x's entries along dim by index: the backward scatters back at the
   saved index (as i64). */
static vtl_tensor *record_indexed(vtl_tensor *out, vtl_tensor *x, int dim, vtl_tensor *index, const char *name,
                                  vtl_backward_fn bw) {
  vtl_node *nd = record(&out, name, bw, &x, 1);
  if (!nd) return out;
  nd->i[0] = dim;
  vtl_tensor *i64 = vtl_op_to_dtype(index, VTL_I64);
  vtl_ag_save(nd, i64);
  vtl_tensor_release(i64);
  return vtl_ag_attach(out, nd);
}

vtl_tensor *vtl_fn_gather(vtl_tensor *x, int dim, vtl_tensor *index) {
  return record_indexed(vtl_op_gather(x, dim, index), x, dim, index, "GatherBackward", gather_bw);
}

static vtl_status index_select_bw(vtl_node *n, vtl_tensor *g, vtl_tensor **gin) {
  scope s = {0};
  vtl_tensor *idx = SAVED(&s, n, 0);
  int d = (int)n->i[0];
  vtl_tensor *z = ZEROS(&s, n->in_shape[0], n->in_ndim[0], g);
  if (!s.fail) { /* the 1-D index spread along the other dims */
    int64_t st[VTL_MAX_DIMS] = {0};
    st[d] = idx->strides[0];
    vtl_tensor *e = keep(&s, vtl_tensor_view_of(idx, g->shape, st, g->ndim, idx->offset));
    if (e && vtl_op_scatter_(z, d, e, g, true) != VTL_OK) s.fail = true;
  }
  return finish(&s, &gin[0], z);
}
vtl_tensor *vtl_fn_index_select(vtl_tensor *x, int dim, vtl_tensor *index) {
  return record_indexed(vtl_op_index_select(x, dim, index), x, dim, index, "IndexSelectBackward", index_select_bw);
}

static vtl_status mask_index_bw(vtl_node *n, vtl_tensor *g, vtl_tensor **gin) {
  scope s = {0};
  vtl_tensor *m = SAVED(&s, n, 0);
  vtl_tensor *z = ZEROS(&s, n->in_shape[0], n->in_ndim[0], g);
  if (!s.fail && (n->i[0] ? vtl_op_masked_scatter_(z, m, g) : vtl_op_mask_assign_(z, m, g, 0)) != VTL_OK) s.fail = true;
  return finish(&s, &gin[0], z);
}
vtl_tensor *vtl_fn_mask_index(vtl_tensor *x, vtl_tensor *mask) {
  vtl_tensor *out = vtl_op_mask_index(x, mask);
  vtl_node *nd = record(&out, "MaskIndexBackward", mask_index_bw, &x, 1);
  if (!nd) return out;
  nd->i[0] = 0;
  vtl_ag_save(nd, mask);
  return vtl_ag_attach(out, nd);
}
vtl_tensor *vtl_fn_masked_select(vtl_tensor *x, vtl_tensor *mask) {
  vtl_tensor *out = vtl_op_masked_select(x, mask);
  if (!out || !vtl_ag_needs(&x, 1)) return out;
  /* the mask broadcast to x's shape (the gradient lands in x's shape) */
  vtl_tensor *m = vtl_broadcast_to(mask, x->shape, x->ndim);
  if (!m) { /* x itself was broadcast against the mask: not supported for gradients */
    vtl_tensor_release(out);
    return vtl_error_set(VTL_ERR_ARG, "masked_select: gradients need a mask that broadcasts to the input's shape"), NULL;
  }
  vtl_node *nd = record(&out, "MaskedSelectBackward", mask_index_bw, &x, 1);
  if (nd) { nd->i[0] = 1; vtl_ag_save(nd, m); vtl_ag_attach(out, nd); }
  vtl_tensor_release(m);
  return out;
}

/* ---- matmul (2-D and batched; 1-D operands go through unsqueeze/squeeze views) ---- */
static vtl_tensor *swap_last(scope *s, vtl_tensor *t) {
  return s->fail ? NULL : keep(s, vtl_op_transpose(t, t->ndim - 2, t->ndim - 1));
}
static vtl_status matmul_bw(vtl_node *n, vtl_tensor *g, vtl_tensor **gin) {
  scope s = {0};
  vtl_tensor *a = SAVED(&s, n, 0), *b = SAVED(&s, n, 1);
  vtl_tensor *ga = n->needs[0] && b ? (s.fail ? NULL : keep(&s, vtl_op_matmul(g, swap_last(&s, b)))) : NULL;
  vtl_tensor *gb = n->needs[1] && a ? (s.fail ? NULL : keep(&s, vtl_op_matmul(swap_last(&s, a), g))) : NULL;
  if (!s.fail) { if (ga) gin[0] = vtl_tensor_retain(ga); if (gb) gin[1] = vtl_tensor_retain(gb); }
  return finish(&s, NULL, NULL);
}
static vtl_tensor *fn_matmul(vtl_tensor *a, vtl_tensor *b);

/* in an autocast region both operands go to its reduced dtype (autocast.h) */
vtl_tensor *vtl_fn_matmul(vtl_tensor *a, vtl_tensor *b) {
  if (!vtl_autocast_casts(a) && !vtl_autocast_casts(b)) return fn_matmul(a, b);
  if (!vtl_dtype_is_float(a->dtype) || !vtl_dtype_is_float(b->dtype) || a->dtype == VTL_F64 || b->dtype == VTL_F64)
    return fn_matmul(a, b);
  vtl_tensor *la = vtl_autocast_low(a), *lb = la ? vtl_autocast_low(b) : NULL;
  vtl_tensor *r = lb ? fn_matmul(la, lb) : NULL;
  vtl_tensor_release(la);
  vtl_tensor_release(lb);
  return r;
}

static vtl_tensor *fn_matmul(vtl_tensor *a, vtl_tensor *b) {
  vtl_tensor *in[2] = {a, b};
  if (!vtl_ag_needs(in, 2) || a->ndim == 0 || b->ndim == 0) return vtl_op_matmul(a, b);
  if (a->ndim == 1 || b->ndim == 1) {
    vtl_tensor *a2 = a->ndim == 1 ? vtl_fn_unsqueeze(a, 0) : vtl_tensor_retain(a);
    vtl_tensor *b2 = b->ndim == 1 ? vtl_fn_unsqueeze(b, 1) : vtl_tensor_retain(b);
    vtl_tensor *r = a2 && b2 ? fn_matmul(a2, b2) : NULL;
    vtl_tensor_release(a2);
    vtl_tensor_release(b2);
    if (!r) return NULL;
    vtl_tensor *q = r;
    if (b->ndim == 1) { q = vtl_fn_squeeze(r, r->ndim - 1); vtl_tensor_release(r); r = q; }
    if (r && a->ndim == 1) { q = vtl_fn_squeeze(r, r->ndim - (b->ndim == 1 ? 1 : 2)); vtl_tensor_release(r); }
    return q;
  }
  vtl_tensor *out = vtl_op_matmul(a, b);
  vtl_node *nd = record(&out, "MatmulBackward", matmul_bw, in, 2);
  if (!nd) return out;
  vtl_ag_save(nd, nd->needs[1] ? a : NULL);
  vtl_ag_save(nd, nd->needs[0] ? b : NULL);
  return vtl_ag_attach(out, nd);
}

/* ---- cat / stack ---- */
static vtl_status cat_bw(vtl_node *n, vtl_tensor *g, vtl_tensor **gin) {
  int d = (int)n->i[0];
  int64_t at = 0;
  for (int k = 0; k < n->ninputs; k++) {
    int64_t len = n->i[1 + k];
    if (n->needs[k] && len >= 0) {
      gin[k] = vtl_op_narrow(g, d, at, len);
      if (!gin[k]) return vtl_error_status();
    }
    at += len > 0 ? len : 0;
  }
  return VTL_OK;
}
vtl_tensor *vtl_fn_cat(vtl_tensor *const *xs, int n, int dim) {
  if (n > VTL_NODE_MAXIN && vtl_ag_needs(xs, n)) { /* a node takes at most MAXIN inputs: chain */
    vtl_tensor *acc = vtl_fn_cat(xs, VTL_NODE_MAXIN, dim);
    for (int k = VTL_NODE_MAXIN; acc && k < n; k += VTL_NODE_MAXIN - 1) {
      vtl_tensor *part[VTL_NODE_MAXIN];
      int m = n - k < VTL_NODE_MAXIN - 1 ? n - k : VTL_NODE_MAXIN - 1;
      part[0] = acc;
      memcpy(part + 1, xs + k, (size_t)m * sizeof *part);
      vtl_tensor *next = vtl_fn_cat(part, m + 1, dim);
      vtl_tensor_release(acc);
      acc = next;
    }
    return acc;
  }
  vtl_tensor *out = vtl_op_cat(xs, n, dim);
  if (!out || !vtl_ag_needs(xs, n)) return out;
  vtl_node *nd = record(&out, "CatBackward", cat_bw, xs, n);
  if (!nd) return out;
  nd->i[0] = dim;
  for (int k = 0; k < n; k++) nd->i[1 + k] = xs[k]->ndim == out->ndim ? xs[k]->shape[dim] : -1;
  return vtl_ag_attach(out, nd);
}
vtl_tensor *vtl_fn_stack(vtl_tensor *const *xs, int n, int dim) {
  if (!vtl_ag_needs(xs, n)) return vtl_op_stack(xs, n, dim);
  vtl_tensor **us = calloc((size_t)n, sizeof *us);
  if (!us) return vtl_error_set(VTL_ERR_OOM, "stack: out of memory"), NULL;
  int k = 0;
  for (; k < n; k++) {
    if (dim < 0 || dim > xs[k]->ndim) { vtl_op_stack(xs, n, dim); break; } /* reports the error */
    if (!(us[k] = vtl_fn_unsqueeze(xs[k], dim))) break;
  }
  vtl_tensor *out = k == n ? vtl_fn_cat(us, n, dim) : NULL;
  for (int j = 0; j < k; j++) vtl_tensor_release(us[j]);
  free(us);
  return out;
}
