/*
 * nn ops: normalisation, activations, softmax, losses, dropout. Each op checks its arguments
 * (every message starts with the op's name and names the offending argument and shapes)
 * before allocating, makes its operands contiguous, and calls the CPU kernels of
 * kernels/cpu/norm.c and kernels/cpu/activation.c. The vtl_fn_* forms record autograd nodes.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "nn_norm.h"
#include "autocast.h"
#include "backend.h"
#include "ops.h"
#include "autograd.h"

/* ---- argument checks ---- */

typedef struct { char s[192]; } shape_str;

static shape_str shape_of(const vtl_tensor *t) {
  shape_str r;
  vtl_shape_format(t->shape, t->ndim, r.s, sizeof r.s);
  return r;
}

static shape_str dims_str(const int64_t *shape, int nd) {
  shape_str r;
  vtl_shape_format(shape, nd, r.s, sizeof r.s);
  return r;
}

static bool same_shape(const vtl_tensor *a, const vtl_tensor *b) {
  if (a->ndim != b->ndim) return false;
  for (int d = 0; d < a->ndim; d++)
    if (a->shape[d] != b->shape[d]) return false;
  return true;
}

static bool is_real(vtl_dtype dt) { return dt == VTL_F32 || dt == VTL_F64; }

static bool on_cpu(const char *op, const char *what, const vtl_tensor *t) {
  (void)what;
  return vtl_require_cpu(op, t) == VTL_OK;
}

/* t on x's device */
static bool on_device_of(const char *op, const vtl_tensor *t, const vtl_tensor *x) {
  return vtl_check_same_device(op, x, t) == VTL_OK;
}

/* The main input of an op: an f32 or f64 tensor, on the CPU for the ops that only the CPU
   backend runs (group norm, nll and the elementwise losses). */
static bool check_input_on(const char *op, const char *what, const vtl_tensor *t, bool any_device) {
  if (!t) return vtl_error_set(VTL_ERR_ARG, "%s: %s is missing", op, what), false;
  if (!is_real(t->dtype))
    return vtl_error_set(VTL_ERR_ARG, "%s: %s must be f32 or f64, got %s", op, what, vtl_dtype_name(t->dtype)), false;
  if (any_device) return vtl_nn_backend_of(op, t) != NULL;
  return on_cpu(op, what, t);
}
static bool check_input(const char *op, const char *what, const vtl_tensor *t) {
  return check_input_on(op, what, t, false);
}
/* the main input of an op that every backend with nn kernels runs */
static bool check_input_dev(const char *op, const char *what, const vtl_tensor *t) {
  return check_input_on(op, what, t, true);
}

/* the nn kernels of t's device (checked by check_input_dev before) */
static const vtl_nn_backend *nn_of(const vtl_tensor *t) { return vtl_backend_get(vtl_tensor_device(t))->nn; }

/* A float operand that must have the input's dtype and device. */
/* t of dtype dt on x's device */
static bool check_dtype_on(const char *op, const char *what, const vtl_tensor *t, vtl_dtype dt, const vtl_tensor *x) {
  if (t->dtype != dt)
    return vtl_error_set(VTL_ERR_ARG, "%s: %s must be %s%s, got %s", op, what, vtl_dtype_name(dt),
                         dt == x->dtype ? " like the input" : "", vtl_dtype_name(t->dtype)), false;
  return on_device_of(op, t, x);
}

static bool check_like(const char *op, const char *what, const vtl_tensor *t, const vtl_tensor *x) {
  return check_dtype_on(op, what, t, x->dtype, x);
}

/* An optional per-channel / per-class vector: NULL, or 1-D of length n with x's dtype. */
static bool check_vec_dt(const char *op, const char *what, const vtl_tensor *t, int64_t n, const char *unit,
                         vtl_dtype dt, const vtl_tensor *x) {
  if (!t) return true;
  if (t->ndim != 1 || t->shape[0] != n)
    return vtl_error_set(VTL_ERR_ARG, "%s: %s of shape %s does not match %lld %s (expected shape {%lld})", op, what,
                         shape_of(t).s, (long long)n, unit, (long long)n), false;
  return check_dtype_on(op, what, t, dt, x);
}

static bool check_vec(const char *op, const char *what, const vtl_tensor *t, int64_t n, const char *unit,
                      const vtl_tensor *x) {
  return check_vec_dt(op, what, t, n, unit, x->dtype, x);
}

static bool check_gout(const char *op, const vtl_tensor *g, const vtl_tensor *like, const char *what) {
  if (!g) return vtl_error_set(VTL_ERR_ARG, "%s: gout is missing", op), false;
  if (!same_shape(g, like))
    return vtl_error_set(VTL_ERR_ARG, "%s: gout of shape %s does not match %s of shape %s", op, shape_of(g).s, what,
                         shape_of(like).s), false;
  return check_like(op, "gout", g, like);
}

static int64_t prod(const int64_t *s, int a, int b) {
  int64_t p = 1;
  for (int d = a; d < b; d++) p *= s[d];
  return p;
}

/* ---- small helpers ---- */

static void release_all(vtl_tensor **ts, int n) {
  for (int i = 0; i < n; i++) { vtl_tensor_release(ts[i]); ts[i] = NULL; }
}

/* Contiguous form of an optional tensor; *ok false (error set) on failure. */
static vtl_tensor *contig_opt(vtl_tensor *t, bool *ok) {
  if (!t || !*ok) return NULL;
  vtl_tensor *c = vtl_op_contiguous(t);
  if (!c) *ok = false;
  return c;
}

static const void *data_or_null(const vtl_tensor *t) { return t ? vtl_tensor_data(t) : NULL; }

static vtl_tensor *new_like(const vtl_tensor *x) { return vtl_tensor_empty(x->shape, x->ndim, x->dtype, vtl_tensor_device(x)); }

/* t in the layout that `like` keeps (channels-last, else contiguous), so that a kernel walks t,
   like and an output made by new_as(like) in one memory order */
static vtl_tensor *dense_as(vtl_tensor *t, const vtl_tensor *like, bool *ok) {
  if (!t || !*ok) return NULL;
  vtl_tensor *c = vtl_tensor_keeps_channels_last(like) ? vtl_op_contiguous_channels_last(t) : vtl_op_contiguous(t);
  if (!c) *ok = false;
  return c;
}

static vtl_tensor *new_as(const vtl_tensor *x) { return vtl_tensor_empty_as(x, x->shape, x->ndim, x->dtype); }

/* a batch norm's (N, C, S) problem; channels-last memory is (N*H*W, C, 1) */
static void bn_dims(const vtl_tensor *x, int64_t *N, int64_t *C, int64_t *S) {
  *N = x->shape[0];
  *C = x->shape[1];
  *S = prod(x->shape, 2, x->ndim);
  if (vtl_tensor_keeps_channels_last(x)) {
    *N *= *S;
    *S = 1;
  }
}

/* per-channel or per-row statistics (f64) on x's device */
static vtl_tensor *new_stats(int64_t n, const vtl_tensor *x) {
  return vtl_tensor_empty(&n, 1, VTL_F64, vtl_tensor_device(x));
}

/* A 0-d tensor of dtype dt holding v. */
static vtl_tensor *new_scalar(vtl_dtype dt, double v) {
  vtl_tensor *t = vtl_tensor_empty(NULL, 0, dt, (vtl_device){VTL_CPU, 0});
  if (t) vtl_store_from_double(vtl_tensor_data(t), dt, v);
  return t;
}

/* Saved tensor k of a node, checked against in-place changes; false with the error set. */
static bool saved(vtl_node *nd, int k, vtl_tensor **t) {
  *t = vtl_ag_saved(nd, k);
  return *t || !nd->saved[k];
}

/* Attaches node nd (when not NULL) to out; on failure releases out and returns NULL. */
static vtl_tensor *attach(vtl_tensor *out, vtl_node *nd) {
  if (!vtl_ag_attach(out, nd)) { vtl_tensor_release(out); return NULL; }
  return out;
}

/* ---- batch norm ---- */

static bool is_half(vtl_dtype d);

/* f16/bf16 data normalised by the device's own kernels: they take half data with f32
   parameters (autocast's case) */
static bool bn_half_native(const vtl_tensor *x, const vtl_tensor *w, const vtl_tensor *b, const vtl_tensor *rm) {
  const vtl_backend *be = vtl_backend_of_type(vtl_tensor_device(x).type);
  if (!be || !be->nn || !be->nn->bn_half) return false;
  const vtl_tensor *ps[3] = {w, b, rm};
  for (int i = 0; i < 3; i++)
    if (ps[i] && ps[i]->dtype != VTL_F32) return false;
  return true;
}

/* the dtype of a batch norm's parameters over x: f32 for half data */
static vtl_dtype bn_param_dtype(const vtl_tensor *x) { return is_half(x->dtype) ? VTL_F32 : x->dtype; }

vtl_tensor *vtl_op_batch_norm_act(vtl_tensor *x, vtl_tensor *running_mean, vtl_tensor *running_var,
                                  vtl_tensor *weight, vtl_tensor *bias, bool training, double momentum, double eps,
                                  vtl_tensor *add, vtl_activation act, vtl_tensor **save_mean, vtl_tensor **save_invstd);

/* half data (and half parameters, or a device without half kernels): computed on f32 copies,
   the output rounded to the data's dtype and the running statistics written back */
static vtl_tensor *bn_half_copies(vtl_tensor *x, vtl_tensor *rm, vtl_tensor *rv, vtl_tensor *w, vtl_tensor *b,
                                  bool training, double momentum, double eps, vtl_tensor *add, vtl_activation act,
                                  vtl_tensor **save_mean, vtl_tensor **save_invstd) {
  vtl_tensor *in[6] = {x, rm, rv, w, b, add}, *f[6] = {NULL};
  bool ok = true;
  for (int i = 0; i < 6 && ok; i++)
    if (in[i] && !(f[i] = vtl_op_to_dtype(in[i], is_half(in[i]->dtype) ? VTL_F32 : in[i]->dtype))) ok = false;
  vtl_tensor *y = ok ? vtl_op_batch_norm_act(f[0], f[1], f[2], f[3], f[4], training, momentum, eps, f[5], act,
                                             save_mean, save_invstd)
                     : NULL;
  vtl_tensor *r = y ? vtl_op_to_dtype(y, x->dtype) : NULL;
  for (int i = 1; i < 3 && r && training; i++) /* the updated statistics back into the caller's */
    if (in[i] && f[i] != in[i] && vtl_op_copy_(in[i], f[i]) != VTL_OK) {
      vtl_tensor_release(r);
      r = NULL;
    }
  vtl_tensor_release(y);
  release_all(f, 6);
  if (!r && save_mean) { vtl_tensor_release(*save_mean); *save_mean = NULL; }
  if (!r && save_invstd) { vtl_tensor_release(*save_invstd); *save_invstd = NULL; }
  return r;
}

/* the clamp bounds of batch_norm's fused activation (VTL_ACT_COUNT: none) */
static void bn_bounds(vtl_activation act, double *cmin, double *cmax) {
  *cmin = act == VTL_ACT_COUNT ? -INFINITY : 0;
  *cmax = act == VTL_ACT_RELU6 ? 6 : INFINITY;
}

/* the post-operation's operands: add as x (shape, dtype, device) and act relu, relu6 or none */
static bool check_bn_post(const char *op, const vtl_tensor *x, const vtl_tensor *add, vtl_activation act) {
  if (act != VTL_ACT_RELU && act != VTL_ACT_RELU6 && act != VTL_ACT_COUNT)
    return vtl_error_set(VTL_ERR_ARG, "%s: the fused activation must be relu or relu6, got %s", op,
                         (unsigned)act < VTL_ACT_COUNT ? vtl_activation_name(act) : "an unknown one"), false;
  if (!add) return true;
  if (!same_shape(add, x))
    return vtl_error_set(VTL_ERR_ARG, "%s: the added tensor of shape %s does not match the input of shape %s", op,
                         shape_of(add).s, shape_of(x).s), false;
  return check_like(op, "the added tensor", add, x);
}

vtl_tensor *vtl_op_batch_norm_act(vtl_tensor *x, vtl_tensor *running_mean, vtl_tensor *running_var,
                                  vtl_tensor *weight, vtl_tensor *bias, bool training, double momentum, double eps,
                                  vtl_tensor *add, vtl_activation act, vtl_tensor **save_mean, vtl_tensor **save_invstd) {
  static const char op[] = "batch_norm";
  if (save_mean) *save_mean = NULL;
  if (save_invstd) *save_invstd = NULL;
  if (x && !check_bn_post(op, x, add, act)) return NULL;
  if (x && is_half(x->dtype) && !bn_half_native(x, weight, bias, running_mean)) /* on f32 copies */
    return bn_half_copies(x, running_mean, running_var, weight, bias, training, momentum, eps, add, act, save_mean,
                          save_invstd);
  if (x && is_half(x->dtype) ? !vtl_nn_backend_of(op, x) : !check_input_dev(op, "input", x)) return NULL;
  if (x->ndim < 2)
    return vtl_error_set(VTL_ERR_ARG, "%s: input must have at least 2 dims (N, C, ...), got shape %s", op,
                         shape_of(x).s), NULL;
  int64_t N = x->shape[0], C = x->shape[1], S = prod(x->shape, 2, x->ndim);
  if ((running_mean == NULL) != (running_var == NULL))
    return vtl_error_set(VTL_ERR_ARG, "%s: running_mean and running_var must be given together", op), NULL;
  vtl_dtype pdt = bn_param_dtype(x);
  if (!check_vec_dt(op, "running_mean", running_mean, C, "channels", pdt, x) ||
      !check_vec_dt(op, "running_var", running_var, C, "channels", pdt, x) ||
      !check_vec_dt(op, "weight", weight, C, "channels", pdt, x) || !check_vec_dt(op, "bias", bias, C, "channels", pdt, x))
    return NULL;
  if (!training && !running_mean)
    return vtl_error_set(VTL_ERR_ARG, "%s: running_mean and running_var are required in evaluation mode "
                         "(training = false)", op), NULL;
  if (training && N * S <= 1)
    return vtl_error_set(VTL_ERR_ARG, "%s: expected more than 1 value per channel when training, got input of "
                         "shape %s", op, shape_of(x).s), NULL;
  if (!(eps >= 0)) return vtl_error_set(VTL_ERR_ARG, "%s: eps must be non-negative, got %g", op, eps), NULL;
  if (training && running_mean &&
      (vtl_ag_check_inplace(running_mean, op) != VTL_OK || vtl_ag_check_inplace(running_var, op) != VTL_OK))
    return NULL;

  bool ok = true;
  vtl_tensor *xc = dense_as(x, x, &ok), *wc = contig_opt(weight, &ok), *bc = contig_opt(bias, &ok);
  vtl_tensor *ac = dense_as(add, x, &ok);
  vtl_tensor *out = ok ? new_as(x) : NULL, *mean = out ? new_stats(C, x) : NULL, *invstd = mean ? new_stats(C, x) : NULL;
  const vtl_nn_backend *nn = nn_of(x);
  double cmin, cmax;
  bn_bounds(act, &cmin, &cmax);
  bn_dims(x, &N, &C, &S);
  if (!invstd ||
      nn->batch_norm_stats(xc, N, C, S, training, momentum, eps, running_mean, running_var, mean, invstd) != VTL_OK ||
      nn->batch_norm_forward(xc, out, N, C, S, mean, invstd, wc, bc, ac, cmin, cmax) != VTL_OK) {
    vtl_tensor *ts[7] = {xc, wc, bc, ac, out, mean, invstd};
    release_all(ts, 7);
    return NULL;
  }
  vtl_tensor *tmp[4] = {xc, wc, bc, ac};
  release_all(tmp, 4);
  if (save_mean) *save_mean = mean;
  else vtl_tensor_release(mean);
  if (save_invstd) *save_invstd = invstd;
  else vtl_tensor_release(invstd);
  return out;
}

vtl_tensor *vtl_op_batch_norm(vtl_tensor *x, vtl_tensor *running_mean, vtl_tensor *running_var, vtl_tensor *weight,
                              vtl_tensor *bias, bool training, double momentum, double eps, vtl_tensor **save_mean,
                              vtl_tensor **save_invstd) {
  return vtl_op_batch_norm_act(x, running_mean, running_var, weight, bias, training, momentum, eps, NULL,
                               VTL_ACT_COUNT, save_mean, save_invstd);
}

static bool check_stats(const char *op, const char *what, const vtl_tensor *t, int64_t n, const vtl_tensor *x) {
  if (!t || t->dtype != VTL_F64 || t->ndim != 1 || t->shape[0] != n || !vtl_tensor_is_contiguous(t))
    return vtl_error_set(VTL_ERR_ARG, "%s: %s must be a contiguous f64 tensor of shape {%lld}, as the forward returns "
                         "it", op, what, (long long)n), false;
  return on_device_of(op, t, x);
}

/* the backward of bn_half_copies: on f32 copies, each gradient rounded to its input's dtype */
static vtl_status bn_half_backward_copies(vtl_tensor *gout, vtl_tensor *x, vtl_tensor *weight, vtl_tensor *mean,
                                          vtl_tensor *invstd, bool training, vtl_tensor **gx, vtl_tensor **gweight,
                                          vtl_tensor **gbias) {
  vtl_tensor *in[3] = {gout, x, weight}, *f[3] = {NULL};
  bool ok = true;
  for (int i = 0; i < 3 && ok; i++)
    if (in[i] && !(f[i] = vtl_op_to_dtype(in[i], is_half(in[i]->dtype) ? VTL_F32 : in[i]->dtype))) ok = false;
  vtl_tensor *r[3] = {NULL};
  vtl_status st = ok ? vtl_op_batch_norm_backward(f[0], f[1], f[2], mean, invstd, training, gx ? &r[0] : NULL,
                                                  gweight ? &r[1] : NULL, gbias ? &r[2] : NULL)
                     : vtl_error_status();
  release_all(f, 3);
  vtl_dtype want[3] = {x->dtype, weight ? weight->dtype : x->dtype, weight ? weight->dtype : x->dtype};
  vtl_tensor **outs[3] = {gx, gweight, gbias};
  for (int i = 0; i < 3; i++) {
    if (!r[i]) continue;
    vtl_tensor *c = st == VTL_OK ? vtl_op_to_dtype(r[i], want[i]) : NULL;
    vtl_tensor_release(r[i]);
    if (st == VTL_OK && !c) st = vtl_error_status();
    r[i] = c;
  }
  for (int i = 0; i < 3; i++) {
    if (st == VTL_OK && outs[i]) *outs[i] = r[i];
    else vtl_tensor_release(r[i]);
  }
  return st;
}

/* The backward of batch_norm and, with y (its output after the fused activation act, relu or
   relu6), of the activation too: gmask (optional) gets the activation's gradient, the residual
   sum's. The device masks the gradient in its sums pass when that pass runs anyway (training,
   or the parameters' gradients wanted); otherwise the activation's backward runs first. */
static vtl_status bn_backward(vtl_tensor *gout, vtl_tensor *x, vtl_tensor *weight, vtl_tensor *mean,
                              vtl_tensor *invstd, bool training, vtl_tensor *y, vtl_activation act, vtl_tensor **gx,
                              vtl_tensor **gweight, vtl_tensor **gbias, vtl_tensor **gmask) {
  static const char op[] = "batch_norm_backward";
  if (gx) *gx = NULL;
  if (gweight) *gweight = NULL;
  if (gbias) *gbias = NULL;
  if (gmask) *gmask = NULL;
  bool half_copies = x && is_half(x->dtype) && !bn_half_native(x, weight, NULL, NULL);
  if (y && (half_copies || !(training || gweight || gbias))) { /* the activation's backward, then batch norm's */
    vtl_tensor *g = vtl_op_activation_backward(act, gout, y, NULL);
    if (!g) return vtl_error_status();
    vtl_status st = bn_backward(g, x, weight, mean, invstd, training, NULL, act, gx, gweight, gbias, NULL);
    if (st == VTL_OK && gmask) *gmask = g;
    else vtl_tensor_release(g);
    return st;
  }
  if (half_copies) return bn_half_backward_copies(gout, x, weight, mean, invstd, training, gx, gweight, gbias);
  if (x && is_half(x->dtype) ? !vtl_nn_backend_of(op, x) : !check_input_dev(op, "input", x)) return vtl_error_status();
  if (x->ndim < 2)
    return vtl_error_set(VTL_ERR_ARG, "%s: input must have at least 2 dims (N, C, ...), got shape %s", op, shape_of(x).s);
  int64_t N = x->shape[0], C = x->shape[1], S = prod(x->shape, 2, x->ndim);
  if (!check_gout(op, gout, x, "input") || !check_vec_dt(op, "weight", weight, C, "channels", bn_param_dtype(x), x) ||
      !check_stats(op, "mean", mean, C, x) || !check_stats(op, "invstd", invstd, C, x) ||
      (y && !check_gout(op, y, x, "input")))
    return vtl_error_status();
  bool ok = true;
  vtl_tensor *gc = dense_as(gout, x, &ok), *xc = dense_as(x, x, &ok), *wc = contig_opt(weight, &ok);
  vtl_tensor *yc = dense_as(y, x, &ok), *gm = ok && y ? new_as(x) : NULL;
  int64_t cshape[1] = {C};
  vtl_tensor *dx = ok && gx ? new_as(x) : NULL;
  bn_dims(x, &N, &C, &S);
  vtl_dtype pdt = bn_param_dtype(x); /* the parameters' gradients */
  vtl_tensor *dw = ok && gweight ? vtl_tensor_empty(cshape, 1, pdt, vtl_tensor_device(x)) : NULL;
  vtl_tensor *db = ok && gbias ? vtl_tensor_empty(cshape, 1, pdt, vtl_tensor_device(x)) : NULL;
  vtl_tensor *all[8] = {gc, xc, wc, yc, dx, dw, db, gm};
  double cmin, cmax;
  bn_bounds(act, &cmin, &cmax);
  if (!ok || (gx && !dx) || (gweight && !dw) || (gbias && !db) || (y && !gm) ||
      nn_of(x)->batch_norm_backward(gc, xc, N, C, S, mean, invstd, wc, training, dx, dw, db, yc, cmin, cmax, gm) !=
          VTL_OK) {
    vtl_status st = vtl_error_status();
    release_all(all, 8);
    return st;
  }
  release_all(all, 4);
  if (gx) *gx = dx;
  if (gweight) *gweight = dw;
  if (gbias) *gbias = db;
  if (gmask) *gmask = gm;
  else vtl_tensor_release(gm);
  return VTL_OK;
}

vtl_status vtl_op_batch_norm_backward(vtl_tensor *gout, vtl_tensor *x, vtl_tensor *weight, vtl_tensor *mean,
                                      vtl_tensor *invstd, bool training, vtl_tensor **gx, vtl_tensor **gweight,
                                      vtl_tensor **gbias) {
  return bn_backward(gout, x, weight, mean, invstd, training, NULL, VTL_ACT_COUNT, gx, gweight, gbias, NULL);
}

/* saved: x, weight, mean, invstd and, with an activation, the output; i[0]: training, i[1]: the
   activation (VTL_ACT_COUNT: none). Inputs x, weight, bias and the added tensor. The activation's
   gradient comes from the output: relu's where it is above 0, relu6's (its input's rule) where
   it is inside (0, 6), which is where its input was. */
static vtl_status batch_norm_bw(vtl_node *nd, vtl_tensor *gout, vtl_tensor **gin) {
  vtl_tensor *x, *w, *mean, *invstd, *out = NULL;
  vtl_activation act = (vtl_activation)nd->i[1];
  if (!saved(nd, 0, &x) || !saved(nd, 1, &w) || !saved(nd, 2, &mean) || !saved(nd, 3, &invstd) ||
      (act != VTL_ACT_COUNT && !saved(nd, 4, &out)))
    return vtl_error_status();
  bool to_add = nd->ninputs > 3 && nd->needs[3];
  vtl_tensor *gm = NULL;
  vtl_status st = bn_backward(gout, x, w, mean, invstd, nd->i[0] != 0, out, act, nd->needs[0] ? &gin[0] : NULL,
                              nd->needs[1] ? &gin[1] : NULL, nd->needs[2] ? &gin[2] : NULL, out && to_add ? &gm : NULL);
  if (st == VTL_OK && to_add) gin[3] = out ? gm : vtl_tensor_retain(gout);
  return st;
}

static vtl_tensor *fn_batch_norm(vtl_tensor *x, vtl_tensor *running_mean, vtl_tensor *running_var, vtl_tensor *weight,
                                 vtl_tensor *bias, bool training, double momentum, double eps, vtl_tensor *add,
                                 vtl_activation act) {
  vtl_tensor *mean, *invstd;
  vtl_tensor *out = vtl_op_batch_norm_act(x, running_mean, running_var, weight, bias, training, momentum, eps, add, act,
                                          &mean, &invstd);
  if (!out) return NULL;
  bool post = add || act != VTL_ACT_COUNT;
  vtl_tensor *ins[4] = {x, weight, bias, add};
  int nin = add ? 4 : 3;
  if (vtl_ag_needs(ins, nin)) {
    vtl_node *nd = vtl_ag_node(post ? "BatchNormActBackward" : "BatchNormBackward", batch_norm_bw, ins, nin);
    if (nd) {
      vtl_ag_save(nd, x);
      vtl_ag_save(nd, weight);
      vtl_ag_save(nd, mean);
      vtl_ag_save(nd, invstd);
      if (act != VTL_ACT_COUNT) vtl_ag_save(nd, out);
      nd->i[0] = training;
      nd->i[1] = act;
      out = attach(out, nd);
    } else {
      vtl_tensor_release(out);
      out = NULL;
    }
  }
  vtl_tensor_release(mean);
  vtl_tensor_release(invstd);
  return out;
}

/* ---- layer norm ---- */

vtl_tensor *vtl_op_layer_norm(vtl_tensor *x, const int64_t *normalized_shape, int nnorm, vtl_tensor *weight,
                              vtl_tensor *bias, double eps, vtl_tensor **save_mean, vtl_tensor **save_rstd) {
  static const char op[] = "layer_norm";
  if (save_mean) *save_mean = NULL;
  if (save_rstd) *save_rstd = NULL;
  if (!check_input_dev(op, "input", x)) return NULL;
  if (nnorm < 1 || nnorm > VTL_MAX_DIMS)
    return vtl_error_set(VTL_ERR_ARG, "%s: normalized_shape must have 1 to %d dims, got %d", op, VTL_MAX_DIMS, nnorm), NULL;
  bool match = nnorm <= x->ndim;
  for (int d = 0; match && d < nnorm; d++) match = x->shape[x->ndim - nnorm + d] == normalized_shape[d];
  if (!match)
    return vtl_error_set(VTL_ERR_ARG, "%s: normalized_shape %s does not match the last dims of input of shape %s", op,
                         dims_str(normalized_shape, nnorm).s, shape_of(x).s), NULL;
  const char *what[2] = {"weight", "bias"};
  vtl_tensor *wb[2] = {weight, bias};
  for (int k = 0; k < 2; k++) {
    if (!wb[k]) continue;
    bool same = wb[k]->ndim == nnorm;
    for (int d = 0; same && d < nnorm; d++) same = wb[k]->shape[d] == normalized_shape[d];
    if (!same)
      return vtl_error_set(VTL_ERR_ARG, "%s: %s of shape %s does not match normalized_shape %s", op, what[k],
                           shape_of(wb[k]).s, dims_str(normalized_shape, nnorm).s), NULL;
    if (!check_like(op, what[k], wb[k], x)) return NULL;
  }
  if (!(eps >= 0)) return vtl_error_set(VTL_ERR_ARG, "%s: eps must be non-negative, got %g", op, eps), NULL;
  int64_t D = prod(x->shape, x->ndim - nnorm, x->ndim), M = prod(x->shape, 0, x->ndim - nnorm);
  bool ok = true;
  vtl_tensor *xc = contig_opt(x, &ok), *wc = contig_opt(weight, &ok), *bc = contig_opt(bias, &ok);
  vtl_tensor *out = ok ? new_like(x) : NULL, *mean = out ? new_stats(M, x) : NULL, *rstd = mean ? new_stats(M, x) : NULL;
  if (!rstd || nn_of(x)->layer_norm_forward(xc, out, M, D, wc, bc, eps, mean, rstd) != VTL_OK) {
    vtl_tensor *ts[6] = {xc, wc, bc, out, mean, rstd};
    release_all(ts, 6);
    return NULL;
  }
  vtl_tensor *tmp[3] = {xc, wc, bc};
  release_all(tmp, 3);
  if (save_mean) *save_mean = mean;
  else vtl_tensor_release(mean);
  if (save_rstd) *save_rstd = rstd;
  else vtl_tensor_release(rstd);
  return out;
}

vtl_status vtl_op_layer_norm_backward(vtl_tensor *gout, vtl_tensor *x, int nnorm, vtl_tensor *weight, vtl_tensor *mean,
                                      vtl_tensor *rstd, vtl_tensor **gx, vtl_tensor **gweight, vtl_tensor **gbias) {
  static const char op[] = "layer_norm_backward";
  if (gx) *gx = NULL;
  if (gweight) *gweight = NULL;
  if (gbias) *gbias = NULL;
  if (!check_input_dev(op, "input", x)) return vtl_error_status();
  if (nnorm < 1 || nnorm > x->ndim)
    return vtl_error_set(VTL_ERR_ARG, "%s: %d normalized dims for an input of shape %s", op, nnorm, shape_of(x).s);
  int64_t D = prod(x->shape, x->ndim - nnorm, x->ndim), M = prod(x->shape, 0, x->ndim - nnorm);
  const int64_t *ns = x->shape + x->ndim - nnorm;
  if (!check_gout(op, gout, x, "input") || !check_stats(op, "mean", mean, M, x) || !check_stats(op, "rstd", rstd, M, x))
    return vtl_error_status();
  if (weight) {
    bool same = weight->ndim == nnorm;
    for (int d = 0; same && d < nnorm; d++) same = weight->shape[d] == ns[d];
    if (!same)
      return vtl_error_set(VTL_ERR_ARG, "%s: weight of shape %s does not match normalized_shape %s", op,
                           shape_of(weight).s, dims_str(ns, nnorm).s);
    if (!check_like(op, "weight", weight, x)) return vtl_error_status();
  }
  bool ok = true;
  vtl_tensor *gc = contig_opt(gout, &ok), *xc = contig_opt(x, &ok), *wc = contig_opt(weight, &ok);
  vtl_tensor *dx = ok && gx ? new_like(x) : NULL;
  vtl_tensor *dw = ok && gweight ? vtl_tensor_empty(ns, nnorm, x->dtype, vtl_tensor_device(x)) : NULL;
  vtl_tensor *db = ok && gbias ? vtl_tensor_empty(ns, nnorm, x->dtype, vtl_tensor_device(x)) : NULL;
  vtl_tensor *all[6] = {gc, xc, wc, dx, dw, db};
  if (!ok || (gx && !dx) || (gweight && !dw) || (gbias && !db)) {
    vtl_status st = vtl_error_status();
    release_all(all, 6);
    return st;
  }
  vtl_status st = nn_of(x)->layer_norm_backward(gc, xc, M, D, wc, mean, rstd, dx, dw, db);
  if (st != VTL_OK) {
    release_all(all, 6);
    return st;
  }
  release_all(all, 3);
  if (gx) *gx = dx;
  if (gweight) *gweight = dw;
  if (gbias) *gbias = db;
  return VTL_OK;
}

/* saved: x, weight, mean, rstd; i[0]: nnorm */
static vtl_status layer_norm_bw(vtl_node *nd, vtl_tensor *gout, vtl_tensor **gin) {
  vtl_tensor *x, *w, *mean, *rstd;
  if (!saved(nd, 0, &x) || !saved(nd, 1, &w) || !saved(nd, 2, &mean) || !saved(nd, 3, &rstd)) return vtl_error_status();
  return vtl_op_layer_norm_backward(gout, x, (int)nd->i[0], w, mean, rstd, nd->needs[0] ? &gin[0] : NULL,
                                    nd->needs[1] ? &gin[1] : NULL, nd->needs[2] ? &gin[2] : NULL);
}

static vtl_tensor *fn_layer_norm(vtl_tensor *x, const int64_t *normalized_shape, int nnorm, vtl_tensor *weight,
                              vtl_tensor *bias, double eps) {
  vtl_tensor *mean, *rstd;
  vtl_tensor *out = vtl_op_layer_norm(x, normalized_shape, nnorm, weight, bias, eps, &mean, &rstd);
  if (!out) return NULL;
  vtl_tensor *ins[3] = {x, weight, bias};
  if (vtl_ag_needs(ins, 3)) {
    vtl_node *nd = vtl_ag_node("LayerNormBackward", layer_norm_bw, ins, 3);
    if (nd) {
      vtl_ag_save(nd, x);
      vtl_ag_save(nd, weight);
      vtl_ag_save(nd, mean);
      vtl_ag_save(nd, rstd);
      nd->i[0] = nnorm;
      out = attach(out, nd);
    } else {
      vtl_tensor_release(out);
      out = NULL;
    }
  }
  vtl_tensor_release(mean);
  vtl_tensor_release(rstd);
  return out;
}

/* ---- group norm ---- */

static bool check_group_input(const char *op, const vtl_tensor *x, int64_t groups) {
  if (!check_input_dev(op, "input", x)) return false;
  if (!nn_of(x)->group_norm_forward) {
    char dev[32];
    vtl_device_format(vtl_tensor_device(x), dev, sizeof dev);
    return vtl_error_set(VTL_ERR_ARG, "%s: no kernel on %s", op, dev), false;
  }
  if (x->ndim < 2)
    return vtl_error_set(VTL_ERR_ARG, "%s: input must have at least 2 dims (N, C, ...), got shape %s", op,
                         shape_of(x).s), false;
  if (groups < 1) return vtl_error_set(VTL_ERR_ARG, "%s: num_groups must be positive, got %lld", op, (long long)groups), false;
  if (x->shape[1] % groups)
    return vtl_error_set(VTL_ERR_ARG, "%s: num_channels %lld of input of shape %s is not divisible by num_groups %lld",
                         op, (long long)x->shape[1], shape_of(x).s, (long long)groups), false;
  return true;
}

vtl_tensor *vtl_op_group_norm(vtl_tensor *x, int64_t groups, vtl_tensor *weight, vtl_tensor *bias, double eps,
                              vtl_tensor **save_mean, vtl_tensor **save_rstd) {
  static const char op[] = "group_norm";
  if (save_mean) *save_mean = NULL;
  if (save_rstd) *save_rstd = NULL;
  if (!check_group_input(op, x, groups)) return NULL;
  int64_t N = x->shape[0], C = x->shape[1], S = prod(x->shape, 2, x->ndim);
  if (!check_vec(op, "weight", weight, C, "channels", x) || !check_vec(op, "bias", bias, C, "channels", x)) return NULL;
  if (!(eps >= 0)) return vtl_error_set(VTL_ERR_ARG, "%s: eps must be non-negative, got %g", op, eps), NULL;
  bool ok = true;
  vtl_tensor *xc = contig_opt(x, &ok), *wc = contig_opt(weight, &ok), *bc = contig_opt(bias, &ok);
  vtl_tensor *out = ok ? new_like(x) : NULL;
  vtl_tensor *mean = out ? new_stats(N * groups, x) : NULL, *rstd = mean ? new_stats(N * groups, x) : NULL;
  if (!rstd) {
    vtl_tensor *ts[5] = {xc, wc, bc, out, mean};
    release_all(ts, 5);
    return NULL;
  }
  vtl_status st = nn_of(x)->group_norm_forward(xc, out, N, C, S, groups, wc, bc, eps, mean, rstd);
  vtl_tensor *tmp[3] = {xc, wc, bc};
  release_all(tmp, 3);
  if (st != VTL_OK) {
    vtl_tensor *ts[3] = {out, mean, rstd};
    release_all(ts, 3);
    return NULL;
  }
  if (save_mean) *save_mean = mean;
  else vtl_tensor_release(mean);
  if (save_rstd) *save_rstd = rstd;
  else vtl_tensor_release(rstd);
  return out;
}

vtl_status vtl_op_group_norm_backward(vtl_tensor *gout, vtl_tensor *x, int64_t groups, vtl_tensor *weight,
                                      vtl_tensor *mean, vtl_tensor *rstd, vtl_tensor **gx, vtl_tensor **gweight,
                                      vtl_tensor **gbias) {
  static const char op[] = "group_norm_backward";
  if (gx) *gx = NULL;
  if (gweight) *gweight = NULL;
  if (gbias) *gbias = NULL;
  if (!check_group_input(op, x, groups)) return vtl_error_status();
  int64_t N = x->shape[0], C = x->shape[1], S = prod(x->shape, 2, x->ndim);
  if (!check_gout(op, gout, x, "input") || !check_vec(op, "weight", weight, C, "channels", x) ||
      !check_stats(op, "mean", mean, N * groups, x) || !check_stats(op, "rstd", rstd, N * groups, x))
    return vtl_error_status();
  bool ok = true;
  vtl_tensor *gc = contig_opt(gout, &ok), *xc = contig_opt(x, &ok), *wc = contig_opt(weight, &ok);
  int64_t cshape[1] = {C};
  vtl_tensor *dx = ok && gx ? new_like(x) : NULL;
  vtl_tensor *dw = ok && gweight ? vtl_tensor_empty(cshape, 1, x->dtype, vtl_tensor_device(x)) : NULL;
  vtl_tensor *db = ok && gbias ? vtl_tensor_empty(cshape, 1, x->dtype, vtl_tensor_device(x)) : NULL;
  vtl_tensor *all[6] = {gc, xc, wc, dx, dw, db};
  vtl_status st = VTL_OK;
  if (!ok || (gx && !dx) || (gweight && !dw) || (gbias && !db)) st = vtl_error_status();
  else
    st = nn_of(x)->group_norm_backward(gc, xc, N, C, S, groups, wc, mean, rstd, dx, dw, db);
  if (st != VTL_OK) {
    release_all(all, 6);
    return st;
  }
  release_all(all, 3);
  if (gx) *gx = dx;
  if (gweight) *gweight = dw;
  if (gbias) *gbias = db;
  return VTL_OK;
}

/* saved: x, weight, mean, rstd; i[0]: groups */
static vtl_status group_norm_bw(vtl_node *nd, vtl_tensor *gout, vtl_tensor **gin) {
  vtl_tensor *x, *w, *mean, *rstd;
  if (!saved(nd, 0, &x) || !saved(nd, 1, &w) || !saved(nd, 2, &mean) || !saved(nd, 3, &rstd)) return vtl_error_status();
  return vtl_op_group_norm_backward(gout, x, nd->i[0], w, mean, rstd, nd->needs[0] ? &gin[0] : NULL,
                                    nd->needs[1] ? &gin[1] : NULL, nd->needs[2] ? &gin[2] : NULL);
}

static vtl_tensor *fn_group_norm(vtl_tensor *x, int64_t groups, vtl_tensor *weight, vtl_tensor *bias, double eps) {
  vtl_tensor *mean, *rstd;
  vtl_tensor *out = vtl_op_group_norm(x, groups, weight, bias, eps, &mean, &rstd);
  if (!out) return NULL;
  vtl_tensor *ins[3] = {x, weight, bias};
  if (vtl_ag_needs(ins, 3)) {
    vtl_node *nd = vtl_ag_node("GroupNormBackward", group_norm_bw, ins, 3);
    if (nd) {
      vtl_ag_save(nd, x);
      vtl_ag_save(nd, weight);
      vtl_ag_save(nd, mean);
      vtl_ag_save(nd, rstd);
      nd->i[0] = groups;
      out = attach(out, nd);
    } else {
      vtl_tensor_release(out);
      out = NULL;
    }
  }
  vtl_tensor_release(mean);
  vtl_tensor_release(rstd);
  return out;
}

/* ---- activations ---- */

static const char *act_names[VTL_ACT_COUNT] = {
  "relu", "relu6", "leaky_relu", "gelu", "gelu", "silu", "hardswish", "hardsigmoid", "softplus", "elu", "sigmoid", "tanh"};
static const char *act_nodes[VTL_ACT_COUNT] = {
  "ReluBackward", "Relu6Backward", "LeakyReluBackward", "GeluBackward", "GeluBackward", "SiluBackward",
  "HardswishBackward", "HardsigmoidBackward", "SoftplusBackward", "EluBackward", "SigmoidBackward", "TanhBackward"};

const char *vtl_activation_name(vtl_activation act) {
  return (unsigned)act < VTL_ACT_COUNT ? act_names[act] : "activation";
}

bool vtl_activation_uses_output(vtl_activation act) {
  return act == VTL_ACT_RELU || act == VTL_ACT_SIGMOID || act == VTL_ACT_TANH || act == VTL_ACT_ELU;
}

/* params with PyTorch's defaults filled in */
static void act_params(vtl_activation act, const double *params, double p[2]) {
  p[0] = act == VTL_ACT_LEAKY_RELU ? 0.01 : 1;
  p[1] = 20;
  if (!params) return;
  if (act == VTL_ACT_LEAKY_RELU || act == VTL_ACT_ELU) p[0] = params[0];
  if (act == VTL_ACT_SOFTPLUS) { p[0] = params[0]; p[1] = params[1]; }
}

static bool is_half(vtl_dtype d) { return d == VTL_F16 || d == VTL_BF16; }

/* takes r (f32) and returns it rounded to dt */
static vtl_tensor *round_to(vtl_tensor *r, vtl_dtype dt) {
  if (!r) return NULL;
  vtl_tensor *h = vtl_op_to_dtype(r, dt);
  vtl_tensor_release(r);
  return h;
}

/* a half tensor whose device's activation kernels take half data directly */
static bool half_native(const vtl_tensor *t) {
  if (!t || !is_half(t->dtype)) return false;
  const vtl_backend *be = vtl_backend_of_type(vtl_tensor_device(t).type);
  return be && be->nn && be->nn->act_half;
}

/* act(x) into a new tensor, or (in_place) into x itself when its memory is dense, else computed
   aside and copied in; returns the result (x retained when in place) */
static vtl_tensor *act_run(vtl_activation act, vtl_tensor *x, const double *params, bool in_place) {
  if ((unsigned)act >= VTL_ACT_COUNT) return vtl_error_set(VTL_ERR_ARG, "activation: unknown activation %d", (int)act), NULL;
  if (is_half(x->dtype) && !half_native(x)) { /* computed in f32, rounded once */
    vtl_tensor *f = vtl_op_to_dtype(x, VTL_F32);
    vtl_tensor *r = f ? round_to(act_run(act, f, params, false), x->dtype) : NULL;
    vtl_tensor_release(f);
    if (r && in_place) {
      vtl_status st = vtl_op_copy_(x, r);
      vtl_tensor_release(r);
      r = st == VTL_OK ? vtl_tensor_retain(x) : NULL;
    }
    return r;
  }
  const char *op = act_names[act];
  if (is_half(x->dtype) ? !vtl_nn_backend_of(op, x) : !check_input_dev(op, "input", x)) return NULL;
  double p[2];
  act_params(act, params, p);
  if (act == VTL_ACT_SOFTPLUS && p[0] == 0) return vtl_error_set(VTL_ERR_ARG, "softplus: beta must not be 0"), NULL;
  bool ok = true;
  vtl_tensor *xc = dense_as(x, x, &ok);
  vtl_tensor *out = !xc ? NULL : in_place && xc == x ? vtl_tensor_retain(x) : new_as(x);
  if (out && nn_of(x)->activation_forward(act, xc, out, p) != VTL_OK) {
    vtl_tensor_release(out);
    out = NULL;
  }
  vtl_tensor_release(xc);
  if (out && in_place && out != x) { /* x not dense: the values copied into its layout */
    vtl_status st = vtl_op_copy_(x, out);
    vtl_tensor_release(out);
    out = st == VTL_OK ? vtl_tensor_retain(x) : NULL;
  }
  return out;
}

vtl_tensor *vtl_op_activation(vtl_activation act, vtl_tensor *x, const double *params) {
  return act_run(act, x, params, false);
}

vtl_status vtl_op_activation_(vtl_activation act, vtl_tensor *x, const double *params) {
  vtl_tensor *r = act_run(act, x, params, true);
  if (!r) return vtl_error_status();
  vtl_tensor_release(r);
  return VTL_OK;
}

vtl_tensor *vtl_op_activation_backward(vtl_activation act, vtl_tensor *gout, vtl_tensor *s, const double *params) {
  if ((unsigned)act >= VTL_ACT_COUNT) return vtl_error_set(VTL_ERR_ARG, "activation: unknown activation %d", (int)act), NULL;
  char op[48];
  snprintf(op, sizeof op, "%s_backward", act_names[act]);
  const char *what = vtl_activation_uses_output(act) ? "output" : "input";
  if (s && gout && is_half(s->dtype) && !half_native(s)) {
    vtl_tensor *sf = vtl_op_to_dtype(s, VTL_F32), *gf = sf ? vtl_op_to_dtype(gout, VTL_F32) : NULL;
    vtl_tensor *r = gf ? round_to(vtl_op_activation_backward(act, gf, sf, params), s->dtype) : NULL;
    vtl_tensor_release(sf);
    vtl_tensor_release(gf);
    return r;
  }
  if ((s && is_half(s->dtype) ? !vtl_nn_backend_of(op, s) : !check_input_dev(op, what, s)) ||
      !check_gout(op, gout, s, what))
    return NULL;
  double p[2];
  act_params(act, params, p);
  bool ok = true;
  vtl_tensor *gc = dense_as(gout, s, &ok), *sc = dense_as(s, s, &ok);
  vtl_tensor *dx = ok ? new_as(s) : NULL;
  if (dx && nn_of(s)->activation_backward(act, gc, sc, dx, p) != VTL_OK) {
    vtl_tensor_release(dx);
    dx = NULL;
  }
  vtl_tensor_release(gc);
  vtl_tensor_release(sc);
  return dx;
}

/* saved: input or output; i[0]: activation; f[0..1]: params */
static vtl_status activation_bw(vtl_node *nd, vtl_tensor *gout, vtl_tensor **gin) {
  vtl_tensor *s;
  if (!saved(nd, 0, &s)) return vtl_error_status();
  if (!nd->needs[0]) return VTL_OK;
  gin[0] = vtl_op_activation_backward((vtl_activation)nd->i[0], gout, s, nd->f);
  return gin[0] ? VTL_OK : vtl_error_status();
}

vtl_tensor *vtl_fn_activation(vtl_activation act, vtl_tensor *x, const double *params) {
  vtl_tensor *out = vtl_op_activation(act, x, params);
  if (!out || !vtl_ag_needs(&x, 1)) return out;
  vtl_node *nd = vtl_ag_node(act_nodes[act], activation_bw, &x, 1);
  if (!nd) { vtl_tensor_release(out); return NULL; }
  vtl_ag_save(nd, vtl_activation_uses_output(act) ? out : x);
  nd->i[0] = act;
  act_params(act, params, nd->f);
  return attach(out, nd);
}

/* ---- softmax ---- */

/* (A, R, B) of x around dim; false with the error set when dim is out of range */
static bool split_dim(const char *op, const vtl_tensor *x, int dim, int64_t *A, int64_t *R, int64_t *B) {
  int n = x->ndim ? x->ndim : 1;
  if (dim < 0 || dim >= n)
    return vtl_error_set(VTL_ERR_ARG, "%s: dim %d out of range for a %d-D tensor", op, dim + 1, x->ndim), false;
  if (!x->ndim) { *A = *R = *B = 1; return true; }
  *A = prod(x->shape, 0, dim);
  *R = x->shape[dim];
  *B = prod(x->shape, dim + 1, x->ndim);
  return true;
}

vtl_tensor *vtl_op_softmax(vtl_tensor *x, int dim, bool logsm) {
  const char *op = logsm ? "log_softmax" : "softmax";
  int64_t A, R, B;
  if (!check_input_dev(op, "input", x) || !split_dim(op, x, dim, &A, &R, &B)) return NULL;
  vtl_tensor *xc = vtl_op_contiguous(x);
  vtl_tensor *out = xc ? new_like(x) : NULL;
  if (out && nn_of(x)->softmax_forward(xc, out, A, R, B, logsm) != VTL_OK) {
    vtl_tensor_release(out);
    out = NULL;
  }
  vtl_tensor_release(xc);
  return out;
}

vtl_tensor *vtl_op_softmax_backward(vtl_tensor *gout, vtl_tensor *y, int dim, bool logsm) {
  const char *op = logsm ? "log_softmax_backward" : "softmax_backward";
  int64_t A, R, B;
  if (!check_input_dev(op, "output", y) || !check_gout(op, gout, y, "output") || !split_dim(op, y, dim, &A, &R, &B))
    return NULL;
  bool ok = true;
  vtl_tensor *gc = contig_opt(gout, &ok), *yc = contig_opt(y, &ok);
  vtl_tensor *dx = ok ? new_like(y) : NULL;
  if (dx && nn_of(y)->softmax_backward(gc, yc, dx, A, R, B, logsm) != VTL_OK) {
    vtl_tensor_release(dx);
    dx = NULL;
  }
  vtl_tensor_release(gc);
  vtl_tensor_release(yc);
  return dx;
}

/* saved: output; i[0]: dim, i[1]: log */
static vtl_status softmax_bw(vtl_node *nd, vtl_tensor *gout, vtl_tensor **gin) {
  vtl_tensor *y;
  if (!saved(nd, 0, &y)) return vtl_error_status();
  if (!nd->needs[0]) return VTL_OK;
  gin[0] = vtl_op_softmax_backward(gout, y, (int)nd->i[0], nd->i[1] != 0);
  return gin[0] ? VTL_OK : vtl_error_status();
}

static vtl_tensor *fn_softmax(vtl_tensor *x, int dim, bool logsm) {
  vtl_tensor *out = vtl_op_softmax(x, dim, logsm);
  if (!out || !vtl_ag_needs(&x, 1)) return out;
  vtl_node *nd = vtl_ag_node(logsm ? "LogSoftmaxBackward" : "SoftmaxBackward", softmax_bw, &x, 1);
  if (!nd) { vtl_tensor_release(out); return NULL; }
  vtl_ag_save(nd, out);
  nd->i[0] = dim;
  nd->i[1] = logsm;
  return attach(out, nd);
}

/* ---- cross entropy and nll loss ---- */

/* Logits or log-probabilities viewed as (N, C, S), with their target and weight made
   contiguous (class targets as i64). */
typedef struct {
  int64_t N, C, S;
  vtl_tensor *x, *target, *prob, *w; /* owned; target (indices) or prob is NULL */
  int loss_ndim;                     /* shape of the unreduced loss */
  int64_t loss_shape[VTL_MAX_DIMS];
} ce_args;

static void ce_free(ce_args *a) {
  vtl_tensor *ts[4] = {a->x, a->target, a->prob, a->w};
  release_all(ts, 4);
}

static bool check_reduction(const char *op, vtl_reduction red, bool batchmean_ok) {
  if (red == VTL_REDUCTION_NONE || red == VTL_REDUCTION_MEAN || red == VTL_REDUCTION_SUM ||
      (batchmean_ok && red == VTL_REDUCTION_BATCHMEAN))
    return true;
  return vtl_error_set(VTL_ERR_ARG, "%s: reduction must be 'mean', 'sum' or 'none'%s", op,
                       batchmean_ok ? " or 'batchmean'" : ""), false;
}

static bool ce_prepare(const char *op, vtl_tensor *x, vtl_tensor *target, vtl_tensor *weight, int64_t ignore_index,
                       double smoothing, vtl_reduction red, bool allow_prob, ce_args *a) {
  memset(a, 0, sizeof *a);
  /* cross entropy runs on every backend with nn kernels, nll_loss on the CPU */
  if (!check_input_on(op, "input", x, allow_prob) || !check_reduction(op, red, false)) return false;
  if (!target) return vtl_error_set(VTL_ERR_ARG, "%s: target is missing", op), false;
  if (!on_device_of(op, target, x)) return false;
  if (x->ndim < 1)
    return vtl_error_set(VTL_ERR_ARG, "%s: input must be (N, C), (N, C, d1, ...) or (C), got shape %s", op,
                         shape_of(x).s), false;
  bool batched = x->ndim >= 2;
  a->N = batched ? x->shape[0] : 1;
  a->C = x->shape[batched ? 1 : 0];
  a->S = batched ? prod(x->shape, 2, x->ndim) : 1;
  if (batched) {
    a->loss_ndim = x->ndim - 1;
    a->loss_shape[0] = x->shape[0];
    for (int d = 2; d < x->ndim; d++) a->loss_shape[d - 1] = x->shape[d];
  }
  if (!(smoothing >= 0 && smoothing <= 1))
    return vtl_error_set(VTL_ERR_ARG, "%s: label_smoothing must be in [0, 1], got %g", op, smoothing), false;
  if (!check_vec(op, "weight", weight, a->C, "classes", x)) return false;
  if (vtl_dtype_is_float(target->dtype)) {
    if (!allow_prob)
      return vtl_error_set(VTL_ERR_ARG, "%s: target must hold class indices (an integer tensor), got %s", op,
                           vtl_dtype_name(target->dtype)), false;
    if (!same_shape(target, x))
      return vtl_error_set(VTL_ERR_ARG, "%s: probability target of shape %s does not match input of shape %s", op,
                           shape_of(target).s, shape_of(x).s), false;
    if (!check_like(op, "probability target", target, x)) return false;
  } else {
    if (target->dtype == VTL_BOOL)
      return vtl_error_set(VTL_ERR_ARG, "%s: target must hold class indices (i64) or probabilities (float), got bool",
                           op), false;
    bool match = target->ndim == a->loss_ndim;
    if (target->ndim >= 1 && batched && target->shape[0] != a->N)
      return vtl_error_set(VTL_ERR_ARG, "%s: target of shape %s does not match input batch %lld", op,
                           shape_of(target).s, (long long)a->N), false;
    for (int d = 0; match && d < a->loss_ndim; d++) match = target->shape[d] == a->loss_shape[d];
    if (!match)
      return vtl_error_set(VTL_ERR_ARG, "%s: target of shape %s does not match input of shape %s (expected target "
                           "shape %s)", op, shape_of(target).s, shape_of(x).s,
                           dims_str(a->loss_shape, a->loss_ndim).s), false;
  }
  bool ok = true;
  a->x = contig_opt(x, &ok);
  a->w = contig_opt(weight, &ok);
  if (vtl_dtype_is_float(target->dtype)) {
    a->prob = contig_opt(target, &ok);
  } else if (ok) {
    vtl_tensor *t = vtl_op_to_dtype(target, VTL_I64);
    a->target = contig_opt(t, &ok);
    vtl_tensor_release(t);
  }
  if (!ok) { ce_free(a); return false; }
  /* device targets are checked by the device's kernels, without a copy back */
  if (a->target && vtl_tensor_device(a->target).type == VTL_CPU) {
    const int64_t *t = vtl_tensor_data(a->target);
    int64_t bad = vtl_cpu_check_targets(t, a->N * a->S, a->C, ignore_index);
    if (bad >= 0) {
      vtl_error_set(VTL_ERR_ARG, "%s: target %lld out of range for %lld classes (valid: 1..%lld, or ignore_index %lld)",
                    op, (long long)t[bad], (long long)a->C, (long long)a->C, (long long)ignore_index);
      ce_free(a);
      return false;
    }
  }
  return true;
}

/* The divisor of the mean: summed weights of non-ignored targets, or the number of rows. */
static double ce_denominator(const ce_args *a, vtl_dtype dt, int64_t ignore_index) {
  if (!a->target) return (double)(a->N * a->S);
  return vtl_cpu_target_weight_sum(dt, vtl_tensor_data(a->target), a->N * a->S, data_or_null(a->w), ignore_index);
}

/* A loss result: the rows tensor for 'none' (already filled), or a 0-d tensor of total / div. */
static vtl_tensor *reduced(vtl_dtype dt, vtl_reduction red, double total, double div) {
  if (red == VTL_REDUCTION_SUM) return new_scalar(dt, total);
  return new_scalar(dt, total / div);
}

static vtl_tensor *ce_or_nll(bool ce, vtl_tensor *x, vtl_tensor *target, vtl_tensor *weight, int64_t ignore_index,
                             double smoothing, vtl_reduction red) {
  const char *op = ce ? "cross_entropy" : "nll_loss";
  ce_args a;
  if (!ce_prepare(op, x, target, weight, ignore_index, smoothing, red, ce, &a)) return NULL;
  vtl_dtype dt = x->dtype;
  if (ce) { /* the backend writes the row losses or the reduced 0-d result */
    vtl_tensor *out = red == VTL_REDUCTION_NONE ? vtl_tensor_empty(a.loss_shape, a.loss_ndim, dt, vtl_tensor_device(x))
                                                : vtl_tensor_empty(NULL, 0, dt, vtl_tensor_device(x));
    if (out && nn_of(x)->cross_entropy_forward(a.x, a.N, a.C, a.S, a.target, a.prob, a.w, ignore_index, smoothing, red,
                                               out) != VTL_OK) {
      vtl_tensor_release(out);
      out = NULL;
    }
    ce_free(&a);
    return out;
  }
  vtl_tensor *rows = NULL;
  if (red == VTL_REDUCTION_NONE) {
    rows = vtl_tensor_empty(a.loss_shape, a.loss_ndim, dt, vtl_tensor_device(x));
    if (!rows) { ce_free(&a); return NULL; }
  }
  void *lp = rows ? vtl_tensor_data(rows) : NULL;
  const int64_t *t = a.target ? vtl_tensor_data(a.target) : NULL;
  double total = vtl_cpu_nll_loss_forward(dt, vtl_tensor_data(a.x), a.N, a.C, a.S, t, data_or_null(a.w), ignore_index, lp);
  vtl_tensor *out = rows ? rows : reduced(dt, red, total, red == VTL_REDUCTION_MEAN ? ce_denominator(&a, dt, ignore_index) : 1);
  ce_free(&a);
  return out;
}

vtl_tensor *vtl_op_cross_entropy(vtl_tensor *logits, vtl_tensor *target, vtl_tensor *weight, int64_t ignore_index,
                                 double label_smoothing, vtl_reduction red) {
  return ce_or_nll(true, logits, target, weight, ignore_index, label_smoothing, red);
}

vtl_tensor *vtl_op_nll_loss(vtl_tensor *logp, vtl_tensor *target, vtl_tensor *weight, int64_t ignore_index,
                            vtl_reduction red) {
  return ce_or_nll(false, logp, target, weight, ignore_index, 0, red);
}

/* The upstream gradient of a loss: per-row contiguous tensor (*grow) for 'none', otherwise
   the scalar divided by the reduction's divisor (*gscale). */
static bool loss_gout(const char *op, vtl_tensor *gout, const vtl_tensor *x, vtl_reduction red, const int64_t *lshape,
                      int lnd, double div, vtl_tensor **grow, double *gscale) {
  *grow = NULL;
  *gscale = 0;
  if (!gout) return vtl_error_set(VTL_ERR_ARG, "%s: gout is missing", op), false;
  if (!check_like(op, "gout", gout, x)) return false;
  if (red == VTL_REDUCTION_NONE) {
    bool match = gout->ndim == lnd;
    for (int d = 0; match && d < lnd; d++) match = gout->shape[d] == lshape[d];
    if (!match)
      return vtl_error_set(VTL_ERR_ARG, "%s: gout of shape %s does not match the loss of shape %s", op, shape_of(gout).s,
                           dims_str(lshape, lnd).s), false;
    *grow = vtl_op_contiguous(gout);
    return *grow != NULL;
  }
  if (vtl_tensor_numel(gout) != 1)
    return vtl_error_set(VTL_ERR_ARG, "%s: gout of shape %s does not match the reduced loss (one element)", op,
                         shape_of(gout).s), false;
  /* a device gout is read by the device's kernels */
  *gscale = vtl_tensor_device(gout).type == VTL_CPU ? vtl_tensor_get_flat(gout, 0) / div : 0;
  return true;
}

vtl_status vtl_op_cross_entropy_backward(vtl_tensor *gout, vtl_tensor *logits, vtl_tensor *target, vtl_tensor *weight,
                                         int64_t ignore_index, double label_smoothing, vtl_reduction red,
                                         vtl_tensor **glogits, vtl_tensor **gtarget) {
  static const char op[] = "cross_entropy_backward";
  if (glogits) *glogits = NULL;
  if (gtarget) *gtarget = NULL;
  ce_args a;
  if (!ce_prepare(op, logits, target, weight, ignore_index, label_smoothing, red, true, &a)) return vtl_error_status();
  vtl_tensor *grow;
  double gscale; /* the backend divides by the mean's divisor itself */
  if (!loss_gout(op, gout, logits, red, a.loss_shape, a.loss_ndim, 1, &grow, &gscale)) {
    vtl_status st = vtl_error_status();
    ce_free(&a);
    return st;
  }
  vtl_tensor *dx = glogits ? new_like(logits) : NULL;
  vtl_tensor *dp = gtarget && a.prob ? new_like(logits) : NULL;
  if ((glogits && !dx) || (gtarget && a.prob && !dp)) {
    vtl_status st = vtl_error_status();
    vtl_tensor *ts[3] = {grow, dx, dp};
    release_all(ts, 3);
    ce_free(&a);
    return st;
  }
  vtl_status st = nn_of(logits)->cross_entropy_backward(a.x, a.N, a.C, a.S, a.target, a.prob, a.w, ignore_index,
                                                        label_smoothing, red, grow ? grow : gout, dx, dp);
  vtl_tensor_release(grow);
  ce_free(&a);
  if (st != VTL_OK) {
    vtl_tensor_release(dx);
    vtl_tensor_release(dp);
    return st;
  }
  if (glogits) *glogits = dx;
  if (gtarget) *gtarget = dp;
  return VTL_OK;
}

vtl_tensor *vtl_op_nll_loss_backward(vtl_tensor *gout, vtl_tensor *logp, vtl_tensor *target, vtl_tensor *weight,
                                     int64_t ignore_index, vtl_reduction red) {
  static const char op[] = "nll_loss_backward";
  ce_args a;
  if (!ce_prepare(op, logp, target, weight, ignore_index, 0, red, false, &a)) return NULL;
  vtl_dtype dt = logp->dtype;
  double div = red == VTL_REDUCTION_MEAN ? ce_denominator(&a, dt, ignore_index) : 1;
  vtl_tensor *grow;
  double gscale;
  if (!loss_gout(op, gout, logp, red, a.loss_shape, a.loss_ndim, div, &grow, &gscale)) { ce_free(&a); return NULL; }
  vtl_tensor *dx = new_like(logp);
  if (dx)
    vtl_cpu_nll_loss_backward(dt, a.N, a.C, a.S, vtl_tensor_data(a.target), data_or_null(a.w), ignore_index,
                              data_or_null(grow), gscale, vtl_tensor_data(dx));
  vtl_tensor_release(grow);
  ce_free(&a);
  return dx;
}

/* saved: logits, target, weight; i[0]: ignore_index, i[1]: reduction; f[0]: label_smoothing */
static vtl_status cross_entropy_bw(vtl_node *nd, vtl_tensor *gout, vtl_tensor **gin) {
  vtl_tensor *x, *t, *w;
  if (!saved(nd, 0, &x) || !saved(nd, 1, &t) || !saved(nd, 2, &w)) return vtl_error_status();
  return vtl_op_cross_entropy_backward(gout, x, t, w, nd->i[0], nd->f[0], (vtl_reduction)nd->i[1],
                                       nd->needs[0] ? &gin[0] : NULL, nd->needs[1] ? &gin[1] : NULL);
}

static vtl_tensor *fn_cross_entropy(vtl_tensor *logits, vtl_tensor *target, vtl_tensor *weight, int64_t ignore_index,
                                 double label_smoothing, vtl_reduction red) {
  vtl_tensor *out = vtl_op_cross_entropy(logits, target, weight, ignore_index, label_smoothing, red);
  vtl_tensor *ins[2] = {logits, target};
  if (!out || !vtl_ag_needs(ins, 2)) return out;
  vtl_node *nd = vtl_ag_node("CrossEntropyBackward", cross_entropy_bw, ins, 2);
  if (!nd) { vtl_tensor_release(out); return NULL; }
  vtl_ag_save(nd, logits);
  vtl_ag_save(nd, target);
  vtl_ag_save(nd, weight);
  nd->i[0] = ignore_index;
  nd->i[1] = red;
  nd->f[0] = label_smoothing;
  return attach(out, nd);
}

/* saved: logp, target, weight; i[0]: ignore_index, i[1]: reduction */
static vtl_status nll_loss_bw(vtl_node *nd, vtl_tensor *gout, vtl_tensor **gin) {
  vtl_tensor *x, *t, *w;
  if (!saved(nd, 0, &x) || !saved(nd, 1, &t) || !saved(nd, 2, &w)) return vtl_error_status();
  if (!nd->needs[0]) return VTL_OK;
  gin[0] = vtl_op_nll_loss_backward(gout, x, t, w, nd->i[0], (vtl_reduction)nd->i[1]);
  return gin[0] ? VTL_OK : vtl_error_status();
}

static vtl_tensor *fn_nll_loss(vtl_tensor *logp, vtl_tensor *target, vtl_tensor *weight, int64_t ignore_index,
                            vtl_reduction red) {
  vtl_tensor *out = vtl_op_nll_loss(logp, target, weight, ignore_index, red);
  if (!out || !vtl_ag_needs(&logp, 1)) return out;
  vtl_node *nd = vtl_ag_node("NllLossBackward", nll_loss_bw, &logp, 1);
  if (!nd) { vtl_tensor_release(out); return NULL; }
  vtl_ag_save(nd, logp);
  vtl_ag_save(nd, target);
  vtl_ag_save(nd, weight);
  nd->i[0] = ignore_index;
  nd->i[1] = red;
  return attach(out, nd);
}

/* ---- elementwise losses ---- */

static const char *loss_names[VTL_LOSS_COUNT] = {"mse_loss", "l1_loss", "smooth_l1_loss", "kl_div"};
static const char *loss_nodes[VTL_LOSS_COUNT] = {"MseLossBackward", "L1LossBackward", "SmoothL1LossBackward",
                                                 "KlDivBackward"};

const char *vtl_loss_name(vtl_loss kind) { return (unsigned)kind < VTL_LOSS_COUNT ? loss_names[kind] : "loss"; }

static bool check_pair(const char *op, const vtl_tensor *x, const vtl_tensor *y) {
  if (!check_input(op, "input", x)) return false;
  if (!y) return vtl_error_set(VTL_ERR_ARG, "%s: target is missing", op), false;
  if (!same_shape(x, y))
    return vtl_error_set(VTL_ERR_ARG, "%s: target of shape %s does not match input of shape %s", op, shape_of(y).s,
                         shape_of(x).s), false;
  return check_like(op, "target", y, x);
}

/* the divisor of a reduced elementwise loss */
static double pointwise_div(const vtl_tensor *x, vtl_reduction red) {
  if (red == VTL_REDUCTION_MEAN) return (double)vtl_tensor_numel(x);
  if (red == VTL_REDUCTION_BATCHMEAN) return x->ndim ? (double)x->shape[0] : 1;
  return 1;
}

vtl_tensor *vtl_op_pointwise_loss(vtl_loss kind, vtl_tensor *input, vtl_tensor *target, vtl_reduction red,
                                  double param) {
  if ((unsigned)kind >= VTL_LOSS_COUNT) return vtl_error_set(VTL_ERR_ARG, "loss: unknown loss %d", (int)kind), NULL;
  const char *op = loss_names[kind];
  if (!check_pair(op, input, target) || !check_reduction(op, red, kind == VTL_LOSS_KL_DIV)) return NULL;
  if (kind == VTL_LOSS_SMOOTH_L1 && !(param >= 0))
    return vtl_error_set(VTL_ERR_ARG, "%s: beta must be non-negative, got %g", op, param), NULL;
  bool ok = true;
  vtl_tensor *xc = contig_opt(input, &ok), *yc = contig_opt(target, &ok);
  vtl_tensor *rows = ok && red == VTL_REDUCTION_NONE ? new_like(input) : NULL, *out = NULL;
  if (ok && (rows || red != VTL_REDUCTION_NONE)) {
    double total = vtl_cpu_pointwise_loss_forward(input->dtype, kind, vtl_tensor_data(xc), vtl_tensor_data(yc),
                                                  vtl_tensor_numel(input), param, rows ? vtl_tensor_data(rows) : NULL);
    out = rows ? rows : reduced(input->dtype, red, total, pointwise_div(input, red));
  }
  vtl_tensor_release(xc);
  vtl_tensor_release(yc);
  return out;
}

vtl_status vtl_op_pointwise_loss_backward(vtl_loss kind, vtl_tensor *gout, vtl_tensor *input, vtl_tensor *target,
                                          vtl_reduction red, double param, vtl_tensor **ginput, vtl_tensor **gtarget) {
  if (ginput) *ginput = NULL;
  if (gtarget) *gtarget = NULL;
  if ((unsigned)kind >= VTL_LOSS_COUNT) return vtl_error_set(VTL_ERR_ARG, "loss: unknown loss %d", (int)kind);
  char op[48];
  snprintf(op, sizeof op, "%s_backward", loss_names[kind]);
  if (!check_pair(op, input, target) || !check_reduction(op, red, kind == VTL_LOSS_KL_DIV)) return vtl_error_status();
  vtl_tensor *grow;
  double gscale;
  if (!loss_gout(op, gout, input, red, input->shape, input->ndim, pointwise_div(input, red), &grow, &gscale))
    return vtl_error_status();
  bool ok = true;
  vtl_tensor *xc = contig_opt(input, &ok), *yc = contig_opt(target, &ok);
  vtl_tensor *dx = ok && ginput ? new_like(input) : NULL, *dy = ok && gtarget ? new_like(input) : NULL;
  vtl_tensor *all[5] = {grow, xc, yc, dx, dy};
  if (!ok || (ginput && !dx) || (gtarget && !dy)) {
    vtl_status st = vtl_error_status();
    release_all(all, 5);
    return st;
  }
  vtl_cpu_pointwise_loss_backward(input->dtype, kind, vtl_tensor_data(xc), vtl_tensor_data(yc), vtl_tensor_numel(input),
                                  param, data_or_null(grow), gscale, dx ? vtl_tensor_data(dx) : NULL,
                                  dy ? vtl_tensor_data(dy) : NULL);
  release_all(all, 3);
  if (ginput) *ginput = dx;
  if (gtarget) *gtarget = dy;
  return VTL_OK;
}

/* saved: input, target; i[0]: kind, i[1]: reduction; f[0]: param */
static vtl_status pointwise_loss_bw(vtl_node *nd, vtl_tensor *gout, vtl_tensor **gin) {
  vtl_tensor *x, *y;
  if (!saved(nd, 0, &x) || !saved(nd, 1, &y)) return vtl_error_status();
  return vtl_op_pointwise_loss_backward((vtl_loss)nd->i[0], gout, x, y, (vtl_reduction)nd->i[1], nd->f[0],
                                        nd->needs[0] ? &gin[0] : NULL, nd->needs[1] ? &gin[1] : NULL);
}

static vtl_tensor *fn_pointwise_loss(vtl_loss kind, vtl_tensor *input, vtl_tensor *target, vtl_reduction red, double param) {
  vtl_tensor *out = vtl_op_pointwise_loss(kind, input, target, red, param);
  vtl_tensor *ins[2] = {input, target};
  if (!out || !vtl_ag_needs(ins, 2)) return out;
  vtl_node *nd = vtl_ag_node(loss_nodes[kind], pointwise_loss_bw, ins, 2);
  if (!nd) { vtl_tensor_release(out); return NULL; }
  vtl_ag_save(nd, input);
  vtl_ag_save(nd, target);
  nd->i[0] = kind;
  nd->i[1] = red;
  nd->f[0] = param;
  return attach(out, nd);
}

/* ---- binary cross entropy with logits ---- */

/* weight or pos_weight broadcast to x's shape, contiguous; NULL stays NULL */
static bool bce_expand(const char *op, const char *what, vtl_tensor *t, const vtl_tensor *x, vtl_tensor **out) {
  *out = NULL;
  if (!t) return true;
  if (!check_like(op, what, t, x)) return false;
  bool ok = t->ndim <= x->ndim;
  for (int d = 0; ok && d < t->ndim; d++) {
    int64_t s = t->shape[t->ndim - 1 - d];
    ok = s == 1 || s == x->shape[x->ndim - 1 - d];
  }
  if (!ok)
    return vtl_error_set(VTL_ERR_ARG, "%s: %s of shape %s does not broadcast to input of shape %s", op, what,
                         shape_of(t).s, shape_of(x).s), false;
  vtl_tensor *v = vtl_broadcast_to(t, x->shape, x->ndim);
  *out = v ? vtl_op_contiguous(v) : NULL;
  vtl_tensor_release(v);
  return *out != NULL;
}

typedef struct { vtl_tensor *x, *y, *w, *pw; } bce_args;

static void bce_free(bce_args *a) {
  vtl_tensor *ts[4] = {a->x, a->y, a->w, a->pw};
  release_all(ts, 4);
}

static bool bce_prepare(const char *op, vtl_tensor *x, vtl_tensor *target, vtl_tensor *weight, vtl_tensor *pos_weight,
                        vtl_reduction red, bce_args *a) {
  memset(a, 0, sizeof *a);
  if (!check_pair(op, x, target) || !check_reduction(op, red, false)) return false;
  bool ok = bce_expand(op, "weight", weight, x, &a->w) && bce_expand(op, "pos_weight", pos_weight, x, &a->pw);
  a->x = contig_opt(x, &ok);
  a->y = contig_opt(target, &ok);
  if (!ok) bce_free(a);
  return ok;
}

vtl_tensor *vtl_op_bce_with_logits(vtl_tensor *x, vtl_tensor *target, vtl_tensor *weight, vtl_tensor *pos_weight,
                                   vtl_reduction red) {
  static const char op[] = "binary_cross_entropy_with_logits";
  bce_args a;
  if (!bce_prepare(op, x, target, weight, pos_weight, red, &a)) return NULL;
  vtl_tensor *rows = red == VTL_REDUCTION_NONE ? new_like(x) : NULL, *out = NULL;
  if (rows || red != VTL_REDUCTION_NONE) {
    double total = vtl_cpu_bce_with_logits_forward(x->dtype, vtl_tensor_data(a.x), vtl_tensor_data(a.y),
                                                   data_or_null(a.w), data_or_null(a.pw), vtl_tensor_numel(x),
                                                   rows ? vtl_tensor_data(rows) : NULL);
    out = rows ? rows : reduced(x->dtype, red, total, pointwise_div(x, red));
  }
  bce_free(&a);
  return out;
}

vtl_status vtl_op_bce_with_logits_backward(vtl_tensor *gout, vtl_tensor *x, vtl_tensor *target, vtl_tensor *weight,
                                           vtl_tensor *pos_weight, vtl_reduction red, vtl_tensor **gx,
                                           vtl_tensor **gtarget) {
  static const char op[] = "binary_cross_entropy_with_logits_backward";
  if (gx) *gx = NULL;
  if (gtarget) *gtarget = NULL;
  bce_args a;
  if (!bce_prepare(op, x, target, weight, pos_weight, red, &a)) return vtl_error_status();
  vtl_tensor *grow;
  double gscale;
  if (!loss_gout(op, gout, x, red, x->shape, x->ndim, pointwise_div(x, red), &grow, &gscale)) {
    vtl_status st = vtl_error_status();
    bce_free(&a);
    return st;
  }
  vtl_tensor *dx = gx ? new_like(x) : NULL, *dy = gtarget ? new_like(x) : NULL;
  if ((gx && !dx) || (gtarget && !dy)) {
    vtl_status st = vtl_error_status();
    vtl_tensor *ts[3] = {grow, dx, dy};
    release_all(ts, 3);
    bce_free(&a);
    return st;
  }
  vtl_cpu_bce_with_logits_backward(x->dtype, vtl_tensor_data(a.x), vtl_tensor_data(a.y), data_or_null(a.w),
                                   data_or_null(a.pw), vtl_tensor_numel(x), data_or_null(grow), gscale,
                                   dx ? vtl_tensor_data(dx) : NULL, dy ? vtl_tensor_data(dy) : NULL);
  vtl_tensor_release(grow);
  bce_free(&a);
  if (gx) *gx = dx;
  if (gtarget) *gtarget = dy;
  return VTL_OK;
}

/* saved: x, target, weight, pos_weight; i[0]: reduction */
static vtl_status bce_bw(vtl_node *nd, vtl_tensor *gout, vtl_tensor **gin) {
  vtl_tensor *x, *y, *w, *pw;
  if (!saved(nd, 0, &x) || !saved(nd, 1, &y) || !saved(nd, 2, &w) || !saved(nd, 3, &pw)) return vtl_error_status();
  return vtl_op_bce_with_logits_backward(gout, x, y, w, pw, (vtl_reduction)nd->i[0], nd->needs[0] ? &gin[0] : NULL,
                                         nd->needs[1] ? &gin[1] : NULL);
}

static vtl_tensor *fn_bce_with_logits(vtl_tensor *x, vtl_tensor *target, vtl_tensor *weight, vtl_tensor *pos_weight,
                                   vtl_reduction red) {
  vtl_tensor *out = vtl_op_bce_with_logits(x, target, weight, pos_weight, red);
  vtl_tensor *ins[2] = {x, target};
  if (!out || !vtl_ag_needs(ins, 2)) return out;
  vtl_node *nd = vtl_ag_node("BinaryCrossEntropyWithLogitsBackward", bce_bw, ins, 2);
  if (!nd) { vtl_tensor_release(out); return NULL; }
  vtl_ag_save(nd, x);
  vtl_ag_save(nd, target);
  vtl_ag_save(nd, weight);
  vtl_ag_save(nd, pos_weight);
  nd->i[0] = red;
  return attach(out, nd);
}

/* ---- dropout ---- */

vtl_tensor *vtl_op_dropout(vtl_tensor *x, double p, bool training, uint64_t seed, uint64_t *offset, vtl_tensor **mask) {
  static const char op[] = "dropout";
  if (mask) *mask = NULL;
  if (x && is_half(x->dtype) && (!training || p == 0) && p >= 0 && p <= 1) return vtl_tensor_retain(x);
  if (x && is_half(x->dtype) && training && p > 0) { /* the same mask, computed in f32 */
    vtl_tensor *f = vtl_op_to_dtype(x, VTL_F32);
    vtl_tensor *r = f ? round_to(vtl_op_dropout(f, p, training, seed, offset, mask), x->dtype) : NULL;
    vtl_tensor_release(f);
    return r;
  }
  if (!check_input_dev(op, "input", x)) return NULL;
  if (!(p >= 0 && p <= 1)) return vtl_error_set(VTL_ERR_ARG, "%s: p must be in [0, 1], got %g", op, p), NULL;
  if (!training || p == 0) return vtl_tensor_retain(x);
  int64_t n = vtl_tensor_numel(x);
  vtl_tensor *xc = vtl_op_contiguous(x);
  vtl_tensor *out = xc ? new_like(x) : NULL;
  vtl_tensor *m = out ? vtl_tensor_empty(x->shape, x->ndim, VTL_BOOL, vtl_tensor_device(x)) : NULL;
  if (!m) {
    vtl_tensor *all[2] = {xc, out};
    release_all(all, 2);
    return NULL;
  }
  if (nn_of(x)->dropout_forward(xc, out, m, p, seed, *offset) != VTL_OK) {
    vtl_tensor *all[3] = {xc, out, m};
    release_all(all, 3);
    return NULL;
  }
  *offset += (uint64_t)(n + 3) / 4;
  vtl_tensor_release(xc);
  if (mask) *mask = m;
  else vtl_tensor_release(m);
  return out;
}

vtl_tensor *vtl_op_dropout_backward(vtl_tensor *gout, vtl_tensor *mask, double p) {
  static const char op[] = "dropout_backward";
  if (!gout) return vtl_error_set(VTL_ERR_ARG, "%s: gout is missing", op), NULL;
  if (is_half(gout->dtype)) {
    vtl_tensor *f = vtl_op_to_dtype(gout, VTL_F32);
    vtl_tensor *r = f ? round_to(vtl_op_dropout_backward(f, mask, p), gout->dtype) : NULL;
    vtl_tensor_release(f);
    return r;
  }
  if (!check_input_dev(op, "gout", gout)) return NULL;
  if (!mask || mask->dtype != VTL_BOOL)
    return vtl_error_set(VTL_ERR_ARG, "%s: mask must be a bool tensor, got %s", op,
                         mask ? vtl_dtype_name(mask->dtype) : "nothing"), NULL;
  if (!same_shape(gout, mask))
    return vtl_error_set(VTL_ERR_ARG, "%s: gout of shape %s does not match mask of shape %s", op, shape_of(gout).s,
                         shape_of(mask).s), NULL;
  if (!(p >= 0 && p <= 1)) return vtl_error_set(VTL_ERR_ARG, "%s: p must be in [0, 1], got %g", op, p), NULL;
  if (!on_device_of(op, mask, gout)) return NULL;
  bool ok = true;
  vtl_tensor *gc = contig_opt(gout, &ok), *mc = contig_opt(mask, &ok);
  vtl_tensor *dx = ok ? new_like(gout) : NULL;
  if (dx && nn_of(gout)->dropout_backward(gc, mc, dx, p) != VTL_OK) {
    vtl_tensor_release(dx);
    dx = NULL;
  }
  vtl_tensor_release(gc);
  vtl_tensor_release(mc);
  return dx;
}

/* saved: mask; f[0]: p */
static vtl_status dropout_bw(vtl_node *nd, vtl_tensor *gout, vtl_tensor **gin) {
  vtl_tensor *m;
  if (!saved(nd, 0, &m)) return vtl_error_status();
  if (!nd->needs[0]) return VTL_OK;
  gin[0] = vtl_op_dropout_backward(gout, m, nd->f[0]);
  return gin[0] ? VTL_OK : vtl_error_status();
}

vtl_tensor *vtl_fn_dropout(vtl_tensor *x, double p, bool training, uint64_t seed, uint64_t *offset, vtl_tensor **mask) {
  vtl_tensor *m;
  if (mask) *mask = NULL;
  vtl_tensor *out = vtl_op_dropout(x, p, training, seed, offset, &m);
  if (!out || !m) return out; /* identity: x itself, which keeps its own grad_fn */
  if (vtl_ag_needs(&x, 1)) {
    vtl_node *nd = vtl_ag_node("DropoutBackward", dropout_bw, &x, 1);
    if (nd) {
      vtl_ag_save(nd, m);
      nd->f[0] = p;
      out = attach(out, nd);
    } else {
      vtl_tensor_release(out);
      out = NULL;
    }
  }
  if (out && mask) *mask = m;
  else vtl_tensor_release(m);
  return out;
}

/* ---- autocast: these ops run in f32 (autocast.h) ---- */

/* half operands cast up (new references in c[], NULL entries allowed); false on failure */
static bool ac_up(vtl_tensor *const *in, vtl_tensor **c, int n) {
  bool ok = true;
  for (int i = 0; i < n; i++) {
    c[i] = ok && in[i] ? vtl_autocast_f32(in[i]) : NULL;
    if (in[i] && !c[i]) ok = false;
  }
  if (!ok) release_all(c, n);
  return ok;
}

/* Under autocast batch norm runs in its input's dtype, as PyTorch's: a half input (a convolution's
   output) is normalised with f32 statistics and parameters and stays half. */
vtl_tensor *vtl_fn_batch_norm(vtl_tensor *x, vtl_tensor *running_mean, vtl_tensor *running_var, vtl_tensor *weight,
                              vtl_tensor *bias, bool training, double momentum, double eps) {
  return fn_batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, NULL, VTL_ACT_COUNT);
}

vtl_tensor *vtl_fn_batch_norm_act(vtl_tensor *x, vtl_tensor *running_mean, vtl_tensor *running_var, vtl_tensor *weight,
                                  vtl_tensor *bias, bool training, double momentum, double eps, vtl_tensor *add,
                                  vtl_activation act) {
  return fn_batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, add, act);
}

vtl_tensor *vtl_fn_layer_norm(vtl_tensor *x, const int64_t *normalized_shape, int nnorm, vtl_tensor *weight,
                              vtl_tensor *bias, double eps) {
  if (vtl_autocast_dtype() == VTL_F32) return fn_layer_norm(x, normalized_shape, nnorm, weight, bias, eps);
  vtl_tensor *in[3] = {x, weight, bias}, *c[3];
  if (!ac_up(in, c, 3)) return NULL;
  vtl_tensor *r = fn_layer_norm(c[0], normalized_shape, nnorm, c[1], c[2], eps);
  release_all(c, 3);
  return r;
}

vtl_tensor *vtl_fn_group_norm(vtl_tensor *x, int64_t groups, vtl_tensor *weight, vtl_tensor *bias, double eps) {
  if (vtl_autocast_dtype() == VTL_F32) return fn_group_norm(x, groups, weight, bias, eps);
  vtl_tensor *in[3] = {x, weight, bias}, *c[3];
  if (!ac_up(in, c, 3)) return NULL;
  vtl_tensor *r = fn_group_norm(c[0], groups, c[1], c[2], eps);
  release_all(c, 3);
  return r;
}

vtl_tensor *vtl_fn_softmax(vtl_tensor *x, int dim, bool logsm) {
  if (vtl_autocast_dtype() == VTL_F32) return fn_softmax(x, dim, logsm);
  vtl_tensor *c = vtl_autocast_f32(x);
  vtl_tensor *r = c ? fn_softmax(c, dim, logsm) : NULL;
  vtl_tensor_release(c);
  return r;
}

vtl_tensor *vtl_fn_cross_entropy(vtl_tensor *logits, vtl_tensor *target, vtl_tensor *weight, int64_t ignore_index,
                                 double label_smoothing, vtl_reduction red) {
  if (vtl_autocast_dtype() == VTL_F32) return fn_cross_entropy(logits, target, weight, ignore_index, label_smoothing, red);
  vtl_tensor *in[3] = {logits, target, weight}, *c[3];
  if (!ac_up(in, c, 3)) return NULL;
  vtl_tensor *r = fn_cross_entropy(c[0], c[1], c[2], ignore_index, label_smoothing, red);
  release_all(c, 3);
  return r;
}

vtl_tensor *vtl_fn_nll_loss(vtl_tensor *logp, vtl_tensor *target, vtl_tensor *weight, int64_t ignore_index,
                            vtl_reduction red) {
  if (vtl_autocast_dtype() == VTL_F32) return fn_nll_loss(logp, target, weight, ignore_index, red);
  vtl_tensor *in[2] = {logp, weight}, *c[2];
  if (!ac_up(in, c, 2)) return NULL;
  vtl_tensor *r = fn_nll_loss(c[0], target, c[1], ignore_index, red);
  release_all(c, 2);
  return r;
}

vtl_tensor *vtl_fn_pointwise_loss(vtl_loss kind, vtl_tensor *input, vtl_tensor *target, vtl_reduction red, double param) {
  if (vtl_autocast_dtype() == VTL_F32) return fn_pointwise_loss(kind, input, target, red, param);
  vtl_tensor *in[2] = {input, target}, *c[2];
  if (!ac_up(in, c, 2)) return NULL;
  vtl_tensor *r = fn_pointwise_loss(kind, c[0], c[1], red, param);
  release_all(c, 2);
  return r;
}

vtl_tensor *vtl_fn_bce_with_logits(vtl_tensor *x, vtl_tensor *target, vtl_tensor *weight, vtl_tensor *pos_weight,
                                   vtl_reduction red) {
  if (vtl_autocast_dtype() == VTL_F32) return fn_bce_with_logits(x, target, weight, pos_weight, red);
  vtl_tensor *in[4] = {x, target, weight, pos_weight}, *c[4];
  if (!ac_up(in, c, 4)) return NULL;
  vtl_tensor *r = fn_bce_with_logits(c[0], c[1], c[2], c[3], red);
  release_all(c, 4);
  return r;
}
