/*
 * CPU kernels of the normalisation ops (batch, layer, group norm), softmax / log_softmax and
 * the losses built on a log-softmax over classes (cross_entropy, nll_loss).
 *
 * Data is f32 or f64 (dt); arithmetic and statistics are double, exp of f32 data is the
 * vectorisable one of nn_norm.h. Each entry point opens the parallel region itself (over
 * channels, rows or groups, when the work is big enough to pay) and calls a range body inlined
 * with a literal dtype, so the dtype tests fold away inside the loops.
 */
/* 512-bit vectors pay for the exp/erf polynomials; on targets without them this changes nothing */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("prefer-vector-width=512")
#endif
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "parallel.h"
#include "iter.h"
#include "nn_norm.h"

#define INLINE static inline __attribute__((always_inline))

/* half elements (the batch-norm kernels take f16/bf16 data); bf16 inline, f16 through dtype.c */
INLINE float bf16_f32(uint16_t h) {
  uint32_t b = (uint32_t)h << 16;
  float f;
  memcpy(&f, &b, 4);
  return f;
}
INLINE uint16_t f32_bf16(float f) { /* round to nearest even, NaN kept quiet (as vtl_f32_to_bf16) */
  uint32_t x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
  x += 0x7fff + ((x >> 16) & 1);
  return (uint16_t)(x >> 16);
}
INLINE double ld(const void *p, int64_t i, vtl_dtype dt) {
  switch (dt) {
  case VTL_F32: return ((const float *)p)[i];
  case VTL_BF16: return bf16_f32(((const uint16_t *)p)[i]);
  case VTL_F16: return vtl_f16_to_f32(((const uint16_t *)p)[i]);
  default: return ((const double *)p)[i];
  }
}
INLINE void st(void *p, int64_t i, vtl_dtype dt, double v) {
  switch (dt) {
  case VTL_F32: ((float *)p)[i] = (float)v; break;
  case VTL_BF16: ((uint16_t *)p)[i] = f32_bf16((float)v); break;
  case VTL_F16: ((uint16_t *)p)[i] = vtl_f32_to_f16((float)v); break;
  default: ((double *)p)[i] = v; break;
  }
}
/* an optional per-channel vector (weight: default 1, bias: default 0) */
INLINE double ldopt(const void *p, int64_t i, vtl_dtype dt, double def) { return p ? ld(p, i, dt) : def; }
INLINE double ex(double v, vtl_dtype dt) { return dt == VTL_F32 ? (double)vtl_cpu_expf((float)v) : exp(v); }

/* Runs CALL (which reads lo, hi) for each thread's share of [0, n) items, in parallel when
   `work` (elements touched) exceeds the grain. CALL names the dtype literally: the body is
   inlined once per dtype. */
#define PARALLEL_RANGE(n, work, CALL) VTL_PARALLEL_RANGE(n, (work) > VTL_GRAIN, CALL)
#define PARALLEL_SUM(total, n, work, CALL) VTL_PARALLEL_SUM(total, n, (work) > VTL_GRAIN, CALL)

#define DISPATCH_RANGE(dt, n, work, FN, ...)                                      \
  do {                                                                            \
    if ((dt) == VTL_F32) PARALLEL_RANGE(n, work, FN(VTL_F32, __VA_ARGS__, lo, hi)); \
    else PARALLEL_RANGE(n, work, FN(VTL_F64, __VA_ARGS__, lo, hi));               \
  } while (0)
/* the same with the half dtypes too (the batch-norm kernels) */
#define DISPATCH_RANGE_HALF(dt, n, work, FN, ...)                                  \
  do {                                                                             \
    if ((dt) == VTL_BF16) PARALLEL_RANGE(n, work, FN(VTL_BF16, __VA_ARGS__, lo, hi)); \
    else if ((dt) == VTL_F16) PARALLEL_RANGE(n, work, FN(VTL_F16, __VA_ARGS__, lo, hi)); \
    else DISPATCH_RANGE(dt, n, work, FN, __VA_ARGS__);                             \
  } while (0)

/* ---- batch norm ----
 * x: (N, C, S). The work is split over blocks of channels: one channel per block when rows of
 * a channel are long (S >= 16), 64 channels per block otherwise, so that (N, C) inputs are
 * walked row by row. Each block makes its passes while its data is in cache. */

#define BN_BLOCK 64
static inline int64_t bn_block(int64_t S) { return S >= 16 ? 1 : BN_BLOCK; }

INLINE void bn_stats(vtl_dtype dt, const void *x, int64_t N, int64_t C, int64_t S, double eps, double *mean,
                     double *invstd, double *var, int64_t blo, int64_t bhi) {
  int64_t CB = bn_block(S);
  double M = (double)(N * S);
  for (int64_t blk = blo; blk < bhi; blk++) {
    int64_t c0 = blk * CB, c1 = c0 + CB < C ? c0 + CB : C;
    double m[BN_BLOCK] = {0}, q[BN_BLOCK] = {0};
    for (int64_t n = 0; n < N; n++)
      for (int64_t c = c0; c < c1; c++) {
        int64_t o = (n * C + c) * S;
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t k = 0; k < S; k++) s += ld(x, o + k, dt);
        m[c - c0] += s;
      }
    for (int64_t c = c0; c < c1; c++) m[c - c0] /= M;
    for (int64_t n = 0; n < N; n++)
      for (int64_t c = c0; c < c1; c++) {
        int64_t o = (n * C + c) * S;
        double mu = m[c - c0], s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t k = 0; k < S; k++) { double d = ld(x, o + k, dt) - mu; s += d * d; }
        q[c - c0] += s;
      }
    for (int64_t c = c0; c < c1; c++) {
      double v = q[c - c0] / M;
      mean[c] = m[c - c0];
      invstd[c] = 1.0 / sqrt(v + eps);
      if (var) var[c] = v;
    }
  }
}

/* ---- batch norm over rows: S = 1, x (M, C) (channels-last inputs, and (N, C) ones) ----
 * Rows are taken in fixed chunks; each chunk sums into its own per-channel partials (vectorised
 * over channels), and the partials are added in chunk order, so results do not depend on the
 * thread count. Returns false (nothing done) when the partials cannot be allocated; the blocked
 * kernels above then run. */

#define BNR_CHUNK 256

typedef struct {
  int64_t M, C, nchunks;
  double *part; /* nchunks x 2C */
} bn_rows;

/* The gradient sums' mask (a fused activation's backward): where the forward's clamped output y
   is not inside (cmin, cmax) — an infinite cmax bounds nothing, NaN passes — g counts as 0; the
   masked gradient is written to gm. */
typedef struct {
  const void *y;
  void *gm;
  double cmin, cmax;
} bn_mask;

INLINE bool bn_keeps(double y, double cmin, double cmax, bool top) { /* no branches: the loops stay vector */
  return !(y <= cmin) & !(top & (y >= cmax));
}

static bool bn_rows_open(bn_rows *r, int64_t M, int64_t C) {
  r->M = M;
  r->C = C;
  r->nchunks = (M + BNR_CHUNK - 1) / BNR_CHUNK;
  r->part = r->nchunks * C > 0 ? calloc((size_t)(r->nchunks * 2 * C), sizeof(double)) : NULL;
  return r->part != NULL;
}

/* a[c] (and b[c]) = the chunks' partials summed in order */
static void bn_rows_total(const bn_rows *r, double *a, double *b) {
  for (int64_t c = 0; c < r->C; c++) a[c] = b ? (b[c] = 0) : 0;
  for (int64_t k = 0; k < r->nchunks; k++) {
    const double *p = r->part + k * 2 * r->C;
#pragma omp simd
    for (int64_t c = 0; c < r->C; c++) a[c] += p[c];
    if (b)
#pragma omp simd
      for (int64_t c = 0; c < r->C; c++) b[c] += p[r->C + c];
  }
}

static int bn_rows_threads(const bn_rows *r) {
  return r->M * r->C > 4 * VTL_GRAIN && !omp_in_parallel() ? omp_get_max_threads() : 1;
}

/* per chunk, with d = x - mu: kind 1: s1 = Σ d, s2 = Σ d² (the statistics' one pass, mu a shift);
   kind 2 (g given): s1 = Σ g, s2 = Σ g d (the gradient sums, mu the mean) */
#define BNR_SUMS(T)                                                                          \
  _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")                   \
  for (int64_t k = 0; k < r->nchunks; k++) {                                                 \
    double *s1 = r->part + k * 2 * C, *s2 = s1 + C;                                          \
    for (int64_t c = 0; c < 2 * C; c++) s1[c] = 0;                                           \
    int64_t i1 = (k + 1) * BNR_CHUNK < r->M ? (k + 1) * BNR_CHUNK : r->M;                   \
    for (int64_t i = k * BNR_CHUNK; i < i1; i++) {                                          \
      const T *xr = (const T *)x + i * C;                                                    \
      if (kind == 1) {                                                                       \
        _Pragma("omp simd") for (int64_t c = 0; c < C; c++) {                                \
          double d = xr[c] - mu[c];                                                          \
          s1[c] += d;                                                                        \
          s2[c] += d * d;                                                                    \
        }                                                                                    \
      } else if (mk) {                                                                       \
        BN_MASKED_ROW(T)((const T *)g + i * C, (const T *)my + i * C, xr, (T *)mgm + i * C, s1, s2, mu, C, cmn, \
                         cmx, top);                                                          \
      } else {                                                                               \
        const T *gr = (const T *)g + i * C;                                                  \
        _Pragma("omp simd") for (int64_t c = 0; c < C; c++) {                                \
          s1[c] += gr[c];                                                                    \
          s2[c] += gr[c] * (xr[c] - mu[c]);                                                  \
        }                                                                                    \
      }                                                                                      \
    }                                                                                        \
  }

/* one row of the masked gradient sums: gm = g where the output passes it, else 0; then s1 +=
   gm, s2 += gm (x - mu) from the row just written (two loops: each stays vector) */
#define BN_MASKED_ROW_DEF(T, NAME)                                                                           \
  static inline void NAME(const T *restrict gr, const T *restrict yr, const T *restrict xr, T *restrict mr,  \
                          double *restrict s1, double *restrict s2, const double *restrict mu, int64_t C,    \
                          double cmn, double cmx, bool top) {                                                \
    const T lo = (T)cmn, hi = top ? (T)cmx : (T)INFINITY; /* 0, 6 and the infinities: exact in T */        \
    _Pragma("omp simd") for (int64_t c = 0; c < C; c++) {                                                    \
      T g0 = gr[c], y = yr[c];                                                                               \
      mr[c] = (!(y <= lo) & !(top & (y >= hi))) ? g0 : (T)0;                                                 \
    }                                                                                                        \
    _Pragma("omp simd") for (int64_t c = 0; c < C; c++) {                                                    \
      s1[c] += mr[c];                                                                                        \
      s2[c] += mr[c] * (xr[c] - mu[c]);                                                                      \
    }                                                                                                        \
  }
BN_MASKED_ROW_DEF(float, masked_row_float)
BN_MASKED_ROW_DEF(double, masked_row_double)
#define BN_MASKED_ROW(T) masked_row_##T

/* kind 2 with mk: the gradient masked (bn_mask) as it is summed */
static void bn_rows_sums(const bn_rows *r, vtl_dtype dt, int kind, const void *x, const void *g, const double *mu,
                         const bn_mask *mk) {
  int64_t C = r->C;
  int nt = bn_rows_threads(r);
  bool top = mk && mk->cmax < INFINITY;
  /* the mask's fields in locals: stores through the output rows cannot change them */
  const void *my = mk ? mk->y : NULL;
  void *mgm = mk ? mk->gm : NULL;
  const double cmn = mk ? mk->cmin : 0, cmx = mk ? mk->cmax : 0;
  if (dt == VTL_F32) { BNR_SUMS(float) } else { BNR_SUMS(double) }
}

/* y = a[c] u + b[c] v + d[c] over rows (v, b optional) */
#define BNR_APPLY(T)                                                                         \
  _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")                   \
  for (int64_t i = 0; i < r->M; i++) {                                                       \
    const T *ur = (const T *)u + i * C, *vr = v ? (const T *)v + i * C : NULL;              \
    T *yr = (T *)y + i * C;                                                                  \
    if (vr)                                                                                  \
      _Pragma("omp simd") for (int64_t c = 0; c < C; c++) yr[c] = (T)(a[c] * ur[c] - b[c] * vr[c] + d[c]); \
    else                                                                                     \
      _Pragma("omp simd") for (int64_t c = 0; c < C; c++) yr[c] = (T)(a[c] * ur[c] + d[c]);  \
  }

static void bn_rows_apply(const bn_rows *r, vtl_dtype dt, void *y, const void *u, const double *a, const void *v,
                          const double *b, const double *d) {
  int64_t C = r->C;
  int nt = bn_rows_threads(r);
  if (dt == VTL_F32) { BNR_APPLY(float) } else { BNR_APPLY(double) }
}

/* f16 / bf16 rows: each row converted to f32 into this thread's buffer and summed as the f32
   kernel sums (false: no buffer) */
static bool is_half(vtl_dtype dt) { return dt == VTL_F16 || dt == VTL_BF16; }

static bool bn_rows_sums_half(const bn_rows *r, vtl_dtype dt, int kind, const void *x, const void *g,
                              const double *mu, const bn_mask *mk) {
  int64_t C = r->C;
  int nt = bn_rows_threads(r);
  bool top = mk && mk->cmax < INFINITY;
  const void *my = mk ? mk->y : NULL;
  void *mgm = mk ? mk->gm : NULL;
  const double cmn = mk ? mk->cmin : 0, cmx = mk ? mk->cmax : 0;
  float *buf = malloc((size_t)(nt * 3 * C) * sizeof(float));
  if (!buf) return false;
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    float *xr = buf + (size_t)omp_get_thread_num() * 3 * (size_t)C, *gr = xr + C, *yr = gr + C;
#pragma omp for schedule(static)
    for (int64_t k = 0; k < r->nchunks; k++) {
      double *s1 = r->part + k * 2 * C, *s2 = s1 + C;
      for (int64_t c = 0; c < 2 * C; c++) s1[c] = 0;
      int64_t i1 = (k + 1) * BNR_CHUNK < r->M ? (k + 1) * BNR_CHUNK : r->M;
      for (int64_t i = k * BNR_CHUNK; i < i1; i++) {
        if (dt == VTL_BF16 && kind != 2) { /* bf16 read in the loop itself */
          const uint16_t *xh = (const uint16_t *)x + i * C;
#pragma omp simd
          for (int64_t c = 0; c < C; c++) {
            double d = bf16_f32(xh[c]) - mu[c];
            s1[c] += d;
            s2[c] += d * d;
          }
          continue;
        }
        if (dt == VTL_BF16 && mk) {
          const uint16_t *xh = (const uint16_t *)x + i * C, *gh = (const uint16_t *)g + i * C;
          const uint16_t *yh = (const uint16_t *)my + i * C;
          uint16_t *mh = (uint16_t *)mgm + i * C;
          const float lo = (float)cmn, hi = top ? (float)cmx : INFINITY;
#pragma omp simd
          for (int64_t c = 0; c < C; c++) {
            uint16_t g0 = gh[c];
            float y = bf16_f32(yh[c]);
            mh[c] = (!(y <= lo) & !(top & (y >= hi))) ? g0 : 0;
          }
#pragma omp simd
          for (int64_t c = 0; c < C; c++) {
            float gv = bf16_f32(mh[c]);
            s1[c] += gv;
            s2[c] += gv * (bf16_f32(xh[c]) - mu[c]);
          }
          continue;
        }
        if (dt == VTL_BF16) {
          const uint16_t *xh = (const uint16_t *)x + i * C, *gh = (const uint16_t *)g + i * C;
#pragma omp simd
          for (int64_t c = 0; c < C; c++) {
            float gv = bf16_f32(gh[c]);
            s1[c] += gv;
            s2[c] += gv * (bf16_f32(xh[c]) - mu[c]);
          }
          continue;
        }
        vtl_cpu_cast(xr, VTL_F32, 4, (const uint16_t *)x + i * C, dt, 2, C);
        if (kind == 1) {
#pragma omp simd
          for (int64_t c = 0; c < C; c++) {
            double d = xr[c] - mu[c];
            s1[c] += d;
            s2[c] += d * d;
          }
        } else {
          vtl_cpu_cast(gr, VTL_F32, 4, (const uint16_t *)g + i * C, dt, 2, C);
          if (mk) { /* masked: zeros where the output stops the gradient, written back exactly */
            vtl_cpu_cast(yr, VTL_F32, 4, (const uint16_t *)my + i * C, dt, 2, C);
            for (int64_t c = 0; c < C; c++)
              if (!bn_keeps(yr[c], cmn, cmx, top)) gr[c] = 0;
            vtl_cpu_cast((uint16_t *)mgm + i * C, dt, 2, gr, VTL_F32, 4, C);
          }
#pragma omp simd
          for (int64_t c = 0; c < C; c++) {
            s1[c] += gr[c];
            s2[c] += gr[c] * (xr[c] - mu[c]);
          }
        }
      }
    }
  }
  free(buf);
  return true;
}

static bool bn_rows_apply_half(const bn_rows *r, vtl_dtype dt, void *y, const void *u, const double *a, const void *v,
                               const double *b, const double *d) {
  int64_t C = r->C;
  int nt = bn_rows_threads(r);
  float *buf = malloc((size_t)(nt * 3 * C) * sizeof(float));
  if (!buf) return false;
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    float *ur = buf + (size_t)omp_get_thread_num() * 3 * (size_t)C, *vr = ur + C, *yr = vr + C;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < r->M; i++) {
      if (dt == VTL_BF16) { /* bf16 read and written in the loop itself */
        const uint16_t *uh = (const uint16_t *)u + i * C, *vh = v ? (const uint16_t *)v + i * C : NULL;
        uint16_t *yh = (uint16_t *)y + i * C;
        if (vh) {
#pragma omp simd
          for (int64_t c = 0; c < C; c++) yh[c] = f32_bf16((float)(a[c] * bf16_f32(uh[c]) - b[c] * bf16_f32(vh[c]) + d[c]));
        } else {
#pragma omp simd
          for (int64_t c = 0; c < C; c++) yh[c] = f32_bf16((float)(a[c] * bf16_f32(uh[c]) + d[c]));
        }
        continue;
      }
      vtl_cpu_cast(ur, VTL_F32, 4, (const uint16_t *)u + i * C, dt, 2, C);
      if (v) {
        vtl_cpu_cast(vr, VTL_F32, 4, (const uint16_t *)v + i * C, dt, 2, C);
#pragma omp simd
        for (int64_t c = 0; c < C; c++) yr[c] = (float)(a[c] * ur[c] - b[c] * vr[c] + d[c]);
      } else {
#pragma omp simd
        for (int64_t c = 0; c < C; c++) yr[c] = (float)(a[c] * ur[c] + d[c]);
      }
      vtl_cpu_cast((uint16_t *)y + i * C, dt, 2, yr, VTL_F32, 4, C);
    }
  }
  free(buf);
  return true;
}

/* the data's sums or a pass over its rows, f32/f64 or half; false when out of scratch */
static bool rows_sums(const bn_rows *r, vtl_dtype dt, int kind, const void *x, const void *g, const double *mu,
                      const bn_mask *mk) {
  if (is_half(dt)) return bn_rows_sums_half(r, dt, kind, x, g, mu, mk);
  bn_rows_sums(r, dt, kind, x, g, mu, mk);
  return true;
}
static bool rows_apply(const bn_rows *r, vtl_dtype dt, void *y, const void *u, const double *a, const void *v,
                       const double *b, const double *d) {
  if (is_half(dt)) return bn_rows_apply_half(r, dt, y, u, a, v, b, d);
  bn_rows_apply(r, dt, y, u, a, v, b, d);
  return true;
}

/* the parameters' dtype: f32 for half data */
static vtl_dtype param_dtype(vtl_dtype dt) { return is_half(dt) ? VTL_F32 : dt; }

/* the statistics of x (M, C); false when the scratch could not be allocated */
static bool bn_rows_stats(vtl_dtype dt, const void *x, int64_t M, int64_t C, double eps, double *mean, double *invstd,
                          double *var) {
  bn_rows r;
  if (!bn_rows_open(&r, M, C)) return false;
  /* one pass of sums shifted by the first row (K), which keeps the squares clear of
     cancellation: mean = K + Σd/M, var = Σd²/M - (Σd/M)² */
  double *q = calloc((size_t)(2 * C + 1), sizeof(double));
  if (!q) { free(r.part); return false; }
  double *K = q + C;
  for (int64_t c = 0; c < C; c++) K[c] = M > 0 ? ld(x, c, dt) : 0;
  if (!rows_sums(&r, dt, 1, x, NULL, K, NULL)) {
    free(q);
    free(r.part);
    return false;
  }
  bn_rows_total(&r, mean, q);
  for (int64_t c = 0; c < C; c++) {
    double a = mean[c] / (double)M, v = q[c] / (double)M - a * a;
    if (!(v > 0)) v = v == v ? 0 : v; /* rounding below 0 (a constant channel); NaN stays */
    mean[c] = K[c] + a;
    invstd[c] = 1.0 / sqrt(v + eps);
    if (var) var[c] = v;
  }
  free(q);
  free(r.part);
  return true;
}

static bool bn_rows_forward(vtl_dtype dt, const void *x, void *out, int64_t M, int64_t C, const double *mean,
                            const double *invstd, const void *w, const void *b) {
  bn_rows r = {.M = M, .C = C};
  double *sc = malloc((size_t)(2 * C + 1) * sizeof(double));
  if (!sc) return false;
  double *sh = sc + C;
  vtl_dtype pdt = param_dtype(dt);
  for (int64_t c = 0; c < C; c++) {
    sc[c] = ldopt(w, c, pdt, 1) * invstd[c];
    sh[c] = ldopt(b, c, pdt, 0) - mean[c] * sc[c];
  }
  bool ok = rows_apply(&r, dt, out, x, sc, NULL, NULL, sh);
  free(sc);
  return ok;
}

static bool bn_rows_backward(vtl_dtype dt, const void *g, const void *x, int64_t M, int64_t C, const double *mean,
                             const double *invstd, const void *w, bool training, void *dx, void *gw, void *gb,
                             const bn_mask *mk) {
  bn_rows r;
  if (!bn_rows_open(&r, M, C)) return false;
  double *t = malloc((size_t)(5 * C + 1) * sizeof(double));
  if (!t) { free(r.part); return false; }
  double *sg = t, *sgx = t + C, *k = t + 2 * C, *q = t + 3 * C, *d = t + 4 * C;
  bool ok = true;
  if (mk || gw || gb || (dx && training)) {
    ok = rows_sums(&r, dt, 2, x, g, mean, mk);
    if (ok) bn_rows_total(&r, sg, sgx);
  }
  vtl_dtype pdt = param_dtype(dt);
  for (int64_t c = 0; ok && c < C; c++) {
    if (gw) st(gw, c, pdt, sgx[c] * invstd[c]);
    if (gb) st(gb, c, pdt, sg[c]);
    k[c] = ldopt(w, c, pdt, 1) * invstd[c];
    q[c] = training ? k[c] * invstd[c] * invstd[c] * sgx[c] / (double)M : 0;
    d[c] = training ? q[c] * mean[c] - k[c] * sg[c] / (double)M : 0;
  }
  if (ok && dx) ok = rows_apply(&r, dt, dx, mk ? mk->gm : g, k, training ? x : NULL, q, d);
  free(t);
  free(r.part);
  return ok;
}

vtl_status vtl_cpu_batch_norm_stats(vtl_dtype dt, const void *x, int64_t N, int64_t C, int64_t S, double eps,
                                    double *mean, double *invstd, double *var) {
  if (S == 1 && bn_rows_stats(dt, x, N, C, eps, mean, invstd, var)) return VTL_OK;
  int64_t CB = bn_block(S);
  DISPATCH_RANGE_HALF(dt, (C + CB - 1) / CB, N * C * S, bn_stats, x, N, C, S, eps, mean, invstd, var);
  return VTL_OK;
}

/* out = x * scale[c] + shift[c], scale = w * invstd, shift = b - mean * scale; rows (n, c). With a
   post-operation (bn_post_on), out = clamp(x * scale + shift + add, cmin, cmax), rounded once. */
INLINE bool bn_post_on(const void *add, double cmin, double cmax) { return add || cmin > -INFINITY || cmax < INFINITY; }
INLINE double bn_clamp(double v, double cmin, double cmax) { return v < cmin ? cmin : v > cmax ? cmax : v; } /* NaN stays */

INLINE void bn_forward(vtl_dtype dt, const void *x, void *out, int64_t C, int64_t S, const double *mean,
                       const double *invstd, const void *w, const void *b, const void *add, double cmin, double cmax,
                       int64_t rlo, int64_t rhi) {
  bool post = bn_post_on(add, cmin, cmax);
  for (int64_t r = rlo; r < rhi; r++) {
    int64_t c = r % C, o = r * S;
    vtl_dtype pdt = dt == VTL_F64 ? VTL_F64 : VTL_F32; /* the parameters: f32 with half data */
    double sc = ldopt(w, c, pdt, 1) * invstd[c], sh = ldopt(b, c, pdt, 0) - mean[c] * sc;
    if (!post) {
#pragma omp simd
      for (int64_t k = 0; k < S; k++) st(out, o + k, dt, ld(x, o + k, dt) * sc + sh);
    } else if (add) {
#pragma omp simd
      for (int64_t k = 0; k < S; k++) st(out, o + k, dt, bn_clamp(ld(x, o + k, dt) * sc + sh + ld(add, o + k, dt), cmin, cmax));
    } else {
#pragma omp simd
      for (int64_t k = 0; k < S; k++) st(out, o + k, dt, bn_clamp(ld(x, o + k, dt) * sc + sh, cmin, cmax));
    }
  }
}

/* the same over rows of C channels (S = 1) with a post-operation: sc, sh per channel */
INLINE void bn_rows_post(vtl_dtype dt, const void *x, void *out, int64_t C, const double *sc, const double *sh,
                         const void *add, double cmin, double cmax, int64_t rlo, int64_t rhi) {
  for (int64_t i = rlo; i < rhi; i++) {
    int64_t o = i * C;
    if (add) {
#pragma omp simd
      for (int64_t c = 0; c < C; c++) st(out, o + c, dt, bn_clamp(ld(x, o + c, dt) * sc[c] + sh[c] + ld(add, o + c, dt), cmin, cmax));
    } else {
#pragma omp simd
      for (int64_t c = 0; c < C; c++) st(out, o + c, dt, bn_clamp(ld(x, o + c, dt) * sc[c] + sh[c], cmin, cmax));
    }
  }
}

vtl_status vtl_cpu_batch_norm_forward(vtl_dtype dt, const void *x, void *out, int64_t N, int64_t C, int64_t S,
                                      const double *mean, const double *invstd, const void *w, const void *b,
                                      const void *add, double cmin, double cmax) {
  bool post = bn_post_on(add, cmin, cmax);
  if (S == 1 && !post && bn_rows_forward(dt, x, out, N, C, mean, invstd, w, b)) return VTL_OK;
  if (S == 1 && post) {
    double *sc = malloc((size_t)(2 * C + 1) * sizeof(double));
    if (!sc) return vtl_error_set(VTL_ERR_OOM, "batch_norm: out of memory for %lld channel coefficients", (long long)C);
    double *sh = sc + C;
    vtl_dtype pdt = param_dtype(dt);
    for (int64_t c = 0; c < C; c++) {
      sc[c] = ldopt(w, c, pdt, 1) * invstd[c];
      sh[c] = ldopt(b, c, pdt, 0) - mean[c] * sc[c];
    }
    DISPATCH_RANGE_HALF(dt, N, N * C, bn_rows_post, x, out, C, sc, sh, add, cmin, cmax);
    free(sc);
    return VTL_OK;
  }
  DISPATCH_RANGE_HALF(dt, N * C, N * C * S, bn_forward, x, out, C, S, mean, invstd, w, b, add, cmin, cmax);
  return VTL_OK;
}

/* Per channel: sg = Σ g, sgx = Σ g (x - mean); gw = sgx * invstd, gb = sg. Training:
   dx = k (g - sg/M - (x - mean) invstd² sgx/M), k = w invstd, written as dx = k g - q x + d.
   Eval: dx = k g. With a mask (mk.y), g is masked as it is summed, written to mk.gm and read
   from there by the dx pass. */
INLINE void bn_backward(vtl_dtype dt, const void *g, const void *x, int64_t N, int64_t C, int64_t S,
                        const double *mean, const double *invstd, const void *w, bool training, void *dx, void *gw,
                        void *gb, bn_mask mk, int64_t blo, int64_t bhi) {
  int64_t CB = bn_block(S);
  double M = (double)(N * S);
  vtl_dtype pdt = dt == VTL_F64 ? VTL_F64 : VTL_F32; /* the parameters: f32 with half data */
  /* the mask's top: an infinite cmax bounds nothing (+inf passes), and y >= NaN is never true */
  const double hi = mk.cmax < INFINITY ? mk.cmax : NAN;
  for (int64_t blk = blo; blk < bhi; blk++) {
    int64_t c0 = blk * CB, c1 = c0 + CB < C ? c0 + CB : C;
    double sg[BN_BLOCK] = {0}, sgx[BN_BLOCK] = {0};
    if (mk.y || gw || gb || (dx && training))
      for (int64_t n = 0; n < N; n++)
        for (int64_t c = c0; c < c1; c++) {
          int64_t o = (n * C + c) * S;
          double mu = mean[c], a = 0, p = 0;
          if (mk.y) { /* the masked row, then its sums (two loops: each stays vector) */
#pragma omp simd
            for (int64_t k = 0; k < S; k++) {
              double g0 = ld(g, o + k, dt), yv = ld(mk.y, o + k, dt);
              st(mk.gm, o + k, dt, (!(yv <= mk.cmin) & !(yv >= hi)) ? g0 : 0.0);
            }
#pragma omp simd reduction(+ : a, p)
            for (int64_t k = 0; k < S; k++) {
              double gv = ld(mk.gm, o + k, dt);
              a += gv;
              p += gv * (ld(x, o + k, dt) - mu);
            }
          } else {
#pragma omp simd reduction(+ : a, p)
            for (int64_t k = 0; k < S; k++) {
              double gv = ld(g, o + k, dt);
              a += gv;
              p += gv * (ld(x, o + k, dt) - mu);
            }
          }
          sg[c - c0] += a;
          sgx[c - c0] += p;
        }
    const void *gd = mk.y ? mk.gm : g; /* the gradient the dx pass reads */
    for (int64_t c = c0; c < c1; c++) {
      if (gw) st(gw, c, pdt, sgx[c - c0] * invstd[c]);
      if (gb) st(gb, c, pdt, sg[c - c0]);
    }
    if (!dx) continue;
    for (int64_t n = 0; n < N; n++)
      for (int64_t c = c0; c < c1; c++) {
        int64_t o = (n * C + c) * S;
        double k = ldopt(w, c, pdt, 1) * invstd[c], q = 0, d = 0;
        if (training) {
          q = k * invstd[c] * invstd[c] * sgx[c - c0] / M;
          d = q * mean[c] - k * sg[c - c0] / M;
        }
        if (training) {
#pragma omp simd
          for (int64_t i = 0; i < S; i++) st(dx, o + i, dt, k * ld(gd, o + i, dt) - q * ld(x, o + i, dt) + d);
        } else { /* eval: dx = k g, x not read (an infinite x must not make 0 * inf) */
#pragma omp simd
          for (int64_t i = 0; i < S; i++) st(dx, o + i, dt, k * ld(gd, o + i, dt));
        }
      }
  }
}

vtl_status vtl_cpu_batch_norm_backward(vtl_dtype dt, const void *g, const void *x, int64_t N, int64_t C, int64_t S,
                                       const double *mean, const double *invstd, const void *w, bool training,
                                       void *dx, void *gw, void *gb, const void *y, void *gm, double cmin,
                                       double cmax) {
  bn_mask mk = {y, gm, cmin, cmax};
  if (S == 1 && bn_rows_backward(dt, g, x, N, C, mean, invstd, w, training, dx, gw, gb, y ? &mk : NULL)) return VTL_OK;
  int64_t CB = bn_block(S);
  DISPATCH_RANGE_HALF(dt, (C + CB - 1) / CB, N * C * S, bn_backward, g, x, N, C, S, mean, invstd, w, training, dx, gw,
                      gb, mk);
  return VTL_OK;
}

/* ---- layer norm: x (M, D), rows split over the pool; loops in the data's own type T, sums
   in double ---- */

INLINE void row_stats(vtl_dtype dt, const void *x, int64_t o, int64_t D, double eps, double *mean, double *rstd) {
  double s = 0, q = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < D; j++) s += ld(x, o + j, dt);
  double mu = D ? s / (double)D : 0;
#pragma omp simd reduction(+ : q)
  for (int64_t j = 0; j < D; j++) { double d = ld(x, o + j, dt) - mu; q += d * d; }
  *mean = mu;
  *rstd = 1.0 / sqrt((D ? q / (double)D : 0) + eps);
}

#define LN_FORWARD(T)                                                                  \
  for (int64_t i = lo; i < hi; i++) {                                                  \
    const T *xr = (const T *)x + i * D, *wr = w, *br = b;                              \
    T *yr = (T *)out + i * D;                                                          \
    double mu, rs;                                                                     \
    row_stats(dt, x, i * D, D, eps, &mu, &rs);                                         \
    mean[i] = mu;                                                                      \
    rstd[i] = rs;                                                                      \
    T m = (T)mu, r = (T)rs;                                                            \
    if (wr && br)                                                                      \
      _Pragma("omp simd") for (int64_t j = 0; j < D; j++) yr[j] = (xr[j] - m) * r * wr[j] + br[j]; \
    else if (wr)                                                                       \
      _Pragma("omp simd") for (int64_t j = 0; j < D; j++) yr[j] = (xr[j] - m) * r * wr[j]; \
    else if (br)                                                                       \
      _Pragma("omp simd") for (int64_t j = 0; j < D; j++) yr[j] = (xr[j] - m) * r + br[j]; \
    else                                                                               \
      _Pragma("omp simd") for (int64_t j = 0; j < D; j++) yr[j] = (xr[j] - m) * r;     \
  }

INLINE void ln_forward(vtl_dtype dt, const void *x, void *out, int64_t D, const void *w, const void *b, double eps,
                       double *mean, double *rstd, int64_t lo, int64_t hi) {
  if (dt == VTL_F32) { LN_FORWARD(float) } else { LN_FORWARD(double) }
}

void vtl_cpu_layer_norm_forward(vtl_dtype dt, const void *x, void *out, int64_t M, int64_t D, const void *w,
                                const void *b, double eps, double *mean, double *rstd) {
  DISPATCH_RANGE(dt, M, M * D, ln_forward, x, out, D, w, b, eps, mean, rstd);
}

/* Per row, with h = g w and xhat = (x - mean) rstd: dx = rstd (h - Σh/D - xhat Σ(h xhat)/D);
   the same pass adds g xhat and g to this thread's column sums accw, accb (D each, or NULL). */
#define LN_BACKWARD(T)                                                                 \
  for (int64_t i = lo; i < hi; i++) {                                                  \
    const T *gr = (const T *)g + i * D, *xr = (const T *)x + i * D, *wr = w;           \
    T *dr = dx ? (T *)dx + i * D : NULL;                                               \
    T m = (T)mean[i], r = (T)rstd[i];                                                  \
    if (dr) {                                                                          \
      double s1 = 0, s2 = 0;                                                           \
      _Pragma("omp simd reduction(+ : s1, s2)")                                       \
      for (int64_t j = 0; j < D; j++) {                                                \
        T h = wr ? gr[j] * wr[j] : gr[j];                                              \
        s1 += h;                                                                       \
        s2 += h * (xr[j] - m);                                                         \
      }                                                                                \
      T a = (T)(s1 / (double)D), c = (T)(s2 * rstd[i] / (double)D);                    \
      _Pragma("omp simd")                                                              \
      for (int64_t j = 0; j < D; j++) {                                                \
        T h = wr ? gr[j] * wr[j] : gr[j], xh = (xr[j] - m) * r;                        \
        dr[j] = r * (h - a - xh * c);                                                  \
      }                                                                                \
    }                                                                                  \
    if (accw)                                                                          \
      _Pragma("omp simd")                                                              \
      for (int64_t j = 0; j < D; j++) {                                                \
        accw[j] += (double)(gr[j] * ((xr[j] - m) * r));                                \
        accb[j] += (double)gr[j];                                                      \
      }                                                                                \
  }

INLINE void ln_backward(vtl_dtype dt, const void *g, const void *x, int64_t D, const void *w, const double *mean,
                        const double *rstd, void *dx, double *accw, double *accb, int64_t lo, int64_t hi) {
  if (dt == VTL_F32) { LN_BACKWARD(float) } else { LN_BACKWARD(double) }
}

vtl_status vtl_cpu_layer_norm_backward(vtl_dtype dt, const void *g, const void *x, int64_t M, int64_t D, const void *w,
                                       const double *mean, const double *rstd, void *dx, void *gw, void *gb) {
  int nt = M * D > VTL_GRAIN && !omp_in_parallel() ? omp_get_max_threads() : 1;
  double *acc = NULL;
  if (gw || gb) {
    acc = calloc((size_t)nt * 2 * (size_t)(D ? D : 1), sizeof(double));
    if (!acc) return vtl_error_set(VTL_ERR_OOM, "layer_norm_backward: out of memory");
  }
#pragma omp parallel num_threads(nt)
  {
    int64_t lo, hi;
    vtl_thread_range(M, &lo, &hi);
    double *aw = acc ? acc + (size_t)omp_get_thread_num() * 2 * (size_t)D : NULL, *ab = aw ? aw + D : NULL;
    if (dt == VTL_F32) ln_backward(VTL_F32, g, x, D, w, mean, rstd, dx, aw, ab, lo, hi);
    else ln_backward(VTL_F64, g, x, D, w, mean, rstd, dx, aw, ab, lo, hi);
  }
  if (acc) {
    for (int64_t j = 0; j < D; j++) {
      double sw = 0, sb = 0;
      for (int t = 0; t < nt; t++) {
        sw += acc[(size_t)t * 2 * (size_t)D + (size_t)j];
        sb += acc[(size_t)t * 2 * (size_t)D + (size_t)(D + j)];
      }
      if (gw) st(gw, j, dt, sw);
      if (gb) st(gb, j, dt, sb);
    }
    free(acc);
  }
  return VTL_OK;
}

/* ---- group norm: x (N, C, S); group (n, k) is the contiguous block of C/G channels ---- */

INLINE void gn_forward(vtl_dtype dt, const void *x, void *out, int64_t C, int64_t S, int64_t G, const void *w,
                       const void *b, double eps, double *mean, double *rstd, int64_t lo, int64_t hi) {
  int64_t Cg = C / G;
  for (int64_t r = lo; r < hi; r++) {
    int64_t n = r / G, k = r % G, o = (n * C + k * Cg) * S;
    double mu, rs;
    row_stats(dt, x, o, Cg * S, eps, &mu, &rs);
    mean[r] = mu;
    rstd[r] = rs;
    for (int64_t c = k * Cg; c < (k + 1) * Cg; c++) {
      double sc = ldopt(w, c, dt, 1) * rs, sh = ldopt(b, c, dt, 0) - mu * sc;
      int64_t oc = (n * C + c) * S;
#pragma omp simd
      for (int64_t i = 0; i < S; i++) st(out, oc + i, dt, ld(x, oc + i, dt) * sc + sh);
    }
  }
}

void vtl_cpu_group_norm_forward(vtl_dtype dt, const void *x, void *out, int64_t N, int64_t C, int64_t S, int64_t G,
                                const void *w, const void *b, double eps, double *mean, double *rstd) {
  DISPATCH_RANGE(dt, N * G, N * C * S, gn_forward, x, out, C, S, G, w, b, eps, mean, rstd);
}

/* Per (n, c): sg = Σ_s g, sgx = Σ_s g x (kept in sums (N, C, 2)). Per group, with K = C/G * S,
   s1 = Σ_c w_c sg, s2 = Σ_c w_c rstd (sgx - mean sg):
   dx = rstd w_c g - rstd s1/K - rstd² (x - mean) s2/K. */
INLINE void gn_backward_groups(vtl_dtype dt, const void *g, const void *x, int64_t C, int64_t S, int64_t G,
                               const void *w, const double *mean, const double *rstd, void *dx, double *sums,
                               int64_t lo, int64_t hi) {
  int64_t Cg = C / G;
  for (int64_t r = lo; r < hi; r++) {
    int64_t n = r / G, k = r % G;
    double s1 = 0, s2 = 0, mu = mean[r], rs = rstd[r];
    for (int64_t c = k * Cg; c < (k + 1) * Cg; c++) {
      int64_t o = (n * C + c) * S;
      double a = 0, p = 0;
#pragma omp simd reduction(+ : a, p)
      for (int64_t i = 0; i < S; i++) {
        double gv = ld(g, o + i, dt);
        a += gv;
        p += gv * ld(x, o + i, dt);
      }
      sums[2 * (n * C + c)] = a;
      sums[2 * (n * C + c) + 1] = p;
      double wc = ldopt(w, c, dt, 1);
      s1 += wc * a;
      s2 += wc * rs * (p - mu * a);
    }
    if (!dx) continue;
    double K = (double)(Cg * S);
    double q = rs * rs * s2 / K, d = q * mu - rs * s1 / K;
    for (int64_t c = k * Cg; c < (k + 1) * Cg; c++) {
      int64_t o = (n * C + c) * S;
      double kc = rs * ldopt(w, c, dt, 1);
#pragma omp simd
      for (int64_t i = 0; i < S; i++) st(dx, o + i, dt, kc * ld(g, o + i, dt) - q * ld(x, o + i, dt) + d);
    }
  }
}

/* gw_c = Σ_n rstd (sgx - mean sg), gb_c = Σ_n sg */
INLINE void gn_backward_channels(vtl_dtype dt, int64_t N, int64_t C, int64_t G, const double *mean, const double *rstd,
                                 const double *sums, void *gw, void *gb, int64_t lo, int64_t hi) {
  int64_t Cg = C / G;
  for (int64_t c = lo; c < hi; c++) {
    double aw = 0, ab = 0;
    for (int64_t n = 0; n < N; n++) {
      int64_t r = n * G + c / Cg;
      double a = sums[2 * (n * C + c)], p = sums[2 * (n * C + c) + 1];
      aw += rstd[r] * (p - mean[r] * a);
      ab += a;
    }
    if (gw) st(gw, c, dt, aw);
    if (gb) st(gb, c, dt, ab);
  }
}

vtl_status vtl_cpu_group_norm_backward(vtl_dtype dt, const void *g, const void *x, int64_t N, int64_t C, int64_t S,
                                       int64_t G, const void *w, const double *mean, const double *rstd, void *dx,
                                       void *gw, void *gb) {
  double *sums = malloc((size_t)(N * C > 0 ? N * C : 1) * 2 * sizeof(double));
  if (!sums) return vtl_error_set(VTL_ERR_OOM, "group_norm_backward: out of memory");
  DISPATCH_RANGE(dt, N * G, N * C * S, gn_backward_groups, g, x, C, S, G, w, mean, rstd, dx, sums);
  if (gw || gb) DISPATCH_RANGE(dt, C, N * C * 8, gn_backward_channels, N, C, G, mean, rstd, sums, gw, gb);
  free(sums);
  return VTL_OK;
}

/* ---- softmax: x (A, R, B) along R ----
 * B == 1: one contiguous row per item. B > 1: items are blocks of up to 64 columns, walked along
 * R with the per-column max and sum on the stack, so every access is contiguous. The loops run
 * in the data's own type (T below: float for f32, so 8 or 16 lanes), sums in double. */

#define SM_BLOCK 64
#define SM_VEC 16 /* the row loops' vector: 16 floats in an AVX-512 register */
#define EXP(z) _Generic((z), float: vtl_cpu_expf, default: exp)(z)

/* rows [lo, hi) of R contiguous elements */
#define SM_ROWS(T)                                                                     \
  for (int64_t a = lo; a < hi; a++) {                                                  \
    const T *xr = (const T *)x + a * R;                                                \
    T *yr = (T *)y + a * R, m = -INFINITY;                                             \
    int nan = 0;                                                                       \
    _Pragma("omp simd reduction(max : m) reduction(| : nan)")                         \
    for (int64_t r = 0; r < R; r++) {                                                  \
      m = xr[r] > m ? xr[r] : m;                                                       \
      nan |= xr[r] != xr[r];                                                           \
    }                                                                                  \
    if (nan) m = NAN;                                                                  \
    double s = 0;                                                                      \
    /* whole vectors of SM_VEC, then the tail in one padded vector (e^-inf = 0), so no     \
       element takes the scalar exp */                                                 \
    int64_t Rv = R - R % SM_VEC;                                                       \
    T tail[SM_VEC];                                                                    \
    for (int64_t j = 0; j < SM_VEC; j++) tail[j] = Rv + j < R ? xr[Rv + j] - m : (T)-INFINITY; \
    if (logsm) {                                                                       \
      _Pragma("omp simd reduction(+ : s)")                                            \
      for (int64_t r = 0; r < Rv; r++) s += EXP(xr[r] - m);                            \
      _Pragma("omp simd reduction(+ : s)")                                            \
      for (int64_t j = 0; j < SM_VEC; j++) s += EXP(tail[j]);                          \
      T lz = (T)(m + log(s));                                                          \
      for (int64_t r = 0; r < R; r++) yr[r] = xr[r] - lz;                              \
    } else {                                                                           \
      _Pragma("omp simd reduction(+ : s)")                                            \
      for (int64_t r = 0; r < Rv; r++) {                                               \
        T e = EXP(xr[r] - m);                                                          \
        s += e;                                                                        \
        yr[r] = e;                                                                     \
      }                                                                                \
      _Pragma("omp simd reduction(+ : s)")                                            \
      for (int64_t j = 0; j < SM_VEC; j++) {                                           \
        tail[j] = EXP(tail[j]);                                                        \
        s += tail[j];                                                                  \
      }                                                                                \
      for (int64_t r = Rv; r < R; r++) yr[r] = tail[r - Rv];                           \
      T inv = (T)(1.0 / s);                                                            \
      if (invs) ((T *)invs)[a] = inv;                                                  \
      else                                                                             \
        for (int64_t r = 0; r < R; r++) yr[r] *= inv;                                  \
      if (lse) ((T *)lse)[a] = (T)(m + log(s));                                        \
    }                                                                                  \
  }

/* blocks [lo, hi) of up to SM_BLOCK columns (item t: a = t / nb, columns b0 .. b0 + W) */
#define SM_BLOCKS(T)                                                                   \
  for (int64_t t = lo; t < hi; t++) {                                                  \
    int64_t a = t / nb, b0 = (t % nb) * SM_BLOCK, W = b0 + SM_BLOCK < B ? SM_BLOCK : B - b0; \
    const T *xb = (const T *)x + a * R * B + b0;                                       \
    T *yb = (T *)y + a * R * B + b0;                                                   \
    T m[SM_BLOCK];                                                                     \
    double s[SM_BLOCK];                                                                \
    int nan[SM_BLOCK];                                                                 \
    for (int64_t j = 0; j < W; j++) { m[j] = -INFINITY; s[j] = 0; nan[j] = 0; }        \
    for (int64_t r = 0; r < R; r++)                                                    \
      for (int64_t j = 0; j < W; j++) {                                                \
        T v = xb[r * B + j];                                                           \
        m[j] = v > m[j] ? v : m[j];                                                    \
        nan[j] |= v != v;                                                              \
      }                                                                                \
    for (int64_t j = 0; j < W; j++) m[j] = nan[j] ? NAN : m[j];                        \
    for (int64_t r = 0; r < R; r++)                                                    \
      for (int64_t j = 0; j < W; j++) {                                                \
        T e = EXP(xb[r * B + j] - m[j]);                                               \
        s[j] += e;                                                                     \
        if (!logsm) yb[r * B + j] = e;                                                 \
      }                                                                                \
    T f[SM_BLOCK];                                                                     \
    for (int64_t j = 0; j < W; j++) f[j] = (T)(logsm ? m[j] + log(s[j]) : 1.0 / s[j]);  \
    for (int64_t r = 0; r < R; r++)                                                    \
      for (int64_t j = 0; j < W; j++)                                                  \
        yb[r * B + j] = logsm ? xb[r * B + j] - f[j] : yb[r * B + j] * f[j];           \
  }

static void sm_forward(vtl_dtype dt, const void *x, void *y, int64_t R, int64_t B, bool logsm, int64_t lo,
                       int64_t hi) {
  int64_t nb = (B + SM_BLOCK - 1) / SM_BLOCK;
  void *lse = NULL, *invs = NULL;
  if (B == 1) {
    if (dt == VTL_F32) { SM_ROWS(float) } else { SM_ROWS(double) }
  } else {
    if (dt == VTL_F32) { SM_BLOCKS(float) } else { SM_BLOCKS(double) }
  }
}

void vtl_cpu_softmax_rows(vtl_dtype dt, const void *x, void *y, int64_t rows, int64_t R, void *lse, void *invs) {
  const bool logsm = false;
  const int64_t lo = 0, hi = rows;
  if (dt == VTL_F32) { SM_ROWS(float) } else { SM_ROWS(double) }
}

void vtl_cpu_softmax_forward(vtl_dtype dt, const void *x, void *y, int64_t A, int64_t R, int64_t B, bool logsm) {
  int64_t items = B == 1 ? A : A * ((B + SM_BLOCK - 1) / SM_BLOCK);
  PARALLEL_RANGE(items, A * R * B * 4, sm_forward(dt, x, y, R, B, logsm, lo, hi));
}

/* softmax: dx = y (g - Σ g y); log_softmax: dx = g - exp(y) Σ g. Items as in the forward. */
#define SM_BACKWARD(T)                                                                 \
  for (int64_t t = lo; t < hi; t++) {                                                  \
    int64_t a = t / nb, b0 = (t % nb) * W0, W = b0 + W0 < B ? W0 : B - b0;             \
    const T *gb = (const T *)g + a * R * B + b0, *yb = (const T *)y + a * R * B + b0;  \
    T *db = (T *)dx + a * R * B + b0;                                                  \
    if (B == 1) {                                                                      \
      double acc = 0;                                                                  \
      if (logsm) {                                                                     \
        _Pragma("omp simd reduction(+ : acc)")                                        \
        for (int64_t r = 0; r < R; r++) acc += gb[r];                                  \
        T sc = (T)acc;                                                                 \
        for (int64_t r = 0; r < R; r++) db[r] = gb[r] - EXP(yb[r]) * sc;               \
      } else {                                                                         \
        _Pragma("omp simd reduction(+ : acc)")                                        \
        for (int64_t r = 0; r < R; r++) acc += gb[r] * yb[r];                          \
        T sc = (T)acc;                                                                 \
        for (int64_t r = 0; r < R; r++) db[r] = yb[r] * (gb[r] - sc);                  \
      }                                                                                \
      continue;                                                                        \
    }                                                                                  \
    double s[SM_BLOCK] = {0};                                                          \
    for (int64_t r = 0; r < R; r++)                                                    \
      for (int64_t j = 0; j < W; j++) s[j] += logsm ? gb[r * B + j] : gb[r * B + j] * yb[r * B + j]; \
    T f[SM_BLOCK];                                                                     \
    for (int64_t j = 0; j < W; j++) f[j] = (T)s[j];                                    \
    for (int64_t r = 0; r < R; r++)                                                    \
      for (int64_t j = 0; j < W; j++) {                                                \
        int64_t i = r * B + j;                                                         \
        db[i] = logsm ? gb[i] - EXP(yb[i]) * f[j] : yb[i] * (gb[i] - f[j]);            \
      }                                                                                \
  }

static void sm_backward(vtl_dtype dt, const void *g, const void *y, void *dx, int64_t R, int64_t B, bool logsm,
                        int64_t lo, int64_t hi) {
  int64_t W0 = B == 1 ? 1 : SM_BLOCK, nb = (B + W0 - 1) / W0;
  if (dt == VTL_F32) { SM_BACKWARD(float) } else { SM_BACKWARD(double) }
}

void vtl_cpu_softmax_backward(vtl_dtype dt, const void *g, const void *y, void *dx, int64_t A, int64_t R, int64_t B,
                              bool logsm) {
  int64_t nb = B == 1 ? 1 : (B + SM_BLOCK - 1) / SM_BLOCK;
  PARALLEL_RANGE(A * nb, A * R * B * 2, sm_backward(dt, g, y, dx, R, B, logsm, lo, hi));
}

/* ---- class targets ---- */

int64_t vtl_cpu_check_targets(const int64_t *target, int64_t n, int64_t C, int64_t ignore_index) {
  for (int64_t i = 0; i < n; i++) {
    int64_t t = target[i];
    if (t != ignore_index && (t < 1 || t > C)) return i;
  }
  return -1;
}

double vtl_cpu_target_weight_sum(vtl_dtype dt, const int64_t *target, int64_t n, const void *w, int64_t ignore_index) {
  double s = 0;
  for (int64_t i = 0; i < n; i++)
    if (target[i] != ignore_index) s += w ? ld(w, target[i] - 1, dt) : 1;
  return s;
}

/* ---- cross entropy: x (N, C, S) logits, rows (n, s) with class stride S ----
 * Class target t (1-based) with weight w and smoothing e, lse = log Σ exp x:
 *   loss = (1-e) w_t (lse - x_t) + e/C Σ_c w_c (lse - x_c); 0 for ignored rows.
 * Probability target q (smoothed: q' = (1-e) q + e/C): loss = Σ_c w_c q'_c (lse - x_c).
 * Both are -Σ_c coef_c (x_c - lse), so d loss/d x_c = p_c Σ coef - coef_c (p = softmax). */

/* log Σ_c exp x_c over one row (C values at stride S), in the data's own type, sum in double */
#define DEFINE_ROW_LSE(T, NAME)                                              \
  static double NAME(const T *x, int64_t C, int64_t S) {                     \
    T m = -INFINITY;                                                         \
    int nan = 0;                                                             \
    double s = 0;                                                            \
    if (S == 1) { /* contiguous classes: vectorised passes */                \
      _Pragma("omp simd reduction(max : m) reduction(| : nan)")             \
      for (int64_t c = 0; c < C; c++) {                                      \
        m = x[c] > m ? x[c] : m;                                             \
        nan |= x[c] != x[c];                                                 \
      }                                                                      \
      if (nan) return NAN;                                                   \
      if (isinf(m)) return m;                                                \
      _Pragma("omp simd reduction(+ : s)")                                  \
      for (int64_t c = 0; c < C; c++) s += EXP(x[c] - m);                    \
      return m + log(s);                                                     \
    }                                                                        \
    for (int64_t c = 0; c < C; c++) {                                        \
      T v = x[c * S];                                                        \
      m = v > m ? v : m;                                                     \
      nan |= v != v;                                                         \
    }                                                                        \
    if (nan) return NAN;                                                     \
    if (isinf(m)) return m;                                                  \
    for (int64_t c = 0; c < C; c++) s += EXP(x[c * S] - m);                  \
    return m + log(s);                                                       \
  }
DEFINE_ROW_LSE(float, row_lse_f32)
DEFINE_ROW_LSE(double, row_lse_f64)

INLINE double row_lse(vtl_dtype dt, const void *x, int64_t o, int64_t C, int64_t S) {
  return dt == VTL_F32 ? row_lse_f32((const float *)x + o, C, S) : row_lse_f64((const double *)x + o, C, S);
}

/* dx_c = exp(x_c - lse) a - b w_c over one row (b w_c = b when w is NULL) */
#define CE_ROW_DX(T)                                                          \
  do {                                                                        \
    const T *xr = (const T *)x + o, *wr = w;                                  \
    T *dr = (T *)dx + o, l = (T)lse, a = (T)sc, b = (T)ec;                    \
    if (S == 1 && !wr)                                                        \
      _Pragma("omp simd")                                                     \
      for (int64_t c = 0; c < C; c++) dr[c] = EXP(xr[c] - l) * a - b;         \
    else if (wr)                                                              \
      for (int64_t c = 0; c < C; c++) dr[c * S] = EXP(xr[c * S] - l) * a - b * wr[c]; \
    else                                                                      \
      for (int64_t c = 0; c < C; c++) dr[c * S] = EXP(xr[c * S] - l) * a - b; \
  } while (0)

INLINE double ce_forward(vtl_dtype dt, const void *x, int64_t C, int64_t S, const int64_t *target, const void *prob,
                         const void *w, int64_t ignore_index, double e, void *loss, int64_t lo, int64_t hi) {
  double total = 0;
  for (int64_t r = lo; r < hi; r++) {
    int64_t n = r / S, s = r % S, o = n * C * S + s;
    double l = 0;
    if (target) {
      int64_t t = target[r];
      if (t != ignore_index) {
        double lse = row_lse(dt, x, o, C, S);
        l = (1 - e) * ldopt(w, t - 1, dt, 1) * (lse - ld(x, o + (t - 1) * S, dt));
        if (e > 0) {
          double sm = 0;
          for (int64_t c = 0; c < C; c++) sm += ldopt(w, c, dt, 1) * (lse - ld(x, o + c * S, dt));
          l += e / (double)C * sm;
        }
      }
    } else {
      double lse = row_lse(dt, x, o, C, S);
      for (int64_t c = 0; c < C; c++) {
        double q = (1 - e) * ld(prob, o + c * S, dt) + e / (double)C;
        l += ldopt(w, c, dt, 1) * q * (lse - ld(x, o + c * S, dt));
      }
    }
    if (loss) st(loss, r, dt, l);
    total += l;
  }
  return total;
}

double vtl_cpu_cross_entropy_forward(vtl_dtype dt, const void *x, int64_t N, int64_t C, int64_t S,
                                     const int64_t *target, const void *prob, const void *w, int64_t ignore_index,
                                     double smoothing, void *loss) {
  double total;
  if (dt == VTL_F32)
    PARALLEL_SUM(total, N * S, N * C * S * 4, ce_forward(VTL_F32, x, C, S, target, prob, w, ignore_index, smoothing, loss, lo, hi));
  else
    PARALLEL_SUM(total, N * S, N * C * S * 4, ce_forward(VTL_F64, x, C, S, target, prob, w, ignore_index, smoothing, loss, lo, hi));
  return total;
}

INLINE void ce_backward(vtl_dtype dt, const void *x, int64_t C, int64_t S, const int64_t *target, const void *prob,
                        const void *w, int64_t ignore_index, double e, const void *grow, double gscale, void *dx,
                        void *dprob, int64_t lo, int64_t hi) {
  double wtotal = 0; /* Σ_c w_c, for the smoothing term */
  for (int64_t c = 0; c < C; c++) wtotal += ldopt(w, c, dt, 1);
  for (int64_t r = lo; r < hi; r++) {
    int64_t n = r / S, s = r % S, o = n * C * S + s;
    double gr = grow ? ld(grow, r, dt) : gscale;
    if (target) {
      int64_t t = target[r];
      if (t == ignore_index) {
        if (dx)
          for (int64_t c = 0; c < C; c++) st(dx, o + c * S, dt, 0);
        continue;
      }
      if (!dx) continue;
      double lse = row_lse(dt, x, o, C, S), wt = ldopt(w, t - 1, dt, 1);
      double sc = gr * ((1 - e) * wt + e / (double)C * wtotal), ec = gr * e / (double)C;
      if (dt == VTL_F32) CE_ROW_DX(float);
      else CE_ROW_DX(double);
      /* the target's own coefficient */
      int64_t it = o + (t - 1) * S;
      st(dx, it, dt, ld(dx, it, dt) - gr * (1 - e) * wt);
    } else {
      double lse = row_lse(dt, x, o, C, S), sc = 0;
      for (int64_t c = 0; c < C; c++)
        sc += ldopt(w, c, dt, 1) * ((1 - e) * ld(prob, o + c * S, dt) + e / (double)C);
      for (int64_t c = 0; c < C; c++) {
        int64_t i = o + c * S;
        double wc = ldopt(w, c, dt, 1), xv = ld(x, i, dt);
        if (dx) st(dx, i, dt, gr * (ex(xv - lse, dt) * sc - wc * ((1 - e) * ld(prob, i, dt) + e / (double)C)));
        if (dprob) st(dprob, i, dt, gr * (1 - e) * wc * (lse - xv));
      }
    }
  }
}

void vtl_cpu_cross_entropy_backward(vtl_dtype dt, const void *x, int64_t N, int64_t C, int64_t S,
                                    const int64_t *target, const void *prob, const void *w, int64_t ignore_index,
                                    double smoothing, const void *grow, double gscale, void *dx, void *dprob) {
  DISPATCH_RANGE(dt, N * S, N * C * S * 4, ce_backward, x, C, S, target, prob, w, ignore_index, smoothing, grow,
                 gscale, dx, dprob);
}

/* ---- nll loss: loss = -w_t logp_t ---- */

INLINE double nll_forward(vtl_dtype dt, const void *logp, int64_t C, int64_t S, const int64_t *target, const void *w,
                          int64_t ignore_index, void *loss, int64_t lo, int64_t hi) {
  double total = 0;
  for (int64_t r = lo; r < hi; r++) {
    int64_t n = r / S, s = r % S, t = target[r];
    double l = t == ignore_index ? 0 : -ldopt(w, t - 1, dt, 1) * ld(logp, n * C * S + (t - 1) * S + s, dt);
    if (loss) st(loss, r, dt, l);
    total += l;
  }
  return total;
}

double vtl_cpu_nll_loss_forward(vtl_dtype dt, const void *logp, int64_t N, int64_t C, int64_t S,
                                const int64_t *target, const void *w, int64_t ignore_index, void *loss) {
  double total;
  if (dt == VTL_F32)
    PARALLEL_SUM(total, N * S, N * S * 16, nll_forward(VTL_F32, logp, C, S, target, w, ignore_index, loss, lo, hi));
  else
    PARALLEL_SUM(total, N * S, N * S * 16, nll_forward(VTL_F64, logp, C, S, target, w, ignore_index, loss, lo, hi));
  return total;
}

INLINE void nll_backward(vtl_dtype dt, int64_t C, int64_t S, const int64_t *target, const void *w,
                         int64_t ignore_index, const void *grow, double gscale, void *dx, int64_t lo, int64_t hi) {
  for (int64_t r = lo; r < hi; r++) {
    int64_t n = r / S, s = r % S, t = target[r];
    for (int64_t c = 0; c < C; c++) st(dx, n * C * S + c * S + s, dt, 0);
    if (t == ignore_index) continue;
    double gr = grow ? ld(grow, r, dt) : gscale;
    st(dx, n * C * S + (t - 1) * S + s, dt, -ldopt(w, t - 1, dt, 1) * gr);
  }
}

void vtl_cpu_nll_loss_backward(vtl_dtype dt, int64_t N, int64_t C, int64_t S, const int64_t *target, const void *w,
                               int64_t ignore_index, const void *grow, double gscale, void *dx) {
  DISPATCH_RANGE(dt, N * S, N * C * S, nll_backward, C, S, target, w, ignore_index, grow, gscale, dx);
}
