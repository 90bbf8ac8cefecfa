/*
 * The CPU backend's nn table: thin wrappers that hand the tensors' buffers to the CPU kernels
 * of conv.c, pool.c, norm.c and activation.c. The arithmetic (and its order) is the kernels'
 * own, so the ops give the same bits as when they called the kernels directly.
 */
#include <math.h>
#include <stdlib.h>
#include "backend.h"

static void *dat(const vtl_tensor *t) { return t ? vtl_tensor_data(t) : NULL; }

static vtl_status conv2d_forward(const vtl_conv2d_shape *s, const vtl_tensor *x, const vtl_tensor *w,
                                 const vtl_tensor *b, vtl_tensor *y) {
  return vtl_cpu_conv2d_forward(s, dat(x), dat(w), dat(b), dat(y));
}

static vtl_status conv2d_forward_post(const vtl_conv2d_shape *s, const vtl_tensor *x, const vtl_tensor *w,
                                      const vtl_tensor *b, vtl_tensor *y, bool add, const vtl_conv2d_post *post) {
  return vtl_cpu_conv2d_forward_post(s, dat(x), dat(w), dat(b), dat(y), add, post, w->storage);
}

static vtl_status linear_forward_post(vtl_dtype dt, int64_t M, int64_t K, int64_t N, const vtl_tensor *x,
                                      const vtl_tensor *w, const vtl_tensor *b, vtl_tensor *y, bool add,
                                      const vtl_conv2d_post *post) {
  return vtl_cpu_linear_forward_post(dt, M, K, N, dat(x), dat(w), dat(b), dat(y), add, post, w->storage,
                                     w->dtype == VTL_F32 && x->dtype != VTL_F32);
}

static vtl_status conv2d_backward_data(const vtl_conv2d_shape *s, const vtl_tensor *gy, const vtl_tensor *w,
                                       vtl_tensor *gx) {
  return vtl_cpu_conv2d_backward_data(s, dat(gy), dat(w), dat(gx));
}

static vtl_status conv2d_backward_weight(const vtl_conv2d_shape *s, const vtl_tensor *gy, const vtl_tensor *x,
                                         vtl_tensor *gw, vtl_tensor *gb) {
  return vtl_cpu_conv2d_backward_weight(s, dat(gy), dat(x), dat(gw), dat(gb));
}

static vtl_status pool2d_forward(vtl_pool_kind kind, const vtl_pool2d_shape *s, const vtl_tensor *x, vtl_tensor *y,
                                 vtl_tensor *idx) {
  switch (kind) {
  case VTL_POOL_MAX: vtl_cpu_max_pool2d_forward(s, dat(x), dat(y), dat(idx)); break;
  case VTL_POOL_ADAPTIVE_MAX: vtl_cpu_adaptive_max_pool2d_forward(s, dat(x), dat(y), dat(idx)); break;
  case VTL_POOL_AVG: vtl_cpu_avg_pool2d_forward(s, dat(x), dat(y)); break;
  case VTL_POOL_ADAPTIVE_AVG: vtl_cpu_adaptive_avg_pool2d_forward(s, dat(x), dat(y)); break;
  }
  return VTL_OK;
}

static vtl_status pool2d_backward(vtl_pool_kind kind, const vtl_pool2d_shape *s, const vtl_tensor *gy,
                                  const vtl_tensor *idx, vtl_tensor *gx) {
  switch (kind) {
  case VTL_POOL_MAX:
  case VTL_POOL_ADAPTIVE_MAX: vtl_cpu_max_pool2d_backward(s, dat(gy), dat(idx), dat(gx)); break;
  case VTL_POOL_AVG: vtl_cpu_avg_pool2d_backward(s, dat(gy), dat(gx)); break;
  case VTL_POOL_ADAPTIVE_AVG: vtl_cpu_adaptive_avg_pool2d_backward(s, dat(gy), dat(gx)); break;
  }
  return VTL_OK;
}

static vtl_status batch_norm_stats(const vtl_tensor *x, int64_t N, int64_t C, int64_t S, bool training,
                                   double momentum, double eps, vtl_tensor *running_mean, vtl_tensor *running_var,
                                   vtl_tensor *mean, vtl_tensor *invstd) {
  double *m = dat(mean), *is = dat(invstd);
  /* the running statistics have their own dtype (f32 with half data) */
  vtl_dtype rdt = running_mean ? running_mean->dtype : x->dtype;
  size_t es = vtl_dtype_size(rdt);
  if (!training) {
    const char *rm = dat(running_mean), *rv = dat(running_var);
    for (int64_t c = 0; c < C; c++) {
      m[c] = vtl_load_as_double(rm + c * running_mean->strides[0] * (int64_t)es, rdt);
      is[c] = 1.0 / sqrt(vtl_load_as_double(rv + c * running_var->strides[0] * (int64_t)es, rdt) + eps);
    }
    return VTL_OK;
  }
  double *var = malloc((size_t)(C ? C : 1) * sizeof(double));
  if (!var) return vtl_error_set(VTL_ERR_OOM, "batch_norm: out of memory");
  vtl_status st = vtl_cpu_batch_norm_stats(x->dtype, dat(x), N, C, S, eps, m, is, var);
  if (st == VTL_OK && running_mean) {
    char *rm = dat(running_mean), *rv = dat(running_var);
    int64_t sm = running_mean->strides[0] * (int64_t)es, sv = running_var->strides[0] * (int64_t)es;
    double M = (double)(N * S);
    for (int64_t c = 0; c < C; c++) {
      double om = vtl_load_as_double(rm + c * sm, rdt), ov = vtl_load_as_double(rv + c * sv, rdt);
      vtl_store_from_double(rm + c * sm, rdt, (1 - momentum) * om + momentum * m[c]);
      vtl_store_from_double(rv + c * sv, rdt, (1 - momentum) * ov + momentum * var[c] * M / (M - 1));
    }
  }
  free(var);
  return st;
}

static vtl_status batch_norm_forward(const vtl_tensor *x, vtl_tensor *out, int64_t N, int64_t C, int64_t S,
                                     const vtl_tensor *mean, const vtl_tensor *invstd, const vtl_tensor *w,
                                     const vtl_tensor *b, const vtl_tensor *add, double cmin, double cmax) {
  return vtl_cpu_batch_norm_forward(x->dtype, dat(x), dat(out), N, C, S, dat(mean), dat(invstd), dat(w), dat(b),
                                    dat(add), cmin, cmax);
}

static vtl_status batch_norm_backward(const vtl_tensor *g, const vtl_tensor *x, int64_t N, int64_t C, int64_t S,
                                      const vtl_tensor *mean, const vtl_tensor *invstd, const vtl_tensor *w,
                                      bool training, vtl_tensor *dx, vtl_tensor *gw, vtl_tensor *gb,
                                      const vtl_tensor *y, double cmin, double cmax, vtl_tensor *gm) {
  return vtl_cpu_batch_norm_backward(x->dtype, dat(g), dat(x), N, C, S, dat(mean), dat(invstd), dat(w), training,
                                     dat(dx), dat(gw), dat(gb), dat(y), dat(gm), cmin, cmax);
}

static vtl_status layer_norm_forward(const vtl_tensor *x, vtl_tensor *out, int64_t M, int64_t D, const vtl_tensor *w,
                                     const vtl_tensor *b, double eps, vtl_tensor *mean, vtl_tensor *rstd) {
  vtl_cpu_layer_norm_forward(x->dtype, dat(x), dat(out), M, D, dat(w), dat(b), eps, dat(mean), dat(rstd));
  return VTL_OK;
}

static vtl_status layer_norm_backward(const vtl_tensor *g, const vtl_tensor *x, int64_t M, int64_t D,
                                      const vtl_tensor *w, const vtl_tensor *mean, const vtl_tensor *rstd,
                                      vtl_tensor *dx, vtl_tensor *gw, vtl_tensor *gb) {
  return vtl_cpu_layer_norm_backward(x->dtype, dat(g), dat(x), M, D, dat(w), dat(mean), dat(rstd), dat(dx), dat(gw),
                                     dat(gb));
}

static vtl_status group_norm_forward(const vtl_tensor *x, vtl_tensor *out, int64_t N, int64_t C, int64_t S, int64_t G,
                                     const vtl_tensor *w, const vtl_tensor *b, double eps, vtl_tensor *mean,
                                     vtl_tensor *rstd) {
  vtl_cpu_group_norm_forward(x->dtype, dat(x), dat(out), N, C, S, G, dat(w), dat(b), eps, dat(mean), dat(rstd));
  return VTL_OK;
}

static vtl_status group_norm_backward(const vtl_tensor *g, const vtl_tensor *x, int64_t N, int64_t C, int64_t S,
                                      int64_t G, const vtl_tensor *w, const vtl_tensor *mean, const vtl_tensor *rstd,
                                      vtl_tensor *dx, vtl_tensor *gw, vtl_tensor *gb) {
  return vtl_cpu_group_norm_backward(x->dtype, dat(g), dat(x), N, C, S, G, dat(w), dat(mean), dat(rstd), dat(dx),
                                     dat(gw), dat(gb));
}

static vtl_status attention_forward(const vtl_tensor *q, const vtl_tensor *k, const vtl_tensor *v, double scale,
                                    bool causal, vtl_tensor *out, vtl_tensor *lse) {
  return vtl_cpu_attention_forward(q->dtype, q->shape[0], q->shape[1], k->shape[1], q->shape[2], v->shape[2], scale,
                                   causal, dat(q), dat(k), dat(v), dat(out), dat(lse));
}

static vtl_status attention_backward(const vtl_tensor *g, const vtl_tensor *q, const vtl_tensor *k, const vtl_tensor *v,
                                     const vtl_tensor *out, const vtl_tensor *lse, double scale, bool causal,
                                     vtl_tensor *dq, vtl_tensor *dk, vtl_tensor *dv) {
  return vtl_cpu_attention_backward(q->dtype, q->shape[0], q->shape[1], k->shape[1], q->shape[2], v->shape[2], scale,
                                    causal, dat(g), dat(q), dat(k), dat(v), dat(out), dat(lse), dat(dq), dat(dk),
                                    dat(dv));
}

static vtl_status activation_forward(vtl_activation act, const vtl_tensor *x, vtl_tensor *y, const double *params) {
  vtl_cpu_activation_forward(x->dtype, act, dat(x), dat(y), vtl_tensor_numel(x), params);
  return VTL_OK;
}

static vtl_status activation_backward(vtl_activation act, const vtl_tensor *g, const vtl_tensor *s, vtl_tensor *dx,
                                      const double *params) {
  vtl_cpu_activation_backward(s->dtype, act, dat(g), dat(s), dat(dx), vtl_tensor_numel(s), params);
  return VTL_OK;
}

static vtl_status softmax_forward(const vtl_tensor *x, vtl_tensor *y, int64_t A, int64_t R, int64_t B, bool logsm) {
  vtl_cpu_softmax_forward(x->dtype, dat(x), dat(y), A, R, B, logsm);
  return VTL_OK;
}

static vtl_status softmax_backward(const vtl_tensor *g, const vtl_tensor *y, vtl_tensor *dx, int64_t A, int64_t R,
                                   int64_t B, bool logsm) {
  vtl_cpu_softmax_backward(y->dtype, dat(g), dat(y), dat(dx), A, R, B, logsm);
  return VTL_OK;
}

/* the divisor of the mean: summed weights of the non-ignored targets, or the number of rows */
static double ce_div(const vtl_tensor *x, int64_t N, int64_t S, const vtl_tensor *target, const vtl_tensor *w,
                     int64_t ignore_index, vtl_reduction red) {
  if (red != VTL_REDUCTION_MEAN) return 1;
  if (!target) return (double)(N * S);
  return vtl_cpu_target_weight_sum(x->dtype, dat(target), N * S, dat(w), ignore_index);
}

static vtl_status cross_entropy_forward(const vtl_tensor *x, int64_t N, int64_t C, int64_t S, const vtl_tensor *target,
                                        const vtl_tensor *prob, const vtl_tensor *w, int64_t ignore_index,
                                        double smoothing, vtl_reduction red, vtl_tensor *out) {
  double total = vtl_cpu_cross_entropy_forward(x->dtype, dat(x), N, C, S, dat(target), dat(prob), dat(w), ignore_index,
                                               smoothing, red == VTL_REDUCTION_NONE ? dat(out) : NULL);
  if (red == VTL_REDUCTION_SUM) vtl_store_from_double(dat(out), out->dtype, total);
  else if (red != VTL_REDUCTION_NONE)
    vtl_store_from_double(dat(out), out->dtype, total / ce_div(x, N, S, target, w, ignore_index, red));
  return VTL_OK;
}

static vtl_status cross_entropy_backward(const vtl_tensor *x, int64_t N, int64_t C, int64_t S,
                                         const vtl_tensor *target, const vtl_tensor *prob, const vtl_tensor *w,
                                         int64_t ignore_index, double smoothing, vtl_reduction red,
                                         const vtl_tensor *gout, vtl_tensor *dx, vtl_tensor *dprob) {
  bool rows = red == VTL_REDUCTION_NONE;
  double gscale = rows ? 0 : vtl_tensor_get_flat(gout, 0) / ce_div(x, N, S, target, w, ignore_index, red);
  vtl_cpu_cross_entropy_backward(x->dtype, dat(x), N, C, S, dat(target), dat(prob), dat(w), ignore_index, smoothing,
                                 rows ? dat(gout) : NULL, gscale, dat(dx), dat(dprob));
  return VTL_OK;
}

static vtl_status dropout_forward(const vtl_tensor *x, vtl_tensor *out, vtl_tensor *mask, double p, uint64_t seed,
                                  uint64_t offset) {
  vtl_cpu_dropout_forward(x->dtype, dat(x), dat(out), dat(mask), vtl_tensor_numel(x), p, seed, offset);
  return VTL_OK;
}

static vtl_status dropout_backward(const vtl_tensor *g, const vtl_tensor *mask, vtl_tensor *dx, double p) {
  vtl_cpu_dropout_backward(g->dtype, dat(g), dat(mask), dat(dx), vtl_tensor_numel(g), p);
  return VTL_OK;
}

const vtl_nn_backend vtl_cpu_nn_backend = {
  .conv2d_forward = conv2d_forward,
  .conv2d_forward_post = conv2d_forward_post,
  .conv_cl = true,
  .act_half = true,
  .bn_half = true,
  .conv_half = true, /* bf16 gradients on oneDNN; the op layer computes f16 (and what fails) in f32 */
  .linear_forward_post = linear_forward_post,
  .conv2d_backward_data = conv2d_backward_data,
  .conv2d_backward_weight = conv2d_backward_weight,
  .pool2d_forward = pool2d_forward,
  .pool2d_backward = pool2d_backward,
  .batch_norm_stats = batch_norm_stats,
  .batch_norm_forward = batch_norm_forward,
  .batch_norm_backward = batch_norm_backward,
  .layer_norm_forward = layer_norm_forward,
  .layer_norm_backward = layer_norm_backward,
  .group_norm_forward = group_norm_forward,
  .group_norm_backward = group_norm_backward,
  .activation_forward = activation_forward,
  .activation_backward = activation_backward,
  .softmax_forward = softmax_forward,
  .softmax_backward = softmax_backward,
  .attention_forward = attention_forward,
  .attention_backward = attention_backward,
  .cross_entropy_forward = cross_entropy_forward,
  .cross_entropy_backward = cross_entropy_backward,
  .dropout_forward = dropout_forward,
  .dropout_backward = dropout_backward,
};
