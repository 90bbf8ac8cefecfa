/*
 * CPU kernels of the elementwise nn ops: activations (forward and backward), the elementwise
 * losses (mse, l1, smooth_l1, kl_div, binary_cross_entropy_with_logits) and dropout.
 *
 * Operands are contiguous, f32 or f64 (dt). Activations compute in the data's own type, with
 * the vectorisable exp/erf/tanh of nn_norm.h for f32, so their loops run in full-width vector
 * lanes; the losses compute in double. Each entry point opens the parallel region itself and
 * runs a range body per thread (split over the pool above a grain size, smaller for the ops
 * that call exp/erf/tanh); bodies taking a literal dtype are inlined once per dtype.
 */
/* 512-bit vectors pay for the exp/erf polynomials; on targets without them this changes nothing */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("prefer-vector-width=512")
#endif
#include <math.h>
#include <omp.h>
#include "parallel.h"
#include "philox.h"
#include "iter.h"
#include "nn_norm.h"

#define INLINE static inline __attribute__((always_inline))
#define GRAIN_MATH (VTL_GRAIN / 16)

INLINE double ld(const void *p, int64_t i, vtl_dtype dt) {
  return dt == VTL_F32 ? (double)((const float *)p)[i] : ((const double *)p)[i];
}
INLINE void st(void *p, int64_t i, vtl_dtype dt, double v) {
  if (dt == VTL_F32) ((float *)p)[i] = (float)v;
  else ((double *)p)[i] = v;
}
INLINE double sgn(double v) { return v > 0 ? 1 : v < 0 ? -1 : v; } /* NaN stays NaN */

#define SQRT_2_OVER_PI 0.7978845608028654 /* sqrt(2/pi) */
#define INV_SQRT_2PI 0.3989422804014327   /* 1/sqrt(2 pi) */
#define GELU_K 0.044715

/* parallel over [0, n) above `grain` items */
#define PARALLEL_RANGE(n, grain, CALL) VTL_PARALLEL_RANGE(n, (n) > (grain), CALL)
#define PARALLEL_SUM(total, n, grain, CALL) VTL_PARALLEL_SUM(total, n, (n) > (grain), CALL)

/* Activations compute in the data's own precision, so that f32 loops run 8 or 16 lanes wide:
   inside MAP1/MAP2, v (and gv) are float for f32 data and double for f64, K(c) is the constant
   c in that type, and EXP/ERF/TANH/LOG1P/EXPM1 pick the matching function. */
#define K(c) ((__typeof__(v))(c))
#define EXP(z) _Generic((z), float: vtl_cpu_expf, default: exp)(z)
#define ERF(z) _Generic((z), float: vtl_cpu_erff, default: erf)(z)
#define TANH(z) _Generic((z), float: vtl_cpu_tanhf, default: tanh)(z)
#define LOG1P(z) _Generic((z), float: log1pf, default: log1p)(z)
#define EXPM1(z) _Generic((z), float: expm1f, default: expm1)(z)

/* for i in [lo, hi): v = x[i]; y[i] = EXPR */
#define MAP1_T(T, EXPR)                                    \
  do {                                                     \
    const T *xs_ = x;                                      \
    T *ys_ = y;                                            \
    for (int64_t i = lo; i < hi; i++) {                    \
      T v = xs_[i];                                        \
      ys_[i] = (EXPR);                                     \
    }                                                      \
  } while (0)
#define MAP1(EXPR)                                         \
  do {                                                     \
    if (dt == VTL_F32) MAP1_T(float, EXPR);                \
    else MAP1_T(double, EXPR);                             \
  } while (0)

/* for i in [lo, hi): v = s[i] (the saved input or output), gv = g[i]; dx[i] = EXPR */
#define MAP2_T(T, EXPR)                                    \
  do {                                                     \
    const T *ss_ = s, *gs_ = g;                            \
    T *ds_ = dx;                                           \
    for (int64_t i = lo; i < hi; i++) {                    \
      T v = ss_[i], gv = gs_[i];                           \
      ds_[i] = (EXPR);                                     \
    }                                                      \
  } while (0)
#define MAP2(EXPR)                                         \
  do {                                                     \
    if (dt == VTL_F32) MAP2_T(float, EXPR);                \
    else MAP2_T(double, EXPR);                             \
  } while (0)

/* ---- activations ---- */

static void act_forward(vtl_dtype dt, vtl_activation act, const void *x, void *y, int64_t lo, int64_t hi,
                        const double *p) {
  switch (act) {
  case VTL_ACT_RELU: MAP1(v < 0 ? 0 : v); break;
  case VTL_ACT_RELU6: MAP1(v < 0 ? 0 : v > 6 ? 6 : v); break;
  case VTL_ACT_LEAKY_RELU: MAP1(v > 0 ? v : v * K(p[0])); break;
  case VTL_ACT_GELU: MAP1(K(0.5) * v * (1 + ERF(v * K(M_SQRT1_2)))); break;
  case VTL_ACT_GELU_TANH: MAP1(K(0.5) * v * (1 + TANH(K(SQRT_2_OVER_PI) * (v + K(GELU_K) * v * v * v)))); break;
  case VTL_ACT_SILU: MAP1(v / (1 + EXP(-v))); break;
  case VTL_ACT_HARDSWISH: MAP1(v * (v + 3 < 0 ? 0 : v + 3 > 6 ? 6 : v + 3) / 6); break;
  case VTL_ACT_HARDSIGMOID: MAP1((v + 3 < 0 ? 0 : v + 3 > 6 ? 6 : v + 3) / 6); break;
  case VTL_ACT_SOFTPLUS: MAP1(v * K(p[0]) > K(p[1]) ? v : LOG1P(EXP(v * K(p[0]))) / K(p[0])); break;
  case VTL_ACT_ELU: MAP1(v > 0 ? v : K(p[0]) * EXPM1(v)); break;
  case VTL_ACT_SIGMOID: MAP1(1 / (1 + EXP(-v))); break;
  case VTL_ACT_TANH: MAP1(TANH(v)); break;
  default: break;
  }
}

static bool act_is_cheap(vtl_activation act) {
  return act == VTL_ACT_RELU || act == VTL_ACT_RELU6 || act == VTL_ACT_LEAKY_RELU || act == VTL_ACT_HARDSWISH ||
         act == VTL_ACT_HARDSIGMOID;
}

/* f16 / bf16 data: blocks converted to f32, the f32 kernel, the result rounded once (the same
   values as computing on an f32 copy, without making one) */
#define HALF_BLOCK 1024
static bool is_half(vtl_dtype dt) { return dt == VTL_F16 || dt == VTL_BF16; }

/* relu on the bits of f16/bf16 values (the same sign bit and NaN patterns in both): a value
   below zero (sign set, not a zero, not a NaN) becomes +0, every other one stays, exactly as the
   f32 computation rounded back; dx: the gradient where the saved output is above zero */
static inline bool half_nan(uint16_t h, uint16_t exp_mask) { return (h & exp_mask) == exp_mask && (h & ~exp_mask & 0x7fff); }
static inline bool half_below_zero(uint16_t h, uint16_t exp_mask) {
  return (h & 0x8000) && (h & 0x7fff) && !half_nan(h, exp_mask);
}

static void relu_half(vtl_dtype dt, const uint16_t *x, uint16_t *y, int64_t lo, int64_t hi) {
  const uint16_t em = dt == VTL_BF16 ? 0x7f80 : 0x7c00;
#pragma omp simd
  for (int64_t i = lo; i < hi; i++) y[i] = half_below_zero(x[i], em) ? 0 : x[i];
}

/* dx = v <= 0 ? 0 : g (v the saved output; NaN passes g) */
static void relu_half_backward(vtl_dtype dt, const uint16_t *g, const uint16_t *v, uint16_t *dx, int64_t lo,
                               int64_t hi) {
  const uint16_t em = dt == VTL_BF16 ? 0x7f80 : 0x7c00;
#pragma omp simd
  for (int64_t i = lo; i < hi; i++) {
    uint16_t h = v[i];
    bool le0 = !half_nan(h, em) && ((h & 0x8000) || (h & 0x7fff) == 0);
    dx[i] = le0 ? 0 : g[i];
  }
}

static void act_forward_half(vtl_dtype dt, vtl_activation act, const void *x, void *y, int64_t lo, int64_t hi,
                             const double *p) {
  if (act == VTL_ACT_RELU) {
    relu_half(dt, x, y, lo, hi);
    return;
  }
  float xb[HALF_BLOCK], yb[HALF_BLOCK];
  for (int64_t i = lo; i < hi; i += HALF_BLOCK) {
    int64_t m = hi - i < HALF_BLOCK ? hi - i : HALF_BLOCK;
    vtl_cpu_cast(xb, VTL_F32, 4, (const uint16_t *)x + i, dt, 2, m);
    act_forward(VTL_F32, act, xb, yb, 0, m, p);
    vtl_cpu_cast((uint16_t *)y + i, dt, 2, yb, VTL_F32, 4, m);
  }
}

void vtl_cpu_activation_forward(vtl_dtype dt, vtl_activation act, const void *x, void *y, int64_t n,
                                const double *params) {
  if (is_half(dt)) {
    PARALLEL_RANGE(n, act_is_cheap(act) ? VTL_GRAIN : GRAIN_MATH, act_forward_half(dt, act, x, y, lo, hi, params));
    return;
  }
  PARALLEL_RANGE(n, act_is_cheap(act) ? VTL_GRAIN : GRAIN_MATH, act_forward(dt, act, x, y, lo, hi, params));
}

/* Derivatives as PyTorch's (vectorised) kernels take them at the kinks: relu 0 at 0 (from the
   output), relu6 0 at 0 and 6, hardswish x/3 + 1/2 on [-3, 3) and 1 from 3 on, hardsigmoid 0 at
   -3 and 3. gelu_tanh: with t = tanh(u), u = sqrt(2/pi) (x + k x³),
   d/dx = (1 + t)/2 + x/2 (1 - t²) sqrt(2/pi) (1 + 3k x²). */
static void act_backward(vtl_dtype dt, vtl_activation act, const void *g, const void *s, void *dx, int64_t lo,
                         int64_t hi, const double *p) {
  switch (act) {
  case VTL_ACT_RELU: MAP2(v <= 0 ? 0 : gv); break;
  case VTL_ACT_RELU6: MAP2(v <= 0 || v >= 6 ? 0 : gv); break;
  case VTL_ACT_LEAKY_RELU: MAP2(v > 0 ? gv : gv * K(p[0])); break;
  case VTL_ACT_GELU:
    MAP2(gv * (K(0.5) * (1 + ERF(v * K(M_SQRT1_2))) + v * K(INV_SQRT_2PI) * EXP(K(-0.5) * v * v)));
    break;
  case VTL_ACT_GELU_TANH:
    MAP2(({
      __typeof__(v) t = TANH(K(SQRT_2_OVER_PI) * (v + K(GELU_K) * v * v * v));
      gv * (K(0.5) * (1 + t) + K(0.5) * v * (1 - t * t) * K(SQRT_2_OVER_PI) * (1 + K(3 * GELU_K) * v * v));
    }));
    break;
  case VTL_ACT_SILU:
    MAP2(({
      __typeof__(v) sg = 1 / (1 + EXP(-v));
      gv * sg * (1 + v * (1 - sg));
    }));
    break;
  case VTL_ACT_HARDSWISH: MAP2(v < -3 ? 0 : v < 3 ? gv * (v / 3 + K(0.5)) : gv); break;
  case VTL_ACT_HARDSIGMOID: MAP2(v > -3 && v < 3 ? gv / 6 : 0); break;
  case VTL_ACT_SOFTPLUS: MAP2(v * K(p[0]) > K(p[1]) ? gv : gv * (1 - 1 / (1 + EXP(v * K(p[0]))))); break;
  case VTL_ACT_ELU: MAP2(v > 0 ? gv : gv * (v + K(p[0]))); break;
  case VTL_ACT_SIGMOID: MAP2(gv * v * (1 - v)); break;
  case VTL_ACT_TANH: MAP2(gv * (1 - v * v)); break;
  default: break;
  }
}

static void act_backward_half(vtl_dtype dt, vtl_activation act, const void *g, const void *s, void *dx, int64_t lo,
                              int64_t hi, const double *p) {
  if (act == VTL_ACT_RELU) {
    relu_half_backward(dt, g, s, dx, lo, hi);
    return;
  }
  float gb[HALF_BLOCK], sb[HALF_BLOCK], db[HALF_BLOCK];
  for (int64_t i = lo; i < hi; i += HALF_BLOCK) {
    int64_t m = hi - i < HALF_BLOCK ? hi - i : HALF_BLOCK;
    vtl_cpu_cast(gb, VTL_F32, 4, (const uint16_t *)g + i, dt, 2, m);
    vtl_cpu_cast(sb, VTL_F32, 4, (const uint16_t *)s + i, dt, 2, m);
    act_backward(VTL_F32, act, gb, sb, db, 0, m, p);
    vtl_cpu_cast((uint16_t *)dx + i, dt, 2, db, VTL_F32, 4, m);
  }
}

void vtl_cpu_activation_backward(vtl_dtype dt, vtl_activation act, const void *g, const void *s, void *dx, int64_t n,
                                 const double *params) {
  bool cheap = act_is_cheap(act) || act == VTL_ACT_ELU || act == VTL_ACT_SIGMOID || act == VTL_ACT_TANH;
  if (is_half(dt)) {
    PARALLEL_RANGE(n, cheap ? VTL_GRAIN : GRAIN_MATH, act_backward_half(dt, act, g, s, dx, lo, hi, params));
    return;
  }
  PARALLEL_RANGE(n, cheap ? VTL_GRAIN : GRAIN_MATH, act_backward(dt, act, g, s, dx, lo, hi, params));
}

/* ---- elementwise losses ---- */

/* xlogy(y, y) as PyTorch: 0 where y == 0 */
INLINE double ylogy(double y) { return y == 0 ? 0 : y * log(y); }

INLINE double pw_loss(vtl_loss kind, double x, double y, double param) {
  double d = x - y;
  switch (kind) {
  case VTL_LOSS_MSE: return d * d;
  case VTL_LOSS_L1: return fabs(d);
  case VTL_LOSS_SMOOTH_L1: return param > 0 && fabs(d) < param ? 0.5 * d * d / param : fabs(d) - 0.5 * param;
  case VTL_LOSS_KL_DIV: return param != 0 ? exp(y) * (y - x) : ylogy(y) - y * x;
  default: return 0;
  }
}

INLINE double pw_loss_forward(vtl_dtype dt, vtl_loss kind, const void *x, const void *y, int64_t lo, int64_t hi,
                              double param, void *loss) {
  double total = 0;
  for (int64_t i = lo; i < hi; i++) {
    double l = pw_loss(kind, ld(x, i, dt), ld(y, i, dt), param);
    if (loss) st(loss, i, dt, l);
    total += l;
  }
  return total;
}

double vtl_cpu_pointwise_loss_forward(vtl_dtype dt, vtl_loss kind, const void *x, const void *y, int64_t n,
                                      double param, void *loss) {
  double total;
  if (dt == VTL_F32) PARALLEL_SUM(total, n, GRAIN_MATH, pw_loss_forward(VTL_F32, kind, x, y, lo, hi, param, loss));
  else PARALLEL_SUM(total, n, GRAIN_MATH, pw_loss_forward(VTL_F64, kind, x, y, lo, hi, param, loss));
  return total;
}

INLINE void pw_loss_backward(vtl_dtype dt, vtl_loss kind, const void *x, const void *y, int64_t lo, int64_t hi,
                             double param, const void *g, double gscale, void *dx, void *dy) {
  for (int64_t i = lo; i < hi; i++) {
    double xv = ld(x, i, dt), yv = ld(y, i, dt), gv = g ? ld(g, i, dt) : gscale, d = xv - yv, gx = 0, gy = 0;
    switch (kind) {
    case VTL_LOSS_MSE: gx = 2 * d * gv; gy = -gx; break;
    case VTL_LOSS_L1: gx = sgn(d) * gv; gy = -gx; break;
    case VTL_LOSS_SMOOTH_L1: gx = (param > 0 && fabs(d) < param ? d / param : sgn(d)) * gv; gy = -gx; break;
    case VTL_LOSS_KL_DIV:
      if (param != 0) {
        double e = exp(yv);
        gx = -e * gv;
        gy = gv * e * (yv - xv + 1);
      } else {
        gx = -yv * gv;
        gy = yv == 0 ? 0 : gv * (log(yv) + 1 - xv);
      }
      break;
    default: break;
    }
    if (dx) st(dx, i, dt, gx);
    if (dy) st(dy, i, dt, gy);
  }
}

void vtl_cpu_pointwise_loss_backward(vtl_dtype dt, vtl_loss kind, const void *x, const void *y, int64_t n,
                                     double param, const void *g, double gscale, void *dx, void *dy) {
  if (dt == VTL_F32) PARALLEL_RANGE(n, GRAIN_MATH, pw_loss_backward(VTL_F32, kind, x, y, lo, hi, param, g, gscale, dx, dy));
  else PARALLEL_RANGE(n, GRAIN_MATH, pw_loss_backward(VTL_F64, kind, x, y, lo, hi, param, g, gscale, dx, dy));
}

/* ---- binary cross entropy with logits ----
 * loss = w ((1 - y) x + lw softplus(-x)), lw = 1 + (pw - 1) y, softplus(-x) computed as
 * log1p(exp(-|x|)) + max(-x, 0). d/dx = w (lw sigmoid(x) - pw y); d/dy = w ((pw - 1) softplus(-x) - x). */

INLINE double softplus_neg(double x) { return log1p(exp(-fabs(x))) + (x < 0 ? -x : 0); }

INLINE double bce_forward(vtl_dtype dt, const void *x, const void *y, const void *w, const void *pw, int64_t lo,
                          int64_t hi, void *loss) {
  double total = 0;
  for (int64_t i = lo; i < hi; i++) {
    double xv = ld(x, i, dt), yv = ld(y, i, dt), lw = pw ? 1 + (ld(pw, i, dt) - 1) * yv : 1;
    double l = (1 - yv) * xv + lw * softplus_neg(xv);
    if (w) l *= ld(w, i, dt);
    if (loss) st(loss, i, dt, l);
    total += l;
  }
  return total;
}

double vtl_cpu_bce_with_logits_forward(vtl_dtype dt, const void *x, const void *y, const void *w, const void *pw,
                                       int64_t n, void *loss) {
  double total;
  if (dt == VTL_F32) PARALLEL_SUM(total, n, GRAIN_MATH, bce_forward(VTL_F32, x, y, w, pw, lo, hi, loss));
  else PARALLEL_SUM(total, n, GRAIN_MATH, bce_forward(VTL_F64, x, y, w, pw, lo, hi, loss));
  return total;
}

INLINE void bce_backward(vtl_dtype dt, const void *x, const void *y, const void *w, const void *pw, int64_t lo,
                         int64_t hi, const void *g, double gscale, void *dx, void *dy) {
  for (int64_t i = lo; i < hi; i++) {
    double xv = ld(x, i, dt), yv = ld(y, i, dt), p = pw ? ld(pw, i, dt) : 1;
    double gv = (g ? ld(g, i, dt) : gscale) * (w ? ld(w, i, dt) : 1);
    if (dx) st(dx, i, dt, gv * ((1 + (p - 1) * yv) / (1 + exp(-xv)) - p * yv));
    if (dy) st(dy, i, dt, gv * ((p - 1) * softplus_neg(xv) - xv));
  }
}

void vtl_cpu_bce_with_logits_backward(vtl_dtype dt, const void *x, const void *y, const void *w, const void *pw,
                                      int64_t n, const void *g, double gscale, void *dx, void *dy) {
  if (dt == VTL_F32) PARALLEL_RANGE(n, GRAIN_MATH, bce_backward(VTL_F32, x, y, w, pw, lo, hi, g, gscale, dx, dy));
  else PARALLEL_RANGE(n, GRAIN_MATH, bce_backward(VTL_F64, x, y, w, pw, lo, hi, g, gscale, dx, dy));
}

/* ---- dropout ----
 * The keep mask comes from the Philox4x32-10 stream of kernels/cpu/random.c (same rounds, key =
 * seed, counter = offset + block): element i uses 32-bit word i % 4 of block i / 4, as a 24-bit
 * fraction u, and is kept when u < 1 - p. Results do not depend on the thread count. */


/* blocks [lo, hi) of 4 elements */
INLINE void dropout_fwd(vtl_dtype dt, const void *x, void *out, uint8_t *mask, int64_t n, double p, uint64_t seed,
                        uint64_t offset, int64_t lo, int64_t hi) {
  double keep = 1 - p, scale = keep > 0 ? 1 / keep : 0;
  uint32_t thr = (uint32_t)ceil(keep * 16777216.0); /* u < keep  <=>  24-bit word < thr */
  for (int64_t b = lo; b < hi; b++) {
    uint32_t r[4];
    vtl_philox4x32(offset + (uint64_t)b, seed, r);
    for (int j = 0; j < 4 && 4 * b + j < n; j++) {
      int64_t i = 4 * b + j;
      uint8_t k = (r[j] >> 8) < thr;
      mask[i] = k;
      st(out, i, dt, k ? ld(x, i, dt) * scale : 0);
    }
  }
}

void vtl_cpu_dropout_forward(vtl_dtype dt, const void *x, void *out, uint8_t *mask, int64_t n, double p, uint64_t seed,
                             uint64_t offset) {
  int64_t nb = (n + 3) / 4; /* a block costs about as much as 16 elements of an elementwise op */
  if (dt == VTL_F32) PARALLEL_RANGE(nb, VTL_GRAIN / 64, dropout_fwd(VTL_F32, x, out, mask, n, p, seed, offset, lo, hi));
  else PARALLEL_RANGE(nb, VTL_GRAIN / 64, dropout_fwd(VTL_F64, x, out, mask, n, p, seed, offset, lo, hi));
}

INLINE void dropout_bwd(vtl_dtype dt, const void *g, const uint8_t *mask, void *dx, int64_t lo, int64_t hi, double p) {
  double keep = 1 - p, scale = keep > 0 ? 1 / keep : 0;
  for (int64_t i = lo; i < hi; i++) st(dx, i, dt, mask[i] ? ld(g, i, dt) * scale : 0);
}

void vtl_cpu_dropout_backward(vtl_dtype dt, const void *g, const uint8_t *mask, void *dx, int64_t n, double p) {
  if (dt == VTL_F32) PARALLEL_RANGE(n, VTL_GRAIN, dropout_bwd(VTL_F32, g, mask, dx, lo, hi, p));
  else PARALLEL_RANGE(n, VTL_GRAIN, dropout_bwd(VTL_F64, g, mask, dx, lo, hi, p));
}
