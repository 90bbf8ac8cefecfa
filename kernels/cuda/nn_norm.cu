// CUDA batch norm, layer norm, softmax / log_softmax and cross entropy (forward, backward).
// Every reduction runs in a fixed order (block-wide trees and per-chunk partials summed in
// order, no floating-point atomics), so a result repeats bit for bit from run to run. Sums and
// statistics are double, as on the CPU (kernels/cpu/norm.c); elementwise parts compute in the
// data's own type where the CPU does.
#include <limits.h>
#include "nn.cuh"

namespace {

constexpr int BLOCK = 256;

cudaStream_t stream_of(const vtl_tensor *t) { return vtl_cu_stream(vtl_cu_device(t)); }

#include "norm_kernels.cuh"

// ---------------------------------------------------------------- batch norm

int bn_chunks(int64_t M) {
  int64_t k = (M + BLOCK * 16 - 1) / (BLOCK * 16);
  return (int)(k < 1 ? 1 : k > 64 ? 64 : k);
}

int bn_row_chunks(int64_t M) {
  int64_t k = (M + 511) / 512;
  return (int)(k < 1 ? 1 : k > 512 ? 512 : k);
}

// launches bn_rows_partial over nk chunks, 16 bytes per access where C and the pointers allow
template <class T>
void bn_rows_launch(const T *x, const T *g, int64_t C, int64_t M, const double *mean, double *part, int nk,
                    cudaStream_t st, const T *y = nullptr, T *gm = nullptr, bn_post mk = bn_post{}) {
  constexpr int V = 16 / (int)sizeof(T);
  if (C % V == 0 && (((uintptr_t)x | (uintptr_t)g | (uintptr_t)y | (uintptr_t)gm) & 15) == 0)
    bn_rows_partial<T, V><<<dim3((unsigned)((C / V + RW - 1) / RW), (unsigned)nk), dim3(RW, RH), 0, st>>>(
        x, g, C, M, mean, part, y, gm, mk);
  else
    bn_rows_partial<T, 1><<<dim3((unsigned)((C + RW - 1) / RW), (unsigned)nk), dim3(RW, RH), 0, st>>>(
        x, g, C, M, mean, part, y, gm, mk);
}

// launches bn_lines with 16-byte steps where the line length and the pointers allow, else one
// element per step
template <class T, class P, bool GRAD>
void bn_lines_launch(const T *x, const T *g, T *out, int64_t N, int64_t C, int64_t S, bn_coefs cf, const P *w,
                     const P *b, bn_post post, cudaStream_t st) {
  bool rows = S == 1;
  int64_t outer = rows ? N : N * C, inner = rows ? C : S;
  constexpr int V = 16 / (int)sizeof(T);
  bool vec = inner % V == 0 && (((uintptr_t)x | (uintptr_t)g | (uintptr_t)out) & 15) == 0;
  if (vec)
    bn_lines<T, P, V, GRAD><<<vtl_cu_blocks(outer * inner / V), BLOCK, 0, st>>>(x, g, out, outer, inner, C, rows, cf, w, b,
                                                                               post);
  else
    bn_lines<T, P, 1, GRAD><<<vtl_cu_blocks(outer * inner), BLOCK, 0, st>>>(x, g, out, outer, inner, C, rows, cf, w, b,
                                                                           post);
}

template <class T, class P>
vtl_status bn_stats_t(const vtl_tensor *x, int64_t N, int64_t C, int64_t S, bool training, double momentum, double eps,
                      vtl_tensor *rm, vtl_tensor *rv, vtl_tensor *mean, vtl_tensor *invstd) {
  cudaStream_t st = stream_of(x);
  if (!st) return vtl_error_status();
  if (C == 0) return VTL_OK;
  unsigned cb = vtl_cu_blocks(C);
  int64_t rms = rm ? rm->strides[0] : 0, rvs = rv ? rv->strides[0] : 0;
  if (!training) {
    bn_eval_stats<P><<<cb, BLOCK, 0, st>>>(C, cu_ptr<P>(rm), rms, cu_ptr<P>(rv), rvs, eps, cu_ptr<double>(mean),
                                           cu_ptr<double>(invstd));
    VTL_CU_LAUNCHED("batch_norm");
    return VTL_OK;
  }
  int64_t M = N * S;
  bool rows = S == 1;
  int nk = rows ? bn_row_chunks(M) : bn_chunks(M);
  cu_scratch part((size_t)C * nk * 2 * sizeof(double), vtl_cu_device(x));
  if (!part.p) return vtl_error_status();
  if (rows)
    bn_rows_launch<T>(cu_ptr<T>(x), nullptr, C, M, nullptr, (double *)part.p, nk, st);
  else
    bn_partial_stats<T><<<dim3((unsigned)C, (unsigned)nk), BLOCK, 0, st>>>(cu_ptr<T>(x), C, S, M, (double *)part.p);
  VTL_CU_LAUNCHED("batch_norm");
  bn_finish_stats<T, P><<<cb, BLOCK, 0, st>>>(cu_ptr<T>(x), C, S, M, (const double *)part.p, nk, eps, momentum,
                                              cu_ptr<P>(rm), rms, cu_ptr<P>(rv), rvs, cu_ptr<double>(mean),
                                           cu_ptr<double>(invstd));
  VTL_CU_LAUNCHED("batch_norm");
  return VTL_OK;
}

template <class T, class P>
vtl_status bn_backward_t(const vtl_tensor *g, const vtl_tensor *x, int64_t N, int64_t C, int64_t S,
                         const vtl_tensor *mean, const vtl_tensor *invstd, const vtl_tensor *w, bool training,
                         vtl_tensor *dx, vtl_tensor *gw, vtl_tensor *gb, const vtl_tensor *y, double cmin, double cmax,
                         vtl_tensor *gm) {
  cudaStream_t st = stream_of(x);
  if (!st) return vtl_error_status();
  if (C == 0) return VTL_OK;
  int64_t M = N * S, total = M * C;
  int dev = vtl_cu_device(x);
  // with y, the sums pass masks g and writes gm, which the dx pass then reads
  bn_post mk = {y != nullptr, false, cmin, cmax};
  bool sums = gw || gb || (dx && training) || mk.on;
  bool rows = S == 1;
  int nk = rows ? bn_row_chunks(M) : bn_chunks(M);
  cu_scratch part(sums ? (size_t)C * nk * 2 * sizeof(double) : 8, dev), coef(sums ? (size_t)C * 3 * sizeof(double) : 8, dev);
  if (!part.p || !coef.p) return vtl_error_status();
  if (sums) {
    if (rows)
      bn_rows_launch<T>(cu_ptr<T>(x), cu_ptr<T>(g), C, M, cu_ptr<double>(mean), (double *)part.p, nk, st, cu_ptr<T>(y),
                        cu_ptr<T>(gm), mk);
    else
      bn_partial_grad<T><<<dim3((unsigned)C, (unsigned)nk), BLOCK, 0, st>>>(
          cu_ptr<T>(g), cu_ptr<T>(x), C, S, M, cu_ptr<double>(mean), (double *)part.p, cu_ptr<T>(y), cu_ptr<T>(gm), mk);
    VTL_CU_LAUNCHED("batch_norm_backward");
    bn_finish_grad<P><<<vtl_cu_blocks(C), BLOCK, 0, st>>>(C, M, (const double *)part.p, nk, cu_ptr<double>(mean),
                                                          cu_ptr<double>(invstd), cu_ptr<P>(w), training,
                                                          cu_ptr<P>(gw), cu_ptr<P>(gb), (double *)coef.p);
    VTL_CU_LAUNCHED("batch_norm_backward");
  }
  if (dx && total > 0) {
    bn_coefs cf = {cu_ptr<double>(mean), cu_ptr<double>(invstd), sums ? (const double *)coef.p : nullptr};
    bn_lines_launch<T, P, true>(cu_ptr<T>(x), mk.on ? cu_ptr<T>(gm) : cu_ptr<T>(g), cu_ptr<T>(dx), N, C, S, cf,
                                cu_ptr<P>(w), (const P *)nullptr, bn_post{}, st);
    VTL_CU_LAUNCHED("batch_norm_backward");
  }
  return VTL_OK;
}

template <class T, class P>
vtl_status bn_forward_t(const vtl_tensor *x, vtl_tensor *out, int64_t total, int64_t C, int64_t S, const vtl_tensor *mean,
                        const vtl_tensor *invstd, const vtl_tensor *w, const vtl_tensor *b, const vtl_tensor *add,
                        double cmin, double cmax) {
  cudaStream_t st = stream_of(x);
  if (!st) return vtl_error_status();
  if (total == 0 || C == 0) return VTL_OK;
  bn_coefs cf = {cu_ptr<double>(mean), cu_ptr<double>(invstd), nullptr};
  bn_post post = {add || cmin > -INFINITY || cmax < INFINITY, add != nullptr, cmin, cmax};
  bn_lines_launch<T, P, false>(cu_ptr<T>(x), add ? cu_ptr<T>(add) : cu_ptr<T>(x), cu_ptr<T>(out), total / (C * S), C, S,
                               cf, cu_ptr<P>(w), cu_ptr<P>(b), post, st);
  VTL_CU_LAUNCHED("batch_norm");
  return VTL_OK;
}

// ---------------------------------------------------------------- layer norm

unsigned row_blocks(int64_t M) { return (unsigned)(M < 1 ? 1 : M > 65535 ? 65535 : M); }

// launches K<T, VPT> with the fewest registers per lane that hold a row of D (1..LN_WARP_MAX)
#define LN_BY_WIDTH(D, M, st, K, T, ...)                                                                     \
  do {                                                                                                       \
    unsigned blocks_ = (unsigned)(((M) + LN_WARPS - 1) / LN_WARPS);                                          \
    if ((D) <= 128) K<T, 4><<<blocks_, 32 * LN_WARPS, 0, st>>>(__VA_ARGS__);                                \
    else if ((D) <= 256) K<T, 8><<<blocks_, 32 * LN_WARPS, 0, st>>>(__VA_ARGS__);                           \
    else if ((D) <= 512) K<T, 16><<<blocks_, 32 * LN_WARPS, 0, st>>>(__VA_ARGS__);                          \
    else K<T, 32><<<blocks_, 32 * LN_WARPS, 0, st>>>(__VA_ARGS__);                                          \
  } while (0)

template <class T>
vtl_status ln_forward_t(const vtl_tensor *x, vtl_tensor *out, int64_t M, int64_t D, const vtl_tensor *w,
                        const vtl_tensor *b, double eps, vtl_tensor *mean, vtl_tensor *rstd) {
  if (M == 0) return VTL_OK;
  cudaStream_t st = stream_of(x);
  if (!st) return vtl_error_status();
  if (D > 0 && D <= LN_WARP_MAX && M <= INT32_MAX)
    LN_BY_WIDTH(D, M, st, ln_forward_warp, T, cu_ptr<T>(x), cu_ptr<T>(out), M, D, cu_ptr<T>(w), cu_ptr<T>(b), eps,
                cu_ptr<double>(mean), cu_ptr<double>(rstd));
  else
    ln_forward<T><<<row_blocks(M), BLOCK, 0, st>>>(cu_ptr<T>(x), cu_ptr<T>(out), M, D, cu_ptr<T>(w), cu_ptr<T>(b), eps,
                                                   cu_ptr<double>(mean), cu_ptr<double>(rstd));
  VTL_CU_LAUNCHED("layer_norm");
  return VTL_OK;
}

template <class T>
vtl_status ln_backward_t(const vtl_tensor *g, const vtl_tensor *x, int64_t M, int64_t D, const vtl_tensor *w,
                         const vtl_tensor *mean, const vtl_tensor *rstd, vtl_tensor *dx, vtl_tensor *gw,
                         vtl_tensor *gb) {
  cudaStream_t st = stream_of(x);
  if (!st) return vtl_error_status();
  if (dx && M > 0 && D > 0) {
    if (D <= LN_WARP_MAX && M <= INT32_MAX)
      LN_BY_WIDTH(D, M, st, ln_backward_dx_warp, T, cu_ptr<T>(g), cu_ptr<T>(x), M, D, cu_ptr<T>(w),
                  cu_ptr<double>(mean), cu_ptr<double>(rstd), cu_ptr<T>(dx));
    else
      ln_backward_dx<T><<<row_blocks(M), BLOCK, 0, st>>>(cu_ptr<T>(g), cu_ptr<T>(x), M, D, cu_ptr<T>(w),
                                                         cu_ptr<double>(mean), cu_ptr<double>(rstd), cu_ptr<T>(dx));
    VTL_CU_LAUNCHED("layer_norm_backward");
  }
  if ((gw || gb) && D > 0) {
    int64_t k = (M + 63) / 64;
    int nk = (int)(k < 1 ? 1 : k > 256 ? 256 : k);
    cu_scratch part((size_t)nk * D * 2 * sizeof(double), vtl_cu_device(x));
    if (!part.p) return vtl_error_status();
    ln_partial_wb<T><<<dim3((unsigned)((D + BLOCK - 1) / BLOCK), (unsigned)nk), BLOCK, 0, st>>>(
      cu_ptr<T>(g), cu_ptr<T>(x), M, D, cu_ptr<double>(mean), cu_ptr<double>(rstd), (double *)part.p);
    VTL_CU_LAUNCHED("layer_norm_backward");
    ln_finish_wb<T><<<vtl_cu_blocks(D), BLOCK, 0, st>>>(D, (const double *)part.p, nk, cu_ptr<T>(gw), cu_ptr<T>(gb));
    VTL_CU_LAUNCHED("layer_norm_backward");
  }
  return VTL_OK;
}

// ---------------------------------------------------------------- softmax
// x (A, R, B) along R. B == 1: one warp per row. B > 1: one thread per column (a, b), walking R.

constexpr int WARPS = 8; // warps per block of the row kernels

template <class T> __global__ void sm_rows(const T *x, T *y, int64_t A, int64_t R, bool logsm) {
  int lane = threadIdx.x & 31;
  int64_t warp = blockIdx.x * (int64_t)WARPS + (threadIdx.x >> 5), nwarps = (int64_t)gridDim.x * WARPS;
  for (int64_t a = warp; a < A; a += nwarps) {
    const T *xr = x + a * R;
    T *yr = y + a * R;
    T m = -INFINITY;
    for (int64_t r = lane; r < R; r += 32) m = cu_nanmax(m, xr[r]);
    m = cu_warp_max(m);
    double s = 0;
    for (int64_t r = lane; r < R; r += 32) s += (double)cu_exp(xr[r] - m);
    s = cu_warp_sum(s);
    if (logsm) {
      T lse = (T)((double)m + log(s));
      for (int64_t r = lane; r < R; r += 32) yr[r] = xr[r] - lse;
    } else {
      T inv = (T)(1.0 / s);
      for (int64_t r = lane; r < R; r += 32) yr[r] = cu_exp(xr[r] - m) * inv;
    }
  }
}

template <class T> __global__ void sm_cols(const T *x, T *y, int64_t A, int64_t R, int64_t B, bool logsm) {
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < A * B; t += (int64_t)gridDim.x * blockDim.x) {
    int64_t a = t / B, b = t - a * B;
    const T *xc = x + a * R * B + b;
    T *yc = y + a * R * B + b;
    T m = -INFINITY;
    for (int64_t r = 0; r < R; r++) m = cu_nanmax(m, xc[r * B]);
    double s = 0;
    for (int64_t r = 0; r < R; r++) s += (double)cu_exp(xc[r * B] - m);
    if (logsm) {
      T lse = (T)((double)m + log(s));
      for (int64_t r = 0; r < R; r++) yc[r * B] = xc[r * B] - lse;
    } else {
      T inv = (T)(1.0 / s);
      for (int64_t r = 0; r < R; r++) yc[r * B] = cu_exp(xc[r * B] - m) * inv;
    }
  }
}

// softmax: dx = y (g - sum g y); log_softmax: dx = g - exp(y) sum g
template <class T> __global__ void sm_rows_bwd(const T *g, const T *y, T *dx, int64_t A, int64_t R, bool logsm) {
  int lane = threadIdx.x & 31;
  int64_t warp = blockIdx.x * (int64_t)WARPS + (threadIdx.x >> 5), nwarps = (int64_t)gridDim.x * WARPS;
  for (int64_t a = warp; a < A; a += nwarps) {
    const T *gr = g + a * R, *yr = y + a * R;
    T *dr = dx + a * R;
    double acc = 0;
    for (int64_t r = lane; r < R; r += 32) acc += logsm ? (double)gr[r] : (double)(gr[r] * yr[r]);
    T sc = (T)cu_warp_sum(acc);
    for (int64_t r = lane; r < R; r += 32) dr[r] = logsm ? gr[r] - cu_exp(yr[r]) * sc : yr[r] * (gr[r] - sc);
  }
}

template <class T> __global__ void sm_cols_bwd(const T *g, const T *y, T *dx, int64_t A, int64_t R, int64_t B, bool logsm) {
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < A * B; t += (int64_t)gridDim.x * blockDim.x) {
    int64_t a = t / B, b = t - a * B, o = a * R * B + b;
    double acc = 0;
    for (int64_t r = 0; r < R; r++) acc += logsm ? (double)g[o + r * B] : (double)(g[o + r * B] * y[o + r * B]);
    T sc = (T)acc;
    for (int64_t r = 0; r < R; r++) {
      int64_t i = o + r * B;
      dx[i] = logsm ? g[i] - cu_exp(y[i]) * sc : y[i] * (g[i] - sc);
    }
  }
}

unsigned warp_blocks(int64_t rows) {
  int64_t b = (rows + WARPS - 1) / WARPS;
  return (unsigned)(b < 1 ? 1 : b > 65535 ? 65535 : b);
}

template <class T>
vtl_status sm_forward_t(const vtl_tensor *x, vtl_tensor *y, int64_t A, int64_t R, int64_t B, bool logsm) {
  if (A * R * B == 0) return VTL_OK;
  cudaStream_t st = stream_of(x);
  if (!st) return vtl_error_status();
  if (B == 1) sm_rows<T><<<warp_blocks(A), 32 * WARPS, 0, st>>>(cu_ptr<T>(x), cu_ptr<T>(y), A, R, logsm);
  else sm_cols<T><<<vtl_cu_blocks(A * B), BLOCK, 0, st>>>(cu_ptr<T>(x), cu_ptr<T>(y), A, R, B, logsm);
  VTL_CU_LAUNCHED("softmax");
  return VTL_OK;
}

template <class T>
vtl_status sm_backward_t(const vtl_tensor *g, const vtl_tensor *y, vtl_tensor *dx, int64_t A, int64_t R, int64_t B,
                         bool logsm) {
  if (A * R * B == 0) return VTL_OK;
  cudaStream_t st = stream_of(y);
  if (!st) return vtl_error_status();
  if (B == 1)
    sm_rows_bwd<T><<<warp_blocks(A), 32 * WARPS, 0, st>>>(cu_ptr<T>(g), cu_ptr<T>(y), cu_ptr<T>(dx), A, R, logsm);
  else
    sm_cols_bwd<T><<<vtl_cu_blocks(A * B), BLOCK, 0, st>>>(cu_ptr<T>(g), cu_ptr<T>(y), cu_ptr<T>(dx), A, R, B, logsm);
  VTL_CU_LAUNCHED("softmax_backward");
  return VTL_OK;
}

// ---------------------------------------------------------------- cross entropy
// x (N, C, S): row r = (n, s) has its C classes at stride S from n*C*S + s. One warp per row.
// Class target t (1-based), weight w, smoothing e, lse = log sum exp x:
//   loss = (1-e) w_t (lse - x_t) + e/C sum_c w_c (lse - x_c); 0 for ignored rows.
// Probability target q (q' = (1-e) q + e/C): loss = sum_c w_c q'_c (lse - x_c).

// log sum exp of one row, as kernels/cpu/norm.c's row_lse (NaN in, NaN out; an infinite max is
// returned as it is); every lane gets it
template <class T> __device__ double row_lse(const T *xr, int64_t C, int64_t S) {
  int lane = threadIdx.x & 31;
  T m = -INFINITY;
  for (int64_t c = lane; c < C; c += 32) m = cu_nanmax(m, xr[c * S]);
  m = cu_warp_max(m);
  if (m != m) return NAN;
  if (isinf((double)m)) return (double)m;
  double s = 0;
  for (int64_t c = lane; c < C; c += 32) s += (double)cu_exp(xr[c * S] - m);
  s = cu_warp_sum(s);
  return (double)m + log(s);
}

template <class T> __device__ __forceinline__ double wt_of(const T *w, int64_t c) { return w ? (double)w[c] : 1.0; }

// per-row loss and weight (the mean's divisor) into rl, rw (double), or the row losses into
// rows (reduction 'none'); the first row with a bad target into *bad
template <class T>
__global__ void ce_rows(const T *x, int64_t N, int64_t C, int64_t S, const int64_t *target, const T *prob, const T *w,
                        int64_t ignore_index, double e, double *rl, double *rw, T *rows, unsigned long long *bad) {
  int lane = threadIdx.x & 31;
  int64_t warp = blockIdx.x * (int64_t)WARPS + (threadIdx.x >> 5), nwarps = (int64_t)gridDim.x * WARPS;
  for (int64_t r = warp; r < N * S; r += nwarps) {
    int64_t n = r / S, s = r - n * S;
    const T *xr = x + n * C * S + s;
    double l = 0, wr = 0;
    if (target) {
      int64_t t = target[r];
      bool valid = t >= 1 && t <= C;
      if (t != ignore_index && !valid) {
        if (lane == 0) atomicMin(bad, (unsigned long long)r);
      } else if (t != ignore_index) {
        double lse = row_lse(xr, C, S);
        wr = wt_of(w, t - 1);
        double sm = 0;
        if (e > 0) {
          for (int64_t c = lane; c < C; c += 32) sm += wt_of(w, c) * (lse - (double)xr[c * S]);
          sm = cu_warp_sum(sm);
        }
        l = (1 - e) * wr * (lse - (double)xr[(t - 1) * S]);
        if (e > 0) l += e / (double)C * sm;
      }
    } else {
      double lse = row_lse(xr, C, S);
      for (int64_t c = lane; c < C; c += 32) {
        double q = (1 - e) * (double)prob[n * C * S + c * S + s] + e / (double)C;
        l += wt_of(w, c) * q * (lse - (double)xr[c * S]);
      }
      l = cu_warp_sum(l);
      wr = 1;
    }
    if (lane == 0) {
      if (rows) rows[r] = (T)l;
      else {
        rl[r] = l;
        rw[r] = wr;
      }
    }
  }
}

// one block: out = sum of rl, divided by the sum of rw for the mean
template <class T> __global__ void ce_reduce(const double *rl, const double *rw, int64_t n, bool mean, T *out) {
  __shared__ double sh[32];
  double a = 0, b = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    a += rl[i];
    b += rw[i];
  }
  a = cu_block_sum(a, sh);
  b = cu_block_sum(b, sh);
  if (threadIdx.x == 0) *out = (T)(mean ? a / b : a);
}

// one block: *gscale = gout / divisor (summed weights of the non-ignored targets, N*S for
// probabilities, 1 for the sum)
template <class T>
__global__ void ce_gscale(const T *gout, const int64_t *target, int64_t n, const T *w, int64_t ignore_index,
                          int64_t C, bool mean, double *gscale) {
  __shared__ double sh[32];
  double b = 0;
  if (mean && target)
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      int64_t t = target[i];
      if (t != ignore_index && t >= 1 && t <= C) b += wt_of(w, t - 1);
    }
  b = cu_block_sum(b, sh);
  if (threadIdx.x == 0) *gscale = (double)gout[0] / (!mean ? 1.0 : target ? b : (double)n);
}

template <class T>
__global__ void ce_rows_bwd(const T *x, int64_t N, int64_t C, int64_t S, const int64_t *target, const T *prob,
                            const T *w, int64_t ignore_index, double e, const T *grow, const double *gscale, T *dx,
                            T *dprob) {
  int lane = threadIdx.x & 31;
  int64_t warp = blockIdx.x * (int64_t)WARPS + (threadIdx.x >> 5), nwarps = (int64_t)gridDim.x * WARPS;
  for (int64_t r = warp; r < N * S; r += nwarps) {
    int64_t n = r / S, s = r - n * S, o = n * C * S + s;
    const T *xr = x + o;
    double gr = grow ? (double)grow[r] : *gscale;
    if (target) {
      int64_t t = target[r];
      if (t == ignore_index || t < 1 || t > C) {
        if (dx)
          for (int64_t c = lane; c < C; c += 32) dx[o + c * S] = 0;
        continue;
      }
      if (!dx) continue;
      double lse = row_lse(xr, C, S), wt = wt_of(w, t - 1), wtotal = 0;
      for (int64_t c = lane; c < C; c += 32) wtotal += wt_of(w, c);
      wtotal = cu_warp_sum(wtotal);
      double sc = gr * ((1 - e) * wt + e / (double)C * wtotal), ec = gr * e / (double)C;
      T l = (T)lse, a = (T)sc, bb = (T)ec;
      for (int64_t c = lane; c < C; c += 32) {
        T v = cu_exp(xr[c * S] - l) * a - (w ? bb * w[c] : bb);
        if (c == t - 1) v = (T)((double)v - gr * (1 - e) * wt);
        dx[o + c * S] = v;
      }
    } else {
      double lse = row_lse(xr, C, S), sc = 0;
      for (int64_t c = lane; c < C; c += 32)
        sc += wt_of(w, c) * ((1 - e) * (double)prob[o + c * S] + e / (double)C);
      sc = cu_warp_sum(sc);
      for (int64_t c = lane; c < C; c += 32) {
        int64_t i = o + c * S;
        double wc = wt_of(w, c), xv = (double)x[i];
        if (dx)
          dx[i] = (T)(gr * ((double)cu_exp((T)(xv - lse)) * sc - wc * ((1 - e) * (double)prob[i] + e / (double)C)));
        if (dprob) dprob[i] = (T)(gr * (1 - e) * wc * (lse - xv));
      }
    }
  }
}

template <class T>
vtl_status ce_forward_t(const vtl_tensor *x, int64_t N, int64_t C, int64_t S, const vtl_tensor *target,
                        const vtl_tensor *prob, const vtl_tensor *w, int64_t ignore_index, double e, vtl_reduction red,
                        vtl_tensor *out) {
  cudaStream_t st = stream_of(x);
  if (!st) return vtl_error_status();
  int dev = vtl_cu_device(x);
  int64_t rows = N * S;
  bool none = red == VTL_REDUCTION_NONE;
  cu_scratch sums(none ? 8 : (size_t)(rows ? rows : 1) * 2 * sizeof(double), dev), bad(sizeof(unsigned long long), dev);
  if (!sums.p || !bad.p) return vtl_error_status();
  cudaError_t ce = cudaMemsetAsync(bad.p, 0xff, sizeof(unsigned long long), st);
  if (ce != cudaSuccess) return vtl_cu_error(ce, "cross_entropy");
  double *rl = (double *)sums.p, *rw = none ? nullptr : rl + (rows ? rows : 1);
  if (rows > 0) {
    ce_rows<T><<<warp_blocks(rows), 32 * WARPS, 0, st>>>(cu_ptr<T>(x), N, C, S, cu_ptr<int64_t>(target),
                                                         cu_ptr<T>(prob), cu_ptr<T>(w), ignore_index, e, rl, rw,
                                                         none ? cu_ptr<T>(out) : nullptr,
                                                         (unsigned long long *)bad.p);
    VTL_CU_LAUNCHED("cross_entropy");
  }
  if (!none) {
    ce_reduce<T><<<1, 1024, 0, st>>>(rl, rw, rows, red == VTL_REDUCTION_MEAN, cu_ptr<T>(out));
    VTL_CU_LAUNCHED("cross_entropy");
  }
  if (!target) return VTL_OK;
  // a target outside 1..C (and not ignore_index) is an error, as on the CPU: read the flag back
  unsigned long long first = 0;
  ce = cudaMemcpyAsync(&first, bad.p, sizeof first, cudaMemcpyDeviceToHost, st);
  if (ce == cudaSuccess) ce = cudaStreamSynchronize(st);
  if (ce != cudaSuccess) return vtl_cu_error(ce, "cross_entropy");
  if (first != ULLONG_MAX) {
    int64_t t = 0;
    ce = cudaMemcpy(&t, cu_ptr<int64_t>(target) + first, sizeof t, cudaMemcpyDeviceToHost);
    if (ce != cudaSuccess) return vtl_cu_error(ce, "cross_entropy");
    return vtl_error_set(VTL_ERR_ARG, "cross_entropy: target %lld out of range for %lld classes (valid: 1..%lld, or "
                         "ignore_index %lld)", (long long)t, (long long)C, (long long)C, (long long)ignore_index);
  }
  return VTL_OK;
}

template <class T>
vtl_status ce_backward_t(const vtl_tensor *x, int64_t N, int64_t C, int64_t S, const vtl_tensor *target,
                         const vtl_tensor *prob, const vtl_tensor *w, int64_t ignore_index, double e, vtl_reduction red,
                         const vtl_tensor *gout, vtl_tensor *dx, vtl_tensor *dprob) {
  cudaStream_t st = stream_of(x);
  if (!st) return vtl_error_status();
  int64_t rows = N * S;
  if (rows == 0 || (!dx && !dprob)) return VTL_OK;
  bool none = red == VTL_REDUCTION_NONE;
  cu_scratch gs(sizeof(double), vtl_cu_device(x));
  if (!gs.p) return vtl_error_status();
  if (!none) {
    ce_gscale<T><<<1, 1024, 0, st>>>(cu_ptr<T>(gout), cu_ptr<int64_t>(target), rows, cu_ptr<T>(w), ignore_index, C,
                                     red == VTL_REDUCTION_MEAN, (double *)gs.p);
    VTL_CU_LAUNCHED("cross_entropy_backward");
  }
  ce_rows_bwd<T><<<warp_blocks(rows), 32 * WARPS, 0, st>>>(cu_ptr<T>(x), N, C, S, cu_ptr<int64_t>(target),
                                                           cu_ptr<T>(prob), cu_ptr<T>(w), ignore_index, e,
                                                           none ? cu_ptr<T>(gout) : nullptr, (const double *)gs.p,
                                                           cu_ptr<T>(dx), cu_ptr<T>(dprob));
  VTL_CU_LAUNCHED("cross_entropy_backward");
  return VTL_OK;
}

// ---------------------------------------------------------------- group norm
// x (N, C, S): group k of sample n is the Cg*S contiguous elements from (n*C + k*Cg)*S (row
// r = n*G + k). The arithmetic follows kernels/cpu/norm.c (double, the same formulas), so the
// two devices agree to rounding.

template <class T>
__global__ void gn_forward(const T *x, T *out, int64_t R, int64_t C, int64_t S, int64_t G, const T *w, const T *b,
                           double eps, double *mean, double *rstd) {
  __shared__ double sh[32];
  int64_t Cg = C / G, K = Cg * S;
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    int64_t k = r % G, o = r * K; // (n*C + k*Cg)*S == r*Cg*S
    double mu, rs;
    block_row_stats(x + o, K, eps, sh, &mu, &rs);
    if (threadIdx.x == 0) {
      mean[r] = mu;
      rstd[r] = rs;
    }
    for (int64_t j = threadIdx.x; j < K; j += blockDim.x) {
      int64_t c = k * Cg + j / S;
      double sc = (w ? (double)w[c] : 1.0) * rs, sf = (b ? (double)b[c] : 0.0) - mu * sc;
      out[o + j] = (T)((double)x[o + j] * sc + sf);
    }
  }
}

// per (n, c): sums[2 (n C + c)] = Σ_s g, sums[2 (n C + c) + 1] = Σ_s g x
template <class T> __global__ void gn_sums(const T *g, const T *x, int64_t NC, int64_t S, double *sums) {
  __shared__ double sh[32];
  for (int64_t nc = blockIdx.x; nc < NC; nc += gridDim.x) {
    const T *gr = g + nc * S, *xr = x + nc * S;
    double a = 0, p = 0;
    for (int64_t i = threadIdx.x; i < S; i += blockDim.x) {
      a += (double)gr[i];
      p += (double)gr[i] * (double)xr[i];
    }
    a = cu_block_sum(a, sh);
    p = cu_block_sum(p, sh);
    if (threadIdx.x == 0) {
      sums[2 * nc] = a;
      sums[2 * nc + 1] = p;
    }
  }
}

// dx = rstd w_c g - rstd s1/K - rstd² (x - mean) s2/K per group, with s1 = Σ_c w_c sg and
// s2 = Σ_c w_c rstd (sgx - mean sg) over the group's channels (summed in channel order)
template <class T>
__global__ void gn_dx(const T *g, const T *x, int64_t R, int64_t C, int64_t S, int64_t G, const T *w,
                      const double *mean, const double *rstd, const double *sums, T *dx) {
  __shared__ double q_sh, d_sh;
  int64_t Cg = C / G, K = Cg * S;
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    int64_t n = r / G, k = r % G, o = r * K;
    double mu = mean[r], rs = rstd[r];
    if (threadIdx.x == 0) {
      double s1 = 0, s2 = 0;
      for (int64_t c = k * Cg; c < (k + 1) * Cg; c++) {
        double a = sums[2 * (n * C + c)], p = sums[2 * (n * C + c) + 1], wc = w ? (double)w[c] : 1.0;
        s1 += wc * a;
        s2 += wc * rs * (p - mu * a);
      }
      double q = rs * rs * s2 / (double)K;
      q_sh = q;
      d_sh = q * mu - rs * s1 / (double)K;
    }
    __syncthreads();
    double q = q_sh, d = d_sh;
    for (int64_t j = threadIdx.x; j < K; j += blockDim.x) {
      int64_t c = k * Cg + j / S;
      double kc = rs * (w ? (double)w[c] : 1.0);
      dx[o + j] = (T)(kc * (double)g[o + j] - q * (double)x[o + j] + d);
    }
    __syncthreads();
  }
}

// gw_c = Σ_n rstd (sgx - mean sg), gb_c = Σ_n sg (n in order)
template <class T>
__global__ void gn_wb(int64_t N, int64_t C, int64_t G, const double *mean, const double *rstd, const double *sums, T *gw,
                      T *gb) {
  int64_t Cg = C / G;
  for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < C; c += (int64_t)gridDim.x * blockDim.x) {
    double aw = 0, ab = 0;
    for (int64_t n = 0; n < N; n++) {
      int64_t r = n * G + c / Cg;
      double a = sums[2 * (n * C + c)], p = sums[2 * (n * C + c) + 1];
      aw += rstd[r] * (p - mean[r] * a);
      ab += a;
    }
    if (gw) gw[c] = (T)aw;
    if (gb) gb[c] = (T)ab;
  }
}

template <class T>
vtl_status gn_forward_t(const vtl_tensor *x, vtl_tensor *out, int64_t N, int64_t C, int64_t S, int64_t G,
                        const vtl_tensor *w, const vtl_tensor *b, double eps, vtl_tensor *mean, vtl_tensor *rstd) {
  if (N * G == 0) return VTL_OK;
  cudaStream_t st = stream_of(x);
  if (!st) return vtl_error_status();
  gn_forward<T><<<row_blocks(N * G), BLOCK, 0, st>>>(cu_ptr<T>(x), cu_ptr<T>(out), N * G, C, S, G, cu_ptr<T>(w),
                                                     cu_ptr<T>(b), eps, cu_ptr<double>(mean), cu_ptr<double>(rstd));
  VTL_CU_LAUNCHED("group_norm");
  return VTL_OK;
}

template <class T>
vtl_status gn_backward_t(const vtl_tensor *g, const vtl_tensor *x, int64_t N, int64_t C, int64_t S, int64_t G,
                         const vtl_tensor *w, const vtl_tensor *mean, const vtl_tensor *rstd, vtl_tensor *dx,
                         vtl_tensor *gw, vtl_tensor *gb) {
  if (N * C == 0) return gw || gb ? vtl_error_set(VTL_ERR_ARG, "group_norm_backward: no channels") : VTL_OK;
  cudaStream_t st = stream_of(x);
  if (!st) return vtl_error_status();
  cu_scratch sums((size_t)(N * C) * 2 * sizeof(double), vtl_cu_device(x));
  if (!sums.p) return vtl_error_status();
  gn_sums<T><<<row_blocks(N * C), BLOCK, 0, st>>>(cu_ptr<T>(g), cu_ptr<T>(x), N * C, S, (double *)sums.p);
  VTL_CU_LAUNCHED("group_norm_backward");
  if (dx) {
    gn_dx<T><<<row_blocks(N * G), BLOCK, 0, st>>>(cu_ptr<T>(g), cu_ptr<T>(x), N * G, C, S, G, cu_ptr<T>(w),
                                                  cu_ptr<double>(mean), cu_ptr<double>(rstd),
                                                  (const double *)sums.p, cu_ptr<T>(dx));
    VTL_CU_LAUNCHED("group_norm_backward");
  }
  if (gw || gb) {
    gn_wb<T><<<vtl_cu_blocks(C), BLOCK, 0, st>>>(N, C, G, cu_ptr<double>(mean), cu_ptr<double>(rstd),
                                                 (const double *)sums.p, cu_ptr<T>(gw), cu_ptr<T>(gb));
    VTL_CU_LAUNCHED("group_norm_backward");
  }
  return VTL_OK;
}

} // namespace

#define BY_DTYPE(dt, CALL_F32, CALL_F64) return (dt) == VTL_F32 ? (CALL_F32) : (CALL_F64)

// by the data's dtype: f32, f64, or half data with f32 parameters
#define BN_BY_DTYPE(dt, CALL)                                                                   \
  switch (dt) {                                                                                 \
  case VTL_F32: { using T = float; using P = float; return CALL; }                              \
  case VTL_F64: { using T = double; using P = double; return CALL; }                            \
  case VTL_BF16: { using T = bf16_bits; using P = float; return CALL; }                         \
  case VTL_F16: { using T = f16_bits; using P = float; return CALL; }                           \
  default: return vtl_error_set(VTL_ERR_ARG, "batch_norm: %s data on cuda", vtl_dtype_name(dt)); \
  }

vtl_status vtl_cu_batch_norm_stats(const vtl_tensor *x, int64_t N, int64_t C, int64_t S, bool training,
                                   double momentum, double eps, vtl_tensor *rm, vtl_tensor *rv, vtl_tensor *mean,
                                   vtl_tensor *invstd) {
  BN_BY_DTYPE(x->dtype, (bn_stats_t<T, P>(x, N, C, S, training, momentum, eps, rm, rv, mean, invstd)))
}

vtl_status vtl_cu_batch_norm_forward(const vtl_tensor *x, vtl_tensor *out, int64_t N, int64_t C, int64_t S,
                                     const vtl_tensor *mean, const vtl_tensor *invstd, const vtl_tensor *w,
                                     const vtl_tensor *b, const vtl_tensor *add, double cmin, double cmax) {
  int64_t total = N * C * S;
  if (total == 0) return VTL_OK;
  BN_BY_DTYPE(x->dtype, (bn_forward_t<T, P>(x, out, total, C, S, mean, invstd, w, b, add, cmin, cmax)))
}

vtl_status vtl_cu_batch_norm_backward(const vtl_tensor *g, const vtl_tensor *x, int64_t N, int64_t C, int64_t S,
                                      const vtl_tensor *mean, const vtl_tensor *invstd, const vtl_tensor *w,
                                      bool training, vtl_tensor *dx, vtl_tensor *gw, vtl_tensor *gb, const vtl_tensor *y,
                                      double cmin, double cmax, vtl_tensor *gm) {
  BN_BY_DTYPE(x->dtype, (bn_backward_t<T, P>(g, x, N, C, S, mean, invstd, w, training, dx, gw, gb, y, cmin, cmax, gm)))
}

vtl_status vtl_cu_layer_norm_forward(const vtl_tensor *x, vtl_tensor *out, int64_t M, int64_t D, const vtl_tensor *w,
                                     const vtl_tensor *b, double eps, vtl_tensor *mean, vtl_tensor *rstd) {
  BY_DTYPE(x->dtype, ln_forward_t<float>(x, out, M, D, w, b, eps, mean, rstd),
           ln_forward_t<double>(x, out, M, D, w, b, eps, mean, rstd));
}

vtl_status vtl_cu_layer_norm_backward(const vtl_tensor *g, const vtl_tensor *x, int64_t M, int64_t D,
                                      const vtl_tensor *w, const vtl_tensor *mean, const vtl_tensor *rstd,
                                      vtl_tensor *dx, vtl_tensor *gw, vtl_tensor *gb) {
  BY_DTYPE(x->dtype, ln_backward_t<float>(g, x, M, D, w, mean, rstd, dx, gw, gb),
           ln_backward_t<double>(g, x, M, D, w, mean, rstd, dx, gw, gb));
}

vtl_status vtl_cu_group_norm_forward(const vtl_tensor *x, vtl_tensor *out, int64_t N, int64_t C, int64_t S, int64_t G,
                                     const vtl_tensor *w, const vtl_tensor *b, double eps, vtl_tensor *mean,
                                     vtl_tensor *rstd) {
  BY_DTYPE(x->dtype, gn_forward_t<float>(x, out, N, C, S, G, w, b, eps, mean, rstd),
           gn_forward_t<double>(x, out, N, C, S, G, w, b, eps, mean, rstd));
}

vtl_status vtl_cu_group_norm_backward(const vtl_tensor *g, const vtl_tensor *x, int64_t N, int64_t C, int64_t S,
                                      int64_t G, const vtl_tensor *w, const vtl_tensor *mean, const vtl_tensor *rstd,
                                      vtl_tensor *dx, vtl_tensor *gw, vtl_tensor *gb) {
  BY_DTYPE(x->dtype, gn_backward_t<float>(g, x, N, C, S, G, w, mean, rstd, dx, gw, gb),
           gn_backward_t<double>(g, x, N, C, S, G, w, mean, rstd, dx, gw, gb));
}

vtl_status vtl_cu_softmax_forward(const vtl_tensor *x, vtl_tensor *y, int64_t A, int64_t R, int64_t B, bool logsm) {
  BY_DTYPE(x->dtype, sm_forward_t<float>(x, y, A, R, B, logsm), sm_forward_t<double>(x, y, A, R, B, logsm));
}

vtl_status vtl_cu_softmax_backward(const vtl_tensor *g, const vtl_tensor *y, vtl_tensor *dx, int64_t A, int64_t R,
                                   int64_t B, bool logsm) {
  BY_DTYPE(y->dtype, sm_backward_t<float>(g, y, dx, A, R, B, logsm), sm_backward_t<double>(g, y, dx, A, R, B, logsm));
}

vtl_status vtl_cu_cross_entropy_forward(const vtl_tensor *x, int64_t N, int64_t C, int64_t S,
                                        const vtl_tensor *target, const vtl_tensor *prob, const vtl_tensor *w,
                                        int64_t ignore_index, double smoothing, vtl_reduction red, vtl_tensor *out) {
  BY_DTYPE(x->dtype, ce_forward_t<float>(x, N, C, S, target, prob, w, ignore_index, smoothing, red, out),
           ce_forward_t<double>(x, N, C, S, target, prob, w, ignore_index, smoothing, red, out));
}

vtl_status vtl_cu_cross_entropy_backward(const vtl_tensor *x, int64_t N, int64_t C, int64_t S,
                                         const vtl_tensor *target, const vtl_tensor *prob, const vtl_tensor *w,
                                         int64_t ignore_index, double smoothing, vtl_reduction red,
                                         const vtl_tensor *gout, vtl_tensor *dx, vtl_tensor *dprob) {
  BY_DTYPE(x->dtype, ce_backward_t<float>(x, N, C, S, target, prob, w, ignore_index, smoothing, red, gout, dx, dprob),
           ce_backward_t<double>(x, N, C, S, target, prob, w, ignore_index, smoothing, red, gout, dx, dprob));
}
