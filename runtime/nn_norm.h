/*
 * Neural-network ops: normalisation (batch, layer, group), activations, softmax, losses and
 * dropout, with PyTorch's semantics and defaults.
 *
 * Three layers, as for the tensor ops:
 *   - vtl_op_<name>: checks arguments (shapes, dtypes, devices) before allocating, runs the
 *     forward and returns a new tensor; vtl_op_<name>_backward computes the gradients of the
 *     inputs it is asked for (pointer outputs, NULL = not wanted);
 *   - vtl_fn_<name>: the differentiable form: the forward op, plus an autograd node when an
 *     input requires grad (runtime/autograd.h);
 *   - vtl_cpu_<name>_forward / _backward: the CPU kernels over plain pointers
 *     (kernels/cpu/norm.c, kernels/cpu/activation.c), free of Lua and of autograd.
 *
 * All ops compute in f32 or f64 (the input's dtype). Dims are 0-based here. Class targets are
 * 0-based at the kernel level; the op level takes them as stored in the tensor, 1-based
 * (classes 1..C, vtl's convention), and ignore_index is compared with the stored value.
 */
#ifndef VTL_NN_NORM_H
#define VTL_NN_NORM_H
#include "core.h"

/* ---- normalisation ---- */

/* x: (N, C, *). training: normalise with the batch statistics (biased variance) and, when
   running_mean/running_var are given, update them in place with momentum and the unbiased
   batch variance; otherwise normalise with the running statistics (required then).
   weight, bias: (C) or NULL. save_mean / save_invstd (optional outputs, (C)): the statistics
   the forward used (f64), which the backward takes. */
vtl_tensor *vtl_op_batch_norm(vtl_tensor *x, vtl_tensor *running_mean, vtl_tensor *running_var,
                              vtl_tensor *weight, vtl_tensor *bias, bool training, double momentum,
                              double eps, vtl_tensor **save_mean, vtl_tensor **save_invstd);
/* mean, invstd: as returned by the forward. training selects the batch-statistics rule for
   gx (eval: gx = gout * weight * invstd). */
vtl_status vtl_op_batch_norm_backward(vtl_tensor *gout, vtl_tensor *x, vtl_tensor *weight,
                                      vtl_tensor *mean, vtl_tensor *invstd, bool training,
                                      vtl_tensor **gx, vtl_tensor **gweight, vtl_tensor **gbias);
vtl_tensor *vtl_fn_batch_norm(vtl_tensor *x, vtl_tensor *running_mean, vtl_tensor *running_var,
                              vtl_tensor *weight, vtl_tensor *bias, bool training, double momentum,
                              double eps);

/* Normalises over the last nnorm dims of x, which must equal normalized_shape; weight and
   bias (optional) have that shape. save_mean / save_rstd: f64 (rows), rows = numel / D. */
vtl_tensor *vtl_op_layer_norm(vtl_tensor *x, const int64_t *normalized_shape, int nnorm,
                              vtl_tensor *weight, vtl_tensor *bias, double eps,
                              vtl_tensor **save_mean, vtl_tensor **save_rstd);
vtl_status vtl_op_layer_norm_backward(vtl_tensor *gout, vtl_tensor *x, int nnorm, vtl_tensor *weight,
                                      vtl_tensor *mean, vtl_tensor *rstd, vtl_tensor **gx,
                                      vtl_tensor **gweight, vtl_tensor **gbias);
vtl_tensor *vtl_fn_layer_norm(vtl_tensor *x, const int64_t *normalized_shape, int nnorm,
                              vtl_tensor *weight, vtl_tensor *bias, double eps);

/* x: (N, C, *), C divisible by groups; weight, bias: (C) or NULL. save_mean / save_rstd:
   f64 (N, groups). */
vtl_tensor *vtl_op_group_norm(vtl_tensor *x, int64_t groups, vtl_tensor *weight, vtl_tensor *bias,
                              double eps, vtl_tensor **save_mean, vtl_tensor **save_rstd);
vtl_status vtl_op_group_norm_backward(vtl_tensor *gout, vtl_tensor *x, int64_t groups,
                                      vtl_tensor *weight, vtl_tensor *mean, vtl_tensor *rstd,
                                      vtl_tensor **gx, vtl_tensor **gweight, vtl_tensor **gbias);
vtl_tensor *vtl_fn_group_norm(vtl_tensor *x, int64_t groups, vtl_tensor *weight, vtl_tensor *bias,
                              double eps);

/* ---- activations ---- */

typedef enum {
  VTL_ACT_RELU, VTL_ACT_RELU6, VTL_ACT_LEAKY_RELU, /* p[0]: negative_slope */
  VTL_ACT_GELU, VTL_ACT_GELU_TANH, VTL_ACT_SILU, VTL_ACT_HARDSWISH, VTL_ACT_HARDSIGMOID,
  VTL_ACT_SOFTPLUS, /* p[0]: beta, p[1]: threshold */
  VTL_ACT_ELU,      /* p[0]: alpha */
  VTL_ACT_SIGMOID, VTL_ACT_TANH, VTL_ACT_COUNT
} vtl_activation;

const char *vtl_activation_name(vtl_activation act); /* "gelu", ... */

/* Batch norm, then in the same pass the sum with add (x's shape, dtype and device, or NULL) and
   the activation act: VTL_ACT_RELU, VTL_ACT_RELU6 or VTL_ACT_COUNT (none); computed in double
   and rounded once. The residual blocks' norm-activation pairs and sums (ResNet, MobileNet,
   EfficientNet-Lite). The backward takes the activation's gradient from the output, so the
   normalised values before it are not kept. */
vtl_tensor *vtl_op_batch_norm_act(vtl_tensor *x, vtl_tensor *running_mean, vtl_tensor *running_var,
                                  vtl_tensor *weight, vtl_tensor *bias, bool training, double momentum,
                                  double eps, vtl_tensor *add, vtl_activation act,
                                  vtl_tensor **save_mean, vtl_tensor **save_invstd);
vtl_tensor *vtl_fn_batch_norm_act(vtl_tensor *x, vtl_tensor *running_mean, vtl_tensor *running_var,
                                  vtl_tensor *weight, vtl_tensor *bias, bool training, double momentum,
                                  double eps, vtl_tensor *add, vtl_activation act);

/* The backward of relu, sigmoid, tanh and elu reads the forward's output (as PyTorch's
   *_backward functions do); the others read its input. */
bool vtl_activation_uses_output(vtl_activation act);

/* y = act(x) elementwise; params as listed in the enum (NULL: PyTorch's defaults). */
vtl_tensor *vtl_op_activation(vtl_activation act, vtl_tensor *x, const double *params);
/* act(x) written into x (computed aside and copied in when x's memory is not dense) */
vtl_status vtl_op_activation_(vtl_activation act, vtl_tensor *x, const double *params);
/* gx = gout * act'(.), where `saved` is the forward's output or input (see above). */
vtl_tensor *vtl_op_activation_backward(vtl_activation act, vtl_tensor *gout, vtl_tensor *saved,
                                       const double *params);
vtl_tensor *vtl_fn_activation(vtl_activation act, vtl_tensor *x, const double *params);

/* ---- softmax ---- */

/* softmax (or log_softmax when logsm) of x along dim (0-based, checked), numerically stable. */
vtl_tensor *vtl_op_softmax(vtl_tensor *x, int dim, bool logsm);
/* y: the forward's output. */
vtl_tensor *vtl_op_softmax_backward(vtl_tensor *gout, vtl_tensor *y, int dim, bool logsm);
vtl_tensor *vtl_fn_softmax(vtl_tensor *x, int dim, bool logsm);

/* ---- losses ---- */

typedef enum { VTL_REDUCTION_NONE, VTL_REDUCTION_MEAN, VTL_REDUCTION_SUM, VTL_REDUCTION_BATCHMEAN } vtl_reduction;

/* logits: (N, C, d1..dk) or (C). target: class indices (integer tensor of shape (N, d1..dk)
   or (), 1-based, or equal to ignore_index) or class probabilities (float, logits' shape).
   weight: (C) or NULL. Mean divides by the summed weights of the non-ignored targets (class
   indices) or by the number of rows (probabilities), as PyTorch. */
vtl_tensor *vtl_op_cross_entropy(vtl_tensor *logits, vtl_tensor *target, vtl_tensor *weight,
                                 int64_t ignore_index, double label_smoothing, vtl_reduction red);
/* gtarget only for probability targets. */
vtl_status vtl_op_cross_entropy_backward(vtl_tensor *gout, vtl_tensor *logits, vtl_tensor *target,
                                         vtl_tensor *weight, int64_t ignore_index,
                                         double label_smoothing, vtl_reduction red,
                                         vtl_tensor **glogits, vtl_tensor **gtarget);
vtl_tensor *vtl_fn_cross_entropy(vtl_tensor *logits, vtl_tensor *target, vtl_tensor *weight,
                                 int64_t ignore_index, double label_smoothing, vtl_reduction red);

/* logp: (N, C, d1..dk) or (C) log-probabilities; target as for cross_entropy (indices). */
vtl_tensor *vtl_op_nll_loss(vtl_tensor *logp, vtl_tensor *target, vtl_tensor *weight,
                            int64_t ignore_index, vtl_reduction red);
vtl_tensor *vtl_op_nll_loss_backward(vtl_tensor *gout, vtl_tensor *logp, vtl_tensor *target,
                                     vtl_tensor *weight, int64_t ignore_index, vtl_reduction red);
vtl_tensor *vtl_fn_nll_loss(vtl_tensor *logp, vtl_tensor *target, vtl_tensor *weight,
                            int64_t ignore_index, vtl_reduction red);

/* Elementwise losses between input and target of the same shape. */
typedef enum {
  VTL_LOSS_MSE, VTL_LOSS_L1, VTL_LOSS_SMOOTH_L1, /* param: beta */
  VTL_LOSS_KL_DIV,                               /* param: 1 when the target is a log-probability */
  VTL_LOSS_COUNT
} vtl_loss;

const char *vtl_loss_name(vtl_loss kind); /* "mse_loss", ... */
/* batchmean (kl_div only) divides the sum by the size of dim 0. */
vtl_tensor *vtl_op_pointwise_loss(vtl_loss kind, vtl_tensor *input, vtl_tensor *target,
                                  vtl_reduction red, double param);
vtl_status vtl_op_pointwise_loss_backward(vtl_loss kind, vtl_tensor *gout, vtl_tensor *input,
                                          vtl_tensor *target, vtl_reduction red, double param,
                                          vtl_tensor **ginput, vtl_tensor **gtarget);
vtl_tensor *vtl_fn_pointwise_loss(vtl_loss kind, vtl_tensor *input, vtl_tensor *target,
                                  vtl_reduction red, double param);

/* x, target: same shape; weight (optional) broadcasts to it; pos_weight (optional) broadcasts
   to it along the last dim (classes). No gradients for weight and pos_weight. */
vtl_tensor *vtl_op_bce_with_logits(vtl_tensor *x, vtl_tensor *target, vtl_tensor *weight,
                                   vtl_tensor *pos_weight, vtl_reduction red);
vtl_status vtl_op_bce_with_logits_backward(vtl_tensor *gout, vtl_tensor *x, vtl_tensor *target,
                                           vtl_tensor *weight, vtl_tensor *pos_weight,
                                           vtl_reduction red, vtl_tensor **gx, vtl_tensor **gtarget);
vtl_tensor *vtl_fn_bce_with_logits(vtl_tensor *x, vtl_tensor *target, vtl_tensor *weight,
                                   vtl_tensor *pos_weight, vtl_reduction red);

/* ---- dropout ---- */

/* training and 0 < p: zeroes each element with probability p and scales the others by
   1/(1-p); the keep mask (bool, x's shape; optional output) comes from the Philox stream
   (seed, *offset), and *offset advances past the numbers used. Otherwise returns x itself
   (retained) and *mask = NULL. */
vtl_tensor *vtl_op_dropout(vtl_tensor *x, double p, bool training, uint64_t seed, uint64_t *offset,
                           vtl_tensor **mask);
vtl_tensor *vtl_op_dropout_backward(vtl_tensor *gout, vtl_tensor *mask, double p);
/* mask (optional output): the keep mask, as vtl_op_dropout gives it */
vtl_tensor *vtl_fn_dropout(vtl_tensor *x, double p, bool training, uint64_t seed, uint64_t *offset,
                           vtl_tensor **mask);

/* ---- CPU kernels: contiguous operands, shapes already checked; dt is VTL_F32 or VTL_F64 for
   every float pointer; per-channel statistics are double. ---- */

/* x, out: (N, C, S). Training: mean/invstd (C) are computed (var is the biased batch variance,
   written to var (C) when var != NULL); otherwise they are inputs. out = (x - mean) * invstd *
   w + b, w and b (C) or NULL; then, with add (as x, or NULL) and the bounds [cmin, cmax]
   (-INFINITY, INFINITY: none), out = clamp(out + add, cmin, cmax) in the same pass, rounded once. */
/* Data (x, out, g, dx) f32, f64, f16 or bf16; with half data w, b, gw, gb are f32. Errors: out of
   scratch memory (half data). */
vtl_status vtl_cpu_batch_norm_stats(vtl_dtype dt, const void *x, int64_t N, int64_t C, int64_t S,
                                    double eps, double *mean, double *invstd, double *var);
vtl_status vtl_cpu_batch_norm_forward(vtl_dtype dt, const void *x, void *out, int64_t N, int64_t C,
                                      int64_t S, const double *mean, const double *invstd,
                                      const void *w, const void *b, const void *add, double cmin,
                                      double cmax);
/* g, x, dx: (N, C, S); gw, gb: (C) or NULL; dx may be NULL. With y (a fused activation's
   output, else NULL): g is first masked as the activation's backward does (0 where y <= cmin or,
   for a finite cmax, y >= cmax; NaN passes) inside the sums pass, the masked gradient written to
   gm (as x) and read from there by the dx pass. */
vtl_status vtl_cpu_batch_norm_backward(vtl_dtype dt, const void *g, const void *x, int64_t N, int64_t C,
                                       int64_t S, const double *mean, const double *invstd,
                                       const void *w, bool training, void *dx, void *gw, void *gb,
                                       const void *y, void *gm, double cmin, double cmax);

/* x, out: (M, D); w, b: (D) or NULL; mean, rstd: (M) */
void vtl_cpu_layer_norm_forward(vtl_dtype dt, const void *x, void *out, int64_t M, int64_t D,
                                const void *w, const void *b, double eps, double *mean, double *rstd);
/* gw, gb (optional) are summed over rows in per-thread buffers: fails only when those cannot be
   allocated */
vtl_status vtl_cpu_layer_norm_backward(vtl_dtype dt, const void *g, const void *x, int64_t M,
                                       int64_t D, const void *w, const double *mean,
                                       const double *rstd, void *dx, void *gw, void *gb);

/* x, out: (N, C, S), groups G; mean, rstd: (N, G) */
void vtl_cpu_group_norm_forward(vtl_dtype dt, const void *x, void *out, int64_t N, int64_t C,
                                int64_t S, int64_t G, const void *w, const void *b, double eps,
                                double *mean, double *rstd);
/* fails only when its (N, C) scratch sums cannot be allocated */
vtl_status vtl_cpu_group_norm_backward(vtl_dtype dt, const void *g, const void *x, int64_t N,
                                       int64_t C, int64_t S, int64_t G, const void *w,
                                       const double *mean, const double *rstd, void *dx, void *gw,
                                       void *gb);

/* softmax of `rows` contiguous rows of R elements, serially (for kernels that run inside a
   parallel region); lse (rows, of dt, or NULL): each row's log-sum-exp; invs (rows, of dt, or
   NULL): each row left unnormalised, e^(x - max), with 1 / its sum stored here */
void vtl_cpu_softmax_rows(vtl_dtype dt, const void *x, void *y, int64_t rows, int64_t R, void *lse, void *invs);
/* x, y: (A, R, B), normalised along R */
void vtl_cpu_softmax_forward(vtl_dtype dt, const void *x, void *y, int64_t A, int64_t R, int64_t B,
                             bool logsm);
void vtl_cpu_softmax_backward(vtl_dtype dt, const void *g, const void *y, void *dx, int64_t A,
                              int64_t R, int64_t B, bool logsm);

/* Index of the first target (of n) that is neither a class in [1, C] nor ignore_index, or -1
   when all are valid. Targets are 1-based in every kernel: class k is stored as k. */
int64_t vtl_cpu_check_targets(const int64_t *target, int64_t n, int64_t C, int64_t ignore_index);
/* Σ weight[t] (1 when w == NULL) over non-ignored targets (1-based, as stored). */
double vtl_cpu_target_weight_sum(vtl_dtype dt, const int64_t *target, int64_t n, const void *w,
                                 int64_t ignore_index);
/* x: (N, C, S) logits; rows (n, s). Either target (N, S) 1-based indices or prob (N, C, S).
   Writes the unnormalised loss of each row to loss (N, S) (NULL: only the sum), returns
   the sum of the row losses. */
double vtl_cpu_cross_entropy_forward(vtl_dtype dt, const void *x, int64_t N, int64_t C, int64_t S,
                                     const int64_t *target, const void *prob, const void *w,
                                     int64_t ignore_index, double smoothing, void *loss);
/* grow: per-row upstream gradient (N, S), or NULL with the scalar gscale for every row.
   dx: (N, C, S); dprob (probability targets, optional): (N, C, S). */
void vtl_cpu_cross_entropy_backward(vtl_dtype dt, const void *x, int64_t N, int64_t C, int64_t S,
                                    const int64_t *target, const void *prob, const void *w,
                                    int64_t ignore_index, double smoothing, const void *grow,
                                    double gscale, void *dx, void *dprob);
/* logp: (N, C, S), target (N, S) 1-based; loss (N, S) or NULL; returns the sum */
double vtl_cpu_nll_loss_forward(vtl_dtype dt, const void *logp, int64_t N, int64_t C, int64_t S,
                                const int64_t *target, const void *w, int64_t ignore_index,
                                void *loss);
void vtl_cpu_nll_loss_backward(vtl_dtype dt, int64_t N, int64_t C, int64_t S, const int64_t *target,
                               const void *w, int64_t ignore_index, const void *grow, double gscale,
                               void *dx);

/* y = act(x) over n elements; dx = g * act'(s), s the input or output (see above) */
void vtl_cpu_activation_forward(vtl_dtype dt, vtl_activation act, const void *x, void *y, int64_t n,
                                const double *params);
void vtl_cpu_activation_backward(vtl_dtype dt, vtl_activation act, const void *g, const void *s,
                                 void *dx, int64_t n, const double *params);

/* loss (n) elementwise, or NULL: returns the sum only */
double vtl_cpu_pointwise_loss_forward(vtl_dtype dt, vtl_loss kind, const void *x, const void *y,
                                      int64_t n, double param, void *loss);
/* g: (n) per-element upstream gradient or NULL with the scalar gscale; dx, dy optional */
void vtl_cpu_pointwise_loss_backward(vtl_dtype dt, vtl_loss kind, const void *x, const void *y,
                                     int64_t n, double param, const void *g, double gscale,
                                     void *dx, void *dy);
/* x, y, weight (or NULL), pos_weight (or NULL): n elements each (already broadcast) */
double vtl_cpu_bce_with_logits_forward(vtl_dtype dt, const void *x, const void *y, const void *w,
                                       const void *pw, int64_t n, void *loss);
void vtl_cpu_bce_with_logits_backward(vtl_dtype dt, const void *x, const void *y, const void *w,
                                      const void *pw, int64_t n, const void *g, double gscale,
                                      void *dx, void *dy);

/* mask[i] = u_i < 1 - p, out = x * mask / (1 - p), u_i from the Philox stream (seed, offset):
   element i uses word i % 4 of block offset + i / 4; the caller advances offset by (n + 3) / 4 */
void vtl_cpu_dropout_forward(vtl_dtype dt, const void *x, void *out, uint8_t *mask, int64_t n,
                             double p, uint64_t seed, uint64_t offset);
/* dx = g * mask / (1 - p) */
void vtl_cpu_dropout_backward(vtl_dtype dt, const void *g, const uint8_t *mask, void *dx, int64_t n,
                              double p);

/* ---- f32 math the CPU kernels share: branch-free, so loops over them vectorise ---- */

/* e^x within 1.5 ulp: 2^n p(r), r = x - n ln 2, Cephes' polynomial; inf above log(FLT_MAX),
   gradual underflow to 0 below, NaN kept. 2^n is applied in two halves to stay normal. */
static inline float vtl_cpu_expf(float x) {
  float xc = x >= -104.0f ? x : -104.0f; /* NaN → -104, restored below */
  xc = xc <= 88.72283935546875f ? xc : 88.72283935546875f;
  float n = xc * 1.44269504088896341f + 12582912.0f; /* round to nearest */
  n -= 12582912.0f;
  float r = xc - n * 0.693359375f;
  r -= n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t ni = (int32_t)n, n1 = ni >> 1, n2 = ni - n1;
  int32_t b1 = (n1 + 127) * (1 << 23), b2 = (n2 + 127) * (1 << 23);
  float s1, s2;
  __builtin_memcpy(&s1, &b1, 4);
  __builtin_memcpy(&s2, &b2, 4);
  float y = p * s1 * s2;
  y = x > 88.72283935546875f ? __builtin_inff() : y;
  y = x < -104.0f ? 0.0f : y;
  return x == x ? y : x;
}

/* erf(x) within 1.5 ulp: an odd polynomial below |x| = 0.9277, 1 - e^(poly) above (N. Juffa's
   minimax fits). */
static inline float vtl_cpu_erff(float a) {
  float t = __builtin_fabsf(a), s = a * a;
  float r = __builtin_fmaf(-1.72853470e-5f, t, 3.83197126e-4f);
  float u = __builtin_fmaf(-3.88396438e-3f, t, 2.42546219e-2f);
  r = __builtin_fmaf(r, s, u);
  r = __builtin_fmaf(r, t, -1.06777877e-1f);
  r = __builtin_fmaf(r, t, -6.34846687e-1f);
  r = __builtin_fmaf(r, t, -1.28717512e-1f);
  r = __builtin_fmaf(r, t, -t);
  r = __builtin_copysignf(1.0f - vtl_cpu_expf(r), a);
  float q = -5.96761703e-4f;
  q = __builtin_fmaf(q, s, 4.99119423e-3f);
  q = __builtin_fmaf(q, s, -2.67681349e-2f);
  q = __builtin_fmaf(q, s, 1.12819925e-1f);
  q = __builtin_fmaf(q, s, -3.76125336e-1f);
  q = __builtin_fmaf(q, s, 1.28379166e-1f);
  q = __builtin_fmaf(q, a, a);
  return t > 0.927734375f ? r : q;
}

/* tanh(x) within 2.5 ulp: Cephes' odd polynomial below |x| = 0.625, 1 - 2/(e^2|x| + 1) above. */
static inline float vtl_cpu_tanhf(float x) {
  float a = __builtin_fabsf(x), s = x * x;
  float p = ((((-5.70498872745e-3f * s + 2.06390887954e-2f) * s - 5.37397155531e-2f) * s + 1.33314422036e-1f) * s -
             3.33332819422e-1f) * s * x + x;
  float e = vtl_cpu_expf(2.0f * (a < 44.0f ? a : 44.0f));
  float q = __builtin_copysignf(1.0f - 2.0f / (e + 1.0f), x);
  float y = a < 0.625f ? p : q;
  return x == x ? y : x;
}

#endif
