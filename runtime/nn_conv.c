/* Convolution and pooling ops: argument checks, output shapes, kernel calls, autograd nodes. */
#include <stdio.h>
#include <string.h>
#include "nn_conv.h"
#include "autocast.h"
#include "backend.h"
#include "ops.h"
#include "autograd.h"
#include "grad_ops.h"

/* ---- shared checks ---- */

static const char *shape_str(const int64_t *shape, int ndim, char *buf, size_t n) {
  vtl_shape_format(shape, ndim, buf, n);
  return buf;
}

/* All tensors (NULL skipped) on one device, and that device's nn kernels present. */
static vtl_status check_devices(const char *op, vtl_tensor *const *ts, int n) {
  const vtl_tensor *first = NULL;
  for (int i = 0; i < n; i++) {
    if (!ts[i]) continue;
    if (!first) { first = ts[i]; continue; }
    if (vtl_check_same_device(op, first, ts[i]) != VTL_OK) return vtl_error_status();
  }
  return first && !vtl_nn_backend_of(op, first) ? vtl_error_status() : VTL_OK;
}

/* the nn kernels of t's device (checked by check_devices before) */
static const vtl_nn_backend *nn_of(const vtl_tensor *t) { return vtl_backend_get(vtl_tensor_device(t))->nn; }

static vtl_status check_float(const char *op, const char *what, const vtl_tensor *t) {
  if (t->dtype != VTL_F32 && t->dtype != VTL_F64)
    return vtl_error_set(VTL_ERR_ARG, "%s: %s dtype %s not supported (expected f32 or f64)", op, what,
                         vtl_dtype_name(t->dtype));
  return VTL_OK;
}

static bool is_half(vtl_dtype d) { return d == VTL_F16 || d == VTL_BF16; }

/* the matrix ops (conv2d, linear, attention) also take f16 and bf16 */
static vtl_status check_float_half(const char *op, const char *what, const vtl_tensor *t) {
  if (is_half(t->dtype)) return VTL_OK;
  return check_float(op, what, t);
}

/* t as f32 (a new reference; NULL stays NULL without error); *fail set when a cast failed */
static vtl_tensor *up(vtl_tensor *t, bool *fail) {
  if (!t || *fail) return NULL;
  vtl_tensor *r = vtl_op_to_dtype(t, VTL_F32);
  if (!r) *fail = true;
  return r;
}

/* takes y (f32) and returns it cast to dt */
static vtl_tensor *down(vtl_tensor *y, vtl_dtype dt) {
  if (!y) return NULL;
  vtl_tensor *r = vtl_op_to_dtype(y, dt);
  vtl_tensor_release(y);
  return r;
}

/* A new contiguous tensor of shape/dtype on the device of `on`. */
static vtl_tensor *new_like_shape(const int64_t *shape, int ndim, vtl_dtype dt, const vtl_tensor *on) {
  return vtl_tensor_empty(shape, ndim, dt, vtl_tensor_device(on));
}

/* ======================================================================================
 * conv2d
 * ====================================================================================== */

vtl_conv2d_params vtl_conv2d_params_make(int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                                         int64_t dil_h, int64_t dil_w, int64_t groups) {
  vtl_conv2d_params p = {{stride_h, stride_w}, {pad_h, pad_w}, {pad_h, pad_w}, {dil_h, dil_w}, groups, false};
  return p;
}

vtl_status vtl_conv2d_params_same(vtl_conv2d_params *p, int64_t R, int64_t S, const char *op) {
  if (p->stride[0] != 1 || p->stride[1] != 1)
    return vtl_error_set(VTL_ERR_ARG, "%s: padding=\"same\" is not supported for strided convolutions (stride {%lld,%lld})",
                         op, (long long)p->stride[0], (long long)p->stride[1]);
  int64_t k[2] = {R, S};
  for (int d = 0; d < 2; d++) {
    if (p->dilation[d] < 1)
      return vtl_error_set(VTL_ERR_ARG, "%s: dilation must be positive, got {%lld,%lld}", op,
                           (long long)p->dilation[0], (long long)p->dilation[1]);
    int64_t total = p->dilation[d] * (k[d] - 1);
    p->pad[d] = total / 2;
    p->pad_end[d] = total - total / 2;
  }
  return VTL_OK;
}

/* Checks conv2d's operands and parameters and fills the kernel shape. gy (optional) must be
   the output's gradient. */
/* mixed: x is of a half dtype and w, b are f32 (an autocast inference layer) */
static vtl_status conv2d_check_m(const char *op, vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, vtl_tensor *gy,
                                 const vtl_conv2d_params *p, vtl_conv2d_shape *s, bool mixed) {
  char s1[96], s2[96];
  if (x->ndim != 4)
    return vtl_error_set(VTL_ERR_ARG, "%s: input must be 4-D (N,C,H,W), got shape %s", op,
                         shape_str(x->shape, x->ndim, s1, sizeof s1));
  if (w->ndim != 4)
    return vtl_error_set(VTL_ERR_ARG, "%s: weight must be 4-D (K,C/groups,R,S), got shape %s", op,
                         shape_str(w->shape, w->ndim, s1, sizeof s1));
  vtl_tensor *all[4] = {x, w, b, gy};
  if (check_devices(op, all, 4)) return vtl_error_status();
  if (check_float_half(op, "input", x)) return vtl_error_status();
  vtl_dtype wdt = mixed ? VTL_F32 : x->dtype;
  if (w->dtype != wdt)
    return vtl_error_set(VTL_ERR_ARG, "%s: input and weight must have the same dtype, got %s and %s", op,
                         vtl_dtype_name(x->dtype), vtl_dtype_name(w->dtype));
  if (b && b->dtype != wdt)
    return vtl_error_set(VTL_ERR_ARG, "%s: input and bias must have the same dtype, got %s and %s", op,
                         vtl_dtype_name(x->dtype), vtl_dtype_name(b->dtype));
  if (gy && gy->dtype != x->dtype)
    return vtl_error_set(VTL_ERR_ARG, "%s: input and output gradient must have the same dtype, got %s and %s", op,
                         vtl_dtype_name(x->dtype), vtl_dtype_name(gy->dtype));
  if (p->stride[0] < 1 || p->stride[1] < 1)
    return vtl_error_set(VTL_ERR_ARG, "%s: stride must be positive, got {%lld,%lld}", op, (long long)p->stride[0],
                         (long long)p->stride[1]);
  if (p->dilation[0] < 1 || p->dilation[1] < 1)
    return vtl_error_set(VTL_ERR_ARG, "%s: dilation must be positive, got {%lld,%lld}", op,
                         (long long)p->dilation[0], (long long)p->dilation[1]);
  if (p->pad[0] < 0 || p->pad[1] < 0 || p->pad_end[0] < 0 || p->pad_end[1] < 0)
    return vtl_error_set(VTL_ERR_ARG, "%s: padding must be non-negative, got {%lld,%lld}", op,
                         (long long)(p->pad[0] < 0 ? p->pad[0] : p->pad_end[0]),
                         (long long)(p->pad[1] < 0 ? p->pad[1] : p->pad_end[1]));
  if (p->groups < 1)
    return vtl_error_set(VTL_ERR_ARG, "%s: groups must be positive, got %lld", op, (long long)p->groups);
  int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
  int64_t K = w->shape[0], Cg = w->shape[1], R = w->shape[2], S = w->shape[3], G = p->groups;
  if (C < 1 || H < 1 || W < 1)
    return vtl_error_set(VTL_ERR_ARG, "%s: input must have non-zero channels, height and width, got shape %s", op,
                         shape_str(x->shape, 4, s1, sizeof s1));
  if (C % G != 0)
    return vtl_error_set(VTL_ERR_ARG, "%s: groups=%lld must divide the input channels, got %lld channels", op,
                         (long long)G, (long long)C);
  if (K % G != 0)
    return vtl_error_set(VTL_ERR_ARG, "%s: groups=%lld must divide the output channels, got weight of shape %s", op,
                         (long long)G, shape_str(w->shape, 4, s1, sizeof s1));
  if (Cg * G != C)
    return vtl_error_set(VTL_ERR_ARG, "%s: expected input with %lld channels, got %lld (weight of shape %s, groups=%lld)",
                         op, (long long)(Cg * G), (long long)C, shape_str(w->shape, 4, s1, sizeof s1), (long long)G);
  if (b && (b->ndim != 1 || b->shape[0] != K))
    return vtl_error_set(VTL_ERR_ARG, "%s: bias must be 1-D with %lld elements (one per output channel), got shape %s",
                         op, (long long)K, shape_str(b->shape, b->ndim, s1, sizeof s1));
  if (R < 1 || S < 1)
    return vtl_error_set(VTL_ERR_ARG, "%s: kernel must be at least 1x1, got weight of shape %s", op,
                         shape_str(w->shape, 4, s1, sizeof s1));
  int64_t ph = H + p->pad[0] + p->pad_end[0], pw = W + p->pad[1] + p->pad_end[1];
  int64_t eh = p->dilation[0] * (R - 1) + 1, ew = p->dilation[1] * (S - 1) + 1;
  if (eh > ph || ew > pw)
    return vtl_error_set(VTL_ERR_ARG, "%s: kernel size %lldx%lld (dilated: %lldx%lld) is larger than the padded input "
                         "%lldx%lld", op, (long long)R, (long long)S, (long long)eh, (long long)ew, (long long)ph,
                         (long long)pw);
  int64_t OH = (ph - eh) / p->stride[0] + 1, OW = (pw - ew) / p->stride[1] + 1;
  if (gy) {
    int64_t want[4] = {N, K, OH, OW};
    if (gy->ndim != 4 || memcmp(gy->shape, want, sizeof want) != 0)
      return vtl_error_set(VTL_ERR_ARG, "%s: output gradient must have the output's shape %s, got %s", op,
                           shape_str(want, 4, s1, sizeof s1), shape_str(gy->shape, gy->ndim, s2, sizeof s2));
  }
  *s = (vtl_conv2d_shape){.dtype = x->dtype, .N = N, .C = C, .H = H, .W = W, .K = K, .R = R, .S = S,
                          .OH = OH, .OW = OW, .groups = G, .w_f32 = mixed};
  for (int d = 0; d < 2; d++) {
    s->stride[d] = p->stride[d];
    s->pad[d] = p->pad[d];
    s->pad_end[d] = p->pad_end[d];
    s->dilation[d] = p->dilation[d];
  }
  return VTL_OK;
}

static vtl_status conv2d_check(const char *op, vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, vtl_tensor *gy,
                               const vtl_conv2d_params *p, vtl_conv2d_shape *s) {
  return conv2d_check_m(op, x, w, b, gy, p, s, false);
}

/* contiguous versions of up to 3 tensors (NULL stays NULL); 0 on failure (all released) */
static int contig(vtl_tensor **in, vtl_tensor **out, int n) {
  for (int i = 0; i < n; i++) out[i] = NULL;
  for (int i = 0; i < n; i++) {
    if (!in[i]) continue;
    out[i] = vtl_op_contiguous(in[i]);
    if (!out[i]) {
      for (int j = 0; j < i; j++) vtl_tensor_release(out[j]);
      return 0;
    }
  }
  return 1;
}

static void release_all(vtl_tensor **ts, int n) {
  for (int i = 0; i < n; i++) vtl_tensor_release(ts[i]);
}

/* A convolution runs channels-last when asked to or when x is laid out so, and the device's
   kernels take that layout. */
static bool conv_cl(const vtl_tensor *x, bool asked) {
  return nn_of(x)->conv_cl && (asked || vtl_tensor_keeps_channels_last(x));
}

/* the backend's conv2d_forward on contiguous operands (x and y channels-last when cl) */
static vtl_tensor *conv2d_native(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, const vtl_conv2d_shape *sh, bool cl) {
  vtl_conv2d_shape sv = *sh, *s = &sv;
  s->x_cl = s->y_cl = cl;
  int64_t shape[4] = {s->N, s->K, s->OH, s->OW};
  if (vtl_shape_numel(shape, 4, vtl_dtype_size(s->dtype), "conv2d") < 0) return NULL;
  vtl_tensor *in[3] = {cl ? NULL : x, w, b}, *c[3];
  if (!contig(in, c, 3)) return NULL;
  if (cl && !(c[0] = vtl_op_contiguous_channels_last(x))) {
    release_all(c, 3);
    return NULL;
  }
  vtl_tensor *y = cl ? vtl_tensor_empty_channels_last(shape, s->dtype, vtl_tensor_device(x))
                     : new_like_shape(shape, 4, s->dtype, x);
  bool failed = y && nn_of(x)->conv2d_forward(s, c[0], c[1], c[2], y) != VTL_OK;
  if (failed) {
    vtl_tensor_release(y);
    y = NULL;
  }
  release_all(c, 3);
  if (failed && cl && vtl_tensor_device(x).type != VTL_CPU) {
    /* a device library without a channels-last kernel for this case: the planar one, the output
       relaid out */
    vtl_tensor *p = conv2d_native(x, w, b, sh, false);
    y = p ? vtl_op_contiguous_channels_last(p) : NULL;
    vtl_tensor_release(p);
  }
  return y;
}

vtl_tensor *vtl_op_conv2d(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, const vtl_conv2d_params *p) {
  vtl_conv2d_shape s;
  if (conv2d_check("conv2d", x, w, b, NULL, p, &s)) return NULL;
  if (is_half(s.dtype)) {
    const vtl_nn_backend *nn = nn_of(x);
    if (nn->conv2d_forward_post) { /* that entry takes half operands */
      vtl_conv2d_post none = {0};
      return vtl_op_conv2d_post(x, w, b, p, &none);
    }
    if (nn->conv_half) { /* the device's own half kernels; computed in f32 if they fail */
      vtl_tensor *y = conv2d_native(x, w, b, &s, conv_cl(x, p->channels_last));
      if (y) return y;
    }
    bool fail = false; /* computed in f32, rounded once to the half dtype */
    vtl_tensor *xf = up(x, &fail), *wf = up(w, &fail), *bf = up(b, &fail);
    vtl_tensor *y = fail ? NULL : down(vtl_op_conv2d(xf, wf, bf, p), s.dtype);
    vtl_tensor_release(xf);
    vtl_tensor_release(wf);
    vtl_tensor_release(bf);
    return y;
  }
  return conv2d_native(x, w, b, &s, conv_cl(x, p->channels_last));
}

/* the post-operation's added tensor must be the output: same shape, dtype and device */
static vtl_status post_check(const vtl_conv2d_shape *s, vtl_tensor *x, const vtl_conv2d_post *post) {
  char s1[96], s2[96];
  if (post->has_act && ((int)post->act < 0 || post->act >= VTL_ACT_COUNT))
    return vtl_error_set(VTL_ERR_ARG, "conv2d: unknown activation %d", (int)post->act);
  vtl_tensor *a = post->add;
  if (!a) return VTL_OK;
  int64_t want[4] = {s->N, s->K, s->OH, s->OW};
  if (a->ndim != 4 || memcmp(a->shape, want, sizeof want) != 0)
    return vtl_error_set(VTL_ERR_ARG, "conv2d: the tensor to add must have the output's shape %s, got %s",
                         shape_str(want, 4, s1, sizeof s1), shape_str(a->shape, a->ndim, s2, sizeof s2));
  if (a->dtype != x->dtype)
    return vtl_error_set(VTL_ERR_ARG, "conv2d: the tensor to add has dtype %s, the input %s", vtl_dtype_name(a->dtype),
                         vtl_dtype_name(x->dtype));
  if (!vtl_device_eq(vtl_tensor_device(a), vtl_tensor_device(x))) {
    vtl_device_format(vtl_tensor_device(a), s1, sizeof s1);
    vtl_device_format(vtl_tensor_device(x), s2, sizeof s2);
    return vtl_error_set(VTL_ERR_ARG, "conv2d: the tensor to add is on %s, the input on %s", s1, s2);
  }
  return VTL_OK;
}

/* act(y + add) from ops, for a backend without fused post-operations; takes y */
static vtl_tensor *post_compose(vtl_tensor *y, const vtl_conv2d_post *post, bool differentiable) {
  if (y && !differentiable) { /* y is the op's own new output: the sum and the activation in place */
    vtl_status st = post->add ? vtl_op_binary_(VTL_BIN_ADD, y, post->add, 1) : VTL_OK;
    if (st == VTL_OK && post->has_act) st = vtl_op_activation_(post->act, y, post->act_params);
    if (st != VTL_OK) {
      vtl_tensor_release(y);
      return NULL;
    }
    return y;
  }
  if (y && post->add) {
    vtl_tensor *t = differentiable ? vtl_fn_binary(VTL_BIN_ADD, y, post->add) : vtl_op_binary(VTL_BIN_ADD, y, post->add);
    vtl_tensor_release(y);
    y = t;
  }
  if (y && post->has_act) {
    vtl_tensor *t = differentiable ? vtl_fn_activation(post->act, y, post->act_params)
                                   : vtl_op_activation(post->act, y, post->act_params);
    vtl_tensor_release(y);
    y = t;
  }
  return y;
}

static vtl_tensor *conv2d_post_run(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, const vtl_conv2d_params *p,
                                   const vtl_conv2d_post *post, bool mixed) {
  vtl_conv2d_shape s;
  if (conv2d_check_m("conv2d", x, w, b, NULL, p, &s, mixed) || post_check(&s, x, post)) return NULL;
  const vtl_nn_backend *nn = nn_of(x);
  if (!nn->conv2d_forward_post) return post_compose(vtl_op_conv2d(x, w, b, p), post, false);
  int64_t shape[4] = {s.N, s.K, s.OH, s.OW};
  if (vtl_shape_numel(shape, 4, vtl_dtype_size(s.dtype), "conv2d") < 0) return NULL;
  /* channels-last input is taken as it is (f32 or half on the CPU: oneDNN reads it directly) */
  bool cpu_f32 = vtl_tensor_device(x).type == VTL_CPU && (s.dtype == VTL_F32 || is_half(s.dtype));
  s.x_cl = cpu_f32 && vtl_tensor_keeps_channels_last(x);
  s.y_cl = cpu_f32 && (p->channels_last || s.x_cl);
  vtl_tensor *in[3] = {s.x_cl ? NULL : x, w, b}, *c[3];
  if (!contig(in, c, 3)) return NULL;
  if (s.x_cl) c[0] = vtl_tensor_retain(x);
  vtl_tensor *y = s.y_cl ? vtl_tensor_empty_channels_last(shape, s.dtype, vtl_tensor_device(x))
                         : new_like_shape(shape, 4, s.dtype, x);
  vtl_status st = y ? VTL_OK : vtl_error_status();
  if (st == VTL_OK && post->add) {
    vtl_tensor *a = post->add;
    bool same = s.y_cl ? vtl_tensor_is_channels_last(a) : vtl_tensor_is_contiguous(a);
    if (same) memcpy(vtl_tensor_data(y), vtl_tensor_data(a), (size_t)vtl_tensor_numel(y) * vtl_dtype_size(s.dtype));
    else st = vtl_op_copy_(y, a);
  }
  if (st == VTL_OK) st = nn->conv2d_forward_post(&s, c[0], c[1], c[2], y, post->add != NULL, post);
  release_all(c, 3);
  if (st != VTL_OK) {
    vtl_tensor_release(y);
    return NULL;
  }
  return y;
}

vtl_tensor *vtl_op_conv2d_post(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, const vtl_conv2d_params *p,
                               const vtl_conv2d_post *post) {
  return conv2d_post_run(x, w, b, p, post, false);
}

/* ---- linear with post-operations ---- */

static vtl_status linear_check(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, const vtl_conv2d_post *post,
                               int64_t *out_shape, bool mixed) {
  char s1[96], s2[96];
  vtl_tensor *all[4] = {x, w, b, post->add};
  if (check_devices("linear", all, 4)) return vtl_error_status();
  if (w->ndim != 2)
    return vtl_error_set(VTL_ERR_ARG, "linear: weight must be 2-D (out, in), got shape %s",
                         shape_str(w->shape, w->ndim, s1, sizeof s1));
  if (x->ndim < 1 || x->shape[x->ndim - 1] != w->shape[1])
    return vtl_error_set(VTL_ERR_ARG, "linear: input of shape %s does not match weight of shape %s",
                         shape_str(x->shape, x->ndim, s1, sizeof s1), shape_str(w->shape, 2, s2, sizeof s2));
  if (check_float_half("linear", "input", x)) return vtl_error_status();
  vtl_dtype wdt = mixed ? VTL_F32 : x->dtype;
  if (w->dtype != wdt || (b && b->dtype != wdt))
    return vtl_error_set(VTL_ERR_ARG, "linear: weight and bias must have the input's dtype %s", vtl_dtype_name(x->dtype));
  if (b && (b->ndim != 1 || b->shape[0] != w->shape[0]))
    return vtl_error_set(VTL_ERR_ARG, "linear: bias must be 1-D with %lld elements, got shape %s",
                         (long long)w->shape[0], shape_str(b->shape, b->ndim, s1, sizeof s1));
  memcpy(out_shape, x->shape, (size_t)x->ndim * sizeof *out_shape);
  out_shape[x->ndim - 1] = w->shape[0];
  if (post->has_act && ((int)post->act < 0 || post->act >= VTL_ACT_COUNT))
    return vtl_error_set(VTL_ERR_ARG, "linear: unknown activation %d", (int)post->act);
  vtl_tensor *a = post->add;
  if (a && (a->ndim != x->ndim || memcmp(a->shape, out_shape, (size_t)x->ndim * sizeof *out_shape) != 0))
    return vtl_error_set(VTL_ERR_ARG, "linear: the tensor to add must have the output's shape %s, got %s",
                         shape_str(out_shape, x->ndim, s1, sizeof s1), shape_str(a->shape, a->ndim, s2, sizeof s2));
  if (a && a->dtype != x->dtype)
    return vtl_error_set(VTL_ERR_ARG, "linear: the tensor to add has dtype %s, the input %s", vtl_dtype_name(a->dtype),
                         vtl_dtype_name(x->dtype));
  return VTL_OK;
}

/* x wᵀ + b from differentiable or plain ops */
/* x wᵀ + b by tensor ops, for a device without a linear kernel */
static vtl_tensor *linear_compose(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b) {
  vtl_tensor *wt = vtl_op_transpose(w, 0, 1);
  vtl_tensor *y = wt ? vtl_op_matmul(x, wt) : NULL;
  vtl_tensor_release(wt);
  if (y && b && vtl_op_binary_(VTL_BIN_ADD, y, b, 1) != VTL_OK) { /* y is the product's own new tensor */
    vtl_tensor_release(y);
    y = NULL;
  }
  return y;
}

static vtl_tensor *linear_post_run(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, const vtl_conv2d_post *post,
                                   bool mixed) {
  int64_t shape[VTL_MAX_DIMS];
  if (linear_check(x, w, b, post, shape, mixed)) return NULL;
  const vtl_nn_backend *nn = nn_of(x);
  if (!nn->linear_forward_post) return post_compose(linear_compose(x, w, b), post, false);
  int64_t K = w->shape[1], N = w->shape[0], M = K ? vtl_tensor_numel(x) / K : 0;
  if (!K) {
    M = 1;
    for (int d = 0; d < x->ndim - 1; d++) M *= x->shape[d];
  }
  vtl_tensor *in[3] = {x, w, b}, *c[3];
  if (!contig(in, c, 3)) return NULL;
  vtl_tensor *y = new_like_shape(shape, x->ndim, x->dtype, x);
  vtl_status st = y ? VTL_OK : vtl_error_status();
  if (st == VTL_OK && post->add) {
    if (vtl_tensor_is_contiguous(post->add))
      memcpy(vtl_tensor_data(y), vtl_tensor_data(post->add), (size_t)vtl_tensor_numel(y) * vtl_dtype_size(x->dtype));
    else
      st = vtl_op_copy_(y, post->add);
  }
  if (st == VTL_OK) st = nn->linear_forward_post(x->dtype, M, K, N, c[0], c[1], c[2], y, post->add != NULL, post);
  release_all(c, 3);
  if (st != VTL_OK) {
    vtl_tensor_release(y);
    return NULL;
  }
  return y;
}

vtl_tensor *vtl_op_linear_post(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, const vtl_conv2d_post *post) {
  return linear_post_run(x, w, b, post, false);
}

/* ---- autocast (see autocast.h) ---- */

static vtl_tensor *fn_linear_post(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, const vtl_conv2d_post *post);

/* the operands of a matrix op under autocast: x, add and (unless keep_w) w, b cast to the
   region's dtype; false with the error set */
typedef struct { vtl_tensor *x, *w, *b, *add; } ac_args;

static bool ac_cast(ac_args *a, vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, vtl_tensor *add, bool keep_w) {
  a->x = vtl_autocast_low(x);
  a->w = keep_w ? vtl_tensor_retain(w) : vtl_autocast_low(w);
  a->b = !b ? NULL : keep_w ? vtl_tensor_retain(b) : vtl_autocast_low(b);
  a->add = add ? vtl_autocast_low(add) : NULL;
  return a->x && a->w && (!b || a->b) && (!add || a->add);
}

static void ac_release(ac_args *a) {
  vtl_tensor_release(a->x);
  vtl_tensor_release(a->w);
  vtl_tensor_release(a->b);
  vtl_tensor_release(a->add);
}

/* An inference layer on the CPU keeps its f32 weights (the kernel converts them as it packs
   them) and casts only the activations. */
static bool ac_keep_weights(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b) {
  return vtl_tensor_device(x).type == VTL_CPU && w->dtype == VTL_F32 && (!b || b->dtype == VTL_F32) &&
         (x->dtype == VTL_F32 || x->dtype == vtl_autocast_dtype());
}

static bool ac_active(vtl_tensor *x) {
  return vtl_autocast_dtype() != VTL_F32 && (x->dtype == VTL_F32 || is_half(x->dtype));
}

vtl_tensor *vtl_fn_linear_post(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, const vtl_conv2d_post *post) {
  vtl_tensor *in[4] = {x, w, b, post->add};
  bool needs = vtl_ag_needs(in, 4);
  if (ac_active(x)) {
    bool keep = !needs && ac_keep_weights(x, w, b);
    ac_args a;
    vtl_tensor *y = NULL;
    if (ac_cast(&a, x, w, b, post->add, keep)) {
      vtl_conv2d_post q = *post;
      q.add = a.add;
      y = keep ? linear_post_run(a.x, a.w, a.b, &q, true) : fn_linear_post(a.x, a.w, a.b, &q);
    }
    ac_release(&a);
    return y;
  }
  return fn_linear_post(x, w, b, post);
}

/* Linear's gradients from the output gradient g viewed as (M, O) with M the rows of all leading
   dims: one product each, as 2-D matrices, so the weight gradient comes out (O, K) in the
   weight's own layout and no per-sample products are summed.
   saved: x (when w needs a gradient), w (when x does); i[0]: has a bias */
static vtl_status linear_bw(vtl_node *nd, vtl_tensor *g, vtl_tensor **gin) {
  vtl_tensor *x = vtl_ag_saved(nd, 0), *w = vtl_ag_saved(nd, 1);
  if ((!x && nd->saved[0]) || (!w && nd->saved[1])) return vtl_error_status();
  int64_t O = g->shape[g->ndim - 1], M = 1;
  for (int d = 0; d < g->ndim - 1; d++) M *= g->shape[d];
  int64_t g2s[2] = {M, O};
  vtl_tensor *g2 = vtl_op_reshape(g, g2s, 2);
  if (!g2) return vtl_error_status();
  vtl_tensor *r[3] = {NULL, NULL, NULL};
  bool ok = true;
  if (nd->needs[0]) { /* gx = g w, back to x's shape */
    vtl_tensor *m = vtl_op_matmul(g2, w);
    r[0] = m ? vtl_op_reshape(m, nd->in_shape[0], nd->in_ndim[0]) : NULL;
    vtl_tensor_release(m);
    ok = r[0] != NULL;
  }
  if (ok && nd->needs[1]) { /* gw = gᵀ x */
    int64_t K = x->shape[x->ndim - 1], x2s[2] = {M, K};
    vtl_tensor *x2 = vtl_op_reshape(x, x2s, 2), *gt = x2 ? vtl_op_transpose(g2, 0, 1) : NULL;
    r[1] = gt ? vtl_op_matmul(gt, x2) : NULL;
    vtl_tensor_release(x2);
    vtl_tensor_release(gt);
    ok = r[1] != NULL;
  }
  if (ok && nd->ninputs > 2 && nd->needs[2]) { /* gb = Σ over the rows of g */
    r[2] = vtl_op_reduce(VTL_RED_SUM, g2, 1u, false, 0, NULL);
    ok = r[2] != NULL;
  }
  vtl_tensor_release(g2);
  if (!ok) {
    vtl_status st = vtl_error_status();
    release_all(r, 3);
    return st;
  }
  for (int i = 0; i < 3; i++) gin[i] = r[i];
  return VTL_OK;
}

static vtl_tensor *fn_linear(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b) {
  vtl_conv2d_post none = {0};
  vtl_tensor *y = linear_post_run(x, w, b, &none, false);
  vtl_tensor *in[3] = {x, w, b};
  int n = b ? 3 : 2;
  if (!y || !vtl_ag_needs(in, n)) return y;
  vtl_node *nd = vtl_ag_node("LinearBackward", linear_bw, in, n);
  if (!nd) { vtl_tensor_release(y); return NULL; }
  vtl_ag_save(nd, nd->needs[1] ? x : NULL);
  vtl_ag_save(nd, nd->needs[0] ? w : NULL);
  if (!vtl_ag_attach(y, nd)) { vtl_tensor_release(y); return NULL; }
  return y;
}

static vtl_tensor *fn_linear_post(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, const vtl_conv2d_post *post) {
  vtl_tensor *in[4] = {x, w, b, post->add};
  if (!vtl_ag_needs(in, 4)) return vtl_op_linear_post(x, w, b, post);
  int64_t shape[VTL_MAX_DIMS];
  if (linear_check(x, w, b, post, shape, false)) return NULL;
  return post_compose(fn_linear(x, w, b), post, true);
}

/* qkv (B, N, 3*C) of a float dtype, C a multiple of heads */
static vtl_status qkv_check(vtl_tensor *qkv, int64_t heads) {
  char s1[96];
  if (qkv->ndim != 3)
    return vtl_error_set(VTL_ERR_ARG, "attention_qkv: qkv must be 3-D (B, N, 3*C), got shape %s",
                         shape_str(qkv->shape, qkv->ndim, s1, sizeof s1));
  if (heads < 1 || qkv->shape[2] % (3 * heads) != 0)
    return vtl_error_set(VTL_ERR_ARG, "attention_qkv: the last dim (%lld) must be 3 * heads * head_dim with %lld heads",
                         (long long)qkv->shape[2], (long long)heads);
  return check_float_half("attention_qkv", "qkv", qkv);
}

vtl_tensor *vtl_op_attention_qkv(vtl_tensor *qkv, int64_t heads, double scale) {
  char s1[96];
  if (qkv_check(qkv, heads)) return NULL;
  if (vtl_tensor_device(qkv).type != VTL_CPU) {
    vtl_device_format(vtl_tensor_device(qkv), s1, sizeof s1);
    return vtl_error_set(VTL_ERR_ARG, "attention_qkv: runs on the CPU, got a tensor on %s", s1), NULL;
  }
  if (qkv->dtype == VTL_BF16) { /* oneDNN's bf16 products where it has them */
    int64_t B = qkv->shape[0], N = qkv->shape[1], C = qkv->shape[2] / 3;
    int64_t shape[3] = {B, N, C};
    vtl_tensor *c = vtl_op_contiguous(qkv);
    vtl_tensor *y = c ? new_like_shape(shape, 3, qkv->dtype, qkv) : NULL;
    int r = y ? vtl_cpu_attention_qkv_bf16(B, N, heads, C / heads, scale, vtl_tensor_data(c), vtl_tensor_data(y)) : -1;
    vtl_tensor_release(c);
    if (r > 0) return y;
    vtl_tensor_release(y);
    if (r < 0) return NULL;
  }
  if (is_half(qkv->dtype)) { /* computed in f32 */
    bool fail = false;
    vtl_tensor *f = up(qkv, &fail);
    vtl_tensor *y = fail ? NULL : down(vtl_op_attention_qkv(f, heads, scale), qkv->dtype);
    vtl_tensor_release(f);
    return y;
  }
  int64_t B = qkv->shape[0], N = qkv->shape[1], C = qkv->shape[2] / 3;
  int64_t shape[3] = {B, N, C};
  vtl_tensor *c = vtl_op_contiguous(qkv);
  vtl_tensor *y = c ? new_like_shape(shape, 3, qkv->dtype, qkv) : NULL;
  if (y && vtl_cpu_attention_qkv(qkv->dtype, B, N, heads, C / heads, scale, vtl_tensor_data(c), vtl_tensor_data(y))) {
    vtl_tensor_release(y);
    y = NULL;
  }
  vtl_tensor_release(c);
  return y;
}

/* ---- scaled dot-product attention ---- */

/* q (P,L,E), k (P,S,E), v (P,S,Ev) of one float dtype on one device; g (P,L,Ev) when given */
static vtl_status attention_check(const char *op, vtl_tensor *q, vtl_tensor *k, vtl_tensor *v, vtl_tensor *g) {
  char s1[96], s2[96], s3[96];
  vtl_tensor *all[4] = {q, k, v, g};
  const char *names[4] = {"query", "key", "value", "output gradient"};
  for (int i = 0; i < 4; i++)
    if (all[i] && all[i]->ndim != 3)
      return vtl_error_set(VTL_ERR_ARG, "%s: %s must be 3-D (batch*heads, length, dim), got shape %s", op, names[i],
                           shape_str(all[i]->shape, all[i]->ndim, s1, sizeof s1));
  if (check_devices(op, all, 4)) return vtl_error_status();
  if (check_float_half(op, "query", q)) return vtl_error_status();
  for (int i = 1; i < 4; i++)
    if (all[i] && all[i]->dtype != q->dtype)
      return vtl_error_set(VTL_ERR_ARG, "%s: query and %s must have the same dtype, got %s and %s", op, names[i],
                           vtl_dtype_name(q->dtype), vtl_dtype_name(all[i]->dtype));
  if (k->shape[0] != q->shape[0] || v->shape[0] != q->shape[0] || k->shape[2] != q->shape[2] ||
      v->shape[1] != k->shape[1])
    return vtl_error_set(VTL_ERR_ARG, "%s: shapes do not match: query %s, key %s, value %s (expected (P,L,E), (P,S,E), "
                         "(P,S,Ev))", op, shape_str(q->shape, 3, s1, sizeof s1), shape_str(k->shape, 3, s2, sizeof s2),
                         shape_str(v->shape, 3, s3, sizeof s3));
  if (g && (g->shape[0] != q->shape[0] || g->shape[1] != q->shape[1] || g->shape[2] != v->shape[2]))
    return vtl_error_set(VTL_ERR_ARG, "%s: output gradient of shape %s does not match the output (%lld,%lld,%lld)", op,
                         shape_str(g->shape, 3, s1, sizeof s1), (long long)q->shape[0], (long long)q->shape[1],
                         (long long)v->shape[2]);
  if (!vtl_backend_get(vtl_tensor_device(q))->nn->attention_forward) {
    vtl_device_format(vtl_tensor_device(q), s1, sizeof s1);
    return vtl_error_set(VTL_ERR_ARG, "%s: no kernel on %s", op, s1);
  }
  return VTL_OK;
}

/* the dtype of the rows' log-sum-exp: f32, f64 for f64 data */
static vtl_dtype lse_dtype(vtl_dtype dt) { return dt == VTL_F64 ? VTL_F64 : VTL_F32; }

vtl_tensor *vtl_op_attention(vtl_tensor *q, vtl_tensor *k, vtl_tensor *v, double scale, bool causal,
                             vtl_tensor **save_lse) {
  static const char op[] = "attention";
  if (save_lse) *save_lse = NULL;
  if (attention_check(op, q, k, v, NULL)) return NULL;
  int64_t shape[3] = {q->shape[0], q->shape[1], v->shape[2]};
  vtl_tensor *qc = vtl_op_contiguous(q), *kc = qc ? vtl_op_contiguous(k) : NULL, *vc = kc ? vtl_op_contiguous(v) : NULL;
  vtl_tensor *y = vc ? new_like_shape(shape, 3, q->dtype, q) : NULL;
  vtl_tensor *lse = y ? new_like_shape(shape, 2, lse_dtype(q->dtype), q) : NULL;
  if (lse && nn_of(q)->attention_forward(qc, kc, vc, scale, causal, y, lse) != VTL_OK) {
    vtl_tensor_release(lse);
    lse = NULL;
  }
  vtl_tensor *ts[3] = {qc, kc, vc};
  release_all(ts, 3);
  if (!lse) { vtl_tensor_release(y); return NULL; }
  if (save_lse) *save_lse = lse;
  else vtl_tensor_release(lse);
  return y;
}

vtl_status vtl_op_attention_backward(vtl_tensor *g, vtl_tensor *q, vtl_tensor *k, vtl_tensor *v, vtl_tensor *out,
                                     vtl_tensor *lse, double scale, bool causal, vtl_tensor **dq, vtl_tensor **dk,
                                     vtl_tensor **dv) {
  static const char op[] = "attention_backward";
  *dq = *dk = *dv = NULL;
  if (attention_check(op, q, k, v, g)) return vtl_error_status();
  if (out->dtype != q->dtype || out->ndim != 3 || memcmp(out->shape, g->shape, sizeof(int64_t) * 3) != 0 ||
      lse->dtype != lse_dtype(q->dtype) || lse->ndim != 2 || lse->shape[0] != q->shape[0] || lse->shape[1] != q->shape[1])
    return vtl_error_set(VTL_ERR_ARG, "%s: the saved output or log-sum-exp does not match the inputs", op);
  vtl_tensor *c[6] = {vtl_op_contiguous(g), vtl_op_contiguous(q), vtl_op_contiguous(k), vtl_op_contiguous(v),
                      vtl_op_contiguous(out), vtl_op_contiguous(lse)};
  bool ok = true;
  for (int i = 0; i < 6; i++) ok = ok && c[i];
  vtl_tensor *gq = ok ? new_like_shape(q->shape, 3, q->dtype, q) : NULL;
  vtl_tensor *gk = gq ? new_like_shape(k->shape, 3, q->dtype, q) : NULL;
  vtl_tensor *gv = gk ? new_like_shape(v->shape, 3, q->dtype, q) : NULL;
  vtl_status st = !gv ? vtl_error_status()
                      : nn_of(q)->attention_backward(c[0], c[1], c[2], c[3], c[4], c[5], scale, causal, gq, gk, gv);
  release_all(c, 6);
  if (st != VTL_OK) {
    vtl_tensor *gs[3] = {gq, gk, gv};
    release_all(gs, 3);
    return st;
  }
  *dq = gq;
  *dk = gk;
  *dv = gv;
  return VTL_OK;
}

/* saved: q, k, v, out, lse; f[0]: scale; i[0]: causal */
static vtl_status attention_bw(vtl_node *nd, vtl_tensor *gout, vtl_tensor **gin) {
  vtl_tensor *t[5];
  for (int i = 0; i < 5; i++) {
    t[i] = vtl_ag_saved(nd, i);
    if (!t[i]) return vtl_error_status();
  }
  vtl_tensor *d[3];
  vtl_status st = vtl_op_attention_backward(gout, t[0], t[1], t[2], t[3], t[4], nd->f[0], nd->i[0] != 0, &d[0], &d[1],
                                            &d[2]);
  if (st != VTL_OK) return st;
  for (int i = 0; i < 3; i++) {
    if (nd->needs[i]) gin[i] = d[i];
    else vtl_tensor_release(d[i]);
  }
  return VTL_OK;
}

static vtl_tensor *fn_attention(vtl_tensor *q, vtl_tensor *k, vtl_tensor *v, double scale, bool causal) {
  vtl_tensor *in[3] = {q, k, v}, *lse = NULL;
  bool needs = vtl_ag_needs(in, 3);
  vtl_tensor *y = vtl_op_attention(q, k, v, scale, causal, needs ? &lse : NULL);
  if (!y || !needs) return y;
  vtl_node *nd = vtl_ag_node("AttentionBackward", attention_bw, in, 3);
  if (!nd) {
    vtl_tensor_release(y);
    vtl_tensor_release(lse);
    return NULL;
  }
  for (int i = 0; i < 3; i++) vtl_ag_save(nd, in[i]);
  vtl_ag_save(nd, y);
  vtl_ag_save(nd, lse);
  vtl_tensor_release(lse);
  nd->f[0] = scale;
  nd->i[0] = causal;
  if (!vtl_ag_attach(y, nd)) { vtl_tensor_release(y); return NULL; }
  return y;
}

vtl_tensor *vtl_fn_attention(vtl_tensor *q, vtl_tensor *k, vtl_tensor *v, double scale, bool causal) {
  vtl_tensor *in[3] = {q, k, v};
  bool cast = false;
  for (int i = 0; i < 3; i++) cast = cast || vtl_autocast_casts(in[i]);
  for (int i = 0; cast && i < 3; i++) cast = in[i]->dtype != VTL_F64 && vtl_dtype_is_float(in[i]->dtype);
  if (!cast) return fn_attention(q, k, v, scale, causal);
  vtl_tensor *l[3] = {vtl_autocast_low(q), NULL, NULL};
  l[1] = l[0] ? vtl_autocast_low(k) : NULL;
  l[2] = l[1] ? vtl_autocast_low(v) : NULL;
  vtl_tensor *y = l[2] ? fn_attention(l[0], l[1], l[2], scale, causal) : NULL;
  release_all(l, 3);
  return y;
}

/* ---- attention on the packed projection, differentiable ---- */
/* qkv (B, N, 3*H*D) -> (B, N, H*D) with one copy on each side of the attention kernel: the
   heads of q, k and v gathered into one (3, B*H, N, D) tensor whose slices the kernel reads as
   they are, and its (B*H, N, D) output laid back out as (B, N, H*D). The backward pass writes
   the three input gradients into the slices of one tensor and lays it out as qkv once, where
   separate views of qkv would each cost a full-size gradient and a sum. */

/* t (3, P, N, D) contiguous -> its slice i, a contiguous (P, N, D) view */
static vtl_tensor *slice3(vtl_tensor *t, int i) { return vtl_op_select(t, 0, i); }

/* t reshaped to `in` (nin dims), its dims permuted by perm, laid out contiguously and viewed as
   `out` (nout dims): one copy */
static vtl_tensor *relayout(vtl_tensor *t, const int64_t *in, int nin, const int *perm, const int64_t *out, int nout) {
  vtl_tensor *v = vtl_op_reshape(t, in, nin), *p = v ? vtl_op_permute(v, perm, nin) : NULL;
  vtl_tensor *c = p ? vtl_op_contiguous(p) : NULL, *r = c ? vtl_op_view(c, out, nout) : NULL;
  vtl_tensor *ts[3] = {v, p, c};
  release_all(ts, 3);
  return r;
}

/* qkv (B, N, 3*H*D) -> (3, B*H, N, D) */
static vtl_tensor *qkv_heads(vtl_tensor *qkv, int64_t H) {
  int64_t B = qkv->shape[0], N = qkv->shape[1], D = qkv->shape[2] / (3 * H);
  int64_t s5[5] = {B, N, 3, H, D}, s4[4] = {3, B * H, N, D};
  static const int perm[5] = {2, 0, 3, 1, 4};
  return relayout(qkv, s5, 5, perm, s4, 4);
}

/* t (3, B*H, N, D) -> (B, N, 3*H*D): the inverse of qkv_heads */
static vtl_tensor *heads_qkv(vtl_tensor *t, int64_t B, int64_t H) {
  int64_t N = t->shape[2], D = t->shape[3], s5[5] = {3, B, H, N, D}, s3[3] = {B, N, 3 * H * D};
  static const int perm[5] = {1, 3, 0, 2, 4};
  return relayout(t, s5, 5, perm, s3, 3);
}

/* the heads' outputs (B*H, N, D) -> (B, N, H*D) (merge), and a gradient back (split) */
static const int swap12[4] = {0, 2, 1, 3};
static vtl_tensor *heads_merge(vtl_tensor *o, int64_t B, int64_t H) {
  int64_t N = o->shape[1], D = o->shape[2], s4[4] = {B, H, N, D}, s3[3] = {B, N, H * D};
  return relayout(o, s4, 4, swap12, s3, 3);
}
static vtl_tensor *heads_split(vtl_tensor *g, int64_t H) {
  int64_t B = g->shape[0], N = g->shape[1], D = g->shape[2] / H, s4[4] = {B, N, H, D}, s3[3] = {B * H, N, D};
  return relayout(g, s4, 4, swap12, s3, 3);
}

/* the forward pass; *heads, *out and *lse (when heads is given): what the backward pass needs */
static vtl_tensor *attention_qkv_run(vtl_tensor *qkv, int64_t H, double scale, vtl_tensor **heads, vtl_tensor **out,
                                     vtl_tensor **lse) {
  vtl_tensor *t = qkv_heads(qkv, H);
  vtl_tensor *q = t ? slice3(t, 0) : NULL, *k = q ? slice3(t, 1) : NULL, *v = k ? slice3(t, 2) : NULL;
  vtl_tensor *o = v ? vtl_op_attention(q, k, v, scale, false, heads ? lse : NULL) : NULL;
  vtl_tensor *y = o ? heads_merge(o, qkv->shape[0], H) : NULL;
  vtl_tensor *ts[3] = {q, k, v};
  release_all(ts, 3);
  if (y && heads) {
    *heads = t;
    *out = o;
    return y;
  }
  if (heads && *lse) {
    vtl_tensor_release(*lse);
    *lse = NULL;
  }
  vtl_tensor_release(t);
  vtl_tensor_release(o);
  return y;
}

/* saved: heads (3, P, N, D), out (P, N, D), lse (P, N); f[0]: scale; i[0]: heads, i[1]: B */
static vtl_status attention_qkv_bw(vtl_node *nd, vtl_tensor *g, vtl_tensor **gin) {
  vtl_tensor *t = vtl_ag_saved(nd, 0), *o = vtl_ag_saved(nd, 1), *lse = vtl_ag_saved(nd, 2);
  if (!t || !o || !lse) return vtl_error_status();
  vtl_tensor *gh = heads_split(g, nd->i[0]);
  vtl_tensor *gt = gh ? new_like_shape(t->shape, 4, t->dtype, t) : NULL;
  vtl_tensor *s[6] = {NULL, NULL, NULL, NULL, NULL, NULL}; /* q, k, v, gq, gk, gv */
  bool ok = gt != NULL;
  for (int i = 0; ok && i < 3; i++) ok = (s[i] = slice3(t, i)) && (s[3 + i] = slice3(gt, i));
  vtl_status st = !ok ? vtl_error_status()
                      : attention_check("attention_backward", s[0], s[1], s[2], gh) != VTL_OK
                          ? vtl_error_status()
                          : nn_of(t)->attention_backward(gh, s[0], s[1], s[2], o, lse, nd->f[0], false, s[3], s[4], s[5]);
  release_all(s, 6);
  vtl_tensor_release(gh);
  if (st == VTL_OK) {
    gin[0] = heads_qkv(gt, nd->i[1], nd->i[0]);
    if (!gin[0]) st = vtl_error_status();
  }
  vtl_tensor_release(gt);
  return st;
}

vtl_tensor *vtl_fn_attention_qkv(vtl_tensor *qkv, int64_t heads, double scale) {
  if (qkv_check(qkv, heads)) return NULL;
  if (vtl_autocast_casts(qkv) && qkv->dtype != VTL_F64) {
    vtl_tensor *low = vtl_autocast_low(qkv);
    vtl_tensor *y = low ? vtl_fn_attention_qkv(low, heads, scale) : NULL;
    vtl_tensor_release(low);
    return y;
  }
  bool needs = vtl_ag_needs(&qkv, 1);
  if (!needs && vtl_tensor_device(qkv).type == VTL_CPU) return vtl_op_attention_qkv(qkv, heads, scale);
  if (!needs) return attention_qkv_run(qkv, heads, scale, NULL, NULL, NULL);
  vtl_tensor *t = NULL, *o = NULL, *lse = NULL;
  vtl_tensor *y = attention_qkv_run(qkv, heads, scale, &t, &o, &lse);
  vtl_node *nd = y ? vtl_ag_node("AttentionQKVBackward", attention_qkv_bw, &qkv, 1) : NULL;
  if (nd) {
    vtl_ag_save(nd, t);
    vtl_ag_save(nd, o);
    vtl_ag_save(nd, lse);
    nd->f[0] = scale;
    nd->i[0] = heads;
    nd->i[1] = qkv->shape[0];
  }
  vtl_tensor *ts[3] = {t, o, lse};
  release_all(ts, 3);
  if (!nd || !vtl_ag_attach(y, nd)) {
    vtl_tensor_release(y);
    return NULL;
  }
  return y;
}

/* the computed gradients to the caller's slots, or all released on failure */
static vtl_status hand_grads(vtl_status st, vtl_tensor *rx, vtl_tensor *rw, vtl_tensor *rb, vtl_tensor **gx,
                             vtl_tensor **gw, vtl_tensor **gb) {
  if (st != VTL_OK) {
    vtl_tensor_release(rx);
    vtl_tensor_release(rw);
    vtl_tensor_release(rb);
    return st;
  }
  if (gx) *gx = rx;
  if (gw) *gw = rw;
  if (gb) *gb = rb;
  return VTL_OK;
}

/* half gradients computed in f32 and rounded to the half dtype */
static vtl_status conv2d_backward_f32(vtl_tensor *gy, vtl_tensor *x, vtl_tensor *w, const vtl_conv2d_params *p,
                                      const vtl_conv2d_shape *sh, vtl_tensor **gx, vtl_tensor **gw, vtl_tensor **gb) {
  vtl_conv2d_shape s = *sh;
  bool fail = false;
  vtl_tensor *gyf = up(gy, &fail), *xf = up(x, &fail), *wf = up(w, &fail);
  vtl_tensor *rx = NULL, *rw = NULL, *rb = NULL;
  vtl_status st = fail ? vtl_error_status()
                       : vtl_op_conv2d_backward(gyf, xf, wf, p, gx ? &rx : NULL, gw ? &rw : NULL, gb ? &rb : NULL);
  vtl_tensor_release(gyf);
  vtl_tensor_release(xf);
  vtl_tensor_release(wf);
  if (st == VTL_OK) {
    rx = down(rx, s.dtype);
    rw = down(rw, s.dtype);
    rb = down(rb, s.dtype);
    if ((gx && !rx) || (gw && !rw) || (gb && !rb)) st = vtl_error_status();
  }
  return hand_grads(st, rx, rw, rb, gx, gw, gb);
}

/* the backend's backward kernels on contiguous operands, or on channels-last x, gy and gx when
   the forward ran so */
static vtl_status conv2d_backward_layout(vtl_tensor *gy, vtl_tensor *x, vtl_tensor *w, const vtl_conv2d_shape *sh,
                                         bool cl, vtl_tensor **gx, vtl_tensor **gw, vtl_tensor **gb);

static vtl_status conv2d_backward_run(vtl_tensor *gy, vtl_tensor *x, vtl_tensor *w, const vtl_conv2d_shape *sh,
                                      vtl_tensor **gx, vtl_tensor **gw, vtl_tensor **gb) {
  bool cl = conv_cl(x, vtl_tensor_keeps_channels_last(gy));
  vtl_status st = conv2d_backward_layout(gy, x, w, sh, cl, gx, gw, gb);
  if (st == VTL_OK || !cl || vtl_tensor_device(x).type == VTL_CPU) return st;
  /* a device library without a channels-last kernel for this case: the planar ones, the input
     gradient relaid out */
  vtl_tensor *px = NULL;
  st = conv2d_backward_layout(gy, x, w, sh, false, gx ? &px : NULL, gw, gb);
  if (st == VTL_OK && gx) {
    *gx = vtl_op_contiguous_channels_last(px);
    if (!*gx) st = vtl_error_status();
  }
  vtl_tensor_release(px);
  return st;
}

static vtl_status conv2d_backward_layout(vtl_tensor *gy, vtl_tensor *x, vtl_tensor *w, const vtl_conv2d_shape *sh,
                                         bool cl, vtl_tensor **gx, vtl_tensor **gw, vtl_tensor **gb) {
  vtl_conv2d_shape s = *sh;
  s.x_cl = s.y_cl = cl;
  vtl_tensor *in[3] = {cl ? NULL : gy, gx ? w : NULL, gw && !cl ? x : NULL}, *c[3];
  if (!contig(in, c, 3)) return vtl_error_status();
  if (cl && (!(c[0] = vtl_op_contiguous_channels_last(gy)) || (gw && !(c[2] = vtl_op_contiguous_channels_last(x))))) {
    release_all(c, 3);
    return vtl_error_status();
  }
  vtl_tensor *rx = NULL, *rw = NULL, *rb = NULL;
  vtl_status st = VTL_OK;
  if (gx) {
    rx = cl ? vtl_tensor_empty_channels_last(x->shape, s.dtype, vtl_tensor_device(x))
            : new_like_shape(x->shape, 4, s.dtype, x);
    st = rx ? nn_of(x)->conv2d_backward_data(&s, c[0], c[1], rx) : vtl_error_status();
  }
  if (st == VTL_OK && gw) {
    int64_t kshape[1] = {s.K};
    rw = new_like_shape(w->shape, 4, s.dtype, x);
    rb = gb && rw ? new_like_shape(kshape, 1, s.dtype, x) : NULL;
    st = rw && (!gb || rb) ? nn_of(x)->conv2d_backward_weight(&s, c[0], c[2], rw, rb) : vtl_error_status();
  } else if (st == VTL_OK && gb) { /* bias only: the sum of gy over (N, OH, OW) */
    rb = vtl_op_reduce(VTL_RED_SUM, c[0], 1u << 0 | 1u << 2 | 1u << 3, false, 0, NULL);
    if (!rb) st = vtl_error_status();
  }
  release_all(c, 3);
  return hand_grads(st, rx, rw, rb, gx, gw, gb);
}

vtl_status vtl_op_conv2d_backward(vtl_tensor *gy, vtl_tensor *x, vtl_tensor *w, const vtl_conv2d_params *p,
                                  vtl_tensor **gx, vtl_tensor **gw, vtl_tensor **gb) {
  vtl_conv2d_shape s;
  if (conv2d_check("conv2d_backward", x, w, NULL, gy, p, &s)) return vtl_error_status();
  if (!is_half(s.dtype)) return conv2d_backward_run(gy, x, w, &s, gx, gw, gb);
  /* the device's own half kernels where it has them, else (or if they fail) in f32 */
  if (nn_of(x)->conv_half && conv2d_backward_run(gy, x, w, &s, gx, gw, gb) == VTL_OK) return VTL_OK;
  return conv2d_backward_f32(gy, x, w, p, &s, gx, gw, gb);
}

/* ---- autograd ---- */

static void conv2d_params_store(vtl_node *nd, const vtl_conv2d_params *p) {
  for (int d = 0; d < 2; d++) {
    nd->i[0 + d] = p->stride[d];
    nd->i[2 + d] = p->pad[d];
    nd->i[4 + d] = p->pad_end[d];
    nd->i[6 + d] = p->dilation[d];
  }
  nd->i[8] = p->groups;
  nd->i[9] = p->channels_last;
}

static vtl_conv2d_params conv2d_params_load(const vtl_node *nd) {
  vtl_conv2d_params p;
  for (int d = 0; d < 2; d++) {
    p.stride[d] = nd->i[0 + d];
    p.pad[d] = nd->i[2 + d];
    p.pad_end[d] = nd->i[4 + d];
    p.dilation[d] = nd->i[6 + d];
  }
  p.groups = nd->i[8];
  p.channels_last = nd->i[9] != 0;
  return p;
}

static vtl_status conv2d_bw(vtl_node *nd, vtl_tensor *gout, vtl_tensor **gin) {
  vtl_conv2d_params p = conv2d_params_load(nd);
  bool has_bias = nd->ninputs > 2;
  return vtl_op_conv2d_backward(gout, nd->saved[0], nd->saved[1], &p, nd->needs[0] ? &gin[0] : NULL,
                                nd->needs[1] ? &gin[1] : NULL, has_bias && nd->needs[2] ? &gin[2] : NULL);
}

static vtl_tensor *fn_conv2d(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, const vtl_conv2d_params *p);

vtl_tensor *vtl_fn_conv2d(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, const vtl_conv2d_params *p) {
  vtl_conv2d_post none = {0};
  return vtl_fn_conv2d_post(x, w, b, p, &none);
}

static vtl_tensor *fn_conv2d(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, const vtl_conv2d_params *p) {
  vtl_tensor *y = vtl_op_conv2d(x, w, b, p);
  vtl_tensor *in[3] = {x, w, b};
  int n = b ? 3 : 2;
  if (!y || !vtl_ag_needs(in, n)) return y;
  vtl_node *nd = vtl_ag_node("Conv2dBackward", conv2d_bw, in, n);
  if (!nd) { vtl_tensor_release(y); return NULL; }
  vtl_ag_save(nd, x);
  vtl_ag_save(nd, w);
  conv2d_params_store(nd, p);
  return vtl_ag_attach(y, nd);
}

static vtl_tensor *fn_conv2d_post(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, const vtl_conv2d_params *p,
                                  const vtl_conv2d_post *post, bool mixed) {
  vtl_tensor *in[4] = {x, w, b, post->add};
  if (!vtl_ag_needs(in, 4)) {
    bool plain = !post->add && !post->has_act && !post->pack && !mixed;
    return plain ? vtl_op_conv2d(x, w, b, p) : conv2d_post_run(x, w, b, p, post, mixed);
  }
  vtl_conv2d_shape s;
  if (conv2d_check("conv2d", x, w, b, NULL, p, &s) || post_check(&s, x, post)) return NULL;
  if (!post->add && !post->has_act) return fn_conv2d(x, w, b, p);
  return post_compose(fn_conv2d(x, w, b, p), post, true);
}

vtl_tensor *vtl_fn_conv2d_post(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, const vtl_conv2d_params *p,
                               const vtl_conv2d_post *post) {
  if (!ac_active(x)) return fn_conv2d_post(x, w, b, p, post, false);
  vtl_tensor *in[4] = {x, w, b, post->add};
  bool keep = !vtl_ag_needs(in, 4) && ac_keep_weights(x, w, b);
  ac_args a;
  vtl_tensor *y = NULL;
  if (ac_cast(&a, x, w, b, post->add, keep)) {
    vtl_conv2d_post q = *post;
    q.add = a.add;
    y = fn_conv2d_post(a.x, a.w, a.b, p, &q, keep);
  }
  ac_release(&a);
  return y;
}

/* ======================================================================================
 * pooling
 * ====================================================================================== */

/* PyTorch's pooling output size (floor or ceil mode; a window must start inside the input or
   its left padding). */
static int64_t pool_out(int64_t in, int64_t k, int64_t pad, int64_t stride, int64_t dil, bool ceil_mode) {
  int64_t num = in + 2 * pad - dil * (k - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  int64_t o = (num >= 0 ? num / stride : -((-num + stride - 1) / stride)) + 1;
  if (ceil_mode && (o - 1) * stride >= in + pad) o--;
  return o;
}

static vtl_status pool_input_check(const char *op, vtl_tensor *x) {
  char s1[96];
  if (x->ndim != 3 && x->ndim != 4)
    return vtl_error_set(VTL_ERR_ARG, "%s: input must be 3-D (C,H,W) or 4-D (N,C,H,W), got shape %s", op,
                         shape_str(x->shape, x->ndim, s1, sizeof s1));
  if (check_devices(op, &x, 1) || check_float_half(op, "input", x)) return vtl_error_status();
  int nd = x->ndim;
  for (int d = nd - 3; d < nd; d++)
    if (x->shape[d] < 1)
      return vtl_error_set(VTL_ERR_ARG, "%s: input must have non-zero channels, height and width, got shape %s", op,
                           shape_str(x->shape, nd, s1, sizeof s1));
  return VTL_OK;
}

/* window checks and the output size of a max/avg pool over an input plane (H, W) */
static vtl_status pool_check(const char *op, const int64_t *in_shape, int in_ndim, const vtl_pool2d_params *p,
                             vtl_pool2d_shape *s, vtl_dtype dt) {
  char s1[96];
  const int64_t *k = p->kernel, *st = p->stride, *pd = p->pad, *dl = p->dilation;
  if (k[0] < 1 || k[1] < 1)
    return vtl_error_set(VTL_ERR_ARG, "%s: kernel_size must be positive, got {%lld,%lld}", op, (long long)k[0],
                         (long long)k[1]);
  if (st[0] < 1 || st[1] < 1)
    return vtl_error_set(VTL_ERR_ARG, "%s: stride must be positive, got {%lld,%lld}", op, (long long)st[0],
                         (long long)st[1]);
  if (dl[0] < 1 || dl[1] < 1)
    return vtl_error_set(VTL_ERR_ARG, "%s: dilation must be positive, got {%lld,%lld}", op, (long long)dl[0],
                         (long long)dl[1]);
  if (pd[0] < 0 || pd[1] < 0)
    return vtl_error_set(VTL_ERR_ARG, "%s: padding must be non-negative, got {%lld,%lld}", op, (long long)pd[0],
                         (long long)pd[1]);
  if (pd[0] > k[0] / 2 || pd[1] > k[1] / 2)
    return vtl_error_set(VTL_ERR_ARG, "%s: padding {%lld,%lld} must be at most half the kernel size {%lld,%lld}", op,
                         (long long)pd[0], (long long)pd[1], (long long)k[0], (long long)k[1]);
  int64_t H = in_shape[in_ndim - 2], W = in_shape[in_ndim - 1];
  int64_t OH = pool_out(H, k[0], pd[0], st[0], dl[0], p->ceil_mode);
  int64_t OW = pool_out(W, k[1], pd[1], st[1], dl[1], p->ceil_mode);
  if (OH < 1 || OW < 1)
    return vtl_error_set(VTL_ERR_ARG, "%s: input of shape %s is too small for kernel {%lld,%lld} (dilation {%lld,%lld}, "
                         "padding {%lld,%lld}): output would be %lldx%lld", op,
                         shape_str(in_shape, in_ndim, s1, sizeof s1), (long long)k[0], (long long)k[1],
                         (long long)dl[0], (long long)dl[1], (long long)pd[0], (long long)pd[1], (long long)OH,
                         (long long)OW);
  int64_t P = 1;
  for (int d = 0; d < in_ndim - 2; d++) P *= in_shape[d];
  *s = (vtl_pool2d_shape){.dtype = dt, .P = P, .H = H, .W = W, .OH = OH, .OW = OW,
                          .count_include_pad = p->count_include_pad, .divisor_override = p->divisor_override};
  for (int d = 0; d < 2; d++) {
    s->kernel[d] = k[d];
    s->stride[d] = st[d];
    s->pad[d] = pd[d];
    s->dilation[d] = dl[d];
  }
  return VTL_OK;
}

/* output shape: in_shape with the last two dims replaced */
static void out_shape(const int64_t *in_shape, int nd, int64_t oh, int64_t ow, int64_t *shape) {
  memcpy(shape, in_shape, (size_t)nd * sizeof *shape);
  shape[nd - 2] = oh;
  shape[nd - 1] = ow;
}

/* Checks a gradient's dtype, device, and shape against the expected shape. */
static vtl_status grad_check(const char *op, vtl_tensor *gy, const int64_t *want, int nd) {
  char s1[96], s2[96];
  if (check_devices(op, &gy, 1) || check_float(op, "output gradient", gy)) return vtl_error_status();
  if (gy->ndim != nd || memcmp(gy->shape, want, (size_t)nd * sizeof *want) != 0)
    return vtl_error_set(VTL_ERR_ARG, "%s: output gradient must have shape %s, got %s", op,
                         shape_str(want, nd, s1, sizeof s1), shape_str(gy->shape, gy->ndim, s2, sizeof s2));
  return VTL_OK;
}

static vtl_status in_shape_check(const char *op, const int64_t *in_shape, int in_ndim) {
  if (in_ndim != 3 && in_ndim != 4)
    return vtl_error_set(VTL_ERR_ARG, "%s: input shape must be 3-D (C,H,W) or 4-D (N,C,H,W), got %d-D", op, in_ndim);
  for (int d = 0; d < in_ndim; d++)
    if (in_shape[d] < (d < in_ndim - 3 ? 0 : 1))
      return vtl_error_set(VTL_ERR_ARG, "%s: input shape has a bad size %lld in dim %d", op, (long long)in_shape[d],
                           d + 1);
  return VTL_OK;
}

/* runs a pooling forward (max kinds write the indices too when asked) */
static vtl_tensor *pool_run(vtl_tensor *x, const vtl_pool2d_shape *s, vtl_pool_kind k, vtl_tensor **indices) {
  if (is_half(x->dtype)) { /* pooled in f32 (exact for max), rounded to the half dtype */
    bool fail = false;
    vtl_tensor *f = up(x, &fail);
    vtl_pool2d_shape c = *s;
    c.dtype = VTL_F32;
    vtl_tensor *y = fail ? NULL : down(pool_run(f, &c, k, indices), x->dtype);
    vtl_tensor_release(f);
    return y;
  }
  int64_t shape[4];
  out_shape(x->shape, x->ndim, s->OH, s->OW, shape);
  /* a channels-last CPU input (an inference model's activations) keeps its layout */
  if ((k == VTL_POOL_MAX || (k == VTL_POOL_ADAPTIVE_AVG && !indices)) && vtl_tensor_device(x).type == VTL_CPU &&
      vtl_tensor_keeps_channels_last(x)) {
    vtl_tensor *y = vtl_tensor_empty_channels_last(shape, x->dtype, vtl_tensor_device(x));
    vtl_tensor *ix = y && indices ? vtl_tensor_empty_channels_last(shape, VTL_I64, vtl_tensor_device(x)) : NULL;
    if (!y || (indices && !ix)) {
      vtl_tensor_release(y);
      return NULL;
    }
    vtl_pool2d_shape c = *s;
    c.P = x->shape[0];
    if (k == VTL_POOL_MAX)
      vtl_cpu_max_pool2d_forward_cl(&c, x->shape[1], vtl_tensor_data(x), vtl_tensor_data(y),
                                    ix ? vtl_tensor_data(ix) : NULL);
    else vtl_cpu_adaptive_avg_pool2d_forward_cl(&c, x->shape[1], vtl_tensor_data(x), vtl_tensor_data(y));
    if (indices) *indices = ix;
    return y;
  }
  vtl_tensor *xc = vtl_op_contiguous(x);
  if (!xc) return NULL;
  vtl_tensor *y = new_like_shape(shape, x->ndim, x->dtype, x);
  vtl_tensor *ix = indices && y ? new_like_shape(shape, x->ndim, VTL_I64, x) : NULL;
  if (!y || (indices && !ix) || nn_of(x)->pool2d_forward(k, s, xc, y, ix) != VTL_OK) {
    vtl_tensor_release(xc);
    vtl_tensor_release(y);
    vtl_tensor_release(ix);
    return NULL;
  }
  vtl_tensor_release(xc);
  if (vtl_tensor_keeps_channels_last(x)) { /* the output (and its indices) take the input's layout */
    vtl_tensor *yc = vtl_op_contiguous_channels_last(y), *ic = yc && ix ? vtl_op_contiguous_channels_last(ix) : NULL;
    vtl_tensor_release(y);
    vtl_tensor_release(ix);
    if (!yc || (ix && !ic)) {
      vtl_tensor_release(yc);
      vtl_tensor_release(ic);
      return NULL;
    }
    y = yc;
    ix = ic;
  }
  if (indices) *indices = ix;
  return y;
}

vtl_tensor *vtl_op_max_pool2d(vtl_tensor *x, const vtl_pool2d_params *p, vtl_tensor **indices) {
  vtl_pool2d_shape s;
  if (pool_input_check("max_pool2d", x) || pool_check("max_pool2d", x->shape, x->ndim, p, &s, x->dtype)) return NULL;
  return pool_run(x, &s, VTL_POOL_MAX, indices);
}

/* gx of in_shape from gy scattered at indices (max and adaptive max pooling) */
static vtl_tensor *max_backward(const char *op, vtl_pool_kind kind, vtl_tensor *gy, vtl_tensor *indices,
                                const int64_t *in_shape, int in_ndim, const vtl_pool2d_params *p) {
  char s1[96], s2[96];
  if (in_shape_check(op, in_shape, in_ndim)) return NULL;
  vtl_tensor *both[2] = {gy, indices};
  if (check_devices(op, both, 2) || check_float(op, "output gradient", gy)) return NULL;
  if (gy->ndim != in_ndim || memcmp(gy->shape, in_shape, (size_t)(in_ndim - 2) * sizeof *in_shape) != 0)
    return vtl_error_set(VTL_ERR_ARG, "%s: output gradient of shape %s does not match the input shape %s", op,
                         shape_str(gy->shape, gy->ndim, s1, sizeof s1), shape_str(in_shape, in_ndim, s2, sizeof s2)),
           NULL;
  if (indices->dtype != VTL_I64)
    return vtl_error_set(VTL_ERR_ARG, "%s: indices must be i64, got %s", op, vtl_dtype_name(indices->dtype)), NULL;
  if (indices->ndim != gy->ndim || memcmp(indices->shape, gy->shape, (size_t)gy->ndim * sizeof *gy->shape) != 0)
    return vtl_error_set(VTL_ERR_ARG, "%s: indices of shape %s must have the output gradient's shape %s", op,
                         shape_str(indices->shape, indices->ndim, s1, sizeof s1),
                         shape_str(gy->shape, gy->ndim, s2, sizeof s2)), NULL;
  vtl_pool2d_shape s = {.dtype = gy->dtype, .H = in_shape[in_ndim - 2], .W = in_shape[in_ndim - 1],
                        .OH = gy->shape[in_ndim - 2], .OW = gy->shape[in_ndim - 1], .P = 1};
  for (int d = 0; d < in_ndim - 2; d++) s.P *= in_shape[d];
  if (p) /* the window, which device kernels use to find the outputs that can reach an input */
    for (int d = 0; d < 2; d++) {
      s.kernel[d] = p->kernel[d];
      s.stride[d] = p->stride[d];
      s.pad[d] = p->pad[d];
      s.dilation[d] = p->dilation[d];
    }
  /* a channels-last gradient (on the CPU) is scattered in that layout */
  bool cl = in_ndim == 4 && kind == VTL_POOL_MAX && vtl_tensor_device(gy).type == VTL_CPU &&
            vtl_tensor_keeps_channels_last(gy);
  vtl_tensor *g = vtl_op_contiguous(gy), *ix = NULL;
  if (cl) {
    vtl_tensor_release(g);
    g = vtl_tensor_retain(gy);
    ix = vtl_op_contiguous_channels_last(indices);
  } else if (g) {
    ix = vtl_op_contiguous(indices);
  }
  if (!ix) { vtl_tensor_release(g); return NULL; }
  /* indices come from Lua too: a position outside the plane would write out of bounds (device
     kernels skip such positions instead of reading the indices back) */
  bool host = vtl_tensor_device(ix).type == VTL_CPU;
  const int64_t *iv = host ? vtl_tensor_data(ix) : NULL;
  int64_t n = host ? vtl_tensor_numel(ix) : 0, plane = s.H * s.W, bad = -1;
  for (int64_t i = 0; i < n && bad < 0; i++)
    if (iv[i] < 0 || iv[i] >= plane) bad = i;
  if (bad >= 0) {
    vtl_error_set(VTL_ERR_ARG, "%s: index %lld at position %lld is outside the %lldx%lld input plane", op,
                  (long long)iv[bad], (long long)bad, (long long)s.H, (long long)s.W);
    vtl_tensor_release(g);
    vtl_tensor_release(ix);
    return NULL;
  }
  if (cl) {
    vtl_tensor *gx = vtl_tensor_empty_channels_last(in_shape, gy->dtype, vtl_tensor_device(gy));
    vtl_pool2d_shape c = s;
    c.P = in_shape[0];
    if (gx) vtl_cpu_max_pool2d_backward_cl(&c, in_shape[1], vtl_tensor_data(g), vtl_tensor_data(ix), vtl_tensor_data(gx));
    vtl_tensor_release(g);
    vtl_tensor_release(ix);
    return gx;
  }
  vtl_tensor *gx = new_like_shape(in_shape, in_ndim, gy->dtype, gy);
  if (gx && nn_of(gy)->pool2d_backward(kind, &s, g, ix, gx) != VTL_OK) {
    vtl_tensor_release(gx);
    gx = NULL;
  }
  vtl_tensor_release(g);
  vtl_tensor_release(ix);
  return gx;
}

vtl_tensor *vtl_op_max_pool2d_backward(vtl_tensor *gy, vtl_tensor *indices, const int64_t *in_shape, int in_ndim,
                                       const vtl_pool2d_params *p) {
  if (gy && is_half(gy->dtype)) {
    bool fail = false;
    vtl_tensor *f = up(gy, &fail);
    vtl_tensor *r = fail ? NULL : down(vtl_op_max_pool2d_backward(f, indices, in_shape, in_ndim, p), gy->dtype);
    vtl_tensor_release(f);
    return r;
  }
  if (p && (p->kernel[0] < 1 || p->kernel[1] < 1 || p->stride[0] < 1 || p->stride[1] < 1 || p->dilation[0] < 1 ||
            p->dilation[1] < 1 || p->pad[0] < 0 || p->pad[1] < 0))
    p = NULL; /* not a valid window: look at every output */
  return max_backward("max_pool2d_backward", VTL_POOL_MAX, gy, indices, in_shape, in_ndim, p);
}

vtl_tensor *vtl_op_adaptive_max_pool2d_backward(vtl_tensor *gy, vtl_tensor *indices, const int64_t *in_shape,
                                                int in_ndim) {
  if (gy && is_half(gy->dtype)) {
    bool fail = false;
    vtl_tensor *f = up(gy, &fail);
    vtl_tensor *r = fail ? NULL : down(vtl_op_adaptive_max_pool2d_backward(f, indices, in_shape, in_ndim), gy->dtype);
    vtl_tensor_release(f);
    return r;
  }
  return max_backward("adaptive_max_pool2d_backward", VTL_POOL_ADAPTIVE_MAX, gy, indices, in_shape, in_ndim, NULL);
}

static vtl_status avg_params_check(const char *op, const vtl_pool2d_params *p) {
  if (p->divisor_override < 0)
    return vtl_error_set(VTL_ERR_ARG, "%s: divisor_override must be positive, got %lld", op,
                         (long long)p->divisor_override);
  return VTL_OK;
}

/* avg pooling ignores dilation */
static vtl_pool2d_params avg_params(const vtl_pool2d_params *p) {
  vtl_pool2d_params q = *p;
  q.dilation[0] = q.dilation[1] = 1;
  return q;
}

vtl_tensor *vtl_op_avg_pool2d(vtl_tensor *x, const vtl_pool2d_params *p) {
  vtl_pool2d_shape s;
  vtl_pool2d_params q = avg_params(p);
  if (pool_input_check("avg_pool2d", x) || avg_params_check("avg_pool2d", p) ||
      pool_check("avg_pool2d", x->shape, x->ndim, &q, &s, x->dtype))
    return NULL;
  return pool_run(x, &s, VTL_POOL_AVG, NULL);
}

vtl_tensor *vtl_op_avg_pool2d_backward(vtl_tensor *gy, const int64_t *in_shape, int in_ndim,
                                       const vtl_pool2d_params *p) {
  if (gy && is_half(gy->dtype)) {
    bool fail = false;
    vtl_tensor *f = up(gy, &fail);
    vtl_tensor *r = fail ? NULL : down(vtl_op_avg_pool2d_backward(f, in_shape, in_ndim, p), gy->dtype);
    vtl_tensor_release(f);
    return r;
  }
  const char *op = "avg_pool2d_backward";
  vtl_pool2d_shape s;
  vtl_pool2d_params q = avg_params(p);
  if (in_shape_check(op, in_shape, in_ndim) || avg_params_check(op, p) ||
      pool_check(op, in_shape, in_ndim, &q, &s, gy->dtype))
    return NULL;
  int64_t shape[4];
  out_shape(in_shape, in_ndim, s.OH, s.OW, shape);
  if (grad_check(op, gy, shape, in_ndim)) return NULL;
  vtl_tensor *g = vtl_op_contiguous(gy);
  if (!g) return NULL;
  vtl_tensor *gx = new_like_shape(in_shape, in_ndim, gy->dtype, gy);
  if (gx && nn_of(gy)->pool2d_backward(VTL_POOL_AVG, &s, g, NULL, gx) != VTL_OK) {
    vtl_tensor_release(gx);
    gx = NULL;
  }
  vtl_tensor_release(g);
  return gx;
}

static vtl_status adaptive_check(const char *op, const int64_t *in_shape, int in_ndim, int64_t oh, int64_t ow,
                                 vtl_pool2d_shape *s, vtl_dtype dt) {
  if (oh < 0 || ow < 0)
    return vtl_error_set(VTL_ERR_ARG, "%s: output size must be non-negative, got {%lld,%lld}", op, (long long)oh,
                         (long long)ow);
  int64_t P = 1;
  for (int d = 0; d < in_ndim - 2; d++) P *= in_shape[d];
  *s = (vtl_pool2d_shape){.dtype = dt, .P = P, .H = in_shape[in_ndim - 2], .W = in_shape[in_ndim - 1], .OH = oh,
                          .OW = ow};
  return VTL_OK;
}

vtl_tensor *vtl_op_adaptive_avg_pool2d(vtl_tensor *x, int64_t oh, int64_t ow) {
  vtl_pool2d_shape s;
  if (pool_input_check("adaptive_avg_pool2d", x) ||
      adaptive_check("adaptive_avg_pool2d", x->shape, x->ndim, oh, ow, &s, x->dtype))
    return NULL;
  return pool_run(x, &s, VTL_POOL_ADAPTIVE_AVG, NULL);
}

vtl_tensor *vtl_op_adaptive_avg_pool2d_backward(vtl_tensor *gy, const int64_t *in_shape, int in_ndim) {
  if (gy && is_half(gy->dtype)) {
    bool fail = false;
    vtl_tensor *f = up(gy, &fail);
    vtl_tensor *r = fail ? NULL : down(vtl_op_adaptive_avg_pool2d_backward(f, in_shape, in_ndim), gy->dtype);
    vtl_tensor_release(f);
    return r;
  }
  const char *op = "adaptive_avg_pool2d_backward";
  vtl_pool2d_shape s;
  if (in_shape_check(op, in_shape, in_ndim)) return NULL;
  if (gy->ndim != in_ndim) {
    char s1[96], s2[96];
    return vtl_error_set(VTL_ERR_ARG, "%s: output gradient of shape %s does not match the input shape %s", op,
                         shape_str(gy->shape, gy->ndim, s1, sizeof s1), shape_str(in_shape, in_ndim, s2, sizeof s2)),
           NULL;
  }
  int64_t oh = gy->shape[in_ndim - 2], ow = gy->shape[in_ndim - 1], shape[4];
  out_shape(in_shape, in_ndim, oh, ow, shape);
  if (grad_check(op, gy, shape, in_ndim) || adaptive_check(op, in_shape, in_ndim, oh, ow, &s, gy->dtype)) return NULL;
  vtl_tensor *g = vtl_op_contiguous(gy);
  if (!g) return NULL;
  vtl_tensor *gx = new_like_shape(in_shape, in_ndim, gy->dtype, gy);
  if (gx && nn_of(gy)->pool2d_backward(VTL_POOL_ADAPTIVE_AVG, &s, g, NULL, gx) != VTL_OK) {
    vtl_tensor_release(gx);
    gx = NULL;
  }
  vtl_tensor_release(g);
  return gx;
}

vtl_tensor *vtl_op_adaptive_max_pool2d(vtl_tensor *x, int64_t oh, int64_t ow, vtl_tensor **indices) {
  vtl_pool2d_shape s;
  if (pool_input_check("adaptive_max_pool2d", x) ||
      adaptive_check("adaptive_max_pool2d", x->shape, x->ndim, oh, ow, &s, x->dtype))
    return NULL;
  return pool_run(x, &s, VTL_POOL_ADAPTIVE_MAX, indices);
}

/* ---- pooling autograd: node->i holds the input shape (i[0] = ndim, i[1..4]) then params ---- */

static void store_shape(vtl_node *nd, const vtl_tensor *x) {
  nd->i[0] = x->ndim;
  for (int d = 0; d < x->ndim; d++) nd->i[1 + d] = x->shape[d];
}

static void store_pool(vtl_node *nd, const vtl_pool2d_params *p) {
  for (int d = 0; d < 2; d++) {
    nd->i[5 + d] = p->kernel[d];
    nd->i[7 + d] = p->stride[d];
    nd->i[9 + d] = p->pad[d];
    nd->i[11 + d] = p->dilation[d];
  }
  nd->i[13] = p->ceil_mode;
  nd->i[14] = p->count_include_pad;
  nd->i[15] = p->divisor_override;
}

static vtl_pool2d_params load_pool(const vtl_node *nd) {
  vtl_pool2d_params p;
  for (int d = 0; d < 2; d++) {
    p.kernel[d] = nd->i[5 + d];
    p.stride[d] = nd->i[7 + d];
    p.pad[d] = nd->i[9 + d];
    p.dilation[d] = nd->i[11 + d];
  }
  p.ceil_mode = nd->i[13] != 0;
  p.count_include_pad = nd->i[14] != 0;
  p.divisor_override = nd->i[15];
  return p;
}

static vtl_status max_pool2d_bw(vtl_node *nd, vtl_tensor *gout, vtl_tensor **gin) {
  if (!nd->needs[0]) return VTL_OK;
  vtl_pool2d_params p = load_pool(nd);
  gin[0] = vtl_op_max_pool2d_backward(gout, nd->saved[0], &nd->i[1], (int)nd->i[0], &p);
  return gin[0] ? VTL_OK : vtl_error_status();
}

static vtl_status adaptive_max_pool2d_bw(vtl_node *nd, vtl_tensor *gout, vtl_tensor **gin) {
  if (!nd->needs[0]) return VTL_OK;
  gin[0] = vtl_op_adaptive_max_pool2d_backward(gout, nd->saved[0], &nd->i[1], (int)nd->i[0]);
  return gin[0] ? VTL_OK : vtl_error_status();
}

static vtl_status avg_pool2d_bw(vtl_node *nd, vtl_tensor *gout, vtl_tensor **gin) {
  if (!nd->needs[0]) return VTL_OK;
  vtl_pool2d_params p = load_pool(nd);
  gin[0] = vtl_op_avg_pool2d_backward(gout, &nd->i[1], (int)nd->i[0], &p);
  return gin[0] ? VTL_OK : vtl_error_status();
}

static vtl_status adaptive_avg_pool2d_bw(vtl_node *nd, vtl_tensor *gout, vtl_tensor **gin) {
  if (!nd->needs[0]) return VTL_OK;
  gin[0] = vtl_op_adaptive_avg_pool2d_backward(gout, &nd->i[1], (int)nd->i[0]);
  return gin[0] ? VTL_OK : vtl_error_status();
}

/* max-style forward with its indices saved for the backward; the caller's indices (if asked)
   are another reference to the same tensor */
static vtl_tensor *max_fn(const char *name, vtl_backward_fn bw, vtl_tensor *x, vtl_tensor *y, vtl_tensor *ix,
                          vtl_tensor **indices, const vtl_pool2d_params *p) {
  if (!y) return NULL;
  if (vtl_ag_needs(&x, 1)) {
    vtl_node *nd = vtl_ag_node(name, bw, &x, 1);
    if (!nd) {
      vtl_tensor_release(y);
      vtl_tensor_release(ix);
      return NULL;
    }
    vtl_ag_save(nd, ix);
    store_shape(nd, x);
    if (p) store_pool(nd, p);
    vtl_ag_attach(y, nd);
  }
  if (indices) *indices = ix;
  else vtl_tensor_release(ix);
  return y;
}

vtl_tensor *vtl_fn_max_pool2d(vtl_tensor *x, const vtl_pool2d_params *p, vtl_tensor **indices) {
  vtl_tensor *ix = NULL;
  bool want = indices || vtl_ag_needs(&x, 1);
  vtl_tensor *y = vtl_op_max_pool2d(x, p, want ? &ix : NULL);
  return max_fn("MaxPool2dBackward", max_pool2d_bw, x, y, ix, indices, p);
}

vtl_tensor *vtl_fn_adaptive_max_pool2d(vtl_tensor *x, int64_t oh, int64_t ow, vtl_tensor **indices) {
  vtl_tensor *ix = NULL;
  bool want = indices || vtl_ag_needs(&x, 1);
  vtl_tensor *y = vtl_op_adaptive_max_pool2d(x, oh, ow, want ? &ix : NULL);
  return max_fn("AdaptiveMaxPool2dBackward", adaptive_max_pool2d_bw, x, y, ix, indices, NULL);
}

vtl_tensor *vtl_fn_avg_pool2d(vtl_tensor *x, const vtl_pool2d_params *p) {
  vtl_tensor *y = vtl_op_avg_pool2d(x, p);
  if (!y || !vtl_ag_needs(&x, 1)) return y;
  vtl_node *nd = vtl_ag_node("AvgPool2dBackward", avg_pool2d_bw, &x, 1);
  if (!nd) { vtl_tensor_release(y); return NULL; }
  store_shape(nd, x);
  store_pool(nd, p);
  return vtl_ag_attach(y, nd);
}

vtl_tensor *vtl_fn_adaptive_avg_pool2d(vtl_tensor *x, int64_t oh, int64_t ow) {
  vtl_tensor *y = vtl_op_adaptive_avg_pool2d(x, oh, ow);
  if (!y || !vtl_ag_needs(&x, 1)) return y;
  vtl_node *nd = vtl_ag_node("AdaptiveAvgPool2dBackward", adaptive_avg_pool2d_bw, &x, 1);
  if (!nd) { vtl_tensor_release(y); return NULL; }
  store_shape(nd, x);
  return vtl_ag_attach(y, nd);
}
